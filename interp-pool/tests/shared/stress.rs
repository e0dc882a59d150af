//! The one `STRESS` reader of every test suite in the workspace: interp-pool's tests
//! (`tests/all/util.rs`) and the loader's (`tests/all/support.rs`) include this file.

/// Multiplies loop counts by `$STRESS` (default 1); `STRESS=10 cargo test` for longer runs.
pub fn stress(n: usize) -> usize {
    let k = std::env::var("STRESS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    n * k
}
