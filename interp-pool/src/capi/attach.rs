//! Attaching and detaching thread states: the only module that calls
//! `PyEval_RestoreThread` / `PyEval_SaveThread`, and the only one that makes an
//! [`Attached`] token.
//!
//! Every guard restores exactly the state it found, so neither `?` nor a panic can leave
//! a thread attached to the wrong interpreter (ARCHITECTURE.md, R3 and R4). The thread
//! states' life-ends (`Py_EndInterpreter`, deleting a thread state, finalizing) attach
//! here too, so a grep for `PyEval_` finds every attach and detach of the crate.

use std::ffi::c_int;
use std::marker::PhantomData;

use crate::capi::ffi::{self, sys};
use crate::InterpreterId;

/// Proof that a thread state of interpreter [`Attached::id`] is attached on the current
/// thread, so this thread holds that interpreter's GIL (R10).
///
/// Jobs receive `&Attached`; Python objects ([`PyObj`](crate::PyObj)) borrow from it, so
/// none can outlive the job or leave the thread. `Attached` is neither `Send` nor `Sync`.
///
/// It says nothing about *which* thread state: on an owner thread it is the interpreter's
/// own, inside a [native function](crate::Attached::native_function) it is whatever thread state
/// CPython called from (a plugin's `threading` thread, a host thread in the main
/// interpreter). No operation that takes a token needs more than "this interpreter's GIL
/// is held here"; what needs ownership (inline calls, [`Persistent`](crate::Persistent)'s
/// release) checks the thread's registration in `activation` instead.
#[derive(Debug)]
pub struct Attached<'a> {
    id: InterpreterId,
    /// `&'a ()`: borrowed from the guard or scope that made it. `*mut ()`: `!Send + !Sync`.
    _bound: PhantomData<(&'a (), *mut ())>,
}

impl Attached<'_> {
    /// Runs `f` with a token for interpreter `id`; the token cannot outlive `f`.
    ///
    /// # Safety
    /// R10: a thread state of interpreter `id` is attached on this thread for the whole of
    /// `f`: CPython guarantees it inside a native function it calls, and an owner thread
    /// whose own thread state is current (checked by the caller) has it by R2/R3.
    pub(crate) unsafe fn scope<R>(id: InterpreterId, f: impl FnOnce(&Attached<'_>) -> R) -> R {
        let token = Attached {
            id,
            _bound: PhantomData,
        };
        f(&token)
    }

    /// The interpreter this thread is attached to.
    pub fn id(&self) -> InterpreterId {
        self.id
    }

    /// Runs `f` with this thread's thread state detached (the GIL released), then
    /// re-attaches it. `f` is `Send`, so it can capture neither this token nor a
    /// [`PyObj`](crate::PyObj): nothing touches Python while detached (R4).
    pub(crate) fn detached<R>(&self, f: impl FnOnce() -> R + Send) -> R {
        let _reattach = DetachGuard::detach_current();
        f()
    }
}

/// Attaches `ts` now and detaches it on drop, clearing any exception left pending (R6).
pub(crate) struct AttachGuard {
    ts: *mut sys::PyThreadState,
    id: InterpreterId,
}

impl AttachGuard {
    /// # Safety
    /// R2/R3: this thread is the owner of `ts`'s interpreter `id`, which is alive. R4: no
    /// thread state is attached on this thread (checked in debug builds).
    pub(crate) unsafe fn attach(ts: *mut sys::PyThreadState, id: InterpreterId) -> Self {
        debug_assert!(ffi::current_tstate().is_null());
        // SAFETY: R2/R3: thread: owner of `ts` (caller's contract), so `ts` belongs to this
        // OS thread. tstate: none attached, as PyEval_RestoreThread requires.
        unsafe { sys::PyEval_RestoreThread(ts) };
        Self { ts, id }
    }

    /// The token for this attachment; it cannot outlive the guard.
    pub(crate) fn token(&self) -> Attached<'_> {
        Attached {
            id: self.id,
            _bound: PhantomData,
        }
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        debug_assert_eq!(ffi::current_tstate(), self.ts);
        // SAFETY: R6: thread: the owner that attached `self.ts` in `attach` (the guard is
        // !Send); tstate: `self.ts` is attached, so the error indicator may be read.
        let pending = unsafe { sys::PyErr_Occurred() };
        if !pending.is_null() {
            // SAFETY: R6: as above, attached; clears the leftover indicator before detaching.
            unsafe { sys::PyErr_Clear() };
        }
        // SAFETY: R4: thread: the owner; tstate: `self.ts` attached, so it may be saved.
        unsafe { sys::PyEval_SaveThread() };
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
            // SAFETY: R4: thread: this one. tstate: one is attached (just checked), so
            // PyEval_SaveThread may release it; it returns that same tstate.
            unsafe { sys::PyEval_SaveThread() }
        };
        Self { saved }
    }
}

impl Drop for DetachGuard {
    fn drop(&mut self) {
        if !self.saved.is_null() {
            // SAFETY: R4: thread: the one that saved `self.saved` (guard is !Send); its
            // interpreter is still alive because this thread's call into it is still on
            // the stack. tstate: none attached, since we detached it in `detach_current`
            // and every nested attach on this thread is undone by its own guard.
            unsafe { sys::PyEval_RestoreThread(self.saved) };
        }
    }
}

/// Detaches the thread state that creation (`Py_NewInterpreterFromConfig`,
/// `Py_InitializeEx`) left attached on this thread, and returns it.
///
/// # Safety
/// R1/R2: a thread state is attached on this thread (just created by CPython here).
pub(crate) unsafe fn detach_created() -> *mut sys::PyThreadState {
    // SAFETY: R1/R2: per the contract a thread state is attached, so it may be saved.
    unsafe { sys::PyEval_SaveThread() }
}

/// Attaches the owner's creation thread state `ts`, runs `last` (releasing what the pool
/// itself keeps in the interpreter), and ends the interpreter.
///
/// # Safety
/// R2: this is the owner thread that created `ts` for interpreter `id`; no thread state
/// is attached; no call runs in the interpreter any more and no other thread state exists
/// in it (R3's interrupter is kept out by the caller holding the interrupt lock,
/// `InterruptTarget::lock_out`).
pub(crate) unsafe fn end_interpreter(
    ts: *mut sys::PyThreadState,
    id: InterpreterId,
    last: impl FnOnce(&Attached<'_>),
) {
    // SAFETY: R2: thread: the owner of `ts`; tstate: none attached (contract).
    unsafe { sys::PyEval_RestoreThread(ts) };
    // SAFETY: R10: `ts`, a thread state of `id`, is attached during the scope.
    unsafe { Attached::scope(id, last) };
    // SAFETY: R2: `ts` is current and the interpreter's only thread state, as
    // Py_EndInterpreter requires; afterwards no thread state is attached.
    unsafe { sys::Py_EndInterpreter(ts) };
}

/// Attaches `ts` (this thread's own thread state in interpreter `id`, not yet attached),
/// runs `last`, then clears and deletes it; afterwards no thread state is attached.
///
/// # Safety
/// R2/R3: `ts` was made by and belongs to this thread, its interpreter is alive, and no
/// thread state is attached on this thread.
pub(crate) unsafe fn delete_thread_state(
    ts: *mut sys::PyThreadState,
    id: InterpreterId,
    last: impl FnOnce(&Attached<'_>),
) {
    // SAFETY: R2/R3: `ts` is this thread's; none attached (contract).
    unsafe { sys::PyEval_RestoreThread(ts) };
    // SAFETY: R10: `ts`, a thread state of `id`, is attached during the scope.
    unsafe { Attached::scope(id, last) };
    // SAFETY: R6: `ts` is attached; leave no exception behind in a state about to go.
    unsafe { sys::PyErr_Clear() };
    // SAFETY: R2: `ts` is attached, as PyThreadState_Clear requires of a current tstate.
    unsafe { sys::PyThreadState_Clear(ts) };
    // SAFETY: R2: `ts` is current and cleared; deleting it also detaches it.
    unsafe { sys::PyThreadState_DeleteCurrent() };
}

/// Creates a thread state of this thread's own in `interp`, attaches it, runs `f` with a
/// token, then clears and deletes it. `None` if CPython could not make one.
///
/// # Safety
/// R3 (its one exception): `interp` is alive and cannot end until this returns (the
/// caller holds the interpreter's interrupt lock, `InterruptTarget::lock_out`); no thread
/// state is attached on this thread. Attaching waits for the interpreter's GIL.
pub(crate) unsafe fn with_foreign_thread_state<R>(
    interp: *mut sys::PyInterpreterState,
    id: InterpreterId,
    f: impl FnOnce(&Attached<'_>) -> R,
) -> Option<R> {
    // SAFETY: R3: `interp` is alive (contract); PyThreadState_New needs no GIL and binds
    // the new thread state to this thread, unattached.
    let ts = unsafe { sys::PyThreadState_New(interp) };
    if ts.is_null() {
        return None;
    }
    // SAFETY: R3: `ts` is ours and unattached; none is attached on this thread.
    unsafe { sys::PyEval_RestoreThread(ts) };
    // SAFETY: R10: `ts`, a thread state of `id`, is attached for the whole of `f`.
    let out = unsafe { Attached::scope(id, f) };
    // SAFETY: R6: `ts` is attached; leave no exception behind in a state about to go.
    unsafe { sys::PyErr_Clear() };
    // SAFETY: R2: `ts` is attached, as PyThreadState_Clear requires.
    unsafe { sys::PyThreadState_Clear(ts) };
    // SAFETY: R2: `ts` is current and cleared; deleting it also detaches it.
    unsafe { sys::PyThreadState_DeleteCurrent() };
    Some(out)
}

/// Attaches main's saved thread state on py-main and finalizes CPython; returns
/// `Py_FinalizeEx`'s status.
///
/// # Safety
/// R9: this is py-main, which initialised CPython and saved `main_ts`; no thread state is
/// attached; every interpreter of the pool has ended.
pub(crate) unsafe fn finalize(main_ts: *mut sys::PyThreadState) -> c_int {
    // SAFETY: R1/R9: `main_ts` is main's, saved on this thread; none attached.
    unsafe { sys::PyEval_RestoreThread(main_ts) };
    // SAFETY: R9: main attached on the initialising thread, every subinterpreter ended.
    unsafe { sys::Py_FinalizeEx() }
}

/// A new thread state of this thread's own in `interp` (id `id`), unattached, which is not
/// this thread's PyGILState state (`csrc/host_state.c`): a caller's state for direct calls.
/// `None` if CPython could not make one.
///
/// # Safety
/// R13: this thread holds the interpreter's claim (so it is alive and not ending).
pub(crate) unsafe fn new_host_state(
    interp: *mut sys::PyInterpreterState,
) -> Option<*mut sys::PyThreadState> {
    // SAFETY: R13: `interp` is alive while we hold its claim; PyThreadState_New needs no
    // GIL (it takes the runtime's head lock); the shim leaves the thread's PyGILState
    // binding as it found it.
    let ts = unsafe { ffi::shim::interp_pool_host_state_new(interp) };
    (!ts.is_null()).then_some(ts)
}

/// Attaches a host-thread state for one direct call and detaches it on drop, clearing a
/// leftover exception (R6). While attached, the state is the thread's PyGILState state (a
/// ctypes or sqlite3 callback inside the call attaches it, as on an owner thread); on drop
/// the thread gets its previous binding back (`csrc/host_state.c`).
pub(crate) struct HostAttachGuard {
    ts: *mut sys::PyThreadState,
    prev: *mut sys::PyThreadState,
    id: InterpreterId,
}

impl HostAttachGuard {
    /// # Safety
    /// R13: `ts` was made on this thread by [`new_host_state`] for interpreter `id`, this
    /// thread holds that interpreter's claim, and no thread state is attached here (R4).
    pub(crate) unsafe fn attach(ts: *mut sys::PyThreadState, id: InterpreterId) -> Self {
        debug_assert!(ffi::current_tstate().is_null());
        // SAFETY: R13: `ts` is this thread's, its interpreter alive and ours to attach
        // (claim held); none attached here.
        let prev = unsafe { ffi::shim::interp_pool_host_attach(ts) };
        Self { ts, prev, id }
    }

    /// The token for this attachment; it cannot outlive the guard.
    pub(crate) fn token(&self) -> Attached<'_> {
        Attached {
            id: self.id,
            _bound: PhantomData,
        }
    }
}

impl Drop for HostAttachGuard {
    fn drop(&mut self) {
        debug_assert_eq!(ffi::current_tstate(), self.ts);
        // SAFETY: R6: thread: the one that attached `self.ts` (the guard is !Send); attached.
        let pending = unsafe { sys::PyErr_Occurred() };
        if !pending.is_null() {
            // SAFETY: R6: as above, attached; clears the leftover indicator before detaching.
            unsafe { sys::PyErr_Clear() };
        }
        // SAFETY: R13: `self.ts` is attached on this thread by `attach`, which returned
        // `self.prev`; detaching restores that binding.
        unsafe { ffi::shim::interp_pool_host_detach(self.ts, self.prev) };
    }
}

/// Clears and deletes the host-thread state `ts` of `att`'s interpreter, made on another
/// thread (which may have exited) and attached nowhere.
///
/// # Safety
/// R13: `ts` belongs to `att`'s interpreter, is not attached and never will be again (its
/// thread gave it up, or the interpreter is ending), and no interrupter holds a thread
/// state for it (its target's interrupt lock is held and marked ended).
pub(crate) unsafe fn delete_host_state(_att: &Attached<'_>, ts: *mut sys::PyThreadState) {
    // SAFETY: R13 per the contract; R10: `_att` proves a thread state of the same
    // interpreter is attached here, as PyThreadState_Clear requires.
    unsafe { ffi::shim::interp_pool_host_state_delete(ts) }
}

/// Bounds the C recursion depth of the host-thread state `ts` for the call about to run on
/// it (CPython raises RecursionError past it).
///
/// # Safety
/// R13: `ts` is this thread's own host-thread state, not attached (so no C code counts on
/// it meanwhile).
pub(crate) unsafe fn set_c_recursion(ts: *mut sys::PyThreadState, remaining: i32) {
    // SAFETY: R13: an int field of a thread state only this thread uses.
    unsafe { ffi::shim::interp_pool_set_c_recursion(ts, remaining) }
}

/// CPython's C recursion bound for a fresh thread state (10 000 on 3.13, 1 500 on 3.12,
/// release builds), sized for an 8 MiB stack.
pub(crate) fn c_recursion_limit() -> i32 {
    // SAFETY: returns a compile-time constant; touches no Python state.
    unsafe { ffi::shim::interp_pool_c_recursion_limit() }
}
