//! Shutdown while callers' threads keep host-thread states (direct dispatch, R13) in an
//! own-GIL interpreter and in main, and those threads exit only afterwards: shutdown deletes
//! the states (the owners before their interpreters end, seat 0 before finalize), and the
//! threads' exits find them gone and touch nothing. Shutdown is process-wide: a binary of
//! its own.

use std::sync::mpsc;
use std::thread;

use interp_pool::{InterpreterConfig, InterpreterHandle, MainLane};

#[test]
fn threads_that_outlive_shutdown_leave_their_states_alone() {
    let config = InterpreterConfig {
        direct: true,
        ..InterpreterConfig::named("shutdown-direct")
    };
    let h = InterpreterHandle::spawn(config.clone()).unwrap();
    let lane = MainLane::new(&config, 1).unwrap();
    let (ran_tx, ran_rx) = mpsc::channel();
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (h, lane, ran_tx) = (h.clone(), lane.clone(), ran_tx.clone());
            thread::spawn(move || {
                assert_eq!(h.call(|py| py.eval("1 + 1")?.extract_i64(py)).unwrap(), 2);
                assert_eq!(
                    lane.call(|py| py.eval("2 + 2")?.extract_i64(py)).unwrap(),
                    4
                );
                ran_tx.send(()).unwrap();
            })
        })
        .collect();
    for _ in 0..3 {
        ran_rx.recv().unwrap();
    }
    assert!(h.direct_calls() >= 1);
    assert!(lane.direct_calls() >= 1);
    // The callers may or may not have exited when shutdown runs: both orders must be
    // safe. This one is kept alive across shutdown.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (h2, lane2, ran_tx2) = (h.clone(), lane.clone(), ran_tx.clone());
    let late = thread::spawn(move || {
        h2.call(|py| py.eval("3")?.extract_i64(py)).unwrap();
        lane2.call(|py| py.eval("4")?.extract_i64(py)).unwrap();
        ran_tx2.send(()).unwrap();
        go_rx.recv().unwrap();
        // After shutdown: calls fail cleanly, and the exit gives nothing back to anyone.
        assert!(h2.call(|py| py.eval("5")?.extract_i64(py)).is_err());
        assert!(lane2.call(|py| py.eval("6")?.extract_i64(py)).is_err());
    });
    for c in callers {
        c.join().unwrap();
    }
    // The late thread made its calls (it blocks on `go_rx` after them).
    ran_rx.recv().unwrap();
    interp_pool::shutdown().unwrap();
    go_tx.send(()).unwrap();
    late.join().unwrap();
}
