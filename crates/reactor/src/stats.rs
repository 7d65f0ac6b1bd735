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
    // No running count: `count` adds the buckets up when asked, so recording
    // stays one increment, one add and one compare.
    sum_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
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
        self.sum_ns = self.sum_ns.wrapping_add(ns);
        if ns > self.max_ns {
            self.max_ns = ns;
        }
    }

    /// Number of values recorded (a sum over the buckets: call it per report,
    /// not per value).
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The largest value recorded, exactly.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The sum of the values recorded (for a mean, or a Prometheus `_sum`).
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// How many values were at most `d`, counting whole buckets: a bucket that
    /// straddles `d` is left out, so this is low by at most the values within
    /// 12.5 % below `d` (a Prometheus `le` bucket, conservatively).
    pub fn count_at_most(&self, d: Duration) -> u64 {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if ns >= self.max_ns {
            return self.count();
        }
        let mut n = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            if bucket_upper(b) > ns {
                break;
            }
            n += c;
        }
        n
    }

    /// The value below which a fraction `q` (0.0 to 1.0) of the records fall, as the
    /// upper bound of its bucket (at most 12.5 % high), capped at the exact maximum.
    pub fn percentile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
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

    /// Sets the count (a sampled counter: the value its component keeps).
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
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

    /// Shows `counter`, made elsewhere, under `name` (a library's counters, made
    /// before it had a loop). Returns false, and changes nothing, if `name` is
    /// already taken.
    pub fn register_counter(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        counter: &Counter,
    ) -> bool {
        let name = name.into();
        if self.counters.iter().any(|(n, _)| *n == name) {
            return false;
        }
        self.counters.push((name, counter.clone()));
        true
    }

    /// Shows `gauge`, made elsewhere, under `name`; false if `name` is taken.
    pub fn register_gauge(&mut self, name: impl Into<Cow<'static, str>>, gauge: &Gauge) -> bool {
        let name = name.into();
        if self.gauges.iter().any(|(n, _)| *n == name) {
            return false;
        }
        self.gauges.push((name, gauge.clone()));
        true
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

/// Slow callbacks counted by the name of their handler ([`Handler::name`](crate::Handler::name)),
/// for the stats line and a metrics label. At most [`SlowHandlers::MAX_NAMES`]
/// names are kept (a label set must stay bounded, whatever names handlers
/// make up); slow callbacks of further names are counted under `other`.
/// Only a slow callback touches this, never the fast path.
#[derive(Clone, Debug, Default)]
pub struct SlowHandlers {
    names: Vec<(String, u64)>,
    other: u64,
}

impl SlowHandlers {
    /// Names kept at most.
    pub const MAX_NAMES: usize = 32;

    /// Counts one slow callback of the handler called `name`.
    pub(crate) fn count(&mut self, name: &str) {
        if let Some((_, n)) = self.names.iter_mut().find(|(k, _)| k == name) {
            *n += 1;
        } else if self.names.len() < Self::MAX_NAMES {
            self.names.push((name.to_string(), 1));
        } else {
            self.other += 1;
        }
    }

    /// Slow callbacks of the handler called `name` (`"other"` for the names
    /// beyond the cap).
    pub fn get(&self, name: &str) -> u64 {
        if name == "other" {
            return self.other;
        }
        self.names
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, n)| *n)
    }

    /// Every name with its count, in the order first seen; `other` last if any.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.names
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .chain((self.other > 0).then_some(("other", self.other)))
    }
}

/// Metrics a component keeps itself (a table's size, its own counts), read by a
/// closure when the loop takes a snapshot and stored in an ordinary registered
/// [`Counter`] or [`Gauge`]: nothing is paid between snapshots. The closures stay
/// on the loop thread (they need not be `Send`); the values travel.
#[derive(Default)]
pub(crate) struct Samplers(Vec<Sampler>);

enum Sampler {
    Counter(Counter, Box<dyn Fn() -> u64>),
    Gauge(Gauge, Box<dyn Fn() -> i64>),
}

impl Samplers {
    pub(crate) fn counter(&mut self, c: Counter, read: Box<dyn Fn() -> u64>) {
        self.0.push(Sampler::Counter(c, read));
    }

    pub(crate) fn gauge(&mut self, g: Gauge, read: Box<dyn Fn() -> i64>) {
        self.0.push(Sampler::Gauge(g, read));
    }

    /// Reads every closure into its metric.
    pub(crate) fn sample(&self) {
        for s in &self.0 {
            match s {
                Sampler::Counter(c, read) => c.set(read()),
                Sampler::Gauge(g, read) => g.set(read()),
            }
        }
    }
}

impl fmt::Debug for Samplers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Samplers({})", self.0.len())
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
/// accepted=N refused=N conns=N jobs_panicked=N timers_live=N jobs_queued=N
/// spare_buffers=N [slow_by=NAME:N,...] [NAME=N ...]
/// ```
///
/// (one line; `failed` is `handler_error` plus `panic`; `truncated` counts closes
/// that dropped output still queued; `conns` is the connections open; `slow_by`
/// appears once a callback was slow; the program's counters and gauges come
/// last, by name). `timers_live`, `jobs_queued` and `spare_buffers` are sampled:
/// see [`Stats::timers_live`].
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
    /// Slow callbacks by handler name (their total is [`Stats::slow_dispatches`]).
    pub slow_handlers: SlowHandlers,
    /// Jobs whose closure panicked (their handler got a
    /// [`JobPanicked`](crate::JobPanicked); counted in `jobs_completed` or
    /// `jobs_dropped` too).
    pub jobs_panicked: u64,
    /// Connections accepted by [`Listener`](crate::Listener)s and given a handler.
    pub connections_accepted: u64,
    /// Connections accepted and then refused by a listener's factory (it returned
    /// `None`).
    pub connections_refused: u64,
    /// Connections from listeners open now (those of a listener that has
    /// closed are no longer counted).
    pub connections_open: u64,
    /// Timers set and not yet fired or cancelled. Sampled, like `jobs_queued`
    /// and `spare_buffers`: filled in by [`Loop::snapshot`](crate::Loop::snapshot)
    /// and [`Reactor::snapshot`](crate::Reactor::snapshot) (so the fast path
    /// never updates them); [`Loop::stats`](crate::Loop::stats) shows the values
    /// of the last snapshot.
    pub timers_live: u64,
    /// Jobs waiting in the worker pool's queue for a thread (sampled).
    pub jobs_queued: u64,
    /// Spare I/O buffers held by the loop's buffer pool for reuse (sampled).
    pub spare_buffers: u64,
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
            " truncated={} bytes_in={} bytes_out={} accepted={} refused={} conns={} \
             jobs_panicked={} timers_live={} jobs_queued={} spare_buffers={}",
            self.truncated_closes,
            self.bytes_in,
            self.bytes_out,
            self.connections_accepted,
            self.connections_refused,
            self.connections_open,
            self.jobs_panicked,
            self.timers_live,
            self.jobs_queued,
            self.spare_buffers,
        )?;
        for (i, (name, n)) in self.slow_handlers.iter().enumerate() {
            let sep = if i == 0 { " slow_by=" } else { "," };
            write!(f, "{sep}{name}:{n}")?;
        }
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
    fn sum_and_prometheus_buckets() {
        let mut h = Histogram::default();
        for ns in [500u64, 1_000, 2_000, 900_000] {
            h.record(ns);
        }
        assert_eq!(h.sum(), Duration::from_nanos(903_500));
        assert_eq!(h.count_at_most(Duration::from_nanos(499)), 0);
        assert_eq!(
            h.count_at_most(Duration::from_micros(1)),
            1,
            "1000 ns shares a bucket with 1001..1023"
        );
        assert_eq!(h.count_at_most(Duration::from_micros(3)), 3);
        assert_eq!(h.count_at_most(Duration::from_millis(1)), 4);
        assert_eq!(h.count_at_most(Duration::MAX), 4);
        // Never more than the exact count at or below the bound.
        let mut g = Histogram::default();
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut vals = Vec::new();
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let v = rng % 5_000_000;
            vals.push(v);
            g.record(v);
        }
        for le in [1_000u64, 10_000, 100_000, 1_000_000, 4_000_000] {
            let exact = vals.iter().filter(|&&v| v <= le).count() as u64;
            let low = vals
                .iter()
                .filter(|&&v| (v as f64) <= le as f64 / 1.125)
                .count() as u64;
            let got = g.count_at_most(Duration::from_nanos(le));
            assert!(
                got <= exact && got >= low,
                "le={le}: {low} <= {got} <= {exact}"
            );
        }
    }

    #[test]
    fn slow_handlers_keep_a_bounded_set_of_names() {
        let mut s = SlowHandlers::default();
        s.count("Peer");
        s.count("Peer");
        for i in 0..SlowHandlers::MAX_NAMES + 5 {
            s.count(&format!("H{i}"));
        }
        assert_eq!(s.get("Peer"), 2);
        assert_eq!(s.iter().count(), SlowHandlers::MAX_NAMES + 1);
        assert_eq!(s.get("other"), 6);
        assert_eq!(s.iter().last(), Some(("other", 6)));
        assert_eq!(
            s.iter().map(|(_, n)| n).sum::<u64>(),
            2 + SlowHandlers::MAX_NAMES as u64 + 5
        );
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
        let made_elsewhere = Counter::default();
        made_elsewhere.add(4);
        assert!(s.app.register_counter("elsewhere", &made_elsewhere));
        assert!(!s.app.register_counter("lines", &made_elsewhere), "taken");
        assert_eq!(s.counter("elsewhere"), Some(4));
        assert_eq!(s.counter("lines"), Some(3));
        let line = s.to_string();
        assert!(line.ends_with(" lines=3 elsewhere=4 online=5"), "{line}");
        s.count_close(CloseReason::Panic);
        s.count_close(CloseReason::PeerReset);
        assert_eq!(s.handlers_failed, 1);
        assert_eq!(s.closes(CloseReason::PeerReset), 1);
    }
}
