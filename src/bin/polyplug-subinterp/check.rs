//! `check <plugin-dir>`: load each bundle on its own and report what happened.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::PythonLoader;

struct Row {
    bundle: String,
    ok: bool,
    contracts: String,
    functions: String,
    mode: String,
    load_ms: f64,
    rss_mib: f64,
    detail: String,
}

/// Bundle dirs under `dir`, dependencies first (a bundle declaring a dependency on a
/// contract loads after bundles that do not; enough for the fixtures).
fn bundle_dirs(dir: &Path) -> Vec<(PathBuf, polyplug::loader::ManifestData)> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.toml").is_file())
        .filter_map(|p| polyplug::loader::parse_manifest(&p).ok().map(|m| (p, m)))
        .collect();
    found.sort_by_key(|(p, m)| (!m.dependencies.is_empty(), p.clone()));
    found
}

pub fn run(dir: &Path) -> Result<bool, String> {
    let loader = PythonLoader::default();
    let rt = RuntimeBuilder::new()
        .loader(loader.clone())
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    let mut rows = Vec::new();
    let bundles = bundle_dirs(dir);
    if bundles.is_empty() {
        return Err(format!(
            "{}: no bundle directories (with manifest.toml) found",
            dir.display()
        ));
    }
    for (path, manifest) in bundles {
        let before = crate::rss_bytes().unwrap_or(0);
        let start = Instant::now();
        let result = rt.load_bundle(&path);
        let load_ms = start.elapsed().as_secs_f64() * 1e3;
        let rss_mib =
            crate::rss_bytes().unwrap_or(0).saturating_sub(before) as f64 / (1 << 20) as f64;
        let row = match result {
            Ok(()) => {
                let info = loader.bundle_info(manifest.id);
                let contracts = info.as_ref().map(|i| &i.contracts[..]).unwrap_or(&[]);
                Row {
                    bundle: manifest.name.clone(),
                    ok: true,
                    contracts: contracts
                        .iter()
                        .map(|c| c.0.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                    functions: contracts
                        .iter()
                        .map(|c| c.1.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    mode: info.map_or("?", |i| i.mode).to_owned(),
                    load_ms,
                    rss_mib,
                    detail: String::new(),
                }
            }
            Err(e) => {
                let mut detail = e.to_string();
                let mut src = e.source();
                while let Some(s) = src {
                    detail.push_str(&format!(": {s}"));
                    src = s.source();
                }
                Row {
                    bundle: manifest.name.clone(),
                    ok: false,
                    contracts: String::new(),
                    functions: String::new(),
                    mode: "-".into(),
                    load_ms,
                    rss_mib,
                    detail,
                }
            }
        };
        rows.push(row);
    }
    println!(
        "{:<16} {:<6} {:<16} {:<10} {:<8} {:>9} {:>9}  error",
        "bundle", "status", "contracts", "functions", "mode", "load ms", "RSS MiB"
    );
    for r in &rows {
        println!(
            "{:<16} {:<6} {:<16} {:<10} {:<8} {:>9.1} {:>9.1}  {}",
            r.bundle,
            if r.ok { "ok" } else { "FAILED" },
            r.contracts,
            r.functions,
            r.mode,
            r.load_ms,
            r.rss_mib,
            r.detail
        );
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!(
        "{} bundles, {} loaded, {} failed",
        rows.len(),
        rows.len() - failed,
        failed
    );
    Ok(failed == 0)
}
