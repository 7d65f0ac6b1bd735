//! What a full TLS handshake costs the server's thread, in memory (no sockets): for
//! each certificate given, `rounds` full handshakes (the client resumes no session)
//! between our server and client sides, timing only the server side's calls (the
//! loop thread's share), then as many resumed ones.
//!
//! ```text
//! cargo run --release -p reactor-tls --example handshake_cost -- ROUNDS CA.pem CERT.pem KEY.pem [CERT KEY ...]
//! ```
//! `bench/tls_certs.sh DIR` makes an ECDSA P-256 and an RSA-2048 certificate.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use reactor::StreamFilter;
use reactor_tls::{ClientTls, Identity, ServerTls};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 || !args.len().is_multiple_of(2) {
        return Err(
            "usage: handshake_cost ROUNDS CA.pem CERT.pem KEY.pem [CERT.pem KEY.pem ...]".into(),
        );
    }
    let rounds: usize = args[0].parse()?;
    let ca = std::fs::read(&args[1])?;
    // Resumption off: every round is a full handshake (certificate and signature),
    // not the resumed one a reused client config would make from the second on.
    let full = ClientTls::with_ca(&ca)?.resumption(false).build()?;
    let resuming = ClientTls::with_ca(&ca)?.build()?;
    for pair in args[2..].chunks(2) {
        let id = Identity::from_pem_files(pair[0].as_ref(), pair[1].as_ref())?;
        let server = ServerTls::new(id).build()?;
        for (kind, client) in [("full", &full), ("resumed", &resuming)] {
            // One handshake first: the resuming client then holds a ticket.
            handshake(&server, client)?;
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                times.push(handshake(&server, client)?);
            }
            times.sort();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let median = times[rounds / 2];
            println!(
                "{}: server side of a {kind} handshake: median {:.0} us, p99 {:.0} us, \
                 max {:.0} us ({:.0} handshakes/s per core)",
                pair[0],
                us(median),
                us(times[rounds * 99 / 100]),
                us(times[rounds - 1]),
                1.0 / median.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// One handshake between a new server side and a new client side, in memory; the
/// time spent in the server side's calls.
fn handshake(
    server: &reactor_tls::TlsAcceptor,
    client: &reactor_tls::TlsConnector,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut s = server.filter()?;
    let mut c = client.filter("localhost")?;
    let mut server_time = Duration::ZERO;
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let mut plain = BytesMut::new();
    for _ in 0..10 {
        c.output(&mut to_server)?;
        let t0 = Instant::now();
        while !to_server.is_empty() {
            let n = s.input(&to_server)?;
            let _ = to_server.split_to(n);
            s.read_plain(&mut plain, 1 << 20)?;
            if n == 0 {
                break;
            }
        }
        s.output(&mut to_client)?;
        server_time += t0.elapsed();
        while !to_client.is_empty() {
            let n = c.input(&to_client)?;
            let _ = to_client.split_to(n);
            c.read_plain(&mut plain, 1 << 20)?;
            if n == 0 {
                break;
            }
        }
        if !s.is_handshaking() && !c.is_handshaking() && !c.wants_output() {
            break;
        }
    }
    if s.is_handshaking() {
        return Err("handshake did not finish".into());
    }
    Ok(server_time)
}
