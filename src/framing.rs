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

    /// The most bytes one frame (with its header) may occupy; a connection needs a
    /// read buffer at least this large.
    fn max_frame(&self) -> usize;
}

/// Frames that end with a delimiter, such as lines ending in `\n` or `\r\n`.
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
}

impl Decoder for Delimited {
    fn decode(&self, buf: &[u8]) -> Result<Option<Frame>, FrameError> {
        let d = &self.delimiter;
        // Only look as far as a legal frame can reach.
        let limit = buf.len().min(self.max_payload + d.len());
        let window = &buf[..limit];
        let found = if d.len() == 1 {
            window.iter().position(|b| *b == d[0])
        } else {
            window.windows(d.len()).position(|w| w == d.as_slice())
        };
        match found {
            Some(end) => Ok(Some(Frame {
                start: 0,
                end,
                consumed: end + d.len(),
            })),
            None if buf.len() >= self.max_payload + d.len() => Err(FrameError::TooLarge {
                len: buf.len(),
                max: self.max_payload,
            }),
            None => Ok(None),
        }
    }

    fn max_frame(&self) -> usize {
        self.max_payload + self.delimiter.len()
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
        let end = self.header + len as usize;
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
        self.header + self.max_payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

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
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
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
