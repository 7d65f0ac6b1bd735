//! A counting global allocator, for the tests that prove a path allocates nothing.
//!
//! Each test binary that counts declares it once:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: reactor_test_support::alloc::Counting = reactor_test_support::alloc::Counting;
//! ```
//!
//! Two counts are kept: every thread's own (always on: [`here`]), and one total
//! over the threads that opted in with [`track_this_thread`] ([`tracked`]): a loop
//! thread under test opts in, and the test reads the total before and after the
//! traffic it measures. With `ALLOC_BACKTRACE=1` the first few tracked allocations
//! print a backtrace, to find the one that breaks a zero-allocation check.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The allocator: the system's, counting allocations and reallocations.
pub struct Counting;

static TRACKED: AtomicU64 = AtomicU64::new(0);
static BACKTRACES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static HERE: Cell<u64> = const { Cell::new(0) };
    static TRACK: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    let _ = HERE.try_with(|c| c.set(c.get() + 1));
    if !TRACK.try_with(|t| t.get()).unwrap_or(false) {
        return;
    }
    TRACKED.fetch_add(1, Ordering::Relaxed);
    if std::env::var_os("ALLOC_BACKTRACE").is_some()
        && BACKTRACES.fetch_add(1, Ordering::Relaxed) < 5
    {
        // Capturing allocates: stop tracking this thread meanwhile.
        TRACK.with(|t| t.set(false));
        eprintln!(
            "allocation on a tracked thread:\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        TRACK.with(|t| t.set(true));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only atomics and thread-locals (`try_with`, so it is safe
// during thread teardown) and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Adds this thread's allocations to the [`tracked`] total from now on.
pub fn track_this_thread() {
    TRACK.with(|t| t.set(true));
}

/// Stops adding this thread's allocations to the [`tracked`] total.
pub fn untrack_this_thread() {
    TRACK.with(|t| t.set(false));
}

/// Allocations made so far on the threads that opted in.
pub fn tracked() -> u64 {
    TRACKED.load(Ordering::SeqCst)
}

/// Allocations this thread has made so far.
pub fn here() -> u64 {
    HERE.with(|c| c.get())
}
