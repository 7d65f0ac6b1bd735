//! The handler trait: what a server author implements.
//!
//! A handler is asyncore's `dispatcher`: an object that owns zero or more I/O sources
//! (sockets, timers through the [`Context`]) and is called back on the loop thread
//! when one of them is ready. This module only defines the callbacks and the small
//! value types they receive; it must not know how the loop finds handlers or polls.

use std::any::Any;
use std::fmt;

use crate::pool::{JobId, JobResult};
use crate::reactor::Context;
use crate::timer::TimerId;

/// The error a handler callback may return. Anything that implements
/// `std::error::Error` converts into it with `?`; so do `&str` and `String`.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What every handler callback returns. An `Err` closes the handler and is logged
/// with the handler's name; the loop and every other handler carry on.
pub type HandlerResult = Result<(), Error>;

/// Which of a handler's sources an event is for. The handler picks the number when it
/// registers the source (0 for its only socket; 0 and 1 for a proxy's two sockets).
pub type SourceId = u8;

/// Identifies a live handler. It carries a generation, so an id kept after its
/// handler closed never reaches another handler that reused the same slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HandlerId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl fmt::Display for HandlerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
const READ_CLOSED: u8 = 4;
const WRITE_CLOSED: u8 = 8;
const ERROR: u8 = 16;
/// Set on events that came from the poller (not re-queued by a handler).
const POLLED: u8 = 32;

/// Readiness of one source, as reported by the poller (or re-queued by a handler).
///
/// Events are edge-triggered: after `readable`, read until the socket says
/// `WouldBlock` (or re-queue with [`Context::requeue`]), or no further event comes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Event {
    source: SourceId,
    flags: u8,
}

impl Event {
    /// A readable event for `source`, for use with [`Context::requeue`].
    pub fn readable(source: SourceId) -> Event {
        Event {
            source,
            flags: READABLE,
        }
    }

    /// A writable event for `source`, for use with [`Context::requeue`].
    pub fn writable(source: SourceId) -> Event {
        Event {
            source,
            flags: WRITABLE,
        }
    }

    pub(crate) fn from_mio(source: SourceId, ev: &mio::event::Event) -> Event {
        let mut flags = POLLED;
        if ev.is_readable() {
            flags |= READABLE;
        }
        if ev.is_writable() {
            flags |= WRITABLE;
        }
        if ev.is_read_closed() {
            flags |= READ_CLOSED;
        }
        if ev.is_write_closed() {
            flags |= WRITE_CLOSED;
        }
        if ev.is_error() {
            flags |= ERROR;
        }
        Event { source, flags }
    }

    /// True for an event reported by the poller, false for one re-queued with
    /// [`Context::requeue`]. A poller event carries the socket's full current state
    /// (including end of file); a re-queued one does not.
    pub fn is_polled(&self) -> bool {
        self.flags & POLLED != 0
    }

    /// The source this event is for.
    pub fn source(&self) -> SourceId {
        self.source
    }
    /// Data (or a connection, for a listener) can be read.
    pub fn is_readable(&self) -> bool {
        self.flags & READABLE != 0
    }
    /// The socket has room for writing.
    pub fn is_writable(&self) -> bool {
        self.flags & WRITABLE != 0
    }
    /// The peer shut down its write side: reading will reach end of file.
    pub fn is_read_closed(&self) -> bool {
        self.flags & READ_CLOSED != 0
    }
    /// Our write side is closed (the peer is gone or we shut it down).
    pub fn is_write_closed(&self) -> bool {
        self.flags & WRITE_CLOSED != 0
    }
    /// Both directions are closed.
    pub fn is_hangup(&self) -> bool {
        self.is_read_closed() && self.is_write_closed()
    }
    /// The socket has a pending error; a read, write or accept will report it.
    pub fn is_error(&self) -> bool {
        self.flags & ERROR != 0
    }
}

/// A handler receives readiness and other callbacks on the loop thread.
///
/// Every method has a default, so a handler implements only what it needs. Each
/// callback gets a [`Context`] to register sources, set timers, offload blocking
/// work, spawn other handlers, and close itself. A callback must not block: the whole
/// loop waits for it, and dispatches longer than the slow-handler threshold are
/// logged with [`Handler::name`].
///
/// ```
/// use reactor::{Context, Handler, HandlerResult, SourceId};
///
/// struct Hello;
/// impl Handler for Hello {
///     fn on_start(&mut self, cx: &mut Context<'_>) -> HandlerResult {
///         cx.timer_once(std::time::Duration::from_millis(1));
///         Ok(())
///     }
///     fn on_timer(&mut self, cx: &mut Context<'_>, _t: reactor::TimerId) -> HandlerResult {
///         cx.stop();
///         Ok(())
///     }
/// }
///
/// let mut r = reactor::Reactor::new().unwrap();
/// r.spawn(Hello);
/// r.run().unwrap();
/// ```
#[allow(unused_variables)]
pub trait Handler: 'static {
    /// A name for logs and slow-handler warnings. Defaults to the type's name.
    fn name(&self) -> &str {
        short_type_name(std::any::type_name::<Self>())
    }

    /// Called once after the handler is added to the loop: register sources here
    /// ([`Context::register`]) because the handler's id is known only now.
    fn on_start(&mut self, cx: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }

    /// Called for each readiness event. The default splits it into
    /// [`on_readable`](Handler::on_readable), [`on_writable`](Handler::on_writable),
    /// [`on_hangup`](Handler::on_hangup) and [`on_error`](Handler::on_error), in that
    /// order of importance: an error event goes to `on_error` only.
    fn on_event(&mut self, cx: &mut Context<'_>, ev: Event) -> HandlerResult {
        split_event(self, cx, ev)
    }

    /// The source can be read (or has reached end of file). Read until `WouldBlock`.
    fn on_readable(&mut self, cx: &mut Context<'_>, source: SourceId) -> HandlerResult {
        Ok(())
    }

    /// The source can be written.
    fn on_writable(&mut self, cx: &mut Context<'_>, source: SourceId) -> HandlerResult {
        Ok(())
    }

    /// Both directions of the source are closed. The default does nothing, because
    /// `on_readable` ran first and sees end of file there, with any data still
    /// buffered in the kernel; closing here would lose it.
    fn on_hangup(&mut self, cx: &mut Context<'_>, source: SourceId) -> HandlerResult {
        Ok(())
    }

    /// The source has a pending socket error. The default calls `on_readable`, where
    /// the next read or accept returns the error with its real message.
    fn on_error(&mut self, cx: &mut Context<'_>, source: SourceId) -> HandlerResult {
        self.on_readable(cx, source)
    }

    /// A timer set by this handler fired.
    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) -> HandlerResult {
        Ok(())
    }

    /// A job offloaded with [`Context::offload`] finished on the worker pool.
    fn on_job(&mut self, cx: &mut Context<'_>, job: JobId, result: JobResult) -> HandlerResult {
        Ok(())
    }

    /// A message sent with [`Context::send`] or [`crate::ReactorHandle::send`].
    fn on_message(&mut self, cx: &mut Context<'_>, msg: Box<dyn Any + Send>) -> HandlerResult {
        Ok(())
    }

    /// A handler this one spawned has closed (an acceptor counts its connections
    /// this way).
    fn on_child_closed(&mut self, cx: &mut Context<'_>, child: HandlerId) -> HandlerResult {
        Ok(())
    }

    /// The loop is shutting down gracefully. Listeners close here; connections may
    /// finish their work until the drain deadline. The default does nothing, so a
    /// handler that would live forever (a periodic ticker) must close itself here.
    fn on_shutdown(&mut self, cx: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }

    /// Last call before the handler is dropped, whatever the reason it closed.
    fn on_close(&mut self, cx: &mut Context<'_>) {}
}

/// The default [`Handler::on_event`]: `ev` split into
/// [`on_error`](Handler::on_error) (an error event goes there only), then
/// [`on_readable`](Handler::on_readable), [`on_writable`](Handler::on_writable) and
/// [`on_hangup`](Handler::on_hangup), the last two skipped once the handler is
/// closing. A handler that overrides `on_event` for some states (e.g. one that
/// passes whole events to a two-socket pump) calls it for the others.
pub fn split_event<H: Handler + ?Sized>(
    h: &mut H,
    cx: &mut Context<'_>,
    ev: Event,
) -> HandlerResult {
    if ev.is_error() {
        return h.on_error(cx, ev.source());
    }
    if ev.is_readable() || ev.is_read_closed() {
        h.on_readable(cx, ev.source())?;
    }
    if (ev.is_writable() || ev.is_write_closed()) && !cx.is_closing() {
        h.on_writable(cx, ev.source())?;
    }
    if ev.is_hangup() && !cx.is_closing() {
        h.on_hangup(cx, ev.source())?;
    }
    Ok(())
}

/// `a::b::Foo<c::Bar>` -> `Foo<c::Bar>`: enough to recognise a handler in a log line.
fn short_type_name(full: &str) -> &str {
    let head = full.split('<').next().unwrap_or(full);
    match head.rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(short_type_name("a::b::Foo"), "Foo");
        assert_eq!(short_type_name("a::Foo<b::Bar>"), "Foo<b::Bar>");
        assert_eq!(short_type_name("Foo"), "Foo");
    }

    #[test]
    fn event_flags() {
        let e = Event::readable(3);
        assert!(e.is_readable() && !e.is_writable());
        let w = Event::writable(3);
        assert!(!w.is_readable() && w.is_writable());
        assert_eq!(e.source(), 3);
        assert!(!e.is_hangup() && !e.is_error());
    }
}
