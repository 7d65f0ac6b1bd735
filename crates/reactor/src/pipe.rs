//! The byte pump between two connections: a proxied session, a relay's circuit.
//!
//! [`Pipe`] is the part of a two-socket handler that every proxy variant shares once
//! both sides are connected: it moves bytes from each side's read buffer to the
//! other side's write queue (swapping buffers, no copy, when the queue is empty),
//! carries a half-close across (end of file from one side becomes a write shutdown of
//! the other, after the queued bytes), and applies backpressure: while one side's
//! write queue is above its high watermark, the other side is not read, and reading
//! resumes when that queue drains to the low watermark. The two directions are
//! independent, as over a direct TCP connection: a side is never paused for its
//! *own* queue, so a client that uploads while not yet reading its download keeps
//! uploading. That is why [`Pipe::start`] turns [`ConnConfig::pause_on_own_queue`](crate::conn::ConnConfig::pause_on_own_queue)
//! off on the two connections it is given.
//!
//! A socket error ends one side, not the session: nothing more is written to the
//! failed side, but everything already read from it, and what its kernel still
//! holds, reaches the other side, followed by end of file (see
//! [`Pipe::on_event`]).
//!
//! A pipe may also cap the bytes of each direction ([`Pipe::with_limit`]): a cap
//! has to be applied where the bytes are read, so it lives here, but what to do
//! once a direction reaches it (stop everything with [`Pipe::stop`], say) is the
//! handler's call. The relay's circuits (`reactor-relay`'s `Bridge`) use that.
//!
//! # Sans-IO
//!
//! The pipe performs no I/O of its own. Its decisions (read this side, forward that
//! many bytes, flush or shut down the other side, pause, resume, drop a failed
//! side's queue, read a side again) are *actions* it asks of a [`PipeIo`], and what
//! it observes (bytes read, end of file, queue lengths, errors) comes back as their
//! results. So the same state machine runs over two [`Conn`]s on the loop (the
//! adapters [`Pipe::on_event`], [`Pipe::start`], [`Pipe::stop`],
//! [`Pipe::is_done`], [`Pipe::is_lingering`], which build the `PipeIo` of two
//! connections) and over two sides held in memory by a unit test, which drives
//! backpressure, half-close and failures deterministically, without a socket
//! ([`Pipe::handle`], [`Pipe::stop_with`], [`Pipe::status`]). Every action has an
//! immediate result, which is why the boundary is a trait of calls rather than a
//! list of actions handed back: the pump's next step depends on each result.
//!
//! It must not decide anything else: connecting, timeouts, limits, logging and
//! closing the session belong to the handler that owns the two [`Conn`]s.
//!
//! The smallest two-socket handler built on it, a forwarder to a fixed address
//! (no connect timeout, idle timeout or limits: see `reactor-proxy`'s `Session` for
//! those):
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use reactor::pipe::Pipe;
//! use reactor::{Conn, ConnConfig, Context, Event, Handler, HandlerResult, ListenOptions,
//!               Listener, Reactor};
//!
//! struct Forward { client: Conn, upstream: Conn, pipe: Pipe }
//!
//! impl Handler for Forward {
//!     type Message = ();
//!     type Job = ();
//!     fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
//!         self.client.register(cx)?;   // source 0
//!         self.upstream.register(cx)?; // source 1
//!         self.client.pause_reading(); // until the upstream is connected
//!         Ok(())
//!     }
//!     fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
//!         if self.upstream.is_connecting() {
//!             // The client stays paused until then; resuming re-queues its read.
//!             if ev.source() == 1 && self.upstream.poll_connect()? {
//!                 self.pipe.start(cx, &mut self.client, &mut self.upstream);
//!                 self.client.resume_reading(cx);
//!                 cx.requeue(Event::readable(1));
//!             }
//!             return Ok(());
//!         }
//!         self.pipe.on_event(cx, ev, &mut self.client, &mut self.upstream);
//!         // A failed side ends the session once the other side has everything;
//!         // a real handler also bounds `is_lingering` with a timer.
//!         if self.pipe.is_done(&self.client, &self.upstream) {
//!             cx.close();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let to: SocketAddr = "127.0.0.1:8080".parse().unwrap();
//!     let cfg = ConnConfig::default();
//!     let mut r = Reactor::new()?;
//!     let l = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenOptions::default(),
//!         move |stream, _peer| Some(Forward {
//!             client: Conn::new(stream, 0, cfg),
//!             upstream: Conn::connect(to, 1, cfg).ok()?, // refused at once: drop client
//!             pipe: Pipe::new(cfg.low_watermark),
//!         }))?;
//!     println!("listening on {}", l.local_addr());
//!     r.spawn(l);
//!     r.run()
//! }
//! ```

use std::io;
use std::time::Duration;

use crate::Event;
use crate::Loop;
use crate::conn::Conn;

/// Direction index: bytes read from the client and written to the upstream.
pub const UP: usize = 0;
/// Direction index: bytes read from the upstream and written to the client.
pub const DOWN: usize = 1;

/// What a readiness event says about one side, as the pipe needs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Something to read: data, end of file, or an error a read reports.
    pub read: bool,
    /// Room to write (or our write side is closed: a write reports why).
    pub write: bool,
    /// The socket has a pending error.
    pub error: bool,
}

impl Readiness {
    /// The readiness of a loop [`Event`].
    #[inline]
    pub fn of(ev: Event) -> Readiness {
        Readiness {
            read: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            write: ev.is_writable() || ev.is_write_closed(),
            error: ev.is_error(),
        }
    }
}

/// Where a pipe is: still carrying bytes, lingering after a failure, or done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeStatus {
    /// Bytes may still flow.
    Open,
    /// A side failed and everything deliverable was delivered (and followed by a
    /// write shutdown): all that is left is waiting for the healthy side to close,
    /// which it may never do. The handler bounds that wait with a timer.
    Lingering,
    /// In each direction the input ended and everything was delivered and followed
    /// by a write shutdown, or the receiver is gone: the session can close.
    Done,
}

/// The two sides of a pipe as the pipe sees them: the actions it takes and what it
/// observes, side by side number ([`UP`] is the client, [`DOWN`] the upstream).
///
/// The adapters implement it over two [`Conn`]s on the loop; a test implements it
/// over sides held in memory. Every action's result is the pipe's next input.
pub trait PipeIo {
    /// Reads what `side`'s socket holds into its read buffer (unless that side is
    /// paused); `Ok(true)` once its input has ended (end of file).
    fn read(&mut self, side: usize) -> io::Result<bool>;
    /// Bytes in `side`'s read buffer.
    fn buffered(&self, side: usize) -> usize;
    /// Moves the first `n` bytes of `from`'s read buffer to the other side's write
    /// queue, and drops the rest of that buffer.
    fn forward(&mut self, from: usize, n: usize);
    /// Reads what `side`'s socket holds and drops it (its input has nowhere to
    /// go); `Ok(true)` once its input has ended.
    fn discard(&mut self, side: usize) -> io::Result<bool>;
    /// Writes what the socket accepts of `side`'s queue.
    fn flush(&mut self, side: usize) -> io::Result<()>;
    /// Shuts `side`'s write side down once its queue is written (flushing now).
    fn shutdown(&mut self, side: usize) -> io::Result<()>;
    /// Bytes in `side`'s write queue.
    fn queued(&self, side: usize) -> usize;
    /// True while `side`'s write queue is at or above its high watermark.
    fn is_congested(&self, side: usize) -> bool;
    /// Stops reading `side` (its input stays in the kernel).
    fn pause(&mut self, side: usize);
    /// Lifts [`pause`](PipeIo::pause) and reads `side` again soon (what arrived
    /// while paused made no new readiness event).
    fn resume(&mut self, side: usize);
    /// True while `side` is paused.
    fn is_paused(&self, side: usize) -> bool;
    /// Drops `side`'s write queue: it failed, nothing more can be delivered to it.
    fn clear_queue(&mut self, side: usize);
    /// Reads `side` again soon, without a new readiness event.
    fn read_again(&mut self, side: usize);
    /// Takes `side`'s pending socket error, if it has one.
    fn take_error(&mut self, side: usize) -> Option<io::Error>;
    /// True once `side`'s write side has been shut down.
    fn is_write_shut(&self, side: usize) -> bool;
    /// Bytes sent to `side`'s peer that it has not acknowledged yet, end of file
    /// included ([`Conn::unacked`]).
    fn unacked(&self, side: usize) -> io::Result<usize>;
}

/// The first wait before asking again whether a lingering side has acknowledged
/// everything ([`AckPoll`]).
pub const ACK_POLL_FIRST: Duration = Duration::from_millis(5);
/// The longest wait between two such questions.
pub const ACK_POLL_MAX: Duration = Duration::from_millis(200);

/// When to ask the kernel again whether a lingering side has acknowledged
/// everything ([`Pipe::is_delivered`]): an acknowledgement makes no readiness
/// event, so the handler asks on a timer, first after [`ACK_POLL_FIRST`], then
/// twice as long each time up to [`ACK_POLL_MAX`]. A peer that takes its last bytes
/// at once is let go within milliseconds; one that does not costs one system call
/// per [`ACK_POLL_MAX`] until the linger timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckPoll {
    next: Duration,
}

impl Default for AckPoll {
    fn default() -> AckPoll {
        AckPoll {
            next: ACK_POLL_FIRST,
        }
    }
}

impl AckPoll {
    /// The wait before the next question (and doubles the one after it).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(ACK_POLL_MAX);
        d
    }
}

/// Relay state of one session: per direction, whether its input has ended and that
/// end was passed on; per side, whether its socket failed; bytes moved; the first
/// failure, for the log.
///
/// Sides are numbered like the direction they feed: [`UP`] is the client, [`DOWN`]
/// the upstream.
#[derive(Debug)]
pub struct Pipe {
    low_watermark: usize,
    /// Per direction: no more input will come (end of file, or a read error).
    ended: [bool; 2],
    /// Per direction: the end of input was passed on (the receiver's write side is
    /// shut down once its queue is written).
    shut: [bool; 2],
    /// Per side: an I/O error on its socket. Nothing more is written to it; what its
    /// kernel still holds for the other side is read and delivered.
    failed: [bool; 2],
    bytes: [u64; 2],
    failure: Option<(usize, io::Error)>,
    /// Bytes each direction may carry; 0 is no limit.
    limit: u64,
    /// The first direction that had more to carry than `limit`.
    over: Option<usize>,
}

impl Pipe {
    /// A pipe whose paused side resumes once the other side's write queue is at or
    /// below `low_watermark` bytes (use the connections' `ConnConfig::low_watermark`).
    pub fn new(low_watermark: usize) -> Pipe {
        Pipe::with_limit(low_watermark, 0)
    }

    /// [`Pipe::new`], carrying at most `max_bytes_per_direction` bytes each way (0:
    /// no limit). A direction that has more to carry forwards exactly up to the
    /// limit, drops the rest of what it read, and ends there as if its sender had
    /// half-closed: the receiver gets the limit's worth and then end of file, and
    /// that sender is not read any more. The other direction carries on;
    /// [`over_limit`](Pipe::over_limit) tells the handler, which usually
    /// [`stop`](Pipe::stop)s it too.
    pub fn with_limit(low_watermark: usize, max_bytes_per_direction: u64) -> Pipe {
        Pipe {
            low_watermark,
            ended: [false; 2],
            shut: [false; 2],
            failed: [false; 2],
            bytes: [0; 2],
            failure: None,
            limit: max_bytes_per_direction,
            over: None,
        }
    }

    /// The byte limit per direction of [`Pipe::with_limit`] (0: none).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The first direction ([`UP`] or [`DOWN`]) that had more bytes than the limit
    /// of [`Pipe::with_limit`], if any.
    pub fn over_limit(&self) -> Option<usize> {
        self.over
    }

    /// Bytes moved in direction [`UP`] or [`DOWN`].
    pub fn bytes(&self, dir: usize) -> u64 {
        self.bytes[dir]
    }

    /// The first socket failure, if any: which side ([`UP`] for the client,
    /// [`DOWN`] for the upstream) and its error.
    pub fn failure(&self) -> Option<(usize, &io::Error)> {
        self.failure.as_ref().map(|(side, e)| (*side, e))
    }

    /// True if `side` ([`UP`] or [`DOWN`]) failed.
    pub fn has_failed(&self, side: usize) -> bool {
        self.failed[side]
    }

    // ------------------------------------------------------------ the state machine

    /// Handles readiness `r` of side `s` ([`UP`] or [`DOWN`]) through `io`. Returns
    /// how many bytes this call moved, read from either side or taken from a queue
    /// by either side's socket (for an idle timeout: a slow reader draining a
    /// queue, while the other side is paused, is not idle).
    ///
    /// A socket error (a reset, a broken pipe) is not returned: it ends that side
    /// only. Nothing more is written to the failed side, but what the pipe already
    /// holds for the *other* side (and what the failed side's kernel received
    /// before the failure) is still delivered to it, followed by a write shutdown;
    /// that side's further input has nowhere to go and is read and dropped. Ask
    /// [`status`](Pipe::status) what to do.
    #[inline]
    pub fn handle(&mut self, io: &mut impl PipeIo, s: usize, r: Readiness) -> usize {
        // Specialised per side, so that every choice of a side below is a constant
        // (measured: choosing the side at run time in every call cost the
        // forwarder about a tenth of its instructions per message).
        if s == UP {
            self.handle_side::<UP, DOWN>(io, r)
        } else {
            self.handle_side::<DOWN, UP>(io, r)
        }
    }

    /// [`handle`](Pipe::handle) for side `S`, whose other side is `O`.
    #[inline(always)]
    fn handle_side<const S: usize, const O: usize>(
        &mut self,
        io: &mut impl PipeIo,
        r: Readiness,
    ) -> usize {
        let queued = io.queued(S) + io.queued(O);
        let mut read = 0;
        if r.read {
            read = self.pump::<S, O>(io);
        }
        if r.error && !self.failed[S] {
            // A reset that reading did not report (this side's input had ended, or
            // it is paused): the socket is gone. Take its error now, not at some
            // later write, so the other side is finished promptly.
            if let Some(e) = io.take_error(S) {
                self.fail::<S, O>(io, e);
            }
        }
        if r.write {
            // Direction `O` feeds side `S`.
            self.drain::<O, S>(io);
        }
        // What was read went into the queues (or was dropped, and not counted):
        // whatever the queues are short of that was written.
        let written = (queued + read).saturating_sub(io.queued(S) + io.queued(O));
        read + written
    }

    /// Stops forwarding through `io`: neither side is read any more, and each
    /// side's write side is shut down once what is queued for it is written (the
    /// pipe is then [`Done`](PipeStatus::Done)). For a session the handler ends on
    /// its own terms (a limit, a deadline); bytes still unread in the kernel stay
    /// there.
    pub fn stop_with(&mut self, io: &mut impl PipeIo) {
        self.ended = [true; 2];
        self.drain::<UP, DOWN>(io);
        self.drain::<DOWN, UP>(io);
    }

    /// Where the pipe is (see [`PipeStatus`]); `write_shut` says, per side, whether
    /// its write side has been shut down ([`PipeIo::is_write_shut`]).
    #[inline]
    pub fn status(&self, write_shut: [bool; 2]) -> PipeStatus {
        // The common case, asked after every event: nothing ended, nothing failed.
        if !(self.ended[UP] | self.ended[DOWN] | self.failed[UP] | self.failed[DOWN]) {
            return PipeStatus::Open;
        }
        if self.failed == [true, true] {
            return PipeStatus::Done;
        }
        // The receiver of direction `d` is side `1 - d`.
        if (0..2).all(|d| self.ended[d] && (self.failed[1 - d] || write_shut[1 - d])) {
            return PipeStatus::Done;
        }
        if (self.failed[UP] || self.failed[DOWN])
            && (0..2).all(|d| self.failed[1 - d] || (self.ended[d] && write_shut[1 - d]))
        {
            return PipeStatus::Lingering;
        }
        PipeStatus::Open
    }

    /// True when the pipe is [lingering](PipeStatus::Lingering) and every healthy
    /// side's peer has acknowledged everything sent to it, end of file included: its
    /// kernel holds all of it, so the session can close at once (even with unread
    /// input, whose reset can no longer destroy anything). The prompt end of a
    /// failed session; the linger timeout stays the upper bound. Ask again on a
    /// timer ([`AckPoll`]): an acknowledgement makes no readiness event.
    pub fn is_delivered_with(&self, io: &impl PipeIo) -> bool {
        let shut = [io.is_write_shut(UP), io.is_write_shut(DOWN)];
        self.status(shut) == PipeStatus::Lingering
            && (0..2).all(|s| self.failed[s] || matches!(io.unacked(s), Ok(0)))
    }

    /// Direction `D`: reads side `D` (unless the receiver `TO` is congested),
    /// queues what was read on the receiver and writes it (see
    /// [`drain`](Pipe::drain)). Into a failed receiver, what is read is dropped.
    #[inline(always)]
    fn pump<const D: usize, const TO: usize>(&mut self, io: &mut impl PipeIo) -> usize {
        let mut moved = 0;
        if !self.ended[D] {
            if self.failed[TO] {
                // Nobody to deliver to: read and drop.
                let r = io.discard(D);
                self.end_input::<D, TO>(io, r);
                return 0;
            }
            // Paused, `read` reads nothing; `drain` of `TO` lifts the pause.
            if io.is_congested(TO) {
                io.pause(D);
            }
            let r = io.read(D);
            // Bytes read before an error are delivered like any others.
            moved = io.buffered(D);
            let left = match self.limit {
                0 => u64::MAX,
                limit => limit - self.bytes[D], // never above the limit
            };
            if moved as u64 > left {
                // `left < moved`, so it fits a usize.
                moved = left as usize;
                io.forward(D, moved);
                self.bytes[D] += left;
                self.ended[D] = true;
                self.over.get_or_insert(D);
            } else if moved > 0 {
                io.forward(D, moved);
                self.bytes[D] += moved as u64;
            }
            self.end_input::<D, TO>(io, r);
        }
        self.drain::<D, TO>(io);
        moved
    }

    /// Notes the end of direction `D`'s input: an end of file, or a read error
    /// (which also fails side `D`).
    #[inline(always)]
    fn end_input<const D: usize, const TO: usize>(
        &mut self,
        io: &mut impl PipeIo,
        r: io::Result<bool>,
    ) {
        match r {
            Ok(eof) => self.ended[D] |= eof,
            Err(e) => {
                self.ended[D] = true;
                self.fail::<D, TO>(io, e);
            }
        }
    }

    /// Direction `D`: writes the receiver `TO`'s queue, passes an ended input on
    /// as a write shutdown of the receiver (after the queued bytes: its peer reads
    /// them, then end of file, and can still send the other way), and sets side
    /// `D` by the receiver's queue: paused while it is congested, reading again
    /// once it is down to the low watermark. Every flush of a pipe's side goes
    /// through here: a queue that drains during some other flush makes no writable
    /// edge later, so a pause not lifted now would never be.
    #[inline]
    fn drain<const D: usize, const TO: usize>(&mut self, io: &mut impl PipeIo) {
        if self.failed[TO] {
            return;
        }
        let r = if self.ended[D] && !self.shut[D] && io.buffered(D) == 0 {
            self.shut[D] = true;
            io.shutdown(TO)
        } else {
            io.flush(TO)
        };
        if let Err(e) = r {
            self.fail::<TO, D>(io, e);
            return;
        }
        if self.ended[D] {
            return;
        }
        if io.is_congested(TO) {
            io.pause(D);
        } else if io.is_paused(D) && io.queued(TO) <= self.low_watermark {
            io.resume(D);
        }
    }

    /// Side `S` (whose other side is `O`) failed with `e`.
    #[cold]
    #[inline(never)]
    fn fail<const S: usize, const O: usize>(&mut self, io: &mut impl PipeIo, e: io::Error) {
        if self.failed[S] {
            return;
        }
        self.failed[S] = true;
        if self.failure.is_none() {
            self.failure = Some((S, e));
        }
        // Undeliverable: give the buffer back now.
        io.clear_queue(S);
        // The other side's input has nowhere to go any more and is dropped from now
        // on: it must not stay paused for a queue that will never drain.
        io.resume(O);
        // What `S`'s kernel still holds for the other side is read and delivered;
        // no new edge need come for it. (Paused, it is read once the other drains.)
        if !self.ended[S] && !io.is_paused(S) {
            io.read_again(S);
        }
    }

    // ------------------------------------------------------ adapters over two Conns

    /// Makes `client` and `upstream` this pipe's two sides: turns
    /// [`ConnConfig::pause_on_own_queue`](crate::conn::ConnConfig::pause_on_own_queue) off on both (lifting a pause it had set),
    /// because a pipe pauses each side for the other side's queue and never for
    /// its own (see the module docs). Call it once, when forwarding starts; the
    /// connections may be made with any `ConnConfig` (a handshake before it, such
    /// as SOCKS5's, runs with their own settings).
    pub fn start(&self, cx: &mut Loop<'_>, client: &mut Conn, upstream: &mut Conn) {
        client.set_pause_on_own_queue(cx, false);
        upstream.set_pause_on_own_queue(cx, false);
    }

    /// Handles one readiness event of either connection ([`Pipe::handle`] over
    /// the two). `client` and `upstream` are told apart by their source numbers.
    /// Returns how many bytes this call moved (see [`Pipe::handle`]).
    ///
    /// A socket error (a reset, a broken pipe) is not returned: it ends that side
    /// only (see [`Pipe::handle`]). Ask [`is_done`](Pipe::is_done) and
    /// [`is_lingering`](Pipe::is_lingering) what to do.
    // Not `#[inline]`: compiled here, the pump over two `Conn`s is specialised in
    // this crate and inlines `Conn`'s own helpers (in a program's crate it cannot).
    pub fn on_event(
        &mut self,
        cx: &mut Loop<'_>,
        ev: Event,
        client: &mut Conn,
        upstream: &mut Conn,
    ) -> usize {
        let s = if ev.source() == client.source() {
            UP
        } else {
            DOWN
        };
        let mut io = Conns {
            cx,
            client,
            upstream,
        };
        self.handle(&mut io, s, Readiness::of(ev))
    }

    /// Stops forwarding ([`Pipe::stop_with`] over the two connections).
    pub fn stop(&mut self, cx: &mut Loop<'_>, client: &mut Conn, upstream: &mut Conn) {
        let mut io = Conns {
            cx,
            client,
            upstream,
        };
        self.stop_with(&mut io);
    }

    /// True when the session can close ([`PipeStatus::Done`]): in each direction
    /// the input ended and everything was delivered and followed by a write
    /// shutdown, or the receiver is gone (or both sides failed).
    pub fn is_done(&self, client: &Conn, upstream: &Conn) -> bool {
        self.status([client.is_write_shut(), upstream.is_write_shut()]) == PipeStatus::Done
    }

    /// [`Pipe::is_delivered_with`] over the two connections: lingering, and the
    /// healthy side's peer has acknowledged everything ([`Conn::unacked`] is 0).
    pub fn is_delivered(&self, client: &Conn, upstream: &Conn) -> bool {
        let sides = [client, upstream];
        self.status([client.is_write_shut(), upstream.is_write_shut()]) == PipeStatus::Lingering
            && (0..2).all(|s| self.failed[s] || matches!(sides[s].unacked(), Ok(0)))
    }

    /// True when a side failed and everything deliverable has been delivered (and
    /// followed by a write shutdown): all that is left is waiting for the healthy
    /// side to close, which it may never do. Bound that wait with a timer.
    pub fn is_lingering(&self, client: &Conn, upstream: &Conn) -> bool {
        let to = [client.is_write_shut(), upstream.is_write_shut()];
        let failed = self.failed[UP] || self.failed[DOWN];
        // As `status`, but also true once done after a failure (the old contract).
        failed && (0..2).all(|d| self.failed[1 - d] || (self.ended[d] && to[1 - d]))
    }
}

/// The [`PipeIo`] of two connections on the loop.
struct Conns<'a, 'l> {
    cx: &'a mut Loop<'l>,
    client: &'a mut Conn,
    upstream: &'a mut Conn,
}

impl<'l> Conns<'_, 'l> {
    /// Side `s` and the loop, borrowed together.
    #[inline(always)]
    fn side(&mut self, s: usize) -> (&mut Conn, &mut Loop<'l>) {
        let c = if s == UP {
            &mut *self.client
        } else {
            &mut *self.upstream
        };
        (c, &mut *self.cx)
    }

    #[inline(always)]
    fn side_ref(&self, s: usize) -> &Conn {
        if s == UP {
            &*self.client
        } else {
            &*self.upstream
        }
    }
}

impl PipeIo for Conns<'_, '_> {
    #[inline(always)]
    fn read(&mut self, side: usize) -> io::Result<bool> {
        let (c, cx) = self.side(side);
        c.fill(cx).map(|st| st.eof)
    }

    #[inline(always)]
    fn buffered(&self, side: usize) -> usize {
        self.side_ref(side).read_buf().len()
    }

    #[inline(always)]
    fn forward(&mut self, from: usize, n: usize) {
        let (f, t) = if from == UP {
            (&mut *self.client, &mut *self.upstream)
        } else {
            (&mut *self.upstream, &mut *self.client)
        };
        if n == f.read_buf().len() {
            f.move_read_buf_to(t);
        } else {
            // The one copy of a capped session, made once.
            t.queue(self.cx, &f.read_buf()[..n]);
            f.consume(usize::MAX);
        }
    }

    fn discard(&mut self, side: usize) -> io::Result<bool> {
        let (c, cx) = self.side(side);
        c.discard_input(cx).map(|st| st.eof)
    }

    #[inline(always)]
    fn flush(&mut self, side: usize) -> io::Result<()> {
        let (c, cx) = self.side(side);
        c.flush(cx).map(|_| ())
    }

    fn shutdown(&mut self, side: usize) -> io::Result<()> {
        let (c, cx) = self.side(side);
        c.shutdown_write(cx)
    }

    #[inline(always)]
    fn queued(&self, side: usize) -> usize {
        self.side_ref(side).write_pending()
    }

    #[inline(always)]
    fn is_congested(&self, side: usize) -> bool {
        self.side_ref(side).is_congested()
    }

    #[inline(always)]
    fn pause(&mut self, side: usize) {
        self.side(side).0.pause_reading();
    }

    #[inline(always)]
    fn resume(&mut self, side: usize) {
        let (c, cx) = self.side(side);
        c.resume_reading(cx);
    }

    #[inline(always)]
    fn is_paused(&self, side: usize) -> bool {
        self.side_ref(side).is_paused()
    }

    fn clear_queue(&mut self, side: usize) {
        let (c, cx) = self.side(side);
        c.clear_write_queue(cx);
    }

    fn read_again(&mut self, side: usize) {
        let src = self.side_ref(side).source();
        self.cx.requeue(Event::readable(src));
    }

    fn take_error(&mut self, side: usize) -> Option<io::Error> {
        match self.side_ref(side).stream().take_error() {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e),
        }
    }

    fn is_write_shut(&self, side: usize) -> bool {
        self.side_ref(side).is_write_shut()
    }

    fn unacked(&self, side: usize) -> io::Result<usize> {
        self.side_ref(side).unacked()
    }
}

/// The pipe driven without sockets: two sides held in memory, each with what its
/// peer sent (the kernel's receive buffer), what the peer's kernel accepts (its
/// window), and what the peer received. Events are given as a poller would give
/// them (a readable edge when the peer sends, a writable one when it reads), and
/// re-queued reads run like the loop's pending list.
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const HIGH: usize = 64;
    const LOW: usize = 16;
    const BUDGET: usize = 32;

    const READ: Readiness = Readiness {
        read: true,
        write: false,
        error: false,
    };
    const WRITE: Readiness = Readiness {
        read: false,
        write: true,
        error: false,
    };
    const RESET: Readiness = Readiness {
        read: true,
        write: true,
        error: true,
    };

    #[derive(Default, Debug)]
    struct Side {
        /// Sent by the peer, held by our kernel, not read yet.
        kernel_in: VecDeque<u8>,
        /// The peer half-closed after `kernel_in`.
        peer_eof: bool,
        /// The peer reset: what it sent before is still readable, then the error
        /// (once; a read after the error was taken sees end of file).
        reset: bool,
        error_pending: bool,
        /// Our writes fail (the peer is gone).
        write_fails: bool,
        rbuf: Vec<u8>,
        wbuf: Vec<u8>,
        /// Bytes the peer's kernel accepts now.
        room: usize,
        /// What the peer received, in order.
        delivered: Vec<u8>,
        shut_requested: bool,
        write_shut: bool,
        /// Our read reached end of file.
        eof: bool,
        paused: bool,
        discarded: usize,
        /// The most the write queue ever held.
        peak_queue: usize,
        /// The peer's kernel does not acknowledge (its window is full).
        no_acks: bool,
    }

    impl Side {
        /// One read of at most the budget (re-queued if more is there), as
        /// `Conn::fill` and `Conn::discard_input` do.
        fn take(&mut self, keep: bool) -> (io::Result<bool>, bool) {
            let n = self.kernel_in.len().min(BUDGET);
            let bytes: Vec<u8> = self.kernel_in.drain(..n).collect();
            if keep {
                self.rbuf.extend_from_slice(&bytes);
            } else {
                self.discarded += n;
            }
            if !self.kernel_in.is_empty() {
                return (Ok(false), true);
            }
            if self.error_pending {
                self.error_pending = false;
                return (Err(io::ErrorKind::ConnectionReset.into()), false);
            }
            if self.peer_eof || self.reset {
                self.eof = true;
            }
            (Ok(self.eof), false)
        }
    }

    #[derive(Default)]
    struct Mem {
        sides: [Side; 2],
        requeued: VecDeque<usize>,
    }

    impl PipeIo for Mem {
        fn read(&mut self, side: usize) -> io::Result<bool> {
            let s = &mut self.sides[side];
            if s.eof || s.paused {
                return Ok(s.eof);
            }
            let (r, again) = s.take(true);
            if again {
                self.requeued.push_back(side);
            }
            r
        }
        fn buffered(&self, side: usize) -> usize {
            self.sides[side].rbuf.len()
        }
        fn forward(&mut self, from: usize, n: usize) {
            let bytes = std::mem::take(&mut self.sides[from].rbuf);
            self.sides[1 - from].wbuf.extend_from_slice(&bytes[..n]);
            let to = &mut self.sides[1 - from];
            to.peak_queue = to.peak_queue.max(to.wbuf.len());
        }
        fn discard(&mut self, side: usize) -> io::Result<bool> {
            let s = &mut self.sides[side];
            s.rbuf.clear();
            if s.eof {
                return Ok(true);
            }
            let (r, again) = s.take(false);
            if again {
                self.requeued.push_back(side);
            }
            r
        }
        fn flush(&mut self, side: usize) -> io::Result<()> {
            let s = &mut self.sides[side];
            if s.wbuf.is_empty() {
                if s.shut_requested {
                    s.write_shut = true;
                }
                return Ok(());
            }
            if s.write_fails {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = s.room.min(s.wbuf.len());
            s.delivered.extend(s.wbuf.drain(..n));
            s.room -= n;
            if s.wbuf.is_empty() && s.shut_requested {
                s.write_shut = true;
            }
            Ok(())
        }
        fn shutdown(&mut self, side: usize) -> io::Result<()> {
            self.sides[side].shut_requested = true;
            self.flush(side)
        }
        fn queued(&self, side: usize) -> usize {
            self.sides[side].wbuf.len()
        }
        fn is_congested(&self, side: usize) -> bool {
            self.sides[side].wbuf.len() >= HIGH
        }
        fn pause(&mut self, side: usize) {
            self.sides[side].paused = true;
        }
        fn resume(&mut self, side: usize) {
            if std::mem::take(&mut self.sides[side].paused) {
                self.requeued.push_back(side);
            }
        }
        fn is_paused(&self, side: usize) -> bool {
            self.sides[side].paused
        }
        fn clear_queue(&mut self, side: usize) {
            self.sides[side].wbuf.clear();
        }
        fn read_again(&mut self, side: usize) {
            self.requeued.push_back(side);
        }
        fn take_error(&mut self, side: usize) -> Option<io::Error> {
            let s = &mut self.sides[side];
            std::mem::take(&mut s.error_pending).then(|| io::ErrorKind::ConnectionReset.into())
        }
        fn is_write_shut(&self, side: usize) -> bool {
            self.sides[side].write_shut
        }
        fn unacked(&self, side: usize) -> io::Result<usize> {
            let s = &self.sides[side];
            Ok(if s.no_acks {
                s.delivered.len() + usize::from(s.write_shut)
            } else {
                0
            })
        }
    }

    /// A pipe and its two sides in memory.
    struct Rig {
        pipe: Pipe,
        io: Mem,
    }

    impl Rig {
        fn new() -> Rig {
            Rig::with(Pipe::new(LOW))
        }

        fn with(pipe: Pipe) -> Rig {
            let mut io = Mem::default();
            for s in &mut io.sides {
                s.room = usize::MAX;
            }
            Rig { pipe, io }
        }

        /// One event of side `s`, then the re-queued reads it caused, to quiet.
        fn ev(&mut self, s: usize, r: Readiness) -> usize {
            let mut moved = self.pipe.handle(&mut self.io, s, r);
            for _ in 0..100_000 {
                let Some(s) = self.io.requeued.pop_front() else {
                    return moved;
                };
                moved += self.pipe.handle(&mut self.io, s, READ);
            }
            panic!("the pipe kept re-queuing reads");
        }

        /// The peer of side `s` sends `bytes` (a readable edge).
        fn send(&mut self, s: usize, bytes: &[u8]) -> usize {
            self.io.sides[s].kernel_in.extend(bytes);
            self.ev(s, READ)
        }

        /// The peer of side `s` half-closes.
        fn fin(&mut self, s: usize) {
            self.io.sides[s].peer_eof = true;
            self.ev(s, READ);
        }

        /// The peer of side `s` accepts `n` more bytes (a writable edge).
        fn window(&mut self, s: usize, n: usize) -> usize {
            let side = &mut self.io.sides[s];
            side.room = side.room.saturating_add(n);
            self.ev(s, WRITE)
        }

        /// The peer of side `s` resets (what it sent before stays readable).
        fn reset(&mut self, s: usize) {
            let side = &mut self.io.sides[s];
            side.reset = true;
            side.error_pending = true;
            side.write_fails = true;
            self.ev(s, RESET);
        }

        fn status(&self) -> PipeStatus {
            self.pipe
                .status([self.io.is_write_shut(UP), self.io.is_write_shut(DOWN)])
        }

        fn side(&self, s: usize) -> &Side {
            &self.io.sides[s]
        }
    }

    fn stream(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn half_close_travels_upstream_first() {
        let mut r = Rig::new();
        assert_eq!(r.send(UP, b"request"), 2 * 7, "read and written");
        assert_eq!(r.side(DOWN).delivered, b"request");
        r.fin(UP);
        // The upstream sees end of file after the request; the way back stays open.
        assert!(r.side(DOWN).write_shut && !r.side(UP).write_shut);
        assert_eq!(r.status(), PipeStatus::Open);
        r.send(DOWN, b"answer after your FIN");
        assert_eq!(r.side(UP).delivered, b"answer after your FIN");
        assert_eq!(r.status(), PipeStatus::Open);
        r.fin(DOWN);
        assert!(r.side(UP).write_shut);
        assert_eq!(r.status(), PipeStatus::Done);
        assert_eq!((r.pipe.bytes(UP), r.pipe.bytes(DOWN)), (7, 21));
    }

    #[test]
    fn half_close_travels_downstream_first() {
        let mut r = Rig::new();
        r.send(DOWN, b"greeting");
        r.fin(DOWN);
        assert_eq!(r.side(UP).delivered, b"greeting");
        assert!(r.side(UP).write_shut && !r.side(DOWN).write_shut);
        r.send(UP, b"still uploading");
        assert_eq!(r.side(DOWN).delivered, b"still uploading");
        assert_eq!(r.status(), PipeStatus::Open);
        r.fin(UP);
        assert_eq!(r.status(), PipeStatus::Done);
    }

    #[test]
    fn a_half_close_waits_for_the_queued_bytes() {
        let mut r = Rig::new();
        r.io.sides[DOWN].room = 3;
        r.send(UP, b"abcdef");
        r.fin(UP);
        // Three bytes are still queued: no shutdown before them.
        assert_eq!(r.side(DOWN).delivered, b"abc");
        assert!(!r.side(DOWN).write_shut);
        r.window(DOWN, 3);
        assert_eq!(r.side(DOWN).delivered, b"abcdef");
        assert!(r.side(DOWN).write_shut);
    }

    /// Direction `d`'s receiver does not read: its sender is paused with at most a
    /// high watermark plus one read budget queued, resumes only once the queue is
    /// down to the low watermark, and every byte arrives in order.
    fn backpressure(d: usize) {
        let to = 1 - d;
        let data = stream(d as u8, 20 * HIGH);
        let mut r = Rig::new();
        r.io.sides[to].room = 0;
        r.send(d, &data);
        assert!(r.side(d).paused, "the sender is paused");
        assert!(r.side(to).wbuf.len() >= HIGH);
        assert!(
            r.side(to).peak_queue <= HIGH + BUDGET,
            "{}",
            r.side(to).peak_queue
        );
        assert!(
            !r.side(d).kernel_in.is_empty(),
            "the rest waits in the kernel"
        );
        // Not resumed above the low watermark...
        let queued = r.side(to).wbuf.len();
        r.window(to, queued - LOW - 1);
        assert!(r.side(d).paused, "resumed above the low watermark");
        // ... and resumed at it: the sender is read again.
        let waiting = r.side(d).kernel_in.len();
        r.window(to, 1);
        assert!(
            r.side(d).kernel_in.len() < waiting,
            "not resumed at the low watermark"
        );
        // The receiver reads everything, a little at a time.
        for _ in 0..10_000 {
            if r.side(to).delivered.len() == data.len() {
                break;
            }
            r.window(to, 7);
            assert!(r.side(to).peak_queue <= HIGH + BUDGET);
        }
        assert_eq!(r.side(to).delivered, data);
        assert_eq!(r.pipe.bytes(d), data.len() as u64);
    }

    #[test]
    fn backpressure_upload() {
        backpressure(UP);
    }

    #[test]
    fn backpressure_download() {
        backpressure(DOWN);
    }

    #[test]
    fn the_directions_are_independent() {
        let mut r = Rig::new();
        // The client does not read its download: the upstream is held back...
        r.io.sides[UP].room = 0;
        r.send(DOWN, &stream(1, 10 * HIGH));
        assert!(r.side(DOWN).paused && !r.side(UP).paused);
        // ...but the client's upload is not: it is never paused for its own queue.
        let up = stream(2, 10 * HIGH);
        r.send(UP, &up);
        assert_eq!(r.side(DOWN).delivered, up);
        assert!(!r.side(UP).paused);
    }

    #[test]
    fn a_slow_reader_draining_its_queue_counts_as_activity() {
        let mut r = Rig::new();
        r.io.sides[UP].room = 0;
        r.send(DOWN, &stream(3, 2 * HIGH));
        // Nothing is read now (the upstream is paused), but the client takes 10.
        assert_eq!(r.window(UP, 10), 10);
    }

    /// Side `s` sends more than a read budget and resets: everything it sent
    /// before the reset reaches the other side, then end of file; what the other
    /// side sends afterwards is read and dropped, until it closes.
    fn failure_keeps_what_was_read(s: usize) {
        let o = 1 - s;
        let data = stream(s as u8, 5 * BUDGET);
        let mut r = Rig::new();
        r.io.sides[s].kernel_in.extend(&data);
        r.reset(s);
        assert!(r.pipe.has_failed(s) && !r.pipe.has_failed(o));
        assert_eq!(
            r.side(o).delivered,
            data,
            "the other side got everything read"
        );
        assert!(r.side(o).write_shut, "then end of file, not a reset");
        assert_eq!(r.status(), PipeStatus::Lingering);
        assert_eq!(r.pipe.failure().map(|(side, _)| side), Some(s));
        // The healthy side's input has nowhere to go: dropped, never left unread.
        r.send(o, &stream(9, 3 * BUDGET));
        assert_eq!(r.side(o).discarded, 3 * BUDGET);
        assert!(r.side(s).delivered.is_empty());
        assert_eq!(r.status(), PipeStatus::Lingering);
        r.fin(o);
        assert_eq!(r.status(), PipeStatus::Done);
    }

    #[test]
    fn upstream_reset_keeps_the_download() {
        failure_keeps_what_was_read(DOWN);
    }

    #[test]
    fn client_reset_keeps_the_upload() {
        failure_keeps_what_was_read(UP);
    }

    /// A reset while the healthy side's queue is full (its peer not reading): the
    /// failed side is read on to its end once the queue drains, and the queued
    /// bytes are not lost.
    #[test]
    fn a_reset_behind_backpressure_still_delivers_everything() {
        let data = stream(5, 12 * HIGH);
        let mut r = Rig::new();
        r.io.sides[UP].room = 0;
        r.send(DOWN, &data);
        assert!(r.side(DOWN).paused);
        r.reset(DOWN);
        // The client now reads: it gets all of it, then end of file.
        for _ in 0..10_000 {
            if r.side(UP).write_shut {
                break;
            }
            r.window(UP, 13);
        }
        assert_eq!(r.side(UP).delivered, data);
        assert_eq!(r.status(), PipeStatus::Lingering);
    }

    /// Writing to side `s` fails (its peer closed and reset our writes): the
    /// download of the other side is kept and finished with end of file.
    fn write_failure_keeps_the_other_direction(s: usize) {
        let o = 1 - s;
        let mut r = Rig::new();
        r.io.sides[o].room = 0; // not reading yet
        let answer = stream(7, 3 * BUDGET);
        r.send(s, &answer);
        r.fin(s);
        r.io.sides[s].write_fails = true;
        r.send(o, b"too late");
        assert!(r.pipe.has_failed(s));
        assert!(
            r.side(s).wbuf.is_empty(),
            "the failed side's queue is dropped"
        );
        r.window(o, usize::MAX);
        assert_eq!(r.side(o).delivered, answer);
        assert!(r.side(o).write_shut);
        assert_eq!(r.status(), PipeStatus::Lingering);
    }

    #[test]
    fn upstream_write_failure_keeps_the_download() {
        write_failure_keeps_the_other_direction(DOWN);
    }

    #[test]
    fn client_write_failure_keeps_the_upload() {
        write_failure_keeps_the_other_direction(UP);
    }

    /// The client was paused because the upstream did not read; the upstream then
    /// fails: the client must not stay paused for a queue that will never drain.
    /// What it sent meanwhile is read and dropped at once, not left unread.
    #[test]
    fn a_failed_receiver_releases_its_paused_sender() {
        let mut r = Rig::new();
        r.io.sides[DOWN].room = 0;
        r.send(UP, &stream(4, 10 * HIGH));
        assert!(r.side(UP).paused);
        r.reset(DOWN);
        assert!(!r.side(UP).paused, "still paused for a dead queue");
        assert!(r.side(UP).kernel_in.is_empty(), "its input was left unread");
        assert!(r.side(UP).write_shut);
        r.fin(UP);
        assert_eq!(r.status(), PipeStatus::Done);
    }

    /// A write to the upstream fails while bytes it sent wait in the kernel with
    /// their edge not handled yet: they are read and delivered without a new one.
    #[test]
    fn a_failed_side_is_read_on_without_a_new_edge() {
        let mut r = Rig::new();
        r.io.sides[DOWN].kernel_in.extend(b"last words");
        r.io.sides[DOWN].write_fails = true;
        r.send(UP, b"request");
        assert!(r.pipe.has_failed(DOWN));
        assert_eq!(r.side(UP).delivered, b"last words");
    }

    #[test]
    fn an_error_event_on_an_ended_side_fails_it_at_once() {
        let mut r = Rig::new();
        r.send(DOWN, b"all of it");
        r.fin(DOWN);
        r.io.sides[DOWN].error_pending = true;
        r.io.sides[DOWN].write_fails = true;
        r.ev(DOWN, RESET);
        assert!(r.pipe.has_failed(DOWN));
        assert_eq!(r.status(), PipeStatus::Lingering);
    }

    /// The prompt end: once the healthy side's peer has acknowledged everything
    /// (and the end of file), the lingering session may close at once.
    #[test]
    fn a_lingering_pipe_is_delivered_once_everything_is_acknowledged() {
        let mut r = Rig::new();
        r.io.sides[UP].no_acks = true;
        r.send(DOWN, b"everything");
        assert!(!r.pipe.is_delivered_with(&r.io), "not lingering yet");
        r.reset(DOWN);
        assert_eq!(r.status(), PipeStatus::Lingering);
        assert!(
            !r.pipe.is_delivered_with(&r.io),
            "the client's kernel has not acked"
        );
        r.io.sides[UP].no_acks = false;
        assert!(r.pipe.is_delivered_with(&r.io));
        // An open pipe is never "delivered", whatever was acknowledged.
        let r = Rig::new();
        assert!(!r.pipe.is_delivered_with(&r.io));
    }

    #[test]
    fn ack_polls_back_off_to_their_cap() {
        let mut p = AckPoll::default();
        let waits: Vec<u64> = (0..8).map(|_| p.next_delay().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 200, 200]);
    }

    #[test]
    fn both_sides_failing_is_done() {
        let mut r = Rig::new();
        r.reset(UP);
        r.reset(DOWN);
        assert_eq!(r.status(), PipeStatus::Done);
    }

    #[test]
    fn the_limit_is_exact_per_direction() {
        let mut r = Rig::with(Pipe::with_limit(LOW, 100));
        r.send(UP, &stream(1, 60));
        assert_eq!(r.pipe.over_limit(), None);
        r.send(UP, &stream(2, 60));
        assert_eq!(r.pipe.over_limit(), Some(UP));
        assert_eq!(r.side(DOWN).delivered.len(), 100);
        assert!(r.side(DOWN).write_shut, "then end of file");
        r.send(UP, b"more");
        assert_eq!(r.side(DOWN).delivered.len(), 100);
        // The other direction is not affected.
        r.send(DOWN, &stream(3, 99));
        assert_eq!(r.side(UP).delivered.len(), 99);
        assert_eq!(r.status(), PipeStatus::Open);
        r.pipe.stop_with(&mut r.io);
        assert_eq!(r.status(), PipeStatus::Done);
    }

    #[test]
    fn stop_shuts_both_sides_after_their_queues() {
        let mut r = Rig::new();
        r.io.sides[UP].room = 2;
        r.send(DOWN, b"queued");
        r.pipe.stop_with(&mut r.io);
        assert!(r.side(DOWN).write_shut && !r.side(UP).write_shut);
        assert_eq!(r.status(), PipeStatus::Open);
        r.window(UP, 10);
        assert_eq!(r.side(UP).delivered, b"queued");
        assert_eq!(r.status(), PipeStatus::Done);
        // Stopped: nothing more is read.
        r.send(UP, b"ignored");
        assert!(r.side(DOWN).delivered.is_empty());
    }
}
