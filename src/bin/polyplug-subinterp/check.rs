//! `check <plugin-dir>`: load each bundle on its own and report what happened.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use polyplug::loader::ManifestData;
use polyplug::runtime::Runtime;
use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::PythonLoader;

/// What loading one bundle did.
struct Row {
    bundle: String,
    /// `Ok((contracts, functions, mode, fast glue))`, or the error with its causes.
    outcome: Result<(String, String, String, String), String>,
    load_ms: f64,
    rss_mib: f64,
}

/// Loads every bundle under `dir` into one runtime and prints a row per bundle.
/// `Ok(false)` when one failed to load; `Err` when there was nothing to check.
pub fn run(dir: &Path, loader: PythonLoader) -> Result<bool, String> {
    let bundles = bundle_dirs(dir);
    if bundles.is_empty() {
        return Err(format!(
            "{}: no bundle directories (with manifest.toml) found",
            dir.display()
        ));
    }
    let rt = RuntimeBuilder::new()
        .loader(loader.clone())
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    let rows: Vec<Row> = bundles
        .iter()
        .map(|(path, manifest)| load_one(&rt, &loader, path, manifest))
        .collect();
    print_rows(&rows);
    Ok(print_summary(&rows))
}

/// Bundle dirs under `dir`, dependencies first (a bundle declaring a dependency on a
/// contract loads after bundles that do not; enough for the fixtures).
fn bundle_dirs(dir: &Path) -> Vec<(PathBuf, ManifestData)> {
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

/// Loads the bundle at `path`, timing it and measuring the process's RSS growth.
fn load_one(rt: &Runtime, loader: &PythonLoader, path: &Path, manifest: &ManifestData) -> Row {
    let before = polyplug_subinterp::rss_bytes().unwrap_or(0);
    let start = Instant::now();
    let result = rt.load_bundle(path);
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let grown = polyplug_subinterp::rss_bytes()
        .unwrap_or(0)
        .saturating_sub(before);
    let outcome = match result {
        Ok(()) => {
            let info = loader.bundle_info(manifest.id);
            let contracts = info.as_ref().map(|i| &i.contracts[..]).unwrap_or(&[]);
            let list = |f: fn(&(String, usize)) -> String| {
                contracts.iter().map(f).collect::<Vec<_>>().join(", ")
            };
            Ok((
                list(|c| c.0.clone()),
                list(|c| c.1.to_string()),
                info.as_ref().map_or("?", |i| i.mode).to_owned(),
                match info.map(|i| i.fast_glue) {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "?",
                }
                .to_owned(),
            ))
        }
        Err(e) => {
            let mut detail = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                detail.push_str(&format!(": {s}"));
                src = s.source();
            }
            Err(detail)
        }
    };
    Row {
        bundle: manifest.name.clone(),
        outcome,
        load_ms,
        rss_mib: grown as f64 / (1 << 20) as f64,
    }
}

fn print_rows(rows: &[Row]) {
    let mut t = crate::table::plain(
        &[
            "bundle",
            "status",
            "contracts",
            "functions",
            "mode",
            "fast glue",
            "load ms",
            "RSS MiB",
            "error",
        ],
        &[6, 7],
    );
    for r in rows {
        let (status, (contracts, functions, mode, fast), error) = match &r.outcome {
            Ok(found) => ("ok", found.clone(), ""),
            Err(e) => ("FAILED", Default::default(), e.as_str()),
        };
        let (mode, fast) = if r.outcome.is_ok() {
            (mode, fast)
        } else {
            ("-".into(), "-".into())
        };
        t.add_row(vec![
            r.bundle.clone(),
            status.into(),
            contracts,
            functions,
            mode,
            fast,
            format!("{:.1}", r.load_ms),
            format!("{:.1}", r.rss_mib),
            error.into(),
        ]);
    }
    println!("{}", crate::table::render(&t));
}

/// Prints the counts; true when every bundle loaded.
fn print_summary(rows: &[Row]) -> bool {
    let failed = rows.iter().filter(|r| r.outcome.is_err()).count();
    println!(
        "{} bundles, {} loaded, {} failed",
        rows.len(),
        rows.len() - failed,
        failed
    );
    failed == 0
}
