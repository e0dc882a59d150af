//! The process-wide CPython runtime: initialised once, on a thread of its own that keeps
//! the main interpreter's thread state detached until the one finalize (R1, R9).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};
use once_cell::sync::OnceCell;

use crate::capi::attach;
use crate::capi::ffi::sys;
use crate::error::{Error, Result};

static RUNTIME: OnceCell<Result<Runtime>> = OnceCell::new();
/// Set by `shutdown`, before anything is torn down; never cleared (no re-initialise).
static SHUT_DOWN: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
pub(crate) struct Runtime {
    /// `None` if the host initialised Python before us: then we never finalize it.
    main: Mutex<Option<MainThread>>,
    /// Whether this crate ran `Py_InitializeEx` (fixed at start; `main` is taken at shutdown).
    owns: bool,
    creation: Mutex<()>,
}

/// The thread that ran `Py_InitializeEx` and holds main's detached thread state.
#[derive(Debug)]
struct MainThread {
    finalize: Sender<Sender<i32>>,
    join: JoinHandle<()>,
}

/// The runtime, initialising CPython on first use.
pub(crate) fn get() -> Result<&'static Runtime> {
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(Error::ShutDown);
    }
    RUNTIME
        .get_or_init(Runtime::start)
        .as_ref()
        .map_err(Clone::clone)
}

impl Runtime {
    fn start() -> Result<Self> {
        // SAFETY: Py_IsInitialized may be called at any time, on any thread.
        let main = if unsafe { sys::Py_IsInitialized() } != 0 {
            tracing::info!("CPython already initialised by the host; it keeps ownership");
            crate::process::allocator::host_initialised();
            None
        } else {
            Some(MainThread::start()?)
        };
        Ok(Self {
            owns: main.is_some(),
            main: Mutex::new(main),
            creation: Mutex::new(()),
        })
    }

    /// Serialises interpreter creation process-wide (R8).
    pub(crate) fn creation_lock(&self) -> MutexGuard<'_, ()> {
        self.creation.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MainThread {
    fn start() -> Result<Self> {
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (finalize_tx, finalize_rx) = crossbeam_channel::bounded(1);
        let join = thread::Builder::new()
            .name("py-main".into())
            .spawn(move || main_thread(ready_tx, finalize_rx))
            .map_err(|e| Error::Init(format!("cannot start the py-main thread: {e}")))?;
        match ready_rx.recv() {
            Ok(()) => Ok(Self {
                finalize: finalize_tx,
                join,
            }),
            Err(_) => Err(Error::Init(
                "py-main thread exited during Py_InitializeEx".into(),
            )),
        }
    }
}

/// Makes libpython's symbols global even if our code arrived through `dlopen(RTLD_LOCAL)`
/// (a C host loading the loader's cdylib): C extension modules such as `_ctypes` do not
/// link libpython and expect its symbols in the global namespace.
#[cfg(target_os = "linux")]
fn promote_libpython() {
    let Ok(name) = std::ffi::CString::new(env!("INTERP_POOL_LIBPYTHON")) else {
        return;
    };
    // SAFETY: no CPython call (no rule applies), only dlopen(3)'s contract: `name` is a
    // NUL-terminated string alive for the call, and RTLD_NOLOAD only re-flags an already
    // loaded library (ours is, via DT_NEEDED); it runs no initialisers and the handle is
    // deliberately kept.
    let handle = unsafe {
        libc::dlopen(
            name.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_GLOBAL,
        )
    };
    if handle.is_null() {
        tracing::debug!(
            lib = env!("INTERP_POOL_LIBPYTHON"),
            "could not re-open libpython RTLD_GLOBAL"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn promote_libpython() {}

/// `(major, minor)` of the libpython this process runs.
pub fn python_version() -> (u32, u32) {
    // `Py_Version` is a constant; `Py_GetVersion()` would rebuild a shared static buffer
    // on every call, which concurrent callers read torn.
    // SAFETY: reads an immutable exported constant; valid at any time, on any thread.
    let hex = unsafe { sys::Py_Version } as u32;
    (hex >> 24, (hex >> 16) & 0xff)
}

/// Pre-initialises CPython to allocate with the C library's `malloc` instead of pymalloc,
/// unless the user chose an allocator with `PYTHONMALLOC`.
///
/// Why: with pymalloc, CPython 3.12.1 and 3.13.0 keep ~1.7–2.7 MiB of obmalloc arenas per
/// ended own-GIL interpreter (200 create/import/destroy cycles: +541 MiB), so every
/// unload or reload leaks that much. With `malloc` the same cycles grow by 62 MiB, and the
/// per-call cost measured the same (`timeit` of the call path's ctypes/object work: 360 vs
/// 365 ns; a pure-Python loop 126 vs 110 µs). See BENCHMARKS.md, load/unload cycles.
/// Returns whether the `malloc` allocator was selected.
fn pre_initialize() -> bool {
    if std::env::var_os("PYTHONMALLOC").is_some() {
        return false;
    }
    /// `PYMEM_ALLOCATOR_MALLOC` in pymem.h (stable since 3.8).
    const PYMEM_ALLOCATOR_MALLOC: std::ffi::c_int = 3;
    let mut pre = std::mem::MaybeUninit::<sys::PyPreConfig>::zeroed();
    // SAFETY: R1: thread: py-main, before any other CPython call of the process (only
    // pre-initialisation, allowed before Py_Initialize). `pre` is a writable PyPreConfig
    // that PyPreConfig_InitPythonConfig fills completely.
    unsafe { sys::PyPreConfig_InitPythonConfig(pre.as_mut_ptr()) };
    // SAFETY: filled in completely just above.
    let pre = unsafe { pre.assume_init_mut() };
    pre.allocator = PYMEM_ALLOCATOR_MALLOC;
    // As Py_InitializeEx's own (compat) pre-config: never touch the host's locale.
    pre.parse_argv = 0;
    pre.coerce_c_locale = 0;
    pre.coerce_c_locale_warn = 0;
    // SAFETY: R1: as above, py-main before initialisation; `pre` is a valid pre-config.
    let status = unsafe { sys::Py_PreInitialize(pre) };
    match crate::capi::ffi::status_result(status) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("could not select the malloc allocator ({e}); using pymalloc");
            false
        }
    }
}

fn main_thread(ready: Sender<()>, finalize: Receiver<Sender<i32>>) {
    promote_libpython();
    let malloc = pre_initialize();
    // MEM and OBJ on the chosen allocator, still before initialisation (`allocator.rs`).
    crate::process::allocator::install(malloc);
    // SAFETY: R1: thread: py-main, the only thread initialising (OnceCell). tstate: none.
    // Py_InitializeEx(0) installs no signal handlers; afterwards main's tstate is
    // attached on this thread.
    unsafe { sys::Py_InitializeEx(0) };
    // SAFETY: R1: main's tstate is attached here; detach it at once and keep it detached.
    let main_ts = unsafe { attach::detach_created() };
    tracing::debug!("CPython initialised; main interpreter detached");
    let _ = ready.send(());
    // Wait for `shutdown`; if it never comes the process exits without finalizing.
    let Ok(reply) = finalize.recv() else { return };
    // SAFETY: R9: thread: py-main, which initialised. tstate: none attached; `main_ts`
    // is main's, saved above. Every interpreter has ended (shutdown joined them).
    let rc = unsafe { attach::finalize(main_ts) };
    let _ = reply.send(rc);
}

/// Marks the runtime shut down (no new interpreters, no re-initialise); `false` if it
/// already was. The first step of [`shutdown`](crate::shutdown).
pub(crate) fn begin_shutdown() -> bool {
    !SHUT_DOWN.swap(true, Ordering::AcqRel)
}

/// The runtime if it started, for `shutdown` (which must not start it).
pub(crate) fn started() -> Option<&'static Runtime> {
    match RUNTIME.get() {
        Some(Ok(rt)) => Some(rt),
        _ => None,
    }
}

impl Runtime {
    /// The last step of `shutdown`, once every interpreter has ended: finalizes CPython
    /// on py-main if this crate initialised it (R9).
    pub(crate) fn finalize(&self) {
        let main = self.main.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(main) = main {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if main.finalize.send(tx).is_ok() {
                if let Ok(rc) = rx.recv() {
                    if rc != 0 {
                        tracing::warn!(rc, "Py_FinalizeEx reported an error");
                    }
                }
            }
            let _ = main.join.join();
        }
    }
}

/// Whether this crate initialised CPython in this process (and so owns the main
/// interpreter and will finalize it). `false` if the host had initialised Python first, or
/// if the pool has not started yet (nothing spawned, no [`InterpreterHandle::main`](crate::InterpreterHandle::main)).
pub fn owns_python() -> bool {
    matches!(RUNTIME.get(), Some(Ok(rt)) if rt.owns)
}

/// Whether [`shutdown`] has been called.
pub fn is_shut_down() -> bool {
    SHUT_DOWN.load(Ordering::Acquire)
}
