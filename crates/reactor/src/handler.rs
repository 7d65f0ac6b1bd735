//! The handler trait: what a server author implements at the lowest level, and the
//! typed context its callbacks get.
//!
//! A handler is asyncore's `dispatcher`: an object that owns zero or more I/O sources
//! (sockets, timers through the [`Context`]) and is called back on the loop thread
//! when one of them is ready. Its two associated types say what other handlers may
//! send it ([`Handler::Message`]) and what its offloaded jobs return
//! ([`Handler::Job`]); both are checked at compile time, through typed addresses
//! ([`Addr`]) and [`Context::offload`]. Most servers do not implement this trait
//! directly but a [`Protocol`](crate::framed::Protocol), which the framed layer turns
//! into a handler.
//!
//! This module sits above the loop (`reactor.rs`): it implements the loop's untyped
//! `Erased` trait for every handler and adds the typed entry points (spawning,
//! messages, offloading). It must not know how the loop finds handlers or polls.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use crate::event::{CloseReason, Event, HandlerId, HandlerResult, SourceId};
use crate::pool::{JobId, JobPanicked, JobResult, PoolFull};
use crate::reactor::{Command, Erased, Loop, Reactor, ReactorHandle};
use crate::timer::TimerId;

/// A handler receives readiness and other callbacks on the loop thread.
///
/// Every method but the associated types has a default, so a handler implements
/// only what it needs. Each callback gets a [`Context`] to register sources, set
/// timers, offload blocking work, spawn and message other handlers, and close
/// itself. A callback must not block: the whole loop waits for it, and dispatches
/// longer than the slow-handler threshold are logged with [`Handler::name`].
///
/// ```
/// use reactor::{Context, Handler, HandlerResult, TimerId};
///
/// struct Hello;
/// impl Handler for Hello {
///     type Message = ();
///     type Job = ();
///     fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
///         cx.timer_once(std::time::Duration::from_millis(1));
///         Ok(())
///     }
///     fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
///         cx.stop();
///         Ok(())
///     }
/// }
///
/// let mut r = reactor::Reactor::new().unwrap();
/// r.spawn(Hello);
/// r.run().unwrap();
/// ```
#[allow(unused_variables)]
pub trait Handler: 'static {
    /// What other handlers send this one ([`Loop::send`], [`ReactorHandle::send`]
    /// for `Send` ones), delivered to [`on_message`](Handler::on_message). `()` if
    /// none. Messages inside one loop need not be `Send`.
    type Message: 'static;
    /// What this handler's offloaded jobs return ([`Context::offload`]), delivered to
    /// [`on_job`](Handler::on_job). `()` if it offloads nothing; an enum if it
    /// offloads several kinds of work.
    type Job: Send + 'static;

    /// A name for logs and slow-handler warnings. Defaults to the type's name.
    fn name(&self) -> &str {
        short_type_name(std::any::type_name::<Self>())
    }

    /// Called once after the handler is added to the loop: register sources here
    /// ([`Loop::register`]) because the handler's id is known only now.
    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(())
    }

    /// Called for each readiness event. The default splits it with
    /// [`split_event`] into [`on_readable`](Handler::on_readable),
    /// [`on_writable`](Handler::on_writable), [`on_hangup`](Handler::on_hangup) and
    /// [`on_error`](Handler::on_error).
    fn on_event(&mut self, cx: &mut Context<'_, Self>, ev: Event) -> HandlerResult {
        split_event(self, cx, ev)
    }

    /// The source can be read (or has reached end of file). Read until `WouldBlock`.
    fn on_readable(&mut self, cx: &mut Context<'_, Self>, source: SourceId) -> HandlerResult {
        Ok(())
    }

    /// The source can be written.
    fn on_writable(&mut self, cx: &mut Context<'_, Self>, source: SourceId) -> HandlerResult {
        Ok(())
    }

    /// Both directions of the source are closed. The default does nothing, because
    /// `on_readable` ran first and sees end of file there, with any data still
    /// buffered in the kernel; closing here would lose it.
    fn on_hangup(&mut self, cx: &mut Context<'_, Self>, source: SourceId) -> HandlerResult {
        Ok(())
    }

    /// The source has a pending socket error. The default calls `on_readable`, where
    /// the next read or accept returns the error with its real message.
    fn on_error(&mut self, cx: &mut Context<'_, Self>, source: SourceId) -> HandlerResult {
        self.on_readable(cx, source)
    }

    /// A timer set by this handler fired.
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, timer: TimerId) -> HandlerResult {
        Ok(())
    }

    /// A job offloaded with [`Context::offload`] finished on the worker pool: its
    /// return value, or the panic it raised.
    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        job: JobId,
        result: JobResult<Self::Job>,
    ) -> HandlerResult {
        Ok(())
    }

    /// A message sent to this handler's [`Addr`].
    fn on_message(&mut self, cx: &mut Context<'_, Self>, msg: Self::Message) -> HandlerResult {
        Ok(())
    }

    /// Woken with [`Loop::notify`]: something this handler shares with others (an
    /// [`Outbox`](crate::framed::Outbox)) has news. No payload, nothing allocated.
    fn on_notify(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(())
    }

    /// A handler this one spawned has closed (an acceptor counts its connections
    /// this way).
    fn on_child_closed(&mut self, cx: &mut Context<'_, Self>, child: HandlerId) -> HandlerResult {
        Ok(())
    }

    /// The loop is shutting down gracefully. Listeners close here; connections may
    /// finish their work until the drain deadline. The default does nothing, so a
    /// handler that would live forever (a periodic ticker) must close itself here.
    fn on_shutdown(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        Ok(())
    }

    /// Last call before the handler is dropped, with the reason it closed (also
    /// counted in [`Stats::closes`](crate::Stats::closes)).
    fn on_close(&mut self, cx: &mut Context<'_, Self>, reason: CloseReason) {}
}

/// The default [`Handler::on_event`]: `ev` split into
/// [`on_error`](Handler::on_error) (an error event goes there only), then
/// [`on_readable`](Handler::on_readable), [`on_writable`](Handler::on_writable) and
/// [`on_hangup`](Handler::on_hangup), the last two skipped once the handler is
/// closing. A handler that overrides `on_event` for some states (e.g. one that
/// passes whole events to a two-socket pump) calls it for the others.
pub fn split_event<H: Handler + ?Sized>(
    h: &mut H,
    cx: &mut Context<'_, H>,
    ev: Event,
) -> HandlerResult {
    if ev.is_error() {
        return h.on_error(cx, ev.source());
    }
    if ev.is_readable() || ev.is_read_closed() {
        h.on_readable(cx, ev.source())?;
    }
    if (ev.is_writable() || ev.is_write_closed()) && !cx.is_closing() {
        h.on_writable(cx, ev.source())?;
    }
    if ev.is_hangup() && !cx.is_closing() {
        h.on_hangup(cx, ev.source())?;
    }
    Ok(())
}

/// What a callback of handler `H` can do: everything a [`Loop`] can (it
/// dereferences to one, so `cx.timer_once(..)`, `cx.close()` and
/// `conn.fill(cx)` work as written), plus what needs `H`'s own types: its typed
/// address ([`addr`](Context::addr)) and offloading work whose result type is
/// `H::Job` ([`offload`](Context::offload)).
#[repr(transparent)]
pub struct Context<'a, H: ?Sized> {
    lp: Loop<'a>,
    _handler: PhantomData<fn(&H)>,
}

impl<'a, H: ?Sized> Context<'a, H> {
    /// The typed view of the loop lent to a callback of `H`.
    pub(crate) fn of<'b>(lp: &'b mut Loop<'a>) -> &'b mut Context<'a, H> {
        // SAFETY: `Context<'a, H>` is `repr(transparent)` over `Loop<'a>` (its
        // other field is a zero-sized `PhantomData`), so the two have the same
        // layout and the reference cast is sound; the lifetime is carried over.
        #[allow(unsafe_code)]
        unsafe {
            &mut *(lp as *mut Loop<'a> as *mut Context<'a, H>)
        }
    }
}

impl<'a, H: ?Sized> Deref for Context<'a, H> {
    type Target = Loop<'a>;
    fn deref(&self) -> &Loop<'a> {
        &self.lp
    }
}

impl<'a, H: ?Sized> DerefMut for Context<'a, H> {
    fn deref_mut(&mut self) -> &mut Loop<'a> {
        &mut self.lp
    }
}

impl<H: Handler + ?Sized> Context<'_, H> {
    /// This handler's own typed address, to give to others (a room it joins, a
    /// child that reports back).
    pub fn addr(&self) -> Addr<H::Message> {
        Addr::new(self.lp.id())
    }

    /// Runs blocking `f` on the worker pool; its return value comes back to this
    /// handler's [`Handler::on_job`] with the returned id, typed as `H::Job`. Fails
    /// at once when the pool's queue is full ([`crate::Config::job_queue`]).
    pub fn offload<F>(&mut self, f: F) -> Result<JobId, PoolFull>
    where
        F: FnOnce() -> H::Job + Send + 'static,
    {
        self.lp.offload_any(f)
    }
}

/// The typed address of a handler whose [`Handler::Message`] is `M`: what
/// [`Loop::spawn`] returns and [`Loop::send`] takes, so a message of the wrong type
/// does not compile. `Copy`, and `Send` whatever `M` is (only
/// [`ReactorHandle::send`] needs `M: Send`). Like a [`HandlerId`], it carries a
/// generation: sending to a handler that has closed drops the message.
///
/// ```compile_fail
/// # use reactor::{Addr, Loop};
/// // A handler of `u32` messages cannot be sent a string:
/// fn wrong(cx: &mut Loop<'_>, to: Addr<u32>) {
///     cx.send(to, "not a number");
/// }
/// ```
///
/// ```compile_fail
/// # use reactor::{Addr, ReactorHandle};
/// // Across threads only `Send` messages go:
/// fn wrong(h: &ReactorHandle, to: Addr<std::rc::Rc<u32>>) {
///     h.send(to, std::rc::Rc::new(1));
/// }
/// ```
pub struct Addr<M> {
    id: HandlerId,
    _message: PhantomData<fn(M)>,
}

impl<M> Addr<M> {
    pub(crate) fn new(id: HandlerId) -> Addr<M> {
        Addr {
            id,
            _message: PhantomData,
        }
    }

    /// The handler's id (for [`Loop::close_handler`], [`Loop::notify`], or
    /// matching [`Handler::on_child_closed`]).
    pub fn id(&self) -> HandlerId {
        self.id
    }
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Addr<M> {}
impl<M> PartialEq for Addr<M> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl<M> Eq for Addr<M> {}
impl<M> Hash for Addr<M> {
    fn hash<S: Hasher>(&self, state: &mut S) {
        self.id.hash(state)
    }
}
impl<M> fmt::Debug for Addr<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Addr({})", self.id)
    }
}
impl<M> fmt::Display for Addr<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.id.fmt(f)
    }
}

impl Loop<'_> {
    /// Adds a handler as a child of this one: this handler's
    /// [`Handler::on_child_closed`] runs when it closes. Its `on_start` runs before
    /// the next poll.
    pub fn spawn<H: Handler>(&mut self, handler: H) -> Addr<H::Message> {
        Addr::new(self.insert(Box::new(handler)))
    }

    /// Delivers `msg` to the handler at `to` (its [`Handler::on_message`]) before the
    /// next poll; dropped if that handler has closed. One allocation per message,
    /// none for a zero-sized one: to wake a handler without a payload, use
    /// [`notify`](Loop::notify).
    pub fn send<M: 'static>(&mut self, to: Addr<M>, msg: M) {
        self.push_message(to.id, Box::new(msg));
    }
}

impl Reactor {
    /// Adds a top-level handler; its `on_start` runs when the loop runs.
    pub fn spawn<H: Handler>(&mut self, handler: H) -> Addr<H::Message> {
        Addr::new(self.insert(Box::new(handler)))
    }
}

impl ReactorHandle {
    /// Adds a handler to the loop from another thread. Returns false if the loop
    /// is gone.
    pub fn spawn<H: Handler + Send>(&self, handler: H) -> bool {
        self.send_cmd(Command::Spawn(Box::new(handler)))
    }

    /// Delivers `msg` to the handler at `to` from another thread; dropped if that
    /// handler has closed. Returns false if the loop is gone.
    pub fn send<M: Send + 'static>(&self, to: Addr<M>, msg: M) -> bool {
        self.send_cmd(Command::Message(to.id, Box::new(msg)))
    }
}

impl<H: Handler> Erased for H {
    fn name(&self) -> &str {
        Handler::name(self)
    }
    #[inline]
    fn start(&mut self, lp: &mut Loop<'_>) -> HandlerResult {
        self.on_start(Context::of(lp))
    }
    #[inline]
    fn event(&mut self, lp: &mut Loop<'_>, ev: Event) -> HandlerResult {
        self.on_event(Context::of(lp), ev)
    }
    fn timer(&mut self, lp: &mut Loop<'_>, t: TimerId) -> HandlerResult {
        self.on_timer(Context::of(lp), t)
    }
    fn job(
        &mut self,
        lp: &mut Loop<'_>,
        job: JobId,
        result: JobResult<Box<dyn Any + Send>>,
    ) -> HandlerResult {
        // `Context::offload` only accepts closures returning `H::Job`, so the
        // downcast cannot fail for the handler that offloaded the job.
        let result = match result {
            Ok(v) => match v.downcast::<H::Job>() {
                Ok(v) => Ok(*v),
                Err(_) => Err(JobPanicked("job result of an unexpected type".into())),
            },
            Err(p) => Err(p),
        };
        self.on_job(Context::of(lp), job, result)
    }
    fn message(&mut self, lp: &mut Loop<'_>, msg: Box<dyn Any>) -> HandlerResult {
        // An `Addr<H::Message>` is the only way to send here, so this holds unless
        // a slot's 24-bit generation wrapped around while an old address was kept.
        match msg.downcast::<H::Message>() {
            Ok(m) => self.on_message(Context::of(lp), *m),
            Err(_) => {
                log::error!(
                    "{} {}: message of another type dropped (stale address?)",
                    Handler::name(self),
                    lp.id()
                );
                Ok(())
            }
        }
    }
    fn notify(&mut self, lp: &mut Loop<'_>) -> HandlerResult {
        self.on_notify(Context::of(lp))
    }
    fn child_closed(&mut self, lp: &mut Loop<'_>, child: HandlerId) -> HandlerResult {
        self.on_child_closed(Context::of(lp), child)
    }
    fn shutdown(&mut self, lp: &mut Loop<'_>) -> HandlerResult {
        self.on_shutdown(Context::of(lp))
    }
    fn close(&mut self, lp: &mut Loop<'_>, reason: CloseReason) {
        self.on_close(Context::of(lp), reason)
    }
}

/// `a::b::Foo<c::Bar>` -> `Foo<c::Bar>`: enough to recognise a handler in a log line.
pub(crate) fn short_type_name(full: &str) -> &str {
    let head = full.split('<').next().unwrap_or(full);
    match head.rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(short_type_name("a::b::Foo"), "Foo");
        assert_eq!(short_type_name("a::Foo<b::Bar>"), "Foo<b::Bar>");
        assert_eq!(short_type_name("Foo"), "Foo");
    }
}
