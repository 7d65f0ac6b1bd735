//! The framing decoders, fed a stream in reads as `Conn::next_frame` feeds them.
//!
//! Input: a decoder (lines, a delimiter, a length prefix, exact-size or raw
//! frames, with small limits), a stream, how it is cut into reads, and payloads
//! to encode. Properties: the frames found read by read with the resumable search
//! (`decode_from` and its cursor) are the frames the stateless `decode` finds in
//! the whole stream, up to the same error (an error may come sooner, never
//! later, never where the whole stream has none); a frame lies inside the buffer,
//! consumes at least one byte and respects the limit; the `Framing` enum answers
//! as the decoder inside it; and encoded payloads decode back to themselves.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor::bytes::BytesMut;
use reactor::framing::{Decoder, Delimited, Frame, FrameError, Framing, LengthPrefixed, Lines};
use reactor_fuzz::pieces;

#[derive(Arbitrary, Debug)]
enum Kind {
    Lines(u8),
    Delimited(Vec<u8>, u8),
    LengthPrefixed(u8, u16),
    Exact(u8),
    Raw,
}

#[derive(Arbitrary, Debug)]
struct Input {
    kind: Kind,
    stream: Vec<u8>,
    cuts: Vec<u16>,
    payloads: Vec<Vec<u8>>,
}

/// The delimiter alphabet: CR, LF and `a`, so delimiters and near-misses are common.
fn alpha(b: u8) -> u8 {
    [b'\r', b'\n', b'a', b'b'][usize::from(b % 4)]
}

/// The decoder, and the longest payload it may return (`None`: any length).
fn framing(kind: &Kind) -> (Framing, Option<usize>) {
    match kind {
        Kind::Lines(max) => {
            let max = usize::from(*max % 40);
            (Lines::new(max).into(), Some(max))
        }
        Kind::Delimited(d, max) => {
            let mut d: Vec<u8> = d.iter().take(4).map(|&b| alpha(b)).collect();
            if d.is_empty() {
                d.push(b'\n');
            }
            let max = usize::from(*max % 40);
            (Delimited::new(&d, max).into(), Some(max))
        }
        Kind::LengthPrefixed(h, max) => {
            let max = usize::from(*max % 600);
            (
                LengthPrefixed::new([1, 2, 4, 8][usize::from(h % 4)], max).into(),
                Some(max),
            )
        }
        Kind::Exact(n) => {
            let n = usize::from(*n % 16) + 1;
            (Framing::exact(n), Some(n))
        }
        Kind::Raw => (Framing::Raw, None),
    }
}

fn check_frame(f: &Frame, buf: &[u8], limit: Option<usize>) {
    assert!(
        f.start <= f.end && f.end <= f.consumed && f.consumed <= buf.len(),
        "{f:?} in {} bytes",
        buf.len()
    );
    assert!(f.consumed > 0, "a frame must consume input");
    if let Some(max) = limit {
        assert!(f.end - f.start <= max, "{f:?} exceeds the limit {max}");
    }
}

/// Frames of the whole stream with the stateless decoder, then the error if any.
fn whole(
    framing: &Framing,
    limit: Option<usize>,
    stream: &[u8],
) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut buf = stream;
    loop {
        match framing.decode(buf) {
            Ok(Some(f)) => {
                check_frame(&f, buf, limit);
                frames.push(f.payload(buf).to_vec());
                buf = &buf[f.consumed..];
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// The same stream arriving in reads, searched with a kept cursor.
fn in_reads(
    framing: &Framing,
    limit: Option<usize>,
    reads: &[&[u8]],
) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut scanned = 0usize;
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let stateless = framing.decode(&buf);
            match framing.decode_from(&buf, &mut scanned) {
                Ok(Some(f)) => {
                    assert_eq!(stateless, Ok(Some(f)), "resumed search found another frame");
                    check_frame(&f, &buf, limit);
                    frames.push(f.payload(&buf).to_vec());
                    buf.drain(..f.consumed);
                    scanned = 0;
                }
                Ok(None) => {
                    assert_eq!(stateless, Ok(None));
                    assert!(scanned <= buf.len());
                    break;
                }
                Err(e) => {
                    assert!(stateless.is_err(), "only the resumed search failed");
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}

fuzz_target!(|i: Input| {
    let (framing, limit) = framing(&i.kind);
    let inner: Option<&dyn Decoder> = match &framing {
        Framing::Lines(d) => Some(d),
        Framing::Delimited(d) => Some(d),
        Framing::LengthPrefixed(d) => Some(d),
        _ => None,
    };
    if let Some(d) = inner {
        assert_eq!(d.decode(&i.stream), framing.decode(&i.stream));
        assert_eq!(d.max_frame(), framing.max_frame());
    }

    let (want, want_err) = whole(&framing, limit, &i.stream);
    let (got, got_err) = in_reads(&framing, limit, &pieces(&i.stream, &i.cuts, 32));
    match (&want_err, &got_err) {
        // Raw frames are whatever each read brought: only the bytes must agree.
        (None, None) if matches!(framing, Framing::Raw) => assert_eq!(got.concat(), want.concat()),
        (None, None) => assert_eq!(got, want),
        (Some(_), Some(_)) => {
            // Read by read, a too-long frame may be refused before all of it
            // arrived, so only frames before the error are compared.
            assert!(got.len() <= want.len() && got[..] == want[..got.len()]);
        }
        (Some(_), None) => panic!("the whole stream fails, read by read it does not: {want_err:?}"),
        (None, Some(e)) => panic!("read by read fails with {e} where the whole stream does not"),
    }

    // Encoders: what they write decodes back to the payloads.
    let mut out = BytesMut::new();
    let mut sent: Vec<&[u8]> = Vec::new();
    for p in i.payloads.iter().take(32) {
        match &framing {
            Framing::LengthPrefixed(d) => {
                let before = out.len();
                match d.encode(p, &mut out) {
                    Ok(()) => sent.push(p),
                    Err(FrameError::TooLarge { .. }) => assert_eq!(out.len(), before),
                }
            }
            Framing::Delimited(d) => {
                let mut one = BytesMut::new();
                d.encode(p, &mut one);
                // Payloads that contain the delimiter (or complete it early)
                // cannot be framed this way; the decoder must then cut them short.
                let f = Framing::Delimited(d.clone()).decode(&one);
                if p.len() <= limit.unwrap_or(0)
                    && matches!(f, Ok(Some(fr)) if fr.consumed == one.len())
                {
                    out.extend_from_slice(&one);
                    sent.push(p);
                }
            }
            Framing::Lines(l)
                if p.len() <= l.max_line() && !p.contains(&b'\n') && p.last() != Some(&b'\r') =>
            {
                out.extend_from_slice(p);
                out.extend_from_slice(if p.len() % 2 == 0 { b"\n" } else { b"\r\n" });
                sent.push(p);
            }
            _ => {}
        }
    }
    let (back, err) = whole(&framing, limit, &out);
    assert_eq!(err, None);
    assert_eq!(back.iter().map(Vec::as_slice).collect::<Vec<_>>(), sent);
});
