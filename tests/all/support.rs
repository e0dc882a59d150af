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

pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bundles");
    assert!(
        dir.join("py_calculator/site-packages/polyplug_guest")
            .is_dir(),
        "fixture site-packages missing: run tools/provision-fixtures (tools/test does)"
    );
    dir
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

/// A fresh, unique scratch directory.
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "polyplug-subinterp-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a one-file bundle `name` with `source` as its entry module, inside a fresh
/// plugin dir; returns (plugin dir, bundle dir).
pub fn write_bundle(name: &str, source: &str, extra: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let root = scratch(name);
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let id = polyplug_utils::BundleId::new(name).id();
    std::fs::write(
        dir.join("manifest.toml"),
        format!("name = \"{name}\"\nid = {id}\nloader = \"python\"\nfile = \"{name}.py\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{name}.py")), source).unwrap();
    for (file, text) in extra {
        let p = dir.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    (root, dir)
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
    unsafe {
        let vm = (*iface).dispatch.vm;
        (vm.call)(vm.loader_data, instance, fn_id, args, out, arena, &mut err);
    }
    err
}

pub fn null_instance(iface: *const GuestContractInterface) -> GuestContractInstance {
    // SAFETY: a registry interface, alive while its bundle is loaded.
    GuestContractInstance {
        data: std::ptr::null_mut(),
        contract_id: unsafe { (*iface).contract_id },
    }
}

/// Runs `f`, aborting the process if it hangs (a deadlock must fail, not stall).
pub fn within<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    let what = what.to_owned();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(LIMIT) {
            eprintln!("watchdog: `{what}` did not finish within {LIMIT:?}; aborting");
            std::process::abort();
        }
    });
    let r = f();
    drop(tx);
    r
}
