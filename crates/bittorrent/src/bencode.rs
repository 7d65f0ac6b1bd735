//! Bencode (BEP 3) decoding and encoding.
//!
//! The decoder is zero-copy: byte strings and dictionary keys borrow from the
//! input, and dictionaries keep their entries in input order so that callers
//! can reproduce or inspect the original layout. [`find_raw`] returns the exact
//! raw bytes of one value in a top-level dictionary, which is what the
//! BitTorrent info-hash is computed over (re-encoding a decoded `info`
//! dictionary would silently change the hash of non-canonical torrents).
//!
//! Hostile input is expected: nesting depth and total length are bounded by
//! [`DecodeOptions`], integers are parsed strictly (no leading zeros, no `-0`,
//! overflow is an error), string length prefixes that overflow or exceed the
//! length limit are errors, and dictionary keys must be byte strings.
//! Sorted-key order is only enforced when
//! [`DecodeOptions::require_sorted_keys`] is set, because real-world torrents
//! and tracker responses are not always canonical; without it, duplicate keys
//! are accepted and every lookup ([`Value::get`], [`find_raw`]) uses the
//! *first* occurrence so that all views of a document agree.
//!
//! [`decode_prefix`] and [`value_len`] follow the incremental-parsing rule: a
//! truncated but otherwise valid prefix yields `Ok(None)` ("need more").
//!
//! This module must not do I/O, must not panic on any input and must not
//! buffer anything beyond the value tree it returns.

use std::collections::BTreeMap;
use std::fmt;

/// Default maximum nesting depth of lists and dictionaries.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Default maximum size in bytes of one encoded value.
pub const DEFAULT_MAX_LEN: usize = 32 * 1024 * 1024;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Maximum number of nested lists/dictionaries (a top-level list is depth 1).
    pub max_depth: usize,
    /// Maximum length in bytes of one encoded value; longer values are
    /// rejected with [`BencodeError::TooLarge`] instead of "need more", so a
    /// streaming caller never buffers beyond this.
    pub max_len: usize,
    /// Reject dictionaries whose keys are not strictly ascending (raw byte
    /// order), as the spec requires of encoders. This also rejects duplicates.
    pub require_sorted_keys: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_depth: DEFAULT_MAX_DEPTH,
            max_len: DEFAULT_MAX_LEN,
            require_sorted_keys: false,
        }
    }
}

/// A decoded bencode value borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// `i<n>e`
    Int(i64),
    /// `<len>:<bytes>`
    Bytes(&'a [u8]),
    /// `l...e`
    List(Vec<Value<'a>>),
    /// `d...e`, entries in input order (not necessarily sorted, see module docs).
    Dict(Vec<(&'a [u8], Value<'a>)>),
}

impl<'a> Value<'a> {
    /// The integer, if this is an `Int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The raw bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as UTF-8, if it is a byte string and valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The elements, if this is a list.
    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The entries in input order, if this is a dictionary.
    pub fn as_dict(&self) -> Option<&[(&'a [u8], Value<'a>)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Looks up `key` in a dictionary (first occurrence wins); `None` if this
    /// is not a dictionary or the key is absent.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Copies into an [`OwnedValue`]. Duplicate dictionary keys collapse to
    /// the first occurrence, matching [`Value::get`].
    pub fn to_owned_value(&self) -> OwnedValue {
        match self {
            Value::Int(i) => OwnedValue::Int(*i),
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Value::List(l) => OwnedValue::List(l.iter().map(Value::to_owned_value).collect()),
            Value::Dict(d) => {
                let mut map = BTreeMap::new();
                for (k, v) in d {
                    map.entry(k.to_vec()).or_insert_with(|| v.to_owned_value());
                }
                OwnedValue::Dict(map)
            }
        }
    }
}

/// An owned bencode value for building documents. Dictionaries are
/// `BTreeMap`s keyed by raw bytes, so encoding always emits keys in the
/// sorted order the spec requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedValue {
    /// Integer.
    Int(i64),
    /// Byte string.
    Bytes(Vec<u8>),
    /// List.
    List(Vec<OwnedValue>),
    /// Dictionary with keys sorted by raw bytes.
    Dict(BTreeMap<Vec<u8>, OwnedValue>),
}

impl OwnedValue {
    /// An empty dictionary, for use with [`OwnedValue::insert`].
    pub fn dict() -> Self {
        OwnedValue::Dict(BTreeMap::new())
    }

    /// Inserts `key` -> `value` if this is a dictionary (no-op otherwise);
    /// returns `self` for chaining.
    pub fn insert(mut self, key: &str, value: impl Into<OwnedValue>) -> Self {
        if let OwnedValue::Dict(map) = &mut self {
            map.insert(key.as_bytes().to_vec(), value.into());
        }
        self
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OwnedValue::Int(i) => encode_int(*i, out),
            OwnedValue::Bytes(b) => encode_bytes(b, out),
            OwnedValue::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            OwnedValue::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The canonical encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

impl From<i64> for OwnedValue {
    fn from(v: i64) -> Self {
        OwnedValue::Int(v)
    }
}

impl From<&str> for OwnedValue {
    fn from(v: &str) -> Self {
        OwnedValue::Bytes(v.as_bytes().to_vec())
    }
}

impl From<String> for OwnedValue {
    fn from(v: String) -> Self {
        OwnedValue::Bytes(v.into_bytes())
    }
}

impl From<&[u8]> for OwnedValue {
    fn from(v: &[u8]) -> Self {
        OwnedValue::Bytes(v.to_vec())
    }
}

impl From<Vec<u8>> for OwnedValue {
    fn from(v: Vec<u8>) -> Self {
        OwnedValue::Bytes(v)
    }
}

impl From<Vec<OwnedValue>> for OwnedValue {
    fn from(v: Vec<OwnedValue>) -> Self {
        OwnedValue::List(v)
    }
}

/// Appends `i<n>e` to `out` without allocating.
pub fn encode_int(n: i64, out: &mut Vec<u8>) {
    out.push(b'i');
    if n < 0 {
        out.push(b'-');
    }
    push_decimal(n.unsigned_abs(), out);
    out.push(b'e');
}

/// Appends `<len>:<bytes>` to `out`.
pub fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    push_decimal(b.len() as u64, out);
    out.push(b':');
    out.extend_from_slice(b);
}

/// Appends the encoding of `value` to `out`, writing dictionary entries in
/// their stored order. A value decoded from canonical input re-encodes to the
/// identical bytes; use [`OwnedValue`] to build new documents with sorted keys.
pub fn encode(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Int(i) => encode_int(*i, out),
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(l) => {
            out.push(b'l');
            for v in l {
                encode(v, out);
            }
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, v) in d {
                encode_bytes(k, out);
                encode(v, out);
            }
            out.push(b'e');
        }
    }
}

fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        // n % 10 < 10, so the cast and the index (i >= 0 since u64 has <= 20 digits) are safe.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Why bencoded input was rejected. Offsets are byte positions in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BencodeError {
    /// The input ended in the middle of a value (only from whole-input
    /// functions; prefix functions return `Ok(None)` instead).
    UnexpectedEof,
    /// The value is longer than the configured `max_len`.
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A byte that cannot start or continue a value here.
    InvalidByte {
        /// Position of the byte.
        offset: usize,
        /// The byte itself.
        byte: u8,
    },
    /// `ie`: an integer with no digits.
    EmptyInteger {
        /// Position of the integer's first digit slot.
        offset: usize,
    },
    /// An integer or length with a leading zero (`i03e`, `01:a`).
    LeadingZero {
        /// Position of the offending zero.
        offset: usize,
    },
    /// `i-0e`, which the spec forbids.
    NegativeZero {
        /// Position of the zero.
        offset: usize,
    },
    /// An integer outside the `i64` range.
    IntegerOverflow {
        /// Position of the digit that overflowed.
        offset: usize,
    },
    /// A string length prefix that does not fit in `usize`.
    LengthOverflow {
        /// Position of the digit that overflowed.
        offset: usize,
    },
    /// Lists/dictionaries nested deeper than `max_depth`.
    TooDeep {
        /// Position of the container that was too deep.
        offset: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A dictionary key that is not a byte string.
    NonStringKey {
        /// Position of the key.
        offset: usize,
    },
    /// A dictionary key not strictly greater than the previous one (only with
    /// `require_sorted_keys`).
    UnsortedKey {
        /// Position of the key.
        offset: usize,
    },
    /// Bytes after a complete top-level value.
    TrailingData {
        /// Position of the first extra byte.
        offset: usize,
    },
    /// [`find_raw`] was given something other than a dictionary.
    NotADict,
}

impl fmt::Display for BencodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BencodeError::UnexpectedEof => write!(f, "bencode input is truncated"),
            BencodeError::TooLarge { limit } => {
                write!(f, "bencode value is longer than the {limit}-byte limit")
            }
            BencodeError::InvalidByte { offset, byte } => {
                write!(
                    f,
                    "unexpected byte 0x{byte:02x} at offset {offset} in bencode"
                )
            }
            BencodeError::EmptyInteger { offset } => {
                write!(f, "bencode integer without digits at offset {offset}")
            }
            BencodeError::LeadingZero { offset } => {
                write!(f, "leading zero in bencode number at offset {offset}")
            }
            BencodeError::NegativeZero { offset } => {
                write!(f, "bencode integer -0 at offset {offset} is not allowed")
            }
            BencodeError::IntegerOverflow { offset } => {
                write!(
                    f,
                    "bencode integer at offset {offset} does not fit in 64 bits"
                )
            }
            BencodeError::LengthOverflow { offset } => {
                write!(f, "bencode string length at offset {offset} is too large")
            }
            BencodeError::TooDeep { offset, limit } => write!(
                f,
                "bencode nesting deeper than {limit} levels at offset {offset}"
            ),
            BencodeError::NonStringKey { offset } => {
                write!(
                    f,
                    "bencode dictionary key at offset {offset} is not a string"
                )
            }
            BencodeError::UnsortedKey { offset } => write!(
                f,
                "bencode dictionary key at offset {offset} is not in sorted order"
            ),
            BencodeError::TrailingData { offset } => {
                write!(f, "extra data after the bencode value at offset {offset}")
            }
            BencodeError::NotADict => write!(f, "bencode value is not a dictionary"),
        }
    }
}

impl std::error::Error for BencodeError {}

/// Decodes exactly one value spanning all of `input`, with default limits.
pub fn decode(input: &[u8]) -> Result<Value<'_>, BencodeError> {
    decode_with(input, &DecodeOptions::default())
}

/// Decodes exactly one value spanning all of `input`.
pub fn decode_with<'a>(input: &'a [u8], opts: &DecodeOptions) -> Result<Value<'a>, BencodeError> {
    if input.len() > opts.max_len {
        return Err(BencodeError::TooLarge {
            limit: opts.max_len,
        });
    }
    let mut p = Parser::new(input, opts);
    let v = p.value(0)?;
    p.expect_end()?;
    Ok(v)
}

/// Decodes one value from the start of `input` with default limits. Returns
/// the value and the number of bytes it occupies, or `Ok(None)` if `input` is
/// a truncated prefix of a value. Bytes after the value are ignored.
pub fn decode_prefix(input: &[u8]) -> Result<Option<(Value<'_>, usize)>, BencodeError> {
    decode_prefix_with(input, &DecodeOptions::default())
}

/// [`decode_prefix`] with explicit limits.
pub fn decode_prefix_with<'a>(
    input: &'a [u8],
    opts: &DecodeOptions,
) -> Result<Option<(Value<'a>, usize)>, BencodeError> {
    let mut p = Parser::new(input, opts);
    match p.value(0) {
        Ok(v) => Ok(Some((v, p.pos))),
        Err(BencodeError::UnexpectedEof) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Validates one value at the start of `input` without allocating and returns
/// its encoded length, or `Ok(None)` if `input` is a truncated prefix. Useful
/// for framing a stream before decoding.
pub fn value_len(input: &[u8], opts: &DecodeOptions) -> Result<Option<usize>, BencodeError> {
    let mut p = Parser::new(input, opts);
    match p.skip(0) {
        Ok(()) => Ok(Some(p.pos)),
        Err(BencodeError::UnexpectedEof) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Returns the exact raw bytes of the value stored under `key` in the
/// top-level dictionary that spans all of `input` (default limits). The whole
/// input is validated. With duplicate keys the first occurrence is returned.
pub fn find_raw<'a>(input: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, BencodeError> {
    find_raw_with(input, key, &DecodeOptions::default())
}

/// [`find_raw`] with explicit limits.
pub fn find_raw_with<'a>(
    input: &'a [u8],
    key: &[u8],
    opts: &DecodeOptions,
) -> Result<Option<&'a [u8]>, BencodeError> {
    if input.len() > opts.max_len {
        return Err(BencodeError::TooLarge {
            limit: opts.max_len,
        });
    }
    let mut p = Parser::new(input, opts);
    if p.peek()? != b'd' {
        return Err(BencodeError::NotADict);
    }
    if opts.max_depth == 0 {
        return Err(BencodeError::TooDeep {
            offset: 0,
            limit: 0,
        });
    }
    p.pos += 1;
    let mut found = None;
    let mut prev: Option<&[u8]> = None;
    loop {
        if p.peek()? == b'e' {
            p.pos += 1;
            break;
        }
        let k = p.dict_key(&mut prev)?;
        let start = p.pos;
        p.skip(1)?;
        if found.is_none() && k == key {
            found = input.get(start..p.pos);
        }
    }
    p.expect_end()?;
    Ok(found)
}

struct Parser<'a, 'o> {
    input: &'a [u8],
    pos: usize,
    opts: &'o DecodeOptions,
}

impl<'a, 'o> Parser<'a, 'o> {
    fn new(input: &'a [u8], opts: &'o DecodeOptions) -> Self {
        Parser {
            input,
            pos: 0,
            opts,
        }
    }

    fn peek(&self) -> Result<u8, BencodeError> {
        if self.pos >= self.opts.max_len {
            return Err(BencodeError::TooLarge {
                limit: self.opts.max_len,
            });
        }
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::UnexpectedEof)
    }

    fn expect_end(&self) -> Result<(), BencodeError> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(BencodeError::TrailingData { offset: self.pos })
        }
    }

    fn invalid(&self, byte: u8) -> BencodeError {
        BencodeError::InvalidByte {
            offset: self.pos,
            byte,
        }
    }

    fn enter(&self, depth: usize) -> Result<(), BencodeError> {
        if depth >= self.opts.max_depth {
            Err(BencodeError::TooDeep {
                offset: self.pos,
                limit: self.opts.max_depth,
            })
        } else {
            Ok(())
        }
    }

    /// Parses `i...e` with the cursor on the `i`.
    fn int(&mut self) -> Result<i64, BencodeError> {
        self.pos += 1;
        let neg = self.peek()? == b'-';
        if neg {
            self.pos += 1;
        }
        let first = self.peek()?;
        match first {
            b'0' => {
                if neg {
                    return Err(BencodeError::NegativeZero { offset: self.pos });
                }
                self.pos += 1;
                return match self.peek()? {
                    b'e' => {
                        self.pos += 1;
                        Ok(0)
                    }
                    b'0'..=b'9' => Err(BencodeError::LeadingZero {
                        offset: self.pos - 1,
                    }),
                    b => Err(self.invalid(b)),
                };
            }
            b'1'..=b'9' => {}
            b'e' if !neg => return Err(BencodeError::EmptyInteger { offset: self.pos }),
            b => return Err(self.invalid(b)),
        }
        let mut v: i64 = 0;
        loop {
            match self.peek()? {
                b @ b'0'..=b'9' => {
                    let d = i64::from(b - b'0');
                    // Accumulate towards the sign so that i64::MIN is representable.
                    v = v
                        .checked_mul(10)
                        .and_then(|v| {
                            if neg {
                                v.checked_sub(d)
                            } else {
                                v.checked_add(d)
                            }
                        })
                        .ok_or(BencodeError::IntegerOverflow { offset: self.pos })?;
                    self.pos += 1;
                }
                b'e' => {
                    self.pos += 1;
                    return Ok(v);
                }
                b => return Err(self.invalid(b)),
            }
        }
    }

    /// Parses `<len>:<bytes>` with the cursor on the first digit.
    fn bytes(&mut self) -> Result<&'a [u8], BencodeError> {
        let mut len: usize = 0;
        let first = self.pos;
        loop {
            match self.peek()? {
                b @ b'0'..=b'9' => {
                    if self.pos > first && len == 0 {
                        return Err(BencodeError::LeadingZero { offset: first });
                    }
                    len = len
                        .checked_mul(10)
                        .and_then(|l| l.checked_add(usize::from(b - b'0')))
                        .ok_or(BencodeError::LengthOverflow { offset: self.pos })?;
                    // Fail early rather than ask a streaming caller for more data
                    // it will never be allowed to buffer.
                    if len > self.opts.max_len {
                        return Err(BencodeError::TooLarge {
                            limit: self.opts.max_len,
                        });
                    }
                    self.pos += 1;
                }
                b':' if self.pos > first => {
                    self.pos += 1;
                    break;
                }
                b => return Err(self.invalid(b)),
            }
        }
        let start = self.pos;
        let end = start
            .checked_add(len)
            .ok_or(BencodeError::LengthOverflow { offset: first })?;
        if end > self.opts.max_len {
            return Err(BencodeError::TooLarge {
                limit: self.opts.max_len,
            });
        }
        let s = self
            .input
            .get(start..end)
            .ok_or(BencodeError::UnexpectedEof)?;
        self.pos = end;
        Ok(s)
    }

    /// Parses a dictionary key (cursor on its first byte) and enforces the
    /// optional ordering rule against the previous key.
    fn dict_key(&mut self, prev: &mut Option<&'a [u8]>) -> Result<&'a [u8], BencodeError> {
        let offset = self.pos;
        match self.peek()? {
            b'0'..=b'9' => {}
            b'i' | b'l' | b'd' => return Err(BencodeError::NonStringKey { offset }),
            b => return Err(self.invalid(b)),
        }
        let k = self.bytes()?;
        if self.opts.require_sorted_keys
            && let Some(p) = prev
            && k <= *p
        {
            return Err(BencodeError::UnsortedKey { offset });
        }
        *prev = Some(k);
        Ok(k)
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, BencodeError> {
        match self.peek()? {
            b'i' => Ok(Value::Int(self.int()?)),
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                self.enter(depth)?;
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek()? == b'e' {
                        self.pos += 1;
                        return Ok(Value::List(items));
                    }
                    items.push(self.value(depth + 1)?);
                }
            }
            b'd' => {
                self.enter(depth)?;
                self.pos += 1;
                let mut items = Vec::new();
                let mut prev = None;
                loop {
                    if self.peek()? == b'e' {
                        self.pos += 1;
                        return Ok(Value::Dict(items));
                    }
                    let k = self.dict_key(&mut prev)?;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                }
            }
            b => Err(self.invalid(b)),
        }
    }

    /// Same grammar as `value` but builds nothing.
    fn skip(&mut self, depth: usize) -> Result<(), BencodeError> {
        match self.peek()? {
            b'i' => self.int().map(drop),
            b'0'..=b'9' => self.bytes().map(drop),
            b'l' => {
                self.enter(depth)?;
                self.pos += 1;
                loop {
                    if self.peek()? == b'e' {
                        self.pos += 1;
                        return Ok(());
                    }
                    self.skip(depth + 1)?;
                }
            }
            b'd' => {
                self.enter(depth)?;
                self.pos += 1;
                let mut prev = None;
                loop {
                    if self.peek()? == b'e' {
                        self.pos += 1;
                        return Ok(());
                    }
                    self.dict_key(&mut prev)?;
                    self.skip(depth + 1)?;
                }
            }
            b => Err(self.invalid(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use reactor_test_support::fuzz::xorshift;

    #[test]
    fn spec_examples() {
        assert_eq!(decode(b"4:spam").unwrap(), Value::Bytes(b"spam"));
        assert_eq!(decode(b"0:").unwrap(), Value::Bytes(b""));
        assert_eq!(decode(b"i3e").unwrap(), Value::Int(3));
        assert_eq!(decode(b"i-3e").unwrap(), Value::Int(-3));
        assert_eq!(decode(b"i0e").unwrap(), Value::Int(0));
        assert_eq!(
            decode(b"l4:spam4:eggse").unwrap(),
            Value::List(vec![Value::Bytes(b"spam"), Value::Bytes(b"eggs")])
        );
        assert_eq!(
            decode(b"d3:cow3:moo4:spam4:eggse").unwrap(),
            Value::Dict(vec![
                (&b"cow"[..], Value::Bytes(b"moo")),
                (&b"spam"[..], Value::Bytes(b"eggs"))
            ])
        );
        let v = decode(b"d4:spaml1:a1:bee").unwrap();
        assert_eq!(
            v.get(b"spam").unwrap().as_list().unwrap(),
            &[Value::Bytes(b"a"), Value::Bytes(b"b")]
        );
        assert_eq!(decode(b"le").unwrap(), Value::List(vec![]));
        assert_eq!(decode(b"de").unwrap(), Value::Dict(vec![]));
    }

    #[test]
    fn integer_extremes() {
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
        assert!(matches!(
            decode(b"i9223372036854775808e"),
            Err(BencodeError::IntegerOverflow { .. })
        ));
        assert!(matches!(
            decode(b"i-9223372036854775809e"),
            Err(BencodeError::IntegerOverflow { .. })
        ));
    }

    #[test]
    fn strict_integer_errors() {
        assert_eq!(
            decode(b"i03e"),
            Err(BencodeError::LeadingZero { offset: 1 })
        );
        assert_eq!(
            decode(b"i-0e"),
            Err(BencodeError::NegativeZero { offset: 2 })
        );
        assert_eq!(
            decode(b"i-03e"),
            Err(BencodeError::NegativeZero { offset: 2 })
        );
        assert_eq!(decode(b"ie"), Err(BencodeError::EmptyInteger { offset: 1 }));
        assert_eq!(
            decode(b"i-e"),
            Err(BencodeError::InvalidByte {
                offset: 2,
                byte: b'e'
            })
        );
        assert_eq!(
            decode(b"i1x"),
            Err(BencodeError::InvalidByte {
                offset: 2,
                byte: b'x'
            })
        );
        assert_eq!(
            decode(b"i0x"),
            Err(BencodeError::InvalidByte {
                offset: 2,
                byte: b'x'
            })
        );
        assert_eq!(
            decode(b"i+1e"),
            Err(BencodeError::InvalidByte {
                offset: 1,
                byte: b'+'
            })
        );
    }

    #[test]
    fn string_errors() {
        assert_eq!(
            decode(b"01:a"),
            Err(BencodeError::LeadingZero { offset: 0 })
        );
        assert_eq!(
            decode(b"99999999999999999999999:a"),
            Err(BencodeError::TooLarge {
                limit: DEFAULT_MAX_LEN
            })
        );
        let huge = DecodeOptions {
            max_len: usize::MAX,
            ..DecodeOptions::default()
        };
        assert!(matches!(
            decode_with(b"99999999999999999999999:a", &huge),
            Err(BencodeError::LengthOverflow { .. })
        ));
        // Fits in usize but start + len overflows.
        let s = format!("{}:", usize::MAX);
        assert!(matches!(
            decode_prefix_with(s.as_bytes(), &huge),
            Err(BencodeError::LengthOverflow { .. })
        ));
        assert_eq!(decode(b"5:ab"), Err(BencodeError::UnexpectedEof));
        assert_eq!(
            decode(b"3x"),
            Err(BencodeError::InvalidByte {
                offset: 1,
                byte: b'x'
            })
        );
        assert_eq!(
            decode(b":a"),
            Err(BencodeError::InvalidByte {
                offset: 0,
                byte: b':'
            })
        );
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            decode(b"di1e1:ae"),
            Err(BencodeError::NonStringKey { offset: 1 })
        );
        assert_eq!(
            decode(b"dlee"),
            Err(BencodeError::NonStringKey { offset: 1 })
        );
        assert_eq!(
            decode(b"dxe"),
            Err(BencodeError::InvalidByte {
                offset: 1,
                byte: b'x'
            })
        );
        assert_eq!(
            decode(b"i1ei2e"),
            Err(BencodeError::TrailingData { offset: 3 })
        );
        assert_eq!(decode(b""), Err(BencodeError::UnexpectedEof));
        assert_eq!(decode(b"l"), Err(BencodeError::UnexpectedEof));
        assert_eq!(decode(b"d1:a"), Err(BencodeError::UnexpectedEof));
        assert_eq!(
            decode(b"e"),
            Err(BencodeError::InvalidByte {
                offset: 0,
                byte: b'e'
            })
        );
    }

    #[test]
    fn depth_limit() {
        let ok = [b"l".repeat(64), b"e".repeat(64)].concat();
        assert!(decode(&ok).is_ok());
        let deep = [b"l".repeat(65), b"e".repeat(65)].concat();
        assert_eq!(
            decode(&deep),
            Err(BencodeError::TooDeep {
                offset: 64,
                limit: 64
            })
        );
        let very_deep = b"l".repeat(1_000_000);
        assert!(matches!(
            decode(&very_deep),
            Err(BencodeError::TooDeep { .. })
        ));
        assert!(matches!(
            value_len(&very_deep, &DecodeOptions::default()),
            Err(BencodeError::TooDeep { .. })
        ));
        let dicts = b"d1:a".repeat(100);
        assert!(matches!(decode(&dicts), Err(BencodeError::TooDeep { .. })));
    }

    #[test]
    fn length_limit() {
        let opts = DecodeOptions {
            max_len: 8,
            ..DecodeOptions::default()
        };
        assert_eq!(
            decode_with(b"9:abcdefghi", &opts),
            Err(BencodeError::TooLarge { limit: 8 })
        );
        assert_eq!(decode_with(b"5:abcde", &opts), Ok(Value::Bytes(b"abcde")));
        // A prefix that can only complete beyond the limit is an error, not "need more".
        assert_eq!(
            decode_prefix_with(b"7:abc", &opts),
            Err(BencodeError::TooLarge { limit: 8 })
        );
        assert_eq!(
            decode_prefix_with(b"li1ei2ei3e", &opts),
            Err(BencodeError::TooLarge { limit: 8 })
        );
        assert_eq!(decode_prefix_with(b"li1ei2e", &opts), Ok(None));
    }

    #[test]
    fn sorted_keys_option() {
        let strict = DecodeOptions {
            require_sorted_keys: true,
            ..DecodeOptions::default()
        };
        assert!(decode_with(b"d1:ai1e1:bi2ee", &strict).is_ok());
        assert_eq!(
            decode_with(b"d1:bi1e1:ai2ee", &strict),
            Err(BencodeError::UnsortedKey { offset: 7 })
        );
        assert_eq!(
            decode_with(b"d1:ai1e1:ai2ee", &strict),
            Err(BencodeError::UnsortedKey { offset: 7 })
        );
        // Lenient default: first duplicate wins everywhere.
        let v = decode(b"d1:ai1e1:ai2ee").unwrap();
        assert_eq!(v.get(b"a"), Some(&Value::Int(1)));
        assert_eq!(find_raw(b"d1:ai1e1:ai2ee", b"a"), Ok(Some(&b"i1e"[..])));
        assert_eq!(v.to_owned_value(), OwnedValue::dict().insert("a", 1));
    }

    #[test]
    fn prefix_decoding() {
        let msg = b"d3:bar4:spam3:fooi42ee";
        for n in 0..msg.len() {
            assert_eq!(decode_prefix(&msg[..n]), Ok(None), "prefix {n}");
            assert_eq!(
                value_len(&msg[..n], &DecodeOptions::default()),
                Ok(None),
                "prefix {n}"
            );
        }
        let mut buf = msg.to_vec();
        buf.extend_from_slice(b"i7e");
        let (v, used) = decode_prefix(&buf).unwrap().unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(v.get(b"foo"), Some(&Value::Int(42)));
        assert_eq!(
            value_len(&buf, &DecodeOptions::default()),
            Ok(Some(msg.len()))
        );
        assert_eq!(decode_prefix(b"i-"), Ok(None));
        assert_eq!(
            decode_prefix(b"i-0"),
            Err(BencodeError::NegativeZero { offset: 2 })
        );
    }

    #[test]
    fn find_raw_spans() {
        let doc = b"d8:announce3:url4:infod4:name1:x6:lengthi5ee3:zzzi1ee";
        assert_eq!(
            find_raw(doc, b"info"),
            Ok(Some(&b"d4:name1:x6:lengthi5ee"[..]))
        );
        assert_eq!(find_raw(doc, b"announce"), Ok(Some(&b"3:url"[..])));
        assert_eq!(find_raw(doc, b"missing"), Ok(None));
        assert_eq!(find_raw(b"li1ee", b"a"), Err(BencodeError::NotADict));
        assert_eq!(find_raw(b"", b"a"), Err(BencodeError::UnexpectedEof));
        assert_eq!(
            find_raw(b"d1:ai1eex", b"a"),
            Err(BencodeError::TrailingData { offset: 8 })
        );
        assert_eq!(
            find_raw(b"d1:ai01ee", b"a"),
            Err(BencodeError::LeadingZero { offset: 5 })
        );
        let zero = DecodeOptions {
            max_depth: 0,
            ..DecodeOptions::default()
        };
        assert!(matches!(
            find_raw_with(b"de", b"a", &zero),
            Err(BencodeError::TooDeep { .. })
        ));
        let small = DecodeOptions {
            max_len: 2,
            ..DecodeOptions::default()
        };
        assert_eq!(
            find_raw_with(b"d1:ai1ee", b"a", &small),
            Err(BencodeError::TooLarge { limit: 2 })
        );
    }

    #[test]
    fn accessors() {
        let v = decode(b"d1:ai-5e1:b3:xyz1:cl1:qe1:d2:\xff\xfee").unwrap();
        assert_eq!(v.get(b"a").and_then(Value::as_int), Some(-5));
        assert_eq!(v.get(b"b").and_then(Value::as_str), Some("xyz"));
        assert_eq!(v.get(b"d").and_then(Value::as_str), None);
        assert_eq!(
            v.get(b"d").and_then(Value::as_bytes),
            Some(&b"\xff\xfe"[..])
        );
        assert_eq!(
            v.get(b"c").and_then(Value::as_list).map(<[_]>::len),
            Some(1)
        );
        assert_eq!(v.get(b"a").and_then(Value::as_list), None);
        assert_eq!(v.get(b"a").and_then(Value::as_bytes), None);
        assert_eq!(v.get(b"a").and_then(Value::as_dict), None);
        assert_eq!(v.get(b"a").and_then(|x| x.get(b"z")), None);
        assert_eq!(v.as_dict().map(<[_]>::len), Some(4));
        assert_eq!(v.as_int(), None);
    }

    #[test]
    fn encode_round_trip() {
        let docs: &[&[u8]] = &[
            b"i0e",
            b"i-9223372036854775808e",
            b"i9223372036854775807e",
            b"0:",
            b"4:spam",
            b"le",
            b"de",
            b"d3:cow3:moo4:spam4:eggse",
            b"ld1:ai1eei-1e3:xyzlee",
            b"d1:bi1e1:ai2ee", // non-canonical order is preserved by `encode`
        ];
        for d in docs {
            let v = decode(d).unwrap();
            let mut out = Vec::new();
            encode(&v, &mut out);
            assert_eq!(&out[..], *d);
        }
    }

    #[test]
    fn owned_value_sorts_keys() {
        let v = OwnedValue::dict()
            .insert("zeta", 1)
            .insert("alpha", "x")
            .insert(
                "mid",
                vec![OwnedValue::Int(-2), OwnedValue::from(&b"b"[..])],
            )
            .insert("bytes", vec![0u8, 1])
            .insert("s", String::from("t"));
        let bytes = v.to_bytes();
        assert_eq!(
            bytes,
            b"d5:alpha1:x5:bytes2:\x00\x013:midli-2e1:be1:s1:t4:zetai1ee".to_vec()
        );
        let strict = DecodeOptions {
            require_sorted_keys: true,
            ..DecodeOptions::default()
        };
        let back = decode_with(&bytes, &strict).unwrap();
        assert_eq!(back.to_owned_value(), v);
        // insert on a non-dict is a no-op
        assert_eq!(OwnedValue::Int(1).insert("a", 2), OwnedValue::Int(1));
    }

    #[test]
    fn error_display() {
        let errs = [
            BencodeError::UnexpectedEof,
            BencodeError::TooLarge { limit: 1 },
            BencodeError::InvalidByte { offset: 1, byte: 2 },
            BencodeError::EmptyInteger { offset: 1 },
            BencodeError::LeadingZero { offset: 1 },
            BencodeError::NegativeZero { offset: 1 },
            BencodeError::IntegerOverflow { offset: 1 },
            BencodeError::LengthOverflow { offset: 1 },
            BencodeError::TooDeep {
                offset: 1,
                limit: 2,
            },
            BencodeError::NonStringKey { offset: 1 },
            BencodeError::UnsortedKey { offset: 1 },
            BencodeError::TrailingData { offset: 1 },
            BencodeError::NotADict,
        ];
        for e in errs {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn never_panics() {
        let mut st = 0x9E37_79B9_7F4A_7C15u64;
        let alphabet = b"ilde0123456789:-xa";
        let seeds: &[&[u8]] = &[
            b"d8:announce3:url4:infod4:name1:x6:lengthi5eee",
            b"ld1:ai1eei-1e3:xyzlee",
            b"i-9223372036854775808e",
        ];
        let small = DecodeOptions {
            max_len: 16,
            max_depth: 4,
            require_sorted_keys: true,
        };
        for i in 0..30_000 {
            let len = (xorshift(&mut st) % 40) as usize;
            let mut buf: Vec<u8> = if i % 3 == 0 {
                let s = seeds[(xorshift(&mut st) % seeds.len() as u64) as usize];
                let mut b = s.to_vec();
                let flips = xorshift(&mut st) % 4;
                for _ in 0..flips {
                    let at = (xorshift(&mut st) as usize) % b.len();
                    b[at] = alphabet[(xorshift(&mut st) as usize) % alphabet.len()];
                }
                b.truncate((xorshift(&mut st) as usize) % (b.len() + 1));
                b
            } else {
                (0..len)
                    .map(|_| {
                        if xorshift(&mut st).is_multiple_of(8) {
                            xorshift(&mut st) as u8
                        } else {
                            alphabet[(xorshift(&mut st) as usize) % alphabet.len()]
                        }
                    })
                    .collect()
            };
            if i % 5 == 0 {
                buf.extend_from_slice(b"e");
            }
            let _ = decode(&buf);
            let _ = decode_with(&buf, &small);
            let _ = find_raw(&buf, b"info");
            let _ = find_raw_with(&buf, b"a", &small);
            let a = decode_prefix(&buf);
            let b = value_len(&buf, &DecodeOptions::default());
            // Both walkers must agree on framing.
            match (a, b) {
                (Ok(Some((v, n))), Ok(Some(m))) => {
                    assert_eq!(n, m);
                    let mut out = Vec::new();
                    encode(&v, &mut out);
                    assert_eq!(decode(&out).unwrap(), v);
                }
                (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
                other => panic!("disagreement on {buf:?}: {other:?}"),
            }
        }
    }
}
