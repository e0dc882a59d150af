//! Direct dispatch (`InterpreterConfig::direct`): a caller's thread runs the call itself on
//! a free interpreter, with a thread state of its own kept for it (R13).

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use interp_pool::{CallOptions, Error, InterpreterConfig, InterpreterHandle};
use pyo3_ffi as sys;

use crate::reentry::{a_b_a_and_depth_cap, ping_a_b_a, Where};
use crate::util::*;

fn direct_config(name: &str) -> InterpreterConfig {
    InterpreterConfig {
        direct: true,
        ..InterpreterConfig::named(name)
    }
}

fn direct(name: &str) -> InterpreterHandle {
    spawn_with(direct_config(name))
}

/// CPython's ident of the calling thread, as `threading.get_ident()` reports it.
fn my_ident() -> i64 {
    // SAFETY: pthread_self needs nothing.
    (unsafe { libc::pthread_self() }) as i64
}

fn ident_in(h: &InterpreterHandle) -> i64 {
    eval_i64(h, "__import__('threading').get_ident()")
}

#[test]
fn a_direct_call_runs_on_the_calling_thread_and_is_counted() {
    within(LIMIT, "direct on caller", || {
        let h = direct("direct-caller");
        let owner = thread::scope(|_| {
            // The interpreter was made on its owner thread; a call from here runs here.
            ident_in(&h)
        });
        assert_eq!(owner, my_ident());
        assert!(h.direct_calls() >= 1);
        assert_eq!(h.host_states(), 1);
        // A second thread gets a state of its own.
        let other = thread::spawn({
            let h = h.clone();
            move || (ident_in(&h), my_ident())
        })
        .join()
        .unwrap();
        assert_eq!(other.0, other.1);
        // That thread exited: its state was given up, and the next call here (direct: the
        // interpreter is idle) deletes it.
        assert_eq!(h.host_states(), 2);
        assert_eq!(ident_in(&h), my_ident());
        assert_eq!(h.host_states(), 1);
        h.end();
    });
}

#[test]
fn a_posted_interpreter_never_runs_on_the_caller() {
    let h = spawn("posted-only");
    assert_ne!(ident_in(&h), my_ident());
    assert_eq!(h.direct_calls(), 0);
    h.end();
}

#[test]
fn a_b_a_runs_inline_on_the_caller_thread() {
    within(LIMIT, "direct a-b-a", || {
        // Every level, both interpreters', runs on this thread.
        let on_caller: Where = |py, _, n| {
            let ident = py
                .eval("__import__('threading').get_ident()")?
                .extract_i64(py)?;
            assert_eq!(ident, my_ident(), "level {n} ran off the caller");
            Ok(())
        };
        a_b_a_and_depth_cap([direct("direct-aba-a"), direct("direct-aba-b")], on_caller);
    });
}

#[test]
fn a_b_a_through_ctypes_from_a_host_thread() {
    const TEST: &str = "direct::a_b_a_through_ctypes_from_a_host_thread";
    within(LIMIT, "direct a-b-a ctypes", || {
        let a = spawn_with(InterpreterConfig {
            direct: true,
            ..ctypes_config(TEST, "dct-a")
        });
        let b = spawn_with(InterpreterConfig {
            direct: true,
            ..ctypes_config(TEST, "dct-b")
        });
        ping_a_b_a(&a, &b);
        // Every level ran on this thread.
        assert_eq!(eval_i64(&a, "len(threads)"), 1);
        assert_eq!(ident_in(&a), eval_i64(&a, "next(iter(threads))"));
        a.end();
        b.end();
    });
}

#[test]
fn many_threads_each_get_their_own_answers() {
    within(LIMIT, "direct many threads", || {
        let hs = [direct("direct-many-a"), direct("direct-many-b")];
        for h in &hs {
            run(h, "def f(a, b):\n    return a * 1000 + b\n");
        }
        let start = Arc::new(Barrier::new(8));
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let h = hs[t % 2].clone();
                let start = Arc::clone(&start);
                thread::spawn(move || {
                    start.wait();
                    for i in 0..2000i64 {
                        let got = h
                            .call(move |py| py.eval(&format!("f({t}, {i})"))?.extract_i64(py))
                            .unwrap();
                        assert_eq!(got, t as i64 * 1000 + i);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        for h in &hs {
            // Every call ran once, direct or posted.
            assert!(h.jobs_served() >= 8000);
        }
        hs[0].end();
        hs[1].end();
    });
}

#[test]
fn the_threads_gilstate_binding_is_left_as_it_was() {
    within(LIMIT, "direct gilstate", || {
        let hs = [direct("direct-gil-a"), direct("direct-gil-b")];
        thread::spawn(move || {
            // SAFETY: reads a thread-specific slot; Python is initialised.
            let before = unsafe { sys::PyGILState_GetThisThreadState() };
            assert!(before.is_null());
            for h in &hs {
                assert_eq!(ident_in(h), my_ident());
            }
            // SAFETY: as above.
            assert!(unsafe { sys::PyGILState_GetThisThreadState() }.is_null());
            // PyGILState_Ensure gets the main interpreter, as on any fresh thread.
            // SAFETY: Python is initialised and main is detached (R1); balanced below.
            let g = unsafe { sys::PyGILState_Ensure() };
            // SAFETY: attached by Ensure.
            let interp = unsafe { sys::PyInterpreterState_Get() };
            // SAFETY: needs nothing.
            let main = unsafe { sys::PyInterpreterState_Main() };
            // SAFETY: balances Ensure above.
            unsafe { sys::PyGILState_Release(g) };
            assert_eq!(interp, main);
            // Direct calls still work after, and leave the binding alone again.
            assert_eq!(eval_i64(&hs[0], "1 + 1"), 2);
            // SAFETY: as above.
            assert!(unsafe { sys::PyGILState_GetThisThreadState() }.is_null());
            for h in &hs {
                h.end();
            }
        })
        .join()
        .unwrap();
    });
}

#[test]
fn a_deadline_interrupts_a_direct_call_and_the_interpreter_serves_again() {
    within(LIMIT, "direct deadline", || {
        let h = direct("direct-deadline");
        let opts = CallOptions {
            timeout: Some(Duration::from_millis(200)),
            ..CallOptions::default()
        };
        let r = h.call_with(&opts, |py| py.run("while True: pass"));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(h.direct_calls() >= 1);
        assert_eq!(eval_i64(&h, "6 * 7"), 42);
        h.end();
    });
}

#[test]
fn ending_after_threads_exited_and_with_calls_in_flight_aborts_nothing() {
    within(LIMIT, "direct end", || {
        for round in 0..5 {
            let h = direct(&format!("direct-end-{round}"));
            run(&h, "def f(x):\n    return x + 1\n");
            let go = Arc::new(Barrier::new(5));
            let callers: Vec<_> = (0..4)
                .map(|_| {
                    let (h, go) = (h.clone(), Arc::clone(&go));
                    thread::spawn(move || {
                        go.wait();
                        let mut ok = 0;
                        loop {
                            match h.call(|py| py.eval("f(1)")?.extract_i64(py)) {
                                Ok(2) => ok += 1,
                                Err(Error::InterpreterGone { .. }) => return ok,
                                other => panic!("unexpected {other:?}"),
                            }
                        }
                    })
                })
                .collect();
            go.wait();
            // Some calls ran (the callers are past the barrier); then end under them.
            wait_until(|| h.jobs_served() > 20);
            h.end();
            for c in callers {
                c.join().unwrap();
            }
        }
    });
}

/// Recursion that consumes C stack per level (C slots, C containers), with Python's own
/// limit raised out of the way: on a small host thread it must end in RecursionError.
const DEEP_C: &str = r#"
import sys, json
sys.setrecursionlimit(1_000_000)
def nested(n):
    x = []
    for _ in range(n):
        x = [x]
    return x
class R:
    def __repr__(self):
        return repr(self)
class G:
    def __getattr__(self, name):
        return getattr(self, name)
def check():
    out = []
    for f in (lambda: json.dumps(nested(200_000)), lambda: repr(R()), lambda: G().x, lambda: repr(nested(200_000))):
        try:
            f()
            out.append("ok")
        except RecursionError:
            out.append("RecursionError")
        except MemoryError:
            out.append("MemoryError")
    return ",".join(out)
"#;

#[test]
fn deep_c_recursion_on_a_small_host_thread_is_an_error_not_a_crash() {
    within(LIMIT, "direct deep recursion", || {
        let h = direct("direct-deep");
        run(&h, DEEP_C);
        for stack in [1usize << 20, 2 << 20, 4 << 20] {
            let h2 = h.clone();
            let (out, ran_here) = thread::Builder::new()
                .stack_size(stack)
                .spawn(move || {
                    let before = h2.direct_calls();
                    let out = eval_str(&h2, "check()");
                    (out, h2.direct_calls() > before)
                })
                .unwrap()
                .join()
                .unwrap();
            eprintln!("stack {stack}: {out} (direct: {ran_here})");
            assert!(
                out.split(',')
                    .all(|r| r == "RecursionError" || r == "MemoryError"),
                "{out}"
            );
        }
        h.end();
    });
}

fn direct_lane(name: &str, limit: usize) -> interp_pool::MainLane {
    interp_pool::MainLane::new(&direct_config(name), limit).expect("lane")
}

#[test]
fn a_direct_main_lane_call_runs_on_the_caller_within_the_limit() {
    within(LIMIT, "direct main lane", || {
        let lane = direct_lane("direct-main", 1);
        let ident = |lane: &interp_pool::MainLane| {
            lane.call(|py| {
                py.eval("__import__('threading').get_ident()")?
                    .extract_i64(py)
            })
            .unwrap()
        };
        assert_eq!(ident(&lane), my_ident());
        assert!(lane.direct_calls() >= 1);
        // Re-entering the lane from its own direct call runs inline: not counted again,
        // so a limit of 1 does not make it wait for itself.
        let inner = lane
            .call(|_| {
                assert_eq!(lane.running(), 1);
                Ok(ident(&lane))
            })
            .unwrap();
        assert_eq!(inner, my_ident());
        assert_eq!(lane.running(), 0);
        // From another thread (its own main thread state), and a deadline there.
        let lane2 = lane.clone();
        thread::spawn(move || {
            assert_eq!(ident(&lane2), my_ident());
            let opts = CallOptions {
                timeout: Some(Duration::from_millis(200)),
                ..CallOptions::default()
            };
            let r = lane2.call_with(&opts, |py| py.run("while True: pass"));
            assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        })
        .join()
        .unwrap();
        assert_eq!(ident(&lane), my_ident());
        lane.end();
    });
}

#[test]
fn a_direct_main_call_waiting_on_a_posted_one_serves_its_lane() {
    // A direct call of lane L (limit 1) calls an own-GIL interpreter X, whose job calls L
    // back: L is at its limit, held by this (waiting) thread, so only it may run that call.
    within(LIMIT, "direct main chain", || {
        let lane = direct_lane("direct-main-chain", 1);
        let x = spawn("direct-main-chain-x");
        let got = lane
            .call(|_| {
                let lane = lane.clone();
                x.call(move |_| lane.call(|py| py.eval("40 + 2")?.extract_i64(py)))
            })
            .unwrap();
        assert_eq!(got, 42);
        x.end();
        lane.end();
    });
}

#[test]
fn a_b_a_with_b_a_direct_group_from_many_threads() {
    // Callers' threads hold A's claim and B's members' claims and wait on each other: a
    // group job whose every member is held by a waiting caller must wake that caller.
    // (The loader's `direct::a_b_a_with_b_replicated_and_direct_from_eight_threads` hung
    // on that every run before group posts woke waiting holders; this one did not.)
    within(LIMIT, "direct a-b-a group", || {
        let a = direct("direct-grp-a");
        let group = interp_pool::InterpreterGroup::new(&direct_config("direct-grp-b"));
        for i in 0..2 {
            group.add(direct(&format!("direct-grp-b{i}"))).unwrap();
        }
        let go = Arc::new(Barrier::new(6));
        let workers: Vec<_> = (0..6)
            .map(|t| {
                let (a, group, go) = (a.clone(), group.clone(), Arc::clone(&go));
                thread::spawn(move || {
                    go.wait();
                    for i in 0..300i64 {
                        let a2 = a.clone();
                        let group2 = group.clone();
                        let got = a
                            .call(move |_| {
                                group2.call(move |_| {
                                    a2.call(move |py| {
                                        py.eval(&format!("{i} + {t}"))?.extract_i64(py)
                                    })
                                })
                            })
                            .unwrap();
                        assert_eq!(got, i + t as i64);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        group.end();
        a.end();
    });
}

#[test]
fn a_state_in_use_is_never_evicted_by_the_states_a_call_makes() {
    // A direct call into A calls more other direct interpreters than a thread keeps states
    // for: the cache evicts the least recently used ones, but never A's, which the running
    // call stands on (A's next holder would delete it under the call).
    within(LIMIT, "direct eviction", || {
        let a = direct("direct-evict-a");
        let others: Vec<_> = (0..36)
            .map(|i| direct(&format!("direct-evict-{i}")))
            .collect();
        thread::spawn(move || {
            let got = a
                .call(|py| {
                    for o in &others {
                        assert_eq!(ident_in(o), my_ident());
                    }
                    py.eval("6 * 7")?.extract_i64(py)
                })
                .unwrap();
            assert_eq!(got, 42);
            // A's state survived: this thread's next call runs on it.
            assert_eq!(eval_i64(&a, "7 * 6"), 42);
            assert_eq!(a.host_states(), 1);
            for o in others {
                o.end();
            }
            a.end();
        })
        .join()
        .unwrap();
    });
}
