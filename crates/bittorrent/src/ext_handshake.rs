//! The BEP 10 extension-handshake fields that metadata exchange (BEP 9) and
//! peer exchange (BEP 11) need: `m` (`ut_metadata`, `ut_pex`),
//! `metadata_size`, `reqq`, `v`, `yourip` and `p`.
//!
//! `reactor`'s `peer_wire::wire` already frames extended messages
//! (`Message::Extended`) and has a small handshake codec (`ExtHandshake`,
//! `encode_ext_handshake`, `decode_ext_handshake`) covering only `m` (as a
//! list of names), `v` and `reqq`; it has no `metadata_size`, `yourip` or `p`.
//! This module works on the *payload* (the bytes after extended id 0), so the
//! caller frames it with `Message::Extended { id: 0, payload }`.
//!
//! Decoding is lenient the way BEP 10 asks: unknown keys are ignored, and a
//! known key with a value of the wrong type or out of range is treated as
//! absent (a later handshake may still set it). The payload itself must be a
//! single bencoded dictionary of at most [`MAX_EXT_HANDSHAKE_LEN`] bytes.
//!
//! This module must not decide policy (e.g. whether a `metadata_size` is
//! plausible: that is [`crate::metadata::MetadataFetcher`]'s job), and must
//! not do I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bencode::{self, BencodeError, DecodeOptions, OwnedValue, Value};

/// Extension name of BEP 9 metadata exchange.
pub const UT_METADATA: &str = "ut_metadata";
/// Extension name of BEP 11 peer exchange.
pub const UT_PEX: &str = "ut_pex";
/// The id we ask peers to use when sending us `ut_metadata` messages (any
/// non-zero id unique among our extensions works; this is libtorrent's).
pub const LOCAL_UT_METADATA_ID: u8 = 2;
/// The id we ask peers to use when sending us `ut_pex` messages (libtorrent's).
pub const LOCAL_UT_PEX_ID: u8 = 1;
/// Largest handshake payload accepted; real ones are a few hundred bytes
/// (the same limit as `wire::MAX_EXT_HANDSHAKE_LEN`).
pub const MAX_EXT_HANDSHAKE_LEN: usize = 16 * 1024;
/// Longest `v` kept, in bytes; longer ones are cut (at a character boundary).
pub const MAX_CLIENT_LEN: usize = 128;

const OPTS: DecodeOptions = DecodeOptions {
    max_depth: 16,
    max_len: MAX_EXT_HANDSHAKE_LEN,
    require_sorted_keys: false,
};

/// The handshake fields this crate reads and writes. `None` means "not in the
/// handshake".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// `m.ut_metadata`: `Some(0)` means the sender disabled it.
    pub ut_metadata: Option<u8>,
    /// `m.ut_pex`: `Some(0)` means the sender disabled it.
    pub ut_pex: Option<u8>,
    /// `metadata_size`: bytes of the info dictionary the sender can serve.
    /// Negative values are dropped; plausibility is the fetcher's call.
    pub metadata_size: Option<u64>,
    /// `reqq`: how many outstanding block requests the sender queues.
    pub reqq: Option<u32>,
    /// `v`: client name and version (lossy UTF-8, at most [`MAX_CLIENT_LEN`] bytes).
    pub client: Option<String>,
    /// `yourip`: the address the sender sees the receiver as.
    pub yourip: Option<IpAddr>,
    /// `p`: the sender's TCP listen port (0 is dropped).
    pub listen_port: Option<u16>,
}

/// Why a handshake payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtHandshakeError {
    /// Longer than [`MAX_EXT_HANDSHAKE_LEN`].
    TooLarge {
        /// The payload's length.
        len: usize,
    },
    /// Not valid bencode (or trailing bytes after the dictionary).
    Bencode(BencodeError),
    /// Valid bencode, but not a dictionary.
    NotADict,
}

impl fmt::Display for ExtHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtHandshakeError::TooLarge { len } => write!(
                f,
                "extension handshake of {len} bytes exceeds the limit of {MAX_EXT_HANDSHAKE_LEN}"
            ),
            ExtHandshakeError::Bencode(e) => write!(f, "invalid extension handshake: {e}"),
            ExtHandshakeError::NotADict => {
                write!(f, "invalid extension handshake: not a dictionary")
            }
        }
    }
}

impl std::error::Error for ExtHandshakeError {}

impl ExtHandshake {
    /// The handshake we send: our ids for both extensions, `metadata_size` if
    /// we have the metadata, our `reqq`, client name, listen port, and the
    /// address we see the peer as.
    pub fn ours(
        metadata_size: Option<u32>,
        reqq: u32,
        client: &str,
        listen_port: Option<u16>,
        peer_ip: Option<IpAddr>,
    ) -> Self {
        ExtHandshake {
            ut_metadata: Some(LOCAL_UT_METADATA_ID),
            ut_pex: Some(LOCAL_UT_PEX_ID),
            metadata_size: metadata_size.map(u64::from),
            reqq: Some(reqq),
            client: Some(client.to_owned()),
            yourip: peer_ip,
            listen_port,
        }
    }

    /// The id to send `ut_metadata` messages to this peer with, if enabled.
    pub fn metadata_id(&self) -> Option<u8> {
        self.ut_metadata.filter(|&id| id != 0)
    }

    /// The id to send `ut_pex` messages to this peer with, if enabled.
    pub fn pex_id(&self) -> Option<u8> {
        self.ut_pex.filter(|&id| id != 0)
    }

    /// Applies a later handshake from the same peer. BEP 10 makes repeated
    /// handshakes additive: fields it carries replace ours (`Some(0)` in `m`
    /// disables an extension), fields it lacks are kept.
    pub fn update(&mut self, later: &ExtHandshake) {
        fn take<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if let Some(v) = src {
                *dst = Some(v.clone());
            }
        }
        take(&mut self.ut_metadata, &later.ut_metadata);
        take(&mut self.ut_pex, &later.ut_pex);
        take(&mut self.metadata_size, &later.metadata_size);
        take(&mut self.reqq, &later.reqq);
        take(&mut self.client, &later.client);
        take(&mut self.yourip, &later.yourip);
        take(&mut self.listen_port, &later.listen_port);
    }

    /// The bencoded payload (keys sorted, as bencode requires). `m` is always
    /// present, possibly empty, since some clients expect it.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = BTreeMap::new();
        if let Some(id) = self.ut_metadata {
            m.insert(UT_METADATA.as_bytes().to_vec(), OwnedValue::Int(id.into()));
        }
        if let Some(id) = self.ut_pex {
            m.insert(UT_PEX.as_bytes().to_vec(), OwnedValue::Int(id.into()));
        }
        let mut d = OwnedValue::dict().insert("m", OwnedValue::Dict(m));
        if let Some(n) = self.metadata_size {
            // Sizes beyond i64 cannot be bencoded; none is plausible anyway.
            if let Ok(n) = i64::try_from(n) {
                d = d.insert("metadata_size", n);
            }
        }
        if let Some(p) = self.listen_port {
            d = d.insert("p", i64::from(p));
        }
        if let Some(q) = self.reqq {
            d = d.insert("reqq", i64::from(q));
        }
        if let Some(v) = &self.client {
            d = d.insert("v", v.as_str());
        }
        if let Some(ip) = self.yourip {
            let raw = match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            d = d.insert("yourip", raw);
        }
        d.to_bytes()
    }
}

/// Parses a handshake payload (the bytes after extended id 0).
pub fn parse_ext_handshake(payload: &[u8]) -> Result<ExtHandshake, ExtHandshakeError> {
    if payload.len() > MAX_EXT_HANDSHAKE_LEN {
        return Err(ExtHandshakeError::TooLarge { len: payload.len() });
    }
    let v = bencode::decode_with(payload, &OPTS).map_err(ExtHandshakeError::Bencode)?;
    if v.as_dict().is_none() {
        return Err(ExtHandshakeError::NotADict);
    }
    let int = |key: &[u8]| v.get(key).and_then(Value::as_int);
    let m_id = |name: &str| {
        v.get(b"m")
            .and_then(|m| m.get(name.as_bytes()))
            .and_then(Value::as_int)
            .and_then(|id| u8::try_from(id).ok())
    };
    Ok(ExtHandshake {
        ut_metadata: m_id(UT_METADATA),
        ut_pex: m_id(UT_PEX),
        metadata_size: int(b"metadata_size").and_then(|n| u64::try_from(n).ok()),
        reqq: int(b"reqq").and_then(|n| u32::try_from(n).ok()),
        client: v.get(b"v").and_then(Value::as_bytes).map(client_name),
        yourip: v.get(b"yourip").and_then(Value::as_bytes).and_then(ip_of),
        listen_port: int(b"p")
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&p| p != 0),
    })
}

fn client_name(raw: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(raw).into_owned();
    if s.len() > MAX_CLIENT_LEN {
        let mut cut = MAX_CLIENT_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn ip_of(raw: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(raw) {
        Some(IpAddr::V4(Ipv4Addr::from(a)))
    } else if let Ok(a) = <[u8; 16]>::try_from(raw) {
        Some(IpAddr::V6(Ipv6Addr::from(a)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ours = ExtHandshake::ours(
            Some(31235),
            2000,
            "reactor 0.1",
            Some(6881),
            Some("203.0.113.7".parse().unwrap()),
        );
        let bytes = ours.encode();
        assert_eq!(
            bytes,
            b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi2000e1:v11:reactor 0.16:yourip4:\xcb\x00\x71\x07e".to_vec()
        );
        assert_eq!(parse_ext_handshake(&bytes).unwrap(), ours);
        let v6 = ExtHandshake {
            yourip: Some("2001:db8::1".parse().unwrap()),
            ..ExtHandshake::default()
        };
        assert_eq!(parse_ext_handshake(&v6.encode()).unwrap(), v6);
        assert_eq!(ExtHandshake::default().encode(), b"d1:mdee".to_vec());
    }

    #[test]
    fn libtorrent_style_handshake() {
        let p = b"d1:ei0e4:ipv416:xxxxxxxxxxxxxxxx12:complete_agoi-1e1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei5678e4:reqqi500e11:upload_onlyi0e1:v17:libtorrent/2.0.9 6:yourip4:\x7f\x00\x00\x01e";
        let hs = parse_ext_handshake(p).unwrap();
        assert_eq!(hs.metadata_id(), Some(2));
        assert_eq!(hs.pex_id(), Some(1));
        assert_eq!(hs.metadata_size, Some(5678));
        assert_eq!(hs.reqq, Some(500));
        assert_eq!(hs.client.as_deref(), Some("libtorrent/2.0.9 "));
        assert_eq!(hs.yourip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(hs.listen_port, None);
    }

    #[test]
    fn wrong_types_are_absent() {
        let p = b"d1:md11:ut_metadatai300e6:ut_pex1:xe13:metadata_sizei-5e1:pi70000e4:reqqi-1e1:vi5e6:yourip3:abce";
        assert_eq!(parse_ext_handshake(p).unwrap(), ExtHandshake::default());
        let p = b"d1:m3:abc1:pi0ee";
        assert_eq!(parse_ext_handshake(p).unwrap(), ExtHandshake::default());
        let long = format!("d1:v{}:{}e", 300, "é".repeat(150));
        let hs = parse_ext_handshake(long.as_bytes()).unwrap();
        assert!(hs.client.unwrap().len() <= MAX_CLIENT_LEN);
    }

    #[test]
    fn disabled_and_update() {
        let mut first = parse_ext_handshake(b"d1:md11:ut_metadatai3e6:ut_pexi4ee1:pi1ee").unwrap();
        let later = parse_ext_handshake(b"d1:md6:ut_pexi0eee").unwrap();
        first.update(&later);
        assert_eq!(first.metadata_id(), Some(3));
        assert_eq!(first.pex_id(), None);
        assert_eq!(first.ut_pex, Some(0));
        assert_eq!(first.listen_port, Some(1));
    }

    #[test]
    fn refused() {
        assert_eq!(
            parse_ext_handshake(b"li1ee"),
            Err(ExtHandshakeError::NotADict)
        );
        assert!(matches!(
            parse_ext_handshake(b"d1:mdee trailing"),
            Err(ExtHandshakeError::Bencode(_))
        ));
        assert!(matches!(
            parse_ext_handshake(b"d1:md"),
            Err(ExtHandshakeError::Bencode(_))
        ));
        let big = vec![b'd'; MAX_EXT_HANDSHAKE_LEN + 1];
        assert!(matches!(
            parse_ext_handshake(&big),
            Err(ExtHandshakeError::TooLarge { .. })
        ));
        let deep = [b"d1:m".repeat(20), b"e".repeat(20)].concat();
        assert!(parse_ext_handshake(&deep).is_err());
        for e in [
            ExtHandshakeError::TooLarge { len: 1 },
            ExtHandshakeError::Bencode(BencodeError::UnexpectedEof),
            ExtHandshakeError::NotADict,
        ] {
            assert!(e.to_string().contains("extension handshake"));
        }
    }
}
