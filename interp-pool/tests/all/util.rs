//! Shared test helpers: interpreter construction and a watchdog that turns a hang into a
//! loud abort instead of a stuck CI job.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use interp_pool::{InterpreterConfig, InterpreterHandle};

/// Default bound for one threaded test on a slow, shared 2-core machine.
pub const LIMIT: Duration = Duration::from_secs(120);

#[path = "../shared/stress.rs"]
mod stress;
pub use stress::stress;

pub fn spawn(name: &str) -> InterpreterHandle {
    InterpreterHandle::spawn(InterpreterConfig::named(name)).expect("spawn interpreter")
}

pub fn spawn_with(config: InterpreterConfig) -> InterpreterHandle {
    InterpreterHandle::spawn(config).expect("spawn interpreter")
}

/// Runs `f`, aborting the whole process if it takes longer than `limit` (a hung thread
/// cannot be cancelled, and a deadlock must fail the run, not stall it).
pub fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    let what = what.to_owned();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("watchdog: `{what}` did not finish within {limit:?}; aborting");
            std::process::abort();
        }
    });
    let r = f();
    drop(tx);
    r
}

/// Waits until `cond` holds, polling every millisecond: for a state a test can observe
/// but is not told of (a call sitting in a queue). Bound it with [`within`].
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Holds `h`'s owner thread inside a job until the returned sender is used (or dropped):
/// once this returns, the job is running, so calls made from now on queue behind it.
/// Join the thread after releasing it.
pub fn hold(h: &InterpreterHandle) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let h = h.clone();
    let holder = thread::spawn(move || {
        h.call(move |_| {
            started_tx.send(()).unwrap();
            let _ = release_rx.recv();
            Ok(())
        })
        .expect("the holding job runs")
    });
    started_rx.recv().expect("the holding job started");
    (release_tx, holder)
}

/// Evaluates an integer expression in `h`.
pub fn eval_i64(h: &InterpreterHandle, expr: &str) -> i64 {
    let expr = expr.to_owned();
    h.call(move |py| py.eval(&expr)?.extract_i64(py))
        .expect("eval")
}

/// Evaluates a str-valued expression in `h`.
pub fn eval_str(h: &InterpreterHandle, expr: &str) -> String {
    let expr = expr.to_owned();
    h.call(move |py| py.eval(&expr)?.extract_string(py))
        .expect("eval")
}

pub fn run(h: &InterpreterHandle, code: &str) {
    let code = code.to_owned();
    h.call(move |py| py.run(&code)).expect("run")
}

/// Whether `ctypes` loads in an own-GIL interpreter on the CPython under test: 3.13+
/// (3.12's `_ctypes` refuses them with "does not support loading in subinterpreters").
pub fn own_gil_runs_ctypes() -> bool {
    interp_pool::python_version() >= (3, 13)
}

/// Settings for a test that needs `ctypes`: its own GIL where `_ctypes` accepts one (3.13+),
/// else the main GIL (the test then checks the same call paths without parallelism; `test`
/// names the test in the note printed about it).
pub fn ctypes_config(test: &str, name: &str) -> InterpreterConfig {
    if own_gil_runs_ctypes() {
        return InterpreterConfig::named(name);
    }
    note(
        test,
        "runs in shared-GIL interpreters: 3.12's _ctypes refuses own-GIL ones",
    );
    InterpreterConfig {
        gil: interp_pool::GilMode::Shared,
        check_multi_interp_extensions: false,
        ..InterpreterConfig::named(name)
    }
}

/// Tells the person running the tests (past libtest's output capture, which only catches
/// `print!`/`eprint!`) that `test` skipped or changed part of what it checks, and why.
/// Printed once per test and reason.
pub fn note(test: &str, why: &str) {
    use std::io::Write;
    static SEEN: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let key = (test.to_owned(), why.to_owned());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&key) {
        return;
    }
    seen.push(key);
    let (major, minor) = interp_pool::python_version();
    let _ = writeln!(
        std::io::stderr().lock(),
        "note: {test} on CPython {major}.{minor}: {why}"
    );
}
