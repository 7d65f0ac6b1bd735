//! Peer-wire messages: decode a stream, and encode then decode.
//!
//! Input, read twice: (1) one byte choosing the length limit, then a stream of
//! length-prefixed messages; (2) the same bytes as a structured list of messages.
//! Properties: every decoded message re-encodes to exactly its bytes, with
//! `encoded_len` equal to what `decode` consumed; strict prefixes of a message
//! need more, and an error is decided by the first bytes (a prefix that fails
//! fails the same way); bitfields and extension handshakes inside the stream go
//! through their own validators without panicking; and every message the encoder
//! writes decodes to itself.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::wire::{self, Bitfield, EXTENDED_ID, Message};

#[derive(Arbitrary, Debug)]
enum Msg {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Vec<u8>),
    Request(u32, u32, u32),
    Piece(u32, u32, Vec<u8>),
    Cancel(u32, u32, u32),
    Port(u16),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(u32, u32, u32),
    AllowedFast(u32),
    Extended(u8, Vec<u8>),
    Unknown(u8, Vec<u8>),
}

fn known(id: u8) -> bool {
    matches!(id, 0..=9 | 13..=17 | EXTENDED_ID)
}

fn as_message(m: &Msg) -> Option<Message<'_>> {
    Some(match m {
        Msg::KeepAlive => Message::KeepAlive,
        Msg::Choke => Message::Choke,
        Msg::Unchoke => Message::Unchoke,
        Msg::Interested => Message::Interested,
        Msg::NotInterested => Message::NotInterested,
        Msg::Have(p) => Message::Have { piece: *p },
        Msg::Bitfield(b) => Message::Bitfield(b),
        Msg::Request(i, b, l) => Message::Request {
            index: *i,
            begin: *b,
            length: *l,
        },
        Msg::Piece(i, b, d) => Message::Piece {
            index: *i,
            begin: *b,
            block: d,
        },
        Msg::Cancel(i, b, l) => Message::Cancel {
            index: *i,
            begin: *b,
            length: *l,
        },
        Msg::Port(p) => Message::Port(*p),
        Msg::Suggest(p) => Message::SuggestPiece(*p),
        Msg::HaveAll => Message::HaveAll,
        Msg::HaveNone => Message::HaveNone,
        Msg::Reject(i, b, l) => Message::RejectRequest {
            index: *i,
            begin: *b,
            length: *l,
        },
        Msg::AllowedFast(p) => Message::AllowedFast(*p),
        Msg::Extended(id, p) => Message::Extended {
            id: *id,
            payload: p,
        },
        Msg::Unknown(id, p) if !known(*id) => Message::Unknown {
            id: *id,
            payload: p,
        },
        Msg::Unknown(..) => return None,
    })
}

const LIMITS: [u32; 6] = [0, 1, 5, 13, wire::DEFAULT_MAX_MESSAGE_LEN, u32::MAX];

fn stream(sel: u8, mut buf: &[u8]) {
    let max = LIMITS[usize::from(sel) % LIMITS.len()];
    let pieces = 1 + u32::from(sel >> 3);
    for _ in 0..256 {
        let r = wire::decode(buf, max);
        // The verdict is reached on the bytes that decide it.
        for cut in [0, 3, 4, 5] {
            if cut < buf.len() {
                match (wire::decode(&buf[..cut], max), &r) {
                    (Ok(None), _) => {}
                    // A short frame may lie wholly inside the prefix.
                    (Ok(Some(a)), Ok(Some(b))) => assert_eq!(&a, b, "cut {cut}"),
                    (Err(a), Err(b)) => assert_eq!(&a, b, "cut {cut}"),
                    (early, whole) => panic!("cut {cut}: {early:?} vs whole {whole:?}"),
                }
            }
        }
        let Ok(Some((m, n))) = r else { return };
        assert!(n >= 4 && n <= buf.len());
        assert_eq!(m.encoded_len(), n);
        let mut out = Vec::new();
        m.encode(&mut out).unwrap();
        assert_eq!(out, &buf[..n], "{m:?} re-encodes to its bytes");
        assert_eq!(wire::decode(&buf[..n - 1], max), Ok(None));
        match m {
            Message::Bitfield(b) => {
                if let Ok(bf) = Bitfield::from_bytes(b, pieces) {
                    assert_eq!(bf.as_bytes(), b);
                    assert_eq!(bf.iter_set().count() as u32, bf.count());
                }
            }
            Message::Extended { id: 0, payload } => {
                let _ = wire::decode_ext_handshake(payload);
            }
            _ => {}
        }
        buf = &buf[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((&sel, rest)) = data.split_first() {
        stream(sel, rest);
    }
    let Ok(msgs) = Vec::<Msg>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let msgs: Vec<Message<'_>> = msgs.iter().filter_map(as_message).collect();
    let mut out = Vec::new();
    for m in &msgs {
        m.encode(&mut out).unwrap();
    }
    let mut rest = &out[..];
    for m in &msgs {
        let (got, n) = wire::decode(rest, u32::MAX).unwrap().unwrap();
        assert_eq!(&got, m);
        assert_eq!(n, m.encoded_len());
        rest = &rest[n..];
    }
    assert!(rest.is_empty());
    // Piece headers written separately (for vectored writes) match the encoder.
    for m in &msgs {
        if let Message::Piece {
            index,
            begin,
            block,
        } = m
        {
            let mut full = Vec::new();
            m.encode(&mut full).unwrap();
            let h = wire::encode_piece_header(*index, *begin, block.len() as u32).unwrap();
            assert_eq!(&full[..13], &h);
        }
    }
});
