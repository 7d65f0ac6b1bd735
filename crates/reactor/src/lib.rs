//! `reactor`: network servers on a hand-written, single-threaded `mio` event loop.
//!
//! In the spirit of Python's `asyncore`/`asynchat`. Most servers implement a
//! [`Protocol`] (asynchat's role): what to do with each frame of
//! a connection, a line, a length-prefixed message, whatever arrived; the
//! framed layer ([`framed`]) reads, cuts frames, writes, applies backpressure and
//! idle timeouts, and ends every conversation without losing what was sent. Below
//! it, a [`Handler`] (asyncore's dispatcher) is an object called back when its
//! sockets are ready, and the [`Reactor`] is the loop. Blocking work goes to a
//! worker pool ([`Context::offload`], [`framed::Link::offload`]) and its result
//! comes back, typed, to the same handler on the loop thread. The loop tells you
//! when your code blocks it: a callback slower than [`Config::slow_threshold`] is
//! logged with the handler's name.
//!
//! A complete line server that answers in upper case, and a client that checks
//! every reply arrives (the server ends each conversation with `close_when_done`
//! when the client stops sending, so nothing queued is lost):
//!
//! ```
//! use std::io::{Read, Write};
//! use reactor::framed::{Framed, Link, Protocol};
//! use reactor::framing::Delimited;
//! use reactor::{HandlerResult, ListenOptions, Listener, Reactor};
//!
//! struct Upper;
//!
//! impl Protocol for Upper {
//!     type Message = ();
//!     type Job = ();
//!     fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
//!         link.out().extend(line.iter().map(u8::to_ascii_uppercase));
//!         link.send(b"\n");
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let mut reactor = Reactor::new()?;
//!     reactor.shutdown_on_signals()?; // SIGINT/SIGTERM: stop accepting, drain, exit
//!     let lines = Delimited::new(b"\n", 4096);
//!     let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenOptions::default(),
//!         move |stream, _peer| Some(Framed::new(stream, lines.clone(), Upper)))?;
//!     let addr = listener.local_addr();
//!     reactor.spawn(listener);
//!
//!     let handle = reactor.handle();
//!     let client = std::thread::spawn(move || {
//!         let mut s = std::net::TcpStream::connect(addr).unwrap();
//!         let request = "a line\n".repeat(100_000); // 700 kB: more than one read
//!         s.write_all(request.as_bytes()).unwrap();
//!         s.shutdown(std::net::Shutdown::Write).unwrap();
//!         let mut reply = String::new();
//!         s.read_to_string(&mut reply).unwrap();
//!         handle.shutdown();
//!         assert_eq!(reply, request.to_uppercase());
//!     });
//!     reactor.run()?;
//!     client.join().unwrap();
//!     Ok(())
//! }
//! ```
//!
//! What is where: [`Reactor`] (the loop), [`Handler`] and [`Context`] (the
//! low-level trait and what its callbacks get), [`Conn`] and [`framing`] (buffered
//! connections and decoders), [`Listener`] (accepting), [`UdpConn`] (datagrams),
//! [`framed`] (the asynchat layer), [`pipe`] (the byte pump between two
//! connections), [`Stats`] and [`StatsLogger`], [`echo`] (the reference server for
//! benchmarks). `docs/architecture.md` draws the layers. The programs built on it live in their own
//! crates (`reactor-proxy`, `reactor-bittorrent`, `reactor-relay`,
//! `reactor-discovery`) and use only this public API.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

// The implementation modules are private; what a program uses is re-exported below
// in one list. A few modules stay public as namespaces of related items.
mod buf;
mod client_key;
mod clock;
mod conn;
pub mod echo;
mod event;
mod filter;
pub mod framed;
pub mod framing;
mod handler;
mod listener;
mod log_limit;
pub mod pipe;
mod pool;
mod reactor;
mod stats;
mod stats_log;
mod timer;
mod udp;

pub use client_key::client_key;
pub use conn::{Conn, ConnConfig, IdleTimeout, ReadStatus};
pub use event::{
    CloseReason, Error, Event, HandlerId, HandlerResult, ProtocolError, SourceId, is_peer_gone,
};
pub use filter::{FilterFactory, PlainRead, StreamFilter, WireRead};
pub use framed::{Framed, FramedConfig, Group, Link, Protocol};
pub use handler::{Addr, Context, Handler, split_event};
pub use listener::{ListenOptions, Listener, bind as bind_tcp};
pub use log_limit::LogLimiter;
pub use pool::{JobId, JobPanicked, JobResult, PoolFull};
pub use reactor::{Config, Loop, Reactor, ReactorHandle};
pub use stats::{AppMetrics, Counter, Gauge, Histogram, SlowHandlers, Stats};
pub use stats_log::StatsLogger;
pub use timer::TimerId;
pub use udp::{RecvStatus, SendOutcome, UdpConfig, UdpConn, UdpOptions, UdpStats, bind_udp};

/// The `mio` types a program names: the streams a [`Listener`]'s factory receives
/// and [`Conn`] wraps, the listener and UDP sockets, and the interest a source is
/// registered with. Re-exported so a program needs no direct `mio` dependency.
pub mod net {
    pub use mio::Interest;
    pub use mio::net::{TcpListener, TcpStream, UdpSocket};
}
pub use net::TcpStream;

/// The `bytes` crate, whose `BytesMut` the write queues and encoders use.
pub use bytes;

/// Internals public only for this crate's benchmarks (feature `internals`, which
/// the benchmarks enable): not part of the API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::timer::Timers;
}
