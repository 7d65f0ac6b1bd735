//! The relay: peers behind NAT reserve a slot under an id; others connect to it.
//!
//! [`proto`] is the wire codec and [`table`] the reservation table (limits, grace
//! periods, expiry, circuits), both sans-io with time passed in, so reclamation rules
//! are tested deterministically. [`server`] holds the relay's reactor handlers,
//! [`client`] the reserving and connecting clients (with [`setup`], the sans-io
//! set-up of a client's circuit end), and [`bridge`] the byte pipe both use for
//! circuits. Handlers around the codec and the table must stay thin.
//! The protocol is described in `docs/relay.md`.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod bridge;
pub mod client;
pub mod proto;
pub mod server;
pub mod setup;
pub mod table;
