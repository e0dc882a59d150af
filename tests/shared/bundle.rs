//! The one writer of hand-made bundle directories for the loader's test binaries
//! (`tests/all/support.rs`, `tests/no_leftovers.rs`, `tests/cli.rs` include this file).

use std::path::{Path, PathBuf};

/// Writes bundle `name` as the directory `root/name`: a `manifest.toml` (name, its
/// `BundleId`, loader `python`, entry file `name.py`), the entry file holding `source`,
/// and each `(relative path, text)` of `extra`. Returns the bundle directory.
pub fn write_bundle_in(root: &Path, name: &str, source: &str, extra: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let id = polyplug_utils::BundleId::new(name).id();
    std::fs::write(
        dir.join("manifest.toml"),
        format!("name = \"{name}\"\nid = {id}\nloader = \"python\"\nfile = \"{name}.py\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{name}.py")), source).unwrap();
    for (file, text) in extra {
        let p = dir.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}
