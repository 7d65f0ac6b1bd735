//! `proxy_probe`: small-message latency and connection rate through a TCP forwarder
//! in front of an echo server, for `bench/proxy_bench.sh`.
//!
//! ```text
//! proxy_probe rr   --addr IP:PORT [--connections 50] [--seconds 5] [--size 64]
//! proxy_probe conn --addr IP:PORT [--concurrency 50] [--seconds 5]
//! ```
//! `rr`: each connection sends `size` bytes and waits for the echo, again and again;
//! prints requests/s and latency percentiles. `conn`: connect, one byte there and
//! back, close, again and again; prints connections/s and p99 latency. One line of
//! Markdown-ready output. A tokio current-thread client: an independent
//! implementation, and one thread like the servers it measures.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "latency and connection-rate probe through a forwarder to an echo server")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Request/response over long-lived connections.
    Rr {
        /// Forwarder (or echo server) address.
        #[arg(long)]
        addr: SocketAddr,
        /// Concurrent connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Duration.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Bytes per request (echoed back).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// New connection per exchange.
    Conn {
        /// Forwarder (or echo server) address.
        #[arg(long)]
        addr: SocketAddr,
        /// Concurrent connectors.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Duration.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args.mode)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy_probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64 / 1000.0 // microseconds -> milliseconds
}

async fn run(mode: Mode) -> Result<String, String> {
    match mode {
        Mode::Rr {
            addr,
            connections,
            seconds,
            size,
        } => {
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let mut s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                tasks.push(tokio::spawn(async move {
                    let msg = vec![b'x'; size];
                    let mut back = vec![0u8; size];
                    let mut lat = Vec::new();
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        s.write_all(&msg).await.map_err(|e| e.to_string())?;
                        s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok::<_, String>(lat)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.map_err(|e| e.to_string())??);
            }
            all.sort_unstable();
            Ok(format!(
                "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
                all.len() as f64 / seconds,
                pct(&all, 0.50),
                pct(&all, 0.99)
            ))
        }
        Mode::Conn {
            addr,
            concurrency,
            seconds,
        } => {
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        let r = async {
                            let mut s = tokio::net::TcpStream::connect(addr).await?;
                            s.set_nodelay(true)?;
                            s.write_all(b"!").await?;
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).await?;
                            Ok::<_, std::io::Error>(())
                        }
                        .await;
                        match r {
                            Ok(()) => {
                                lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32)
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                }));
            }
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (l, e) = t.await.map_err(|e| e.to_string())?;
                all.extend(l);
                errors += e;
            }
            all.sort_unstable();
            Ok(format!(
                "{:.0} conn/s, p99 {:.3} ms, {errors} errors",
                all.len() as f64 / seconds,
                pct(&all, 0.99)
            ))
        }
    }
}
