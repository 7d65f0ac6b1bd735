//! Rate-limited log lines: at most one line per period for a class of problems
//! (malformed datagrams, refused connections, hostile peers), with a count of the
//! lines held back, so that a flood of bad input cannot become a flood of log lines.
//!
//! It decides and counts; it must not log by itself or read a clock (callers pass
//! `now`, usually the loop's [`Context::now`](crate::reactor::Context::now)).

use std::time::{Duration, Instant};

/// Lets one line through per period. See the module docs.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
    logged: u64,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            held_back: 0,
            logged: 0,
        }
    }

    /// `Some(lines held back since the last one let through)` if a line may be
    /// written now (the caller writes it, with that count); `None` if it is to be
    /// held back (and is counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                self.logged += 1;
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }

    /// Lines let through so far.
    pub fn logged(&self) -> u64 {
        self.logged
    }
}

impl Default for LogLimiter {
    /// One line a second.
    fn default() -> LogLimiter {
        LogLimiter::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(l.allow(t0 + Duration::from_secs(3)), Some(0));
        assert_eq!(l.logged(), 3);
        // A clock that goes backwards (an earlier `now`) holds lines back.
        assert_eq!(l.allow(t0), None);
    }
}
