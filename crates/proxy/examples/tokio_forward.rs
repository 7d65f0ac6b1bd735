//! `tokio_forward`: a TCP forwarder on tokio's current-thread runtime with
//! `copy_bidirectional`, the baseline the proxy benchmark compares against.
//!
//! ```text
//! tokio_forward --listen 127.0.0.1:0 --upstream 127.0.0.1:5201
//! ```
//! Prints `listening on IP:PORT` once bound. One thread, like the reactor's loop.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "tokio copy_bidirectional forwarder (benchmark baseline)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address to forward to.
    #[arg(long)]
    upstream: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio_forward: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_forward: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", l.local_addr()?);
    std::io::stdout().flush()?;
    let upstream = args.upstream;
    loop {
        let (mut client, _) = l.accept().await?;
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}
