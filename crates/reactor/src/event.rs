//! The small value types every layer shares: handler ids, readiness events, why a
//! handler closed, and the error a callback returns.
//!
//! This is the bottom of the crate: it imports nothing of the crate, so the loop,
//! the timers, the pool and the handler trait can all name these types without
//! importing each other. It must stay plain data with no behaviour beyond
//! accessors.

use std::fmt;

/// The error a handler callback may return. Anything that implements
/// `std::error::Error` converts into it with `?`; so do `&str` and `String`.
///
/// What the loop does with it depends on what it is (see [`CloseReason`]): an
/// [`std::io::Error`] that says the peer reset or left ([`is_peer_gone`]) closes the
/// handler quietly as [`CloseReason::PeerReset`]; a [`ProtocolError`], a
/// [`crate::framing::FrameError`] or an `io::Error` of kind `InvalidData` is the
/// peer's fault ([`CloseReason::ProtocolError`], logged at `info`); anything else is
/// a failure of the handler itself ([`CloseReason::HandlerError`], logged as a
/// warning).
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What every handler callback returns. An `Err` closes the handler; the loop and
/// every other handler carry on.
pub type HandlerResult = Result<(), Error>;

/// Which of a handler's sources an event is for. The handler picks the number when it
/// registers the source (0 for its only socket; 0 and 1 for a proxy's two sockets).
pub type SourceId = u8;

/// Identifies a live handler. It carries a generation, so an id kept after its
/// handler closed never reaches another handler that reused the same slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct HandlerId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl HandlerId {
    /// An id that never names a handler (a placeholder until a real one is known):
    /// no slot index reaches it.
    pub const DANGLING: HandlerId = HandlerId {
        index: u32::MAX,
        generation: 0,
    };

    /// The id as one number, unique among the ids of a loop (slot and generation):
    /// a key for a map of handlers.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.index) << 32) | u64::from(self.generation)
    }
}

impl fmt::Display for HandlerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// The peer broke the rules of the protocol: return it from a callback to close
/// the connection as [`CloseReason::ProtocolError`] (logged at `info`, not counted
/// as a handler failure).
///
/// ```
/// let e: reactor::Error = reactor::ProtocolError::new("greeting too long").into();
/// assert_eq!(e.to_string(), "greeting too long");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(String);

impl ProtocolError {
    /// A protocol error with a message for the log.
    pub fn new(message: impl Into<String>) -> ProtocolError {
        ProtocolError(message.into())
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// True for the socket errors that mean the peer reset the connection or is
/// otherwise gone (`ECONNRESET`, `EPIPE`, `ECONNABORTED`, `ENOTCONN`): an ordinary
/// way for a conversation to end, not a failure of the handler.
pub fn is_peer_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | ConnectionAborted | NotConnected
    )
}

/// Why a handler closed. It reaches [`on_close`](crate::Handler::on_close) and is
/// counted per reason in [`Stats::closes`](crate::Stats::closes).
///
/// The loop decides the last four (and `Shutdown` at the drain deadline) by
/// itself; the others are given by whoever ends the conversation, with
/// [`Loop::close_with`](crate::Loop::close_with) or the framed layer's
/// [`close_when_done`](crate::framed::Link::close_when_done), which knows why it
/// is ending.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer ended the conversation (end of file) and we finished ours.
    PeerClosed,
    /// The peer reset the connection or vanished (a socket error such as
    /// `ECONNRESET` or `EPIPE`): what was still queued for it could not be delivered.
    PeerReset,
    /// Nothing came from the peer for the idle timeout.
    IdleTimeout,
    /// The peer broke the protocol (bad or oversized input).
    ProtocolError,
    /// This side decided to end it ([`Loop::close`](crate::Loop::close), a
    /// `close_when_done` of its own, another handler's
    /// [`close_handler`](crate::Loop::close_handler)).
    Local,
    /// The loop is shutting down (graceful shutdown, its drain deadline, or a stop).
    Shutdown,
    /// A callback returned an error that is not one of the above.
    HandlerError,
    /// A callback panicked.
    Panic,
}

impl CloseReason {
    /// Every reason, in the order [`Stats::closes`](crate::Stats::closes) counts them.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::PeerClosed,
        CloseReason::PeerReset,
        CloseReason::IdleTimeout,
        CloseReason::ProtocolError,
        CloseReason::Local,
        CloseReason::Shutdown,
        CloseReason::HandlerError,
        CloseReason::Panic,
    ];

    /// The short name used in the stats line and metrics (`peer_closed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::PeerReset => "peer_reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Local => "local",
            CloseReason::Shutdown => "shutdown",
            CloseReason::HandlerError => "handler_error",
            CloseReason::Panic => "panic",
        }
    }

    /// Its position in [`CloseReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for the reasons that mean the handler's own code failed.
    pub fn is_failure(self) -> bool {
        matches!(self, CloseReason::HandlerError | CloseReason::Panic)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
/// `WouldBlock` (or re-queue with [`Loop::requeue`](crate::Loop::requeue)), or no
/// further event comes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Event {
    source: SourceId,
    flags: u8,
}

impl Event {
    /// A readable event for `source`, for use with
    /// [`Loop::requeue`](crate::Loop::requeue).
    pub fn readable(source: SourceId) -> Event {
        Event {
            source,
            flags: READABLE,
        }
    }

    /// A writable event for `source`, for use with
    /// [`Loop::requeue`](crate::Loop::requeue).
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
    /// [`Loop::requeue`](crate::Loop::requeue). A poller event carries the
    /// socket's full current state (including end of file); a re-queued one does not.
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
    /// The bit a re-queued copy of this event takes in its handler's set of
    /// pending re-queues (two per source below 32: read-like and write-only), or
    /// `None` for a source above that (never coalesced).
    pub(crate) fn requeue_bit(&self) -> Option<u64> {
        let s = u32::from(self.source);
        (s < 32).then(|| 1u64 << (2 * s + u32::from(!self.may_read())))
    }

    /// True if this event may have something to read: readable, end of file, or
    /// an error to collect (which a read reports).
    pub fn may_read(&self) -> bool {
        self.flags & (READABLE | READ_CLOSED | ERROR) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_flags() {
        let e = Event::readable(3);
        assert!(e.is_readable() && !e.is_writable() && e.may_read());
        let w = Event::writable(3);
        assert!(!w.is_readable() && w.is_writable() && !w.may_read());
        assert_eq!(e.source(), 3);
        assert!(!e.is_hangup() && !e.is_error() && !e.is_polled());
    }

    #[test]
    fn handler_ids_as_numbers_differ_by_slot_and_generation() {
        let id = |index, generation| HandlerId { index, generation };
        let (a, b, c) = (id(1, 1).as_u64(), id(1, 2).as_u64(), id(2, 1).as_u64());
        assert!(a != b && a != c && b != c);
        assert_ne!(HandlerId::DANGLING, id(0, 0));
    }

    #[test]
    fn close_reasons_are_indexed_in_order() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert!(CloseReason::Panic.is_failure() && !CloseReason::PeerReset.is_failure());
    }

    #[test]
    fn peer_gone_errors() {
        use std::io::{Error, ErrorKind};
        assert!(is_peer_gone(&Error::from(ErrorKind::ConnectionReset)));
        assert!(is_peer_gone(&Error::from(ErrorKind::BrokenPipe)));
        assert!(!is_peer_gone(&Error::from(ErrorKind::InvalidData)));
    }
}
