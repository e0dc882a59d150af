//! Loader configuration.

use std::collections::HashMap;

use std::time::Duration;

use interp_pool::{Allocator, GilMode, WaitPolicy, WhenFull};

use crate::failure_log::FailureLogPolicy;

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
    /// A PyO3 or Cython module (`one_per_process`) skips `SharedGil`: CPython would let
    /// it load in a shared-GIL subinterpreter, but it binds itself to the first
    /// interpreter that imports it and refuses (or breaks in) every other one, main
    /// included, for the rest of the process.
    pub(crate) fn fallback(self, one_per_process: bool) -> Option<Self> {
        match self {
            InterpreterMode::OwnGil if one_per_process => Some(InterpreterMode::Main),
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

/// What a load does when an extension module refuses the bundle's interpreter but the
/// importing package catches the ImportError and goes on without it (PyYAML without
/// `yaml._yaml`, msgpack on `msgpack.fallback`). See `PythonConfig::caught_refusals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaughtRefusals {
    /// Count it like a raised refusal: retry the load in the next mode (with
    /// `auto_downgrade`), warning that the importing package caught it. The default: a
    /// refused module is in the bundle's path, so the bundle is taken to want it.
    #[default]
    Downgrade,
    /// Keep the mode and run the package's fallback, with a warning naming the module;
    /// `BundleInfo::reason` reports it as `fallback`.
    KeepMode,
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
    /// At least 1: 0 (no call could run) fails the load.
    pub max_depth: usize,
    /// Stack size of each bundle's interpreter thread. Default 8 MiB; at least
    /// [`interp_pool::MIN_STACK_SIZE`] (1 MiB), a smaller one fails the load.
    pub stack_size: usize,
    /// Let plugins start (non-daemon) `threading` threads. Default `false`: an
    /// interpreter cannot end while its threads run, so unload would wait on them.
    pub allow_threads: bool,
    /// Spin-then-park policy of the calling and interpreter threads, passed to each
    /// bundle's interpreter as is: `caller_spin` 20 µs, `server_spin` 20 µs, and
    /// `caller_spin_max` 500 µs, the longest a caller's spin is stretched to for a bundle
    /// whose recent calls answered within it (zero: never stretch). Each bundle has its
    /// own estimate (its interpreter, its replica group, or in `main` its lane); the main
    /// interpreter's threads keep the server spin of the first bundle that started them.
    pub wait: WaitPolicy,
    /// Interpreter mode for bundles not named in `bundle_modes`. Default
    /// [`InterpreterMode::default_for_this_python`]: `OwnGil` on CPython 3.13+,
    /// `SharedGil` on 3.12.
    pub mode: InterpreterMode,
    /// Per-bundle mode, by bundle (manifest) name; wins over `mode` and over a mode
    /// remembered from an earlier load of the bundle in this process.
    pub bundle_modes: HashMap<String, InterpreterMode>,
    /// When an extension module refuses the bundle's mode ("does not support loading in
    /// subinterpreters", or Cython's "Interpreter change detected") during its load, raised
    /// or caught by the importing package (see `caught_refusals`), end that interpreter and
    /// retry in the next mode, logging a warning that names the module; the mode that
    /// worked is remembered for the next load of the same files in this process. Off: the
    /// load fails with an error naming the module. Default `true`.
    pub auto_downgrade: bool,
    /// A refusal the importing package caught (seen by the loader's import hook): retry
    /// in the next mode like a raised one (`Downgrade`, default) or keep the mode and run
    /// the package's pure-Python fallback (`KeepMode`). Either way it is logged.
    pub caught_refusals: CaughtRefusals,
    /// Per bundle (manifest) name, extension modules whose refusal the bundle ignores:
    /// an optional accelerator it does not need. Neither a caught nor a call-time
    /// refusal of these moves or reports the bundle (a raised one still fails the
    /// import, so it still downgrades). Default empty.
    pub ignored_refusals: HashMap<String, Vec<String>>,
    /// Keep one fresh interpreter ready (created, common stdlib modules imported) so a load
    /// skips ~20 ms of start-up; it costs one idle interpreter (~3 MiB) per process.
    /// Default `true`.
    pub prewarm: bool,
    /// Deadline for every call into a bundle (interrupted inside Python, see
    /// `interp_pool::InterpreterHandle::call_with`). Default `None`: no deadline, and no
    /// cost. `with_call_options` overrides it per call. A deadline must be more than zero
    /// and at most [`PythonConfig::MAX_TIMEOUT`] (a year): another value fails each load
    /// with an error naming it (for no deadline, say `None`).
    pub call_timeout: Option<Duration>,
    /// Per-bundle deadline, by bundle (manifest) name; wins over `call_timeout`:
    /// `Some(d)` for a deadline of its own (bounded like `call_timeout`), `None` for no
    /// deadline at all even when `call_timeout` is set. Absent: `call_timeout`.
    pub bundle_timeouts: HashMap<String, Option<Duration>>,
    /// How long a call interrupted at its deadline may go on before it is interrupted
    /// again; after a second grace period it is stopped on its next line whatever its
    /// `except` clauses (README, "Deadlines"). Default 100 ms
    /// (`interp_pool::DEFAULT_GRACE`); `with_call_options` may set its own. From
    /// [`PythonConfig::MIN_GRACE`] (1 ms: the interrupter must not spin) to
    /// [`PythonConfig::MAX_TIMEOUT`]; another value fails each load with an error naming it.
    pub interrupt_grace: Duration,
    /// Calls that may wait in one bundle's queue. Default 1024.
    pub queue_capacity: usize,
    /// When a bundle's queue is full: wait for room (`Block`, default) or fail the call
    /// at once (`Fail`: `AbiError` Generic, "python: bundle busy").
    pub when_full: WhenFull,
    /// How many own-GIL interpreters serve a bundle, by bundle (manifest) name; absent = 1.
    ///
    /// Each replica is a fresh interpreter that runs the bundle's entry module and its own
    /// `polyplug_init`; a default-instance call runs on whichever replica is free, an
    /// instance's calls on the replica it was made on. **Module globals are per replica**:
    /// replicas are for stateless bundles and per-instance state. A bundle that lands in
    /// `shared_gil` runs with one interpreter (a warning names this setting).
    ///
    /// In `main` mode the bundle has one copy, in the main interpreter, and the setting is
    /// how many of the main interpreter's threads (`main_threads`) may run its calls at
    /// once, **sharing its module globals**: `Fixed(k)` up to k (a call re-entering the
    /// bundle on a thread already running it does not count again), `Auto` all of them,
    /// `Elastic { max, .. }` up to `max`. Absent = 1: one call at a time, as in one
    /// thread. A bundle whose mode is not the one asked for logs what the setting means.
    pub replicas: HashMap<String, Replicas>,
    /// Threads serving the main interpreter (`main`-mode bundles), each with its own
    /// thread state there; process-wide, so the first load that starts them decides
    /// (later values are logged and ignored). Default `None`: available parallelism.
    /// `Some(0)` fails the load (say `None` for one per core); above
    /// [`interp_pool::MAX_MAIN_THREADS`] the pool is capped there.
    pub main_threads: Option<usize>,
    /// When an [`Replicas::Elastic`] bundle grows and shrinks.
    pub elastic: ElasticPolicy,
    /// How many failing calls per bundle get their full traceback logged; the others are
    /// counted and summed up in one line per interval (see [`FailureLogPolicy`]: by
    /// default the first 3 of each kind and 20 in all per 10 s). Metrics count every one.
    pub failure_log: FailureLogPolicy,
    /// Count what each bundle's interpreter allocates (`BundleMetrics::memory_bytes`) and
    /// enforce `memory_limit`, with a wrapping allocator installed before CPython is
    /// initialised: it is off for the whole process if any loader made before the first
    /// load has it off, and off when the host initialised Python or `PYTHONMALLOC` is set
    /// (`BundleInfo::memory_accounting` tells). Default `true`.
    pub memory_accounting: bool,
    /// The allocator of CPython's MEM and OBJ domains (objects and most buffers), chosen
    /// before CPython is initialised, for the whole process: the last loader made before
    /// the first load with a non-default value decides; not used when the host initialised
    /// Python or `PYTHONMALLOC` is set (`BundleInfo::allocator` tells). Default
    /// [`Allocator::Mimalloc`] (a mimalloc linked into the loader: faster than `malloc` on
    /// allocation-heavy Python and leaner per ended interpreter, BENCHMARKS.md).
    pub allocator: Allocator,
    /// Most bytes a bundle's interpreter may hold in CPython's MEM and OBJ domains (its
    /// interpreter's own start-up included: ~2–4 MiB); an allocation past it raises
    /// `MemoryError` in the plugin. Counted per thread and synced every 64 KiB, so threads
    /// allocating for one bundle at once may pass it by < 64 KiB each (ARCHITECTURE.md,
    /// "Memory accounting"). Default `None`: no limit.
    pub memory_limit: Option<usize>,
    /// Per-bundle limit, by bundle (manifest) name; wins over `memory_limit`.
    pub bundle_memory_limits: HashMap<String, usize>,
    /// Replace `ctypes.string_at`, `ctypes.memmove` and `ctypes.cast`, which polyplugc's
    /// generated glue calls on every call, with native fast paths in every interpreter a bundle runs in,
    /// before its code runs (`interp_pool::install_fast_ctypes`: same results and errors,
    /// other argument shapes go to ctypes' own; a bundle that replaces them keeps its
    /// own). In `main` mode only if this process's loader initialised Python: a host's own
    /// main interpreter is left alone. Default `true`.
    pub fast_glue: bool,
    /// How a host thread's call reaches a bundle's interpreter (see [`Dispatch`]). Default
    /// [`Dispatch::Post`]: the bundle's code runs on its own threads only.
    pub dispatch: Dispatch,
    /// Per-bundle dispatch, by bundle (manifest) name; wins over `dispatch`. A name that
    /// matches no bundle of the plugin directory is logged as a warning at the first load
    /// from it (as for `replicas`): a misspelt one would silently mean `dispatch`.
    pub bundle_dispatch: HashMap<String, Dispatch>,
}

/// How a host thread's call reaches a bundle's interpreter.
///
/// Under **`Direct`** the bundle's Python runs on the host's threads: a caller that finds
/// the bundle's interpreter (or one of its replicas) free, with nothing queued for it,
/// claims it and runs the call itself, on a thread state of its own for that interpreter
/// kept across calls: no hand-off, so N host threads use N cores even when threads
/// outnumber cores. Otherwise the call is posted as under `Post`: when the interpreter
/// (each of its replicas) is running another call, when calls are queued for it (a direct
/// call never overtakes them), or when the calling thread's stack is too small for the call
/// (CPython 3.13 does not check the real C stack; interpreter threads have
/// [`PythonConfig::stack_size`], host threads often 2 MiB). Calls of one interpreter still
/// run one at a time, and what holds for a posted call (re-entry, depth cap, deadlines and
/// cancel, memory limits, metrics, replicas and instance affinity, unload and reload) holds
/// for a direct one. A `main`-mode bundle's direct call runs on the calling thread attached
/// to the main interpreter, with its `replicas` as the number of calls at once.
///
/// What changes for the plugin: `threading.get_ident()`, `threading.local()` and the
/// per-thread `decimal` context differ between calls from different host threads, and
/// objects that check their creating thread (a `sqlite3` connection with
/// `check_same_thread`, the default) fail when a later call comes from another thread.
/// Safe to switch: stateless plugins and plugins whose state is plain module globals or
/// instance attributes (validators, routers, header rewrites, calculators). Keep `Post`
/// (the default: an interpreter's calls then run on its own thread; in `main` mode on
/// the main interpreter's threads, one at a time unless `replicas` says more) for plugins that keep
/// thread-bound objects across calls or rely on `threading.local` or a `decimal` context
/// persisting between calls.
///
/// Set it with [`PythonConfig::dispatch`] / [`PythonConfig::bundle_dispatch`], or
/// `--dispatch NAME=direct` on the CLI; [`BundleInfo::dispatch`](crate::BundleInfo::dispatch)
/// reports it. C hosts (the `ffi` exports) cannot choose it yet: their bundles run with
/// `Post` (README, "Direct dispatch").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dispatch {
    /// Every call is handed to the interpreter's own thread (default).
    #[default]
    Post,
    /// The calling thread runs the call itself when the interpreter is free.
    Direct,
}

impl Dispatch {
    /// `"post"` or `"direct"`, as the CLI and `check` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Dispatch::Post => "post",
            Dispatch::Direct => "direct",
        }
    }
}

impl std::fmt::Display for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dispatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "post" => Ok(Dispatch::Post),
            "direct" => Ok(Dispatch::Direct),
            other => Err(format!("unknown dispatch {other:?} (post or direct)")),
        }
    }
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
            caught_refusals: CaughtRefusals::Downgrade,
            ignored_refusals: HashMap::new(),
            call_timeout: None,
            bundle_timeouts: HashMap::new(),
            interrupt_grace: interp_pool::DEFAULT_GRACE,
            queue_capacity: 1024,
            when_full: WhenFull::Block,
            failure_log: FailureLogPolicy::default(),
            memory_accounting: true,
            allocator: Allocator::Mimalloc,
            memory_limit: None,
            bundle_memory_limits: HashMap::new(),
            replicas: HashMap::new(),
            main_threads: None,
            elastic: ElasticPolicy::default(),
            fast_glue: true,
            dispatch: Dispatch::Post,
            bundle_dispatch: HashMap::new(),
        }
    }
}

/// How many interpreters serve one bundle (see [`PythonConfig::replicas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replicas {
    /// Exactly this many (at least 1).
    Fixed(usize),
    /// One per available core (`std::thread::available_parallelism`).
    Auto,
    /// Starts with `min`; adds one (up to `max`) when calls wait because every replica is
    /// busy, and retires one that stayed idle (never below `min`): see [`ElasticPolicy`].
    Elastic {
        /// Replicas kept at all times (at least 1).
        min: usize,
        /// Replicas at most (at least `min`).
        max: usize,
    },
}

impl Replicas {
    /// `(initial, max)` replica counts, or a description of what is wrong with the value.
    pub(crate) fn bounds(self) -> Result<(usize, usize), String> {
        match self {
            Replicas::Fixed(0) => {
                Err("Replicas::Fixed(0): a bundle needs at least one replica".into())
            }
            Replicas::Fixed(k) => Ok((k, k)),
            Replicas::Auto => {
                let k = std::thread::available_parallelism().map_or(1, |n| n.get());
                Ok((k, k))
            }
            Replicas::Elastic { max: 0, .. } => {
                Err("Replicas::Elastic { max: 0 }: max must be at least 1".into())
            }
            Replicas::Elastic { min, max } if min > max => Err(format!(
                "Replicas::Elastic {{ min: {min}, max: {max} }}: min is larger than max"
            )),
            Replicas::Elastic { min, max } => Ok((min.max(1), max)),
        }
    }
}

/// When an elastic bundle grows and shrinks (see [`Replicas::Elastic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElasticPolicy {
    /// Grow when a call has waited this long in the bundle's queue while every replica was
    /// busy. Default 2 ms: longer than a typical hand-off, far shorter than creating a
    /// replica (~15-30 ms), which happens off the callers' threads.
    pub grow_after: Duration,
    /// Retire a replica (above `min`, running no call and holding no instance) that
    /// started no call for this long. Default 30 s. The idle controller looks for one
    /// every quarter of this.
    pub idle_retire: Duration,
    /// How often the bundle's elastic controller looks while calls wait with every
    /// replica busy (it sleeps otherwise). Default 1 ms.
    pub check_every: Duration,
}

impl Default for ElasticPolicy {
    fn default() -> Self {
        Self {
            grow_after: Duration::from_millis(2),
            idle_retire: Duration::from_secs(30),
            check_every: Duration::from_millis(1),
        }
    }
}

impl PythonConfig {
    /// The longest deadline (`call_timeout`, `bundle_timeouts`) and grace period
    /// (`interrupt_grace`) accepted: 365 days. Longer ones mean "never" in practice and
    /// would overflow the clock arithmetic; say `None` for no deadline.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// The shortest `interrupt_grace` accepted: interp-pool's [`interp_pool::MIN_GRACE`]
    /// (1 ms), which it would raise a shorter one to. The interrupter waits a grace period
    /// between rounds; a zero one would make it spin.
    pub const MIN_GRACE: Duration = interp_pool::MIN_GRACE;

    /// Checks the settings that apply to a load of `bundle`: `Err` names the first bad
    /// field and its value (a load error then names the bundle).
    pub(crate) fn check(&self, bundle: &str) -> Result<(), String> {
        let deadline = |field: String, d: Duration| {
            if d.is_zero() || d > Self::MAX_TIMEOUT {
                Err(format!(
                    "invalid PythonConfig::{field}: Some({d:?}): a deadline must be more than \
                     zero and at most PythonConfig::MAX_TIMEOUT ({:?}); None means no deadline",
                    Self::MAX_TIMEOUT
                ))
            } else {
                Ok(())
            }
        };
        if let Some(d) = self.call_timeout {
            deadline("call_timeout".into(), d)?;
        }
        if let Some(Some(d)) = self.bundle_timeouts.get(bundle) {
            deadline(format!("bundle_timeouts[\"{bundle}\"]"), *d)?;
        }
        let grace = self.interrupt_grace;
        if !(Self::MIN_GRACE..=Self::MAX_TIMEOUT).contains(&grace) {
            return Err(format!(
                "invalid PythonConfig::interrupt_grace: {grace:?}: it must be from {:?} \
                 (PythonConfig::MIN_GRACE) to {:?} (PythonConfig::MAX_TIMEOUT)",
                Self::MIN_GRACE,
                Self::MAX_TIMEOUT
            ));
        }
        if self.max_depth == 0 {
            return Err(
                "invalid PythonConfig::max_depth: 0: no call could run (at least 1)".into(),
            );
        }
        if self.stack_size < interp_pool::MIN_STACK_SIZE {
            return Err(format!(
                "invalid PythonConfig::stack_size: {}: below interp_pool::MIN_STACK_SIZE ({} bytes)",
                self.stack_size,
                interp_pool::MIN_STACK_SIZE
            ));
        }
        if self.main_threads == Some(0) {
            return Err(
                "invalid PythonConfig::main_threads: Some(0): the main interpreter \
                        needs at least one thread (None means one per core)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The replica setting of a bundle (absent: one).
    pub(crate) fn replicas_for(&self, bundle: &str) -> Replicas {
        self.replicas
            .get(bundle)
            .copied()
            .unwrap_or(Replicas::Fixed(1))
    }

    /// The deadline of a bundle's calls.
    pub(crate) fn timeout_for(&self, bundle: &str) -> Option<Duration> {
        self.bundle_timeouts
            .get(bundle)
            .copied()
            .unwrap_or(self.call_timeout)
    }

    /// The memory limit of a bundle.
    pub(crate) fn memory_limit_for(&self, bundle: &str) -> Option<usize> {
        self.bundle_memory_limits
            .get(bundle)
            .copied()
            .or(self.memory_limit)
    }

    /// The mode a bundle starts in, and whether `bundle_modes` pinned it.
    pub(crate) fn mode_for(&self, bundle: &str) -> (InterpreterMode, bool) {
        match self.bundle_modes.get(bundle) {
            Some(&m) => (m, true),
            None => (self.mode, false),
        }
    }

    /// `bundle`'s dispatch: its own setting, else the default.
    pub(crate) fn dispatch_for(&self, bundle: &str) -> Dispatch {
        self.bundle_dispatch
            .get(bundle)
            .copied()
            .unwrap_or(self.dispatch)
    }

    /// The modules whose refusal `bundle` ignores.
    pub(crate) fn ignored_for(&self, bundle: &str) -> &[String] {
        self.ignored_refusals.get(bundle).map_or(&[], Vec::as_slice)
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
            // Direct is switched on once the bundle is loaded (`Target::set_direct`): its
            // set-up and init run on its own thread, and one pre-warmed spare serves both.
            direct: false,
            ..interp_pool::InterpreterConfig::named(bundle)
        }
    }
}
