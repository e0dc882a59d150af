//! What host-thread states cost (direct dispatch, R13): 64 threads each making direct calls
//! into 8 interpreters (512 states), RSS before and after, and after the threads exit and
//! the owners delete their states.
//!
//! `cargo run --release -p interp-pool --example host_states [-- WAVES]`

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
    // `HOST_STATES_MALLOC=1`: the MEM/OBJ domains on malloc, to tell the states' own cost
    // from the allocator's per-thread pages.
    if std::env::var_os("HOST_STATES_MALLOC").is_some() {
        interp_pool::set_allocator(interp_pool::Allocator::Malloc);
    }
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
    // This thread made direct calls too (the set-up): its states stay.
    let own: usize = hs.iter().map(|h| h.host_states()).sum();
    // `-- WAVES`: new threads replace the exited ones WAVES times (a pool whose idle threads
    // exit, like tokio's blocking pool): RSS should level off, not grow per wave.
    let waves: usize = std::env::args()
        .nth(1)
        .map_or(1, |w| w.parse().expect("WAVES"));
    let mut first = None;
    for wave in 0..waves {
        let ready = Arc::new(Barrier::new(THREADS + 1));
        let made = Arc::new(Barrier::new(THREADS + 1));
        let exit = Arc::new(Barrier::new(THREADS + 1));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (hs, made, exit) = (hs.clone(), Arc::clone(&made), Arc::clone(&exit));
                let ready = Arc::clone(&ready);
                std::thread::spawn(move || {
                    ready.wait();
                    // One thread at a time, so every interpreter is free and each call runs
                    // here (this thread then keeps a state for each).
                    {
                        let _one = ONE.lock().unwrap();
                        for h in &hs {
                            // A Python call: the state's frame stack is allocated too.
                            let here = h
                                .call(|py| {
                                    py.eval("len(f(1))")?;
                                    Ok(interp_pool::running_direct())
                                })
                                .unwrap();
                            assert!(here);
                        }
                    }
                    made.wait();
                    exit.wait();
                })
            })
            .collect();
        // The threads exist (their stacks are counted) and made no call yet.
        ready.wait();
        let before = rss_kib();
        let first = *first.get_or_insert(before);
        made.wait();
        let states: usize = hs.iter().map(|h| h.host_states()).sum::<usize>() - own;
        let with = rss_kib();
        exit.wait();
        for t in threads {
            t.join().unwrap();
        }
        // Given-up states are deleted by the next call that holds the interpreter.
        for h in &hs {
            h.call(|py| py.eval("1").map(drop)).unwrap();
        }
        assert_eq!(hs.iter().map(|h| h.host_states()).sum::<usize>(), own);
        let after = rss_kib();
        println!(
            "wave {wave}: {states} host-thread states: RSS +{} KiB ({:.1} KiB each); after the threads exited: +{} KiB (+{} KiB since wave 0 began)",
            with.saturating_sub(before),
            (with.saturating_sub(before)) as f64 / states.max(1) as f64,
            after.saturating_sub(before),
            after.saturating_sub(first)
        );
    }
    for h in hs {
        h.end();
    }
}
