//! Interpreter modes: own_gil by default (3.13+), shared_gil for extensions that support
//! subinterpreters but not a per-interpreter GIL, main for those that refuse every
//! subinterpreter; chosen per bundle or by automatic downgrade at load.
//! Stand-ins: `_test_shared_gil_only` (CPython's own test module, declared "multiple
//! interpreters supported" but not "per-interpreter GIL") and `_tracemalloc` (a builtin
//! that refuses subinterpreters on 3.13). Real numpy/orjson/PyO3: `ext_modules.rs`.
//! On 3.12 shared_gil is the default and `_ctypes` (imported by every bundle here, as by
//! every polyplugc bundle) is what refuses an explicit own_gil.

use polyplug::error::LoaderError;
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};

use crate::support::*;

/// Loads `_test_shared_gil_only` from CPython's `_testmultiphase` library.
const REFUSER: &str = r#"
import importlib.util, importlib.machinery
_origin = importlib.util.find_spec("_testmultiphase").origin
_loader = importlib.machinery.ExtensionFileLoader("_test_shared_gil_only", _origin)
_shared_only = importlib.util.module_from_spec(importlib.util.spec_from_loader("_test_shared_gil_only", _loader))
_loader.exec_module(_shared_only)
def tracing(impl, args, out, arena, alloc):
    put_i64(out, 7 if _shared_only.__name__ == "_test_shared_gil_only" else 8)
"#;

/// Refuses own-GIL and shared-GIL subinterpreters alike on 3.13: runs in main.
const MAIN_ONLY: &str = "import _tracemalloc\ndef tracing(impl, args, out, arena, alloc):\n    put_i64(out, 7 if not _tracemalloc.is_tracing() else 8)\n";

fn loader_with(config: PythonConfig) -> (std::sync::Arc<polyplug::runtime::Runtime>, PythonLoader) {
    let loader = PythonLoader::new(config);
    let (rt, _) = runtime_with(loader.clone(), &[]);
    (rt, loader)
}

/// The extension module that makes an own-GIL load of `REFUSER` fail on this Python.
fn refused_module() -> &'static str {
    if own_gil_runs_ctypes() {
        "_test_shared_gil_only"
    } else {
        "_ctypes"
    }
}

/// Explicitly own_gil (the default only from 3.13), so the downgrade is exercised on 3.12 too.
fn own_gil_config() -> PythonConfig {
    PythonConfig {
        mode: InterpreterMode::OwnGil,
        ..PythonConfig::default()
    }
}

#[test]
fn a_refusing_extension_downgrades_the_bundle_to_shared_gil() {
    let (rt, loader) = loader_with(own_gil_config());
    let (_, dir) = write_bundle(
        "refuser",
        &plugin_source("refuser@1", REFUSER, "tracing"),
        &[],
    );
    load_dir(&loader, &rt, &dir).unwrap();
    assert_eq!(mode_of(&loader, "refuser"), "shared_gil");
    assert_eq!(call_i64(&rt, "refuser", 0, 0), Ok(7));
    // A second such bundle gets an interpreter of its own too.
    let (_, dir2) = write_bundle(
        "refuser_two",
        &plugin_source("refuser2@1", REFUSER, "tracing"),
        &[],
    );
    load_dir(&loader, &rt, &dir2).unwrap();
    assert_eq!(call_i64(&rt, "refuser2", 0, 0), Ok(7));
    // Bundles that do not need it stay own-GIL.
    let (_, plain) = write_bundle(
        "plain_mode",
        &plugin_source(
            "plainmode@1",
            "def f(impl, args, out, arena, alloc):\n    put_i64(out, 1)\n",
            "f",
        ),
        &[],
    );
    load_dir(&loader, &rt, &plain).unwrap();
    if own_gil_runs_ctypes() {
        assert_eq!(mode_of(&loader, "plain_mode"), "own_gil");
    } else {
        // Its glue imports ctypes, which 3.12 refuses in own-GIL interpreters.
        assert_eq!(mode_of(&loader, "plain_mode"), "shared_gil");
        note(
            "modes::a_refusing_extension_downgrades_the_bundle_to_shared_gil",
            "a plain (ctypes) bundle downgrades too; the stays-own_gil check needs 3.13",
        );
    }
}

#[test]
fn with_downgrade_off_the_error_names_the_module_and_the_way_out() {
    let (rt, loader) = loader_with(PythonConfig {
        auto_downgrade: false,
        ..own_gil_config()
    });
    let (_, dir) = write_bundle(
        "refuser_strict",
        &plugin_source("strict@1", REFUSER, "tracing"),
        &[],
    );
    match load_dir(&loader, &rt, &dir) {
        Err(LoaderError::InitFailed { bundle, error }) => {
            assert_eq!(bundle, "refuser_strict");
            for needle in [
                refused_module(),
                "own_gil",
                "automatic downgrade is off",
                "bundle_modes",
            ] {
                assert!(error.contains(needle), "{error:?} lacks {needle:?}");
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bundle_pinned_to_shared_gil_runs_there() {
    let config = PythonConfig {
        bundle_modes: [("pinned".to_owned(), InterpreterMode::SharedGil)].into(),
        ..PythonConfig::default()
    };
    let (rt, loader) = loader_with(config);
    let src = plugin_source("pinned@1", "import ctypes\ndef f(impl, args, out, arena, alloc):\n    put_i64(out, i64_at(args) * 2)\n", "f");
    load_dir(&loader, &rt, &write_bundle("pinned", &src, &[]).1).unwrap();
    assert_eq!(mode_of(&loader, "pinned"), "shared_gil");
    assert_eq!(call_i64(&rt, "pinned", 0, 21), Ok(42));
}

#[test]
fn own_gil_and_shared_gil_bundles_call_each_other() {
    if !own_gil_runs_ctypes() {
        note(
            "modes::own_gil_and_shared_gil_bundles_call_each_other",
            "skipped: the ping-pong bundles call each other through ctypes, which cannot \
             run in an own-GIL interpreter before 3.13",
        );
        return;
    }
    within("cross-mode ping-pong", || {
        let config = PythonConfig {
            bundle_modes: [("pp_pb".to_owned(), InterpreterMode::SharedGil)].into(),
            ..PythonConfig::default()
        };
        let (rt, loader) = loader_with(config);
        crate::reentry::ping_pong(&loader, &rt);
        assert_eq!(mode_of(&loader, "pp_pa"), "own_gil");
        assert_eq!(mode_of(&loader, "pp_pb"), "shared_gil");
        assert_eq!(call_i64(&rt, "pa", 0, 15), Ok(15));
        assert_eq!(call_i64(&rt, "pb", 0, 16), Ok(16));
    });
}

#[test]
fn a_module_refusing_every_subinterpreter_downgrades_twice_to_main() {
    let (rt, loader) = loader_with(own_gil_config());
    let (_, dir) = write_bundle(
        "main_only",
        &plugin_source("mainonly@1", MAIN_ONLY, "tracing"),
        &[],
    );
    load_dir(&loader, &rt, &dir).unwrap();
    if own_gil_runs_ctypes() {
        assert_eq!(mode_of(&loader, "main_only"), "main");
    } else {
        // 3.12: shared_gil cannot check extensions (its `_ctypes` is single-phase), and
        // `_tracemalloc` loads anywhere.
        note(
            "modes::a_module_refusing_every_subinterpreter_downgrades_twice_to_main",
            "stops at shared_gil: it cannot refuse modules before 3.13",
        );
        assert_eq!(mode_of(&loader, "main_only"), "shared_gil");
    }
    assert_eq!(call_i64(&rt, "mainonly", 0, 0), Ok(7));
}

#[test]
fn own_gil_or_shared_gil_and_main_bundles_ping_pong() {
    within("own <-> main ping-pong", || {
        let config = PythonConfig {
            bundle_modes: [("pp_pb".to_owned(), InterpreterMode::Main)].into(),
            ..PythonConfig::default()
        };
        let (rt, loader) = loader_with(config);
        crate::reentry::ping_pong(&loader, &rt);
        assert_eq!(
            mode_of(&loader, "pp_pa"),
            InterpreterMode::default().as_str()
        );
        assert_eq!(mode_of(&loader, "pp_pb"), "main");
        assert_eq!(call_i64(&rt, "pa", 0, 21), Ok(21));
        assert_eq!(call_i64(&rt, "pb", 0, 30), Ok(30));
    });
}
