use std::sync::Barrier;

use interp_pool::Error;

use crate::util::*;

#[test]
fn sixteen_interpreters_some_ended_while_others_serve() {
    within(LIMIT, "16 interpreters", || {
        let hs: Vec<_> = (0..16).map(|i| spawn(&format!("many-{i}"))).collect();
        for (i, h) in hs.iter().enumerate() {
            run(h, &format!("import json\nME = {i}"));
        }
        let (ending, keeping): (Vec<_>, Vec<_>) =
            hs.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                for (_, h) in &ending {
                    h.end();
                }
            });
            s.spawn(|| {
                barrier.wait();
                for round in 0..stress(50) {
                    for (i, h) in &keeping {
                        assert_eq!(
                            eval_i64(h, &format!("ME * 1000 + {round}")),
                            *i as i64 * 1000 + round as i64
                        );
                    }
                }
            });
        });
        for (_, h) in &ending {
            assert!(h.is_ended());
            assert!(
                matches!(h.call(|_| Ok(())), Err(Error::InterpreterGone { interp }) if interp == h.id())
            );
        }
        for (_, h) in &keeping {
            h.end();
        }
    });
}

#[test]
fn call_after_end_is_interpreter_gone() {
    let h = spawn("ended");
    run(&h, "x = 1");
    h.end();
    assert!(h.is_ended());
    let err = h.call(|py| py.eval("x").map(drop)).unwrap_err();
    assert!(matches!(err, Error::InterpreterGone { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("interpreter {} has ended", h.id()));
    h.end(); // idempotent
}

#[test]
fn end_with_calls_in_flight_completes_every_caller() {
    within(LIMIT, "end in flight", || {
        let h = spawn("inflight");
        run(&h, "def work(n):\n    return sum(range(n))\n");
        let barrier = Barrier::new(5);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (h, barrier) = (&h, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut gone = false;
                    for _ in 0..stress(500) {
                        match h.call(|py| py.eval("work(1000)")?.extract_i64(py)) {
                            Ok(v) => {
                                assert!(!gone, "a call succeeded after one reported the end");
                                assert_eq!(v, 499500);
                            }
                            Err(Error::InterpreterGone { .. }) => gone = true,
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                });
            }
            barrier.wait();
            h.end();
        });
        assert!(h.is_ended());
    });
}

#[test]
fn creation_failure_is_a_typed_error() {
    // An own GIL without the multi-interpreter extension check is refused by CPython.
    let config = interp_pool::InterpreterConfig {
        check_multi_interp_extensions: false,
        ..interp_pool::InterpreterConfig::named("refused")
    };
    match interp_pool::InterpreterHandle::spawn(config) {
        Err(Error::Init(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected Init error, got {other:?}"),
    }
}
