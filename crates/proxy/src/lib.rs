//! The proxy protocols: a TCP forwarder and a SOCKS5 server.
//!
//! [`socks5`] is the sans-io SOCKS5 codec (RFC 1928, RFC 1929): plain functions and a
//! handshake state machine over byte slices, tested without sockets. [`rules`] says
//! which destinations SOCKS5 clients may not reach. The core's
//! [`Pipe`](reactor::pipe::Pipe) moves bytes between the two connections of a
//! session (backpressure, half-close). [`session::SessionState`] is the sans-io
//! session: phases, deadlines (handshake, the connect split across addresses,
//! idle, linger) and typed failures, fed events and `now`, answering with actions;
//! [`session::Session`] is the thin handler around it that owns the two
//! connections: SOCKS5 handshake, name resolution on the worker pool,
//! non-blocking connect, then the pipe. [`proxy_listener`] puts it behind a
//! [`Listener`] with session limits.
//!
//! Parsing stays in the codec; the handlers only move bytes and drive the codec.
//! Nothing here blocks the loop: host names are resolved with
//! [`Context::offload`](reactor::Context::offload).
//!
//! ```no_run
//! use reactor_proxy::{Mode, ProxyOptions, proxy_listener};
//! let mut r = reactor::Reactor::new()?;
//! r.shutdown_on_signals()?;
//! let opts = ProxyOptions::new(Mode::Socks5 { auth: None });
//! let (listener, counters) = proxy_listener("127.0.0.1:1080".parse().unwrap(), opts)?;
//! println!("listening on {}", listener.local_addr());
//! r.spawn(listener);
//! r.run()?;
//! log::info!("{}", counters.snapshot());
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod cidr;
pub mod proxy_protocol;
pub mod rules;
pub mod session;
pub mod socks5;
pub mod socks5_udp;
pub mod udp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;

use std::time::{Duration, Instant};

use mio::net::TcpStream;

use reactor::ConnConfig;
use reactor::LogLimiter;
use reactor::{Counter, Gauge, Reactor};
use reactor::{ListenOptions, Listener};

pub use cidr::{Cidr, ClientRules};
pub use rules::Rules;
pub use session::Session;
pub use socks5::Target;

/// What the proxy does with each accepted connection.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Forward every connection to this upstream (an address or a host name,
    /// resolved per session on the worker pool).
    Forward(Target),
    /// Act as a SOCKS5 server; with `auth`, clients must log in with this
    /// username and password (RFC 1929).
    Socks5 {
        /// Required `(username, password)`, or `None` for no authentication.
        auth: Option<(Vec<u8>, Vec<u8>)>,
    },
}

/// Turns a host name and port into the addresses to try, in order.
///
/// It runs on the worker pool, never on the loop, so it may block. The default,
/// [`Resolver::system`], asks the system resolver (`getaddrinfo`). Another one can
/// serve names from a table, a service registry, or a test:
///
/// ```
/// use reactor_proxy::Resolver;
/// let r = Resolver::new(|host, port| match host {
///     "db.internal" => Ok(vec![([10, 0, 0, 7], port).into()]),
///     _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "unknown name")),
/// });
/// assert_eq!(r.resolve("db.internal", 5432).unwrap()[0].to_string(), "10.0.0.7:5432");
/// ```
#[derive(Clone)]
pub struct Resolver(Arc<ResolveFn>);

type ResolveFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

impl Resolver {
    /// The system resolver (`getaddrinfo`, through `ToSocketAddrs`).
    pub fn system() -> Resolver {
        Resolver::new(|host, port| (host, port).to_socket_addrs().map(|it| it.collect()))
    }

    /// A resolver calling `f(host, port)` (on a worker thread).
    pub fn new(
        f: impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Resolver {
        Resolver(Arc::new(f))
    }

    /// Resolves `host`; blocks as long as the function does.
    pub fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        (self.0)(host, port)
    }
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::system()
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

/// Settings of a proxy. Made with [`ProxyOptions::new`]; its fields are set
/// directly (more may come: the struct is `#[non_exhaustive]`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// Forwarder or SOCKS5.
    pub mode: Mode,
    /// Destinations SOCKS5 clients may not reach (answered with 0x02).
    pub rules: Rules,
    /// How host names (SOCKS5 domain targets, a forwarder's named upstream) become
    /// addresses; runs on the worker pool.
    pub resolver: Resolver,
    /// Buffer limits of each of the two connections (watermarks for backpressure).
    /// Its `pause_on_own_queue` holds during the SOCKS5 handshake only: once
    /// relaying, a proxy pauses a side only while the *other* side's queue is
    /// congested, never for its own (see [`Pipe::start`](reactor::pipe::Pipe::start)).
    pub conn: ConnConfig,
    /// Listener settings. Its `max_connections` is a hard accept pause; the session
    /// limits below refuse (close) connections instead, and count them.
    pub listen: ListenOptions,
    /// The whole connect must succeed within this long, counted from the SOCKS5
    /// request (a forwarder: from the accept): name resolution, retries while the
    /// worker pool is full, and every address the name resolves to. Addresses are
    /// tried in turn; each but the last gets an equal share of the time left when
    /// it starts (so with 10 s and two addresses that never answer, 5 s each; an
    /// address that fails at once leaves its share to the next). When the time is
    /// up the client is refused (SOCKS5: 0x06, TTL expired).
    pub connect_timeout: Duration,
    /// A relaying session with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// When one side of a relaying session fails (a reset, a broken pipe), the other
    /// side still gets every byte the proxy holds for it, then end of file; its
    /// further input is read and dropped until it closes, or until its peer has
    /// acknowledged everything (then no reset can destroy anything: the prompt end),
    /// for at most this long after that end of file (closing while bytes are
    /// unacknowledged and it still sends would make the kernel reset the
    /// connection, which can destroy bytes it has not received yet).
    pub linger_timeout: Duration,
    /// The SOCKS5 handshake must complete within this long, or the client is closed.
    /// Also bounds how long a refused client is given to read its error reply.
    pub handshake_timeout: Duration,
    /// Open sessions at most; more are refused (closed at once) and counted.
    pub max_sessions: usize,
    /// Open sessions per client at most; more are refused and counted. A client
    /// is an IPv4 address, or an IPv6 /64 network (one subscriber's usual
    /// allocation: counted per address, a single host could take 2^64 of them).
    pub max_sessions_per_ip: usize,
    /// Which clients may use the proxy (`--allow-client`/`--deny-client`, first match
    /// wins; see [`ClientRules`]), judged before any byte is read from them. With
    /// [`proxy_protocol_in`](Self::proxy_protocol_in), the client is the address the
    /// PROXY header announces, judged right after the header.
    pub clients: ClientRules,
    /// Every incoming connection starts with a PROXY protocol header (v1 or v2),
    /// whose client address is then what limits, logs and rules see. Only accepted
    /// from peers in `proxy_protocol_from`; any other peer is refused, and a missing
    /// or bad header (within the handshake timeout) closes the connection.
    pub proxy_protocol_in: bool,
    /// The peers (load balancers) whose PROXY headers are believed.
    pub proxy_protocol_from: Vec<Cidr>,
    /// Send a PROXY protocol header of this version to every upstream (the
    /// forwarder's, or the SOCKS5 CONNECT destination) before the client's bytes.
    pub proxy_protocol_out: Option<proxy_protocol::Version>,
    /// SOCKS5 UDP ASSOCIATE: limits of the UDP relay.
    pub udp: udp::UdpRelayOptions,
    /// Terminate TLS: every client connection speaks TLS with this server
    /// configuration, and what is relayed is its plaintext. Not with
    /// [`proxy_protocol_in`](Self::proxy_protocol_in) (the header would come before
    /// the ClientHello, in plaintext).
    pub tls: Option<reactor_tls::TlsAcceptor>,
    /// Originate TLS: every upstream connection speaks TLS (forwarder only), its
    /// certificate checked against this name. Not with
    /// [`proxy_protocol_out`](Self::proxy_protocol_out).
    pub upstream_tls: Option<UpstreamTls>,
}

/// TLS to the upstream: the client configuration and the name its certificate must
/// be valid for (sent as SNI).
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// The client side's configuration (trusted CAs).
    pub connector: reactor_tls::TlsConnector,
    /// The server name to ask for and verify.
    pub server_name: String,
}

impl ProxyOptions {
    /// Defaults for `mode`: 10 s connect and handshake timeouts, 300 s idle
    /// timeout, 5 s linger timeout, 10,000 sessions, 1,000 per client IP.
    pub fn new(mode: Mode) -> ProxyOptions {
        ProxyOptions {
            mode,
            rules: Rules::default(),
            resolver: Resolver::system(),
            conn: ConnConfig::default(),
            listen: ListenOptions::default().max_connections(usize::MAX),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            linger_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_sessions: 10_000,
            max_sessions_per_ip: 1_000,
            clients: ClientRules::default(),
            proxy_protocol_in: false,
            proxy_protocol_from: Vec::new(),
            proxy_protocol_out: None,
            udp: udp::UdpRelayOptions::default(),
            tls: None,
            upstream_tls: None,
        }
    }

    /// Checks that the options fit together: TLS on a side excludes the PROXY
    /// protocol on that side, and TLS to the upstream needs the forwarder.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls.is_some() && self.proxy_protocol_in {
            return Err(
                "TLS termination and --proxy-protocol-in cannot be combined yet (the \
                        header arrives in plaintext before the TLS handshake)"
                    .into(),
            );
        }
        if self.upstream_tls.is_some() && self.proxy_protocol_out.is_some() {
            return Err(
                "--upstream-tls and --proxy-protocol-out cannot be combined yet (the \
                        header must precede the TLS handshake, in plaintext)"
                    .into(),
            );
        }
        if self.upstream_tls.is_some() && !matches!(self.mode, Mode::Forward(_)) {
            return Err("--upstream-tls needs the forwarder (--upstream HOST:PORT)".into());
        }
        Ok(())
    }
}

/// Parses `HOST:PORT` (`[v6]:PORT` for IPv6 literals) into a forwarding target.
///
/// ```
/// use reactor_proxy::{Target, parse_host_port};
/// assert!(matches!(parse_host_port("127.0.0.1:80"), Ok(Target::Addr(_))));
/// assert!(matches!(parse_host_port("localhost:80"), Ok(Target::Domain { .. })));
/// assert!(parse_host_port("localhost").is_err());
/// ```
pub fn parse_host_port(s: &str) -> Result<Target, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Target::Addr(a));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: port must be a number 0..=65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, port)));
    }
    if host.is_empty() || host.len() > 255 || host.contains(|c: char| c.is_control() || c == ' ') {
        return Err(format!("{s:?}: bad host name"));
    }
    Ok(Target::Domain {
        host: host.to_string(),
        port,
    })
}

/// Counters of one proxy, shared by its sessions: the loop's own kind of
/// counter (updated by its thread alone, with a plain load and store), readable
/// from any thread, and shown in the loop's stats line and metrics once
/// [`register`](ProxyCounters::register)ed. Sessions add their byte counts once,
/// when they close.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    accepted: Counter,
    active: Gauge,
    refused_total: Counter,
    refused_per_ip: Counter,
    refused_client: Counter,
    handshake_failed: Counter,
    connect_failed: Counter,
    bytes_up: Counter,
    bytes_down: Counter,
    udp_associations: Counter,
    udp_datagrams: Counter,
    udp_dropped: Counter,
}

impl ProxyCounters {
    /// The current values.
    pub fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.accepted.get(),
            active: self.active.get().max(0) as u64,
            refused_total: self.refused_total.get(),
            refused_per_ip: self.refused_per_ip.get(),
            refused_client: self.refused_client.get(),
            handshake_failed: self.handshake_failed.get(),
            connect_failed: self.connect_failed.get(),
            bytes_up: self.bytes_up.get(),
            bytes_down: self.bytes_down.get(),
            udp_associations: self.udp_associations.get(),
            udp_datagrams: self.udp_datagrams.get(),
            udp_dropped: self.udp_dropped.get(),
        }
    }

    /// Shows these counters in `reactor`'s stats line and metrics (the loop the
    /// proxy's listener runs on), as `proxy_sessions` (a counter), `proxy_sessions_open`
    /// (a gauge), `proxy_refused_limit`, `proxy_refused_per_ip`,
    /// `proxy_refused_client`, `proxy_handshake_failures`, `proxy_connect_failures`,
    /// `proxy_bytes_up`, `proxy_bytes_down`, `proxy_udp_associations`,
    /// `proxy_udp_datagrams`, `proxy_udp_dropped`.
    pub fn register(&self, reactor: &mut Reactor) {
        let counters = [
            ("proxy_sessions", &self.accepted),
            ("proxy_refused_limit", &self.refused_total),
            ("proxy_refused_per_ip", &self.refused_per_ip),
            ("proxy_refused_client", &self.refused_client),
            ("proxy_handshake_failures", &self.handshake_failed),
            ("proxy_connect_failures", &self.connect_failed),
            ("proxy_bytes_up", &self.bytes_up),
            ("proxy_bytes_down", &self.bytes_down),
            ("proxy_udp_associations", &self.udp_associations),
            ("proxy_udp_datagrams", &self.udp_datagrams),
            ("proxy_udp_dropped", &self.udp_dropped),
        ];
        for (name, c) in counters {
            reactor.register_counter(name, c);
        }
        reactor.register_gauge("proxy_sessions_open", &self.active);
    }
}

/// A snapshot of [`ProxyCounters`]; `Display` is one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Sessions started.
    pub accepted: u64,
    /// Sessions open now.
    pub active: u64,
    /// Connections refused because `max_sessions` sessions were open.
    pub refused_total: u64,
    /// Connections refused because their IP had `max_sessions_per_ip` open.
    pub refused_per_ip: u64,
    /// Connections refused by the client rules, or (with the PROXY protocol) from
    /// a peer not in `proxy_protocol_from`.
    pub refused_client: u64,
    /// SOCKS5 handshakes that failed (bad input, auth, timeout, unsupported command,
    /// denied by the rules).
    pub handshake_failed: u64,
    /// Sessions whose upstream could not be resolved or connected.
    pub connect_failed: u64,
    /// Bytes relayed client -> upstream (closed sessions only).
    pub bytes_up: u64,
    /// Bytes relayed upstream -> client (closed sessions only).
    pub bytes_down: u64,
    /// UDP associations made.
    pub udp_associations: u64,
    /// Datagrams relayed, both directions.
    pub udp_datagrams: u64,
    /// Datagrams dropped (not from the client, malformed, fragments, denied, over
    /// a rate, unsolicited, or the send queue full).
    pub udp_dropped: u64,
}

impl fmt::Display for ProxyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sessions {} (open {}), refused {} (limit) + {} (per-IP limit) + {} (client rules), \
             handshake failures {}, connect failures {}, bytes up {} down {}, \
             udp associations {} datagrams {} dropped {}",
            self.accepted,
            self.active,
            self.refused_total,
            self.refused_per_ip,
            self.refused_client,
            self.handshake_failed,
            self.connect_failed,
            self.bytes_up,
            self.bytes_down,
            self.udp_associations,
            self.udp_datagrams,
            self.udp_dropped
        )
    }
}

/// Session limits and refusal logging (at most one line a second, with a count of
/// the rest: a connection flood cannot flood the log too), shared (loop thread
/// only) by a listener's factory and its sessions.
#[derive(Debug, Default)]
struct Limits {
    open: usize,
    /// Connections still waiting for their PROXY protocol header: not sessions
    /// yet (their client is unknown), but they hold a socket each, so they count
    /// against `max_sessions` too.
    awaiting_header: usize,
    per_ip: HashMap<IpAddr, u32>,
    log: LogLimiter,
}

/// What every session of one proxy shares: its options, counters and limits.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) opts: ProxyOptions,
    pub(crate) counters: Arc<ProxyCounters>,
    limits: RefCell<Limits>,
    rejections: RefCell<LogLimiter>,
    /// UDP associations open, and the rate of all of them together.
    pub(crate) udp: RefCell<UdpShared>,
}

/// What the UDP associations of one proxy share.
#[derive(Debug, Default)]
pub(crate) struct UdpShared {
    pub(crate) open: usize,
    pub(crate) window: udp::RateWindow,
    pub(crate) log: LogLimiter,
}

impl Shared {
    /// Admits a new session from the client `peer`, or says why not (and counts and
    /// logs the refusal): the client rules, then the session limits.
    pub(crate) fn admit(&self, peer: SocketAddr) -> bool {
        let mut l = self.limits.borrow_mut();
        let decision = self.opts.clients.decide(peer.ip());
        if !decision.is_allowed() {
            self.counters.refused_client.inc();
            if let Some(held_back) = l.log.allow(Instant::now()) {
                let why = match decision.rule.and_then(|i| self.opts.clients.rules().get(i)) {
                    Some(rule) => format!("--{}-client {}", rule.action, rule.net),
                    None => "no --allow-client rule matches".to_string(),
                };
                log::warn!(
                    "refused connection from {peer}: client rules ({why}; {held_back} more \
                     refusals not logged)"
                );
            }
            return false;
        }
        let ip = reactor::client_key(peer.ip());
        let per_ip = l.per_ip.get(&ip).copied().unwrap_or(0);
        let why = if l.open + l.awaiting_header >= self.opts.max_sessions {
            self.counters.refused_total.inc();
            "the proxy's session limit"
        } else if per_ip as usize >= self.opts.max_sessions_per_ip {
            self.counters.refused_per_ip.inc();
            "the per-client session limit"
        } else {
            l.open += 1;
            *l.per_ip.entry(ip).or_insert(0) += 1;
            self.counters.accepted.inc();
            self.counters.active.inc();
            return true;
        };
        if let Some(held_back) = l.log.allow(Instant::now()) {
            log::warn!(
                "refused connection from {peer}: {why} is reached ({} open, {} from {ip}{}; \
                 {held_back} more refusals not logged)",
                l.open,
                per_ip,
                if ip.is_ipv6() { "/64" } else { "" },
            );
        }
        false
    }

    /// Takes a place for a connection from `peer` that will send a PROXY header,
    /// within `max_sessions` with the sessions open; false (counted and logged as
    /// the session limit) if there is none. Given back by
    /// [`header_done`](Shared::header_done).
    pub(crate) fn await_header(&self, peer: SocketAddr) -> bool {
        let mut l = self.limits.borrow_mut();
        if l.open + l.awaiting_header < self.opts.max_sessions {
            l.awaiting_header += 1;
            return true;
        }
        self.counters.refused_total.inc();
        if let Some(held_back) = l.log.allow(Instant::now()) {
            log::warn!(
                "refused connection from {peer}: the proxy's session limit is reached ({} \
                 open, {} waiting for their PROXY header; {held_back} more refusals not logged)",
                l.open,
                l.awaiting_header,
            );
        }
        false
    }

    /// A connection that waited for its PROXY header has it, or closed.
    pub(crate) fn header_done(&self) {
        let mut l = self.limits.borrow_mut();
        l.awaiting_header = l.awaiting_header.saturating_sub(1);
    }

    /// True if `peer` may send PROXY protocol headers; otherwise the refusal is
    /// counted and logged.
    fn trusts(&self, peer: SocketAddr) -> bool {
        if self
            .opts
            .proxy_protocol_from
            .iter()
            .any(|c| c.contains(peer.ip()))
        {
            return true;
        }
        self.counters.refused_client.inc();
        let mut l = self.limits.borrow_mut();
        if let Some(held_back) = l.log.allow(Instant::now()) {
            log::warn!(
                "refused connection from {peer}: not a trusted source of PROXY protocol \
                 headers (--proxy-protocol-from; {held_back} more refusals not logged)"
            );
        }
        false
    }

    /// Logs why one session was turned away (a bad or timed-out handshake, a denied
    /// or unsupported request, an unreachable upstream): at info level at most once
    /// a second, with a count of those held back, and the rest at debug level, so
    /// a flood of bad clients cannot flood the log.
    pub(crate) fn log_rejection(&self, msg: fmt::Arguments<'_>) {
        let allowed = self.rejections.borrow_mut().allow(Instant::now());
        match allowed {
            Some(0) => log::info!("{msg}"),
            Some(n) => {
                log::info!("{msg} ({n} more rejections since the last one logged at info level)")
            }
            None => log::debug!("{msg}"),
        }
    }

    /// A session from `ip` closed, having relayed `up`/`down` bytes.
    pub(crate) fn release(&self, ip: IpAddr, up: u64, down: u64) {
        let ip = reactor::client_key(ip);
        let mut l = self.limits.borrow_mut();
        l.open = l.open.saturating_sub(1);
        if let Some(n) = l.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                l.per_ip.remove(&ip);
            }
        }
        let c = &self.counters;
        c.active.dec();
        c.bytes_up.add(up);
        c.bytes_down.add(down);
    }

    pub(crate) fn count_handshake_failure(&self) {
        self.counters.handshake_failed.inc();
    }

    pub(crate) fn count_connect_failure(&self) {
        self.counters.connect_failed.inc();
    }

    /// Counts UDP datagrams relayed and dropped, and a new association.
    pub(crate) fn count_udp(&self, associations: u64, relayed: u64, dropped: u64) {
        let c = &self.counters;
        c.udp_associations.add(associations);
        c.udp_datagrams.add(relayed);
        c.udp_dropped.add(dropped);
    }
}

/// Binds a proxy listener on `addr`: every admitted connection becomes a
/// [`Session`]. Spawn the listener on a reactor; the counters can be read at any
/// time, from any thread (log them when the loop returns).
#[allow(clippy::type_complexity)]
pub fn proxy_listener(
    addr: SocketAddr,
    opts: ProxyOptions,
) -> io::Result<(
    Listener<impl FnMut(TcpStream, SocketAddr) -> Option<Session> + 'static>,
    Arc<ProxyCounters>,
)> {
    opts.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let counters = Arc::new(ProxyCounters::default());
    let listen = opts.listen.clone();
    let shared = Rc::new(Shared {
        opts,
        counters: counters.clone(),
        limits: RefCell::new(Limits::default()),
        rejections: RefCell::default(),
        udp: RefCell::default(),
    });
    let listener = Listener::bind(addr, listen, move |stream, peer| {
        // The TLS side first: failing to make one (it cannot, short of memory)
        // must not leave a session counted.
        let tls = match &shared.opts.tls {
            None => None,
            Some(acceptor) => match acceptor.filter() {
                Ok(f) => Some(f as Box<dyn reactor::StreamFilter>),
                Err(e) => {
                    log::warn!("proxy: cannot start TLS for {peer}: {e}; refusing it");
                    return None;
                }
            },
        };
        if shared.opts.proxy_protocol_in {
            // The client is who the header says; it is admitted after the header.
            if !shared.trusts(peer) || !shared.await_header(peer) {
                return None;
            }
            return Some(Session::new(shared.clone(), stream, peer, false, tls));
        }
        if !shared.admit(peer) {
            return None;
        }
        Some(Session::new(shared.clone(), stream, peer, true, tls))
    })?;
    Ok((listener, counters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("[::1]:8080").unwrap(),
            Target::Addr("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse_host_port("example.org:443").unwrap(),
            Target::Domain {
                host: "example.org".into(),
                port: 443
            }
        );
        for bad in ["", "x", "x:", "x:70000", ":80", "a b:80"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    /// Limits and counters as a listener shares them with its sessions.
    fn shared(opts: ProxyOptions) -> Shared {
        Shared {
            opts,
            counters: Arc::default(),
            limits: RefCell::default(),
            rejections: RefCell::default(),
            udp: RefCell::default(),
        }
    }

    #[test]
    fn limits_count_and_release() {
        let mut opts = ProxyOptions::new(Mode::Socks5 { auth: None });
        opts.max_sessions = 3;
        opts.max_sessions_per_ip = 2;
        let s = shared(opts);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert!(s.admit(a) && s.admit(a));
        assert!(!s.admit(a)); // per-IP
        assert!(s.admit(b));
        assert!(!s.admit(b)); // total
        s.release(a.ip(), 10, 20);
        assert!(s.admit(b));
        let st = s.counters.snapshot();
        assert_eq!((st.accepted, st.active), (4, 3));
        assert_eq!((st.refused_per_ip, st.refused_total), (1, 1));
        assert_eq!((st.bytes_up, st.bytes_down), (10, 20));
        assert!(
            st.to_string()
                .contains("refused 1 (limit) + 1 (per-IP limit)")
        );
    }

    /// Connections waiting for their PROXY header count against `max_sessions`
    /// with the sessions open, and give their place back once the header came.
    #[test]
    fn connections_awaiting_a_proxy_header_count_against_the_limit() {
        let mut opts = ProxyOptions::new(Mode::Socks5 { auth: None });
        opts.max_sessions = 3;
        let s = shared(opts);
        let lb: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let client: SocketAddr = "192.0.2.7:1".parse().unwrap();
        assert!(s.admit(client));
        assert!(s.await_header(lb) && s.await_header(lb));
        assert!(!s.await_header(lb), "3 places: 1 session, 2 waiting");
        assert!(!s.admit(client), "no place for a session either");
        // A header arrives: its place is the session's now.
        s.header_done();
        assert!(s.admit(client));
        assert!(!s.await_header(lb));
        // One waiting closes before its header: a place is free again.
        s.header_done();
        assert!(s.await_header(lb));
        assert_eq!(s.counters.snapshot().refused_total, 3);
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_its_address() {
        let mut opts = ProxyOptions::new(Mode::Socks5 { auth: None });
        opts.max_sessions_per_ip = 2;
        let s = shared(opts);
        // Two addresses of one /64 fill it; a third from it is refused.
        let x1: SocketAddr = "[2001:db8:1:2::1]:1".parse().unwrap();
        let x2: SocketAddr = "[2001:db8:1:2:ffff:0:0:9]:1".parse().unwrap();
        let x3: SocketAddr = "[2001:db8:1:2:abcd::77]:1".parse().unwrap();
        assert!(s.admit(x1) && s.admit(x2));
        assert!(!s.admit(x3), "a third address of the same /64");
        // The next /64 is another client.
        assert!(s.admit("[2001:db8:1:3::1]:1".parse().unwrap()));
        // Released by any address of the /64.
        s.release(x1.ip(), 0, 0);
        assert!(s.admit(x3));
        // IPv4 through a dual-stack socket counts as that IPv4 address.
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:2".parse().unwrap();
        assert!(s.admit(v4) && s.admit(mapped));
        assert!(!s.admit(v4));
        assert!(s.admit("192.0.2.2:1".parse().unwrap()));
        assert_eq!(s.counters.snapshot().refused_per_ip, 2);
    }
}
