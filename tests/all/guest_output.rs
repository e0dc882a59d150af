//! A plugin's `print()` and `sys.stderr` go to the runtime's logger (scope = bundle name),
//! line by line, in every interpreter mode; it and every log line and error name the
//! bundle by its manifest name, whatever its entry file is called.

use polyplug::error::LoaderError;
use polyplug_abi::types::LogLevel;
use polyplug_abi::AbiErrorCode;
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};
use polyplug_utils::BundleId;

use crate::core_api::host::host_callers::CalculatorContract;
use crate::support::*;

const PRINTER: &str = "import sys\n\
print('hello from import')\n\
def speak(impl, args, out, arena, alloc):\n    \
    n = i64_at(args)\n    \
    print('call', n)\n    \
    print('two', 'lines', sep='\\n')\n    \
    sys.stdout.write('par')\n    \
    sys.stdout.write('tial\\n')\n    \
    sys.stderr.write(f'warned {n}\\n')\n    \
    sys.stdout.write('no newline at unload')\n    \
    put_i64(out, n)\n";

fn lines_of(logs: &Logs, bundle: &str) -> Vec<(LogLevel, String)> {
    logs.lock()
        .unwrap()
        .iter()
        .filter(|(_, scope, _)| scope == bundle)
        .map(|(level, _, msg)| (*level, msg.clone()))
        .collect()
}

fn check(name: &str, mode: Option<InterpreterMode>, expect_mode: &str) {
    let loader = PythonLoader::new(PythonConfig {
        bundle_modes: mode.map(|m| (name.to_owned(), m)).into_iter().collect(),
        ..PythonConfig::default()
    });
    let (rt, logs) = runtime_with(loader.clone(), &[]);
    let (_, dir) = write_bundle(
        name,
        &plugin_source(&format!("{name}@1"), PRINTER, "speak"),
        &[],
    );
    rt.load_bundle(&dir).unwrap();
    assert_eq!(
        loader.bundle_info(BundleId::new(name).id()).unwrap().mode,
        expect_mode
    );
    assert_eq!(
        lines_of(&logs, name),
        vec![(LogLevel::Info, "hello from import".to_owned())],
        "import-time print"
    );
    assert_eq!(call_i64(&rt, name, 0, 5), Ok(5));
    rt.unload_bundle(BundleId::new(name)).unwrap();
    let info = |s: &str| (LogLevel::Info, s.to_owned());
    assert_eq!(
        lines_of(&logs, name),
        vec![
            info("hello from import"),
            info("call 5"),
            info("two"),
            info("lines"),
            info("partial"),
            (LogLevel::Warn, "warned 5".to_owned()),
            info("no newline at unload"),
        ]
    );
}

#[test]
fn prints_go_to_the_runtime_logger_with_the_bundle_as_scope() {
    // own_gil on 3.13+, shared_gil (the default there) on 3.12.
    check("printer", None, InterpreterMode::default().as_str());
}

#[test]
fn prints_of_a_shared_gil_bundle_go_to_the_runtime_logger() {
    check(
        "printer_shared",
        Some(InterpreterMode::SharedGil),
        "shared_gil",
    );
}

#[test]
fn prints_of_a_main_mode_bundle_are_routed_to_that_bundle() {
    check("printer_main", Some(InterpreterMode::Main), "main");
}

/// A one-file bundle `name` whose entry module is `entry.py` (not `name.py`).
fn write_bundle_with_entry(name: &str, entry: &str, source: &str) -> std::path::PathBuf {
    let (_, dir) = write_bundle(name, "", &[(&format!("{entry}.py"), source)]);
    std::fs::remove_file(dir.join(format!("{name}.py"))).unwrap();
    let id = BundleId::new(name).id();
    std::fs::write(
        dir.join("manifest.toml"),
        format!("name = \"{name}\"\nid = {id}\nloader = \"python\"\nfile = \"{entry}.py\"\n"),
    )
    .unwrap();
    dir
}

fn scopes(logs: &Logs) -> Vec<String> {
    logs.lock()
        .unwrap()
        .iter()
        .map(|(_, scope, _)| scope.clone())
        .collect()
}

#[test]
fn the_fixture_calculator_logs_tracebacks_under_its_manifest_name() {
    // py_calculator's entry module is calculator_plugin.py.
    let (rt, logs) = fixture_runtime();
    let mut calc = CalculatorContract::new(find(&rt, "calculator"), host(&rt)).unwrap();
    // The result does not fit the i64 the glue packs: struct.error in the guest.
    let err = calc.add(i64::MAX, 1).unwrap_err();
    assert_eq!(err.code, AbiErrorCode::Generic);
    let logs_now = logs.lock().unwrap().clone();
    let (_, scope, msg) = logs_now
        .iter()
        .find(|(_, _, m)| m.contains("Traceback (most recent call last)"))
        .expect("traceback logged");
    assert_eq!(scope, "py_calculator", "{msg}");
    assert!(!scopes(&logs).iter().any(|s| s == "calculator_plugin"));
}

#[test]
fn a_bundle_is_named_by_its_manifest_not_its_entry_file() {
    let (rt, loader, logs) = empty_runtime();
    let name = "named_by_manifest";
    let src = plugin_source(
        &format!("{name}@1"),
        "print('hello from import')\n\
         def speak(impl, args, out, arena, alloc):\n    \
             print('call', i64_at(args))\n    \
             raise ValueError('named boom')\n",
        "speak",
    );
    let dir = write_bundle_with_entry(name, "some_entry", &src);
    rt.load_bundle(&dir).unwrap();
    assert_eq!(call_i64(&rt, name, 0, 4), Err(AbiErrorCode::Generic as u32));
    let lines = lines_of(&logs, name);
    assert_eq!(
        lines[..2],
        [
            (LogLevel::Info, "hello from import".to_owned()),
            (LogLevel::Info, "call 4".to_owned()),
        ],
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(level, m)| *level == LogLevel::Error && m.contains("ValueError: named boom")),
        "traceback under the manifest name: {lines:?}"
    );
    assert!(!scopes(&logs).iter().any(|s| s == "some_entry"));
    rt.unload_bundle(BundleId::new(name)).unwrap();

    // Load errors name it the same way.
    let failing = write_bundle_with_entry(
        "init_named_by_manifest",
        "failing_entry",
        "def polyplug_init(host, ctx):\n    raise RuntimeError('init exploded')\n",
    );
    match load_dir(&loader, &rt, &failing) {
        Err(LoaderError::InitFailed { bundle, error }) => {
            assert_eq!(bundle, "init_named_by_manifest", "{error}");
            assert!(error.contains("init exploded"), "{error}");
        }
        other => panic!("expected InitFailed, got {other:?}"),
    }
    let no_init = write_bundle_with_entry("no_init_named", "entry_without_init", "x = 1\n");
    match load_dir(&loader, &rt, &no_init) {
        Err(LoaderError::InitSymbolMissing { bundle }) => assert_eq!(bundle, "no_init_named"),
        other => panic!("expected InitSymbolMissing, got {other:?}"),
    }
}
