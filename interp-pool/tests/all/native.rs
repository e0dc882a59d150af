//! Rust closures exposed to Python (`Attached::native_function`): arguments, keywords,
//! forwarding to the function a native replaces, error mapping, panics, and lifetime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use interp_pool::{Attached, CallOptions, Error, NativeError, Persistent, PyObj};

use crate::util::*;

/// Puts `f` into `__main__` under `name`.
fn install(py: &Attached<'_>, name: &str, f: PyObj<'_>) -> interp_pool::Result<()> {
    py.main_dict()?
        .call_method(py, "__setitem__", &[&py.str(name)?, &f])
        .map(drop)
}

#[test]
fn positional_and_keyword_arguments_reach_the_closure() {
    let h = spawn("native-args");
    h.call(|py| {
        let f = py.native_function(c"add", c"add(a, b, *, scale=1)", |py, args| {
            let [a, b] = args.positional() else {
                return Err(NativeError::type_error("add takes (a, b)"));
            };
            let scale = match args.keyword(py, "scale")? {
                Some(s) => s.extract_i64(py)?,
                None => 1,
            };
            Ok(py.int((a.extract_i64(py)? + b.extract_i64(py)?) * scale)?)
        })?;
        install(py, "add", f)
    })
    .unwrap();
    assert_eq!(eval_i64(&h, "add(2, 3)"), 5);
    assert_eq!(eval_i64(&h, "add(2, 3, scale=10)"), 50);
    assert_eq!(eval_str(&h, "add.__name__"), "add");
    assert_eq!(eval_str(&h, "add.__doc__"), "add(a, b, *, scale=1)");
    // NativeError constructors and `?` on a pool error raise the matching builtin type.
    run(
        &h,
        "def kind(f):\n    try:\n        f()\n    except BaseException as e:\n        return f'{type(e).__name__}: {e}'\n",
    );
    assert_eq!(
        eval_str(&h, "kind(lambda: add(1))"),
        "TypeError: add takes (a, b)"
    );
    assert_eq!(
        eval_str(&h, "kind(lambda: add(1, 'x'))"),
        "TypeError: 'str' object cannot be interpreted as an integer"
    );
    let overflow = eval_str(&h, "kind(lambda: add(1, 2**70))");
    assert!(overflow.starts_with("OverflowError: "), "{overflow}");
    h.end();
}

#[test]
fn forward_hands_the_same_call_to_the_replaced_function_with_its_own_errors() {
    let h = spawn("native-forward");
    run(
        &h,
        "class Refused(Exception):\n    pass\n\
         def original(*args, **kw):\n    if args and args[0] == 'boom':\n        raise Refused('from original')\n    return ('original', args, tuple(sorted(kw.items())))\n",
    );
    h.call(|py| {
        let original = Persistent::new(py, py.eval("original")?);
        let fast = py.native_function(
            c"fast",
            c"ints fast, the rest forwarded",
            move |py, args| match args.positional() {
                [a] if !args.has_keywords() && a.extract_i64(py).is_ok() => Ok(py.str("fast")?),
                _ => args.forward(py, &original.bind(py)?),
            },
        )?;
        install(py, "fast", fast)
    })
    .unwrap();
    assert_eq!(eval_str(&h, "fast(1)"), "fast");
    assert_eq!(
        eval_str(&h, "repr(fast('a', 2))"),
        "('original', ('a', 2), ())"
    );
    assert_eq!(
        eval_str(&h, "repr(fast(1, k=3))"),
        "('original', (1,), (('k', 3),))"
    );
    assert_eq!(
        eval_str(&h, "repr(fast(k=3))"),
        "('original', (), (('k', 3),))"
    );
    // The original's exception object comes through unchanged: same class, same identity.
    run(
        &h,
        "try:\n    fast('boom')\nexcept Refused as e:\n    caught = (type(e) is Refused, str(e))\n",
    );
    assert_eq!(eval_str(&h, "repr(caught)"), "(True, 'from original')");
    h.end();
}

#[test]
fn a_panic_becomes_system_error_and_the_interpreter_serves_on() {
    let h = spawn("native-panic");
    h.call(|py| {
        let f = py.native_function(c"bad", c"", |_py, _args| -> interp_pool::NativeResult<'_> {
            panic!("native boom")
        })?;
        install(py, "bad", f)
    })
    .unwrap();
    let e = h.call(|py| py.run("bad()"));
    match e {
        Err(Error::Python(e)) => assert_eq!(e.type_name, "SystemError", "{e}"),
        other => panic!("expected SystemError, got {other:?}"),
    }
    assert_eq!(eval_i64(&h, "40 + 2"), 42);
    h.end();
}

#[test]
fn the_closure_is_dropped_with_its_function_object() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let h = spawn("native-drop");
    let counted = Counted(Arc::clone(&drops));
    h.call(move |py| {
        let f = py.native_function(c"keep", c"", move |py, _args| {
            let _ = &counted;
            Ok(py.none())
        })?;
        install(py, "keep", f)
    })
    .unwrap();
    run(&h, "keep()");
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    run(&h, "del keep\nimport gc\ngc.collect()");
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "closure dropped with the function"
    );
    h.end();
}

#[test]
fn interrupts_raise_the_interpreters_named_classes() {
    let h = spawn("named-interrupts");
    run(
        &h,
        "import interp_pool\n\
         def spin():\n    try:\n        while True:\n            pass\n    except interp_pool.DeadlineExceeded as e:\n        global seen\n        seen = (type(e).__module__, type(e).__name__, isinstance(e, Exception))\n        raise\n",
    );
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(50)),
        cancel: None,
        ..CallOptions::default()
    };
    let r = within(Duration::from_secs(20), "interrupt", || {
        h.call_with(&opts, |py| py.run("spin()"))
    });
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert_eq!(
        eval_str(&h, "repr(seen)"),
        "('interp_pool', 'DeadlineExceeded', False)"
    );
    assert_eq!(
        eval_str(&h, "interp_pool.Cancelled.__mro__[1].__name__"),
        "BaseException"
    );
    h.end();
}
