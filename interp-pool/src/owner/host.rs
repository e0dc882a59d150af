//! The host-thread states of one interpreter (direct dispatch, R13): every thread state a
//! caller's thread made for it, so that the owner can delete them all before
//! `Py_EndInterpreter` (which aborts the process if any other thread state is left), and
//! so that the ones their threads gave up (the thread exited, or evicted it from its
//! cache) are deleted sooner, by the interpreter's next call.
//!
//! Each state is known by its interrupt target (`InterruptTarget`: the thread state, its
//! thread's ident, the interrupt classes it shares with the owner, its interrupt lock).
//! A state is deleted only by a thread attached to the interpreter through *another*
//! thread state while holding the claim (the owner after a posted job or at the end, a
//! caller's thread after a direct call), after taking the state's interrupt lock and
//! marking it ended, so no interrupter attaches for it afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::capi::attach::{self, Attached};
use crate::governance::interrupt::InterruptTarget;

/// Deletes host-thread state `state` of `att`'s interpreter, its interrupt lock held and
/// marked ended.
pub(crate) fn delete(att: &Attached<'_>, state: &InterruptTarget) {
    state.classes.release(att);
    // SAFETY: R13: a state of `att`'s interpreter that its thread gave up (or the
    // interpreter is ending, its claim closed): nobody attaches it again; its interrupt
    // lock is held by our caller and marked ended, so no interrupter attaches for it.
    unsafe { attach::delete_host_state(att, state.ts()) };
}

#[derive(Debug, Default)]
pub(crate) struct HostStates {
    inner: Mutex<Inner>,
    /// Some state was given up and awaits deletion (read by the owner's loop).
    doomed: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    live: Vec<Arc<InterruptTarget>>,
    doomed: Vec<Arc<InterruptTarget>>,
    /// Set by the owner before it ends the interpreter: no state is added afterwards.
    ended: bool,
}

impl HostStates {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new state (its thread holds the claim); false once the interpreter ends
    /// (cannot happen while the claim is held: the owner closes the claim first).
    pub(crate) fn add(&self, state: &Arc<InterruptTarget>) -> bool {
        let mut inner = self.lock();
        if inner.ended {
            return false;
        }
        inner.live.push(Arc::clone(state));
        true
    }

    /// Its thread gives `state` up (never attaches it again): the next call holding the
    /// interpreter deletes it (`delete_doomed`). Nothing if the interpreter ended (its
    /// owner deleted every state).
    pub(crate) fn give_up(&self, state: &Arc<InterruptTarget>) {
        let mut inner = self.lock();
        if inner.ended {
            return;
        }
        if let Some(pos) = inner.live.iter().position(|s| Arc::ptr_eq(s, state)) {
            let state = inner.live.swap_remove(pos);
            inner.doomed.push(state);
            self.doomed.store(true, Ordering::SeqCst);
        }
    }

    /// Whether states await deletion.
    pub(crate) fn has_doomed(&self) -> bool {
        self.doomed.load(Ordering::SeqCst)
    }

    /// Deletes the states their threads gave up, from a thread attached to the interpreter
    /// through another of its thread states (`att`) and holding its claim (its owner
    /// running a posted job, or a caller's thread at the end of a direct call). A state
    /// whose interrupt lock is taken (an interrupter of a call it ran, waiting for the GIL
    /// we hold) is left for next time: waiting for it here would deadlock.
    pub(crate) fn delete_doomed(&self, att: &Attached<'_>) {
        if !self.has_doomed() {
            return;
        }
        let mut kept = {
            let mut inner = self.lock();
            self.doomed.store(false, Ordering::SeqCst);
            std::mem::take(&mut inner.doomed)
        };
        let current = crate::capi::ffi::current_tstate();
        kept.retain(|state| {
            // Never the state this thread runs on (a given-up state is not attached
            // anywhere; this only guards that rule).
            if state.ts() == current {
                return true;
            }
            match state.try_lock_out() {
                Some(_no_interrupts) => {
                    state.mark_ended();
                    delete(att, state);
                    false
                }
                None => true,
            }
        });
        if !kept.is_empty() {
            let mut inner = self.lock();
            inner.doomed.append(&mut kept);
            self.doomed.store(true, Ordering::SeqCst);
        }
    }

    /// The owner, with the claim closed, before ending the interpreter: every state left.
    pub(crate) fn end(&self) -> Vec<Arc<InterruptTarget>> {
        let mut inner = self.lock();
        inner.ended = true;
        self.doomed.store(false, Ordering::SeqCst);
        let mut all = std::mem::take(&mut inner.live);
        all.append(&mut inner.doomed);
        all
    }

    /// States alive now (a probe for tests and the memory measurement).
    pub(crate) fn count(&self) -> usize {
        let inner = self.lock();
        inner.live.len() + inner.doomed.len()
    }
}
