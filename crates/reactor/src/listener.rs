//! Listening sockets and the acceptor handler.
//!
//! [`bind`] creates a non-blocking listening socket through `socket2` (port 0 is
//! fine: the OS picks, and [`Listener::local_addr`] reports it; we never probe for a
//! free port). [`Listener`] is the acceptor handler: it accepts until `WouldBlock`
//! under a per-event budget, hands each connection to a factory that makes its
//! handler, caps the number of open connections, and when the process runs out of
//! file descriptors it pauses and retries on a timer instead of spinning.
//!
//! It must not know what the connections do.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::Interest;
use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use crate::timer::TimerId;
use crate::{CloseReason, Event, Handler, HandlerId, HandlerResult, SourceId};
use crate::{Context, Loop};

/// Connections accepted per readiness event before yielding to other handlers.
const ACCEPT_BUDGET: usize = 128;

/// How to bind and run a listener. The default of each field is in its doc.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenOptions {
    /// Set `SO_REUSEPORT` so several loops (threads or processes) share one port and
    /// the kernel spreads connections across them. Default `false`.
    pub reuse_port: bool,
    /// The `listen` backlog. Default 1024.
    pub backlog: i32,
    /// Open connections at most; at the cap, accepting pauses (new connections wait
    /// in the kernel's backlog) until one closes. Default 100,000.
    pub max_connections: usize,
    /// After `EMFILE`/`ENFILE`, wait this long before accepting again. Default
    /// 100 ms.
    pub retry_after: Duration,
    /// Set `TCP_NODELAY` on accepted sockets (small messages go out at once).
    /// Default `true`.
    pub nodelay: bool,
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions {
            reuse_port: false,
            backlog: 1024,
            max_connections: 100_000,
            retry_after: Duration::from_millis(100),
            nodelay: true,
        }
    }
}

impl ListenOptions {
    /// Sets [`ListenOptions::reuse_port`].
    pub fn reuse_port(mut self, v: bool) -> ListenOptions {
        self.reuse_port = v;
        self
    }
    /// Sets [`ListenOptions::backlog`].
    pub fn backlog(mut self, v: i32) -> ListenOptions {
        self.backlog = v;
        self
    }
    /// Sets [`ListenOptions::max_connections`].
    pub fn max_connections(mut self, v: usize) -> ListenOptions {
        self.max_connections = v;
        self
    }
    /// Sets [`ListenOptions::retry_after`].
    pub fn retry_after(mut self, v: Duration) -> ListenOptions {
        self.retry_after = v;
        self
    }
    /// Sets [`ListenOptions::nodelay`].
    pub fn nodelay(mut self, v: bool) -> ListenOptions {
        self.nodelay = v;
        self
    }
}

/// Binds a non-blocking TCP listening socket (IPv4 or IPv6) with `SO_REUSEADDR`,
/// and `SO_REUSEPORT` if asked.
pub fn bind(addr: SocketAddr, opts: &ListenOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(opts.backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Errors about one incoming connection that say nothing about the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// The acceptor: spawns one handler per accepted connection.
///
/// `factory(stream, peer)` returns the connection's handler, or `None` to refuse it
/// (the socket is closed).
pub struct Listener<F> {
    listener: TcpListener,
    local: SocketAddr,
    opts: ListenOptions,
    factory: F,
    open: usize,
    at_cap: bool,
    retry: Option<TimerId>,
    accepted: u64,
    refused: u64,
}

const LISTENER: SourceId = 0;

impl<F, H> Listener<F>
where
    F: FnMut(TcpStream, SocketAddr) -> Option<H> + 'static,
    H: Handler,
{
    /// Binds `addr` and makes an acceptor around it.
    pub fn bind(addr: SocketAddr, opts: ListenOptions, factory: F) -> io::Result<Listener<F>> {
        let listener = bind(addr, &opts)?;
        Listener::from_listener(listener, opts, factory)
    }

    /// An acceptor around an already bound listener.
    pub fn from_listener(
        listener: TcpListener,
        opts: ListenOptions,
        factory: F,
    ) -> io::Result<Listener<F>> {
        let local = listener.local_addr()?;
        Ok(Listener {
            listener,
            local,
            opts,
            factory,
            open: 0,
            at_cap: false,
            retry: None,
            accepted: 0,
            refused: 0,
        })
    }

    /// The address the socket is bound to, with the port the OS chose.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn accept_some(&mut self, cx: &mut Loop<'_>) -> HandlerResult {
        if self.retry.is_some() || cx.is_shutting_down() {
            return Ok(());
        }
        for _ in 0..ACCEPT_BUDGET {
            if self.open >= self.opts.max_connections {
                if !self.at_cap {
                    log::warn!(
                        "listener {}: {} connections open (the maximum); pausing accepts",
                        self.local,
                        self.open
                    );
                }
                self.at_cap = true;
                return Ok(());
            }
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.opts.nodelay
                        && let Err(e) = stream.set_nodelay(true)
                    {
                        log::debug!("TCP_NODELAY on {peer}: {e}");
                    }
                    match (self.factory)(stream, peer) {
                        Some(h) => {
                            cx.spawn(h);
                            self.open += 1;
                            self.accepted += 1;
                            let stats = cx.stats_mut();
                            stats.connections_accepted += 1;
                            stats.connections_open += 1;
                        }
                        None => {
                            self.refused += 1;
                            cx.stats_mut().connections_refused += 1;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if is_fd_exhaustion(&e) => {
                    log::warn!(
                        "listener {}: {e}; pausing accepts for {:?} ({} connections open)",
                        self.local,
                        self.opts.retry_after,
                        self.open
                    );
                    self.retry = Some(cx.timer_once(self.opts.retry_after));
                    return Ok(());
                }
                Err(e) if is_per_connection(&e) => {
                    log::debug!("listener {}: accept: {e}", self.local);
                }
                Err(e) => {
                    // Unknown trouble: back off like for EMFILE rather than spin.
                    log::error!(
                        "listener {}: accept failed: {e}; retrying later",
                        self.local
                    );
                    self.retry = Some(cx.timer_once(self.opts.retry_after));
                    return Ok(());
                }
            }
        }
        cx.requeue(Event::readable(LISTENER));
        Ok(())
    }
}

impl<F, H> Handler for Listener<F>
where
    F: FnMut(TcpStream, SocketAddr) -> Option<H> + 'static,
    H: Handler,
{
    type Message = ();
    type Job = ();

    fn name(&self) -> &str {
        "Listener"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.register(&mut self.listener, LISTENER, Interest::READABLE)?;
        log::debug!("listening on {}", self.local);
        Ok(())
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _source: SourceId) -> HandlerResult {
        self.accept_some(cx)
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) -> HandlerResult {
        if self.retry == Some(timer) {
            self.retry = None;
            log::info!("listener {}: retrying accepts", self.local);
            self.accept_some(cx)?;
        }
        Ok(())
    }

    fn on_child_closed(&mut self, cx: &mut Context<'_, Self>, _child: HandlerId) -> HandlerResult {
        self.open = self.open.saturating_sub(1);
        let stats = cx.stats_mut();
        stats.connections_open = stats.connections_open.saturating_sub(1);
        if self.at_cap && self.open < self.opts.max_connections {
            self.at_cap = false;
            // Connections waiting in the backlog made no new edge: accept them now.
            cx.requeue(Event::readable(LISTENER));
        }
        Ok(())
    }

    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        log::info!(
            "listener {}: closing ({} accepted, {} refused, {} open)",
            self.local,
            self.accepted,
            self.refused,
            self.open
        );
        // Its children's closes will not reach it any more: stop counting them.
        let stats = cx.stats_mut();
        stats.connections_open = stats.connections_open.saturating_sub(self.open as u64);
        cx.close_with(CloseReason::Shutdown);
        Ok(())
    }
}
