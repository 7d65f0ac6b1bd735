//! The proxy session's sans-IO state machine
//! (`reactor_proxy::session::state::SessionState`) driven by arbitrary events.
//!
//! Input: the mode (SOCKS5 with or without a password, or a forwarder to an
//! address or a name), whether a PROXY protocol header comes first, timeouts,
//! and a sequence of events in any order: client bytes (PROXY header, SOCKS5
//! handshake, possibly the real encodings so deep states are reached),
//! admission, resolution results, pool-full, connect outcomes, pipe progress,
//! delivery answers, UDP association outcomes, closes, shutdown, and time.
//! Properties:
//! - at most one `Close` action, and nothing at all after it: no action, no
//!   timeout, the phase stays `Closed`; after a `Refuse` the only action left is
//!   that `Close`;
//! - every `Connect` goes to an address the session was given (the literal
//!   target or the resolution's answer), never to one the rules deny in SOCKS5
//!   mode, at most once per address per resolution; `Relay` names the address
//!   last connected to, and carries SOCKS5's success reply exactly in SOCKS5
//!   mode; a `Refuse` carries `failure.reply()`;
//! - consumed byte counts never exceed what was offered, and an `Announced`
//!   action carries what `proxy_protocol::parse` reads from those bytes;
//! - a connect attempt's own deadline is never after the whole connect's;
//! - liveness: after the events, answering nothing and only letting time run to
//!   each `poll_timeout` closes every session except one waiting for the
//!   handler (accepted and not started, or binding a UDP association).
#![no_main]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor::pipe::PipeStatus;
use reactor_fuzz::{Clock, client_addr, millis};
use reactor_proxy::proxy_protocol;
use reactor_proxy::rules::{Cidr, Rules};
use reactor_proxy::session::state::{Action, End, Phase, SessionState, Timeouts};
use reactor_proxy::socks5::{self, Command, Target};
use reactor_proxy::{Mode, ProxyOptions};

#[derive(Arbitrary, Debug)]
enum M {
    Socks,
    SocksAuth,
    ForwardAddr(u8),
    ForwardName,
}

#[derive(Arbitrary, Debug)]
enum Event<'a> {
    HeaderBytes(&'a [u8], bool),
    /// A real v1/v2 header announcing clients from the pool.
    Header {
        v2: bool,
        src: u8,
        dst: u8,
    },
    Admitted(u8),
    NotAdmitted,
    Bytes(&'a [u8], bool),
    /// A real greeting (+ credentials) and request to a pool destination.
    Request {
        cmd: u8,
        dest: u8,
        name: bool,
        good_password: bool,
    },
    PoolFull,
    Resolved(Vec<u8>),
    ResolveFailed,
    ConnectFailed,
    Connected,
    ClientFailed,
    Relayed(u16, u8),
    Delivered(bool),
    Associated(u16),
    AssociateFailed,
    UdpActivity,
    ControlClosed,
    ClientDone,
    Shutdown,
    Advance(u32),
    Timeout,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    mode: M,
    proxy_header: bool,
    start: bool,
    timeouts: [u16; 4],
    events: Vec<Event<'a>>,
}

/// Destinations: some denied by the rules (10.0.0.0/8, port 25), some not.
fn dest(n: u8) -> SocketAddr {
    let ip = match n % 5 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        2 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        3 => "2001:db8::5".parse().unwrap(),
        _ => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
    };
    SocketAddr::new(ip, [80, 443, 25][usize::from(n / 5) % 3])
}

fn rules() -> Rules {
    Rules {
        deny_nets: vec![
            Cidr::parse_masked("10.0.0.0/8").unwrap(),
            Cidr::parse_masked("127.0.0.0/8").unwrap(),
        ],
        deny_ports: vec![25],
    }
}

struct Driver {
    s: SessionState,
    socks: bool,
    clock: Clock,
    rules: Rules,
    closed: bool,
    refused: bool,
    /// Addresses the session may connect to now, and those it did.
    allowed: Vec<SocketAddr>,
    connected_to: Vec<SocketAddr>,
    last_connect: Option<SocketAddr>,
    announced: Option<(Option<SocketAddr>, Option<SocketAddr>)>,
}

impl Driver {
    fn drain(&mut self) {
        while let Some(a) = self.s.poll_action() {
            assert!(!self.closed, "{a:?} after the close");
            if self.refused {
                assert!(matches!(a, Action::Close(_)), "{a:?} after a refusal");
            }
            match a {
                Action::Close(end) => {
                    self.closed = true;
                    let _ = end.close_reason();
                    if let End::Rejected(f) = &end {
                        let _ = f.to_string();
                    }
                }
                Action::Refuse { failure, reply } => {
                    assert_eq!(reply, failure.reply());
                    let _ = failure.to_string();
                    self.refused = true;
                }
                Action::Connect(a) => {
                    assert!(self.allowed.contains(&a), "connect to {a}, not given");
                    if self.socks {
                        assert!(self.rules.allows_ip(a.ip()), "connect to denied {a}");
                    }
                    assert!(!self.connected_to.contains(&a), "{a} tried twice");
                    self.connected_to.push(a);
                    self.last_connect = Some(a);
                }
                Action::Relay { to, reply } => {
                    assert_eq!(Some(to), self.last_connect);
                    assert_eq!(reply.is_some(), self.socks);
                }
                Action::Resolve { port, .. } => {
                    // A new resolution: its answer is what may be connected to.
                    let _ = port;
                    self.allowed.clear();
                    self.connected_to.clear();
                }
                Action::Announced { src, dst } => self.announced = Some((src, dst)),
                Action::Associate { .. } | Action::CheckDelivered => {}
            }
        }
        if self.closed {
            assert!(matches!(self.s.phase(), Phase::Closed));
            assert_eq!(self.s.poll_timeout(), None);
        }
        if let Phase::Connecting {
            by, attempt_until, ..
        } = self.s.phase()
        {
            assert!(attempt_until.is_none_or(|a| a <= *by));
        }
    }
}

fuzz_target!(|i: Input<'_>| {
    let mode = match i.mode {
        M::Socks => Mode::Socks5 { auth: None },
        M::SocksAuth => Mode::Socks5 {
            auth: Some((b"user".to_vec(), b"secret".to_vec())),
        },
        M::ForwardAddr(n) => Mode::Forward(Target::Addr(dest(n))),
        M::ForwardName => Mode::Forward(Target::Domain {
            host: "upstream.example".into(),
            port: 80,
        }),
    };
    let socks = matches!(mode, Mode::Socks5 { .. });
    let auth = matches!(i.mode, M::SocksAuth);
    let mut timeouts = Timeouts::of(&ProxyOptions::new(Mode::Socks5 { auth: None }));
    timeouts.connect = millis(u32::from(i.timeouts[0]) + 1);
    timeouts.idle = millis(u32::from(i.timeouts[1]) + 1);
    timeouts.linger = millis(u32::from(i.timeouts[2]) + 1);
    timeouts.handshake = millis(u32::from(i.timeouts[3]) + 1);
    let initial_allowed = match &mode {
        Mode::Forward(Target::Addr(a)) => vec![*a],
        _ => Vec::new(),
    };
    let mut d = Driver {
        s: SessionState::new(client_addr(0), mode, timeouts),
        socks,
        clock: Clock::new(),
        rules: rules(),
        closed: false,
        refused: false,
        allowed: initial_allowed,
        connected_to: Vec::new(),
        last_connect: None,
        announced: None,
    };
    if i.proxy_header {
        d.s.expect_proxy_header();
    }
    if i.start {
        d.s.start(d.clock.now());
        d.drain();
    }
    let mut out = Vec::new();
    for e in i.events.iter().take(200) {
        let now = d.clock.now();
        match *e {
            Event::HeaderBytes(b, eof) => {
                d.announced = None;
                let n = d.s.proxy_header(b, eof);
                assert!(n <= b.len());
                d.drain();
                if n > 0 {
                    let (h, m) = proxy_protocol::parse(b).unwrap().unwrap();
                    assert_eq!(m, n);
                    let (src, dst) = h.socket_addrs().unzip();
                    assert_eq!(d.announced, Some((src, dst)));
                }
            }
            Event::Header { v2, src, dst } => {
                let mut h = Vec::new();
                if v2 {
                    proxy_protocol::encode_v2(client_addr(src), dest(dst), &mut h);
                } else {
                    proxy_protocol::encode_v1(client_addr(src), dest(dst), &mut h);
                }
                let n = d.s.proxy_header(&h, false);
                assert!(n == 0 || n == h.len());
            }
            Event::Admitted(c) => d.s.admitted(now, client_addr(c)),
            Event::NotAdmitted => d.s.not_admitted(),
            Event::Bytes(b, eof) => {
                out.clear();
                let n = d.s.handshake(now, b, eof, &d.rules, &mut out);
                assert!(n <= b.len());
            }
            Event::Request {
                cmd,
                dest: n,
                name,
                good_password,
            } => {
                let mut b = Vec::new();
                if auth {
                    socks5::encode_greeting(&[0x02], &mut b).unwrap();
                    let pass: &[u8] = if good_password { b"secret" } else { b"wrong" };
                    socks5::encode_userpass(b"user", pass, &mut b).unwrap();
                } else {
                    socks5::encode_greeting(&[0x00], &mut b).unwrap();
                }
                let command =
                    [Command::Connect, Command::Bind, Command::UdpAssociate][usize::from(cmd % 3)];
                let target = if name {
                    Target::Domain {
                        host: "dest.example".into(),
                        port: dest(n).port(),
                    }
                } else {
                    if matches!(d.s.phase(), Phase::Handshake { .. }) {
                        d.allowed = vec![dest(n)];
                        d.connected_to.clear();
                    }
                    Target::Addr(dest(n))
                };
                socks5::encode_request(command, &target, &mut b).unwrap();
                out.clear();
                let used = d.s.handshake(now, &b, false, &d.rules, &mut out);
                assert!(used <= b.len());
            }
            Event::PoolFull => d.s.pool_full(now),
            Event::Resolved(ref addrs) => {
                // Distinct addresses, so "tried at most once" applies.
                let mut list: Vec<SocketAddr> = Vec::new();
                for &n in addrs.iter().take(6) {
                    if !list.contains(&dest(n)) {
                        list.push(dest(n));
                    }
                }
                if matches!(d.s.phase(), Phase::Resolving { .. }) {
                    d.allowed = list.clone();
                    d.connected_to.clear();
                }
                d.s.resolved(now, Ok(list), &d.rules);
            }
            Event::ResolveFailed => {
                d.s.resolved(now, Err(io::ErrorKind::NotFound.into()), &d.rules)
            }
            Event::ConnectFailed => {
                d.s.connect_failed(now, io::ErrorKind::ConnectionRefused.into())
            }
            Event::Connected => d.s.connected(now),
            Event::ClientFailed => d.s.client_failed(io::ErrorKind::ConnectionReset.into()),
            Event::Relayed(moved, st) => {
                let status = [PipeStatus::Open, PipeStatus::Lingering, PipeStatus::Done]
                    [usize::from(st % 3)];
                d.s.relayed(now, usize::from(moved), status);
            }
            Event::Delivered(yes) => d.s.delivered(now, yes),
            Event::Associated(ms) => d.s.associated(now, millis(u32::from(ms) + 1)),
            Event::AssociateFailed => d.s.associate_failed(now, "full".into()),
            Event::UdpActivity => d.s.udp_activity(now),
            Event::ControlClosed => d.s.control_closed(),
            Event::ClientDone => d.s.client_done(),
            Event::Shutdown => d.s.shutdown(),
            Event::Advance(ms) => {
                d.clock.advance(millis(ms % 100_000));
                if d.s.poll_timeout().is_some_and(|t| d.clock.now() >= t) {
                    d.s.on_timeout(d.clock.now());
                }
            }
            Event::Timeout => {
                if let Some(t) = d.s.poll_timeout() {
                    if t > d.clock.now() {
                        d.clock.advance(t - d.clock.now());
                    }
                    d.s.on_timeout(d.clock.now());
                }
            }
        }
        d.drain();
    }
    // Liveness: only time passes from here; nobody answers.
    for _ in 0..1000 {
        let Some(t) = d.s.poll_timeout() else { break };
        let now = d.clock.now();
        if t > now {
            d.clock.advance(t - now);
        }
        d.s.on_timeout(d.clock.now());
        while let Some(a) = d.s.poll_action() {
            match a {
                Action::Close(_) => d.closed = true,
                Action::CheckDelivered => {}
                _ => {}
            }
        }
        if d.closed {
            break;
        }
        // A deadline that does not move would spin: time must help.
        if d.s.poll_timeout() == Some(t) && t <= d.clock.now() {
            d.clock.advance(Duration::from_millis(1));
        }
    }
    let waiting = matches!(d.s.phase(), Phase::Accepted { .. } | Phase::Associating);
    assert!(
        d.closed || waiting,
        "stuck in {} with timeout {:?}",
        d.s.phase_name(),
        d.s.poll_timeout()
    );
});
