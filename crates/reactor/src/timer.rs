//! Timers: one-shot and repeating deadlines owned by handlers.
//!
//! Built for idle timeouts: 100k live timers that are pushed back on every read must
//! stay cheap. A timer's deadline lives in a slab entry; the heap holds at most one
//! entry per timer and is not touched when a deadline moves *later* (the common case):
//! the stale heap entry is found when it reaches the top and re-pushed at the real
//! deadline. So pushing back an idle timeout is O(1), and each timer costs the heap
//! O(log n) about once per timeout period, not once per read.
//!
//! This module knows nothing about handlers beyond an owner id, and never reads the
//! clock: `now` is passed in, so it is tested without waiting.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::event::HandlerId;

/// Identifies a timer. Generation-checked: a cancelled timer's id never touches a
/// newer timer that reused its slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry {
    generation: u32,
    deadline: Instant,
    /// The deadline of this timer's entry in the heap; the heap entry is stale when
    /// it differs.
    heap_deadline: Instant,
    period: Option<Duration>,
    owner: HandlerId,
}

/// The set of live timers, ordered by deadline. Public only to this crate's
/// benchmarks (through the `internals` feature).
#[derive(Debug, Default)]
#[allow(unreachable_pub)]
pub struct Timers {
    entries: Slab<Entry>,
    /// (deadline, sequence, slab index, generation): the sequence keeps timers with
    /// equal deadlines in the order they were scheduled.
    heap: BinaryHeap<Reverse<(Instant, u64, u32, u32)>>,
    seq: u64,
    next_generation: u32,
}

#[allow(unreachable_pub)]
impl Timers {
    /// An empty timer set.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Number of live timers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no timer is live.
    #[allow(dead_code)] // for tests and benchmarks
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a timer that fires at `deadline` and then, if `period` is given, every
    /// `period` after that.
    pub fn insert(
        &mut self,
        owner: HandlerId,
        deadline: Instant,
        period: Option<Duration>,
    ) -> TimerId {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let index = self.entries.insert(Entry {
            generation,
            deadline,
            heap_deadline: deadline,
            period,
            owner,
        }) as u32;
        self.push(deadline, index, generation);
        TimerId { index, generation }
    }

    fn push(&mut self, deadline: Instant, index: u32, generation: u32) {
        self.seq += 1;
        self.heap
            .push(Reverse((deadline, self.seq, index, generation)));
    }

    fn entry_mut(&mut self, id: TimerId) -> Option<&mut Entry> {
        self.entries
            .get_mut(id.index as usize)
            .filter(|e| e.generation == id.generation)
    }

    /// The owner of a live timer.
    pub fn owner(&self, id: TimerId) -> Option<HandlerId> {
        self.entries
            .get(id.index as usize)
            .filter(|e| e.generation == id.generation)
            .map(|e| e.owner)
    }

    /// Moves a live timer's next deadline. Returns false if the timer is gone.
    pub fn reset(&mut self, id: TimerId, deadline: Instant) -> bool {
        let Some(e) = self.entry_mut(id) else {
            return false;
        };
        e.deadline = deadline;
        if deadline < e.heap_deadline {
            // Earlier than its heap entry: that entry would fire too late, so push a
            // new one and let the old one go stale.
            e.heap_deadline = deadline;
            self.push(deadline, id.index, id.generation);
            self.maybe_compact();
        }
        true
    }

    /// Removes a timer. Returns false if it was already gone.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        if self.entry_mut(id).is_none() {
            return false;
        }
        self.entries.remove(id.index as usize);
        self.maybe_compact();
        true
    }

    /// Rebuilds the heap when stale entries outnumber live ones, so cancel-and-rearm
    /// patterns cannot grow it without bound.
    fn maybe_compact(&mut self) {
        if self.heap.len() <= 2 * self.entries.len() + 64 {
            return;
        }
        let mut items: Vec<_> = self
            .entries
            .iter()
            .map(|(i, e)| (e.heap_deadline, i as u32, e.generation))
            .collect();
        items.sort();
        self.heap.clear();
        for (d, i, g) in items {
            self.push(d, i, g);
        }
    }

    /// The earliest time a timer may fire. It can be earlier than the real next
    /// deadline (a stale heap entry); the caller then wakes, finds nothing, and asks
    /// again. It is never later.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, ..))| *d)
    }

    /// Moves every timer due at `now` into `out` as (timer, owner), earliest first.
    /// Repeating timers are rescheduled; one-shot timers are removed.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(TimerId, HandlerId)>) {
        while let Some(Reverse((deadline, _, index, generation))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            let Some(e) = self
                .entries
                .get_mut(index as usize)
                .filter(|e| e.generation == generation && e.heap_deadline == deadline)
            else {
                continue; // cancelled, or superseded by an earlier push
            };
            if e.deadline > now {
                // Pushed back since it was queued: re-queue at the real deadline.
                let d = e.deadline;
                e.heap_deadline = d;
                self.push(d, index, generation);
                continue;
            }
            let id = TimerId { index, generation };
            out.push((id, e.owner));
            match e.period {
                Some(p) => {
                    // Catch up without firing a burst: the next tick is one period
                    // from the later of the missed deadline and now.
                    let mut next = e.deadline + p;
                    if next <= now {
                        // At least 1 ns ahead: a zero period must not be due again
                        // within this call, or this loop would never end.
                        next = now + p.max(Duration::from_nanos(1));
                    }
                    e.deadline = next;
                    e.heap_deadline = next;
                    self.push(next, index, generation);
                }
                None => {
                    self.entries.remove(index as usize);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> HandlerId {
        HandlerId {
            index: 0,
            generation: 1,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fire_in_deadline_order_then_insertion_order() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let c = t.insert(owner(), t0 + ms(30), None);
        let a = t.insert(owner(), t0 + ms(10), None);
        let b1 = t.insert(owner(), t0 + ms(20), None);
        let b2 = t.insert(owner(), t0 + ms(20), None);
        let mut out = Vec::new();
        t.expire(t0 + ms(5), &mut out);
        assert!(out.is_empty());
        t.expire(t0 + ms(100), &mut out);
        let ids: Vec<_> = out.iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![a, b1, b2, c]);
        assert!(t.is_empty());
    }

    #[test]
    fn cancel_and_stale_ids() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let a = t.insert(owner(), t0 + ms(10), None);
        assert!(t.cancel(a));
        assert!(!t.cancel(a));
        let b = t.insert(owner(), t0 + ms(10), None);
        // b may reuse a's slot; a's id must not affect it.
        assert!(!t.reset(a, t0 + ms(1000)));
        assert!(!t.cancel(a));
        let mut out = Vec::new();
        t.expire(t0 + ms(10), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, b);
    }

    #[test]
    fn push_back_and_pull_forward() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let a = t.insert(owner(), t0 + ms(10), None);
        assert!(t.reset(a, t0 + ms(50)));
        let mut out = Vec::new();
        t.expire(t0 + ms(20), &mut out);
        assert!(out.is_empty(), "pushed-back timer fired early");
        assert!(t.reset(a, t0 + ms(30)));
        t.expire(t0 + ms(29), &mut out);
        assert!(out.is_empty());
        t.expire(t0 + ms(30), &mut out);
        assert_eq!(out.len(), 1);
        // Fired once only, though several heap entries existed.
        out.clear();
        t.expire(t0 + ms(1000), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn repeating_timer_reschedules_without_burst() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let a = t.insert(owner(), t0 + ms(10), Some(ms(10)));
        let mut out = Vec::new();
        t.expire(t0 + ms(10), &mut out);
        t.expire(t0 + ms(20), &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        // A long stall fires once, not once per missed period.
        t.expire(t0 + ms(1000), &mut out);
        assert_eq!(out.len(), 1);
        assert!(t.cancel(a));
    }

    #[test]
    fn many_pushbacks_keep_heap_small() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let ids: Vec<_> = (0..1000)
            .map(|i| t.insert(owner(), t0 + ms(1000 + i), None))
            .collect();
        for round in 1..50u64 {
            for id in &ids {
                assert!(t.reset(*id, t0 + ms(1000 + round * 10)));
            }
        }
        assert!(t.heap.len() <= 2 * 1000 + 64);
        // Cancel-and-rearm churn is bounded too.
        for _ in 0..10_000 {
            let x = t.insert(owner(), t0 + ms(5000), None);
            t.cancel(x);
        }
        assert!(t.heap.len() <= 2 * t.len() + 64 + 1);
    }
}
