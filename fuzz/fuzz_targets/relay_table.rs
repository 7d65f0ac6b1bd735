//! The relay's reservation and circuit table under any sequence of calls.
//!
//! Input: the limits (small, so they are reached) and a list of operations:
//! reserve, refresh, heartbeat, connection closed, open/accept/close a circuit,
//! let time pass and expire. Properties, after every operation: the table's own
//! cross-checks (`Table::check_invariants`: indexes agree, the total, per-peer
//! and per-address limits are never exceeded, one deadline per item); a
//! reservation is visible to connectors only on its live connection; events name
//! only connections and circuits that existed; the next deadline is in the
//! future after `expire`. At the end, once every connection has closed and time
//! has passed every grace period, TTL and circuit limit, nothing is left: no
//! reservation, no circuit, no deadline.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_fuzz::{Clock, client_ip, millis};
use reactor_relay::table::{CircuitId, CircuitLimits, ConnId, Event, Limits, Table};

#[derive(Arbitrary, Debug)]
enum Op {
    Reserve { peer: u8, id: u8, ip: u8, conn: u8 },
    Refresh { id: u8, conn: u8 },
    Heartbeat { conn: u8 },
    Closed { conn: u8 },
    Open { id: u8, conn: u8 },
    Accept { circuit: u8, conn: u8 },
    CloseCircuit { circuit: u8 },
    Wait { ms: u16 },
    Expire,
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_total: u8,
    per_peer: u8,
    per_ip: u8,
    ttl_s: u8,
    grace_s: u8,
    heartbeat_s: u8,
    circuits_per_peer: u8,
    circuits_total: u8,
    max_duration_s: u8,
    accept_s: u8,
    ops: Vec<Op>,
}

fn secs(n: u8) -> Duration {
    Duration::from_secs(u64::from(n % 32))
}

const IDS: [&str; 6] = ["alice", "bob", "carol", "dave", "eve", "ünï"];
const PEERS: [&str; 4] = ["peer-a", "peer-b", "peer-c", "peer-d"];

fuzz_target!(|i: Input| {
    let limits = Limits {
        max_total: usize::from(i.max_total % 8),
        per_peer: usize::from(i.per_peer % 5),
        per_ip: usize::from(i.per_ip % 6),
        ttl: secs(i.ttl_s),
        grace: secs(i.grace_s),
        heartbeat_timeout: secs(i.heartbeat_s),
    };
    let circuit_limits = CircuitLimits {
        max_per_peer: usize::from(i.circuits_per_peer % 4),
        max_total: usize::from(i.circuits_total % 6),
        max_duration: secs(i.max_duration_s),
        max_bytes_per_direction: 0,
        accept_timeout: secs(i.accept_s).max(Duration::from_millis(1)),
    };
    let longest = [
        limits.ttl,
        limits.grace,
        limits.heartbeat_timeout,
        circuit_limits.max_duration,
        circuit_limits.accept_timeout,
    ]
    .into_iter()
    .max()
    .unwrap();
    let mut t = Table::new(limits, circuit_limits);
    let mut clock = Clock::new();
    let mut conns_seen: HashSet<ConnId> = HashSet::new();
    let mut circuits: Vec<CircuitId> = Vec::new();
    let mut events = Vec::new();

    for op in i.ops.iter().take(512) {
        let now = clock.now();
        match *op {
            Op::Reserve { peer, id, ip, conn } => {
                let conn = ConnId(u64::from(conn % 6));
                conns_seen.insert(conn);
                let id = IDS[usize::from(id) % IDS.len()];
                if t.reserve(
                    PEERS[usize::from(peer) % PEERS.len()],
                    id,
                    client_ip(ip),
                    conn,
                    now,
                )
                .is_ok()
                {
                    assert_eq!(
                        t.lookup(id, now),
                        Some(conn).filter(|_| !t.limits().ttl.is_zero())
                    );
                }
            }
            Op::Refresh { id, conn } => {
                let conn = ConnId(u64::from(conn % 6));
                let id = IDS[usize::from(id) % IDS.len()];
                if t.refresh(id, conn, now).is_ok() {
                    assert_eq!(
                        t.lookup(id, now),
                        Some(conn).filter(|_| !t.limits().ttl.is_zero())
                    );
                }
            }
            Op::Heartbeat { conn } => {
                t.heartbeat(ConnId(u64::from(conn % 6)), now);
            }
            Op::Closed { conn } => {
                let conn = ConnId(u64::from(conn % 6));
                t.connection_closed(conn, now);
                for id in IDS {
                    assert_ne!(
                        t.lookup(id, now),
                        Some(conn),
                        "a closed connection holds {id}"
                    );
                }
            }
            Op::Open { id, conn } => {
                let conn = ConnId(u64::from(conn % 6) + 100);
                conns_seen.insert(conn);
                let id = IDS[usize::from(id) % IDS.len()];
                let reserver = t.lookup(id, now);
                if let Ok((c, r)) = t.open_circuit(id, conn, now) {
                    assert_eq!(Some(r), reserver);
                    assert!(!circuits.contains(&c), "circuit id reused");
                    circuits.push(c);
                }
            }
            Op::Accept { circuit, conn } => {
                if let Some(&c) = circuits.get(usize::from(circuit) % circuits.len().max(1)) {
                    let conn = ConnId(u64::from(conn % 6) + 200);
                    conns_seen.insert(conn);
                    let _ = t.accept_circuit(c, conn, now);
                }
            }
            Op::CloseCircuit { circuit } => {
                if !circuits.is_empty() {
                    let c = circuits.swap_remove(usize::from(circuit) % circuits.len());
                    t.close_circuit(c);
                }
            }
            Op::Wait { ms } => {
                clock.advance(millis(u32::from(ms) * 8));
            }
            Op::Expire => {
                events.clear();
                t.expire(now, &mut events);
                for e in &events {
                    match e {
                        Event::Expired { conn, .. } | Event::ConnSilent(conn) => {
                            assert!(conns_seen.contains(conn))
                        }
                        Event::CircuitTimedOut {
                            circuit, connector, ..
                        } => {
                            assert!(conns_seen.contains(connector));
                            let k = circuits
                                .iter()
                                .position(|c| c == circuit)
                                .expect("a known circuit");
                            circuits.swap_remove(k);
                        }
                        Event::GraceEnded { .. } => {}
                    }
                }
                assert!(t.next_deadline().is_none_or(|d| d > now));
            }
        }
        t.check_invariants();
        let s = t.stats();
        assert!(s.held <= t.limits().max_total && s.in_grace <= s.held);
        if t.circuit_limits().max_total != 0 {
            assert!(s.circuits <= t.circuit_limits().max_total);
        }
    }

    // Everyone leaves; after the longest deadline nothing may remain.
    let now = clock.now();
    for conn in &conns_seen {
        t.connection_closed(*conn, now);
    }
    for c in circuits.drain(..) {
        t.close_circuit(c);
    }
    let later = clock.advance(longest + Duration::from_secs(1));
    events.clear();
    t.expire(later, &mut events);
    t.check_invariants();
    let s = t.stats();
    assert_eq!((s.held, s.in_grace, s.circuits), (0, 0, 0), "{s}");
    assert_eq!(t.next_deadline(), None, "a deadline outlived everything");
});
