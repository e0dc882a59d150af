//! A host that initialised CPython itself keeps ownership: the pool uses it, and
//! `shutdown` ends the pool's interpreters but does not finalize Python.

use interp_pool::{InterpreterConfig, InterpreterHandle};
// The host's own CPython bindings: interp-pool does not re-export its raw ones.
use pyo3_ffi as sys;

#[test]
fn pool_adopts_a_host_initialised_python_and_never_finalizes_it() {
    // SAFETY: R1: thread: the test thread, before any pool use in this process (own
    // binary); no thread state yet.
    unsafe { sys::Py_InitializeEx(0) };
    // SAFETY: R1: after init main's tstate is attached here; we detach it at once, as the
    // pool requires of a host.
    let main_ts = unsafe { sys::PyEval_SaveThread() };
    let h = InterpreterHandle::spawn(InterpreterConfig::named("hosted")).unwrap();
    assert_eq!(
        h.call(|py| py.eval("2 ** 10")?.extract_i64(py)).unwrap(),
        1024
    );
    // No allocator could be installed before the host's initialisation: nothing counted,
    // nothing limited, no crash.
    assert!(!interp_pool::memory_accounting());
    // The host owns this Python: embedders (the loader) leave its main interpreter's
    // `time.sleep` alone.
    assert!(!interp_pool::owns_python());
    h.memory_account().set_limit(Some(1 << 20));
    h.call(|py| py.run("big = bytearray(8 << 20)")).unwrap();
    assert_eq!(h.memory_account().usage().live, 0);
    // The loader installs its ctypes fast paths in `main` only when the pool owns Python.
    assert!(!interp_pool::owns_python());
    interp_pool::shutdown().unwrap();
    assert!(h.is_ended());
    // SAFETY: R1: Py_IsInitialized may be called at any time, on any thread.
    let still_initialised = unsafe { sys::Py_IsInitialized() } == 1;
    assert!(still_initialised, "the host's Python was finalized");
    // SAFETY: R1/R9: thread: the one that initialised and saved `main_ts`; no tstate
    // attached.
    unsafe { sys::PyEval_RestoreThread(main_ts) };
    // SAFETY: R9: main attached on the initialising thread; the pool has shut down, so
    // the host finalizes its own Python.
    assert_eq!(unsafe { sys::Py_FinalizeEx() }, 0);
}
