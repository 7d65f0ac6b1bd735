//! Zero heap allocations per echoed message in steady state.
//!
//! A counting global allocator counts the allocations made on the loop thread only
//! (a thread-local flag), while the echo server runs in-process and clients on other
//! threads send request/response and pipelined traffic. After a warm-up (buffers in
//! the pool, slab slots, event and pending vectors at their working size), 10,000
//! echoed messages of each kind must cost the loop thread no allocation at all.
//!
//! To find an allocation that breaks this, run with `ALLOC_BACKTRACE=1`: the first
//! few counted allocations print a backtrace (`reactor_test_support::alloc`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use reactor::echo::{EchoOptions, echo_listener, framed_echo_listener};
use reactor::{Reactor, Stats};

use reactor_test_support::alloc::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

const MSG: usize = 64;
const DEPTH: usize = 16;

fn message(conn: usize, i: usize) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    for (k, b) in m.iter_mut().enumerate() {
        *b = (conn * 31 + i * 7 + k) as u8;
    }
    m
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// `rounds` request/response exchanges on each connection, every echo checked.
fn rr(conns: &mut [TcpStream], rounds: usize) {
    let mut back = [0u8; MSG];
    for i in 0..rounds {
        for (c, s) in conns.iter_mut().enumerate() {
            let m = message(c, i);
            s.write_all(&m).unwrap();
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, m, "bad echo");
        }
    }
}

/// `rounds` batches of DEPTH pipelined messages on each connection.
fn pipelined(conns: &mut [TcpStream], rounds: usize) {
    let mut batch = [0u8; MSG * DEPTH];
    let mut back = [0u8; MSG * DEPTH];
    for i in 0..rounds {
        for (c, s) in conns.iter_mut().enumerate() {
            for k in 0..DEPTH {
                batch[k * MSG..(k + 1) * MSG].copy_from_slice(&message(c, i * DEPTH + k));
            }
            s.write_all(&batch).unwrap();
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, batch, "bad echo");
        }
    }
}

#[test]
fn echo_allocates_nothing_per_message_in_steady_state() {
    // First prove the harness can fail: an allocation on a tracked thread is
    // counted, one on an untracked thread is not.
    std::thread::spawn(|| {
        let before = alloc::tracked();
        let untracked = std::hint::black_box(Box::new([1u8; 100]));
        assert_eq!(alloc::tracked(), before);
        alloc::track_this_thread();
        let tracked = std::hint::black_box(Box::new([2u8; 100]));
        alloc::untrack_this_thread();
        assert_eq!(alloc::tracked(), before + 1);
        drop((untracked, tracked));
    })
    .join()
    .unwrap();

    echo_steady_state("echo (EchoConn)", false);
    // The same on the framed layer: a protocol answering each frame while it is
    // still in the read buffer (`Link::send`), with its idle timeout.
    echo_steady_state("framed echo (FramedEcho)", true);
}

fn echo_steady_state(what: &str, framed: bool) {
    let (tx, rx) = mpsc::channel();
    let loop_thread = std::thread::spawn(move || -> Stats {
        alloc::track_this_thread();
        let mut r = Reactor::new().unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        if framed {
            let l = framed_echo_listener(addr, EchoOptions::default()).unwrap();
            tx.send((l.local_addr(), r.handle())).unwrap();
            r.spawn(l);
        } else {
            let l = echo_listener(addr, EchoOptions::default()).unwrap();
            tx.send((l.local_addr(), r.handle())).unwrap();
            r.spawn(l);
        }
        r.run().unwrap();
        r.stats().clone()
    });
    let (addr, handle) = rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let mut rr_conns: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    let mut pipe_conns: Vec<TcpStream> = (0..10).map(|_| connect(addr)).collect();
    // Warm-up: every connection accepted and started, buffers in the pool.
    rr(&mut rr_conns, 200);
    pipelined(&mut pipe_conns, 50);

    let start = alloc::tracked();
    rr(&mut rr_conns, 1000); // 10 x 1000 = 10,000 messages
    let rr_allocs = alloc::tracked() - start;
    pipelined(&mut pipe_conns, 63); // 10 x 63 x 16 = 10,080 messages
    let total = alloc::tracked() - start;

    handle.stop();
    let stats = loop_thread.join().unwrap();
    drop((rr_conns, pipe_conns));
    // The loop really echoed everything (warm-up included).
    let expected = (10 * 1200 * MSG + 10 * 113 * DEPTH * MSG) as u64;
    assert_eq!(stats.bytes_out, expected, "bytes echoed: {stats:?}");
    assert_eq!(
        rr_allocs, 0,
        "{what}, request/response: {rr_allocs} allocations on the loop thread for 10,000 \
         messages (run with ALLOC_BACKTRACE=1 to see where)"
    );
    assert_eq!(
        total - rr_allocs,
        0,
        "{what}, pipelined: {} allocations on the loop thread for 10,080 messages \
         (run with ALLOC_BACKTRACE=1 to see where)",
        total - rr_allocs
    );
}
