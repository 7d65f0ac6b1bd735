//! LAN discovery over UDP broadcast, never blocking the loop.
//!
//! [`proto`] is the announcement datagram codec and [`table`] the peer table (joins,
//! restarts, expiry by TTL, bounded size), both sans-io. [`service`] is the part on
//! the reactor: [`Discovery`], a component any handler can embed (one UDP socket and
//! two timers), and [`DiscoveryHandler`], the same as a handler of its own that
//! reports [`PeerEvent`]s to an owner handler or a callback. See
//! `docs/discovery.md` for the protocol, the port-sharing rules and how a program
//! (e.g. the BitTorrent peer) uses it.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod proto;
pub mod service;
pub mod table;

pub use service::{
    DEFAULT_BROADCAST, DEFAULT_PORT, Discovery, DiscoveryConfig, DiscoveryHandler, DiscoveryStats,
    PeerEvent,
};
