//! 200 load/unload cycles of a real bundle keep resident memory bounded. Its own binary:
//! other tests' allocations would blur the figure.
//!
//! Measured on CPython 3.13.0 (this VM): 79 MiB. The floor is CPython's: interp-pool alone
//! running just this bundle's imports in 200 fresh interpreters grows 74 MiB (`pass`: 39
//! MiB), because `Py_EndInterpreter` does not free everything those imports allocate. With
//! CPython's default pymalloc it was 645 MiB (kept obmalloc arenas), which is why
//! interp-pool selects the `malloc` allocator. The bound leaves room for noise while still
//! catching a return to pymalloc or a per-load leak of our own.

use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::{PythonConfig, PythonLoader};

fn rss_mib() -> f64 {
    polyplug_subinterp::rss_bytes().expect("VmRSS in /proc/self/status") as f64 / f64::from(1 << 20)
}

#[test]
fn two_hundred_load_unload_cycles_keep_rss_bounded() {
    let calc =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bundles/py_calculator");
    let loader = PythonLoader::new(PythonConfig {
        prewarm: false,
        ..PythonConfig::default()
    });
    let rt = RuntimeBuilder::new().loader(loader).build().unwrap();
    let id = polyplug_utils::BundleId::new("py_calculator");
    let cycle = || {
        rt.load_bundle(&calc).unwrap();
        rt.unload_bundle(id).unwrap();
    };
    for _ in 0..10 {
        cycle(); // warm-up: CPython's own one-time allocations
    }
    let before = rss_mib();
    for _ in 0..200 {
        cycle();
    }
    let grown = rss_mib() - before;
    eprintln!("RSS growth over 200 load/unload cycles: {grown:.1} MiB");
    // CPython 3.12.1 keeps more per ended (shared-GIL, there) interpreter: 125 MiB measured.
    let bound = if interp_pool::python_version() >= (3, 13) {
        128.0
    } else {
        256.0
    };
    assert!(
        grown < bound,
        "RSS grew {grown:.1} MiB over 200 cycles (bound {bound})"
    );
}
