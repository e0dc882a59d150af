//! Interrupts belong to a call: a deadline never lands in another caller's call, the
//! cleanup runs on every exit (panics included), and no option value overflows or spins.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

use interp_pool::{CallOptions, CancelToken, Error, InterpreterHandle, MIN_GRACE};

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
        let (gate, held) = gate();
        let outer = {
            let (a, b) = (a.clone(), b.clone());
            thread::spawn(move || {
                a.call_with(&short(), move |py| {
                    b.call(move |_| {
                        held.hold();
                        Ok(())
                    })?;
                    py.run("while True:\n    pass\n")
                })
            })
        };
        quick_calls_through_the_rounds(&a, gate);
        let r = outer.join().unwrap();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert_eq!(eval_i64(&a, "1 + 1"), 2);
        a.end();
        b.end();
    });
}

/// The same through a `ctypes.CFUNCTYPE` call, which releases the GIL before entering
/// Rust: A's owner starts its nested wait detached (the loader's guest-to-host path).
#[test]
fn a_deadline_never_lands_in_a_call_served_from_a_wait_entered_through_ctypes() {
    const TEST: &str =
        "interrupts::a_deadline_never_lands_in_a_call_served_from_a_wait_entered_through_ctypes";
    within(LIMIT, "deadline during a ctypes nested wait", || {
        let a = spawn_with(ctypes_config(TEST, "d2c-a"));
        let b = spawn("d2c-b");
        let (gate, held) = gate();
        *PEER.lock().unwrap() = Some((b.clone(), held));
        let addr = hop as extern "C" fn() -> i64 as usize;
        run(
            &a,
            &format!("import ctypes\nhop = ctypes.CFUNCTYPE(ctypes.c_int64)({addr})\n"),
        );
        let outer = {
            let a = a.clone();
            thread::spawn(move || {
                a.call_with(&short(), |py| {
                    py.run("assert hop() == 1\nwhile True:\n    pass\n")
                })
            })
        };
        quick_calls_through_the_rounds(&a, gate);
        let r = outer.join().unwrap();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert_eq!(eval_i64(&a, "1 + 1"), 2);
        *PEER.lock().unwrap() = None;
        a.end();
        b.end();
    });
}

static PEER: Mutex<Option<(InterpreterHandle, Held)>> = Mutex::new(None);

/// Called by A's guest through ctypes (detached): waits on B, held by the test's gate.
extern "C" fn hop() -> i64 {
    let Some((b, held)) = PEER.lock().unwrap().take() else {
        return -1;
    };
    match b.call(move |_| {
        held.hold();
        Ok(())
    }) {
        Ok(()) => 1,
        Err(_) => -2,
    }
}

fn short() -> CallOptions {
    opts(Duration::from_millis(30), Duration::from_millis(10))
}

/// The test's side of a gate that holds B's call: entered, then released.
struct Gate {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

/// B's side of the gate.
struct Held {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

fn gate() -> (Gate, Held) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let held = Held {
        entered: entered_tx,
        release: release_rx,
    };
    (Gate { entered, release }, held)
}

impl Held {
    fn hold(self) {
        self.entered.send(()).unwrap();
        let _ = self.release.recv();
    }
}

/// Once B's call is held: after each of A's interrupter rounds (counted by the interrupter
/// after it raised or deferred), quick calls of A from this thread and another, served by
/// A's owner from its nested wait; none may fail. Then releases B.
fn quick_calls_through_the_rounds(a: &InterpreterHandle, gate: Gate) {
    gate.entered.recv().unwrap();
    let quick = |a: &InterpreterHandle, round: u64, k: i64| {
        for i in 0..20 {
            let r = a.call(move |py| py.eval(&format!("{i} * {k}"))?.extract_i64(py));
            assert!(matches!(r, Ok(v) if v == i * k), "round {round}: {r:?}");
        }
    };
    let helper = {
        let a = a.clone();
        thread::spawn(move || {
            for round in 1..=5 {
                wait_until(|| a.interrupt_rounds() >= round);
                quick(&a, round, 3);
            }
        })
    };
    for round in 1..=5 {
        wait_until(|| a.interrupt_rounds() >= round);
        quick(a, round, 2);
    }
    helper.join().unwrap();
    gate.release.send(()).unwrap();
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
