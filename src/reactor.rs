//! The event loop: one thread, one `mio::Poll`, a slab of handlers.
//!
//! How an event reaches a handler: every source a handler registers gets a token that
//! packs the handler's slab index, the slot's generation and the handler's own source
//! number. The loop polls, decodes each token, drops it if the slot's generation has
//! moved on (the handler closed and the slot was reused), takes the handler out of its
//! slot, calls it with a [`Context`], times the call, and puts it back. Work that
//! cannot finish inside one callback (a read budget ran out, a handler started, a
//! child closed) goes on a pending list that runs before the next poll, which then
//! does not sleep.
//!
//! This module must not do protocol work or blocking I/O; it only dispatches.

use std::any::Any;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::event::Source;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::buf::BufPool;
use crate::clock;
use crate::handler::{Event, Handler, HandlerId, HandlerResult, SourceId};
use crate::pool::{JobId, JobResult, Pool, PoolFull, panic_message};
use crate::stats::Stats;
use crate::timer::{TimerId, Timers};

const _: () = assert!(usize::BITS == 64, "token layout needs a 64-bit usize");

const WAKER_TOKEN: Token = Token(usize::MAX);
const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
const GEN_BITS: u32 = 24;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// Token = generation (24 bits) | slab index (32 bits) | source (8 bits).
fn encode_token(id: HandlerId, source: SourceId) -> Token {
    Token(((id.generation as usize) << 40) | ((id.index as usize) << 8) | source as usize)
}

fn decode_token(t: Token) -> (HandlerId, SourceId) {
    let v = t.0;
    (
        HandlerId {
            index: ((v >> 8) & 0xffff_ffff) as u32,
            generation: (v >> 40) as u32,
        },
        (v & 0xff) as SourceId,
    )
}

/// Settings of one loop. `Config::default()` suits most servers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Events taken from the poller per iteration.
    pub events_capacity: usize,
    /// A callback running longer than this is logged as slow and counted.
    pub slow_threshold: Duration,
    /// Worker threads for offloaded jobs (started on first use).
    pub workers: usize,
    /// Jobs that may wait in the pool's queue before `offload` fails.
    pub job_queue: usize,
    /// After a graceful shutdown starts, how long open handlers may keep working
    /// before they are closed.
    pub drain_timeout: Duration,
    /// Size of the I/O buffers [`crate::Conn`] borrows from the loop's pool; also the
    /// most one `read` call asks for.
    pub buffer_size: usize,
    /// Spare I/O buffers kept for reuse.
    pub max_spare_buffers: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            events_capacity: 1024,
            slow_threshold: Duration::from_millis(100),
            workers: 4,
            job_queue: 1024,
            drain_timeout: Duration::from_secs(5),
            buffer_size: 64 * 1024,
            max_spare_buffers: 256,
        }
    }
}

/// Wakes the loop from another thread, coalescing wake-ups that arrive while one is
/// already pending (one `eventfd` write instead of one per job).
pub(crate) struct Wake {
    waker: Waker,
    pending: AtomicBool,
}

impl Wake {
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst)
            && let Err(e) = self.waker.wake()
        {
            log::error!("failed to wake the reactor: {e}");
        }
    }
}

pub(crate) enum Command {
    Stop,
    Shutdown,
    Spawn(Box<dyn Handler + Send>),
    Message(HandlerId, Box<dyn Any + Send>),
    JobDone {
        owner: HandlerId,
        job: JobId,
        result: JobResult,
    },
}

/// A `Send + Clone` handle that controls a loop from any thread.
#[derive(Clone)]
pub struct ReactorHandle {
    tx: Sender<Command>,
    wake: Arc<Wake>,
}

impl ReactorHandle {
    fn send_cmd(&self, c: Command) -> bool {
        let ok = self.tx.send(c).is_ok();
        if ok {
            self.wake.wake();
        }
        ok
    }

    /// Stops the loop now: `run` returns after the current iteration, closing every
    /// handler. Returns false if the loop is gone.
    pub fn stop(&self) -> bool {
        self.send_cmd(Command::Stop)
    }

    /// Starts a graceful shutdown, as SIGTERM does. Returns false if the loop is gone.
    pub fn shutdown(&self) -> bool {
        self.send_cmd(Command::Shutdown)
    }

    /// Adds a handler to the loop from another thread.
    pub fn spawn<H: Handler + Send>(&self, handler: H) -> bool {
        self.send_cmd(Command::Spawn(Box::new(handler)))
    }

    /// Delivers `msg` to the handler's [`Handler::on_message`]; dropped if that
    /// handler has closed.
    pub fn send(&self, to: HandlerId, msg: Box<dyn Any + Send>) -> bool {
        self.send_cmd(Command::Message(to, msg))
    }
}

enum Pending {
    Start(HandlerId),
    Ready(HandlerId, Event),
    ChildClosed { parent: HandlerId, child: HandlerId },
    Message(HandlerId, Box<dyn Any + Send>),
    Close(HandlerId),
    Shutdown(HandlerId),
}

struct Slot {
    generation: u32,
    /// `None` while the handler is being called (it is on the stack then).
    handler: Option<Box<dyn Handler>>,
    parent: Option<HandlerId>,
    timers: Vec<TimerId>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RunState {
    Running,
    Draining { deadline: Instant },
    Stopping,
}

/// The loop's state, lent to handlers through [`Context`].
pub(crate) struct Core {
    registry: Registry,
    slots: Slab<Slot>,
    timers: Timers,
    pool: Option<Pool>,
    next_job: u64,
    pub(crate) stats: Stats,
    pending: Vec<Pending>,
    next_generation: u32,
    now: Instant,
    /// The last [`Stopwatch`](clock::Stopwatch) reading: where the next dispatch's
    /// timing starts. Reusing the end of one dispatch as the start of the next means
    /// one clock read per dispatch; it is refreshed after anything between
    /// dispatches that may take time (the poll, timer expiry, closing a handler), so
    /// that time is never blamed on the next handler.
    clock: u64,
    stopwatch: clock::Stopwatch,
    /// An `Instant` and the `mono_ns` reading taken together at start: after a poll
    /// one `mono_ns` read gives both the loop's `now` (with an add) and the
    /// stopwatch's calibration point.
    epoch: (Instant, u64),
    /// `Config::slow_threshold` in nanoseconds.
    slow_ns: u64,
    state: RunState,
    config: Config,
    cmd_tx: Sender<Command>,
    cmd_rx: Receiver<Command>,
    wake: Arc<Wake>,
    pub(crate) bufs: BufPool,
}

/// What a handler callback can do to the loop: register sources, set timers, offload
/// work, spawn and message other handlers, close itself, stop the loop.
pub struct Context<'a> {
    core: &'a mut Core,
    id: HandlerId,
    closing: bool,
    event: Option<Event>,
}

impl<'a> Context<'a> {
    /// The id of the handler being called.
    pub fn id(&self) -> HandlerId {
        self.id
    }

    /// The loop's clock, read once per iteration: cheap, and the same for every
    /// callback of one iteration.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// The readiness event being handled, if this callback is for one.
    pub fn event(&self) -> Option<Event> {
        self.event
    }

    /// Registers a source (socket, listener, UDP socket, ...) under this handler's
    /// `source` number. Events are edge-triggered.
    pub fn register<S: Source + ?Sized>(
        &mut self,
        src: &mut S,
        source: SourceId,
        interest: Interest,
    ) -> io::Result<()> {
        self.core
            .registry
            .register(src, encode_token(self.id, source), interest)
    }

    /// Changes the interest of a registered source.
    pub fn reregister<S: Source + ?Sized>(
        &mut self,
        src: &mut S,
        source: SourceId,
        interest: Interest,
    ) -> io::Result<()> {
        self.core
            .registry
            .reregister(src, encode_token(self.id, source), interest)
    }

    /// Removes a source from the poller (dropping a socket does this too).
    pub fn deregister<S: Source + ?Sized>(&mut self, src: &mut S) -> io::Result<()> {
        self.core.registry.deregister(src)
    }

    /// Runs this handler's `on_event` again with `ev` before the next poll sleeps.
    /// Use it when a per-event budget stopped reading or writing before `WouldBlock`:
    /// no new edge will come for data that is already there.
    pub fn requeue(&mut self, ev: Event) {
        self.core.pending.push(Pending::Ready(self.id, ev));
    }

    /// Closes this handler once the current callback returns.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// True once [`close`](Context::close) was called in this callback.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Closes another handler (before the next poll). Its id may be stale; then
    /// nothing happens.
    pub fn close_handler(&mut self, id: HandlerId) {
        self.core.pending.push(Pending::Close(id));
    }

    /// Adds a handler as a child of this one: this handler's
    /// [`Handler::on_child_closed`] runs when it closes. Its `on_start` runs before
    /// the next poll.
    pub fn spawn<H: Handler>(&mut self, handler: H) -> HandlerId {
        self.core.insert(Box::new(handler), Some(self.id))
    }

    /// Like [`spawn`](Context::spawn) for an already boxed handler.
    pub fn spawn_boxed(&mut self, handler: Box<dyn Handler>) -> HandlerId {
        self.core.insert(handler, Some(self.id))
    }

    /// Delivers `msg` to another handler's `on_message` before the next poll.
    pub fn send(&mut self, to: HandlerId, msg: Box<dyn Any + Send>) {
        self.core.pending.push(Pending::Message(to, msg));
    }

    /// A timer that fires once, `after` from now; owned by this handler and
    /// cancelled when it closes.
    pub fn timer_once(&mut self, after: Duration) -> TimerId {
        self.core.add_timer(self.id, after, None)
    }

    /// A timer that fires every `every`, first after one period.
    pub fn timer_repeat(&mut self, every: Duration) -> TimerId {
        self.core.add_timer(self.id, every, Some(every))
    }

    /// Moves a live timer of this handler to fire `after` from now (pushing back an
    /// idle timeout). O(1) when the deadline moves later. Returns false if the timer
    /// has already fired (one-shot) or was cancelled.
    pub fn reset_timer(&mut self, timer: TimerId, after: Duration) -> bool {
        if self.core.timers.owner(timer) != Some(self.id) {
            return false;
        }
        self.core.timers.reset(timer, self.core.now + after)
    }

    /// Cancels a timer of this handler. Returns false if it was already gone.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        if self.core.timers.owner(timer) != Some(self.id) {
            return false;
        }
        self.core.forget_timer(self.id, timer);
        self.core.timers.cancel(timer)
    }

    /// Runs blocking `f` on the worker pool; its return value comes back to this
    /// handler's [`Handler::on_job`] with the returned id. Fails at once when the
    /// pool's queue is full.
    pub fn offload<F, T>(&mut self, f: F) -> Result<JobId, PoolFull>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let core = &mut *self.core;
        if core.pool.is_none() {
            match Pool::new(core.config.workers, core.config.job_queue) {
                Ok(p) => core.pool = Some(p),
                Err(e) => {
                    log::error!("cannot start worker threads: {e}");
                    return Err(PoolFull { capacity: 0 });
                }
            }
        }
        core.next_job += 1;
        let job = JobId(core.next_job);
        let pool = core.pool.as_ref().expect("pool started above");
        match pool.submit(self.id, job, f, core.cmd_tx.clone(), core.wake.clone()) {
            Ok(()) => {
                core.stats.jobs_offloaded += 1;
                Ok(job)
            }
            Err(e) => {
                core.stats.jobs_rejected += 1;
                Err(e)
            }
        }
    }

    /// Starts a graceful shutdown of the loop (see [`Reactor::shutdown`]).
    pub fn shutdown(&mut self) {
        self.core.begin_shutdown();
    }

    /// True while the loop is draining or stopping.
    pub fn is_shutting_down(&self) -> bool {
        self.core.state != RunState::Running
    }

    /// Stops the loop after this iteration; every handler is closed.
    pub fn stop(&mut self) {
        self.core.state = RunState::Stopping;
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// A handle for other threads.
    pub fn handle(&self) -> ReactorHandle {
        self.core.handle()
    }

    /// The loop's settings.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    pub(crate) fn core(&mut self) -> &mut Core {
        self.core
    }
}

impl Core {
    /// Reads the clock: both the dispatch clock and the loop's `now`.
    fn tick(&mut self) {
        let ns = clock::mono_ns();
        self.clock = self.stopwatch.ticks_at(ns);
        self.stopwatch.observe(ns);
        self.now = self.instant_at(ns);
    }

    fn instant_at(&self, ns: u64) -> Instant {
        self.epoch.0 + Duration::from_nanos(ns.saturating_sub(self.epoch.1))
    }

    fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            tx: self.cmd_tx.clone(),
            wake: self.wake.clone(),
        }
    }

    fn insert(&mut self, handler: Box<dyn Handler>, parent: Option<HandlerId>) -> HandlerId {
        self.next_generation = (self.next_generation + 1) & GEN_MASK;
        let generation = self.next_generation;
        let index = self.slots.insert(Slot {
            generation,
            handler: Some(handler),
            parent,
            timers: Vec::new(),
        });
        let id = HandlerId {
            index: index as u32,
            generation,
        };
        self.stats.handlers_open += 1;
        self.stats.handlers_started += 1;
        self.pending.push(Pending::Start(id));
        id
    }

    fn add_timer(
        &mut self,
        owner: HandlerId,
        after: Duration,
        period: Option<Duration>,
    ) -> TimerId {
        let t = self.timers.insert(owner, self.now + after, period);
        if let Some(slot) = self.slots.get_mut(owner.index as usize) {
            slot.timers.push(t);
        }
        t
    }

    fn forget_timer(&mut self, owner: HandlerId, t: TimerId) {
        if let Some(slot) = self.slots.get_mut(owner.index as usize)
            && let Some(i) = slot.timers.iter().position(|x| *x == t)
        {
            slot.timers.swap_remove(i);
        }
    }

    fn live(&self, id: HandlerId) -> bool {
        self.slots
            .get(id.index as usize)
            .is_some_and(|s| s.generation == id.generation && s.handler.is_some())
    }

    fn begin_shutdown(&mut self) {
        if self.state == RunState::Running {
            let deadline = self.now + self.config.drain_timeout;
            log::info!(
                "shutting down: {} handlers open, draining for up to {:?}",
                self.slots.len(),
                self.config.drain_timeout
            );
            self.state = RunState::Draining { deadline };
            // Deferred to the pending list so that a handler that started the
            // shutdown from its own callback (and is off its slot now) is told too.
            for (i, s) in self.slots.iter() {
                self.pending.push(Pending::Shutdown(HandlerId {
                    index: i as u32,
                    generation: s.generation,
                }));
            }
        }
    }

    /// Calls `f` on the handler `id` if it is still live; times it; closes it if it
    /// asked to, returned an error, or panicked.
    fn dispatch(
        &mut self,
        id: HandlerId,
        event: Option<Event>,
        f: impl FnOnce(&mut dyn Handler, &mut Context<'_>) -> HandlerResult,
    ) -> bool {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return false;
        };
        if slot.generation != id.generation {
            return false;
        }
        let Some(mut handler) = slot.handler.take() else {
            return false;
        };
        let start = self.clock;
        let mut cx = Context {
            core: self,
            id,
            closing: false,
            event,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut *handler, &mut cx)));
        let mut closing = cx.closing;
        let end = self.stopwatch.ticks();
        self.clock = end;
        let ns = self.stopwatch.to_ns(end.saturating_sub(start));
        self.stats.dispatches += 1;
        self.stats.dispatch_time.record(ns);
        if ns >= self.slow_ns {
            self.stats.slow_dispatches += 1;
            log::warn!(
                "slow handler: {} {} blocked the loop for {:.1} ms (threshold {} ms)",
                handler.name(),
                id,
                ns as f64 / 1e6,
                self.config.slow_threshold.as_millis()
            );
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.stats.handlers_failed += 1;
                log::warn!(
                    "handler {} {} failed: {}; closing it",
                    handler.name(),
                    id,
                    e
                );
                closing = true;
            }
            Err(p) => {
                self.stats.handlers_failed += 1;
                log::error!(
                    "handler {} {} panicked: {}; closing it",
                    handler.name(),
                    id,
                    panic_message(&*p)
                );
                closing = true;
            }
        }
        if closing {
            self.finish_close(id, handler);
        } else if let Some(slot) = self.slots.get_mut(id.index as usize) {
            slot.handler = Some(handler);
        }
        true
    }

    fn finish_close(&mut self, id: HandlerId, mut handler: Box<dyn Handler>) {
        let mut cx = Context {
            core: self,
            id,
            closing: true,
            event: None,
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| handler.on_close(&mut cx))) {
            log::error!(
                "handler {} {} panicked in on_close: {}",
                handler.name(),
                id,
                panic_message(&*p)
            );
        }
        let slot = self.slots.remove(id.index as usize);
        for t in slot.timers {
            self.timers.cancel(t);
        }
        self.stats.handlers_open -= 1;
        if let Some(parent) = slot.parent
            && self.state != RunState::Stopping
        {
            self.pending
                .push(Pending::ChildClosed { parent, child: id });
        }
        let name = handler.name().to_string();
        if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(handler))) {
            log::error!(
                "handler {name} {id} panicked while dropped: {}",
                panic_message(&*p)
            );
        }
        // on_close and drop are not timed: do not count them in the next dispatch.
        self.clock = self.stopwatch.ticks();
    }

    fn close_now(&mut self, id: HandlerId) {
        if !self.live(id) {
            return;
        }
        let handler = self.slots[id.index as usize]
            .handler
            .take()
            .expect("live handler is present");
        self.finish_close(id, handler);
    }

    fn run_pending(&mut self, scratch: &mut Vec<Pending>) {
        std::mem::swap(&mut self.pending, scratch);
        for p in scratch.drain(..) {
            match p {
                Pending::Start(id) => {
                    self.dispatch(id, None, |h, cx| h.on_start(cx));
                }
                Pending::Ready(id, ev) => {
                    self.dispatch(id, Some(ev), |h, cx| h.on_event(cx, ev));
                }
                Pending::ChildClosed { parent, child } => {
                    self.dispatch(parent, None, |h, cx| h.on_child_closed(cx, child));
                }
                Pending::Message(id, msg) => {
                    if !self.dispatch(id, None, |h, cx| h.on_message(cx, msg)) {
                        log::debug!("message for closed handler {id} dropped");
                    }
                }
                Pending::Close(id) => self.close_now(id),
                Pending::Shutdown(id) => {
                    self.dispatch(id, None, |h, cx| h.on_shutdown(cx));
                }
            }
        }
    }

    fn fire_timers(&mut self, scratch: &mut Vec<(TimerId, HandlerId)>) {
        self.timers.expire(self.now, scratch);
        if !scratch.is_empty() {
            self.clock = self.stopwatch.ticks();
        }
        for (t, owner) in scratch.drain(..) {
            self.stats.timers_fired += 1;
            // One-shot timers are gone from the timer set now; forget them in their
            // owner too. (Repeating ones stay.)
            if self.timers.owner(t).is_none() {
                self.forget_timer(owner, t);
            }
            self.dispatch(owner, None, |h, cx| h.on_timer(cx, t));
        }
    }

    fn run_commands(&mut self) {
        self.wake.pending.store(false, Ordering::SeqCst);
        while let Ok(c) = self.cmd_rx.try_recv() {
            match c {
                Command::Stop => self.state = RunState::Stopping,
                Command::Shutdown => self.begin_shutdown(),
                Command::Spawn(h) => {
                    self.insert(h, None);
                }
                Command::Message(id, msg) => self.pending.push(Pending::Message(id, msg)),
                Command::JobDone { owner, job, result } => {
                    if self.dispatch(owner, None, |h, cx| h.on_job(cx, job, result)) {
                        self.stats.jobs_completed += 1;
                    } else {
                        self.stats.jobs_dropped += 1;
                        log::debug!("result of job {job:?} dropped: handler {owner} has closed");
                    }
                }
            }
        }
    }

    fn close_all(&mut self) {
        let ids: Vec<HandlerId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.handler.is_some())
            .map(|(i, s)| HandlerId {
                index: i as u32,
                generation: s.generation,
            })
            .collect();
        for id in ids {
            self.close_now(id);
        }
        self.pending.clear();
    }
}

/// A single-threaded event loop.
///
/// ```no_run
/// let mut r = reactor::Reactor::new()?;
/// r.shutdown_on_signals()?;            // SIGINT/SIGTERM drain and return
/// // r.spawn(my_listener);
/// r.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Reactor {
    poll: Poll,
    events: Events,
    core: Core,
    signals: Option<signal_hook_mio::v1_0::Signals>,
}

impl Reactor {
    /// A loop with the default [`Config`].
    pub fn new() -> io::Result<Reactor> {
        Reactor::with_config(Config::default())
    }

    /// A loop with the given settings.
    pub fn with_config(config: Config) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let bufs = BufPool::new(config.buffer_size, config.max_spare_buffers);
        let epoch = (Instant::now(), clock::mono_ns());
        let stopwatch = clock::Stopwatch::new();
        let clock = stopwatch.ticks();
        Ok(Reactor {
            events: Events::with_capacity(config.events_capacity.max(16)),
            poll,
            core: Core {
                registry,
                slots: Slab::new(),
                timers: Timers::new(),
                pool: None,
                next_job: 0,
                stats: Stats::default(),
                pending: Vec::new(),
                next_generation: 0,
                now: epoch.0,
                clock,
                stopwatch,
                epoch,
                slow_ns: config.slow_threshold.as_nanos().min(u64::MAX as u128) as u64,
                state: RunState::Running,
                config,
                cmd_tx,
                cmd_rx,
                wake: Arc::new(Wake {
                    waker,
                    pending: AtomicBool::new(false),
                }),
                bufs,
            },
            signals: None,
        })
    }

    /// Adds a top-level handler; its `on_start` runs when the loop runs.
    pub fn spawn<H: Handler>(&mut self, handler: H) -> HandlerId {
        self.core.insert(Box::new(handler), None)
    }

    /// A handle that stops, shuts down, spawns into or messages this loop from any
    /// thread.
    pub fn handle(&self) -> ReactorHandle {
        self.core.handle()
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Number of open handlers.
    pub fn handlers(&self) -> usize {
        self.core.slots.len()
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown (a second signal stops at
    /// once). Several loops in one process may each call this.
    pub fn shutdown_on_signals(&mut self) -> io::Result<()> {
        let mut s = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        self.poll
            .registry()
            .register(&mut s, SIGNAL_TOKEN, Interest::READABLE)?;
        self.signals = Some(s);
        Ok(())
    }

    /// Starts a graceful shutdown: every handler's [`Handler::on_shutdown`] runs
    /// (listeners stop accepting), then the loop runs until every handler has closed
    /// or [`Config::drain_timeout`] passes, when the rest are closed.
    pub fn shutdown(&mut self) {
        self.core.tick();
        self.core.begin_shutdown();
    }

    /// Runs until stopped, or until a graceful shutdown has drained. Every handler is
    /// closed when it returns.
    pub fn run(&mut self) -> io::Result<()> {
        let mut pending_scratch = Vec::new();
        let mut timer_scratch = Vec::new();
        let result = loop {
            let core = &mut self.core;
            core.now = Instant::now();
            match core.state {
                RunState::Stopping => break Ok(()),
                RunState::Draining { deadline } => {
                    if core.slots.is_empty() {
                        log::info!("shutdown: all handlers finished");
                        break Ok(());
                    }
                    if core.now >= deadline {
                        log::warn!(
                            "shutdown: drain deadline passed, closing {} handlers",
                            core.slots.len()
                        );
                        break Ok(());
                    }
                }
                RunState::Running => {}
            }
            let mut timeout = if core.pending.is_empty() {
                core.timers
                    .next_deadline()
                    .map(|d| d.saturating_duration_since(core.now))
            } else {
                Some(Duration::ZERO)
            };
            if let RunState::Draining { deadline } = core.state {
                let left = deadline.saturating_duration_since(core.now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(e);
            }
            let core = &mut self.core;
            core.tick();
            core.stats.iterations += 1;
            for ev in self.events.iter() {
                match ev.token() {
                    WAKER_TOKEN => core.run_commands(),
                    SIGNAL_TOKEN => {
                        if let Some(s) = self.signals.as_mut() {
                            for sig in s.pending() {
                                log::info!("received signal {sig}");
                                if core.state == RunState::Running {
                                    core.begin_shutdown();
                                } else {
                                    core.state = RunState::Stopping;
                                }
                            }
                        }
                    }
                    token => {
                        let (id, source) = decode_token(token);
                        let event = Event::from_mio(source, ev);
                        if core.dispatch(id, Some(event), |h, cx| h.on_event(cx, event)) {
                            core.stats.events += 1;
                        } else {
                            core.stats.stale_events += 1;
                        }
                    }
                }
            }
            core.fire_timers(&mut timer_scratch);
            core.run_pending(&mut pending_scratch);
        };
        self.core.close_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let id = HandlerId {
            index: 123_456,
            generation: GEN_MASK,
        };
        let (back, src) = decode_token(encode_token(id, 7));
        assert_eq!(back, id);
        assert_eq!(src, 7);
        assert_ne!(encode_token(id, 255), WAKER_TOKEN);
        assert_ne!(encode_token(id, 255), SIGNAL_TOKEN);
    }
}
