//! BEP 9 metadata exchange (`ut_metadata`): the message codec, the serving
//! side and the fetching state machine.
//!
//! The metadata is the raw bencoded info dictionary, cut into pieces of
//! [`PIECE_LEN`] bytes (the last may be shorter). Messages are a bencoded
//! dictionary (`msg_type`, `piece`, and `total_size` for data), and a `data`
//! message carries the piece's bytes right after the dictionary.
//!
//! - [`MetadataMsg`] decodes the extended-message payload (the bytes after the
//!   extended id) and encodes it back. Everything that can be checked without
//!   state is checked: `total_size` in 1..=[`MAX_METADATA_SIZE`], the piece
//!   index inside it, the piece exactly [`PIECE_LEN`] bytes except the last.
//!   An unknown `msg_type` decodes to `Ok(None)`: BEP 9 says to ignore it.
//! - [`MetadataServer`] answers requests from the info dictionary we have,
//!   with a per-peer token bucket as the flood protection BEP 9 allows. It
//!   exists only once the metadata is verified: until then BEP 9 requires
//!   answering every request with a `reject` (encode [`MetadataMsg::Reject`]).
//!   Like libtorrent, do not offer `ut_metadata` for private torrents (BEP 27).
//! - [`MetadataFetcher`] decides which piece to ask which peer for, collects
//!   the pieces, checks SHA-1 against the info-hash and, on a mismatch, says
//!   who sent what so the caller can blame, then starts over.
//!
//! None of these do I/O, read a clock (`now` is passed in), or frame messages
//! (the caller wraps payloads in `Message::Extended { id, payload }` with the
//! peer's `ut_metadata` id). They must not ban or close anything themselves:
//! they return typed errors and reports, and the caller acts on them. Memory is
//! bounded: the fetcher holds at most one metadata buffer of the chosen size
//! (never above [`MAX_METADATA_SIZE`]), a bounded record of failed attempts,
//! and a bounded peer table; the server a bounded table of buckets.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use sha1::{Digest as _, Sha1};

use crate::bencode::{self, BencodeError, DecodeOptions, Value};

/// Bytes per metadata piece (every piece but the last).
pub const PIECE_LEN: usize = 16 * 1024;

/// Largest metadata (info dictionary) accepted or served: 8 MiB, 512 pieces.
///
/// libtorrent trusts a handshake's `metadata_size` only up to 4 MiB and a
/// `data` message's `total_size` up to its `max_metadata_size` setting (30 MiB
/// by default). An info dictionary is about 20 bytes per piece plus the file
/// list, so 8 MiB covers ~400,000 pieces (a 100 GiB torrent at 256 KiB
/// pieces) or a very long file list, while bounding what one fetch can make
/// us allocate.
pub const MAX_METADATA_SIZE: u32 = 8 * 1024 * 1024;

/// Most pieces a metadata can have ([`MAX_METADATA_SIZE`] / [`PIECE_LEN`]).
pub const MAX_PIECES: u32 = MAX_METADATA_SIZE / PIECE_LEN as u32;

/// Largest dictionary part of a message. Real ones are under 60 bytes.
pub const MAX_DICT_LEN: usize = 1024;

/// Largest extended-message payload accepted by [`MetadataMsg::decode`]: a
/// full piece plus the dictionary. (libtorrent closes peers whose
/// `ut_metadata` message exceeds 17 KiB, which is the same bound.)
pub const MAX_PAYLOAD_LEN: usize = PIECE_LEN + MAX_DICT_LEN;

/// SHA-1 of one metadata piece as a peer sent it.
pub type Digest = [u8; 20];

const DICT_OPTS: DecodeOptions = DecodeOptions {
    max_depth: 4,
    max_len: MAX_DICT_LEN,
    require_sorted_keys: false,
};

/// Number of pieces of a metadata of `total_size` bytes.
pub fn piece_count(total_size: u32) -> u32 {
    total_size.div_ceil(PIECE_LEN as u32)
}

/// Length of `piece` in a metadata of `total_size` bytes, or `None` if the
/// piece is out of range.
pub fn piece_len(total_size: u32, piece: u32) -> Option<usize> {
    let start = u64::from(piece) * PIECE_LEN as u64;
    let total = u64::from(total_size);
    (start < total).then(|| (total - start).min(PIECE_LEN as u64) as usize)
}

fn sha1(data: &[u8]) -> Digest {
    Sha1::digest(data).into()
}

// ------------------------------------------------------------------ codec

/// One `ut_metadata` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMsg<'a> {
    /// `msg_type` 0: send me this piece.
    Request {
        /// Piece index.
        piece: u32,
    },
    /// `msg_type` 1: here is this piece.
    Data {
        /// Piece index.
        piece: u32,
        /// Size of the whole metadata in bytes.
        total_size: u32,
        /// The piece's bytes (borrowed from the payload).
        data: &'a [u8],
    },
    /// `msg_type` 2: I will not send this piece.
    Reject {
        /// Piece index.
        piece: u32,
    },
}

/// Why a `ut_metadata` payload was refused. Each of these is a protocol
/// violation by the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// Payload longer than [`MAX_PAYLOAD_LEN`].
    TooLarge {
        /// The payload's length.
        len: usize,
    },
    /// The dictionary is not valid bencode (or longer than [`MAX_DICT_LEN`]).
    Bencode(BencodeError),
    /// The message does not start with a dictionary.
    NotADict,
    /// A required key is missing or is not an integer.
    MissingKey(&'static str),
    /// `piece` is negative or beyond `u32`.
    BadPiece(i64),
    /// `total_size` is not in 1..=[`MAX_METADATA_SIZE`].
    SizeOutOfRange(i64),
    /// The piece index is not below the piece count of `total_size`.
    PieceOutOfRange {
        /// The piece index.
        piece: u32,
        /// The number of pieces.
        pieces: u32,
    },
    /// A data piece of the wrong length (every piece but the last must be
    /// [`PIECE_LEN`] bytes; the last exactly the remainder).
    WrongPieceLength {
        /// The piece index.
        piece: u32,
        /// The length it must have.
        expected: usize,
        /// The length it had.
        got: usize,
    },
    /// Bytes after the dictionary of a request or reject.
    TrailingData {
        /// How many.
        len: usize,
    },
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::TooLarge { len } => write!(
                f,
                "ut_metadata message of {len} bytes exceeds the limit of {MAX_PAYLOAD_LEN}"
            ),
            MetadataError::Bencode(e) => write!(f, "invalid ut_metadata message: {e}"),
            MetadataError::NotADict => {
                write!(f, "invalid ut_metadata message: not a dictionary")
            }
            MetadataError::MissingKey(k) => {
                write!(f, "ut_metadata message lacks the integer key '{k}'")
            }
            MetadataError::BadPiece(p) => write!(f, "ut_metadata piece index {p} is invalid"),
            MetadataError::SizeOutOfRange(n) => write!(
                f,
                "ut_metadata total_size {n} is not between 1 and {MAX_METADATA_SIZE}"
            ),
            MetadataError::PieceOutOfRange { piece, pieces } => write!(
                f,
                "ut_metadata piece {piece} is out of range (the metadata has {pieces} pieces)"
            ),
            MetadataError::WrongPieceLength {
                piece,
                expected,
                got,
            } => write!(
                f,
                "ut_metadata piece {piece} has {got} bytes, expected {expected}"
            ),
            MetadataError::TrailingData { len } => write!(
                f,
                "{len} unexpected bytes after a ut_metadata request or reject"
            ),
        }
    }
}

impl std::error::Error for MetadataError {}

impl<'a> MetadataMsg<'a> {
    /// Decodes an extended-message payload (after the extended id). `Ok(None)`
    /// is a message of a type this crate does not know, to be ignored.
    pub fn decode(payload: &'a [u8]) -> Result<Option<Self>, MetadataError> {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(MetadataError::TooLarge { len: payload.len() });
        }
        if payload.first() != Some(&b'd') {
            return Err(MetadataError::NotADict);
        }
        let (dict, used) = match bencode::decode_prefix_with(payload, &DICT_OPTS) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(MetadataError::Bencode(BencodeError::UnexpectedEof)),
            Err(e) => return Err(MetadataError::Bencode(e)),
        };
        let rest = payload.get(used..).unwrap_or_default();
        let int = |k: &'static str| {
            dict.get(k.as_bytes())
                .and_then(Value::as_int)
                .ok_or(MetadataError::MissingKey(k))
        };
        let msg_type = int("msg_type")?;
        if !(0..=2).contains(&msg_type) {
            return Ok(None);
        }
        let raw_piece = int("piece")?;
        let piece = u32::try_from(raw_piece).map_err(|_| MetadataError::BadPiece(raw_piece))?;
        if msg_type != 1 {
            if !rest.is_empty() {
                return Err(MetadataError::TrailingData { len: rest.len() });
            }
            return Ok(Some(if msg_type == 0 {
                MetadataMsg::Request { piece }
            } else {
                MetadataMsg::Reject { piece }
            }));
        }
        let raw_size = int("total_size")?;
        let total_size = u32::try_from(raw_size)
            .ok()
            .filter(|n| (1..=MAX_METADATA_SIZE).contains(n))
            .ok_or(MetadataError::SizeOutOfRange(raw_size))?;
        check_piece(piece, total_size, rest.len())?;
        Ok(Some(MetadataMsg::Data {
            piece,
            total_size,
            data: rest,
        }))
    }

    /// Appends the payload (dictionary, then the piece bytes for `Data`) to
    /// `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            MetadataMsg::Request { piece } => encode_dict(0, piece, None, out),
            MetadataMsg::Reject { piece } => encode_dict(2, piece, None, out),
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => {
                encode_dict(1, piece, Some(total_size), out);
                out.extend_from_slice(data);
            }
        }
    }
}

/// Appends only the dictionary of a `data` message, for a caller that queues
/// the piece bytes as a separate slice (as the upload path does with blocks).
pub fn encode_data_header(piece: u32, total_size: u32, out: &mut Vec<u8>) {
    encode_dict(1, piece, Some(total_size), out);
}

fn encode_dict(msg_type: i64, piece: u32, total_size: Option<u32>, out: &mut Vec<u8>) {
    // Keys in sorted order: msg_type < piece < total_size.
    out.push(b'd');
    bencode::encode_bytes(b"msg_type", out);
    bencode::encode_int(msg_type, out);
    bencode::encode_bytes(b"piece", out);
    bencode::encode_int(i64::from(piece), out);
    if let Some(n) = total_size {
        bencode::encode_bytes(b"total_size", out);
        bencode::encode_int(i64::from(n), out);
    }
    out.push(b'e');
}

fn check_piece(piece: u32, total_size: u32, len: usize) -> Result<(), MetadataError> {
    let expected = piece_len(total_size, piece).ok_or(MetadataError::PieceOutOfRange {
        piece,
        pieces: piece_count(total_size),
    })?;
    if len != expected {
        return Err(MetadataError::WrongPieceLength {
            piece,
            expected,
            got: len,
        });
    }
    Ok(())
}

// ------------------------------------------------------------------ server

/// Flood protection of [`MetadataServer`], per peer.
///
/// A peer may take `pieces * burst_factor + burst_extra` pieces at once (BEP 9:
/// "the number of pieces of metadata times a factor"), enough to fetch the
/// metadata twice; after that it gets one more piece per `refill_interval`.
/// Requests beyond that are answered with a `reject` (cheap, and what BEP 9
/// allows); a peer that keeps requesting while rejected, `flood_limit` times
/// in a row, gets [`ServerError::Flooding`], which the caller should treat as
/// hostile (close the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Multiplier of the piece count in the bucket's capacity.
    pub burst_factor: u32,
    /// Added to the capacity, so tiny metadata still allows a few retries.
    pub burst_extra: u32,
    /// Time to earn one more piece once the bucket is empty.
    pub refill_interval: Duration,
    /// Rate-limited requests in a row before [`ServerError::Flooding`].
    pub flood_limit: u32,
    /// Most peers with a bucket at once (beyond, see [`MetadataServer::on_request`]).
    pub max_peers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            burst_factor: 2,
            burst_extra: 4,
            // 4 pieces/s, 64 KiB/s per peer once the burst is spent.
            refill_interval: Duration::from_millis(250),
            flood_limit: 64,
            max_peers: 4096,
        }
    }
}

/// Why a request was answered with a reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The piece index is beyond the metadata.
    OutOfRange,
    /// The peer's token bucket is empty.
    RateLimited,
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Send this piece.
    Data {
        /// Piece index.
        piece: u32,
        /// Size of the whole metadata.
        total_size: u32,
        /// The piece's bytes.
        data: &'a [u8],
    },
    /// Send a reject.
    Reject {
        /// Piece index (echoed, as BEP 9 requires).
        piece: u32,
        /// Why (for logs; not sent).
        reason: RejectReason,
    },
}

impl<'a> Reply<'a> {
    /// The message to send.
    pub fn msg(&self) -> MetadataMsg<'a> {
        match *self {
            Reply::Data {
                piece,
                total_size,
                data,
            } => MetadataMsg::Data {
                piece,
                total_size,
                data,
            },
            Reply::Reject { piece, .. } => MetadataMsg::Reject { piece },
        }
    }
}

/// Errors of [`MetadataServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerError {
    /// The info dictionary given to [`MetadataServer::new`] is empty or
    /// larger than [`MAX_METADATA_SIZE`].
    BadSize {
        /// Its size.
        size: usize,
    },
    /// The info dictionary does not hash to the info-hash (BEP 9: a peer must
    /// only serve metadata that passes the check).
    HashMismatch,
    /// The peer kept requesting while rate-limited; close it.
    Flooding {
        /// Rate-limited requests in a row.
        rejected: u32,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::BadSize { size } => write!(
                f,
                "cannot serve metadata of {size} bytes (must be 1..={MAX_METADATA_SIZE})"
            ),
            ServerError::HashMismatch => {
                write!(f, "metadata to serve does not match the info-hash")
            }
            ServerError::Flooding { rejected } => write!(
                f,
                "peer sent {rejected} metadata requests in a row beyond its rate limit"
            ),
        }
    }
}

impl std::error::Error for ServerError {}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When the next token is earned from (only meaningful below capacity).
    since: Instant,
    /// Rate-limited requests since the last one served.
    rejected: u32,
}

/// Serves our info dictionary to peers (see the module docs).
#[derive(Debug)]
pub struct MetadataServer<P> {
    info: Vec<u8>,
    total_size: u32,
    capacity: u32,
    limits: ServerLimits,
    buckets: HashMap<P, Bucket>,
}

impl<P: Copy + Eq + Hash> MetadataServer<P> {
    /// Serves `info` (the raw info dictionary) with default limits, after
    /// checking that its SHA-1 is `info_hash`.
    pub fn new(info: Vec<u8>, info_hash: &[u8; 20]) -> Result<Self, ServerError> {
        Self::with_limits(info, info_hash, ServerLimits::default())
    }

    /// [`MetadataServer::new`] with explicit limits.
    pub fn with_limits(
        info: Vec<u8>,
        info_hash: &[u8; 20],
        limits: ServerLimits,
    ) -> Result<Self, ServerError> {
        let total_size = u32::try_from(info.len())
            .ok()
            .filter(|n| (1..=MAX_METADATA_SIZE).contains(n))
            .ok_or(ServerError::BadSize { size: info.len() })?;
        if sha1(&info) != *info_hash {
            return Err(ServerError::HashMismatch);
        }
        let capacity = piece_count(total_size)
            .saturating_mul(limits.burst_factor)
            .saturating_add(limits.burst_extra)
            .max(1);
        Ok(MetadataServer {
            info,
            total_size,
            capacity,
            limits,
            buckets: HashMap::new(),
        })
    }

    /// Size of the metadata in bytes (what to put in `metadata_size`).
    pub fn total_size(&self) -> u32 {
        self.total_size
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        piece_count(self.total_size)
    }

    /// The info dictionary.
    pub fn info(&self) -> &[u8] {
        &self.info
    }

    /// The bytes of `piece`, if it exists.
    pub fn piece(&self, piece: u32) -> Option<&[u8]> {
        let len = piece_len(self.total_size, piece)?;
        let start = piece as usize * PIECE_LEN;
        self.info.get(start..start + len)
    }

    /// Answers a request from `peer` for `piece`. Out-of-range pieces are
    /// rejected (as libtorrent does) without costing a token. When the bucket
    /// table is full, buckets that are full again are forgotten (they hold no
    /// history); if none is, a new peer is rejected as rate-limited.
    pub fn on_request(
        &mut self,
        peer: P,
        piece: u32,
        now: Instant,
    ) -> Result<Reply<'_>, ServerError> {
        if piece_len(self.total_size, piece).is_none() {
            return Ok(Reply::Reject {
                piece,
                reason: RejectReason::OutOfRange,
            });
        }
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= self.limits.max_peers {
            self.forget_full_buckets(now);
            if self.buckets.len() >= self.limits.max_peers {
                return Ok(Reply::Reject {
                    piece,
                    reason: RejectReason::RateLimited,
                });
            }
        }
        let (capacity, interval, flood_limit) = (
            self.capacity,
            self.limits.refill_interval,
            self.limits.flood_limit,
        );
        let b = self.buckets.entry(peer).or_insert(Bucket {
            tokens: capacity,
            since: now,
            rejected: 0,
        });
        refill(b, capacity, interval, now);
        if b.tokens == 0 {
            b.rejected = b.rejected.saturating_add(1);
            if b.rejected > flood_limit {
                return Err(ServerError::Flooding {
                    rejected: b.rejected,
                });
            }
            return Ok(Reply::Reject {
                piece,
                reason: RejectReason::RateLimited,
            });
        }
        if b.tokens == capacity {
            // The refill clock starts when the bucket stops being full.
            b.since = now;
        }
        b.tokens -= 1;
        b.rejected = 0;
        let data = self.piece(piece).unwrap_or_default();
        Ok(Reply::Data {
            piece,
            total_size: self.total_size,
            data,
        })
    }

    /// The peer disconnected: forget its bucket.
    pub fn peer_gone(&mut self, peer: P) {
        self.buckets.remove(&peer);
    }

    fn forget_full_buckets(&mut self, now: Instant) {
        let (capacity, interval) = (self.capacity, self.limits.refill_interval);
        self.buckets.retain(|_, b| {
            refill(b, capacity, interval, now);
            b.tokens < capacity
        });
    }
}

fn refill(b: &mut Bucket, capacity: u32, interval: Duration, now: Instant) {
    if b.tokens >= capacity {
        return;
    }
    if interval.is_zero() {
        b.tokens = capacity;
        return;
    }
    let elapsed = now.saturating_duration_since(b.since);
    let earned = elapsed.as_nanos() / interval.as_nanos();
    if earned == 0 {
        return;
    }
    let room = u128::from(capacity - b.tokens);
    if earned >= room {
        b.tokens = capacity;
        b.since = now;
    } else {
        // earned < room <= u32::MAX, so both conversions are exact.
        b.tokens += earned as u32;
        b.since += interval * earned as u32;
    }
}

// ------------------------------------------------------------------ fetcher

/// Timing and limits of [`MetadataFetcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetcherConfig {
    /// A request unanswered for this long is given to another peer, and the
    /// silent peer is not asked again for `request_timeout`.
    pub request_timeout: Duration,
    /// A peer that rejects a request is not asked again for this long
    /// (libtorrent: 1 minute).
    pub reject_backoff: Duration,
    /// Requests outstanding per peer (libtorrent: 2).
    pub max_inflight: usize,
    /// Most peers tracked at once.
    pub max_peers: usize,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            request_timeout: Duration::from_secs(10),
            reject_backoff: Duration::from_secs(60),
            max_inflight: 2,
            max_peers: 1024,
        }
    }
}

/// Failed attempts remembered to compare with the verified metadata.
pub const MAX_FAILURE_RECORDS: usize = 8;

/// A piece was stored, or the fetch finished one way or the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<P> {
    /// The piece was stored; `have` of `total` pieces are in.
    Stored {
        /// Pieces received in this attempt.
        have: u32,
        /// Pieces of the metadata.
        total: u32,
    },
    /// We already had this piece (a late answer to a re-assigned request).
    Duplicate,
    /// Not wanted now: the fetch is over, the size being fetched changed, or
    /// after a failure the piece is reserved for the one peer re-sending it.
    Ignored,
    /// Every piece is in: take the [`VerifyJob`] ([`MetadataFetcher::take_verify_job`]),
    /// run it off the event loop (SHA-1 of up to [`MAX_METADATA_SIZE`] bytes) and
    /// hand the result to [`MetadataFetcher::on_verified`]. Nothing is requested
    /// meanwhile.
    Assembled,
    /// The metadata is complete and matches the info-hash. The fetcher is
    /// done; every later call is a no-op.
    Complete(Completed<P>),
    /// Every piece arrived but the SHA-1 is wrong. The fetch has started over.
    HashFailed(HashFailure<P>),
}

/// The verified metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed<P> {
    /// The info dictionary; its SHA-1 is the info-hash.
    pub info: Vec<u8>,
    /// Peers that sent its pieces, each once, in order of first piece.
    pub senders: Vec<P>,
    /// Peers proven to have lied: in an earlier failed attempt of the same
    /// size they sent a piece that differs from the verified one (the piece
    /// index is given). Ban them.
    pub liars: Vec<(P, u32)>,
}

/// A metadata that did not match its info-hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashFailure<P> {
    /// The size that was fetched.
    pub total_size: u32,
    /// For every piece: index, sender, SHA-1 of what it sent. The shape of
    /// `blame::Blame::piece_failed`'s `blocks` (pieces play the blocks).
    pub pieces: Vec<(u32, P, Digest)>,
    /// Distinct senders, in order of first piece.
    pub senders: Vec<P>,
    /// The single peer that sent every piece, if so: it is the liar (ban it).
    /// The fetcher itself never asks it again.
    pub sole_sender: Option<P>,
}

/// Errors of [`MetadataFetcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// A handshake's `metadata_size` is 0 or above [`MAX_METADATA_SIZE`]; the
    /// peer is kept but not asked. Not proof of lying (a real torrent can be
    /// bigger than our limit): do not ban for it.
    AbsurdSize {
        /// The announced size.
        size: u64,
    },
    /// The peer table is full ([`FetcherConfig::max_peers`]); the peer is not tracked.
    TooManyPeers,
    /// A `data` message's `total_size` differs from the peer's handshake.
    TotalSizeChanged {
        /// The size from its handshake (`None`: it announced none).
        announced: Option<u32>,
        /// The size in the message.
        got: u32,
    },
    /// A piece index beyond the metadata.
    PieceOutOfRange {
        /// The piece index.
        piece: u32,
        /// The number of pieces.
        pieces: u32,
    },
    /// A piece of the wrong length.
    WrongPieceLength {
        /// The piece index.
        piece: u32,
        /// The length it must have.
        expected: usize,
        /// The length it had.
        got: usize,
    },
    /// Data for a piece we never asked this peer for.
    Unrequested {
        /// The piece index.
        piece: u32,
    },
}

impl FetchError {
    /// Whether the peer broke the protocol (close it). Only
    /// [`FetchError::AbsurdSize`] and [`FetchError::TooManyPeers`] are not.
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(
            self,
            FetchError::AbsurdSize { .. } | FetchError::TooManyPeers
        )
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::AbsurdSize { size } => write!(
                f,
                "peer announced metadata_size {size}, outside 1..={MAX_METADATA_SIZE}; not asking it"
            ),
            FetchError::TooManyPeers => write!(f, "too many peers to track for metadata"),
            FetchError::TotalSizeChanged { announced, got } => match announced {
                Some(a) => write!(
                    f,
                    "metadata total_size {got} differs from the metadata_size {a} the peer announced"
                ),
                None => write!(
                    f,
                    "peer sent metadata (total_size {got}) without announcing metadata_size"
                ),
            },
            FetchError::PieceOutOfRange { piece, pieces } => write!(
                f,
                "metadata piece {piece} is out of range (the metadata has {pieces} pieces)"
            ),
            FetchError::WrongPieceLength {
                piece,
                expected,
                got,
            } => write!(
                f,
                "metadata piece {piece} has {got} bytes, expected {expected}"
            ),
            FetchError::Unrequested { piece } => {
                write!(
                    f,
                    "peer sent metadata piece {piece}, which we never asked it for"
                )
            }
        }
    }
}

impl std::error::Error for FetchError {}

/// One bit per piece, enough for [`MAX_PIECES`].
#[derive(Debug, Clone, Copy, Default)]
struct PieceSet([u64; (MAX_PIECES as usize).div_ceil(64)]);

impl PieceSet {
    fn insert(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }

    fn contains(&self, i: u32) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

#[derive(Debug)]
struct FetchPeer {
    /// Registration order; ties between sizes go to the earliest announcer.
    seq: u64,
    /// Its plausible `metadata_size`, if any.
    size: Option<u32>,
    /// Outstanding requests: piece and when it was sent.
    inflight: Vec<(u32, Instant)>,
    /// Pieces ever asked of it for `size` (late answers stay acceptable).
    asked: PieceSet,
    /// Not asked before this.
    backoff_until: Option<Instant>,
    /// Sole sender of a failed attempt: never asked again.
    excluded: bool,
    /// Timeouts in a row; each doubles the rest (reset by a delivered piece),
    /// so silent peers cannot keep taking turns at holding a piece.
    strikes: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot<P> {
    from: Option<P>,
    /// When it was first asked for since it was last free. Once that is a
    /// timeout ago, any peer may be asked for it too: expiry does not reset
    /// it, so peers that never answer cannot keep the piece away from the
    /// others by taking turns. Reset when no request for it is outstanding
    /// because of a reject or a peer leaving.
    open_since: Option<Instant>,
}

#[derive(Debug)]
struct Attempt<P> {
    size: u32,
    /// Allocated on the first piece, so choosing a size costs nothing.
    buf: Vec<u8>,
    slots: Vec<Slot<P>>,
    have: u32,
    /// After a failure, the whole retry comes from one peer so that a second
    /// failure has a sole sender (as the main picker does for pieces).
    exclusive: Option<P>,
    /// Peers that held `exclusive` and lost it (timeout, reject): they get it
    /// back only once every other usable peer had its turn.
    passed_over: Vec<P>,
}

impl<P: Copy> Attempt<P> {
    fn new(size: u32) -> Self {
        Attempt {
            size,
            buf: Vec::new(),
            slots: vec![
                Slot {
                    from: None,
                    open_since: None,
                };
                piece_count(size) as usize
            ],
            have: 0,
            exclusive: None,
            passed_over: Vec::new(),
        }
    }
}

/// The hashing a complete attempt needs: the SHA-1 of the whole metadata and of
/// each of its pieces. `Send`, to run on a worker thread.
#[derive(Debug)]
pub struct VerifyJob {
    buf: Vec<u8>,
    size: u32,
    info_hash: [u8; 20],
}

impl VerifyJob {
    /// Hashes the metadata and its pieces (about 2 x its size in SHA-1 work).
    pub fn run(self) -> Verified {
        let matches = sha1(&self.buf) == self.info_hash;
        let digests = (0..piece_count(self.size))
            .map(|i| {
                let start = i as usize * PIECE_LEN;
                let len = piece_len(self.size, i).unwrap_or(0);
                sha1(self.buf.get(start..start + len).unwrap_or_default())
            })
            .collect();
        Verified {
            buf: self.buf,
            matches,
            digests,
        }
    }

    /// The assembled metadata (the info dictionary, if it verifies).
    pub fn data(&self) -> &[u8] {
        &self.buf
    }
}

/// The result of a [`VerifyJob`], for [`MetadataFetcher::on_verified`].
#[derive(Debug)]
pub struct Verified {
    buf: Vec<u8>,
    matches: bool,
    digests: Vec<Digest>,
}

impl Verified {
    /// Whether the metadata's SHA-1 is the info-hash.
    pub fn matches(&self) -> bool {
        self.matches
    }

    /// The metadata.
    pub fn data(&self) -> &[u8] {
        &self.buf
    }
}

#[derive(Debug)]
struct FailureRecord<P> {
    size: u32,
    pieces: Vec<(u32, P, Digest)>,
}

/// Fetches the metadata of one torrent from its peers (see the module docs).
///
/// **Which size.** Each peer's handshake `metadata_size` is a vote; sizes of 0
/// or above [`MAX_METADATA_SIZE`] are refused ([`FetchError::AbsurdSize`]).
/// The size fetched is the one with the fewest failed attempts, then the most
/// votes, then the earliest announcer. It is re-chosen only while no piece of
/// it is stored, or when no peer announcing it is left (its pieces are then
/// dropped), so a late majority cannot make us throw work away. Only peers
/// whose own size is the chosen one are asked, so pieces of differently-sized
/// metadata never mix.
///
/// **Which piece from whom.** [`MetadataFetcher::next_request`] gives a peer
/// the first piece nobody has been asked for, else the first piece first
/// asked for a timeout ago and still missing (it is then open to every peer,
/// duplicates allowed, so silent peers taking turns cannot hold it); at most
/// [`FetcherConfig::max_inflight`] per peer. A peer whose request timed out
/// rests for a timeout, doubled per timeout in a row; one that rejected rests
/// [`FetcherConfig::reject_backoff`].
///
/// **Hash failure.** All pieces in, SHA-1 wrong: [`Progress::HashFailed`] says
/// who sent which piece (with digests, in the shape `blame::Blame` takes),
/// a sole sender is excluded from then on, and the fetch restarts with one peer
/// sending everything (the first one asked), so a second failure convicts its
/// sender. Failed attempts are remembered ([`MAX_FAILURE_RECORDS`]), and when
/// the metadata finally verifies, peers whose earlier pieces differ from it
/// are reported in [`Completed::liars`].
#[derive(Debug)]
pub struct MetadataFetcher<P> {
    info_hash: [u8; 20],
    cfg: FetcherConfig,
    peers: HashMap<P, FetchPeer>,
    next_seq: u64,
    attempt: Option<Attempt<P>>,
    /// A complete attempt whose hashing is on its way ([`Progress::Assembled`]);
    /// the bool says whether its [`VerifyJob`] was handed out.
    verifying: Option<(Attempt<P>, bool)>,
    /// Failed attempts per size (bounded by the number of sizes announced).
    failures_by_size: HashMap<u32, u32>,
    records: VecDeque<FailureRecord<P>>,
    /// Set after a failure: the next attempt is served by one peer.
    retry_exclusive: bool,
    done: bool,
}

impl<P: Copy + Eq + Hash> MetadataFetcher<P> {
    /// A fetcher for the torrent with this info-hash, with default timing.
    pub fn new(info_hash: [u8; 20]) -> Self {
        Self::with_config(info_hash, FetcherConfig::default())
    }

    /// [`MetadataFetcher::new`] with explicit timing and limits. Durations
    /// are capped at a day (so deadline arithmetic cannot overflow) and
    /// `max_inflight` is at least 1.
    pub fn with_config(info_hash: [u8; 20], cfg: FetcherConfig) -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let cfg = FetcherConfig {
            request_timeout: cfg.request_timeout.min(DAY),
            reject_backoff: cfg.reject_backoff.min(DAY),
            max_inflight: cfg.max_inflight.max(1),
            max_peers: cfg.max_peers,
        };
        MetadataFetcher {
            info_hash,
            cfg,
            peers: HashMap::new(),
            next_seq: 0,
            attempt: None,
            verifying: None,
            failures_by_size: HashMap::new(),
            records: VecDeque::new(),
            retry_exclusive: false,
            done: false,
        }
    }

    /// Whether the metadata was fetched and verified.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// The size being fetched, once chosen.
    pub fn metadata_size(&self) -> Option<u32> {
        self.attempt.as_ref().map(|a| a.size)
    }

    /// Pieces received in this attempt and pieces in all, once a size is chosen.
    pub fn progress(&self) -> Option<(u32, u32)> {
        self.attempt.as_ref().map(|a| (a.have, piece_count(a.size)))
    }

    /// A peer's extension handshake enables `ut_metadata` with this
    /// `metadata_size` (call again for a later handshake; a changed size drops
    /// what it was asked). A peer without a size is tracked but not asked:
    /// BEP 9 peers that have the metadata announce its size.
    pub fn add_peer(&mut self, peer: P, metadata_size: Option<u64>) -> Result<(), FetchError> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.cfg.max_peers {
            return Err(FetchError::TooManyPeers);
        }
        let sane = metadata_size.and_then(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_METADATA_SIZE).contains(n))
        });
        let seq = self.next_seq;
        let entry = self.peers.entry(peer).or_insert_with(|| FetchPeer {
            seq,
            size: None,
            inflight: Vec::new(),
            asked: PieceSet::default(),
            backoff_until: None,
            excluded: false,
            strikes: 0,
        });
        if entry.seq == seq {
            self.next_seq += 1;
        }
        if entry.size != sane {
            entry.size = sane;
            entry.asked = PieceSet::default();
            let dropped = std::mem::take(&mut entry.inflight);
            self.release(peer, &dropped);
        }
        match metadata_size {
            Some(n) if sane.is_none() => Err(FetchError::AbsurdSize { size: n }),
            _ => Ok(()),
        }
    }

    /// The peer disconnected (or disabled `ut_metadata`): its requests go to
    /// others. Exclusion is forgotten with it, so key peers by something that
    /// a ban covers (the caller bans a liar's address).
    pub fn peer_gone(&mut self, peer: P) {
        if let Some(p) = self.peers.remove(&peer) {
            self.release(peer, &p.inflight);
        }
    }

    /// The piece to request from `peer` now, if any. Call when the peer is
    /// added, after each of its answers, and on a timer (see
    /// [`MetadataFetcher::next_wake`]); call repeatedly to fill its pipeline.
    pub fn next_request(&mut self, peer: P, now: Instant) -> Option<u32> {
        if self.done || self.verifying.is_some() {
            return None;
        }
        self.expire(now);
        self.choose_size();
        let max_inflight = self.cfg.max_inflight;
        let p = self.peers.get(&peer)?;
        let size = p.size?;
        if p.excluded
            || p.inflight.len() >= max_inflight
            || p.backoff_until.is_some_and(|t| t > now)
        {
            return None;
        }
        let timeout = self.cfg.request_timeout;
        let attempt = self.attempt.as_mut()?;
        if attempt.size != size {
            return None;
        }
        if self.retry_exclusive {
            let usable = |q: &FetchPeer| {
                !q.excluded && q.size == Some(size) && q.backoff_until.is_none_or(|t| t <= now)
            };
            if let Some(x) = attempt.exclusive
                && x != peer
            {
                if self.peers.get(&x).is_some_and(usable) {
                    return None;
                }
                if !attempt.passed_over.contains(&x) {
                    attempt.passed_over.push(x);
                }
                attempt.exclusive = None;
            }
            if attempt.exclusive.is_none() {
                if attempt.passed_over.contains(&peer) {
                    let someone_else = self.peers.iter().any(|(q, qp)| {
                        *q != peer && usable(qp) && !attempt.passed_over.contains(q)
                    });
                    if someone_else {
                        return None;
                    }
                    // Everyone had a turn: start a new round of turns.
                    attempt.passed_over.clear();
                }
                attempt.exclusive = Some(peer);
            }
        }
        let p = self.peers.get_mut(&peer)?;
        let free = |i: usize, s: &Slot<P>| {
            s.from.is_none() && !p.inflight.iter().any(|&(q, _)| q as usize == i)
        };
        let pick = attempt
            .slots
            .iter()
            .enumerate()
            .position(|(i, s)| free(i, s) && s.open_since.is_none())
            .or_else(|| {
                attempt.slots.iter().enumerate().position(|(i, s)| {
                    free(i, s) && s.open_since.is_some_and(|t| now >= t + timeout)
                })
            })?;
        let piece = u32::try_from(pick).ok()?;
        attempt.slots[pick].open_since.get_or_insert(now);
        p.inflight.push((piece, now));
        p.asked.insert(piece);
        Some(piece)
    }

    /// The peer rejected `piece`. Returns whether that answered one of our
    /// requests (an unrequested reject is harmless and ignored). The peer is
    /// not asked again for [`FetcherConfig::reject_backoff`].
    pub fn on_reject(&mut self, peer: P, piece: u32, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let Some(at) = p.inflight.iter().position(|&(q, _)| q == piece) else {
            return false;
        };
        p.inflight.swap_remove(at);
        p.backoff_until = Some(now + self.cfg.reject_backoff);
        self.release(peer, &[(piece, now)]);
        true
    }

    /// A `data` message from `peer`. Errors are protocol violations of the
    /// peer (nothing is stored); see [`Progress`] for the rest.
    pub fn on_data(
        &mut self,
        peer: P,
        piece: u32,
        total_size: u32,
        data: &[u8],
    ) -> Result<Progress<P>, FetchError> {
        if self.done || self.verifying.is_some() {
            return Ok(Progress::Ignored);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(FetchError::Unrequested { piece });
        };
        if p.size != Some(total_size) {
            return Err(FetchError::TotalSizeChanged {
                announced: p.size,
                got: total_size,
            });
        }
        check_piece(piece, total_size, data.len()).map_err(|e| match e {
            MetadataError::WrongPieceLength {
                piece,
                expected,
                got,
            } => FetchError::WrongPieceLength {
                piece,
                expected,
                got,
            },
            _ => FetchError::PieceOutOfRange {
                piece,
                pieces: piece_count(total_size),
            },
        })?;
        if !p.asked.contains(piece) {
            return Err(FetchError::Unrequested { piece });
        }
        if let Some(at) = p.inflight.iter().position(|&(q, _)| q == piece) {
            p.inflight.swap_remove(at);
        }
        p.strikes = 0;
        let Some(a) = self.attempt.as_mut() else {
            return Ok(Progress::Ignored);
        };
        if a.size != total_size || (self.retry_exclusive && a.exclusive != Some(peer)) {
            return Ok(Progress::Ignored);
        }
        let Some(slot) = a.slots.get_mut(piece as usize) else {
            return Ok(Progress::Ignored);
        };
        if slot.from.is_some() {
            return Ok(Progress::Duplicate);
        }
        slot.from = Some(peer);
        if a.buf.is_empty() {
            a.buf = vec![0; a.size as usize];
        }
        let start = piece as usize * PIECE_LEN;
        if let Some(dst) = a.buf.get_mut(start..start + data.len()) {
            dst.copy_from_slice(data);
        }
        a.have += 1;
        let total = piece_count(a.size);
        if a.have < total {
            return Ok(Progress::Stored {
                have: a.have,
                total,
            });
        }
        self.verifying = self.attempt.take().map(|a| (a, false));
        Ok(Progress::Assembled)
    }

    /// The hashing of the complete attempt, handed out once after
    /// [`Progress::Assembled`].
    pub fn take_verify_job(&mut self) -> Option<VerifyJob> {
        let info_hash = self.info_hash;
        match &mut self.verifying {
            Some((a, taken)) if !*taken => {
                *taken = true;
                Some(VerifyJob {
                    buf: std::mem::take(&mut a.buf),
                    size: a.size,
                    info_hash,
                })
            }
            _ => None,
        }
    }

    /// The hashing came back: the metadata is complete, or the fetch starts over
    /// (see [`Progress::HashFailed`]). `Ignored` if nothing was being verified.
    pub fn on_verified(&mut self, v: Verified) -> Progress<P> {
        let Some((mut a, _)) = self.verifying.take() else {
            return Progress::Ignored;
        };
        a.buf = v.buf;
        self.finish(a, v.matches, &v.digests)
    }

    /// The earliest time a timeout or backoff ends, so the caller knows when
    /// calling [`MetadataFetcher::next_request`] may give something new.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let timeout = self.cfg.request_timeout;
        self.peers
            .values()
            .flat_map(|p| {
                p.inflight
                    .iter()
                    .map(move |&(_, t)| t + timeout)
                    .chain(p.backoff_until)
            })
            .min()
    }

    /// Requests older than the timeout: the piece is re-assignable (its slot
    /// says so by age) and the silent peer rests for one timeout, doubled for
    /// each timeout in a row (up to 32 timeouts' worth).
    fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.request_timeout;
        for p in self.peers.values_mut() {
            let before = p.inflight.len();
            p.inflight.retain(|&(_, t)| now < t + timeout);
            if p.inflight.len() != before {
                let until = now + timeout * (1u32 << p.strikes.min(5));
                p.strikes = p.strikes.saturating_add(1);
                p.backoff_until = Some(p.backoff_until.map_or(until, |b| b.max(until)));
            }
        }
    }

    /// `peer`'s requests for `pieces` are gone (reject, size change, peer
    /// left): a piece nobody else was asked for is free again at once, and a
    /// holder of the retry gives it up.
    fn release(&mut self, peer: P, pieces: &[(u32, Instant)]) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        for &(piece, _) in pieces {
            let asked_elsewhere = self
                .peers
                .values()
                .any(|q| q.inflight.iter().any(|&(x, _)| x == piece));
            if !asked_elsewhere && let Some(s) = a.slots.get_mut(piece as usize) {
                s.open_since = None;
            }
        }
        if a.exclusive == Some(peer) && !self.peers.contains_key(&peer) {
            a.exclusive = None;
        }
    }

    fn choose_size(&mut self) {
        let usable = |p: &FetchPeer| !p.excluded;
        if let Some(a) = &self.attempt
            && a.have > 0
            && self
                .peers
                .values()
                .any(|p| usable(p) && p.size == Some(a.size))
        {
            return;
        }
        // (failures, -votes, first seq) per size; smallest wins.
        let mut votes: HashMap<u32, (u32, u64)> = HashMap::new();
        for p in self.peers.values().filter(|p| usable(p)) {
            if let Some(s) = p.size {
                let e = votes.entry(s).or_insert((0, p.seq));
                e.0 += 1;
                e.1 = e.1.min(p.seq);
            }
        }
        let best = votes
            .into_iter()
            .min_by_key(|&(size, (n, seq))| {
                let fails = self.failures_by_size.get(&size).copied().unwrap_or(0);
                (fails, std::cmp::Reverse(n), seq)
            })
            .map(|(size, _)| size);
        match (best, &self.attempt) {
            (Some(s), Some(a)) if a.size == s => {}
            (Some(s), _) => self.attempt = Some(Attempt::new(s)),
            (None, _) => {}
        }
    }

    fn finish(&mut self, a: Attempt<P>, matches: bool, digests: &[Digest]) -> Progress<P> {
        let mut senders: Vec<P> = Vec::new();
        for s in &a.slots {
            if let Some(p) = s.from
                && !senders.contains(&p)
            {
                senders.push(p);
            }
        }
        let digest = |i: u32| digests.get(i as usize).copied().unwrap_or_default();
        if matches {
            let mut liars: Vec<(P, u32)> = Vec::new();
            for r in self.records.iter().filter(|r| r.size == a.size) {
                for &(i, p, d) in &r.pieces {
                    if digest(i) != d && !liars.iter().any(|&(l, _)| l == p) {
                        liars.push((p, i));
                    }
                }
            }
            self.done = true;
            self.peers.clear();
            self.records.clear();
            return Progress::Complete(Completed {
                info: a.buf,
                senders,
                liars,
            });
        }
        let pieces: Vec<(u32, P, Digest)> = a
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let i = u32::try_from(i).ok()?;
                Some((i, s.from?, digest(i)))
            })
            .collect();
        let sole_sender = match senders[..] {
            [only] => Some(only),
            _ => None,
        };
        if let Some(liar) = sole_sender
            && let Some(p) = self.peers.get_mut(&liar)
        {
            p.excluded = true;
            p.inflight.clear();
        }
        // Bounded: an entry exists only for a size that was fully fetched.
        if self.failures_by_size.len() < MAX_FAILURE_RECORDS * 8
            || self.failures_by_size.contains_key(&a.size)
        {
            *self.failures_by_size.entry(a.size).or_insert(0) += 1;
        }
        if self.records.len() >= MAX_FAILURE_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(FailureRecord {
            size: a.size,
            pieces: pieces.clone(),
        });
        self.retry_exclusive = true;
        self.choose_size();
        Progress::HashFailed(HashFailure {
            total_size: a.size,
            pieces,
            senders,
            sole_sender,
        })
    }
}

#[cfg(test)]
mod tests;
