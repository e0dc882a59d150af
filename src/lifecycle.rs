//! Load, downgrade, reload and unload: which interpreter a bundle gets, the retry in the
//! next mode when an extension module refuses one, and releasing a load's objects and
//! interpreter. `PythonLoader` (lib.rs) is a handle to one [`Loader`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use interp_pool::{InterpreterGroup, InterpreterHandle, MainLane, MemoryAccount};
use polyplug::error::LoaderError;
use polyplug::loader::{BundleSource, ManifestData};
use polyplug::runtime::Runtime;
use polyplug_abi::types::LogLevel;

use crate::config::{self, CaughtRefusals, Dispatch, InterpreterMode, PythonConfig, Replicas};
use crate::contract::ContractData;
use crate::elastic::{self, Controller};
use crate::error;
use crate::isolation::{self, BundleKey};
use crate::load::{self, Entry, LoadFailure, Plan, RefusalPolicy};
use crate::memory_limits;
use crate::metrics::Meter;
use crate::output::{self, OutputSink};
use crate::refusals::{CallWatch, ModeCause, ModeReason, RefusalHow};
use crate::remembered;
use crate::replicas::{self, Target};
use crate::spare;

/// The state behind every clone of a `PythonLoader`: its settings and what is loaded.
#[derive(Debug)]
pub(crate) struct Loader {
    config: PythonConfig,
    /// By bundle id; several entries only while a reload retires the old version.
    bundles: Mutex<HashMap<u64, Vec<LoadedBundle>>>,
    /// Set once the `replicas` and `bundle_dispatch` names were checked against the
    /// bundles beside the first one loaded from a directory.
    bundle_names_checked: std::sync::Once,
    main_threads_checked: std::sync::Once,
}

/// What one successful load owns.
pub(crate) struct LoadedBundle {
    /// The bundle's manifest name (log lines).
    name: String,
    /// Unique per load in the process: tells a reload's new load from the ones it retires.
    serial: u64,
    /// Its interpreter, or its replicas.
    pub(crate) target: Target,
    pub(crate) contracts: Vec<&'static ContractData>,
    pub(crate) mode: InterpreterMode,
    /// Why it runs in `mode`.
    pub(crate) reason: ModeReason,
    /// Refusals seen at call time (`BundleInfo::call_refusals`).
    pub(crate) watch: Arc<CallWatch>,
    /// Whether the ctypes fast paths are in place in its interpreter (`fast_glue.rs`).
    pub(crate) fast_glue: bool,
    /// How host threads' calls reach it (`PythonConfig::dispatch_for`), as configured.
    pub(crate) dispatch: Dispatch,
    /// Its identity in the main interpreter (`Main` mode only).
    key: Option<BundleKey>,
    pub(crate) meter: Arc<Meter>,
    /// What it allocates: its interpreter's account, or (`main`) one of its own.
    /// In main, the bundle's own memory account (elsewhere each replica's owner thread
    /// has its interpreter's: `InterpreterHandle::memory_account`).
    pub(crate) main_memory: Option<Arc<MemoryAccount>>,
    /// Backing store of `BundleInitContext.bundle_path` handed to the guest.
    _ctx_path: Box<str>,
    /// Where its `sys.stdout` / `sys.stderr` lines go; unregistered when the last holder
    /// (this load, its elastic controller) drops it, after `release`.
    _output: Arc<OutputSink>,
    /// Grows and shrinks an elastic bundle's replicas; stopped before `release`.
    elastic: Option<Controller>,
}

impl LoadedBundle {
    /// Stops its elastic controller, then releases its objects and interpreters.
    fn release(&mut self) {
        if let Some(mut c) = self.elastic.take() {
            c.stop();
        }
        release(&self.target, &self.contracts, self.key);
    }
}

impl std::fmt::Debug for LoadedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBundle")
            .field("name", &self.name)
            .field("target", &self.target)
            .field(
                "contracts",
                &self
                    .contracts
                    .iter()
                    .map(|c| &c.contract)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LoadedBundle {
    /// Its metrics now, with every replica's queue and state; the owner threads' CPU
    /// clocks and direct calls (outside `main`) and memory accounts summed over the
    /// current replicas.
    pub(crate) fn metrics(&self) -> crate::BundleMetrics {
        let members = self.target.members();
        let (owner_cpu, direct_calls) = match self.mode {
            InterpreterMode::Main => (None, 0),
            _ => (
                members
                    .iter()
                    .filter_map(InterpreterHandle::cpu_time)
                    .reduce(|a, b| interp_pool::CpuTime {
                        total: a.total + b.total,
                        spinning: a.spinning + b.spinning,
                    }),
                members.iter().map(InterpreterHandle::direct_calls).sum(),
            ),
        };
        let memory = match interp_pool::memory_accounting() {
            true => self.accounts(&members).iter().map(|a| a.usage()).fold(
                interp_pool::MemoryUsage::default(),
                |sum, u| interp_pool::MemoryUsage {
                    live: sum.live + u.live,
                    peak: sum.peak + u.peak,
                    denied: sum.denied + u.denied,
                    limit: match (sum.limit, u.limit) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    },
                },
            ),
            false => Default::default(),
        };
        let replicas = self.target.stats();
        self.meter.snapshot(
            self.target.queue_len(),
            owner_cpu,
            direct_calls,
            memory,
            replicas,
        )
    }

    /// Its memory accounts: the bundle's own in main, else each replica's.
    fn accounts(&self, members: &[InterpreterHandle]) -> Vec<Arc<MemoryAccount>> {
        match &self.main_memory {
            Some(a) => vec![Arc::clone(a)],
            None => members
                .iter()
                .map(|m| Arc::clone(m.memory_account()))
                .collect(),
        }
    }

    /// The memory limit over its replicas (each holds its share), if one is set.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.accounts(&self.target.members())
            .iter()
            .filter_map(|a| a.usage().limit)
            .reduce(|a, b| a + b)
    }

    /// Logs the count of failed calls whose tracebacks were not logged yet (at unload).
    fn flush_failure_log(&self) {
        if let (Some(summary), Some(c)) = (self.meter.failures.flush(), self.contracts.first()) {
            crate::error::failures_summary(&c.logger, &self.name, &summary);
        }
    }
}

impl Default for Loader {
    fn default() -> Self {
        Self::new(PythonConfig::default())
    }
}

impl Loader {
    pub(crate) fn new(config: PythonConfig) -> Self {
        Self {
            config,
            bundles: Mutex::new(HashMap::new()),
            bundle_names_checked: std::sync::Once::new(),
            main_threads_checked: std::sync::Once::new(),
        }
    }

    pub(crate) fn config(&self) -> &PythonConfig {
        &self.config
    }

    /// `f` of the most recent load of `bundle_id`, if any.
    pub(crate) fn latest<R>(
        &self,
        bundle_id: u64,
        f: impl FnOnce(&LoadedBundle) -> R,
    ) -> Option<R> {
        self.lock().get(&bundle_id)?.last().map(f)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<LoadedBundle>>> {
        self.bundles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `BundleLoader::load`: a bundle directory, or source text (`Code`, UTF-8 `Bytes`).
    pub(crate) fn load(
        &self,
        manifest: &ManifestData,
        source: &BundleSource,
        runtime: &Runtime,
    ) -> Result<(), LoaderError> {
        let loaded = match source {
            BundleSource::Path(_) => self.load_path(manifest, runtime, &[]),
            BundleSource::Code(code) => self.load_code(manifest, code, runtime),
            BundleSource::Bytes(bytes) => {
                let code =
                    std::str::from_utf8(bytes).map_err(|_| LoaderError::InvalidSourceEncoding {
                        loader: "python",
                        source_kind: source.kind(),
                        bundle: manifest.name.clone(),
                    })?;
                self.load_code(manifest, code, runtime)
            }
        };
        loaded.map(drop)
    }

    /// `BundleLoader::reload`: loads the bundle's current code (see `PythonLoader::reload`),
    /// then retires the previous loads, each old contract forwarding to its successor.
    /// Reloads are serialised by the runtime, so the loads found here are the ones the new
    /// load replaces.
    pub(crate) fn reload(
        &self,
        manifest: &ManifestData,
        runtime: &Runtime,
    ) -> Result<(), LoaderError> {
        // Each old contract forwards to its successor from before the new version is
        // registered (`load::register_all`): a host re-resolves on the registry change the
        // registration makes, and may reach the old interface until the swap.
        let replaces: Vec<&'static ContractData> = self
            .lock()
            .get(&manifest.id)
            .into_iter()
            .flatten()
            .flat_map(|b| b.contracts.iter().copied())
            .collect();
        let serial = self.load_path(manifest, runtime, &replaces)?;
        let old: Vec<LoadedBundle> = {
            let mut bundles = self.lock();
            let list = bundles.entry(manifest.id).or_default();
            let (new, old): (Vec<_>, Vec<_>) = list.drain(..).partition(|b| b.serial == serial);
            *list = new;
            old
        };
        for mut b in old {
            let replicas = b.target.replicas();
            b.release();
            b.flush_failure_log();
            tracing::info!(
                bundle = %manifest.name,
                replicas,
                mode = %b.mode,
                "bundle version retired after reload"
            );
        }
        Ok(())
    }

    /// `BundleLoader::unload`: releases every load of `bundle_id`.
    pub(crate) fn unload(&self, bundle_id: u64) {
        let removed = self.lock().remove(&bundle_id).unwrap_or_default();
        for mut b in removed {
            let m = b.metrics();
            b.release();
            b.flush_failure_log();
            tracing::info!(
                bundle = %b.name,
                replicas = m.replicas.len(),
                mode = %b.mode,
                calls = m.calls,
                errors = m.errors,
                timeouts = m.timeouts,
                run_p99_us = m.run_p99.as_secs_f64() * 1e6,
                max_depth = m.max_depth,
                cpu_ms = m.cpu_time.as_secs_f64() * 1e3,
                "bundle unloaded"
            );
        }
    }

    fn check_version(&self) -> Result<(), LoaderError> {
        let (maj, min) = self.config.min_version;
        let (have_maj, have_min) = interp_pool::python_version();
        if (have_maj, have_min) < (maj, min) {
            // polyplug_python's error: it names the loader, not the bundle.
            return Err(LoaderError::InitFailed {
                bundle: "python".into(),
                error: format!(
                    "runtime version mismatch: required {maj}.{min}, found {have_maj}.{have_min}"
                ),
            });
        }
        Ok(())
    }

    /// Asks for `main_threads` before the main pool starts; a pool already running with
    /// another size keeps it (logged once per loader).
    fn size_main_pool(&self) {
        let Some(n) = self.config.main_threads else {
            return;
        };
        if interp_pool::set_main_threads(n) {
            return;
        }
        let running = interp_pool::main_threads();
        if running != n.clamp(1, interp_pool::MAX_MAIN_THREADS) {
            self.main_threads_checked.call_once(|| {
                tracing::warn!(
                    wanted = n,
                    running,
                    "PythonConfig::main_threads is ignored: the main interpreter's threads \
                     were started by an earlier load in this process"
                );
            });
        }
    }

    /// A fresh interpreter for `bundle` in `mode`: the pre-warmed spare if allowed (own-GIL
    /// only) and ready, else a new one.
    fn interpreter(
        &self,
        bundle: &str,
        mode: InterpreterMode,
    ) -> interp_pool::Result<InterpreterHandle> {
        let config = self.config.interpreter(bundle, mode);
        if mode == InterpreterMode::Main {
            self.size_main_pool();
            return InterpreterHandle::main(config);
        }
        // On 3.12 the spare's prelude (`import ctypes`) fails in own-GIL interpreters and the
        // bundle would too (then downgrade): no spare there.
        if self.config.prewarm
            && mode == InterpreterMode::OwnGil
            && config::ctypes_loads_in_own_gil()
        {
            if let Some(h) = spare::take(&config) {
                if h.rename(bundle).is_ok() {
                    return Ok(h);
                }
                h.end();
            }
        }
        InterpreterHandle::spawn(config)
    }

    /// Loads in the bundle's mode: `bundle_modes`, else a mode remembered from an earlier
    /// load of the same files (see `remembered.rs`) if more permissive, else `mode`. If an
    /// extension module refuses that kind of interpreter (raised, or caught by the
    /// importing package: `CaughtRefusals::Downgrade`) and `auto_downgrade` is on,
    /// retries in the next mode, with a warning that names the module and how it was
    /// seen; the mode it lands in is remembered.
    fn load_plan(
        &self,
        manifest: &ManifestData,
        plan: Plan<'_>,
        runtime: &Runtime,
        replaces: &[&'static ContractData],
    ) -> Result<u64, LoaderError> {
        self.check_version()?;
        self.check_bundle_names(manifest, runtime);
        let config = &self.config;
        let bundle = manifest.name.as_str();
        config
            .check(bundle)
            .map_err(|why| error::init_failed_msg(bundle, why))?;
        let (mut mode, pinned) = config.mode_for(bundle);
        let mut reason = ModeReason::new(if pinned {
            ModeCause::Pinned
        } else {
            ModeCause::Configured
        });
        let remember = match &plan.entry {
            Entry::Path { file, .. } if !pinned && config.auto_downgrade => {
                Some(remembered::Key::of(plan.ctx_path, file))
            }
            _ => None,
        };
        if let Some((m, r)) = remember.as_ref().and_then(remembered::lookup) {
            if remembered::rank(m) > remembered::rank(mode) && self.honours(bundle, &r) {
                tracing::info!(
                    bundle,
                    mode = %m,
                    reason = %r,
                    "using the mode an earlier load of the same files needed"
                );
                mode = m;
                reason = ModeReason {
                    remembered: true,
                    ..r
                };
            }
        }
        if mode != InterpreterMode::Main {
            crate::refusals::watch_main(|| self.interpreter(bundle, InterpreterMode::Main));
        }
        let start = mode;
        loop {
            let (err, refusal) = match self.load_in(&Attempt {
                manifest,
                plan: &plan,
                runtime,
                mode,
                reason: &reason,
                remember: &remember,
                replaces,
            }) {
                Ok(serial) => {
                    if let (Some(key), true) = (&remember, mode != start) {
                        remembered::store(key, mode, reason);
                    }
                    return Ok(serial);
                }
                Err(LoadFailure {
                    error,
                    refusal: Some(refusal),
                }) => (error, refusal),
                Err(LoadFailure {
                    error,
                    refusal: None,
                }) => return Err(error),
            };
            let one_per_process = refusal.binding.one_interpreter_per_process();
            let Some(next) = mode.fallback(one_per_process) else {
                return Err(err);
            };
            let module = &refusal.module;
            let how = match refusal.how {
                RefusalHow::Caught => "caught by the importing package",
                _ => "raised",
            };
            if !config.auto_downgrade {
                return Err(error::init_failed_msg(
                    bundle,
                    format!(
                        "extension module {module} refuses {mode} interpreters ({how}) and automatic \
                         downgrade is off; set PythonConfig::bundle_modes[\"{bundle}\"] = {next:?} to run it ({err})"
                    ),
                ));
            }
            if refusal.how == RefusalHow::Caught {
                tracing::warn!(
                    bundle,
                    module = %module,
                    binding = refusal.binding.as_str(),
                    from = %mode,
                    to = %next,
                    "extension module refuses this interpreter mode and the importing package caught it; \
                     retrying the load (PythonConfig::caught_refusals = KeepMode would keep the mode and \
                     run the package's fallback)"
                );
            } else {
                tracing::warn!(
                    bundle,
                    module = %module,
                    binding = refusal.binding.as_str(),
                    from = %mode,
                    to = %next,
                    "extension module refuses this interpreter mode; retrying the load"
                );
            }
            reason = ModeReason::new(ModeCause::Refused {
                module: refusal.module,
                from: mode,
                how: refusal.how,
                binding: refusal.binding,
                seen: refusal.seen,
            });
            mode = next;
        }
    }

    /// Whether a remembered outcome still applies under this loader's settings: not if
    /// it came from a module this bundle ignores, or from a caught refusal this loader
    /// would keep the mode for.
    fn honours(&self, bundle: &str, r: &ModeReason) -> bool {
        match &r.cause {
            ModeCause::Refused { module, how, .. } => {
                let ignored = self.config.ignored_for(bundle).contains(module);
                let kept = *how == RefusalHow::Caught
                    && self.config.caught_refusals == CaughtRefusals::KeepMode;
                !ignored && !kept
            }
            _ => true,
        }
    }

    /// One load attempt in `mode`: create the interpreter(s), run the bundle's init in
    /// each, register its contracts once. Any failure ends every interpreter it made and
    /// leaves nothing behind. Returns the new load's serial.
    fn load_in(&self, attempt: &Attempt<'_>) -> Result<u64, LoadFailure> {
        let t0 = std::time::Instant::now();
        let rss0 = crate::rss_bytes().unwrap_or(0);
        let setup = self.setup(attempt)?;
        let made = self.make_replicas(attempt, &setup)?;
        let bundle = setup.bundle;
        let target = match self.target(
            bundle,
            attempt.mode,
            &made.members,
            setup.replicated,
            attempt.runtime,
        ) {
            Ok(t) => t,
            Err(e) => {
                discard(&made.members, made.declared, setup.key);
                return Err(error::init_failed(bundle, "cannot group the replicas", &e).into());
            }
        };
        // Said once the load worked: an attempt that fails moves on to another mode.
        if attempt.mode == InterpreterMode::SharedGil && setup.max > 1 {
            let logger = attempt.runtime.logger();
            replicas::warn_unreplicated(&logger, bundle, attempt.mode.as_str(), setup.max);
        }
        let shapes = load::shapes(&made.declared[0]);
        let registered = self.register(attempt, &setup, &target, made.declared, made.cpu0)?;
        registered
            .meter
            .set_rss_at_load(crate::rss_bytes().unwrap_or(0).saturating_sub(rss0));
        registered.meter.set_load_time(t0.elapsed());
        let dispatch = self.config.dispatch_for(bundle);
        target.set_direct(dispatch == crate::Dispatch::Direct);
        let elastic = self.start_elastic(attempt, &setup, &target, &registered.contracts, shapes);
        let reason = ModeReason {
            fallback: made.fallback,
            ..attempt.reason.clone()
        };
        tracing::info!(
            bundle,
            interp = %made.members[0].id(),
            mode = %attempt.mode,
            replicas = made.members.len(),
            reason = %reason,
            fast_glue = made.fast_glue_everywhere,
            contracts = registered.contracts.len(),
            create_ms = made.t_spawn.as_secs_f64() * 1e3,
            init_ms = (made.t_init - made.t_spawn).as_secs_f64() * 1e3,
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            "bundle loaded"
        );
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(attempt.plan.bundle_id)
            .or_default()
            .push(LoadedBundle {
                name: bundle.to_owned(),
                serial,
                target,
                contracts: registered.contracts,
                mode: attempt.mode,
                reason,
                watch: registered.watch,
                fast_glue: made.fast_glue_everywhere,
                dispatch,
                key: setup.key,
                meter: registered.meter,
                main_memory: setup.main_account,
                _ctx_path: attempt.plan.ctx_path.into(),
                _output: setup.sink,
                elastic,
            });
        Ok(serial)
    }

    /// What an attempt settles before any interpreter exists: replica counts, the main
    /// key, the output sink, memory limits.
    fn setup<'a>(&'a self, attempt: &Attempt<'a>) -> Result<Setup<'a>, LoadFailure> {
        let bundle = attempt.manifest.name.as_str();
        let mode = attempt.mode;
        let (wanted, max) = self.replica_bounds(bundle)?;
        // Replicas are own-GIL interpreters; `main` has one copy served by several
        // threads (the lane's limit, set in `target`); `shared_gil` one interpreter.
        let replicated = mode == InterpreterMode::OwnGil && max > 1;
        let count = if mode == InterpreterMode::OwnGil {
            wanted
        } else {
            1
        };
        let key = (mode == InterpreterMode::Main).then(BundleKey::next);
        // Memory: each replica's own account, limited to its share of the bundle's limit;
        // in main, an account of the bundle's own, entered around its init and calls.
        let shares = if replicated { max } else { 1 };
        Ok(Setup {
            bundle,
            wanted,
            max,
            replicated,
            count,
            host: attempt.runtime.as_context_ptr() as usize,
            key,
            sink: Arc::new(OutputSink::register(attempt.runtime.logger(), bundle, key)),
            ignored: self.config.ignored_for(bundle),
            limit: self.config.memory_limit_for(bundle).map(|l| l / shares),
            main_account: key.map(|_| MemoryAccount::new()),
            fast_glue: crate::fast_glue::wanted(&self.config, mode),
        })
    }

    /// Creates the attempt's interpreters and runs the bundle's init in each; all of
    /// them must register the same contracts. On failure every one made is discarded.
    fn make_replicas(&self, attempt: &Attempt<'_>, setup: &Setup<'_>) -> Result<Made, LoadFailure> {
        let (bundle, mode, count) = (setup.bundle, attempt.mode, setup.count);
        let t0 = std::time::Instant::now();
        let first = self.interpreter(bundle, mode).map_err(|e| {
            error::init_failed(bundle, "cannot create the bundle's interpreter", &e)
        })?;
        let t_spawn = t0.elapsed();
        let cpu0 = first.cpu_time();
        let policy = RefusalPolicy {
            mode,
            caught: self.config.caught_refusals,
            ignored: setup.ignored,
        };
        let account_of = |h: &InterpreterHandle| -> Arc<MemoryAccount> {
            let account = match &setup.main_account {
                Some(a) => Arc::clone(a),
                None => Arc::clone(h.memory_account()),
            };
            account.set_limit(setup.limit);
            account
        };
        // Each replica's init job: the ctypes fast paths first (before any bundle code).
        let init = |h: &InterpreterHandle, account: &Arc<MemoryAccount>| {
            h.call(|py| {
                let installed = setup.fast_glue && crate::fast_glue::install(py, bundle);
                let _account = setup.main_account.as_ref().map(|a| a.enter());
                let (plan, runtime) = (attempt.plan, attempt.runtime);
                Ok(load::run_init(
                    py,
                    plan,
                    runtime,
                    setup.host,
                    setup.key,
                    &setup.sink,
                    &policy,
                )
                .map(|i| (i, installed)))
            })
            .unwrap_or_else(|e| Err(error::init_failed(bundle, "bundle init", &e).into()))
            .map_err(|e| memory_limits::at_load(bundle, account, e))
        };
        let mut members = vec![first];
        let mut accounts = vec![account_of(&members[0])];
        let mut declared = Vec::with_capacity(count);
        // Replicas run the same code: the first one's fallback modules are the bundle's.
        let mut fallback = Vec::new();
        // Whether every replica got the fast paths.
        let mut fast_glue_everywhere = true;
        for i in 0..count {
            if i > 0 {
                let config = self.config.interpreter(&format!("{bundle}#{i}"), mode);
                match InterpreterHandle::spawn(config) {
                    Ok(h) => {
                        accounts.push(account_of(&h));
                        members.push(h);
                    }
                    Err(e) => {
                        discard(&members, declared, setup.key);
                        let doing = format!("cannot create replica {i} of {count}");
                        return Err(error::init_failed(bundle, &doing, &e).into());
                    }
                }
            }
            let d = match init(&members[i], &accounts[i]) {
                Ok((initialized, installed)) => {
                    fast_glue_everywhere &= installed;
                    if i == 0 {
                        fallback = initialized.fallback;
                    }
                    initialized.declared
                }
                Err(e) => {
                    discard(&members, declared, setup.key);
                    return Err(e);
                }
            };
            if let Some(why) = declared
                .first()
                .and_then(|d0| load::same_registrations(d0, &d).err())
            {
                declared.push(d);
                discard(&members, declared, setup.key);
                return Err(error::init_failed_msg(bundle, why).into());
            }
            declared.push(d);
        }
        Ok(Made {
            members,
            declared,
            fallback,
            fast_glue_everywhere,
            cpu0,
            t_spawn,
            t_init: t0.elapsed(),
        })
    }

    /// Registers the declared contracts (their objects now the contracts') with the
    /// bundle's call settings; on failure releases them and the interpreters, and a
    /// reload's old version goes on alone.
    fn register(
        &self,
        attempt: &Attempt<'_>,
        setup: &Setup<'_>,
        target: &Target,
        declared: Vec<Vec<load::Declared>>,
        cpu0: Option<interp_pool::CpuTime>,
    ) -> Result<Registered, LoadFailure> {
        let bundle = setup.bundle;
        let meter = Arc::new(Meter::new(self.config.failure_log));
        meter.set_cpu_base(cpu0);
        let watch = CallWatch::new(
            bundle,
            attempt.mode,
            setup.ignored.to_vec(),
            attempt.remember.clone(),
        );
        let settings = load::BundleCallSettings {
            memory: setup.main_account.clone(),
            key: setup.key,
            meter: Arc::clone(&meter),
            timeout: self.config.timeout_for(bundle),
            grace: self.config.interrupt_grace,
            watch: Arc::clone(&watch),
        };
        let (contracts, registered) = load::register_all(
            declared,
            target,
            bundle,
            attempt.plan.bundle_id,
            settings,
            attempt.replaces,
            attempt.runtime,
        );
        if let Err(e) = registered {
            for old in attempt.replaces {
                old.successor.set(None);
            }
            release(target, &contracts, setup.key);
            return Err(e.into());
        }
        Ok(Registered {
            contracts,
            meter,
            watch,
        })
    }

    /// An elastic bundle's controller (`Replicas::Elastic` with replicas).
    fn start_elastic(
        &self,
        attempt: &Attempt<'_>,
        setup: &Setup<'_>,
        target: &Target,
        contracts: &[&'static ContractData],
        shapes: Vec<String>,
    ) -> Option<Controller> {
        let bundle = setup.bundle;
        match (target, self.config.replicas_for(bundle)) {
            (Target::Group(replicated), Replicas::Elastic { .. }) => {
                Controller::start(elastic::Spec {
                    plan: elastic::OwnedPlan::of(attempt.plan),
                    replicated: replicated.clone(),
                    contracts: contracts.to_vec(),
                    shapes,
                    host: setup.host,
                    output: Arc::clone(&setup.sink),
                    config: self.config.interpreter(bundle, attempt.mode),
                    caught: self.config.caught_refusals,
                    ignored: setup.ignored.to_vec(),
                    memory_limit: setup.limit,
                    fast_glue: setup.fast_glue,
                    min: setup.wanted,
                    max: setup.max,
                    policy: self.config.elastic,
                })
            }
            _ => None,
        }
    }

    /// Warns (once per loader) about `replicas` and `bundle_dispatch` entries that name no
    /// bundle of the plugin directory the first path bundle came from: a misspelt name
    /// would silently mean one replica, or `dispatch`.
    fn check_bundle_names(&self, manifest: &ManifestData, runtime: &Runtime) {
        let config = &self.config;
        if (config.replicas.is_empty() && config.bundle_dispatch.is_empty())
            || manifest.path.as_os_str().is_empty()
        {
            return;
        }
        let Some(plugin_dir) = manifest.path.parent() else {
            return;
        };
        self.bundle_names_checked.call_once(|| {
            let names: std::collections::HashSet<String> = std::fs::read_dir(plugin_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| polyplug::loader::parse_manifest(&e.path()).ok())
                .map(|m| m.name)
                .collect();
            let settings = (config.replicas.keys().map(|n| ("replicas", n))).chain(
                config
                    .bundle_dispatch
                    .keys()
                    .map(|n| ("bundle_dispatch", n)),
            );
            for (field, name) in settings.filter(|(_, n)| !names.contains(*n)) {
                let msg = format!(
                    "PythonConfig::{field} names \"{name}\", but no bundle in {} has that \
                     name: the setting has no effect there",
                    plugin_dir.display()
                );
                tracing::warn!(bundle = %name, "{msg}");
                runtime.logger().log(LogLevel::Warn, name, || msg.clone());
            }
        });
    }

    /// `(initial, max)` replicas of `bundle`, or the load's error for a bad setting.
    fn replica_bounds(&self, bundle: &str) -> Result<(usize, usize), LoadFailure> {
        self.config.replicas_for(bundle).bounds().map_err(|why| {
            error::init_failed_msg(
                bundle,
                format!("invalid PythonConfig::replicas[\"{bundle}\"]: {why}"),
            )
            .into()
        })
    }

    /// Where the bundle's calls go: its one interpreter, or a group of its replicas.
    fn target(
        &self,
        bundle: &str,
        mode: InterpreterMode,
        members: &[InterpreterHandle],
        replicated: bool,
        runtime: &Runtime,
    ) -> interp_pool::Result<Target> {
        if mode == InterpreterMode::Main {
            let wanted = replicas::main_limit(self.config.replicas_for(bundle));
            let lane = MainLane::new(&self.config.interpreter(bundle, mode), wanted)?;
            if wanted > 1 {
                let pool = interp_pool::main_threads();
                replicas::note_main_threads(&runtime.logger(), bundle, lane.limit(), pool);
            }
            return Ok(Target::Main(lane));
        }
        if !replicated {
            return Ok(Target::One(members[0].clone()));
        }
        let group = InterpreterGroup::new(&self.config.interpreter(bundle, mode));
        for m in members {
            group.add(m.clone())?;
        }
        let bell = match self.config.replicas_for(bundle) {
            Replicas::Elastic { .. } => Some(replicas::Bell::new(members.len())),
            _ => None,
        };
        Ok(Target::Group(replicas::Replicated {
            group,
            loaded: members
                .iter()
                .cloned()
                .map(replicas::Replica::new)
                .collect(),
            bell,
        }))
    }

    /// Loads the bundle dir of `manifest`; `replaces`: see `load::register_all`.
    fn load_path(
        &self,
        manifest: &ManifestData,
        runtime: &Runtime,
        replaces: &[&'static ContractData],
    ) -> Result<u64, LoaderError> {
        if manifest.file.is_empty() {
            return Err(LoaderError::ManifestMissingFile {
                bundle: manifest.name.clone(),
            });
        }
        let entry = manifest.path.join(&manifest.file);
        if !entry.exists() {
            return Err(error::init_failed_msg(
                &manifest.name,
                format!(
                    "failed to import Python module at {}: file does not exist",
                    entry.display()
                ),
            ));
        }
        let canon = |p: &Path| {
            p.canonicalize().map_err(|e| {
                error::init_failed_msg(
                    &manifest.name,
                    format!("failed to canonicalize {}: {e}", p.display()),
                )
            })
        };
        let file = canon(&entry)?;
        let dir = canon(&manifest.path)?;
        let module = file
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let file_s = file.to_string_lossy().into_owned();
        let dir_s = dir.to_string_lossy().into_owned();
        // Inserted at 0 in this order, so site-packages ends up first, then the bundle dir.
        let mut dirs = vec![dir_s.clone()];
        let site = dir.join("site-packages");
        if site.is_dir() {
            dirs.push(site.to_string_lossy().into_owned());
        }
        let plan = Plan {
            name: &manifest.name,
            module,
            bundle_id: manifest.id,
            entry: Entry::Path {
                file: &file_s,
                dirs,
            },
            ctx_path: &dir_s,
        };
        self.load_plan(manifest, plan, runtime, replaces)
    }

    fn load_code(
        &self,
        manifest: &ManifestData,
        src: &str,
        runtime: &Runtime,
    ) -> Result<u64, LoaderError> {
        let plan = Plan {
            name: &manifest.name,
            module: synthetic_module_name(&manifest.name),
            bundle_id: manifest.id,
            entry: Entry::Code { src },
            ctx_path: "",
        };
        self.load_plan(manifest, plan, runtime, &[])
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        let all: Vec<LoadedBundle> = self.lock().drain().flat_map(|(_, v)| v).collect();
        for mut b in all {
            b.release();
        }
    }
}

/// One load attempt's inputs: the bundle, the mode it is tried in and why, and (a
/// reload) the contracts it replaces.
struct Attempt<'a> {
    manifest: &'a ManifestData,
    plan: &'a Plan<'a>,
    runtime: &'a Runtime,
    mode: InterpreterMode,
    reason: &'a ModeReason,
    remember: &'a Option<remembered::Key>,
    replaces: &'a [&'static ContractData],
}

/// What an attempt settled before creating interpreters (`Loader::setup`).
struct Setup<'a> {
    bundle: &'a str,
    /// Replicas at load, and at most (elastic).
    wanted: usize,
    max: usize,
    /// Whether the replicas form a group (own_gil, `max` > 1).
    replicated: bool,
    /// Interpreters to make now.
    count: usize,
    /// `HostApi*` of the loading runtime.
    host: usize,
    /// Its identity in the main interpreter (`main` mode).
    key: Option<BundleKey>,
    sink: Arc<OutputSink>,
    ignored: &'a [String],
    /// Each replica's share of the bundle's memory limit.
    limit: Option<usize>,
    /// `main`: the bundle's own memory account.
    main_account: Option<Arc<MemoryAccount>>,
    fast_glue: bool,
}

/// The interpreters an attempt made, each having run the bundle's init.
struct Made {
    members: Vec<InterpreterHandle>,
    /// Per replica, what its init declared.
    declared: Vec<Vec<load::Declared>>,
    /// Modules whose caught refusal the bundle runs without (the first replica's).
    fallback: Vec<String>,
    fast_glue_everywhere: bool,
    /// The first interpreter's CPU clock before the init.
    cpu0: Option<interp_pool::CpuTime>,
    /// When the first interpreter was ready, and when every init had run.
    t_spawn: std::time::Duration,
    t_init: std::time::Duration,
}

/// A registered load's contracts and what their calls share.
struct Registered {
    contracts: Vec<&'static ContractData>,
    meter: Arc<Meter>,
    watch: Arc<CallWatch>,
}

/// For every replica: emits a last unterminated output line and drops the contracts'
/// Python objects inside it; then ends them all (waiting for calls already running). In
/// the main interpreter, which never ends, it drops the bundle's modules from
/// `sys.modules` instead.
fn release(target: &Target, contracts: &[&'static ContractData], key: Option<BundleKey>) {
    // `main`: the bundle's calls run on several threads; none may still be running when
    // its objects go.
    if let Target::Main(lane) = target {
        lane.end();
    }
    for m in target.members() {
        let _ = m.call(|py| {
            if let Err(e) = output::flush_partial_lines(py, key) {
                tracing::debug!(interp = %m.id(), error = %e, "could not flush guest output");
            }
            for c in contracts {
                c.release_objects(py);
            }
            match key {
                Some(key) => isolation::forget(py, key),
                None => Ok(()),
            }
        });
    }
    target.end();
}

/// A load that failed before registering: drops each replica's declared objects inside
/// it, then ends the interpreters (the main interpreter forgets the bundle's modules).
fn discard(
    members: &[InterpreterHandle],
    declared: Vec<Vec<load::Declared>>,
    key: Option<BundleKey>,
) {
    let mut declared = declared.into_iter();
    for m in members {
        let objects = declared.next();
        let _ = m.call(move |py| {
            drop(objects);
            match key {
                Some(key) => isolation::forget(py, key),
                None => Ok(()),
            }
        });
        m.end();
    }
}

/// `manifest.name` as a Python module name: non-`[A-Za-z0-9_]` → `_`, no leading digit.
fn synthetic_module_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push_str("polyplug_inline_bundle");
    } else if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// What the `metrics` feature's exporter reads: every load, the most recent of a bundle last.
#[cfg(feature = "metrics")]
impl crate::metrics::export::Loads for Loader {
    fn each_load(&self, f: &mut dyn FnMut(&str, &Arc<Meter>, crate::BundleMetrics)) {
        for loads in self.lock().values() {
            for b in loads {
                f(&b.name, &b.meter, b.metrics());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::synthetic_module_name;

    #[test]
    fn inline_module_names_are_python_identifiers() {
        assert_eq!(synthetic_module_name("bad-utf8.plugin"), "bad_utf8_plugin");
        assert_eq!(synthetic_module_name("9lives"), "_9lives");
        assert_eq!(synthetic_module_name(""), "polyplug_inline_bundle");
    }
}
