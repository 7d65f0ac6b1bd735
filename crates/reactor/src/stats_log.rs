//! [`StatsLogger`]: the handler that writes the stats line.
//!
//! It sits above the loop (it is an ordinary handler reading
//! [`Loop::snapshot`](crate::Loop::snapshot), the same numbers the metrics
//! endpoint of `reactor-metrics` serves), so the statistics module below the loop
//! knows nothing of handlers or logging. It must not keep anything but the
//! previous line's numbers, to compute rates.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::event::{CloseReason, HandlerResult};
use crate::handler::{Context, Handler};
use crate::stats::Stats;
use crate::timer::TimerId;

/// A handler that logs the stats line (at `info` level) every `interval`, and once
/// more when the loop shuts down (then it closes itself, so it does not hold the
/// loop open).
///
/// The line is `LABELstats TOTALS | per_s over=SECS RATES`: `TOTALS` are the
/// cumulative counts of [`Stats`]'s `Display` (documented there), `RATES` the
/// increase per second over the interval since the previous line, for
/// `events dispatches started closes bytes_in bytes_out` and then every program
/// counter by its name:
///
/// ```text
/// stats iterations=120 events=240 ... bytes_out=4096 lines=10 online=3 | per_s over=1.0s events=24.0 dispatches=30.0 started=2.0 closes=1.0 bytes_in=409.6 bytes_out=409.6 lines=1.0
/// ```
#[derive(Debug)]
pub struct StatsLogger {
    interval: Duration,
    label: String,
    last: Option<(Instant, Snapshot)>,
    line: String,
}

/// The numbers rates are computed from.
#[derive(Debug, Default, Clone)]
struct Snapshot {
    events: u64,
    dispatches: u64,
    started: u64,
    closes: u64,
    bytes_in: u64,
    bytes_out: u64,
    counters: Vec<u64>,
}

impl Snapshot {
    fn of(s: &Stats) -> Snapshot {
        Snapshot {
            events: s.events,
            dispatches: s.dispatches,
            started: s.handlers_started,
            closes: s.closes.iter().sum(),
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            counters: s.app.counters().map(|(_, v)| v).collect(),
        }
    }
}

impl StatsLogger {
    /// Logs every `interval`; `label` starts each line (e.g. `"loop 1: "`).
    pub fn new(interval: Duration, label: impl Into<String>) -> StatsLogger {
        StatsLogger {
            interval,
            label: label.into(),
            last: None,
            line: String::new(),
        }
    }

    /// The line for `stats` at `now`, with rates since the previous call.
    fn render(&mut self, stats: &Stats, now: Instant) -> &str {
        let snap = Snapshot::of(stats);
        self.line.clear();
        let _ = write!(self.line, "{}stats {stats}", self.label);
        if let Some((then, prev)) = &self.last {
            let secs = now.saturating_duration_since(*then).as_secs_f64();
            if secs > 0.0 {
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                let _ = write!(
                    self.line,
                    " | per_s over={secs:.1}s events={:.1} dispatches={:.1} started={:.1} \
                     closes={:.1} bytes_in={:.1} bytes_out={:.1}",
                    rate(snap.events, prev.events),
                    rate(snap.dispatches, prev.dispatches),
                    rate(snap.started, prev.started),
                    rate(snap.closes, prev.closes),
                    rate(snap.bytes_in, prev.bytes_in),
                    rate(snap.bytes_out, prev.bytes_out),
                );
                for (i, (name, v)) in stats.app.counters().enumerate() {
                    let before = prev.counters.get(i).copied().unwrap_or(0);
                    let _ = write!(self.line, " {name}={:.1}", rate(v, before));
                }
            }
        }
        self.last = Some((now, snap));
        &self.line
    }
}

impl Handler for StatsLogger {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        self.last = Some((cx.now(), Snapshot::of(cx.stats())));
        cx.timer_repeat(self.interval);
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        let stats = cx.snapshot();
        log::info!("{}", self.render(&stats, cx.now()));
        Ok(())
    }
    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let stats = cx.snapshot();
        log::info!("{}", self.render(&stats, cx.now()));
        cx.close_with(CloseReason::Shutdown);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_over_the_interval() {
        let mut s = Stats::default();
        let lines = s.app.counter("lines");
        let mut l = StatsLogger::new(Duration::from_secs(1), "loop 0: ");
        let t0 = Instant::now();
        let first = l.render(&s, t0).to_string();
        assert!(first.starts_with("loop 0: stats iterations=0 "), "{first}");
        assert!(!first.contains("per_s"), "no rates without a previous line");
        s.events += 50;
        s.bytes_out += 1000;
        lines.add(20);
        let line = l.render(&s, t0 + Duration::from_secs(2)).to_string();
        assert!(line.contains(" | per_s over=2.0s events=25.0 "), "{line}");
        assert!(line.contains(" bytes_out=500.0"), "{line}");
        assert!(line.ends_with(" lines=10.0"), "{line}");
        assert!(!line.contains('\n'));
    }
}
