//! `relay`: the relay server with reservation slots.
//!
//! ```text
//! relay [--listen 127.0.0.1:7700] [--max-reservations N] [--per-peer N] [--per-ip N]
//!       [--ttl SECS] [--grace SECS] [--heartbeat-timeout SECS]
//!       [--circuit-secs SECS] [--circuit-bytes BYTES] [--circuits-per-peer N]
//!       [--stats-interval SECS] [--metrics ADDR]
//! ```
//! Prints `listening on IP:PORT` once bound; logs a stats line every
//! `--stats-interval` and at shutdown; SIGINT/SIGTERM drain and exit 0.
//! For the circuit flags, 0 means no limit. See `docs/relay.md`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use reactor::Reactor;
use reactor_relay::server::{self, RelayConfig};

#[derive(Parser, Debug)]
#[command(about = "Relay with reservation slots on the reactor")]
struct Args {
    /// Address to listen on (port 0: the OS picks one and it is printed).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Reservations on the relay at most.
    #[arg(long, default_value_t = 128)]
    max_reservations: usize,
    /// Reservations per peer identity.
    #[arg(long, default_value_t = 4)]
    per_peer: usize,
    /// Reservations per client IP address (IPv6: per /64).
    #[arg(long, default_value_t = 8)]
    per_ip: usize,
    /// Reservation lifetime unless refreshed, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    ttl: f64,
    /// How long a closed connection's reservations wait for their peer, in seconds.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// A control connection silent this long loses its reservations (0: never).
    #[arg(long, default_value_t = 30.0)]
    heartbeat_timeout: f64,
    /// Lifetime of a circuit in seconds (0: no limit).
    #[arg(long, default_value_t = 120.0)]
    circuit_secs: f64,
    /// Bytes a circuit may carry in each direction (0: no limit).
    #[arg(long, default_value_t = 128 * 1024)]
    circuit_bytes: u64,
    /// Open circuits per reserving peer (0: no limit).
    #[arg(long, default_value_t = 16)]
    circuits_per_peer: usize,
    /// Log a stats line every SECS seconds (0: only at shutdown).
    #[arg(long, default_value_t = 60.0)]
    stats_interval: f64,
    /// Serve Prometheus metrics (GET /metrics, /healthz) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

use reactor_cli::secs;

pub fn main() -> ExitCode {
    reactor_cli::init_logger();
    let args = Args::parse();
    reactor_cli::exit("relay", run(args))
}

fn run(args: Args) -> Result<(), String> {
    let mut cfg = RelayConfig::default();
    cfg.limits.max_total = args.max_reservations;
    cfg.limits.per_peer = args.per_peer;
    cfg.limits.per_ip = args.per_ip;
    cfg.limits.ttl = secs("ttl", args.ttl)?;
    if cfg.limits.ttl.is_zero() {
        return Err("--ttl must be positive".into());
    }
    cfg.limits.grace = secs("grace", args.grace)?;
    cfg.limits.heartbeat_timeout = secs("heartbeat-timeout", args.heartbeat_timeout)?;
    cfg.circuits.max_duration = secs("circuit-secs", args.circuit_secs)?;
    cfg.circuits.max_bytes_per_direction = args.circuit_bytes;
    cfg.circuits.max_per_peer = args.circuits_per_peer;
    cfg.stats_interval = secs("stats-interval", args.stats_interval)?;

    let mut reactor = Reactor::new().map_err(|e| format!("cannot create event loop: {e}"))?;
    reactor
        .shutdown_on_signals()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let relay = server::spawn(&mut reactor, args.listen, cfg)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    reactor_cli::serve_metrics(&mut reactor, args.metrics)?;
    println!("listening on {}", relay.local_addr);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    reactor.run().map_err(|e| format!("event loop failed: {e}"))
}
