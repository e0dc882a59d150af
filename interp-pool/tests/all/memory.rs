//! The accounting allocator: per-interpreter counts and limits (`MemoryAccount`).

use interp_pool::{Error, InterpreterConfig, InterpreterHandle, MemoryAccount};

const MIB: u64 = 1 << 20;

fn within_10pct(got: u64, want: u64) -> bool {
    got.abs_diff(want) <= want / 10
}

#[test]
fn a_kept_bytearray_is_counted_and_freed() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("mem-count")).unwrap();
    assert!(
        interp_pool::memory_accounting(),
        "this crate initialised CPython with malloc"
    );
    let acct = h.memory_account();
    let base = acct.usage().live;
    assert!(
        base > 0,
        "creating the interpreter allocated: {:?}",
        acct.usage()
    );
    h.call(|py| py.run("keep = bytearray(50 << 20)")).unwrap();
    let kept = acct.usage();
    assert!(
        within_10pct(kept.live - base, 50 * MIB),
        "{kept:?}, base {base}"
    );
    h.call(|py| py.run("del keep")).unwrap();
    let freed = acct.usage();
    assert!(freed.live < base + 5 * MIB, "{freed:?}, base {base}");
    assert!(freed.peak >= kept.live);
    h.end();
}

#[test]
fn an_allocation_bomb_gets_memory_error_under_a_limit_and_the_interpreter_answers() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("mem-bomb")).unwrap();
    let acct = h.memory_account();
    let limit = acct.usage().live + 64 * MIB;
    acct.set_limit(Some(limit as usize));
    let e = h
        .call(|py| py.run("hog = []\nwhile True:\n    hog.append(bytearray(1 << 20))"))
        .unwrap_err();
    let Error::Python(exc) = e else {
        panic!("{e:?}")
    };
    assert_eq!(exc.type_name, "MemoryError", "{exc:?}");
    let u = acct.usage();
    assert!(
        u.denied >= 1 && u.live <= limit + acct.reserve() as u64,
        "{u:?}"
    );
    // It still holds ~64 MiB in `hog` and still answers.
    let n = h.call(|py| py.eval("len(hog)")?.extract_i64(py)).unwrap();
    assert!((50..=64).contains(&n), "{n}");
    h.call(|py| py.run("del hog")).unwrap();
    assert_eq!(h.call(|py| py.eval("6 * 7")?.extract_i64(py)).unwrap(), 42);
    h.end();
}

#[test]
fn an_entered_account_takes_the_allocations_of_its_scope() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("mem-scope")).unwrap();
    let other = MemoryAccount::new();
    let own = h.memory_account().usage().live;
    let o2 = std::sync::Arc::clone(&other);
    h.call(move |py| {
        let _in = o2.enter();
        py.run("kept_elsewhere = bytearray(8 << 20)")
    })
    .unwrap();
    assert!(
        within_10pct(other.usage().live, 8 * MIB),
        "{:?}",
        other.usage()
    );
    assert!(h.memory_account().usage().live < own + MIB);
    h.end();
}
