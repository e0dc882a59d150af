//! Interrupts belong to a call: a deadline never lands in another caller's call, the
//! cleanup runs on every exit (panics included), and no option value overflows or spins.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use interp_pool::{CallOptions, CancelToken, Error, MIN_GRACE};

use crate::util::*;

fn opts(timeout: Duration, grace: Duration) -> CallOptions {
    CallOptions {
        timeout: Some(timeout),
        cancel: None,
        grace: Some(grace),
    }
}

/// A's call has a short deadline and waits nested on B, whose call is held by a gate until
/// A's interrupter has gone round several times; meanwhile A's owner serves other callers'
/// quick calls from its nested wait, right after each round. None of them may fail; A's
/// call gets its timeout once B returns and it runs Python again.
#[test]
fn a_deadline_never_lands_in_a_call_served_from_its_nested_wait() {
    within(LIMIT, "deadline during a nested wait", || {
        let a = spawn("d2-a");
        let b = spawn("d2-b");
        let (b_started_tx, b_started_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let outer = {
            let (a, b) = (a.clone(), b.clone());
            thread::spawn(move || {
                let opts = opts(Duration::from_millis(30), Duration::from_millis(10));
                a.call_with(&opts, move |py| {
                    b.call(move |_| {
                        b_started_tx.send(()).unwrap();
                        let _ = release_rx.recv();
                        Ok(())
                    })?;
                    py.run("while True:\n    pass\n")
                })
            })
        };
        b_started_rx.recv().unwrap();
        let quick = |n: i64| a.call(move |py| py.eval(&format!("{n} + 1"))?.extract_i64(py));
        let helper = {
            let a = a.clone();
            thread::spawn(move || {
                for round in 1..=5 {
                    wait_until(|| a.interrupt_rounds() >= round);
                    for i in 0..20 {
                        let r = a.call(move |py| py.eval(&format!("{i} * 2"))?.extract_i64(py));
                        assert_eq!(r.unwrap(), i * 2, "helper call after round {round}");
                    }
                }
            })
        };
        for round in 1..=5 {
            // Counted by the interrupter after each attempt: the quick calls below are
            // served after it, from A's nested wait.
            wait_until(|| a.interrupt_rounds() >= round);
            for i in 0..20 {
                let r = quick(i);
                assert!(matches!(r, Ok(v) if v == i + 1), "round {round}: {r:?}");
            }
        }
        helper.join().unwrap();
        release_tx.send(()).unwrap();
        let r = outer.join().unwrap();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert_eq!(eval_i64(&a, "1 + 1"), 2);
        a.end();
        b.end();
    });
}

/// A panic in an interruptible call's closure after its deadline fired and the last step
/// (the `sys.monitoring` tool) stopped its swallowing loop: the interrupter thread ends,
/// the tool is off, and the next calls run untouched.
#[test]
fn a_panic_inside_an_interruptible_call_leaves_nothing_behind() {
    within(LIMIT, "panic after escalation", || {
        let a = spawn("d3-panic");
        run(&a, "import sys\ndef stubborn():\n    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n");
        let opts = opts(Duration::from_millis(30), Duration::from_millis(10));
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            a.call_with::<(), _>(&opts, |py| {
                // Only the tool stops this loop: it returns once the escalation is on.
                let stopped = py.eval("stubborn()");
                assert!(stopped.is_err(), "{stopped:?}");
                panic!("closure panics with the tool on");
            })
        }));
        assert!(r.is_err(), "the panic resumed on the caller");
        wait_until(|| a.live_interrupters() == 0);
        assert_eq!(eval_str(&a, "repr(sys.monitoring.get_tool(4))"), "None");
        run(&a, "def ok():\n    n = 0\n    for i in range(100000):\n        try:\n            n += i\n        except BaseException:\n            pass\n    return n\n");
        assert_eq!(eval_i64(&a, "ok()"), 4_999_950_000);
        let long = opts_with_timeout(Duration::from_secs(60));
        assert_eq!(
            a.call_with(&long, |py| py.eval("ok()")?.extract_i64(py))
                .unwrap(),
            4_999_950_000
        );
        a.end();
    });
}

fn opts_with_timeout(timeout: Duration) -> CallOptions {
    CallOptions {
        timeout: Some(timeout),
        ..CallOptions::default()
    }
}

/// `Duration::MAX` cannot be added to an `Instant`: it is no deadline, not a panic.
#[test]
fn an_unrepresentable_timeout_is_no_deadline() {
    within(LIMIT, "timeout MAX", || {
        let a = spawn("d8-timeout-max");
        let max = opts_with_timeout(Duration::MAX);
        assert_eq!(
            a.call_with(&max, |py| py.eval("6 * 7")?.extract_i64(py))
                .unwrap(),
            42
        );
        // Still cancellable.
        let token = CancelToken::new();
        let both = CallOptions {
            cancel: Some(token.clone()),
            ..opts_with_timeout(Duration::MAX)
        };
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let caller = {
            let a = a.clone();
            thread::spawn(move || {
                a.call_with(&both, move |py| {
                    started_tx.send(()).unwrap();
                    py.run("while True:\n    pass\n")
                })
            })
        };
        started_rx.recv().unwrap();
        token.cancel();
        let r = caller.join().unwrap();
        assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
        assert_eq!(eval_i64(&a, "1 + 1"), 2);
        a.end();
    });
}

/// A grace period too long to add to an `Instant` waits for the call without a bound: the
/// first interrupt stops a plain loop and the interrupter ends with the call.
#[test]
fn a_huge_grace_does_not_overflow() {
    within(LIMIT, "grace MAX", || {
        let a = spawn("d8-grace-max");
        let r = a.call_with(&opts(Duration::from_millis(20), Duration::MAX), |py| {
            py.run("while True:\n    pass\n")
        });
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        wait_until(|| a.live_interrupters() == 0);
        assert_eq!(eval_i64(&a, "1 + 1"), 2);
        a.end();
    });
}

/// A zero grace is clamped to [`MIN_GRACE`] (the interrupter does not spin) and the
/// escalation still stops a loop that swallows every interrupt.
#[test]
fn a_zero_grace_is_clamped_and_still_stops_a_swallowing_loop() {
    assert_eq!(
        opts(Duration::ZERO, Duration::ZERO).effective_grace(),
        MIN_GRACE
    );
    assert_eq!(
        CallOptions::default().effective_grace(),
        interp_pool::DEFAULT_GRACE
    );
    assert_eq!(
        opts(Duration::ZERO, Duration::MAX).effective_grace(),
        Duration::MAX
    );
    within(LIMIT, "grace zero", || {
        let a = spawn("d8-grace-zero");
        run(&a, "def stubborn():\n    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n");
        let r = a.call_with(&opts(Duration::from_millis(20), Duration::ZERO), |py| {
            py.eval("stubborn()").map(|_| ())
        });
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        wait_until(|| a.live_interrupters() == 0);
        assert_eq!(eval_i64(&a, "1 + 1"), 2);
        a.end();
    });
}
