//! The relay's control-connection frames: decode a stream, encode then decode.
//!
//! Input, read twice: a stream of frames, and a structured list of messages.
//! Properties: a decoded frame re-encodes to exactly its bytes; strict prefixes
//! need more; type and length errors are reported after the first byte and the
//! header (a prefix that fails fails the same way), so nothing is buffered past
//! `HEADER_LEN + MAX_PAYLOAD`; the encoder either refuses, writing nothing, or
//! writes a frame that decodes to the same message.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_relay::proto::{self, HEADER_LEN, MAX_PAYLOAD, Message, ProtoError, Reason};

#[derive(Arbitrary, Debug)]
enum Msg {
    Reserve(String, String),
    Refresh(String),
    Connect(String),
    Accept(u64),
    Heartbeat,
    Reserved(String, u32),
    Refused(u8, Option<String>),
    Incoming(u64, String),
    Connected(u64),
    HeartbeatAck,
}

fn as_message(m: &Msg) -> Message<'_> {
    match m {
        Msg::Reserve(p, i) => Message::Reserve { peer: p, id: i },
        Msg::Refresh(i) => Message::Refresh { id: i },
        Msg::Connect(i) => Message::Connect { id: i },
        Msg::Accept(c) => Message::Accept { circuit: *c },
        Msg::Heartbeat => Message::Heartbeat,
        Msg::Reserved(i, t) => Message::Reserved {
            id: i,
            ttl_secs: *t,
        },
        Msg::Refused(r, d) => Message::Refused {
            reason: Reason::ALL[usize::from(*r) % Reason::ALL.len()],
            detail: d.as_deref(),
        },
        Msg::Incoming(c, i) => Message::Incoming { circuit: *c, id: i },
        Msg::Connected(c) => Message::Connected { circuit: *c },
        Msg::HeartbeatAck => Message::HeartbeatAck,
    }
}

fn stream(mut buf: &[u8]) {
    for _ in 0..256 {
        let r = proto::decode(buf);
        for cut in [0, 1, HEADER_LEN] {
            if cut < buf.len() {
                match (proto::decode(&buf[..cut]), &r) {
                    (Ok(None), _) => {}
                    // A short frame may lie wholly inside the prefix.
                    (Ok(Some(a)), Ok(Some(b))) => assert_eq!(&a, b, "cut {cut}"),
                    (Err(a), Err(b)) => assert_eq!(&a, b, "cut {cut}"),
                    (early, whole) => panic!("cut {cut}: {early:?} vs {whole:?}"),
                }
            }
        }
        if let Err(
            ProtoError::UnknownType(_)
            | ProtoError::Oversized { .. }
            | ProtoError::Undersized { .. },
        ) = r
        {
            assert!(
                proto::decode(&buf[..buf.len().min(HEADER_LEN)]).is_err(),
                "decided by the header"
            );
        }
        let Ok(Some((m, n))) = r else { return };
        assert!(n <= HEADER_LEN + MAX_PAYLOAD);
        let mut out = Vec::new();
        assert_eq!(proto::encode(&m, &mut out), Ok(n));
        assert_eq!(out, &buf[..n], "{m:?} re-encodes to its bytes");
        assert_eq!(proto::decode(&buf[..n - 1]), Ok(None));
        buf = &buf[n..];
    }
}

fuzz_target!(|data: &[u8]| {
    stream(data);
    let Ok(msgs) = Vec::<Msg>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut out = Vec::new();
    let mut sent = Vec::new();
    for m in msgs.iter().map(as_message) {
        let before = out.len();
        match proto::encode(&m, &mut out) {
            Ok(n) => {
                assert_eq!(out.len() - before, n);
                // Refused's empty detail is sent as none.
                let m = match m {
                    Message::Refused {
                        reason,
                        detail: Some(""),
                    } => Message::Refused {
                        reason,
                        detail: None,
                    },
                    m => m,
                };
                sent.push(m);
            }
            Err(e) => {
                assert_eq!(out.len(), before, "{e}: half a frame written");
                assert!(matches!(e, ProtoError::BadText { .. }), "{e}");
            }
        }
    }
    let mut rest = &out[..];
    for m in &sent {
        let (got, n) = proto::decode(rest).unwrap().unwrap();
        assert_eq!(&got, m);
        rest = &rest[n..];
    }
    assert!(rest.is_empty());
});
