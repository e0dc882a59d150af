//! Reply slots and the spin-then-park policy.
//!
//! A caller waits on a [`ReplySlot`] it reuses for every call (one per thread, taken out
//! of a thread-local while in use so a nested call on the same thread gets a fresh one).
//! The slot is WAITING while the caller spins, PARKING once it has committed to sleep, and
//! DONE when the job finished. The completer unparks only a PARKING waiter, and touches the
//! slot only before publishing DONE: a waiter never leaves before it sees DONE, so the slot
//! (and the `Thread` handle in it) are alive until then.

use std::cell::Cell;
use std::hint;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

const WAITING: u8 = 0;
const PARKING: u8 = 1;
const DONE: u8 = 2;

/// One pending reply: "the job has finished with the caller's data". The result itself is
/// written into the caller's stack frame (see `job.rs`); this only says when.
#[derive(Debug)]
pub(crate) struct ReplySlot {
    state: AtomicU8,
    waiter: Thread,
}

impl ReplySlot {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(WAITING),
            waiter: thread::current(),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }

    /// Publishes completion, waking the waiter only if it went to sleep. After DONE is
    /// stored the slot may be gone.
    pub(crate) fn complete(&self) {
        match self
            .state
            .compare_exchange(WAITING, DONE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {} // the waiter is spinning and will see it
            Err(_) => {
                // PARKING: the waiter cannot return before DONE, so the handle is valid.
                let waiter = self.waiter.clone();
                self.state.store(DONE, Ordering::Release);
                waiter.unpark();
            }
        }
    }

    /// Blocks the current (owning) thread until [`complete`](Self::complete); `defer`
    /// as for [`spin_until`].
    pub(crate) fn wait(&self, spin: Duration, defer: impl Fn() -> bool) {
        if spin_until(spin, || self.is_done(), defer) {
            return;
        }
        self.park_until_done();
    }

    /// Commits to sleeping and parks until DONE (spurious wake-ups are absorbed).
    pub(crate) fn park_until_done(&self) {
        if !self.prepare_park() {
            return;
        }
        while !self.is_done() {
            thread::park();
        }
    }

    /// Announces that the waiter may park from now on, so completion will unpark it.
    /// False if the reply is already there. Idempotent: an owner thread that parks, wakes
    /// for its own queue and parks again stays PARKING.
    pub(crate) fn prepare_park(&self) -> bool {
        match self
            .state
            .compare_exchange(WAITING, PARKING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(s) => s == PARKING,
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
    slot.state.store(WAITING, Ordering::Relaxed);
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
