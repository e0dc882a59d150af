//! Direct dispatch (`Dispatch::Direct`, issue 22): a host thread that finds a bundle's
//! interpreter free runs the call itself. Everything a posted call guarantees must hold
//! for a direct one (answers, nesting, deadlines, memory limits, unload and reload), and
//! what differs is the documented part: the bundle's Python runs on the host's threads.
//!
//! Most of these pass under `Post` as well (the same behaviour is the point); the ones
//! that observe the calling thread (`*_runs_on_the_calling_thread_*`,
//! `threading_local_is_per_host_thread`) hold only with the direct engine. Threads whose
//! identity a test observes get an 8 MiB stack, so no stack rule could make them post.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use polyplug::runtime::Runtime;
use polyplug_abi::{AbiError, AbiErrorCode, GuestContractInterface};
use polyplug_subinterp::{
    with_call_options, CallOptions, Dispatch, PythonConfig, PythonLoader, Replicas, TIMEOUT_MESSAGE,
};
use polyplug_utils::BundleId;

use crate::core_api::host::host_callers::{CalculatorContract, CounterContract, PipelineContract};
use crate::support::*;

/// A loader whose bundles all dispatch directly, with `config`'s other settings.
fn direct(config: PythonConfig) -> PythonLoader {
    PythonLoader::new(PythonConfig {
        dispatch: Dispatch::Direct,
        ..config
    })
}

/// A loader with `Direct` for the named bundles only, `Post` (the default) for the rest.
fn direct_for(bundles: &[&str], config: PythonConfig) -> PythonLoader {
    PythonLoader::new(PythonConfig {
        bundle_dispatch: bundles
            .iter()
            .map(|b| (b.to_string(), Dispatch::Direct))
            .collect(),
        ..config
    })
}

/// A host thread with a stack no stack rule would refuse (Rust's default is 2 MiB).
fn big_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn message(e: &AbiError) -> &[u8] {
    // SAFETY: loader messages are static byte strings.
    unsafe { std::slice::from_raw_parts(e.message.ptr, e.message.len) }
}

fn view(s: &str) -> polyplug_abi::StringView {
    polyplug_abi::StringView {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

/// `threads` host threads, each with its own calculator, counter instance and pipeline,
/// every answer checked: calls into the bundles and nested pipeline -> calculator calls.
fn fixtures_from_threads(rt: &Arc<Runtime>, threads: i64) {
    let host = host(rt) as usize;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let host = host as *const polyplug_abi::HostApi;
                let mut calc = CalculatorContract::new(find(rt, "calculator"), host).unwrap();
                let mut counter = CounterContract::new(find(rt, "counter"), host).unwrap();
                let mut pipe = PipelineContract::new(find(rt, "pipeline"), host).unwrap();
                for i in 0..(stress(150) as i64) {
                    assert_eq!(calc.add(i, t).unwrap(), i + t);
                    assert_eq!(calc.mul(i, 3).unwrap(), i * 3);
                    assert_eq!(counter.increment(1).unwrap(), i + 1, "thread {t}");
                    assert_eq!(pipe.run(i, t).unwrap(), (i + t) * 2, "nested py->py");
                }
                assert_eq!(text(calc.greet(view("direct")).unwrap()), "Hello, direct!");
                assert_eq!(
                    text(pipe.describe(view("peer")).unwrap()),
                    "pipeline: Hello, peer!"
                );
                assert_eq!(counter.get().unwrap(), stress(150) as i64);
            });
        }
    });
}

#[test]
fn direct_fixtures_answer_from_eight_threads() {
    within("direct fixtures", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
        fixtures_from_threads(&rt, 8);
        for b in ["py_calculator", "py_counter", "py_pipeline"] {
            let m = loader.metrics(BundleId::new(b).id()).unwrap();
            assert_eq!((m.errors, m.in_flight), (0, 0), "{b}: {m:?}");
        }
    });
}

/// Post and Direct bundles calling each other, both ways round: a direct pipeline nesting
/// into a posted calculator, and a posted pipeline nesting into a direct calculator.
#[test]
fn post_and_direct_bundles_nest_into_each_other_from_eight_threads() {
    within("post/direct mix", || {
        for direct_one in ["py_pipeline", "py_calculator"] {
            let loader = direct_for(&[direct_one, "py_counter"], PythonConfig::default());
            let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
            fixtures_from_threads(&rt, 8);
            let calc = loader.metrics(BundleId::new("py_calculator").id()).unwrap();
            assert_eq!(calc.errors, 0, "{direct_one} direct: {calc:?}");
            assert_eq!(calc.max_depth, 2, "called from pipeline: depth 2");
        }
    });
}

/// A -> B -> A ... from eight threads, B replicated: both direct, then one of each.
#[test]
fn a_b_a_with_b_replicated_and_direct_from_eight_threads() {
    within("direct ping-pong", || {
        for direct_ones in [&["pp_pa", "pp_pb"][..], &["pp_pb"], &["pp_pa"]] {
            let loader = direct_for(
                direct_ones,
                PythonConfig {
                    replicas: [("pp_pb".to_owned(), Replicas::Fixed(2))].into(),
                    ..PythonConfig::default()
                },
            );
            let (rt, _) = runtime_with(loader.clone(), &[]);
            crate::reentry::ping_pong(&loader, &rt);
            std::thread::scope(|s| {
                for t in 0..8i64 {
                    let rt = &rt;
                    s.spawn(move || {
                        for i in 0..(stress(60) as i64) {
                            let n = (i * 7 + t) % 12;
                            let root = if (i + t) % 2 == 0 { "pa" } else { "pb" };
                            assert_eq!(call_i64(rt, root, 0, n), Ok(n), "{direct_ones:?}");
                        }
                    });
                }
            });
            assert_eq!(call_i64(&rt, "pa", 0, 30), Ok(30), "{direct_ones:?}");
        }
    });
}

/// fn 0 `nap`: calls the Rust fn whose address it gets (the test learns the call runs),
/// then sleeps 30 s; fn 1 `swallow`: a loop swallowing every interrupt; fn 2 `echo`; fn 3
/// `swallowed`; fn 4 `hold`: calls the Rust fn whose address it gets until it answers
/// non-zero, then echoes 7.
const STUBBORN: &str = r#"
import time
def nap(impl, args, out, arena, alloc):
    ctypes.CFUNCTYPE(None)(i64_at(args))()
    time.sleep(30)
SWALLOWED = [0]
def swallow(impl, args, out, arena, alloc):
    while True:
        try:
            while True:
                pass
        except BaseException:
            SWALLOWED[0] += 1
def echo(impl, args, out, arena, alloc):
    put_i64(out, i64_at(args))
def swallowed(impl, args, out, arena, alloc):
    put_i64(out, SWALLOWED[0])
def hold(impl, args, out, arena, alloc):
    released = ctypes.CFUNCTYPE(ctypes.c_int)(i64_at(args))
    while not released():
        pass
    put_i64(out, 7)
"#;

static NAPPING: AtomicBool = AtomicBool::new(false);
static RELEASED: AtomicBool = AtomicBool::new(false);

extern "C" fn napping() {
    NAPPING.store(true, Ordering::SeqCst);
}

extern "C" fn released() -> i32 {
    i32::from(RELEASED.load(Ordering::SeqCst))
}

/// A 1 s deadline on a direct call interrupts that call and no other: `time.sleep(30)`
/// returns in time while a neighbour's direct call on another bundle and thread, running
/// all along, completes; a loop swallowing interrupts is stopped after two; both bundles
/// answer after (the shapes and bounds of `hardening::deadlines_hold`).
#[test]
fn a_deadline_on_a_direct_call_interrupts_that_call_and_no_other() {
    within("direct deadlines", || {
        let loader = direct(PythonConfig {
            call_timeout: Some(Duration::from_secs(1)),
            bundle_timeouts: [("dl_neighbour".to_owned(), None)].into(),
            ..PythonConfig::default()
        });
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let fns = "nap, swallow, echo, swallowed, hold";
        for name in ["dl_napper", "dl_neighbour"] {
            let src = plugin_source(&format!("{name}@1"), STUBBORN, fns);
            load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).unwrap();
        }
        let rt = &rt;
        std::thread::scope(|s| {
            // The neighbour's call runs until the napper's call has timed out.
            let neighbour = s.spawn(|| {
                call_abi(
                    rt,
                    "dl_neighbour",
                    4,
                    released as extern "C" fn() -> i32 as usize as i64,
                )
            });
            let t0 = std::time::Instant::now();
            let e = s
                .spawn(|| {
                    with_call_options(
                        CallOptions {
                            timeout: Some(Duration::from_secs(1)),
                            grace: Some(Duration::from_secs(60)),
                            ..CallOptions::default()
                        },
                        || {
                            call_abi(
                                rt,
                                "dl_napper",
                                0,
                                napping as extern "C" fn() as usize as i64,
                            )
                        },
                    )
                })
                .join()
                .unwrap()
                .unwrap_err();
            let took = t0.elapsed();
            assert!(NAPPING.load(Ordering::SeqCst), "the nap ran");
            assert_eq!(message(&e), TIMEOUT_MESSAGE);
            assert!(took < Duration::from_secs(30), "not woken: {took:?}");
            assert!(
                !neighbour.is_finished(),
                "the neighbour waits for its release"
            );
            RELEASED.store(true, Ordering::SeqCst);
            assert_eq!(
                neighbour.join().unwrap().ok(),
                Some(7),
                "neighbour completes"
            );
        });
        let r = rt_ptr(rt);
        let e = std::thread::spawn(move || call_abi(r, "dl_napper", 1, 0))
            .join()
            .unwrap()
            .unwrap_err();
        assert_eq!(message(&e), TIMEOUT_MESSAGE);
        let swallowed = call_i64(rt, "dl_napper", 3, 0);
        assert!(
            matches!(swallowed, Ok(2..=3)),
            "swallowed {swallowed:?}: interrupted twice, then stopped by the last step"
        );
        assert_eq!(call_abi(rt, "dl_napper", 2, 41).ok(), Some(41));
        assert_eq!(call_abi(rt, "dl_neighbour", 2, 7).ok(), Some(7));
        let m = loader.metrics(BundleId::new("dl_napper").id()).unwrap();
        assert_eq!(m.timeouts, 2, "{m:?}");
        let m = loader.metrics(BundleId::new("dl_neighbour").id()).unwrap();
        assert_eq!((m.timeouts, m.errors), (0, 0), "{m:?}");
    });
}

/// `&Runtime` for a `'static` thread: the runtime outlives it (joined before the test ends).
fn rt_ptr(rt: &Arc<Runtime>) -> &'static Runtime {
    // SAFETY: no Python involved: every thread given this reference is joined while the
    // test still holds `rt`.
    unsafe { &*Arc::as_ptr(rt) }
}

const HOARDER: &str = r#"
hog = []
def bomb(impl, args, out, arena, alloc):
    while True:
        hog.append(bytearray(1 << 20))
def drop(impl, args, out, arena, alloc):
    hog.clear()
def echo(impl, args, out, arena, alloc):
    put_i64(out, i64_at(args))
"#;

/// A memory bomb in a direct call gets `MemoryError` under the bundle's limit (counted
/// against the bundle, whichever thread allocated) and the bundle answers again.
#[test]
fn a_memory_bomb_in_a_direct_call_gets_memory_error_and_the_bundle_answers() {
    within("direct memory bomb", || {
        let name = "direct_bomb";
        let loader = direct(PythonConfig {
            bundle_memory_limits: [(name.to_owned(), 128 << 20)].into(),
            ..PythonConfig::default()
        });
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        let src = plugin_source(&format!("{name}@1"), HOARDER, "bomb, drop, echo");
        load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).unwrap();
        let r = rt_ptr(&rt);
        let e = big_thread(move || call_abi(r, name, 0, 0)).unwrap_err();
        assert_eq!(e.code, AbiErrorCode::Generic as u32);
        assert!(
            logs.lock()
                .unwrap()
                .iter()
                .any(|(_, _, m)| m.contains("MemoryError")),
            "the MemoryError traceback is logged"
        );
        let m = loader.metrics(BundleId::new(name).id()).unwrap();
        assert!(m.memory_denied >= 1, "{m:?}");
        assert!(
            m.memory_bytes > 100 << 20 && m.memory_bytes <= (128 + 8) << 20,
            "{m:?}"
        );
        assert_eq!(big_thread(move || call_i64(r, name, 2, 7)), Ok(7));
        big_thread(move || call_i64(r, name, 1, 0)).unwrap();
        let m = loader.metrics(BundleId::new(name).id()).unwrap();
        assert!(m.memory_bytes < 32 << 20, "freed: {m:?}");
    });
}

/// Unload with direct calls in flight from eight threads: every call answers right or
/// says StaleHandle, nothing hangs; the bundle loads again and answers.
#[test]
fn unload_with_direct_calls_in_flight_from_eight_threads() {
    within("direct unload in flight", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let src = plugin_source(
            "dunload@1",
            "def f(impl, args, out, arena, alloc):\n    put_i64(out, i64_at(args) + 1)\n",
            "f",
        );
        let (_, dir) = write_bundle("direct_unload", &src, &[]);
        rt.load_bundle(&dir).unwrap();
        let (answers, stale) = unload_during_calls(&rt, "dunload", "direct_unload", 8, 50);
        assert_eq!(answers + stale, 1600);
        rt.load_bundle(&dir).unwrap();
        assert_eq!(call_i64(&rt, "dunload", 0, 41), Ok(42));
    });
}

#[test]
fn direct_calls_from_four_threads_during_reloads_see_old_or_new_code_only() {
    crate::reload::calls_during_reloads(direct(PythonConfig::default()), "dbusy");
}

/// The bundle's interpreter ends (nothing aborts, no "not the last thread") while the host
/// threads that made direct calls into it exit, or have exited, or stay alive and call
/// again after (StaleHandle).
#[test]
fn unload_racing_host_thread_exit_ends_the_interpreter() {
    within("unload vs thread exit", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        // The probe answers whether an interpreter id still exists.
        let probe = crate::reload::versioned("dprobe@1", 1);
        load_dir(&loader, &rt, &write_bundle("dprobe", &probe, &[]).1).unwrap();
        let src = plugin_source(
            "dexit@1",
            "def f(impl, args, out, arena, alloc):\n    put_i64(out, i64_at(args) + 1)\n",
            "f",
        );
        let (_, dir) = write_bundle("direct_exit", &src, &[]);
        for round in 0..3 {
            rt.load_bundle(&dir).unwrap();
            let interp = loader
                .bundle_info(BundleId::new("direct_exit").id())
                .unwrap()
                .python_interp_id;
            let iface = resolve(&rt, "dexit", 1) as usize;
            // Four threads call then exit right away; four call, then wait across the
            // unload and call once more.
            let called = Arc::new(Barrier::new(9));
            let (again_tx, again_rx) = mpsc::channel::<()>();
            let again_rx = Arc::new(std::sync::Mutex::new(again_rx));
            let mut stayers = Vec::new();
            let mut leavers = Vec::new();
            for t in 0..8i64 {
                let (called, again_rx) = (Arc::clone(&called), Arc::clone(&again_rx));
                let h = std::thread::spawn(move || {
                    let iface = iface as *const GuestContractInterface;
                    for i in 0..20 {
                        let arg = t * 100 + i;
                        assert_eq!(
                            call_on(iface, null_instance(iface), 0, arg).ok(),
                            Some(arg + 1)
                        );
                    }
                    called.wait();
                    if t % 2 == 1 {
                        again_rx.lock().unwrap().recv().unwrap();
                        let e = call_on(iface, null_instance(iface), 0, 1).unwrap_err();
                        assert_eq!(e.code, AbiErrorCode::StaleHandle as u32);
                    }
                });
                if t % 2 == 1 {
                    stayers.push(h);
                } else {
                    leavers.push(h);
                }
            }
            called.wait();
            if round == 1 {
                // The leavers have exited before the unload.
                for h in leavers.drain(..) {
                    h.join().unwrap();
                }
            }
            // Otherwise the leavers exit while the unload runs.
            rt.unload_bundle(BundleId::new("direct_exit")).unwrap();
            assert_eq!(
                call_i64(&rt, "dprobe", 1, interp),
                Ok(0),
                "round {round}: the interpreter ended"
            );
            for _ in &stayers {
                again_tx.send(()).unwrap();
            }
            for h in leavers.into_iter().chain(stayers) {
                h.join().unwrap();
            }
        }
        rt.load_bundle(&dir).unwrap();
        assert_eq!(call_i64(&rt, "dexit", 0, 41), Ok(42));
    });
}

/// fn 0 `ident`: `threading.get_ident()`; fn 1 `owner`: the ident of the thread that
/// imported the module (the interpreter's owner); fn 2 `set_local(v)`; fn 3 `get_local`
/// (-1 when unset on this thread); fn 4 `interp`: this interpreter's id; fn 5 `callback(x)`:
/// a ctypes CFUNCTYPE callback (entered through `PyGILState_Ensure`) run from this call,
/// answering 2x if it ran in this interpreter on this thread; fn 6 `sqlite(x)`: the same
/// through a `sqlite3` `create_function` callback.
const WHO: &str = r#"
import threading
try:
    import _interpreters
except ImportError:  # 3.12
    import _xxsubinterpreters as _interpreters

def interp_id():
    c = _interpreters.get_current()
    return c[0] if isinstance(c, tuple) else int(c)

OWNER = threading.get_ident()
L = threading.local()

def ident(impl, args, out, arena, alloc):
    put_i64(out, threading.get_ident())
def owner(impl, args, out, arena, alloc):
    put_i64(out, OWNER)
def set_local(impl, args, out, arena, alloc):
    L.v = i64_at(args)
def get_local(impl, args, out, arena, alloc):
    put_i64(out, getattr(L, "v", -1))
def interp(impl, args, out, arena, alloc):
    put_i64(out, interp_id())

def _where():
    return (interp_id(), threading.get_ident())

def callback(impl, args, out, arena, alloc):
    here = _where()
    seen = []
    def cb(x):
        seen.append(_where())
        return x * 2
    proto = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)
    c_cb = proto(cb)
    through_c = proto(ctypes.cast(c_cb, ctypes.c_void_p).value)
    r = through_c(i64_at(args))
    assert seen == [here], (seen, here)
    put_i64(out, r)

def sqlite(impl, args, out, arena, alloc):
    import sqlite3
    here = _where()
    seen = []
    def f(x):
        seen.append(_where())
        return x * 2
    con = sqlite3.connect(":memory:")
    try:
        con.create_function("twice", 1, f)
        (r,) = con.execute("select twice(?)", (i64_at(args),)).fetchone()
    finally:
        con.close()
    assert seen == [here], (seen, here)
    put_i64(out, r)
"#;

const WHO_FNS: &str = "ident, owner, set_local, get_local, interp, callback, sqlite";

fn load_who(loader: &PythonLoader, rt: &Runtime, name: &str) {
    let src = plugin_source(&format!("{name}@1"), WHO, WHO_FNS);
    load_dir(loader, rt, &write_bundle(name, &src, &[]).1).unwrap();
}

// The calling thread's pthread id: what `threading.get_ident()` answers on it.
extern "C" {
    fn pthread_self() -> usize;
}

fn this_thread() -> i64 {
    // SAFETY: pthread_self has no preconditions and touches no Python.
    (unsafe { pthread_self() }) as i64
}

/// Engine only (fails under the stub, where every call runs on the owner): direct calls
/// from a spawned thread on an idle bundle run on that thread, and the bundle's metrics
/// count them (`calls`, the replica's `calls_served`, which counts direct calls too, and
/// its `direct_calls`).
#[test]
fn direct_calls_run_on_the_calling_thread_and_are_counted() {
    within("direct identity", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        load_who(&loader, &rt, "who_count");
        let r = rt_ptr(&rt);
        let owner = call_i64(&rt, "who_count", 1, 0).unwrap();
        let before = loader.metrics(BundleId::new("who_count").id()).unwrap();
        let (me, seen) = big_thread(move || {
            let seen: Vec<i64> = (0..10)
                .map(|_| call_i64(r, "who_count", 0, 0).unwrap())
                .collect();
            (this_thread(), seen)
        });
        assert_ne!(me, owner);
        assert!(
            seen.iter().all(|&s| s == me),
            "ran on {seen:?}, the caller is {me}, the owner {owner}"
        );
        let m = loader.metrics(BundleId::new("who_count").id()).unwrap();
        assert_eq!(m.calls - before.calls, 10, "{m:?}");
        let served = |m: &polyplug_subinterp::BundleMetrics| -> u64 {
            m.replicas.iter().map(|r| r.calls_served).sum()
        };
        assert!(served(&m) >= served(&before) + 10, "{m:?}");
        let direct_calls = |m: &polyplug_subinterp::BundleMetrics| -> u64 {
            m.replicas.iter().map(|r| r.direct_calls).sum()
        };
        assert_eq!(direct_calls(&m) - direct_calls(&before), 10, "{m:?}");
        assert_eq!(m.in_flight, 0);
    });
}

/// Engine only: `threading.local` in a direct bundle is per host thread (documented):
/// each thread sees its own value, and a thread's later call sees what its earlier one
/// stored. The calls take turns, so each finds the interpreter free.
#[test]
fn threading_local_is_per_host_thread() {
    within("direct threading.local", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        load_who(&loader, &rt, "who_local");
        let r = rt_ptr(&rt);
        let (a_go, a_rx) = mpsc::channel::<()>();
        let (a_done, done_rx) = mpsc::channel::<i64>();
        let a = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(move || {
                call_i64(r, "who_local", 2, 1).unwrap();
                a_done
                    .send(call_i64(r, "who_local", 3, 0).unwrap())
                    .unwrap();
                a_rx.recv().unwrap();
                a_done
                    .send(call_i64(r, "who_local", 3, 0).unwrap())
                    .unwrap();
            })
            .unwrap();
        assert_eq!(done_rx.recv().unwrap(), 1, "A sees what it stored");
        let b = big_thread(move || {
            let unset = call_i64(r, "who_local", 3, 0).unwrap();
            call_i64(r, "who_local", 2, 2).unwrap();
            (unset, call_i64(r, "who_local", 3, 0).unwrap())
        });
        a_go.send(()).unwrap();
        let a_later = done_rx.recv().unwrap();
        a.join().unwrap();
        assert_eq!(b, (-1, 2), "B sees its own thread's local, not A's");
        assert_eq!(a_later, 1, "A's later call still sees its own");
    });
}

/// A host thread that made direct calls into two bundles then takes the GIL through
/// `PyGILState_Ensure` (what a PyO3 host's `with_gil` or a ctypes callback does): it gets
/// the main interpreter, never a bundle's, and both bundles answer after.
#[test]
fn py_gilstate_ensure_after_direct_calls_into_two_bundles_gets_main() {
    within("gilstate after direct", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        load_who(&loader, &rt, "who_g1");
        load_who(&loader, &rt, "who_g2");
        let r = rt_ptr(&rt);
        let ids = big_thread(move || {
            // Under the engine these run on this thread (checked by
            // `direct_calls_run_on_the_calling_thread_and_are_counted`), leaving it a
            // thread state in each bundle's interpreter.
            for _ in 0..5 {
                for b in ["who_g1", "who_g2"] {
                    call_i64(r, b, 0, 0).unwrap();
                }
            }
            let bound = main_gilstate();
            let again: Vec<i64> = ["who_g1", "who_g2"]
                .iter()
                .map(|b| call_i64(r, b, 4, 0).unwrap())
                .collect();
            let bound_again = main_gilstate();
            (bound, bound_again, again)
        });
        assert_eq!(ids.0, 0, "PyGILState_Ensure attached the main interpreter");
        assert_eq!(ids.1, 0, "and again after more direct calls");
        assert_ne!(ids.2[0], ids.2[1], "each bundle in its own interpreter");
        assert!(ids.2.iter().all(|&i| i != 0));
    });
}

/// `PyGILState_Ensure` on this thread: returns the id of the interpreter it attached (and
/// of the thread's PyGILState state before, checked to be main's if any).
fn main_gilstate() -> i64 {
    use pyo3_ffi as sys;
    // SAFETY: R1 (this test plays a host of the loader's Python): any thread may read its
    // own PyGILState slot; nothing is attached on this thread between loader calls.
    let before = unsafe { sys::PyGILState_GetThisThreadState() };
    if !before.is_null() {
        // SAFETY: R1: `before` is this thread's live PyGILState thread state; reading its
        // interpreter needs no GIL.
        let interp = unsafe { sys::PyThreadState_GetInterpreter(before) };
        // SAFETY: R1: the id of that live interpreter, read without the GIL as CPython does.
        let id = unsafe { sys::PyInterpreterState_GetID(interp) };
        assert_eq!(
            id, 0,
            "a bundle's thread state became this thread's PyGILState state"
        );
    }
    // SAFETY: R1: a host thread holding no thread state takes main's GIL as PyO3's
    // `with_gil` does, and releases it below at once (main stays detached while idle).
    let g = unsafe { sys::PyGILState_Ensure() };
    // SAFETY: R1: attached by the Ensure above, on this thread.
    let interp = unsafe { sys::PyInterpreterState_Get() };
    // SAFETY: R1: the attached interpreter's id.
    let id = unsafe { sys::PyInterpreterState_GetID(interp) };
    // SAFETY: R1: the matching release, on the thread that ensured.
    unsafe { sys::PyGILState_Release(g) };
    id
}

/// A ctypes CFUNCTYPE callback (entered through `PyGILState_Ensure`) run from inside a
/// direct call runs in the bundle's interpreter on the calling thread; from a 2 MiB and
/// an 8 MiB thread, and from two threads at once.
#[test]
fn a_ctypes_callback_inside_a_direct_call_runs_in_the_bundle() {
    within("direct ctypes callback", || {
        let loader = direct(PythonConfig::default());
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        load_who(&loader, &rt, "who_cb");
        let r = rt_ptr(&rt);
        assert_eq!(
            big_thread(move || call_i64(r, "who_cb", 5, 21)),
            Ok(42),
            "{:?}",
            logs.lock().unwrap()
        );
        std::thread::scope(|s| {
            for t in 0..2 {
                s.spawn(move || {
                    for i in 0..20 {
                        assert_eq!(call_i64(r, "who_cb", 5, t * 100 + i), Ok(2 * (t * 100 + i)));
                    }
                });
            }
        });
    });
}

/// A `sqlite3` `create_function` callback (entered through `PyGILState_Ensure`) inside a
/// direct call runs in the bundle's interpreter on the calling thread.
#[test]
fn a_sqlite3_function_callback_inside_a_direct_call_runs_in_the_bundle() {
    within("direct sqlite3 callback", || {
        let loader = direct(PythonConfig::default());
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        load_who(&loader, &rt, "who_sql");
        let r = rt_ptr(&rt);
        assert_eq!(
            big_thread(move || call_i64(r, "who_sql", 6, 21)),
            Ok(42),
            "{:?}",
            logs.lock().unwrap()
        );
        assert_eq!(
            std::thread::spawn(move || call_i64(r, "who_sql", 6, 5))
                .join()
                .unwrap(),
            Ok(10)
        );
        assert_eq!(call_i64(&rt, "who_sql", 6, 50), Ok(100));
    });
}

/// fn 0: plain Python recursion; fn 1: recursion through `__getitem__` (a C slot: each
/// level is C frames too); fn 2: through `__repr__`; fn 3: `json.dumps` of a list nested
/// 100 000 deep (the C encoder recursing); fn 4 echoes.
const RECURSIVE: &str = r#"
import json
def plain(impl, args, out, arena, alloc):
    def r(n):
        return r(n + 1)
    r(0)
class Deep:
    def __getitem__(self, i):
        return self[i + 1]
    def __repr__(self):
        return repr(self)
def getitem(impl, args, out, arena, alloc):
    Deep()[0]
def reprs(impl, args, out, arena, alloc):
    repr(Deep())
def dumps(impl, args, out, arena, alloc):
    x = []
    for _ in range(100_000):
        x = [x]
    json.dumps(x)
def echo(impl, args, out, arena, alloc):
    put_i64(out, i64_at(args))
"#;

/// Deep recursion in a direct call from a 2 MiB host thread (Rust's and tokio's default)
/// is an error value (RecursionError), or runs posted: never a crash. The recursion
/// through C slots is what overflows a C stack.
#[test]
fn deep_recursion_from_a_2_mib_host_thread_is_an_error_never_a_crash() {
    within("direct recursion", || {
        let loader = direct(PythonConfig::default());
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        let src = plugin_source("drec@1", RECURSIVE, "plain, getitem, reprs, dumps, echo");
        load_dir(&loader, &rt, &write_bundle("direct_rec", &src, &[]).1).unwrap();
        let r = rt_ptr(&rt);
        let results = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                (0..4)
                    .map(|f| {
                        (
                            f,
                            call_i64(r, "drec", f, 0),
                            call_i64(r, "drec", 4, f as i64),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        for (f, deep, echo) in results {
            assert_eq!(deep, Err(AbiErrorCode::Generic as u32), "fn {f}");
            assert_eq!(echo, Ok(i64::from(f)), "fn {f}: answers after");
        }
        let logs = logs.lock().unwrap();
        let recursion = logs
            .iter()
            .filter(|(_, _, m)| m.contains("RecursionError"))
            .count();
        assert!(recursion >= 1, "RecursionError logged: {logs:?}");
    });
}

/// Several direct bundles, each hit by two threads at once (one claims, one posts or waits
/// its turn), with answers checked: the contended path serves every queued call.
#[test]
fn contended_direct_calls_are_all_served() {
    within("direct contended", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let src = |c: &str| {
            plugin_source(
                c,
                "def f(impl, args, out, arena, alloc):\n    put_i64(out, i64_at(args) * 3)\n",
                "f",
            )
        };
        for b in ["dcont_a", "dcont_b"] {
            load_dir(
                &loader,
                &rt,
                &write_bundle(b, &src(&format!("{b}@1")), &[]).1,
            )
            .unwrap();
        }
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8i64 {
                let (rt, done) = (&rt, &done);
                s.spawn(move || {
                    let b = if t % 2 == 0 { "dcont_a" } else { "dcont_b" };
                    for i in 0..(stress(500) as i64) {
                        assert_eq!(call_i64(rt, b, 0, t * 10_000 + i), Ok(3 * (t * 10_000 + i)));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(done.into_inner(), 8 * stress(500));
        for b in ["dcont_a", "dcont_b"] {
            let m = loader.metrics(BundleId::new(b).id()).unwrap();
            assert_eq!(
                (m.errors, m.in_flight, m.queue_depth),
                (0, 0, 0),
                "{b}: {m:?}"
            );
        }
    });
}

/// fn 0 `hold(gate)`: tells the test it runs (`gate[0]`, a Rust fn), then spins until
/// `gate[1]` (a Rust fn) answers non-zero, then answers its interpreter's id; fn 1 echoes
/// `x * 3`; fn 2 `speak(n)`: prints a line naming the bundle and `n`, answers `n`; fn 3
/// `burn(ms)`: spins until this thread's CPU clock has advanced `ms` ms.
const GATED: &str = r#"
import sys, time
try:
    import _interpreters
except ImportError:  # 3.12
    import _xxsubinterpreters as _interpreters
NAME = __name__
def hold(impl, args, out, arena, alloc):
    gate = (ctypes.c_int64 * 2).from_address(i64_at(args))
    ctypes.CFUNCTYPE(None)(gate[0])()
    released = ctypes.CFUNCTYPE(ctypes.c_int)(gate[1])
    while not released():
        pass
    c = _interpreters.get_current()
    put_i64(out, c[0] if isinstance(c, tuple) else int(c))
def triple(impl, args, out, arena, alloc):
    put_i64(out, i64_at(args) * 3)
def speak(impl, args, out, arena, alloc):
    n = i64_at(args)
    print(NAME, n)
    put_i64(out, n)
def burn(impl, args, out, arena, alloc):
    end = time.thread_time() + i64_at(args) / 1000
    while time.thread_time() < end:
        pass
"#;

const GATED_FNS: &str = "hold, triple, speak, burn";

fn load_gated(loader: &PythonLoader, rt: &Runtime, name: &str) {
    let src = plugin_source(&format!("{name}@1"), GATED, GATED_FNS);
    load_dir(loader, rt, &write_bundle(name, &src, &[]).1).unwrap();
}

/// The gate `hold` takes: [started fn, released fn], each a Rust `extern "C" fn`.
struct Gate([i64; 2]);

impl Gate {
    fn new(started: extern "C" fn(), released: extern "C" fn() -> i32) -> Self {
        Gate([started as usize as i64, released as usize as i64])
    }
    fn arg(&self) -> i64 {
        self.0.as_ptr() as usize as i64
    }
}

static QUEUE_STARTED: AtomicUsize = AtomicUsize::new(0);
static QUEUE_RELEASED: AtomicBool = AtomicBool::new(false);

extern "C" fn queue_started() {
    QUEUE_STARTED.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn queue_released() -> i32 {
    i32::from(QUEUE_RELEASED.load(Ordering::SeqCst))
}

/// The contended path: while direct calls hold every interpreter of a bundle (one, then
/// two replicas), another thread's call waits in the queue; once the holders return, that
/// queued call is served at once, with no later call to carry it (nothing else is called
/// until it answers).
#[test]
fn a_call_queued_behind_direct_calls_is_served_when_they_end() {
    within("queued behind direct", || {
        for k in [1usize, 2] {
            let name = format!("dqueue_{k}");
            let loader = direct(PythonConfig {
                replicas: [(name.clone(), Replicas::Fixed(k))].into(),
                ..PythonConfig::default()
            });
            let (rt, _logs) = runtime_with(loader.clone(), &[]);
            load_gated(&loader, &rt, &name);
            let holders = loader
                .bundle_info(BundleId::new(&name).id())
                .unwrap()
                .replicas;
            QUEUE_STARTED.store(0, Ordering::SeqCst);
            QUEUE_RELEASED.store(false, Ordering::SeqCst);
            let gate = Gate::new(queue_started, queue_released);
            let (rt, name, gate) = (&rt, name.as_str(), &gate);
            std::thread::scope(|s| {
                let held: Vec<_> = (0..holders)
                    .map(|_| s.spawn(move || call_i64(rt, name, 0, gate.arg())))
                    .collect();
                wait_until(|| QUEUE_STARTED.load(Ordering::SeqCst) == holders);
                let queued = s.spawn(move || call_i64(rt, name, 1, 14));
                let m = || loader.metrics(BundleId::new(name).id()).unwrap();
                wait_until(|| m().queue_depth >= 1);
                assert!(!queued.is_finished(), "k={k}: every interpreter is held");
                QUEUE_RELEASED.store(true, Ordering::SeqCst);
                let ids: Vec<i64> = held
                    .into_iter()
                    .map(|h| h.join().unwrap().unwrap())
                    .collect();
                assert_eq!(
                    ids.iter().collect::<std::collections::HashSet<_>>().len(),
                    holders,
                    "k={k}: one holder per interpreter"
                );
                assert_eq!(queued.join().unwrap(), Ok(42), "k={k}");
            });
        }
    });
}

static CANCEL_STARTED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn cancel_started() {
    CANCEL_STARTED.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn never_released() -> i32 {
    0
}

/// A host cancels a direct call from another thread (`CancelToken`): that call ends with
/// the cancelled error, and the bundle answers the same thread after.
#[test]
fn a_host_cancels_a_direct_call_from_another_thread() {
    within("direct cancel", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        load_gated(&loader, &rt, "dcancel");
        let token = polyplug_subinterp::CancelToken::new();
        let gate = Gate::new(cancel_started, never_released);
        let (rt, gate) = (&rt, &gate);
        std::thread::scope(|s| {
            let t = token.clone();
            let caller = s.spawn(move || {
                let opts = CallOptions {
                    timeout: None,
                    cancel: Some(t),
                    ..CallOptions::default()
                };
                let r = with_call_options(opts, || call_abi(rt, "dcancel", 0, gate.arg()));
                (r, call_i64(rt, "dcancel", 1, 5))
            });
            wait_until(|| CANCEL_STARTED.load(Ordering::SeqCst) == 1);
            token.cancel();
            let (r, after) = caller.join().unwrap();
            assert_eq!(
                message(&r.unwrap_err()),
                polyplug_subinterp::CANCELLED_MESSAGE
            );
            assert_eq!(after, Ok(15), "the same thread's next call");
        });
        let m = loader.metrics(BundleId::new("dcancel").id()).unwrap();
        assert_eq!((m.cancelled, m.in_flight), (1, 0), "{m:?}");
    });
}

/// Host-thread churn, as tokio's blocking pool makes it: 96 short-lived threads (8 at a
/// time) each make direct calls into two bundles and exit. Both bundles answer after, and
/// both unload with their interpreters ended (no thread state left behind).
#[test]
fn short_lived_host_threads_leave_nothing_behind() {
    within("direct thread churn", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let probe = crate::reload::versioned("dchurnprobe@1", 1);
        load_dir(&loader, &rt, &write_bundle("dchurnprobe", &probe, &[]).1).unwrap();
        let names = ["dchurn_a", "dchurn_b"];
        for b in names {
            // Through the runtime, which unloads only what it loaded.
            let src = plugin_source(&format!("{b}@1"), GATED, GATED_FNS);
            rt.load_bundle(&write_bundle(b, &src, &[]).1).unwrap();
        }
        let interps: Vec<i64> = names
            .iter()
            .map(|b| {
                loader
                    .bundle_info(BundleId::new(b).id())
                    .unwrap()
                    .python_interp_id
            })
            .collect();
        for wave in 0..12i64 {
            std::thread::scope(|s| {
                for t in 0..8i64 {
                    let rt = &rt;
                    s.spawn(move || {
                        for i in 0..5 {
                            let x = wave * 1000 + t * 10 + i;
                            for b in names {
                                assert_eq!(call_i64(rt, b, 1, x), Ok(3 * x));
                            }
                        }
                    });
                }
            });
        }
        for b in names {
            assert_eq!(call_i64(&rt, b, 1, 7), Ok(21));
            rt.unload_bundle(BundleId::new(b)).unwrap();
        }
        for id in interps {
            assert_eq!(
                call_i64(&rt, "dchurnprobe", 1, id),
                Ok(0),
                "interpreter {id} ended"
            );
        }
    });
}

/// Prints from direct calls on several host threads reach the runtime's logger as whole
/// lines, each under its own bundle's scope.
#[test]
fn prints_from_direct_calls_are_attributed_to_their_bundle() {
    within("direct output", || {
        let loader = direct(PythonConfig::default());
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        let names = ["dspeak_a", "dspeak_b"];
        for b in names {
            load_gated(&loader, &rt, b);
        }
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let rt = &rt;
                s.spawn(move || {
                    for i in 0..25 {
                        let b = names[((t + i) % 2) as usize];
                        assert_eq!(call_i64(rt, b, 2, t * 100 + i), Ok(t * 100 + i));
                    }
                });
            }
        });
        let logs = logs.lock().unwrap();
        for (k, b) in names.iter().enumerate() {
            let mut got: Vec<String> = logs
                .iter()
                .filter(|(_, scope, _)| scope == b)
                .map(|(_, _, m)| m.clone())
                .collect();
            got.sort();
            let mut want: Vec<String> = (0..4i64)
                .flat_map(|t| {
                    (0..25)
                        .filter(move |i| ((t + i) % 2) as usize == k)
                        .map(move |i| format!("{b} {}", t * 100 + i))
                })
                .collect();
            want.sort();
            assert_eq!(got, want, "{b}");
        }
    });
}

/// The CPU a direct call's Python uses is the bundle's `cpu_time` (sampled on the calling
/// thread under the engine, the owner's clock under `Post`): 16 calls that each burn
/// 3 ms of their thread's CPU add at least 48 ms.
#[test]
fn the_cpu_of_direct_calls_is_the_bundles() {
    within("direct cpu", || {
        let loader = direct(PythonConfig::default());
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        load_gated(&loader, &rt, "dburn");
        let id = BundleId::new("dburn").id();
        let before = loader.metrics(id).unwrap().cpu_time;
        let r = rt_ptr(&rt);
        big_thread(move || {
            for _ in 0..16 {
                call_i64(r, "dburn", 3, 3).unwrap();
            }
        });
        let m = loader.metrics(id).unwrap();
        assert!(
            m.cpu_time >= before + Duration::from_millis(48),
            "{before:?} before, {m:?}"
        );
    });
}

/// Elastic replicas count direct calls as busy: a replica whose interpreter a caller holds
/// for a long direct call (its owner thread parked all along) is not retired mid-call,
/// over many idle passes past `idle_retire`; once idle, the bundle shrinks back to one.
/// (`replicas::long_call_keeps_its_replica`, as for posted calls.)
#[test]
fn a_replica_held_by_a_long_direct_call_is_not_retired() {
    crate::replicas::long_call_keeps_its_replica("del_long", Dispatch::Direct);
}
