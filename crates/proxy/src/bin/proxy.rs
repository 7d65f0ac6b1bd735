//! `proxy`: a TCP forwarder or a SOCKS5 server on the reactor.
//!
//! ```text
//! proxy --listen ADDR --upstream HOST:PORT          forward every connection
//! proxy --listen ADDR --socks5 [--auth USER:PASS]   SOCKS5 (RFC 1928, RFC 1929)
//!       [--deny CIDR]... [--deny-port PORT]...      SOCKS5 ruleset (reply 0x02)
//!       [--connect-timeout SECS] [--idle-timeout SECS] [--handshake-timeout SECS]
//!       [--linger-timeout SECS]
//!       [--max-sessions N] [--max-sessions-per-ip N] [--stats-interval SECS]
//!       [--allow-client CIDR]... [--deny-client CIDR]...  who may connect (in order)
//!       [--proxy-protocol-in --proxy-protocol-from CIDR...] [--proxy-protocol-out v1|v2]
//!       [--udp-max-associations N] [--udp-idle-timeout SECS] [--udp-rate N]
//!       [--udp-byte-rate N] [--udp-global-rate N] [--udp-global-byte-rate N]
//!       [--tls-cert FILE --tls-key FILE]                terminate TLS from clients
//!       [--upstream-tls [--upstream-ca FILE] [--upstream-server-name NAME]]
//!                                                       TLS to the upstream (forwarder)
//!       [--metrics ADDR]                                Prometheus metrics
//! ```
//! Prints `listening on IP:PORT` once bound; SIGINT/SIGTERM stop accepting, let open
//! tunnels finish (up to the drain timeout), log the proxy's counters and exit 0.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use reactor::{Config, Reactor, StatsLogger};
use reactor_proxy::{
    Cidr, ClientRules, Mode, ProxyOptions, Target, UpstreamTls, parse_host_port, proxy_listener,
    proxy_protocol, udp::UdpLimits,
};

#[derive(Parser, Debug)]
#[command(about = "TCP forwarder and SOCKS5 proxy on the reactor")]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["upstream", "socks5"])))]
struct Args {
    /// Address to listen on (port 0: the OS picks one and it is printed).
    #[arg(long, default_value = "127.0.0.1:1080")]
    listen: SocketAddr,
    /// Forward every connection to HOST:PORT (a host name is resolved per session).
    #[arg(long, value_name = "HOST:PORT")]
    upstream: Option<String>,
    /// Be a SOCKS5 proxy.
    #[arg(long)]
    socks5: bool,
    /// SOCKS5 clients must log in with USER:PASS (RFC 1929).
    #[arg(long, value_name = "USER:PASS", requires = "socks5")]
    auth: Option<String>,
    /// SOCKS5: deny destinations in this range (repeatable), e.g. 10.0.0.0/8.
    #[arg(long, value_name = "CIDR", requires = "socks5", value_parser = Cidr::parse_masked)]
    deny: Vec<Cidr>,
    /// SOCKS5: deny this destination port (repeatable).
    #[arg(long, value_name = "PORT", requires = "socks5")]
    deny_port: Vec<u16>,
    /// The whole connect (name resolution and every address) must succeed within
    /// SECS seconds; each address but the last gets an equal share of what is left.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Close tunnels with no traffic for SECS seconds.
    #[arg(long, default_value_t = 300.0)]
    idle_timeout: f64,
    /// After one side of a tunnel failed and the other got everything, wait at
    /// most SECS seconds for that other side to close (less once its peer has
    /// acknowledged everything).
    #[arg(long, default_value_t = 5.0)]
    linger_timeout: f64,
    /// SOCKS5 clients must finish the handshake within SECS seconds.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Open sessions at most; more are refused and counted.
    #[arg(long, default_value_t = 10_000)]
    max_sessions: usize,
    /// Open sessions per client (IPv4 address, or IPv6 /64) at most; more are
    /// refused and counted.
    #[arg(long, default_value_t = 1_000)]
    max_sessions_per_ip: usize,
    /// On SIGINT/SIGTERM, let open tunnels finish for up to SECS seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// Log a loop stats line every SECS seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    stats_interval: f64,
    /// Let clients in this range use the proxy (repeatable). Rules are checked in
    /// command-line order with --deny-client, the first match wins; with any
    /// --allow-client, a client no rule matches is refused.
    #[arg(long, value_name = "CIDR")]
    allow_client: Vec<Cidr>,
    /// Refuse clients in this range (repeatable; see --allow-client for the order).
    #[arg(long, value_name = "CIDR")]
    deny_client: Vec<Cidr>,
    /// Every incoming connection starts with a PROXY protocol header (v1 or v2)
    /// from a trusted balancer; the client it announces is what limits, logs and
    /// rules see.
    #[arg(long, requires = "proxy_protocol_from")]
    proxy_protocol_in: bool,
    /// A peer allowed to send PROXY protocol headers (repeatable); connections from
    /// anyone else are refused.
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol_in")]
    proxy_protocol_from: Vec<Cidr>,
    /// Send a PROXY protocol header (v1 text or v2 binary) to every upstream.
    #[arg(long, value_name = "VERSION", value_parser = ["v1", "v2"])]
    proxy_protocol_out: Option<String>,
    /// SOCKS5 UDP ASSOCIATE: associations open at once at most (more get 0x01).
    #[arg(long, default_value_t = 1000)]
    udp_max_associations: usize,
    /// SOCKS5 UDP ASSOCIATE: end an association with no datagram for SECS seconds.
    #[arg(long, default_value_t = 120.0)]
    udp_idle_timeout: f64,
    /// SOCKS5 UDP ASSOCIATE: datagrams per second per association, both ways (0: no
    /// limit); more are dropped and counted.
    #[arg(long, default_value_t = 2000)]
    udp_rate: u32,
    /// SOCKS5 UDP ASSOCIATE: payload bytes per second per association (0: no limit).
    #[arg(long, default_value_t = 4 << 20)]
    udp_byte_rate: u64,
    /// SOCKS5 UDP ASSOCIATE: datagrams per second of all associations (0: no limit).
    #[arg(long, default_value_t = 100_000)]
    udp_global_rate: u32,
    /// SOCKS5 UDP ASSOCIATE: payload bytes per second of all associations (0: none).
    #[arg(long, default_value_t = 256 << 20)]
    udp_global_byte_rate: u64,
    /// Terminate TLS: clients speak TLS with this certificate chain (PEM; with
    /// --tls-key), and their plaintext is relayed.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Originate TLS to the upstream (the forwarder's), verifying its certificate
    /// against the system's CAs, or --upstream-ca.
    #[arg(long, requires = "upstream")]
    upstream_tls: bool,
    /// Trust only the CA certificates in this PEM file for the upstream's
    /// certificate (with --upstream-tls).
    #[arg(long, value_name = "FILE", requires = "upstream_tls")]
    upstream_ca: Option<std::path::PathBuf>,
    /// The name the upstream's certificate must be valid for, also sent as SNI
    /// (with --upstream-tls; default: the host of --upstream).
    #[arg(long, value_name = "NAME", requires = "upstream_tls")]
    upstream_server_name: Option<String>,
    /// Serve Prometheus metrics (GET /metrics, /healthz) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

use reactor_cli::secs;

fn positive(name: &str, v: f64) -> Result<Duration, String> {
    let d = secs(name, v)?;
    if d.is_zero() {
        return Err(format!("--{name} must be greater than 0"));
    }
    Ok(d)
}

pub fn main() -> ExitCode {
    reactor_cli::init_logger();
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let clients = client_rules(&matches, &args);
    reactor_cli::exit("proxy", run(args, clients))
}

/// `--allow-client` and `--deny-client` in the order they were given.
fn client_rules(m: &clap::ArgMatches, args: &Args) -> ClientRules {
    let at = |id: &str| -> Vec<usize> { m.indices_of(id).map(|i| i.collect()).unwrap_or_default() };
    let mut all: Vec<(usize, bool, Cidr)> = Vec::new();
    all.extend(
        at("allow_client")
            .into_iter()
            .zip(&args.allow_client)
            .map(|(i, c)| (i, true, *c)),
    );
    all.extend(
        at("deny_client")
            .into_iter()
            .zip(&args.deny_client)
            .map(|(i, c)| (i, false, *c)),
    );
    all.sort_by_key(|(i, _, _)| *i);
    let mut rules = ClientRules::new();
    for (_, allow, net) in all {
        if allow {
            rules.allow(net);
        } else {
            rules.deny(net);
        }
    }
    rules
}

fn run(args: Args, clients: ClientRules) -> Result<(), String> {
    let mode = match (&args.upstream, args.socks5) {
        (Some(u), false) => {
            Mode::Forward(parse_host_port(u).map_err(|e| format!("--upstream {e}"))?)
        }
        (None, true) => {
            let auth = match &args.auth {
                None => None,
                Some(a) => {
                    let (u, p) = a.split_once(':').ok_or("--auth must be USER:PASS")?;
                    if u.is_empty() || p.is_empty() || u.len() > 255 || p.len() > 255 {
                        return Err("--auth: user and password must be 1..=255 bytes each".into());
                    }
                    Some((u.as_bytes().to_vec(), p.as_bytes().to_vec()))
                }
            };
            Mode::Socks5 { auth }
        }
        _ => return Err("give exactly one of --upstream HOST:PORT or --socks5".into()),
    };
    if args.max_sessions == 0 || args.max_sessions_per_ip == 0 {
        return Err("--max-sessions and --max-sessions-per-ip must be at least 1".into());
    }
    let mut opts = ProxyOptions::new(mode);
    opts.rules.deny_nets = args.deny.clone();
    opts.rules.deny_ports = args.deny_port.clone();
    opts.connect_timeout = positive("connect-timeout", args.connect_timeout)?;
    opts.idle_timeout = positive("idle-timeout", args.idle_timeout)?;
    opts.handshake_timeout = positive("handshake-timeout", args.handshake_timeout)?;
    opts.linger_timeout = positive("linger-timeout", args.linger_timeout)?;
    opts.max_sessions = args.max_sessions;
    opts.max_sessions_per_ip = args.max_sessions_per_ip;
    opts.clients = clients;
    opts.proxy_protocol_in = args.proxy_protocol_in;
    opts.proxy_protocol_from = args.proxy_protocol_from.clone();
    opts.udp.max_associations = args.udp_max_associations;
    opts.udp.idle_timeout = positive("udp-idle-timeout", args.udp_idle_timeout)?;
    opts.udp.per_association = UdpLimits::new(args.udp_rate, args.udp_byte_rate);
    opts.udp.global = UdpLimits::new(args.udp_global_rate, args.udp_global_byte_rate);
    opts.proxy_protocol_out = match args.proxy_protocol_out.as_deref() {
        None => None,
        Some("v1") => Some(proxy_protocol::Version::V1),
        Some(_) => Some(proxy_protocol::Version::V2),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let id = reactor_tls::Identity::from_pem_files(cert, key).map_err(|e| e.to_string())?;
        let acceptor = reactor_tls::ServerTls::new(id)
            .build()
            .map_err(|e| format!("--tls-cert: {e}"))?;
        opts.tls = Some(acceptor);
    }
    if args.upstream_tls {
        let server_name = match (&args.upstream_server_name, &opts.mode) {
            (Some(n), _) => n.clone(),
            (None, Mode::Forward(Target::Domain { host, .. })) => host.clone(),
            (None, Mode::Forward(Target::Addr(a))) => a.ip().to_string(),
            (None, _) => return Err("--upstream-tls needs --upstream HOST:PORT".into()),
        };
        let client = match &args.upstream_ca {
            Some(ca) => reactor_tls::ClientTls::with_ca_file(ca),
            None => reactor_tls::ClientTls::system_roots(),
        }
        .and_then(|c| c.build())
        .map_err(|e| format!("--upstream-tls: {e}"))?;
        // Checked now, not at the first connection.
        client
            .filter(&server_name)
            .map_err(|e| format!("--upstream-server-name: {e}"))?;
        opts.upstream_tls = Some(UpstreamTls {
            connector: client,
            server_name,
        });
    }
    opts.validate()?;
    let stats = secs("stats-interval", args.stats_interval)?;
    let config = Config::default().drain_timeout(secs("drain-timeout", args.drain_timeout)?);

    let mut reactor = Reactor::with_config(config).map_err(|e| format!("event loop: {e}"))?;
    reactor
        .shutdown_on_signals()
        .map_err(|e| format!("signal handling: {e}"))?;
    let what = match &opts.mode {
        Mode::Forward(t) => format!("forwarding to {t}"),
        Mode::Socks5 { auth } => format!(
            "SOCKS5{}",
            if auth.is_some() {
                " with username/password"
            } else {
                ""
            }
        ),
    };
    let tls = match (opts.tls.is_some(), &opts.upstream_tls) {
        (false, None) => String::new(),
        (true, None) => ", TLS from clients".into(),
        (false, Some(u)) => format!(", TLS to the upstream ({})", u.server_name),
        (true, Some(u)) => format!(", TLS from clients and to the upstream ({})", u.server_name),
    };
    let (listener, counters) = proxy_listener(args.listen, opts)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr();
    reactor.spawn(listener);
    counters.register(&mut reactor);
    reactor_cli::serve_metrics(&mut reactor, args.metrics)?;
    if !stats.is_zero() {
        reactor.spawn(StatsLogger::new(stats, ""));
    }
    log::info!("proxy on {addr}: {what}{tls}");
    println!("listening on {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let result = reactor.run().map_err(|e| format!("event loop failed: {e}"));
    log::info!("proxy on {addr} stopped: {}", counters.snapshot());
    result
}
