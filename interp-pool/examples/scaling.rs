//! Shows what interp-pool is for: CPU-bound Python in 1 vs 2 own-GIL interpreters driven by
//! 1 vs 2 threads, and the cost of a call from a foreign thread.
//!
//! `cargo run --release -p interp-pool --example scaling`

use std::time::Instant;

use interp_pool::{InterpreterConfig, InterpreterHandle};

const WORK: &str =
    "def burn(n):\n    s = 0\n    for i in range(n):\n        s += (i * i) % 7\n    return s\n";

fn main() -> interp_pool::Result<()> {
    let hs: Vec<_> = (0..2)
        .map(|i| InterpreterHandle::spawn(InterpreterConfig::named(format!("demo-{i}"))))
        .collect::<Result<_, _>>()?;
    for h in &hs {
        h.call(|py| py.run(WORK))?;
    }
    let calls = 200;
    let mut base = 0.0;
    println!("{:<28} {:>12} {:>8}", "setting", "calls/s", "vs 1x1");
    for k in [1usize, 2] {
        let start = Instant::now();
        std::thread::scope(|s| {
            for h in &hs[..k] {
                s.spawn(move || {
                    for _ in 0..calls {
                        h.call(|py| py.eval("burn(20000)")?.extract_i64(py))
                            .unwrap();
                    }
                });
            }
        });
        let rate = (k * calls) as f64 / start.elapsed().as_secs_f64();
        if k == 1 {
            base = rate;
        }
        println!(
            "{:<28} {:>12.0} {:>7.2}x",
            format!("{k} interpreter(s) x {k} thread(s)"),
            rate,
            rate / base
        );
    }
    let n = 100_000;
    let start = Instant::now();
    for _ in 0..n {
        hs[0].call(|_| Ok(()))?;
    }
    println!(
        "foreign-thread round trip (no-op job): {:.0} ns",
        start.elapsed().as_nanos() as f64 / n as f64
    );
    for h in hs {
        h.end();
    }
    interp_pool::shutdown()
}
