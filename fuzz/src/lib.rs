//! Helpers shared by the fuzz targets in `fuzz_targets/`: cutting a byte stream
//! into the pieces a socket would deliver, a clock the input drives, and small
//! address pools that make collisions (the same client, the same /64) likely.
//!
//! What it is for: every target is one file that turns fuzzer bytes into calls on
//! a parser or a sans-io state machine and checks properties of the answers. The
//! parts several targets need live here, so a target for a new module (an MSE
//! handshake, a PROXY protocol header, a sans-io session) is one more file in
//! `fuzz_targets/` and one `[[bin]]` entry in `Cargo.toml`.
//!
//! What it must not do: no I/O, no clock, no randomness of its own: a target's
//! behaviour must depend on its input only, or a crash would not reproduce.

#![deny(missing_docs)]
#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Splits `stream` into consecutive pieces whose lengths come from `cuts`
/// (each taken modulo `max_piece`, 0 meaning 1), the last piece taking what is
/// left: the reads a peer's bytes may arrive in. Every byte is in exactly one
/// piece, in order.
pub fn pieces<'a>(stream: &'a [u8], cuts: &[u16], max_piece: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut rest = stream;
    for &c in cuts {
        if rest.is_empty() {
            break;
        }
        let n = (usize::from(c) % max_piece.max(1)).max(1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

/// Simulated time: starts at a fixed [`Instant`] and only moves forward, by
/// amounts the input chooses. State machines take `now` as an argument, so this
/// is the only clock a target needs.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    now: Instant,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    /// A clock at its start (the process's first reading, so runs are comparable).
    pub fn new() -> Clock {
        let start = start_instant();
        Clock { start, now: start }
    }

    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Time since the clock's start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves the clock forward by `d` and returns the new time.
    pub fn advance(&mut self, d: Duration) -> Instant {
        self.now = self.now.checked_add(d).unwrap_or(self.now);
        self.now
    }
}

fn start_instant() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// One of a few client addresses, chosen by `n`: IPv4 addresses, two addresses of
/// one IPv6 /64 (one client for every limit keyed by `reactor::client_key`), another
/// /64, and the IPv4-mapped form of the first IPv4 address (the same client seen
/// through a dual-stack socket).
pub fn client_ip(n: u8) -> IpAddr {
    match n % 8 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        2 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        3 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1)),
        4 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 0, 0, 9)),
        5 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1)),
        6 => IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// A socket address from [`client_ip`] and a port from a small set (so two
/// connections of one host often share a port, and often do not).
pub fn client_addr(n: u8) -> SocketAddr {
    let port = [6881, 6882, 51413, 1][usize::from(n / 8) % 4];
    SocketAddr::new(client_ip(n), port)
}

/// Milliseconds to a [`Duration`], for inputs that move a [`Clock`].
pub fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_stream_in_order() {
        let s: Vec<u8> = (0..100).collect();
        for cuts in [&[][..], &[0], &[1, 2, 3], &[500, 7], &[65535; 40]] {
            let p = pieces(&s, cuts, 64);
            assert_eq!(p.concat(), s);
            // Every piece cut by a size is at most `max_piece`; the last takes the rest.
            assert!(
                p[..p.len() - 1]
                    .iter()
                    .all(|x| !x.is_empty() && x.len() <= 64)
            );
            assert!(p.len() <= cuts.len() + 1);
        }
        assert_eq!(pieces(&[], &[3], 8), vec![&[][..]]);
    }
}
