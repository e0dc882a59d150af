//! Rust functions callable from Python, built on the raw C API (no pyo3 statics): a
//! static `PyMethodDef` plus a per-interpreter function object bound to a `self` value.

use std::ffi::CStr;
use std::panic::{self, AssertUnwindSafe};

use crate::attach::Attached;
use crate::error::Result;
use crate::ffi::sys;
use crate::object::PyObj;

/// A C function taking `(self, *args)` with the METH_FASTCALL convention.
pub type FastcallFn = unsafe extern "C" fn(
    slf: *mut sys::PyObject,
    args: *mut *mut sys::PyObject,
    nargs: sys::Py_ssize_t,
) -> *mut sys::PyObject;

/// A method definition with static lifetime, shareable by every interpreter (it is plain
/// C data that CPython only reads).
pub struct NativeFunction(sys::PyMethodDef);

impl std::fmt::Debug for NativeFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeFunction")
    }
}

// SAFETY: the PyMethodDef holds pointers to 'static C strings and a function; CPython
// never writes to it, so sharing it between threads and interpreters is sound.
unsafe impl Sync for NativeFunction {}

impl NativeFunction {
    /// A METH_FASTCALL function definition.
    pub const fn fastcall(name: &'static CStr, f: FastcallFn, doc: &'static CStr) -> Self {
        Self(sys::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: sys::PyMethodDefPointer { PyCFunctionFast: f },
            ml_flags: sys::METH_FASTCALL,
            ml_doc: doc.as_ptr(),
        })
    }
}

impl<'a> Attached<'a> {
    /// A builtin function object in this interpreter that calls `def` with `slf` bound.
    pub fn native_function<'py>(
        &'py self,
        def: &'static NativeFunction,
        slf: &PyObj<'_>,
    ) -> Result<PyObj<'py>> {
        // SAFETY: tstate: attached. refs: `def` is 'static and never written through;
        // `slf` is valid and gets its own reference from the new function object.
        unsafe {
            let f = sys::PyCFunction_NewEx(
                std::ptr::addr_of!(def.0).cast_mut(),
                slf.as_ptr(),
                std::ptr::null_mut(),
            );
            PyObj::from_owned_or_err(self, f)
        }
    }
}

/// Body of a native function whose `self` and arguments are non-negative integers
/// (addresses, sizes) and whose result is one: the shape of pointer bridges such as
/// polyplug's `arena_alloc(size, arena)`. Errors become a Python `TypeError`; a panic
/// becomes a `SystemError` (it never unwinds into C).
///
/// # Safety
/// Call only from a [`FastcallFn`] registered through [`NativeFunction`], with the
/// arguments CPython passed to it (thread: an interpreter's owner, attached).
pub unsafe fn u64_trampoline(
    slf: *mut sys::PyObject,
    args: *mut *mut sys::PyObject,
    nargs: sys::Py_ssize_t,
    body: impl FnOnce(u64, &[u64]) -> std::result::Result<u64, String>,
) -> *mut sys::PyObject {
    let run = || -> std::result::Result<u64, String> {
        // SAFETY: tstate: CPython calls us attached. refs: slf and args[..nargs] are
        // borrowed references valid for the call.
        unsafe {
            let to_u64 = |o: *mut sys::PyObject| {
                let v = sys::PyLong_AsUnsignedLongLong(o);
                if v == u64::MAX && !sys::PyErr_Occurred().is_null() {
                    sys::PyErr_Clear();
                    Err("expected a non-negative int".to_owned())
                } else {
                    Ok(v)
                }
            };
            let this = to_u64(slf)?;
            let argv = if nargs == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(args, nargs as usize)
            };
            let vals = argv
                .iter()
                .map(|&a| to_u64(a))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            body(this, &vals)
        }
    };
    let (exc, msg) = match panic::catch_unwind(AssertUnwindSafe(run)) {
        // SAFETY: tstate: attached; returns a new reference or null with MemoryError.
        Ok(Ok(v)) => return unsafe { sys::PyLong_FromUnsignedLongLong(v) },
        // SAFETY: the exception types are static immortals.
        Ok(Err(m)) => (unsafe { sys::PyExc_TypeError }, m),
        // SAFETY: as above.
        Err(_) => (
            unsafe { sys::PyExc_SystemError },
            "Rust panic in native function".to_owned(),
        ),
    };
    let msg = std::ffi::CString::new(msg).unwrap_or_default();
    // SAFETY: tstate: attached. Sets the error indicator; null return signals it.
    unsafe { sys::PyErr_SetString(exc, msg.as_ptr()) };
    std::ptr::null_mut()
}
