//! Nothing outlives what owns it: failed loads, unloads and dropped runtimes end their
//! interpreters. Own binary, because it counts the process's live interpreters.

use std::path::Path;
use std::sync::Arc;

use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::{PythonConfig, PythonLoader};

/// Exact interpreter counts: no pre-warmed spare in this process.
fn loader() -> PythonLoader {
    PythonLoader::new(PythonConfig {
        prewarm: false,
        ..PythonConfig::default()
    })
}

#[path = "shared/bundle.rs"]
mod bundle;
use bundle::write_bundle_in;

const GOOD: &str = "class Ok:\n    code = 0\nclass Impl:\n    def __init__(self, host):\n        pass\ndef f(*a):\n    pass\ndef polyplug_init(h, c):\n    return ([{'contract': 'leftover@1', 'factory': Impl, 'functions': [f]}], Ok())\n";

#[test]
fn failed_loads_unloads_and_dropped_runtimes_end_their_interpreters() {
    let root = std::env::temp_dir().join(format!(
        "polyplug-subinterp-leftovers-{}",
        std::process::id()
    ));
    let rt = RuntimeBuilder::new().loader(loader()).build().unwrap();
    assert_eq!(interp_pool::live_interpreters(), 0);
    // The first load starts the main interpreter's pool (the loader watches main for
    // extension inits that fail there: `refusals::watch_main`), which `live_interpreters`
    // counts once for the rest of the process: the base every count below adds to.
    let good = write_bundle_in(&root, "leftover", GOOD, &[]);
    rt.load_bundle(&good).unwrap();
    rt.unload_bundle(polyplug_utils::BundleId::new("leftover"))
        .unwrap();
    let main = interp_pool::live_interpreters();
    assert!(main <= 1, "only the main interpreter may stay: {main}");

    for (name, src) in [
        ("bad_syntax", "def (:\n"),
        (
            "bad_init",
            "def polyplug_init(h, c):\n    raise ValueError\n",
        ),
    ] {
        assert!(rt
            .load_bundle(&write_bundle_in(&root, name, src, &[]))
            .is_err());
        assert_eq!(
            interp_pool::live_interpreters(),
            main,
            "{name} left an interpreter behind"
        );
    }

    for _ in 0..20 {
        rt.load_bundle(&good).unwrap();
        assert_eq!(interp_pool::live_interpreters(), main + 1);
        rt.unload_bundle(polyplug_utils::BundleId::new("leftover"))
            .unwrap();
        assert_eq!(interp_pool::live_interpreters(), main);
    }

    rt.load_bundle(&good).unwrap();
    assert_eq!(interp_pool::live_interpreters(), main + 1);
    drop(rt);
    assert_eq!(
        interp_pool::live_interpreters(),
        main,
        "dropping the runtime (and its loader) ends its bundles"
    );

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bundles");
    let rt: Arc<_> = RuntimeBuilder::new()
        .loader(loader())
        .plugin_dir(fixtures)
        .build()
        .unwrap();
    assert_eq!(
        interp_pool::live_interpreters(),
        main + 4,
        "one interpreter per fixture bundle"
    );
    drop(rt);
    assert_eq!(interp_pool::live_interpreters(), main);
    let _ = std::fs::remove_dir_all(root);
}
