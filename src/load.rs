//! Loading a bundle: run its entry module and `polyplug_init` in a fresh interpreter,
//! parse the registration dicts, then register one VM-dispatch interface per contract.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use interp_pool::{Attached, InterpreterHandle, Persistent, PyObj};
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

use crate::contract::{self, ContractData, Objects};
use crate::error::{init_failed, init_failed_msg};
use crate::isolation::{self, BundleKey};
use crate::metrics::Meter;
use crate::output::{self, OutputSink};

/// Run into a fresh namespace once per load, before the bundle, in this order: the
/// output writer (`install_output`, used by `output::install`), the import helpers both
/// source kinds use (`load_path`, `load_code`) and the PyO3 probe (`refused_by_pyo3`).
const BOOTSTRAP: [&str; 3] = [
    include_str!("python/guest_output.py"),
    include_str!("python/bootstrap.py"),
    include_str!("python/pyo3_probe.py"),
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
    /// Built with PyO3, which binds a module to the first interpreter importing it.
    pub(crate) pyo3: bool,
}

/// Why one load attempt failed: the error for the host and, if an extension module
/// refusing this kind of interpreter caused it, that refusal (the caller may retry the
/// load in another mode). A refusal that did not fail the load (caught by the importing
/// package) would travel in the success value instead, next to the declared contracts.
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
    /// `InitFailed` for this bundle, with the refusing extension module if that was it.
    pub(crate) fn failed(&self, doing: &str, err: &interp_pool::Error) -> LoadFailure {
        self.failed_as(doing, err, |_| false)
    }

    /// Like `failed`, and finds out whether a refusing module is a PyO3 build, with the
    /// bootstrap's probe in the interpreter that refused it.
    fn failed_probing(
        &self,
        py: &Attached<'_>,
        boot: &PyObj<'_>,
        doing: &str,
        err: &interp_pool::Error,
    ) -> LoadFailure {
        self.failed_as(doing, err, |module| {
            let probe = || {
                let Some(probe) = boot.get(py, "refused_by_pyo3")? else {
                    return Ok(0);
                };
                probe.call(py, &[&py.str(module)?])?.extract_i64(py)
            };
            probe().unwrap_or(0) == 1
        })
    }

    fn failed_as(
        &self,
        doing: &str,
        err: &interp_pool::Error,
        is_pyo3: impl FnOnce(&str) -> bool,
    ) -> LoadFailure {
        let refusal = match err {
            interp_pool::Error::Unsupported { module, .. } => Some(Refusal {
                module: module.clone(),
                pyo3: is_pyo3(module),
            }),
            _ => None,
        };
        LoadFailure {
            error: init_failed(self.name, doing, err),
            refusal,
        }
    }

    /// `InitFailed` for this bundle with a message of the loader's own.
    fn invalid(&self, msg: impl Into<String>) -> LoadFailure {
        init_failed_msg(self.name, msg).into()
    }
}

/// A contract as `polyplug_init` declared it, its Python objects still pinned in the
/// bundle's interpreter.
pub(crate) struct Declared {
    name: String,
    major: u32,
    plugin_name: String,
    objects: Objects,
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
) -> Result<Vec<Declared>, LoadFailure> {
    let _window = InitWindow::enter(runtime, plan.bundle_id);
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
        for src in BOOTSTRAP {
            py.run_in(src, &ns)?;
        }
        output::install(py, &ns, output)?;
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
                    let doing = format!("failed to import Python module at {file}");
                    plan.failed_probing(py, &boot, &doing, &e)
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
        .map_err(|e| plan.failed_probing(py, &boot, "polyplug_init call failed", &e))?;
    let declared = parse_registrations(py, &ret, plan, host)?;
    if declared.is_empty() {
        return Err(plan.invalid("polyplug_init returned no contracts (empty registrations list)"));
    }
    Ok(declared)
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
        objects: Objects {
            functions,
            factory: Persistent::new(py, factory),
            default_impl: Persistent::new(py, default_impl),
            arena_alloc: Persistent::new(py, arena_alloc.clone_ref()),
            instances: HashMap::new(),
            next_id: 1,
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
}

/// Pins every declared contract's loader data (see `ContractData` for why it is never
/// freed) and registers it with the host, inside an init window on this thread so the
/// registry attributes the contracts to the bundle (`bundle`: its manifest name). On
/// failure the caller releases the Python objects of all of them (those already
/// registered then answer `StaleHandle`).
pub(crate) fn register_all(
    declared: Vec<Declared>,
    interp: &InterpreterHandle,
    bundle: &str,
    bundle_id: u64,
    settings: BundleCallSettings,
    runtime: &Runtime,
) -> (Vec<&'static ContractData>, Result<(), LoaderError>) {
    let host: *const HostApi = runtime.as_context_ptr();
    let mut entries = Vec::with_capacity(declared.len());
    let mut datas = Vec::with_capacity(declared.len());
    for d in declared {
        let contract = format!("{}@{}", d.name, d.major);
        let data: &'static ContractData = Box::leak(Box::new(ContractData {
            interp: interp.clone(),
            scope: settings.key,
            memory: settings.memory.clone(),
            meter: Arc::clone(&settings.meter),
            timeout: settings.timeout,
            bundle: bundle.to_owned(),
            contract_id: GuestContractId::new(&d.name, d.major),
            fn_count: d.objects.functions.len(),
            logger: runtime.logger(),
            objects: Mutex::new(Some(d.objects)),
            successor: OnceLock::new(),
            contract,
        }));
        datas.push(data);
        entries.push((data, d.major, d.plugin_name));
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
