//! Loom model of the waiting protocol (`RUSTFLAGS="--cfg loom"`, see `tools/test`).
//!
//! Runs the real [`ReplySlot`] and [`OwnerStateCell`] code of `wait.rs` on loom's atomics,
//! `park`/`unpark` and scheduler, in every interleaving loom explores (up to a preemption
//! bound). Loom fails a model on a panic (an assertion here), a data race on a
//! `loom::cell::UnsafeCell` (the reply's result, and the slot's `Thread` handle against its
//! reuse by the next call), and on a deadlock: every thread parked or blocked, which is
//! what a lost wake-up looks like.
//!
//! What loom does and does not model: SeqCst *accesses* are treated as AcqRel (weaker than
//! the real thing: a false alarm is possible, a missed bug is not), `fence(SeqCst)` is
//! modelled (the owner handshake relies on the fences, not on SeqCst accesses), and some
//! load-buffering executions are not explored. The owner's crossbeam channel is not loom's:
//! [`Queue`] stands in for it with relaxed operations (weaker than the channel's), so the
//! handshake must hold by the fences alone; the serve loop below mirrors `Owner::serve`,
//! which needs an interpreter. `tests/all/wakeups.rs` stresses the real loop.

use std::time::Duration;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use super::{spin_until, OwnerState, OwnerStateCell, ReplySlot};

// The completers are not joined: a completer's `unpark` may still be on its way when the
// waiter is done (harmless, and the point of the reuse model), and loom 0.7 lets an
// `unpark` wake a thread blocked in `JoinHandle::join`, which then fails loom's own
// assertion (rt/notify.rs). Loom still runs every thread to its end and checks it.

/// Spin budgets the models run with: park at once, or spin (one yield) first.
const SPINS: [Duration; 2] = [Duration::ZERO, Duration::from_nanos(1)];

/// Runs `f` under loom with a preemption bound (`LOOM_MAX_PREEMPTIONS` overrides it), so
/// the whole model stays well under a minute in release builds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// The caller's frame: the result a job writes before completing the slot.
struct Frame {
    slot: ReplySlot,
    result: UnsafeCell<u32>,
}

impl Frame {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: ReplySlot::new(),
            result: UnsafeCell::new(0),
        })
    }

    /// The job: writes its result into the caller's frame, then completes the slot.
    fn complete_with(&self, v: u32) {
        // SAFETY: R7 (the caller reads the result only after Done); loom checks it. No
        // interpreter or thread state involved.
        self.result.with_mut(|r| unsafe { *r = v });
        self.slot.complete();
    }

    /// The caller's side of one call: waits, then reads the result.
    fn wait_for(&self, spin: Duration) -> u32 {
        self.slot.wait(spin, || false, || ());
        assert!(self.slot.is_done(), "wait returned before Done");
        // SAFETY: R7: the slot is Done, so the job's write happened before this read;
        // loom reports it otherwise. No interpreter or thread state involved.
        self.result.with(|r| unsafe { *r })
    }
}

/// One call: a waiter that spins (or not), commits to Parking and parks; a completer that
/// publishes Done and unparks only a committed sleeper. The waiter never returns before
/// Done, and sees the job's result.
#[test]
fn loom_reply_one_call() {
    for spin in SPINS {
        model(move || {
            let frame = Frame::new();
            frame.slot.reset();
            {
                let frame = Arc::clone(&frame);
                thread::spawn(move || frame.complete_with(7));
            }
            assert_eq!(frame.wait_for(spin), 7);
        });
    }
}

/// The same slot reused by the thread's next call: the first call's completer may still be
/// running (after it published Done) while the slot is reset and waited on again. It must
/// not touch the slot then (loom would see its read of the handle race with the reset),
/// and its late `unpark` is a spurious wake-up the second wait absorbs.
#[test]
fn loom_reply_slot_reused_by_next_call() {
    for spin in SPINS {
        model(move || {
            let frame = Frame::new();
            frame.slot.reset();
            {
                let frame = Arc::clone(&frame);
                thread::spawn(move || frame.complete_with(1));
            }
            assert_eq!(frame.wait_for(spin), 1);
            frame.slot.reset();
            {
                let frame = Arc::clone(&frame);
                thread::spawn(move || frame.complete_with(2));
            }
            assert_eq!(frame.wait_for(spin), 2);
        });
    }
}

/// Stands in for an owner's job queue (a crossbeam channel, whose atomics loom does not
/// see). Relaxed, so the park handshake has only its fences to rely on.
struct Queue(AtomicUsize);

impl Queue {
    fn push(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn is_empty(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
    /// Single consumer (the owner), like the channel's receiver here.
    fn try_take(&self) -> bool {
        if self.is_empty() {
            return false;
        }
        self.0.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

/// An owner thread's shared half (`OwnerLink`): its state, queue and thread handle.
struct Owner {
    state: OwnerStateCell,
    queue: Queue,
    thread: thread::Thread,
}

impl Owner {
    /// Made on the owner thread.
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: OwnerStateCell::new(OwnerState::Running),
            queue: Queue(AtomicUsize::new(0)),
            thread: thread::current(),
        })
    }

    /// `OwnerLink::post`: queue a job, then wake the owner if it parked.
    fn post(&self) {
        self.queue.push();
        self.state.wake_if_parked(|| self.thread.unpark());
    }

    /// `Owner::serve`'s loop (minus running Python): serves the queue until `wait_on` is
    /// done, or, at top level, until `finished(served)`; returns how many jobs it ran.
    fn serve(
        &self,
        wait_on: Option<&ReplySlot>,
        spin: Duration,
        finished: impl Fn(usize) -> bool,
    ) -> usize {
        let mut served = 0;
        let done = |served| match wait_on {
            Some(slot) => slot.is_done(),
            None => finished(served),
        };
        let waiting = if wait_on.is_some() {
            OwnerState::Nested
        } else {
            OwnerState::Running
        };
        self.state.store(waiting, Ordering::Relaxed);
        loop {
            if self.queue.try_take() {
                self.state.store(OwnerState::Running, Ordering::Relaxed);
                served += 1;
                self.state.store(waiting, Ordering::Relaxed);
                continue;
            }
            if done(served) {
                break;
            }
            if spin_until(spin, || done(served) || !self.queue.is_empty(), || false) {
                continue;
            }
            if let Some(slot) = wait_on {
                if !slot.prepare_park() {
                    continue;
                }
            }
            self.state
                .park_unless(|| !done(served) && self.queue.is_empty());
            self.state.store(waiting, Ordering::SeqCst);
        }
        self.state.store(OwnerState::Running, Ordering::Relaxed);
        served
    }
}

/// The owner's park handshake at top level: two posters, an owner that parks whenever its
/// queue looks empty. Every job is served (a lost wake-up leaves the owner parked with a
/// job queued: loom reports the deadlock).
#[test]
fn loom_owner_park_handshake() {
    model(|| {
        let owner = Owner::new();
        for _ in 0..2 {
            let owner = Arc::clone(&owner);
            thread::spawn(move || owner.post());
        }
        assert_eq!(owner.serve(None, Duration::ZERO, |served| served == 2), 2);
    });
}

/// The nested case: an owner waits for its reply (the slot) and meanwhile serves a job
/// posted to its own queue, parking and waking possibly several times: `prepare_park`
/// stays true while the slot is Parking (idempotent), the completer's unpark and the
/// poster's are both honoured, and the job is served (nested, or by the top-level loop
/// afterwards).
#[test]
fn loom_nested_prepare_park_idempotent() {
    for spin in SPINS {
        model(move || {
            let owner = Owner::new();
            let frame = Frame::new();
            frame.slot.reset();
            {
                let owner = Arc::clone(&owner);
                thread::spawn(move || owner.post());
            }
            {
                let frame = Arc::clone(&frame);
                thread::spawn(move || frame.complete_with(3));
            }
            let nested = owner.serve(Some(&frame.slot), spin, |_| false);
            // SAFETY: R7: `serve` returned, so the slot is Done and the job's write
            // happened before; loom checks it. No interpreter or thread state involved.
            assert_eq!(frame.result.with(|r| unsafe { *r }), 3);
            let top = owner.serve(None, spin, |served| nested + served == 1);
            assert_eq!(nested + top, 1);
        });
    }
}
