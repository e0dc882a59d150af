//! A host that initialised CPython itself (its own test binary: Python is initialised
//! here, before the loader): a `main` bundle runs in the host's main interpreter, and
//! `fast_glue` leaves the host's `ctypes` alone, because the loader did not initialise
//! that Python.

#[path = "shared/bundle.rs"]
mod bundle;

use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};
// The host's own CPython bindings.
use pyo3_ffi as sys;

const SOURCE: &str = r#"import ctypes
class Ok:
    code = 0
def f(*a):
    pass
def polyplug_init(h, c):
    return ([{'contract': 'hosted@1', 'factory': lambda h: None, 'functions': [f]}], Ok())
"#;

/// Asserts, in the host's main interpreter, that ctypes' own functions are in place.
const HOST_CHECK: &std::ffi::CStr = c"import ctypes, sys
assert type(ctypes.string_at).__name__ == 'function', ctypes.string_at
assert type(ctypes.memmove).__name__ != 'builtin_function_or_method', ctypes.memmove
assert type(ctypes.cast).__name__ == 'function', ctypes.cast
assert not hasattr(ctypes, '_interp_pool_fast_ctypes')
assert '_polyplug_subinterp_isolation' in sys.modules, 'the bundle ran in main'
";

#[test]
fn main_mode_in_a_host_initialised_python_leaves_ctypes_alone() {
    // SAFETY: R1: thread: the test thread, before any loader or pool use in this process
    // (own binary); no thread state yet.
    unsafe { sys::Py_InitializeEx(0) };
    // SAFETY: R1: main's tstate is attached here after init; detach it, as a host must
    // while the pool runs.
    let main_ts = unsafe { sys::PyEval_SaveThread() };
    let root = std::env::temp_dir().join(format!("polyplug-subinterp-host-{}", std::process::id()));
    let dir = bundle::write_bundle_in(&root, "hosted_bundle", SOURCE, &[]);
    let loader = PythonLoader::new(PythonConfig {
        mode: InterpreterMode::Main,
        ..PythonConfig::default()
    });
    let rt = RuntimeBuilder::new()
        .loader(loader.clone())
        .build()
        .unwrap();
    rt.load_bundle(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    assert!(!interp_pool::owns_python());
    let info = loader
        .bundle_info(polyplug_utils::BundleId::new("hosted_bundle").id())
        .expect("loaded");
    assert_eq!(info.mode, "main");
    assert!(
        !info.fast_glue,
        "fast glue must not touch the host's Python"
    );
    // SAFETY: R1: thread: the one that saved `main_ts`; no tstate attached here; the
    // pool's main server attaches its own thread state only while it runs a job.
    unsafe { sys::PyEval_RestoreThread(main_ts) };
    // SAFETY: R1: main attached on this thread; runs the check in `__main__`.
    let rc = unsafe { sys::PyRun_SimpleString(HOST_CHECK.as_ptr()) };
    // SAFETY: R1: main attached on this thread; detach it again for the pool's shutdown.
    let main_ts = unsafe { sys::PyEval_SaveThread() };
    assert_eq!(rc, 0, "the host's ctypes was changed (traceback above)");
    drop(rt);
    interp_pool::shutdown().unwrap();
    // SAFETY: R1/R9: thread: the one that initialised; the pool has shut down, so the host
    // finalizes its own Python.
    unsafe { sys::PyEval_RestoreThread(main_ts) };
    // SAFETY: R9: as above, main attached on the initialising thread.
    assert_eq!(unsafe { sys::Py_FinalizeEx() }, 0);
}
