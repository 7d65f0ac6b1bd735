//! The SOCKS5 proxy's destination rules: address ranges and ports.
//!
//! Input: a rule written as text, addresses to judge, and ports. Properties: a
//! range that parses prints as text that parses back to it; `contains` answers
//! as a reference written from the definition (prefix bits compared as one
//! 128-bit number, hosts numbered as IPv6 with IPv4 in its mapped form): an IPv4
//! address and its IPv4-mapped form are one host, an IPv4 range and the same
//! range written in mapped form (`::ffff:a.b.c.d/96+n`) hold the same hosts, and
//! other IPv6 ranges hold IPv6 hosts only; `Rules` refuses a destination when a
//! range holds where a connect to it really goes (the unspecified address is
//! loopback). Host bits are masked by `new_masked`/`parse_masked` and refused by
//! `new` (naming the masked range); `ClientRules::decide` is first match wins, else
//! deny exactly when some allow rule exists.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_proxy::cidr::{Action, CidrError, ClientRules};
use reactor_proxy::rules::{Cidr, Rules};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    text: &'a str,
    nets: Vec<(IpAddr, u8, bool)>,
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
}

/// An address as the host it names: IPv4 (as a mapped IPv6 number) or IPv6.
fn host(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The range as 128-bit prefix bits over the same numbering.
fn reference(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    let (n, bits) = match net {
        IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 96 + u32::from(prefix)),
        IpAddr::V6(v6) => (u128::from(v6), u32::from(prefix)),
    };
    let is_v4_host = host(ip) >> 32 == 0xffff;
    if bits < 96 && is_v4_host {
        // An IPv6 range wider than the mapped block holds IPv6 hosts only.
        return false;
    }
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    (n & mask) == (host(ip) & mask)
}

/// Where a connect to `ip` goes: the unspecified address is loopback.
fn destination(ip: IpAddr) -> IpAddr {
    match host(ip) {
        0 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        0xffff_0000_0000 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => ip,
    }
}

fuzz_target!(|i: Input<'_>| {
    if let Ok(c) = i.text.parse::<Cidr>() {
        let again: Cidr = c.to_string().parse().expect("a printed range parses");
        assert_eq!(again, c);
    }
    let mut deny = Vec::new();
    for &(net, prefix, allow) in i.nets.iter().take(8) {
        let max = if net.is_ipv4() { 32 } else { 128 };
        let c = match Cidr::new_masked(net, prefix) {
            Ok(c) => c,
            Err(e) => {
                assert!(prefix > max, "{net}/{prefix} refused: {e}");
                continue;
            }
        };
        assert_eq!(Cidr::parse_masked(&format!("{net}/{prefix}")), Ok(c));
        // The strict constructor refuses exactly the ranges with host bits set, and
        // names the masked range as the one meant.
        match Cidr::new(net, prefix) {
            Ok(strict) => assert_eq!(strict, c),
            Err(CidrError::HostBitsSet { network }) => assert_eq!(network, c),
            Err(e) => panic!("{net}/{prefix}: {e}"),
        }
        for &ip in i.ips.iter().take(8) {
            assert_eq!(
                c.contains(ip),
                reference(net, prefix, ip),
                "{c} contains {ip}?"
            );
            if let IpAddr::V4(v4) = ip {
                let m = IpAddr::V6(v4.to_ipv6_mapped());
                assert_eq!(
                    c.contains(ip),
                    c.contains(m),
                    "{c}: {ip} and {m} are one host"
                );
            }
        }
        deny.push((c, net, prefix, allow));
    }
    // Client rules: the first range that holds the client decides, else the default
    // (deny when any allow rule exists).
    let mut clients = ClientRules::new();
    for &(c, _, _, allow) in &deny {
        if allow {
            clients.allow(c);
        } else {
            clients.deny(c);
        }
    }
    for &ip in i.ips.iter().take(8) {
        let first = deny
            .iter()
            .position(|&(_, net, prefix, _)| reference(net, prefix, ip));
        let d = clients.decide(ip);
        assert_eq!(d.rule, first, "{ip}: which rule");
        let want = match first {
            Some(k) => deny[k].3,
            None => !deny.iter().any(|d| d.3),
        };
        assert_eq!(d.is_allowed(), want, "{ip}: allowed?");
        assert_eq!(d.action == Action::Allow, want);
    }
    let r = Rules {
        deny_nets: deny.iter().map(|d| d.0).collect(),
        deny_ports: i.ports.clone(),
    };
    for &ip in i.ips.iter().take(8) {
        let dest = destination(ip);
        let hit = deny
            .iter()
            .any(|&(_, net, prefix, _)| reference(net, prefix, dest));
        assert_eq!(r.allows_ip(ip), !hit);
        if ip.is_unspecified() {
            let lo = if ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            };
            assert_eq!(r.allows_ip(ip), r.allows_ip(lo));
        }
    }
    for &p in i.ports.iter().take(8) {
        assert!(!r.allows_port(p));
    }
});
