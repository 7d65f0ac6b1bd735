//! HAProxy PROXY protocol, version 1 (text) and version 2 (binary): a parser for the
//! header a trusted load balancer puts in front of a forwarded connection, and encoders
//! for announcing a client to an upstream server.
//!
//! Specification: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.
//!
//! What it is for: a listener configured for the PROXY protocol keeps a receive buffer
//! and calls [`parse`] with everything received so far. `Ok(None)` means "read more";
//! `Ok(Some((header, n)))` means the first `n` bytes were the header and everything
//! after them is payload (never consumed here); `Err(_)` means close the connection.
//! While [`parse`] answers `Ok(None)` the buffer is shorter than [`max_header_len`], so a
//! handler may cap its buffer there. A short timeout for the header (the spec suggests
//! at least 3 s) is the caller's job.
//!
//! What it must not do: no sockets, no clock, no allocation (a [`Header`] borrows its
//! TLVs from the input), no panics, and no guessing. The spec forbids auto-detecting the
//! header: a listener either requires it or does not, and it must only accept it from
//! trusted proxies. That trust decision (for example a `cidr::ClientRules` check on
//! the *real* peer address) happens before the header is believed, outside this
//! module.
//!
//! Decisions (all deliberate):
//! - Early rejection: the first byte picks the version (`P` for v1, CR for v2) and every
//!   further byte is checked as soon as it arrives, so `GET / HTTP/1.1` fails on byte 0,
//!   `PROXY TCP5` on byte 9 and a v2 header with version 3 on byte 12. The verdict never
//!   depends on how the bytes were split: a prefix of any input yields either `Ok(None)`
//!   or exactly the error the whole input yields.
//! - v1 is strict: exactly one space between fields, upper-case `TCP4`/`TCP6`/`UNKNOWN`,
//!   dotted-quad IPv4 with no leading zeros, IPv6 as accepted by `std` (which includes
//!   the `::ffff:a.b.c.d` form HAProxy itself emits), ports `0..=65535` without leading
//!   zeros, and a real CRLF. [`V1_MAX_LEN`] (107) bytes without a complete line is an
//!   error. For `UNKNOWN` the spec says the rest of the line is ignored, so
//!   `PROXY UNKNOWN <anything>\r\n` is accepted (HAProxy's own receiver only takes the
//!   short form).
//! - v2 length: the wire allows 16 + 65535 bytes; [`parse`] caps the whole header at
//!   [`DEFAULT_MAX_V2_LEN`] (4096) and [`parse_with_limit`] takes another cap. Real
//!   headers, even with SSL TLVs, are a few hundred bytes, and the cap bounds what each
//!   pending connection may make the proxy buffer.
//! - v2 LOCAL: the spec says the block is discarded "including the family which is
//!   ignored", so any family byte is accepted and nothing after the 16 fixed bytes is
//!   looked at (no TLVs, no checksum).
//! - v2 PROXY with AF_UNSPEC or transport UNSPEC: accepted as "use the real addresses";
//!   the block is skipped unparsed because its address layout is unknowable, so it has
//!   no TLVs. Family nibbles above 3 and transport nibbles above 2 are rejected.
//! - v2 TLVs (INET, INET6, UNIX): walked completely; a TLV header or value that runs
//!   past the block is an error. CRC32C is verified when present (it must be 4 bytes and
//!   appear once). UNIQUE_ID is capped at 128 bytes (spec) and AUTHORITY at 255 bytes
//!   (HAProxy's limit); other TLVs, including the SSL sub-TLVs, are exposed raw.
//! - Encoders, mixed families (one IPv4, one IPv6 endpoint): the IPv4 one is written as
//!   its IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) and the header is `TCP6` / AF_INET6.
//!   This is what HAProxy 2.x does for both versions (1.x wrote v1 `UNKNOWN`, losing the
//!   addresses); the spec only requires both v1 addresses to share the announced family.
//!   IPv6 flow info and scope ids are not representable and are dropped.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fmt;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The start of every v1 header: `PROXY` and its single space.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The fixed part of a v2 header: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;
/// Longest v2 header the wire format can express (16 + a 16-bit length).
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;
/// The cap [`parse`] puts on a whole v2 header; see the module docs.
pub const DEFAULT_MAX_V2_LEN: usize = 4096;
/// Size of each AF_UNIX address in a v2 block (a `sun_path`).
pub const UNIX_ADDR_LEN: usize = 108;

/// TLV type: application-layer protocol (usually the TLS ALPN value).
pub const TLV_ALPN: u8 = 0x01;
/// TLV type: authority, the host name the client asked for (usually TLS SNI).
pub const TLV_AUTHORITY: u8 = 0x02;
/// TLV type: CRC32C of the whole header.
pub const TLV_CRC32C: u8 = 0x03;
/// TLV type: padding, to be ignored.
pub const TLV_NOOP: u8 = 0x04;
/// TLV type: opaque connection id of up to 128 bytes.
pub const TLV_UNIQUE_ID: u8 = 0x05;
/// TLV type: TLS information, itself containing sub-TLVs.
pub const TLV_SSL: u8 = 0x20;
/// TLV type: network namespace name.
pub const TLV_NETNS: u8 = 0x30;

/// Longest UNIQUE_ID value the spec allows.
pub const MAX_UNIQUE_ID_LEN: usize = 128;
/// Longest AUTHORITY value accepted (HAProxy's limit; DNS names are shorter still).
pub const MAX_AUTHORITY_LEN: usize = 255;

const ADDR_LEN_INET: usize = 12;
const ADDR_LEN_INET6: usize = 36;
const ADDR_LEN_UNIX: usize = 2 * UNIX_ADDR_LEN;
const TLV_HEADER_LEN: usize = 3;

/// Receive-buffer bound for [`parse_with_limit`] with this limit: whenever it answers
/// `Ok(None)`, the input was shorter than this.
pub fn max_header_len(max_v2_len: usize) -> usize {
    V1_MAX_LEN.max(max_v2_len.min(V2_MAX_LEN))
}

/// Which version of the protocol a header used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text format.
    V1,
    /// The binary format.
    V2,
}

/// What the sender says the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// v2 only: the proxy opened the connection itself (e.g. a health check); use the
    /// real connection endpoints.
    Local,
    /// The connection is relayed on behalf of a client; v1 headers are always this.
    Proxy,
}

/// The transport of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Not stated (v1 `UNKNOWN`, v2 LOCAL or transport 0).
    Unspec,
    /// SOCK_STREAM: TCP or a UNIX stream socket (v1 `TCP4`/`TCP6` are this).
    Stream,
    /// SOCK_DGRAM: UDP or a UNIX datagram socket.
    Dgram,
}

/// The original endpoints announced by the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addresses<'a> {
    /// None given (v1 `UNKNOWN`, v2 LOCAL, v2 AF_UNSPEC): use the real connection's
    /// addresses, as if there had been no header.
    Unknown,
    /// IPv4 or IPv6 source and destination. Both have the same family, as on the wire;
    /// an IPv4 client behind a dual-stack proxy may appear as `::ffff:a.b.c.d`.
    Inet {
        /// The client.
        src: SocketAddr,
        /// The address the client connected to.
        dst: SocketAddr,
    },
    /// v2 AF_UNIX: the two raw 108-byte `sun_path` values (NUL-padded; an abstract
    /// socket name starts with a NUL byte).
    Unix {
        /// The client's socket path.
        src: &'a [u8; UNIX_ADDR_LEN],
        /// The path the client connected to.
        dst: &'a [u8; UNIX_ADDR_LEN],
    },
}

/// One type-length-value entry of a v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tlv<'a> {
    /// The type byte (see the `TLV_*` constants).
    pub kind: u8,
    /// The value, at most 65535 bytes.
    pub value: &'a [u8],
}

/// The TLV area of a parsed v2 header, already checked to be well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tlvs<'a> {
    raw: &'a [u8],
}

impl<'a> Tlvs<'a> {
    /// Iterates over the entries in wire order.
    pub fn iter(&self) -> TlvIter<'a> {
        TlvIter { rest: self.raw }
    }

    /// The value of the first entry of type `kind`, if any.
    pub fn get(&self, kind: u8) -> Option<&'a [u8]> {
        self.iter().find(|t| t.kind == kind).map(|t| t.value)
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The raw TLV bytes, e.g. to forward them unchanged.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

impl<'a> IntoIterator for Tlvs<'a> {
    type Item = Tlv<'a>;
    type IntoIter = TlvIter<'a>;

    fn into_iter(self) -> TlvIter<'a> {
        self.iter()
    }
}

/// Iterator over [`Tlvs`].
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        match split_tlv(self.rest) {
            Some((tlv, rest)) => {
                self.rest = rest;
                Some(tlv)
            }
            None => {
                // Unreachable for a parsed header (the area was validated), but stopping
                // is the only sane answer if it ever were malformed.
                self.rest = &[];
                None
            }
        }
    }
}

/// Splits one TLV off the front of `buf`; `None` if `buf` is empty or it is truncated.
fn split_tlv(buf: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&[kind, hi, lo], rest) = buf.split_first_chunk::<TLV_HEADER_LEN>()?;
    let (value, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes([hi, lo])))?;
    Some((Tlv { kind, value }, rest))
}

/// A parsed PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header<'a> {
    /// Text or binary format.
    pub version: Version,
    /// LOCAL or PROXY.
    pub command: Command,
    /// Stream, datagram or unstated.
    pub transport: Transport,
    /// The announced endpoints, if any.
    pub addresses: Addresses<'a>,
    /// v2 TLVs (always empty for v1, LOCAL and AF_UNSPEC).
    pub tlvs: Tlvs<'a>,
}

impl<'a> Header<'a> {
    /// `(client, destination)` if the header announces IP endpoints; `None` means the
    /// caller should keep using the real connection's addresses (LOCAL, `UNKNOWN`,
    /// AF_UNSPEC, and AF_UNIX, which has no IP to report).
    pub fn socket_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self.addresses {
            Addresses::Inet { src, dst } => Some((src, dst)),
            Addresses::Unknown | Addresses::Unix { .. } => None,
        }
    }

    /// The ALPN TLV value (e.g. `b"h2"`), if present.
    pub fn alpn(&self) -> Option<&'a [u8]> {
        self.tlvs.get(TLV_ALPN)
    }

    /// The AUTHORITY TLV value (the SNI host name), if present. The spec says UTF-8 but
    /// the bytes are returned unchecked; at most [`MAX_AUTHORITY_LEN`] bytes.
    pub fn authority(&self) -> Option<&'a [u8]> {
        self.tlvs.get(TLV_AUTHORITY)
    }

    /// The UNIQUE_ID TLV value, if present; at most [`MAX_UNIQUE_ID_LEN`] bytes.
    pub fn unique_id(&self) -> Option<&'a [u8]> {
        self.tlvs.get(TLV_UNIQUE_ID)
    }
}

/// Which endpoint of a v1 line a field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The first address / port.
    Source,
    /// The second address / port.
    Destination,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Source => "source",
            Endpoint::Destination => "destination",
        })
    }
}

/// Why input is not an acceptable PROXY protocol header. Every variant means "close the
/// connection".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyHeaderError {
    /// Starts with neither `PROXY ` nor the v2 signature.
    NotProxyHeader,
    /// v1: no CRLF within [`V1_MAX_LEN`] bytes.
    V1TooLong,
    /// v1: protocol is not exactly `TCP4`, `TCP6` or `UNKNOWN`.
    V1BadProtocol,
    /// v1: the line ends before all four address/port fields were seen.
    V1MissingFields,
    /// v1: an address is malformed or of the wrong family for the protocol.
    V1BadAddress(Endpoint),
    /// v1: a port is not a decimal `0..=65535` without leading zeros.
    V1BadPort(Endpoint),
    /// v1: the line does not end with exactly CRLF.
    V1BadLineEnd,
    /// v2: the version nibble is not 2.
    V2BadVersion(u8),
    /// v2: the command nibble is neither LOCAL (0) nor PROXY (1).
    V2BadCommand(u8),
    /// v2: the family/transport byte has an unassigned nibble.
    V2BadFamily(u8),
    /// v2: the announced header length exceeds the receiver's limit.
    V2TooLong {
        /// Announced total length (16 + the length field).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// v2: the length field is too small for the announced family's addresses.
    V2AddressTruncated {
        /// The family/transport byte.
        family: u8,
        /// Bytes the addresses need.
        need: usize,
        /// Bytes the length field gives.
        have: usize,
    },
    /// v2: a TLV header or value runs past the end of the header.
    V2TlvTruncated {
        /// Offset of the TLV from the start of the header.
        offset: usize,
    },
    /// v2: a known TLV has a length its definition forbids.
    V2BadTlvLength {
        /// The TLV type.
        kind: u8,
        /// Its value length.
        len: usize,
    },
    /// v2: more than one CRC32C TLV.
    V2DuplicateChecksum,
    /// v2: the CRC32C TLV does not match the header.
    V2ChecksumMismatch {
        /// Value in the TLV.
        expected: u32,
        /// Value computed over the header.
        computed: u32,
    },
}

impl fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProxyHeaderError::*;
        match self {
            NotProxyHeader => f.write_str("not a PROXY protocol header"),
            V1TooLong => write!(f, "PROXY v1 line has no CRLF within {V1_MAX_LEN} bytes"),
            V1BadProtocol => f.write_str("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
            V1MissingFields => f.write_str("PROXY v1 line ends before its address fields"),
            V1BadAddress(e) => write!(f, "PROXY v1 {e} address is malformed or wrong family"),
            V1BadPort(e) => write!(f, "PROXY v1 {e} port is not a decimal 0..=65535"),
            V1BadLineEnd => f.write_str("PROXY v1 line does not end with CRLF"),
            V2BadVersion(v) => write!(f, "PROXY v2 version nibble is {v}, expected 2"),
            V2BadCommand(c) => write!(f, "PROXY v2 command {c} is neither LOCAL nor PROXY"),
            V2BadFamily(b) => write!(f, "PROXY v2 family/transport byte 0x{b:02x} is unassigned"),
            V2TooLong { len, max } => {
                write!(
                    f,
                    "PROXY v2 header of {len} bytes exceeds the {max}-byte limit"
                )
            }
            V2AddressTruncated { family, need, have } => write!(
                f,
                "PROXY v2 family 0x{family:02x} needs {need} address bytes, header has {have}"
            ),
            V2TlvTruncated { offset } => {
                write!(f, "PROXY v2 TLV at offset {offset} runs past the header")
            }
            V2BadTlvLength { kind, len } => {
                write!(f, "PROXY v2 TLV type 0x{kind:02x} has invalid length {len}")
            }
            V2DuplicateChecksum => f.write_str("PROXY v2 header has more than one CRC32C TLV"),
            V2ChecksumMismatch { expected, computed } => write!(
                f,
                "PROXY v2 CRC32C mismatch: header says 0x{expected:08x}, computed 0x{computed:08x}"
            ),
        }
    }
}

impl std::error::Error for ProxyHeaderError {}

/// Parses a PROXY header (either version) at the start of `buf`, capping v2 headers at
/// [`DEFAULT_MAX_V2_LEN`]. See the module docs for the meaning of the result.
pub fn parse(buf: &[u8]) -> Result<Option<(Header<'_>, usize)>, ProxyHeaderError> {
    parse_with_limit(buf, DEFAULT_MAX_V2_LEN)
}

/// [`parse`] with a caller-chosen cap on the total v2 header length (16 fixed bytes
/// included). Values above [`V2_MAX_LEN`] act as [`V2_MAX_LEN`]; v1 is always capped at
/// [`V1_MAX_LEN`].
pub fn parse_with_limit(
    buf: &[u8],
    max_v2_len: usize,
) -> Result<Option<(Header<'_>, usize)>, ProxyHeaderError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(0x0D) => parse_v2(buf, max_v2_len),
        Some(_) => Err(ProxyHeaderError::NotProxyHeader),
    }
}

// ---------------------------------------------------------------------------------------
// Version 1

/// Shape of one space- (or CR-) terminated v1 field.
struct FieldSpec {
    max_len: usize,
    allowed: fn(u8) -> bool,
    /// True if a partial field could still become valid. Must never reject a prefix of
    /// a valid field, or a split header would fail where the whole one succeeds.
    prefix_ok: fn(&[u8]) -> bool,
    delim: u8,
    err: ProxyHeaderError,
}

/// Reads a field starting at `pos`. `Ok(Some((field, next)))` when its delimiter was
/// found, `Ok(None)` when the line ran out first and what was seen is still plausible.
fn field<'b>(
    line: &'b [u8],
    pos: usize,
    spec: &FieldSpec,
) -> Result<Option<(&'b [u8], usize)>, ProxyHeaderError> {
    let rest = line.get(pos..).unwrap_or_default();
    for (i, &b) in rest.iter().enumerate() {
        if b == spec.delim {
            let value = rest.get(..i).unwrap_or_default();
            return Ok(Some((value, pos + i + 1)));
        }
        if b == b'\r' || b == b'\n' {
            // A field already implausible is reported as such, as it was while the
            // line end had not arrived: the verdict must not depend on the split.
            if !(spec.prefix_ok)(rest.get(..i).unwrap_or_default()) {
                return Err(spec.err);
            }
            // The delimiter check came first, so this is a line end where a field
            // separator (or, in the last field, the CR) should have been.
            return Err(if spec.delim == b'\r' {
                ProxyHeaderError::V1BadLineEnd
            } else {
                ProxyHeaderError::V1MissingFields
            });
        }
        if !(spec.allowed)(b) || i >= spec.max_len {
            return Err(spec.err);
        }
    }
    if (spec.prefix_ok)(rest) {
        Ok(None)
    } else {
        Err(spec.err)
    }
}

const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

fn parse_v1(buf: &[u8]) -> Result<Option<(Header<'static>, usize)>, ProxyHeaderError> {
    // Only the first 107 bytes can belong to the line. Running out of them means "wait"
    // below that size and "too long" at it; deciding this from the capped line alone is
    // what makes the verdict independent of how the input was split.
    let line = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let starved = || {
        if buf.len() >= V1_MAX_LEN {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(None)
        }
    };

    let seen = line.len().min(V1_PREFIX.len());
    if line.get(..seen) != V1_PREFIX.get(..seen) {
        return Err(ProxyHeaderError::NotProxyHeader);
    }
    let pos = V1_PREFIX.len();
    let rest = line.get(pos..).unwrap_or_default();

    // The protocol token ends at a space or a CR; every byte before that must keep it a
    // prefix of a known name.
    let Some(tok_len) = rest.iter().position(|&b| b == b' ' || b == b'\r') else {
        let plausible = V1_PROTOCOLS.iter().any(|p| p.starts_with(rest));
        return if plausible {
            starved()
        } else {
            Err(ProxyHeaderError::V1BadProtocol)
        };
    };
    let token = rest.get(..tok_len).unwrap_or_default();
    if !V1_PROTOCOLS.iter().any(|p| p.starts_with(token)) {
        return Err(ProxyHeaderError::V1BadProtocol);
    }
    let delim_pos = pos + tok_len;
    let delim = line.get(delim_pos).copied();
    let v6 = match token {
        b"TCP4" => false,
        b"TCP6" => true,
        b"UNKNOWN" => {
            // "The receiver must ignore anything presented before the CRLF is found."
            let tail = line.get(delim_pos..).unwrap_or_default();
            return match tail.windows(2).position(|w| w == b"\r\n") {
                Some(i) => Ok(Some((
                    Header {
                        version: Version::V1,
                        command: Command::Proxy,
                        transport: Transport::Unspec,
                        addresses: Addresses::Unknown,
                        tlvs: Tlvs::default(),
                    },
                    delim_pos + i + 2,
                ))),
                None => starved(),
            };
        }
        _ => return Err(ProxyHeaderError::V1BadProtocol),
    };
    if delim != Some(b' ') {
        return Err(ProxyHeaderError::V1MissingFields);
    }
    let pos = delim_pos + 1;

    let addr_spec = |endpoint| FieldSpec {
        max_len: if v6 { 45 } else { 15 },
        allowed: if v6 { is_ipv6_char } else { is_ipv4_char },
        prefix_ok: if v6 { |_| true } else { ipv4_prefix_ok },
        delim: b' ',
        err: ProxyHeaderError::V1BadAddress(endpoint),
    };
    let port_spec = |endpoint, delim| FieldSpec {
        max_len: 5,
        allowed: |b: u8| b.is_ascii_digit(),
        prefix_ok: |p: &[u8]| p.is_empty() || parse_port(p).is_some(),
        delim,
        err: ProxyHeaderError::V1BadPort(endpoint),
    };

    let Some((src_txt, pos)) = field(line, pos, &addr_spec(Endpoint::Source))? else {
        return starved();
    };
    let src_ip =
        parse_v1_ip(src_txt, v6).ok_or(ProxyHeaderError::V1BadAddress(Endpoint::Source))?;
    let Some((dst_txt, pos)) = field(line, pos, &addr_spec(Endpoint::Destination))? else {
        return starved();
    };
    let dst_ip =
        parse_v1_ip(dst_txt, v6).ok_or(ProxyHeaderError::V1BadAddress(Endpoint::Destination))?;
    let Some((sport, pos)) = field(line, pos, &port_spec(Endpoint::Source, b' '))? else {
        return starved();
    };
    let sport = parse_port(sport).ok_or(ProxyHeaderError::V1BadPort(Endpoint::Source))?;
    let Some((dport, pos)) = field(line, pos, &port_spec(Endpoint::Destination, b'\r'))? else {
        return starved();
    };
    let dport = parse_port(dport).ok_or(ProxyHeaderError::V1BadPort(Endpoint::Destination))?;
    match line.get(pos) {
        None => starved(),
        Some(b'\n') => Ok(Some((
            Header {
                version: Version::V1,
                command: Command::Proxy,
                transport: Transport::Stream,
                addresses: Addresses::Inet {
                    src: ip_port(src_ip, sport),
                    dst: ip_port(dst_ip, dport),
                },
                tlvs: Tlvs::default(),
            },
            pos + 1,
        ))),
        Some(_) => Err(ProxyHeaderError::V1BadLineEnd),
    }
}

#[derive(Clone, Copy)]
enum Ip {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

fn ip_port(ip: Ip, port: u16) -> SocketAddr {
    match ip {
        Ip::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
        Ip::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, port, 0, 0)),
    }
}

fn is_ipv4_char(b: u8) -> bool {
    b.is_ascii_digit() || b == b'.'
}

fn is_ipv6_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

fn parse_v1_ip(txt: &[u8], v6: bool) -> Option<Ip> {
    if v6 {
        // The field reader only lets ASCII through, so this is never lossy.
        std::str::from_utf8(txt).ok()?.parse().ok().map(Ip::V6)
    } else {
        parse_ipv4_strict(txt).map(Ip::V4)
    }
}

/// A decimal octet as the spec wants it: 1-3 digits, no leading zero, at most 255.
fn parse_octet(g: &[u8]) -> Option<u8> {
    if g.is_empty() || g.len() > 3 || (g.len() > 1 && g.first() == Some(&b'0')) {
        return None;
    }
    let mut v: u16 = 0;
    for &b in g {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u16::from(b - b'0');
    }
    u8::try_from(v).ok()
}

/// Our own dotted-quad parser rather than `std`'s, so that the full check and the
/// partial check in [`ipv4_prefix_ok`] are provably the same rules.
fn parse_ipv4_strict(txt: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut groups = txt.split(|&b| b == b'.');
    for slot in &mut octets {
        *slot = parse_octet(groups.next()?)?;
    }
    groups.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// True if `p` can still be extended into a dotted quad [`parse_ipv4_strict`] accepts.
fn ipv4_prefix_ok(p: &[u8]) -> bool {
    let mut groups = p.split(|&b| b == b'.').peekable();
    let mut n = 0;
    while let Some(g) = groups.next() {
        n += 1;
        if n > 4 {
            return false;
        }
        let last = groups.peek().is_none();
        // Every non-empty prefix of a valid octet is itself a valid octet.
        let ok = if last {
            g.is_empty() || parse_octet(g).is_some()
        } else {
            parse_octet(g).is_some()
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A decimal port: 1-5 digits, no leading zero except `0` itself, at most 65535.
fn parse_port(p: &[u8]) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || (p.len() > 1 && p.first() == Some(&b'0')) {
        return None;
    }
    let mut v: u32 = 0;
    for &b in p {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
    }
    u16::try_from(v).ok()
}

// ---------------------------------------------------------------------------------------
// Version 2

enum Family {
    /// Either nibble UNSPEC: addresses ignored, block skipped.
    Unspec,
    Inet,
    Inet6,
    Unix,
}

fn decode_family(fam: u8) -> Result<(Family, Transport), ProxyHeaderError> {
    let transport = match fam & 0x0F {
        0 => Transport::Unspec,
        1 => Transport::Stream,
        2 => Transport::Dgram,
        _ => return Err(ProxyHeaderError::V2BadFamily(fam)),
    };
    let family = match fam >> 4 {
        0 => Family::Unspec,
        1 => Family::Inet,
        2 => Family::Inet6,
        3 => Family::Unix,
        _ => return Err(ProxyHeaderError::V2BadFamily(fam)),
    };
    let family = if transport == Transport::Unspec {
        Family::Unspec
    } else {
        family
    };
    Ok((family, transport))
}

fn addr_len(family: &Family) -> usize {
    match family {
        Family::Unspec => 0,
        Family::Inet => ADDR_LEN_INET,
        Family::Inet6 => ADDR_LEN_INET6,
        Family::Unix => ADDR_LEN_UNIX,
    }
}

fn parse_v2(
    buf: &[u8],
    max_v2_len: usize,
) -> Result<Option<(Header<'_>, usize)>, ProxyHeaderError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..seen) != V2_SIGNATURE.get(..seen) {
        return Err(ProxyHeaderError::NotProxyHeader);
    }
    // Each fixed byte is judged as soon as it is there, before waiting for the next.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2BadVersion(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(ProxyHeaderError::V2BadCommand(c)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    let decoded = match command {
        Command::Proxy => Some(decode_family(fam)?),
        // LOCAL: "discard the protocol block including the family which is ignored".
        Command::Local => None,
    };
    let Some(&[hi, lo]) = buf.get(14..16).and_then(|s| s.first_chunk::<2>()) else {
        return Ok(None);
    };
    let block_len = usize::from(u16::from_be_bytes([hi, lo]));
    let total = V2_FIXED_LEN + block_len;
    let max = max_v2_len.min(V2_MAX_LEN);
    if total > max {
        return Err(ProxyHeaderError::V2TooLong { len: total, max });
    }
    if let Some((family, _)) = &decoded {
        let need = addr_len(family);
        if block_len < need {
            return Err(ProxyHeaderError::V2AddressTruncated {
                family: fam,
                need,
                have: block_len,
            });
        }
    }
    let Some(header) = buf.get(..total) else {
        return Ok(None);
    };

    let Some((family, transport)) = decoded else {
        return Ok(Some((
            Header {
                version: Version::V2,
                command,
                transport: Transport::Unspec,
                addresses: Addresses::Unknown,
                tlvs: Tlvs::default(),
            },
            total,
        )));
    };
    let block = header.get(V2_FIXED_LEN..).unwrap_or_default();
    let (addresses, tlv_start) = match family {
        Family::Unspec => (Addresses::Unknown, total),
        Family::Inet => {
            let Some(a) = block.first_chunk::<ADDR_LEN_INET>() else {
                return Err(ProxyHeaderError::V2AddressTruncated {
                    family: fam,
                    need: ADDR_LEN_INET,
                    have: block_len,
                });
            };
            let (ips, ports) = a.split_at(8);
            let (s, d) = ips.split_at(4);
            let src_ip = Ipv4Addr::from(to_array::<4>(s));
            let dst_ip = Ipv4Addr::from(to_array::<4>(d));
            let (sp, dp) = ports_of(ports);
            (
                Addresses::Inet {
                    src: SocketAddr::V4(SocketAddrV4::new(src_ip, sp)),
                    dst: SocketAddr::V4(SocketAddrV4::new(dst_ip, dp)),
                },
                V2_FIXED_LEN + ADDR_LEN_INET,
            )
        }
        Family::Inet6 => {
            let Some(a) = block.first_chunk::<ADDR_LEN_INET6>() else {
                return Err(ProxyHeaderError::V2AddressTruncated {
                    family: fam,
                    need: ADDR_LEN_INET6,
                    have: block_len,
                });
            };
            let (ips, ports) = a.split_at(32);
            let (s, d) = ips.split_at(16);
            let src_ip = Ipv6Addr::from(to_array::<16>(s));
            let dst_ip = Ipv6Addr::from(to_array::<16>(d));
            let (sp, dp) = ports_of(ports);
            (
                Addresses::Inet {
                    src: SocketAddr::V6(SocketAddrV6::new(src_ip, sp, 0, 0)),
                    dst: SocketAddr::V6(SocketAddrV6::new(dst_ip, dp, 0, 0)),
                },
                V2_FIXED_LEN + ADDR_LEN_INET6,
            )
        }
        Family::Unix => {
            let Some((src, rest)) = block.split_first_chunk::<UNIX_ADDR_LEN>() else {
                return Err(ProxyHeaderError::V2AddressTruncated {
                    family: fam,
                    need: ADDR_LEN_UNIX,
                    have: block_len,
                });
            };
            let Some(dst) = rest.first_chunk::<UNIX_ADDR_LEN>() else {
                return Err(ProxyHeaderError::V2AddressTruncated {
                    family: fam,
                    need: ADDR_LEN_UNIX,
                    have: block_len,
                });
            };
            (Addresses::Unix { src, dst }, V2_FIXED_LEN + ADDR_LEN_UNIX)
        }
    };
    let raw = header.get(tlv_start..).unwrap_or_default();
    check_tlvs(header, tlv_start)?;
    Ok(Some((
        Header {
            version: Version::V2,
            command,
            transport,
            addresses,
            tlvs: Tlvs { raw },
        },
        total,
    )))
}

/// Copies a slice whose length the caller has already fixed into an array.
fn to_array<const N: usize>(s: &[u8]) -> [u8; N] {
    s.first_chunk::<N>().copied().unwrap_or([0; N])
}

fn ports_of(p: &[u8]) -> (u16, u16) {
    let [a, b, c, d] = to_array::<4>(p);
    (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
}

/// Walks the TLVs of `header` from `start`, checking bounds, known lengths and the
/// checksum.
fn check_tlvs(header: &[u8], start: usize) -> Result<(), ProxyHeaderError> {
    let mut offset = start;
    let mut crc: Option<(usize, u32)> = None;
    let mut rest = header.get(start..).unwrap_or_default();
    while !rest.is_empty() {
        let Some((tlv, next)) = split_tlv(rest) else {
            return Err(ProxyHeaderError::V2TlvTruncated { offset });
        };
        let len = tlv.value.len();
        let bad_len = ProxyHeaderError::V2BadTlvLength {
            kind: tlv.kind,
            len,
        };
        match tlv.kind {
            TLV_CRC32C => {
                let Ok(value) = <[u8; 4]>::try_from(tlv.value) else {
                    return Err(bad_len);
                };
                if crc.is_some() {
                    return Err(ProxyHeaderError::V2DuplicateChecksum);
                }
                crc = Some((offset + TLV_HEADER_LEN, u32::from_be_bytes(value)));
            }
            TLV_UNIQUE_ID if len > MAX_UNIQUE_ID_LEN => return Err(bad_len),
            TLV_AUTHORITY if len > MAX_AUTHORITY_LEN => return Err(bad_len),
            _ => {}
        }
        offset += TLV_HEADER_LEN + len;
        rest = next;
    }
    if let Some((at, expected)) = crc {
        let computed = crc32c_with_zeroed(header, at);
        if computed != expected {
            return Err(ProxyHeaderError::V2ChecksumMismatch { expected, computed });
        }
    }
    Ok(())
}

/// CRC32C (Castagnoli, as RFC 4960 appendix B defines it), from the `crc` crate.
const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// CRC32C of `data` with the four bytes at `at` taken as zero (the checksum field itself),
/// computed in pieces so the input need not be copied.
fn crc32c_with_zeroed(data: &[u8], at: usize) -> u32 {
    let (before, after) = data.split_at(at.min(data.len()));
    let after = after.get(4..).unwrap_or_default();
    let mut d = CASTAGNOLI.digest();
    d.update(before);
    d.update(&[0; 4]);
    d.update(after);
    d.finalize()
}

/// CRC32C of `data`, as the v2 CRC32C TLV carries it.
pub fn crc32c(data: &[u8]) -> u32 {
    CASTAGNOLI.checksum(data)
}

// ---------------------------------------------------------------------------------------
// Encoders

/// Why a v2 header could not be encoded. `out` is left untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyEncodeError {
    /// A TLV value is longer than the 16-bit length field allows.
    TlvTooLong {
        /// The TLV type.
        kind: u8,
        /// The value length.
        len: usize,
    },
    /// Addresses plus TLVs exceed the 65535-byte block.
    HeaderTooLong {
        /// The block length that would have been needed.
        len: usize,
    },
    /// A CRC32C TLV was passed by hand; set [`V2Extras::crc32c`] instead.
    ManualChecksum,
}

impl fmt::Display for ProxyEncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyEncodeError::TlvTooLong { kind, len } => {
                write!(
                    f,
                    "PROXY v2 TLV type 0x{kind:02x} value of {len} bytes exceeds 65535"
                )
            }
            ProxyEncodeError::HeaderTooLong { len } => {
                write!(f, "PROXY v2 block of {len} bytes exceeds 65535")
            }
            ProxyEncodeError::ManualChecksum => {
                f.write_str("PROXY v2 CRC32C TLV must be requested with the crc32c flag")
            }
        }
    }
}

impl std::error::Error for ProxyEncodeError {}

/// Optional parts of a v2 header for [`encode_v2_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct V2Extras<'a> {
    /// Announce SOCK_DGRAM (UDP) instead of SOCK_STREAM (TCP).
    pub dgram: bool,
    /// TLVs to append after the addresses, in order.
    pub tlvs: &'a [Tlv<'a>],
    /// Prepend a CRC32C TLV and fill it in (as HAProxy does, it comes first).
    pub crc32c: bool,
}

/// Both endpoints in one family; see the module docs on mixed families.
enum Pair {
    V4(SocketAddrV4, SocketAddrV4),
    V6((Ipv6Addr, u16), (Ipv6Addr, u16)),
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> Pair {
    fn v6(a: SocketAddr) -> (Ipv6Addr, u16) {
        match a {
            SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), a.port()),
            SocketAddr::V6(a) => (*a.ip(), a.port()),
        }
    }
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => Pair::V4(s, d),
        _ => Pair::V6(v6(src), v6(dst)),
    }
}

/// Appends a v1 line announcing `src` -> `dst` (`TCP4`, or `TCP6` if either is IPv6).
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, so the io::Result carries nothing.
    let _ = match same_family(src, dst) {
        Pair::V4(s, d) => {
            write!(
                out,
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        Pair::V6((sip, sp), (dip, dp)) => write!(out, "PROXY TCP6 {sip} {dip} {sp} {dp}\r\n"),
    };
}

/// Appends `PROXY UNKNOWN\r\n`: the receiver keeps the real addresses. The spec advises
/// against it for connections that are expected to be accepted.
pub fn encode_v1_unknown(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PROXY UNKNOWN\r\n");
}

/// Appends a v2 PROXY/STREAM header announcing `src` -> `dst`, without TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    let before = out.len();
    if encode_v2_with(Some((src, dst)), &V2Extras::default(), out).is_err() {
        // Unreachable: 36 address bytes always fit. Keep `out` consistent regardless.
        out.truncate(before);
    }
}

/// Appends a 16-byte v2 LOCAL header (health checks and other proxy-initiated
/// connections).
pub fn encode_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
}

/// Appends a v2 header: PROXY with `addrs`, or LOCAL (family UNSPEC) when `addrs` is
/// `None`, followed by the TLVs of `extras`. Validates everything before writing.
pub fn encode_v2_with(
    addrs: Option<(SocketAddr, SocketAddr)>,
    extras: &V2Extras<'_>,
    out: &mut Vec<u8>,
) -> Result<(), ProxyEncodeError> {
    let pair = addrs.map(|(s, d)| same_family(s, d));
    let mut block = match pair {
        None => 0,
        Some(Pair::V4(..)) => ADDR_LEN_INET,
        Some(Pair::V6(..)) => ADDR_LEN_INET6,
    };
    if extras.crc32c {
        block += TLV_HEADER_LEN + 4;
    }
    for tlv in extras.tlvs {
        if tlv.kind == TLV_CRC32C {
            return Err(ProxyEncodeError::ManualChecksum);
        }
        if tlv.value.len() > usize::from(u16::MAX) {
            return Err(ProxyEncodeError::TlvTooLong {
                kind: tlv.kind,
                len: tlv.value.len(),
            });
        }
        block += TLV_HEADER_LEN + tlv.value.len();
    }
    let Ok(block_len) = u16::try_from(block) else {
        return Err(ProxyEncodeError::HeaderTooLong { len: block });
    };

    let start = out.len();
    out.reserve(V2_FIXED_LEN + block);
    out.extend_from_slice(&V2_SIGNATURE);
    let transport = if extras.dgram { 0x02 } else { 0x01 };
    let (ver_cmd, fam) = match pair {
        None => (0x20, 0x00),
        Some(Pair::V4(..)) => (0x21, 0x10 | transport),
        Some(Pair::V6(..)) => (0x21, 0x20 | transport),
    };
    out.extend_from_slice(&[ver_cmd, fam]);
    out.extend_from_slice(&block_len.to_be_bytes());
    match pair {
        None => {}
        Some(Pair::V4(s, d)) => {
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        Some(Pair::V6((sip, sp), (dip, dp))) => {
            out.extend_from_slice(&sip.octets());
            out.extend_from_slice(&dip.octets());
            out.extend_from_slice(&sp.to_be_bytes());
            out.extend_from_slice(&dp.to_be_bytes());
        }
    }
    let crc_at = extras.crc32c.then(|| {
        out.extend_from_slice(&[TLV_CRC32C, 0, 4]);
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        at
    });
    for tlv in extras.tlvs {
        out.push(tlv.kind);
        // Lengths were checked above.
        out.extend_from_slice(&(tlv.value.len() as u16).to_be_bytes());
        out.extend_from_slice(tlv.value);
    }
    if let Some(at) = crc_at {
        let header = out.get(start..).unwrap_or_default();
        let sum = crc32c(header).to_be_bytes();
        if let Some(field) = out.get_mut(at..at + 4) {
            field.copy_from_slice(&sum);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v1(src: &str, dst: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_v1(sa(src), sa(dst), &mut out);
        out
    }

    fn v2(src: &str, dst: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_v2(sa(src), sa(dst), &mut out);
        out
    }

    fn full(buf: &[u8]) -> (Header<'_>, usize) {
        parse(buf).unwrap().unwrap()
    }

    fn err(buf: &[u8]) -> ProxyHeaderError {
        parse(buf).unwrap_err()
    }

    /// Every prefix answers `Ok(None)` or exactly the whole input's error; a complete
    /// header is only seen once all its bytes are there, and then never changes.
    fn assert_prefix_consistent_with(buf: &[u8], limit: usize) {
        let whole = parse_with_limit(buf, limit);
        let mut errored = None;
        for k in 0..=buf.len() {
            let r = parse_with_limit(&buf[..k], limit);
            match (&r, &whole) {
                (Ok(None), _) => assert!(
                    errored.is_none(),
                    "{buf:?}: prefix {k} recovered from an error"
                ),
                (Err(e), Err(w)) => {
                    assert_eq!(e, w, "{buf:?}: prefix {k} gave a different error");
                    errored = Some(*e);
                }
                (Ok(Some((h, n))), Ok(Some((wh, wn)))) => {
                    assert_eq!((h, n), (wh, wn), "{buf:?}: prefix {k} parsed differently");
                    assert!(*n <= k);
                }
                _ => panic!("{buf:?}: prefix {k} gave {r:?}, whole gave {whole:?}"),
            }
            if k < buf.len() {
                assert!(
                    !(matches!(r, Ok(None)) && k >= max_header_len(limit)),
                    "{buf:?}: waited beyond max_header_len"
                );
            }
        }
    }

    fn assert_prefix_consistent(buf: &[u8]) {
        assert_prefix_consistent_with(buf, DEFAULT_MAX_V2_LEN);
    }

    // ----- v1

    #[test]
    fn v1_tcp4_round_trip_and_payload_untouched() {
        let mut buf = v1("192.168.0.1:56324", "192.168.0.11:443");
        assert_eq!(buf, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let len = buf.len();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (h, n) = full(&buf);
        assert_eq!(n, len);
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.transport, Transport::Stream);
        assert_eq!(
            h.socket_addrs(),
            Some((sa("192.168.0.1:56324"), sa("192.168.0.11:443")))
        );
        assert!(h.tlvs.is_empty());
        assert_prefix_consistent(&buf);
    }

    #[test]
    fn v1_tcp6_round_trip() {
        for (s, d) in [
            ("[2001:db8::1]:1", "[::1]:65535"),
            (
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535",
            ),
            ("[::]:0", "[::ffff:10.1.2.3]:80"),
        ] {
            let buf = v1(s, d);
            assert!(buf.starts_with(b"PROXY TCP6 "));
            assert!(buf.len() <= 104);
            let (h, n) = full(&buf);
            assert_eq!(n, buf.len());
            assert_eq!(h.socket_addrs(), Some((sa(s), sa(d))));
            assert_prefix_consistent(&buf);
        }
    }

    #[test]
    fn v1_mixed_families_map_ipv4_into_ipv6() {
        let buf = v1("10.0.0.1:1000", "[2001:db8::2]:443");
        assert_eq!(buf, b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 1000 443\r\n");
        let (h, _) = full(&buf);
        assert_eq!(
            h.socket_addrs(),
            Some((sa("[::ffff:10.0.0.1]:1000"), sa("[2001:db8::2]:443")))
        );
        let buf = v1("[2001:db8::2]:443", "10.0.0.1:1000");
        assert_eq!(buf, b"PROXY TCP6 2001:db8::2 ::ffff:10.0.0.1 443 1000\r\n");
    }

    #[test]
    fn v1_unknown_short_and_long_forms() {
        let mut out = Vec::new();
        encode_v1_unknown(&mut out);
        assert_eq!(out, b"PROXY UNKNOWN\r\n");
        let (h, n) = full(&out);
        assert_eq!(n, 15);
        assert_eq!(h.addresses, Addresses::Unknown);
        assert_eq!(h.transport, Transport::Unspec);
        assert_eq!(h.socket_addrs(), None);
        assert_prefix_consistent(&out);

        // The spec's worst case: exactly 107 bytes, and its contents are ignored.
        let ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {ff} {ff} 65535 65535\r\nrest");
        assert_eq!(full(line.as_bytes()).1, V1_MAX_LEN);
        assert_prefix_consistent(line.as_bytes());
        let odd = b"PROXY UNKNOWN garbage \x01\r\n";
        assert_eq!(full(odd).1, odd.len());
    }

    #[test]
    fn v1_port_and_address_edges() {
        assert!(full(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n").1 == 44);
        for (line, e) in [
            (
                &b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n"[..],
                ProxyHeaderError::V1BadPort(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
                ProxyHeaderError::V1BadPort(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 00 1\r\n",
                ProxyHeaderError::V1BadPort(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 099999\r\n",
                ProxyHeaderError::V1BadPort(Endpoint::Destination),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -1\r\n",
                ProxyHeaderError::V1BadPort(Endpoint::Destination),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                ProxyHeaderError::V1BadPort(Endpoint::Destination),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
                ProxyHeaderError::V1BadPort(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Source),
            ),
            (
                b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Destination),
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Source),
            ),
            (
                b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Destination),
            ),
            (
                b"PROXY TCP6 ::1 1:2:3:4:5:6:7:8:9 1 2\r\n",
                ProxyHeaderError::V1BadAddress(Endpoint::Destination),
            ),
        ] {
            assert_eq!(err(line), e, "{}", String::from_utf8_lossy(line));
            assert_prefix_consistent(line);
        }
    }

    #[test]
    fn v1_syntax_errors() {
        for (line, e) in [
            (&b"GET / HTTP/1.1\r\n"[..], ProxyHeaderError::NotProxyHeader),
            (b"POST / HTTP/1.1\r\n", ProxyHeaderError::NotProxyHeader),
            (b"PROXYTCP4", ProxyHeaderError::NotProxyHeader),
            (b"proxy TCP4", ProxyHeaderError::NotProxyHeader),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadProtocol,
            ),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadProtocol,
            ),
            (
                b"PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadProtocol,
            ),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyHeaderError::V1BadProtocol,
            ),
            (b"PROXY \r\n", ProxyHeaderError::V1BadProtocol),
            (b"PROXY UNKNOWNX\r\n", ProxyHeaderError::V1BadProtocol),
            (b"PROXY TCP4\r\n", ProxyHeaderError::V1MissingFields),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                ProxyHeaderError::V1MissingFields,
            ),
            (b"PROXY TCP4 1.2.3.4\r\n", ProxyHeaderError::V1MissingFields),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                ProxyHeaderError::V1BadLineEnd,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
                ProxyHeaderError::V1BadLineEnd,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
                ProxyHeaderError::V1BadLineEnd,
            ),
        ] {
            assert_eq!(err(line), e, "{}", String::from_utf8_lossy(line));
            assert_prefix_consistent(line);
        }
    }

    #[test]
    fn v1_rejected_early() {
        assert_eq!(parse(b"G"), Err(ProxyHeaderError::NotProxyHeader));
        assert_eq!(parse(b"PO"), Err(ProxyHeaderError::NotProxyHeader));
        assert_eq!(parse(b"PROXY X"), Err(ProxyHeaderError::V1BadProtocol));
        assert_eq!(parse(b"PROXY TCP4 1"), Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 1:"),
            Err(ProxyHeaderError::V1BadAddress(Endpoint::Source))
        );
        assert_eq!(
            parse(b"PROXY TCP4 300"),
            Err(ProxyHeaderError::V1BadAddress(Endpoint::Source))
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0"), Ok(None));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 07"),
            Err(ProxyHeaderError::V1BadPort(Endpoint::Source))
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 70000"),
            Err(ProxyHeaderError::V1BadPort(Endpoint::Source))
        );
    }

    #[test]
    fn v1_implausible_field_then_line_end_is_split_independent() {
        // Found by the proxy_protocol fuzz target: "PROXY TCP4 ." answered
        // V1BadAddress but "PROXY TCP4 .\n" answered V1MissingFields.
        for buf in [
            &b"PROXY TCP4 .\n"[..],
            b"PROXY TCP4 .\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 05\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 05\n",
        ] {
            assert_prefix_consistent(buf);
        }
        assert_eq!(
            parse(b"PROXY TCP4 .\n"),
            Err(ProxyHeaderError::V1BadAddress(Endpoint::Source))
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 05\n"),
            Err(ProxyHeaderError::V1BadPort(Endpoint::Source))
        );
    }

    #[test]
    fn v1_length_limit() {
        // 107 bytes of an UNKNOWN line without CRLF: too long, and only once 107 are in.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 1, b'a');
        assert_eq!(parse(&line), Ok(None));
        line.push(b'\r');
        assert_eq!(parse(&line), Err(ProxyHeaderError::V1TooLong));
        line.push(b'\n');
        assert_eq!(parse(&line), Err(ProxyHeaderError::V1TooLong));
        assert_prefix_consistent(&line);
        // A TCP6 line with long (but valid) address spellings that cannot fit.
        let a = "0000:0000:0000:0000:0000:0000:255.255.255.255";
        let line = format!("PROXY TCP6 {a} {a} 65535 65535\r\n");
        assert!(line.len() > V1_MAX_LEN);
        assert_eq!(err(line.as_bytes()), ProxyHeaderError::V1TooLong);
        assert_prefix_consistent(line.as_bytes());
        // The same line with shorter ports fits within 107 and parses.
        let line = format!("PROXY TCP6 {a} ::1 1 2\r\n");
        assert!(full(line.as_bytes()).1 < V1_MAX_LEN);
    }

    // ----- v2

    #[test]
    fn v2_inet_round_trip() {
        let mut buf = v2("192.0.2.1:1234", "198.51.100.2:443");
        assert_eq!(buf.len(), 28);
        assert_eq!(&buf[12..16], &[0x21, 0x11, 0x00, 0x0C]);
        buf.extend_from_slice(b"payload");
        let (h, n) = full(&buf);
        assert_eq!(n, 28);
        assert_eq!(h.version, Version::V2);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.transport, Transport::Stream);
        assert_eq!(
            h.socket_addrs(),
            Some((sa("192.0.2.1:1234"), sa("198.51.100.2:443")))
        );
        assert!(h.tlvs.is_empty());
        assert_prefix_consistent(&buf);
    }

    #[test]
    fn v2_inet6_and_mixed_round_trip() {
        let buf = v2("[2001:db8::1]:1", "[2001:db8::2]:2");
        assert_eq!(buf.len(), 52);
        assert_eq!(buf[13], 0x21);
        let (h, _) = full(&buf);
        assert_eq!(
            h.socket_addrs(),
            Some((sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2")))
        );
        assert_prefix_consistent(&buf);

        let buf = v2("10.0.0.1:5", "[2001:db8::2]:6");
        assert_eq!(buf[13], 0x21);
        let (h, _) = full(&buf);
        assert_eq!(
            h.socket_addrs(),
            Some((sa("[::ffff:10.0.0.1]:5"), sa("[2001:db8::2]:6")))
        );
    }

    #[test]
    fn v2_dgram_local_and_tlvs_round_trip() {
        let tlvs = [
            Tlv {
                kind: TLV_ALPN,
                value: b"h2",
            },
            Tlv {
                kind: TLV_AUTHORITY,
                value: b"example.com",
            },
            Tlv {
                kind: TLV_NOOP,
                value: b"",
            },
            Tlv {
                kind: 0xE0,
                value: &[1, 2, 3],
            },
        ];
        for crc in [false, true] {
            for addrs in [
                Some((sa("1.2.3.4:5"), sa("6.7.8.9:10"))),
                Some((sa("[::1]:1"), sa("[::2]:2"))),
                None,
            ] {
                let extras = V2Extras {
                    dgram: true,
                    tlvs: &tlvs,
                    crc32c: crc,
                };
                let mut buf = Vec::new();
                encode_v2_with(addrs, &extras, &mut buf).unwrap();
                let (h, n) = full(&buf);
                assert_eq!(n, buf.len());
                assert_eq!(h.socket_addrs(), addrs);
                assert_prefix_consistent(&buf);
                if addrs.is_none() {
                    // LOCAL: the block is discarded unparsed.
                    assert_eq!(h.command, Command::Local);
                    assert!(h.tlvs.is_empty());
                    continue;
                }
                assert_eq!(h.transport, Transport::Dgram);
                assert_eq!(h.alpn(), Some(&b"h2"[..]));
                assert_eq!(h.authority(), Some(&b"example.com"[..]));
                assert_eq!(h.unique_id(), None);
                let kinds: Vec<u8> = h.tlvs.iter().map(|t| t.kind).collect();
                if crc {
                    assert_eq!(kinds, [TLV_CRC32C, TLV_ALPN, TLV_AUTHORITY, TLV_NOOP, 0xE0]);
                } else {
                    assert_eq!(kinds, [TLV_ALPN, TLV_AUTHORITY, TLV_NOOP, 0xE0]);
                }
                assert_eq!(h.tlvs.get(0xE0), Some(&[1u8, 2, 3][..]));
            }
        }
    }

    #[test]
    fn v2_local_header() {
        let mut buf = Vec::new();
        encode_v2_local(&mut buf);
        assert_eq!(buf.len(), 16);
        let (h, n) = full(&buf);
        assert_eq!(
            (h.command, h.addresses, n),
            (Command::Local, Addresses::Unknown, 16)
        );
        // LOCAL ignores the family, even an unassigned one, and skips any block.
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend_from_slice(&[0x20, 0xFF, 0x00, 0x03, 9, 9, 9]);
        assert_eq!(full(&buf).1, 19);
        assert_prefix_consistent(&buf);
    }

    fn raw_v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend_from_slice(&[ver_cmd, fam]);
        buf.extend_from_slice(&(block.len() as u16).to_be_bytes());
        buf.extend_from_slice(block);
        buf
    }

    #[test]
    fn v2_unix_and_unspec() {
        let mut block = [0u8; 216];
        block[..9].copy_from_slice(b"/tmp/a.sk");
        block[108..117].copy_from_slice(b"/tmp/b.sk");
        let mut with_tlv = block.to_vec();
        with_tlv.extend_from_slice(&[TLV_ALPN, 0, 1, b'x']);
        let buf = raw_v2(0x21, 0x31, &with_tlv);
        let (h, n) = full(&buf);
        assert_eq!(n, buf.len());
        let Addresses::Unix { src, dst } = h.addresses else {
            panic!("{h:?}")
        };
        assert!(src.starts_with(b"/tmp/a.sk\0"));
        assert!(dst.starts_with(b"/tmp/b.sk\0"));
        assert_eq!(h.socket_addrs(), None);
        assert_eq!(h.alpn(), Some(&b"x"[..]));
        assert_prefix_consistent(&buf);

        // PROXY with AF_UNSPEC, or with transport UNSPEC: real addresses, block skipped
        // (even bytes that would not be valid TLVs).
        for fam in [0x00, 0x01, 0x02, 0x10, 0x20, 0x30] {
            let buf = raw_v2(0x21, fam, &[0xFF, 0xFF]);
            let (h, n) = full(&buf);
            assert_eq!(
                (h.addresses, h.command, n),
                (Addresses::Unknown, Command::Proxy, 18)
            );
            assert!(h.tlvs.is_empty());
        }
    }

    fn with_crc(mut buf: Vec<u8>, at: usize) -> Vec<u8> {
        let sum = crc32c_with_zeroed(&buf, at);
        buf[at..at + 4].copy_from_slice(&sum.to_be_bytes());
        buf
    }

    #[test]
    fn v2_errors() {
        let addrs = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        let tlv = |extra: &[u8]| {
            let mut b = addrs.to_vec();
            b.extend_from_slice(extra);
            b
        };
        let mut long_id = vec![TLV_UNIQUE_ID, 0, 129];
        long_id.resize(3 + 129, 7);
        let mut long_auth = vec![TLV_AUTHORITY, 1, 0];
        long_auth.resize(3 + 256, b'a');
        let mut good_crc = raw_v2(0x21, 0x11, &tlv(&[TLV_CRC32C, 0, 4, 0, 0, 0, 0]));
        good_crc = with_crc(good_crc, 31);
        let mut bad_crc = good_crc.clone();
        bad_crc[27] ^= 1; // flip a bit of the destination port
        let computed = crc32c_with_zeroed(&bad_crc, 31);
        let expected = u32::from_be_bytes(bad_crc[31..35].try_into().unwrap());
        assert!(full(&good_crc).0.tlvs.get(TLV_CRC32C).is_some());

        let cases: Vec<(Vec<u8>, ProxyHeaderError)> = vec![
            (
                b"\r\n\r\n\0\r\nQUIX".to_vec(),
                ProxyHeaderError::NotProxyHeader,
            ),
            (b"\r\r".to_vec(), ProxyHeaderError::NotProxyHeader),
            (
                raw_v2(0x11, 0x11, &addrs),
                ProxyHeaderError::V2BadVersion(1),
            ),
            (
                raw_v2(0x31, 0x11, &addrs),
                ProxyHeaderError::V2BadVersion(3),
            ),
            (
                raw_v2(0x22, 0x11, &addrs),
                ProxyHeaderError::V2BadCommand(2),
            ),
            (
                raw_v2(0x2F, 0x11, &addrs),
                ProxyHeaderError::V2BadCommand(15),
            ),
            (
                raw_v2(0x21, 0x41, &addrs),
                ProxyHeaderError::V2BadFamily(0x41),
            ),
            (
                raw_v2(0x21, 0x13, &addrs),
                ProxyHeaderError::V2BadFamily(0x13),
            ),
            (
                raw_v2(0x21, 0x11, &addrs[..11]),
                ProxyHeaderError::V2AddressTruncated {
                    family: 0x11,
                    need: 12,
                    have: 11,
                },
            ),
            (
                raw_v2(0x21, 0x21, &[0; 35]),
                ProxyHeaderError::V2AddressTruncated {
                    family: 0x21,
                    need: 36,
                    have: 35,
                },
            ),
            (
                raw_v2(0x21, 0x32, &[0; 215]),
                ProxyHeaderError::V2AddressTruncated {
                    family: 0x32,
                    need: 216,
                    have: 215,
                },
            ),
            (
                raw_v2(0x21, 0x11, &tlv(&[1, 0])),
                ProxyHeaderError::V2TlvTruncated { offset: 28 },
            ),
            (
                raw_v2(0x21, 0x11, &tlv(&[1, 0, 2, b'h'])),
                ProxyHeaderError::V2TlvTruncated { offset: 28 },
            ),
            (
                raw_v2(0x21, 0x11, &tlv(&[4, 0, 0, 1, 0, 1])),
                ProxyHeaderError::V2TlvTruncated { offset: 31 },
            ),
            (
                raw_v2(0x21, 0x11, &tlv(&[TLV_CRC32C, 0, 3, 0, 0, 0])),
                ProxyHeaderError::V2BadTlvLength {
                    kind: TLV_CRC32C,
                    len: 3,
                },
            ),
            (
                raw_v2(0x21, 0x11, &tlv(&long_id)),
                ProxyHeaderError::V2BadTlvLength {
                    kind: TLV_UNIQUE_ID,
                    len: 129,
                },
            ),
            (
                raw_v2(0x21, 0x11, &tlv(&long_auth)),
                ProxyHeaderError::V2BadTlvLength {
                    kind: TLV_AUTHORITY,
                    len: 256,
                },
            ),
            (
                raw_v2(
                    0x21,
                    0x11,
                    &tlv(&[3, 0, 4, 0, 0, 0, 0, 3, 0, 4, 0, 0, 0, 0]),
                ),
                ProxyHeaderError::V2DuplicateChecksum,
            ),
            (
                bad_crc,
                ProxyHeaderError::V2ChecksumMismatch { expected, computed },
            ),
            (
                raw_v2(0x21, 0x11, &[0; DEFAULT_MAX_V2_LEN - 15]),
                ProxyHeaderError::V2TooLong {
                    len: DEFAULT_MAX_V2_LEN + 1,
                    max: DEFAULT_MAX_V2_LEN,
                },
            ),
        ];
        for (buf, e) in cases {
            assert_eq!(err(&buf), e, "{buf:?}");
            assert_prefix_consistent(&buf);
            assert!(!e.to_string().is_empty());
        }
        // A maximum-size TLV ID and authority are fine.
        let mut id = vec![TLV_UNIQUE_ID, 0, 128];
        id.resize(3 + 128, 1);
        assert_eq!(
            full(&raw_v2(0x21, 0x11, &tlv(&id)))
                .0
                .unique_id()
                .map(<[u8]>::len),
            Some(128)
        );
    }

    #[test]
    fn v2_rejected_early() {
        assert_eq!(parse(b"\r\n\r\n\0\r"), Ok(None));
        assert_eq!(
            parse(b"\r\n\r\n\x01"),
            Err(ProxyHeaderError::NotProxyHeader)
        );
        let mut b = V2_SIGNATURE.to_vec();
        assert_eq!(parse(&b), Ok(None));
        b.push(0x10);
        assert_eq!(parse(&b), Err(ProxyHeaderError::V2BadVersion(1)));
        b[12] = 0x21;
        b.push(0x51);
        assert_eq!(parse(&b), Err(ProxyHeaderError::V2BadFamily(0x51)));
        b[13] = 0x11;
        b.extend_from_slice(&[0xFF, 0xFF]);
        assert_eq!(
            parse(&b),
            Err(ProxyHeaderError::V2TooLong {
                len: V2_MAX_LEN,
                max: DEFAULT_MAX_V2_LEN
            })
        );
    }

    #[test]
    fn v2_limit_is_a_parameter() {
        let buf = raw_v2(0x21, 0x11, &{
            let mut b = vec![0u8; 12];
            b.extend_from_slice(&[0xE1, 0x13, 0x88]);
            b.resize(12 + 3 + 5000, 0);
            b
        });
        assert_eq!(buf.len(), 16 + 12 + 3 + 5000);
        assert!(matches!(err(&buf), ProxyHeaderError::V2TooLong { .. }));
        let (h, n) = parse_with_limit(&buf, 8192).unwrap().unwrap();
        assert_eq!(
            (n, h.tlvs.get(0xE1).map(<[u8]>::len)),
            (buf.len(), Some(5000))
        );
        assert_prefix_consistent_with(&buf[..60], 8192);
        assert_eq!(
            parse_with_limit(&buf, usize::MAX).unwrap().unwrap().1,
            buf.len()
        );
        assert_eq!(max_header_len(usize::MAX), V2_MAX_LEN);
        assert_eq!(max_header_len(0), V1_MAX_LEN);
        // A limit below 16 refuses every v2 header instead of misbehaving.
        assert!(matches!(
            parse_with_limit(&v2("1.1.1.1:1", "2.2.2.2:2"), 3),
            Err(ProxyHeaderError::V2TooLong { .. })
        ));
    }

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn encoder_errors_leave_out_untouched() {
        let big = vec![0u8; 65536];
        let mut out = b"keep".to_vec();
        let tlvs = [Tlv {
            kind: 0xE0,
            value: &big,
        }];
        let r = encode_v2_with(
            None,
            &V2Extras {
                tlvs: &tlvs,
                ..V2Extras::default()
            },
            &mut out,
        );
        assert_eq!(
            r,
            Err(ProxyEncodeError::TlvTooLong {
                kind: 0xE0,
                len: 65536
            })
        );
        let half = vec![0u8; 40000];
        let tlvs = [
            Tlv {
                kind: 0xE0,
                value: &half,
            },
            Tlv {
                kind: 0xE1,
                value: &half,
            },
        ];
        let r = encode_v2_with(
            None,
            &V2Extras {
                tlvs: &tlvs,
                ..V2Extras::default()
            },
            &mut out,
        );
        assert_eq!(r, Err(ProxyEncodeError::HeaderTooLong { len: 80006 }));
        let tlvs = [Tlv {
            kind: TLV_CRC32C,
            value: &[0; 4],
        }];
        let r = encode_v2_with(
            None,
            &V2Extras {
                tlvs: &tlvs,
                ..V2Extras::default()
            },
            &mut out,
        );
        assert_eq!(r, Err(ProxyEncodeError::ManualChecksum));
        assert_eq!(out, b"keep");
        for e in [
            ProxyEncodeError::ManualChecksum,
            ProxyEncodeError::HeaderTooLong { len: 1 },
        ] {
            assert!(!e.to_string().is_empty());
        }
        // Exactly 65535 block bytes is fine and parses with a large enough limit.
        let fill = vec![0u8; 65535 - 3];
        let tlvs = [Tlv {
            kind: TLV_NOOP,
            value: &fill,
        }];
        let mut out = Vec::new();
        encode_v2_with(
            None,
            &V2Extras {
                tlvs: &tlvs,
                ..V2Extras::default()
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), V2_MAX_LEN);
        assert_eq!(
            parse_with_limit(&out, V2_MAX_LEN).unwrap().unwrap().1,
            V2_MAX_LEN
        );
    }

    #[test]
    fn error_messages_are_descriptive() {
        assert_eq!(
            ProxyHeaderError::V1BadPort(Endpoint::Destination).to_string(),
            "PROXY v1 destination port is not a decimal 0..=65535"
        );
        assert_eq!(
            ProxyHeaderError::V2TooLong {
                len: 5000,
                max: 4096
            }
            .to_string(),
            "PROXY v2 header of 5000 bytes exceeds the 4096-byte limit"
        );
        assert_eq!(
            ProxyHeaderError::NotProxyHeader.to_string(),
            "not a PROXY protocol header"
        );
    }

    // ----- fuzz

    use reactor_test_support::fuzz::Rng;

    fn corpus() -> Vec<Vec<u8>> {
        let mut c = vec![
            v1("192.168.0.1:56324", "192.168.0.11:443"),
            v1("[2001:db8::1]:1", "[::ffff:1.2.3.4]:65535"),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            v2("1.2.3.4:5", "6.7.8.9:10"),
            v2("[::1]:1", "[2001:db8::2]:2"),
            raw_v2(0x21, 0x31, &[b'/'; 216]),
            raw_v2(0x20, 0x00, &[]),
        ];
        // A line one byte short of the v1 limit, and TLVs at their length limits.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN - 3, b'x');
        long.extend_from_slice(b"\r\n");
        c.push(long);
        let (id, auth) = ([7u8; MAX_UNIQUE_ID_LEN], [b'a'; MAX_AUTHORITY_LEN]);
        let tlvs = [
            Tlv {
                kind: TLV_UNIQUE_ID,
                value: &id,
            },
            Tlv {
                kind: TLV_AUTHORITY,
                value: &auth,
            },
            Tlv {
                kind: 0x13,
                value: &[0; 4],
            },
        ];
        let mut b = Vec::new();
        encode_v2_with(
            Some((sa("[::1]:5"), sa("[::2]:10"))),
            &V2Extras {
                dgram: false,
                tlvs: &tlvs,
                crc32c: true,
            },
            &mut b,
        )
        .unwrap();
        c.push(b);
        let tlvs = [
            Tlv {
                kind: TLV_ALPN,
                value: b"http/1.1",
            },
            Tlv {
                kind: TLV_AUTHORITY,
                value: b"a.example",
            },
        ];
        let mut b = Vec::new();
        encode_v2_with(
            Some((sa("1.2.3.4:5"), sa("6.7.8.9:10"))),
            &V2Extras {
                dgram: false,
                tlvs: &tlvs,
                crc32c: true,
            },
            &mut b,
        )
        .unwrap();
        c.push(b);
        c
    }

    /// Checks what must hold for any input; returns the result for coverage counting.
    fn check_invariants(
        buf: &[u8],
        limit: usize,
    ) -> Result<Option<(Header<'_>, usize)>, ProxyHeaderError> {
        let r = parse_with_limit(buf, limit);
        match r {
            Ok(Some((h, n))) => {
                assert!(n > 0 && n <= buf.len());
                // The header is self-contained: its own bytes parse to the same thing.
                assert_eq!(parse_with_limit(&buf[..n], limit), Ok(Some((h, n))));
                // The TLV iterator never yields more bytes than there are.
                let total: usize = h.tlvs.iter().map(|t| 3 + t.value.len()).sum();
                assert_eq!(total, h.tlvs.as_bytes().len());
            }
            Ok(None) => assert!(buf.len() < max_header_len(limit)),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        r
    }

    #[derive(Default)]
    struct Coverage {
        complete: usize,
        partial: usize,
        errors: std::collections::HashSet<std::mem::Discriminant<ProxyHeaderError>>,
        seen: Vec<ProxyHeaderError>,
    }

    impl Coverage {
        fn add(&mut self, r: Result<Option<(Header<'_>, usize)>, ProxyHeaderError>) {
            match r {
                Ok(Some(_)) => self.complete += 1,
                Ok(None) => self.partial += 1,
                Err(e) => {
                    if self.errors.insert(std::mem::discriminant(&e)) {
                        self.seen.push(e);
                    }
                }
            }
        }
    }

    #[test]
    fn fuzz_mutations_never_panic_and_stay_consistent() {
        let corpus = corpus();
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut cov = Coverage::default();
        for i in 0..20_000 {
            let mut buf = corpus[i % corpus.len()].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len() + 1);
                match rng.below(7) {
                    0 if at < buf.len() => buf[at] = rng.next_u64() as u8,
                    1 if at < buf.len() => buf[at] ^= 1 << rng.below(8),
                    2 => buf.truncate(at),
                    3 => buf.insert(at, rng.next_u64() as u8),
                    4 if at < buf.len() => {
                        buf.remove(at);
                    }
                    5 => buf.insert(at, [b' ', b'\r', b'\n', b'0', b':', b'.'][rng.below(6)]),
                    // Lengths are where the interesting bugs hide.
                    _ if buf.len() >= 16 && buf[0] == 0x0D => {
                        buf[14 + rng.below(2)] = rng.next_u64() as u8
                    }
                    _ => {}
                }
            }
            let limit = [DEFAULT_MAX_V2_LEN, 40, 64, V2_MAX_LEN][rng.below(4)];
            cov.add(check_invariants(&buf, limit));
            if i % 4 == 0 {
                assert_prefix_consistent_with(&buf, limit);
            }
        }
        // Pure noise, with and without a valid start.
        for _ in 0..3000 {
            let len = rng.below(300);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let start: &[u8] = match rng.below(3) {
                0 => b"\r\n\r\n\0\r\nQUIT\n\x21",
                1 => b"PROXY TCP",
                _ => b"",
            };
            buf.splice(0..0, start.iter().copied());
            cov.add(check_invariants(&buf, DEFAULT_MAX_V2_LEN));
            assert_prefix_consistent(&buf);
        }
        // Guard against a loop that only ever fails on byte 0: every outcome class and
        // all error kinds but one must have been reached (a second CRC32C TLV is too
        // unlikely a mutation; `v2_errors` covers it).
        assert!(cov.complete > 500, "only {} complete headers", cov.complete);
        assert!(cov.partial > 500, "only {} partial headers", cov.partial);
        assert!(
            cov.errors.len() >= 15,
            "only {} error kinds: {:?}",
            cov.errors.len(),
            cov.seen
        );
    }
}
