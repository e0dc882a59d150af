use interp_pool::{Attached, InterpreterHandle, Persistent, PyObj};
use static_assertions::{assert_impl_all, assert_not_impl_any};

use crate::util::*;

assert_impl_all!(InterpreterHandle: Send, Sync, Clone);
assert_not_impl_any!(Attached<'static>: Send, Sync);
assert_not_impl_any!(PyObj<'static>: Send, Sync);
// What may cross threads and jobs is the Persistent handle; `bind`'s PyObj may not
// (tests/ui/persistent_bind_escapes_job.rs).
assert_impl_all!(Persistent: Send, Sync);

#[test]
fn a_persistent_goes_to_another_thread_and_binds_in_a_later_job() {
    let h = spawn("basics-persistent");
    let kept = h
        .call(|py| Ok(Persistent::new(py, py.eval("[41]")?)))
        .unwrap();
    let other = h.clone();
    let v = std::thread::spawn(move || {
        // Moved into the job, so it is also released there.
        other.call(move |py| {
            let list = kept.bind(py)?;
            list.call_method(py, "append", &[&py.int(1)?])?;
            let last = list.get_index(py, 1)?.extract_i64(py)?;
            Ok(list.get_index(py, 0)?.extract_i64(py)? + last)
        })
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(v, 42);
    h.end();
}

#[test]
fn eval_run_and_conversions() {
    let h = spawn("basics");
    run(&h, "def add(a, b):\n    return a + b\n");
    assert_eq!(eval_i64(&h, "add(40, 2)"), 42);
    assert_eq!(eval_str(&h, "'py' * 3"), "pypypy");
    let (s, big) = h
        .call(|py| {
            let f = py.eval("add")?;
            let r = f.call(py, &[&py.str("a")?, &py.str("é")?])?;
            let big = py.uint(u64::MAX)?.extract_u64(py)?;
            Ok((r.extract_string(py)?, big))
        })
        .unwrap();
    assert_eq!(s, "aé");
    assert_eq!(big, u64::MAX);
    assert!(h.call(|py| Ok(py.none().is_none())).unwrap());
    h.end();
}

#[test]
fn runs_on_its_own_named_thread_with_stdlib() {
    let h = spawn("named");
    let name = h
        .call(|_| Ok(std::thread::current().name().map(str::to_owned)))
        .unwrap();
    assert_eq!(name.as_deref(), Some("py-named"));
    if own_gil_runs_ctypes() {
        run(
            &h,
            "import ctypes, json, decimal, sys\nv = sys.version_info[:2]",
        );
    } else {
        // 3.12: `_ctypes` refuses own-GIL interpreters, and `import decimal` crashes
        // CPython 3.12.1 once a second own-GIL interpreter imports it (a CPython bug).
        note(
            "basics::runs_on_its_own_named_thread_with_stdlib",
            "imports json only (no ctypes/decimal in own-GIL interpreters on 3.12)",
        );
        run(&h, "import json, sys\nv = sys.version_info[:2]");
    }
    let (major, minor) = interp_pool::python_version();
    assert_eq!(
        (eval_i64(&h, "v[0]"), eval_i64(&h, "v[1]")),
        (i64::from(major), i64::from(minor))
    );
    assert!(minor >= 12);
    // The stdlib came from the build-time installation without PYTHONHOME.
    assert!(eval_str(&h, "json.__file__").contains("python3."));
    h.end();
}

#[test]
fn own_gil_interpreter_refuses_threads_by_default() {
    let h = spawn("nothreads");
    let err = h
        .call(|py| py.run("import threading\nthreading.Thread(target=print).start()"))
        .unwrap_err();
    assert_eq!(err.python_exception().unwrap().type_name, "RuntimeError");
    h.end();
}

#[test]
fn rename_changes_the_name_and_the_os_thread_name() {
    let h = spawn("before");
    h.rename("after-rename").unwrap();
    assert_eq!(h.name(), "after-rename");
    let comm = h
        .call(|_| Ok(std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default()))
        .unwrap();
    assert_eq!(comm.trim_end(), "py-after-rename");
    h.end();
}
