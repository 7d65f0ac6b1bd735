//! The SOCKS5 ruleset: which destinations a client may not reach.
//!
//! A deliberately small rule language: deny address ranges (CIDR, e.g.
//! `10.0.0.0/8`, `::1/128`; the range type is [`crate::cidr::Cidr`], shared with the
//! client rules) and deny destination ports. A request that matches is
//! answered with reply 0x02 "connection not allowed by ruleset". Rules are checked
//! before anything is resolved (the port) and again on every resolved address, so a
//! host name cannot smuggle a client into a denied range. Addresses are judged by
//! where a connect really goes: an IPv4-mapped IPv6 address as its IPv4 address, an
//! unspecified one (`0.0.0.0`, `::`) as loopback.
//!
//! Plain values and functions: no sockets, no resolution, no clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::cidr::Cidr;

/// What SOCKS5 clients may not reach. Empty (the default) allows everything.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Denied destination ranges.
    pub deny_nets: Vec<Cidr>,
    /// Denied destination ports.
    pub deny_ports: Vec<u16>,
}

impl Rules {
    /// True if connecting to `port` is allowed.
    pub fn allows_port(&self, port: u16) -> bool {
        !self.deny_ports.contains(&port)
    }

    /// True if connecting to `ip` is allowed. An unspecified address is judged as
    /// the loopback address the kernel connects it to (see [`connect_destination`]).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = connect_destination(ip);
        !self.deny_nets.iter().any(|c| c.contains(ip))
    }
}

/// Where a TCP connect to `ip` really goes. A connect to an unspecified address
/// (`0.0.0.0`, `::`, `::ffff:0.0.0.0`) reaches the local host: Linux sends it to
/// `127.0.0.1` (`::1` for IPv6). Judged as itself, it would slip past a rule that
/// denies loopback.
pub fn connect_destination(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified()) => {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("::1")));
        let c: Cidr = "192.168.1.128/25".parse().unwrap();
        assert!(c.contains(ip("192.168.1.200")));
        assert!(!c.contains(ip("192.168.1.127")));
        let host: Cidr = "::1".parse().unwrap();
        assert_eq!(host.to_string(), "::1/128");
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("fe80::1")));
        assert!(Cidr::new(ip("1.2.3.4"), 33).is_err());
    }

    #[test]
    fn destination_ranges_may_have_host_bits() {
        // `--deny 10.1.2.3/8` always meant 10.0.0.0/8 and still does.
        let c = Cidr::parse_masked("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            assert!(Cidr::parse_masked(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules() {
        let r = Rules {
            deny_nets: vec!["127.0.0.2/32".parse().unwrap()],
            deny_ports: vec![25],
        };
        assert!(!r.allows_port(25) && r.allows_port(80));
        assert!(!r.allows_ip(ip("127.0.0.2")) && r.allows_ip(ip("127.0.0.1")));
        assert!(Rules::default().allows_ip(ip("127.0.0.2")));
    }

    #[test]
    fn unspecified_addresses_are_judged_as_loopback() {
        let r = Rules {
            deny_nets: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            deny_ports: vec![],
        };
        for a in ["0.0.0.0", "::", "::ffff:0.0.0.0", "127.0.0.1", "::1"] {
            assert!(!r.allows_ip(ip(a)), "{a}");
        }
        assert!(r.allows_ip(ip("10.0.0.1")) && r.allows_ip(ip("::2")));
        assert_eq!(connect_destination(ip("1.2.3.4")), ip("1.2.3.4"));
    }
}
