//! Hand-off costs of interp-pool: foreign-thread round trip, inline call on the owner
//! thread, a call into the main interpreter (its first thread, and a `MainLane`), and K interpreters driven by K threads (aggregate throughput).
//!
//! `cargo bench -p interp-pool --bench handoff` (add `-- --quick` for a smoke run).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use interp_pool::{Attached, InterpreterConfig, InterpreterHandle, MainLane, Result};

const SETUP: &str = r#"
def add(a, b):
    return a + b

def burn(n):
    # ~100-200 us of pure-Python work for n = 2000 on the reference VM
    s = 0
    for i in range(n):
        s += (i * i) % 7
    return s
"#;

fn interpreter(name: &str) -> InterpreterHandle {
    let h = InterpreterHandle::spawn(InterpreterConfig::named(name)).expect("spawn");
    h.call(|py| py.run(SETUP)).expect("setup");
    h
}

/// Calls a module-level function with one or two small ints.
fn call_fn(py: &Attached<'_>, name: &str, args: &[i64]) -> Result<i64> {
    let f = py
        .main_dict()?
        .get_item(py, name)?
        .expect("function defined");
    let args = args
        .iter()
        .map(|&a| py.int(a))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = args.iter().collect();
    f.call(py, &refs)?.extract_i64(py)
}

fn roundtrip(c: &mut Criterion) {
    let h = interpreter("bench-rt");
    let mut g = c.benchmark_group("roundtrip");
    g.bench_function("foreign/noop", |b| b.iter(|| h.call(|_| Ok(1u8)).unwrap()));
    g.bench_function("foreign/py_add", |b| {
        b.iter(|| h.call(|py| call_fn(py, "add", &[1, 2])).unwrap())
    });
    // The same Python call made on the owner thread itself: what re-entry costs.
    g.bench_function("inline/py_add", |b| {
        b.iter_custom(|iters| {
            let h2 = h.clone();
            h.call(move |_| {
                let start = Instant::now();
                for _ in 0..iters {
                    h2.call(|py| call_fn(py, "add", &[1, 2]))?;
                }
                Ok(start.elapsed())
            })
            .unwrap()
        })
    });
    // Direct dispatch: the same call from a spawned thread on a free interpreter, which runs
    // it itself (issue 22's target: at least as fast as `inline/py_add`).
    let d = InterpreterHandle::spawn(InterpreterConfig {
        direct: true,
        ..InterpreterConfig::named("bench-direct")
    })
    .expect("spawn");
    d.call(|py| py.run(SETUP)).expect("setup");
    g.bench_function("direct/py_add", |b| {
        b.iter_custom(|iters| {
            let d = d.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    d.call(|py| call_fn(py, "add", &[1, 2])).unwrap();
                }
                start.elapsed()
            })
            .join()
            .unwrap()
        })
    });
    // The main interpreter: a call on its first pool thread, and through a lane (which adds
    // the lane's limit bookkeeping: a hold taken and released per call).
    let main = InterpreterHandle::main(InterpreterConfig::named("bench-main")).expect("main");
    g.bench_function("main/noop", |b| b.iter(|| main.call(|_| Ok(1u8)).unwrap()));
    let lane = MainLane::new(&InterpreterConfig::named("bench-lane"), 1).expect("lane");
    g.bench_function("main-lane/noop", |b| {
        b.iter(|| lane.call(|_| Ok(1u8)).unwrap())
    });
    lane.end();
    g.finish();
    h.end();
}

/// K threads, each calling its own interpreter; one iteration = one call per thread.
fn throughput(c: &mut Criterion) {
    let interps: Vec<_> = (0..2)
        .map(|i| interpreter(&format!("bench-tp-{i}")))
        .collect();
    for (kind, func, arg) in [("trivial", "add", 1), ("cpu", "burn", 2000)] {
        let mut g = c.benchmark_group(format!("throughput/{kind}"));
        if kind == "cpu" {
            g.sample_size(20);
        }
        for k in [1usize, 2] {
            g.throughput(Throughput::Elements(k as u64));
            g.bench_with_input(BenchmarkId::from_parameter(k), &k, |b, &k| {
                b.iter_custom(|iters| drive(&interps[..k], func, arg, iters))
            });
        }
        g.finish();
    }
    for h in interps {
        h.end();
    }
}

fn drive(interps: &[InterpreterHandle], func: &'static str, arg: i64, iters: u64) -> Duration {
    let barrier = Barrier::new(interps.len() + 1);
    std::thread::scope(|s| {
        for h in interps {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    h.call(|py| call_fn(py, func, &[arg, 2][..if func == "add" { 2 } else { 1 }]))
                        .unwrap();
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Scope end joins every driver thread.
        start
    })
    .elapsed()
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = roundtrip, throughput
}
criterion_main!(benches);
