//! Two connections joined into one byte pipe: a relay circuit, or either client
//! end of one (relay connection and local socket).
//!
//! [`Bridge`] is not a handler: the handler that owns both sockets passes it every
//! readiness event of either ([`Bridge::on_event`]). The forwarding itself is the
//! proxy's [`Pipe`], so a circuit behaves like a proxied TCP connection:
//!
//! - bytes move by swapping buffers (no copy, no allocation), each direction on
//!   its own: a side is paused while the *other* side's write queue is above its
//!   high watermark, never for its own queue, so an end that uploads before it
//!   reads its download keeps uploading ([`Bridge::start`] turns each
//!   connection's own-queue pause off);
//! - a half-close is passed on, after what was queued before it;
//! - a socket error (a reset, a broken pipe) ends that side only: what the bridge
//!   already read from it, what its kernel still holds and what is queued for the
//!   other side still reach the other side, then end of file. Before, any error
//!   closed the circuit and dropped all of that;
//! - each direction is capped at [`CircuitLimits::max_bytes_per_direction`]
//!   exactly ([`Pumped::OverBudget`]).
//!
//! - after a failure, once the healthy side's peer has acknowledged everything, the
//!   bridge says [`Pumped::Done`] ([`Bridge::on_timer`]): the circuit ends at once,
//!   not at the linger timeout.
//!
//! It must not parse anything or decide when to close: it reports, the handler
//! acts (closing on [`Pumped::Done`], bounding [`Pumped::Lingering`] with a timer,
//! stopping the circuit on [`Pumped::OverBudget`]).

use std::io;
use std::time::Duration;

use reactor::Event;
use reactor::Loop;
use reactor::TimerId;
use reactor::pipe::{AckPoll, DOWN, Pipe, PipeStatus, UP};
use reactor::{Conn, ConnConfig};

use super::table::{BudgetExceeded, CircuitLimits, Direction};

/// How long a bridge that has delivered everything it could after one side
/// failed waits for the healthy side to close before the handler closes it (and
/// how long a stopped bridge may take to deliver its last bytes).
pub const LINGER: Duration = Duration::from_secs(2);

/// What [`Bridge::on_event`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Bytes may still flow.
    Open,
    /// A side failed and the other side got everything it could (then end of
    /// file); what it still sends is read and dropped until it closes, which it
    /// may never do. Close after [`LINGER`] at most.
    Lingering,
    /// Both directions ended and everything deliverable was delivered: close.
    Done,
    /// A side sent more than its budget; the bytes up to the limit were queued
    /// and nothing more is read from it. Reported once. Call
    /// [`Bridge::shut_down`] and close once [`Bridge::is_done`] (or after
    /// [`LINGER`]).
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
    pipe: Pipe,
    /// The budget was reported exceeded (once).
    over_reported: bool,
    /// Lingering: the timer that asks whether the healthy side's peer has
    /// acknowledged everything, and its back-off.
    ack_poll: Option<(TimerId, AckPoll)>,
}

impl Bridge {
    /// Joins `a` and `b` (both already registered with the owning handler under
    /// different sources), with
    /// `limits.max_bytes_per_direction` as budget (0: none). A side paused for the
    /// other's queue resumes at `cfg.low_watermark`. Call [`start`](Bridge::start)
    /// next.
    pub fn new(a: Conn, b: Conn, cfg: &ConnConfig, limits: &CircuitLimits) -> Bridge {
        Bridge {
            pipe: Pipe::with_limit(cfg.low_watermark, limits.max_bytes_per_direction),
            a,
            b,
            over_reported: false,
            ack_poll: None,
        }
    }

    /// Starts forwarding ([`Pipe::start`]: neither side pauses for its own queue
    /// from now on): bytes already buffered on either side (read together with a
    /// frame) and frames already queued are moved on a re-queued event of each
    /// side, which then reads on to `WouldBlock`.
    pub fn start(&mut self, cx: &mut Loop<'_>) {
        self.pipe.start(cx, &mut self.a, &mut self.b);
        cx.requeue(Event::readable(self.a.source()));
        cx.requeue(Event::readable(self.b.source()));
    }

    /// Bytes forwarded so far in `dir`.
    pub fn transferred(&self, dir: Direction) -> u64 {
        self.pipe.bytes(match dir {
            Direction::ToReserver => UP,
            Direction::ToConnector => DOWN,
        })
    }

    /// The first socket failure, if any: the side that failed (`'a'` or `'b'`)
    /// and its error, for the log.
    pub fn failure(&self) -> Option<(char, &io::Error)> {
        self.pipe
            .failure()
            .map(|(side, e)| (if side == UP { 'a' } else { 'b' }, e))
    }

    /// Handles one readiness event of either connection (told apart by source)
    /// and says what the handler should do. Socket errors are not returned: they
    /// end one side (see the module docs).
    pub fn on_event(&mut self, cx: &mut Loop<'_>, ev: Event) -> Pumped {
        self.pipe.on_event(cx, ev, &mut self.a, &mut self.b);
        let status = self
            .pipe
            .status([self.a.is_write_shut(), self.b.is_write_shut()]);
        if status == PipeStatus::Done {
            return Pumped::Done;
        }
        if !self.over_reported
            && let Some(d) = self.pipe.over_limit()
        {
            self.over_reported = true;
            return Pumped::OverBudget(BudgetExceeded {
                direction: if d == UP {
                    Direction::ToReserver
                } else {
                    Direction::ToConnector
                },
                limit: self.pipe.limit(),
            });
        }
        if status == PipeStatus::Lingering {
            if self.ack_poll.is_none() {
                let mut poll = AckPoll::default();
                self.ack_poll = Some((cx.timer_once(poll.next_delay()), poll));
            }
            return Pumped::Lingering;
        }
        Pumped::Open
    }

    /// Passes a timer of the owning handler: `None` if it is not the bridge's.
    /// While [`Pumped::Lingering`], the bridge asks on a timer of its own whether
    /// the healthy side's peer has acknowledged everything sent to it
    /// ([`Pipe::is_delivered`]); once it has, the answer is [`Pumped::Done`]:
    /// nothing can be lost by closing (the prompt end; [`LINGER`] stays the upper
    /// bound). Otherwise it is [`Pumped::Lingering`] and the bridge asks again later.
    pub fn on_timer(&mut self, cx: &mut Loop<'_>, t: TimerId) -> Option<Pumped> {
        let (id, mut poll) = self.ack_poll?;
        if id != t {
            return None;
        }
        if self.pipe.is_delivered(&self.a, &self.b) {
            self.ack_poll = None;
            return Some(Pumped::Done);
        }
        self.ack_poll = Some((cx.timer_once(poll.next_delay()), poll));
        Some(Pumped::Lingering)
    }

    /// Stops forwarding and half-closes both sides once their queues drain.
    pub fn shut_down(&mut self, cx: &mut Loop<'_>) {
        self.pipe.stop(cx, &mut self.a, &mut self.b);
    }

    /// True when the circuit can close: both directions ended (or were stopped)
    /// and everything deliverable was delivered.
    pub fn is_done(&self) -> bool {
        self.pipe.is_done(&self.a, &self.b)
    }

    /// Gives both connections' buffers back to the loop's pool.
    pub fn release(&mut self, cx: &mut Loop<'_>) {
        self.a.release(cx);
        self.b.release(cx);
    }
}
