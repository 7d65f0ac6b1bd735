//! Wire protocol of the relay's control connections (sans-io codec).
//!
//! Every frame is `type: u8`, `len: u16` big-endian, then `len` payload bytes.
//! Strings inside a payload are `len: u8` followed by that many UTF-8 bytes;
//! integers are big-endian. See `docs/relay.md` for the message table.
//!
//! This module only turns bytes into [`Message`]s and back. It must not do I/O,
//! keep state between calls, know about reservations or time, or allocate while
//! decoding: decoded strings borrow from the input buffer.
//!
//! After a [`Message::Connected`] frame the connection stops carrying frames and
//! carries raw bytes; [`decode`] reports how many bytes the frame used, so the
//! handler knows exactly where the raw stream begins.

use std::fmt;
use std::time::Duration;

/// Bytes in a frame header: type (1) + payload length (2).
pub const HEADER_LEN: usize = 3;
/// Largest payload any frame may carry; every message type has a smaller
/// limit of its own (see [`MessageType::max_payload`]).
pub const MAX_PAYLOAD: usize = 1024;
/// Longest reservation id or peer identity, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest human-readable detail in a [`Message::Refused`], in bytes.
pub const MAX_DETAIL_LEN: usize = 255;

/// Why the relay refused a request. The numeric codes are part of the wire
/// format and must never be renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The id has no active reservation (or it is not owned by this connection).
    NoReservation,
    /// The relay holds its maximum number of reservations.
    LimitTotal,
    /// This peer identity holds its maximum number of reservations.
    LimitPerPeer,
    /// This client address holds its maximum number of reservations.
    LimitPerIp,
    /// The id is reserved by a different peer.
    IdTaken,
    /// The request was malformed or not valid at this point of the protocol.
    BadRequest,
    /// Too many circuits are open (for this peer or on the relay).
    CircuitLimit,
    /// Something was not done in time (accept, heartbeat, circuit duration).
    Timeout,
    /// The relay is shutting down.
    Shutdown,
    /// The circuit id of an `Accept` is unknown, already accepted or timed out.
    UnknownCircuit,
}

impl Reason {
    /// Every reason, in code order (handy for tests and documentation).
    pub const ALL: [Reason; 10] = [
        Reason::NoReservation,
        Reason::LimitTotal,
        Reason::LimitPerPeer,
        Reason::LimitPerIp,
        Reason::IdTaken,
        Reason::BadRequest,
        Reason::CircuitLimit,
        Reason::Timeout,
        Reason::Shutdown,
        Reason::UnknownCircuit,
    ];

    /// Stable wire code (0 is never used, so a zeroed byte is always an error).
    pub fn code(self) -> u8 {
        match self {
            Reason::NoReservation => 1,
            Reason::LimitTotal => 2,
            Reason::LimitPerPeer => 3,
            Reason::LimitPerIp => 4,
            Reason::IdTaken => 5,
            Reason::BadRequest => 6,
            Reason::CircuitLimit => 7,
            Reason::Timeout => 8,
            Reason::Shutdown => 9,
            Reason::UnknownCircuit => 10,
        }
    }

    /// The reason for a wire code, or `None` for a code this version does not know.
    pub fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Short human-readable explanation.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoReservation => "no active reservation for this id on this connection",
            Reason::LimitTotal => "relay is full: total reservation limit reached",
            Reason::LimitPerPeer => "too many reservations for this peer",
            Reason::LimitPerIp => "too many reservations from this IP address",
            Reason::IdTaken => "id is reserved by another peer",
            Reason::BadRequest => "malformed or unexpected request",
            Reason::CircuitLimit => "circuit limit reached",
            Reason::Timeout => "timed out",
            Reason::Shutdown => "relay is shutting down",
            Reason::UnknownCircuit => "unknown, expired or already accepted circuit",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The frame type byte. Client-to-relay types have the high bit clear,
/// relay-to-client types have it set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// `0x01` [`Message::Reserve`]
    Reserve,
    /// `0x02` [`Message::Refresh`]
    Refresh,
    /// `0x03` [`Message::Connect`]
    Connect,
    /// `0x04` [`Message::Accept`]
    Accept,
    /// `0x05` [`Message::Heartbeat`]
    Heartbeat,
    /// `0x81` [`Message::Reserved`]
    Reserved,
    /// `0x82` [`Message::Refused`]
    Refused,
    /// `0x83` [`Message::Incoming`]
    Incoming,
    /// `0x84` [`Message::Connected`]
    Connected,
    /// `0x85` [`Message::HeartbeatAck`]
    HeartbeatAck,
}

/// Payload size of a length-prefixed string of at most `max` bytes.
const fn str_max(max: usize) -> usize {
    1 + max
}

impl MessageType {
    /// The type byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            MessageType::Reserve => 0x01,
            MessageType::Refresh => 0x02,
            MessageType::Connect => 0x03,
            MessageType::Accept => 0x04,
            MessageType::Heartbeat => 0x05,
            MessageType::Reserved => 0x81,
            MessageType::Refused => 0x82,
            MessageType::Incoming => 0x83,
            MessageType::Connected => 0x84,
            MessageType::HeartbeatAck => 0x85,
        }
    }

    /// The type for a type byte, or `None` if unknown.
    pub fn from_code(code: u8) -> Option<MessageType> {
        Some(match code {
            0x01 => MessageType::Reserve,
            0x02 => MessageType::Refresh,
            0x03 => MessageType::Connect,
            0x04 => MessageType::Accept,
            0x05 => MessageType::Heartbeat,
            0x81 => MessageType::Reserved,
            0x82 => MessageType::Refused,
            0x83 => MessageType::Incoming,
            0x84 => MessageType::Connected,
            0x85 => MessageType::HeartbeatAck,
            _ => return None,
        })
    }

    /// True for messages a client sends to the relay. A relay receiving a
    /// relay-to-client type should answer `Refused(BadRequest)` and close.
    pub fn is_client_to_relay(self) -> bool {
        self.code() & 0x80 == 0
    }

    /// Smallest payload a well-formed frame of this type can have.
    pub fn min_payload(self) -> usize {
        match self {
            MessageType::Reserve => 4,
            MessageType::Refresh | MessageType::Connect => 2,
            MessageType::Accept | MessageType::Connected => 8,
            MessageType::Heartbeat | MessageType::HeartbeatAck => 0,
            MessageType::Reserved => 2 + 4,
            MessageType::Refused => 2,
            MessageType::Incoming => 8 + 2,
        }
    }

    /// Largest payload a well-formed frame of this type can have. Checked as
    /// soon as the header arrives, so a peer cannot make us wait for (or
    /// buffer) a payload we would reject anyway.
    pub fn max_payload(self) -> usize {
        match self {
            MessageType::Reserve => 2 * str_max(MAX_ID_LEN),
            MessageType::Refresh | MessageType::Connect => str_max(MAX_ID_LEN),
            MessageType::Accept | MessageType::Connected => 8,
            MessageType::Heartbeat | MessageType::HeartbeatAck => 0,
            MessageType::Reserved => str_max(MAX_ID_LEN) + 4,
            MessageType::Refused => 1 + str_max(MAX_DETAIL_LEN),
            MessageType::Incoming => 8 + str_max(MAX_ID_LEN),
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            MessageType::Reserve => "RESERVE",
            MessageType::Refresh => "REFRESH",
            MessageType::Connect => "CONNECT",
            MessageType::Accept => "ACCEPT",
            MessageType::Heartbeat => "HEARTBEAT",
            MessageType::Reserved => "RESERVED",
            MessageType::Refused => "REFUSED",
            MessageType::Incoming => "INCOMING",
            MessageType::Connected => "CONNECTED",
            MessageType::HeartbeatAck => "HEARTBEAT_ACK",
        };
        f.write_str(name)
    }
}

/// One protocol message. Strings borrow from the decoded buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// client -> relay: reserve `id` for `peer` (a client identity that stays
    /// the same across reconnects, so a reconnecting client gets its slot back).
    Reserve {
        /// Stable client identity.
        peer: &'a str,
        /// Name others will `Connect` to.
        id: &'a str,
    },
    /// client -> relay: extend the TTL of a reservation owned by this connection.
    Refresh {
        /// Reserved id.
        id: &'a str,
    },
    /// client -> relay: open a circuit to whoever reserved `id`.
    Connect {
        /// Reserved id to reach.
        id: &'a str,
    },
    /// client -> relay, on a NEW connection of the reserving peer: pick up the
    /// circuit announced by [`Message::Incoming`].
    Accept {
        /// Circuit id from `Incoming`.
        circuit: u64,
    },
    /// client -> relay: liveness signal on the control connection.
    Heartbeat,
    /// relay -> client: reservation granted for `ttl_secs` seconds.
    Reserved {
        /// Reserved id.
        id: &'a str,
        /// Seconds until the reservation expires unless refreshed.
        ttl_secs: u32,
    },
    /// relay -> client: a request was refused.
    Refused {
        /// Machine-readable reason.
        reason: Reason,
        /// Optional human-readable detail. `Some("")` is sent as `None`.
        detail: Option<&'a str>,
    },
    /// relay -> client, on the reserver's control connection: someone connected
    /// to `id`; open a new connection and send `Accept { circuit }`.
    Incoming {
        /// Circuit to accept.
        circuit: u64,
        /// The reserved id that was connected to.
        id: &'a str,
    },
    /// relay -> both ends: the circuit is bridged; from the next byte on, the
    /// connection carries raw data.
    Connected {
        /// Circuit id.
        circuit: u64,
    },
    /// relay -> client: answer to `Heartbeat`.
    HeartbeatAck,
}

impl Message<'_> {
    /// The frame type of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Reserve { .. } => MessageType::Reserve,
            Message::Refresh { .. } => MessageType::Refresh,
            Message::Connect { .. } => MessageType::Connect,
            Message::Accept { .. } => MessageType::Accept,
            Message::Heartbeat => MessageType::Heartbeat,
            Message::Reserved { .. } => MessageType::Reserved,
            Message::Refused { .. } => MessageType::Refused,
            Message::Incoming { .. } => MessageType::Incoming,
            Message::Connected { .. } => MessageType::Connected,
            Message::HeartbeatAck => MessageType::HeartbeatAck,
        }
    }
}

/// What is wrong with a text field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextProblem {
    /// The field is empty but must not be.
    Empty,
    /// The field is longer than allowed.
    TooLong {
        /// Length in bytes.
        len: usize,
        /// Allowed maximum in bytes.
        max: usize,
    },
    /// The bytes are not valid UTF-8.
    NotUtf8,
    /// The text contains a control character (newline, NUL, escape, ...).
    ControlChar,
}

impl fmt::Display for TextProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextProblem::Empty => f.write_str("is empty"),
            TextProblem::TooLong { len, max } => {
                write!(f, "is {len} bytes long, the maximum is {max}")
            }
            TextProblem::NotUtf8 => f.write_str("is not valid UTF-8"),
            TextProblem::ControlChar => f.write_str("contains a control character"),
        }
    }
}

/// A frame that cannot be decoded or a message that cannot be encoded. On a
/// decode error the connection must be closed: framing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// The type byte is not a known message type.
    UnknownType(u8),
    /// The header announces a payload longer than this type allows.
    Oversized {
        /// Frame type.
        msg_type: MessageType,
        /// Announced payload length.
        len: usize,
        /// Largest allowed payload for this type.
        max: usize,
    },
    /// The header announces a payload too short for this type.
    Undersized {
        /// Frame type.
        msg_type: MessageType,
        /// Announced payload length.
        len: usize,
        /// Smallest allowed payload for this type.
        min: usize,
    },
    /// A field runs past the end of the frame's payload.
    Truncated {
        /// Frame type.
        msg_type: MessageType,
        /// Field that did not fit.
        field: &'static str,
    },
    /// The payload has bytes left after the last field.
    TrailingBytes {
        /// Frame type.
        msg_type: MessageType,
        /// Number of unexpected bytes.
        extra: usize,
    },
    /// A text field is invalid.
    BadText {
        /// Field name (`peer`, `id`, `detail`).
        field: &'static str,
        /// What is wrong with it.
        problem: TextProblem,
    },
    /// A `Refused` frame carries a reason code this version does not know.
    UnknownReason(u8),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownType(t) => write!(
                f,
                "unknown frame type 0x{t:02x} (peer speaks another protocol or version); closing"
            ),
            ProtoError::Oversized { msg_type, len, max } => write!(
                f,
                "{msg_type} frame announces a {len}-byte payload, at most {max} allowed"
            ),
            ProtoError::Undersized { msg_type, len, min } => write!(
                f,
                "{msg_type} frame announces a {len}-byte payload, at least {min} required"
            ),
            ProtoError::Truncated { msg_type, field } => {
                write!(f, "{msg_type} frame ends inside field `{field}`")
            }
            ProtoError::TrailingBytes { msg_type, extra } => {
                write!(
                    f,
                    "{msg_type} frame has {extra} unexpected bytes after its fields"
                )
            }
            ProtoError::BadText { field, problem } => write!(f, "field `{field}` {problem}"),
            ProtoError::UnknownReason(code) => write!(
                f,
                "REFUSED frame has unknown reason code {code} (relay is newer than this client?)"
            ),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Checks a text field: non-empty, at most `max` bytes, no control characters.
fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), ProtoError> {
    let problem = if s.is_empty() {
        TextProblem::Empty
    } else if s.len() > max {
        TextProblem::TooLong { len: s.len(), max }
    } else if s.chars().any(char::is_control) {
        TextProblem::ControlChar
    } else {
        return Ok(());
    };
    Err(ProtoError::BadText { field, problem })
}

/// Checks that `s` is usable as a reservation id or peer identity (non-empty,
/// at most [`MAX_ID_LEN`] bytes, no control characters). Clients can call this
/// before sending; [`encode`] and [`decode`] apply it too.
pub fn check_id(s: &str) -> Result<(), ProtoError> {
    check_text("id", s, MAX_ID_LEN)
}

/// Converts a granted TTL to the wire's whole seconds, rounding up (so a
/// client never refreshes too late) and saturating at `u32::MAX`.
pub fn ttl_secs(ttl: Duration) -> u32 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Reads fields out of one frame's payload.
struct Reader<'a> {
    buf: &'a [u8],
    msg_type: MessageType,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtoError> {
        match (self.buf.get(..n), self.buf.get(n..)) {
            (Some(head), Some(rest)) => {
                self.buf = rest;
                Ok(head)
            }
            _ => Err(ProtoError::Truncated {
                msg_type: self.msg_type,
                field,
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtoError> {
        let bytes = self.take(N, field)?;
        bytes.try_into().map_err(|_| ProtoError::Truncated {
            msg_type: self.msg_type,
            field,
        })
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        self.array::<1>(field).map(|[b]| b)
    }

    /// A `u8`-length-prefixed string; the empty string is returned as is so
    /// the caller decides whether it is allowed.
    fn raw_str(&mut self, field: &'static str, max: usize) -> Result<&'a str, ProtoError> {
        let len = usize::from(self.u8(field)?);
        if len > max {
            return Err(ProtoError::BadText {
                field,
                problem: TextProblem::TooLong { len, max },
            });
        }
        let bytes = self.take(len, field)?;
        let s = std::str::from_utf8(bytes).map_err(|_| ProtoError::BadText {
            field,
            problem: TextProblem::NotUtf8,
        })?;
        if s.chars().any(char::is_control) {
            return Err(ProtoError::BadText {
                field,
                problem: TextProblem::ControlChar,
            });
        }
        Ok(s)
    }

    fn id(&mut self, field: &'static str) -> Result<&'a str, ProtoError> {
        let s = self.raw_str(field, MAX_ID_LEN)?;
        check_text(field, s, MAX_ID_LEN)?;
        Ok(s)
    }

    fn finish(self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                msg_type: self.msg_type,
                extra: self.buf.len(),
            })
        }
    }
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` if `buf` holds only a prefix of a valid frame (read more
/// and call again with the longer buffer), `Ok(Some((message, consumed)))` for
/// a complete frame, and an error as soon as the bytes seen so far cannot
/// start a valid frame: an unknown type after 1 byte, a bad length after 3.
/// The caller therefore never needs to buffer more than
/// `HEADER_LEN + MAX_PAYLOAD` bytes of control traffic.
pub fn decode(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, ProtoError> {
    let Some(&type_byte) = buf.first() else {
        return Ok(None);
    };
    let msg_type = MessageType::from_code(type_byte).ok_or(ProtoError::UnknownType(type_byte))?;
    let Some(&[hi, lo]) = buf.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let max = msg_type.max_payload();
    if len > max {
        return Err(ProtoError::Oversized { msg_type, len, max });
    }
    let min = msg_type.min_payload();
    if len < min {
        return Err(ProtoError::Undersized { msg_type, len, min });
    }
    let total = HEADER_LEN + len;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let mut r = Reader {
        buf: payload,
        msg_type,
    };
    let msg = match msg_type {
        MessageType::Reserve => {
            let peer = r.id("peer")?;
            let id = r.id("id")?;
            Message::Reserve { peer, id }
        }
        MessageType::Refresh => Message::Refresh { id: r.id("id")? },
        MessageType::Connect => Message::Connect { id: r.id("id")? },
        MessageType::Accept => Message::Accept {
            circuit: r.u64("circuit")?,
        },
        MessageType::Heartbeat => Message::Heartbeat,
        MessageType::Reserved => {
            let id = r.id("id")?;
            let ttl_secs = r.u32("ttl_secs")?;
            Message::Reserved { id, ttl_secs }
        }
        MessageType::Refused => {
            let code = r.u8("reason")?;
            let reason = Reason::from_code(code).ok_or(ProtoError::UnknownReason(code))?;
            let detail = r.raw_str("detail", MAX_DETAIL_LEN)?;
            Message::Refused {
                reason,
                detail: (!detail.is_empty()).then_some(detail),
            }
        }
        MessageType::Incoming => {
            let circuit = r.u64("circuit")?;
            let id = r.id("id")?;
            Message::Incoming { circuit, id }
        }
        MessageType::Connected => Message::Connected {
            circuit: r.u64("circuit")?,
        },
        MessageType::HeartbeatAck => Message::HeartbeatAck,
    };
    r.finish()?;
    Ok(Some((msg, total)))
}

/// Writes a `u8`-length-prefixed string; callers have validated its length.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

/// Appends one frame for `msg` to `out` and returns the number of bytes written.
///
/// Fields are validated first (ids and peers as in [`check_id`], details up to
/// [`MAX_DETAIL_LEN`] bytes without control characters); on error nothing is
/// written, so `out` never holds a half frame.
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) -> Result<usize, ProtoError> {
    match *msg {
        Message::Reserve { peer, id } => {
            check_text("peer", peer, MAX_ID_LEN)?;
            check_text("id", id, MAX_ID_LEN)?;
        }
        Message::Refresh { id }
        | Message::Connect { id }
        | Message::Reserved { id, .. }
        | Message::Incoming { id, .. } => check_text("id", id, MAX_ID_LEN)?,
        Message::Refused {
            detail: Some(detail),
            ..
        } if !detail.is_empty() => check_text("detail", detail, MAX_DETAIL_LEN)?,
        Message::Refused { .. }
        | Message::Accept { .. }
        | Message::Heartbeat
        | Message::Connected { .. }
        | Message::HeartbeatAck => {}
    }
    let start = out.len();
    out.push(msg.message_type().code());
    out.extend_from_slice(&[0, 0]);
    match *msg {
        Message::Reserve { peer, id } => {
            put_str(out, peer);
            put_str(out, id);
        }
        Message::Refresh { id } | Message::Connect { id } => put_str(out, id),
        Message::Accept { circuit } | Message::Connected { circuit } => {
            out.extend_from_slice(&circuit.to_be_bytes());
        }
        Message::Heartbeat | Message::HeartbeatAck => {}
        Message::Reserved { id, ttl_secs } => {
            put_str(out, id);
            out.extend_from_slice(&ttl_secs.to_be_bytes());
        }
        Message::Refused { reason, detail } => {
            out.push(reason.code());
            put_str(out, detail.unwrap_or(""));
        }
        Message::Incoming { circuit, id } => {
            out.extend_from_slice(&circuit.to_be_bytes());
            put_str(out, id);
        }
    }
    let written = out.len() - start;
    // Validation above bounds every payload by its type's max_payload (<= MAX_PAYLOAD).
    let len = u16::try_from(written - HEADER_LEN).unwrap_or(u16::MAX);
    if let Some(slot) = out.get_mut(start + 1..start + HEADER_LEN) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(msg: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        let n = encode(msg, &mut out).expect("encodable");
        assert_eq!(n, out.len());
        out
    }

    fn samples() -> Vec<Message<'static>> {
        let long_id: &'static str = Box::leak("x".repeat(MAX_ID_LEN).into_boxed_str());
        let long_detail: &'static str = Box::leak("é".repeat(127).into_boxed_str());
        vec![
            Message::Reserve {
                peer: "peer-1",
                id: "alice",
            },
            Message::Reserve {
                peer: long_id,
                id: long_id,
            },
            Message::Refresh { id: "alice" },
            Message::Connect {
                id: "ünïcødé id"
            },
            Message::Accept { circuit: 0 },
            Message::Accept { circuit: u64::MAX },
            Message::Heartbeat,
            Message::Reserved {
                id: "alice",
                ttl_secs: 3600,
            },
            Message::Refused {
                reason: Reason::IdTaken,
                detail: None,
            },
            Message::Refused {
                reason: Reason::LimitPerIp,
                detail: Some("8 reservations from 10.0.0.1"),
            },
            Message::Refused {
                reason: Reason::Shutdown,
                detail: Some(long_detail),
            },
            Message::Incoming {
                circuit: 0x0102_0304_0506_0708,
                id: "alice",
            },
            Message::Connected { circuit: 42 },
            Message::HeartbeatAck,
        ]
    }

    #[test]
    fn round_trip_every_message() {
        for msg in samples() {
            let bytes = enc(&msg);
            assert!(bytes.len() <= HEADER_LEN + msg.message_type().max_payload());
            assert_eq!(decode(&bytes), Ok(Some((msg, bytes.len()))), "{msg:?}");
        }
    }

    #[test]
    fn round_trip_stream_of_frames() {
        let mut stream = Vec::new();
        for msg in samples() {
            encode(&msg, &mut stream).expect("encodable");
        }
        let mut rest = &stream[..];
        let mut got = Vec::new();
        while let Some((msg, used)) = decode(rest).expect("valid") {
            got.push(msg);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(got, samples());
    }

    #[test]
    fn exact_wire_layout() {
        assert_eq!(
            enc(&Message::Reserve {
                peer: "p",
                id: "ab"
            }),
            [0x01, 0, 5, 1, b'p', 2, b'a', b'b']
        );
        assert_eq!(enc(&Message::Heartbeat), [0x05, 0, 0]);
        assert_eq!(
            enc(&Message::Connected { circuit: 258 }),
            [0x84, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2]
        );
        assert_eq!(
            enc(&Message::Refused {
                reason: Reason::Timeout,
                detail: None
            }),
            [0x82, 0, 2, 8, 0]
        );
    }

    #[test]
    fn raw_bytes_after_connected_are_not_consumed() {
        let mut buf = enc(&Message::Connected { circuit: 7 });
        let frame_len = buf.len();
        buf.extend_from_slice(b"\xffraw application bytes");
        assert_eq!(
            decode(&buf),
            Ok(Some((Message::Connected { circuit: 7 }, frame_len)))
        );
    }

    #[test]
    fn every_prefix_needs_more() {
        for msg in samples() {
            let bytes = enc(&msg);
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None), "{msg:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn unknown_type_fails_on_first_byte() {
        for b in [0x00, 0x06, 0x7f, 0x80, 0x86, 0xff] {
            assert_eq!(decode(&[b]), Err(ProtoError::UnknownType(b)));
        }
    }

    #[test]
    fn oversized_fails_before_payload_arrives() {
        assert_eq!(
            decode(&[0x01, 0xff, 0xff]),
            Err(ProtoError::Oversized {
                msg_type: MessageType::Reserve,
                len: 0xffff,
                max: 130
            })
        );
        assert_eq!(
            decode(&[0x05, 0, 1]),
            Err(ProtoError::Oversized {
                msg_type: MessageType::Heartbeat,
                len: 1,
                max: 0
            })
        );
        for t in [
            MessageType::Reserve,
            MessageType::Refused,
            MessageType::Incoming,
        ] {
            assert!(t.max_payload() <= MAX_PAYLOAD);
            let len = u16::try_from(t.max_payload() + 1).expect("small");
            let [hi, lo] = len.to_be_bytes();
            assert!(matches!(
                decode(&[t.code(), hi, lo]),
                Err(ProtoError::Oversized { .. })
            ));
        }
    }

    #[test]
    fn undersized_fails_before_payload_arrives() {
        assert_eq!(
            decode(&[0x04, 0, 7]),
            Err(ProtoError::Undersized {
                msg_type: MessageType::Accept,
                len: 7,
                min: 8
            })
        );
        assert!(matches!(
            decode(&[0x01, 0, 3]),
            Err(ProtoError::Undersized { .. })
        ));
    }

    #[test]
    fn field_truncated_inside_frame() {
        // Reserve: peer claims 10 bytes, frame has 4 payload bytes.
        assert_eq!(
            decode(&[0x01, 0, 4, 10, b'a', b'b']),
            Ok(None),
            "still a prefix"
        );
        assert_eq!(
            decode(&[0x01, 0, 4, 10, b'a', b'b', b'c']),
            Err(ProtoError::Truncated {
                msg_type: MessageType::Reserve,
                field: "peer"
            })
        );
        // Reserved: id fits, ttl does not.
        assert_eq!(
            decode(&[0x81, 0, 6, 3, b'a', b'b', b'c', 0, 0]),
            Err(ProtoError::Truncated {
                msg_type: MessageType::Reserved,
                field: "ttl_secs"
            })
        );
    }

    #[test]
    fn trailing_bytes_rejected() {
        assert_eq!(
            decode(&[0x02, 0, 3, 1, b'a', b'z']),
            Err(ProtoError::TrailingBytes {
                msg_type: MessageType::Refresh,
                extra: 1
            })
        );
    }

    #[test]
    fn bad_text_rejected_on_decode() {
        let bad = |payload: &[u8]| {
            let mut f = vec![0x03, 0, u8::try_from(payload.len()).expect("small")];
            f.extend_from_slice(payload);
            decode(&f).map(|m| m.map(|(_, n)| n))
        };
        let text = |problem| {
            Err(ProtoError::BadText {
                field: "id",
                problem,
            })
        };
        assert_eq!(bad(&[0, 0]), text(TextProblem::Empty));
        assert_eq!(
            bad(&[1, b'a', b'b']),
            Err(ProtoError::TrailingBytes {
                msg_type: MessageType::Connect,
                extra: 1
            })
        );
        assert_eq!(
            bad(&[0]),
            Err(ProtoError::Undersized {
                msg_type: MessageType::Connect,
                len: 1,
                min: 2
            })
        );
        assert_eq!(bad(&[1, 0xff]), text(TextProblem::NotUtf8));
        assert_eq!(bad(&[2, b'a', b'\n']), text(TextProblem::ControlChar));
        assert_eq!(bad(&[1, 0]), text(TextProblem::ControlChar));
        let mut long = vec![65];
        long.extend_from_slice(&[b'a'; 65]);
        assert!(matches!(bad(&long), Err(ProtoError::Oversized { .. })));
        // A length byte above MAX_ID_LEN inside an allowed frame size.
        let mut reserve = vec![0x01, 0, 4, 65, b'a', 1, b'b'];
        assert_eq!(
            decode(&reserve),
            Err(ProtoError::BadText {
                field: "peer",
                problem: TextProblem::TooLong { len: 65, max: 64 }
            })
        );
        reserve = vec![0x01, 0, 4, 1, b'a', 1, 0x7f];
        assert_eq!(
            decode(&reserve),
            Err(ProtoError::BadText {
                field: "id",
                problem: TextProblem::ControlChar
            })
        );
        // Empty id inside a Reserve.
        assert_eq!(
            decode(&[0x01, 0, 4, 2, b'a', b'b', 0]),
            Err(ProtoError::BadText {
                field: "id",
                problem: TextProblem::Empty
            })
        );
    }

    #[test]
    fn refused_reason_and_detail() {
        assert_eq!(
            decode(&[0x82, 0, 2, 0, 0]),
            Err(ProtoError::UnknownReason(0))
        );
        assert_eq!(
            decode(&[0x82, 0, 2, 200, 0]),
            Err(ProtoError::UnknownReason(200))
        );
        assert_eq!(
            decode(&[0x82, 0, 3, 1, 1, 0x1b]),
            Err(ProtoError::BadText {
                field: "detail",
                problem: TextProblem::ControlChar
            })
        );
        // Some("") is normalised to None.
        let bytes = enc(&Message::Refused {
            reason: Reason::Timeout,
            detail: Some(""),
        });
        assert_eq!(
            decode(&bytes),
            Ok(Some((
                Message::Refused {
                    reason: Reason::Timeout,
                    detail: None
                },
                bytes.len()
            )))
        );
    }

    #[test]
    fn encode_rejects_bad_fields_and_writes_nothing() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        let long_detail = "a".repeat(MAX_DETAIL_LEN + 1);
        let cases = [
            (
                Message::Reserve { peer: "", id: "a" },
                ProtoError::BadText {
                    field: "peer",
                    problem: TextProblem::Empty,
                },
            ),
            (
                Message::Connect { id: &long },
                ProtoError::BadText {
                    field: "id",
                    problem: TextProblem::TooLong { len: 65, max: 64 },
                },
            ),
            (
                Message::Incoming {
                    circuit: 1,
                    id: "a\tb",
                },
                ProtoError::BadText {
                    field: "id",
                    problem: TextProblem::ControlChar,
                },
            ),
            (
                Message::Refused {
                    reason: Reason::BadRequest,
                    detail: Some(&long_detail),
                },
                ProtoError::BadText {
                    field: "detail",
                    problem: TextProblem::TooLong { len: 256, max: 255 },
                },
            ),
        ];
        for (msg, err) in cases {
            let mut out = vec![9];
            assert_eq!(encode(&msg, &mut out), Err(err));
            assert_eq!(out, [9]);
        }
        assert!(check_id("ok id").is_ok());
        assert!(check_id("").is_err());
    }

    #[test]
    fn reason_codes_are_stable_and_unique() {
        let codes: Vec<u8> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, (1..=10).collect::<Vec<u8>>());
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!(!r.to_string().is_empty());
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::from_code(11), None);
    }

    #[test]
    fn message_type_directions() {
        for code in 0..=255u8 {
            if let Some(t) = MessageType::from_code(code) {
                assert_eq!(t.code(), code);
                assert!(t.min_payload() <= t.max_payload());
                assert!(t.max_payload() <= MAX_PAYLOAD);
                assert_eq!(t.is_client_to_relay(), code < 0x80, "{t}");
            }
        }
    }

    #[test]
    fn ttl_secs_rounds_up_and_saturates() {
        assert_eq!(ttl_secs(Duration::from_secs(3600)), 3600);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 0);
        assert_eq!(ttl_secs(Duration::MAX), u32::MAX);
    }

    #[test]
    fn errors_display_actionable_text() {
        let e = ProtoError::Oversized {
            msg_type: MessageType::Reserve,
            len: 999,
            max: 130,
        };
        assert_eq!(
            e.to_string(),
            "RESERVE frame announces a 999-byte payload, at most 130 allowed"
        );
        assert!(ProtoError::UnknownType(0x47).to_string().contains("0x47"));
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(!boxed.to_string().is_empty());
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid: Vec<Vec<u8>> = samples().iter().map(enc).collect();
        let mut buf = Vec::new();
        for round in 0..20_000 {
            buf.clear();
            let r = rng.next();
            if round % 2 == 0 {
                // Mutated valid frame: flips, truncation, extension.
                let idx = usize::try_from(r % valid.len() as u64).expect("small");
                buf.extend_from_slice(&valid[idx]);
                for _ in 0..(rng.next() % 4) {
                    let len = buf.len() as u64;
                    if len > 0 {
                        let i = usize::try_from(rng.next() % len).expect("small");
                        buf[i] ^= 1 << (rng.next() % 8);
                    }
                }
                let cut = usize::try_from(rng.next() % (buf.len() as u64 + 4)).expect("small");
                buf.truncate(cut);
            } else {
                // Random bytes with a plausible header.
                let len = rng.next() % 300;
                for _ in 0..len {
                    buf.push(rng.next() as u8);
                }
                if let Some(first) = buf.first_mut() {
                    let types = [0x01, 0x02, 0x03, 0x04, 0x05, 0x81, 0x82, 0x83, 0x84, 0x85];
                    *first = types[usize::try_from(r % 10).expect("small")];
                }
            }
            match decode(&buf) {
                Ok(Some((msg, used))) => {
                    assert!(used <= buf.len());
                    // Anything we accept must re-encode to the same bytes.
                    let again = enc(&msg);
                    assert_eq!(&again[..], &buf[..used]);
                }
                Ok(None) => assert!(buf.len() < HEADER_LEN + MAX_PAYLOAD),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
}
