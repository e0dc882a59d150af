//! A host that initialised CPython itself keeps ownership: the pool uses it, and
//! `shutdown` ends the pool's interpreters but does not finalize Python.

use interp_pool::{sys, InterpreterConfig, InterpreterHandle};

#[test]
fn pool_adopts_a_host_initialised_python_and_never_finalizes_it() {
    // SAFETY: thread: the test thread, before any pool use in this process (own binary).
    // tstate: after init main's tstate is attached here; we detach it at once, as the pool
    // requires of a host (ARCHITECTURE.md R1).
    let main_ts = unsafe {
        sys::Py_InitializeEx(0);
        sys::PyEval_SaveThread()
    };
    let h = InterpreterHandle::spawn(InterpreterConfig::named("hosted")).unwrap();
    assert_eq!(
        h.call(|py| py.eval("2 ** 10")?.extract_i64(py)).unwrap(),
        1024
    );
    interp_pool::shutdown().unwrap();
    assert!(h.is_ended());
    // SAFETY: Py_IsInitialized may be called at any time.
    let still_initialised = unsafe { sys::Py_IsInitialized() } == 1;
    assert!(still_initialised, "the host's Python was finalized");
    // SAFETY: thread: the one that initialised and saved `main_ts`; no tstate attached.
    // The host finalizes its own Python.
    unsafe {
        sys::PyEval_RestoreThread(main_ts);
        assert_eq!(sys::Py_FinalizeEx(), 0);
    }
}
