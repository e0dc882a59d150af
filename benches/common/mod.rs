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
use crate::ext_api::host::host_callers::StatsContract;

/// `crunch(N)`: ~100–200 µs of pure Python per call.
pub const CRUNCH_N: i64 = 2000;

/// `crunch(CRUNCH_N_SHORT)`: ~10 µs of pure Python per call (the oversubscription curve's
/// middle size).
pub const CRUNCH_N_SHORT: i64 = 200;

/// `crunch(CRUNCH_N_LONG)`: ~1 ms of pure Python per call (12 × `CRUNCH_N`).
pub const CRUNCH_N_LONG: i64 = 24_000;

/// What `stats.matmul(1)` returns: the trace of the product of py_numpy's two 220×220
/// matrices (integer-valued, so exact).
pub const MATMUL_TRACE: i64 = 290_402;

/// Sets `OPENBLAS_NUM_THREADS=1` in the process environment. Call first thing in `main`,
/// before any thread exists and before numpy is first imported: OpenBLAS reads it when
/// numpy loads it, and one BLAS thread per call is what the BLAS benches measure (its own
/// thread pool would otherwise use every core for one `numpy.dot`).
pub fn one_blas_thread() {
    std::env::set_var("OPENBLAS_NUM_THREADS", "1");
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bundles")
}

/// The bundles that need C extensions from PyPI (`tools/provision-fixtures` installs them).
pub fn ext_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ext-bundles")
}

/// A runtime over py_numpy alone (numpy refuses subinterpreters: it lands in main mode).
pub fn numpy_runtime<L: BundleLoader + 'static>(loader: L) -> Arc<Runtime> {
    let np = ext_fixtures().join("py_numpy");
    assert!(
        np.join("site-packages/numpy").is_dir(),
        "run tools/provision-fixtures first (no numpy in {})",
        np.display()
    );
    let rt = RuntimeBuilder::new()
        .loader(loader)
        .build()
        .expect("runtime builds");
    rt.load_bundle(&np).expect("py_numpy loads");
    rt
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
    /// `crunch(CRUNCH_N_SHORT)`, ~10 µs.
    CrunchShort,
    /// `crunch(CRUNCH_N_LONG)`, ~1 ms.
    CrunchLong,
    PipelineRun,
    ThreeDirect,
    /// py_numpy's `stats.matmul(1)`: one `numpy.dot` of two 220×220 float64 matrices,
    /// ~0.3 ms in BLAS with the GIL released.
    Matmul,
    /// py_numpy's `stats.sum_squares(100)`: a few µs of numpy, a trivial main-mode call.
    SumSquares,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Add => "calculator.add",
            Op::Greet => "calculator.greet",
            Op::Increment => "counter.increment",
            Op::Crunch => "cruncher.crunch",
            Op::CrunchShort => "cruncher.crunch-10us",
            Op::CrunchLong => "cruncher.crunch-1ms",
            Op::PipelineRun => "pipeline.run",
            Op::ThreeDirect => "3 direct calls",
            Op::Matmul => "stats.matmul",
            Op::SumSquares => "stats.sum_squares",
        }
    }

    /// Calls per batch for ~50 ms of calls in the caller-cost figures (`caller_cost`).
    fn batch(self) -> u64 {
        match self {
            Op::Crunch => 400,
            Op::CrunchShort => 4000,
            Op::CrunchLong => 50,
            Op::Matmul => 150,
            _ => 30_000,
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
            Op::CrunchShort => {
                let mut c = CruncherContract::new(handle(rt, "cruncher"), host).unwrap();
                Box::new(move || {
                    c.crunch(CRUNCH_N_SHORT).unwrap();
                })
            }
            Op::CrunchLong => {
                let mut c = CruncherContract::new(handle(rt, "cruncher"), host).unwrap();
                Box::new(move || {
                    c.crunch(CRUNCH_N_LONG).unwrap();
                })
            }
            Op::Matmul => {
                let mut s = StatsContract::new(handle(rt, "stats"), host).unwrap();
                Box::new(move || assert_eq!(s.matmul(1).unwrap(), MATMUL_TRACE))
            }
            Op::SumSquares => {
                let mut s = StatsContract::new(handle(rt, "stats"), host).unwrap();
                Box::new(move || assert_eq!(s.sum_squares(100).unwrap(), 328_350))
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

/// One op's latency from the bench's main thread (`<op>/main`) and from a spawned one
/// (`<op>/spawned`).
fn main_and_spawned(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    loader: &str,
    op: Op,
    rt: &Arc<Runtime>,
) {
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

/// Single-caller latency of `op`, from the bench's main thread and from a spawned thread.
pub fn latency(c: &mut Criterion, loader: &str, rt: &Arc<Runtime>) {
    let mut g = c.benchmark_group("latency");
    for op in [Op::Add, Op::Greet, Op::Increment] {
        main_and_spawned(&mut g, loader, op, rt);
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

/// Latency of calls that run a while (`cruncher.crunch`, ~100 µs, and
/// `cruncher.crunch-1ms`), from the bench's main thread and from a spawned thread:
/// what a caller waits on top of the call's own run time (`caller_cost` gives the CPU
/// the wait costs it).
pub fn latency_long(c: &mut Criterion, loader: &str, rt: &Arc<Runtime>) {
    let mut g = c.benchmark_group("latency-long");
    g.sample_size(10);
    for op in [Op::Crunch, Op::CrunchLong] {
        main_and_spawned(&mut g, loader, op, rt);
    }
    g.finish();
}

/// Trivial calls into main-mode bundles (`calculator.add` with py_calculator forced into
/// main; py_numpy's `stats.sum_squares(100)`), from the main and a spawned thread: kept to
/// show that serving main mode from a pool does not slow them down. `calc` is a runtime
/// over the core fixtures with py_calculator in main mode (the reference's is always),
/// `numpy` one over py_numpy.
pub fn main_mode_latency(
    c: &mut Criterion,
    loader: &str,
    calc: &Arc<Runtime>,
    numpy: &Arc<Runtime>,
) {
    let mut g = c.benchmark_group("main-mode");
    for (op, rt) in [(Op::Add, calc), (Op::SumSquares, numpy)] {
        main_and_spawned(&mut g, loader, op, rt);
    }
    g.finish();
}

/// The BLAS bundle (py_numpy's `stats.matmul(1)`: one `numpy.dot` of two 220×220 float64
/// matrices, ~0.3 ms in BLAS with the GIL released) driven by T = 1 and 2 host threads on
/// one runtime. `label` names the loader and its setting (`ours-r2`: replicas 2). One
/// iteration = one call per thread; throughput counts the T calls.
pub fn blas(c: &mut Criterion, label: &str, rt: &Arc<Runtime>) {
    let mut g = c.benchmark_group("blas/stats.matmul");
    g.sample_size(10);
    for t in [1usize, 2] {
        let shared: Vec<_> = (0..t).map(|_| Arc::clone(rt)).collect();
        let crew = Crew::new(&shared, Op::Matmul);
        g.throughput(Throughput::Elements(t as u64));
        g.bench_function(BenchmarkId::new(label, t), |b| {
            b.iter_custom(|iters| crew.round(iters))
        });
    }
    g.finish();
}

/// The calling thread's CPU time so far, in ns (`CLOCK_THREAD_CPUTIME_ID`, through
/// interp-pool's reader: no CPython involved, so the reference bench uses it too).
pub fn thread_cpu_ns() -> u64 {
    let t = interp_pool::thread_cpu_time().expect("CLOCK_THREAD_CPUTIME_ID");
    u64::try_from(t.as_nanos()).expect("thread CPU time fits u64 ns")
}

/// What one thread's calls of one op cost it (`cost_here`), in ns per call.
#[derive(Clone, Copy)]
struct Cost {
    /// Wall time per call of the fastest batch.
    best: f64,
    /// The calling thread's CPU time per call in that batch.
    cpu: f64,
    /// Wall time per call over every measured batch.
    mean: f64,
    /// Single-call latency percentiles over every measured call.
    p50: f64,
    p99: f64,
}

/// Wall time and caller-thread CPU time per call of `op` made by the calling thread: one
/// warm-up batch, then `batches` batches of ~50 ms of calls, each call timed.
fn cost_here(op: Op, rt: &Runtime, batches: usize) -> Cost {
    let mut call = op.caller(rt);
    let n = if quick() {
        (op.batch() / 10).max(5)
    } else {
        op.batch()
    };
    let mut best = (f64::MAX, 0.0);
    let mut each = Vec::with_capacity(n as usize * batches);
    let mut total = 0.0;
    for i in 0..=batches {
        let (t, cpu) = (Instant::now(), thread_cpu_ns());
        for _ in 0..n {
            let t = Instant::now();
            call();
            if i > 0 {
                each.push(t.elapsed().as_nanos() as u64);
            }
        }
        let cpu = (thread_cpu_ns() - cpu) as f64 / n as f64;
        let wall = t.elapsed().as_nanos() as f64 / n as f64;
        if i > 0 {
            total += wall;
            if wall < best.0 {
                best = (wall, cpu);
            }
        }
    }
    each.sort_unstable();
    let pct = |p: f64| each[((each.len() as f64 * p) as usize).min(each.len() - 1)] as f64;
    Cost {
        best: best.0,
        cpu: best.1,
        mean: total / batches as f64,
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

/// The caller's side of each call in `ops`: latency and the CPU the calling thread spends
/// per call (working and waiting: spinning shows here, parking does not), from the bench's
/// main thread and from a spawned one, in the fastest of 7 batches (2 with `--quick`); and
/// the mean over all batches and single-call p50/p99. Keys `<mode>/<op>/<thread>_latency_ns`,
/// `_cpu_ns`, `_mean_ns`, `_p50_ns`, `_p99_ns`, added to `out`.
pub fn caller_cost(
    mut out: serde_like::Obj,
    mode: &str,
    rt: &Arc<Runtime>,
    ops: &[Op],
) -> serde_like::Obj {
    let batches = if quick() { 2 } else { 7 };
    for &op in ops {
        let main = cost_here(op, rt, batches);
        let spawned = std::thread::scope(|s| s.spawn(|| cost_here(op, rt, batches)).join())
            .expect("spawned caller");
        for (th, cost) in [("main", main), ("spawned", spawned)] {
            let key = format!("{mode}/{}/{th}", op.name());
            println!(
                "caller cost {key}: best batch {:.1} µs per call, caller CPU {:.1} µs per call; mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs",
                cost.best / 1e3,
                cost.cpu / 1e3,
                cost.mean / 1e3,
                cost.p50 / 1e3,
                cost.p99 / 1e3,
            );
            out = out
                .num(&format!("{key}_latency_ns"), cost.best)
                .num(&format!("{key}_cpu_ns"), cost.cpu)
                .num(&format!("{key}_mean_ns"), cost.mean)
                .num(&format!("{key}_p50_ns"), cost.p50)
                .num(&format!("{key}_p99_ns"), cost.p99);
        }
    }
    out
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
        let rounds: Vec<f64> = (0..batches)
            .map(|_| crew.round(batch).as_nanos() as f64)
            .collect();
        let best = rounds.iter().copied().fold(f64::MAX, f64::min);
        // Best-of hides the slow mode a busy machine also gives users: the sustained
        // figure is every call over the whole run's wall time.
        let total: f64 = rounds.iter().sum();
        out = out
            .num(
                &format!("{}/2x2_calls_per_s", op.name()),
                2.0 * batch as f64 / best * 1e9,
            )
            .num(
                &format!("{}/2x2_sustained_calls_per_s", op.name()),
                2.0 * (batch * batches) as f64 / total * 1e9,
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

/// The benchmark filter criterion was given (its positional argument), if any.
fn filter() -> Option<String> {
    const TAKES_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--profile-time",
        "--output-format",
        "--color",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--plotting-backend",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a.starts_with('-') {
            if TAKES_VALUE.contains(&a.as_str()) {
                args.next();
            }
            continue;
        }
        return Some(a);
    }
    None
}

/// Whether the figures outside criterion named `name` (criterion skips its own) should be
/// taken in this run: with no filter always; with one, when one of its `|`-separated parts
/// occurs in `name` or `name` in it (so `cargo bench --bench ours -- 'blas|caller-cost'`
/// takes only those, and `-- latency/calculator.add/` the `latency` best-of figures).
pub fn wanted(name: &str) -> bool {
    filter().is_none_or(|f| {
        f.split('|')
            .any(|part| name.contains(part) || part.contains(name))
    })
}

/// Whether the filter is exactly `name` (a run of that figure alone, no criterion groups).
pub fn only(name: &str) -> bool {
    filter().as_deref() == Some(name)
}

/// Sustained calls of `op` made by this thread, one after another: a warm-up of 0.3 s,
/// then calls for at least [`SUSTAIN`] (or, with `BENCH_CALLS=n`, exactly n calls after
/// 20 warm-up calls: for instruction counts under callgrind). Prints calls/s, µs per call
/// and the calling thread's CPU per call, as `sustained <label>: ...` lines that
/// `benches/sustained.sh` collects.
pub fn sustained(label: &str, rt: &Runtime, op: Op) {
    let mut call = op.caller(rt);
    let fixed: Option<u64> = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok());
    let warm = Instant::now();
    let mut n = 0;
    while fixed.map_or(warm.elapsed() < SUSTAIN / 5, |_| n < 20) {
        call();
        n += 1;
    }
    let (start, cpu) = (Instant::now(), thread_cpu_ns());
    let mut calls = 0u64;
    while fixed.map_or(start.elapsed() < SUSTAIN, |f| calls < f) {
        call();
        calls += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ns() - cpu) as f64 / calls.max(1) as f64;
    println!(
        "sustained {label}: {:.0} calls/s, {:.1} µs per call, caller CPU {:.1} µs per call, {calls} calls in {secs:.2} s",
        calls as f64 / secs,
        secs * 1e6 / calls.max(1) as f64,
        cpu / 1e3,
    );
}

/// How long [`sustained`] calls for.
pub const SUSTAIN: Duration = Duration::from_millis(1500);

/// Whether criterion was asked for a quick smoke run.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// One point of the oversubscription curve ([`oversubscription`]).
#[derive(Clone, Copy, Debug)]
pub struct OversubPoint {
    pub op: Op,
    pub threads: usize,
    /// Aggregate calls/s of all T threads, sustained.
    pub calls_per_s: f64,
    /// `calls_per_s / (min(T, cores) × the T = 1 calls/s)`.
    pub efficiency: f64,
}

/// The thread counts of the oversubscription curve.
pub const OVERSUB_THREADS: [usize; 4] = [1, 2, 4, 8];

/// The calls of the oversubscription curve: ~1 µs, ~10 µs and ~100–150 µs.
pub const OVERSUB_OPS: [Op; 3] = [Op::Add, Op::CrunchShort, Op::Crunch];

/// How long each point of the curve calls for, after its warm-up: [`SUSTAIN`], or 0.1 s
/// in the short mode (`--quick` or `BENCH_SHORT=1`: a smoke run, not for quoting).
fn oversub_window() -> (Duration, Duration) {
    if quick() || std::env::var_os("BENCH_SHORT").is_some() {
        (Duration::from_millis(20), Duration::from_millis(100))
    } else {
        (SUSTAIN / 5, SUSTAIN)
    }
}

/// A call counter on a cache line of its own (threads bump theirs on every call).
#[repr(align(128))]
#[derive(Default)]
struct Padded(std::sync::atomic::AtomicU64);

/// Aggregate calls/s of `threads` host threads, thread i making `op` calls into
/// `pair[i % 2]` (two runtimes: two bundles, each in its own interpreter where the loader
/// has them) as fast as it can: every thread's calls over a sustained window after a
/// warm-up, all threads running throughout.
pub fn sustained_threads(pair: &[Arc<Runtime>; 2], op: Op, threads: usize) -> f64 {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (warm, window) = oversub_window();
    let counts: Vec<Padded> = (0..threads).map(|_| Padded::default()).collect();
    let stop = AtomicBool::new(false);
    let ready = std::sync::Barrier::new(threads + 1);
    let total = |c: &[Padded]| c.iter().map(|p| p.0.load(Relaxed)).sum::<u64>();
    std::thread::scope(|s| {
        for (i, count) in counts.iter().enumerate() {
            let (rt, stop, ready) = (&pair[i % 2], &stop, &ready);
            s.spawn(move || {
                let mut call = op.caller(rt);
                ready.wait();
                while !stop.load(Relaxed) {
                    call();
                    count.0.fetch_add(1, Relaxed);
                }
            });
        }
        ready.wait();
        std::thread::sleep(warm);
        let (n0, t0) = (total(&counts), Instant::now());
        std::thread::sleep(window);
        let (n1, secs) = (total(&counts), t0.elapsed().as_secs_f64());
        stop.store(true, Relaxed);
        (n1 - n0) as f64 / secs
    })
}

/// The oversubscription curve (issue 22): for each call size of [`OVERSUB_OPS`] and each
/// T of [`OVERSUB_THREADS`], T host threads, thread i calling bundle i % 2 of `pair`;
/// efficiency = aggregate calls/s / (min(T, cores) × one thread's calls/s for that call
/// and loader). Prints one `oversub <label> <op> T=<t>: ...` line per point (what
/// `benches/oversub.sh` collects) and returns the points.
pub fn oversubscription(label: &str, pair: &[Arc<Runtime>; 2]) -> Vec<OversubPoint> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut points = Vec::new();
    for op in OVERSUB_OPS {
        let mut single = f64::NAN;
        for threads in OVERSUB_THREADS {
            let calls_per_s = sustained_threads(pair, op, threads);
            if threads == 1 {
                single = calls_per_s;
            }
            let efficiency = calls_per_s / (threads.min(cores) as f64 * single);
            println!(
                "oversub {label} {} T={threads}: {calls_per_s:.0} calls/s, {:.2} µs per call per thread, efficiency {efficiency:.2}",
                op.name(),
                threads as f64 * 1e6 / calls_per_s,
            );
            points.push(OversubPoint {
                op,
                threads,
                calls_per_s,
                efficiency,
            });
        }
    }
    points
}

/// The points of [`oversubscription`] as a markdown table (one row per call, one column
/// per T), with the 2 bundles × 2 threads trivial throughput under it.
pub fn oversub_table(label: &str, points: &[OversubPoint]) -> String {
    let mut out = format!(
        "{label}: efficiency (calls/s) on {} cores, {}\n| call | {} |\n|---|{}\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average(),
        OVERSUB_THREADS.map(|t| format!("T = {t}")).join(" | "),
        "---|".repeat(OVERSUB_THREADS.len()),
    );
    for op in OVERSUB_OPS {
        let cells: Vec<String> = points
            .iter()
            .filter(|p| p.op == op)
            .map(|p| format!("{:.2} ({:.0})", p.efficiency, p.calls_per_s))
            .collect();
        out += &format!("| {} | {} |\n", op.name(), cells.join(" | "));
    }
    for p in points.iter().filter(|p| p.op == Op::Add && p.threads <= 4) {
        out += &format!(
            "trivial calls, {} thread(s) on 2 bundles: {:.0} calls/s sustained, {:.2} µs per call per thread\n",
            p.threads,
            p.calls_per_s,
            p.threads as f64 * 1e6 / p.calls_per_s,
        );
    }
    out
}

/// `/proc/loadavg`'s first three fields (for the figures' context), or "load ?".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "load ?".to_owned(),
        |l| {
            format!(
                "load {}",
                l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            )
        },
    )
}
