//! Entering a thread state on the current thread for one call: the one place that decides
//! whether the call runs in the context already current here, or switches to another
//! interpreter's thread state (and back). Used by every path that runs a call: an owner's
//! inline call and posted jobs (its own thread state), a direct call and the jobs a
//! claimant serves while it waits (its host-thread state, R13).
//!
//! A switch, in order: shields the activation on top of this thread's interrupt stack (a
//! wait barrier: its interrupts are deferred while another interpreter's code runs here),
//! detaches whatever is attached (R4), registers the new thread state's interrupt target,
//! makes its interpreter's memory account current, attaches; and undoes each on return.

use std::sync::Arc;

use crate::capi::attach::{self, AttachGuard, Attached, DetachGuard, HostAttachGuard};
use crate::capi::ffi;
use crate::error::{Error, Result};
use crate::governance::interrupt::{self, Barrier, InterruptTarget};
use crate::process::memory::MemoryAccount;

/// Whose thread state a place is, and so how it is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The owner thread's own thread state (R2): a plain attach.
    Owner,
    /// A caller's host-thread state (R13): attached keeping the thread's PyGILState
    /// binding (`HostAttachGuard`); `Some(n)`: a fresh claim, bound to `n` levels of C
    /// recursion for this thread's stack.
    Host(Option<i32>),
}

/// Runs `f` with `target`'s thread state attached on this thread: the thread state
/// interrupts for this call are raised in, and the one this thread may attach (its own as
/// an owner, or its host-thread state for an interpreter whose claim it holds).
///
/// # Safety
/// R2/R13: `target` is a thread state made on this thread (the owner's, or this thread's
/// host-thread state), its interpreter is alive and this thread may attach it now (it owns
/// it and is running or serving its calls, or holds its claim).
pub(crate) unsafe fn run_at<R>(
    target: &Arc<InterruptTarget>,
    memory: &Arc<MemoryAccount>,
    kind: Kind,
    f: impl FnOnce(&Attached<'_>) -> R,
) -> Result<R> {
    let ts = target.ts();
    // A fresh claim (`Host(Some(_))`) was not held on this thread, so its state is not the
    // registered one: skip the check (a direct call's common case).
    let fresh = matches!(kind, Kind::Host(Some(_)));
    if !fresh && interrupt::is_registered(target) {
        let cur = ffi::current_tstate();
        if cur == ts {
            // SAFETY: R10: `ts`, a thread state of `target.id`, is current on this thread.
            return Ok(unsafe { Attached::scope(target.id, f) });
        }
        if !cur.is_null() {
            return Err(Error::Internal(
                "a thread running a call has another thread state attached".into(),
            ));
        }
        // Python code detached it (a ctypes call calling back): attach it again.
        return Ok(match kind {
            Kind::Owner => {
                // SAFETY: R2/R4 via the contract; none attached (just checked).
                let guard = unsafe { AttachGuard::attach(ts, target.id) };
                f(&guard.token())
            }
            Kind::Host(_) => {
                // SAFETY: R13/R4 via the contract; none attached (just checked).
                let guard = unsafe { HostAttachGuard::attach(ts, target.id) };
                f(&guard.token())
            }
        });
    }
    // Another interpreter's (or another place's) call is current here, or none.
    let _shield = Barrier::wait();
    let _detached = DetachGuard::detach_current();
    let _registered = interrupt::register_scoped(Arc::clone(target));
    let _account = memory.enter();
    Ok(match kind {
        Kind::Owner => {
            // SAFETY: R2/R4 via the contract; `_detached` left none attached.
            let guard = unsafe { AttachGuard::attach(ts, target.id) };
            f(&guard.token())
        }
        Kind::Host(budget) => {
            if let Some(levels) = budget {
                // SAFETY: R13: this thread's own host-thread state, not attached.
                unsafe { attach::set_c_recursion(ts, levels) };
            }
            // SAFETY: R13/R4 via the contract; `_detached` left none attached.
            let guard = unsafe { HostAttachGuard::attach(ts, target.id) };
            f(&guard.token())
        }
    })
}
