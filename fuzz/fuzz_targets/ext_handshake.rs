//! The BEP 10 extension handshake as the peer session reads it
//! (`reactor_bittorrent::ext_handshake`): `parse_ext_handshake`, `encode`,
//! `update`.
//!
//! Input: one byte of options, then a payload (bytes) or structured fields.
//! Properties:
//! - a parsed handshake is within the documented bounds (client name at most
//!   `MAX_CLIENT_LEN` bytes, no listen port 0) and encodes to a payload that
//!   parses back to the same fields; payloads over `MAX_EXT_HANDSHAKE_LEN` are
//!   refused as `TooLarge`;
//! - fields written by `encode` parse back to themselves (a client name cut as
//!   the parser cuts it, a `metadata_size` beyond `i64` left out);
//! - `update` is additive: a later handshake's fields replace the earlier ones,
//!   missing fields are kept, and updating with an empty handshake changes
//!   nothing.
#![no_main]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::ext_handshake::{
    ExtHandshake, ExtHandshakeError, MAX_CLIENT_LEN, MAX_EXT_HANDSHAKE_LEN, parse_ext_handshake,
};

#[derive(Arbitrary, Debug)]
struct Fields {
    ut_metadata: Option<u8>,
    ut_pex: Option<u8>,
    metadata_size: Option<u64>,
    reqq: Option<u32>,
    client: Option<String>,
    yourip: Option<IpAddr>,
    listen_port: Option<u16>,
    later: Option<Box<Fields>>,
}

impl Fields {
    fn hs(&self) -> ExtHandshake {
        ExtHandshake {
            ut_metadata: self.ut_metadata,
            ut_pex: self.ut_pex,
            metadata_size: self.metadata_size,
            reqq: self.reqq,
            client: self.client.clone(),
            yourip: self.yourip,
            listen_port: self.listen_port,
        }
    }
}

fn bounded(h: &ExtHandshake) {
    assert!(h.client.as_ref().is_none_or(|c| c.len() <= MAX_CLIENT_LEN));
    assert_ne!(h.listen_port, Some(0));
    assert!(h.metadata_size.is_none_or(|n| i64::try_from(n).is_ok()));
}

fn round_trip(h: &ExtHandshake) {
    let bytes = h.encode();
    let back = parse_ext_handshake(&bytes).expect("our handshake parses");
    assert_eq!(&back, h, "encode -> parse");
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    if opts & 1 == 0 {
        match parse_ext_handshake(rest) {
            Ok(h) => {
                bounded(&h);
                round_trip(&h);
                assert_eq!(h.metadata_id(), h.ut_metadata.filter(|&i| i != 0));
                assert_eq!(h.pex_id(), h.ut_pex.filter(|&i| i != 0));
            }
            Err(ExtHandshakeError::TooLarge { len }) => assert!(len > MAX_EXT_HANDSHAKE_LEN),
            Err(_) => assert!(rest.len() <= MAX_EXT_HANDSHAKE_LEN),
        }
        return;
    }
    let Ok(f) = Fields::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let h = f.hs();
    // What the parser makes of our encoding of arbitrary fields: the same, or
    // the documented normalisations, and then stable.
    let parsed = parse_ext_handshake(&h.encode()).expect("our handshake parses");
    bounded(&parsed);
    assert_eq!(parsed.ut_metadata, h.ut_metadata);
    assert_eq!(parsed.ut_pex, h.ut_pex);
    assert_eq!(parsed.reqq, h.reqq);
    assert_eq!(parsed.yourip, h.yourip);
    assert_eq!(parsed.listen_port, h.listen_port.filter(|&p| p != 0));
    assert_eq!(
        parsed.metadata_size,
        h.metadata_size.filter(|&n| i64::try_from(n).is_ok())
    );
    if let (Some(c), Some(p)) = (&h.client, &parsed.client)
        && c.len() <= MAX_CLIENT_LEN
    {
        assert_eq!(c, p, "a short client name is kept");
    }
    round_trip(&parsed);
    // update: additive.
    let mut merged = parsed.clone();
    merged.update(&ExtHandshake::default());
    assert_eq!(merged, parsed, "an empty update changes nothing");
    if let Some(later) = &f.later {
        let l = later.hs();
        merged.update(&l);
        assert_eq!(merged.ut_metadata, l.ut_metadata.or(parsed.ut_metadata));
        assert_eq!(merged.ut_pex, l.ut_pex.or(parsed.ut_pex));
        assert_eq!(merged.reqq, l.reqq.or(parsed.reqq));
        assert_eq!(merged.client, l.client.clone().or(parsed.client.clone()));
        assert_eq!(merged.listen_port, l.listen_port.or(parsed.listen_port));
    }
});
