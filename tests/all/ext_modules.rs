//! Real C extension modules from PyPI that refuse subinterpreters (numpy; orjson, built
//! in Rust) load in the main interpreter by automatic downgrade, answer from many
//! threads, stay apart from each other, and call and get called by own-GIL bundles.

use interp_pool::{InterpreterConfig, InterpreterHandle};
use polyplug::error::LoaderError;
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};

use crate::core_api::host::host_callers::{CalculatorContract, PipelineContract};
use crate::ext_api::host::host_callers::{JsonifyContract, StatsContract};
use crate::support::*;

fn main_eval(expr: &str) -> String {
    let expr = expr.to_owned();
    InterpreterHandle::main(InterpreterConfig::default())
        .unwrap()
        .call(move |py| py.eval(&expr)?.str(py))
        .unwrap()
}

/// The loader for the ext fixtures. Before 3.13 shared_gil (the default there) cannot
/// refuse extension modules, so nothing downgrades to main: pin them, to test main mode.
fn ext_loader() -> PythonLoader {
    if own_gil_runs_ctypes() {
        return PythonLoader::default();
    }
    note(
        "ext_modules",
        "py_numpy and py_orjson pinned to main (no downgrade to main before 3.13)",
    );
    PythonLoader::new(PythonConfig {
        bundle_modes: [
            ("py_numpy".to_owned(), InterpreterMode::Main),
            ("py_orjson".to_owned(), InterpreterMode::Main),
        ]
        .into(),
        ..PythonConfig::default()
    })
}

/// The numpy and orjson bundles only (the other ext fixtures are tests/all/accelerators.rs's).
fn numpy_and_orjson() -> std::path::PathBuf {
    ext_fixtures_only(&["py_numpy", "py_orjson"])
}

fn expected_json(n: i64) -> String {
    let squares: Vec<String> = (0..n).map(|i| (i * i).to_string()).collect();
    format!("{{\"n\":{n},\"squares\":[{}]}}", squares.join(","))
}

#[test]
fn numpy_and_orjson_bundles_run_in_main_and_answer_from_8_threads() {
    within("numpy/orjson from 8 threads", || {
        let loader = ext_loader();
        let (rt, _logs) = runtime_with(loader.clone(), &[numpy_and_orjson()]);
        // Both refuse own-GIL and shared-GIL subinterpreters: downgraded twice.
        assert_eq!(mode_of(&loader, "py_numpy"), "main");
        assert_eq!(mode_of(&loader, "py_orjson"), "main");
        std::thread::scope(|s| {
            for t in 0..8i64 {
                let rt = &rt;
                s.spawn(move || {
                    let host = host(rt);
                    let mut stats = StatsContract::new(find(rt, "stats"), host).unwrap();
                    let mut json = JsonifyContract::new(find(rt, "jsonify"), host).unwrap();
                    for i in 0..25 {
                        let n = 10 + t * 7 + i;
                        assert_eq!(
                            stats.sum_squares(n).unwrap(),
                            (0..n).map(|k| k * k).sum::<i64>()
                        );
                        assert_eq!(
                            stats.dot(n).unwrap(),
                            (0..n).map(|k| k * (n - k)).sum::<i64>()
                        );
                        // orjson is imported at call time, through the isolation finder.
                        assert_eq!(text(json.encode(n % 6).unwrap()), expected_json(n % 6));
                    }
                });
            }
        });
    });
}

#[test]
fn main_mode_bundles_keep_their_modules_and_paths_to_themselves() {
    within("main-mode isolation", || {
        let loader = ext_loader();
        let (rt, _logs) = runtime_with(loader.clone(), &[numpy_and_orjson()]);
        let mut json = JsonifyContract::new(find(&rt, "jsonify"), host(&rt)).unwrap();
        assert_eq!(text(json.encode(2).unwrap()), expected_json(2));
        // Both bundles ship a `guest` package: each has its own, under its own prefix.
        let rekeyed = main_eval(
            "sorted({k.split('.', 1)[1] for k in __import__('sys').modules \
             if k.startswith('__polyplug_bundle_') and k.endswith('guest.contracts')})",
        );
        assert_eq!(rekeyed, "['guest.contracts']");
        let copies: usize = main_eval(
            "len({id(m) for k, m in __import__('sys').modules.items() \
             if k.startswith('__polyplug_bundle_') and k.endswith('.guest.contracts')})",
        )
        .parse()
        .unwrap();
        assert!(
            copies >= 2,
            "one guest.contracts per loaded bundle, got {copies}"
        );
        // Nothing under the plain names, and no bundle directory on sys.path.
        assert_eq!(main_eval("'guest' in __import__('sys').modules"), "False");
        assert_eq!(
            main_eval("[p for p in __import__('sys').path if 'ext-bundles' in p]"),
            "[]"
        );
        // numpy (an extension package) is shared under its plain name.
        assert_eq!(main_eval("'numpy' in __import__('sys').modules"), "True");
    });
}

#[test]
fn unloading_a_main_mode_bundle_drops_its_modules_and_it_loads_again() {
    within("main-mode unload", || {
        let loader = ext_loader();
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let dir = ext_fixtures().join("py_orjson");
        let id = polyplug_utils::BundleId::new("py_orjson");
        // The module prefixes of py_orjson's loads in main (`__polyplug_bundle_<id>_<key>__`,
        // one key per load). Other tests load main-mode bundles in this process meanwhile,
        // py_orjson among them: so this load's prefix is told by what the load added, and
        // counts of every bundle's modules say nothing.
        let prefixes = || -> std::collections::BTreeSet<String> {
            let expr = format!(
                "sorted({{k.split('.')[0] for k in __import__('sys').modules \
                 if k.startswith('__polyplug_bundle_{:016X}_')}})",
                id.id()
            );
            main_eval(&format!("'\\n'.join({expr})"))
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let before = prefixes();
        rt.load_bundle(&dir).unwrap();
        let ours: Vec<String> = prefixes().difference(&before).cloned().collect();
        assert!(
            !ours.is_empty(),
            "the load re-keyed its modules under a prefix"
        );
        rt.unload_bundle(id).unwrap();
        let after = prefixes();
        assert!(
            ours.iter().any(|p| !after.contains(p)),
            "unload dropped the bundle's modules: {ours:?} all still in {after:?}"
        );
        rt.load_bundle(&dir).unwrap();
        assert_eq!(mode_of(&loader, "py_orjson"), "main");
        let mut json = JsonifyContract::new(find(&rt, "jsonify"), host(&rt)).unwrap();
        assert_eq!(text(json.encode(3).unwrap()), expected_json(3));
    });
}

#[test]
fn with_downgrade_off_numpy_fails_naming_the_module() {
    let loader = PythonLoader::new(PythonConfig {
        mode: InterpreterMode::OwnGil,
        auto_downgrade: false,
        ..PythonConfig::default()
    });
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    match load_dir(&loader, &rt, &ext_fixtures().join("py_numpy")) {
        Err(LoaderError::InitFailed { bundle, error }) => {
            assert_eq!(bundle, "py_numpy");
            assert!(error.contains("numpy._core._multiarray_umath"), "{error}");
            assert!(error.contains("automatic downgrade is off"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

/// Fixture bundles placed by mode: `pipeline` calls `calculator` across the boundary.
fn pipeline_across(calculator: InterpreterMode, pipeline: InterpreterMode) {
    let loader = PythonLoader::new(PythonConfig {
        bundle_modes: [
            ("py_calculator".to_owned(), calculator),
            ("py_pipeline".to_owned(), pipeline),
            ("py_counter".to_owned(), InterpreterMode::Main),
        ]
        .into(),
        ..PythonConfig::default()
    });
    let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
    assert_eq!(mode_of(&loader, "py_calculator"), calculator.as_str());
    assert_eq!(mode_of(&loader, "py_pipeline"), pipeline.as_str());
    std::thread::scope(|s| {
        for t in 0..4 {
            let rt = &rt;
            s.spawn(move || {
                let host = host(rt);
                let mut p = PipelineContract::new(find(rt, "pipeline"), host).unwrap();
                let mut c = CalculatorContract::new(find(rt, "calculator"), host).unwrap();
                for i in 0..50 {
                    assert_eq!(p.run(t, i).unwrap(), (t + i) * 2);
                    assert_eq!(c.add(t, i).unwrap(), t + i);
                }
            });
        }
    });
}

#[test]
fn own_gil_and_main_bundles_call_each_other() {
    within("own <-> main", || {
        // own_gil on 3.13+, shared_gil (the default) on 3.12, where ctypes refuses own-GIL.
        let sub = InterpreterMode::default();
        pipeline_across(InterpreterMode::Main, sub);
        pipeline_across(sub, InterpreterMode::Main);
        pipeline_across(InterpreterMode::Main, InterpreterMode::Main);
    });
}
