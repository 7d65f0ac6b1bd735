//! Reactor core against real sockets on 127.0.0.1:0.

use reactor_test_support as common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{pseudo_random_bytes, run_loop};
use reactor::echo::{EchoOptions, echo_listener};
use reactor::{
    Addr, CloseReason, Config, Conn, ConnConfig, Context, Handler, HandlerResult, JobId, JobResult,
    ListenOptions, Listener, Loop, Reactor, SourceId, TimerId,
};

#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

/// Drained read and write buffers go back to the loop's pool (a drained
/// `BytesMut` reports capacity 0 but still owns its allocation), so an echo in
/// steady state does not allocate per message.
#[test]
fn steady_echo_does_not_allocate_per_message() {
    let (addr, _server) = run_loop(Config::default(), |r| {
        common::alloc::track_this_thread();
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Larger than a pool buffer, so reads fill buffers completely and writes
    // drain them completely (the case that used to lose them).
    let msg = pseudo_random_bytes(1, 256 * 1024);
    for _ in 0..10 {
        roundtrip(&mut c, &msg);
    }
    let before = common::alloc::tracked();
    for _ in 0..100 {
        roundtrip(&mut c, &msg);
    }
    let allocs = common::alloc::tracked() - before;
    // 100 x 256 KiB is at least 400 reads of a 64 KiB buffer.
    assert!(
        allocs < 40,
        "{allocs} allocations for 100 echoed 256 KiB messages"
    );
}

fn echo_server(config: Config) -> (SocketAddr, common::Running) {
    run_loop(config, |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    })
}

/// 1,000 concurrent connections, each sending messages of random sizes up to 1 MiB
/// and checking every echoed byte. The client is tokio: an independent
/// implementation of the other side.
#[test]
fn echo_byte_exact_1000_connections() {
    let (addr, server) = echo_server(Config::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A lost wake-up shows as a stall: fail instead of waiting for idle timeouts.
    let total: usize = rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(120), clients(addr))
            .await
            .expect("echo stalled: some connection never finished")
    });
    let stats = server.stop();
    assert!(total > 10_000_000, "too little data exercised: {total}");
    assert_eq!(stats.bytes_in, total as u64);
    assert_eq!(stats.bytes_out, total as u64);
    assert_eq!(stats.handlers_failed, 0);
}

async fn clients(addr: SocketAddr) -> usize {
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conns = Vec::new();
        for i in 0..1000u64 {
            let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            conns.push((i, s));
        }
        let mut tasks = Vec::new();
        for (i, s) in conns {
            tasks.push(tokio::spawn(async move {
                // Log-uniform sizes: mostly small, some up to 1 MiB.
                let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut sizes = Vec::new();
                for _ in 0..3 {
                    reactor_test_support::fuzz::xorshift(&mut x);
                    let bits = x % 21; // up to 2^20 = 1 MiB
                    sizes.push(1 + (x >> 8) as usize % (1usize << bits));
                }
                if i % 100 == 0 {
                    sizes.push(1 << 20);
                }
                let payload = pseudo_random_bytes(i + 1, sizes.iter().sum());
                let (mut rd, mut wr) = s.into_split();
                let send = payload.clone();
                let writer = tokio::spawn(async move {
                    let mut off = 0;
                    for sz in sizes {
                        wr.write_all(&send[off..off + sz]).await.unwrap();
                        off += sz;
                    }
                    wr.shutdown().await.unwrap();
                });
                let mut got = Vec::with_capacity(payload.len());
                rd.read_to_end(&mut got).await.unwrap();
                writer.await.unwrap();
                assert_eq!(got.len(), payload.len(), "connection {i}: length");
                assert!(got == payload, "connection {i}: corrupted echo");
                payload.len()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("client task");
        }
        total
    }
}

/// Echoes, but panics on "panic" and fails on "error".
struct Touchy {
    conn: Conn,
}

impl Handler for Touchy {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.conn.register(cx)?)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.conn.fill(cx)?;
        if self.conn.read_buf().starts_with(b"panic") {
            panic!("asked to panic");
        }
        if self.conn.read_buf().starts_with(b"error") {
            return Err("asked to fail".into());
        }
        self.conn.echo_read_buf();
        self.conn.flush(cx)?;
        if self.conn.is_eof() {
            cx.close();
        }
        Ok(())
    }
}

fn touchy_server() -> (SocketAddr, common::Running) {
    run_loop(Config::default(), |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            |s, _| {
                Some(Touchy {
                    conn: Conn::new(s, 0, ConnConfig::default()),
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    })
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut buf = vec![0; msg.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

fn expect_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

#[test]
fn panicking_and_failing_handlers_are_isolated() {
    let (addr, server) = touchy_server();
    let mut good = TcpStream::connect(addr).unwrap();
    roundtrip(&mut good, b"hello");
    let mut p = TcpStream::connect(addr).unwrap();
    let mut e = TcpStream::connect(addr).unwrap();
    p.write_all(b"panic now").unwrap();
    e.write_all(b"error now").unwrap();
    expect_closed(&mut p);
    expect_closed(&mut e);
    // The loop and the other connection carry on.
    roundtrip(&mut good, b"still here");
    let mut fresh = TcpStream::connect(addr).unwrap();
    roundtrip(&mut fresh, b"new one");
    let stats = server.stop();
    assert_eq!(stats.handlers_failed, 2);
}

struct Sleeper;
impl Handler for Sleeper {
    type Message = ();
    type Job = ();

    fn name(&self) -> &str {
        "Sleeper"
    }
    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_once(Duration::from_millis(5));
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        std::thread::sleep(Duration::from_millis(200));
        cx.stop();
        Ok(())
    }
}

#[test]
fn slow_handler_is_reported() {
    // The warning text (naming the handler) is checked on a child process in
    // `slow_handler_warning_names_the_handler`; here, the count.
    let mut r = Reactor::new().unwrap();
    r.spawn(Sleeper);
    r.run().unwrap();
    assert_eq!(r.stats().slow_dispatches, 1);
    assert!(r.stats().dispatch_time.max() >= Duration::from_millis(200));
}

struct Offloader {
    results: Vec<u64>,
    expected: usize,
}
impl Handler for Offloader {
    type Message = ();
    type Job = u64;

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        for i in 0..self.expected as u64 {
            cx.offload(move || {
                std::thread::sleep(Duration::from_millis(10));
                i * 10
            })?;
        }
        // A job whose handler closes before it finishes: its result is dropped.
        cx.spawn(Quitter);
        Ok(())
    }
    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        _j: JobId,
        r: JobResult<u64>,
    ) -> HandlerResult {
        self.results.push(r?);
        if self.results.len() == self.expected {
            self.results.sort();
            assert_eq!(
                self.results,
                (0..self.expected as u64)
                    .map(|i| i * 10)
                    .collect::<Vec<_>>()
            );
            // Give the quitter's job time to come back before stopping.
            cx.timer_once(Duration::from_millis(300));
        }
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        cx.stop();
        Ok(())
    }
}

struct Quitter;
impl Handler for Quitter {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.offload(|| std::thread::sleep(Duration::from_millis(50)))?;
        cx.close();
        Ok(())
    }
    fn on_job(
        &mut self,
        _cx: &mut Context<'_, Self>,
        _j: JobId,
        _r: JobResult<()>,
    ) -> HandlerResult {
        panic!("a closed handler must not receive its job's result");
    }
}

#[test]
fn offloaded_jobs_deliver_and_closed_handlers_results_are_dropped() {
    let mut r = Reactor::new().unwrap();
    r.spawn(Offloader {
        results: Vec::new(),
        expected: 20,
    });
    r.run().unwrap();
    let s = r.stats();
    assert_eq!(s.jobs_offloaded, 21);
    assert_eq!(s.jobs_completed, 20);
    assert_eq!(s.jobs_dropped, 1);
    assert_eq!(s.handlers_failed, 0);
}

struct PoolFiller {
    started: std::sync::mpsc::Receiver<()>,
    started_tx: Option<std::sync::mpsc::Sender<()>>,
    release: Option<crossbeam_channel::Sender<()>>,
    release_rx: crossbeam_channel::Receiver<()>,
    done: usize,
    full_seen: bool,
}
impl Handler for PoolFiller {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let tx = self.started_tx.take().unwrap();
        let rx = self.release_rx.clone();
        cx.offload(move || {
            tx.send(()).unwrap();
            rx.recv().ok();
        })?;
        // The single worker is busy now; the queue has room for one.
        self.started.recv_timeout(Duration::from_secs(5))?;
        let rx = self.release_rx.clone();
        cx.offload(move || {
            rx.recv().ok();
        })?;
        match cx.offload(|| ()) {
            Err(e) => {
                assert!(e.to_string().contains("queue is full"), "{e}");
                self.full_seen = true;
            }
            Ok(_) => panic!("third job accepted by a full queue"),
        }
        drop(self.release.take()); // lets both jobs finish
        Ok(())
    }
    fn on_job(&mut self, cx: &mut Context<'_, Self>, _j: JobId, r: JobResult<()>) -> HandlerResult {
        r?;
        self.done += 1;
        if self.done == 2 {
            assert!(self.full_seen);
            cx.stop();
        }
        Ok(())
    }
}

#[test]
fn full_pool_queue_is_a_clear_error() {
    let mut r = Reactor::with_config(Config::default().workers(1).job_queue(1)).unwrap();
    let (stx, srx) = std::sync::mpsc::channel();
    let (rtx, rrx) = crossbeam_channel::bounded(0);
    r.spawn(PoolFiller {
        started: srx,
        started_tx: Some(stx),
        release: Some(rtx),
        release_rx: rrx,
        done: 0,
        full_seen: false,
    });
    r.run().unwrap();
    assert_eq!(r.stats().jobs_rejected, 1);
    assert_eq!(r.stats().jobs_completed, 2);
}

struct TimerOrder {
    fired: Vec<&'static str>,
    ids: Vec<(TimerId, &'static str)>,
    repeat: Option<TimerId>,
    repeats: u32,
    out: Arc<std::sync::Mutex<Vec<&'static str>>>,
}
impl Handler for TimerOrder {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let ms = Duration::from_millis;
        let c = cx.timer_once(ms(60));
        let a = cx.timer_once(ms(20));
        let cancelled = cx.timer_once(ms(30));
        let b = cx.timer_once(ms(40));
        let pushed = cx.timer_once(ms(10));
        assert!(cx.reset_timer(pushed, ms(50)));
        assert!(cx.cancel_timer(cancelled));
        assert!(!cx.cancel_timer(cancelled));
        self.ids = vec![
            (a, "a"),
            (b, "b"),
            (pushed, "pushed"),
            (c, "c"),
            (cancelled, "x"),
        ];
        self.repeat = Some(cx.timer_repeat(ms(7)));
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        if Some(t) == self.repeat {
            self.repeats += 1;
            if self.repeats == 3 {
                assert!(cx.cancel_timer(t));
            }
            return Ok(());
        }
        let name = self.ids.iter().find(|(id, _)| *id == t).unwrap().1;
        self.fired.push(name);
        if name == "c" {
            *self.out.lock().unwrap() = self.fired.clone();
            self.out
                .lock()
                .unwrap()
                .push(if self.repeats == 3 { "r3" } else { "r?" });
            cx.stop();
        }
        Ok(())
    }
}

#[test]
fn timers_fire_in_order_and_cancel() {
    let out = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut r = Reactor::new().unwrap();
    r.spawn(TimerOrder {
        fired: Vec::new(),
        ids: Vec::new(),
        repeat: None,
        repeats: 0,
        out: out.clone(),
    });
    let t0 = Instant::now();
    r.run().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(60));
    assert_eq!(*out.lock().unwrap(), vec!["a", "b", "pushed", "c", "r3"]);
}

/// A handler whose timer would fire after it closes: the timer dies with it.
struct ClosesEarly {
    fired: Arc<AtomicUsize>,
}
impl Handler for ClosesEarly {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_once(Duration::from_millis(20));
        cx.timer_repeat(Duration::from_millis(5));
        cx.close();
        Ok(())
    }
    fn on_timer(&mut self, _cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        self.fired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
struct StopAfter(Duration);
impl Handler for StopAfter {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_once(self.0);
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        cx.stop();
        Ok(())
    }
}

#[test]
fn timers_are_dropped_with_their_handler() {
    let fired = Arc::new(AtomicUsize::new(0));
    let mut r = Reactor::new().unwrap();
    r.spawn(ClosesEarly {
        fired: fired.clone(),
    });
    r.spawn(StopAfter(Duration::from_millis(60)));
    r.run().unwrap();
    assert_eq!(fired.load(Ordering::SeqCst), 0);
    assert_eq!(r.stats().timers_fired, 1); // StopAfter's only
}

/// Two UDP sockets on one handler; the first event closes it, so the second
/// (same poll batch) is stale. A handler spawned meanwhile may reuse the slot; it
/// must never see the old token's event.
struct TwoSources {
    socks: Vec<mio::net::UdpSocket>,
    seen: Arc<AtomicUsize>,
}
impl Handler for TwoSources {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        for (i, s) in self.socks.iter_mut().enumerate() {
            cx.register(s, i as SourceId, mio::Interest::READABLE)?;
        }
        Ok(())
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, source: SourceId) -> HandlerResult {
        assert!(source < 2, "unknown source {source}");
        self.seen.fetch_add(1, Ordering::SeqCst);
        cx.close();
        // Reuses this slot once we are gone.
        cx.spawn(Probe);
        Ok(())
    }
}
struct Probe;
impl Handler for Probe {
    type Message = ();
    type Job = ();

    fn on_event(&mut self, _cx: &mut Context<'_, Self>, ev: reactor::Event) -> HandlerResult {
        panic!(
            "stale event for source {} reached a new handler",
            ev.source()
        );
    }
}

#[test]
fn stale_events_never_reach_a_new_handler() {
    let mut total_stale = 0;
    for _ in 0..20 {
        let seen = Arc::new(AtomicUsize::new(0));
        let a = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"x", a.local_addr().unwrap()).unwrap();
        sender.send_to(b"y", b.local_addr().unwrap()).unwrap();
        let mut r = Reactor::new().unwrap();
        r.spawn(TwoSources {
            socks: vec![a, b],
            seen: seen.clone(),
        });
        r.spawn(StopAfter(Duration::from_millis(30)));
        r.run().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(r.stats().handlers_failed, 0, "a probe got a stale event");
        total_stale += r.stats().stale_events;
    }
    // Both datagrams were queued before the first poll, so both events come in one
    // batch and the second is stale every time.
    assert_eq!(total_stale, 20);
}

#[test]
fn handle_stops_and_shuts_down_from_another_thread() {
    let (addr, server) = echo_server(Config::default());
    let mut c = TcpStream::connect(addr).unwrap();
    roundtrip(&mut c, b"ping");
    assert!(server.handle.shutdown());
    // Draining: the open connection is still served, new ones are refused.
    roundtrip(&mut c, b"still served while draining");
    std::thread::sleep(Duration::from_millis(50));
    assert!(TcpStream::connect(addr).is_err(), "listener still open");
    drop(c);
    let stats = server.join(); // ends by itself once the connection closed
    assert_eq!(stats.handlers_open, 0);
}

#[test]
fn connection_cap_pauses_and_resumes_accepting() {
    let (addr, server) = run_loop(Config::default(), |r| {
        let opts = EchoOptions::default().listen(ListenOptions::default().max_connections(3));
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut first: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for c in first.iter_mut() {
        roundtrip(c, b"x");
    }
    // The fourth connects (kernel backlog) but is not served until one closes.
    let mut fourth = TcpStream::connect(addr).unwrap();
    fourth.write_all(b"waiting").unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 7];
    assert!(
        fourth.read(&mut b).is_err(),
        "served beyond the connection cap"
    );
    drop(first.pop());
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    fourth.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"waiting");
    drop(server);
}

#[test]
fn idle_connections_time_out() {
    let (addr, _server) = run_loop(Config::default(), |r| {
        let opts = EchoOptions::default().idle_timeout(Duration::from_millis(200));
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = TcpStream::connect(addr).unwrap();
    // Activity keeps it open past the timeout...
    for _ in 0..5 {
        roundtrip(&mut c, b"tick");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...silence closes it.
    expect_closed(&mut c);
}

#[test]
fn ipv6_loopback_works() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("skipping: no IPv6 loopback on this machine");
        return;
    };
    drop(probe);
    let (addr, _server) = run_loop(Config::default(), |r| {
        let l = echo_listener("[::1]:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    assert!(addr.is_ipv6() && addr.port() != 0);
    let mut c = TcpStream::connect(addr).unwrap();
    roundtrip(&mut c, b"v6");
}

type Outcome = Arc<std::sync::Mutex<Option<Result<Vec<u8>, String>>>>;

/// A client handler on the reactor: connects out, sends, reads the echo back.
struct Client {
    conn: Conn,
    msg: Vec<u8>,
    result: Outcome,
}
impl Client {
    fn finish(&mut self, cx: &mut Loop<'_>, r: Result<Vec<u8>, String>) {
        *self.result.lock().unwrap() = Some(r);
        cx.stop();
    }
}
impl Handler for Client {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.conn.register(cx)?;
        assert!(self.conn.is_connecting());
        let msg = std::mem::take(&mut self.msg);
        self.conn.queue(cx, &msg); // queued before the connect completes
        self.msg = msg;
        Ok(())
    }
    fn on_event(&mut self, cx: &mut Context<'_, Self>, _ev: reactor::Event) -> HandlerResult {
        if let Err(e) = self.conn.poll_connect() {
            self.finish(cx, Err(e.kind().to_string()));
            return Ok(());
        }
        self.conn.flush(cx)?;
        self.conn.fill(cx)?;
        if self.conn.read_buf().len() >= self.msg.len() {
            let got = self.conn.read_buf().to_vec();
            self.finish(cx, Ok(got));
        }
        Ok(())
    }
}

fn connect_and_echo(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
    let result = Arc::new(std::sync::Mutex::new(None));
    let mut r = Reactor::new().unwrap();
    r.spawn(Client {
        conn: Conn::connect(addr, 0, ConnConfig::default()).unwrap(),
        msg: msg.to_vec(),
        result: result.clone(),
    });
    r.spawn(StopAfter(Duration::from_secs(10)));
    r.run().unwrap();
    result.lock().unwrap().take().expect("client timed out")
}

#[test]
fn outgoing_connect_sends_queued_bytes_and_reports_refusal() {
    let (addr, _server) = echo_server(Config::default());
    assert_eq!(
        connect_and_echo(addr, b"hello out there").unwrap(),
        b"hello out there"
    );
    // A port with nothing listening: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = connect_and_echo(closed, b"x").unwrap_err();
    assert!(err.contains("refused"), "{err}");
}

/// Starts the shutdown from its own callback and must still be told.
struct ShutsDown {
    told: Arc<AtomicUsize>,
}
impl Handler for ShutsDown {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.shutdown();
        assert!(cx.is_shutting_down());
        Ok(())
    }
    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.told.fetch_add(1, Ordering::SeqCst);
        cx.close();
        Ok(())
    }
}

#[test]
fn shutdown_from_a_callback_reaches_every_handler_including_the_caller() {
    let told = Arc::new(AtomicUsize::new(0));
    let mut r = Reactor::new().unwrap();
    r.spawn(ShutsDown { told: told.clone() });
    r.spawn(reactor::StatsLogger::new(Duration::from_secs(60), ""));
    let t0 = Instant::now();
    r.run().unwrap();
    assert_eq!(told.load(Ordering::SeqCst), 1);
    assert_eq!(r.handlers(), 0);
    // Both closed on shutdown, so the drain ends at once, not at its deadline.
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// A client that sends without reading: the server's write queue reaches its high
/// watermark, the server stops reading, and the client's sends stall. Nothing is
/// lost: once the client reads, every byte comes back.
#[test]
fn backpressure_bounds_buffering_and_loses_nothing() {
    // The library's default watermarks (1 MiB / 256 KiB), not the echo server's
    // (which pauses as soon as anything is queued): the queue itself must reach its
    // high watermark, pause reading, and resume at the low one.
    let (addr, server) = run_loop(Config::default(), |r| {
        let opts = EchoOptions::default().conn(ConnConfig::default());
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nonblocking(true).unwrap();
    let chunk = pseudo_random_bytes(7, 64 * 1024);
    let mut sent = 0usize;
    let mut stalled_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Send until the pipe has been full for 500 ms.
    while stalled_since.elapsed() < Duration::from_millis(500) {
        assert!(
            Instant::now() < deadline,
            "sends never stalled: no backpressure"
        );
        match c.write(&chunk[sent % chunk.len()..]) {
            Ok(n) => {
                sent += n;
                stalled_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            sent < 64 << 20,
            "64 MiB accepted without reading: unbounded"
        );
    }
    // Kernel buffers on both sides plus the 1 MiB high watermark hold it all.
    assert!(sent > 1 << 20, "only {sent} bytes before stalling");
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = vec![0u8; sent];
    c.read_exact(&mut got).unwrap();
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, chunk[i % chunk.len()], "byte {i} differs");
    }
    let stats = server.stop();
    assert_eq!(stats.bytes_in, sent as u64);
}

/// Echoes frames of `codec`, re-encoded with `encode`.
struct FrameEcho<D> {
    conn: Conn,
    codec: D,
    encode: fn(&D, &[u8], &mut bytes::BytesMut),
}
impl<D: reactor::framing::Decoder + 'static> Handler for FrameEcho<D> {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.conn.register(cx)?)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        let st = self.conn.fill(cx)?;
        let mut out = bytes::BytesMut::new();
        while let Some(f) = self.conn.next_frame(&self.codec)? {
            (self.encode)(&self.codec, f.payload(self.conn.read_buf()), &mut out);
            self.conn.consume(f.consumed);
        }
        self.conn.queue(cx, &out);
        self.conn.flush(cx)?;
        if st.eof {
            cx.close();
        }
        Ok(())
    }
    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.conn.flush(cx)?;
        Ok(())
    }
}

/// A listener whose connections echo frames of `codec` (cloned per connection).
fn frame_echo_server<D: reactor::framing::Decoder + Clone + Send + 'static>(
    codec: D,
    encode: fn(&D, &[u8], &mut bytes::BytesMut),
    max_read_buffer: usize,
) -> (SocketAddr, common::Running) {
    run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |s, _| {
                let cfg = ConnConfig::default().max_read_buffer(max_read_buffer);
                Some(FrameEcho {
                    conn: Conn::new(s, 0, cfg),
                    codec: codec.clone(),
                    encode,
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    })
}

/// Length-prefixed frames: frames larger than the pool's buffers make the read
/// buffer grow, frames above the maximum close the connection.
#[test]
fn framed_connection_grows_for_big_frames_and_refuses_oversized_ones() {
    const MAX: usize = 512 * 1024;
    let (addr, server) = frame_echo_server(
        reactor::framing::LengthPrefixed::new(4, MAX),
        |d, p, out| d.encode(p, out).unwrap(),
        MAX + 4,
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, size) in [1usize, 70_000, 300_000, MAX, 0, 5].into_iter().enumerate() {
        let payload = pseudo_random_bytes(i as u64 + 100, size);
        let mut msg = (size as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&payload);
        c.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert!(back == msg, "frame of {size} bytes came back different");
    }
    // A header announcing more than the maximum: the server closes at once. That
    // is the peer's fault, counted as a protocol error, not a handler failure.
    c.write_all(&((MAX as u32) + 1).to_be_bytes()).unwrap();
    expect_closed(&mut c);
    let stats = server.stop();
    assert_eq!(stats.closes(CloseReason::ProtocolError), 1);
    assert_eq!(stats.handlers_failed, 0);
}

/// Delimited frames arriving in pieces, a delimiter split across reads included,
/// and a long line in many small reads: `next_frame` resumes its search where the
/// last one stopped, and finds every frame whole.
#[test]
fn delimited_frames_arriving_in_pieces_are_found_whole() {
    let (addr, server) = frame_echo_server(
        reactor::framing::Delimited::new(b"\r\n", 256 * 1024),
        |d, p, out| d.encode(p, out),
        512 * 1024,
    );
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let pause = || std::thread::sleep(Duration::from_millis(20));
    for piece in [
        &b"hel"[..],
        b"lo\r",
        b"\nwor",
        b"ld\r",
        b"\n",
        b"a\r\nb\r\n",
    ] {
        c.write_all(piece).unwrap();
        pause();
    }
    let want = b"hello\r\nworld\r\na\r\nb\r\n";
    let mut back = vec![0u8; want.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, want);
    // 200 KiB without a delimiter, in 4 KiB writes, then its end.
    let line: Vec<u8> = pseudo_random_bytes(77, 200 * 1024)
        .into_iter()
        .map(|b| b'a' + b % 26)
        .collect();
    for chunk in line.chunks(4096) {
        c.write_all(chunk).unwrap();
    }
    c.write_all(b"\r\n").unwrap();
    let mut back = vec![0u8; line.len() + 2];
    c.read_exact(&mut back).unwrap();
    assert!(back[..line.len()] == line[..] && &back[line.len()..] == b"\r\n");
    drop(c);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// Gives its connection (with whatever it has buffered) to another handler.
struct Giver {
    conn: Option<Conn>,
    to: Addr<Conn>,
}

impl Handler for Giver {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.conn.as_mut().unwrap().register(cx)?)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if conn.fill(cx)?.bytes > 0 {
            let mut conn = self.conn.take().unwrap();
            cx.deregister(conn.stream_mut())?;
            cx.send(self.to, conn);
            cx.close();
        }
        Ok(())
    }
}

/// Takes connections from `Giver`s under source 3 and echoes on them.
struct Taker {
    conn: Option<Conn>,
}

impl Handler for Taker {
    type Message = Conn;
    type Job = ();

    fn on_message(&mut self, cx: &mut Context<'_, Self>, mut conn: Conn) -> HandlerResult {
        conn.set_source(3);
        conn.register(cx)?;
        self.conn = Some(conn);
        self.on_readable(cx, 3)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, s: SourceId) -> HandlerResult {
        assert_eq!(s, 3, "events come under the new source");
        if let Some(c) = self.conn.as_mut() {
            c.fill(cx)?;
            c.echo_read_buf();
            c.flush(cx)?;
        }
        Ok(())
    }
}

#[test]
fn conn_moves_between_handlers_with_its_buffered_bytes() {
    let (addr, _server) = run_loop(Config::default(), |r| {
        let to = r.spawn(Taker { conn: None });
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |stream, _| {
                Some(Giver {
                    conn: Some(Conn::new(stream, 0, ConnConfig::default())),
                    to,
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    roundtrip(&mut c, b"read by the giver, echoed by the taker");
    roundtrip(&mut c, b"read by the taker under its new source");
}

/// A repeating timer with a zero period fires once per loop iteration; it must not
/// hang the loop (it once spun forever inside the timer expiry).
#[test]
fn zero_period_repeating_timer_does_not_hang_the_loop() {
    struct Spin {
        fired: Arc<AtomicUsize>,
    }
    impl Handler for Spin {
        type Message = ();
        type Job = ();

        fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
            cx.timer_repeat(Duration::ZERO);
            Ok(())
        }
        fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
            if self.fired.fetch_add(1, Ordering::SeqCst) + 1 == 1000 {
                cx.stop();
            }
            Ok(())
        }
    }
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    let (_, running) = run_loop(Config::default(), move |r| {
        r.spawn(Spin { fired: f });
    });
    let end = Instant::now() + Duration::from_secs(10);
    while fired.load(Ordering::SeqCst) < 1000 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    if fired.load(Ordering::SeqCst) < 1000 {
        // The loop thread is stuck: joining it would hang the test too.
        std::mem::forget(running);
        panic!("zero-period timer stalled the loop");
    }
    let stats = running.join();
    // Once per iteration, not a burst inside one expiry pass.
    assert!(stats.iterations >= 1000, "{stats:?}");
}

/// Dispatch timing reuses the previous clock reading as the next dispatch's start;
/// time spent between dispatches that is not a callback (here a slow `on_close`)
/// must not be blamed on the next handler as a slow dispatch.
#[test]
fn slow_close_is_not_blamed_on_the_next_handler() {
    struct SlowClose;
    impl Handler for SlowClose {
        type Message = ();
        type Job = ();

        fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
            cx.close();
            Ok(())
        }
        fn on_close(&mut self, _cx: &mut Context<'_, Self>, _reason: CloseReason) {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    struct Quick;
    impl Handler for Quick {
        type Message = ();
        type Job = ();

        fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
            cx.stop();
            Ok(())
        }
    }
    let (_, running) = run_loop(Config::default(), |r| {
        r.spawn(SlowClose);
        r.spawn(Quick);
    });
    let stats = running.join();
    assert_eq!(stats.dispatches, 2, "{stats:?}");
    assert_eq!(stats.slow_dispatches, 0, "{stats:?}");
}

/// A write budget far smaller than the reply: every flush hands the socket only
/// `write_budget` bytes although it has room for more, so no writable edge will
/// come for the rest; the connection must re-queue itself. The client sends
/// everything and half-closes first, so no later readable event can rescue a
/// connection that forgot to.
#[test]
fn small_write_budget_requeues_until_everything_is_written() {
    let (addr, server) = run_loop(Config::default(), |r| {
        let opts = EchoOptions::default().conn(ConnConfig::default().write_budget(1000));
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let payload = pseudo_random_bytes(11, 200 * 1024);
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&payload).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("echo stalled with bytes queued: a budget-limited flush was not re-queued");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "echoed bytes differ");
    let stats = server.stop();
    assert_eq!(stats.bytes_out, payload.len() as u64);
    // 200 KiB in 1000-byte sends: the budget really limited each flush.
    assert!(stats.dispatches > 200, "{} dispatches", stats.dispatches);
}

/// Reads everything and consumes it in two pieces, counting the `fill` calls that
/// brought bytes.
struct PiecewiseConsumer {
    conn: Conn,
    fills: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Handler for PiecewiseConsumer {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.conn.register(cx)?)
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        let st = self.conn.fill(cx)?;
        if st.bytes > 0 {
            self.fills.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(st.bytes, Ordering::Relaxed);
        }
        let n = self.conn.read_buf().len();
        if n > 1 {
            self.conn.consume(n - 1);
        }
        self.conn.consume(1);
        if st.eof {
            cx.close();
        }
        Ok(())
    }
}

/// A read buffer consumed to empty in pieces must be read into whole again: a
/// regression once left only the room after the consumed offset, so every later
/// `fill` read one byte (983,041 fills for 1 MiB instead of about 17).
#[test]
fn a_buffer_consumed_in_pieces_is_read_into_whole_again() {
    let fills = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let (f, b) = (fills.clone(), bytes.clone());
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |s, _| {
                Some(PiecewiseConsumer {
                    conn: Conn::new(s, 0, ConnConfig::default()),
                    fills: f.clone(),
                    bytes: b.clone(),
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let payload = pseudo_random_bytes(13, 1 << 20);
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&payload).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    expect_closed(&mut c);
    server.stop();
    assert_eq!(bytes.load(Ordering::Relaxed), payload.len());
    let fills = fills.load(Ordering::Relaxed);
    // 16 full 64 KiB buffers at least; a few more where the client's writes and
    // the reads interleave.
    assert!(
        fills < 1_000,
        "{fills} fills for 1 MiB: reads into a shrunken buffer"
    );
}

/// Queues 4 MiB at once and flushes on every writable event, recording the queue
/// length after each flush that reported "down to the low watermark".
struct Blaster {
    conn: Conn,
    payload: Arc<Vec<u8>>,
    reports: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Blaster {
    fn flush(&mut self, cx: &mut Loop<'_>) -> HandlerResult {
        if self.conn.flush(cx)? {
            self.reports.lock().unwrap().push(self.conn.write_pending());
        }
        if self.conn.is_done() {
            cx.close();
        }
        Ok(())
    }
}

impl Handler for Blaster {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.conn.register(cx)?;
        self.conn.queue(cx, &self.payload);
        self.flush(cx)?;
        Ok(self.conn.shutdown_write(cx)?)
    }

    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.flush(cx)
    }
}

/// `flush` reports the fall to the low watermark exactly once per congestion, on
/// the call that gets there: a regression made each call compare its own start
/// with its end, and since one call sends at most `write_budget` (256 KiB) a queue
/// that began at or above 1 MiB never ended a call at 256 KiB, so a proxy waiting
/// for the report would have stayed paused for good.
#[test]
fn flush_reports_the_low_watermark_once_after_congestion() {
    let payload = Arc::new(pseudo_random_bytes(23, 4 * 1024 * 1024));
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (p, rep) = (payload.clone(), reports.clone());
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |s, _| {
                Some(Blaster {
                    conn: Conn::new(s, 0, ConnConfig::default()),
                    payload: p.clone(),
                    reports: rep.clone(),
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A slow reader, so the queue drains over many flushes.
    let mut got = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(got == *payload, "received bytes differ");
    server.stop();
    let reports = reports.lock().unwrap().clone();
    let low = ConnConfig::default().low_watermark;
    assert_eq!(
        reports.len(),
        1,
        "reports (queue length after each): {reports:?}"
    );
    assert!(reports[0] <= low, "reported at {} queued bytes", reports[0]);
}

/// Reads with a small budget and records the most it read in one loop iteration.
struct BudgetProbe {
    conn: Conn,
    iteration: u64,
    this_pass: usize,
    most: Arc<AtomicUsize>,
    total: usize,
}

impl Handler for BudgetProbe {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.conn.register(cx)?)
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _: SourceId) -> HandlerResult {
        let st = self.conn.fill(cx)?;
        let n = self.conn.read_buf().len();
        self.conn.consume(n);
        let it = cx.stats().iterations;
        if it != self.iteration {
            self.iteration = it;
            self.this_pass = 0;
        }
        self.this_pass += st.bytes;
        self.total += st.bytes;
        self.most.fetch_max(self.this_pass, Ordering::SeqCst);
        if st.eof {
            cx.close();
        }
        Ok(())
    }
}

/// A peer that keeps sending makes a new edge with every segment; each used to add
/// one more re-queued read, so the handler read that many budgets per loop
/// iteration (a 10 MB flood reached 262 KB per pass with a 16 KiB budget) and
/// starved the others. Re-queues are coalesced: at most a poller event and one
/// re-queue per source per iteration.
#[test]
fn a_busy_peer_is_read_at_most_two_budgets_per_loop_iteration() {
    const BUDGET: usize = 4 * 1024;
    let most = Arc::new(AtomicUsize::new(0));
    let m = most.clone();
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |stream, _| {
                Some(BudgetProbe {
                    conn: Conn::new(stream, 0, ConnConfig::default().read_budget(BUDGET)),
                    iteration: u64::MAX,
                    this_pass: 0,
                    most: m.clone(),
                    total: 0,
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    // Many small segments, each a new edge.
    for _ in 0..20_000 {
        c.write_all(&[9u8; 500]).unwrap();
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    server.stop();
    let most = most.load(Ordering::SeqCst);
    assert!(most > 0);
    assert!(
        most <= 2 * BUDGET,
        "read {most} bytes in one loop iteration with a {BUDGET}-byte budget"
    );
}

/// `Conn::unacked` is the kernel's count of bytes the peer has not acknowledged: it
/// stays above zero while the peer's receive window is full, and falls to zero,
/// end of file included, once the peer has taken everything.
#[test]
fn unacked_counts_what_the_peer_has_not_acknowledged() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer =
        common::small_buffer_connect(listener.local_addr().unwrap(), Duration::from_secs(10));
    let (ours, _) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut conn = reactor::Conn::new(
        reactor::TcpStream::from_std(ours),
        0,
        reactor::ConnConfig::default(),
    );
    assert_eq!(conn.unacked().unwrap(), 0);
    // More than the peer's buffers hold, written straight to the socket.
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0;
    for _ in 0..200 {
        match conn.stream_mut().write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        conn.unacked().unwrap() > 0,
        "{written} written, all acknowledged?"
    );
    // The peer reads everything and our end of file: nothing is left unacknowledged.
    conn.stream_mut()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let mut peer = peer;
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), written);
    let t0 = Instant::now();
    while conn.unacked().unwrap() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "never acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `counter_fn` and `gauge_fn`: a component's own numbers, read (on the loop
/// thread, from state that is not `Send`) when a snapshot is taken, and only then.
#[test]
fn sampled_metrics_are_read_at_each_snapshot() {
    use std::cell::Cell;
    use std::rc::Rc;
    let mut r = reactor::Reactor::new().unwrap();
    let table = Rc::new(Cell::new(3u64));
    let reads = Rc::new(Cell::new(0u32));
    let (t, n) = (table.clone(), reads.clone());
    r.gauge_fn("table_size", move || {
        n.set(n.get() + 1);
        t.get() as i64
    });
    let t = table.clone();
    r.counter_fn("table_inserts", move || t.get() * 10);
    assert_eq!(
        r.stats().gauge("table_size"),
        Some(3),
        "read once when registered"
    );
    table.set(5);
    assert_eq!(
        r.stats().gauge("table_size"),
        Some(3),
        "not read between snapshots"
    );
    let before = reads.get();
    let s = r.snapshot();
    assert_eq!(reads.get(), before + 1);
    assert_eq!(s.gauge("table_size"), Some(5));
    assert_eq!(s.counter("table_inserts"), Some(50));
    assert!(s.to_string().contains(" table_inserts=50"), "{s}");
}
