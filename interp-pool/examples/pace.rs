//! The adaptive caller spin at work: how many of 100 calls of a ~200 µs CPU-bound job
//! park their caller after 20 calls of warm-up, on one interpreter and on a group of one,
//! five rounds each. With the default `WaitPolicy` (cap 500 µs) and a quiet machine, few
//! or none do; a descheduled owner or more runnable threads than cores make a round park.
//!
//! `cargo run --release -p interp-pool --example pace [-- ROUNDS]`

use std::time::{Duration, Instant};

use interp_pool::{InterpreterConfig, InterpreterGroup, InterpreterHandle};

/// Holds the owner for `d` without sleeping (a CPU-bound call, like Python code).
fn busy(d: Duration) -> interp_pool::Result<()> {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
    Ok(())
}

/// Parks among `n` calls after 20 of warm-up, per round.
fn rounds(rounds: usize, n: u64, mut call: impl FnMut(), parks: impl Fn() -> u64) -> Vec<u64> {
    (0..rounds)
        .map(|_| {
            for _ in 0..20 {
                call();
            }
            let before = parks();
            for _ in 0..n {
                call();
            }
            parks() - before
        })
        .collect()
}

fn main() {
    let n_rounds = std::env::args()
        .nth(1)
        .map_or(5, |s| s.parse().expect("ROUNDS: a number"));
    let job = || busy(Duration::from_micros(200));
    let n = 100;

    let h = InterpreterHandle::spawn(InterpreterConfig::named("pace-200us")).expect("spawn");
    let parks = rounds(
        n_rounds,
        n,
        || h.call(|_| job()).unwrap(),
        || h.caller_parks(),
    );
    println!("interpreter: parks per {n} calls by round: {parks:?}");
    h.end();

    let g = InterpreterGroup::new(&InterpreterConfig::named("pace-group"));
    g.add(InterpreterHandle::spawn(InterpreterConfig::named("pace-group-1")).expect("spawn"))
        .unwrap();
    let parks = rounds(
        n_rounds,
        n,
        || g.call(|_| job()).unwrap(),
        || g.caller_parks(),
    );
    println!("group of one: parks per {n} calls by round: {parks:?}");
    g.end();
}
