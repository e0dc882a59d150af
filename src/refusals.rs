//! Every extension-module refusal in a bundle's interpreter, caught or not.
//!
//! Many packages import their C accelerator inside `try: ... except ImportError` and fall
//! back to pure Python (PyYAML's `yaml._yaml`, msgpack's `_cmsgpack`), so a refusal ("does
//! not support loading in subinterpreters", or Cython's "Interpreter change detected")
//! often never reaches the loader as an error. The loader owns the import system of its
//! interpreters: `src/python/refusals.py` wraps `ExtensionFileLoader.create_module` once
//! per interpreter, records each refusal (module, `.so` path, message) and re-raises it.
//! A native `mark()` sets a thread-local flag, so reading the records after the init and
//! after every call costs one thread-local read when there are none (like the isolation
//! finder's `DIRTY`). Pure-Python imports never reach the wrapper.
//!
//! What the loader does with them: `load::judge` at load time (downgrade, keep the mode,
//! or ignore), [`CallWatch`] at call time (count, warn, remember for the next load).

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use interp_pool::{Attached, PyObj};
use polyplug::logger::LoggerHandle;
use polyplug_abi::types::LogLevel;

use crate::config::InterpreterMode;
use crate::metrics::Meter;
use crate::remembered;

/// The wrapper and its records, installed once per interpreter.
const REFUSALS: &str = include_str!("python/refusals.py");

const MODULE: &str = "_polyplug_subinterp_refusals";

thread_local! {
    /// Set by the wrapper's `mark()`: a refusal was recorded on this thread.
    static SEEN: Cell<bool> = const { Cell::new(false) };
}

/// How the extension module that refused was built: PyO3 and Cython modules bind
/// themselves to the first interpreter that imports them, so the loader must not try
/// them in a subinterpreter first (the main interpreter would be locked out of them for
/// the rest of the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// Plain C (or anything not recognised below).
    C,
    /// Built with PyO3 (recognised by the `pyo3-X.Y.Z/src/` paths every build embeds).
    PyO3,
    /// Built with Cython (recognised by its "Interpreter change detected" check, or its
    /// `__pyx_` symbols next to the string "Cython").
    Cython,
}

impl Binding {
    /// `"c"`, `"pyo3"` or `"cython"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::C => "c",
            Binding::PyO3 => "pyo3",
            Binding::Cython => "cython",
        }
    }

    /// Whether a module built this way loads in one interpreter per process.
    pub(crate) fn one_interpreter_per_process(self) -> bool {
        self != Binding::C
    }

    /// Reads the extension module at `path` for the markers of PyO3 and Cython builds.
    /// Only runs on a refusal (a few ms for a large `.so`).
    pub(crate) fn sniff(path: &str) -> Self {
        let Ok(data) = std::fs::read(path) else {
            return Binding::C;
        };
        if contains(&data, b"PyO3 modules do not yet support") || embeds_pyo3_sources(&data) {
            Binding::PyO3
        } else if contains(&data, b"Interpreter change detected - this module can only")
            || (contains(&data, b"__pyx_") && contains(&data, b"Cython"))
        {
            Binding::Cython
        } else {
            Binding::C
        }
    }
}

/// `[/\\]pyo3-N.N.N[/\\]src[/\\]`: the panic locations every PyO3 build embeds.
fn embeds_pyo3_sources(data: &[u8]) -> bool {
    positions(data, b"pyo3-").any(|at| {
        if at == 0 || !matches!(data[at - 1], b'/' | b'\\') {
            return false;
        }
        let mut rest = &data[at + 5..];
        for i in 0..3 {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            rest = &rest[digits..];
            let want: &[u8] = if i < 2 { b"." } else { b"" };
            if !rest.starts_with(want) {
                return false;
            }
            rest = &rest[want.len()..];
        }
        rest.len() >= 5
            && matches!(rest[0], b'/' | b'\\')
            && &rest[1..4] == b"src"
            && matches!(rest[4], b'/' | b'\\')
    })
}

fn positions<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle[0];
    hay.iter()
        .enumerate()
        .filter(move |&(i, &b)| b == first && hay[i..].starts_with(needle))
        .map(|(i, _)| i)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    positions(hay, needle).next().is_some()
}

/// How the loader learned of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalHow {
    /// The ImportError reached the loader: the bundle's import or `polyplug_init` failed.
    Raised,
    /// The importing package caught the ImportError (and went on without the module).
    Caught,
    /// Seen during a call, after the load (a lazy import inside a function).
    AtCall,
}

impl RefusalHow {
    /// `"raised"`, `"caught"` or `"at_call"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalHow::Raised => "raised",
            RefusalHow::Caught => "caught",
            RefusalHow::AtCall => "at_call",
        }
    }
}

/// What decided a bundle's interpreter mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeCause {
    /// `PythonConfig::mode`.
    Configured,
    /// `PythonConfig::bundle_modes`.
    Pinned,
    /// An extension module refused the previous mode.
    Refused {
        /// The module that refused, e.g. `numpy._core._multiarray_umath`.
        module: String,
        /// The mode it refused.
        from: InterpreterMode,
        /// Whether the ImportError reached the loader or was caught by the importer.
        how: RefusalHow,
        /// How the module was built (PyO3 and Cython modules skip `shared_gil`).
        binding: Binding,
    },
}

/// Why a bundle runs in the mode it runs in ([`BundleInfo::reason`](crate::BundleInfo)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeReason {
    /// What decided the mode.
    pub cause: ModeCause,
    /// The mode came from an earlier load of the same files in this process (the modes
    /// that failed then were not tried again).
    pub remembered: bool,
    /// Extension modules that refused this mode, whose refusal the importing package
    /// caught, and that the bundle runs without, on the package's pure-Python fallback
    /// (`CaughtRefusals::KeepMode`, or `PythonConfig::ignored_refusals`).
    pub fallback: Vec<String>,
}

impl ModeReason {
    pub(crate) fn new(cause: ModeCause) -> Self {
        Self {
            cause,
            remembered: false,
            fallback: Vec::new(),
        }
    }

    /// The module that decided the mode, if a refusal did.
    pub fn module(&self) -> Option<&str> {
        match &self.cause {
            ModeCause::Refused { module, .. } => Some(module),
            _ => self.fallback.first().map(String::as_str),
        }
    }

    /// One word for tools: `"configured"`, `"pinned"`, `"raised"`, `"caught"`,
    /// `"at_call"`, or `"fallback"` when the bundle kept its mode and runs a package's
    /// pure-Python fallback.
    pub fn how(&self) -> &'static str {
        match &self.cause {
            ModeCause::Refused { how, .. } => how.as_str(),
            _ if !self.fallback.is_empty() => "fallback",
            ModeCause::Configured => "configured",
            ModeCause::Pinned => "pinned",
        }
    }
}

impl std::fmt::Display for ModeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            ModeCause::Configured => f.write_str("configured")?,
            ModeCause::Pinned => f.write_str("pinned (bundle_modes)")?,
            ModeCause::Refused {
                module,
                from,
                how,
                binding,
            } => {
                write!(f, "{module} refused {from} ({}", how.as_str())?;
                if *binding != Binding::C {
                    write!(f, ", {}", binding.as_str())?;
                }
                f.write_str(")")?;
            }
        }
        if self.remembered {
            f.write_str(", remembered")?;
        }
        if !self.fallback.is_empty() {
            write!(f, "; fallback without {}", self.fallback.join(", "))?;
        }
        Ok(())
    }
}

/// One refusal the wrapper recorded.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) module: String,
    /// The refusing `.so` (the spec's origin).
    pub(crate) origin: String,
    pub(crate) message: String,
}

/// `mark()`: a refusal was recorded on this thread.
fn mark_fn<'py>(py: &'py Attached<'_>) -> interp_pool::Result<PyObj<'py>> {
    py.native_function(
        c"mark",
        c"mark(): an extension module refused this interpreter; the loader reads the records",
        |py, _args| {
            SEEN.with(|s| s.set(true));
            Ok(py.uint(0)?)
        },
    )
}

/// The wrapper's module in this interpreter, installed on first use (each subinterpreter
/// once, at its bundle's load; the main interpreter once per process).
fn module<'py>(py: &'py Attached<'_>) -> interp_pool::Result<PyObj<'py>> {
    crate::deadlines::loader_module(py, MODULE, REFUSALS, |m| {
        m.call_method(py, "install", &[&mark_fn(py)?]).map(drop)
    })
}

/// Installs the wrapper in this interpreter (idempotent).
pub(crate) fn install(py: &Attached<'_>) -> interp_pool::Result<()> {
    module(py).map(drop)
}

/// Whether a refusal was recorded on this thread since the last [`take`]: one
/// thread-local read.
pub(crate) fn pending() -> bool {
    SEEN.with(Cell::get)
}

/// The refusals recorded since the last call, oldest first, each module once. Runs no
/// Python when none was.
pub(crate) fn take(py: &Attached<'_>) -> interp_pool::Result<Vec<Seen>> {
    if !SEEN.with(|s| s.replace(false)) {
        return Ok(Vec::new());
    }
    let list = module(py)?.call_method(py, "take", &[])?;
    let mut out: Vec<Seen> = Vec::new();
    for i in 0..list.len(py)? {
        let t = list.get_index(py, i)?;
        let field = |k| t.get_index(py, k)?.extract_string(py);
        let seen = Seen {
            module: field(0)?,
            origin: field(1)?,
            message: field(2)?,
        };
        if !out.iter().any(|s| s.module == seen.module) {
            out.push(seen);
        }
    }
    Ok(out)
}

/// What a bundle's calls need to handle a refusal at call time: shared by its contracts.
#[derive(Debug)]
pub(crate) struct CallWatch {
    pub(crate) bundle: String,
    pub(crate) mode: InterpreterMode,
    /// Modules whose refusal the bundle ignores (`PythonConfig::ignored_refusals`).
    pub(crate) ignored: Vec<String>,
    /// Where the bundle's outcome is remembered (path loads only).
    pub(crate) remember: Option<remembered::Key>,
    /// Modules refused at call time so far (`BundleInfo::call_refusals`).
    pub(crate) seen: Mutex<Vec<String>>,
}

impl CallWatch {
    pub(crate) fn new(
        bundle: &str,
        mode: InterpreterMode,
        ignored: Vec<String>,
        remember: Option<remembered::Key>,
    ) -> Arc<Self> {
        Arc::new(Self {
            bundle: bundle.to_owned(),
            mode,
            ignored,
            remember,
            seen: Mutex::new(Vec::new()),
        })
    }

    /// Modules refused at call time so far.
    pub(crate) fn refused(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a call that recorded refusals (`pending()` was true; still in the job):
    /// counts each, warns (runtime logger and `tracing`) naming the module and the mode
    /// to pin, and remembers that mode for the bundle's next load or reload in this
    /// process. The call itself is left as the guest code made it: failed if the
    /// ImportError reached it, or running on the package's fallback if it was caught.
    pub(crate) fn at_call(
        &self,
        py: &Attached<'_>,
        meter: &Meter,
        logger: &LoggerHandle,
        failed: Option<String>,
    ) {
        let seen = match take(py) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(bundle = %self.bundle, error = %e, "could not read recorded refusals");
                return;
            }
        };
        for s in seen {
            if self.ignored.contains(&s.module) {
                tracing::debug!(bundle = %self.bundle, module = %s.module, "ignored refusal at call time");
                continue;
            }
            meter.refusal_at_call();
            let binding = Binding::sniff(&s.origin);
            let raised = failed.as_deref().is_some_and(|e| e.contains(&s.message));
            let next = self.mode.fallback(binding.one_interpreter_per_process());
            let pin = next.map_or_else(
                || "no mode accepts it".to_owned(),
                |n| {
                    format!(
                        "set PythonConfig::bundle_modes[\"{}\"] = {n:?}",
                        self.bundle
                    )
                },
            );
            let how = if raised {
                "the call failed"
            } else {
                "the importing package caught it and runs without it"
            };
            let msg = format!(
                "extension module {} refused this bundle's {} interpreter at call time ({how}); {pin}{}",
                s.module,
                self.mode,
                if next.is_some() && self.remember.is_some() {
                    "; its next load or reload in this process goes there"
                } else {
                    ""
                }
            );
            tracing::warn!(bundle = %self.bundle, module = %s.module, mode = %self.mode, pin = ?next, "{msg}");
            logger.log(LogLevel::Warn, &self.bundle, || msg.clone());
            if let (Some(next), Some(key)) = (next, &self.remember) {
                let reason = ModeReason::new(ModeCause::Refused {
                    module: s.module.clone(),
                    from: self.mode,
                    how: RefusalHow::AtCall,
                    binding,
                });
                remembered::store(key, next, reason);
            }
            let mut list = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !list.contains(&s.module) {
                list.push(s.module);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{contains, embeds_pyo3_sources};

    #[test]
    fn markers_are_found_where_they_are() {
        assert!(contains(b"xx__pyx_yy", b"__pyx_"));
        assert!(!contains(b"__py", b"__pyx_"));
        assert!(embeds_pyo3_sources(
            b"\0/root/.cargo/registry/src/x/pyo3-0.22.6/src/err/mod.rs\0"
        ));
        assert!(embeds_pyo3_sources(b"C:\\r\\pyo3-1.2.3\\src\\lib.rs"));
        assert!(!embeds_pyo3_sources(b"/pyo3-ffi-0.22.6/src/lib.rs"));
        assert!(!embeds_pyo3_sources(b"pyo3-0.22.6/src/lib.rs"));
    }
}
