//! Every extension-module refusal in a bundle's interpreter, caught or not.
//!
//! Many packages import their C accelerator inside `try: ... except ImportError` and fall
//! back to pure Python (PyYAML's `yaml._yaml`, msgpack's `_cmsgpack`), so a refusal often
//! never reaches the loader as an error. The loader owns the import system of its
//! interpreters: `src/python/refusals.py` wraps `ExtensionFileLoader.create_module` once
//! per interpreter and decides from what happened whether a failed extension import is a
//! refusal ([`Evidence`]): CPython's or Cython's wording, or, in a subinterpreter, an init
//! function that ran (its `.so` is mapped) and failed in the main interpreter, where
//! CPython 3.13 runs it, for want of a module the bundle provides. On 3.13.15+ that
//! failure reaches only main's `sys.unraisablehook`: [`watch_main`] installs a hook there
//! that hands it, through a thread-local ([`CAUSE`]), to the subinterpreter's wrapper on
//! the same OS thread. A missing shared library (the `.so` never loads) or a dependency
//! the bundle lacks too is no refusal: no downgrade for nothing.
//!
//! Each refusal is recorded (module, `.so` path, message, evidence) and re-raised. A
//! native `mark()` sets a thread-local flag, so reading the records after the init and
//! after every call costs one thread-local read when there are none (like the isolation
//! finder's `DIRTY`). Pure-Python imports never reach the wrapper.
//!
//! What the loader does with them: `load::judge` at load time (downgrade, keep the mode,
//! or ignore), [`CallWatch`] at call time (count, warn, remember for the next load).

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex, Once};

use interp_pool::{Attached, InterpreterHandle, PyObj};
use polyplug::logger::LoggerHandle;
use polyplug_abi::types::LogLevel;

use crate::config::InterpreterMode;
use crate::metrics::Meter;
pub(crate) use crate::mode_reason::{Binding, Evidence, ModeCause, ModeReason, RefusalHow};
use crate::remembered;

/// The wrapper and its records, installed once per interpreter.
const REFUSALS: &str = include_str!("python/refusals.py");

const MODULE: &str = "_polyplug_subinterp_refusals";

thread_local! {
    /// Set by the wrapper's `mark()`: a refusal was recorded on this thread.
    static SEEN: Cell<bool> = const { Cell::new(false) };
    /// How many extension imports the wrappers on this thread are inside (`enter()` /
    /// `leave()`); main's unraisable hook keeps a failed init's cause only then.
    static IMPORTING: Cell<u32> = const { Cell::new(0) };
    /// The modules a failed init (run in main for a subinterpreter) could not import, as
    /// main's unraisable hook saw them; taken by the wrapper's `leave()`.
    static CAUSE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// One refusal the wrapper recorded.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) module: String,
    /// The refusing `.so` (the spec's origin).
    pub(crate) origin: String,
    pub(crate) message: String,
    pub(crate) evidence: Evidence,
}

/// The wrapper's natives: `mark()` (a refusal was recorded), `enter()` / `leave()`
/// around each extension import (`leave` returns the cause main's hook kept, or None).
fn natives<'py>(py: &'py Attached<'_>) -> interp_pool::Result<[PyObj<'py>; 3]> {
    let mark = py.native_function(
        c"mark",
        c"mark(): an extension module refused this interpreter; the loader reads the records",
        |py, _args| {
            SEEN.with(|s| s.set(true));
            Ok(py.none())
        },
    )?;
    let enter = py.native_function(
        c"enter",
        c"enter(): an extension import begins on this thread",
        |py, _args| {
            if IMPORTING.with(|d| d.replace(d.get() + 1)) == 0 {
                CAUSE.with(|c| c.borrow_mut().take());
            }
            Ok(py.none())
        },
    )?;
    let leave = py.native_function(
        c"leave",
        c"leave() -> list[str] | None: it ended; what a failed init could not import in main",
        |py, _args| {
            IMPORTING.with(|d| d.set(d.get().saturating_sub(1)));
            let Some(names) = CAUSE.with(|c| c.borrow_mut().take()) else {
                return Ok(py.none());
            };
            let list = py.eval("[]")?;
            for n in &names {
                list.call_method(py, "append", &[&py.str(n)?])?;
            }
            Ok(list)
        },
    )?;
    Ok([mark, enter, leave])
}

/// The wrapper's module in this interpreter, installed on first use (each subinterpreter
/// once, at its bundle's load; the main interpreter once per process).
fn module<'py>(py: &'py Attached<'_>, in_main: bool) -> interp_pool::Result<PyObj<'py>> {
    crate::deadlines::loader_module(py, MODULE, REFUSALS, |m| {
        let [mark, enter, leave] = natives(py)?;
        m.call_method(py, "install", &[&mark, &enter, &leave, &py.bool(in_main)])
            .map(drop)
    })
}

/// Installs the wrapper in this interpreter (idempotent); `in_main`: this is the main
/// interpreter (its imports resolve through the isolation finder: no init-in-main rule).
pub(crate) fn install(py: &Attached<'_>, in_main: bool) -> interp_pool::Result<()> {
    module(py, in_main).map(drop)
}

/// Once per process, before the first load into a subinterpreter: the hook in the main
/// interpreter's `sys.unraisablehook` that keeps, for the importing subinterpreter's
/// wrapper, what an extension's init failed on when CPython 3.13.15+ ran it in main for
/// that subinterpreter (it prints it there and raises only a generic ImportError in the
/// subinterpreter). Only in a Python this process initialised (a host's own `main` is
/// left alone); without it such a failure counts as a refusal whatever its cause.
/// `open` gives the main interpreter's handle with the loader's settings.
pub(crate) fn watch_main(open: impl FnOnce() -> interp_pool::Result<InterpreterHandle>) {
    static ONCE: Once = Once::new();
    if interp_pool::python_version() < (3, 13) {
        return;
    }
    ONCE.call_once(|| {
        // Opening main starts the runtime, so `owns_python` is known (on a process's first
        // load it is not yet: checking first would leave that load unwatched).
        let main = open();
        if !interp_pool::owns_python() {
            return;
        }
        let installed = main.and_then(|main| {
            main.call(|py| {
                let note = py.native_function(
                    c"note",
                    c"note(names) -> bool: keep what a subinterpreter's failed init could not import",
                    |py, args| {
                        if IMPORTING.with(Cell::get) == 0 {
                            return Ok(py.bool(false));
                        }
                        let mut names = Vec::new();
                        if let Some(list) = args.positional().first() {
                            for i in 0..list.len(py)? {
                                names.push(list.get_index(py, i)?.extract_string(py)?);
                            }
                        }
                        CAUSE.with(|c| *c.borrow_mut() = Some(names));
                        Ok(py.bool(true))
                    },
                )?;
                module(py, true)?
                    .call_method(py, "watch_main", &[&note])
                    .map(drop)
            })
        });
        if let Err(e) = installed {
            tracing::warn!(error = %e, "could not watch the main interpreter for extension inits that fail there");
        }
    });
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
    let list = module(py, false)?.call_method(py, "take", &[])?;
    let mut out: Vec<Seen> = Vec::new();
    for i in 0..list.len(py)? {
        let t = list.get_index(py, i)?;
        let field = |k| t.get_index(py, k)?.extract_string(py);
        let evidence = if field(3)? == "message" {
            Evidence::Message
        } else {
            let needed = field(4)?;
            Evidence::InitInMain {
                needed: (!needed.is_empty()).then_some(needed),
            }
        };
        let seen = Seen {
            module: field(0)?,
            origin: field(1)?,
            message: field(2)?,
            evidence,
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
                    seen: s.evidence.clone(),
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
