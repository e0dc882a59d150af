//! The adaptive caller spin (`pace.rs`, `WaitPolicy::caller_spin_max`): a caller whose
//! replies come within the cap stops parking once a few calls taught the interpreter (or
//! group) their length; one whose replies come later than the cap parks every time. Lost
//! wake-ups under the stretched spin are `tests/all`'s `wakeups.rs` and `group.rs` stress
//! tests (they run with the default policy too).
//!
//! A binary of its own, its tests one at a time: a caller stretches its spin only while the
//! process-wide count of calls in flight and spinning callers fits the cores, so another
//! test's calls would turn the stretch off.

use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use interp_pool::{InterpreterConfig, InterpreterGroup, InterpreterHandle, WaitPolicy};

const LIMIT: Duration = Duration::from_secs(120);

/// One test at a time (see above).
fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, aborting the process if it takes longer than `limit` (a lost wake-up hangs).
fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let _alone = alone();
    let (tx, rx) = mpsc::channel::<()>();
    let what = what.to_owned();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("watchdog: `{what}` did not finish within {limit:?}; aborting");
            std::process::abort();
        }
    });
    let r = f();
    drop(tx);
    r
}

fn spawn(name: &str) -> InterpreterHandle {
    spawn_with(InterpreterConfig::named(name))
}

fn spawn_with(config: InterpreterConfig) -> InterpreterHandle {
    InterpreterHandle::spawn(config).expect("spawn interpreter")
}

/// Holds the owner for `d` without sleeping (a CPU-bound call, like Python code).
fn busy(d: Duration) -> interp_pool::Result<()> {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
    Ok(())
}

/// Calls `call` `warm` times, then `n` times, and returns how many of those `n` parked per
/// `parks()`; repeats up to five times while more than a tenth parked, since on a shared
/// machine a descheduled owner can make any one round park.
fn parks_after_warm_up(mut call: impl FnMut(), parks: impl Fn() -> u64, n: u64) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..5 {
        for _ in 0..20 {
            call();
        }
        let before = parks();
        for _ in 0..n {
            call();
        }
        best = best.min(parks() - before);
        if best <= n / 10 {
            break;
        }
    }
    best
}

#[test]
fn a_caller_of_a_200us_job_does_not_park_after_warm_up() {
    within(LIMIT, "200 µs calls", || {
        let h = spawn("pace-200us");
        let n = 100;
        let parks = parks_after_warm_up(
            || h.call(|_| busy(Duration::from_micros(200))).unwrap(),
            || h.caller_parks(),
            n,
        );
        assert!(parks <= n / 10, "{parks} of {n} calls parked");
        h.end();
    });
}

#[test]
fn a_group_caller_of_a_200us_job_does_not_park_after_warm_up() {
    within(LIMIT, "200 µs group calls", || {
        let config = InterpreterConfig::named("pace-group");
        let g = InterpreterGroup::new(&config);
        g.add(spawn("pace-group-1")).unwrap();
        let n = 100;
        let parks = parks_after_warm_up(
            || g.call(|_| busy(Duration::from_micros(200))).unwrap(),
            || g.caller_parks(),
            n,
        );
        assert!(parks <= n / 10, "{parks} of {n} calls parked");
        g.end();
    });
}

#[test]
fn a_call_slower_than_the_cap_parks() {
    within(LIMIT, "slow calls", || {
        let h = spawn_with(InterpreterConfig {
            wait: WaitPolicy {
                caller_spin_max: Duration::from_millis(1),
                ..WaitPolicy::default()
            },
            ..InterpreterConfig::named("pace-slow")
        });
        let before = h.caller_parks();
        let n = 10;
        for _ in 0..n {
            h.call(|_| {
                thread::sleep(Duration::from_millis(20));
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(h.caller_parks() - before, n);
        h.end();
    });
}
