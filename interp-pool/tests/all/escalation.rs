//! Deadlines that hold: `time.sleep` wakes at the deadline, and a call that swallows its
//! interrupt is interrupted again, then stopped on its next line (`escalate.rs`).

use std::time::{Duration, Instant};

use interp_pool::{install_interruptible_sleep, CallOptions, Error, InterpreterHandle};

use crate::util::*;

fn timeout(ms: u64) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(ms)),
        ..CallOptions::default()
    }
}

/// A deadline of `ms` whose grace (60 s) outlasts the 30 s sleeps below: only the first
/// interrupt can wake them within the test, so a sleep that returns before its own end was
/// woken by it, however long the machine took to deliver it.
fn timeout_once(ms: u64) -> CallOptions {
    CallOptions {
        grace: Some(Duration::from_secs(60)),
        ..timeout(ms)
    }
}

fn with_sleep(name: &str) -> InterpreterHandle {
    let a = spawn(name);
    assert!(
        interp_pool::owns_python(),
        "this binary's Python is the pool's"
    );
    assert!(a.call(install_interruptible_sleep).unwrap());
    a
}

#[test]
fn a_long_sleep_wakes_at_the_deadline_with_the_interrupt_class() {
    within(LIMIT, "sleep deadline", || {
        let a = with_sleep("sleep-deadline");
        run(&a, "import time\nseen = None\ndef nap():\n    global seen\n    try:\n        time.sleep(30)\n    except BaseException as e:\n        seen = type(e).__name__\n        raise\n");
        let t0 = Instant::now();
        let r = a.call_with(&timeout_once(1000), |py| py.eval("nap()").map(|_| ()));
        let took = t0.elapsed();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(took < Duration::from_secs(30), "not woken: {took:?}");
        assert!(took >= Duration::from_millis(1000), "{took:?}");
        assert_eq!(eval_str(&a, "seen"), "DeadlineExceeded");
        // The next call is not hit by anything left over, and sleeps normally.
        let t0 = Instant::now();
        run(&a, "time.sleep(0.05)");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(eval_i64(&a, "1 + 1"), 2);
        a.end();
    });
}

#[test]
fn the_interruptible_sleep_keeps_time_sleeps_semantics() {
    let a = with_sleep("sleep-semantics");
    // Installed once; the original is kept.
    assert!(!a.call(install_interruptible_sleep).unwrap());
    run(&a, "import time, sys\nassert time.sleep is not sys.modules['interp_pool']._original_sleep\nassert time.sleep.__name__ == 'sleep'");
    let t0 = Instant::now();
    run(
        &a,
        "assert time.sleep(0.02) is None\ntime.sleep(0)\ntime.sleep(False)",
    );
    assert!(t0.elapsed() >= Duration::from_millis(20));
    for (expr, kind) in [
        ("time.sleep(-1)", "ValueError"),
        ("time.sleep(-0.5)", "ValueError"),
        ("time.sleep(float('nan'))", "ValueError"),
        ("time.sleep('1')", "TypeError"),
        ("time.sleep(None)", "TypeError"),
        ("time.sleep()", "TypeError"),
        ("time.sleep(1, 2)", "TypeError"),
        ("time.sleep(secs=0)", "TypeError"),
        ("time.sleep(10**30)", "OverflowError"),
    ] {
        let code = format!("try:\n    {expr}\n    r = 'none'\nexcept BaseException as e:\n    r = type(e).__name__\n");
        run(&a, &code);
        assert_eq!(eval_str(&a, "r"), kind, "{expr}");
    }
    // From a thread the plugin started: forwarded to the original (no interrupt aims there).
    a.end();
    // A replaced `time.sleep` is not fought.
    let b = spawn("sleep-replaced");
    run(
        &b,
        "import time\nmine = lambda s: 'mine'\ntime.sleep = mine",
    );
    assert!(!b.call(install_interruptible_sleep).unwrap());
    assert_eq!(eval_str(&b, "time.sleep(1)"), "mine");
    b.end();
}

#[test]
fn a_loop_that_swallows_every_interrupt_is_stopped_and_the_interpreter_serves_on() {
    within(LIMIT, "swallowing loop", || {
        let a = spawn("swallow");
        run(&a, "import sys\nswallowed = 0\ndef stubborn():\n    global swallowed\n    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            swallowed += 1\n");
        let r = a.call_with(&timeout(1000), |py| py.eval("stubborn()").map(|_| ()));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        // Interrupted twice, then stopped by the last step (which may also raise once
        // more into the handler): a count of rounds, whatever each took.
        let swallowed = eval_i64(&a, "swallowed");
        assert!(
            (2..=3).contains(&swallowed),
            "swallowed {swallowed} interrupts: interrupted twice before the last step stops it"
        );
        // The tool is gone and nothing of it is left on the next calls.
        assert_eq!(eval_str(&a, "repr(sys.monitoring.get_tool(4))"), "None");
        run(&a, "def ok():\n    n = 0\n    for i in range(100000):\n        try:\n            n += i\n        except BaseException:\n            pass\n    return n\n");
        assert_eq!(eval_i64(&a, "ok()"), 4_999_950_000);
        assert_eq!(
            a.call_with(&timeout(5000), |py| py.eval("ok()")?.extract_i64(py))
                .unwrap(),
            4_999_950_000
        );
        a.end();
    });
}

#[test]
fn a_host_tracer_is_left_in_place_and_exempt_code_is_not_hit() {
    within(LIMIT, "tracer kept", || {
        let a = spawn("tracer-kept");
        interp_pool::exempt_from_interrupt_tracing("<exempt-helper>");
        run(&a, "import sys\nevents = 0\ndef tracer(frame, event, arg):\n    global events\n    events += 1\n    return None\nsys.settrace(tracer)\n");
        // A helper compiled under an exempt name swallows in a bounded loop: if the last
        // step hit it, it would never finish its count.
        run(&a, "exec(compile('def helper():\\n    done = 0\\n    for _ in range(2000):\\n        try:\\n            done += 1\\n        except BaseException:\\n            pass\\n    return done\\n', '<exempt-helper>', 'exec'))\nhelped = []\ndef stubborn():\n    while True:\n        try:\n            while True:\n                helped.append(helper())\n        except BaseException:\n            pass\n");
        let r = a.call_with(&timeout(300), |py| py.eval("stubborn()").map(|_| ()));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert_eq!(eval_str(&a, "repr(sys.gettrace() is tracer)"), "True");
        assert!(eval_i64(&a, "events") > 0);
        assert_eq!(eval_i64(&a, "len([h for h in helped if h != 2000])"), 0);
        run(&a, "sys.settrace(None)");
        a.end();
    });
}

#[test]
fn a_job_served_while_the_interrupted_call_waits_is_not_hit() {
    within(LIMIT, "nested job untouched", || {
        let a = with_sleep("escalate-nested-a");
        let b = spawn("escalate-nested-b");
        // Runs for 1 s in a nested job on `a`, well past the outer call's deadline and
        // both grace periods, counting what it had to swallow (nothing, if untouched).
        run(&a, "import time\ndef busy():\n    hit = 0\n    end = time.monotonic() + 1.0\n    while time.monotonic() < end:\n        try:\n            time.sleep(0.001)\n        except BaseException:\n            hit += 1\n    return hit\n");
        let (a2, b2) = (a.clone(), b.clone());
        let t0 = Instant::now();
        let r = a.call_with(&timeout(200), move |_py| {
            let hits = b2.call(move |_| a2.call(|py| py.eval("busy()")?.extract_i64(py)))?;
            Ok(hits)
        });
        // The nested job finished untouched (it swallowed nothing). The outer call runs no
        // more Python after it, so its deferred interrupt has nothing to land in: it
        // returns the nested result (or the timeout, had it run Python again).
        assert!(t0.elapsed() >= Duration::from_millis(1000));
        match r {
            Ok(0) | Err(Error::Timeout { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            eval_i64(&a, "busy()"),
            0,
            "and a plain call afterwards neither"
        );
        a.end();
        b.end();
    });
}

#[test]
fn a_long_sleep_wakes_at_the_deadline_in_a_shared_gil_interpreter() {
    within(LIMIT, "sleep deadline (shared gil)", || {
        let a = spawn_with(interp_pool::InterpreterConfig {
            gil: interp_pool::GilMode::Shared,
            ..interp_pool::InterpreterConfig::named("sleep-shared")
        });
        assert!(a.call(install_interruptible_sleep).unwrap());
        run(&a, "import time");
        let t0 = Instant::now();
        let r = a.call_with(&timeout_once(1000), |py| {
            py.eval("time.sleep(30)").map(|_| ())
        });
        let took = t0.elapsed();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(took < Duration::from_secs(30), "not woken: {took:?}");
        a.end();
    });
}
