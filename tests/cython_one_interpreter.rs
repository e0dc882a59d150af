//! A Cython module binds itself to the first interpreter that imports it ("Interpreter
//! change detected - this module can only be loaded into one interpreter per process").
//! Once a bundle pinned to shared_gil has PyYAML's `yaml._yaml`, a second bundle using it
//! cannot have it anywhere: its load fails with an error that names the module and says
//! why, and the first bundle keeps working; a bundle for which it is optional loads in
//! `main` on PyYAML's pure-Python code, reported as a fallback. Own binary: the binding
//! lasts for the process.

use std::path::{Path, PathBuf};

use polyplug::error::LoaderError;
use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};

#[path = "shared/bundle.rs"]
mod bundle;
use bundle::write_bundle_in;

/// A bundle `name` that needs libyaml (`yaml.CSafeLoader`), with the PyYAML fixture's
/// site-packages.
fn yaml_bundle(root: &Path, name: &str) -> PathBuf {
    let src = format!(
        "import yaml\nLoader = yaml.CSafeLoader\nclass Ok:\n    code = 0\nclass Impl:\n    def __init__(self, host):\n        pass\ndef f(*a):\n    pass\ndef polyplug_init(h, c):\n    return ([{{'contract': '{name}@1', 'factory': Impl, 'functions': [f]}}], Ok())\n"
    );
    let dir = write_bundle_in(root, name, &src, &[]);
    let site =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ext-bundles/py_yaml/site-packages");
    assert!(
        site.join("yaml").is_dir(),
        "PyYAML missing: run tools/provision-fixtures (tools/test does)"
    );
    std::os::unix::fs::symlink(site, dir.join("site-packages")).unwrap();
    dir
}

#[test]
fn a_second_interpreter_cannot_have_a_cython_module_and_the_error_says_why() {
    let root =
        std::env::temp_dir().join(format!("polyplug-subinterp-cython-{}", std::process::id()));
    let loader = PythonLoader::new(PythonConfig {
        bundle_modes: [("yaml_first".to_owned(), InterpreterMode::SharedGil)].into(),
        ..PythonConfig::default()
    });
    let rt = RuntimeBuilder::new()
        .loader(loader.clone())
        .build()
        .unwrap();
    let first = yaml_bundle(&root, "yaml_first");
    rt.load_bundle(&first).unwrap();
    let id = polyplug_utils::BundleId::new("yaml_first").id();
    assert_eq!(loader.bundle_info(id).unwrap().mode, "shared_gil");

    let second = yaml_bundle(&root, "yaml_second");
    let err = rt.load_bundle(&second).unwrap_err();
    let text = format!("{err:?}");
    match err {
        polyplug::error::RuntimeError::Loader(LoaderError::InitFailed { bundle, error }) => {
            assert_eq!(bundle, "yaml_second");
            assert!(error.contains("yaml._yaml"), "{error}");
            assert!(error.contains("refuses main interpreters"), "{error}");
            assert!(error.contains("one interpreter per process"), "{error}");
        }
        _ => panic!("{text}"),
    }
    assert!(
        loader.bundle_info(id).is_some(),
        "the first bundle is still loaded"
    );

    // A bundle for which libyaml is optional: own_gil refuses it (caught), main refuses it
    // too (another interpreter has it): it loads in main, on PyYAML's pure-Python code,
    // and says so.
    let optional = write_bundle_in(
        &root,
        "yaml_optional",
        "import yaml\nclass Ok:\n    code = 0\nclass Impl:\n    def __init__(self, host):\n        pass\ndef f(*a):\n    pass\ndef polyplug_init(h, c):\n    assert yaml.safe_load('a: 1') == {'a': 1}\n    return ([{'contract': 'yaml_optional@1', 'factory': Impl, 'functions': [f]}], Ok())\n",
        &[],
    );
    std::os::unix::fs::symlink(first.join("site-packages"), optional.join("site-packages"))
        .unwrap();
    rt.load_bundle(&optional).unwrap();
    let info = loader
        .bundle_info(polyplug_utils::BundleId::new("yaml_optional").id())
        .unwrap();
    assert_eq!(info.mode, "main");
    assert_eq!(info.reason.fallback, ["yaml._yaml"], "{}", info.reason);
    let _ = std::fs::remove_dir_all(&root);
}
