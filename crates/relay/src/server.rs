//! The relay server: the reactor handlers around [`Table`] and the codec.
//!
//! - [`RelayConn`], one per accepted connection. It starts as a control
//!   connection (decodes frames, calls the table with `cx.now()`, answers).
//!   After `CONNECT` it waits for the reserver; after `ACCEPT` it hands its
//!   socket to the connector's handler and closes, so one handler owns both
//!   ends of a circuit and forwards between them with a [`Bridge`] (no message
//!   per chunk of data).
//! - [`Sweeper`], one per relay: the only timer on the table. It runs
//!   [`Table::expire`] at [`Table::next_deadline`], closes silent connections
//!   and timed-out circuits, and logs the stats line periodically and at
//!   shutdown.
//!
//! All handlers of one relay share one [`Table`] through `Rc<RefCell<_>>`
//! (single thread, no locks), plus a map from the table's [`ConnId`]s to the
//! handlers that own them. This module must not parse bytes itself (that is
//! [`proto`]) nor decide reservation rules (that is the table).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use reactor::Handler;
use reactor::LogLimiter;
use reactor::TimerId;
use reactor::{Addr, CloseReason, HandlerId, HandlerResult, SourceId};
use reactor::{Conn, ConnConfig, IdleTimeout};
use reactor::{Context, Loop, Reactor};
use reactor::{ListenOptions, Listener};

use super::bridge::{Bridge, LINGER, Pumped};
use super::proto::{self, Message, Reason};
use super::table::{CircuitId, CircuitLimits, ConnId, Direction, Event, Limits, Table};

/// Settings of a relay.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Reservation limits.
    pub limits: Limits,
    /// Circuit limits.
    pub circuits: CircuitLimits,
    /// Listener settings.
    pub listen: ListenOptions,
    /// Per-connection buffers.
    pub conn: ConnConfig,
    /// A connection that has not completed a frame for this long, while not
    /// part of a circuit, is closed (trickled or absent requests). Zero uses
    /// `limits.heartbeat_timeout`, or 30 s if that is disabled too.
    pub request_timeout: Duration,
    /// Log the stats line this often (zero: only at shutdown).
    pub stats_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            limits: Limits::default(),
            circuits: CircuitLimits::default(),
            listen: ListenOptions::default(),
            conn: ConnConfig::default(),
            request_timeout: Duration::ZERO,
            stats_interval: Duration::from_secs(60),
        }
    }
}

/// State shared by the handlers of one relay (one loop).
struct Shared {
    table: Table,
    /// Who owns each connection the table knows (after a hand-off, the
    /// acceptor's id points at the connector's handler).
    handlers: HashMap<ConnId, Addr<Notice>>,
    next_conn: u64,
    sweeper: Option<HandlerId>,
    /// Deadline the sweeper's timer is set for.
    armed: Option<Instant>,
    /// Every connection's settings. A control connection is not read while its
    /// own answers pile up (`pause_on_own_queue`); one that becomes a circuit end
    /// stops that when bridged ([`Bridge::start`]).
    conn_cfg: ConnConfig,
    request_timeout: Duration,
    circuits_bridged: u64,
    circuits_over_budget: u64,
    /// Connectors that left before their circuit was accepted.
    circuits_abandoned: u64,
    protocol_errors: u64,
    /// Lines about clients that misbehave or leave early, which a flood of such
    /// clients could otherwise turn into a flood of lines (all are counted in the
    /// stats regardless).
    client_log: LogLimiter,
}

impl Shared {
    /// Wakes the sweeper if the table's next deadline moved earlier than its
    /// timer (a notification: no allocation).
    fn poke(&mut self, cx: &mut Loop<'_>) {
        let Some(next) = self.table.next_deadline() else {
            return;
        };
        if self.armed.is_some_and(|a| a <= next) {
            return;
        }
        if let Some(s) = self.sweeper {
            self.armed = Some(next);
            cx.notify(s);
        }
    }

    fn stats_line(&self) -> String {
        format!(
            "relay stats: {} bridged={} over_budget={} abandoned={} protocol_errors={}",
            self.table.stats(),
            self.circuits_bridged,
            self.circuits_over_budget,
            self.circuits_abandoned,
            self.protocol_errors
        )
    }
}

/// The relay's numbers in its loop's stats line and metrics, read from the table
/// and the counters when a snapshot is taken (nothing is mirrored on the way).
fn register_metrics(reactor: &mut Reactor, shared: &Rc<RefCell<Shared>>) {
    type Read = fn(&Shared) -> u64;
    let gauges: [(&str, Read); 3] = [
        ("relay_reservations", |s| s.table.stats().held as u64),
        ("relay_reservations_in_grace", |s| {
            s.table.stats().in_grace as u64
        }),
        ("relay_circuits", |s| s.table.stats().circuits as u64),
    ];
    for (name, read) in gauges {
        let sh = shared.clone();
        reactor.gauge_fn(name, move || read(&sh.borrow()) as i64);
    }
    let counters: [(&str, Read); 8] = [
        ("relay_reservations_reclaimed", |s| {
            s.table.stats().reclaimed
        }),
        ("relay_reservations_expired", |s| s.table.stats().expired),
        ("relay_reservations_refused", |s| s.table.stats().refused),
        ("relay_reservations_released", |s| s.table.stats().released),
        ("relay_circuits_bridged", |s| s.circuits_bridged),
        ("relay_circuits_over_budget", |s| s.circuits_over_budget),
        ("relay_circuits_abandoned", |s| s.circuits_abandoned),
        ("relay_protocol_errors", |s| s.protocol_errors),
    ];
    for (name, read) in counters {
        let sh = shared.clone();
        reactor.counter_fn(name, move || read(&sh.borrow()));
    }
}

/// Messages between relay handlers.
pub enum Notice {
    /// To a reserver's control connection: send this `INCOMING` frame.
    Incoming(Vec<u8>),
    /// To a connector: the reserver's connection for this circuit.
    Handoff(CircuitId, ConnId, Conn),
    /// Close, telling the client why if it still speaks frames.
    Close(Reason, &'static str),
    /// A reservation of this connection expired (TTL): tell the client, and
    /// watch the connection with the request timeout again.
    Expired(Box<str>),
}

/// A running relay's address.
#[derive(Debug, Clone, Copy)]
pub struct RelayHandle {
    /// The bound address (with the port the OS chose).
    pub local_addr: SocketAddr,
}

/// Binds a relay on `addr` and spawns its acceptor and sweeper on `reactor`.
///
/// ```no_run
/// let mut r = reactor::Reactor::new()?;
/// let relay = reactor_relay::server::spawn(
///     &mut r,
///     "127.0.0.1:0".parse().unwrap(),
///     reactor_relay::server::RelayConfig::default(),
/// )?;
/// println!("listening on {}", relay.local_addr);
/// r.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn spawn(reactor: &mut Reactor, addr: SocketAddr, cfg: RelayConfig) -> io::Result<RelayHandle> {
    let request_timeout = if !cfg.request_timeout.is_zero() {
        cfg.request_timeout
    } else if !cfg.limits.heartbeat_timeout.is_zero() {
        cfg.limits.heartbeat_timeout
    } else {
        Duration::from_secs(30)
    };
    let shared = Rc::new(RefCell::new(Shared {
        table: Table::new(cfg.limits.clone(), cfg.circuits.clone()),
        handlers: HashMap::new(),
        next_conn: 0,
        sweeper: None,
        armed: None,
        conn_cfg: cfg.conn,
        request_timeout,
        circuits_bridged: 0,
        circuits_over_budget: 0,
        circuits_abandoned: 0,
        protocol_errors: 0,
        client_log: LogLimiter::default(),
    }));
    register_metrics(reactor, &shared);
    let s = shared.clone();
    let listener = Listener::bind(addr, cfg.listen.clone(), move |stream, peer| {
        Some(RelayConn::new(stream, peer, s.clone()))
    })?;
    let local_addr = listener.local_addr();
    let sweeper = reactor.spawn(Sweeper {
        shared: shared.clone(),
        timer: None,
        stats_timer: None,
        stats_interval: cfg.stats_interval,
        events: Vec::new(),
    });
    shared.borrow_mut().sweeper = Some(sweeper.id());
    reactor.spawn(listener);
    log::info!(
        "relay on {local_addr}: {:?}, {:?}",
        shared.borrow().table.limits(),
        shared.borrow().table.circuit_limits()
    );
    Ok(RelayHandle { local_addr })
}

/// The relay's single table timer, and its stats logger.
pub struct Sweeper {
    shared: Rc<RefCell<Shared>>,
    timer: Option<TimerId>,
    stats_timer: Option<TimerId>,
    stats_interval: Duration,
    events: Vec<Event>,
}

impl Sweeper {
    fn sweep(&mut self, cx: &mut Loop<'_>) {
        let now = cx.now();
        let mut sh = self.shared.borrow_mut();
        self.events.clear();
        sh.table.expire(now, &mut self.events);
        for ev in self.events.drain(..) {
            match ev {
                Event::Expired { id, conn } => {
                    log::info!("reservation {id:?} on connection {} expired (TTL)", conn.0);
                    if let Some(&h) = sh.handlers.get(&conn) {
                        cx.send(h, Notice::Expired(id));
                    }
                }
                Event::GraceEnded { id } => {
                    log::info!("reservation {id:?} released: its peer did not come back in time");
                }
                Event::ConnSilent(conn) => {
                    log::info!(
                        "connection {} silent for {:?}: reservations released, closing it",
                        conn.0,
                        sh.table.limits().heartbeat_timeout
                    );
                    if let Some(&h) = sh.handlers.get(&conn) {
                        cx.send(h, Notice::Close(Reason::Timeout, "no heartbeat"));
                    }
                }
                Event::CircuitTimedOut {
                    circuit,
                    connector,
                    acceptor,
                } => {
                    let (what, detail) = if acceptor.is_some() {
                        ("reached its duration limit", "circuit duration limit")
                    } else {
                        ("was not accepted in time", "reserver did not accept")
                    };
                    log::info!("circuit {:016x} {what}; closing it", circuit.0);
                    if let Some(&h) = sh.handlers.get(&connector) {
                        cx.send(h, Notice::Close(Reason::Timeout, detail));
                    }
                }
            }
        }
        // Re-arm for the next deadline.
        if let Some(t) = self.timer.take() {
            cx.cancel_timer(t);
        }
        sh.armed = sh.table.next_deadline();
        if let Some(at) = sh.armed {
            self.timer = Some(cx.timer_once(at.saturating_duration_since(now)));
        }
    }
}

impl Handler for Sweeper {
    type Message = ();
    type Job = ();

    fn name(&self) -> &str {
        "RelaySweeper"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if !self.stats_interval.is_zero() {
            self.stats_timer = Some(cx.timer_repeat(self.stats_interval));
        }
        self.sweep(cx);
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if Some(t) == self.stats_timer {
            log::info!("{}", self.shared.borrow().stats_line());
        } else if Some(t) == self.timer {
            self.timer = None;
            self.sweep(cx);
        }
        Ok(())
    }

    /// `Shared::poke`: the table has an earlier deadline.
    fn on_notify(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.sweep(cx);
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        log::info!("{}", self.shared.borrow().stats_line());
        self.shared.borrow_mut().sweeper = None;
        cx.close();
        Ok(())
    }
}

enum State {
    /// Speaks frames: RESERVE, REFRESH, HEARTBEAT, or a first CONNECT/ACCEPT.
    Control(Conn),
    /// Sent CONNECT; waits for the reserver's connection. Bytes the client
    /// sends meanwhile are left in the kernel (and the buffer) until bridged,
    /// but the poller's end-of-file or error flags are still watched, so a
    /// connector that leaves gives its circuit back at once.
    Connecting(Conn, CircuitId),
    /// Owns both ends of a circuit.
    Bridged(Bridge, CircuitId),
    /// Delivering a last answer (or the circuit's last bytes) before closing.
    Closing(Option<Conn>, Option<Bridge>),
    /// The socket went to another handler.
    Gone,
}

/// What a frame asks the handler to do after the reply is queued.
enum Next {
    Continue,
    /// Answer queued; close after it is delivered.
    Close,
    /// Wait for the reserver of this circuit; stop reading frames.
    Connecting(CircuitId),
    /// Give the socket to the connector's handler and close.
    HandOff(CircuitId, Addr<Notice>),
}

/// One accepted connection of the relay. See the module docs.
pub struct RelayConn {
    shared: Rc<RefCell<Shared>>,
    state: State,
    id: ConnId,
    peer: SocketAddr,
    /// The connection reserved something: it is a control connection, and
    /// may not become a circuit end.
    reserved: bool,
    idle: IdleTimeout,
    linger: Option<TimerId>,
    /// Frames to send, reused.
    out: Vec<u8>,
    /// The circuit ids this handler must close when it closes.
    circuit: Option<CircuitId>,
    /// The acceptor connection whose socket this handler took over.
    acceptor: Option<ConnId>,
}

impl RelayConn {
    fn new(stream: TcpStream, peer: SocketAddr, shared: Rc<RefCell<Shared>>) -> RelayConn {
        let (id, cfg, timeout) = {
            let mut sh = shared.borrow_mut();
            sh.next_conn += 1;
            (ConnId(sh.next_conn), sh.conn_cfg, sh.request_timeout)
        };
        RelayConn {
            shared,
            state: State::Control(Conn::new(stream, 0, cfg)),
            id,
            peer,
            reserved: false,
            idle: IdleTimeout::new(timeout),
            linger: None,
            out: Vec::new(),
            circuit: None,
            acceptor: None,
        }
    }

    /// Reads and answers frames while in control mode.
    fn control(&mut self, cx: &mut Loop<'_>) -> HandlerResult {
        let State::Control(conn) = &mut self.state else {
            return Ok(());
        };
        let st = conn.fill(cx)?;
        // The peer is gone (or half-closed, which before a circuit is bridged
        // means the same: our clients never do it) if the read reached end of
        // file, or if this event says so even though the read budget stopped
        // before it: the poller will not report that edge again.
        let peer_left = st.eof || event_says_peer_left(cx, conn.source());
        let mut next = Next::Continue;
        let mut frames = false;
        loop {
            self.out.clear();
            let decoded = proto::decode(conn.read_buf());
            let (step, used) = match decoded {
                Ok(None) => break,
                Ok(Some((msg, used))) => {
                    frames = true;
                    let step = handle_frame(
                        &self.shared,
                        &mut self.out,
                        msg,
                        self.id,
                        self.peer.ip(),
                        &mut self.reserved,
                        peer_left,
                        cx,
                    );
                    (step, used)
                }
                Err(e) => {
                    let mut sh = self.shared.borrow_mut();
                    sh.protocol_errors += 1;
                    if let Some(more) = sh.client_log.allow(cx.now()) {
                        log::warn!(
                            "relay connection {} from {}: bad frame: {e}; closing it \
                             ({more} more such lines held back)",
                            self.id.0,
                            self.peer
                        );
                    }
                    drop(sh);
                    let detail = truncate(&e.to_string(), proto::MAX_DETAIL_LEN);
                    refuse(&mut self.out, Reason::BadRequest, Some(&detail));
                    (Next::Close, conn.read_buf().len())
                }
            };
            conn.consume(used);
            conn.queue(cx, &self.out);
            if !matches!(step, Next::Continue) {
                next = step;
                break;
            }
        }
        if frames {
            // A connection that holds reservations is watched by the table's
            // heartbeat timeout (which releases them without grace); the request
            // timeout is for everyone else.
            let watched = {
                let mut sh = self.shared.borrow_mut();
                sh.table.heartbeat(self.id, cx.now())
            };
            if watched {
                self.idle.stop(cx);
            } else {
                self.idle.touch(cx);
            }
        }
        // A client that sends requests without reading the answers stops being
        // read once they pile up (its connection's own-queue pause; the kernel's
        // buffers then hold it back), until they drain: its answers never grow
        // without bound.
        conn.flush(cx)?;
        match next {
            Next::Continue => {
                if st.eof {
                    // The client is gone, or half-closed: deliver the answers, then close.
                    return self.finish(cx);
                }
                Ok(())
            }
            Next::Close => self.finish(cx),
            Next::Connecting(c) => {
                self.idle.stop(cx);
                self.circuit = Some(c);
                if let State::Control(conn) = std::mem::replace(&mut self.state, State::Gone) {
                    self.state = State::Connecting(conn, c);
                }
                Ok(())
            }
            Next::HandOff(c, to) => {
                let State::Control(mut conn) = std::mem::replace(&mut self.state, State::Gone)
                else {
                    return Ok(());
                };
                cx.deregister(conn.stream_mut())?;
                conn.set_source(1);
                cx.send(to, Notice::Handoff(c, self.id, conn));
                self.shared.borrow_mut().handlers.insert(self.id, to);
                cx.close();
                Ok(())
            }
        }
    }

    /// Delivers what is queued, then closes (or after `LINGER`). A control
    /// connection is closed only once the client has closed its side too, and its
    /// input is read and dropped meanwhile: closing a socket with unread input
    /// makes the kernel reset the connection at once and throw away what it had
    /// not yet sent, the refusal that explains the close included.
    fn finish(&mut self, cx: &mut Loop<'_>) -> HandlerResult {
        self.idle.stop(cx);
        let state = std::mem::replace(&mut self.state, State::Gone);
        let (mut conn, mut bridge) = match state {
            State::Control(c) | State::Connecting(c, _) => (Some(c), None),
            State::Bridged(b, _) => (None, Some(b)),
            State::Closing(c, b) => (c, b),
            State::Gone => (None, None),
        };
        let mut flushed = true;
        if let Some(c) = conn.as_mut() {
            // Errors here mean the peer is gone: nothing left to deliver.
            let gone = c.close_when_done(cx).is_err();
            flushed &= gone || c.is_done();
        }
        if let Some(b) = bridge.as_mut() {
            b.shut_down(cx);
            flushed &= b.is_done();
        }
        if flushed {
            cx.close();
        } else if self.linger.is_none() {
            self.linger = Some(cx.timer_once(LINGER));
        }
        self.state = State::Closing(conn, bridge);
        Ok(())
    }

    /// Passes an event of either end to the circuit's bridge and acts on what it
    /// says.
    fn pump(&mut self, cx: &mut Loop<'_>, ev: reactor::Event) -> HandlerResult {
        let State::Bridged(bridge, _) = &mut self.state else {
            return Ok(());
        };
        let pumped = bridge.on_event(cx, ev);
        self.pumped(cx, pumped)
    }

    /// Acts on what the circuit's bridge said (after an event, or on its timer).
    fn pumped(&mut self, cx: &mut Loop<'_>, pumped: Pumped) -> HandlerResult {
        let State::Bridged(bridge, c) = &mut self.state else {
            return Ok(());
        };
        match pumped {
            Pumped::Open => Ok(()),
            Pumped::Lingering => {
                if self.linger.is_none() {
                    if let Some((side, e)) = bridge.failure() {
                        log::debug!(
                            "circuit {:016x}: the {} failed ({e}); the other end has \
                             everything, waiting {LINGER:?} at most for it to close",
                            c.0,
                            end_name(side)
                        );
                    }
                    self.linger = Some(cx.timer_once(LINGER));
                }
                Ok(())
            }
            Pumped::Done => {
                let (up, down) = (
                    bridge.transferred(Direction::ToReserver),
                    bridge.transferred(Direction::ToConnector),
                );
                match bridge.failure() {
                    None => log::debug!(
                        "circuit {:016x} finished: {up} bytes to the reserver, {down} back",
                        c.0
                    ),
                    Some((side, e)) => log::debug!(
                        "circuit {:016x} finished after the {} failed ({e}): {up} bytes \
                         to the reserver, {down} back",
                        c.0,
                        end_name(side)
                    ),
                }
                cx.close();
                Ok(())
            }
            Pumped::OverBudget(e) => {
                log::info!("circuit {:016x}: {e}", c.0);
                self.shared.borrow_mut().circuits_over_budget += 1;
                self.finish(cx)
            }
        }
    }

    fn handoff(
        &mut self,
        cx: &mut Loop<'_>,
        c: CircuitId,
        from: ConnId,
        mut theirs: Conn,
    ) -> HandlerResult {
        if !matches!(self.state, State::Connecting(_, mine) if mine == c) {
            // Closing already (timeout, shutdown): dropping `theirs` closes it.
            log::debug!("hand-off for circuit {:016x} arrived too late", c.0);
            let mut sh = self.shared.borrow_mut();
            if sh.handlers.get(&from).map(Addr::id) == Some(cx.id()) {
                sh.handlers.remove(&from);
            }
            return Ok(());
        }
        self.acceptor = Some(from);
        let State::Connecting(mut conn, _) = std::mem::replace(&mut self.state, State::Gone) else {
            return Ok(());
        };
        theirs.register(cx)?;
        self.out.clear();
        encode(&mut self.out, &Message::Connected { circuit: c.0 });
        conn.queue(cx, &self.out);
        theirs.queue(cx, &self.out);
        let limits = {
            let mut sh = self.shared.borrow_mut();
            sh.circuits_bridged += 1;
            sh.table.circuit_limits().clone()
        };
        log::info!(
            "circuit {:016x} bridged: {} <-> {}",
            c.0,
            self.peer,
            theirs
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string())
        );
        let cfg = self.shared.borrow().conn_cfg;
        let mut bridge = Bridge::new(conn, theirs, &cfg, &limits);
        bridge.start(cx);
        self.state = State::Bridged(bridge, c);
        Ok(())
    }
}

/// A closing control connection ([`Conn::close_when_done`], see
/// [`RelayConn::finish`]): drops whatever the client sent, writes what is left,
/// and says whether it can be closed now: our answers are delivered and the client
/// has closed its side, or the connection failed.
fn lingering_done(conn: &mut Conn, cx: &mut Loop<'_>) -> bool {
    conn.fill(cx).is_err() || conn.flush(cx).is_err() || conn.is_done()
}

/// "connector's end" or "reserver's end", for a side of a [`Bridge`].
fn end_name(side: char) -> &'static str {
    if side == 'a' {
        "connector's end"
    } else {
        "reserver's end"
    }
}

/// True if the poller's current event for `source` reports end of file or an
/// error. Bytes may still be buffered in the kernel: this only says that no
/// more will come, without reading them.
fn event_says_peer_left(cx: &Loop<'_>, source: SourceId) -> bool {
    cx.event().is_some_and(|e| {
        e.source() == source && e.is_polled() && (e.is_read_closed() || e.is_error())
    })
}

/// Acts on one decoded frame: calls the table, writes the answer into `out`.
/// `peer_left`: the client has already closed its side, so a `CONNECT` must not
/// open a circuit (nor bother the reserver) that nobody would use.
#[allow(clippy::too_many_arguments)]
fn handle_frame(
    shared: &Rc<RefCell<Shared>>,
    out: &mut Vec<u8>,
    msg: Message<'_>,
    conn: ConnId,
    ip: IpAddr,
    reserved: &mut bool,
    peer_left: bool,
    cx: &mut Loop<'_>,
) -> Next {
    let now = cx.now();
    let mut sh = shared.borrow_mut();
    sh.table.heartbeat(conn, now);
    let next = match msg {
        Message::Reserve { peer, id } => {
            *reserved = true;
            match sh.table.reserve(peer, id, ip, conn, now) {
                Ok(ttl) => {
                    log::info!("reserved {id:?} for peer {peer:?} from {ip}");
                    encode(
                        out,
                        &Message::Reserved {
                            id,
                            ttl_secs: proto::ttl_secs(ttl),
                        },
                    );
                }
                Err(reason) => {
                    log::info!("refused to reserve {id:?} for peer {peer:?} from {ip}: {reason}");
                    refuse(out, reason, None);
                }
            }
            Next::Continue
        }
        Message::Refresh { id } => {
            match sh.table.refresh(id, conn, now) {
                Ok(ttl) => encode(
                    out,
                    &Message::Reserved {
                        id,
                        ttl_secs: proto::ttl_secs(ttl),
                    },
                ),
                Err(reason) => refuse(out, reason, None),
            }
            Next::Continue
        }
        Message::Heartbeat => {
            encode(out, &Message::HeartbeatAck);
            Next::Continue
        }
        Message::Connect { id } if !*reserved && peer_left => {
            sh.circuits_abandoned += 1;
            if let Some(more) = sh.client_log.allow(now) {
                log::info!(
                    "{ip} sent CONNECT to {id:?} and left at once; no circuit opened \
                     ({more} more such lines held back)"
                );
            }
            Next::Close
        }
        Message::Connect { id } if !*reserved => match sh.table.open_circuit(id, conn, now) {
            Ok((c, reserver)) => match sh.handlers.get(&reserver) {
                Some(&h) => {
                    let mut frame = Vec::new();
                    encode(&mut frame, &Message::Incoming { circuit: c.0, id });
                    cx.send(h, Notice::Incoming(frame));
                    log::debug!("circuit {:016x}: {ip} connects to {id:?}", c.0);
                    Next::Connecting(c)
                }
                None => {
                    sh.table.close_circuit(c);
                    refuse(out, Reason::NoReservation, None);
                    Next::Continue
                }
            },
            Err(reason) => {
                log::info!("refused circuit to {id:?} from {ip}: {reason}");
                refuse(out, reason, None);
                Next::Continue
            }
        },
        Message::Accept { circuit } if !*reserved => {
            match sh.table.accept_circuit(CircuitId(circuit), conn, now) {
                Ok(connector) => match sh.handlers.get(&connector) {
                    Some(&h) => Next::HandOff(CircuitId(circuit), h),
                    None => {
                        sh.table.close_circuit(CircuitId(circuit));
                        refuse(out, Reason::UnknownCircuit, None);
                        Next::Close
                    }
                },
                Err(reason) => {
                    log::info!("refused ACCEPT from {ip}: {reason}");
                    refuse(out, reason, None);
                    Next::Close
                }
            }
        }
        Message::Connect { .. } | Message::Accept { .. } => {
            refuse(
                out,
                Reason::BadRequest,
                Some("CONNECT and ACCEPT need a connection of their own"),
            );
            Next::Close
        }
        other => {
            sh.protocol_errors += 1;
            log::warn!(
                "relay connection {} from {ip} sent {}, a relay-to-client message; closing it",
                conn.0,
                other.message_type()
            );
            refuse(out, Reason::BadRequest, Some("not a client request"));
            Next::Close
        }
    };
    sh.poke(cx);
    next
}

fn encode(out: &mut Vec<u8>, msg: &Message<'_>) {
    // Only fails for invalid fields; everything we send was validated on decode.
    if let Err(e) = proto::encode(msg, out) {
        log::error!("cannot encode {}: {e}", msg.message_type());
    }
}

fn refuse(out: &mut Vec<u8>, reason: Reason, detail: Option<&str>) {
    encode(out, &Message::Refused { reason, detail });
}

/// At most `max` bytes of `s`, cut at a character boundary, control characters
/// replaced (a decode error may quote hostile input).
fn truncate(s: &str, max: usize) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        let ch = if ch.is_control() { '?' } else { ch };
        if out.len() + ch.len_utf8() > max {
            break;
        }
        out.push(ch);
    }
    out
}

impl Handler for RelayConn {
    type Message = Notice;
    type Job = ();

    fn name(&self) -> &str {
        "RelayConn"
    }

    fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: reactor::Event) -> HandlerResult {
        match &mut self.state {
            // A bridge needs the whole event (an error flag ends one side only).
            State::Bridged(..) => return self.pump(cx, ev),
            State::Closing(_, Some(b)) => {
                if b.on_event(cx, ev) == Pumped::Done {
                    cx.close();
                }
                return Ok(());
            }
            _ => {}
        }
        // Frames: the trait's default split.
        reactor::split_event(self, cx, ev)
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let me = cx.addr();
        self.shared.borrow_mut().handlers.insert(self.id, me);
        if let State::Control(conn) = &mut self.state {
            conn.register(cx)?;
        }
        self.idle.start(cx);
        Ok(())
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        match self.state {
            State::Control(_) => self.control(cx),
            // `on_event` passes their events to the bridge.
            State::Bridged(..) => Ok(()),
            State::Closing(ref mut conn, None) => {
                if conn.as_mut().is_none_or(|c| lingering_done(c, cx)) {
                    cx.close();
                }
                Ok(())
            }
            State::Closing(..) => self.on_writable(cx, 0),
            State::Connecting(ref conn, c) => {
                if event_says_peer_left(cx, conn.source()) {
                    // Without this the circuit (and the reserving peer's circuit
                    // slot) would wait for the accept timeout, and a reserver
                    // that accepts meanwhile would be bridged to a dead socket.
                    let mut sh = self.shared.borrow_mut();
                    sh.circuits_abandoned += 1;
                    if let Some(more) = sh.client_log.allow(cx.now()) {
                        log::info!(
                            "relay connection {} from {}: connector left before circuit \
                             {:016x} was accepted; dropping the circuit ({more} more such \
                             lines held back)",
                            self.id.0,
                            self.peer,
                            c.0
                        );
                    }
                    drop(sh);
                    // on_close gives the circuit back to the table.
                    cx.close();
                }
                Ok(())
            }
            State::Gone => Ok(()),
        }
    }

    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        match &mut self.state {
            State::Control(conn) | State::Connecting(conn, _) => {
                conn.flush(cx)?;
                Ok(())
            }
            // `on_event` passes their events to the bridge.
            State::Bridged(..) | State::Closing(_, Some(_)) => Ok(()),
            State::Closing(conn, None) => {
                if let Some(c) = conn {
                    // An error: the client is gone, nothing left to deliver.
                    if c.flush(cx).is_ok() && !lingering_done(c, cx) {
                        return Ok(());
                    }
                }
                cx.close();
                Ok(())
            }
            State::Gone => Ok(()),
        }
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if let State::Bridged(bridge, _) = &mut self.state
            && let Some(pumped) = bridge.on_timer(cx, t)
        {
            // The bridge's question whether a lingering circuit's healthy end has
            // acknowledged everything.
            return self.pumped(cx, pumped);
        }
        if self.idle.expired(cx, t) {
            if let State::Control(_) = self.state {
                log::info!(
                    "relay connection {} from {}: no complete request for {:?}; closing it",
                    self.id.0,
                    self.peer,
                    self.idle.duration()
                );
                self.out.clear();
                refuse(&mut self.out, Reason::Timeout, Some("no complete request"));
                if let State::Control(conn) = &mut self.state {
                    conn.queue(cx, &self.out);
                }
                return self.finish(cx);
            }
        } else if self.linger == Some(t) {
            cx.close();
        }
        Ok(())
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self>, notice: Notice) -> HandlerResult {
        match notice {
            Notice::Incoming(frame) => {
                if let State::Control(conn) = &mut self.state {
                    conn.queue(cx, &frame);
                    conn.flush(cx)?;
                }
                Ok(())
            }
            Notice::Expired(id) => {
                if let State::Control(conn) = &mut self.state {
                    self.out.clear();
                    let detail =
                        truncate(&format!("reservation {id} expired"), proto::MAX_DETAIL_LEN);
                    refuse(&mut self.out, Reason::NoReservation, Some(&detail));
                    conn.queue(cx, &self.out);
                    conn.flush(cx)?;
                    self.idle.touch(cx);
                }
                Ok(())
            }
            Notice::Handoff(c, from, conn) => self.handoff(cx, c, from, conn),
            Notice::Close(reason, detail) => {
                if let State::Control(conn) | State::Connecting(conn, _) = &mut self.state {
                    self.out.clear();
                    refuse(&mut self.out, reason, Some(detail));
                    conn.queue(cx, &self.out);
                }
                self.finish(cx)
            }
        }
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        // Circuits may finish during the drain; requests get a last answer.
        if let State::Control(conn) | State::Connecting(conn, _) = &mut self.state {
            self.out.clear();
            refuse(&mut self.out, Reason::Shutdown, None);
            conn.queue(cx, &self.out);
            return self.finish(cx);
        }
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        let now = cx.now();
        {
            let mut sh = self.shared.borrow_mut();
            sh.table.connection_closed(self.id, now);
            if sh.handlers.get(&self.id).map(Addr::id) == Some(cx.id()) {
                sh.handlers.remove(&self.id);
            }
            if let Some(c) = self.circuit {
                sh.table.close_circuit(c);
            }
            if let Some(a) = self.acceptor {
                sh.handlers.remove(&a);
            }
            sh.poke(cx);
        }
        match &mut self.state {
            State::Control(c) | State::Connecting(c, _) => c.release(cx),
            State::Bridged(b, _) => b.release(cx),
            State::Closing(c, b) => {
                if let Some(c) = c {
                    c.release(cx);
                }
                if let Some(b) = b {
                    b.release(cx);
                }
            }
            State::Gone => {}
        }
    }
}
