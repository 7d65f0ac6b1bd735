//! Peer-wire handshake, BEP 10 extension handshake and bitfields.
//!
//! Input, read twice: raw bytes for the three decoders, and a structured
//! extension handshake and bitfield edits. Properties: a handshake is refused on
//! its first wrong byte and accepted exactly at 68 bytes, the 48-byte prefix
//! parse agrees with the full one, and encoding a parsed handshake gives its
//! bytes back; a decoded extension handshake re-encodes to a message that decodes
//! to the same fields (names sorted, duplicates keeping their first id); a
//! bitfield's count, membership and iteration agree through any edits, and
//! validation accepts exactly the bytes with no spare bits set.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::wire::{self, Bitfield, ExtHandshake, HANDSHAKE_LEN};

#[derive(Arbitrary, Debug)]
struct Structured<'a> {
    names: Vec<(&'a [u8], u8)>,
    client: Option<&'a [u8]>,
    reqq: Option<u32>,
    pieces: u16,
    edits: Vec<(bool, u16)>,
}

/// Names sorted, the first id of a duplicated name kept: what the encoder writes.
fn normalized<'a>(hs: &ExtHandshake<'a>) -> Vec<(&'a [u8], u8)> {
    let mut v: Vec<(&[u8], u8)> = Vec::new();
    for &(n, id) in &hs.extensions {
        if !v.iter().any(|(m, _)| *m == n) {
            v.push((n, id));
        }
    }
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

fn ext_roundtrip(hs: &ExtHandshake<'_>) {
    let mut out = Vec::new();
    wire::encode_ext_handshake(hs, &mut out).unwrap();
    let (m, n) = wire::decode(&out, u32::MAX).unwrap().unwrap();
    assert_eq!(n, out.len());
    let wire::Message::Extended { id: 0, payload } = m else {
        panic!("not an extension handshake: {m:?}");
    };
    if payload.len() > wire::MAX_EXT_HANDSHAKE_LEN || hs.extensions.len() > wire::MAX_EXT_NAMES {
        return;
    }
    let back = wire::decode_ext_handshake(payload).expect("encoder output decodes");
    assert_eq!(back.extensions, normalized(hs));
    assert_eq!(back.client, hs.client);
    assert_eq!(back.reqq, hs.reqq);
}

fn handshake(data: &[u8]) {
    let full = wire::parse_handshake(data);
    let prefix = wire::parse_handshake_info_hash(data);
    match (&full, &prefix) {
        (Ok(Some(h)), Ok(Some((r, ih)))) => {
            assert_eq!((&h.reserved, &h.info_hash), (r, ih));
            let enc = wire::encode_handshake(&h.info_hash, &h.peer_id, h.reserved);
            assert_eq!(&enc[..], &data[..HANDSHAKE_LEN]);
        }
        (Ok(None), Ok(_)) => assert!(data.len() < HANDSHAKE_LEN),
        (Err(_), Err(_)) => {}
        other => panic!("handshake parsers disagree: {other:?}"),
    }
    if let Err(e) = &full {
        // Refused on the first byte that is wrong: the shortest failing prefix
        // is at most 20 bytes (length byte and protocol string).
        let first_bad = (1..=data.len().min(20))
            .find(|&n| wire::parse_handshake(&data[..n]).is_err())
            .expect("refused on one of its first 20 bytes");
        assert_eq!(wire::parse_handshake(&data[..first_bad]).unwrap_err(), *e);
    }
}

fn bitfield(data: &[u8], s: &Structured<'_>) {
    let n = u32::from(s.pieces % 2048);
    match Bitfield::from_bytes(data, n) {
        Ok(bf) => {
            assert_eq!(bf.as_bytes(), data);
            assert_eq!(bf.len(), n);
            let set: Vec<u32> = bf.iter_set().collect();
            assert_eq!(set.len() as u32, bf.count());
            assert!(set.iter().all(|&p| p < n && bf.has(p)));
        }
        Err(_) => {
            let spare_clear = data.len() == n.div_ceil(8) as usize
                && (0..data.len() as u32 * 8)
                    .filter(|&i| i >= n)
                    .all(|i| data[(i / 8) as usize] & (0x80 >> (i % 8)) == 0);
            assert!(!spare_clear, "valid bitfield refused");
        }
    }
    let mut bf = Bitfield::new(n);
    let mut model = vec![false; n as usize];
    for &(on, p) in s.edits.iter().take(512) {
        let p = u32::from(p) % (n + 8).max(1);
        let inside = p < n;
        if on {
            assert_eq!(bf.set(p), inside && !model[p as usize]);
        } else {
            assert_eq!(bf.clear(p), inside && model[p as usize]);
        }
        if inside {
            model[p as usize] = on;
        }
        assert_eq!(bf.has(p), inside && model[p as usize]);
    }
    assert_eq!(bf.count() as usize, model.iter().filter(|&&b| b).count());
    assert_eq!(bf.all(), model.iter().all(|&b| b));
    assert_eq!(bf.none(), model.iter().all(|&b| !b));
    let again = Bitfield::from_bytes(bf.as_bytes(), n).expect("own bytes validate");
    assert_eq!(again, bf);
    let full = Bitfield::full(n);
    assert!(full.all() && full.count() == n);
    assert_eq!(Bitfield::from_bytes(full.as_bytes(), n), Ok(full));
}

fuzz_target!(|data: &[u8]| {
    handshake(data);
    if let Ok(hs) = wire::decode_ext_handshake(data) {
        assert!(hs.extensions.len() <= wire::MAX_EXT_NAMES);
        ext_roundtrip(&hs);
    }
    let Ok(s) = Structured::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let hs = ExtHandshake {
        extensions: s.names.iter().take(wire::MAX_EXT_NAMES).copied().collect(),
        client: s.client,
        reqq: s.reqq,
    };
    ext_roundtrip(&hs);
    bitfield(data, &s);
});
