//! The main interpreter's thread pool and its lanes: limits hold, re-entry does not count
//! again, deadlines hit the thread running the call, a lane ends with calls in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use interp_pool::{CallOptions, Error, InterpreterConfig, MainLane};

use crate::util::*;

fn lane(name: &str, limit: usize) -> MainLane {
    MainLane::new(&InterpreterConfig::named(name), limit).expect("main lane")
}

/// `calls` calls from `threads` host threads, each holding the lane for `hold` while the
/// GIL is released (`time.sleep`); returns the most calls that ran at once.
fn most_at_once(lane: &MainLane, threads: usize, calls: usize, hold: Duration) -> usize {
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    std::thread::scope(|s| {
        for t in 0..threads {
            let (lane, now, most) = (lane.clone(), Arc::clone(&now), Arc::clone(&most));
            s.spawn(move || {
                for i in 0..calls {
                    let v = lane
                        .call(|py| {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            let r =
                                py.run(&format!("import time; time.sleep({})", hold.as_secs_f64()));
                            now.fetch_sub(1, Ordering::SeqCst);
                            r?;
                            py.eval(&format!("{t} * 1000 + {i}"))?.extract_i64(py)
                        })
                        .unwrap();
                    assert_eq!(v, (t * 1000 + i) as i64);
                }
            });
        }
    });
    most.load(Ordering::SeqCst)
}

#[test]
fn a_lane_never_runs_more_calls_at_once_than_its_limit() {
    within(LIMIT, "lane limits", || {
        let one = lane("lane-limit-1", 1);
        assert_eq!(most_at_once(&one, 4, 5, Duration::from_millis(2)), 1);
        one.end();
        if interp_pool::main_threads() < 2 {
            return note("lane limits", "the main pool has one thread here");
        }
        let two = lane("lane-limit-2", 2);
        assert_eq!(two.limit(), 2);
        let m = most_at_once(&two, 4, 5, Duration::from_millis(5));
        assert!(m <= 2, "{m} calls at once with a limit of 2");
        // And it is reached: two calls that return only once both run (other tests'
        // calls holding a seat only delay the meeting). A Python barrier: waiting, it
        // lets go of the main GIL the other call needs.
        run_main(
            &two,
            "import threading\nlane_limit_meet = threading.Barrier(2, timeout=30)",
        );
        std::thread::scope(|s| {
            for _ in 0..2 {
                let two = &two;
                s.spawn(move || run_main(two, "lane_limit_meet.wait()"));
            }
        });
        // Lowered at run time: later calls respect it.
        two.set_limit(1);
        assert_eq!(most_at_once(&two, 4, 3, Duration::from_millis(2)), 1);
        two.end();
    });
}

/// Runs `code` in the main interpreter through `lane`, panicking on an error.
fn run_main(lane: &MainLane, code: &str) {
    lane.call(|py| py.run(code))
        .unwrap_or_else(|e| panic!("{code}: {e}"));
}

#[test]
fn a_limit_is_clamped_to_the_pool() {
    let l = lane("lane-clamp", 10_000);
    assert_eq!(l.limit(), interp_pool::main_threads());
    assert_eq!(l.set_limit(0), 1);
    assert!(l.threads().iter().all(|t| t.is_main() && t.id() == l.id()));
    l.end();
}

#[test]
fn re_entry_on_a_thread_holding_the_lane_runs_inline_and_does_not_count_again() {
    within(LIMIT, "lane re-entry", || {
        let a = lane("lane-reenter-a", 1);
        let b = lane("lane-reenter-b", 1);
        // A -> B -> A on one pool thread: A's second call is inline although A is full.
        let v = a
            .call(|_| {
                let outer = std::thread::current().id();
                b.call(|_| {
                    let inner = std::thread::current().id();
                    assert_eq!(inner, outer, "a pool thread with room runs B inline");
                    a.call(|py| {
                        assert_eq!(a.running(), 1, "re-entry does not count again");
                        py.eval("40 + 2")?.extract_i64(py)
                    })
                })
            })
            .unwrap();
        assert_eq!(v, 42);
        assert_eq!((a.running(), b.running()), (0, 0));
        a.end();
        b.end();
    });
}

#[test]
fn a_chain_through_full_lanes_from_several_threads_completes() {
    within(LIMIT, "lane chain", || {
        let a = lane("lane-chain-a", 1);
        let b = lane("lane-chain-b", 1);
        let own = spawn("lane-chain-own");
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let (a, b, own) = (a.clone(), b.clone(), own.clone());
                s.spawn(move || {
                    for i in 0..stress(30) as i64 {
                        // Host → A (main) → own-GIL → B (main) → A again (re-entry).
                        let v = a
                            .call(|_| {
                                own.call(|_| {
                                    b.call(|_| {
                                        a.call(|py| py.eval(&format!("{t} + {i}"))?.extract_i64(py))
                                    })
                                })
                            })
                            .unwrap();
                        assert_eq!(v, t + i);
                    }
                });
            }
        });
        a.end();
        b.end();
        own.end();
    });
}

#[test]
fn a_deadline_interrupts_the_call_that_ran_past_it_and_not_its_neighbour() {
    within(LIMIT, "lane deadline", || {
        if interp_pool::main_threads() < 2 {
            return note("lane deadline", "the main pool has one thread here");
        }
        let l = lane("lane-deadline", 2);
        // Gates, not timing: `quick` holds one seat, running Python from before `slow`
        // starts until after it returned.
        let (running, slow_done) = (std::sync::Barrier::new(2), AtomicBool::new(false));
        std::thread::scope(|s| {
            let quick = s.spawn(|| {
                l.call(|py| {
                    running.wait();
                    while !slow_done.load(Ordering::SeqCst) {
                        py.run("import time; time.sleep(0.002)")?;
                    }
                    py.eval("42")?.extract_i64(py)
                })
            });
            running.wait();
            let opts = CallOptions {
                timeout: Some(Duration::from_millis(200)),
                ..CallOptions::default()
            };
            let slow = l.call_with(&opts, |py| py.run("while True: pass"));
            slow_done.store(true, Ordering::SeqCst);
            assert!(matches!(slow, Err(Error::Timeout { .. })), "{slow:?}");
            assert_eq!(quick.join().unwrap().unwrap(), 42);
        });
        l.end();
    });
}

#[test]
fn ending_a_lane_with_calls_in_flight_waits_for_them_and_fails_the_queued() {
    within(LIMIT, "lane end", || {
        let l = lane("lane-end", 2);
        let done = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            let callers: Vec<_> = (0..6)
                .map(|_| {
                    let (l, done) = (l.clone(), Arc::clone(&done));
                    s.spawn(move || {
                        l.call(|py| {
                            py.run("import time; time.sleep(0.1)")?;
                            // Inside the call: `end` waits for it.
                            done.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        })
                    })
                })
                .collect();
            wait_until(|| l.running() > 0);
            l.end();
            assert_eq!(l.running(), 0, "end waited for the running calls");
            let ran = done.load(Ordering::SeqCst);
            for c in callers {
                match c.join().unwrap() {
                    Ok(()) | Err(Error::InterpreterGone { .. }) => {}
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            assert!(ran >= 1);
        });
        assert!(matches!(
            l.call(|_| Ok(())),
            Err(Error::InterpreterGone { .. })
        ));
        // The pool and other lanes go on.
        let other = lane("lane-end-other", 1);
        assert_eq!(
            other.call(|py| py.eval("1 + 1")?.extract_i64(py)).unwrap(),
            2
        );
        other.end();
    });
}
