//! With the metrics endpoint attached and scraped, an echoed message still costs
//! the loop thread no allocation: the allocations on that thread over a window
//! are the scrapes' own, whatever the number of messages in it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reactor::echo::{EchoOptions, echo_listener};
use reactor::{Config, Context, Handler, HandlerResult};
use reactor_metrics::{Metrics, ServeOptions};
use reactor_test_support::alloc::{self, Counting};
use reactor_test_support::{run_loop, scrape};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Opts the loop thread in to the allocation count.
struct Track;

impl Handler for Track {
    type Message = ();
    type Job = ();
    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        alloc::track_this_thread();
        cx.close();
        Ok(())
    }
}

fn rr(c: &mut TcpStream, n: usize) {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..n {
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
    }
}

/// Allocations on the loop thread over `messages` echoes with `scrapes` scrapes.
fn window(c: &mut TcpStream, addr: std::net::SocketAddr, messages: usize, scrapes: usize) -> u64 {
    let before = alloc::tracked();
    for _ in 0..scrapes {
        rr(c, messages / scrapes);
        let _ = scrape::metrics(addr);
    }
    alloc::tracked() - before
}

#[test]
fn an_echoed_message_allocates_nothing_with_the_endpoint_scraped() {
    let ((echo, addr), _server) = run_loop(Config::default(), |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let echo = l.local_addr();
        r.spawn(l);
        r.spawn(Track);
        let m = Metrics::new();
        m.attach(r, "0");
        let addr = m
            .serve(r, "127.0.0.1:0".parse().unwrap(), ServeOptions::default())
            .unwrap();
        (echo, addr)
    });
    let mut c = TcpStream::connect(echo).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.set_nodelay(true).unwrap();
    // Warm up: buffers pooled, vectors at their working size, a scrape or two.
    let _ = window(&mut c, addr, 2_000, 2);
    let few = window(&mut c, addr, 1_000, 5);
    let many = window(&mut c, addr, 10_000, 5);
    // The same five scrapes in each window; 9,000 more messages add nothing. (A
    // scrape's allocations vary by a few with timing: the snapshot's copy,
    // the response string growing, the listener's accept.)
    assert!(
        few > 0,
        "the scrapes were not counted: the loop thread is not tracked"
    );
    assert!(
        many <= few + 25,
        "{few} allocations with 1,000 messages, {many} with 10,000: messages allocate"
    );
}
