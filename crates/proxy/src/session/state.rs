//! The proxy session as a state machine: what a [`Session`](super::Session) does,
//! decided without sockets, without a clock of its own and without a loop.
//!
//! [`SessionState`] is fed events (bytes of the SOCKS5 handshake, a resolution's
//! result, a connect's outcome, the pipe's progress, a deadline passing) with the
//! time they happened, and answers with [`Action`]s (resolve this name, connect to
//! this address, start relaying, refuse with this reply, close for this reason) and
//! with the one instant it next wants to be woken at ([`poll_timeout`]). Its phase
//! is a [`Phase`]: what is only valid in one phase (the handshake codec, the
//! addresses left to try, the idle and linger deadlines) lives in that phase's
//! variant. Why a session failed is a [`Failure`], and [`Failure::reply`] is the one
//! place that turns a failure into a SOCKS5 reply.
//!
//! Deadlines, all from [`Timeouts`]:
//! - the SOCKS5 handshake must finish within `handshake`;
//! - the whole connect (name resolution, retries while the worker pool is full, every
//!   address) within `connect`. Each address but the last gets an equal share of
//!   what is left when it starts, so a silent address cannot use up the time of the
//!   ones after it, and one that fails at once leaves its share to them;
//! - a relaying session with no bytes moved for `idle` is closed (checked lazily: a
//!   transfer only stores its time);
//! - after one side failed and the other got everything, the session waits for that
//!   other side to close, but only until its peer has acknowledged every byte (the
//!   prompt end: the pipe is asked on a short, backing-off timer, since an
//!   acknowledgement makes no event), and `linger` at most;
//! - a refused client has `handshake` to read its reply and close.
//!
//! It must not do I/O: the handler ([`Session`](super::Session)) owns the sockets,
//! the pipe, the worker pool and the loop's timer, performs the actions and reports
//! back. It logs only at debug level; what is a rejection (rate-limited and
//! counted) is for the handler to log, from the [`Failure`].
//!
//! [`poll_timeout`]: SessionState::poll_timeout

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reactor::CloseReason;
use reactor::pipe::{AckPoll, PipeStatus};

use crate::Mode;
use crate::proxy_protocol::{self, ProxyHeaderError};
use crate::rules::Rules;
use crate::socks5::{Command, Handshake, HandshakeError, Reply, Request, Step, Target};

/// When the worker pool's queue is full, resolution is retried after this long
/// (still within the connect timeout).
pub const RESOLVE_RETRY: Duration = Duration::from_millis(20);

/// The deadlines of one session (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Resolution and every connect attempt together.
    pub connect: Duration,
    /// No bytes moved in either direction while relaying.
    pub idle: Duration,
    /// After one side failed and the other got everything, waiting for it to close.
    pub linger: Duration,
    /// The SOCKS5 handshake; also how long a refused client has to read its reply.
    pub handshake: Duration,
}

impl Timeouts {
    /// The timeouts of a [`ProxyOptions`](crate::ProxyOptions).
    pub fn of(opts: &crate::ProxyOptions) -> Timeouts {
        Timeouts {
            connect: opts.connect_timeout,
            idle: opts.idle_timeout,
            linger: opts.linger_timeout,
            handshake: opts.handshake_timeout,
        }
    }
}

/// Where a session is. Data valid in one phase only lives in its variant.
#[derive(Debug)]
pub enum Phase {
    /// Accepted, not started yet ([`SessionState::start`]).
    Accepted {
        /// What the proxy does with the connection.
        mode: Mode,
    },
    /// Reading the PROXY protocol header a trusted balancer sends first.
    ProxyHeader {
        /// What the proxy does with the connection after the header.
        mode: Mode,
        /// The header must be complete by then.
        until: Instant,
        /// The header was read; waiting for the handler to admit the client it
        /// announces ([`SessionState::admitted`]).
        read: bool,
    },
    /// SOCKS5: reading the greeting, the credentials and the request.
    Handshake {
        /// The sans-IO SOCKS5 server handshake.
        codec: Handshake,
        /// The handshake must be finished by then.
        until: Instant,
    },
    /// A host name is being resolved on the worker pool.
    Resolving {
        /// The name.
        host: String,
        /// The destination port.
        port: u16,
        /// The whole connect must be done by then.
        by: Instant,
        /// The pool was full: ask again at this instant.
        retry_at: Option<Instant>,
    },
    /// Connecting to each address in turn.
    Connecting {
        /// Where the client wants to go.
        target: Target,
        /// Every address to try, in order.
        addrs: Vec<SocketAddr>,
        /// How many of them were tried; the one being connected to is the one
        /// before.
        tried: usize,
        /// The whole connect must be done by then.
        by: Instant,
        /// The current address's share of the time ends then (none for the last).
        attempt_until: Option<Instant>,
        /// Why the last address failed.
        last_err: Option<Unreachable>,
    },
    /// The pipe moves bytes.
    Relaying {
        /// The last time bytes moved.
        last_activity: Instant,
        /// When the idle timeout is next checked.
        idle_at: Instant,
        /// A side failed and the other has everything: the wait for its close (or
        /// for its peer to acknowledge everything).
        linger: Option<Linger>,
    },
    /// UDP ASSOCIATE: the handler is binding the association's UDP socket.
    Associating,
    /// UDP ASSOCIATE: datagrams are relayed while the TCP connection stays open.
    Associated {
        /// The last time a datagram was relayed.
        last_activity: Instant,
        /// When the idle timeout is next checked.
        idle_at: Instant,
        /// The association's idle timeout.
        idle: Duration,
    },
    /// A failure reply was queued; the client is given time to read it and close.
    Refusing {
        /// Close by then at the latest.
        until: Instant,
    },
    /// Nothing more to do: the handler closes.
    Closed,
}

/// The wait of a relaying session after one side failed and the other got
/// everything: it ends when that side closes, when its peer has acknowledged every
/// byte (asked at `poll_at`, backing off), or at `until` at the latest.
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    /// The linger timeout's end.
    pub until: Instant,
    /// When to ask next whether everything was acknowledged.
    pub poll_at: Instant,
    /// The back-off of those questions.
    pub poll: AckPoll,
}

/// What the handler is to do next; see [`SessionState::poll_action`].
#[derive(Debug)]
pub enum Action {
    /// Resolve `host` on the worker pool and report with
    /// [`resolved`](SessionState::resolved), or with
    /// [`pool_full`](SessionState::pool_full) if the pool takes no more work. The
    /// client is not read until the upstream is connected.
    Resolve {
        /// The name.
        host: String,
        /// The port the addresses get.
        port: u16,
    },
    /// The PROXY protocol header was read: the client is `src` and it connected to
    /// `dst` (`None`: the header announces no addresses, e.g. a health check's
    /// `LOCAL`; keep the connection's own). Admit that client (limits, client
    /// rules) and report with [`admitted`](SessionState::admitted), or close.
    Announced {
        /// The client's address.
        src: Option<SocketAddr>,
        /// The address the client connected to.
        dst: Option<SocketAddr>,
    },
    /// Drop the connection being attempted (if any) and start one to this address;
    /// report with [`connect_failed`](SessionState::connect_failed) (at once, if it
    /// cannot even start) or [`connected`](SessionState::connected). The client is
    /// not read meanwhile.
    Connect(SocketAddr),
    /// UDP ASSOCIATE: bind the association's UDP socket on the address the TCP
    /// connection came in on (the reply names it), for datagrams from the client's
    /// address and `port` (0: whatever its first datagram comes from); report with
    /// [`associated`](SessionState::associated) (then queue the success reply) or
    /// [`associate_failed`](SessionState::associate_failed).
    Associate {
        /// The port the client said it sends from (0: not known).
        port: u16,
    },
    /// The upstream is connected: queue `reply` to the client (SOCKS5's success,
    /// with the upstream connection's local address), start the pipe, read both
    /// sides. Report the pipe's progress with [`relayed`](SessionState::relayed).
    Relay {
        /// The address connected to.
        to: SocketAddr,
        /// The reply to send first, if any.
        reply: Option<Reply>,
    },
    /// The client is turned away: log and count `failure`, drop the upstream, queue
    /// `reply` (if any: the handshake may have queued its own answer already), shut
    /// the client's write side down after it and read and drop what it still
    /// sends; report with [`client_done`](SessionState::client_done) once it
    /// closed.
    Refuse {
        /// Why.
        failure: Failure,
        /// What to tell the client.
        reply: Option<Reply>,
    },
    /// Ask the pipe whether the healthy side's peer has acknowledged everything
    /// ([`Pipe::is_delivered`](reactor::pipe::Pipe::is_delivered)) and report with
    /// [`delivered`](SessionState::delivered).
    CheckDelivered,
    /// Close the session now.
    Close(End),
}

/// Why a session ended; [`End::close_reason`] is the loop's name for it.
#[derive(Debug)]
pub enum End {
    /// Both directions finished, or a side failed and the other one has
    /// everything and closed too.
    Finished,
    /// No bytes moved for this long.
    Idle(Duration),
    /// A side failed; the other got everything and its peer acknowledged all of it:
    /// nothing can be lost by closing now (the prompt end).
    Delivered,
    /// A side failed; the other got everything but did not close within this long.
    LingerTimeout(Duration),
    /// A refused client read its reply and closed.
    RefusalDelivered,
    /// A refused client did not close within the handshake timeout.
    RefusalTimeout,
    /// Turned away without a reply (log and count the failure).
    Rejected(Failure),
    /// The client a PROXY header announced was not admitted (the handler logged
    /// and counted it).
    NotAdmitted,
    /// The client reset while the upstream was resolved or connected: nobody waits
    /// for it any more.
    ClientLeft(io::Error),
    /// The loop is shutting down and the session was not relaying yet.
    Shutdown,
    /// A UDP association's TCP connection closed (or failed): the association ends.
    AssociationEnded,
}

impl End {
    /// How the loop counts this ending.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            End::ClientLeft(_) => CloseReason::PeerReset,
            End::RefusalDelivered => CloseReason::ProtocolError,
            _ => CloseReason::Local,
        }
    }
}

/// Why a session was turned away.
#[derive(Debug)]
pub enum Failure {
    /// A malformed PROXY protocol header.
    ProxyHeader(ProxyHeaderError),
    /// The connection ended before its PROXY protocol header was complete.
    ProxyHeaderEof,
    /// No complete PROXY protocol header within this long.
    ProxyHeaderTimeout(Duration),
    /// The client closed during the SOCKS5 handshake.
    HandshakeEof,
    /// The SOCKS5 handshake was not finished within this long.
    HandshakeTimeout(Duration),
    /// The handshake failed (not SOCKS5, no acceptable method, bad credentials, a
    /// malformed request); the codec queued its own answer, if it has one.
    Handshake(HandshakeError),
    /// A command this proxy does not carry out.
    Unsupported {
        /// The command.
        command: Command,
        /// Its destination.
        target: Target,
    },
    /// The destination (its address or its port) is denied by the rules.
    Denied(Target),
    /// No UDP association could be made: the limit of associations is reached, or
    /// its socket could not be bound.
    Associate(String),
    /// The destination could not be reached.
    Unreachable {
        /// Where the client wanted to go.
        target: Target,
        /// Why not.
        why: Unreachable,
    },
}

/// Why a destination could not be reached.
#[derive(Debug)]
pub enum Unreachable {
    /// Resolving its name failed.
    Resolve(io::Error),
    /// Its name has no address (or none was left to try).
    NoAddress,
    /// Every address its name has is denied by the rules.
    AllDenied,
    /// Its name was not resolved within the connect timeout.
    ResolveTimeout(Duration),
    /// The last address tried failed (refused, unreachable, ...).
    Connect(SocketAddr, io::Error),
    /// The address did not answer within its share of the connect timeout.
    NoAnswer(SocketAddr),
    /// The connect timeout passed.
    Timeout {
        /// The connect timeout.
        timeout: Duration,
        /// Addresses tried.
        tried: usize,
        /// Addresses there were.
        of: usize,
        /// The one that did not answer.
        last: Option<SocketAddr>,
        /// Why the one before it failed, if one did.
        before: Option<Box<Unreachable>>,
    },
}

impl Failure {
    /// What a SOCKS5 client is told: the one place a failure becomes a reply.
    /// `None`: nothing (the client closed or timed out, or the handshake codec
    /// queued its own answer).
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Failure::ProxyHeader(_)
            | Failure::ProxyHeaderEof
            | Failure::ProxyHeaderTimeout(_)
            | Failure::HandshakeEof
            | Failure::HandshakeTimeout(_)
            | Failure::Handshake(_) => None,
            Failure::Unsupported { .. } => Some(Reply::CommandNotSupported),
            Failure::Denied(_) => Some(Reply::NotAllowed),
            Failure::Associate(_) => Some(Reply::GeneralFailure),
            Failure::Unreachable { why, .. } => Some(match why {
                Unreachable::Resolve(_) | Unreachable::NoAddress => Reply::HostUnreachable,
                Unreachable::AllDenied => Reply::NotAllowed,
                Unreachable::ResolveTimeout(_)
                | Unreachable::NoAnswer(_)
                | Unreachable::Timeout { .. } => Reply::TtlExpired,
                // What the kernel said about the connect (refused, unreachable).
                Unreachable::Connect(_, e) => Reply::from_io_error(e),
            }),
        }
    }

    /// True for a failure of the handshake (counted as such); false for an
    /// upstream that could not be reached (a connect failure).
    pub fn is_handshake(&self) -> bool {
        !matches!(self, Failure::Unreachable { .. })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::ProxyHeader(e) => write!(f, "{e}; closing"),
            Failure::ProxyHeaderEof => {
                f.write_str("closed before its PROXY protocol header was complete")
            }
            Failure::ProxyHeaderTimeout(d) => {
                write!(f, "no complete PROXY protocol header within {d:?}; closing")
            }
            Failure::HandshakeEof => f.write_str("client closed during the SOCKS5 handshake"),
            Failure::HandshakeTimeout(d) => {
                write!(f, "SOCKS5 handshake not finished within {d:?}; closing")
            }
            Failure::Handshake(e) => write!(f, "{e}"),
            Failure::Unsupported { command, target } => {
                write!(f, "SOCKS5 command {command:?} to {target} is not supported")
            }
            Failure::Denied(t) => write!(f, "CONNECT {t} denied by the rules"),
            Failure::Associate(e) => write!(f, "UDP ASSOCIATE refused: {e}"),
            Failure::Unreachable { target, why } => write!(f, "cannot reach {target}: {why}"),
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Resolve(e) => write!(f, "cannot resolve the name: {e}"),
            Unreachable::NoAddress => f.write_str("no address to connect to"),
            Unreachable::AllDenied => {
                f.write_str("every address of the name is denied by the rules")
            }
            Unreachable::ResolveTimeout(d) => write!(f, "name resolution took longer than {d:?}"),
            Unreachable::Connect(a, e) => write!(f, "connect to {a}: {e}"),
            Unreachable::NoAnswer(a) => write!(f, "connect to {a} did not answer in time"),
            Unreachable::Timeout {
                timeout,
                tried,
                of,
                last,
                before,
            } => {
                write!(
                    f,
                    "no connection within {timeout:?} (tried {tried} of {of} addresses"
                )?;
                if let Some(a) = last {
                    write!(f, ", the last {a} did not answer")?;
                }
                if let Some(b) = before {
                    write!(f, "; before that: {b}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// One proxied connection's decisions. See the module docs.
#[derive(Debug)]
pub struct SessionState {
    /// For debug lines.
    peer: SocketAddr,
    timeouts: Timeouts,
    socks: bool,
    /// Connections start with a PROXY protocol header.
    proxy_header: bool,
    phase: Phase,
    actions: VecDeque<Action>,
}

impl SessionState {
    /// A session of a proxy in `mode` for the client at `peer`; nothing happens
    /// before [`start`](Self::start).
    pub fn new(peer: SocketAddr, mode: Mode, timeouts: Timeouts) -> SessionState {
        SessionState {
            peer,
            timeouts,
            socks: matches!(mode, Mode::Socks5 { .. }),
            proxy_header: false,
            phase: Phase::Accepted { mode },
            actions: VecDeque::new(),
        }
    }

    /// The connection starts with a PROXY protocol header (from a trusted peer):
    /// read it first ([`proxy_header`](Self::proxy_header)), within the handshake
    /// timeout. Call before [`start`](Self::start).
    pub fn expect_proxy_header(&mut self) {
        self.proxy_header = true;
    }

    /// The session starts at `now`: a SOCKS5 session waits for the handshake; a
    /// forwarder starts resolving or connecting at once (see
    /// [`poll_action`](Self::poll_action)).
    pub fn start(&mut self, now: Instant) {
        let Phase::Accepted { mode } = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return;
        };
        if self.proxy_header {
            self.phase = Phase::ProxyHeader {
                mode,
                until: now + self.timeouts.handshake,
                read: false,
            };
            return;
        }
        self.start_mode(now, mode);
    }

    /// The PROXY protocol header's bytes: everything received so far and not
    /// consumed, and whether the connection half-closed. Returns how many bytes
    /// were the header: what follows is the client's (SOCKS5 or payload).
    pub fn proxy_header(&mut self, input: &[u8], eof: bool) -> usize {
        let Phase::ProxyHeader {
            read: read @ false, ..
        } = &mut self.phase
        else {
            return 0;
        };
        match proxy_protocol::parse(input) {
            Ok(Some((header, n))) => {
                *read = true;
                let (src, dst) = header.socket_addrs().unzip();
                self.actions.push_back(Action::Announced { src, dst });
                n
            }
            Ok(None) if eof => {
                self.close(End::Rejected(Failure::ProxyHeaderEof));
                0
            }
            Ok(None) => 0,
            Err(e) => {
                self.close(End::Rejected(Failure::ProxyHeader(e)));
                0
            }
        }
    }

    /// The client the PROXY header announced was admitted (now the client, for
    /// this session): the session goes on as it would have without a header.
    pub fn admitted(&mut self, now: Instant, client: SocketAddr) {
        let Phase::ProxyHeader { read: true, .. } = &self.phase else {
            return;
        };
        let Phase::ProxyHeader { mode, .. } = std::mem::replace(&mut self.phase, Phase::Closed)
        else {
            return;
        };
        self.peer = client;
        self.start_mode(now, mode);
    }

    /// The announced client was not admitted (limits, client rules).
    pub fn not_admitted(&mut self) {
        if matches!(self.phase, Phase::ProxyHeader { .. }) {
            self.close(End::NotAdmitted);
        }
    }

    fn start_mode(&mut self, now: Instant, mode: Mode) {
        match mode {
            Mode::Socks5 { auth } => {
                self.phase = Phase::Handshake {
                    codec: Handshake::new(auth),
                    until: now + self.timeouts.handshake,
                };
            }
            Mode::Forward(target) => self.start_connect(now, target),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The current phase's name, for logs.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Accepted { .. } => "accepted",
            Phase::ProxyHeader { .. } => "PROXY header",
            Phase::Handshake { .. } => "handshake",
            Phase::Resolving { .. } => "resolving",
            Phase::Connecting { .. } => "connecting",
            Phase::Relaying { .. } => "relaying",
            Phase::Refusing { .. } => "refusing",
            Phase::Associating => "associating",
            Phase::Associated { .. } => "associated",
            Phase::Closed => "closed",
        }
    }

    /// The next action to perform, if any. Call it until `None` after every event.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The instant this session next wants [`on_timeout`](Self::on_timeout)
    /// called, if any (the earliest of the current phase's deadlines).
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Handshake { until, .. }
            | Phase::Refusing { until }
            | Phase::ProxyHeader { until, .. } => Some(*until),
            Phase::Resolving { by, retry_at, .. } => Some(earliest(*by, *retry_at)),
            Phase::Connecting {
                by, attempt_until, ..
            } => Some(earliest(*by, *attempt_until)),
            Phase::Relaying {
                idle_at, linger, ..
            } => Some(match linger {
                Some(l) => (*idle_at).min(l.until).min(l.poll_at),
                None => *idle_at,
            }),
            Phase::Associated { idle_at, .. } => Some(*idle_at),
            Phase::Accepted { .. } | Phase::Associating | Phase::Closed => None,
        }
    }

    /// SOCKS5 handshake bytes: everything the client sent so far and not consumed
    /// (`input`), and whether it has half-closed. Appends what to send back to
    /// `out` and returns how many bytes of `input` were used; after the request,
    /// the bytes left are tunnel payload (keep them for the upstream). Outside the
    /// handshake it does nothing.
    pub fn handshake(
        &mut self,
        now: Instant,
        input: &[u8],
        eof: bool,
        rules: &Rules,
        out: &mut Vec<u8>,
    ) -> usize {
        let Phase::Handshake { codec, .. } = &mut self.phase else {
            return 0;
        };
        let before = out.len();
        match codec.feed(input, out) {
            Ok((n, Step::NeedMore)) => {
                if eof {
                    self.close(End::Rejected(Failure::HandshakeEof));
                }
                n
            }
            Ok((n, Step::Request(req))) => {
                self.request(now, req, rules);
                n
            }
            Err(e) => {
                let failure = Failure::Handshake(e);
                if out.len() > before {
                    self.refuse(now, failure);
                } else {
                    // Not SOCKS5: nothing we could say would be understood.
                    self.close(End::Rejected(failure));
                }
                0
            }
        }
    }

    fn request(&mut self, now: Instant, req: Request, rules: &Rules) {
        if req.command == Command::UdpAssociate {
            // The request names where the client will send from, not a destination.
            log::debug!("session {}: UDP ASSOCIATE from {}", self.peer, req.target);
            self.phase = Phase::Associating;
            self.actions.push_back(Action::Associate {
                port: req.target.port(),
            });
            return;
        }
        if req.command != Command::Connect {
            let failure = Failure::Unsupported {
                command: req.command,
                target: req.target,
            };
            return self.refuse(now, failure);
        }
        let denied = !rules.allows_port(req.target.port())
            || matches!(req.target, Target::Addr(a) if !rules.allows_ip(a.ip()));
        if denied {
            return self.refuse(now, Failure::Denied(req.target));
        }
        log::debug!("session {}: CONNECT {}", self.peer, req.target);
        self.start_connect(now, req.target);
    }

    fn start_connect(&mut self, now: Instant, target: Target) {
        // One deadline for all of it: resolution, pool-full retries, every address.
        let by = now + self.timeouts.connect;
        match target {
            Target::Addr(a) => {
                self.phase = Phase::Connecting {
                    target,
                    addrs: vec![a],
                    tried: 0,
                    by,
                    attempt_until: None,
                    last_err: None,
                };
                self.try_next(now);
            }
            Target::Domain { host, port } => {
                self.actions.push_back(Action::Resolve {
                    host: host.clone(),
                    port,
                });
                self.phase = Phase::Resolving {
                    host,
                    port,
                    by,
                    retry_at: None,
                };
            }
        }
    }

    /// The worker pool's queue was full: resolution is asked again after
    /// [`RESOLVE_RETRY`].
    pub fn pool_full(&mut self, now: Instant) {
        if let Phase::Resolving { retry_at, .. } = &mut self.phase {
            *retry_at = Some(now + RESOLVE_RETRY);
        }
    }

    /// The resolution's result. A SOCKS5 session keeps only the addresses `rules`
    /// allow, so a name cannot smuggle a client into a denied range.
    pub fn resolved(&mut self, now: Instant, result: io::Result<Vec<SocketAddr>>, rules: &Rules) {
        let Phase::Resolving { host, port, by, .. } = &mut self.phase else {
            return;
        };
        let target = Target::Domain {
            host: std::mem::take(host),
            port: *port,
        };
        let by = *by;
        let mut addrs = match result {
            Ok(a) if a.is_empty() => return self.unreachable(now, target, Unreachable::NoAddress),
            Ok(a) => a,
            Err(e) => return self.unreachable(now, target, Unreachable::Resolve(e)),
        };
        if self.socks {
            addrs.retain(|a| rules.allows_ip(a.ip()));
            if addrs.is_empty() {
                return self.unreachable(now, target, Unreachable::AllDenied);
            }
        }
        self.phase = Phase::Connecting {
            target,
            addrs,
            tried: 0,
            by,
            attempt_until: None,
            last_err: None,
        };
        self.try_next(now);
    }

    /// The connect to the current address failed (at once, or later).
    pub fn connect_failed(&mut self, now: Instant, e: io::Error) {
        let Phase::Connecting {
            addrs,
            tried,
            last_err,
            ..
        } = &mut self.phase
        else {
            return;
        };
        let Some(&addr) = tried.checked_sub(1).and_then(|i| addrs.get(i)) else {
            return;
        };
        log::debug!("session {}: connect to {addr}: {e}", self.peer);
        *last_err = Some(Unreachable::Connect(addr, e));
        self.try_next(now);
    }

    /// Starts the next address, or fails when none is left. The connect deadline
    /// is not extended: an address gets an equal share of what is left of it (the
    /// last one gets all the rest).
    fn try_next(&mut self, now: Instant) {
        let Phase::Connecting {
            target,
            addrs,
            tried,
            by,
            attempt_until,
            last_err,
        } = &mut self.phase
        else {
            return;
        };
        *attempt_until = None;
        if let Some(&addr) = addrs.get(*tried) {
            *tried += 1;
            let after = addrs.len() - *tried;
            if after > 0 {
                let left = by.saturating_duration_since(now);
                let shares = u32::try_from(after + 1).unwrap_or(u32::MAX);
                *attempt_until = Some(now + left / shares);
            }
            self.actions.push_back(Action::Connect(addr));
            return;
        }
        let why = last_err.take().unwrap_or(Unreachable::NoAddress);
        let target = target.clone();
        self.unreachable(now, target, why);
    }

    /// The upstream connection is established.
    pub fn connected(&mut self, now: Instant) {
        let Phase::Connecting { addrs, tried, .. } = &self.phase else {
            return;
        };
        let Some(&to) = tried.checked_sub(1).and_then(|i| addrs.get(i)) else {
            return;
        };
        self.phase = Phase::Relaying {
            last_activity: now,
            idle_at: now + self.timeouts.idle,
            linger: None,
        };
        let reply = self.socks.then_some(Reply::Succeeded);
        self.actions.push_back(Action::Relay { to, reply });
    }

    /// The client's socket failed while the upstream was resolved or connected:
    /// the session ends now, not when the connect does. (An end of file there is
    /// a half-close and waits for the connect.)
    pub fn client_failed(&mut self, e: io::Error) {
        if matches!(
            self.phase,
            Phase::Resolving { .. } | Phase::Connecting { .. }
        ) {
            self.close(End::ClientLeft(e));
        }
    }

    /// The pipe's progress after an event: `moved` bytes (read or written, for the
    /// idle timeout) and where it is. The common case (bytes moved, still open) is
    /// one store.
    #[inline]
    pub fn relayed(&mut self, now: Instant, moved: usize, status: PipeStatus) {
        let Phase::Relaying {
            last_activity,
            linger,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if moved > 0 {
            *last_activity = now;
        }
        match status {
            PipeStatus::Open => {}
            PipeStatus::Lingering => {
                if linger.is_none() {
                    // Everything deliverable is delivered; the healthy side's input
                    // is being dropped until it closes. It may never: bound it, and
                    // end sooner once its peer has acknowledged everything.
                    let mut poll = AckPoll::default();
                    *linger = Some(Linger {
                        until: now + self.timeouts.linger,
                        poll_at: now + poll.next_delay(),
                        poll,
                    });
                }
            }
            PipeStatus::Done => self.close(End::Finished),
        }
    }

    /// The answer to [`Action::CheckDelivered`]: whether the healthy side's peer
    /// has acknowledged everything. If so the session ends now; if not, it asks
    /// again a little later (until the linger timeout).
    pub fn delivered(&mut self, now: Instant, yes: bool) {
        let Phase::Relaying {
            linger: Some(l), ..
        } = &mut self.phase
        else {
            return;
        };
        if yes {
            self.close(End::Delivered);
        } else {
            l.poll_at = now + l.poll.next_delay();
        }
    }

    /// The association's UDP socket is bound (the handler queues the success reply
    /// naming it): datagrams are relayed until the TCP connection closes or `idle`
    /// passes without one.
    pub fn associated(&mut self, now: Instant, idle: Duration) {
        if matches!(self.phase, Phase::Associating) {
            self.phase = Phase::Associated {
                last_activity: now,
                idle_at: now + idle,
                idle,
            };
        }
    }

    /// No association could be made (why: for the log): refused with 0x01.
    pub fn associate_failed(&mut self, now: Instant, why: String) {
        if matches!(self.phase, Phase::Associating) {
            self.refuse(now, Failure::Associate(why));
        }
    }

    /// A datagram was relayed (for the idle timeout): one store.
    #[inline]
    pub fn udp_activity(&mut self, now: Instant) {
        if let Phase::Associated { last_activity, .. } = &mut self.phase {
            *last_activity = now;
        }
    }

    /// The association's TCP connection closed or failed: the association ends.
    pub fn control_closed(&mut self) {
        if matches!(self.phase, Phase::Associated { .. }) {
            self.close(End::AssociationEnded);
        }
    }

    /// A refused client has read its reply and closed.
    pub fn client_done(&mut self) {
        if matches!(self.phase, Phase::Refusing { .. }) {
            self.close(End::RefusalDelivered);
        }
    }

    /// The loop is shutting down: draining means finishing tunnels that carry data,
    /// not opening new ones.
    pub fn shutdown(&mut self) {
        if !matches!(self.phase, Phase::Relaying { .. } | Phase::Closed) {
            self.close(End::Shutdown);
        }
    }

    /// Time has come to `now` (at or after [`poll_timeout`](Self::poll_timeout)):
    /// deadlines that passed take effect.
    pub fn on_timeout(&mut self, now: Instant) {
        let t = self.timeouts;
        match &mut self.phase {
            Phase::Handshake { until, .. } if now >= *until => {
                self.close(End::Rejected(Failure::HandshakeTimeout(t.handshake)));
            }
            Phase::ProxyHeader { until, .. } if now >= *until => {
                self.close(End::Rejected(Failure::ProxyHeaderTimeout(t.handshake)));
            }
            Phase::Resolving {
                host,
                port,
                by,
                retry_at,
            } => {
                if now >= *by {
                    let target = Target::Domain {
                        host: std::mem::take(host),
                        port: *port,
                    };
                    self.unreachable(now, target, Unreachable::ResolveTimeout(t.connect));
                } else if retry_at.is_some_and(|r| now >= r) {
                    *retry_at = None;
                    let (host, port) = (host.clone(), *port);
                    self.actions.push_back(Action::Resolve { host, port });
                }
            }
            Phase::Connecting {
                target,
                addrs,
                tried,
                by,
                attempt_until,
                last_err,
            } => {
                let current = tried.checked_sub(1).and_then(|i| addrs.get(i)).copied();
                if now >= *by {
                    let why = Unreachable::Timeout {
                        timeout: t.connect,
                        tried: *tried,
                        of: addrs.len(),
                        last: current,
                        before: last_err.take().map(Box::new),
                    };
                    let target = target.clone();
                    self.unreachable(now, target, why);
                } else if attempt_until.is_some_and(|a| now >= a) {
                    // This address's share is used up; the next one gets its own.
                    if let Some(addr) = current {
                        log::debug!(
                            "session {}: connect to {addr} did not answer in time; trying the \
                             next address",
                            self.peer
                        );
                        *last_err = Some(Unreachable::NoAnswer(addr));
                    }
                    self.try_next(now);
                }
            }
            Phase::Relaying {
                last_activity,
                idle_at,
                linger,
            } => {
                if linger.is_some_and(|l| now >= l.until) {
                    self.close(End::LingerTimeout(t.linger));
                } else if let Some(l) = linger.as_mut().filter(|l| now >= l.poll_at) {
                    // Asked once; the answer sets the next time.
                    l.poll_at = l.until;
                    self.actions.push_back(Action::CheckDelivered);
                } else if now >= *idle_at {
                    let idle_for = now.saturating_duration_since(*last_activity);
                    if idle_for >= t.idle {
                        self.close(End::Idle(t.idle));
                    } else {
                        // There was activity: check again when the rest has passed.
                        *idle_at = *last_activity + t.idle;
                    }
                }
            }
            Phase::Associated {
                last_activity,
                idle_at,
                idle,
            } if now >= *idle_at => {
                if now.saturating_duration_since(*last_activity) >= *idle {
                    let idle = *idle;
                    self.close(End::Idle(idle));
                } else {
                    *idle_at = *last_activity + *idle;
                }
            }
            Phase::Refusing { until } if now >= *until => self.close(End::RefusalTimeout),
            _ => {}
        }
    }

    /// The upstream of `target` cannot be reached: a SOCKS5 client is refused with
    /// the matching reply, a forwarded client is closed at once.
    fn unreachable(&mut self, now: Instant, target: Target, why: Unreachable) {
        let failure = Failure::Unreachable { target, why };
        if self.socks {
            self.refuse(now, failure);
        } else {
            self.close(End::Rejected(failure));
        }
    }

    fn refuse(&mut self, now: Instant, failure: Failure) {
        self.phase = Phase::Refusing {
            until: now + self.timeouts.handshake,
        };
        let reply = failure.reply();
        self.actions.push_back(Action::Refuse { failure, reply });
    }

    fn close(&mut self, end: End) {
        self.phase = Phase::Closed;
        self.actions.push_back(Action::Close(end));
    }
}

fn earliest(a: Instant, b: Option<Instant>) -> Instant {
    b.map_or(a, |b| a.min(b))
}

#[cfg(test)]
mod tests;
