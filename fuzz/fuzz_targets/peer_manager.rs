//! The BitTorrent peer manager: whom to dial, when, and whom never again.
//!
//! Input: a connection limit, a table size, and a list of events on a few
//! addresses (IPv4, two of one IPv6 /64, loopback with different ports): learned,
//! withdrawn, removed, banned, an inbound connection, a round of dialling, a dial
//! that connected or failed, a connection that ended (useful or not), time
//! passing. Properties: `active` is the number of peers connecting or connected;
//! the table never exceeds its size; a round of dialling offers only idle,
//! dialable, unbanned peers whose back-off has passed, each once, never more than
//! the limit allows; a banned host (its /64 for IPv6, the exact address on
//! loopback) is never offered or accepted again; back-off after a useless
//! connection or a failed dial is the documented table's; `next_wake` is not in
//! the past and is `now` exactly when a peer is ready; a plaintext retry after a
//! failed encrypted dial makes the peer ready at once, counts as neither failure
//! nor useless connection, and sticks (`plaintext_only`).
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::peers::{
    ConnState, ConnStats, FAILURE_BACKOFF, PeerManager, USELESS_BACKOFF,
};
use reactor_fuzz::{Clock, client_addr, millis};

#[derive(Arbitrary, Debug)]
enum Op {
    Add(u8),
    Remove(u8),
    Withdraw(u8),
    Ban(u8),
    Incoming(u8),
    Dial(u8),
    Connected(u8),
    Failed(u8),
    Closed {
        addr: u8,
        handshake: bool,
        down: u8,
        up: u8,
    },
    Wait(u32),
    Limit(u8),
    /// An encrypted dial failed before its MSE handshake: retry in plaintext.
    RetryPlaintext(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    limit: u8,
    max_known: u8,
    ops: Vec<Op>,
}

/// What a ban names, as the module documents it.
fn ban_key(a: &SocketAddr) -> (IpAddr, Option<u16>) {
    let ip = a.ip().to_canonical();
    if ip.is_loopback() {
        (ip, Some(a.port()))
    } else {
        (reactor::client_key(ip), None)
    }
}

fn backoff(table: &[Duration; 7], n: u32) -> Duration {
    table[(n.max(1) - 1).min(6) as usize]
}

fuzz_target!(|i: Input| {
    let mut limit = usize::from(i.limit % 6);
    let max_known = usize::from(i.max_known % 10).max(1);
    let mut pm = PeerManager::new(limit, max_known);
    let mut clock = Clock::new();
    let pool: Vec<SocketAddr> = (0..32).map(client_addr).collect();
    let mut bans: HashSet<(IpAddr, Option<u16>)> = HashSet::new();
    let addr = |n: u8| pool[usize::from(n) % pool.len()];
    let mut out = Vec::new();

    for op in i.ops.iter().take(512) {
        let now = clock.now();
        let active_before = pm.active();
        match *op {
            Op::Add(a) => {
                pm.add_peer(addr(a), now);
            }
            Op::Remove(a) => pm.remove_peer(&addr(a)),
            Op::Withdraw(a) => {
                let was = pm.peer(&addr(a)).map(|p| p.state);
                assert_eq!(pm.withdraw(&addr(a)), was == Some(ConnState::Idle));
                if was == Some(ConnState::Idle) {
                    assert!(!pm.peer(&addr(a)).unwrap().dialable);
                }
            }
            Op::Ban(a) => {
                let fresh = bans.insert(ban_key(&addr(a)));
                assert_eq!(pm.ban(addr(a)), fresh);
            }
            Op::Incoming(a) => {
                let a = addr(a);
                let was = pm.peer(&a).map(|p| p.state);
                if pm.accept_incoming(a, now) {
                    assert!(!bans.contains(&ban_key(&a)), "accepted a banned host");
                    assert!(active_before < limit);
                    assert!(was.is_none_or(|s| s == ConnState::Idle));
                    assert_eq!(pm.peer(&a).unwrap().state, ConnState::Connected);
                } else if was.is_some_and(|s| s != ConnState::Idle) {
                    assert_eq!(pm.peer(&a).unwrap().state, was.unwrap());
                }
            }
            Op::Dial(max) => {
                let ready: HashSet<SocketAddr> = pool
                    .iter()
                    .filter(|a| {
                        pm.peer(a).is_some_and(|p| {
                            p.state == ConnState::Idle && p.dialable && p.next_attempt <= now
                        }) && !bans.contains(&ban_key(a))
                    })
                    .copied()
                    .collect();
                let wake = pm.next_wake(now);
                if active_before < limit && !ready.is_empty() {
                    assert_eq!(wake, Some(now), "a peer is ready");
                }
                if let Some(w) = wake {
                    assert!(w >= now);
                }
                out.clear();
                let max = usize::from(max % 8);
                pm.next_candidates(now, max, &mut out);
                let room = limit.saturating_sub(active_before).min(max);
                assert_eq!(out.len(), room.min(ready.len()));
                let distinct: HashSet<_> = out.iter().collect();
                assert_eq!(distinct.len(), out.len(), "offered twice");
                for a in &out {
                    assert!(ready.contains(a), "{a} was not ready");
                    assert_eq!(pm.peer(a).unwrap().state, ConnState::Connecting);
                }
            }
            Op::Connected(a) => {
                let a = addr(a);
                pm.connected(a, now);
                if let Some(p) = pm.peer(&a) {
                    assert_eq!((p.state, p.consecutive_failures), (ConnState::Connected, 0));
                }
            }
            Op::Failed(a) => {
                let a = addr(a);
                pm.connect_failed(a, now);
                if let Some(p) = pm.peer(&a) {
                    assert_eq!(p.state, ConnState::Idle);
                    assert_eq!(
                        p.next_attempt,
                        now + backoff(&FAILURE_BACKOFF, p.consecutive_failures)
                    );
                }
            }
            Op::Closed {
                addr: a,
                handshake,
                down,
                up,
            } => {
                let a = addr(a);
                let stats = ConnStats {
                    handshake_done: handshake,
                    piece_bytes_down: u64::from(down),
                    piece_bytes_up: u64::from(up),
                };
                pm.disconnected(a, now, stats);
                if let Some(p) = pm.peer(&a) {
                    assert_eq!(p.state, ConnState::Idle);
                    if handshake && (down > 0 || up > 0) {
                        assert_eq!((p.consecutive_useless, p.next_attempt), (0, now));
                    } else {
                        assert!(p.consecutive_useless > 0);
                        assert_eq!(
                            p.next_attempt,
                            now + backoff(&USELESS_BACKOFF, p.consecutive_useless)
                        );
                    }
                }
            }
            Op::Wait(ms) => {
                clock.advance(millis(ms % (3 * 3600 * 1000)));
            }
            Op::Limit(n) => {
                limit = usize::from(n % 6);
                pm.set_connection_limit(limit);
            }
            Op::RetryPlaintext(a) => {
                let a = addr(a);
                let before = pm
                    .peer(&a)
                    .map(|p| (p.consecutive_failures, p.consecutive_useless));
                pm.retry_plaintext(a, now);
                if let Some(p) = pm.peer(&a) {
                    // Neither a failed dial nor a useless connection: ready at once,
                    // and plaintext from now on.
                    assert_eq!(p.state, ConnState::Idle);
                    assert_eq!(p.next_attempt, now);
                    assert_eq!(
                        Some((p.consecutive_failures, p.consecutive_useless)),
                        before
                    );
                    assert!(p.plaintext_only && pm.plaintext_only(&a));
                } else {
                    assert!(!pm.plaintext_only(&a));
                }
            }
        }
        let busy = pool
            .iter()
            .filter(|a| pm.peer(a).is_some_and(|p| p.state != ConnState::Idle))
            .count();
        assert_eq!(pm.active(), busy, "active count drifted");
        assert!(pm.len() <= max_known);
        assert_eq!(
            pm.len(),
            pool.iter().filter(|a| pm.peer(a).is_some()).count()
        );
        for a in &pool {
            assert_eq!(pm.is_banned(a), bans.contains(&ban_key(a)), "{a}");
        }
    }
});
