//! Reply slots, the owner's park handshake and the spin-then-park policy.
//!
//! A caller waits on a [`ReplySlot`] it reuses for every call (one per thread, taken out
//! of a thread-local while in use so a nested call on the same thread gets a fresh one).
//! The slot is [`Waiting`](SlotState::Waiting) while the caller spins,
//! [`Parking`](SlotState::Parking) once it has committed to sleep, and
//! [`Done`](SlotState::Done) when the job finished. The completer unparks only a Parking
//! waiter, and touches the slot only before publishing Done: a waiter never leaves before
//! it sees Done, so the slot (and the `Thread` handle in it) are alive until then.
//!
//! An owner thread publishes an [`OwnerState`] for its callers. Parking is a Dekker-style
//! handshake ([`OwnerStateCell::park_unless`] ↔ [`OwnerStateCell::unpark_if_parked`]):
//! the owner stores Parked, fences and re-checks its queue; a poster pushes, fences (in
//! `Mailbox::post`) and reads the state. With both `fence(SeqCst)`s, either the owner sees
//! the job or the poster sees Parked and unparks it.
//!
//! # Checked by a model
//!
//! Under `RUSTFLAGS="--cfg loom"` this module runs on loom's atomics, `park`/`unpark` and
//! scheduler (the `sync` shim below) and `mod loom_model` checks the protocol in every
//! interleaving loom explores (`tools/test` runs it). Loom regards SeqCst *accesses* as
//! AcqRel (weaker: false alarms, never a missed bug) but models `fence(SeqCst)` (its SB+fences
//! litmus test), which is what the owner handshake relies on, so the handshake is modelled
//! too, with an atomic counter standing in for the crossbeam channel. Not modelled: the
//! channel's own atomics (not loom's), the OS `park` and the clock (under loom the spin phase
//! is one `yield_now`, not a time budget). `tests/all/wakeups.rs` stresses the real owner
//! loop, channel and `park` for lost wake-ups.
//!
//! # Why not crossbeam-utils
//!
//! `Backoff` has no time budget and no way to yield at once while the target is nested
//! (`defer`), both of which the spin phase needs (measured, see ARCHITECTURE.md "Waiting").
//! `Parker`/`Unparker` would replace `Thread::park`/`unpark`, which already are one futex
//! word per thread, with an extra `Arc` per waiter and be invisible to loom (crossbeam
//! models itself only under its own `crossbeam_loom` cfg). So neither is used.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use sync::atomic::{fence, AtomicU8, Ordering};
use sync::thread::{self, Thread};

/// std's atomics and threads, or loom's under `--cfg loom` (the model checks this file's
/// code, not a copy of it).
#[cfg(not(loom))]
mod sync {
    pub(super) use std::sync::atomic;
    pub(super) use std::thread;
}
#[cfg(loom)]
mod sync {
    pub(super) use loom::sync::atomic;
    pub(super) use loom::thread;
}

/// A state kept in an [`AtomicState`] as its `u8` discriminant.
pub(crate) trait StateByte: Copy + fmt::Debug {
    fn to_u8(self) -> u8;
    /// Only ever given a byte that `to_u8` produced.
    fn from_u8(v: u8) -> Self;
}

/// An atomic cell holding one of the states `S`: loads, stores, swaps and compare-exchanges
/// with the caller's orderings, returning the enum.
pub(crate) struct AtomicState<S> {
    v: AtomicU8,
    _s: PhantomData<S>,
}

impl<S: StateByte> AtomicState<S> {
    pub(crate) fn new(s: S) -> Self {
        Self {
            v: AtomicU8::new(s.to_u8()),
            _s: PhantomData,
        }
    }

    pub(crate) fn load(&self, order: Ordering) -> S {
        S::from_u8(self.v.load(order))
    }

    pub(crate) fn store(&self, s: S, order: Ordering) {
        self.v.store(s.to_u8(), order);
    }

    pub(crate) fn swap(&self, s: S, order: Ordering) -> S {
        S::from_u8(self.v.swap(s.to_u8(), order))
    }

    pub(crate) fn compare_exchange(
        &self,
        current: S,
        new: S,
        success: Ordering,
        failure: Ordering,
    ) -> Result<S, S> {
        self.v
            .compare_exchange(current.to_u8(), new.to_u8(), success, failure)
            .map(S::from_u8)
            .map_err(S::from_u8)
    }
}

impl<S: StateByte> fmt::Debug for AtomicState<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.load(Ordering::Relaxed).fmt(f)
    }
}

/// Where one pending reply is.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Not done; the waiter may be spinning (the completer need not wake it).
    Waiting = 0,
    /// Not done; the waiter has committed to park (the completer must unpark it).
    Parking = 1,
    /// The job finished or was dropped; the slot may be gone or reused from now on.
    Done = 2,
}

impl StateByte for SlotState {
    fn to_u8(self) -> u8 {
        self as u8
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Waiting,
            1 => Self::Parking,
            2 => Self::Done,
            _ => unreachable!("reply slot state {v}"),
        }
    }
}

/// One pending reply: "the job has finished with the caller's data". The result itself is
/// written into the caller's stack frame (see `job.rs`); this only says when.
#[derive(Debug)]
pub(crate) struct ReplySlot {
    state: AtomicState<SlotState>,
    /// Read by the completer before it publishes Done. Under loom a cell whose accesses
    /// loom checks against the next call's reuse of the slot ([`reset`](Self::reset)).
    #[cfg(not(loom))]
    waiter: Thread,
    #[cfg(loom)]
    waiter: loom::cell::UnsafeCell<Thread>,
    /// Under loom: bumped by `reset` and read by `complete` between its Done and its
    /// `unpark`. Loom switches threads only at atomic operations that conflict with another
    /// thread's, running what lies between as one step (and its `unpark` hands the
    /// unparker's history to the target at once), so without this conflict the model would
    /// never reuse the slot in that window, where a completer reading the slot would race.
    #[cfg(loom)]
    reuse: AtomicU8,
}

impl ReplySlot {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicState::new(SlotState::Waiting),
            #[cfg(not(loom))]
            waiter: thread::current(),
            #[cfg(loom)]
            waiter: loom::cell::UnsafeCell::new(thread::current()),
            #[cfg(loom)]
            reuse: AtomicU8::new(0),
        }
    }

    /// Makes the slot ready for the next call of its thread. Only its waiter calls this,
    /// after it saw Done of the previous call (or before the first), so no completer
    /// touches the slot any more.
    pub(crate) fn reset(&self) {
        self.state.store(SlotState::Waiting, Ordering::Relaxed);
        // Under loom: the caller's frame is reused, which a completer still reading the
        // slot would race with (loom reports that).
        #[cfg(loom)]
        // SAFETY: R7 (a completer touches the slot only before Done). thread: the waiter's
        // own, after Done of the previous call; no interpreter or thread state involved.
        // loom's checked cell: no other reference to the handle exists while this runs.
        self.waiter.with_mut(|t| unsafe { *t = thread::current() });
        #[cfg(loom)]
        self.reuse.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(not(loom))]
    fn waiter(&self) -> Thread {
        self.waiter.clone()
    }

    #[cfg(loom)]
    fn waiter(&self) -> Thread {
        // SAFETY: R7. thread: the completer, before it publishes Done, so the waiter has
        // not reset the slot; no interpreter or thread state involved. loom's checked
        // cell: a shared read, written only by `reset`, which loom orders or reports.
        self.waiter.with(|t| unsafe { (*t).clone() })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == SlotState::Done
    }

    /// Publishes completion, waking the waiter only if it went to sleep. After Done is
    /// stored the slot may be gone.
    pub(crate) fn complete(&self) {
        match self.state.compare_exchange(
            SlotState::Waiting,
            SlotState::Done,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {} // the waiter is spinning and will see it
            Err(_) => {
                // Parking: the waiter cannot return before Done, so the handle is valid.
                let waiter = self.waiter();
                self.state.store(SlotState::Done, Ordering::Release);
                #[cfg(loom)]
                self.reuse.load(Ordering::Relaxed);
                waiter.unpark();
            }
        }
    }

    /// Blocks the current (owning) thread until [`complete`](Self::complete); `defer`
    /// as for [`spin_until`]. `committed` runs once it commits to park, before it sleeps
    /// (not if the reply came first).
    pub(crate) fn wait(&self, spin: Duration, defer: impl Fn() -> bool, committed: impl FnOnce()) {
        if spin_until(spin, || self.is_done(), defer) || !self.prepare_park() {
            return;
        }
        committed();
        self.park_until_done();
    }

    /// Commits to sleeping and parks until Done (spurious wake-ups are absorbed). Returns
    /// whether it committed (false: the reply was already there).
    pub(crate) fn park_until_done(&self) -> bool {
        if !self.prepare_park() {
            return false;
        }
        while !self.is_done() {
            thread::park();
        }
        true
    }

    /// Announces that the waiter may park from now on, so completion will unpark it.
    /// False if the reply is already there. Idempotent: an owner thread that parks, wakes
    /// for its own queue and parks again stays Parking.
    pub(crate) fn prepare_park(&self) -> bool {
        match self.state.compare_exchange(
            SlotState::Waiting,
            SlotState::Parking,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(s) => s == SlotState::Parking,
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
    slot.reset();
    let r = f(&slot);
    // During TLS teardown the slot is simply freed.
    let _ = SLOT.try_with(|c| c.set(Some(slot)));
    r
}

/// What an owner thread is doing, as published for its callers.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnerState {
    /// Parked (or about to park): a poster must unpark it; callers do not spin.
    Parked = 0,
    /// Running a job or looking for one.
    Running = 1,
    /// Waiting for another interpreter (nested service loop): its callers yield the CPU
    /// rather than spin, since the thread that must run next is a third one.
    Nested = 2,
}

impl StateByte for OwnerState {
    fn to_u8(self) -> u8 {
        self as u8
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Parked,
            1 => Self::Running,
            2 => Self::Nested,
            _ => unreachable!("owner state {v}"),
        }
    }
}

/// An owner thread's published [`OwnerState`], with both halves of the park handshake.
pub(crate) type OwnerStateCell = AtomicState<OwnerState>;

impl AtomicState<OwnerState> {
    /// Owner side: publishes Parked, then parks unless `idle()` (re-checked after the
    /// fence: nothing queued, nothing to finish) turned false. The caller stores its next
    /// state afterwards; wake-ups may be spurious.
    pub(crate) fn park_unless(&self, idle: impl FnOnce() -> bool) {
        self.store(OwnerState::Parked, Ordering::SeqCst);
        // Pairs with the fence in `wake_if_parked`: either `idle` sees the poster's job or
        // the poster sees Parked.
        fence(Ordering::SeqCst);
        if idle() {
            thread::park();
        }
    }

    /// Poster side, after its job is queued: calls `unpark` if the owner is (about to be)
    /// parked, and says whether it did. The model's poster (`Mailbox::post` fences itself
    /// and then calls [`unpark_if_parked`](Self::unpark_if_parked)).
    #[cfg(all(test, loom))]
    pub(crate) fn wake_if_parked(&self, unpark: impl FnOnce()) -> bool {
        // Pairs with the fence in `park_unless`.
        fence(Ordering::SeqCst);
        self.unpark_if_parked(unpark)
    }

    /// Poster side, after its job is queued *and* a `fence(SeqCst)` (pairs with the fence
    /// in `park_unless`; `Mailbox::post` calls its `wake` after its own fence): calls
    /// `unpark` if the owner is (about to be) parked, and says whether it did.
    pub(crate) fn unpark_if_parked(&self, unpark: impl FnOnce()) -> bool {
        if self.load(Ordering::SeqCst) == OwnerState::Parked {
            unpark();
            true
        } else {
            false
        }
    }
}

/// Spins before the first yield. A PAUSE costs ~50 ns on the reference VM, so this is a
/// few microseconds: about one hand-off of a short job. Longer pure spinning held cores
/// that a third thread needed (nested calls); shorter made every hand-off a syscall.
#[cfg(not(loom))]
const PURE_SPINS: u32 = 128;

/// Spins for at most `budget` until `ready()`; returns whether it became ready. Spins with
/// a CPU hint first, then yields so that on an oversubscribed machine the thread we wait
/// for can run; yields at once while `defer()` says the work is happening on a third
/// thread (the one we wait for is itself waiting).
#[cfg(not(loom))]
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
    let start = std::time::Instant::now();
    let mut i: u32 = 0;
    loop {
        // A yield is a syscall that may give the core away for a whole time slice on a
        // busy machine: the clock is read after each one (after every 16 pause hints).
        let yielded = if i < PURE_SPINS && !defer() {
            std::hint::spin_loop();
            false
        } else {
            thread::yield_now();
            true
        };
        i = i.wrapping_add(1);
        if ready() {
            return true;
        }
        if (yielded || i % 16 == 0) && start.elapsed() >= budget {
            return false;
        }
    }
}

/// The model's spin phase: the protocol without the clock. A non-zero budget is one yield
/// (loom then runs the other threads) and a second look.
#[cfg(loom)]
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
    let _ = defer();
    thread::yield_now();
    ready()
}

#[cfg(all(test, loom))]
mod loom_model;
