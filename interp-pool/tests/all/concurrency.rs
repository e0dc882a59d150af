use std::sync::Barrier;

use crate::util::*;

#[test]
fn eight_threads_four_interpreters_every_result_checked() {
    within(LIMIT, "8x4 stress", || {
        let interps: Vec<_> = (0..4).map(|i| spawn(&format!("stress-{i}"))).collect();
        for (i, h) in interps.iter().enumerate() {
            run(h, &format!("K = {i}\ncount = 0\ndef f(t, n):\n    global count\n    count += 1\n    return K * 1_000_000 + t * 10_000 + n\n"));
        }
        let calls = stress(400);
        let barrier = Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8i64 {
                let interps = &interps;
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for n in 0..calls as i64 {
                        let k = ((t + n) % 4) as usize;
                        let got = interps[k]
                            .call(move |py| {
                                let f = py.eval("f")?;
                                f.call(py, &[&py.int(t)?, &py.int(n)?])?.extract_i64(py)
                            })
                            .unwrap();
                        assert_eq!(got, k as i64 * 1_000_000 + t * 10_000 + n);
                    }
                });
            }
        });
        let total: i64 = interps.iter().map(|h| eval_i64(h, "count")).sum();
        assert_eq!(total, 8 * calls as i64);
        for h in interps {
            h.end();
        }
    });
}
