//! Attaching and detaching thread states: the only module that calls
//! `PyEval_RestoreThread` / `PyEval_SaveThread`.
//!
//! Every guard restores exactly the state it found, so neither `?` nor a panic can leave
//! a thread attached to the wrong interpreter (ARCHITECTURE.md, R3 and R4).

use std::marker::PhantomData;

use crate::ffi::{self, sys};
use crate::InterpreterId;

/// Proof that the current thread is the owner of interpreter [`Attached::id`] and has
/// its thread state attached.
///
/// Jobs receive `&Attached`; Python objects ([`PyObj`](crate::PyObj)) borrow from it, so
/// none can outlive the job or leave the owner thread. `Attached` is neither `Send` nor
/// `Sync`.
#[derive(Debug)]
pub struct Attached<'a> {
    id: InterpreterId,
    _not_send: PhantomData<(&'a (), *mut ())>,
}

impl Attached<'_> {
    /// # Safety
    /// thread: the owner of `id`; tstate: `id`'s thread state is attached for as long as
    /// the returned token lives.
    pub(crate) unsafe fn assume(id: InterpreterId) -> Self {
        Self {
            id,
            _not_send: PhantomData,
        }
    }

    /// The interpreter this thread is attached to.
    pub fn id(&self) -> InterpreterId {
        self.id
    }
}

/// Attaches `ts` now and detaches it on drop, clearing any exception left pending (R6).
pub(crate) struct AttachGuard {
    ts: *mut sys::PyThreadState,
}

impl AttachGuard {
    /// # Safety
    /// thread: the owner of `ts`'s interpreter, which is alive. tstate: none attached on
    /// this thread (checked in debug builds).
    pub(crate) unsafe fn attach(ts: *mut sys::PyThreadState) -> Self {
        debug_assert!(ffi::current_tstate().is_null());
        // SAFETY: thread: owner of `ts` (caller's contract), so `ts` belongs to this OS
        // thread. tstate: none attached, as PyEval_RestoreThread requires.
        unsafe { sys::PyEval_RestoreThread(ts) };
        Self { ts }
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        debug_assert_eq!(ffi::current_tstate(), self.ts);
        // SAFETY: thread: the owner that attached `self.ts` in `attach` (the guard is
        // !Send). tstate: `self.ts` is attached, so the error indicator may be read and
        // cleared and the thread state saved.
        unsafe {
            if !sys::PyErr_Occurred().is_null() {
                sys::PyErr_Clear();
            }
            sys::PyEval_SaveThread();
        }
    }
}

/// Detaches whatever thread state is attached on this thread (if any) and re-attaches
/// it on drop: for a thread about to block on another interpreter (R4).
pub(crate) struct DetachGuard {
    saved: *mut sys::PyThreadState,
}

impl DetachGuard {
    pub(crate) fn detach_current() -> Self {
        let saved = if ffi::current_tstate().is_null() {
            std::ptr::null_mut()
        } else {
            // SAFETY: thread: this one. tstate: one is attached (just checked), so
            // PyEval_SaveThread may release it; it returns that same tstate.
            unsafe { sys::PyEval_SaveThread() }
        };
        Self { saved }
    }
}

impl Drop for DetachGuard {
    fn drop(&mut self) {
        if !self.saved.is_null() {
            // SAFETY: thread: the one that saved `self.saved` (guard is !Send); its
            // interpreter is still alive because this thread's call into it is still on
            // the stack. tstate: none attached, since we detached it in `detach_current`
            // and every nested attach on this thread is undone by its own guard.
            unsafe { sys::PyEval_RestoreThread(self.saved) };
        }
    }
}
