//! Compile-fail cases (`tests/ui/*.rs`, expected errors in the `.stderr` beside each):
//! `Attached` and `PyObj` cannot leave their thread or their job, nor can the `PyObj` that
//! `Persistent::bind` returns. (`Persistent` itself is `Send + Sync`: see `basics`.)
//!
//! Only the public API is used, so when compiler messages change, regenerate with
//! `TRYBUILD=overwrite cargo test -p interp-pool --test compile_fail` and review the diff.

//!
//! What they check is Rust's type system, the same whichever CPython the crate links, so
//! `tools/test`'s second and third legs (other Pythons) set `INTERP_POOL_UI_DONE` to skip
//! them: each leg would otherwise compile the crate once more for trybuild.

#[test]
fn borrowed_python_objects_cannot_escape() {
    if std::env::var_os("INTERP_POOL_UI_DONE").is_some() {
        return;
    }
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
