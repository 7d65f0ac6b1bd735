//! The event loop: one thread, one `mio::Poll`, a slab of handlers.
//!
//! How an event reaches a handler: every source a handler registers gets a token that
//! packs the handler's slab index, the slot's generation and the handler's own source
//! number. The loop polls, decodes each token, drops it if the slot's generation has
//! moved on (the handler closed and the slot was reused), takes the handler out of its
//! slot, calls it with a [`Loop`], times the call, and puts it back. Work that
//! cannot finish inside one callback (a read budget ran out, a handler started, a
//! child closed) goes on a pending list that runs before the next poll, which then
//! does not sleep.
//!
//! The loop calls handlers through [`Erased`], an object-safe trait that the typed
//! [`Handler`](crate::Handler) trait (a layer above, in `handler.rs`) implements
//! for every handler; so this file never names the typed trait. It must not do
//! protocol work or blocking I/O; it only dispatches.

use std::any::Any;
use std::borrow::Cow;
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
use crate::event::{
    CloseReason, Error, Event, HandlerId, HandlerResult, ProtocolError, SourceId, is_peer_gone,
};
use crate::framing::FrameError;
use crate::log_limit::LogLimiter;
use crate::pool::{Done, JobId, JobResult, Pool, PoolFull, panic_message};
use crate::stats::{Counter, Gauge, Stats};
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

/// Settings of one loop. `Config::default()` suits most servers; the default of
/// each field is in its doc.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Events taken from the poller per iteration. Default 1024.
    pub events_capacity: usize,
    /// A callback running longer than this is logged as slow (naming the handler)
    /// and counted. Default 100 ms, as asyncio's debug mode.
    pub slow_threshold: Duration,
    /// Worker threads for offloaded jobs (started on first use). Default 4.
    pub workers: usize,
    /// Jobs that may wait in the pool's queue before `offload` fails with
    /// [`PoolFull`]. Default 1024.
    pub job_queue: usize,
    /// After a graceful shutdown starts, how long open handlers may keep working
    /// before they are closed. Default 5 s.
    pub drain_timeout: Duration,
    /// Size of the I/O buffers [`crate::Conn`] borrows from the loop's pool; also the
    /// most one `read` call asks for. Default 64 KiB.
    pub buffer_size: usize,
    /// Spare I/O buffers kept for reuse. Default 256 (16 MiB at the default size).
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

impl Config {
    /// Sets [`Config::events_capacity`].
    pub fn events_capacity(mut self, n: usize) -> Config {
        self.events_capacity = n;
        self
    }
    /// Sets [`Config::slow_threshold`].
    pub fn slow_threshold(mut self, d: Duration) -> Config {
        self.slow_threshold = d;
        self
    }
    /// Sets [`Config::workers`].
    pub fn workers(mut self, n: usize) -> Config {
        self.workers = n;
        self
    }
    /// Sets [`Config::job_queue`].
    pub fn job_queue(mut self, n: usize) -> Config {
        self.job_queue = n;
        self
    }
    /// Sets [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, d: Duration) -> Config {
        self.drain_timeout = d;
        self
    }
    /// Sets [`Config::buffer_size`].
    pub fn buffer_size(mut self, n: usize) -> Config {
        self.buffer_size = n;
        self
    }
    /// Sets [`Config::max_spare_buffers`].
    pub fn max_spare_buffers(mut self, n: usize) -> Config {
        self.max_spare_buffers = n;
        self
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

/// How the loop calls a handler. Object-safe and untyped: the typed
/// [`Handler`](crate::Handler) trait implements it for every handler (in
/// `handler.rs`), turning the [`Loop`] into a typed
/// [`Context`](crate::Context) and the boxed message or job result into the
/// handler's own types.
pub(crate) trait Erased: 'static {
    fn name(&self) -> &str;
    fn start(&mut self, lp: &mut Loop<'_>) -> HandlerResult;
    fn event(&mut self, lp: &mut Loop<'_>, ev: Event) -> HandlerResult;
    fn timer(&mut self, lp: &mut Loop<'_>, t: TimerId) -> HandlerResult;
    fn job(
        &mut self,
        lp: &mut Loop<'_>,
        job: JobId,
        result: JobResult<Box<dyn Any + Send>>,
    ) -> HandlerResult;
    fn message(&mut self, lp: &mut Loop<'_>, msg: Box<dyn Any>) -> HandlerResult;
    fn notify(&mut self, lp: &mut Loop<'_>) -> HandlerResult;
    fn child_closed(&mut self, lp: &mut Loop<'_>, child: HandlerId) -> HandlerResult;
    fn shutdown(&mut self, lp: &mut Loop<'_>) -> HandlerResult;
    fn close(&mut self, lp: &mut Loop<'_>, reason: CloseReason);
}

pub(crate) enum Command {
    Stop,
    Shutdown,
    Spawn(Box<dyn Erased + Send>),
    Message(HandlerId, Box<dyn Any + Send>),
}

/// A `Send + Clone` handle that controls a loop from any thread: stop it, shut it
/// down, spawn a handler into it ([`ReactorHandle::spawn`]) or send a handler a
/// message ([`ReactorHandle::send`]).
#[derive(Clone)]
pub struct ReactorHandle {
    tx: Sender<Command>,
    wake: Arc<Wake>,
}

impl ReactorHandle {
    pub(crate) fn send_cmd(&self, c: Command) -> bool {
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
}

enum Pending {
    Start(HandlerId),
    Ready(HandlerId, Event),
    ChildClosed { parent: HandlerId, child: HandlerId },
    Message(HandlerId, Box<dyn Any>),
    Notify(HandlerId),
    Close(HandlerId, CloseReason),
    Shutdown(HandlerId),
}

struct Slot {
    generation: u32,
    /// `None` while the handler is being called (it is on the stack then).
    handler: Option<Box<dyn Erased>>,
    parent: Option<HandlerId>,
    timers: Vec<TimerId>,
    /// Re-queued events pending for this handler ([`Event::requeue_bit`]).
    requeued: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RunState {
    Running,
    Draining { deadline: Instant },
    Stopping,
}

/// The loop's state, lent to handlers through [`Loop`].
pub(crate) struct Core {
    registry: Registry,
    slots: Slab<Slot>,
    timers: Timers,
    pool: Option<Pool>,
    next_job: u64,
    pub(crate) stats: Stats,
    samplers: crate::stats::Samplers,
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
    /// Bounds the log lines for peers' protocol errors and truncated closes, which
    /// a flood of bad clients could otherwise turn into a flood of lines.
    peer_log: LogLimiter,
    warn_log: LogLimiter,
}

/// What any callback can do to the loop: register sources, set timers, spawn,
/// message and wake other handlers, close itself, stop the loop.
///
/// Every callback of a [`Handler`](crate::Handler) gets a
/// [`Context`](crate::Context), which is this plus the handler's own types (its
/// typed address, typed offloading) and dereferences to it. Helpers that work for
/// any handler, such as [`Conn`](crate::Conn) or [`IdleTimeout`](crate::IdleTimeout),
/// take `&mut Loop<'_>`; pass them the callback's `cx` and it converts.
pub struct Loop<'a> {
    core: &'a mut Core,
    id: HandlerId,
    closing: Option<CloseReason>,
    event: Option<Event>,
}

impl<'a> Loop<'a> {
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
    ///
    /// A re-queue that is already pending (same source, and both read-like or both
    /// write-only) is not added again: a busy peer whose every new segment makes a
    /// new edge would otherwise pile up re-queues, one more per poll, and be read
    /// that many budgets per pass, starving the others. So a source is read at
    /// most twice per pass: once for a poller event, once re-queued.
    pub fn requeue(&mut self, ev: Event) {
        if let Some(bit) = ev.requeue_bit()
            && let Some(slot) = self.core.slots.get_mut(self.id.index as usize)
        {
            if slot.requeued & bit != 0 {
                return;
            }
            slot.requeued |= bit;
        }
        self.core.pending.push(Pending::Ready(self.id, ev));
    }

    /// Closes this handler once the current callback returns, as
    /// [`CloseReason::Local`] (unless a reason was given already).
    ///
    /// This is immediate: a [`Conn`](crate::Conn) dropped with output still queued
    /// loses it (logged and counted as truncated when the handler releases it). To
    /// end a conversation so the peer gets everything, use
    /// [`Conn::close_when_done`](crate::Conn::close_when_done) or the framed layer's
    /// [`Link::close_when_done`](crate::framed::Link::close_when_done).
    pub fn close(&mut self) {
        self.closing.get_or_insert(CloseReason::Local);
    }

    /// Closes this handler once the current callback returns, for `reason` (which
    /// reaches `on_close` and the per-reason counts). The first reason given wins.
    pub fn close_with(&mut self, reason: CloseReason) {
        self.closing.get_or_insert(reason);
    }

    /// True once [`close`](Loop::close) was called in this callback.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Closes another handler (before the next poll), as [`CloseReason::Local`].
    /// Its id may be stale; then nothing happens.
    pub fn close_handler(&mut self, id: HandlerId) {
        self.core
            .pending
            .push(Pending::Close(id, CloseReason::Local));
    }

    /// Wakes handler `id`: its [`on_notify`](crate::Handler::on_notify) runs before
    /// the next poll, after the pending work queued before it (see
    /// [`crate::framed`]'s notes on delivery order). Nothing is allocated; a stale
    /// id is ignored. Notifying a handler that is already notified calls it twice,
    /// so whoever shares state with it keeps a flag (as
    /// [`Outbox`](crate::framed::Outbox) does).
    pub fn notify(&mut self, id: HandlerId) {
        self.core.pending.push(Pending::Notify(id));
    }

    pub(crate) fn push_message(&mut self, to: HandlerId, msg: Box<dyn Any>) {
        self.core.pending.push(Pending::Message(to, msg));
    }

    pub(crate) fn insert(&mut self, handler: Box<dyn Erased>) -> HandlerId {
        let parent = Some(self.id);
        self.core.insert(handler, parent)
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

    /// Runs `f` on the worker pool for this handler; the typed front is
    /// [`Context::offload`](crate::Context::offload).
    pub(crate) fn offload_any<F, T>(&mut self, f: F) -> Result<JobId, PoolFull>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let core = &mut *self.core;
        if core.pool.is_none() {
            let wake = core.wake.clone();
            match Pool::new(
                core.config.workers,
                core.config.job_queue,
                Arc::new(move || wake.wake()),
            ) {
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
        match pool.submit(self.id, job, f) {
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

    /// Spare I/O buffers the loop's pool holds for reuse (at most
    /// [`Config::max_spare_buffers`]).
    pub fn spare_buffers(&self) -> usize {
        self.core.bufs.spare()
    }

    /// Jobs waiting in the worker pool's queue for a thread.
    pub fn jobs_queued(&self) -> usize {
        self.core.pool.as_ref().map_or(0, Pool::queued)
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

    /// The loop's counters (the sampled fields as of the last snapshot).
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// A copy of the loop's counters with the sampled fields
    /// ([`Stats::timers_live`], [`Stats::jobs_queued`], [`Stats::spare_buffers`])
    /// measured now. It allocates (the histogram is copied): take one per
    /// scrape or log line, not per event.
    pub fn snapshot(&mut self) -> Stats {
        self.core.snapshot()
    }

    pub(crate) fn stats_mut(&mut self) -> &mut Stats {
        &mut self.core.stats
    }

    /// The program counter `name` of this loop (created at zero on first use):
    /// shown in the stats line and the metrics. Look it up once and keep it.
    pub fn counter(&mut self, name: impl Into<Cow<'static, str>>) -> Counter {
        self.core.stats.app.counter(name)
    }

    /// The program gauge `name` of this loop (created at zero on first use).
    pub fn gauge(&mut self, name: impl Into<Cow<'static, str>>) -> Gauge {
        self.core.stats.app.gauge(name)
    }

    /// A counter `name` whose value `read` gives: called on this thread whenever the
    /// loop takes a snapshot (the stats line, a metrics scrape), never in between.
    /// For a count a component already keeps (a table's): no update to mirror.
    /// `read` must be quick and must not block.
    pub fn counter_fn(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        read: impl Fn() -> u64 + 'static,
    ) {
        self.core.counter_fn(name.into(), Box::new(read));
    }

    /// A gauge `name` whose value `read` gives at each snapshot (see
    /// [`counter_fn`](Loop::counter_fn)): a table's size, sessions open.
    pub fn gauge_fn(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        read: impl Fn() -> i64 + 'static,
    ) {
        self.core.gauge_fn(name.into(), Box::new(read));
    }

    /// A handle for other threads.
    pub fn handle(&self) -> ReactorHandle {
        self.core.handle()
    }

    /// The loop's settings.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Logs a line about a peer's misbehaviour at `info`, at most one per second
    /// for the whole loop (with a count of the lines held back), so a flood of bad
    /// clients cannot flood the log.
    pub fn log_peer(&mut self, line: std::fmt::Arguments<'_>) {
        if let Some(more) = self.core.peer_log.allow(self.core.now) {
            if more > 0 {
                log::info!("{line} ({more} more such lines held back)");
            } else {
                log::info!("{line}");
            }
        }
    }

    /// The same as [`log_peer`](Loop::log_peer), at `warn`: for trouble of our
    /// own that may come in floods (many connections closed at a drain deadline).
    pub(crate) fn warn_limited(&mut self, line: std::fmt::Arguments<'_>) {
        if let Some(more) = self.core.warn_log.allow(self.core.now) {
            if more > 0 {
                log::warn!("{line} ({more} more such lines held back)");
            } else {
                log::warn!("{line}");
            }
        }
    }

    pub(crate) fn core(&mut self) -> &mut Core {
        self.core
    }

    /// A second view of the same callback's loop, for a helper that holds one
    /// while other parts of the handler are borrowed too (the framed layer's
    /// `Link`); give its close request back with
    /// [`set_close_request`](Loop::set_close_request).
    pub(crate) fn reborrow(&mut self) -> Loop<'_> {
        Loop {
            core: &mut *self.core,
            id: self.id,
            closing: self.closing,
            event: self.event,
        }
    }

    /// The close request of this callback so far.
    pub(crate) fn close_request(&self) -> Option<CloseReason> {
        self.closing
    }

    /// Replaces the close request (taking over one made through a
    /// [`reborrow`](Loop::reborrow)).
    pub(crate) fn set_close_request(&mut self, c: Option<CloseReason>) {
        self.closing = c;
    }
}

/// What an error returned by a callback says about why the handler closes.
pub(crate) fn classify(e: &Error) -> CloseReason {
    if let Some(io) = e.downcast_ref::<io::Error>() {
        if is_peer_gone(io) {
            return CloseReason::PeerReset;
        }
        if io.kind() == io::ErrorKind::InvalidData {
            return CloseReason::ProtocolError;
        }
        return CloseReason::HandlerError;
    }
    if e.is::<ProtocolError>() || e.is::<FrameError>() {
        return CloseReason::ProtocolError;
    }
    CloseReason::HandlerError
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

    fn counter_fn(&mut self, name: Cow<'static, str>, read: Box<dyn Fn() -> u64>) {
        let c = self.stats.app.counter(name);
        c.set(read());
        self.samplers.counter(c, read);
    }

    fn gauge_fn(&mut self, name: Cow<'static, str>, read: Box<dyn Fn() -> i64>) {
        let g = self.stats.app.gauge(name);
        g.set(read());
        self.samplers.gauge(g, read);
    }

    /// A callback ran longer than the threshold: count it (by handler name) and
    /// say so. Out of line, so the dispatch path stays small.
    #[cold]
    #[inline(never)]
    fn slow_dispatch(&mut self, handler: &dyn Erased, id: HandlerId, ns: u64) {
        self.stats.slow_dispatches += 1;
        self.stats.slow_handlers.count(handler.name());
        log::warn!(
            "slow handler: {} {} blocked the loop for {:.1} ms (threshold {} ms)",
            handler.name(),
            id,
            ns as f64 / 1e6,
            self.config.slow_threshold.as_millis()
        );
    }

    fn snapshot(&mut self) -> Stats {
        self.samplers.sample();
        self.stats.timers_live = self.timers.len() as u64;
        self.stats.jobs_queued = self.pool.as_ref().map_or(0, Pool::queued) as u64;
        self.stats.spare_buffers = self.bufs.spare() as u64;
        self.stats.clone()
    }

    pub(crate) fn insert(
        &mut self,
        handler: Box<dyn Erased>,
        parent: Option<HandlerId>,
    ) -> HandlerId {
        self.next_generation = (self.next_generation + 1) & GEN_MASK;
        let generation = self.next_generation;
        let index = self.slots.insert(Slot {
            generation,
            handler: Some(handler),
            parent,
            timers: Vec::new(),
            requeued: 0,
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
        f: impl FnOnce(&mut dyn Erased, &mut Loop<'_>) -> HandlerResult,
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
        let mut lp = Loop {
            core: self,
            id,
            closing: None,
            event,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut *handler, &mut lp)));
        let mut closing = lp.closing;
        let end = self.stopwatch.ticks();
        self.clock = end;
        let ns = self.stopwatch.to_ns(end.saturating_sub(start));
        self.stats.dispatches += 1;
        self.stats.dispatch_time.record(ns);
        if ns >= self.slow_ns {
            self.slow_dispatch(&*handler, id, ns);
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => closing = Some(self.error_closes(&*handler, id, &e)),
            Err(p) => {
                log::error!(
                    "handler {} {} panicked: {}; closing it",
                    handler.name(),
                    id,
                    panic_message(&*p)
                );
                closing = Some(CloseReason::Panic);
            }
        }
        if let Some(reason) = closing {
            self.finish_close(id, handler, reason);
        } else if let Some(slot) = self.slots.get_mut(id.index as usize) {
            slot.handler = Some(handler);
        }
        true
    }

    /// Logs an error a callback returned, as what it says about the close.
    fn error_closes(&mut self, handler: &dyn Erased, id: HandlerId, e: &Error) -> CloseReason {
        let reason = classify(e);
        match reason {
            CloseReason::PeerReset => {
                log::debug!("{} {}: peer gone ({e}); closing", handler.name(), id)
            }
            CloseReason::ProtocolError => {
                if let Some(more) = self.peer_log.allow(self.now) {
                    log::info!(
                        "{} {}: protocol error: {e}; closing ({more} more such lines held back)",
                        handler.name(),
                        id
                    );
                }
            }
            _ => log::warn!(
                "handler {} {} failed: {}; closing it",
                handler.name(),
                id,
                e
            ),
        }
        reason
    }

    fn finish_close(&mut self, id: HandlerId, mut handler: Box<dyn Erased>, reason: CloseReason) {
        self.stats.count_close(reason);
        let mut lp = Loop {
            core: self,
            id,
            closing: Some(reason),
            event: None,
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| handler.close(&mut lp, reason))) {
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

    fn close_now(&mut self, id: HandlerId, reason: CloseReason) {
        if !self.live(id) {
            return;
        }
        let handler = self.slots[id.index as usize]
            .handler
            .take()
            .expect("live handler is present");
        self.finish_close(id, handler, reason);
    }

    fn run_pending(&mut self, scratch: &mut Vec<Pending>) {
        std::mem::swap(&mut self.pending, scratch);
        for p in scratch.drain(..) {
            match p {
                Pending::Start(id) => {
                    self.dispatch(id, None, |h, lp| h.start(lp));
                }
                Pending::Ready(id, ev) => {
                    if let Some(bit) = ev.requeue_bit()
                        && let Some(slot) = self.slots.get_mut(id.index as usize)
                        && slot.generation == id.generation
                    {
                        slot.requeued &= !bit;
                    }
                    self.dispatch(id, Some(ev), |h, lp| h.event(lp, ev));
                }
                Pending::ChildClosed { parent, child } => {
                    self.dispatch(parent, None, |h, lp| h.child_closed(lp, child));
                }
                Pending::Message(id, msg) => {
                    if !self.dispatch(id, None, |h, lp| h.message(lp, msg)) {
                        log::debug!("message for closed handler {id} dropped");
                    }
                }
                Pending::Notify(id) => {
                    self.dispatch(id, None, |h, lp| h.notify(lp));
                }
                Pending::Close(id, reason) => self.close_now(id, reason),
                Pending::Shutdown(id) => {
                    self.dispatch(id, None, |h, lp| h.shutdown(lp));
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
            self.dispatch(owner, None, |h, lp| h.timer(lp, t));
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
            }
        }
        while let Some(Done { owner, job, result }) = self.pool.as_ref().and_then(Pool::try_done) {
            if result.is_err() {
                self.stats.jobs_panicked += 1;
            }
            if self.dispatch(owner, None, |h, lp| h.job(lp, job, result)) {
                self.stats.jobs_completed += 1;
            } else {
                self.stats.jobs_dropped += 1;
                log::debug!("result of job {job:?} dropped: handler {owner} has closed");
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
            self.close_now(id, CloseReason::Shutdown);
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
                samplers: Default::default(),
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
                peer_log: LogLimiter::default(),
                warn_log: LogLimiter::default(),
            },
            signals: None,
        })
    }

    pub(crate) fn insert(&mut self, handler: Box<dyn Erased>) -> HandlerId {
        self.core.insert(handler, None)
    }

    /// A handle that stops, shuts down, spawns into or messages this loop from any
    /// thread.
    pub fn handle(&self) -> ReactorHandle {
        self.core.handle()
    }

    /// The loop's counters (the sampled fields as of the last snapshot).
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// A copy of the loop's counters with the sampled fields
    /// ([`Stats::timers_live`], [`Stats::jobs_queued`], [`Stats::spare_buffers`])
    /// measured now. It allocates (the histogram is copied): take one per
    /// scrape or log line, not per event.
    pub fn snapshot(&mut self) -> Stats {
        self.core.snapshot()
    }

    /// Shows `counter`, made by a library before it had a loop, in this loop's
    /// stats line and metrics under `name` (false if the name is taken). Only this
    /// loop's thread may update it from then on.
    pub fn register_counter(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        counter: &Counter,
    ) -> bool {
        self.core.stats.app.register_counter(name, counter)
    }

    /// Shows `gauge` under `name` (see [`Reactor::register_counter`]).
    pub fn register_gauge(&mut self, name: impl Into<Cow<'static, str>>, gauge: &Gauge) -> bool {
        self.core.stats.app.register_gauge(name, gauge)
    }

    /// A counter read by `read` at each snapshot (see [`Loop::counter_fn`]).
    pub fn counter_fn(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        read: impl Fn() -> u64 + 'static,
    ) {
        self.core.counter_fn(name.into(), Box::new(read));
    }

    /// A gauge read by `read` at each snapshot (see [`Loop::gauge_fn`]).
    pub fn gauge_fn(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        read: impl Fn() -> i64 + 'static,
    ) {
        self.core.gauge_fn(name.into(), Box::new(read));
    }

    /// The program counter `name` of this loop (see [`Loop::counter`]), for a
    /// program that sets up its counters before the loop runs.
    pub fn counter(&mut self, name: impl Into<Cow<'static, str>>) -> Counter {
        self.core.stats.app.counter(name)
    }

    /// The program gauge `name` of this loop (see [`Loop::gauge`]).
    pub fn gauge(&mut self, name: impl Into<Cow<'static, str>>) -> Gauge {
        self.core.stats.app.gauge(name)
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

    /// Starts a graceful shutdown: every handler's
    /// [`on_shutdown`](crate::Handler::on_shutdown) runs
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
                        if core.dispatch(id, Some(event), |h, lp| h.event(lp, event)) {
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
