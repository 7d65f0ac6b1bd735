//! SOCKS5 UDP request header (`reactor_proxy::socks5_udp`): parse and encode.
//!
//! Input: one byte of options, then a datagram (bytes) or a target to encode
//! (structured). Properties:
//! - a parsed datagram splits into a header of `target.header_len()` bytes and the
//!   payload that follows it, unchanged; encoding the target gives back the header
//!   bytes exactly, except RSV (ignored, written as zero);
//! - FRAG != 0 is refused whatever follows, a domain is accepted by the UDP parser
//!   exactly when the TCP request parser (`socks5::parse_request`, same address
//!   format) accepts it, with the same target;
//! - a target the encoder accepts parses back to itself with the payload after it
//!   intact; the encoder refuses exactly empty, over-long, non-UTF-8 (impossible
//!   from `&str`) and control-character domains, and writes nothing when it does.
#![no_main]

use std::net::SocketAddr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_proxy::socks5::{self, Target};
use reactor_proxy::socks5_udp::{self as udp, Socks5UdpError, UdpTarget};

#[derive(Arbitrary, Debug)]
struct Encode<'a> {
    addr: Option<SocketAddr>,
    host: &'a str,
    port: u16,
    payload: &'a [u8],
}

fn control(c: char) -> bool {
    c.is_control()
}

fn tcp_target(t: &UdpTarget<'_>) -> Target {
    match *t {
        UdpTarget::Addr(a) => Target::Addr(a),
        UdpTarget::Domain { host, port } => Target::Domain {
            host: host.to_string(),
            port,
        },
    }
}

fn parse(d: &[u8]) {
    let parsed = udp::parse_udp(d);
    // The same address bytes as a TCP CONNECT request.
    let tcp = d.get(3..).map(|rest| {
        let mut req = vec![5, 1, 0];
        req.extend_from_slice(rest);
        req
    });
    match parsed {
        Ok((target, payload)) => {
            assert_eq!(d[2], 0, "a fragment is refused");
            let n = target.header_len();
            // The shortest header is a one-byte domain name (8 bytes), shorter than
            // MIN_UDP_HEADER_LEN, the shortest with an IP address.
            assert!((8..=udp::MAX_UDP_HEADER_LEN).contains(&n));
            if let UdpTarget::Addr(_) = target {
                assert!(n >= udp::MIN_UDP_HEADER_LEN);
            }
            assert_eq!(n + payload.len(), d.len());
            assert_eq!(payload, &d[n..]);
            let mut out = Vec::new();
            udp::encode_udp_header(&target, &mut out).expect("a parsed target encodes");
            assert_eq!(out.len(), n);
            assert_eq!(&out[2..], &d[2..n], "encoded header = parsed header");
            assert_eq!(&out[..2], &[0, 0]);
            if let UdpTarget::Addr(SocketAddr::V6(a)) = target {
                assert_eq!((a.flowinfo(), a.scope_id()), (0, 0));
            }
            let (req, m) = socks5::parse_request(&tcp.expect("long enough"))
                .expect("the TCP parser agrees")
                .expect("complete");
            assert_eq!(m, n, "same header length");
            assert_eq!(req.target, tcp_target(&target));
        }
        Err(Socks5UdpError::Fragmented(f)) => assert_eq!(Some(&f), d.get(2)),
        Err(Socks5UdpError::Truncated { need, have }) => {
            assert_eq!(have, d.len());
            assert!(need > have);
            if let Some(req) = tcp.filter(|_| d.len() >= 3) {
                assert!(
                    !matches!(socks5::parse_request(&req), Ok(Some(_))),
                    "TCP parser took what UDP calls truncated"
                );
            }
        }
        Err(e) => {
            assert!(d.len() >= 4 && d[2] == 0, "{e:?}");
            let req = tcp.expect("long enough");
            assert!(
                socks5::parse_request(&req).is_err(),
                "UDP refused with {e:?} what TCP accepts: {:?}",
                socks5::parse_request(&req)
            );
        }
    }
}

fn encode(e: &Encode<'_>) {
    let target = match e.addr {
        Some(a) => UdpTarget::Addr(a),
        None => UdpTarget::Domain {
            host: e.host,
            port: e.port,
        },
    };
    let mut out = vec![0xAA];
    let res = udp::encode_udp_header(&target, &mut out);
    let bad = match target {
        UdpTarget::Addr(_) => None,
        UdpTarget::Domain { host: "", .. } => Some(Socks5UdpError::EmptyDomain),
        UdpTarget::Domain { host, .. } if host.len() > udp::MAX_DOMAIN_LEN => {
            Some(Socks5UdpError::DomainTooLong(host.len()))
        }
        UdpTarget::Domain { host, .. } if host.chars().any(control) => {
            Some(Socks5UdpError::DomainControlChar)
        }
        UdpTarget::Domain { .. } => None,
    };
    if let Some(err) = bad {
        assert_eq!(res, Err(err));
        assert_eq!(out, [0xAA], "nothing written on error");
        return;
    }
    res.expect("a valid target encodes");
    assert_eq!(out.len(), 1 + target.header_len());
    out.extend_from_slice(e.payload);
    let (back, payload) = udp::parse_udp(&out[1..]).expect("our header parses");
    let want = match target {
        // Flow info and scope id are not on the wire.
        UdpTarget::Addr(SocketAddr::V6(a)) => {
            UdpTarget::Addr(SocketAddr::new(a.ip().to_owned().into(), a.port()))
        }
        t => t,
    };
    assert_eq!(back, want);
    assert_eq!(payload, e.payload);
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    if opts & 1 == 0 {
        parse(rest);
    } else if let Ok(e) = Encode::arbitrary_take_rest(Unstructured::new(rest)) {
        encode(&e);
    }
});
