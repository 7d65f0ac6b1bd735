//! Reservation and circuit bookkeeping for the relay (sans-io state machine).
//!
//! A peer reserves an id on its control connection; others connect to that
//! id. This table decides who holds which id, enforces the limits (total, per
//! peer identity, per client address) and reclaims the slots of peers that
//! disconnected or went silent, so a flaky client cannot exhaust its own
//! limits by reconnecting (the incident that motivated it: a relay that kept
//! dead reservations until their TTL ran out).
//!
//! Reclamation rules, in short:
//! - a closed connection's reservations go into a short *grace* period; the
//!   same peer reserving the same id again gets it back in place;
//! - a reservation in grace is invisible to connectors and never uses up
//!   capacity that someone else needs: it is released first;
//! - a connection silent for `heartbeat_timeout` is reported and loses its
//!   reservations at once (no grace: it already had its chance);
//! - a reservation not refreshed within its TTL expires.
//!
//! It must not do I/O, read the clock, spawn anything, or scan every
//! reservation per call: every operation is O(1) or O(log n) (hash maps by
//! id, connection, peer and address; ordered sets of deadlines and grace
//! entries), except [`Table::expire`], which is O(log n) per released item.
//! The caller passes `now` into every call and arms a single timer from
//! [`Table::next_deadline`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::proto::Reason;

/// Identifies one connection of the event loop (the handler's token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Identifies one circuit. Values come from a keyed hash, so they cannot be
/// guessed by a third party hoping to `Accept` someone else's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircuitId(pub u64);

/// Durations above this are clamped, so `now + duration` cannot overflow.
const MAX_CONFIG_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Reservation limits. A count of 0 refuses every reservation of that scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Reservations on the whole relay (active and in grace).
    pub max_total: usize,
    /// Reservations per peer identity.
    pub per_peer: usize,
    /// Reservations per client address (IPv4 address, or IPv6 /64 network).
    pub per_ip: usize,
    /// Lifetime of a reservation unless refreshed.
    pub ttl: Duration,
    /// How long a closed connection's reservations are kept for a reconnect.
    /// Zero releases them at the next [`Table::expire`].
    pub grace: Duration,
    /// A control connection that sends nothing for this long is reported as
    /// silent and loses its reservations. Zero disables the check.
    pub heartbeat_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total: 128,
            per_peer: 4,
            per_ip: 8,
            ttl: Duration::from_secs(3600),
            grace: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
        }
    }
}

/// Circuit limits. For the first four fields 0 (or `Duration::ZERO`) means
/// unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitLimits {
    /// Open circuits (pending or bridged) per reserving peer identity.
    pub max_per_peer: usize,
    /// Open circuits on the whole relay.
    pub max_total: usize,
    /// Lifetime of a bridged circuit, counted from the accept.
    pub max_duration: Duration,
    /// Bytes forwarded per direction, 0 for no limit (see [`CircuitBudget`]).
    pub max_bytes_per_direction: u64,
    /// Time the reserver has to `Accept` after `Incoming`. Always enforced:
    /// otherwise a connector could wait forever.
    pub accept_timeout: Duration,
}

impl Default for CircuitLimits {
    fn default() -> Self {
        CircuitLimits {
            max_per_peer: 16,
            max_total: 1024,
            max_duration: Duration::from_secs(120),
            max_bytes_per_direction: 128 * 1024,
            accept_timeout: Duration::from_secs(10),
        }
    }
}

/// Direction of data on a bridged circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connector to the reserver.
    ToReserver,
    /// From the reserver to the connector.
    ToConnector,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToReserver => "connector->reserver",
            Direction::ToConnector => "reserver->connector",
        })
    }
}

/// A circuit forwarded more bytes than its budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// Direction that went over.
    pub direction: Direction,
    /// The per-direction limit in bytes.
    pub limit: u64,
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit exceeded its {} byte limit in direction {}; close it",
            self.limit, self.direction
        )
    }
}

impl std::error::Error for BudgetExceeded {}

/// Per-circuit byte counter, one per bridged circuit, owned by the handler, for
/// a handler that forwards by itself. The relay's own circuits apply the same
/// limit where they read, inside their [`Pipe`](reactor::pipe::Pipe)
/// (see [`super::bridge::Bridge`]), which this counter cannot do from outside.
/// Time limits are enforced by the [`Table`] (one timer for everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBudget {
    limit: u64,
    to_reserver: u64,
    to_connector: u64,
}

impl CircuitBudget {
    /// A fresh budget with `limits.max_bytes_per_direction` (0 = unlimited).
    pub fn new(limits: &CircuitLimits) -> Self {
        CircuitBudget {
            limit: limits.max_bytes_per_direction,
            to_reserver: 0,
            to_connector: 0,
        }
    }

    /// Bytes forwarded so far in `dir`.
    pub fn transferred(&self, dir: Direction) -> u64 {
        match dir {
            Direction::ToReserver => self.to_reserver,
            Direction::ToConnector => self.to_connector,
        }
    }

    /// Bytes that may still be forwarded in `dir`; `None` means unlimited.
    /// Handlers can cap their reads with it so they never over-forward.
    pub fn remaining(&self, dir: Direction) -> Option<u64> {
        (self.limit != 0).then(|| self.limit.saturating_sub(self.transferred(dir)))
    }

    /// Counts `n` bytes in `dir`. Returns an error once the total exceeds the
    /// limit; the handler should then close the circuit (the bytes over the
    /// limit should not be forwarded).
    pub fn record(&mut self, dir: Direction, n: usize) -> Result<(), BudgetExceeded> {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        let counter = match dir {
            Direction::ToReserver => &mut self.to_reserver,
            Direction::ToConnector => &mut self.to_connector,
        };
        *counter = counter.saturating_add(n);
        if self.limit != 0 && *counter > self.limit {
            Err(BudgetExceeded {
                direction: dir,
                limit: self.limit,
            })
        } else {
            Ok(())
        }
    }
}

/// Something [`Table::expire`] did that the handler may need to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An active reservation reached its TTL without refresh and was released.
    /// The connection stays open; the handler may tell the client.
    Expired {
        /// The released id.
        id: Box<str>,
        /// The connection that owned it.
        conn: ConnId,
    },
    /// A closed connection's reservation was not reclaimed within the grace
    /// period and was released. Informational.
    GraceEnded {
        /// The released id.
        id: Box<str>,
    },
    /// The connection sent nothing for `heartbeat_timeout`. Its reservations
    /// are already released; the handler must close it.
    ConnSilent(ConnId),
    /// A circuit was not accepted in time, or reached `max_duration`. It is
    /// already removed; the handler must close its connections.
    CircuitTimedOut {
        /// The circuit.
        circuit: CircuitId,
        /// The connection that sent `Connect`.
        connector: ConnId,
        /// The connection that sent `Accept`, if any.
        acceptor: Option<ConnId>,
    },
}

/// Counters and gauges for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Reservations currently held (active and in grace).
    pub held: usize,
    /// Of `held`, how many are in grace.
    pub in_grace: usize,
    /// Open circuits (pending and bridged).
    pub circuits: usize,
    /// Reservations taken back in place by their peer during grace.
    pub reclaimed: u64,
    /// Reservations released because their TTL passed.
    pub expired: u64,
    /// `reserve` calls refused (any reason).
    pub refused: u64,
    /// Reservations released for other reasons: grace ended, evicted from
    /// grace to make room, or their connection went silent.
    pub released: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reservations held={} (in grace {}) circuits={} reclaimed={} expired={} refused={} released={}",
            self.held,
            self.in_grace,
            self.circuits,
            self.reclaimed,
            self.expired,
            self.refused,
            self.released
        )
    }
}

/// Internal handle of a reservation; monotonic, so it also orders ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key(u64);

/// What a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Res(Key),
    Conn(ConnId),
    Circuit(CircuitId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    InGrace { until: Instant },
}

#[derive(Debug)]
struct Reservation {
    id: Box<str>,
    peer: Box<str>,
    ip: IpAddr,
    conn: ConnId,
    expires: Instant,
    state: State,
    /// Its entry in `Table::deadlines`.
    due: Instant,
}

#[derive(Debug)]
struct ConnEntry {
    /// Active reservations owned by this connection.
    res: HashSet<Key>,
    /// Heartbeat deadline, `None` if the check is disabled.
    due: Option<Instant>,
}

#[derive(Debug, Default)]
struct PeerEntry {
    count: usize,
    grace: BTreeSet<(Instant, Key)>,
    circuits: usize,
}

#[derive(Debug, Default)]
struct IpEntry {
    count: usize,
    grace: BTreeSet<(Instant, Key)>,
}

#[derive(Debug)]
struct Circuit {
    peer: Box<str>,
    connector: ConnId,
    acceptor: Option<ConnId>,
    due: Option<Instant>,
}

/// `now + d`, never panicking (configured durations are clamped, so the
/// fallback is unreachable in practice).
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// The reservation and circuit table. See the module docs for the rules.
#[derive(Debug)]
pub struct Table {
    limits: Limits,
    circuit_limits: CircuitLimits,
    ids: HashMap<Box<str>, Key>,
    res: HashMap<Key, Reservation>,
    conns: HashMap<ConnId, ConnEntry>,
    peers: HashMap<Box<str>, PeerEntry>,
    ips: HashMap<IpAddr, IpEntry>,
    /// Every reservation in grace, oldest first.
    grace: BTreeSet<(Instant, Key)>,
    /// Every pending deadline, earliest first.
    deadlines: BTreeSet<(Instant, Due)>,
    circuits: HashMap<CircuitId, Circuit>,
    next_key: u64,
    circuit_counter: u64,
    circuit_ids: RandomState,
    stats: Stats,
}

impl Table {
    /// An empty table. Durations longer than ten years are clamped.
    pub fn new(limits: Limits, circuit_limits: CircuitLimits) -> Self {
        let clamp = |d: Duration| d.min(MAX_CONFIG_DURATION);
        let limits = Limits {
            ttl: clamp(limits.ttl),
            grace: clamp(limits.grace),
            heartbeat_timeout: clamp(limits.heartbeat_timeout),
            ..limits
        };
        let circuit_limits = CircuitLimits {
            max_duration: clamp(circuit_limits.max_duration),
            accept_timeout: clamp(circuit_limits.accept_timeout),
            ..circuit_limits
        };
        Table {
            limits,
            circuit_limits,
            ids: HashMap::new(),
            res: HashMap::new(),
            conns: HashMap::new(),
            peers: HashMap::new(),
            ips: HashMap::new(),
            grace: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            circuits: HashMap::new(),
            next_key: 0,
            circuit_counter: 0,
            circuit_ids: RandomState::new(),
            stats: Stats::default(),
        }
    }

    /// The reservation limits in force (after clamping).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The circuit limits in force (after clamping).
    pub fn circuit_limits(&self) -> &CircuitLimits {
        &self.circuit_limits
    }

    /// Reserves `id` for `peer` on connection `conn` from address `ip` and
    /// returns the granted TTL.
    ///
    /// If `peer` already holds `id` (active on any connection, or in grace)
    /// the reservation moves to `conn` in place and uses no new slot. If a
    /// different peer holds it, even in grace, the answer is `IdTaken`: grace
    /// exists so a reconnecting owner finds its name where it left it.
    /// When a limit is reached, reservations in grace that count against it
    /// are released (oldest first) before refusing; limits are checked in
    /// the order per peer, per IP, total, and the first that cannot be met is
    /// the reason. Counts as activity of `conn` (heartbeat).
    ///
    /// `peer` is whatever the client claims; anyone who knows a peer's
    /// identity can take over its ids, so authenticate it in the handler if
    /// that matters.
    pub fn reserve(
        &mut self,
        peer: &str,
        id: &str,
        ip: IpAddr,
        conn: ConnId,
        now: Instant,
    ) -> Result<Duration, Reason> {
        // One client: an IPv4 address, or an IPv6 /64.
        let ip = reactor::client_key(ip);
        let result = match self.ids.get(id).copied() {
            Some(key) => self.reclaim(key, peer, ip, conn, now),
            None => self.insert_new(peer, id, ip, conn, now),
        };
        if result.is_err() {
            self.stats.refused = self.stats.refused.saturating_add(1);
        }
        result
    }

    fn reclaim(
        &mut self,
        key: Key,
        peer: &str,
        ip: IpAddr,
        conn: ConnId,
        now: Instant,
    ) -> Result<Duration, Reason> {
        let Some(r) = self.res.get(&key) else {
            return Err(Reason::NoReservation);
        };
        if &*r.peer != peer {
            return Err(Reason::IdTaken);
        }
        let was_grace = matches!(r.state, State::InGrace { .. });
        if r.ip != ip {
            // Moving to another address takes a slot there.
            let victims = self.plan_room(None, Some(ip), false)?;
            self.evict(&victims);
        }
        self.detach(key);
        if let Some(r) = self.res.get_mut(&key) {
            r.ip = ip;
            r.conn = conn;
        }
        self.attach(key, now);
        if was_grace {
            self.stats.reclaimed = self.stats.reclaimed.saturating_add(1);
        }
        Ok(self.limits.ttl)
    }

    fn insert_new(
        &mut self,
        peer: &str,
        id: &str,
        ip: IpAddr,
        conn: ConnId,
        now: Instant,
    ) -> Result<Duration, Reason> {
        let victims = self.plan_room(Some(peer), Some(ip), true)?;
        self.evict(&victims);
        let key = Key(self.next_key);
        self.next_key = self.next_key.wrapping_add(1);
        self.res.insert(
            key,
            Reservation {
                id: id.into(),
                peer: peer.into(),
                ip,
                conn,
                expires: now,
                state: State::Active,
                due: now,
            },
        );
        self.ids.insert(id.into(), key);
        self.attach(key, now);
        Ok(self.limits.ttl)
    }

    /// Chooses reservations in grace to release so one more reservation fits
    /// in the given scopes, or says which limit refuses. Changes nothing.
    fn plan_room(
        &self,
        peer: Option<&str>,
        ip: Option<IpAddr>,
        total: bool,
    ) -> Result<Vec<Key>, Reason> {
        // Picks up to `need` grace entries not chosen yet, oldest first.
        fn pick(
            grace: Option<&BTreeSet<(Instant, Key)>>,
            need: usize,
            chosen: &mut Vec<Key>,
        ) -> bool {
            let mut got = 0;
            for &(_, k) in grace.into_iter().flatten() {
                if got == need {
                    break;
                }
                if !chosen.contains(&k) {
                    chosen.push(k);
                    got += 1;
                }
            }
            got == need
        }
        let mut chosen = Vec::new();
        if let Some(peer) = peer {
            let entry = self.peers.get(peer);
            let count = entry.map_or(0, |p| p.count);
            let need = (count + 1).saturating_sub(self.limits.per_peer);
            if !pick(entry.map(|p| &p.grace), need, &mut chosen) {
                return Err(Reason::LimitPerPeer);
            }
        }
        if let Some(ip) = ip {
            let entry = self.ips.get(&ip);
            let freed = chosen
                .iter()
                .filter(|k| self.res.get(k).is_some_and(|r| r.ip == ip))
                .count();
            let count = entry.map_or(0, |e| e.count).saturating_sub(freed);
            let need = (count + 1).saturating_sub(self.limits.per_ip);
            if !pick(entry.map(|e| &e.grace), need, &mut chosen) {
                return Err(Reason::LimitPerIp);
            }
        }
        if total {
            let count = self.res.len().saturating_sub(chosen.len());
            let need = (count + 1).saturating_sub(self.limits.max_total);
            if !pick(Some(&self.grace), need, &mut chosen) {
                return Err(Reason::LimitTotal);
            }
        }
        Ok(chosen)
    }

    fn evict(&mut self, victims: &[Key]) {
        for &k in victims {
            if self.release(k).is_some() {
                self.stats.released = self.stats.released.saturating_add(1);
            }
        }
    }

    /// Extends the TTL of `id` if it is active and owned by `conn`; counts as
    /// activity of `conn`. A reconnected peer must `reserve` again instead.
    pub fn refresh(&mut self, id: &str, conn: ConnId, now: Instant) -> Result<Duration, Reason> {
        let key = self.live_key(id, now).ok_or(Reason::NoReservation)?;
        let Some(r) = self.res.get_mut(&key) else {
            return Err(Reason::NoReservation);
        };
        if r.conn != conn {
            return Err(Reason::NoReservation);
        }
        let expires = after(now, self.limits.ttl);
        r.expires = expires;
        let old = std::mem::replace(&mut r.due, expires);
        self.deadlines.remove(&(old, Due::Res(key)));
        self.deadlines.insert((expires, Due::Res(key)));
        self.touch(conn, now);
        Ok(self.limits.ttl)
    }

    /// Records a sign of life on `conn` (call it for every frame received on
    /// a control connection). Returns false if the table does not watch
    /// `conn`, which it does only while `conn` owns active reservations.
    pub fn heartbeat(&mut self, conn: ConnId, now: Instant) -> bool {
        self.touch(conn, now)
    }

    /// Puts the reservations owned by the closed `conn` into grace and stops
    /// watching it. Returns how many went into grace. Harmless for unknown or
    /// already-silent connections.
    pub fn connection_closed(&mut self, conn: ConnId, now: Instant) -> usize {
        let Some(entry) = self.conns.remove(&conn) else {
            return 0;
        };
        if let Some(due) = entry.due {
            self.deadlines.remove(&(due, Due::Conn(conn)));
        }
        let until = after(now, self.limits.grace);
        let mut n = 0;
        for key in entry.res {
            let Some(r) = self.res.get_mut(&key) else {
                continue;
            };
            r.state = State::InGrace { until };
            let due = until.min(r.expires);
            let old = std::mem::replace(&mut r.due, due);
            self.deadlines.remove(&(old, Due::Res(key)));
            self.deadlines.insert((due, Due::Res(key)));
            self.grace.insert((until, key));
            if let Some(p) = self.peers.get_mut(&*r.peer) {
                p.grace.insert((until, key));
            }
            if let Some(e) = self.ips.get_mut(&r.ip) {
                e.grace.insert((until, key));
            }
            n += 1;
        }
        n
    }

    /// The connection to send `Incoming` on for `id`: only active
    /// reservations within their TTL on a connection not yet silent.
    pub fn lookup(&self, id: &str, now: Instant) -> Option<ConnId> {
        let key = self.live_key(id, now)?;
        self.res.get(&key).map(|r| r.conn)
    }

    /// Key of an active reservation that has not passed a deadline which
    /// `expire` simply has not processed yet.
    fn live_key(&self, id: &str, now: Instant) -> Option<Key> {
        let key = *self.ids.get(id)?;
        let r = self.res.get(&key)?;
        if r.state != State::Active || now >= r.expires {
            return None;
        }
        let silent = self
            .conns
            .get(&r.conn)
            .and_then(|c| c.due)
            .is_some_and(|due| now >= due);
        (!silent).then_some(key)
    }

    /// Opens a pending circuit to the holder of `id` for the connection
    /// `connector`. Returns the circuit id and the reserver's control
    /// connection, on which the handler sends `Incoming`.
    pub fn open_circuit(
        &mut self,
        id: &str,
        connector: ConnId,
        now: Instant,
    ) -> Result<(CircuitId, ConnId), Reason> {
        let key = self.live_key(id, now).ok_or(Reason::NoReservation)?;
        let Some(r) = self.res.get(&key) else {
            return Err(Reason::NoReservation);
        };
        let per_peer = self.peers.get(&*r.peer).map_or(0, |p| p.circuits);
        let limits = &self.circuit_limits;
        if (limits.max_per_peer != 0 && per_peer >= limits.max_per_peer)
            || (limits.max_total != 0 && self.circuits.len() >= limits.max_total)
        {
            return Err(Reason::CircuitLimit);
        }
        let mut circuit = None;
        // Collisions of a 64-bit keyed hash are practically impossible; the
        // bound only keeps the loop finite.
        for _ in 0..16 {
            self.circuit_counter = self.circuit_counter.wrapping_add(1);
            let candidate = CircuitId(self.circuit_ids.hash_one(self.circuit_counter));
            if !self.circuits.contains_key(&candidate) {
                circuit = Some(candidate);
                break;
            }
        }
        let circuit = circuit.ok_or(Reason::CircuitLimit)?;
        let reserver = r.conn;
        let peer = r.peer.clone();
        let due = after(now, self.circuit_limits.accept_timeout);
        self.peers.entry(peer.clone()).or_default().circuits += 1;
        self.deadlines.insert((due, Due::Circuit(circuit)));
        self.circuits.insert(
            circuit,
            Circuit {
                peer,
                connector,
                acceptor: None,
                due: Some(due),
            },
        );
        Ok((circuit, reserver))
    }

    /// Bridges a pending circuit: `acceptor` sent `Accept { circuit }`.
    /// Returns the connector's connection (send `Connected` to both). Unknown,
    /// already accepted or timed-out circuits give `UnknownCircuit`.
    pub fn accept_circuit(
        &mut self,
        circuit: CircuitId,
        acceptor: ConnId,
        now: Instant,
    ) -> Result<ConnId, Reason> {
        let Some(c) = self.circuits.get_mut(&circuit) else {
            return Err(Reason::UnknownCircuit);
        };
        if c.acceptor.is_some() || c.due.is_some_and(|due| now >= due) {
            return Err(Reason::UnknownCircuit);
        }
        c.acceptor = Some(acceptor);
        if let Some(old) = c.due {
            self.deadlines.remove(&(old, Due::Circuit(circuit)));
        }
        let max = self.circuit_limits.max_duration;
        c.due = (!max.is_zero()).then(|| after(now, max));
        if let Some(due) = c.due {
            self.deadlines.insert((due, Due::Circuit(circuit)));
        }
        Ok(c.connector)
    }

    /// Forgets a circuit (either end closed, or the budget ran out). Returns
    /// false if it was unknown.
    pub fn close_circuit(&mut self, circuit: CircuitId) -> bool {
        self.remove_circuit(circuit).is_some()
    }

    fn remove_circuit(&mut self, circuit: CircuitId) -> Option<Circuit> {
        let c = self.circuits.remove(&circuit)?;
        if let Some(due) = c.due {
            self.deadlines.remove(&(due, Due::Circuit(circuit)));
        }
        if let Some(p) = self.peers.get_mut(&c.peer) {
            p.circuits = p.circuits.saturating_sub(1);
            if p.count == 0 && p.circuits == 0 {
                self.peers.remove(&c.peer);
            }
        }
        Some(c)
    }

    /// Releases everything whose deadline is at or before `now` and appends
    /// what happened to `out`: TTL expiries, ended grace periods, silent
    /// connections (released at once, not put into grace) and timed-out
    /// circuits. Call it when the timer from [`Table::next_deadline`] fires.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Event>) {
        while let Some(&(at, due)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, due));
            match due {
                Due::Res(key) => {
                    let Some(r) = self.release(key) else { continue };
                    if now >= r.expires {
                        self.stats.expired = self.stats.expired.saturating_add(1);
                        out.push(Event::Expired {
                            id: r.id,
                            conn: r.conn,
                        });
                    } else {
                        self.stats.released = self.stats.released.saturating_add(1);
                        out.push(Event::GraceEnded { id: r.id });
                    }
                }
                Due::Conn(conn) => {
                    let Some(entry) = self.conns.remove(&conn) else {
                        continue;
                    };
                    for key in entry.res {
                        if self.release(key).is_some() {
                            self.stats.released = self.stats.released.saturating_add(1);
                        }
                    }
                    out.push(Event::ConnSilent(conn));
                }
                Due::Circuit(circuit) => {
                    let Some(c) = self.remove_circuit(circuit) else {
                        continue;
                    };
                    out.push(Event::CircuitTimedOut {
                        circuit,
                        connector: c.connector,
                        acceptor: c.acceptor,
                    });
                }
            }
        }
    }

    /// When [`Table::expire`] next has work to do; `None` if never.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            held: self.res.len(),
            in_grace: self.grace.len(),
            circuits: self.circuits.len(),
            ..self.stats
        }
    }

    /// Moves the heartbeat deadline of a watched connection.
    fn touch(&mut self, conn: ConnId, now: Instant) -> bool {
        let Some(entry) = self.conns.get_mut(&conn) else {
            return false;
        };
        if let Some(old) = entry.due {
            self.deadlines.remove(&(old, Due::Conn(conn)));
        }
        let timeout = self.limits.heartbeat_timeout;
        entry.due = (!timeout.is_zero()).then(|| after(now, timeout));
        if let Some(due) = entry.due {
            self.deadlines.insert((due, Due::Conn(conn)));
        }
        true
    }

    /// Makes the reservation `key` active on its `conn` and `ip` with a
    /// fresh TTL, adding it to every index except `ids`/`res`.
    fn attach(&mut self, key: Key, now: Instant) {
        let Some(r) = self.res.get_mut(&key) else {
            return;
        };
        let expires = after(now, self.limits.ttl);
        r.state = State::Active;
        r.expires = expires;
        r.due = expires;
        self.deadlines.insert((expires, Due::Res(key)));
        match self.peers.get_mut(&*r.peer) {
            Some(p) => p.count += 1,
            None => {
                let p = PeerEntry {
                    count: 1,
                    ..PeerEntry::default()
                };
                self.peers.insert(r.peer.clone(), p);
            }
        }
        self.ips.entry(r.ip).or_default().count += 1;
        let conn = r.conn;
        self.conns
            .entry(conn)
            .or_insert_with(|| ConnEntry {
                res: HashSet::new(),
                due: None,
            })
            .res
            .insert(key);
        self.touch(conn, now);
    }

    /// Removes `key` from every index except `ids`/`res` (inverse of attach).
    fn detach(&mut self, key: Key) {
        let Some(r) = self.res.get(&key) else {
            return;
        };
        self.deadlines.remove(&(r.due, Due::Res(key)));
        let grace_key = match r.state {
            State::Active => {
                if let Some(c) = self.conns.get_mut(&r.conn) {
                    c.res.remove(&key);
                    if c.res.is_empty() {
                        if let Some(due) = c.due {
                            self.deadlines.remove(&(due, Due::Conn(r.conn)));
                        }
                        self.conns.remove(&r.conn);
                    }
                }
                None
            }
            State::InGrace { until } => {
                self.grace.remove(&(until, key));
                Some((until, key))
            }
        };
        if let Some(p) = self.peers.get_mut(&*r.peer) {
            p.count = p.count.saturating_sub(1);
            if let Some(g) = grace_key {
                p.grace.remove(&g);
            }
            if p.count == 0 && p.circuits == 0 {
                self.peers.remove(&*r.peer);
            }
        }
        if let Some(e) = self.ips.get_mut(&r.ip) {
            e.count = e.count.saturating_sub(1);
            if let Some(g) = grace_key {
                e.grace.remove(&g);
            }
            if e.count == 0 {
                self.ips.remove(&r.ip);
            }
        }
    }

    /// Removes the reservation entirely and returns it.
    fn release(&mut self, key: Key) -> Option<Reservation> {
        self.detach(key);
        let r = self.res.remove(&key)?;
        self.ids.remove(&r.id);
        Some(r)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Table {
    /// Cross-checks every index against the reservations and panics on the first
    /// disagreement: counts per peer and per address equal the reservations they
    /// index and stay within the limits, every reservation and watched connection
    /// has exactly its one deadline, nothing in grace is missing from a grace set.
    /// For tests and the fuzz targets (feature `fuzzing`); O(n), never on a hot path.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        assert_eq!(self.ids.len(), self.res.len());
        assert!(self.res.len() <= self.limits.max_total);
        let mut peer_counts: HashMap<&str, usize> = HashMap::new();
        let mut ip_counts: HashMap<IpAddr, usize> = HashMap::new();
        let mut grace = 0;
        for (k, r) in &self.res {
            assert_eq!(self.ids.get(&r.id), Some(k));
            assert!(self.deadlines.contains(&(r.due, Due::Res(*k))));
            *peer_counts.entry(&r.peer).or_default() += 1;
            *ip_counts.entry(r.ip).or_default() += 1;
            match r.state {
                State::Active => {
                    assert_eq!(r.due, r.expires);
                    assert!(self.conns[&r.conn].res.contains(k));
                }
                State::InGrace { until } => {
                    grace += 1;
                    assert_eq!(r.due, until.min(r.expires));
                    assert!(self.grace.contains(&(until, *k)));
                    assert!(self.peers[&*r.peer].grace.contains(&(until, *k)));
                    assert!(self.ips[&r.ip].grace.contains(&(until, *k)));
                }
            }
        }
        assert_eq!(self.grace.len(), grace);
        for (p, e) in &self.peers {
            let n = peer_counts.get(&**p).copied().unwrap_or(0);
            assert_eq!(e.count, n);
            assert!(n <= self.limits.per_peer);
            assert!(e.count > 0 || e.circuits > 0);
        }
        assert_eq!(
            peer_counts.len(),
            self.peers.values().filter(|p| p.count > 0).count()
        );
        for (ip, e) in &self.ips {
            assert_eq!(e.count, ip_counts[ip]);
            assert!(e.count <= self.limits.per_ip);
        }
        assert_eq!(ip_counts.len(), self.ips.len());
        let mut due_count = self.res.len();
        for (c, e) in &self.conns {
            assert!(!e.res.is_empty());
            if let Some(d) = e.due {
                assert!(self.deadlines.contains(&(d, Due::Conn(*c))));
                due_count += 1;
            }
        }
        for (id, c) in &self.circuits {
            if let Some(d) = c.due {
                assert!(self.deadlines.contains(&(d, Due::Circuit(*id))));
                due_count += 1;
            }
        }
        assert_eq!(self.deadlines.len(), due_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const PEER_A: &str = "peer-a";
    const PEER_B: &str = "peer-b";

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn table() -> (Table, Instant) {
        (
            Table::new(Limits::default(), CircuitLimits::default()),
            Instant::now(),
        )
    }

    fn expire(t: &mut Table, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        t.expire(now, &mut out);
        t.check_invariants();
        out
    }

    #[test]
    fn reserve_and_lookup() {
        let (mut t, now) = table();
        assert_eq!(
            t.reserve(PEER_A, "alice", ip(1), ConnId(1), now),
            Ok(secs(3600))
        );
        assert_eq!(t.lookup("alice", now), Some(ConnId(1)));
        assert_eq!(t.lookup("bob", now), None);
        assert_eq!(t.stats().held, 1);
        t.check_invariants();
    }

    #[test]
    fn reconnect_100_times_same_id_never_exhausts() {
        let (mut t, start) = table();
        let mut now = start;
        for i in 0..100u64 {
            let conn = ConnId(i);
            assert_eq!(
                t.reserve(PEER_A, "alice", ip(1), conn, now),
                Ok(secs(3600)),
                "round {i}"
            );
            assert_eq!(t.lookup("alice", now), Some(conn));
            assert_eq!(t.connection_closed(conn, now), 1);
            now += Duration::from_millis(100);
            expire(&mut t, now);
        }
        let s = t.stats();
        assert_eq!((s.held, s.reclaimed, s.refused), (1, 99, 0));
    }

    #[test]
    fn reconnect_100_times_new_ids_never_exhausts_peer_or_ip_limit() {
        // A flaky client that picks a fresh id (and even a fresh peer name)
        // on every reconnect must not lock itself out.
        let (mut t, start) = table();
        let mut now = start;
        for i in 0..100u64 {
            let conn = ConnId(i);
            let id = format!("id-{i}");
            assert_eq!(
                t.reserve(PEER_A, &id, ip(1), conn, now),
                Ok(secs(3600)),
                "round {i}"
            );
            let other_peer = format!("anon-{i}");
            let other_id = format!("other-{i}");
            assert!(
                t.reserve(&other_peer, &other_id, ip(1), conn, now).is_ok(),
                "round {i}"
            );
            t.connection_closed(conn, now);
            now += Duration::from_millis(10); // well inside the grace period
            t.check_invariants();
        }
        let s = t.stats();
        assert_eq!(s.refused, 0);
        assert!(s.held <= Limits::default().per_ip);
        assert!(s.released >= 190);
    }

    #[test]
    fn quick_reconnect_in_grace_keeps_slot() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "alice", ip(1), ConnId(1), now).unwrap();
        t.connection_closed(ConnId(1), now);
        assert_eq!(t.lookup("alice", now), None, "grace is not reachable");
        assert_eq!(t.stats().in_grace, 1);
        let later = now + secs(2);
        assert_eq!(
            t.reserve(PEER_B, "alice", ip(2), ConnId(9), later),
            Err(Reason::IdTaken)
        );
        assert!(t.reserve(PEER_A, "alice", ip(3), ConnId(2), later).is_ok());
        assert_eq!(t.lookup("alice", later), Some(ConnId(2)));
        let s = t.stats();
        assert_eq!((s.reclaimed, s.in_grace, s.held), (1, 0, 1));
        assert!(expire(&mut t, now + secs(10)).is_empty());
        assert_eq!(t.lookup("alice", now + secs(10)), Some(ConnId(2)));
    }

    #[test]
    fn reserve_on_new_conn_before_old_close_moves_reservation() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "alice", ip(1), ConnId(1), now).unwrap();
        t.reserve(PEER_A, "alice", ip(1), ConnId(2), now).unwrap();
        assert_eq!(t.lookup("alice", now), Some(ConnId(2)));
        assert_eq!(t.connection_closed(ConnId(1), now), 0);
        assert_eq!(t.lookup("alice", now), Some(ConnId(2)));
        assert_eq!(t.stats().reclaimed, 0, "it was not in grace");
        assert_eq!(
            t.refresh("alice", ConnId(1), now),
            Err(Reason::NoReservation)
        );
        t.check_invariants();
    }

    #[test]
    fn grace_ends_and_releases() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "alice", ip(1), ConnId(1), now).unwrap();
        t.connection_closed(ConnId(1), now);
        assert_eq!(t.next_deadline(), Some(now + secs(5)));
        assert!(expire(&mut t, now + secs(4)).is_empty());
        assert_eq!(
            expire(&mut t, now + secs(5)),
            [Event::GraceEnded { id: "alice".into() }]
        );
        assert_eq!(t.stats().held, 0);
        assert_eq!(t.stats().released, 1);
        assert_eq!(t.next_deadline(), None);
        assert!(
            t.reserve(PEER_B, "alice", ip(2), ConnId(2), now + secs(5))
                .is_ok()
        );
    }

    #[test]
    fn grace_released_when_other_peer_needs_total_slot() {
        let limits = Limits {
            max_total: 2,
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        t.reserve(PEER_A, "a1", ip(1), ConnId(1), now).unwrap();
        t.reserve(PEER_A, "a2", ip(1), ConnId(1), now + secs(1))
            .unwrap();
        assert_eq!(
            t.reserve(PEER_B, "b1", ip(2), ConnId(2), now),
            Err(Reason::LimitTotal)
        );
        t.connection_closed(ConnId(1), now + secs(1));
        assert!(
            t.reserve(PEER_B, "b1", ip(2), ConnId(2), now + secs(1))
                .is_ok()
        );
        assert!(
            t.reserve(PEER_B, "b2", ip(2), ConnId(2), now + secs(1))
                .is_ok()
        );
        assert_eq!(
            t.reserve(PEER_B, "b3", ip(2), ConnId(2), now),
            Err(Reason::LimitTotal)
        );
        let s = t.stats();
        assert_eq!((s.held, s.in_grace, s.released, s.refused), (2, 0, 2, 2));
        t.check_invariants();
    }

    #[test]
    fn grace_released_oldest_first_for_per_ip_limit() {
        let limits = Limits {
            per_ip: 2,
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        t.reserve("p1", "old", ip(1), ConnId(1), now).unwrap();
        t.reserve("p2", "new", ip(1), ConnId(2), now).unwrap();
        t.connection_closed(ConnId(1), now);
        t.connection_closed(ConnId(2), now + secs(1));
        assert!(
            t.reserve("p3", "x", ip(1), ConnId(3), now + secs(1))
                .is_ok()
        );
        assert!(!t.ids.contains_key("old"), "oldest grace entry released");
        assert_eq!(t.stats().in_grace, 1);
        // "new" survived, so p2 can still reclaim it.
        assert!(
            t.reserve("p2", "new", ip(1), ConnId(5), now + secs(2))
                .is_ok()
        );
        assert_eq!(t.stats().reclaimed, 1);
        t.check_invariants();
    }

    #[test]
    fn grace_released_for_per_peer_limit() {
        let (mut t, now) = table();
        for i in 0..4 {
            t.reserve(PEER_A, &format!("a{i}"), ip(1), ConnId(1), now)
                .unwrap();
        }
        assert_eq!(
            t.reserve(PEER_A, "a4", ip(1), ConnId(2), now),
            Err(Reason::LimitPerPeer)
        );
        t.connection_closed(ConnId(1), now);
        assert!(t.reserve(PEER_A, "a4", ip(1), ConnId(2), now).is_ok());
        assert_eq!(t.stats().held, 4);
        t.check_invariants();
    }

    #[test]
    fn every_limit_refuses_with_its_reason() {
        let limits = Limits {
            max_total: 6,
            per_peer: 2,
            per_ip: 3,
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        t.reserve("p", "1", ip(1), ConnId(1), now).unwrap();
        t.reserve("p", "2", ip(1), ConnId(1), now).unwrap();
        assert_eq!(
            t.reserve("p", "3", ip(9), ConnId(1), now),
            Err(Reason::LimitPerPeer)
        );
        t.reserve("q", "4", ip(1), ConnId(2), now).unwrap();
        assert_eq!(
            t.reserve("r", "5", ip(1), ConnId(3), now),
            Err(Reason::LimitPerIp)
        );
        t.reserve("r", "5", ip(2), ConnId(3), now).unwrap();
        t.reserve("s", "6", ip(3), ConnId(4), now).unwrap();
        t.reserve("t", "7", ip(4), ConnId(5), now).unwrap();
        assert_eq!(
            t.reserve("u", "8", ip(5), ConnId(6), now),
            Err(Reason::LimitTotal)
        );
        // Per peer is reported before per IP and total.
        assert_eq!(
            t.reserve("p", "9", ip(1), ConnId(1), now),
            Err(Reason::LimitPerPeer)
        );
        assert_eq!(t.stats().refused, 4);
        // Zero limits refuse everything.
        let mut z = Table::new(
            Limits {
                max_total: 0,
                ..Limits::default()
            },
            CircuitLimits::default(),
        );
        assert_eq!(
            z.reserve("p", "1", ip(1), ConnId(1), now),
            Err(Reason::LimitTotal)
        );
        t.check_invariants();
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let limits = Limits {
            per_ip: 1,
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        t.reserve("p", "1", a, ConnId(1), now).unwrap();
        assert_eq!(
            t.reserve("q", "2", b, ConnId(2), now),
            Err(Reason::LimitPerIp)
        );
        assert!(t.reserve("q", "2", c, ConnId(2), now).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(reactor::client_key(mapped), ip(1));
    }

    #[test]
    fn reclaim_from_another_ip_respects_per_ip_limit() {
        let limits = Limits {
            per_ip: 1,
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        t.reserve(PEER_B, "b", ip(2), ConnId(2), now).unwrap();
        t.connection_closed(ConnId(1), now);
        assert_eq!(
            t.reserve(PEER_A, "a", ip(2), ConnId(3), now),
            Err(Reason::LimitPerIp)
        );
        assert!(t.reserve(PEER_A, "a", ip(3), ConnId(3), now).is_ok());
        assert_eq!(t.lookup("a", now), Some(ConnId(3)));
        t.check_invariants();
    }

    #[test]
    fn ttl_expires_unless_refreshed() {
        let limits = Limits {
            ttl: secs(10),
            heartbeat_timeout: Duration::ZERO,
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        t.reserve(PEER_A, "kept", ip(1), ConnId(1), now).unwrap();
        t.reserve(PEER_A, "lost", ip(1), ConnId(1), now).unwrap();
        assert_eq!(
            t.refresh("kept", ConnId(2), now + secs(8)),
            Err(Reason::NoReservation)
        );
        assert_eq!(
            t.refresh("nope", ConnId(1), now + secs(8)),
            Err(Reason::NoReservation)
        );
        assert_eq!(t.refresh("kept", ConnId(1), now + secs(8)), Ok(secs(10)));
        assert_eq!(t.next_deadline(), Some(now + secs(10)));
        // Past TTL but not yet swept: already unreachable.
        assert_eq!(t.lookup("lost", now + secs(10)), None);
        assert_eq!(
            t.refresh("lost", ConnId(1), now + secs(10)),
            Err(Reason::NoReservation)
        );
        assert_eq!(
            expire(&mut t, now + secs(11)),
            [Event::Expired {
                id: "lost".into(),
                conn: ConnId(1)
            }]
        );
        assert_eq!(t.lookup("kept", now + secs(11)), Some(ConnId(1)));
        assert_eq!(expire(&mut t, now + secs(18)).len(), 1);
        assert_eq!(t.stats().expired, 2);
        assert_eq!(t.stats().held, 0);
    }

    #[test]
    fn ttl_can_end_during_grace() {
        let limits = Limits {
            ttl: secs(3),
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        t.connection_closed(ConnId(1), now + secs(1));
        assert_eq!(t.next_deadline(), Some(now + secs(3)));
        let ev = expire(&mut t, now + secs(3));
        assert!(matches!(ev.as_slice(), [Event::Expired { .. }]));
    }

    #[test]
    fn heartbeat_silence_releases_immediately() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "alice", ip(1), ConnId(1), now).unwrap();
        assert!(t.heartbeat(ConnId(1), now + secs(20)));
        assert!(!t.heartbeat(ConnId(7), now + secs(20)));
        assert!(expire(&mut t, now + secs(49)).is_empty());
        assert_eq!(t.lookup("alice", now + secs(49)), Some(ConnId(1)));
        assert_eq!(
            t.lookup("alice", now + secs(50)),
            None,
            "silent before sweep"
        );
        assert_eq!(
            expire(&mut t, now + secs(50)),
            [Event::ConnSilent(ConnId(1))]
        );
        let s = t.stats();
        assert_eq!((s.held, s.in_grace, s.released), (0, 0, 1));
        // Closing it afterwards is harmless; the id is free for others.
        assert_eq!(t.connection_closed(ConnId(1), now + secs(51)), 0);
        assert!(
            t.reserve(PEER_B, "alice", ip(2), ConnId(2), now + secs(51))
                .is_ok()
        );
    }

    #[test]
    fn refresh_and_reserve_count_as_heartbeat() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        t.refresh("a", ConnId(1), now + secs(25)).unwrap();
        t.reserve(PEER_A, "b", ip(1), ConnId(1), now + secs(50))
            .unwrap();
        assert!(expire(&mut t, now + secs(79)).is_empty());
        assert_eq!(
            expire(&mut t, now + secs(80)),
            [Event::ConnSilent(ConnId(1))]
        );
    }

    #[test]
    fn id_taken_by_other_peer() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "alice", ip(1), ConnId(1), now).unwrap();
        assert_eq!(
            t.reserve(PEER_B, "alice", ip(1), ConnId(2), now),
            Err(Reason::IdTaken)
        );
        assert_eq!(t.lookup("alice", now), Some(ConnId(1)));
        assert_eq!(t.stats().refused, 1);
    }

    #[test]
    fn next_deadline_is_earliest() {
        let limits = Limits {
            ttl: secs(100),
            heartbeat_timeout: secs(30),
            grace: secs(5),
            ..Limits::default()
        };
        let mut t = Table::new(limits, CircuitLimits::default());
        let now = Instant::now();
        assert_eq!(t.next_deadline(), None);
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        assert_eq!(t.next_deadline(), Some(now + secs(30)));
        t.reserve(PEER_B, "b", ip(2), ConnId(2), now).unwrap();
        t.connection_closed(ConnId(2), now + secs(1));
        assert_eq!(t.next_deadline(), Some(now + secs(6)));
    }

    #[test]
    fn circuit_lifecycle() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "alice", ip(1), ConnId(1), now).unwrap();
        assert_eq!(
            t.open_circuit("bob", ConnId(5), now),
            Err(Reason::NoReservation)
        );
        let (c, reserver) = t.open_circuit("alice", ConnId(5), now).unwrap();
        assert_eq!(reserver, ConnId(1));
        assert_eq!(
            t.accept_circuit(CircuitId(c.0 ^ 1), ConnId(6), now),
            Err(Reason::UnknownCircuit)
        );
        assert_eq!(t.accept_circuit(c, ConnId(6), now + secs(1)), Ok(ConnId(5)));
        assert_eq!(
            t.accept_circuit(c, ConnId(7), now + secs(1)),
            Err(Reason::UnknownCircuit)
        );
        assert_eq!(t.stats().circuits, 1);
        assert!(t.close_circuit(c));
        assert!(!t.close_circuit(c));
        assert_eq!(t.stats().circuits, 0);
        t.check_invariants();
    }

    #[test]
    fn circuit_needs_active_reservation() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "alice", ip(1), ConnId(1), now).unwrap();
        t.connection_closed(ConnId(1), now);
        assert_eq!(
            t.open_circuit("alice", ConnId(5), now),
            Err(Reason::NoReservation)
        );
    }

    #[test]
    fn circuit_limits_per_peer_and_total() {
        let cl = CircuitLimits {
            max_per_peer: 2,
            max_total: 3,
            ..CircuitLimits::default()
        };
        let mut t = Table::new(Limits::default(), cl);
        let now = Instant::now();
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        t.reserve(PEER_A, "a2", ip(1), ConnId(1), now).unwrap();
        t.reserve(PEER_B, "b", ip(2), ConnId(2), now).unwrap();
        let (c1, _) = t.open_circuit("a", ConnId(10), now).unwrap();
        let (c2, _) = t.open_circuit("a2", ConnId(11), now).unwrap();
        assert_ne!(c1, c2);
        assert_eq!(
            t.open_circuit("a", ConnId(12), now),
            Err(Reason::CircuitLimit)
        );
        t.open_circuit("b", ConnId(13), now).unwrap();
        assert_eq!(
            t.open_circuit("b", ConnId(14), now),
            Err(Reason::CircuitLimit)
        );
        t.close_circuit(c1);
        assert!(t.open_circuit("a", ConnId(15), now).is_ok());
        // Circuits outlive the reservation and still count for the peer.
        t.connection_closed(ConnId(1), now);
        expire(&mut t, now + secs(5));
        assert_eq!(t.peers[PEER_A].circuits, 2);
        t.check_invariants();
        // Unlimited (0) circuit limits.
        let mut u = Table::new(
            Limits::default(),
            CircuitLimits {
                max_per_peer: 0,
                max_total: 0,
                ..CircuitLimits::default()
            },
        );
        u.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        for i in 0..100 {
            assert!(u.open_circuit("a", ConnId(100 + i), now).is_ok());
        }
    }

    #[test]
    fn circuit_timeouts() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        let (pending, _) = t.open_circuit("a", ConnId(10), now).unwrap();
        let (bridged, _) = t.open_circuit("a", ConnId(11), now).unwrap();
        t.accept_circuit(bridged, ConnId(12), now + secs(1))
            .unwrap();
        assert_eq!(
            t.accept_circuit(pending, ConnId(13), now + secs(10)),
            Err(Reason::UnknownCircuit)
        );
        t.heartbeat(ConnId(1), now + secs(25));
        assert_eq!(
            expire(&mut t, now + secs(10)),
            [Event::CircuitTimedOut {
                circuit: pending,
                connector: ConnId(10),
                acceptor: None
            }]
        );
        t.heartbeat(ConnId(1), now + secs(50));
        t.heartbeat(ConnId(1), now + secs(75));
        t.heartbeat(ConnId(1), now + secs(100));
        assert_eq!(
            expire(&mut t, now + secs(121)),
            [Event::CircuitTimedOut {
                circuit: bridged,
                connector: ConnId(11),
                acceptor: Some(ConnId(12))
            }]
        );
        assert_eq!(t.stats().circuits, 0);
        // max_duration 0: a bridged circuit has no deadline.
        let mut u = Table::new(
            Limits::default(),
            CircuitLimits {
                max_duration: Duration::ZERO,
                ..CircuitLimits::default()
            },
        );
        u.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        let (c, _) = u.open_circuit("a", ConnId(10), now).unwrap();
        u.accept_circuit(c, ConnId(11), now).unwrap();
        u.connection_closed(ConnId(1), now);
        expire(&mut u, now + secs(100_000));
        assert_eq!(u.stats().circuits, 1);
        assert_eq!(u.next_deadline(), None);
    }

    #[test]
    fn circuit_budget_counts_each_direction() {
        let limits = CircuitLimits {
            max_bytes_per_direction: 100,
            ..CircuitLimits::default()
        };
        let mut b = CircuitBudget::new(&limits);
        assert_eq!(b.remaining(Direction::ToReserver), Some(100));
        assert_eq!(b.record(Direction::ToReserver, 60), Ok(()));
        assert_eq!(b.record(Direction::ToConnector, 100), Ok(()));
        assert_eq!(b.remaining(Direction::ToReserver), Some(40));
        assert_eq!(b.remaining(Direction::ToConnector), Some(0));
        let err = b.record(Direction::ToReserver, 41).unwrap_err();
        assert_eq!(
            err,
            BudgetExceeded {
                direction: Direction::ToReserver,
                limit: 100
            }
        );
        assert!(err.to_string().contains("connector->reserver"));
        assert_eq!(b.transferred(Direction::ToReserver), 101);
        assert_eq!(b.remaining(Direction::ToReserver), Some(0));
        let mut u = CircuitBudget::new(&CircuitLimits {
            max_bytes_per_direction: 0,
            ..CircuitLimits::default()
        });
        assert_eq!(u.remaining(Direction::ToConnector), None);
        assert_eq!(u.record(Direction::ToConnector, usize::MAX), Ok(()));
        assert_eq!(u.record(Direction::ToConnector, usize::MAX), Ok(()));
    }

    #[test]
    fn stats_display_is_one_line() {
        let (mut t, now) = table();
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        let line = t.stats().to_string();
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            "reservations held=1 (in grace 0) circuits=0 reclaimed=0 expired=0 refused=0 released=0"
        );
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let limits = Limits {
            ttl: Duration::MAX,
            grace: Duration::MAX,
            heartbeat_timeout: Duration::MAX,
            ..Limits::default()
        };
        let cl = CircuitLimits {
            max_duration: Duration::MAX,
            accept_timeout: Duration::MAX,
            ..CircuitLimits::default()
        };
        let mut t = Table::new(limits, cl);
        let now = Instant::now();
        assert_eq!(t.limits().ttl, MAX_CONFIG_DURATION);
        assert_eq!(t.circuit_limits().accept_timeout, MAX_CONFIG_DURATION);
        t.reserve(PEER_A, "a", ip(1), ConnId(1), now).unwrap();
        let (c, _) = t.open_circuit("a", ConnId(2), now).unwrap();
        t.accept_circuit(c, ConnId(3), now).unwrap();
        t.connection_closed(ConnId(1), now);
        assert!(expire(&mut t, now + secs(1)).is_empty());
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_operations_keep_invariants() {
        let limits = Limits {
            max_total: 12,
            per_peer: 3,
            per_ip: 5,
            ttl: secs(60),
            grace: secs(5),
            heartbeat_timeout: secs(20),
        };
        let cl = CircuitLimits {
            max_per_peer: 3,
            max_total: 8,
            ..CircuitLimits::default()
        };
        let mut t = Table::new(limits, cl);
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut now = Instant::now();
        let mut circuits = Vec::new();
        let mut events = Vec::new();
        for step in 0..20_000 {
            let peer = format!("p{}", rng.below(8));
            let id = format!("id{}", rng.below(20));
            let conn = ConnId(rng.below(10));
            let addr = ip(u8::try_from(rng.below(4)).unwrap());
            match rng.below(10) {
                0..=2 => {
                    let _ = t.reserve(&peer, &id, addr, conn, now);
                }
                3 => {
                    let _ = t.refresh(&id, conn, now);
                }
                4 => {
                    t.heartbeat(conn, now);
                }
                5 => {
                    t.connection_closed(conn, now);
                }
                6 => {
                    if let Ok((c, _)) = t.open_circuit(&id, conn, now) {
                        circuits.push(c);
                    }
                }
                7 => {
                    if let Some(&c) = circuits.get(usize::try_from(rng.below(8)).unwrap()) {
                        let _ = t.accept_circuit(c, conn, now);
                    }
                }
                8 => {
                    if !circuits.is_empty() {
                        let i = usize::try_from(rng.below(circuits.len() as u64)).unwrap();
                        t.close_circuit(circuits.swap_remove(i));
                    }
                }
                _ => {
                    now += Duration::from_millis(rng.below(8000));
                    events.clear();
                    t.expire(now, &mut events);
                    if let Some(d) = t.next_deadline() {
                        assert!(d > now, "step {step}");
                    }
                }
            }
            if let Some(k) = t.ids.get(id.as_str()) {
                let r = &t.res[k];
                if t.lookup(&id, now).is_some() {
                    assert_eq!(r.state, State::Active);
                }
            }
            t.check_invariants();
        }
        let s = t.stats();
        assert!(
            s.reclaimed > 0 && s.expired + s.released > 0 && s.refused > 0,
            "{s}"
        );
    }
}
