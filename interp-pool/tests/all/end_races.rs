//! `end()` of a group or a main lane racing posts from many threads (R7, the mailbox
//! rule): every call returns its result or `InterpreterGone`, and no job runs after its
//! caller returned. A job that ran late would write into a popped frame; here its closure
//! finds its caller's record marked "returned" and counts itself, which the round checks.
//! A caller that returned early is seen as an `InterpreterGone` whose job ran anyway. The
//! window (a member or seat taking the job between its poster's send and the poster's
//! closing check) is nanoseconds wide; the loom model
//! (`interp-pool/src/mailbox/loom_model.rs`) covers it exhaustively and fails with that
//! ordering; this checks the real channel, members and seats against the rule.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;

use interp_pool::{Error, InterpreterConfig, InterpreterGroup, MainLane, WaitPolicy};

use crate::util::*;

/// One call: `ran` set by its job, `returned` by its caller once `call` returned.
struct Record {
    ran: AtomicBool,
    returned: AtomicBool,
}

/// What a round saw.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    gone: AtomicUsize,
    /// Jobs that ran after their caller had returned (must stay 0).
    late: AtomicUsize,
    /// Calls that returned `InterpreterGone` although their job ran (must stay 0: the
    /// caller returned without waiting for it).
    gone_but_ran: AtomicUsize,
}

impl Seen {
    fn check(&self, round: usize) {
        let late = self.late.load(Ordering::SeqCst);
        let gone_but_ran = self.gone_but_ran.load(Ordering::SeqCst);
        assert!(
            late == 0 && gone_but_ran == 0,
            "round {round}: {late} jobs ran after their caller returned, {gone_but_ran} \
             callers got InterpreterGone although their job ran"
        );
    }
}

/// Makes one call through `call` with 8 KiB of stack between this frame and the call's:
/// after it returns, the poster's loop (its atomics are calls in a debug build) reuses only
/// that padding, so a job that still points into the popped call frame finds its closure
/// there and reports itself instead of reading garbage.
#[inline(never)]
fn padded_call(
    rec: &Record,
    seen: &Seen,
    call: &(dyn Fn(&(dyn Fn() + Sync)) -> interp_pool::Result<()> + Sync),
) -> interp_pool::Result<()> {
    let pad = [0u8; 8192];
    black_box(&pad);
    let job = || {
        rec.ran.store(true, Ordering::SeqCst);
        if rec.returned.load(Ordering::SeqCst) {
            seen.late.fetch_add(1, Ordering::SeqCst);
        }
    };
    call(&job)
}

/// `posters` threads call through `call` back to back until they get `InterpreterGone`
/// while `end` runs once they all started; returns what the round saw.
fn race_round(
    posters: usize,
    call: &(dyn Fn(&(dyn Fn() + Sync)) -> interp_pool::Result<()> + Sync),
    end: impl FnOnce(),
) -> Seen {
    let seen = Seen::default();
    let over = AtomicBool::new(false);
    let start = Barrier::new(posters + 1);
    thread::scope(|s| {
        for _ in 0..posters {
            let (seen, over, start) = (&seen, &over, &start);
            s.spawn(move || {
                start.wait();
                loop {
                    let rec = Record {
                        ran: AtomicBool::new(false),
                        returned: AtomicBool::new(false),
                    };
                    let r = padded_call(&rec, seen, call);
                    rec.returned.store(true, Ordering::SeqCst);
                    match r {
                        Ok(()) => {
                            seen.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::InterpreterGone { .. }) => {
                            seen.gone.fetch_add(1, Ordering::SeqCst);
                            // Keep `rec` (and the popped frame) until the round is over, so
                            // a job still in flight finds them.
                            while !over.load(Ordering::SeqCst) {
                                std::hint::spin_loop();
                            }
                            if black_box(&rec).ran.load(Ordering::SeqCst) {
                                seen.gone_but_ran.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                        Err(e) => panic!("a call racing end() failed with {e:?}"),
                    }
                }
            });
        }
        start.wait();
        // Let every poster get going before the end.
        while seen.ok.load(Ordering::SeqCst) < posters {
            thread::yield_now();
        }
        end();
        over.store(true, Ordering::SeqCst);
    });
    seen
}

/// Zero spin budgets: posters and members hand off through the park handshake too.
fn tight() -> WaitPolicy {
    WaitPolicy {
        caller_spin: std::time::Duration::ZERO,
        caller_spin_max: std::time::Duration::ZERO,
        server_spin: std::time::Duration::from_micros(50),
    }
}

#[test]
fn a_group_ending_under_posts_never_returns_a_caller_before_its_job() {
    within(LIMIT, "group end race", || {
        let (mut ok, mut gone) = (0, 0);
        for round in 0..stress(60) {
            let config = InterpreterConfig {
                wait: tight(),
                ..InterpreterConfig::named(format!("end-race-{round}"))
            };
            let g = InterpreterGroup::new(&config);
            for i in 0..2 {
                g.add(spawn_with(InterpreterConfig {
                    name: format!("end-race-{round}-{i}"),
                    ..config.clone()
                }))
                .unwrap();
            }
            let call = |job: &(dyn Fn() + Sync)| {
                g.call(|_| {
                    job();
                    Ok(())
                })
            };
            let seen = race_round(3, &call, || g.end());
            seen.check(round);
            ok += seen.ok.load(Ordering::SeqCst);
            gone += seen.gone.load(Ordering::SeqCst);
        }
        assert!(ok > 0 && gone > 0, "ok {ok}, gone {gone}");
    });
}

#[test]
fn a_lane_ending_under_posts_never_returns_a_caller_before_its_job() {
    within(LIMIT, "lane end race", || {
        let (mut ok, mut gone) = (0, 0);
        for round in 0..stress(600) {
            let config = InterpreterConfig {
                wait: tight(),
                ..InterpreterConfig::named(format!("lane-race-{round}"))
            };
            let lane = MainLane::new(&config, 2).unwrap();
            let call = |job: &(dyn Fn() + Sync)| {
                lane.call(|_| {
                    job();
                    Ok(())
                })
            };
            let seen = race_round(3, &call, || lane.end());
            seen.check(round);
            ok += seen.ok.load(Ordering::SeqCst);
            gone += seen.gone.load(Ordering::SeqCst);
        }
        assert!(ok > 0 && gone > 0, "ok {ok}, gone {gone}");
    });
}
