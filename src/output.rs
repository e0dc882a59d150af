//! Guest output: a bundle's `sys.stdout` / `sys.stderr` forward complete lines to the
//! runtime's logger (stdout → `Info`, stderr → `Warn`, scope = bundle name) and to
//! `tracing` (target `polyplug_subinterp::guest`), never to the host's streams.
//!
//! The writer is a Python class of the loader's bootstrap (`load.rs`, `GuestOutput`) that
//! buffers until a newline and calls [`EMIT`], a native function bound to an integer
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
use std::ffi::CStr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use interp_pool::{sys, Attached, NativeFunction, PyObj};
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

/// `emit(stream, line) -> bool`, bound to a sink id: stream 0 is stdout, 1 stderr.
pub(crate) static EMIT: NativeFunction = NativeFunction::fastcall(
    c"emit",
    emit,
    c"emit(stream, line) -> bool: send one line of guest output to the runtime's logger",
);

unsafe extern "C" fn emit(
    slf: *mut sys::PyObject,
    args: *mut *mut sys::PyObject,
    nargs: sys::Py_ssize_t,
) -> *mut sys::PyObject {
    let run = || -> Result<bool, &'static CStr> {
        if nargs != 2 {
            return Err(c"emit takes (stream, line)");
        }
        // SAFETY: thread: the owner thread of the interpreter running the writer (or a
        // plugin-started thread of it), which CPython calls us on; interp: that one;
        // tstate: attached (CPython calls C functions attached). refs: `slf` and
        // `args[..2]` are borrowed references valid for the call; `text` borrows
        // `line`'s UTF-8 buffer (owned by `line`) or `bytes` (owned by us, released
        // after use).
        unsafe {
            let sink_id = sys::PyLong_AsUnsignedLongLong(slf);
            let stream = sys::PyLong_AsUnsignedLongLong(*args);
            if !sys::PyErr_Occurred().is_null() {
                sys::PyErr_Clear();
                return Err(c"emit: bad sink id or stream");
            }
            let line = *args.add(1);
            if sys::PyUnicode_Check(line) == 0 {
                return Err(c"emit: line must be a str");
            }
            let mut len: sys::Py_ssize_t = 0;
            let p = sys::PyUnicode_AsUTF8AndSize(line, &mut len);
            if !p.is_null() {
                let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len as usize);
                return Ok(log_line(sink_id, stream, &String::from_utf8_lossy(bytes)));
            }
            // Lone surrogates cannot be UTF-8: escape them rather than lose the line.
            sys::PyErr_Clear();
            let bytes = sys::PyUnicode_AsEncodedString(
                line,
                c"utf-8".as_ptr(),
                c"backslashreplace".as_ptr(),
            );
            if bytes.is_null() {
                sys::PyErr_Clear();
                return Err(c"emit: line cannot be encoded");
            }
            let (mut buf, mut n) = (std::ptr::null_mut(), 0);
            let out = if sys::PyBytes_AsStringAndSize(bytes, &mut buf, &mut n) == 0 {
                let b = std::slice::from_raw_parts(buf.cast::<u8>(), n as usize);
                Ok(log_line(sink_id, stream, &String::from_utf8_lossy(b)))
            } else {
                sys::PyErr_Clear();
                Err(c"emit: line cannot be encoded")
            };
            sys::Py_DECREF(bytes);
            out
        }
    };
    match panic::catch_unwind(AssertUnwindSafe(run)) {
        // SAFETY: tstate: attached; returns a new reference to an immortal bool.
        Ok(Ok(done)) => unsafe { sys::PyBool_FromLong(done.into()) },
        // SAFETY: tstate: attached. Sets the error indicator; null return signals it.
        Ok(Err(msg)) => unsafe {
            sys::PyErr_SetString(sys::PyExc_TypeError, msg.as_ptr());
            std::ptr::null_mut()
        },
        // SAFETY: as above.
        Err(_) => unsafe {
            sys::PyErr_SetString(sys::PyExc_SystemError, c"Rust panic in emit".as_ptr());
            std::ptr::null_mut()
        },
    }
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
    let emit = py.native_function(&EMIT, &py.uint(sink.bound_id())?)?;
    let key = if sink.key.is_some() {
        py.native_function(&isolation::CURRENT_FN, &py.uint(0)?)?
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
