//! `chat`: a line-based chat room on the framed layer. Prints `listening on IP:PORT`;
//! lines go to every other client as `IP:PORT: line`; `/resolve HOST` runs on the
//! worker pool; a client with 256 KiB unsent is dropped; SIGINT/SIGTERM say goodbye.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use reactor::framed::{self, Group};
use reactor::framing::{FrameError, Lines};
use reactor::{ConnConfig, Counter, FramedConfig, HandlerResult, JobResult, Link};
use reactor::{Protocol, Reactor, StatsLogger};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Seconds without a line before a client is told and closed (0: never).
    #[arg(long, default_value = "300", value_parser = reactor_cli::parse_secs)]
    idle_timeout: Duration,
    #[arg(long, default_value_t = 4096)]
    max_line: usize,
    /// Seconds between stats lines (0: none).
    #[arg(long, default_value = "0", value_parser = reactor_cli::parse_secs)]
    stats_interval: Duration,
    /// Serve Prometheus metrics (GET /metrics, /healthz) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// What the clients of the room share.
struct Room {
    group: Group,
    lines: Counter,
    args: Args,
}

struct Client {
    room: Rc<Room>,
    peer: SocketAddr,
}

impl Protocol for Client {
    type Message = ();
    type Job = (String, std::io::Result<Vec<IpAddr>>);

    fn on_open(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        self.room.group.join(link);
        let online = self.room.group.len();
        Ok(writeln!(link, "welcome {}, {online} online", self.peer)?)
    }

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        let Some(command) = line.strip_prefix(b"/") else {
            let (room, tag) = (&self.room, format!("{}: ", self.peer));
            room.group.broadcast(link, &[tag.as_bytes(), line, b"\n"]);
            room.lines.inc();
            return Ok(());
        };
        let command = String::from_utf8_lossy(command);
        if let Some(host) = command.strip_prefix("resolve ").map(str::trim) {
            let name = host.to_string();
            if let Err(busy) = link.offload(move || (name.clone(), resolve(&name))) {
                writeln!(link, "ERROR resolve {host}: {busy}")?;
            }
        } else {
            link.send(b"ERROR unknown command\n");
        }
        Ok(())
    }

    fn on_job(&mut self, link: &mut Link<'_, Self>, r: JobResult<Self::Job>) -> HandlerResult {
        match r? {
            (host, Ok(ips)) => {
                write!(link, "resolve {host}:")?;
                ips.iter().try_for_each(|ip| write!(link, " {ip}"))?;
                writeln!(link)?;
            }
            (host, Err(e)) => writeln!(link, "ERROR resolve {host}: {e}")?,
        }
        Ok(())
    }

    fn on_frame_error(&mut self, link: &mut Link<'_, Self>, _: FrameError) -> HandlerResult {
        let max = self.room.args.max_line;
        writeln!(link, "ERROR line longer than {max} bytes")?;
        link.close_when_done();
        Ok(())
    }

    fn on_idle(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        let secs = self.room.args.idle_timeout.as_secs_f64();
        writeln!(link, "ERROR idle for {secs} s, bye")?;
        link.close_when_done();
        Ok(())
    }

    fn on_shutdown(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        link.send(b"server shutting down\n");
        link.close_when_done();
        Ok(())
    }
}

/// The host's addresses (blocking: runs on the worker pool).
fn resolve(host: &str) -> std::io::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = (host, 0).to_socket_addrs()?.map(|a| a.ip()).collect();
    ips.dedup(); // one entry per socket type
    Ok(ips)
}

pub fn main() -> std::io::Result<()> {
    reactor_cli::init_logger();
    let args = Args::parse();
    let mut reactor = Reactor::new()?;
    reactor.shutdown_on_signals()?;
    if !args.stats_interval.is_zero() {
        reactor.spawn(StatsLogger::new(args.stats_interval, ""));
    }
    if let Some(addr) = args.metrics {
        reactor_metrics::serve(&mut reactor, addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
        })?;
    }
    let idle = Some(args.idle_timeout).filter(|d| !d.is_zero());
    // Reads of 64 KiB at most: a member's 256 KiB then holds several bursts.
    let conn = ConnConfig::default().read_budget(64 * 1024);
    let cfg = FramedConfig::default().conn(conn).idle_timeout(idle);
    let (addr, framing) = (args.listen, Lines::new(args.max_line));
    let (group, lines) = (Group::new(256 * 1024), reactor.counter("chat_lines"));
    let room = Rc::new(Room { group, lines, args });
    let listener = framed::listen(addr, framing, cfg, move |peer| {
        let room = room.clone();
        Some(Client { room, peer })
    })?;
    println!("listening on {}", listener.local_addr());
    reactor.spawn(listener);
    reactor.run()
}
