//! The proxy protocols: a TCP forwarder and a SOCKS5 server.
//!
//! [`socks5`] is the sans-io SOCKS5 codec (RFC 1928, RFC 1929): plain functions and a
//! handshake state machine over byte slices, tested without sockets. The session
//! handlers that own the two sockets of a proxied connection are built on top of it
//! and must keep all parsing in the codec.

pub mod socks5;
