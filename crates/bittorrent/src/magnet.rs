//! Magnet links (the URI format of BEP 9): parse untrusted `magnet:?` URIs into
//! an info-hash plus the optional display name, trackers and peer addresses,
//! and write them back.
//!
//! What is understood:
//!
//! - `xt=urn:btih:<40 hex | 32 base32>`: the v1 info-hash, required. Hex and the
//!   RFC 4648 base32 alphabet are both case-insensitive. The same hash may be
//!   repeated (some generators do); two different ones are an error.
//! - `xt=urn:btmh:1220<64 hex>`: a v2 (BEP 52) hash. Kept for information only:
//!   this crate speaks v1, so a link with a btmh and no btih is refused as
//!   unsupported.
//! - `dn`: display name (`+` means space there, as in form encoding; not valid
//!   UTF-8 is replaced, since it is only shown).
//! - `tr`: tracker URLs, in order, duplicates removed. `+` is kept literally: a
//!   URL's `+` is data, and encoders that mean a space write `%20`.
//! - `x.pe`: peer addresses, `ipv4:port`, `[ipv6]:port` or `hostname:port`.
//! - A numeric suffix on a name (`tr.1`, `xt.2`) is ignored, as libtorrent does.
//!
//! Every other parameter (`ws`, `so` of BEP 53, `kt`, `xl`, ...) and other URN
//! namespaces in `xt` are skipped without being decoded. The parameters this
//! module does decode are strict: a bad percent escape, a malformed address or
//! a hash of the wrong length is an error, not silently dropped, so that a
//! broken link is reported rather than half-used.
//!
//! Bounds: the URI is at most [`MAX_URI_LEN`] bytes (refused before any work),
//! with at most [`MAX_TRACKERS`] trackers and [`MAX_PEERS`] peers; the output
//! is therefore bounded by the input.
//!
//! This module must not do I/O (no DNS: host names stay names), must not panic
//! on any input, and does not judge tracker URLs (the tracker codec refuses
//! schemes it cannot speak at announce time).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest magnet URI accepted, in bytes. Real links with a few dozen trackers
/// are 1-3 KiB; 8 KiB leaves room without letting a pasted blob cost anything.
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Most `tr` parameters accepted (after removing duplicates).
pub const MAX_TRACKERS: usize = 100;
/// Most `x.pe` parameters accepted.
pub const MAX_PEERS: usize = 100;
/// Longest host name in an `x.pe` address (the DNS limit).
pub const MAX_HOST_LEN: usize = 253;

/// A peer address from `x.pe`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// An IP literal and port.
    Ip(SocketAddr),
    /// A host name (not resolved here) and port.
    Host {
        /// The name, lower-cased.
        host: String,
        /// The TCP port (never 0).
        port: u16,
    },
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip(a) => write!(f, "{a}"),
            PeerAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A parsed magnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info-hash (SHA-1 of the info dictionary).
    pub info_hash: [u8; 20],
    /// A v2 info-hash (`urn:btmh`), if the link also carried one. Not used by
    /// this crate; kept so a hybrid link can be written back unchanged.
    pub info_hash_v2: Option<[u8; 32]>,
    /// `dn`, the name to show while the metadata is fetched (first one wins).
    pub display_name: Option<String>,
    /// `tr`, in link order, without duplicates.
    pub trackers: Vec<String>,
    /// `x.pe`, in link order, without duplicates.
    pub peers: Vec<PeerAddr>,
}

/// Why a magnet URI was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MagnetError {
    /// Longer than [`MAX_URI_LEN`].
    TooLong {
        /// The URI's length.
        len: usize,
    },
    /// Does not start with `magnet:?`.
    NotMagnet,
    /// No `xt=urn:btih:` parameter.
    MissingInfoHash,
    /// Only a v2 (`urn:btmh`) hash: v2-only torrents are not supported.
    V2Only,
    /// An `xt` hash that is not 40 hex / 32 base32 characters (btih) or
    /// `1220` + 64 hex characters (btmh).
    InvalidInfoHash {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two `urn:btih` (or two `urn:btmh`) parameters with different hashes.
    ConflictingInfoHash,
    /// A `%` not followed by two hex digits in a parameter we decode.
    BadEscape {
        /// The parameter's name.
        param: &'static str,
    },
    /// A tracker URL or peer host that is not UTF-8 once decoded.
    InvalidUtf8 {
        /// The parameter's name.
        param: &'static str,
    },
    /// More than [`MAX_TRACKERS`] distinct `tr` parameters.
    TooManyTrackers,
    /// More than [`MAX_PEERS`] distinct `x.pe` parameters.
    TooManyPeers,
    /// An `x.pe` value that is not `host:port`, `ip:port` or `[ipv6]:port`
    /// with a port in 1..=65535.
    InvalidPeer {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for MagnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MagnetError::TooLong { len } => write!(
                f,
                "magnet link of {len} bytes is longer than the {MAX_URI_LEN}-byte limit"
            ),
            MagnetError::NotMagnet => write!(f, "not a magnet link (must start with 'magnet:?')"),
            MagnetError::MissingInfoHash => {
                write!(f, "magnet link has no info-hash (xt=urn:btih:...)")
            }
            MagnetError::V2Only => write!(
                f,
                "magnet link has only a v2 info-hash (urn:btmh); v2-only torrents are not supported"
            ),
            MagnetError::InvalidInfoHash { reason } => {
                write!(f, "invalid info-hash in magnet link: {reason}")
            }
            MagnetError::ConflictingInfoHash => {
                write!(f, "magnet link names two different info-hashes")
            }
            MagnetError::BadEscape { param } => {
                write!(f, "bad percent escape in magnet parameter '{param}'")
            }
            MagnetError::InvalidUtf8 { param } => {
                write!(f, "magnet parameter '{param}' is not valid UTF-8")
            }
            MagnetError::TooManyTrackers => {
                write!(f, "magnet link has more than {MAX_TRACKERS} trackers")
            }
            MagnetError::TooManyPeers => {
                write!(f, "magnet link has more than {MAX_PEERS} peer addresses")
            }
            MagnetError::InvalidPeer { reason } => {
                write!(f, "invalid peer address (x.pe) in magnet link: {reason}")
            }
        }
    }
}

impl std::error::Error for MagnetError {}

/// Parses a magnet URI. See the module docs for what is accepted.
pub fn parse_magnet(uri: &str) -> Result<Magnet, MagnetError> {
    if uri.len() > MAX_URI_LEN {
        return Err(MagnetError::TooLong { len: uri.len() });
    }
    let query = strip_prefix_ignore_case(uri, "magnet:?").ok_or(MagnetError::NotMagnet)?;
    // A fragment is not part of the query; real links have none, but a
    // browser-copied one might.
    let query = query.split_once('#').map_or(query, |(q, _)| q);

    let mut info_hash: Option<[u8; 20]> = None;
    let mut info_hash_v2: Option<[u8; 32]> = None;
    let mut display_name = None;
    let mut trackers: Vec<String> = Vec::new();
    let mut peers: Vec<PeerAddr> = Vec::new();

    for pair in query.split('&') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        match strip_numeric_suffix(name) {
            "xt" => {
                let urn = percent_decode(value, "xt", false)?;
                // Only ASCII can be a hash we understand; anything else is some
                // other network's URN and is skipped below.
                let urn = String::from_utf8_lossy(&urn);
                if let Some(h) = strip_prefix_ignore_case(&urn, "urn:btih:") {
                    let h = parse_btih(h)?;
                    if info_hash.is_some_and(|old| old != h) {
                        return Err(MagnetError::ConflictingInfoHash);
                    }
                    info_hash = Some(h);
                } else if let Some(h) = strip_prefix_ignore_case(&urn, "urn:btmh:") {
                    let h = parse_btmh(h)?;
                    if info_hash_v2.is_some_and(|old| old != h) {
                        return Err(MagnetError::ConflictingInfoHash);
                    }
                    info_hash_v2 = Some(h);
                }
            }
            "dn" => {
                let raw = percent_decode(value, "dn", true)?;
                if display_name.is_none() {
                    display_name = Some(String::from_utf8_lossy(&raw).into_owned());
                }
            }
            "tr" => {
                let raw = percent_decode(value, "tr", false)?;
                let url =
                    String::from_utf8(raw).map_err(|_| MagnetError::InvalidUtf8 { param: "tr" })?;
                if url.is_empty() || trackers.contains(&url) {
                    continue;
                }
                if trackers.len() >= MAX_TRACKERS {
                    return Err(MagnetError::TooManyTrackers);
                }
                trackers.push(url);
            }
            "x.pe" => {
                let raw = percent_decode(value, "x.pe", false)?;
                let s = std::str::from_utf8(&raw)
                    .map_err(|_| MagnetError::InvalidUtf8 { param: "x.pe" })?;
                let peer = parse_peer(s)?;
                if peers.contains(&peer) {
                    continue;
                }
                if peers.len() >= MAX_PEERS {
                    return Err(MagnetError::TooManyPeers);
                }
                peers.push(peer);
            }
            _ => {}
        }
    }

    let info_hash = match (info_hash, info_hash_v2) {
        (Some(h), _) => h,
        (None, Some(_)) => return Err(MagnetError::V2Only),
        (None, None) => return Err(MagnetError::MissingInfoHash),
    };
    Ok(Magnet {
        info_hash,
        info_hash_v2,
        display_name,
        trackers,
        peers,
    })
}

impl Magnet {
    /// The v1 info-hash as 40 lower-case hex digits.
    pub fn info_hash_hex(&self) -> String {
        hex(&self.info_hash)
    }
}

/// Writes the link back as a URI: hex btih (and btmh if present), then `dn`,
/// every `tr` and every `x.pe`, percent-encoding everything outside the
/// unreserved set. `parse_magnet(&m.to_string())` gives `m` back.
impl fmt::Display for Magnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "magnet:?xt=urn:btih:{}", hex(&self.info_hash))?;
        if let Some(v2) = &self.info_hash_v2 {
            write!(f, "&xt=urn:btmh:1220{}", hex(v2))?;
        }
        if let Some(dn) = &self.display_name {
            write!(f, "&dn={}", PercentEncoded(dn))?;
        }
        for tr in &self.trackers {
            write!(f, "&tr={}", PercentEncoded(tr))?;
        }
        for pe in &self.peers {
            write!(f, "&x.pe={}", PercentEncoded(&pe.to_string()))?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

struct PercentEncoded<'a>(&'a str);

impl fmt::Display for PercentEncoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `tr.1` -> `tr`; `x.pe` stays (its suffix is not a number).
fn strip_numeric_suffix(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(
    value: &str,
    param: &'static str,
    plus_is_space: bool,
) -> Result<Vec<u8>, MagnetError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(MagnetError::BadEscape { param });
                };
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(out)
}

fn base32_val(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a'),
        b'2'..=b'7' => Some(b - b'2' + 26),
        _ => None,
    }
}

/// RFC 4648 base32 without padding: 32 characters are exactly 160 bits.
fn parse_base32_20(s: &str) -> Option<[u8; 20]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut n = 0;
    for &c in b {
        acc = acc << 5 | u64::from(base32_val(c)?);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    Some(out)
}

fn bad_hash(reason: &'static str) -> MagnetError {
    MagnetError::InvalidInfoHash { reason }
}

fn parse_btih(h: &str) -> Result<[u8; 20], MagnetError> {
    match h.len() {
        40 => parse_hex::<20>(h).ok_or(bad_hash("40-character btih is not hex")),
        32 => parse_base32_20(h).ok_or(bad_hash("32-character btih is not base32")),
        _ => Err(bad_hash("btih must be 40 hex or 32 base32 characters")),
    }
}

fn parse_btmh(h: &str) -> Result<[u8; 32], MagnetError> {
    // A multihash: 0x12 = sha2-256, 0x20 = 32 bytes (BEP 52 allows nothing else).
    let digest =
        strip_prefix_ignore_case(h, "1220").ok_or(bad_hash("btmh is not a sha2-256 multihash"))?;
    parse_hex::<32>(digest).ok_or(bad_hash("btmh digest is not 64 hex characters"))
}

fn parse_peer(s: &str) -> Result<PeerAddr, MagnetError> {
    let bad = |reason| MagnetError::InvalidPeer { reason };
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or(bad("IPv6 address needs the form [addr]:port"))?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address"))?;
        return Ok(PeerAddr::Ip(SocketAddr::new(
            IpAddr::V6(ip),
            parse_port(port)?,
        )));
    }
    let (host, port) = s.rsplit_once(':').ok_or(bad("missing ':port'"))?;
    if host.contains(':') {
        return Err(bad("IPv6 address must be in brackets"));
    }
    let port = parse_port(port)?;
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(PeerAddr::Ip(SocketAddr::new(IpAddr::V4(ip), port)));
    }
    if !is_host_name(host) {
        return Err(bad("not an IP address or host name"));
    }
    // Host names compare case-insensitively; one spelling lets duplicates be found.
    Ok(PeerAddr::Host {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn parse_port(p: &str) -> Result<u16, MagnetError> {
    let bad = MagnetError::InvalidPeer {
        reason: "port must be a number in 1..=65535",
    };
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad),
        Ok(n) => Ok(n),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner
/// hyphens, each 1..=63 bytes, at most [`MAX_HOST_LEN`] in all. The last label
/// must not be all digits, so `1.2.3.999` is not mistaken for a name.
fn is_host_name(h: &str) -> bool {
    if h.is_empty() || h.len() > MAX_HOST_LEN {
        return false;
    }
    let labels_ok = h.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let last_numeric = h
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    const IH: [u8; 20] = [
        0xc1, 0x2f, 0xe1, 0xc0, 0x6b, 0xba, 0x25, 0x4a, 0x9d, 0xc9, 0xf5, 0x19, 0xb3, 0x35, 0xaa,
        0x7c, 0x13, 0x67, 0xa8, 0x8a,
    ];

    fn base32(bytes: &[u8; 20]) -> String {
        const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut s = String::new();
        let mut acc: u32 = 0;
        let mut bits = 0;
        for &b in bytes {
            acc = acc << 8 | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                s.push(char::from(A[((acc >> bits) & 31) as usize]));
            }
        }
        s
    }

    #[test]
    fn hex_and_base32_hashes() {
        let m = parse_magnet(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
        assert_eq!(m.info_hash, IH);
        assert_eq!(m.info_hash_hex(), HEX);
        let upper = parse_magnet(&format!("MAGNET:?xt=URN:BTIH:{}", HEX.to_uppercase())).unwrap();
        assert_eq!(upper.info_hash, IH);
        let b32 = base32(&IH);
        assert_eq!(b32.len(), 32);
        let m = parse_magnet(&format!("magnet:?xt=urn:btih:{b32}")).unwrap();
        assert_eq!(m.info_hash, IH);
        let m = parse_magnet(&format!("magnet:?xt=urn:btih:{}", b32.to_lowercase())).unwrap();
        assert_eq!(m.info_hash, IH);
        // A known vector: 20 zero bytes and 20 0xff bytes.
        assert_eq!(parse_base32_20(&"A".repeat(32)), Some([0; 20]));
        assert_eq!(parse_base32_20(&"7".repeat(32)), Some([0xff; 20]));
        // Percent-encoded xt, as libtorrent accepts.
        let m = parse_magnet(&format!("magnet:?xt=urn%3Abtih%3A{HEX}")).unwrap();
        assert_eq!(m.info_hash, IH);
    }

    #[test]
    fn full_link() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Some+File%20%C3%A9.iso&tr=http%3A%2F%2Ft.example%3A6969%2Fannounce\
             &tr.1=udp://u.example:80&tr=http%3A%2F%2Ft.example%3A6969%2Fannounce\
             &x.pe=10.0.0.1:6881&x.pe=[2001:db8::1]:51413&x.pe=Peer.Example.org:7000\
             &ws=http%zz&so=0,2-4&kt=a+b&flag#frag"
        );
        let m = parse_magnet(&uri).unwrap();
        assert_eq!(m.display_name.as_deref(), Some("Some File é.iso"));
        assert_eq!(
            m.trackers,
            vec![
                "http://t.example:6969/announce".to_string(),
                "udp://u.example:80".to_string()
            ]
        );
        assert_eq!(
            m.peers,
            vec![
                PeerAddr::Ip("10.0.0.1:6881".parse().unwrap()),
                PeerAddr::Ip("[2001:db8::1]:51413".parse().unwrap()),
                PeerAddr::Host {
                    host: "peer.example.org".into(),
                    port: 7000
                },
            ]
        );
        assert_eq!(m.info_hash_v2, None);
    }

    #[test]
    fn round_trip_through_display() {
        let m = Magnet {
            info_hash: IH,
            info_hash_v2: Some([7; 32]),
            display_name: Some("a b&c=d/é".into()),
            trackers: vec!["http://x.example/a?b=c&d=+".into()],
            peers: vec![
                PeerAddr::Ip("[::1]:1".parse().unwrap()),
                PeerAddr::Host {
                    host: "h.example".into(),
                    port: 65535,
                },
            ],
        };
        let uri = m.to_string();
        assert_eq!(parse_magnet(&uri).unwrap(), m);
    }

    #[test]
    fn hashes_refused() {
        let e = |s: &str| parse_magnet(s).unwrap_err();
        assert_eq!(e("magnet:?dn=x"), MagnetError::MissingInfoHash);
        assert_eq!(e("magnet:?xt=urn:ed2k:abcd"), MagnetError::MissingInfoHash);
        assert_eq!(e("http://x/?xt=urn:btih:00"), MagnetError::NotMagnet);
        assert_eq!(e("magnet:"), MagnetError::NotMagnet);
        assert!(matches!(
            e("magnet:?xt=urn:btih:abc"),
            MagnetError::InvalidInfoHash { .. }
        ));
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{}", "g".repeat(40))),
            MagnetError::InvalidInfoHash { .. }
        ));
        // '1', '8', '0' are outside the base32 alphabet.
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{}", "1".repeat(32))),
            MagnetError::InvalidInfoHash { .. }
        ));
        let v2 = format!("urn:btmh:1220{}", "ab".repeat(32));
        assert_eq!(e(&format!("magnet:?xt={v2}")), MagnetError::V2Only);
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btmh:1114{}", "ab".repeat(32))),
            MagnetError::InvalidInfoHash { .. }
        ));
        // Hybrid: v1 used, v2 kept.
        let m = parse_magnet(&format!("magnet:?xt={v2}&xt=urn:btih:{HEX}")).unwrap();
        assert_eq!(m.info_hash, IH);
        assert_eq!(m.info_hash_v2, Some([0xab; 32]));
        // The same hash twice (hex and base32) is fine; two different ones are not.
        let b32 = base32(&IH);
        assert!(parse_magnet(&format!("magnet:?xt=urn:btih:{HEX}&xt.1=urn:btih:{b32}")).is_ok());
        assert_eq!(
            e(&format!(
                "magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{}",
                "0".repeat(40)
            )),
            MagnetError::ConflictingInfoHash
        );
    }

    #[test]
    fn escapes_and_utf8() {
        let base = format!("magnet:?xt=urn:btih:{HEX}");
        for bad in [
            "&dn=%",
            "&dn=%4",
            "&dn=%g0",
            "&tr=%ZZ",
            "&x.pe=%",
            "&xt=urn%3",
        ] {
            assert!(
                matches!(
                    parse_magnet(&format!("{base}{bad}")),
                    Err(MagnetError::BadEscape { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_magnet(&format!("{base}&tr=%FF%FE")).unwrap_err(),
            MagnetError::InvalidUtf8 { param: "tr" }
        );
        // dn is only shown: invalid UTF-8 is replaced, not refused.
        let m = parse_magnet(&format!("{base}&dn=a%FFb")).unwrap();
        assert_eq!(m.display_name.as_deref(), Some("a\u{fffd}b"));
        // Unknown parameters are not decoded, so their escapes do not matter.
        assert!(parse_magnet(&format!("{base}&ws=%&foo=%zz")).is_ok());
        // '+' is literal in tr.
        let m = parse_magnet(&format!("{base}&tr=http://a/b+c")).unwrap();
        assert_eq!(m.trackers, vec!["http://a/b+c".to_string()]);
    }

    #[test]
    fn peers_refused() {
        let base = format!("magnet:?xt=urn:btih:{HEX}");
        for bad in [
            "1.2.3.4",
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "1.2.3.4:-1",
            "1.2.3.4:+80",
            "2001:db8::1:80",
            "[2001:db8::1]",
            "[zz::]:80",
            "[1.2.3.4]:80",
            "bad_host:80",
            "-a.example:80",
            "a..b:80",
            ":80",
            "1.2.3.999:80",
        ] {
            assert!(
                matches!(
                    parse_magnet(&format!("{base}&x.pe={bad}")),
                    Err(MagnetError::InvalidPeer { .. })
                ),
                "{bad}"
            );
        }
        let long = format!("{}.example:80", "a".repeat(250));
        assert!(parse_magnet(&format!("{base}&x.pe={long}")).is_err());
        let m = parse_magnet(&format!("{base}&x.pe=%5B%3A%3A1%5D%3A9")).unwrap();
        assert_eq!(m.peers, vec![PeerAddr::Ip("[::1]:9".parse().unwrap())]);
    }

    #[test]
    fn bounds() {
        let base = format!("magnet:?xt=urn:btih:{HEX}");
        let long = format!("{base}&dn={}", "a".repeat(MAX_URI_LEN));
        assert!(matches!(
            parse_magnet(&long),
            Err(MagnetError::TooLong { .. })
        ));
        let mut ok = base.clone();
        for i in 0..MAX_TRACKERS {
            ok.push_str(&format!("&tr=udp://t{i}:1"));
        }
        assert_eq!(parse_magnet(&ok).unwrap().trackers.len(), MAX_TRACKERS);
        // Duplicates do not count.
        let dup = format!("{ok}&tr=udp://t0:1");
        assert!(parse_magnet(&dup).is_ok());
        let over = format!("{ok}&tr=udp://t-extra:1");
        assert_eq!(
            parse_magnet(&over).unwrap_err(),
            MagnetError::TooManyTrackers
        );
        let mut peers = base.clone();
        for i in 0..=MAX_PEERS {
            peers.push_str(&format!("&x.pe=10.0.0.1:{}", i + 1));
        }
        assert_eq!(parse_magnet(&peers).unwrap_err(), MagnetError::TooManyPeers);
    }

    #[test]
    fn error_messages() {
        let errs = [
            MagnetError::TooLong { len: 9000 },
            MagnetError::NotMagnet,
            MagnetError::MissingInfoHash,
            MagnetError::V2Only,
            MagnetError::InvalidInfoHash { reason: "x" },
            MagnetError::ConflictingInfoHash,
            MagnetError::BadEscape { param: "tr" },
            MagnetError::InvalidUtf8 { param: "tr" },
            MagnetError::TooManyTrackers,
            MagnetError::TooManyPeers,
            MagnetError::InvalidPeer { reason: "x" },
        ];
        for e in errs {
            assert!(e.to_string().contains("magnet") || e.to_string().contains("v2"));
        }
    }

    #[test]
    fn never_panics() {
        let mut st = 0x2545_F491_4F6C_DD1Du64;
        let alphabet = b"magnet:?xt=urn:btih&%2A+[]:.0123456789abcdefABCDEF7XYZdntrpe\xc3\xa9";
        let seed = format!("magnet:?xt=urn:btih:{HEX}&dn=a&tr=u&x.pe=[::1]:1&x.pe=h.x:2");
        for i in 0..20_000 {
            let mut b: Vec<u8> = if i % 2 == 0 {
                seed.as_bytes().to_vec()
            } else {
                b"magnet:?".to_vec()
            };
            let n = xorshift(&mut st) % 24;
            for _ in 0..n {
                let c = alphabet[(xorshift(&mut st) as usize) % alphabet.len()];
                if b.is_empty() || xorshift(&mut st).is_multiple_of(2) {
                    b.push(c);
                } else {
                    let at = (xorshift(&mut st) as usize) % b.len();
                    b[at] = c;
                }
            }
            let s = String::from_utf8_lossy(&b);
            if let Ok(m) = parse_magnet(&s) {
                // Whatever parses must survive its own round trip.
                assert_eq!(parse_magnet(&m.to_string()), Ok(m));
            }
        }
    }

    fn xorshift(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }
}
