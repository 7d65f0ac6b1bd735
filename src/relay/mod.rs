//! The relay: peers behind NAT reserve a slot under an id; others connect to it.
//!
//! [`proto`] is the wire codec and [`table`] the reservation table (limits, grace
//! periods, expiry, circuits), both sans-io with time passed in, so reclamation rules
//! are tested deterministically. Handlers around them must stay thin. The protocol
//! is described in `docs/relay.md`.

pub mod proto;
pub mod table;
