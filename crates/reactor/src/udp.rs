//! UDP sockets on the reactor.
//!
//! [`bind_udp`] creates a non-blocking UDP socket through `socket2` with the sharing
//! and broadcast options a discovery protocol needs. [`UdpConn`] is the datagram
//! counterpart of [`crate::Conn`]: it owns the socket, one receive buffer allocated
//! once, and a bounded send queue, and implements the hot-path rules once:
//!
//! - [`UdpConn::recv`] reads datagrams until `WouldBlock` under a per-event budget
//!   (in datagrams); when the budget stops it, the handler is re-queued with
//!   [`Context::requeue`], because edge-triggered polling sends no new event for
//!   datagrams already waiting;
//! - [`UdpConn::send_to`] sends at once; a send that would block is copied into the
//!   send queue (one reused byte buffer plus a ring of entries, so no allocation per
//!   datagram), and [`UdpConn::flush`] sends it on the next writable event. A full
//!   queue drops the datagram, returns [`SendOutcome::Dropped`], counts it in
//!   [`UdpStats::dropped_full`] and logs a warning (once per congestion episode):
//!   never silently.
//!
//! On Linux, loopback UDP never reports `WouldBlock` on send (the loopback driver
//! releases the sender's buffer space at once), so the queue mostly matters on real
//! interfaces; `crates/reactor/tests/udp.rs` drives it through a datagram socket pair that does
//! block.
//!
//! This module must not interpret datagrams: callers do (for discovery,
//! [`crate::discovery`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use mio::Interest;
use mio::net::UdpSocket;
use socket2::{Domain, Protocol, Socket, Type};

use crate::Loop;
use crate::{Event, SourceId};

/// Socket options for [`bind_udp`]. The default sets none of them (all `false`
/// or `None`: the kernel's defaults).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct UdpOptions {
    /// `SO_REUSEADDR`: several sockets (and processes) may bind the same address and
    /// port. Broadcast datagrams reach every one of them.
    pub reuse_addr: bool,
    /// `SO_REUSEPORT`: the same, restricted to sockets of the same user. Broadcasts
    /// still reach every socket of the group; *unicast* datagrams reach only one.
    pub reuse_port: bool,
    /// `SO_BROADCAST`: allow sending to a broadcast address (without it, such sends
    /// fail with `EACCES`).
    pub broadcast: bool,
    /// `SO_RCVBUF` in bytes, if set (the kernel caps it at `net.core.rmem_max`).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes, if set.
    pub send_buffer: Option<usize>,
}

impl UdpOptions {
    /// Sets [`UdpOptions::reuse_addr`].
    pub fn reuse_addr(mut self, v: bool) -> UdpOptions {
        self.reuse_addr = v;
        self
    }
    /// Sets [`UdpOptions::reuse_port`].
    pub fn reuse_port(mut self, v: bool) -> UdpOptions {
        self.reuse_port = v;
        self
    }
    /// Sets [`UdpOptions::broadcast`].
    pub fn broadcast(mut self, v: bool) -> UdpOptions {
        self.broadcast = v;
        self
    }
    /// Sets [`UdpOptions::recv_buffer`].
    pub fn recv_buffer(mut self, v: Option<usize>) -> UdpOptions {
        self.recv_buffer = v;
        self
    }
    /// Sets [`UdpOptions::send_buffer`].
    pub fn send_buffer(mut self, v: Option<usize>) -> UdpOptions {
        self.send_buffer = v;
        self
    }
}

/// Binds a non-blocking UDP socket (IPv4 or IPv6) with the given options.
pub fn bind_udp(addr: SocketAddr, opts: &UdpOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if opts.reuse_addr {
        socket.set_reuse_address(true)?;
    }
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if opts.broadcast {
        socket.set_broadcast(true)?;
    }
    if let Some(n) = opts.recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(n) = opts.send_buffer {
        socket.set_send_buffer_size(n)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// Limits of one [`UdpConn`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct UdpConfig {
    /// Largest datagram the caller accepts. The receive buffer is one byte larger,
    /// so a longer datagram is detected (and reported as truncated) rather than
    /// silently cut.
    /// Default 65,507 (the largest UDP payload over IPv4).
    pub max_datagram: usize,
    /// Datagrams read per readiness event before yielding to other handlers.
    /// Default 64.
    pub recv_budget: usize,
    /// Queued datagrams sent per writable event before yielding. Default 64.
    pub send_budget: usize,
    /// Datagrams the send queue holds at most. Default 256.
    pub queue_datagrams: usize,
    /// Bytes the send queue holds at most. Default 256 KiB.
    pub queue_bytes: usize,
}

impl Default for UdpConfig {
    fn default() -> UdpConfig {
        UdpConfig {
            max_datagram: 65_507,
            recv_budget: 64,
            send_budget: 64,
            queue_datagrams: 256,
            queue_bytes: 256 * 1024,
        }
    }
}

impl UdpConfig {
    /// Sets [`UdpConfig::max_datagram`].
    pub fn max_datagram(mut self, v: usize) -> UdpConfig {
        self.max_datagram = v;
        self
    }
    /// Sets [`UdpConfig::recv_budget`].
    pub fn recv_budget(mut self, v: usize) -> UdpConfig {
        self.recv_budget = v;
        self
    }
    /// Sets [`UdpConfig::send_budget`].
    pub fn send_budget(mut self, v: usize) -> UdpConfig {
        self.send_budget = v;
        self
    }
    /// Sets [`UdpConfig::queue_datagrams`].
    pub fn queue_datagrams(mut self, v: usize) -> UdpConfig {
        self.queue_datagrams = v;
        self
    }
    /// Sets [`UdpConfig::queue_bytes`].
    pub fn queue_bytes(mut self, v: usize) -> UdpConfig {
        self.queue_bytes = v;
        self
    }
}

/// What [`UdpConn::send_to`] did with a datagram.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Handed to the kernel.
    Sent,
    /// The socket would block (or earlier datagrams are still queued): copied into
    /// the send queue, to go out on a writable event.
    Queued,
    /// The send queue is full: dropped, counted and logged.
    Dropped,
}

/// Counters of one [`UdpConn`]; they only increase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams received that were longer than `max_datagram` (delivered cut, with
    /// the truncation flag set).
    pub truncated_in: u64,
    /// Receive errors skipped (e.g. `ECONNREFUSED` from an earlier unicast send).
    pub recv_errors: u64,
    /// Times the receive budget ran out and the handler was re-queued.
    pub recv_yields: u64,
    /// Datagrams handed to the kernel (directly or from the queue).
    pub datagrams_out: u64,
    /// Bytes handed to the kernel.
    pub bytes_out: u64,
    /// Datagrams that went through the send queue.
    pub queued: u64,
    /// Datagrams dropped because the send queue was full.
    pub dropped_full: u64,
    /// Datagrams the kernel refused (`EACCES`, `EMSGSIZE`, `ENETUNREACH`, ...).
    pub send_errors: u64,
}

/// Datagrams waiting to be sent: entries in a ring, payloads back to back in one
/// byte buffer that is reset whenever the queue empties (and compacted when the
/// tail reaches its end), so queuing allocates only when the queue is first used.
#[derive(Debug)]
struct SendQueue {
    entries: VecDeque<(Option<SocketAddr>, usize, usize)>,
    data: Vec<u8>,
    /// Bytes at the front of `data` already sent.
    head: usize,
    max_datagrams: usize,
    max_bytes: usize,
}

impl SendQueue {
    fn new(max_datagrams: usize, max_bytes: usize) -> SendQueue {
        SendQueue {
            entries: VecDeque::new(),
            data: Vec::new(),
            head: 0,
            max_datagrams,
            max_bytes,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn bytes(&self) -> usize {
        self.data.len() - self.head
    }

    /// Appends a copy of `payload`; false when it does not fit.
    fn push(&mut self, to: Option<SocketAddr>, payload: &[u8]) -> bool {
        if self.entries.len() >= self.max_datagrams || self.bytes() + payload.len() > self.max_bytes
        {
            return false;
        }
        if self.data.len() + payload.len() > self.max_bytes {
            self.compact();
        }
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(self.max_datagrams);
            self.data.reserve_exact(self.max_bytes);
        }
        self.entries.push_back((to, self.data.len(), payload.len()));
        self.data.extend_from_slice(payload);
        true
    }

    fn front(&self) -> Option<(Option<SocketAddr>, &[u8])> {
        self.entries
            .front()
            .map(|&(to, off, len)| (to, &self.data[off..off + len]))
    }

    fn pop(&mut self) {
        if let Some((_, off, len)) = self.entries.pop_front() {
            self.head = off + len;
        }
        if self.entries.is_empty() {
            self.data.clear();
            self.head = 0;
        }
    }

    /// Moves the unsent bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.head == 0 {
            return;
        }
        self.data.copy_within(self.head.., 0);
        self.data.truncate(self.data.len() - self.head);
        for e in &mut self.entries {
            e.1 -= self.head;
        }
        self.head = 0;
    }
}

/// A non-blocking UDP socket with a receive buffer and a bounded send queue. See
/// the module docs.
#[derive(Debug)]
pub struct UdpConn {
    socket: UdpSocket,
    source: SourceId,
    cfg: UdpConfig,
    rbuf: Box<[u8]>,
    queue: SendQueue,
    stats: UdpStats,
    /// A drop was logged since the queue was last empty (one warning per episode).
    drop_logged: bool,
}

/// What one [`UdpConn::recv`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvStatus {
    /// Datagrams delivered to the callback.
    pub datagrams: usize,
    /// The budget ran out before `WouldBlock`; the handler was re-queued.
    pub yielded: bool,
}

impl UdpConn {
    /// Wraps a bound non-blocking socket, to be registered under the handler's
    /// `source` number. Allocates the receive buffer (`max_datagram + 1` bytes).
    pub fn new(socket: UdpSocket, source: SourceId, cfg: UdpConfig) -> UdpConn {
        let cfg = UdpConfig {
            recv_budget: cfg.recv_budget.max(1),
            send_budget: cfg.send_budget.max(1),
            ..cfg
        };
        UdpConn {
            socket,
            source,
            rbuf: vec![0u8; cfg.max_datagram.saturating_add(1)].into_boxed_slice(),
            queue: SendQueue::new(cfg.queue_datagrams, cfg.queue_bytes),
            cfg,
            stats: UdpStats::default(),
            drop_logged: false,
        }
    }

    /// [`bind_udp`] then [`new`](UdpConn::new).
    pub fn bind(
        addr: SocketAddr,
        opts: &UdpOptions,
        source: SourceId,
        cfg: UdpConfig,
    ) -> io::Result<UdpConn> {
        Ok(UdpConn::new(bind_udp(addr, opts)?, source, cfg))
    }

    /// Registers the socket for readable and writable events, once (edge-triggered:
    /// interest never changes).
    pub fn register(&mut self, cx: &mut Loop<'_>) -> io::Result<()> {
        cx.register(
            &mut self.socket,
            self.source,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Removes the socket from the poller.
    pub fn deregister(&mut self, cx: &mut Loop<'_>) -> io::Result<()> {
        cx.deregister(&mut self.socket)
    }

    /// The socket (for options, `local_addr`, `connect`).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The source number this socket's events carry.
    pub fn source(&self) -> SourceId {
        self.source
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    /// Datagrams waiting in the send queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Bytes waiting in the send queue.
    pub fn queued_bytes(&self) -> usize {
        self.queue.bytes()
    }

    /// Receives datagrams until `WouldBlock` or the budget, calling
    /// `f(payload, from, truncated)` for each (`truncated`: the datagram was longer
    /// than `max_datagram`; `payload` then holds its first `max_datagram + 1`
    /// bytes). When the budget stops it, the handler is re-queued. Transient errors
    /// (`ECONNREFUSED` from an earlier send, `EINTR`) are counted and skipped; other
    /// errors are returned.
    pub fn recv(
        &mut self,
        cx: &mut Loop<'_>,
        mut f: impl FnMut(&[u8], SocketAddr, bool),
    ) -> io::Result<RecvStatus> {
        let mut st = RecvStatus::default();
        let mut bytes = 0u64;
        let result = loop {
            if st.datagrams >= self.cfg.recv_budget {
                self.stats.recv_yields += 1;
                st.yielded = true;
                cx.requeue(Event::readable(self.source));
                break Ok(());
            }
            match self.socket.recv_from(&mut self.rbuf) {
                Ok((n, from)) => {
                    st.datagrams += 1;
                    bytes += n as u64;
                    let truncated = n > self.cfg.max_datagram;
                    if truncated {
                        self.stats.truncated_in += 1;
                    }
                    f(&self.rbuf[..n], from, truncated);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if is_transient(&e) => self.stats.recv_errors += 1,
                Err(e) => break Err(e),
            }
        };
        self.stats.datagrams_in += st.datagrams as u64;
        self.stats.bytes_in += bytes;
        cx.core().stats.bytes_in += bytes;
        result.map(|()| st)
    }

    /// Sends `data` to `to`, or queues it if the socket would block (or datagrams
    /// are already queued, to keep order). Errors the kernel reports for this
    /// datagram (`EACCES` without `SO_BROADCAST`, `EMSGSIZE`, ...) are counted and
    /// returned; the socket stays usable.
    pub fn send_to(
        &mut self,
        cx: &mut Loop<'_>,
        data: &[u8],
        to: SocketAddr,
    ) -> io::Result<SendOutcome> {
        self.send_inner(cx, data, Some(to))
    }

    /// Like [`send_to`](UdpConn::send_to) for a connected socket.
    pub fn send(&mut self, cx: &mut Loop<'_>, data: &[u8]) -> io::Result<SendOutcome> {
        self.send_inner(cx, data, None)
    }

    fn send_inner(
        &mut self,
        cx: &mut Loop<'_>,
        data: &[u8],
        to: Option<SocketAddr>,
    ) -> io::Result<SendOutcome> {
        if self.queue.len() == 0 {
            match self.send_now(cx, data, to) {
                Ok(()) => return Ok(SendOutcome::Sent),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.enqueue(data, to))
    }

    fn enqueue(&mut self, data: &[u8], to: Option<SocketAddr>) -> SendOutcome {
        if self.queue.push(to, data) {
            self.stats.queued += 1;
            return SendOutcome::Queued;
        }
        self.stats.dropped_full += 1;
        if !self.drop_logged {
            self.drop_logged = true;
            let local = self.socket.local_addr().ok();
            log::warn!(
                "udp {local:?}: send queue full ({} datagrams, {} bytes; limits {} / {}): \
                 dropping {} bytes to {to:?}; {} dropped in total (warning once until it drains)",
                self.queue.len(),
                self.queue.bytes(),
                self.cfg.queue_datagrams,
                self.cfg.queue_bytes,
                data.len(),
                self.stats.dropped_full
            );
        }
        SendOutcome::Dropped
    }

    /// One send syscall, retried on `EINTR`; counts success and hard errors.
    fn send_now(
        &mut self,
        cx: &mut Loop<'_>,
        data: &[u8],
        to: Option<SocketAddr>,
    ) -> io::Result<()> {
        loop {
            let r = match to {
                Some(a) => self.socket.send_to(data, a),
                None => self.socket.send(data),
            };
            match r {
                Ok(n) if n == data.len() => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += n as u64;
                    cx.core().stats.bytes_out += n as u64;
                    return Ok(());
                }
                Ok(n) => {
                    self.stats.send_errors += 1;
                    return Err(io::Error::other(format!(
                        "datagram of {} bytes sent as {n}",
                        data.len()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    self.stats.send_errors += 1;
                    return Err(e);
                }
            }
        }
    }

    /// Sends queued datagrams until the queue is empty, the socket would block, or
    /// the budget is spent (then the handler is re-queued). Call it on every writable
    /// event. A queued datagram the kernel refuses is dropped (counted in
    /// [`UdpStats::send_errors`] and logged at debug level) and the rest go on.
    /// Returns true when the queue is empty.
    pub fn flush(&mut self, cx: &mut Loop<'_>) -> bool {
        let mut sent = 0;
        while self.queue.len() > 0 {
            if sent >= self.cfg.send_budget {
                cx.requeue(Event::writable(self.source));
                return false;
            }
            let (to, data) = self.queue.front().expect("queue is not empty");
            // The payload borrows the queue; send through the socket directly.
            let r = loop {
                let r = match to {
                    Some(a) => self.socket.send_to(data, a),
                    None => self.socket.send(data),
                };
                match r {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r.map(|n| (n, data.len())),
                }
            };
            match r {
                Ok((n, len)) => {
                    if n == len {
                        self.stats.datagrams_out += 1;
                        self.stats.bytes_out += n as u64;
                        cx.core().stats.bytes_out += n as u64;
                    } else {
                        self.stats.send_errors += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.stats.send_errors += 1;
                    log::debug!("udp: queued datagram to {to:?} refused: {e}; dropped");
                }
            }
            self.queue.pop();
            sent += 1;
        }
        self.drop_logged = false;
        true
    }
}

/// Errors that concern one earlier datagram, not the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], p)))
    }

    #[test]
    fn queue_keeps_order_and_bounds() {
        let mut q = SendQueue::new(3, 10);
        assert!(q.push(a(1), b"abc"));
        assert!(q.push(a(2), b"defg"));
        assert!(!q.push(a(3), b"hijk"), "11 bytes exceed the 10-byte limit");
        assert!(q.push(a(3), b"hij"));
        assert!(!q.push(a(4), b""), "datagram limit");
        assert_eq!((q.len(), q.bytes()), (3, 10));
        assert_eq!(q.front(), Some((a(1), &b"abc"[..])));
        q.pop();
        assert_eq!(q.front(), Some((a(2), &b"defg"[..])));
        assert_eq!(q.bytes(), 7);
        // The tail has reached the end of the buffer: pushing compacts it.
        assert!(q.push(a(5), b"xyz"));
        assert_eq!(q.data.len(), 10);
        q.pop();
        assert_eq!(q.front(), Some((a(3), &b"hij"[..])));
        q.pop();
        assert_eq!(q.front(), Some((a(5), &b"xyz"[..])));
        q.pop();
        assert_eq!((q.len(), q.bytes(), q.data.len()), (0, 0, 0));
        assert_eq!(q.front(), None);
    }

    #[test]
    fn queue_does_not_grow_when_cycled() {
        let mut q = SendQueue::new(8, 100);
        let payload = [7u8; 30];
        for i in 0..10_000 {
            // Keep the queue non-empty so it never resets: compaction must bound it.
            while q.push(a(1), &payload[..1 + i % 30]) {}
            assert!(q.data.len() <= 100 && q.entries.len() <= 8);
            q.pop();
        }
        assert!(q.data.capacity() <= 100 && q.entries.capacity() <= 16);
    }
}
