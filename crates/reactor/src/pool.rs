//! The worker pool: where blocking work (file I/O, DNS lookups, hashing) runs.
//!
//! Jobs go through a bounded `crossbeam-channel` queue to a fixed set of threads; a
//! finished job's result goes into the pool's own result queue with the id of the
//! handler that offloaded it, and the pool calls the `notify` function it was
//! given (the loop's waker). The loop drains the results and delivers each to its
//! handler if that handler is still open. This module must not know the loop or
//! handlers beyond an id: workers only run closures and post results.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::event::HandlerId;

/// Identifies one offloaded job; returned by [`crate::Context::offload`] and passed
/// back with the result.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct JobId(pub u64);

/// A job's outcome as it reaches [`Handler::on_job`](crate::Handler::on_job): the
/// closure's return value, or the panic it raised.
pub type JobResult<T> = Result<T, JobPanicked>;

/// A job panicked on the worker; the worker itself survives.
#[derive(Debug, Clone)]
pub struct JobPanicked(pub String);

impl fmt::Display for JobPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offloaded job panicked: {}", self.0)
    }
}

impl std::error::Error for JobPanicked {}

/// The pool's queue is full: the loop is offloading faster than the workers finish.
/// The caller decides whether to retry later, shed load, or fail the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFull {
    /// The queue's capacity.
    pub capacity: usize,
}

impl fmt::Display for PoolFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker pool queue is full ({} jobs waiting); try again later or raise Config::job_queue",
            self.capacity
        )
    }
}

impl std::error::Error for PoolFull {}

type Job = Box<dyn FnOnce() + Send>;

/// A finished job, waiting in the pool's result queue for the loop.
pub(crate) struct Done {
    pub(crate) owner: HandlerId,
    pub(crate) job: JobId,
    /// The closure's value, boxed: its type is the owner's `Handler::Job`, which
    /// `Context::offload` checked when the job was submitted.
    pub(crate) result: JobResult<Box<dyn Any + Send>>,
}

pub(crate) struct Pool {
    tx: Sender<Job>,
    capacity: usize,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    notify: Arc<dyn Fn() + Send + Sync>,
}

pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl Pool {
    /// Starts `workers` threads behind a queue of `capacity` jobs; `notify` is
    /// called (from a worker) after each result is posted.
    pub(crate) fn new(
        workers: usize,
        capacity: usize,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Pool> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::bounded(capacity);
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("reactor-worker-{i}"))
                .spawn(move || {
                    // Exits when the pool (the only sender) is dropped.
                    for job in rx.iter() {
                        job();
                    }
                })?;
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Ok(Pool {
            tx,
            capacity,
            done_tx,
            done_rx,
            notify,
        })
    }

    /// Queues `f`; its result is posted for `owner` as `job`.
    pub(crate) fn submit<F, T>(&self, owner: HandlerId, job: JobId, f: F) -> Result<(), PoolFull>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let done = self.done_tx.clone();
        let notify = self.notify.clone();
        let work: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(f))
                .map(|v| Box::new(v) as Box<dyn Any + Send>)
                .map_err(|p| JobPanicked(panic_message(&*p)));
            // The loop may be gone (stopped); then nobody wants the result.
            if done.send(Done { owner, job, result }).is_ok() {
                notify();
            }
        });
        match self.tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(PoolFull {
                capacity: self.capacity,
            }),
        }
    }

    /// The next finished job, if any.
    pub(crate) fn try_done(&self) -> Option<Done> {
        self.done_rx.try_recv().ok()
    }

    /// Jobs waiting for a worker.
    pub(crate) fn queued(&self) -> usize {
        self.tx.len()
    }
}
