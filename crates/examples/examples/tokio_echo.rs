//! `tokio_echo`: the comparison server for the benchmarks, a tokio `current_thread`
//! echo server written the way most people would write it: one task per connection,
//! `read` into a buffer, `write_all` it back.
//!
//! ```text
//! tokio_echo [--listen 127.0.0.1:0] [--buf-size 65536]
//! ```
//! Prints `listening on IP:PORT` once bound; SIGINT/SIGTERM exit 0. `--buf-size`
//! sets the read buffer of each connection (64 KiB by default, as in tokio's own
//! echo example scaled up; the side-by-side benchmark also runs it with the reactor's
//! buffer size). `TCP_NODELAY` is set on accepted sockets, as the reactor does.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "tokio current_thread echo server (benchmark baseline)")]
struct Args {
    /// Address to listen on (port 0: the OS picks one and it is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Read buffer size per connection, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    buf_size: usize,
}

async fn serve(mut s: TcpStream, size: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; size];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            // Half-close from the client: we are done once our replies are out.
            s.shutdown().await?;
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

async fn run(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    println!("listening on {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let size = args.buf_size;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        if let Err(e) = serve(s, size).await {
                            log::debug!("connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if args.buf_size == 0 || args.buf_size > 16 << 20 {
        eprintln!("tokio_echo: --buf-size must be 1..=16777216");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio_echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_echo: {e}");
            ExitCode::FAILURE
        }
    }
}
