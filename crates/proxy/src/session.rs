//! One proxied connection: the handler that owns both sockets of a session.
//!
//! A [`Session`] is the worked example of a two-socket handler. Its client
//! connection is source 0 and its upstream connection source 1, so one `match` on
//! the event's source tells them apart. It goes through these phases:
//!
//! ```text
//!  SOCKS5:  Handshake --request--> Resolving --addresses--> Connecting --> Relaying
//!  forward:              (host name) Resolving ------------> Connecting --> Relaying
//!                                   (address) -------------> Connecting
//!  any failure with something to tell the client: Refusing (reply, FIN, linger)
//! ```
//!
//! - **Handshake** (SOCKS5): client bytes go to the sans-io [`Handshake`]; what it
//!   writes goes back; a handshake timer bounds slow or silent clients.
//! - **Resolving**: a host name is resolved by the options' `Resolver` on the worker
//!   pool ([`Context::offload`]) and the addresses come back in `on_job`, never on the
//!   loop.
//! - **Connecting**: a non-blocking [`Conn::connect`] to each address in turn; the
//!   first writable event on source 1 settles it ([`Conn::poll_connect`]). The connect
//!   timeout is one deadline for resolution and every address; each address but the
//!   last gets an equal share of what is left of it. The client is not read meanwhile
//!   (its bytes wait in the kernel, or in the read buffer if they came with the
//!   request).
//! - **Relaying**: [`Pipe`] moves bytes both ways with backpressure and half-close.
//!   When one side fails, the other still gets what the proxy holds for it, then end
//!   of file; the session lingers (input dropped) until that side closes, bounded by
//!   the linger timeout.
//! - **Refusing**: the failure reply is queued, our side is shut down after it, and
//!   the client's input is discarded until it closes (closing with unread input would
//!   send a reset that can destroy the reply in flight), bounded by the handshake
//!   timeout.
//!
//! It must not parse: the codec does. It must not block: resolution is offloaded.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::socks5::{Command, Handshake, Reply, Request, Step, Target, encode_reply};
use super::{Mode, Shared};
use reactor::CloseReason;
use reactor::Context;
use reactor::TimerId;
use reactor::pipe::{DOWN, Pipe, UP};
use reactor::{Conn, IdleTimeout};
use reactor::{Event, Handler, HandlerResult, SourceId};
use reactor::{JobId, JobResult};

/// Source number of the accepted (client) connection.
pub const CLIENT: SourceId = 0;
/// Source number of the outgoing (upstream) connection.
pub const UPSTREAM: SourceId = 1;

/// When the worker pool's queue is full, resolution is retried after this long
/// (still within the connect timeout).
const RESOLVE_RETRY: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshake,
    Resolving,
    Connecting,
    Relaying,
    Refusing,
}

/// "client" or "upstream", for a side numbered as [`Pipe`] does.
fn side_name(side: usize) -> &'static str {
    if side == UP { "client" } else { "upstream" }
}

/// The handler of one proxied connection (forwarder or SOCKS5). See the module docs.
pub struct Session {
    shared: Rc<Shared>,
    client: Conn,
    upstream: Option<Conn>,
    peer: SocketAddr,
    phase: Phase,
    handshake: Option<Handshake>,
    target: Option<Target>,
    addrs: Vec<SocketAddr>,
    /// Index of the next address to try (the one being connected to is the one
    /// before).
    next_addr: usize,
    last_err: Option<io::Error>,
    /// Handshake, whole-connect, refusal or linger deadline, depending on the phase.
    deadline: Option<TimerId>,
    /// When the whole connect (resolution and every address) must be done.
    connect_by: Option<Instant>,
    /// Ends the current address's share of the connect deadline, when more
    /// addresses wait after it.
    attempt: Option<TimerId>,
    retry: Option<TimerId>,
    job: Option<JobId>,
    idle: IdleTimeout,
    pipe: Pipe,
}

impl Session {
    pub(crate) fn new(shared: Rc<Shared>, stream: TcpStream, peer: SocketAddr) -> Session {
        // Never paused for its own queue: the pipe pauses a side for the other's.
        let cfg = shared.opts.conn;
        let idle = IdleTimeout::new(shared.opts.idle_timeout);
        Session {
            client: Conn::new(stream, CLIENT, cfg),
            upstream: None,
            peer,
            phase: Phase::Handshake,
            handshake: None,
            target: None,
            addrs: Vec::new(),
            next_addr: 0,
            last_err: None,
            deadline: None,
            connect_by: None,
            attempt: None,
            retry: None,
            job: None,
            idle,
            pipe: Pipe::new(cfg.low_watermark),
            shared,
        }
    }

    fn is_socks(&self) -> bool {
        matches!(self.shared.opts.mode, Mode::Socks5 { .. })
    }

    fn arm_deadline(&mut self, cx: &mut Context<'_, Self>, after: Duration) {
        if let Some(t) = self.deadline.take() {
            cx.cancel_timer(t);
        }
        self.deadline = Some(cx.timer_once(after));
    }

    fn disarm_deadline(&mut self, cx: &mut Context<'_, Self>) {
        if let Some(t) = self.deadline.take() {
            cx.cancel_timer(t);
        }
    }

    fn disarm_attempt(&mut self, cx: &mut Context<'_, Self>) {
        if let Some(t) = self.attempt.take() {
            cx.cancel_timer(t);
        }
    }

    /// Runs one step; an I/O error (reset, broken pipe) closes the session. Those
    /// are normal on the Internet, so they are logged at debug level, not as
    /// handler failures.
    fn guard(&mut self, cx: &mut Context<'_, Self>, r: io::Result<()>) {
        if let Err(e) = r {
            log::debug!(
                "session {}: {e} (phase {:?}); closing",
                self.peer,
                self.phase
            );
            cx.close_with(CloseReason::PeerReset);
        }
    }

    fn step(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> io::Result<()> {
        match self.phase {
            Phase::Handshake => {
                if ev.source() == CLIENT {
                    self.handshake_read(cx)?;
                }
            }
            Phase::Resolving | Phase::Connecting => {
                if ev.source() == CLIENT {
                    // Not read until the upstream is connected: the client stays
                    // paused, and the read re-queued on connecting picks up what
                    // came meanwhile (end of file included: a re-queued read goes
                    // on to `WouldBlock`). A reset, though, means nobody waits for
                    // the upstream any more: the session ends now, not when the
                    // connect does (up to the connect timeout later, holding a
                    // session slot). An end of file is only a half-close and stays.
                    if ev.is_polled()
                        && ev.is_error()
                        && let Some(e) = self.client.stream().take_error()?
                    {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("the client left while the upstream connect ran: {e}"),
                        ));
                    }
                } else if self.phase == Phase::Connecting {
                    self.poll_upstream(cx)?;
                }
            }
            Phase::Relaying => {
                let Some(up) = self.upstream.as_mut() else {
                    return Err(io::Error::other("relaying without an upstream"));
                };
                if self.pipe.on_event(cx, ev, &mut self.client, up) > 0 {
                    self.idle.touch(cx);
                }
                if self.pipe.is_done(&self.client, up) {
                    match self.pipe.failure() {
                        None => log::debug!(
                            "session {}: finished ({} bytes up, {} down)",
                            self.peer,
                            self.pipe.bytes(UP),
                            self.pipe.bytes(DOWN)
                        ),
                        Some((side, e)) => log::debug!(
                            "session {}: the {} failed ({e}); the other side got everything \
                             it had sent ({} bytes up, {} down)",
                            self.peer,
                            side_name(side),
                            self.pipe.bytes(UP),
                            self.pipe.bytes(DOWN)
                        ),
                    }
                    cx.close();
                } else if self.deadline.is_none() && self.pipe.is_lingering(&self.client, up) {
                    // Everything deliverable is delivered; the healthy side's input is
                    // being dropped until it closes. It may never: bound the wait.
                    self.arm_deadline(cx, self.shared.opts.linger_timeout);
                }
            }
            Phase::Refusing => {
                if ev.source() == CLIENT {
                    // Closing: `fill` reads and drops what the client still sends.
                    self.client.fill(cx)?;
                    self.client.flush(cx)?;
                    if self.client.is_done() {
                        cx.close_with(CloseReason::ProtocolError);
                    }
                }
            }
        }
        Ok(())
    }

    fn handshake_read(&mut self, cx: &mut Context<'_, Self>) -> io::Result<()> {
        let st = self.client.fill(cx)?;
        let Some(hs) = self.handshake.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        let result = hs.feed(self.client.read_buf(), &mut out);
        if !out.is_empty() {
            self.client.queue(cx, &out);
        }
        match result {
            Ok((n, Step::NeedMore)) => {
                self.client.consume(n);
                self.client.flush(cx)?;
                if st.eof {
                    self.shared.log_rejection(format_args!(
                        "session {}: client closed during the SOCKS5 handshake",
                        self.peer
                    ));
                    self.shared.count_handshake_failure();
                    cx.close();
                }
                Ok(())
            }
            Ok((n, Step::Request(req))) => {
                self.client.consume(n);
                self.handshake = None;
                self.disarm_deadline(cx);
                // Bytes after the request are tunnel payload: they stay in the read
                // buffer, and no more are read, until the upstream is connected.
                self.client.pause_reading();
                self.client.flush(cx)?;
                self.on_request(cx, req)
            }
            Err(e) => {
                self.shared
                    .log_rejection(format_args!("session {}: {e}", self.peer));
                self.shared.count_handshake_failure();
                if out.is_empty() {
                    cx.close(); // not SOCKS5: nothing we could say would be understood
                    Ok(())
                } else {
                    self.refuse(cx, None)
                }
            }
        }
    }

    fn on_request(&mut self, cx: &mut Context<'_, Self>, req: Request) -> io::Result<()> {
        if req.command != Command::Connect {
            self.shared.log_rejection(format_args!(
                "session {}: SOCKS5 command {:?} to {} is not supported",
                self.peer, req.command, req.target
            ));
            self.shared.count_handshake_failure();
            return self.refuse(cx, Some(Reply::CommandNotSupported));
        }
        let rules = &self.shared.opts.rules;
        let denied = !rules.allows_port(req.target.port())
            || matches!(req.target, Target::Addr(a) if !rules.allows_ip(a.ip()));
        if denied {
            self.shared.log_rejection(format_args!(
                "session {}: CONNECT {} denied by the rules",
                self.peer, req.target
            ));
            self.shared.count_handshake_failure();
            return self.refuse(cx, Some(Reply::NotAllowed));
        }
        log::debug!("session {}: CONNECT {}", self.peer, req.target);
        self.start_connect(cx, req.target)
    }

    fn start_connect(&mut self, cx: &mut Context<'_, Self>, target: Target) -> io::Result<()> {
        // One deadline for all of it: resolution, pool-full retries, every address.
        let timeout = self.shared.opts.connect_timeout;
        self.connect_by = Some(cx.now() + timeout);
        self.arm_deadline(cx, timeout);
        match &target {
            Target::Addr(a) => {
                self.addrs = vec![*a];
                self.target = Some(target);
                self.try_next(cx)
            }
            Target::Domain { .. } => {
                self.target = Some(target);
                self.phase = Phase::Resolving;
                self.resolve(cx);
                Ok(())
            }
        }
    }

    fn resolve(&mut self, cx: &mut Context<'_, Self>) {
        let Some(Target::Domain { host, port }) = self.target.clone() else {
            return;
        };
        // Resolution may block (getaddrinfo does): worker pool.
        let resolver = self.shared.opts.resolver.clone();
        match cx.offload(move || resolver.resolve(&host, port)) {
            Ok(job) => self.job = Some(job),
            Err(full) => {
                log::debug!(
                    "session {}: {full}; retrying in {RESOLVE_RETRY:?}",
                    self.peer
                );
                self.retry = Some(cx.timer_once(RESOLVE_RETRY));
            }
        }
    }

    fn resolved(
        &mut self,
        cx: &mut Context<'_, Self>,
        result: JobResult<io::Result<Vec<SocketAddr>>>,
    ) -> io::Result<()> {
        let host = match &self.target {
            Some(Target::Domain { host, .. }) => host.clone(),
            _ => String::new(),
        };
        let found = result
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|r| r);
        let mut addrs = match found {
            Ok(a) => a,
            // Report every resolution failure as NotFound: SOCKS5 0x04, host
            // unreachable (it has no address we can use).
            Err(e) => {
                let e = io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot resolve {host}: {e}"),
                );
                return self.fail(cx, e);
            }
        };
        if addrs.is_empty() {
            let e = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
            return self.fail(cx, e);
        }
        if self.is_socks() {
            let rules = &self.shared.opts.rules;
            addrs.retain(|a| rules.allows_ip(a.ip()));
            if addrs.is_empty() {
                let e = io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("every address of {host} is denied by the rules"),
                );
                return self.fail(cx, e);
            }
        }
        self.addrs = addrs;
        self.next_addr = 0;
        self.try_next(cx)
    }

    /// Starts a connect to the next address; fails the session when none is left.
    /// The connect deadline is not extended: an address gets an equal share of
    /// what is left of it (the last one gets all the rest), so a silent address
    /// cannot use up the time of the ones after it, and one that fails at once
    /// leaves its share to them.
    fn try_next(&mut self, cx: &mut Context<'_, Self>) -> io::Result<()> {
        self.upstream = None; // a failed attempt's socket (closing it deregisters it)
        self.disarm_attempt(cx);
        while let Some(&addr) = self.addrs.get(self.next_addr) {
            self.next_addr += 1;
            let attempt = Conn::connect(addr, UPSTREAM, self.shared.opts.conn)
                .and_then(|mut c| c.register(cx).map(|()| c));
            match attempt {
                Ok(c) => {
                    self.upstream = Some(c);
                    self.phase = Phase::Connecting;
                    let after = self.addrs.len() - self.next_addr;
                    if after > 0 {
                        let left = self
                            .connect_by
                            .map_or(Duration::ZERO, |t| t.saturating_duration_since(cx.now()));
                        self.attempt = Some(cx.timer_once(left / (after as u32 + 1)));
                    }
                    return Ok(());
                }
                Err(e) => {
                    log::debug!("session {}: connect to {addr}: {e}", self.peer);
                    self.last_err = Some(e);
                }
            }
        }
        let e = self
            .last_err
            .take()
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to"));
        self.fail(cx, e)
    }

    fn poll_upstream(&mut self, cx: &mut Context<'_, Self>) -> io::Result<()> {
        let Some(up) = self.upstream.as_mut() else {
            return Ok(());
        };
        match up.poll_connect() {
            Ok(true) => self.connected(cx),
            Ok(false) => Ok(()),
            Err(e) => {
                log::debug!(
                    "session {}: connect to {}: {e}",
                    self.peer,
                    self.current_addr()
                );
                self.last_err = Some(e);
                self.try_next(cx)
            }
        }
    }

    /// The address being connected to (or last tried).
    fn current(&self) -> Option<SocketAddr> {
        let i = self.next_addr.checked_sub(1)?;
        self.addrs.get(i).copied()
    }

    /// [`current`](Session::current), for logs.
    fn current_addr(&self) -> String {
        self.current().map(|a| a.to_string()).unwrap_or_default()
    }

    fn connected(&mut self, cx: &mut Context<'_, Self>) -> io::Result<()> {
        self.disarm_deadline(cx);
        self.disarm_attempt(cx);
        self.phase = Phase::Relaying;
        self.idle.start(cx);
        let socks = self.is_socks();
        let to = self.current();
        let Some(up) = self.upstream.as_mut() else {
            return Ok(());
        };
        log::debug!(
            "session {}: connected to {} via {:?}",
            self.peer,
            to.map(|a| a.to_string()).unwrap_or_default(),
            up.stream().local_addr()
        );
        if socks {
            let mut out = Vec::with_capacity(32);
            encode_reply(Reply::Succeeded, up.stream().local_addr().ok(), &mut out);
            self.client.queue(cx, &out);
            // Written by the pipe (which handles a failure of the client there).
            cx.requeue(Event::writable(CLIENT));
        }
        // Read both sides now: the client's early bytes and the upstream's greeting
        // may have arrived with edges we already consumed.
        // Bytes that came with the request wait in the read buffer: pump them even
        // if no new edge comes.
        self.pipe.start(cx, &mut self.client, up);
        self.client.resume_reading(cx);
        cx.requeue(Event::readable(CLIENT));
        cx.requeue(Event::readable(UPSTREAM));
        Ok(())
    }

    /// The upstream could not be reached: SOCKS5 clients get the matching reply,
    /// forwarded clients are closed at once.
    fn fail(&mut self, cx: &mut Context<'_, Self>, e: io::Error) -> io::Result<()> {
        self.disarm_attempt(cx);
        self.shared.count_connect_failure();
        let target = self
            .target
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        if self.is_socks() {
            let reply = Reply::from_io_error(&e);
            self.shared.log_rejection(format_args!(
                "session {}: cannot reach {target}: {e}; replying {reply}",
                self.peer
            ));
            self.refuse(cx, Some(reply))
        } else {
            self.shared.log_rejection(format_args!(
                "session {}: cannot reach upstream {target}: {e}; closing",
                self.peer
            ));
            cx.close();
            Ok(())
        }
    }

    /// Sends `reply` (if any; the handshake may have queued its own answer already),
    /// shuts our side down after it and lingers until the client closes.
    fn refuse(&mut self, cx: &mut Context<'_, Self>, reply: Option<Reply>) -> io::Result<()> {
        self.upstream = None;
        self.phase = Phase::Refusing;
        if let Some(r) = reply {
            let mut out = Vec::with_capacity(10);
            encode_reply(r, None, &mut out);
            self.client.queue(cx, &out);
        }
        self.arm_deadline(cx, self.shared.opts.handshake_timeout);
        self.client.close_when_done(cx)?;
        if self.client.is_done() {
            cx.close_with(CloseReason::ProtocolError);
        }
        Ok(())
    }
}

impl Handler for Session {
    type Message = ();
    type Job = io::Result<Vec<SocketAddr>>;

    fn name(&self) -> &str {
        "ProxySession"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.client.register(cx)?;
        let r = match &self.shared.opts.mode {
            Mode::Socks5 { auth } => {
                self.handshake = Some(Handshake::new(auth.clone()));
                self.arm_deadline(cx, self.shared.opts.handshake_timeout);
                Ok(())
            }
            Mode::Forward(target) => {
                let target = target.clone();
                self.client.pause_reading();
                self.start_connect(cx, target)
            }
        };
        self.guard(cx, r);
        Ok(())
    }

    fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
        let r = self.step(cx, ev);
        self.guard(cx, r);
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        let r = if self.deadline == Some(t) {
            self.deadline = None;
            match self.phase {
                Phase::Handshake => {
                    self.shared.log_rejection(format_args!(
                        "session {}: SOCKS5 handshake not finished within {:?}; closing",
                        self.peer, self.shared.opts.handshake_timeout
                    ));
                    self.shared.count_handshake_failure();
                    cx.close();
                    Ok(())
                }
                Phase::Resolving => {
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "name resolution took longer than {:?}",
                            self.shared.opts.connect_timeout
                        ),
                    );
                    self.fail(cx, e)
                }
                Phase::Connecting => {
                    let last = match self.last_err.take() {
                        Some(e) => format!("; before that: {e}"),
                        None => String::new(),
                    };
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no connection within {:?} (tried {} of {} addresses, the last \
                             {} did not answer{last})",
                            self.shared.opts.connect_timeout,
                            self.next_addr,
                            self.addrs.len(),
                            self.current_addr()
                        ),
                    );
                    self.fail(cx, e)
                }
                Phase::Refusing => {
                    cx.close();
                    Ok(())
                }
                Phase::Relaying => {
                    // Only armed while lingering after a failure.
                    if let Some((side, e)) = self.pipe.failure() {
                        log::debug!(
                            "session {}: the {} failed ({e}); the other side got what it \
                             had sent but did not close within {:?}; closing",
                            self.peer,
                            side_name(side),
                            self.shared.opts.linger_timeout
                        );
                    }
                    cx.close();
                    Ok(())
                }
            }
        } else if self.attempt == Some(t) {
            // This address's share is used up; the next one gets its own.
            self.attempt = None;
            let e = io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {} did not answer in time", self.current_addr()),
            );
            log::debug!("session {}: {e}; trying the next address", self.peer);
            self.last_err = Some(e);
            self.try_next(cx)
        } else if self.idle.expired(cx, t) {
            log::debug!(
                "session {}: idle for {:?}; closing",
                self.peer,
                self.idle.duration()
            );
            cx.close();
            Ok(())
        } else if self.retry == Some(t) {
            self.retry = None;
            if self.phase == Phase::Resolving {
                self.resolve(cx);
            }
            Ok(())
        } else {
            Ok(())
        };
        self.guard(cx, r);
        Ok(())
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        job: JobId,
        result: JobResult<Self::Job>,
    ) -> HandlerResult {
        if self.job == Some(job) && self.phase == Phase::Resolving {
            self.job = None;
            let r = self.resolved(cx, result);
            self.guard(cx, r);
        }
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        // Draining means finishing tunnels that carry data, not opening new ones.
        if self.phase != Phase::Relaying {
            cx.close();
        }
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        self.client.release(cx);
        if let Some(up) = self.upstream.as_mut() {
            up.release(cx);
        }
        self.shared
            .release(self.peer.ip(), self.pipe.bytes(UP), self.pipe.bytes(DOWN));
    }
}
