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

#[test]
fn check_and_bench_take_replicas_per_bundle() {
    let want = if interp_pool::python_version() >= (3, 13) {
        "2"
    } else {
        note("check --replicas", "shared_gil on 3.12: one interpreter");
        "1"
    };
    let (ok, stdout, stderr) = cli(&["check", "fixtures/bundles", "--replicas", "py_cruncher=2"]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("py_cruncher"))
        .unwrap_or_else(|| panic!("no cruncher row:\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.get(5), Some(&want), "replicas column: {row}");
    let (ok, stdout, stderr) = cli(&[
        "bench",
        "fixtures/bundles",
        "--replicas",
        "py_cruncher=2",
        "--seconds",
        "1",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("py_cruncher") && l.trim_end().ends_with(want)),
        "{stdout}"
    );
    for bad in ["py_cruncher=0", "=2", "py_cruncher=3..2", "py_cruncher"] {
        let out = Command::new(env!("CARGO_BIN_EXE_polyplug-subinterp"))
            .args(["check", "fixtures/bundles", "--replicas", bad])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
}

#[test]
fn check_and_bench_take_dispatch_per_bundle() {
    let dispatch_of = |table: &str, bundle: &str| {
        let row = table
            .lines()
            .find(|l| l.starts_with(bundle))
            .unwrap_or_else(|| panic!("no {bundle} row:\n{table}"));
        row.split_whitespace().nth(6).unwrap_or_default().to_owned()
    };
    // A misspelt name is a warning, not silence (it would quietly mean `post`).
    let (ok, stdout, stderr) = cli(&[
        "check",
        "fixtures/bundles",
        "--dispatch",
        "py_calculator=direct",
        "--dispatch",
        "py_calculater=direct",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or_default()
            .contains(" dispatch "),
        "{stdout}"
    );
    assert_eq!(dispatch_of(&stdout, "py_calculator"), "direct", "{stdout}");
    assert_eq!(
        dispatch_of(&stdout, "py_counter"),
        "post",
        "the default: {stdout}"
    );
    assert!(
        stderr.contains("PythonConfig::bundle_dispatch names \"py_calculater\""),
        "{stderr}"
    );
    // A bare value is every bundle's default; a name wins over it. JSON says the same.
    let (ok, json, stderr) = cli(&[
        "check",
        "--json",
        "fixtures/bundles",
        "--dispatch",
        "direct",
        "--dispatch",
        "py_counter=post",
    ]);
    assert!(ok, "stdout:\n{json}\nstderr:\n{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("check --json prints JSON");
    for b in doc["bundles"].as_array().expect("bundles") {
        let want = if b["bundle"] == "py_counter" {
            "post"
        } else {
            "direct"
        };
        assert_eq!(b["dispatch"], want, "{b}");
    }
    let (ok, stdout, stderr) = cli(&[
        "bench",
        "fixtures/bundles",
        "--dispatch",
        "py_calculator=direct",
        "--seconds",
        "1",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let metrics = stdout.rsplit("\n\n").next().unwrap_or_default();
    let row = metrics
        .lines()
        .find(|l| l.starts_with("py_calculator"))
        .unwrap_or_else(|| panic!("no metrics row:\n{stdout}"));
    assert_eq!(row.split_whitespace().nth(1), Some("direct"), "{row}");
    // Bad values are usage errors naming the flag and the value.
    for bad in ["py_calculator=fast", "=direct", "quick", "py_calculator="] {
        let out = Command::new(env!("CARGO_BIN_EXE_polyplug-subinterp"))
            .args(["check", "fixtures/bundles", "--dispatch", bad])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("--dispatch") && stderr.contains(bad),
            "{bad}: {stderr}"
        );
    }
}

#[test]
fn check_shows_why_each_ext_bundle_got_its_mode_and_json_says_the_same() {
    let (ok, table, stderr) = cli(&["check", "fixtures/ext-bundles"]);
    assert!(ok, "stdout:\n{table}\nstderr:\n{stderr}");
    let (ok, json, stderr) = cli(&["check", "--json", "fixtures/ext-bundles"]);
    assert!(ok, "stdout:\n{json}\nstderr:\n{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("check --json prints JSON");
    assert_eq!(doc["failed"], 0, "{json}");
    let bundles = doc["bundles"].as_array().expect("bundles");
    assert_eq!(bundles.len(), 5, "{json}");
    // The table and the JSON tell the same story, bundle by bundle.
    for b in bundles {
        let name = b["bundle"].as_str().unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
        let mode = b["mode"].as_str().unwrap();
        let why = b["reason"]["text"].as_str().unwrap();
        assert!(
            row.contains(&format!(" {mode} ")) && row.contains(why),
            "{row}\n{b}"
        );
    }
    if !polyplug_subinterp::InterpreterMode::default()
        .eq(&polyplug_subinterp::InterpreterMode::OwnGil)
    {
        note(
            "check --json",
            "modes not asserted (before 3.13 shared_gil cannot refuse extension modules)",
        );
        return;
    }
    let expect = [
        (
            "py_msgpack",
            "main",
            "caught",
            "msgpack._cmsgpack",
            "cython",
        ),
        (
            "py_numpy",
            "main",
            "raised",
            "numpy._core._multiarray_umath",
            "c",
        ),
        ("py_orjson", "main", "raised", "rpds.rpds", "pyo3"),
        ("py_pillow", "shared_gil", "raised", "PIL._imaging", "c"),
        ("py_yaml", "main", "caught", "yaml._yaml", "cython"),
    ];
    for (name, mode, how, module, binding) in expect {
        let b = bundles
            .iter()
            .find(|b| b["bundle"] == name)
            .unwrap_or_else(|| panic!("{name} missing:\n{json}"));
        assert_eq!(b["mode"], mode, "{b}");
        assert_eq!(b["reason"]["how"], how, "{b}");
        assert_eq!(b["reason"]["module"], module, "{b}");
        assert_eq!(b["reason"]["binding"], binding, "{b}");
    }
}
