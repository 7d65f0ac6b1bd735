//! The Prometheus text exposition format (version 0.0.4) of a set of loop
//! snapshots: one family per metric, one sample per loop (label `loop`), the
//! dispatch-time histogram in seconds, the program's own counters and gauges,
//! and the process's CPU time, memory and file descriptors.
//!
//! It only formats: it must not take snapshots or touch a socket, so it can be
//! tested, fuzzed and used for a file or a log line as well as for HTTP.

use std::fmt::Write as _;
use std::time::Duration;

use reactor::{CloseReason, Stats};

/// The upper bounds (`le`) of the dispatch-time histogram, in seconds: from
/// 1 µs (a fast callback) to 10 s (a loop stuck on a blocking call).
pub const DISPATCH_BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of what [`encode`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric of the loop's own: name, help, and how to read it from a snapshot.
type Field = (&'static str, &'static str, fn(&Stats) -> u64);

/// The loop's counters, one family each.
const COUNTERS: [Field; 17] = [
    (
        "reactor_loop_iterations_total",
        "Times the loop went round (one poll each).",
        |s| s.iterations,
    ),
    (
        "reactor_events_total",
        "Readiness events delivered to handlers.",
        |s| s.events,
    ),
    (
        "reactor_stale_events_total",
        "Events dropped because their handler had closed.",
        |s| s.stale_events,
    ),
    (
        "reactor_dispatches_total",
        "Callbacks run (events, timers, jobs, messages, starts).",
        |s| s.dispatches,
    ),
    ("reactor_timers_fired_total", "Timers that fired.", |s| {
        s.timers_fired
    }),
    (
        "reactor_jobs_submitted_total",
        "Jobs sent to the worker pool.",
        |s| s.jobs_offloaded,
    ),
    (
        "reactor_jobs_completed_total",
        "Job results delivered to their handler.",
        |s| s.jobs_completed,
    ),
    (
        "reactor_jobs_dropped_total",
        "Job results dropped because their handler had closed.",
        |s| s.jobs_dropped,
    ),
    (
        "reactor_jobs_rejected_total",
        "Jobs refused because the pool's queue was full.",
        |s| s.jobs_rejected,
    ),
    (
        "reactor_jobs_panicked_total",
        "Jobs whose closure panicked.",
        |s| s.jobs_panicked,
    ),
    (
        "reactor_handlers_started_total",
        "Handlers ever started.",
        |s| s.handlers_started,
    ),
    (
        "reactor_truncated_closes_total",
        "Connections closed with output still queued for a live peer.",
        |s| s.truncated_closes,
    ),
    (
        "reactor_read_bytes_total",
        "Bytes read from sockets by Conn.",
        |s| s.bytes_in,
    ),
    (
        "reactor_written_bytes_total",
        "Bytes written to sockets by Conn.",
        |s| s.bytes_out,
    ),
    (
        "reactor_connections_accepted_total",
        "Connections accepted by listeners and given a handler.",
        |s| s.connections_accepted,
    ),
    (
        "reactor_connections_refused_total",
        "Connections accepted and refused by a listener's factory.",
        |s| s.connections_refused,
    ),
    (
        "reactor_slow_dispatches_total",
        "Callbacks slower than the slow-handler threshold, all handlers.",
        |s| s.slow_dispatches,
    ),
];

/// The loop's gauges (the sampled ones are measured by the snapshot).
const GAUGES: [Field; 5] = [
    ("reactor_handlers_open", "Handlers open now.", |s| {
        s.handlers_open
    }),
    (
        "reactor_connections_open",
        "Connections from listeners open now.",
        |s| s.connections_open,
    ),
    (
        "reactor_timers_live",
        "Timers set and not yet fired or cancelled.",
        |s| s.timers_live,
    ),
    (
        "reactor_jobs_queued",
        "Jobs waiting in the worker pool's queue.",
        |s| s.jobs_queued,
    ),
    (
        "reactor_spare_buffers",
        "Spare I/O buffers held for reuse.",
        |s| s.spare_buffers,
    ),
];

/// One loop's numbers for [`encode`]: its label and its snapshot, or `None` if it
/// did not answer in time (then only `reactor_loop_up 0` is written for it).
#[derive(Debug)]
pub struct LoopSample<'a> {
    /// The value of the `loop` label.
    pub label: &'a str,
    /// Its snapshot ([`reactor::Loop::snapshot`]).
    pub stats: Option<&'a Stats>,
}

/// Appends the exposition of `loops` (and of this process) to `out`.
pub fn encode(out: &mut String, loops: &[LoopSample<'_>]) {
    let up: Vec<(&str, &Stats)> = loops
        .iter()
        .filter_map(|l| l.stats.map(|s| (l.label, s)))
        .collect();
    family(
        out,
        "reactor_loop_up",
        "gauge",
        "1 if the loop answered this scrape in time, 0 if it is blocked or gone.",
    );
    for l in loops {
        sample(
            out,
            "reactor_loop_up",
            &[("loop", l.label)],
            l.stats.is_some() as u64,
        );
    }
    for (name, help, get) in COUNTERS {
        family(out, name, "counter", help);
        for (label, s) in &up {
            sample(out, name, &[("loop", label)], get(s));
        }
    }
    for (name, help, get) in GAUGES {
        family(out, name, "gauge", help);
        for (label, s) in &up {
            sample(out, name, &[("loop", label)], get(s));
        }
    }

    family(
        out,
        "reactor_closes_total",
        "counter",
        "Handlers closed, by reason.",
    );
    for (label, s) in &up {
        for r in CloseReason::ALL {
            sample(
                out,
                "reactor_closes_total",
                &[("loop", label), ("reason", r.as_str())],
                s.closes(r),
            );
        }
    }

    family(
        out,
        "reactor_slow_handler_dispatches_total",
        "counter",
        "Callbacks slower than the slow-handler threshold, by handler name (at most 32 names, then \"other\").",
    );
    for (label, s) in &up {
        for (name, n) in s.slow_handlers.iter() {
            sample(
                out,
                "reactor_slow_handler_dispatches_total",
                &[("loop", label), ("handler", name)],
                n,
            );
        }
    }

    family(
        out,
        "reactor_dispatch_seconds",
        "histogram",
        "Time each callback ran (bucket counts are low by at most the values within 12.5 % below each bound).",
    );
    for (label, s) in &up {
        let h = &s.dispatch_time;
        let mut le = String::new();
        for bound in DISPATCH_BUCKETS {
            le.clear();
            let _ = write!(le, "{bound}");
            let n = h.count_at_most(Duration::from_secs_f64(bound));
            sample(
                out,
                "reactor_dispatch_seconds_bucket",
                &[("loop", label), ("le", &le)],
                n,
            );
        }
        sample(
            out,
            "reactor_dispatch_seconds_bucket",
            &[("loop", label), ("le", "+Inf")],
            h.count(),
        );
        sample_f64(
            out,
            "reactor_dispatch_seconds_sum",
            &[("loop", label)],
            h.sum().as_secs_f64(),
        );
        sample(
            out,
            "reactor_dispatch_seconds_count",
            &[("loop", label)],
            h.count(),
        );
    }

    // The program's own metrics: every name any loop registered, each loop's
    // value where it has one.
    let mut counter_names: Vec<&str> = Vec::new();
    let mut gauge_names: Vec<&str> = Vec::new();
    for (_, s) in &up {
        for (n, _) in s.app.counters() {
            if !counter_names.contains(&n) {
                counter_names.push(n);
            }
        }
        for (n, _) in s.app.gauges() {
            if !gauge_names.contains(&n) {
                gauge_names.push(n);
            }
        }
    }
    let mut metric = String::new();
    for n in counter_names {
        metric.clear();
        metric_name(&mut metric, n);
        if !metric.ends_with("_total") {
            metric.push_str("_total");
        }
        family(
            out,
            &metric,
            "counter",
            &format!("The program's counter {n}."),
        );
        for (label, s) in &up {
            if let Some(v) = s.counter(n) {
                sample(out, &metric, &[("loop", label)], v);
            }
        }
    }
    for n in gauge_names {
        metric.clear();
        metric_name(&mut metric, n);
        family(out, &metric, "gauge", &format!("The program's gauge {n}."));
        for (label, s) in &up {
            if let Some(v) = s.gauge(n) {
                sample_i64(out, &metric, &[("loop", label)], v);
            }
        }
    }
    process(out);
}

/// The standard `process_*` metrics from `/proc/self` (Linux), where readable.
fn process(out: &mut String) {
    if let Some(cpu) = cpu_seconds() {
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process.",
        );
        sample_f64(out, "process_cpu_seconds_total", &[], cpu);
    }
    if let Some(rss) = resident_bytes() {
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
        );
        sample(out, "process_resident_memory_bytes", &[], rss);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        family(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors of the process.",
        );
        // The directory being read is one of them.
        sample(
            out,
            "process_open_fds",
            &[],
            (dir.count() as u64).saturating_sub(1),
        );
    }
}

/// utime + stime of `/proc/self/stat` (fields 14 and 15, man 5 proc), in
/// seconds. They count USER_HZ ticks, which the kernel ABI fixes at 100 on
/// every architecture, whatever the kernel's own HZ.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// `VmRSS` of `/proc/self/status`, which the kernel gives in KiB.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `# HELP` and `# TYPE` of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

fn labels(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.push_str(name);
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn sample(out: &mut String, name: &str, l: &[(&str, &str)], v: u64) {
    labels(out, name, l);
    let _ = writeln!(out, " {v}");
}

fn sample_i64(out: &mut String, name: &str, l: &[(&str, &str)], v: i64) {
    labels(out, name, l);
    let _ = writeln!(out, " {v}");
}

fn sample_f64(out: &mut String, name: &str, l: &[(&str, &str)], v: f64) {
    labels(out, name, l);
    let _ = writeln!(out, " {v}");
}

/// A program's metric name made valid: `[a-zA-Z_:][a-zA-Z0-9_:]*`, other
/// characters as `_`.
fn metric_name(out: &mut String, name: &str) {
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
    if out.is_empty() {
        out.push('_');
    }
}
