//! The README's main command, run as a user would.

use std::process::Command;

#[path = "shared/bundle.rs"]
mod bundle;
use bundle::write_bundle_in;

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_polyplug-subinterp"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The mode `check` runs bundles in by default on the CPython under test (the loader's
/// default; `protocol::default_config_*` pins what that is per version).
fn default_mode() -> &'static str {
    polyplug_subinterp::InterpreterMode::default().as_str()
}

/// A note past libtest's output capture (see tests/all/support.rs `note`).
fn note(test: &str, why: &str) {
    use std::io::Write;
    let (major, minor) = interp_pool::python_version();
    let _ = writeln!(
        std::io::stderr().lock(),
        "note: {test} on CPython {major}.{minor}: {why}"
    );
}

#[test]
fn check_loads_every_fixture_bundle() {
    let (ok, stdout, stderr) = cli(&["check", "fixtures/bundles"]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for (bundle, contract) in [
        ("py_calculator", "calculator@1"),
        ("py_counter", "counter@1"),
        ("py_cruncher", "cruncher@1"),
        ("py_pipeline", "pipeline@1"),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(bundle))
            .unwrap_or_else(|| panic!("no row for {bundle}:\n{stdout}"));
        assert!(
            row.contains(" ok ") && row.contains(contract) && row.contains(default_mode()),
            "{row}"
        );
        assert!(row.contains(" on "), "fast glue is on by default: {row}");
    }
    assert!(stdout.contains("fast glue"), "{stdout}");
    assert!(stdout.contains("4 bundles, 4 loaded, 0 failed"), "{stdout}");
}

#[test]
fn check_says_when_fast_glue_is_off() {
    let (ok, stdout, stderr) = cli(&["check", "fixtures/bundles", "--no-fast-glue"]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("py_calculator"))
        .unwrap_or_else(|| panic!("no row:\n{stdout}"));
    assert!(row.contains(" off "), "{row}");
}

#[test]
fn bench_reports_every_fixture_contract_without_errors() {
    let (ok, stdout, stderr) = cli(&[
        "bench",
        "fixtures/bundles",
        "--threads",
        "2",
        "--seconds",
        "1",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for call in [
        "calculator   add",
        "counter      increment",
        "cruncher     crunch",
        "pipeline     run",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(call))
            .unwrap_or_else(|| panic!("no row {call}:\n{stdout}"));
        assert!(row.trim_end().ends_with(" 0"), "errors in {row}");
    }
}

#[test]
fn bad_usage_says_how_to_use_it() {
    let (ok, _, stderr) = cli(&["frobnicate"]);
    assert!(!ok);
    // clap writes "Usage:".
    assert!(stderr.to_lowercase().contains("usage:"), "{stderr}");
}

#[test]
fn unknown_flags_and_bad_numbers_are_usage_errors() {
    for args in [
        &["check", "fixtures/bundles", "--bogus"][..],
        &["bench", "fixtures/bundles", "--threads", "0"],
        &["bench", "fixtures/bundles", "--seconds", "x"],
        &["check", "no/such/dir"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_polyplug-subinterp"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run the CLI");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    }
}

#[test]
fn check_shows_the_mode_each_bundle_runs_in() {
    let root = std::env::temp_dir().join(format!(
        "polyplug-subinterp-cli-modes-{}",
        std::process::id()
    ));
    write_bundle_in(
        &root,
        "tm_user",
        "import _tracemalloc\nclass Ok:\n    code = 0\ndef f(*a):\n    pass\ndef polyplug_init(h, c):\n    return ([{'contract': 'tm@1', 'factory': lambda h: None, 'functions': [f]}], Ok())\n",
        &[],
    );
    let (ok, stdout, stderr) = cli(&["check", root.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&root);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("tm_user"))
        .expect("a row");
    if default_mode() == "own_gil" {
        // 3.13: _tracemalloc refuses own-GIL and shared-GIL subinterpreters: main.
        assert!(row.contains(" main "), "{row}");
        assert!(
            stderr.contains("_tracemalloc"),
            "the downgrade warning names the module:\n{stderr}"
        );
    } else {
        assert!(row.contains("shared_gil"), "{row}");
        note(
            "check_shows_the_mode_each_bundle_runs_in",
            "shared_gil is already the default, so there is no downgrade warning to check",
        );
    }
}

#[test]
fn check_shows_numpy_and_orjson_bundles_in_main() {
    if default_mode() != "own_gil" {
        note(
            "check_shows_numpy_and_orjson_bundles_in_main",
            "skipped: before 3.13 shared_gil cannot refuse extensions, so nothing downgrades to main",
        );
        return;
    }
    let (ok, stdout, stderr) = cli(&["check", "fixtures/ext-bundles"]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for b in ["py_numpy", "py_orjson"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(b))
            .unwrap_or_else(|| panic!("no row {b}:\n{stdout}"));
        assert!(row.contains(" ok ") && row.contains(" main "), "{row}");
    }
    // The PyO3 module (rpds) sends py_orjson straight to main, never via shared_gil.
    assert!(
        stderr.contains("module=rpds.rpds") && stderr.contains("to=main"),
        "{stderr}"
    );
    assert!(!stderr.contains("to=shared_gil module=rpds"), "{stderr}");
}
