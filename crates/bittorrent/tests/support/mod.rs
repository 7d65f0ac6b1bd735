//! Helpers shared by the peer's test files: a minimal HTTP tracker on 127.0.0.1,
//! the skip-or-fail rule for real clients, and small process helpers.
//! (Each test file that uses them declares `mod support;`; not every file uses
//! every helper.)
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A minimal HTTP tracker: records `(port, event)` of every announce and answers
/// with every other announcer as a compact peer on 127.0.0.1. It stops when
/// dropped, or after `LIFETIME` at the latest.
pub struct FakeTracker {
    pub url: String,
    pub seen: Arc<std::sync::Mutex<Vec<(u16, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const LIFETIME: Duration = Duration::from_secs(150);

impl FakeTracker {
    pub fn start() -> FakeTracker {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}/announce", l.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(u16, String)>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + LIFETIME;
            while !stop2.load(Ordering::SeqCst) && Instant::now() < end {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 2048];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let query = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let param = |k: &str| {
                    query
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                        .unwrap_or("")
                        .to_string()
                };
                let port: u16 = param("port").parse().unwrap_or(0);
                let event = param("event");
                let mut compact = Vec::new();
                {
                    let mut seen = seen2.lock().unwrap();
                    seen.push((port, event));
                    let mut ports: Vec<u16> = seen.iter().map(|p| p.0).collect();
                    ports.sort();
                    ports.dedup();
                    for p in ports.into_iter().filter(|&p| p != port) {
                        compact.extend_from_slice(&[127, 0, 0, 1]);
                        compact.extend_from_slice(&p.to_be_bytes());
                    }
                }
                let mut body = b"d8:intervali2e5:peers".to_vec();
                body.extend_from_slice(format!("{}:", compact.len()).as_bytes());
                body.extend_from_slice(&compact);
                body.push(b'e');
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        FakeTracker {
            url,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `port` announced `event` (`""` for a periodic announce).
    pub fn wait_for(&self, port: u16, event: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self
                .seen
                .lock()
                .unwrap()
                .iter()
                .any(|(p, e)| *p == port && e == event)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until some port other than `not` announced.
    pub fn wait_for_other(&self, not: u16, timeout: Duration) -> Option<u16> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(p) = self.seen.lock().unwrap().iter().find(|(p, _)| *p != not) {
                return Some(p.0);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for FakeTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// True if `program --version` runs; otherwise prints why the test is skipped, or
/// fails when `REACTOR_REQUIRE_INTEROP=1` (CI), where a missing client is a failure.
pub fn client_available(program: &str, package: &str) -> bool {
    let why = match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => return true,
        Ok(s) => format!("`{program} --version` exited with {s}"),
        Err(e) => format!("cannot run {program}: {e}"),
    };
    let msg = format!(
        "interop test skipped: {why}; install it with `apt-get install {package}` (.ci/run does)"
    );
    if std::env::var("REACTOR_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{msg} (REACTOR_REQUIRE_INTEROP=1)");
    }
    println!("{msg}");
    false
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for clients that cannot
/// be told to pick one and report it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A child process with stdout and stderr going to `log`; killed when dropped.
pub struct Client {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Client {
    pub fn spawn(mut cmd: Command, log: &Path) -> Client {
        let f = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        Client {
            child: cmd.spawn().expect("spawn client"),
            log: log.to_path_buf(),
        }
    }

    /// Waits up to `timeout` for the client to exit; its exit code, or None.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().or(Some(-1));
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of its output, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
