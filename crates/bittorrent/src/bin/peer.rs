//! `peer`: a BitTorrent (BEP 3) seeder and leecher on the reactor.
//!
//! ```text
//! peer make-torrent --data FILE|DIR --piece-length BYTES --out T.torrent [--tracker URL]
//! peer seed  --torrent T.torrent --data FILE|DIR [--listen ADDR] [--tracker URL]
//!            [--peer IP:PORT]... [--encryption disabled|enabled|forced]
//!            [--discover [--discover-port 7979] [--broadcast 127.255.255.255]
//!                        [--discover-interval SECS]]
//! peer leech --torrent T.torrent | --magnet URI [--save-torrent FILE]
//!            --out FILE|DIR [--peer IP:PORT]... [--tracker URL]
//!            [--listen ADDR] [--timeout SECS] [--discover ...same as seed...]
//! ```
//! `seed` verifies the data on the worker pool, prints `listening on IP:PORT` once
//! bound and serves until SIGINT/SIGTERM. `leech` exits 0 once every piece is
//! verified and written, non-zero with a one-line reason when it cannot finish.
//!
//! `--discover` (both) announces the torrent's info-hash and our listen port by UDP
//! broadcast (`docs/discovery.md`); a leecher also downloads from every node that
//! announces the same info-hash, in addition to `--peer` and `--tracker`, so
//! `leech --discover` alone is enough. A leecher with `--discover` and no
//! `--listen` listens on a port the OS picks (on 127.0.0.1 when the broadcast
//! address is loopback), so other leechers can find it too. Bad values are a
//! one-line error, exit 1 (clap's usage errors exit 2).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use reactor::{Config, Reactor};
use reactor_bittorrent::create::MakeTorrent;
use reactor_bittorrent::discover::DiscoverySettings;
use reactor_bittorrent::magnet::{PeerAddr, parse_magnet};
use reactor_bittorrent::metainfo::Metainfo;
use reactor_bittorrent::mse::Encryption;
use reactor_bittorrent::torrent::{self, Mode, TorrentConfig};

#[derive(Parser, Debug)]
#[command(about = "BitTorrent seeder and leecher on the reactor")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a v1 .torrent for a file (or a folder: multi-file torrent).
    MakeTorrent {
        /// The file or folder to describe.
        #[arg(long)]
        data: PathBuf,
        /// Piece length in bytes (a power of two of at least 16 KiB is usual).
        #[arg(long)]
        piece_length: u32,
        /// Where to write the torrent.
        #[arg(long)]
        out: PathBuf,
        /// Tracker announce URL.
        #[arg(long)]
        tracker: Option<String>,
    },
    /// Serve a torrent's data to peers.
    Seed {
        /// The .torrent file.
        #[arg(long)]
        torrent: PathBuf,
        /// The data: the file, or the torrent's folder.
        #[arg(long)]
        data: PathBuf,
        /// Address to accept peers on (port 0: the OS picks; it is printed).
        #[arg(long, default_value = "0.0.0.0:6881")]
        listen: SocketAddr,
        /// A leecher to dial (repeatable), for one that does not dial us (e.g.
        /// Transmission never dials loopback peers).
        #[arg(long = "peer")]
        peers: Vec<SocketAddr>,
        #[command(flatten)]
        common: Common,
    },
    /// Download a torrent from peers.
    Leech {
        /// The .torrent file.
        #[arg(long, required_unless_present = "magnet", conflicts_with = "magnet")]
        torrent: Option<PathBuf>,
        /// A magnet link instead of a .torrent (`magnet:?xt=urn:btih:HEX|BASE32&tr=URL`):
        /// the metadata is fetched from peers (BEP 9) and checked against the
        /// info-hash first. Its `tr` (http://) and `x.pe` (IP:port) are used too.
        #[arg(long)]
        magnet: Option<String>,
        /// With --magnet: write the fetched metadata as a .torrent file here.
        #[arg(long, requires = "magnet")]
        save_torrent: Option<PathBuf>,
        /// Where to write the data: the file, or the torrent's folder.
        #[arg(long)]
        out: PathBuf,
        /// A peer to download from (repeatable).
        #[arg(long = "peer")]
        peers: Vec<SocketAddr>,
        /// Also accept peers on this address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Fail after this many seconds without receiving piece data.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// HTTP tracker to announce to (default: the torrent's `announce`, if http://).
    #[arg(long)]
    tracker: Option<String>,
    /// Serve Prometheus metrics (GET /metrics, /healthz) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Message Stream Encryption: `disabled` (plaintext only), `enabled` (accept
    /// both; dial encrypted, retry in plaintext) or `forced` (MSE with RC4 only).
    #[arg(long, value_name = "POLICY", default_value = "enabled", value_parser = parse_encryption)]
    encryption: Encryption,
    /// A peer must complete its handshake within SECS seconds.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Close a peer that sends no complete message for SECS seconds.
    #[arg(long, default_value_t = 180.0)]
    idle_timeout: f64,
    /// Close a peer that holds our requests this long without sending a block; choke
    /// a peer that keeps an upload slot this long without requesting.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Peers uploaded to at the same time.
    #[arg(long, default_value_t = 16)]
    upload_slots: usize,
    /// Connections (both directions) for the torrent at most.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Worker threads for disk I/O and hashing.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Announce the torrent by UDP broadcast; a leecher also downloads from the
    /// peers that announce it (in addition to --peer and --tracker).
    #[arg(long)]
    discover: bool,
    /// UDP port the discovery nodes share (0: the OS picks one; it is logged).
    #[arg(long, value_name = "PORT", default_value_t = reactor_discovery::DEFAULT_PORT, requires = "discover")]
    discover_port: u16,
    /// Broadcast address for discovery announcements (IPv4).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.255.255.255",
        requires = "discover"
    )]
    broadcast: IpAddr,
    /// Seconds between discovery announcements (fractional allowed, at least 0.01).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 1.0,
        requires = "discover",
        allow_negative_numbers = true
    )]
    discover_interval: f64,
}

use reactor_cli::secs;

fn parse_encryption(s: &str) -> Result<Encryption, String> {
    Encryption::parse(s)
        .ok_or_else(|| format!("--encryption must be disabled, enabled or forced, got {s:?}"))
}

/// The discovery settings of `--discover`, or `None` without it.
fn discovery(common: &Common) -> Result<Option<DiscoverySettings>, String> {
    if !common.discover {
        return Ok(None);
    }
    let v = common.discover_interval;
    // Below 10 ms a typo would flood the LAN with announcements.
    let interval = match Duration::try_from_secs_f64(v) {
        Ok(d) if d >= Duration::from_millis(10) => d,
        _ => {
            return Err(format!(
                "--discover-interval must be a number of seconds of at least 0.01, got {v}"
            ));
        }
    };
    if !common.broadcast.is_ipv4() {
        return Err(format!(
            "--broadcast {} is not an IPv4 address (IPv6 has no broadcast)",
            common.broadcast
        ));
    }
    let mut s = DiscoverySettings::default();
    s.port = common.discover_port;
    s.broadcast = common.broadcast;
    s.interval = interval;
    Ok(Some(s))
}

pub fn main() -> ExitCode {
    reactor_cli::init_logger();
    let cli = Cli::parse();
    reactor_cli::exit("peer", run(cli.cmd))
}

fn reactor_with(workers: usize) -> Result<Reactor, String> {
    if workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let config = Config::default().workers(workers);
    Reactor::with_config(config).map_err(|e| format!("cannot start the event loop: {e}"))
}

fn load_torrent(path: &PathBuf) -> Result<Metainfo, String> {
    // Read once, before the loop starts: nothing is blocked yet.
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Metainfo::parse(&bytes).map_err(|e| format!("{}: invalid torrent: {e}", path.display()))
}

/// The settings of a magnet download: no torrent to take a tracker from.
fn config_without_torrent(common: &Common) -> Result<TorrentConfig, String> {
    let placeholder_announce = None;
    config_with(common, placeholder_announce)
}

fn config(common: &Common, meta: &Metainfo) -> Result<TorrentConfig, String> {
    config_with(common, meta.announce.clone())
}

fn config_with(common: &Common, announce: Option<String>) -> Result<TorrentConfig, String> {
    if common.upload_slots == 0 {
        return Err("--upload-slots must be at least 1".into());
    }
    if common.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    let mut cfg = TorrentConfig::default();
    cfg.encryption = common.encryption;
    cfg.handshake_timeout = secs("handshake-timeout", common.handshake_timeout)?;
    cfg.idle_timeout = secs("idle-timeout", common.idle_timeout)?;
    cfg.request_timeout = secs("request-timeout", common.request_timeout)?;
    cfg.upload_slots = common.upload_slots;
    cfg.max_connections = common.max_connections;
    cfg.tracker = common
        .tracker
        .clone()
        .or_else(|| announce.filter(|a| a.starts_with("http://")));
    cfg.discovery = discovery(common)?;
    Ok(cfg)
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::MakeTorrent {
            data,
            piece_length,
            out,
            tracker,
        } => {
            if piece_length == 0 {
                return Err("--piece-length must be positive".into());
            }
            let mut reactor = reactor_with(4)?;
            let (h, result) = MakeTorrent {
                data,
                piece_length,
                out: out.clone(),
                tracker,
            }
            .handler();
            reactor.spawn(h);
            reactor
                .run()
                .map_err(|e| format!("event loop failed: {e}"))?;
            let r = result.borrow().clone();
            match r {
                Some(Ok(n)) => {
                    log::info!("wrote {} ({n} pieces)", out.display());
                    Ok(())
                }
                Some(Err(e)) => Err(e),
                None => Err("interrupted".into()),
            }
        }
        Cmd::Seed {
            torrent,
            data,
            listen,
            peers,
            common,
        } => {
            let meta = load_torrent(&torrent)?;
            let mut cfg = config(&common, &meta)?;
            cfg.listen = Some(listen);
            cfg.peers = peers;
            let mut reactor = reactor_with(common.workers)?;
            reactor
                .shutdown_on_signals()
                .map_err(|e| format!("cannot install signal handlers: {e}"))?;
            reactor_cli::serve_metrics(&mut reactor, common.metrics)?;
            // The error names what failed (listener or discovery) and its address.
            let t = torrent::start(&mut reactor, meta, Mode::Seed(data), cfg)
                .map_err(|e| e.to_string())?;
            if let Some(a) = t.local_addr {
                println!("listening on {a}");
                let _ = std::io::stdout().flush();
            }
            reactor
                .run()
                .map_err(|e| format!("event loop failed: {e}"))?;
            t.outcome()
        }
        Cmd::Leech {
            torrent,
            magnet,
            save_torrent,
            out,
            peers,
            listen,
            timeout,
            common,
        } => {
            let (meta, magnet) = match (&torrent, &magnet) {
                (Some(t), _) => (Some(load_torrent(t)?), None),
                (None, Some(uri)) => (
                    None,
                    Some(parse_magnet(uri).map_err(|e| format!("--magnet: {e}"))?),
                ),
                (None, None) => return Err("give --torrent or --magnet".into()),
            };
            let mut cfg = match &meta {
                Some(m) => config(&common, m)?,
                None => config_without_torrent(&common)?,
            };
            let mut peers = peers;
            if let Some(m) = &magnet {
                if cfg.tracker.is_none() {
                    cfg.tracker = m
                        .trackers
                        .iter()
                        .find(|t| t.starts_with("http://"))
                        .cloned();
                }
                for p in &m.peers {
                    match p {
                        PeerAddr::Ip(a) => peers.push(*a),
                        PeerAddr::Host { .. } => {
                            log::info!("magnet: ignoring peer {p}: host names are not resolved");
                        }
                    }
                }
            }
            // With a tracker or discovery, be reachable: peers learn our port from
            // them. Discovery on loopback only needs a loopback listener.
            cfg.listen = listen.or_else(|| match (&cfg.tracker, &cfg.discovery) {
                (None, Some(d)) if d.broadcast.is_loopback() => {
                    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
                }
                (None, None) => None,
                _ => Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            });
            cfg.peers = peers;
            cfg.no_progress_timeout = secs("timeout", timeout)?;
            cfg.progress = true;
            if cfg.peers.is_empty()
                && cfg.listen.is_none()
                && cfg.tracker.is_none()
                && cfg.discovery.is_none()
            {
                return Err(
                    "nothing to download from: give --peer, --tracker, --listen or --discover"
                        .into(),
                );
            }
            let mut reactor = reactor_with(common.workers)?;
            reactor
                .shutdown_on_signals()
                .map_err(|e| format!("cannot install signal handlers: {e}"))?;
            reactor_cli::serve_metrics(&mut reactor, common.metrics)?;
            let t = match (meta, magnet) {
                (Some(meta), _) => torrent::start(&mut reactor, meta, Mode::Leech(out), cfg),
                (None, Some(m)) => {
                    torrent::start_magnet(&mut reactor, m.info_hash, out, cfg, save_torrent)
                }
                (None, None) => unreachable!("checked above"),
            }
            .map_err(|e| e.to_string())?;
            if let Some(a) = t.local_addr {
                println!("listening on {a}");
                let _ = std::io::stdout().flush();
            }
            reactor
                .run()
                .map_err(|e| format!("event loop failed: {e}"))?;
            match t.outcome() {
                Ok(()) if t.is_complete() => Ok(()),
                Ok(()) => Err("interrupted before the download completed".into()),
                Err(e) => Err(e),
            }
        }
    }
}
