//! A relay circuit end's set-up (`reactor_relay::setup::CircuitSetup`) driven by
//! arbitrary events.
//!
//! Input: whether the end forwards to a target (resolved and connected to) or
//! bridges an accepted connection, the setup timeout, and events in any order:
//! the relay's bytes (raw, or real `CONNECTED` / `REFUSED` / other frames with
//! data after them), resolution results, connect outcomes, the local side
//! failing or leaving, the bridge's progress, and time. Properties:
//! - at most one `Close`, nothing after it (no action, no timeout, phase
//!   `Closed`); at most one `Bridge`, only after a `CONNECTED` was consumed and
//!   while a local connection exists, and at once when both hold;
//! - `relay_bytes` consumes exactly the answer frame (what follows `CONNECTED`
//!   stays for the bridge) and nothing otherwise;
//! - `Resolve` only for a forwarding end, once, with its target; `Connect` only
//!   to the address the resolution gave;
//! - liveness: with only time passing, every end closes, except one not started
//!   or bridged with nothing left to time (the bridge carries it).
#![no_main]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_fuzz::{Clock, client_addr, millis};
use reactor_relay::bridge::Pumped;
use reactor_relay::proto::{self, Message, Reason};
use reactor_relay::setup::{CircuitSetup, SetupAction, SetupPhase};
use reactor_relay::table::{BudgetExceeded, Direction};

#[derive(Arbitrary, Debug)]
enum Event<'a> {
    Raw(&'a [u8], bool),
    /// A real frame (`kind`: CONNECTED, REFUSED, HEARTBEAT_ACK), cut after `cut`
    /// bytes, followed by `after`.
    Frame {
        kind: u8,
        cut: u8,
        after: &'a [u8],
    },
    Resolved(Option<u8>),
    ResolveFailed,
    ConnectStarted,
    ConnectFailed,
    LocalFailed,
    LocalLeft,
    ForwardConnected,
    Pumped(u8),
    Advance(u32),
    Timeout,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    forward: bool,
    start: bool,
    setup_ms: u16,
    events: Vec<Event<'a>>,
}

struct D {
    s: CircuitSetup,
    forward: bool,
    closed: bool,
    bridged: bool,
    answered: bool,
    resolves: usize,
    resolved_to: Option<SocketAddr>,
}

impl D {
    fn drain(&mut self) {
        while let Some(a) = self.s.poll_action() {
            assert!(!self.closed, "{a:?} after the close");
            match a {
                SetupAction::Close(e) => {
                    self.closed = true;
                    let _ = format!("{e:?}");
                }
                SetupAction::Bridge => {
                    assert!(!self.bridged, "bridged twice");
                    assert!(self.answered, "bridged before CONNECTED");
                    self.bridged = true;
                }
                SetupAction::Resolve(t) => {
                    assert!(self.forward);
                    assert_eq!(t, "target.example:80");
                    self.resolves += 1;
                    assert_eq!(self.resolves, 1, "resolved twice");
                }
                SetupAction::Connect(a) => assert_eq!(Some(a), self.resolved_to),
            }
        }
        if self.closed {
            assert!(matches!(self.s.phase(), SetupPhase::Closed));
            assert_eq!(self.s.poll_timeout(), None);
        }
        // Answered with a local connection present: bridged at once.
        if let SetupPhase::Waiting {
            answered, local, ..
        } = self.s.phase()
        {
            assert!(
                !(*answered && matches!(local, reactor_relay::setup::Local::Present { .. })),
                "answered and present, but not bridged"
            );
        }
    }
}

fn frame(kind: u8) -> Vec<u8> {
    let m = match kind % 3 {
        0 => Message::Connected { circuit: 9 },
        1 => Message::Refused {
            reason: Reason::NoReservation,
            detail: Some("gone"),
        },
        _ => Message::HeartbeatAck,
    };
    let mut v = Vec::new();
    proto::encode(&m, &mut v).unwrap();
    v
}

fuzz_target!(|i: Input<'_>| {
    let mut clock = Clock::new();
    let setup = millis(u32::from(i.setup_ms) + 1);
    let mut d = D {
        s: CircuitSetup::new(i.forward.then(|| "target.example:80".to_string()), setup),
        forward: i.forward,
        closed: false,
        bridged: false,
        answered: false,
        resolves: 0,
        resolved_to: None,
    };
    if i.start {
        d.s.start(clock.now());
        d.drain();
    }
    for e in i.events.iter().take(200) {
        let now = clock.now();
        match *e {
            Event::Raw(b, eof) => {
                let waiting = matches!(
                    d.s.phase(),
                    SetupPhase::Waiting {
                        answered: false,
                        ..
                    }
                );
                let n = d.s.relay_bytes(b, eof);
                assert!(n <= b.len());
                if n > 0 {
                    assert!(waiting);
                    let (m, used) = proto::decode(b).unwrap().unwrap();
                    assert_eq!(used, n);
                    if matches!(m, Message::Connected { .. }) {
                        d.answered = true;
                    }
                }
            }
            Event::Frame { kind, cut, after } => {
                let waiting = matches!(
                    d.s.phase(),
                    SetupPhase::Waiting {
                        answered: false,
                        ..
                    }
                );
                let f = frame(kind);
                let k = usize::from(cut) % (f.len() + 1);
                // A partial frame first: nothing consumed, nothing decided.
                if k < f.len() {
                    let was_closed = d.closed;
                    assert_eq!(d.s.relay_bytes(&f[..k], false), 0);
                    d.drain();
                    assert_eq!(d.closed, was_closed, "a partial frame decided");
                }
                let mut all = f.clone();
                all.extend_from_slice(after);
                let n = d.s.relay_bytes(&all, false);
                if waiting && !d.closed {
                    match kind % 3 {
                        0 => {
                            assert_eq!(n, f.len(), "CONNECTED consumed exactly");
                            d.answered = true;
                        }
                        1 => assert_eq!(n, f.len()),
                        _ => assert_eq!(n, 0),
                    }
                } else {
                    assert_eq!(n, 0);
                }
            }
            Event::Resolved(a) => {
                let addr = a.map(client_addr);
                if matches!(
                    d.s.phase(),
                    SetupPhase::Waiting {
                        local: reactor_relay::setup::Local::Resolving(_),
                        ..
                    }
                ) {
                    d.resolved_to = addr;
                }
                d.s.resolved(Ok(addr));
            }
            Event::ResolveFailed => d.s.resolved(Err(io::ErrorKind::NotFound.into())),
            Event::ConnectStarted => d.s.connect_started(),
            Event::ConnectFailed => d.s.connect_failed(io::ErrorKind::ConnectionRefused.into()),
            Event::LocalFailed => d.s.local_failed(io::ErrorKind::ConnectionReset.into()),
            Event::LocalLeft => d.s.local_left("gone".into()),
            Event::ForwardConnected => {
                d.s.forward_connected();
                assert!(!d.s.awaits_connect());
            }
            Event::Pumped(p) => {
                let p = match p % 4 {
                    0 => Pumped::Open,
                    1 => Pumped::Lingering,
                    2 => Pumped::Done,
                    _ => Pumped::OverBudget(BudgetExceeded {
                        direction: Direction::ToConnector,
                        limit: 1,
                    }),
                };
                d.s.pumped(now, p);
            }
            Event::Advance(ms) => {
                clock.advance(millis(ms % 100_000));
                if d.s.poll_timeout().is_some_and(|t| clock.now() >= t) {
                    d.s.on_timeout(clock.now());
                }
            }
            Event::Timeout => {
                if let Some(t) = d.s.poll_timeout() {
                    if t > clock.now() {
                        clock.advance(t - clock.now());
                    }
                    d.s.on_timeout(clock.now());
                }
            }
        }
        d.drain();
    }
    for _ in 0..16 {
        let Some(t) = d.s.poll_timeout() else { break };
        if t > clock.now() {
            clock.advance(t - clock.now());
        }
        d.s.on_timeout(clock.now());
        d.drain();
        if d.s.poll_timeout() == Some(t) {
            clock.advance(Duration::from_millis(1));
        }
    }
    let waiting = matches!(
        d.s.phase(),
        SetupPhase::New
            | SetupPhase::Bridged {
                connect_until: None,
                linger_until: None
            }
    );
    assert!(d.closed || waiting, "stuck in {:?}", d.s.phase());
});
