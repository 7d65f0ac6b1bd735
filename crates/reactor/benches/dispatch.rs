//! Dispatch micro-benchmarks: events through a real loop, without sockets, so what is
//! measured is the loop's own cost per event (token decode, slot lookup, take/put
//! back, timing, the handler call), not the kernel's.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reactor::{Context, Event, Handler, HandlerResult, Reactor, TimerId};

/// Re-queues itself `left` times (the path a budget-limited read takes), then closes;
/// the last one to finish stops the loop.
struct Spinner {
    left: u32,
    alive: Rc<Cell<usize>>,
}

impl Handler for Spinner {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.requeue(Event::readable(0));
        Ok(())
    }
    fn on_event(&mut self, cx: &mut Context<'_, Self>, _ev: Event) -> HandlerResult {
        self.left -= 1;
        if self.left == 0 {
            cx.close();
            self.alive.set(self.alive.get() - 1);
            if self.alive.get() == 0 {
                cx.stop();
            }
        } else {
            cx.requeue(Event::readable(0));
        }
        Ok(())
    }
}

/// A repeating timer that fires `left` times.
struct Ticker {
    left: u32,
    alive: Rc<Cell<usize>>,
}

impl Handler for Ticker {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_repeat(Duration::ZERO);
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        self.left -= 1;
        if self.left == 0 {
            cx.close();
            self.alive.set(self.alive.get() - 1);
            if self.alive.get() == 0 {
                cx.stop();
            }
        }
        Ok(())
    }
}

const HANDLERS: usize = 1000;
const ROUNDS: u32 = 100;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    g.throughput(Throughput::Elements(HANDLERS as u64 * ROUNDS as u64));

    g.bench_function("requeued events, 1000 handlers x 100", |b| {
        b.iter(|| {
            let mut r = Reactor::new().unwrap();
            let alive = Rc::new(Cell::new(HANDLERS));
            for _ in 0..HANDLERS {
                r.spawn(Spinner {
                    left: ROUNDS,
                    alive: alive.clone(),
                });
            }
            r.run().unwrap();
            assert_eq!(alive.get(), 0);
            r.stats().dispatches
        })
    });

    g.bench_function("timer events, 1000 handlers x 100", |b| {
        b.iter(|| {
            let mut r = Reactor::new().unwrap();
            let alive = Rc::new(Cell::new(HANDLERS));
            for _ in 0..HANDLERS {
                r.spawn(Ticker {
                    left: ROUNDS,
                    alive: alive.clone(),
                });
            }
            r.run().unwrap();
            assert_eq!(alive.get(), 0);
            r.stats().timers_fired
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
