//! Deadlines, cancellation and the bounded queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use interp_pool::{CallOptions, CancelToken, Error, InterpreterConfig, WhenFull};

use crate::util::*;

fn timeout(ms: u64) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(ms)),
        cancel: None,
    }
}

#[test]
fn an_endless_loop_times_out_finally_runs_and_the_interpreter_serves_on() {
    within(LIMIT, "endless loop deadline", || {
        let a = spawn("deadline-loop");
        run(&a, "cleaned = 0\ndef spin():\n    global cleaned\n    try:\n        while True:\n            pass\n    finally:\n        cleaned += 1\n");
        let t0 = Instant::now();
        let r = a.call_with(&timeout(100), |py| py.eval("spin()").map(|_| ()));
        let took = t0.elapsed();
        assert!(
            matches!(r, Err(Error::Timeout { after }) if after == Duration::from_millis(100)),
            "{r:?}"
        );
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert_eq!(eval_i64(&a, "cleaned"), 1, "the finally block ran");
        // Next calls are unaffected (no leftover async exception).
        for i in 0..50 {
            assert_eq!(eval_i64(&a, &format!("{i} + 1")), i + 1);
        }
        // `except Exception` does not swallow the interrupt.
        run(&a, "def stubborn():\n    while True:\n        try:\n            while True:\n                pass\n        except Exception:\n            pass\n");
        let r = a.call_with(&timeout(50), |py| py.eval("stubborn()").map(|_| ()));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        a.end();
    });
}

#[test]
fn a_fast_call_with_a_deadline_returns_its_result() {
    let a = spawn("deadline-fast");
    for i in 0..stress(2000) as i64 {
        let v = a
            .call_with(&timeout(5_000), move |py| {
                py.eval(&format!("{i} * 2"))?.extract_i64(py)
            })
            .unwrap();
        assert_eq!(v, i * 2);
    }
    a.end();
}

#[test]
fn cancel_from_another_thread_interrupts_and_is_distinct_from_timeout() {
    within(LIMIT, "cancel", || {
        let a = spawn("cancel-me");
        run(&a, "def spin():\n    while True:\n        pass\n");
        let token = CancelToken::new();
        let opts = CallOptions {
            timeout: Some(Duration::from_secs(60)),
            cancel: Some(token.clone()),
        };
        let canceller = std::thread::spawn({
            let token = token.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                token.cancel();
            }
        });
        let r = a.call_with(&opts, |py| py.eval("spin()").map(|_| ()));
        canceller.join().unwrap();
        assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
        // A cancelled token fails later calls at once, without running them.
        let r = a.call_with(&opts, |py| py.run("ran = True"));
        assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
        assert_eq!(eval_str(&a, "str(globals().get('ran'))"), "None");
        assert_eq!(eval_i64(&a, "2 + 2"), 4);
        a.end();
    });
}

#[test]
fn a_queued_call_past_its_deadline_never_runs() {
    within(LIMIT, "queued deadline", || {
        let a = spawn("deadline-queued");
        run(&a, "import time\nruns = 0");
        let blocker = {
            let a = a.clone();
            std::thread::spawn(move || a.call(|py| py.run("time.sleep(0.3)")))
        };
        std::thread::sleep(Duration::from_millis(50));
        let r = a.call_with(&timeout(50), |py| py.run("runs += 1"));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        blocker.join().unwrap().unwrap();
        assert_eq!(eval_i64(&a, "runs"), 0);
        a.end();
    });
}

#[test]
fn a_full_queue_fails_fast_or_blocks_as_configured() {
    within(LIMIT, "backpressure", || {
        for when_full in [WhenFull::Fail, WhenFull::Block] {
            let a = spawn_with(InterpreterConfig {
                queue_capacity: 4,
                when_full,
                ..InterpreterConfig::named("small-queue")
            });
            run(&a, "import time\ndone = 0");
            let gate = {
                let a = a.clone();
                std::thread::spawn(move || a.call(|py| py.run("time.sleep(0.2)")))
            };
            std::thread::sleep(Duration::from_millis(30));
            let (ok, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
            std::thread::scope(|s| {
                for _ in 0..16 {
                    s.spawn(|| match a.call(|py| py.run("done += 1")) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(Error::Busy { capacity: 4, .. }) => {
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("{e:?}"),
                    });
                }
            });
            gate.join().unwrap().unwrap();
            let (ok, busy) = (ok.into_inner(), busy.into_inner());
            assert_eq!(ok + busy, 16);
            assert_eq!(eval_i64(&a, "done") as usize, ok);
            match when_full {
                WhenFull::Fail => assert!(busy >= 12 - 1, "{busy} busy of 16 with room for 4"),
                WhenFull::Block => assert_eq!(busy, 0),
            }
            a.end();
        }
    });
}
