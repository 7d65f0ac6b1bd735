//! BEP 11 peer exchange (`ut_pex`): the message codec and the per-connection
//! state that decides what to send, when, and what to believe.
//!
//! A message is a bencoded dictionary of compact contacts: `added` / `dropped`
//! (6 bytes each: IPv4 + port), `added6` / `dropped6` (18 bytes: IPv6 + port),
//! and one flags byte per added contact in `added.f` / `added6.f`
//! ([`PexFlags`]).
//!
//! **Decoding** ([`PexMessage::decode`]) refuses what is malformed: not a
//! dictionary, a contact list that is not a string or whose length is not a
//! multiple of the entry size, a flags string whose length differs from the
//! number of contacts, a payload above [`MAX_PAYLOAD_LEN`]. What is merely
//! excessive is cut, not refused: beyond [`MAX_DECODED_ADDED`] added and
//! [`MAX_DECODED_DROPPED`] dropped contacts the rest is ignored, because
//! libtorrent sends up to 100 added contacts per message and never caps its
//! dropped list, and refusing those would drop honest peers. Contacts with port
//! 0, duplicates, and contacts both added and dropped in one message are
//! ignored too (BEP 11 forbids the last two). A missing flags string means no
//! flags. IPv4-mapped IPv6 addresses are read as IPv4.
//!
//! **Encoding** ([`PexMessage::encode`]) writes only non-empty lists and
//! refuses an empty message (BEP 11: at least one list; uTorrent disconnects
//! on empty ones) and lists beyond the 50 entries BEP 11 asks senders to keep
//! to ([`MAX_SEND_ADDED`], [`MAX_SEND_DROPPED`]).
//!
//! **[`PexState`]**, one per connection: [`PexState::next_message`] diffs the
//! peers we are connected to against what this peer was last told, at most
//! once per [`MIN_INTERVAL`]; the first message is the current set, capped
//! like every other (the rest follows a minute later). [`PexState::on_message`]
//! takes what the peer sends: more than [`RECV_BURST`] messages within a
//! minute is flooding (libtorrent's rule), at most [`MAX_PEERS_PER_SOURCE`]
//! contacts are believed from one peer (libtorrent's `max_pex_peers`), a
//! `dropped` contact counts only if that same peer added it, and addresses no
//! one should dial (unspecified, multicast, local ones from a non-local peer, a
//! second port of a known IP) are ignored, as BEP 11's security notes ask.
//!
//! This module must not do I/O, read a clock, dial, or decide who is
//! connected: the caller passes `now` and the set of peers it may advertise
//! (BEP 11: only peers with an established connection, with their listen
//! port). It must not be used for private torrents (BEP 27); that check is
//! the caller's.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::BitOr;
use std::time::{Duration, Instant};

use crate::bencode::{self, BencodeError, DecodeOptions, OwnedValue, Value};

/// Largest `ut_pex` payload accepted: far above any real one (100 added and
/// a few hundred dropped IPv6 contacts are under 10 KiB).
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;
/// Added contacts kept from one message (IPv4 and IPv6 together); the rest is ignored.
pub const MAX_DECODED_ADDED: usize = 200;
/// Dropped contacts kept from one message; the rest is ignored.
pub const MAX_DECODED_DROPPED: usize = 200;
/// Added contacts per message we send (BEP 11: "should not exceed 50").
pub const MAX_SEND_ADDED: usize = 50;
/// Dropped contacts per message we send.
pub const MAX_SEND_DROPPED: usize = 50;
/// Least time between two messages to one peer (BEP 11: one per minute).
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Messages accepted from one peer within [`MIN_INTERVAL`] before it counts
/// as flooding. libtorrent tolerates 6, because a rate-limited connection
/// can deliver several queued messages back to back.
pub const RECV_BURST: usize = 6;
/// Contacts believed from one peer at once (libtorrent's `max_pex_peers`
/// default), so one source cannot fill our candidate list.
pub const MAX_PEERS_PER_SOURCE: usize = 50;

const IPV4_LEN: usize = 6;
const IPV6_LEN: usize = 18;

const OPTS: DecodeOptions = DecodeOptions {
    max_depth: 4,
    max_len: MAX_PAYLOAD_LEN,
    require_sorted_keys: false,
};

/// The flags byte of an added contact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// 0x01: prefers encryption (the `e` field of its extension handshake).
    pub const ENCRYPTION: PexFlags = PexFlags(0x01);
    /// 0x02: seed / upload only.
    pub const SEED: PexFlags = PexFlags(0x02);
    /// 0x04: supports uTP.
    pub const UTP: PexFlags = PexFlags(0x04);
    /// 0x08: supports `ut_holepunch`.
    pub const HOLEPUNCH: PexFlags = PexFlags(0x08);
    /// 0x10: reachable (we connected out to it).
    pub const REACHABLE: PexFlags = PexFlags(0x10);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: PexFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for PexFlags {
    type Output = PexFlags;
    fn bitor(self, rhs: PexFlags) -> PexFlags {
        PexFlags(self.0 | rhs.0)
    }
}

/// An added contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PexPeer {
    /// Its listen address.
    pub addr: SocketAddr,
    /// What the sender knows of it.
    pub flags: PexFlags,
}

/// One `ut_pex` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers the sender connected to since its last message (IPv4 and IPv6).
    pub added: Vec<PexPeer>,
    /// Peers the sender disconnected from since its last message.
    pub dropped: Vec<SocketAddr>,
}

/// A decoded message and how many of its contacts were ignored (beyond the
/// caps, duplicates, port 0, both added and dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// What is left of the message.
    pub message: PexMessage,
    /// Contacts ignored.
    pub ignored: usize,
}

/// What a peer's message changes, after [`PexState::on_message`]'s filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexUpdate {
    /// New candidates from this peer.
    pub added: Vec<PexPeer>,
    /// Candidates this peer added earlier and now dropped (a hint only:
    /// other sources may still know them).
    pub dropped: Vec<SocketAddr>,
}

/// Why a `ut_pex` message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PexError {
    /// Payload longer than [`MAX_PAYLOAD_LEN`].
    TooLarge {
        /// The payload's length.
        len: usize,
    },
    /// Not valid bencode (or bytes after the dictionary).
    Bencode(BencodeError),
    /// Valid bencode, but not a dictionary.
    NotADict,
    /// A field of the wrong type or length.
    BadField {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Encoding: more entries than one message may carry.
    TooMany {
        /// `added` or `dropped`.
        list: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Encoding: nothing added or dropped.
    Empty,
    /// The peer sent more than [`RECV_BURST`] messages within [`MIN_INTERVAL`].
    TooFrequent,
}

impl fmt::Display for PexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PexError::TooLarge { len } => write!(
                f,
                "ut_pex message of {len} bytes exceeds the limit of {MAX_PAYLOAD_LEN}"
            ),
            PexError::Bencode(e) => write!(f, "invalid ut_pex message: {e}"),
            PexError::NotADict => write!(f, "invalid ut_pex message: not a dictionary"),
            PexError::BadField { key, reason } => {
                write!(f, "invalid ut_pex message: '{key}' {reason}")
            }
            PexError::TooMany { list, count, limit } => write!(
                f,
                "ut_pex message with {count} {list} contacts exceeds the limit of {limit}"
            ),
            PexError::Empty => write!(f, "ut_pex message with no contacts"),
            PexError::TooFrequent => write!(
                f,
                "peer sent more than {RECV_BURST} ut_pex messages within {} s",
                MIN_INTERVAL.as_secs()
            ),
        }
    }
}

impl std::error::Error for PexError {}

/// A contact list (and its flags) as raw strings, checked for shape.
fn contacts<'a>(dict: &Value<'a>, key: &'static str, stride: usize) -> Result<&'a [u8], PexError> {
    match dict.get(key.as_bytes()) {
        None => Ok(&[]),
        Some(Value::Bytes(b)) if b.len().is_multiple_of(stride) => Ok(b),
        Some(Value::Bytes(_)) => Err(PexError::BadField {
            key,
            reason: "is not a whole number of compact contacts",
        }),
        Some(_) => Err(PexError::BadField {
            key,
            reason: "is not a string",
        }),
    }
}

fn flags_of<'a>(dict: &Value<'a>, key: &'static str, count: usize) -> Result<&'a [u8], PexError> {
    match dict.get(key.as_bytes()) {
        None => Ok(&[]),
        Some(Value::Bytes(b)) if b.len() == count => Ok(b),
        Some(Value::Bytes(_)) => Err(PexError::BadField {
            key,
            reason: "does not have one byte per added contact",
        }),
        Some(_) => Err(PexError::BadField {
            key,
            reason: "is not a string",
        }),
    }
}

fn read_contact(c: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = c.split_at_checked(c.len().checked_sub(2)?)?;
    let port = u16::from_be_bytes(port.try_into().ok()?);
    let ip = if let Ok(a) = <[u8; 4]>::try_from(ip) {
        IpAddr::V4(Ipv4Addr::from(a))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?))
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

fn write_contact(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr.ip().to_canonical() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl PexMessage {
    /// Decodes an extended-message payload (after the extended id). See the
    /// module docs for what is refused and what is ignored.
    pub fn decode(payload: &[u8]) -> Result<Decoded, PexError> {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(PexError::TooLarge { len: payload.len() });
        }
        let dict = bencode::decode_with(payload, &OPTS).map_err(PexError::Bencode)?;
        if dict.as_dict().is_none() {
            return Err(PexError::NotADict);
        }
        let added4 = contacts(&dict, "added", IPV4_LEN)?;
        let added6 = contacts(&dict, "added6", IPV6_LEN)?;
        let dropped4 = contacts(&dict, "dropped", IPV4_LEN)?;
        let dropped6 = contacts(&dict, "dropped6", IPV6_LEN)?;
        let flags4 = flags_of(&dict, "added.f", added4.len() / IPV4_LEN)?;
        let flags6 = flags_of(&dict, "added6.f", added6.len() / IPV6_LEN)?;

        let total =
            (added4.len() + dropped4.len()) / IPV4_LEN + (added6.len() + dropped6.len()) / IPV6_LEN;

        let valid = |c: &[u8]| read_contact(c).filter(|a| a.port() != 0);
        let mut dropped_set = HashSet::new();
        let dropped: Vec<SocketAddr> = dropped4
            .chunks_exact(IPV4_LEN)
            .chain(dropped6.chunks_exact(IPV6_LEN))
            .filter_map(valid)
            .filter(|a| dropped_set.insert(*a))
            .collect();
        let flags = |f: &[u8], i: usize| PexFlags(f.get(i).copied().unwrap_or(0));
        let mut added_set = HashSet::new();
        let mut contradicted = HashSet::new();
        let mut added = Vec::new();
        let candidates = added4
            .chunks_exact(IPV4_LEN)
            .enumerate()
            .map(|(i, c)| (c, flags(flags4, i)))
            .chain(
                added6
                    .chunks_exact(IPV6_LEN)
                    .enumerate()
                    .map(|(i, c)| (c, flags(flags6, i))),
            );
        for (c, flags) in candidates {
            let Some(addr) = valid(c) else { continue };
            if !added_set.insert(addr) {
                continue;
            }
            if dropped_set.contains(&addr) {
                // Added and dropped at once contradicts itself: believe neither.
                contradicted.insert(addr);
            } else if added.len() < MAX_DECODED_ADDED {
                added.push(PexPeer { addr, flags });
            }
        }
        let mut dropped: Vec<SocketAddr> = dropped
            .into_iter()
            .filter(|a| !contradicted.contains(a))
            .collect();
        dropped.truncate(MAX_DECODED_DROPPED);
        Ok(Decoded {
            ignored: total - added.len() - dropped.len(),
            message: PexMessage { added, dropped },
        })
    }

    /// Appends the payload to `out`: only the non-empty lists, flags after
    /// each added list, keys sorted.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), PexError> {
        if self.added.is_empty() && self.dropped.is_empty() {
            return Err(PexError::Empty);
        }
        if self.added.len() > MAX_SEND_ADDED {
            return Err(PexError::TooMany {
                list: "added",
                count: self.added.len(),
                limit: MAX_SEND_ADDED,
            });
        }
        if self.dropped.len() > MAX_SEND_DROPPED {
            return Err(PexError::TooMany {
                list: "dropped",
                count: self.dropped.len(),
                limit: MAX_SEND_DROPPED,
            });
        }
        let (mut a4, mut f4, mut a6, mut f6, mut d4, mut d6) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for p in &self.added {
            let (list, flags) = if p.addr.ip().to_canonical().is_ipv4() {
                (&mut a4, &mut f4)
            } else {
                (&mut a6, &mut f6)
            };
            write_contact(&p.addr, list);
            flags.push(p.flags.0);
        }
        for a in &self.dropped {
            let list = if a.ip().to_canonical().is_ipv4() {
                &mut d4
            } else {
                &mut d6
            };
            write_contact(a, list);
        }
        let mut d = OwnedValue::dict();
        for (key, v) in [
            ("added", a4),
            ("added.f", f4),
            ("added6", a6),
            ("added6.f", f6),
            ("dropped", d4),
            ("dropped6", d6),
        ] {
            if !v.is_empty() {
                d = d.insert(key, v);
            }
        }
        d.encode(out);
        Ok(())
    }
}

/// Not worth dialling from anyone's advertisement.
fn undialable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    }
}

/// On the local machine or network: only a peer there may advertise it.
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() || a.is_private() || a.is_link_local(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local(),
    }
}

/// PEX state of one connection (see the module docs).
#[derive(Debug, Clone)]
pub struct PexState {
    remote: SocketAddr,
    /// What this peer was told we are connected to (added minus dropped).
    advertised: HashSet<SocketAddr>,
    last_sent: Option<Instant>,
    /// Arrival times of its last [`RECV_BURST`] messages.
    received: VecDeque<Instant>,
    /// Contacts it added and has not dropped (at most [`MAX_PEERS_PER_SOURCE`]).
    learned: Vec<SocketAddr>,
}

impl PexState {
    /// State for the connection to `remote` (its address as we know it; it is
    /// never advertised to itself, and decides whether local addresses it
    /// sends are believed).
    pub fn new(remote: SocketAddr) -> Self {
        PexState {
            remote: canonical(remote),
            advertised: HashSet::new(),
            last_sent: None,
            received: VecDeque::with_capacity(RECV_BURST),
            learned: Vec::new(),
        }
    }

    /// When [`PexState::next_message`] may send again (`None`: now).
    pub fn next_due(&self) -> Option<Instant> {
        self.last_sent.map(|t| t + MIN_INTERVAL)
    }

    /// The message to send now, if one is due and something changed.
    /// `connected` is every peer we may advertise (established connections,
    /// with their listen address and flags), in the order to prefer when
    /// more than [`MAX_SEND_ADDED`] are new. The first message is the whole
    /// set (capped); later ones the difference to what this peer was told.
    /// Nothing is sent, and the interval does not restart, when nothing changed.
    pub fn next_message(&mut self, connected: &[PexPeer], now: Instant) -> Option<PexMessage> {
        if self.next_due().is_some_and(|t| now < t) {
            return None;
        }
        let mut current: HashSet<SocketAddr> = HashSet::with_capacity(connected.len());
        let mut added = Vec::new();
        for p in connected {
            let addr = canonical(p.addr);
            if addr == self.remote || addr.port() == 0 || !current.insert(addr) {
                continue;
            }
            if !self.advertised.contains(&addr) && added.len() < MAX_SEND_ADDED {
                added.push(PexPeer {
                    addr,
                    flags: p.flags,
                });
            }
        }
        let mut dropped: Vec<SocketAddr> = self
            .advertised
            .iter()
            .filter(|a| !current.contains(a))
            .copied()
            .collect();
        // HashSet order is arbitrary; sort so the cap keeps a stable subset.
        dropped.sort_unstable();
        dropped.truncate(MAX_SEND_DROPPED);
        if added.is_empty() && dropped.is_empty() {
            return None;
        }
        for a in &dropped {
            self.advertised.remove(a);
        }
        self.advertised.extend(added.iter().map(|p| p.addr));
        self.last_sent = Some(now);
        Some(PexMessage { added, dropped })
    }

    /// Takes a decoded message from this peer. Errors with
    /// [`PexError::TooFrequent`] (close the connection) on flooding;
    /// otherwise returns the new candidates and the withdrawn ones.
    pub fn on_message(&mut self, msg: &PexMessage, now: Instant) -> Result<PexUpdate, PexError> {
        if self.received.len() >= RECV_BURST {
            if self
                .received
                .front()
                .is_some_and(|&t| now < t + MIN_INTERVAL)
            {
                return Err(PexError::TooFrequent);
            }
            self.received.pop_front();
        }
        self.received.push_back(now);

        let mut update = PexUpdate::default();
        for a in &msg.dropped {
            let a = canonical(*a);
            if let Some(i) = self.learned.iter().position(|l| *l == a) {
                self.learned.swap_remove(i);
                update.dropped.push(a);
            }
        }
        let remote_local = is_local(self.remote.ip());
        for p in &msg.added {
            let addr = canonical(p.addr);
            let ip = addr.ip();
            if self.learned.len() >= MAX_PEERS_PER_SOURCE {
                break;
            }
            if addr == self.remote
                || addr.port() == 0
                || undialable(ip)
                || (is_local(ip) && !remote_local)
                // A second port of a known IP: BEP 11 says to ignore it. Not on
                // loopback, where every process on the machine shares the address
                // (as for bans, `peers::PeerManager`).
                || (!ip.is_loopback() && self.learned.iter().any(|l| l.ip() == ip))
                || self.learned.contains(&addr)
            {
                continue;
            }
            self.learned.push(addr);
            update.added.push(PexPeer {
                addr,
                flags: p.flags,
            });
        }
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn peer(s: &str, f: u8) -> PexPeer {
        PexPeer {
            addr: v4(s),
            flags: PexFlags(f),
        }
    }

    use reactor_test_support::fuzz::xorshift;

    #[test]
    fn encode_exact_bytes_and_round_trip() {
        let msg = PexMessage {
            added: vec![
                peer("1.2.3.4:6881", 0x12),
                peer("[2001:db8::1]:80", 0x01),
                peer("[::ffff:5.6.7.8]:1", 0),
            ],
            dropped: vec![v4("9.9.9.9:257"), v4("[2001:db8::2]:2")],
        };
        let mut out = Vec::new();
        msg.encode(&mut out).unwrap();
        let mut want = b"d5:added12:\x01\x02\x03\x04\x1a\xe1\x05\x06\x07\x08\x00\x017:added.f2:\x12\x006:added618:".to_vec();
        want.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(
            b"\x00\x508:added6.f1:\x017:dropped6:\x09\x09\x09\x09\x01\x018:dropped618:",
        );
        want.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(b"\x00\x02e");
        assert_eq!(out, want);
        let back = PexMessage::decode(&out).unwrap();
        assert_eq!(back.ignored, 0);
        // Mapped addresses come back as IPv4; v4 entries precede v6 ones.
        assert_eq!(
            back.message.added,
            vec![
                peer("1.2.3.4:6881", 0x12),
                peer("5.6.7.8:1", 0),
                peer("[2001:db8::1]:80", 0x01),
            ]
        );
        assert_eq!(back.message.dropped, msg.dropped);
        // Only the lists that are there are written.
        let mut out = Vec::new();
        PexMessage {
            added: vec![],
            dropped: vec![v4("1.1.1.1:1")],
        }
        .encode(&mut out)
        .unwrap();
        assert_eq!(out, b"d7:dropped6:\x01\x01\x01\x01\x00\x01e");
    }

    #[test]
    fn encode_refuses_empty_and_oversize() {
        let mut out = Vec::new();
        assert_eq!(PexMessage::default().encode(&mut out), Err(PexError::Empty));
        let many: Vec<PexPeer> = (0..=MAX_SEND_ADDED as u16)
            .map(|i| PexPeer {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), i + 1),
                flags: PexFlags::default(),
            })
            .collect();
        assert!(matches!(
            PexMessage {
                added: many.clone(),
                dropped: vec![]
            }
            .encode(&mut out),
            Err(PexError::TooMany { list: "added", .. })
        ));
        assert!(matches!(
            PexMessage {
                added: vec![],
                dropped: many.iter().map(|p| p.addr).collect()
            }
            .encode(&mut out),
            Err(PexError::TooMany {
                list: "dropped",
                ..
            })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn decode_refuses_malformed() {
        let e = |b: &[u8]| PexMessage::decode(b).unwrap_err();
        assert_eq!(e(b"le"), PexError::NotADict);
        assert!(matches!(e(b"d5:added"), PexError::Bencode(_)));
        assert!(matches!(e(b"de1"), PexError::Bencode(_)));
        assert!(matches!(
            e(b"d5:added5:12345e"),
            PexError::BadField { key: "added", .. }
        ));
        assert!(matches!(
            e(b"d6:added66:123456e"),
            PexError::BadField { key: "added6", .. }
        ));
        assert!(matches!(
            e(b"d7:dropped7:1234567e"),
            PexError::BadField { key: "dropped", .. }
        ));
        assert!(matches!(
            e(b"d8:dropped6i5ee"),
            PexError::BadField {
                key: "dropped6",
                ..
            }
        ));
        assert!(matches!(
            e(b"d5:added6:1234567:added.f2:abe"),
            PexError::BadField { key: "added.f", .. }
        ));
        assert!(matches!(
            e(b"d5:added6:1234567:added.fi1ee"),
            PexError::BadField { key: "added.f", .. }
        ));
        assert!(matches!(
            e(b"d8:added6.f1:xe"),
            PexError::BadField {
                key: "added6.f",
                ..
            }
        ));
        let big = vec![b'd'; MAX_PAYLOAD_LEN + 1];
        assert_eq!(
            e(&big),
            PexError::TooLarge {
                len: MAX_PAYLOAD_LEN + 1
            }
        );
        for err in [
            PexError::TooLarge { len: 1 },
            PexError::Bencode(BencodeError::UnexpectedEof),
            PexError::NotADict,
            PexError::BadField {
                key: "added",
                reason: "x",
            },
            PexError::TooMany {
                list: "added",
                count: 51,
                limit: 50,
            },
            PexError::Empty,
            PexError::TooFrequent,
        ] {
            assert!(err.to_string().contains("ut_pex"), "{err}");
        }
    }

    #[test]
    fn decode_is_tolerant_where_it_can_be() {
        // libtorrent's empty lists, no flags, unknown keys, empty dict.
        let d = PexMessage::decode(b"d5:added0:7:added.f0:7:dropped0:1:xi1ee").unwrap();
        assert_eq!(d, Decoded::default());
        let d = PexMessage::decode(b"d5:added6:\x01\x02\x03\x04\x00\x05e").unwrap();
        assert_eq!(d.message.added, vec![peer("1.2.3.4:5", 0)]);
        // Port 0, a duplicate, and one both added and dropped are ignored.
        let d = PexMessage::decode(
            b"d5:added18:\x01\x01\x01\x01\x00\x00\x02\x02\x02\x02\x00\x02\x02\x02\x02\x02\x00\x027:dropped12:\x03\x03\x03\x03\x00\x03\x02\x02\x02\x02\x00\x02e",
        )
        .unwrap();
        assert!(d.message.added.is_empty());
        assert_eq!(d.message.dropped, vec![v4("3.3.3.3:3")]);
        assert_eq!(d.ignored, 4);
    }

    #[test]
    fn decode_caps_what_it_keeps() {
        let mut a = Vec::new();
        let mut dr = Vec::new();
        for i in 0..300u32 {
            a.extend_from_slice(&(0x0b00_0000 + i).to_be_bytes());
            a.extend_from_slice(&[0, 1]);
            dr.extend_from_slice(&(0x0c00_0000 + i).to_be_bytes());
            dr.extend_from_slice(&[0, 1]);
        }
        let mut payload = b"d5:added".to_vec();
        payload.extend_from_slice(format!("{}:", a.len()).as_bytes());
        payload.extend_from_slice(&a);
        payload.extend_from_slice(format!("7:dropped{}:", dr.len()).as_bytes());
        payload.extend_from_slice(&dr);
        payload.push(b'e');
        let d = PexMessage::decode(&payload).unwrap();
        assert_eq!(d.message.added.len(), MAX_DECODED_ADDED);
        assert_eq!(d.message.dropped.len(), MAX_DECODED_DROPPED);
        assert_eq!(d.ignored, 200);
    }

    #[test]
    fn decoder_fuzz_never_panics() {
        let mut st = 0xA076_1D64_78BD_642Fu64;
        let mut seed = Vec::new();
        PexMessage {
            added: vec![peer("1.2.3.4:1", 1), peer("[::2]:2", 2)],
            dropped: vec![v4("5.6.7.8:3"), v4("[::9]:4")],
        }
        .encode(&mut seed)
        .unwrap();
        let mut ok = 0;
        for _ in 0..30_000 {
            let mut b = seed.clone();
            for _ in 0..1 + xorshift(&mut st) % 3 {
                let r = xorshift(&mut st);
                let at = (r as usize >> 8) % (b.len() + 1);
                match r % 4 {
                    0 if at < b.len() => b[at] = (r >> 32) as u8,
                    1 => b.insert(at, b"0123456789:ed"[(r >> 40) as usize % 13]),
                    2 if at < b.len() => {
                        b.remove(at);
                    }
                    _ => b.truncate(at),
                }
            }
            if let Ok(d) = PexMessage::decode(&b) {
                ok += 1;
                assert!(d.message.added.len() <= MAX_DECODED_ADDED);
                let mut st2 = PexState::new(v4("7.7.7.7:7"));
                let _ = st2.on_message(&d.message, Instant::now());
            }
        }
        assert!(ok > 1000, "only {ok} decoded");
    }

    #[test]
    fn first_message_is_the_full_set_then_diffs_once_a_minute() {
        let t0 = Instant::now();
        let me = v4("9.9.9.9:9");
        let mut st = PexState::new(me);
        let connected = vec![
            peer("1.1.1.1:1", PexFlags::SEED.0),
            peer("9.9.9.9:9", 0), // the peer itself
            peer("2.2.2.2:2", 0),
            peer("2.2.2.2:2", 0), // duplicate
            peer("3.3.3.3:0", 0), // no listen port
        ];
        let first = st.next_message(&connected, t0).unwrap();
        assert_eq!(
            first.added,
            vec![peer("1.1.1.1:1", 2), peer("2.2.2.2:2", 0)]
        );
        assert!(first.dropped.is_empty());
        assert_eq!(st.next_due(), Some(t0 + MIN_INTERVAL));
        // Changes within the minute wait.
        let later = vec![peer("2.2.2.2:2", 0), peer("4.4.4.4:4", 0)];
        assert_eq!(st.next_message(&later, t0 + MIN_INTERVAL / 2), None);
        let second = st.next_message(&later, t0 + MIN_INTERVAL).unwrap();
        assert_eq!(second.added, vec![peer("4.4.4.4:4", 0)]);
        assert_eq!(second.dropped, vec![v4("1.1.1.1:1")]);
        // No change: nothing sent, and the clock does not restart.
        let t2 = t0 + MIN_INTERVAL * 2;
        assert_eq!(st.next_message(&later, t2), None);
        assert_eq!(st.next_due(), Some(t0 + MIN_INTERVAL * 2));
        // A transient connect-disconnect between messages is elided.
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(st.next_message(&later, t3), None);
        // Everything dropped.
        let last = st.next_message(&[], t3).unwrap();
        assert!(last.added.is_empty());
        assert_eq!(last.dropped.len(), 2);
        // Encodable, and what the other side decodes is what we meant.
        for m in [&first, &second, &last] {
            let mut b = Vec::new();
            m.encode(&mut b).unwrap();
            assert_eq!(&PexMessage::decode(&b).unwrap().message, m);
        }
    }

    #[test]
    fn large_sets_go_out_fifty_at_a_time() {
        let t0 = Instant::now();
        let mut st = PexState::new(v4("9.9.9.9:9"));
        let all: Vec<PexPeer> = (1..=120u16)
            .map(|i| PexPeer {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)), i),
                flags: PexFlags::default(),
            })
            .collect();
        let mut told = HashSet::new();
        let mut t = t0;
        for expect in [50, 50, 20] {
            let m = st.next_message(&all, t).unwrap();
            assert_eq!(m.added.len(), expect);
            told.extend(m.added.iter().map(|p| p.addr));
            t += MIN_INTERVAL;
        }
        assert_eq!(told.len(), 120);
        assert_eq!(st.next_message(&all, t), None);
        let m = st.next_message(&all[..10], t + MIN_INTERVAL).unwrap();
        assert_eq!(m.dropped.len(), MAX_SEND_DROPPED);
        // The rest of the drops follow next time.
        let m = st.next_message(&all[..10], t + MIN_INTERVAL * 2).unwrap();
        assert_eq!(m.dropped.len(), 50);
        let m = st.next_message(&all[..10], t + MIN_INTERVAL * 3).unwrap();
        assert_eq!(m.dropped.len(), 10);
        assert_eq!(st.next_message(&all[..10], t + MIN_INTERVAL * 4), None);
    }

    #[test]
    fn received_messages_are_filtered() {
        let t0 = Instant::now();
        let mut st = PexState::new(v4("8.8.8.8:1"));
        let msg = PexMessage {
            added: vec![
                peer("1.1.1.1:1", 0x10),
                peer("1.1.1.1:2", 0),     // second port of a known IP
                peer("8.8.8.8:1", 0),     // the sender itself
                peer("0.0.0.0:5", 0),     // unspecified
                peer("224.0.0.1:5", 0),   // multicast
                peer("192.168.1.2:5", 0), // local, from a public peer
                peer("127.0.0.1:5", 0),
                peer("[fe80::1]:5", 0),
                peer("[2001:db8::5]:5", 0),
            ],
            dropped: vec![v4("5.5.5.5:5")], // never added by it: ignored
        };
        let u = st.on_message(&msg, t0).unwrap();
        assert_eq!(
            u.added,
            vec![peer("1.1.1.1:1", 0x10), peer("[2001:db8::5]:5", 0)]
        );
        assert!(u.dropped.is_empty());
        // Already known: not new.
        let again = PexMessage {
            added: vec![peer("1.1.1.1:1", 0)],
            dropped: vec![],
        };
        assert!(st.on_message(&again, t0).unwrap().added.is_empty());
        // Dropped by its adder: withdrawn.
        let drop = PexMessage {
            added: vec![],
            dropped: vec![v4("1.1.1.1:1")],
        };
        assert_eq!(
            st.on_message(&drop, t0).unwrap().dropped,
            vec![v4("1.1.1.1:1")]
        );
        // A local peer may advertise local addresses.
        let mut lan = PexState::new(v4("192.168.1.1:1"));
        let u = lan
            .on_message(
                &PexMessage {
                    added: vec![peer("192.168.1.2:5", 0)],
                    dropped: vec![],
                },
                t0,
            )
            .unwrap();
        assert_eq!(u.added.len(), 1);
    }

    #[test]
    fn one_source_is_believed_only_so_far() {
        let t0 = Instant::now();
        let mut st = PexState::new(v4("8.8.8.8:1"));
        let mut total = 0;
        for round in 0..3u8 {
            let added: Vec<PexPeer> = (0..40u8)
                .map(|i| peer(&format!("11.{round}.0.{i}:1"), 0))
                .collect();
            let u = st
                .on_message(
                    &PexMessage {
                        added,
                        dropped: vec![],
                    },
                    t0 + MIN_INTERVAL * u32::from(round),
                )
                .unwrap();
            total += u.added.len();
        }
        assert_eq!(total, MAX_PEERS_PER_SOURCE);
        // Dropping one makes room for one.
        let u = st
            .on_message(
                &PexMessage {
                    added: vec![peer("12.0.0.1:1", 0), peer("12.0.0.2:1", 0)],
                    dropped: vec![v4("11.0.0.0:1")],
                },
                t0 + MIN_INTERVAL * 3,
            )
            .unwrap();
        assert_eq!(u.dropped.len(), 1);
        assert_eq!(u.added, vec![peer("12.0.0.1:1", 0)]);
    }

    #[test]
    fn flooding_is_detected() {
        let t0 = Instant::now();
        let mut st = PexState::new(v4("8.8.8.8:1"));
        let m = PexMessage::default();
        for i in 0..RECV_BURST as u32 {
            st.on_message(&m, t0 + Duration::from_secs(i.into()))
                .unwrap();
        }
        assert_eq!(
            st.on_message(&m, t0 + Duration::from_secs(30)),
            Err(PexError::TooFrequent)
        );
        // Once the oldest is a minute old, one more is fine.
        assert!(st.on_message(&m, t0 + MIN_INTERVAL).is_ok());
        // One a minute forever is fine.
        let mut calm = PexState::new(v4("8.8.8.8:1"));
        for i in 0..100 {
            calm.on_message(&m, t0 + MIN_INTERVAL * i).unwrap();
        }
    }

    #[test]
    fn flags() {
        let f = PexFlags::SEED | PexFlags::REACHABLE;
        assert_eq!(f, PexFlags(0x12));
        assert!(f.contains(PexFlags::SEED));
        assert!(!f.contains(PexFlags::UTP));
        assert!(!f.contains(PexFlags::SEED | PexFlags::ENCRYPTION));
        assert_eq!(PexFlags::HOLEPUNCH.0, 0x08);
        assert_eq!(PexFlags::ENCRYPTION.0, 0x01);
        assert_eq!(PexFlags::UTP.0, 0x04);
    }

    #[test]
    fn loopback_peers_are_told_apart_by_port() {
        let now = Instant::now();
        let mut st = PexState::new(v4("127.0.0.1:7000"));
        let msg = PexMessage {
            added: vec![peer("127.0.0.1:7001", 0), peer("127.0.0.1:7002", 0)],
            dropped: vec![],
        };
        let up = st.on_message(&msg, now).unwrap();
        assert_eq!(up.added.len(), 2, "two loopback peers on two ports");
        // Off loopback a second port of a known IP is still ignored.
        let mut st = PexState::new(v4("10.0.0.1:7000"));
        let msg = PexMessage {
            added: vec![peer("10.0.0.9:7001", 0), peer("10.0.0.9:7002", 0)],
            dropped: vec![],
        };
        assert_eq!(st.on_message(&msg, now).unwrap().added.len(), 1);
    }
}
