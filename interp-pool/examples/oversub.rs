//! Oversubscription at the interp-pool level: T threads, thread i calling interpreter i % 2
//! (a trivial call or a loop of `n`), posted or direct; aggregate calls/s over at least a
//! second of wall time, and efficiency against min(T, cores) x one thread's rate.
//!
//! `cargo run --release -p interp-pool --example oversub [-- SECONDS]`

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use interp_pool::{InterpreterConfig, InterpreterHandle, Persistent};

const SETUP: &str =
    "def f(a, n):\n    s = 0\n    for i in range(n):\n        s += i\n    return a + s\n";

type Target = (InterpreterHandle, Arc<Persistent>);

fn interpreters(direct: bool) -> Vec<Target> {
    (0..2)
        .map(|i| {
            let h = InterpreterHandle::spawn(InterpreterConfig {
                direct,
                ..InterpreterConfig::named(format!("oversub-{i}"))
            })
            .expect("spawn");
            let f = h
                .call(|py| {
                    py.run(SETUP)?;
                    Ok(Persistent::new(py, py.eval("f")?))
                })
                .expect("setup");
            (h, Arc::new(f))
        })
        .collect()
}

/// Calls per second from `threads` threads, for `secs`.
fn rate(hs: &[Target], threads: usize, n: i64, secs: f64) -> f64 {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (h, f) = hs[t % hs.len()].clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let t0 = Instant::now();
                let mut calls = 0u64;
                while t0.elapsed() < Duration::from_secs_f64(secs) {
                    for _ in 0..16 {
                        h.call(|py| {
                            let f = f.bind(py)?;
                            f.call(py, &[&py.int(1)?, &py.int(n)?])?.extract_i64(py)
                        })
                        .expect("call");
                    }
                    calls += 16;
                }
                (calls, t0.elapsed().as_secs_f64())
            })
        })
        .collect();
    start.wait();
    workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .map(|(c, s)| c as f64 / s)
        .sum()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for direct in [false, true] {
        let hs = interpreters(direct);
        for n in [0i64, 30, 400] {
            let one = rate(&hs, 1, n, secs);
            let mut line = format!(
                "{:6} n={n:3}: 1 thread {:8.0}/s ({:6.2} us)",
                if direct { "direct" } else { "post" },
                one,
                1e6 / one
            );
            for t in [2usize, 4, 8] {
                let r = rate(&hs, t, n, secs);
                line += &format!("  T={t}: {:.2}", r / (t.min(cores) as f64 * one));
            }
            println!("{line}");
        }
        for (h, f) in hs {
            let f = Arc::try_unwrap(f).expect("threads joined");
            h.call(move |_| {
                drop(f);
                Ok(())
            })
            .expect("release");
            h.end();
        }
    }
}
