//! Lost wake-ups: the owner's park handshake (`OwnerStateCell::park_unless` in
//! `Owner::serve` ↔ `wake_if_parked` in `OwnerLink::post`) and the reply slot's, on the real
//! owner loop, crossbeam channel and OS `park`. The loom model in `src/wait/loom_model.rs`
//! checks the protocol; this checks what loom does not see (the channel, `park`, the
//! compiler and CPU). Spin budgets are zero, so every hand-off parks and unparks, and bursts
//! are separated by barriers and idle gaps so owners park between them: a lost wake-up
//! leaves a caller waiting at the end of a burst with nobody left to post, and the watchdog
//! aborts the run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use interp_pool::{InterpreterConfig, InterpreterHandle, WaitPolicy};

use crate::util::*;

/// An interpreter whose owner and callers never spin: every hand-off goes through park.
fn no_spin(name: &str) -> InterpreterHandle {
    spawn_with(InterpreterConfig {
        wait: WaitPolicy {
            caller_spin: Duration::ZERO,
            caller_spin_max: Duration::ZERO,
            server_spin: Duration::ZERO,
        },
        ..InterpreterConfig::named(name)
    })
}

/// One caller per interpreter, so a lost wake-up is never healed by someone else's post:
/// the caller then waits forever. The owner spins `SERVER_SPIN` after each job, then goes
/// to park; the caller posts its next call after a pseudo-random delay spread over that
/// spin and past it, so posts keep landing on the owner's park decision (store Parked,
/// fence, re-check the queue) from both sides. Callers spin (the default) when the owner
/// was not parked, so some calls hand off without any syscall.
#[test]
fn posts_racing_the_owners_park_decision_all_complete() {
    const SERVER_SPIN: Duration = Duration::from_micros(30);
    within(LIMIT, "park decision race", || {
        let h = spawn_with(InterpreterConfig {
            wait: WaitPolicy {
                server_spin: SERVER_SPIN,
                ..WaitPolicy::default()
            },
            ..InterpreterConfig::named("wake-race")
        });
        let calls = stress(40_000);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..calls {
            assert_eq!(h.call(move |_| Ok(n)).unwrap(), n);
            // xorshift: a delay in 0..=40 µs, in steps of 1/8 µs.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let delay = Duration::from_nanos((x % 321) * 125);
            let start = Instant::now();
            while start.elapsed() < delay {
                std::hint::spin_loop();
            }
        }
        h.end();
    });
}

/// Idle gap after burst `round`: none, or long enough for the owners to park.
fn gap(round: usize) {
    match round % 3 {
        0 => {}
        1 => thread::yield_now(),
        _ => thread::sleep(Duration::from_micros(50)),
    }
}

#[test]
fn bursts_of_tiny_calls_from_many_threads_all_complete() {
    within(LIMIT, "wake-up bursts", || {
        let interps: Vec<_> = (0..2).map(|i| no_spin(&format!("wake-{i}"))).collect();
        const THREADS: usize = 6;
        let rounds = stress(3000);
        let done = AtomicUsize::new(0);
        let barrier = Barrier::new(THREADS);
        thread::scope(|s| {
            for t in 0..THREADS {
                let (interps, barrier, done) = (&interps, &barrier, &done);
                s.spawn(move || {
                    for round in 0..rounds {
                        barrier.wait();
                        // Bursts of 1..=3 calls, to one interpreter or alternating.
                        for n in 0..=(t + round) % 3 {
                            let h = &interps[(t + round + n) % 2];
                            let got = h.call(move |_| Ok(t * 10 + n)).unwrap();
                            assert_eq!(got, t * 10 + n);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        gap(round);
                    }
                });
            }
        });
        let expected: usize = (0..THREADS)
            .map(|t| (0..rounds).map(|r| (t + r) % 3 + 1).sum::<usize>())
            .sum();
        assert_eq!(done.load(Ordering::Relaxed), expected);
        for h in interps {
            h.end();
        }
    });
}

/// Owner threads waiting on each other (nested service loops: `prepare_park` then the park
/// handshake, repeatedly) while foreign threads post to both, with nothing spinning.
#[test]
fn nested_waits_with_callbacks_all_complete() {
    within(LIMIT, "nested wake-ups", || {
        let a = no_spin("wake-a");
        let b = no_spin("wake-b");
        const THREADS: usize = 4;
        let rounds = stress(1000);
        let barrier = Barrier::new(THREADS);
        thread::scope(|s| {
            for t in 0..THREADS {
                let (a, b, barrier) = (&a, &b, &barrier);
                s.spawn(move || {
                    let (first, second) = if t % 2 == 0 { (a, b) } else { (b, a) };
                    for round in 0..rounds {
                        barrier.wait();
                        // first's owner calls second; every other round second calls back.
                        let got = first
                            .call(|_| {
                                second.call(|_| {
                                    if round % 2 == 0 {
                                        first.call(|_| Ok(round)).map(|r| r + 1)
                                    } else {
                                        Ok(round + 1)
                                    }
                                })
                            })
                            .unwrap();
                        assert_eq!(got, round + 1);
                        gap(round);
                    }
                });
            }
        });
        a.end();
        b.end();
    });
}
