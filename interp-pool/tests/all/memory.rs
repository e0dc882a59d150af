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

/// An interpreter that may start threads, with `keep = bytearray(16 MiB)` of its own.
fn with_threads(name: &str) -> (InterpreterHandle, u64) {
    let h = InterpreterHandle::spawn(InterpreterConfig {
        allow_threads: true,
        ..InterpreterConfig::named(name)
    })
    .unwrap();
    h.call(|py| py.run("import threading\nkeep = bytearray(16 << 20)"))
        .unwrap();
    let live = h.memory_account().usage().live;
    (h, live)
}

#[test]
fn a_block_freed_on_a_plugin_thread_is_credited_to_the_account_that_allocated_it() {
    let (h, live) = with_threads("mem-thread-free");
    // `box.pop` returns the 8 MiB bytearray to the thread, which drops it there: a thread
    // with no account current frees what the owner's account was charged for.
    h.call(|py| {
        py.run(
            "box = [bytearray(8 << 20)]\n\
             t = threading.Thread(target=box.pop)\n\
             t.start()\n\
             t.join()\n\
             assert not box",
        )
    })
    .unwrap();
    let after = h.memory_account().usage().live;
    assert!(
        after < live + 2 * MIB,
        "8 MiB freed on another thread stayed charged: {after} after, {live} before"
    );
    h.end();
}

#[test]
fn a_block_a_plugin_thread_allocated_is_not_credited_when_the_owner_frees_it() {
    let (h, live) = with_threads("mem-thread-alloc");
    // The thread (no account) allocates 8 MiB; the owner frees it: the owner's account,
    // which was never charged for it, must not shrink by it.
    h.call(|py| {
        py.run(
            "box = []\n\
             t = threading.Thread(target=lambda: box.append(bytearray(8 << 20)))\n\
             t.start()\n\
             t.join()\n\
             del box[0]",
        )
    })
    .unwrap();
    let after = h.memory_account().usage().live;
    assert!(
        after + 2 * MIB > live,
        "freeing a block it never paid for shrank the account: {after} after, {live} before"
    );
    h.end();
}

#[test]
fn a_block_freed_under_another_account_is_credited_to_its_own() {
    // Main mode's case: bundle B's call frees what bundle A allocated.
    let (h, live) = with_threads("mem-cross-account");
    let other = MemoryAccount::new();
    let o2 = std::sync::Arc::clone(&other);
    h.call(move |py| {
        let _in = o2.enter();
        py.run("del keep")
    })
    .unwrap();
    let own = h.memory_account().usage().live;
    assert!(
        own + 14 * MIB < live,
        "16 MiB freed under another account stayed charged to its own: {own} after, {live} before"
    );
    assert!(other.usage().live < MIB, "{:?}", other.usage());
    h.end();
}

#[test]
fn a_block_outliving_its_account_is_credited_to_nothing_not_to_the_next_account() {
    // A dropped account's slot is reused under a new generation (a new token): the old
    // account's blocks, freed later, must not shrink whichever account has the slot now.
    let h = InterpreterHandle::spawn(InterpreterConfig::named("mem-outlive")).unwrap();
    let gone = MemoryAccount::new();
    h.call(move |py| {
        let _in = gone.enter();
        py.run("orphan = bytearray(8 << 20)")
    })
    .unwrap(); // `gone` dropped with the closure, its slot freed
    let next = MemoryAccount::new();
    let n2 = std::sync::Arc::clone(&next);
    h.call(move |py| {
        let _in = n2.enter();
        py.run("mine = bytearray(4 << 20)\ndel orphan")
    })
    .unwrap();
    assert!(
        within_10pct(next.usage().live, 4 * MIB),
        "an orphaned 8 MiB block was credited to a later account: {:?}",
        next.usage()
    );
    h.end();
}

#[test]
fn a_thread_switching_accounts_per_call_charges_each_its_own() {
    // As a host thread running several interpreters' calls one after another does: the
    // thread's pending bytes go to the account they belong to at each switch.
    let h = InterpreterHandle::spawn(InterpreterConfig::named("mem-switch")).unwrap();
    let (a, b) = (MemoryAccount::new(), MemoryAccount::new());
    for round in 0..3 {
        for (acct, name) in [(&a, "a"), (&b, "b")] {
            let acct = std::sync::Arc::clone(acct);
            let code = format!("{name}{round} = [bytes(100) for _ in range(10_000)]");
            h.call(move |py| {
                let _in = acct.enter();
                py.run(&code)
            })
            .unwrap();
        }
    }
    // 3 × 10 000 blocks of ~133 + 16 bytes each, plus the lists: ~4.5–5 MiB apiece.
    for acct in [&a, &b] {
        let live = acct.usage().live;
        assert!((4 * MIB..6 * MIB).contains(&live), "{:?}", acct.usage());
    }
    h.call(|py| py.run("del a0, a1, a2")).unwrap();
    assert!(a.usage().live < MIB / 4, "{:?}", a.usage());
    assert!((4 * MIB..6 * MIB).contains(&b.usage().live));
    h.end();
}
