//! Two connections joined into one byte pipe: a relay circuit, or either client
//! end of one (relay connection and local socket).
//!
//! [`Bridge`] is not a handler: the handler that owns both sockets calls
//! [`Bridge::pump`] on every event of either, and the bridge moves what was read
//! on one side to the other's write queue by swapping buffers (no copy, no
//! allocation), reads a side only while the other's queue is empty (so the
//! kernel's socket buffers do the queueing and a slow side holds back a fast
//! one), passes a half-close on, and counts bytes against a [`CircuitBudget`]. It must not parse anything or decide when to close: it
//! reports, the handler acts.

use std::io;

use crate::conn::Conn;
use crate::reactor::Context;

use super::table::{BudgetExceeded, CircuitBudget, CircuitLimits, Direction};

/// What [`Bridge::pump`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Bytes may still flow.
    Open,
    /// Both sides sent end of file and everything was delivered: close.
    Done,
    /// A side sent more than its budget; the bytes up to the limit were queued
    /// and nothing more will be read. Call [`Bridge::shut_down`] and close once
    /// [`Bridge::is_flushed`].
    OverBudget(BudgetExceeded),
}

/// Two connections forwarding to each other. Side `a` is the connector's end
/// (bytes from `a` go [`Direction::ToReserver`]), side `b` the reserver's.
#[derive(Debug)]
pub struct Bridge {
    /// The connector's side.
    pub a: Conn,
    /// The reserver's side.
    pub b: Conn,
    budget: CircuitBudget,
    stopped: bool,
}

impl Bridge {
    /// Joins `a` and `b` (both already registered with the owning handler under
    /// different sources), with `limits.max_bytes_per_direction` as budget.
    pub fn new(a: Conn, b: Conn, limits: &CircuitLimits) -> Bridge {
        Bridge {
            a,
            b,
            budget: CircuitBudget::new(limits),
            stopped: false,
        }
    }

    /// Bytes forwarded so far in `dir`.
    pub fn transferred(&self, dir: Direction) -> u64 {
        self.budget.transferred(dir)
    }

    /// Moves whatever both sides have to offer. Call it for every event of
    /// either connection (and once after setting up, for bytes already
    /// buffered). Errors are socket errors of either side.
    pub fn pump(&mut self, cx: &mut Context<'_>) -> io::Result<Pumped> {
        if self.stopped {
            self.a.flush(cx)?;
            self.b.flush(cx)?;
            return Ok(Pumped::Open);
        }
        if let Err(e) = forward(
            &mut self.a,
            &mut self.b,
            cx,
            &mut self.budget,
            Direction::ToReserver,
        )? {
            self.stopped = true;
            return Ok(Pumped::OverBudget(e));
        }
        if let Err(e) = forward(
            &mut self.b,
            &mut self.a,
            cx,
            &mut self.budget,
            Direction::ToConnector,
        )? {
            self.stopped = true;
            return Ok(Pumped::OverBudget(e));
        }
        if self.a.is_done() && self.b.is_done() {
            return Ok(Pumped::Done);
        }
        Ok(Pumped::Open)
    }

    /// Stops forwarding and half-closes both sides once their queues drain.
    pub fn shut_down(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.stopped = true;
        self.a.shutdown_write(cx)?;
        self.b.shutdown_write(cx)
    }

    /// True when nothing waits to be written on either side.
    pub fn is_flushed(&self) -> bool {
        self.a.write_pending() == 0 && self.b.write_pending() == 0
    }

    /// Gives both connections' buffers back to the loop's pool.
    pub fn release(&mut self, cx: &mut Context<'_>) {
        self.a.release(cx);
        self.b.release(cx);
    }
}

/// Moves bytes from `src` to `dst`. The outer error is a socket error; the
/// inner one means `src` went over its budget (what fits was queued).
///
/// At most one read buffer is in flight per direction: `src` is read only
/// when `dst`'s queue is empty, so the buffer is handed over by swapping (no
/// copy, no growth, no allocation) and goes back to the loop's pool once
/// written. The kernel's socket buffers do the queueing; a `dst` that cannot
/// take more leaves the bytes in `src`'s socket, which is the backpressure.
fn forward(
    src: &mut Conn,
    dst: &mut Conn,
    cx: &mut Context<'_>,
    budget: &mut CircuitBudget,
    dir: Direction,
) -> io::Result<Result<(), BudgetExceeded>> {
    dst.flush(cx)?;
    if dst.write_pending() > 0 {
        // Its writable edge (or requeued write) pumps again once it drains.
        return Ok(Ok(()));
    }
    let st = src.fill(cx)?;
    let n = src.read_buf().len();
    if n > 0 {
        match budget.remaining(dir) {
            Some(left) if n as u64 > left => {
                let left = left as usize; // < n, so it fits
                dst.queue(cx, &src.read_buf()[..left]);
                src.consume(n);
                let over = budget.record(dir, n);
                dst.flush(cx)?;
                return Ok(over);
            }
            _ => {
                let _ = budget.record(dir, n);
                src.move_read_buf_to(dst);
            }
        }
        dst.flush(cx)?;
    }
    if st.eof && src.read_buf().is_empty() && !dst.is_write_shut() {
        dst.shutdown_write(cx)?;
    }
    Ok(Ok(()))
}
