//! `echo`: the reference echo server on the reactor.
//!
//! ```text
//! echo [--listen 127.0.0.1:7878] [--threads N] [--stats-interval SECS]
//!      [--idle-timeout SECS] [--max-connections N] [--framed]
//!      [--tls-cert FILE --tls-key FILE] [--metrics ADDR]
//! ```
//! Prints `listening on IP:PORT` once bound; SIGINT/SIGTERM drain and exit 0.
//! With `--threads N`, N independent loops share the port through `SO_REUSEPORT`,
//! and `--metrics` reports each of them (label `loop`) from one endpoint.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use reactor::echo::{EchoOptions, echo_listener, framed_echo_listener};
use reactor::{Reactor, StatsLogger};

#[derive(Parser, Debug)]
#[command(about = "Echo server on the reactor")]
struct Args {
    /// Address to listen on (port 0: the OS picks one and it is printed).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Independent event loops sharing the port (SO_REUSEPORT).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Log a stats line every SECS seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    stats_interval: f64,
    /// Close connections idle for SECS seconds.
    #[arg(long, default_value_t = 300.0)]
    idle_timeout: f64,
    /// Open connections per loop at most.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Serve with the framed layer (`FramedEcho`) instead of the hand-written
    /// handler, to measure what the layer costs per message.
    #[arg(long)]
    framed: bool,
    /// Serve TLS with this certificate chain (PEM; with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics (GET /metrics, /healthz) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// Spawns one loop's listener (made, and bound, on the main thread).
type SpawnListener = Box<dyn FnOnce(&mut Reactor) + Send>;

use reactor_cli::secs;

pub fn main() -> ExitCode {
    reactor_cli::init_logger();
    let args = Args::parse();
    reactor_cli::exit("echo", run(args))
}

fn run(args: Args) -> Result<(), String> {
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let stats = secs("stats-interval", args.stats_interval)?;
    let mut opts = EchoOptions::default().idle_timeout(secs("idle-timeout", args.idle_timeout)?);
    opts.listen.max_connections = args.max_connections;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let id = reactor_tls::Identity::from_pem_files(cert, key).map_err(|e| e.to_string())?;
        let tls = reactor_tls::ServerTls::new(id)
            .build()
            .map_err(|e| e.to_string())?;
        opts = opts.filter(tls.factory());
    }
    opts.listen.reuse_port = args.threads > 1;

    // Bind every loop's socket before printing, so the address printed is served.
    // With port 0, the first bind picks the port and the others join it.
    let mut addr = args.listen;
    let mut listeners = Vec::new();
    for _ in 0..args.threads {
        let cannot = |e| format!("cannot listen on {addr}: {e}");
        let spawn: SpawnListener = if args.framed {
            let l = framed_echo_listener(addr, opts.clone()).map_err(cannot)?;
            addr = l.local_addr();
            Box::new(move |r| _ = r.spawn(l))
        } else {
            let l = echo_listener(addr, opts.clone()).map_err(cannot)?;
            addr = l.local_addr();
            Box::new(move |r| _ = r.spawn(l))
        };
        listeners.push(spawn);
    }
    // Handlers are not `Send`, so each loop is built on the thread that runs it.
    // Loop 0 runs on the main thread: with one loop the process has one thread,
    // and glibc then skips the thread-cancellation bookkeeping around `epoll_wait`.
    let mut listeners = listeners.into_iter();
    let first = listeners.next().expect("--threads is at least 1");
    let metrics = args.metrics.map(|_| reactor_metrics::Metrics::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    for (i, l) in listeners.enumerate() {
        let i = i + 1;
        let ready = ready_tx.clone();
        let label = format!("loop {i}: ");
        let metrics = metrics.clone();
        let t = std::thread::Builder::new()
            .name(format!("loop-{i}"))
            .spawn(move || -> Result<(), String> {
                let mut r = match event_loop(i, l, stats, label, metrics.as_ref()) {
                    Ok(r) => r,
                    Err(msg) => {
                        let _ = ready.send(Err(msg.clone()));
                        return Err(msg);
                    }
                };
                let _ = ready.send(Ok(()));
                r.run().map_err(|e| format!("event loop {i} failed: {e}"))
            })
            .map_err(|e| format!("cannot start loop thread: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    let label = if args.threads > 1 { "loop 0: " } else { "" };
    let mut main_loop = event_loop(0, first, stats, label.to_string(), metrics.as_ref())?;
    if let (Some(m), Some(a)) = (&metrics, args.metrics) {
        m.serve(&mut main_loop, a, Default::default())
            .map_err(|e| format!("cannot serve metrics on {a}: {e}"))?;
    }
    for _ in 1..args.threads {
        ready_rx
            .recv()
            .map_err(|_| "a loop thread died during set-up".to_string())??;
    }
    println!("listening on {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;

    let mut result = main_loop
        .run()
        .map_err(|e| format!("event loop 0 failed: {e}"));
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err("a loop thread panicked".into()),
        }
    }
    result
}

/// One event loop with its listener (and a stats logger and the metrics agent
/// when asked), ready to run.
fn event_loop(
    i: usize,
    listener: SpawnListener,
    stats: Duration,
    label: String,
    metrics: Option<&reactor_metrics::Metrics>,
) -> Result<Reactor, String> {
    let setup = || -> std::io::Result<Reactor> {
        let mut r = Reactor::new()?;
        r.shutdown_on_signals()?;
        listener(&mut r);
        if let Some(m) = metrics {
            m.attach(&mut r, i.to_string());
        }
        if !stats.is_zero() {
            r.spawn(StatsLogger::new(stats, label));
        }
        Ok(r)
    };
    setup().map_err(|e| format!("cannot set up event loop {i}: {e}"))
}
