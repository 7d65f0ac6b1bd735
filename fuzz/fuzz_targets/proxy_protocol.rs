//! HAProxy PROXY protocol v1/v2 header parser and encoders
//! (`reactor_proxy::proxy_protocol`).
//!
//! Input: one byte of options (`0x01`: read the rest as bytes; otherwise as a
//! structured header to encode), a v2 length cap, and either raw bytes or the
//! encoder's arguments. Properties:
//! - parsing is cut-independent: at every cut point a prefix of the input answers
//!   `Ok(None)` or exactly the error the whole input answers, and the prefix that
//!   was the header parses to the same header on its own (the payload after it is
//!   never looked at);
//! - `Ok(None)` only for buffers shorter than `max_header_len(limit)`, a header
//!   never claims more bytes than it was given nor more than the limit;
//! - the TLVs of a parsed header walk exactly its TLV bytes, within the length
//!   limits of the known types; v1 headers have none and are always PROXY;
//! - a parsed header re-encoded with our encoders (v1 for v1, v2 with the same
//!   transport and TLVs for v2) parses back to the same header;
//! - anything the encoders write parses back to what they were given (a mixed
//!   family pair as IPv6 with the IPv4 side mapped), with payload after it left
//!   alone, and a CRC32C requested is verified; TLVs the parser must refuse (too
//!   long UNIQUE_ID or AUTHORITY) are refused with `V2BadTlvLength`.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_proxy::proxy_protocol::{
    self as pp, Addresses, Command, Header, ProxyEncodeError, ProxyHeaderError, TLV_AUTHORITY,
    TLV_CRC32C, TLV_UNIQUE_ID, Tlv, Transport, V2_MAX_LEN, V2Extras, Version,
};

#[derive(Arbitrary, Debug)]
struct Encode<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    v2: bool,
    local: bool,
    dgram: bool,
    crc32c: bool,
    tlvs: Vec<(u8, &'a [u8])>,
    payload: &'a [u8],
}

fn limit_of(b: u16) -> usize {
    // Mostly the default; sometimes tight (below a v2 header's fixed part), sometimes
    // the wire maximum.
    match b % 4 {
        0 => pp::DEFAULT_MAX_V2_LEN,
        1 => V2_MAX_LEN,
        _ => usize::from(b),
    }
}

type Parsed<'a> = Result<Option<(Header<'a>, usize)>, ProxyHeaderError>;

fn check_parse(buf: &[u8], limit: usize, cuts: &[u8]) {
    let whole: Parsed<'_> = pp::parse_with_limit(buf, limit);
    if limit == pp::DEFAULT_MAX_V2_LEN {
        assert_eq!(pp::parse(buf), whole);
    }
    // Prefixes at the fuzzer's cut points and just short of the end.
    let mut at = 0usize;
    let mut points: Vec<usize> = cuts
        .iter()
        .take(24)
        .map(|&c| {
            at += usize::from(c) + 1;
            at
        })
        .filter(|&p| p < buf.len())
        .collect();
    points.push(buf.len().saturating_sub(1));
    let end = match &whole {
        Ok(Some((_, n))) => *n,
        _ => buf.len(),
    };
    points.push(end.saturating_sub(1));
    for &p in &points {
        if p >= end {
            continue;
        }
        match pp::parse_with_limit(&buf[..p], limit) {
            Ok(None) => {}
            Ok(Some((h, n))) => {
                panic!("prefix of {p} gave a header {h:?} of {n}; whole: {whole:?}")
            }
            Err(e) => assert_eq!(Err(e), whole, "prefix of {p} bytes"),
        }
    }
    match whole {
        Ok(None) => assert!(buf.len() < pp::max_header_len(limit)),
        Err(_) => {}
        Ok(Some((h, n))) => {
            assert!(n <= buf.len() && n > 0);
            assert_eq!(pp::parse_with_limit(&buf[..n], limit), Ok(Some((h, n))));
            check_header(&h, n, limit);
            reencode(&h);
        }
    }
}

fn check_header(h: &Header<'_>, n: usize, limit: usize) {
    match h.version {
        Version::V1 => {
            assert!(n <= pp::V1_MAX_LEN);
            assert_eq!(h.command, Command::Proxy);
            assert!(h.tlvs.is_empty());
        }
        Version::V2 => assert!(n <= limit.clamp(pp::V2_FIXED_LEN, V2_MAX_LEN)),
    }
    let walked: usize = h.tlvs.iter().map(|t| 3 + t.value.len()).sum();
    assert_eq!(walked, h.tlvs.as_bytes().len());
    assert!(
        h.unique_id()
            .is_none_or(|v| v.len() <= pp::MAX_UNIQUE_ID_LEN)
    );
    assert!(
        h.authority()
            .is_none_or(|v| v.len() <= pp::MAX_AUTHORITY_LEN)
    );
    if let Addresses::Inet { src, dst } = h.addresses {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one family on the wire");
        assert_eq!(h.socket_addrs(), Some((src, dst)));
    } else {
        assert_eq!(h.socket_addrs(), None);
    }
}

/// A parsed header through our encoders and back.
fn reencode(h: &Header<'_>) {
    let mut out = Vec::new();
    match (h.version, h.addresses) {
        (Version::V1, Addresses::Inet { src, dst }) => {
            pp::encode_v1(src, dst, &mut out);
            let (back, n) = pp::parse(&out).expect("our v1 parses").expect("complete");
            assert_eq!(n, out.len());
            assert_eq!(back.addresses, h.addresses);
            assert_eq!(back.transport, Transport::Stream);
        }
        (Version::V1, _) => {
            pp::encode_v1_unknown(&mut out);
            let (back, _) = pp::parse(&out).unwrap().unwrap();
            assert_eq!(back.addresses, Addresses::Unknown);
        }
        (Version::V2, Addresses::Inet { src, dst }) if h.transport != Transport::Unspec => {
            let tlvs: Vec<Tlv<'_>> = h.tlvs.iter().filter(|t| t.kind != TLV_CRC32C).collect();
            let had_crc = h.tlvs.get(TLV_CRC32C).is_some();
            let extras = V2Extras {
                dgram: h.transport == Transport::Dgram,
                tlvs: &tlvs,
                crc32c: had_crc,
            };
            pp::encode_v2_with(Some((src, dst)), &extras, &mut out).expect("a parsed header fits");
            let (back, n) = pp::parse_with_limit(&out, V2_MAX_LEN)
                .expect("our v2 parses")
                .expect("complete");
            assert_eq!(n, out.len());
            assert_eq!(back.command, Command::Proxy);
            assert_eq!(back.transport, h.transport);
            assert_eq!(back.addresses, h.addresses);
            let again: Vec<Tlv<'_>> = back.tlvs.iter().filter(|t| t.kind != TLV_CRC32C).collect();
            assert_eq!(again, tlvs);
            assert_eq!(back.tlvs.get(TLV_CRC32C).is_some(), had_crc);
        }
        _ => {}
    }
}

/// What a pair looks like on the wire: one family, IPv4 mapped when mixed.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    fn v6(a: SocketAddr) -> SocketAddr {
        match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(v6) => SocketAddr::new(IpAddr::V6(v6), a.port()),
        }
    }
    if src.is_ipv4() && dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// Scope ids and flow info are not representable: compare what is.
fn plain(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port())
}

fn encode(e: &Encode<'_>) {
    let mut out = Vec::new();
    let want = same_family(plain(e.src), plain(e.dst));
    if !e.v2 {
        pp::encode_v1(e.src, e.dst, &mut out);
        let n = out.len();
        out.extend_from_slice(e.payload);
        let (h, m) = pp::parse(&out).expect("our v1 parses").expect("complete");
        assert_eq!(m, n, "payload is not part of the header");
        assert_eq!(h.version, Version::V1);
        assert_eq!(
            h.addresses,
            Addresses::Inet {
                src: want.0,
                dst: want.1
            }
        );
        return;
    }
    let tlvs: Vec<Tlv<'_>> = e
        .tlvs
        .iter()
        .take(8)
        .map(|&(kind, value)| Tlv { kind, value })
        .collect();
    let extras = V2Extras {
        dgram: e.dgram,
        tlvs: &tlvs,
        crc32c: e.crc32c,
    };
    let addrs = (!e.local).then_some((e.src, e.dst));
    match pp::encode_v2_with(addrs, &extras, &mut out) {
        Err(ProxyEncodeError::ManualChecksum) => {
            assert!(tlvs.iter().any(|t| t.kind == TLV_CRC32C));
            assert!(out.is_empty(), "out untouched on error");
            return;
        }
        Err(err) => panic!("{err}: inputs are short"),
        Ok(()) => {}
    }
    assert!(tlvs.iter().all(|t| t.kind != TLV_CRC32C));
    let n = out.len();
    out.extend_from_slice(e.payload);
    let refused = tlvs.iter().find(|t| {
        (t.kind == TLV_UNIQUE_ID && t.value.len() > pp::MAX_UNIQUE_ID_LEN)
            || (t.kind == TLV_AUTHORITY && t.value.len() > pp::MAX_AUTHORITY_LEN)
    });
    let parsed = pp::parse_with_limit(&out, V2_MAX_LEN);
    if e.local {
        // LOCAL: nothing after the fixed part is looked at, TLVs included.
        let (h, m) = parsed.expect("our LOCAL parses").expect("complete");
        assert_eq!(m, n);
        assert_eq!(h.command, Command::Local);
        assert_eq!(h.addresses, Addresses::Unknown);
        return;
    }
    if let Some(t) = refused {
        assert_eq!(
            parsed,
            Err(ProxyHeaderError::V2BadTlvLength {
                kind: t.kind,
                len: t.value.len()
            })
        );
        return;
    }
    let (h, m) = parsed.expect("our v2 parses").expect("complete");
    assert_eq!(m, n);
    assert_eq!(h.command, Command::Proxy);
    assert_eq!(
        h.transport,
        if e.dgram {
            Transport::Dgram
        } else {
            Transport::Stream
        }
    );
    assert_eq!(
        h.addresses,
        Addresses::Inet {
            src: want.0,
            dst: want.1
        }
    );
    let back: Vec<Tlv<'_>> = h.tlvs.iter().filter(|t| t.kind != TLV_CRC32C).collect();
    assert_eq!(back, tlvs);
    assert_eq!(h.tlvs.get(TLV_CRC32C).is_some(), e.crc32c);
    // A flipped byte in a checksummed header is caught (or breaks the header some
    // other way): never accepted as the same header.
    if e.crc32c && n > 16 {
        let mut bad = out[..n].to_vec();
        let i = 16 + usize::from(e.payload.first().copied().unwrap_or(0)) % (n - 16);
        bad[i] ^= 0x01;
        assert_ne!(
            pp::parse_with_limit(&bad, V2_MAX_LEN)
                .ok()
                .flatten()
                .map(|x| x.0),
            Some(h)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let Some((limit, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let limit = limit_of(u16::from_be_bytes(*limit));
    if opts & 1 == 1 {
        // The first few bytes after the options pick the cut points.
        let k = usize::from(opts >> 4).min(rest.len());
        let (cuts, buf) = rest.split_at(k);
        check_parse(buf, limit, cuts);
    } else if let Ok(e) = Encode::arbitrary_take_rest(Unstructured::new(rest)) {
        encode(&e);
    }
});
