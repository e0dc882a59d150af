//! Resource governance through the loader: failing calls under load (bounded logging,
//! exact counts) and CPU time per bundle.

use std::time::{Duration, Instant};

use polyplug_abi::types::LogLevel;
use polyplug_abi::AbiErrorCode;
use polyplug_subinterp::{FailureLogPolicy, InterpreterMode, PythonConfig, PythonLoader};
use polyplug_utils::BundleId;

use crate::core_api::host::host_callers::CalculatorContract;
use crate::support::*;

/// The count at the head of a failure-log summary line ("N more failed calls ..."), if
/// `m` is one.
fn summarised(m: &str) -> Option<u64> {
    m.contains("more failed calls")
        .then(|| m.split_whitespace().next()?.parse().ok())
        .flatten()
}

/// 100 000 failing calls: every one counted in the metrics, and in the log either by its
/// traceback or in a summary line (exactly, whatever the time the burst took); at most
/// `per_kind` tracebacks per failure-log window, and a window ends only after `interval`
/// (both checked against the summary lines and the burst's own duration, not a guess of it).
#[test]
fn a_burst_of_failing_calls_is_counted_exactly_and_logged_boundedly() {
    within("100k failing calls", || {
        let loader = PythonLoader::new(PythonConfig::default());
        let (rt, logs) = runtime_with(loader.clone(), &[fixtures()]);
        let id = BundleId::new("py_calculator").id();
        let mut calc = CalculatorContract::new(find(&rt, "calculator"), host(&rt)).unwrap();
        let lines = |logs: &Logs| {
            logs.lock()
                .unwrap()
                .iter()
                .filter(|(_, scope, _)| scope == "py_calculator")
                .cloned()
                .collect::<Vec<_>>()
        };
        let earlier = lines(&logs).len();
        let before = loader.metrics(id).unwrap();
        let n = 100_000u64;
        let t = Instant::now();
        for _ in 0..n {
            // The sum does not fit the i64 the glue packs: struct.error in the guest.
            let e = calc.add(i64::MAX, 1).unwrap_err();
            assert_eq!(e.code, AbiErrorCode::Generic);
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(
            calc.add(2, 3).unwrap(),
            5,
            "the bundle answers after the burst"
        );
        let m = loader.metrics(id).unwrap();
        assert_eq!(m.errors - before.errors, n, "every failure counted: {m:?}");
        assert_eq!(m.calls - before.calls, n + 1, "{m:?}");
        let during = lines(&logs)[earlier..].to_vec();
        let tracebacks = during
            .iter()
            .filter(|(l, _, m)| *l == LogLevel::Error && m.contains("Traceback"))
            .count();
        let rolled: Vec<u64> = during
            .iter()
            .filter_map(|(_, _, m)| summarised(m))
            .collect();
        assert_eq!(
            tracebacks + rolled.len(),
            during.len(),
            "only tracebacks and summaries: {during:#?}"
        );
        // One kind: its first `per_kind` failures per window are logged in full; a window
        // that suppressed some ends with one summary line, `interval` or more after it began.
        let policy = FailureLogPolicy::default();
        let windows = rolled.len() + 1;
        assert!(
            (1..=windows * policy.per_kind as usize).contains(&tracebacks),
            "{tracebacks} tracebacks in {windows} windows: {during:#?}"
        );
        assert!(
            rolled.len() as f64 <= secs / policy.interval.as_secs_f64() + 1.0,
            "{} windows ended within {secs:.1} s: {during:#?}",
            rolled.len()
        );
        assert!(
            during
                .iter()
                .any(|(_, _, m)| m.contains("counted, not logged")),
            "the last logged traceback says the rest are counted: {during:#?}"
        );
        // Unloading logs the count of the failures not logged yet.
        rt.unload_bundle(BundleId::new("py_pipeline")).unwrap(); // it depends on calculator
        rt.unload_bundle(BundleId::new("py_calculator")).unwrap();
        let after = lines(&logs);
        let summary = after[earlier + during.len()..]
            .iter()
            .find(|(_, _, m)| summarised(m).is_some())
            .unwrap_or_else(|| panic!("no summary at unload: {after:#?}"));
        assert!(summary.2.contains("struct.error"), "{summary:?}");
        let counted = summarised(&summary.2).unwrap() + rolled.iter().sum::<u64>();
        assert_eq!(
            counted + tracebacks as u64,
            n,
            "each failure logged or summed up once: {rolled:?} {summary:?}"
        );
        eprintln!(
            "note: {n} failing calls in {secs:.2} s ({:.0}/s)",
            n as f64 / secs
        );
    });
}

#[test]
fn failure_log_windows_roll_over_with_a_summary() {
    within("failure log windows", || {
        let loader = PythonLoader::new(PythonConfig {
            failure_log: FailureLogPolicy {
                interval: Duration::from_secs(2),
                per_kind: 1,
                per_interval: 5,
            },
            ..PythonConfig::default()
        });
        let (rt, logs) = runtime_with(loader, &[fixtures()]);
        let mut calc = CalculatorContract::new(find(&rt, "calculator"), host(&rt)).unwrap();
        let t = Instant::now();
        for _ in 0..50 {
            calc.add(i64::MAX, 1).unwrap_err();
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the burst fits one window"
        );
        std::thread::sleep(Duration::from_secs(2) - t.elapsed() + Duration::from_millis(100));
        calc.add(i64::MAX, 1).unwrap_err();
        let logs = logs.lock().unwrap().clone();
        let ours: Vec<_> = logs
            .iter()
            .filter(|(_, s, _)| s == "py_calculator")
            .collect();
        // Window 1: one traceback; window 2: the summary of 49, then one traceback.
        assert_eq!(ours.len(), 3, "{ours:#?}");
        assert!(ours[0].2.contains("Traceback"), "{ours:#?}");
        assert!(ours[1].2.starts_with("49 more failed calls"), "{ours:#?}");
        assert_eq!(ours[1].0, LogLevel::Warn);
        assert!(ours[2].2.contains("Traceback"), "{ours:#?}");
    });
}

#[test]
fn unlimited_failure_logging_logs_every_traceback() {
    let loader = PythonLoader::new(PythonConfig {
        failure_log: FailureLogPolicy::unlimited(),
        ..PythonConfig::default()
    });
    let (rt, logs) = runtime_with(loader, &[fixtures()]);
    let mut calc = CalculatorContract::new(find(&rt, "calculator"), host(&rt)).unwrap();
    for _ in 0..20 {
        calc.add(i64::MAX, 1).unwrap_err();
    }
    let n = logs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, m)| m.contains("Traceback (most recent call last)"))
        .count();
    assert_eq!(n, 20);
}

const BUSY: &str = r#"
import time
def busy(impl, args, out, arena, alloc):
    # Busy until this thread has used `ms` of CPU; reports the CPU time it saw, in µs.
    ms = i64_at(args)
    c = time.thread_time()
    while time.thread_time() - c < ms / 1000:
        pass
    put_i64(out, int((time.thread_time() - c) * 1e6))
def nap(impl, args, out, arena, alloc):
    time.sleep(i64_at(args) / 1000)
"#;

/// `cpu_time` of a ~200 ms CPU-bound call is within 50% of its wall time (and of the CPU
/// time the guest itself saw); a 200 ms sleep adds (almost) nothing.
fn cpu_time_of_a_busy_call(mode: InterpreterMode, name: &str) {
    let mut config = PythonConfig::default();
    config.bundle_modes.insert(name.to_owned(), mode);
    let loader = PythonLoader::new(config);
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    let src = plugin_source(&format!("{name}@1"), BUSY, "busy, nap");
    load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).unwrap();
    let id = BundleId::new(name).id();
    let before = loader.metrics(id).unwrap();
    let t = Instant::now();
    let guest = Duration::from_micros(call_i64(&rt, name, 0, 200).unwrap() as u64);
    let wall = t.elapsed();
    let after = loader.metrics(id).unwrap();
    let cpu = after.cpu_time - before.cpu_time;
    let within = |d: Duration, of: Duration| {
        (of.as_secs_f64() * 0.5..=of.as_secs_f64() * 1.5).contains(&d.as_secs_f64())
    };
    assert!(
        within(cpu, guest),
        "{mode}: cpu_time {cpu:?}, the guest saw {guest:?} ({after:?})"
    );
    if guest.as_secs_f64() >= wall.as_secs_f64() * 0.6 {
        assert!(
            within(cpu, wall),
            "{mode}: cpu_time {cpu:?} for a {wall:?} call"
        );
    } else {
        note(
            &format!("cpu_time_of_a_busy_call({mode})"),
            &format!(
                "the machine gave the call {guest:?} of CPU in {wall:?} (oversubscribed): \
                 compared cpu_time ({cpu:?}) with the guest's own thread_time only"
            ),
        );
    }
    if mode == InterpreterMode::Main {
        return; // sampled: the next, unsampled call is estimated from this one
    }
    call_i64(&rt, name, 1, 200).unwrap();
    let slept = loader.metrics(id).unwrap();
    assert!(
        slept.cpu_time - after.cpu_time < Duration::from_millis(50),
        "{mode}: a 200 ms sleep cost {:?} of CPU",
        slept.cpu_time - after.cpu_time
    );
}

#[test]
fn cpu_time_of_a_busy_call_in_its_own_interpreter() {
    cpu_time_of_a_busy_call(InterpreterMode::default(), "cpu_sub");
}

#[test]
fn cpu_time_of_a_busy_call_in_main() {
    cpu_time_of_a_busy_call(InterpreterMode::Main, "cpu_main");
}

#[test]
fn idle_spinning_is_reported_apart_from_cpu_time() {
    let loader = PythonLoader::default();
    let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
    let id = BundleId::new("py_calculator").id();
    let mut calc = CalculatorContract::new(find(&rt, "calculator"), host(&rt)).unwrap();
    for _ in 0..2_000 {
        calc.add(1, 2).unwrap();
    }
    let m = loader.metrics(id).unwrap();
    if mode_of(&loader, "py_calculator") == "main" {
        assert_eq!(m.spin_time, Duration::ZERO);
    } else {
        // Between back-to-back calls the owner spins for the next one.
        assert!(m.spin_time > Duration::ZERO, "{m:?}");
    }
    assert!(m.cpu_time > Duration::ZERO, "{m:?}");
    // Unloaded: the last reading stays.
    rt.unload_bundle(BundleId::new("py_pipeline")).unwrap(); // it depends on calculator
    rt.unload_bundle(BundleId::new("py_calculator")).unwrap();
    assert!(loader.metrics(id).is_none());
}

const HOARDER: &str = r#"
hog = []
def bomb(impl, args, out, arena, alloc):
    while True:
        hog.append(bytearray(1 << 20))
def keep(impl, args, out, arena, alloc):
    hog.append(bytearray(i64_at(args) << 20))
    put_i64(out, len(hog))
def drop(impl, args, out, arena, alloc):
    hog.clear()
def echo(impl, args, out, arena, alloc):
    put_i64(out, i64_at(args))
"#;

const MIB: u64 = 1 << 20;

fn hoarder(
    config: PythonConfig,
    name: &str,
) -> (
    std::sync::Arc<polyplug::runtime::Runtime>,
    PythonLoader,
    Logs,
) {
    let loader = PythonLoader::new(config);
    let (rt, logs) = runtime_with(loader.clone(), &[]);
    let src = plugin_source(&format!("{name}@1"), HOARDER, "bomb, keep, drop, echo");
    load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).unwrap();
    (rt, loader, logs)
}

#[test]
fn an_allocation_bomb_under_a_256_mib_limit_gets_memory_error_and_the_bundle_answers() {
    within("allocation bomb", || {
        let name = "mem_bomb";
        let (rt, loader, logs) = hoarder(
            PythonConfig {
                bundle_memory_limits: [(name.to_owned(), 256 << 20)].into(),
                ..PythonConfig::default()
            },
            name,
        );
        let info = loader.bundle_info(BundleId::new(name).id()).unwrap();
        assert!(info.memory_accounting, "{info:?}");
        assert_eq!(info.memory_limit, Some(256 << 20));
        let rss0 = rss_mib();
        let e = call_abi(&rt, name, 0, 0).unwrap_err();
        assert_eq!(e.code, AbiErrorCode::Generic as u32);
        let grown = rss_mib() - rss0;
        assert!(grown < 512.0, "RSS grew by {grown:.0} MiB");
        assert!(
            logs.lock()
                .unwrap()
                .iter()
                .any(|(_, _, m)| m.contains("MemoryError")),
            "the MemoryError traceback is logged"
        );
        assert_eq!(
            call_i64(&rt, name, 3, 7),
            Ok(7),
            "the bundle answers (still holding its hoard)"
        );
        let m = loader.metrics(BundleId::new(name).id()).unwrap();
        assert!(m.memory_denied >= 1, "{m:?}");
        assert!(
            m.memory_bytes > 200 * MIB && m.memory_bytes <= 256 * MIB + 8 * MIB,
            "{m:?}"
        );
        call_i64(&rt, name, 2, 0).unwrap();
        let m = loader.metrics(BundleId::new(name).id()).unwrap();
        assert!(m.memory_bytes < 32 * MIB, "freed: {m:?}");
        assert!(m.memory_peak_bytes > 200 * MIB, "{m:?}");
        eprintln!(
            "note: bomb stopped at {} MiB, RSS +{grown:.0} MiB",
            m.memory_peak_bytes / MIB
        );
    });
}

fn tracks_a_kept_bytearray(mode: InterpreterMode, name: &str) {
    let mut config = PythonConfig::default();
    config.bundle_modes.insert(name.to_owned(), mode);
    let (rt, loader, _logs) = hoarder(config, name);
    let id = BundleId::new(name).id();
    let before = loader.metrics(id).unwrap().memory_bytes;
    assert!(before > 0);
    assert_eq!(call_i64(&rt, name, 1, 50), Ok(1));
    let kept = loader.metrics(id).unwrap().memory_bytes;
    let grown = kept.saturating_sub(before);
    assert!(
        grown.abs_diff(50 * MIB) <= 5 * MIB,
        "{mode}: +{grown} bytes for 50 MiB"
    );
    call_i64(&rt, name, 2, 0).unwrap();
    let after = loader.metrics(id).unwrap().memory_bytes;
    assert!(
        after < before + 2 * MIB,
        "{mode}: {after} after the free, {before} before"
    );
}

#[test]
fn memory_bytes_tracks_a_kept_bytearray_in_its_own_interpreter() {
    tracks_a_kept_bytearray(InterpreterMode::default(), "mem_keep_sub");
}

#[test]
fn memory_bytes_tracks_a_kept_bytearray_in_main() {
    tracks_a_kept_bytearray(InterpreterMode::Main, "mem_keep_main");
}

#[test]
fn a_load_over_the_limit_fails_naming_the_bundle_and_the_limit() {
    let name = "mem_fat_init";
    let loader = PythonLoader::new(PythonConfig {
        bundle_memory_limits: [(name.to_owned(), 32 << 20)].into(),
        ..PythonConfig::default()
    });
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    let src = plugin_source(
        &format!("{name}@1"),
        "fat = bytearray(64 << 20)\ndef f(impl, args, out, arena, alloc):\n    pass",
        "f",
    );
    let err = load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(name), "{text}");
    assert!(text.contains("memory limit of 33554432 bytes"), "{text}");
    // Another bundle still loads and answers.
    let (rt2, loader2, _) = hoarder(PythonConfig::default(), "mem_after_fat");
    assert_eq!(call_i64(&rt2, "mem_after_fat", 3, 5), Ok(5));
    drop(loader2);
}
