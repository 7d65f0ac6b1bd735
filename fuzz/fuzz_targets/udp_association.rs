//! SOCKS5 UDP ASSOCIATE decisions (`reactor_proxy::udp::Association`): two
//! associations sharing the proxy's global rate, fed datagrams from clients
//! and strangers, resolutions, answers from the outside, and time.
//!
//! Input: small rate limits, the port each client named (or 0), and events.
//! Checked against a model written from the module docs:
//! - only datagrams from the client's address (IPv4-mapped forms included) and
//!   from the port it named, or else of its first valid datagram, are relayed;
//!   the port never changes once known; oversized, malformed and fragment
//!   datagrams are dropped, as are destinations the rules deny;
//! - a relayed datagram's payload is exactly what followed its header; a name
//!   is sent to its cached address while fresh (`DNS_TTL`), else resolved;
//!   `resolved` answers the first allowed address;
//! - answers come back only from the last `MAX_PEERS` destinations the client
//!   sent to, only once the client's port is known, wrapped in a header naming
//!   the sender, and the rates (per association and global, datagrams and
//!   bytes per one-second window) are never exceeded: a datagram is admitted
//!   exactly when both windows have room, and counted in both.
#![no_main]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_fuzz::{Clock, millis};
use reactor_proxy::rules::{Cidr, Rules};
use reactor_proxy::socks5_udp::{self as su, UdpTarget};
use reactor_proxy::udp::{
    Association, DNS_TTL, Dropped, FromClient, MAX_PEERS, RateWindow, UdpLimits, UdpRelayOptions,
};

#[derive(Arbitrary, Debug)]
enum Event<'a> {
    /// A datagram to association `a` from address `from` (a small pool around
    /// the two clients): raw bytes, or a header to `dest` / a name, then payload.
    Client {
        a: bool,
        from: u8,
        raw: Option<&'a [u8]>,
        dest: u8,
        name: Option<u8>,
        payload: &'a [u8],
    },
    Resolved {
        a: bool,
        name: u8,
        addrs: Vec<u8>,
    },
    Remote {
        a: bool,
        from: u8,
        payload: &'a [u8],
    },
    Advance(u16),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    own: (u8, u16),
    global: (u8, u16),
    ports: [u16; 2],
    max_datagram: u16,
    events: Vec<Event<'a>>,
}

fn client_ip(a: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + a as u8))
}

/// Senders: the clients on a few ports (plain and IPv4-mapped), and a stranger.
fn sender(n: u8) -> SocketAddr {
    let port = [5000, 5001, 7000][usize::from(n / 8) % 3];
    let ip = match n % 4 {
        0 => client_ip(0),
        1 => client_ip(1),
        2 => match client_ip(usize::from(n / 4) % 2) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        },
        _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
    };
    SocketAddr::new(ip, port)
}

/// Destinations: allowed ones, a denied range (10/8), a denied port (25).
fn dest(n: u8) -> SocketAddr {
    let ip = match n % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, n / 4 % 8)),
        1 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        2 => "2001:db8::53".parse().unwrap(),
        _ => IpAddr::V6(Ipv4Addr::new(198, 51, 100, 1).to_ipv6_mapped()),
    };
    SocketAddr::new(ip, [53, 443, 25][usize::from(n / 32) % 3])
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[derive(Clone, Copy, Default)]
struct Window {
    start: Option<Instant>,
    d: u32,
    b: u64,
}

impl Window {
    fn fits(&self, now: Instant, len: usize, l: &UdpLimits) -> (bool, Window) {
        let mut w = *self;
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
        {
            w = Window {
                start: Some(now),
                d: 0,
                b: 0,
            };
        }
        let (d, b) = (w.d + 1, w.b + len as u64);
        let ok = (l.datagrams_per_sec == 0 || d <= l.datagrams_per_sec)
            && (l.bytes_per_sec == 0 || b <= l.bytes_per_sec);
        if ok {
            w.d = d;
            w.b = b;
        }
        (ok, w)
    }
}

struct Model {
    port: Option<u16>,
    peers: VecDeque<SocketAddr>,
    cache: Vec<(String, u16, SocketAddr, Instant)>,
    window: Window,
}

impl Model {
    fn contact(&mut self, to: SocketAddr) {
        let to = canonical(to);
        if !self.peers.contains(&to) {
            if self.peers.len() >= MAX_PEERS {
                self.peers.pop_front();
            }
            self.peers.push_back(to);
        }
    }
}

fn admit(m: &mut Model, g: &mut Window, now: Instant, len: usize, o: &UdpRelayOptions) -> bool {
    let (a, wa) = m.window.fits(now, len, &o.per_association);
    let (b, wb) = g.fits(now, len, &o.global);
    if a && b {
        m.window = wa;
        *g = wb;
        true
    } else {
        false
    }
}

fuzz_target!(|i: Input<'_>| {
    let mut o = UdpRelayOptions::default();
    o.per_association = UdpLimits::new(u32::from(i.own.0 % 8), u64::from(i.own.1 % 512));
    o.global = UdpLimits::new(u32::from(i.global.0 % 12), u64::from(i.global.1 % 1024));
    o.max_datagram = usize::from(i.max_datagram % 600) + 30;
    let rules = Rules {
        deny_nets: vec![Cidr::parse_masked("10.0.0.0/8").unwrap()],
        deny_ports: vec![25],
    };
    let mut clock = Clock::new();
    let mut global = RateWindow::default();
    let mut g = Window::default();
    let ports = [i.ports[0] % 3, i.ports[1] % 3].map(|p| [0, 5000, 7000][usize::from(p)]);
    let mut assoc = [
        Association::new(client_ip(0), ports[0]),
        Association::new(client_ip(1), ports[1]),
    ];
    let mut model: [Model; 2] = ports.map(|p| Model {
        port: (p != 0).then_some(p),
        peers: VecDeque::new(),
        cache: Vec::new(),
        window: Window::default(),
    });
    for e in i.events.iter().take(300) {
        let now = clock.now();
        match *e {
            Event::Client {
                a,
                from,
                raw,
                dest: dn,
                name,
                payload,
            } => {
                let k = usize::from(a);
                let from = sender(from);
                let host;
                let d: Vec<u8> = match raw {
                    Some(r) => r.to_vec(),
                    None => {
                        host = name.map(|n| format!("n{}.example", n % 4));
                        let t = match &host {
                            Some(h) => UdpTarget::Domain {
                                host: h,
                                port: dest(dn).port(),
                            },
                            None => UdpTarget::Addr(dest(dn)),
                        };
                        let mut v = Vec::new();
                        su::encode_udp_header(&t, &mut v).unwrap();
                        v.extend_from_slice(payload);
                        v
                    }
                };
                let r = assoc[k].from_client(now, from, &d, &rules, &o, &mut global);
                let m = &mut model[k];
                let cf = canonical(from);
                let is_client = cf.ip() == client_ip(k) && m.port.is_none_or(|p| p == cf.port());
                if !is_client {
                    assert_eq!(r, FromClient::Dropped(Dropped::NotTheClient(cf)));
                    continue;
                }
                if d.len() > o.max_datagram {
                    assert_eq!(r, FromClient::Dropped(Dropped::TooLarge(d.len())));
                    continue;
                }
                let (target, pl) = match su::parse_udp(&d) {
                    Ok(x) => x,
                    Err(err) => {
                        assert_eq!(r, FromClient::Dropped(Dropped::Header(err)));
                        continue;
                    }
                };
                let denied = !rules.allows_port(target.port())
                    || matches!(target, UdpTarget::Addr(x) if !rules.allows_ip(x.ip()));
                if denied {
                    assert_eq!(r, FromClient::Dropped(Dropped::Denied));
                    continue;
                }
                if !admit(m, &mut g, now, pl.len(), &o) {
                    assert_eq!(r, FromClient::Dropped(Dropped::OverLimit));
                    continue;
                }
                m.port.get_or_insert(cf.port());
                assert_eq!(
                    assoc[k].client(),
                    Some(SocketAddr::new(client_ip(k), m.port.unwrap()))
                );
                match target {
                    UdpTarget::Addr(to) => {
                        assert_eq!(r, FromClient::Send { to, payload: pl });
                        m.contact(to);
                    }
                    UdpTarget::Domain { host, port } => {
                        let cached = m.cache.iter().find(|(h, p, _, t)| {
                            h == host && *p == port && now.saturating_duration_since(*t) < DNS_TTL
                        });
                        match cached {
                            Some(&(_, _, to, _)) => {
                                assert_eq!(r, FromClient::Send { to, payload: pl });
                                m.contact(to);
                            }
                            None => assert_eq!(
                                r,
                                FromClient::Resolve {
                                    host,
                                    port,
                                    payload: pl
                                }
                            ),
                        }
                    }
                }
            }
            Event::Resolved { a, name, ref addrs } => {
                let k = usize::from(a);
                let host = format!("n{}.example", name % 4);
                let port = dest(name).port();
                let addrs: Vec<SocketAddr> = addrs.iter().take(4).map(|&n| dest(n)).collect();
                let got = assoc[k].resolved(now, &host, port, &addrs, &rules);
                let want = addrs.iter().copied().find(|x| rules.allows_ip(x.ip()));
                assert_eq!(got, want);
                if let Some(to) = want {
                    let m = &mut model[k];
                    if m.cache.len() >= 16 {
                        m.cache.remove(0);
                    }
                    m.cache.push((host, port, to, now));
                    m.contact(to);
                }
            }
            Event::Remote { a, from, payload } => {
                let k = usize::from(a);
                let from = dest(from);
                let mut out = vec![0xEE];
                let r = assoc[k].from_remote(now, from, payload, &o, &mut global, &mut out);
                let m = &mut model[k];
                let cf = canonical(from);
                let Some(port) = m.port else {
                    assert_eq!(r, Err(Dropped::Unsolicited(cf)));
                    continue;
                };
                if !m.peers.contains(&cf) {
                    assert_eq!(r, Err(Dropped::Unsolicited(cf)));
                    continue;
                }
                if payload.len() + 22 > o.max_datagram {
                    assert_eq!(r, Err(Dropped::TooLarge(payload.len())));
                    continue;
                }
                if !admit(m, &mut g, now, payload.len(), &o) {
                    assert_eq!(r, Err(Dropped::OverLimit));
                    continue;
                }
                assert_eq!(r, Ok(SocketAddr::new(client_ip(k), port)));
                let (t, pl) = su::parse_udp(&out[1..]).expect("our header parses");
                assert_eq!(t, UdpTarget::Addr(cf), "the header names the sender");
                assert_eq!(pl, payload);
            }
            Event::Advance(ms) => {
                clock.advance(millis(u32::from(ms)));
            }
        }
    }
});
