//! `check <plugin-dir>`: load each bundle on its own and report what happened.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use polyplug::loader::ManifestData;
use polyplug::runtime::Runtime;
use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::{BundleInfo, ModeCause, PythonConfig, PythonLoader};
use serde_json::{json, Value};

/// What loading one bundle did.
struct Row {
    bundle: String,
    /// What the loader reports of the loaded bundle, or the error with its causes.
    outcome: Result<BundleInfo, String>,
    load_ms: f64,
    rss_mib: f64,
    /// CPU time its interpreter used during the load (`BundleMetrics::cpu_time`).
    cpu_ms: Option<f64>,
    /// What its interpreter holds after the load (`BundleMetrics::memory_bytes`).
    py_mib: Option<f64>,
}

/// Loads every bundle under `dir` into one runtime and prints a row per bundle (or, with
/// `json`, one JSON document). `Ok(false)` when one failed to load; `Err` when there was
/// nothing to check.
pub fn run(dir: &Path, config: PythonConfig, json: bool) -> Result<bool, String> {
    let bundles = bundle_dirs(dir);
    if bundles.is_empty() {
        return Err(format!(
            "{}: no bundle directories (with manifest.toml) found",
            dir.display()
        ));
    }
    let loader = PythonLoader::new(config);
    let rt = RuntimeBuilder::new()
        .loader(loader.clone())
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    let rows: Vec<Row> = bundles
        .iter()
        .map(|(path, manifest)| load_one(&rt, &loader, path, manifest))
        .collect();
    if json {
        println!("{:#}", to_json(&rows));
        return Ok(rows.iter().all(|r| r.outcome.is_ok()));
    }
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
        Ok(()) => loader
            .bundle_info(manifest.id)
            .ok_or_else(|| "loaded, but the loader has no record of it".to_owned()),
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
    let metrics = loader.metrics(manifest.id).filter(|_| outcome.is_ok());
    let cpu_ms = metrics.as_ref().map(|m| m.cpu_time.as_secs_f64() * 1e3);
    let py_mib = metrics
        .filter(|_| polyplug_subinterp::memory_accounting())
        .map(|m| m.memory_bytes as f64 / f64::from(1 << 20));
    Row {
        bundle: manifest.name.clone(),
        cpu_ms,
        py_mib,
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
            "replicas",
            "dispatch",
            "fast glue",
            "allocator",
            "why",
            "load ms",
            "cpu ms",
            "RSS MiB",
            "py MiB",
            "error",
        ],
        &[5, 10, 11, 12, 13],
    );
    for r in rows {
        let (status, contracts, functions, mode, replicas, dispatch, fast, alloc, why, error) =
            match &r.outcome {
                Ok(info) => {
                    let list = |f: fn(&(String, usize)) -> String| {
                        info.contracts.iter().map(f).collect::<Vec<_>>().join(", ")
                    };
                    let mut why = info.reason.to_string();
                    if !info.call_refusals.is_empty() {
                        why.push_str(&format!(
                            "; refused at call: {}",
                            info.call_refusals.join(", ")
                        ));
                    }
                    let contracts = list(|c| c.0.clone());
                    let functions = list(|c| c.1.to_string());
                    let replicas = info.replicas.to_string();
                    let fast = if info.fast_glue { "on" } else { "off" };
                    let alloc = info.allocator.as_str();
                    let dispatch = info.dispatch.as_str();
                    (
                        "ok", contracts, functions, info.mode, replicas, dispatch, fast, alloc,
                        why, "",
                    )
                }
                Err(e) => (
                    "FAILED",
                    String::new(),
                    String::new(),
                    "-",
                    "-".into(),
                    "-",
                    "-",
                    "-",
                    "-".into(),
                    e.as_str(),
                ),
            };
        t.add_row(vec![
            r.bundle.clone(),
            status.into(),
            contracts,
            functions,
            mode.into(),
            replicas,
            dispatch.into(),
            fast.into(),
            alloc.into(),
            why,
            format!("{:.1}", r.load_ms),
            r.cpu_ms.map_or("-".into(), |c| format!("{c:.1}")),
            format!("{:.1}", r.rss_mib),
            r.py_mib.map_or("-".into(), |m| format!("{m:.1}")),
            error.into(),
        ]);
    }
    println!("{}", crate::table::render(&t));
}

/// The rows as `check --json` prints them: per bundle its status, contracts, mode and the
/// reason (`how`: configured, pinned, raised, caught, at_call or fallback; `module`;
/// `from`; `binding`; `remembered`; `fallback` modules), `replicas`, `dispatch` (`post` or
/// `direct`, as configured), the allocator CPython runs on
/// (`allocator`, `memory_accounting`: `BundleInfo`), load time and RSS growth.
fn to_json(rows: &[Row]) -> Value {
    let bundles: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({
                "bundle": r.bundle,
                "status": if r.outcome.is_ok() { "ok" } else { "failed" },
                "load_ms": (r.load_ms * 10.0).round() / 10.0,
                "rss_mib": (r.rss_mib * 10.0).round() / 10.0,
            });
            match &r.outcome {
                Ok(info) => {
                    let reason = &info.reason;
                    let (from, binding) = match &reason.cause {
                        ModeCause::Refused { from, binding, .. } => {
                            (Some(from.as_str()), Some(binding.as_str()))
                        }
                        _ => (None, None),
                    };
                    v["contracts"] = info
                        .contracts
                        .iter()
                        .map(|(c, n)| json!({ "contract": c, "functions": n }))
                        .collect();
                    v["mode"] = json!(info.mode);
                    v["replicas"] = json!(info.replicas);
                    v["dispatch"] = json!(info.dispatch.as_str());
                    v["fast_glue"] = json!(info.fast_glue);
                    v["allocator"] = json!(info.allocator.as_str());
                    v["memory_accounting"] = json!(info.memory_accounting);
                    v["reason"] = json!({
                        "how": reason.how(),
                        "module": reason.module(),
                        "from": from,
                        "binding": binding,
                        "remembered": reason.remembered,
                        "fallback": reason.fallback,
                        "text": reason.to_string(),
                    });
                    v["call_refusals"] = json!(info.call_refusals);
                }
                Err(e) => v["error"] = json!(e),
            }
            v
        })
        .collect();
    let failed = rows.iter().filter(|r| r.outcome.is_err()).count();
    json!({ "bundles": bundles, "loaded": rows.len() - failed, "failed": failed })
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
