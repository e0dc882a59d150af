//! One registered contract: the loader data behind `VmDispatch.loader_data`, and the
//! `extern "C"` entry points polyplug calls (`vm.call`, `create_instance`,
//! `destroy_instance`) plus the `arena_alloc` bridge handed to Python.
//!
//! Every entry point runs its Python work as an interp-pool job on the bundle's own
//! interpreter, from whatever thread it is called on (ARCHITECTURE.md, "Call paths").

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use interp_pool::{
    Attached, CallOptions, Detail, InterpreterHandle, InterpreterId, NativeError, Persistent, PyObj,
};
use polyplug::logger::LoggerHandle;
use polyplug_abi::{
    AbiError, AbiErrorCode, CallArena, GuestContractInstance, HostApi, VmLoaderData,
};
use polyplug_utils::GuestContractId;

use crate::error;
use crate::failure_log::Verdict;
use crate::isolation::{self, BundleKey, Scope};
use crate::metrics::{Meter, Outcome};
use crate::refusals::{self, CallWatch};
use crate::replicas::{Pin, Replica, Target};
use crate::scope;

/// One replica's Python objects of a contract: they live in its interpreter and are only
/// touched inside its jobs.
pub(crate) struct ReplicaObjects {
    pub(crate) interp: InterpreterId,
    /// Its replica's record when the bundle is replicated: the handle an instance placed
    /// here is called through, and the counts the elastic controller reads. Added and
    /// dropped with the objects, so the two never disagree.
    pub(crate) replica: Option<Arc<Replica>>,
    pub(crate) functions: Vec<Persistent>,
    pub(crate) factory: Persistent,
    pub(crate) default_impl: Persistent,
    pub(crate) arena_alloc: Persistent,
}

/// An instance from `create_instance`: it lives on one replica, and so do its calls.
struct Instance {
    interp: InterpreterId,
    /// Its replica, when the bundle has several: where its calls are sent.
    replica: Option<InterpreterHandle>,
    obj: Persistent,
}

/// Python objects of one contract, over its replicas; `None` in `ContractData` once the
/// bundle is unloaded.
pub(crate) struct Objects {
    /// One per replica (in the order the replicas were made).
    replicas: Vec<ReplicaObjects>,
    /// By instance id (process-wide unique: see [`next_instance_id`]).
    instances: HashMap<u64, Instance>,
}

impl Objects {
    /// The objects of a load's replicas, each paired with `target`'s record of it.
    pub(crate) fn new(mut replicas: Vec<ReplicaObjects>, target: &Target) -> Self {
        for r in &mut replicas {
            r.replica = target.replica(r.interp);
        }
        Self {
            replicas,
            instances: HashMap::new(),
        }
    }

    fn replica(&self, interp: InterpreterId) -> interp_pool::Result<&ReplicaObjects> {
        self.replicas
            .iter()
            .find(|r| r.interp == interp)
            .ok_or_else(|| interp_pool::Error::Internal(format!("no objects for replica {interp}")))
    }

    /// Reserves the replica holding the fewest instances (the first on a tie) that is
    /// not being retired, for a new instance.
    fn place(&self) -> Option<Pin> {
        let mut by_load: Vec<(usize, &Arc<Replica>)> = self
            .replicas
            .iter()
            .filter_map(|r| r.replica.as_ref().filter(|rec| !rec.is_retiring()))
            .map(|rec| {
                let n = self
                    .instances
                    .values()
                    .filter(|i| i.interp == rec.id())
                    .count();
                (n, rec)
            })
            .collect();
        by_load.sort_by_key(|(n, _)| *n);
        by_load.into_iter().find_map(|(_, rec)| rec.pin())
    }
}

/// What `VmLoaderData.data` points to. Allocated once per registered contract and never
/// freed: a host may still hold the interface after unload (direct `vm.call` does not
/// pin the registry's epoch), and then it must get `StaleHandle`, not a dangling pointer.
/// After unload it holds no Python object and only a handle to an ended interpreter.
pub(crate) struct ContractData {
    /// Where its calls run: one interpreter, or the bundle's replicas.
    pub(crate) target: Target,
    /// The bundle's identity in the main interpreter (`main` mode): its code runs inside
    /// an isolation scope, and what it imports is settled after each call.
    pub(crate) scope: Option<BundleKey>,
    /// `main` mode: the bundle's memory account (its interpreter's otherwise).
    pub(crate) memory: Option<Arc<interp_pool::MemoryAccount>>,
    /// Bundle name, for logs and errors.
    pub(crate) bundle: String,
    /// `name@major`, for logs.
    pub(crate) contract: String,
    pub(crate) contract_id: GuestContractId,
    pub(crate) fn_count: usize,
    pub(crate) logger: LoggerHandle,
    pub(crate) objects: Mutex<Option<Objects>>,
    /// The bundle's metrics, shared by its contracts.
    pub(crate) meter: Arc<Meter>,
    /// The bundle's configured deadline (`with_call_options` overrides it).
    pub(crate) timeout: Option<Duration>,
    /// `PythonConfig::interrupt_grace`, unless the call's own options set one.
    pub(crate) grace: Duration,
    /// What a refusal seen during a call does (`refusals::CallWatch`), shared by the
    /// bundle's contracts.
    pub(crate) watch: Arc<CallWatch>,
    /// The same contract in the version that replaces this one by a hot reload. Set
    /// before the new version is registered (so before any registry change a host could
    /// react to by re-resolving), and so before this version's objects are released: a
    /// host still holding this interface gets the new code for the default instance,
    /// and its new instances are made by the new version, instead of `StaleHandle`.
    pub(crate) successor: Successor,
}

/// A contract's successor after a reload: set when the new version registers, cleared
/// if that registration fails (the old version then goes on alone).
#[derive(Debug, Default)]
pub(crate) struct Successor(AtomicPtr<ContractData>);

impl Successor {
    pub(crate) fn get(&self) -> Option<&'static ContractData> {
        let p = self.0.load(Ordering::Acquire);
        // SAFETY: no CPython involved (no rule applies): only `set` stores a non-null
        // pointer, taken from a `&'static ContractData` (leaked, never freed).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    pub(crate) fn set(&self, next: Option<&'static ContractData>) {
        let p = next.map_or(std::ptr::null_mut(), |n| {
            n as *const ContractData as *mut ContractData
        });
        self.0.store(p, Ordering::Release);
    }
}

/// Instance ids are unique in the process, not per contract: a call through a retired
/// version's interface with an instance its successor made (see `create_instance`) is
/// told apart from the retired version's own instances by the id alone.
fn next_instance_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Appended to the last traceback of a kind logged in a failure-log interval.
const LAST_OF_KIND: &str = "(further failures of this kind are counted, not logged, until the \
                            interval ends: see PythonConfig::failure_log)\n";

/// Outcome of a call that found no Python error.
enum Dispatched {
    Done,
    NoInstance,
    Unloaded,
}

/// Where one call goes: any replica, or the one holding its instance.
enum Route {
    Any,
    On(InterpreterHandle),
}

impl ContractData {
    fn objects(&self) -> MutexGuard<'_, Option<Objects>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This call's deadline and cancel token.
    fn options(&self) -> CallOptions {
        let mut opts = scope::current().unwrap_or(CallOptions {
            timeout: self.timeout,
            cancel: None,
            ..CallOptions::default()
        });
        opts.grace = opts.grace.or(Some(self.grace));
        opts
    }

    /// Where a call on `instance` runs: any replica for the default instance (0) or when
    /// there is one interpreter; else the instance's own. `None`: no such instance, or
    /// unloaded (the job then finds out and reports which).
    fn route(&self, instance: u64) -> Route {
        if instance == 0 || !self.target.is_replicated() {
            return Route::Any;
        }
        let replica = self
            .objects()
            .as_ref()
            .and_then(|o| o.instances.get(&instance).and_then(|i| i.replica.clone()));
        replica.map_or(Route::Any, Route::On)
    }

    /// Runs `job` on `route` with this call's options, metered. `function`: the fn_id
    /// (`None` for `create_instance`), for the trace span.
    fn metered<R: Send>(
        &self,
        route: Route,
        function: Option<u32>,
        job: impl FnOnce(&Attached<'_>) -> interp_pool::Result<R> + Send,
    ) -> interp_pool::Result<R> {
        // Off unless TRACE is enabled for this target (one atomic load and a branch, the
        // fields not even evaluated): then one span per call, with where it ran and its
        // queue and run time.
        let span = tracing::trace_span!("python_call", bundle = %self.bundle,
            contract = %self.contract, function, replica = tracing::field::Empty,
            queue_us = tracing::field::Empty, run_us = tracing::field::Empty)
        .entered();
        let traced = !span.is_disabled();
        let m = &*self.meter;
        m.start();
        // Latencies of a sample of calls (see `metrics::sampled`); counters see every call.
        let sampled = crate::metrics::sampled();
        let t0 = (sampled || traced).then(Instant::now);
        let opts = self.options();
        let timed = |py: &Attached<'_>| {
            let t1 = t0.map(|t0| {
                let t1 = Instant::now();
                if sampled {
                    m.queue_wait.record(t1 - t0);
                }
                if traced {
                    span.record("replica", tracing::field::display(py.id()));
                    span.record("queue_us", (t1 - t0).as_micros() as u64);
                }
                t1
            });
            m.depth(interp_pool::current_depth());
            // Sample the CPU time of the calls no owner clock tells apart: `main` bundles
            // share the main interpreter's threads, and a direct call runs on its caller's
            // thread (`Meter::cpu`). Asked on sampled calls only.
            let direct = sampled && self.scope.is_none() && interp_pool::running_direct();
            let cpu0 = t1
                .filter(|_| sampled && (self.scope.is_some() || direct))
                .and_then(|_| interp_pool::thread_cpu_time());
            let r = job(py);
            if let Some(t1) = t1 {
                let run = t1.elapsed();
                if sampled {
                    m.run.record(run);
                }
                if traced {
                    span.record("run_us", run.as_micros() as u64);
                }
            }
            // A lazy import refused this interpreter (one thread-local read when not).
            if refusals::pending() {
                let failed = r.as_ref().err().map(ToString::to_string);
                self.watch.at_call(py, m, &self.logger, failed);
            }
            if let (Some(c0), Some(c1)) = (cpu0, cpu0.and_then(|_| interp_pool::thread_cpu_time()))
            {
                m.cpu_sample(c1.saturating_sub(c0), direct);
            }
            r
        };
        // Only calls with a deadline read the clock here.
        let called = opts.timeout.map(|_| Instant::now());
        let r = match route {
            Route::Any => self.target.call_with(&opts, timed),
            Route::On(h) => h.call_with(&opts, timed),
        };
        if let (Some(called), Err(interp_pool::Error::Timeout { after })) = (called, &r) {
            m.overrun(called.elapsed().saturating_sub(*after));
        }
        m.finish(match &r {
            Ok(_) => Outcome::Ok,
            Err(interp_pool::Error::Timeout { .. }) => Outcome::Timeout,
            Err(interp_pool::Error::Cancelled) => Outcome::Cancelled,
            Err(interp_pool::Error::Busy { .. }) => Outcome::Busy,
            Err(_) => Outcome::Failed,
        });
        r
    }

    /// Runs guest code `f` as this bundle's (see `isolation`); a no-op wrapper outside
    /// `main` mode.
    fn guest<T>(&self, py: &Attached<'_>, f: impl FnOnce() -> T) -> T {
        let Some(key) = self.scope else {
            let out = f();
            // Past the guest's frames: the interrupt's last step must not hit ours.
            interp_pool::guest_returned(py);
            return out;
        };
        let out = {
            let _scope = Scope::enter(key);
            let _account = self.memory.as_ref().map(|m| m.enter());
            f()
        };
        interp_pool::guest_returned(py);
        if let Err(e) = isolation::settle(py) {
            tracing::warn!(bundle = %self.bundle, error = %e, "could not re-key imported modules");
        }
        out
    }

    /// A new replica's objects, with its record (an elastic bundle grew); it must not serve
    /// calls before.
    pub(crate) fn add_replica(&self, objects: ReplicaObjects) {
        let mut guard = self.objects();
        match guard.as_mut() {
            Some(o) => o.replicas.push(objects),
            // Unloaded meanwhile: drop them in their interpreter's job instead.
            None => {
                drop(guard);
                tracing::debug!(bundle = %self.bundle, "a replica grew after unload; its objects leak");
                std::mem::forget(objects);
            }
        }
    }

    /// How many instances live on replica `interp`.
    pub(crate) fn instances_on(&self, interp: InterpreterId) -> usize {
        self.objects().as_ref().map_or(0, |o| {
            o.instances.values().filter(|i| i.interp == interp).count()
        })
    }

    /// Drops the Python objects that live in `py`'s interpreter (one replica's, with its
    /// instances); once no replica has any left, the contract answers StaleHandle.
    pub(crate) fn release_objects(&self, py: &Attached<'_>) {
        let here = py.id();
        let (replica, instances) = {
            let mut guard = self.objects();
            let Some(o) = guard.as_mut() else { return };
            let replica: Vec<ReplicaObjects> = {
                let (gone, kept) = std::mem::take(&mut o.replicas)
                    .into_iter()
                    .partition(|r| r.interp == here);
                o.replicas = kept;
                gone
            };
            let ids: Vec<u64> = o
                .instances
                .iter()
                .filter(|(_, i)| i.interp == here)
                .map(|(id, _)| *id)
                .collect();
            let instances: Vec<Instance> =
                ids.iter().filter_map(|id| o.instances.remove(id)).collect();
            if o.replicas.is_empty() {
                *guard = None;
            }
            (replica, instances)
        };
        // Dropped after the lock: a finalizer may call back into this contract.
        drop(replica);
        drop(instances);
    }

    /// Whether instance `id` lives in this version (false once it is released).
    fn holds(&self, id: u64) -> bool {
        self.objects()
            .as_ref()
            .is_some_and(|o| o.instances.contains_key(&id))
    }

    /// The version that took over from this one, if `instance` (not the default one) is
    /// not this version's: the host reached a new version's instance through the
    /// interface it resolved before the reload swapped it.
    fn forward_instance(&self, instance: u64) -> Option<&'static ContractData> {
        if instance == 0 {
            return None;
        }
        self.successor.get().filter(|_| !self.holds(instance))
    }

    /// One call. `forwarded`: a retired version passed it on, so an instance unknown here
    /// died with an old version (`StaleHandle`), it was not a bad id.
    fn dispatch(
        &self,
        instance: u64,
        fn_id: u32,
        args: usize,
        out: usize,
        arena: usize,
        forwarded: bool,
    ) -> AbiError {
        if let Some(next) = self.forward_instance(instance) {
            return next.dispatch(instance, fn_id, args, out, arena, true);
        }
        let fn_id = fn_id as usize;
        if fn_id >= self.fn_count {
            return error::abi(
                AbiErrorCode::FunctionNotAvailable,
                b"python: fn_id out of range",
            );
        }
        // What the failure log decided about a Python exception, inside the job.
        let decided: Mutex<Option<(Verdict, Option<String>)>> = Mutex::new(None);
        let r = self.metered(self.route(instance), Some(fn_id as u32), |py| {
            // Take our own references, then release the lock before running Python:
            // the call may re-enter this contract (nested dispatch, create_instance).
            let (f, imp, alloc, _running) = {
                let guard = self.objects();
                let Some(o) = guard.as_ref() else {
                    return Ok(Dispatched::Unloaded);
                };
                let Ok(r) = o.replica(py.id()) else {
                    return Ok(Dispatched::Unloaded); // this replica is being retired
                };
                // Busy until the guest returns (the elastic controller never retires it).
                let running = r.replica.as_ref().map(Replica::run);
                let imp = if instance == 0 {
                    &r.default_impl
                } else {
                    match o.instances.get(&instance) {
                        Some(i) => &i.obj,
                        None => return Ok(Dispatched::NoInstance),
                    }
                };
                (
                    r.functions[fn_id].bind(py)?,
                    imp.bind(py)?,
                    r.arena_alloc.bind(py)?,
                    running,
                )
            };
            let (a, o, ar) = (
                py.uint(args as u64)?,
                py.uint(out as u64)?,
                py.uint(arena as u64)?,
            );
            match self.guest(py, || f.call_or_raised(py, &[&imp, &a, &o, &ar, &alloc])) {
                Ok(_) => Ok(Dispatched::Done),
                Err(raised) => {
                    // Classify cheaply; format the traceback only if it will be logged.
                    let (verdict, summary) = self.meter.failures.admit(&raised.site(py));
                    let detail = match verdict {
                        Verdict::Log { .. } => Detail::Traceback,
                        Verdict::Count => Detail::Brief,
                    };
                    *decided.lock().unwrap_or_else(|e| e.into_inner()) = Some((verdict, summary));
                    Err(raised.into_error(py, detail))
                }
            }
        });
        let decided = decided.into_inner().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(Dispatched::Done) => AbiError::ok(),
            Ok(Dispatched::NoInstance) if forwarded => {
                error::abi(AbiErrorCode::StaleHandle, b"python: bundle was reloaded")
            }
            Ok(Dispatched::NoInstance) => error::abi(
                AbiErrorCode::FunctionNotAvailable,
                b"python: unknown instance",
            ),
            // Retired by a hot reload while the host still held this interface: the
            // default instance answers with the new code (other instances died with it).
            Ok(Dispatched::Unloaded) | Err(interp_pool::Error::InterpreterGone { .. })
                if instance == 0 =>
            {
                match self.successor.get() {
                    Some(next) => next.dispatch(instance, fn_id as u32, args, out, arena, true),
                    None => error::abi(AbiErrorCode::StaleHandle, b"python: bundle was unloaded"),
                }
            }
            Ok(Dispatched::Unloaded) => {
                error::abi(AbiErrorCode::StaleHandle, b"python: bundle was unloaded")
            }
            Err(e) => {
                let verdict = match decided {
                    Some((verdict, summary)) => {
                        if let Some(summary) = summary {
                            error::failures_summary(&self.logger, &self.bundle, &summary);
                        }
                        Some(verdict)
                    }
                    None => None,
                };
                // A Python error counted, not logged (an interrupt's own error still is).
                if verdict == Some(Verdict::Count) && e.python_exception().is_some() {
                    return error::raised_unlogged();
                }
                let note = match verdict {
                    Some(Verdict::Log { last: true }) => LAST_OF_KIND,
                    _ => "",
                };
                let what = format!("{}.fn[{fn_id}]", self.contract);
                error::call_failed_noted(&self.logger, &self.bundle, &what, &e, note)
            }
        }
    }

    fn create_instance(&self, host: usize) -> Option<u64> {
        // This version is being retired: the instance belongs to the new one (a host
        // re-resolving before the reload's swap still reaches this interface).
        if let Some(next) = self.successor.get() {
            return next.create_instance(host);
        }
        // On the replica holding the fewest instances, reserved until the instance is
        // stored (it is not retired meanwhile); its calls will all run there.
        let pin = match self.target.is_replicated() {
            true => self.objects().as_ref().and_then(Objects::place),
            false => None,
        };
        let route = pin
            .as_ref()
            .map_or(Route::Any, |p| Route::On(p.handle().clone()));
        let r = self.metered(route, None, |py| {
            let (factory, replica) = match self.objects().as_ref().map(|o| o.replica(py.id())) {
                Some(Ok(r)) => (
                    r.factory.bind(py)?,
                    r.replica.as_ref().map(|rec| rec.handle().clone()),
                ),
                _ => return Ok(None),
            };
            let host = py.uint(host as u64)?;
            let obj = self.guest(py, || factory.call(py, &[&host]))?;
            let obj = Persistent::new(py, obj);
            let mut guard = self.objects();
            let Some(o) = guard.as_mut() else {
                return Ok(None);
            };
            let id = next_instance_id();
            let interp = py.id();
            o.instances.insert(
                id,
                Instance {
                    interp,
                    replica,
                    obj,
                },
            );
            Ok(Some(id))
        });
        drop(pin);
        // A reload registered its new version while the factory ran: hosts re-resolve on
        // that registry change, and one that reads the registry's revision after this
        // returns would keep an instance that dies with this version. The new version
        // makes it instead (this one's is released with this version).
        if let (Ok(Some(_)), Some(next)) = (&r, self.successor.get()) {
            return next.create_instance(host);
        }
        r.unwrap_or_else(|e| {
            let what = format!("{} factory", self.contract);
            error::call_failed(&self.logger, &self.bundle, &what, &e);
            None
        })
    }

    fn destroy_instance(&self, id: u64) {
        if let Some(next) = self.forward_instance(id) {
            return next.destroy_instance(id);
        }
        // The removed object is dropped inside a job of its own replica, attached.
        let job = |_py: &Attached<'_>| {
            let removed = self
                .objects()
                .as_mut()
                .and_then(|o| o.instances.remove(&id));
            drop(removed);
            Ok(())
        };
        let plain = CallOptions::default();
        let _ = match self.route(id) {
            Route::On(h) => h.call(job),
            Route::Any => self.target.call_with(&plain, job),
        };
    }
}

/// # Safety
/// `loader_data.data` is a `ContractData` registered by this loader (never freed).
unsafe fn data<'a>(loader_data: VmLoaderData) -> &'a ContractData {
    // SAFETY: per the contract, a live (leaked, so 'static) ContractData.
    unsafe { &*(loader_data.data as *const ContractData) }
}

/// `VmDispatch.call`: callable from any thread; never unwinds into the caller.
pub(crate) unsafe extern "C" fn vm_call(
    loader_data: VmLoaderData,
    instance: GuestContractInstance,
    fn_id: u32,
    args: *const (),
    out: *mut (),
    arena: *mut CallArena,
    out_err: *mut AbiError,
) {
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: polyplug passes back the loader_data we registered.
        let data = unsafe { data(loader_data) };
        data.dispatch(
            instance.data as u64,
            fn_id,
            args as usize,
            out as usize,
            arena as usize,
            false,
        )
    }))
    .unwrap_or_else(|_| error::abi(AbiErrorCode::Panic, b"python: loader panicked"));
    if !out_err.is_null() {
        // SAFETY: out_err is non-null and writable per the dispatch ABI.
        unsafe { out_err.write(result) };
    }
}

/// `GuestContractInterface.create_instance`: `factory(host)` in the bundle's interpreter;
/// a null instance if the factory raised.
pub(crate) unsafe extern "C" fn create_instance(
    loader_data: VmLoaderData,
    host: *const HostApi,
    _args: *const (),
    out_instance: *mut GuestContractInstance,
) {
    if out_instance.is_null() {
        return;
    }
    let instance = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: polyplug passes back the loader_data we registered.
        let data = unsafe { data(loader_data) };
        match data.create_instance(host as usize) {
            Some(id) => GuestContractInstance {
                data: id as usize as *mut c_void,
                contract_id: data.contract_id,
            },
            None => GuestContractInstance::null(),
        }
    }))
    .unwrap_or_else(|_| GuestContractInstance::null());
    // SAFETY: out_instance is non-null (checked) and writable per the ABI.
    unsafe { out_instance.write(instance) };
}

/// `GuestContractInterface.destroy_instance`; instance 0 (the default impl) is a no-op.
pub(crate) unsafe extern "C" fn destroy_instance(
    loader_data: VmLoaderData,
    _host: *const HostApi,
    instance: GuestContractInstance,
) {
    let id = instance.data as u64;
    if id == 0 {
        return;
    }
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: polyplug passes back the loader_data we registered.
        unsafe { data(loader_data) }.destroy_instance(id)
    }));
}

/// Creates this interpreter's `arena_alloc(size, arena) -> int`, bound to `host`:
/// `CallArena::alloc(size, 1)`, or `host->alloc(size, 1)` when `arena` is 0; 0 on
/// failure, like polyplug_python. Arguments that are not two non-negative ints raise
/// `TypeError`.
pub(crate) fn new_arena_alloc<'py>(
    py: &'py Attached<'_>,
    host: usize,
) -> interp_pool::Result<PyObj<'py>> {
    py.native_function(
        c"arena_alloc",
        c"arena_alloc(size, arena) -> address: allocate from the call arena (or the host when arena is 0)",
        move |py, args| {
            let [size, arena] = args.positional() else {
                return Err(NativeError::type_error(format!(
                    "arena_alloc takes (size, arena), got {} arguments",
                    args.positional().len()
                )));
            };
            if args.has_keywords() {
                return Err(NativeError::type_error(
                    "arena_alloc takes no keyword arguments",
                ));
            }
            let as_u64 = |o: &PyObj<'_>| {
                o.extract_u64(py)
                    .map_err(|_| NativeError::type_error("expected a non-negative int"))
            };
            let size = usize::try_from(as_u64(size)?)
                .map_err(|e| NativeError::type_error(e.to_string()))?;
            let p = alloc(host as *const HostApi, as_u64(arena)? as usize as *mut CallArena, size);
            Ok(py.uint(p as usize as u64)?)
        },
    )
}

/// One `arena_alloc`: from `arena` if it is non-null, else from the host.
fn alloc(host: *const HostApi, arena: *mut CallArena, size: usize) -> *mut u8 {
    if !arena.is_null() {
        // SAFETY: the guest passes back the arena pointer it was handed for this very
        // call, which the caller keeps alive and unaliased for the call's duration.
        unsafe { (*arena).alloc(size, 1) }
    } else if !host.is_null() {
        // SAFETY: `host` is the runtime's HostApi, alive while bundles are loaded.
        let host_alloc = unsafe { (*host).alloc };
        // SAFETY: polyplug's self-passing ABI: any size is accepted (null on failure).
        unsafe { host_alloc(host, size, 1) }
    } else {
        std::ptr::null_mut()
    }
}
