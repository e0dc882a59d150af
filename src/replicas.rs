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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use interp_pool::{Attached, CallOptions, InterpreterGroup, InterpreterHandle, MainLane};
use polyplug::logger::LoggerHandle;
use polyplug_abi::types::LogLevel;

/// The interpreters a bundle's calls run on.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One interpreter: a bundle with one replica, `shared_gil`, or `main`.
    One(InterpreterHandle),
    /// Replicas behind one queue.
    Group(Replicated),
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
            Target::Group(g) => {
                // Counted for an elastic bundle's controller: it wakes when calls wait.
                let _call = g.bell.as_deref().map(Bell::call);
                g.group.call_with(opts, f)
            }
            Target::Main(l) => l.call_with(opts, f),
        }
    }

    /// Lets callers run calls themselves on a free replica from now on (`Dispatch::Direct`),
    /// once the bundle's set-up and init ran on its own threads.
    pub(crate) fn set_direct(&self, on: bool) {
        match self {
            Target::One(h) => h.set_direct(on),
            Target::Group(g) => {
                g.group.set_direct(on);
                for m in g.group.members() {
                    m.set_direct(on);
                }
            }
            Target::Main(l) => l.set_direct(on),
        }
    }

    /// The replicas, in the order they were made (for `main`: the main interpreter's first
    /// pool thread, where the bundle's init and cleanup run).
    pub(crate) fn members(&self) -> Vec<InterpreterHandle> {
        match self {
            Target::One(h) => vec![h.clone()],
            Target::Group(g) => g.group.members(),
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
                direct_calls: l.direct_calls(),
            }],
            _ => self.members().iter().map(ReplicaStats::of).collect(),
        }
    }

    /// Whether calls can go to more than one interpreter (so an instance's calls must be
    /// sent to its own replica).
    pub(crate) fn is_replicated(&self) -> bool {
        matches!(self, Target::Group(_))
    }

    /// The record of replica `interp`, among those the bundle was loaded with.
    pub(crate) fn replica(&self, interp: interp_pool::InterpreterId) -> Option<Arc<Replica>> {
        match self {
            Target::Group(g) => g.loaded.iter().find(|r| r.id() == interp).cloned(),
            _ => None,
        }
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
                let members = g.group.members();
                g.group.queue_len() + members.iter().map(|m| m.queue_len()).sum::<usize>()
            }
            Target::Main(l) => l.queue_len(),
        }
    }

    /// Ends every replica once its running calls return; calls still queued fail. (For
    /// `main`: closes the lane the same way; the main interpreter lives on.)
    pub(crate) fn end(&self) {
        match self {
            Target::One(h) => h.end(),
            Target::Group(g) => g.group.end(),
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
    /// Of those, calls a caller ran on its own thread
    /// ([`Dispatch::Direct`](crate::Dispatch::Direct)); the rest were posted to its
    /// thread (in `main` mode: the lane's direct calls).
    pub direct_calls: u64,
}

impl ReplicaStats {
    pub(crate) fn of(h: &InterpreterHandle) -> Self {
        Self {
            python_interp_id: h.python_id(),
            queue_depth: h.queue_len(),
            busy: h.is_busy(),
            calls_served: h.jobs_served(),
            direct_calls: h.direct_calls(),
        }
    }
}

/// A replicated bundle's interpreters: the group its default-instance calls go to, and a
/// [`Replica`] record per interpreter it was loaded with (an elastic bundle's controller
/// makes and drops others).
#[derive(Debug, Clone)]
pub(crate) struct Replicated {
    pub(crate) group: InterpreterGroup,
    /// The replicas the load made, in order; each contract's objects pair with these.
    pub(crate) loaded: Vec<Arc<Replica>>,
    /// An elastic bundle's: wakes its controller when calls wait.
    pub(crate) bell: Option<Arc<Bell>>,
}

/// One replica of a replicated bundle: its interpreter, and how busy it is. Every
/// contract's objects for that interpreter hold the same record (`ReplicaObjects`), so the
/// replica an instance is placed on and the handle its calls are sent to come from one
/// place, added and dropped with the objects; the elastic controller reads the counts.
#[derive(Debug)]
pub(crate) struct Replica {
    handle: InterpreterHandle,
    /// Calls running on it now: counted inside the job (so by the replica that runs it).
    running: AtomicUsize,
    /// Calls started on it so far: the controller watches it move to see recent use.
    started: AtomicU64,
    /// Instance creations under way on it: it is not retired meanwhile.
    pins: AtomicUsize,
    /// Set while the controller retires it (or decides to): no instance is placed on it.
    retiring: AtomicBool,
}

impl Replica {
    pub(crate) fn new(handle: InterpreterHandle) -> Arc<Self> {
        Arc::new(Self {
            handle,
            running: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            pins: AtomicUsize::new(0),
            retiring: AtomicBool::new(false),
        })
    }

    pub(crate) fn handle(&self) -> &InterpreterHandle {
        &self.handle
    }

    pub(crate) fn id(&self) -> interp_pool::InterpreterId {
        self.handle.id()
    }

    /// A call starts running here; it counts as running until the guard drops.
    pub(crate) fn run(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::Relaxed);
        Running(Arc::clone(self))
    }

    /// Reserves it for an instance being created, unless it is being retired.
    pub(crate) fn pin(self: &Arc<Self>) -> Option<Pin> {
        // Pairs with `try_retire`: either it sees our pin, or we see its flag.
        self.pins.fetch_add(1, Ordering::SeqCst);
        if self.retiring.load(Ordering::SeqCst) {
            self.pins.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Pin(Arc::clone(self)))
    }

    /// Whether the controller is retiring it (no instance may be placed on it).
    pub(crate) fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    /// `(calls running now, calls started so far)`.
    pub(crate) fn activity(&self) -> (usize, u64) {
        (
            self.running.load(Ordering::SeqCst),
            self.started.load(Ordering::Relaxed),
        )
    }

    /// Marks it retiring if nothing holds it: no call running, no creation pinning it,
    /// and `holds_instances()` false (read after the mark, so no instance can appear
    /// later). Returns whether it is now retiring; if not, it stays as it was.
    pub(crate) fn try_retire(&self, holds_instances: impl FnOnce() -> bool) -> bool {
        self.retiring.store(true, Ordering::SeqCst);
        let free = self.pins.load(Ordering::SeqCst) == 0
            && self.running.load(Ordering::SeqCst) == 0
            && !holds_instances();
        if !free {
            self.retiring.store(false, Ordering::SeqCst);
        }
        free
    }
}

/// A call running on a replica (see [`Replica::run`]).
#[derive(Debug)]
pub(crate) struct Running(Arc<Replica>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A replica reserved for an instance being created (see [`Replica::pin`]).
#[derive(Debug)]
pub(crate) struct Pin(Arc<Replica>);

impl Pin {
    pub(crate) fn handle(&self) -> &InterpreterHandle {
        &self.0.handle
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How an elastic bundle's calls wake its controller, which otherwise sleeps: a count of
/// default-instance calls in progress, and a threshold (the replica count, or none once
/// at `max`) past which some call must be waiting. The dispatch path only counts and,
/// rarely, unparks; it takes no lock.
#[derive(Debug)]
pub(crate) struct Bell {
    in_flight: AtomicUsize,
    threshold: AtomicUsize,
    asleep: AtomicBool,
    controller: OnceLock<Thread>,
}

impl Bell {
    pub(crate) fn new(replicas: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            threshold: AtomicUsize::new(replicas),
            asleep: AtomicBool::new(false),
            controller: OnceLock::new(),
        })
    }

    /// A call on the group starts: wakes the controller if calls may now be waiting.
    fn call(&self) -> InFlight<'_> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        // Pairs with `sleep`: either it sees our count, or we see it asleep.
        if n > self.threshold.load(Ordering::Relaxed)
            && self.asleep.load(Ordering::SeqCst)
            && self.asleep.swap(false, Ordering::SeqCst)
        {
            if let Some(t) = self.controller.get() {
                t.unpark();
            }
        }
        InFlight(self)
    }

    /// Whether more default-instance calls are in progress than there are replicas to
    /// run them (some call waits). Always false at `max`.
    pub(crate) fn saturated(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > self.threshold.load(Ordering::Relaxed)
    }

    /// The controller's thread (once, from that thread).
    pub(crate) fn attach(&self) {
        let _ = self.controller.set(std::thread::current());
    }

    /// Calls past `replicas` wake the controller; at `max` none do (it cannot grow).
    pub(crate) fn set_replicas(&self, replicas: usize, max: usize) {
        let threshold = if replicas >= max {
            usize::MAX
        } else {
            replicas
        };
        self.threshold.store(threshold, Ordering::Relaxed);
    }

    /// The controller sleeps until a call may be waiting, it is unparked (stop), or
    /// `timeout` passes.
    pub(crate) fn sleep(&self, timeout: Duration) {
        self.asleep.store(true, Ordering::SeqCst);
        if !self.saturated() {
            std::thread::park_timeout(timeout);
        }
        self.asleep.store(false, Ordering::SeqCst);
    }
}

/// A default-instance call in progress on an elastic bundle (see [`Bell::call`]).
struct InFlight<'a>(&'a Bell);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
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
