//! A single-phase-init extension module whose init imports a module of its own package
//! (issue 23 §1). In a subinterpreter, CPython 3.13 runs every extension's init function
//! in the main interpreter first, where `sys.path` lacks the bundle's `site-packages`: the
//! init fails there, and the subinterpreter gets either that exception (3.13.0) or
//! "failed to import from subinterpreter due to exception" (3.13.15, gh-144601). The
//! package catches the ImportError and falls back to pure Python. The loader must see it
//! as a refusal and move the bundle to `main`, where the init finds the bundle's modules;
//! and must not move a bundle whose extension fails for an unrelated reason (a missing
//! shared library, a dependency the bundle itself lacks).
//!
//! The extensions are compiled here, with `cc` and the headers of the CPython the tests
//! run (its own `sysconfig`), into each test's scratch bundle: no binary in git.

use std::path::{Path, PathBuf};
use std::process::Command;

use interp_pool::{InterpreterConfig, InterpreterHandle};
use polyplug_subinterp::{
    Binding, CaughtRefusals, Evidence, InterpreterMode, ModeCause, ModeReason, PythonConfig,
    PythonLoader, RefusalHow,
};

use crate::support::*;

/// One expression evaluated in the main interpreter, as text.
fn main_eval(expr: &str) -> String {
    let expr = expr.to_owned();
    InterpreterHandle::main(InterpreterConfig::default())
        .unwrap()
        .call(move |py| py.eval(&expr)?.str(py))
        .unwrap()
}

/// The C source of `<pkg>._accel`: single-phase init (`PyModule_Create`, `m_size` -1)
/// that imports `helper` and copies its `VALUE`; with `needs_lib`, it also calls a
/// function of `libpolyplug_gone.so`, so the `.so` cannot load once that library is gone.
fn accel_source(pkg: &str, helper: &str, needs_lib: bool) -> String {
    let (decl, call) = if needs_lib {
        ("extern int polyplug_gone(void);", "(void)polyplug_gone();")
    } else {
        ("", "")
    };
    format!(
        r#"#define PY_SSIZE_T_CLEAN
#include <Python.h>
{decl}
static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{pkg}._accel", NULL, -1, NULL}};

PyMODINIT_FUNC PyInit__accel(void) {{
    {call}
    PyObject *helper = PyImport_ImportModule("{helper}");
    if (helper == NULL) return NULL;
    PyObject *value = PyObject_GetAttrString(helper, "VALUE");
    Py_DECREF(helper);
    if (value == NULL) return NULL;
    PyObject *m = PyModule_Create(&def);
    if (m == NULL || PyModule_AddObject(m, "VALUE", value) < 0) {{
        Py_DECREF(value);
        Py_XDECREF(m);
        return NULL;
    }}
    return m;
}}
"#
    )
}

/// The package: imports its accelerator through `importlib.import_module` inside
/// `try/except ImportError` and falls back to pure Python (`USES_C` says which).
const ACCELPKG_INIT: &str = r#"import importlib
try:
    _c = importlib.import_module(__name__ + "._accel")
    USES_C = 1
    VALUE = _c.VALUE
except ImportError:
    USES_C = 0
    VALUE = 42
"#;

/// `<contract>@1` fn 0: 1 if package `pkg` runs its C accelerator, 0 on its fallback;
/// fn 1: the accelerator's (or fallback's) VALUE.
fn probe_source(contract: &str, pkg: &str) -> String {
    plugin_source(
        &format!("{contract}@1"),
        &format!(
            r#"import {pkg} as accelpkg

def uses_c(impl, args, out, arena, alloc):
    put_i64(out, accelpkg.USES_C)

def value(impl, args, out, arena, alloc):
    put_i64(out, accelpkg.VALUE)
"#
        ),
        "uses_c, value",
    )
}

/// How the extension of a test bundle is broken, if it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accel {
    /// Its init imports `accelpkg._helper`, which the bundle provides: fine in main.
    ImportsOwnHelper,
    /// Its init imports a module the bundle does not have.
    ImportsMissingModule,
    /// It needs a shared library that is gone.
    MissingSharedLibrary,
}

/// Compiles `src` into `out` (an extension module) with the running CPython's headers.
fn compile(src: &str, out: &Path, extra: &[String]) {
    let include = main_eval("__import__('sysconfig').get_paths()['include']");
    let c = out.with_extension("c");
    std::fs::write(&c, src).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(out)
        .arg(&c)
        .arg(format!("-I{include}"))
        .args(extra)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cc failed for {}", out.display());
    std::fs::remove_file(c).unwrap();
}

/// A bundle `name` (contract `name@1`) in a fresh plugin dir whose `site-packages`
/// holds the package `pkg_<name>` with its extension built as `kind` says. Each bundle
/// has a package of its own: an init run in main sees main's `sys.modules`, which holds
/// a main-mode bundle's modules under their own names while its init runs.
/// Returns (plugin dir, bundle dir).
fn accel_bundle(name: &str, kind: Accel) -> (PathBuf, PathBuf) {
    let pkg = format!("pkg_{name}");
    let (root, dir) = write_bundle(
        name,
        &probe_source(name, &pkg),
        &[
            (&format!("site-packages/{pkg}/__init__.py"), ACCELPKG_INIT),
            (&format!("site-packages/{pkg}/_helper.py"), "VALUE = 7\n"),
        ],
    );
    let sdk = fixtures().join("py_calculator/site-packages");
    for e in std::fs::read_dir(&sdk).unwrap().flatten() {
        std::os::unix::fs::symlink(e.path(), dir.join("site-packages").join(e.file_name()))
            .unwrap();
    }
    let suffix = main_eval("__import__('sysconfig').get_config_var('EXT_SUFFIX')");
    let so = dir.join(format!("site-packages/{pkg}/_accel{suffix}"));
    let helper = format!("{pkg}._helper");
    match kind {
        Accel::ImportsOwnHelper => compile(&accel_source(&pkg, &helper, false), &so, &[]),
        Accel::ImportsMissingModule => compile(
            &accel_source(&pkg, "polyplug_not_in_this_bundle", false),
            &so,
            &[],
        ),
        Accel::MissingSharedLibrary => {
            let libdir = scratch("gone-lib");
            let lib = libdir.join("libpolyplug_gone.so");
            compile("int polyplug_gone(void) { return 0; }\n", &lib, &[]);
            compile(
                &accel_source(&pkg, &helper, true),
                &so,
                &[
                    format!("-L{}", libdir.display()),
                    "-lpolyplug_gone".to_owned(),
                    format!("-Wl,-rpath,{}", libdir.display()),
                ],
            );
            std::fs::remove_file(lib).unwrap();
        }
    }
    (root, dir)
}

fn skip_before_313(test: &str) -> bool {
    if own_gil_runs_ctypes() {
        return false;
    }
    note(
        test,
        "skipped: 3.12 runs an extension's init in the subinterpreter itself (nothing to recognise)",
    );
    true
}

/// A runtime with hot reload enabled and no plugin dirs.
fn reload_runtime(loader: PythonLoader) -> (std::sync::Arc<polyplug::runtime::Runtime>, Logs) {
    let rt = polyplug::runtime_builder::RuntimeBuilder::new()
        .config(polyplug_abi::RuntimeConfig {
            hot_reload_enabled: true,
            ..polyplug_abi::RuntimeConfig::default()
        })
        .loader(loader)
        .build()
        .expect("runtime builds");
    (rt, Logs::default())
}

fn reason(loader: &PythonLoader, bundle: &str) -> ModeReason {
    loader
        .bundle_info(polyplug_utils::BundleId::new(bundle).id())
        .expect("loaded")
        .reason
}

/// Collects the main interpreter's garbage: where a 3.13.0 subinterpreter hands back the
/// init's exception (made in main) once it has copied it.
fn collect_main_garbage() {
    main_eval("__import__('gc').collect()");
}

#[test]
fn an_init_that_fails_in_main_for_want_of_the_bundles_modules_moves_the_bundle_to_main() {
    if skip_before_313("init in main") {
        return;
    }
    within("init in main", || {
        let name = "init_in_main";
        let loader = PythonLoader::default();
        let (rt, _logs) = reload_runtime(loader.clone());
        let (_root, dir) = accel_bundle(name, Accel::ImportsOwnHelper);
        load_dir(&loader, &rt, &dir).unwrap();
        let r = reason(&loader, name);
        assert_eq!(mode_of(&loader, name), "main", "{r}");
        // A plain C module: shared_gil (a subinterpreter too) was tried and failed alike.
        assert_eq!(
            r.cause,
            ModeCause::Refused {
                module: "pkg_init_in_main._accel".into(),
                from: InterpreterMode::SharedGil,
                how: RefusalHow::Caught,
                binding: Binding::C,
                seen: Evidence::InitInMain {
                    needed: Some("pkg_init_in_main".into())
                },
            },
            "{r}"
        );
        let why = r.to_string();
        assert!(
            why.contains("pkg_init_in_main._accel refused shared_gil")
                && why.contains("could not import pkg_init_in_main"),
            "{why}"
        );
        // In main the init finds the bundle's helper: the C implementation runs.
        assert_eq!(call_i64(&rt, name, 0, 0), Ok(1), "{r}");
        assert_eq!(call_i64(&rt, name, 1, 0), Ok(7), "{r}");

        // 200 load/unload cycles (each straight to main: remembered) and a reload.
        let id = polyplug_utils::BundleId::new(name);
        for _ in 0..200 {
            rt.unload_bundle(id).unwrap();
            rt.load_bundle(&dir).unwrap();
            assert_eq!(mode_of(&loader, name), "main");
            assert!(reason(&loader, name).remembered);
        }
        rt.reload_bundle(&dir).unwrap();
        assert_eq!(mode_of(&loader, name), "main");
        assert_eq!(call_i64(&rt, name, 0, 0), Ok(1));
        assert_eq!(call_i64(&rt, name, 1, 0), Ok(7));
        collect_main_garbage();
    });
}

/// The interpreter that saw the failure ends, 200 times: under `CaughtRefusals::KeepMode`
/// the bundle stays in own_gil and runs the package's fallback each time, and the
/// process stays whole (3.13.0 raises the exception made in main in the subinterpreter).
#[test]
fn two_hundred_own_gil_interpreters_that_saw_the_init_fail_in_main_end_cleanly() {
    if skip_before_313("init in main, kept") {
        return;
    }
    within("init in main, kept", || {
        let name = "pinned_accel";
        let loader = PythonLoader::new(PythonConfig {
            caught_refusals: CaughtRefusals::KeepMode,
            ..PythonConfig::default()
        });
        let (rt, _logs) = reload_runtime(loader.clone());
        let (_root, dir) = accel_bundle(name, Accel::ImportsOwnHelper);
        let id = polyplug_utils::BundleId::new(name);
        for i in 0..200 {
            rt.load_bundle(&dir).unwrap();
            let r = reason(&loader, name);
            assert_eq!(mode_of(&loader, name), "own_gil", "cycle {i}: {r}");
            assert_eq!(r.fallback, ["pkg_pinned_accel._accel"], "cycle {i}: {r}");
            assert_eq!(call_i64(&rt, name, 0, 0), Ok(0), "cycle {i}");
            assert_eq!(call_i64(&rt, name, 1, 0), Ok(42), "cycle {i}");
            if i % 50 == 0 {
                collect_main_garbage();
            }
            rt.unload_bundle(id).unwrap();
        }
        rt.load_bundle(&dir).unwrap();
        rt.reload_bundle(&dir).unwrap();
        assert_eq!(call_i64(&rt, name, 1, 0), Ok(42));
        collect_main_garbage();
    });
}

/// Failures that have nothing to do with the interpreter keep the bundle where it is:
/// an extension whose shared library is gone (it never loads, so its init never ran),
/// and one whose init imports a module the bundle does not have either.
#[test]
fn an_extension_failing_for_an_unrelated_reason_does_not_move_the_bundle() {
    if skip_before_313("unrelated failures") {
        return;
    }
    within("unrelated failures", || {
        let (rt, loader, _logs) = empty_runtime();
        for (name, kind) in [
            ("gone_library", Accel::MissingSharedLibrary),
            ("missing_dependency", Accel::ImportsMissingModule),
        ] {
            let (_root, dir) = accel_bundle(name, kind);
            load_dir(&loader, &rt, &dir).unwrap();
            let r = reason(&loader, name);
            assert_eq!(mode_of(&loader, name), "own_gil", "{name}: {r}");
            assert_eq!(r.cause, ModeCause::Configured, "{name}: {r}");
            assert!(r.fallback.is_empty(), "{name}: {r}");
            // The package runs its fallback, as it would anywhere.
            assert_eq!(call_i64(&rt, name, 0, 0), Ok(0), "{name}");
            assert_eq!(call_i64(&rt, name, 1, 0), Ok(42), "{name}");
            rt.unload_bundle(polyplug_utils::BundleId::new(name))
                .unwrap();
        }
        collect_main_garbage();
    });
}

/// Defect 9b: two symlinks back to the bundle dir made the fingerprint walk of
/// remembered outcomes exponential. The load completes, and the second load finds the
/// first one's outcome (the fingerprint is the same).
#[test]
fn a_bundle_with_two_cyclic_symlinks_loads_and_its_outcome_is_remembered() {
    if skip_before_313("cyclic symlinks") {
        return;
    }
    within("cyclic symlinks", || {
        let name = "cyclic_links";
        let (rt, loader, _logs) = empty_runtime();
        let (_root, dir) = accel_bundle(name, Accel::ImportsOwnHelper);
        std::os::unix::fs::symlink(&dir, dir.join("up")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("site-packages/top")).unwrap();
        load_dir(&loader, &rt, &dir).unwrap();
        assert_eq!(mode_of(&loader, name), "main");
        assert!(!reason(&loader, name).remembered);
        rt.unload_bundle(polyplug_utils::BundleId::new(name))
            .unwrap();
        load_dir(&loader, &rt, &dir).unwrap();
        let r = reason(&loader, name);
        assert_eq!(mode_of(&loader, name), "main", "{r}");
        assert!(r.remembered, "{r}");
    });
}
