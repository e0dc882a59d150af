//! Load, downgrade, reload and unload: which interpreter a bundle gets, the retry in the
//! next mode when an extension module refuses one, and releasing a load's objects and
//! interpreter. `PythonLoader` (lib.rs) is a handle to one [`Loader`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use interp_pool::InterpreterHandle;
use polyplug::error::LoaderError;
use polyplug::loader::{BundleSource, ManifestData};
use polyplug::runtime::Runtime;

use crate::config::{self, InterpreterMode, PythonConfig};
use crate::contract::ContractData;
use crate::error;
use crate::isolation::{self, BundleKey};
use crate::load::{self, Entry, LoadFailure, Plan};
use crate::metrics::Meter;
use crate::output::{self, OutputSink};
use crate::spare;

/// The state behind every clone of a `PythonLoader`: its settings and what is loaded.
#[derive(Debug, Default)]
pub(crate) struct Loader {
    config: PythonConfig,
    /// By bundle id; several entries only while a reload retires the old version.
    bundles: Mutex<HashMap<u64, Vec<LoadedBundle>>>,
}

/// What one successful load owns.
pub(crate) struct LoadedBundle {
    /// The bundle's manifest name (log lines).
    name: String,
    /// Unique per load in the process: tells a reload's new load from the ones it retires.
    serial: u64,
    pub(crate) interp: InterpreterHandle,
    pub(crate) contracts: Vec<&'static ContractData>,
    pub(crate) mode: InterpreterMode,
    /// Whether the ctypes fast paths are in place in its interpreter (`fast_glue.rs`).
    pub(crate) fast_glue: bool,
    /// Its identity in the main interpreter (`Main` mode only).
    key: Option<BundleKey>,
    pub(crate) meter: Arc<Meter>,
    /// Backing store of `BundleInitContext.bundle_path` handed to the guest.
    _ctx_path: Box<str>,
    /// Where its `sys.stdout` / `sys.stderr` lines go; unregistered when dropped, after
    /// `release`.
    _output: OutputSink,
}

impl std::fmt::Debug for LoadedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBundle")
            .field("name", &self.name)
            .field("interp", &self.interp)
            .field(
                "contracts",
                &self
                    .contracts
                    .iter()
                    .map(|c| &c.contract)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Loader {
    pub(crate) fn new(config: PythonConfig) -> Self {
        Self {
            config,
            bundles: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn config(&self) -> &PythonConfig {
        &self.config
    }

    /// `f` of the most recent load of `bundle_id`, if any.
    pub(crate) fn latest<R>(
        &self,
        bundle_id: u64,
        f: impl FnOnce(&LoadedBundle) -> R,
    ) -> Option<R> {
        self.lock().get(&bundle_id)?.last().map(f)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<LoadedBundle>>> {
        self.bundles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `BundleLoader::load`: a bundle directory, or source text (`Code`, UTF-8 `Bytes`).
    pub(crate) fn load(
        &self,
        manifest: &ManifestData,
        source: &BundleSource,
        runtime: &Runtime,
    ) -> Result<(), LoaderError> {
        let loaded = match source {
            BundleSource::Path(_) => self.load_path(manifest, runtime),
            BundleSource::Code(code) => self.load_code(manifest, code, runtime),
            BundleSource::Bytes(bytes) => {
                let code =
                    std::str::from_utf8(bytes).map_err(|_| LoaderError::InvalidSourceEncoding {
                        loader: "python",
                        source_kind: source.kind(),
                        bundle: manifest.name.clone(),
                    })?;
                self.load_code(manifest, code, runtime)
            }
        };
        loaded.map(drop)
    }

    /// `BundleLoader::reload`: loads the bundle's current code (see `PythonLoader::reload`),
    /// then retires the previous loads, each old contract forwarding to its successor.
    pub(crate) fn reload(
        &self,
        manifest: &ManifestData,
        runtime: &Runtime,
    ) -> Result<(), LoaderError> {
        let serial = self.load_path(manifest, runtime)?;
        let (old, new): (Vec<LoadedBundle>, Vec<&'static ContractData>) = {
            let mut bundles = self.lock();
            let list = bundles.entry(manifest.id).or_default();
            let (new, old): (Vec<_>, Vec<_>) = list.drain(..).partition(|b| b.serial == serial);
            *list = new;
            let contracts = list.iter().flat_map(|b| b.contracts.clone()).collect();
            (old, contracts)
        };
        for b in old {
            for c in &b.contracts {
                if let Some(n) = new.iter().find(|n| n.contract_id == c.contract_id) {
                    let _ = c.successor.set(n);
                }
            }
            release(&b.interp, &b.contracts, b.key);
            tracing::info!(
                bundle = %manifest.name,
                interp = %b.interp.id(),
                mode = %b.mode,
                "bundle version retired after reload"
            );
        }
        Ok(())
    }

    /// `BundleLoader::unload`: releases every load of `bundle_id`.
    pub(crate) fn unload(&self, bundle_id: u64) {
        let removed = self.lock().remove(&bundle_id).unwrap_or_default();
        for b in removed {
            let m = b.meter.snapshot(0);
            release(&b.interp, &b.contracts, b.key);
            tracing::info!(
                bundle = %b.name,
                interp = %b.interp.id(),
                mode = %b.mode,
                calls = m.calls,
                errors = m.errors,
                timeouts = m.timeouts,
                run_p99_us = m.run_p99.as_secs_f64() * 1e6,
                max_depth = m.max_depth,
                "bundle unloaded"
            );
        }
    }

    fn check_version(&self) -> Result<(), LoaderError> {
        let (maj, min) = self.config.min_version;
        let (have_maj, have_min) = interp_pool::python_version();
        if (have_maj, have_min) < (maj, min) {
            // polyplug_python's error: it names the loader, not the bundle.
            return Err(LoaderError::InitFailed {
                bundle: "python".into(),
                error: format!(
                    "runtime version mismatch: required {maj}.{min}, found {have_maj}.{have_min}"
                ),
            });
        }
        Ok(())
    }

    /// A fresh interpreter for `bundle` in `mode`: the pre-warmed spare if allowed (own-GIL
    /// only) and ready, else a new one.
    fn interpreter(
        &self,
        bundle: &str,
        mode: InterpreterMode,
    ) -> interp_pool::Result<InterpreterHandle> {
        let config = self.config.interpreter(bundle, mode);
        if mode == InterpreterMode::Main {
            return InterpreterHandle::main(config);
        }
        // On 3.12 the spare's prelude (`import ctypes`) fails in own-GIL interpreters and the
        // bundle would too (then downgrade): no spare there.
        if self.config.prewarm
            && mode == InterpreterMode::OwnGil
            && config::ctypes_loads_in_own_gil()
        {
            if let Some(h) = spare::take(&config) {
                if h.rename(bundle).is_ok() {
                    return Ok(h);
                }
                h.end();
            }
        }
        InterpreterHandle::spawn(config)
    }

    /// Loads in the bundle's configured mode; if an extension module refuses that kind of
    /// interpreter and `auto_downgrade` is on, retries in the next mode, with a warning
    /// that names the module.
    fn load_plan(
        &self,
        manifest: &ManifestData,
        plan: Plan<'_>,
        runtime: &Runtime,
    ) -> Result<u64, LoaderError> {
        self.check_version()?;
        let config = &self.config;
        let mut mode = config.mode_for(&manifest.name);
        loop {
            let (err, refusal) = match self.load_in(manifest, &plan, runtime, mode) {
                Ok(serial) => return Ok(serial),
                Err(LoadFailure {
                    error,
                    refusal: Some(refusal),
                }) => (error, refusal),
                Err(LoadFailure {
                    error,
                    refusal: None,
                }) => return Err(error),
            };
            let (module, Some(next)) = (refusal.module, mode.fallback(refusal.pyo3)) else {
                return Err(err);
            };
            if !config.auto_downgrade {
                return Err(error::init_failed_msg(
                    &manifest.name,
                    format!(
                        "extension module {module} refuses {mode} interpreters and automatic downgrade is off; \
                         set PythonConfig::bundle_modes[\"{}\"] = {next:?} to run it ({err})",
                        manifest.name
                    ),
                ));
            }
            tracing::warn!(
                bundle = %manifest.name,
                module = %module,
                from = %mode,
                to = %next,
                "extension module refuses this interpreter mode; retrying the load"
            );
            mode = next;
        }
    }

    /// One load attempt in `mode`: create the interpreter, run the bundle's init there,
    /// register its contracts. Any failure ends the interpreter and leaves nothing behind.
    /// Returns the new load's serial.
    fn load_in(
        &self,
        manifest: &ManifestData,
        plan: &Plan<'_>,
        runtime: &Runtime,
        mode: InterpreterMode,
    ) -> Result<u64, LoadFailure> {
        let bundle = manifest.name.as_str();
        let rss0 = crate::rss_bytes().unwrap_or(0);
        let t0 = std::time::Instant::now();
        let interp = self.interpreter(bundle, mode).map_err(|e| {
            error::init_failed(bundle, "cannot create the bundle's interpreter", &e)
        })?;
        let t_spawn = t0.elapsed();
        let host = runtime.as_context_ptr() as usize;
        let key = (mode == InterpreterMode::Main).then(BundleKey::next);
        let sink = OutputSink::register(runtime.logger(), bundle, key);
        let fast_glue = crate::fast_glue::wanted(&self.config, mode);
        let declared = interp
            .call(|py| {
                let fast_glue = fast_glue && crate::fast_glue::install(py, bundle);
                Ok(load::run_init(py, plan, runtime, host, key, &sink).map(|d| (d, fast_glue)))
            })
            .unwrap_or_else(|e| Err(error::init_failed(bundle, "bundle init", &e).into()));
        let (declared, fast_glue) = match declared {
            Ok(d) => d,
            Err(e) => {
                release(&interp, &[], key);
                return Err(e);
            }
        };
        let t_init = t0.elapsed() - t_spawn;
        let meter = Arc::new(Meter::new());
        let settings = load::BundleCallSettings {
            key,
            meter: Arc::clone(&meter),
            timeout: self.config.timeout_for(bundle),
        };
        let (contracts, registered) =
            load::register_all(declared, &interp, bundle, plan.bundle_id, settings, runtime);
        if let Err(e) = registered {
            release(&interp, &contracts, key);
            return Err(e.into());
        }
        meter.set_rss_at_load(crate::rss_bytes().unwrap_or(0).saturating_sub(rss0));
        tracing::info!(
            bundle,
            interp = %interp.id(),
            mode = %mode,
            fast_glue,
            contracts = contracts.len(),
            create_ms = t_spawn.as_secs_f64() * 1e3,
            init_ms = t_init.as_secs_f64() * 1e3,
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            "bundle loaded"
        );
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(plan.bundle_id)
            .or_default()
            .push(LoadedBundle {
                name: bundle.to_owned(),
                serial,
                interp,
                contracts,
                mode,
                fast_glue,
                key,
                meter,
                _ctx_path: plan.ctx_path.into(),
                _output: sink,
            });
        Ok(serial)
    }

    fn load_path(&self, manifest: &ManifestData, runtime: &Runtime) -> Result<u64, LoaderError> {
        if manifest.file.is_empty() {
            return Err(LoaderError::ManifestMissingFile {
                bundle: manifest.name.clone(),
            });
        }
        let entry = manifest.path.join(&manifest.file);
        if !entry.exists() {
            return Err(error::init_failed_msg(
                &manifest.name,
                format!(
                    "failed to import Python module at {}: file does not exist",
                    entry.display()
                ),
            ));
        }
        let canon = |p: &Path| {
            p.canonicalize().map_err(|e| {
                error::init_failed_msg(
                    &manifest.name,
                    format!("failed to canonicalize {}: {e}", p.display()),
                )
            })
        };
        let file = canon(&entry)?;
        let dir = canon(&manifest.path)?;
        let module = file
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let file_s = file.to_string_lossy().into_owned();
        let dir_s = dir.to_string_lossy().into_owned();
        // Inserted at 0 in this order, so site-packages ends up first, then the bundle dir.
        let mut dirs = vec![dir_s.clone()];
        let site = dir.join("site-packages");
        if site.is_dir() {
            dirs.push(site.to_string_lossy().into_owned());
        }
        let plan = Plan {
            name: &manifest.name,
            module,
            bundle_id: manifest.id,
            entry: Entry::Path {
                file: &file_s,
                dirs,
            },
            ctx_path: &dir_s,
        };
        self.load_plan(manifest, plan, runtime)
    }

    fn load_code(
        &self,
        manifest: &ManifestData,
        src: &str,
        runtime: &Runtime,
    ) -> Result<u64, LoaderError> {
        let plan = Plan {
            name: &manifest.name,
            module: synthetic_module_name(&manifest.name),
            bundle_id: manifest.id,
            entry: Entry::Code { src },
            ctx_path: "",
        };
        self.load_plan(manifest, plan, runtime)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        let all: Vec<LoadedBundle> = self.lock().drain().flat_map(|(_, v)| v).collect();
        for b in all {
            release(&b.interp, &b.contracts, b.key);
        }
    }
}

/// Emits a last unterminated output line, drops the contracts' Python objects inside
/// their interpreter, then ends it (waiting for calls already running in it). In the main
/// interpreter, which never ends, it drops the bundle's modules from `sys.modules`
/// instead.
fn release(
    interp: &InterpreterHandle,
    contracts: &[&'static ContractData],
    key: Option<BundleKey>,
) {
    let _ = interp.call(|py| {
        if let Err(e) = output::flush_partial_lines(py, key) {
            tracing::debug!(interp = %interp.id(), error = %e, "could not flush guest output");
        }
        for c in contracts {
            c.release_objects(py);
        }
        match key {
            Some(key) => isolation::forget(py, key),
            None => Ok(()),
        }
    });
    interp.end();
}

/// `manifest.name` as a Python module name: non-`[A-Za-z0-9_]` → `_`, no leading digit.
fn synthetic_module_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push_str("polyplug_inline_bundle");
    } else if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::synthetic_module_name;

    #[test]
    fn inline_module_names_are_python_identifiers() {
        assert_eq!(synthetic_module_name("bad-utf8.plugin"), "bad_utf8_plugin");
        assert_eq!(synthetic_module_name("9lives"), "_9lives");
        assert_eq!(synthetic_module_name(""), "polyplug_inline_bundle");
    }
}
