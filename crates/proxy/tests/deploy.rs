//! What deployments need, against real clients on loopback: the PROXY protocol in
//! (curl's `--haproxy-protocol`, an HAProxy front end with `send-proxy-v2`) and out
//! (an HAProxy upstream with `accept-proxy`), client allow/deny rules on IPv4 and
//! IPv6, and UDP ASSOCIATE (PySocks). HAProxy configurations are written to a
//! temporary directory; every HAProxy runs in the foreground with one thread and a
//! bounded lifetime, and is killed when its test ends.
//!
//! Interop tests skip themselves with a message when their client is missing,
//! unless `REACTOR_REQUIRE_INTEROP=1` (CI), where a missing client is a failure.

use reactor_test_support as common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Running, run_loop};
use reactor::Config;
use reactor_proxy::{
    Cidr, ClientRules, Mode, ProxyCounters, ProxyOptions, Target, proxy_listener, proxy_protocol,
};

const T: Duration = Duration::from_secs(10);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn require_interop() -> bool {
    std::env::var("REACTOR_REQUIRE_INTEROP").as_deref() == Ok("1")
}

/// `name` on the PATH (or in the usual places), or `None` with a SKIPPED line; a
/// failure instead under `REACTOR_REQUIRE_INTEROP=1`.
fn tool(name: &str) -> Option<PathBuf> {
    // PATH first: the `python3` that `.ci/run`'s `pip install` put PySocks into is
    // the first on PATH (a pyenv or venv one, on some machines), not /usr/bin's.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
            .into_iter()
            .map(PathBuf::from),
    );
    for dir in dirs {
        let p = dir.join(name);
        if p.exists() {
            return Some(p);
        }
    }
    if require_interop() {
        panic!("{name} is required (REACTOR_REQUIRE_INTEROP=1) but was not found; install it");
    }
    println!("SKIPPED: {name} not found (set REACTOR_REQUIRE_INTEROP=1 to make this a failure)");
    None
}

/// A proxy on its own loop thread.
fn start_proxy(opts: ProxyOptions) -> (SocketAddr, Arc<ProxyCounters>, Running) {
    start_proxy_on(local(0), opts)
}

fn start_proxy_on(at: SocketAddr, opts: ProxyOptions) -> (SocketAddr, Arc<ProxyCounters>, Running) {
    let ((addr, counters), running) = run_loop(Config::default(), move |r| {
        let (l, c) = proxy_listener(at, opts).expect("proxy listener");
        let a = l.local_addr();
        r.spawn(l);
        (a, c)
    });
    (addr, counters, running)
}

fn forward(to: SocketAddr) -> ProxyOptions {
    ProxyOptions::new(Mode::Forward(Target::Addr(to)))
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// A loopback port nobody listens on right now (for configurations that need a
/// number in advance).
fn free_port() -> u16 {
    TcpListener::bind(local(0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP connection from `from` (a loopback address of our choosing) to `to`.
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let domain = if from.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from, 0).into()).unwrap();
    s.connect_timeout(&to.into(), T).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

/// Reads until end of file or a reset; fails on a timeout.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return v,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return v,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("expected the connection to close: {e}"),
        }
    }
}

/// An HTTP/1.1 server on std threads that answers each request with the request's
/// own header lines as the body (so a test sees what a proxy in front added), then
/// closes.
fn header_echo_server() -> SocketAddr {
    let l = TcpListener::bind(local(0)).unwrap();
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
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    req.len()
                );
                let _ = s.write_all(&req);
            });
        }
    });
    addr
}

/// An upstream for one connection that records everything it receives and echoes
/// it, except a PROXY protocol header at its start (taken off with the codec), which
/// a real backend would not echo either.
fn recording_echo() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind(local(0)).unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(T)).unwrap();
        let mut all = Vec::new();
        let mut echoed = 0;
        let mut header_done = false;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            if !header_done {
                match proxy_protocol::parse(&all) {
                    Ok(Some((_, n))) => (header_done, echoed) = (true, n),
                    Ok(None) => continue,
                    Err(_) => header_done = true, // no header: echo it all
                }
            }
            if s.write_all(&all[echoed..]).is_err() {
                break;
            }
            echoed = all.len();
        }
        let _ = tx.send(all);
    });
    (addr, rx)
}

/// HAProxy in the foreground (`-db`), one thread, with `config` (its `global` and
/// `defaults` sections are added), killed on drop and by `timeout` after 120 s at
/// the latest.
struct Haproxy {
    child: Child,
    _dir: tempdir::Dir,
}

mod tempdir {
    use std::path::PathBuf;

    /// A directory under the system's temp dir, removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "reactor-proxy-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Haproxy {
    fn start(bin: &Path, config: &str) -> Haproxy {
        let dir = tempdir::Dir::new("haproxy");
        let cfg = dir.0.join("haproxy.cfg");
        // A frontend of its own tells when HAProxy listens (a probe of the
        // frontends under test would be a client of theirs).
        let ready = free_port();
        let full = format!(
            "global\n    nbthread 1\n    maxconn 256\ndefaults\n    timeout connect 5s\n    \
             timeout client 20s\n    timeout server 20s\n\
             frontend ready\n    mode tcp\n    bind 127.0.0.1:{ready}\n{config}"
        );
        std::fs::write(&cfg, full).unwrap();
        let child = Command::new("timeout")
            .args(["120"])
            .arg(bin)
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        // HAProxy binds every frontend before it accepts on any.
        let t0 = Instant::now();
        while TcpStream::connect_timeout(&local(ready), Duration::from_millis(200)).is_err() {
            assert!(t0.elapsed() < T, "haproxy did not start listening");
            thread::sleep(Duration::from_millis(50));
        }
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get_via(s: &mut TcpStream, path: &str) -> String {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    String::from_utf8(read_to_close(s)).unwrap()
}

// ------------------------------------------------------------ PROXY protocol in

/// curl sends a v1 header (`--haproxy-protocol`) to a forwarder that expects one
/// from 127.0.0.0/8: the header is taken off and the request reaches the server.
/// A forwarder that trusts only 10.0.0.0/8 refuses the same connection, and one
/// that expects a header closes a client that sends none.
#[test]
fn curl_haproxy_protocol_into_proxy_protocol_in() {
    let Some(curl) = tool("curl") else { return };
    let web = header_echo_server();
    let mut opts = forward(web);
    opts.proxy_protocol_in = true;
    opts.proxy_protocol_from = vec![cidr("127.0.0.0/8")];
    let (proxy, counters, _p) = start_proxy(opts.clone());
    let url = format!("http://{proxy}/through");
    let out = Command::new(&curl)
        .args(["-sS", "--max-time", "10", "--haproxy-protocol", &url])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.starts_with("GET /through HTTP/1.1\r\n"), "{body}");
    assert!(
        !body.contains("PROXY"),
        "the header reached the upstream: {body}"
    );
    let s = counters.snapshot();
    assert_eq!((s.accepted, s.refused_client), (1, 0));

    // Without the header: closed (nothing reaches the upstream).
    let out = Command::new(&curl)
        .args(["-sS", "--max-time", "10", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(counters.snapshot().handshake_failed, 1);

    // From an untrusted peer: refused before a byte is read.
    opts.proxy_protocol_from = vec![cidr("10.0.0.0/8")];
    let (proxy, counters, _p) = start_proxy(opts);
    let out = Command::new(&curl)
        .args(["-sS", "--max-time", "10", "--haproxy-protocol"])
        .arg(format!("http://{proxy}/"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let s = counters.snapshot();
    assert_eq!((s.accepted, s.refused_client), (0, 1));
}

/// An HAProxy front end with `send-proxy-v2` in front of our forwarder: clients
/// come from 127.0.0.5, .6 and .9 to HAProxy, and HAProxy connects to us from
/// 127.0.0.1. Our per-client limit and client rules see the original client
/// addresses (as do the session's log lines, which name the same address).
#[test]
fn haproxy_send_proxy_v2_in_front_keeps_the_client_address() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    // An upstream that holds each connection open until the client closes.
    let up = TcpListener::bind(local(0)).unwrap();
    let up_addr = up.local_addr().unwrap();
    thread::spawn(move || {
        for s in up.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut b = [0u8; 256];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut opts = forward(up_addr);
    opts.proxy_protocol_in = true;
    opts.proxy_protocol_from = vec![cidr("127.0.0.1/32")];
    opts.max_sessions_per_ip = 1;
    let mut rules = ClientRules::new();
    rules.deny(cidr("127.0.0.9/32"));
    opts.clients = rules;
    let (proxy, counters, _p) = start_proxy(opts);
    let front = free_port();
    let _h = Haproxy::start(
        &haproxy,
        &format!(
            "frontend f\n    mode tcp\n    bind 127.0.0.1:{front}\n    default_backend b\n\
             backend b\n    mode tcp\n    server us {proxy} send-proxy-v2 source 127.0.0.1\n"
        ),
    );
    let exchange = |s: &mut TcpStream, msg: &[u8]| -> bool {
        if s.write_all(msg).is_err() {
            return false;
        }
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).is_ok() && got == msg
    };
    let mut a = connect_from("127.0.0.5".parse().unwrap(), local(front));
    assert!(exchange(&mut a, b"first from .5"));
    // A second session of the same client is over its limit of one...
    let mut a2 = connect_from("127.0.0.5".parse().unwrap(), local(front));
    assert!(
        !exchange(&mut a2, b"second from .5"),
        "the per-client limit saw HAProxy's address"
    );
    // ...but another client is not (HAProxy's own address is the same for both).
    let mut b = connect_from("127.0.0.6".parse().unwrap(), local(front));
    assert!(exchange(&mut b, b"from .6"));
    // And the client rules judge the original client too.
    let mut c = connect_from("127.0.0.9".parse().unwrap(), local(front));
    assert!(!exchange(&mut c, b"from .9"));
    let s = counters.snapshot();
    assert_eq!(
        (s.accepted, s.refused_per_ip, s.refused_client),
        (2, 1, 1),
        "{s}"
    );
    drop((a, a2, b, c));
}

// ----------------------------------------------------------- PROXY protocol out

/// Our forwarder with `--proxy-protocol-out v1` and `v2` in front of an HAProxy that
/// `accept-proxy`s, in HTTP mode with `option forwardfor`: HAProxy understands our
/// header (it forwards the request) and takes the client address from it, which it
/// puts in `X-Forwarded-For` (the client is 127.0.0.5; we connect from 127.0.0.1).
#[test]
fn haproxy_accept_proxy_receives_our_v1_and_v2_headers() {
    let Some(haproxy) = tool("haproxy") else {
        return;
    };
    let web = header_echo_server();
    let (p1, p2) = (free_port(), free_port());
    let _h = Haproxy::start(
        &haproxy,
        &format!(
            "frontend f1\n    mode http\n    bind 127.0.0.1:{p1} accept-proxy\n    \
             option forwardfor\n    default_backend web\n\
             frontend f2\n    mode http\n    bind 127.0.0.1:{p2} accept-proxy\n    \
             option forwardfor\n    default_backend web\n\
             backend web\n    mode http\n    server w {web}\n"
        ),
    );
    // (accept-proxy frontends refuse a probe without a header, so wait by trying.)
    for (port, version) in [
        (p1, proxy_protocol::Version::V1),
        (p2, proxy_protocol::Version::V2),
    ] {
        let mut opts = forward(local(port));
        opts.proxy_protocol_out = Some(version);
        let (proxy, _counters, _p) = start_proxy(opts);
        let t0 = Instant::now();
        let body = loop {
            let mut s = connect_from("127.0.0.5".parse().unwrap(), proxy);
            let body = http_get_via(&mut s, "/pp");
            if body.contains("200 OK") || t0.elapsed() > T {
                break body;
            }
            thread::sleep(Duration::from_millis(100));
        };
        assert!(body.contains("GET /pp HTTP/1.1"), "{version:?}: {body}");
        assert!(
            body.to_ascii_lowercase()
                .contains("x-forwarded-for: 127.0.0.5"),
            "{version:?}: HAProxy did not take the client from our header: {body}"
        );
    }
}

/// The header goes out before the client's first byte, v1 and v2 byte-exact, with
/// the client's address as the source; a SOCKS5 CONNECT destination gets one too,
/// with the destination it was asked for.
#[test]
fn proxy_protocol_out_header_precedes_the_clients_bytes() {
    for version in [proxy_protocol::Version::V1, proxy_protocol::Version::V2] {
        let (up, rx) = recording_echo();
        let mut opts = forward(up);
        opts.proxy_protocol_out = Some(version);
        let (proxy, _c, _p) = start_proxy(opts);
        let mut s = connect_from("127.0.0.5".parse().unwrap(), proxy);
        let me = s.local_addr().unwrap();
        s.write_all(b"hello").unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(
            &echo, b"hello",
            "the upstream echoes only the client's bytes"
        );
        s.shutdown(Shutdown::Write).unwrap();
        let got = rx.recv_timeout(T).unwrap();
        let (h, n) = proxy_protocol::parse(&got).unwrap().unwrap();
        assert_eq!(h.version, version);
        assert_eq!(h.socket_addrs(), Some((me, proxy)));
        assert_eq!(&got[n..], b"hello");
    }
    // SOCKS5: the header names the CONNECT destination.
    let (up, rx) = recording_echo();
    let mut opts = ProxyOptions::new(Mode::Socks5 { auth: None });
    opts.proxy_protocol_out = Some(proxy_protocol::Version::V1);
    let (proxy, _c, _p) = start_proxy(opts);
    let mut s = connect_from("127.0.0.1".parse().unwrap(), proxy);
    let me = s.local_addr().unwrap();
    let mut req = Vec::new();
    reactor_proxy::socks5::encode_greeting(&[0], &mut req).unwrap();
    reactor_proxy::socks5::encode_request(
        reactor_proxy::socks5::Command::Connect,
        &Target::Addr(up),
        &mut req,
    )
    .unwrap();
    req.extend_from_slice(b"payload");
    s.write_all(&req).unwrap();
    let mut head = [0u8; 2 + 10 + 7];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[12..], b"payload");
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(T).unwrap();
    let (h, n) = proxy_protocol::parse(&got).unwrap().unwrap();
    assert_eq!(h.socket_addrs(), Some((me, up)));
    assert_eq!(&got[n..], b"payload");
}

/// A header that is malformed, or that does not come within the handshake timeout,
/// closes the connection (logged and counted), and never reaches the upstream.
#[test]
fn bad_or_missing_proxy_headers_close_the_connection() {
    let (up, rx) = recording_echo();
    let mut opts = forward(up);
    opts.proxy_protocol_in = true;
    opts.proxy_protocol_from = vec![cidr("127.0.0.0/8"), cidr("::1/128")];
    opts.handshake_timeout = Duration::from_millis(300);
    let (proxy, counters, _p) = start_proxy(opts);
    for bad in [
        &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut s = connect_from("127.0.0.1".parse().unwrap(), proxy);
        s.write_all(bad).unwrap();
        assert!(read_to_close(&mut s).is_empty());
    }
    // Silent: closed at the timeout.
    let t0 = Instant::now();
    let mut s = connect_from("127.0.0.1".parse().unwrap(), proxy);
    assert!(read_to_close(&mut s).is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    let c = counters.snapshot();
    assert_eq!((c.handshake_failed, c.accepted), (3, 0), "{c}");
    // A good v2 header (with a TLV) from a trusted IPv6 peer, for the record.
    let mut hdr = Vec::new();
    let tlv = proxy_protocol::Tlv {
        kind: proxy_protocol::TLV_AUTHORITY,
        value: b"example.org",
    };
    proxy_protocol::encode_v2_with(
        Some((
            "[2001:db8::7]:4000".parse().unwrap(),
            "[2001:db8::1]:80".parse().unwrap(),
        )),
        &proxy_protocol::V2Extras {
            tlvs: &[tlv],
            crc32c: true,
            ..Default::default()
        },
        &mut hdr,
    )
    .unwrap();
    let v6 = SocketAddr::new("::1".parse().unwrap(), 0);
    let (proxy6, counters6, _p6) = {
        let mut opts = forward(up);
        opts.proxy_protocol_in = true;
        opts.proxy_protocol_from = vec![cidr("::1/128")];
        start_proxy_on(v6, opts)
    };
    let mut s = connect_from("::1".parse().unwrap(), proxy6);
    hdr.extend_from_slice(b"after the header");
    s.write_all(&hdr).unwrap();
    let mut echo = vec![0u8; 16];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(echo, b"after the header");
    drop(s);
    assert_eq!(rx.recv_timeout(T).unwrap(), b"after the header");
    assert_eq!(counters6.snapshot().accepted, 1);
}

/// Connections waiting for their PROXY header hold a socket each: they count
/// against `max_sessions` with the sessions, so a trusted balancer that opens
/// connections and sends nothing cannot hold more than the limit. Once one of
/// them sends its header and ends, its place is free again.
#[test]
fn connections_awaiting_their_proxy_header_count_against_max_sessions() {
    // The reactor's echo server as the upstream (any number of connections).
    let (up, _echo) = run_loop(Config::default(), |r| {
        let l =
            reactor::echo::echo_listener(local(0), reactor::echo::EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut opts = forward(up);
    opts.proxy_protocol_in = true;
    opts.proxy_protocol_from = vec![cidr("127.0.0.0/8")];
    opts.max_sessions = 2;
    opts.handshake_timeout = Duration::from_secs(10);
    let (proxy, counters, _p) = start_proxy(opts);
    let lb = "127.0.0.1".parse().unwrap();
    let mut waiting = [connect_from(lb, proxy), connect_from(lb, proxy)];
    // Both are taken (accepted by the kernel, seen by the proxy) before the third.
    let t0 = Instant::now();
    while counters.snapshot().refused_total == 0 && t0.elapsed() < T {
        let mut third = connect_from(lb, proxy);
        third
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        match third.read(&mut b) {
            Ok(0) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            _ => {}
        }
    }
    assert!(
        counters.snapshot().refused_total >= 1,
        "a third connection awaiting its header was let in: {}",
        counters.snapshot()
    );
    // The first sends its header and a line, and ends: a place is free.
    let mut hdr = Vec::new();
    proxy_protocol::encode_v1(
        "192.0.2.9:4000".parse().unwrap(),
        "192.0.2.1:80".parse().unwrap(),
        &mut hdr,
    );
    hdr.extend_from_slice(b"hello");
    waiting[0].write_all(&hdr).unwrap();
    waiting[0].shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut waiting[0]), b"hello");
    let t0 = Instant::now();
    while counters.snapshot().active > 0 && t0.elapsed() < T {
        thread::sleep(Duration::from_millis(10));
    }
    let mut next = connect_from(lb, proxy);
    next.write_all(&hdr).unwrap();
    next.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        read_to_close(&mut next),
        b"hello",
        "no place came free: {}",
        counters.snapshot()
    );
    drop(waiting);
    assert_eq!(counters.snapshot().accepted, 2);
}

// ------------------------------------------------------------------ client rules

/// `--allow-client`/`--deny-client` in order, first match wins, on IPv4 and IPv6
/// loopback; a refused client is closed before a byte is read, counted and logged.
#[test]
fn client_rules_allow_and_deny_by_cidr_on_ipv4_and_ipv6() {
    let (up, _rx) = recording_echo();
    let mut rules = ClientRules::new();
    rules
        .deny(cidr("127.0.0.3/32"))
        .allow(cidr("127.0.0.0/8"))
        .allow(cidr("::1/128"));
    let mut opts = forward(up);
    opts.clients = rules.clone();
    let (p4, c4, _r4) = start_proxy(opts.clone());
    let (p6, c6, _r6) = start_proxy_on("[::1]:0".parse().unwrap(), opts);
    let talks = |from: &str, to: SocketAddr| -> bool {
        let mut s = connect_from(from.parse().unwrap(), to);
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // Refused: closed without reading (a reset, since our bytes are unread).
        let _ = s.write_all(b"x");
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1))
    };
    assert!(!talks("127.0.0.3", p4), "denied by the first rule");
    // The one echo upstream takes a single connection; that is all we need.
    assert!(talks("127.0.0.2", p4), "allowed by the second");
    assert_eq!(c4.snapshot().refused_client, 1);
    // An allow list: anything no rule matches is refused. (::1 is allowed; an IPv6
    // client other than ::1 cannot be made on loopback, so the IPv6 side checks the
    // allow rule and a deny list below.)
    assert!(rules.decide("10.0.0.1".parse().unwrap()).rule.is_none());
    assert!(!rules.is_allowed("10.0.0.1".parse().unwrap()));
    let mut s = connect_from("::1".parse().unwrap(), p6);
    s.write_all(b"v6").unwrap();
    drop(s);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(c6.snapshot().refused_client, 0);
    // A deny list for ::1.
    let mut opts = forward(up);
    let mut deny6 = ClientRules::new();
    deny6.deny(cidr("::1/128"));
    opts.clients = deny6;
    let (p6, c6, _r6) = start_proxy_on("[::1]:0".parse().unwrap(), opts);
    assert!(!talks("::1", p6));
    let c = c6.snapshot();
    assert_eq!((c.refused_client, c.accepted), (1, 0));
}

/// The proxy binary's flags: `--allow-client`/`--deny-client` keep their order, and
/// `--proxy-protocol-in` needs `--proxy-protocol-from`.
#[test]
fn example_client_rules_and_proxy_protocol_flags() {
    let (up, _rx) = recording_echo();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    // The deny comes first, so 127.0.0.3 is refused though 127.0.0.0/8 is allowed.
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up.to_string(),
        "--deny-client",
        "127.0.0.3",
        "--allow-client",
        "127.0.0.0/8",
    ]);
    let mut srv = common::Server::start(cmd);
    let mut s = connect_from("127.0.0.3".parse().unwrap(), srv.addr);
    let _ = s.write_all(b"x");
    assert!(read_to_close(&mut s).is_empty());
    assert!(
        srv.wait_stderr("--deny-client 127.0.0.3/32", T),
        "{}",
        srv.stderr_text()
    );
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(T), Some(0));

    // With --proxy-protocol-in, the log names the client the header announced, not
    // the balancer's (here our own) address.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up.to_string(),
        "--proxy-protocol-in",
        "--proxy-protocol-from",
        "127.0.0.1",
        "--deny-client",
        "203.0.113.0/24",
    ]);
    let mut srv = common::Server::start(cmd);
    let mut s = connect_from("127.0.0.1".parse().unwrap(), srv.addr);
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n")
        .unwrap();
    assert!(read_to_close(&mut s).is_empty());
    assert!(
        srv.wait_stderr("refused connection from 203.0.113.7:5555: client rules", T),
        "{}",
        srv.stderr_text()
    );
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(T), Some(0));
    assert!(
        srv.wait_stderr("+ 1 (client rules)", T),
        "{}",
        srv.stderr_text()
    );
    for args in [
        &["--upstream", "127.0.0.1:1", "--proxy-protocol-in"][..],
        &["--upstream", "127.0.0.1:1", "--proxy-protocol-out", "v3"],
        &["--upstream", "127.0.0.1:1", "--allow-client", "10.1.2.3/8"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty() && !err.contains("panicked"), "{err}");
    }
}

// ---------------------------------------------------------------- UDP ASSOCIATE

/// A PySocks client: UDP ASSOCIATE through the proxy, DNS-shaped queries to UDP
/// echo servers on 127.0.0.1, [::1] and `localhost` (a name the proxy resolves),
/// each answer checked byte for byte; prints the relay's address, waits for a line
/// on stdin, then closes its TCP connection (the association's end).
const PYSOCKS_CLIENT: &str = r#"
import socket, struct, sys, random
import socks

proxy_port, port4, port6 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port, rdns=True)
s.settimeout(5)
s.bind(("127.0.0.1", 0))
# PySocks' own getpeername() is the destination (none for UDP); the relay is
# what the underlying socket is connected to.
print("relay", socket.socket.getpeername(s)[1], "client", s.getsockname()[1], flush=True)

def query(qid, name):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)

ok = 0
for dest in [("127.0.0.1", port4), ("::1", port6), ("localhost", port4)]:
    for i in range(5):
        q = query(random.randrange(65536), "host%d.example.org" % i) + bytes(random.randrange(256) for _ in range(i * 100))
        s.sendto(q, dest)
        data, frm = s.recvfrom(65535)
        if data != q:
            print("MISMATCH", dest, len(data), len(q), flush=True)
            sys.exit(1)
        ok += 1
print("ok", ok, flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
"#;

fn pysocks() -> Option<PathBuf> {
    let py = tool("python3")?;
    let has = Command::new(&py)
        .args(["-c", "import socks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has {
        return Some(py);
    }
    if require_interop() {
        panic!(
            "PySocks is required (REACTOR_REQUIRE_INTEROP=1); pip install -r .ci/requirements.txt"
        );
    }
    println!(
        "SKIPPED: PySocks not installed (set REACTOR_REQUIRE_INTEROP=1 to make this a failure)"
    );
    None
}

/// A UDP echo server on `at`; counts the datagrams it answered.
fn udp_echo(at: &str) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let s = std::net::UdpSocket::bind(at).unwrap();
    let addr = s.local_addr().unwrap();
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((len, from)) = s.recv_from(&mut buf) {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = s.send_to(&buf[..len], from);
        }
    });
    (addr, n)
}

#[test]
fn pysocks_udp_associate_ipv4_ipv6_and_names_byte_exact() {
    use std::io::BufRead;
    use std::sync::atomic::Ordering;
    let Some(py) = pysocks() else { return };
    let (echo4, seen4) = udp_echo("127.0.0.1:0");
    let (echo6, _seen6) = udp_echo("[::1]:0");
    let (proxy, counters, _p) = start_proxy(ProxyOptions::new(Mode::Socks5 { auth: None }));
    let dir = tempdir::Dir::new("pysocks");
    let script = dir.0.join("udp_client.py");
    std::fs::write(&script, PYSOCKS_CLIENT).unwrap();
    let mut child = Command::new(&py)
        .arg(&script)
        .args([proxy.port(), echo4.port(), echo6.port()].map(|p| p.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"relay"), "{line}");
    let relay: u16 = words[1].parse().unwrap();
    let client_port: u16 = words[3].parse().unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    if line.trim() != "ok 15" {
        let _ = child.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("the client's checks: {line:?}; its stderr: {err}");
    }
    let c = counters.snapshot();
    assert_eq!(c.udp_associations, 1);

    // A third address sends a well-formed datagram to the relay: dropped.
    let before = seen4.load(Ordering::Relaxed);
    let intruder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_ne!(intruder.local_addr().unwrap().port(), client_port);
    let mut d = Vec::new();
    reactor_proxy::socks5_udp::encode_udp_header(
        &reactor_proxy::socks5_udp::UdpTarget::Addr(echo4),
        &mut d,
    )
    .unwrap();
    d.extend_from_slice(b"not from the client");
    for _ in 0..3 {
        intruder.send_to(&d, local(relay)).unwrap();
    }
    // And a spoofed answer from an address the client never sent to: dropped too.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"unsolicited", local(relay)).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        seen4.load(Ordering::Relaxed),
        before,
        "a third address got through"
    );

    // The TCP connection closes: the association is gone with it.
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "closed");
    assert!(child.wait().unwrap().success());
    let t0 = Instant::now();
    while counters.snapshot().active > 0 {
        assert!(
            t0.elapsed() < T,
            "the association outlived its TCP connection"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let c = counters.snapshot();
    assert!(c.udp_dropped >= 3, "{c}");
    assert_eq!(c.udp_datagrams, 30, "15 there and 15 back: {c}");
    // Nobody listens on the relay's port any more: the kernel answers with port
    // unreachable (a relay still open would drop the datagram silently).
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.connect(local(relay)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    probe.send(&d).unwrap();
    let mut b = [0u8; 64];
    let e = probe
        .recv(&mut b)
        .expect_err("an answer from a closed relay");
    assert_eq!(
        e.kind(),
        ErrorKind::ConnectionRefused,
        "the relay's socket is still open: {e}"
    );
}
