//! `relay-client`: reserve an id on a relay and serve it, or tunnel to one.
//!
//! ```text
//! relay-client --relay ADDR reserve --id ID [--peer NAME] --forward HOST:PORT
//!              [--heartbeat SECS]
//! relay-client --relay ADDR connect --id ID [--listen 127.0.0.1:0]
//! ```
//! `reserve` prints `reserved ID` once the relay grants it, keeps it refreshed,
//! and bridges every circuit opened to ID to a new connection to HOST:PORT; if
//! the relay refuses it exits non-zero with the relay's reason. `connect`
//! prints `listening on IP:PORT` and turns each connection accepted there into a
//! circuit to ID. SIGINT/SIGTERM exit 0.

use std::cell::RefCell;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reactor::{ConnConfig, ListenOptions, Reactor};
use reactor_relay::client::{ClientEvent, ReserveClient, ReserveOptions, connect_listener};

#[derive(Parser, Debug)]
#[command(about = "Relay client on the reactor")]
struct Args {
    /// The relay's address (HOST:PORT).
    #[arg(long)]
    relay: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Reserve ID and bridge every circuit to HOST:PORT.
    Reserve {
        /// The id to reserve.
        #[arg(long)]
        id: String,
        /// Stable identity of this client (default: the id); reconnects with the
        /// same identity get the same reservation back.
        #[arg(long)]
        peer: Option<String>,
        /// Where circuits go (resolved for every circuit).
        #[arg(long)]
        forward: String,
        /// Seconds between heartbeats (below the relay's heartbeat timeout).
        #[arg(long, default_value_t = 10.0)]
        heartbeat: f64,
        /// Most circuits served at once; further INCOMINGs are ignored until one
        /// ends (0: no limit).
        #[arg(long, default_value_t = 64)]
        max_circuits: usize,
    },
    /// Accept local connections and open a circuit to ID for each.
    Connect {
        /// The id to connect to.
        #[arg(long)]
        id: String,
        /// Local address to listen on (port 0: the OS picks one and it is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

pub fn main() -> ExitCode {
    reactor_cli::init_logger();
    let args = Args::parse();
    reactor_cli::exit("relay-client", run(args))
}

fn run(args: Args) -> Result<(), String> {
    // Before the loop runs, so blocking here blocks nobody.
    let relay = args
        .relay
        .to_socket_addrs()
        .map_err(|e| format!("--relay {}: {e}", args.relay))?
        .next()
        .ok_or_else(|| format!("--relay {}: no address", args.relay))?;
    let mut reactor = Reactor::new().map_err(|e| format!("cannot create event loop: {e}"))?;
    reactor
        .shutdown_on_signals()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    match args.cmd {
        Cmd::Reserve {
            id,
            peer,
            forward,
            heartbeat,
            max_circuits,
        } => {
            let mut opts =
                ReserveOptions::new(relay, peer.as_deref().unwrap_or(&id), &id, &forward);
            opts.heartbeat = Duration::try_from_secs_f64(heartbeat)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or("--heartbeat must be a positive number")?;
            opts.max_circuits = max_circuits;
            let failure: Rc<RefCell<Option<String>>> = Rc::default();
            let f = failure.clone();
            let hook = Box::new(
                move |cx: &mut reactor::Loop<'_>, ev: &ClientEvent<'_>| match *ev {
                    ClientEvent::Reserved {
                        id,
                        first,
                        ttl_secs,
                    } => {
                        if first {
                            println!("reserved {id}");
                            let _ = std::io::stdout().flush();
                        }
                        log::info!("reserved {id} for {ttl_secs} s");
                    }
                    ClientEvent::Refused { reason, detail } => {
                        let mut msg = format!("relay refused the reservation: {reason}");
                        if let Some(d) = detail {
                            msg.push_str(": ");
                            msg.push_str(d);
                        }
                        *f.borrow_mut() = Some(msg);
                        cx.stop();
                    }
                    ClientEvent::Disconnected { error } => {
                        log::warn!("lost the relay: {error}");
                    }
                },
            );
            let client = ReserveClient::new(opts, hook).map_err(|e| format!("--id/--peer: {e}"))?;
            reactor.spawn(client);
            reactor
                .run()
                .map_err(|e| format!("event loop failed: {e}"))?;
            match failure.borrow_mut().take() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        Cmd::Connect { id, listen } => {
            reactor_relay::proto::check_id(&id).map_err(|e| format!("--id: {e}"))?;
            let l = connect_listener(
                listen,
                relay,
                &id,
                ListenOptions::default(),
                ConnConfig::default(),
                Duration::from_secs(15),
            )
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            println!("listening on {}", l.local_addr());
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            reactor.spawn(l);
            reactor.run().map_err(|e| format!("event loop failed: {e}"))
        }
    }
}
