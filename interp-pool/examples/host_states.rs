//! What host-thread states cost (direct dispatch, R13): 64 threads each making direct calls
//! into 8 interpreters (512 states), RSS before and after, and after the threads exit and
//! the owners delete their states.
//!
//! `cargo run --release -p interp-pool --example host_states`

use std::sync::{Arc, Barrier};

use interp_pool::{InterpreterConfig, InterpreterHandle};

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn main() {
    const THREADS: usize = 64;
    let hs: Vec<_> = (0..8)
        .map(|i| {
            InterpreterHandle::spawn(InterpreterConfig {
                direct: true,
                ..InterpreterConfig::named(format!("states-{i}"))
            })
            .expect("spawn")
        })
        .collect();
    for h in &hs {
        h.call(|py| py.run("def f(x):\n    return [x] * 10\n"))
            .unwrap();
    }
    let before = rss_kib();
    let made = Arc::new(Barrier::new(THREADS + 1));
    let exit = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (hs, made, exit) = (hs.clone(), Arc::clone(&made), Arc::clone(&exit));
            std::thread::spawn(move || {
                // One thread at a time, so every interpreter is free and each call runs
                // here (this thread then keeps a state for each).
                {
                    let _one = ONE.lock().unwrap();
                    for h in &hs {
                        assert!(h.call(|_| Ok(interp_pool::running_direct())).unwrap());
                    }
                }
                made.wait();
                exit.wait();
            })
        })
        .collect();
    made.wait();
    let states: usize = hs.iter().map(|h| h.host_states()).sum();
    let with = rss_kib();
    exit.wait();
    for t in threads {
        t.join().unwrap();
    }
    // The owners delete given-up states in their loops.
    while hs.iter().map(|h| h.host_states()).sum::<usize>() > 0 {
        std::thread::yield_now();
    }
    let after = rss_kib();
    println!(
        "{states} host-thread states: RSS +{} KiB ({:.1} KiB each); after the threads exited: +{} KiB",
        with.saturating_sub(before),
        (with.saturating_sub(before)) as f64 / states.max(1) as f64,
        after.saturating_sub(before)
    );
    for h in hs {
        h.end();
    }
}
