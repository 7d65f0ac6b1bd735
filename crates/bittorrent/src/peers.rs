//! Sans-io peer manager for one torrent: remembers known peer addresses,
//! how each connection went, and when each peer may be dialled again.
//!
//! It decides *whom* to connect to and *when*; it must not open sockets,
//! read a clock (every call takes `now`), or keep per-connection protocol
//! state. The table is bounded ([`PeerManager::new`]'s `max_known`) so a
//! flood of tracker/PEX addresses cannot grow memory without limit.
//!
//! Backoff (why: a peer that accepts and immediately drops us must not be
//! redialled in a tight loop, cf. Transmission's fix for the same bug):
//!
//! * A *useless* connection — closed before the handshake, or handshaken but
//!   no piece data in either direction — increments a counter; the next
//!   dial waits [`USELESS_BACKOFF`]`[min(n, 7) - 1]`: 0 s, 10 s, 2 min,
//!   15 min, 30 min, 1 h, then 2 h forever. A connection that carried piece
//!   data resets the counter.
//! * A failed dial (refused, timed out, unreachable) increments another
//!   counter and waits [`FAILURE_BACKOFF`]`[min(n, 7) - 1]`: 15 s, 1 min,
//!   5 min, 15 min, 30 min, 1 h, then 2 h. A successful TCP connect resets it.
//! * A *banned* peer (it sent data that failed the hash check; see
//!   [`super::blame`]) is never dialled or accepted again, whoever announces it.
//!   The ban is on the host (its IPv4 address, or its IPv6 /64), not the address
//!   and port, because an inbound peer's port is whatever its kernel picked for
//!   that connection: a liar banned by port would simply reconnect (and one
//!   banned by IPv6 address, from the next address of its /64). Loopback is the
//!   exception: every process on the machine shares its address, so there a ban
//!   names the port.
//!   Bans are kept apart from the peer table, at most [`MAX_BANS`] of them (the
//!   oldest is forgotten first), so they can neither be evicted by a flood of
//!   announced peers nor fill the table and lock out honest ones.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Delay before redialling after the n-th consecutive useless connection
/// (index n-1; the last entry repeats).
pub const USELESS_BACKOFF: [Duration; 7] = [
    Duration::from_secs(0),
    Duration::from_secs(10),
    Duration::from_secs(2 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
];

/// Delay before redialling after the n-th consecutive failed dial
/// (index n-1; the last entry repeats).
pub const FAILURE_BACKOFF: [Duration; 7] = [
    Duration::from_secs(15),
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
];

fn backoff(table: &[Duration; 7], n: u32) -> Duration {
    let i = (n.max(1) - 1).min(6) as usize;
    table
        .get(i)
        .copied()
        .unwrap_or(Duration::from_secs(2 * 60 * 60))
}

/// Most bans a [`PeerManager`] remembers; past it the oldest ban is forgotten.
pub const MAX_BANS: usize = 1024;

/// What a ban names: a host (an IPv4 address, or an IPv6 /64, which one host
/// usually holds whole), or on loopback (one address for every process) a host
/// and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BanKey {
    Host(IpAddr),
    Addr(SocketAddr),
}

fn ban_key(addr: &SocketAddr) -> BanKey {
    // An IPv4 peer reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
    let ip = addr.ip().to_canonical();
    if ip.is_loopback() {
        return BanKey::Addr(SocketAddr::new(ip, addr.port()));
    }
    BanKey::Host(reactor::client_key(ip))
}

/// The bans, bounded, oldest first out.
#[derive(Debug, Default)]
struct Bans {
    set: HashSet<BanKey>,
    order: VecDeque<BanKey>,
}

impl Bans {
    fn contains(&self, addr: &SocketAddr) -> bool {
        !self.set.is_empty() && self.set.contains(&ban_key(addr))
    }

    fn insert(&mut self, addr: &SocketAddr) -> bool {
        let k = ban_key(addr);
        if !self.set.insert(k) {
            return false;
        }
        self.order.push_back(k);
        if self.order.len() > MAX_BANS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// What happened on a connection, reported at [`PeerManager::disconnected`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// The BitTorrent handshake completed.
    pub handshake_done: bool,
    /// Piece payload bytes received.
    pub piece_bytes_down: u64,
    /// Piece payload bytes sent.
    pub piece_bytes_up: u64,
}

impl ConnStats {
    fn useful(&self) -> bool {
        self.handshake_done && (self.piece_bytes_down > 0 || self.piece_bytes_up > 0)
    }
}

/// Connection state of a known peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Not connected.
    Idle,
    /// Offered by [`PeerManager::next_candidates`]; dial in progress.
    Connecting,
    /// Connected (dialled or accepted).
    Connected,
}

/// Snapshot of what is known about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    /// Current connection state.
    pub state: ConnState,
    /// Failed dials, total.
    pub failures: u32,
    /// Connections that carried piece data, total.
    pub successes: u32,
    /// Consecutive failed dials.
    pub consecutive_failures: u32,
    /// Consecutive useless connections.
    pub consecutive_useless: u32,
    /// Piece bytes received over all connections.
    pub bytes_down: u64,
    /// Piece bytes sent over all connections.
    pub bytes_up: u64,
    /// Earliest time the peer may be dialled again.
    pub next_attempt: Instant,
    /// We may dial it (false for peers only seen as inbound connections,
    /// whose source port is usually ephemeral).
    pub dialable: bool,
    /// An encrypted (MSE) dial failed before its handshake completed: dial it in
    /// plaintext from now on (libtorrent's retry under its "enabled" policy).
    pub plaintext_only: bool,
}

impl PeerStats {
    /// Lower sorts first: unpenalised before penalised, data givers first,
    /// then by bytes received.
    fn rank(&self) -> (bool, u32, bool, Reverse<u64>, Instant) {
        let penalty = self
            .consecutive_failures
            .saturating_add(self.consecutive_useless);
        (
            penalty > 0,
            penalty,
            self.successes == 0,
            Reverse(self.bytes_down),
            self.next_attempt,
        )
    }
}

/// Peer table for one torrent. See the module docs.
#[derive(Debug)]
pub struct PeerManager {
    peers: HashMap<SocketAddr, PeerStats>,
    bans: Bans,
    connection_limit: usize,
    max_known: usize,
    active: usize,
}

impl PeerManager {
    /// A manager allowing `connection_limit` simultaneous connections
    /// (dialling counts) and remembering at most `max_known` peers.
    pub fn new(connection_limit: usize, max_known: usize) -> Self {
        PeerManager {
            peers: HashMap::new(),
            bans: Bans::default(),
            connection_limit,
            max_known: max_known.max(1),
            active: 0,
        }
    }

    /// Change the connection limit; existing connections are not closed.
    pub fn set_connection_limit(&mut self, limit: usize) {
        self.connection_limit = limit;
    }

    /// Number of known peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// No peers known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Connections connecting or connected.
    pub fn active(&self) -> usize {
        self.active
    }

    /// What is known about `addr`.
    pub fn peer(&self, addr: &SocketAddr) -> Option<PeerStats> {
        self.peers.get(addr).copied()
    }

    /// `addr` (or its host, off loopback) is banned.
    pub fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.bans.contains(addr)
    }

    /// Bans recorded (at most [`MAX_BANS`]).
    pub(crate) fn ban_count(&self) -> usize {
        self.bans.order.len()
    }

    fn fresh(now: Instant, dialable: bool) -> PeerStats {
        PeerStats {
            state: ConnState::Idle,
            failures: 0,
            successes: 0,
            consecutive_failures: 0,
            consecutive_useless: 0,
            bytes_down: 0,
            bytes_up: 0,
            next_attempt: now,
            dialable,
            plaintext_only: false,
        }
    }

    /// Make room for a new peer by evicting the worst idle one that is banned,
    /// penalised or undialable (banned first: the ban itself lives elsewhere).
    fn make_room(&mut self) -> bool {
        if self.peers.len() < self.max_known {
            return true;
        }
        let bans = &self.bans;
        let worst = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == ConnState::Idle)
            .filter(|(a, p)| {
                p.consecutive_failures.saturating_add(p.consecutive_useless) > 0
                    || !p.dialable
                    || bans.contains(a)
            })
            .max_by_key(|(a, p)| (bans.contains(a), !p.dialable, p.rank(), **a))
            .map(|(a, _)| *a);
        match worst {
            Some(a) => {
                self.peers.remove(&a);
                true
            }
            None => false,
        }
    }

    /// Learn a dialable address (tracker, DHT, PEX). Known peers keep their
    /// history, so re-announcing an address does not reset its backoff.
    /// Returns false if the table is full of better peers.
    pub fn add_peer(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if let Some(p) = self.peers.get_mut(&addr) {
            p.dialable = true;
            return true;
        }
        if !self.make_room() {
            return false;
        }
        self.peers.insert(addr, Self::fresh(now, true));
        true
    }

    /// Forget a peer (e.g. it turned out to be ourselves). Its connection,
    /// if any, no longer counts against the limit.
    pub fn remove_peer(&mut self, addr: &SocketAddr) {
        if let Some(p) = self.peers.remove(addr)
            && p.state != ConnState::Idle
        {
            self.active -= 1;
        }
    }

    /// A source (LAN discovery) no longer offers `addr`: stop dialling it. An
    /// idle peer becomes undialable but keeps its history, so a peer that leaves
    /// and comes back does not escape its backoff (undialable idle peers are the
    /// first evicted when the table is full). A connecting or connected peer is
    /// left alone: its connection decides. Returns true if it was withdrawn.
    pub fn withdraw(&mut self, addr: &SocketAddr) -> bool {
        match self.peers.get_mut(addr) {
            Some(p) if p.state == ConnState::Idle => {
                p.dialable = false;
                true
            }
            _ => false,
        }
    }

    /// Bans `addr`'s host (off loopback; on loopback the address itself) for
    /// sending bad data: no address of it is offered for dialling again, nor
    /// accepted, even if a tracker or discovery announces it again. Current
    /// connections are the caller's to close (every one for which
    /// [`is_banned`](PeerManager::is_banned) is now true) and report with
    /// [`PeerManager::disconnected`] as usual. Returns false if it was banned
    /// already.
    pub fn ban(&mut self, addr: SocketAddr) -> bool {
        self.bans.insert(&addr)
    }

    /// An inbound connection arrived. Returns false if it should be refused
    /// (limit reached, already connected to that address, banned, or table full).
    pub fn accept_incoming(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.active >= self.connection_limit || self.bans.contains(&addr) {
            return false;
        }
        if !self.peers.contains_key(&addr) {
            if !self.make_room() {
                return false;
            }
            self.peers.insert(addr, Self::fresh(now, false));
        }
        let Some(p) = self.peers.get_mut(&addr) else {
            return false;
        };
        if p.state != ConnState::Idle {
            return false;
        }
        p.state = ConnState::Connected;
        self.active += 1;
        true
    }

    /// Append to `out` up to `max` peers to dial now, best first, never
    /// exceeding the connection limit. Returned peers are marked
    /// connecting; report each with [`PeerManager::connected`] or
    /// [`PeerManager::connect_failed`].
    pub fn next_candidates(&mut self, now: Instant, max: usize, out: &mut Vec<SocketAddr>) {
        let room = self.connection_limit.saturating_sub(self.active).min(max);
        if room == 0 {
            return;
        }
        let start = out.len();
        let bans = &self.bans;
        out.extend(
            self.peers
                .iter()
                .filter(|(a, p)| {
                    p.state == ConnState::Idle
                        && p.dialable
                        && p.next_attempt <= now
                        && !bans.contains(a)
                })
                .map(|(a, _)| *a),
        );
        let peers = &self.peers;
        let key = |a: &SocketAddr| peers.get(a).map(|p| (p.rank(), *a));
        out[start..].sort_unstable_by_key(key);
        out.truncate(start + room);
        for a in &out[start..] {
            if let Some(p) = self.peers.get_mut(a) {
                p.state = ConnState::Connecting;
                self.active += 1;
            }
        }
    }

    /// A dial succeeded (TCP connected).
    pub fn connected(&mut self, addr: SocketAddr, _now: Instant) {
        if let Some(p) = self.peers.get_mut(&addr) {
            match p.state {
                ConnState::Idle => self.active += 1,
                ConnState::Connecting | ConnState::Connected => {}
            }
            p.state = ConnState::Connected;
            p.consecutive_failures = 0;
        }
    }

    /// A dial failed (refused, timed out, unreachable).
    pub fn connect_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(p) = self.peers.get_mut(&addr) {
            if p.state != ConnState::Idle {
                self.active -= 1;
            }
            p.state = ConnState::Idle;
            p.failures = p.failures.saturating_add(1);
            p.consecutive_failures = p.consecutive_failures.saturating_add(1);
            p.next_attempt = later(now, backoff(&FAILURE_BACKOFF, p.consecutive_failures));
        }
    }

    /// An encrypted dial of `addr` failed before its MSE handshake completed (the
    /// peer closed, refused the handshake or let it time out): it may be a
    /// plaintext-only client, so it is dialled again at once in plaintext. This
    /// counts as neither a failed dial nor a useless connection, and happens once
    /// per peer: later dials stay plaintext ([`PeerStats::plaintext_only`]).
    pub fn retry_plaintext(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(p) = self.peers.get_mut(&addr) {
            if p.state != ConnState::Idle {
                self.active -= 1;
            }
            p.state = ConnState::Idle;
            p.plaintext_only = true;
            p.next_attempt = now;
        }
    }

    /// Whether dials of `addr` must be plaintext (see [`PeerManager::retry_plaintext`]).
    pub fn plaintext_only(&self, addr: &SocketAddr) -> bool {
        self.peers.get(addr).is_some_and(|p| p.plaintext_only)
    }

    /// A connection closed, for whatever reason, with these statistics.
    pub fn disconnected(&mut self, addr: SocketAddr, now: Instant, stats: ConnStats) {
        if let Some(p) = self.peers.get_mut(&addr) {
            if p.state != ConnState::Idle {
                self.active -= 1;
            }
            p.state = ConnState::Idle;
            p.bytes_down = p.bytes_down.saturating_add(stats.piece_bytes_down);
            p.bytes_up = p.bytes_up.saturating_add(stats.piece_bytes_up);
            if stats.useful() {
                p.successes = p.successes.saturating_add(1);
                p.consecutive_useless = 0;
                p.next_attempt = now;
            } else {
                p.consecutive_useless = p.consecutive_useless.saturating_add(1);
                p.next_attempt = later(now, backoff(&USELESS_BACKOFF, p.consecutive_useless));
            }
        }
    }

    /// When the caller should next call [`PeerManager::next_candidates`]:
    /// `Some(now)` if a peer is dialable already, the earliest backoff
    /// expiry otherwise, or `None` if nothing can become dialable (no idle
    /// dialable peers, or the connection limit is reached — a disconnect
    /// is then the trigger).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.active >= self.connection_limit {
            return None;
        }
        self.peers
            .iter()
            .filter(|(a, p)| p.state == ConnState::Idle && p.dialable && !self.bans.contains(a))
            .map(|(_, p)| p.next_attempt.max(now))
            .min()
    }
}

fn later(now: Instant, d: Duration) -> Instant {
    // Overflow needs an absurd Instant; falling back to `now` beats a panic.
    now.checked_add(d).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 6881))
    }

    const USELESS: ConnStats = ConnStats {
        handshake_done: true,
        piece_bytes_down: 0,
        piece_bytes_up: 0,
    };
    const USEFUL: ConnStats = ConnStats {
        handshake_done: true,
        piece_bytes_down: 16384,
        piece_bytes_up: 0,
    };

    fn cands(m: &mut PeerManager, now: Instant, max: usize) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        m.next_candidates(now, max, &mut v);
        v
    }

    #[test]
    fn a_banned_peer_is_never_dialled_or_accepted_again() {
        let mut m = PeerManager::new(10, 3);
        let t0 = Instant::now();
        let (liar, good) = (addr(1), addr(2));
        assert!(m.add_peer(liar, t0));
        assert!(m.add_peer(good, t0));
        let mut v = cands(&mut m, t0, 5);
        v.sort();
        assert_eq!(v, vec![liar, good]);
        m.connected(liar, t0);
        m.connected(good, t0);
        assert!(m.ban(liar));
        assert!(!m.ban(liar), "banned twice");
        m.disconnected(liar, t0, USEFUL);
        assert!(m.peer(&liar).is_some() && m.is_banned(&liar));
        // Announced again, hours later: still not dialled, nor accepted.
        let later = t0 + Duration::from_secs(3 * 3600);
        assert!(m.add_peer(liar, later));
        assert!(cands(&mut m, later, 5).is_empty());
        assert_eq!(m.next_wake(later), None);
        assert!(!m.accept_incoming(liar, later));
        // A full table evicts the banned entry first; the ban itself stays.
        m.disconnected(good, t0, USELESS);
        assert!(m.add_peer(addr(3), later));
        assert!(m.add_peer(addr(4), later));
        assert!(
            m.peer(&liar).is_none(),
            "the banned entry was kept over others"
        );
        assert!(m.is_banned(&liar));
        assert!(!m.accept_incoming(liar, later));
        // An address never seen before can be banned too (an inbound peer).
        let mut n = PeerManager::new(10, 10);
        assert!(n.ban(addr(9)));
        assert!(!n.accept_incoming(addr(9), t0));
    }

    #[test]
    fn a_ban_covers_the_host_on_every_port_except_on_loopback() {
        let mut m = PeerManager::new(10, 100);
        let t0 = Instant::now();
        let liar: SocketAddr = "192.0.2.7:51413".parse().unwrap();
        assert!(m.accept_incoming(liar, t0));
        assert!(m.ban(liar));
        m.disconnected(liar, t0, USEFUL);
        // The same host back from another ephemeral port, or announced on its
        // listen port, or as an IPv4-mapped IPv6 address: all refused.
        for again in [
            "192.0.2.7:40001",
            "192.0.2.7:6881",
            "[::ffff:192.0.2.7]:40002",
        ] {
            let a: SocketAddr = again.parse().unwrap();
            assert!(m.is_banned(&a), "{a}");
            assert!(!m.accept_incoming(a, t0), "{a} accepted");
            assert!(m.add_peer(a, t0));
        }
        assert!(cands(&mut m, t0, 10).is_empty());
        // Other hosts are not touched.
        let other: SocketAddr = "192.0.2.8:40001".parse().unwrap();
        assert!(m.accept_incoming(other, t0));
        // An IPv6 host is its /64: another address of it is banned too, the next
        // /64 is not.
        let v6: SocketAddr = "[2001:db8:5:6::1]:6881".parse().unwrap();
        assert!(m.ban(v6));
        let same64: SocketAddr = "[2001:db8:5:6:dead:beef::2]:50000".parse().unwrap();
        assert!(!m.accept_incoming(same64, t0), "{same64} accepted");
        let next64: SocketAddr = "[2001:db8:5:7::1]:50000".parse().unwrap();
        assert!(m.accept_incoming(next64, t0));
        // On loopback every process shares the address: the ban names the port.
        let lo_liar: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let lo_honest: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        assert!(m.ban(lo_liar));
        assert!(!m.accept_incoming(lo_liar, t0));
        assert!(m.accept_incoming(lo_honest, t0));
    }

    #[test]
    fn bans_are_bounded_and_never_lock_out_honest_peers() {
        let mut m = PeerManager::new(10, 16);
        let t0 = Instant::now();
        let host = |n: usize| -> SocketAddr {
            SocketAddr::from(([198, 18, (n >> 8) as u8, n as u8], 6881))
        };
        // Far more bans than the table holds, each first seen as an inbound peer.
        for n in 0..MAX_BANS + 100 {
            let a = host(n);
            assert!(m.accept_incoming(a, t0), "peer {n} refused");
            assert!(m.ban(a));
            m.disconnected(a, t0, USEFUL);
        }
        assert_eq!(m.ban_count(), MAX_BANS);
        assert!(m.len() <= 16);
        // The oldest bans were forgotten, the newest hold.
        assert!(!m.is_banned(&host(0)));
        assert!(m.is_banned(&host(MAX_BANS + 99)));
        // An honest newcomer still gets in, both ways.
        let honest: SocketAddr = "203.0.113.1:6881".parse().unwrap();
        assert!(m.add_peer(honest, t0));
        assert_eq!(cands(&mut m, t0, 5), vec![honest]);
        assert!(m.accept_incoming("203.0.113.2:50000".parse().unwrap(), t0));
    }

    #[test]
    fn handshake_then_drop_eight_times_follows_schedule() {
        let mut m = PeerManager::new(10, 100);
        let t0 = Instant::now();
        let a = addr(1);
        assert!(m.add_peer(a, t0));
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert_eq!(m.next_wake(now), Some(now));
            assert_eq!(cands(&mut m, now, 5), vec![a]);
            assert!(
                cands(&mut m, now, 5).is_empty(),
                "connecting peer offered twice"
            );
            m.connected(a, now);
            now += Duration::from_millis(50);
            m.disconnected(a, now, USELESS);
            let next = m.peer(&a).unwrap().next_attempt;
            let d = next - now;
            delays.push(d);
            if d > Duration::ZERO {
                assert!(cands(&mut m, next - Duration::from_millis(1), 5).is_empty());
                assert_eq!(m.next_wake(now), Some(next));
            }
            now = next;
        }
        let s = Duration::from_secs;
        assert_eq!(
            delays,
            vec![
                s(0),
                s(10),
                s(120),
                s(900),
                s(1800),
                s(3600),
                s(7200),
                s(7200)
            ]
        );
        let st = m.peer(&a).unwrap();
        assert_eq!(st.consecutive_useless, 8);
        assert_eq!(st.successes, 0);
        assert_eq!(st.state, ConnState::Idle);
    }

    #[test]
    fn closed_before_handshake_is_useless_and_data_resets() {
        let mut m = PeerManager::new(10, 100);
        let now = Instant::now();
        let a = addr(1);
        m.add_peer(a, now);
        for expect in [0, 10] {
            let t = m.peer(&a).unwrap().next_attempt;
            assert_eq!(cands(&mut m, t, 1), vec![a]);
            m.connected(a, t);
            // Data counted only after a handshake.
            let early = ConnStats {
                handshake_done: false,
                piece_bytes_down: 5,
                piece_bytes_up: 0,
            };
            m.disconnected(a, t, early);
            assert_eq!(
                m.peer(&a).unwrap().next_attempt - t,
                Duration::from_secs(expect)
            );
        }
        let t = m.peer(&a).unwrap().next_attempt;
        cands(&mut m, t, 1);
        m.connected(a, t);
        let up_only = ConnStats {
            handshake_done: true,
            piece_bytes_down: 0,
            piece_bytes_up: 100,
        };
        m.disconnected(a, t, up_only);
        let st = m.peer(&a).unwrap();
        assert_eq!((st.consecutive_useless, st.successes), (0, 1));
        assert_eq!(st.next_attempt, t);
        assert_eq!((st.bytes_down, st.bytes_up), (10, 100));
    }

    #[test]
    fn connect_failures_back_off_and_success_resets() {
        let mut m = PeerManager::new(10, 100);
        let a = addr(1);
        let mut now = Instant::now();
        m.add_peer(a, now);
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert_eq!(cands(&mut m, now, 1), vec![a]);
            m.connect_failed(a, now);
            let next = m.peer(&a).unwrap().next_attempt;
            delays.push((next - now).as_secs());
            assert!(cands(&mut m, now, 1).is_empty());
            now = next;
        }
        assert_eq!(delays, vec![15, 60, 300, 900, 1800, 3600, 7200, 7200]);
        assert_eq!(m.peer(&a).unwrap().failures, 8);
        cands(&mut m, now, 1);
        m.connected(a, now);
        assert_eq!(m.peer(&a).unwrap().consecutive_failures, 0);
        assert_eq!(m.peer(&a).unwrap().failures, 8);
        // Re-announcing a known peer does not reset its history.
        m.disconnected(a, now, USELESS);
        assert!(m.add_peer(a, now));
        assert_eq!(m.peer(&a).unwrap().consecutive_useless, 1);
    }

    #[test]
    fn never_reconnects_in_a_tight_loop() {
        let mut m = PeerManager::new(10, 100);
        let a = addr(1);
        let start = Instant::now();
        m.add_peer(a, start);
        let mut now = start;
        let mut dials = 0;
        let end = start + Duration::from_secs(24 * 3600);
        while let Some(wake) = m.next_wake(now) {
            now = wake.max(now);
            if now > end {
                break;
            }
            for c in cands(&mut m, now, 10) {
                dials += 1;
                m.connected(c, now);
                m.disconnected(c, now, ConnStats::default());
            }
            assert!(dials < 100, "tight loop");
        }
        // 6 dials in the first ~1h48m, then one per 2 h.
        assert!((15..=20).contains(&dials), "{dials}");
    }

    #[test]
    fn ordering_limit_and_connected_peers() {
        let mut m = PeerManager::new(3, 100);
        let now = Instant::now();
        let (good, better, fresh, bad) = (addr(1), addr(2), addr(3), addr(4));
        for a in [good, better, fresh, bad] {
            m.add_peer(a, now);
        }
        let all = cands(&mut m, now, 3);
        assert_eq!(all.len(), 3);
        assert!(cands(&mut m, now, 3).is_empty(), "limit reached");
        assert_eq!(m.next_wake(now), None);
        for a in &all {
            m.connected(*a, now);
            m.disconnected(*a, now, USELESS);
        }
        // Set up histories directly through the API.
        let give = |m: &mut PeerManager, a, bytes| {
            let mut v = Vec::new();
            m.next_candidates(now, 10, &mut v);
            for x in &v {
                let stats = if *x == a {
                    ConnStats {
                        piece_bytes_down: bytes,
                        ..USEFUL
                    }
                } else {
                    USELESS
                };
                m.connected(*x, now);
                m.disconnected(*x, now, stats);
            }
        };
        let mut m = PeerManager::new(10, 100);
        for a in [good, better, fresh, bad] {
            m.add_peer(a, now);
        }
        give(&mut m, good, 100);
        // After round one: good useful, others useless once (delay 0).
        let later = now + Duration::from_secs(1);
        let v = cands(&mut m, later, 10);
        assert_eq!(v[0], good);
        for x in &v {
            m.connected(*x, later);
            let s = match *x {
                a if a == better => ConnStats {
                    piece_bytes_down: 100_000,
                    ..USEFUL
                },
                a if a == good => USEFUL,
                _ => USELESS,
            };
            m.disconnected(*x, later, s);
        }
        m.add_peer(addr(9), later);
        let far = later + Duration::from_secs(3600);
        let v = cands(&mut m, far, 10);
        assert_eq!(v, vec![better, good, addr(9), fresh, bad]);
        assert_eq!(m.active(), 5);
        // Connected peers are never offered; limit counts connections.
        m.set_connection_limit(5);
        m.add_peer(addr(10), far);
        assert!(cands(&mut m, far, 10).is_empty());
        m.set_connection_limit(6);
        assert_eq!(cands(&mut m, far, 10), vec![addr(10)]);
    }

    #[test]
    fn incoming_connections() {
        let mut m = PeerManager::new(2, 100);
        let now = Instant::now();
        let a = addr(1);
        assert!(m.accept_incoming(a, now));
        assert!(!m.accept_incoming(a, now), "already connected");
        assert!(!m.peer(&a).unwrap().dialable);
        m.disconnected(a, now, USEFUL);
        assert!(
            cands(&mut m, now, 10).is_empty(),
            "inbound-only address is not dialled"
        );
        assert_eq!(m.next_wake(now), None);
        m.add_peer(a, now);
        assert!(m.peer(&a).unwrap().dialable);
        assert!(m.accept_incoming(addr(2), now));
        assert!(m.accept_incoming(addr(3), now));
        assert!(!m.accept_incoming(addr(4), now), "limit");
        assert_eq!(m.active(), 2);
        m.remove_peer(&addr(2));
        m.remove_peer(&addr(77));
        assert_eq!(m.active(), 1);
        assert_eq!(m.len(), 2);
        assert!(!m.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let mut m = PeerManager::new(10, 3);
        let now = Instant::now();
        for i in 0..3 {
            assert!(m.add_peer(addr(i), now));
        }
        assert!(!m.add_peer(addr(9), now), "no penalised peer to evict");
        assert!(!m.accept_incoming(addr(9), now));
        let v = cands(&mut m, now, 1);
        m.connect_failed(v[0], now);
        assert!(m.add_peer(addr(9), now));
        assert_eq!(m.len(), 3);
        assert!(m.peer(&v[0]).is_none(), "penalised peer evicted");
        // Unknown addresses are ignored by event calls.
        m.connected(addr(50), now);
        m.connect_failed(addr(50), now);
        m.disconnected(addr(50), now, USEFUL);
        assert_eq!(m.active(), 0);
    }

    #[test]
    fn random_events_keep_counts_consistent() {
        let mut x = 0x1234_5678u64;
        let mut rnd = move || {
            reactor_test_support::fuzz::xorshift(&mut x);
            x
        };
        let mut m = PeerManager::new(5, 20);
        let mut now = Instant::now();
        for _ in 0..20_000 {
            let a = addr((rnd() % 30) as u16);
            match rnd() % 8 {
                0 => {
                    m.add_peer(a, now);
                }
                1 => {
                    m.accept_incoming(a, now);
                }
                2 => m.connected(a, now),
                3 => m.connect_failed(a, now),
                4 => m.disconnected(
                    a,
                    now,
                    ConnStats {
                        handshake_done: rnd() % 2 == 0,
                        piece_bytes_down: rnd() % 3,
                        piece_bytes_up: u64::MAX,
                    },
                ),
                5 => m.remove_peer(&a),
                6 => {
                    let v = cands(&mut m, now, (rnd() % 4) as usize);
                    assert!(v.len() <= 3);
                }
                _ => now += Duration::from_secs(rnd() % 600),
            }
            let busy = m
                .peers
                .values()
                .filter(|p| p.state != ConnState::Idle)
                .count();
            assert_eq!(busy, m.active());
            assert!(m.len() <= 20);
            if let Some(w) = m.next_wake(now) {
                assert!(w >= now);
            }
        }
    }

    #[test]
    fn withdrawn_peers_are_not_dialled_and_keep_their_backoff() {
        let mut m = PeerManager::new(10, 100);
        let t0 = Instant::now();
        let a = addr(1);
        m.add_peer(a, t0);
        // A connecting peer is not withdrawn: its dial decides.
        assert_eq!(cands(&mut m, t0, 1), vec![a]);
        assert!(!m.withdraw(&a));
        m.connected(a, t0);
        assert!(!m.withdraw(&a), "connected");
        m.disconnected(a, t0, USELESS);
        assert_eq!(cands(&mut m, t0, 1), vec![a], "first backoff is 0 s");
        m.connected(a, t0);
        m.disconnected(a, t0, USELESS);
        assert!(m.withdraw(&a));
        let later = t0 + Duration::from_secs(3600);
        assert!(cands(&mut m, later, 5).is_empty());
        assert_eq!(m.next_wake(later), None);
        // Announced again: dialable, with its two useless connections remembered.
        m.add_peer(a, later);
        let st = m.peer(&a).unwrap();
        assert!(st.dialable);
        assert_eq!(st.consecutive_useless, 2);
        assert!(!m.withdraw(&addr(99)), "unknown peer");
    }

    #[test]
    fn a_failed_encrypted_dial_is_retried_once_in_plaintext() {
        let now = Instant::now();
        let mut m = PeerManager::new(4, 16);
        let a: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        assert!(m.add_peer(a, now));
        let mut out = Vec::new();
        m.next_candidates(now, 4, &mut out);
        assert_eq!(out, vec![a]);
        assert!(!m.plaintext_only(&a));
        m.connected(a, now);
        m.retry_plaintext(a, now);
        assert_eq!(m.active(), 0);
        assert!(m.plaintext_only(&a));
        let p = m.peer(&a).unwrap();
        assert_eq!((p.consecutive_useless, p.consecutive_failures), (0, 0));
        out.clear();
        m.next_candidates(now, 4, &mut out);
        assert_eq!(out, vec![a], "redialled at once");
        // The plaintext connection is judged as usual.
        m.connected(a, now);
        m.disconnected(a, now, ConnStats::default());
        assert_eq!(m.peer(&a).unwrap().consecutive_useless, 1);
        assert!(m.plaintext_only(&a));
    }
}
