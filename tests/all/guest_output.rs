//! A plugin's `print()` and `sys.stderr` go to the runtime's logger (scope = bundle name),
//! line by line, in every interpreter mode.

use polyplug_abi::types::LogLevel;
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};
use polyplug_utils::BundleId;

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
