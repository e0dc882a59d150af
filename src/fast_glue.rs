//! The generated glue's per-call ctypes functions at native speed (`PythonConfig::fast_glue`).
//!
//! polyplugc's glue reads each call's arguments with `ctypes.string_at(args_ptr, size)`
//! and writes the result with `ctypes.memmove(out_ptr, packed, size)`: two ctypes
//! foreign-function calls per call, most of the glue's cost (string views also go through
//! `ctypes.cast`). interp-pool's `install_fast_ctypes` swaps the three for native builtins
//! with ctypes' exact behaviour;
//! this module decides where the loader installs them, and does it in the load job,
//! before the bootstrap and the bundle's entry module run. The pre-warmed spare is covered
//! by the same step: it is never given to a bundle without a load job.

use interp_pool::Attached;

use crate::config::{InterpreterMode, PythonConfig};

/// Whether a load in `mode` installs the fast paths: when configured, and in the main
/// interpreter only if this process's loader (interp-pool) initialised Python, so a
/// host's own Python keeps its `ctypes` untouched.
pub(crate) fn wanted(config: &PythonConfig, mode: InterpreterMode) -> bool {
    config.fast_glue && (mode != InterpreterMode::Main || interp_pool::owns_python())
}

/// Installs the fast paths in the attached interpreter; whether both are in place. A
/// failure (no `ctypes` in this interpreter, e.g. 3.12's `_ctypes` refusing an own-GIL
/// interpreter) is logged and leaves the glue on ctypes' own functions: the bundle's own
/// import then fails or succeeds as it would have.
pub(crate) fn install(py: &Attached<'_>, bundle: &str) -> bool {
    match interp_pool::install_fast_ctypes(py) {
        Ok(true) => true,
        Ok(false) => {
            tracing::info!(
                bundle,
                "ctypes.string_at / memmove / cast were already replaced in this interpreter; fast glue left them alone"
            );
            false
        }
        Err(e) => {
            tracing::debug!(bundle, error = %e, "fast glue not installed");
            false
        }
    }
}
