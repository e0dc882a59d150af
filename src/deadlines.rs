//! What makes a deadline hold inside the loader's interpreters (interp-pool does the
//! interrupting; ARCHITECTURE.md, "Deadlines"):
//!
//! - `time.sleep` wakes at the deadline: [`prepare`] replaces it, before any bundle code
//!   runs, in every interpreter bundles run in (in `main` only when this process's Python
//!   was initialised by the loader: a host's own Python is left alone).
//! - The loader's own Python is never hit by the interrupt's last step (raising on every
//!   line of a call that swallowed its interrupt): it is compiled under [`LOADER_FILE`],
//!   exempted, and the tool is turned off as soon as the guest returns to Rust
//!   (`interp_pool::guest_returned`, in `Contract::guest`).
//! - How far past its deadline an interrupted call ran is metered (`Meter::overrun`).

use std::sync::Once;

use interp_pool::{Attached, PyObj};

/// The file name the loader's own Python (output writer, import finder, refusal hooks,
/// bootstrap helpers) is compiled under.
pub(crate) const LOADER_FILE: &str = "<polyplug-subinterp loader>";

/// The loader's module `name` of `sys.modules`, made on first use: `src` run in a fresh
/// module (see [`run_loader_code`]), then `install(module)`, then registered under `name`.
pub(crate) fn loader_module<'py>(
    py: &'py Attached<'_>,
    name: &str,
    src: &str,
    install: impl FnOnce(&PyObj<'py>) -> interp_pool::Result<()>,
) -> interp_pool::Result<PyObj<'py>> {
    let modules = py.import("sys")?.getattr(py, "modules")?;
    if let Some(m) = modules.get(py, name)? {
        return Ok(m);
    }
    let m = py
        .import("types")?
        .call_method(py, "ModuleType", &[&py.str(name)?])?;
    run_loader_code(py, src, &m.getattr(py, "__dict__")?)?;
    install(&m)?;
    modules.call_method(py, "__setitem__", &[&py.str(name)?, &m])?;
    Ok(m)
}

/// Runs the loader's source `src` in `globals`, compiled under [`LOADER_FILE`].
pub(crate) fn run_loader_code(
    py: &Attached<'_>,
    src: &str,
    globals: &PyObj<'_>,
) -> interp_pool::Result<()> {
    static EXEMPT: Once = Once::new();
    EXEMPT.call_once(|| interp_pool::exempt_from_interrupt_tracing(LOADER_FILE));
    let builtins = py.import("builtins")?;
    let code = builtins.getattr(py, "compile")?.call(
        py,
        &[&py.str(src)?, &py.str(LOADER_FILE)?, &py.str("exec")?],
    )?;
    builtins.getattr(py, "exec")?.call(py, &[&code, globals])?;
    Ok(())
}

/// Before any bundle code runs in `py`'s interpreter: the interruptible `time.sleep`
/// (not in `main` of a host-initialised Python; never over a `time.sleep` someone else
/// replaced; once per interpreter).
pub(crate) fn prepare(py: &Attached<'_>, in_main: bool) -> interp_pool::Result<()> {
    if !in_main || interp_pool::owns_python() {
        interp_pool::install_interruptible_sleep(py)?;
    }
    Ok(())
}
