//! TLS on the reactor against real clients (Python's `ssl`, `openssl s_client`,
//! `curl`) and our own client, on 127.0.0.1 with throwaway certificates made at test
//! time (`rcgen`): byte-exact echo, ALPN and SNI as the client sees them, client
//! certificates, and the bad inputs of the TLS issue.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reactor::framing::Lines;
use reactor::{
    CloseReason, Config, Conn, ConnConfig, Context, Framed, FramedConfig, Handler, HandlerResult,
    Link, ListenOptions, Listener, Loop, Protocol, SourceId, Stats,
};
use reactor_test_support::pki::Pki;
use reactor_test_support::{Running, run_loop};
use reactor_tls::{ClientTls, Identity, ServerTls, TlsAcceptor, TlsFilter};

/// A certificate signed by the test CA, as the reactor's `Identity`.
fn issue(pki: &Pki, file: &str, names: &[&str]) -> Identity {
    let c = pki.issue(file, names);
    Identity::from_pem(c.cert_pem.as_bytes(), c.key_pem.as_bytes()).unwrap()
}

type Ends = Arc<Mutex<Vec<CloseReason>>>;

/// Echoes every line, upper-cased when it was negotiated with ALPN "upper"; says
/// which server name the client asked for on `/sni`.
struct Echo {
    ends: Ends,
}

impl Protocol for Echo {
    type Message = ();
    type Job = ();

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        link.send(line);
        link.send(b"\n");
        Ok(())
    }

    fn on_close(&mut self, _: &mut Loop<'_>, reason: CloseReason) {
        self.ends.lock().unwrap().push(reason);
    }
}

/// A throwaway CA named `name` and a server for `localhost` with a certificate
/// it issued.
fn localhost_server(name: &str) -> (Pki, TlsAcceptor) {
    let pki = Pki::new(name);
    let id = issue(&pki, "server", &["localhost"]);
    (pki, ServerTls::new(id).build().unwrap())
}

fn echo_server(acceptor: TlsAcceptor, cfg: FramedConfig) -> (SocketAddr, Running, Ends) {
    echo_server_with(Config::default(), acceptor, 1 << 20, cfg)
}

/// [`echo_server`] on a loop made with `config`, for lines of at most `max_line`.
fn echo_server_with(
    config: Config,
    acceptor: TlsAcceptor,
    max_line: usize,
    cfg: FramedConfig,
) -> (SocketAddr, Running, Ends) {
    let ends: Ends = Arc::default();
    let e = ends.clone();
    let (addr, server) = run_loop(config, move |r| {
        let l = reactor_tls::listen(
            "127.0.0.1:0".parse().unwrap(),
            &acceptor,
            Lines::new(max_line),
            cfg,
            move |_| Some(Echo { ends: e.clone() }),
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    (addr, server, ends)
}

fn drain(server: Running) -> Stats {
    server.handle.shutdown();
    server.join()
}

/// Runs the Python `script` with the server's port and the CA file as its
/// arguments.
fn py_client(script: &str, addr: SocketAddr, pki: &Pki) -> std::process::Output {
    let py = python().expect("python3 with ssl");
    Command::new(py)
        .args(["-c", script, &addr.port().to_string()])
        .arg(pki.path("ca.pem"))
        .output()
        .unwrap()
}

/// Waits (10 s at most) until `n` connections have ended.
fn wait_ends(ends: &Ends, n: usize) {
    let t0 = Instant::now();
    while ends.lock().unwrap().len() < n && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn python() -> Option<&'static str> {
    Command::new("python3")
        .args(["-c", "import ssl"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3")
}

#[test]
fn python_ssl_client_gets_every_byte_back() {
    let pki = Pki::new("python");
    let id = issue(&pki, "server", &["localhost", "127.0.0.1"]);
    let tls = ServerTls::new(id).build().unwrap();
    let (addr, server, _) = echo_server(tls, FramedConfig::default());
    // 4 MiB of lines, sent while the echo is read back; SHA-256 compared.
    // One thread with a non-blocking socket: OpenSSL does not allow SSL_read
    // and SSL_write on one connection from two threads at once (python
    // crashes with SIGSEGV when a sender thread is used).
    let script = r#"
import hashlib, selectors, socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="localhost")
s.setblocking(False)
line = b"0123456789abcdef" * 63 + b"\n"
n = 4 * 1024 * 1024 // len(line)
data = b"".join(b"%08d" % i + line[8:] for i in range(n))
sent = hashlib.sha256(data).hexdigest()
got, total, off = hashlib.sha256(), 0, 0
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
deadline = time.time() + 30
while total < len(data) and time.time() < deadline:
    sel.select(1)
    if off < len(data):
        try:
            off += s.send(data[off:off + 65536])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        if off == len(data):
            sel.modify(s, selectors.EVENT_READ)
    while True:
        try:
            b = s.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            break
        if not b:
            deadline = 0
            break
        got.update(b); total += len(b)
print(total, sent == got.hexdigest(), s.version(), s.cipher()[0])
"#;
    let out = py_client(script, addr, &pki);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?} {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words[1], "True", "the echo differs: {text}");
    // Lines of 1009 bytes, as many as fit in 4 MiB.
    assert_eq!(words[0], (4 * 1024 * 1024 / 1009 * 1009).to_string());
    assert!(words[2].starts_with("TLSv1.3"), "{text}");
    let stats = drain(server);
    assert_eq!(stats.handlers_failed, 0);
}

/// `openssl s_client` with `-servername` and `-alpn`: the handshake, the chosen
/// certificate (SNI) and protocol (ALPN) as the client prints them.
fn s_client(addr: SocketAddr, pki: &Pki, name: &str, alpn: &str, input: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            name,
        ])
        .args(["-alpn", alpn, "-CAfile"])
        .arg(pki.path("ca.pem"))
        .args(["-verify_return_error", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    // -ign_eof: it keeps reading after stdin ends, until the server closes.
    let out = wait_bounded(child, Duration::from_secs(20));
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Vec<u8> {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("client still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut out).unwrap();
    out
}

/// Closes every connection after its first line: lets `s_client -ign_eof` end.
struct OneLine {
    ends: Ends,
}

impl Protocol for OneLine {
    type Message = ();
    type Job = ();

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        let alpn = alpn_of(link);
        link.send(b"got ");
        link.send(line);
        link.send(b" over ");
        link.send(alpn.as_bytes());
        link.send(b"\n");
        link.close_when_done();
        Ok(())
    }

    fn on_close(&mut self, _: &mut Loop<'_>, reason: CloseReason) {
        self.ends.lock().unwrap().push(reason);
    }
}

fn alpn_of(link: &Link<'_, OneLine>) -> String {
    link.filter()
        .and_then(TlsFilter::of_filter)
        .and_then(|t| t.alpn_protocol())
        .map_or_else(
            || "no alpn".to_string(),
            |p| String::from_utf8_lossy(p).into_owned(),
        )
}

fn one_line_server(acceptor: TlsAcceptor, cfg: FramedConfig) -> (SocketAddr, Running, Ends) {
    let ends: Ends = Arc::default();
    let e = ends.clone();
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = reactor_tls::listen(
            "127.0.0.1:0".parse().unwrap(),
            &acceptor,
            Lines::new(4096),
            cfg,
            move |_| Some(OneLine { ends: e.clone() }),
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    (addr, server, ends)
}

#[test]
fn openssl_s_client_sees_the_certificate_for_its_server_name_and_the_alpn_choice() {
    let pki = Pki::new("sni");
    let default = issue(&pki, "default", &["localhost"]);
    let alt = issue(&pki, "alt", &["alt.test"]);
    let tls = ServerTls::new(default)
        .name("alt.test", alt)
        .alpn(&["upper", "echo"])
        .build()
        .unwrap();
    let (addr, server, _) = one_line_server(tls, FramedConfig::default());
    let out = s_client(addr, &pki, "alt.test", "echo", b"hello\n");
    assert!(
        out.contains("subject=CN=alt.test") || out.contains("subject=CN = alt.test"),
        "{out}"
    );
    assert!(out.contains("ALPN protocol: echo"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("got hello over echo"), "{out}");
    // Another name: the default certificate; the server's own preference wins
    // when the client offers both protocols.
    let out = s_client(addr, &pki, "localhost", "echo,upper", b"again\n");
    assert!(
        out.contains("subject=CN=localhost") || out.contains("subject=CN = localhost"),
        "{out}"
    );
    assert!(out.contains("ALPN protocol: upper"), "{out}");
    assert!(out.contains("got again over upper"), "{out}");
    assert_eq!(drain(server).handlers_failed, 0);
}

/// A minimal HTTP/1.1 server: answers every request with `body`, then ends the
/// conversation (`Connection: close`).
struct Http {
    body: Arc<Vec<u8>>,
}

impl Protocol for Http {
    type Message = ();
    type Job = ();

    fn on_frame(&mut self, link: &mut Link<'_, Self>, _head: &[u8]) -> HandlerResult {
        use std::fmt::Write as _;
        write!(
            link,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        )?;
        link.send(&self.body);
        link.close_when_done();
        Ok(())
    }
}

#[test]
fn curl_fetches_over_tls_with_the_ca_and_http_1_1_by_alpn() {
    let pki = Pki::new("curl");
    let id = issue(&pki, "server", &["localhost"]);
    let tls = ServerTls::new(id).alpn(&["http/1.1"]).build().unwrap();
    let body = Arc::new(reactor_test_support::pseudo_random_bytes(3, 3 << 20));
    let b = body.clone();
    let (addr, server) = run_loop(Config::default(), move |r| {
        let heads = reactor::framing::Delimited::new(b"\r\n\r\n", 16 * 1024);
        let l = reactor_tls::listen(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            heads,
            FramedConfig::default(),
            move |_| Some(Http { body: b.clone() }),
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let out_file = pki.path("body.bin");
    let url = format!("https://localhost:{}/", addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "20",
            "--resolve",
            &resolve,
            "--cacert",
        ])
        .arg(pki.path("ca.pem"))
        .arg("-o")
        .arg(&out_file)
        .arg(&url)
        .output()
        .expect("curl");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("ALPN: server accepted http/1.1"), "{log}");
    assert!(
        std::fs::read(&out_file).unwrap() == *body,
        "the body differs"
    );
    // Without the CA, curl refuses our certificate.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &resolve, &url])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "curl trusted a certificate it cannot verify"
    );
    let stats = drain(server);
    assert_eq!(stats.handlers_failed, 0);
    assert_eq!(stats.truncated_closes, 0);
}

/// The client side: our connection over TLS to our server, lines out, a
/// half-close (`close_notify` then FIN), every echo back, then end of file.
struct Talker {
    lines: usize,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Protocol for Talker {
    type Message = ();
    type Job = ();

    fn on_open(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        for i in 0..self.lines {
            use std::fmt::Write as _;
            writeln!(link, "line {i}")?;
        }
        link.finish_sending();
        Ok(())
    }

    fn on_frame(&mut self, _: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        let mut got = self.got.lock().unwrap();
        got.extend_from_slice(line);
        got.push(b'\n');
        Ok(())
    }
}

/// What a [`Talker`] of `lines` lines, on a loop made with `config`, got back
/// from `addr` within `limit` (it stops waiting once it has every echo); the
/// loop is stopped before returning.
fn talk(
    config: Config,
    addr: SocketAddr,
    connector: &reactor_tls::TlsConnector,
    lines: usize,
    limit: Duration,
) -> Vec<u8> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g, c) = (got.clone(), connector.clone());
    let (_, client) = run_loop(config, move |r| {
        let conn = Conn::connect(addr, 0, ConnConfig::default())
            .unwrap()
            .with_filter(c.filter("localhost").unwrap());
        r.spawn(Framed::with_conn(
            conn,
            Lines::new(1024),
            FramedConfig::default(),
            Talker { lines, got: g },
        ));
    });
    let want: usize = (0..lines).map(|i| format!("line {i}\n").len()).sum();
    let t0 = Instant::now();
    while got.lock().unwrap().len() < want && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(client);
    got.lock().unwrap().clone()
}

/// The lines a [`Talker`] of `lines` lines sends, as they come back.
fn talked(lines: usize) -> String {
    (0..lines).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn our_client_talks_to_our_server_and_refuses_a_server_it_cannot_verify() {
    let (pki, tls) = localhost_server("client");
    let (addr, server, ends) = echo_server(tls, FramedConfig::default());
    let connector = ClientTls::with_ca(pki.ca_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let got = talk(
        Config::default(),
        addr,
        &connector,
        20_000,
        Duration::from_secs(20),
    );
    assert!(got == talked(20_000).as_bytes(), "echoes differ");
    // A client that trusts another CA fails the handshake and closes.
    let other = Pki::new("other-ca");
    let stranger = ClientTls::with_ca(other.ca_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let closed = Arc::new(Mutex::new(None));
    let cl = closed.clone();
    let (_, client) = run_loop(Config::default(), move |r| {
        let conn = Conn::connect(addr, 0, ConnConfig::default())
            .unwrap()
            .with_filter(stranger.filter("localhost").unwrap());
        r.spawn(Framed::with_conn(
            conn,
            Lines::new(4096),
            FramedConfig::default(),
            Recorder { closed: cl },
        ));
    });
    let t0 = Instant::now();
    while closed.lock().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*closed.lock().unwrap(), Some(CloseReason::ProtocolError));
    drop(client);
    let stats = drain(server);
    assert_eq!(stats.handlers_failed, 0);
    let ends = ends.lock().unwrap().clone();
    assert!(ends.contains(&CloseReason::PeerClosed), "{ends:?}");
}

/// Records how its connection ended.
struct Recorder {
    closed: Arc<Mutex<Option<CloseReason>>>,
}

impl Protocol for Recorder {
    type Message = ();
    type Job = ();
    fn on_frame(&mut self, _: &mut Link<'_, Self>, _: &[u8]) -> HandlerResult {
        Ok(())
    }
    fn on_close(&mut self, _: &mut Loop<'_>, reason: CloseReason) {
        *self.closed.lock().unwrap() = Some(reason);
    }
}

#[test]
fn client_certificates_required_or_optional() {
    let pki = Pki::new("mtls");
    let id = issue(&pki, "server", &["localhost"]);
    pki.issue("client", &["client.test"]);
    let py = python().expect("python3 with ssl");
    let script = r#"
import socket, ssl, sys
port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
if cert != "-":
    ctx.load_cert_chain(cert, key)
try:
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    s.sendall(b"hi\n")
    print(s.recv(100))
except (ssl.SSLError, ConnectionError, OSError) as e:
    print("refused", type(e).__name__)
"#;
    let run = |addr: SocketAddr, with_cert: bool| {
        let (cert, key) = if with_cert {
            (pki.path("client.pem"), pki.path("client.key"))
        } else {
            ("-".into(), "-".into())
        };
        let out = Command::new(py)
            .args(["-c", script, &addr.port().to_string()])
            .arg(pki.path("ca.pem"))
            .arg(cert)
            .arg(key)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let ca = pki.ca_pem();
    let required = ServerTls::new(id)
        .client_ca(ca.as_bytes(), true)
        .build()
        .unwrap();
    let (addr, server, _) = echo_server(required, FramedConfig::default());
    assert_eq!(run(addr, true), "b'hi\\n'");
    assert!(
        run(addr, false).starts_with("refused"),
        "no certificate, yet served"
    );
    drop(server);
    let id = issue(&pki, "server2", &["localhost"]);
    let optional = ServerTls::new(id)
        .client_ca(ca.as_bytes(), false)
        .build()
        .unwrap();
    let (addr, server, _) = echo_server(optional, FramedConfig::default());
    assert_eq!(run(addr, true), "b'hi\\n'");
    assert_eq!(run(addr, false), "b'hi\\n'");
    drop(server);
}

/// A ClientHello, made by our own client side without a socket.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let c = ClientTls::with_ca(pki.ca_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let mut f = c.filter("localhost").unwrap();
    let mut out = bytes::BytesMut::new();
    reactor::StreamFilter::output(&mut *f, &mut out).unwrap();
    out.to_vec()
}

/// Sends `bytes`, optionally half-closes, and returns how long the server took
/// to close (a reset counts).
fn closed_after(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Duration {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return t0.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn bad_input_is_closed_with_its_reason_and_others_carry_on() {
    let (pki, tls) = localhost_server("bad");
    let cfg = FramedConfig::default().handshake_timeout(Duration::from_millis(500));
    let (addr, server, ends) = echo_server(tls, cfg);
    let hello = client_hello(&pki);
    // Plain HTTP instead of a ClientHello.
    closed_after(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    // A ClientHello cut short, then end of file.
    closed_after(addr, &hello[..hello.len() / 2], true);
    // A record header announcing more than the largest record (16 KiB + 2 KiB).
    closed_after(addr, &[0x16, 0x03, 0x03, 0x48, 0x01, 0, 0, 0], false);
    // A client that starts the handshake and never finishes it: the handshake
    // timeout (500 ms here), not the idle timeout (300 s), ends it.
    let took = closed_after(addr, &hello, false);
    assert!(
        took < Duration::from_secs(5),
        "a stalled handshake held on for {took:?}"
    );
    // `close_notify` in the middle of a line: the partial line is dropped (and
    // logged), the rest of the conversation was served.
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
s.sendall(b"whole\nhalf a li")
print(s.recv(100))
s = s.unwrap()  # close_notify, then a clean end
print(s.recv(100))
"#;
    let out = py_client(script, addr, &pki);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("b'whole\\n'"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every other connection carries on.
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
s.sendall(b"still here\n")
print(s.recv(100))
"#;
    let out = py_client(script, addr, &pki);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "b'still here\\n'"
    );
    wait_ends(&ends, 5);
    let stats = drain(server);
    let ends = ends.lock().unwrap().clone();
    let protocol_errors = ends
        .iter()
        .filter(|r| **r == CloseReason::ProtocolError)
        .count();
    assert!(protocol_errors >= 4, "{ends:?}");
    assert!(ends.contains(&CloseReason::PeerClosed), "{ends:?}");
    assert_eq!(stats.handlers_failed, 0, "{stats}");
}

/// The default key type (rcgen's, ECDSA P-256) and the default slow-handler
/// threshold (100 ms): ordinary handshakes never trip the warning. Fifty full
/// handshakes from a blocking rustls client, each with one echoed line.
#[test]
fn ordinary_handshakes_do_not_trip_the_slow_handler_warning() {
    let (pki, tls) = localhost_server("slow");
    let (addr, server, _) = echo_server(tls, FramedConfig::default());
    // No resumption: each of the fifty is a full handshake, with the
    // certificate and its signature.
    let client = ClientTls::with_ca(pki.ca_pem().as_bytes())
        .unwrap()
        .resumption(false)
        .build()
        .unwrap();
    for i in 0..50 {
        let name = reactor_tls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn =
            reactor_tls::rustls::ClientConnection::new(client.config().clone(), name).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut s = reactor_tls::rustls::StreamOwned::new(conn, sock);
        let line = format!("handshake {i}\n");
        s.write_all(line.as_bytes()).unwrap();
        let mut back = vec![0; line.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, line.as_bytes());
    }
    let stats = drain(server);
    assert_eq!(stats.closes(CloseReason::ProtocolError), 0);
    assert_eq!(
        stats.slow_dispatches, 0,
        "a handshake blocked the loop past the default threshold: {:?}",
        stats.slow_handlers
    );
}

/// A raw `Conn` over TLS whose handler never consumes (it waits for a frame
/// larger than `max_read_buffer`).
struct Hoarder {
    conn: Conn,
    ends: Ends,
}

impl Handler for Hoarder {
    type Message = ();
    type Job = ();
    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.conn.register(cx)?)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _: SourceId) -> HandlerResult {
        let st = self.conn.fill(cx)?;
        self.conn.flush(cx)?;
        if st.eof {
            cx.close();
        }
        Ok(())
    }
    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _: SourceId) -> HandlerResult {
        self.conn.flush(cx)?;
        Ok(())
    }
    fn on_close(&mut self, _: &mut Context<'_, Self>, reason: CloseReason) {
        self.ends.lock().unwrap().push(reason);
    }
}

/// More plaintext than the read buffer may hold (the pool's 64 KiB buffer is
/// full and `max_read_buffer` is 8 KiB), sent over TLS to a handler that does not
/// consume it: the connection is closed as a protocol error, as a plaintext one
/// is. (The filtered path used to offer the filter no room and re-queue the
/// read, forever: a busy loop on a connection that never closed.)
#[test]
fn a_read_buffer_full_and_not_consumed_closes_the_connection() {
    let (pki, tls) = localhost_server("big-frame");
    let ends: Ends = Arc::default();
    let e = ends.clone();
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |s, _| {
                let cfg = ConnConfig::default().max_read_buffer(8192);
                Some(Hoarder {
                    conn: Conn::new(s, 0, cfg).with_filter(tls.filter().ok()?),
                    ends: e.clone(),
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
try:
    s.sendall(b"x" * 200000)
    print(repr(s.recv(100)))
except OSError as e:
    print("closed:", type(e).__name__)
"#;
    let t0 = Instant::now();
    let out = py_client(script, addr, &pki);
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    assert!(
        text == "b''" || (text.starts_with("closed:") && !text.contains("Timeout")),
        "not closed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    wait_ends(&ends, 1);
    let stats = drain(server);
    let ends = ends.lock().unwrap().clone();
    assert_eq!(ends, [CloseReason::ProtocolError], "{stats}");
    assert_eq!(stats.handlers_failed, 0, "{stats}");
}

/// A line over the limit (100 KB) in one burst (200 KB): the read buffer grows
/// for it and is full when the decoder gives up; then a half-close. The server
/// ends the conversation (a protocol error: its `close_notify` and FIN go out at
/// once), drops what is left, reads on to the client's end of file and closes
/// then. (While ending, a full read buffer used to be kept: the filter was
/// offered no room, the read re-queued itself in a busy loop, the end of file
/// was never seen, and the socket was closed at the linger timeout.)
#[test]
fn ending_with_a_full_read_buffer_drops_it_and_sees_the_end_of_file() {
    let (pki, tls) = localhost_server("end-full");
    let cfg = FramedConfig::default().linger(Duration::from_secs(5));
    let (addr, server, ends) = echo_server_with(Config::default(), tls, 100_000, cfg);
    let script = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
t0 = time.monotonic()
try:
    s.sendall(b"x" * 200000)
    # A half-close under TLS (the records after it, an alert, are read raw).
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):
        pass
    print("eof", round(time.monotonic() - t0, 2))
except OSError as e:
    print("error", type(e).__name__, e, round(time.monotonic() - t0, 2))
"#;
    let out = py_client(script, addr, &pki);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        words.first(),
        Some(&"eof"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client's end of file is there (it exited): the server must see it
    // and close now, not at the linger timeout.
    let t0 = Instant::now();
    wait_ends(&ends, 1);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the server closed {took:?} after the client's end (linger 5 s)"
    );
    let stats = drain(server);
    assert_eq!(
        ends.lock().unwrap().clone(),
        [CloseReason::ProtocolError],
        "{stats}"
    );
}

/// A client that queues one line and half-closes at once, before its handshake
/// is done: the line goes first, then `close_notify`, and its echo comes back.
/// (`close_notify` used to go into rustls at once, ahead of the plaintext
/// rustls held until the handshake was done: the server saw the end first.)
#[test]
fn a_half_close_queued_during_the_handshake_follows_the_data() {
    let (pki, tls) = localhost_server("early-close");
    let (addr, server, _ends) = echo_server(tls, FramedConfig::default());
    let connector = ClientTls::with_ca(pki.ca_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    for lines in [1, 3] {
        let got = talk(
            Config::default(),
            addr,
            &connector,
            lines,
            Duration::from_secs(10),
        );
        assert_eq!(
            String::from_utf8_lossy(&got),
            talked(lines),
            "{lines} line(s) queued with a half-close before the handshake"
        );
    }
    let stats = drain(server);
    assert_eq!(stats.handlers_failed, 0);
}

/// Small pool buffers (4 KiB, under a TLS record's 16 KiB): rustls holds more
/// plaintext than the read buffer takes at every read, and 20,000 lines and a
/// half-close still come back whole. (A read that found the filter holding more
/// than the room it offered used to stop without re-queuing: the rest waited for
/// an edge that never came, or was lost at the end of the stream.)
#[test]
fn small_buffers_under_a_record_lose_nothing() {
    let (pki, tls) = localhost_server("small-bufs");
    let small = Config::default().buffer_size(4096);
    let (addr, server, ends) = echo_server_with(small, tls, 1024, FramedConfig::default());
    let connector = ClientTls::with_ca(pki.ca_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let back = talk(
        Config::default().buffer_size(4096),
        addr,
        &connector,
        20_000,
        Duration::from_secs(20),
    );
    let expect = talked(20_000);
    assert!(
        back == expect.as_bytes(),
        "{} of {} bytes came back",
        back.len(),
        expect.len()
    );
    let stats = drain(server);
    assert_eq!(stats.handlers_failed, 0);
    assert_eq!(ends.lock().unwrap().clone(), [CloseReason::PeerClosed]);
}
