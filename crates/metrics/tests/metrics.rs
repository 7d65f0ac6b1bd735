//! The metrics endpoint over real sockets: counters that move as the load says
//! (messages echoed, connections accepted, a slow handler under its name), one
//! endpoint for several loops with a blocked one reported as down, promtool on
//! the output, and bad requests (oversize, slowloris, pipelined garbage, other
//! methods, a body) answered with a 4xx or a close while the server goes on.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reactor::echo::{EchoOptions, echo_listener};
use reactor::{Config, Context, Handler, HandlerResult, TimerId};
use reactor_metrics::{Metrics, ServeOptions};
use reactor_test_support::scrape::{self, samples};
use reactor_test_support::{require_tool, run_loop};

/// Blocks its loop for 30 ms on every timer tick: a deliberately slow handler.
struct Sleepy {
    every: Duration,
}

impl Handler for Sleepy {
    type Message = Duration;
    type Job = ();
    fn name(&self) -> &str {
        "Sleepy"
    }
    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_repeat(self.every);
        Ok(())
    }
    fn on_timer(&mut self, _cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        std::thread::sleep(Duration::from_millis(30));
        Ok(())
    }
    /// Blocks the loop for the time given (a stuck loop for the scrape).
    fn on_message(&mut self, _cx: &mut Context<'_, Self>, d: Duration) -> HandlerResult {
        std::thread::sleep(d);
        Ok(())
    }
}

fn config() -> Config {
    let _ = env_logger::builder().is_test(true).try_init();
    Config::default().slow_threshold(Duration::from_millis(10))
}

/// An echo server with a slow handler and the metrics endpoint on one loop;
/// returns (echo address, metrics address).
fn server(opts: ServeOptions) -> ((SocketAddr, SocketAddr), reactor_test_support::Running) {
    run_loop(config(), move |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let echo = l.local_addr();
        r.spawn(l);
        r.spawn(Sleepy {
            every: Duration::from_millis(100),
        });
        r.counter("test_widgets").add(7);
        r.gauge("test level").set(-3);
        let m = Metrics::new();
        m.attach(r, "0");
        let addr = m.serve(r, "127.0.0.1:0".parse().unwrap(), opts).unwrap();
        (echo, addr)
    })
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in {:?}", m.keys().collect::<Vec<_>>()))
}

/// `n` round trips of `size` bytes on `c`.
fn echo(c: &mut TcpStream, n: usize, size: usize) {
    let msg = vec![b'x'; size];
    let mut back = vec![0; size];
    for _ in 0..n {
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
    }
}

#[test]
fn counters_move_with_the_load_and_a_slow_handler_is_named() {
    let ((echo_addr, addr), _server) = server(ServeOptions::default());
    let before = scrape::metrics(addr);
    assert_eq!(get(&before, r#"reactor_loop_up{loop="0"}"#), 1.0);
    assert_eq!(get(&before, r#"test_widgets_total{loop="0"}"#), 7.0);
    assert_eq!(get(&before, r#"test_level{loop="0"}"#), -3.0);

    // Load runs on another thread while we scrape.
    let load = std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = (0..5)
            .map(|_| TcpStream::connect(echo_addr).unwrap())
            .collect();
        for c in &mut conns {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let end = Instant::now() + Duration::from_millis(600);
        let mut rounds = 0;
        while Instant::now() < end {
            for c in &mut conns {
                echo(c, 10, 100);
            }
            rounds += 1;
        }
        (conns, rounds)
    });
    std::thread::sleep(Duration::from_millis(300));
    let during = scrape::metrics(addr);
    let (conns, rounds) = load.join().unwrap();
    let after = scrape::metrics(addr);

    let bytes = (rounds * 5 * 10 * 100) as f64;
    let read = |m: &HashMap<String, f64>| get(m, r#"reactor_read_bytes_total{loop="0"}"#);
    assert!(
        read(&during) > read(&before),
        "bytes read did not move during the load"
    );
    // Echoed bytes plus our three scrape requests (each well under 200 bytes).
    assert!(
        read(&after) >= bytes && read(&after) < bytes + 1000.0,
        "{} vs {bytes}",
        read(&after)
    );
    let written = get(&after, r#"reactor_written_bytes_total{loop="0"}"#);
    assert!(written >= bytes, "{written} < {bytes}");
    // 5 echo connections and 3 scrapes so far (this one included).
    assert_eq!(
        get(&after, r#"reactor_connections_accepted_total{loop="0"}"#),
        8.0
    );
    assert_eq!(get(&after, r#"reactor_connections_open{loop="0"}"#), 6.0);
    let events = |m: &HashMap<String, f64>| get(m, r#"reactor_events_total{loop="0"}"#);
    assert!(
        events(&after) >= (rounds * 5 * 10) as f64,
        "an event per echoed message at least"
    );
    assert!(events(&during) > events(&before));
    // Sleepy ran its 30 ms ticks throughout: counted under its name.
    let slow = get(
        &after,
        r#"reactor_slow_handler_dispatches_total{loop="0",handler="Sleepy"}"#,
    );
    assert!(slow >= 3.0, "slow dispatches of Sleepy: {slow}");
    assert!(get(&after, r#"reactor_slow_dispatches_total{loop="0"}"#) >= slow);
    assert!(get(&after, r#"reactor_timers_live{loop="0"}"#) >= 1.0);
    // The histogram: cumulative, its +Inf bucket the count, Sleepy's ticks above 25 ms.
    let count = get(&after, r#"reactor_dispatch_seconds_count{loop="0"}"#);
    let mut last = 0.0;
    for le in reactor_metrics::text::DISPATCH_BUCKETS {
        let b = get(
            &after,
            &format!(r#"reactor_dispatch_seconds_bucket{{loop="0",le="{le}"}}"#),
        );
        assert!(b >= last, "buckets must not decrease at le={le}");
        last = b;
    }
    assert_eq!(
        get(
            &after,
            r#"reactor_dispatch_seconds_bucket{loop="0",le="+Inf"}"#
        ),
        count
    );
    let under_25ms = get(
        &after,
        r#"reactor_dispatch_seconds_bucket{loop="0",le="0.025"}"#,
    );
    assert!(count - under_25ms >= slow, "the slow ticks are above 25 ms");
    assert!(get(&after, r#"reactor_dispatch_seconds_sum{loop="0"}"#) >= slow * 0.03);

    // Closing the echo connections shows as peer_closed closes.
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape::metrics(addr);
        if get(&m, r#"reactor_closes_total{loop="0",reason="peer_closed"}"#) >= 5.0 {
            // Scrape connections close too; the echo ones are gone from "open".
            assert!(get(&m, r#"reactor_connections_open{loop="0"}"#) <= 2.0);
            break;
        }
        assert!(Instant::now() < deadline, "closes not counted: {m:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = scrape::get(addr, "/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
}

#[test]
fn one_endpoint_reports_every_loop_and_a_blocked_one_as_down() {
    let metrics = Metrics::new();
    let m1 = metrics.clone();
    let (sleepy, _loop1) = run_loop(config(), move |r| {
        let a = r.spawn(Sleepy {
            every: Duration::from_secs(3600),
        });
        r.counter("loop_one_only").inc();
        m1.attach(r, "1");
        a
    });
    let handle1 = _loop1.handle.clone();
    let m0 = metrics.clone();
    let (addr, _loop0) = run_loop(config(), move |r| {
        m0.attach(r, "0");
        m0.serve(
            r,
            "127.0.0.1:0".parse().unwrap(),
            ServeOptions::default().collect_timeout(Duration::from_millis(300)),
        )
        .unwrap()
    });
    let m = scrape::metrics(addr);
    for l in ["0", "1"] {
        assert_eq!(get(&m, &format!(r#"reactor_loop_up{{loop="{l}"}}"#)), 1.0);
        assert!(m.contains_key(&format!(r#"reactor_loop_iterations_total{{loop="{l}"}}"#)));
    }
    assert_eq!(get(&m, r#"loop_one_only_total{loop="1"}"#), 1.0);
    assert!(!m.contains_key(r#"loop_one_only_total{loop="0"}"#));

    // Block loop 1 for 1.5 s: the scrape answers after the collect timeout, with
    // loop 0's numbers and loop 1 down.
    assert!(handle1.send(sleepy, Duration::from_millis(1500)));
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let m = scrape::metrics(addr);
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(1200),
        "the scrape waited {took:?}"
    );
    assert_eq!(get(&m, r#"reactor_loop_up{loop="1"}"#), 0.0);
    assert_eq!(get(&m, r#"reactor_loop_up{loop="0"}"#), 1.0);
    assert!(!m.contains_key(r#"reactor_loop_iterations_total{loop="1"}"#));
    // Once it is free again, it is back, and its late answer to the earlier
    // scrape did not confuse this one.
    std::thread::sleep(Duration::from_millis(1600));
    let m = scrape::metrics(addr);
    assert_eq!(get(&m, r#"reactor_loop_up{loop="1"}"#), 1.0);
    assert!(
        get(
            &m,
            r#"reactor_slow_handler_dispatches_total{loop="1",handler="Sleepy"}"#
        ) >= 1.0
    );
}

#[test]
fn promtool_accepts_the_output() {
    if !require_tool("promtool", &["--version"], "apt-get install prometheus") {
        return;
    }
    let ((echo_addr, addr), _server) = server(ServeOptions::default());
    let mut c = TcpStream::connect(echo_addr).unwrap();
    echo(&mut c, 100, 64);
    std::thread::sleep(Duration::from_millis(250)); // a slow tick or two
    let body = scrape::get(addr, "/metrics").body;
    let (ok, said) = scrape::promtool(&body);
    assert!(ok, "promtool: {said}\n{body}");
    assert!(body.contains("handler=\"Sleepy\""), "{body}");
}

/// Sends `req` on a fresh connection and reads until the server closes (or 5 s).
fn exchange(addr: SocketAddr, req: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    s.write_all(req).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
}

#[test]
fn bad_requests_get_a_4xx_or_a_close_and_nothing_else_is_disturbed() {
    let opts = ServeOptions::default()
        .request_timeout(Duration::from_millis(600))
        .max_request_head(1024)
        .max_requests_per_connection(3);
    let ((echo_addr, addr), _server) = server(opts);
    let mut user = TcpStream::connect(echo_addr).unwrap();
    user.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // Oversize head: 431 and closed.
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(4000));
    let (r, _) = exchange(addr, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    assert!(r.contains("Connection: close"), "{r}");
    // Also when it never ends.
    let (r, _) = exchange(addr, "a".repeat(3000).as_bytes());
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

    // Garbage: 400.
    let (r, _) = exchange(addr, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    // Pipelined: a good request, then garbage: 200, then 400 and closed.
    let (r, _) = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\n\r\nBLAH BLAH\x01\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert_eq!(
        r.matches("HTTP/1.1 ").count(),
        2,
        "nothing after the 400: {r}"
    );
    assert!(r.contains("HTTP/1.1 400 "), "{r}");
    // Other methods, unknown paths, a body.
    let (r, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD"),
        "{r}"
    );
    let (r, _) = exchange(addr, b"GET /secret HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let (r, _) = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    // HEAD: the headers alone.
    let (r, _) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200 OK") && r.ends_with("\r\n\r\n"),
        "{r}"
    );

    // Slowloris: a head trickled in, byte by byte, is cut off with a 408 at the
    // request timeout though bytes keep coming.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain(b"y".repeat(200).iter())
    {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0; 512];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if t.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let r = String::from_utf8_lossy(&got);
    assert!(r.starts_with("HTTP/1.1 408 "), "{r:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // An idle connection is closed quietly at the same timeout.
    let (r, took) = exchange(addr, b"");
    assert_eq!(r, "");
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // Keep-alive, up to the per-connection limit: the third response closes.
    let (r, _) = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
    );
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 3, "{r}");
    assert!(r.contains("reactor_loop_up{loop=\"0\"} 1"), "{r}");
    assert_eq!(r.matches("Connection: close").count(), 1, "{r}");

    // The echo user was never disturbed, and the endpoint still answers.
    echo(&mut user, 100, 64);
    let m = scrape::metrics(addr);
    assert_eq!(get(&m, r#"reactor_loop_up{loop="0"}"#), 1.0);
    assert_eq!(
        get(&m, r#"reactor_closes_total{loop="0",reason="panic"}"#),
        0.0
    );
    assert_eq!(
        get(
            &m,
            r#"reactor_closes_total{loop="0",reason="handler_error"}"#
        ),
        0.0
    );
}

#[test]
fn a_scraper_that_never_reads_cannot_grow_the_servers_memory() {
    let ((_, addr), _server) = server(ServeOptions::default());
    // Pipeline scrapes without reading a byte of the answers.
    let mut s = reactor_test_support::small_buffer_connect(addr, Duration::from_secs(5));
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let req = b"GET /metrics HTTP/1.1\r\n\r\n";
    let mut sent = 0usize;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        match s.write(req) {
            Ok(n) => sent += n,
            // Our send buffer is full: the server stopped reading. (A reset
            // here would be the server giving up on a pipelining client.)
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock,
                    "after {sent} bytes: {e}"
                );
                break;
            }
        }
    }
    assert!(
        sent < 4 * 1024 * 1024,
        "the server kept reading a client that reads nothing: {sent} bytes"
    );
    // Everyone else is still served, and the server holds at most its high
    // watermark plus one response for the stuck scraper.
    let m = scrape::metrics(addr);
    let rss = get(&m, "process_resident_memory_bytes");
    assert!(rss < 64.0 * 1024.0 * 1024.0, "resident memory {rss}");
    let body = scrape::get(addr, "/healthz");
    assert_eq!(body.status, 200);
    let _ = samples(&scrape::get(addr, "/metrics").body);
}
