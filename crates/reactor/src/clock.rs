//! The loop's clocks: the monotonic clock as a plain number, and a cheaper
//! stopwatch for timing dispatches.
//!
//! The loop times every dispatch. A vDSO `clock_gettime` is cheap but not free, so
//! [`Stopwatch`] reads the CPU's time-stamp counter instead where the kernel itself
//! trusts it as its clock source, and converts to nanoseconds only for the numbers
//! it reports. This is the platform-specific part of the loop, kept apart.
//!
//! This module must stay a thin layer over the clocks: no policy, no state beyond
//! the calibration.

/// The monotonic clock in nanoseconds: what `Instant` reads, without the
/// conversions around it (the loop reads it once per poll). On Linux this is
/// `CLOCK_MONOTONIC`, the clock behind `Instant`, through the vDSO.
#[inline]
pub(crate) fn mono_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        #[allow(unsafe_code)]
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
        };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static BASE: OnceLock<Instant> = OnceLock::new();
        BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Time of dispatches in cheap ticks: the time-stamp counter on x86_64 Linux when
/// the kernel's clock source is `tsc` (then it is invariant and synchronised across
/// CPUs, or the kernel would not use it), otherwise [`mono_ns`] itself. Ticks are
/// turned into nanoseconds with a ratio calibrated against `CLOCK_MONOTONIC`.
#[derive(Debug, Clone)]
pub(crate) struct Stopwatch {
    tsc: bool,
    /// The (ticks, ns) pair of the last calibration: the next ratio is measured
    /// over the interval since, so a counter that jumps (a reset across suspend)
    /// spoils one interval at most.
    last: (u64, u64),
    /// Nanoseconds per tick, as a 32.32 fixed-point number; never 0.
    mult: u64,
}

/// Recalibrate at most this often (nanoseconds). Over 100 ms the bracketed pairs'
/// uncertainty (tens of nanoseconds) is a few parts in ten million.
const CALIBRATE_EVERY: u64 = 100_000_000;

impl Stopwatch {
    /// A stopwatch; with the time-stamp counter this spins for about 200 µs to get a
    /// first ratio good to a few parts in 10,000.
    pub(crate) fn new() -> Stopwatch {
        let tsc = tsc_is_the_clock();
        let ns = mono_ns();
        let mut w = Stopwatch {
            tsc,
            last: (ns, ns),
            mult: 1 << 32,
        };
        if tsc {
            w.last = paired();
            // Being descheduled meanwhile only lengthens the baseline.
            while mono_ns().saturating_sub(w.last.1) < 200_000 {
                std::hint::spin_loop();
            }
            w.calibrate(true);
        }
        w
    }

    /// The current tick count.
    #[inline]
    pub(crate) fn ticks(&self) -> u64 {
        read_ticks(self.tsc)
    }

    /// The current tick count, given a fresh `mono_ns` reading (which is the tick
    /// count itself without the time-stamp counter: no second clock read).
    #[inline]
    pub(crate) fn ticks_at(&self, ns: u64) -> u64 {
        if self.tsc { read_ticks(true) } else { ns }
    }

    /// A span of ticks in nanoseconds.
    #[inline]
    pub(crate) fn to_ns(&self, ticks: u64) -> u64 {
        if self.tsc {
            ((ticks as u128 * self.mult as u128) >> 32) as u64
        } else {
            ticks
        }
    }

    /// Refines the ratio now and then (`ns` is the caller's fresh `mono_ns`).
    #[inline]
    pub(crate) fn observe(&mut self, ns: u64) {
        if self.tsc && ns.saturating_sub(self.last.1) >= CALIBRATE_EVERY {
            self.calibrate(false);
        }
    }

    /// Measures the ratio over the interval since the last calibration. An interval
    /// in which either clock went backwards, or whose ratio is off by more than a
    /// factor of two (the counter was reset or stopped while the machine slept), is
    /// skipped: the old ratio stays and the next interval starts now.
    fn calibrate(&mut self, first: bool) {
        self.update(paired(), first);
    }

    fn update(&mut self, (ticks, ns): (u64, u64), first: bool) {
        let (t0, n0) = self.last;
        self.last = (ticks, ns);
        if ticks <= t0 || ns <= n0 {
            return;
        }
        let m = (((ns - n0) as u128) << 32) / (ticks - t0) as u128;
        let m = m.clamp(1, u64::MAX as u128) as u64;
        if first || (m / 2 <= self.mult && self.mult / 2 <= m) {
            self.mult = m;
        }
    }
}

/// A (ticks, ns) pair of the time-stamp counter and `mono_ns` read at the same
/// moment: the clock read is bracketed by two counter reads and the tightest of a
/// few tries is kept, so a thread descheduled between the reads cannot skew the
/// ratio (it did: a 200 ms sleep once measured as 40 ms).
fn paired() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..5 {
        let t1 = read_ticks(true);
        let ns = mono_ns();
        let t2 = read_ticks(true);
        if t2 < t1 {
            continue; // the counter went backwards between the reads: no pair
        }
        let spread = t2 - t1;
        if spread < best.0 {
            best = (spread, t1 + spread / 2, ns);
        }
    }
    if best.0 == u64::MAX {
        // Never a clean pair (a counter misbehaving on every try): an interval of
        // length zero, which `calibrate` skips.
        let t = read_ticks(true);
        return (t, mono_ns());
    }
    (best.1, best.2)
}

#[inline]
// Reviewed: the one intrinsic read below.
#[allow(unsafe_code)]
fn read_ticks(tsc: bool) -> u64 {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if tsc {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no side effects.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    let _ = tsc;
    mono_ns()
}

/// True where the kernel keeps time with the time-stamp counter (decided once per
/// process).
fn tsc_is_the_clock() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static TSC: OnceLock<bool> = OnceLock::new();
        *TSC.get_or_init(|| {
            std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .is_ok_and(|s| s.trim() == "tsc")
        })
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_ns_follows_instant() {
        let (i0, n0) = (std::time::Instant::now(), mono_ns());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (n1, i1) = (mono_ns(), std::time::Instant::now());
        let by_instant = i1.duration_since(i0).as_nanos() as i128;
        let by_mono = (n1 - n0) as i128;
        // Same clock, read a few nanoseconds apart at each end.
        assert!(
            (by_instant - by_mono).abs() < 1_000_000,
            "{by_instant} vs {by_mono}"
        );
        assert!(by_mono >= 20_000_000);
    }

    #[test]
    fn calibration_skips_intervals_where_a_clock_jumped() {
        let mut w = Stopwatch {
            tsc: true,
            last: (1_000, 1_000),
            mult: 1 << 32,
        };
        // 2 ns per tick over a clean interval.
        w.update((2_000, 3_000), false);
        assert_eq!(w.mult, 2 << 32);
        assert_eq!(w.to_ns(500), 1_000);
        // The counter went backwards (reset across a suspend): ratio kept, and the
        // next interval starts at the new reading.
        w.update((10, 5_000), false);
        assert_eq!(w.mult, 2 << 32);
        assert_eq!(w.last, (10, 5_000));
        // A ratio off by more than a factor of two (the counter stopped while the
        // clock ran on): kept.
        w.update((20, 105_000), false);
        assert_eq!(w.mult, 2 << 32);
        // Back to normal: taken.
        w.update((1_020, 107_200), false);
        assert_eq!(w.mult, (2.2 * (1u64 << 32) as f64) as u64);
        // The clock standing still: skipped, never a zero ratio.
        w.update((2_020, 107_200), false);
        assert!(w.mult > 0);
        let mut first = Stopwatch {
            tsc: true,
            last: (0, 0),
            mult: 1 << 32,
        };
        first.update((1_000, 1), true);
        assert_eq!(
            first.mult,
            (1u64 << 32) / 1_000,
            "the first ratio is taken as it is"
        );
    }

    #[test]
    fn stopwatch_measures_nanoseconds() {
        let mut w = Stopwatch::new();
        let (t0, n0) = (w.ticks(), mono_ns());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (t1, n1) = (w.ticks(), mono_ns());
        w.observe(n1);
        let by_ticks = w.to_ns(t1 - t0) as i128;
        let by_mono = (n1 - n0) as i128;
        // Within 2 % plus the few hundred nanoseconds between the paired reads.
        assert!(
            (by_ticks - by_mono).abs() < by_mono / 50 + 10_000,
            "{by_ticks} ns by ticks vs {by_mono} ns by the clock (tsc: {})",
            w.tsc
        );
    }
}
