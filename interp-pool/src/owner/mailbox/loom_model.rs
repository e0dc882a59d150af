//! Loom model of the mailbox's close-versus-take race (`RUSTFLAGS="--cfg loom"`, see
//! `tools/test`).
//!
//! Runs the real [`Mailbox`] (`post`, `close`, `try_take`, `drain`) and the real
//! [`ReplySlot`] on loom's atomics and scheduler. Loom cannot see crossbeam's channel, so
//! under `--cfg loom` the mailbox's queue is a `loom::sync::Mutex<VecDeque>` (see
//! `mailbox.rs`): the model checks the mailbox's own flag and fences and the caller's wait,
//! not the channel. The job is a stand-in for `Job` with the same contract: running it
//! writes the caller's frame, and dropping it (run or not) completes the caller's slot.
//!
//! Three threads: a caller posts one job and waits by the rule under test, then reuses its
//! frame (the next call); a closer closes the mailbox (`end()` of a group or lane); a taker
//! takes whatever is queued and runs it (a member or seat). Loom fails the model on a data
//! race between the taker's write into the frame and the caller's reuse of it (a caller
//! that returned before its job ran: the use-after-free of R7), and on a deadlock (a job
//! nobody completes: the caller parks for ever).

use std::time::Duration;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use super::{Mailbox, Posted, Refused};
use crate::config::WhenFull;
use crate::owner::wait::ReplySlot;

/// Runs `f` under loom with a preemption bound (`LOOM_MAX_PREEMPTIONS` overrides it), as
/// `wait/loom_model.rs` does.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// The caller's frame: its reply slot and the result its job writes.
struct Frame {
    slot: ReplySlot,
    result: UnsafeCell<u32>,
}

/// Stands in for `Job`: points at the caller's frame; completes its slot when dropped.
struct ModelJob(Arc<Frame>);

impl ModelJob {
    /// `Job::execute_then`: writes the result into the caller's frame, then completes.
    fn run(self) {
        // SAFETY: R7: the caller does not touch its frame until the slot is Done, which
        // the drop below publishes; loom reports a race otherwise. No interpreter or
        // thread state involved.
        self.0.result.with_mut(|r| unsafe { *r = 7 });
    }
}

impl Drop for ModelJob {
    fn drop(&mut self) {
        self.0.slot.complete();
    }
}

/// How the caller treats a post.
#[derive(Clone, Copy)]
enum Rule {
    /// The mailbox rule: after a successful send, wait on the slot.
    Mailbox,
    /// The ordering `group.rs` and `main_pool.rs` used before the mailbox: a post that saw
    /// `closing` after its send drained and failed, and the caller returned at once.
    Before,
}

/// One call racing a close and a taker; `spin` is the caller's spin budget.
fn close_versus_take(rule: Rule, spin: Duration) {
    let mailbox = Arc::new(Mailbox::<ModelJob>::new(1, WhenFull::Fail));
    let frame = Arc::new(Frame {
        slot: ReplySlot::new(),
        result: UnsafeCell::new(0),
    });
    frame.slot.reset();
    {
        let mailbox = Arc::clone(&mailbox);
        thread::spawn(move || mailbox.close());
    }
    {
        let mailbox = Arc::clone(&mailbox);
        thread::spawn(move || {
            if let Some(job) = mailbox.try_take() {
                job.run();
            }
        });
    }
    let posted = mailbox.post(ModelJob(Arc::clone(&frame)), None, || false);
    let wait = match (rule, posted) {
        (_, Err(Refused::Closed)) => false,
        (_, Err(Refused::Full)) => unreachable!("one job in a queue of one"),
        (Rule::Before, Ok(Posted::Closed)) => false,
        (_, Ok(_)) => true,
    };
    if wait {
        frame.slot.wait(spin, || false, || ());
    }
    // The caller returns; its next call reuses the frame. Loom reports a race if the job
    // may still be writing it.
    // SAFETY: R7 is what the model checks: after Done (or a refusal, which dropped the job
    // unrun) nothing else touches the frame. No interpreter or thread state involved.
    let result = frame
        .result
        .with_mut(|r| unsafe { std::mem::replace(&mut *r, 0) });
    assert!(result == 0 || result == 7, "result {result}");
    frame.slot.reset();
}

/// The mailbox rule holds: whatever the order of send, take and close, the caller returns
/// only after its job ran (result 7) or was dropped unrun (0), and never parks for ever.
#[test]
fn loom_mailbox_close_versus_take() {
    for spin in [Duration::ZERO, Duration::from_nanos(1)] {
        model(move || close_versus_take(Rule::Mailbox, spin));
    }
}

/// The ordering before the mailbox fails: the taker takes the job between the caller's
/// send and its `closing` check, the closer's drain finds nothing, the caller drains
/// nothing and returns, and the taker then writes into the caller's reused frame.
#[test]
#[should_panic(expected = "Causality violation")]
fn loom_mailbox_close_versus_take_fails_with_the_ordering_before() {
    model(|| close_versus_take(Rule::Before, Duration::ZERO));
}
