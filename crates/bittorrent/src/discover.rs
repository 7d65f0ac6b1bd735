//! BitTorrent peers finding each other by LAN discovery (`peer seed|leech
//! --discover`): what a peer announces, and which announcements of others become
//! peers to dial.
//!
//! A peer announces the service [`SERVICE`] (`"bittorrent"`), the TCP port it
//! accepts peers on (0 when it does not listen) and one metadata pair,
//! [`INFO_HASH_KEY`] (`"ih"`) = the torrent's info-hash in 40 lowercase hex digits.
//! One announcement per torrent, so a node id is per torrent and per process
//! ([`DiscoverySettings::config`] builds it from the random part of the peer id).
//!
//! The crate-internal `Candidates` is sans-io: fed the [`PeerEvent`]s of the
//! discovery service, it tells the engine which addresses to add to the peer
//! manager and which to withdraw, so the matching rules are tested without sockets. The engine in
//! [`super::torrent`] owns the socket (a [`reactor_discovery::DiscoveryHandler`]
//! child) and applies the changes; dedup, connection limits and the back-off for
//! useless peers are the peer manager's, exactly as for `--peer` and tracker peers.
//!
//! This module must not touch sockets or the clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reactor_discovery::{DEFAULT_BROADCAST, DEFAULT_PORT, DiscoveryConfig, PeerEvent};

/// The service name BitTorrent peers announce.
pub const SERVICE: &str = "bittorrent";

/// The metadata key holding the announced info-hash (40 lowercase hex digits).
pub const INFO_HASH_KEY: &str = "ih";

/// Where and how often a torrent announces itself: the parts of a
/// [`DiscoveryConfig`] a user chooses. The rest (node id, service, TCP port,
/// metadata) follows from the torrent and is filled in by
/// [`DiscoverySettings::config`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoverySettings {
    /// The UDP port shared by every node (default 7979; 0 lets the OS pick one,
    /// which is logged and must then be given to the other nodes).
    pub port: u16,
    /// Where announcements go (IPv4; default `127.255.255.255`, this host only).
    pub broadcast: IpAddr,
    /// The address to bind (`None`: see [`DiscoveryConfig::bind`]).
    pub bind: Option<IpAddr>,
    /// Nominal time between announcements (jittered by ±25 %). A newcomer learns
    /// of a peer when that peer next announces, so this bounds the time to find one.
    pub interval: Duration,
    /// A silent peer is forgotten after this long (`None`: 3 intervals).
    pub ttl: Option<Duration>,
}

impl Default for DiscoverySettings {
    fn default() -> DiscoverySettings {
        DiscoverySettings {
            port: DEFAULT_PORT,
            broadcast: DEFAULT_BROADCAST,
            bind: None,
            interval: Duration::from_secs(1),
            ttl: None,
        }
    }
}

impl DiscoverySettings {
    /// The discovery configuration of one torrent: node id `bt-ROLE-HEX` (ROLE is
    /// `seed` or `leech`, HEX the random part of the peer id, so two processes
    /// never share an id, which the table would treat as a conflict), service
    /// [`SERVICE`], `tcp_port` (0 when not listening) and the info-hash metadata.
    pub fn config(
        &self,
        role: &str,
        peer_id: &[u8; 20],
        info_hash: &[u8; 20],
        tcp_port: u16,
    ) -> DiscoveryConfig {
        // The first 8 bytes are the client tag ("-RE0100-"), the same everywhere.
        let mut cfg = DiscoveryConfig::new(format!("bt-{role}-{}", hex(&peer_id[8..])));
        cfg.service = SERVICE.into();
        cfg.tcp_port = tcp_port;
        cfg.metadata = vec![(INFO_HASH_KEY.into(), hex(info_hash))];
        cfg.port = self.port;
        cfg.broadcast = self.broadcast;
        cfg.bind = self.bind;
        cfg.interval = self.interval;
        cfg.ttl = self.ttl;
        cfg
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// What the peer manager should do after a discovery event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A node serving our torrent is at this address: a dial candidate (the peer
    /// manager dedups it and keeps its history if already known).
    Add(SocketAddr),
    /// No node announces this address any more: stop dialling it (unless it is
    /// connected; an open connection decides for itself).
    Withdraw(SocketAddr),
}

/// The nodes that announce our torrent, by node id (see the module docs).
///
/// Bounded by the discovery table it is fed from (`max_peers`): only ids that
/// table reports are ever inserted, and its `Left` events remove them.
#[derive(Debug)]
pub(crate) struct Candidates {
    info_hash: String,
    by_id: HashMap<String, SocketAddr>,
}

impl Candidates {
    /// Candidates for the torrent with this info-hash.
    pub(crate) fn new(info_hash: &[u8; 20]) -> Candidates {
        Candidates {
            info_hash: hex(info_hash),
            by_id: HashMap::new(),
        }
    }

    /// True if an announcement of `service` with `metadata` is our torrent.
    pub(crate) fn matches(&self, service: &str, metadata: &[(String, String)]) -> bool {
        service == SERVICE
            && metadata
                .iter()
                .any(|(k, v)| k == INFO_HASH_KEY && v.eq_ignore_ascii_case(&self.info_hash))
    }

    /// Appends to `out` the changes `ev` calls for. Joined, restarted and updated
    /// nodes announcing our torrent with a nonzero port are added; a node that
    /// left, moved to another address, or now announces something else has its old
    /// address withdrawn (unless another node still announces it). Other events
    /// change nothing.
    pub(crate) fn on_event(&mut self, ev: &PeerEvent, out: &mut Vec<Change>) {
        match ev {
            PeerEvent::Joined {
                id,
                addr,
                service,
                metadata,
                ..
            }
            | PeerEvent::Restarted {
                id,
                addr,
                service,
                metadata,
                ..
            }
            | PeerEvent::Updated {
                id,
                addr,
                service,
                metadata,
                ..
            } => {
                let ours = addr.port() != 0 && self.matches(service, metadata);
                let old = if ours {
                    self.by_id.insert(id.clone(), *addr)
                } else {
                    self.by_id.remove(id)
                };
                if let Some(old) = old
                    && (!ours || old != *addr)
                {
                    self.withdraw(old, out);
                }
                if ours {
                    out.push(Change::Add(*addr));
                }
            }
            PeerEvent::Left { id } => {
                if let Some(old) = self.by_id.remove(id) {
                    self.withdraw(old, out);
                }
            }
            PeerEvent::Conflict { .. } => {}
        }
    }

    fn withdraw(&self, addr: SocketAddr, out: &mut Vec<Change>) {
        if !self.by_id.values().any(|a| *a == addr) {
            out.push(Change::Withdraw(addr));
        }
    }

    /// Nodes currently announcing our torrent.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IH: [u8; 20] = [0xab; 20];

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn meta(ih: &str) -> Vec<(String, String)> {
        vec![("v".into(), "1".into()), (INFO_HASH_KEY.into(), ih.into())]
    }

    fn joined(id: &str, port: u16, service: &str, ih: &str) -> PeerEvent {
        PeerEvent::Joined {
            id: id.into(),
            instance: 1,
            addr: addr(port),
            service: service.into(),
            metadata: meta(ih),
        }
    }

    fn changes(c: &mut Candidates, ev: PeerEvent) -> Vec<Change> {
        let mut out = Vec::new();
        c.on_event(&ev, &mut out);
        out
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_per_byte() {
        assert_eq!(hex(&[0, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&IH).len(), 40);
    }

    #[test]
    fn config_carries_service_port_and_info_hash() {
        let s = DiscoverySettings {
            port: 0,
            interval: Duration::from_millis(200),
            ..DiscoverySettings::default()
        };
        let pid = *b"-RE0100-abcdefghijkl";
        let c = s.config("seed", &pid, &IH, 6881);
        assert_eq!(c.id, format!("bt-seed-{}", hex(b"abcdefghijkl")));
        assert_eq!(c.service, "bittorrent");
        assert_eq!(c.tcp_port, 6881);
        assert_eq!(c.metadata, vec![("ih".to_string(), "ab".repeat(20))]);
        assert_eq!((c.port, c.interval), (0, Duration::from_millis(200)));
        assert_eq!(c.broadcast, DEFAULT_BROADCAST);
        // Two peer ids differing only in the random part give different node ids.
        let other = s.config("seed", b"-RE0100-abcdefghijkm", &IH, 6881);
        assert_ne!(c.id, other.id);
    }

    #[test]
    fn only_our_service_and_info_hash_with_a_port_are_candidates() {
        let mut c = Candidates::new(&IH);
        let ours = "ab".repeat(20);
        assert_eq!(
            changes(&mut c, joined("a", 7001, "bittorrent", &ours)),
            vec![Change::Add(addr(7001))]
        );
        // Upper-case hex from another implementation is the same hash.
        assert_eq!(
            changes(
                &mut c,
                joined("A", 7002, "bittorrent", &ours.to_uppercase())
            ),
            vec![Change::Add(addr(7002))]
        );
        assert!(changes(&mut c, joined("b", 7003, "bittorrent", &"cd".repeat(20))).is_empty());
        assert!(changes(&mut c, joined("c", 7004, "http", &ours)).is_empty());
        assert!(changes(&mut c, joined("d", 0, "bittorrent", &ours)).is_empty());
        let none = PeerEvent::Joined {
            id: "e".into(),
            instance: 1,
            addr: addr(7005),
            service: "bittorrent".into(),
            metadata: Vec::new(),
        };
        assert!(changes(&mut c, none).is_empty());
        assert_eq!(c.len(), 2);
        // Events for nodes we ignored change nothing.
        assert!(changes(&mut c, PeerEvent::Left { id: "b".into() }).is_empty());
        let conflict = PeerEvent::Conflict {
            id: "a".into(),
            instance: 9,
            from: addr(1),
        };
        assert!(changes(&mut c, conflict).is_empty());
    }

    #[test]
    fn left_moved_and_changed_nodes_are_withdrawn() {
        let mut c = Candidates::new(&IH);
        let ours = "ab".repeat(20);
        changes(&mut c, joined("a", 7001, "bittorrent", &ours));
        assert_eq!(
            changes(&mut c, PeerEvent::Left { id: "a".into() }),
            vec![Change::Withdraw(addr(7001))]
        );
        assert_eq!(c.len(), 0);
        // A restart on a new port moves the candidate.
        changes(&mut c, joined("a", 7001, "bittorrent", &ours));
        let restarted = PeerEvent::Restarted {
            id: "a".into(),
            old_instance: 1,
            instance: 2,
            addr: addr(7009),
            service: "bittorrent".into(),
            metadata: meta(&ours),
        };
        assert_eq!(
            changes(&mut c, restarted),
            vec![Change::Withdraw(addr(7001)), Change::Add(addr(7009))]
        );
        // The same address again: re-added (the peer manager keeps its history).
        let same = PeerEvent::Updated {
            id: "a".into(),
            instance: 2,
            addr: addr(7009),
            service: "bittorrent".into(),
            metadata: meta(&ours),
        };
        assert_eq!(changes(&mut c, same), vec![Change::Add(addr(7009))]);
        // Switching to another torrent withdraws it.
        let other = PeerEvent::Updated {
            id: "a".into(),
            instance: 2,
            addr: addr(7009),
            service: "bittorrent".into(),
            metadata: meta(&"cd".repeat(20)),
        };
        assert_eq!(changes(&mut c, other), vec![Change::Withdraw(addr(7009))]);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_address_still_announced_by_another_node_is_kept() {
        let mut c = Candidates::new(&IH);
        let ours = "ab".repeat(20);
        changes(&mut c, joined("old", 7001, "bittorrent", &ours));
        changes(&mut c, joined("new", 7001, "bittorrent", &ours));
        assert!(changes(&mut c, PeerEvent::Left { id: "old".into() }).is_empty());
        assert_eq!(
            changes(&mut c, PeerEvent::Left { id: "new".into() }),
            vec![Change::Withdraw(addr(7001))]
        );
    }
}
