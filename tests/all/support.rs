//! Shared helpers: runtimes over the fixtures, hand-written bundles in temp dirs, raw
//! `vm.call`, and a watchdog for threaded tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use polyplug::runtime::Runtime;
use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_abi::types::LogLevel;
use polyplug_abi::{AbiError, CallArena, GuestContractInstance, GuestContractInterface, HostApi};
use polyplug_subinterp::PythonLoader;
use polyplug_utils::GuestContractId;

pub const LIMIT: Duration = Duration::from_secs(120);

#[path = "../shared/stress.rs"] // a symlink into interp-pool/tests/shared
mod stress;
pub use stress::stress;

pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bundles");
    assert!(
        dir.join("py_calculator/site-packages/polyplug_guest")
            .is_dir(),
        "fixture site-packages missing: run tools/provision-fixtures (tools/test does)"
    );
    dir
}

/// The bundles that need C extensions from PyPI: numpy, orjson + rpds (they run in
/// `main`), PyYAML and msgpack (Cython: `main`), Pillow (`shared_gil`).
pub fn ext_fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ext-bundles");
    for b in [
        "py_numpy/site-packages/numpy",
        "py_orjson/site-packages/orjson",
        "py_yaml/site-packages/yaml",
        "py_msgpack/site-packages/msgpack",
        "py_pillow/site-packages/PIL",
    ] {
        assert!(
            dir.join(b).is_dir(),
            "{b} missing: run tools/provision-fixtures (tools/test does)"
        );
    }
    dir
}

/// A fresh plugin dir holding only the named `ext_fixtures()` bundles (symlinked): a
/// runtime over it loads exactly those.
pub fn ext_fixtures_only(bundles: &[&str]) -> PathBuf {
    let root = scratch("ext-only");
    for b in bundles {
        std::os::unix::fs::symlink(ext_fixtures().join(b), root.join(b)).unwrap();
    }
    root
}

/// Log lines the runtime's logger received.
pub type Logs = Arc<Mutex<Vec<(LogLevel, String, String)>>>;

pub fn runtime_with(loader: PythonLoader, dirs: &[PathBuf]) -> (Arc<Runtime>, Logs) {
    let logs: Logs = Arc::default();
    let sink = Arc::clone(&logs);
    let mut b = RuntimeBuilder::new()
        .loader(loader)
        .logger(move |level, scope, msg| {
            sink.lock()
                .unwrap()
                .push((level, scope.to_owned(), msg.to_owned()))
        });
    for d in dirs {
        b = b.plugin_dir(d.clone());
    }
    (b.build().expect("runtime builds"), logs)
}

/// A runtime that discovered the three fixture bundles.
pub fn fixture_runtime() -> (Arc<Runtime>, Logs) {
    runtime_with(PythonLoader::default(), &[fixtures()])
}

pub fn host(rt: &Runtime) -> *const HostApi {
    rt.as_context_ptr()
}

/// A fresh, unique scratch directory. Named by this process's id, which the system reuses:
/// one left by an earlier process with the same id is emptied first (a bundle's
/// `site-packages` link in it made `write_bundle_with_sdk` fail with "File exists" in a
/// loaded run of `tools/test`).
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "polyplug-subinterp-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[path = "../shared/bundle.rs"]
mod bundle;
pub use bundle::write_bundle_in;

/// Writes a one-file bundle `name` with `source` as its entry module, inside a fresh
/// plugin dir; returns (plugin dir, bundle dir).
pub fn write_bundle(name: &str, source: &str, extra: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let root = scratch(name);
    let dir = write_bundle_in(&root, name, source, extra);
    (root, dir)
}

/// The handle of `contract@1`, as the generated host callers take it.
pub fn find(rt: &Runtime, contract: &str) -> polyplug_abi::GuestContractHandle {
    rt.find_guest_contract(GuestContractId::new(contract, 1).id(), 1)
        .unwrap_or_else(|e| panic!("{contract}@1 not found: {e:?}"))
}

/// The text of a `StringView` returned by a call (valid until the caller's next call).
pub fn text(v: polyplug_abi::StringView) -> String {
    // SAFETY: a view returned by a caller's arena, valid until its next call.
    String::from_utf8(unsafe { std::slice::from_raw_parts(v.ptr, v.len) }.to_vec()).unwrap()
}

/// Resolves `contract@major` to its interface.
pub fn resolve(rt: &Runtime, contract: &str, major: u32) -> *const GuestContractInterface {
    let id = GuestContractId::new(contract, major).id();
    let h = rt
        .find_guest_contract(id, 0)
        .unwrap_or_else(|e| panic!("{contract}@{major} not found: {e:?}"));
    rt.resolve_guest_contract(h).expect("resolves")
}

/// Raw `vm.call` with a null-data instance unless given.
pub fn vm_call(
    iface: *const GuestContractInterface,
    instance: GuestContractInstance,
    fn_id: u32,
    args: *const (),
    out: *mut (),
    arena: *mut CallArena,
) -> AbiError {
    let mut err = AbiError::ok();
    // SAFETY: `iface` came from the registry and its bundle is loaded for the call.
    let iface = unsafe { &*iface };
    // SAFETY: a VM-dispatch interface: `vm` is the union's active field.
    let vm = unsafe { iface.dispatch.vm };
    // SAFETY: the interface's own entry point with its own loader data; `err` is writable.
    unsafe { (vm.call)(vm.loader_data, instance, fn_id, args, out, arena, &mut err) };
    err
}

pub fn null_instance(iface: *const GuestContractInterface) -> GuestContractInstance {
    // SAFETY: a registry interface, alive while its bundle is loaded.
    let contract_id = unsafe { (*iface).contract_id };
    GuestContractInstance {
        data: std::ptr::null_mut(),
        contract_id,
    }
}

/// Runs `f`, aborting the process if it hangs (a deadlock must fail, not stall).
pub fn within<T>(what: &str, f: impl FnOnce() -> T) -> T {
    within_for(LIMIT, what, f)
}

/// [`within`] with its own limit, for tests that take seconds: a hang fails sooner.
pub fn within_for<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    let what = what.to_owned();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("watchdog: `{what}` did not finish within {limit:?}; aborting");
            std::process::abort();
        }
    });
    let r = f();
    drop(tx);
    r
}

/// Waits until `cond` holds, polling every millisecond: for a state a test can observe
/// but is not told of. Bound it with [`within`].
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The source of a hand-written bundle providing `contract` (e.g. `"probe@1"`) whose
/// `functions` list is `fns` (Python expressions), with `defs` defining them. `Impl(host)`
/// is the factory; `ok` is a success AbiError.
pub fn plugin_source(contract: &str, defs: &str, fns: &str) -> String {
    format!(
        r#"import ctypes

class _Ok:
    code = 0

ok = _Ok()

class Impl:
    def __init__(self, host):
        self.host = host

def i64_at(addr):
    return ctypes.c_int64.from_address(addr).value

def put_i64(addr, v):
    ctypes.c_int64.from_address(addr).value = v

{defs}

def polyplug_init(host, ctx):
    return ([{{"contract": "{contract}", "factory": Impl, "functions": [{fns}]}}], ok)
"#
    )
}

/// Python helper (module `peer`) that calls another contract's `vm.call` through the
/// guest SDK's ctypes structs, exactly like polyplugc's peer callers: a CFUNCTYPE call,
/// which detaches the calling thread state first.
pub const PEER_PY: &str = r#"import ctypes
from polyplug_abi import AbiError, GuestContractInstance, GuestContractInterface, HostApi

def call_i64(host_ptr, contract_id, fn_id, arg):
    host = ctypes.cast(host_ptr, ctypes.POINTER(HostApi))
    handle = host.contents.find_guest_contract(host_ptr, contract_id, 0)
    iface_ptr = host.contents.resolve_guest_contract(host_ptr, handle)
    if not iface_ptr:
        raise RuntimeError("peer not found")
    iface = ctypes.cast(iface_ptr, ctypes.POINTER(GuestContractInterface)).contents
    a, out, err = ctypes.c_int64(arg), ctypes.c_int64(), AbiError()
    inst = GuestContractInstance(None, iface.contract_id)
    iface.dispatch.vm.call(iface.dispatch.vm.loader_data, inst, fn_id,
                           ctypes.byref(a), ctypes.byref(out), None, ctypes.byref(err))
    if err.code != 0:
        raise RuntimeError(f"peer call failed (code {err.code})")
    return out.value
"#;

/// Like `write_bundle`, with the fixtures' guest SDK reachable as `site-packages`.
pub fn write_bundle_with_sdk(
    name: &str,
    source: &str,
    extra: &[(&str, &str)],
) -> (PathBuf, PathBuf) {
    let (root, dir) = write_bundle(name, source, extra);
    std::os::unix::fs::symlink(
        fixtures().join("py_calculator/site-packages"),
        dir.join("site-packages"),
    )
    .unwrap();
    (root, dir)
}

pub fn contract_id(name: &str, major: u32) -> u64 {
    GuestContractId::new(name, major).id()
}

/// Calls fn `fn_id` of `contract@1` with one i64 argument and an i64 result.
pub fn call_i64(rt: &Runtime, contract: &str, fn_id: u32, arg: i64) -> Result<i64, u32> {
    call_abi(rt, contract, fn_id, arg).map_err(|e| e.code)
}

/// `call_i64`, keeping the whole `AbiError` (code and message) on failure.
pub fn call_abi(rt: &Runtime, contract: &str, fn_id: u32, arg: i64) -> Result<i64, AbiError> {
    let iface = resolve(rt, contract, 1);
    call_on(iface, null_instance(iface), fn_id, arg)
}

/// Fn `fn_id` (one i64 in, one out) of `instance` through `iface` as given: a cached
/// interface, or a created instance.
pub fn call_on(
    iface: *const GuestContractInterface,
    instance: GuestContractInstance,
    fn_id: u32,
    arg: i64,
) -> Result<i64, AbiError> {
    let mut out: i64 = 0;
    let err = vm_call(
        iface,
        instance,
        fn_id,
        (&arg as *const i64).cast(),
        (&mut out as *mut i64).cast(),
        std::ptr::null_mut(),
    );
    if err.code == 0 {
        Ok(out)
    } else {
        Err(err)
    }
}

/// The mode `bundle` (by manifest name) runs in, as `BundleInfo::mode` reports it.
pub fn mode_of(loader: &PythonLoader, bundle: &str) -> &'static str {
    loader
        .bundle_info(polyplug_utils::BundleId::new(bundle).id())
        .expect("loaded")
        .mode
}

/// Resident set size of this process, MiB (the loader's reader).
pub fn rss_mib() -> f64 {
    polyplug_subinterp::rss_bytes().expect("VmRSS in /proc/self/status") as f64 / f64::from(1 << 20)
}

/// A runtime with no plugin dirs and a handle to its loader.
pub fn empty_runtime() -> (Arc<Runtime>, PythonLoader, Logs) {
    let loader = PythonLoader::default();
    let (rt, logs) = runtime_with(loader.clone(), &[]);
    (rt, loader, logs)
}

/// Loads the bundle in `dir` straight through the loader (as polyplug_python's own tests
/// do), returning the loader's error unchanged.
pub fn load_dir(
    loader: &PythonLoader,
    rt: &Runtime,
    dir: &Path,
) -> Result<(), polyplug::error::LoaderError> {
    use polyplug::loader::BundleLoader;
    let manifest = polyplug::loader::manifest::parse_manifest(dir).expect("manifest parses");
    loader.load(
        &manifest,
        &polyplug::loader::BundleSource::Path(dir.to_path_buf()),
        rt,
    )
}

/// Whether `ctypes` (so any polyplugc bundle, and `plugin_source`) loads in an own-GIL
/// interpreter on the CPython under test: 3.13+. On 3.12 the loader defaults to shared_gil.
pub fn own_gil_runs_ctypes() -> bool {
    interp_pool::python_version() >= (3, 13)
}

/// Tells the person running the tests (past libtest's output capture, which only catches
/// `print!`/`eprint!`) that `test` skipped or changed part of what it checks, and why.
pub fn note(test: &str, why: &str) {
    use std::io::Write;
    let (major, minor) = interp_pool::python_version();
    let _ = writeln!(
        std::io::stderr().lock(),
        "note: {test} on CPython {major}.{minor}: {why}"
    );
}

/// `threads` host threads each make 200 calls of fn 0 (`x -> x + 1`) of `contract@1`
/// through one interface resolved up front, while `bundle` is unloaded once `started`
/// answers came back: every call must answer right or say StaleHandle. Returns
/// `(answers, stale)`, which add up to all calls made.
pub fn unload_during_calls(
    rt: &Runtime,
    contract: &str,
    bundle: &str,
    threads: i64,
    started: usize,
) -> (usize, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let iface = resolve(rt, contract, 1) as usize;
    let (answers, stale) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for t in 0..threads {
            let (answers, stale) = (&answers, &stale);
            s.spawn(move || {
                let iface = iface as *const GuestContractInterface;
                for i in 0..200 {
                    let arg = t * 1000 + i;
                    match call_on(iface, null_instance(iface), 0, arg) {
                        Ok(out) => {
                            assert_eq!(out, arg + 1);
                            answers.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e.code, polyplug_abi::AbiErrorCode::StaleHandle as u32);
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        wait_until(|| answers.load(Ordering::Relaxed) >= started);
        rt.unload_bundle(polyplug_utils::BundleId::new(bundle))
            .unwrap();
    });
    (answers.into_inner(), stale.into_inner())
}
