//! What this OS thread is doing in Python: whether it owns an interpreter, and how deep
//! the chain of calls it is currently running is. `call` decides from this (and from the
//! attached thread state) whether to run inline or to post.

use std::cell::Cell;
use std::ptr;

use crate::governance::interrupt;
use crate::owner::worker::Owner;

thread_local! {
    static OWNER: Cell<*const Owner> = const { Cell::new(ptr::null()) };
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// The interpreter this thread owns, if it is an owner thread.
///
/// The `Owner` lives in the owner thread's outermost frame (`worker::owner_main`) and is
/// unregistered before that frame ends, after every call on the thread has returned; so
/// for any code running on this thread it is effectively `'static`.
pub(crate) fn owner() -> Option<&'static Owner> {
    let p = OWNER.try_with(Cell::get).unwrap_or(ptr::null());
    // SAFETY: R2: thread: this one. `p` is null or was set by `OwnerRegistration::new` on
    // this thread and points to an Owner that stays alive until the registration is
    // dropped, which happens only once no call is running on the thread (its contract).
    unsafe { p.as_ref() }
}

/// Registers `owner` as this thread's interpreter (and its interrupt target, for the
/// interrupt layer's own thread-local) until dropped.
pub(crate) struct OwnerRegistration {
    _interrupts: interrupt::Registration,
}

impl OwnerRegistration {
    /// # Safety
    /// R2: `owner` is this thread's own, lives until after the registration is dropped,
    /// and the registration is dropped on this thread once no call runs on it any more
    /// (so the `&'static Owner` that [`owner`] hands out never dangles). Not `forget`.
    pub(crate) unsafe fn new(owner: &Owner) -> Self {
        OWNER.with(|c| c.set(owner));
        Self {
            _interrupts: interrupt::register(std::sync::Arc::clone(&owner.link.target)),
        }
    }
}

impl Drop for OwnerRegistration {
    fn drop(&mut self) {
        let _ = OWNER.try_with(|c| c.set(ptr::null()));
    }
}

/// The nesting depth of the call running on this thread (0: none).
pub(crate) fn depth() -> usize {
    DEPTH.try_with(Cell::get).unwrap_or(0)
}

/// Sets this thread's depth for the duration of one activation.
pub(crate) struct DepthGuard {
    prev: usize,
}

impl DepthGuard {
    pub(crate) fn enter(depth: usize) -> Self {
        let prev = DEPTH.with(|d| d.replace(depth));
        Self { prev }
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        let _ = DEPTH.try_with(|d| d.set(self.prev));
    }
}
