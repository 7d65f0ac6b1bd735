//! The echo protocol: every byte received is sent back.
//!
//! The reference server for the load generator and the benchmarks, and the smallest
//! complete example of a [`Conn`]-based handler. It must stay minimal: whatever it
//! does per message, every benchmark pays.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;

use crate::conn::{Conn, ConnConfig, IdleTimeout};
use crate::handler::{Event, Handler, HandlerResult};
use crate::listener::{ListenOptions, Listener};
use crate::reactor::Context;
use crate::timer::TimerId;

/// One echo connection.
#[derive(Debug)]
pub struct EchoConn {
    conn: Conn,
    idle: IdleTimeout,
}

impl EchoConn {
    /// An echo handler for an accepted stream, closed after `idle` without traffic.
    pub fn new(stream: TcpStream, cfg: ConnConfig, idle: Duration) -> EchoConn {
        EchoConn {
            conn: Conn::new(stream, 0, cfg),
            idle: IdleTimeout::new(idle),
        }
    }

    /// One pass for any event: read if the event says there may be something to
    /// read (or an error to collect), echo it, write what is queued. Handling
    /// readable and writable in one place means one flush per event, not two.
    fn pump(&mut self, cx: &mut Context<'_>, ev: Event) -> io::Result<()> {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            let st = self.conn.fill(cx)?;
            if st.bytes > 0 {
                self.idle.touch(cx);
                self.conn.echo_read_buf();
            }
            if st.eof && !self.conn.is_write_shut() {
                // Half-close: the client finished sending; finish our replies, then
                // FIN (once the queue drains).
                self.conn.shutdown_write(cx)?;
            }
        }
        self.conn.flush(cx)?;
        if self.conn.is_done() {
            cx.close();
        }
        Ok(())
    }
}

impl Handler for EchoConn {
    fn name(&self) -> &str {
        "EchoConn"
    }

    fn on_start(&mut self, cx: &mut Context<'_>) -> HandlerResult {
        self.conn.register(cx)?;
        self.idle.start(cx);
        Ok(())
    }

    fn on_event(&mut self, cx: &mut Context<'_>, ev: Event) -> HandlerResult {
        Ok(self.pump(cx, ev)?)
    }

    fn on_timer(&mut self, cx: &mut Context<'_>, t: TimerId) -> HandlerResult {
        if self.idle.expired(cx, t) {
            log::debug!(
                "echo connection idle for {:?}; closing",
                self.idle.duration()
            );
            cx.close();
        }
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_>) {
        self.conn.release(cx);
    }
}

/// Settings of an echo server.
#[derive(Clone, Debug)]
pub struct EchoOptions {
    /// Listener settings (connection cap, `SO_REUSEPORT`, ...).
    pub listen: ListenOptions,
    /// Per-connection buffer limits.
    pub conn: ConnConfig,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
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
        }
    }
}

/// Binds an echo listener on `addr`; spawn it on a reactor and read its
/// [`Listener::local_addr`].
pub fn echo_listener(
    addr: SocketAddr,
    opts: EchoOptions,
) -> io::Result<Listener<impl FnMut(TcpStream, SocketAddr) -> Option<EchoConn> + 'static>> {
    let conn_cfg = opts.conn;
    let idle = opts.idle_timeout;
    Listener::bind(addr, opts.listen, move |stream, _peer| {
        Some(EchoConn::new(stream, conn_cfg, idle))
    })
}
