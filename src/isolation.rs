//! Keeping bundles apart inside the one main interpreter (mode `main`).
//!
//! Every polyplugc bundle ships the same generated package names (`guest`,
//! `guest.contracts`), and several `main`-mode bundles share one `sys.modules`. As in
//! polyplug_python 0.1.3 (reference §5.4), a bundle's own modules are re-keyed under a
//! unique prefix once imported, so the next bundle imports its own copy. Unlike it, we
//! never put bundle directories on `sys.path`: a meta-path finder (first in
//! `sys.meta_path`) resolves imports against the directories of the bundle whose code is
//! running on this thread (set by the loader around every call into the bundle, cheaply,
//! in a thread-local), so imports made later, at call time, still find the bundle's
//! files and its own re-keyed modules, and nothing leaks into other bundles.
//!
//! Packages that contain C extension modules (numpy) are left under their plain names:
//! an extension loads once per process, so they are shared by every `main`-mode bundle
//! (the first bundle to import one decides which copy).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use interp_pool::{Attached, PyObj};

/// The finder, the alias loader and the bookkeeping, installed once in main.
const ISOLATION: &str = include_str!("python/isolation.py");

const MODULE: &str = "_polyplug_subinterp_isolation";

thread_local! {
    /// The `main`-mode bundle whose code runs on this thread (0: none).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    /// Set by the finder: something was imported for a bundle; `settle` must run.
    static DIRTY: Cell<bool> = const { Cell::new(false) };
}

/// One `main`-mode bundle load's identity inside the main interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BundleKey(u64);

impl BundleKey {
    /// Unique per load in the process: two runtimes may load the same bundle.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The raw key (what [`current_key`] returns while this bundle runs).
    pub(crate) fn get(self) -> u64 {
        self.0
    }

    fn prefix(self, bundle_id: u64) -> String {
        format!("__polyplug_bundle_{bundle_id:016X}_{:016X}__", self.0)
    }
}

/// The `main`-mode bundle whose code runs on this thread (0: none).
pub(crate) fn current_key() -> u64 {
    CURRENT.with(Cell::get)
}

/// Marks `key`'s code as running on this thread until dropped (nests).
pub(crate) struct Scope(u64);

impl Scope {
    pub(crate) fn enter(key: BundleKey) -> Self {
        Self(CURRENT.with(|c| c.replace(key.0)))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.0));
    }
}

/// `current() -> int`: the `main` bundle running on this thread (0: none). Used by the
/// finder here and by the output router (`output.rs`) to keep bundles' lines apart.
pub(crate) fn current_fn<'py>(py: &'py Attached<'_>) -> interp_pool::Result<PyObj<'py>> {
    py.native_function(
        c"current",
        c"current() -> int: the main-mode bundle running on this thread (0: none)",
        |py, _args| Ok(py.uint(current_key())?),
    )
}

/// `mark_dirty()`: the finder imported something for a bundle; the loader settles it
/// after the call.
fn mark_dirty_fn<'py>(py: &'py Attached<'_>) -> interp_pool::Result<PyObj<'py>> {
    py.native_function(
        c"mark_dirty",
        c"mark_dirty(): a bundle imported something; the loader settles it after the call",
        |py, _args| {
            DIRTY.with(|d| d.set(true));
            Ok(py.uint(0)?)
        },
    )
}

/// The isolation module, installed on first use. `py` must be the main interpreter.
fn module<'py>(py: &'py Attached<'_>) -> interp_pool::Result<PyObj<'py>> {
    crate::deadlines::loader_module(py, MODULE, ISOLATION, |m| {
        let (cur, dirty) = (current_fn(py)?, mark_dirty_fn(py)?);
        m.call_method(py, "install", &[&cur, &dirty]).map(drop)
    })
}

/// Declares a bundle's import directories; imports made inside its [`Scope`] use them.
pub(crate) fn register(
    py: &Attached<'_>,
    key: BundleKey,
    bundle_id: u64,
    dirs: &[String],
) -> interp_pool::Result<()> {
    let m = module(py)?;
    let list = py.eval("[]")?;
    for d in dirs {
        list.call_method(py, "append", &[&py.str(d)?])?;
    }
    let (k, prefix) = (py.uint(key.0)?, py.str(&key.prefix(bundle_id))?);
    m.call_method(py, "register", &[&k, &prefix, &list])?;
    Ok(())
}

/// Re-keys whatever bundles imported on this thread since the last settle. Cheap when
/// nothing was imported (one thread-local read), so it runs after every call.
pub(crate) fn settle(py: &Attached<'_>) -> interp_pool::Result<()> {
    if !DIRTY.with(|d| d.replace(false)) {
        return Ok(());
    }
    module(py)?.call_method(py, "settle", &[])?;
    Ok(())
}

/// Drops a bundle's modules from `sys.modules` (unload, or a failed load).
pub(crate) fn forget(py: &Attached<'_>, key: BundleKey) -> interp_pool::Result<()> {
    module(py)?.call_method(py, "forget", &[&py.uint(key.0)?])?;
    Ok(())
}
