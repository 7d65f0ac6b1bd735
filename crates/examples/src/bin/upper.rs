//! The README's custom server: answers every line in upper case.
//! `upper [--metrics ADDR]` prints `listening on IP:PORT`; SIGINT/SIGTERM stop it.

use clap::Parser;
use reactor::framing::Delimited;
use reactor::{Framed, HandlerResult, Link, ListenOptions, Listener, Protocol, Reactor};

struct Upper;

impl Protocol for Upper {
    type Message = ();
    type Job = ();

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        link.out().extend(line.iter().map(u8::to_ascii_uppercase));
        link.send(b"\n");
        Ok(())
    }
}

#[derive(Parser)]
struct Args {
    /// Serve Prometheus metrics (GET /metrics) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

pub fn main() -> std::io::Result<()> {
    reactor_cli::init_logger(); // info: says where it listens for metrics
    let args = Args::parse();
    let mut reactor = Reactor::new()?;
    reactor.shutdown_on_signals()?; // SIGINT/SIGTERM: stop accepting, drain, exit
    if let Some(addr) = args.metrics {
        reactor_metrics::serve(&mut reactor, addr)?; // the loop's numbers, for Prometheus
    }
    let lines = Delimited::new(b"\n", 64 * 1024);
    let listener = Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        ListenOptions::default(),
        move |stream, _peer| Some(Framed::new(stream, lines.clone(), Upper)),
    )?;
    println!("listening on {}", listener.local_addr());
    reactor.spawn(listener);
    reactor.run()
}
