//! Memory accounting and limits per interpreter: what the MEM and OBJ domains' allocator
//! (`allocator.rs`) charges, and to whom.
//!
//! Each allocation is charged to the thread's *current account*, a thread-local: an owner
//! thread sets it to its interpreter's [`MemoryAccount`] when it starts (so interpreter
//! creation, every job and `Py_EndInterpreter` count there); in the shared main
//! interpreter the loader switches it per bundle with [`MemoryAccount::enter`]. The block
//! remembers that account in a 16-byte header in front of it ([`Header`]: the account's
//! slot, its generation and the block's size), so a free, which CPython passes no size
//! for, is credited to the account that was charged, whichever thread frees it and
//! whatever account that thread has: an owner's object freed on a thread a plugin started,
//! a bundle's object freed by another bundle in main, a main bundle's objects freed at
//! its release. A block allocated with no account current (threads a plugin starts) is
//! charged to none and credited to none.
//!
//! Accounts live in slots that are never freed (a slot is reused, under a new generation,
//! once its account is dropped), so a block that outlives its account is credited to
//! nothing when it is freed: the header's generation no longer matches.
//!
//! Limits: an allocation that would take its account past its limit returns NULL, which
//! CPython turns into `MemoryError` (its MemoryError instances are preallocated). Small
//! allocations (≤ [`SMALL`]) may go on into a reserve above the limit
//! ([`MemoryAccount::reserve`]), so the exception can propagate, tracebacks be built and
//! formatted and the next call be served while a plugin still holds its hoard. The RAW
//! domain (`PyMem_RawMalloc`: thread states, some runtime buffers) is neither counted nor
//! limited: CPython may abort when a RAW allocation fails.
//!
//! Cost per allocation or free: the header, and a thread-local update (bytes pending on
//! this thread for its account); the account's shared atomic counter is touched once per
//! 64 KiB of net change per thread ([`FLUSH`]), when the thread's account changes, and
//! for each free of a block charged to an account that is not the freeing thread's (one
//! relaxed atomic add). Not seen: memory an extension allocates with its own `malloc`
//! (numpy array data goes through numpy's `PyDataMem` handler, which defaults to
//! `malloc`), `mmap`, threads a plugin starts (no account is current there), the RAW
//! domain, and the allocator's own rounding of the charged size (request + header).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Allocations up to this size may use an account's reserve above its limit.
pub const SMALL: usize = 64 << 10;

/// The counters of one account. Leaked: a block's header may name it after its account
/// is gone; reused by later accounts under a new generation.
#[derive(Debug)]
#[repr(align(64))] // its own cache line: written on flushes and cross-account frees
pub(crate) struct Slot {
    live: AtomicIsize,
    peak: AtomicUsize,
    /// `usize::MAX`: no limit.
    limit: AtomicUsize,
    reserve: AtomicUsize,
    denied: AtomicU64,
    /// The generation of the account using it, in the high bits of a header's tag (low
    /// [`SIZE_BITS`] zero); bumped when the account is dropped.
    gen: AtomicU64,
}

/// One interpreter's (or one main-mode bundle's) allocations.
#[derive(Debug)]
pub struct MemoryAccount {
    slot: &'static Slot,
    /// `slot.gen` while this account owns the slot.
    gen: u64,
}

/// What a [`MemoryAccount`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUsage {
    /// Bytes allocated and not freed (MEM and OBJ domains: requested sizes plus a 16-byte
    /// header each).
    pub live: u64,
    /// The highest `live` seen (as of the last allocation that raised it).
    pub peak: u64,
    /// Allocations refused because of the limit.
    pub denied: u64,
    /// The limit, if one is set.
    pub limit: Option<u64>,
}

/// Bytes in front of every block the accounting allocator hands out.
pub(crate) const HEADER: usize = 16;

/// The low bits of a header's tag hold the block's size (header included): 1 TiB at most.
const SIZE_BITS: u32 = 40;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;

/// What a counted block remembers: whom it was charged to, and how much. 16 bytes, so the
/// block behind it keeps the allocator's 16-byte alignment.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Header {
    /// The charged account's slot; null: charged to none.
    slot: *const Slot,
    /// The slot's generation at allocation | the size charged.
    tag: u64,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER);

impl Header {
    fn size(self) -> isize {
        (self.tag & SIZE_MASK) as isize
    }

    fn gen(self) -> u64 {
        self.tag & !SIZE_MASK
    }
}

/// This thread's accounting state.
#[derive(Clone, Copy)]
struct Local {
    /// The account allocations on this thread are charged to (`None`: none).
    slot: Option<&'static Slot>,
    /// Its generation.
    gen: u64,
    /// Bytes charged to it on this thread and not yet added to its shared counter.
    pending: isize,
}

impl Local {
    /// Whether `h` was charged to this thread's account.
    fn owns(self, h: Header) -> bool {
        matches!(self.slot, Some(s) if std::ptr::eq(s, h.slot) && self.gen == h.gen())
    }

    /// Adds `delta` to the pending bytes, flushing them to the account past [`FLUSH`].
    #[inline(always)]
    fn add(&mut self, delta: isize) {
        let Some(s) = self.slot else { return };
        self.pending += delta;
        if !(-FLUSH..FLUSH).contains(&self.pending) {
            s.commit(self.pending);
            self.pending = 0;
        }
    }

    /// Whether the account may grow by `size` (the limit's check out of line: most
    /// accounts have none).
    #[inline(always)]
    fn admit(self, size: usize) -> bool {
        match self.slot {
            Some(s) if s.limit.load(Relaxed) != usize::MAX => s.admit(size, self.pending),
            _ => true,
        }
    }

    fn header(self, size: usize) -> Header {
        Header {
            slot: self.slot.map_or(std::ptr::null(), |s| s as *const Slot),
            tag: self.gen | size as u64,
        }
    }
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
            slot: None,
            gen: 0,
            pending: 0,
        })
    };
}

/// Makes `to` (a slot and its generation) this thread's account, first adding the pending
/// bytes to the old one; returns the old one.
fn switch(to: Option<(&'static Slot, u64)>) -> Option<(&'static Slot, u64)> {
    LOCAL.with(|c| {
        let l = c.get();
        if let Some(s) = l.slot.filter(|_| l.pending != 0) {
            s.commit(l.pending);
        }
        c.set(Local {
            slot: to.map(|t| t.0),
            gen: to.map_or(0, |t| t.1),
            pending: 0,
        });
        l.slot.map(|s| (s, l.gen))
    })
}

/// Credits a freed block to the account it was charged to: on this thread's pending bytes
/// if that is this thread's account, else on the account's counter, if the account is
/// still alive (its slot still has the block's generation).
#[inline(always)]
fn credit(h: Header) {
    if h.slot.is_null() {
        return;
    }
    if !LOCAL.with(|c| credit_here(c, h)) {
        credit_elsewhere(h.slot, h.tag);
    }
}

/// Credits a block charged to an account other than this thread's, if it is still alive.
#[cold]
#[inline(never)]
fn credit_elsewhere(slot: *const Slot, tag: u64) {
    let h = Header { slot, tag };
    // SAFETY: no CPython call; a non-null header slot is a leaked, never freed `Slot`.
    let s = unsafe { &*h.slot };
    if s.gen.load(Relaxed) == h.gen() {
        s.commit(-h.size());
    }
}

/// Allocates `size` bytes plus a [`Header`] with `alloc` (given the total), charges the
/// total to this thread's account and returns the block behind the header; NULL if the
/// account's limit refuses it or `alloc` fails.
#[inline(always)]
pub(crate) fn alloc_counted(size: usize, alloc: impl FnOnce(usize) -> *mut u8) -> *mut u8 {
    let Some(total) = size.checked_add(HEADER).filter(|t| *t as u64 <= SIZE_MASK) else {
        return std::ptr::null_mut();
    };
    // The thread-local is read again after `alloc`, rather than kept across it: fewer
    // registers to save on this path, which runs for every object CPython makes.
    if !LOCAL.with(|c| c.get().admit(total)) {
        return std::ptr::null_mut();
    }
    let base = alloc(total);
    if base.is_null() {
        return base;
    }
    LOCAL.with(|c| {
        let mut l = c.get();
        // SAFETY: no CPython call; `base` is a fresh, 16-byte aligned block of `total` ≥
        // HEADER bytes.
        unsafe { base.cast::<Header>().write(l.header(total)) };
        if l.slot.is_some() {
            l.add(total as isize);
            c.set(l);
        }
    });
    base.wrapping_add(HEADER)
}

/// Frees a block [`alloc_counted`] or [`realloc_counted`] returned with `free` (given
/// the block with its header), crediting its account.
///
/// # Safety
/// `ptr` is such a block, not yet freed, and `free` frees what `alloc` allocated.
#[inline(always)]
pub(crate) unsafe fn free_counted(ptr: *mut u8, free: impl FnOnce(*mut u8)) {
    let base = ptr.wrapping_sub(HEADER);
    // SAFETY: no CPython call; per the contract `base` is a live counted block's start.
    let h = unsafe { base.cast::<Header>().read() };
    let credited = h.slot.is_null() || LOCAL.with(|c| credit_here(c, h));
    free(base);
    if !credited {
        credit_elsewhere(h.slot, h.tag);
    }
}

/// Credits `h` to this thread's pending bytes if it was charged to this thread's account.
#[inline(always)]
fn credit_here(c: &Cell<Local>, h: Header) -> bool {
    let mut l = c.get();
    let mine = l.owns(h);
    if mine {
        l.add(-h.size());
        c.set(l);
    }
    mine
}

/// Resizes a block [`alloc_counted`] returned (or allocates one, for NULL) with
/// `realloc` (given the block with its header and the new total). The new block is
/// charged to this thread's account: the difference if the old one was too, else the
/// whole, and the old one credited to its own.
///
/// # Safety
/// `ptr` is null or a live counted block, and `realloc` reallocates what `alloc`
/// allocated (and allocates for NULL).
#[inline(always)]
pub(crate) unsafe fn realloc_counted(
    ptr: *mut u8,
    size: usize,
    realloc: impl FnOnce(*mut u8, usize) -> *mut u8,
) -> *mut u8 {
    if ptr.is_null() {
        return alloc_counted(size, |total| realloc(std::ptr::null_mut(), total));
    }
    let Some(total) = size.checked_add(HEADER).filter(|t| *t as u64 <= SIZE_MASK) else {
        return std::ptr::null_mut();
    };
    let base = ptr.wrapping_sub(HEADER);
    // SAFETY: no CPython call; per the contract `base` is a live counted block's start.
    let old = unsafe { base.cast::<Header>().read() };
    LOCAL.with(|c| {
        let mut l = c.get();
        let same = l.owns(old);
        let growth = match same {
            true => total.saturating_sub(old.size() as usize),
            false => total,
        };
        if growth > 0 && !l.admit(growth) {
            return std::ptr::null_mut();
        }
        let new = realloc(base, total);
        if new.is_null() {
            return new; // the old block is untouched
        }
        // SAFETY: no CPython call; `new` is a live, 16-byte aligned block of `total` ≥
        // HEADER bytes (its first bytes the old header, copied).
        unsafe { new.cast::<Header>().write(l.header(total)) };
        match same {
            true => l.add(total as isize - old.size()),
            false => l.add(total as isize),
        }
        c.set(l);
        if !same {
            credit(old); // not this thread's account: to its counter, if still alive
        }
        new.wrapping_add(HEADER)
    })
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static WANTED: AtomicBool = AtomicBool::new(true);

/// Whether the accounting allocator is installed in this process (this crate initialised
/// CPython, `PYTHONMALLOC` chose nothing, and accounting was not turned off first).
pub fn memory_accounting() -> bool {
    INSTALLED.load(Relaxed)
}

/// Asks for the accounting allocator (the default) or not. Takes effect only before this
/// crate initialises CPython (the first interpreter); returns whether the process will
/// then run (or already runs) as asked.
pub fn set_memory_accounting(on: bool) -> bool {
    WANTED.store(on, Relaxed);
    match super::allocator::decided() {
        false => true,
        true => memory_accounting() == on,
    }
}

/// Whether accounting is wanted (read once, by `allocator::install`).
pub(crate) fn wanted() -> bool {
    WANTED.load(Relaxed)
}

/// Records that the MEM and OBJ domains now count.
pub(crate) fn mark_installed() {
    INSTALLED.store(true, Relaxed);
}

/// Slots of dropped accounts, for reuse.
static FREE_SLOTS: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());

impl MemoryAccount {
    /// A new account with no limit.
    pub fn new() -> Arc<Self> {
        let reused = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let slot: &'static Slot = reused.unwrap_or_else(|| {
            Box::leak(Box::new(Slot {
                live: AtomicIsize::new(0),
                peak: AtomicUsize::new(0),
                limit: AtomicUsize::new(usize::MAX),
                reserve: AtomicUsize::new(0),
                denied: AtomicU64::new(0),
                gen: AtomicU64::new(0),
            }))
        });
        slot.live.store(0, Relaxed);
        slot.peak.store(0, Relaxed);
        slot.limit.store(usize::MAX, Relaxed);
        slot.reserve.store(0, Relaxed);
        slot.denied.store(0, Relaxed);
        let gen = slot.gen.load(Relaxed);
        Arc::new(Self { slot, gen })
    }

    /// Sets (or clears) the limit, in bytes. The reserve above it, for small allocations
    /// once the limit is reached, is 1/32 of the limit, between 1 and 16 MiB.
    pub fn set_limit(&self, limit: Option<usize>) {
        let reserve = limit.map_or(0, |l| (l / 32).clamp(1 << 20, 16 << 20));
        self.slot.reserve.store(reserve, Relaxed);
        self.slot.limit.store(limit.unwrap_or(usize::MAX), Relaxed);
    }

    /// The reserve above the limit (0 without a limit).
    pub fn reserve(&self) -> usize {
        self.slot.reserve.load(Relaxed)
    }

    /// What it has counted so far.
    pub fn usage(&self) -> MemoryUsage {
        let s = self.slot;
        let limit = s.limit.load(Relaxed);
        MemoryUsage {
            live: s.live.load(Relaxed).max(0) as u64,
            peak: s.peak.load(Relaxed) as u64,
            denied: s.denied.load(Relaxed),
            limit: (limit != usize::MAX).then_some(limit as u64),
        }
    }

    /// Charges this thread's allocations to `self` until the guard drops (then the
    /// previous account is current again). For code that runs one account's work on a
    /// thread shared with others (bundles in the main interpreter).
    pub fn enter(self: &Arc<Self>) -> AccountScope<'_> {
        let prev = switch(Some((self.slot, self.gen)));
        AccountScope { prev, _acct: self }
    }

    /// Makes `self` this thread's account for the rest of the thread's life (owner
    /// threads); the `Arc` is kept alive by the caller until [`clear_current`].
    pub(crate) fn make_current(self: &Arc<Self>) {
        switch(Some((self.slot, self.gen)));
    }
}

impl Drop for MemoryAccount {
    /// Retires the generation (later frees of its blocks credit nothing) and frees the
    /// slot for reuse.
    fn drop(&mut self) {
        self.slot.gen.fetch_add(1 << SIZE_BITS, Relaxed);
        FREE_SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.slot);
    }
}

impl Slot {
    #[cold]
    #[inline(never)]
    fn admit(&self, size: usize, pending: isize) -> bool {
        let limit = self.limit.load(Relaxed);
        if limit == usize::MAX {
            return true;
        }
        let live = (self.live.load(Relaxed) + pending).max(0) as usize;
        let after = live.saturating_add(size);
        let reserve = self.reserve.load(Relaxed);
        if after <= limit || (size <= SMALL && after <= limit.saturating_add(reserve)) {
            return true;
        }
        self.denied.fetch_add(1, Relaxed);
        false
    }

    /// Adds one thread's pending bytes (or one freed block) to the shared counter.
    /// Inline and call-free: on the allocation paths a call would make every allocation
    /// save registers for it.
    #[inline(always)]
    fn commit(&self, delta: isize) {
        let now = (self.live.fetch_add(delta, Relaxed) + delta).max(0) as usize;
        if delta > 0 {
            self.peak.fetch_max(now, Relaxed);
        }
    }
}

/// Clears this thread's account (an owner thread, as it ends), committing its bytes.
pub(crate) fn clear_current() {
    switch(None);
}

/// While alive, this thread's allocations are charged to one account.
#[derive(Debug)]
pub struct AccountScope<'a> {
    prev: Option<(&'static Slot, u64)>,
    _acct: &'a Arc<MemoryAccount>,
}

impl Drop for AccountScope<'_> {
    fn drop(&mut self) {
        switch(self.prev);
    }
}
