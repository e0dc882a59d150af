//! An interpreter's claim: who may attach it now (R13). Under direct dispatch a caller's
//! thread may run a call itself, so the owner thread is no longer the only one that
//! attaches: whoever holds the claim is. The owner takes it for each job it runs from its
//! top-level loop (and keeps it through the job's nested waits); a caller takes it for a
//! direct call when it is free; the owner closes it for good before it ends the interpreter.
//! Holding the claim is what keeps the interpreter alive and its calls one at a time: the
//! owner never contends with a claimant for the interpreter's GIL.

use std::sync::atomic::{AtomicU8, Ordering};

const FREE: u8 = 0;
const OWNER: u8 = 1;
const CALLER: u8 = 2;
const CLOSED: u8 = 3;

#[derive(Debug, Default)]
pub(crate) struct Claim(AtomicU8);

impl Claim {
    /// A caller's thread takes a free claim for one direct call.
    pub(crate) fn try_caller(&self) -> bool {
        self.0
            .compare_exchange(FREE, CALLER, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// The owner takes a free claim to run a job from its top-level loop.
    pub(crate) fn try_owner(&self) -> bool {
        self.0
            .compare_exchange(FREE, OWNER, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// The holder lets go. SeqCst: the releasing caller then reads the owner's state and
    /// the queues (`direct::Claimed`'s drop), a Dekker pair with the owner's park, which
    /// stores Parked and then reads this.
    pub(crate) fn release(&self) {
        self.0.store(FREE, Ordering::SeqCst);
    }

    pub(crate) fn is_free(&self) -> bool {
        self.0.load(Ordering::SeqCst) == FREE
    }

    /// Whether a caller's thread holds it (running a direct call).
    pub(crate) fn held_by_caller(&self) -> bool {
        self.0.load(Ordering::SeqCst) == CALLER
    }

    /// The owner, before ending the interpreter: takes the claim for good once it is free
    /// (a direct call in progress finishes first). Returns at once if already closed.
    pub(crate) fn close(&self, mut wait: impl FnMut()) {
        loop {
            match self
                .0
                .compare_exchange(FREE, CLOSED, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(CLOSED) => return,
                Err(_) => wait(),
            }
        }
    }
}
