//! A job: a caller's closure, type-erased to two pointers so that posting it allocates
//! nothing. The closure and its result live in the caller's stack frame ([`Call`]); the
//! caller blocks until the job's reply slot is completed, which happens exactly once,
//! when the job runs or when it is dropped unrun (R7).

use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::capi::attach::Attached;
use crate::error::Result;
use crate::owner::wait::ReplySlot;

/// The caller-side frame a [`Job`] points into.
pub(crate) struct Call<F, R> {
    f: Option<F>,
    /// `None` until the job ran; then the closure's result or its panic payload.
    pub(crate) out: Option<std::thread::Result<Result<R>>>,
}

impl<F, R> Call<F, R>
where
    F: FnOnce(&Attached<'_>) -> Result<R>,
{
    pub(crate) fn new(f: F) -> Self {
        Self {
            f: Some(f),
            out: None,
        }
    }

    /// # Safety
    /// `data` points to a live `Call<F, R>` that nothing else touches until the job's
    /// slot completes; thread/tstate: `att` proves the target interpreter is attached.
    unsafe fn run_erased(data: NonNull<()>, att: &Attached<'_>) {
        // SAFETY: per the contract, `data` is the exclusive `&mut Call<F, R>` for now.
        let call = unsafe { data.cast::<Self>().as_mut() };
        if let Some(f) = call.f.take() {
            call.out = Some(panic::catch_unwind(AssertUnwindSafe(|| f(att))));
        }
    }
}

/// A posted call, as it travels through an interpreter's queue.
pub(crate) struct Job {
    run: unsafe fn(NonNull<()>, &Attached<'_>),
    data: NonNull<()>,
    slot: NonNull<ReplySlot>,
    /// Nesting depth the job runs at (caller's depth + 1).
    pub(crate) depth: usize,
}

// SAFETY: a Job is moved to the owner thread and run there. `data` points to a
// `Call<F, R>` with `F: Send, R: Send` (enforced by `InterpreterHandle::call`), and the
// thread that owns that frame and `slot` blocks until the slot completes (R7), so both
// outlive every use made through the Job on the other thread.
unsafe impl Send for Job {}

impl Job {
    /// # Safety
    /// `call` and `slot` stay valid, and are not otherwise accessed, until `slot` is
    /// complete; `F: Send` and `R: Send`.
    pub(crate) unsafe fn new<F, R>(call: &mut Call<F, R>, slot: &ReplySlot, depth: usize) -> Self
    where
        F: FnOnce(&Attached<'_>) -> Result<R>,
    {
        Self {
            run: Call::<F, R>::run_erased,
            data: NonNull::from(call).cast(),
            slot: NonNull::from(slot),
            depth,
        }
    }

    /// Runs the job on the owner thread, then `before_reply`, then completes its slot.
    pub(crate) fn execute_then(self, att: &Attached<'_>, before_reply: impl FnOnce()) {
        let done = self.execute(att);
        before_reply();
        drop(done);
    }

    /// Runs the job and returns it executed: dropping it completes the slot (the caller
    /// is released), which the runner may do after detaching and letting go of the
    /// interpreter, so that the caller's next call finds it free.
    pub(crate) fn execute(self, att: &Attached<'_>) -> Self {
        // SAFETY: the caller is still blocked on our slot (R7), so `data` is live and
        // exclusively ours; `att` proves the interpreter is attached.
        unsafe { (self.run)(self.data, att) };
        self
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: the slot outlives the job (R7); completing it releases the caller, which
        // reads `Call::out` (None if the job never ran: the interpreter was gone).
        unsafe { self.slot.as_ref() }.complete();
    }
}
