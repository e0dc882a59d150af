//! Deadlines, cancellation and the bounded queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use interp_pool::{CallOptions, CancelToken, Error, InterpreterConfig, WhenFull};

use crate::util::*;

fn timeout(ms: u64) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(ms)),
        cancel: None,
        ..CallOptions::default()
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
            ..CallOptions::default()
        };
        // The canceller fires once the call is running (the job says so), not after a guess.
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let canceller = std::thread::spawn({
            let token = token.clone();
            move || {
                started_rx.recv().unwrap();
                token.cancel();
            }
        });
        let r = a.call_with(&opts, move |py| {
            started_tx.send(()).unwrap();
            py.eval("spin()").map(|_| ())
        });
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
        let probe = spawn("deadline-probe");
        run(&a, "runs = 0");
        run(&probe, "def spin():\n    while True:\n        pass\n");
        let (release, holder) = hold(&a);
        let timed = {
            let a = a.clone();
            std::thread::spawn(move || a.call_with(&timeout(50), |py| py.run("runs += 1")))
        };
        // Queued behind the held job, so its deadline is armed.
        wait_until(|| a.queue_len() == 1);
        // A later deadline of the same length, on a call that runs: the one deadline thread
        // fires deadlines in order, so once this one has interrupted its call, the queued
        // call's deadline has fired too.
        let r = probe.call_with(&timeout(50), |py| py.eval("spin()").map(|_| ()));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        release.send(()).unwrap();
        let r = timed.join().unwrap();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        holder.join().unwrap();
        assert_eq!(eval_i64(&a, "runs"), 0);
        probe.end();
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
            run(&a, "done = 0");
            let (ok, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let call = || match a.call(|py| py.run("done += 1")) {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(Error::Busy { capacity: 4, .. }) => busy.fetch_add(1, Ordering::Relaxed),
                Err(e) => panic!("{e:?}"),
            };
            // The owner is held in a job: nothing queued below runs until it is released.
            let (release, holder) = hold(&a);
            std::thread::scope(|s| {
                // Exactly fill the queue ...
                for _ in 0..4 {
                    s.spawn(call);
                }
                wait_until(|| a.queue_len() == 4);
                // ... so the next 12 find it full.
                let late: Vec<_> = (0..12).map(|_| s.spawn(call)).collect();
                if when_full == WhenFull::Fail {
                    // Refused at once: they return while the owner is still held.
                    for t in late {
                        t.join().unwrap();
                    }
                }
                release.send(()).unwrap();
            });
            holder.join().unwrap();
            let (ok, busy) = (ok.into_inner(), busy.into_inner());
            assert_eq!(ok + busy, 16);
            assert_eq!(eval_i64(&a, "done") as usize, ok);
            match when_full {
                WhenFull::Fail => assert_eq!(busy, 12, "{busy} busy of 16 with room for 4"),
                WhenFull::Block => assert_eq!(busy, 0),
            }
            a.end();
        }
    });
}
