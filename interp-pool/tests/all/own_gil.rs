//! Own GIL, proven without timing: B's owner thread sits attached (holding B's GIL)
//! inside Rust until A has finished Python work. With a shared GIL, A could never run
//! and the watchdog would abort.

use std::sync::mpsc;

use crate::util::*;

#[test]
fn a_runs_python_while_b_holds_its_gil() {
    within(LIMIT, "own gil", || {
        let a = spawn("gil-a");
        let b = spawn("gil-b");
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = {
            let b = b.clone();
            std::thread::spawn(move || {
                b.call(move |py| {
                    py.run("x = sum(range(1000))")?;
                    entered_tx.send(()).unwrap();
                    // Attached to B, blocked in Rust: B's GIL stays held.
                    release_rx.recv().unwrap();
                    py.eval("x")?.extract_i64(py)
                })
            })
        };
        entered_rx.recv().unwrap();
        // Python work in A, which needs A's GIL, not B's.
        assert_eq!(
            eval_i64(&a, "sum(i * i for i in range(100000))"),
            333328333350000
        );
        release_tx.send(()).unwrap();
        assert_eq!(holder.join().unwrap().unwrap(), 499500);
        a.end();
        b.end();
    });
}
