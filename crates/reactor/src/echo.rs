//! The echo protocol: every byte received is sent back.
//!
//! The reference server for the load generator and the benchmarks, and the smallest
//! complete example of a [`Conn`]-based handler. It must stay minimal: whatever it
//! does per message, every benchmark pays.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;

use crate::CloseReason;
use crate::conn::{Conn, ConnConfig, IdleTimeout};
use crate::filter::FilterFactory;
use crate::framed::{self, Framed, FramedConfig, Link, Protocol};
use crate::framing::Framing;
use crate::listener::{ListenOptions, Listener};
use crate::timer::TimerId;
use crate::{Context, Loop};
use crate::{Event, Handler, HandlerResult};

/// How long an ending conversation waits for the client to take the last echoes
/// and close its side.
const LINGER: Duration = Duration::from_secs(2);

/// One echo connection.
#[derive(Debug)]
pub struct EchoConn {
    conn: Conn,
    idle: IdleTimeout,
    /// Why the conversation is ending (it is, once set), and its linger timer.
    ending: Option<(CloseReason, Option<TimerId>)>,
}

impl EchoConn {
    /// An echo handler for an accepted stream, closed after `idle` without traffic.
    pub fn new(stream: TcpStream, cfg: ConnConfig, idle: Duration) -> EchoConn {
        EchoConn::with_conn(Conn::new(stream, 0, cfg), idle)
    }

    /// An echo handler for a connection made by the caller (one with a filter).
    pub fn with_conn(conn: Conn, idle: Duration) -> EchoConn {
        EchoConn {
            conn,
            idle: IdleTimeout::new(idle),
            ending: None,
        }
    }

    /// Ends the conversation with [`Conn::close_when_done`]: echoes still queued
    /// are delivered, then end of file, then the connection closes once the client
    /// has closed its side too (or after [`LINGER`]).
    fn end(&mut self, cx: &mut Loop<'_>, reason: CloseReason) -> io::Result<()> {
        if self.ending.is_none() {
            let linger = (reason != CloseReason::PeerClosed).then(|| cx.timer_once(LINGER));
            self.ending = Some((reason, linger));
            self.idle.stop(cx);
            self.conn.close_when_done(cx)?;
        }
        Ok(())
    }

    /// One pass for any event: read if the event says there may be something to
    /// read (or an error to collect), echo it, write what is queued. Handling
    /// readable and writable in one place means one flush per event, not two.
    fn pump(&mut self, cx: &mut Loop<'_>, ev: Event) -> io::Result<()> {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            let st = self.conn.fill(cx)?;
            if st.bytes > 0 {
                self.idle.touch(cx);
                self.conn.echo_read_buf();
            }
            if st.eof {
                // Half-close: the client finished sending; finish our replies, then
                // FIN (once the queue drains).
                self.end(cx, CloseReason::PeerClosed)?;
            }
        }
        self.conn.flush(cx)?;
        if self.conn.is_done() {
            let reason = self.ending.map_or(CloseReason::PeerClosed, |(r, _)| r);
            cx.close_with(reason);
        }
        Ok(())
    }
}

impl Handler for EchoConn {
    type Message = ();
    type Job = ();

    fn name(&self) -> &str {
        "EchoConn"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.conn.register(cx)?;
        self.idle.start(cx);
        Ok(())
    }

    fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
        Ok(self.pump(cx, ev)?)
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if let Some((reason, Some(linger))) = self.ending
            && linger == t
        {
            cx.close_with(reason);
        } else if self.idle.expired(cx, t) {
            log::debug!(
                "echo connection idle for {:?}; closing",
                self.idle.duration()
            );
            self.end(cx, CloseReason::IdleTimeout)?;
            if self.conn.is_done() {
                cx.close_with(CloseReason::IdleTimeout);
            }
        }
        Ok(())
    }

    // No `on_shutdown`: an echo connection is served until its client finishes or
    // the loop's drain deadline passes (the listener stops taking new ones).

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        self.conn.release(cx);
    }
}

/// Settings of an echo server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EchoOptions {
    /// Listener settings (connection cap, `SO_REUSEPORT`, ...). Default
    /// [`ListenOptions::default`].
    pub listen: ListenOptions,
    /// Per-connection buffer limits. Default: [`ConnConfig::default`] with a high
    /// watermark of 1 byte and a low one of 0 (read only once the previous echo is
    /// out; see the comment in `Default`).
    pub conn: ConnConfig,
    /// Idle connections are closed after this long. Default 300 s.
    pub idle_timeout: Duration,
    /// A filter for every connection (TLS). Default none.
    pub filter: Option<FilterFactory>,
}

impl Default for EchoOptions {
    fn default() -> EchoOptions {
        EchoOptions {
            listen: ListenOptions::default(),
            // Read only once the previous echo is out (as a blocking echo or tokio's
            // `read` + `write_all` does): a client that sends faster than it reads
            // is held back by TCP, and the server never copies new bytes behind
            // unsent ones or grows a buffer past the pool's size. Measured in the
            // bulk scenario: the copies and the larger buffers they made cost about
            // a quarter more CPU per byte in the kernel (cache misses on the copies).
            conn: ConnConfig {
                high_watermark: 1,
                low_watermark: 0,
                ..ConnConfig::default()
            },
            idle_timeout: Duration::from_secs(300),
            filter: None,
        }
    }
}

impl EchoOptions {
    /// Sets [`EchoOptions::listen`].
    pub fn listen(mut self, v: ListenOptions) -> EchoOptions {
        self.listen = v;
        self
    }
    /// Sets [`EchoOptions::conn`].
    pub fn conn(mut self, v: ConnConfig) -> EchoOptions {
        self.conn = v;
        self
    }
    /// Sets [`EchoOptions::filter`].
    pub fn filter(mut self, f: FilterFactory) -> EchoOptions {
        self.filter = Some(f);
        self
    }
    /// Sets [`EchoOptions::idle_timeout`].
    pub fn idle_timeout(mut self, v: Duration) -> EchoOptions {
        self.idle_timeout = v;
        self
    }
}

/// The echo protocol on the framed layer ([`crate::framed`]): every frame of
/// [`Framing::Raw`] (whatever arrived) is queued back.
/// Not the benchmark server ([`EchoConn`] is): it measures what the framed layer
/// costs per message over a hand-written handler (`echo --framed`).
#[derive(Debug)]
pub struct FramedEcho;

impl Protocol for FramedEcho {
    type Message = ();
    type Job = ();

    fn on_frame(&mut self, link: &mut Link<'_, Self>, data: &[u8]) -> HandlerResult {
        link.send(data);
        Ok(())
    }
}

/// Binds a [`FramedEcho`] listener on `addr` with the same settings as
/// [`echo_listener`].
// The factory's type cannot be named (a closure), so the return type spells it out.
#[allow(clippy::type_complexity)]
pub fn framed_echo_listener(
    addr: SocketAddr,
    opts: EchoOptions,
) -> io::Result<
    Listener<impl FnMut(TcpStream, SocketAddr) -> Option<Framed<FramedEcho>> + Send + 'static>,
> {
    let mut cfg = FramedConfig::default()
        .conn(opts.conn)
        .idle_timeout(Some(opts.idle_timeout))
        .listen(opts.listen);
    cfg.filter = opts.filter;
    framed::listen(addr, Framing::Raw, cfg, |_peer| Some(FramedEcho))
}

/// Binds an echo listener on `addr`; spawn it on a reactor and read its
/// [`Listener::local_addr`].
pub fn echo_listener(
    addr: SocketAddr,
    opts: EchoOptions,
) -> io::Result<Listener<impl FnMut(TcpStream, SocketAddr) -> Option<EchoConn> + 'static>> {
    let conn_cfg = opts.conn;
    let idle = opts.idle_timeout;
    let filter = opts.filter;
    Listener::bind(addr, opts.listen, move |stream, peer| {
        let mut conn = Conn::new(stream, 0, conn_cfg);
        if let Some(f) = &filter {
            match f.make() {
                Ok(f) => conn = conn.with_filter(f),
                Err(e) => {
                    log::warn!("cannot start the filter for {peer}: {e}; refusing it");
                    return None;
                }
            }
        }
        Some(EchoConn::with_conn(conn, idle))
    })
}
