//! `tokio_tls_echo`: the TLS comparison server for the benchmarks, tokio
//! `current_thread` with tokio-rustls, one task per connection, `read` into a buffer
//! and `write_all` it back, with the very same rustls configuration as `echo
//! --tls-cert` (built by `reactor_tls::ServerTls`: ring, same versions, cipher
//! suites and certificate).
//!
//! ```text
//! tokio_tls_echo --tls-cert FILE --tls-key FILE [--listen 127.0.0.1:0] [--buf-size 65536]
//! ```
//! Prints `listening on IP:PORT` once bound; SIGINT/SIGTERM exit 0.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "tokio + tokio-rustls current_thread TLS echo server (benchmark baseline)")]
struct Args {
    /// Address to listen on (port 0: the OS picks one and it is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Read buffer size per connection, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    buf_size: usize,
    /// Certificate chain (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Private key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    size: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; size];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            s.shutdown().await?;
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

async fn run(args: Args) -> Result<(), String> {
    let id = reactor_tls::Identity::from_pem_files(&args.tls_cert, &args.tls_key)
        .map_err(|e| e.to_string())?;
    let tls = reactor_tls::ServerTls::new(id)
        .build()
        .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config().clone());
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
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match acceptor.accept(s).await {
                            Ok(tls) => {
                                if let Err(e) = serve(tls, size).await {
                                    log::debug!("connection ended: {e}");
                                }
                            }
                            Err(e) => log::debug!("handshake failed: {e}"),
                        }
                    });
                }
                Err(e) => {
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
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio_tls_echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_tls_echo: {e}");
            ExitCode::FAILURE
        }
    }
}
