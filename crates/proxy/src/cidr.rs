//! Address ranges (CIDR) and an ordered allow/deny list deciding which *clients* may
//! use the proxy.
//!
//! What it is for: the listener calls [`ClientRules::decide`] (or
//! [`ClientRules::is_allowed`]) with the peer address of every accepted connection, or
//! of every UDP datagram, before doing any protocol work, and closes or drops on deny.
//! With the PROXY protocol, this is also the check that decides whether the real peer
//! is a trusted proxy whose header may be believed.
//!
//! What it must not do: no sockets, no name resolution, no clock, no logging (the
//! [`Decision`] says which rule matched so the caller can log it), no panics. It judges
//! *client* addresses; destination rules (where clients may connect to) live in
//! [`crate::rules`], which uses the same [`Cidr`] (reading host bits as masked, as
//! `--deny` always has: [`Cidr::parse_masked`]).
//!
//! Decisions (all deliberate):
//! - Rule order: first match wins, in the order the rules were added (the command-line
//!   order), as in Dante and nginx. If nothing matches, the client is denied when at
//!   least one `allow` rule exists (an allow list) and allowed when there are only
//!   `deny` rules (a block list) or no rules at all.
//! - Host bits: `10.0.0.1/8` is rejected with [`CidrError::HostBitsSet`], which names the
//!   intended network. In an access list such a typo (meant `/32`?) would silently
//!   widen access; nginx accepts it with a warning, but this code cannot warn. Callers
//!   that want masking use [`Cidr::new_masked`].
//! - A bare address is a single host: `/32` for IPv4, `/128` for IPv6. Prefix lengths
//!   are plain decimal (`/08`, `/+8` and `/ 8` are rejected), at most 32 or 128.
//! - IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address it is, so a
//!   dual-stack listener (which reports IPv4 clients that way) cannot bypass an IPv4
//!   rule. Rules are normalised the same way: `::ffff:10.0.0.0/104` *is* `10.0.0.0/8`.
//!   Nothing else crosses families: an IPv6 range such as `::/0` never matches an IPv4
//!   (or mapped) client, an IPv4 range never matches a native IPv6 address, and the
//!   deprecated IPv4-compatible form `::a.b.c.d` is plain IPv6.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range: a network address (host bits zero) and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a range was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CidrError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    BadAddress,
    /// The part after `/` is not a plain decimal number.
    BadPrefix,
    /// The prefix is longer than the address.
    PrefixTooLong {
        /// The prefix given.
        prefix: u16,
        /// 32 or 128.
        max: u8,
    },
    /// Bits below the prefix are set.
    HostBitsSet {
        /// The range with those bits cleared, probably what was meant.
        network: Cidr,
    },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::BadAddress => {
                f.write_str("not an IP address range (want e.g. 10.0.0.0/8, ::1/128 or 127.0.0.1)")
            }
            CidrError::BadPrefix => f.write_str("prefix length must be a decimal number"),
            CidrError::PrefixTooLong { prefix, max } => {
                write!(
                    f,
                    "prefix length {prefix} is longer than the address ({max} bits)"
                )
            }
            CidrError::HostBitsSet { network } => {
                write!(
                    f,
                    "address has bits set beyond the prefix; did you mean {network}?"
                )
            }
        }
    }
}

impl std::error::Error for CidrError {}

/// The address a rule should judge: IPv4-mapped IPv6 becomes IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Clears the host bits; `prefix` must already be in range.
fn masked(net: IpAddr, prefix: u8) -> IpAddr {
    match net {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix))),
    }
}

/// Normalises an IPv4-mapped range to IPv4 and checks the prefix length.
fn normalise(net: IpAddr, prefix: u8) -> Result<(IpAddr, u8), CidrError> {
    let max = if net.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(CidrError::PrefixTooLong {
            prefix: u16::from(prefix),
            max,
        });
    }
    match net {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => Ok((IpAddr::V4(v4), prefix - 96)),
            None => Ok((net, prefix)),
        },
        _ => Ok((net, prefix)),
    }
}

impl Cidr {
    /// The range `net/prefix`. Fails if the prefix is longer than the address or if
    /// `net` has host bits set (see the module docs).
    pub fn new(net: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let (net, prefix) = normalise(net, prefix)?;
        let network = Cidr {
            net: masked(net, prefix),
            prefix,
        };
        if network.net == net {
            Ok(network)
        } else {
            Err(CidrError::HostBitsSet { network })
        }
    }

    /// Like [`Cidr::new`] but clears host bits instead of failing: `10.0.0.1/8` becomes
    /// `10.0.0.0/8`.
    pub fn new_masked(net: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let (net, prefix) = normalise(net, prefix)?;
        Ok(Cidr {
            net: masked(net, prefix),
            prefix,
        })
    }

    /// [`FromStr`], but with host bits cleared instead of refused (`10.1.2.3/8` is
    /// `10.0.0.0/8`): destination rules (`--deny`) have always been read that way.
    pub fn parse_masked(s: &str) -> Result<Cidr, CidrError> {
        match s.parse() {
            Err(CidrError::HostBitsSet { network }) => Ok(network),
            other => other,
        }
    }

    /// The network address (host bits zero; IPv4 for IPv4-mapped input).
    pub fn network(&self) -> IpAddr {
        self.net
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` is in the range. IPv4-mapped IPv6 addresses are judged as IPv4; no
    /// other address matches a range of the other family.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask_v4(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask_v6(self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR/PREFIX` or a bare `ADDR` (a single host). IPv6 is written without
    /// brackets and without a zone id.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        let max: u8 = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let digits = p.as_bytes();
                let plain = !digits.is_empty()
                    && digits.len() <= 3
                    && digits.iter().all(u8::is_ascii_digit)
                    && (digits.len() == 1 || digits.first() != Some(&b'0'));
                if !plain {
                    return Err(CidrError::BadPrefix);
                }
                let value: u16 = p.parse().map_err(|_| CidrError::BadPrefix)?;
                u8::try_from(value)
                    .ok()
                    .filter(|v| *v <= max)
                    .ok_or(CidrError::PrefixTooLong { prefix: value, max })?
            }
        };
        Cidr::new(net, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// What a rule does with a client it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the client in.
    Allow,
    /// Turn the client away.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// One `allow` or `deny` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What to do on a match.
    pub action: Action,
    /// Which clients match.
    pub net: Cidr,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.net)
    }
}

/// The outcome of [`ClientRules::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// Index into [`ClientRules::rules`] of the rule that decided, or `None` if no rule
    /// matched and the default applied.
    pub rule: Option<usize>,
}

impl Decision {
    /// True if the client may proceed.
    pub fn is_allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

/// An ordered list of client rules; see the module docs for the evaluation order.
/// Empty (the default) allows everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRules {
    rules: Vec<Rule>,
}

impl ClientRules {
    /// No rules: everyone is allowed.
    pub fn new() -> ClientRules {
        ClientRules::default()
    }

    /// Appends an `allow` rule.
    pub fn allow(&mut self, net: Cidr) -> &mut ClientRules {
        self.push(Rule {
            action: Action::Allow,
            net,
        })
    }

    /// Appends a `deny` rule.
    pub fn deny(&mut self, net: Cidr) -> &mut ClientRules {
        self.push(Rule {
            action: Action::Deny,
            net,
        })
    }

    /// Appends a rule; later rules only apply where earlier ones did not match.
    pub fn push(&mut self, rule: Rule) -> &mut ClientRules {
        self.rules.push(rule);
        self
    }

    /// The rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What happens to a client no rule matches: deny if any `allow` rule exists,
    /// otherwise allow.
    pub fn default_action(&self) -> Action {
        if self.rules.iter().any(|r| r.action == Action::Allow) {
            Action::Deny
        } else {
            Action::Allow
        }
    }

    /// Judges a client address: the first matching rule, else the default.
    pub fn decide(&self, client: IpAddr) -> Decision {
        match self.rules.iter().position(|r| r.net.contains(client)) {
            Some(i) => Decision {
                action: self.rules.get(i).map_or(Action::Deny, |r| r.action),
                rule: Some(i),
            },
            None => Decision {
                action: self.default_action(),
                rule: None,
            },
        }
    }

    /// Shorthand for `decide(client).is_allowed()`.
    pub fn is_allowed(&self, client: IpAddr) -> bool {
        self.decide(client).is_allowed()
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_forms() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("::1/128").prefix(), 128);
        assert_eq!(cidr("0.0.0.0/0").network(), ip("0.0.0.0"));
        assert_eq!(cidr("::/0").to_string(), "::/0");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        // IPv4-mapped ranges are IPv4 ranges.
        assert_eq!(cidr("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("::ffff:0:0/96").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::ffff:1.2.3.4").to_string(), "1.2.3.4/32");
    }

    #[test]
    fn parse_errors() {
        for (s, e) in [
            ("", CidrError::BadAddress),
            ("10.0.0/8", CidrError::BadAddress),
            ("010.0.0.0/8", CidrError::BadAddress),
            (" 10.0.0.0/8", CidrError::BadAddress),
            ("[::1]/128", CidrError::BadAddress),
            ("fe80::1%eth0/64", CidrError::BadAddress),
            ("example.com/8", CidrError::BadAddress),
            ("10.0.0.0/", CidrError::BadPrefix),
            ("10.0.0.0/08", CidrError::BadPrefix),
            ("10.0.0.0/+8", CidrError::BadPrefix),
            ("10.0.0.0/ 8", CidrError::BadPrefix),
            ("10.0.0.0/8/8", CidrError::BadPrefix),
            ("10.0.0.0/-1", CidrError::BadPrefix),
            ("10.0.0.0/1000", CidrError::BadPrefix),
            (
                "10.0.0.0/33",
                CidrError::PrefixTooLong {
                    prefix: 33,
                    max: 32,
                },
            ),
            (
                "::/129",
                CidrError::PrefixTooLong {
                    prefix: 129,
                    max: 128,
                },
            ),
            (
                "10.0.0.0/999",
                CidrError::PrefixTooLong {
                    prefix: 999,
                    max: 32,
                },
            ),
            (
                "10.0.0.1/8",
                CidrError::HostBitsSet {
                    network: cidr("10.0.0.0/8"),
                },
            ),
            (
                "192.168.1.1/24",
                CidrError::HostBitsSet {
                    network: cidr("192.168.1.0/24"),
                },
            ),
            (
                "2001:db8::1/32",
                CidrError::HostBitsSet {
                    network: cidr("2001:db8::/32"),
                },
            ),
            (
                "::ffff:10.0.0.1/104",
                CidrError::HostBitsSet {
                    network: cidr("10.0.0.0/8"),
                },
            ),
            (
                "::ffff:1.2.3.4/80",
                CidrError::HostBitsSet {
                    network: cidr("::/80"),
                },
            ),
        ] {
            assert_eq!(s.parse::<Cidr>(), Err(e), "{s:?}");
        }
        assert_eq!(
            CidrError::HostBitsSet {
                network: cidr("10.0.0.0/8")
            }
            .to_string(),
            "address has bits set beyond the prefix; did you mean 10.0.0.0/8?"
        );
        assert!(CidrError::BadAddress.to_string().contains("10.0.0.0/8"));
    }

    #[test]
    fn constructors() {
        assert_eq!(Cidr::new_masked(ip("10.1.2.3"), 8), Ok(cidr("10.0.0.0/8")));
        assert_eq!(
            Cidr::new_masked(ip("::ffff:10.1.2.3"), 104),
            Ok(cidr("10.0.0.0/8"))
        );
        assert_eq!(Cidr::new_masked(ip("1.2.3.4"), 0), Ok(cidr("0.0.0.0/0")));
        assert_eq!(
            Cidr::new_masked(ip("1.2.3.4"), 33),
            Err(CidrError::PrefixTooLong {
                prefix: 33,
                max: 32
            })
        );
        assert_eq!(Cidr::new(ip("1.2.3.4"), 32), Ok(cidr("1.2.3.4")));
        assert!(Cidr::new(ip("1.2.3.4"), 31).is_ok());
        assert!(Cidr::new(ip("1.2.3.5"), 31).is_err());
    }

    #[test]
    fn contains_ipv4_and_boundaries() {
        let c = cidr("192.168.1.128/25");
        assert!(c.contains(ip("192.168.1.128")));
        assert!(c.contains(ip("192.168.1.255")));
        assert!(!c.contains(ip("192.168.1.127")));
        assert!(!c.contains(ip("192.168.2.128")));
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(cidr("1.2.3.4").contains(ip("1.2.3.4")));
        assert!(!cidr("1.2.3.4").contains(ip("1.2.3.5")));
        let c = cidr("2001:db8::/127");
        assert!(c.contains(ip("2001:db8::1")));
        assert!(!c.contains(ip("2001:db8::2")));
        assert!(cidr("::/0").contains(ip("ffff::1")));
    }

    #[test]
    fn families_are_not_confused() {
        let v4 = cidr("10.0.0.0/8");
        // A dual-stack socket reports IPv4 clients as mapped addresses: same rule.
        assert!(v4.contains(ip("::ffff:10.1.2.3")));
        assert!(!v4.contains(ip("::ffff:11.1.2.3")));
        // Same bits, but not IPv4: IPv4-compatible, NAT64 and plain IPv6 addresses.
        assert!(!v4.contains(ip("::10.1.2.3")));
        assert!(!v4.contains(ip("64:ff9b::10.1.2.3")));
        assert!(!v4.contains(ip("a00::1")));
        // An IPv6 rule never catches IPv4 clients, mapped or not.
        let any6 = cidr("::/0");
        assert!(!any6.contains(ip("10.1.2.3")));
        assert!(!any6.contains(ip("::ffff:10.1.2.3")));
        assert!(!cidr("::/96").contains(ip("10.1.2.3")));
        assert!(!cidr("::1").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1").contains(ip("::1")));
        // A mapped rule is an IPv4 rule and matches both spellings.
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(mapped.contains(ip("::ffff:10.9.9.9")));
        assert!(cidr("::ffff:0:0/96").contains(ip("8.8.8.8")));
        assert!(!cidr("::ffff:0:0/96").contains(ip("::1")));
    }

    #[test]
    fn no_rules_allows_everyone() {
        let r = ClientRules::new();
        assert!(r.is_empty());
        assert_eq!(
            r.decide(ip("1.2.3.4")),
            Decision {
                action: Action::Allow,
                rule: None
            }
        );
        assert!(r.is_allowed(ip("::1")));
    }

    #[test]
    fn only_deny_rules_form_a_block_list() {
        let mut r = ClientRules::new();
        r.deny(cidr("10.0.0.0/8")).deny(cidr("::1"));
        assert_eq!(r.default_action(), Action::Allow);
        assert_eq!(
            r.decide(ip("10.1.1.1")),
            Decision {
                action: Action::Deny,
                rule: Some(0)
            }
        );
        assert_eq!(
            r.decide(ip("::1")),
            Decision {
                action: Action::Deny,
                rule: Some(1)
            }
        );
        assert!(!r.is_allowed(ip("::ffff:10.0.0.1")));
        assert!(r.is_allowed(ip("192.168.0.1")));
    }

    #[test]
    fn any_allow_rule_makes_an_allow_list() {
        let mut r = ClientRules::new();
        r.allow(cidr("192.168.0.0/16"));
        assert_eq!(r.default_action(), Action::Deny);
        assert!(r.is_allowed(ip("192.168.3.4")));
        assert_eq!(
            r.decide(ip("10.0.0.1")),
            Decision {
                action: Action::Deny,
                rule: None
            }
        );
        // Adding a deny rule does not turn it back into a block list.
        r.deny(cidr("10.0.0.0/8"));
        assert_eq!(
            r.decide(ip("172.16.0.1")),
            Decision {
                action: Action::Deny,
                rule: None
            }
        );
    }

    #[test]
    fn first_match_wins_in_given_order() {
        // Deny one host, then allow its subnet: the host stays out.
        let mut r = ClientRules::new();
        r.deny(cidr("192.168.1.66")).allow(cidr("192.168.1.0/24"));
        assert_eq!(
            r.decide(ip("192.168.1.66")),
            Decision {
                action: Action::Deny,
                rule: Some(0)
            }
        );
        assert_eq!(
            r.decide(ip("192.168.1.67")),
            Decision {
                action: Action::Allow,
                rule: Some(1)
            }
        );
        assert!(!r.is_allowed(ip("192.168.2.1")));

        // The reverse order lets the subnet rule swallow the host rule.
        let mut r = ClientRules::new();
        r.allow(cidr("192.168.1.0/24")).deny(cidr("192.168.1.66"));
        assert_eq!(
            r.decide(ip("192.168.1.66")),
            Decision {
                action: Action::Allow,
                rule: Some(0)
            }
        );

        // Mixed families in one list.
        let mut r = ClientRules::new();
        r.allow(cidr("::1"))
            .allow(cidr("127.0.0.0/8"))
            .deny(cidr("0.0.0.0/0"));
        assert!(r.is_allowed(ip("::1")));
        assert!(r.is_allowed(ip("::ffff:127.0.0.1")));
        assert!(!r.is_allowed(ip("8.8.8.8")));
        assert!(!r.is_allowed(ip("2001:db8::1")));
        assert_eq!(r.rules().len(), 3);
        assert_eq!(r.rules()[2].to_string(), "deny 0.0.0.0/0");
        r.push(Rule {
            action: Action::Allow,
            net: cidr("::/0"),
        });
        assert_eq!(
            r.decide(ip("2001:db8::1")),
            Decision {
                action: Action::Allow,
                rule: Some(3)
            }
        );
    }
}
