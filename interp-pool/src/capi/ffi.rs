//! The one door to libpython. Every other module reaches CPython through `ffi::sys`
//! (pyo3-ffi 0.29, a translation of the C headers) or the small helpers below, so a
//! grep for `sys::` finds every C call the crate makes.

pub use pyo3_ffi as sys;

use std::ffi::CStr;

use crate::config::{GilMode, InterpreterConfig};

/// The thread state attached on this thread, or null.
///
/// `PyThreadState_GetUnchecked` (3.13+; `_PyThreadState_UncheckedGet` on 3.12) only reads
/// CPython's thread-local current-tstate pointer, so it is safe on any thread, attached or
/// not, before or after init.
pub(crate) fn current_tstate() -> *mut sys::PyThreadState {
    #[cfg(Py_3_13)]
    // SAFETY: thread: any. interp: none needed. tstate: none needed; the function reads
    // a C thread-local and never fails or raises (CPython docs, "PyThreadState_GetUnchecked").
    let ts = unsafe { sys::PyThreadState_GetUnchecked() };
    #[cfg(not(Py_3_13))]
    // SAFETY: thread: any. interp: none needed. tstate: none needed; pyo3-ffi's compat
    // shim calls 3.12's `_PyThreadState_UncheckedGet`, the same thread-local read under its
    // pre-3.13 name (never fails or raises).
    let ts = unsafe { sys::compat::PyThreadState_GetUnchecked() };
    ts
}

extern "C" {
    /// Public C API (pythread.h) that pyo3-ffi does not bind: the identifier CPython
    /// records in a thread state as `thread_id`, which `PyThreadState_SetAsyncExc` matches.
    fn PyThread_get_thread_ident() -> std::ffi::c_ulong;
}

extern "C" {
    /// Public C API (sysmodule.h, variadic, so pyo3-ffi does not bind it): raises an audit
    /// event; `format` is a `Py_BuildValue` format built only if a hook is installed.
    /// Returns -1 with an exception set if a hook raised.
    pub(crate) fn PySys_Audit(
        event: *const std::ffi::c_char,
        format: *const std::ffi::c_char,
        ...
    ) -> std::ffi::c_int;
}

/// CPython's identifier for the calling OS thread.
pub(crate) fn thread_ident() -> u64 {
    // SAFETY: thread: any; needs no interpreter or thread state (it wraps pthread_self).
    let ident: std::ffi::c_ulong = unsafe { PyThread_get_thread_ident() };
    #[allow(clippy::useless_conversion, reason = "c_ulong is u32 on some targets")]
    u64::from(ident)
}

/// The C struct `Py_NewInterpreterFromConfig` expects, from our config.
pub(crate) fn interpreter_config(cfg: &InterpreterConfig) -> sys::PyInterpreterConfig {
    let own = cfg.gil == GilMode::Own;
    sys::PyInterpreterConfig {
        // An own GIL needs its own allocator state; a shared GIL shares main's.
        use_main_obmalloc: (!own).into(),
        allow_fork: cfg.allow_fork.into(),
        allow_exec: cfg.allow_exec.into(),
        allow_threads: cfg.allow_threads.into(),
        allow_daemon_threads: cfg.allow_daemon_threads.into(),
        check_multi_interp_extensions: cfg.check_multi_interp_extensions.into(),
        gil: if own {
            sys::PyInterpreterConfig_OWN_GIL
        } else {
            sys::PyInterpreterConfig_SHARED_GIL
        },
    }
}

/// `Err(text)` if `status` reports an error, with CPython's function and message.
pub(crate) fn status_result(status: sys::PyStatus) -> Result<(), String> {
    let func = status.func;
    let msg = status.err_msg;
    // SAFETY: thread/interp/tstate: PyStatus_Exception only reads the struct passed by
    // value; it touches no interpreter state.
    if unsafe { sys::PyStatus_Exception(status) } == 0 {
        return Ok(());
    }
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: refs: CPython fills func/err_msg with static NUL-terminated strings.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    Err(match (text(func), text(msg)) {
        (f, m) if f.is_empty() => m,
        (f, m) => format!("{f}: {m}"),
    })
}

/// CPython's builtin exception types the crate raises or tests for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExcType {
    Type,
    Value,
    Overflow,
    System,
    Runtime,
    Import,
    Key,
}

impl ExcType {
    /// The type object: a static immortal of libpython, valid in every interpreter.
    pub(crate) fn ptr(self) -> *mut sys::PyObject {
        // SAFETY (every arm): reading an exported `PyExc_*` pointer, which libpython sets
        // at load time and never changes; no thread state is needed to read it.
        match self {
            // SAFETY: see above.
            ExcType::Type => unsafe { sys::PyExc_TypeError },
            // SAFETY: see above.
            ExcType::Value => unsafe { sys::PyExc_ValueError },
            // SAFETY: see above.
            ExcType::Overflow => unsafe { sys::PyExc_OverflowError },
            // SAFETY: see above.
            ExcType::System => unsafe { sys::PyExc_SystemError },
            // SAFETY: see above.
            ExcType::Runtime => unsafe { sys::PyExc_RuntimeError },
            // SAFETY: see above.
            ExcType::Import => unsafe { sys::PyExc_ImportError },
            // SAFETY: see above.
            ExcType::Key => unsafe { sys::PyExc_KeyError },
        }
    }
}

/// `csrc/host_state.c`, compiled by build.rs against this Python's headers: host-thread
/// states that never stay a thread's PyGILState state (`attach::HostAttachGuard`).
pub(crate) mod shim {
    use super::sys;
    use std::ffi::c_int;

    extern "C" {
        pub(crate) fn interp_pool_host_state_new(
            interp: *mut sys::PyInterpreterState,
        ) -> *mut sys::PyThreadState;
        pub(crate) fn interp_pool_host_attach(
            ts: *mut sys::PyThreadState,
        ) -> *mut sys::PyThreadState;
        pub(crate) fn interp_pool_host_detach(
            ts: *mut sys::PyThreadState,
            prev: *mut sys::PyThreadState,
        );
        pub(crate) fn interp_pool_host_state_delete(ts: *mut sys::PyThreadState);
        pub(crate) fn interp_pool_set_c_recursion(ts: *mut sys::PyThreadState, remaining: c_int);
        pub(crate) fn interp_pool_c_recursion_limit() -> c_int;
    }
}
