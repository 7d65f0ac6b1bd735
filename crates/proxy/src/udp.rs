//! UDP ASSOCIATE (RFC 1928 section 7): the decisions of one association, without
//! sockets.
//!
//! A SOCKS5 client asks for an association on its TCP connection; the proxy binds
//! a UDP socket for it on the address the reply names, and from then on relays
//! datagrams: each one from the client carries a SOCKS5 UDP header naming its
//! destination ([`socks5_udp`](crate::socks5_udp)), and each answer goes back to the
//! client with a header naming who sent it. [`Association`] decides, per datagram:
//!
//! - only datagrams from the client are relayed: from its IP address (the TCP
//!   client's), and from the port its request named, or, when it named none
//!   (`0.0.0.0:0`, as most clients do), from the port of its first datagram;
//!   anything else is dropped and counted;
//! - fragments are dropped (the RFC lets a relay refuse fragmentation), as are
//!   malformed headers;
//! - destinations go through the same [`Rules`] as CONNECT (the port, the address,
//!   and every address a name resolves to);
//! - a name is resolved on the worker pool by the handler; the answer is kept for a
//!   minute ([`DNS_TTL`]) in a small cache, so a stream of datagrams to one name
//!   costs one resolution;
//! - only answers from destinations the client sent to come back (the last
//!   [`MAX_PEERS`] of them): a third party cannot inject datagrams through the relay;
//! - a datagram over the association's own rate, or over the proxy's global rate
//!   ([`UdpLimits`], per second, in datagrams and bytes), is dropped and counted.
//!
//! It must not do I/O, resolve names or read a clock: the handler
//! ([`Session`](crate::Session)) owns the sockets and the pool and passes `now` in.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::rules::Rules;
use crate::socks5_udp::{Socks5UdpError, UdpTarget, encode_udp_header, parse_udp};

/// How long a resolved destination name is reused.
pub const DNS_TTL: Duration = Duration::from_secs(60);
/// Destination names an association remembers at most.
pub const DNS_CACHE: usize = 16;
/// Destinations an association accepts answers from at most (the most recent).
pub const MAX_PEERS: usize = 256;

/// A rate, per second; 0 is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpLimits {
    /// Datagrams per second, both directions together.
    pub datagrams_per_sec: u32,
    /// Bytes per second (payloads), both directions together.
    pub bytes_per_sec: u64,
}

impl UdpLimits {
    /// A limit of `datagrams_per_sec` datagrams and `bytes_per_sec` bytes a second
    /// (0: none).
    pub fn new(datagrams_per_sec: u32, bytes_per_sec: u64) -> UdpLimits {
        UdpLimits {
            datagrams_per_sec,
            bytes_per_sec,
        }
    }
}

/// Settings of the UDP relay of a SOCKS5 proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpRelayOptions {
    /// Associations open at once at most; more are refused (0x01).
    pub max_associations: usize,
    /// An association with no datagram either way for this long is ended (its TCP
    /// connection closed).
    pub idle_timeout: Duration,
    /// Each association's rate.
    pub per_association: UdpLimits,
    /// The rate of all associations of the proxy together.
    pub global: UdpLimits,
    /// Datagrams an association holds while their destination name is resolved.
    pub max_pending: usize,
    /// The largest datagram relayed (a larger one is dropped).
    pub max_datagram: usize,
}

impl Default for UdpRelayOptions {
    /// 1,000 associations; 120 s idle timeout; per association 2,000 datagrams and
    /// 4 MiB a second; globally 100,000 datagrams and 256 MiB a second; 32 pending
    /// datagrams; 65,507-byte datagrams (the most IPv4 UDP carries).
    fn default() -> UdpRelayOptions {
        UdpRelayOptions {
            max_associations: 1000,
            idle_timeout: Duration::from_secs(120),
            per_association: UdpLimits::new(2000, 4 << 20),
            global: UdpLimits::new(100_000, 256 << 20),
            max_pending: 32,
            max_datagram: 65_507,
        }
    }
}

/// Counts datagrams and bytes in the current one-second window.
#[derive(Clone, Copy, Debug, Default)]
pub struct RateWindow {
    start: Option<Instant>,
    datagrams: u32,
    bytes: u64,
}

impl RateWindow {
    /// True (and counted) if a datagram of `len` bytes at `now` stays within
    /// `limits`; false if it would go over (and is not counted).
    pub fn admit(&mut self, now: Instant, len: usize, limits: &UdpLimits) -> bool {
        if self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
        {
            *self = RateWindow {
                start: Some(now),
                datagrams: 0,
                bytes: 0,
            };
        }
        let d = self.datagrams.saturating_add(1);
        let b = self.bytes.saturating_add(len as u64);
        if (limits.datagrams_per_sec != 0 && d > limits.datagrams_per_sec)
            || (limits.bytes_per_sec != 0 && b > limits.bytes_per_sec)
        {
            return false;
        }
        self.datagrams = d;
        self.bytes = b;
        true
    }
}

/// Why a datagram was not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// It did not come from the association's client.
    NotTheClient(SocketAddr),
    /// Its SOCKS5 UDP header is malformed, or it is a fragment.
    Header(Socks5UdpError),
    /// Its destination is denied by the rules.
    Denied,
    /// Over the association's or the proxy's rate.
    OverLimit,
    /// An answer from an address the client never sent to.
    Unsolicited(SocketAddr),
    /// Larger than the relay carries.
    TooLarge(usize),
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::NotTheClient(a) => write!(f, "a datagram from {a}, not the client"),
            Dropped::Header(e) => write!(f, "{e}"),
            Dropped::Denied => f.write_str("a datagram to a destination the rules deny"),
            Dropped::OverLimit => f.write_str("a datagram over the UDP rate limit"),
            Dropped::Unsolicited(a) => {
                write!(f, "a datagram from {a}, which the client never sent to")
            }
            Dropped::TooLarge(n) => write!(f, "a datagram of {n} bytes, too large"),
        }
    }
}

/// What to do with a datagram from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum FromClient<'a> {
    /// Send `payload` to `to`.
    Send {
        /// The destination.
        to: SocketAddr,
        /// The datagram without its header.
        payload: &'a [u8],
    },
    /// Resolve `host` (on the pool), then report with
    /// [`Association::resolved`] and send `payload` to the address.
    Resolve {
        /// The name.
        host: &'a str,
        /// The destination port.
        port: u16,
        /// The datagram without its header.
        payload: &'a [u8],
    },
    /// Not relayed.
    Dropped(Dropped),
}

/// One association's state. See the module docs.
#[derive(Debug)]
pub struct Association {
    client_ip: IpAddr,
    /// The client's port: from the request, or its first datagram.
    client_port: Option<u16>,
    peers: VecDeque<SocketAddr>,
    window: RateWindow,
    cache: VecDeque<(String, u16, SocketAddr, Instant)>,
}

/// IPv4-mapped IPv6 as the IPv4 address it is (a dual-stack socket reports IPv4
/// peers that way).
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

impl Association {
    /// An association for the client at `client_ip`, which said it sends from
    /// `port` (0: not known yet; its first datagram decides).
    pub fn new(client_ip: IpAddr, port: u16) -> Association {
        Association {
            client_ip: canonical(SocketAddr::new(client_ip, 0)).ip(),
            client_port: (port != 0).then_some(port),
            peers: VecDeque::new(),
            window: RateWindow::default(),
            cache: VecDeque::new(),
        }
    }

    /// The client's address, once its port is known.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client_port.map(|p| SocketAddr::new(self.client_ip, p))
    }

    fn admit(
        &mut self,
        now: Instant,
        len: usize,
        limits: &UdpRelayOptions,
        global: &mut RateWindow,
    ) -> bool {
        // Checked against both before counting in either.
        let (mut own, mut all) = (self.window, *global);
        if own.admit(now, len, &limits.per_association) && all.admit(now, len, &limits.global) {
            self.window = own;
            *global = all;
            return true;
        }
        false
    }

    /// A datagram from `from` to the client side of the relay.
    pub fn from_client<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'a [u8],
        rules: &Rules,
        limits: &UdpRelayOptions,
        global: &mut RateWindow,
    ) -> FromClient<'a> {
        let from = canonical(from);
        if from.ip() != self.client_ip || self.client_port.is_some_and(|p| p != from.port()) {
            return FromClient::Dropped(Dropped::NotTheClient(from));
        }
        if datagram.len() > limits.max_datagram {
            return FromClient::Dropped(Dropped::TooLarge(datagram.len()));
        }
        let (target, payload) = match parse_udp(datagram) {
            Ok(v) => v,
            Err(e) => return FromClient::Dropped(Dropped::Header(e)),
        };
        if !rules.allows_port(target.port())
            || matches!(target, UdpTarget::Addr(a) if !rules.allows_ip(a.ip()))
        {
            return FromClient::Dropped(Dropped::Denied);
        }
        if !self.admit(now, payload.len(), limits, global) {
            return FromClient::Dropped(Dropped::OverLimit);
        }
        // A valid datagram from the client's address fixes its port.
        self.client_port.get_or_insert(from.port());
        match target {
            UdpTarget::Addr(to) => {
                self.contact(to);
                FromClient::Send { to, payload }
            }
            UdpTarget::Domain { host, port } => {
                let fresh = |t: &Instant| now.saturating_duration_since(*t) < DNS_TTL;
                match self
                    .cache
                    .iter()
                    .find(|(h, p, _, t)| h == host && *p == port && fresh(t))
                {
                    Some(&(_, _, to, _)) => {
                        self.contact(to);
                        FromClient::Send { to, payload }
                    }
                    None => FromClient::Resolve {
                        host,
                        port,
                        payload,
                    },
                }
            }
        }
    }

    /// The address `host:port` resolved to (its first allowed one), or `None` if
    /// it has none the rules allow: the datagrams waiting for it are then dropped.
    /// Returns where to send them.
    pub fn resolved(
        &mut self,
        now: Instant,
        host: &str,
        port: u16,
        addrs: &[SocketAddr],
        rules: &Rules,
    ) -> Option<SocketAddr> {
        let to = addrs.iter().copied().find(|a| rules.allows_ip(a.ip()))?;
        if self.cache.len() >= DNS_CACHE {
            self.cache.pop_front();
        }
        self.cache.push_back((host.to_string(), port, to, now));
        self.contact(to);
        Some(to)
    }

    /// `to` may answer from now on.
    fn contact(&mut self, to: SocketAddr) {
        let to = canonical(to);
        if self.peers.contains(&to) {
            return;
        }
        if self.peers.len() >= MAX_PEERS {
            self.peers.pop_front();
        }
        self.peers.push_back(to);
    }

    /// A datagram from `from` to the outside side of the relay: an answer for the
    /// client if `from` is a destination it sent to. Appends the datagram to send
    /// (header and payload) to `out` and returns the client's address.
    pub fn from_remote(
        &mut self,
        now: Instant,
        from: SocketAddr,
        payload: &[u8],
        limits: &UdpRelayOptions,
        global: &mut RateWindow,
        out: &mut Vec<u8>,
    ) -> Result<SocketAddr, Dropped> {
        let from = canonical(from);
        let Some(client) = self.client() else {
            return Err(Dropped::Unsolicited(from));
        };
        if !self.peers.contains(&from) {
            return Err(Dropped::Unsolicited(from));
        }
        if payload.len() + 22 > limits.max_datagram {
            return Err(Dropped::TooLarge(payload.len()));
        }
        if !self.admit(now, payload.len(), limits, global) {
            return Err(Dropped::OverLimit);
        }
        // An address target never fails to encode.
        let _ = encode_udp_header(&UdpTarget::Addr(from), out);
        out.extend_from_slice(payload);
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socks5_udp::encode_udp_header;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn dgram(to: UdpTarget<'_>, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_udp_header(&to, &mut v).unwrap();
        v.extend_from_slice(payload);
        v
    }

    fn opts() -> UdpRelayOptions {
        UdpRelayOptions::default()
    }

    #[test]
    fn only_the_client_is_relayed_and_its_first_datagram_fixes_its_port() {
        let t = Instant::now();
        let mut g = RateWindow::default();
        let mut s = Association::new("127.0.0.1".parse().unwrap(), 0);
        let d = dgram(UdpTarget::Addr(a("127.0.0.1:53")), b"query");
        let r = Rules::default();
        assert_eq!(
            s.from_client(t, a("127.0.0.2:5000"), &d, &r, &opts(), &mut g),
            FromClient::Dropped(Dropped::NotTheClient(a("127.0.0.2:5000")))
        );
        assert_eq!(
            s.from_client(t, a("127.0.0.1:5000"), &d, &r, &opts(), &mut g),
            FromClient::Send {
                to: a("127.0.0.1:53"),
                payload: b"query"
            }
        );
        assert_eq!(s.client(), Some(a("127.0.0.1:5000")));
        // Another port of the same host is not the client.
        assert!(matches!(
            s.from_client(t, a("127.0.0.1:5001"), &d, &r, &opts(), &mut g),
            FromClient::Dropped(Dropped::NotTheClient(_))
        ));
        // A dual-stack socket's view of the client is the client.
        assert!(matches!(
            s.from_client(t, a("[::ffff:127.0.0.1]:5000"), &d, &r, &opts(), &mut g),
            FromClient::Send { .. }
        ));
        // A port named in the request is the only one.
        let mut s = Association::new("::1".parse().unwrap(), 7000);
        assert!(matches!(
            s.from_client(t, a("[::1]:7001"), &d, &r, &opts(), &mut g),
            FromClient::Dropped(Dropped::NotTheClient(_))
        ));
    }

    #[test]
    fn answers_come_back_only_from_destinations_the_client_sent_to() {
        let t = Instant::now();
        let mut g = RateWindow::default();
        let mut s = Association::new("127.0.0.1".parse().unwrap(), 0);
        let mut out = Vec::new();
        // Before the client said anything: nobody to answer.
        assert!(
            s.from_remote(t, a("127.0.0.1:53"), b"x", &opts(), &mut g, &mut out)
                .is_err()
        );
        let d = dgram(UdpTarget::Addr(a("[::1]:53")), b"q");
        s.from_client(
            t,
            a("127.0.0.1:4000"),
            &d,
            &Rules::default(),
            &opts(),
            &mut g,
        );
        let to = s
            .from_remote(t, a("[::1]:53"), b"answer", &opts(), &mut g, &mut out)
            .unwrap();
        assert_eq!(to, a("127.0.0.1:4000"));
        let (from, payload) = parse_udp(&out).unwrap();
        assert_eq!(
            (from, payload),
            (UdpTarget::Addr(a("[::1]:53")), &b"answer"[..])
        );
        assert_eq!(
            s.from_remote(t, a("[::1]:54"), b"spoof", &opts(), &mut g, &mut out),
            Err(Dropped::Unsolicited(a("[::1]:54")))
        );
    }

    #[test]
    fn fragments_bad_headers_and_denied_destinations_are_dropped() {
        let t = Instant::now();
        let mut g = RateWindow::default();
        let mut s = Association::new("127.0.0.1".parse().unwrap(), 0);
        let from = a("127.0.0.1:4000");
        let mut frag = dgram(UdpTarget::Addr(a("127.0.0.1:53")), b"part");
        frag[2] = 1;
        let r = Rules {
            deny_nets: vec!["10.0.0.0/8".parse().unwrap()],
            deny_ports: vec![25],
        };
        assert!(matches!(
            s.from_client(t, from, &frag, &r, &opts(), &mut g),
            FromClient::Dropped(Dropped::Header(Socks5UdpError::Fragmented(1)))
        ));
        assert!(matches!(
            s.from_client(t, from, &[0, 0], &r, &opts(), &mut g),
            FromClient::Dropped(Dropped::Header(_))
        ));
        for to in [a("10.1.1.1:53"), a("127.0.0.1:25")] {
            let d = dgram(UdpTarget::Addr(to), b"x");
            assert_eq!(
                s.from_client(t, from, &d, &r, &opts(), &mut g),
                FromClient::Dropped(Dropped::Denied)
            );
        }
        let d = dgram(
            UdpTarget::Domain {
                host: "mail.example",
                port: 25,
            },
            b"x",
        );
        assert_eq!(
            s.from_client(t, from, &d, &r, &opts(), &mut g),
            FromClient::Dropped(Dropped::Denied)
        );
        // A name that resolves only into a denied range has nowhere to go.
        assert_eq!(
            s.resolved(t, "intra.example", 53, &[a("10.0.0.1:53")], &r),
            None
        );
    }

    #[test]
    fn names_are_resolved_once_and_cached() {
        let t = Instant::now();
        let mut g = RateWindow::default();
        let mut s = Association::new("127.0.0.1".parse().unwrap(), 0);
        let from = a("127.0.0.1:4000");
        let d = dgram(
            UdpTarget::Domain {
                host: "localhost",
                port: 53,
            },
            b"q",
        );
        let r = Rules::default();
        assert_eq!(
            s.from_client(t, from, &d, &r, &opts(), &mut g),
            FromClient::Resolve {
                host: "localhost",
                port: 53,
                payload: b"q"
            }
        );
        let to = s.resolved(t, "localhost", 53, &[a("127.0.0.1:53")], &r);
        assert_eq!(to, Some(a("127.0.0.1:53")));
        assert_eq!(
            s.from_client(t + Duration::from_secs(59), from, &d, &r, &opts(), &mut g),
            FromClient::Send {
                to: a("127.0.0.1:53"),
                payload: b"q"
            }
        );
        // After the TTL it is asked again.
        assert!(matches!(
            s.from_client(t + DNS_TTL, from, &d, &r, &opts(), &mut g),
            FromClient::Resolve { .. }
        ));
    }

    #[test]
    fn rates_are_limited_per_association_and_globally() {
        let t = Instant::now();
        let mut g = RateWindow::default();
        let mut o = opts();
        o.per_association = UdpLimits::new(3, 0);
        o.global = UdpLimits::new(5, 0);
        let r = Rules::default();
        let d = dgram(UdpTarget::Addr(a("127.0.0.1:53")), b"q");
        let mut s1 = Association::new("127.0.0.1".parse().unwrap(), 1);
        let mut s2 = Association::new("127.0.0.1".parse().unwrap(), 2);
        let sent = |s: &mut Association, port, g: &mut RateWindow, now| {
            matches!(
                s.from_client(
                    now,
                    SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                    &d,
                    &r,
                    &o,
                    g
                ),
                FromClient::Send { .. }
            )
        };
        let n1 = (0..10).filter(|_| sent(&mut s1, 1, &mut g, t)).count();
        let n2 = (0..10).filter(|_| sent(&mut s2, 2, &mut g, t)).count();
        assert_eq!((n1, n2), (3, 2), "3 for the first, and the global 5 in all");
        // The next second has room again.
        assert!(sent(&mut s2, 2, &mut g, t + Duration::from_secs(1)));
        // Bytes too.
        let mut w = RateWindow::default();
        let l = UdpLimits::new(0, 100);
        assert!(w.admit(t, 60, &l) && !w.admit(t, 60, &l) && w.admit(t, 40, &l));
    }
}
