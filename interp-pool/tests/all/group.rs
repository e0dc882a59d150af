//! `InterpreterGroup`: K interpreters behind one queue. Every result is checked; every
//! threaded test runs under the abort watchdog (`within`), since a lost wake-up or a
//! deadlock shows as a hang.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use interp_pool::{
    CallOptions, Error, InterpreterConfig, InterpreterGroup, InterpreterHandle, WaitPolicy,
};

use crate::util::*;

fn group_of(name: &str, k: usize, wait: WaitPolicy) -> InterpreterGroup {
    let config = InterpreterConfig {
        wait,
        ..InterpreterConfig::named(name)
    };
    let g = InterpreterGroup::new(&config);
    for i in 0..k {
        let member = spawn_with(InterpreterConfig {
            name: format!("{name}-{i}"),
            ..config.clone()
        });
        run(&member, &format!("REPLICA = {i}"));
        g.add(member).unwrap();
    }
    g
}

#[test]
fn calls_from_many_threads_spread_over_the_members_and_all_answer() {
    within(LIMIT, "group spread", || {
        let g = group_of("spread", 3, WaitPolicy::default());
        let threads = 8;
        let per = stress(40);
        let seen: Vec<Vec<i64>> = thread::scope(|s| {
            (0..threads)
                .map(|t| {
                    let g = &g;
                    s.spawn(move || {
                        (0..per)
                            .map(|i| {
                                let n = (t * 1000 + i) as i64;
                                // Sleeping releases the GIL, so callers overlap and every
                                // member gets work.
                                let code = format!(
                                    "__import__('time').sleep(0.002) or ({n} * 2, REPLICA)"
                                );
                                let (v, replica) = g
                                    .call(|py| {
                                        let r = py.eval(&code)?;
                                        Ok((
                                            r.get_index(py, 0)?.extract_i64(py)?,
                                            r.get_index(py, 1)?.extract_i64(py)?,
                                        ))
                                    })
                                    .unwrap();
                                assert_eq!(v, n * 2);
                                replica
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect()
        });
        let all: Vec<i64> = seen.into_iter().flatten().collect();
        assert_eq!(all.len(), threads * per);
        for r in 0..3 {
            assert!(all.contains(&r), "replica {r} never served: {all:?}");
        }
        let served: u64 = g.members().iter().map(|m| m.jobs_served()).sum();
        assert!(served >= all.len() as u64);
        g.end();
    });
}

/// Zero spin budgets: every hand-off parks and unparks, and bursts separated by barriers
/// let every member park between them, so each burst's posts race the members' park
/// decisions; a post that woke nobody while a member slept would leave its caller hanging.
#[test]
fn posts_wake_an_idle_member_and_none_is_lost() {
    within(LIMIT, "group wake-ups", || {
        let zero = WaitPolicy {
            caller_spin: Duration::ZERO,
            caller_spin_max: Duration::ZERO,
            server_spin: Duration::ZERO,
        };
        let g = group_of("wakes", 4, zero);
        let threads = 6;
        let bursts = stress(150);
        let barrier = Barrier::new(threads);
        thread::scope(|s| {
            for t in 0..threads {
                let (g, barrier) = (&g, &barrier);
                s.spawn(move || {
                    for b in 0..bursts {
                        barrier.wait();
                        for i in 0..3u64 {
                            let n = (t as u64) << 32 | (b as u64) << 8 | i;
                            assert_eq!(g.call(move |_| Ok(n)).unwrap(), n);
                        }
                        if b % 16 == 0 {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
            }
        });
        g.end();
    });
}

#[test]
fn a_call_from_a_members_own_thread_runs_inline_on_it() {
    let g = group_of("inline", 2, WaitPolicy::default());
    let g2 = g.clone();
    let (outer, inner) = g
        .call(move |py| {
            let here = interp_pool::current_interpreter();
            let inner = g2.call(|_| {
                Ok((
                    interp_pool::current_interpreter(),
                    interp_pool::current_depth(),
                ))
            })?;
            let _ = py;
            Ok(((here, interp_pool::current_depth()), inner))
        })
        .unwrap();
    assert_eq!(outer.0, inner.0, "same member");
    assert_eq!((outer.1, inner.1), (1, 2));
    g.end();
}

/// Issue 20, defect 5: a member that left the group (an elastic replica being retired)
/// no longer runs the group's calls, its own thread's included: those go to a member.
#[test]
fn a_call_from_a_member_that_left_runs_on_a_member() {
    let g = group_of("left", 2, WaitPolicy::default());
    let members = g.members();
    let (gone, staying) = (&members[0], &members[1]);
    g.remove(gone).unwrap();
    let g2 = g.clone();
    let ran_on = within(
        Duration::from_secs(60),
        "call from a member that left",
        || gone.call(move |_| g2.call(|_| Ok(interp_pool::current_interpreter()))),
    )
    .unwrap();
    assert_eq!(
        ran_on,
        Some(staying.id()),
        "not inline on the member that left"
    );
    gone.end();
    g.end();
}

/// Both members wait on B at once while B calls back into the group: the callbacks are
/// served by the members' nested loops (which serve the group queue too).
#[test]
fn every_member_nested_waiting_still_serves_the_group() {
    within(LIMIT, "group nested", || {
        let g = group_of("nested", 2, WaitPolicy::default());
        let b = spawn("nested-b");
        let barrier = Arc::new(Barrier::new(2));
        thread::scope(|s| {
            for t in 0..2i64 {
                let (g, b, barrier) = (g.clone(), b.clone(), Arc::clone(&barrier));
                s.spawn(move || {
                    for i in 0..stress(20) as i64 {
                        let g_inner = g.clone();
                        let b_inner = b.clone();
                        let barrier = Arc::clone(&barrier);
                        let v = g
                            .call(move |_| {
                                if i == 0 {
                                    // Both members are inside a call before either posts.
                                    barrier.wait();
                                }
                                b_inner.call(move |_| g_inner.call(move |_| Ok(t * 100 + i)))
                            })
                            .unwrap();
                        assert_eq!(v, t * 100 + i);
                    }
                });
            }
        });
        b.end();
        g.end();
    });
}

#[test]
fn a_deadline_interrupts_the_call_on_whichever_member_runs_it() {
    let g = group_of("deadline", 2, WaitPolicy::default());
    for m in g.members() {
        run(&m, "def spin():\n    while True:\n        pass\n");
    }
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(50)),
        cancel: None,
        ..CallOptions::default()
    };
    for _ in 0..3 {
        let r = within(LIMIT, "group deadline", || {
            g.call_with(&opts, |py| py.run("spin()"))
        });
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }
    assert_eq!(g.call(|py| py.eval("6 * 7")?.extract_i64(py)).unwrap(), 42);
    g.end();
}

/// A deadline that fires while its call waits under a nested plain job does not hit that
/// job: the job completes, and the deadline call is interrupted once the job returns.
#[test]
fn an_interrupt_never_lands_in_a_job_served_while_its_call_waits() {
    let a = spawn("stacked-a");
    let b = spawn("stacked-b");
    run(
        &a,
        "import time\n\
         def busy(seconds):\n    end = time.monotonic() + seconds\n    while time.monotonic() < end:\n        pass\n    return 'plain ok'\n\
         def spin():\n    while True:\n        pass\n",
    );
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        cancel: None,
        ..CallOptions::default()
    };
    let (a2, b2) = (a.clone(), b.clone());
    let r = within(LIMIT, "stacked interrupt", || {
        a.call_with(&opts, move |py| {
            // Wait on B, which calls back into A with a plain 300 ms job; our deadline
            // fires during it.
            let plain = b2.call(move |_| a2.call(|py| py.eval("busy(0.3)")?.extract_string(py)))?;
            assert_eq!(
                plain, "plain ok",
                "the nested plain job was not interrupted"
            );
            py.run("spin()")?;
            Ok(plain)
        })
    });
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert_eq!(eval_i64(&a, "1 + 1"), 2);
    a.end();
    b.end();
}

#[test]
fn ending_the_group_completes_queued_calls_and_fails_later_ones() {
    let g = group_of("ending", 1, WaitPolicy::default());
    let member: InterpreterHandle = g.members().remove(0);
    let (release, holder) = hold(&member);
    let g2 = g.clone();
    let queued = thread::spawn(move || g2.call(|_| Ok(1)));
    wait_until(|| g.queue_len() == 1);
    let ender = {
        let g = g.clone();
        thread::spawn(move || g.end())
    };
    wait_until(|| g.is_ended());
    release.send(()).unwrap();
    holder.join().unwrap();
    ender.join().unwrap();
    // Queued when the group ended: the member still finishing may take it, or it fails.
    let queued = queued.join().unwrap();
    assert!(
        matches!(queued, Ok(1) | Err(Error::InterpreterGone { .. })),
        "{queued:?}"
    );
    assert!(matches!(
        g.call(|_| Ok(2)),
        Err(Error::InterpreterGone { .. })
    ));
    assert!(member.is_ended());
}
