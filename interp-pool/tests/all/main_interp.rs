//! The main interpreter's server: one process-wide handle, callable from any thread, never
//! ended by `end()`, and part of re-entry chains with subinterpreters.

use interp_pool::{InterpreterConfig, InterpreterHandle};

use crate::reentry::{install_ping, register};
use crate::util::*;

fn main_handle() -> InterpreterHandle {
    InterpreterHandle::main(InterpreterConfig::default()).expect("main interpreter server")
}

#[test]
fn main_is_one_shared_handle_that_end_does_not_end() {
    let m = main_handle();
    let m2 = main_handle();
    assert!(m.is_main());
    assert_eq!(m.id(), m2.id(), "one server per process");
    assert_eq!(m.python_id(), 0, "CPython numbers the main interpreter 0");
    m.end();
    assert!(!m.is_ended());
    assert_eq!(eval_i64(&m, "6 * 7"), 42);
}

#[test]
fn main_serves_many_threads() {
    within(LIMIT, "main threads", || {
        let m = main_handle();
        run(&m, "main_threads_hits = []");
        std::thread::scope(|s| {
            for t in 0..8i64 {
                let m = m.clone();
                s.spawn(move || {
                    for i in 0..stress(200) as i64 {
                        let v = m
                            .call(move |py| {
                                py.run(&format!("main_threads_hits.append({t})"))?;
                                py.eval(&format!("{t} * 1000 + {i}"))?.extract_i64(py)
                            })
                            .unwrap();
                        assert_eq!(v, t * 1000 + i);
                    }
                });
            }
        });
        assert_eq!(
            eval_i64(&m, "len(main_threads_hits)"),
            8 * stress(200) as i64
        );
    });
}

#[test]
fn own_gil_to_main_and_back_through_ctypes() {
    within(LIMIT, "own->main->own", || {
        let a = spawn_with(ctypes_config(
            "own_gil_to_main_and_back_through_ctypes",
            "to-main-a",
        ));
        let m = main_handle();
        let (ia, im) = (register(&a), register(&m));
        install_ping(&a, ia, im);
        install_ping(&m, im, ia);
        // A -> main -> A -> ... : the main server serves A's callback while it waits.
        assert_eq!(eval_i64(&a, "ping(9)"), 10);
        assert_eq!(eval_i64(&a, "calls"), 5);
        assert_eq!(eval_i64(&m, "calls"), 5);
        // And starting from main, on a foreign thread.
        assert_eq!(eval_i64(&m, "ping(6)"), 7);
        a.end();
    });
}
