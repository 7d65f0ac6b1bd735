//! TLS on the reactor, with rustls.
//!
//! TLS is a [`StreamFilter`](reactor::StreamFilter) of a connection: a
//! [`reactor::Conn`] made with [`Conn::with_filter`](reactor::Conn::with_filter) and a
//! [`TlsFilter`] reads TLS records from its socket and holds plaintext in its read
//! buffer, and encrypts what is queued on the way out. Everything above the
//! connection works unchanged, so a [`Protocol`] does not know
//! whether it runs over TLS: budgets and backpressure count the encrypted bytes
//! waiting too, a graceful end (`close_when_done`) sends `close_notify` before the
//! FIN, and the framed layer closes a connection whose handshake has not finished
//! within [`FramedConfig::handshake_timeout`](reactor::FramedConfig::handshake_timeout).
//!
//! Servers: an [`Identity`] (certificate chain and key from PEM) per name and a
//! default, chosen by SNI; ALPN; optional or required client certificates
//! ([`ServerTls`] builds a [`TlsAcceptor`]). Clients: the system's roots or a CA file,
//! ALPN, a client certificate ([`ClientTls`] builds a [`TlsConnector`]).
//!
//! ```no_run
//! use reactor::framing::Lines;
//! use reactor::{FramedConfig, HandlerResult, Link, Protocol, Reactor};
//! use reactor_tls::{Identity, ServerTls};
//!
//! struct Echo;
//! impl Protocol for Echo {
//!     type Message = ();
//!     type Job = ();
//!     fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
//!         link.send(line);
//!         link.send(b"\n");
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let id = Identity::from_pem_files("cert.pem".as_ref(), "key.pem".as_ref())?;
//! let tls = ServerTls::new(id).alpn(&["echo"]).build()?;
//! let mut reactor = Reactor::new()?;
//! let listener = reactor_tls::listen("127.0.0.1:0".parse().unwrap(), &tls, Lines::new(4096),
//!                                    FramedConfig::default(), |_peer| Some(Echo))?;
//! reactor.spawn(listener);
//! reactor.run()
//! # }
//! ```
//!
//! The crypto provider is `ring`: it builds in well under a minute with only a C
//! compiler, where `aws-lc-rs` needs cmake or a much longer build; the handshake and
//! record costs measured with it are in `docs/tls.md`. Handshakes run on the loop
//! thread: an ECDSA P-256 server handshake costs a fraction of a millisecond, far
//! below the slow-handler threshold; RSA-2048 costs several times more (the numbers,
//! and the advice, are in `docs/tls.md`).
//!
//! This crate must not touch sockets or the loop: it configures rustls and adapts it
//! to the filter trait.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

mod config;
mod filter;

use std::io;
use std::net::SocketAddr;

use reactor::framing::Framing;
use reactor::{Framed, FramedConfig, Listener, Protocol, TcpStream};

pub use config::{ClientTls, Identity, ServerTls, TlsAcceptor, TlsConnector};
pub use filter::TlsFilter;
pub use rustls;

/// Binds a listener on `addr` whose connections speak TLS (`acceptor`) and run a
/// protocol made by `make(peer)` (`None` refuses the connection) with the given
/// framing and settings: [`reactor::framed::listen`] with
/// [`FramedConfig::filter`](reactor::FramedConfig::filter) set to the acceptor.
// The factory's type cannot be named (a closure), so the return type spells it out.
#[allow(clippy::type_complexity)]
pub fn listen<P, F>(
    addr: SocketAddr,
    acceptor: &TlsAcceptor,
    framing: impl Into<Framing>,
    cfg: FramedConfig,
    make: F,
) -> io::Result<Listener<impl FnMut(TcpStream, SocketAddr) -> Option<Framed<P>> + 'static>>
where
    P: Protocol,
    F: FnMut(SocketAddr) -> Option<P> + 'static,
{
    reactor::framed::listen(addr, framing, cfg.filter(acceptor.factory()), make)
}
