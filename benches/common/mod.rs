//! Scenarios shared by `benches/ours.rs` and `benches/reference.rs`: the same bundles, the
//! same polyplugc-generated host callers and the same host code; only the loader differs.
//! Each bench binary initialises exactly one loader (both embed CPython).

#![allow(dead_code, reason = "each bench binary uses a subset")]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use polyplug::loader::BundleLoader;
use polyplug::runtime::Runtime;
use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_abi::{GuestContractHandle, HostApi, StringView};
use polyplug_utils::GuestContractId;

use crate::core_api::host::host_callers::{
    CalculatorContract, CounterContract, CruncherContract, PipelineContract,
};

/// `crunch(N)`: ~100–200 µs of pure Python per call.
pub const CRUNCH_N: i64 = 2000;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bundles")
}

/// A runtime over the four fixture bundles with a fresh loader.
pub fn runtime<L: BundleLoader + 'static>(make: fn() -> L) -> Arc<Runtime> {
    RuntimeBuilder::new()
        .loader(make())
        .plugin_dir(fixtures())
        .build()
        .expect("fixture runtime builds")
}

pub fn handle(rt: &Runtime, contract: &str) -> GuestContractHandle {
    rt.find_guest_contract(GuestContractId::new(contract, 1).id(), 1)
        .unwrap_or_else(|e| panic!("{contract}@1: {e:?}"))
}

/// Host pointer that may cross threads (the HostApi is shared by design).
#[derive(Clone, Copy)]
pub struct Host(pub usize);

impl Host {
    pub fn of(rt: &Runtime) -> Self {
        Host(rt.as_context_ptr() as usize)
    }
    pub fn ptr(self) -> *const HostApi {
        self.0 as *const HostApi
    }
}

/// One kind of call, made through the generated host caller for its contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Greet,
    Increment,
    Crunch,
    PipelineRun,
    ThreeDirect,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Add => "calculator.add",
            Op::Greet => "calculator.greet",
            Op::Increment => "counter.increment",
            Op::Crunch => "cruncher.crunch",
            Op::PipelineRun => "pipeline.run",
            Op::ThreeDirect => "3 direct calls",
        }
    }

    /// Builds the callers on the calling thread (host callers are not `Send`) and
    /// returns a closure making one checked call.
    pub fn caller(self, rt: &Runtime) -> Box<dyn FnMut()> {
        let host = rt.as_context_ptr();
        match self {
            Op::Add => {
                let mut c = CalculatorContract::new(handle(rt, "calculator"), host).unwrap();
                Box::new(move || assert_eq!(c.add(2, 3).unwrap(), 5))
            }
            Op::Greet => {
                let mut c = CalculatorContract::new(handle(rt, "calculator"), host).unwrap();
                let who = "polyplug";
                Box::new(move || {
                    let v = c
                        .greet(StringView {
                            ptr: who.as_ptr(),
                            len: who.len(),
                        })
                        .unwrap();
                    assert_eq!(v.len, "Hello, polyplug!".len());
                })
            }
            Op::Increment => {
                let mut c = CounterContract::new(handle(rt, "counter"), host).unwrap();
                Box::new(move || {
                    c.increment(1).unwrap();
                })
            }
            Op::Crunch => {
                let mut c = CruncherContract::new(handle(rt, "cruncher"), host).unwrap();
                Box::new(move || {
                    c.crunch(CRUNCH_N).unwrap();
                })
            }
            Op::PipelineRun => {
                let mut p = PipelineContract::new(handle(rt, "pipeline"), host).unwrap();
                Box::new(move || assert_eq!(p.run(2, 3).unwrap(), 10))
            }
            Op::ThreeDirect => {
                // What pipeline.run does, done by the host itself: add, mul, and the
                // outer call's worth of one more dispatch.
                let mut c = CalculatorContract::new(handle(rt, "calculator"), host).unwrap();
                Box::new(move || {
                    let s = c.add(2, 3).unwrap();
                    assert_eq!(c.mul(s, 2).unwrap(), 10);
                    c.add(0, 0).unwrap();
                })
            }
        }
    }
}

/// K long-lived host threads, each with its own runtime (= its own bundles) or a shared
/// one, driven in lock step: every round, each thread makes `iters` calls.
pub struct Crew {
    go: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<()>,
}

impl Crew {
    pub fn new(runtimes: &[Arc<Runtime>], op: Op) -> Self {
        let (done_tx, done) = mpsc::channel();
        let mut go = Vec::new();
        for rt in runtimes {
            let (tx, rx) = mpsc::channel::<u64>();
            let (rt, done_tx) = (Arc::clone(rt), done_tx.clone());
            let (ready_tx, ready_rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut call = op.caller(&rt);
                ready_tx.send(()).unwrap();
                while let Ok(iters) = rx.recv() {
                    for _ in 0..iters {
                        call();
                    }
                    if done_tx.send(()).is_err() {
                        break;
                    }
                }
            });
            ready_rx.recv().unwrap();
            go.push(tx);
        }
        Crew { go, done }
    }

    /// Wall time for every thread to make `iters` calls.
    pub fn round(&self, iters: u64) -> Duration {
        let start = Instant::now();
        for g in &self.go {
            g.send(iters).unwrap();
        }
        for _ in &self.go {
            self.done.recv().unwrap();
        }
        start.elapsed()
    }
}

/// Single-caller latency of `op`, from the bench's main thread and from a spawned thread.
pub fn latency(c: &mut Criterion, loader: &str, rt: &Arc<Runtime>) {
    let mut g = c.benchmark_group("latency");
    for op in [Op::Add, Op::Greet, Op::Increment] {
        let mut call = op.caller(rt);
        g.bench_function(
            BenchmarkId::new(format!("{}/main", op.name()), loader),
            |b| b.iter(&mut call),
        );
        let crew = Crew::new(std::slice::from_ref(rt), op);
        g.bench_function(
            BenchmarkId::new(format!("{}/spawned", op.name()), loader),
            |b| b.iter_custom(|iters| crew.round(iters)),
        );
    }
    g.finish();
}

/// K bundles (one runtime each) driven by K threads; one iteration = one call per thread.
pub fn scaling<L: BundleLoader + 'static>(c: &mut Criterion, loader: &str, make: fn() -> L) {
    scaling_of(c, loader, make, &[Op::Add, Op::Increment, Op::Crunch]);
}

/// `scaling` for the given calls only.
pub fn scaling_of<L: BundleLoader + 'static>(
    c: &mut Criterion,
    loader: &str,
    make: fn() -> L,
    ops: &[Op],
) {
    let runtimes: Vec<_> = (0..4).map(|_| runtime(make)).collect();
    for &op in ops {
        let mut g = c.benchmark_group(format!("scaling/{}", op.name()));
        if op == Op::Crunch {
            g.sample_size(10);
        }
        for k in [1usize, 2, 4] {
            let crew = Crew::new(&runtimes[..k], op);
            g.throughput(Throughput::Elements(k as u64));
            g.bench_function(BenchmarkId::new(loader, k), |b| {
                b.iter_custom(|iters| crew.round(iters))
            });
        }
        g.finish();
    }
}

/// One bundle driven by T host threads, with K replicas where the loader has them
/// (`runtime_for(k)`; the reference ignores k): T = K = 1, 2, 4, for the CPU-heavy
/// cruncher and for trivial calls. One iteration = one call per thread.
pub fn replicas(c: &mut Criterion, loader: &str, runtime_for: &dyn Fn(usize) -> Arc<Runtime>) {
    for op in [Op::Crunch, Op::Add] {
        let mut g = c.benchmark_group(format!("replicas/{}", op.name()));
        if op == Op::Crunch {
            g.sample_size(10);
        }
        for k in [1usize, 2, 4] {
            let rt = runtime_for(k);
            let shared: Vec<_> = (0..k).map(|_| Arc::clone(&rt)).collect();
            let crew = Crew::new(&shared, op);
            g.throughput(Throughput::Elements(k as u64));
            g.bench_function(BenchmarkId::new(loader, k), |b| {
                b.iter_custom(|iters| crew.round(iters))
            });
        }
        g.finish();
    }
}

/// Four host threads hammering one bundle.
pub fn contention(c: &mut Criterion, loader: &str, rt: &Arc<Runtime>) {
    let shared: Vec<_> = (0..4).map(|_| Arc::clone(rt)).collect();
    let crew = Crew::new(&shared, Op::Add);
    let mut g = c.benchmark_group("contention");
    g.throughput(Throughput::Elements(4));
    g.bench_function(BenchmarkId::new("calculator.add/4 threads", loader), |b| {
        b.iter_custom(|iters| crew.round(iters))
    });
    g.finish();
}

/// Nested py→py (`pipeline.run`, two peer calls inside) against three direct calls.
pub fn nested(c: &mut Criterion, loader: &str, rt: &Arc<Runtime>) {
    let mut g = c.benchmark_group("nested");
    for op in [Op::PipelineRun, Op::ThreeDirect] {
        let mut call = op.caller(rt);
        g.bench_function(BenchmarkId::new(op.name(), loader), |b| b.iter(&mut call));
    }
    g.finish();
}

/// A runtime over the fixture bundles whose logger only counts the lines it gets (the
/// default logger would print every traceback to stderr).
pub fn counting_runtime<L: BundleLoader + 'static>(
    make: fn() -> L,
) -> (Arc<Runtime>, Arc<std::sync::atomic::AtomicU64>) {
    let lines = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = Arc::clone(&lines);
    let rt = RuntimeBuilder::new()
        .loader(make())
        .plugin_dir(fixtures())
        .logger(move |_, _, _| {
            sink.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .build()
        .expect("fixture runtime builds");
    (rt, lines)
}

/// Failing calls: `calculator.add(i64::MAX, 1)` overflows the i64 the glue packs, so the
/// guest raises `struct.error` on every call. Criterion times one failing call; then a
/// burst of `n` failing calls gives calls/s and how many log lines the logger got.
pub fn failures<L: BundleLoader + 'static>(c: &mut Criterion, loader: &str, make: fn() -> L) {
    let (rt, lines) = counting_runtime(make);
    let host = rt.as_context_ptr();
    let mut calc = CalculatorContract::new(handle(&rt, "calculator"), host).unwrap();
    let mut g = c.benchmark_group("failures");
    g.bench_function(BenchmarkId::new("calculator.add overflow", loader), |b| {
        b.iter(|| assert!(calc.add(i64::MAX, 1).is_err()))
    });
    g.finish();
    let n: u32 = if quick() { 10_000 } else { 100_000 };
    let before = lines.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..n {
        assert!(calc.add(i64::MAX, 1).is_err());
    }
    let secs = t.elapsed().as_secs_f64();
    let logged = lines.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(
        calc.add(2, 3).unwrap(),
        5,
        "the bundle answers after the burst"
    );
    println!(
        "failures/{loader}: {n} failing calls in {secs:.3} s = {:.0} calls/s, {logged} log lines",
        f64::from(n) / secs
    );
    serde_like::Obj::default()
        .num("failing_calls", f64::from(n))
        .num("failing_calls_per_s", f64::from(n) / secs)
        .num("log_lines", logged as f64)
        .num("burst_s", secs)
        .write(&format!("{loader}-failures"));
}

/// Best-of-batches figures (as `timeit`'s min: what a call costs when the shared machine
/// lets it run): mean per call of the fastest of many short batches, for each call from the
/// main and from a spawned thread, and aggregate calls/s of 2 bundles × 2 threads (trivial
/// calls). Written to `target/bench-extra/<label>-best.json` for `tools/bench-report`.
pub fn best_of<L: BundleLoader + 'static>(label: &str, rt: &Arc<Runtime>, make: fn() -> L) {
    let (batches, batch) = if quick() { (10, 200) } else { (200, 500) };
    let mut out = serde_like::Obj::default();
    for op in [Op::Add, Op::Greet, Op::Increment] {
        let mut call = op.caller(rt);
        let crew = Crew::new(std::slice::from_ref(rt), op);
        let (mut main, mut spawned) = (f64::MAX, f64::MAX);
        for _ in 0..batches {
            let t = Instant::now();
            for _ in 0..batch {
                call();
            }
            main = main.min(t.elapsed().as_nanos() as f64 / batch as f64);
            spawned = spawned.min(crew.round(batch).as_nanos() as f64 / batch as f64);
        }
        out = out
            .num(&format!("{}/main_ns", op.name()), main)
            .num(&format!("{}/spawned_ns", op.name()), spawned);
    }
    let runtimes: Vec<_> = (0..2).map(|_| runtime(make)).collect();
    for op in [Op::Add, Op::Increment] {
        let crew = Crew::new(&runtimes, op);
        let best = (0..batches)
            .map(|_| crew.round(batch).as_nanos() as f64)
            .fold(f64::MAX, f64::min);
        out = out.num(
            &format!("{}/2x2_calls_per_s", op.name()),
            2.0 * batch as f64 / best * 1e9,
        );
    }
    out.write(&format!("{label}-best"));
}

/// Per-call latency percentiles of 4 threads on one bundle (criterion gives means only).
pub fn contention_percentiles(rt: &Arc<Runtime>, calls_per_thread: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut lat: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut call = Op::Add.caller(rt);
                    (0..calls_per_thread)
                        .map(|_| {
                            let t = Instant::now();
                            call();
                            t.elapsed().as_nanos() as u64
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e3;
    (pct(0.5), pct(0.99), rate)
}

/// The figures criterion cannot give (percentiles, load, memory), written to
/// `target/bench-extra/<loader>-*.json` for `tools/bench-report`.
pub fn extras<L: BundleLoader + 'static>(
    loader: &str,
    rt: &Arc<Runtime>,
    make: fn() -> L,
    pipeline_run: &str,
) {
    let (p50, p99, rate) = contention_percentiles(rt, if quick() { 2_000 } else { 50_000 });
    serde_like::Obj::default()
        .num("contention_p50_us", p50)
        .num("contention_p99_us", p99)
        .num("contention_calls_per_s", rate)
        .text("pipeline_run", pipeline_run)
        .write(&format!("{loader}-contention"));
    load_and_memory(make, if quick() { 20 } else { 200 }).write(&format!("{loader}-load"));
}

/// The loader crate's RSS reader, included by path: the reference bench must not link
/// the loader crate (both export the same C symbols).
#[path = "../../src/rss.rs"]
mod rss_reader;

/// Resident set size in bytes (0 where it cannot be read).
pub fn rss() -> u64 {
    rss_reader::rss_bytes().unwrap_or(0)
}

/// Load time of py_calculator (median of 10 loads into an idle process, each in a fresh
/// runtime, and median of a burst of 10 back-to-back loads), RSS per loaded bundle, and
/// RSS growth over load/unload cycles.
pub fn load_and_memory<L: BundleLoader + 'static>(
    make: fn() -> L,
    cycles: usize,
) -> serde_like::Obj {
    let calc = fixtures().join("py_calculator");
    let id = polyplug_utils::BundleId::new("py_calculator");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Warm: CPython itself initialised, stdlib imported once.
    let warm = RuntimeBuilder::new().loader(make()).build().unwrap();
    warm.load_bundle(&calc).unwrap();
    let mut held = Vec::new();
    let mut load = |pause: Duration| {
        std::thread::sleep(pause);
        let rt = RuntimeBuilder::new().loader(make()).build().unwrap();
        let t = Instant::now();
        rt.load_bundle(&calc).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        held.push(rt);
        ms
    };
    // Idle: whatever background work a load starts has finished before the next one.
    let idle: Vec<f64> = (0..10).map(|_| load(Duration::from_millis(100))).collect();
    let base = rss();
    let burst: Vec<f64> = (0..10).map(|_| load(Duration::ZERO)).collect();
    let per_bundle = (rss().saturating_sub(base)) as f64 / 10.0 / (1 << 20) as f64;
    drop(held);
    let rt = RuntimeBuilder::new().loader(make()).build().unwrap();
    let before = rss();
    for _ in 0..cycles {
        rt.load_bundle(&calc).unwrap();
        rt.unload_bundle(id).unwrap();
    }
    let growth = (rss().saturating_sub(before)) as f64 / (1 << 20) as f64;
    serde_like::Obj::default()
        .num("load_ms_median", median(idle))
        .num("load_ms_burst_median", median(burst))
        .num("rss_mib_per_bundle", per_bundle)
        .num("cycles", cycles as f64)
        .num("rss_mib_growth_after_cycles", growth)
}

/// Tiny JSON writer for the extra figures (no serde dependency for three numbers).
pub mod serde_like {
    #[derive(Default)]
    pub struct Obj(Vec<(String, String)>);

    impl Obj {
        pub fn num(mut self, k: &str, v: f64) -> Self {
            self.0.push((k.into(), format!("{v}")));
            self
        }
        pub fn text(mut self, k: &str, v: &str) -> Self {
            self.0.push((k.into(), format!("{v:?}")));
            self
        }
        pub fn write(&self, name: &str) {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-extra");
            std::fs::create_dir_all(&dir).unwrap();
            let body: Vec<String> = self
                .0
                .iter()
                .map(|(k, v)| format!("  {k:?}: {v}"))
                .collect();
            std::fs::write(
                dir.join(format!("{name}.json")),
                format!("{{\n{}\n}}\n", body.join(",\n")),
            )
            .unwrap();
        }
    }
}

/// Whether criterion was asked for a quick smoke run.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}
