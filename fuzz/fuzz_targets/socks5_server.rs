//! The SOCKS5 server handshake (greeting, RFC 1929 auth, request) as a proxy
//! handler drives it: a receive buffer fed by reads, `feed` on what is unconsumed.
//!
//! Input (a byte layout of its own, so seeds are plain SOCKS5 bytes behind a short
//! header): a flag byte (bit 0: the server requires a login), the login as two
//! length-prefixed strings if so, a count and that many read sizes, then the
//! client's bytes. Properties: the outcome, the answers and the leftover
//! tunnel bytes do not depend on how the bytes were cut; while it needs more, the
//! unconsumed bytes are a strict prefix of one message (shorter than
//! `MAX_MESSAGE_LEN`); the answers are well-formed server messages (method
//! selection, auth status, a reply with the code the error names); a request is
//! only granted to a client that offered the right method and, with auth, sent
//! exactly the configured credentials; after the end, `feed` writes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactor_fuzz::pieces;
use reactor_proxy::socks5::{self, Handshake, HandshakeError, Step};

struct Input {
    auth: Option<Credentials>,
    cuts: Vec<u16>,
    bytes: Vec<u8>,
}

/// Takes a length byte and that many bytes (fewer if the input ends).
fn short<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&n, rest)) = data.split_first() else {
        return &[];
    };
    let (s, rest) = rest.split_at(usize::from(n).min(rest.len()));
    *data = rest;
    s
}

fn input(mut data: &[u8]) -> Option<Input> {
    let (&flags, rest) = data.split_first()?;
    data = rest;
    let auth = (flags & 1 != 0).then(|| {
        let user = short(&mut data).to_vec();
        (user, short(&mut data).to_vec())
    });
    let cuts = short(&mut data).iter().map(|&c| u16::from(c)).collect();
    Some(Input {
        auth,
        cuts,
        bytes: data.to_vec(),
    })
}

#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<Step, HandshakeError>,
    answers: Vec<u8>,
    /// Bytes after the request (tunnel payload), or unconsumed at the end (on
    /// success, or while more is needed).
    rest: Vec<u8>,
}

fn drive(auth: &Option<Credentials>, reads: &[&[u8]]) -> Outcome {
    let mut hs = Handshake::new(auth.clone());
    let mut buf: Vec<u8> = Vec::new();
    let mut answers = Vec::new();
    let mut result = Ok(Step::NeedMore);
    let mut reads = reads.iter();
    for read in reads.by_ref() {
        buf.extend_from_slice(read);
        match hs.feed(&buf, &mut answers) {
            Ok((n, Step::NeedMore)) => {
                buf.drain(..n);
                assert!(
                    buf.len() < socks5::MAX_MESSAGE_LEN,
                    "buffered {} bytes",
                    buf.len()
                );
                assert!(!hs.is_finished());
            }
            Ok((n, step)) => {
                buf.drain(..n);
                result = Ok(step);
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    for read in reads {
        buf.extend_from_slice(read);
    }
    if result != Ok(Step::NeedMore) {
        assert!(hs.is_finished());
        let before = answers.len();
        assert_eq!(hs.feed(&buf, &mut answers), Err(HandshakeError::Finished));
        assert_eq!(answers.len(), before, "nothing written after the end");
    }
    Outcome {
        result,
        answers,
        rest: buf,
    }
}

type Credentials = (Vec<u8>, Vec<u8>);

/// The client's messages, parsed independently: (methods, credentials).
fn client_view(auth: bool, bytes: &[u8]) -> (Vec<u8>, Option<Credentials>) {
    let (g, n) = socks5::parse_greeting(bytes).unwrap().unwrap();
    let creds = auth.then(|| {
        let (up, _) = socks5::parse_userpass(&bytes[n..]).unwrap().unwrap();
        (up.user.to_vec(), up.pass.to_vec())
    });
    (g.methods.to_vec(), creds)
}

fuzz_target!(|data: &[u8]| {
    let Some(i) = input(data) else { return };
    let whole = drive(&i.auth, &[&i.bytes]);
    let mut split = drive(&i.auth, &pieces(&i.bytes, &i.cuts, 64));
    if whole.result.is_err() {
        // After a failure the caller closes; what it had buffered is not compared.
        split.rest.clone_from(&whole.rest);
    }
    assert_eq!(whole, split, "the cut into reads changed the outcome");

    // The answers are what a client expects, in order.
    let mut a = &whole.answers[..];
    if !a.is_empty() {
        let (method, n) = socks5::parse_method_selection(a).unwrap().unwrap();
        a = &a[n..];
        let want = if i.auth.is_some() {
            socks5::METHOD_USERPASS
        } else {
            socks5::METHOD_NO_AUTH
        };
        assert!(method == want || method == socks5::METHOD_NO_ACCEPTABLE);
        if i.auth.is_some() && method == want && !a.is_empty() {
            let (_, n) = socks5::parse_auth_status(a).unwrap().unwrap();
            a = &a[n..];
        }
    }
    match &whole.result {
        Ok(Step::NeedMore) | Err(HandshakeError::Finished) => assert!(a.is_empty()),
        Ok(Step::Request(req)) => {
            assert!(a.is_empty(), "the reply to a request is the caller's");
            let (methods, creds) = client_view(i.auth.is_some(), &i.bytes);
            match &i.auth {
                Some(c) => {
                    assert!(methods.contains(&socks5::METHOD_USERPASS));
                    assert_eq!(creds.as_ref(), Some(c), "granted with other credentials");
                }
                None => assert!(methods.contains(&socks5::METHOD_NO_AUTH)),
            }
            // The request really is in the stream, right before the tunnel bytes.
            let mut enc = Vec::new();
            socks5::encode_request(req.command, &req.target, &mut enc).unwrap();
            let at = i.bytes.len() - whole.rest.len() - enc.len();
            let (parsed, n) = socks5::parse_request(&i.bytes[at..]).unwrap().unwrap();
            assert_eq!((&parsed, n), (req, enc.len()));
        }
        Err(HandshakeError::Greeting(_)) => assert!(whole.answers.is_empty()),
        Err(HandshakeError::NoAcceptableMethod { .. }) => {
            assert!(
                whole
                    .answers
                    .ends_with(&[socks5::VERSION, socks5::METHOD_NO_ACCEPTABLE])
            );
        }
        Err(HandshakeError::Auth(_) | HandshakeError::AuthFailed) => {
            assert!(whole.answers.ends_with(&socks5::encode_auth_status(false)));
        }
        Err(HandshakeError::Request(e)) => match e.reply() {
            Some(code) => {
                let (rep, _, n) = socks5::parse_reply(a).unwrap().unwrap();
                assert_eq!((rep, n), (code.code(), a.len()));
            }
            None => assert!(a.is_empty()),
        },
    }
});
