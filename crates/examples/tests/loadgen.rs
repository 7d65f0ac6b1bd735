//! The load generator against real servers: the in-tree echo server (every mode must
//! run clean), a server that corrupts one byte and a server that hangs up (both must
//! make it exit non-zero), and a non-loopback target (refused before connecting).

use reactor_test_support as common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Server;

/// Runs loadgen with `args`, killing it if it runs longer than `limit`.
fn loadgen(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let end = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "loadgen {args:?} did not finish in {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fields of the RESULT line.
fn result_line(out: &Output) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout:?}"));
    line.split_whitespace()
        .skip(1)
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn f(r: &HashMap<String, String>, k: &str) -> f64 {
    r.get(k)
        .unwrap_or_else(|| panic!("RESULT has no {k}: {r:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} is not a number: {r:?}"))
}

fn echo_server() -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    Server::start(cmd)
}

#[test]
fn every_mode_runs_clean_against_the_echo_server() {
    let mut srv = echo_server();
    let target = srv.addr.to_string();
    let pid = srv.child.id().to_string();
    let cases: [(&str, &[&str]); 4] = [
        (
            "pipeline",
            &["--connections", "8", "--size", "64", "--pipeline", "8"],
        ),
        ("rr", &["--connections", "4", "--size", "100"]),
        (
            "bulk",
            &["--connections", "2", "--size", "65536", "--pipeline", "2"],
        ),
        ("churn", &["--connections", "4", "--size", "64"]),
    ];
    for (mode, extra) in cases {
        let mut args = vec![
            "--target",
            &target,
            "--mode",
            mode,
            "--duration",
            "0.6",
            "--warmup",
            "0.2",
            "--server-pid",
            &pid,
        ];
        args.extend_from_slice(extra);
        let out = loadgen(&args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{mode}: exit {:?}; stderr: {stderr}",
            out.status
        );
        let r = result_line(&out);
        assert_eq!(r["mode"], mode);
        assert_eq!(f(&r, "errors"), 0.0, "{mode}: {r:?}");
        assert!(f(&r, "msgs_per_s") > 0.0, "{mode}: {r:?}");
        assert!(f(&r, "mb_per_s") > 0.0, "{mode}: {r:?}");
        let (p50, p99, p999) = (f(&r, "p50_us"), f(&r, "p99_us"), f(&r, "p999_us"));
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{mode}: {r:?}");
        let secs = f(&r, "seconds");
        assert!((0.55..5.0).contains(&secs), "{mode}: window {secs} s");
        // Bytes and messages agree with the message size (whole messages plus at
        // most the ones in flight).
        let size: f64 = extra[3].parse().unwrap();
        let msgs = f(&r, "messages");
        let bytes = f(&r, "mb_per_s") * 1e6 * secs;
        assert!(
            bytes >= (msgs - 1.0) * size * 0.99,
            "{mode}: {bytes} bytes for {msgs} messages"
        );
        if mode == "churn" {
            assert!(f(&r, "conns_per_s") > 0.0, "{r:?}");
        }
        assert!(f(&r, "server_hwm_kb") > 0.0, "{mode}: {r:?}");
        assert!(r.contains_key("server_user_ns_per_msg"), "{r:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("latency (us)"),
            "table missing"
        );
    }
    // loadgen drains at the end (half-close, read the last echoes): the server saw
    // clean closes, not resets.
    let log = srv.stderr_text();
    assert!(!log.contains("failed"), "server log: {log}");
}

/// `echo --tls-cert/--tls-key` and `loadgen --tls --ca`: every mode runs clean
/// through TLS (churn does a full handshake per connection), and the wrong CA or
/// server name fails the run with a message instead of counting as traffic.
#[test]
fn every_mode_runs_clean_over_tls_and_a_bad_certificate_fails_the_run() {
    let pki = common::pki::Pki::new("loadgen");
    let cert = pki.issue("server", &["localhost"]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert.cert_path)
        .arg("--tls-key")
        .arg(&cert.key_path);
    let mut srv = Server::start(cmd);
    let target = srv.addr.to_string();
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    for (mode, size, pipeline) in [
        ("pipeline", "64", "8"),
        ("rr", "100", "1"),
        ("bulk", "65536", "2"),
        ("churn", "64", "1"),
    ] {
        let args = [
            "--target",
            &target,
            "--mode",
            mode,
            "--connections",
            "2",
            "--size",
            size,
            "--pipeline",
            pipeline,
            "--duration",
            "0.6",
            "--warmup",
            "0.2",
            "--tls",
            "--ca",
            ca,
        ];
        let out = loadgen(&args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {:?}: {stderr}", out.status);
        let r = result_line(&out);
        assert_eq!(f(&r, "errors"), 0.0, "{mode}: {r:?}");
        assert!(f(&r, "messages") > 0.0, "{mode}: {r:?}");
        if mode == "churn" {
            assert!(f(&r, "conns_per_s") > 0.0, "{r:?}");
        }
    }
    // A CA that did not sign the server's certificate, then a name it is not for.
    let other = common::pki::Pki::new("loadgen-other");
    let other_ca = other.path("ca.pem");
    for extra in [
        [
            "--ca",
            other_ca.to_str().unwrap(),
            "--server-name",
            "localhost",
        ],
        ["--ca", ca, "--server-name", "elsewhere.test"],
    ] {
        let mut args = vec![
            "--target",
            &target,
            "--mode",
            "rr",
            "--connections",
            "1",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--tls",
        ];
        args.extend_from_slice(&extra);
        let out = loadgen(&args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} passed: {stderr}");
        assert!(
            stderr.to_lowercase().contains("certificate"),
            "{extra:?}: no word of the certificate in: {stderr}"
        );
    }
    let log = srv.stderr_text();
    assert!(!log.contains("panick"), "server log: {log}");
}

/// Many churning connections finish in the same loop iterations; the run must go
/// on replacing them (it used to stop early, "every connection has closed", when
/// all of them were between a close and their successor's start at once).
#[test]
fn churn_with_many_connections_runs_its_whole_window() {
    let srv = echo_server();
    let target = srv.addr.to_string();
    for _ in 0..3 {
        let args = [
            "--target",
            &target,
            "--mode",
            "churn",
            "--connections",
            "256",
            "--duration",
            "1.5",
            "--warmup",
            "0.3",
        ];
        let out = loadgen(&args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "exit {:?}; stderr: {stderr}",
            out.status
        );
        let r = result_line(&out);
        assert_eq!(f(&r, "errors"), 0.0, "{r:?}");
        assert!(f(&r, "seconds") >= 1.4, "stopped early: {r:?} {stderr}");
    }
}

/// A tiny blocking TCP server on 127.0.0.1:0 that handles each connection with
/// `serve` on its own thread until `stop` is set.
struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(serve: fn(TcpStream)) -> TestServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(30);
            while !s.load(Ordering::SeqCst) && Instant::now() < end {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                        std::thread::spawn(move || serve(c));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes, but flips one bit of the 1000th byte.
fn corrupting(mut c: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            return;
        }
        if total <= 999 && total + n > 999 {
            buf[999 - total] ^= 0x01;
        }
        total += n;
        if c.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Echoes the first few bytes, then hangs up.
fn hanging_up(mut c: TcpStream) {
    let mut buf = [0u8; 10];
    if let Ok(n) = c.read(&mut buf) {
        let _ = c.write_all(&buf[..n]);
    }
}

#[test]
fn a_corrupted_byte_fails_the_run() {
    let srv = TestServer::start(corrupting);
    let target = srv.addr.to_string();
    for mode in ["pipeline", "bulk"] {
        let size = if mode == "bulk" { "4096" } else { "64" };
        let out = loadgen(
            &[
                "--target",
                &target,
                "--mode",
                mode,
                "--connections",
                "2",
                "--size",
                size,
                "--duration",
                "0.5",
                "--warmup",
                "0",
            ],
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}: corruption not detected");
        assert!(
            stderr.contains("corrupt echo at stream offset 999"),
            "{stderr}"
        );
        let r = result_line(&out);
        assert!(f(&r, "errors") >= 1.0, "{r:?}");
    }
}

#[test]
fn a_server_that_hangs_up_fails_the_run() {
    let srv = TestServer::start(hanging_up);
    let out = loadgen(
        &[
            "--target",
            &srv.addr.to_string(),
            "--mode",
            "rr",
            "--connections",
            "2",
            "--size",
            "64",
            "--duration",
            "0.5",
            "--warmup",
            "0",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let r = result_line(&out);
    assert!(f(&r, "errors") >= 2.0, "{r:?}");
}

#[test]
fn a_refused_connection_fails_the_run() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = loadgen(
        &[
            "--target",
            &format!("127.0.0.1:{port}"),
            "--mode",
            "rr",
            "--connections",
            "1",
            "--duration",
            "2",
            "--warmup",
            "0",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
}

#[test]
fn non_loopback_targets_and_bad_arguments_are_refused() {
    for (args, needle) in [
        (
            vec!["--target", "10.1.2.3:7", "--duration", "1"],
            "only loopback",
        ),
        (
            vec!["--target", "[2001:db8::1]:7", "--duration", "1"],
            "only loopback",
        ),
        (
            vec!["--target", "localhost:7", "--duration", "1"],
            "not IP:PORT",
        ),
        (
            vec![
                "--target",
                "127.0.0.1:7",
                "--duration",
                "1",
                "--connections",
                "10001",
            ],
            "--connections",
        ),
        (
            vec![
                "--target",
                "127.0.0.1:7",
                "--duration",
                "1",
                "--mode",
                "rr",
                "--pipeline",
                "4",
            ],
            "one message in flight",
        ),
        (
            vec!["--target", "127.0.0.1:7", "--duration", "0"],
            "--duration",
        ),
        (vec!["--target", "127.0.0.1:7"], "--duration"),
    ] {
        let out = loadgen(&args, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("RESULT"));
    }
}
