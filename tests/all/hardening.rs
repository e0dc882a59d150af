//! Deadlines, cancellation, backpressure and metrics through the loader, plus the stress
//! and bad-input cases of the hardening suite (bounded in time; every result checked).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use polyplug_abi::{AbiError, AbiErrorCode};
use polyplug_subinterp::{
    with_call_options, CallOptions, CancelToken, InterpreterMode, PythonConfig, PythonLoader,
    WhenFull, BUSY_MESSAGE, CANCELLED_MESSAGE, TIMEOUT_MESSAGE,
};

use crate::core_api::host::host_callers::{CalculatorContract, CounterContract, PipelineContract};
use crate::support::*;

fn message(e: &AbiError) -> &[u8] {
    // SAFETY: loader messages are static byte strings.
    unsafe { std::slice::from_raw_parts(e.message.ptr, e.message.len) }
}

const SPINNER: &str = r#"
state = {"cleanups": 0}
def spin(impl, args, out, arena, alloc):
    started = i64_at(args)
    if started:  # a Rust `extern "C" fn()` to tell the test the call is running
        ctypes.CFUNCTYPE(None)(started)()
    try:
        while True:
            pass
    finally:
        state["cleanups"] += 1
def echo(impl, args, out, arena, alloc):
    put_i64(out, i64_at(args))
def cleanups(impl, args, out, arena, alloc):
    put_i64(out, state["cleanups"])
"#;

fn spinner(
    config: PythonConfig,
    name: &str,
) -> (std::sync::Arc<polyplug::runtime::Runtime>, PythonLoader) {
    let loader = PythonLoader::new(config);
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    let src = plugin_source(&format!("{name}@1"), SPINNER, "spin, echo, cleanups");
    load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).unwrap();
    (rt, loader)
}

#[test]
fn an_endless_loop_with_a_deadline_times_out_and_the_bundle_answers_next() {
    within("deadline", || {
        let (rt, loader) = spinner(
            PythonConfig {
                bundle_timeouts: [("spinner".to_owned(), Some(Duration::from_millis(100)))].into(),
                ..PythonConfig::default()
            },
            "spinner",
        );
        let e = call_abi(&rt, "spinner", 0, 0).unwrap_err();
        assert_eq!(e.code, AbiErrorCode::Generic as u32);
        assert_eq!(message(&e), TIMEOUT_MESSAGE);
        assert_eq!(
            call_abi(&rt, "spinner", 1, 41).ok(),
            Some(41),
            "the next call is served"
        );
        assert_eq!(
            call_abi(&rt, "spinner", 2, 0).ok(),
            Some(1),
            "the finally block ran"
        );
        let m = loader
            .metrics(polyplug_utils::BundleId::new("spinner").id())
            .unwrap();
        assert_eq!((m.calls, m.errors, m.timeouts), (3, 1, 1), "{m:?}");
        assert!(m.run_p99 >= Duration::from_millis(100), "{m:?}");
        assert_eq!(m.in_flight, 0);
    });
}

const STUBBORN: &str = r#"
import time
def nap(impl, args, out, arena, alloc):
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
    print("echo", i64_at(args))
    put_i64(out, i64_at(args))
def swallowed(impl, args, out, arena, alloc):
    put_i64(out, SWALLOWED[0])
"#;

/// With a 1 s deadline, `time.sleep(30)` is woken by the first interrupt (its call given
/// a grace longer than the sleep, so nothing else can end it early) and a loop that
/// swallows every interrupt is stopped after two (counted, whatever the time each round
/// took); the bundle and a bystander answer after, and the overrun is metered, never
/// more than the test itself measured.
fn deadlines_hold(mode: InterpreterMode, tag: &str) {
    let name = format!("stubborn_{tag}");
    let loader = PythonLoader::new(PythonConfig {
        call_timeout: Some(Duration::from_secs(1)),
        bundle_modes: [(name.clone(), mode)].into(),
        ..PythonConfig::default()
    });
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    let fns = "nap, swallow, echo, swallowed";
    let src = plugin_source(&format!("{name}@1"), STUBBORN, fns);
    load_dir(&loader, &rt, &write_bundle(&name, &src, &[]).1).unwrap();
    let bystander = format!("bystander_{tag}");
    let src = plugin_source(&format!("{bystander}@1"), STUBBORN, fns);
    load_dir(&loader, &rt, &write_bundle(&bystander, &src, &[]).1).unwrap();
    let mut longest = Duration::ZERO;
    for f in [0, 1] {
        let t0 = std::time::Instant::now();
        let e = match f {
            // `call_timeout`'s deadline, with a grace outlasting the sleep.
            0 => with_call_options(
                CallOptions {
                    timeout: Some(Duration::from_secs(1)),
                    grace: Some(Duration::from_secs(60)),
                    ..CallOptions::default()
                },
                || call_abi(&rt, &name, f, 0),
            ),
            _ => call_abi(&rt, &name, f, 0),
        }
        .unwrap_err();
        let took = t0.elapsed();
        longest = longest.max(took);
        assert_eq!(message(&e), TIMEOUT_MESSAGE, "fn {f}");
        if f == 0 {
            assert!(
                took < Duration::from_secs(30),
                "the sleep was not woken: {took:?}"
            );
        } else {
            let swallowed = call_i64(&rt, &name, 3, 0);
            assert!(
                matches!(swallowed, Ok(2..=3)),
                "swallowed {swallowed:?}: interrupted twice, then stopped by the last step"
            );
        }
        assert_eq!(
            call_abi(&rt, &name, 2, 41).ok(),
            Some(41),
            "fn {f}: answers after"
        );
        assert_eq!(
            call_abi(&rt, &bystander, 2, 7).ok(),
            Some(7),
            "fn {f}: bystander"
        );
    }
    let m = loader
        .metrics(polyplug_utils::BundleId::new(&name).id())
        .unwrap();
    assert_eq!(m.timeouts, 2, "{m:?}");
    assert!(m.deadline_overrun_max > Duration::ZERO, "{m:?}");
    assert!(
        m.deadline_overrun_max <= longest.saturating_sub(Duration::from_secs(1)),
        "metered past what the test measured ({longest:?} for a 1 s deadline): {m:?}"
    );
    assert!(m.deadline_overrun_p99 > Duration::ZERO, "{m:?}");
    assert!(m.deadline_overrun_p99 <= m.deadline_overrun_max, "{m:?}");
}

/// One test, one mode after the other: on CPython 3.12 (where own_gil falls back to
/// shared_gil) a `shared_gil` interpreter and `main` share a GIL whose drop requests only
/// reach the requesting interpreter's threads, so the other mode's spinning loop would
/// starve this one's interrupter (ARCHITECTURE.md, Known limits).
#[test]
fn deadlines_hold_against_sleep_and_swallowing_loops() {
    within("deadlines hold", || {
        deadlines_hold(InterpreterMode::OwnGil, "own");
        deadlines_hold(InterpreterMode::Main, "main");
    });
}

#[test]
fn a_host_cancels_a_call_from_another_thread() {
    within("cancel", || {
        let (rt, _loader) = spinner(PythonConfig::default(), "spinner_c");
        let token = CancelToken::new();
        // `spin` calls this first: the canceller fires once the call is running.
        static STARTED: AtomicBool = AtomicBool::new(false);
        extern "C" fn started() {
            STARTED.store(true, Ordering::SeqCst);
        }
        let canceller = std::thread::spawn({
            let token = token.clone();
            move || {
                wait_until(|| STARTED.load(Ordering::SeqCst));
                token.cancel();
            }
        });
        let opts = CallOptions {
            timeout: None,
            cancel: Some(token),
            ..CallOptions::default()
        };
        let r = with_call_options(opts, || {
            call_abi(
                &rt,
                "spinner_c",
                0,
                started as extern "C" fn() as usize as i64,
            )
        });
        canceller.join().unwrap();
        let e = r.unwrap_err();
        assert_eq!(message(&e), CANCELLED_MESSAGE);
        // Outside the scope: no options, a plain call.
        assert_eq!(call_abi(&rt, "spinner_c", 1, 7).ok(), Some(7));
    });
}

#[test]
fn a_flood_against_a_small_queue_is_refused_or_waits_as_configured() {
    within("flood", || {
        for when_full in [WhenFull::Fail, WhenFull::Block] {
            let loader = PythonLoader::new(PythonConfig {
                queue_capacity: 2,
                when_full,
                ..PythonConfig::default()
            });
            let (rt, _logs) = runtime_with(loader.clone(), &[]);
            let src = plugin_source(
                "slow@1",
                "import time\ndef slow(impl, args, out, arena, alloc):\n    time.sleep(0.002)\n    put_i64(out, i64_at(args))\n",
                "slow",
            );
            load_dir(&loader, &rt, &write_bundle("slow", &src, &[]).1).unwrap();
            let rss0 = rss_mib();
            let (ok, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
            std::thread::scope(|s| {
                for t in 0..8 {
                    let (rt, ok, busy) = (&rt, &ok, &busy);
                    s.spawn(move || {
                        for i in 0..25 {
                            match call_abi(rt, "slow", 0, t * 100 + i) {
                                Ok(v) => {
                                    assert_eq!(v, t * 100 + i);
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    assert_eq!(message(&e), BUSY_MESSAGE);
                                    busy.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            });
            let (ok, busy) = (ok.into_inner(), busy.into_inner());
            assert_eq!(ok + busy, 200);
            let m = loader
                .metrics(polyplug_utils::BundleId::new("slow").id())
                .unwrap();
            assert_eq!((m.calls, m.busy), (200, busy as u64), "{m:?}");
            match when_full {
                WhenFull::Fail => assert!(busy > 0, "8 threads against room for 2"),
                WhenFull::Block => assert_eq!(busy, 0),
            }
            assert!(rss_mib() < rss0 + 64.0, "memory stays flat under the flood");
        }
    });
}

#[test]
fn eight_threads_three_bundles_nested_calls_nothing_lost() {
    within("stress 8x3", || {
        let loader = PythonLoader::default();
        let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
        let done = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8i64 {
                let (rt, done) = (&rt, &done);
                s.spawn(move || {
                    let host = host(rt);
                    let mut p = PipelineContract::new(find(rt, "pipeline"), host).unwrap();
                    let mut c = CalculatorContract::new(find(rt, "calculator"), host).unwrap();
                    let mut k = CounterContract::new(find(rt, "counter"), host).unwrap();
                    let mut expected = 0;
                    for i in 0..stress(100) as i64 {
                        assert_eq!(p.run(t, i).unwrap(), (t + i) * 2, "nested py->py");
                        assert_eq!(c.mul(t, i).unwrap(), t * i);
                        expected += i;
                        assert_eq!(k.increment(i).unwrap(), expected, "own instance");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(done.into_inner(), 8 * stress(100));
        let calc = loader
            .metrics(polyplug_utils::BundleId::new("py_calculator").id())
            .unwrap();
        assert_eq!(calc.errors, 0);
        assert_eq!(calc.max_depth, 2, "called from pipeline: depth 2");
        assert!(calc.calls >= 3 * 8 * stress(100) as u64, "{calc:?}");
    });
}

#[test]
fn unload_while_calls_are_in_flight_gives_answers_or_stale_never_a_hang() {
    within("unload in flight", || {
        let (rt, _logs) = fixture_runtime();
        let (_, dir) = write_bundle(
            "busy_unload",
            &plugin_source(
                "busyunload@1",
                "import time\ndef f(impl, args, out, arena, alloc):\n    time.sleep(0.001)\n    put_i64(out, i64_at(args) + 1)\n",
                "f",
            ),
            &[],
        );
        rt.load_bundle(&dir).unwrap();
        // In flight: answers have begun; 800 calls of >= 1 ms, served one at a time, are far
        // from done when the unload starts.
        let (answers, stale) = unload_during_calls(&rt, "busyunload", "busy_unload", 4, 1);
        assert_eq!(answers + stale, 800);
        // The other bundles never noticed.
        let calc = resolve(&rt, "calculator", 1);
        let (args, mut out) = ([20i64, 22], 0i64);
        let e = vm_call(
            calc,
            null_instance(calc),
            0,
            args.as_ptr().cast(),
            (&mut out as *mut i64).cast(),
            std::ptr::null_mut(),
        );
        assert!(e.is_ok() && out == 42);
    });
}

#[test]
fn malformed_bundles_are_typed_errors_and_leave_others_working() {
    let (rt, loader, _) = empty_runtime();
    let good = plugin_source(
        "hgood@1",
        "def f(impl, args, out, arena, alloc):\n    put_i64(out, 5)\n",
        "f",
    );
    load_dir(&loader, &rt, &write_bundle("hgood", &good, &[]).1).unwrap();
    let huge_fns = format!(
        "{}\n",
        plugin_source(
            "huge@1",
            "def f(impl, args, out, arena, alloc):\n    put_i64(out, 9)\n",
            &vec!["f"; 10_000].join(", ")
        )
    );
    let cases: Vec<(&str, String)> = vec![
        ("h_sysexit_import", "import sys\nsys.exit(3)\n".into()),
        ("h_kbint_init", "def polyplug_init(h, c):\n    raise KeyboardInterrupt\n".into()),
        ("h_recursion", "def r(n):\n    return r(n + 1)\ndef polyplug_init(h, c):\n    return r(0)\n".into()),
        ("h_factory_raises", "class Ok:\n    code = 0\ndef bad(h):\n    raise RuntimeError('no')\ndef polyplug_init(h, c):\n    return ([{'contract': 'fr@1', 'factory': bad, 'functions': []}], Ok())\n".into()),
        ("h_none_functions", "class Ok:\n    code = 0\ndef polyplug_init(h, c):\n    return ([{'contract': 'nf@1', 'factory': lambda h: None, 'functions': [None]}], Ok())\n".into()),
        ("h_generator", "def polyplug_init(h, c):\n    yield 1\n".into()),
    ];
    for (name, src) in &cases {
        match load_dir(&loader, &rt, &write_bundle(name, src, &[]).1) {
            Err(polyplug::error::LoaderError::InitFailed { error, .. }) => {
                assert!(!error.is_empty(), "{name}");
            }
            other => panic!("{name}: expected InitFailed, got {other:?}"),
        }
    }
    // A huge function list loads and dispatches the last one.
    load_dir(&loader, &rt, &write_bundle("h_huge", &huge_fns, &[]).1).unwrap();
    assert_eq!(call_abi(&rt, "huge", 9_999, 0).ok(), Some(9));
    assert_eq!(
        call_abi(&rt, "huge", 10_000, 0).unwrap_err().code,
        AbiErrorCode::FunctionNotAvailable as u32
    );
    assert_eq!(
        call_abi(&rt, "hgood", 0, 0).ok(),
        Some(5),
        "the good bundle kept working"
    );
}
