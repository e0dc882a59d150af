//! Compile-fail cases (`tests/ui/*.rs`, expected errors in the `.stderr` beside each):
//! `Attached` and `PyObj` cannot leave their thread or their job, nor can the `PyObj` that
//! `Persistent::bind` returns. (`Persistent` itself is `Send + Sync`: see `basics`.)
//!
//! Only the public API is used, so when compiler messages change, regenerate with
//! `TRYBUILD=overwrite cargo test -p interp-pool --test compile_fail` and review the diff.

#[test]
fn borrowed_python_objects_cannot_escape() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
