//! Who counts as one client for a per-client limit or ban.
//!
//! An IPv4 address is one client, whether it arrives as such or, on a dual-stack
//! socket, as `::ffff:a.b.c.d`; an IPv6 address counts by its /64 network, since
//! one host (one customer line) usually holds a whole /64 and could otherwise open
//! sessions from 2^64 addresses. Plain arithmetic on addresses: it must not know
//! what is being limited.

use std::net::{IpAddr, Ipv6Addr};

/// The key a per-client limit counts `ip` under: its IPv4 address (an IPv4-mapped
/// IPv6 address counts as the IPv4 one), or the /64 network of an IPv6 address.
///
/// ```
/// use std::net::IpAddr;
/// let key = |s: &str| reactor::client_key(s.parse::<IpAddr>().unwrap()).to_string();
/// assert_eq!(key("192.0.2.7"), "192.0.2.7");
/// assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
/// assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
/// ```
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slash_64_is_one_client_and_the_next_is_another() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_key("::ffff:10.1.2.3".parse().unwrap()), v4);
        assert_ne!(client_key(v4), client_key("10.1.2.4".parse().unwrap()));
    }
}
