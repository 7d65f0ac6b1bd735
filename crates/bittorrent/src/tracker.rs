//! BEP 3 HTTP tracker announce: request building and response parsing
//! (with BEP 23 compact IPv4 peers and BEP 7 compact `peers6`).
//!
//! [`build_request`] turns an `http://` announce URL plus an
//! [`AnnounceRequest`] into the host/port to connect to and the complete
//! HTTP/1.0 request bytes (`Connection: close`). [`parse_response_partial`]
//! and [`parse_response`] parse the raw bytes read back from the socket.
//!
//! Framing: the body ends at `Content-Length`, at the end of a chunked body
//! (chunked transfer-encoding is decoded, bounded by [`MAX_RESPONSE_SIZE`],
//! although HTTP/1.0 servers should not send it), or — with neither — where
//! the bencoded body value ends, so the caller can stop reading without
//! waiting for the server to close. Compressed bodies (`Content-Encoding`
//! other than `identity`) and redirects (3xx) are reported as errors, not
//! followed; `https://` and `udp://` trackers are out of scope.
//!
//! This module does no I/O, no DNS and keeps no state; it must not panic or
//! buffer beyond [`MAX_RESPONSE_SIZE`] on hostile tracker output.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::bencode::{self, BencodeError, DecodeOptions, Value};

/// Largest accepted HTTP response (head + body), in bytes.
pub const MAX_RESPONSE_SIZE: usize = 1024 * 1024;
/// Largest accepted status line + headers, in bytes.
pub const MAX_HEADER_SIZE: usize = 16 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;
/// Most peers kept from one response; further peers are silently dropped.
pub const MAX_PEERS: usize = 5000;
/// Longest accepted announce URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest failure/warning text kept (longer text is cut).
pub const MAX_TEXT_LEN: usize = 1024;

/// Peer-id prefix of this client (Azureus style).
pub const PEER_ID_PREFIX: &[u8; 8] = b"-RE0001-";

/// The `event` parameter of an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceEvent {
    /// First announce of a download.
    Started,
    /// The download finished.
    Completed,
    /// The client is leaving the swarm.
    Stopped,
}

impl AnnounceEvent {
    fn as_str(self) -> &'static str {
        match self {
            AnnounceEvent::Started => "started",
            AnnounceEvent::Completed => "completed",
            AnnounceEvent::Stopped => "stopped",
        }
    }
}

/// Parameters of one announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// Torrent info-hash.
    pub info_hash: [u8; 20],
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// Our listening port.
    pub port: u16,
    /// Bytes uploaded so far.
    pub uploaded: u64,
    /// Bytes downloaded so far.
    pub downloaded: u64,
    /// Bytes still missing.
    pub left: u64,
    /// Lifecycle event, if any.
    pub event: Option<AnnounceEvent>,
    /// Number of peers wanted; `None` lets the tracker decide.
    pub numwant: Option<u32>,
    /// Ask for the compact peer format (BEP 23); almost always `true`.
    pub compact: bool,
    /// Optional `key` (sent as 8 hex digits) identifying us across IP changes.
    pub key: Option<u32>,
    /// `tracker id` echoed back from a previous response.
    pub tracker_id: Option<Vec<u8>>,
}

/// A ready-to-send announce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Host to resolve/connect to (IPv6 literals without brackets).
    pub host: String,
    /// TCP port to connect to.
    pub port: u16,
    /// Complete HTTP/1.0 request to write to the connection.
    pub bytes: Vec<u8>,
}

/// A successful announce response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Seconds the tracker wants between regular announces.
    pub interval: u32,
    /// Minimum seconds between announces, if given.
    pub min_interval: Option<u32>,
    /// Peers from `peers` then `peers6` (at most [`MAX_PEERS`]; port 0 and
    /// hostname entries are skipped since they cannot be dialled directly).
    pub peers: Vec<SocketAddr>,
    /// Seeders, if reported.
    pub complete: Option<u32>,
    /// Leechers, if reported.
    pub incomplete: Option<u32>,
    /// `warning message`, if any (lossy UTF-8, cut to [`MAX_TEXT_LEN`]).
    pub warning: Option<String>,
    /// `tracker id` to echo in later announces, if any.
    pub tracker_id: Option<Vec<u8>>,
}

/// Why a request could not be built or a response was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerError {
    /// The URL scheme is not `http` (carries the scheme, cut to 16 bytes).
    UnsupportedScheme(String),
    /// The URL is malformed or unsafe to put in a request.
    InvalidUrl(&'static str),
    /// The response exceeds [`MAX_RESPONSE_SIZE`].
    ResponseTooLarge,
    /// The connection closed before the response was complete.
    Truncated,
    /// The first line is not an HTTP/1.x status line.
    BadStatusLine,
    /// The tracker answered with a non-200 status.
    HttpStatus {
        /// Status code.
        code: u16,
        /// Reason phrase (lossy, cut).
        reason: String,
    },
    /// The status line and headers exceed [`MAX_HEADER_SIZE`] or [`MAX_HEADERS`].
    HeadersTooLarge,
    /// A header line is malformed.
    BadHeader,
    /// `Content-Length` is malformed or contradictory.
    BadContentLength,
    /// A chunked body is malformed.
    BadChunk,
    /// The body uses a transfer or content encoding we do not decode.
    UnsupportedEncoding,
    /// The body is not valid bencode.
    Bencode(BencodeError),
    /// The body is not a bencoded dictionary.
    NotADict,
    /// The tracker returned `failure reason` (lossy, cut to [`MAX_TEXT_LEN`]).
    Failure(String),
    /// A required key is absent.
    MissingField(&'static str),
    /// A key has the wrong type or an out-of-range value.
    InvalidField(&'static str),
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerError::UnsupportedScheme(s) => write!(
                f,
                "tracker URL scheme '{s}' is not supported (only http://)"
            ),
            TrackerError::InvalidUrl(why) => write!(f, "invalid tracker URL: {why}"),
            TrackerError::ResponseTooLarge => write!(
                f,
                "tracker response is larger than {MAX_RESPONSE_SIZE} bytes"
            ),
            TrackerError::Truncated => write!(f, "tracker response ended prematurely"),
            TrackerError::BadStatusLine => write!(f, "tracker did not send an HTTP status line"),
            TrackerError::HttpStatus { code, reason } => {
                write!(f, "tracker answered HTTP {code} {reason}")
            }
            TrackerError::HeadersTooLarge => write!(f, "tracker response headers are too large"),
            TrackerError::BadHeader => write!(f, "tracker sent a malformed HTTP header"),
            TrackerError::BadContentLength => {
                write!(f, "tracker sent an invalid Content-Length")
            }
            TrackerError::BadChunk => write!(f, "tracker sent a malformed chunked body"),
            TrackerError::UnsupportedEncoding => {
                write!(f, "tracker response uses an unsupported encoding")
            }
            TrackerError::Bencode(e) => write!(f, "tracker response is not valid bencode: {e}"),
            TrackerError::NotADict => write!(f, "tracker response is not a dictionary"),
            TrackerError::Failure(s) => write!(f, "tracker refused the announce: {s}"),
            TrackerError::MissingField(k) => write!(f, "tracker response lacks '{k}'"),
            TrackerError::InvalidField(k) => {
                write!(f, "tracker response field '{k}' is invalid")
            }
        }
    }
}

impl std::error::Error for TrackerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrackerError::Bencode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<BencodeError> for TrackerError {
    fn from(e: BencodeError) -> Self {
        TrackerError::Bencode(e)
    }
}

/// Makes a peer id: [`PEER_ID_PREFIX`] followed by 12 alphanumeric bytes
/// derived from `seed` (pass something unpredictable, e.g. time ^ pid).
pub fn make_peer_id(seed: u64) -> [u8; 20] {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(PEER_ID_PREFIX);
    let mut state = seed;
    for b in id[8..].iter_mut() {
        // splitmix64: good dispersion even for small, sequential seeds.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *b = ALPHABET[(z % 62) as usize];
    }
    id
}

fn percent_encode(data: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in data {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]]);
        }
    }
}

struct ParsedUrl<'a> {
    /// Host as it must appear in the Host header (IPv6 with brackets).
    host_header: &'a str,
    /// Host to connect to (IPv6 without brackets).
    host: &'a str,
    port: u16,
    explicit_port: bool,
    /// Path plus optional query, never empty, starts with '/'.
    path: &'a str,
    /// Whether `path` was absent and "/" must be prepended.
    needs_slash: bool,
}

fn parse_url(url: &str) -> Result<ParsedUrl<'_>, TrackerError> {
    if url.len() > MAX_URL_LEN {
        return Err(TrackerError::InvalidUrl("URL is too long"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(TrackerError::InvalidUrl("missing scheme"));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        let cut: String = scheme.chars().take(16).collect();
        return Err(TrackerError::UnsupportedScheme(cut));
    }
    // The fragment is never sent to the server.
    let rest = rest.split('#').next().unwrap_or("");
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(auth_end);
    if authority.contains('@') {
        return Err(TrackerError::InvalidUrl(
            "user info in URL is not supported",
        ));
    }
    let (host_header, host, port_str) = if let Some(after) = authority.strip_prefix('[') {
        let close = after
            .find(']')
            .ok_or(TrackerError::InvalidUrl("unclosed '[' in host"))?;
        let inner = after.get(..close).unwrap_or("");
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(TrackerError::InvalidUrl("bad IPv6 address"));
        }
        let tail = after.get(close + 1..).unwrap_or("");
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p),
            None if tail.is_empty() => None,
            None => return Err(TrackerError::InvalidUrl("junk after IPv6 address")),
        };
        let header = authority.get(..close + 2).unwrap_or(authority);
        (header, inner, port)
    } else {
        let (h, p) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if h.is_empty() {
            return Err(TrackerError::InvalidUrl("missing host"));
        }
        if !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(TrackerError::InvalidUrl("invalid character in host"));
        }
        (h, h, p)
    };
    let (port, explicit_port) = match port_str {
        None | Some("") => (80, false),
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TrackerError::InvalidUrl("invalid port"));
            }
            match p.parse::<u16>() {
                Ok(n) if n != 0 => (n, n != 80),
                _ => return Err(TrackerError::InvalidUrl("invalid port")),
            }
        }
    };
    // Anything outside visible ASCII would allow header injection or be
    // ambiguous on the request line.
    if !path.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(TrackerError::InvalidUrl(
            "path contains spaces, control or non-ASCII characters",
        ));
    }
    Ok(ParsedUrl {
        host_header,
        host,
        port,
        explicit_port,
        needs_slash: !path.starts_with('/'),
        path,
    })
}

/// Builds the HTTP/1.0 announce request for `url` (must be `http://`). An
/// existing query string in `url` is kept and the announce parameters are
/// appended; `info_hash`, `peer_id` and `tracker_id` are percent-encoded
/// byte-wise.
pub fn build_request(url: &str, req: &AnnounceRequest) -> Result<HttpRequest, TrackerError> {
    let u = parse_url(url)?;
    let mut out = Vec::with_capacity(256 + u.path.len());
    out.extend_from_slice(b"GET ");
    if u.needs_slash {
        out.push(b'/');
    }
    out.extend_from_slice(u.path.as_bytes());
    // Our parameters start a query, or join the URL's own after a separator. Only
    // the query (after the first '?') decides: in "/x???" it is "??", which needs
    // an '&', or `info_hash` would arrive glued to it as a "??info_hash" key.
    match u.path.split_once('?') {
        None => out.push(b'?'),
        Some((_, query)) if query.is_empty() || query.ends_with('&') => {}
        Some(_) => out.push(b'&'),
    }
    out.extend_from_slice(b"info_hash=");
    percent_encode(&req.info_hash, &mut out);
    out.extend_from_slice(b"&peer_id=");
    percent_encode(&req.peer_id, &mut out);
    let num = |out: &mut Vec<u8>, name: &str, v: u64| {
        out.extend_from_slice(format!("&{name}={v}").as_bytes());
    };
    num(&mut out, "port", u64::from(req.port));
    num(&mut out, "uploaded", req.uploaded);
    num(&mut out, "downloaded", req.downloaded);
    num(&mut out, "left", req.left);
    if req.compact {
        out.extend_from_slice(b"&compact=1");
    }
    if let Some(ev) = req.event {
        out.extend_from_slice(b"&event=");
        out.extend_from_slice(ev.as_str().as_bytes());
    }
    if let Some(n) = req.numwant {
        num(&mut out, "numwant", u64::from(n));
    }
    if let Some(k) = req.key {
        out.extend_from_slice(format!("&key={k:08X}").as_bytes());
    }
    if let Some(t) = &req.tracker_id {
        out.extend_from_slice(b"&trackerid=");
        percent_encode(t, &mut out);
    }
    out.extend_from_slice(b" HTTP/1.0\r\nHost: ");
    out.extend_from_slice(u.host_header.as_bytes());
    if u.explicit_port {
        out.extend_from_slice(format!(":{}", u.port).as_bytes());
    }
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    Ok(HttpRequest {
        host: u.host.to_owned(),
        port: u.port,
        bytes: out,
    })
}

fn lossy_cut(b: &[u8]) -> String {
    String::from_utf8_lossy(b.get(..MAX_TEXT_LEN).unwrap_or(b)).into_owned()
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or(&[])
}

/// Next line starting at `pos` (without its `\r\n` / `\n`) and the position
/// after it, or `None` if no complete line is present.
fn next_line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let line = rest.get(..nl)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, pos + nl + 1))
}

enum Framing {
    Length(usize),
    Chunked,
    UntilValueEnd,
}

struct Head {
    len: usize,
    framing: Framing,
}

fn parse_status(line: &[u8]) -> Result<(u16, &[u8]), TrackerError> {
    let rest = line
        .strip_prefix(b"HTTP/1.")
        .ok_or(TrackerError::BadStatusLine)?;
    let (minor, rest) = rest.split_first().ok_or(TrackerError::BadStatusLine)?;
    if !minor.is_ascii_digit() {
        return Err(TrackerError::BadStatusLine);
    }
    let rest = rest.strip_prefix(b" ").ok_or(TrackerError::BadStatusLine)?;
    let (code, reason) = rest.split_at(rest.len().min(3));
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(TrackerError::BadStatusLine);
    }
    let code = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let reason = match reason {
        [] => reason,
        [b' ', r @ ..] => r,
        _ => return Err(TrackerError::BadStatusLine),
    };
    Ok((code, reason))
}

/// Parses status line and headers; `Ok(None)` if they are not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, TrackerError> {
    // Called only while the header end has not been seen, so all of `buf` is head.
    let need_more = || {
        if buf.len() > MAX_HEADER_SIZE {
            Err(TrackerError::HeadersTooLarge)
        } else {
            Ok(None)
        }
    };
    let Some((status, mut pos)) = next_line(buf, 0) else {
        // Reject garbage early instead of waiting for a newline that may never come.
        let probe = buf.get(..buf.len().min(7)).unwrap_or(&[]);
        if !b"HTTP/1.".starts_with(probe) {
            return Err(TrackerError::BadStatusLine);
        }
        return need_more();
    };
    if pos > MAX_HEADER_SIZE {
        return Err(TrackerError::HeadersTooLarge);
    }
    let (code, reason) = parse_status(status)?;
    if code != 200 {
        return Err(TrackerError::HttpStatus {
            code,
            reason: lossy_cut(reason.get(..reason.len().min(128)).unwrap_or(&[])),
        });
    }
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut count = 0usize;
    loop {
        let Some((line, next)) = next_line(buf, pos) else {
            return need_more();
        };
        if next > MAX_HEADER_SIZE {
            return Err(TrackerError::HeadersTooLarge);
        }
        pos = next;
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(TrackerError::HeadersTooLarge);
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // Obsolete line folding: ambiguous, and no tracker needs it.
            return Err(TrackerError::BadHeader);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(TrackerError::BadHeader)?;
        let (name, value) = line.split_at(colon);
        let value = trim(value.get(1..).unwrap_or(&[]));
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TrackerError::BadHeader);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
                return Err(TrackerError::BadContentLength);
            }
            let n = value.iter().fold(0usize, |acc, d| {
                acc.saturating_mul(10).saturating_add(usize::from(d - b'0'))
            });
            if content_length.is_some_and(|c| c != n) {
                return Err(TrackerError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if value.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else if !value.eq_ignore_ascii_case(b"identity") {
                return Err(TrackerError::UnsupportedEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"content-encoding")
            && !value.is_empty()
            && !value.eq_ignore_ascii_case(b"identity")
        {
            return Err(TrackerError::UnsupportedEncoding);
        }
    }
    let framing = if chunked {
        Framing::Chunked
    } else if let Some(n) = content_length {
        if n > MAX_RESPONSE_SIZE {
            return Err(TrackerError::ResponseTooLarge);
        }
        Framing::Length(n)
    } else {
        Framing::UntilValueEnd
    };
    Ok(Some(Head { len: pos, framing }))
}

/// Walks a chunked body. Returns the encoded length once the last chunk is
/// seen (trailers are skipped), appending data to `collect` if given.
fn dechunk(data: &[u8], mut collect: Option<&mut Vec<u8>>) -> Result<Option<usize>, TrackerError> {
    const MAX_LINE: usize = 1024;
    let mut pos = 0usize;
    let mut total = 0usize;
    loop {
        let Some((line, next)) = next_line(data, pos) else {
            return if data.len().saturating_sub(pos) > MAX_LINE {
                Err(TrackerError::BadChunk)
            } else {
                Ok(None)
            };
        };
        if line.len() > MAX_LINE {
            return Err(TrackerError::BadChunk);
        }
        pos = next;
        let size_str = trim(line.split(|&b| b == b';').next().unwrap_or(&[]));
        if size_str.is_empty() || size_str.len() > 8 {
            return Err(TrackerError::BadChunk);
        }
        let mut size = 0usize;
        for &c in size_str {
            let d = char::from(c).to_digit(16).ok_or(TrackerError::BadChunk)?;
            size = size * 16 + d as usize;
        }
        if size == 0 {
            loop {
                let Some((line, next)) = next_line(data, pos) else {
                    return if data.len().saturating_sub(pos) > MAX_LINE {
                        Err(TrackerError::BadChunk)
                    } else {
                        Ok(None)
                    };
                };
                pos = next;
                if line.is_empty() {
                    return Ok(Some(pos));
                }
            }
        }
        total = total.saturating_add(size);
        if total > MAX_RESPONSE_SIZE {
            return Err(TrackerError::ResponseTooLarge);
        }
        let end = pos.saturating_add(size);
        let Some(chunk) = data.get(pos..end) else {
            return Ok(None);
        };
        if let Some(c) = collect.as_deref_mut() {
            c.extend_from_slice(chunk);
        }
        pos = end;
        match data.get(pos..) {
            Some([b'\r', b'\n', ..]) => pos += 2,
            Some([b'\n', ..]) => pos += 1,
            Some([] | [b'\r']) | None => return Ok(None),
            Some(_) => return Err(TrackerError::BadChunk),
        }
    }
}

fn opt_u32(dict: &Value<'_>, key: &'static str) -> Result<Option<u32>, TrackerError> {
    match dict.get(key.as_bytes()) {
        None => Ok(None),
        Some(v) => v
            .as_int()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or(TrackerError::InvalidField(key)),
    }
}

fn push_compact(
    raw: &[u8],
    stride: usize,
    key: &'static str,
    peers: &mut Vec<SocketAddr>,
) -> Result<(), TrackerError> {
    if !raw.len().is_multiple_of(stride) {
        return Err(TrackerError::InvalidField(key));
    }
    for c in raw.chunks_exact(stride) {
        if peers.len() >= MAX_PEERS {
            break;
        }
        let (ip, port) = c.split_at(stride - 2);
        let port = match port {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            _ => continue,
        };
        let ip = if let Ok(a) = <[u8; 4]>::try_from(ip) {
            IpAddr::V4(Ipv4Addr::from(a))
        } else if let Ok(a) = <[u8; 16]>::try_from(ip) {
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            continue;
        };
        if port != 0 {
            peers.push(SocketAddr::new(ip, port));
        }
    }
    Ok(())
}

fn parse_body(body: &Value<'_>) -> Result<AnnounceResponse, TrackerError> {
    if body.as_dict().is_none() {
        return Err(TrackerError::NotADict);
    }
    if let Some(f) = body.get(b"failure reason") {
        let text = f
            .as_bytes()
            .ok_or(TrackerError::InvalidField("failure reason"))?;
        return Err(TrackerError::Failure(lossy_cut(text)));
    }
    let interval = opt_u32(body, "interval")?.ok_or(TrackerError::MissingField("interval"))?;
    let mut peers = Vec::new();
    match body.get(b"peers") {
        None => {}
        Some(Value::Bytes(raw)) => push_compact(raw, 6, "peers", &mut peers)?,
        Some(Value::List(list)) => {
            for p in list {
                if peers.len() >= MAX_PEERS {
                    break;
                }
                let ip = p
                    .get(b"ip")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<IpAddr>().ok());
                let port = p
                    .get(b"port")
                    .and_then(Value::as_int)
                    .and_then(|n| u16::try_from(n).ok());
                if let (Some(ip), Some(port)) = (ip, port)
                    && port != 0
                {
                    peers.push(SocketAddr::new(ip, port));
                }
            }
        }
        Some(_) => return Err(TrackerError::InvalidField("peers")),
    }
    match body.get(b"peers6") {
        None => {}
        Some(Value::Bytes(raw)) => push_compact(raw, 18, "peers6", &mut peers)?,
        Some(_) => return Err(TrackerError::InvalidField("peers6")),
    }
    let text = |key: &[u8]| body.get(key).and_then(Value::as_bytes);
    Ok(AnnounceResponse {
        interval,
        min_interval: opt_u32(body, "min interval")?,
        peers,
        complete: opt_u32(body, "complete")?,
        incomplete: opt_u32(body, "incomplete")?,
        warning: text(b"warning message").map(lossy_cut),
        tracker_id: text(b"tracker id")
            .filter(|t| t.len() <= MAX_TEXT_LEN)
            .map(<[u8]>::to_vec),
    })
}

/// Parses an announce response from the bytes received so far. Returns
/// `Ok(None)` while more bytes are needed, or the response and the number of
/// bytes it occupies. Call [`parse_response`] instead once the connection
/// has closed.
pub fn parse_response_partial(
    buf: &[u8],
) -> Result<Option<(AnnounceResponse, usize)>, TrackerError> {
    if buf.len() > MAX_RESPONSE_SIZE {
        return Err(TrackerError::ResponseTooLarge);
    }
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = buf.get(head.len..).unwrap_or(&[]);
    let opts = DecodeOptions {
        max_len: MAX_RESPONSE_SIZE,
        ..DecodeOptions::default()
    };
    let (value, used) = match head.framing {
        Framing::Length(n) => {
            let Some(body) = rest.get(..n) else {
                return Ok(None);
            };
            // Trailing bytes inside the declared length (e.g. a newline) are tolerated.
            match bencode::decode_prefix_with(body, &opts)? {
                Some((v, _)) => (parse_body(&v)?, n),
                None => return Err(TrackerError::Truncated),
            }
        }
        Framing::Chunked => {
            let Some(n) = dechunk(rest, None)? else {
                return Ok(None);
            };
            let mut body = Vec::new();
            dechunk(rest, Some(&mut body))?;
            match bencode::decode_prefix_with(&body, &opts)? {
                Some((v, _)) => (parse_body(&v)?, n),
                None => return Err(TrackerError::Truncated),
            }
        }
        Framing::UntilValueEnd => {
            // Validate without allocating first: this path is re-run on every read.
            let Some(n) = bencode::value_len(rest, &opts)? else {
                return Ok(None);
            };
            let body = rest.get(..n).unwrap_or(&[]);
            (parse_body(&bencode::decode_with(body, &opts)?)?, n)
        }
    };
    Ok(Some((value, head.len + used)))
}

/// Parses a complete announce response (the connection has closed).
/// An incomplete response is [`TrackerError::Truncated`].
pub fn parse_response(buf: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    parse_response_partial(buf)?
        .map(|(r, _)| r)
        .ok_or(TrackerError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    use reactor_test_support::fuzz::xorshift;

    fn req() -> AnnounceRequest {
        let mut info_hash = [0u8; 20];
        for (i, b) in info_hash.iter_mut().enumerate() {
            *b = (i as u8) * 13;
        }
        AnnounceRequest {
            info_hash,
            peer_id: *b"-RE0001-abcdef~.123 ",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Some(AnnounceEvent::Started),
            numwant: Some(50),
            compact: true,
            key: None,
            tracker_id: None,
        }
    }

    const IH: &str = "%00%0D%1A%274AN%5Bhu%82%8F%9C%A9%B6%C3%D0%DD%EA%F7";
    const PID: &str = "-RE0001-abcdef~.123%20";

    #[test]
    fn request_exact_bytes() {
        let r = build_request("http://tracker.example.org:6969/announce", &req()).unwrap();
        assert_eq!(r.host, "tracker.example.org");
        assert_eq!(r.port, 6969);
        let expected = format!(
            "GET /announce?info_hash={IH}&peer_id={PID}&port=6881&uploaded=1&downloaded=2&left=3&compact=1&event=started&numwant=50 HTTP/1.0\r\nHost: tracker.example.org:6969\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(String::from_utf8(r.bytes).unwrap(), expected);
    }

    #[test]
    fn request_variants() {
        let mut q = req();
        q.event = None;
        q.numwant = None;
        q.compact = false;
        q.key = Some(0xAB);
        q.tracker_id = Some(b"t i".to_vec());
        let r = build_request("HTTP://t.example/a.php?passkey=xyz#frag", &q).unwrap();
        assert_eq!(r.port, 80);
        let s = String::from_utf8(r.bytes).unwrap();
        assert_eq!(
            s,
            format!(
                "GET /a.php?passkey=xyz&info_hash={IH}&peer_id={PID}&port=6881&uploaded=1&downloaded=2&left=3&key=000000AB&trackerid=t%20i HTTP/1.0\r\nHost: t.example\r\nConnection: close\r\n\r\n"
            )
        );
        for (url, prefix) in [
            ("http://h/x?", "GET /x?info_hash="),
            ("http://h/x?a=1&", "GET /x?a=1&info_hash="),
            ("http://h", "GET /?info_hash="),
            ("http://h?a=b", "GET /?a=b&info_hash="),
            ("http://h:80/", "GET /?info_hash="),
            // Found by the tracker_request fuzz target: a query ending in '?'
            // is not empty, so the first parameter needs its '&'.
            ("http://h/x???", "GET /x???&info_hash="),
            ("http://h???", "GET /???&info_hash="),
            ("http://h/x?a=?", "GET /x?a=?&info_hash="),
        ] {
            let r = build_request(url, &q).unwrap();
            let s = String::from_utf8(r.bytes).unwrap();
            assert!(s.starts_with(prefix), "{url}: {s}");
            assert!(s.contains("\r\nHost: h\r\n"), "{url}: {s}");
        }
        for ev in [AnnounceEvent::Completed, AnnounceEvent::Stopped] {
            q.event = Some(ev);
            let s = String::from_utf8(build_request("http://h/", &q).unwrap().bytes).unwrap();
            assert!(s.contains(&format!("&event={}", ev.as_str())));
        }
        let r = build_request("http://[2001:db8::1]:8080/ann", &q).unwrap();
        assert_eq!(r.host, "2001:db8::1");
        assert_eq!(r.port, 8080);
        assert!(
            String::from_utf8(r.bytes)
                .unwrap()
                .contains("\r\nHost: [2001:db8::1]:8080\r\n")
        );
        let r = build_request("http://[::1]/ann", &q).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 80));
        assert!(
            String::from_utf8(r.bytes)
                .unwrap()
                .contains("\r\nHost: [::1]\r\n")
        );
        let r = build_request("http://h:/x", &q).unwrap();
        assert_eq!(r.port, 80);
    }

    #[test]
    fn request_url_errors() {
        let q = req();
        let bad = |u: &str| build_request(u, &q).unwrap_err();
        assert_eq!(
            bad("https://h/a"),
            TrackerError::UnsupportedScheme("https".into())
        );
        assert_eq!(
            bad("udp://h:1"),
            TrackerError::UnsupportedScheme("udp".into())
        );
        assert!(matches!(bad("h/announce"), TrackerError::InvalidUrl(_)));
        assert!(matches!(bad("http:///a"), TrackerError::InvalidUrl(_)));
        assert!(matches!(bad("http://u:p@h/a"), TrackerError::InvalidUrl(_)));
        assert!(matches!(bad("http://h:0/a"), TrackerError::InvalidUrl(_)));
        assert!(matches!(
            bad("http://h:65536/a"),
            TrackerError::InvalidUrl(_)
        ));
        assert!(matches!(
            bad("http://h:123456/a"),
            TrackerError::InvalidUrl(_)
        ));
        assert!(matches!(bad("http://h:+80/a"), TrackerError::InvalidUrl(_)));
        assert!(matches!(bad("http://h h/a"), TrackerError::InvalidUrl(_)));
        assert!(matches!(
            bad("http://h\r\nX: y/a"),
            TrackerError::InvalidUrl(_)
        ));
        assert!(matches!(bad("http://h/a b"), TrackerError::InvalidUrl(_)));
        assert!(matches!(
            bad("http://h/a\r\nX: y"),
            TrackerError::InvalidUrl(_)
        ));
        assert!(matches!(bad("http://h/é"), TrackerError::InvalidUrl(_)));
        assert!(matches!(bad("http://[::1/a"), TrackerError::InvalidUrl(_)));
        assert!(matches!(bad("http://[zz]/a"), TrackerError::InvalidUrl(_)));
        assert!(matches!(
            bad("http://[::1]x/a"),
            TrackerError::InvalidUrl(_)
        ));
        let long = format!("http://h/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(bad(&long), TrackerError::InvalidUrl(_)));
    }

    fn http(body: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn response_compact() {
        let body = b"d8:completei5e10:incompletei3e8:intervali1800e12:min intervali60e5:peers12:\x0a\x00\x00\x01\x1a\xe1\x7f\x00\x00\x01\x00\x50e";
        let r = parse_response(&http(body)).unwrap();
        assert_eq!(r.interval, 1800);
        assert_eq!(r.min_interval, Some(60));
        assert_eq!(r.complete, Some(5));
        assert_eq!(r.incomplete, Some(3));
        assert_eq!(
            r.peers,
            vec![
                "10.0.0.1:6881".parse().unwrap(),
                "127.0.0.1:80".parse().unwrap()
            ]
        );
        assert_eq!(r.warning, None);
        assert_eq!(r.tracker_id, None);
    }

    #[test]
    fn response_non_compact_and_peers6() {
        let body = b"d8:intervali900e5:peersld2:ip8:10.1.2.37:peer id20:aaaaaaaaaaaaaaaaaaaa4:porti51413eed2:ip11:example.com4:porti1eed2:ip3:::14:porti0eed2:ip3:::14:porti70000eei5ed2:ip8:::ffff:44:porti2eee6:peers618:\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x1a\xe115:warning message4:slow10:tracker id3:tide";
        let r = parse_response(&http(body)).unwrap();
        assert_eq!(r.interval, 900);
        assert_eq!(
            r.peers,
            vec![
                "10.1.2.3:51413".parse().unwrap(),
                "[::ffff:4]:2".parse().unwrap(),
                "[2001:db8::1]:6881".parse().unwrap(),
            ]
        );
        assert_eq!(r.warning.as_deref(), Some("slow"));
        assert_eq!(r.tracker_id.as_deref(), Some(&b"tid"[..]));
        // No peers at all is fine.
        let r = parse_response(&http(b"d8:intervali1ee")).unwrap();
        assert!(r.peers.is_empty());
    }

    #[test]
    fn response_failure_and_field_errors() {
        assert_eq!(
            parse_response(&http(b"d14:failure reason12:unregisterede")),
            Err(TrackerError::Failure("unregistered".into()))
        );
        let e = |b: &[u8]| parse_response(&http(b)).unwrap_err();
        assert_eq!(
            e(b"d14:failure reasoni1ee"),
            TrackerError::InvalidField("failure reason")
        );
        assert_eq!(e(b"de"), TrackerError::MissingField("interval"));
        assert_eq!(
            e(b"d8:intervali-1ee"),
            TrackerError::InvalidField("interval")
        );
        assert_eq!(
            e(b"d8:interval1:xe"),
            TrackerError::InvalidField("interval")
        );
        assert_eq!(
            e(b"d8:intervali4294967296ee"),
            TrackerError::InvalidField("interval")
        );
        assert_eq!(
            e(b"d8:intervali1e12:min intervali-5ee"),
            TrackerError::InvalidField("min interval")
        );
        assert_eq!(
            e(b"d8:intervali1e5:peers5:abcdee"),
            TrackerError::InvalidField("peers")
        );
        assert_eq!(
            e(b"d8:intervali1e5:peersi1ee"),
            TrackerError::InvalidField("peers")
        );
        assert_eq!(
            e(b"d8:intervali1e6:peers66:abcdefe"),
            TrackerError::InvalidField("peers6")
        );
        assert_eq!(
            e(b"d8:intervali1e6:peers6lee"),
            TrackerError::InvalidField("peers6")
        );
        assert_eq!(e(b"li1ee"), TrackerError::NotADict);
        assert!(matches!(e(b"d8:intervali01ee"), TrackerError::Bencode(_)));
        assert_eq!(e(b"d8:interval"), TrackerError::Truncated);
        let long = [b"d14:failure reason2000:".as_slice(), &[b'x'; 2000], b"e"].concat();
        match e(&long) {
            TrackerError::Failure(s) => assert_eq!(s.len(), MAX_TEXT_LEN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_http_errors() {
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Err(TrackerError::HttpStatus {
                code: 404,
                reason: "Not Found".into()
            })
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 302\r\n\r\n"),
            Err(TrackerError::HttpStatus {
                code: 302,
                reason: String::new()
            })
        );
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.x 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1200 OK\r\n\r\n",
            b"garbage",
        ] {
            assert_eq!(
                parse_response(bad),
                Err(TrackerError::BadStatusLine),
                "{bad:?}"
            );
        }
        let hdr = |h: &str| parse_response(format!("HTTP/1.1 200 OK\r\n{h}\r\n\r\nde").as_bytes());
        assert_eq!(hdr("NoColon"), Err(TrackerError::BadHeader));
        assert_eq!(hdr(": v"), Err(TrackerError::BadHeader));
        assert_eq!(hdr("A: b\r\n folded"), Err(TrackerError::BadHeader));
        assert_eq!(
            hdr("Content-Length: x"),
            Err(TrackerError::BadContentLength)
        );
        assert_eq!(hdr("Content-Length: "), Err(TrackerError::BadContentLength));
        assert_eq!(
            hdr("Content-Length: 2\r\nContent-Length: 3"),
            Err(TrackerError::BadContentLength)
        );
        assert_eq!(
            hdr("Content-Length: 99999999999"),
            Err(TrackerError::BadContentLength)
        );
        assert_eq!(
            hdr("Content-Length: 2000000"),
            Err(TrackerError::ResponseTooLarge)
        );
        assert_eq!(
            hdr("Content-Encoding: gzip"),
            Err(TrackerError::UnsupportedEncoding)
        );
        assert_eq!(
            hdr("Transfer-Encoding: gzip"),
            Err(TrackerError::UnsupportedEncoding)
        );
        assert_eq!(
            hdr("Content-Encoding: identity\r\nTransfer-Encoding: identity"),
            Err(TrackerError::MissingField("interval"))
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse_response(format!("HTTP/1.1 200 OK\r\n{many}\r\nde").as_bytes()),
            Err(TrackerError::HeadersTooLarge)
        );
        let big = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\nde",
            "a".repeat(MAX_HEADER_SIZE)
        );
        assert_eq!(
            parse_response(big.as_bytes()),
            Err(TrackerError::HeadersTooLarge)
        );
        let unterminated = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEADER_SIZE));
        assert_eq!(
            parse_response_partial(unterminated.as_bytes()),
            Err(TrackerError::HeadersTooLarge)
        );
        let long_status = format!("HTTP/1.1 200 {}\r\n", "a".repeat(MAX_HEADER_SIZE));
        assert_eq!(
            parse_response_partial(long_status.as_bytes()),
            Err(TrackerError::HeadersTooLarge)
        );
        assert_eq!(
            parse_response(&vec![b'a'; MAX_RESPONSE_SIZE + 1]),
            Err(TrackerError::ResponseTooLarge)
        );
        // Content-Length body that is not bencode at all.
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nd1"),
            Err(TrackerError::Truncated)
        );
    }

    #[test]
    fn response_framing_and_truncation() {
        let body = b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x00\x01e";
        // Content-Length framing, with trailing newline inside the body.
        let mut with_nl = body.to_vec();
        with_nl.push(b'\n');
        let full = http(&with_nl);
        for n in 0..full.len() {
            assert_eq!(parse_response_partial(&full[..n]), Ok(None), "prefix {n}");
            assert_eq!(parse_response(&full[..n]), Err(TrackerError::Truncated));
        }
        let (r, used) = parse_response_partial(&full).unwrap().unwrap();
        assert_eq!(used, full.len());
        assert_eq!(r.peers, vec!["1.2.3.4:1".parse().unwrap()]);
        // No Content-Length, LF-only lines: body ends where the value ends.
        let mut nolen = b"HTTP/1.0 200 OK\nServer: x\n\n".to_vec();
        nolen.extend_from_slice(body);
        for n in 0..nolen.len() {
            assert_eq!(parse_response_partial(&nolen[..n]), Ok(None), "prefix {n}");
        }
        let total = nolen.len();
        nolen.extend_from_slice(b"junk");
        let (r2, used) = parse_response_partial(&nolen).unwrap().unwrap();
        assert_eq!(used, total);
        assert_eq!(r2, r);
    }

    #[test]
    fn response_chunked() {
        let body = b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x00\x01e";
        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        resp.extend_from_slice(b"a;ext=1\r\n");
        resp.extend_from_slice(&body[..10]);
        resp.extend_from_slice(b"\r\n");
        resp.extend_from_slice(format!("{:X}\r\n", body.len() - 10).as_bytes());
        resp.extend_from_slice(&body[10..]);
        resp.extend_from_slice(b"\r\n0\r\nX-Trailer: 1\r\n\r\n");
        for n in 0..resp.len() {
            assert_eq!(parse_response_partial(&resp[..n]), Ok(None), "prefix {n}");
        }
        let (r, used) = parse_response_partial(&resp).unwrap().unwrap();
        assert_eq!(used, resp.len());
        assert_eq!(r.interval, 60);
        assert_eq!(r.peers.len(), 1);
        let chunk = |c: &str| {
            parse_response(
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{c}").as_bytes(),
            )
        };
        assert_eq!(chunk("zz\r\nde\r\n0\r\n\r\n"), Err(TrackerError::BadChunk));
        assert_eq!(chunk("\r\n"), Err(TrackerError::BadChunk));
        assert_eq!(chunk("123456789\r\n"), Err(TrackerError::BadChunk));
        assert_eq!(chunk("2\r\ndeXX0\r\n\r\n"), Err(TrackerError::BadChunk));
        assert_eq!(chunk("FFFFF\r\n"), Err(TrackerError::Truncated));
        assert_eq!(chunk("FFFFFF\r\n"), Err(TrackerError::ResponseTooLarge));
        assert_eq!(chunk(&"a".repeat(2000)), Err(TrackerError::BadChunk));
        assert_eq!(
            chunk(&format!("0\r\n{}", "a".repeat(2000))),
            Err(TrackerError::BadChunk)
        );
        assert_eq!(
            chunk(&format!("{}\r\n", "0".repeat(1100))),
            Err(TrackerError::BadChunk)
        );
        assert_eq!(chunk("1\r\nd\r\n0\r\n\r\n"), Err(TrackerError::Truncated));
        assert_eq!(
            chunk("2\nde\n0\n\n"),
            Err(TrackerError::MissingField("interval"))
        );
    }

    #[test]
    fn peer_cap() {
        let n = MAX_PEERS + 10;
        let mut body = format!("d8:intervali1e5:peers{}:", n * 6).into_bytes();
        for i in 0..n {
            body.extend_from_slice(&[10, 0, (i >> 8) as u8, i as u8, 0, 1]);
        }
        body.push(b'e');
        let r = parse_response(&http(&body)).unwrap();
        assert_eq!(r.peers.len(), MAX_PEERS);
    }

    #[test]
    fn peer_id_helper() {
        let a = make_peer_id(1);
        let b = make_peer_id(2);
        assert_eq!(&a[..8], PEER_ID_PREFIX);
        assert_ne!(a, b);
        assert_eq!(a, make_peer_id(1));
        assert!(a[8..].iter().all(u8::is_ascii_alphanumeric));
    }

    #[test]
    fn error_display() {
        let errs = [
            TrackerError::UnsupportedScheme("udp".into()),
            TrackerError::InvalidUrl("x"),
            TrackerError::ResponseTooLarge,
            TrackerError::Truncated,
            TrackerError::BadStatusLine,
            TrackerError::HttpStatus {
                code: 500,
                reason: "x".into(),
            },
            TrackerError::HeadersTooLarge,
            TrackerError::BadHeader,
            TrackerError::BadContentLength,
            TrackerError::BadChunk,
            TrackerError::UnsupportedEncoding,
            TrackerError::Bencode(BencodeError::UnexpectedEof),
            TrackerError::NotADict,
            TrackerError::Failure("x".into()),
            TrackerError::MissingField("x"),
            TrackerError::InvalidField("x"),
        ];
        for e in &errs {
            assert!(!e.to_string().is_empty());
        }
        use std::error::Error;
        assert!(errs[11].source().is_some());
        assert!(errs[0].source().is_none());
    }

    #[test]
    fn never_panics() {
        let seeds: Vec<Vec<u8>> = vec![
            http(b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x00\x016:peers618:aaaaaaaaaaaaaaaaaae"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nd8:in\r\n9\r\ntervali1e\r\n1\r\ne\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.0 200 OK\n\nd8:intervali1e5:peersld2:ip3:::14:porti1eeee".to_vec(),
        ];
        let alphabet = b"ilde0123456789:-\r\n ;aA";
        let mut st = 0xDEAD_BEEF_1234_5678u64;
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].clone();
            let flips = xorshift(&mut st) % 4;
            for _ in 0..flips {
                let at = (xorshift(&mut st) as usize) % b.len();
                b[at] = if xorshift(&mut st).is_multiple_of(2) {
                    alphabet[(xorshift(&mut st) as usize) % alphabet.len()]
                } else {
                    xorshift(&mut st) as u8
                };
            }
            b.truncate((xorshift(&mut st) as usize) % (b.len() + 1));
            let partial = parse_response_partial(&b);
            if let Ok(Some((_, used))) = &partial {
                assert!(*used <= b.len());
            }
            let full = parse_response(&b);
            if let Ok(Some((r, _))) = partial {
                assert_eq!(full, Ok(r));
            }
            // URL parser on random strings.
            let url: String = b.iter().take(40).map(|&c| char::from(c)).collect();
            let _ = build_request(&format!("http://{url}"), &req());
            let _ = build_request(&url, &req());
        }
    }
}
