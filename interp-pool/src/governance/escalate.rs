//! The last step of an interrupt: stopping code that swallows it.
//!
//! An async exception is raised once; `try: ... except BaseException: pass` in a loop
//! absorbs every one. So when an interrupted call is still running two grace periods after
//! its interrupt (`cancel.rs` re-raises it after the first), the interrupter turns on a
//! private `sys.monitoring` tool in the interpreter (tool id 4, else 3: ids the CPython
//! docs leave to no one) whose callback raises the interrupt class on every `LINE`, `JUMP`,
//! `PY_START` and `PY_RESUME` event of the interrupted call. An `except` clause is itself
//! made of lines, so the exception escapes every handler and the guest's frames unwind.
//!
//! It hits only what it must: the callback does nothing unless the interrupted call's
//! activation is the innermost one executing on the calling thread (`interrupt.rs`: not on
//! any other thread, not in a job served while the call waits, not in an inner
//! interruptible call), in code whose file name was
//! exempted ([`exempt_from_interrupt_tracing`]: the loader's own Python called from guest
//! code), and once the guest has returned to Rust ([`guest_returned`], and in any case when
//! the call ends). `sys.monitoring` tools are independent of `sys.settrace` /
//! `sys.setprofile`, so a host's own tracer or profiler keeps running untouched. While no
//! call is escalated nothing is registered and nothing runs: no cost.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::capi::attach::Attached;
use crate::capi::ffi::sys;
use crate::capi::native::NativeError;
use crate::error::Result;
use crate::governance::interrupt::{self, InterruptTarget, Reason};

/// Tool ids tried, in order. 0 (debugger), 1 (coverage), 2 (profiler) and 5 (optimizer)
/// are the conventional ones of other tools; 3 and 4 are unassigned.
const TOOL_IDS: [u8; 2] = [4, 3];
const TOOL_NAME: &str = "interp_pool";
const EVENTS: [&str; 4] = ["LINE", "JUMP", "PY_START", "PY_RESUME"];

static EXEMPT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Code compiled under file name `filename` is never hit by an interrupt's last step (the
/// `sys.monitoring` tool), even when called from an interrupted call: for an embedder's
/// own Python that guest code calls into (an output writer, an import finder).
pub fn exempt_from_interrupt_tracing(filename: &str) {
    let mut list = EXEMPT.lock().unwrap_or_else(|e| e.into_inner());
    if !list.iter().any(|f| f == filename) {
        list.push(filename.to_owned());
    }
}

/// Tells the pool that the guest code of the call executing on this owner has returned
/// to Rust: if that call was being stopped by the tool, the tool is turned off now, so the
/// embedder's own Python that follows in the same job (formatting a traceback, say) runs
/// untouched. One atomic load when nothing is being stopped; a no-op on threads running no
/// call.
pub fn guest_returned(py: &Attached<'_>) {
    let Some((target, act)) = interrupt::innermost() else {
        return;
    };
    if target.id == py.id() {
        remove(py, &target, act.id);
    }
}

/// Whether the tool is on for `call`.
pub(crate) fn is_traced(target: &InterruptTarget, call: u64) -> bool {
    target.tool.traced.load(Ordering::SeqCst) == call
}

/// On the interrupter, holding the interpreter's GIL, with `call` executing on `target`:
/// turns the tool on for it. `Ok(false)` if the interpreter has no `sys.monitoring`
/// (before 3.12) or both tool ids are taken.
pub(crate) fn enable(
    py: &Attached<'_>,
    target: &Arc<InterruptTarget>,
    call: u64,
    reason: Reason,
) -> Result<bool> {
    if is_traced(target, call) {
        return Ok(true);
    }
    let Ok(mon) = py.import("sys")?.getattr(py, "monitoring") else {
        py.clear_error();
        return Ok(false);
    };
    let mut chosen = None;
    for id in TOOL_IDS {
        let tool = py.int(i64::from(id))?;
        if mon
            .call_method(py, "use_tool_id", &[&tool, &py.str(TOOL_NAME)?])
            .is_ok()
        {
            chosen = Some((id, tool));
            break;
        }
    }
    let Some((id, tool)) = chosen else {
        return Ok(false);
    };
    let classes = Arc::clone(target);
    let callback = py.native_function(
        c"interp_pool_stop",
        c"Raises the interrupt of a call that ran past its deadline (interp-pool).",
        move |py, args| {
            // Only the interrupted call, on its thread, while it is the innermost one
            // executing there.
            let mine = interrupt::innermost()
                .is_some_and(|(t, act)| act.id == call && is_traced(&t, call));
            if !mine {
                return Ok(py.none());
            }
            if let Some(code) = args.positional().first() {
                if exempt(py, code) {
                    return Ok(py.none());
                }
            }
            let class = classes.classes.for_reason(reason);
            // SAFETY: R10: CPython calls the callback attached; `class` is this
            // interpreter's interrupt class, kept alive by the pool.
            unsafe { sys::PyErr_SetNone(class.as_ptr()) };
            Err(NativeError::pending())
        },
    )?;
    let events = mon.getattr(py, "events")?;
    let mut mask = 0;
    for name in EVENTS {
        let ev = events.getattr(py, name)?;
        mask |= ev.extract_i64(py)?;
        mon.call_method(py, "register_callback", &[&tool, &ev, &callback])?;
    }
    target.tool.tool.store(id, Ordering::SeqCst);
    target.tool.traced.store(call, Ordering::SeqCst);
    mon.call_method(py, "set_events", &[&tool, &py.int(mask)?])?;
    Ok(true)
}

/// Whether `code`'s file name is exempt.
fn exempt(py: &Attached<'_>, code: &crate::PyObj<'_>) -> bool {
    let list = EXEMPT.lock().unwrap_or_else(|e| e.into_inner());
    if list.is_empty() {
        return false;
    }
    let name = code
        .getattr(py, "co_filename")
        .and_then(|f| f.extract_string(py));
    match name {
        Ok(name) => list.contains(&name),
        Err(_) => {
            py.clear_error();
            false
        }
    }
}

/// On the owner, attached, at the end of `call` (on every exit, a panic's included): turns
/// the tool off if it is on for `call`, keeping an exception that is pending aside
/// meanwhile.
pub(crate) fn remove_at_end(py: &Attached<'_>, target: &InterruptTarget, call: u64) {
    if !is_traced(target, call) {
        return;
    }
    // SAFETY: R10: attached (`py`); takes the pending exception (or null), owned by us.
    let kept = unsafe { sys::PyErr_GetRaisedException() };
    remove(py, target, call);
    if !kept.is_null() {
        // SAFETY: R10: attached; hands our reference back as the pending exception.
        unsafe { sys::PyErr_SetRaisedException(kept) };
    }
}

/// On the owner, attached: turns the tool off if it is on for `call`. Runs no Python while
/// an exception is pending (it would be lost); the end of the call tries again.
pub(crate) fn remove(py: &Attached<'_>, target: &InterruptTarget, call: u64) {
    if !is_traced(target, call) || py.error_pending() {
        return;
    }
    target.tool.traced.store(0, Ordering::SeqCst);
    let id = target.tool.tool.load(Ordering::SeqCst);
    let off = || -> Result<()> {
        let mon = py.import("sys")?.getattr(py, "monitoring")?;
        let tool = py.int(i64::from(id))?;
        mon.call_method(py, "set_events", &[&tool, &py.int(0)?])?;
        let events = mon.getattr(py, "events")?;
        for name in EVENTS {
            let ev = events.getattr(py, name)?;
            mon.call_method(py, "register_callback", &[&tool, &ev, &py.none()])?;
        }
        mon.call_method(py, "free_tool_id", &[&tool])?;
        Ok(())
    };
    if let Err(e) = off() {
        tracing::warn!(interp = %target.id, error = %e, "could not turn the interrupt tool off");
    }
}
