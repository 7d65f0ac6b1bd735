//! The SOCKS5 UDP request header (RFC 1928 section 7): the prefix every datagram
//! between a client and a SOCKS5 UDP relay carries.
//!
//! ```text
//! +----+------+------+----------+----------+----------+
//! |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//! +----+------+------+----------+----------+----------+
//! | 2  |  1   |  1   | Variable |    2     | Variable |
//! +----+------+------+----------+----------+----------+
//! ```
//!
//! What it is for: a UDP ASSOCIATE relay calls [`parse_udp`] on each datagram from the
//! client to learn where to send the payload, and [`encode_udp_header`] (followed by the
//! payload) to wrap each reply it sends back, with the replying peer as the target.
//!
//! What it must not do: no sockets, no resolution, no allocation (a parsed domain
//! borrows from the datagram), no reassembly state, no panics. A datagram is complete or
//! it is not, so there is no "need more" answer: short input is an error.
//!
//! Decisions (all deliberate):
//! - FRAG != 0 is refused with [`Socks5UdpError::Fragmented`]. RFC 1928 makes
//!   reassembly optional ("An implementation that does not support fragmentation MUST
//!   drop any datagram whose FRAG field is other than X'00'"), and reassembly would need
//!   a timer and buffers this module must not own.
//! - RSV is ignored even when nonzero, matching the TCP request parser in
//!   [`crate::socks5`]: rejecting buys nothing and the relay already checks that a
//!   datagram comes from the associated client.
//! - Domain names follow the same rules as the TCP codec: 1..=255 bytes, UTF-8, no
//!   control characters (C0, DEL, C1), which could forge log lines or confuse
//!   resolvers. They are not resolved or normalised; an IP literal sent as a domain
//!   stays a domain.
//! - An empty payload is accepted; a zero-length UDP datagram is legal.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Address type: IPv4 (4 bytes).
pub const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name (1 length byte + name).
pub const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6 (16 bytes).
pub const ATYP_IPV6: u8 = 0x04;
/// Longest domain name the wire format can carry.
pub const MAX_DOMAIN_LEN: usize = 255;
/// Shortest header with an IP address: RSV, FRAG, ATYP, IPv4, port. (A one-byte
/// domain name makes a shorter one, 8 bytes; this is the `need` that
/// [`Socks5UdpError::Truncated`] reports before the address type is known.)
pub const MIN_UDP_HEADER_LEN: usize = 3 + 1 + 4 + 2;
/// Longest possible header: RSV, FRAG, ATYP, length byte, 255-byte name, port.
pub const MAX_UDP_HEADER_LEN: usize = 3 + 1 + 1 + MAX_DOMAIN_LEN + 2;

/// Where a datagram is going (from the client) or came from (to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpTarget<'a> {
    /// A literal IPv4 or IPv6 socket address.
    Addr(SocketAddr),
    /// A host name for the caller to resolve; 1..=255 bytes of UTF-8 without control
    /// characters.
    Domain {
        /// The name exactly as sent.
        host: &'a str,
        /// The port.
        port: u16,
    },
}

impl UdpTarget<'_> {
    /// The port, whatever the address type.
    pub fn port(&self) -> u16 {
        match self {
            UdpTarget::Addr(a) => a.port(),
            UdpTarget::Domain { port, .. } => *port,
        }
    }

    /// Bytes [`encode_udp_header`] writes for this target (valid or not).
    pub fn header_len(&self) -> usize {
        3 + match self {
            UdpTarget::Addr(SocketAddr::V4(_)) => 1 + 4 + 2,
            UdpTarget::Addr(SocketAddr::V6(_)) => 1 + 16 + 2,
            UdpTarget::Domain { host, .. } => 1 + 1 + host.len() + 2,
        }
    }
}

impl fmt::Display for UdpTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpTarget::Addr(a) => write!(f, "{a}"),
            UdpTarget::Domain { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Why a datagram header was rejected (or a target could not be encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Socks5UdpError {
    /// The datagram ends inside the header.
    Truncated {
        /// Bytes the header needs (as far as it could be read).
        need: usize,
        /// Bytes the datagram has.
        have: usize,
    },
    /// FRAG is nonzero: a fragment, which this relay does not reassemble.
    Fragmented(u8),
    /// ATYP is not 0x01, 0x03 or 0x04.
    UnknownAddressType(u8),
    /// A zero-length domain name.
    EmptyDomain,
    /// A domain name longer than 255 bytes (only possible when encoding).
    DomainTooLong(usize),
    /// A domain name that is not UTF-8.
    DomainNotUtf8,
    /// A domain name containing a control character.
    DomainControlChar,
}

impl fmt::Display for Socks5UdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socks5UdpError::Truncated { need, have } => write!(
                f,
                "SOCKS5 UDP datagram of {have} bytes is shorter than its {need}-byte header"
            ),
            Socks5UdpError::Fragmented(n) => {
                write!(
                    f,
                    "SOCKS5 UDP fragment {n} dropped: fragmentation is not supported"
                )
            }
            Socks5UdpError::UnknownAddressType(a) => {
                write!(f, "SOCKS5 UDP address type 0x{a:02x} is unknown")
            }
            Socks5UdpError::EmptyDomain => f.write_str("SOCKS5 UDP domain name is empty"),
            Socks5UdpError::DomainTooLong(n) => {
                write!(
                    f,
                    "SOCKS5 UDP domain name is {n} bytes, at most {MAX_DOMAIN_LEN} fit"
                )
            }
            Socks5UdpError::DomainNotUtf8 => f.write_str("SOCKS5 UDP domain name is not UTF-8"),
            Socks5UdpError::DomainControlChar => {
                f.write_str("SOCKS5 UDP domain name contains a control character")
            }
        }
    }
}

impl std::error::Error for Socks5UdpError {}

/// Splits a client datagram into its target and payload.
pub fn parse_udp(datagram: &[u8]) -> Result<(UdpTarget<'_>, &[u8]), Socks5UdpError> {
    let have = datagram.len();
    let truncated = |need| Socks5UdpError::Truncated { need, have };
    let Some((&[_rsv0, _rsv1, frag, atyp], rest)) = datagram.split_first_chunk::<4>() else {
        return Err(truncated(MIN_UDP_HEADER_LEN));
    };
    // FRAG before ATYP: a fragment is dropped whatever the rest looks like.
    if frag != 0 {
        return Err(Socks5UdpError::Fragmented(frag));
    }
    match atyp {
        ATYP_IPV4 => {
            let Some((&[a, b, c, d, p0, p1], payload)) = rest.split_first_chunk::<6>() else {
                return Err(truncated(4 + 6));
            };
            let addr = SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), u16::from_be_bytes([p0, p1]));
            Ok((UdpTarget::Addr(SocketAddr::V4(addr)), payload))
        }
        ATYP_IPV6 => {
            let Some((ip, rest)) = rest.split_first_chunk::<16>() else {
                return Err(truncated(4 + 18));
            };
            let Some((&port, payload)) = rest.split_first_chunk::<2>() else {
                return Err(truncated(4 + 18));
            };
            let addr = SocketAddrV6::new(Ipv6Addr::from(*ip), u16::from_be_bytes(port), 0, 0);
            Ok((UdpTarget::Addr(SocketAddr::V6(addr)), payload))
        }
        ATYP_DOMAIN => {
            let Some((&len, rest)) = rest.split_first() else {
                return Err(truncated(4 + 1));
            };
            let len = usize::from(len);
            if len == 0 {
                return Err(Socks5UdpError::EmptyDomain);
            }
            let need = 4 + 1 + len + 2;
            let Some((name, rest)) = rest.split_at_checked(len) else {
                return Err(truncated(need));
            };
            let Some((&port, payload)) = rest.split_first_chunk::<2>() else {
                return Err(truncated(need));
            };
            let host = validate_domain(name)?;
            let port = u16::from_be_bytes(port);
            Ok((UdpTarget::Domain { host, port }, payload))
        }
        other => Err(Socks5UdpError::UnknownAddressType(other)),
    }
}

/// Appends RSV, FRAG (0), ATYP, address and port for `target`; the caller appends the
/// payload. A bad domain is rejected before anything is written.
pub fn encode_udp_header(target: &UdpTarget<'_>, out: &mut Vec<u8>) -> Result<(), Socks5UdpError> {
    if let UdpTarget::Domain { host, .. } = target {
        validate_domain(host.as_bytes())?;
    }
    out.reserve(target.header_len());
    out.extend_from_slice(&[0, 0, 0]);
    match target {
        UdpTarget::Addr(SocketAddr::V4(a)) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
        }
        UdpTarget::Addr(SocketAddr::V6(a)) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
        }
        UdpTarget::Domain { host, .. } => {
            out.push(ATYP_DOMAIN);
            // validate_domain bounded the length to 255.
            out.push(host.len() as u8);
            out.extend_from_slice(host.as_bytes());
        }
    }
    out.extend_from_slice(&target.port().to_be_bytes());
    Ok(())
}

fn validate_domain(name: &[u8]) -> Result<&str, Socks5UdpError> {
    if name.is_empty() {
        return Err(Socks5UdpError::EmptyDomain);
    }
    if name.len() > MAX_DOMAIN_LEN {
        return Err(Socks5UdpError::DomainTooLong(name.len()));
    }
    let s = std::str::from_utf8(name).map_err(|_| Socks5UdpError::DomainNotUtf8)?;
    if s.chars().any(char::is_control) {
        return Err(Socks5UdpError::DomainControlChar);
    }
    Ok(s)
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

    fn round_trip(target: UdpTarget<'_>, payload: &[u8]) {
        let mut buf = Vec::new();
        encode_udp_header(&target, &mut buf).unwrap();
        assert_eq!(buf.len(), target.header_len());
        buf.extend_from_slice(payload);
        let (t, p) = parse_udp(&buf).unwrap();
        assert_eq!((t, p), (target, payload));
    }

    #[test]
    fn round_trips() {
        round_trip(UdpTarget::Addr("1.2.3.4:53".parse().unwrap()), b"query");
        round_trip(UdpTarget::Addr("[2001:db8::1]:443".parse().unwrap()), b"");
        round_trip(UdpTarget::Addr("[::ffff:1.2.3.4]:0".parse().unwrap()), b"x");
        round_trip(
            UdpTarget::Domain {
                host: "example.com",
                port: 65535,
            },
            b"\0\x01",
        );
        round_trip(
            UdpTarget::Domain {
                host: "bücher.example",
                port: 1,
            },
            b"",
        );
        let long = "a".repeat(255);
        round_trip(
            UdpTarget::Domain {
                host: &long,
                port: 7,
            },
            b"data",
        );
        assert_eq!(
            UdpTarget::Domain {
                host: &long,
                port: 7
            }
            .header_len(),
            MAX_UDP_HEADER_LEN
        );
    }

    #[test]
    fn known_bytes() {
        let dg = [0, 0, 0, 1, 10, 0, 0, 1, 0x1F, 0x90, b'h', b'i'];
        let (t, p) = parse_udp(&dg).unwrap();
        assert_eq!(t, UdpTarget::Addr("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(t.to_string(), "10.0.0.1:8080");
        assert_eq!(p, b"hi");
        // Reserved bytes are ignored.
        let dg = [0xFF, 0xFF, 0, 3, 1, b'a', 0, 80];
        let (t, p) = parse_udp(&dg).unwrap();
        assert_eq!(
            (t.to_string(), t.port(), p),
            ("a:80".to_string(), 80, &b""[..])
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&[u8], Socks5UdpError)] = &[
            (&[], Socks5UdpError::Truncated { need: 10, have: 0 }),
            (&[0, 0, 0], Socks5UdpError::Truncated { need: 10, have: 3 }),
            (
                &[0, 0, 1, 1, 1, 2, 3, 4, 0, 1],
                Socks5UdpError::Fragmented(1),
            ),
            (&[0, 0, 0x80, 9], Socks5UdpError::Fragmented(0x80)),
            (
                &[0, 0, 0, 2, 1, 2, 3, 4, 0, 1],
                Socks5UdpError::UnknownAddressType(2),
            ),
            (
                &[0, 0, 0, 1, 1, 2, 3, 4, 0],
                Socks5UdpError::Truncated { need: 10, have: 9 },
            ),
            (
                &[0, 0, 0, 4, 0, 0, 0, 0],
                Socks5UdpError::Truncated { need: 22, have: 8 },
            ),
            (
                &[0, 0, 0, 3],
                Socks5UdpError::Truncated { need: 5, have: 4 },
            ),
            (&[0, 0, 0, 3, 0, 0, 80], Socks5UdpError::EmptyDomain),
            (
                &[0, 0, 0, 3, 3, b'a', b'b'],
                Socks5UdpError::Truncated { need: 10, have: 7 },
            ),
            (
                &[0, 0, 0, 3, 2, b'a', b'b', 0],
                Socks5UdpError::Truncated { need: 9, have: 8 },
            ),
            (
                &[0, 0, 0, 3, 2, 0xFF, 0xFE, 0, 80],
                Socks5UdpError::DomainNotUtf8,
            ),
            (
                &[0, 0, 0, 3, 2, b'a', b'\n', 0, 80],
                Socks5UdpError::DomainControlChar,
            ),
            (
                &[0, 0, 0, 3, 3, b'a', 0xC2, 0x85, 0, 80],
                Socks5UdpError::DomainControlChar,
            ),
            (
                &[0, 0, 0, 3, 1, 0x7F, 0, 80],
                Socks5UdpError::DomainControlChar,
            ),
        ];
        for (dg, e) in cases {
            assert_eq!(parse_udp(dg), Err(*e), "{dg:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn encode_rejects_bad_domains_without_writing() {
        let long = "a".repeat(256);
        let mut out = b"keep".to_vec();
        for (host, e) in [
            ("", Socks5UdpError::EmptyDomain),
            (long.as_str(), Socks5UdpError::DomainTooLong(256)),
            ("a\u{0}b", Socks5UdpError::DomainControlChar),
        ] {
            let r = encode_udp_header(&UdpTarget::Domain { host, port: 1 }, &mut out);
            assert_eq!(r, Err(e));
        }
        assert_eq!(out, b"keep");
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            Socks5UdpError::Fragmented(2).to_string(),
            "SOCKS5 UDP fragment 2 dropped: fragmentation is not supported"
        );
        assert_eq!(
            Socks5UdpError::Truncated { need: 10, have: 3 }.to_string(),
            "SOCKS5 UDP datagram of 3 bytes is shorter than its 10-byte header"
        );
    }

    #[test]
    fn fuzz_never_panics() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let mut dg: Vec<u8> = (0..len)
                .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            // Bias towards well-formed prefixes so the address paths are exercised.
            if dg.len() > 4 {
                dg[2] = 0;
                dg[3] = [1, 3, 4, (x >> 3) as u8][(x >> 40) as usize % 4];
                if dg[3] == 3 {
                    dg[4] %= 40;
                }
            }
            if let Ok((t, p)) = parse_udp(&dg) {
                assert_eq!(t.header_len() + p.len(), dg.len());
                let mut again = Vec::new();
                encode_udp_header(&t, &mut again).unwrap();
                again.extend_from_slice(p);
                // Only RSV may differ: it is ignored on input and written as zero.
                assert_eq!(&again[2..], &dg[2..]);
            }
        }
    }
}
