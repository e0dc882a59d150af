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
//! It hits only what it must: the callback does nothing on any thread but the owner's,
//! while any other call or job runs there (`OwnerLink::running` is the interrupted call's
//! id only while that call itself runs: nested jobs clear it), in code whose file name was
//! exempted ([`exempt_from_interrupt_tracing`]: the loader's own Python called from guest
//! code), and once the guest has returned to Rust ([`guest_returned`], and in any case when
//! the call ends). `sys.monitoring` tools are independent of `sys.settrace` /
//! `sys.setprofile`, so a host's own tracer or profiler keeps running untouched. While no
//! call is escalated nothing is registered and nothing runs: no cost.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::activation;
use crate::attach::Attached;
use crate::error::Result;
use crate::ffi::{self, sys};
use crate::native::NativeError;
use crate::worker::OwnerLink;

/// Tool ids tried, in order. 0 (debugger), 1 (coverage), 2 (profiler) and 5 (optimizer)
/// are the conventional ones of other tools; 3 and 4 are unassigned.
const TOOL_IDS: [u8; 2] = [4, 3];
const TOOL_NAME: &str = "interp_pool";
const EVENTS: [&str; 4] = ["LINE", "JUMP", "PY_START", "PY_RESUME"];

/// Per owner: the reason of the async exception last set on it, and which call (if any)
/// has the tool turned on.
#[derive(Debug, Default)]
pub(crate) struct InterruptState {
    /// `Reason as u8` of the interrupt last raised on the owner (for the class to raise).
    pub(crate) reason: AtomicU8,
    /// Id of the call being stopped by the tool (0: none).
    traced: AtomicU64,
    /// The tool id in use while `traced != 0`.
    tool: AtomicU8,
}

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

/// Tells the pool that the guest code of the call running on this owner has returned to
/// Rust: if that call was being stopped by the tool, the tool is turned off now, so the
/// embedder's own Python that follows in the same job (formatting a traceback, say) runs
/// untouched. One atomic load when nothing is being stopped; a no-op off owner threads.
pub fn guest_returned(py: &Attached<'_>) {
    let Some(owner) = activation::owner() else {
        return;
    };
    let link = &*owner.link;
    if link.id != py.id() {
        return;
    }
    let call = link.running.load(Ordering::SeqCst);
    if call != 0 {
        remove(py, link, call);
    }
}

/// Whether the tool is on for `call`.
pub(crate) fn is_traced(link: &OwnerLink, call: u64) -> bool {
    link.interrupt.traced.load(Ordering::SeqCst) == call
}

/// On the interrupter, holding the interpreter's GIL, with `call` running on the owner:
/// turns the tool on for it. `Ok(false)` if the interpreter has no `sys.monitoring`
/// (before 3.12) or both tool ids are taken.
pub(crate) fn enable(
    py: &Attached<'_>,
    link: &Arc<OwnerLink>,
    call: u64,
    reason: u8,
) -> Result<bool> {
    if is_traced(link, call) {
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
    let target = Arc::clone(link);
    let callback = py.native_function(
        c"interp_pool_stop",
        c"Raises the interrupt of a call that ran past its deadline (interp-pool).",
        move |py, args| {
            // Only the interrupted call, on its owner, while it is the one running.
            if ffi::thread_ident() != target.owner_ident
                || target.running.load(Ordering::SeqCst) != call
                || !is_traced(&target, call)
            {
                return Ok(py.none());
            }
            if let Some(code) = args.positional().first() {
                if exempt(py, code) {
                    return Ok(py.none());
                }
            }
            let class = target.interrupts.for_reason(reason);
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
    link.interrupt.tool.store(id, Ordering::SeqCst);
    link.interrupt.traced.store(call, Ordering::SeqCst);
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

/// On the owner, attached: turns the tool off if it is on for `call`. Runs no Python while
/// an exception is pending (it would be lost); the end of the call tries again.
pub(crate) fn remove(py: &Attached<'_>, link: &OwnerLink, call: u64) {
    if !is_traced(link, call) || py.error_pending() {
        return;
    }
    link.interrupt.traced.store(0, Ordering::SeqCst);
    let id = link.interrupt.tool.load(Ordering::SeqCst);
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
        tracing::warn!(interp = %link.id, error = %e, "could not turn the interrupt tool off");
    }
}
