//! Replicas (`PythonConfig::replicas`): one bundle served by several own-GIL interpreters.
//! Real fixture bundles through the polyplugc host callers, every answer checked.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use polyplug_abi::StringView;
use polyplug_subinterp::{PythonConfig, PythonLoader, Replicas};
use polyplug_utils::BundleId;

use crate::core_api::host::host_callers::{CalculatorContract, CounterContract, PipelineContract};
use crate::support::*;

fn replicated(names: &[(&str, Replicas)]) -> PythonLoader {
    PythonLoader::new(PythonConfig {
        replicas: names
            .iter()
            .map(|(n, r)| (n.to_string(), *r))
            .collect::<HashMap<_, _>>(),
        ..PythonConfig::default()
    })
}

/// The replica count `bundle` got: `k` on 3.13+, one on 3.12 (shared_gil by default).
fn expect_replicas(loader: &PythonLoader, bundle: &str, k: usize) {
    let info = loader
        .bundle_info(BundleId::new(bundle).id())
        .expect("loaded");
    if own_gil_runs_ctypes() {
        assert_eq!(info.replicas, k, "{bundle}");
        let m = loader.metrics(BundleId::new(bundle).id()).unwrap();
        assert_eq!(m.replicas.len(), k);
        let ids: HashSet<i64> = m.replicas.iter().map(|r| r.python_interp_id).collect();
        assert_eq!(ids.len(), k, "distinct interpreters");
    } else {
        assert_eq!(info.replicas, 1, "{bundle}: shared_gil has one interpreter");
        note(bundle, "shared_gil on 3.12: one interpreter, not replicas");
    }
}

fn view(s: &str) -> StringView {
    StringView {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

#[test]
fn three_replicas_of_every_fixture_answer_from_eight_threads() {
    within("replicas k=3", || {
        let k3 = Replicas::Fixed(3);
        let loader = replicated(&[
            ("py_calculator", k3),
            ("py_counter", k3),
            ("py_pipeline", k3),
        ]);
        let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
        for b in ["py_calculator", "py_counter", "py_pipeline"] {
            expect_replicas(&loader, b, 3);
        }
        let host = host(&rt) as usize;
        std::thread::scope(|s| {
            for t in 0..8i64 {
                let rt = &rt;
                s.spawn(move || {
                    let host = host as *const polyplug_abi::HostApi;
                    let mut calc = CalculatorContract::new(find(rt, "calculator"), host).unwrap();
                    let mut counter = CounterContract::new(find(rt, "counter"), host).unwrap();
                    let mut pipe = PipelineContract::new(find(rt, "pipeline"), host).unwrap();
                    for i in 0..(stress(200) as i64) {
                        assert_eq!(calc.add(i, t).unwrap(), i + t);
                        assert_eq!(calc.mul(i, 3).unwrap(), i * 3);
                        assert_eq!(counter.increment(1).unwrap(), i + 1, "thread {t}");
                        assert_eq!(pipe.run(i, t).unwrap(), (i + t) * 2);
                    }
                    let greeting = calc.greet(view("replica")).unwrap();
                    assert_eq!(text(greeting), "Hello, replica!");
                });
            }
        });
        let m = loader.metrics(BundleId::new("py_calculator").id()).unwrap();
        assert_eq!(m.errors, 0);
        let served: u64 = m.replicas.iter().map(|r| r.calls_served).sum();
        assert!(served >= m.calls, "{m:?}");
    });
}

#[test]
fn counter_instances_keep_their_own_counts_across_replicas() {
    within("replica instances", || {
        let loader = replicated(&[("py_counter", Replicas::Fixed(3))]);
        let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
        expect_replicas(&loader, "py_counter", 3);
        let host = host(&rt) as usize;
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let rt = &rt;
                s.spawn(move || {
                    let host = host as *const polyplug_abi::HostApi;
                    let mut counters: Vec<CounterContract> = (0..3)
                        .map(|_| CounterContract::new(find(rt, "counter"), host).unwrap())
                        .collect();
                    for round in 1..=(stress(100) as i64) {
                        for (c, by) in counters.iter_mut().zip([1i64, 10, 100]) {
                            assert_eq!(c.increment(by).unwrap(), round * by, "thread {t}");
                        }
                    }
                    for (c, by) in counters.iter_mut().zip([1i64, 10, 100]) {
                        assert_eq!(c.get().unwrap(), (stress(100) as i64) * by);
                        c.clear().unwrap();
                        assert_eq!(c.get().unwrap(), 0);
                    }
                });
            }
        });
        // 12 instances over 3 replicas, each placed on the least loaded one.
        if own_gil_runs_ctypes() {
            let m = loader.metrics(BundleId::new("py_counter").id()).unwrap();
            assert!(m.replicas.iter().all(|r| r.calls_served > 0), "{m:?}");
        }
    });
}

#[test]
fn pipeline_calls_a_replicated_calculator_from_four_threads() {
    within("replicated peer", || {
        let loader = replicated(&[("py_calculator", Replicas::Fixed(2))]);
        let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
        expect_replicas(&loader, "py_calculator", 2);
        expect_replicas(&loader, "py_pipeline", 1);
        let host = host(&rt) as usize;
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let rt = &rt;
                s.spawn(move || {
                    let host = host as *const polyplug_abi::HostApi;
                    let mut pipe = PipelineContract::new(find(rt, "pipeline"), host).unwrap();
                    for i in 0..(stress(100) as i64) {
                        assert_eq!(pipe.run(i, t).unwrap(), (i + t) * 2);
                        assert_eq!(
                            text(pipe.describe(view("peer")).unwrap()),
                            "pipeline: Hello, peer!"
                        );
                    }
                });
            }
        });
    });
}

/// A→B→A with B replicated, from several threads at once: every replica of B may be
/// waiting on A while A calls back into B, which its nested loops serve.
#[test]
fn a_b_a_where_b_is_replicated_never_deadlocks() {
    within("replicated ping-pong", || {
        let loader = replicated(&[("pp_pb", Replicas::Fixed(2))]);
        let (rt, _) = runtime_with(loader.clone(), &[]);
        crate::reentry::ping_pong(&loader, &rt);
        expect_replicas(&loader, "pp_pb", 2);
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let rt = &rt;
                s.spawn(move || {
                    for i in 0..(stress(60) as i64) {
                        let n = (i * 7 + t) % 12;
                        let root = if (i + t) % 2 == 0 { "pa" } else { "pb" };
                        assert_eq!(call_i64(rt, root, 0, n), Ok(n));
                    }
                });
            }
        });
    });
}

#[test]
fn unload_with_calls_in_flight_on_several_replicas_answers_or_goes_stale() {
    within("replica unload", || {
        let loader = replicated(&[("busy_replicas", Replicas::Fixed(3))]);
        let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
        let (_, dir) = write_bundle(
            "busy_replicas",
            &plugin_source(
                "busyreplicas@1",
                "import time\ndef f(impl, args, out, arena, alloc):\n    time.sleep(0.001)\n    put_i64(out, i64_at(args) + 1)\n",
                "f",
            ),
            &[],
        );
        rt.load_bundle(&dir).unwrap();
        expect_replicas(&loader, "busy_replicas", 3);
        // Several replicas are busy when the unload starts: the sleeping calls overlap.
        let (answers, stale) = unload_during_calls(&rt, "busyreplicas", "busy_replicas", 6, 21);
        assert_eq!(answers + stale, 1200);
        assert!(loader
            .bundle_info(BundleId::new("busy_replicas").id())
            .is_none());
        // Loads again, fresh, with its replicas.
        rt.load_bundle(&dir).unwrap();
        expect_replicas(&loader, "busy_replicas", 3);
        assert_eq!(call_i64(&rt, "busyreplicas", 0, 41), Ok(42));
        assert_eq!(call_abi_add(&rt, 20, 22), 42);
    });
}

fn call_abi_add(rt: &polyplug::runtime::Runtime, a: i64, b: i64) -> i64 {
    let mut calc = CalculatorContract::new(find(rt, "calculator"), host(rt)).unwrap();
    calc.add(a, b).unwrap()
}

#[test]
fn a_bundle_that_lands_in_another_mode_says_what_replicas_means_there() {
    const MAIN_ONLY: &str =
        "import _tracemalloc\ndef tracing(impl, args, out, arena, alloc):\n    put_i64(out, 7)\n";
    let loader = replicated(&[("tracer", Replicas::Fixed(3))]);
    let (rt, logs) = runtime_with(loader.clone(), &[]);
    let (_, dir) = write_bundle(
        "tracer",
        &plugin_source("tracer@1", MAIN_ONLY, "tracing"),
        &[],
    );
    load_dir(&loader, &rt, &dir).unwrap();
    let info = loader.bundle_info(BundleId::new("tracer").id()).unwrap();
    assert_ne!(info.mode, "own_gil");
    assert_eq!(call_i64(&rt, "tracer", 0, 0), Ok(7));
    // shared_gil: one interpreter, and a warning; main: up to 3 of the main interpreter's
    // threads (as many as it has) at once, sharing the module state, and a note saying so.
    let (replicas, needle) = match info.mode {
        "main" => (3.min(interp_pool::main_threads()), "main interpreter's"),
        _ => (1, "runs with one"),
    };
    assert_eq!(info.replicas, replicas);
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|(_, scope, m)| scope == "tracer"
                && m.contains("PythonConfig::replicas")
                && m.contains(needle)),
        "a log line names the setting and what it means in {}",
        info.mode
    );
}

#[test]
fn bad_replica_settings_are_load_errors_naming_bundle_and_value() {
    for (value, needle) in [
        (Replicas::Fixed(0), "Fixed(0)"),
        (
            Replicas::Elastic { min: 3, max: 2 },
            "min is larger than max",
        ),
        (
            Replicas::Elastic { min: 0, max: 0 },
            "max must be at least 1",
        ),
    ] {
        let loader = replicated(&[("badrep", value)]);
        let (rt, _) = runtime_with(loader.clone(), &[]);
        let (_, dir) = write_bundle(
            "badrep",
            &plugin_source(
                "badrep@1",
                "def f(impl, args, out, arena, alloc):\n    put_i64(out, 1)\n",
                "f",
            ),
            &[],
        );
        let err = load_dir(&loader, &rt, &dir).unwrap_err().to_string();
        assert!(
            err.contains("badrep")
                && err.contains("PythonConfig::replicas")
                && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn registrations_that_differ_between_replicas_fail_the_load() {
    if !own_gil_runs_ctypes() {
        return note("replicas differ", "needs own-GIL replicas (3.13+)");
    }
    // The second replica's init sees a file the first one created, and registers more.
    // Each replica leaves a file when its interpreter ends (`atexit` runs in
    // `Py_EndInterpreter`): the process-wide interpreter count is other tests' too.
    let marker = scratch("flaky-marker").join("seen");
    let defs = format!(
        "import atexit, os\nMARK = {marker:?}\nEXTRA = os.path.exists(MARK)\nopen(MARK, 'w').close()\n\
         atexit.register(lambda: open(f'{{MARK}}.ended.{{EXTRA}}', 'w').close())\n\
         def f(impl, args, out, arena, alloc):\n    put_i64(out, 1)\n"
    );
    let src = plugin_source("flaky@1", &defs, "f").replace(
        "\"functions\": [f]",
        "\"functions\": [f, f] if EXTRA else [f]",
    );
    assert!(src.contains("if EXTRA"), "the fixture edit applied");
    let loader = replicated(&[("flaky", Replicas::Fixed(2))]);
    let (rt, _) = runtime_with(loader.clone(), &[]);
    let (_, dir) = write_bundle("flaky", &src, &[]);
    let err = load_dir(&loader, &rt, &dir).unwrap_err().to_string();
    assert!(
        err.contains("replicas registered different contracts"),
        "{err}"
    );
    assert!(
        err.contains("flaky@1 (1 functions)") && err.contains("flaky@1 (2 functions)"),
        "{err}"
    );
    for replica in ["False", "True"] {
        let ended = marker.with_extension(format!("ended.{replica}"));
        assert!(
            ended.exists(),
            "the failed load ended replica {replica}: {ended:?}"
        );
    }
    let _ = Arc::clone(&rt);
}

#[test]
fn a_replicas_name_that_matches_no_bundle_is_a_warning() {
    let loader = replicated(&[("py_calculater", Replicas::Fixed(2))]);
    let (rt, logs) = runtime_with(loader.clone(), &[fixtures()]);
    assert!(loader
        .bundle_info(BundleId::new("py_calculator").id())
        .is_some());
    let _ = rt;
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|(_, scope, m)| scope == "py_calculater"
                && m.contains("no bundle")
                && m.contains("PythonConfig::replicas")),
        "the misspelt name is reported"
    );
}

#[test]
fn an_elastic_bundle_grows_under_load_and_shrinks_when_idle() {
    if !own_gil_runs_ctypes() {
        return note("elastic", "needs own-GIL replicas (3.13+)");
    }
    within("elastic", || {
        let loader = PythonLoader::new(PythonConfig {
            replicas: [("stretchy".to_owned(), Replicas::Elastic { min: 1, max: 3 })].into(),
            elastic: polyplug_subinterp::ElasticPolicy {
                grow_after: std::time::Duration::from_millis(2),
                idle_retire: std::time::Duration::from_millis(300),
                check_every: std::time::Duration::from_millis(1),
            },
            ..PythonConfig::default()
        });
        let (rt, _) = runtime_with(loader.clone(), &[]);
        let (_, dir) = write_bundle(
            "stretchy",
            &plugin_source(
                "stretchy@1",
                "import time\ndef f(impl, args, out, arena, alloc):\n    time.sleep(0.01)\n    put_i64(out, i64_at(args) * 3)\n",
                "f",
            ),
            &[],
        );
        load_dir(&loader, &rt, &dir).unwrap();
        let id = BundleId::new("stretchy").id();
        let replicas = || loader.bundle_info(id).unwrap().replicas;
        assert_eq!(replicas(), 1, "starts at min");
        let peak = AtomicUsize::new(1);
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let (rt, peak, replicas) = (&rt, &peak, &replicas);
                s.spawn(move || {
                    for i in 0..60 {
                        let n = t * 100 + i;
                        assert_eq!(call_i64(rt, "stretchy", 0, n), Ok(n * 3));
                        peak.fetch_max(replicas(), Ordering::Relaxed);
                    }
                });
            }
        });
        let peak = peak.into_inner();
        assert!(peak > 1 && peak <= 3, "grew within max: peak {peak}");
        // Idle now: back to min, and still answering.
        wait_until(|| replicas() == 1);
        assert_eq!(call_i64(&rt, "stretchy", 0, 5), Ok(15));
        assert_eq!(loader.metrics(id).unwrap().errors, 0);
        unload_elastic(&loader, &rt, "stretchy");
    });
}

// ---- issue 20, defect 5: elastic replicas ----

/// An elastic loader for `bundle` (`min`..`max` replicas) that grows at once when calls
/// wait and retires after `idle_retire`.
fn elastic(bundle: &str, min: usize, max: usize, idle_retire: Duration) -> PythonLoader {
    PythonLoader::new(elastic_config(bundle, min, max, idle_retire))
}

fn elastic_config(bundle: &str, min: usize, max: usize, idle_retire: Duration) -> PythonConfig {
    PythonConfig {
        replicas: [(bundle.to_owned(), Replicas::Elastic { min, max })].into(),
        elastic: polyplug_subinterp::ElasticPolicy {
            grow_after: Duration::from_millis(1),
            idle_retire,
            check_every: Duration::from_millis(1),
        },
        ..PythonConfig::default()
    }
}

/// fn 0: `x * 3` on the called instance; fn 1: waits until the file `hold` exists, then
/// `x`. The factory waits for `make_gate` when the file `make_blocks` exists, after
/// creating `make_entered`.
fn gated_source(contract: &str, dir: &Path) -> String {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let defs = format!(
        "import os, time\n\
         def exists(f):\n    return os.path.exists(f)\n\
         def f(impl, args, out, arena, alloc):\n    put_i64(out, i64_at(args) * impl.k)\n\
         def hold(impl, args, out, arena, alloc):\n    \
             while not exists({hold:?}):\n        time.sleep(0.0005)\n    \
             put_i64(out, i64_at(args))\n\
         class Made(Impl):\n    k = 3\n\
         def make(host):\n    \
             if exists({blocks:?}):\n        \
                 open({entered:?}, 'w').close()\n        \
                 while not exists({gate:?}):\n            time.sleep(0.0005)\n    \
             return Made(host)\n\
         Impl.k = 3\n",
        hold = p("hold"),
        blocks = p("make_blocks"),
        entered = p("make_entered"),
        gate = p("make_gate"),
    );
    plugin_source(contract, &defs, "f, hold").replace("\"factory\": Impl", "\"factory\": make")
}

/// Unloads `name` while the runtime lives: `load_dir` loads behind the runtime's back, so
/// dropping the runtime would leave its elastic controller running with a dangling host.
fn unload_elastic(loader: &PythonLoader, rt: &polyplug::runtime::Runtime, name: &str) {
    use polyplug::loader::BundleLoader;
    loader.unload(BundleId::new(name), rt).unwrap();
    polyplug_subinterp::elastic_hooks::set(name, None);
}

fn touch(dir: &Path, f: &str) {
    std::fs::write(dir.join(f), "").unwrap();
}

fn create_on(
    iface: *const polyplug_abi::GuestContractInterface,
    rt: &polyplug::runtime::Runtime,
) -> polyplug_abi::GuestContractInstance {
    let mut inst = polyplug_abi::GuestContractInstance::null();
    // SAFETY: a live registry interface, valid while its bundle is loaded.
    let iface = unsafe { &*iface };
    // SAFETY: a VM-dispatch interface: `vm` is the union's active field.
    let data = unsafe { iface.dispatch.vm }.loader_data;
    // SAFETY: the interface's own entry point with its own loader data; `inst` is writable.
    unsafe { (iface.create_instance)(data, host(rt), std::ptr::null(), &mut inst) };
    inst
}

/// A new replica's objects are in its contracts before it joins the group: an instance
/// created then is placed on it and its calls go to its own queue. (Before: its handle
/// was looked up among the group's members, not there yet, so the instance had no
/// replica, and its calls went to whichever replica was free: half failed.)
#[test]
fn an_instance_placed_on_a_replica_still_joining_is_called_there() {
    if !own_gil_runs_ctypes() {
        return note("elastic joining", "needs own-GIL replicas (3.13+)");
    }
    let name = "el_join";
    let loader = elastic(name, 1, 2, Duration::from_secs(3600));
    let (rt, _) = runtime_with(loader.clone(), &[]);
    let (_, dir) = write_bundle(name, &gated_source("el_joinc@1", Path::new("")), &[]);
    let dir_gates = dir.clone();
    std::fs::write(
        dir.join(format!("{name}.py")),
        gated_source("el_joinc@1", &dir),
    )
    .unwrap();
    let (added_tx, added_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let added_tx = std::sync::Mutex::new(added_tx);
    polyplug_subinterp::elastic_hooks::set(
        name,
        Some(Arc::new(move |step| {
            if step == polyplug_subinterp::ElasticStep::ObjectsAdded {
                let _ = added_tx.lock().unwrap().send(());
                let _ = go_rx.lock().unwrap().recv();
            }
        })),
    );
    load_dir(&loader, &rt, &dir).unwrap();
    let id = BundleId::new(name).id();
    within("elastic joining", || {
        std::thread::scope(|s| {
            let first = s.spawn(|| call_i64(&rt, "el_joinc", 1, 1));
            wait_until(|| {
                let m = loader.metrics(id).unwrap();
                m.in_flight == 1 && m.queue_depth == 0
            });
            let second = s.spawn(|| call_i64(&rt, "el_joinc", 1, 2));
            // The controller made the replica and gave it its objects; it has not joined.
            added_rx.recv().unwrap();
            touch(&dir_gates, "hold");
            assert_eq!(first.join().unwrap(), Ok(1));
            let iface = resolve(&rt, "el_joinc", 1);
            // Two instances: one per replica (the fewest instances first).
            let made: Vec<_> = (0..2).map(|_| create_on(iface, &rt)).collect();
            assert!(made.iter().all(|i| !i.data.is_null()), "created");
            go_tx.send(()).unwrap();
            assert_eq!(second.join().unwrap(), Ok(2));
            wait_until(|| loader.bundle_info(id).unwrap().replicas == 2);
            let iface = iface as usize;
            for t in 0..4i64 {
                let made = made.clone();
                s.spawn(move || {
                    let iface = iface as *const polyplug_abi::GuestContractInterface;
                    for i in 0..(stress(50) as i64) {
                        for inst in &made {
                            let n = t * 1000 + i;
                            assert_eq!(call_on(iface, *inst, 0, n).map_err(|e| e.code), Ok(n * 3));
                        }
                    }
                });
            }
        });
    });
    unload_elastic(&loader, &rt, name);
}

/// A replica reserved for an instance whose factory is running is not retired under it.
/// (Before: it looked idle, was retired, and the instance the factory made was released
/// with it: the host got an id whose calls failed.)
#[test]
fn a_replica_creating_an_instance_is_not_retired_under_it() {
    if !own_gil_runs_ctypes() {
        return note("elastic creating", "needs own-GIL replicas (3.13+)");
    }
    let name = "el_make";
    let loader = elastic(name, 1, 2, Duration::from_millis(20));
    let (rt, _) = runtime_with(loader.clone(), &[]);
    let (_, dir) = write_bundle(name, &gated_source("el_makec@1", Path::new("")), &[]);
    std::fs::write(
        dir.join(format!("{name}.py")),
        gated_source("el_makec@1", &dir),
    )
    .unwrap();
    // The controller stops before its first try at retiring a replica, until told; it
    // reports every later try.
    let (tried_tx, tried_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let hook = std::sync::Mutex::new((tried_tx, go_rx, true));
    polyplug_subinterp::elastic_hooks::set(
        name,
        Some(Arc::new(move |step| {
            if step == polyplug_subinterp::ElasticStep::Retiring {
                let mut h = hook.lock().unwrap();
                let _ = h.0.send(());
                if std::mem::replace(&mut h.2, false) {
                    let _ = h.1.recv();
                }
            }
        })),
    );
    load_dir(&loader, &rt, &dir).unwrap();
    let id = BundleId::new(name).id();
    within("elastic creating", || {
        std::thread::scope(|s| {
            let first = s.spawn(|| call_i64(&rt, "el_makec", 1, 1));
            wait_until(|| {
                let m = loader.metrics(id).unwrap();
                m.in_flight == 1 && m.queue_depth == 0
            });
            let second = s.spawn(|| call_i64(&rt, "el_makec", 1, 2));
            wait_until(|| loader.bundle_info(id).unwrap().replicas == 2);
            touch(&dir, "hold");
            assert_eq!(
                (first.join().unwrap(), second.join().unwrap()),
                (Ok(1), Ok(2))
            );
            let iface = resolve(&rt, "el_makec", 1);
            // On the first replica (a tie goes to the first); the next goes to the second.
            assert!(!create_on(iface, &rt).data.is_null());
            // The controller is about to retire the idle second replica.
            tried_rx.recv().unwrap();
            touch(&dir, "make_blocks");
            let iface_addr = iface as usize;
            let rt = &rt;
            let making = s.spawn(move || {
                create_on(
                    iface_addr as *const polyplug_abi::GuestContractInterface,
                    rt,
                )
            });
            wait_until(|| dir.join("make_entered").exists());
            go_tx.send(()).unwrap();
            // It tried (and found the replica reserved), then tried again.
            tried_rx.recv().unwrap();
            touch(&dir, "make_gate");
            let inst = making.join().unwrap();
            assert!(!inst.data.is_null(), "the factory's instance is kept");
            assert_eq!(call_on(iface, inst, 0, 5).map_err(|e| e.code), Ok(15));
            assert_eq!(loader.bundle_info(id).unwrap().replicas, 2);
        });
    });
    unload_elastic(&loader, &rt, name);
}

/// A replica running one long call is busy, not idle, however long the call: it is not
/// retired under it. (Before: busy-ness was the count of jobs started, which stood still
/// during the call, so the replica was taken out of the group and its leave job waited
/// behind the call, blocking the controller.)
#[test]
fn a_replica_running_a_long_call_is_not_retired() {
    long_call_keeps_its_replica("el_long", polyplug_subinterp::Dispatch::Post);
}

/// The test above for `dispatch` (the direct one holds the replica's interpreter on the
/// caller's thread, its owner parked all along), with bundle `name` (contract
/// `<name>c@1`). Skipped before 3.13.
pub(crate) fn long_call_keeps_its_replica(name: &str, dispatch: polyplug_subinterp::Dispatch) {
    if !own_gil_runs_ctypes() {
        return note(name, "needs own-GIL replicas (3.13+)");
    }
    let contract = format!("{name}c");
    let idle_retire = Duration::from_millis(20);
    let loader = PythonLoader::new(PythonConfig {
        dispatch,
        ..elastic_config(name, 1, 2, idle_retire)
    });
    let (rt, _) = runtime_with(loader.clone(), &[]);
    let source = |dir: &Path| gated_source(&format!("{contract}@1"), dir);
    let (_, dir) = write_bundle(name, &source(Path::new("")), &[]);
    std::fs::write(dir.join(format!("{name}.py")), source(&dir)).unwrap();
    // When the controller made each idle pass.
    let looked = Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let seen = Arc::clone(&looked);
    polyplug_subinterp::elastic_hooks::set(
        name,
        Some(Arc::new(move |step| {
            if step == polyplug_subinterp::ElasticStep::Looked {
                seen.lock().unwrap().push(std::time::Instant::now());
            }
        })),
    );
    load_dir(&loader, &rt, &dir).unwrap();
    let id = BundleId::new(name).id();
    within(name, || {
        std::thread::scope(|s| {
            let first = s.spawn(|| call_i64(&rt, &contract, 1, 1));
            wait_until(|| {
                let m = loader.metrics(id).unwrap();
                m.in_flight == 1 && m.queue_depth == 0
            });
            let second = s.spawn(|| call_i64(&rt, &contract, 1, 2));
            // Both replicas run a call that lasts until the test says.
            wait_until(|| {
                let m = loader.metrics(id).unwrap();
                m.replicas.len() == 2 && m.in_flight == 2 && m.queue_depth == 0
            });
            let both = std::time::Instant::now();
            // Idle passes well past `idle_retire` since then (measured, not slept).
            wait_until(|| {
                looked
                    .lock()
                    .unwrap()
                    .last()
                    .is_some_and(|t| *t >= both + idle_retire * 3)
            });
            assert_eq!(
                loader.bundle_info(id).unwrap().replicas,
                2,
                "none retired mid-call"
            );
            touch(&dir, "hold");
            assert_eq!(
                (first.join().unwrap(), second.join().unwrap()),
                (Ok(1), Ok(2))
            );
            // Idle now: back to one, which answers.
            wait_until(|| loader.bundle_info(id).unwrap().replicas == 1);
            assert_eq!(call_i64(&rt, &contract, 0, 5), Ok(15));
        });
    });
    unload_elastic(&loader, &rt, name);
}

/// The controller sleeps while no call waits: it does not look every `check_every` (it
/// looked 1000 times a second per bundle before).
#[test]
fn an_elastic_controller_sleeps_while_no_call_waits() {
    if !own_gil_runs_ctypes() {
        return note("elastic sleeps", "needs own-GIL replicas (3.13+)");
    }
    let name = "el_calm";
    let loader = elastic(name, 1, 2, Duration::from_secs(3600));
    let (rt, _) = runtime_with(loader.clone(), &[]);
    let (_, dir) = write_bundle(name, &gated_source("el_calmc@1", Path::new("")), &[]);
    let passes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&passes);
    polyplug_subinterp::elastic_hooks::set(
        name,
        Some(Arc::new(move |step| {
            if step == polyplug_subinterp::ElasticStep::Looked {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        })),
    );
    load_dir(&loader, &rt, &dir).unwrap();
    let before = passes.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    for i in 0..(stress(300) as i64) {
        assert_eq!(call_i64(&rt, "el_calmc", 0, i), Ok(i * 3));
    }
    let took = t0.elapsed();
    let looked = passes.load(Ordering::Relaxed) - before;
    // One pass per quarter of `idle_retire` (15 min here), plus the one it may be in.
    assert!(
        looked <= 1,
        "{looked} idle passes during {took:?} of sequential calls"
    );
    unload_elastic(&loader, &rt, name);
}
