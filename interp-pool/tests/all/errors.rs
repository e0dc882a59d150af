//! Python exceptions (including the ones that end a normal Python process) come back as
//! typed values with tracebacks; the interpreter keeps serving afterwards.

use interp_pool::Error;

use crate::util::*;

fn py_err(r: interp_pool::Result<()>) -> interp_pool::PyException {
    match r {
        Err(Error::Python(e)) => e,
        other => panic!("expected a Python exception, got {other:?}"),
    }
}

#[test]
fn exception_carries_type_message_and_traceback() {
    let h = spawn("errors");
    run(&h, "class BadThing(Exception):\n    pass\ndef inner(x):\n    raise ValueError(f'bad value {x}')\ndef outer():\n    inner(7)\n");
    let e = py_err(h.call(|py| py.run("outer()")));
    assert_eq!(e.type_name, "ValueError");
    assert_eq!(e.message, "bad value 7");
    assert_eq!(e.interp, h.id());
    assert!(
        e.traceback
            .starts_with("Traceback (most recent call last):"),
        "{}",
        e.traceback
    );
    for needle in ["in outer", "in inner", "ValueError: bad value 7"] {
        assert!(
            e.traceback.contains(needle),
            "missing {needle:?} in:\n{}",
            e.traceback
        );
    }
    assert_eq!(e.to_string(), "ValueError: bad value 7");
    let custom = py_err(h.call(|py| py.run("raise BadThing('custom')")));
    assert_eq!(custom.type_name, "__main__.BadThing");
    assert_eq!(eval_i64(&h, "1 + 1"), 2);
    h.end();
}

#[test]
fn system_exit_keyboard_interrupt_and_recursion_are_values() {
    let h = spawn("fatal-ish");
    let e = py_err(h.call(|py| py.run("import sys\nsys.exit(3)")));
    assert_eq!(
        (e.type_name.as_str(), e.message.as_str()),
        ("SystemExit", "3")
    );
    let e = py_err(h.call(|py| py.run("raise KeyboardInterrupt")));
    assert_eq!(e.type_name, "KeyboardInterrupt");
    let e = py_err(h.call(|py| py.run("def f():\n    return f()\nf()")));
    assert_eq!(e.type_name, "RecursionError");
    // Still alive and at full recursion budget.
    assert_eq!(eval_i64(&h, "(lambda: 5)()"), 5);
    run(&h, "def g(n):\n    return 0 if n == 0 else 1 + g(n - 1)\n");
    assert_eq!(eval_i64(&h, "g(900)"), 900);
    h.end();
}

#[test]
fn extension_refusing_subinterpreters_is_its_own_kind() {
    // A builtin that refuses own-GIL interpreters, and a stdlib module importing it:
    // `_tracemalloc` from 3.13 (3.12 accepts it), `_ctypes` on 3.12.
    let (ext, wrapper) = if own_gil_runs_ctypes() {
        ("_tracemalloc", "tracemalloc")
    } else {
        ("_ctypes", "ctypes")
    };
    let h = spawn("unsupported");
    match h.call(|py| py.import(ext).map(drop)) {
        Err(Error::Unsupported { module, exception }) => {
            assert_eq!(module, ext);
            assert_eq!(exception.type_name, "ImportError");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // Also when the refusal is the context of another exception.
    let code = format!(
        "try:\n    import {wrapper}\nexcept ImportError as e:\n    raise RuntimeError('plugin needs {wrapper}')"
    );
    let r = h.call(move |py| py.run(&code));
    assert!(
        matches!(r, Err(Error::Unsupported { ref module, .. }) if module == ext),
        "{r:?}"
    );
    h.end();
}

#[test]
fn panic_in_job_resumes_on_caller_and_interpreter_survives() {
    let h = spawn("panics");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.call(|_| -> interp_pool::Result<()> { panic!("job blew up") })
    }));
    let payload = caught.expect_err("panic must resume on the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"job blew up"));
    assert_eq!(eval_i64(&h, "6 * 7"), 42);
    h.end();
}

#[test]
fn bad_input_from_rust_is_a_python_value_error() {
    let h = spawn("nul");
    let e = py_err(h.call(|py| py.run("x = 1\0")));
    assert_eq!(e.type_name, "ValueError");
    let e = py_err(h.call(|py| py.eval("'not an int'")?.extract_i64(py).map(drop)));
    assert_eq!(e.type_name, "TypeError");
    h.end();
}

/// Defect 8 (issue 20): settings no interpreter can work with are refused with a typed
/// error naming the interpreter and the value, wherever a config is taken; never a panic
/// or a thread that dies on its first frame.
#[test]
fn an_unworkable_config_is_an_init_error_naming_the_value() {
    use interp_pool::{InterpreterConfig, InterpreterHandle, MainLane, MIN_STACK_SIZE};
    let bad = [
        (
            InterpreterConfig {
                max_depth: 0,
                ..InterpreterConfig::named("no_depth")
            },
            "max_depth 0",
        ),
        (
            InterpreterConfig {
                stack_size: 0,
                ..InterpreterConfig::named("no_stack")
            },
            "stack_size 0",
        ),
        (
            InterpreterConfig {
                stack_size: MIN_STACK_SIZE - 1,
                ..InterpreterConfig::named("small_stack")
            },
            "stack_size 1048575",
        ),
    ];
    for (config, value) in bad {
        let name = config.name.clone();
        let made = [
            ("spawn", InterpreterHandle::spawn(config.clone()).err()),
            ("main", InterpreterHandle::main(config.clone()).err()),
            ("lane", MainLane::new(&config, 1).err()),
        ];
        for (how, e) in made {
            match e {
                Some(Error::Init(msg)) => assert!(
                    msg.contains(&name) && msg.contains(value),
                    "{how}: {msg:?} should name {name} and {value:?}"
                ),
                other => panic!("{how} with {value}: expected Error::Init, got {other:?}"),
            }
        }
    }
    let fine = InterpreterConfig {
        stack_size: MIN_STACK_SIZE,
        max_depth: 1,
        ..InterpreterConfig::named("smallest")
    };
    let h = InterpreterHandle::spawn(fine).expect("the smallest accepted config works");
    assert_eq!(eval_i64(&h, "sum(range(10))"), 45);
    h.end();
}
