//! BEP 11 peer exchange (`reactor_bittorrent::pex`): the `ut_pex` codec and the
//! per-connection state.
//!
//! Input: one byte of options, then a payload (bytes) or a structured history of
//! connected sets and received messages. Properties:
//! - decode: what survives has at most `MAX_DECODED_ADDED` / `MAX_DECODED_DROPPED`
//!   contacts, no port 0, no duplicates, no IPv4-mapped addresses, nothing both
//!   added and dropped, and `ignored` accounts for every other contact; it
//!   re-encodes (capped at the send limits) to a payload that decodes to the same
//!   contacts and flags; a peer's `PexState::on_message` believes only contacts of
//!   the message, at most `MAX_PEERS_PER_SOURCE` from one peer, never the peer
//!   itself, and withdraws only what that peer added;
//! - sending: a receiver that applies every message `next_message` produces (sent
//!   through the codec) always knows exactly what `PexState` thinks it told it: an
//!   added contact was not known, a dropped one was; the lists respect the send
//!   limits, never hold the remote itself or port 0, and messages are at least
//!   `MIN_INTERVAL` apart; when a due call sends nothing, the receiver knows
//!   exactly the connected set; and more than `RECV_BURST` messages within
//!   `MIN_INTERVAL` are refused as flooding.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::pex::{
    self, MAX_DECODED_ADDED, MAX_DECODED_DROPPED, MAX_PEERS_PER_SOURCE, MAX_SEND_ADDED,
    MAX_SEND_DROPPED, MIN_INTERVAL, PexError, PexFlags, PexMessage, PexPeer, PexState,
};
use reactor_fuzz::Clock;

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn remote() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 6881)
}

fn as_set(m: &PexMessage) -> (HashSet<(SocketAddr, u8)>, HashSet<SocketAddr>) {
    (
        m.added.iter().map(|p| (p.addr, p.flags.0)).collect(),
        m.dropped.iter().copied().collect(),
    )
}

fn through_codec(m: &PexMessage) -> PexMessage {
    let mut out = Vec::new();
    m.encode(&mut out).expect("our message encodes");
    let d = PexMessage::decode(&out).expect("our payload decodes");
    assert_eq!(d.ignored, 0, "nothing of ours is ignored");
    assert_eq!(as_set(&d.message), as_set(m), "codec round trip");
    d.message
}

fn decode(payload: &[u8], now: Instant) {
    let d = match PexMessage::decode(payload) {
        Ok(d) => d,
        Err(PexError::TooLarge { len }) => {
            assert!(len > pex::MAX_PAYLOAD_LEN);
            return;
        }
        Err(e) => {
            assert!(!matches!(
                e,
                PexError::TooFrequent | PexError::Empty | PexError::TooMany { .. }
            ));
            return;
        }
    };
    let m = &d.message;
    assert!(m.added.len() <= MAX_DECODED_ADDED && m.dropped.len() <= MAX_DECODED_DROPPED);
    let added: HashSet<SocketAddr> = m.added.iter().map(|p| p.addr).collect();
    let dropped: HashSet<SocketAddr> = m.dropped.iter().copied().collect();
    assert_eq!(added.len(), m.added.len(), "duplicate added");
    assert_eq!(dropped.len(), m.dropped.len(), "duplicate dropped");
    assert!(added.is_disjoint(&dropped), "added and dropped at once");
    for a in added.iter().chain(&dropped) {
        assert_ne!(a.port(), 0);
        assert_eq!(canonical(*a), *a, "IPv4-mapped {a} not read as IPv4");
    }
    // Every contact on the wire is kept or counted as ignored: the bound on
    // `ignored` is the number of contacts the payload can hold.
    assert!(d.ignored <= payload.len() / 6);
    if !m.added.is_empty() || !m.dropped.is_empty() {
        let capped = PexMessage {
            added: m.added.iter().take(MAX_SEND_ADDED).copied().collect(),
            dropped: m.dropped.iter().take(MAX_SEND_DROPPED).copied().collect(),
        };
        through_codec(&capped);
    }
    // Twice from one peer: the second adds nothing new and withdraws what the
    // first added, if it is dropped.
    let mut st = PexState::new(remote());
    let u = st.on_message(m, now).expect("one message is no flood");
    assert!(u.added.len() <= MAX_PEERS_PER_SOURCE);
    assert!(u.dropped.is_empty(), "nothing was learned from it before");
    for p in &u.added {
        assert!(added.contains(&p.addr));
        assert_ne!(p.addr, remote());
    }
    let again = st.on_message(m, now).expect("two messages are no flood");
    assert!(again.added.is_empty(), "learned twice");
    assert!(again.dropped.is_empty());
    let withdraw = PexMessage {
        added: Vec::new(),
        dropped: u.added.iter().map(|p| p.addr).collect(),
    };
    let w = st
        .on_message(&withdraw, now)
        .expect("three messages are no flood");
    assert_eq!(
        w.dropped.len(),
        u.added.len(),
        "withdraws exactly what it added"
    );
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Connect to one of a few contacts (index, flags).
    Connect(u8, u8),
    Disconnect(u8),
    Advance(u16),
    Send,
    /// A message from the remote, received now.
    Receive,
}

fn contact(i: u8) -> SocketAddr {
    let port = [0, 6881, 6882][usize::from(i % 3)];
    let n = i / 3;
    match n % 4 {
        0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, n)), port),
        1 => SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(198, 51, 100, n).to_ipv6_mapped()),
            6881,
        ),
        2 => SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n))),
            51413,
        ),
        _ => remote(),
    }
}

fn history(steps: &[Step]) {
    let mut clock = Clock::new();
    let mut st = PexState::new(remote());
    let mut connected: Vec<PexPeer> = Vec::new();
    let mut told: HashSet<SocketAddr> = HashSet::new();
    let mut last_sent: Option<Instant> = None;
    let mut received: Vec<Instant> = Vec::new();
    let mut rx = PexState::new(remote());
    for s in steps.iter().take(400) {
        match *s {
            Step::Connect(i, f) => {
                if connected.len() < 120 {
                    connected.push(PexPeer {
                        addr: contact(i),
                        flags: PexFlags(f),
                    });
                }
            }
            Step::Disconnect(i) => connected.retain(|p| canonical(p.addr) != canonical(contact(i))),
            Step::Advance(s) => {
                clock.advance(Duration::from_secs(u64::from(s % 200)));
            }
            Step::Send => {
                let now = clock.now();
                let due = st.next_due().is_none_or(|t| now >= t);
                match st.next_message(&connected, now) {
                    Some(m) => {
                        assert!(due, "sent before it was due");
                        if let Some(t) = last_sent {
                            assert!(now - t >= MIN_INTERVAL);
                        }
                        last_sent = Some(now);
                        assert!(m.added.len() <= MAX_SEND_ADDED);
                        assert!(m.dropped.len() <= MAX_SEND_DROPPED);
                        let m = through_codec(&m);
                        for p in &m.added {
                            assert_ne!(p.addr, remote(), "the remote told about itself");
                            assert_ne!(p.addr.port(), 0);
                            assert!(told.insert(p.addr), "{} told twice", p.addr);
                            assert!(connected.iter().any(|c| canonical(c.addr) == p.addr));
                        }
                        for a in &m.dropped {
                            assert!(told.remove(a), "{a} dropped but never told");
                            assert!(!connected.iter().any(|c| canonical(c.addr) == *a));
                        }
                    }
                    None if due => {
                        let want: HashSet<SocketAddr> = connected
                            .iter()
                            .map(|c| canonical(c.addr))
                            .filter(|a| *a != remote() && a.port() != 0)
                            .collect();
                        assert_eq!(told, want, "nothing sent, yet the peer is behind");
                    }
                    None => {}
                }
            }
            Step::Receive => {
                let now = clock.now();
                let m = PexMessage {
                    added: connected.clone(),
                    dropped: Vec::new(),
                };
                let r = rx.on_message(&m, now);
                received.retain(|&t| now < t + MIN_INTERVAL);
                match r {
                    Err(PexError::TooFrequent) => {
                        assert!(
                            received.len() >= pex::RECV_BURST,
                            "refused after {}",
                            received.len()
                        );
                    }
                    Err(e) => panic!("{e}"),
                    Ok(u) => {
                        assert!(received.len() < pex::RECV_BURST, "a flood accepted");
                        received.push(now);
                        assert!(u.added.len() <= MAX_PEERS_PER_SOURCE);
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    if opts & 1 == 0 {
        decode(rest, Clock::new().now());
    } else if let Ok(steps) = Vec::<Step>::arbitrary_take_rest(Unstructured::new(rest)) {
        history(&steps);
    }
});
