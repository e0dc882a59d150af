//! The floor under a direct call (issue 22's latency target): what CPython's own attach and
//! detach cost, with nothing of interp-pool around them. One own-GIL subinterpreter and two
//! threads taking turns in 50 ms slices (so a slow phase of the machine hits both alike):
//! thread A attaches a thread state once per slice and calls in a loop (what an inline call
//! on an owner thread pays: no switch), thread B attaches its own persistent thread state
//! around every call (`PyEval_RestoreThread` / `PyEval_SaveThread`: what any direct call
//! pays at least, before the claim, the PyGILState restore and the bookkeeping). The call
//! is the one `examples/direct_latency.rs` makes: look `add` up in `__main__`, call it with
//! two ints. Prints ns per call for both and their ratio, per round of at least a second
//! each.
//!
//! `cargo run --release -p interp-pool --example attach_floor [-- ROUNDS]`
//!
//! Raw CPython on purpose (this measures what interp-pool's safe types add), in its own
//! process: CPython is initialised here, not by interp-pool.
#![allow(
    clippy::multiple_unsafe_ops_per_block,
    reason = "a measurement of raw CPython calls: each block is one step of the protocol"
)]

use std::ptr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use pyo3_ffi as sys;

const SLICE: Duration = Duration::from_millis(50);

/// The subinterpreter both threads call.
#[derive(Clone, Copy)]
struct Sub {
    interp: *mut sys::PyInterpreterState,
}

// SAFETY: R3 (ARCHITECTURE.md) in miniature: the two threads attach only in turn (a slice
// token passes between them over channels), so the interpreter is used by one at a time.
unsafe impl Send for Sub {}

/// Creates an own-GIL subinterpreter defining `add`; returns it detached.
fn make_sub() -> Sub {
    let cfg = sys::PyInterpreterConfig {
        use_main_obmalloc: 0,
        allow_fork: 0,
        allow_exec: 0,
        allow_threads: 1,
        allow_daemon_threads: 0,
        check_multi_interp_extensions: 1,
        gil: sys::PyInterpreterConfig_OWN_GIL,
    };
    let mut ts = ptr::null_mut();
    // SAFETY: R1/R8: main's thread state is attached on this (the only) thread; the new
    // interpreter's state is attached on return, `add` is defined in its `__main__`, then
    // it is detached.
    unsafe {
        let status = sys::Py_NewInterpreterFromConfig(&mut ts, &cfg);
        assert_eq!(
            sys::PyStatus_Exception(status),
            0,
            "Py_NewInterpreterFromConfig"
        );
        let g = sys::PyModule_GetDict(sys::PyImport_AddModule(c"__main__".as_ptr()));
        let code = c"def add(a, b):\n    return a + b\n";
        let r = sys::PyRun_String(code.as_ptr(), sys::Py_file_input, g, g);
        assert!(!r.is_null(), "define add");
        sys::Py_DECREF(r);
        let interp = sys::PyThreadState_GetInterpreter(ts);
        sys::PyEval_SaveThread();
        Sub { interp }
    }
}

/// The call: `__main__.add(1, 2)`, looked up each time.
///
/// # Safety
/// R10: a thread state of the subinterpreter is attached on this thread.
unsafe fn body() {
    // SAFETY: R10 per the contract; every new reference is released here.
    unsafe {
        let g = sys::PyModule_GetDict(sys::PyImport_AddModule(c"__main__".as_ptr()));
        let f = sys::PyDict_GetItemString(g, c"add".as_ptr());
        let args = [sys::PyLong_FromLongLong(1), sys::PyLong_FromLongLong(2)];
        let r = sys::PyObject_Vectorcall(f, args.as_ptr(), 2, ptr::null_mut());
        assert_eq!(sys::PyLong_AsLongLong(r), 3);
        sys::Py_DECREF(r);
        args.iter().for_each(|&a| sys::Py_DECREF(a));
    }
}

/// Calls `one` in batches of 1000 for a slice; (calls, elapsed).
fn slice(mut one: impl FnMut()) -> (u64, Duration) {
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < SLICE {
        for _ in 0..1000 {
            one();
        }
        calls += 1000;
    }
    (calls, start.elapsed())
}

/// A thread that runs a slice per `true` received and reports it.
fn turns(
    go: Receiver<bool>,
    done: Sender<(usize, u64, Duration)>,
    who: usize,
    mut run: impl FnMut() -> (u64, Duration),
) {
    while go.recv().unwrap_or(false) {
        let (calls, took) = run();
        done.send((who, calls, took)).expect("main thread");
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(5, |r| r.parse().expect("ROUNDS"));
    // SAFETY: R1: CPython is initialised once, by this process's only thread.
    unsafe { sys::Py_InitializeEx(0) };
    let sub = make_sub();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let (go_a, a_rx) = channel();
        let (go_b, b_rx) = channel();
        let (done, results) = channel();
        let done_a = done.clone();
        let a = thread::spawn(move || {
            let sub = sub;
            // SAFETY: R13 in miniature: A's own state for the interpreter, made on A.
            let ts = unsafe { sys::PyThreadState_New(sub.interp) };
            turns(a_rx, done_a, 0, || {
                // SAFETY: R3: B is idle while A runs its slice (turns); `ts` is A's, detached.
                unsafe { sys::PyEval_RestoreThread(ts) };
                // SAFETY: R10: `ts` is attached for the whole slice.
                let r = slice(|| unsafe { body() });
                // SAFETY: attached above on this thread.
                unsafe { sys::PyEval_SaveThread() };
                r
            });
            // SAFETY: R13: A's own state, deleted on A attached to it.
            unsafe {
                sys::PyEval_RestoreThread(ts);
                sys::PyThreadState_Clear(ts);
                sys::PyThreadState_DeleteCurrent();
            }
        });
        let b = thread::spawn(move || {
            let sub = sub;
            // SAFETY: R13 in miniature: B's own state for the interpreter, made on B; the
            // PyGILState binding it takes does not matter in this process.
            let ts = unsafe { sys::PyThreadState_New(sub.interp) };
            turns(b_rx, done, 1, || {
                slice(|| {
                    // SAFETY: R3: A is idle while B runs its slice; `ts` is B's, detached.
                    unsafe {
                        sys::PyEval_RestoreThread(ts);
                        body();
                        sys::PyEval_SaveThread();
                    }
                })
            });
            // SAFETY: R13: B's own state, deleted on B attached to it.
            unsafe {
                sys::PyEval_RestoreThread(ts);
                sys::PyThreadState_Clear(ts);
                sys::PyThreadState_DeleteCurrent();
            }
        });
        let mut sums = [(0u64, Duration::ZERO); 2];
        while sums.iter().any(|s| s.1 < Duration::from_secs(1)) {
            for go in [&go_a, &go_b] {
                go.send(true).expect("slice thread");
                let (who, calls, took) = results.recv().expect("slice thread");
                sums[who].0 += calls;
                sums[who].1 += took;
            }
        }
        for go in [go_a, go_b] {
            let _ = go.send(false);
        }
        a.join().expect("thread A");
        b.join().expect("thread B");
        let per = |(calls, took): (u64, Duration)| took.as_nanos() as f64 / calls as f64;
        let (attached, per_call) = (per(sums[0]), per(sums[1]));
        ratios.push(per_call / attached);
        println!(
            "round {round}: attached {attached:.1} ns/call, attach per call {per_call:.1} ns/call ({:.2}x)",
            per_call / attached
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio: {:.2}x", ratios[ratios.len() / 2]);
}
