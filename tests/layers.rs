//! The layering ARCHITECTURE.md promises, checked on the sources: the loader (`src/`)
//! makes no raw CPython call (it reaches Python only through interp-pool's safe types),
//! and interp-pool does not hand its raw bindings out.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn the_loader_makes_no_raw_cpython_call() {
    let forbidden = ["sys::", "pyo3_ffi", "pyo3::", "Py_", "PyObject", "PyEval_"];
    let mut found = Vec::new();
    for (path, text) in sources("src") {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if let Some(word) = forbidden.iter().find(|w| code.contains(*w)) {
                found.push(format!(
                    "{}:{}: {word}: {}",
                    path.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "raw CPython in src/:\n{}",
        found.join("\n")
    );
}

#[test]
fn interp_pool_does_not_re_export_its_bindings() {
    let lib = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("interp-pool/src/lib.rs"),
    )
    .unwrap();
    for line in lib
        .lines()
        .filter(|l| l.trim_start().starts_with("pub use"))
    {
        assert!(
            !line.contains("sys") && !line.contains("ffi") && !line.contains("pyo3"),
            "interp-pool re-exports raw bindings: {line}"
        );
    }
}
