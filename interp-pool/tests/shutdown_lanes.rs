//! Shutdown with calls queued on a main lane and on an owner (R9). Shutdown is process-wide,
//! so this has a test binary of its own (like `tests/shutdown.rs`).
//!
//! Before, lanes were drained only after every owner had ended: an owner whose job waited
//! on a queued lane call could not end until the lane's running call finished and a seat
//! ran the queued one, and a seat could leave its loop between a lane post and the post's
//! closing check, stranding the call and `shutdown` with it. Now shutdown closes the lanes
//! first: the queued lane calls fail at once, the owner waiting on one ends while the
//! lane's running call is still held by its gate, and every call returns.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use interp_pool::{Error, InterpreterConfig, InterpreterHandle, MainLane};

/// A gate a call waits on in Python (`os.read` releases the GIL): `open` lets it through.
struct Gate {
    tx: UnixStream,
    code: String,
    _rx: UnixStream,
}

impl Gate {
    fn new() -> Self {
        let (tx, rx) = UnixStream::pair().unwrap();
        let code = format!("import os; os.read({}, 1)", rx.as_raw_fd());
        Self { tx, code, _rx: rx }
    }

    fn open(&mut self) {
        self.tx.write_all(b"x").unwrap();
    }
}

fn gone_or_ok<T: std::fmt::Debug>(r: interp_pool::Result<T>) {
    match r {
        Ok(_) | Err(Error::InterpreterGone { .. }) => {}
        Err(e) => panic!("a call queued at shutdown failed with {e:?}"),
    }
}

/// Yields until `cond` holds (a state the test can see but is not told of).
fn until(cond: impl Fn() -> bool) {
    while !cond() {
        thread::yield_now();
    }
}

#[test]
fn calls_queued_on_a_lane_and_an_owner_at_shutdown_all_return() {
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(120)) {
            eprintln!("watchdog: shutdown with queued calls hung; aborting");
            std::process::abort();
        }
    });

    assert!(interp_pool::set_main_threads(2));
    let lane = MainLane::new(&InterpreterConfig::named("sd-lane"), 1).unwrap();
    let x = InterpreterHandle::spawn(InterpreterConfig::named("sd-x")).unwrap();
    let y = InterpreterHandle::spawn(InterpreterConfig::named("sd-y")).unwrap();
    let (mut lane_gate, mut y_gate) = (Gate::new(), Gate::new());

    let (lane_code, y_code) = (lane_gate.code.clone(), y_gate.code.clone());
    thread::scope(|s| {
        // The lane's one place, held by a gated call.
        let held = s.spawn(|| lane.call(|py| py.run(&lane_code)));
        until(|| lane.running() == 1);
        // An owner whose job waits on a call queued behind it.
        let nested = s.spawn(|| x.call(|_| lane.call(|_| Ok(1))));
        until(|| lane.queue_len() == 1);
        // Host threads queued on the lane.
        let on_lane: Vec<_> = (0..3).map(|_| s.spawn(|| lane.call(|_| Ok(2)))).collect();
        until(|| lane.queue_len() == 4);
        // An owner running a gated call, with calls queued behind it.
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (y, y_code) = (&y, &y_code);
        let y_held = s.spawn(move || {
            y.call(move |py| {
                started_tx.send(()).unwrap();
                py.run(y_code)
            })
        });
        started_rx.recv().unwrap();
        let on_y: Vec<_> = (0..3).map(|_| s.spawn(|| y.call(|_| Ok(3)))).collect();
        until(|| y.queue_len() == 3);

        let shutting = s.spawn(interp_pool::shutdown);
        // The owner waiting on a queued lane call ends while the lane's running call is
        // still gated (before, shutdown waited for it first, then for the lane).
        until(|| x.is_ended());
        assert!(matches!(
            nested.join().unwrap(),
            Err(Error::InterpreterGone { .. })
        ));
        for t in on_lane {
            assert!(matches!(
                t.join().unwrap(),
                Err(Error::InterpreterGone { .. })
            ));
        }
        lane_gate.open();
        y_gate.open();
        held.join().unwrap().unwrap();
        y_held.join().unwrap().unwrap();
        for t in on_y {
            gone_or_ok(t.join().unwrap());
        }
        shutting.join().unwrap().unwrap();
    });
    assert!(interp_pool::is_shut_down());
    assert!(matches!(
        lane.call(|_| Ok(())),
        Err(Error::InterpreterGone { .. })
    ));
    assert!(matches!(
        MainLane::new(&InterpreterConfig::named("after"), 1),
        Err(Error::ShutDown)
    ));
    drop(tx);
}
