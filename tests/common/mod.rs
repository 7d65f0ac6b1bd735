//! Helpers shared by the integration tests: in-process loops on a thread, and the
//! example binaries as child processes. Everything binds 127.0.0.1:0.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reactor::{Config, Reactor, ReactorHandle, Stats};

/// A reactor running on its own thread.
pub struct Running {
    pub handle: ReactorHandle,
    pub thread: Option<JoinHandle<Stats>>,
}

impl Running {
    /// Stops the loop and returns its final stats.
    pub fn stop(mut self) -> Stats {
        self.handle.stop();
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("loop thread panicked")
    }
    /// Waits for the loop to end by itself (e.g. after a shutdown).
    pub fn join(mut self) -> Stats {
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("loop thread panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.stop();
            let _ = t.join();
        }
    }
}

/// Builds a reactor on a new thread with `setup` (which spawns handlers and returns
/// a value, e.g. the bound address), runs it, and returns that value.
pub fn run_loop<T: Send + 'static>(
    config: Config,
    setup: impl FnOnce(&mut Reactor) -> T + Send + 'static,
) -> (T, Running) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut r = Reactor::with_config(config).expect("reactor");
        let v = setup(&mut r);
        tx.send((v, r.handle())).unwrap();
        r.run().expect("run");
        r.stats().clone()
    });
    let (v, handle) = rx.recv().expect("loop set-up failed");
    (
        v,
        Running {
            handle,
            thread: Some(thread),
        },
    )
}

/// The path of a built example binary (cargo builds examples before tests).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join(name);
    assert!(p.exists(), "example binary {} not built", p.display());
    p
}

/// A child process that prints `listening on IP:PORT` first.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: mpsc::Receiver<String>,
    stderr_log: Vec<String>,
}

impl Server {
    /// Starts `cmd` and waits (up to 20 s) for its `listening on` line.
    pub fn start(mut cmd: Command) -> Server {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn server");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        let (otx, orx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = otx.send(line);
            // Keep draining so the child never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = orx
            .recv_timeout(Duration::from_secs(20))
            .expect("server did not print its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Server {
            child,
            addr,
            stderr: erx,
            stderr_log: Vec::new(),
        }
    }

    /// Waits until a stderr line contains `needle`, up to `timeout`.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> bool {
        if self.stderr_log.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.stderr_log.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Everything read from stderr so far.
    pub fn stderr_text(&mut self) -> String {
        while let Ok(l) = self.stderr.try_recv() {
            self.stderr_log.push(l);
        }
        self.stderr_log.join("\n")
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits up to `timeout` for the child to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU ticks (user + system) the child has used so far, from /proc.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deterministic byte generator for payloads (xorshift).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A fresh, empty scratch folder for one test: `reactor-KIND-PID-NAME` in the
/// system's temporary directory.
pub fn tmpdir(kind: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reactor-{kind}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `cmd` to completion, at most `timeout`; returns its exit code (None if it
/// had to be killed) and its stderr.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (Option<i32>, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + timeout;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().unwrap())
}
