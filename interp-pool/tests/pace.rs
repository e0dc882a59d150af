//! The adaptive caller spin (`pace.rs`, `WaitPolicy::caller_spin_max`): a caller whose
//! reply comes later than the cap parks, and `caller_parks` counts it. That a caller of
//! ~200 µs jobs stops parking after warm-up is a speed property, so it is measured, not
//! asserted: `cargo run --release -p interp-pool --example pace`. The budget arithmetic is
//! `owner/pace.rs`'s unit tests (samples given, no clock); lost wake-ups under the
//! stretched spin are `tests/all`'s `wakeups.rs` and `group.rs` stress tests.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use interp_pool::{InterpreterConfig, InterpreterHandle, WaitPolicy};

/// Yields until `done()`: the gate a test waits on instead of sleeping.
fn wait_for(mut done: impl FnMut() -> bool) {
    while !done() {
        thread::yield_now();
    }
}

#[test]
fn a_call_slower_than_the_cap_parks() {
    let h = Arc::new(
        InterpreterHandle::spawn(InterpreterConfig {
            wait: WaitPolicy {
                caller_spin_max: Duration::from_millis(1),
                ..WaitPolicy::default()
            },
            ..InterpreterConfig::named("pace-slow")
        })
        .expect("spawn interpreter"),
    );
    for round in 0..3 {
        // The job cannot end before its caller committed to park: it waits for the gate,
        // which opens once the park is counted.
        let before = h.caller_parks();
        let (open, gate) = mpsc::channel::<()>();
        let started = Arc::new(Barrier::new(2));
        let caller = {
            let (h, started) = (Arc::clone(&h), Arc::clone(&started));
            thread::spawn(move || {
                h.call(move |_| {
                    started.wait();
                    gate.recv().expect("gate");
                    Ok(())
                })
            })
        };
        started.wait();
        wait_for(|| h.caller_parks() > before);
        open.send(()).expect("open");
        caller.join().expect("caller").expect("call");
        assert_eq!(h.caller_parks(), before + 1, "round {round}");
    }
    Arc::try_unwrap(h).expect("one owner").end();
}
