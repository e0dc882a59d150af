//! The three re-entry shapes, A→B→A chains, and the depth cap; both through plain Rust
//! closures and through a real `ctypes.CFUNCTYPE` callback (which detaches the calling
//! thread state before entering Rust). The ctypes ones run in shared-GIL interpreters on
//! 3.12, whose `_ctypes` refuses own-GIL ones (`util::ctypes_config`).

use std::sync::{Barrier, Mutex};

use interp_pool::{
    current_depth, current_interpreter, Error, InterpreterConfig, InterpreterHandle,
};

use crate::util::*;

const SHAPE2: &str = "reentry::shape2_ctypes_callback_into_own_interpreter_runs_inline";
const SHAPE3: &str = "reentry::shape3_and_a_b_a_through_ctypes";
const CHAINS: &str = "reentry::chains_from_many_threads_never_deadlock";

/// Handles reachable from the C callback, by index.
static PEERS: Mutex<Vec<InterpreterHandle>> = Mutex::new(Vec::new());
/// Errors seen by the C callback, by peer index.
static ERRORS: Mutex<Vec<(i64, Error)>> = Mutex::new(Vec::new());

pub(crate) fn register(h: &InterpreterHandle) -> i64 {
    let mut peers = PEERS.lock().unwrap();
    peers.push(h.clone());
    (peers.len() - 1) as i64
}

/// Called from Python through ctypes: evaluates `ping(n)` in peer `target`.
/// Returns -1 after recording the error if the call fails.
extern "C" fn hop(target: i64, n: i64) -> i64 {
    let r = std::panic::catch_unwind(|| {
        let h = PEERS.lock().unwrap()[target as usize].clone();
        h.call(move |py| py.eval(&format!("ping({n})"))?.extract_i64(py))
    });
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            ERRORS.lock().unwrap().push((target, e));
            -1
        }
        Err(_) => -2,
    }
}

/// Defines `hop` (the ctypes callback), `ping` and call counters in `h`.
/// Registers `a` and `b`, gives each a `ping` calling the other through ctypes, and checks
/// that `a`'s `ping(10)` bounces A→B→A… to 11 in 6 + 5 calls.
pub(crate) fn ping_a_b_a(a: &InterpreterHandle, b: &InterpreterHandle) {
    let (ia, ib) = (register(a), register(b));
    install_ping(a, ia, ib);
    install_ping(b, ib, ia);
    assert_eq!(eval_i64(a, "ping(10)"), 11);
    assert_eq!(eval_i64(a, "calls"), 6);
    assert_eq!(eval_i64(b, "calls"), 5);
}

pub(crate) fn install_ping(h: &InterpreterHandle, me: i64, other: i64) {
    let addr = hop as extern "C" fn(i64, i64) -> i64 as usize;
    run(
        h,
        &format!(
            r#"
import ctypes, threading
_CB = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
hop = _CB({addr})
ME, OTHER = {me}, {other}
calls = 0
threads = set()
def ping(n):
    global calls
    calls += 1
    threads.add(threading.get_ident())
    if n == 0:
        return 1
    r = hop(OTHER, n - 1)
    return r if r < 0 else r + 1
"#
        ),
    );
}

#[test]
fn shape1_inline_while_attached() {
    let a = spawn("shape1");
    let (outer_thread, inner_thread, depths, v) = a
        .call(|py| {
            py.run("x = 1")?;
            let outer = std::thread::current().id();
            let a2 = a.clone();
            let (inner, d, v) = a2.call(|py2| {
                Ok((
                    std::thread::current().id(),
                    current_depth(),
                    py2.eval("x + 1")?.extract_i64(py2)?,
                ))
            })?;
            Ok((outer, inner, (current_depth(), d), v))
        })
        .unwrap();
    assert_eq!(outer_thread, inner_thread);
    assert_eq!(depths, (1, 2));
    assert_eq!(v, 2);
    a.end();
}

#[test]
fn shape2_ctypes_callback_into_own_interpreter_runs_inline() {
    within(LIMIT, "shape2", || {
        let a = spawn_with(ctypes_config(SHAPE2, "shape2"));
        let ia = register(&a);
        install_ping(&a, ia, ia);
        // ping(5) in A calls hop(A, 4) from A's owner thread with A detached by ctypes.
        assert_eq!(eval_i64(&a, "ping(5)"), 6);
        assert_eq!(eval_i64(&a, "calls"), 6);
        assert_eq!(
            eval_i64(&a, "len(threads)"),
            1,
            "every level ran on the owner thread"
        );
        // The outer frame got its thread state back: Python keeps working after.
        assert_eq!(eval_i64(&a, "sum(range(10))"), 45);
        a.end();
    });
}

#[test]
fn shape3_and_a_b_a_through_ctypes() {
    within(LIMIT, "a-b-a ctypes", || {
        let a = spawn_with(ctypes_config(SHAPE3, "aba-a"));
        let b = spawn_with(ctypes_config(SHAPE3, "aba-b"));
        // A→B (shape 3), then B→A while A's owner waits: served by A's nested loop.
        ping_a_b_a(&a, &b);
        assert_eq!(eval_i64(&a, "len(threads)"), 1);
        assert_eq!(eval_i64(&b, "len(threads)"), 1);
        // From a foreign thread into B, bouncing back into A many times.
        assert_eq!(eval_i64(&b, "ping(31)"), 32);
        a.end();
        b.end();
    });
}

/// Checks, inside a call of `h` at chain level `n`, that it runs where it should.
pub(crate) type Where =
    fn(&interp_pool::Attached<'_>, &InterpreterHandle, usize) -> interp_pool::Result<()>;

/// Bounces between two interpreters `n` times in plain Rust, checking where each level runs.
fn bounce(
    hs: &[InterpreterHandle; 2],
    i: usize,
    n: usize,
    check: Where,
) -> interp_pool::Result<usize> {
    hs[i].call(move |py| {
        check(py, &hs[i], n)?;
        py.run("hits = globals().get('hits', 0) + 1")?;
        if n == 0 {
            Ok(0)
        } else {
            Ok(bounce(hs, 1 - i, n - 1, check)? + 1)
        }
    })
}

/// A→B→A chains of 40 in plain Rust, each level checked by `check`; the depth cap; and
/// both interpreters serving again after. Ends them.
pub(crate) fn a_b_a_and_depth_cap(hs: [InterpreterHandle; 2], check: Where) {
    assert_eq!(bounce(&hs, 0, 40, check).unwrap(), 40);
    assert_eq!(eval_i64(&hs[0], "hits"), 21);
    assert_eq!(eval_i64(&hs[1], "hits"), 20);
    // Default cap 64: a 100-deep chain fails at depth 65 and unwinds cleanly.
    match bounce(&hs, 0, 100, check) {
        Err(Error::ReentryLimit { depth, limit }) => assert_eq!((depth, limit), (65, 64)),
        other => panic!("expected ReentryLimit, got {other:?}"),
    }
    // Both interpreters still serve, at depth 1 again.
    assert_eq!(bounce(&hs, 1, 3, check).unwrap(), 3);
    hs[0].end();
    hs[1].end();
}

#[test]
fn a_b_a_in_rust_and_depth_cap() {
    within(LIMIT, "a-b-a rust", || {
        let on_owner: Where = |_, h, _| {
            assert_eq!(current_interpreter(), Some(h.id()));
            Ok(())
        };
        a_b_a_and_depth_cap([spawn("rust-a"), spawn("rust-b")], on_owner);
    });
}

#[test]
fn depth_cap_through_ctypes_is_an_error_not_a_crash() {
    within(LIMIT, "depth cap ctypes", || {
        let config = |name: &str| InterpreterConfig {
            max_depth: 8,
            ..ctypes_config(
                "reentry::depth_cap_through_ctypes_is_an_error_not_a_crash",
                name,
            )
        };
        let a = spawn_with(config("cap-a"));
        let b = spawn_with(config("cap-b"));
        let (ia, ib) = (register(&a), register(&b));
        install_ping(&a, ia, ib);
        install_ping(&b, ib, ia);
        assert_eq!(eval_i64(&a, "ping(7)"), 8, "depth 8 is allowed");
        assert_eq!(eval_i64(&a, "ping(50)"), -1);
        let errors = ERRORS.lock().unwrap();
        let hit = errors
            .iter()
            .find(|(t, _)| *t == ia || *t == ib)
            .expect("the callback saw the cap");
        assert!(
            matches!(hit.1, Error::ReentryLimit { depth: 9, limit: 8 }),
            "{:?}",
            hit.1
        );
        drop(errors);
        assert_eq!(eval_i64(&b, "ping(3)"), 4);
        a.end();
        b.end();
    });
}

#[test]
fn chains_from_many_threads_never_deadlock() {
    within(LIMIT, "chain stress", || {
        let a = spawn_with(ctypes_config(CHAINS, "chain-a"));
        let b = spawn_with(ctypes_config(CHAINS, "chain-b"));
        let (ia, ib) = (register(&a), register(&b));
        install_ping(&a, ia, ib);
        install_ping(&b, ib, ia);
        let barrier = Barrier::new(4);
        std::thread::scope(|s| {
            for t in 0..4usize {
                let (a, b, barrier) = (&a, &b, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..stress(150) {
                        let depth = (i * 7 + t) % 12;
                        let root = if (i + t) % 2 == 0 { a } else { b };
                        assert_eq!(eval_i64(root, &format!("ping({depth})")), depth as i64 + 1);
                    }
                });
            }
        });
        a.end();
        b.end();
    });
}
