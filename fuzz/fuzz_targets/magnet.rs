//! Magnet links (`reactor_bittorrent::magnet::parse_magnet` and `Display`).
//!
//! Input: one byte of options, then a URI (text) or a structured link to write.
//! Properties:
//! - a parsed link respects the bounds (`MAX_TRACKERS`, `MAX_PEERS`, host names
//!   lower-case and at most `MAX_HOST_LEN`, no port 0), has no duplicate tracker
//!   or peer, and writes back (`to_string`) as a URI that parses to the same link
//!   (`Display`'s documented promise) whenever that URI is within `MAX_URI_LEN`,
//!   and is refused as `TooLong` otherwise;
//! - input over `MAX_URI_LEN` is refused before anything else;
//! - a link built from arbitrary fields writes a URI that, if it parses at all,
//!   parses to a link that itself round-trips (writing is idempotent after one
//!   parse).
#![no_main]

use std::collections::HashSet;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::magnet::{
    self, MAX_HOST_LEN, MAX_PEERS, MAX_TRACKERS, MAX_URI_LEN, Magnet, MagnetError, PeerAddr,
};

#[derive(Arbitrary, Debug)]
struct Link {
    info_hash: [u8; 20],
    v2: Option<[u8; 32]>,
    name: Option<String>,
    trackers: Vec<String>,
    ips: Vec<std::net::SocketAddr>,
    hosts: Vec<(String, u16)>,
}

fn check(m: &Magnet) {
    assert!(m.trackers.len() <= MAX_TRACKERS);
    assert!(m.peers.len() <= MAX_PEERS);
    assert_eq!(
        m.trackers.iter().collect::<HashSet<_>>().len(),
        m.trackers.len()
    );
    assert_eq!(m.peers.iter().collect::<HashSet<_>>().len(), m.peers.len());
    for p in &m.peers {
        match p {
            PeerAddr::Ip(a) => assert_ne!(a.port(), 0),
            PeerAddr::Host { host, port } => {
                assert_ne!(*port, 0);
                assert!(!host.is_empty() && host.len() <= MAX_HOST_LEN);
                assert_eq!(*host, host.to_lowercase(), "host not lower-cased");
            }
        }
    }
    assert_eq!(m.info_hash_hex().len(), 40);
}

/// Writes `m` and parses it back: the same link, or `TooLong` if the written URI
/// is over the limit.
fn round_trip(m: &Magnet) {
    let uri = m.to_string();
    match magnet::parse_magnet(&uri) {
        Ok(back) => {
            assert!(uri.len() <= MAX_URI_LEN);
            assert_eq!(&back, m, "{uri}");
        }
        Err(MagnetError::TooLong { len }) => {
            assert_eq!(len, uri.len());
            assert!(len > MAX_URI_LEN);
        }
        Err(e) => panic!("{uri}: our own link refused: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    if opts & 1 == 0 {
        let Ok(uri) = std::str::from_utf8(rest) else {
            return;
        };
        // Most inputs start like a link; `magnet:?` costs the fuzzer 8 bytes.
        let uri = if opts & 2 == 0 {
            format!("magnet:?{uri}")
        } else {
            uri.to_string()
        };
        match magnet::parse_magnet(&uri) {
            Ok(m) => {
                check(&m);
                round_trip(&m);
            }
            Err(MagnetError::TooLong { len }) => assert!(len > MAX_URI_LEN),
            Err(_) => assert!(uri.len() <= MAX_URI_LEN),
        }
    } else if let Ok(l) = Link::arbitrary_take_rest(Unstructured::new(rest)) {
        let mut peers: Vec<PeerAddr> = l.ips.iter().take(8).map(|&a| PeerAddr::Ip(a)).collect();
        peers.extend(l.hosts.iter().take(8).map(|(h, p)| PeerAddr::Host {
            host: h.clone(),
            port: *p,
        }));
        let m = Magnet {
            info_hash: l.info_hash,
            info_hash_v2: l.v2,
            display_name: l.name,
            trackers: l.trackers.into_iter().take(8).collect(),
            peers,
        };
        let uri = m.to_string();
        if let Ok(parsed) = magnet::parse_magnet(&uri) {
            check(&parsed);
            round_trip(&parsed);
        }
    }
});
