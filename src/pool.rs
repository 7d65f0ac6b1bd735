//! The worker pool: where blocking work (file I/O, DNS lookups, hashing) runs.
//!
//! Jobs go through a bounded `crossbeam-channel` queue to a fixed set of threads; a
//! finished job's result travels back to the loop with the id of the handler that
//! offloaded it, and the loop delivers it to that handler if it is still open. This
//! module must not touch handlers itself: workers only run closures and post
//! results.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::handler::HandlerId;
use crate::reactor::{Command, Wake};

/// Identifies one offloaded job; returned by [`crate::Context::offload`] and passed
/// back with the result.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct JobId(pub u64);

/// A job's outcome: the closure's return value (downcast it with [`take`]), or the
/// panic it raised.
pub type JobResult = Result<Box<dyn Any + Send>, JobPanicked>;

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

/// Unpacks a job result into the type the closure returned.
///
/// ```
/// let r: reactor::JobResult = Ok(Box::new(42u32));
/// assert_eq!(reactor::pool::take::<u32>(r).unwrap(), 42);
/// ```
pub fn take<T: 'static>(result: JobResult) -> Result<T, crate::Error> {
    let any = result?;
    any.downcast::<T>()
        .map(|b| *b)
        .map_err(|_| "job result has an unexpected type".into())
}

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct Pool {
    tx: Sender<Job>,
    capacity: usize,
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
    pub(crate) fn new(workers: usize, capacity: usize) -> std::io::Result<Pool> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::bounded(capacity);
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("reactor-worker-{i}"))
                .spawn(move || {
                    // Exits when the reactor (the only sender) is dropped.
                    for job in rx.iter() {
                        job();
                    }
                })?;
        }
        Ok(Pool { tx, capacity })
    }

    pub(crate) fn submit<F, T>(
        &self,
        owner: HandlerId,
        job: JobId,
        f: F,
        results: Sender<Command>,
        wake: Arc<Wake>,
    ) -> Result<(), PoolFull>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let work: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(f))
                .map(|v| Box::new(v) as Box<dyn Any + Send>)
                .map_err(|p| JobPanicked(panic_message(&*p)));
            // The loop may be gone (stopped); then nobody wants the result.
            if results
                .send(Command::JobDone { owner, job, result })
                .is_ok()
            {
                wake.wake();
            }
        });
        match self.tx.try_send(work) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(PoolFull {
                capacity: self.capacity,
            }),
        }
    }
}
