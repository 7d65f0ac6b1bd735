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

use crate::Event;
use crate::Loop;
use crate::conn::{Conn, ReadStatus};

/// Direction index: bytes read from the client and written to the upstream.
pub const UP: usize = 0;
/// Direction index: bytes read from the upstream and written to the client.
pub const DOWN: usize = 1;

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

    /// Stops forwarding: neither side is read any more, and each side's write side
    /// is shut down once what is queued for it is written (the session is then
    /// [`is_done`](Pipe::is_done)). For a session the handler ends on its own terms
    /// (a limit, a deadline); bytes still unread in the kernel stay there.
    pub fn stop(&mut self, cx: &mut Loop<'_>, client: &mut Conn, upstream: &mut Conn) {
        self.ended = [true; 2];
        self.drain(cx, UP, upstream, client);
        self.drain(cx, DOWN, client, upstream);
    }

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

    /// Bytes moved in direction [`UP`] or [`DOWN`].
    pub fn bytes(&self, dir: usize) -> u64 {
        self.bytes[dir]
    }

    /// The first socket failure, if any: which side ([`UP`] for the client,
    /// [`DOWN`] for the upstream) and its error.
    pub fn failure(&self) -> Option<(usize, &io::Error)> {
        self.failure.as_ref().map(|(side, e)| (*side, e))
    }

    /// Handles one readiness event of either connection. `client` and `upstream` are
    /// told apart by their source numbers. Returns how many bytes this call moved,
    /// read from either side or taken from a queue by either socket (for an idle
    /// timeout: a slow reader draining a queue, while the other side is paused, is
    /// not idle).
    ///
    /// A socket error (a reset, a broken pipe) is not returned: it ends that side
    /// only. Nothing more is written to the failed side, but what the proxy already
    /// holds for the *other* side (and what the failed side's kernel received
    /// before the failure) is still delivered to it, followed by a write shutdown;
    /// that side's further input has nowhere to go and is read and dropped. Ask
    /// [`is_done`](Pipe::is_done) and [`is_lingering`](Pipe::is_lingering) what to do.
    pub fn on_event(
        &mut self,
        cx: &mut Loop<'_>,
        ev: Event,
        client: &mut Conn,
        upstream: &mut Conn,
    ) -> usize {
        let (d, this, other) = if ev.source() == client.source() {
            (UP, client, upstream)
        } else {
            (DOWN, upstream, client)
        };
        let queued = this.write_pending() + other.write_pending();
        let mut read = 0;
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            read = self.pump(cx, d, this, other);
        }
        if ev.is_error() && !self.failed[d] {
            // A reset that reading did not report (this side's input had ended, or
            // it is paused): the socket is gone. Take its error now, not at some
            // later write, so the other side is finished promptly.
            match this.stream().take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => self.fail(cx, d, this, other, e),
            }
        }
        if ev.is_writable() || ev.is_write_closed() {
            self.drain(cx, 1 - d, this, other);
        }
        // What was read went into the queues (or was dropped, and not counted):
        // whatever the queues are short of that was written.
        let written = (queued + read).saturating_sub(this.write_pending() + other.write_pending());
        read + written
    }

    /// Direction `d`: reads `from` (unless `to` is congested), queues what was read
    /// on `to` and writes it (see [`drain`](Pipe::drain)). Into a failed `to`, what
    /// is read is dropped.
    fn pump(&mut self, cx: &mut Loop<'_>, d: usize, from: &mut Conn, to: &mut Conn) -> usize {
        let mut moved = 0;
        if !self.ended[d] {
            if self.failed[1 - d] {
                // Nobody to deliver to: read and drop (see `Conn::discard_input`).
                let r = from.discard_input(cx);
                self.end_input(cx, d, from, to, r);
                return 0;
            }
            // Paused, `fill` reads nothing; `drain` of `to` lifts the pause.
            if to.is_congested() {
                from.pause_reading();
            }
            let r = from.fill(cx);
            // Bytes read before an error are delivered like any others.
            moved = from.read_buf().len();
            let left = match self.limit {
                0 => u64::MAX,
                limit => limit - self.bytes[d], // never above the limit
            };
            if moved as u64 > left {
                // `left < moved`, so it fits a usize. The one copy of a capped
                // session, made once.
                let fits = left as usize;
                to.queue(cx, &from.read_buf()[..fits]);
                from.consume(moved);
                moved = fits;
                self.bytes[d] += left;
                self.ended[d] = true;
                self.over.get_or_insert(d);
            } else if moved > 0 {
                from.move_read_buf_to(to);
                self.bytes[d] += moved as u64;
            }
            self.end_input(cx, d, from, to, r);
        }
        self.drain(cx, d, to, from);
        moved
    }

    /// Notes the end of direction `d`'s input: an end of file, or a read error
    /// (which also fails `from`).
    fn end_input(
        &mut self,
        cx: &mut Loop<'_>,
        d: usize,
        from: &mut Conn,
        to: &mut Conn,
        r: io::Result<ReadStatus>,
    ) {
        match r {
            Ok(st) => self.ended[d] |= st.eof,
            Err(e) => {
                self.ended[d] = true;
                self.fail(cx, d, from, to, e);
            }
        }
    }

    /// Direction `d`: writes `to`'s queue, passes an ended input on as a write
    /// shutdown of `to` (after the queued bytes: `to`'s peer reads them, then end of
    /// file, and can still send the other way), and sets `from` by `to`'s queue:
    /// paused while it is congested, reading again once it is down to the low
    /// watermark. Every flush of a pipe's connection goes through here: a queue that
    /// drains during some other flush makes no writable edge later, so a pause not
    /// lifted now would never be.
    fn drain(&mut self, cx: &mut Loop<'_>, d: usize, to: &mut Conn, from: &mut Conn) {
        let o = 1 - d;
        if self.failed[o] {
            return;
        }
        let r = if self.ended[d] && !self.shut[d] && from.read_buf().is_empty() {
            self.shut[d] = true;
            to.shutdown_write(cx)
        } else {
            to.flush(cx).map(|_| ())
        };
        if let Err(e) = r {
            self.fail(cx, o, to, from, e);
            return;
        }
        if self.ended[d] {
            return;
        }
        if to.is_congested() {
            from.pause_reading();
        } else if from.is_paused() && to.write_pending() <= self.low_watermark {
            from.resume_reading(cx);
        }
    }

    /// Side `s` (`conn`) failed with `e`; `other` is the other side.
    fn fail(
        &mut self,
        cx: &mut Loop<'_>,
        s: usize,
        conn: &mut Conn,
        other: &mut Conn,
        e: io::Error,
    ) {
        if self.failed[s] {
            return;
        }
        self.failed[s] = true;
        if self.failure.is_none() {
            self.failure = Some((s, e));
        }
        // Undeliverable: give the buffer back now.
        conn.clear_write_queue(cx);
        // `other`'s input has nowhere to go any more and is dropped from now on: it
        // must not stay paused for a queue that will never drain.
        other.resume_reading(cx);
        // What `s`'s kernel still holds for `other` is read and delivered; no new
        // edge need come for it. (Paused, it is read once `other` drains.)
        if !self.ended[s] && !conn.is_paused() {
            cx.requeue(Event::readable(conn.source()));
        }
    }

    /// True when the session can close: in each direction the input ended and
    /// everything was delivered and followed by a write shutdown, or the receiver
    /// is gone (or both sides failed).
    pub fn is_done(&self, client: &Conn, upstream: &Conn) -> bool {
        if self.failed == [true, true] {
            return true;
        }
        let to = [upstream, client]; // the receiver of each direction
        (0..2).all(|d| self.ended[d] && (self.failed[1 - d] || to[d].is_write_shut()))
    }

    /// True when a side failed and everything deliverable has been delivered (and
    /// followed by a write shutdown): all that is left is waiting for the healthy
    /// side to close, which it may never do. Bound that wait with a timer.
    pub fn is_lingering(&self, client: &Conn, upstream: &Conn) -> bool {
        let to = [upstream, client];
        (self.failed[UP] || self.failed[DOWN])
            && (0..2).all(|d| self.failed[1 - d] || (self.ended[d] && to[d].is_write_shut()))
    }
}
