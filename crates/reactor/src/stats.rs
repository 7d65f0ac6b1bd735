//! Loop statistics: counters, a dispatch-time histogram, close reasons, and the
//! counters and gauges a program adds of its own.
//!
//! The loop's own numbers are plain integers owned by the loop thread: updating
//! one is an add, recording a dispatch time is a few shifts and an add into a fixed
//! array. A program's [`Counter`]s and [`Gauge`]s are written by their loop's
//! thread only, with a plain load and store (no locked instruction), and can be
//! read from any thread. No locks, no allocation per update. This module must not
//! read the clock, log, or know about handlers; [`StatsLogger`](crate::StatsLogger)
//! is the handler that prints the line periodically.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::event::CloseReason;

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

/// A program's own monotonically growing count (requests served, lines broadcast),
/// registered with its loop ([`Loop::counter`](crate::Loop::counter)) so that the
/// stats line and the metrics show it.
///
/// Cheap to update: one plain load and store, no locked instruction, because only
/// the thread of the loop it belongs to may update it (updates from two threads
/// at once could be lost; give each loop its own). Any thread may read it.
/// Clones share the count.
///
/// ```
/// let c = reactor::Counter::default();
/// c.inc();
/// c.add(2);
/// assert_eq!(c.get(), 3);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a load and a store instead of a `lock xadd`.
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A program's own value that goes up and down (clients online, queue depth);
/// like [`Counter`], registered with a loop and written by that loop's thread only.
///
/// ```
/// let g = reactor::Gauge::default();
/// g.inc();
/// g.add(4);
/// g.dec();
/// assert_eq!(g.get(), 4);
/// g.set(-1);
/// assert_eq!(g.get(), -1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `n` (which may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters and gauges a program registered with one loop, by name.
#[derive(Clone, Debug, Default)]
pub struct AppMetrics {
    counters: Vec<(Cow<'static, str>, Counter)>,
    gauges: Vec<(Cow<'static, str>, Gauge)>,
}

impl AppMetrics {
    /// The counter called `name`, created at zero on first use.
    pub fn counter(&mut self, name: impl Into<Cow<'static, str>>) -> Counter {
        let name = name.into();
        if let Some((_, c)) = self.counters.iter().find(|(n, _)| *n == name) {
            return c.clone();
        }
        let c = Counter::default();
        self.counters.push((name, c.clone()));
        c
    }

    /// The gauge called `name`, created at zero on first use.
    pub fn gauge(&mut self, name: impl Into<Cow<'static, str>>) -> Gauge {
        let name = name.into();
        if let Some((_, g)) = self.gauges.iter().find(|(n, _)| *n == name) {
            return g.clone();
        }
        let g = Gauge::default();
        self.gauges.push((name, g.clone()));
        g
    }

    /// Every counter with its name, in the order they were registered.
    pub fn counters(&self) -> impl Iterator<Item = (&str, u64)> {
        self.counters.iter().map(|(n, c)| (n.as_ref(), c.get()))
    }

    /// Every gauge with its name, in the order they were registered.
    pub fn gauges(&self) -> impl Iterator<Item = (&str, i64)> {
        self.gauges.iter().map(|(n, g)| (n.as_ref(), g.get()))
    }
}

/// Counters kept by the loop. Cumulative since the reactor was created; the
/// loop's own fields are a snapshot once cloned, while [`Stats::app`] shares the
/// program's live counters.
///
/// Its `Display` is the stats line's totals part (see
/// [`StatsLogger`](crate::StatsLogger) for the whole line):
///
/// ```text
/// iterations=N events=N stale=N dispatches=N dispatch_us p50=F p99=F p999=F max=F
/// slow=N timers=N jobs=OFFLOADED/COMPLETED/DROPPED/REJECTED open=N started=N
/// failed=N closes=peer_closed:N,peer_reset:N,idle_timeout:N,protocol_error:N,
/// local:N,shutdown:N,handler_error:N,panic:N truncated=N bytes_in=N bytes_out=N
/// [NAME=N ...]
/// ```
///
/// (one line; `failed` is `handler_error` plus `panic`; `truncated` counts closes
/// that dropped output still queued; the program's counters and gauges come
/// last, by name).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
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
    /// Handlers closed because a callback returned an error of its own or panicked
    /// ([`CloseReason::HandlerError`] plus [`CloseReason::Panic`]; a peer's reset
    /// or bad input is not a failure).
    pub handlers_failed: u64,
    /// Handlers closed, per [`CloseReason`] (indexed by [`CloseReason::index`]).
    pub closes: [u64; CloseReason::ALL.len()],
    /// Connections closed with output still queued for a peer that was not gone:
    /// those bytes were dropped (each such close is also logged).
    pub truncated_closes: u64,
    /// Bytes read from sockets by [`crate::Conn`].
    pub bytes_in: u64,
    /// Bytes written to sockets by [`crate::Conn`].
    pub bytes_out: u64,
    /// The program's own counters and gauges.
    pub app: AppMetrics,
}

impl Stats {
    /// Handlers closed for `reason`.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()]
    }

    /// The program counter called `name`, if one is registered.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.app
            .counters()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The program gauge called `name`, if one is registered.
    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.app.gauges().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub(crate) fn count_close(&mut self, reason: CloseReason) {
        self.closes[reason.index()] += 1;
        if reason.is_failure() {
            self.handlers_failed += 1;
        }
    }
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
             failed={} closes=",
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
        )?;
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}:{}", r.as_str(), self.closes[i])?;
        }
        write!(
            f,
            " truncated={} bytes_in={} bytes_out={}",
            self.truncated_closes, self.bytes_in, self.bytes_out
        )?;
        for (name, v) in self.app.counters() {
            write!(f, " {name}={v}")?;
        }
        for (name, v) in self.app.gauges() {
            write!(f, " {name}={v}")?;
        }
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
        assert!(s.contains(" closes=peer_closed:0,peer_reset:0,"), "{s}");
    }

    #[test]
    fn program_metrics_are_shared_by_name_and_shown() {
        let mut s = Stats::default();
        let a = s.app.counter("lines");
        let b = s.app.counter("lines");
        a.inc();
        b.add(2);
        s.app.gauge("online").set(5);
        assert_eq!(s.counter("lines"), Some(3));
        assert_eq!(s.gauge("online"), Some(5));
        assert_eq!(s.counter("nope"), None);
        let line = s.to_string();
        assert!(line.ends_with(" lines=3 online=5"), "{line}");
        s.count_close(CloseReason::Panic);
        s.count_close(CloseReason::PeerReset);
        assert_eq!(s.handlers_failed, 1);
        assert_eq!(s.closes(CloseReason::PeerReset), 1);
    }
}
