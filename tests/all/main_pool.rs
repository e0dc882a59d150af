//! Main mode served by a pool of threads (issue 16), through the public configuration:
//! `bundle_modes` forces `main`, `replicas` (`Fixed(k)`) says how many pool threads may
//! run one bundle's calls at once (default 1). Hand-written bundles, real runtime, every
//! answer checked, every test bounded by a watchdog.
//!
//! The pool's size (`PythonConfig::main_threads`) is process-wide and decided by the first
//! loader that starts it; these tests leave it at its default (available parallelism) and
//! only count on two threads when the machine has two cores.

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

use crate::support::*;

/// A hang here fails in a minute rather than two: each test takes a second or two.
const HANG: Duration = Duration::from_secs(60);

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
        ..PythonConfig::default()
    }
}

/// Threads the main pool has by default; what a "reaches k" assertion may count on.
fn default_pool() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn message(e: &AbiError) -> &[u8] {
    // SAFETY: loader messages are static byte strings.
    unsafe { std::slice::from_raw_parts(e.message.ptr, e.message.len) }
}

fn loads_in_main(loader: &PythonLoader, rt: &Runtime, name: &str, source: &str) {
    load_dir(loader, rt, &write_bundle(name, source, &[]).1).unwrap();
    assert_eq!(mode_of(loader, name), "main", "{name}");
}

/// Counts the calls running at once (a lock-guarded module counter), each sleeping
/// `time.sleep` so calls overlap whenever the loader lets them.
const COUNTING: &str = r#"
import threading, time
LOCK = threading.Lock()
STATE = {"now": 0, "peak": 0, "threads": set()}
def work(impl, args, out, arena, alloc):
    with LOCK:
        STATE["now"] += 1
        STATE["peak"] = max(STATE["peak"], STATE["now"])
        STATE["threads"].add(threading.get_ident())
    try:
        time.sleep(0.003)
        put_i64(out, i64_at(args) * 3 + 1)
    finally:
        with LOCK:
            STATE["now"] -= 1
def peak(impl, args, out, arena, alloc):
    put_i64(out, STATE["peak"])
def threads(impl, args, out, arena, alloc):
    put_i64(out, len(STATE["threads"]))
"#;

/// Six host threads call a main-mode bundle with `Fixed(k)`: every answer is right, the
/// guest never sees more than `k` calls at once, and (pool permitting) it does see `k`.
/// Rounds of calls go on until the peak reaches `k` or 5 s pass: other tests share the
/// process-wide pool and may hold its threads for a while.
fn at_most_k_at_once(k: usize) {
    let name = format!("count_main_{k}");
    let contract = format!("countmain{k}");
    let loader = PythonLoader::new(main_mode(&[(&name, k)]));
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    let src = plugin_source(&format!("{contract}@1"), COUNTING, "work, peak, threads");
    loads_in_main(&loader, &rt, &name, &src);
    let started = Instant::now();
    let mut rounds = 0i64;
    let peak = loop {
        std::thread::scope(|s| {
            for t in 0..6i64 {
                let (rt, contract) = (&rt, &contract);
                s.spawn(move || {
                    for i in 0..20 {
                        let n = rounds * 10_000 + t * 100 + i;
                        assert_eq!(call_i64(rt, contract, 0, n), Ok(n * 3 + 1), "thread {t}");
                    }
                });
            }
        });
        rounds += 1;
        let peak = call_i64(&rt, &contract, 1, 0).unwrap() as usize;
        assert!(
            peak <= k,
            "{peak} calls ran at once with Replicas::Fixed({k})"
        );
        if peak == k || started.elapsed() > Duration::from_secs(5) {
            break peak;
        }
    };
    let threads = call_i64(&rt, &contract, 2, 0).unwrap();
    if default_pool() >= k {
        assert_eq!(
            peak, k,
            "Fixed({k}) never ran {k} calls at once in {rounds} rounds of 120 \
             (they ran on {threads} distinct threads)"
        );
    } else {
        note(
            &format!("at_most_k_at_once({k})"),
            "fewer cores than k: the pool may be smaller, only the upper bound was checked",
        );
    }
    let m = loader.metrics(BundleId::new(&name).id()).unwrap();
    assert_eq!(m.errors, 0, "{m:?}");
    assert_eq!(m.calls, rounds as u64 * 120 + rounds as u64 + 1, "{m:?}");
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
/// goes through all its stages: interrupt, re-interrupt, stop on the next line);
/// `steady` tells the test it started, then runs Python lines for 1.2 s.
const TWO_CALLS: &str = r#"
import time
def spin(impl, args, out, arena, alloc):
    ctypes.CFUNCTYPE(None)(i64_at(args))()
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
def steady(impl, args, out, arena, alloc):
    ctypes.CFUNCTYPE(None)(i64_at(args))()
    t, lines = time.monotonic(), 0
    while time.monotonic() - t < 1.2:
        lines += 1
        time.sleep(0.002)
    put_i64(out, 42 if lines > 10 else -1)
def echo(impl, args, out, arena, alloc):
    put_i64(out, i64_at(args))
"#;

#[test]
fn a_deadline_interrupts_its_own_call_and_not_the_one_beside_it() {
    // `spin` never returns by itself: a `steady` that starts less than DEADLINE after
    // `spin` did runs beside it.
    const DEADLINE: Duration = Duration::from_millis(400);
    // Reset for each attempt (see below).
    static SPIN_STARTED: Mutex<Option<Instant>> = Mutex::new(None);
    static STEADY_STARTED_AFTER: Mutex<Option<Duration>> = Mutex::new(None);
    extern "C" fn spinning() {
        SPIN_STARTED
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }
    extern "C" fn steady_started() {
        let spun = SPIN_STARTED.lock().unwrap().expect("spin started first");
        STEADY_STARTED_AFTER
            .lock()
            .unwrap()
            .get_or_insert_with(|| spun.elapsed());
    }
    within_for(HANG, "main deadline", || {
        let name = "deadline_main";
        let loader = PythonLoader::new(main_mode(&[(name, 2)]));
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let src = plugin_source("deadlinemain@1", TWO_CALLS, "spin, steady, echo");
        loads_in_main(&loader, &rt, name, &src);
        // The pool is the process's, shared with other tests, whose calls may hold its
        // second thread for a while (on 3.12 a CPU-bound loop in another test's
        // interpreter can also keep the one main GIL): a few attempts, every one checked,
        // one at least running `steady` beside `spin`.
        const ATTEMPTS: u64 = 4;
        let mut beside = Vec::new();
        for _ in 0..ATTEMPTS {
            *SPIN_STARTED.lock().unwrap() = None;
            *STEADY_STARTED_AFTER.lock().unwrap() = None;
            let (spun, steady) = std::thread::scope(|s| {
                let rt = &rt;
                let spinner = s.spawn(move || {
                    let opts = CallOptions {
                        timeout: Some(DEADLINE),
                        ..CallOptions::default()
                    };
                    let t0 = Instant::now();
                    let r = with_call_options(opts, || {
                        call_abi(
                            rt,
                            "deadlinemain",
                            0,
                            spinning as extern "C" fn() as usize as i64,
                        )
                    });
                    (r, t0.elapsed())
                });
                wait_until(|| SPIN_STARTED.lock().unwrap().is_some());
                // No deadline of its own; it runs across every stage of the other's.
                let steady = call_abi(
                    rt,
                    "deadlinemain",
                    1,
                    steady_started as extern "C" fn() as usize as i64,
                );
                (spinner.join().unwrap(), steady)
            });
            let (spun, took) = spun;
            let e = spun.expect_err("the spinning call ends at its deadline");
            assert_eq!(message(&e), TIMEOUT_MESSAGE);
            assert!(
                (DEADLINE..Duration::from_millis(1500)).contains(&took),
                "spin took {took:?}"
            );
            assert_eq!(steady.map_err(|e| e.code), Ok(42), "the call beside it");
            assert_eq!(call_i64(&rt, "deadlinemain", 2, 7), Ok(7), "answers after");
            let after = STEADY_STARTED_AFTER.lock().unwrap().expect("steady ran");
            beside.push(after);
            if after < DEADLINE {
                break;
            }
        }
        let attempts = beside.len() as u64;
        assert!(
            beside.last().is_some_and(|&after| after < DEADLINE),
            "`steady` started {beside:?} after `spin`, whose deadline is {DEADLINE:?}: \
             never beside it on a second pool thread"
        );
        let m = loader.metrics(BundleId::new(name).id()).unwrap();
        assert_eq!((m.timeouts, m.errors), (attempts, attempts), "{m:?}");
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
