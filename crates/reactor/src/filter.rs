//! Stream filters: what sits between a connection's socket and the bytes its handler
//! reads and writes, TLS above all.
//!
//! A [`Conn`](crate::Conn) with a filter reads wire bytes from its socket, gives them
//! to the filter, and puts the plaintext the filter returns in its read buffer; what
//! the handler queues goes through the filter on its way out, and the filter's wire
//! bytes are what the socket sends. So everything above `Conn` (framing, the framed
//! layer, a proxy's pipe) works unchanged over TLS: budgets, backpressure, half-close
//! (the filter's own close, TLS's `close_notify`, goes first), `close_when_done`.
//!
//! The `reactor-tls` crate implements this trait on rustls. This module only says
//! what a filter must do; it must not know any filter.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::BytesMut;

/// What a [`StreamFilter::read_plain`] call found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlainRead {
    /// Plaintext bytes appended by this call.
    pub bytes: usize,
    /// The peer ended its stream cleanly (TLS `close_notify`): no more plaintext.
    pub eof: bool,
    /// More plaintext is waiting inside the filter (the `max` stopped this call).
    pub more: bool,
}

/// What [`StreamFilter::read_wire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireRead {
    /// This many wire bytes were read from the socket, and processed.
    Data(usize),
    /// The socket reached end of file (processed: [`StreamFilter::read_plain`]
    /// then says how the stream ended).
    Eof,
    /// The filter holds as much plaintext as it may: [`StreamFilter::read_plain`]
    /// must take some before it reads more.
    Full,
}

/// A transformation between a connection's socket bytes and its handler's bytes.
///
/// The connection calls it in this order as bytes arrive: [`input`](Self::input)
/// with wire bytes (repeatedly, until it takes no more), [`read_plain`](Self::read_plain)
/// for what that produced, and [`output`](Self::output) for wire bytes the filter
/// wants to send in answer (a handshake). On the way out: [`write_plain`](Self::write_plain),
/// then [`output`](Self::output). Errors are the peer's fault (a bad record, a failed
/// handshake): return them as `io::ErrorKind::InvalidData` so they count as protocol
/// errors.
pub trait StreamFilter: 'static {
    /// Takes wire bytes read from the socket and returns how many it took; it may
    /// take fewer (even none) while its own buffer is full of plaintext that
    /// [`read_plain`](Self::read_plain) has not taken yet.
    fn input(&mut self, wire: &[u8]) -> io::Result<usize>;

    /// The socket reached end of file: no more wire bytes will come.
    fn input_eof(&mut self) -> io::Result<()>;

    /// Appends at most `max` bytes of the plaintext decoded so far to `plain`.
    /// A peer that closed the socket without ending its stream cleanly is an
    /// error (`io::ErrorKind::UnexpectedEof`: a truncation).
    fn read_plain(&mut self, plain: &mut BytesMut, max: usize) -> io::Result<PlainRead>;

    /// Takes plaintext to send and returns how much it took (it may take less while
    /// its own output buffer is full).
    fn write_plain(&mut self, plain: &[u8]) -> io::Result<usize>;

    /// Appends every wire byte waiting to be sent to `wire`; returns how many.
    fn output(&mut self, wire: &mut BytesMut) -> io::Result<usize>;

    /// At most how many more wire bytes than `plain` bytes of plaintext become
    /// (record headers and tags): the connection hands the filter only as much
    /// plaintext as will fit, as wire bytes, in the room its pool-sized output
    /// buffer has, so that buffer is never reallocated. Default 0 (a filter that
    /// does not grow the stream).
    fn overhead(&self, plain: usize) -> usize {
        let _ = plain;
        0
    }

    /// True while wire bytes wait for [`output`](Self::output).
    fn wants_output(&self) -> bool;

    /// The filter reads wire bytes from the socket and writes them to it itself
    /// ([`read_wire`](Self::read_wire), [`write_wire`](Self::write_wire)), into and
    /// out of buffers of its own: each direction then skips one copy through the
    /// connection's buffers. Default false: the connection uses
    /// [`input`](Self::input) and [`output`](Self::output).
    fn direct(&self) -> bool {
        false
    }

    /// Reads wire bytes from `socket` (the connection's, non-blocking: its errors,
    /// `WouldBlock` included, come back as they are) and processes them as
    /// [`input`](Self::input) would. Called only if [`direct`](Self::direct).
    fn read_wire(&mut self, socket: &mut dyn io::Read) -> io::Result<WireRead> {
        let _ = socket;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Writes wire bytes waiting in the filter to `socket`; returns how many
    /// (`WouldBlock` when the socket is full). Called only if
    /// [`direct`](Self::direct); what the socket does not take is later taken by
    /// [`output`](Self::output), so the connection can count it.
    fn write_wire(&mut self, socket: &mut dyn io::Write) -> io::Result<usize> {
        let _ = socket;
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Ends our stream (TLS `close_notify`); [`output`](Self::output) then carries it.
    fn close(&mut self);

    /// True until the filter's handshake, if it has one, is complete.
    fn is_handshaking(&self) -> bool;

    /// A short name for log lines (`"tls"`).
    fn name(&self) -> &'static str;

    /// The filter itself, for callers that know its type (to read a TLS
    /// connection's negotiated ALPN protocol or server name).
    fn as_any(&self) -> &dyn Any;
}

/// Makes a new filter for each connection (a TLS server connection per accepted
/// socket): what a listener's settings carry ([`crate::FramedConfig::filter`],
/// [`crate::echo::EchoOptions::filter`]). Cloning shares the maker; it is `Send`, so
/// several loops' listeners can use one.
///
/// ```
/// use reactor::FilterFactory;
/// let none = FilterFactory::new(|| Err(std::io::Error::other("no filters here")));
/// assert!(none.make().is_err());
/// ```
#[derive(Clone)]
pub struct FilterFactory(Arc<dyn Fn() -> io::Result<Box<dyn StreamFilter>> + Send + Sync>);

impl FilterFactory {
    /// A factory calling `make` for every connection.
    pub fn new(
        make: impl Fn() -> io::Result<Box<dyn StreamFilter>> + Send + Sync + 'static,
    ) -> FilterFactory {
        FilterFactory(Arc::new(make))
    }

    /// A new filter.
    pub fn make(&self) -> io::Result<Box<dyn StreamFilter>> {
        (self.0)()
    }
}

impl fmt::Debug for FilterFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FilterFactory")
    }
}
