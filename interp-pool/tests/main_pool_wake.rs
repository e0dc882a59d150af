//! The main pool's wake rule across lanes (`main_pool.rs`, "Waking"): two calls posted to
//! two lanes at once while one seat is looking for work and the others are parked. The
//! looking seat takes one of them; if that one is long, the other must not wait behind it
//! while a parked seat could run it. Before the rule counted queued calls over all lanes, a
//! poster compared the looking seats with its own lane's queue only, so both posters could
//! count the same looking seat and wake nobody.
//!
//! A binary of its own: it sizes the pool (3 seats) and the seats' spin, and needs the
//! other seats parked, which calls of other tests would disturb.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use interp_pool::{InterpreterConfig, MainLane, WaitPolicy};

const LIMIT: Duration = Duration::from_secs(120);

fn lane(name: &str, config: &InterpreterConfig) -> MainLane {
    MainLane::new(
        &InterpreterConfig {
            name: name.to_owned(),
            ..config.clone()
        },
        1,
    )
    .expect("main lane")
}

#[test]
fn a_call_on_one_lane_does_not_wait_behind_a_long_call_on_another() {
    // Aborts the process if a round does not finish (the stranded call waits forever: its
    // seat runs the gated call, which this test releases only after the other returned).
    let (alive_tx, alive_rx) = mpsc::channel::<()>();
    thread::spawn(move || loop {
        match alive_rx.recv_timeout(LIMIT) {
            Ok(()) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("watchdog: a call waited behind another lane's gated call; aborting");
                std::process::abort();
            }
        }
    });

    assert!(interp_pool::set_main_threads(3));
    // Seats spin 5 ms for work after a job: long enough that the seat which ran the warm-up
    // call is still looking when the two posts come.
    let config = InterpreterConfig {
        wait: WaitPolicy {
            server_spin: Duration::from_millis(5),
            ..WaitPolicy::default()
        },
        ..InterpreterConfig::named("wake")
    };
    let warm = lane("wake-warm", &config);
    let long = lane("wake-long", &config);
    let quick = lane("wake-quick", &config);
    assert_eq!(warm.threads().len(), 3);

    for _ in 0..200 {
        // Every seat parked...
        while warm.threads().iter().any(|t| t.is_busy()) {
            thread::yield_now();
        }
        // ...then one runs a call and looks for the next one.
        warm.call(|_| Ok(())).unwrap();

        let ready = AtomicUsize::new(0);
        let go = AtomicBool::new(false);
        let released = AtomicBool::new(false);
        // The gate: a socket the long call reads in Python (`os.read` releases main's GIL,
        // which every seat shares, so the quick call can run meanwhile).
        let (mut gate_tx, gate_rx) = UnixStream::pair().unwrap();
        let read_gate = format!("import os; os.read({}, 1)", gate_rx.as_raw_fd());
        let (done_tx, done_rx) = mpsc::channel::<()>();
        thread::scope(|s| {
            let (ready, go, long, quick) = (&ready, &go, &long, &quick);
            let start = move || {
                ready.fetch_add(1, Ordering::SeqCst);
                while !go.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
            };
            let read_gate = &read_gate;
            s.spawn(move || {
                start();
                long.call(|py| py.run(read_gate)).unwrap();
            });
            s.spawn(move || {
                start();
                quick.call(|_| Ok(())).unwrap();
                done_tx.send(()).unwrap();
            });
            while ready.load(Ordering::SeqCst) < 2 {
                std::hint::spin_loop();
            }
            go.store(true, Ordering::SeqCst);
            // The quick call returns while the long one is still held by its gate.
            done_rx.recv().unwrap();
            assert!(!released.load(Ordering::SeqCst));
            released.store(true, Ordering::SeqCst);
            gate_tx.write_all(b"x").unwrap();
        });
        alive_tx.send(()).unwrap();
    }
    for l in [warm, long, quick] {
        l.end();
    }
}
