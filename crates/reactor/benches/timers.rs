//! Timer structure micro-benchmarks: 100k live timers, inserted, pushed back (the
//! idle-timeout pattern: every read moves the deadline later) and expired.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use reactor::internals::Timers;
use reactor::{HandlerId, Reactor};

const N: usize = 100_000;

/// A real handler id (ids can only come from a loop).
fn owner() -> HandlerId {
    struct Nop;
    impl reactor::Handler for Nop {
        type Message = ();
        type Job = ();
    }
    Reactor::new().expect("reactor").spawn(Nop).id()
}

fn bench(c: &mut Criterion) {
    let owner = owner();
    let t0 = Instant::now();
    let mut g = c.benchmark_group("timers");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);

    g.bench_function("insert 100k", |b| {
        b.iter_batched(
            Timers::new,
            |mut t| {
                for i in 0..N {
                    t.insert(owner, t0 + Duration::from_millis(i as u64 % 1000), None);
                }
                t
            },
            BatchSize::LargeInput,
        )
    });

    // The idle-timeout pattern: 100k live timeouts, each pushed back (later) on
    // every "read". One iteration = one push-back; should be O(1).
    {
        let mut t = Timers::new();
        let ids: Vec<_> = (0..N)
            .map(|i| {
                t.insert(
                    owner,
                    t0 + Duration::from_secs(30) + Duration::from_micros(i as u64),
                    None,
                )
            })
            .collect();
        let mut i = 0usize;
        let mut now = t0;
        g.bench_function("reset later (idle push-back), 100k live", |b| {
            b.iter(|| {
                i = (i + 1) % N;
                now += Duration::from_nanos(100);
                black_box(t.reset(ids[i], now + Duration::from_secs(30)))
            })
        });
    }

    // Push-back followed by an expiry pass that finds every heap top stale and
    // re-pushes it: the amortised cost the lazy heap pays once per timeout period.
    g.bench_function("expire 100k pushed-back then due", |b| {
        b.iter_batched(
            || {
                let mut t = Timers::new();
                let ids: Vec<_> = (0..N)
                    .map(|i| t.insert(owner, t0 + Duration::from_millis(1 + i as u64 % 100), None))
                    .collect();
                for id in &ids {
                    t.reset(*id, t0 + Duration::from_secs(10));
                }
                t
            },
            |mut t| {
                let mut out = Vec::with_capacity(N);
                // First pass: every entry is stale and is re-queued at its real deadline.
                t.expire(t0 + Duration::from_secs(1), &mut out);
                // Second pass: everything fires.
                t.expire(t0 + Duration::from_secs(11), &mut out);
                assert_eq!(out.len(), N);
                t
            },
            BatchSize::LargeInput,
        )
    });

    g.bench_function("insert+cancel churn, 100k live", |b| {
        let mut t = Timers::new();
        for i in 0..N {
            t.insert(
                owner,
                t0 + Duration::from_secs(60) + Duration::from_micros(i as u64),
                None,
            );
        }
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            let id = t.insert(owner, t0 + Duration::from_millis(k % 5000), None);
            black_box(t.cancel(id))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
