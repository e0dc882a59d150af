//! The host-thread states of one interpreter (direct dispatch, R13): every thread state a
//! caller's thread made for it, so that the owner can delete them all before
//! `Py_EndInterpreter` (which aborts the process if any other thread state is left), and
//! the ones their threads gave up (the thread exited, or evicted it from its cache) sooner.
//!
//! Each state is known by its interrupt target (`InterruptTarget`: the thread state, its
//! thread's ident, the interrupt classes it shares with the owner, its interrupt lock).
//! A state is deleted only by a thread attached to the interpreter through *another*
//! thread state while holding the claim (the owner), after taking the state's interrupt
//! lock and marking it ended, so no interrupter attaches for it afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::governance::interrupt::InterruptTarget;

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

    /// Its thread gives `state` up (never attaches it again). Whether the owner should be
    /// woken to delete it (false: the interpreter ended and deleted it already).
    pub(crate) fn give_up(&self, state: &Arc<InterruptTarget>) -> bool {
        let mut inner = self.lock();
        if inner.ended {
            return false;
        }
        let Some(pos) = inner.live.iter().position(|s| Arc::ptr_eq(s, state)) else {
            return false;
        };
        let state = inner.live.swap_remove(pos);
        inner.doomed.push(state);
        self.doomed.store(true, Ordering::SeqCst);
        true
    }

    /// Whether states await deletion.
    pub(crate) fn has_doomed(&self) -> bool {
        self.doomed.load(Ordering::SeqCst)
    }

    /// The owner, holding the claim: the states to delete now.
    pub(crate) fn take_doomed(&self) -> Vec<Arc<InterruptTarget>> {
        let mut inner = self.lock();
        self.doomed.store(false, Ordering::SeqCst);
        std::mem::take(&mut inner.doomed)
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
