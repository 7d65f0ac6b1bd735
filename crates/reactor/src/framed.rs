//! The framed-connection layer: asynchat's role, written once.
//!
//! You implement [`Protocol`]: what to do with each frame (a line, a
//! length-prefixed message, a fixed-size record, or whatever bytes arrived), and
//! optionally when the connection opens, when the peer stops sending, when it has
//! been idle, when a timer, message or job result arrives. [`Framed`] is the
//! handler that drives a [`Conn`] for it: it reads within the read budget, cuts
//! frames with the [`Framing`] it was given, hands each one to
//! [`on_frame`](Protocol::on_frame) while it is still in the read buffer (answer it
//! without copying it first), flushes what you queued, applies backpressure, runs
//! the idle timeout, and ends the conversation. A protocol never touches the
//! socket or calls `fill`/`flush`.
//!
//! ```
//! use reactor::framed::{Framed, Link, Protocol};
//! use reactor::framing::Delimited;
//! use reactor::{HandlerResult, ListenOptions, Listener, Reactor};
//!
//! /// Answers every line in upper case.
//! struct Upper;
//!
//! impl Protocol for Upper {
//!     type Message = ();
//!     type Job = ();
//!     fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
//!         link.out().extend(line.iter().map(u8::to_ascii_uppercase));
//!         link.send(b"\n");
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let mut reactor = Reactor::new()?;
//! let lines = Delimited::new(b"\n", 64 * 1024);
//! let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenOptions::default(),
//!     move |stream, _peer| Some(Framed::new(stream, lines.clone(), Upper)))?;
//! let addr = listener.local_addr();
//! reactor.spawn(listener);
//! # let client = std::thread::spawn(move || {
//! #     use std::io::{Read, Write};
//! #     let mut s = std::net::TcpStream::connect(addr).unwrap();
//! #     s.write_all(b"hello\nworld\n").unwrap();
//! #     s.shutdown(std::net::Shutdown::Write).unwrap();
//! #     let mut got = String::new();
//! #     s.read_to_string(&mut got).unwrap();
//! #     got
//! # });
//! # let handle = reactor.handle();
//! # std::thread::spawn(move || { let got = client.join().unwrap(); handle.stop(); got });
//! reactor.run()
//! # }
//! ```
//!
//! # Ending a conversation
//!
//! There is one way, [`Link::close_when_done`] (asynchat's name; [`Link::close`] is
//! the same): frames still buffered are dropped, what is queued is sent, our side
//! is shut down so the peer reads end of file, and what the peer still sends is
//! read and dropped until it closes its side too, or until the linger timeout
//! ([`FramedConfig::linger`], default 2 s). Only then is the socket closed, so the
//! kernel never resets the connection over unread input and throws our last
//! words away. This is also what happens by default when the peer ends its side
//! ([`Protocol::on_eof`]), when it has been idle ([`Protocol::on_idle`]), when it
//! sends a frame that is too long or malformed ([`Protocol::on_frame_error`]), when
//! a protocol callback returns an error, and when the loop shuts down
//! ([`Protocol::on_shutdown`]). Override those to say something first (an error
//! line, a goodbye), then call `close_when_done`.
//!
//! [`Link::abort`] is the immediate end: queued output is dropped (on purpose, so
//! it is not counted as truncated) and the socket closed. A reset by the peer ends
//! the connection at once as [`CloseReason::PeerReset`]; it is not a failure.
//! Every ending has a [`CloseReason`] that reaches [`Protocol::on_close`] and is
//! counted per reason in [`Stats::closes`](crate::Stats::closes).
//!
//! # Fan-out
//!
//! A [`Group`] sends the same bytes to many connections of one loop (a chat room,
//! a pub/sub topic) without a message per recipient: each member has an
//! [`Outbox`], a byte queue shared with its connection, and a broadcast appends to
//! every outbox and wakes each member once ([`Loop::notify`], no allocation). A
//! member's connection moves its outbox into its write queue when it runs. Each
//! member may hold at most the group's per-member limit of unsent bytes (outbox
//! plus its connection's queue); a broadcast that would pass it drops that
//! member's pending bytes and calls its [`Protocol::on_overflow`] instead (by
//! default: a warning naming the peer with `too slow`, and an abort), so a reader
//! that stalls costs at most the limit, whatever the others send.
//!
//! **Delivery order.** Wake-ups run on the loop's pending list, after the work
//! queued before them, before the next poll. A sender whose read budget ran out
//! re-queued itself *during its read*, before it handled the frames and broadcast,
//! so in the next pass it runs first, reads (up to) one more budget and broadcasts
//! again, and only then do the members it woke run. Between two deliveries a
//! member's outbox can therefore take up to two read budgets' worth from one busy
//! sender: keep the per-member limit above twice the sender's
//! [`ConnConfig::read_budget`] (the chat example reads 64 KiB per event and
//! allows 256 KiB).
//!
//! This module must not know any particular protocol, and must not block: a
//! protocol that needs blocking work offloads it ([`Link::offload`]) and answers
//! from [`Protocol::on_job`].

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use mio::net::TcpStream;
use slab::Slab;

use crate::conn::{Conn, ConnConfig, IdleTimeout, queue_into};
use crate::event::{CloseReason, Error, Event, HandlerId, HandlerResult, is_peer_gone};
use crate::filter::{FilterFactory, StreamFilter};
use crate::framing::{Decoder, FrameError, Framing};
use crate::handler::{Addr, Context, Handler, short_type_name};
use crate::listener::{ListenOptions, Listener};
use crate::pool::{JobId, JobResult, PoolFull};
use crate::reactor::{Loop, classify};
use crate::timer::TimerId;

/// What a framed connection does with its frames: the trait a server author
/// implements. Only [`on_frame`](Protocol::on_frame) is required; every other
/// callback has a default that ends the conversation gracefully where that is the
/// sensible thing to do. See the [module docs](self) for the whole picture.
///
/// A callback that returns an error ends the conversation gracefully too (what it
/// queued is still delivered), with the reason the error says: a
/// [`ProtocolError`](crate::ProtocolError) or [`FrameError`] is the peer's fault and
/// logged at `info` (rate-limited); anything else is logged as a handler failure.
#[allow(unused_variables)]
pub trait Protocol: Sized + 'static {
    /// What other handlers send this connection ([`Link::addr`] is its address);
    /// `()` if none.
    type Message: 'static;
    /// What this protocol's offloaded jobs return ([`Link::offload`]); `()` if none.
    type Job: Send + 'static;

    /// A name for logs and slow-handler warnings. Defaults to the type's name.
    fn name(&self) -> &str {
        short_type_name(std::any::type_name::<Self>())
    }

    /// The connection is open (for an outgoing one: connected). Greet the peer,
    /// join groups.
    fn on_open(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        Ok(())
    }

    /// One frame, as cut by the connection's [`Framing`]. It is borrowed from the
    /// read buffer: answer from it directly ([`Link::send`], [`Link::out`],
    /// `write!(link, ..)`); it is consumed when this returns.
    fn on_frame(&mut self, link: &mut Link<'_, Self>, frame: &[u8]) -> HandlerResult;

    /// The peer has shut down its sending side; `rest` is what it sent after its
    /// last whole frame (usually nothing). We can still send. The default ends
    /// the conversation ([`Link::close_when_done`], as
    /// [`CloseReason::PeerClosed`]), after the replies already queued.
    fn on_eof(&mut self, link: &mut Link<'_, Self>, rest: &[u8]) -> HandlerResult {
        if !rest.is_empty() {
            let peer = link.peer_label();
            link.log_peer(format_args!(
                "{}: {peer}: the peer ended its stream in the middle of a frame ({} bytes \
                 dropped)",
                self.name(),
                rest.len()
            ));
        }
        link.close_when_done();
        Ok(())
    }

    /// The input cannot be framed (a frame is over the limit, or malformed). The
    /// default logs it (rate-limited) and ends the conversation as
    /// [`CloseReason::ProtocolError`]; override it to tell the peer first.
    fn on_frame_error(&mut self, link: &mut Link<'_, Self>, err: FrameError) -> HandlerResult {
        let peer = link.peer_label();
        link.log_peer(format_args!("{}: {peer}: {err}; closing", self.name()));
        link.close_when_done();
        Ok(())
    }

    /// Nothing came from the peer for [`FramedConfig::idle_timeout`] (what we send
    /// does not count). The default ends the conversation as
    /// [`CloseReason::IdleTimeout`].
    fn on_idle(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        link.close_when_done();
        Ok(())
    }

    /// A [`Group`] could not take another broadcast for this connection: its
    /// unsent output would have passed `limit` bytes, so what was pending in its
    /// outbox was dropped. The default logs a warning naming the peer (`too
    /// slow`) and aborts the connection. A protocol that would rather tell the
    /// peer and carry on (with a gap in what it received) returns without
    /// closing; the outbox then takes broadcasts again.
    fn on_overflow(&mut self, link: &mut Link<'_, Self>, limit: usize) -> HandlerResult {
        let peer = link.peer_label();
        link.warn_limited(format_args!(
            "{}: {peer}: too slow: its unsent output would pass {limit} bytes; dropping it",
            self.name()
        ));
        link.abort();
        Ok(())
    }

    /// A timer this protocol set ([`Loop::timer_once`] through the link) fired.
    fn on_timer(&mut self, link: &mut Link<'_, Self>, timer: TimerId) -> HandlerResult {
        Ok(())
    }

    /// A message sent to this connection's [`Addr`].
    fn on_message(&mut self, link: &mut Link<'_, Self>, msg: Self::Message) -> HandlerResult {
        Ok(())
    }

    /// A job offloaded with [`Link::offload`] finished: its value (typed: what the
    /// closure returned), or its panic. [`Link::job`] says which job it was, for a
    /// protocol with several in flight whose results do not say so themselves.
    fn on_job(&mut self, link: &mut Link<'_, Self>, result: JobResult<Self::Job>) -> HandlerResult {
        Ok(())
    }

    /// The loop is shutting down. The default ends the conversation as
    /// [`CloseReason::Shutdown`]; override it to say goodbye first.
    fn on_shutdown(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        link.close_when_done();
        Ok(())
    }

    /// The connection is closed, for `reason`: leave groups, release what it held.
    fn on_close(&mut self, cx: &mut Loop<'_>, reason: CloseReason) {}
}

/// Settings of a framed connection. The default of each is in its doc.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FramedConfig {
    /// The connection's buffers and budgets. Default [`ConnConfig::default`]; its
    /// `max_read_buffer` is raised to the framing's largest frame if that is more.
    pub conn: ConnConfig,
    /// The peer is idle after sending nothing for this long
    /// ([`Protocol::on_idle`]); `None` for no idle timeout. Default 300 s.
    pub idle_timeout: Option<Duration>,
    /// How long an ending conversation waits for the peer to take our last bytes
    /// and close its side, before closing anyway. Default 2 s.
    pub linger: Duration,
    /// The listener's settings, for [`listen`]. Default [`ListenOptions::default`].
    pub listen: ListenOptions,
    /// A connection whose filter (TLS) has not finished its handshake this long
    /// after it opened is closed as [`CloseReason::ProtocolError`]. Default 10 s.
    pub handshake_timeout: Duration,
    /// A filter for every connection [`listen`] accepts (TLS: `reactor-tls`'s
    /// `TlsAcceptor::factory`). Default none.
    pub filter: Option<FilterFactory>,
}

impl Default for FramedConfig {
    fn default() -> FramedConfig {
        FramedConfig {
            conn: ConnConfig::default(),
            idle_timeout: Some(Duration::from_secs(300)),
            linger: Duration::from_secs(2),
            listen: ListenOptions::default(),
            handshake_timeout: Duration::from_secs(10),
            filter: None,
        }
    }
}

impl FramedConfig {
    /// Sets [`FramedConfig::conn`].
    pub fn conn(mut self, conn: ConnConfig) -> FramedConfig {
        self.conn = conn;
        self
    }
    /// Sets [`FramedConfig::idle_timeout`].
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> FramedConfig {
        self.idle_timeout = idle;
        self
    }
    /// Sets [`FramedConfig::linger`].
    pub fn linger(mut self, linger: Duration) -> FramedConfig {
        self.linger = linger;
        self
    }
    /// Sets [`FramedConfig::listen`].
    pub fn listen(mut self, listen: ListenOptions) -> FramedConfig {
        self.listen = listen;
        self
    }
    /// Sets [`FramedConfig::filter`].
    pub fn filter(mut self, f: FilterFactory) -> FramedConfig {
        self.filter = Some(f);
        self
    }
    /// Sets [`FramedConfig::handshake_timeout`].
    pub fn handshake_timeout(mut self, d: Duration) -> FramedConfig {
        self.handshake_timeout = d;
        self
    }
}

/// How a protocol asked the conversation to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Graceful(CloseReason),
    Abort(CloseReason),
}

/// What a protocol can change through its [`Link`]; the driver acts on it after
/// each callback.
struct Control {
    /// Something below changed in the last callback (an ending, a pause, the
    /// framing): one test on the hot path instead of three.
    dirty: bool,
    framing: Framing,
    /// The reason a `close_when_done` in the callback now running would have: the
    /// callback's occasion (idle, end of file, ...) or `Local`.
    occasion: CloseReason,
    ending: Option<Ending>,
    /// `Link::finish_sending`: shut our side down after what is queued.
    half_close: bool,
    pause: Option<bool>,
    outbox: Option<Outbox>,
    peer: Option<SocketAddr>,
    /// The job whose result `on_job` is being given.
    job: Option<JobId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// An outgoing connection that is not connected yet.
    Connecting,
    Open,
    Closing(CloseReason),
}

/// The handler that runs a [`Protocol`] over one TCP connection (see the
/// [module docs](self)). Make one per accepted stream in a
/// [`Listener`]'s factory, or with [`Framed::connect`].
pub struct Framed<P: Protocol> {
    conn: Conn,
    proto: P,
    ctl: Control,
    idle: Option<IdleTimeout>,
    linger_after: Duration,
    linger: Option<TimerId>,
    handshake_after: Duration,
    handshake: Option<TimerId>,
    phase: Phase,
    eof_told: bool,
    /// Reading resumed after a pause: frames read before it may still be in the
    /// buffer, and go to the protocol before anything more is read.
    resumed: bool,
    /// The protocol paused reading ([`Link::pause_reading`]): whole frames may
    /// wait in the buffer, so end of file is not told yet.
    paused: bool,
}

impl<P: Protocol> Framed<P> {
    /// A framed connection over an accepted stream, with the default
    /// [`FramedConfig`].
    pub fn new(stream: TcpStream, framing: impl Into<Framing>, proto: P) -> Framed<P> {
        Framed::with_config(stream, framing, FramedConfig::default(), proto)
    }

    /// A framed connection over an accepted stream.
    pub fn with_config(
        stream: TcpStream,
        framing: impl Into<Framing>,
        cfg: FramedConfig,
        proto: P,
    ) -> Framed<P> {
        let framing = framing.into();
        let conn = Conn::new(stream, 0, Self::conn_config(&cfg, &framing));
        Framed::from_conn(conn, framing, cfg, proto, Phase::Open)
    }

    /// An outgoing framed connection to `addr`: [`Protocol::on_open`] runs once it
    /// is connected; a failed connect closes it as [`CloseReason::PeerReset`].
    pub fn connect(
        addr: SocketAddr,
        framing: impl Into<Framing>,
        cfg: FramedConfig,
        proto: P,
    ) -> std::io::Result<Framed<P>> {
        let framing = framing.into();
        let conn = Conn::connect(addr, 0, Self::conn_config(&cfg, &framing))?;
        Ok(Framed::from_conn(
            conn,
            framing,
            cfg,
            proto,
            Phase::Connecting,
        ))
    }

    fn conn_config(cfg: &FramedConfig, framing: &Framing) -> ConnConfig {
        let mut c = cfg.conn;
        c.max_read_buffer = c.max_read_buffer.max(framing.max_frame());
        c
    }

    fn from_conn(conn: Conn, framing: Framing, cfg: FramedConfig, proto: P, phase: Phase) -> Self {
        Framed {
            conn,
            proto,
            ctl: Control {
                dirty: false,
                framing,
                occasion: CloseReason::Local,
                ending: None,
                half_close: false,
                pause: None,
                outbox: None,
                peer: None,
                job: None,
            },
            idle: cfg.idle_timeout.map(IdleTimeout::new),
            linger_after: cfg.linger,
            linger: None,
            handshake_after: cfg.handshake_timeout,
            handshake: None,
            phase,
            eof_told: false,
            resumed: false,
            paused: false,
        }
    }

    /// A framed connection over a [`Conn`] made by the caller: one with a filter
    /// (TLS: `reactor-tls`), or another [`ConnConfig`]. A connecting `Conn`
    /// ([`Conn::connect`]) opens once connected, as [`Framed::connect`]. The read
    /// buffer is allowed to grow to the framing's largest frame if it is less.
    pub fn with_conn(
        mut conn: Conn,
        framing: impl Into<Framing>,
        cfg: FramedConfig,
        proto: P,
    ) -> Framed<P> {
        let framing = framing.into();
        if framing.max_frame() > conn.config().max_read_buffer {
            conn.set_max_read_buffer(framing.max_frame());
        }
        let phase = if conn.is_connecting() {
            Phase::Connecting
        } else {
            Phase::Open
        };
        Framed::from_conn(conn, framing, cfg, proto, phase)
    }

    /// Arms the handshake timeout if the connection's filter is handshaking.
    fn watch_handshake(&mut self, cx: &mut Context<'_, Self>) {
        if self.conn.is_handshaking() && self.handshake.is_none() {
            self.handshake = Some(cx.timer_once(self.handshake_after));
        }
    }

    /// The protocol.
    pub fn protocol(&self) -> &P {
        &self.proto
    }

    /// Calls `f` with a [`Link`] made for `occasion`, then acts on what the
    /// protocol asked for.
    fn call(
        &mut self,
        cx: &mut Context<'_, Self>,
        occasion: CloseReason,
        f: impl FnOnce(&mut P, &mut Link<'_, P>) -> HandlerResult,
    ) {
        self.ctl.occasion = occasion;
        let (_, wbuf, filter) = self.conn.split_io();
        let mut link = Link {
            lp: cx.reborrow(),
            wbuf,
            filter,
            ctl: &mut self.ctl,
            _proto: std::marker::PhantomData,
        };
        let r = f(&mut self.proto, &mut link);
        let close = link.lp.close_request();
        cx.set_close_request(close);
        self.ctl.occasion = CloseReason::Local;
        if let Err(e) = r {
            self.callback_failed(cx, &e);
        }
        self.apply(cx);
    }

    /// Hands every whole frame in the read buffer to the protocol, until it asks
    /// to end or pause.
    #[inline]
    fn deliver_frames(&mut self, cx: &mut Context<'_, Self>) {
        // `dirty` also stops at a framing change, which is harmless: the next
        // frame is then cut with the new framing after `apply`.
        while !self.ctl.dirty && matches!(self.phase, Phase::Open) {
            let frame = match self.conn.next_frame(&self.ctl.framing) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.call(cx, CloseReason::ProtocolError, |p, link| {
                        p.on_frame_error(link, e)
                    });
                    break;
                }
            };
            let (input, wbuf, filter) = self.conn.split_io();
            let mut link = Link {
                lp: cx.reborrow(),
                wbuf,
                filter,
                ctl: &mut self.ctl,
                _proto: std::marker::PhantomData,
            };
            let r = self
                .proto
                .on_frame(&mut link, &input[frame.start..frame.end]);
            let close = link.lp.close_request();
            cx.set_close_request(close);
            self.conn.consume(frame.consumed);
            if let Err(e) = r {
                self.callback_failed(cx, &e);
            }
        }
        self.apply(cx);
    }

    /// A protocol callback returned `e`: log it as what it is, and end the
    /// conversation gracefully (what was queued before it is still delivered).
    fn callback_failed(&mut self, cx: &mut Context<'_, Self>, e: &Error) {
        let reason = classify(e);
        let peer = self.peer_label();
        match reason {
            CloseReason::ProtocolError => cx.log_peer(format_args!(
                "{}: {peer}: protocol error: {e}; closing",
                self.proto.name()
            )),
            CloseReason::PeerReset => log::debug!("{}: {peer}: {e}; closing", self.proto.name()),
            _ => log::warn!(
                "{} {}: {peer}: failed: {e}; closing the connection",
                self.proto.name(),
                cx.id()
            ),
        }
        if self.ctl.ending.is_none() {
            self.ctl.ending = Some(Ending::Graceful(reason));
            self.ctl.dirty = true;
        }
    }

    /// Acts on what the protocol asked for in its last callback.
    #[inline]
    fn apply(&mut self, cx: &mut Context<'_, Self>) {
        if self.ctl.dirty {
            self.apply_changes(cx);
        }
    }

    #[cold]
    fn apply_changes(&mut self, cx: &mut Context<'_, Self>) {
        self.ctl.dirty = false;
        if let Some(pause) = self.ctl.pause.take() {
            self.paused = pause;
            if pause {
                self.conn.pause_reading();
            } else {
                self.resumed = true;
                self.conn.resume_reading(cx);
            }
        }
        if std::mem::take(&mut self.ctl.half_close)
            && let Err(e) = self.conn.shutdown_write(cx)
        {
            return self.socket_failed(cx, &e);
        }
        match self.ctl.ending.take() {
            None => {}
            Some(Ending::Abort(reason)) => {
                self.conn.clear_write_queue(cx);
                self.close(cx, reason);
            }
            Some(Ending::Graceful(reason)) => self.start_closing(cx, reason),
        }
        let max = self.ctl.framing.max_frame();
        if max > self.conn.config().max_read_buffer {
            self.conn.set_max_read_buffer(max);
        }
    }

    fn start_closing(&mut self, cx: &mut Context<'_, Self>, reason: CloseReason) {
        if matches!(self.phase, Phase::Closing(_)) || cx.is_closing() {
            return;
        }
        self.phase = Phase::Closing(reason);
        if let Some(idle) = self.idle.as_mut() {
            idle.stop(cx);
        }
        self.linger = Some(cx.timer_once(self.linger_after));
        if let Err(e) = self.conn.close_when_done(cx) {
            self.socket_failed(cx, &e);
            return;
        }
        if self.conn.is_done() {
            self.close(cx, reason);
        }
    }

    fn close(&mut self, cx: &mut Context<'_, Self>, reason: CloseReason) {
        if let Some(t) = self.linger.take() {
            cx.cancel_timer(t);
        }
        cx.close_with(reason);
    }

    /// The socket failed: nothing queued can be delivered, so the connection
    /// closes at once, as [`CloseReason::PeerReset`] even if it was ending for
    /// another reason (that ending did not complete).
    fn socket_failed(&mut self, cx: &mut Context<'_, Self>, e: &std::io::Error) {
        let reason = if !is_peer_gone(e) && e.kind() == std::io::ErrorKind::InvalidData {
            CloseReason::ProtocolError
        } else {
            CloseReason::PeerReset
        };
        if reason == CloseReason::ProtocolError {
            let peer = self.peer_label();
            cx.log_peer(format_args!("{}: {peer}: {e}; closing", self.proto.name()));
            // A filter's error (a TLS alert) is worth telling the peer.
            self.conn.send_final(cx);
        } else {
            log::debug!("{}: {}: {e}; closing", self.proto.name(), self.peer_label());
        }
        self.conn.clear_write_queue(cx);
        self.close(cx, reason);
    }

    fn peer_label(&self) -> String {
        self.ctl
            .peer
            .map_or_else(|| "peer".to_string(), |a| a.to_string())
    }

    /// Reading resumed: what the paused protocol left in the buffer comes first. A
    /// buffer full of whole frames would otherwise look like one frame too large,
    /// and reading behind them only grows it. Returns whether to read on (not if
    /// the protocol paused again, or is ending). Out of line: the read path must
    /// stay one inlined piece.
    #[cold]
    #[inline(never)]
    fn deliver_after_pause(&mut self, cx: &mut Context<'_, Self>) -> bool {
        self.resumed = false;
        self.deliver_frames(cx);
        !self.paused && matches!(self.phase, Phase::Open)
    }

    /// Reads, hands frames over, and tells the protocol about end of file.
    #[inline]
    fn read(&mut self, cx: &mut Context<'_, Self>) {
        if self.resumed && !self.deliver_after_pause(cx) {
            return;
        }
        let st = match self.conn.fill(cx) {
            Ok(st) => st,
            Err(e) => return self.socket_failed(cx, &e),
        };
        if !matches!(self.phase, Phase::Open) {
            return; // closing: `fill` read and dropped it
        }
        if st.bytes > 0
            && let Some(idle) = self.idle.as_mut()
        {
            idle.touch(cx);
        }
        self.deliver_frames(cx);
        // A paused protocol may have whole frames still in the buffer: the end of
        // the stream comes after them, when reading resumes.
        if st.eof
            && !self.eof_told
            && matches!(self.phase, Phase::Open)
            && !cx.is_closing()
            && !self.paused
        {
            self.eof_told = true;
            self.ctl.occasion = CloseReason::PeerClosed;
            let (input, wbuf, filter) = self.conn.split_io();
            let mut link = Link {
                lp: cx.reborrow(),
                wbuf,
                filter,
                ctl: &mut self.ctl,
                _proto: std::marker::PhantomData,
            };
            let r = self.proto.on_eof(&mut link, input);
            let close = link.lp.close_request();
            cx.set_close_request(close);
            self.ctl.occasion = CloseReason::Local;
            if let Err(e) = r {
                self.callback_failed(cx, &e);
            }
            self.apply(cx);
        }
    }

    /// Writes what is queued; closes once an ending conversation is done.
    #[inline]
    fn flush(&mut self, cx: &mut Context<'_, Self>) {
        if cx.is_closing() {
            return;
        }
        if let Err(e) = self.conn.flush(cx) {
            return self.socket_failed(cx, &e);
        }
        if let Some(ob) = &self.ctl.outbox {
            ob.set_conn_pending(self.conn.write_pending());
        }
        if let Phase::Closing(reason) = self.phase
            && self.conn.is_done()
        {
            self.close(cx, reason);
        }
    }

    /// An outgoing connection's connect finished (or failed).
    fn connected(&mut self, cx: &mut Context<'_, Self>) -> bool {
        match self.conn.poll_connect() {
            Ok(true) => {
                self.phase = Phase::Open;
                self.ctl.peer = self.conn.peer_addr().ok();
                if let Some(idle) = self.idle.as_mut() {
                    idle.start(cx);
                }
                self.call(cx, CloseReason::Local, |p, link| p.on_open(link));
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.socket_failed(cx, &e);
                false
            }
        }
    }
}

impl<P: Protocol> Handler for Framed<P> {
    type Message = P::Message;
    type Job = P::Job;

    fn name(&self) -> &str {
        self.proto.name()
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.conn.register(cx)?;
        self.watch_handshake(cx);
        if matches!(self.phase, Phase::Connecting) {
            return Ok(());
        }
        self.ctl.peer = self.conn.peer_addr().ok();
        if let Some(idle) = self.idle.as_mut() {
            idle.start(cx);
        }
        self.call(cx, CloseReason::Local, |p, link| p.on_open(link));
        self.flush(cx);
        Ok(())
    }

    #[inline]
    fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
        if matches!(self.phase, Phase::Connecting) && !self.connected(cx) {
            return Ok(());
        }
        if ev.may_read() {
            self.read(cx);
        }
        self.flush(cx);
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if self.handshake == Some(t) {
            self.handshake = None;
            if self.conn.is_handshaking() {
                let (name, peer) = (self.proto.name(), self.peer_label());
                cx.log_peer(format_args!(
                    "{name}: {peer}: handshake not finished within {:?}; closing",
                    self.handshake_after
                ));
                self.conn.clear_write_queue(cx);
                self.close(cx, CloseReason::ProtocolError);
            }
            return Ok(());
        }
        if self.linger == Some(t) {
            self.linger = None;
            if let Phase::Closing(reason) = self.phase {
                log::debug!(
                    "{}: {}: linger timeout ({:?}) with {} bytes unsent; closing",
                    self.proto.name(),
                    self.peer_label(),
                    self.linger_after,
                    self.conn.write_pending()
                );
                cx.close_with(reason);
            }
            return Ok(());
        }
        if let Some(idle) = self.idle.as_mut()
            && idle.expired(cx, t)
        {
            if matches!(self.phase, Phase::Open) {
                self.call(cx, CloseReason::IdleTimeout, |p, link| p.on_idle(link));
            }
        } else {
            self.call(cx, CloseReason::Local, |p, link| p.on_timer(link, t));
        }
        self.flush(cx);
        Ok(())
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self>, msg: P::Message) -> HandlerResult {
        self.call(cx, CloseReason::Local, |p, link| p.on_message(link, msg));
        self.flush(cx);
        Ok(())
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        job: JobId,
        result: JobResult<P::Job>,
    ) -> HandlerResult {
        self.ctl.job = Some(job);
        self.call(cx, CloseReason::Local, |p, link| p.on_job(link, result));
        self.ctl.job = None;
        self.flush(cx);
        Ok(())
    }

    fn on_notify(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let Some(ob) = self.ctl.outbox.clone() else {
            return Ok(());
        };
        if let Some(limit) = ob.deliver(&mut self.conn, cx) {
            self.call(cx, CloseReason::Local, |p, link| p.on_overflow(link, limit));
            ob.reopen();
        }
        self.flush(cx);
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if matches!(self.phase, Phase::Connecting) {
            self.close(cx, CloseReason::Shutdown);
            return Ok(());
        }
        if matches!(self.phase, Phase::Open) {
            self.call(cx, CloseReason::Shutdown, |p, link| p.on_shutdown(link));
        }
        self.flush(cx);
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, reason: CloseReason) {
        self.proto.on_close(cx, reason);
        if let Some(ob) = self.ctl.outbox.take() {
            ob.close(cx);
        }
        self.conn.release(cx);
    }
}

/// Binds a listener on `addr` whose connections each run a protocol made by
/// `make(peer)` (`None` refuses the connection), with the given framing and
/// settings: the usual way to start a framed server.
///
/// ```no_run
/// use reactor::framed::{self, FramedConfig, Link, Protocol};
/// use reactor::framing::Lines;
/// # struct Echo;
/// # impl Protocol for Echo {
/// #     type Message = (); type Job = ();
/// #     fn on_frame(&mut self, l: &mut Link<'_, Self>, f: &[u8]) -> reactor::HandlerResult {
/// #         l.send(f); Ok(()) }
/// # }
/// let mut reactor = reactor::Reactor::new()?;
/// let listener = framed::listen("127.0.0.1:0".parse().unwrap(), Lines::new(1024),
///                               FramedConfig::default(), |_peer| Some(Echo))?;
/// println!("listening on {}", listener.local_addr());
/// reactor.spawn(listener);
/// # Ok::<(), std::io::Error>(())
/// ```
// The factory's type cannot be named (a closure), so the return type spells it out.
#[allow(clippy::type_complexity)]
pub fn listen<P, F>(
    addr: SocketAddr,
    framing: impl Into<Framing>,
    cfg: FramedConfig,
    mut make: F,
) -> std::io::Result<Listener<impl FnMut(TcpStream, SocketAddr) -> Option<Framed<P>> + 'static>>
where
    P: Protocol,
    F: FnMut(SocketAddr) -> Option<P> + 'static,
{
    let framing = framing.into();
    Listener::bind(addr, cfg.listen.clone(), move |stream, peer| {
        let proto = make(peer)?;
        let Some(factory) = &cfg.filter else {
            return Some(Framed::with_config(
                stream,
                framing.clone(),
                cfg.clone(),
                proto,
            ));
        };
        let filter = match factory.make() {
            Ok(f) => f,
            Err(e) => {
                log::warn!("cannot start the filter for {peer}: {e}; refusing it");
                return None;
            }
        };
        let conn_cfg = Framed::<P>::conn_config(&cfg, &framing);
        let conn = Conn::new(stream, 0, conn_cfg).with_filter(filter);
        Some(Framed::with_conn(conn, framing.clone(), cfg.clone(), proto))
    })
}

/// A protocol callback's view of its connection and of the loop: queue bytes,
/// end the conversation, set timers, offload work, message other handlers. It
/// dereferences to [`Loop`] for everything that is not about the connection.
///
/// It implements [`std::fmt::Write`], so `write!(link, "{n} online\n")?` formats
/// straight into the write queue.
pub struct Link<'a, P: Protocol> {
    lp: Loop<'a>,
    wbuf: &'a mut BytesMut,
    filter: Option<&'a dyn StreamFilter>,
    ctl: &'a mut Control,
    _proto: std::marker::PhantomData<fn(&P)>,
}

impl<P: Protocol> Link<'_, P> {
    /// Queues `data` to be sent (asynchat's `push`). Nothing is written before the
    /// callback returns; then as much as the socket takes.
    #[inline(always)]
    pub fn send(&mut self, data: &[u8]) {
        queue_into(self.wbuf, &mut self.lp, data);
    }

    /// The write queue itself, to build a reply in place (`link.out().extend(..)`)
    /// without an intermediate buffer.
    pub fn out(&mut self) -> &mut BytesMut {
        if self.wbuf.capacity() == 0 {
            queue_into(self.wbuf, &mut self.lp, b"");
        }
        self.wbuf
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Ends the conversation gracefully (see the [module docs](self)): frames
    /// still buffered are dropped, what is queued is sent, then end of file; the
    /// peer's further input is read and dropped until it closes or the linger
    /// timeout. The reason is the occasion of the callback (idle timeout, end of
    /// file, frame error, shutdown), or [`CloseReason::Local`].
    pub fn close_when_done(&mut self) {
        let reason = self.ctl.occasion;
        self.ctl.ending.get_or_insert(Ending::Graceful(reason));
        self.ctl.dirty = true;
    }

    /// The same as [`close_when_done`](Link::close_when_done): on a framed
    /// connection a plain close is graceful, never a truncation. (It shadows
    /// [`Loop::close`], which would close the handler at once.)
    pub fn close(&mut self) {
        self.close_when_done();
    }

    /// Ends our side only (a half-close): what is queued is sent, then end of
    /// file (over TLS, `close_notify` first), and frames from the peer keep coming
    /// until it ends its side, which then ends the conversation
    /// ([`Protocol::on_eof`]). For a client that sends its request and reads the
    /// answer to the end.
    pub fn finish_sending(&mut self) {
        self.ctl.half_close = true;
        self.ctl.dirty = true;
    }

    /// Like [`close_when_done`](Link::close_when_done), with the reason given.
    pub fn close_when_done_because(&mut self, reason: CloseReason) {
        self.ctl.ending.get_or_insert(Ending::Graceful(reason));
        self.ctl.dirty = true;
    }

    /// Ends the connection now: queued output is dropped (deliberately, so it is
    /// not counted as a truncation) and the socket closed.
    pub fn abort(&mut self) {
        let reason = self.ctl.occasion;
        self.ctl.ending.get_or_insert(Ending::Abort(reason));
        self.ctl.dirty = true;
    }

    /// True once the conversation is ending (this callback asked for it).
    pub fn is_closing(&self) -> bool {
        self.ctl.ending.is_some() || self.lp.is_closing()
    }

    /// The peer's address (`None` if the socket could not tell, e.g. it is
    /// already gone).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.ctl.peer
    }

    /// The peer's address for a log line (`"peer"` if unknown).
    pub fn peer_label(&self) -> String {
        self.ctl
            .peer
            .map_or_else(|| "peer".to_string(), |a| a.to_string())
    }

    /// The connection's stream filter, if it has one: a protocol that cares
    /// whether it runs over TLS (and which ALPN protocol or server name was chosen)
    /// asks it; `reactor_tls::TlsFilter::of_filter` turns it into the TLS view.
    pub fn filter(&self) -> Option<&dyn StreamFilter> {
        self.filter
    }

    /// The framing in use.
    pub fn framing(&self) -> &Framing {
        &self.ctl.framing
    }

    /// Switches the framing for the frames after this one (asynchat's
    /// `set_terminator`): a handshake of fixed size, then messages.
    pub fn set_framing(&mut self, framing: impl Into<Framing>) {
        self.ctl.framing = framing.into();
        self.ctl.dirty = true;
    }

    /// Stops reading (and delivering frames already buffered) until
    /// [`resume_reading`](Link::resume_reading): for a protocol that waits for a
    /// job before it takes the next request.
    pub fn pause_reading(&mut self) {
        self.ctl.pause = Some(true);
        self.ctl.dirty = true;
    }

    /// Reads and delivers frames again after [`pause_reading`](Link::pause_reading).
    pub fn resume_reading(&mut self) {
        self.ctl.pause = Some(false);
        self.ctl.dirty = true;
    }

    /// In [`Protocol::on_job`]: the id [`offload`](Link::offload) returned for the
    /// job whose result this is; `None` in other callbacks.
    pub fn job(&self) -> Option<JobId> {
        self.ctl.job
    }

    /// This connection's typed address, for other handlers and groups.
    pub fn addr(&self) -> Addr<P::Message> {
        Addr::new(self.lp.id())
    }

    /// Runs blocking `f` on the worker pool; its value comes back to
    /// [`Protocol::on_job`], typed as `P::Job`.
    pub fn offload<F>(&mut self, f: F) -> Result<JobId, PoolFull>
    where
        F: FnOnce() -> P::Job + Send + 'static,
    {
        self.lp.offload_any(f)
    }

    /// This connection's outbox, created on first use: the queue a [`Group`]
    /// appends to (see [`Group::join`]).
    pub fn outbox(&mut self) -> Outbox {
        let id = self.lp.id();
        self.ctl
            .outbox
            .get_or_insert_with(|| Outbox::new(id))
            .clone()
    }
}

impl<'a, P: Protocol> Deref for Link<'a, P> {
    type Target = Loop<'a>;
    fn deref(&self) -> &Loop<'a> {
        &self.lp
    }
}

impl<'a, P: Protocol> DerefMut for Link<'a, P> {
    fn deref_mut(&mut self) -> &mut Loop<'a> {
        &mut self.lp
    }
}

impl<P: Protocol> fmt::Write for Link<'_, P> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.send(s.as_bytes());
        Ok(())
    }
}

/// A byte queue one connection shares with the [`Group`]s it belongs to: a
/// broadcast appends to it and wakes the connection, which moves it into its
/// write queue ([`Outbox::deliver`]; [`Framed`] does that by itself). Cloning
/// shares it.
#[derive(Clone)]
pub struct Outbox(Rc<RefCell<OutboxState>>);

struct OutboxState {
    owner: HandlerId,
    buf: BytesMut,
    /// The owner's write queue as of its last flush: counted against the limit.
    conn_pending: usize,
    /// A push would have passed this limit; pushes are refused until the owner
    /// has been told and reopens.
    overflowed: Option<usize>,
    notified: bool,
    closed: bool,
}

/// What [`Outbox::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued for the owner.
    Queued,
    /// Refused: the owner's unsent output would pass the limit. Its pending bytes
    /// were dropped and it is told once ([`Protocol::on_overflow`]).
    Overflowed,
    /// Refused: the owner has closed.
    Closed,
}

impl Outbox {
    /// An empty outbox delivering to handler `owner`.
    pub fn new(owner: HandlerId) -> Outbox {
        Outbox(Rc::new(RefCell::new(OutboxState {
            owner,
            buf: BytesMut::new(),
            conn_pending: 0,
            overflowed: None,
            notified: false,
            closed: false,
        })))
    }

    /// The handler it delivers to.
    pub fn owner(&self) -> HandlerId {
        self.0.borrow().owner
    }

    /// Bytes waiting for the owner: in the outbox and, as of its last flush, in
    /// its connection's write queue.
    pub fn pending(&self) -> usize {
        let s = self.0.borrow();
        s.buf.len() + s.conn_pending
    }

    /// Appends the concatenation of `parts` for the owner unless its unsent output
    /// would then pass `limit` bytes, and wakes the owner (once until it runs).
    pub fn push(&self, cx: &mut Loop<'_>, parts: &[&[u8]], limit: usize) -> Push {
        let mut s = self.0.borrow_mut();
        if s.closed {
            return Push::Closed;
        }
        if s.overflowed.is_some() {
            return Push::Overflowed;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let pending = s.buf.len() + s.conn_pending;
        if pending.saturating_add(len) > limit {
            s.overflowed = Some(limit);
            let b = std::mem::take(&mut s.buf);
            cx.core().bufs.put(b);
        } else {
            for p in parts {
                queue_into(&mut s.buf, cx, p);
            }
        }
        if !s.notified {
            s.notified = true;
            cx.notify(s.owner);
        }
        if s.overflowed.is_some() {
            Push::Overflowed
        } else {
            Push::Queued
        }
    }

    /// For the owner, when woken: moves what is waiting into `conn`'s write queue
    /// (without copying when that queue is empty). Returns the limit if a push
    /// overflowed since the last call (tell the peer or drop it, then
    /// [`reopen`](Outbox::reopen)).
    pub fn deliver(&self, conn: &mut Conn, cx: &mut Loop<'_>) -> Option<usize> {
        let mut s = self.0.borrow_mut();
        s.notified = false;
        if !s.buf.is_empty() {
            if conn.write_pending() == 0 {
                let b = std::mem::take(&mut s.buf);
                conn.replace_write_queue(cx, b);
            } else {
                conn.queue(cx, &s.buf);
                let b = std::mem::take(&mut s.buf);
                cx.core().bufs.put(b);
            }
        }
        s.conn_pending = conn.write_pending();
        s.overflowed
    }

    /// For an owner that is not a [`Conn`]'s handler: takes what is waiting, as
    /// [`deliver`](Outbox::deliver) does (an overflow since the last call is left
    /// for [`overflowed`](Outbox::overflowed)).
    pub fn take(&self) -> BytesMut {
        let mut s = self.0.borrow_mut();
        s.notified = false;
        std::mem::take(&mut s.buf)
    }

    /// The limit a push would have passed since the last [`reopen`](Outbox::reopen),
    /// if one did.
    pub fn overflowed(&self) -> Option<usize> {
        self.0.borrow().overflowed
    }

    /// Takes pushes again after an overflow was handled.
    pub fn reopen(&self) {
        self.0.borrow_mut().overflowed = None;
    }

    /// Records the owner's write queue length (after a flush), which counts
    /// against the limit.
    pub fn set_conn_pending(&self, n: usize) {
        self.0.borrow_mut().conn_pending = n;
    }

    /// The owner has closed: pushes are refused and groups forget it.
    pub fn close(&self, cx: &mut Loop<'_>) {
        let mut s = self.0.borrow_mut();
        s.closed = true;
        let b = std::mem::take(&mut s.buf);
        cx.core().bufs.put(b);
    }

    /// True once [`close`](Outbox::close) was called.
    pub fn is_closed(&self) -> bool {
        self.0.borrow().closed
    }
}

/// A member of a [`Group`], to [`leave`](Group::leave) it or
/// [`send_to`](Group::send_to) it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemberId {
    index: usize,
    owner: HandlerId,
}

impl MemberId {
    /// The member's handler.
    pub fn owner(&self) -> HandlerId {
        self.owner
    }
}

/// Connections of one loop that receive the same bytes (see the
/// [module docs](self)): join, leave, broadcast to all but the sender, with a
/// per-member limit on unsent bytes. Cloning shares the group.
///
/// ```
/// use reactor::framed::Group;
/// let room = Group::new(256 * 1024);
/// assert!(room.is_empty());
/// ```
#[derive(Clone)]
pub struct Group(Rc<RefCell<GroupState>>);

struct GroupState {
    members: Slab<Outbox>,
    limit: usize,
}

impl Group {
    /// An empty group whose members may each have at most `member_limit` bytes
    /// unsent.
    pub fn new(member_limit: usize) -> Group {
        Group(Rc::new(RefCell::new(GroupState {
            members: Slab::new(),
            limit: member_limit,
        })))
    }

    /// The per-member limit.
    pub fn limit(&self) -> usize {
        self.0.borrow().limit
    }

    /// Adds the connection of `link`.
    pub fn join<P: Protocol>(&self, link: &mut Link<'_, P>) -> MemberId {
        self.join_outbox(link.outbox())
    }

    /// Adds the owner of `outbox` (for a handler that is not a [`Framed`]).
    pub fn join_outbox(&self, outbox: Outbox) -> MemberId {
        let owner = outbox.owner();
        let index = self.0.borrow_mut().members.insert(outbox);
        MemberId { index, owner }
    }

    /// Removes a member (a no-op if it is gone already).
    pub fn leave(&self, m: MemberId) {
        let mut g = self.0.borrow_mut();
        if g.members.get(m.index).is_some_and(|o| o.owner() == m.owner) {
            g.members.remove(m.index);
        }
    }

    /// Members. A member whose connection closed has left (it need not call
    /// [`leave`](Group::leave)); this forgets such members, so it is O(members).
    pub fn len(&self) -> usize {
        let mut g = self.0.borrow_mut();
        g.members.retain(|_, ob| !ob.is_closed());
        g.members.len()
    }

    /// True when nobody is in the group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends the concatenation of `parts` to every member but the handler calling
    /// (`cx.id()`: a broadcast comes from a member's own callback), and returns to
    /// how many it was queued. A member over the limit is told instead
    /// ([`Protocol::on_overflow`]).
    pub fn broadcast(&self, cx: &mut Loop<'_>, parts: &[&[u8]]) -> usize {
        let sender = cx.id();
        self.push_all(cx, Some(sender), parts)
    }

    /// Like [`broadcast`](Group::broadcast), to every member, the caller included.
    pub fn send_all(&self, cx: &mut Loop<'_>, parts: &[&[u8]]) -> usize {
        self.push_all(cx, None, parts)
    }

    fn push_all(&self, cx: &mut Loop<'_>, except: Option<HandlerId>, parts: &[&[u8]]) -> usize {
        let mut g = self.0.borrow_mut();
        let limit = g.limit;
        let mut sent = 0;
        g.members.retain(|_, ob| {
            if except == Some(ob.owner()) {
                return true;
            }
            match ob.push(cx, parts, limit) {
                Push::Queued => sent += 1,
                Push::Overflowed => {}
                Push::Closed => return false,
            }
            true
        });
        sent
    }

    /// Sends the concatenation of `parts` to one member; false if it is gone or
    /// over the limit.
    pub fn send_to(&self, cx: &mut Loop<'_>, m: MemberId, parts: &[&[u8]]) -> bool {
        let g = self.0.borrow();
        match g.members.get(m.index) {
            Some(ob) if ob.owner() == m.owner => ob.push(cx, parts, g.limit) == Push::Queued,
            _ => false,
        }
    }
}
