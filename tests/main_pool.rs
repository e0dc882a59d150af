//! Main mode served by a pool of threads (issue 16), through the public configuration:
//! `bundle_modes` forces `main`, `replicas` (`Fixed(k)`) says how many pool threads may
//! run one bundle's calls at once (default 1). Hand-written bundles, real runtime, every
//! answer checked, every test bounded by a watchdog.
//!
//! A binary of its own, its tests one at a time (issue 20, defect 10): the main
//! interpreter's pool is process-wide, so in `tests/all` other tests' calls held its
//! threads and these tests' "runs k calls at once" and "beside it" steps depended on
//! them. Here the pool has exactly [`POOL`] threads (`main_threads`, decided by the first
//! load in the process: every test sets it), whatever the core count, and nothing else
//! uses them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use polyplug::runtime::Runtime;
use polyplug_abi::AbiError;
use polyplug_subinterp::{
    with_call_options, CallOptions, InterpreterMode, PythonConfig, PythonLoader, Replicas,
    TIMEOUT_MESSAGE,
};
use polyplug_utils::BundleId;

#[path = "all/support.rs"]
#[allow(dead_code, reason = "tests/all's helpers, not all of them used here")]
mod support;

use support::{
    call_abi, call_i64, contract_id, load_dir, mode_of, plugin_source, runtime_with, stress,
    unload_during_calls, wait_until, write_bundle, write_bundle_with_sdk, PEER_PY,
};

/// A hang here fails in a minute rather than two: each test takes a second or two.
const HANG: Duration = Duration::from_secs(60);

/// Threads of the main interpreter's pool in this process.
const POOL: usize = 2;

/// Runs `f` alone in this binary (see the top), aborting the process if it takes longer
/// than `limit`.
fn within_for<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    static ALONE: Mutex<()> = Mutex::new(());
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    support::within_for(limit, what, f)
}

/// `main` for each named bundle, with its `Replicas::Fixed(k)`.
fn main_mode(bundles: &[(&str, usize)]) -> PythonConfig {
    PythonConfig {
        bundle_modes: bundles
            .iter()
            .map(|(n, _)| (n.to_string(), InterpreterMode::Main))
            .collect(),
        replicas: bundles
            .iter()
            .map(|(n, k)| (n.to_string(), Replicas::Fixed(*k)))
            .collect(),
        main_threads: Some(POOL),
        ..PythonConfig::default()
    }
}

fn message(e: &AbiError) -> &[u8] {
    // SAFETY: loader messages are static byte strings.
    unsafe { std::slice::from_raw_parts(e.message.ptr, e.message.len) }
}

fn loads_in_main(loader: &PythonLoader, rt: &Runtime, name: &str, source: &str) {
    load_dir(loader, rt, &write_bundle(name, source, &[]).1).unwrap();
    assert_eq!(mode_of(loader, name), "main", "{name}");
}

/// Counts the calls running at once (a lock-guarded module counter): `work` sleeps
/// `time.sleep` so calls overlap whenever the loader lets them; `meet(k)` returns only
/// once `k` calls are inside it at once (a barrier, broken after 30 s).
const COUNTING: &str = r#"
import threading, time
LOCK = threading.Lock()
STATE = {"now": 0, "peak": 0}
MEET = {}
def enter():
    with LOCK:
        STATE["now"] += 1
        STATE["peak"] = max(STATE["peak"], STATE["now"])
def leave():
    with LOCK:
        STATE["now"] -= 1
def work(impl, args, out, arena, alloc):
    enter()
    try:
        time.sleep(0.003)
        put_i64(out, i64_at(args) * 3 + 1)
    finally:
        leave()
def peak(impl, args, out, arena, alloc):
    put_i64(out, STATE["peak"])
def meet(impl, args, out, arena, alloc):
    k = i64_at(args)
    with LOCK:
        barrier = MEET.setdefault(k, threading.Barrier(k, timeout=30))
    enter()
    try:
        put_i64(out, barrier.wait())
    finally:
        leave()
"#;

/// Six host threads call a main-mode bundle with `Fixed(k)`: every answer is right and
/// the guest never sees more than `k` calls at once; then `k` calls meet inside it, which
/// they can only do if the loader runs `k` at once.
fn at_most_k_at_once(k: usize) {
    assert!(k <= POOL);
    let name = format!("count_main_{k}");
    let contract = format!("countmain{k}");
    let loader = PythonLoader::new(main_mode(&[(&name, k)]));
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    let src = plugin_source(&format!("{contract}@1"), COUNTING, "work, peak, meet");
    loads_in_main(&loader, &rt, &name, &src);
    std::thread::scope(|s| {
        for t in 0..6i64 {
            let (rt, contract) = (&rt, &contract);
            s.spawn(move || {
                for i in 0..20 {
                    let n = t * 100 + i;
                    assert_eq!(call_i64(rt, contract, 0, n), Ok(n * 3 + 1), "thread {t}");
                }
            });
        }
    });
    let peak = call_i64(&rt, &contract, 1, 0).unwrap() as usize;
    assert!(
        peak <= k,
        "{peak} calls ran at once with Replicas::Fixed({k})"
    );
    let met: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..k)
            .map(|_| s.spawn(|| call_abi(&rt, &contract, 2, k as i64).map_err(|e| e.code)))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(
        met.iter().all(Result::is_ok),
        "Fixed({k}) never ran {k} calls at once: {met:?}"
    );
    let peak = call_i64(&rt, &contract, 1, 0).unwrap() as usize;
    assert_eq!(peak, k, "Replicas::Fixed({k})");
    let m = loader.metrics(BundleId::new(&name).id()).unwrap();
    assert_eq!(m.errors, 0, "{m:?}");
    assert_eq!(m.calls, 120 + k as u64 + 2, "{m:?}");
}

#[test]
fn a_main_mode_bundle_with_one_replica_runs_one_call_at_a_time() {
    within_for(HANG, "main k=1", || at_most_k_at_once(1));
}

#[test]
fn a_main_mode_bundle_with_two_replicas_runs_two_calls_at_once_and_no_more() {
    within_for(HANG, "main k=2", || at_most_k_at_once(2));
}

/// Bundles `a` and `b` (contracts `a@1`, `b@1`): `ping(n)` returns `n` by bouncing `n`
/// times between them through the host API. Each counts the threads inside it at once
/// (a thread re-entering it counts once) and reports the peak with fn 1.
fn ping_pong_pair(loader: &PythonLoader, rt: &Runtime, a: &str, b: &str) {
    for (me, other) in [(a, b), (b, a)] {
        let defs = format!(
            r#"import peer, threading
OTHER = {other_id}
LOCK = threading.Lock()
DEPTH = {{}}
STATE = {{"peak": 0}}
def ping(impl, args, out, arena, alloc):
    me = threading.get_ident()
    with LOCK:
        DEPTH[me] = DEPTH.get(me, 0) + 1
        STATE["peak"] = max(STATE["peak"], sum(1 for d in DEPTH.values() if d))
    try:
        n = i64_at(args)
        put_i64(out, 0 if n == 0 else peer.call_i64(impl.host, OTHER, 0, n - 1) + 1)
    finally:
        with LOCK:
            DEPTH[me] -= 1
def peak(impl, args, out, arena, alloc):
    put_i64(out, STATE["peak"])
"#,
            other_id = contract_id(other, 1)
        );
        let src = plugin_source(&format!("{me}@1"), &defs, "ping, peak");
        let (_, dir) = write_bundle_with_sdk(me, &src, &[("peer.py", PEER_PY)]);
        load_dir(loader, rt, &dir).unwrap();
    }
}

/// Four host threads start chains of up to 12 levels, half at `a`, half at `b`: every
/// chain answers; neither bundle ever had more threads inside it than its replicas.
fn ping_pong_from_four_threads(rt: &Runtime, (a, ka): (&str, usize), (b, kb): (&str, usize)) {
    std::thread::scope(|s| {
        for t in 0..4i64 {
            s.spawn(move || {
                for i in 0..stress(40) as i64 {
                    let n = (i * 7 + t) % 12;
                    let root = if (i + t) % 2 == 0 { a } else { b };
                    assert_eq!(call_i64(rt, root, 0, n), Ok(n), "thread {t}, {root}({n})");
                }
            });
        }
    });
    for (name, k) in [(a, ka), (b, kb)] {
        let peak = call_i64(rt, name, 1, 0).unwrap() as usize;
        assert!(
            (1..=k).contains(&peak),
            "{name}: {peak} threads inside at once with {k} replicas (a call coming back \
             into a bundle must run on the thread already inside it, not on another one)"
        );
    }
}

#[test]
fn main_a_calls_own_gil_b_calls_back_into_a_from_four_threads() {
    within_for(HANG, "main a -> own b -> main a", || {
        // b takes the default mode: own_gil on 3.13+, shared_gil on 3.12.
        let loader = PythonLoader::new(main_mode(&[("mpp_a", 2)]));
        let (rt, _) = runtime_with(loader.clone(), &[]);
        ping_pong_pair(&loader, &rt, "mpp_a", "mpp_b");
        assert_eq!(mode_of(&loader, "mpp_a"), "main");
        assert_ne!(mode_of(&loader, "mpp_b"), "main");
        ping_pong_from_four_threads(&rt, ("mpp_a", 2), ("mpp_b", 1));
    });
}

#[test]
fn main_a_and_main_b_call_each_other_from_four_threads() {
    within_for(HANG, "main a <-> main b", || {
        // a with two replicas, b with one: a thread inside b calling a may find a busy
        // on other threads that wait for b.
        let loader = PythonLoader::new(main_mode(&[("mmm_a", 2), ("mmm_b", 1)]));
        let (rt, _) = runtime_with(loader.clone(), &[]);
        ping_pong_pair(&loader, &rt, "mmm_a", "mmm_b");
        assert_eq!(mode_of(&loader, "mmm_a"), "main");
        assert_eq!(mode_of(&loader, "mmm_b"), "main");
        ping_pong_from_four_threads(&rt, ("mmm_a", 2), ("mmm_b", 1));
    });
}

#[test]
fn two_main_mode_bundles_with_default_replicas_call_each_other_from_four_threads() {
    within_for(HANG, "main a <-> main b, one each", || {
        // The default: one call at a time per bundle, the way every downgraded bundle runs.
        // A chain rooted at a holds a while waiting for b, one rooted at b the reverse.
        let loader = PythonLoader::new(main_mode(&[("mm1_a", 1), ("mm1_b", 1)]));
        let (rt, _) = runtime_with(loader.clone(), &[]);
        ping_pong_pair(&loader, &rt, "mm1_a", "mm1_b");
        ping_pong_from_four_threads(&rt, ("mm1_a", 1), ("mm1_b", 1));
    });
}

/// `spin` tells the test it runs, then swallows every interrupt it can (so the deadline
/// goes through all its stages: interrupt, re-interrupt, stop on the next line), counting
/// them; `steady` runs Python lines, asking the test before each whether to go on.
const TWO_CALLS: &str = r#"
import time
SWALLOWED = [0]
def spin(impl, args, out, arena, alloc):
    ctypes.CFUNCTYPE(None)(i64_at(args))()
    while True:
        try:
            while True:
                pass
        except BaseException:
            SWALLOWED[0] += 1
def steady(impl, args, out, arena, alloc):
    go_on = ctypes.CFUNCTYPE(ctypes.c_int)(i64_at(args))
    lines = 0
    while go_on():
        lines += 1
        time.sleep(0.002)
    put_i64(out, lines)
def swallowed(impl, args, out, arena, alloc):
    put_i64(out, SWALLOWED[0])
"#;

/// A call with a deadline on one pool thread, a call without beside it on the other,
/// running from before the first started until after it returned (gates, not timing):
/// the deadline stops its own call, through every stage, and never touches the other.
#[test]
fn a_deadline_interrupts_its_own_call_and_not_the_one_beside_it() {
    const DEADLINE: Duration = Duration::from_millis(200);
    static STEADY_RUNS: AtomicBool = AtomicBool::new(false);
    static SPIN_RUNS: AtomicBool = AtomicBool::new(false);
    static SPIN_RETURNED: AtomicBool = AtomicBool::new(false);
    extern "C" fn go_on() -> i32 {
        STEADY_RUNS.store(true, Ordering::SeqCst);
        i32::from(!SPIN_RETURNED.load(Ordering::SeqCst))
    }
    extern "C" fn spinning() {
        SPIN_RUNS.store(true, Ordering::SeqCst);
    }
    within_for(HANG, "main deadline", || {
        let name = "deadline_main";
        let loader = PythonLoader::new(main_mode(&[(name, 2)]));
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let src = plugin_source("deadlinemain@1", TWO_CALLS, "spin, steady, swallowed");
        loads_in_main(&loader, &rt, name, &src);
        let (spun, took, steady) = std::thread::scope(|s| {
            let rt = &rt;
            let steady = s.spawn(move || {
                call_abi(
                    rt,
                    "deadlinemain",
                    1,
                    go_on as extern "C" fn() -> i32 as usize as i64,
                )
            });
            // Gate: `steady` holds one pool thread; `spin` gets the other.
            wait_until(|| STEADY_RUNS.load(Ordering::SeqCst));
            let opts = CallOptions {
                timeout: Some(DEADLINE),
                ..CallOptions::default()
            };
            let t0 = Instant::now();
            let spun = with_call_options(opts, || {
                call_abi(
                    rt,
                    "deadlinemain",
                    0,
                    spinning as extern "C" fn() as usize as i64,
                )
            });
            let took = t0.elapsed();
            SPIN_RETURNED.store(true, Ordering::SeqCst);
            (spun, took, steady.join().unwrap())
        });
        let e = spun.expect_err("the spinning call ends at its deadline");
        assert_eq!(message(&e), TIMEOUT_MESSAGE);
        assert!(took >= DEADLINE, "spin took {took:?}");
        assert!(
            SPIN_RUNS.load(Ordering::SeqCst),
            "`spin` never started: the second pool thread did not take it before its deadline"
        );
        let lines = steady
            .map_err(|e| e.code)
            .expect("the call beside it is untouched");
        assert!(lines >= 1, "{lines}");
        // One interrupt per round before the last step stops it on its next line
        // (interrupt, re-interrupt, the one raised with the last step), whatever the time
        // each round took: it is not left swallowing interrupts.
        let swallowed = call_i64(&rt, "deadlinemain", 2, 0);
        assert!(
            matches!(swallowed, Ok(1..=3)),
            "spin swallowed {swallowed:?} interrupts; answers after"
        );
        let m = loader.metrics(BundleId::new(name).id()).unwrap();
        assert_eq!((m.timeouts, m.errors), (1, 1), "{m:?}");
        assert_eq!(m.in_flight, 0, "{m:?}");
    });
}

#[test]
fn unload_with_calls_in_flight_on_several_pool_threads() {
    within_for(HANG, "main unload", || {
        let (busy, calm) = ("busy_main", "calm_main");
        let loader = PythonLoader::new(main_mode(&[(busy, 2), (calm, 1)]));
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let (_, dir) = write_bundle(
            busy,
            &plugin_source(
                "busymain@1",
                "import time\ndef f(impl, args, out, arena, alloc):\n    time.sleep(0.001)\n    put_i64(out, i64_at(args) + 1)\n",
                "f",
            ),
            &[],
        );
        rt.load_bundle(&dir).unwrap();
        assert_eq!(mode_of(&loader, busy), "main");
        let calm_src = plugin_source(
            "calmmain@1",
            "def f(impl, args, out, arena, alloc):\n    put_i64(out, i64_at(args) * 2)\n",
            "f",
        );
        loads_in_main(&loader, &rt, calm, &calm_src);
        let done = AtomicBool::new(false);
        let calm_calls = AtomicUsize::new(0);
        let (answers, stale) = std::thread::scope(|s| {
            let (rt, done, calm_calls) = (&rt, &done, &calm_calls);
            // Another main-mode bundle is called all through the unload.
            s.spawn(move || {
                let mut i = 0;
                while !done.load(Ordering::Relaxed) {
                    assert_eq!(call_i64(rt, "calmmain", 0, i), Ok(i * 2));
                    calm_calls.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
            let r = unload_during_calls(rt, "busymain", busy, 6, 21);
            done.store(true, Ordering::Relaxed);
            r
        });
        assert_eq!(answers + stale, 1200);
        assert!(answers >= 21, "{answers}");
        assert!(calm_calls.into_inner() > 0);
        assert!(loader.bundle_info(BundleId::new(busy).id()).is_none());
        // Loads again, fresh, and both answer.
        rt.load_bundle(&dir).unwrap();
        assert_eq!(mode_of(&loader, busy), "main");
        assert_eq!(call_i64(&rt, "busymain", 0, 41), Ok(42));
        assert_eq!(call_i64(&rt, "calmmain", 0, 21), Ok(42));
    });
}

/// Each call prints three lines, each in five pieces with a GIL-releasing sleep between
/// them, so pieces from calls on other pool threads land in between.
fn speaker(tag: &str) -> String {
    let defs = format!(
        r#"import sys, time
def speak(impl, args, out, arena, alloc):
    n = i64_at(args)
    for line in range(3):
        print(f"{tag}:{{n}}:{{line}}:", end="")
        for piece in range(4):
            time.sleep(0.0005)
            print(f"<{{piece}}>", end="")
        print()
    sys.stderr.write(f"{tag}:{{n}}:")
    time.sleep(0.0005)
    sys.stderr.write("err\n")
    put_i64(out, n)
"#
    );
    plugin_source(&format!("{tag}@1"), &defs, "speak")
}

#[test]
fn output_of_two_main_mode_bundles_printing_at_once_goes_to_each() {
    use polyplug_abi::types::LogLevel;
    within_for(HANG, "main output", || {
        let bundles = [("say_a", "saya"), ("say_b", "sayb")];
        let loader = PythonLoader::new(main_mode(&[("say_a", 2), ("say_b", 2)]));
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        for (name, tag) in bundles {
            loads_in_main(&loader, &rt, name, &speaker(tag));
        }
        // Two host threads per bundle: the bundles' calls overlap, and so do two calls
        // of one bundle.
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let (rt, tag) = (&rt, bundles[t as usize % 2].1);
                s.spawn(move || {
                    for i in 0..10 {
                        let n = t * 100 + i;
                        assert_eq!(call_i64(rt, tag, 0, n), Ok(n));
                    }
                });
            }
        });
        for (name, _) in bundles {
            rt.unload_bundle(BundleId::new(name)).unwrap();
        }
        let logs = logs.lock().unwrap().clone();
        for (t0, (name, tag)) in bundles.into_iter().enumerate() {
            let mut got: Vec<(LogLevel, String)> = logs
                .iter()
                // The guest's lines (not the loader's own, e.g. about replicas).
                .filter(|(_, scope, m)| scope == name && m.starts_with("say"))
                .map(|(level, _, m)| (*level, m.clone()))
                .collect();
            let mut want = Vec::new();
            for t in [t0 as i64, t0 as i64 + 2] {
                for i in 0..10 {
                    let n = t * 100 + i;
                    for line in 0..3 {
                        want.push((LogLevel::Info, format!("{tag}:{n}:{line}:<0><1><2><3>")));
                    }
                    want.push((LogLevel::Warn, format!("{tag}:{n}:err")));
                }
            }
            got.sort_by(|x, y| x.1.cmp(&y.1));
            want.sort_by(|x, y| x.1.cmp(&y.1));
            assert_eq!(got, want, "{name}'s lines, whole and only its own");
        }
    });
}

/// Two main-mode bundles whose same-named package (`mods`, and `mods.m0` .. `mods.m15`
/// in it) holds different values, imported for the first time at call time, on pool
/// threads at once (a barrier lines the calls up): each bundle gets its own modules, the
/// package and its submodules alike (issue 16's hazard 1: `sys.modules` is looked at
/// before `sys.meta_path`).
#[test]
fn same_named_modules_imported_at_once_by_two_main_mode_bundles_stay_apart() {
    const MODULES: i64 = 16;
    within_for(HANG, "main imports", || {
        let bundles = [("imp_a", 1i64), ("imp_b", 2)];
        let loader = PythonLoader::new(main_mode(&[("imp_a", 2), ("imp_b", 2)]));
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        for (name, tag) in bundles {
            let mut files = vec![("mods/__init__.py".to_owned(), format!("TAG = {tag}\n"))];
            for i in 0..MODULES {
                files.push((
                    format!("mods/m{i}.py"),
                    // The sleep drops the GIL mid-import, with the half-made module in
                    // `sys.modules` under its plain name: the other bundle's import of
                    // the same name then finds it unless imports are serialised.
                    format!(
                        "import time\ntime.sleep(0.002)\nfrom mods import TAG\n\
                         VALUE = TAG * 100 + {i}\n"
                    ),
                ));
            }
            let extra: Vec<(&str, &str)> = files
                .iter()
                .map(|(p, t)| (p.as_str(), t.as_str()))
                .collect();
            let src = plugin_source(
                &format!("{name}@1"),
                // The call drops the GIL after its import too (as a numpy call would):
                // until the call's end re-keys it, the module is under its plain name.
                "import importlib, time\ndef load(impl, args, out, arena, alloc):\n    \
                 m = importlib.import_module(f'mods.m{i64_at(args)}')\n    \
                 time.sleep(0.002)\n    put_i64(out, m.VALUE)\n",
                "load",
            );
            load_dir(&loader, &rt, &write_bundle(name, &src, &extra).1).unwrap();
            assert_eq!(mode_of(&loader, name), "main", "{name}");
        }
        // Two host threads per bundle, all four importing `mods.m{i}` at the same moment.
        // Answers are checked after the rounds: a wrong one must not leave the others
        // waiting at the barrier.
        let barrier = std::sync::Barrier::new(4);
        let wrong: Vec<String> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4usize)
                .map(|t| {
                    let (rt, barrier, (name, tag)) = (&rt, &barrier, bundles[t % 2]);
                    s.spawn(move || {
                        let mut wrong = Vec::new();
                        for i in 0..MODULES {
                            barrier.wait();
                            let got = call_i64(rt, name, 0, i);
                            if got != Ok(tag * 100 + i) {
                                wrong.push(format!("{name}: m{i} gave {got:?}"));
                            }
                        }
                        wrong
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert!(wrong.is_empty(), "a bundle got another's module: {wrong:?}");
    });
}
