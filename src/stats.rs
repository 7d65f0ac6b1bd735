//! Loop statistics: counters and a dispatch-time histogram.
//!
//! Everything here is plain integers owned by the loop thread: updating a counter is
//! an add, recording a dispatch time is a few shifts and an add into a fixed array.
//! No locks, no allocation. This module must not read the clock or log on its own;
//! [`StatsLogger`] is the handler that prints the line periodically.

use std::fmt;
use std::time::Duration;

use crate::handler::HandlerResult;
use crate::reactor::Context;
use crate::timer::TimerId;

/// Sub-buckets per power of two: percentiles are within 1/8 (12.5 %) of the truth.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// A log-linear histogram of durations in nanoseconds (HDR-style, fixed size).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max_ns: 0,
        }
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max_ns", &self.max_ns)
            .finish()
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    let sub = ((ns >> shift) as usize) & (SUB - 1);
    ((shift as usize + 1) << SUB_BITS) + sub
}

/// The largest value that falls in bucket `b`.
fn bucket_upper(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let shift = (b >> SUB_BITS) as u32 - 1;
    let sub = (b & (SUB - 1)) as u64;
    let low = (SUB as u64 + sub) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        if ns > self.max_ns {
            self.max_ns = ns;
        }
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded, exactly.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The value below which a fraction `q` (0.0 to 1.0) of the records fall, as the
    /// upper bound of its bucket (at most 12.5 % high), capped at the exact maximum.
    pub fn percentile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(bucket_upper(b).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }
}

/// Counters kept by the loop. Cumulative since the reactor was created.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Times the loop went round (one `poll` each).
    pub iterations: u64,
    /// Readiness events delivered to handlers (stale ones are not counted).
    pub events: u64,
    /// Events dropped because their handler had closed (stale tokens).
    pub stale_events: u64,
    /// Callbacks run (events, timers, jobs, messages, starts).
    pub dispatches: u64,
    /// Time spent in each callback.
    pub dispatch_time: Histogram,
    /// Callbacks that ran longer than the slow-handler threshold.
    pub slow_dispatches: u64,
    /// Timers that fired.
    pub timers_fired: u64,
    /// Jobs sent to the worker pool.
    pub jobs_offloaded: u64,
    /// Job results delivered to their handler.
    pub jobs_completed: u64,
    /// Job results dropped because their handler had closed.
    pub jobs_dropped: u64,
    /// Jobs refused because the pool's queue was full.
    pub jobs_rejected: u64,
    /// Handlers currently open.
    pub handlers_open: u64,
    /// Handlers ever started.
    pub handlers_started: u64,
    /// Handlers closed because a callback returned an error or panicked.
    pub handlers_failed: u64,
    /// Bytes read from sockets by [`crate::Conn`].
    pub bytes_in: u64,
    /// Bytes written to sockets by [`crate::Conn`].
    pub bytes_out: u64,
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.dispatch_time;
        write!(
            f,
            "iterations={} events={} stale={} dispatches={} dispatch_us p50={:.1} p99={:.1} \
             p999={:.1} max={:.1} slow={} timers={} jobs={}/{}/{}/{} open={} started={} \
             failed={} bytes_in={} bytes_out={}",
            self.iterations,
            self.events,
            self.stale_events,
            self.dispatches,
            us(h.percentile(0.5)),
            us(h.percentile(0.99)),
            us(h.percentile(0.999)),
            us(h.max()),
            self.slow_dispatches,
            self.timers_fired,
            self.jobs_offloaded,
            self.jobs_completed,
            self.jobs_dropped,
            self.jobs_rejected,
            self.handlers_open,
            self.handlers_started,
            self.handlers_failed,
            self.bytes_in,
            self.bytes_out
        )
    }
}

/// A handler that logs the stats line (at `info` level) every `interval`, and closes
/// itself on shutdown so it does not hold the loop open.
#[derive(Debug)]
pub struct StatsLogger {
    interval: Duration,
    label: String,
}

impl StatsLogger {
    /// Logs every `interval`; `label` starts each line (e.g. the loop's number).
    pub fn new(interval: Duration, label: impl Into<String>) -> StatsLogger {
        StatsLogger {
            interval,
            label: label.into(),
        }
    }
}

impl crate::Handler for StatsLogger {
    fn on_start(&mut self, cx: &mut Context<'_>) -> HandlerResult {
        cx.timer_repeat(self.interval);
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_>, _t: TimerId) -> HandlerResult {
        log::info!("{}stats {}", self.label, cx.stats());
        Ok(())
    }
    fn on_shutdown(&mut self, cx: &mut Context<'_>) -> HandlerResult {
        log::info!("{}stats {}", self.label, cx.stats());
        cx.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [0u64, 1, 7, 8, 9, 15, 16, 100, 1000, 123_456, 10_000_000_000] {
            let b = bucket_of(ns);
            assert!(b >= last);
            last = b;
            let up = bucket_upper(b);
            assert!(up >= ns, "{ns} above its bucket's upper bound {up}");
            assert!(
                up as f64 <= ns as f64 * 1.125 + 1.0,
                "{ns}: bucket too wide {up}"
            );
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let p50 = h.percentile(0.5).as_nanos() as f64;
        assert!((500_000.0..=500_000.0 * 1.125).contains(&p50), "{p50}");
        assert_eq!(h.percentile(1.0), Duration::from_micros(1000));
        assert_eq!(h.max(), Duration::from_micros(1000));
        assert_eq!(Histogram::default().percentile(0.5), Duration::ZERO);
    }

    #[test]
    fn one_line() {
        let s = Stats::default().to_string();
        assert!(!s.contains('\n'));
        assert!(s.starts_with("iterations=0 "));
    }
}
