//! Direct dispatch (`InterpreterConfig::direct`, ARCHITECTURE.md "Direct calls"): a caller
//! that finds the interpreter free, with nothing queued for it, claims it and runs the call
//! on its own thread, on a thread state of its own kept for that interpreter (`held.rs`);
//! otherwise the call is posted as usual. No hand-off, so N host threads use N cores even
//! when they outnumber the cores.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::capi::attach::{self, Attached};
use crate::error::Result;
use crate::owner::activation::DepthGuard;
use crate::owner::enter::{self, Kind};
use crate::owner::held::{self, Holding, Place};
use crate::owner::seat::HeldLane;
use crate::owner::wait::spin_until;
use crate::owner::worker::OwnerLink;

/// The least stack a thread must have left for a direct call: less, and the call is posted
/// (the owner thread has `InterpreterConfig::stack_size`).
pub(crate) const MIN_DIRECT_STACK: usize = 512 << 10;

/// CPython sizes its C recursion bound for this much stack (the owner threads' default).
const BOUND_FOR_STACK: usize = 8 << 20;

/// Kept free below the budget: Rust frames, signal handlers, the guard page.
const STACK_MARGIN: usize = 128 << 10;

/// Runs `f` on `link`'s interpreter on this thread if it is free and nothing is queued for
/// it; gives `f` back otherwise (the caller posts it).
pub(crate) fn try_run<R, F>(
    link: &Arc<OwnerLink>,
    depth: usize,
    f: F,
) -> std::result::Result<Result<R>, F>
where
    F: FnOnce(&Attached<'_>) -> Result<R>,
{
    if link.has_queued() {
        return Err(f);
    }
    let Some(levels) = recursion_budget() else {
        return Err(f);
    };
    if !link.claim.try_caller() && !wait_for_claim(link) {
        return Err(f);
    }
    let _claimed = Claimed(link);
    // One counter per direct call: `jobs_served` adds it to the queued jobs served.
    let counted = || {
        link.direct_calls.fetch_add(1, Ordering::Relaxed);
    };
    // SAFETY: R13: we hold the claim (`_claimed`), so the interpreter is alive and ours
    // to attach.
    unsafe { run_here(link, None, depth, Some(levels), counted, f) }
}

/// Runs `f` on this thread's host-thread state for `link`'s interpreter (made on first
/// use), marked held by this thread meanwhile (through main lane `lane`, for main), with
/// `levels` of C recursion for a fresh hold; `counted` runs once the call is sure to run
/// here. Deletes the states other threads gave up before letting go (`host.rs`). Gives `f`
/// back if CPython could not make a state.
///
/// # Safety
/// R13: this thread may attach the interpreter now and until this returns: it holds its
/// claim, or (main) a hold of `lane`, main living until finalize, which waits for direct
/// calls (`main_pool::close_all`).
pub(crate) unsafe fn run_here<R, F>(
    link: &Arc<OwnerLink>,
    lane: Option<Arc<dyn HeldLane>>,
    depth: usize,
    levels: Option<i32>,
    counted: impl FnOnce(),
    f: F,
) -> std::result::Result<Result<R>, F>
where
    F: FnOnce(&Attached<'_>) -> Result<R>,
{
    let Some(mut place) = held::state_for(link) else {
        return Err(f);
    };
    if lane.is_some() {
        place = Rc::new(Place {
            link: Arc::clone(link),
            target: Arc::clone(&place.target),
            lane,
        });
    }
    let target = &place.target;
    let _holding = Holding::push(Rc::clone(&place));
    let _depth = DepthGuard::enter(depth);
    counted();
    let run = |att: &Attached<'_>| {
        let out = f(att);
        // While we may still attach it: nobody else deletes given-up states then.
        link.hosts.delete_doomed(att);
        out
    };
    // SAFETY: R13: `target` is this thread's host-thread state for `link`'s interpreter,
    // made on this thread, which may attach it now (the caller's contract).
    let out = unsafe { enter::run_at(target, &link.memory, Kind::Host(levels), run) };
    Ok(out.and_then(|r| r))
}

/// Runs `f` on `place`, an interpreter this thread holds (a call re-entering it).
pub(crate) fn run_held<R>(
    place: &Place,
    depth: usize,
    f: impl FnOnce(&Attached<'_>) -> Result<R>,
) -> Result<R> {
    let _depth = DepthGuard::enter(depth);
    // SAFETY: R13: `place` is in this thread's held list: its host-thread state, made on
    // this thread, for an interpreter whose claim this thread holds.
    unsafe { enter::run_at(&place.target, &place.link.memory, Kind::Host(None), f) }.and_then(|r| r)
}

/// How long a direct caller that finds the interpreter held waits for it (yielding its core,
/// which lets a descheduled holder finish) before it posts instead: a short call's holder
/// lets go within it, and a hand-off would cost the caller a park and a wake-up.
const CONTENDED_WAIT: std::time::Duration = std::time::Duration::from_micros(50);

/// Waits up to [`CONTENDED_WAIT`] for the claim; true if this thread took it (nothing got
/// queued meanwhile: a direct call never overtakes a queued one).
fn wait_for_claim(link: &OwnerLink) -> bool {
    let free = || link.claim.is_free() || link.has_queued();
    spin_until(CONTENDED_WAIT, free, || true) && !link.has_queued() && link.claim.try_caller()
}

/// The claim of a direct call, let go on drop (waking the owner if work waits).
struct Claimed<'a>(&'a OwnerLink);

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.0.release_caller_claim();
    }
}

/// How many levels of C recursion a direct call may use on this thread's remaining stack
/// (CPython's bound, scaled from the 8 MiB it is sized for); `None` if too little is left.
pub(crate) fn recursion_budget() -> Option<i32> {
    let left = stack_left()?.checked_sub(STACK_MARGIN)?;
    if left < MIN_DIRECT_STACK {
        return None;
    }
    let limit = attach::c_recursion_limit().max(1) as usize;
    Some((limit * left.min(BOUND_FOR_STACK) / BOUND_FOR_STACK).max(1) as i32)
}

thread_local! {
    /// This thread's stack: its lowest address (stacks grow down here).
    static STACK_LOW: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Bytes of stack left below the current frame, if the platform says where the stack ends.
fn stack_left() -> Option<usize> {
    let low = match STACK_LOW.try_with(|c| c.get()).ok()? {
        Some(low) => low,
        None => {
            let low = stack_low()?;
            let _ = STACK_LOW.try_with(|c| c.set(Some(low)));
            low
        }
    };
    let here = &low as *const usize as usize;
    here.checked_sub(low)
}

#[cfg(target_os = "linux")]
fn stack_low() -> Option<usize> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: no CPython involved (no rule applies): pthread_self cannot fail.
    let me = unsafe { libc::pthread_self() };
    // SAFETY: no CPython involved: pthread_getattr_np fills `attr` for the calling thread;
    // it is destroyed below once read.
    if unsafe { libc::pthread_getattr_np(me, attr.as_mut_ptr()) } != 0 {
        return None;
    }
    let mut addr = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: `attr` was initialised by pthread_getattr_np above.
    let ok = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) } == 0;
    // SAFETY: `attr` is initialised and destroyed once.
    unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
    ok.then_some(addr as usize)
}

#[cfg(not(target_os = "linux"))]
fn stack_low() -> Option<usize> {
    None
}
