//! The byte pump between the two connections of a proxied session.
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
//! uploading. That is why a pipe's connections are made with
//! [`Pipe::conn_config`], which turns [`ConnConfig::pause_on_own_queue`] off.
//!
//! It must not decide anything else: connecting, timeouts, limits, logging and
//! closing the session belong to the handler that owns the two [`Conn`]s.
//!
//! The smallest two-socket handler built on it, a forwarder to a fixed address
//! (no connect timeout, idle timeout or limits: see [`super::session::Session`] for
//! those):
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use reactor::proxy::forward::Pipe;
//! use reactor::{Conn, ConnConfig, Context, Event, Handler, HandlerResult, ListenOptions,
//!               Listener, Reactor};
//!
//! struct Forward { client: Conn, upstream: Conn, pipe: Pipe }
//!
//! impl Handler for Forward {
//!     fn on_start(&mut self, cx: &mut Context<'_>) -> HandlerResult {
//!         self.client.register(cx)?;   // source 0
//!         self.upstream.register(cx)?; // source 1
//!         self.client.pause_reading(); // until the upstream is connected
//!         Ok(())
//!     }
//!     fn on_event(&mut self, cx: &mut Context<'_>, ev: Event) -> HandlerResult {
//!         if self.upstream.is_connecting() {
//!             // The client stays paused until then; resuming re-queues its read.
//!             if ev.source() == 1 && self.upstream.poll_connect()? {
//!                 self.client.resume_reading(cx);
//!                 cx.requeue(Event::readable(1));
//!             }
//!             return Ok(());
//!         }
//!         self.pipe.on_event(cx, ev, &mut self.client, &mut self.upstream)?;
//!         if Pipe::is_done(&self.client, &self.upstream) {
//!             cx.close();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let to: SocketAddr = "127.0.0.1:8080".parse().unwrap();
//!     let cfg = Pipe::conn_config(ConnConfig::default());
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

use crate::conn::{Conn, ConnConfig};
use crate::handler::Event;
use crate::reactor::Context;

/// Direction index: bytes read from the client and written to the upstream.
pub const UP: usize = 0;
/// Direction index: bytes read from the upstream and written to the client.
pub const DOWN: usize = 1;

/// Relay state of one session: which directions are shut, bytes moved, and the
/// low watermark at which a paused side resumes.
#[derive(Debug, Clone)]
pub struct Pipe {
    low_watermark: usize,
    shut: [bool; 2],
    bytes: [u64; 2],
}

impl Pipe {
    /// A pipe whose paused side resumes once the other side's write queue is at or
    /// below `low_watermark` bytes (use the connections' `ConnConfig::low_watermark`).
    pub fn new(low_watermark: usize) -> Pipe {
        Pipe {
            low_watermark,
            shut: [false; 2],
            bytes: [0; 2],
        }
    }

    /// `cfg` for the two connections of a pipe: the same limits, with
    /// [`ConnConfig::pause_on_own_queue`] off, because a pipe pauses each side for
    /// the other side's queue and never for its own (see the module docs).
    pub fn conn_config(cfg: ConnConfig) -> ConnConfig {
        ConnConfig {
            pause_on_own_queue: false,
            ..cfg
        }
    }

    /// Bytes moved in direction [`UP`] or [`DOWN`].
    pub fn bytes(&self, dir: usize) -> u64 {
        self.bytes[dir]
    }

    /// Handles one readiness event of either connection. `client` and `upstream` are
    /// told apart by their source numbers. Returns how many bytes this call moved
    /// (for an idle timeout). An `Err` means one side failed (reset, broken pipe):
    /// the session should close.
    pub fn on_event(
        &mut self,
        cx: &mut Context<'_>,
        ev: Event,
        client: &mut Conn,
        upstream: &mut Conn,
    ) -> io::Result<usize> {
        let (this, other, dir) = if ev.source() == client.source() {
            (client, upstream, UP)
        } else {
            (upstream, client, DOWN)
        };
        let mut moved = 0;
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            moved = self.pump(cx, this, other, dir)?;
        }
        if ev.is_writable() || ev.is_write_closed() {
            self.drain(cx, this, other)?;
        }
        Ok(moved)
    }

    /// Reads `from` (unless `to` is congested), queues what was read on `to`, writes
    /// it, and forwards end of file as a write shutdown of `to`.
    pub fn pump(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Conn,
        to: &mut Conn,
        dir: usize,
    ) -> io::Result<usize> {
        // Paused, `fill` reads nothing; a flush of `to` lifts the pause.
        if to.is_congested() {
            from.pause_reading();
        }
        let st = from.fill(cx)?;
        let n = from.read_buf().len();
        if n > 0 {
            from.move_read_buf_to(to);
            self.bytes[dir] += n as u64;
        }
        self.drain(cx, to, from)?;
        if st.eof && !self.shut[dir] && from.read_buf().is_empty() {
            // Half-close travels through: `to` sees end of file after the last byte,
            // and can still answer in the other direction.
            self.shut[dir] = true;
            to.shutdown_write(cx)?;
        }
        Ok(n)
    }

    /// Writes `conn`'s queue, then sets `feeder` (the side whose bytes fill that
    /// queue) by it: paused while the queue is congested, reading again once it is
    /// down to the low watermark. Every flush of a pipe's connection goes through
    /// here: a queue that drains during some other flush makes no writable edge
    /// later, so a pause not lifted now would never be.
    pub fn drain(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        feeder: &mut Conn,
    ) -> io::Result<()> {
        conn.flush(cx)?;
        if conn.is_congested() {
            feeder.pause_reading();
        } else if feeder.is_paused()
            && conn.write_pending() <= self.low_watermark
            && !feeder.is_eof()
        {
            feeder.resume_reading(cx);
        }
        Ok(())
    }

    /// True when both directions are finished: each side sent end of file and the
    /// other side's queue was written and shut down. The session can close.
    pub fn is_done(client: &Conn, upstream: &Conn) -> bool {
        client.is_done() && upstream.is_done()
    }
}
