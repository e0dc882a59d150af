//! Guest output: a bundle's `sys.stdout` / `sys.stderr` forward complete lines to the
//! runtime's logger (stdout → `Info`, stderr → `Warn`, scope = bundle name) and to
//! `tracing` (target `polyplug_subinterp::guest`), never to the host's streams.
//!
//! The writer is a Python class of the loader's bootstrap (`load.rs`, `GuestOutput`) that
//! buffers until a newline and calls `emit`, a native function bound to an integer
//! *sink id*. Sink ids index a process-wide registry of (logger, bundle name); an
//! [`OutputSink`] guard owned by the bundle's load removes its entry when dropped, so
//! nothing the Python side holds can dangle: a write after unload finds no sink and goes
//! to the stream the writer replaced.
//!
//! In the main interpreter (`main` mode) `sys.stdout` is shared by every `main` bundle and
//! by the host: one router writer, bound to sink id 0, is installed once; it routes each
//! line by the `main` bundle whose code is running on this thread (`isolation::Scope`) and
//! passes output made outside any bundle (host code, plugin-started threads) through to
//! the original stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use interp_pool::{Attached, NativeError, PyObj};
use polyplug::logger::LoggerHandle;
use polyplug_abi::types::LogLevel;

use crate::isolation::{self, BundleKey};

/// Where one bundle load's output goes.
struct Sink {
    logger: LoggerHandle,
    bundle: String,
}

#[derive(Default)]
struct Sinks {
    by_id: HashMap<u64, Arc<Sink>>,
    /// `main` bundles: isolation key → sink id.
    by_key: HashMap<u64, u64>,
}

static SINKS: LazyLock<Mutex<Sinks>> = LazyLock::new(Default::default);

fn sinks() -> MutexGuard<'static, Sinks> {
    SINKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered sink; unregisters on drop. Owned by the bundle load it belongs to.
#[derive(Debug)]
pub(crate) struct OutputSink {
    id: u64,
    key: Option<BundleKey>,
}

impl OutputSink {
    /// Registers `bundle`'s output with `logger`; `key` for a `main`-mode load.
    pub(crate) fn register(logger: LoggerHandle, bundle: &str, key: Option<BundleKey>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut s = sinks();
        s.by_id.insert(
            id,
            Arc::new(Sink {
                logger,
                bundle: bundle.to_owned(),
            }),
        );
        if let Some(key) = key {
            s.by_key.insert(key.get(), id);
        }
        Self { id, key }
    }

    /// The id the bundle's writer is bound to: its own, or 0 (route by the running
    /// bundle) in the main interpreter.
    fn bound_id(&self) -> u64 {
        if self.key.is_some() {
            0
        } else {
            self.id
        }
    }
}

impl Drop for OutputSink {
    fn drop(&mut self) {
        let mut s = sinks();
        s.by_id.remove(&self.id);
        if let Some(key) = self.key {
            if s.by_key.get(&key.get()) == Some(&self.id) {
                s.by_key.remove(&key.get());
            }
        }
    }
}

/// Sends one line of `sink_id`'s output (0: the running `main` bundle's) to its logger;
/// `false` if there is no such sink (the writer then uses the stream it replaced).
fn log_line(sink_id: u64, stream: u64, line: &str) -> bool {
    let sink = {
        let s = sinks();
        let id = match sink_id {
            0 => match s.by_key.get(&isolation::current_key()) {
                Some(&id) => id,
                None => return false,
            },
            id => id,
        };
        match s.by_id.get(&id) {
            Some(sink) => Arc::clone(sink),
            None => return false,
        }
    };
    let bundle = sink.bundle.as_str();
    if stream == 1 {
        tracing::warn!(target: "polyplug_subinterp::guest", bundle, stream = "stderr", "{line}");
        sink.logger.log(LogLevel::Warn, bundle, || line.to_owned());
    } else {
        tracing::info!(target: "polyplug_subinterp::guest", bundle, stream = "stdout", "{line}");
        sink.logger.log(LogLevel::Info, bundle, || line.to_owned());
    }
    true
}

/// `emit(stream, line) -> bool` for sink `sink_id`: stream 0 is stdout, 1 stderr. Lone
/// surrogates, which UTF-8 cannot carry, are backslash-escaped rather than losing the line.
fn emit_fn<'py>(py: &'py Attached<'_>, sink_id: u64) -> interp_pool::Result<PyObj<'py>> {
    py.native_function(
        c"emit",
        c"emit(stream, line) -> bool: send one line of guest output to the runtime's logger",
        move |py, args| {
            let [stream, line] = args.positional() else {
                return Err(NativeError::type_error("emit takes (stream, line)"));
            };
            let stream = stream
                .extract_u64(py)
                .map_err(|_| NativeError::type_error("emit: bad sink id or stream"))?;
            if !line.is_str() {
                return Err(NativeError::type_error("emit: line must be a str"));
            }
            let text = line
                .extract_string_escaped(py)
                .map_err(|_| NativeError::type_error("emit: line cannot be encoded"))?;
            Ok(py.bool(log_line(sink_id, stream, &text)))
        },
    )
}

/// Installs the bundle's writers through the bootstrap namespace `boot`: its own in a
/// subinterpreter, the shared router in main (once per process).
pub(crate) fn install(
    py: &Attached<'_>,
    boot: &PyObj<'_>,
    sink: &OutputSink,
) -> interp_pool::Result<()> {
    let install = boot
        .get(py, "install_output")?
        .expect("bootstrap defines install_output");
    let emit = emit_fn(py, sink.bound_id())?;
    let key = if sink.key.is_some() {
        isolation::current_fn(py)?
    } else {
        py.none()
    };
    install.call(py, &[&emit, &key])?;
    Ok(())
}

/// Emits what the bundle wrote without a final newline (unload): inside its interpreter,
/// and, for a `main` bundle, inside its isolation scope.
pub(crate) fn flush_partial_lines(
    py: &Attached<'_>,
    key: Option<BundleKey>,
) -> interp_pool::Result<()> {
    let _scope = key.map(isolation::Scope::enter);
    let sys_mod = py.import("sys")?;
    for name in ["stdout", "stderr"] {
        let stream = sys_mod.getattr(py, name)?;
        // Absent if the guest replaced the stream itself (getattr's error is taken).
        if let Ok(drain) = stream.getattr(py, "_polyplug_drain") {
            drain.call(py, &[])?;
        }
    }
    Ok(())
}
