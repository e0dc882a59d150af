//! `Persistent`: a strong reference to a Python object that outlives one job, e.g. a
//! plugin's callables, kept in Rust data shared across threads. It can only be *used*
//! (bound to a [`PyObj`]) inside a job of its own interpreter; it never touches the
//! object anywhere else (R3, R5).

use std::ptr::NonNull;

use crate::capi::attach::Attached;
use crate::capi::ffi::sys;
use crate::capi::object::PyObj;
use crate::error::{Error, Result};
use crate::InterpreterId;

/// A strong reference owned by Rust, pinned to the interpreter that created it.
///
/// Dropping it on its owner thread while attached (inside a job) releases the reference.
/// Dropped anywhere else it is leaked instead, because decref'ing there would race the
/// interpreter's own GIL: drop persistents inside a job (e.g. an unload job) before
/// ending the interpreter.
#[derive(Debug)]
pub struct Persistent {
    ptr: NonNull<sys::PyObject>,
    interp: InterpreterId,
}

// SAFETY: the pointer is only dereferenced (incref in `bind`, decref in `drop`) on the
// owner thread of `interp` with its thread state attached, which both methods check
// (R3). Moving or sharing the handle itself touches no Python state.
unsafe impl Send for Persistent {}
// SAFETY: as for Send; `&Persistent` offers no access that bypasses those checks.
unsafe impl Sync for Persistent {}

impl Persistent {
    /// Keeps `obj` beyond the current job.
    pub fn new(att: &Attached<'_>, obj: PyObj<'_>) -> Self {
        let ptr = obj.into_ptr();
        Self {
            // SAFETY: into_ptr returns the non-null pointer the PyObj owned.
            ptr: unsafe { NonNull::new_unchecked(ptr) },
            interp: att.id(),
        }
    }

    /// The interpreter the object lives in.
    pub fn interpreter(&self) -> InterpreterId {
        self.interp
    }

    /// A new strong reference for use in this job. Fails with [`Error::Internal`] if
    /// `att` is another interpreter's token.
    pub fn bind<'py>(&self, att: &'py Attached<'_>) -> Result<PyObj<'py>> {
        if att.id() != self.interp {
            return Err(Error::Internal(format!(
                "object of interpreter {} used in interpreter {}",
                self.interp,
                att.id()
            )));
        }
        // SAFETY: thread/tstate: `att` proves our interpreter is attached on its owner
        // thread. refs: we hold a strong reference, so `ptr` is alive; from_borrowed_ptr
        // adds the one the PyObj will own.
        Ok(unsafe { PyObj::from_borrowed_ptr(att, self.ptr) })
    }
}

impl Drop for Persistent {
    fn drop(&mut self) {
        // Its owner, or a caller's thread running a direct call there, attached.
        let attached = crate::governance::interrupt::runs_attached(self.interp);
        if attached {
            // SAFETY: R3/R13: thread: the claim holder of `self.interp` (its owner, or a
            // caller's thread in a direct call); tstate: the one it runs the call on is
            // attached (just checked). refs: we own one strong reference.
            unsafe { sys::Py_DECREF(self.ptr.as_ptr()) }
        } else {
            tracing::debug!(interp = %self.interp, "Persistent dropped off a thread running its interpreter; leaked");
        }
    }
}
