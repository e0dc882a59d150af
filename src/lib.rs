//! A drop-in `python` [`BundleLoader`] for polyplug 0.1.3 that runs every bundle in its
//! own CPython subinterpreter with its own GIL (PEP 684), on an interpreter thread of its
//! own, so N host threads calling N Python bundles use N cores.
//!
//! ```no_run
//! use polyplug::runtime_builder::RuntimeBuilder;
//! use polyplug_subinterp::PythonLoader;
//!
//! let runtime = RuntimeBuilder::new()
//!     .loader(PythonLoader::default())
//!     .plugin_dir("fixtures/bundles".into())
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The registration protocol is polyplug_python 0.1.3's: the entry module's
//! `polyplug_init(host_ptr, ctx_ptr)` returns `(list of registration dicts, AbiError)`;
//! each dict names a `contract`, a `factory` and `functions` ordered by fn_id; dispatch
//! calls `fn(impl, args_ptr, out_ptr, arena_ptr, arena_alloc)`. What differs is
//! underneath: see `ARCHITECTURE.md`. Hosts to start from: `examples/host.rs` (threads)
//! and `examples/tokio_host.rs` (async).
//!
//! # Trust model: isolation is not a sandbox
//!
//! A subinterpreter isolates Python *state* (modules, globals, `sys.path`, and in
//! [`InterpreterMode::OwnGil`] the GIL), not *memory*. Plugin code runs in the host's
//! process with the host's privileges and can read and write the host's memory (`ctypes`
//! is one import away; every polyplugc bundle imports it), its files and sockets, or end
//! the process. Deadlines ([`PythonConfig::call_timeout`], [`with_call_options`]),
//! cancellation, queue limits and memory limits ([`PythonConfig::memory_limit`]) govern
//! well-behaved and buggy code, not hostile code: C code that holds the GIL cannot be
//! stopped, and an extension's own `malloc` is not counted. Load only plugins you would
//! link into the host; untrusted code belongs in a separate process or a wasm sandbox.
//!
//! # Features
//!
//! * `c-exports` (default): the polyplug_python-compatible C symbols (the `ffi` module).
//! * `cli` (default): the `polyplug-subinterp` binary's dependencies.
//! * `metrics`: `PythonLoader::publish_metrics` / `publish_metrics_every` publish the
//!   per-bundle metrics through the [`metrics`](https://docs.rs/metrics) facade
//!   (OpenTelemetry FaaS names where one fits; README, "Metrics for your monitoring").

#![deny(missing_docs)]

mod config;
mod contract;
mod deadlines;
mod elastic;
mod error;
mod failure_log;
mod fast_glue;
#[cfg(feature = "c-exports")]
pub mod ffi;
mod isolation;
mod lifecycle;
mod load;
mod memory_limits;
mod metrics;
mod mode_reason;
mod output;
mod refusals;
mod remembered;
mod replicas;
mod rss;
mod scope;
mod spare;

use std::sync::Arc;

use polyplug::error::LoaderError;
use polyplug::loader::{BundleLoader, BundleSource, ManifestData};
use polyplug::runtime::Runtime;
use polyplug_abi::SupportedLanguage;
use polyplug_utils::BundleId;

pub use config::{
    CaughtRefusals, Dispatch, ElasticPolicy, InterpreterMode, PythonConfig, Replicas,
};
/// Test hooks into the elastic controller (tests order their steps with them). Not API.
#[doc(hidden)]
pub use elastic::{hooks as elastic_hooks, Step as ElasticStep};
pub use error::{BUSY_MESSAGE, CANCELLED_MESSAGE, TIMEOUT_MESSAGE};
pub use failure_log::FailureLogPolicy;
// interp-pool types that appear in this crate's API, so a host needs no dependency on it.
pub use interp_pool::{
    memory_accounting, Allocator, AllocatorInUse, CallOptions, CancelToken, WaitPolicy, WhenFull,
    DEFAULT_GRACE,
};
#[cfg(feature = "metrics")]
pub use metrics::export::{MetricsPublisher, BUNDLE_LABEL, REPLICA_LABEL};
pub use metrics::BundleMetrics;
pub use mode_reason::{Binding, Evidence, ModeCause, ModeReason, RefusalHow};
pub use replicas::ReplicaStats;
pub use rss::rss_bytes;
pub use scope::with_call_options;

use crate::lifecycle::Loader;

/// The `python` bundle loader. `Send + Sync`; one per runtime.
///
/// Cloning is cheap and yields a handle to the same loader, so a host can keep one (for
/// [`bundle_info`](Self::bundle_info)) after giving the other to `RuntimeBuilder::loader`.
/// Bundles still loaded when the last handle drops are unloaded then.
#[derive(Debug, Default, Clone)]
pub struct PythonLoader {
    inner: Arc<Loader>,
    /// What was published through the `metrics` facade (feature `metrics`).
    #[cfg(feature = "metrics")]
    export: Arc<metrics::export::Exporter>,
}

/// Facts about a loaded bundle, for tools (`polyplug-subinterp check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// Bundle id (FNV-1a of its name).
    pub bundle_id: u64,
    /// `name@major` and the number of functions, per registered contract.
    pub contracts: Vec<(String, usize)>,
    /// How the bundle's interpreter runs: `"own_gil"`, `"shared_gil"` or `"main"`.
    pub mode: &'static str,
    /// Why it runs in `mode`: configured, pinned, or the extension module that refused
    /// the previous mode (raised or caught), whether that was remembered from an earlier
    /// load, and the modules it runs without (a package's fallback).
    pub reason: ModeReason,
    /// Extension modules that refused the bundle's interpreter during a call, since the
    /// load (each also counted in `BundleMetrics::refusals_at_call` and logged).
    pub call_refusals: Vec<String>,
    /// CPython's id of the bundle's (first) interpreter.
    pub python_interp_id: i64,
    /// How many interpreters serve it now (`PythonConfig::replicas`; 1 in `shared_gil`
    /// and `main`).
    pub replicas: usize,
    /// Whether its memory is counted (`BundleMetrics::memory_bytes`) and limited: off when
    /// the host initialised Python, `PYTHONMALLOC` is set, or
    /// `PythonConfig::memory_accounting` was off when Python started.
    pub memory_accounting: bool,
    /// The allocator CPython's objects live on in this process (`PythonConfig::allocator`),
    /// or why none of ours: `PYTHONMALLOC` set, or the host initialised Python.
    pub allocator: AllocatorInUse,
    /// Its memory limit, bytes (`PythonConfig::memory_limit` / `bundle_memory_limits`),
    /// enforced only with `memory_accounting`.
    pub memory_limit: Option<u64>,
    /// Whether the generated glue's `ctypes.string_at` / `ctypes.memmove` run as native
    /// fast paths in its interpreter (`PythonConfig::fast_glue`).
    pub fast_glue: bool,
    /// How a host thread's call reaches it (`PythonConfig::dispatch` /
    /// `bundle_dispatch`): the configured value. Under [`Dispatch::Direct`] a call still
    /// falls back to posting when the interpreter (every replica) is busy, calls are
    /// queued for it, or the calling thread's stack is too small for the call to run
    /// there; in `main` mode a direct call runs on the calling thread attached to the main
    /// interpreter, within the bundle's `replicas` limit.
    pub dispatch: Dispatch,
}

impl PythonLoader {
    /// A loader with the given settings.
    pub fn new(config: PythonConfig) -> Self {
        if !config.memory_accounting && !interp_pool::set_memory_accounting(false) {
            tracing::info!("memory accounting stays on: CPython was initialised with it");
        }
        if config.allocator != Allocator::default() && !interp_pool::set_allocator(config.allocator)
        {
            tracing::info!(allocator = %interp_pool::allocator(), "CPython already runs on another allocator");
        }
        Self {
            inner: Arc::new(Loader::new(config)),
            #[cfg(feature = "metrics")]
            export: Arc::default(),
        }
    }

    /// The settings this loader was built with.
    pub fn config(&self) -> &PythonConfig {
        self.inner.config()
    }

    /// What is loaded for `bundle_id` (the most recent load if there are several).
    pub fn bundle_info(&self, bundle_id: u64) -> Option<BundleInfo> {
        self.inner.latest(bundle_id, |b| BundleInfo {
            bundle_id,
            contracts: b
                .contracts
                .iter()
                .map(|c| (c.contract.clone(), c.fn_count))
                .collect(),
            mode: b.mode.as_str(),
            reason: b.reason.clone(),
            call_refusals: b.watch.refused(),
            python_interp_id: b.target.primary().map_or(0, |h| h.python_id()),
            replicas: b.target.replicas(),
            memory_accounting: interp_pool::memory_accounting(),
            allocator: interp_pool::allocator(),
            memory_limit: b.memory_limit(),
            fast_glue: b.fast_glue,
            dispatch: b.dispatch,
        })
    }

    /// Call metrics of the bundle's most recent load.
    pub fn metrics(&self, bundle_id: u64) -> Option<BundleMetrics> {
        self.inner.latest(bundle_id, |b| b.metrics())
    }

    /// Publishes every loaded bundle's metrics through the [`metrics`](https://docs.rs/metrics)
    /// facade, to the recorder it has now (the thread's local one, else the global one):
    /// counters as increments since this loader's last publish to that recorder (a
    /// recorder it never published to gets the totals since the first load), gauges set,
    /// histogram values recorded. Names, units and labels: README, "Metrics for your
    /// monitoring". Call it from a timer or a scrape hook, or use
    /// [`publish_metrics_every`](Self::publish_metrics_every). Feature `metrics`.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        self.export.publish(&*self.inner);
    }

    /// Publishes every `every` (and once more when the returned handle drops) on a
    /// thread of its own, to the facade's global recorder, so a recorder installed later
    /// is picked up at the next tick. The thread does not keep the loader alive. Feature
    /// `metrics`.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics_every(&self, every: std::time::Duration) -> MetricsPublisher {
        let inner: Arc<dyn metrics::export::Loads + Send + Sync> = self.inner.clone();
        MetricsPublisher::start(Arc::downgrade(&inner), Arc::clone(&self.export), every)
    }
}

impl BundleLoader for PythonLoader {
    fn loader_name(&self) -> &'static str {
        "python"
    }

    fn loader_language(&self) -> SupportedLanguage {
        SupportedLanguage::Python
    }

    fn supports_hot_reload(&self) -> bool {
        true
    }

    fn load(
        &self,
        manifest: &ManifestData,
        source: &BundleSource,
        runtime: &Runtime,
    ) -> Result<(), LoaderError> {
        self.inner.load(manifest, source, runtime)
    }

    /// Loads the bundle's current code from its directory into a fresh interpreter (the
    /// normal load path: mode, downgrade, init, registration, which the runtime keeps
    /// pending during the reload), then retires the previous version: each old contract
    /// forwards default-instance calls to its new counterpart, its objects are released
    /// and its interpreter ends once the calls running in it return. On failure the old
    /// version is untouched and the new interpreter is already gone. Instances are not
    /// carried over (polyplug's `Preparing` phase has the host destroy them).
    fn reload(&self, manifest: &ManifestData, runtime: &Runtime) -> Result<(), LoaderError> {
        self.inner.reload(manifest, runtime)
    }

    fn unload(&self, bundle_id: BundleId, _runtime: &Runtime) -> Result<(), LoaderError> {
        self.inner.unload(bundle_id.id());
        Ok(())
    }
}
