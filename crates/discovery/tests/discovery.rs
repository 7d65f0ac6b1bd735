//! Discovery on loopback: nodes as child processes (the example binary) find each
//! other, notice a killed node by its silence and a terminated one by its goodbye;
//! a flood of garbage neither delays other handlers nor grows memory.
//!
//! Every node binds the loopback broadcast address `127.255.255.255` with a port the
//! OS picks for the first node (`--port 0`), so tests never collide with each other
//! or with a real discovery port.

use reactor_test_support as common;
use reactor_test_support::fuzz::Rng;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::run_loop;
use reactor::echo::{EchoOptions, echo_listener};
use reactor::{CloseReason, Config, Context, Handler, HandlerResult, SourceId, TimerId};
use reactor_discovery::proto::{Announcement, MAGIC, Metadata, VERSION, encode};
use reactor_discovery::{Discovery, DiscoveryConfig, DiscoveryHandler, DiscoveryStats, PeerEvent};

const BCAST: &str = "127.255.255.255";

/// A `discovery` example process with its stdout lines (timestamped on arrival).
struct Node {
    id: String,
    child: Child,
    port: u16,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
    stderr: mpsc::Receiver<String>,
}

impl Node {
    fn start(id: &str, port: u16, interval: f64, extra: &[&str]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_discovery"));
        cmd.args(["--id", id, "--port", &port.to_string()])
            .args(["--interval", &interval.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn discovery");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (ltx, lrx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if ltx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if etx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut node = Node {
            id: id.to_string(),
            child,
            port: 0,
            lines: lrx,
            seen: Vec::new(),
            stderr: erx,
        };
        let needle = format!("bound to {BCAST}:");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{id} did not log its address"));
            let l = node.stderr.recv_timeout(left).expect("node stderr");
            if let Some(i) = l.find(&needle) {
                let rest = &l[i + needle.len()..];
                let p: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                node.port = p.parse().unwrap();
                break;
            }
        }
        if port != 0 {
            assert_eq!(node.port, port);
        }
        node
    }

    /// Waits until `line` is printed (or was already); returns when it arrived.
    fn wait_line(&mut self, line: &str, deadline: Instant) -> Option<Instant> {
        if let Some((t, _)) = self.seen.iter().find(|(_, l)| l == line) {
            return Some(*t);
        }
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (t, l) = self.lines.recv_timeout(left).ok()?;
            let hit = l == line;
            self.seen.push((t, l));
            if hit {
                return Some(t);
            }
        }
    }

    /// The metrics endpoint's address from the `metrics on http://ADDR/metrics` log
    /// line (started with `--metrics 127.0.0.1:0`).
    fn metrics_addr(&mut self) -> SocketAddr {
        let needle = "metrics on http://";
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let left = end
                .checked_duration_since(Instant::now())
                .expect("no metrics line");
            let l = self.stderr.recv_timeout(left).expect("node stderr");
            if let Some(i) = l.find(needle) {
                return l[i + needle.len()..]
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        }
    }

    fn drain(&mut self) -> &[(Instant, String)] {
        while let Ok(x) = self.lines.try_recv() {
            self.seen.push(x);
        }
        &self.seen
    }

    fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_only_event_lines(node: &mut Node) {
    let id = node.id.clone();
    for (_, l) in node.drain() {
        let f: Vec<&str> = l.split(' ').collect();
        let ok = match f.as_slice() {
            ["joined", peer, addr] => *peer != id && addr.parse::<SocketAddr>().is_ok(),
            ["left", peer] => *peer != id,
            _ => false,
        };
        assert!(ok, "{id} printed an unexpected stdout line {l:?}");
    }
}

/// Three nodes see each other within two intervals; a SIGKILLed node (no goodbye)
/// is reported left within the TTL; a SIGTERMed one says goodbye, exits 0 and is
/// reported left at once.
#[test]
fn three_nodes_join_then_killed_and_terminated_nodes_leave() {
    let interval = 0.5;
    let ttl = Duration::from_secs_f64(3.0 * interval);
    let mut a = Node::start("alpha", 0, interval, &["--tcp-port", "1001"]);
    let port = a.port;
    let mut b = Node::start("beta", port, interval, &["--tcp-port", "1002"]);
    let mut c = Node::start("gamma", port, interval, &["--tcp-port", "1003"]);
    // gamma has logged its address: it is bound and announcing from now on.
    let by = Instant::now() + Duration::from_secs_f64(2.0 * interval);
    for (node, others) in [
        (&mut a, [("beta", 1002), ("gamma", 1003)]),
        (&mut b, [("alpha", 1001), ("gamma", 1003)]),
        (&mut c, [("alpha", 1001), ("beta", 1002)]),
    ] {
        for (peer, tcp) in others {
            let line = format!("joined {peer} 127.0.0.1:{tcp}");
            if node.wait_line(&line, by).is_none() {
                let id = node.id.clone();
                panic!(
                    "{id} did not print {line:?} within two intervals; got {:?}",
                    node.drain()
                );
            }
        }
    }

    // SIGKILL: no goodbye, so the others notice only by the silence.
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    let slack = Duration::from_millis(300); // process scheduling, not protocol time
    for node in [&mut a, &mut c] {
        let at = node
            .wait_line("left beta", killed + ttl + slack)
            .unwrap_or_else(|| panic!("{} did not report beta left within the TTL", node.id));
        let after = at.saturating_duration_since(killed);
        // beta was last heard at most 1.25 intervals before the kill.
        assert!(
            after >= ttl - Duration::from_secs_f64(1.25 * interval) - slack,
            "{} reported beta left after {after:?}: too early for a TTL expiry",
            node.id
        );
    }

    // SIGTERM: graceful, with a goodbye.
    c.signal(libc::SIGTERM);
    let termed = Instant::now();
    let at = a
        .wait_line("left gamma", termed + Duration::from_secs_f64(interval))
        .expect("alpha did not report gamma left promptly after SIGTERM");
    assert!(at.saturating_duration_since(termed) < Duration::from_secs_f64(interval));
    assert_eq!(
        c.wait_exit(Duration::from_secs(10)),
        Some(0),
        "gamma exit code"
    );

    for n in [&mut a, &mut b, &mut c] {
        assert_only_event_lines(n);
    }
    // Nothing was reported twice or spuriously. (beta and gamma start moments
    // apart, so their joins may arrive in either order.)
    let mut a_lines: Vec<String> = a.drain().iter().map(|(_, l)| l.clone()).collect();
    if a_lines.len() >= 2 {
        a_lines[..2].sort();
    }
    assert_eq!(
        a_lines,
        [
            "joined beta 127.0.0.1:1002",
            "joined gamma 127.0.0.1:1003",
            "left beta",
            "left gamma"
        ]
    );
    a.signal(libc::SIGINT);
    assert_eq!(
        a.wait_exit(Duration::from_secs(10)),
        Some(0),
        "alpha exit code"
    );
}

/// A newcomer hears of the nodes already running within milliseconds, not at their
/// next regular announcement: they answer its first announcement early. With a 20 s
/// interval the regular announcements are at least 15 s apart, so seeing every old
/// node within 3 s is only possible through the early answer; a second newcomer
/// inside the early-answer gap (at most 1 s) is answered too.
#[test]
fn newcomers_are_answered_at_once_not_at_the_next_interval() {
    let interval = 20.0;
    let mut a = Node::start("alpha", 0, interval, &["--tcp-port", "1001"]);
    let port = a.port;
    // alpha's first announcement goes out on start; let it pass, so beta can only
    // learn of alpha from an answer.
    std::thread::sleep(Duration::from_millis(300));
    let mut b = Node::start("beta", port, interval, &["--tcp-port", "1002"]);
    let by = Instant::now() + Duration::from_secs(3);
    assert!(
        b.wait_line("joined alpha 127.0.0.1:1001", by).is_some(),
        "beta did not hear alpha within 3 s: {:?}",
        b.drain()
    );
    assert!(a.wait_line("joined beta 127.0.0.1:1002", by).is_some());
    let mut c = Node::start("gamma", port, interval, &["--tcp-port", "1003"]);
    let by = Instant::now() + Duration::from_secs(3);
    for line in ["joined alpha 127.0.0.1:1001", "joined beta 127.0.0.1:1002"] {
        assert!(
            c.wait_line(line, by).is_some(),
            "gamma did not print {line:?} within 3 s: {:?}",
            c.drain()
        );
    }
    for n in [&mut a, &mut b, &mut c] {
        assert_only_event_lines(n);
    }
}

#[test]
fn bad_arguments_exit_nonzero_with_one_line() {
    for args in [
        &["--id", "x", "--interval", "0"][..],
        &["--id", "x", "--interval=-1"],
        &["--id", ""],
        &["--id", "bad\tid"],
        &["--id", "x", "--broadcast", "::1"],
        &["--id", "x", "--meta", "novalue"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_discovery"))
            .args(args)
            .args(["--port", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().any(|l| l.starts_with("discovery: ")),
            "{args:?}: no one-line message in {err:?}"
        );
    }
}

/// Sends `count` hostile datagrams to the discovery port in paced bursts: random
/// noise (half of it behind our magic and version), oversized datagrams, and valid
/// announcements from `fake_ids` different strangers.
fn flood(port: u16, count: usize, fake_ids: u64, seed: u64) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_broadcast(true).unwrap();
    let to: SocketAddr = format!("{BCAST}:{port}").parse().unwrap();
    let mut rng = Rng::new(seed | 1);
    let mut buf = Vec::with_capacity(4096);
    let mut id = String::new();
    for i in 0..count {
        buf.clear();
        match i % 10 {
            0..=6 => {
                if rng.next_u64() & 1 == 0 {
                    buf.extend_from_slice(&MAGIC);
                    buf.push(VERSION);
                }
                let n = (rng.next_u64() % 1400) as usize;
                buf.extend((0..n).map(|_| rng.next_u64() as u8));
            }
            7 => {
                buf.extend_from_slice(&MAGIC);
                buf.push(VERSION);
                buf.resize(2000 + (rng.next_u64() % 4000) as usize, 0x41);
            }
            _ => {
                id.clear();
                id.push_str(&format!("fake-{}", rng.next_u64() % fake_ids));
                let md = Metadata::from_pairs(&[("k", "v")]).unwrap();
                let ann = Announcement {
                    metadata: md,
                    ..Announcement::new(&id, 42, 9)
                };
                encode(&ann, &mut buf).unwrap();
            }
        }
        // The kernel may drop some under load; that is fine, it is a flood.
        let _ = s.send_to(&buf, to);
        if i % 500 == 499 {
            std::thread::sleep(Duration::from_millis(4));
        }
    }
}

/// Discovery embedded as a component in a handler (the library API the BitTorrent
/// peer uses), reporting its counters when it closes.
struct Embedded {
    disc: Discovery,
    events: Vec<PeerEvent>,
    joined: Arc<AtomicU64>,
    done: mpsc::Sender<(DiscoveryStats, usize)>,
}

impl Embedded {
    fn take_events(&mut self) {
        for ev in self.events.drain(..) {
            if let PeerEvent::Joined { .. } = ev {
                self.joined.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl Handler for Embedded {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.disc.start(cx)?)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.disc.on_readable(cx, &mut self.events)?;
        self.take_events();
        Ok(())
    }
    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.disc.on_writable(cx);
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, t: TimerId) -> HandlerResult {
        assert!(self.disc.on_timer(cx, t, &mut self.events));
        self.take_events();
        Ok(())
    }
    fn on_close(&mut self, cx: &mut Context<'_, Self>, _reason: CloseReason) {
        self.disc.leave(cx);
        let _ = self.done.send((self.disc.stats(), self.disc.table().len()));
    }
}

/// 50,000 hostile datagrams against a discovery service sharing its loop with an
/// echo server: the echo keeps answering during the flood, no callback is slow, the
/// peer table stays within its bound, and rejections are logged rate-limited.
#[test]
fn garbage_flood_does_not_delay_other_handlers() {
    let joined = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let j2 = joined.clone();
    let ((echo_addr, port), lp) = run_loop(Config::default(), move |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let echo_addr = l.local_addr();
        r.spawn(l);
        let mut cfg = DiscoveryConfig::new("victim");
        cfg.port = 0;
        cfg.interval = Duration::from_millis(200);
        cfg.max_peers = 64;
        let disc = Discovery::new(cfg).unwrap();
        let port = disc.local_addr().port();
        r.spawn(Embedded {
            disc,
            events: Vec::new(),
            joined: j2,
            done: done_tx,
        });
        (echo_addr, port)
    });

    let flooding = Arc::new(AtomicBool::new(true));
    let pings_during = Arc::new(AtomicU64::new(0));
    let (f2, p2) = (flooding.clone(), pings_during.clone());
    let pinger = std::thread::spawn(move || {
        let mut s = TcpStream::connect(echo_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut worst = Duration::ZERO;
        let mut buf = [0u8; 16];
        while f2.load(Ordering::SeqCst) {
            let t = Instant::now();
            s.write_all(b"ping-ping-ping!!").unwrap();
            s.read_exact(&mut buf).expect("echo stopped answering");
            assert_eq!(&buf, b"ping-ping-ping!!");
            worst = worst.max(t.elapsed());
            p2.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
        }
        worst
    });
    flood(port, 50_000, 5_000, 7);
    flooding.store(false, Ordering::SeqCst);
    let worst_rtt = pinger.join().unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let the loop drain the socket
    let stats = lp.stop();
    let (disc, table_len) = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let h = &stats.dispatch_time;
    eprintln!(
        "flood: {} datagrams received, {} malformed, {} yields; echo {} pings, worst RTT {:?}; \
         dispatch p50 {:?} p99 {:?} max {:?}",
        disc.udp.datagrams_in,
        disc.table.malformed,
        disc.udp.recv_yields,
        pings_during.load(Ordering::SeqCst),
        worst_rtt,
        h.percentile(0.5),
        h.percentile(0.99),
        h.max()
    );
    assert_eq!(stats.slow_dispatches, 0, "a callback blocked the loop");
    assert!(
        h.max() < Duration::from_millis(100),
        "max dispatch {:?}",
        h.max()
    );
    assert!(
        h.percentile(0.99) < Duration::from_millis(5),
        "p99 dispatch {:?}",
        h.percentile(0.99)
    );
    assert_eq!(stats.handlers_failed, 0);
    assert!(
        pings_during.load(Ordering::SeqCst) >= 10,
        "echo answered only {} times during the flood",
        pings_during.load(Ordering::SeqCst)
    );
    assert!(
        worst_rtt < Duration::from_secs(1),
        "worst echo RTT {worst_rtt:?}"
    );
    assert!(
        disc.udp.datagrams_in > 10_000,
        "too little of the flood arrived to prove anything: {disc:?}"
    );
    assert!(disc.table.malformed > 5_000, "{disc:?}");
    assert!(
        disc.udp.truncated_in > 0,
        "oversized datagrams are seen as such"
    );
    assert!(
        disc.udp.recv_yields > 0,
        "the receive budget must have yielded"
    );
    assert!(table_len <= 64, "peer table grew to {table_len}");
    assert!(
        disc.table.dropped > 0,
        "strangers beyond the cap are dropped"
    );
    assert!(joined.load(Ordering::SeqCst) >= 64);
    assert!(
        (1..=2).contains(&disc.reject_logs),
        "rejections must be logged, rate-limited: {} lines",
        disc.reject_logs
    );
}

/// A flood does not grow a node process's memory, and the node still works after.
#[test]
fn garbage_flood_does_not_grow_process_memory() {
    let interval = 0.2;
    let mut n = Node::start("target", 0, interval, &["--max-peers", "256"]);
    let port = n.port;
    // Warm-up: the table fills to its cap, buffers reach their working size.
    flood(port, 20_000, 2_000, 11);
    std::thread::sleep(Duration::from_millis(300));
    let before = n.rss_kib();
    flood(port, 50_000, 2_000, 13);
    std::thread::sleep(Duration::from_millis(300));
    let after = n.rss_kib();
    eprintln!("RSS before {before} KiB, after {after} KiB");
    assert!(
        after <= before + 1024,
        "RSS grew from {before} KiB to {after} KiB during the flood"
    );
    let joins = n
        .drain()
        .iter()
        .filter(|(_, l)| l.starts_with("joined fake-"))
        .count();
    assert!(joins >= 256, "the flood's strangers were seen ({joins})");
    // Still working: the strangers expire and a real node is found.
    let probe = Node::start("probe", port, interval, &["--tcp-port", "5"]);
    let line = "joined probe 127.0.0.1:5";
    assert!(
        n.wait_line(line, Instant::now() + Duration::from_secs(3))
            .is_some(),
        "the node no longer discovers peers after the flood"
    );
    assert_only_event_lines(&mut n);
    drop(probe);
    n.signal(libc::SIGTERM);
    assert_eq!(n.wait_exit(Duration::from_secs(10)), Some(0));
}

/// The owner side of `DiscoveryHandler::to_owner` (what `peer --discover` does):
/// events arrive as `Box<PeerEvent>` messages, with service, address and metadata.
struct Owner {
    port: u16,
    events: mpsc::Sender<PeerEvent>,
}

impl Handler for Owner {
    type Message = PeerEvent;
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let mut cfg = DiscoveryConfig::new("owner-node");
        cfg.port = self.port;
        cfg.interval = Duration::from_millis(200);
        cfg.service = "bittorrent".into();
        let disc = Discovery::new(cfg)?;
        let me = cx.addr();
        cx.spawn(DiscoveryHandler::to_owner(disc, me));
        Ok(())
    }
    fn on_message(&mut self, _cx: &mut Context<'_, Self>, ev: PeerEvent) -> HandlerResult {
        let _ = self.events.send(ev);
        Ok(())
    }
}

/// Closes another handler after a delay (its `on_close` must say goodbye).
struct CloseLater(reactor::HandlerId);
impl Handler for CloseLater {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_once(Duration::from_millis(400));
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        cx.close_handler(self.0);
        cx.close();
        Ok(())
    }
}

#[test]
fn owner_handler_receives_events_as_messages() {
    let (tx, rx) = mpsc::channel();
    let (_, lp) = run_loop(Config::default(), move |r| {
        let mut cfg = DiscoveryConfig::new("seeder-1");
        cfg.port = 0;
        cfg.interval = Duration::from_millis(200);
        cfg.service = "bittorrent".into();
        cfg.tcp_port = 6881;
        cfg.metadata = vec![("ih".into(), "00ff".repeat(10))];
        let disc = Discovery::new(cfg).unwrap();
        let port = disc.local_addr().port();
        let other = r.spawn(DiscoveryHandler::with_callback(disc, |_, _| {}));
        r.spawn(Owner { port, events: tx });
        r.spawn(CloseLater(other.id()));
    });
    let first = rx.recv_timeout(Duration::from_secs(5)).expect("joined");
    assert_eq!(
        first,
        PeerEvent::Joined {
            id: "seeder-1".into(),
            instance: match &first {
                PeerEvent::Joined { instance, .. } => *instance,
                _ => 0,
            },
            addr: "127.0.0.1:6881".parse().unwrap(),
            service: "bittorrent".into(),
            metadata: vec![("ih".into(), "00ff".repeat(10))],
        }
    );
    // Closed by CloseLater at 400 ms, long before the 600 ms TTL could expire it
    // after its last announcement; the goodbye makes it immediate.
    let t = Instant::now();
    let second = rx.recv_timeout(Duration::from_secs(5)).expect("left");
    assert_eq!(
        second,
        PeerEvent::Left {
            id: "seeder-1".into()
        }
    );
    assert!(
        t.elapsed() < Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
    drop(lp);
}

#[test]
fn metrics_count_peers_and_announcements_and_promtool_accepts_them() {
    let mut a = Node::start("metrics-a", 0, 0.2, &["--metrics", "127.0.0.1:0"]);
    let addr = a.metrics_addr();
    let mut b = Node::start("metrics-b", a.port, 0.2, &[]);
    let end = Instant::now() + Duration::from_secs(10);
    // No --tcp-port: the address announced is the node's IP and port 0.
    assert!(
        a.wait_line("joined metrics-b 127.0.0.1:0", end).is_some(),
        "{:?}",
        a.drain()
    );
    // Counters are updated as events are handled: poll until the join shows.
    let m = loop {
        let m = common::scrape::metrics(addr);
        if m.get(r#"discovery_peers{loop="0"}"#) == Some(&1.0) {
            break m;
        }
        assert!(
            Instant::now() < end,
            "discovery_peers never reached 1: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(m[r#"discovery_peers_joined_total{loop="0"}"#], 1.0);
    assert!(m[r#"discovery_announcements_total{loop="0"}"#] >= 1.0);
    assert!(m[r#"discovery_datagrams_received_total{loop="0"}"#] >= 1.0);
    assert_eq!(m[r#"discovery_datagrams_malformed_total{loop="0"}"#], 0.0);
    // b says goodbye: the gauge goes back to 0, the left counter to 1.
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(0));
    loop {
        let m = common::scrape::metrics(addr);
        if m.get(r#"discovery_peers{loop="0"}"#) == Some(&0.0) {
            assert_eq!(m[r#"discovery_peers_left_total{loop="0"}"#], 1.0);
            break;
        }
        assert!(
            Instant::now() < end,
            "discovery_peers never went back to 0: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if common::require_tool("promtool", &["--version"], "apt-get install prometheus") {
        let body = common::scrape::get(addr, "/metrics").body;
        let (ok, said) = common::scrape::promtool(&body);
        assert!(ok, "promtool: {said}\n{body}");
    }
}
