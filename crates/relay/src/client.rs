//! Relay clients as reactor handlers: the reserving side and the connecting side.
//!
//! - [`ReserveClient`] keeps a control connection to the relay, reserves an id
//!   under a stable peer identity, refreshes it before its TTL, sends
//!   heartbeats, and reconnects (with backoff) when the connection drops, so
//!   the relay's grace period gives it its slot back. For every `INCOMING` it
//!   spawns a [`CircuitEnd`] (at most [`ReserveOptions::max_circuits`] at once)
//!   that opens a new connection to the relay, sends `ACCEPT`, connects to the
//!   forward target (resolved on the worker pool) and bridges the two.
//! - [`connect_listener`] accepts local connections and makes each a
//!   [`CircuitEnd`] that sends `CONNECT id` to the relay and bridges the local
//!   socket to the circuit (a reverse tunnel).
//!
//! This module must not block the loop (name resolution goes to the pool) nor
//! parse bytes itself (that is [`proto`]).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use reactor::CloseReason;
use reactor::LogLimiter;
use reactor::TimerId;
use reactor::{Conn, ConnConfig};
use reactor::{Context, Loop};
use reactor::{Event, Handler, HandlerId, HandlerResult, SourceId};
use reactor::{JobId, JobResult};
use reactor::{ListenOptions, Listener};

use super::bridge::{Bridge, Pumped};
use super::proto::{self, Message, Reason};
use super::setup::{CircuitSetup, Ending, SetupAction, SetupError, SetupPhase};
use super::table::CircuitLimits;

const RELAY: SourceId = 0;
const LOCAL: SourceId = 1;

/// Settings of a [`ReserveClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReserveOptions {
    /// The relay's address.
    pub relay: SocketAddr,
    /// Stable identity of this client: the same value after a reconnect gets
    /// the same reservation back.
    pub peer: String,
    /// The id to reserve.
    pub id: String,
    /// `HOST:PORT` every circuit is bridged to (resolved per circuit, on the
    /// worker pool).
    pub forward: String,
    /// How often to send `HEARTBEAT` (well below the relay's heartbeat timeout).
    pub heartbeat: Duration,
    /// First reconnect delay after the control connection drops; doubles up to
    /// `max_reconnect_delay`. Zero: do not reconnect, close instead.
    pub reconnect_delay: Duration,
    /// Longest reconnect delay.
    pub max_reconnect_delay: Duration,
    /// Time a circuit has to be bridged (relay answer and target connect).
    pub setup_timeout: Duration,
    /// Circuits served at once at most (each is a connection to the relay and
    /// one to the forward target). An `INCOMING` beyond it is ignored (the
    /// relay's accept timeout drops it), so neither a flood of connectors nor a
    /// hostile relay can make the client open connections without bound. Zero:
    /// no limit.
    pub max_circuits: usize,
    /// Buffers of every connection.
    pub conn: ConnConfig,
}

impl ReserveOptions {
    /// Options with the defaults: heartbeat every 10 s, reconnect after 0.5 s
    /// up to 10 s, 15 s to set up a circuit, 64 circuits at once.
    pub fn new(relay: SocketAddr, peer: &str, id: &str, forward: &str) -> ReserveOptions {
        ReserveOptions {
            relay,
            peer: peer.to_string(),
            id: id.to_string(),
            forward: forward.to_string(),
            heartbeat: Duration::from_secs(10),
            reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(10),
            setup_timeout: Duration::from_secs(15),
            max_circuits: 64,
            conn: ConnConfig::default(),
        }
    }
}

/// What a [`ReserveClient`] reports to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// The relay granted (or re-granted after a reconnect) the reservation.
    Reserved {
        /// The reserved id.
        id: &'a str,
        /// Seconds until it expires unless refreshed (the client refreshes).
        ttl_secs: u32,
        /// True the first time only.
        first: bool,
    },
    /// The relay refused the reservation; the client has closed.
    Refused {
        /// The relay's reason.
        reason: Reason,
        /// The relay's detail, if any.
        detail: Option<&'a str>,
    },
    /// The control connection was lost; the client reconnects if configured.
    Disconnected {
        /// What happened.
        error: &'a str,
    },
}

/// Called with every [`ClientEvent`] (e.g. to print `reserved ID`, or to stop
/// the loop on a refusal).
pub type EventHook = Box<dyn FnMut(&mut Loop<'_>, &ClientEvent<'_>)>;

/// Holds a reservation on a relay and serves its circuits. See the module docs.
pub struct ReserveClient {
    opts: ReserveOptions,
    hook: EventHook,
    conn: Option<Conn>,
    reserved: bool,
    announced: bool,
    heartbeat: Option<TimerId>,
    refresh: Option<TimerId>,
    reconnect: Option<TimerId>,
    backoff: Duration,
    out: Vec<u8>,
    /// Circuit ends spawned and not closed yet.
    circuits: usize,
    /// `INCOMING`s ignored at `max_circuits` since the last warning.
    ignored: u64,
    /// Warnings about `INCOMING`s for ids this client did not reserve.
    foreign_log: LogLimiter,
}

impl ReserveClient {
    /// A client that reports to `hook`; spawn it on a reactor.
    pub fn new(opts: ReserveOptions, hook: EventHook) -> io::Result<ReserveClient> {
        let bad = |e: proto::ProtoError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        proto::check_id(&opts.id).map_err(bad)?;
        proto::check_id(&opts.peer)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("peer: {e}")))?;
        Ok(ReserveClient {
            backoff: opts.reconnect_delay,
            opts,
            hook,
            conn: None,
            reserved: false,
            announced: false,
            heartbeat: None,
            refresh: None,
            reconnect: None,
            out: Vec::new(),
            circuits: 0,
            ignored: 0,
            foreign_log: LogLimiter::default(),
        })
    }

    fn connect(&mut self, cx: &mut Loop<'_>) -> HandlerResult {
        let mut conn = match Conn::connect(self.opts.relay, RELAY, self.opts.conn) {
            Ok(c) => c,
            Err(e) => return self.lost(cx, &format!("cannot connect to the relay: {e}")),
        };
        conn.register(cx)?;
        self.out.clear();
        let reserve = Message::Reserve {
            peer: &self.opts.peer,
            id: &self.opts.id,
        };
        proto::encode(&reserve, &mut self.out)?;
        conn.queue(cx, &self.out);
        self.conn = Some(conn);
        Ok(())
    }

    /// The control connection is gone: report, then reconnect or close.
    fn lost(&mut self, cx: &mut Loop<'_>, error: &str) -> HandlerResult {
        if let Some(mut c) = self.conn.take() {
            c.release(cx);
        }
        self.reserved = false;
        if let Some(t) = self.refresh.take() {
            cx.cancel_timer(t);
        }
        (self.hook)(cx, &ClientEvent::Disconnected { error });
        if self.opts.reconnect_delay.is_zero() || cx.is_shutting_down() {
            cx.close();
        } else if self.reconnect.is_none() {
            log::info!("reconnecting to the relay in {:?}", self.backoff);
            self.reconnect = Some(cx.timer_once(self.backoff));
            self.backoff = (self.backoff * 2).min(self.opts.max_reconnect_delay);
        }
        Ok(())
    }

    fn send(&mut self, cx: &mut Loop<'_>, msg: &Message<'_>) -> HandlerResult {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        self.out.clear();
        proto::encode(msg, &mut self.out)?;
        conn.queue(cx, &self.out);
        if let Err(e) = conn.flush(cx) {
            return self.lost(cx, &e.to_string());
        }
        Ok(())
    }

    fn read(&mut self, cx: &mut Loop<'_>) -> HandlerResult {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let st = match conn.fill(cx) {
            Ok(st) => st,
            Err(e) => return self.lost(cx, &e.to_string()),
        };
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            let (msg, used) = match proto::decode(conn.read_buf()) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return self.lost(cx, &format!("bad frame from the relay: {e}")),
            };
            match msg {
                Message::Reserved { id, ttl_secs } => {
                    self.reserved = true;
                    self.backoff = self.opts.reconnect_delay;
                    let first = !self.announced;
                    self.announced = true;
                    (self.hook)(
                        cx,
                        &ClientEvent::Reserved {
                            id,
                            ttl_secs,
                            first,
                        },
                    );
                    if let Some(t) = self.refresh.take() {
                        cx.cancel_timer(t);
                    }
                    let half = Duration::from_secs(u64::from(ttl_secs)) / 2;
                    self.refresh = Some(cx.timer_once(half.max(Duration::from_secs(1))));
                }
                Message::Refused { reason, detail } if !self.reserved => {
                    (self.hook)(cx, &ClientEvent::Refused { reason, detail });
                    cx.close();
                    return Ok(());
                }
                Message::Refused { reason, detail } => {
                    log::warn!(
                        "relay: {reason}{}{}; reserving again",
                        if detail.is_some() { ": " } else { "" },
                        detail.unwrap_or("")
                    );
                    self.reserved = false;
                    conn.consume(used);
                    let reserve = Message::Reserve {
                        peer: &self.opts.peer,
                        id: &self.opts.id,
                    };
                    self.out.clear();
                    proto::encode(&reserve, &mut self.out)?;
                    conn.queue(cx, &self.out);
                    continue;
                }
                Message::Incoming { circuit, id } if id != self.opts.id => {
                    // Not what we reserved: accepting would forward a stranger's
                    // circuit to our service. A relay bug, or a hostile relay, so
                    // rate-limited: a flood of them must not flood the log.
                    if let Some(more) = self.foreign_log.allow(cx.now()) {
                        log::warn!(
                            "incoming circuit {circuit:016x} to {id:?} ignored: this client \
                             reserved {:?} ({more} more such offers since the last warning)",
                            self.opts.id,
                        );
                    }
                }
                Message::Incoming { circuit, id }
                    if self.opts.max_circuits != 0 && self.circuits >= self.opts.max_circuits =>
                {
                    // Warned once per time the limit is reached, not per frame: a
                    // flood must not become a flood of log lines.
                    if self.ignored == 0 {
                        log::warn!(
                            "incoming circuit {circuit:016x} to {id:?} ignored: {} circuits \
                             open already (max_circuits)",
                            self.circuits
                        );
                    }
                    self.ignored += 1;
                }
                Message::Incoming { circuit, id } => {
                    log::info!("incoming circuit {circuit:016x} to {id:?}");
                    if self.ignored > 1 {
                        log::warn!(
                            "{} more incoming circuits were ignored at max_circuits",
                            self.ignored - 1
                        );
                    }
                    self.ignored = 0;
                    self.circuits += 1;
                    let mut hello = Vec::new();
                    proto::encode(&Message::Accept { circuit }, &mut hello)?;
                    cx.spawn(CircuitEnd::new(
                        self.opts.relay,
                        hello,
                        Target::Resolve(self.opts.forward.clone()),
                        self.opts.conn,
                        self.opts.setup_timeout,
                    ));
                }
                Message::HeartbeatAck => {}
                other => {
                    let t = other.message_type();
                    return self.lost(cx, &format!("unexpected {t} from the relay"));
                }
            }
            if let Some(conn) = self.conn.as_mut() {
                conn.consume(used);
            }
        }
        if let Some(conn) = self.conn.as_mut()
            && let Err(e) = conn.flush(cx)
        {
            return self.lost(cx, &e.to_string());
        }
        if st.eof {
            return self.lost(cx, "the relay closed the connection");
        }
        Ok(())
    }
}

impl Handler for ReserveClient {
    type Message = ();
    type Job = ();

    fn name(&self) -> &str {
        "ReserveClient"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.heartbeat = Some(cx.timer_repeat(self.opts.heartbeat));
        self.connect(cx)
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.read(cx)
    }

    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        if let Some(conn) = self.conn.as_mut()
            && let Err(e) = conn.flush(cx)
        {
            return self.lost(cx, &e.to_string());
        }
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if Some(t) == self.heartbeat {
            if self.conn.as_ref().is_some_and(|c| !c.is_connecting()) {
                self.send(cx, &Message::Heartbeat)?;
            }
        } else if Some(t) == self.refresh {
            self.refresh = None;
            let id = self.opts.id.clone();
            self.send(cx, &Message::Refresh { id: &id })?;
        } else if Some(t) == self.reconnect {
            self.reconnect = None;
            self.connect(cx)?;
        }
        Ok(())
    }

    fn on_child_closed(&mut self, _cx: &mut Context<'_, Self>, _child: HandlerId) -> HandlerResult {
        // Only circuit ends are spawned.
        self.circuits = self.circuits.saturating_sub(1);
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.close();
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        if let Some(c) = self.conn.as_mut() {
            c.release(cx);
        }
    }
}

/// Where a [`CircuitEnd`]'s other side comes from.
pub enum Target {
    /// `HOST:PORT` to resolve on the worker pool and connect to.
    Resolve(String),
    /// An accepted local connection, made as source 1 (any `ConnConfig`: bridging
    /// turns its own-queue pause off, so its upload is not held up by its
    /// download).
    Accepted(Conn),
}

/// One end of a circuit on the client side: a new connection to the relay
/// (source 0) that sends `ACCEPT` or `CONNECT`, waits for `CONNECTED`, then
/// is bridged to a local connection (source 1).
///
/// While it waits, the local connection is not read (its bytes stay in the
/// kernel) but its events are watched: a local connection that resets, that
/// closes without having sent anything, or whose connect fails, ends the circuit
/// end at once, which closes its relay connection, so the relay frees the circuit
/// rather than holding it until the setup timeout. A local connection that sent
/// bytes and then half-closed is waiting for an answer: its bytes and its end of
/// file are delivered once the circuit is up.
///
/// The decisions (when to bridge, what ends the set-up, the setup and linger
/// deadlines) are the sans-IO [`CircuitSetup`]'s; this handler performs them.
pub struct CircuitEnd {
    relay_addr: SocketAddr,
    hello: Vec<u8>,
    relay: Option<Conn>,
    local: Option<Conn>,
    bridge: Option<Bridge>,
    cfg: ConnConfig,
    setup: CircuitSetup,
    /// The loop timer armed for `setup.poll_timeout()`, and that instant.
    timer: Option<(TimerId, Instant)>,
}

impl CircuitEnd {
    /// A circuit end that sends `hello` (an encoded `ACCEPT` or `CONNECT`
    /// frame) on a new connection to `relay` and bridges it to `target`. Its
    /// connections are made with `cfg`.
    pub fn new(
        relay: SocketAddr,
        hello: Vec<u8>,
        target: Target,
        cfg: ConnConfig,
        setup_timeout: Duration,
    ) -> CircuitEnd {
        let (forward, local) = match target {
            Target::Resolve(f) => (Some(f), None),
            Target::Accepted(c) => (None, Some(c)),
        };
        CircuitEnd {
            relay_addr: relay,
            hello,
            relay: None,
            local,
            bridge: None,
            cfg,
            setup: CircuitSetup::new(forward, setup_timeout),
            timer: None,
        }
    }

    /// Performs what the set-up asks, then sets the loop timer to its next
    /// deadline. A fault comes back as the handler's error.
    fn run(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        while let Some(action) = self.setup.poll_action() {
            match action {
                SetupAction::Resolve(target) => {
                    let job = cx.offload(move || -> io::Result<Option<SocketAddr>> {
                        Ok(target.to_socket_addrs()?.next())
                    });
                    if let Err(e) = job {
                        return Err(format!("cannot resolve the forward target: {e}").into());
                    }
                }
                SetupAction::Connect(addr) => {
                    let attempt = Conn::connect(addr, LOCAL, self.cfg)
                        .and_then(|mut c| c.register(cx).map(|()| c));
                    match attempt {
                        Ok(c) => {
                            self.local = Some(c);
                            self.setup.connect_started();
                        }
                        Err(e) => self.setup.connect_failed(e),
                    }
                }
                SetupAction::Bridge => self.bridge(cx),
                SetupAction::Close(ending) => return self.end(cx, ending),
            }
        }
        self.sync_timer(cx);
        Ok(())
    }

    /// Keeps the one loop timer at the set-up's next deadline.
    fn sync_timer(&mut self, cx: &mut Loop<'_>) {
        let want = self.setup.poll_timeout();
        if self.timer.map(|(_, at)| at) == want {
            return;
        }
        if let Some((t, _)) = self.timer.take() {
            cx.cancel_timer(t);
        }
        if let Some(at) = want {
            self.timer = Some((cx.timer_once(at.saturating_duration_since(cx.now())), at));
        }
    }

    /// Joins the two connections.
    fn bridge(&mut self, cx: &mut Loop<'_>) {
        let (Some(relay), Some(local)) = (self.relay.take(), self.local.take()) else {
            return;
        };
        let connecting = local.is_connecting();
        let unlimited = CircuitLimits {
            max_bytes_per_direction: 0,
            ..CircuitLimits::default()
        };
        let mut bridge = Bridge::new(relay, local, &self.cfg, &unlimited);
        bridge.start(cx);
        self.bridge = Some(bridge);
        if !connecting {
            self.setup.forward_connected();
        }
    }

    /// The circuit end is over: logs why, and closes (a fault is the handler's
    /// error, counted as such).
    fn end(&mut self, cx: &mut Loop<'_>, ending: Ending) -> HandlerResult {
        match ending {
            Ending::Finished | Ending::OverBudget => {}
            Ending::LingerTimeout(d) => {
                log::debug!("circuit end: the other side did not close within {d:?}");
            }
            Ending::Refused { reason, detail } => log::warn!(
                "relay refused the circuit: {reason}{}{}",
                if detail.is_some() { ": " } else { "" },
                detail.as_deref().unwrap_or("")
            ),
            Ending::LocalLeft(why) => {
                log::debug!("the local connection left before its circuit was up ({why}); closing")
            }
            // An expected outcome (the relay or the service is slow or gone), not a
            // handler failure: logged and closed, not counted as an error.
            Ending::SetupTimeout { bridged, after } => {
                match self.bridge.as_ref().and_then(Bridge::failure) {
                    Some((side, e)) if bridged => log::warn!(
                        "circuit end: the {} failed ({e}) and the circuit had not finished \
                         within {after:?}; closing it",
                        if side == 'a' {
                            "relay connection"
                        } else {
                            "forward connection"
                        },
                    ),
                    _ if bridged => log::warn!(
                        "circuit end: the forward target did not accept the connection within \
                         {after:?}; closing the circuit"
                    ),
                    _ => log::warn!("circuit end: not set up within {after:?}; closing it"),
                }
            }
            // A connect that failed is the socket's own error, as the loop
            // classifies it.
            Ending::Failed(SetupError::Forward(e)) => return Err(e.into()),
            Ending::Failed(e) => return Err(e.to_string().into()),
        }
        cx.close();
        Ok(())
    }

    /// Reads the relay's answer (and surfaces a failed connect to the forward
    /// target first, so that a dead target is not bridged).
    fn setup(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if let Some(local) = self.local.as_mut()
            && let Err(e) = local.flush(cx)
        {
            self.setup.local_failed(e);
        }
        if let Some(relay) = self.relay.as_mut()
            && matches!(
                self.setup.phase(),
                SetupPhase::Waiting {
                    answered: false,
                    ..
                }
            )
        {
            let st = relay.fill(cx)?;
            let used = self.setup.relay_bytes(relay.read_buf(), st.eof);
            // Bytes after the frame are the circuit's first data.
            relay.consume(used);
            relay.flush(cx)?;
        }
        self.run(cx)
    }

    /// An event of the local connection while the circuit is being set up: is it
    /// still worth setting up? If not, the handler closes (and with it its relay
    /// connection, which the relay sees as the circuit's end leaving).
    fn watch_local(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
        let Some(local) = self.local.as_mut() else {
            return Ok(());
        };
        if local.is_connecting() {
            // A connect that failed reports it here (an error event, which may
            // come after the relay's answer and nothing else would look at).
            if let Err(e) = local.flush(cx) {
                self.setup.local_failed(e);
            }
            return self.run(cx);
        }
        if !ev.is_polled() || !(ev.is_error() || ev.is_read_closed()) {
            // Bytes: they wait in the kernel until bridged.
            return Ok(());
        }
        // A reset, or an end of file: with bytes before it the peer only
        // half-closed and waits for an answer; with none it left (or asks for
        // nothing, which a circuit could only carry as end of file after a
        // useless setup). Peeking leaves the bytes for the bridge.
        let gone = match local.stream().take_error() {
            Ok(Some(e)) | Err(e) => Some(e.to_string()),
            Ok(None) => match local.stream().peek(&mut [0u8; 1]) {
                Ok(0) => Some("end of file".to_string()),
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(why) = gone {
            self.setup.local_left(why);
            return self.run(cx);
        }
        Ok(())
    }
}

impl Handler for CircuitEnd {
    type Message = ();
    type Job = io::Result<Option<SocketAddr>>;

    fn name(&self) -> &str {
        "CircuitEnd"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let mut relay = Conn::connect(self.relay_addr, RELAY, self.cfg)?;
        relay.register(cx)?;
        relay.queue(cx, &self.hello);
        self.relay = Some(relay);
        if let Some(local) = self.local.as_mut() {
            // One that left before this is reported by the registration itself
            // (the poller reports a new registration's current state), so
            // `watch_local` sees it too.
            local.register(cx)?;
        }
        self.setup.start(cx.now());
        self.run(cx)
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        _job: JobId,
        result: JobResult<Self::Job>,
    ) -> HandlerResult {
        self.setup.resolved(result?);
        // The connect just started, and the relay may have answered already.
        self.setup(cx)
    }

    fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
        if let Some(b) = self.bridge.as_mut() {
            let pumped = b.on_event(cx, ev);
            let connected = self.setup.awaits_connect() && !b.b.is_connecting();
            if connected {
                self.setup.forward_connected();
            }
            if connected || pumped != Pumped::Open {
                self.setup.pumped(cx.now(), pumped);
                return self.run(cx);
            }
            return Ok(());
        }
        if ev.source() == LOCAL {
            return self.watch_local(cx, ev);
        }
        // The relay connection: its answer (or its failure, which the read
        // reports), and the `hello` going out.
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.setup(cx)?;
        }
        if self.bridge.is_none()
            && (ev.is_writable() || ev.is_write_closed())
            && let Some(r) = self.relay.as_mut()
        {
            r.flush(cx)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if let Some(b) = self.bridge.as_mut()
            && let Some(pumped) = b.on_timer(cx, t)
        {
            // The bridge's question whether a lingering circuit's healthy side has
            // acknowledged everything: `Done` once it has.
            self.setup.pumped(cx.now(), pumped);
            return self.run(cx);
        }
        if !self.timer.is_some_and(|(id, _)| id == t) {
            return Ok(());
        }
        self.timer = None; // one-shot: it has fired
        if self.setup.awaits_connect() && self.bridge.as_ref().is_some_and(|b| !b.b.is_connecting())
        {
            // Connected, and no event said so yet: nothing to time out.
            self.setup.forward_connected();
        }
        self.setup.on_timeout(cx.now());
        self.run(cx)
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        if let Some(b) = self.bridge.as_mut() {
            b.release(cx);
        }
        for c in [self.relay.as_mut(), self.local.as_mut()]
            .into_iter()
            .flatten()
        {
            c.release(cx);
        }
    }
}

/// A listener whose every accepted connection becomes a circuit to `id`
/// through the relay at `relay` (the connecting side of a reverse tunnel).
pub fn connect_listener(
    addr: SocketAddr,
    relay: SocketAddr,
    id: &str,
    listen: ListenOptions,
    cfg: ConnConfig,
    setup_timeout: Duration,
) -> io::Result<Listener<impl FnMut(TcpStream, SocketAddr) -> Option<CircuitEnd> + 'static>> {
    let mut hello = Vec::new();
    proto::encode(&Message::Connect { id }, &mut hello)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    Listener::bind(addr, listen, move |stream, peer| {
        log::debug!("{peer}: opening a circuit");
        Some(CircuitEnd::new(
            relay,
            hello.clone(),
            Target::Accepted(Conn::new(stream, LOCAL, cfg)),
            cfg,
            setup_timeout,
        ))
    })
}
