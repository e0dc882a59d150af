//! The allocator under CPython's MEM and OBJ domains, chosen process-wide before
//! `Py_InitializeEx` (so the main interpreter, every subinterpreter and every extension
//! module allocate through it).
//!
//! `runtime.rs` pre-initialises CPython with the C library's `malloc` (RAW domain: thread
//! states and runtime buffers stay there), then, still before initialisation, [`install`]
//! sets the MEM (`PyMem_Malloc`) and OBJ (`PyObject_Malloc`) domains to the chosen
//! [`Allocator`]: with accounting on (the default), functions that put a 16-byte header
//! in front of each block and charge it to the thread's account (`memory.rs`); with it
//! off, mimalloc's own functions (or, for `malloc`, CPython's as they are). Nothing is
//! installed when the host initialised Python or `PYTHONMALLOC` chose an allocator
//! ([`allocator`] says which case the process is in).
//!
//! mimalloc is linked into this crate (`libmimalloc-sys`: a static build, not the
//! process's `malloc`), so extension modules that pair `PyMem_Malloc` with `PyMem_Free`
//! work, and one that frees a `PyMem_*` block with the C library's `free` (or the reverse)
//! crashes, as it would under CPython's default pymalloc. Why mimalloc by default: it is
//! both faster than `malloc` and keeps less memory per ended interpreter (BENCHMARKS.md,
//! allocators). Its heaps are per thread, but any thread may free any block, so nothing
//! here assumes one thread per interpreter. mimalloc's thread-local is built with the
//! initial-exec TLS model (the loader's cdylib is marked `STATIC_TLS`): a C host that
//! `dlopen`s the cdylib relies on glibc's static TLS surplus (enough by default; a `ctypes`
//! load from Python works), which `libmimalloc-sys`'s `local_dynamic_tls` feature would
//! lift at a cost per allocation.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use super::memory;
use crate::capi::ffi::sys;

/// Which allocator serves CPython's MEM and OBJ domains (`set_allocator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Allocator {
    /// mimalloc, linked into this crate: the fastest and leanest measured (default).
    #[default]
    Mimalloc,
    /// The C library's `malloc`.
    Malloc,
}

/// The allocator this process runs CPython's MEM and OBJ domains on ([`allocator`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocatorInUse {
    /// Python has not been started by this crate yet.
    NotStarted,
    /// This crate's mimalloc ([`Allocator::Mimalloc`]).
    Mimalloc,
    /// The C library's `malloc` ([`Allocator::Malloc`]).
    Malloc,
    /// `PYTHONMALLOC` chose one of CPython's own; nothing wrapped, no accounting.
    PythonMalloc,
    /// The host initialised Python with its own choice; nothing wrapped, no accounting.
    Host,
}

impl AllocatorInUse {
    /// `"mimalloc"`, `"malloc"`, `"PYTHONMALLOC"`, `"host"` or `"not started"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not started",
            Self::Mimalloc => "mimalloc",
            Self::Malloc => "malloc",
            Self::PythonMalloc => "PYTHONMALLOC",
            Self::Host => "host",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Mimalloc,
            2 => Self::Malloc,
            3 => Self::PythonMalloc,
            4 => Self::Host,
            _ => Self::NotStarted,
        }
    }
}

impl std::fmt::Display for AllocatorInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An [`AllocatorInUse`] as a `u8` (0 until decided).
static IN_USE: AtomicU8 = AtomicU8::new(0);
/// The wanted [`Allocator`]: 0 mimalloc, 1 malloc.
static WANTED: AtomicU8 = AtomicU8::new(0);

/// The allocator CPython's MEM and OBJ domains run on in this process.
pub fn allocator() -> AllocatorInUse {
    AllocatorInUse::from_u8(IN_USE.load(Relaxed))
}

/// Asks for `allocator` (default [`Allocator::Mimalloc`]). Takes effect only before this
/// crate initialises CPython; returns whether the process will then run (or already
/// runs) on it.
pub fn set_allocator(allocator: Allocator) -> bool {
    WANTED.store(allocator as u8, Relaxed);
    !decided() || self::allocator() == in_use(allocator)
}

fn in_use(a: Allocator) -> AllocatorInUse {
    match a {
        Allocator::Mimalloc => AllocatorInUse::Mimalloc,
        Allocator::Malloc => AllocatorInUse::Malloc,
    }
}

/// Whether the allocator is decided (Python started, by us or by the host).
pub(crate) fn decided() -> bool {
    IN_USE.load(Relaxed) != 0
}

/// Records that the host initialised Python (its allocator, nothing wrapped).
pub(crate) fn host_initialised() {
    IN_USE.store(AllocatorInUse::Host as u8, Relaxed);
}

/// An allocator behind the header-charging functions (`memory::alloc_counted` & co).
trait Backend {
    fn malloc(size: usize) -> *mut u8;
    fn zalloc(size: usize) -> *mut u8;
    fn realloc(ptr: *mut u8, size: usize) -> *mut u8;
    fn free(ptr: *mut u8);
}

struct Mi;
struct Libc;

// The functions below are called by CPython on whatever thread allocates in the MEM or
// OBJ domain (with that interpreter's GIL held: R10 for its caller), and make no CPython
// call themselves: they call the allocator and touch only atomics and thread-locals.

// mimalloc's allocations for sizes ≤ `SMALL_MAX` (in the linked library; declared here
// rather than through `libmimalloc-sys`'s `extended` feature, which would add a crate):
// their small-size fast path inlined, where `mi_malloc` calls out to a function that first
// checks the size. CPython's objects are nearly all that small: 1.837 -> 1.777 M
// instructions per cruncher call with accounting (BENCHMARKS.md, allocators).
extern "C" {
    fn mi_malloc_small(size: usize) -> *mut c_void;
    fn mi_zalloc_small(size: usize) -> *mut c_void;
}

/// `MI_SMALL_SIZE_MAX`: 128 pointers.
const SMALL_MAX: usize = 128 * std::mem::size_of::<*mut c_void>();

impl Backend for Mi {
    #[inline(always)]
    fn malloc(size: usize) -> *mut u8 {
        if size <= SMALL_MAX {
            // SAFETY: no CPython call; mimalloc may be called on any thread, and `size` is
            // within `mi_malloc_small`'s bound.
            return unsafe { mi_malloc_small(size) }.cast();
        }
        // SAFETY: no CPython call; mimalloc may be called on any thread.
        unsafe { libmimalloc_sys::mi_malloc(size) }.cast()
    }
    #[inline(always)]
    fn zalloc(size: usize) -> *mut u8 {
        if size <= SMALL_MAX {
            // SAFETY: as above.
            return unsafe { mi_zalloc_small(size) }.cast();
        }
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_zalloc(size) }.cast()
    }
    #[inline(always)]
    fn realloc(ptr: *mut u8, size: usize) -> *mut u8 {
        // SAFETY: no CPython call; `ptr` is null or a live mimalloc block (the domain's
        // blocks all come from this backend: installed before any was allocated).
        unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), size) }.cast()
    }
    #[inline(always)]
    fn free(ptr: *mut u8) {
        // SAFETY: as in realloc; any thread may free a mimalloc block.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }
}

impl Backend for Libc {
    #[inline(always)]
    fn malloc(size: usize) -> *mut u8 {
        // SAFETY: no CPython call; the C library's malloc may be called on any thread.
        unsafe { libc::malloc(size) }.cast()
    }
    #[inline(always)]
    fn zalloc(size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe { libc::calloc(1, size) }.cast()
    }
    #[inline(always)]
    fn realloc(ptr: *mut u8, size: usize) -> *mut u8 {
        // SAFETY: no CPython call; `ptr` is null or a live block of the C library's malloc
        // (the domain's blocks all come from this backend).
        unsafe { libc::realloc(ptr.cast(), size) }.cast()
    }
    #[inline(always)]
    fn free(ptr: *mut u8) {
        // SAFETY: as in realloc.
        unsafe { libc::free(ptr.cast()) }
    }
}

extern "C" fn counted_malloc<B: Backend>(_ctx: *mut c_void, size: usize) -> *mut c_void {
    memory::alloc_counted(size, B::malloc).cast()
}

extern "C" fn counted_calloc<B: Backend>(
    _ctx: *mut c_void,
    nelem: usize,
    elsize: usize,
) -> *mut c_void {
    let Some(size) = nelem.checked_mul(elsize) else {
        return std::ptr::null_mut();
    };
    memory::alloc_counted(size, B::zalloc).cast()
}

extern "C" fn counted_realloc<B: Backend>(
    _ctx: *mut c_void,
    ptr: *mut c_void,
    size: usize,
) -> *mut c_void {
    // SAFETY: no CPython call; CPython passes null or a live block of this domain, which
    // `counted_malloc` & co. allocated (installed before the domain's first allocation).
    unsafe { memory::realloc_counted(ptr.cast(), size, B::realloc) }.cast()
}

extern "C" fn counted_free<B: Backend>(_ctx: *mut c_void, ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: as in counted_realloc.
    unsafe { memory::free_counted(ptr.cast(), B::free) }
}

// Accounting off: mimalloc as it is (CPython's `malloc` allocator needs no wrapper).

extern "C" fn mi_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    Mi::malloc(size).cast()
}

extern "C" fn mi_calloc(_ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    let Some(size) = nelem.checked_mul(elsize) else {
        return std::ptr::null_mut();
    };
    Mi::zalloc(size).cast()
}

extern "C" fn mi_realloc(_ctx: *mut c_void, ptr: *mut c_void, size: usize) -> *mut c_void {
    Mi::realloc(ptr.cast(), size).cast()
}

extern "C" fn mi_free(_ctx: *mut c_void, ptr: *mut c_void) {
    Mi::free(ptr.cast())
}

fn counted<B: Backend>() -> sys::PyMemAllocatorEx {
    sys::PyMemAllocatorEx {
        ctx: std::ptr::null_mut(),
        malloc: Some(counted_malloc::<B>),
        calloc: Some(counted_calloc::<B>),
        realloc: Some(counted_realloc::<B>),
        free: Some(counted_free::<B>),
    }
}

/// Sets the MEM and OBJ allocators; py-main, after `Py_PreInitialize` chose `malloc`
/// (`malloc_selected`: false when `PYTHONMALLOC` chose) and before `Py_InitializeEx`.
pub(crate) fn install(malloc_selected: bool) {
    if !malloc_selected {
        IN_USE.store(AllocatorInUse::PythonMalloc as u8, Relaxed);
        tracing::info!("memory accounting off: PYTHONMALLOC chose CPython's allocator");
        return;
    }
    let wanted = match WANTED.load(Relaxed) {
        0 => Allocator::Mimalloc,
        _ => Allocator::Malloc,
    };
    let accounting = memory::wanted();
    let mut ours = match (wanted, accounting) {
        (Allocator::Mimalloc, true) => counted::<Mi>(),
        (Allocator::Malloc, true) => counted::<Libc>(),
        (Allocator::Mimalloc, false) => sys::PyMemAllocatorEx {
            ctx: std::ptr::null_mut(),
            malloc: Some(mi_malloc),
            calloc: Some(mi_calloc),
            realloc: Some(mi_realloc),
            free: Some(mi_free),
        },
        (Allocator::Malloc, false) => {
            IN_USE.store(in_use(wanted) as u8, Relaxed);
            return;
        }
    };
    for domain in [
        sys::PyMemAllocatorDomain::PYMEM_DOMAIN_MEM,
        sys::PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ,
    ] {
        // SAFETY: R1: py-main, after pre-initialisation and before initialisation, when
        // CPython allows changing allocators; nothing has been allocated in this domain
        // yet (the pre-initialisation allocates with RAW), and CPython copies the struct.
        unsafe { sys::PyMem_SetAllocator(domain, &mut ours) };
    }
    if accounting {
        memory::mark_installed();
    }
    IN_USE.store(in_use(wanted) as u8, Relaxed);
    tracing::debug!(
        allocator = in_use(wanted).as_str(),
        accounting,
        "MEM and OBJ allocators installed"
    );
}
