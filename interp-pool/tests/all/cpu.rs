//! Owner-thread CPU clocks (`InterpreterHandle::cpu_time`) and raised exceptions kept
//! undescribed (`PyObj::call_or_raised`, `Raised`).

use std::time::{Duration, Instant};

use interp_pool::{thread_cpu_time, Detail, Error, InterpreterConfig, InterpreterHandle};

#[test]
fn the_owner_clock_counts_a_busy_job_and_not_a_sleeping_one() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("cpu-busy")).unwrap();
    let before = h.cpu_time().expect("owner clock readable");
    // The job's own view of its thread's CPU time, to compare with the remote reading.
    let (wall, own) = h
        .call(|py| {
            let t = Instant::now();
            let c0 = thread_cpu_time().unwrap();
            py.run(
                "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.2: pass",
            )?;
            Ok((t.elapsed(), thread_cpu_time().unwrap() - c0))
        })
        .unwrap();
    let after = h.cpu_time().unwrap();
    let seen = after.total - before.total;
    assert!(
        seen >= own,
        "remote {seen:?} < the job's own {own:?} (wall {wall:?})"
    );
    assert!(
        seen <= own + Duration::from_millis(50),
        "remote {seen:?}, own {own:?}"
    );
    h.call(|py| py.run("import time\ntime.sleep(0.2)")).unwrap();
    let slept = h.cpu_time().unwrap();
    assert!(
        slept.total - after.total < Duration::from_millis(50),
        "{slept:?} vs {after:?}"
    );
    h.end();
    let ended = h.cpu_time().expect("last reading kept after the end");
    assert!(ended.total >= slept.total);
    assert_eq!(h.cpu_time(), Some(ended), "no longer moves");
}

#[test]
fn a_raised_exception_is_classified_and_described_on_demand() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("raised")).unwrap();
    let (site, brief, full) = h
        .call(|py| {
            py.run("def boom(x):\n    raise ValueError(f'bad {x}')\n")?;
            let boom = py.eval("boom")?;
            let arg = py.int(7)?;
            let site = boom.call_or_raised(py, &[&arg]).unwrap_err().site(py);
            let brief = boom
                .call_or_raised(py, &[&arg])
                .unwrap_err()
                .into_error(py, Detail::Brief);
            let full = boom
                .call_or_raised(py, &[&arg])
                .unwrap_err()
                .into_error(py, Detail::Traceback);
            let ok = py
                .eval("abs")?
                .call_or_raised(py, &[&arg])
                .ok()
                .map(|v| v.extract_i64(py));
            assert_eq!(ok.unwrap().unwrap(), 7);
            Ok((site, brief, full))
        })
        .unwrap();
    assert_eq!(site.type_name, "ValueError");
    assert_eq!(site.file, "<string>");
    assert_eq!(site.line, 2);
    let Error::Python(brief) = brief else {
        panic!("{brief:?}")
    };
    assert_eq!(brief.traceback, "ValueError: bad 7\n");
    assert_eq!(brief.message, "bad 7");
    let Error::Python(full) = full else {
        panic!("{full:?}")
    };
    assert!(
        full.traceback
            .starts_with("Traceback (most recent call last)"),
        "{}",
        full.traceback
    );
    h.end();
}
