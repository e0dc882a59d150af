//! The README's main command, run as a user would.

use std::process::Command;

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
            row.contains(" ok ") && row.contains(contract) && row.contains("own_gil"),
            "{row}"
        );
    }
    assert!(stdout.contains("4 bundles, 4 loaded, 0 failed"), "{stdout}");
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
    assert!(stderr.contains("usage:"), "{stderr}");
}
