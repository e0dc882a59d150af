//! Memory accounting and limits per interpreter: what the MEM and OBJ domains' allocator
//! (`allocator.rs`) charges, and to whom.
//!
//! Each allocation is charged to the thread's *current account*, a thread-local: an owner
//! thread sets it to its interpreter's [`MemoryAccount`] when it starts (so interpreter
//! creation, every job and `Py_EndInterpreter` count there); in the shared main
//! interpreter the loader switches it per bundle with [`MemoryAccount::enter`]. The block
//! remembers that account in a 16-byte header in front of it ([`Header`]: the account's
//! token, its slot's index and generation in one word, and the block's size), so a free, which CPython passes no size
//! for, is credited to the account that was charged, whichever thread frees it and
//! whatever account that thread has: an owner's object freed on a thread a plugin started,
//! a bundle's object freed by another bundle in main, a main bundle's objects freed at
//! its release. A block allocated with no account current (threads a plugin starts) is
//! charged to none and credited to none.
//!
//! Accounts live in slots that are never freed (a slot is reused, under a new generation,
//! once its account is dropped), so a block that outlives its account is credited to
//! nothing when it is freed: the header's generation no longer matches. Nothing assumes
//! one thread per account: any thread may enter any account (host threads running an
//! interpreter's calls one after another, or switching accounts per call) and free any
//! block.
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
//! this thread for its account) with one comparison: on an allocation against `high`,
//! which folds the flush and the limit check into one bound, on a free against
//! −[`FLUSH`]. The account's shared atomic counter is touched once per 64 KiB of net
//! change per thread ([`FLUSH`]), when the thread's account changes, and for each free of
//! a block charged to an account that is not the freeing thread's (one relaxed atomic
//! add). The limit is checked exactly against the thread's own bytes and against other
//! threads' as of its last flush (each is ≤ 64 KiB ahead of the counter); a limit set
//! while an account is current on a thread is seen there within 64 KiB. Not seen: memory an extension allocates with its own `malloc`
//! (numpy array data goes through numpy's `PyDataMem` handler, which defaults to
//! `malloc`), `mmap`, threads a plugin starts (no account is current there), the RAW
//! domain, and the allocator's own rounding of the charged size (request + header).

use std::cell::Cell;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

/// Allocations up to this size may use an account's reserve above its limit.
pub const SMALL: usize = 64 << 10;

/// The counters of one account. Leaked in [`TABLE`]: a block's header may name it after
/// its account is gone; reused by later accounts under a new generation.
#[derive(Debug)]
#[repr(align(64))] // its own cache line: written on flushes and cross-account frees
pub(crate) struct Slot {
    live: AtomicIsize,
    peak: AtomicUsize,
    /// `usize::MAX`: no limit.
    limit: AtomicUsize,
    reserve: AtomicUsize,
    denied: AtomicU64,
    /// The generation of the account using it (≥ 1), the high bits of its [`Token`]s;
    /// bumped when the account is dropped.
    gen: AtomicU64,
}

/// An account as a block's header and a thread's state name it: its slot's index in
/// [`TABLE`] (low [`INDEX_BITS`]) and the slot's generation (the rest). Never 0: 0 is
/// "no account" (generations start at 1).
type Token = u64;

/// Slot indices: 16 M accounts alive at once.
const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Slots per leaked chunk of [`TABLE`].
const CHUNK: usize = 256;

/// Every slot ever made, by index: chunks of [`CHUNK`] leaked slots (a free, given only a
/// token, finds its account here). Chunk pointers are published with release ordering
/// under [`SLOTS`]'s lock, before any token names a slot in them.
static TABLE: [AtomicPtr<Slot>; (1 << INDEX_BITS) / CHUNK] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; (1 << INDEX_BITS) / CHUNK];

/// Slot allocation: indices of dropped accounts' slots, for reuse, and the next unused index.
static SLOTS: Mutex<(Vec<u32>, u32)> = Mutex::new((Vec::new(), 0));

/// The slot a token names; `None` for an index never handed out.
fn slot_of(token: Token) -> Option<&'static Slot> {
    let index = (token & INDEX_MASK) as usize;
    let chunk = TABLE[index / CHUNK].load(Acquire);
    if chunk.is_null() {
        return None;
    }
    let slot = chunk.wrapping_add(index % CHUNK);
    // SAFETY: no CPython call; a published chunk is a leaked `[Slot; CHUNK]`, never
    // freed, and `slot` is within it.
    Some(unsafe { &*slot })
}

/// One interpreter's (or one main-mode bundle's) allocations.
#[derive(Debug)]
pub struct MemoryAccount {
    slot: &'static Slot,
    /// The slot's index and generation while this account owns it; 0 if the slots ran out
    /// (then nothing is charged to it).
    token: Token,
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

/// The largest request counted: the size with its header stays an `isize`.
const MAX_REQUEST: usize = isize::MAX as usize - HEADER;

/// What a counted block remembers: whom it was charged to, and how much. 16 bytes, so the
/// block behind it keeps the allocator's 16-byte alignment.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Header {
    /// The charged account; 0: charged to none.
    token: Token,
    /// The size charged (request + header).
    size: usize,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER);

/// This thread's accounting state ([`tls::with`]): no lazy-init check, no destructor
/// (readable at any point of the thread's life), each field its own `Cell` so that a path
/// writes only what it changes.
#[repr(C)]
struct Local {
    /// The account allocations on this thread are charged to (0: none).
    token: Cell<Token>,
    /// Its slot (`None` with token 0).
    slot: Cell<Option<&'static Slot>>,
    /// Net bytes charged (+) and credited (−) to it on this thread and not yet added to
    /// its shared counter. With no account it drifts and is reset on the slow paths.
    pending: Cell<isize>,
    /// An allocation that takes `pending` above this goes the slow way (flush, limit
    /// check): [`FLUSH`], or less when the account's limit is nearer (see [`Local::sync`]);
    /// 0 until the thread's first sync.
    high: Cell<isize>,
}

/// This thread's [`Local`].
///
/// On x86-64 Linux it is a static TLS block of our own with the initial-exec model: one
/// `%fs`-relative address per access, in an executable and in the cdylib a C host
/// `dlopen`s alike, where a Rust `thread_local!` goes through `__tls_get_addr` (a call per
/// allocation and per free: +8% instructions on the cruncher call; stable Rust has no
/// `-Z tls-model`). mimalloc's own thread-local already makes the cdylib `STATIC_TLS`, so
/// this adds 32 bytes to the static TLS a `dlopen` needs. Zero-initialised: `high` 0 sends
/// the thread's first allocation down the slow path, whose sync sets it.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod tls {
    use super::Local;

    std::arch::global_asm!(
        ".section .tbss,\"awT\",@nobits",
        ".p2align 5",
        ".globl interp_pool_memory_local",
        ".hidden interp_pool_memory_local",
        ".type interp_pool_memory_local, @object",
        ".size interp_pool_memory_local, 32",
        "interp_pool_memory_local:",
        ".zero 32",
        ".previous",
    );

    const _: () = assert!(std::mem::size_of::<Local>() == 32);
    const _: () = assert!(std::mem::align_of::<Local>() <= 32);

    #[inline(always)]
    pub(super) fn with<R>(f: impl FnOnce(&Local) -> R) -> R {
        let offset: isize;
        // SAFETY: no CPython call; reads the symbol's GOT entry (its constant offset from
        // the thread pointer, filled by the dynamic linker: the initial-exec model).
        unsafe {
            std::arch::asm!(
                "mov {o}, qword ptr [rip + interp_pool_memory_local@GOTTPOFF]",
                o = out(reg) offset,
                options(pure, readonly, nostack, preserves_flags),
            )
        };
        let tp: *const u8;
        // SAFETY: no CPython call; on x86-64 Linux `%fs:0` holds the thread pointer itself.
        unsafe {
            std::arch::asm!(
                "mov {t}, qword ptr fs:[0]",
                t = out(reg) tp,
                options(pure, readonly, nostack, preserves_flags),
            )
        };
        let local = tp.wrapping_offset(offset).cast::<Local>();
        // SAFETY: no CPython call; `local` is this thread's 32 zero-initialised, 32-byte
        // aligned bytes for the symbol, alive as long as the thread, and only this
        // thread's code touches them (through `Cell`s: never two `&mut`); all-zero bytes
        // are a valid `Local` (0s, `None`).
        f(unsafe { &*local })
    }
}

/// This thread's [`Local`]: a const Rust thread-local without a destructor elsewhere.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod tls {
    use super::Local;
    use std::cell::Cell;

    thread_local! {
        static LOCAL: Local = const {
            Local {
                token: Cell::new(0),
                slot: Cell::new(None),
                pending: Cell::new(0),
                high: Cell::new(0),
            }
        };
    }

    #[inline(always)]
    pub(super) fn with<R>(f: impl FnOnce(&Local) -> R) -> R {
        LOCAL.with(f)
    }
}

/// A thread adds its pending bytes to the account's counter once they pass this (either
/// way), and whenever its account changes: the counter is touched about once per 64 KiB
/// allocated, not per allocation; readers from other threads may miss up to this much per
/// thread.
const FLUSH: isize = 64 << 10;

impl Local {
    /// Adds the pending bytes to the account's counter and sets `high` from what the
    /// limit leaves: `pending + size ≤ high` then means `live + pending + size ≤ limit`
    /// as of this sync. So the limit is checked against this thread's bytes exactly and
    /// against other threads' as of the last sync (each thread is ≤ [`FLUSH`] ahead of
    /// the counter), and a limit set while the account is current is seen within 64 KiB.
    #[cold]
    #[inline(never)]
    fn sync(&self) {
        let pending = self.pending.replace(0);
        let Some(s) = self.slot.get() else {
            self.high.set(FLUSH);
            return;
        };
        if pending != 0 {
            s.commit(pending);
        }
        let limit = s.limit.load(Relaxed);
        let high = match limit {
            usize::MAX => FLUSH,
            _ => isize::try_from(limit)
                .unwrap_or(isize::MAX)
                .saturating_sub(s.live.load(Relaxed))
                .min(FLUSH),
        };
        self.high.set(high);
    }

    /// Charges `delta` bytes (either sign; positive only after `admit`) to this thread's
    /// pending bytes, syncing past the bounds.
    #[inline(always)]
    fn charge(&self, delta: isize) {
        let p = self.pending.get() + delta;
        self.pending.set(p);
        if p > self.high.get() || p < -FLUSH {
            self.sync();
        }
    }

    /// The header of a block of `size` bytes (header included) charged here.
    #[inline(always)]
    fn header(&self, size: usize) -> Header {
        Header {
            token: self.token.get(),
            size,
        }
    }

    /// Whether the account may grow by `size` (the slow path of an allocation: syncs,
    /// then asks the limit).
    #[cold]
    #[inline(never)]
    fn admit(&self, size: usize) -> bool {
        self.sync();
        match self.slot.get() {
            Some(s) => s.admit(size),
            None => true,
        }
    }
}

/// Makes `to` (a slot and its token) this thread's account, first adding the pending
/// bytes to the old one; returns the old one. Nothing to do if `to` is current already.
fn switch(to: Option<(&'static Slot, Token)>) -> Option<(&'static Slot, Token)> {
    tls::with(|l| {
        let old = l.slot.get().map(|s| (s, l.token.get()));
        if old.map(|o| o.1) == to.map(|t| t.1) {
            return old;
        }
        l.sync();
        l.token.set(to.map_or(0, |t| t.1));
        l.slot.set(to.map(|t| t.0));
        l.sync();
        old
    })
}

/// Credits a block charged to an account other than this thread's, if it is still alive
/// (its slot still has the token's generation).
#[cold]
#[inline(never)]
fn credit_elsewhere(h: Header) {
    if h.token == 0 {
        return;
    }
    if let Some(s) = slot_of(h.token) {
        if s.gen.load(Relaxed) == h.token >> INDEX_BITS {
            s.commit(-(h.size as isize));
        }
    }
}

/// Allocates `size` bytes plus a [`Header`] with `alloc` (given the total), charges the
/// total to this thread's account and returns the block behind the header; NULL if the
/// account's limit refuses it or `alloc` fails.
///
/// The fast path: one thread-local read of `pending` against `high` (the flush and the
/// limit check in one comparison), the allocation, the header.
#[inline(always)]
pub(crate) fn alloc_counted(size: usize, alloc: impl FnOnce(usize) -> *mut u8) -> *mut u8 {
    if size > MAX_REQUEST {
        return std::ptr::null_mut();
    }
    let total = size + HEADER;
    tls::with(|l| {
        let p = l.pending.get() + total as isize;
        if p > l.high.get() {
            return alloc_slow(l, total, alloc);
        }
        // Charged before the allocation (and taken back if it fails): nothing to keep
        // across the call but the thread-local's address.
        l.pending.set(p);
        let base = alloc(total);
        if base.is_null() {
            l.pending.set(l.pending.get() - total as isize);
            return base;
        }
        // SAFETY: no CPython call; `base` is a fresh, 16-byte aligned block of `total` ≥
        // HEADER bytes.
        unsafe { base.cast::<Header>().write(l.header(total)) };
        base.wrapping_add(HEADER)
    })
}

/// [`alloc_counted`] past `high`: syncs, asks the limit, allocates, charges.
#[cold]
#[inline(never)]
fn alloc_slow(l: &Local, total: usize, alloc: impl FnOnce(usize) -> *mut u8) -> *mut u8 {
    if !l.admit(total) {
        return std::ptr::null_mut();
    }
    let base = alloc(total);
    if base.is_null() {
        return base;
    }
    // SAFETY: as in alloc_counted.
    unsafe { base.cast::<Header>().write(l.header(total)) };
    l.charge(total as isize);
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
    tls::with(|l| {
        if h.token == l.token.get() {
            let p = l.pending.get() - h.size as isize;
            l.pending.set(p);
            if p >= -FLUSH {
                return free(base);
            }
        }
        free_slow(l, h.token, h.size, base, free);
    })
}

/// [`free_counted`] past −[`FLUSH`] or for another account's block: syncs or credits
/// that account, then frees (out of line, so that the fast path saves no registers).
#[cold]
#[inline(never)]
fn free_slow(l: &Local, token: Token, size: usize, base: *mut u8, free: impl FnOnce(*mut u8)) {
    let h = Header { token, size };
    match h.token == l.token.get() {
        true => l.sync(), // `pending` has the credit already
        false => credit_elsewhere(h),
    }
    free(base);
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
    if size > MAX_REQUEST {
        return std::ptr::null_mut();
    }
    let total = size + HEADER;
    let base = ptr.wrapping_sub(HEADER);
    // SAFETY: no CPython call; per the contract `base` is a live counted block's start.
    let old = unsafe { base.cast::<Header>().read() };
    tls::with(|l| {
        let same = old.token == l.token.get();
        let growth = match same {
            true => total as isize - old.size as isize,
            false => total as isize,
        };
        if growth > 0 && l.pending.get() + growth > l.high.get() && !l.admit(growth as usize) {
            return std::ptr::null_mut();
        }
        let new = realloc(base, total);
        if new.is_null() {
            return new; // the old block is untouched
        }
        // SAFETY: no CPython call; `new` is a live, 16-byte aligned block of `total` ≥
        // HEADER bytes (its first bytes the old header, copied).
        unsafe { new.cast::<Header>().write(l.header(total)) };
        l.charge(growth);
        if !same {
            credit_elsewhere(old); // not this thread's account: to its counter, if alive
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

impl MemoryAccount {
    /// A new account with no limit.
    pub fn new() -> Arc<Self> {
        let (slot, token) = take_slot();
        slot.live.store(0, Relaxed);
        slot.peak.store(0, Relaxed);
        slot.limit.store(usize::MAX, Relaxed);
        slot.reserve.store(0, Relaxed);
        slot.denied.store(0, Relaxed);
        Arc::new(Self { slot, token })
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
    ///
    /// Cheap when `self` is current already (nothing is flushed); else the thread's
    /// pending bytes go to the old account's counter (one atomic add if any).
    pub fn enter(self: &Arc<Self>) -> AccountScope<'_> {
        let prev = switch(self.current());
        AccountScope { prev, _acct: self }
    }

    /// Makes `self` this thread's account for the rest of the thread's life (owner
    /// threads); the `Arc` is kept alive by the caller until [`clear_current`].
    pub(crate) fn make_current(self: &Arc<Self>) {
        switch(self.current());
    }

    /// What a thread names as its current account (`None`: the slots ran out).
    fn current(&self) -> Option<(&'static Slot, Token)> {
        (self.token != 0).then_some((self.slot, self.token))
    }
}

impl Drop for MemoryAccount {
    /// Retires the generation (later frees of its blocks credit nothing) and frees the
    /// slot for reuse.
    fn drop(&mut self) {
        if self.token == 0 {
            return;
        }
        self.slot.gen.fetch_add(1, Relaxed);
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push((self.token & INDEX_MASK) as u32);
    }
}

/// A slot for a new account and its token: a dropped account's, or a fresh one (a new
/// chunk of [`TABLE`] every [`CHUNK`]); an unlisted slot and token 0 (nothing charged)
/// if all 16 M are in use.
fn take_slot() -> (&'static Slot, Token) {
    let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    let index = match slots.0.pop() {
        Some(i) => i as usize,
        None if (slots.1 as u64) < 1 << INDEX_BITS => {
            let i = slots.1 as usize;
            slots.1 += 1;
            if i % CHUNK == 0 {
                let chunk: &'static mut [Slot; CHUNK] =
                    Box::leak(Box::new(std::array::from_fn(|_| Slot::new())));
                TABLE[i / CHUNK].store(chunk.as_mut_ptr(), Release);
            }
            i
        }
        None => return (Box::leak(Box::new(Slot::new())), 0),
    };
    let token = index as Token;
    match slot_of(token) {
        Some(slot) => (slot, slot.gen.load(Relaxed) << INDEX_BITS | token),
        None => (Box::leak(Box::new(Slot::new())), 0), // unreachable: published above
    }
}

impl Slot {
    fn new() -> Self {
        Self {
            live: AtomicIsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            reserve: AtomicUsize::new(0),
            denied: AtomicU64::new(0),
            gen: AtomicU64::new(1),
        }
    }

    /// Whether the account may grow by `size` (its counter just synced with this
    /// thread's bytes): within the limit, or within the reserve above it for a small
    /// allocation.
    fn admit(&self, size: usize) -> bool {
        let limit = self.limit.load(Relaxed);
        if limit == usize::MAX {
            return true;
        }
        let live = self.live.load(Relaxed).max(0) as usize;
        let after = live.saturating_add(size);
        let reserve = self.reserve.load(Relaxed);
        if after <= limit || (size <= SMALL && after <= limit.saturating_add(reserve)) {
            return true;
        }
        self.denied.fetch_add(1, Relaxed);
        false
    }

    /// Adds one thread's pending bytes (or one freed block) to the shared counter.
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
    prev: Option<(&'static Slot, Token)>,
    _acct: &'a Arc<MemoryAccount>,
}

impl Drop for AccountScope<'_> {
    fn drop(&mut self) {
        switch(self.prev);
    }
}
