//! Where a bundle's calls run: one interpreter, or replicas (`PythonConfig::replicas`).
//!
//! A replicated bundle is an `interp_pool::InterpreterGroup`: K own-GIL interpreters, each
//! having run the bundle's entry module and `polyplug_init`, behind one queue. Calls on the
//! default instance go to whichever replica is free; an instance lives on one replica and
//! its calls go there (affinity). Module globals are per replica.
//!
//! A `main`-mode bundle is an `interp_pool::MainLane` instead: its one copy in the main
//! interpreter, served by the process-wide pool of main threads, with `replicas` as the
//! lane's limit: how many of those threads may run its calls at once, sharing its module
//! state (see [`main_limit`]).

use interp_pool::{
    Attached, CallOptions, InterpreterGroup, InterpreterHandle, InterpreterId, MainLane,
};
use polyplug::logger::LoggerHandle;
use polyplug_abi::types::LogLevel;

/// The interpreters a bundle's calls run on.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One interpreter: a bundle with one replica, `shared_gil`, or `main`.
    One(InterpreterHandle),
    /// Replicas behind one queue.
    Group(InterpreterGroup),
    /// A `main`-mode bundle: its lane of the main interpreter's thread pool.
    Main(MainLane),
}

impl Target {
    /// Runs `f` on any replica (the free one first).
    pub(crate) fn call_with<R: Send>(
        &self,
        opts: &CallOptions,
        f: impl FnOnce(&Attached<'_>) -> interp_pool::Result<R> + Send,
    ) -> interp_pool::Result<R> {
        match self {
            Target::One(h) => h.call_with(opts, f),
            Target::Group(g) => g.call_with(opts, f),
            Target::Main(l) => l.call_with(opts, f),
        }
    }

    /// The replicas, in the order they were made (for `main`: the main interpreter's first
    /// pool thread, where the bundle's init and cleanup run).
    pub(crate) fn members(&self) -> Vec<InterpreterHandle> {
        match self {
            Target::One(h) => vec![h.clone()],
            Target::Group(g) => g.members(),
            Target::Main(l) => l.threads().first().cloned().into_iter().collect(),
        }
    }

    /// How many replicas it has (for `main`: how many threads may run its calls at once).
    pub(crate) fn replicas(&self) -> usize {
        match self {
            Target::Main(l) => l.limit(),
            _ => self.members().len(),
        }
    }

    /// Per-replica stats (for `main`: the lane's, as one entry).
    pub(crate) fn stats(&self) -> Vec<ReplicaStats> {
        match self {
            Target::Main(l) => vec![ReplicaStats {
                python_interp_id: 0,
                queue_depth: l.queue_len(),
                busy: l.running() > 0,
                calls_served: l.calls_served(),
            }],
            _ => self.members().iter().map(ReplicaStats::of).collect(),
        }
    }

    /// Whether calls can go to more than one interpreter (so an instance's calls must be
    /// sent to its own replica).
    pub(crate) fn is_replicated(&self) -> bool {
        matches!(self, Target::Group(_))
    }

    /// The first replica: the one logs and `BundleInfo` name.
    pub(crate) fn primary(&self) -> Option<InterpreterHandle> {
        self.members().into_iter().next()
    }

    /// Calls waiting for a replica (the shared queue and every replica's own).
    pub(crate) fn queue_len(&self) -> usize {
        match self {
            Target::One(h) => h.queue_len(),
            Target::Group(g) => {
                g.queue_len() + g.members().iter().map(|m| m.queue_len()).sum::<usize>()
            }
            Target::Main(l) => l.queue_len(),
        }
    }

    /// Ends every replica once its running calls return; calls still queued fail. (For
    /// `main`: closes the lane the same way; the main interpreter lives on.)
    pub(crate) fn end(&self) {
        match self {
            Target::One(h) => h.end(),
            Target::Group(g) => g.end(),
            Target::Main(l) => l.end(),
        }
    }
}

/// What `replicas` means for a `main`-mode bundle: the lane's limit. `Fixed(k)`: up to k
/// pool threads at once; `Auto`: every pool thread; `Elastic { max, .. }`: `max` at once
/// (adding a thread to a lane costs nothing, so the range's top applies from the start).
pub(crate) fn main_limit(replicas: crate::Replicas) -> usize {
    match replicas {
        crate::Replicas::Fixed(k) => k,
        crate::Replicas::Auto => interp_pool::main_threads(),
        crate::Replicas::Elastic { max, .. } => max,
    }
}

/// A bundle landing in `main` with `replicas` above one: says (to the runtime's logger and
/// `tracing`) what the setting means there, since in `own_gil` the same value means
/// isolated interpreters.
pub(crate) fn note_main_threads(logger: &LoggerHandle, bundle: &str, limit: usize, pool: usize) {
    let msg = format!(
        "bundle \"{bundle}\" runs in main mode: PythonConfig::replicas means up to {limit} of the \
         main interpreter's {pool} threads run its calls at once, sharing one copy of its module \
         state (not {limit} isolated interpreters)"
    );
    tracing::info!(bundle, replicas = limit, main_threads = pool, "{msg}");
    logger.log(LogLevel::Info, bundle, || msg.clone());
}

/// One replica's state, as `BundleMetrics` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStats {
    /// CPython's id of the replica's interpreter.
    pub python_interp_id: i64,
    /// Calls waiting on this replica's own queue (instance calls); calls any replica may
    /// take wait in the bundle's queue (`BundleMetrics::queue_depth` counts both).
    pub queue_depth: usize,
    /// Running a call, or looking for one (not parked).
    pub busy: bool,
    /// Calls it has run so far.
    pub calls_served: u64,
}

impl ReplicaStats {
    pub(crate) fn of(h: &InterpreterHandle) -> Self {
        Self {
            python_interp_id: h.python_id(),
            queue_depth: h.queue_len(),
            busy: h.is_busy(),
            calls_served: h.jobs_served(),
        }
    }
}

/// The replica an instance lives on, by interpreter id: the handle to send its calls to.
pub(crate) fn find(members: &[InterpreterHandle], id: InterpreterId) -> Option<&InterpreterHandle> {
    members.iter().find(|m| m.id() == id)
}

/// A replica count above one for a bundle that cannot have replicas: the warning (to the
/// runtime's logger and `tracing`) says what the setting means now.
pub(crate) fn warn_unreplicated(logger: &LoggerHandle, bundle: &str, mode: &str, wanted: usize) {
    let msg = format!(
        "PythonConfig::replicas[\"{bundle}\"] asks for up to {wanted} replicas, but the bundle runs \
         in {mode} mode, which has one interpreter: it runs with one"
    );
    tracing::warn!(bundle, mode, replicas = wanted, "{msg}");
    logger.log(LogLevel::Warn, bundle, || msg.clone());
}
