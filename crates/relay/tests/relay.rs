//! The relay against real sockets on 127.0.0.1:0: reservation reclamation, limits,
//! circuits and hostile input, in-process; and the three programs (relay,
//! relay-client reserve, relay-client connect) carrying data end to end.

use reactor_test_support as common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    Server, Stream, check_stream, pseudo_random_bytes, push_until_stuck, reset, run_loop,
    send_stream, small_buffer_connect, unacked,
};
use reactor::Config;
use reactor::echo::{EchoOptions, echo_listener};
use reactor_relay::proto::{self, Message, Reason};
use reactor_relay::server::{self, RelayConfig};

#[global_allocator]
static ALLOC: common::alloc::Counting = common::alloc::Counting;

/// Every blocking read in these tests gives up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn relay(cfg: RelayConfig) -> (SocketAddr, common::Running) {
    run_loop(Config::default(), move |r| {
        server::spawn(r, "127.0.0.1:0".parse().unwrap(), cfg)
            .unwrap()
            .local_addr
    })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A message from the relay, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Reserved(String),
    Refused(Reason),
    Incoming(u64, String),
    Connected(u64),
    Ack,
    /// End of file or reset.
    Closed,
}

/// A hand-written protocol client on a blocking socket.
struct Peer {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    fn connect(addr: SocketAddr) -> Peer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Peer { s, buf: Vec::new() }
    }

    /// A connection with small kernel buffers (and a write timeout), so that what
    /// this end does not read piles up in the relay rather than in our kernel.
    fn small(addr: SocketAddr) -> Peer {
        let s = small_buffer_connect(addr, IO_TIMEOUT);
        s.set_nodelay(true).unwrap();
        Peer { s, buf: Vec::new() }
    }

    fn send(&mut self, msg: &Message<'_>) {
        let mut out = Vec::new();
        proto::encode(msg, &mut out).unwrap();
        self.s.write_all(&out).unwrap();
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> Got {
        loop {
            match proto::decode(&self.buf).expect("relay sent a bad frame") {
                Some((msg, used)) => {
                    let got = match msg {
                        Message::Reserved { id, .. } => Got::Reserved(id.to_string()),
                        Message::Refused { reason, .. } => Got::Refused(reason),
                        Message::Incoming { circuit, id } => Got::Incoming(circuit, id.to_string()),
                        Message::Connected { circuit } => Got::Connected(circuit),
                        Message::HeartbeatAck => Got::Ack,
                        other => panic!("relay sent a client message {other:?}"),
                    };
                    self.buf.drain(..used);
                    return got;
                }
                None => {
                    let mut tmp = [0u8; 4096];
                    match self.s.read(&mut tmp) {
                        Ok(0) => return Got::Closed,
                        Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Got::Closed,
                        Err(e) => panic!("no answer from the relay: {e}"),
                    }
                }
            }
        }
    }

    /// Sends `RESERVE` and returns the answer.
    fn reserve(&mut self, peer: &str, id: &str) -> Got {
        self.send(&Message::Reserve { peer, id });
        self.recv()
    }

    /// Reads raw circuit bytes until end of file (or reset), at most `limit`.
    fn read_to_end(&mut self, limit: usize) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let mut tmp = vec![0u8; 64 * 1024];
        while out.len() <= limit {
            match self.s.read(&mut tmp) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("circuit stalled after {} bytes: {e}", out.len()),
            }
        }
        out
    }

    fn expect_closed(&mut self) {
        assert_eq!(self.recv(), Got::Closed);
    }

    /// The next message if one arrives within `t`; `None` if the relay says nothing.
    fn recv_within(&mut self, t: Duration) -> Option<Got> {
        if proto::decode(&self.buf)
            .expect("relay sent a bad frame")
            .is_none()
        {
            self.s.set_read_timeout(Some(t)).unwrap();
            let mut tmp = [0u8; 4096];
            let r = self.s.read(&mut tmp);
            self.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            match r {
                Ok(0) => return Some(Got::Closed),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(Got::Closed),
                Err(e) => panic!("no answer from the relay: {e}"),
            }
        }
        Some(self.recv())
    }
}

fn reserved(id: &str) -> Got {
    Got::Reserved(id.to_string())
}

/// Opens a circuit to `id`, whose reserver's control connection is `control`.
/// Returns (connector end, reserver end), both past `CONNECTED`.
fn open_circuit(addr: SocketAddr, control: &mut Peer, id: &str) -> (Peer, Peer) {
    open_circuit_from(Peer::connect(addr), addr, control, id)
}

/// [`open_circuit`] with `connector` (a fresh connection to the relay at `addr`)
/// as the connector's end.
fn open_circuit_from(
    mut connector: Peer,
    addr: SocketAddr,
    control: &mut Peer,
    id: &str,
) -> (Peer, Peer) {
    connector.send(&Message::Connect { id });
    let Got::Incoming(c, got_id) = control.recv() else {
        panic!("no INCOMING on the control connection");
    };
    assert_eq!(got_id, id);
    let mut acceptor = Peer::connect(addr);
    acceptor.send(&Message::Accept { circuit: c });
    assert_eq!(acceptor.recv(), Got::Connected(c));
    assert_eq!(connector.recv(), Got::Connected(c));
    (connector, acceptor)
}

fn cfg(f: impl FnOnce(&mut RelayConfig)) -> RelayConfig {
    let mut c = RelayConfig::default();
    f(&mut c);
    c
}

#[test]
fn reserve_and_disconnect_100_times_never_exhausts_the_limits() {
    // One slot per peer and per IP: any reservation leaked by a dead connection
    // would refuse the next one.
    let (addr, _relay) = relay(cfg(|c| {
        c.limits.per_peer = 1;
        c.limits.per_ip = 1;
        c.limits.grace = secs(30.0);
    }));
    for i in 0..100 {
        let mut p = Peer::connect(addr);
        assert_eq!(p.reserve("flaky", "alice"), reserved("alice"), "round {i}");
        drop(p);
    }
    // Still held by "flaky" (in grace or active), so nobody else gets it...
    let mut other = Peer::connect(addr);
    assert_eq!(
        other.reserve("thief", "alice"),
        Got::Refused(Reason::IdTaken)
    );
    // ...and "flaky" still has it, in the one slot.
    let mut p = Peer::connect(addr);
    assert_eq!(p.reserve("flaky", "alice"), reserved("alice"));
}

#[test]
fn reconnect_within_grace_keeps_the_slot() {
    let (addr, _relay) = relay(cfg(|c| c.limits.grace = secs(1.0)));
    let mut p = Peer::connect(addr);
    assert_eq!(p.reserve("bob-peer", "bob"), reserved("bob"));
    drop(p);
    std::thread::sleep(secs(0.2)); // the relay sees the close: "bob" is in grace
    let mut thief = Peer::connect(addr);
    assert_eq!(
        thief.reserve("mallory", "bob"),
        Got::Refused(Reason::IdTaken)
    );
    let mut connector = Peer::connect(addr);
    connector.send(&Message::Connect { id: "bob" });
    assert_eq!(connector.recv(), Got::Refused(Reason::NoReservation));
    // The owner comes back within grace and gets it again; connectors reach it.
    let mut p = Peer::connect(addr);
    assert_eq!(p.reserve("bob-peer", "bob"), reserved("bob"));
    let (mut a, mut b) = open_circuit(addr, &mut p, "bob");
    a.raw(b"ping");
    let mut got = [0u8; 4];
    b.s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    // Without a reconnect, the grace period ends and the id is free.
    let mut q = Peer::connect(addr);
    assert_eq!(q.reserve("carol-peer", "carol"), reserved("carol"));
    drop(q);
    std::thread::sleep(secs(1.6));
    assert_eq!(thief.reserve("mallory", "carol"), reserved("carol"));
}

#[test]
fn silent_client_loses_its_slot_after_the_heartbeat_timeout() {
    let (addr, _relay) = relay(cfg(|c| c.limits.heartbeat_timeout = secs(0.6)));
    let mut silent = Peer::connect(addr);
    let mut alive = Peer::connect(addr);
    assert_eq!(silent.reserve("s", "quiet"), reserved("quiet"));
    assert_eq!(alive.reserve("a", "chatty"), reserved("chatty"));
    let start = Instant::now();
    // The live one keeps sending heartbeats for twice the timeout.
    while start.elapsed() < secs(1.5) {
        alive.send(&Message::Heartbeat);
        assert_eq!(alive.recv(), Got::Ack);
        std::thread::sleep(secs(0.15));
    }
    // The silent one was told why and closed, and its slot is free at once.
    assert_eq!(silent.recv(), Got::Refused(Reason::Timeout));
    silent.expect_closed();
    let mut other = Peer::connect(addr);
    assert_eq!(other.reserve("o", "quiet"), reserved("quiet"));
    // The live one still holds its id.
    assert_eq!(other.reserve("o", "chatty"), Got::Refused(Reason::IdTaken));
    let (mut a, _b) = open_circuit(addr, &mut alive, "chatty");
    a.raw(b"x");
}

#[test]
fn every_limit_is_enforced_with_its_reason() {
    // Per peer.
    let (addr, _r1) = relay(cfg(|c| c.limits.per_peer = 2));
    let mut p = Peer::connect(addr);
    assert_eq!(p.reserve("p", "a"), reserved("a"));
    assert_eq!(p.reserve("p", "b"), reserved("b"));
    assert_eq!(p.reserve("p", "c"), Got::Refused(Reason::LimitPerPeer));
    // Re-reserving a held id is not a new slot.
    assert_eq!(p.reserve("p", "a"), reserved("a"));

    // Per IP (every test client is 127.0.0.1).
    let (addr, _r2) = relay(cfg(|c| c.limits.per_ip = 2));
    let mut p = Peer::connect(addr);
    assert_eq!(p.reserve("p1", "a"), reserved("a"));
    assert_eq!(p.reserve("p2", "b"), reserved("b"));
    assert_eq!(p.reserve("p3", "c"), Got::Refused(Reason::LimitPerIp));

    // Total.
    let (addr, _r3) = relay(cfg(|c| c.limits.max_total = 2));
    let mut p = Peer::connect(addr);
    assert_eq!(p.reserve("p1", "a"), reserved("a"));
    assert_eq!(p.reserve("p2", "b"), reserved("b"));
    assert_eq!(p.reserve("p3", "c"), Got::Refused(Reason::LimitTotal));

    // Id taken, no reservation, refresh, circuits per peer, bad requests.
    let (addr, _r4) = relay(cfg(|c| c.circuits.max_per_peer = 1));
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("owner", "svc"), reserved("svc"));
    let mut other = Peer::connect(addr);
    assert_eq!(other.reserve("other", "svc"), Got::Refused(Reason::IdTaken));
    other.send(&Message::Refresh { id: "svc" });
    assert_eq!(other.recv(), Got::Refused(Reason::NoReservation));
    owner.send(&Message::Refresh { id: "svc" });
    assert_eq!(owner.recv(), reserved("svc"));
    let mut c = Peer::connect(addr);
    c.send(&Message::Connect { id: "nobody" });
    assert_eq!(c.recv(), Got::Refused(Reason::NoReservation));
    let (_a, _b) = open_circuit(addr, &mut owner, "svc");
    let mut c2 = Peer::connect(addr);
    c2.send(&Message::Connect { id: "svc" });
    assert_eq!(c2.recv(), Got::Refused(Reason::CircuitLimit));
    let mut acc = Peer::connect(addr);
    acc.send(&Message::Accept { circuit: 12345 });
    assert_eq!(acc.recv(), Got::Refused(Reason::UnknownCircuit));
    acc.expect_closed();
    // A control connection cannot become a circuit end.
    owner.send(&Message::Connect { id: "svc" });
    assert_eq!(owner.recv(), Got::Refused(Reason::BadRequest));
    owner.expect_closed();
}

#[test]
fn circuit_byte_limit_closes_the_circuit() {
    const LIMIT: usize = 64 * 1024;
    let (addr, _relay) = relay(cfg(|c| c.circuits.max_bytes_per_direction = LIMIT as u64));
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (mut a, mut b) = open_circuit(addr, &mut owner, "svc");
    let data = pseudo_random_bytes(7, 4 * LIMIT);
    let mut w = a.s.try_clone().unwrap();
    let sent = data.clone();
    // The relay stops reading this side, so the write may fail: that is fine.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&sent);
    });
    let got = b.read_to_end(2 * LIMIT);
    assert_eq!(got.len(), LIMIT, "exactly the budget is forwarded");
    assert_eq!(got, data[..LIMIT]);
    a.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert!(
        a.read_to_end(LIMIT).is_empty(),
        "the other end is closed too"
    );
    writer.join().unwrap();
    // The relay carries on.
    let (mut c, mut d) = open_circuit(addr, &mut owner, "svc");
    d.raw(b"again");
    let mut buf = [0u8; 5];
    c.s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
}

/// Sends `CONNECT id` on a new connection until the relay opens the circuit (it
/// waits for the reserver instead of answering) rather than refusing it with
/// `CircuitLimit`, for at most `within`; `holder` names who holds the slot meanwhile.
/// Returns the connection, waiting for the reserver.
fn connect_when_free(addr: SocketAddr, id: &str, within: Duration, holder: &str) -> Peer {
    let start = Instant::now();
    let mut next = Peer::connect(addr);
    loop {
        next.send(&Message::Connect { id });
        match next.recv_within(secs(0.2)) {
            // Waiting for the reserver: the circuit was opened.
            None => return next,
            Some(Got::Refused(Reason::CircuitLimit)) => {}
            Some(other) => panic!("{holder}: CONNECT answered {other:?}"),
        }
        assert!(
            start.elapsed() < within,
            "{holder} still holds its circuit after {:?}",
            start.elapsed()
        );
        std::thread::sleep(secs(0.02));
    }
}

/// How a connector leaves while it waits for the reserver's `ACCEPT`.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// After its `INCOMING` reached the reserver: a FIN, on its own event.
    CloseAfterIncoming,
    /// The same, with a reset (`SO_LINGER` 0).
    ResetAfterIncoming,
    /// Right after `CONNECT`: the relay may read the frame and the FIN together.
    CloseAtOnce,
}

/// A connector sends `CONNECT`, leaves as `leave` says while it waits for the
/// reserver, and the relay must notice at once: its circuit slot is free again
/// well before the accept timeout, and the reserver's `ACCEPT` of its circuit is
/// refused rather than bridged to a dead socket.
fn connector_leaves_while_waiting(leave: Leave) {
    // One circuit per reserving peer: a dead connector's pending circuit would
    // refuse every other connector until the (long) accept timeout.
    const ACCEPT_TIMEOUT: f64 = 30.0;
    const NOTICED_WITHIN: f64 = 2.0;
    let (addr, _relay) = relay(cfg(|c| {
        c.circuits.accept_timeout = secs(ACCEPT_TIMEOUT);
        c.circuits.max_per_peer = 1;
    }));
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let mut dead = Peer::connect(addr);
    dead.send(&Message::Connect { id: "svc" });
    let mut incoming = Vec::new();
    match leave {
        Leave::CloseAtOnce => drop(dead),
        Leave::CloseAfterIncoming | Leave::ResetAfterIncoming => {
            let Got::Incoming(c, _) = owner.recv() else {
                panic!("{leave:?}: no INCOMING for the first connector");
            };
            incoming.push(c);
            if matches!(leave, Leave::ResetAfterIncoming) {
                socket2::SockRef::from(&dead.s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(dead);
        }
    }
    // The slot comes back well before the accept timeout: another connector
    // is let through instead of refused with CircuitLimit.
    let mut next = connect_when_free(
        addr,
        "svc",
        secs(NOTICED_WITHIN),
        &format!("{leave:?}: the connector that left (accept timeout {ACCEPT_TIMEOUT} s)"),
    );
    // Every INCOMING but the last is for the dead connector (in CloseAtOnce the
    // relay may have seen it leave before telling the reserver at all). The
    // reserver's ACCEPT of it is refused: it is not bridged to a dead socket.
    loop {
        match owner.recv_within(secs(0.5)) {
            Some(Got::Incoming(c, _)) => incoming.push(c),
            None => break,
            Some(other) => panic!("{leave:?}: control connection got {other:?}"),
        }
    }
    let (live, dead_ones) = incoming
        .split_last()
        .expect("INCOMING for the live connector");
    assert!(dead_ones.len() <= 1, "{leave:?}: {incoming:?}");
    for &c in dead_ones {
        let mut acceptor = Peer::connect(addr);
        acceptor.send(&Message::Accept { circuit: c });
        assert_eq!(
            acceptor.recv(),
            Got::Refused(Reason::UnknownCircuit),
            "{leave:?}: the reserver was handed the circuit of a connector that left"
        );
    }
    // The live connector is bridged and carries data.
    let mut acceptor = Peer::connect(addr);
    acceptor.send(&Message::Accept { circuit: *live });
    assert_eq!(acceptor.recv(), Got::Connected(*live), "{leave:?}");
    assert_eq!(next.recv(), Got::Connected(*live), "{leave:?}");
    next.raw(b"ping");
    let mut buf = [0u8; 4];
    acceptor.s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn connector_that_closes_after_incoming_is_dropped_at_once() {
    connector_leaves_while_waiting(Leave::CloseAfterIncoming);
}

#[test]
fn connector_that_resets_after_incoming_is_dropped_at_once() {
    connector_leaves_while_waiting(Leave::ResetAfterIncoming);
}

#[test]
fn connector_that_closes_right_after_connect_is_dropped_at_once() {
    connector_leaves_while_waiting(Leave::CloseAtOnce);
}

#[test]
fn circuit_duration_limit_closes_the_circuit() {
    let (addr, _relay) = relay(cfg(|c| c.circuits.max_duration = secs(1.0)));
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let start = Instant::now();
    let (mut a, mut b) = open_circuit(addr, &mut owner, "svc");
    a.raw(b"hello");
    b.raw(b"world");
    let got_b = b.read_to_end(100);
    let got_a = a.read_to_end(100);
    let took = start.elapsed();
    assert_eq!(got_b, b"hello");
    assert_eq!(got_a, b"world");
    assert!(took >= secs(0.9), "closed after {took:?}, before its limit");
    assert!(took < secs(4.0), "closed only after {took:?}");
}

#[test]
fn hostile_input_closes_only_that_connection() {
    let (addr, _relay) = relay(cfg(|c| {
        c.limits.heartbeat_timeout = secs(30.0);
        c.request_timeout = secs(1.0);
    }));
    let mut good = Peer::connect(addr);
    assert_eq!(good.reserve("g", "good"), reserved("good"));

    // Unknown message type.
    let mut h = Peer::connect(addr);
    h.raw(&[0x47, 0, 0]);
    assert_eq!(h.recv(), Got::Refused(Reason::BadRequest));
    h.expect_closed();
    // Oversized id inside an acceptable frame length.
    let mut h = Peer::connect(addr);
    let mut frame = vec![0x01, 0, 68, 1, b'p', 65];
    frame.extend_from_slice(&[b'x'; 65]);
    h.raw(&frame);
    assert_eq!(h.recv(), Got::Refused(Reason::BadRequest));
    h.expect_closed();
    // Oversized length: rejected from the header alone.
    let mut h = Peer::connect(addr);
    h.raw(&[0x01, 0xff, 0xff]);
    assert_eq!(h.recv(), Got::Refused(Reason::BadRequest));
    h.expect_closed();
    // A relay-to-client message from a client.
    let mut h = Peer::connect(addr);
    h.raw(&[0x84, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(h.recv(), Got::Refused(Reason::BadRequest));
    h.expect_closed();
    // A megabyte of garbage.
    let mut h = Peer::connect(addr);
    let _ = h.s.write_all(&pseudo_random_bytes(3, 1 << 20));
    let _ = h.s.shutdown(Shutdown::Write);
    let mut sink = Vec::new();
    let _ = h.s.read_to_end(&mut sink);
    assert!(
        sink.len() < 1024,
        "garbage got {} bytes of answers",
        sink.len()
    );

    // Trickled bytes: a valid frame one byte at a time works...
    let mut t = Peer::connect(addr);
    let mut frame = Vec::new();
    proto::encode(
        &Message::Reserve {
            peer: "t",
            id: "trickle",
        },
        &mut frame,
    )
    .unwrap();
    for b in &frame {
        t.raw(&[*b]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(t.recv(), reserved("trickle"));
    // ...but a frame that never completes is closed after the request timeout,
    // however steadily its bytes trickle in.
    let mut slow = Peer::connect(addr);
    let start = Instant::now();
    let mut closed = false;
    for b in &frame[..frame.len() - 1] {
        if slow.s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    if !closed {
        assert_eq!(slow.recv(), Got::Refused(Reason::Timeout));
        slow.expect_closed();
    }
    assert!(start.elapsed() < secs(4.0));

    // The good connection never noticed.
    good.send(&Message::Heartbeat);
    assert_eq!(good.recv(), Got::Ack);
    let (mut a, mut b) = open_circuit(addr, &mut good, "good");
    a.raw(b"still here");
    let mut buf = [0u8; 10];
    b.s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

/// A refusal is not lost to a reset when the client is still sending: the relay
/// stops reading a connection it refuses, and closing a socket with unread input
/// makes the kernel send a reset at once and throw away what it had not yet
/// delivered, the refusal included. The client here has small buffers and reads
/// its answers only after sending everything, so the answers are still in the
/// relay's kernel when it decides to close.
#[test]
fn a_refusal_reaches_a_client_that_is_still_sending() {
    let (addr, _relay) = relay(cfg(|c| c.limits.heartbeat_timeout = secs(30.0)));
    let mut p = Peer::small(addr);
    const HEARTBEATS: usize = 400_000;
    let mut out = Vec::new();
    for _ in 0..HEARTBEATS {
        proto::encode(&Message::Heartbeat, &mut out).unwrap();
    }
    out.extend_from_slice(&[0x47, 0, 0]); // unknown message type
    // More than the relay reads in one go, so some stays unread in its kernel.
    out.extend_from_slice(&pseudo_random_bytes(5, 4 << 20));
    let mut w = p.s.try_clone().unwrap();
    // Fails once the relay stops reading (timeout) or resets us: both expected.
    let writer = std::thread::spawn(move || w.write_all(&out).is_ok());
    // Not reading yet: the answers fill our buffers and the relay's, so the relay
    // stops reading us (it pauses a client whose answers pile up).
    std::thread::sleep(Duration::from_millis(300));
    let mut acks = 0;
    let t0 = Instant::now();
    loop {
        match p.recv() {
            Got::Ack => acks += 1,
            Got::Refused(Reason::BadRequest) => break,
            other => panic!(
                "got {other:?} after {acks} of {HEARTBEATS} acks, before the refusal ({:?} in)",
                t0.elapsed()
            ),
        }
    }
    assert_eq!(acks, HEARTBEATS);
    // Unblocks the writer if it still waits.
    let _ = p.s.shutdown(Shutdown::Both);
    let _ = writer.join();
}

/// Starts `relay-client ... reserve` and waits for `reserved ID`.
fn reserve_client(relay: SocketAddr, id: &str, peer: &str, forward: SocketAddr) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay-client"))
        .args(["--relay", &relay.to_string(), "reserve", "--id", id])
        .args(["--peer", peer, "--forward", &forward.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut r = BufReader::new(stdout);
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let line = rx.recv_timeout(secs(20.0)).expect("no `reserved` line");
    assert_eq!(line.trim(), format!("reserved {id}"));
    child
}

/// Sends `data` through `addr` (an echo behind a tunnel) from one thread while
/// reading the echo on this one; returns what came back.
fn echo_through(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(20.0))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).expect("tunnel stalled");
    writer.join().unwrap();
    got
}

#[test]
fn three_programs_carry_data_byte_exact() {
    let (echo, _echo_loop) = run_loop(Config::default(), |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(["--listen", "127.0.0.1:0", "--circuit-bytes", "0"]);
    cmd.args(["--stats-interval", "0.2"]);
    let mut relay = Server::start(cmd);
    let mut reserver = reserve_client(relay.addr, "svc", "svc-peer", echo);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay-client"));
    cmd.args(["--relay", &relay.addr.to_string(), "connect", "--id", "svc"]);
    cmd.args(["--listen", "127.0.0.1:0"]);
    let mut connector = Server::start(cmd);

    // Two tunnels at once, several MiB each way.
    let d1 = pseudo_random_bytes(11, 6 << 20);
    let d2 = pseudo_random_bytes(12, 3 << 20);
    let (e1, e2) = (d1.clone(), d2.clone());
    let t = connector.addr;
    let h1 = std::thread::spawn(move || echo_through(t, e1));
    let h2 = std::thread::spawn(move || echo_through(t, e2));
    let (g1, g2) = (h1.join().unwrap(), h2.join().unwrap());
    assert_eq!(g1.len(), d1.len());
    assert!(g1 == d1, "tunnel 1 corrupted data");
    assert_eq!(g2.len(), d2.len());
    assert!(g2 == d2, "tunnel 2 corrupted data");

    // A second reserver for the same id is refused, with the relay's reason.
    let out = Command::new(env!("CARGO_BIN_EXE_relay-client"))
        .args(["--relay", &relay.addr.to_string(), "reserve", "--id", "svc"])
        .args(["--peer", "someone-else", "--forward", &echo.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(Reason::IdTaken.as_str()),
        "no reason in: {err}"
    );

    // A periodic stats line counts what happened...
    assert!(
        relay.wait_stderr("refused=1 released=0 bridged=2", secs(10.0)),
        "no stats line: {}",
        relay.stderr_text()
    );
    // ...and a last one comes at shutdown, which exits 0.
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit(secs(10.0)), Some(0));
    let log = relay.stderr_text();
    let signal = log.find("received signal").expect("signal not logged");
    assert!(
        log[signal..].contains("relay stats: reservations held=1"),
        "no stats line at shutdown: {log}"
    );
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(reserver.id() as i32, libc::SIGTERM) };
    connector.signal(libc::SIGTERM);
    assert_eq!(
        connector.wait_exit(secs(10.0)),
        Some(0),
        "connect: exit status"
    );
    let end = Instant::now() + secs(10.0);
    let status = loop {
        if let Some(st) = reserver.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = reserver.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.is_some_and(|s| s.success()), "reserve: {status:?}");
}

#[test]
fn client_binary_rejects_bad_arguments() {
    let long = "x".repeat(65);
    for args in [
        &["--relay", "127.0.0.1:1", "connect", "--id", &long][..],
        &[
            "--relay",
            "127.0.0.1:1",
            "reserve",
            "--id",
            "",
            "--forward",
            "x:1",
        ],
        &["--relay", "no port", "connect", "--id", "a"],
        &["--relay", "127.0.0.1:1", "reserve", "--id", "a"],
        &[
            "--relay",
            "127.0.0.1:1",
            "reserve",
            "--id",
            "a",
            "--forward",
            "x:1",
            "--max-circuits",
            "-1",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_relay-client"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!out.stderr.is_empty());
        assert!(out.stdout.is_empty(), "{args:?} printed something");
    }
}

#[test]
fn relay_binary_rejects_bad_arguments() {
    for args in [
        &["--ttl", "-1"][..],
        &["--listen", "nowhere"],
        &["--ttl", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!out.stderr.is_empty());
    }
}

/// A thread-based TCP forwarder whose connections can be cut, to drop a
/// client's control connection under it.
struct Cutter {
    addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Cutter {
    fn new(to: SocketAddr) -> Cutter {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let list = conns.clone();
        std::thread::spawn(move || {
            for a in l.incoming() {
                let Ok(a) = a else { break };
                let Ok(b) = TcpStream::connect(to) else {
                    continue;
                };
                let mut held = list.lock().unwrap();
                held.push(a.try_clone().unwrap());
                held.push(b.try_clone().unwrap());
                for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Cutter { addr, conns }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn reserve_client_library_reconnects_and_keeps_its_id() {
    use reactor_relay::client::{ClientEvent, ReserveClient, ReserveOptions};
    let (echo, _echo_loop) = run_loop(Config::default(), |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let (addr, _relay) = relay(cfg(|c| c.limits.grace = secs(5.0)));
    let cutter = Cutter::new(addr);
    let (tx, rx) = mpsc::channel::<String>();
    let relay_via = cutter.addr;
    let (_, _client) = run_loop(Config::default(), move |r| {
        let mut opts = ReserveOptions::new(relay_via, "lib-peer", "lib", &echo.to_string());
        opts.reconnect_delay = secs(0.1);
        opts.heartbeat = secs(0.2);
        let hook = Box::new(move |_: &mut reactor::Loop<'_>, ev: &ClientEvent<'_>| {
            let _ = tx.send(match ev {
                ClientEvent::Reserved { first, .. } => format!("reserved first={first}"),
                ClientEvent::Refused { reason, .. } => format!("refused {reason:?}"),
                ClientEvent::Disconnected { .. } => "disconnected".to_string(),
            });
        });
        r.spawn(ReserveClient::new(opts, hook).unwrap());
    });
    let next = || rx.recv_timeout(IO_TIMEOUT).expect("no client event");
    assert_eq!(next(), "reserved first=true");
    cutter.cut();
    // Meanwhile nobody else can take the id.
    let mut thief = Peer::connect(addr);
    assert_eq!(thief.reserve("thief", "lib"), Got::Refused(Reason::IdTaken));
    assert_eq!(next(), "disconnected");
    assert_eq!(next(), "reserved first=false");
    // The reconnected client serves circuits (to the echo server).
    let mut c = Peer::connect(addr);
    c.send(&Message::Connect { id: "lib" });
    assert!(matches!(c.recv(), Got::Connected(_)));
    let data = pseudo_random_bytes(5, 100_000);
    let mut w = c.s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let got = c.read_to_end(data.len() + 1);
    writer.join().unwrap();
    assert!(got == data, "echo through the circuit differs");
}

/// Sends `mib` MiB from `a` to `b` and `b` to `a` at once and checks the counts.
fn transfer(a: &mut Peer, b: &mut Peer, mib: usize) {
    let chunk = pseudo_random_bytes(9, 1 << 20);
    let mut threads = Vec::new();
    for (mut w, mut r) in [
        (a.s.try_clone().unwrap(), b.s.try_clone().unwrap()),
        (b.s.try_clone().unwrap(), a.s.try_clone().unwrap()),
    ] {
        let c = chunk.clone();
        threads.push(std::thread::spawn(move || {
            for _ in 0..mib {
                w.write_all(&c).unwrap();
            }
        }));
        let chunk = chunk.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..mib {
                r.read_exact(&mut buf).expect("circuit stalled");
                assert!(buf == chunk, "circuit corrupted data");
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn circuit_forwarding_does_not_allocate_per_message() {
    let (addr, _relay) = run_loop(Config::default(), |r| {
        common::alloc::track_this_thread();
        let cfg = cfg(|c| c.circuits.max_bytes_per_direction = 0);
        server::spawn(r, "127.0.0.1:0".parse().unwrap(), cfg)
            .unwrap()
            .local_addr
    });
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (mut a, mut b) = open_circuit(addr, &mut owner, "svc");
    transfer(&mut a, &mut b, 8); // warm the buffer pool
    let before = common::alloc::tracked();
    const MIB: usize = 64;
    transfer(&mut a, &mut b, MIB);
    let allocs = common::alloc::tracked() - before;
    eprintln!("{allocs} allocations on the relay loop for {MIB} MiB each way");
    // Reads are at most 64 KiB, so 2 x 64 MiB is over 2,000 messages.
    assert!(allocs < 50, "{allocs} allocations for {MIB} MiB each way");
}

// ---- A circuit end that fails: the other end still gets what the relay holds ----

/// A relay without a byte budget (these tests move more than the default), whose
/// queues count as congested at 256 KiB, so a stuck end holds the relay back early.
fn unlimited_relay() -> (SocketAddr, common::Running) {
    relay(cfg(|c| {
        c.circuits.max_bytes_per_direction = 0;
        c.conn.high_watermark = 256 * 1024;
        c.conn.low_watermark = 64 * 1024;
    }))
}

/// A circuit's directions are independent: the connector uploads 16 MiB before it
/// reads anything while the reserver sends 16 MiB back (and reads). A relay that
/// paused an end for its *own* unread download would stop the upload, and both
/// ends would wait for ever.
#[test]
fn a_circuit_upload_is_not_held_up_by_its_own_unread_download() {
    const N: usize = 16 << 20;
    let (addr, _relay) = unlimited_relay();
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (a, b) = open_circuit(addr, &mut owner, "svc");
    for s in [&a.s, &b.s] {
        s.set_write_timeout(Some(secs(20.0))).unwrap();
        s.set_read_timeout(Some(secs(20.0))).unwrap();
    }
    let b_down = b.s.try_clone().unwrap();
    let reserver = std::thread::spawn(move || {
        let sent = std::thread::spawn(move || drop(send_stream(b_down, 62, N)));
        let got = check_stream(b.s, 61);
        sent.join().unwrap();
        got
    });
    // The connector: everything up first, only then its download.
    let up = send_stream(a.s, 61, N);
    assert_eq!(check_stream(up, 62), N, "the connector's download");
    assert_eq!(reserver.join().unwrap(), N, "the reserver's upload");
}

/// The reserver's end sends its last bytes and closes while the connector, not
/// reading yet, is still uploading; the relay's writes to the closed end fail (its
/// kernel answers with a reset). Everything the relay took from the reserver must
/// still reach the connector, followed by a clean end of file.
#[test]
fn reserver_closing_after_its_last_bytes_still_delivers_them() {
    const D: usize = 768 << 10;
    let (addr, _relay) = unlimited_relay();
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (a, b) = open_circuit_from(Peer::small(addr), addr, &mut owner, "svc");
    assert!(a.buf.is_empty() && b.buf.is_empty());
    b.s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    // All of it, a FIN, and a close with nothing unread: no reset yet.
    drop(send_stream(b.s, 51, D));
    std::thread::sleep(secs(0.2)); // the relay reads the rest and the FIN
    let mut up = a.s.try_clone().unwrap();
    for _ in 0..10 {
        if up.write_all(&[1u8; 16 * 1024]).is_err() {
            break;
        }
        std::thread::sleep(secs(0.02));
    }
    assert_eq!(
        check_stream(a.s, 51),
        D,
        "the connector's download was cut short"
    );
}

/// The reserver's end sends until everything is stuck (the connector does not read
/// yet, so the relay holds a full queue for it and stops reading the reserver), then
/// resets. Every byte the relay's side acknowledged reaches the connector, then a
/// clean end of file; only what the reserver's kernel still held is lost, as over a
/// direct TCP connection.
#[test]
fn reserver_reset_after_its_last_bytes_keeps_them() {
    let (addr, _relay) = unlimited_relay();
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (a, mut b) = open_circuit_from(Peer::small(addr), addr, &mut owner, "svc");
    let sent = push_until_stuck(&mut b.s, 52);
    let acked = sent - unacked(&b.s);
    reset(b.s);
    std::thread::sleep(secs(0.2));
    assert_eq!(
        check_stream(a.s, 52),
        acked,
        "the connector's download was cut short"
    );
}

/// The prompt end through a circuit: the reserver resets in the middle of a
/// transfer (with the connector's upload unread); the connector gets every byte the
/// relay had received, then end of file, and its own writes fail within a second
/// of reading that end, not at the relay's linger timeout (`LINGER`, 2 s): the
/// circuit closes once the connector's kernel has acknowledged everything.
#[test]
fn a_reserver_reset_mid_transfer_ends_the_connector_promptly() {
    const D: usize = 1 << 20;
    let (addr, _relay) = unlimited_relay();
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (a, b) = open_circuit_from(Peer::connect(addr), addr, &mut owner, "svc");
    assert!(a.buf.is_empty() && b.buf.is_empty());
    let mut w = a.s.try_clone().unwrap();
    w.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let writer = std::thread::spawn(move || {
        let t0 = Instant::now();
        loop {
            if w.write_all(&[1u8; 16 * 1024]).is_err() {
                return Some(Instant::now());
            }
            if t0.elapsed() > secs(20.0) {
                return None;
            }
        }
    });
    let mut s = b.s;
    let mut buf = vec![0u8; D];
    Stream(54).fill(&mut buf);
    s.write_all(&buf).unwrap();
    while unacked(&s) > 0 {
        std::thread::sleep(secs(0.002));
    }
    reset(s);
    assert_eq!(
        check_stream(a.s, 54),
        D,
        "the connector's download was cut short"
    );
    let eof_at = Instant::now();
    let failed_at = writer
        .join()
        .unwrap()
        .expect("the connector's writes never failed");
    let after = failed_at.saturating_duration_since(eof_at);
    assert!(
        after < secs(1.0),
        "the connector's writes failed only {after:?} after it read everything"
    );
}

/// The same the other way: the connector uploads until stuck and resets; the
/// reserver still gets every byte the relay acknowledged, then end of file.
#[test]
fn connector_reset_after_its_last_bytes_keeps_the_upload() {
    let (addr, _relay) = unlimited_relay();
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (mut a, b) = open_circuit_from(Peer::connect(addr), addr, &mut owner, "svc");
    let sent = push_until_stuck(&mut a.s, 53);
    let acked = sent - unacked(&a.s);
    reset(a.s);
    std::thread::sleep(secs(0.2));
    assert_eq!(
        check_stream(b.s, 53),
        acked,
        "the reserver's upload was cut short"
    );
}

/// A half-close travels through a circuit in both directions, the other direction
/// going on after it, and a circuit whose two directions have both ended closes by
/// itself (with one circuit per peer, the next one could not open otherwise).
#[test]
fn half_close_travels_through_the_relay_both_ways() {
    let (addr, _relay) = relay(cfg(|c| c.circuits.max_per_peer = 1));
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));

    // 1: the connector half-closes first; the reserver answers after its end of file.
    let (mut a, mut b) = open_circuit(addr, &mut owner, "svc");
    a.raw(b"request body");
    a.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(b.read_to_end(100), b"request body");
    b.raw(b"got 12 bytes");
    b.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(a.read_to_end(100), b"got 12 bytes");

    // 2: the reserver half-closes first; the connector still reaches it afterwards.
    let next = connect_when_free(addr, "svc", secs(2.0), "a circuit that both ends finished");
    let Got::Incoming(c, _) = owner.recv() else {
        panic!("no INCOMING for the second circuit");
    };
    let mut b = Peer::connect(addr);
    b.send(&Message::Accept { circuit: c });
    assert_eq!(b.recv(), Got::Connected(c));
    let mut a = next;
    assert_eq!(a.recv(), Got::Connected(c));
    b.raw(b"banner");
    b.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(a.read_to_end(100), b"banner");
    a.raw(b"after your FIN");
    a.s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(b.read_to_end(100), b"after your FIN");
    drop(connect_when_free(
        addr,
        "svc",
        secs(2.0),
        "the second finished circuit",
    ));
}

/// A relay, a hand-written reserver (`owner`, holding "svc"), and the connecting
/// client library (`connect_listener`, setup timeout 15 s) in a loop of its own.
/// Returns (relay address, owner, local listening address, the loops).
fn tunnel(
    relay_cfg: RelayConfig,
) -> (
    SocketAddr,
    Peer,
    SocketAddr,
    (common::Running, common::Running),
) {
    use reactor_relay::client::connect_listener;
    let (addr, relay_loop) = relay(relay_cfg);
    let mut owner = Peer::connect(addr);
    assert_eq!(owner.reserve("o", "svc"), reserved("svc"));
    let (local, client_loop) = run_loop(Config::default(), move |r| {
        let conn = reactor::ConnConfig::default()
            .high_watermark(256 * 1024)
            .low_watermark(64 * 1024);
        let l = connect_listener(
            "127.0.0.1:0".parse().unwrap(),
            addr,
            "svc",
            Default::default(),
            conn,
            SETUP_TIMEOUT,
        )
        .unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    (addr, owner, local, (relay_loop, client_loop))
}

/// The client library's default setup timeout, which the tests below must beat.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The client's circuit end is a bridge too: a local application that uploads
/// until stuck and resets still has every byte the client acknowledged delivered
/// to the reserver, then end of file.
#[test]
fn client_circuit_end_keeps_the_upload_of_a_local_reset() {
    let (addr, mut owner, local, _loops) = tunnel(cfg(|c| c.circuits.max_bytes_per_direction = 0));
    let mut app = TcpStream::connect(local).unwrap();
    let Got::Incoming(c, _) = owner.recv() else {
        panic!("no INCOMING for the local connection");
    };
    let mut b = Peer::connect(addr);
    b.send(&Message::Accept { circuit: c });
    assert_eq!(b.recv(), Got::Connected(c));
    std::thread::sleep(secs(0.1)); // CONNECTED reaches the client too: bridged
    let sent = push_until_stuck(&mut app, 54);
    let acked = sent - unacked(&app);
    reset(app);
    std::thread::sleep(secs(0.2));
    assert!(b.buf.is_empty());
    assert_eq!(check_stream(b.s, 54), acked, "the upload was cut short");
}

/// How a local application leaves while its circuit is being set up.
#[derive(Debug, Clone, Copy)]
enum LocalLeave {
    /// A close with nothing sent: a FIN.
    Close,
    /// A reset (`SO_LINGER` 0).
    Reset,
}

/// A local application connects to the client's listener and leaves (as `leave`
/// says) while the reserver has not accepted yet. The client must notice at once,
/// well before its setup timeout, and close its relay connection, so the relay
/// frees the circuit: the reserving peer's only circuit slot is free again and an
/// `ACCEPT` of the abandoned circuit is refused.
fn local_app_leaves_during_setup(leave: LocalLeave) {
    const NOTICED_WITHIN: f64 = 2.0;
    let (addr, mut owner, local, _loops) = tunnel(cfg(|c| {
        c.circuits.accept_timeout = secs(30.0);
        c.circuits.max_per_peer = 1;
    }));
    let app = TcpStream::connect(local).unwrap();
    let Got::Incoming(c, _) = owner.recv() else {
        panic!("{leave:?}: no INCOMING for the local connection");
    };
    match leave {
        LocalLeave::Close => drop(app),
        LocalLeave::Reset => reset(app),
    }
    let mut next = connect_when_free(
        addr,
        "svc",
        secs(NOTICED_WITHIN),
        &format!(
            "{leave:?}: the client's circuit end whose local application left \
             (setup timeout {SETUP_TIMEOUT:?})"
        ),
    );
    let mut acceptor = Peer::connect(addr);
    acceptor.send(&Message::Accept { circuit: c });
    assert_eq!(
        acceptor.recv(),
        Got::Refused(Reason::UnknownCircuit),
        "{leave:?}: the abandoned circuit could still be accepted"
    );
    // The relay and the reserver carry on.
    let Got::Incoming(live, _) = owner.recv() else {
        panic!("{leave:?}: no INCOMING for the next connector");
    };
    let mut acceptor = Peer::connect(addr);
    acceptor.send(&Message::Accept { circuit: live });
    assert_eq!(acceptor.recv(), Got::Connected(live));
    assert_eq!(next.recv(), Got::Connected(live));
}

#[test]
fn client_notices_a_local_close_during_setup_at_once() {
    local_app_leaves_during_setup(LocalLeave::Close);
}

#[test]
fn client_notices_a_local_reset_during_setup_at_once() {
    local_app_leaves_during_setup(LocalLeave::Reset);
}

/// A local application that sends its request and half-closes before the circuit
/// is set up has not left: it waits for the answer. Its bytes and its end of file
/// reach the reserver once it accepts, and the answer comes back.
#[test]
fn client_keeps_a_local_half_close_with_data_during_setup() {
    let (addr, mut owner, local, _loops) = tunnel(RelayConfig::default());
    let mut app = TcpStream::connect(local).unwrap();
    app.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let Got::Incoming(c, _) = owner.recv() else {
        panic!("no INCOMING for the local connection");
    };
    app.write_all(b"request").unwrap();
    app.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(secs(0.3)); // the client sees the end of file while waiting
    let mut b = Peer::connect(addr);
    b.send(&Message::Accept { circuit: c });
    assert_eq!(b.recv(), Got::Connected(c));
    assert_eq!(b.read_to_end(100), b"request");
    b.raw(b"answer");
    b.s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    app.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"answer");
}

/// A listener whose accept queue is full (backlog 0 and connections nobody
/// accepts), so that a connect to it waits (its SYNs are dropped) until the
/// listener closes, and is then refused at its next SYN (about a second after it
/// started). Returns the listener and what must stay open with it.
fn stalling_listener() -> (socket2::Socket, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let to = l.local_addr().unwrap();
    let connect = || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&to); // in progress
        s
    };
    let mut held: Vec<Socket> = (0..4).map(|_| connect()).collect();
    std::thread::sleep(secs(0.1));
    // The precondition of the tests that use it: a further connect stalls.
    let probe = connect();
    std::thread::sleep(secs(0.3));
    assert!(
        probe.peer_addr().is_err() && probe.take_error().unwrap().is_none(),
        "a connect to the full listener did not stall"
    );
    held.push(probe);
    (l, held)
}

/// A `ReserveClient` for id `svc` at `relay`, forwarding to `forward`, on its own
/// loop, with options adjusted by `adjust`; returns once the relay granted the
/// reservation.
fn reserving_client(
    relay: SocketAddr,
    forward: SocketAddr,
    adjust: impl FnOnce(&mut reactor_relay::client::ReserveOptions) + Send + 'static,
) -> common::Running {
    use reactor_relay::client::{ClientEvent, ReserveClient, ReserveOptions};
    let (tx, rx) = mpsc::channel::<()>();
    let (_, client) = run_loop(Config::default(), move |r| {
        let mut opts = ReserveOptions::new(relay, "p", "svc", &forward.to_string());
        adjust(&mut opts);
        let hook = Box::new(move |_: &mut reactor::Loop<'_>, ev: &ClientEvent<'_>| {
            if matches!(ev, ClientEvent::Reserved { .. }) {
                let _ = tx.send(());
            }
        });
        r.spawn(ReserveClient::new(opts, hook).unwrap());
    });
    rx.recv_timeout(IO_TIMEOUT).expect("not reserved");
    client
}

/// The reserving client's circuit end connects to its forward target only after
/// sending `ACCEPT`, so the relay may have bridged the circuit (and told the
/// connector `CONNECTED`) before that connect fails. A connect refused then must
/// close the circuit at once, not after the client's setup timeout.
#[test]
fn reserve_client_notices_a_late_refused_forward_connect() {
    let (target, held) = stalling_listener();
    let forward = target.local_addr().unwrap().as_socket().unwrap();
    let (addr, _relay) = relay(RelayConfig::default());
    let _client = reserving_client(addr, forward, |opts| {
        assert_eq!(opts.setup_timeout, SETUP_TIMEOUT)
    });
    let mut c = Peer::connect(addr);
    c.send(&Message::Connect { id: "svc" });
    assert!(matches!(c.recv(), Got::Connected(_)));
    std::thread::sleep(secs(0.3));
    // Refused at the connect's next SYN, about a second after it started.
    drop(target);
    drop(held);
    let refused = Instant::now();
    assert!(c.read_to_end(100).is_empty());
    assert!(
        refused.elapsed() < secs(4.0),
        "the circuit closed only {:?} after its forward connect was refused \
         (setup timeout {SETUP_TIMEOUT:?})",
        refused.elapsed()
    );
}

/// A circuit end whose forward connect never completes is closed at the setup
/// timeout, and a timeout is an outcome, not a handler failure: the client's loop
/// counts no failed handler.
#[test]
fn reserve_client_setup_timeout_closes_without_a_handler_failure() {
    let (target, held) = stalling_listener();
    let forward = target.local_addr().unwrap().as_socket().unwrap();
    let (addr, _relay) = relay(RelayConfig::default());
    let client = reserving_client(addr, forward, |opts| opts.setup_timeout = secs(0.3));
    let mut c = Peer::connect(addr);
    c.send(&Message::Connect { id: "svc" });
    assert!(matches!(c.recv(), Got::Connected(_)));
    let t0 = Instant::now();
    assert!(c.read_to_end(100).is_empty());
    assert!(t0.elapsed() < secs(3.0), "closed after {:?}", t0.elapsed());
    let stats = client.stop();
    assert_eq!(stats.handlers_failed, 0, "{stats:?}");
    drop((target, held));
}

/// A client that floods requests (here `HEARTBEAT`s) and never reads the answers
/// is held back once its answers pile up: the relay stops reading it, so the
/// kernel's buffers fill and its writes stop, rather than the relay queueing
/// answers without bound. Once it reads, everything is answered.
#[test]
fn control_connection_that_never_reads_is_held_back() {
    const BOUND: usize = 48 << 20; // kernel buffers are a few MiB; the relay's queue 64 KiB
    let (addr, _relay) = relay(cfg(|c| {
        c.conn.high_watermark = 64 * 1024;
        c.conn.low_watermark = 16 * 1024;
    }));
    let mut frame = Vec::new();
    proto::encode(&Message::Heartbeat, &mut frame).unwrap();
    let flood = frame.repeat(64 * 1024 / frame.len());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nonblocking(true).unwrap();
    let (mut sent, mut off) = (0, 0);
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < secs(0.3) {
        match s.write(&flood[off..]) {
            Ok(n) => {
                sent += n;
                off = (off + n) % flood.len();
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(secs(0.005)),
            Err(e) => panic!("after {sent} bytes: {e}"),
        }
        assert!(
            sent < BOUND,
            "the relay took {sent} bytes of requests whose answers nobody reads"
        );
    }
    // Every whole frame is answered once we read (a partial last one waits).
    eprintln!("the relay took {sent} bytes of requests nobody reads the answers of");
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut ack = Vec::new();
    proto::encode(&Message::HeartbeatAck, &mut ack).unwrap();
    let want = sent / frame.len() * ack.len();
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while got < want {
        match s.read(&mut buf) {
            Ok(0) => panic!("closed after {got} of {want} bytes of answers"),
            Ok(n) => {
                for (i, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, ack[(got + i) % ack.len()], "answer byte {}", got + i);
                }
                got += n;
            }
            Err(e) => panic!("after {got} of {want} bytes of answers: {e}"),
        }
    }
    assert_eq!(got, want);
}

/// A relay (here a fake one) that offers a reserving client circuits faster than
/// they finish cannot make it open connections without bound: at most
/// `max_circuits` circuit ends exist at once, the other `INCOMING`s are ignored,
/// and a circuit end that closes makes room for the next offer. An `INCOMING` for
/// an id the client did not reserve is never accepted.
#[test]
fn reserve_client_serves_at_most_max_circuits_at_once() {
    use reactor_relay::client::{ReserveClient, ReserveOptions};
    const MAX: usize = 4;
    let (echo, _echo_loop) = run_loop(Config::default(), |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let (_, _client) = run_loop(Config::default(), move |r| {
        let mut opts = ReserveOptions::new(fake_addr, "p", "svc", &echo.to_string());
        opts.max_circuits = MAX;
        r.spawn(ReserveClient::new(opts, Box::new(|_, _| {})).unwrap());
    });
    let (s, _) = fake.accept().unwrap();
    let mut control = Peer { s, buf: Vec::new() };
    control.s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Read the RESERVE, grant it.
    let mut tmp = [0u8; 1024];
    while proto::decode(&control.buf).unwrap().is_none() {
        let n = control.s.read(&mut tmp).unwrap();
        assert!(n > 0, "the client closed its control connection");
        control.buf.extend_from_slice(&tmp[..n]);
    }
    control.send(&Message::Reserved {
        id: "svc",
        ttl_secs: 3600,
    });
    let offer = |control: &mut Peer, from: u64, n: u64| {
        for circuit in from..from + n {
            control.send(&Message::Incoming { circuit, id: "svc" });
        }
    };
    // The circuit ends that connect within `t`; the fake relay never answers them.
    fake.set_nonblocking(true).unwrap();
    let accept_for = |t: Duration| {
        let end = Instant::now() + t;
        let mut ends = Vec::new();
        while Instant::now() < end {
            match fake.accept() {
                Ok((s, _)) => ends.push(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(secs(0.01)),
                Err(e) => panic!("{e}"),
            }
        }
        ends
    };
    // An INCOMING for an id this client did not reserve is not accepted.
    control.send(&Message::Incoming {
        circuit: 999_999,
        id: "not-svc",
    });
    assert!(
        accept_for(secs(0.5)).is_empty(),
        "a circuit to another id was accepted"
    );
    offer(&mut control, 1, 200);
    let ends = accept_for(secs(1.5));
    assert_eq!(ends.len(), MAX, "circuit ends open at once");
    // A circuit whose relay connection closes before CONNECTED ends; its place
    // serves the next offers.
    drop(ends);
    std::thread::sleep(secs(0.3));
    offer(&mut control, 1000, 10);
    assert_eq!(
        accept_for(secs(1.5)).len(),
        MAX,
        "after the first ones closed"
    );
}

/// `relay --metrics ADDR`: reservations and circuits as the relay's own
/// gauges and counters, next to the loop's, in a format promtool accepts.
#[test]
fn metrics_show_reservations_and_circuits() {
    let (echo, _echo_loop) = run_loop(Config::default(), |r| {
        let l = echo_listener("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
        let a = l.local_addr();
        r.spawn(l);
        a
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    let mut relay = Server::start(cmd);
    let metrics = relay.metrics_addr();
    let m = common::scrape::metrics(metrics);
    assert_eq!(m[r#"relay_reservations{loop="0"}"#], 0.0);
    let mut reserver = reserve_client(relay.addr, "svc", "svc-peer", echo);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay-client"));
    cmd.args(["--relay", &relay.addr.to_string(), "connect", "--id", "svc"]);
    cmd.args(["--listen", "127.0.0.1:0"]);
    let connector = Server::start(cmd);
    let data = pseudo_random_bytes(21, 64 << 10);
    assert_eq!(echo_through(connector.addr, data.clone()), data);
    let end = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = common::scrape::metrics(metrics);
        if m[r#"relay_circuits_bridged_total{loop="0"}"#] >= 1.0 {
            break m;
        }
        assert!(Instant::now() < end, "no circuit counted: {m:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(m[r#"relay_reservations{loop="0"}"#], 1.0);
    assert_eq!(m[r#"relay_protocol_errors_total{loop="0"}"#], 0.0);
    if common::require_tool("promtool", &["--version"], "apt-get install prometheus") {
        let body = common::scrape::get(metrics, "/metrics").body;
        let (ok, said) = common::scrape::promtool(&body);
        assert!(ok, "promtool: {said}\n{body}");
    }
    let _ = reserver.kill();
    let _ = reserver.wait();
    drop(connector);
}
