//! Loader configuration.

use interp_pool::WaitPolicy;

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
    /// Oldest CPython accepted at load time, `(major, minor)`. Default `(3, 13)`: own-GIL
    /// interpreters need 3.12, and `ctypes` (used by all polyplugc glue) loads in them
    /// only from 3.13.
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
    /// Keep one fresh interpreter ready (created, common stdlib modules imported) so a load
    /// skips ~20 ms of start-up; it costs one idle interpreter (~3 MiB) per process.
    /// Default `true`.
    pub prewarm: bool,
}

impl Default for PythonConfig {
    fn default() -> Self {
        Self {
            min_version: (3, 13),
            max_depth: 64,
            stack_size: 8 << 20,
            allow_threads: false,
            wait: WaitPolicy::default(),
            prewarm: true,
        }
    }
}

impl PythonConfig {
    pub(crate) fn interpreter(&self, bundle: &str) -> interp_pool::InterpreterConfig {
        interp_pool::InterpreterConfig {
            max_depth: self.max_depth,
            stack_size: self.stack_size,
            allow_threads: self.allow_threads,
            wait: self.wait,
            ..interp_pool::InterpreterConfig::named(bundle)
        }
    }
}
