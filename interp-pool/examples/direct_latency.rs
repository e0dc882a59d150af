//! Issue 22's latency target, sustained: a trivial Python call (`add(1, 2)`, looked up and
//! called as `benches/handoff.rs` does) made on the owner thread itself (inline), from a
//! spawned thread on a free direct interpreter (direct), and from a spawned thread to a
//! posting interpreter (post). The kinds take turns in 50 ms slices, so a slow phase of
//! the machine hits them alike; a round sums at least `SECONDS` of calls per kind and
//! prints ns per call; then the median over `ROUNDS` rounds.
//!
//! `cargo run --release -p interp-pool --example direct_latency [-- SECONDS ROUNDS [KIND]]`;
//! `-- calls N [KIND]`: N calls of each kind (or of KIND only) and no clock (for
//! `valgrind --tool=callgrind`).

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use interp_pool::{Attached, InterpreterConfig, InterpreterHandle, Result};

const SLICE: Duration = Duration::from_millis(50);

fn interpreter(name: &str, direct: bool) -> InterpreterHandle {
    let h = InterpreterHandle::spawn(InterpreterConfig {
        direct,
        ..InterpreterConfig::named(name)
    })
    .expect("spawn");
    h.call(|py| py.run("def add(a, b):\n    return a + b\n"))
        .expect("setup");
    h
}

fn add(py: &Attached<'_>) -> Result<i64> {
    let f = py.main_dict()?.get_item(py, "add")?.expect("add defined");
    let (a, b) = (py.int(1)?, py.int(2)?);
    f.call(py, &[&a, &b])?.extract_i64(py)
}

#[derive(Clone, Copy)]
enum Limit {
    Calls(u64),
    Time(Duration),
}

/// Runs `call` in batches of 1000 until the limit; (calls, elapsed).
fn run(limit: Limit, mut call: impl FnMut()) -> (u64, Duration) {
    let start = Instant::now();
    let mut calls = 0;
    loop {
        match limit {
            Limit::Calls(n) if calls >= n => break,
            Limit::Time(d) if start.elapsed() >= d => break,
            _ => {}
        }
        for _ in 0..1000 {
            call();
        }
        calls += 1000;
    }
    (calls, start.elapsed())
}

/// One way of calling, run for a limit at a time: (calls, elapsed).
type Kind<'a> = Box<dyn FnMut(Limit) -> (u64, Duration) + 'a>;

/// Calls made inside one of `h`'s own jobs: inline on its owner thread.
fn inline(h: &InterpreterHandle) -> Kind<'_> {
    Box::new(move |limit| {
        let h2 = h.clone();
        h.call(move |_| Ok(run(limit, || assert_eq!(h2.call(add).unwrap(), 3))))
            .unwrap()
    })
}

/// Calls from one spawned thread, kept across slices (its host-thread state too).
fn spawned(h: &InterpreterHandle) -> Kind<'static> {
    let (ask, asked) = mpsc::channel::<Limit>();
    let (tell, told) = mpsc::channel();
    let h = h.clone();
    thread::spawn(move || {
        // Warm-up: a direct interpreter's host-thread state is made on the first call.
        h.call(add).unwrap();
        for limit in asked {
            let r = run(limit, || assert_eq!(h.call(add).unwrap(), 3));
            if tell.send(r).is_err() {
                break;
            }
        }
    });
    Box::new(move |limit| {
        ask.send(limit).expect("caller thread");
        told.recv().expect("caller thread")
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counting = args.first().map(String::as_str) == Some("calls");
    let only = args.get(2).cloned();
    let (seconds, rounds) = match counting {
        true => (0.0, 1),
        false => (
            args.first().map_or(1.0, |s| s.parse().expect("SECONDS")),
            args.get(1).map_or(3, |r| r.parse().expect("ROUNDS")),
        ),
    };
    let direct = interpreter("latency-direct", true);
    let posted = interpreter("latency-post", false);
    let mut kinds: Vec<(&str, Kind<'_>)> = vec![
        ("inline", inline(&direct)),
        ("direct", spawned(&direct)),
        ("post", spawned(&posted)),
    ];
    kinds.retain(|(name, _)| only.as_deref().is_none_or(|o| o == *name));
    if counting {
        let n = args.get(1).and_then(|n| n.parse().ok()).expect("calls N");
        for (name, kind) in &mut kinds {
            let (calls, _) = kind(Limit::Calls(n));
            println!("{name}: {calls} calls");
        }
        return;
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..rounds {
        let mut sums = vec![(0u64, Duration::ZERO); kinds.len()];
        while sums.iter().any(|s| s.1.as_secs_f64() < seconds) {
            for (i, (_, kind)) in kinds.iter_mut().enumerate() {
                let (calls, took) = kind(Limit::Time(SLICE));
                sums[i].0 += calls;
                sums[i].1 += took;
            }
        }
        for (i, (name, _)) in kinds.iter().enumerate() {
            let (calls, took) = sums[i];
            let per = took.as_nanos() as f64 / calls as f64;
            println!("round {round} {name:>6}: {per:7.1} ns/call ({calls} calls in {took:.2?})");
            ns[i].push(per);
        }
    }
    for (i, (name, _)) in kinds.iter().enumerate() {
        let mut v = ns[i].clone();
        v.sort_by(f64::total_cmp);
        println!("median {name:>6}: {:7.1} ns/call", v[v.len() / 2]);
    }
    drop(kinds);
    direct.end();
    posted.end();
}
