//! TLS through the `proxy` binary, on 127.0.0.1 with a throwaway CA:
//! `--tls-cert/--tls-key` terminates TLS from `curl` and forwards 100 MiB of
//! plaintext from a Python HTTP backend (SHA-256 compared); `--upstream-tls
//! --upstream-ca` originates TLS to a TLS echo server (a stream checked byte for
//! byte) and refuses one whose certificate it cannot verify; both at once; and
//! the combinations that cannot work are refused at start with a message.

use reactor_test_support as common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{Running, Server, require_tool, run_loop, tmpdir};
use reactor::Config;
use reactor::echo::{EchoOptions, echo_listener};
use reactor_tls::{ClientTls, Identity, ServerTls};

fn proxy(args: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(args);
    Server::start(cmd)
}

/// A TLS echo server in this process, with the certificate `file` of `pki`.
fn tls_echo(pki: &Pki, file: &str) -> (SocketAddr, Running) {
    let cert = pki.issue(file, &["localhost", "127.0.0.1"]);
    let id = Identity::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    let acceptor = ServerTls::new(id).build().unwrap();
    run_loop(Config::default(), move |r| {
        let opts = EchoOptions::default().filter(acceptor.factory());
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    })
}

/// `python3 -m http.server` on 127.0.0.1 (its port from its first line),
/// serving `dir`; killed on drop.
struct HttpBackend {
    child: Child,
    addr: SocketAddr,
}

impl HttpBackend {
    fn start(dir: &Path) -> HttpBackend {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port: u16 = line
            .split("port ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said {line:?}"));
        HttpBackend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn terminating_tls_forwards_100_mib_from_a_plaintext_http_backend() {
    if !require_tool("curl", &["--version"], "apt-get install curl") {
        return;
    }
    let pki = Pki::new("proxy-terminate");
    let cert = pki.issue("proxy", &["localhost"]);
    let dir = tmpdir("proxy-tls", "www");
    let file = dir.join("big.bin");
    {
        let mut f = std::fs::File::create(&file).unwrap();
        let mut g = common::Stream(0x7e57);
        let mut chunk = vec![0u8; common::CHUNK];
        for _ in 0..(100 << 20) / common::CHUNK {
            g.fill(&mut chunk);
            f.write_all(&chunk).unwrap();
        }
    }
    let backend = HttpBackend::start(&dir);
    let upstream = backend.addr.to_string();
    let (cert_path, key_path) = (
        cert.cert_path.to_str().unwrap(),
        cert.key_path.to_str().unwrap(),
    );
    let mut srv = proxy(&[
        "--upstream",
        &upstream,
        "--tls-cert",
        cert_path,
        "--tls-key",
        key_path,
    ]);
    let got = dir.join("got.bin");
    let port = srv.addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "120", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/big.bin"))
        .arg("-o")
        .arg(&got)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}\nproxy: {}",
        String::from_utf8_lossy(&out.stderr),
        srv.stderr_text()
    );
    assert_eq!(std::fs::metadata(&got).unwrap().len(), 100 << 20);
    assert_eq!(sha256(&got), sha256(&file), "the body differs");
    // A plaintext client on the TLS port is refused, and the proxy goes on.
    let mut plain = TcpStream::connect(srv.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("HTTP/1."),
        "plaintext served"
    );
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `len` bytes of stream `seed` through `addr` and checks they come back.
fn echo_through(addr: SocketAddr, seed: u64, len: usize) -> usize {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || common::send_stream(w, seed, len));
    let n = common::check_stream(c, seed);
    drop(writer.join().unwrap());
    n
}

#[test]
fn originating_tls_reaches_a_verified_upstream_and_refuses_another() {
    let pki = Pki::new("proxy-originate");
    let (backend, _b) = tls_echo(&pki, "backend");
    let up = backend.to_string();
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let mut srv = proxy(&[
        "--upstream",
        &up,
        "--upstream-tls",
        "--upstream-ca",
        ca,
        "--upstream-server-name",
        "localhost",
    ]);
    assert_eq!(echo_through(srv.addr, 1, 8 << 20), 8 << 20);
    // By IP address too: the certificate names 127.0.0.1.
    let mut by_ip = proxy(&["--upstream", &up, "--upstream-tls", "--upstream-ca", ca]);
    assert_eq!(echo_through(by_ip.addr, 2, 1 << 20), 1 << 20);
    // An upstream whose certificate another CA signed: nothing is relayed, the
    // client's connection ends, and the proxy says why.
    let other = Pki::new("proxy-originate-other");
    let (stranger, _s) = tls_echo(&other, "stranger");
    let st = stranger.to_string();
    let mut refused = proxy(&[
        "--upstream",
        &st,
        "--upstream-tls",
        "--upstream-ca",
        ca,
        "--upstream-server-name",
        "localhost",
    ]);
    let mut c = TcpStream::connect(refused.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hello\n").unwrap();
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "bytes came back from an unverified upstream");
    assert!(t0.elapsed() < Duration::from_secs(9));
    assert!(
        refused.wait_stderr("certificate", Duration::from_secs(5)),
        "no reason logged: {}",
        refused.stderr_text()
    );
    let _ = (srv.stderr_text(), by_ip.stderr_text());
}

#[test]
fn tls_on_both_sides_at_once() {
    let pki = Pki::new("proxy-both");
    let (backend, _b) = tls_echo(&pki, "backend");
    let cert = pki.issue("proxy", &["localhost"]);
    let up = backend.to_string();
    let ca = pki.path("ca.pem");
    let mut srv = proxy(&[
        "--upstream",
        &up,
        "--upstream-tls",
        "--upstream-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.cert_path.to_str().unwrap(),
        "--tls-key",
        cert.key_path.to_str().unwrap(),
    ]);
    let client = ClientTls::with_ca(pki.ca_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let name = reactor_tls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = reactor_tls::rustls::ClientConnection::new(client.config().clone(), name).unwrap();
    let sock = TcpStream::connect(srv.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = reactor_tls::rustls::StreamOwned::new(conn, sock);
    // 2 MiB in 64 KiB rounds, each echoed back whole before the next.
    let mut g = common::Stream(3);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut back = vec![0u8; 64 * 1024];
    for _ in 0..32 {
        g.fill(&mut chunk);
        s.write_all(&chunk).unwrap();
        s.read_exact(&mut back).unwrap();
        assert!(chunk == back, "the echo differs");
    }
    let _ = srv.stderr_text();
}

#[test]
fn combinations_that_cannot_work_are_refused_at_start() {
    let pki = Pki::new("proxy-refuse");
    let cert = pki.issue("proxy", &["localhost"]);
    let (c, k) = (
        cert.cert_path.to_str().unwrap(),
        cert.key_path.to_str().unwrap(),
    );
    let cases: [&[&str]; 4] = [
        &[
            "--upstream",
            "127.0.0.1:9",
            "--tls-cert",
            c,
            "--tls-key",
            k,
            "--proxy-protocol-in",
            "--proxy-protocol-from",
            "127.0.0.1/32",
        ],
        &[
            "--upstream",
            "127.0.0.1:9",
            "--upstream-tls",
            "--proxy-protocol-out",
            "v2",
        ],
        &["--socks5", "--upstream-tls"],
        &[
            "--upstream",
            "127.0.0.1:9",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            k,
        ],
    ];
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.trim().is_empty() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
