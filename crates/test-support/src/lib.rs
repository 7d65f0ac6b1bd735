//! Helpers shared by the workspace's integration tests: in-process loops on a
//! thread, programs as child processes (each crate's tests find its binaries
//! through `CARGO_BIN_EXE_*`), byte streams, kernel-buffer helpers. Everything binds
//! 127.0.0.1:0. [`alloc`] is the counting allocator of the zero-allocation tests,
//! [`fuzz`] the seeded input generator of the parsers' unit tests, `pki` (feature
//! `pki`) a throwaway CA for the TLS tests,
//! [`scrape`] reads a metrics endpoint, [`require_tool`] decides whether a test
//! without its outside client skips or fails. This crate is for
//! tests only (`publish = false`).

pub mod alloc;
pub mod fuzz;
#[cfg(feature = "pki")]
pub mod pki;
pub mod scrape;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reactor::{Config, Reactor, ReactorHandle, Stats};

/// Whether the outside program a test needs (`cmd`, run with `args`) works
/// here. If not: in CI (`REACTOR_REQUIRE_INTEROP=1`) the test fails, naming
/// `install`; on a developer's machine it prints `SKIPPED: ...` and the test
/// returns early.
pub fn require_tool(cmd: &str, args: &[&str], install: &str) -> bool {
    let why = match Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => return true,
        Ok(s) => format!("`{cmd} {}` exited with {s}", args.join(" ")),
        Err(e) => format!("cannot run {cmd}: {e}"),
    };
    if std::env::var("REACTOR_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{why}; it is required (REACTOR_REQUIRE_INTEROP=1): {install}");
    }
    println!("SKIPPED: {why} ({install}; REACTOR_REQUIRE_INTEROP=1 makes this a failure)");
    false
}

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

    /// The address of the metrics endpoint the server logged
    /// (`metrics on http://ADDR/metrics`, from `--metrics`), waiting up to 10 s.
    pub fn metrics_addr(&mut self) -> SocketAddr {
        assert!(
            self.wait_stderr("metrics on http://", Duration::from_secs(10)),
            "no metrics line in: {}",
            self.stderr_text()
        );
        let line = self
            .stderr_log
            .iter()
            .find(|l| l.contains("metrics on http://"))
            .expect("found above");
        let rest = &line[line.find("metrics on http://").unwrap() + "metrics on http://".len()..];
        rest.split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
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
        crate::fuzz::xorshift(&mut x);
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

/// A deterministic byte stream (xorshift), generated in chunks so 100 MiB never
/// sits in memory. The same seed always gives the same bytes, so a reader can check
/// what a writer sent without either holding all of it.
pub struct Stream(pub u64);

impl Stream {
    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let mut x = self.0;
            crate::fuzz::xorshift(&mut x);
            self.0 = x;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
    }
}

/// The size of one write or read of the stream helpers.
pub const CHUNK: usize = 64 * 1024;

/// Writes `total` bytes of stream `seed` on `w`, then half-closes it; returns it.
pub fn send_stream(mut w: TcpStream, seed: u64, total: usize) -> TcpStream {
    send_stream_counted(&mut w, seed, total, "send stream", |_| {});
    w
}

/// [`send_stream`] that reports each chunk written to `progress`. A write that fails
/// (e.g. stuck past the socket's write timeout) panics naming `who` and how far it
/// got.
pub fn send_stream_counted(
    w: &mut TcpStream,
    seed: u64,
    total: usize,
    who: &str,
    mut progress: impl FnMut(usize),
) {
    let mut g = Stream(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0;
    while done < total {
        let n = (total - done).min(CHUNK);
        g.fill(&mut buf[..n]);
        if let Err(e) = w.write_all(&buf[..n]) {
            panic!("{who}: stuck after {done} of {total} bytes ({e})");
        }
        progress(n);
        done += n;
    }
    w.shutdown(Shutdown::Write).unwrap();
}

/// Reads to end of file, checking every byte against stream `seed`; returns the
/// count. A reset or timeout instead of end of file panics.
pub fn check_stream(mut r: TcpStream, seed: u64) -> usize {
    let mut g = Stream(seed);
    let mut want = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut pending = 0; // bytes of `want` not yet matched
    let mut off = 0;
    let mut total = 0;
    loop {
        if pending == 0 {
            g.fill(&mut want);
            pending = CHUNK;
            off = 0;
        }
        let n = match r.read(&mut got[..pending]) {
            Ok(0) => return total,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("after {total} bytes: {e}"),
        };
        assert!(
            got[..n] == want[off..off + n],
            "stream corrupted near byte {total}"
        );
        off += n;
        pending -= n;
        total += n;
    }
}

/// Bytes written on `s` that the peer's kernel has not acknowledged yet
/// (`SIOCOUTQ`): a reset from us destroys those, and only those.
pub fn unacked(s: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n as usize
}

/// Writes stream `seed` on `s` until nothing moves for 300 ms (every buffer between
/// us and a reader that does not read is full, the forwarder's queues included);
/// returns the bytes written.
pub fn push_until_stuck(s: &mut TcpStream, seed: u64) -> usize {
    Pusher::new(seed).until_stuck(s, Duration::from_millis(300), 256 << 20)
}

/// A writer of stream `seed` that remembers where it stopped, so that a test can
/// push until a reader that does not read holds everything back, then go on with
/// the same stream once it reads.
pub struct Pusher {
    g: Stream,
    buf: Vec<u8>,
    /// Unsent bytes at the end of `buf`.
    carry: usize,
    sent: usize,
}

impl Pusher {
    /// At the start of stream `seed`.
    pub fn new(seed: u64) -> Pusher {
        Pusher {
            g: Stream(seed),
            buf: vec![0u8; CHUNK],
            carry: 0,
            sent: 0,
        }
    }

    /// Bytes written so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Writes without blocking until nothing moves for `quiet`; returns the bytes
    /// written so far. More than `limit` bytes fails the test: whatever is in
    /// between buffered without bound. `s` is left blocking.
    pub fn until_stuck(&mut self, s: &mut TcpStream, quiet: Duration, limit: usize) -> usize {
        s.set_nonblocking(true).unwrap();
        let mut last_progress = Instant::now();
        while last_progress.elapsed() < quiet {
            if self.carry == 0 {
                self.g.fill(&mut self.buf);
                self.carry = CHUNK;
            }
            match s.write(&self.buf[CHUNK - self.carry..]) {
                Ok(n) => {
                    self.sent += n;
                    self.carry -= n;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            assert!(self.sent < limit, "the forwarder buffered without bound");
        }
        s.set_nonblocking(false).unwrap();
        self.sent
    }

    /// Blocking: the rest of the chunk the last push stopped in, then `more` bytes
    /// of the stream.
    pub fn write_more(&mut self, s: &mut TcpStream, more: usize) {
        s.write_all(&self.buf[CHUNK - self.carry..]).unwrap();
        self.sent += self.carry;
        self.carry = 0;
        let mut left = more;
        while left > 0 {
            self.g.fill(&mut self.buf);
            let n = left.min(CHUNK);
            s.write_all(&self.buf[..n]).unwrap();
            left -= n;
        }
        self.sent += more;
    }
}

/// Closes `s` with a reset (`SO_LINGER` 0), as a crashing or aborting peer does.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Small kernel buffers on the test's own ends, so that its writers get stuck after a
/// few hundred KiB in flight instead of many MiB.
pub const SMALL_SOCKET_BUFFER: usize = 64 * 1024;

/// A connection to `to` with [`SMALL_SOCKET_BUFFER`] kernel buffers and `timeout`
/// for connecting, reading and writing.
pub fn small_buffer_connect(to: SocketAddr, timeout: Duration) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(SMALL_SOCKET_BUFFER).unwrap();
    s.set_send_buffer_size(SMALL_SOCKET_BUFFER).unwrap();
    s.connect_timeout(&to.into(), timeout).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s
}
