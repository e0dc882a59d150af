//! `Replicas::Elastic { min, max }`: a controller thread per elastic bundle load grows the
//! replica group when calls wait because every replica is busy, and retires a replica that
//! stayed idle (never below `min`, never one holding an instance).
//!
//! Growth runs the bundle's entry module and `polyplug_init` in a fresh interpreter off the
//! callers' threads (creation is serialised process-wide, R8), checks that it registers
//! what the first replica registered, hands its objects to every contract and only then
//! lets it join the group, so no call reaches a replica without its objects. Retiring is
//! the reverse: leave the group (no new calls), release the replica's objects inside it,
//! end it.
//!
//! The controller needs the runtime (the init window of a new replica's `polyplug_init`):
//! it reads it from the host pointer, which is valid while the bundle is loaded; it acts
//! only while calls wait in the bundle's queue, and it is stopped and joined before the
//! load is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use interp_pool::{InterpreterConfig, InterpreterGroup, InterpreterHandle, InterpreterId};
use polyplug::runtime::Runtime;
use polyplug_abi::HostApi;

use crate::config::{CaughtRefusals, ElasticPolicy, InterpreterMode};
use crate::contract::ContractData;
use crate::load::{self, Entry, Plan};
use crate::output::OutputSink;

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
    pub(crate) group: InterpreterGroup,
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

    /// Stops the controller and waits for it (a growth under way finishes first).
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
    let mut waiting_since: Option<Instant> = None;
    // Per replica: the calls it had served when we last saw that count change, and when.
    let mut activity: HashMap<InterpreterId, (u64, Instant)> = HashMap::new();
    let mut made = spec.group.len();
    while !stop.load(Ordering::SeqCst) {
        thread::park_timeout(spec.policy.check_every);
        let now = Instant::now();
        let members = spec.group.members();
        if spec.group.queue_len() > 0 && members.len() < spec.max {
            let since = *waiting_since.get_or_insert(now);
            if now - since >= spec.policy.grow_after {
                waiting_since = None;
                match grow(spec, made) {
                    Ok(()) => made += 1,
                    Err(e) => {
                        tracing::warn!(bundle = %spec.plan.name, error = %e, "could not add a replica")
                    }
                }
                continue;
            }
        } else {
            waiting_since = None;
        }
        activity.retain(|id, _| members.iter().any(|m| m.id() == *id));
        for m in &members {
            let served = m.jobs_served();
            let seen = activity.entry(m.id()).or_insert((served, now));
            if seen.0 != served {
                *seen = (served, now);
            }
        }
        if members.len() > spec.min {
            let idle = members[spec.min..].iter().rev().find(|m| {
                activity
                    .get(&m.id())
                    .is_some_and(|(_, at)| now - *at >= spec.policy.idle_retire)
                    && spec.contracts.iter().all(|c| c.instances_on(m.id()) == 0)
            });
            if let Some(m) = idle {
                retire(spec, m);
            }
        }
    }
}

/// A new replica: created, initialised and checked outside the group, then given its
/// objects, then let in.
fn grow(spec: &Spec, n: usize) -> Result<(), String> {
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
    for (c, d) in spec.contracts.iter().zip(declared) {
        c.add_replica(d.into_objects());
    }
    if let Err(e) = spec.group.add(member.clone()) {
        release_replica(spec, &member);
        return Err(e.to_string());
    }
    tracing::info!(
        bundle = %spec.plan.name,
        replicas = spec.group.len(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "elastic bundle grew: calls were waiting with every replica busy"
    );
    Ok(())
}

fn retire(spec: &Spec, member: &InterpreterHandle) {
    if let Err(e) = spec.group.remove(member) {
        tracing::warn!(bundle = %spec.plan.name, error = %e, "could not retire a replica");
        return;
    }
    release_replica(spec, member);
    tracing::info!(
        bundle = %spec.plan.name,
        replicas = spec.group.len(),
        "elastic bundle shrank: a replica stayed idle"
    );
}

/// Releases one replica's objects inside it, then ends it.
fn release_replica(spec: &Spec, member: &InterpreterHandle) {
    let _ = member.call(|py| {
        for c in &spec.contracts {
            c.release_objects(py);
        }
        Ok(())
    });
    member.end();
}
