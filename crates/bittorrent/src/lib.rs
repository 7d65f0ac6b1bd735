//! BitTorrent (BEP 3) building blocks and the peer on the reactor.
//!
//! Sans-io (no sockets, files or clock; tested without a network): [`bencode`],
//! torrent [`metainfo`] (v1, info-hash over the raw info dictionary), the HTTP
//! [`tracker`] announce (BEP 3, BEP 23), the peer-wire codec [`wire`] (with BEP 6 and
//! BEP 10 framing), the rarest-first [`picker`] with end-game, [`blame`] (whom to
//! ban for a piece that fails its hash check), the [`peers`] manager with its
//! reconnect backoff and bans, [`discover`] (what a peer announces by
//! LAN discovery, and which announcements are peers of our torrent), and
//! [`mse`] (Message Stream Encryption: the obfuscated handshake and RC4),
//! [`magnet`] links, the BEP 10 [`ext_handshake`] fields, BEP 9 [`metadata`]
//! exchange (serving and fetching the info dictionary) and BEP 11 [`pex`].
//!
//! On the reactor (thin handlers over those): [`torrent`] (the shared torrent state
//! and the engine that owns disk work), [`session`] (one handler per peer
//! connection), [`tracker_client`] (the announcer), [`create`] (making a torrent);
//! [`storage`] is the blocking file layer the worker pool runs. See
//! `docs/peer-wire.md`.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod bencode;
pub mod blame;
pub mod create;
pub mod discover;
pub mod ext_handshake;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod mse;
pub mod peers;
pub mod pex;
pub mod picker;
pub mod session;
pub mod storage;
pub mod torrent;
pub mod tracker;
pub mod tracker_client;
pub mod wire;
