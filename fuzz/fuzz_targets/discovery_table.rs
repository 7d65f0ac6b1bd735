//! The discovery peer table fed announcements, garbage and the passing of time.
//!
//! Input: the table's size and TTL, and a list of datagrams (built from a few
//! ids, instances, sources and ports, or raw bytes) and waits. Properties: the
//! table never holds more than `max_peers` peers nor our own id; every event
//! agrees with what the table then says about that id; `len` is always
//! joined - left; `next_expiry` is never later than the earliest real deadline;
//! after `expire(now)` no peer is past its deadline; and once everyone has said
//! goodbye, or gone silent for the TTL, the table is empty.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_discovery::proto::{self, Announcement, Metadata};
use reactor_discovery::table::{Event, PeerTable};
use reactor_fuzz::{Clock, client_addr, millis};

const IDS: [&str; 5] = ["self", "node-a", "node-b", "node-c", "node-d"];
const SERVICES: [&str; 3] = ["", "bittorrent", "relay"];

#[derive(Arbitrary, Debug)]
enum Op {
    Announce {
        id: u8,
        instance: u8,
        from: u8,
        port: u16,
        leaving: bool,
        service: u8,
        meta: u8,
    },
    Raw {
        from: u8,
        bytes: Vec<u8>,
    },
    Wait {
        ms: u16,
    },
    Expire,
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_peers: u8,
    ttl_ms: u16,
    ops: Vec<Op>,
}

fuzz_target!(|i: Input| {
    let ttl = millis(u32::from(i.ttl_ms) + 1);
    let max_peers = usize::from(i.max_peers % 6);
    let mut t = PeerTable::new("self".into(), 1, ttl, max_peers);
    let mut clock = Clock::new();
    let mut events = Vec::new();
    let mut instances: HashSet<(String, u64)> = HashSet::new();
    let mut buf = Vec::new();

    for op in i.ops.iter().take(512) {
        let now = clock.now();
        let event = match op {
            Op::Announce {
                id,
                instance,
                from,
                port,
                leaving,
                service,
                meta,
            } => {
                let id_i = usize::from(*id) % IDS.len();
                let instance = u64::from(*instance % 4);
                instances.insert((IDS[id_i].to_owned(), instance));
                let mut ann = Announcement::new(IDS[id_i], instance, *port);
                ann.leaving = *leaving;
                ann.service = SERVICES[usize::from(*service) % SERVICES.len()];
                let value = ["", "x", "y"][usize::from(*meta % 3)];
                ann.metadata =
                    Metadata::from_pairs(&[("ih", value)][..usize::from(*meta % 2)]).unwrap();
                buf.clear();
                proto::encode(&ann, &mut buf).unwrap();
                t.observe_datagram(&buf, client_addr(*from), now)
                    .expect("a valid datagram")
            }
            Op::Raw { from, bytes } => {
                if let Ok(a) = proto::decode(bytes) {
                    instances.insert((a.id.to_owned(), a.instance));
                }
                t.observe_datagram(bytes, client_addr(*from), now)
                    .ok()
                    .flatten()
            }
            Op::Wait { ms } => {
                clock.advance(millis(u32::from(*ms)));
                None
            }
            Op::Expire => {
                events.clear();
                t.expire(now, &mut events);
                for e in &events {
                    let Event::Left { id } = e else {
                        panic!("expire reported {e:?}")
                    };
                    assert!(t.get(id).is_none());
                }
                for p in t.peers() {
                    assert!(p.last_seen() + ttl > now, "{} outlived its TTL", p.id());
                }
                None
            }
        };
        match &event {
            Some(
                Event::Joined {
                    id, instance, addr, ..
                }
                | Event::Restarted {
                    id, instance, addr, ..
                }
                | Event::Updated {
                    id, instance, addr, ..
                },
            ) => {
                let p = t.get(id).expect("the peer the event names");
                assert_eq!((p.instance(), p.addr()), (*instance, *addr));
            }
            Some(Event::Left { id }) => assert!(t.get(id).is_none()),
            Some(Event::Conflict { .. }) | None => {}
        }
        assert!(t.len() <= max_peers);
        assert!(t.get("self").is_none(), "our own id in the table");
        let s = t.stats();
        assert_eq!(t.len() as u64, s.joined - s.left);
        let earliest = t.peers().map(|p| p.last_seen() + ttl).min();
        match (t.next_expiry(), earliest) {
            (Some(next), Some(real)) => assert!(next <= real, "expiry armed too late"),
            (_, None) => {}
            (None, Some(_)) => panic!("peers but no expiry armed"),
        }
    }

    // Every incarnation says goodbye: only the current ones count, so nothing
    // remains once each id has sent one for each instance it used.
    let now = clock.now();
    for (id, instance) in &instances {
        let mut ann = Announcement::new(id, *instance, 0);
        ann.leaving = true;
        buf.clear();
        proto::encode(&ann, &mut buf).unwrap();
        t.observe_datagram(&buf, client_addr(0), now).unwrap();
    }
    assert!(t.is_empty(), "{} peers left after every goodbye", t.len());
    // Silence does it too (the table forgets; nothing is kept past the TTL).
    events.clear();
    t.expire(clock.advance(ttl + Duration::from_millis(1)), &mut events);
    assert!(t.is_empty());
});
