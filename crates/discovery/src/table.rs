//! Sans-io table of peers learned from discovery announcements.
//!
//! The UDP handler feeds every received datagram to
//! [`PeerTable::observe_datagram`] (or an already decoded announcement to
//! [`PeerTable::observe`]), arms a timer at [`PeerTable::next_expiry`] and
//! calls [`PeerTable::expire`] when it fires. The table turns this into
//! membership [`Event`]s. It must not do I/O, read the clock (time is always
//! passed in as `now`, which must not go backwards), or grow without bound:
//! at most `max_peers` peers are kept, each bounded by the wire limits in
//! [`super::proto`] (about 5 KiB worst case), and strangers beyond that are
//! counted in [`Stats::dropped`] and forgotten.
//!
//! Decisions:
//! * A known id announcing a new instance nonce yields one
//!   [`Event::Restarted`] (not Left + Joined), because `observe` reports at
//!   most one event and the handler usually just reconnects.
//! * Our own id with our own instance is our broadcast echoing back: counted
//!   in [`Stats::ignored_self`]. Our id with another instance is a second node
//!   misconfigured with our id: [`Event::Conflict`], reported at most once per
//!   TTL per (instance, source) so logs are not flooded.
//! * After a peer restarts, datagrams still carrying its previous instance
//!   (reordered, or a duplicate process still running) are ignored and
//!   reported as [`Event::Conflict`] (also at most once per TTL), so two
//!   processes sharing an id cannot make the table flap.
//! * A goodbye (`leaving`) only removes a peer if its instance matches; a
//!   late goodbye from a previous instance must not evict the live one.
//! * Same instance with a changed port, service or metadata yields
//!   [`Event::Updated`].

use super::proto::{self, Announcement, ProtoError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A membership change the handler should act on (connect, disconnect, log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer was seen for the first time.
    Joined {
        /// Node id.
        id: String,
        /// Boot nonce of this incarnation.
        instance: u64,
        /// Datagram source IP with the announced TCP port.
        addr: SocketAddr,
        /// Announced service name.
        service: String,
        /// Announced metadata, in wire order.
        metadata: Vec<(String, String)>,
    },
    /// A known peer came back with a new instance nonce: treat as a leave of
    /// the old incarnation immediately followed by a join of the new one.
    Restarted {
        /// Node id.
        id: String,
        /// Nonce of the incarnation that is gone.
        old_instance: u64,
        /// Nonce of the new incarnation.
        instance: u64,
        /// Datagram source IP with the announced TCP port.
        addr: SocketAddr,
        /// Announced service name.
        service: String,
        /// Announced metadata, in wire order.
        metadata: Vec<(String, String)>,
    },
    /// A known peer (same instance) changed its port, service or metadata.
    Updated {
        /// Node id.
        id: String,
        /// Boot nonce (unchanged).
        instance: u64,
        /// Datagram source IP with the announced TCP port.
        addr: SocketAddr,
        /// Announced service name.
        service: String,
        /// Announced metadata, in wire order.
        metadata: Vec<(String, String)>,
    },
    /// A peer said goodbye or was not heard from for the TTL.
    Left {
        /// Node id.
        id: String,
    },
    /// Two live instances claim the same id: either a node using our own id,
    /// or a previous instance of a peer that is still announcing. Its
    /// announcements are ignored; an operator should fix the configuration.
    Conflict {
        /// The contested id.
        id: String,
        /// Instance nonce of the ignored claimant.
        instance: u64,
        /// Source address of the offending datagram.
        from: SocketAddr,
    },
}

/// Counters for monitoring; they only ever increase (saturating).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams or announcements offered to the table.
    pub received: u64,
    /// Offered datagrams/announcements that failed decoding or validation.
    pub malformed: u64,
    /// Our own announcements echoed back.
    pub ignored_self: u64,
    /// Joined events.
    pub joined: u64,
    /// Left events (goodbye or expiry).
    pub left: u64,
    /// New peers refused because the table was full.
    pub dropped: u64,
    /// Restarted events.
    pub restarted: u64,
    /// Updated events.
    pub updated: u64,
    /// Announcements from a conflicting instance (reported or not).
    pub conflicts: u64,
}

/// What the table knows about one peer.
#[derive(Debug, Clone)]
pub struct Peer {
    id: String,
    instance: u64,
    addr: SocketAddr,
    service: String,
    metadata: Vec<(String, String)>,
    last_seen: Instant,
    /// Instance this peer replaced on its last restart; its datagrams are stale.
    replaced_instance: Option<u64>,
    /// When a conflict for this peer was last reported (rate limit).
    conflict_reported: Option<Instant>,
}

impl Peer {
    /// Node id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Current instance nonce.
    pub fn instance(&self) -> u64 {
        self.instance
    }
    /// Datagram source IP with the announced TCP port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Announced service name.
    pub fn service(&self) -> &str {
        &self.service
    }
    /// Announced metadata, in wire order.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }
    /// When the last announcement was observed.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }
}

/// Membership state built from announcements. See the module docs.
#[derive(Debug)]
pub struct PeerTable {
    self_id: String,
    self_instance: u64,
    ttl: Duration,
    max_peers: usize,
    // std's RandomState (SipHash, random keys) resists hash flooding by fake ids.
    peers: HashMap<String, Peer>,
    /// Lower bound on the earliest peer deadline. Deadlines only move later
    /// while a peer is refreshed, so the bound stays valid without rescans;
    /// `expire` tightens it.
    earliest: Option<Instant>,
    /// Last reported conflict on our own id: (instance, source, when).
    self_conflict: Option<(u64, SocketAddr, Instant)>,
    stats: Stats,
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

fn owned_metadata(ann: &Announcement<'_>) -> Vec<(String, String)> {
    ann.metadata
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn same_metadata(stored: &[(String, String)], ann: &Announcement<'_>) -> bool {
    stored.len() == ann.metadata.len()
        && stored
            .iter()
            .zip(ann.metadata.iter())
            .all(|((k1, v1), (k2, v2))| k1 == k2 && v1 == v2)
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl PeerTable {
    /// New empty table. `self_id`/`self_instance` identify our own
    /// announcements; peers silent for `ttl` are expired (use about 3x the
    /// announce interval so one lost datagram is tolerated); at most
    /// `max_peers` peers are remembered.
    pub fn new(self_id: String, self_instance: u64, ttl: Duration, max_peers: usize) -> Self {
        PeerTable {
            self_id,
            self_instance,
            ttl,
            max_peers,
            peers: HashMap::new(),
            earliest: None,
            self_conflict: None,
            stats: Stats::default(),
        }
    }

    /// Decodes `datagram` (received from `from`) and observes it. Decode
    /// errors are counted in [`Stats::malformed`] and returned for optional
    /// (rate-limited) logging; they never affect the table.
    pub fn observe_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<Option<Event>, ProtoError> {
        bump(&mut self.stats.received);
        match proto::decode(datagram) {
            Ok(ann) => Ok(self.observe_valid(&ann, from, now)),
            Err(e) => {
                bump(&mut self.stats.malformed);
                Err(e)
            }
        }
    }

    /// Observes one announcement received from `from` at `now`. Returns the
    /// resulting membership change, if any. Announcements violating the wire
    /// limits are counted as malformed and ignored.
    pub fn observe(
        &mut self,
        ann: &Announcement<'_>,
        from: SocketAddr,
        now: Instant,
    ) -> Option<Event> {
        bump(&mut self.stats.received);
        if ann.validate().is_err() {
            bump(&mut self.stats.malformed);
            return None;
        }
        self.observe_valid(ann, from, now)
    }

    fn observe_valid(
        &mut self,
        ann: &Announcement<'_>,
        from: SocketAddr,
        now: Instant,
    ) -> Option<Event> {
        let addr = SocketAddr::new(from.ip(), ann.port);
        if ann.id == self.self_id {
            if ann.instance == self.self_instance {
                bump(&mut self.stats.ignored_self);
                return None;
            }
            bump(&mut self.stats.conflicts);
            let ttl = self.ttl;
            let recent = matches!(self.self_conflict,
                Some((inst, src, at)) if inst == ann.instance && src == from
                    && now.saturating_duration_since(at) < ttl);
            if recent {
                return None;
            }
            self.self_conflict = Some((ann.instance, from, now));
            return Some(Event::Conflict {
                id: ann.id.to_owned(),
                instance: ann.instance,
                from,
            });
        }

        let ttl = self.ttl;
        if let Some(p) = self.peers.get_mut(ann.id) {
            if ann.instance == p.instance {
                if ann.leaving {
                    self.peers.remove(ann.id);
                    bump(&mut self.stats.left);
                    return Some(Event::Left {
                        id: ann.id.to_owned(),
                    });
                }
                // Keep deadlines monotonic even if a caller passes an older `now`,
                // which the `earliest` lower bound relies on.
                p.last_seen = p.last_seen.max(now);
                if p.addr == addr && p.service == ann.service && same_metadata(&p.metadata, ann) {
                    return None;
                }
                p.addr = addr;
                ann.service.clone_into(&mut p.service);
                p.metadata = owned_metadata(ann);
                bump(&mut self.stats.updated);
                return Some(Event::Updated {
                    id: p.id.clone(),
                    instance: p.instance,
                    addr,
                    service: p.service.clone(),
                    metadata: p.metadata.clone(),
                });
            }
            if ann.leaving {
                // Goodbye from a previous or unknown instance; the live one stays.
                return None;
            }
            if p.replaced_instance == Some(ann.instance) {
                bump(&mut self.stats.conflicts);
                let recent = p
                    .conflict_reported
                    .is_some_and(|at| now.saturating_duration_since(at) < ttl);
                if recent {
                    return None;
                }
                p.conflict_reported = Some(now);
                return Some(Event::Conflict {
                    id: p.id.clone(),
                    instance: ann.instance,
                    from,
                });
            }
            let old_instance = p.instance;
            p.replaced_instance = Some(old_instance);
            p.conflict_reported = None;
            p.instance = ann.instance;
            p.addr = addr;
            ann.service.clone_into(&mut p.service);
            p.metadata = owned_metadata(ann);
            p.last_seen = p.last_seen.max(now);
            bump(&mut self.stats.restarted);
            return Some(Event::Restarted {
                id: p.id.clone(),
                old_instance,
                instance: p.instance,
                addr,
                service: p.service.clone(),
                metadata: p.metadata.clone(),
            });
        }

        if ann.leaving {
            return None;
        }
        if self.peers.len() >= self.max_peers {
            bump(&mut self.stats.dropped);
            return None;
        }
        let peer = Peer {
            id: ann.id.to_owned(),
            instance: ann.instance,
            addr,
            service: ann.service.to_owned(),
            metadata: owned_metadata(ann),
            last_seen: now,
            replaced_instance: None,
            conflict_reported: None,
        };
        let event = Event::Joined {
            id: peer.id.clone(),
            instance: peer.instance,
            addr,
            service: peer.service.clone(),
            metadata: peer.metadata.clone(),
        };
        self.earliest = min_instant(self.earliest, now.checked_add(ttl));
        self.peers.insert(peer.id.clone(), peer);
        bump(&mut self.stats.joined);
        Some(event)
    }

    /// Removes peers not seen for the TTL (deadline `last_seen + ttl <= now`)
    /// and appends one [`Event::Left`] per peer to `out`. Returns immediately
    /// when [`next_expiry`](Self::next_expiry) has not been reached;
    /// otherwise scans the table once, which amortises to O(1) per
    /// announcement when peers announce more often than the TTL.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Event>) {
        match self.earliest {
            Some(t) if t <= now => {}
            _ => return,
        }
        let ttl = self.ttl;
        let mut next = None;
        let gone = self
            .peers
            .extract_if(|_, p| match p.last_seen.checked_add(ttl) {
                Some(deadline) if deadline <= now => true,
                deadline => {
                    next = min_instant(next, deadline);
                    false
                }
            });
        for (id, _) in gone {
            bump(&mut self.stats.left);
            out.push(Event::Left { id });
        }
        self.earliest = next;
    }

    /// When to call [`expire`](Self::expire) next, or `None` with nothing to
    /// expire. May be earlier than the real deadline (a refreshed peer does
    /// not move it), never later; an early `expire` just recomputes it.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.earliest
    }

    /// All known peers, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// The peer with this id, if known.
    pub fn get(&self, id: &str) -> Option<&Peer> {
        self.peers.get(id)
    }

    /// Number of known peers (never above `max_peers`).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when no peers are known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Monitoring counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}

/// Randomised announce interval, so nodes started together do not
/// broadcast in lock-step.
///
/// Each [`next_delay`](Self::next_delay) is uniform in
/// `[0.75 * interval, 1.25 * interval]` (nanosecond resolution, both ends
/// included), so the mean rate equals `1 / interval`. Uses xorshift64 from a
/// caller-supplied seed (e.g. the instance nonce); not cryptographic.
#[derive(Debug, Clone)]
pub struct Jitter {
    interval: Duration,
    state: u64,
}

impl Jitter {
    /// Jitter around `interval` seeded with `seed` (0 is replaced by a fixed
    /// non-zero constant, since xorshift would stay at 0 forever).
    pub fn new(interval: Duration, seed: u64) -> Self {
        Jitter {
            interval,
            state: if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            },
        }
    }

    /// The nominal interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Next delay, uniform in `[0.75 * interval, 1.25 * interval]`.
    pub fn next_delay(&mut self) -> Duration {
        let n = self.interval.as_nanos(); // < 2^94, so the u128 maths below cannot overflow
        self.nanos_between(n - n / 4, n + n / 4)
    }

    /// A delay uniform in `[lo, hi]` (both included; `hi` below `lo` counts as
    /// `lo`), from the same sequence.
    pub fn next_between(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.nanos_between(lo.as_nanos(), hi.as_nanos().max(lo.as_nanos()))
    }

    fn nanos_between(&mut self, lo: u128, hi: u128) -> Duration {
        // Both below 2^95 (at most 1.25 Duration::MAX), so `hi - lo + 1` and
        // `lo + r % span` cannot overflow.
        let span = hi - lo + 1;
        let r = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        // Modulo bias is below span / 2^128, i.e. negligible.
        let nanos = lo + r % span;
        // Past Duration::MAX (1.25 of a huge interval): saturate.
        match (
            u64::try_from(nanos / 1_000_000_000),
            u32::try_from(nanos % 1_000_000_000),
        ) {
            (Ok(secs), Ok(sub)) => Duration::new(secs, sub),
            _ => Duration::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{Metadata, encode};
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const TTL: Duration = Duration::from_secs(3);

    fn src(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 45000)
    }

    fn table(max: usize) -> PeerTable {
        PeerTable::new("me".to_owned(), 42, TTL, max)
    }

    fn ann(id: &str, instance: u64, port: u16) -> Announcement<'_> {
        Announcement {
            service: "kv",
            ..Announcement::new(id, instance, port)
        }
    }

    #[test]
    fn join_refresh_and_addr_from_source_ip() {
        let mut t = table(10);
        let t0 = Instant::now();
        let mut a = ann("n1", 7, 9000);
        a.metadata = Metadata::from_pairs(&[("zone", "a")]).unwrap();
        let ev = t.observe(&a, src(5), t0).unwrap();
        assert_eq!(
            ev,
            Event::Joined {
                id: "n1".into(),
                instance: 7,
                addr: "127.0.0.5:9000".parse().unwrap(),
                service: "kv".into(),
                metadata: vec![("zone".into(), "a".into())],
            }
        );
        assert_eq!(t.observe(&a, src(5), t0 + Duration::from_secs(1)), None);
        let p = t.get("n1").unwrap();
        assert_eq!(p.last_seen(), t0 + Duration::from_secs(1));
        assert_eq!((p.id(), p.instance(), p.service()), ("n1", 7, "kv"));
        assert_eq!(p.addr().port(), 9000);
        assert_eq!(p.metadata().len(), 1);
        assert_eq!(t.peers().count(), 1);
        let s = t.stats();
        assert_eq!((s.received, s.joined), (2, 1));
    }

    #[test]
    fn updated_on_changed_port_service_or_metadata() {
        let mut t = table(10);
        let t0 = Instant::now();
        t.observe(&ann("n1", 7, 9000), src(5), t0).unwrap();
        let ev = t.observe(&ann("n1", 7, 9001), src(5), t0).unwrap();
        assert!(matches!(ev, Event::Updated { addr, .. } if addr.port() == 9001));
        let mut a = ann("n1", 7, 9001);
        a.metadata = Metadata::from_pairs(&[("k", "v")]).unwrap();
        assert!(matches!(
            t.observe(&a, src(5), t0),
            Some(Event::Updated { .. })
        ));
        assert_eq!(t.observe(&a, src(5), t0), None);
        a.service = "other";
        assert!(
            matches!(t.observe(&a, src(5), t0), Some(Event::Updated { service, .. }) if service == "other")
        );
        assert_eq!(t.stats().updated, 3);
    }

    #[test]
    fn own_announcements_ignored() {
        let mut t = table(10);
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(
                t.observe(&ann("me", 42, 1), src(1), t0 + Duration::from_secs(i)),
                None
            );
        }
        assert!(t.is_empty());
        assert_eq!(t.stats().ignored_self, 5);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn conflicting_own_id_reported_once_per_ttl() {
        let mut t = table(10);
        let t0 = Instant::now();
        let ev = t.observe(&ann("me", 99, 1), src(9), t0).unwrap();
        assert_eq!(
            ev,
            Event::Conflict {
                id: "me".into(),
                instance: 99,
                from: src(9)
            }
        );
        assert_eq!(
            t.observe(&ann("me", 99, 1), src(9), t0 + Duration::from_secs(1)),
            None
        );
        // A different claimant is reported at once.
        assert!(
            t.observe(&ann("me", 100, 1), src(9), t0 + Duration::from_secs(1))
                .is_some()
        );
        assert!(
            t.observe(
                &ann("me", 100, 1),
                src(9),
                t0 + TTL + Duration::from_secs(1)
            )
            .is_some()
        );
        assert!(t.is_empty());
        assert_eq!(t.stats().conflicts, 4);
        assert_eq!(t.stats().ignored_self, 0);
    }

    #[test]
    fn restarted_node() {
        let mut t = table(10);
        let t0 = Instant::now();
        t.observe(&ann("n1", 1, 9000), src(5), t0).unwrap();
        let ev = t
            .observe(&ann("n1", 2, 9100), src(6), t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            ev,
            Event::Restarted {
                id: "n1".into(),
                old_instance: 1,
                instance: 2,
                addr: "127.0.0.6:9100".parse().unwrap(),
                service: "kv".into(),
                metadata: vec![],
            }
        );
        assert_eq!(t.get("n1").unwrap().instance(), 2);
        assert_eq!(t.len(), 1);
        // Stale datagram from the old instance: conflict, once per TTL, no flap.
        let t1 = t0 + Duration::from_secs(2);
        assert!(matches!(
            t.observe(&ann("n1", 1, 9000), src(5), t1),
            Some(Event::Conflict { instance: 1, .. })
        ));
        assert_eq!(t.observe(&ann("n1", 1, 9000), src(5), t1), None);
        assert_eq!(t.get("n1").unwrap().instance(), 2);
        // Late goodbye from the old instance does not evict the new one.
        let mut bye = ann("n1", 1, 9000);
        bye.leaving = true;
        assert_eq!(t.observe(&bye, src(5), t1), None);
        bye.instance = 77;
        assert_eq!(t.observe(&bye, src(5), t1), None);
        assert_eq!(t.len(), 1);
        // A second restart still works.
        assert!(matches!(
            t.observe(&ann("n1", 3, 9000), src(5), t1),
            Some(Event::Restarted {
                old_instance: 2,
                instance: 3,
                ..
            })
        ));
        let s = t.stats();
        assert_eq!((s.joined, s.restarted, s.conflicts, s.left), (1, 2, 2, 0));
    }

    #[test]
    fn goodbye_removes_peer() {
        let mut t = table(10);
        let t0 = Instant::now();
        t.observe(&ann("n1", 1, 9000), src(5), t0).unwrap();
        let mut bye = ann("n1", 1, 9000);
        bye.leaving = true;
        assert_eq!(
            t.observe(&bye, src(5), t0),
            Some(Event::Left { id: "n1".into() })
        );
        assert!(t.is_empty());
        // Goodbye from a stranger is not a join.
        assert_eq!(t.observe(&bye, src(5), t0), None);
        assert!(t.is_empty());
        // Stale next_expiry is harmless.
        let mut out = Vec::new();
        t.expire(t0 + TTL, &mut out);
        assert!(out.is_empty());
        assert_eq!(t.next_expiry(), None);
        assert_eq!(t.stats().left, 1);
    }

    #[test]
    fn ttl_expiry_with_injected_time() {
        let mut t = table(10);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        t.observe(&ann("a", 1, 1), src(1), t0).unwrap();
        t.observe(&ann("b", 1, 1), src(2), t0 + s).unwrap();
        assert_eq!(t.next_expiry(), Some(t0 + TTL));
        let mut out = Vec::new();
        t.expire(t0 + TTL - Duration::from_nanos(1), &mut out);
        assert!(out.is_empty());
        // Refresh "a": the bound stays early (lower bound), expiry then tightens it.
        t.observe(&ann("a", 1, 1), src(1), t0 + 2 * s);
        assert_eq!(t.next_expiry(), Some(t0 + TTL));
        t.expire(t0 + TTL, &mut out);
        assert!(out.is_empty());
        assert_eq!(t.next_expiry(), Some(t0 + s + TTL));
        t.expire(t0 + s + TTL, &mut out);
        assert_eq!(out, vec![Event::Left { id: "b".into() }]);
        assert_eq!(t.next_expiry(), Some(t0 + 2 * s + TTL));
        out.clear();
        t.expire(t0 + 100 * s, &mut out);
        assert_eq!(out, vec![Event::Left { id: "a".into() }]);
        assert_eq!(t.next_expiry(), None);
        assert!(t.is_empty());
        assert_eq!(t.stats().left, 2);
        // An expired peer that returns is a fresh join.
        assert!(matches!(
            t.observe(&ann("a", 1, 1), src(1), t0 + 101 * s),
            Some(Event::Joined { .. })
        ));
    }

    #[test]
    fn older_now_does_not_move_deadline_back() {
        let mut t = table(10);
        let t0 = Instant::now();
        let t5 = t0 + Duration::from_secs(5);
        t.observe(&ann("a", 1, 1), src(1), t5).unwrap();
        t.observe(&ann("a", 1, 1), src(1), t0);
        assert_eq!(t.get("a").unwrap().last_seen(), t5);
        let mut out = Vec::new();
        t.expire(t5 + TTL - Duration::from_nanos(1), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn huge_ttl_never_expires() {
        let mut t = PeerTable::new("me".into(), 1, Duration::MAX, 4);
        let t0 = Instant::now();
        t.observe(&ann("a", 1, 1), src(1), t0).unwrap();
        assert_eq!(t.next_expiry(), None);
        let mut out = Vec::new();
        t.expire(t0 + Duration::from_secs(1 << 40), &mut out);
        assert!(out.is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn flood_of_random_ids_is_bounded() {
        let max = 256;
        let mut t = table(max);
        let t0 = Instant::now();
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut buf = Vec::new();
        let mut events = 0;
        for i in 0..100_000u32 {
            reactor_test_support::fuzz::xorshift(&mut rng);
            let id = format!("fake-{rng:016x}");
            buf.clear();
            encode(&ann(&id, rng, 1), &mut buf).unwrap();
            let now = t0 + Duration::from_millis(u64::from(i));
            if t.observe_datagram(&buf, src(66), now).unwrap().is_some() {
                events += 1;
            }
            assert!(t.len() <= max);
        }
        assert_eq!(t.len(), max);
        assert_eq!(events, max);
        let s = t.stats();
        assert_eq!(s.received, 100_000);
        assert_eq!(s.joined, max as u64);
        assert_eq!(s.dropped, 100_000 - max as u64);
        // Once the fakes expire, real peers fit again.
        let mut out = Vec::new();
        t.expire(t0 + Duration::from_secs(1000), &mut out);
        assert_eq!(out.len(), max);
        assert!(
            t.observe(&ann("real", 1, 1), src(2), t0 + Duration::from_secs(1000))
                .is_some()
        );
    }

    #[test]
    fn zero_capacity_table_drops_everything() {
        let mut t = table(0);
        assert_eq!(t.observe(&ann("a", 1, 1), src(1), Instant::now()), None);
        assert_eq!(t.stats().dropped, 1);
    }

    #[test]
    fn malformed_input_counted() {
        let mut t = table(10);
        let now = Instant::now();
        assert_eq!(
            t.observe_datagram(b"garbage!", src(1), now),
            Err(ProtoError::BadMagic)
        );
        assert_eq!(
            t.observe_datagram(b"RDSC", src(1), now),
            Err(ProtoError::Truncated)
        );
        // Hand-built announcement breaking the limits is refused too.
        let long = "x".repeat(100);
        assert_eq!(t.observe(&ann(&long, 1, 1), src(1), now), None);
        assert_eq!(t.observe(&ann("", 1, 1), src(1), now), None);
        let s = t.stats();
        assert_eq!((s.received, s.malformed, s.joined), (4, 4, 0));
        assert!(t.is_empty());
    }

    #[test]
    fn random_datagrams_never_panic_and_stay_bounded() {
        let mut t = table(8);
        let t0 = Instant::now();
        let mut rng = 0xdead_beef_u64;
        let mut next = || {
            reactor_test_support::fuzz::xorshift(&mut rng);
            rng
        };
        let ids = ["me", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for i in 0..20_000u64 {
            let r = next();
            let id = ids[(r % ids.len() as u64) as usize];
            let mut a = ann(id, next() % 4 + 41, (r >> 8) as u16 % 3);
            a.leaving = (r >> 20) % 10 == 0;
            buf.clear();
            encode(&a, &mut buf).unwrap();
            if (r >> 24) % 7 == 0 {
                let at = (next() as usize) % buf.len();
                buf[at] ^= next() as u8 | 1;
            }
            let now = t0 + Duration::from_millis(i * 3);
            let _ = t.observe_datagram(&buf, src((r >> 32) as u8), now);
            t.expire(now, &mut out);
            assert!(t.len() <= 8);
            if let Some(e) = t.next_expiry() {
                assert!(t.peers().all(|p| p.last_seen() + TTL >= e));
            }
        }
        let s = t.stats();
        assert_eq!(s.received, 20_000);
        assert!(s.joined > 0 && s.left > 0 && s.restarted > 0 && s.malformed > 0);
    }

    #[test]
    fn jitter_bounds_and_determinism() {
        let iv = Duration::from_millis(1000);
        let mut j = Jitter::new(iv, 7);
        let mut k = Jitter::new(iv, 7);
        assert_eq!(j.interval(), iv);
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        let mut sum = Duration::ZERO;
        for _ in 0..10_000 {
            let d = j.next_delay();
            assert_eq!(d, k.next_delay());
            assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1250));
            min = min.min(d);
            max = max.max(d);
            sum += d;
        }
        assert!(min < Duration::from_millis(760) && max > Duration::from_millis(1240));
        let mean = sum / 10_000;
        assert!(mean > Duration::from_millis(985) && mean < Duration::from_millis(1015));
        // Different seeds diverge; seed 0 still produces variety.
        assert_ne!(
            Jitter::new(iv, 8).next_delay(),
            Jitter::new(iv, 7).next_delay()
        );
        let mut z = Jitter::new(iv, 0);
        assert_ne!(z.next_delay(), z.next_delay());
    }

    #[test]
    fn jitter_extremes_do_not_panic() {
        assert_eq!(Jitter::new(Duration::ZERO, 1).next_delay(), Duration::ZERO);
        let d = Jitter::new(Duration::from_nanos(1), 1).next_delay();
        assert_eq!(d, Duration::from_nanos(1));
        let mut j = Jitter::new(Duration::MAX, 3);
        for _ in 0..100 {
            let d = j.next_delay();
            assert!(d >= Duration::MAX - Duration::MAX / 4 - Duration::from_secs(1));
        }
    }
}
