//! Real PyPI packages whose C accelerators refuse own-GIL interpreters, often behind a
//! `try: ... except ImportError` (PyYAML, msgpack: Cython; Pillow: plain C supporting
//! subinterpreters but not a GIL of their own): each bundle lands in the mode it needs,
//! with the reason reported, and answers from 8 threads; the caught-refusal switch both
//! ways, ignored refusals, call-time refusals, remembered outcomes.
//!
//! Cython modules load in one interpreter per process, so these tests never let one load
//! in a subinterpreter (that would lock the main interpreter out of it for the rest of
//! the test binary); on 3.12, where shared_gil cannot refuse them, the bundles that use
//! them are pinned to main or the test is skipped with a note.

use std::path::{Path, PathBuf};

use polyplug::error::LoaderError;
use polyplug_abi::types::LogLevel;
use polyplug_subinterp::{
    Binding, CaughtRefusals, Evidence, InterpreterMode, ModeCause, PythonConfig, PythonLoader,
    RefusalHow,
};

use crate::ext_api::host::host_callers::{ImagingContract, PackerContract, YamlconvContract};
use crate::support::*;

fn info(loader: &PythonLoader, bundle: &str) -> polyplug_subinterp::BundleInfo {
    loader
        .bundle_info(polyplug_utils::BundleId::new(bundle).id())
        .expect("loaded")
}

/// The size of msgpack.packb({"n": n, "values": [0..n), "names": ["k0", ...]}), n < 2^16.
fn packed_len(n: i64) -> i64 {
    let int = |v: i64| match v {
        0..=127 => 1,
        128..=255 => 2,
        _ => 3,
    };
    let array = |len: i64| if len < 16 { 1 } else { 3 };
    let values: i64 = (0..n).map(int).sum();
    let names: i64 = (0..n).map(|i| 1 + 1 + i.to_string().len() as i64).sum();
    1 + 2 + int(n) + 7 + array(n) + values + 6 + array(n) + names
}

/// The sum of all channels of the fixture's n x n gradient.
fn checksum(n: i64) -> i64 {
    let mut sum = 0;
    for y in 0..n {
        for x in 0..n {
            sum += x % 256 + y % 256 + (x + y) % 256;
        }
    }
    sum
}

fn check_yaml(text: &str, n: i64) {
    assert!(text.contains(&format!("\nn: {n}\n")), "{text}");
    assert_eq!(text.matches("- id: ").count() as i64, n, "{text}");
    if n > 0 {
        assert!(
            text.contains(&format!("square: {}\n", (n - 1) * (n - 1))),
            "{text}"
        );
    }
}

/// The three accelerator fixtures only.
fn accelerator_dir() -> PathBuf {
    ext_fixtures_only(&["py_yaml", "py_msgpack", "py_pillow"])
}

#[test]
fn yaml_msgpack_and_pillow_land_in_the_mode_they_need_and_answer_from_8_threads() {
    within("accelerators from 8 threads", || {
        let loader = if own_gil_runs_ctypes() {
            PythonLoader::default()
        } else {
            note(
                "accelerators",
                "py_yaml and py_msgpack pinned to main (shared_gil cannot refuse Cython modules before 3.13)",
            );
            PythonLoader::new(PythonConfig {
                bundle_modes: [
                    ("py_yaml".to_owned(), InterpreterMode::Main),
                    ("py_msgpack".to_owned(), InterpreterMode::Main),
                ]
                .into(),
                ..PythonConfig::default()
            })
        };
        let (rt, _logs) = runtime_with(loader.clone(), &[accelerator_dir()]);
        assert_eq!(mode_of(&loader, "py_yaml"), "main");
        assert_eq!(mode_of(&loader, "py_msgpack"), "main");
        assert_eq!(mode_of(&loader, "py_pillow"), "shared_gil");
        if own_gil_runs_ctypes() {
            // Both Cython accelerators were caught by their package, seen anyway, and
            // sent from own_gil straight to main.
            for (bundle, module) in [
                ("py_yaml", "yaml._yaml"),
                ("py_msgpack", "msgpack._cmsgpack"),
            ] {
                let r = info(&loader, bundle).reason;
                assert_eq!(
                    r.cause,
                    ModeCause::Refused {
                        module: module.into(),
                        from: InterpreterMode::OwnGil,
                        how: RefusalHow::Caught,
                        binding: Binding::Cython,
                        seen: Evidence::Message,
                    },
                    "{bundle}: {r}"
                );
                assert_eq!(r.how(), "caught");
            }
            let r = info(&loader, "py_pillow").reason;
            assert_eq!(
                r.cause,
                ModeCause::Refused {
                    module: "PIL._imaging".into(),
                    from: InterpreterMode::OwnGil,
                    how: RefusalHow::Raised,
                    binding: Binding::C,
                    seen: Evidence::Message,
                },
                "{r}"
            );
        }
        std::thread::scope(|s| {
            for t in 0..8i64 {
                let rt = &rt;
                s.spawn(move || {
                    let host = host(rt);
                    let mut y = YamlconvContract::new(find(rt, "yamlconv"), host).unwrap();
                    let mut p = PackerContract::new(find(rt, "packer"), host).unwrap();
                    let mut i = ImagingContract::new(find(rt, "imaging"), host).unwrap();
                    for k in 0..12 {
                        let n = t * 3 + k;
                        check_yaml(&text(y.roundtrip(n % 7).unwrap()), n % 7);
                        // The packer asserts msgpack's C implementation in every call.
                        let m = n * 9;
                        assert_eq!(p.packed_len(m).unwrap(), packed_len(m), "n={m}");
                        assert_eq!(i.checksum(n + 1).unwrap(), checksum(n + 1));
                    }
                });
            }
        });
    });
}

/// A hand-written bundle (no polyplugc glue, only ctypes) with msgpack's site-packages:
/// `probe@1` fn 0 answers 1 if msgpack's C implementation is in use, 0 on its fallback;
/// with `lazy`, msgpack is imported inside the call instead of at load. fn 1 imports
/// `msgpack._cmsgpack` itself (the refusal reaches the call).
fn msgpack_probe(name: &str, lazy: bool) -> (PathBuf, PathBuf) {
    let top = if lazy { "" } else { "import msgpack\n" };
    let defs = format!(
        r#"{top}
def uses_c(impl, args, out, arena, alloc):
    import msgpack
    put_i64(out, int(msgpack.Packer.__module__ == "msgpack._cmsgpack"))

def direct(impl, args, out, arena, alloc):
    import msgpack._cmsgpack
    put_i64(out, 1)
"#
    );
    let (root, dir) = write_bundle(
        name,
        &plugin_source("probe@1", &defs, "uses_c, direct"),
        &[],
    );
    std::os::unix::fs::symlink(
        ext_fixtures().join("py_msgpack/site-packages"),
        dir.join("site-packages"),
    )
    .unwrap();
    (root, dir)
}

fn skip_before_313(test: &str) -> bool {
    if own_gil_runs_ctypes() {
        return false;
    }
    note(
        test,
        "skipped: needs own-GIL interpreters running ctypes (shared_gil cannot refuse Cython modules before 3.13)",
    );
    true
}

#[test]
fn a_caught_refusal_downgrades_by_default_keeps_the_mode_when_asked_and_can_be_ignored() {
    if skip_before_313("caught refusal switch") {
        return;
    }
    within("caught refusal switch", || {
        // Default (Downgrade): msgpack caught its refusal; the loader moves the bundle to
        // main, where the C implementation is the one in use.
        let loader = PythonLoader::default();
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let (_root, dir) = msgpack_probe("caught_default", false);
        load_dir(&loader, &rt, &dir).unwrap();
        assert_eq!(mode_of(&loader, "caught_default"), "main");
        assert_eq!(info(&loader, "caught_default").reason.how(), "caught");
        assert_eq!(call_i64(&rt, "probe", 0, 0), Ok(1));

        // KeepMode: stays in own_gil, runs msgpack's pure-Python fallback, says so.
        let keep = PythonLoader::new(PythonConfig {
            caught_refusals: CaughtRefusals::KeepMode,
            ..PythonConfig::default()
        });
        let (rt, _logs) = runtime_with(keep.clone(), &[]);
        let (_root, dir) = msgpack_probe("caught_kept", false);
        load_dir(&keep, &rt, &dir).unwrap();
        assert_eq!(mode_of(&keep, "caught_kept"), "own_gil");
        let r = info(&keep, "caught_kept").reason;
        assert_eq!(r.how(), "fallback", "{r}");
        assert_eq!(r.fallback, ["msgpack._cmsgpack"]);
        assert_eq!(call_i64(&rt, "probe", 0, 0), Ok(0));

        // KeepMode on PyYAML: its init fails on the missing CSafeLoader, and the error
        // says which module was refused and caught (the bug report's confusing failure).
        match load_dir(&keep, &rt, &ext_fixtures().join("py_yaml")) {
            Err(LoaderError::InitFailed { bundle, error }) => {
                assert_eq!(bundle, "py_yaml");
                assert!(error.contains("CSafeLoader"), "{error}");
                assert!(error.contains("yaml._yaml"), "{error}");
                assert!(error.contains("caught"), "{error}");
            }
            other => panic!("{other:?}"),
        }

        // Ignored for this bundle: stays in own_gil under the default switch.
        let ignoring = PythonLoader::new(PythonConfig {
            ignored_refusals: [(
                "caught_ignored".to_owned(),
                vec!["msgpack._cmsgpack".to_owned()],
            )]
            .into(),
            ..PythonConfig::default()
        });
        let (rt, _logs) = runtime_with(ignoring.clone(), &[]);
        let (_root, dir) = msgpack_probe("caught_ignored", false);
        load_dir(&ignoring, &rt, &dir).unwrap();
        assert_eq!(mode_of(&ignoring, "caught_ignored"), "own_gil");
        assert_eq!(
            info(&ignoring, "caught_ignored").reason.fallback,
            ["msgpack._cmsgpack"]
        );
        assert_eq!(call_i64(&rt, "probe", 0, 0), Ok(0));
    });
}

#[test]
fn with_downgrade_off_a_caught_refusal_fails_naming_the_module_and_how() {
    if skip_before_313("caught refusal, downgrade off") {
        return;
    }
    let loader = PythonLoader::new(PythonConfig {
        auto_downgrade: false,
        ..PythonConfig::default()
    });
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    match load_dir(&loader, &rt, &ext_fixtures().join("py_yaml")) {
        Err(LoaderError::InitFailed { bundle, error }) => {
            assert_eq!(bundle, "py_yaml");
            assert!(error.contains("yaml._yaml"), "{error}");
            assert!(error.contains("caught by the importing package"), "{error}");
            assert!(error.contains("automatic downgrade is off"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_call_time_refusal_is_counted_logged_reported_and_remembered_for_the_next_load() {
    if skip_before_313("call-time refusal") {
        return;
    }
    within("call-time refusal", || {
        let loader = PythonLoader::default();
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        let (_root, dir) = msgpack_probe("lazy_msgpack", true);
        load_dir(&loader, &rt, &dir).unwrap();
        assert_eq!(mode_of(&loader, "lazy_msgpack"), "own_gil");
        // Caught by msgpack: the call runs its fallback, as the guest code makes it.
        assert_eq!(call_i64(&rt, "probe", 0, 0), Ok(0));
        // Raised into the call: it fails, as the guest code makes it.
        assert_eq!(call_i64(&rt, "probe", 1, 0), Err(1));
        let id = polyplug_utils::BundleId::new("lazy_msgpack").id();
        // Counted per call that hit it (a failed import is tried again next time).
        assert_eq!(loader.metrics(id).unwrap().refusals_at_call, 2);
        assert_eq!(
            info(&loader, "lazy_msgpack").call_refusals,
            ["msgpack._cmsgpack"]
        );
        let warned = logs.lock().unwrap().iter().any(|(level, scope, msg)| {
            *level == LogLevel::Warn
                && scope == "lazy_msgpack"
                && msg.contains("msgpack._cmsgpack")
                && msg.contains("at call time")
                && msg.contains("bundle_modes[\"lazy_msgpack\"] = Main")
        });
        assert!(warned, "{:?}", logs.lock().unwrap());

        // The next load of the same files goes straight to main, where msgpack's C
        // implementation loads.
        rt.unload_bundle(polyplug_utils::BundleId::new("lazy_msgpack"))
            .unwrap();
        load_dir(&loader, &rt, &dir).unwrap();
        assert_eq!(mode_of(&loader, "lazy_msgpack"), "main");
        let r = info(&loader, "lazy_msgpack").reason;
        assert!(r.remembered, "{r}");
        assert_eq!(r.how(), "at_call");
        assert_eq!(call_i64(&rt, "probe", 0, 0), Ok(1));
    });
}

/// A copy of the numpy fixture (its site-packages symlinked) whose files a test may touch.
fn numpy_copy() -> (PathBuf, PathBuf) {
    let src = ext_fixtures().join("py_numpy");
    let root = scratch("numpy-copy");
    let dir = root.join("py_numpy");
    copy_tree(&src, &dir);
    std::os::unix::fs::symlink(src.join("site-packages"), dir.join("site-packages")).unwrap();
    (root, dir)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "site-packages" || name == "__pycache__" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn a_second_load_of_the_numpy_bundle_skips_the_modes_that_failed_until_its_files_change() {
    if skip_before_313("remembered outcomes") {
        return;
    }
    within("remembered outcomes", || {
        let loader = PythonLoader::default();
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let (_root, dir) = numpy_copy();
        let id = polyplug_utils::BundleId::new("py_numpy");
        let load = || {
            let t0 = std::time::Instant::now();
            load_dir(&loader, &rt, &dir).unwrap();
            let r = info(&loader, "py_numpy").reason;
            rt.unload_bundle(id).unwrap();
            (r, t0.elapsed())
        };
        let (first, t_first) = load();
        assert!(!first.remembered, "{first}");
        assert_eq!(first.module(), Some("numpy._core._multiarray_umath"));
        let (second, t_second) = load();
        assert!(second.remembered, "{second}");
        assert_eq!(
            second.cause, first.cause,
            "the reason of the load that found it"
        );
        // Changed files: tried from own_gil again.
        let entry = dir.join("numpy_plugin.py");
        let mut src = std::fs::read_to_string(&entry).unwrap();
        src.push_str("\n# changed\n");
        std::fs::write(&entry, src).unwrap();
        let (third, t_third) = load();
        eprintln!(
            "numpy copy: first load {t_first:?} (own_gil, shared_gil, main), second {t_second:?} \
             (remembered: main), third after a change {t_third:?} (own_gil, shared_gil, main)"
        );
        assert!(!third.remembered, "{third}");
        assert_eq!(third.module(), Some("numpy._core._multiarray_umath"));
        // bundle_modes wins over the remembered main: the load starts in shared_gil.
        let pinned = PythonLoader::new(PythonConfig {
            bundle_modes: [("py_numpy".to_owned(), InterpreterMode::SharedGil)].into(),
            ..PythonConfig::default()
        });
        let (rt2, _logs) = runtime_with(pinned.clone(), &[]);
        load_dir(&pinned, &rt2, &dir).unwrap();
        let r = info(&pinned, "py_numpy").reason;
        assert!(!r.remembered, "{r}");
        assert!(
            matches!(
                r.cause,
                ModeCause::Refused {
                    from: InterpreterMode::SharedGil,
                    ..
                }
            ),
            "{r}"
        );
    });
}
