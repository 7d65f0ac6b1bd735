//! The framed layer (`reactor::framed`) and the ending rules of `Conn`, against real
//! sockets on 127.0.0.1: conversations end without losing what was sent, every ending
//! has its reason, peer resets are not failures, fan-out is bounded, and the two
//! `Conn` bugs of the asynchat issue stay fixed.

use reactor_test_support as common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Running, pseudo_random_bytes, reset, run_loop, small_buffer_connect};
use reactor::framed::{self, Group, Outbox};
use reactor::framing::Lines;
use reactor::{
    Addr, CloseReason, Config, Conn, ConnConfig, Context, FramedConfig, Handler, HandlerResult,
    JobResult, Link, ListenOptions, Listener, Loop, Protocol, ProtocolError, Reactor, SourceId,
    Stats, TimerId,
};

type Closes = Arc<Mutex<Vec<(SocketAddr, CloseReason)>>>;

/// A line protocol driven by its client: `big N` queues N bytes and ends the
/// conversation, `abort N` queues N bytes and aborts, `quit` ends it, `err`, `perr`
/// and `panic` fail in three ways, anything else is echoed. Records every close.
struct Script {
    peer: SocketAddr,
    closes: Closes,
}

impl Protocol for Script {
    type Message = ();
    type Job = ();

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split(' ');
        match (
            words.next(),
            words.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("big"), Some(n)) => {
                link.send(&pseudo_random_bytes(7, n));
                link.close_when_done();
            }
            (Some("abort"), Some(n)) => {
                link.send(&pseudo_random_bytes(7, n));
                link.abort();
            }
            (Some("quit"), _) => link.close(),
            (Some("err"), _) => return Err("boom".into()),
            (Some("perr"), _) => return Err(ProtocolError::new("bad command").into()),
            (Some("panic"), _) => panic!("scripted panic"),
            _ => {
                link.send(line);
                link.send(b"\n");
            }
        }
        Ok(())
    }

    fn on_close(&mut self, _cx: &mut Loop<'_>, reason: CloseReason) {
        self.closes.lock().unwrap().push((self.peer, reason));
    }
}

fn script_server(cfg: FramedConfig) -> (SocketAddr, Running, Closes) {
    let closes: Closes = Arc::default();
    let c = closes.clone();
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = framed::listen(
            "127.0.0.1:0".parse().unwrap(),
            Lines::new(64),
            cfg,
            move |peer| {
                Some(Script {
                    peer,
                    closes: c.clone(),
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    (addr, server, closes)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Shuts the loop down gracefully and waits for it: every conversation still
/// open ends (as `Shutdown`), every one that was ending finishes, so the counts
/// are final when this returns.
fn drain(server: Running) -> Stats {
    server.handle.shutdown();
    server.join()
}

/// Reads to end of file; a reset at the end counts as the end (returned as false).
fn read_all(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, false),
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
    }
}

#[test]
fn close_when_done_delivers_everything_to_a_slow_reader_then_end_of_file() {
    let (addr, server, closes) = script_server(FramedConfig::default());
    let mut c = small_buffer_connect(addr, Duration::from_secs(10));
    const N: usize = 8 << 20;
    c.write_all(format!("big {N}\n").as_bytes()).unwrap();
    // More input after the goodbye: read and dropped, never a reason to reset.
    c.write_all(&[b'x'; 50_000]).unwrap();
    // A slow start: the server's queue fills and its socket blocks meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let (got, clean) = read_all(&mut c);
    assert!(clean, "the connection was reset");
    assert_eq!(got.len(), N);
    assert!(got == pseudo_random_bytes(7, N), "bytes differ");
    drop(c);
    let stats = drain(server);
    assert_eq!(stats.truncated_closes, 0);
    assert_eq!(stats.closes(CloseReason::Local), 1);
    assert_eq!(stats.handlers_failed, 0);
    assert_eq!(closes.lock().unwrap()[0].1, CloseReason::Local);
}

#[test]
fn the_linger_timeout_bounds_a_peer_that_never_reads_and_counts_the_truncation() {
    let cfg = FramedConfig::default().linger(Duration::from_millis(200));
    let (addr, server, closes) = script_server(cfg);
    let mut c = small_buffer_connect(addr, Duration::from_secs(10));
    c.write_all(b"big 8000000\n").unwrap();
    let t0 = Instant::now();
    while closes.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    let stats = drain(server);
    assert_eq!(stats.truncated_closes, 1, "{stats}");
    assert_eq!(stats.closes(CloseReason::Local), 1);
}

#[test]
fn abort_drops_queued_output_on_purpose() {
    let (addr, server, _) = script_server(FramedConfig::default());
    let mut c = small_buffer_connect(addr, Duration::from_secs(10));
    c.write_all(b"abort 8000000\n").unwrap();
    let (got, _) = read_all(&mut c);
    assert!(got.len() < 8_000_000, "an abort delivered everything");
    let stats = drain(server);
    assert_eq!(stats.truncated_closes, 0, "an abort is not a truncation");
    assert_eq!(stats.closes(CloseReason::Local), 1);
}

#[test]
fn a_peer_reset_is_an_ordinary_ending_not_a_failure() {
    let (addr, server, closes) = script_server(FramedConfig::default());
    let mut c = small_buffer_connect(addr, Duration::from_secs(10));
    // The server is left with output queued that can never be delivered.
    c.write_all(b"big 8000000\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    reset(c);
    let t0 = Instant::now();
    while closes.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = drain(server);
    assert_eq!(stats.closes(CloseReason::PeerReset), 1, "{stats}");
    assert_eq!(stats.handlers_failed, 0);
    assert_eq!(
        stats.truncated_closes, 0,
        "undeliverable bytes are no truncation"
    );
}

#[test]
fn every_ending_has_its_reason_in_on_close_and_in_the_stats() {
    let cfg = FramedConfig::default().idle_timeout(Some(Duration::from_millis(300)));
    let (addr, server, closes) = script_server(cfg);
    let mut expect = Vec::new();
    let mut ended = |line: &[u8], reason: CloseReason, half_close: bool| {
        let mut c = connect(addr);
        c.write_all(line).unwrap();
        if half_close {
            c.shutdown(Shutdown::Write).unwrap();
        }
        let (got, _) = read_all(&mut c);
        expect.push((c.local_addr().unwrap(), reason, got));
    };
    ended(b"hello\n", CloseReason::PeerClosed, true);
    ended(b"", CloseReason::IdleTimeout, false);
    ended(&[b'a'; 100], CloseReason::ProtocolError, false);
    ended(b"perr\n", CloseReason::ProtocolError, false);
    ended(b"err\n", CloseReason::HandlerError, false);
    ended(b"panic\n", CloseReason::Panic, false);
    ended(b"one\nquit\ntwo\n", CloseReason::Local, false);
    // Still open when the loop shuts down.
    let mut open = connect(addr);
    open.write_all(b"ping\n").unwrap();
    let mut pong = [0u8; 5];
    open.read_exact(&mut pong).unwrap();
    let open_addr = open.local_addr().unwrap();
    let t0 = Instant::now();
    while closes.lock().unwrap().len() < expect.len() {
        assert!(t0.elapsed() < Duration::from_secs(10), "not all closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = drain(server);
    let (rest, clean) = read_all(&mut open);
    assert!(
        rest.is_empty() && clean,
        "shutdown ends the conversation cleanly"
    );
    let seen = closes.lock().unwrap().clone();
    for (addr, reason, got) in &expect {
        assert!(
            seen.contains(&(*addr, *reason)),
            "{reason} missing for {addr}: {seen:?}"
        );
        match reason {
            CloseReason::PeerClosed => assert_eq!(got, b"hello\n", "replies before the end"),
            CloseReason::Local => assert_eq!(got, b"one\n", "frames after quit are dropped"),
            _ => {}
        }
    }
    assert!(
        seen.contains(&(open_addr, CloseReason::Shutdown)),
        "{seen:?}"
    );
    for reason in CloseReason::ALL {
        let n = seen.iter().filter(|(_, r)| *r == reason).count() as u64;
        // The listener closes on shutdown too.
        let extra = u64::from(reason == CloseReason::Shutdown);
        assert_eq!(stats.closes(reason), n + extra, "{reason}: {stats}");
    }
    assert_eq!(
        stats.handlers_failed, 2,
        "only the error and the panic are failures"
    );
    assert_eq!(stats.truncated_closes, 0);
}

/// Queues `queue` bytes once started, then reads and drops input as a closing
/// connection does; reports what the discard saw.
struct Discarder {
    conn: Conn,
    queue: usize,
    saw: Arc<Mutex<Option<(usize, bool)>>>,
    discarded: usize,
}

impl Handler for Discarder {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.conn.register(cx)?;
        let data = vec![7u8; self.queue];
        self.conn.queue(cx, &data);
        self.conn.flush(cx)?;
        // Our own queue is far above its high watermark: reading is paused.
        assert!(self.conn.is_paused() && self.conn.is_congested());
        Ok(())
    }

    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _: SourceId) -> HandlerResult {
        let st = self.conn.discard_input(cx)?;
        self.discarded += st.bytes;
        if st.eof {
            *self.saw.lock().unwrap() = Some((self.discarded, true));
            self.conn.clear_write_queue(cx);
            cx.close();
        }
        Ok(())
    }
}

/// The asynchat issue's reproduction: watermarks 16 KiB / 4 KiB, 32 MiB queued to a
/// client with an 8 KiB receive buffer that never reads; it sends 1000 bytes and
/// `SHUT_WR`. `discard_input` used to return nothing while the own queue paused
/// reading, so end of file never came and the close reset the connection.
#[test]
fn discard_input_reads_to_end_of_file_while_the_own_queue_pauses_reading() {
    let saw = Arc::new(Mutex::new(None));
    let s = saw.clone();
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |stream, _| {
                let cfg = ConnConfig::default()
                    .high_watermark(16 * 1024)
                    .low_watermark(4 * 1024);
                Some(Discarder {
                    conn: Conn::new(stream, 0, cfg),
                    queue: 32 << 20,
                    saw: s.clone(),
                    discarded: 0,
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(8 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.write_all(&[1u8; 1000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let t0 = Instant::now();
    while saw.lock().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "discard_input never saw the end of file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*saw.lock().unwrap(), Some((1000, true)));
    drop(c);
    assert_eq!(server.stop().handlers_failed, 0);
}

/// Checks `is_paused` right after a queue passes the high watermark, before any
/// `fill` (it used to stay false until the next one).
struct PauseProbe {
    conn: Conn,
    seen: Arc<Mutex<Vec<(bool, bool)>>>,
}

impl Handler for PauseProbe {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.conn.register(cx)?;
        let hw = self.conn.config().high_watermark;
        self.conn.queue(cx, &vec![0u8; hw - 1]);
        let below = (self.conn.is_congested(), self.conn.is_paused());
        self.conn.queue(cx, b"x");
        let at = (self.conn.is_congested(), self.conn.is_paused());
        *self.seen.lock().unwrap() = vec![below, at];
        self.conn.clear_write_queue(cx);
        cx.close();
        Ok(())
    }
}

#[test]
fn is_paused_as_soon_as_the_own_queue_reaches_the_high_watermark() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |stream, _| {
                let cfg = ConnConfig::default().high_watermark(1000).low_watermark(10);
                Some(PauseProbe {
                    conn: Conn::new(stream, 0, cfg),
                    seen: s.clone(),
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = connect(addr);
    let _ = read_all(&mut c);
    drop(server);
    assert_eq!(*seen.lock().unwrap(), vec![(false, false), (true, true)]);
}

/// A low-level handler that closes at once with output queued: a truncation,
/// logged and counted.
struct Truncator {
    conn: Conn,
}

impl Handler for Truncator {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.conn.register(cx)?;
        self.conn.queue(cx, &vec![1u8; 4 << 20]);
        self.conn.flush(cx)?;
        cx.close();
        Ok(())
    }

    fn on_close(&mut self, cx: &mut Context<'_, Self>, _: CloseReason) {
        self.conn.release(cx);
    }
}

#[test]
fn a_plain_close_with_output_queued_is_counted_as_a_truncation() {
    let (addr, server) = run_loop(Config::default(), move |r| {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenOptions::default(),
            move |stream, _| {
                Some(Truncator {
                    conn: Conn::new(stream, 0, ConnConfig::default()),
                })
            },
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = small_buffer_connect(addr, Duration::from_secs(10));
    let (got, _) = read_all(&mut c);
    assert!(got.len() < 4 << 20);
    let stats = drain(server);
    assert_eq!(stats.truncated_closes, 1);
    assert_eq!(stats.closes(CloseReason::Local), 1);
}

/// Receives messages that are not `Send` from its own loop, and `Send` ones from
/// other threads; stops the loop after `expect` of them.
struct Inbox {
    got: Arc<Mutex<Vec<String>>>,
    expect: usize,
}

impl Handler for Inbox {
    type Message = Rc<str>;
    type Job = ();

    fn on_message(&mut self, cx: &mut Context<'_, Self>, msg: Rc<str>) -> HandlerResult {
        let mut got = self.got.lock().unwrap();
        got.push(msg.to_string());
        if got.len() == self.expect {
            cx.stop();
        }
        Ok(())
    }
}

/// Sends to an [`Inbox`] by its typed address.
struct Sender(Addr<Rc<str>>);

impl Handler for Sender {
    type Message = ();
    type Job = String;

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.send(self.0, Rc::from("in-loop, not Send"));
        cx.offload(|| "from a worker".to_string())?;
        Ok(())
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        _: reactor::JobId,
        r: JobResult<String>,
    ) -> HandlerResult {
        // The closure's own type arrives: no downcast.
        let text: String = r?;
        cx.send(self.0, Rc::from(text.as_str()));
        Ok(())
    }
}

#[test]
fn messages_and_job_results_are_typed_and_in_loop_messages_need_not_be_send() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut r = Reactor::new().unwrap();
    let inbox = r.spawn(Inbox {
        got: got.clone(),
        expect: 3,
    });
    r.spawn(Sender(inbox));
    // From another thread: a handler of `Send` messages.
    struct Relay(Addr<Rc<str>>);
    impl Handler for Relay {
        type Message = String;
        type Job = ();
        fn on_message(&mut self, cx: &mut Context<'_, Self>, m: String) -> HandlerResult {
            cx.send(self.0, Rc::from(m.as_str()));
            Ok(())
        }
    }
    let relay = r.spawn(Relay(inbox));
    let handle = r.handle();
    let t = std::thread::spawn(move || assert!(handle.send(relay, "across threads".to_string())));
    r.run().unwrap();
    t.join().unwrap();
    let mut got = got.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        ["across threads", "from a worker", "in-loop, not Send"]
    );
    assert_eq!(r.stats().handlers_failed, 0);
}

/// A chat-like room: every line goes to every other member.
struct Member {
    room: Group,
}

impl Protocol for Member {
    type Message = ();
    type Job = ();

    fn on_open(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        self.room.join(link);
        link.send(b"joined\n");
        Ok(())
    }

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        self.room.broadcast(link, &[line, b"\n"]);
        Ok(())
    }
}

fn room_server(limit: usize) -> (SocketAddr, Running) {
    run_loop(Config::default(), move |r| {
        let room = Group::new(limit);
        let cfg = FramedConfig::default().conn(ConnConfig::default().read_budget(16 * 1024));
        let l = framed::listen(
            "127.0.0.1:0".parse().unwrap(),
            Lines::new(4096),
            cfg,
            move |_| Some(Member { room: room.clone() }),
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    })
}

/// A member: with small kernel buffers (`small`, to stall sooner) or large ones
/// (4 MiB, so a reader on a busy machine is never 256 KiB behind).
fn joined(addr: SocketAddr, small: bool) -> TcpStream {
    let mut c = if small {
        small_buffer_connect(addr, Duration::from_secs(10))
    } else {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4 << 20).unwrap();
        s.connect(&addr.into()).unwrap();
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut hello = [0u8; 7];
    c.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"joined\n");
    c
}

#[test]
fn a_group_drops_a_member_that_stalls_and_the_others_get_everything() {
    let (addr, server) = room_server(256 * 1024);
    let stalled = joined(addr, true);
    let mut reader = joined(addr, false);
    let mut sender = joined(addr, false);
    // 10 MB of 1000-byte lines, read by `reader` as they come.
    let line = [b'z'; 999];
    let total = 10_000usize;
    let r = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1000 * 64];
        for i in 0..total / 64 {
            reader
                .read_exact(&mut buf)
                .unwrap_or_else(|e| panic!("lines {}..: {e}", i * 64));
            assert!(
                buf.chunks(1000)
                    .all(|l| l[..999] == line && l[999] == b'\n')
            );
        }
        reader
    });
    for _ in 0..total {
        sender.write_all(&line).unwrap();
        sender.write_all(b"\n").unwrap();
    }
    let reader = r.join().unwrap();
    // The stalled member was dropped: its connection ends after what it had.
    let mut stalled = stalled;
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (got, _) = read_all(&mut stalled);
    assert!(got.len() < 10 << 20, "the stalled member got everything?");
    drop((reader, sender));
    let stats = drain(server);
    assert_eq!(stats.closes(CloseReason::Local), 1, "{stats}");
    assert_eq!(stats.handlers_failed, 0);
}

/// Logs what it is told, in order, for the delivery-order test.
type Log = Rc<std::cell::RefCell<Vec<String>>>;

/// The sender side: holds its input until `go`, then broadcasts every line.
struct Burst {
    room: Group,
    log: Log,
    go: Option<TimerId>,
}

impl Protocol for Burst {
    type Message = ();
    type Job = ();

    fn on_open(&mut self, link: &mut Link<'_, Self>) -> HandlerResult {
        // Let the whole burst reach the kernel before reading any of it.
        link.pause_reading();
        self.go = Some(link.timer_once(Duration::from_millis(300)));
        Ok(())
    }

    fn on_timer(&mut self, link: &mut Link<'_, Self>, t: TimerId) -> HandlerResult {
        if self.go == Some(t) {
            link.resume_reading();
        }
        Ok(())
    }

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        self.log.borrow_mut().push("sent".into());
        self.room.send_all(link, &[line]);
        Ok(())
    }
}

/// The receiving side: a low-level handler with an outbox, which logs how much
/// was waiting each time it is woken.
struct Watcher {
    outbox: Option<Outbox>,
    room: Group,
    log: Log,
    received: usize,
}

impl Handler for Watcher {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let ob = Outbox::new(cx.id());
        self.room.join_outbox(ob.clone());
        self.outbox = Some(ob);
        Ok(())
    }

    fn on_notify(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let got = self.outbox.as_ref().unwrap().take();
        self.received += got.len();
        self.log
            .borrow_mut()
            .push(format!("woken with {}", got.len()));
        if self.received >= BURST {
            cx.stop();
        }
        Ok(())
    }
}

/// Bytes the burst's 64 lines of 1023 bytes (each with its `\n`) broadcast.
const BURST: usize = 64 * 1023;

/// The documented order: a sender whose read budget ran out re-queued itself
/// during its read, before the wake-ups its broadcasts sent, so it reads and
/// broadcasts a second budget's worth before the members it woke run.
#[test]
fn wakeups_run_after_the_senders_requeued_read() {
    let log: Log = Rc::default();
    let mut r = Reactor::new().unwrap();
    let room = Group::new(1 << 20);
    r.spawn(Watcher {
        outbox: None,
        room: room.clone(),
        log: log.clone(),
        received: 0,
    });
    let cfg = FramedConfig::default().conn(ConnConfig::default().read_budget(16 * 1024));
    let (l2, room2) = (log.clone(), room.clone());
    let l = framed::listen(
        "127.0.0.1:0".parse().unwrap(),
        Lines::new(4096),
        cfg,
        move |_| {
            Some(Burst {
                room: room2.clone(),
                log: l2.clone(),
                go: None,
            })
        },
    )
    .unwrap();
    let addr = l.local_addr();
    r.spawn(l);
    let handle = r.handle();
    let client = std::thread::spawn(move || {
        let mut c = connect(addr);
        let mut lines = Vec::new();
        for _ in 0..64 {
            lines.extend_from_slice(&[b'q'; 1023]);
            lines.push(b'\n');
        }
        c.write_all(&lines).unwrap();
        // A watchdog: the loop stops by itself once everything was broadcast.
        std::thread::sleep(Duration::from_secs(10));
        handle.stop();
    });
    r.run().unwrap();
    drop(client);
    let log = log.borrow();
    let mut expected = Vec::new();
    for _ in 0..2 {
        expected.extend(std::iter::repeat_n("sent".to_string(), 32));
        expected.push(format!("woken with {}", 32 * 1023));
    }
    assert_eq!(*log, expected);
}

/// Answers each line only after a job on the pool has computed the answer,
/// reading nothing meanwhile (`pause_reading` until the job is back): the way
/// the layer's docs say to wait for a job before the next request.
struct OneAtATime;

impl Protocol for OneAtATime {
    type Message = ();
    type Job = Vec<u8>;

    fn on_frame(&mut self, link: &mut Link<'_, Self>, line: &[u8]) -> HandlerResult {
        let line = line.to_vec();
        link.offload(move || {
            let mut up = line.to_ascii_uppercase();
            up.push(b'\n');
            up
        })?;
        link.pause_reading();
        Ok(())
    }

    fn on_job(&mut self, link: &mut Link<'_, Self>, r: JobResult<Vec<u8>>) -> HandlerResult {
        link.send(&r?);
        link.resume_reading();
        Ok(())
    }
}

#[test]
fn a_pipelining_client_of_a_protocol_that_pauses_per_request_gets_every_answer() {
    // Far more pipelined requests than the read buffer holds: while the protocol
    // is paused they pile up as whole frames, which must be delivered after the
    // pause, not taken for one frame too large (the bug the metrics endpoint
    // found: the connection was closed with "read buffer full").
    let cfg = FramedConfig::default().conn(ConnConfig::default().max_read_buffer(4096));
    let (addr, server) = run_loop(Config::default().workers(1), move |r| {
        let l = framed::listen("127.0.0.1:0".parse().unwrap(), Lines::new(64), cfg, |_| {
            Some(OneAtATime)
        })
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut c = connect(addr);
    let n = 4000;
    let mut request = String::new();
    for i in 0..n {
        request.push_str(&format!("request {i:08} of many\n"));
    }
    let writer = {
        let mut c = c.try_clone().unwrap();
        let request = request.clone();
        std::thread::spawn(move || {
            c.write_all(request.as_bytes()).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        })
    };
    let (got, clean) = read_all(&mut c);
    writer.join().unwrap();
    let got = String::from_utf8(got).unwrap();
    let want = request.to_uppercase();
    let first_wrong = got.lines().zip(want.lines()).position(|(a, b)| a != b);
    assert_eq!(first_wrong, None, "answers out of order");
    assert_eq!(
        (got.lines().count(), clean),
        (n, true),
        "answers, and a clean end of file"
    );
    let stats = drain(server);
    assert_eq!(stats.closes(CloseReason::ProtocolError), 0);
    assert_eq!(stats.jobs_completed, n as u64);
}
