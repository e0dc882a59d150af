//! A `time.sleep` that wakes at a deadline.
//!
//! CPython's `time.sleep` releases the GIL and blocks in the kernel; an async exception
//! set meanwhile (how `cancel.rs` interrupts a call) is only raised once it returns, so a
//! `time.sleep(30)` under a 1 s deadline used to take 30 s. [`install_interruptible_sleep`]
//! replaces `time.sleep` in one interpreter with a native function that, on the thread
//! running a call (its owner, or a caller's thread running a direct call), parks (GIL
//! released) until the sleep is over *or* the call executing there is interrupted (its
//! activation's reason, `interrupt.rs`; the interrupter unparks the thread), and then
//! raises the interrupt class itself (taking back the async exception so it is not raised
//! twice).
//!
//! Same semantics as the original otherwise: anything but one non-negative finite `int` /
//! `float` positional argument (keywords, a negative or NaN value, another type, a huge
//! value) is forwarded to the original, which raises its own `ValueError` / `TypeError` /
//! `OverflowError`; on any other thread (a plugin's `threading` thread, a host thread in
//! main that is not running a direct call), or while no interruptible call is the
//! innermost one executing on it (a plain job), the call is forwarded too, because no
//! interrupt is aimed there.

use std::ptr::NonNull;
use std::thread;
use std::time::{Duration, Instant};

use crate::capi::attach::Attached;
use crate::capi::ffi::sys;
use crate::capi::native::{NativeArgs, NativeError, NativeResult};
use crate::capi::object::PyObj;
use crate::error::Result;
use crate::governance::interrupt::{self, Activation, InterruptTarget, Reason};

/// Longest sleep handled natively (a larger one is forwarded, whose range checks apply).
const MAX_NATIVE: f64 = 1e9;

/// The name under which `sys.modules["interp_pool"]` keeps the replaced function.
const ORIGINAL: &str = "_original_sleep";

/// Replaces `time.sleep` in `py`'s interpreter with the interruptible one. Returns
/// `false` (and changes nothing) if it was installed before or if `time.sleep` is no
/// longer CPython's builtin (a bundle or host replaced it: not fought). Call it before
/// any bundle code runs, so `from time import sleep` binds the new one.
pub fn install_interruptible_sleep(py: &Attached<'_>) -> Result<bool> {
    let module = py
        .import("sys")?
        .getattr(py, "modules")?
        .get_item(py, "interp_pool")?;
    let Some(module) = module else {
        return Ok(false); // not an interpreter of this pool
    };
    if module
        .getattr(py, "__dict__")?
        .get_item(py, ORIGINAL)?
        .is_some()
    {
        return Ok(false);
    }
    let time = py.import("time")?;
    let original = time.getattr(py, "sleep")?;
    let kind = original
        .getattr(py, "__class__")?
        .getattr(py, "__name__")?
        .extract_string(py)?;
    let home = original.getattr(py, "__module__")?;
    if kind != "builtin_function_or_method" || !home.is_str() || home.extract_string(py)? != "time"
    {
        return Ok(false);
    }
    let kept = Original(original.clone_ref().into_non_null());
    let native = py.native_function(
        c"sleep",
        c"sleep(seconds)\n\nDelay execution for a given number of seconds (interp-pool: wakes \
          when the running call is interrupted).",
        move |py, args| sleep(py, args, &kept),
    )?;
    module.call_method(py, "__setattr__", &[&py.str(ORIGINAL)?, &original])?;
    time.call_method(py, "__setattr__", &[&py.str("sleep")?, &native])?;
    Ok(true)
}

/// The original `time.sleep`, owned by the native function's closure (freed with it,
/// inside the interpreter, by `native.rs`'s capsule destructor).
struct Original(NonNull<sys::PyObject>);

// SAFETY: R3/R11: the pointer is only used by the native function's body, which CPython
// runs holding this interpreter's GIL, and released in Drop, which the capsule destructor
// runs with the interpreter attached.
unsafe impl Send for Original {}

impl Drop for Original {
    fn drop(&mut self) {
        // SAFETY: R11: we own one strong reference; dropped from the capsule destructor,
        // which CPython calls attached (R10).
        unsafe { sys::Py_DECREF(self.0.as_ptr()) };
    }
}

fn sleep<'c>(py: &'c Attached<'c>, args: &NativeArgs<'c>, original: &Original) -> NativeResult<'c> {
    let forward = || {
        // SAFETY: R10/R11: attached (`py`); `original.0` is a live reference we own.
        let to = unsafe { PyObj::from_borrowed_ptr(py, original.0) };
        args.forward(py, &to)
    };
    let [secs] = args.positional() else {
        return forward();
    };
    if args.has_keywords() {
        return forward();
    }
    let Some(length) = seconds(py, secs) else {
        return forward();
    };
    // Only the thread state the call runs on (the owner's, or a caller's host-thread state
    // in a direct call), with an interruptible call executing innermost.
    let Some((target, act)) = interrupt::innermost() else {
        return forward();
    };
    if target.id != py.id() || !target.is_own_thread_state() {
        return forward();
    }
    interruptible(py, &target, &act, length)
}

/// A duration for a non-negative finite exact `int` / `float` (not a subclass, whose
/// `__float__` / `__index__` the original would call), else `None`.
fn seconds(py: &Attached<'_>, v: &PyObj<'_>) -> Option<Duration> {
    // SAFETY: R10: attached; a type check on a valid object.
    if unsafe { sys::PyFloat_CheckExact(v.as_ptr()) } != 0 {
        // SAFETY: R10: attached; `v` is an exact float, so this cannot fail.
        let f = unsafe { sys::PyFloat_AsDouble(v.as_ptr()) };
        return (f.is_finite() && (0.0..MAX_NATIVE).contains(&f))
            .then(|| Duration::from_secs_f64(f));
    }
    // SAFETY: R10: attached; a type check on a valid object.
    if unsafe { sys::PyLong_CheckExact(v.as_ptr()) } != 0 {
        let n = v.extract_i64(py).ok()?;
        return (0..MAX_NATIVE as i64)
            .contains(&n)
            .then(|| Duration::from_secs(n as u64));
    }
    None
}

/// On the owner: sleeps detached until `length` has passed or `act` (the call executing
/// here) is interrupted; then raises the interrupt (the interpreter's `DeadlineExceeded` /
/// `Cancelled`).
fn interruptible<'c>(
    py: &'c Attached<'c>,
    target: &InterruptTarget,
    act: &Activation,
    length: Duration,
) -> NativeResult<'c> {
    let end = Instant::now() + length;
    if act.reason() == Reason::None {
        py.detached(|| loop {
            if act.reason() != Reason::None {
                break;
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            // The interrupter unparks us after raising; any other wake-up is spurious
            // and loops.
            thread::park_timeout(end - now);
        });
    }
    let reason = act.reason();
    if reason == Reason::None {
        return Ok(py.none());
    }
    // Raise it here and now, rather than at the eval loop's next check: take back an
    // async exception set for this call and set the same class as the current one.
    target.take_back(py, act.id);
    let class = target.classes.for_reason(reason);
    // SAFETY: R10: attached; `class` is this interpreter's class, kept alive by the pool.
    unsafe { sys::PyErr_SetNone(class.as_ptr()) };
    Err(NativeError::pending())
}
