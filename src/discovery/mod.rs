//! LAN discovery over UDP broadcast, never blocking the loop.
//!
//! [`proto`] is the announcement datagram codec and [`table`] the peer table (joins,
//! restarts, expiry by TTL, bounded size), both sans-io. The UDP handler around them
//! sends and receives on the reactor like any other source.

pub mod proto;
pub mod table;
