//! Wire codec for discovery announcement datagrams.
//!
//! A node periodically broadcasts one UDP datagram describing itself (id,
//! service, TCP port, boot nonce, a little metadata). This module only turns an
//! [`Announcement`] into bytes and back. It must not open sockets, read clocks,
//! allocate while decoding, or trust anything in a received datagram.
//!
//! # Wire format (version 1), all integers big-endian
//!
//! | field        | size            | notes                                         |
//! |--------------|-----------------|-----------------------------------------------|
//! | magic        | 4               | `b"RDSC"`                                     |
//! | version      | 1               | [`VERSION`]; anything else is refused          |
//! | flags        | 1               | bit 0 = [`FLAG_LEAVING`]; other bits must be 0 |
//! | instance     | 8               | boot nonce, new random value per process start |
//! | port         | 2               | TCP port of the announced service (0 allowed)  |
//! | id_len       | 1               | 1..=[`MAX_ID_LEN`]                             |
//! | id           | id_len          | UTF-8, no control characters                   |
//! | service_len  | 1               | 0..=[`MAX_SERVICE_LEN`]                        |
//! | service      | service_len     | UTF-8, no control characters                   |
//! | pair_count   | 1               | 0..=[`MAX_PAIRS`]                              |
//! | pairs        | ...             | per pair: key_len u8 (1..=[`MAX_KEY_LEN`]), key, value_len u8 (0..=[`MAX_VALUE_LEN`]), value |
//!
//! Keys and values are UTF-8 without control characters; keys are unique. The
//! whole datagram is at most [`MAX_DATAGRAM_LEN`] bytes (fits an IPv6 minimum
//! MTU, so no fragmentation). Nothing may follow the last pair.
//!
//! A datagram is atomic: unlike stream parsers there is no "need more" state,
//! a short datagram is simply [`ProtoError::Truncated`].
//!
//! Strictness (unknown flag bits, trailing bytes, other versions) is
//! deliberate: incompatible future changes must bump [`VERSION`], and old
//! nodes will then count the new datagrams as malformed rather than
//! misinterpret them.

use std::fmt;

/// First four bytes of every announcement.
pub const MAGIC: [u8; 4] = *b"RDSC";
/// Protocol version written and accepted by this module.
pub const VERSION: u8 = 1;
/// Flag bit: the sender is shutting down; peers should forget it now
/// instead of waiting for the TTL.
pub const FLAG_LEAVING: u8 = 0x01;
/// Largest datagram produced or accepted.
pub const MAX_DATAGRAM_LEN: usize = 1200;
/// Longest node id in bytes (ids are at least 1 byte).
pub const MAX_ID_LEN: usize = 64;
/// Longest service name in bytes.
pub const MAX_SERVICE_LEN: usize = 64;
/// Most metadata pairs per announcement.
pub const MAX_PAIRS: usize = 16;
/// Longest metadata key in bytes (keys are at least 1 byte).
pub const MAX_KEY_LEN: usize = 32;
/// Longest metadata value in bytes.
pub const MAX_VALUE_LEN: usize = 255;

/// Bytes before the id: magic, version, flags, instance, port, id_len.
const FIXED_HEAD: usize = 4 + 1 + 1 + 8 + 2 + 1;

/// Why a datagram could not be decoded or an announcement could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// The datagram does not start with [`MAGIC`]; it is not ours.
    BadMagic,
    /// The sender speaks another protocol version.
    UnsupportedVersion(u8),
    /// Flag bits unknown to this version are set.
    ReservedFlags(u8),
    /// The datagram ends in the middle of a field.
    Truncated,
    /// The datagram (or the encoding) would exceed [`MAX_DATAGRAM_LEN`].
    TooLong {
        /// Actual or required length in bytes.
        len: usize,
    },
    /// The node id is empty, longer than [`MAX_ID_LEN`], not UTF-8, or has
    /// control characters.
    BadId,
    /// The service name is longer than [`MAX_SERVICE_LEN`], not UTF-8, or
    /// has control characters.
    BadService,
    /// A metadata key is empty, longer than [`MAX_KEY_LEN`], not UTF-8, or
    /// has control characters.
    BadKey,
    /// A metadata value is longer than [`MAX_VALUE_LEN`], not UTF-8, or has
    /// control characters.
    BadValue,
    /// More than [`MAX_PAIRS`] metadata pairs.
    TooManyPairs(usize),
    /// The same metadata key appears twice.
    DuplicateKey,
    /// Bytes remain after the last metadata pair.
    TrailingBytes(usize),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::BadMagic => write!(f, "not a discovery announcement (bad magic)"),
            ProtoError::UnsupportedVersion(v) => write!(
                f,
                "unsupported announcement version {v} (this node speaks {VERSION}); upgrade the older node"
            ),
            ProtoError::ReservedFlags(b) => {
                write!(f, "announcement sets reserved flag bits {b:#04x}")
            }
            ProtoError::Truncated => write!(f, "announcement truncated in the middle of a field"),
            ProtoError::TooLong { len } => write!(
                f,
                "announcement of {len} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit; shorten metadata"
            ),
            ProtoError::BadId => write!(
                f,
                "node id must be 1..={MAX_ID_LEN} bytes of UTF-8 without control characters"
            ),
            ProtoError::BadService => write!(
                f,
                "service name must be 0..={MAX_SERVICE_LEN} bytes of UTF-8 without control characters"
            ),
            ProtoError::BadKey => write!(
                f,
                "metadata key must be 1..={MAX_KEY_LEN} bytes of UTF-8 without control characters"
            ),
            ProtoError::BadValue => write!(
                f,
                "metadata value must be 0..={MAX_VALUE_LEN} bytes of UTF-8 without control characters"
            ),
            ProtoError::TooManyPairs(n) => {
                write!(f, "{n} metadata pairs given, at most {MAX_PAIRS} allowed")
            }
            ProtoError::DuplicateKey => write!(f, "metadata key appears more than once"),
            ProtoError::TrailingBytes(n) => {
                write!(f, "{n} unexpected bytes after the end of the announcement")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// Up to [`MAX_PAIRS`] borrowed key/value pairs, stored inline so decoding
/// never allocates.
#[derive(Clone, Copy)]
pub struct Metadata<'a> {
    pairs: [(&'a str, &'a str); MAX_PAIRS],
    len: usize,
}

impl<'a> Metadata<'a> {
    /// No metadata.
    pub const fn empty() -> Self {
        Metadata {
            pairs: [("", ""); MAX_PAIRS],
            len: 0,
        }
    }

    /// Copies `pairs` (only the references) into inline storage. Fails with
    /// [`ProtoError::TooManyPairs`] above [`MAX_PAIRS`]; the contents are
    /// checked later by [`Announcement::validate`] / [`encode`].
    pub fn from_pairs(pairs: &[(&'a str, &'a str)]) -> Result<Self, ProtoError> {
        let mut m = Metadata::empty();
        for &(k, v) in pairs {
            m.push(k, v)?;
        }
        Ok(m)
    }

    /// Appends one pair; fails with [`ProtoError::TooManyPairs`] when full.
    pub fn push(&mut self, key: &'a str, value: &'a str) -> Result<(), ProtoError> {
        match self.pairs.get_mut(self.len) {
            Some(slot) => {
                *slot = (key, value);
                self.len += 1;
                Ok(())
            }
            None => Err(ProtoError::TooManyPairs(self.len.saturating_add(1))),
        }
    }

    /// The pairs in wire order.
    pub fn as_slice(&self) -> &[(&'a str, &'a str)] {
        self.pairs.get(..self.len).unwrap_or(&[])
    }

    /// Iterator over the pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.as_slice().iter().copied()
    }

    /// Value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.iter().find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Metadata<'_> {
    fn default() -> Self {
        Metadata::empty()
    }
}

impl PartialEq for Metadata<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Metadata<'_> {}

impl fmt::Debug for Metadata<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// One node's self-description, borrowing its strings (from the caller when
/// encoding, from the datagram when decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement<'a> {
    /// Stable node id, unique in the cluster.
    pub id: &'a str,
    /// Boot nonce: a fresh random value each time the node process starts,
    /// so peers can tell a restart from a duplicate id.
    pub instance: u64,
    /// Service name offered on `port` (may be empty).
    pub service: &'a str,
    /// TCP port of the service; peers combine it with the datagram's source IP.
    pub port: u16,
    /// The node is shutting down (goodbye datagram).
    pub leaving: bool,
    /// Small key/value metadata.
    pub metadata: Metadata<'a>,
}

impl<'a> Announcement<'a> {
    /// Announcement with no service, no metadata, not leaving.
    pub fn new(id: &'a str, instance: u64, port: u16) -> Self {
        Announcement {
            id,
            instance,
            service: "",
            port,
            leaving: false,
            metadata: Metadata::empty(),
        }
    }

    /// Checks every field limit and returns the encoded length.
    pub fn validate(&self) -> Result<usize, ProtoError> {
        check_text(self.id.as_bytes(), 1, MAX_ID_LEN).map_err(|()| ProtoError::BadId)?;
        check_text(self.service.as_bytes(), 0, MAX_SERVICE_LEN)
            .map_err(|()| ProtoError::BadService)?;
        let pairs = self.metadata.as_slice();
        if pairs.len() > MAX_PAIRS {
            return Err(ProtoError::TooManyPairs(pairs.len()));
        }
        // Lengths are bounded by the checks above, so this sum cannot overflow.
        let mut len = FIXED_HEAD + self.id.len() + 1 + self.service.len() + 1;
        for (i, &(k, v)) in pairs.iter().enumerate() {
            check_text(k.as_bytes(), 1, MAX_KEY_LEN).map_err(|()| ProtoError::BadKey)?;
            check_text(v.as_bytes(), 0, MAX_VALUE_LEN).map_err(|()| ProtoError::BadValue)?;
            if pairs.iter().take(i).any(|&(prev, _)| prev == k) {
                return Err(ProtoError::DuplicateKey);
            }
            len += 1 + k.len() + 1 + v.len();
        }
        if len > MAX_DATAGRAM_LEN {
            return Err(ProtoError::TooLong { len });
        }
        Ok(len)
    }
}

/// Length in bounds, valid UTF-8, no control characters (they would corrupt
/// logs and terminals of whoever prints peer ids).
fn check_text(bytes: &[u8], min: usize, max: usize) -> Result<&str, ()> {
    if bytes.len() < min || bytes.len() > max {
        return Err(());
    }
    let s = std::str::from_utf8(bytes).map_err(|_| ())?;
    if s.chars().any(char::is_control) {
        return Err(());
    }
    Ok(s)
}

/// Appends the encoding of `ann` to `out`.
///
/// Validates first, so on error `out` is left untouched. Reuse one `Vec`
/// (clear it between calls) to avoid allocating per announcement.
pub fn encode(ann: &Announcement<'_>, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let len = ann.validate()?;
    out.reserve(len);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(if ann.leaving { FLAG_LEAVING } else { 0 });
    out.extend_from_slice(&ann.instance.to_be_bytes());
    out.extend_from_slice(&ann.port.to_be_bytes());
    // validate() bounded every length below 256, so the `as u8` casts are exact.
    push_short(out, ann.id.as_bytes());
    push_short(out, ann.service.as_bytes());
    out.push(ann.metadata.len() as u8);
    for (k, v) in ann.metadata.iter() {
        push_short(out, k.as_bytes());
        push_short(out, v.as_bytes());
    }
    Ok(())
}

fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// Cursor over a datagram; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.array::<1>()?[0])
    }

    /// Length-prefixed text validated against `min..=max`.
    fn text(&mut self, min: usize, max: usize, err: ProtoError) -> Result<&'a str, ProtoError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        check_text(bytes, min, max).map_err(|()| err)
    }
}

/// Decodes one whole datagram, borrowing all strings from `datagram`.
///
/// Performs no allocation. Every field is validated with the same limits as
/// [`encode`], so a decoded announcement always re-encodes to the same bytes.
pub fn decode(datagram: &[u8]) -> Result<Announcement<'_>, ProtoError> {
    // Check magic before length so foreign traffic reports BadMagic.
    if datagram.len() >= MAGIC.len() && datagram.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(ProtoError::BadMagic);
    }
    if datagram.len() > MAX_DATAGRAM_LEN {
        return Err(ProtoError::TooLong {
            len: datagram.len(),
        });
    }
    let mut r = Reader { buf: datagram };
    if r.array::<4>()? != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    let flags = r.u8()?;
    if flags & !FLAG_LEAVING != 0 {
        return Err(ProtoError::ReservedFlags(flags & !FLAG_LEAVING));
    }
    let instance = u64::from_be_bytes(r.array()?);
    let port = u16::from_be_bytes(r.array()?);
    let id = r.text(1, MAX_ID_LEN, ProtoError::BadId)?;
    let service = r.text(0, MAX_SERVICE_LEN, ProtoError::BadService)?;
    let count = usize::from(r.u8()?);
    if count > MAX_PAIRS {
        return Err(ProtoError::TooManyPairs(count));
    }
    let mut metadata = Metadata::empty();
    for _ in 0..count {
        let k = r.text(1, MAX_KEY_LEN, ProtoError::BadKey)?;
        let v = r.text(0, MAX_VALUE_LEN, ProtoError::BadValue)?;
        if metadata.get(k).is_some() {
            return Err(ProtoError::DuplicateKey);
        }
        metadata.push(k, v)?;
    }
    if !r.buf.is_empty() {
        return Err(ProtoError::TrailingBytes(r.buf.len()));
    }
    Ok(Announcement {
        id,
        instance,
        service,
        port,
        leaving: flags & FLAG_LEAVING != 0,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Announcement<'static> {
        Announcement {
            id: "node-α",
            instance: 0x0102_0304_0506_0708,
            service: "kv",
            port: 7000,
            leaving: false,
            metadata: Metadata::from_pairs(&[("zone", "eu-1"), ("weight", "")]).unwrap(),
        }
    }

    fn enc(a: &Announcement<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode(a, &mut v).unwrap();
        v
    }

    /// Offset of the byte after id and service for `sample()`-like inputs.
    fn head_len(a: &Announcement<'_>) -> usize {
        FIXED_HEAD + a.id.len() + 1 + a.service.len()
    }

    #[test]
    fn round_trip_sample() {
        let a = sample();
        let bytes = enc(&a);
        assert_eq!(bytes.len(), a.validate().unwrap());
        assert_eq!(&bytes[..4], b"RDSC");
        assert_eq!(bytes[4], VERSION);
        let d = decode(&bytes).unwrap();
        assert_eq!(d, a);
        assert_eq!(d.metadata.get("zone"), Some("eu-1"));
        assert_eq!(d.metadata.get("weight"), Some(""));
        assert_eq!(d.metadata.get("nope"), None);
        assert_eq!(enc(&d), bytes);
    }

    #[test]
    fn round_trip_minimal_and_leaving() {
        let mut a = Announcement::new("x", 0, 0);
        let bytes = enc(&a);
        assert_eq!(bytes.len(), FIXED_HEAD + 1 + 1 + 1);
        assert_eq!(decode(&bytes).unwrap(), a);
        a.leaving = true;
        let bytes = enc(&a);
        assert_eq!(bytes[5], FLAG_LEAVING);
        assert!(decode(&bytes).unwrap().leaving);
    }

    #[test]
    fn round_trip_maximal_fields() {
        let id = "i".repeat(MAX_ID_LEN);
        let svc = "s".repeat(MAX_SERVICE_LEN);
        let keys: Vec<String> = (0..MAX_PAIRS).map(|i| format!("k{i:02}")).collect();
        let val = "v".repeat(40);
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), val.as_str())).collect();
        let a = Announcement {
            id: &id,
            instance: u64::MAX,
            service: &svc,
            port: u16::MAX,
            leaving: false,
            metadata: Metadata::from_pairs(&pairs).unwrap(),
        };
        let bytes = enc(&a);
        assert!(bytes.len() <= MAX_DATAGRAM_LEN);
        assert_eq!(decode(&bytes).unwrap(), a);
    }

    #[test]
    fn encode_appends_and_leaves_out_untouched_on_error() {
        let mut out = vec![9, 9];
        encode(&sample(), &mut out).unwrap();
        assert_eq!(&out[..2], &[9, 9]);
        assert_eq!(decode(&out[2..]).unwrap(), sample());
        let before = out.clone();
        let bad = Announcement::new("", 1, 1);
        assert_eq!(encode(&bad, &mut out), Err(ProtoError::BadId));
        assert_eq!(out, before);
    }

    #[test]
    fn encode_errors() {
        let mut out = Vec::new();
        let mut a = sample();
        let long = "x".repeat(65);
        for bad_id in ["", long.as_str(), "a\nb", "\u{7f}"] {
            a.id = bad_id;
            assert_eq!(encode(&a, &mut out), Err(ProtoError::BadId), "{bad_id:?}");
        }
        a = sample();
        for bad_svc in [long.as_str(), "s\0"] {
            a.service = bad_svc;
            assert_eq!(encode(&a, &mut out), Err(ProtoError::BadService));
        }
        a = sample();
        let long_key = "k".repeat(MAX_KEY_LEN + 1);
        for bad_key in ["", long_key.as_str(), "k\t"] {
            a.metadata = Metadata::from_pairs(&[(bad_key, "v")]).unwrap();
            assert_eq!(encode(&a, &mut out), Err(ProtoError::BadKey));
        }
        let long_val = "v".repeat(MAX_VALUE_LEN + 1);
        for bad_val in [long_val.as_str(), "\u{1b}[31m"] {
            a.metadata = Metadata::from_pairs(&[("k", bad_val)]).unwrap();
            assert_eq!(encode(&a, &mut out), Err(ProtoError::BadValue));
        }
        a.metadata = Metadata::from_pairs(&[("k", "1"), ("k", "2")]).unwrap();
        assert_eq!(encode(&a, &mut out), Err(ProtoError::DuplicateKey));
        // 16 pairs of 255-byte values are individually valid but exceed 1200 bytes.
        let keys: Vec<String> = (0..MAX_PAIRS).map(|i| format!("k{i}")).collect();
        let big = "v".repeat(MAX_VALUE_LEN);
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), big.as_str())).collect();
        a.metadata = Metadata::from_pairs(&pairs).unwrap();
        assert!(matches!(
            encode(&a, &mut out),
            Err(ProtoError::TooLong { len }) if len > MAX_DATAGRAM_LEN
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn metadata_too_many_pairs() {
        let pairs = [("k", "v"); MAX_PAIRS + 1];
        assert_eq!(
            Metadata::from_pairs(&pairs).unwrap_err(),
            ProtoError::TooManyPairs(MAX_PAIRS + 1)
        );
        let mut m = Metadata::from_pairs(&pairs[..MAX_PAIRS]).unwrap();
        assert_eq!(m.len(), MAX_PAIRS);
        assert!(m.push("x", "y").is_err());
        assert!(!m.is_empty());
        assert!(Metadata::default().is_empty());
        assert_eq!(
            format!("{:?}", Metadata::from_pairs(&[("a", "b")]).unwrap()),
            r#"{"a": "b"}"#
        );
    }

    #[test]
    fn decode_bad_magic() {
        let mut b = enc(&sample());
        b[0] = b'X';
        assert_eq!(decode(&b), Err(ProtoError::BadMagic));
        assert_eq!(decode(b"HTTP/1.1 200 OK"), Err(ProtoError::BadMagic));
        // Foreign and huge: still BadMagic, not TooLong.
        assert_eq!(decode(&[0u8; 5000]), Err(ProtoError::BadMagic));
        // Short foreign prefix cannot be judged yet.
        assert_eq!(decode(b"RD"), Err(ProtoError::Truncated));
    }

    #[test]
    fn decode_version_and_flags() {
        let mut b = enc(&sample());
        b[4] = 2;
        assert_eq!(decode(&b), Err(ProtoError::UnsupportedVersion(2)));
        let mut b = enc(&sample());
        b[5] = 0x83;
        assert_eq!(decode(&b), Err(ProtoError::ReservedFlags(0x82)));
    }

    #[test]
    fn decode_every_prefix_is_truncated() {
        let b = enc(&sample());
        for n in 0..b.len() {
            assert_eq!(decode(&b[..n]), Err(ProtoError::Truncated), "prefix {n}");
        }
    }

    #[test]
    fn decode_trailing_and_too_long() {
        let mut b = enc(&sample());
        b.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decode(&b), Err(ProtoError::TrailingBytes(3)));
        b.resize(MAX_DATAGRAM_LEN + 1, 0);
        assert_eq!(
            decode(&b),
            Err(ProtoError::TooLong {
                len: MAX_DATAGRAM_LEN + 1
            })
        );
    }

    #[test]
    fn decode_field_errors() {
        let a = sample();
        let id_len_at = FIXED_HEAD - 1;
        // Empty id.
        let mut b = enc(&Announcement::new("x", 1, 1));
        b[id_len_at] = 0;
        b.remove(id_len_at + 1);
        assert_eq!(decode(&b), Err(ProtoError::BadId));
        // Invalid UTF-8 id.
        let mut b = enc(&a);
        b[id_len_at + 1] = 0xff;
        assert_eq!(decode(&b), Err(ProtoError::BadId));
        // Over-long id length byte (65 bytes present).
        let mut b = enc(&Announcement::new(&"a".repeat(64), 1, 1));
        b[id_len_at] = 65;
        b.insert(id_len_at + 1, b'a');
        assert_eq!(decode(&b), Err(ProtoError::BadId));
        // Control char in service.
        let svc_at = FIXED_HEAD + a.id.len() + 1;
        let mut b = enc(&a);
        b[svc_at] = b'\r';
        assert_eq!(decode(&b), Err(ProtoError::BadService));
        // Too many pairs.
        let count_at = head_len(&a);
        let mut b = enc(&a);
        b[count_at] = 17;
        assert_eq!(decode(&b), Err(ProtoError::TooManyPairs(17)));
        // Key: "zone" -> bad bytes; empty key.
        let key_at = count_at + 2;
        let mut b = enc(&a);
        b[key_at] = 0x07;
        assert_eq!(decode(&b), Err(ProtoError::BadKey));
        let mut b = enc(&Announcement {
            metadata: Metadata::from_pairs(&[("k", "v")]).unwrap(),
            ..Announcement::new("n", 1, 1)
        });
        let kl = FIXED_HEAD + 1 + 1 + 1;
        assert_eq!(b[kl], 1);
        b[kl] = 0;
        b.remove(kl + 1);
        assert_eq!(decode(&b), Err(ProtoError::BadKey));
        // Value: "eu-1" -> invalid UTF-8.
        let val_at = key_at + 4 + 1;
        let mut b = enc(&a);
        assert_eq!(&b[val_at..val_at + 4], b"eu-1");
        b[val_at] = 0xc0;
        assert_eq!(decode(&b), Err(ProtoError::BadValue));
        // Duplicate key: rename "weight" to "zone\0\0" is wrong length; build it directly.
        let dup = Announcement {
            metadata: Metadata::from_pairs(&[("ab", "1"), ("cd", "2")]).unwrap(),
            ..Announcement::new("n", 1, 1)
        };
        let mut b = enc(&dup);
        let second_key = FIXED_HEAD + 1 + 1 + 1 + (1 + 2 + 1 + 1) + 1;
        assert_eq!(&b[second_key..second_key + 2], b"cd");
        b[second_key..second_key + 2].copy_from_slice(b"ab");
        assert_eq!(decode(&b), Err(ProtoError::DuplicateKey));
    }

    #[test]
    fn errors_display_actionable_text() {
        let all = [
            ProtoError::BadMagic,
            ProtoError::UnsupportedVersion(9),
            ProtoError::ReservedFlags(2),
            ProtoError::Truncated,
            ProtoError::TooLong { len: 2000 },
            ProtoError::BadId,
            ProtoError::BadService,
            ProtoError::BadKey,
            ProtoError::BadValue,
            ProtoError::TooManyPairs(20),
            ProtoError::DuplicateKey,
            ProtoError::TrailingBytes(4),
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.len() > 10, "{e:?}: {s}");
            let _: &dyn std::error::Error = &e;
        }
        assert!(
            ProtoError::TooLong { len: 2000 }
                .to_string()
                .contains("2000")
        );
        assert!(ProtoError::UnsupportedVersion(9).to_string().contains('9'));
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            reactor_test_support::fuzz::xorshift(&mut x);
            self.0 = x;
            x
        }
    }

    #[test]
    fn decode_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = enc(&sample());
        let mut buf = Vec::new();
        let mut ok = 0;
        for i in 0..60_000 {
            buf.clear();
            match i % 3 {
                // Pure noise, with the magic header half the time.
                0 => {
                    if rng.next() & 1 == 0 {
                        buf.extend_from_slice(&MAGIC);
                        buf.push(VERSION);
                    }
                    let n = (rng.next() % 1400) as usize;
                    buf.extend((0..n).map(|_| rng.next() as u8));
                }
                // Mutated valid datagram.
                1 => {
                    buf.extend_from_slice(&valid);
                    for _ in 0..(rng.next() % 4 + 1) {
                        let at = (rng.next() as usize) % buf.len();
                        buf[at] = rng.next() as u8;
                    }
                }
                // Truncated or extended valid datagram.
                _ => {
                    buf.extend_from_slice(&valid);
                    let n = (rng.next() as usize) % (valid.len() + 8);
                    buf.resize(n, rng.next() as u8);
                }
            }
            if let Ok(a) = decode(&buf) {
                ok += 1;
                // Anything accepted must re-encode to the identical bytes.
                assert_eq!(enc(&a), buf);
            }
        }
        assert!(ok > 0, "mutations should sometimes stay valid");
    }
}
