//! Issue 22's latency target, sustained: a trivial Python call (`add(1, 2)`, looked up and
//! called as `benches/handoff.rs` does) made on the owner thread itself (inline), from a
//! spawned thread on a free direct interpreter (direct), and from a spawned thread to a
//! posting interpreter (post); ns per call over at least `SECONDS` of calls, `ROUNDS`
//! rounds with the three kinds alternating, and the median.
//!
//! `cargo run --release -p interp-pool --example direct_latency [-- SECONDS ROUNDS]`;
//! `-- calls N [KIND]`: N calls of each kind (or of KIND only) and no clock (for
//! `valgrind --tool=callgrind`).

use std::time::{Duration, Instant};

use interp_pool::{Attached, InterpreterConfig, InterpreterHandle, Result};

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

/// Runs `call` in batches until `secs` passed (or exactly `n` times); (calls, elapsed).
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

/// One way of calling: (calls, elapsed) for a limit.
type Kind<'a> = dyn Fn(Limit) -> (u64, Duration) + 'a;

#[derive(Clone, Copy)]
enum Limit {
    Calls(u64),
    Time(Duration),
}

fn inline(h: &InterpreterHandle, limit: Limit) -> (u64, Duration) {
    let h2 = h.clone();
    h.call(move |_| Ok(run(limit, || assert_eq!(h2.call(add).unwrap(), 3))))
        .unwrap()
}

fn spawned(h: &InterpreterHandle, limit: Limit) -> (u64, Duration) {
    let h = h.clone();
    std::thread::spawn(move || {
        // Warm-up: the thread's host-thread state is made on its first direct call.
        h.call(add).unwrap();
        run(limit, || assert_eq!(h.call(add).unwrap(), 3))
    })
    .join()
    .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = (args.first().map(String::as_str) == Some("calls"))
        .then(|| args.get(2))
        .flatten();
    let (limit, rounds) = match args.first().map(String::as_str) {
        Some("calls") => (Limit::Calls(args[1].parse().expect("N")), 1),
        secs => (
            Limit::Time(Duration::from_secs_f64(
                secs.map_or(1.0, |s| s.parse().expect("SECONDS")),
            )),
            args.get(1).map_or(3, |r| r.parse().expect("ROUNDS")),
        ),
    };
    let direct = interpreter("latency-direct", true);
    let posted = interpreter("latency-post", false);
    let kinds: [(&str, &Kind<'_>); 3] = [
        ("inline", &|l| inline(&direct, l)),
        ("direct", &|l| spawned(&direct, l)),
        ("post", &|l| spawned(&posted, l)),
    ];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..rounds {
        for (i, (name, kind)) in kinds.iter().enumerate() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let (calls, took) = kind(limit);
            let per = took.as_nanos() as f64 / calls as f64;
            println!("round {round} {name:>6}: {per:7.1} ns/call ({calls} calls in {took:.2?})");
            ns[i].push(per);
        }
    }
    for (i, (name, _)) in kinds.iter().enumerate() {
        let mut v = ns[i].clone();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        println!("median {name:>6}: {:7.1} ns/call", v[v.len() / 2]);
    }
    direct.end();
    posted.end();
}
