//! A client-side circuit's set-up as a state machine: what a
//! [`CircuitEnd`](crate::client::CircuitEnd) does, decided without sockets.
//!
//! A circuit end sends `ACCEPT` or `CONNECT` on a new connection to the relay,
//! waits for `CONNECTED`, and bridges that connection to a local one: an accepted
//! connection (the connecting side), or a connection to the forward target, whose
//! name is resolved on the worker pool first (the reserving side). [`CircuitSetup`]
//! is fed what happened (the relay's bytes, the resolution, a failed connect, the
//! local side leaving, the bridge's progress) and the time, and answers with
//! [`SetupAction`]s (resolve, connect, bridge, close) and the next instant it wants
//! to be woken at ([`poll_timeout`](CircuitSetup::poll_timeout)):
//!
//! - the set-up must finish within the setup timeout: the relay's answer, and a
//!   forward connect that is still in progress when the circuit is bridged (a
//!   target that never answers would otherwise hold the circuit for the kernel's
//!   SYN retries, about two minutes);
//! - after one side of the bridge failed and the other got everything, the end
//!   waits at most [`LINGER`] for that other side to close.
//!
//! How the set-up ended is an [`Ending`]; a [`SetupError`] is a fault (the
//! handler reports it as one), the other endings are outcomes.
//!
//! It must not do I/O: the handler owns the sockets, the pool and the loop's timer.
//! It parses only through [`proto`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::bridge::{LINGER, Pumped};
use crate::proto::{self, Message, Reason};

/// Where a circuit end is.
#[derive(Debug)]
pub enum SetupPhase {
    /// Not started ([`CircuitSetup::start`]).
    New,
    /// `ACCEPT`/`CONNECT` sent; waiting for the relay's answer and for the local side.
    Waiting {
        /// `CONNECTED` arrived.
        answered: bool,
        /// The local side.
        local: Local,
        /// Set up by then, or closed.
        until: Instant,
    },
    /// The bridge carries the circuit.
    Bridged {
        /// The forward connect is still in progress and must be done by then.
        connect_until: Option<Instant>,
        /// A side failed and the other has everything: close by then at the latest.
        linger_until: Option<Instant>,
    },
    /// Nothing more to do: the handler closes.
    Closed,
}

/// The local side of a circuit end during its set-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// The forward target `HOST:PORT` is being resolved.
    Resolving(String),
    /// The forward target resolved to this address; the connect is being started.
    Connecting(SocketAddr),
    /// A connection exists: accepted, or a connect to the forward target started.
    Present {
        /// True for a connect this end started (it may still be in progress).
        connecting: bool,
    },
}

/// What the handler is to do next.
#[derive(Debug)]
pub enum SetupAction {
    /// Resolve `HOST:PORT` on the worker pool; report with
    /// [`resolved`](CircuitSetup::resolved).
    Resolve(String),
    /// Connect to the forward target at this address; report with
    /// [`connect_started`](CircuitSetup::connect_started), or
    /// [`connect_failed`](CircuitSetup::connect_failed) if it cannot start (a
    /// failure later, while waiting, with [`local_failed`](CircuitSetup::local_failed)).
    Connect(SocketAddr),
    /// Bridge the relay connection and the local one (the relay connection's
    /// unconsumed bytes are the circuit's first data).
    Bridge,
    /// Close the circuit end.
    Close(Ending),
}

/// How a circuit end ended.
#[derive(Debug)]
pub enum Ending {
    /// The bridge finished: both directions, or one side failed and the other has
    /// everything and closed.
    Finished,
    /// The circuit went over its byte budget.
    OverBudget,
    /// A side failed and the other did not close within this long.
    LingerTimeout(Duration),
    /// The relay refused the circuit.
    Refused {
        /// The relay's reason.
        reason: Reason,
        /// Its detail, if any.
        detail: Option<String>,
    },
    /// The local connection left before the circuit was up (an application that
    /// gives up is normal).
    LocalLeft(String),
    /// Not set up within the setup timeout (`bridged`: the relay answered, but the
    /// forward target did not accept the connection in time).
    SetupTimeout {
        /// The relay had answered and the circuit was bridged.
        bridged: bool,
        /// The setup timeout.
        after: Duration,
    },
    /// A fault.
    Failed(SetupError),
}

/// A circuit end's fault.
#[derive(Debug)]
pub enum SetupError {
    /// The relay closed the connection before answering.
    RelayClosed,
    /// The relay sent something else than `CONNECTED` or `REFUSED`.
    Unexpected(proto::MessageType),
    /// The relay's frame did not decode.
    BadFrame(proto::ProtoError),
    /// The forward target's name did not resolve.
    Resolve {
        /// `HOST:PORT`.
        target: String,
        /// Why.
        error: io::Error,
    },
    /// The forward target's name has no address.
    NoAddress(String),
    /// The connect to the forward target could not start.
    Connect(SocketAddr, io::Error),
    /// The connect to the forward target failed before the circuit was bridged.
    Forward(io::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::RelayClosed => f.write_str("the relay closed the circuit"),
            SetupError::Unexpected(t) => write!(f, "unexpected {t} from the relay"),
            SetupError::BadFrame(e) => write!(f, "bad frame from the relay: {e}"),
            SetupError::Resolve { target, error } => write!(f, "cannot resolve {target}: {error}"),
            SetupError::NoAddress(t) => write!(f, "{t}: no address"),
            SetupError::Connect(a, e) => write!(f, "cannot connect to {a}: {e}"),
            SetupError::Forward(e) => write!(f, "the forward target: {e}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// One circuit end's decisions. See the module docs.
#[derive(Debug)]
pub struct CircuitSetup {
    setup_timeout: Duration,
    /// The forward target, until the start.
    forward: Option<String>,
    phase: SetupPhase,
    actions: VecDeque<SetupAction>,
}

impl CircuitSetup {
    /// A circuit end that bridges to `forward` (`HOST:PORT`, resolved and connected
    /// to), or to an accepted local connection when `forward` is `None`.
    pub fn new(forward: Option<String>, setup_timeout: Duration) -> CircuitSetup {
        CircuitSetup {
            setup_timeout,
            forward,
            phase: SetupPhase::New,
            actions: VecDeque::new(),
        }
    }

    /// The hello went out at `now`: the setup timeout starts.
    pub fn start(&mut self, now: Instant) {
        if !matches!(self.phase, SetupPhase::New) {
            return;
        }
        let local = match self.forward.take() {
            Some(target) => {
                self.actions.push_back(SetupAction::Resolve(target.clone()));
                Local::Resolving(target)
            }
            None => Local::Present { connecting: false },
        };
        self.phase = SetupPhase::Waiting {
            answered: false,
            local,
            until: now + self.setup_timeout,
        };
    }

    /// The current phase.
    pub fn phase(&self) -> &SetupPhase {
        &self.phase
    }

    /// The next action to perform, if any. Call it until `None` after every event.
    pub fn poll_action(&mut self) -> Option<SetupAction> {
        self.actions.pop_front()
    }

    /// The instant this end next wants [`on_timeout`](Self::on_timeout) called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            SetupPhase::Waiting { until, .. } => Some(*until),
            SetupPhase::Bridged {
                connect_until,
                linger_until,
            } => match (connect_until, linger_until) {
                (Some(a), Some(b)) => Some(*a.min(b)),
                (a, b) => a.or(*b),
            },
            SetupPhase::New | SetupPhase::Closed => None,
        }
    }

    /// True while the bridge runs with the forward connect still in progress: the
    /// handler reports its completion with [`forward_connected`](Self::forward_connected).
    pub fn awaits_connect(&self) -> bool {
        matches!(
            self.phase,
            SetupPhase::Bridged {
                connect_until: Some(_),
                ..
            }
        )
    }

    /// What the relay sent so far and not consumed (`input`), and whether it
    /// closed. Returns how many bytes were the answer: what follows `CONNECTED` is
    /// the circuit's first data and stays for the bridge.
    pub fn relay_bytes(&mut self, input: &[u8], eof: bool) -> usize {
        let SetupPhase::Waiting { answered, .. } = &mut self.phase else {
            return 0;
        };
        if *answered {
            return 0;
        }
        match proto::decode(input) {
            Ok(Some((Message::Connected { .. }, used))) => {
                *answered = true;
                self.maybe_bridge();
                used
            }
            Ok(Some((Message::Refused { reason, detail }, used))) => {
                let detail = detail.map(str::to_string);
                self.close(Ending::Refused { reason, detail });
                used
            }
            Ok(Some((other, _))) => {
                self.fail(SetupError::Unexpected(other.message_type()));
                0
            }
            Ok(None) if eof => {
                self.fail(SetupError::RelayClosed);
                0
            }
            Ok(None) => 0,
            Err(e) => {
                self.fail(SetupError::BadFrame(e));
                0
            }
        }
    }

    /// The forward target's first address, or why there is none.
    pub fn resolved(&mut self, result: io::Result<Option<SocketAddr>>) {
        let SetupPhase::Waiting {
            local: local @ Local::Resolving(_),
            ..
        } = &mut self.phase
        else {
            return;
        };
        let Local::Resolving(target) =
            std::mem::replace(local, Local::Present { connecting: true })
        else {
            return;
        };
        match result {
            Ok(Some(addr)) => {
                *local = Local::Connecting(addr);
                self.actions.push_back(SetupAction::Connect(addr));
            }
            Ok(None) => self.fail(SetupError::NoAddress(target)),
            Err(error) => self.fail(SetupError::Resolve { target, error }),
        }
    }

    /// The connect to the forward target started (it completes, or fails, later).
    pub fn connect_started(&mut self) {
        if let SetupPhase::Waiting {
            local: local @ Local::Connecting(_),
            ..
        } = &mut self.phase
        {
            *local = Local::Present { connecting: true };
            self.maybe_bridge();
        }
    }

    /// The connect to the forward target could not even start.
    pub fn connect_failed(&mut self, e: io::Error) {
        if let SetupPhase::Waiting {
            local: Local::Connecting(addr),
            ..
        } = self.phase
        {
            self.fail(SetupError::Connect(addr, e));
        }
    }

    /// The connect to the forward target failed before the circuit was bridged
    /// (after, a failed connect ends that side of the bridge like any failure).
    pub fn local_failed(&mut self, e: io::Error) {
        if matches!(self.phase, SetupPhase::Waiting { .. }) {
            self.fail(SetupError::Forward(e));
        }
    }

    /// The local connection left (reset, or closed without sending anything)
    /// before the circuit was up: the end closes, and with it its relay
    /// connection, so the relay frees the circuit at once.
    pub fn local_left(&mut self, why: String) {
        if matches!(self.phase, SetupPhase::Waiting { .. }) {
            self.close(Ending::LocalLeft(why));
        }
    }

    /// The bridged forward connect completed.
    pub fn forward_connected(&mut self) {
        if let SetupPhase::Bridged { connect_until, .. } = &mut self.phase {
            *connect_until = None;
        }
    }

    /// What the bridge said after an event.
    pub fn pumped(&mut self, now: Instant, p: Pumped) {
        let SetupPhase::Bridged { linger_until, .. } = &mut self.phase else {
            return;
        };
        match p {
            Pumped::Open => {}
            Pumped::Lingering => {
                if linger_until.is_none() {
                    *linger_until = Some(now + LINGER);
                }
            }
            Pumped::Done => self.close(Ending::Finished),
            Pumped::OverBudget(_) => self.close(Ending::OverBudget),
        }
    }

    /// Time has come to `now`: deadlines that passed take effect.
    pub fn on_timeout(&mut self, now: Instant) {
        let after = self.setup_timeout;
        match &self.phase {
            SetupPhase::Waiting { until, .. } if now >= *until => {
                self.close(Ending::SetupTimeout {
                    bridged: false,
                    after,
                });
            }
            SetupPhase::Bridged {
                connect_until,
                linger_until,
            } => {
                if connect_until.is_some_and(|t| now >= t) {
                    self.close(Ending::SetupTimeout {
                        bridged: true,
                        after,
                    });
                } else if linger_until.is_some_and(|t| now >= t) {
                    self.close(Ending::LingerTimeout(LINGER));
                }
            }
            _ => {}
        }
    }

    fn maybe_bridge(&mut self) {
        let SetupPhase::Waiting {
            answered: true,
            local: Local::Present { connecting },
            until,
        } = self.phase
        else {
            return;
        };
        // A forward target still connecting is fine: the bridge sends what it holds
        // for it once connected, and a failed connect ends that side. The setup
        // timeout still bounds that connect.
        self.phase = SetupPhase::Bridged {
            connect_until: connecting.then_some(until),
            linger_until: None,
        };
        self.actions.push_back(SetupAction::Bridge);
    }

    fn fail(&mut self, e: SetupError) {
        self.close(Ending::Failed(e));
    }

    fn close(&mut self, e: Ending) {
        self.phase = SetupPhase::Closed;
        self.actions.push_back(SetupAction::Close(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{BudgetExceeded, Direction};

    const SETUP: Duration = Duration::from_secs(15);

    fn drain(s: &mut CircuitSetup) -> Vec<SetupAction> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn frame(m: &Message<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        proto::encode(m, &mut v).unwrap();
        v
    }

    fn connected() -> Vec<u8> {
        frame(&Message::Connected { circuit: 7 })
    }

    /// A connecting-side end (accepted local connection), started at `now`.
    fn accepted(now: Instant) -> CircuitSetup {
        let mut s = CircuitSetup::new(None, SETUP);
        assert_eq!(s.poll_timeout(), None);
        s.start(now);
        assert!(drain(&mut s).is_empty());
        s
    }

    #[test]
    fn an_accepted_connection_is_bridged_on_connected_with_the_data_after_it() {
        let t0 = Instant::now();
        let mut s = accepted(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + SETUP));
        let mut input = connected();
        let n = input.len();
        // Half the frame first: nothing yet.
        assert_eq!(s.relay_bytes(&input[..n - 1], false), 0);
        assert!(drain(&mut s).is_empty());
        input.extend_from_slice(b"first data");
        assert_eq!(
            s.relay_bytes(&input, false),
            n,
            "the data stays for the bridge"
        );
        assert!(matches!(drain(&mut s)[..], [SetupAction::Bridge]));
        assert_eq!(s.poll_timeout(), None, "nothing left to time out");
    }

    #[test]
    fn a_forward_target_is_resolved_connected_and_its_connect_bounded() {
        let t0 = Instant::now();
        let mut s = CircuitSetup::new(Some("svc.example:80".into()), SETUP);
        s.start(t0);
        assert!(matches!(&drain(&mut s)[..], [SetupAction::Resolve(t)] if t == "svc.example:80"));
        // The relay answers before the name resolves: not bridged yet.
        s.relay_bytes(&connected(), false);
        assert!(drain(&mut s).is_empty());
        let a: SocketAddr = "10.0.0.9:80".parse().unwrap();
        s.resolved(Ok(Some(a)));
        assert!(matches!(drain(&mut s)[..], [SetupAction::Connect(x)] if x == a));
        // Bridged once the connect has started, not before.
        s.connect_started();
        assert!(matches!(drain(&mut s)[..], [SetupAction::Bridge]));
        // Bridged while still connecting: the setup deadline still bounds it.
        assert!(s.awaits_connect());
        assert_eq!(s.poll_timeout(), Some(t0 + SETUP));
        s.forward_connected();
        assert!(!s.awaits_connect());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_forward_connect_that_never_completes_ends_at_the_setup_timeout() {
        let t0 = Instant::now();
        let mut s = CircuitSetup::new(Some("svc:1".into()), SETUP);
        s.start(t0);
        drain(&mut s);
        s.resolved(Ok(Some("10.0.0.1:1".parse().unwrap())));
        s.connect_started();
        s.relay_bytes(&connected(), false);
        drain(&mut s);
        s.on_timeout(t0 + SETUP - Duration::from_millis(1));
        assert!(drain(&mut s).is_empty());
        s.on_timeout(t0 + SETUP);
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::SetupTimeout {
                bridged: true,
                ..
            })]
        ));
    }

    #[test]
    fn no_answer_within_the_setup_timeout_closes() {
        let t0 = Instant::now();
        let mut s = accepted(t0);
        s.on_timeout(t0 + SETUP);
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::SetupTimeout {
                bridged: false,
                ..
            })]
        ));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn the_relays_answers_other_than_connected() {
        let t0 = Instant::now();
        let refused = frame(&Message::Refused {
            reason: Reason::NoReservation,
            detail: Some("who?"),
        });
        let mut s = accepted(t0);
        assert_eq!(s.relay_bytes(&refused, false), refused.len());
        match &drain(&mut s)[..] {
            [SetupAction::Close(Ending::Refused { reason, detail })] => {
                assert_eq!(*reason, Reason::NoReservation);
                assert_eq!(detail.as_deref(), Some("who?"));
            }
            other => panic!("{other:?}"),
        }
        let mut s = accepted(t0);
        s.relay_bytes(&frame(&Message::HeartbeatAck), false);
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Failed(SetupError::Unexpected(
                _
            )))]
        ));
        let mut s = accepted(t0);
        s.relay_bytes(&[0x7f, 0, 0], false);
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Failed(SetupError::BadFrame(_)))]
        ));
        let mut s = accepted(t0);
        s.relay_bytes(&connected()[..2], true);
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Failed(SetupError::RelayClosed))]
        ));
    }

    #[test]
    fn resolution_and_connect_failures_are_faults() {
        let t0 = Instant::now();
        let mut s = CircuitSetup::new(Some("nowhere:1".into()), SETUP);
        s.start(t0);
        drain(&mut s);
        s.resolved(Ok(None));
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Failed(SetupError::NoAddress(t)))] if t == "nowhere:1"
        ));
        let mut s = CircuitSetup::new(Some("nowhere:1".into()), SETUP);
        s.start(t0);
        drain(&mut s);
        s.resolved(Err(io::ErrorKind::NotFound.into()));
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Failed(
                SetupError::Resolve { .. }
            ))]
        ));
        let mut s = CircuitSetup::new(Some("svc:1".into()), SETUP);
        s.start(t0);
        drain(&mut s);
        s.resolved(Ok(Some("10.0.0.1:1".parse().unwrap())));
        drain(&mut s);
        s.relay_bytes(&connected(), false);
        // A connect that cannot start is not bridged.
        s.connect_failed(io::ErrorKind::AddrNotAvailable.into());
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Failed(SetupError::Connect(..)))]
        ));
        let mut s = CircuitSetup::new(Some("svc:1".into()), SETUP);
        s.start(t0);
        drain(&mut s);
        s.resolved(Ok(Some("10.0.0.1:1".parse().unwrap())));
        s.connect_started();
        drain(&mut s);
        s.local_failed(io::ErrorKind::ConnectionRefused.into());
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Failed(SetupError::Forward(_)))]
        ));
    }

    #[test]
    fn a_local_connection_that_leaves_during_setup_ends_it_at_once() {
        let t0 = Instant::now();
        let mut s = accepted(t0);
        s.local_left("end of file".into());
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::LocalLeft(_))]
        ));
        // Once bridged, a leaving side is the bridge's business.
        let mut s = accepted(t0);
        s.relay_bytes(&connected(), false);
        drain(&mut s);
        s.local_left("reset".into());
        s.local_failed(io::ErrorKind::ConnectionReset.into());
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn the_bridge_lingers_at_most_linger_and_ends_when_done() {
        let t0 = Instant::now();
        let mut s = accepted(t0);
        s.relay_bytes(&connected(), false);
        drain(&mut s);
        s.pumped(t0, Pumped::Open);
        assert!(drain(&mut s).is_empty());
        let t1 = t0 + Duration::from_secs(3);
        s.pumped(t1, Pumped::Lingering);
        assert_eq!(s.poll_timeout(), Some(t1 + LINGER));
        s.pumped(t1 + Duration::from_secs(1), Pumped::Lingering);
        assert_eq!(s.poll_timeout(), Some(t1 + LINGER), "not pushed back");
        s.on_timeout(t1 + LINGER);
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::LingerTimeout(_))]
        ));

        let mut s = accepted(t0);
        s.relay_bytes(&connected(), false);
        drain(&mut s);
        s.pumped(t0, Pumped::Done);
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::Finished)]
        ));

        let mut s = accepted(t0);
        s.relay_bytes(&connected(), false);
        drain(&mut s);
        let over = BudgetExceeded {
            direction: Direction::ToReserver,
            limit: 10,
        };
        s.pumped(t0, Pumped::OverBudget(over));
        assert!(matches!(
            &drain(&mut s)[..],
            [SetupAction::Close(Ending::OverBudget)]
        ));
    }
}
