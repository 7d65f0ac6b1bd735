//! A buffered TCP connection: what asynchat is to asyncore.
//!
//! [`Conn`] owns a non-blocking socket, a read buffer and a write queue, both borrowed
//! from the loop's buffer pool only while they hold bytes (an idle connection holds
//! none). It implements the hot-path rules once so handlers don't have to:
//!
//! - reads go until `WouldBlock` (or a short read, which on Linux means the socket is
//!   empty), under a per-event budget; when the budget or a full buffer stops it, the
//!   handler is re-queued, because edge-triggered polling sends no new event for data
//!   that is already there;
//! - a flush makes one `send` of at most the write budget; when the budget, not a full
//!   socket, stopped it, the handler is re-queued the same way;
//! - a write queue above its high watermark pauses reading *this* connection until
//!   it drains below the low watermark, and resuming re-queues a read
//!   (self-backpressure: right for a server that answers on the same connection, like
//!   echo; [`ConnConfig::pause_on_own_queue`] turns it off for a proxy, whose two
//!   directions are independent);
//! - a pause set by the handler ([`Conn::pause_reading`], e.g. a proxy holding back
//!   one side while the other side's queue is full) is kept apart from that and only
//!   [`Conn::resume_reading`] lifts it;
//! - half-close: end of file from the peer is reported and we can keep writing;
//!   [`Conn::shutdown_write`] closes our side once the queue drains;
//! - ending a conversation ([`Conn::close_when_done`], asynchat's name): flush what
//!   is queued, half-close, then read and drop whatever the peer still sends until
//!   it closes too ([`Conn::is_done`]); the handler bounds that wait with a linger
//!   timer. Closing a socket with unread input makes the kernel reset the
//!   connection and throw away what it had not yet sent, so a plain close is never
//!   the way to end one; a connection released with output still queued (and a
//!   peer that was not gone) is logged and counted as truncated.
//!
//! It must not decide protocol matters (when to close, what to answer): the handler
//! does. [`IdleTimeout`] is the idle-connection helper built on the loop's timers.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mio::Interest;
use mio::net::TcpStream;
use rustix::io::Errno;
use rustix::net::SendFlags;

/// No `SIGPIPE` for a peer that is gone (an `EPIPE` error instead). Apple systems
/// have no `MSG_NOSIGNAL`; there std sets `SO_NOSIGPIPE` on every socket, and Rust
/// programs ignore `SIGPIPE` anyway.
#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: SendFlags = SendFlags::empty();

use crate::buf::BufPool;
use crate::event::{Event, SourceId};
use crate::filter::{PlainRead, StreamFilter, WireRead};
use crate::framing::{Decoder, Frame, FrameError};
use crate::reactor::Loop;
use crate::timer::TimerId;

/// Limits of one connection. The default of each field is in its doc.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ConnConfig {
    /// A write queue of this many bytes or more is congested
    /// ([`Conn::is_congested`]); with `pause_on_own_queue`, reading this connection
    /// pauses meanwhile. Default 1 MiB.
    pub high_watermark: usize,
    /// A congested write queue counts as drained again at this many bytes: reading
    /// paused by it resumes. Default 256 KiB.
    pub low_watermark: usize,
    /// Bytes read per readiness event before yielding to other connections.
    /// Default 256 KiB.
    pub read_budget: usize,
    /// Bytes one [`Conn::flush`] hands to the socket at most before yielding (the
    /// rest is re-queued to run before the next poll). Default 256 KiB.
    pub write_budget: usize,
    /// The read buffer may grow to this size to hold one incomplete frame; a full
    /// buffer the handler does not consume is an error. Default 1 MiB.
    pub max_read_buffer: usize,
    /// Pause reading while this connection's *own* write queue is congested
    /// (default `true`). Right when what is read is answered on the same connection
    /// (echo, request/response): a peer that does not read its answers stops being
    /// read. Wrong for a proxy, whose two directions are independent streams: a client
    /// that uploads while not yet reading its download would have its upload
    /// stalled, which a direct TCP connection would not do. A proxy sets it `false`
    /// and pauses each side while the *other* side's queue is congested
    /// ([`crate::pipe::Pipe`]). Default `true`.
    pub pause_on_own_queue: bool,
}

impl Default for ConnConfig {
    fn default() -> ConnConfig {
        ConnConfig {
            high_watermark: 1024 * 1024,
            low_watermark: 256 * 1024,
            read_budget: 256 * 1024,
            write_budget: 256 * 1024,
            max_read_buffer: 1024 * 1024,
            pause_on_own_queue: true,
        }
    }
}

impl ConnConfig {
    /// Sets [`ConnConfig::high_watermark`].
    pub fn high_watermark(mut self, n: usize) -> ConnConfig {
        self.high_watermark = n;
        self
    }
    /// Sets [`ConnConfig::low_watermark`].
    pub fn low_watermark(mut self, n: usize) -> ConnConfig {
        self.low_watermark = n;
        self
    }
    /// Sets [`ConnConfig::read_budget`].
    pub fn read_budget(mut self, n: usize) -> ConnConfig {
        self.read_budget = n;
        self
    }
    /// Sets [`ConnConfig::write_budget`].
    pub fn write_budget(mut self, n: usize) -> ConnConfig {
        self.write_budget = n;
        self
    }
    /// Sets [`ConnConfig::max_read_buffer`].
    pub fn max_read_buffer(mut self, n: usize) -> ConnConfig {
        self.max_read_buffer = n;
        self
    }
    /// Sets [`ConnConfig::pause_on_own_queue`].
    pub fn pause_on_own_queue(mut self, on: bool) -> ConnConfig {
        self.pause_on_own_queue = on;
        self
    }
}

/// What a call to [`Conn::fill`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStatus {
    /// Bytes read by this call.
    pub bytes: usize,
    /// The peer has closed its write side (now or earlier): no more bytes will come.
    pub eof: bool,
}

/// A non-blocking TCP connection with buffers. See the module docs.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    source: SourceId,
    cfg: ConnConfig,
    rbuf: BytesMut,
    /// How far [`Conn::next_frame`]'s decoder has searched the read buffer without
    /// finding a frame end; 0 whenever the buffer's start moves.
    scanned: usize,
    wbuf: BytesMut,
    eof: bool,
    /// Paused by the handler ([`Conn::pause_reading`]); only
    /// [`Conn::resume_reading`] lifts it.
    paused: bool,
    /// Paused because our own write queue is congested (`pause_on_own_queue`);
    /// [`Conn::flush`] lifts it once the queue is down to the low watermark.
    self_paused: bool,
    /// The queue reached the high watermark and [`Conn::flush`] has not yet
    /// reported it back down at the low one. A flag rather than a comparison at
    /// the start of each flush, because one flush sends at most `write_budget`:
    /// the call that crosses the low watermark is rarely one that began congested.
    congested: bool,
    shutdown_requested: bool,
    write_shut: bool,
    /// A non-blocking connect is in progress.
    connecting: bool,
    /// [`Conn::close_when_done`] was called: input is read and dropped.
    closing: bool,
    /// A socket call failed (a reset, most often): queued output can never be
    /// delivered, so dropping it is no truncation.
    broken: bool,
    /// A stream filter (TLS) sits between the socket and the buffers; the flag is
    /// tested with the others on the hot path, the filter itself only then.
    filtered: bool,
    filter: Option<Box<Filtered>>,
}

/// A connection's filter and its wire-side buffers.
struct Filtered {
    f: Box<dyn StreamFilter>,
    /// Wire bytes read from the socket that the filter has not taken yet.
    win: BytesMut,
    /// Wire bytes the filter produced, waiting for the socket.
    wout: BytesMut,
    /// We ended our stream through the filter (`close_notify` queued).
    closed: bool,
    /// The filter reads from and writes to the socket itself ([`StreamFilter::direct`]).
    direct: bool,
}

impl std::fmt::Debug for Filtered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filtered")
            .field("filter", &self.f.name())
            .field("wire_in", &self.win.len())
            .field("wire_out", &self.wout.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl Conn {
    /// Wraps a connected (or connecting) non-blocking stream, to be registered under
    /// the handler's `source` number.
    pub fn new(stream: TcpStream, source: SourceId, cfg: ConnConfig) -> Conn {
        Conn {
            stream,
            source,
            cfg,
            rbuf: BytesMut::new(),
            scanned: 0,
            wbuf: BytesMut::new(),
            eof: false,
            paused: false,
            self_paused: false,
            congested: false,
            shutdown_requested: false,
            write_shut: false,
            connecting: false,
            closing: false,
            broken: false,
            filtered: false,
            filter: None,
        }
    }

    /// This connection with `filter` between its socket and its buffers (TLS:
    /// `reactor-tls`). Set it before the first byte is read or written.
    pub fn with_filter(mut self, filter: Box<dyn StreamFilter>) -> Conn {
        let direct = filter.direct();
        self.filter = Some(Box::new(Filtered {
            f: filter,
            win: BytesMut::new(),
            wout: BytesMut::new(),
            closed: false,
            direct,
        }));
        self.filtered = true;
        self
    }

    /// The connection's filter, if it has one (downcast it with
    /// [`StreamFilter::as_any`] to read, say, a TLS connection's ALPN protocol).
    pub fn filter(&self) -> Option<&dyn StreamFilter> {
        self.filter.as_deref().map(|f| &*f.f)
    }

    /// For a connection that is being given up on after its filter failed (a TLS
    /// error): one best-effort send of what the filter still wants to say (the
    /// alert that tells the peer why), ignoring errors. Nothing is queued.
    pub fn send_final(&mut self, cx: &mut Loop<'_>) {
        let Some(flt) = self.filter.as_mut() else {
            return;
        };
        let mut out = BytesMut::new();
        if flt.f.output(&mut out).is_ok() && !out.is_empty() {
            let sent = rustix::net::send(&self.stream, &out, SEND_FLAGS).unwrap_or(0);
            cx.core().stats.bytes_out += sent as u64;
        }
    }

    /// True while the connection's filter is still in its handshake.
    pub fn is_handshaking(&self) -> bool {
        self.filter.as_ref().is_some_and(|f| f.f.is_handshaking())
    }

    /// Starts a non-blocking connect to `addr` (with `TCP_NODELAY`). Register it, then
    /// call [`poll_connect`](Conn::poll_connect) on its events (the first writable
    /// event means the connect finished, for better or worse); guard it with a
    /// timer for a connect timeout. Bytes queued meanwhile are sent once connected.
    pub fn connect(addr: SocketAddr, source: SourceId, cfg: ConnConfig) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut c = Conn::new(stream, source, cfg);
        c.connecting = true;
        Ok(c)
    }

    /// While connecting: `Ok(true)` once connected, `Ok(false)` while still in
    /// progress, `Err` (e.g. `ConnectionRefused`) if the connect failed. Once
    /// connected it is always `Ok(true)`.
    pub fn poll_connect(&mut self) -> io::Result<bool> {
        if !self.connecting {
            return Ok(true);
        }
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connecting = false;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True while a connect started by [`connect`](Conn::connect) is in progress.
    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// Registers the socket for both readable and writable events, once: with
    /// edge-triggered polling, interest never needs changing (no extra syscalls).
    pub fn register(&mut self, cx: &mut Loop<'_>) -> io::Result<()> {
        cx.register(
            &mut self.stream,
            self.source,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket, mutably (for socket options).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The source number this connection's events carry.
    pub fn source(&self) -> SourceId {
        self.source
    }

    /// Changes the source number, to move a connection from one handler to another
    /// (a relay joining two accepted connections in one handler): deregister it from
    /// the old handler first (`cx.deregister(conn.stream_mut())`), send it over with
    /// [`Loop::send`], then call this and [`register`](Conn::register) in the new
    /// handler. Buffered bytes travel with it; call [`fill`](Conn::fill) once after
    /// registering, since data that arrived meanwhile made no edge for the new token.
    pub fn set_source(&mut self, source: SourceId) {
        self.source = source;
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Reads into the read buffer until the socket is empty, end of file, the
    /// per-event budget, or a full buffer. In the last two cases the handler is
    /// re-queued so the rest is read before the loop sleeps. Does nothing while
    /// reading is paused (by the handler, or by this connection's own congested
    /// queue when [`ConnConfig::pause_on_own_queue`] is set); resuming re-queues a
    /// read, which goes on to end of file.
    // Inlined into the handler (usually one call site each): measured, a fifth of
    // the instructions per echoed message went into the calls of `fill` and
    // `flush` and the state they could not share with their caller.
    #[inline(always)]
    pub fn fill(&mut self, cx: &mut Loop<'_>) -> io::Result<ReadStatus> {
        let mut st = ReadStatus {
            bytes: 0,
            eof: self.eof,
        };
        // One test of five flags on the hot path (`|`, not `||`: no branches).
        if self.eof | self.paused | self.self_paused | self.closing | self.filtered {
            if self.filtered {
                return self.fill_filtered(cx, self.closing);
            }
            if self.closing {
                return self.discard_input(cx);
            }
            return Ok(st);
        }
        if self.connecting && !self.poll_connect()? {
            return Ok(st);
        }
        if self.cfg.pause_on_own_queue && self.wbuf.len() >= self.cfg.high_watermark {
            self.self_paused = true;
            return Ok(st);
        }
        let result = loop {
            if self.rbuf.capacity() == 0 {
                // No allocation (a buffer is never advanced to empty, it is cleared,
                // so zero capacity means none): take one from the pool.
                self.rbuf = cx.core().bufs.get();
            } else if self.rbuf.is_empty() && self.rbuf.capacity() < cx.core().bufs.buffer_size() {
                // Consumed to empty after part of it had been consumed: `clear` keeps
                // the consumed offset, so only the space after it is left, and reads
                // into it would shrink with every frame. Swap it for a whole buffer;
                // the pool reclaims this one without allocating.
                let old = std::mem::take(&mut self.rbuf);
                let pool = &mut cx.core().bufs;
                pool.put(old);
                self.rbuf = pool.get();
            }
            if self.rbuf.len() == self.rbuf.capacity() {
                if st.bytes > 0 {
                    // Filled during this call: let the handler consume it, then read on.
                    cx.requeue(Event::readable(self.source));
                    break Ok(());
                }
                // Full on entry: one frame needs more room than the buffer has.
                let len = self.rbuf.len();
                if len >= self.cfg.max_read_buffer {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "read buffer full and not consumed (a frame larger than max_read_buffer?)",
                    ));
                }
                self.rbuf
                    .reserve(len.min(self.cfg.max_read_buffer - len).max(1));
            }
            let spare = self.rbuf.spare_capacity_mut();
            // Never more than the budget has left: a recycled buffer can be several
            // times the pool's size, and one read into all of it would overrun the
            // budget (and a proxy's bound on what it holds) by that much.
            // (At least 1: a zero-length read would look like end of file.)
            let want = spare
                .len()
                .min(self.cfg.read_budget.saturating_sub(st.bytes).max(1));
            // rustix makes the system call itself: glibc's `read` is a
            // thread-cancellation point, with two atomic updates around the call in
            // any process that has a second thread.
            let n = match rustix::io::read(&self.stream, &mut spare[..want]) {
                Ok((init, _)) => init.len(),
                Err(Errno::AGAIN) => break Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => break Err(e.into()),
            };
            if n == 0 {
                self.eof = true;
                st.eof = true;
                break Ok(());
            }
            // SAFETY: the kernel initialised the first `n` bytes of spare capacity.
            // (Reviewed: the one way to read into a `BytesMut` without zeroing it.)
            #[allow(unsafe_code)]
            unsafe {
                self.rbuf.set_len(self.rbuf.len() + n)
            };
            st.bytes += n;
            // A short read means the socket is empty only during the poller's own
            // event for this socket, and only if that event did not report end of
            // file or an error: then any later data or end of file makes a new edge
            // (and the poller reports the socket's whole state, end of file
            // included). Called from anywhere else (a re-queued event, another
            // source's event, a timer), read on to `WouldBlock` so an end of file
            // this connection never saw is not missed.
            if n < want
                && cx.event().is_some_and(|e| {
                    e.source() == self.source
                        && e.is_polled()
                        && !e.is_read_closed()
                        && !e.is_error()
                })
            {
                break Ok(()); // short read: the socket is empty; a new edge will come
            }
            if st.bytes >= self.cfg.read_budget {
                cx.requeue(Event::readable(self.source));
                break Ok(());
            }
        };
        cx.core().stats.bytes_in += st.bytes as u64;
        if self.rbuf.is_empty() {
            self.release_read_buf(cx);
        }
        if result.is_err() {
            self.broken = true;
        }
        result.map(|()| st)
    }

    fn release_read_buf(&mut self, cx: &mut Loop<'_>) {
        self.scanned = 0;
        let b = std::mem::take(&mut self.rbuf);
        cx.core().bufs.put(b);
    }

    /// The bytes read and not yet consumed.
    pub fn read_buf(&self) -> &[u8] {
        &self.rbuf
    }

    /// The bytes read and not yet consumed, to change in place: a stream cipher
    /// (BitTorrent's RC4 after its handshake) decrypts what arrived before it is
    /// framed. Keep track of how much is already decrypted; [`consume`](Conn::consume)
    /// moves the start.
    pub fn read_buf_mut(&mut self) -> &mut [u8] {
        &mut self.rbuf
    }

    /// The last `n` bytes of the write queue (at most all of it), to change in
    /// place before they are sent: queue plaintext, then encrypt it where it lies,
    /// without a copy of its own.
    pub fn queued_tail_mut(&mut self, n: usize) -> &mut [u8] {
        let len = self.wbuf.len();
        &mut self.wbuf[len - n.min(len)..]
    }

    /// The read buffer and the write queue at once, so that a frame can be
    /// answered while it is still borrowed (the framed layer's `on_frame`). A write
    /// queue of zero capacity holds no buffer: take one from the pool
    /// ([`queue_into`]) before writing.
    pub(crate) fn split_io(&mut self) -> (&[u8], &mut BytesMut, Option<&dyn StreamFilter>) {
        let filter = self.filter.as_deref().map(|f| &*f.f);
        (&self.rbuf, &mut self.wbuf, filter)
    }

    /// Raises the largest frame the read buffer may grow to hold
    /// ([`ConnConfig::max_read_buffer`]); a protocol that switches to larger
    /// frames calls it.
    pub fn set_max_read_buffer(&mut self, n: usize) {
        self.cfg.max_read_buffer = n;
    }

    /// This connection's limits.
    pub fn config(&self) -> &ConnConfig {
        &self.cfg
    }

    /// Reads what has arrived and drops it, with what was buffered already: for a
    /// side whose input has nowhere to go, and for a connection that is ending
    /// ([`close_when_done`](Conn::close_when_done) makes [`fill`](Conn::fill) do
    /// this). Reading rather than ignoring it keeps the peer from being held up,
    /// and leaves no unread input at close, which would make the kernel reset the
    /// connection and throw away what it had not yet delivered the other way.
    ///
    /// Pauses do not apply: dropped input makes no output, so neither a full write
    /// queue nor the handler's own pause is a reason to leave it in the kernel. Up
    /// to the read budget per call (then the handler is re-queued), to end of file
    /// or `WouldBlock`.
    pub fn discard_input(&mut self, cx: &mut Loop<'_>) -> io::Result<ReadStatus> {
        if self.filtered {
            return self.fill_filtered(cx, true);
        }
        self.scanned = 0;
        self.rbuf.clear();
        let mut st = ReadStatus {
            bytes: 0,
            eof: self.eof,
        };
        if self.eof || self.connecting {
            self.release_read_buf(cx);
            return Ok(st);
        }
        if self.rbuf.capacity() == 0 {
            self.rbuf = cx.core().bufs.get();
        }
        let result = loop {
            let spare = self.rbuf.spare_capacity_mut();
            let want = spare
                .len()
                .min(self.cfg.read_budget.saturating_sub(st.bytes).max(1));
            match rustix::io::read(&self.stream, &mut spare[..want]) {
                Ok(([], _)) => {
                    self.eof = true;
                    st.eof = true;
                    break Ok(());
                }
                // Not kept: the buffer is only scratch space for the kernel to fill.
                Ok((init, _)) => st.bytes += init.len(),
                Err(Errno::AGAIN) => break Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => {
                    self.broken = true;
                    break Err(e.into());
                }
            }
            if st.bytes >= self.cfg.read_budget {
                cx.requeue(Event::readable(self.source));
                break Ok(());
            }
        };
        cx.core().stats.bytes_in += st.bytes as u64;
        self.release_read_buf(cx);
        result.map(|()| st)
    }

    /// Ends the conversation the way asynchat's `close_when_done` does: what is
    /// queued is still sent, then our side is shut down (the peer reads end of
    /// file), and from now on everything the peer sends is read and dropped
    /// (unread input, including what is buffered now, is dropped too) until it
    /// closes its side: then [`is_done`](Conn::is_done) is true and the handler
    /// closes. Keep calling [`fill`](Conn::fill) (which now discards) and
    /// [`flush`](Conn::flush) on events as before, and bound the wait with a
    /// linger timer: a peer that never closes would hold the connection forever.
    /// Closing at the linger timeout with output still queued is a truncation
    /// (logged and counted when the connection is released).
    pub fn close_when_done(&mut self, cx: &mut Loop<'_>) -> io::Result<()> {
        self.closing = true;
        self.paused = false;
        self.self_paused = false;
        self.shutdown_requested = true;
        self.flush(cx)?;
        self.discard_input(cx).map(|_| ())
    }

    /// True once [`close_when_done`](Conn::close_when_done) was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Drops `n` bytes from the front of the read buffer.
    pub fn consume(&mut self, n: usize) {
        self.scanned = 0;
        if n >= self.rbuf.len() {
            // Not advanced to the end, which would leave a buffer that reports no
            // capacity while still owning its allocation (`fill` relies on zero
            // capacity meaning no allocation).
            self.rbuf.clear();
        } else {
            self.rbuf.advance(n);
        }
    }

    /// The next complete frame in the read buffer, as offsets into
    /// [`read_buf`](Conn::read_buf); call [`consume`](Conn::consume) with
    /// `frame.consumed` when done with it. Where the last search stopped is kept
    /// ([`Decoder::decode_from`]), so a long frame arriving in many reads is
    /// searched once, not once per read. The position is reset whenever the
    /// buffer's start moves (`consume` and the like); a handler that switches to a
    /// decoder with another delimiter does so after consuming a frame, as a
    /// protocol's switch is itself a frame.
    pub fn next_frame<D: Decoder + ?Sized>(&mut self, d: &D) -> Result<Option<Frame>, FrameError> {
        d.decode_from(&self.rbuf, &mut self.scanned)
    }

    /// True once the peer has closed its write side.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Appends bytes to the write queue (no syscall; see [`flush`](Conn::flush)).
    #[inline]
    pub fn queue(&mut self, cx: &mut Loop<'_>, data: &[u8]) {
        queue_into(&mut self.wbuf, cx, data);
    }

    /// Moves everything in the read buffer to the write queue without copying when
    /// the queue is empty: an echo in one call.
    pub fn echo_read_buf(&mut self) {
        self.scanned = 0;
        if self.wbuf.is_empty() {
            std::mem::swap(&mut self.rbuf, &mut self.wbuf);
        } else {
            self.wbuf.extend_from_slice(&self.rbuf);
            self.rbuf.clear();
        }
    }

    /// Moves everything in this connection's read buffer to `to`'s write queue
    /// (without copying when that queue is empty). For proxies.
    pub fn move_read_buf_to(&mut self, to: &mut Conn) {
        self.scanned = 0;
        if to.wbuf.is_empty() {
            std::mem::swap(&mut self.rbuf, &mut to.wbuf);
        } else {
            to.wbuf.extend_from_slice(&self.rbuf);
            self.rbuf.clear();
        }
    }

    /// Makes `buf` the write queue when the queue is empty (a buffer filled
    /// elsewhere, e.g. an [`Outbox`](crate::framed::Outbox), sent without a copy);
    /// otherwise appends it. The buffer left over goes back to the pool.
    pub fn replace_write_queue(&mut self, cx: &mut Loop<'_>, buf: BytesMut) {
        if self.wbuf.is_empty() {
            let old = std::mem::replace(&mut self.wbuf, buf);
            cx.core().bufs.put(old);
        } else {
            self.wbuf.extend_from_slice(&buf);
            cx.core().bufs.put(buf);
        }
    }

    /// Drops every byte waiting in the write queue and gives its buffer back: the
    /// peer is gone, so they can never be delivered.
    pub fn clear_write_queue(&mut self, cx: &mut Loop<'_>) {
        // Dropped, not drained: no fall to the low watermark to report.
        self.congested = false;
        let b = std::mem::take(&mut self.wbuf);
        cx.core().bufs.put(b);
        if let Some(f) = self.filter.as_mut() {
            let b = std::mem::take(&mut f.wout);
            cx.core().bufs.put(b);
        }
        self.lift_self_pause(cx);
    }

    /// Bytes waiting in the write queue (with a filter: and its wire bytes not yet
    /// sent).
    pub fn write_pending(&self) -> usize {
        self.wbuf.len() + self.filter.as_ref().map_or(0, |f| f.wout.len())
    }

    /// True while the write queue is above the high watermark: whoever feeds this
    /// connection should stop reading its source.
    pub fn is_congested(&self) -> bool {
        self.write_pending() >= self.cfg.high_watermark
    }

    /// Queues `data` and writes what the socket accepts now.
    pub fn send(&mut self, cx: &mut Loop<'_>, data: &[u8]) -> io::Result<bool> {
        self.queue(cx, data);
        self.flush(cx)
    }

    /// Writes the queue until it is empty, the socket is full, or the budget is
    /// spent (then the handler is re-queued). Performs a requested write shutdown
    /// once empty. Returns true once each time the queue falls to the low watermark
    /// after having reached the high one (on the call that brings it there, however
    /// many calls that took): a proxy then resumes reading the other side. Reading this
    /// connection paused by its own queue (`pause_on_own_queue`) resumes by itself;
    /// a pause set with [`pause_reading`](Conn::pause_reading) stays.
    #[inline(always)]
    pub fn flush(&mut self, cx: &mut Loop<'_>) -> io::Result<bool> {
        if self.connecting | self.filtered {
            if self.connecting && !self.poll_connect()? {
                return Ok(false);
            }
            if self.filtered {
                return self.flush_filtered(cx);
            }
        }
        if self.wbuf.is_empty() {
            // Nothing queued (a writable edge after everything went out, or a flush
            // after a read that produced no reply): no syscall. An empty queue that
            // still holds a buffer (`queue` of nothing) gives it back: an idle
            // connection holds none.
            if self.wbuf.capacity() != 0 {
                let b = std::mem::take(&mut self.wbuf);
                cx.core().bufs.put(b);
            }
            self.finish_drained(cx)?;
            return Ok(self.take_congested());
        }
        if self.wbuf.len() >= self.cfg.high_watermark {
            self.congested = true;
        }
        let mut written = 0;
        let result = loop {
            let queued = self.wbuf.len();
            // One send per call, of at most the budget: a peer that drains fast
            // cannot keep the loop writing to it alone.
            let want = queued.min(self.cfg.write_budget.max(1));
            // Through rustix for the same reason as the read in `fill`.
            match rustix::net::send(&self.stream, &self.wbuf[..want], SEND_FLAGS) {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ));
                }
                Ok(n) if n == queued => {
                    // All of it: `clear` keeps the whole capacity for the pool.
                    self.wbuf.clear();
                    written = n;
                    break Ok(());
                }
                Ok(n) => {
                    self.wbuf.advance(n);
                    written = n;
                    if n == want {
                        // Stopped by the budget, not by a full socket: no writable
                        // edge will come for the room that is left.
                        cx.requeue(Event::writable(self.source));
                    }
                    break Ok(());
                }
                Err(Errno::AGAIN) => break Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => break Err(e.into()),
            }
        };
        cx.core().stats.bytes_out += written as u64;
        if let Err(e) = result {
            self.broken = true;
            return Err(e);
        }
        if self.wbuf.is_empty() {
            // Written out completely: the buffer goes back to the pool.
            let b = std::mem::take(&mut self.wbuf);
            cx.core().bufs.put(b);
            self.finish_drained(cx)?;
        } else if self.wbuf.len() <= self.cfg.low_watermark {
            self.lift_self_pause(cx);
        } else {
            return Ok(false);
        }
        Ok(self.take_congested())
    }

    /// The queue is at or below the low watermark: reports (once) that it got
    /// there from congestion. In the common case (never congested) a test of the
    /// flag and no store: this runs on every flush that empties the queue.
    #[inline(always)]
    fn take_congested(&mut self) -> bool {
        if self.congested {
            self.congested = false;
            return true;
        }
        false
    }

    /// The write queue is empty: resume reading paused by our own backpressure, and
    /// perform a requested write shutdown.
    fn finish_drained(&mut self, cx: &mut Loop<'_>) -> io::Result<()> {
        self.lift_self_pause(cx);
        if self.shutdown_requested && !self.write_shut {
            self.write_shut = true;
            match self.stream.shutdown(Shutdown::Write) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The write queue is down to the low watermark: a pause by our own congested
    /// queue ends.
    fn lift_self_pause(&mut self, cx: &mut Loop<'_>) {
        if self.self_paused {
            self.self_paused = false;
            // Data may have arrived meanwhile without a new edge.
            if !self.paused {
                cx.requeue(Event::readable(self.source));
            }
        }
    }

    /// Turns [`ConnConfig::pause_on_own_queue`] on or off for this connection, e.g.
    /// off when it joins a proxy's pipe, which pauses each side for the other
    /// side's queue and never for its own. Turning it off lifts a pause it had set.
    pub fn set_pause_on_own_queue(&mut self, cx: &mut Loop<'_>, on: bool) {
        self.cfg.pause_on_own_queue = on;
        if !on {
            self.lift_self_pause(cx);
        }
    }

    /// Stops reading until [`resume_reading`](Conn::resume_reading) (backpressure
    /// from elsewhere, e.g. the other side of a proxy). Writing and flushing do not
    /// lift it.
    pub fn pause_reading(&mut self) {
        self.paused = true;
    }

    /// Lifts a [`pause_reading`](Conn::pause_reading) and re-queues a read, since
    /// data may have arrived meanwhile without a new edge. (A pause by this
    /// connection's own congested queue stays until that queue drains.)
    pub fn resume_reading(&mut self, cx: &mut Loop<'_>) {
        if self.paused {
            self.paused = false;
            if !self.self_paused {
                cx.requeue(Event::readable(self.source));
            }
        }
    }

    /// True while reading is paused, for either reason: by the handler, or by this
    /// connection's own congested write queue (with `pause_on_own_queue`, from the
    /// moment the queue reaches the high watermark, not only from the next
    /// [`fill`](Conn::fill)). A closing connection is never paused.
    pub fn is_paused(&self) -> bool {
        !self.closing
            && (self.paused
                || self.self_paused
                || (self.cfg.pause_on_own_queue && self.wbuf.len() >= self.cfg.high_watermark))
    }

    /// Shuts down our write side once the queue has drained (half-close): the peer
    /// reads end of file and can still send to us.
    pub fn shutdown_write(&mut self, cx: &mut Loop<'_>) -> io::Result<()> {
        self.shutdown_requested = true;
        if self.flush(cx)? {
            // This returns no report, so the next flush gives it instead.
            self.congested = true;
        }
        Ok(())
    }

    /// True when our write side has been shut down.
    pub fn is_write_shut(&self) -> bool {
        self.write_shut
    }

    /// Bytes written to the socket that the peer has not acknowledged yet, our end
    /// of file (a write shutdown) counting as one: the kernel's `SIOCOUTQ`. Zero
    /// means the peer's kernel holds everything we sent, so closing now, even with
    /// unread input (which makes the kernel send a reset), cannot destroy any of it.
    /// An acknowledgement makes no readiness event: a handler waiting for this to
    /// reach zero asks again on a timer. (Bytes still in the write queue are not
    /// counted: see [`write_pending`](Conn::write_pending).) Linux only; elsewhere
    /// an `Unsupported` error.
    pub fn unacked(&self) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let mut n: libc::c_int = 0;
            // SAFETY: SIOCOUTQ (TIOCOUTQ) on a socket writes one int through the
            // pointer, which points at a live, aligned c_int; the fd is this socket's.
            // (Reviewed: neither rustix nor socket2 wraps this ioctl.)
            #[allow(unsafe_code)]
            let r = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(usize::try_from(n).unwrap_or(0))
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// True when both directions are finished: the peer sent end of file and our
    /// queue is flushed and shut down. The handler can close.
    pub fn is_done(&self) -> bool {
        self.eof && self.write_shut
    }

    /// Gives buffers back to the loop's pool. Call it before dropping a connection
    /// (e.g. in `on_close`) to keep the pool warm; dropping without it only frees.
    ///
    /// Output still queued for a peer that is not known to be gone is a
    /// truncation: the peer will see a clean end of file without it. That is logged
    /// (at most one line a second per loop) and counted in
    /// [`Stats::truncated_closes`](crate::Stats::truncated_closes). End a
    /// conversation with [`close_when_done`](Conn::close_when_done) to avoid it, or
    /// drop the queue on purpose first with
    /// [`clear_write_queue`](Conn::clear_write_queue) (an abort).
    pub fn release(&mut self, cx: &mut Loop<'_>) {
        self.release_read_buf(cx);
        let unsent = self.write_pending();
        if unsent > 0 && !self.broken {
            cx.core().stats.truncated_closes += 1;
            let peer = self.stream.peer_addr().ok();
            cx.warn_limited(format_args!(
                "connection to {} closed with {} bytes of output unsent (truncated); \
                 end conversations with close_when_done",
                peer.map_or_else(|| "?".to_string(), |a| a.to_string()),
                unsent
            ));
        }
        let b = std::mem::take(&mut self.wbuf);
        cx.core().bufs.put(b);
        if let Some(f) = self.filter.as_mut() {
            let (win, wout) = (std::mem::take(&mut f.win), std::mem::take(&mut f.wout));
            cx.core().bufs.put(win);
            cx.core().bufs.put(wout);
        }
    }

    /// `fill` through the filter: wire bytes from the socket to the filter, its
    /// plaintext to the read buffer (dropped when `discard`), and whatever the
    /// filter answers (a handshake) to the socket. Cold: only filtered connections
    /// come here.
    #[inline(never)]
    fn fill_filtered(&mut self, cx: &mut Loop<'_>, discard: bool) -> io::Result<ReadStatus> {
        let mut st = ReadStatus {
            bytes: 0,
            eof: self.eof,
        };
        if discard {
            // Everything, what is buffered now included, is dropped (as
            // `discard_input`): a full buffer kept would offer the filter no room,
            // and the read would be re-queued forever.
            self.rbuf.clear();
            self.scanned = 0;
        }
        if self.eof {
            return Ok(st);
        }
        if self.connecting && !self.poll_connect()? {
            return Ok(st);
        }
        if !discard {
            if self.paused || self.self_paused {
                return Ok(st);
            }
            if self.cfg.pause_on_own_queue && self.write_pending() >= self.cfg.high_watermark {
                self.self_paused = true;
                return Ok(st);
            }
        }
        let r = self.filtered_read(cx, discard, &mut st);
        if r.is_err() {
            self.broken = true;
        }
        r?;
        // A handshake answers what it read: send it now, before the loop sleeps.
        // A handshake that just finished may also release plaintext queued while
        // it ran, or a close asked for meanwhile (a TLS 1.3 server that sends no
        // tickets has no output of its own then).
        if self.filter.as_ref().is_some_and(|f| {
            f.f.wants_output()
                || (!f.f.is_handshaking()
                    && (!self.wbuf.is_empty() || (self.shutdown_requested && !f.closed)))
        }) {
            // Its congestion report is kept for the handler's own flush.
            if self.flush_filtered(cx)? {
                self.congested = true;
            }
        }
        if self.rbuf.is_empty() {
            self.release_read_buf(cx);
        }
        Ok(st)
    }

    fn filtered_read(
        &mut self,
        cx: &mut Loop<'_>,
        discard: bool,
        st: &mut ReadStatus,
    ) -> io::Result<()> {
        if self.filter.as_ref().is_some_and(|f| f.direct) {
            return self.direct_read(cx, discard, st);
        }
        let Some(flt) = self.filter.as_mut() else {
            return Ok(());
        };
        let mut wire = 0usize;
        let mut wire_eof = false;
        // Stopped before `WouldBlock` (budget, full buffer): no new edge will come
        // for what the socket still holds.
        let mut more_wire = false;
        // Wire bytes in, to `WouldBlock`, end of file or the budget. Unlike
        // plaintext reads, no short-read shortcut: one more read per event, for
        // the few connections that are filtered.
        loop {
            cx.core().bufs.refill(&mut flt.win);
            if flt.win.len() == flt.win.capacity() {
                // The filter did not take what is buffered yet: give it a turn.
                more_wire = true;
                break;
            }
            let spare = flt.win.spare_capacity_mut();
            let want = spare
                .len()
                .min(self.cfg.read_budget.saturating_sub(wire).max(1));
            match rustix::io::read(&self.stream, &mut spare[..want]) {
                Ok(([], _)) => {
                    wire_eof = true;
                    break;
                }
                Ok((init, _)) => {
                    let n = init.len();
                    // SAFETY: the kernel initialised the first `n` bytes of spare
                    // capacity (reviewed: as in `fill`).
                    #[allow(unsafe_code)]
                    unsafe {
                        flt.win.set_len(flt.win.len() + n)
                    };
                    wire += n;
                    if wire >= self.cfg.read_budget {
                        more_wire = true;
                        break;
                    }
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        cx.core().stats.bytes_in += wire as u64;
        // Wire bytes to the filter, plaintext out, until neither moves.
        let mut plain_left = false;
        loop {
            let mut moved = false;
            if !flt.win.is_empty() {
                let n = flt.f.input(&flt.win)?;
                if n > 0 {
                    moved = true;
                    if n >= flt.win.len() {
                        flt.win.clear();
                    } else {
                        flt.win.advance(n);
                    }
                }
            }
            if flt.win.is_empty() && wire_eof {
                flt.f.input_eof()?;
            }
            let got = take_plain(
                &mut *flt.f,
                &mut self.rbuf,
                &mut self.scanned,
                &self.cfg,
                &mut cx.core().bufs,
                discard,
                st,
            )?;
            moved |= got.bytes > 0;
            if got.eof {
                self.eof = true;
                st.eof = true;
                break;
            }
            if got.more {
                // The read buffer is full: the handler consumes, then this runs
                // again for what the filter still holds (no new edge will come).
                cx.requeue(Event::readable(self.source));
                plain_left = true;
                break;
            }
            if !moved {
                break;
            }
        }
        if wire_eof && !self.eof && !plain_left && flt.win.is_empty() {
            // The socket ended and the filter did not say the stream did (and
            // holds nothing more: its plaintext comes first, the end after it).
            self.eof = true;
            st.eof = true;
        }
        if more_wire || !flt.win.is_empty() {
            // Wire bytes left in the socket or not taken by the filter yet: no new
            // edge will come for them.
            cx.requeue(Event::readable(self.source));
        }
        Ok(())
    }

    /// [`filtered_read`](Conn::filtered_read) for a filter that reads the socket
    /// itself: wire bytes go from the socket into the filter's buffer (no copy
    /// through ours), and plaintext out after each read, to `WouldBlock`, end of
    /// file, the budget, or a full read buffer.
    fn direct_read(
        &mut self,
        cx: &mut Loop<'_>,
        discard: bool,
        st: &mut ReadStatus,
    ) -> io::Result<()> {
        let Some(flt) = self.filter.as_mut() else {
            return Ok(());
        };
        let budget = self.cfg.read_budget.max(1);
        let mut wire = 0usize;
        let result = loop {
            let mut socket = SocketRead {
                stream: &self.stream,
                limit: budget - wire,
            };
            let (mut blocked, mut full, mut wire_eof) = (false, false, false);
            match flt.f.read_wire(&mut socket) {
                Ok(WireRead::Data(n)) => wire += n,
                Ok(WireRead::Eof) => wire_eof = true,
                Ok(WireRead::Full) => full = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
            let got = match take_plain(
                &mut *flt.f,
                &mut self.rbuf,
                &mut self.scanned,
                &self.cfg,
                &mut cx.core().bufs,
                discard,
                st,
            ) {
                Ok(x) => x,
                Err(e) => break Err(e),
            };
            if got.more && !got.eof {
                // The read buffer is full: the handler consumes, then this runs
                // again for what the filter and the socket still hold. An end of
                // the socket waits until then: it comes after that plaintext.
                cx.requeue(Event::readable(self.source));
                break Ok(());
            }
            if got.eof || wire_eof {
                // A socket end the filter did not call the stream's end is one too.
                self.eof = true;
                st.eof = true;
                break Ok(());
            }
            if full && got.bytes == 0 {
                // The filter's own buffer is full and gave nothing: a turn for the
                // handler, then this runs again.
                cx.requeue(Event::readable(self.source));
                break Ok(());
            }
            if blocked {
                break Ok(());
            }
            if wire >= budget {
                // Stopped by the budget: no new edge will come for the rest.
                cx.requeue(Event::readable(self.source));
                break Ok(());
            }
        };
        cx.core().stats.bytes_in += wire as u64;
        result
    }

    /// `flush` through the filter: plaintext into the filter, its wire bytes to the
    /// socket (one send of at most the write budget, as `flush`), then its close
    /// and our FIN once everything is out and a shutdown was asked for.
    #[inline(never)]
    fn flush_filtered(&mut self, cx: &mut Loop<'_>) -> io::Result<bool> {
        let r = self.flush_filtered_inner(cx);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn flush_filtered_inner(&mut self, cx: &mut Loop<'_>) -> io::Result<bool> {
        let Some(flt) = self.filter.as_mut() else {
            return Ok(false);
        };
        // The filter holds a bounded amount of plaintext, so the queue may have to
        // go through it in several rounds: plaintext in, wire bytes out, sent; again
        // until the socket is full, the budget spent, or nothing is left.
        let budget = self.cfg.write_budget.max(1);
        let mut sent_total = 0usize;
        if self.wbuf.len() + flt.wout.len() >= self.cfg.high_watermark {
            self.congested = true;
        }
        // Plaintext waits in the queue until the handshake is done: a filter
        // would only hold it back, and a close asked for meanwhile would overtake it.
        let handshaking = flt.f.is_handshaking();
        loop {
            cx.core().bufs.refill(&mut flt.wout);
            // Only as much plaintext as fits, encrypted, in the room `wout` has
            // (growing a pool-sized buffer past it would reallocate, past the
            // allocator's mmap threshold, on every round), and no more than the
            // budget has left.
            let room = flt.wout.capacity() - flt.wout.len();
            // Written straight to the socket, the records pass through `wout` only
            // if the socket refuses them, so a whole buffer's worth of plaintext
            // may go in: a 64 KiB message is one `sendmsg`, not a second one for
            // the overhead's worth of its tail. (`wout` grows past the pool's size
            // only then, on a full socket.)
            let direct = flt.direct && flt.wout.is_empty();
            let mut fits = if direct {
                room
            } else {
                room.saturating_sub(flt.f.overhead(room))
            }
            .min(budget.saturating_sub(sent_total));
            while !handshaking && !self.wbuf.is_empty() && fits > 0 {
                let take = self.wbuf.len().min(fits);
                let n = flt.f.write_plain(&self.wbuf[..take])?;
                if n == 0 {
                    break;
                }
                fits -= n;
                if n >= self.wbuf.len() {
                    self.wbuf.clear();
                } else {
                    self.wbuf.advance(n);
                }
            }
            if self.shutdown_requested && self.wbuf.is_empty() && !flt.closed && !handshaking {
                flt.closed = true;
                flt.f.close();
            }
            if flt.direct && flt.wout.is_empty() && flt.f.wants_output() {
                // Straight from the filter to the socket, no copy through `wout`.
                let mut blocked = false;
                while flt.f.wants_output() && sent_total < budget {
                    match flt.f.write_wire(&mut SocketWrite(&self.stream)) {
                        Ok(0) => {
                            blocked = true;
                            break;
                        }
                        Ok(n) => {
                            cx.core().stats.bytes_out += n as u64;
                            sent_total += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                // What the socket did not take waits in `wout`, where it is counted
                // (it fits: the plaintext was bounded by `wout`'s room).
                if flt.f.wants_output() {
                    flt.f.output(&mut flt.wout)?;
                }
                if blocked {
                    break; // the socket is full: a writable edge will come
                }
                if sent_total >= budget {
                    if !flt.wout.is_empty() || !self.wbuf.is_empty() {
                        // Stopped by the budget with room left: no edge will come.
                        cx.requeue(Event::writable(self.source));
                    }
                    break;
                }
                if self.wbuf.is_empty() && flt.wout.is_empty() {
                    break;
                }
                continue;
            }
            if flt.f.wants_output() {
                flt.f.output(&mut flt.wout)?;
            }
            if self.wbuf.len() + flt.wout.len() >= self.cfg.high_watermark {
                self.congested = true;
            }
            if flt.wout.is_empty() {
                break;
            }
            let queued = flt.wout.len();
            let want = queued.min(budget - sent_total);
            let sent = loop {
                match rustix::net::send(&self.stream, &flt.wout[..want], SEND_FLAGS) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "socket accepted no bytes",
                        ));
                    }
                    Ok(n) => break n,
                    Err(Errno::AGAIN) => break 0,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            };
            cx.core().stats.bytes_out += sent as u64;
            sent_total += sent;
            if sent == queued {
                flt.wout.clear();
            } else {
                flt.wout.advance(sent);
            }
            if sent < want {
                break; // the socket is full: a writable edge will come
            }
            if sent_total >= budget {
                // Stopped by the budget with room left: no edge will come.
                cx.requeue(Event::writable(self.source));
                break;
            }
        }
        if flt.wout.is_empty() && flt.wout.capacity() != 0 {
            let b = std::mem::take(&mut flt.wout);
            cx.core().bufs.put(b);
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() != 0 {
            let b = std::mem::take(&mut self.wbuf);
            cx.core().bufs.put(b);
        }
        let pending = self.wbuf.len() + flt.wout.len();
        let closed = flt.closed && !flt.f.wants_output();
        if pending == 0 {
            // Everything is out, the filter's close included: our FIN may follow.
            self.lift_self_pause(cx);
            if self.shutdown_requested && closed && !self.write_shut {
                self.write_shut = true;
                match self.stream.shutdown(Shutdown::Write) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Err(e),
                }
            }
        } else if pending <= self.cfg.low_watermark {
            self.lift_self_pause(cx);
        } else {
            return Ok(false);
        }
        Ok(self.take_congested())
    }
}

/// Plaintext from a filter into the read buffer, into the room the buffer has:
/// growing it (past the allocator's mmap threshold, for a pool-sized buffer) on
/// every read would cost far more than the copy. Only a frame larger than the
/// buffer makes it grow, up to `max_read_buffer`, as in `fill`: a buffer that was
/// already full when this `fill` began (the handler could not consume it). One
/// filled during this `fill` is left for the handler to consume first (room 0:
/// the caller re-queues the read), or every pipelined burst that filled it would
/// grow it, copying it whole. Returns what the filter gave: `more` means the
/// buffer is full and the filter holds more.
fn take_plain(
    f: &mut dyn StreamFilter,
    rbuf: &mut BytesMut,
    scanned: &mut usize,
    cfg: &ConnConfig,
    pool: &mut BufPool,
    discard: bool,
    st: &mut ReadStatus,
) -> io::Result<PlainRead> {
    pool.refill(rbuf);
    let len = rbuf.len();
    if !discard && len == rbuf.capacity() && st.bytes == 0 {
        if len >= cfg.max_read_buffer {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "read buffer full and not consumed (a frame larger than max_read_buffer?)",
            ));
        }
        rbuf.reserve(len.min(cfg.max_read_buffer - len).max(1));
    }
    let room = rbuf.capacity() - rbuf.len();
    let got = f.read_plain(rbuf, room)?;
    if got.bytes > 0 {
        if discard {
            rbuf.clear();
            *scanned = 0;
        } else {
            st.bytes += got.bytes;
        }
    }
    Ok(got)
}

/// The socket as `io::Read`, for a filter that reads it itself: at most `limit`
/// bytes per read (the rest of the read budget).
struct SocketRead<'a> {
    stream: &'a TcpStream,
    limit: usize,
}

impl io::Read for SocketRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.limit.max(1));
        loop {
            match rustix::io::read(self.stream, &mut buf[..n]) {
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The socket as `io::Write`, for a filter that writes to it itself: one `send`,
/// or one `sendmsg` of all the filter's chunks, without `SIGPIPE`.
struct SocketWrite<'a>(&'a TcpStream);

impl io::Write for SocketWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(self.0, buf, SEND_FLAGS)?)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        Ok(rustix::net::sendmsg(
            self.0,
            bufs,
            &mut control,
            SEND_FLAGS,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends `data` to a write queue, taking a buffer from the loop's pool if the
/// queue holds none.
#[inline(always)]
pub(crate) fn queue_into(wbuf: &mut BytesMut, cx: &mut Loop<'_>, data: &[u8]) {
    if wbuf.capacity() == 0 {
        // No allocation (see `fill`): nothing to give back first.
        *wbuf = cx.core().bufs.get();
    }
    wbuf.extend_from_slice(data);
}

/// An idle timeout for a connection, pushed back for (almost) nothing on every read.
///
/// [`touch`](IdleTimeout::touch) only records the loop's time; no timer moves. The
/// timer is set for the full idle time and, when it fires,
/// [`expired`](IdleTimeout::expired) checks the last activity: if there was some,
/// it re-arms for the rest of the idle time and says no. So an active connection
/// costs one store per read and one timer event per idle period, and 100k live
/// timeouts never churn the timer heap.
///
/// ```
/// # use reactor::{Context, HandlerResult, IdleTimeout, TimerId};
/// # use std::time::Duration;
/// struct S { idle: IdleTimeout }
/// impl reactor::Handler for S {
///     type Message = ();
///     type Job = ();
///     fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
///         self.idle.start(cx);
///         Ok(())
///     }
///     fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: u8) -> HandlerResult {
///         self.idle.touch(cx);
///         Ok(())
///     }
///     fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
///         if self.idle.expired(cx, t) { cx.close(); }
///         Ok(())
///     }
/// }
/// # let _ = S { idle: IdleTimeout::new(Duration::from_secs(30)) };
/// ```
#[derive(Debug, Clone)]
pub struct IdleTimeout {
    after: Duration,
    timer: Option<TimerId>,
    last: Option<Instant>,
}

impl IdleTimeout {
    /// A timeout that fires after `after` without activity.
    pub fn new(after: Duration) -> IdleTimeout {
        IdleTimeout {
            after,
            timer: None,
            last: None,
        }
    }

    /// Arms the timeout: it expires `after` from now unless touched.
    pub fn start(&mut self, cx: &mut Loop<'_>) {
        if let Some(t) = self.timer.take() {
            cx.cancel_timer(t);
        }
        self.last = Some(cx.now());
        self.timer = Some(cx.timer_once(self.after));
    }

    /// Records activity: the timeout now expires `after` from now. Arms it if it is
    /// not armed (never started, expired or stopped).
    #[inline]
    pub fn touch(&mut self, cx: &mut Loop<'_>) {
        self.last = Some(cx.now());
        if self.timer.is_none() {
            self.timer = Some(cx.timer_once(self.after));
        }
    }

    /// Call from `on_timer`: true if `timer` is this timeout's and the connection
    /// really has been idle for the whole time (close it then). If there was
    /// activity since the timer was set, the timer is re-armed for the rest of the
    /// idle time and the answer is false; for other timers it is false too.
    pub fn expired(&mut self, cx: &mut Loop<'_>, timer: TimerId) -> bool {
        if self.timer != Some(timer) {
            return false;
        }
        self.timer = None; // one-shot: it has fired
        let now = cx.now();
        let idle_for = self
            .last
            .map_or(self.after, |l| now.saturating_duration_since(l));
        if idle_for >= self.after {
            return true;
        }
        self.timer = Some(cx.timer_once(self.after - idle_for));
        false
    }

    /// Disarms the timeout.
    pub fn stop(&mut self, cx: &mut Loop<'_>) {
        if let Some(t) = self.timer.take() {
            cx.cancel_timer(t);
        }
    }

    /// The configured idle time.
    pub fn duration(&self) -> Duration {
        self.after
    }
}
