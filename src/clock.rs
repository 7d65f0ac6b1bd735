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
/// conversions around it (the loop reads it once per dispatch). On Linux this is
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
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
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
    /// A (ticks, ns) pair read together when the stopwatch was made: the
    /// calibration baseline, so the ratio gets more precise the longer it runs.
    base: (u64, u64),
    /// Nanoseconds per tick, as a 32.32 fixed-point number.
    mult: u64,
    /// `mono_ns` at the last calibration.
    calibrated_at: u64,
}

/// Recalibrate at most this often (nanoseconds).
const CALIBRATE_EVERY: u64 = 100_000_000;

impl Stopwatch {
    /// A stopwatch; with the time-stamp counter this spins for about 200 µs to get a
    /// first ratio good to a few parts in 10,000.
    pub(crate) fn new() -> Stopwatch {
        let tsc = tsc_is_the_clock();
        let base = if tsc {
            paired()
        } else {
            let ns = mono_ns();
            (ns, ns)
        };
        let mut w = Stopwatch {
            tsc,
            base,
            mult: 1 << 32,
            calibrated_at: base.1,
        };
        if tsc {
            // Being descheduled meanwhile only lengthens the baseline.
            while mono_ns() - base.1 < 200_000 {
                std::hint::spin_loop();
            }
            w.calibrate();
        }
        w
    }

    /// The current tick count.
    #[inline]
    pub(crate) fn ticks(&self) -> u64 {
        read_ticks(self.tsc)
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

    /// Refines the ratio now and then (`ns` is the caller's fresh `mono_ns`): the
    /// longer the baseline, the more precise it is.
    #[inline]
    pub(crate) fn observe(&mut self, ns: u64) {
        if self.tsc && ns.wrapping_sub(self.calibrated_at) >= CALIBRATE_EVERY {
            self.calibrate();
        }
    }

    fn calibrate(&mut self) {
        let (ticks, ns) = paired();
        let dt = ticks.wrapping_sub(self.base.0);
        let dn = ns.wrapping_sub(self.base.1);
        if dt > 0 {
            self.mult = (((dn as u128) << 32) / dt as u128).min(u64::MAX as u128) as u64;
        }
        self.calibrated_at = ns;
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
        let spread = t2.wrapping_sub(t1);
        if spread < best.0 {
            best = (spread, t1 + spread / 2, ns);
        }
    }
    (best.1, best.2)
}

#[inline]
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
