//! Hot reload (`Runtime::reload_bundle`): new code in a fresh interpreter, the old version
//! retired once its calls drain, failures leave the old version answering.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use polyplug::runtime::Runtime;
use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_abi::{GuestContractInterface, RuntimeConfig};
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};
use polyplug_utils::BundleId;

use crate::support::*;

/// A runtime with hot reload enabled and no plugin dirs.
fn reload_runtime(loader: PythonLoader) -> (Arc<Runtime>, Logs) {
    let logs: Logs = Arc::default();
    let sink = Arc::clone(&logs);
    let rt = RuntimeBuilder::new()
        .config(RuntimeConfig {
            hot_reload_enabled: true,
            ..RuntimeConfig::default()
        })
        .loader(loader)
        .logger(move |level, scope, msg| {
            sink.lock()
                .unwrap()
                .push((level, scope.to_owned(), msg.to_owned()))
        })
        .build()
        .expect("runtime builds");
    (rt, logs)
}

/// fn 0 answers `answer`; fn 1 takes a CPython interpreter id and answers 1 if that
/// interpreter still exists. `pad` changes the file size (a stale `.pyc` is keyed on
/// mtime + size).
pub(crate) fn versioned(contract: &str, answer: i64) -> String {
    let defs = format!(
        "try:\n    import _interpreters\nexcept ImportError:  # 3.12\n    import _xxsubinterpreters as _interpreters\n\
         def answer(impl, args, out, arena, alloc):\n    put_i64(out, {answer})\n\
         def alive(impl, args, out, arena, alloc):\n    \
             ids = [t[0] if isinstance(t, tuple) else int(t) for t in _interpreters.list_all()]\n    \
             put_i64(out, int(i64_at(args) in ids))\n\
         # version {answer}{pad}\n",
        pad = " ".repeat(answer as usize)
    );
    plugin_source(contract, &defs, "answer, alive")
}

fn rewrite(dir: &Path, name: &str, source: &str) {
    std::fs::write(dir.join(format!("{name}.py")), source).unwrap();
}

/// One call through an interface the host copied out of the registry earlier.
fn call_cached(iface: &GuestContractInterface, fn_id: u32, arg: i64) -> Result<i64, u32> {
    call_on(iface, null_instance(iface), fn_id, arg).map_err(|e| e.code)
}

fn interp_id(loader: &PythonLoader, name: &str) -> i64 {
    loader
        .bundle_info(BundleId::new(name).id())
        .expect("bundle loaded")
        .python_interp_id
}

#[test]
fn reload_runs_new_code_and_ends_the_old_interpreter() {
    let loader = PythonLoader::default();
    let (rt, _) = reload_runtime(loader.clone());
    let (_, dir) = write_bundle("hot", &versioned("hot@1", 1), &[]);
    rt.load_bundle(&dir).unwrap();
    // SAFETY: a registry interface of a loaded bundle; copied by value, and its loader
    // data (ours) is never freed.
    let cached: GuestContractInterface = unsafe { *resolve(&rt, "hot", 1) };
    assert_eq!(call_cached(&cached, 0, 0), Ok(1));
    let old = interp_id(&loader, "hot");

    rewrite(&dir, "hot", &versioned("hot@1", 2));
    rt.reload_bundle(&dir).expect("reload succeeds");

    assert_eq!(call_i64(&rt, "hot", 0, 0), Ok(2), "a fresh resolve");
    assert_eq!(
        call_cached(&cached, 0, 0),
        Ok(2),
        "the interface cached before"
    );
    let new = interp_id(&loader, "hot");
    assert_ne!(new, old, "a fresh interpreter runs the new code");
    assert_eq!(call_i64(&rt, "hot", 1, new), Ok(1), "probe sees its own");
    assert_eq!(call_i64(&rt, "hot", 1, old), Ok(0), "old interpreter ended");
    assert_eq!(
        loader
            .bundle_info(BundleId::new("hot").id())
            .unwrap()
            .contracts,
        vec![("hot@1".to_owned(), 2)]
    );
    // And once more: the retired chain still forwards to the newest version.
    rewrite(&dir, "hot", &versioned("hot@1", 3));
    rt.reload_bundle(&dir).expect("second reload succeeds");
    assert_eq!(call_cached(&cached, 0, 0), Ok(3));
    assert_eq!(call_i64(&rt, "hot", 0, 0), Ok(3));
}

#[test]
fn calls_from_four_threads_during_reloads_see_old_or_new_code_only() {
    calls_during_reloads(PythonLoader::default(), "busy");
}

/// The same with three replicas per version: calls in flight on several replicas of the
/// old version finish (or forward) while the new version's replicas take over.
#[test]
fn replicated_bundles_reload_with_calls_in_flight_on_several_replicas() {
    let loader = PythonLoader::new(PythonConfig {
        replicas: [("busyrep".to_owned(), polyplug_subinterp::Replicas::Fixed(3))].into(),
        ..PythonConfig::default()
    });
    calls_during_reloads(loader.clone(), "busyrep");
    let want = if own_gil_runs_ctypes() { 3 } else { 1 };
    let info = loader.bundle_info(BundleId::new("busyrep").id()).unwrap();
    assert_eq!(
        info.replicas, want,
        "the reloaded version has its replicas too"
    );
}

/// Four threads call `name` (a `versioned` bundle) while it is reloaded three times: each
/// call answers the old or the new version, never an error.
pub(crate) fn calls_during_reloads(loader: PythonLoader, name: &str) {
    let contract = format!("{name}@1");
    let (rt, _) = reload_runtime(loader.clone());
    let (_, dir) = write_bundle(name, &versioned(&contract, 1), &[]);
    rt.load_bundle(&dir).unwrap();
    // SAFETY: as in the test above.
    let cached: GuestContractInterface = unsafe { *resolve(&rt, name, 1) };
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let failure = std::sync::Mutex::new(None::<String>);
    within("calls during reloads", || {
        std::thread::scope(|s| {
            for t in 0..4 {
                let (rt, stop, calls, failure) = (&rt, &stop, &calls, &failure);
                s.spawn(move || {
                    let mut last = 0;
                    // Half the threads keep the interface they resolved before the
                    // reloads, half resolve before every call.
                    while !(stop.load(Ordering::Acquire)
                        && (last == 2 || failure.lock().unwrap().is_some()))
                    {
                        let r = if t % 2 == 0 {
                            call_cached(&cached, 0, 0)
                        } else {
                            call_i64(rt, name, 0, 0)
                        };
                        match r {
                            Ok(v @ (1 | 2)) => last = v,
                            other => {
                                *failure.lock().unwrap() = Some(format!(
                                    "thread {t}: a call during reload gave {other:?}"
                                ));
                                stop.store(true, Ordering::Release);
                                return;
                            }
                        }
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let wait_calls = |n| {
                while calls.load(Ordering::Relaxed) < n && failure.lock().unwrap().is_none() {
                    std::thread::yield_now();
                }
            };
            wait_calls(200);
            for v in [2, 1, 2] {
                rewrite(&dir, name, &versioned(&contract, v));
                if let Err(e) = rt.reload_bundle(&dir) {
                    *failure.lock().unwrap() = Some(format!("reload to {v} failed: {e}"));
                    break;
                }
                let now = calls.load(Ordering::Relaxed);
                wait_calls(now + 200);
            }
            stop.store(true, Ordering::Release);
        });
    });
    if let Some(f) = failure.into_inner().unwrap() {
        panic!("{f}");
    }
    assert_eq!(call_i64(&rt, name, 0, 0), Ok(2));
}

#[test]
fn a_reload_that_fails_at_import_keeps_the_old_version() {
    let loader = PythonLoader::default();
    let (rt, logs) = reload_runtime(loader.clone());
    let (_, dir) = write_bundle("shaky", &versioned("shaky@1", 1), &[]);
    rt.load_bundle(&dir).unwrap();
    let old = interp_id(&loader, "shaky");

    let broken = format!(
        "raise RuntimeError('v2 is broken')\n{}",
        versioned("shaky@1", 2)
    );
    rewrite(&dir, "shaky", &broken);
    let err = rt
        .reload_bundle(&dir)
        .expect_err("reload must fail")
        .to_string();
    assert!(
        err.contains("RuntimeError") && err.contains("v2 is broken"),
        "clear error: {err}"
    );
    assert_eq!(
        call_i64(&rt, "shaky", 0, 0),
        Ok(1),
        "old code still answers"
    );
    assert_eq!(interp_id(&loader, "shaky"), old, "old version still active");
    let _ = logs;

    // The failed attempt left nothing in the way of the next one.
    rewrite(&dir, "shaky", &versioned("shaky@1", 2));
    rt.reload_bundle(&dir).expect("reload succeeds after a fix");
    assert_eq!(call_i64(&rt, "shaky", 0, 0), Ok(2));
}

#[test]
fn a_main_mode_bundle_reloads_and_its_old_modules_are_forgotten() {
    let name = "hotmain";
    let loader = PythonLoader::new(PythonConfig {
        bundle_modes: [(name.to_owned(), InterpreterMode::Main)].into(),
        ..PythonConfig::default()
    });
    let (rt, _) = reload_runtime(loader.clone());
    let prefix = format!("__polyplug_bundle_{:016X}_", BundleId::new(name).id());
    let defs = format!(
        "import sys, hm_helper\n\
         def value(impl, args, out, arena, alloc):\n    put_i64(out, hm_helper.VALUE)\n\
         def versions(impl, args, out, arena, alloc):\n    \
             keys = {{n.split('.')[0] for n in sys.modules if n.startswith('{prefix}')}}\n    \
             put_i64(out, len(keys))\n"
    );
    let src = plugin_source("hotmain@1", &defs, "value, versions");
    let (_, dir) = write_bundle(name, &src, &[("hm_helper.py", "VALUE = 1\n")]);
    rt.load_bundle(&dir).unwrap();
    assert_eq!(
        loader.bundle_info(BundleId::new(name).id()).unwrap().mode,
        "main"
    );
    assert_eq!(call_i64(&rt, name, 0, 0), Ok(1));
    assert_eq!(call_i64(&rt, name, 1, 0), Ok(1));

    std::fs::write(dir.join("hm_helper.py"), "VALUE = 2  # new\n").unwrap();
    rt.reload_bundle(&dir).expect("reload succeeds");
    assert_eq!(
        call_i64(&rt, name, 0, 0),
        Ok(2),
        "the new load imported its own helper"
    );
    assert_eq!(
        call_i64(&rt, name, 1, 0),
        Ok(1),
        "only the new load's modules remain"
    );
}

/// Issue 20, defect 11: six host threads call the calculator (directly, and through the
/// pipeline, which calls it from inside its own calls) while the calculator is reloaded
/// and another bundle is loaded and unloaded, both bundles at two replicas. Every caller
/// holds an instance and re-resolves when the registry changes, as polyplugc's callers
/// do; each re-resolve made while a reload is under way used to create its instance on
/// the version being retired, which died with it: that caller's calls failed until the
/// next registry change. Steps are gated on calls made, not on time.
#[test]
fn replicated_bundles_reloading_among_churn_fail_under_one_percent() {
    use crate::core_api::host::host_callers::{CalculatorContract, PipelineContract};
    use std::collections::BTreeMap;
    let replicas = polyplug_subinterp::Replicas::Fixed(2);
    let loader = PythonLoader::new(PythonConfig {
        replicas: [
            ("py_calculator".to_owned(), replicas),
            ("py_pipeline".to_owned(), replicas),
        ]
        .into(),
        ..PythonConfig::default()
    });
    let (rt, _logs) = reload_runtime(loader.clone());
    let fixtures = fixtures();
    for b in ["py_calculator", "py_counter", "py_pipeline"] {
        rt.load_bundle(&fixtures.join(b)).unwrap();
    }
    let (_, churn) = write_bundle(
        "churny",
        &plugin_source(
            "churny@1",
            "def f(impl, args, out, arena, alloc):\n    put_i64(out, 1)\n",
            "f",
        ),
        &[],
    );
    let reloads = stress(12);
    let calls = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let failed: std::sync::Mutex<BTreeMap<String, u64>> = Default::default();
    let host = host(&rt) as usize;
    let wait_calls = |n: u64| {
        while calls.load(Ordering::Relaxed) < n && !done.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
    };
    within("reloads among churn", || {
        std::thread::scope(|s| {
            for t in 0..6i64 {
                let (rt, calls, done, failed) = (&rt, &calls, &done, &failed);
                s.spawn(move || {
                    let host = host as *const polyplug_abi::HostApi;
                    let mut calc = CalculatorContract::new(find(rt, "calculator"), host).unwrap();
                    let mut pipe = PipelineContract::new(find(rt, "pipeline"), host).unwrap();
                    let mut i = 0i64;
                    while !done.load(Ordering::Relaxed) {
                        i += 1;
                        let (what, r) = if t % 2 == 0 {
                            ("calculator", calc.add(i, t).map(|v| (v, i + t)))
                        } else {
                            ("pipeline", pipe.run(i, t).map(|v| (v, (i + t) * 2)))
                        };
                        match r {
                            Ok((got, want)) => assert_eq!(got, want, "{what}"),
                            Err(e) => {
                                *failed
                                    .lock()
                                    .unwrap()
                                    .entry(format!("{what} code {:?}", e.code))
                                    .or_default() += 1;
                            }
                        }
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let (rt, churn, calls, done) = (&rt, &churn, &calls, &done);
            // Another bundle comes and goes: every load and unload changes the registry.
            s.spawn(move || {
                let mut loaded = false;
                while !done.load(Ordering::Relaxed) {
                    let now = calls.load(Ordering::Relaxed);
                    if loaded {
                        rt.unload_bundle(BundleId::new("churny")).unwrap();
                    } else {
                        rt.load_bundle(churn).unwrap();
                    }
                    loaded = !loaded;
                    wait_calls(now + 100);
                }
            });
            wait_calls(300);
            for _ in 0..reloads {
                let now = calls.load(Ordering::Relaxed);
                rt.reload_bundle(&fixtures.join("py_calculator"))
                    .expect("reload succeeds");
                wait_calls(now + 300);
            }
            done.store(true, Ordering::Relaxed);
        });
    });
    // Unloaded while the runtime lives: the pipeline's peer callers call the host when
    // their objects are released.
    for b in ["py_pipeline", "py_calculator", "py_counter"] {
        rt.unload_bundle(BundleId::new(b)).unwrap();
    }
    let failed = failed.into_inner().unwrap();
    let made = calls.into_inner();
    let n: u64 = failed.values().sum();
    note(
        "reloads among churn",
        &format!("{n} of {made} calls failed over {reloads} reloads: {failed:?}"),
    );
    // Under 1% (issue 20, defect 11; 65% failed before): one window is left, an instance
    // created just as the successor appeared (ARCHITECTURE.md, Reload). Counts, not time.
    assert!(
        n * 100 < made,
        "{n} of {made} calls failed (1% allowed): {failed:?}"
    );
}
