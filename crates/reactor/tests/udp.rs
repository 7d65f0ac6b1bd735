//! `UdpConn` against real sockets: budgeted receive, the send queue, port sharing and
//! broadcast delivery, and no allocation per datagram. Loopback only.

use reactor_test_support as common;

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::run_loop;
use reactor::{CloseReason, Config, Context, Handler, HandlerResult, SendOutcome, SourceId};
use reactor::{UdpConfig, UdpConn, UdpOptions, UdpStats, bind_udp};

#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

fn allocs() -> u64 {
    common::alloc::here()
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Receives datagrams carrying a big-endian u32 sequence number and checks order.
struct Sink {
    udp: UdpConn,
    count: Arc<AtomicUsize>,
    next_seq: u32,
    out_of_order: u32,
    truncated_lens: Vec<usize>,
    done: mpsc::Sender<(UdpStats, u32, Vec<usize>)>,
}

impl Handler for Sink {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.udp.register(cx)?)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        let (next, ooo, trunc) = (
            &mut self.next_seq,
            &mut self.out_of_order,
            &mut self.truncated_lens,
        );
        let st = self.udp.recv(cx, |data, _from, truncated| {
            if truncated {
                trunc.push(data.len());
                return;
            }
            let seq = u32::from_be_bytes(data[..4].try_into().unwrap());
            if seq != *next {
                *ooo += 1;
            }
            *next = seq + 1;
        })?;
        self.count.fetch_add(st.datagrams, Ordering::SeqCst);
        Ok(())
    }
    fn on_close(&mut self, _cx: &mut Context<'_, Self>, _reason: CloseReason) {
        let _ = self.done.send((
            self.udp.stats(),
            self.out_of_order,
            std::mem::take(&mut self.truncated_lens),
        ));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// 2,000 datagrams arrive in order with a budget of 4 per event, so the handler is
/// re-queued again and again (edge-triggered: a lost re-queue would stall here); a
/// datagram longer than `max_datagram` is flagged, not silently cut.
#[test]
fn recv_under_budget_delivers_everything_and_flags_truncation() {
    let count = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let c2 = count.clone();
    let (addr, lp) = run_loop(Config::default(), move |r| {
        let cfg = UdpConfig::default().max_datagram(100).recv_budget(4);
        let udp = UdpConn::bind(
            "127.0.0.1:0".parse().unwrap(),
            &UdpOptions::default(),
            0,
            cfg,
        )
        .unwrap();
        let a = udp.local_addr().unwrap();
        r.spawn(Sink {
            udp,
            count: c2,
            next_seq: 0,
            out_of_order: 0,
            truncated_lens: Vec::new(),
            done: done_tx,
        });
        a
    });
    let tx = StdUdp::bind("127.0.0.1:0").unwrap();
    let mut seq = 0u32;
    // Batches small enough for the default receive buffer: the kernel drops
    // datagrams that do not fit, which would be a test artefact, not a bug.
    for _ in 0..40 {
        for _ in 0..50 {
            let mut d = [0u8; 64];
            d[..4].copy_from_slice(&seq.to_be_bytes());
            tx.send_to(&d, addr).unwrap();
            seq += 1;
        }
        wait_until("a batch", || count.load(Ordering::SeqCst) == seq as usize);
    }
    tx.send_to(&[7u8; 150], addr).unwrap();
    wait_until("the long datagram", || {
        count.load(Ordering::SeqCst) == seq as usize + 1
    });
    lp.stop();
    let (stats, out_of_order, truncated) = done_rx.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(out_of_order, 0);
    assert_eq!(stats.datagrams_in, 2001);
    assert_eq!(stats.bytes_in, 2000 * 64 + 101);
    assert_eq!(
        truncated,
        vec![101],
        "the buffer holds max_datagram + 1 bytes"
    );
    assert_eq!(stats.truncated_in, 1);
    assert!(
        stats.recv_yields > 0,
        "a budget of 4 must have re-queued: {stats:?}"
    );
}

/// Sends 100 numbered datagrams at once into a socket whose peer does not read.
struct Blaster {
    udp: UdpConn,
    report: mpsc::Sender<Report>,
}

#[derive(Debug)]
enum Report {
    Outcomes {
        sent: u32,
        queued: u32,
        dropped: u32,
    },
    Drained(UdpStats),
}

impl Handler for Blaster {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.udp.register(cx)?;
        let (mut sent, mut queued, mut dropped) = (0, 0, 0);
        for seq in 0u32..100 {
            let mut d = [0u8; 200];
            d[..4].copy_from_slice(&seq.to_be_bytes());
            match self.udp.send(cx, &d)? {
                SendOutcome::Sent => sent += 1,
                SendOutcome::Queued => queued += 1,
                SendOutcome::Dropped => dropped += 1,
            }
        }
        let _ = self.report.send(Report::Outcomes {
            sent,
            queued,
            dropped,
        });
        Ok(())
    }
    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        if self.udp.queued() > 0 && self.udp.flush(cx) {
            let _ = self.report.send(Report::Drained(self.udp.stats()));
        }
        Ok(())
    }
}

/// Sends that would block are queued in order, flushed on writable events as the
/// receiver drains, and a full queue drops with a count (never silently).
///
/// Loopback UDP never returns `WouldBlock` on Linux (the loopback driver releases
/// the sender's buffer space at once), so this drives the same `UdpConn` code
/// through an `AF_UNIX` datagram socket pair, whose sender does block: its datagrams
/// stay charged to its small send buffer until the receiver reads them.
#[test]
fn send_queue_keeps_order_flushes_on_writable_and_counts_drops() {
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    socket2::SockRef::from(&ours)
        .set_send_buffer_size(4096)
        .unwrap();
    theirs.set_read_timeout(Some(TIMEOUT)).unwrap();
    // SAFETY: the fd is an open datagram socket we own; `UdpConn` only calls
    // send/recv on it, which work on any connected datagram socket.
    let sock = unsafe { StdUdp::from_raw_fd(ours.into_raw_fd()) };
    let (rep_tx, rep_rx) = mpsc::channel();
    let (_, lp) = run_loop(Config::default(), move |r| {
        let cfg = UdpConfig::default()
            .queue_datagrams(20)
            .queue_bytes(64 * 1024)
            .send_budget(3);
        let udp = UdpConn::new(mio::net::UdpSocket::from_std(sock), 0, cfg);
        r.spawn(Blaster {
            udp,
            report: rep_tx,
        });
    });
    let Report::Outcomes {
        sent,
        queued,
        dropped,
    } = rep_rx.recv_timeout(TIMEOUT).unwrap()
    else {
        panic!("expected outcomes first")
    };
    assert!(sent > 0, "the peer's queue takes some datagrams");
    assert!(sent < 80, "the peer's queue must fill up: sent {sent}");
    assert_eq!(queued, 20, "then the send queue fills to its limit");
    assert_eq!(dropped, 100 - sent - 20);
    // Read everything: each read makes room, a writable edge comes, the queue drains
    // (three datagrams per event: the send budget re-queues the rest).
    let mut buf = [0u8; 1024];
    for expect in 0..sent + queued {
        let n = theirs
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {expect} never came: {e}"));
        assert_eq!(n, 200);
        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert_eq!(seq, expect, "datagrams out of order");
    }
    let Report::Drained(stats) = rep_rx.recv_timeout(TIMEOUT).unwrap() else {
        panic!("expected the drained report")
    };
    assert_eq!(stats.datagrams_out, (sent + queued) as u64);
    assert_eq!(stats.queued, queued as u64);
    assert_eq!(stats.dropped_full, dropped as u64);
    assert_eq!(stats.send_errors, 0);
    theirs.set_nonblocking(true).unwrap();
    assert!(
        theirs.recv(&mut buf).is_err(),
        "dropped datagrams must not arrive"
    );
    drop(lp);
}

/// UDP echo that measures its own allocations after a warm-up.
struct UdpEcho {
    udp: UdpConn,
    seen: u64,
    allocs_after_warmup: u64,
    done: mpsc::Sender<(u64, u64)>,
}

impl Handler for UdpEcho {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(self.udp.register(cx)?)
    }
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        let before = allocs();
        let mut replies = [(0u8, None::<SocketAddr>); 8];
        let mut n = 0;
        self.udp.recv(cx, |data, from, _| {
            if n < replies.len() {
                replies[n] = (data[0], Some(from));
                n += 1;
            }
        })?;
        for &(b, to) in &replies[..n] {
            let _ = self.udp.send_to(cx, &[b; 32], to.unwrap())?;
        }
        self.seen += n as u64;
        if self.seen > 100 {
            self.allocs_after_warmup += allocs() - before;
        }
        Ok(())
    }
    fn on_writable(&mut self, cx: &mut Context<'_, Self>, _s: SourceId) -> HandlerResult {
        self.udp.flush(cx);
        Ok(())
    }
    fn on_close(&mut self, _cx: &mut Context<'_, Self>, _reason: CloseReason) {
        let _ = self.done.send((self.seen, self.allocs_after_warmup));
    }
}

/// Receiving and sending datagrams allocates nothing in steady state.
#[test]
fn no_allocation_per_datagram() {
    let (done_tx, done_rx) = mpsc::channel();
    let (addr, lp) = run_loop(Config::default(), move |r| {
        let cfg = UdpConfig::default().recv_budget(8);
        let udp = UdpConn::bind(
            "127.0.0.1:0".parse().unwrap(),
            &UdpOptions::default(),
            0,
            cfg,
        )
        .unwrap();
        let a = udp.local_addr().unwrap();
        r.spawn(UdpEcho {
            udp,
            seen: 0,
            allocs_after_warmup: 0,
            done: done_tx,
        });
        a
    });
    let c = StdUdp::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..1100u32 {
        c.send_to(&[i as u8; 16], addr).unwrap();
        let (n, _) = c.recv_from(&mut buf).expect("echo reply");
        assert_eq!((n, buf[0]), (32, i as u8));
    }
    lp.stop();
    let (seen, allocs) = done_rx.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(seen, 1100);
    assert_eq!(allocs, 0, "allocations on the loop thread after warm-up");
}

fn recv_one(s: &mio::net::UdpSocket) -> Option<Vec<u8>> {
    let end = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        match s.recv_from(&mut buf) {
            Ok((n, _)) => return Some(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    None
}

/// What docs/discovery.md relies on: sockets sharing a port through SO_REUSEADDR,
/// SO_REUSEPORT or both each receive every broadcast to that port (unicast would go
/// to one of them); without either option the second bind fails.
#[test]
fn every_socket_sharing_the_port_receives_each_broadcast() {
    let bcast: std::net::IpAddr = "127.255.255.255".parse().unwrap();
    for (reuse_addr, reuse_port) in [(true, false), (false, true), (true, true)] {
        let opts = UdpOptions::default()
            .reuse_addr(reuse_addr)
            .reuse_port(reuse_port)
            .broadcast(true);
        let first = bind_udp(SocketAddr::new(bcast, 0), &opts).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut socks = vec![first];
        for _ in 0..2 {
            socks.push(bind_udp(SocketAddr::new(bcast, port), &opts).unwrap());
        }
        let sender = StdUdp::bind("127.0.0.1:0").unwrap();
        sender.set_broadcast(true).unwrap();
        sender
            .send_to(b"hello all", SocketAddr::new(bcast, port))
            .unwrap();
        for (i, s) in socks.iter().enumerate() {
            assert_eq!(
                recv_one(s).as_deref(),
                Some(&b"hello all"[..]),
                "socket {i} (SO_REUSEADDR={reuse_addr}, SO_REUSEPORT={reuse_port}) missed it"
            );
        }
    }
    let plain = UdpOptions::default();
    let first = bind_udp(SocketAddr::new(bcast, 0), &plain).unwrap();
    let port = first.local_addr().unwrap().port();
    let err = bind_udp(SocketAddr::new(bcast, port), &plain).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // And sending to a broadcast address needs SO_BROADCAST.
    let s = StdUdp::bind("127.0.0.1:0").unwrap();
    let e = s.send_to(b"x", SocketAddr::new(bcast, port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
}
