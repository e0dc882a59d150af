//! `bench <plugin-dir>`: hammer the fixture contracts from N host threads.
//!
//! It drives the four fixture contracts in [`DRIVERS`] only (their host callers are
//! generated code); other contracts in the plugin dir are listed as "not driven".

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use polyplug::runtime::Runtime;
use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_abi::{GuestContractHandle, HostApi};
use polyplug_subinterp::{PythonConfig, PythonLoader};
use polyplug_utils::GuestContractId;

use crate::core_api::host::host_callers::{
    CalculatorContract, CounterContract, CruncherContract, PipelineContract,
};

/// One benchmarked call per known fixture contract.
const DRIVERS: &[(&str, &str)] = &[
    ("calculator", "add"),
    ("counter", "increment"),
    ("cruncher", "crunch"),
    ("pipeline", "run"),
];

fn one_call(
    contract: &str,
    handle: GuestContractHandle,
    host: *const HostApi,
) -> Box<dyn FnMut(i64) -> bool> {
    match contract {
        "calculator" => {
            let mut c = CalculatorContract::new(handle, host).expect("calculator resolves");
            Box::new(move |i| c.add(i, 1).ok() == Some(i + 1))
        }
        "counter" => {
            let mut c = CounterContract::new(handle, host).expect("counter resolves");
            Box::new(move |_| c.increment(1).is_ok())
        }
        "cruncher" => {
            let mut c = CruncherContract::new(handle, host).expect("cruncher resolves");
            Box::new(move |_| c.crunch(2000).is_ok())
        }
        _ => {
            let mut c = PipelineContract::new(handle, host).expect("pipeline resolves");
            Box::new(move |i| c.run(i, 1).ok() == Some((i + 1) * 2))
        }
    }
}

pub fn run(dir: &Path, config: PythonConfig, threads: usize, seconds: u64) -> Result<bool, String> {
    let loader = PythonLoader::new(config);
    let rt = RuntimeBuilder::new()
        .loader(loader.clone())
        .plugin_dir(dir.to_path_buf())
        .build()
        .map_err(|e| format!("cannot load {}: {e}", dir.display()))?;
    println!("{threads} host threads, {seconds} s per contract");
    let mut t = crate::table::plain(
        &["contract", "call", "calls/s", "p50 us", "p99 us", "errors"],
        &[2, 3, 4, 5],
    );
    let mut all_ok = true;
    for (contract, call) in DRIVERS {
        let Ok(handle) = rt.find_guest_contract(GuestContractId::new(contract, 1).id(), 1) else {
            t.add_row(vec![*contract, *call, "not loaded"]);
            continue;
        };
        let r = drive(&rt, contract, handle, threads, Duration::from_secs(seconds));
        all_ok &= r.errors == 0;
        t.add_row(vec![
            contract.to_string(),
            call.to_string(),
            format!("{:.0}", r.rate),
            format!("{:.2}", r.p50_us),
            format!("{:.2}", r.p99_us),
            r.errors.to_string(),
        ]);
    }
    println!("{}", crate::table::render(&t));
    let bundles = loaded_bundles(dir, &loader);
    print_not_driven(&bundles, &loader);
    print_metrics(&bundles, &loader);
    Ok(all_ok)
}

/// `(name, id)` of the bundles under `dir` that the loader has loaded, by directory name.
fn loaded_bundles(dir: &Path, loader: &PythonLoader) -> Vec<(String, u64)> {
    let mut dirs: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.iter()
        .filter_map(|d| polyplug::loader::manifest::parse_manifest(d).ok())
        .filter(|m| loader.bundle_info(m.id).is_some())
        .map(|m| (m.name, m.id))
        .collect()
}

/// Names the loaded contracts that `bench` has no driver for, instead of skipping them
/// silently.
fn print_not_driven(bundles: &[(String, u64)], loader: &PythonLoader) {
    let others: Vec<String> = bundles
        .iter()
        .filter_map(|(name, id)| Some((name, loader.bundle_info(*id)?)))
        .flat_map(|(name, info)| {
            info.contracts
                .into_iter()
                .filter(|(c, _)| {
                    let base = c.split('@').next().unwrap_or(c);
                    !DRIVERS.iter().any(|(d, _)| *d == base)
                })
                .map(move |(c, _)| format!("{c} ({name})"))
        })
        .collect();
    if !others.is_empty() {
        println!("not driven: {}", others.join(", "));
    }
}

/// The loader's own per-bundle metrics after the run (`PythonLoader::metrics`).
fn print_metrics(bundles: &[(String, u64)], loader: &PythonLoader) {
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    let mut t = crate::table::plain(
        &[
            "bundle",
            "dispatch",
            "calls",
            "direct",
            "errors",
            "queue p99us",
            "run p50us",
            "run p99us",
            "max depth",
            "cpu ms",
            "spin ms",
            "py MiB",
            "replicas",
        ],
        &[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    );
    for (name, id) in bundles {
        let Some(m) = loader.metrics(*id) else {
            continue;
        };
        let dispatch = loader.bundle_info(*id).map_or("-", |i| i.dispatch.as_str());
        t.add_row(vec![
            name.clone(),
            dispatch.into(),
            m.calls.to_string(),
            m.replicas
                .iter()
                .map(|r| r.direct_calls)
                .sum::<u64>()
                .to_string(),
            m.errors.to_string(),
            us(m.queue_wait_p99),
            us(m.run_p50),
            us(m.run_p99),
            m.max_depth.to_string(),
            ms(m.cpu_time),
            ms(m.spin_time),
            format!("{:.1}", m.memory_bytes as f64 / f64::from(1 << 20)),
            m.replicas.len().to_string(),
        ]);
    }
    println!();
    println!("{}", crate::table::render(&t));
}

struct Figures {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn drive(
    rt: &Runtime,
    contract: &str,
    handle: GuestContractHandle,
    threads: usize,
    dur: Duration,
) -> Figures {
    let host = rt.as_context_ptr() as usize;
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let barrier = Barrier::new(threads + 1);
    let (samples, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (stop, done, errors, barrier) = (&stop, &done, &errors, &barrier);
                s.spawn(move || {
                    let mut call = one_call(contract, handle, host as *const HostApi);
                    let mut lat = Vec::with_capacity(1 << 16);
                    barrier.wait();
                    let mut i = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        if !call(i % 1000) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        lat.push(t.elapsed().as_nanos() as u32);
                        i += 1;
                        if i % 64 == 0 {
                            done.fetch_add(64, Ordering::Relaxed);
                        }
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        progress(contract, start, dur, &done);
        stop.store(true, Ordering::Relaxed);
        let samples: Vec<u32> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("bench thread"))
            .collect();
        (samples, start.elapsed())
    });
    let mut sorted = samples;
    sorted.sort_unstable();
    let pct = |p: f64| {
        sorted
            .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    Figures {
        rate: sorted.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Waits `dur`, drawing a progress bar on stderr (indicatif hides it when stderr is not a
/// terminal) with the calls made so far.
fn progress(label: &str, start: Instant, dur: Duration, done: &AtomicU64) {
    let total = dur.as_millis() as u64;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix:<12} [{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("#>."),
    );
    bar.set_prefix(label.to_owned());
    while start.elapsed() < dur {
        std::thread::sleep(Duration::from_millis(100).min(dur.saturating_sub(start.elapsed())));
        bar.set_position((start.elapsed().as_millis() as u64).min(total));
        bar.set_message(format!("{:>10} calls", done.load(Ordering::Relaxed)));
    }
    bar.finish_and_clear();
}
