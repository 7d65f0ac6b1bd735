//! The discovery service: announcements out, peer events in, on the reactor.
//!
//! [`Discovery`] is a component: one UDP socket ([`UdpConn`]) and two timers,
//! driven by whichever handler owns it. It broadcasts this node's announcement at
//! once and then every jittered interval, feeds every received datagram to the
//! sans-io [`PeerTable`], expires silent peers at the table's deadline, and hands
//! the resulting [`PeerEvent`]s back to its caller. [`DiscoveryHandler`] wraps it as
//! a handler of its own that reports events to an owner handler (as messages) or
//! to a callback, and says goodbye on shutdown.
//!
//! Embedding it in another handler:
//!
//! ```no_run
//! use reactor_discovery::{Discovery, DiscoveryConfig, PeerEvent};
//! use reactor::{Context, Handler, HandlerResult, SourceId, TimerId};
//!
//! struct Node { disc: Discovery, events: Vec<PeerEvent> }
//!
//! impl Handler for Node {
//!     type Message = ();
//!     type Job = ();
//!     fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
//!         Ok(self.disc.start(cx)?)
//!     }
//!     fn on_readable(&mut self, cx: &mut Context<'_, Self>, s: SourceId) -> HandlerResult {
//!         if s == self.disc.source() {
//!             self.disc.on_readable(cx, &mut self.events)?;
//!         }
//!         for ev in self.events.drain(..) { println!("{ev:?}"); }
//!         Ok(())
//!     }
//!     fn on_writable(&mut self, cx: &mut Context<'_, Self>, s: SourceId) -> HandlerResult {
//!         if s == self.disc.source() { self.disc.on_writable(cx); }
//!         Ok(())
//!     }
//!     fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
//!         self.disc.on_timer(cx, t, &mut self.events);
//!         for ev in self.events.drain(..) { println!("{ev:?}"); }
//!         Ok(())
//!     }
//!     fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
//!         self.disc.leave(cx);
//!         cx.close();
//!         Ok(())
//!     }
//!     fn on_close(&mut self, cx: &mut Context<'_, Self>, _r: reactor::CloseReason) { self.disc.leave(cx); }
//! }
//!
//! let mut cfg = DiscoveryConfig::new("node-1");
//! cfg.port = 0; // tests: let the OS pick; real nodes share a fixed port (7979)
//! let node = Node { disc: Discovery::new(cfg)?, events: Vec::new() };
//! let mut r = reactor::Reactor::new()?;
//! r.spawn(node);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Steady state allocates nothing: the announcement is encoded once, a refresh
//! from a known peer is a table lookup, and received datagrams are decoded in
//! place. Only membership changes (which carry owned strings) allocate.
//!
//! This module must not parse datagrams itself ([`super::proto`] does) nor decide
//! membership ([`super::table`] does); it moves bytes and calls them with
//! `cx.now()`.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::proto::{self, Announcement, Metadata};
use super::table::{self, Jitter, PeerTable};
use reactor::CloseReason;
use reactor::LogLimiter;
use reactor::TimerId;
use reactor::{Addr, Handler, HandlerResult, SourceId};
use reactor::{Context, Loop};
use reactor::{Counter, Gauge};
use reactor::{SendOutcome, UdpConfig, UdpConn, UdpOptions, UdpStats};

/// A membership change reported to the owner: the table's event type.
pub use super::table::Event as PeerEvent;

/// The default discovery port.
pub const DEFAULT_PORT: u16 = 7979;
/// The default broadcast address: loopback broadcast, so nothing leaves the host
/// unless configured.
pub const DEFAULT_BROADCAST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255));

/// Settings of a [`Discovery`] service. [`DiscoveryConfig::new`] fills the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DiscoveryConfig {
    /// This node's id, unique among the nodes sharing the port (1 to 64 bytes of
    /// UTF-8 without control characters).
    pub id: String,
    /// The service name announced (may be empty), e.g. `"bittorrent"`.
    pub service: String,
    /// The TCP port the announced service listens on (0: none).
    pub tcp_port: u16,
    /// Small key/value metadata announced with it (see [`super::proto`] limits).
    pub metadata: Vec<(String, String)>,
    /// The UDP port every node binds and broadcasts to (default 7979; 0 makes the
    /// OS pick one, which other nodes must then be told).
    pub port: u16,
    /// Where announcements go (IPv4 broadcast address; default `127.255.255.255`).
    pub broadcast: IpAddr,
    /// The address to bind. `None`: the broadcast address itself when it is a
    /// loopback address (only loopback broadcasts arrive, nothing is exposed to the
    /// network), otherwise `0.0.0.0` (a LAN broadcast arrives addressed to the
    /// interface's broadcast address, which only a wildcard bind matches).
    pub bind: Option<IpAddr>,
    /// Nominal time between announcements (each one jittered by ±25 %).
    pub interval: Duration,
    /// A peer not heard from for this long is reported left (`None`: 3 intervals).
    pub ttl: Option<Duration>,
    /// Peers remembered at most; announcements from further strangers are counted
    /// and ignored.
    pub max_peers: usize,
    /// The boot nonce (`None`: random). Tests may fix it.
    pub instance: Option<u64>,
    /// The source number of the UDP socket inside the owning handler.
    pub source: SourceId,
    /// At most one log line per this period about rejected datagrams (with a count
    /// of those not logged).
    pub reject_log_interval: Duration,
    /// Datagrams read per readiness event before yielding to other handlers.
    pub recv_budget: usize,
}

impl DiscoveryConfig {
    /// Defaults for node `id`: port 7979, broadcast `127.255.255.255`, interval 1 s,
    /// TTL 3 s, no service, no TCP port, no metadata, 1024 peers at most.
    pub fn new(id: impl Into<String>) -> DiscoveryConfig {
        DiscoveryConfig {
            id: id.into(),
            service: String::new(),
            tcp_port: 0,
            metadata: Vec::new(),
            port: DEFAULT_PORT,
            broadcast: DEFAULT_BROADCAST,
            bind: None,
            interval: Duration::from_secs(1),
            ttl: None,
            max_peers: 1024,
            instance: None,
            source: 0,
            reject_log_interval: Duration::from_secs(10),
            recv_budget: 64,
        }
    }

    /// The TTL in effect.
    pub fn effective_ttl(&self) -> Duration {
        self.ttl.unwrap_or(self.interval.saturating_mul(3))
    }

    fn bind_ip(&self) -> IpAddr {
        match self.bind {
            Some(ip) => ip,
            None if self.broadcast.is_loopback() => self.broadcast,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// Counters of a [`Discovery`] service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// The peer table's counters (received, malformed, joined, left, dropped, ...).
    pub table: table::Stats,
    /// The socket's counters.
    pub udp: UdpStats,
    /// Announcements handed to the socket (sent or queued).
    pub announcements: u64,
    /// Announcements that could not be sent (error or full queue).
    pub announce_failures: u64,
    /// Log lines written about rejected datagrams (rate-limited).
    pub reject_logs: u64,
}

/// The discovery component. See the module docs.
#[derive(Debug)]
pub struct Discovery {
    id: String,
    interval: Duration,
    udp: UdpConn,
    dest: SocketAddr,
    table: PeerTable,
    jitter: Jitter,
    instance: u64,
    hello: Vec<u8>,
    bye: Vec<u8>,
    /// The next announcement's timer and when it fires.
    announce_timer: Option<(TimerId, Instant)>,
    /// When the last announcement brought forward for a newcomer went (or goes) out.
    last_early: Option<Instant>,
    expiry_timer: Option<(TimerId, Instant)>,
    expired: Vec<PeerEvent>,
    rejects: LogLimiter,
    send_fail: LogLimiter,
    announcements: u64,
    announce_failures: u64,
    started: bool,
    left: bool,
}

/// A random 64-bit value from the standard library's per-process random hash keys
/// mixed with the clock and process id: enough for a boot nonce.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Discovery {
    /// Validates the configuration, encodes the announcement and binds the socket
    /// (non-blocking; nothing is sent until [`start`](Discovery::start)). Fails with
    /// `InvalidInput` and a message naming the bad setting, or with the bind error.
    pub fn new(cfg: DiscoveryConfig) -> io::Result<Discovery> {
        if cfg.interval.is_zero() {
            return Err(invalid("discovery interval must be positive".into()));
        }
        let IpAddr::V4(_) = cfg.broadcast else {
            return Err(invalid(format!(
                "broadcast address {} is not IPv4 (IPv6 has no broadcast)",
                cfg.broadcast
            )));
        };
        let instance = cfg.instance.unwrap_or_else(random_u64);
        let mut hello = Vec::with_capacity(proto::MAX_DATAGRAM_LEN);
        let mut bye = Vec::with_capacity(proto::MAX_DATAGRAM_LEN);
        {
            let pairs: Vec<(&str, &str)> = cfg
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let metadata = Metadata::from_pairs(&pairs)
                .map_err(|e| invalid(format!("discovery metadata: {e}")))?;
            let mut ann = Announcement {
                id: &cfg.id,
                instance,
                service: &cfg.service,
                port: cfg.tcp_port,
                leaving: false,
                metadata,
            };
            proto::encode(&ann, &mut hello)
                .map_err(|e| invalid(format!("discovery announcement: {e}")))?;
            ann.leaving = true;
            proto::encode(&ann, &mut bye)
                .map_err(|e| invalid(format!("discovery announcement: {e}")))?;
        }
        let bind = SocketAddr::new(cfg.bind_ip(), cfg.port);
        // Both reuse options, so we can join a group bound with either; broadcasts
        // reach every member of it (see docs/discovery.md).
        let opts = UdpOptions::default()
            .reuse_addr(true)
            .reuse_port(true)
            .broadcast(true);
        // One byte more is read, so a longer datagram is seen as too long.
        let udp_cfg = UdpConfig::default()
            .max_datagram(proto::MAX_DATAGRAM_LEN)
            .recv_budget(cfg.recv_budget)
            .send_budget(16)
            .queue_datagrams(16)
            .queue_bytes(16 * proto::MAX_DATAGRAM_LEN);
        let udp = UdpConn::bind(bind, &opts, cfg.source, udp_cfg)
            .map_err(|e| io::Error::new(e.kind(), format!("discovery: bind {bind}: {e}")))?;
        let port = udp.local_addr()?.port();
        let ttl = cfg.effective_ttl();
        Ok(Discovery {
            table: PeerTable::new(cfg.id.clone(), instance, ttl, cfg.max_peers),
            jitter: Jitter::new(cfg.interval, instance),
            id: cfg.id,
            interval: cfg.interval,
            udp,
            dest: SocketAddr::new(cfg.broadcast, port),
            instance,
            hello,
            bye,
            announce_timer: None,
            last_early: None,
            expiry_timer: None,
            expired: Vec::new(),
            rejects: LogLimiter::new(cfg.reject_log_interval),
            send_fail: LogLimiter::new(cfg.reject_log_interval),
            announcements: 0,
            announce_failures: 0,
            started: false,
            left: false,
        })
    }

    /// The bound address (with the port the OS chose when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
    }

    /// Where announcements go.
    pub fn broadcast_addr(&self) -> SocketAddr {
        self.dest
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This process's boot nonce.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The source number of the socket (route its events here).
    pub fn source(&self) -> SourceId {
        self.udp.source()
    }

    /// The peer table (current peers, counters).
    pub fn table(&self) -> &PeerTable {
        &self.table
    }

    /// Counters.
    pub fn stats(&self) -> DiscoveryStats {
        DiscoveryStats {
            table: self.table.stats(),
            udp: self.udp.stats(),
            announcements: self.announcements,
            announce_failures: self.announce_failures,
            reject_logs: self.rejects.logged(),
        }
    }

    /// Registers the socket and sends the first announcement at once. Call it from
    /// the owning handler's `on_start`.
    pub fn start(&mut self, cx: &mut Loop<'_>) -> io::Result<()> {
        self.udp.register(cx)?;
        self.started = true;
        self.announce(cx);
        Ok(())
    }

    fn announce(&mut self, cx: &mut Loop<'_>) {
        let now = cx.now();
        match self.udp.send_to(cx, &self.hello, self.dest) {
            Ok(SendOutcome::Sent | SendOutcome::Queued) => self.announcements += 1,
            Ok(SendOutcome::Dropped) => self.announce_failures += 1,
            Err(e) => {
                self.announce_failures += 1;
                if let Some(more) = self.send_fail.allow(now) {
                    log::warn!(
                        "discovery {}: cannot send announcement to {}: {e} ({more} more failures not logged)",
                        self.id,
                        self.dest,
                    );
                }
            }
        }
        let delay = self.jitter.next_delay();
        // An interval too long for an Instant is, for comparisons, "never".
        let at = now
            .checked_add(delay)
            .unwrap_or_else(|| now + Duration::from_secs(1 << 30));
        self.announce_timer = Some((cx.timer_once(delay), at));
    }

    /// Receives every waiting datagram (under the budget), appending membership
    /// changes to `events`. Call it on readable events of [`source`](Discovery::source).
    pub fn on_readable(
        &mut self,
        cx: &mut Loop<'_>,
        events: &mut Vec<PeerEvent>,
    ) -> io::Result<()> {
        let now = cx.now();
        let first = events.len();
        let table = &mut self.table;
        let rejects = &mut self.rejects;
        let id = &self.id;
        self.udp.recv(cx, |data, from, _truncated| {
            // A truncated datagram holds MAX_DATAGRAM_LEN + 1 bytes: decode calls it
            // too long (or foreign, by its magic).
            match table.observe_datagram(data, from, now) {
                Ok(Some(ev)) => {
                    if let PeerEvent::Conflict { id, instance, from } = &ev {
                        log::warn!(
                            "discovery: node id {id:?} is claimed by another process \
                             (instance {instance:016x} at {from}); ignoring its announcements"
                        );
                    }
                    events.push(ev);
                }
                Ok(None) => {}
                Err(e) => {
                    if let Some(more) = rejects.allow(now) {
                        let kind = if data.len() > proto::MAX_DATAGRAM_LEN {
                            "oversized"
                        } else {
                            "malformed"
                        };
                        if more == 0 {
                            log::warn!(
                                "discovery {id}: rejected a {kind} datagram from {from}: {e}"
                            );
                        } else {
                            log::warn!(
                                "discovery {id}: rejected a {kind} datagram from {from}: {e} \
                                 ({more} more rejected since the last report)"
                            );
                        }
                    }
                }
            }
        })?;
        if events[first..]
            .iter()
            .any(|e| matches!(e, PeerEvent::Joined { .. } | PeerEvent::Restarted { .. }))
        {
            self.greet_newcomer(cx, now);
        }
        self.arm_expiry(cx);
        Ok(())
    }

    /// Brings the next announcement forward when a node joins (or restarts), so the
    /// newcomer learns of this node within milliseconds instead of waiting up to
    /// 1.25 intervals for the regular one. The delay is random (between 0.6 and 1
    /// times an eighth of the interval, at most 50 ms) so that every node hearing
    /// the same newcomer does not answer in the same instant. Early announcements
    /// are at least a quarter interval (at most 1 s) apart, so a flood of forged
    /// joins cannot make this node broadcast faster than that; a newcomer arriving
    /// inside that gap is answered at its end, and joins while one is pending
    /// share it.
    fn greet_newcomer(&mut self, cx: &mut Loop<'_>, now: Instant) {
        if self.left || !self.started {
            return;
        }
        let cap = (self.interval / 8).min(Duration::from_millis(50));
        let gap = (self.interval / 4).min(Duration::from_secs(1));
        let mut at = now + self.jitter.next_between(cap * 3 / 5, cap);
        if let Some(last) = self.last_early {
            at = at.max(last + gap);
        }
        if fire_by(cx, &mut self.announce_timer, at) {
            self.last_early = Some(at);
        }
    }

    /// Sends queued announcements. Call it on writable events of
    /// [`source`](Discovery::source). Returns true when nothing is left queued.
    pub fn on_writable(&mut self, cx: &mut Loop<'_>) -> bool {
        self.udp.flush(cx)
    }

    /// True when nothing waits in the send queue (the goodbye is out).
    pub fn is_flushed(&self) -> bool {
        self.udp.queued() == 0
    }

    /// Handles `timer` if it is one of this component's (returns false otherwise):
    /// the next announcement, or expiry of silent peers (appended to `events`).
    pub fn on_timer(
        &mut self,
        cx: &mut Loop<'_>,
        timer: TimerId,
        events: &mut Vec<PeerEvent>,
    ) -> bool {
        if self.announce_timer.map(|(t, _)| t) == Some(timer) {
            self.announce_timer = None;
            if !self.left {
                self.announce(cx);
            }
            return true;
        }
        if self.expiry_timer.map(|(t, _)| t) == Some(timer) {
            self.expiry_timer = None;
            self.table.expire(cx.now(), &mut self.expired);
            events.append(&mut self.expired);
            self.arm_expiry(cx);
            return true;
        }
        false
    }

    /// Keeps one timer at the table's next expiry (moved earlier when a new peer
    /// brings an earlier deadline; peers refreshing never move it).
    fn arm_expiry(&mut self, cx: &mut Loop<'_>) {
        if let Some(at) = self.table.next_expiry() {
            fire_by(cx, &mut self.expiry_timer, at);
        }
    }

    /// Broadcasts the goodbye (peers forget this node at once instead of after the
    /// TTL) and stops announcing. Idempotent. Returns true when the goodbye is out
    /// (or cannot be sent); false while it waits in the send queue, which
    /// [`on_writable`](Discovery::on_writable) flushes.
    pub fn leave(&mut self, cx: &mut Loop<'_>) -> bool {
        if self.left || !self.started {
            self.left = true;
            return self.is_flushed();
        }
        self.left = true;
        if let Some((t, _)) = self.announce_timer.take() {
            cx.cancel_timer(t);
        }
        match self.udp.send_to(cx, &self.bye, self.dest) {
            Ok(SendOutcome::Queued) => false,
            Ok(_) => true,
            Err(e) => {
                log::warn!("discovery {}: cannot send goodbye: {e}", self.id);
                true
            }
        }
    }

    /// Time between announcements.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Keeps the timer in `slot` (its id and when it fires) firing no later than `at`:
/// armed if there is none, moved earlier if it fires later, left alone otherwise.
/// Returns true if it now fires at `at`.
fn fire_by(cx: &mut Loop<'_>, slot: &mut Option<(TimerId, Instant)>, at: Instant) -> bool {
    let after = at.saturating_duration_since(cx.now());
    match slot {
        Some((_, armed)) if *armed <= at => false,
        Some((t, armed)) if cx.reset_timer(*t, after) => {
            *armed = at;
            true
        }
        _ => {
            *slot = Some((cx.timer_once(after), at));
            true
        }
    }
}

/// A callback receiving events on the loop thread.
type EventCallback = Box<dyn FnMut(&mut Loop<'_>, PeerEvent)>;

/// Where a [`DiscoveryHandler`] delivers events.
enum Sink {
    Owner(Addr<PeerEvent>),
    Callback(EventCallback),
}

/// [`Discovery`] as a handler of its own, reporting events to an owner or a
/// callback.
///
/// With [`to_owner`](DiscoveryHandler::to_owner), every event reaches the owner's
/// [`Handler::on_message`]: the owner's message type is (or converts from)
/// [`PeerEvent`], so its typed address is an `Addr<PeerEvent>`. Spawn it with
/// [`Loop::spawn`] from the owner,
/// so the owner's `on_child_closed` tells it when discovery stops. On shutdown it
/// broadcasts the goodbye and closes.
pub struct DiscoveryHandler {
    disc: Discovery,
    sink: Sink,
    events: Vec<PeerEvent>,
    closing: bool,
    metrics: Option<Metrics>,
}

/// The service's numbers in its loop's registry (the stats line and the metrics
/// endpoint): `discovery_peers` now, and what the service counted since the last
/// update, added to the loop's counters.
struct Metrics {
    peers: Gauge,
    announcements: Counter,
    received: Counter,
    malformed: Counter,
    joined: Counter,
    left: Counter,
    dropped: Counter,
    last: DiscoveryStats,
}

impl Metrics {
    fn new(cx: &mut Loop<'_>) -> Metrics {
        Metrics {
            peers: cx.gauge("discovery_peers"),
            announcements: cx.counter("discovery_announcements"),
            received: cx.counter("discovery_datagrams_received"),
            malformed: cx.counter("discovery_datagrams_malformed"),
            joined: cx.counter("discovery_peers_joined"),
            left: cx.counter("discovery_peers_left"),
            dropped: cx.counter("discovery_peers_refused_table_full"),
            last: DiscoveryStats::default(),
        }
    }

    fn update(&mut self, disc: &Discovery) {
        let now = disc.stats();
        let (a, b) = (&now.table, &self.last.table);
        self.announcements
            .add(now.announcements - self.last.announcements);
        self.received.add(a.received - b.received);
        self.malformed.add(a.malformed - b.malformed);
        self.joined.add(a.joined - b.joined);
        self.left.add(a.left - b.left);
        self.dropped.add(a.dropped - b.dropped);
        self.peers.set(disc.table().len() as i64);
        self.last = now;
    }
}

impl DiscoveryHandler {
    /// Reports events to `owner` as messages.
    pub fn to_owner(disc: Discovery, owner: Addr<PeerEvent>) -> DiscoveryHandler {
        DiscoveryHandler {
            disc,
            sink: Sink::Owner(owner),
            events: Vec::new(),
            closing: false,
            metrics: None,
        }
    }

    /// Calls `f` for every event, on the loop thread.
    pub fn with_callback(
        disc: Discovery,
        f: impl FnMut(&mut Loop<'_>, PeerEvent) + 'static,
    ) -> DiscoveryHandler {
        DiscoveryHandler {
            disc,
            sink: Sink::Callback(Box::new(f)),
            events: Vec::new(),
            closing: false,
            metrics: None,
        }
    }

    /// The component inside.
    pub fn discovery(&self) -> &Discovery {
        &self.disc
    }

    fn deliver(&mut self, cx: &mut Loop<'_>) {
        if let Some(m) = &mut self.metrics {
            m.update(&self.disc);
        }
        for ev in self.events.drain(..) {
            match &mut self.sink {
                Sink::Owner(owner) => cx.send(*owner, ev),
                Sink::Callback(f) => f(cx, ev),
            }
        }
    }
}

impl Handler for DiscoveryHandler {
    type Message = ();
    type Job = ();

    fn name(&self) -> &str {
        "Discovery"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.disc.start(cx)?;
        self.metrics = Some(Metrics::new(cx));
        log::debug!(
            "discovery {}: bound to {}, announcing to {} every {:?}",
            self.disc.id(),
            self.disc.local_addr(),
            self.disc.broadcast_addr(),
            self.disc.interval()
        );
        Ok(())
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _source: SourceId) -> HandlerResult {
        let r = self.disc.on_readable(cx, &mut self.events);
        self.deliver(cx);
        Ok(r?)
    }

    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _source: SourceId) -> HandlerResult {
        if self.disc.on_writable(cx) && self.closing {
            cx.close();
        }
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) -> HandlerResult {
        self.disc.on_timer(cx, timer, &mut self.events);
        self.deliver(cx);
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.closing = true;
        if self.disc.leave(cx) {
            cx.close();
        }
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        // Best effort when closed without a graceful shutdown (stop, error).
        self.disc.leave(cx);
    }
}

impl std::fmt::Debug for DiscoveryHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryHandler")
            .field("disc", &self.disc)
            .finish_non_exhaustive()
    }
}
