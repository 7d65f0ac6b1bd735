//! Two connections joined into one byte pipe: a relay circuit, or either client
//! end of one (relay connection and local socket).
//!
//! [`Bridge`] is not a handler: the handler that owns both sockets calls
//! [`Bridge::pump`] on every event of either, and the bridge moves what was read
//! on one side to the other's write queue (without copying when that queue is
//! empty), stops reading a side while the other's queue is above its high
//! watermark, passes a half-close on, and counts bytes against a
//! [`CircuitBudget`]. It must not parse anything or decide when to close: it
//! reports, the handler acts.

use std::io;

use crate::conn::Conn;
use crate::handler::Event;
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
    low_watermark: usize,
    /// Reading `a` waits for `b`'s queue to drain (and the other way round).
    gated_a: bool,
    gated_b: bool,
    stopped: bool,
}

impl Bridge {
    /// Joins `a` and `b` (both already registered with the owning handler under
    /// different sources). `low_watermark` is where a congested side's writer
    /// may read again (the `ConnConfig` value the connections use).
    pub fn new(a: Conn, b: Conn, limits: &CircuitLimits, low_watermark: usize) -> Bridge {
        Bridge {
            a,
            b,
            budget: CircuitBudget::new(limits),
            low_watermark,
            gated_a: false,
            gated_b: false,
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
        let low = self.low_watermark;
        if let Err(e) = forward(
            &mut self.a,
            &mut self.b,
            &mut self.gated_a,
            low,
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
            &mut self.gated_b,
            low,
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
fn forward(
    src: &mut Conn,
    dst: &mut Conn,
    gated: &mut bool,
    low_watermark: usize,
    cx: &mut Context<'_>,
    budget: &mut CircuitBudget,
    dir: Direction,
) -> io::Result<Result<(), BudgetExceeded>> {
    dst.flush(cx)?;
    // Our own gate, not `Conn::pause_reading`: `src` un-pauses itself whenever
    // its own queue drains, which would spin while `dst` is still congested.
    if *gated {
        if dst.write_pending() > low_watermark {
            return Ok(Ok(()));
        }
        *gated = false;
    }
    if dst.is_congested() {
        *gated = true;
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
        if dst.is_congested() {
            *gated = true;
        }
    }
    if st.eof && src.read_buf().is_empty() && !dst.is_write_shut() {
        dst.shutdown_write(cx)?;
    }
    if *gated && dst.write_pending() <= low_watermark {
        // Drained within this call: read on before the loop sleeps.
        *gated = false;
        cx.requeue(Event::readable(src.source()));
    }
    Ok(Ok(()))
}
