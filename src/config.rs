//! Loader configuration.

use std::collections::HashMap;

use std::time::Duration;

use interp_pool::{GilMode, WaitPolicy, WhenFull};

/// How a bundle's interpreter relates to the others.
///
/// `InterpreterMode::default()` is [`InterpreterMode::default_for_this_python`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterpreterMode {
    /// Its own subinterpreter and its own GIL: runs in parallel with every other bundle.
    /// Extension modules must declare per-interpreter-GIL support.
    OwnGil,
    /// Its own subinterpreter sharing the main interpreter's GIL: isolated like `OwnGil`,
    /// but no parallelism; accepts extension modules that refuse a per-interpreter GIL
    /// (single-phase init included).
    SharedGil,
    /// The main interpreter, shared by every `Main` bundle, its modules kept apart by
    /// re-keying (see `isolation.rs`): for extension modules that refuse subinterpreters
    /// altogether (numpy, orjson, PyO3 modules). Serialised with every `SharedGil` bundle
    /// on the main GIL.
    Main,
}

impl InterpreterMode {
    /// `"own_gil"`, `"shared_gil"` or `"main"`, as the CLI and logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            InterpreterMode::OwnGil => "own_gil",
            InterpreterMode::SharedGil => "shared_gil",
            InterpreterMode::Main => "main",
        }
    }

    /// The default mode for the CPython this process runs (read at run time from
    /// `Py_Version`): `OwnGil` from 3.13, `SharedGil` on 3.12, because 3.12's `_ctypes` refuses own-GIL interpreters and every polyplugc
    /// bundle imports it. An explicit `OwnGil` on 3.12 still works through
    /// `auto_downgrade`.
    pub fn default_for_this_python() -> Self {
        if ctypes_loads_in_own_gil() {
            InterpreterMode::OwnGil
        } else {
            InterpreterMode::SharedGil
        }
    }

    /// The next, more permissive mode to try when an extension refuses this one.
    ///
    /// A PyO3 module skips `SharedGil`: CPython would let it load in a shared-GIL
    /// subinterpreter, but PyO3 binds the module to the first interpreter that imports it
    /// and refuses (or breaks in) every other one, main included, for the rest of the
    /// process.
    pub(crate) fn fallback(self, pyo3: bool) -> Option<Self> {
        match self {
            InterpreterMode::OwnGil if pyo3 => Some(InterpreterMode::Main),
            InterpreterMode::OwnGil => Some(InterpreterMode::SharedGil),
            InterpreterMode::SharedGil => Some(InterpreterMode::Main),
            InterpreterMode::Main => None,
        }
    }
}

/// Whether `_ctypes` (hence any polyplugc bundle) loads in an own-GIL interpreter on the
/// running CPython: from 3.13 on.
pub(crate) fn ctypes_loads_in_own_gil() -> bool {
    interp_pool::python_version() >= (3, 13)
}

impl Default for InterpreterMode {
    fn default() -> Self {
        Self::default_for_this_python()
    }
}

impl std::fmt::Display for InterpreterMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings for [`PythonLoader`](crate::PythonLoader).
///
/// Build it with a struct literal and `..PythonConfig::default()`:
///
/// ```
/// let config = polyplug_subinterp::PythonConfig {
///     max_depth: 32,
///     ..polyplug_subinterp::PythonConfig::default()
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonConfig {
    /// Oldest CPython accepted at load time, `(major, minor)`. Default `(3, 12)`, the
    /// first with per-interpreter GILs (`ctypes`, used by all polyplugc glue, loads in
    /// own-GIL interpreters only from 3.13; see `mode`).
    pub min_version: (u32, u32),
    /// Deepest plugin→plugin nesting (a chain A→B→A counts 3) before a call fails with
    /// `AbiError` 9 (ReentrantCall). Default 64, well under Python's recursion limit.
    pub max_depth: usize,
    /// Stack size of each bundle's interpreter thread. Default 8 MiB.
    pub stack_size: usize,
    /// Let plugins start (non-daemon) `threading` threads. Default `false`: an
    /// interpreter cannot end while its threads run, so unload would wait on them.
    pub allow_threads: bool,
    /// Spin-then-park policy of the calling and interpreter threads.
    pub wait: WaitPolicy,
    /// Interpreter mode for bundles not named in `bundle_modes`. Default
    /// [`InterpreterMode::default_for_this_python`]: `OwnGil` on CPython 3.13+,
    /// `SharedGil` on 3.12.
    pub mode: InterpreterMode,
    /// Per-bundle mode, by bundle (manifest) name; wins over `mode`.
    pub bundle_modes: HashMap<String, InterpreterMode>,
    /// When a bundle's import fails because an extension module refuses its mode ("does not
    /// support loading in subinterpreters"), end that interpreter and retry in the next
    /// mode, logging a warning that names the module. Off: the load fails with that error.
    /// Default `true`.
    pub auto_downgrade: bool,
    /// Keep one fresh interpreter ready (created, common stdlib modules imported) so a load
    /// skips ~20 ms of start-up; it costs one idle interpreter (~3 MiB) per process.
    /// Default `true`.
    pub prewarm: bool,
    /// Deadline for every call into a bundle (interrupted inside Python, see
    /// `interp_pool::InterpreterHandle::call_with`). Default `None`: no deadline, and no
    /// cost. `with_call_options` overrides it per call.
    pub call_timeout: Option<Duration>,
    /// Per-bundle deadline, by bundle (manifest) name; wins over `call_timeout`.
    pub bundle_timeouts: HashMap<String, Duration>,
    /// Calls that may wait in one bundle's queue. Default 1024.
    pub queue_capacity: usize,
    /// When a bundle's queue is full: wait for room (`Block`, default) or fail the call
    /// at once (`Fail`: `AbiError` Generic, "python: bundle busy").
    pub when_full: WhenFull,
    /// Replace `ctypes.string_at`, `ctypes.memmove` and `ctypes.cast`, which polyplugc's
    /// generated glue calls on every call, with native fast paths in every interpreter a bundle runs in,
    /// before its code runs (`interp_pool::install_fast_ctypes`: same results and errors,
    /// other argument shapes go to ctypes' own; a bundle that replaces them keeps its
    /// own). In `main` mode only if this process's loader initialised Python: a host's own
    /// main interpreter is left alone. Default `true`.
    pub fast_glue: bool,
}

impl Default for PythonConfig {
    fn default() -> Self {
        Self {
            min_version: (3, 12),
            max_depth: 64,
            stack_size: 8 << 20,
            allow_threads: false,
            wait: WaitPolicy::default(),
            prewarm: true,
            mode: InterpreterMode::default(),
            bundle_modes: HashMap::new(),
            auto_downgrade: true,
            call_timeout: None,
            bundle_timeouts: HashMap::new(),
            queue_capacity: 1024,
            when_full: WhenFull::Block,
            fast_glue: true,
        }
    }
}

impl PythonConfig {
    /// The deadline of a bundle's calls.
    pub(crate) fn timeout_for(&self, bundle: &str) -> Option<Duration> {
        self.bundle_timeouts
            .get(bundle)
            .copied()
            .or(self.call_timeout)
    }

    /// The mode a bundle starts in.
    pub(crate) fn mode_for(&self, bundle: &str) -> InterpreterMode {
        self.bundle_modes.get(bundle).copied().unwrap_or(self.mode)
    }

    pub(crate) fn interpreter(
        &self,
        bundle: &str,
        mode: InterpreterMode,
    ) -> interp_pool::InterpreterConfig {
        let (gil, check_multi_interp_extensions) = match mode {
            InterpreterMode::OwnGil => (GilMode::Own, true),
            // Still refuse extensions without subinterpreter support (single-phase init,
            // numpy, orjson), so they move on to `Main` instead of loading where they may
            // misbehave. Before 3.13 `_ctypes` itself lacks that support (the same fact
            // that keeps it out of own-GIL interpreters): no check there.
            InterpreterMode::SharedGil => (GilMode::Shared, ctypes_loads_in_own_gil()),
            // Only depth, stack and wait policy apply to the main interpreter.
            InterpreterMode::Main => (GilMode::Shared, false),
        };
        interp_pool::InterpreterConfig {
            gil,
            check_multi_interp_extensions,
            max_depth: self.max_depth,
            stack_size: self.stack_size,
            allow_threads: self.allow_threads,
            wait: self.wait,
            queue_capacity: self.queue_capacity,
            when_full: self.when_full,
            ..interp_pool::InterpreterConfig::named(bundle)
        }
    }
}
