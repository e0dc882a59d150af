//! `Replicas::Elastic { min, max }`: a controller thread per elastic bundle load grows the
//! replica group when calls wait because every replica is busy, and retires a replica that
//! stayed idle (never below `min`, never one running a call, holding an instance or
//! reserved for one being created).
//!
//! The controller sleeps until a default-instance call finds every replica taken (the
//! bundle's `replicas::Bell`, rung by the dispatch path without a lock), then looks every
//! `check_every` while calls wait; idle, it wakes only on a coarse timer (a quarter of
//! `idle_retire`) to look for replicas to retire.
//!
//! Growth runs the bundle's entry module and `polyplug_init` in a fresh interpreter off the
//! callers' threads (creation is serialised process-wide, R8), checks that it registers
//! what the first replica registered, hands its objects (with its `replicas::Replica`
//! record) to every contract and only then lets it join the group, so no call reaches a
//! replica without its objects. Retiring is the reverse: mark the record retiring (no
//! instance is placed on it from then on; see `Replica::try_retire`), then, on a thread of
//! its own so that a call that started meanwhile delays only that thread, leave the group
//! (no new calls), release the replica's objects inside it, end it.
//!
//! The controller needs the runtime (the init window of a new replica's `polyplug_init`):
//! it reads it from the host pointer, which is valid while the bundle is loaded; it acts
//! only while calls wait in the bundle's queue, and it is stopped and joined (with a
//! retirement under way) before the load is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use interp_pool::{InterpreterConfig, InterpreterHandle, InterpreterId};
use polyplug::runtime::Runtime;
use polyplug_abi::HostApi;

use crate::config::{CaughtRefusals, ElasticPolicy, InterpreterMode};
use crate::contract::ContractData;
use crate::load::{self, Entry, Plan};
use crate::output::OutputSink;
use crate::replicas::{Replica, Replicated};

/// A plan that outlives the load call: what a new replica needs to run the bundle's init.
pub(crate) struct OwnedPlan {
    name: String,
    module: String,
    bundle_id: u64,
    entry: OwnedEntry,
    ctx_path: String,
}

enum OwnedEntry {
    Path { file: String, dirs: Vec<String> },
    Code { src: String },
}

impl OwnedPlan {
    pub(crate) fn of(plan: &Plan<'_>) -> Self {
        Self {
            name: plan.name.to_owned(),
            module: plan.module.clone(),
            bundle_id: plan.bundle_id,
            entry: match &plan.entry {
                Entry::Path { file, dirs } => OwnedEntry::Path {
                    file: (*file).to_owned(),
                    dirs: dirs.clone(),
                },
                Entry::Code { src } => OwnedEntry::Code {
                    src: (*src).to_owned(),
                },
            },
            ctx_path: plan.ctx_path.to_owned(),
        }
    }

    fn plan(&self) -> Plan<'_> {
        Plan {
            name: &self.name,
            module: self.module.clone(),
            bundle_id: self.bundle_id,
            entry: match &self.entry {
                OwnedEntry::Path { file, dirs } => Entry::Path {
                    file,
                    dirs: dirs.clone(),
                },
                OwnedEntry::Code { src } => Entry::Code { src },
            },
            ctx_path: &self.ctx_path,
        }
    }
}

/// Everything the controller uses to grow and shrink one bundle load's group.
pub(crate) struct Spec {
    pub(crate) plan: OwnedPlan,
    pub(crate) replicated: Replicated,
    pub(crate) contracts: Vec<&'static ContractData>,
    /// What the first replica registered (`load::shapes`).
    pub(crate) shapes: Vec<String>,
    /// `HostApi*` of the runtime that loaded the bundle.
    pub(crate) host: usize,
    pub(crate) output: Arc<OutputSink>,
    pub(crate) config: InterpreterConfig,
    /// The load's refusal settings, for the new replicas' inits.
    pub(crate) caught: CaughtRefusals,
    pub(crate) ignored: Vec<String>,
    /// Each replica's share of the bundle's memory limit.
    pub(crate) memory_limit: Option<usize>,
    /// Install the ctypes fast paths in new replicas (`PythonConfig::fast_glue`).
    pub(crate) fast_glue: bool,
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) policy: ElasticPolicy,
}

/// A running controller; [`stop`](Self::stop) it before releasing the load.
#[derive(Debug)]
pub(crate) struct Controller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Controller {
    pub(crate) fn start(spec: Spec) -> Option<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("py-elastic".into())
            .spawn(move || run(&spec, &flag));
        match thread {
            Ok(t) => Some(Self {
                stop,
                thread: Some(t),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the elastic controller; the bundle keeps its replicas");
                None
            }
        }
    }

    /// Stops the controller and waits for it (a growth or retirement under way finishes
    /// first).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(spec: &Spec, stop: &AtomicBool) {
    let Some(bell) = spec.replicated.bell.as_deref() else {
        return;
    };
    bell.attach();
    let mut replicas: Vec<Arc<Replica>> = spec.replicated.loaded.clone();
    bell.set_replicas(replicas.len(), spec.max);
    let mut waiting_since: Option<Instant> = None;
    // Per replica: the calls it had started when we last saw that count change, and when.
    let mut activity: HashMap<InterpreterId, (u64, Instant)> = HashMap::new();
    let mut retiring: Option<JoinHandle<()>> = None;
    let mut made = replicas.len();
    let idle_tick = (spec.policy.idle_retire / 4).max(spec.policy.check_every);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        // A call waits with every replica taken (not just one queued a moment, as each
        // is on its way to a free replica).
        let waiting = spec.replicated.group.queue_len() > 0 && bell.saturated();
        if waiting && replicas.len() < spec.max {
            let since = *waiting_since.get_or_insert(now);
            if now - since >= spec.policy.grow_after {
                waiting_since = None;
                match grow(spec, made) {
                    Ok(r) => {
                        made += 1;
                        replicas.push(r);
                        bell.set_replicas(replicas.len(), spec.max);
                    }
                    Err(e) => {
                        tracing::warn!(bundle = %spec.plan.name, error = %e, "could not add a replica")
                    }
                }
            } else {
                // Calls wait: look again soon.
                thread::park_timeout(spec.policy.check_every);
            }
            continue;
        }
        waiting_since = None;
        hooks::at(Step::Looked, &spec.plan.name);
        if retiring.as_ref().is_none_or(JoinHandle::is_finished) {
            if let Some(t) = retiring.take() {
                let _ = t.join();
            }
            if let Some(i) = idle_replica(spec, &replicas, &mut activity, now) {
                let r = replicas.remove(i);
                bell.set_replicas(replicas.len(), spec.max);
                retiring = retire(spec, r);
            }
        }
        bell.sleep(idle_tick);
    }
    if let Some(t) = retiring {
        let _ = t.join();
    }
}

/// The last replica beyond `min` that ran no call for `idle_retire` (none running now,
/// none started since we last looked that long ago), marked retiring if nothing holds it.
fn idle_replica(
    spec: &Spec,
    replicas: &[Arc<Replica>],
    activity: &mut HashMap<InterpreterId, (u64, Instant)>,
    now: Instant,
) -> Option<usize> {
    activity.retain(|id, _| replicas.iter().any(|r| r.id() == *id));
    for r in replicas {
        let (running, started) = r.activity();
        let seen = activity.entry(r.id()).or_insert((started, now));
        if seen.0 != started || running > 0 {
            *seen = (started, now);
        }
    }
    if replicas.len() <= spec.min {
        return None;
    }
    (spec.min..replicas.len()).rev().find(|&i| {
        let r = &replicas[i];
        let idle = activity
            .get(&r.id())
            .is_some_and(|(_, at)| now - *at >= spec.policy.idle_retire);
        idle && {
            hooks::at(Step::Retiring, &spec.plan.name);
            r.try_retire(|| spec.contracts.iter().any(|c| c.instances_on(r.id()) > 0))
        }
    })
}

/// A new replica: created, initialised and checked outside the group, then given its
/// objects, then let in.
fn grow(spec: &Spec, n: usize) -> Result<Arc<Replica>, String> {
    let t0 = Instant::now();
    let config = InterpreterConfig {
        name: format!("{}#{n}", spec.plan.name),
        ..spec.config.clone()
    };
    let member = InterpreterHandle::spawn(config).map_err(|e| e.to_string())?;
    member.memory_account().set_limit(spec.memory_limit);
    let host = spec.host as *const HostApi;
    // SAFETY: `host` is the HostApi of the runtime that loaded this bundle, and the bundle
    // is still loaded (the controller is stopped before its load is released), so it is
    // alive.
    let runtime = unsafe { (*host).runtime } as *const Runtime;
    // SAFETY: as above, the runtime behind `HostApi.runtime` is alive; it is a
    // `polyplug::runtime::Runtime` (which is how polyplug itself reads it).
    let runtime = unsafe { &*runtime };
    let plan = spec.plan.plan();
    let policy = load::RefusalPolicy {
        mode: InterpreterMode::OwnGil,
        caught: spec.caught,
        ignored: &spec.ignored,
    };
    let declared = member
        .call(|py| {
            if spec.fast_glue {
                crate::fast_glue::install(py, &spec.plan.name);
            }
            Ok(load::run_init(
                py,
                &plan,
                runtime,
                spec.host,
                None,
                &spec.output,
                &policy,
            ))
        })
        .map_err(|e| e.to_string())
        .and_then(|r| r.map(|i| i.declared).map_err(|f| f.error.to_string()));
    let declared = match declared.and_then(|d| load::same_shapes(&spec.shapes, &d).map(|()| d)) {
        Ok(d) => d,
        Err(e) => {
            member.end();
            return Err(e);
        }
    };
    let replica = Replica::new(member.clone());
    for (c, d) in spec.contracts.iter().zip(declared) {
        let mut objects = d.into_objects();
        objects.replica = Some(Arc::clone(&replica));
        c.add_replica(objects);
    }
    hooks::at(Step::ObjectsAdded, &spec.plan.name);
    let group = &spec.replicated.group;
    if let Err(e) = group.add(member.clone()) {
        release_replica(&spec.contracts, &member);
        return Err(e.to_string());
    }
    // Its init ran on its own thread; now it takes direct calls as its peers do.
    member.set_direct(group.is_direct());
    tracing::info!(
        bundle = %spec.plan.name,
        replicas = group.len(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "elastic bundle grew: calls were waiting with every replica busy"
    );
    Ok(replica)
}

/// Retires `replica` (already marked retiring) on a thread of its own: its leave job
/// waits behind a call that started on it after the mark, and the controller must not.
/// `None`: no thread could be started, and it was retired here.
fn retire(spec: &Spec, replica: Arc<Replica>) -> Option<JoinHandle<()>> {
    let (group, contracts) = (spec.replicated.group.clone(), spec.contracts.clone());
    let bundle = spec.plan.name.clone();
    let work = move || {
        let member = replica.handle();
        if let Err(e) = group.remove(member) {
            tracing::warn!(bundle = %bundle, error = %e, "could not retire a replica");
            return;
        }
        release_replica(&contracts, member);
        tracing::info!(
            bundle = %bundle,
            replicas = group.len(),
            "elastic bundle shrank: a replica stayed idle"
        );
    };
    // `spawn` drops its closure when it fails: keep the work where both paths reach it.
    let work = Arc::new(Mutex::new(Some(work)));
    let shared = Arc::clone(&work);
    let spawned = thread::Builder::new()
        .name("py-elastic-retire".into())
        .spawn(move || take_and_run(&shared));
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "no thread for a retirement; retiring on the controller");
            take_and_run(&work);
            None
        }
    }
}

/// Runs the closure in `slot` if it is still there.
fn take_and_run(slot: &Mutex<Option<impl FnOnce()>>) {
    let work = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(work) = work {
        work();
    }
}

/// Releases one replica's objects inside it, then ends it.
fn release_replica(contracts: &[&'static ContractData], member: &InterpreterHandle) {
    let _ = member.call(|py| {
        for c in contracts {
            c.release_objects(py);
        }
        Ok(())
    });
    member.end();
}

/// Where the controller stops for a test's hook (see [`hooks`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An idle pass: the controller looks for a replica to retire (then sleeps).
    Looked,
    /// A replica looked idle long enough; the controller is about to try retiring it.
    Retiring,
    /// A new replica's objects are in every contract; it has not joined the group yet.
    ObjectsAdded,
}

/// Test hooks: a function the elastic controller of a bundle calls at each [`Step`], on its
/// own thread (it may block it, to order a test's steps). Not API.
#[doc(hidden)]
pub mod hooks {
    use std::collections::HashMap;
    use std::sync::{Arc, RwLock};

    use super::Step;

    type Hook = Arc<dyn Fn(Step) + Send + Sync>;

    static HOOKS: RwLock<Option<HashMap<String, Hook>>> = RwLock::new(None);

    /// Installs (or with `None` removes) the hook of the bundle named `bundle`.
    pub fn set(bundle: &str, hook: Option<Hook>) {
        let mut hooks = HOOKS.write().unwrap_or_else(|e| e.into_inner());
        let hooks = hooks.get_or_insert_with(HashMap::new);
        match hook {
            Some(h) => hooks.insert(bundle.to_owned(), h),
            None => hooks.remove(bundle),
        };
    }

    pub(crate) fn at(step: Step, bundle: &str) {
        // Called with the lock released: a hook may block its controller.
        let hook = HOOKS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|m| m.get(bundle).cloned());
        if let Some(h) = hook {
            h(step);
        }
    }
}
