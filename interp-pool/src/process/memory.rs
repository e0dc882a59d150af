//! Memory accounting and limits per interpreter: a wrapping allocator for CPython's MEM
//! and OBJ domains.
//!
//! `runtime.rs` pre-initialises CPython with the C library's `malloc` allocator; then,
//! still before `Py_InitializeEx`, [`install`] wraps the MEM (`PyMem_Malloc`) and OBJ
//! (`PyObject_Malloc`) domains with the functions below. Each allocation is attributed to
//! the thread's *current account*, a thread-local pointer: an owner thread sets it to its
//! interpreter's [`MemoryAccount`] when it starts (so interpreter creation, every job and
//! `Py_EndInterpreter` count there); in the shared main interpreter the loader switches it
//! per bundle with [`MemoryAccount::enter`]. Sizes are the C library's usable sizes
//! (`malloc_usable_size`), so a free, which CPython passes no size for, subtracts exactly
//! what its allocation added; a free is credited to the account current *on the freeing
//! thread* (an interpreter's objects are only freed on threads of that interpreter, so
//! for subinterpreters this is the allocating account; in main, where bundles share
//! objects, a free of another bundle's object is credited to the bundle running).
//!
//! Limits: an allocation that would take its account past its limit returns NULL, which
//! CPython turns into `MemoryError` (its MemoryError instances are preallocated). Small
//! allocations (≤ [`SMALL`]) may go on into a reserve above the limit
//! ([`MemoryAccount::reserve`]), so the exception can propagate, tracebacks be built and
//! formatted and the next call be served while a plugin still holds its hoard. The RAW
//! domain (`PyMem_RawMalloc`: thread states, some runtime buffers) is neither counted nor
//! limited: CPython may abort when a RAW allocation fails.
//!
//! Cost per allocation or free: `malloc_usable_size` and a thread-local update (bytes
//! pending on this thread); the account's shared atomic counter is touched once per
//! 64 KiB of net change per thread ([`FLUSH`]) and when the thread's account changes, so
//! no atomic is hammered per allocation, across cores or not. Measured ~5 ns per
//! allocation or free (BENCHMARKS.md). Not seen: memory an extension allocates with its own `malloc`
//! (numpy array data goes through numpy's `PyDataMem` handler, which defaults to
//! `malloc`), `mmap`, threads a plugin starts (no account is current there), and the RAW
//! domain.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::capi::ffi::sys;

/// Allocations up to this size may use an account's reserve above its limit.
pub const SMALL: usize = 64 << 10;

/// One interpreter's (or one main-mode bundle's) allocations.
#[derive(Debug)]
#[repr(align(64))] // its own cache line: written on every allocation of its thread
pub struct MemoryAccount {
    live: AtomicIsize,
    peak: AtomicUsize,
    /// `usize::MAX`: no limit.
    limit: AtomicUsize,
    reserve: AtomicUsize,
    denied: AtomicU64,
}

/// What a [`MemoryAccount`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUsage {
    /// Bytes allocated and not freed (MEM and OBJ domains, usable sizes).
    pub live: u64,
    /// The highest `live` seen (as of the last allocation that raised it).
    pub peak: u64,
    /// Allocations refused because of the limit.
    pub denied: u64,
    /// The limit, if one is set.
    pub limit: Option<u64>,
}

/// This thread's accounting state.
#[derive(Clone, Copy)]
struct Local {
    /// The account allocations on this thread are charged to (null: none).
    acct: *const MemoryAccount,
    /// Bytes charged to it on this thread and not yet added to its shared counter.
    pending: isize,
}

/// A thread adds its pending bytes to the account's counter once they reach this (either
/// way), and whenever its account changes: the counter is touched about once per 64 KiB
/// allocated, not per allocation; readers from other threads may miss up to this much per
/// thread. The thread's own limit checks see its pending bytes.
const FLUSH: isize = 64 << 10;

thread_local! {
    /// Const and without a destructor, so it is readable at any point of the thread's life.
    static LOCAL: Cell<Local> = const {
        Cell::new(Local {
            acct: std::ptr::null(),
            pending: 0,
        })
    };
}

/// The account `l` names. A non-null pointer is an account kept alive by whoever made it
/// current: an owner thread's `Arc` (cleared before it is dropped) or an
/// `AccountScope`'s borrow.
fn account<'a>(l: Local) -> Option<&'a MemoryAccount> {
    // SAFETY: no CPython call; see above for why a non-null pointer is live.
    unsafe { l.acct.as_ref() }
}

/// Makes `to` this thread's account, first adding the pending bytes to the old one;
/// returns the old one.
fn switch(to: *const MemoryAccount) -> *const MemoryAccount {
    LOCAL.with(|c| {
        let l = c.get();
        if let Some(a) = account(l) {
            a.commit(l.pending);
        }
        c.set(Local {
            acct: to,
            pending: 0,
        });
        l.acct
    })
}

/// Charges `delta` bytes to this thread's account, if it has one.
fn charge(delta: isize) {
    LOCAL.with(|c| {
        let mut l = c.get();
        let Some(a) = account(l) else { return };
        l.pending += delta;
        if l.pending >= FLUSH || l.pending <= -FLUSH {
            a.commit(l.pending);
            l.pending = 0;
        }
        c.set(l);
    })
}

/// Whether this thread's account may grow by `size` bytes (true without an account).
fn admit(size: usize) -> bool {
    let l = LOCAL.with(Cell::get);
    account(l).is_none_or(|a| a.admit(size, l.pending))
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static WANTED: AtomicBool = AtomicBool::new(true);

/// Whether the accounting allocator is installed in this process (this crate initialised
/// CPython, with the `malloc` allocator, and accounting was not turned off first).
pub fn memory_accounting() -> bool {
    INSTALLED.load(Relaxed)
}

/// Asks for the accounting allocator (the default) or not. Takes effect only before this
/// crate initialises CPython (the first interpreter); returns whether the process will
/// then run (or already runs) as asked.
pub fn set_memory_accounting(on: bool) -> bool {
    WANTED.store(on, Relaxed);
    match crate::process::runtime::initialised() {
        false => true,
        true => memory_accounting() == on,
    }
}

impl MemoryAccount {
    /// A new account with no limit.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            live: AtomicIsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            reserve: AtomicUsize::new(0),
            denied: AtomicU64::new(0),
        })
    }

    /// Sets (or clears) the limit, in bytes. The reserve above it, for small allocations
    /// once the limit is reached, is 1/32 of the limit, between 1 and 16 MiB.
    pub fn set_limit(&self, limit: Option<usize>) {
        let reserve = limit.map_or(0, |l| (l / 32).clamp(1 << 20, 16 << 20));
        self.reserve.store(reserve, Relaxed);
        self.limit.store(limit.unwrap_or(usize::MAX), Relaxed);
    }

    /// The reserve above the limit (0 without a limit).
    pub fn reserve(&self) -> usize {
        self.reserve.load(Relaxed)
    }

    /// What it has counted so far.
    pub fn usage(&self) -> MemoryUsage {
        let limit = self.limit.load(Relaxed);
        MemoryUsage {
            live: self.live.load(Relaxed).max(0) as u64,
            peak: self.peak.load(Relaxed) as u64,
            denied: self.denied.load(Relaxed),
            limit: (limit != usize::MAX).then_some(limit as u64),
        }
    }

    /// Charges this thread's allocations to `self` until the guard drops (then the
    /// previous account is current again). For code that runs one account's work on a
    /// thread shared with others (bundles in the main interpreter).
    pub fn enter(self: &Arc<Self>) -> AccountScope<'_> {
        let prev = switch(Arc::as_ptr(self));
        AccountScope { prev, _acct: self }
    }

    /// Makes `self` this thread's account for the rest of the thread's life (owner
    /// threads); the `Arc` is kept alive by the caller until [`clear_current`].
    pub(crate) fn make_current(self: &Arc<Self>) {
        switch(Arc::as_ptr(self));
    }

    fn admit(&self, size: usize, pending: isize) -> bool {
        let limit = self.limit.load(Relaxed);
        if limit == usize::MAX {
            return true;
        }
        let live = (self.live.load(Relaxed) + pending).max(0) as usize;
        let after = live.saturating_add(size);
        if after <= limit || (size <= SMALL && after <= limit.saturating_add(self.reserve())) {
            return true;
        }
        self.denied.fetch_add(1, Relaxed);
        false
    }

    /// Adds one thread's pending bytes to the shared counter.
    fn commit(&self, delta: isize) {
        if delta == 0 {
            return;
        }
        let now = (self.live.fetch_add(delta, Relaxed) + delta).max(0) as usize;
        if delta > 0 && now > self.peak.load(Relaxed) {
            self.peak.fetch_max(now, Relaxed);
        }
    }
}

/// Clears this thread's account (an owner thread, as it ends), committing its bytes.
pub(crate) fn clear_current() {
    switch(std::ptr::null());
}

/// While alive, this thread's allocations are charged to one account.
#[derive(Debug)]
pub struct AccountScope<'a> {
    prev: *const MemoryAccount,
    _acct: &'a Arc<MemoryAccount>,
}

impl Drop for AccountScope<'_> {
    fn drop(&mut self) {
        switch(self.prev);
    }
}

/// Whether this thread charges an account (only then are sizes looked up).
fn counting() -> bool {
    !LOCAL.with(Cell::get).acct.is_null()
}

fn usable(p: *mut c_void) -> usize {
    // SAFETY: no CPython call. `p` is a live block from the C library's malloc family (the wrapped
    // allocator is `malloc`: `install` checks that PYTHONMALLOC chose nothing else).
    unsafe { libc::malloc_usable_size(p) }
}

/// The allocator a domain had before we wrapped it (`ctx` of our functions).
struct Base(sys::PyMemAllocatorEx);

// The four functions below are called by CPython on whatever thread allocates in the MEM
// or OBJ domain (with that interpreter's GIL held: R10 for its caller), and make no
// CPython call themselves: they call the wrapped allocator and touch only atomics and the
// thread-local pointer.

extern "C" fn acct_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: `ctx` is the leaked `Base` `install` registered with these functions.
    let base = unsafe { &(*(ctx as *const Base)).0 };
    if !admit(size) {
        return std::ptr::null_mut();
    }
    let Some(f) = base.malloc else {
        return std::ptr::null_mut();
    };
    let p = f(base.ctx, size);
    if !p.is_null() && counting() {
        charge(usable(p) as isize);
    }
    p
}

extern "C" fn acct_calloc(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    // SAFETY: as in acct_malloc.
    let base = unsafe { &(*(ctx as *const Base)).0 };
    if !admit(nelem.saturating_mul(elsize)) {
        return std::ptr::null_mut();
    }
    let Some(f) = base.calloc else {
        return std::ptr::null_mut();
    };
    let p = f(base.ctx, nelem, elsize);
    if !p.is_null() && counting() {
        charge(usable(p) as isize);
    }
    p
}

extern "C" fn acct_realloc(ctx: *mut c_void, ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: as in acct_malloc.
    let base = unsafe { &(*(ctx as *const Base)).0 };
    let counted = counting();
    let old = if ptr.is_null() || !counted {
        0
    } else {
        usable(ptr)
    };
    if size > old && !admit(size - old) {
        return std::ptr::null_mut();
    }
    let Some(f) = base.realloc else {
        return std::ptr::null_mut();
    };
    let p = f(base.ctx, ptr, size);
    if !p.is_null() && counted {
        charge(usable(p) as isize - old as isize);
    }
    p
}

extern "C" fn acct_free(ctx: *mut c_void, ptr: *mut c_void) {
    // SAFETY: as in acct_malloc.
    let base = unsafe { &(*(ctx as *const Base)).0 };
    if ptr.is_null() {
        return;
    }
    let n = if counting() { usable(ptr) } else { 0 };
    if let Some(f) = base.free {
        f(base.ctx, ptr);
    }
    if n != 0 {
        charge(-(n as isize));
    }
}

/// Wraps the MEM and OBJ allocators; py-main, after `Py_PreInitialize` chose `malloc`
/// (`malloc_selected`) and before `Py_InitializeEx`. Off if accounting was turned off.
pub(crate) fn install(malloc_selected: bool) {
    if !WANTED.load(Relaxed) {
        return;
    }
    if !malloc_selected {
        tracing::info!("memory accounting off: PYTHONMALLOC chose CPython's allocator");
        return;
    }
    for domain in [
        sys::PyMemAllocatorDomain::PYMEM_DOMAIN_MEM,
        sys::PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ,
    ] {
        let mut old = sys::PyMemAllocatorEx {
            ctx: std::ptr::null_mut(),
            malloc: None,
            calloc: None,
            realloc: None,
            free: None,
        };
        // SAFETY: R1: py-main, after pre-initialisation and before initialisation, when
        // CPython allows changing allocators; `old` is a valid out-parameter.
        unsafe { sys::PyMem_GetAllocator(domain, &mut old) };
        // Leaked: CPython uses it until the process exits.
        let base: &'static Base = Box::leak(Box::new(Base(old)));
        let mut ours = sys::PyMemAllocatorEx {
            ctx: base as *const Base as *mut c_void,
            malloc: Some(acct_malloc),
            calloc: Some(acct_calloc),
            realloc: Some(acct_realloc),
            free: Some(acct_free),
        };
        // SAFETY: R1: as above; nothing has been allocated in this domain yet (the
        // pre-initialisation allocates with RAW), and CPython copies the struct.
        unsafe { sys::PyMem_SetAllocator(domain, &mut ours) };
    }
    INSTALLED.store(true, Relaxed);
    tracing::debug!("memory accounting allocator installed (MEM and OBJ domains)");
}
