//! `reactor`: network servers on a hand-written, single-threaded `mio` event loop.
//!
//! In the spirit of Python's `asyncore`/`asynchat`: you write a [`Handler`] (an
//! object called back when its sockets are ready), register it on a [`Reactor`], and
//! run the loop. Blocking work goes to a worker pool ([`Context::offload`]) and its
//! result comes back to the same handler on the loop thread. [`Conn`] is the buffered
//! connection (asynchat's role): budgeted edge-triggered reads and writes,
//! backpressure, half-close, framing. The loop tells you when your code blocks it: a
//! callback slower than [`Config::slow_threshold`] is logged with the handler's name.
//!
//! A complete line-echo server:
//!
//! ```no_run
//! use reactor::{Conn, ConnConfig, Context, Handler, HandlerResult, Listener, ListenOptions,
//!               Reactor, framing::{Decoder, Delimited}};
//!
//! struct Lines { conn: Conn, codec: Delimited }
//!
//! impl Handler for Lines {
//!     fn on_start(&mut self, cx: &mut Context<'_>) -> HandlerResult {
//!         Ok(self.conn.register(cx)?)
//!     }
//!     fn on_readable(&mut self, cx: &mut Context<'_>, _src: u8) -> HandlerResult {
//!         let st = self.conn.fill(cx)?;
//!         while let Some(f) = self.conn.next_frame(&self.codec)? {
//!             let line = f.payload(self.conn.read_buf()).to_ascii_uppercase();
//!             self.conn.consume(f.consumed);
//!             self.conn.queue(cx, &line);
//!             self.conn.queue(cx, b"\n");
//!         }
//!         self.conn.flush(cx)?;
//!         if st.eof { cx.close(); }
//!         Ok(())
//!     }
//!     fn on_writable(&mut self, cx: &mut Context<'_>, _src: u8) -> HandlerResult {
//!         self.conn.flush(cx)?;
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let mut reactor = Reactor::new()?;
//!     reactor.shutdown_on_signals()?;
//!     let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenOptions::default(),
//!         |stream, _peer| Some(Lines { conn: Conn::new(stream, 0, ConnConfig::default()),
//!                                     codec: Delimited::new(b"\n", 4096) }))?;
//!     println!("listening on {}", listener.local_addr());
//!     reactor.spawn(listener);
//!     reactor.run()
//! }
//! ```
//!
//! Module map: [`reactor`](mod@reactor) (the loop), [`handler`] (the trait),
//! [`timer`], [`pool`] (offloaded jobs), [`conn`] and [`framing`] (buffered
//! connections), [`listener`] (accepting), [`stats`], [`buf`] (buffer recycling),
//! [`udp`] (datagram sockets), [`echo`] (the reference protocol).

#![deny(missing_docs)]

pub mod buf;
mod clock;
pub mod conn;
pub mod discovery;
pub mod echo;
pub mod framing;
pub mod handler;
pub mod listener;
pub mod log_limit;
pub mod peer_wire;
pub mod pool;
pub mod proxy;
pub mod reactor;
pub mod relay;
pub mod stats;
pub mod timer;
pub mod udp;

pub use conn::{Conn, ConnConfig, IdleTimeout, ReadStatus};
pub use handler::{Error, Event, Handler, HandlerId, HandlerResult, SourceId};
pub use listener::{ListenOptions, Listener};
pub use pool::{JobId, JobPanicked, JobResult, PoolFull};
pub use reactor::{Config, Context, Reactor, ReactorHandle};
pub use stats::{Stats, StatsLogger};
pub use timer::TimerId;
pub use udp::{SendOutcome, UdpConfig, UdpConn, UdpOptions};
