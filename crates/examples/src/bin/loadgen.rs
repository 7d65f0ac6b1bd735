//! `loadgen`: a verifying load generator for echo servers, built on the reactor.
//!
//! ```text
//! loadgen --target 127.0.0.1:7878 --connections 100 --size 64 --pipeline 16 \
//!         --duration 5 [--warmup 1] --mode pipeline|rr|bulk|churn [--server-pid PID]
//! ```
//!
//! - `pipeline`: every connection keeps K messages of `--size` bytes in flight;
//!   `rr` is the same with one in flight. Reports messages/s and latency percentiles.
//! - `bulk`: every connection streams `--size`-byte chunks (K in flight) and reads the
//!   echo back; reports MB/s.
//! - `churn`: every connection slot connects, does one exchange, half-closes, waits
//!   for the server's end of file, closes, and starts over; reports connections/s.
//!
//! Every echoed byte is checked against what was sent: connection `c`'s stream is a
//! fixed pseudo-random table read from offset `c * 7919`, so the expected bytes are a
//! slice of that table and checking is a `memcmp`, with no copy of what was sent. A
//! wrong, missing or extra byte, a reset or a failed connect makes the run exit
//! non-zero. Only loopback targets (127.0.0.0/8, ::1) are accepted: this is a tool for
//! measuring a server on the same machine, not for loading someone else's.
//!
//! With `--server-pid`, the server's CPU time (utime, stime from `/proc/PID/stat`) is
//! sampled at the start and the end of the measured window and its peak RSS (VmHWM)
//! at the end, so CPU per message covers exactly the window the rate is taken over.
//!
//! Output: a readable table on stdout, then one line
//! `RESULT mode=... msgs_per_s=... mb_per_s=... p50_us=... p99_us=... p999_us=... errors=N ...`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use reactor::Histogram;
use reactor::{
    CloseReason, Conn, ConnConfig, Context, Handler, HandlerResult, JobId, JobResult, Loop,
    Reactor, SourceId, TimerId,
};

/// Most connections one run may open.
const MAX_CONNECTIONS: usize = 10_000;
/// Largest message or chunk.
const MAX_SIZE: usize = 1 << 20;
/// Most messages in flight per connection.
const MAX_PIPELINE: usize = 1024;
/// Longest measured window.
const MAX_DURATION: f64 = 600.0;
/// Stop queueing new messages while this many bytes wait to be written.
const WRITE_LIMIT: usize = 64 * 1024;
/// A connect must finish within this time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At the end, connections get this long to receive their last echoes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Length of the pattern table (a prime, so streams of different connections do not
/// line up on buffer-sized boundaries). A slice of up to `PATTERN_LEN` bytes starting
/// anywhere in the first copy is contiguous, because the table is stored twice.
const PATTERN_LEN: usize = 65_537;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// K fixed-size messages in flight per connection.
    Pipeline,
    /// Request/response: one message in flight per connection.
    Rr,
    /// Streaming: chunks of --size bytes, K in flight; MB/s.
    Bulk,
    /// Connect, one exchange, close, repeat; connections/s.
    Churn,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pipeline => "pipeline",
            Mode::Rr => "rr",
            Mode::Bulk => "bulk",
            Mode::Churn => "churn",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Verifying load generator for echo servers (loopback targets only)")]
struct Args {
    /// Server address: an IP literal on loopback (127.0.0.0/8 or ::1) with a port.
    #[arg(long)]
    target: String,
    /// Concurrent connections (at most 10000).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Message size (pipeline, rr, churn) or chunk size (bulk), in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages (or chunks) in flight per connection. Default: 16 for pipeline, 4 for
    /// bulk; rr and churn always use 1.
    #[arg(long)]
    pipeline: Option<usize>,
    /// Length of the measured window in seconds (required, at most 600).
    #[arg(long)]
    duration: f64,
    /// Seconds of load before the measured window starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Pipeline)]
    mode: Mode,
    /// Sample this process's CPU time and peak RSS over the measured window (the
    /// server, for CPU per message).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Speak TLS to the server (every scenario; no session is resumed, so in churn
    /// every connection makes a full handshake). Trusts the system's CAs unless
    /// --ca is given.
    #[arg(long)]
    tls: bool,
    /// Trust only the CA certificates in this PEM file (with --tls).
    #[arg(long, requires = "tls")]
    ca: Option<std::path::PathBuf>,
    /// The server name to ask for and check the certificate against (with --tls).
    #[arg(long, default_value = "localhost", requires = "tls")]
    server_name: String,
    /// Serve this load generator's own loop metrics (Prometheus, GET /metrics) on
    /// this address while it runs.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// Validated settings.
#[derive(Clone, Debug)]
struct Settings {
    /// Where to serve this process's own metrics.
    metrics: Option<SocketAddr>,
    target: SocketAddr,
    connections: usize,
    size: usize,
    depth: usize,
    duration: Duration,
    warmup: Duration,
    mode: Mode,
    server_pid: Option<u32>,
    /// TLS: how to make each connection's client side, and the name to ask for.
    tls: Option<(reactor_tls::TlsConnector, String)>,
}

fn validate(a: Args) -> Result<Settings, String> {
    let target: SocketAddr = a.target.parse().map_err(|_| {
        format!(
            "--target {:?} is not IP:PORT (an IP literal such as 127.0.0.1:7878 or [::1]:7878; \
             host names are not resolved)",
            a.target
        )
    })?;
    if !target.ip().is_loopback() {
        return Err(format!(
            "refusing --target {target}: only loopback addresses (127.0.0.0/8 or ::1) may be loaded"
        ));
    }
    if target.port() == 0 {
        return Err("--target needs a non-zero port".into());
    }
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    if a.size == 0 || a.size > MAX_SIZE {
        return Err(format!("--size must be 1..={MAX_SIZE} bytes"));
    }
    let depth = match (a.mode, a.pipeline) {
        (Mode::Pipeline, k) => k.unwrap_or(16),
        (Mode::Bulk, k) => k.unwrap_or(4),
        (Mode::Rr | Mode::Churn, None | Some(1)) => 1,
        (m, Some(_)) => {
            return Err(format!(
                "--mode {} has one message in flight; use --mode pipeline for --pipeline > 1",
                m.name()
            ));
        }
    };
    if depth == 0 || depth > MAX_PIPELINE {
        return Err(format!("--pipeline must be 1..={MAX_PIPELINE}"));
    }
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= MAX_DURATION) {
        return Err(format!(
            "--duration must be a number of seconds in (0, {MAX_DURATION}]"
        ));
    }
    if !(a.warmup.is_finite() && (0.0..=MAX_DURATION).contains(&a.warmup)) {
        return Err(format!("--warmup must be 0..={MAX_DURATION} seconds"));
    }
    let tls = if a.tls {
        // No session resumption: every connection makes a full handshake (churn
        // measures the certificate's signature, not a ticket).
        let client = match &a.ca {
            Some(ca) => reactor_tls::ClientTls::with_ca_file(ca),
            None => reactor_tls::ClientTls::system_roots(),
        }
        .map(|c| c.resumption(false))
        .and_then(|c| c.build())
        .map_err(|e| format!("--tls: {e}"))?;
        Some((client, a.server_name.clone()))
    } else {
        None
    };
    Ok(Settings {
        tls,
        target,
        connections: a.connections,
        size: a.size,
        depth,
        duration: Duration::from_secs_f64(a.duration),
        warmup: Duration::from_secs_f64(a.warmup),
        mode: a.mode,
        server_pid: a.server_pid,
        metrics: a.metrics,
    })
}

/// The pattern table, stored twice so any slice of up to `PATTERN_LEN` is contiguous.
fn pattern() -> &'static [u8] {
    static TABLE: OnceLock<Box<[u8]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut t = vec![0u8; 2 * PATTERN_LEN];
        for i in 0..PATTERN_LEN {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t[i] = (x >> 32) as u8;
            t[i + PATTERN_LEN] = t[i];
        }
        t.into_boxed_slice()
    })
}

/// The expected bytes of a stream from `pos` on, at most `max` of them (and at most
/// `PATTERN_LEN`).
fn expected(pos: u64, max: usize) -> &'static [u8] {
    let start = (pos % PATTERN_LEN as u64) as usize;
    &pattern()[start..start + max.min(PATTERN_LEN)]
}

/// Checks `data` against the stream at `pos`; on a mismatch, the index of the first
/// wrong byte and the expected byte.
fn verify(pos: u64, data: &[u8]) -> Result<(), (usize, u8)> {
    let mut done = 0;
    while done < data.len() {
        let want = expected(pos + done as u64, data.len() - done);
        let got = &data[done..done + want.len()];
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Err((done + i, want[i]));
        }
        done += want.len();
    }
    Ok(())
}

/// Counters shared by the controller and every connection (one thread: `Cell`s).
struct Shared {
    cfg: Settings,
    measuring: Cell<bool>,
    stopping: Cell<bool>,
    msgs: Cell<u64>,
    bytes: Cell<u64>,
    conns: Cell<u64>,
    errors: Cell<u64>,
    corrupt: Cell<u64>,
    live: Cell<usize>,
    /// Live connections, so the controller can tell them to drain at the end.
    clients: RefCell<Vec<reactor::HandlerId>>,
    next_conn: Cell<u64>,
    hist: RefCell<Histogram>,
    window: Cell<Option<(Instant, Instant)>>,
    server_start: Cell<Option<ProcSample>>,
    server_end: Cell<Option<ProcSample>>,
}

impl Shared {
    fn error(&self) {
        self.errors.set(self.errors.get() + 1);
    }
}

/// One sample of a process's CPU time and peak memory.
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    utime: u64,
    stime: u64,
    hwm_kb: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status` (runs on the worker pool).
fn read_proc(pid: u32) -> Result<ProcSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "malformed /proc stat".to_string())
    };
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after ')'.
    let (utime, stime) = (num(11)?, num(12)?);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        utime,
        stime,
        hwm_kb,
    })
}

/// One load-generating connection.
struct Client {
    conn: Conn,
    shared: Rc<Shared>,
    /// Start of this connection's stream in the pattern table.
    base: u64,
    /// Bytes queued and bytes echoed back and verified.
    sent: u64,
    recvd: u64,
    /// Send time of every message in flight, oldest first.
    stamps: VecDeque<Instant>,
    connect_timer: Option<TimerId>,
    /// Churn: the exchange is done and our write side is shut.
    half_closed: bool,
    /// Closed on purpose (not an error).
    finished: bool,
}

impl Client {
    fn new(shared: Rc<Shared>) -> std::io::Result<Client> {
        let n = shared.next_conn.get();
        shared.next_conn.set(n + 1);
        let mut conn = Conn::connect(shared.cfg.target, 0, ConnConfig::default())?;
        if let Some((tls, name)) = &shared.cfg.tls {
            conn = conn.with_filter(tls.filter(name)?);
        }
        // Live from now, not from `on_start`: a churning client spawns its successor
        // and closes, and when every slot does so in one loop iteration the
        // controller's check would otherwise see no live connection and stop the run.
        shared.live.set(shared.live.get() + 1);
        let depth = shared.cfg.depth;
        Ok(Client {
            conn,
            base: n.wrapping_mul(7919),
            sent: 0,
            recvd: 0,
            stamps: VecDeque::with_capacity(depth),
            connect_timer: None,
            half_closed: false,
            finished: false,
            shared,
        })
    }

    /// Queues messages until `depth` are in flight (or the write queue is full).
    fn top_up(&mut self, cx: &mut Loop<'_>, now: Instant) {
        let size = self.shared.cfg.size;
        while self.stamps.len() < self.shared.cfg.depth && self.conn.write_pending() < WRITE_LIMIT {
            let mut left = size;
            while left > 0 {
                let chunk = expected(self.base + self.sent, left);
                self.conn.queue(cx, chunk);
                self.sent += chunk.len() as u64;
                left -= chunk.len();
            }
            self.stamps.push_back(now);
        }
    }

    fn pump(&mut self, cx: &mut Loop<'_>) -> HandlerResult {
        let st = self.conn.fill(cx)?;
        if self.conn.is_connecting() {
            return Ok(());
        }
        if let Some(t) = self.connect_timer.take() {
            cx.cancel_timer(t);
        }
        let shared = &*self.shared;
        let size = shared.cfg.size as u64;
        let n = self.conn.read_buf().len();
        let now = Instant::now();
        if n > 0 {
            if self.recvd + n as u64 > self.sent {
                shared.corrupt.set(shared.corrupt.get() + 1);
                log::error!(
                    "corrupt echo: server sent {} bytes more than it was sent",
                    self.recvd + n as u64 - self.sent
                );
                self.finished = true;
                cx.close();
                return Ok(());
            }
            if let Err((i, want)) = verify(self.base + self.recvd, self.conn.read_buf()) {
                shared.corrupt.set(shared.corrupt.get() + 1);
                log::error!(
                    "corrupt echo at stream offset {}: expected byte {:#04x}, got {:#04x}",
                    self.recvd + i as u64,
                    want,
                    self.conn.read_buf()[i]
                );
                self.finished = true;
                cx.close();
                return Ok(());
            }
            self.conn.consume(n);
            let before = self.recvd / size;
            self.recvd += n as u64;
            let done = self.recvd / size - before;
            let measuring = shared.measuring.get();
            if measuring {
                shared.bytes.set(shared.bytes.get() + n as u64);
                shared.msgs.set(shared.msgs.get() + done);
            }
            let mut hist = shared.hist.borrow_mut();
            for _ in 0..done {
                let sent_at = self.stamps.pop_front().unwrap_or(now);
                if measuring {
                    hist.record(now.saturating_duration_since(sent_at).as_nanos() as u64);
                }
            }
        }
        if shared.cfg.mode == Mode::Churn {
            if self.recvd == size && !self.half_closed {
                self.half_closed = true;
                self.conn.shutdown_write(cx)?;
            }
            if st.eof {
                if self.recvd != size {
                    return Err(format!(
                        "server closed after echoing {} of {} bytes",
                        self.recvd, size
                    )
                    .into());
                }
                if shared.measuring.get() {
                    shared.conns.set(shared.conns.get() + 1);
                }
                self.finished = true;
                cx.close();
                if !shared.stopping.get() {
                    match Client::new(self.shared.clone()) {
                        Ok(c) => {
                            cx.spawn(c);
                        }
                        Err(e) => {
                            self.shared.error();
                            log::error!("cannot start a connection: {e}");
                        }
                    }
                }
                return Ok(());
            }
        } else {
            if st.eof {
                if self.half_closed && self.recvd == self.sent {
                    // Drained at the end of the run: every echo came back.
                    self.finished = true;
                    cx.close();
                    return Ok(());
                }
                return Err("server closed the connection".into());
            }
            if !self.half_closed {
                self.top_up(cx, now);
            }
        }
        self.conn.flush(cx)?;
        Ok(())
    }
}

impl Handler for Client {
    type Message = ();
    type Job = ();

    fn name(&self) -> &str {
        "loadgen client"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.shared.clients.borrow_mut().push(cx.id());
        self.conn.register(cx)?;
        self.connect_timer = Some(cx.timer_once(CONNECT_TIMEOUT));
        self.top_up(cx, Instant::now());
        Ok(())
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.pump(cx)
    }

    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.conn.flush(cx)?;
        if !self.conn.is_connecting() && self.shared.cfg.mode != Mode::Churn && !self.half_closed {
            self.top_up(cx, Instant::now());
            self.conn.flush(cx)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, _cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if self.connect_timer == Some(t) {
            self.connect_timer = None;
            if self.conn.is_connecting() {
                return Err(format!("connect timed out after {CONNECT_TIMEOUT:?}").into());
            }
        }
        Ok(())
    }

    /// The run is over (the controller's notification): stop sending and half-close, so the server echoes what is in
    /// flight, sees end of file and closes cleanly (dropping a connection with
    /// unread echoes would reset it, which the server logs as an error).
    fn on_notify(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        if !self.half_closed && !self.conn.is_connecting() {
            self.half_closed = true;
            self.conn.shutdown_write(cx)?;
        }
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        self.shared.live.set(self.shared.live.get() - 1);
        let id = cx.id();
        let mut clients = self.shared.clients.borrow_mut();
        if let Some(i) = clients.iter().position(|c| *c == id) {
            clients.swap_remove(i);
        }
        drop(clients);
        if !self.finished && !self.shared.stopping.get() {
            self.shared.error();
        }
        self.conn.release(cx);
    }
}

/// Starts the connections, opens and closes the measured window, stops the loop.
struct Controller {
    shared: Rc<Shared>,
    warm: Option<TimerId>,
    end: Option<TimerId>,
    check: Option<TimerId>,
    start_job: Option<JobId>,
    end_job: Option<JobId>,
    /// Waiting for the end-of-window sample.
    sampling: bool,
    drain: Option<TimerId>,
    drain_over: bool,
}

impl Controller {
    fn begin(&mut self, cx: &mut Context<'_, Self>) {
        let s = &self.shared;
        *s.hist.borrow_mut() = Histogram::default();
        s.msgs.set(0);
        s.bytes.set(0);
        s.conns.set(0);
        s.measuring.set(true);
        let t0 = Instant::now();
        s.window.set(Some((t0, t0)));
        if let Some(pid) = s.cfg.server_pid {
            self.start_job = self.sample(cx, pid);
        }
        self.end = Some(cx.timer_once(s.cfg.duration));
    }

    fn finish(&mut self, cx: &mut Context<'_, Self>) {
        let s = &self.shared;
        s.measuring.set(false);
        s.stopping.set(true);
        if let Some((t0, _)) = s.window.get() {
            s.window.set(Some((t0, Instant::now())));
        }
        if let Some(pid) = s.cfg.server_pid {
            self.end_job = self.sample(cx, pid);
            self.sampling = self.end_job.is_some();
        }
        let ids: Vec<_> = s.clients.borrow().clone();
        for id in ids {
            cx.notify(id);
        }
        self.drain = Some(cx.timer_once(DRAIN_TIMEOUT));
        self.maybe_stop(cx);
    }

    /// Stops once the end sample is in and every connection has drained.
    fn maybe_stop(&mut self, cx: &mut Context<'_, Self>) {
        if self.shared.stopping.get()
            && !self.sampling
            && (self.shared.live.get() == 0 || self.drain_over)
        {
            cx.stop();
        }
    }

    fn sample(&self, cx: &mut Context<'_, Self>, pid: u32) -> Option<JobId> {
        match cx.offload(move || read_proc(pid)) {
            Ok(j) => Some(j),
            Err(e) => {
                log::error!("cannot sample the server's CPU time: {e}");
                None
            }
        }
    }
}

impl Handler for Controller {
    type Message = ();
    type Job = Result<ProcSample, String>;

    fn name(&self) -> &str {
        "loadgen controller"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        for _ in 0..self.shared.cfg.connections {
            match Client::new(self.shared.clone()) {
                Ok(c) => {
                    cx.spawn(c);
                }
                Err(e) => return Err(format!("cannot start a connection: {e}").into()),
            }
        }
        if self.shared.cfg.warmup.is_zero() {
            self.begin(cx);
        } else {
            self.warm = Some(cx.timer_once(self.shared.cfg.warmup));
        }
        self.check = Some(cx.timer_repeat(Duration::from_millis(100)));
        Ok(())
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if Some(t) == self.warm {
            self.begin(cx);
        } else if Some(t) == self.end {
            self.finish(cx);
        } else if Some(t) == self.drain {
            log::debug!(
                "{} connections still draining; stopping",
                self.shared.live.get()
            );
            self.drain_over = true;
            self.maybe_stop(cx);
        } else if Some(t) == self.check {
            if self.shared.live.get() == 0 && !self.shared.stopping.get() {
                log::error!("every connection has closed; stopping early");
                self.shared.stopping.set(true);
                cx.stop();
            } else {
                self.maybe_stop(cx);
            }
        }
        Ok(())
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        job: JobId,
        result: JobResult<Self::Job>,
    ) -> HandlerResult {
        let sample = match result {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                log::error!("{e}");
                None
            }
            Err(e) => {
                log::error!("{e}");
                None
            }
        };
        if Some(job) == self.start_job {
            self.shared.server_start.set(sample);
        } else if Some(job) == self.end_job {
            self.shared.server_end.set(sample);
            self.sampling = false;
            self.maybe_stop(cx);
        }
        Ok(())
    }
}

/// Raises the open-file limit to cover `need` descriptors if the hard limit allows.
fn ensure_fds(need: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
        }
        if lim.rlim_cur >= need {
            return Ok(());
        }
        if lim.rlim_max < need {
            return Err(format!(
                "{need} file descriptors needed but the hard limit is {}; raise it (ulimit -Hn)",
                lim.rlim_max
            ));
        }
        lim.rlim_cur = need;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

fn run(cfg: Settings) -> Result<bool, String> {
    ensure_fds(cfg.connections as u64 * 2 + 64)?;
    let shared = Rc::new(Shared {
        cfg: cfg.clone(),
        measuring: Cell::new(false),
        stopping: Cell::new(false),
        msgs: Cell::new(0),
        bytes: Cell::new(0),
        conns: Cell::new(0),
        errors: Cell::new(0),
        corrupt: Cell::new(0),
        live: Cell::new(0),
        clients: RefCell::new(Vec::new()),
        next_conn: Cell::new(0),
        hist: RefCell::new(Histogram::default()),
        window: Cell::new(None),
        server_start: Cell::new(None),
        server_end: Cell::new(None),
    });
    let mut r = Reactor::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    r.shutdown_on_signals()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    reactor_cli::serve_metrics(&mut r, shared.cfg.metrics)?;
    r.spawn(Controller {
        shared: shared.clone(),
        warm: None,
        end: None,
        check: None,
        start_job: None,
        end_job: None,
        sampling: false,
        drain: None,
        drain_over: false,
    });
    r.run().map_err(|e| format!("event loop failed: {e}"))?;
    let failed_handlers = r.stats().handlers_failed;
    drop(r);
    report(&shared, failed_handlers)
}

/// Prints the table and the RESULT line; true when the run was clean.
fn report(s: &Shared, failed_handlers: u64) -> Result<bool, String> {
    let cfg = &s.cfg;
    let secs = match s.window.get() {
        Some((t0, t1)) if t1 > t0 => (t1 - t0).as_secs_f64(),
        _ => 0.0,
    };
    let msgs = s.msgs.get();
    let bytes = s.bytes.get();
    let conns = s.conns.get();
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let hist = s.hist.borrow();
    let (p50, p99, p999, max) = (
        us(hist.percentile(0.50)),
        us(hist.percentile(0.99)),
        us(hist.percentile(0.999)),
        us(hist.max()),
    );
    let mut errors = s.errors.get() + s.corrupt.get();
    let mut problems = Vec::new();
    if s.corrupt.get() > 0 {
        problems.push(format!("{} corrupted echo stream(s)", s.corrupt.get()));
    }
    if s.errors.get() > 0 {
        problems.push(format!(
            "{} connection(s) failed (see the log above)",
            s.errors.get()
        ));
    }
    if secs == 0.0 {
        problems.push("the measured window never ran".into());
        errors += 1;
    } else if msgs == 0 {
        problems.push("no message was echoed during the measured window".into());
        errors += 1;
    }
    let _ = failed_handlers;

    let mut out = std::io::stdout().lock();
    let w = |out: &mut std::io::StdoutLock<'_>, line: String| {
        let _ = writeln!(out, "{line}");
    };
    w(
        &mut out,
        format!(
            "loadgen {} -> {}: {} connections, {} B messages, {} in flight, {:.1} s measured after {:.1} s warm-up",
            cfg.mode.name(),
            cfg.target,
            cfg.connections,
            cfg.size,
            cfg.depth,
            secs,
            cfg.warmup.as_secs_f64()
        ),
    );
    w(
        &mut out,
        format!("  {:<22} {:>14} {:>16}", "", "total", "per second"),
    );
    w(
        &mut out,
        format!("  {:<22} {:>14} {:>16.0}", "messages", msgs, rate(msgs)),
    );
    w(
        &mut out,
        format!(
            "  {:<22} {:>14} {:>13.2} MB",
            "bytes echoed (verified)",
            bytes,
            rate(bytes) / 1e6
        ),
    );
    if cfg.mode == Mode::Churn {
        w(
            &mut out,
            format!(
                "  {:<22} {:>14} {:>16.0}",
                "connections",
                conns,
                rate(conns)
            ),
        );
    }
    w(
        &mut out,
        format!(
            "  latency (us)           p50 {p50:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}"
        ),
    );
    let mut server = String::new();
    if let (Some(a), Some(b)) = (s.server_start.get(), s.server_end.get()) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ut = b.utime.saturating_sub(a.utime);
        let st = b.stime.saturating_sub(a.stime);
        let per = |ticks: u64| {
            if msgs > 0 {
                ticks as f64 * 1e9 / hz / msgs as f64
            } else {
                0.0
            }
        };
        w(
            &mut out,
            format!(
                "  server CPU             user {:.0} ns/msg  total {:.0} ns/msg  ({} + {} ticks of {:.0} ms; peak RSS {} KiB)",
                per(ut),
                per(ut + st),
                ut,
                st,
                1000.0 / hz,
                b.hwm_kb
            ),
        );
        server = format!(
            " server_utime_ticks={ut} server_stime_ticks={st} clk_tck={hz:.0} server_user_ns_per_msg={:.1} server_total_ns_per_msg={:.1} server_hwm_kb={}",
            per(ut),
            per(ut + st),
            b.hwm_kb
        );
    } else if cfg.server_pid.is_some() {
        problems.push("the server's CPU time could not be sampled".into());
        errors += 1;
    }
    w(&mut out, format!("  errors                 {errors}"));
    let msgs_per_s = if cfg.mode == Mode::Churn {
        rate(conns)
    } else {
        rate(msgs)
    };
    w(
        &mut out,
        format!(
            "RESULT mode={} msgs_per_s={:.0} mb_per_s={:.3} p50_us={:.1} p99_us={:.1} p999_us={:.1} errors={} conns_per_s={:.0} messages={} seconds={:.3}{}",
            cfg.mode.name(),
            msgs_per_s,
            rate(bytes) / 1e6,
            p50,
            p99,
            p999,
            errors,
            rate(conns),
            msgs,
            secs,
            server
        ),
    );
    let _ = out.flush();
    drop(out);
    for p in &problems {
        eprintln!("loadgen: {p}");
    }
    Ok(problems.is_empty())
}

pub fn main() -> ExitCode {
    reactor_cli::init_logger();
    let cfg = match validate(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
