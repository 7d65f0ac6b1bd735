//! The proxy (forwarder and SOCKS5) against real sockets on loopback, with curl as a
//! real SOCKS5 client. Every blocking read has a timeout, so a bug fails a test
//! instead of hanging it.

use reactor_test_support as common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Pusher, Running, SMALL_SOCKET_BUFFER, Server, Stream, check_stream, push_until_stuck, reset,
    run_loop, send_stream, send_stream_counted, small_buffer_connect, unacked,
};
use reactor::echo::{EchoOptions, echo_listener};
use reactor::{Config, ConnConfig, Context, Handler, HandlerResult, TimerId};
use reactor_proxy::socks5::{
    self, ATYP_DOMAIN, Command as SocksCommand, METHOD_NO_AUTH, METHOD_USERPASS, Reply,
};
use reactor_proxy::{Mode, ProxyCounters, ProxyOptions, Resolver, Target, proxy_listener};

const T: Duration = Duration::from_secs(10);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A proxy on its own loop thread.
fn start_proxy(opts: ProxyOptions) -> (SocketAddr, Arc<ProxyCounters>, Running) {
    let ((addr, counters), running) = run_loop(Config::default(), move |r| {
        let (l, c) = proxy_listener(local(0), opts).expect("proxy listener");
        let a = l.local_addr();
        r.spawn(l);
        (a, c)
    });
    (addr, counters, running)
}

fn socks_opts() -> ProxyOptions {
    ProxyOptions::new(Mode::Socks5 { auth: None })
}

fn forward_opts(to: SocketAddr) -> ProxyOptions {
    ProxyOptions::new(Mode::Forward(Target::Addr(to)))
}

/// An echo server on the reactor (its own loop).
fn echo_server() -> (SocketAddr, Running) {
    run_loop(Config::default(), |r| {
        let l = echo_listener(local(0), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    })
}

/// A tiny HTTP/1.1 server on std threads: answers every request with a body that
/// names the path, then closes.
fn http_server(bind: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(bind).expect("bind http server");
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                s.set_read_timeout(Some(T)).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("?").to_string();
                let body = format!("hello from {path}\n");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

fn curl() -> Option<PathBuf> {
    for p in ["/usr/bin/curl", "/usr/local/bin/curl"] {
        if std::path::Path::new(p).exists() {
            return Some(p.into());
        }
    }
    if std::env::var("REACTOR_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("curl is required (REACTOR_REQUIRE_INTEROP=1) but was not found; install curl");
    }
    println!("SKIPPED: curl not found (set REACTOR_REQUIRE_INTEROP=1 to make this a failure)");
    None
}

/// Runs curl with a timeout; returns (exit code, stdout, stderr).
fn run_curl(curl: &PathBuf, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(curl)
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, T).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

/// Reads until end of file (or a reset, which also ends the stream); fails on a
/// timeout. Returns the bytes read.
fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut v = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return v,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return v,
            // A stop and continue of the test process (a debugger, a busy host)
            // interrupts a read that has a timeout even without a signal handler.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("expected the connection to close within {within:?}: {e}"),
        }
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).expect("read");
    v
}

/// A raw SOCKS5 client built on the codec's client encoders: greeting (with
/// credentials if given), request; returns the stream and the reply code (or
/// `None` if the server closed before replying).
fn socks_request(
    proxy: SocketAddr,
    auth: Option<(&[u8], &[u8])>,
    cmd: SocksCommand,
    target: &Target,
) -> (TcpStream, Option<u8>) {
    let mut s = connect(proxy);
    let mut msg = Vec::new();
    match auth {
        Some((u, p)) => {
            socks5::encode_greeting(&[METHOD_USERPASS], &mut msg).unwrap();
            socks5::encode_userpass(u, p, &mut msg).unwrap();
        }
        None => socks5::encode_greeting(&[METHOD_NO_AUTH], &mut msg).unwrap(),
    }
    socks5::encode_request(cmd, target, &mut msg).unwrap();
    s.write_all(&msg).unwrap();
    let sel = read_n(&mut s, 2);
    assert_eq!(sel[0], 5);
    if auth.is_some() {
        assert_eq!(sel[1], METHOD_USERPASS);
        let st = read_n(&mut s, 2);
        if st != [1, 0] {
            return (s, None);
        }
    } else {
        assert_eq!(sel[1], METHOD_NO_AUTH);
    }
    let reply = read_reply(&mut s);
    (s, reply)
}

/// Reads one SOCKS5 reply with the codec's parser; `None` on end of file.
fn read_reply(s: &mut TcpStream) -> Option<u8> {
    let (rep, rest) = read_reply_and_rest(s)?;
    assert!(
        rest.is_empty(),
        "reply {rep:#04x} followed by {} unexpected bytes",
        rest.len()
    );
    Some(rep)
}

/// Reads one SOCKS5 reply and returns any bytes that came after it in the same read:
/// after a success reply those are tunnel data (the upstream may answer at once);
/// after a failure reply there must be none.
fn read_reply_and_rest(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    let mut b = [0u8; 64];
    loop {
        if let Some((rep, _bound, n)) = socks5::parse_reply(&got).expect("valid reply") {
            let rest = got.split_off(n);
            if rep != 0 {
                assert!(rest.is_empty(), "nothing may follow a failure reply");
            }
            return Some((rep, rest));
        }
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the SOCKS5 reply: {e}"),
        }
    }
}

fn v4(addr: SocketAddr) -> Target {
    Target::Addr(addr)
}

fn domain(host: &str, port: u16) -> Target {
    Target::Domain {
        host: host.into(),
        port,
    }
}

/// Sends an HTTP request through an established tunnel and returns the response.
fn http_get(mut s: TcpStream, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    String::from_utf8(read_to_close(&mut s, T)).unwrap()
}

// ---------------------------------------------------------------- curl interop

#[test]
fn curl_socks5_and_socks5_hostname() {
    let Some(curl) = curl() else { return };
    let web = http_server(local(0));
    let (proxy, counters, server) = start_proxy(socks_opts());
    let p = proxy.to_string();

    let url = format!("http://127.0.0.1:{}/by-address", web.port());
    let (code, out, err) = run_curl(&curl, &["--socks5", &p, &url]);
    assert_eq!(code, 0, "curl --socks5 failed: {err}");
    assert_eq!(out, "hello from /by-address\n");

    // The proxy resolves `localhost` (on the worker pool). It may yield ::1 first,
    // where nothing listens: the next address is tried.
    let url = format!("http://localhost:{}/by-name", web.port());
    let (code, out, err) = run_curl(&curl, &["--socks5-hostname", &p, &url]);
    assert_eq!(code, 0, "curl --socks5-hostname failed: {err}");
    assert_eq!(out, "hello from /by-name\n");

    // A refused destination is reported to curl as such.
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let (code, _out, err) = run_curl(&curl, &["--socks5", &p, &url]);
    assert_ne!(code, 0);
    // curl prints the SOCKS5 reply code: 5, connection refused.
    assert!(
        err.contains("(5)") || err.to_lowercase().contains("refused"),
        "curl said: {err}"
    );

    let stats = server.stop();
    let c = counters.snapshot();
    assert_eq!(c.accepted, 3);
    assert_eq!(c.connect_failed, 1);
    assert_eq!(c.active, 0);
    assert!(c.bytes_down > 100 && c.bytes_up > 50, "{c}");
    assert_eq!(stats.handlers_failed, 0);
    // The name was resolved on the worker pool, not on the loop.
    assert!(
        stats.jobs_completed >= 1,
        "no resolution went through the pool"
    );
    assert_eq!(stats.slow_dispatches, 0);
}

/// The example binary with `--auth`: curl with the right `--proxy-user` gets
/// through, with a wrong password it is turned away; SIGTERM exits 0 and logs the
/// proxy's counters.
#[test]
fn example_socks5_with_auth_and_curl() {
    let Some(curl) = curl() else { return };
    let web = http_server(local(0));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--socks5",
        "--auth",
        "alice:s3cret",
    ]);
    let mut srv = Server::start(cmd);
    let p = srv.addr.to_string();
    let url = format!("http://127.0.0.1:{}/auth", web.port());
    let (code, out, err) = run_curl(
        &curl,
        &["--socks5", &p, "--proxy-user", "alice:s3cret", &url],
    );
    assert_eq!(code, 0, "curl with credentials failed: {err}");
    assert_eq!(out, "hello from /auth\n");
    let (code, out, _) = run_curl(
        &curl,
        &["--socks5", &p, "--proxy-user", "alice:wrong", &url],
    );
    assert_ne!(code, 0);
    assert!(out.is_empty());
    let (code, _, _) = run_curl(&curl, &["--socks5", &p, &url]);
    assert_ne!(code, 0, "no credentials must not get through");
    assert!(srv.wait_stderr("authentication failed", T));

    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(T), Some(0), "{}", srv.stderr_text());
    assert!(
        srv.wait_stderr("stopped: sessions 3 (open 0)", T),
        "{}",
        srv.stderr_text()
    );
}

/// A flood of bad clients does not flood the log: the example proxy logs session
/// rejections at info level at most once a second, with a count of the ones it held
/// back (before, every one was a line).
#[test]
fn example_logs_rejections_at_a_bounded_rate() {
    const N: usize = 100;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    cmd.args(["--listen", "127.0.0.1:0", "--socks5"]);
    let mut srv = Server::start(cmd);
    let bad_client = || {
        let mut s = connect(srv.addr);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(read_to_close(&mut s, T).is_empty());
    };
    for _ in 0..N {
        bad_client();
    }
    thread::sleep(Duration::from_millis(1100));
    bad_client(); // logged, with the count of those held back
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(T), Some(0), "{}", srv.stderr_text());
    assert!(
        srv.wait_stderr(&format!("handshake failures {}", N + 1), T),
        "{}",
        srv.stderr_text()
    );
    let log = srv.stderr_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("session 127.0.0.1:"))
        .count();
    assert!(
        (2..=10).contains(&lines),
        "{lines} rejection lines for {} bad clients:\n{log}",
        N + 1
    );
    assert!(log.contains("more rejections since the last one"), "{log}");
}

#[test]
fn example_forward_mode_and_bad_arguments() {
    let (echo, _echo_loop) = echo_server();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    cmd.args(["--listen", "127.0.0.1:0", "--upstream", &echo.to_string()]);
    let mut srv = Server::start(cmd);
    let mut s = connect(srv.addr);
    s.write_all(b"through the forwarder").unwrap();
    assert_eq!(read_n(&mut s, 21), b"through the forwarder");
    // A signal stops accepting, but an open tunnel carries on until it finishes.
    srv.signal(libc::SIGINT);
    assert!(srv.wait_stderr("shutting down", T), "{}", srv.stderr_text());
    s.write_all(b"still open").unwrap();
    assert_eq!(read_n(&mut s, 10), b"still open");
    assert!(
        TcpStream::connect_timeout(&srv.addr, Duration::from_secs(2)).is_err(),
        "new connections must be refused while draining"
    );
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_close(&mut s, T).is_empty());
    assert_eq!(srv.wait_exit(T), Some(0), "{}", srv.stderr_text());
    assert!(
        srv.wait_stderr("bytes up 31 down 31", T),
        "{}",
        srv.stderr_text()
    );

    for args in [
        &["--listen", "127.0.0.1:0"][..],
        &["--upstream", "nohost", "--listen", "127.0.0.1:0"],
        &["--socks5", "--auth", "nocolon", "--listen", "127.0.0.1:0"],
        &[
            "--socks5",
            "--deny",
            "10.0.0.0/40",
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            "--socks5",
            "--connect-timeout",
            "-1",
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            "--socks5",
            "--linger-timeout",
            "0",
            "--listen",
            "127.0.0.1:0",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty() && !err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

// ---------------------------------------------------------------- forwarding

#[test]
fn forward_100mib_each_way_byte_exact() {
    const SIZE: usize = 100 << 20;
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    let upstream = thread::spawn(move || {
        let (s, _) = up.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let w = s.try_clone().unwrap();
        let writer = thread::spawn(move || send_stream(w, 2, SIZE));
        let got = check_stream(s, 1);
        let _keep = writer.join().unwrap();
        got
    });
    let (proxy, counters, server) = start_proxy(forward_opts(up_addr));
    let s = connect(proxy);
    let w = s.try_clone().unwrap();
    let writer = thread::spawn(move || send_stream(w, 1, SIZE));
    let down = check_stream(s, 2);
    let _keep = writer.join().unwrap();
    assert_eq!(down, SIZE, "client received");
    assert_eq!(upstream.join().unwrap(), SIZE, "upstream received");
    // Both directions half-closed: the session finishes by itself.
    wait_idle(&counters);
    let c = counters.snapshot();
    assert_eq!(
        (c.active, c.bytes_up, c.bytes_down),
        (0, SIZE as u64, SIZE as u64)
    );
    assert_eq!(server.stop().handlers_failed, 0);
}

#[test]
fn forward_1000_concurrent_sessions() {
    const N: usize = 1000;
    let (echo, _echo_loop) = echo_server();
    let (proxy, counters, server) = start_proxy(forward_opts(echo));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c2 = counters.clone();
    let total = rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(60), async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // All sessions open at once, each proven relaying by one round trip.
            let mut conns = Vec::new();
            for i in 0..N {
                let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
                s.write_all(&(i as u32).to_le_bytes()).await.unwrap();
                conns.push(s);
            }
            for (i, s) in conns.iter_mut().enumerate() {
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                assert_eq!(u32::from_le_bytes(b) as usize, i);
            }
            assert_eq!(c2.snapshot().active, N as u64, "all sessions open at once");
            let mut tasks = Vec::new();
            for (i, s) in conns.into_iter().enumerate() {
                tasks.push(tokio::spawn(async move {
                    let payload = common::pseudo_random_bytes(i as u64 + 7, 1000 + i * 37);
                    let (mut rd, mut wr) = s.into_split();
                    let send = payload.clone();
                    let w = tokio::spawn(async move {
                        wr.write_all(&send).await.unwrap();
                        wr.shutdown().await.unwrap();
                    });
                    let mut got = Vec::new();
                    rd.read_to_end(&mut got).await.unwrap();
                    w.await.unwrap();
                    assert!(got == payload, "session {i}: corrupted");
                    got.len() + 4
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        })
        .await
        .expect("sessions stalled")
    });
    wait_idle(&counters);
    let c = counters.snapshot();
    assert_eq!(c.accepted, N as u64);
    assert_eq!(c.active, 0);
    assert_eq!(c.bytes_up, total as u64);
    assert_eq!(c.bytes_down, total as u64);
    assert_eq!(server.stop().handlers_failed, 0);
}

#[test]
fn half_close_travels_both_ways() {
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // 1: the client half-closes first; we answer after its end of file.
        let (mut s, _) = up.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        write!(s, "got {} bytes", req.len()).unwrap();
        drop(s);
        // 2: we half-close first; the client still reaches us afterwards.
        let (mut s, _) = up.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(b"banner").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut late = Vec::new();
        s.read_to_end(&mut late).unwrap();
        tx.send(late).unwrap();
    });
    let (proxy, counters, server) = start_proxy(forward_opts(up_addr));

    let mut c = connect(proxy);
    c.write_all(b"request body").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut c, T), b"got 12 bytes");

    let mut c = connect(proxy);
    assert_eq!(read_to_close(&mut c, T), b"banner");
    c.write_all(b"after your FIN").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), b"after your FIN");

    wait_idle(&counters);
    let s = counters.snapshot();
    assert_eq!((s.active, s.bytes_up, s.bytes_down), (0, 26, 18));
    assert_eq!(server.stop().handlers_failed, 0);
}

/// A forwarder to `to` with small write queues (256 KiB high, 64 KiB low
/// watermark), so that backpressure sets in after little data.
fn forward_opts_small_queues(to: SocketAddr) -> ProxyOptions {
    let mut opts = forward_opts(to);
    opts.conn = ConnConfig::default()
        .high_watermark(256 * 1024)
        .low_watermark(64 * 1024);
    opts
}

/// An upstream that accepts one connection and does not read it until `go` is
/// sent; then it checks stream `seed` to end of file and returns the byte count.
fn upstream_reading_on_go(seed: u64) -> (SocketAddr, mpsc::Sender<()>, thread::JoinHandle<usize>) {
    let up = TcpListener::bind(local(0)).unwrap();
    let addr = up.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let upstream = thread::spawn(move || {
        let (s, _) = up.accept().unwrap();
        go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        check_stream(s, seed)
    });
    (addr, go_tx, upstream)
}

/// Waits (bounded) until every session of the proxy has closed, and checks it.
fn wait_idle(counters: &ProxyCounters) {
    let end = Instant::now() + T;
    while counters.snapshot().active > 0 && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    let c = counters.snapshot();
    assert_eq!(c.active, 0, "sessions left open: {c}");
}

fn closed_port() -> u16 {
    let l = TcpListener::bind(local(0)).unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn upstream_refused_closes_client_promptly() {
    let mut opts = forward_opts(local(closed_port()));
    opts.connect_timeout = Duration::from_secs(30);
    let (proxy, counters, server) = start_proxy(opts);
    let t0 = Instant::now();
    let mut c = connect(proxy);
    assert!(read_to_close(&mut c, Duration::from_secs(5)).is_empty());
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(counters.snapshot().connect_failed, 1);
    // A host name that resolves (on the pool) to a closed port: same.
    drop(server);
    let mut opts = ProxyOptions::new(Mode::Forward(domain("localhost", closed_port())));
    opts.connect_timeout = Duration::from_secs(30);
    let (proxy, counters, _server) = start_proxy(opts);
    let mut c = connect(proxy);
    assert!(read_to_close(&mut c, Duration::from_secs(5)).is_empty());
    assert_eq!(counters.snapshot().connect_failed, 1);
}

#[test]
fn upstream_dying_mid_transfer_closes_client() {
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = up.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(&vec![7u8; 1 << 20]).unwrap();
        let mut b = vec![0u8; 64 * 1024];
        let mut n = 0;
        while n < 256 * 1024 {
            n += s.read(&mut b).unwrap();
        }
        // Die with unread data pending: the kernel sends a reset.
        drop(s);
    });
    let (proxy, counters, server) = start_proxy(forward_opts(up_addr));
    let c = connect(proxy);
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let buf = vec![1u8; 64 * 1024];
        let t0 = Instant::now();
        loop {
            if let Err(e) = w.write_all(&buf) {
                return (e.kind(), t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return (ErrorKind::TimedOut, t0.elapsed());
            }
        }
    });
    let mut c = c;
    let got = read_to_close(&mut c, T);
    assert!(got.len() <= 1 << 20 && got.iter().all(|b| *b == 7));
    let (kind, _) = writer.join().unwrap();
    assert_ne!(kind, ErrorKind::TimedOut, "client writes never failed");
    wait_idle(&counters);
    assert_eq!(counters.snapshot().active, 0);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// The upstream sends its answer and closes; the client, not reading yet, uploads
/// afterwards, so the proxy's write to the upstream fails (the upstream's kernel
/// answers with a reset). The answer the proxy holds for the client must still reach
/// it, followed by a clean end of file.
#[test]
fn upstream_write_failure_keeps_the_download() {
    const D: usize = 768 << 10;
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    let (closed_tx, closed_rx) = mpsc::channel();
    thread::spawn(move || {
        let (s, _) = up.accept().unwrap();
        // All of it, a FIN, and a close with nothing unread: no reset yet.
        drop(send_stream(s, 41, D));
        closed_tx.send(()).unwrap();
    });
    let (proxy, counters, server) = start_proxy(forward_opts(up_addr));
    let mut c = small_buffer_connect(proxy, T);
    closed_rx.recv_timeout(T).unwrap();
    thread::sleep(Duration::from_millis(200)); // the proxy reads the rest and the FIN
    for _ in 0..10 {
        if c.write_all(&[1u8; 16 * 1024]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        check_stream(c, 41),
        D,
        "the client's download was cut short"
    );
    wait_idle(&counters);
    assert_eq!(counters.snapshot().bytes_down, D as u64);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// The upstream sends until everything is stuck (the client does not read yet, so
/// the proxy holds a full queue for it and stops reading the upstream), then resets.
/// Every byte the proxy's side acknowledged (its queue, and what waits unread in its
/// socket) reaches the client, then a clean end of file; only what the upstream's
/// kernel still held is lost, as over direct TCP.
#[test]
fn upstream_reset_after_its_last_bytes_keeps_them() {
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    let (reset_tx, reset_rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = up.accept().unwrap();
        let sent = push_until_stuck(&mut s, 42);
        let acked = sent - unacked(&s);
        reset(s);
        reset_tx.send(acked).unwrap();
    });
    let opts = forward_opts_small_queues(up_addr);
    let (proxy, counters, server) = start_proxy(opts);
    let c = small_buffer_connect(proxy, T);
    let acked = reset_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        check_stream(c, 42),
        acked,
        "the client's download was cut short"
    );
    wait_idle(&counters);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// The client uploads until everything is stuck (the upstream does not read yet),
/// then resets. Every byte the proxy's side acknowledged is still delivered to the
/// upstream, then a clean end of file.
#[test]
fn client_reset_after_its_last_bytes_keeps_the_upload() {
    let (up_addr, go_tx, upstream) = upstream_reading_on_go(43);
    let opts = forward_opts_small_queues(up_addr);
    let (proxy, counters, server) = start_proxy(opts);
    let mut c = connect(proxy);
    let sent = push_until_stuck(&mut c, 43);
    let acked = sent - unacked(&c);
    reset(c);
    thread::sleep(Duration::from_millis(200));
    go_tx.send(()).unwrap();
    assert_eq!(upstream.join().unwrap(), acked, "the upload was cut short");
    wait_idle(&counters);
    assert_eq!(counters.snapshot().bytes_up, acked as u64);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// The client uploads, then closes its socket entirely while the upstream is not
/// reading; the upstream's answer makes the proxy's writes to the client fail. The
/// upload the proxy holds still reaches the upstream, then a clean end of file.
#[test]
fn client_write_failure_keeps_the_upload() {
    const U: usize = 512 << 10;
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let upstream = thread::spawn(move || {
        let (mut s, _) = up.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        closed_rx.recv_timeout(T).unwrap();
        // Answer a client that is gone: its kernel resets, the proxy's writes fail.
        for _ in 0..10 {
            if s.write_all(&[2u8; 16 * 1024]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        check_stream(s, 44)
    });
    let (proxy, counters, server) = start_proxy(forward_opts(up_addr));
    let mut c = connect(proxy);
    let mut buf = vec![0u8; U];
    Stream(44).fill(&mut buf);
    c.write_all(&buf).unwrap();
    drop(c); // nothing unread (nothing came yet): a clean close
    thread::sleep(Duration::from_millis(200));
    closed_tx.send(()).unwrap();
    assert_eq!(upstream.join().unwrap(), U, "the upload was cut short");
    wait_idle(&counters);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// After the upstream failed and everything it sent is in the proxy's hands, a
/// client whose kernel does not take it (its receive window is full: it does not
/// read) is waited for at most the linger timeout: the session stays while bytes
/// sent to the client are unacknowledged, closes at the timeout, and closing loses
/// none of them (they were in the kernel's send buffer, which a close still
/// delivers).
#[test]
fn failed_session_lingers_then_closes() {
    const D: usize = 12 << 10;
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    let (reset_tx, reset_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let (mut s, _) = up.accept().unwrap();
        let mut buf = vec![0u8; D];
        Stream(45).fill(&mut buf);
        s.write_all(&buf).unwrap();
        // Everything is acknowledged by the proxy's kernel, and the proxy has read
        // it (the client has its first bytes); then a reset. A reset that came
        // before the proxy's read would discard the bytes in its kernel, and
        // leave it nothing to linger for.
        while unacked(&s) > 0 {
            thread::sleep(Duration::from_millis(5));
        }
        go_rx.recv_timeout(T).unwrap();
        reset(s);
        reset_tx.send(Instant::now()).unwrap();
    });
    const LINGER: Duration = Duration::from_millis(1500);
    let mut opts = forward_opts(up_addr);
    opts.linger_timeout = LINGER;
    let (proxy, counters, server) = start_proxy(opts);
    // The smallest receive buffer the kernel allows, and no reading yet.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(1).unwrap();
    sock.connect_timeout(&proxy.into(), T).unwrap();
    let c: TcpStream = sock.into();
    c.set_read_timeout(Some(T)).unwrap();
    // One write of 12 KiB is one segment on loopback, read by the proxy at once:
    // when the client sees a byte, the proxy holds them all.
    c.peek(&mut [0u8; 1])
        .expect("the first bytes reach the client");
    go_tx.send(()).unwrap();
    // The proxy's linger deadline is at least LINGER after the reset.
    let reset_at = reset_rx.recv_timeout(T).unwrap();
    thread::sleep(
        (reset_at + Duration::from_millis(400)).saturating_duration_since(Instant::now()),
    );
    let open = counters.snapshot().active;
    assert_eq!(
        open,
        1,
        "closed {:?} after the reset, while the client's kernel had not acknowledged \
         everything",
        reset_at.elapsed()
    );
    wait_idle(&counters);
    let closed_after = reset_at.elapsed();
    assert!(
        closed_after >= LINGER && closed_after < LINGER + Duration::from_secs(3),
        "closed {closed_after:?} after the reset (linger timeout {LINGER:?})"
    );
    // Nothing was lost by closing: every byte arrives, then end of file.
    assert_eq!(
        check_stream(c, 45),
        D,
        "the client's download was cut short"
    );
    assert_eq!(server.stop().handlers_failed, 0);
}

/// The prompt end: the upstream resets in the middle of a transfer; the client gets
/// every byte the proxy had received, then end of file, and its own writes (it
/// keeps uploading) fail within a second of reading the end: the proxy closes once
/// the client's kernel has acknowledged everything, not at the linger timeout
/// (5 s here).
#[test]
fn upstream_reset_mid_transfer_ends_the_client_promptly() {
    const D: usize = 1 << 20;
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = up.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        // Some of the client's upload first: the transfer is under way both ways.
        let mut b = vec![0u8; 64 * 1024];
        let mut n = 0;
        while n < 256 * 1024 {
            n += s.read(&mut b).unwrap();
        }
        let mut buf = vec![0u8; D];
        Stream(46).fill(&mut buf);
        s.write_all(&buf).unwrap();
        while unacked(&s) > 0 {
            thread::sleep(Duration::from_millis(2));
        }
        reset(s); // with the client's upload unread: a reset, mid-transfer
    });
    let mut opts = forward_opts(up_addr);
    opts.linger_timeout = Duration::from_secs(5);
    let (proxy, counters, server) = start_proxy(opts);
    let c = connect(proxy);
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let buf = vec![1u8; 16 * 1024];
        let t0 = Instant::now();
        loop {
            if let Err(e) = w.write_all(&buf) {
                return Some((e.kind(), Instant::now()));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return None;
            }
        }
    });
    let got = check_stream(c, 46);
    let eof_at = Instant::now();
    assert_eq!(got, D, "bytes the proxy had received were lost");
    let (kind, failed_at) = writer
        .join()
        .unwrap()
        .expect("the client's writes never failed");
    let after = failed_at.saturating_duration_since(eof_at);
    assert!(
        after < Duration::from_secs(1),
        "the client's writes failed ({kind:?}) only {after:?} after it read everything"
    );
    wait_idle(&counters);
    assert_eq!(counters.snapshot().bytes_down, D as u64);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// An upstream that does not read: the client can only push a bounded amount
/// (proxy watermark + socket buffers), and everything arrives once it reads.
#[test]
fn backpressure_bounds_buffering_and_resumes() {
    let (up_addr, go_tx, upstream) = upstream_reading_on_go(5);
    let opts = forward_opts_small_queues(up_addr);
    let (proxy, counters, server) = start_proxy(opts);
    let mut c = connect(proxy);
    // Push until nothing moves for 500 ms (everything between us and the upstream's
    // receive buffer is full).
    let mut push = Pusher::new(5);
    let sent = push.until_stuck(&mut c, Duration::from_millis(500), 64 << 20);
    assert!(
        sent > 256 * 1024,
        "only {sent} bytes went through before stalling"
    );
    // Now the upstream reads: the stalled side resumes and every byte arrives.
    go_tx.send(()).unwrap();
    push.write_more(&mut c, 3 << 20);
    let sent = push.sent();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(upstream.join().unwrap(), sent);
    drop(c);
    wait_idle(&counters);
    assert_eq!(counters.snapshot().bytes_up, sent as u64);
    server.stop();
}

/// A handler on the proxy's loop that samples, every millisecond, how many bytes the
/// loop holds in user space (read and not yet written: its `bytes_in - bytes_out`,
/// exact for a forwarder, whose every byte read is a byte to write) and keeps the
/// peak.
struct HeldBytesProbe(Arc<AtomicU64>);

impl Handler for HeldBytesProbe {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_repeat(Duration::from_millis(1));
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        let s = cx.stats();
        self.0
            .fetch_max(s.bytes_in.saturating_sub(s.bytes_out), Ordering::Relaxed);
        Ok(())
    }
    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.close();
        Ok(())
    }
}

/// A proxy on its own loop thread, with a [`HeldBytesProbe`] beside it.
fn start_probed_proxy(
    opts: ProxyOptions,
) -> (SocketAddr, Arc<ProxyCounters>, Arc<AtomicU64>, Running) {
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    let ((addr, counters), running) = run_loop(Config::default(), move |r| {
        let (l, c) = proxy_listener(local(0), opts).expect("proxy listener");
        let a = l.local_addr();
        r.spawn(l);
        r.spawn(HeldBytesProbe(p));
        (a, c)
    });
    (addr, counters, peak, running)
}

/// A listener whose accepted connections have small kernel buffers (see
/// [`SMALL_SOCKET_BUFFER`]).
fn small_buffer_listener() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(SMALL_SOCKET_BUFFER).unwrap();
    s.set_send_buffer_size(SMALL_SOCKET_BUFFER).unwrap();
    s.bind(&local(0).into()).unwrap();
    s.listen(16).unwrap();
    s.into()
}

/// Writes `total` bytes of stream `seed`, counting progress in `sent`, then
/// half-closes. A write stuck for longer than the socket's write timeout fails with
/// a message saying how far it got.
fn send_counted(w: &mut TcpStream, seed: u64, total: usize, sent: &AtomicUsize, who: &str) {
    send_stream_counted(w, seed, total, who, |n| {
        sent.fetch_add(n, Ordering::Relaxed);
    });
}

/// Full-duplex bulk where neither end reads at first, through `via` (the proxy, or
/// the upstream itself for the direct-TCP baseline): the client sends `n` bytes and
/// only then reads; the upstream sends `m` bytes and starts reading only once both
/// writers are stuck. Checks both streams byte by byte.
fn both_ways_before_reading(upstream: TcpListener, via: Option<SocketAddr>, n: usize, m: usize) {
    let to = via.unwrap_or_else(|| upstream.local_addr().unwrap());
    let client_sent = Arc::new(AtomicUsize::new(0));
    let upstream_sent = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<(&str, Result<usize, String>)>();
    let panic_text = |e: Box<dyn std::any::Any + Send>| -> String {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    };

    let up_sent = upstream_sent.clone();
    let done = done_tx.clone();
    thread::spawn(move || {
        let r = std::panic::catch_unwind(move || {
            let (s, _) = upstream.accept().unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.set_write_timeout(Some(T)).unwrap();
            let mut w = s.try_clone().unwrap();
            let writer = thread::spawn(move || send_counted(&mut w, 22, m, &up_sent, "upstream"));
            go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
            let got = check_stream(s, 21);
            writer.join().map_err(panic_text).map(|()| got)
        });
        let _ = done.send(("upstream", r.map_err(panic_text).and_then(|r| r)));
    });
    let c_sent = client_sent.clone();
    thread::spawn(move || {
        let r = std::panic::catch_unwind(move || {
            let mut s = small_buffer_connect(to, T);
            send_counted(&mut s, 21, n, &c_sent, "client");
            check_stream(s, 22)
        });
        let _ = done_tx.send(("client", r.map_err(panic_text)));
    });

    // Wait until neither writer has moved for 400 ms.
    let (mut last, mut still_since) = ((0, 0), Instant::now());
    let t0 = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(20));
        let now = (
            client_sent.load(Ordering::Relaxed),
            upstream_sent.load(Ordering::Relaxed),
        );
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if still_since.elapsed() >= Duration::from_millis(400) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never stalled");
    }
    // Otherwise the scenario proves nothing: both must be waiting for a reader.
    assert!(
        last.0 < n && last.1 < m,
        "both writers must be stuck before anyone reads (client sent {} of {n}, upstream {} of {m})",
        last.0,
        last.1
    );
    go_tx.send(()).unwrap();
    for _ in 0..2 {
        let (who, r) = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a side neither finished nor failed");
        let got = r.unwrap_or_else(|e| panic!("{who} failed: {e}"));
        let want = if who == "client" { m } else { n };
        assert_eq!(got, want, "{who} received");
    }
}

/// A client that uploads while not yet reading its download must not be held up by
/// its own download queue: over direct TCP this exchange completes, so through the
/// proxy it must too, with the proxy holding at most a high watermark plus a read
/// budget per direction.
#[test]
fn upload_is_not_stalled_by_its_own_download_queue() {
    const N: usize = 24 << 20;
    const M: usize = 24 << 20;
    // The same exchange over direct TCP completes: the baseline.
    both_ways_before_reading(small_buffer_listener(), None, N, M);

    let up = small_buffer_listener();
    let mut opts = forward_opts(up.local_addr().unwrap());
    opts.conn = ConnConfig::default()
        .high_watermark(256 * 1024)
        .low_watermark(64 * 1024)
        .read_budget(64 * 1024);
    // Reading stops at the high watermark, one read budget past it at most.
    let per_direction = opts.conn.high_watermark + opts.conn.read_budget;
    let (proxy, counters, peak, server) = start_probed_proxy(opts);
    both_ways_before_reading(up, Some(proxy), N, M);
    wait_idle(&counters);
    let c = counters.snapshot();
    assert_eq!((c.bytes_up, c.bytes_down), (N as u64, M as u64));
    let peak = peak.load(Ordering::Relaxed) as usize;
    assert!(
        peak <= 2 * per_direction,
        "the proxy held {peak} bytes at once (bound {})",
        2 * per_direction
    );
    assert_eq!(server.stop().handlers_failed, 0);
}

#[test]
fn idle_sessions_are_closed() {
    let (echo, _echo_loop) = echo_server();
    let mut opts = forward_opts(echo);
    opts.idle_timeout = Duration::from_millis(300);
    let (proxy, _counters, _server) = start_proxy(opts);
    let mut c = connect(proxy);
    c.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut c, 4), b"ping");
    let t0 = Instant::now();
    assert!(read_to_close(&mut c, Duration::from_secs(5)).is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(250));
}

#[test]
fn session_limits_refuse_and_count() {
    let mut opts = socks_opts();
    opts.max_sessions = 4;
    opts.max_sessions_per_ip = 2;
    let (proxy, counters, server) = start_proxy(opts);
    // Two sessions from 127.0.0.1 (held in their handshake), a third is refused.
    let a = connect(proxy);
    let b = connect(proxy);
    let mut c = connect(proxy);
    assert!(read_to_close(&mut c, T).is_empty());
    // Two from another loopback address fill the global limit; the next is refused.
    let from = |ip: [u8; 4]| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
        s.connect_timeout(&proxy.into(), T).unwrap();
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(T)).unwrap();
        s
    };
    let d = from([127, 0, 0, 2]);
    let e = from([127, 0, 0, 2]);
    let mut f = from([127, 0, 0, 3]);
    assert!(read_to_close(&mut f, T).is_empty());
    let st = counters.snapshot();
    assert_eq!((st.refused_per_ip, st.refused_total, st.active), (1, 1, 4));
    // Closing sessions frees their slots.
    drop((a, b));
    let end = Instant::now() + T;
    while counters.snapshot().active > 2 && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    let g = connect(proxy);
    let (mut h, rep) = socks_request(proxy, None, SocksCommand::Bind, &v4(local(1)));
    assert_eq!(rep, Some(Reply::CommandNotSupported.code()));
    assert!(read_to_close(&mut h, T).is_empty());
    drop((d, e, g));
    server.stop();
}

// ---------------------------------------------------------------- SOCKS5 replies

fn expect_reply(proxy: SocketAddr, cmd: SocksCommand, target: &Target, want: Reply) -> TcpStream {
    let (mut s, rep) = socks_request(proxy, None, cmd, target);
    assert_eq!(
        rep.and_then(Reply::from_code),
        Some(want),
        "{cmd:?} {target}: wrong reply"
    );
    if want != Reply::Succeeded {
        // Then a prompt close.
        assert!(read_to_close(&mut s, Duration::from_secs(5)).is_empty());
    }
    s
}

/// A listener on 127.0.0.1 that never answers a connect: backlog 0 and its accept
/// queue filled with connections nobody accepts, so the kernel drops further SYNs.
/// Keep the returned sockets (the listener and its fillers) alive while using it.
fn silent_listener() -> (SocketAddr, Vec<socket2::Socket>) {
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&local(0).into()).unwrap();
    full.listen(0).unwrap();
    let addr = full.local_addr().unwrap().as_socket().unwrap();
    let mut keep = vec![full];
    for _ in 0..3 {
        let f = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        f.set_nonblocking(true).unwrap();
        let _ = f.connect(&addr.into());
        keep.push(f);
    }
    thread::sleep(Duration::from_millis(100));
    (addr, keep)
}

/// `connect_timeout` bounds the whole connect: name resolution (here a resolver that
/// takes 300 ms) plus every address (here three that never answer), not each address
/// on its own. Each address but the last gets an equal share of what is left, so a
/// silent first address cannot use up the budget of a working second one.
#[test]
fn connect_timeout_bounds_resolution_and_every_address() {
    let web = http_server(local(0));
    let silent: Vec<_> = (0..3).map(|_| silent_listener()).collect();
    let silent_addrs: Vec<SocketAddr> = silent.iter().map(|(a, _)| *a).collect();
    let mut opts = socks_opts();
    opts.connect_timeout = Duration::from_millis(1200);
    opts.resolver = Resolver::new(move |host, _port| {
        thread::sleep(Duration::from_millis(300));
        match host {
            "silent.test" => Ok(silent_addrs.clone()),
            "silent-then-web.test" => Ok(vec![silent_addrs[0], web]),
            _ => Err(std::io::Error::new(ErrorKind::NotFound, "unknown name")),
        }
    });
    let (proxy, counters, server) = start_proxy(opts);

    // Per address, this took 0.3 s + 3 x 1.2 s.
    let t0 = Instant::now();
    expect_reply(
        proxy,
        SocksCommand::Connect,
        &domain("silent.test", 1),
        Reply::TtlExpired,
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1100),
        "gave up before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "the connect timeout did not bound the whole attempt: {took:?}"
    );

    // The silent first address gets half of the 0.9 s left; the second connects.
    let s = expect_reply(
        proxy,
        SocksCommand::Connect,
        &domain("silent-then-web.test", 1),
        Reply::Succeeded,
    );
    assert!(http_get(s, "/second").ends_with("hello from /second\n"));

    wait_idle(&counters);
    assert_eq!(server.stop().handlers_failed, 0);

    // A forwarder to such a name: the client is closed within the same bound.
    let mut opts = ProxyOptions::new(Mode::Forward(domain("silent.test", 1)));
    opts.connect_timeout = Duration::from_millis(1200);
    let silent_addrs: Vec<SocketAddr> = silent.iter().map(|(a, _)| *a).collect();
    opts.resolver = Resolver::new(move |_host, _port| {
        thread::sleep(Duration::from_millis(300));
        Ok(silent_addrs.clone())
    });
    let (proxy, _counters, _server) = start_proxy(opts);
    let t0 = Instant::now();
    let mut c = connect(proxy);
    assert!(read_to_close(&mut c, Duration::from_secs(5)).is_empty());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_millis(2500),
        "forwarder: {took:?}"
    );
    drop(silent);
}

/// A client that resets while the upstream connect is still running (here one that
/// never answers, with a 10 s connect timeout) ends its session at once: it does not
/// hold a session slot until the connect times out. (A client's FIN at that point
/// is a half-close, which must travel once connected, so only a reset counts.)
#[test]
fn a_client_reset_during_the_upstream_connect_ends_the_session_at_once() {
    let (silent, keep) = silent_listener();
    let mut opts = forward_opts(silent);
    opts.connect_timeout = Duration::from_secs(10);
    let (proxy, counters, server) = start_proxy(opts);
    let c = connect(proxy);
    let end = Instant::now() + T;
    while counters.snapshot().active == 0 && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(counters.snapshot().active, 1, "the session never started");
    thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    common::reset(c);
    while counters.snapshot().active > 0 && t0.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed();
    assert_eq!(
        counters.snapshot().active,
        0,
        "the session outlived its client"
    );
    assert!(
        took < Duration::from_secs(2),
        "closed {took:?} after the reset"
    );
    assert_eq!(server.stop().handlers_failed, 0);
    drop(keep);
}

#[test]
fn socks5_every_reply_code() {
    let web = http_server(local(0));
    let web6 = http_server("[::1]:0".parse().unwrap());
    let mut opts = socks_opts();
    opts.connect_timeout = Duration::from_millis(300);
    opts.rules.deny_ports = vec![25];
    opts.rules.deny_nets = vec!["127.0.0.2/32".parse().unwrap()];
    let (proxy, counters, server) = start_proxy(opts);
    let connect_cmd = SocksCommand::Connect;

    // 0x00 to IPv4, IPv6 and domain targets, with real traffic after it.
    let s = expect_reply(proxy, connect_cmd, &v4(web), Reply::Succeeded);
    assert!(http_get(s, "/v4").ends_with("hello from /v4\n"));
    let s = expect_reply(proxy, connect_cmd, &v4(web6), Reply::Succeeded);
    assert!(http_get(s, "/v6").ends_with("hello from /v6\n"));
    let s = expect_reply(
        proxy,
        connect_cmd,
        &domain("localhost", web.port()),
        Reply::Succeeded,
    );
    assert!(http_get(s, "/name").ends_with("hello from /name\n"));

    // 0x01: an empty domain name (the codec's encoder refuses to write one).
    let mut s = connect(proxy);
    s.write_all(&[5, 1, METHOD_NO_AUTH, 5, 1, 0, ATYP_DOMAIN, 0, 0, 80])
        .unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    assert_eq!(read_reply(&mut s), Some(Reply::GeneralFailure.code()));
    assert!(read_to_close(&mut s, T).is_empty());
    // Close it: a refused session waits (up to the handshake timeout) for the
    // client to close, and a stream kept open would outlive `wait_idle` below.
    drop(s);

    // 0x02: a denied port, a denied range, and a name resolving into it.
    expect_reply(proxy, connect_cmd, &v4(local(25)), Reply::NotAllowed);
    let denied = SocketAddr::from(([127, 0, 0, 2], web.port()));
    expect_reply(proxy, connect_cmd, &v4(denied), Reply::NotAllowed);

    // 0x03: the kernel refuses a TCP connect to the broadcast address with
    // ENETUNREACH at once; no packet leaves the machine.
    let bcast = SocketAddr::from(([255, 255, 255, 255], 80));
    expect_reply(proxy, connect_cmd, &v4(bcast), Reply::NetworkUnreachable);

    // 0x04: a name that cannot resolve (a 64-byte label is rejected by the resolver
    // locally, so no DNS query is sent).
    let bad_name = format!("{}.invalid", "a".repeat(64));
    expect_reply(
        proxy,
        connect_cmd,
        &domain(&bad_name, 80),
        Reply::HostUnreachable,
    );

    // 0x05: nothing listens.
    expect_reply(
        proxy,
        connect_cmd,
        &v4(local(closed_port())),
        Reply::ConnectionRefused,
    );

    // 0x06: a listener whose accept queue is full never completes the handshake;
    // the 300 ms connect timeout answers TTL expired.
    let (full_addr, fillers) = silent_listener();
    let t0 = Instant::now();
    expect_reply(proxy, connect_cmd, &v4(full_addr), Reply::TtlExpired);
    assert!(t0.elapsed() >= Duration::from_millis(250));

    // 0x07: BIND and a command byte RFC 1928 does not define. (UDP ASSOCIATE is
    // supported since issue 18: 0x00, tested in tests/deploy.rs.)
    expect_reply(
        proxy,
        SocksCommand::Bind,
        &v4(web),
        Reply::CommandNotSupported,
    );
    drop(expect_reply(
        proxy,
        SocksCommand::UdpAssociate,
        &v4(web),
        Reply::Succeeded,
    ));
    let mut s = connect(proxy);
    s.write_all(&[5, 1, 0, 5, 9, 0, 1, 127, 0, 0, 1, 0, 80])
        .unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    assert_eq!(read_reply(&mut s), Some(Reply::CommandNotSupported.code()));
    assert!(read_to_close(&mut s, T).is_empty());
    drop(s);

    // 0x08: an unknown address type.
    let mut s = connect(proxy);
    s.write_all(&[5, 1, 0, 5, 1, 0, 0x05, 1, 2, 3, 4]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    assert_eq!(
        read_reply(&mut s),
        Some(Reply::AddressTypeNotSupported.code())
    );
    assert!(read_to_close(&mut s, T).is_empty());

    drop((s, fillers));
    wait_idle(&counters);
    assert_eq!(server.stop().handlers_failed, 0);

    // 0x02 for a name whose every address is denied.
    let mut opts = socks_opts();
    opts.rules.deny_nets = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let (proxy, _c, _server) = start_proxy(opts);
    expect_reply(
        proxy,
        connect_cmd,
        &domain("localhost", web.port()),
        Reply::NotAllowed,
    );
}

/// `ProxyOptions::resolver` turns SOCKS5 domain targets into addresses (on the worker
/// pool); the addresses are tried in order.
#[test]
fn custom_resolver_is_used_for_names() {
    let web = http_server(local(0));
    let closed = local(closed_port());
    let mut opts = socks_opts();
    opts.resolver = Resolver::new(move |host, _port| match host {
        "web.test" => Ok(vec![closed, web]),
        _ => Err(std::io::Error::new(ErrorKind::NotFound, "unknown name")),
    });
    let (proxy, counters, server) = start_proxy(opts);
    let s = expect_reply(
        proxy,
        SocksCommand::Connect,
        &domain("web.test", 1),
        Reply::Succeeded,
    );
    assert!(http_get(s, "/table").ends_with("hello from /table\n"));
    expect_reply(
        proxy,
        SocksCommand::Connect,
        &domain("other.test", 1),
        Reply::HostUnreachable,
    );
    wait_idle(&counters);
    let stats = server.stop();
    assert!(stats.jobs_completed >= 2, "resolution did not use the pool");
    assert_eq!(stats.handlers_failed, 0);
}

/// A connect to 0.0.0.0 or [::] reaches the local host, so a rule denying loopback
/// must deny those too (before, they were let through: 0x00, and the local web
/// server answered).
#[test]
fn socks5_unspecified_address_cannot_bypass_a_loopback_rule() {
    let web = http_server(local(0));
    let web6 = http_server("[::1]:0".parse().unwrap());
    let mut opts = socks_opts();
    opts.rules.deny_nets = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let (proxy, counters, server) = start_proxy(opts);
    for target in [
        SocketAddr::from(([0, 0, 0, 0], web.port())),
        SocketAddr::new("::".parse().unwrap(), web6.port()),
        SocketAddr::new("::ffff:0.0.0.0".parse().unwrap(), web.port()),
    ] {
        expect_reply(proxy, SocksCommand::Connect, &v4(target), Reply::NotAllowed);
    }
    wait_idle(&counters);
    assert_eq!(counters.snapshot().handshake_failed, 3);
    assert_eq!(server.stop().handlers_failed, 0);
}

#[test]
fn socks5_pipelined_payload_reaches_upstream() {
    // A client that sends its first data together with the request.
    let web = http_server(local(0));
    let (proxy, _c, _server) = start_proxy(socks_opts());
    let mut s = connect(proxy);
    let mut msg = Vec::new();
    socks5::encode_greeting(&[METHOD_NO_AUTH], &mut msg).unwrap();
    socks5::encode_request(SocksCommand::Connect, &v4(web), &mut msg).unwrap();
    msg.extend_from_slice(b"GET /early HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(&msg).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    let (rep, mut rest) = read_reply_and_rest(&mut s).expect("a reply");
    assert_eq!(rep, 0);
    rest.extend_from_slice(&read_to_close(&mut s, T));
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.ends_with("hello from /early\n"), "{rest}");
}

// ---------------------------------------------------------------- hostile clients

#[test]
fn socks5_hostile_clients() {
    let (echo, _echo_loop) = echo_server();
    let mut opts = ProxyOptions::new(Mode::Socks5 {
        auth: Some((b"u".to_vec(), b"p".to_vec())),
    });
    opts.handshake_timeout = Duration::from_millis(800);
    let (proxy, counters, server) = start_proxy(opts);

    // Not SOCKS5 at all: closed without a word.
    let mut s = connect(proxy);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_to_close(&mut s, T).is_empty());
    let mut s = connect(proxy);
    s.write_all(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).unwrap();
    assert!(read_to_close(&mut s, T).is_empty());

    // No acceptable method (credentials required, only "no auth" offered).
    let mut s = connect(proxy);
    s.write_all(&[5, 1, METHOD_NO_AUTH]).unwrap();
    assert_eq!(read_to_close(&mut s, T), [5, 0xff]);

    // Wrong password, and a bad subnegotiation version.
    let (mut s, rep) = socks_request(
        proxy,
        Some((b"u", b"wrong")),
        SocksCommand::Connect,
        &v4(echo),
    );
    assert_eq!(rep, None);
    assert!(read_to_close(&mut s, T).is_empty());
    let mut s = connect(proxy);
    s.write_all(&[5, 1, METHOD_USERPASS, 9, 1, b'u', 1, b'p'])
        .unwrap();
    assert_eq!(read_to_close(&mut s, T), [5, 2, 1, 1]);

    // Truncated messages and fields that announce more than is sent: closed by the
    // handshake timeout, not waited on forever.
    let truncated: [&[u8]; 4] = [
        &[5],
        &[5, 255, 0, 1, 2],             // 255 methods announced, 3 sent
        &[5, 1, 2, 1, 255, b'u', b's'], // a 255-byte username announced
        &[5, 1, 2, 1, 1, b'u', 1, b'p', 5, 1, 0, 3, 200, b'x'], // 200-byte name
    ];
    let t0 = Instant::now();
    let mut held = Vec::new();
    for msg in truncated {
        let mut s = connect(proxy);
        s.write_all(msg).unwrap();
        held.push(s);
    }
    for s in &mut held {
        read_to_close(s, Duration::from_secs(5));
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "not closed promptly: {waited:?}"
    );

    // A trickler (one byte every 100 ms of a valid handshake) is cut off by the
    // handshake timeout, while a normal session works at full speed meanwhile.
    let trickler = thread::spawn(move || {
        let mut s = connect(proxy);
        let mut msg = Vec::new();
        socks5::encode_greeting(&[METHOD_USERPASS], &mut msg).unwrap();
        socks5::encode_userpass(b"u", b"p", &mut msg).unwrap();
        socks5::encode_request(SocksCommand::Connect, &domain("localhost", 80), &mut msg).unwrap();
        let t0 = Instant::now();
        for b in msg {
            if s.write_all(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let rest = read_to_close(&mut s, Duration::from_secs(5));
        (t0.elapsed(), rest)
    });
    thread::sleep(Duration::from_millis(150));
    let t0 = Instant::now();
    let (mut s, rep) = socks_request(proxy, Some((b"u", b"p")), SocksCommand::Connect, &v4(echo));
    assert_eq!(rep, Some(0));
    let payload = common::pseudo_random_bytes(9, 1 << 20);
    let mut w = s.try_clone().unwrap();
    let p2 = payload.clone();
    let wt = thread::spawn(move || w.write_all(&p2).unwrap());
    let got = read_n(&mut s, payload.len());
    wt.join().unwrap();
    assert!(got == payload);
    let good_took = t0.elapsed();
    let (trickle_took, rest) = trickler.join().unwrap();
    assert!(
        good_took < trickle_took,
        "the normal session ({good_took:?}) had to wait for the trickler ({trickle_took:?})"
    );
    // The trickler got the method selection and the auth status at most: never a
    // CONNECT reply.
    assert!(
        rest.is_empty() || rest == [5, 2] || rest == [5, 2, 1, 0],
        "{rest:?}"
    );
    drop(s);
    let c = counters.snapshot();
    assert!(c.handshake_failed >= 9, "{c}");
    assert_eq!(server.stop().handlers_failed, 0);
}

/// UDP ASSOCIATE with a raw client: a datagram to a name goes out (after the name
/// is resolved on the pool) through the relay's outside socket, like one to an
/// address, and the answer comes back with the SOCKS5 UDP header naming who
/// answered. (A resolved datagram used to leave through the client-side socket:
/// the answer came back there, from an address that is not the client, and was
/// dropped.)
#[test]
fn socks5_udp_associate_relays_to_names_and_addresses() {
    use reactor_proxy::socks5_udp::{UdpTarget, encode_udp_header, parse_udp};
    let echo = std::net::UdpSocket::bind(local(0)).unwrap();
    let echo_addr = echo.local_addr().unwrap();
    echo.set_read_timeout(Some(T)).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut opts = socks_opts();
    opts.resolver = Resolver::new(move |host, port| match host {
        "echo.test" => Ok(vec![SocketAddr::new(echo_addr.ip(), port)]),
        _ => Err(std::io::Error::new(ErrorKind::NotFound, "unknown name")),
    });
    let (proxy, counters, server) = start_proxy(opts);
    let client = std::net::UdpSocket::bind(local(0)).unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    let mut s = connect(proxy);
    let mut msg = Vec::new();
    socks5::encode_greeting(&[METHOD_NO_AUTH], &mut msg).unwrap();
    socks5::encode_request(
        SocksCommand::UdpAssociate,
        &v4(client.local_addr().unwrap()),
        &mut msg,
    )
    .unwrap();
    s.write_all(&msg).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, METHOD_NO_AUTH]);
    let mut got = Vec::new();
    let relay = loop {
        if let Some((rep, bound, _)) = socks5::parse_reply(&got).expect("valid reply") {
            assert_eq!(rep, 0, "UDP ASSOCIATE refused");
            let Target::Addr(a) = bound else {
                panic!("the relay is named by a name: {bound:?}")
            };
            break a;
        }
        let mut b = [0u8; 64];
        let n = s.read(&mut b).expect("reading the reply");
        assert!(n > 0, "closed before replying");
        got.extend_from_slice(&b[..n]);
    };
    let targets = [
        UdpTarget::Domain {
            host: "echo.test",
            port: echo_addr.port(),
        },
        UdpTarget::Addr(echo_addr),
        // The second to the name comes from the association's cache.
        UdpTarget::Domain {
            host: "echo.test",
            port: echo_addr.port(),
        },
    ];
    for (i, to) in targets.iter().enumerate() {
        let payload = format!("datagram {i} to {to}");
        let mut d = Vec::new();
        encode_udp_header(to, &mut d).unwrap();
        d.extend_from_slice(payload.as_bytes());
        client.send_to(&d, relay).unwrap();
        let mut b = [0u8; 2048];
        let (n, from) = client
            .recv_from(&mut b)
            .unwrap_or_else(|e| panic!("no answer to the datagram to {to}: {e}"));
        assert_eq!(from, relay, "the answer comes from the relay");
        let (by, answer) = parse_udp(&b[..n]).unwrap();
        assert_eq!(
            by,
            UdpTarget::Addr(echo_addr),
            "the answer names who answered"
        );
        assert_eq!(answer, payload.as_bytes());
    }
    drop(s);
    wait_idle(&counters);
    let c = counters.snapshot();
    assert_eq!(c.udp_datagrams, 6, "3 there and 3 back: {c}");
    let stats = server.stop();
    assert!(
        stats.jobs_completed >= 1,
        "the name was not resolved on the pool"
    );
    assert_eq!(stats.handlers_failed, 0);
}
