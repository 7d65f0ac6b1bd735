//! BitTorrent peer wire codec: handshake (BEP 3), length-prefixed messages
//! (BEP 3, BEP 6 Fast extension, BEP 10 extension framing), a minimal BEP 10
//! extension-handshake dictionary, and an owned piece [`Bitfield`].
//!
//! This module only converts between bytes and values. It must not do I/O,
//! keep connection state, or decide protocol policy (e.g. whether a Fast
//! message is allowed on a connection that did not negotiate BEP 6 is the
//! caller's decision). Decoders borrow from the input and never allocate,
//! except the extension handshake decoder which collects at most
//! [`MAX_EXT_NAMES`] names.

use std::fmt;

/// Length of a complete handshake: 1 + 19 + 8 + 20 + 20 bytes.
pub const HANDSHAKE_LEN: usize = 68;

/// The protocol string that follows the length byte in a handshake.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Reserved bytes advertising both the Fast extension (BEP 6) and the
/// extension protocol (BEP 10).
pub const RESERVED_FAST_AND_EXTENSIONS: [u8; 8] = [0, 0, 0, 0, 0, 0x10, 0, 0x04];

/// A sensible default for `decode`'s `max_len`: a 128 KiB block plus the
/// piece header, which also covers the bitfield of a 1M-piece torrent.
/// Callers that know their torrent should use [`max_message_len`].
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 128 * 1024 + 9;

/// Largest extension handshake payload accepted by [`decode_ext_handshake`];
/// real ones are a few hundred bytes.
pub const MAX_EXT_HANDSHAKE_LEN: usize = 16 * 1024;

/// Most extension names accepted in an extension handshake's `m` dictionary.
pub const MAX_EXT_NAMES: usize = 64;

/// Deepest bencode nesting skipped inside an extension handshake.
const MAX_BENCODE_DEPTH: u32 = 16;

/// Message id of `Extended` (BEP 10).
pub const EXTENDED_ID: u8 = 20;

/// Errors from parsing or encoding peer wire data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The handshake did not start with `\x13BitTorrent protocol`.
    BadProtocol,
    /// A message length prefix exceeds the caller's limit.
    MessageTooLong {
        /// Announced payload length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A message whose size is fixed by the protocol had another length.
    BadLength {
        /// Message id.
        id: u8,
        /// Announced payload length (including the id byte).
        len: u32,
    },
    /// A bitfield had the wrong number of bytes for the torrent.
    BitfieldLength {
        /// Bytes expected for the piece count.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A bitfield had bits set past the last piece.
    BitfieldSpareBits,
    /// A payload handed to an encoder does not fit a 32-bit length prefix.
    PayloadTooLarge,
    /// The extension handshake payload exceeds [`MAX_EXT_HANDSHAKE_LEN`].
    ExtHandshakeTooLarge(usize),
    /// The extension handshake is not a valid bencoded dictionary.
    ExtHandshakeInvalid(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadProtocol => {
                write!(
                    f,
                    "handshake is not '\\x13BitTorrent protocol' (not a BitTorrent peer or encrypted stream)"
                )
            }
            WireError::MessageTooLong { len, max } => {
                write!(
                    f,
                    "peer message of {len} bytes exceeds the limit of {max} bytes"
                )
            }
            WireError::BadLength { id, len } => {
                write!(f, "peer message id {id} has invalid length {len}")
            }
            WireError::BitfieldLength { expected, got } => {
                write!(f, "bitfield is {got} bytes, torrent needs {expected}")
            }
            WireError::BitfieldSpareBits => {
                write!(f, "bitfield has bits set beyond the last piece")
            }
            WireError::PayloadTooLarge => {
                write!(f, "payload too large for a 32-bit length prefix")
            }
            WireError::ExtHandshakeTooLarge(n) => write!(
                f,
                "extension handshake of {n} bytes exceeds the limit of {MAX_EXT_HANDSHAKE_LEN}"
            ),
            WireError::ExtHandshakeInvalid(why) => {
                write!(f, "invalid extension handshake: {why}")
            }
        }
    }
}

impl std::error::Error for WireError {}

// ---------------------------------------------------------------- handshake

/// A parsed handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Reserved bytes (extension bits).
    pub reserved: [u8; 8],
    /// Torrent info hash.
    pub info_hash: [u8; 20],
    /// Remote peer id.
    pub peer_id: [u8; 20],
}

/// Does `reserved` advertise the Fast extension (BEP 6)?
pub fn supports_fast(reserved: &[u8; 8]) -> bool {
    reserved[7] & 0x04 != 0
}

/// Does `reserved` advertise the extension protocol (BEP 10)?
pub fn supports_extensions(reserved: &[u8; 8]) -> bool {
    reserved[5] & 0x10 != 0
}

/// Build a handshake.
pub fn encode_handshake(info_hash: &[u8; 20], peer_id: &[u8; 20], reserved: [u8; 8]) -> [u8; 68] {
    let mut out = [0u8; HANDSHAKE_LEN];
    out[0] = 19;
    out[1..20].copy_from_slice(PROTOCOL);
    out[20..28].copy_from_slice(&reserved);
    out[28..48].copy_from_slice(info_hash);
    out[48..68].copy_from_slice(peer_id);
    out
}

/// Check the protocol prefix against whatever bytes are available so a
/// non-BitTorrent stream is rejected on its first byte.
fn check_protocol_prefix(buf: &[u8]) -> Result<(), WireError> {
    let mut expected = [0u8; 20];
    expected[0] = 19;
    expected[1..].copy_from_slice(PROTOCOL);
    let n = buf.len().min(20);
    match (buf.get(..n), expected.get(..n)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => Err(WireError::BadProtocol),
    }
}

/// Parse a handshake. `Ok(None)` means fewer than [`HANDSHAKE_LEN`] bytes
/// have arrived; on success exactly [`HANDSHAKE_LEN`] bytes are consumed.
pub fn parse_handshake(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
    check_protocol_prefix(buf)?;
    let Some(b) = buf.get(..HANDSHAKE_LEN) else {
        return Ok(None);
    };
    let mut hs = Handshake {
        reserved: [0; 8],
        info_hash: [0; 20],
        peer_id: [0; 20],
    };
    hs.reserved.copy_from_slice(&b[20..28]);
    hs.info_hash.copy_from_slice(&b[28..48]);
    hs.peer_id.copy_from_slice(&b[48..68]);
    Ok(Some(hs))
}

/// Reserved bytes and info hash: the part of a handshake before the peer id.
pub type HandshakePrefix = ([u8; 8], [u8; 20]);

/// Parse only the reserved bytes and info hash (the first 48 bytes).
/// A receiving side needs the info hash to pick the torrent and reply
/// before the initiator's peer id arrives; some initiators wait for that
/// reply, so waiting for all 68 bytes could deadlock.
pub fn parse_handshake_info_hash(buf: &[u8]) -> Result<Option<HandshakePrefix>, WireError> {
    check_protocol_prefix(buf)?;
    let Some(b) = buf.get(..48) else {
        return Ok(None);
    };
    let mut reserved = [0u8; 8];
    let mut info_hash = [0u8; 20];
    reserved.copy_from_slice(&b[20..28]);
    info_hash.copy_from_slice(&b[28..48]);
    Ok(Some((reserved, info_hash)))
}

// ---------------------------------------------------------------- messages

/// A peer wire message, borrowing variable-length payloads from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Zero-length message.
    KeepAlive,
    /// id 0.
    Choke,
    /// id 1.
    Unchoke,
    /// id 2.
    Interested,
    /// id 3.
    NotInterested,
    /// id 4.
    Have {
        /// Piece index.
        piece: u32,
    },
    /// id 5: raw bitfield bytes; validate with [`Bitfield::from_bytes`].
    Bitfield(&'a [u8]),
    /// id 6.
    Request {
        /// Piece index.
        index: u32,
        /// Byte offset in the piece.
        begin: u32,
        /// Block length.
        length: u32,
    },
    /// id 7.
    Piece {
        /// Piece index.
        index: u32,
        /// Byte offset in the piece.
        begin: u32,
        /// Block data.
        block: &'a [u8],
    },
    /// id 8.
    Cancel {
        /// Piece index.
        index: u32,
        /// Byte offset in the piece.
        begin: u32,
        /// Block length.
        length: u32,
    },
    /// id 9: DHT port.
    Port(u16),
    /// id 13 (BEP 6).
    SuggestPiece(u32),
    /// id 14 (BEP 6).
    HaveAll,
    /// id 15 (BEP 6).
    HaveNone,
    /// id 16 (BEP 6).
    RejectRequest {
        /// Piece index.
        index: u32,
        /// Byte offset in the piece.
        begin: u32,
        /// Block length.
        length: u32,
    },
    /// id 17 (BEP 6).
    AllowedFast(u32),
    /// id 20 (BEP 10): extended message id (0 = extension handshake) and payload.
    Extended {
        /// Extended message id.
        id: u8,
        /// Payload after the extended id.
        payload: &'a [u8],
    },
    /// Any other id; callers should ignore it rather than disconnect.
    Unknown {
        /// Message id.
        id: u8,
        /// Payload after the id.
        payload: &'a [u8],
    },
}

/// Largest message a torrent legitimately needs: a piece message with a
/// block of `max_block` bytes, or a bitfield for `piece_count` pieces.
pub fn max_message_len(piece_count: u32, max_block: u32) -> u32 {
    let bitfield = piece_count.div_ceil(8).saturating_add(1);
    max_block.saturating_add(9).max(bitfield)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Payload length (including the id byte) that a fixed-size message must
/// have, or `None` for variable-length and unknown ids.
fn fixed_len(id: u8) -> Option<u32> {
    match id {
        0..=3 | 14 | 15 => Some(1),
        4 | 13 | 17 => Some(5),
        6 | 8 | 16 => Some(13),
        9 => Some(3),
        _ => None,
    }
}

/// Smallest payload length (including the id byte) for variable messages.
fn min_len(id: u8) -> u32 {
    match id {
        7 => 9,
        EXTENDED_ID => 2,
        _ => 1,
    }
}

/// Decode one message from the front of `buf`.
///
/// Returns `Ok(None)` until a whole message is buffered, or the message and
/// the number of bytes consumed. A length prefix above `max_len` and a
/// fixed-size message with the wrong length are rejected as soon as the
/// prefix (and id) arrive, so a hostile peer cannot make the caller buffer
/// a payload it will reject anyway.
pub fn decode(buf: &[u8], max_len: u32) -> Result<Option<(Message<'_>, usize)>, WireError> {
    let Some(len) = be32(buf, 0) else {
        return Ok(None);
    };
    if len > max_len {
        return Err(WireError::MessageTooLong { len, max: max_len });
    }
    if len == 0 {
        return Ok(Some((Message::KeepAlive, 4)));
    }
    let Some(&id) = buf.get(4) else {
        return Ok(None);
    };
    match fixed_len(id) {
        Some(n) if n != len => return Err(WireError::BadLength { id, len }),
        None if len < min_len(id) => return Err(WireError::BadLength { id, len }),
        _ => {}
    }
    let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(4)) else {
        return Err(WireError::MessageTooLong { len, max: max_len });
    };
    let Some(payload) = buf.get(5..total) else {
        return Ok(None);
    };
    let u = |at: usize| be32(payload, at).ok_or(WireError::BadLength { id, len });
    let msg = match id {
        0 => Message::Choke,
        1 => Message::Unchoke,
        2 => Message::Interested,
        3 => Message::NotInterested,
        4 => Message::Have { piece: u(0)? },
        5 => Message::Bitfield(payload),
        6 => Message::Request {
            index: u(0)?,
            begin: u(4)?,
            length: u(8)?,
        },
        7 => Message::Piece {
            index: u(0)?,
            begin: u(4)?,
            block: payload.get(8..).unwrap_or_default(),
        },
        8 => Message::Cancel {
            index: u(0)?,
            begin: u(4)?,
            length: u(8)?,
        },
        9 => match payload {
            [a, b] => Message::Port(u16::from_be_bytes([*a, *b])),
            _ => return Err(WireError::BadLength { id, len }),
        },
        13 => Message::SuggestPiece(u(0)?),
        14 => Message::HaveAll,
        15 => Message::HaveNone,
        16 => Message::RejectRequest {
            index: u(0)?,
            begin: u(4)?,
            length: u(8)?,
        },
        17 => Message::AllowedFast(u(0)?),
        EXTENDED_ID => match payload.split_first() {
            Some((&ext, rest)) => Message::Extended {
                id: ext,
                payload: rest,
            },
            None => return Err(WireError::BadLength { id, len }),
        },
        _ => Message::Unknown { id, payload },
    };
    Ok(Some((msg, total)))
}

/// Header of a piece message carrying `block_len` bytes. Write this and then
/// the block itself (e.g. with vectored I/O) to avoid copying the block.
pub fn encode_piece_header(index: u32, begin: u32, block_len: u32) -> Result<[u8; 13], WireError> {
    let len = block_len.checked_add(9).ok_or(WireError::PayloadTooLarge)?;
    let mut h = [0u8; 13];
    h[0..4].copy_from_slice(&len.to_be_bytes());
    h[4] = 7;
    h[5..9].copy_from_slice(&index.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    Ok(h)
}

impl Message<'_> {
    /// Message id, or `None` for keep-alive.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => 0,
            Message::Unchoke => 1,
            Message::Interested => 2,
            Message::NotInterested => 3,
            Message::Have { .. } => 4,
            Message::Bitfield(_) => 5,
            Message::Request { .. } => 6,
            Message::Piece { .. } => 7,
            Message::Cancel { .. } => 8,
            Message::Port(_) => 9,
            Message::SuggestPiece(_) => 13,
            Message::HaveAll => 14,
            Message::HaveNone => 15,
            Message::RejectRequest { .. } => 16,
            Message::AllowedFast(_) => 17,
            Message::Extended { .. } => EXTENDED_ID,
            Message::Unknown { id, .. } => *id,
        })
    }

    /// Bytes [`Message::encode`] appends, including the length prefix.
    pub fn encoded_len(&self) -> usize {
        4 + match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have { .. } | Message::SuggestPiece(_) | Message::AllowedFast(_) => 5,
            Message::Port(_) => 3,
            Message::Request { .. } | Message::Cancel { .. } | Message::RejectRequest { .. } => 13,
            Message::Bitfield(b) | Message::Unknown { payload: b, .. } => 1 + b.len(),
            Message::Piece { block, .. } => 9 + block.len(),
            Message::Extended { payload, .. } => 2 + payload.len(),
        }
    }

    /// Append the framed message to `out`. Only reserves what this message
    /// needs; fails only if a payload does not fit a 32-bit length.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let total = self.encoded_len();
        let len = u32::try_from(total - 4).map_err(|_| WireError::PayloadTooLarge)?;
        out.reserve(total);
        out.extend_from_slice(&len.to_be_bytes());
        let Some(id) = self.id() else {
            return Ok(());
        };
        out.push(id);
        match *self {
            Message::Have { piece: v } | Message::SuggestPiece(v) | Message::AllowedFast(v) => {
                out.extend_from_slice(&v.to_be_bytes())
            }
            Message::Request {
                index,
                begin,
                length,
            }
            | Message::Cancel {
                index,
                begin,
                length,
            }
            | Message::RejectRequest {
                index,
                begin,
                length,
            } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&begin.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
            }
            Message::Piece {
                index,
                begin,
                block,
            } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&begin.to_be_bytes());
                out.extend_from_slice(block);
            }
            Message::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Message::Bitfield(b) | Message::Unknown { payload: b, .. } => out.extend_from_slice(b),
            Message::Extended { id, payload } => {
                out.push(id);
                out.extend_from_slice(payload);
            }
            _ => {}
        }
        Ok(())
    }
}

// ------------------------------------------------- BEP 10 extension handshake

/// The fields of a BEP 10 extension handshake this crate understands.
/// Unknown keys are ignored when decoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake<'a> {
    /// `m`: extension name to local message id (0 means disabled).
    pub extensions: Vec<(&'a [u8], u8)>,
    /// `v`: client name and version.
    pub client: Option<&'a [u8]>,
    /// `reqq`: how many outstanding requests the sender queues.
    pub reqq: Option<u32>,
}

impl<'a> ExtHandshake<'a> {
    /// Message id the remote assigned to extension `name`, if enabled.
    pub fn id_of(&self, name: &[u8]) -> Option<u8> {
        self.extensions
            .iter()
            .find(|(n, id)| *n == name && *id != 0)
            .map(|&(_, id)| id)
    }
}

fn put_bstr(out: &mut Vec<u8>, s: &[u8]) {
    // Decimal without allocating a String.
    let mut digits = [0u8; 20];
    let mut n = s.len();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.push(b':');
    out.extend_from_slice(s);
}

fn put_int(out: &mut Vec<u8>, v: u32) {
    out.push(b'i');
    let mut digits = [0u8; 10];
    let mut n = v;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.push(b'e');
}

/// Append a complete framed extension handshake message (`Extended` with
/// extended id 0) to `out`. Names in `m` are written in sorted order as
/// bencode requires; duplicate names keep their first id.
pub fn encode_ext_handshake(hs: &ExtHandshake<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, EXTENDED_ID, 0]);
    out.extend_from_slice(b"d1:md");
    // Selection by "smallest name greater than the previous one": quadratic
    // but allocation-free, and `m` has a handful of entries.
    let mut prev: Option<&[u8]> = None;
    loop {
        let mut best: Option<(&[u8], u8)> = None;
        for &(name, id) in &hs.extensions {
            if prev.is_some_and(|p| name <= p) {
                continue;
            }
            if best.is_none_or(|(b, _)| name < b) {
                best = Some((name, id));
            }
        }
        let Some((name, id)) = best else { break };
        put_bstr(out, name);
        put_int(out, u32::from(id));
        prev = Some(name);
    }
    out.push(b'e');
    if let Some(r) = hs.reqq {
        out.extend_from_slice(b"4:reqq");
        put_int(out, r);
    }
    if let Some(v) = hs.client {
        out.extend_from_slice(b"1:v");
        put_bstr(out, v);
    }
    out.push(b'e');
    let Ok(len) = u32::try_from(out.len() - start - 4) else {
        out.truncate(start);
        return Err(WireError::PayloadTooLarge);
    };
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Tiny bencode cursor, just enough for the extension handshake.
struct Bdec<'a> {
    buf: &'a [u8],
    pos: usize,
}

type BResult<T> = Result<T, WireError>;

fn inv(why: &'static str) -> WireError {
    WireError::ExtHandshakeInvalid(why)
}

impl<'a> Bdec<'a> {
    fn peek(&self) -> BResult<u8> {
        self.buf.get(self.pos).copied().ok_or(inv("truncated"))
    }

    fn expect(&mut self, c: u8) -> BResult<()> {
        if self.peek()? != c {
            return Err(inv("unexpected byte"));
        }
        self.pos += 1;
        Ok(())
    }

    /// `i<digits>e`; values outside i64 are rejected rather than wrapped.
    fn int(&mut self) -> BResult<i64> {
        self.expect(b'i')?;
        let neg = self.peek()? == b'-';
        if neg {
            self.pos += 1;
        }
        let mut v: i64 = 0;
        let mut digits = 0;
        while let Ok(c @ b'0'..=b'9') = self.peek() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(c - b'0')))
                .ok_or(inv("integer overflow"))?;
            digits += 1;
            self.pos += 1;
        }
        if digits == 0 {
            return Err(inv("empty integer"));
        }
        self.expect(b'e')?;
        Ok(if neg { -v } else { v })
    }

    fn bytes(&mut self) -> BResult<&'a [u8]> {
        let mut n: usize = 0;
        let mut digits = 0;
        while let Ok(c @ b'0'..=b'9') = self.peek() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(c - b'0')))
                .ok_or(inv("string length overflow"))?;
            digits += 1;
            self.pos += 1;
        }
        if digits == 0 {
            return Err(inv("expected a string"));
        }
        self.expect(b':')?;
        let end = self
            .pos
            .checked_add(n)
            .ok_or(inv("string length overflow"))?;
        let s = self.buf.get(self.pos..end).ok_or(inv("truncated string"))?;
        self.pos = end;
        Ok(s)
    }

    fn skip(&mut self, depth: u32) -> BResult<()> {
        if depth > MAX_BENCODE_DEPTH {
            return Err(inv("nested too deeply"));
        }
        match self.peek()? {
            b'i' => self.int().map(drop),
            b'0'..=b'9' => self.bytes().map(drop),
            b'l' | b'd' => {
                let dict = self.peek()? == b'd';
                self.pos += 1;
                while self.peek()? != b'e' {
                    if dict {
                        self.bytes()?;
                    }
                    self.skip(depth + 1)?;
                }
                self.pos += 1;
                Ok(())
            }
            _ => Err(inv("unexpected byte")),
        }
    }
}

/// Decode an extension handshake payload (the bytes after extended id 0).
///
/// Unknown keys and `m` entries whose value is not an integer in 0..=255
/// are ignored; the whole payload must be one dictionary of at most
/// [`MAX_EXT_HANDSHAKE_LEN`] bytes with at most [`MAX_EXT_NAMES`] names.
pub fn decode_ext_handshake(payload: &[u8]) -> Result<ExtHandshake<'_>, WireError> {
    if payload.len() > MAX_EXT_HANDSHAKE_LEN {
        return Err(WireError::ExtHandshakeTooLarge(payload.len()));
    }
    let mut d = Bdec {
        buf: payload,
        pos: 0,
    };
    let mut hs = ExtHandshake::default();
    d.expect(b'd')?;
    while d.peek()? != b'e' {
        let key = d.bytes()?;
        match (key, d.peek()?) {
            (b"m", b'd') => {
                d.pos += 1;
                while d.peek()? != b'e' {
                    let name = d.bytes()?;
                    if d.peek()? != b'i' {
                        d.skip(1)?;
                        continue;
                    }
                    let Ok(id) = u8::try_from(d.int()?) else {
                        continue;
                    };
                    if hs.extensions.len() >= MAX_EXT_NAMES {
                        return Err(inv("too many extension names"));
                    }
                    hs.extensions.push((name, id));
                }
                d.pos += 1;
            }
            (b"v", b'0'..=b'9') => hs.client = Some(d.bytes()?),
            (b"reqq", b'i') => hs.reqq = u32::try_from(d.int()?).ok(),
            _ => d.skip(0)?,
        }
    }
    d.pos += 1;
    if d.pos != payload.len() {
        return Err(inv("trailing bytes after dictionary"));
    }
    Ok(hs)
}

// ---------------------------------------------------------------- bitfield

/// An owned set of piece indices, stored in wire order (piece 0 is the high
/// bit of byte 0). Keeps a running count so `count`/`all` are O(1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    count: u32,
}

fn bytes_for(n: u32) -> usize {
    // u32 -> usize never loses bits on the 32/64-bit targets we support.
    n.div_ceil(8) as usize
}

impl Bitfield {
    /// An empty bitfield for `n_pieces` pieces.
    pub fn new(n_pieces: u32) -> Self {
        Bitfield {
            bytes: vec![0; bytes_for(n_pieces)],
            len: n_pieces,
            count: 0,
        }
    }

    /// A bitfield with every piece set (e.g. after `HaveAll`).
    pub fn full(n_pieces: u32) -> Self {
        let mut bytes = vec![0xff; bytes_for(n_pieces)];
        let spare = (bytes.len() * 8) as u64 - u64::from(n_pieces);
        if let Some(last) = bytes.last_mut() {
            *last = 0xffu8.checked_shl(spare as u32).unwrap_or(0);
        }
        Bitfield {
            bytes,
            len: n_pieces,
            count: n_pieces,
        }
    }

    /// Validate a received bitfield: it must be exactly `ceil(n/8)` bytes
    /// with the spare trailing bits clear.
    pub fn from_bytes(bytes: &[u8], n_pieces: u32) -> Result<Self, WireError> {
        let expected = bytes_for(n_pieces);
        if bytes.len() != expected {
            return Err(WireError::BitfieldLength {
                expected,
                got: bytes.len(),
            });
        }
        let spare = (expected * 8) as u64 - u64::from(n_pieces);
        if let Some(&last) = bytes.last() {
            let mask = (1u16 << spare) as u8;
            // mask - 1 has exactly the `spare` low bits set.
            if last & mask.wrapping_sub(1) != 0 {
                return Err(WireError::BitfieldSpareBits);
            }
        }
        let count = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield {
            bytes: bytes.to_vec(),
            len: n_pieces,
            count,
        })
    }

    /// Number of pieces this bitfield covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True if it covers zero pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Is `piece` set? Out-of-range pieces are not.
    pub fn has(&self, piece: u32) -> bool {
        match self.bytes.get((piece / 8) as usize) {
            Some(b) if piece < self.len => b & (0x80 >> (piece % 8)) != 0,
            _ => false,
        }
    }

    /// Set `piece`; returns true if it was newly set, false if it was
    /// already set or out of range.
    pub fn set(&mut self, piece: u32) -> bool {
        if piece >= self.len {
            return false;
        }
        match self.bytes.get_mut((piece / 8) as usize) {
            Some(b) if *b & (0x80 >> (piece % 8)) == 0 => {
                *b |= 0x80 >> (piece % 8);
                self.count += 1;
                true
            }
            _ => false,
        }
    }

    /// Clear `piece`; returns true if it was set.
    pub fn clear(&mut self, piece: u32) -> bool {
        if piece >= self.len {
            return false;
        }
        match self.bytes.get_mut((piece / 8) as usize) {
            Some(b) if *b & (0x80 >> (piece % 8)) != 0 => {
                *b &= !(0x80 >> (piece % 8));
                self.count -= 1;
                true
            }
            _ => false,
        }
    }

    /// Number of set pieces.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Every piece set (true for a zero-piece bitfield).
    pub fn all(&self) -> bool {
        self.count == self.len
    }

    /// No piece set.
    pub fn none(&self) -> bool {
        self.count == 0
    }

    /// Indices of set pieces in ascending order; skips zero bytes quickly.
    pub fn iter_set(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(i, &b)| {
                (0..8u32)
                    .filter(move |bit| b & (0x80 >> bit) != 0)
                    .map(move |bit| i as u32 * 8 + bit)
            })
            .filter(move |&p| p < self.len)
    }

    /// Wire representation (for a `Bitfield` message).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use reactor_test_support::fuzz::Rng;

    const MAX: u32 = DEFAULT_MAX_MESSAGE_LEN;

    fn enc(m: &Message<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        m.encode(&mut v).unwrap();
        assert_eq!(v.len(), m.encoded_len());
        v
    }

    fn all_messages() -> Vec<Message<'static>> {
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have { piece: 0xdead_beef },
            Message::Bitfield(&[0xff, 0x80]),
            Message::Bitfield(&[]),
            Message::Request {
                index: 1,
                begin: 16384,
                length: 16384,
            },
            Message::Piece {
                index: 7,
                begin: 32768,
                block: b"hello block",
            },
            Message::Piece {
                index: 7,
                begin: 0,
                block: b"",
            },
            Message::Cancel {
                index: 3,
                begin: 4,
                length: 5,
            },
            Message::Port(6881),
            Message::SuggestPiece(9),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest {
                index: 1,
                begin: 2,
                length: 3,
            },
            Message::AllowedFast(42),
            Message::Extended {
                id: 0,
                payload: b"de",
            },
            Message::Extended {
                id: 3,
                payload: b"",
            },
            Message::Unknown {
                id: 99,
                payload: b"xyz",
            },
        ]
    }

    #[test]
    fn handshake_roundtrip_and_prefixes() {
        let ih = [7u8; 20];
        let pid = *b"-RS0001-abcdefghijkl";
        let hs = encode_handshake(&ih, &pid, RESERVED_FAST_AND_EXTENSIONS);
        assert_eq!(hs.len(), HANDSHAKE_LEN);
        for n in 0..HANDSHAKE_LEN {
            assert_eq!(parse_handshake(&hs[..n]), Ok(None), "prefix {n}");
        }
        let parsed = parse_handshake(&hs).unwrap().unwrap();
        assert_eq!(parsed.info_hash, ih);
        assert_eq!(parsed.peer_id, pid);
        assert!(supports_fast(&parsed.reserved));
        assert!(supports_extensions(&parsed.reserved));
        assert!(!supports_fast(&[0; 8]));
        assert!(!supports_extensions(&[0; 8]));
        // Trailing bytes (the first message) are not part of the handshake.
        let mut more = hs.to_vec();
        more.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse_handshake(&more).unwrap().unwrap(), parsed);
        for n in 0..48 {
            assert_eq!(parse_handshake_info_hash(&hs[..n]), Ok(None));
        }
        assert_eq!(
            parse_handshake_info_hash(&hs[..48]),
            Ok(Some((RESERVED_FAST_AND_EXTENSIONS, ih)))
        );
    }

    #[test]
    fn handshake_rejects_wrong_protocol_early() {
        assert_eq!(parse_handshake(&[18]), Err(WireError::BadProtocol));
        assert_eq!(parse_handshake(b"\x13BitTorrent"), Ok(None));
        assert_eq!(
            parse_handshake(b"\x13BitTorrenX"),
            Err(WireError::BadProtocol)
        );
        assert_eq!(
            parse_handshake(b"GET / HTTP/1.1\r\n"),
            Err(WireError::BadProtocol)
        );
        assert_eq!(parse_handshake_info_hash(&[0]), Err(WireError::BadProtocol));
        let mut hs = encode_handshake(&[0; 20], &[0; 20], [0; 8]);
        hs[19] = b'X';
        assert_eq!(parse_handshake(&hs), Err(WireError::BadProtocol));
    }

    #[test]
    fn messages_roundtrip_with_all_prefixes_incomplete() {
        for m in all_messages() {
            let bytes = enc(&m);
            for n in 0..bytes.len() {
                assert_eq!(decode(&bytes[..n], MAX), Ok(None), "{m:?} prefix {n}");
            }
            assert_eq!(decode(&bytes, MAX), Ok(Some((m, bytes.len()))));
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            let (m1, used) = decode(&two, MAX).unwrap().unwrap();
            assert_eq!((m1, used), (m, bytes.len()));
            assert_eq!(decode(&two[used..], MAX), Ok(Some((m, bytes.len()))));
        }
    }

    #[test]
    fn exact_wire_bytes() {
        assert_eq!(enc(&Message::KeepAlive), [0, 0, 0, 0]);
        assert_eq!(enc(&Message::Interested), [0, 0, 0, 1, 2]);
        assert_eq!(
            enc(&Message::Have { piece: 258 }),
            [0, 0, 0, 5, 4, 0, 0, 1, 2]
        );
        assert_eq!(enc(&Message::Port(0x1ae1)), [0, 0, 0, 3, 9, 0x1a, 0xe1]);
        assert_eq!(enc(&Message::HaveAll), [0, 0, 0, 1, 14]);
        assert_eq!(
            enc(&Message::Extended {
                id: 1,
                payload: b"x"
            }),
            [0, 0, 0, 3, 20, 1, b'x']
        );
    }

    #[test]
    fn too_long_is_rejected_before_payload() {
        let hdr = 1_000_000u32.to_be_bytes();
        assert_eq!(
            decode(&hdr, MAX),
            Err(WireError::MessageTooLong {
                len: 1_000_000,
                max: MAX
            })
        );
        assert_eq!(
            decode(&[0, 0, 0, 10, 7], 9),
            Err(WireError::MessageTooLong { len: 10, max: 9 })
        );
        assert_eq!(decode(&u32::MAX.to_be_bytes(), u32::MAX), Ok(None));
        assert!(
            WireError::MessageTooLong { len: 5, max: 4 }
                .to_string()
                .contains("exceeds")
        );
    }

    #[test]
    fn fixed_size_messages_with_wrong_length_fail_on_id() {
        for (id, good) in [
            (0u8, 1u32),
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 5),
            (6, 13),
            (8, 13),
            (9, 3),
            (13, 5),
            (14, 1),
            (15, 1),
            (16, 13),
            (17, 5),
        ] {
            for len in [good - 1, good + 1, 1000] {
                if len == 0 {
                    continue;
                }
                let mut b = len.to_be_bytes().to_vec();
                b.push(id);
                assert_eq!(
                    decode(&b, MAX),
                    Err(WireError::BadLength { id, len }),
                    "id {id} len {len}"
                );
            }
        }
        // Variable messages below their minimum.
        assert_eq!(
            decode(&[0, 0, 0, 8, 7], MAX),
            Err(WireError::BadLength { id: 7, len: 8 })
        );
        assert_eq!(
            decode(&[0, 0, 0, 1, 20], MAX),
            Err(WireError::BadLength { id: 20, len: 1 })
        );
    }

    #[test]
    fn unknown_ids_are_skipped_not_errors() {
        let b = [0, 0, 0, 3, 200, 1, 2, 0, 0, 0, 1, 1];
        let (m, used) = decode(&b, MAX).unwrap().unwrap();
        assert_eq!(
            m,
            Message::Unknown {
                id: 200,
                payload: &[1, 2]
            }
        );
        assert_eq!(decode(&b[used..], MAX), Ok(Some((Message::Unchoke, 5))));
    }

    #[test]
    fn piece_header_matches_full_encoding() {
        let block = [5u8; 100];
        let full = enc(&Message::Piece {
            index: 4,
            begin: 16384,
            block: &block,
        });
        let mut split = encode_piece_header(4, 16384, 100).unwrap().to_vec();
        split.extend_from_slice(&block);
        assert_eq!(full, split);
        assert_eq!(
            encode_piece_header(0, 0, u32::MAX),
            Err(WireError::PayloadTooLarge)
        );
        assert_eq!(
            encode_piece_header(0, 0, u32::MAX - 9).unwrap()[..4],
            [0xff; 4]
        );
    }

    #[test]
    fn max_message_len_covers_block_and_bitfield() {
        assert_eq!(max_message_len(10, 16384), 16393);
        assert_eq!(max_message_len(1_000_000, 16384), 125_001);
        assert_eq!(max_message_len(u32::MAX, u32::MAX), u32::MAX);
    }

    #[test]
    fn ext_handshake_roundtrip_sorted_and_framed() {
        let hs = ExtHandshake {
            extensions: vec![
                (b"ut_pex", 2),
                (b"ut_metadata", 1),
                (b"lt_donthave", 0),
                (b"ut_pex", 9),
            ],
            client: Some(b"reactor 0.1"),
            reqq: Some(250),
        };
        let mut out = vec![0xaa];
        encode_ext_handshake(&hs, &mut out).unwrap();
        assert_eq!(out[0], 0xaa);
        let (m, used) = decode(&out[1..], MAX).unwrap().unwrap();
        assert_eq!(used, out.len() - 1);
        let Message::Extended { id: 0, payload } = m else {
            panic!("not an extension handshake: {m:?}");
        };
        assert_eq!(
            payload,
            &b"d1:md11:lt_donthavei0e11:ut_metadatai1e6:ut_pexi2ee4:reqqi250e1:v11:reactor 0.1e"[..]
        );
        let back = decode_ext_handshake(payload).unwrap();
        assert_eq!(back.client, Some(&b"reactor 0.1"[..]));
        assert_eq!(back.reqq, Some(250));
        assert_eq!(back.id_of(b"ut_metadata"), Some(1));
        assert_eq!(back.id_of(b"ut_pex"), Some(2));
        assert_eq!(back.id_of(b"lt_donthave"), None);
        assert_eq!(back.id_of(b"nope"), None);

        let mut min = Vec::new();
        encode_ext_handshake(&ExtHandshake::default(), &mut min).unwrap();
        assert_eq!(&min[6..], b"d1:mdee");
        assert_eq!(
            decode_ext_handshake(b"d1:mdee").unwrap(),
            ExtHandshake::default()
        );
    }

    #[test]
    fn ext_handshake_tolerates_unknown_and_odd_values() {
        let p = b"d1:ai-5e1:bl1:xi3ee1:cd1:yi1ee1:md1:xi300e1:y3:str1:zi7e1:wi-1ee1:pi6881e4:reqqi-1e1:vi5e6:yourip4:\x7f\0\0\x01e";
        let hs = decode_ext_handshake(p).unwrap();
        assert_eq!(hs.extensions, vec![(&b"z"[..], 7)]);
        assert_eq!(hs.reqq, None);
        assert_eq!(hs.client, None);
        // Unsorted keys are accepted.
        let hs = decode_ext_handshake(b"d1:v1:a1:md1:bi2e1:ai1eee").unwrap();
        assert_eq!(hs.extensions, vec![(&b"b"[..], 2), (&b"a"[..], 1)]);
        assert_eq!(hs.client, Some(&b"a"[..]));
    }

    #[test]
    fn ext_handshake_error_paths() {
        let big = vec![b'd'; MAX_EXT_HANDSHAKE_LEN + 1];
        assert_eq!(
            decode_ext_handshake(&big),
            Err(WireError::ExtHandshakeTooLarge(MAX_EXT_HANDSHAKE_LEN + 1))
        );
        let inv = |s: &[u8]| match decode_ext_handshake(s) {
            Err(WireError::ExtHandshakeInvalid(why)) => why,
            other => panic!("{:?} -> {other:?}", String::from_utf8_lossy(s)),
        };
        assert_eq!(inv(b""), "truncated");
        assert_eq!(inv(b"le"), "unexpected byte");
        assert_eq!(inv(b"d"), "truncated");
        assert_eq!(inv(b"d1:m"), "truncated");
        assert_eq!(inv(b"dee"), "trailing bytes after dictionary");
        assert_eq!(inv(b"di1ei1ee"), "expected a string");
        assert_eq!(inv(b"d9:ae"), "truncated string");
        assert_eq!(inv(b"d99999999999999999999999:a"), "string length overflow");
        assert_eq!(inv(b"d1:ai99999999999999999999ee"), "integer overflow");
        assert_eq!(inv(b"d1:aie"), "empty integer");
        assert_eq!(inv(b"d1:ai5"), "truncated");
        assert_eq!(inv(b"d1:ax"), "unexpected byte");
        let deep = [b"d1:a".as_slice(), &[b'l'; 40], &[b'e'; 40], b"e"].concat();
        assert_eq!(inv(&deep), "nested too deeply");
        let mut many = b"d1:md".to_vec();
        for i in 0..=MAX_EXT_NAMES {
            many.extend_from_slice(format!("3:x{:02}i1e", i).as_bytes());
        }
        many.extend_from_slice(b"ee");
        assert_eq!(inv(&many), "too many extension names");
        assert!(
            WireError::ExtHandshakeInvalid("x")
                .to_string()
                .contains("extension handshake")
        );
    }

    #[test]
    fn bitfield_basics() {
        let mut b = Bitfield::new(10);
        assert_eq!(b.as_bytes(), &[0, 0]);
        assert!(b.none() && !b.all() && !b.is_empty());
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(9));
        assert!(!b.set(10));
        assert!(!b.set(u32::MAX));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.has(0) && b.has(9) && !b.has(1) && !b.has(10) && !b.has(u32::MAX));
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![0, 9]);
        assert!(b.clear(0));
        assert!(!b.clear(0));
        assert!(!b.clear(10));
        assert_eq!(b.count(), 1);
        let f = Bitfield::full(10);
        assert_eq!(f.as_bytes(), &[0xff, 0xc0]);
        assert!(f.all() && f.count() == 10 && f.len() == 10);
        assert_eq!(f.iter_set().count(), 10);
        assert_eq!(Bitfield::full(16).as_bytes(), &[0xff, 0xff]);
        let z = Bitfield::full(0);
        assert!(z.is_empty() && z.all() && z.none() && z.as_bytes().is_empty());
        assert_eq!(Bitfield::from_bytes(f.as_bytes(), 10).unwrap(), f);
        assert_eq!(Bitfield::from_bytes(&[], 0).unwrap(), Bitfield::new(0));
    }

    #[test]
    fn bitfield_errors() {
        assert_eq!(
            Bitfield::from_bytes(&[0], 10),
            Err(WireError::BitfieldLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            Bitfield::from_bytes(&[0, 0, 0], 10),
            Err(WireError::BitfieldLength {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            Bitfield::from_bytes(&[0, 0x20], 10),
            Err(WireError::BitfieldSpareBits)
        );
        assert_eq!(
            Bitfield::from_bytes(&[0, 0x01], 10),
            Err(WireError::BitfieldSpareBits)
        );
        assert!(Bitfield::from_bytes(&[0xff], 8).is_ok());
        assert_eq!(
            Bitfield::from_bytes(&[0x01], 7),
            Err(WireError::BitfieldSpareBits)
        );
        assert!(WireError::BitfieldSpareBits.to_string().contains("beyond"));
        assert!(
            WireError::BitfieldLength {
                expected: 2,
                got: 1
            }
            .to_string()
            .contains("needs 2")
        );
        assert!(!WireError::BadProtocol.to_string().is_empty());
        assert!(
            !WireError::BadLength { id: 1, len: 2 }
                .to_string()
                .is_empty()
        );
        assert!(!WireError::PayloadTooLarge.to_string().is_empty());
        assert!(!WireError::ExtHandshakeTooLarge(1).to_string().is_empty());
    }

    #[test]
    fn never_panics_on_random_and_mutated_input() {
        let mut rng = Rng::new(0x1234_5678_9abc_def1);
        let mut seeds: Vec<Vec<u8>> = all_messages().iter().map(enc).collect();
        seeds.push(encode_handshake(&[1; 20], &[2; 20], RESERVED_FAST_AND_EXTENSIONS).to_vec());
        seeds.push(b"d1:md11:ut_metadatai1ee4:reqqi250e1:v4:test1:xl1:ai1eee".to_vec());
        seeds.push(vec![0xff, 0xc0]);
        for round in 0..20_000 {
            let mut buf = if round % 2 == 0 {
                let n = rng.below(80);
                (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<_>>()
            } else {
                let mut s = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    if !s.is_empty() {
                        let i = rng.below(s.len());
                        s[i] = rng.next_u64() as u8;
                    }
                }
                s
            };
            // Occasionally make the length prefix small so bodies get parsed.
            if round % 3 == 0 && buf.len() > 5 {
                let l = (buf.len() - 4 - rng.below(2)) as u32;
                buf[..4].copy_from_slice(&l.to_be_bytes());
            }
            let cut = rng.below(buf.len() + 1);
            for b in [&buf[..], &buf[..cut]] {
                if let Ok(Some((m, used))) = decode(b, MAX) {
                    assert!(used <= b.len() && used >= 4);
                    let mut again = Vec::new();
                    m.encode(&mut again).unwrap();
                    assert_eq!(&again[..], &b[..used]);
                }
                let _ = parse_handshake(b);
                let _ = parse_handshake_info_hash(b);
                let _ = Bitfield::from_bytes(b, rng.next_u64() as u32 % 200);
                if let Ok(hs) = decode_ext_handshake(b) {
                    let mut v = Vec::new();
                    encode_ext_handshake(&hs, &mut v).unwrap();
                }
            }
        }
    }
}
