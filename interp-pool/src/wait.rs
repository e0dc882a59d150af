//! Reply slots and the spin-then-park policy.
//!
//! A caller waits on a [`ReplySlot`] it reuses for every call (one per thread, taken out
//! of a thread-local while in use so a nested call on the same thread gets a fresh one).
//! The completing side clones the waiter's `Thread` handle *before* publishing `done`, so
//! it never touches the slot after the waiter may have moved on.

use std::cell::Cell;
use std::hint;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// One pending reply: "the job has finished with the caller's data". The result itself is
/// written into the caller's stack frame (see `job.rs`); this only says when.
#[derive(Debug)]
pub(crate) struct ReplySlot {
    done: AtomicBool,
    waiter: Thread,
}

impl ReplySlot {
    fn new() -> Self {
        Self {
            done: AtomicBool::new(false),
            waiter: thread::current(),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Publishes completion and wakes the waiter. After the store the slot may be gone.
    pub(crate) fn complete(&self) {
        let waiter = self.waiter.clone();
        self.done.store(true, Ordering::Release);
        waiter.unpark();
    }

    /// Blocks the current (owning) thread until [`complete`](Self::complete); `defer`
    /// as for [`spin_until`].
    pub(crate) fn wait(&self, spin: Duration, defer: impl Fn() -> bool) {
        if spin_until(spin, || self.is_done(), defer) {
            return;
        }
        while !self.is_done() {
            thread::park();
        }
    }
}

thread_local! {
    static SLOT: Cell<Option<Box<ReplySlot>>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's reply slot, reset to "not done".
///
/// `f` must not return before the slot is done if it handed the slot to a job; the
/// callers in `handle.rs` guarantee that by waiting in `wait`/`serve`, neither of which
/// can panic.
pub(crate) fn with_slot<R>(f: impl FnOnce(&ReplySlot) -> R) -> R {
    let slot = SLOT
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| Box::new(ReplySlot::new()));
    slot.done.store(false, Ordering::Relaxed);
    let r = f(&slot);
    // During TLS teardown the slot is simply freed.
    let _ = SLOT.try_with(|c| c.set(Some(slot)));
    r
}

/// What an owner thread is doing, as published for its callers.
pub(crate) mod state {
    /// Parked (or about to park): a poster must unpark it; callers do not spin.
    pub(crate) const PARKED: u8 = 0;
    /// Running a job or looking for one.
    pub(crate) const RUNNING: u8 = 1;
    /// Waiting for another interpreter (nested service loop): its callers yield the CPU
    /// rather than spin, since the thread that must run next is a third one.
    pub(crate) const NESTED: u8 = 2;
}

/// Spins before the first yield. A PAUSE costs ~50 ns on the reference VM, so this is a
/// few microseconds: about one hand-off of a short job. Longer pure spinning held cores
/// that a third thread needed (nested calls); shorter made every hand-off a syscall.
const PURE_SPINS: u32 = 128;

/// Spins for at most `budget` until `ready()`; returns whether it became ready. Spins with
/// a CPU hint first, then yields so that on an oversubscribed machine the thread we wait
/// for can run; yields at once while `defer()` says the work is happening on a third
/// thread (the one we wait for is itself waiting).
pub(crate) fn spin_until(
    budget: Duration,
    mut ready: impl FnMut() -> bool,
    defer: impl Fn() -> bool,
) -> bool {
    if ready() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    let start = Instant::now();
    let mut i: u32 = 0;
    loop {
        if i < PURE_SPINS && !defer() {
            hint::spin_loop();
        } else {
            thread::yield_now();
        }
        i = i.wrapping_add(1);
        if ready() {
            return true;
        }
        if i % 16 == 0 && start.elapsed() >= budget {
            return false;
        }
    }
}
