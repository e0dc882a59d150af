//! Loading a bundle: run its entry module and `polyplug_init` in a fresh interpreter,
//! parse the registration dicts, then register one VM-dispatch interface per contract.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use interp_pool::{Attached, Persistent, PyObj};
use polyplug::error::LoaderError;
use polyplug::runtime::Runtime;
use polyplug_abi::dispatch::dispatch_mechanisms::DispatchMechanisms;
use polyplug_abi::dispatch::vm_dispatch::VmDispatch;
use polyplug_abi::types::Version;
use polyplug_abi::{
    AbiError, AbiErrorCode, BundleInitContext, DispatchType, GuestContractInterface, HostApi,
    PluginDescriptor, StringView, VmLoaderData,
};
use polyplug_utils::GuestContractId;

use crate::config::{CaughtRefusals, InterpreterMode};
use crate::contract::{self, ContractData, Objects, ReplicaObjects, Successor};
use crate::error::{init_failed, init_failed_after_refusal, init_failed_msg};
use crate::isolation::{self, BundleKey};
use crate::metrics::Meter;
use crate::output::{self, OutputSink};
use crate::refusals::{self, Binding, CallWatch, Evidence, RefusalHow};
use crate::replicas::Target;

/// Run into a fresh namespace once per load, before the bundle, in this order: the
/// output writer (`install_output`, used by `output::install`) and the import helpers
/// both source kinds use (`load_path`, `load_code`). The refusal recorder
/// (`refusals::install`) follows, once per interpreter.
const BOOTSTRAP: [&str; 2] = [
    include_str!("python/guest_output.py"),
    include_str!("python/bootstrap.py"),
];

/// Where the entry module comes from.
pub(crate) enum Entry<'a> {
    /// Entry file (absolute), module name = its stem, plus the bundle's import
    /// directories: prepended to `sys.path` in a subinterpreter (in this order, each at
    /// 0), resolved by the isolation finder in the main interpreter.
    Path { file: &'a str, dirs: Vec<String> },
    /// Source text compiled under `module` (Code/Bytes sources).
    Code { src: &'a str },
}

/// Everything a load needs, fixed before any guest code runs.
pub(crate) struct Plan<'a> {
    /// The bundle's manifest name: what every error, log line and metric calls it.
    pub(crate) name: &'a str,
    /// The entry's Python module name: the entry file stem, or the sanitised manifest
    /// name. Only Python sees it.
    pub(crate) module: String,
    pub(crate) bundle_id: u64,
    pub(crate) entry: Entry<'a>,
    /// `BundleInitContext.bundle_path`: the canonical bundle dir, or "".
    pub(crate) ctx_path: &'a str,
}

/// An extension module that refused the interpreter a load ran in.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) module: String,
    /// How it was built (PyO3 and Cython bind a module to the first interpreter
    /// importing it); read from the `.so` the import hook recorded.
    pub(crate) binding: Binding,
    /// Whether the ImportError reached the loader or the importing package caught it.
    pub(crate) how: RefusalHow,
    /// What made the loader count it as a refusal.
    pub(crate) seen: Evidence,
}

/// Why one load attempt failed: the error for the host and, if an extension module
/// refusing this kind of interpreter caused it (raised, or caught by the importing
/// package and counted as a refusal, see `judge`), that refusal: the caller may retry the
/// load in another mode.
#[derive(Debug)]
pub(crate) struct LoadFailure {
    pub(crate) error: LoaderError,
    pub(crate) refusal: Option<Refusal>,
}

impl From<LoaderError> for LoadFailure {
    fn from(error: LoaderError) -> Self {
        Self {
            error,
            refusal: None,
        }
    }
}

impl Plan<'_> {
    /// `InitFailed` for this bundle, with the refusing extension module if that was it
    /// (its binding is filled in by `judge`, from the import hook's record).
    pub(crate) fn failed(&self, doing: &str, err: &interp_pool::Error) -> LoadFailure {
        let refusal = match err {
            interp_pool::Error::Unsupported { module, .. } => Some(Refusal {
                module: module.clone(),
                binding: Binding::C,
                how: RefusalHow::Raised,
                seen: Evidence::Message,
            }),
            _ => None,
        };
        // After a recorded refusal the failure is usually its consequence (a package
        // without its accelerator), retried in another mode: not an error yet.
        let error = if refusals::pending() {
            init_failed_after_refusal(self.name, doing, err)
        } else {
            init_failed(self.name, doing, err)
        };
        LoadFailure { error, refusal }
    }

    /// `InitFailed` for this bundle with a message of the loader's own.
    fn invalid(&self, msg: impl Into<String>) -> LoadFailure {
        init_failed_msg(self.name, msg).into()
    }
}

impl Declared {
    /// Its objects in the replica that declared it.
    pub(crate) fn into_objects(self) -> ReplicaObjects {
        self.objects
    }
}

/// A contract as `polyplug_init` declared it, its Python objects still pinned in the
/// bundle's interpreter.
pub(crate) struct Declared {
    name: String,
    major: u32,
    plugin_name: String,
    objects: ReplicaObjects,
}

impl Declared {
    /// `name@major (N functions)`: what replicas must agree on.
    fn shape(&self) -> String {
        format!(
            "{}@{} ({} functions)",
            self.name,
            self.major,
            self.objects.functions.len()
        )
    }
}

/// `Err` with a description if two replicas' `polyplug_init` registered different
/// contracts or function counts (they ran the same code, so the bundle's init depends on
/// something else: state, randomness, the environment).
pub(crate) fn same_registrations(first: &[Declared], other: &[Declared]) -> Result<(), String> {
    same_shapes(&shapes(first), other)
}

/// What replicas must agree on, per declared contract in order.
pub(crate) fn shapes(declared: &[Declared]) -> Vec<String> {
    declared.iter().map(Declared::shape).collect()
}

/// `same_registrations` against the first replica's `shapes`.
pub(crate) fn same_shapes(first: &[String], other: &[Declared]) -> Result<(), String> {
    let (a, b) = (first, shapes(other));
    if a == b.as_slice() {
        Ok(())
    } else {
        Err(format!(
            "replicas registered different contracts: the first registered [{}], another [{}]",
            a.join(", "),
            b.join(", ")
        ))
    }
}

/// What a successful init produced: the declared contracts, and the modules whose
/// caught refusal the bundle runs without (`CaughtRefusals::KeepMode`, ignored ones).
pub(crate) struct Initialized {
    pub(crate) declared: Vec<Declared>,
    pub(crate) fallback: Vec<String>,
}

/// How the load treats refusals it sees (from `PythonConfig`, for this bundle).
pub(crate) struct RefusalPolicy<'a> {
    /// The mode this attempt runs in (for messages).
    pub(crate) mode: InterpreterMode,
    pub(crate) caught: CaughtRefusals,
    pub(crate) ignored: &'a [String],
}

/// Pushes a bundle id on the runtime's init stack for the current thread; pops on drop,
/// so every path (error, panic) leaves the stack balanced.
pub(crate) struct InitWindow<'r>(&'r Runtime);

impl<'r> InitWindow<'r> {
    pub(crate) fn enter(runtime: &'r Runtime, bundle_id: u64) -> Self {
        runtime.push_init_bundle_id(bundle_id);
        Self(runtime)
    }
}

impl Drop for InitWindow<'_> {
    fn drop(&mut self) {
        self.0.pop_init_bundle_id();
    }
}

/// The job run on the bundle's owner thread: import, `polyplug_init`, parse, default
/// instances. Guest code runs inside an init window on this (the owner) thread, so
/// dependency enforcement sees the bundle. `main` is the bundle's identity when it loads
/// into the main interpreter: then its imports go through the isolation finder and are
/// re-keyed afterwards, and `sys.path` is left alone.
pub(crate) fn run_init(
    py: &Attached<'_>,
    plan: &Plan<'_>,
    runtime: &Runtime,
    host: usize,
    main: Option<BundleKey>,
    output: &OutputSink,
    policy: &RefusalPolicy<'_>,
) -> Result<Initialized, LoadFailure> {
    let _window = InitWindow::enter(runtime, plan.bundle_id);
    let out = init_in(py, plan, host, main, output);
    let seen = refusals::take(py).unwrap_or_else(|e| {
        tracing::debug!(bundle = plan.name, error = %e, "could not read recorded refusals");
        Vec::new()
    });
    judge(plan, policy, out, seen)
}

/// The init itself; in the main interpreter inside the bundle's isolation scope.
fn init_in(
    py: &Attached<'_>,
    plan: &Plan<'_>,
    host: usize,
    main: Option<BundleKey>,
    output: &OutputSink,
) -> Result<Vec<Declared>, LoadFailure> {
    let Some(key) = main else {
        return init_bundle(py, plan, host, false, output);
    };
    let _scope = isolation::Scope::enter(key);
    let dirs = match &plan.entry {
        // Search order: as sys.path would have them after the inserts at 0.
        Entry::Path { dirs, .. } => dirs.iter().rev().cloned().collect(),
        Entry::Code { .. } => Vec::new(),
    };
    isolation::register(py, key, plan.bundle_id, &dirs)
        .map_err(|e| plan.failed("isolating the bundle in the main interpreter", &e))?;
    let out = init_bundle(py, plan, host, true, output);
    let settled = isolation::settle(py)
        .map_err(|e| plan.failed("re-keying the bundle's modules in the main interpreter", &e));
    let declared = out?;
    settled?;
    Ok(declared)
}

fn init_bundle(
    py: &Attached<'_>,
    plan: &Plan<'_>,
    host: usize,
    in_main: bool,
    output: &OutputSink,
) -> Result<Vec<Declared>, LoadFailure> {
    let boot = (|| {
        let ns = py.eval("{'__builtins__': __builtins__}")?;
        crate::deadlines::prepare(py, in_main)?;
        for src in BOOTSTRAP {
            crate::deadlines::run_loader_code(py, src, &ns)?;
        }
        output::install(py, &ns, output)?;
        refusals::install(py, in_main)?;
        Ok(ns)
    })()
    .map_err(|e| plan.failed("interpreter bootstrap failed", &e))?;
    let glue = |e: interp_pool::Error| plan.failed("preparing the import", &e);
    let module = match &plan.entry {
        Entry::Path { file, dirs } => {
            let load_path = boot
                .get(py, "load_path")
                .map_err(glue)?
                .expect("bootstrap defines load_path");
            let dirs_list = py.eval("[]").map_err(glue)?;
            let on_sys_path: &[String] = if in_main { &[] } else { dirs };
            for d in on_sys_path {
                dirs_list
                    .call_method(py, "append", &[&py.str(d).map_err(glue)?])
                    .map_err(glue)?;
            }
            let name = py.str(&plan.module).map_err(glue)?;
            let path = py.str(file).map_err(glue)?;
            load_path
                .call(py, &[&name, &path, &dirs_list])
                .map_err(|e| {
                    plan.failed(&format!("failed to import Python module at {file}"), &e)
                })?
        }
        Entry::Code { src } => {
            let load_code = boot
                .get(py, "load_code")
                .map_err(glue)?
                .expect("bootstrap defines load_code");
            let name = py.str(&plan.module).map_err(glue)?;
            let src = py.str(src).map_err(glue)?;
            load_code
                .call(py, &[&name, &src])
                .map_err(|e| plan.failed("inline module compile/exec failed", &e))?
        }
    };
    let init = module
        .getattr(py, "polyplug_init")
        .map_err(|_| LoaderError::InitSymbolMissing {
            bundle: plan.name.to_owned(),
        })?;
    let ctx = BundleInitContext {
        bundle_id: plan.bundle_id,
        bundle_path: StringView {
            ptr: plan.ctx_path.as_ptr(),
            len: plan.ctx_path.len(),
        },
    };
    let ctx_addr = &ctx as *const BundleInitContext as usize as u64;
    let (host_arg, ctx_arg) = (
        py.uint(host as u64).map_err(glue)?,
        py.uint(ctx_addr).map_err(glue)?,
    );
    let ret = init
        .call(py, &[&host_arg, &ctx_arg])
        .map_err(|e| plan.failed("polyplug_init call failed", &e))?;
    let declared = parse_registrations(py, &ret, plan, host)?;
    if declared.is_empty() {
        return Err(plan.invalid("polyplug_init returned no contracts (empty registrations list)"));
    }
    Ok(declared)
}

/// Weighs the refusals the import hook recorded during an init against its outcome.
///
/// - The init failed on a raised refusal (`Error::Unsupported`): that refusal, its
///   binding read from the recorded `.so`.
/// - It failed otherwise, after a recorded refusal: Cython's "Interpreter change
///   detected" raised (CPython does not name the module in it), or a package that caught
///   the refusal and then failed on what it lacks (PyYAML's missing `CSafeLoader`). It
///   counts as that refusal, unless `KeepMode` keeps the mode for caught ones: then the
///   error says what was caught.
/// - It succeeded after a caught refusal: `Downgrade` fails this attempt with it (the
///   declared objects are dropped here, inside the job), `KeepMode` keeps it and reports
///   the module as a fallback; so does `main`, which has no next mode.
///
/// Ignored modules (`ignored_refusals`) count for nothing but the fallback list.
fn judge(
    plan: &Plan<'_>,
    policy: &RefusalPolicy<'_>,
    out: Result<Vec<Declared>, LoadFailure>,
    seen: Vec<refusals::Seen>,
) -> Result<Initialized, LoadFailure> {
    let (ignored, seen): (Vec<_>, Vec<_>) = seen
        .into_iter()
        .partition(|s| policy.ignored.contains(&s.module));
    for s in &ignored {
        tracing::info!(bundle = plan.name, module = %s.module, mode = %policy.mode,
            "extension module refused this interpreter; ignored (PythonConfig::ignored_refusals)");
    }
    let mode = policy.mode;
    let mut failure = match out {
        Ok(declared) => {
            let Some(first) = seen.first() else {
                return Ok(Initialized {
                    declared,
                    fallback: ignored.into_iter().map(|s| s.module).collect(),
                });
            };
            // `main` is the last mode: there, a caught refusal (Cython's, of a module
            // another interpreter took first) can only be run without.
            if policy.caught == CaughtRefusals::Downgrade && mode != InterpreterMode::Main {
                drop(declared);
                return Err(LoadFailure {
                    error: init_failed_msg(
                        plan.name,
                        format!(
                            "extension module {} refuses {mode} interpreters; the importing package \
                    caught the ImportError and went on without it",
                            first.module
                        ),
                    ),
                    refusal: Some(Refusal {
                        module: first.module.clone(),
                        binding: Binding::sniff(&first.origin),
                        how: RefusalHow::Caught,
                        seen: first.evidence.clone(),
                    }),
                });
            }
            for s in &seen {
                tracing::warn!(bundle = plan.name, module = %s.module, mode = %mode,
                    kept_by = if mode == InterpreterMode::Main { "no mode left" } else { "KeepMode" },
                    "extension module refuses this interpreter mode; the importing package caught it \
                     and the bundle runs its fallback");
            }
            let fallback = seen.into_iter().chain(ignored).map(|s| s.module).collect();
            return Ok(Initialized { declared, fallback });
        }
        Err(f) => f,
    };
    if let Some(r) = &mut failure.refusal {
        // Ignored or not, a raised refusal fails the import: it moves the bundle.
        if let Some(s) = seen.iter().chain(&ignored).find(|s| s.module == r.module) {
            r.binding = Binding::sniff(&s.origin);
            r.seen = s.evidence.clone();
        }
        return Err(failure);
    }
    let Some(first) = seen.into_iter().next() else {
        return Err(failure);
    };
    let error = match &failure.error {
        LoaderError::InitFailed { error, .. } => error.clone(),
        other => other.to_string(),
    };
    let raised = error.contains(&first.message);
    if !raised && policy.caught == CaughtRefusals::KeepMode {
        failure.error = init_failed_msg(
            plan.name,
            format!(
                "{error} (extension module {} refused {mode} interpreters and the importing package \
                    caught it; PythonConfig::caught_refusals is KeepMode, so the bundle ran the package's \
                    fallback)",
                first.module
            ),
        );
        return Err(failure);
    }
    let how = if raised {
        "raised"
    } else {
        "caught by the importing package"
    };
    let why = if first.message.contains("Interpreter change detected") {
        ": a Cython module loads in one interpreter per process, and another one imported it \
         first (pin every bundle using it to the same mode, e.g. main)"
    } else {
        ""
    };
    failure.error = init_failed_msg(
        plan.name,
        format!(
            "{error} (extension module {} refuses {mode} interpreters, {how}{why})",
            first.module
        ),
    );
    failure.refusal = Some(Refusal {
        binding: Binding::sniff(&first.origin),
        seen: first.evidence,
        how: if raised {
            RefusalHow::Raised
        } else {
            RefusalHow::Caught
        },
        module: first.module,
    });
    Err(failure)
}

/// `polyplug_init`'s `(registrations, AbiError)` → one `Declared` per registration,
/// each with its default instance built.
fn parse_registrations(
    py: &Attached<'_>,
    ret: &PyObj<'_>,
    plan: &Plan<'_>,
    host: usize,
) -> Result<Vec<Declared>, LoadFailure> {
    let glue = |e: interp_pool::Error| plan.failed("reading polyplug_init's result", &e);
    let regs = registrations_list(py, ret, plan)?;
    let arena_alloc = contract::new_arena_alloc(py, host).map_err(glue)?;
    let count = regs.len(py).map_err(glue)?;
    let mut declared = Vec::with_capacity(count);
    for i in 0..count {
        let entry = regs.get_index(py, i).map_err(glue)?;
        declared.push(registration(py, &entry, plan, host, &arena_alloc)?);
    }
    Ok(declared)
}

/// Checks the shape of `polyplug_init`'s result and its `AbiError`; returns the
/// registrations list.
fn registrations_list<'py>(
    py: &'py Attached<'_>,
    ret: &PyObj<'py>,
    plan: &Plan<'_>,
) -> Result<PyObj<'py>, LoadFailure> {
    let glue = |e: interp_pool::Error| plan.failed("reading polyplug_init's result", &e);
    if !ret.is_tuple() {
        return Err(plan.invalid("polyplug_init must return a (registrations, AbiError) tuple"));
    }
    let n = ret.len(py).map_err(glue)?;
    if n != 2 {
        return Err(plan.invalid(format!(
            "polyplug_init must return a 2-tuple (registrations, AbiError), got {n} elements"
        )));
    }
    let regs = ret.get_index(py, 0).map_err(glue)?;
    let abi = ret.get_index(py, 1).map_err(glue)?;
    let code = abi
        .getattr(py, "code")
        .and_then(|c| c.extract_u64(py))
        .ok()
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| plan.invalid("polyplug_init AbiError has no readable u32 `code` field"))?;
    if code != AbiErrorCode::Ok as u32 {
        return Err(plan.invalid(format!("polyplug_init reported AbiError code {code}")));
    }
    if !regs.is_list() {
        return Err(plan.invalid("polyplug_init registrations must be a list of dicts"));
    }
    Ok(regs)
}

/// One registration dict: `contract`, optional `plugin_name`, `factory`, `functions`.
fn registration(
    py: &Attached<'_>,
    entry: &PyObj<'_>,
    plan: &Plan<'_>,
    host: usize,
    arena_alloc: &PyObj<'_>,
) -> Result<Declared, LoadFailure> {
    let item = |key: &str| entry.get(py, key).ok().flatten();
    let contract = item("contract")
        .and_then(|c| c.extract_string(py).ok())
        .ok_or_else(|| plan.invalid("registration entry missing string `contract` key"))?;
    let (name, major) = parse_contract_string(&contract, plan.name)?;
    // Without one, the plugin is named after the entry module, as polyplug_python 0.1.3
    // names it (a host-visible descriptor name, not how the loader names the bundle).
    let plugin_name = item("plugin_name")
        .and_then(|p| p.extract_string(py).ok())
        .unwrap_or_else(|| plan.module.clone());
    let factory = item("factory").ok_or_else(|| {
        plan.invalid(format!(
            "registration entry for `{contract}` missing `factory` callable"
        ))
    })?;
    if !factory.is_callable() {
        return Err(plan.invalid(format!("`factory` for `{contract}` is not callable")));
    }
    let functions = function_list(py, item("functions"), &contract, plan)?;
    let default_impl = default_instance(py, &factory, &format!("{name}@{major}"), host, plan)?;
    Ok(Declared {
        name,
        major,
        plugin_name,
        objects: ReplicaObjects {
            interp: py.id(),
            replica: None,
            functions,
            factory: Persistent::new(py, factory),
            default_impl: Persistent::new(py, default_impl),
            arena_alloc: Persistent::new(py, arena_alloc.clone_ref()),
        },
    })
}

/// A registration's `functions`: a list of callables, in fn_id order.
fn function_list(
    py: &Attached<'_>,
    functions: Option<PyObj<'_>>,
    contract: &str,
    plan: &Plan<'_>,
) -> Result<Vec<Persistent>, LoadFailure> {
    let glue = |e: interp_pool::Error| plan.failed("reading polyplug_init's result", &e);
    let functions = functions.ok_or_else(|| {
        plan.invalid(format!(
            "registration entry for `{contract}` missing `functions` list"
        ))
    })?;
    if !functions.is_list() {
        return Err(plan.invalid(format!("`functions` for `{contract}` must be a list")));
    }
    let n = functions.len(py).map_err(glue)?;
    let mut callables = Vec::with_capacity(n);
    for idx in 0..n {
        let f = functions.get_index(py, idx).map_err(glue)?;
        if !f.is_callable() {
            return Err(plan.invalid(format!(
                "`functions[{idx}]` for `{contract}` is not callable"
            )));
        }
        callables.push(Persistent::new(py, f));
    }
    Ok(callables)
}

/// Instance 0 of a contract: `factory(host)`.
fn default_instance<'py>(
    py: &'py Attached<'_>,
    factory: &PyObj<'py>,
    contract: &str,
    host: usize,
    plan: &Plan<'_>,
) -> Result<PyObj<'py>, LoadFailure> {
    let host = py
        .uint(host as u64)
        .map_err(|e| plan.failed("reading polyplug_init's result", &e))?;
    factory.call(py, &[&host]).map_err(|e| {
        let doing = format!("factory for `{contract}` failed while building the default instance");
        plan.failed(&doing, &e)
    })
}

/// `name@major[.minor]` → `(name, major)`; the minor never enters the contract id.
pub(crate) fn parse_contract_string(
    contract: &str,
    bundle: &str,
) -> Result<(String, u32), LoaderError> {
    let fail = |why: String| {
        init_failed_msg(
            bundle,
            format!("invalid contract string `{contract}`: {why}"),
        )
    };
    let (name, version) = contract
        .split_once('@')
        .ok_or_else(|| fail("expected `name@major[.minor]`".into()))?;
    if name.is_empty() {
        return Err(fail("empty contract name".into()));
    }
    let major = version.split('.').next().unwrap_or(version);
    let major = major
        .parse::<u32>()
        .map_err(|_| fail(format!("major version `{major}` is not a u32")))?;
    Ok((name.to_owned(), major))
}

/// What every contract of one load shares.
pub(crate) struct BundleCallSettings {
    pub(crate) key: Option<BundleKey>,
    /// `main` mode: the bundle's own memory account, entered around its calls.
    pub(crate) memory: Option<Arc<interp_pool::MemoryAccount>>,
    pub(crate) meter: Arc<Meter>,
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) grace: std::time::Duration,
    /// Refusals seen at call time.
    pub(crate) watch: Arc<CallWatch>,
}

/// Pins every declared contract's loader data (see `ContractData` for why it is never
/// freed) and registers it with the host once, whatever the number of replicas, inside an
/// init window on this thread so the registry attributes the contracts to the bundle
/// (`bundle`: its manifest name). `declared` has one list per replica, in the same order
/// (checked by `same_registrations`). On failure the caller releases the Python objects of
/// all of them (those already registered then answer `StaleHandle`). `replaces`: on a
/// reload, the current version's contracts; each gets its new counterpart as
/// `successor` before anything is registered (the caller clears them if this fails).
pub(crate) fn register_all(
    declared: Vec<Vec<Declared>>,
    target: &Target,
    bundle: &str,
    bundle_id: u64,
    settings: BundleCallSettings,
    replaces: &[&'static ContractData],
    runtime: &Runtime,
) -> (Vec<&'static ContractData>, Result<(), LoaderError>) {
    let host: *const HostApi = runtime.as_context_ptr();
    // Per contract: its declaration on the first replica, and every replica's objects.
    let mut per_contract: Vec<(Declared, Vec<ReplicaObjects>)> = Vec::new();
    for (r, list) in declared.into_iter().enumerate() {
        for (i, d) in list.into_iter().enumerate() {
            if r == 0 {
                per_contract.push((d, Vec::new()));
            } else if let Some((_, others)) = per_contract.get_mut(i) {
                others.push(d.objects);
            }
        }
    }
    let mut entries = Vec::with_capacity(per_contract.len());
    let mut datas = Vec::with_capacity(per_contract.len());
    for (d, others) in per_contract {
        let contract = format!("{}@{}", d.name, d.major);
        let fn_count = d.objects.functions.len();
        let mut replicas = vec![d.objects];
        replicas.extend(others);
        let data: &'static ContractData = Box::leak(Box::new(ContractData {
            target: target.clone(),
            scope: settings.key,
            memory: settings.memory.clone(),
            meter: Arc::clone(&settings.meter),
            timeout: settings.timeout,
            grace: settings.grace,
            watch: Arc::clone(&settings.watch),
            bundle: bundle.to_owned(),
            contract_id: GuestContractId::new(&d.name, d.major),
            fn_count,
            logger: runtime.logger(),
            objects: Mutex::new(Some(Objects::new(replicas, target))),
            successor: Successor::default(),
            contract,
        }));
        datas.push(data);
        entries.push((data, d.major, d.plugin_name));
    }
    // A reload: the old version forwards to the new one from before the registry changes.
    for old in replaces {
        let next = datas.iter().find(|d| d.contract_id == old.contract_id);
        old.successor.set(next.copied());
    }
    let _window = InitWindow::enter(runtime, bundle_id);
    for (data, major, plugin_name) in entries {
        let version = Version {
            major,
            minor: 0,
            patch: 0,
        };
        let interface = GuestContractInterface {
            contract_id: data.contract_id,
            contract_version: version,
            dispatch_type: DispatchType::VirtualMachine,
            create_instance: contract::create_instance,
            destroy_instance: contract::destroy_instance,
            dispatch: DispatchMechanisms {
                vm: VmDispatch {
                    call: contract::vm_call,
                    loader_data: VmLoaderData {
                        data: data as *const ContractData as *mut c_void,
                    },
                },
            },
        };
        // The registry copies both; they only need to live for the call.
        let descriptor = PluginDescriptor {
            name: StringView {
                ptr: plugin_name.as_ptr(),
                len: plugin_name.len(),
            },
            contract_name: StringView {
                ptr: data.contract.as_ptr(),
                len: data.contract.len(),
            },
            version,
        };
        let mut result = AbiError::ok();
        // SAFETY: `host` is the runtime's live HostApi, valid while the runtime loads us.
        let register = unsafe { (*host).register_guest_contract };
        // SAFETY: polyplug's self-passing ABI; descriptor, interface and result are valid
        // for the duration of the call, which copies them.
        unsafe { register(host, &descriptor, &interface, &mut result) };
        if !result.is_ok() {
            let err = init_failed_msg(
                bundle,
                format!(
                    "register_guest_contract failed for `{}`: code={:?}",
                    data.contract, result.code
                ),
            );
            return (datas, Err(err));
        }
    }
    (datas, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::parse_contract_string;

    #[test]
    fn contract_strings_parse_like_polyplug_python() {
        assert_eq!(
            parse_contract_string("calculator@2", "b").unwrap(),
            ("calculator".into(), 2)
        );
        assert_eq!(
            parse_contract_string("logger@3.7", "b").unwrap(),
            ("logger".into(), 3),
            "minor ignored"
        );
        for bad in ["noversion", "@1", "x@abc", "x@"] {
            assert!(parse_contract_string(bad, "b").is_err(), "{bad}");
        }
    }
}
