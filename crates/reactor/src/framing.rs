//! Framing: cutting a byte stream into messages.
//!
//! Plain functions over byte slices (no sockets), so they are tested and fuzzed
//! without a network: a decoder looks at the bytes buffered so far and says where the
//! next frame is, that more bytes are needed, or that the stream is malformed. Every
//! decoder has a maximum frame size: a peer cannot make us buffer without bound.
//! Decoders must not allocate or copy; they return offsets into the input.

use std::fmt;

/// Where a complete frame lies in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The payload is `buf[start..end]`.
    pub start: usize,
    /// End of the payload.
    pub end: usize,
    /// Bytes to consume from the front of the buffer for this frame (payload plus
    /// header or delimiter).
    pub consumed: usize,
}

impl Frame {
    /// The payload's bytes within `buf`.
    pub fn payload<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.start..self.end]
    }
}

/// The stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame is (or announces that it will be) longer than the maximum.
    TooLarge {
        /// The frame's length, or how much was buffered without finding its end.
        len: usize,
        /// The decoder's maximum.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Finds the next frame in buffered bytes.
pub trait Decoder {
    /// `Ok(Some(frame))` when a whole frame is buffered, `Ok(None)` when more bytes
    /// are needed, `Err` when the stream is malformed (close the connection).
    fn decode(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError>;

    /// Like [`decode`](Decoder::decode), for a decoder that can resume a search:
    /// `*scanned` is what the previous call on the same buffer left there (0 at
    /// first, and after the buffer's start moved), so bytes already searched need
    /// not be searched again; see [`Delimited::decode_resume`] for the contract.
    /// [`Conn::next_frame`](crate::conn::Conn::next_frame) keeps the cursor. The
    /// default ignores it (a length prefix needs no search).
    fn decode_from(&self, buf: &[u8], scanned: &mut usize) -> Result<Option<Frame>, FrameError> {
        let _ = scanned;
        self.decode(buf)
    }

    /// The most bytes one frame (with its header) may occupy; a connection needs a
    /// read buffer at least this large.
    fn max_frame(&self) -> usize;
}

/// Frames that end with a delimiter, such as lines ending in `\n` or `\r\n`.
///
/// The search runs `memchr` for the delimiter's first byte and compares the rest
/// only where that byte occurs, so a multi-byte delimiter costs about what a single
/// byte does (a `windows()` comparison at every offset was 6-10x slower per byte).
///
/// [`Decoder::decode`] is stateless: called again after more bytes arrive, it looks
/// at the whole buffer from the start. That rescan is bounded by the maximum frame
/// (it never looks past `max_payload` plus the delimiter), so it costs O(max frame)
/// per call; but a long line trickled in small reads is then scanned once per read.
/// [`Conn::next_frame`](crate::conn::Conn::next_frame) keeps a cursor and calls
/// [`Delimited::decode_resume`] instead, so each byte is looked at once.
///
/// ```
/// use reactor::framing::{Decoder, Delimited};
/// let d = Delimited::new(b"\r\n", 100);
/// let buf = b"hello\r\nwor";
/// let f = d.decode(buf).unwrap().unwrap();
/// assert_eq!(f.payload(buf), b"hello");
/// assert_eq!(f.consumed, 7);
/// assert_eq!(d.decode(&buf[7..]).unwrap(), None);
/// ```
#[derive(Clone, Debug)]
pub struct Delimited {
    delimiter: Vec<u8>,
    max_payload: usize,
}

impl Delimited {
    /// Frames ending with `delimiter` (not empty), whose payload is at most
    /// `max_payload` bytes.
    pub fn new(delimiter: &[u8], max_payload: usize) -> Delimited {
        assert!(!delimiter.is_empty(), "a delimiter cannot be empty");
        Delimited {
            delimiter: delimiter.to_vec(),
            max_payload,
        }
    }

    /// Appends `payload` and the delimiter to `out`.
    pub fn encode(&self, payload: &[u8], out: &mut bytes::BytesMut) {
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.delimiter);
    }

    /// Like [`Decoder::decode`], but starts searching at `*scanned`, an offset the
    /// previous call on the same buffer left there, so bytes already searched are
    /// not searched again. Start with 0. When more bytes are needed, `*scanned` is
    /// set to where the next search must begin (before a partial delimiter at the
    /// end). When a frame is found it is reset to 0, for the buffer after the
    /// caller consumes `frame.consumed` bytes; on an error it is left unchanged.
    ///
    /// ```
    /// use reactor::framing::Delimited;
    /// let d = Delimited::new(b"\r\n", 100);
    /// let mut scanned = 0;
    /// assert_eq!(d.decode_resume(b"hel", &mut scanned).unwrap(), None);
    /// assert_eq!(d.decode_resume(b"hello\r", &mut scanned).unwrap(), None);
    /// assert_eq!(scanned, 5); // the `\r` may begin the delimiter
    /// let f = d.decode_resume(b"hello\r\n", &mut scanned).unwrap().unwrap();
    /// assert_eq!((f.end, f.consumed, scanned), (5, 7, 0));
    /// ```
    pub fn decode_resume(
        &self,
        buf: &[u8],
        scanned: &mut usize,
    ) -> Result<Option<Frame>, FrameError> {
        let r = self.search(buf, *scanned);
        match r {
            Ok(Some(_)) => *scanned = 0,
            Ok(None) => {
                // Every offset where a whole delimiter fits was checked; one that
                // starts later may still be completed by the next read.
                let limit = buf.len().min(self.max_frame());
                *scanned = (limit + 1)
                    .saturating_sub(self.delimiter.len())
                    .max(*scanned);
            }
            Err(_) => {}
        }
        r
    }

    /// The first frame whose delimiter starts at or after `from`.
    fn search(&self, buf: &[u8], from: usize) -> Result<Option<Frame>, FrameError> {
        let d = self.delimiter.as_slice();
        // Only look as far as a legal frame can reach.
        let window = &buf[..buf.len().min(self.max_frame())];
        let (first, rest) = (d[0], &d[1..]);
        let mut at = from;
        let found = loop {
            let Some(i) = window.get(at..).and_then(|w| memchr::memchr(first, w)) else {
                break None;
            };
            let p = at + i;
            match window.get(p + 1..p + d.len()) {
                Some(tail) if tail == rest => break Some(p),
                Some(_) => at = p + 1,
                // A partial delimiter at the end of the window: more bytes decide.
                None => break None,
            }
        };
        match found {
            Some(end) => Ok(Some(Frame {
                start: 0,
                end,
                consumed: end + d.len(),
            })),
            None if buf.len() >= self.max_frame() => Err(FrameError::TooLarge {
                len: buf.len(),
                max: self.max_payload,
            }),
            None => Ok(None),
        }
    }
}

impl Decoder for Delimited {
    fn decode(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        self.search(buf, 0)
    }

    fn decode_from(&self, buf: &[u8], scanned: &mut usize) -> Result<Option<Frame>, FrameError> {
        self.decode_resume(buf, scanned)
    }

    fn max_frame(&self) -> usize {
        self.max_payload.saturating_add(self.delimiter.len())
    }
}

/// Frames preceded by their length as a big-endian integer of 1, 2, 4 or 8 bytes.
///
/// ```
/// use reactor::framing::{Decoder, LengthPrefixed};
/// let d = LengthPrefixed::new(2, 1024);
/// let buf = [0u8, 3, b'a', b'b', b'c', 0];
/// let f = d.decode(&buf).unwrap().unwrap();
/// assert_eq!(f.payload(&buf), b"abc");
/// assert_eq!(f.consumed, 5);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct LengthPrefixed {
    header: usize,
    max_payload: usize,
}

impl LengthPrefixed {
    /// `header` is 1, 2, 4 or 8 bytes; payloads above `max_payload` are refused.
    pub fn new(header: usize, max_payload: usize) -> LengthPrefixed {
        assert!(
            matches!(header, 1 | 2 | 4 | 8),
            "length header must be 1, 2, 4 or 8 bytes"
        );
        LengthPrefixed {
            header,
            max_payload,
        }
    }

    /// Appends the header and `payload` to `out`; fails if the payload is too long.
    pub fn encode(&self, payload: &[u8], out: &mut bytes::BytesMut) -> Result<(), FrameError> {
        let len = payload.len();
        let fits_header = self.header == 8 || (len as u64) < (1u64 << (8 * self.header));
        if len > self.max_payload || !fits_header {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        let be = (len as u64).to_be_bytes();
        out.extend_from_slice(&be[8 - self.header..]);
        out.extend_from_slice(payload);
        Ok(())
    }
}

impl Decoder for LengthPrefixed {
    fn decode(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        let Some(head) = buf.get(..self.header) else {
            return Ok(None);
        };
        let len = head.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if len > self.max_payload as u64 {
            return Err(FrameError::TooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: self.max_payload,
            });
        }
        // `len <= max_payload` fits a usize, but the header on top may not: such a
        // frame could never be buffered.
        let Some(end) = self.header.checked_add(len as usize) else {
            return Err(FrameError::TooLarge {
                len: len as usize,
                max: self.max_payload,
            });
        };
        if buf.len() < end {
            return Ok(None);
        }
        Ok(Some(Frame {
            start: self.header,
            end,
            consumed: end,
        }))
    }

    fn max_frame(&self) -> usize {
        self.header.saturating_add(self.max_payload)
    }
}

/// Text lines: frames end with `\n`, and a `\r` just before it is not part of the
/// line (so `\r\n` and `\n` clients both work). The limit is on the line itself
/// (without the line end), and an over-long line is an error as soon as the bytes
/// buffered prove it, newline or not: a peer cannot make us wait for more of a line
/// that is already too long.
///
/// ```
/// use reactor::framing::{Decoder, Lines};
/// let d = Lines::new(5);
/// let f = d.decode(b"hello\r\nnext").unwrap().unwrap();
/// assert_eq!((f.end, f.consumed), (5, 7));
/// assert_eq!(d.decode(b"hello\r").unwrap(), None); // may still end as "hello\r\n"
/// assert!(d.decode(b"hello!").is_err()); // six bytes and no line end: too long
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Lines {
    max_line: usize,
}

impl Lines {
    /// Lines of at most `max_line` bytes (not counting `\r\n` or `\n`).
    pub fn new(max_line: usize) -> Lines {
        Lines { max_line }
    }

    /// The longest line accepted.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    fn too_long(&self, len: usize) -> FrameError {
        FrameError::TooLarge {
            len,
            max: self.max_line,
        }
    }
}

impl Decoder for Lines {
    fn decode(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut scanned = 0;
        self.decode_from(buf, &mut scanned)
    }

    /// Resumes the search for `\n` at `*scanned` (see [`Delimited::decode_resume`]
    /// for the contract).
    fn decode_from(&self, buf: &[u8], scanned: &mut usize) -> Result<Option<Frame>, FrameError> {
        // A legal line and its line end fit in `max_line + 2` bytes.
        let window = &buf[..buf.len().min(self.max_frame())];
        let from = (*scanned).min(window.len());
        if let Some(i) = memchr::memchr(b'\n', &window[from..]) {
            let nl = from + i;
            let end = if nl > 0 && window[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            if end > self.max_line {
                return Err(self.too_long(end));
            }
            *scanned = 0;
            return Ok(Some(Frame {
                start: 0,
                end,
                consumed: nl + 1,
            }));
        }
        // No line end yet. The line is at least `len` long, or `len - 1` if the
        // last byte is a `\r` that the next byte may make a line end.
        let len = buf.len();
        let shortest = if buf.last() == Some(&b'\r') {
            len - 1
        } else {
            len
        };
        if shortest > self.max_line {
            return Err(self.too_long(shortest));
        }
        *scanned = window.len();
        Ok(None)
    }

    fn max_frame(&self) -> usize {
        self.max_line.saturating_add(2)
    }
}

/// The decoders the framed layer ([`crate::framed`]) knows, as one type, so a
/// protocol can switch between them mid-stream (a fixed-size handshake, then
/// length-prefixed messages; header lines, then a body of known length), like
/// asynchat's `set_terminator`.
///
/// ```
/// use reactor::framing::{Decoder, Delimited, Framing};
/// let lines: Framing = Delimited::new(b"\n", 100).into();
/// assert_eq!(lines.decode(b"hi\nyou").unwrap().unwrap().end, 2);
/// let four = Framing::exact(4);
/// assert_eq!(four.decode(b"abcdef").unwrap().unwrap().consumed, 4);
/// assert_eq!(Framing::Raw.decode(b"xyz").unwrap().unwrap().end, 3);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum Framing {
    /// Text lines ending in `\n` or `\r\n`.
    Lines(Lines),
    /// Frames ending with a delimiter.
    Delimited(Delimited),
    /// Frames preceded by their length.
    LengthPrefixed(LengthPrefixed),
    /// Frames of exactly this many bytes (asynchat's integer terminator).
    Exact(std::num::NonZeroUsize),
    /// Whatever has arrived, as one frame (asynchat's `None` terminator): for
    /// protocols that parse a byte stream themselves, or just pass it on.
    Raw,
    /// A decoder of the program's own.
    Custom(std::sync::Arc<dyn Decoder + Send + Sync>),
}

impl Framing {
    /// Frames of exactly `n` bytes. Panics if `n` is 0 (a program error: every
    /// frame would be empty and none would consume input).
    pub fn exact(n: usize) -> Framing {
        Framing::Exact(std::num::NonZeroUsize::new(n).expect("a frame of 0 bytes"))
    }
}

impl fmt::Debug for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Framing::Lines(d) => d.fmt(f),
            Framing::Delimited(d) => d.fmt(f),
            Framing::LengthPrefixed(d) => d.fmt(f),
            Framing::Exact(n) => write!(f, "Exact({n})"),
            Framing::Raw => f.write_str("Raw"),
            Framing::Custom(d) => write!(f, "Custom(max_frame {})", d.max_frame()),
        }
    }
}

impl From<Lines> for Framing {
    fn from(d: Lines) -> Framing {
        Framing::Lines(d)
    }
}

impl From<Delimited> for Framing {
    fn from(d: Delimited) -> Framing {
        Framing::Delimited(d)
    }
}

impl From<LengthPrefixed> for Framing {
    fn from(d: LengthPrefixed) -> Framing {
        Framing::LengthPrefixed(d)
    }
}

impl Decoder for Framing {
    fn decode(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut scanned = 0;
        self.decode_from(buf, &mut scanned)
    }

    #[inline]
    fn decode_from(&self, buf: &[u8], scanned: &mut usize) -> Result<Option<Frame>, FrameError> {
        match self {
            Framing::Raw => Ok((!buf.is_empty()).then_some(Frame {
                start: 0,
                end: buf.len(),
                consumed: buf.len(),
            })),
            Framing::Lines(d) => d.decode_from(buf, scanned),
            Framing::Delimited(d) => d.decode_resume(buf, scanned),
            Framing::LengthPrefixed(d) => d.decode(buf),
            Framing::Exact(n) => {
                let n = n.get();
                Ok((buf.len() >= n).then_some(Frame {
                    start: 0,
                    end: n,
                    consumed: n,
                }))
            }
            Framing::Custom(d) => d.decode_from(buf, scanned),
        }
    }

    /// For [`Framing::Raw`], 1: any buffer holds a frame.
    fn max_frame(&self) -> usize {
        match self {
            Framing::Raw => 1,
            Framing::Lines(d) => d.max_frame(),
            Framing::Delimited(d) => d.max_frame(),
            Framing::LengthPrefixed(d) => d.max_frame(),
            Framing::Exact(n) => n.get(),
            Framing::Custom(d) => d.max_frame(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn lines_limit_the_line_and_tolerate_crlf() {
        let d = Lines::new(4);
        let f = |b: &[u8]| d.decode(b);
        assert_eq!(f(b"abcd\n").unwrap().unwrap().end, 4);
        assert_eq!(f(b"abcd\r\n").unwrap().unwrap().consumed, 6);
        assert_eq!(f(b"\n").unwrap().unwrap().end, 0);
        assert_eq!(f(b"\r\n").unwrap().unwrap().end, 0);
        // A `\r` inside the line is part of it.
        assert_eq!(f(b"a\rb\n").unwrap().unwrap().end, 3);
        assert!(f(b"abcde\n").is_err());
        assert!(f(b"abcde\r\n").is_err());
        assert!(f(b"abcde").is_err(), "too long before any line end");
        assert_eq!(f(b"abcd\r").unwrap(), None, "a line end may follow");
        assert!(f(b"abcd\r\r").is_err());
        assert_eq!(f(b"").unwrap(), None);
        // Byte by byte, resumed: the same answers as all at once.
        for input in [&b"ab\r\ncd\n"[..], b"abcd\r\n", b"abcdef", b"a\rbcd\r\n"] {
            let mut scanned = 0;
            let mut got = None;
            for n in 1..=input.len() {
                match d.decode_from(&input[..n], &mut scanned) {
                    Ok(None) => continue,
                    other => {
                        got = Some(other);
                        break;
                    }
                }
            }
            let whole = d.decode(input);
            let got = got.unwrap_or(Ok(None));
            // An error may come earlier (with a shorter length) byte by byte.
            if whole.is_err() {
                assert!(got.is_err(), "{input:?}");
            } else {
                assert_eq!(got, whole, "{input:?}");
            }
        }
        // Any bytes: no panic, and a frame never exceeds the limit.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            reactor_test_support::fuzz::xorshift(&mut x);
            let len = (x % 9) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|i| [b'a', b'\r', b'\n'][((x >> (i * 2)) % 3) as usize])
                .collect();
            if let Ok(Some(fr)) = d.decode(&buf) {
                assert!(fr.end <= 4 && fr.consumed <= buf.len());
            }
        }
    }

    #[test]
    fn framing_variants() {
        let d: Framing = LengthPrefixed::new(1, 10).into();
        assert_eq!(d.decode(&[2, b'a']).unwrap(), None);
        assert_eq!(d.decode(&[2, b'a', b'b']).unwrap().unwrap().consumed, 3);
        assert_eq!(Framing::Raw.decode(b"").unwrap(), None);
        assert_eq!(Framing::exact(3).decode(b"ab").unwrap(), None);
        let custom = Framing::Custom(std::sync::Arc::new(Delimited::new(b";", 4)));
        assert!(custom.decode(b"abcdef").is_err());
        assert_eq!(custom.max_frame(), 5);
        // The delimited variant resumes its search like `Delimited::decode_resume`.
        let lines: Framing = Delimited::new(b"\r\n", 100).into();
        let mut scanned = 0;
        assert_eq!(lines.decode_from(b"abc\r", &mut scanned).unwrap(), None);
        assert_eq!(scanned, 3);
    }

    #[test]
    fn delimited_cases() {
        let d = Delimited::new(b"\n", 4);
        assert_eq!(d.decode(b"").unwrap(), None);
        assert_eq!(d.decode(b"abc").unwrap(), None);
        let f = d.decode(b"\nx").unwrap().unwrap();
        assert_eq!((f.start, f.end, f.consumed), (0, 0, 1));
        assert_eq!(d.decode(b"abcd\n").unwrap().unwrap().end, 4);
        assert!(matches!(
            d.decode(b"abcde"),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            d.decode(b"abcde\n"),
            Err(FrameError::TooLarge { .. })
        ));
        let d2 = Delimited::new(b"\r\n", 10);
        let f = d2.decode(b"a\rb\r\n").unwrap().unwrap();
        assert_eq!(f.payload(b"a\rb\r\n"), b"a\rb");
        let mut out = BytesMut::new();
        d2.encode(b"xy", &mut out);
        assert_eq!(&out[..], b"xy\r\n");
    }

    /// The obvious search, to check the fast one against.
    fn reference(d: &[u8], max: usize, buf: &[u8]) -> Result<Option<usize>, ()> {
        let window = &buf[..buf.len().min(max + d.len())];
        match window.windows(d.len()).position(|w| w == d) {
            Some(end) => Ok(Some(end)),
            None if buf.len() >= max + d.len() => Err(()),
            None => Ok(None),
        }
    }

    fn found(r: Result<Option<Frame>, FrameError>) -> Result<Option<usize>, ()> {
        r.map(|f| f.map(|f| f.end)).map_err(|_| ())
    }

    #[test]
    fn delimiter_split_across_reads() {
        let d = Delimited::new(b"\r\n", 64);
        let stream = b"first\r\nsecond has a \r inside\r\n\r\nlast\r\n";
        let want: [&[u8]; 4] = [b"first", b"second has a \r inside", b"", b"last"];
        // Every way of cutting the stream in two: the frames come out the same.
        for cut in 0..=stream.len() {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut scanned = 0;
            for piece in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(piece);
                while let Some(f) = d.decode_resume(&buf, &mut scanned).unwrap() {
                    assert_eq!(d.decode(&buf).unwrap(), Some(f), "cut {cut}");
                    got.push(f.payload(&buf).to_vec());
                    buf.drain(..f.consumed);
                }
                assert_eq!(d.decode(&buf).unwrap(), None, "cut {cut}");
            }
            assert_eq!(got, want, "cut {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn multi_byte_delimiter_partial_matches() {
        let d = Delimited::new(b"\r\n", 10);
        // A `\r` that is not followed by `\n` is payload.
        let f = d.decode(b"a\r\r\nb").unwrap().unwrap();
        assert_eq!((f.end, f.consumed), (2, 4));
        assert_eq!(f.payload(b"a\r\r\nb"), b"a\r");
        // `\r` at the end of the buffer: the next byte decides.
        assert_eq!(d.decode(b"abc\r").unwrap(), None);
        assert_eq!(d.decode(b"\r").unwrap(), None);
        assert_eq!(d.decode(b"\r\r\r").unwrap(), None);
        assert_eq!(d.decode(b"\r\r\r\n").unwrap().unwrap().end, 2);
        assert_eq!(d.decode(b"\n\r\n").unwrap().unwrap().end, 1);
        // Overlapping prefixes of a longer delimiter: a failed comparison must
        // move on by one byte, not by the delimiter's length.
        let d3 = Delimited::new(b"aab", 10);
        assert_eq!(d3.decode(b"aaab").unwrap().unwrap().end, 1);
        assert_eq!(d3.decode(b"xaaaab").unwrap().unwrap().end, 3);
        assert_eq!(d3.decode(b"aaa").unwrap(), None);
        let d4 = Delimited::new(b"\r\n\r\n", 20);
        let head = b"GET / HTTP/1.0\r\n\r\r\n\r\n";
        let f = d4.decode(head).unwrap().unwrap();
        assert_eq!(f.payload(head), b"GET / HTTP/1.0\r\n\r");
        assert_eq!(f.consumed, head.len());
        assert_eq!(d4.decode(b"x\r\n\r").unwrap(), None);
    }

    #[test]
    fn max_length_exceeded() {
        let d = Delimited::new(b"\r\n", 4);
        assert_eq!(d.max_frame(), 6);
        assert_eq!(d.decode(b"abcd\r\n").unwrap().unwrap().end, 4);
        // Could still become a legal frame.
        assert_eq!(d.decode(b"abcd\r").unwrap(), None);
        for bad in [&b"abcde\r\n"[..], b"abcd\rx", b"abcdef", b"abcd\r\r\n"] {
            assert_eq!(
                d.decode(bad),
                Err(FrameError::TooLarge {
                    len: bad.len(),
                    max: 4
                }),
                "{bad:?}"
            );
            let mut scanned = 0;
            assert!(d.decode_resume(bad, &mut scanned).is_err(), "{bad:?}");
        }
        // A delimiter beyond the limit is not looked for, however long the buffer.
        let mut long = vec![b'x'; 100_000];
        long.extend_from_slice(b"\r\n");
        assert!(matches!(
            d.decode(&long),
            Err(FrameError::TooLarge {
                len: 100_002,
                max: 4
            })
        ));
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        let d = Delimited::new(b"\r\n", usize::MAX);
        assert_eq!(d.max_frame(), usize::MAX);
        assert_eq!(d.decode(b"ab\r").unwrap(), None);
        assert_eq!(d.decode(b"ab\r\n").unwrap().unwrap().end, 2);
        // A header announcing 2^64 - 1 bytes is not a frame ending at 7: it could
        // never be buffered.
        let lp = LengthPrefixed::new(8, usize::MAX);
        assert_eq!(lp.max_frame(), usize::MAX);
        assert!(matches!(
            lp.decode(&[0xff; 16]),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(lp.decode(&[0, 0, 0, 0, 0, 0, 0, 2, 7]).unwrap(), None);
    }

    #[test]
    fn resume_does_not_rescan() {
        let d = Delimited::new(b"\r\n", 1 << 20);
        let mut buf = Vec::new();
        let mut scanned = 0;
        for i in 1..=1000 {
            buf.push(b'x');
            assert_eq!(d.decode_resume(&buf, &mut scanned).unwrap(), None);
            // Everything but the last byte (which could begin a delimiter) is done.
            assert_eq!(scanned, i - 1);
        }
        buf.push(b'\r');
        assert_eq!(d.decode_resume(&buf, &mut scanned).unwrap(), None);
        assert_eq!(scanned, 1000, "the trailing \\r must be searched again");
        buf.push(b'\n');
        let f = d.decode_resume(&buf, &mut scanned).unwrap().unwrap();
        assert_eq!((f.end, f.consumed, scanned), (1000, 1002, 0));
        // A cursor past the end (a caller's mistake) is not a panic.
        let mut past = 10;
        assert_eq!(d.decode_resume(b"ab", &mut past).unwrap(), None);
    }

    #[test]
    fn delimited_matches_the_obvious_search() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            reactor_test_support::fuzz::xorshift(&mut x);
            x
        };
        // A small alphabet, so delimiters and near-misses are frequent.
        let alphabet = b"\r\nab";
        let delims: [&[u8]; 5] = [b"\n", b"\r\n", b"\r\r\n", b"aab", b"\r\n\r\n"];
        let mut buf = Vec::new();
        for round in 0..20_000 {
            let d = delims[(next() % 5) as usize];
            let max = (next() % 24) as usize;
            let dec = Delimited::new(d, max);
            buf.clear();
            for _ in 0..next() % 40 {
                buf.push(alphabet[(next() % 4) as usize]);
            }
            let want = reference(d, max, &buf);
            assert_eq!(
                found(dec.decode(&buf)),
                want,
                "round {round} {d:?} {max} {buf:?}"
            );
            // The same buffer arriving in pieces, searched with a cursor.
            let mut scanned = 0;
            let mut got = Ok(None);
            let mut len = 0;
            while len < buf.len() {
                len = (len + 1 + (next() % 6) as usize).min(buf.len());
                got = found(dec.decode_resume(&buf[..len], &mut scanned));
                assert!(scanned <= len);
                if got != Ok(None) {
                    break;
                }
            }
            assert_eq!(
                got,
                reference(d, max, &buf[..len]),
                "round {round} {d:?} {max} {buf:?}"
            );
        }
    }

    #[test]
    fn length_prefixed_cases() {
        for header in [1, 2, 4, 8] {
            let d = LengthPrefixed::new(header, 300.min(if header == 1 { 255 } else { 300 }));
            let mut out = BytesMut::new();
            d.encode(b"hello", &mut out).unwrap();
            d.encode(b"", &mut out).unwrap();
            let f = d.decode(&out).unwrap().unwrap();
            assert_eq!(f.payload(&out), b"hello");
            let rest = &out[f.consumed..];
            let g = d.decode(rest).unwrap().unwrap();
            assert_eq!(g.payload(rest), b"");
            assert_eq!(g.consumed, header);
            // Every strict prefix needs more bytes.
            for i in 0..f.consumed {
                assert_eq!(d.decode(&out[..i]).unwrap(), None);
            }
        }
        let d = LengthPrefixed::new(4, 10);
        assert!(matches!(
            d.decode(&[0, 0, 0, 11]),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        assert!(d.encode(&[0; 11], &mut BytesMut::new()).is_err());
        let d1 = LengthPrefixed::new(1, 1000);
        assert!(d1.encode(&[0; 256], &mut BytesMut::new()).is_err());
        let d8 = LengthPrefixed::new(8, 10);
        assert!(d8.decode(&[0xff; 8]).is_err());
    }

    #[test]
    fn never_panics_on_noise() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let ds = [LengthPrefixed::new(2, 100), LengthPrefixed::new(4, 1 << 20)];
        let dl = Delimited::new(b"\r\n", 50);
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            reactor_test_support::fuzz::xorshift(&mut x);
            buf.clear();
            for i in 0..(x % 80) {
                buf.push((x >> (i % 56)) as u8);
            }
            for d in &ds {
                if let Ok(Some(f)) = d.decode(&buf) {
                    assert!(f.end <= buf.len() && f.consumed <= buf.len());
                }
            }
            if let Ok(Some(f)) = dl.decode(&buf) {
                assert!(f.consumed <= buf.len());
            }
        }
    }
}
