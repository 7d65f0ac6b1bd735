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
//! What to do in each phase, and when, is decided by the sans-IO [`SessionState`]
//! (module [`state`]): it is fed what happened and the loop's time and answers
//! with [`Action`]s and the next instant it wants to be woken at. The handler is
//! the thin part that performs them on sockets, the worker pool and one loop timer:
//!
//! - **Handshake** (SOCKS5): client bytes go to the state machine's SOCKS5 codec;
//!   what it writes goes back.
//! - **Resolving**: a host name is resolved by the options' `Resolver` on the worker
//!   pool ([`Context::offload`]) and the addresses come back in `on_job`, never on the
//!   loop.
//! - **Connecting**: a non-blocking [`Conn::connect`] to each address the state
//!   machine names; the first writable event on source 1 settles it
//!   ([`Conn::poll_connect`]). The client is not read meanwhile (its bytes wait in
//!   the kernel, or in the read buffer if they came with the request), but its
//!   events are watched: a reset ends the session at once.
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
//! It must not decide: the state machine does.

pub mod state;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;

use super::Shared;
use super::proxy_protocol;
use super::socks5::{Reply, encode_reply};
use super::udp::{Association, FromClient};
use reactor::Context;
use reactor::TimerId;
use reactor::pipe::{DOWN, Pipe, PipeStatus, UP};
use reactor::{Conn, Loop};
use reactor::{Event, Handler, HandlerResult, SourceId};
use reactor::{JobId, JobResult};
use reactor::{UdpConfig, UdpConn, UdpOptions};

pub use state::{Action, End, Failure, Phase, RESOLVE_RETRY, SessionState, Timeouts, Unreachable};

/// Source number of the accepted (client) connection.
pub const CLIENT: SourceId = 0;
/// Source number of the outgoing (upstream) connection.
pub const UPSTREAM: SourceId = 1;
/// Source number of a UDP association's client-side socket.
pub const UDP_CLIENT: SourceId = 2;
/// Source numbers of a UDP association's outside sockets (IPv4, IPv6).
pub const UDP_REMOTE: [SourceId; 2] = [3, 4];

/// The sockets and buffers of a UDP association (SOCKS5 UDP ASSOCIATE); its
/// decisions are [`Association`]'s.
struct UdpSide {
    assoc: Association,
    /// Bound on the address the reply names; only the client's datagrams count.
    client_side: UdpConn,
    /// Where datagrams to destinations go out (and their answers come in), IPv4
    /// and IPv6, bound when first needed.
    remote: [Option<UdpConn>; 2],
    /// Datagrams to send after a receive, laid end to end, and where each goes
    /// (reused: no allocation per datagram).
    batch: Vec<u8>,
    sends: Vec<(SocketAddr, usize, usize)>,
    /// Datagrams waiting for their destination's name: the resolution, the name,
    /// the port, the payload.
    pending: Vec<(JobId, String, u16, Vec<u8>)>,
    relayed: u64,
    dropped: u64,
}

/// "client" or "upstream", for a side numbered as [`Pipe`] does.
fn side_name(side: usize) -> &'static str {
    if side == UP { "client" } else { "upstream" }
}

/// The handler of one proxied connection (forwarder or SOCKS5). See the module docs.
pub struct Session {
    shared: Rc<Shared>,
    client: Conn,
    /// The connection being attempted, then the upstream.
    upstream: Option<Conn>,
    /// The client: the connection's peer, or the client its PROXY header announced.
    peer: SocketAddr,
    /// The session counts against the limits (released on close).
    admitted: bool,
    /// The connection holds a place among those awaiting a PROXY header (given
    /// back when the header comes, or on close).
    awaiting_header: bool,
    /// The address the client connected to, as a PROXY header announced it.
    announced_dst: Option<SocketAddr>,
    state: SessionState,
    /// The loop timer armed for `state.poll_timeout()`, and that instant.
    timer: Option<(TimerId, Instant)>,
    /// The resolution running on the pool.
    job: Option<JobId>,
    pipe: Pipe,
    /// A UDP association, once made.
    udp: Option<Box<UdpSide>>,
}

impl Session {
    /// A session for the connection `stream` from `peer`; `admitted`: it already
    /// counts against the limits. One that is not starts with a PROXY protocol
    /// header, and the client it announces is admitted then.
    pub(crate) fn new(
        shared: Rc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: bool,
        tls: Option<Box<dyn reactor::StreamFilter>>,
    ) -> Session {
        let cfg = shared.opts.conn;
        let mut client = Conn::new(stream, CLIENT, cfg);
        if let Some(f) = tls {
            client = client.with_filter(f);
        }
        let mut state =
            SessionState::new(peer, shared.opts.mode.clone(), Timeouts::of(&shared.opts));
        if !admitted {
            state.expect_proxy_header();
        }
        Session {
            client,
            upstream: None,
            peer,
            admitted,
            awaiting_header: !admitted,
            announced_dst: None,
            state,
            timer: None,
            job: None,
            pipe: Pipe::new(cfg.low_watermark),
            udp: None,
            shared,
        }
    }

    /// Runs one step; an I/O error (reset, broken pipe) closes the session. Those
    /// are normal on the Internet, so they are logged at debug level, not as
    /// handler failures.
    fn guard(&mut self, cx: &mut Context<'_, Self>, r: io::Result<()>) {
        if let Err(e) = r {
            log::debug!(
                "session {}: {e} (phase {}); closing",
                self.peer,
                self.state.phase_name()
            );
            cx.close_with(reactor::CloseReason::PeerReset);
        }
    }

    /// Performs what the state machine asks, then sets the loop timer to the
    /// instant it next wants to be woken at.
    fn run(&mut self, cx: &mut Context<'_, Self>) -> io::Result<()> {
        while let Some(action) = self.state.poll_action() {
            match action {
                Action::Announced { src, dst } => {
                    let client = src.unwrap_or(self.peer);
                    log::debug!("session {}: PROXY header: client {client}", self.peer);
                    if std::mem::take(&mut self.awaiting_header) {
                        self.shared.header_done();
                    }
                    if self.shared.admit(client) {
                        self.admitted = true;
                        self.peer = client;
                        self.announced_dst = dst;
                        self.state.admitted(cx.now(), client);
                    } else {
                        self.state.not_admitted();
                    }
                }
                Action::Resolve { host, port } => {
                    self.client.pause_reading();
                    // Resolution may block (getaddrinfo does): worker pool.
                    let resolver = self.shared.opts.resolver.clone();
                    match cx.offload(move || resolver.resolve(&host, port)) {
                        Ok(job) => self.job = Some(job),
                        Err(full) => {
                            log::debug!(
                                "session {}: {full}; retrying in {RESOLVE_RETRY:?}",
                                self.peer
                            );
                            self.state.pool_full(cx.now());
                        }
                    }
                }
                Action::Connect(addr) => {
                    // Not read until the upstream is connected: its bytes wait.
                    self.client.pause_reading();
                    // A failed attempt's socket goes (closing it deregisters it).
                    self.upstream = None;
                    let attempt = Conn::connect(addr, UPSTREAM, self.shared.opts.conn)
                        .and_then(|c| match &self.shared.opts.upstream_tls {
                            None => Ok(c),
                            Some(t) => Ok(c.with_filter(t.connector.filter(&t.server_name)?)),
                        })
                        .and_then(|mut c| c.register(cx).map(|()| c));
                    match attempt {
                        Ok(c) => self.upstream = Some(c),
                        Err(e) => self.state.connect_failed(cx.now(), e),
                    }
                }
                Action::Relay { to, reply } => self.relay(cx, to, reply),
                Action::Associate { port } => self.associate(cx, port)?,
                Action::Refuse { failure, reply } => {
                    self.reject(&failure, reply);
                    self.refuse(cx, reply)?;
                }
                Action::CheckDelivered => {
                    let yes = self
                        .upstream
                        .as_ref()
                        .is_some_and(|up| self.pipe.is_delivered(&self.client, up));
                    self.state.delivered(cx.now(), yes);
                }
                Action::Close(end) => self.end(cx, end),
            }
        }
        self.sync_timer(cx);
        Ok(())
    }

    /// Keeps the one loop timer at the state machine's next deadline. A deadline
    /// that did not move (bytes moving only store their time) costs a comparison.
    #[inline]
    fn sync_timer(&mut self, cx: &mut Loop<'_>) {
        let want = self.state.poll_timeout();
        if self.timer.map(|(_, at)| at) == want {
            return;
        }
        let Some(at) = want else {
            if let Some((t, _)) = self.timer.take() {
                cx.cancel_timer(t);
            }
            return;
        };
        let after = at.saturating_duration_since(cx.now());
        match self.timer {
            Some((t, _)) if cx.reset_timer(t, after) => self.timer = Some((t, at)),
            _ => self.timer = Some((cx.timer_once(after), at)),
        }
    }

    /// Logs (rate-limited) and counts why a client was turned away.
    fn reject(&self, failure: &Failure, reply: Option<Reply>) {
        if failure.is_handshake() {
            self.shared.count_handshake_failure();
        } else {
            self.shared.count_connect_failure();
        }
        let peer = self.peer;
        match (failure, reply) {
            (Failure::Unreachable { .. }, Some(r)) => self
                .shared
                .log_rejection(format_args!("session {peer}: {failure}; replying {r}")),
            (Failure::Unreachable { .. }, None) => self
                .shared
                .log_rejection(format_args!("session {peer}: {failure}; closing")),
            _ => self
                .shared
                .log_rejection(format_args!("session {peer}: {failure}")),
        }
    }

    fn step(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> io::Result<()> {
        if let Phase::Relaying { .. } = self.state.phase() {
            return self.relay_event(cx, ev);
        }
        match self.state.phase() {
            Phase::ProxyHeader { .. } => {
                if ev.source() == CLIENT {
                    self.proxy_header_read(cx)?;
                }
            }
            Phase::Handshake { .. } => {
                if ev.source() == CLIENT {
                    let st = self.client.fill(cx)?;
                    self.handshake_feed(cx, st.eof)?;
                }
            }
            Phase::Resolving { .. } | Phase::Connecting { .. } => {
                if ev.source() == CLIENT {
                    // Not read until the upstream is connected: the client stays
                    // paused, and the read re-queued on connecting picks up what
                    // came meanwhile (end of file included: a re-queued read goes
                    // on to `WouldBlock`). A reset, though, means nobody waits for
                    // the upstream any more.
                    if ev.is_polled()
                        && ev.is_error()
                        && let Some(e) = self.client.stream().take_error()?
                    {
                        self.state.client_failed(e);
                        self.run(cx)?;
                    }
                } else if let Phase::Connecting { .. } = self.state.phase() {
                    self.poll_upstream(cx)?;
                }
            }
            Phase::Refusing { .. } => {
                if ev.source() == CLIENT {
                    // Closing: `fill` reads and drops what the client still sends.
                    self.client.fill(cx)?;
                    self.client.flush(cx)?;
                    if self.client.is_done() {
                        self.state.client_done();
                        self.run(cx)?;
                    }
                }
            }
            Phase::Associated { .. } => self.udp_event(cx, ev)?,
            Phase::Accepted { .. }
            | Phase::Relaying { .. }
            | Phase::Associating
            | Phase::Closed => {}
        }
        Ok(())
    }

    /// The hot path: one event through the pipe, and the state machine told only
    /// when something moved or the pipe's state changed.
    #[inline]
    fn relay_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> io::Result<()> {
        let Some(up) = self.upstream.as_mut() else {
            return Err(io::Error::other("relaying without an upstream"));
        };
        let moved = self.pipe.on_event(cx, ev, &mut self.client, up);
        let status = self
            .pipe
            .status([self.client.is_write_shut(), up.is_write_shut()]);
        if moved > 0 || status != PipeStatus::Open {
            self.state.relayed(cx.now(), moved, status);
            if status != PipeStatus::Open {
                self.run(cx)?;
            }
        }
        Ok(())
    }

    /// Reads the PROXY protocol header; what follows it stays in the read buffer
    /// for the SOCKS5 handshake or the upstream.
    fn proxy_header_read(&mut self, cx: &mut Context<'_, Self>) -> io::Result<()> {
        let st = self.client.fill(cx)?;
        let n = self.state.proxy_header(self.client.read_buf(), st.eof);
        self.client.consume(n);
        self.run(cx)?;
        if let Phase::Handshake { .. } = self.state.phase()
            && !self.client.read_buf().is_empty()
        {
            // The greeting came with the header.
            self.handshake_feed(cx, st.eof)?;
        }
        Ok(())
    }

    /// Feeds what the client sent to the SOCKS5 handshake.
    fn handshake_feed(&mut self, cx: &mut Context<'_, Self>, eof: bool) -> io::Result<()> {
        let mut out = Vec::new();
        let n = self.state.handshake(
            cx.now(),
            self.client.read_buf(),
            eof,
            &self.shared.opts.rules,
            &mut out,
        );
        if !out.is_empty() {
            self.client.queue(cx, &out);
        }
        // Bytes after the request are tunnel payload: they stay in the read buffer
        // (and no more are read) until the upstream is connected.
        self.client.consume(n);
        self.client.flush(cx)?;
        self.run(cx)
    }

    fn poll_upstream(&mut self, cx: &mut Context<'_, Self>) -> io::Result<()> {
        let Some(up) = self.upstream.as_mut() else {
            return Ok(());
        };
        match up.poll_connect() {
            Ok(true) => self.state.connected(cx.now()),
            Ok(false) => return Ok(()),
            Err(e) => self.state.connect_failed(cx.now(), e),
        }
        self.run(cx)
    }

    /// The upstream is connected: reply (SOCKS5), start the pipe, read both sides.
    fn relay(&mut self, cx: &mut Loop<'_>, to: SocketAddr, reply: Option<Reply>) {
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        log::debug!(
            "session {}: connected to {to} via {:?}",
            self.peer,
            up.stream().local_addr()
        );
        if let Some(r) = reply {
            let mut out = Vec::with_capacity(32);
            encode_reply(r, up.stream().local_addr().ok(), &mut out);
            self.client.queue(cx, &out);
            // Written by the pipe (which handles a failure of the client there).
            cx.requeue(Event::writable(CLIENT));
        }
        if let Some(version) = self.shared.opts.proxy_protocol_out {
            // Before anything of the client's: the upstream learns who it is. The
            // destination is what the client asked for: a SOCKS5 CONNECT's target,
            // or (forwarder) the address it connected to, as HAProxy's send-proxy.
            let dst = match reply {
                Some(_) => Some(to),
                None => self
                    .announced_dst
                    .or_else(|| self.client.stream().local_addr().ok()),
            };
            let mut hdr = Vec::with_capacity(64);
            match (version, dst) {
                (proxy_protocol::Version::V1, Some(dst)) => {
                    proxy_protocol::encode_v1(self.peer, dst, &mut hdr)
                }
                (proxy_protocol::Version::V2, Some(dst)) => {
                    proxy_protocol::encode_v2(self.peer, dst, &mut hdr)
                }
                (proxy_protocol::Version::V1, None) => proxy_protocol::encode_v1_unknown(&mut hdr),
                (proxy_protocol::Version::V2, None) => proxy_protocol::encode_v2_local(&mut hdr),
            }
            up.queue(cx, &hdr);
        }
        // Read both sides now: the client's early bytes and the upstream's greeting
        // may have arrived with edges we already consumed, and bytes that came with
        // the request wait in the read buffer: pump them even if no new edge comes.
        self.pipe.start(cx, &mut self.client, up);
        self.client.resume_reading(cx);
        cx.requeue(Event::readable(CLIENT));
        cx.requeue(Event::readable(UPSTREAM));
    }

    /// Sends `reply` (if any; the handshake may have queued its own answer already),
    /// shuts our side down after it and lingers until the client closes.
    fn refuse(&mut self, cx: &mut Loop<'_>, reply: Option<Reply>) -> io::Result<()> {
        self.upstream = None;
        if let Some(r) = reply {
            let mut out = Vec::with_capacity(10);
            encode_reply(r, None, &mut out);
            self.client.queue(cx, &out);
        }
        self.client.close_when_done(cx)?;
        if self.client.is_done() {
            self.state.client_done();
        }
        Ok(())
    }

    /// UDP ASSOCIATE: binds the client-side socket on the address the TCP
    /// connection came in on, replies with it, and relays from now on.
    fn associate(&mut self, cx: &mut Context<'_, Self>, port: u16) -> io::Result<()> {
        let opts = self.shared.opts.udp;
        {
            let mut s = self.shared.udp.borrow_mut();
            if s.open >= opts.max_associations {
                drop(s);
                let why = format!("{} associations are open", opts.max_associations);
                self.state.associate_failed(cx.now(), why);
                return Ok(());
            }
            s.open += 1;
        }
        let here = self.client.stream().local_addr()?;
        let cfg = UdpConfig::default().max_datagram(opts.max_datagram);
        let bound = UdpConn::bind(
            SocketAddr::new(here.ip(), 0),
            &UdpOptions::default(),
            UDP_CLIENT,
            cfg,
        )
        .and_then(|mut c| c.register(cx).map(|()| c));
        let client_side = match bound {
            Ok(c) => c,
            Err(e) => {
                self.shared.udp.borrow_mut().open -= 1;
                self.state
                    .associate_failed(cx.now(), format!("cannot bind: {e}"));
                return Ok(());
            }
        };
        let at = client_side.local_addr()?;
        self.udp = Some(Box::new(UdpSide {
            assoc: Association::new(self.peer.ip(), port),
            client_side,
            remote: [None, None],
            batch: Vec::new(),
            sends: Vec::new(),
            pending: Vec::new(),
            relayed: 0,
            dropped: 0,
        }));
        self.shared.count_udp(1, 0, 0);
        log::debug!("session {}: UDP association on {at}", self.peer);
        let mut out = Vec::with_capacity(32);
        encode_reply(Reply::Succeeded, Some(at), &mut out);
        self.client.queue(cx, &out);
        self.client.flush(cx)?;
        self.state.associated(cx.now(), opts.idle_timeout);
        Ok(())
    }

    /// An event of an association: its TCP connection (input dropped; its end ends
    /// the association), its client-side socket or an outside socket.
    fn udp_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> io::Result<()> {
        let src = ev.source();
        if src == CLIENT {
            // Nothing more is expected on the TCP connection: what comes is dropped,
            // and its end (or failure) ends the association.
            let ended = match self.client.discard_input(cx) {
                Ok(st) => st.eof || self.client.flush(cx).is_err(),
                Err(_) => true,
            };
            if ended {
                self.state.control_closed();
                self.run(cx)?;
            }
            return Ok(());
        }
        let Some(u) = self.udp.as_mut() else {
            return Ok(());
        };
        if ev.is_writable() {
            if src == UDP_CLIENT {
                u.client_side.flush(cx);
            } else if let Some(r) = u.remote.iter_mut().flatten().find(|r| r.source() == src) {
                r.flush(cx);
            }
        }
        if !(ev.is_readable() || ev.is_error()) {
            return Ok(());
        }
        let now = cx.now();
        let shared = self.shared.clone();
        let opts = &shared.opts;
        let mut global = shared.udp.borrow_mut();
        let UdpSide {
            assoc,
            client_side,
            remote,
            batch,
            sends,
            pending,
            dropped,
            ..
        } = &mut **u;
        batch.clear();
        sends.clear();
        let mut resolve: Vec<(String, u16, Vec<u8>)> = Vec::new();
        let mut why = None;
        let r = if src == UDP_CLIENT {
            client_side.recv(cx, |d, from, truncated| {
                if truncated {
                    *dropped += 1;
                    return;
                }
                match assoc.from_client(now, from, d, &opts.rules, &opts.udp, &mut global.window) {
                    FromClient::Send { to, payload } => {
                        let s = batch.len();
                        batch.extend_from_slice(payload);
                        sends.push((to, s, batch.len()));
                    }
                    FromClient::Resolve {
                        host,
                        port,
                        payload,
                    } => {
                        if pending.len() + resolve.len() < opts.udp.max_pending {
                            resolve.push((host.to_string(), port, payload.to_vec()));
                        } else {
                            *dropped += 1;
                        }
                    }
                    FromClient::Dropped(d) => {
                        *dropped += 1;
                        why.get_or_insert(d);
                    }
                }
            })
        } else {
            let Some(r) = remote.iter_mut().flatten().find(|r| r.source() == src) else {
                return Ok(());
            };
            r.recv(cx, |d, from, truncated| {
                if truncated {
                    *dropped += 1;
                    return;
                }
                let s = batch.len();
                match assoc.from_remote(now, from, d, &opts.udp, &mut global.window, batch) {
                    Ok(client) => sends.push((client, s, batch.len())),
                    Err(d) => {
                        *dropped += 1;
                        why.get_or_insert(d);
                    }
                }
            })
        };
        if let Some(d) = why
            && global.log.allow(now).is_some()
        {
            log::debug!("session {}: UDP: dropped {d}", self.peer);
        }
        drop(global);
        if let Err(e) = r {
            log::debug!("session {}: UDP receive failed: {e}", self.peer);
        }
        for (host, port, payload) in resolve {
            let resolver = self.shared.opts.resolver.clone();
            let h = host.clone();
            match cx.offload(move || resolver.resolve(&h, port)) {
                Ok(job) => u.pending.push((job, host, port, payload)),
                Err(_) => u.dropped += 1,
            }
        }
        self.send_batch(cx, src == UDP_CLIENT);
        Ok(())
    }

    /// Sends the datagrams of the association's batch: out to their destinations
    /// (`outward`), or back to the client.
    fn send_batch(&mut self, cx: &mut Context<'_, Self>, outward: bool) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        let UdpSide {
            client_side,
            remote,
            batch,
            sends,
            relayed,
            dropped,
            ..
        } = &mut **u;
        let cfg = UdpConfig::default().max_datagram(self.shared.opts.udp.max_datagram);
        let mut sent = 0;
        for &(to, s, e) in sends.iter() {
            let data = &batch[s..e];
            let conn = if outward {
                let i = usize::from(to.is_ipv6());
                if remote[i].is_none() {
                    // The outside socket of this family, bound on first use.
                    let any: SocketAddr = if i == 1 {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    } else {
                        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                    };
                    match UdpConn::bind(any, &UdpOptions::default(), UDP_REMOTE[i], cfg)
                        .and_then(|mut c| c.register(cx).map(|()| c))
                    {
                        Ok(c) => remote[i] = Some(c),
                        Err(e) => {
                            log::debug!("session {}: UDP: cannot bind {any}: {e}", self.peer);
                            *dropped += 1;
                            continue;
                        }
                    }
                }
                let Some(c) = remote[i].as_mut() else {
                    continue;
                };
                c
            } else {
                &mut *client_side
            };
            match conn.send_to(cx, data, to) {
                Ok(reactor::SendOutcome::Dropped) | Err(_) => *dropped += 1,
                Ok(_) => {
                    *relayed += 1;
                    sent += 1;
                }
            }
        }
        if sent > 0 {
            self.state.udp_activity(cx.now());
        }
    }

    /// The session ends: logs why, and closes.
    fn end(&mut self, cx: &mut Loop<'_>, end: End) {
        let (peer, up, down) = (self.peer, self.pipe.bytes(UP), self.pipe.bytes(DOWN));
        // A side that broke the protocol (a TLS certificate that does not verify, a
        // bad record) is worth a line an operator sees, unlike a reset: at `info`,
        // at most one a second.
        if let Some((side, e)) = self.pipe.failure()
            && e.kind() == io::ErrorKind::InvalidData
        {
            cx.log_peer(format_args!(
                "session {peer}: the {}: {e}; closing",
                side_name(side)
            ));
        }
        match &end {
            End::Finished => match self.pipe.failure() {
                None => log::debug!("session {peer}: finished ({up} bytes up, {down} down)"),
                Some((side, e)) => log::debug!(
                    "session {peer}: the {} failed ({e}); the other side got everything it \
                     had sent ({up} bytes up, {down} down)",
                    side_name(side)
                ),
            },
            End::Idle(d) => log::debug!("session {peer}: idle for {d:?}; closing"),
            End::Delivered => {
                if let Some((side, e)) = self.pipe.failure() {
                    log::debug!(
                        "session {peer}: the {} failed ({e}); the other side has everything \
                         and acknowledged it ({up} bytes up, {down} down); closing",
                        side_name(side)
                    );
                }
            }
            End::LingerTimeout(d) => {
                if let Some((side, e)) = self.pipe.failure() {
                    log::debug!(
                        "session {peer}: the {} failed ({e}); the other side got what it had \
                         sent but did not close within {d:?}; closing",
                        side_name(side)
                    );
                }
            }
            End::Rejected(failure) => self.reject(failure, None),
            End::ClientLeft(e) => log::debug!(
                "session {peer}: the client left while the upstream connect ran: {e}; closing"
            ),
            End::AssociationEnded => {
                if let Some(u) = &self.udp {
                    log::debug!(
                        "session {peer}: UDP association ended with its TCP connection ({} \
                         datagrams relayed, {} dropped)",
                        u.relayed,
                        u.dropped
                    );
                }
            }
            End::RefusalDelivered | End::RefusalTimeout | End::Shutdown | End::NotAdmitted => {}
        }
        cx.close_with(end.close_reason());
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
        self.state.start(cx.now());
        let r = self.run(cx);
        self.guard(cx, r);
        Ok(())
    }

    fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
        let r = self.step(cx, ev);
        self.guard(cx, r);
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if self.timer.is_some_and(|(id, _)| id == t) {
            self.timer = None; // one-shot: it has fired
            self.state.on_timeout(cx.now());
            let r = self.run(cx);
            self.guard(cx, r);
        }
        Ok(())
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        job: JobId,
        result: JobResult<Self::Job>,
    ) -> HandlerResult {
        if let Some(u) = self.udp.as_mut()
            && let Some(i) = u.pending.iter().position(|p| p.0 == job)
        {
            let (_, host, port, payload) = u.pending.swap_remove(i);
            let addrs = match result {
                Ok(Ok(a)) => a,
                _ => Vec::new(),
            };
            match u
                .assoc
                .resolved(cx.now(), &host, port, &addrs, &self.shared.opts.rules)
            {
                Some(to) => {
                    u.sends.clear();
                    u.batch.clear();
                    u.batch.extend_from_slice(&payload);
                    u.sends.push((to, 0, payload.len()));
                    // Out to the destination, through the outside socket of its
                    // family (where its answer comes back and is let through).
                    self.send_batch(cx, true);
                }
                None => {
                    u.dropped += 1;
                    log::debug!(
                        "session {}: UDP datagram to {host}:{port} dropped: no address the \
                         rules allow",
                        self.peer
                    );
                }
            }
            return Ok(());
        }
        if self.job == Some(job) {
            self.job = None;
            let result = result
                .map_err(|e| io::Error::other(e.to_string()))
                .and_then(|r| r);
            self.state
                .resolved(cx.now(), result, &self.shared.opts.rules);
            let r = self.run(cx);
            self.guard(cx, r);
        }
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.state.shutdown();
        let r = self.run(cx);
        self.guard(cx, r);
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: reactor::CloseReason) {
        self.client.release(cx);
        if let Some(up) = self.upstream.as_mut() {
            up.release(cx);
        }
        if self.admitted {
            self.shared
                .release(self.peer.ip(), self.pipe.bytes(UP), self.pipe.bytes(DOWN));
        }
        if self.awaiting_header {
            self.shared.header_done();
        }
        if let Some(mut u) = self.udp.take() {
            self.shared.count_udp(0, u.relayed, u.dropped);
            let mut s = self.shared.udp.borrow_mut();
            s.open = s.open.saturating_sub(1);
            drop(s);
            let _ = u.client_side.deregister(cx);
            for r in u.remote.iter_mut().flatten() {
                let _ = r.deregister(cx);
            }
        }
    }
}
