//! Discovery announcement datagrams: decode, and encode then decode.
//!
//! Input, read twice: a datagram, and the fields of an announcement.
//! Properties: a decoded datagram validates, its encoded length is the datagram's
//! length and it re-encodes to exactly those bytes; foreign traffic of any length
//! is refused as such (wrong magic); the encoder writes nothing when validation
//! fails and otherwise a datagram of at most `MAX_DATAGRAM_LEN` bytes that decodes
//! to the same announcement.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_discovery::proto::{self, Announcement, MAGIC, MAX_DATAGRAM_LEN, Metadata, ProtoError};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    id: &'a str,
    instance: u64,
    service: &'a str,
    port: u16,
    leaving: bool,
    pairs: Vec<(&'a str, &'a str)>,
}

fuzz_target!(|data: &[u8]| {
    match proto::decode(data) {
        Ok(a) => {
            assert_eq!(a.validate(), Ok(data.len()));
            let mut out = Vec::new();
            proto::encode(&a, &mut out).unwrap();
            assert_eq!(out, data);
        }
        Err(e) => {
            if data.len() >= 4 && data[..4] != MAGIC {
                assert_eq!(e, ProtoError::BadMagic);
            }
        }
    }

    let Ok(i) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Ok(metadata) = Metadata::from_pairs(&i.pairs) else {
        assert!(i.pairs.len() > proto::MAX_PAIRS);
        return;
    };
    let ann = Announcement {
        id: i.id,
        instance: i.instance,
        service: i.service,
        port: i.port,
        leaving: i.leaving,
        metadata,
    };
    let mut out = vec![0xAA];
    match (proto::encode(&ann, &mut out), ann.validate()) {
        (Ok(()), Ok(len)) => {
            assert_eq!(out.len(), 1 + len);
            assert!(len <= MAX_DATAGRAM_LEN);
            assert_eq!(proto::decode(&out[1..]), Ok(ann));
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert_eq!(out, [0xAA], "nothing written on error");
        }
        other => panic!("encode and validate disagree: {other:?}"),
    }
});
