//! BitTorrent (BEP 3) building blocks, all sans-io: [`bencode`], torrent
//! [`metainfo`] (v1, info-hash over the raw info dictionary), the HTTP [`tracker`]
//! announce (BEP 3, BEP 23), the peer-wire codec [`wire`] (with BEP 6 and BEP 10
//! framing), the rarest-first [`picker`] with end-game, and the [`peers`] manager
//! with its reconnect backoff.
//!
//! Nothing here touches a socket, a file or the clock: the session handlers feed
//! bytes and `now` in, and disk and hashing work runs on the worker pool.

pub mod bencode;
pub mod create;
pub mod metainfo;
pub mod peers;
pub mod picker;
pub mod session;
pub mod storage;
pub mod torrent;
pub mod tracker;
pub mod tracker_client;
pub mod wire;
