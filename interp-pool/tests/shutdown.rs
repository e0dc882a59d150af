//! Shutdown finalizes CPython for the whole process, so it has a test binary of its own.

use std::sync::mpsc;
use std::time::Duration;

use interp_pool::{shutdown, Error, InterpreterConfig, InterpreterHandle};

#[test]
fn shutdown_waits_for_running_calls_ends_everything_and_never_reinitialises() {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(120)) {
            eprintln!("watchdog: shutdown test hung; aborting");
            std::process::abort();
        }
    });

    let hs: Vec<_> = (0..3)
        .map(|i| InterpreterHandle::spawn(InterpreterConfig::named(format!("sd-{i}"))).unwrap())
        .collect();
    // `import decimal` in a second own-GIL interpreter crashes CPython 3.12.1 itself
    // ("double free or corruption"; reproduced with plain `_xxsubinterpreters`, no Rust).
    let prelude = if interp_pool::python_version() >= (3, 13) {
        "import json, decimal\nx = 41"
    } else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "note: shutdown test on CPython 3.12: imports json only (decimal crashes 3.12 \
             with several own-GIL interpreters)"
        );
        "import json\nx = 41"
    };
    for h in &hs {
        h.call(move |py| py.run(prelude)).unwrap();
    }
    // The main interpreter's server is stopped by shutdown too (its thread state deleted
    // before py-main finalizes).
    let main = InterpreterHandle::main(InterpreterConfig::default()).unwrap();
    main.call(|py| py.run("import json\nmain_x = 1")).unwrap();
    assert_eq!(interp_pool::live_interpreters(), 4);

    // A call that is running when shutdown starts finishes normally.
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let running = {
        let h = hs[0].clone();
        std::thread::spawn(move || {
            h.call(move |py| {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                py.eval("x + 1")?.extract_i64(py)
            })
        })
    };
    started_rx.recv().unwrap();
    let shutting = std::thread::spawn(shutdown);
    while !interp_pool::is_shut_down() {
        std::thread::yield_now();
    }
    release_tx.send(()).unwrap();
    assert_eq!(running.join().unwrap().unwrap(), 42);
    shutting.join().unwrap().unwrap();

    assert_eq!(interp_pool::live_interpreters(), 0);
    for h in hs.iter().chain([&main]) {
        assert!(h.is_ended());
        assert!(matches!(
            h.call(|_| Ok(())),
            Err(Error::InterpreterGone { .. })
        ));
    }
    assert!(matches!(
        InterpreterHandle::spawn(InterpreterConfig::named("after")),
        Err(Error::ShutDown)
    ));
    assert!(matches!(
        InterpreterHandle::main(InterpreterConfig::default()),
        Err(Error::ShutDown)
    ));
    shutdown().unwrap(); // idempotent
    drop(tx);
}
