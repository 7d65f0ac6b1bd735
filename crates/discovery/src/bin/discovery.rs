//! `discovery`: announce this node over UDP broadcast and report the others.
//!
//! ```text
//! discovery --id NAME [--port 7979] [--interval 1.0] [--broadcast 127.255.255.255]
//!           [--service NAME] [--tcp-port N] [--meta KEY=VALUE]... [--bind ADDR]
//!           [--ttl SECS] [--max-peers N] [--metrics ADDR]
//! ```
//! Stdout carries one line per event and nothing else, flushed at once:
//! `joined ID ADDR` (ADDR = the announcer's IP and announced TCP port) and
//! `left ID`; a restarted peer prints `left` then `joined`. Logs go to stderr,
//! starting with `discovery NAME bound to IP:PORT` (the port the OS chose with
//! `--port 0`). Several copies share the port. SIGINT/SIGTERM broadcast a goodbye
//! and exit 0.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use reactor::Reactor;
use reactor_discovery::{Discovery, DiscoveryConfig, DiscoveryHandler, PeerEvent};

#[derive(Parser, Debug)]
#[command(about = "UDP broadcast discovery on the reactor")]
struct Args {
    /// This node's id (unique among the nodes sharing the port).
    #[arg(long)]
    id: String,
    /// UDP port shared by all nodes (0: the OS picks; it is logged).
    #[arg(long, default_value_t = reactor_discovery::DEFAULT_PORT)]
    port: u16,
    /// Seconds between announcements (fractional allowed, e.g. 0.5).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Broadcast address announcements go to.
    #[arg(long, default_value = "127.255.255.255")]
    broadcast: IpAddr,
    /// Service name to announce.
    #[arg(long, default_value = "")]
    service: String,
    /// TCP port of the announced service.
    #[arg(long, default_value_t = 0)]
    tcp_port: u16,
    /// Metadata to announce, repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Address to bind (default: the broadcast address if loopback, else 0.0.0.0).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Seconds of silence before a peer is reported left (default: 3 intervals).
    #[arg(long)]
    ttl: Option<f64>,
    /// Peers remembered at most.
    #[arg(long, default_value_t = 1024)]
    max_peers: usize,
    /// Serve Prometheus metrics (GET /metrics, /healthz) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    match Duration::try_from_secs_f64(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "--{name} must be a positive number of seconds, got {v}"
        )),
    }
}

pub fn main() -> ExitCode {
    reactor_cli::init_logger();
    let args = Args::parse();
    reactor_cli::exit("discovery", run(args))
}

fn run(args: Args) -> Result<(), String> {
    let mut cfg = DiscoveryConfig::new(args.id);
    cfg.port = args.port;
    cfg.interval = secs("interval", args.interval)?;
    cfg.broadcast = args.broadcast;
    cfg.service = args.service;
    cfg.tcp_port = args.tcp_port;
    cfg.bind = args.bind;
    cfg.max_peers = args.max_peers;
    if let Some(t) = args.ttl {
        cfg.ttl = Some(secs("ttl", t)?);
    }
    for m in &args.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| format!("--meta {m:?}: expected KEY=VALUE"))?;
        cfg.metadata.push((k.to_string(), v.to_string()));
    }
    let disc = Discovery::new(cfg).map_err(|e| e.to_string())?;
    log::info!(
        "discovery {} bound to {}, announcing to {} every {:?} (instance {:016x})",
        disc.id(),
        disc.local_addr(),
        disc.broadcast_addr(),
        disc.interval(),
        disc.instance()
    );
    let mut reactor = Reactor::new().map_err(|e| e.to_string())?;
    reactor.shutdown_on_signals().map_err(|e| e.to_string())?;
    reactor_cli::serve_metrics(&mut reactor, args.metrics)?;
    // A line per membership change: rare, short, so written directly (a consumer
    // that stops reading stdout would stall the node, which is the consumer's call).
    reactor.spawn(DiscoveryHandler::with_callback(disc, |_cx, ev| {
        let mut out = std::io::stdout().lock();
        let r = match ev {
            PeerEvent::Joined { id, addr, .. } => writeln!(out, "joined {id} {addr}"),
            PeerEvent::Restarted { id, addr, .. } => {
                writeln!(out, "left {id}").and_then(|()| writeln!(out, "joined {id} {addr}"))
            }
            PeerEvent::Left { id } => writeln!(out, "left {id}"),
            PeerEvent::Updated { id, addr, .. } => {
                log::info!("peer {id} updated its announcement ({addr})");
                Ok(())
            }
            PeerEvent::Conflict { .. } => Ok(()), // logged by the service
        };
        if let Err(e) = r.and_then(|()| out.flush()) {
            log::warn!("cannot write to stdout: {e}");
        }
    }));
    reactor.run().map_err(|e| e.to_string())
}
