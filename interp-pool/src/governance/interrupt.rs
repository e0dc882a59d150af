//! The interrupt layer's base: what an interrupt is aimed at, and when it may be raised.
//!
//! An [`InterruptTarget`] is one owner thread state (an interpreter's owner, or one
//! main-pool seat): what an interrupter needs to reach it (the interpreter, the thread's
//! CPython ident, its `Thread` to unpark, the interrupt classes, R3's interrupt lock and the
//! ended flag) and the escalation tool's state. The owner creates and holds it and
//! registers it for its thread ([`register`]); nothing here knows the owner.
//!
//! An [`Activation`] is one interruptible call (nested or not): its own reason and its
//! own deferred flag. Each thread keeps a stack of frames: an activation, or a *barrier*
//! (a job of another caller served on top, or a wait on another interpreter). The rule:
//!
//! * An interrupt is **raised** (`PyThreadState_SetAsyncExc` on its thread) only while its
//!   activation is on top of its thread's stack: the innermost one executing there.
//!   `InterruptTarget::executing` mirrors the top (0 while a call's own cleanup runs),
//!   written by the owner only while it holds the interpreter's GIL, so an interrupter
//!   that checks it under the GIL raises into that activation and nothing else.
//! * Otherwise it is **deferred** on the activation, and the owner raises it on itself when
//!   control returns to that activation (the frame above it is popped: its nested wait
//!   completed, or an inner interruptible call returned), never after a job it served for
//!   someone else from its wait (the wait's barrier is still on top then).
//! * An async exception set for an activation that then pushes a frame (a wait, or an
//!   inner interruptible call; it may not have reached the eval loop yet: a ctypes call
//!   that released the GIL) is taken back and deferred, so what runs above cannot
//!   receive it.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, Thread};

use crate::capi::attach::{self, AttachGuard, Attached};
use crate::capi::ffi::{self, sys};
use crate::capi::object::PyObj;
use crate::error::Result;
use crate::InterpreterId;

/// Why a call is being interrupted, stored in an `AtomicU8` (first reason wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    None = 0,
    Cancelled = 1,
    TimedOut = 2,
}

impl Reason {
    fn load(cell: &AtomicU8) -> Self {
        match cell.load(Ordering::SeqCst) {
            1 => Reason::Cancelled,
            2 => Reason::TimedOut,
            _ => Reason::None,
        }
    }
}

/// One interruptible call's interrupt state, shared by its caller, its deadline or
/// token, its interrupter and the stack of the thread it runs on.
#[derive(Debug)]
pub(crate) struct Activation {
    pub(crate) id: u64,
    reason: AtomicU8,
    /// Interrupted while not on top of its thread's stack: raised by the thread itself
    /// when control returns to it (or by the interrupter's next round).
    deferred: AtomicBool,
}

impl Activation {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            reason: AtomicU8::new(Reason::None as u8),
            deferred: AtomicBool::new(false),
        }
    }

    /// Records `reason` if none was; whether it was the first.
    pub(crate) fn request(&self, reason: Reason) -> bool {
        self.reason
            .compare_exchange(
                Reason::None as u8,
                reason as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// Why it was interrupted (`Reason::None`: it was not).
    pub(crate) fn reason(&self) -> Reason {
        Reason::load(&self.reason)
    }
}

/// The escalation's state on one target (`escalate.rs`): which call, if any, has the
/// `sys.monitoring` tool turned on, and the tool id it uses.
#[derive(Debug, Default)]
pub(crate) struct ToolState {
    /// Id of the activation being stopped by the tool (0: none).
    pub(crate) traced: AtomicU64,
    /// The tool id in use while `traced != 0`.
    pub(crate) tool: AtomicU8,
}

/// One owner thread state that interrupts are raised in. Created on its thread by the
/// owner, which registers it there ([`register`]) and takes [`lock_out`] before ending
/// the interpreter or deleting the thread state.
///
/// [`lock_out`]: InterruptTarget::lock_out
#[derive(Debug)]
pub(crate) struct InterruptTarget {
    pub(crate) id: InterpreterId,
    /// `PyInterpreterState*`, for the interrupter's own thread state.
    interp: usize,
    /// The owner's `PyThreadState*` (attached briefly by `wait_nested` if found detached).
    ts: usize,
    /// CPython's ident of the owner thread (`PyThreadState_SetAsyncExc` targets it).
    ident: u64,
    thread: Thread,
    /// The interpreter's `interp_pool.DeadlineExceeded` / `Cancelled` classes.
    pub(crate) classes: InterruptClasses,
    /// R3's interrupt lock: held while an interrupter has a thread state in the
    /// interpreter, and by the owner before it ends the interpreter.
    lock: Mutex<()>,
    /// Set under `lock` once the interpreter (or this thread state) is gone.
    ended: AtomicBool,
    /// Id of the activation on top of the owner's stack (0: none, or a barrier). Written
    /// by the owner while attached.
    executing: AtomicU64,
    /// Id of the activation an async exception was last set on the owner for (0: none).
    pending: AtomicU64,
    pub(crate) tool: ToolState,
    /// Interrupter rounds aimed here (raised or deferred) and interrupter threads alive:
    /// probes for tests.
    rounds: AtomicU64,
    live: AtomicUsize,
}

impl InterruptTarget {
    /// On the owner thread, for its thread state `ts` in `interp`.
    pub(crate) fn new(
        id: InterpreterId,
        interp: *mut sys::PyInterpreterState,
        ts: *mut sys::PyThreadState,
        classes: InterruptClasses,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            interp: interp as usize,
            ts: ts as usize,
            ident: ffi::thread_ident(),
            thread: thread::current(),
            classes,
            lock: Mutex::new(()),
            ended: AtomicBool::new(false),
            executing: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            tool: ToolState::default(),
            rounds: AtomicU64::new(0),
            live: AtomicUsize::new(0),
        })
    }

    /// The thread state interrupts are raised in.
    pub(crate) fn ts(&self) -> *mut sys::PyThreadState {
        self.ts as _
    }

    /// Its interpreter.
    pub(crate) fn interp(&self) -> *mut sys::PyInterpreterState {
        self.interp as _
    }

    /// Keeps interrupters out while held (R3): the owner holds it from before it ends the
    /// interpreter (or deletes its thread state) until after [`mark_ended`](Self::mark_ended).
    pub(crate) fn lock_out(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`lock_out`](Self::lock_out) if nobody holds the lock now.
    pub(crate) fn try_lock_out(&self) -> Option<MutexGuard<'_, ()>> {
        match self.lock.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Under [`lock_out`](Self::lock_out): no interrupter attaches from now on.
    pub(crate) fn mark_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Whether `act` is the innermost activation executing on the owner.
    pub(crate) fn is_executing(&self, act: u64) -> bool {
        self.executing.load(Ordering::SeqCst) == act
    }

    /// Whether this target's thread state is the one attached on the current thread.
    pub(crate) fn is_own_thread_state(&self) -> bool {
        ffi::current_tstate() as usize == self.ts
    }

    /// On an interrupter thread: runs `f` attached to the interpreter through a thread
    /// state of its own (R3's one exception), unless the interpreter has ended. Holds
    /// the interrupt lock throughout.
    pub(crate) fn attach_foreign<R>(&self, f: impl FnOnce(&Attached<'_>) -> R) -> Option<R> {
        let _no_end = self.lock_out();
        if self.ended.load(Ordering::SeqCst) {
            return None;
        }
        // SAFETY: R3 (its one exception): thread: an interrupter, with no thread state of
        // its own. interp: alive and not ending while we hold the interrupt lock (the owner
        // takes it before Py_EndInterpreter and marks the end under it; checked above).
        unsafe { attach::with_foreign_thread_state(self.interp as _, self.id, f) }
    }

    /// On an interrupter thread: raises `act`'s interrupt in the owner if `act` is the
    /// innermost activation executing there; otherwise defers it on `act` (the owner
    /// raises it on itself when control returns to `act`). Whether it was raised.
    pub(crate) fn raise_attach_foreign(&self, act: &Activation) -> bool {
        // Pairs with `resume`: the owner stores `executing` and then takes `deferred`; we
        // store `deferred` and then load `executing`, so one of us sees the other.
        act.deferred.store(true, Ordering::SeqCst);
        if !self.is_executing(act.id) {
            return false;
        }
        let raise = |att: &Attached<'_>| {
            // `executing` is written only by the owner while attached: stable while we
            // hold the GIL. `deferred` false: the owner raised it itself meanwhile.
            if !self.is_executing(act.id) || !act.deferred.swap(false, Ordering::SeqCst) {
                return false;
            }
            self.set_async(att, act);
            true
        };
        let raised = self.attach_foreign(raise) == Some(true);
        if raised {
            // Wake the owner if it sleeps in `time.sleep` (`sleep.rs`).
            self.thread.unpark();
        }
        raised
    }

    /// Sets `act`'s interrupt class as the owner's async exception. The caller holds the
    /// interpreter's GIL (`_att`).
    fn set_async(&self, _att: &Attached<'_>, act: &Activation) {
        let class = self.classes.for_reason(act.reason());
        // SAFETY: R10: we hold the interpreter's GIL (`_att`); `class` is a class of this
        // interpreter kept alive by the pool until it ends (R3's interrupt lock keeps the
        // end out for an interrupter; the owner is inside a call); SetAsyncExc takes its
        // own reference and only flags the thread state with this ident.
        unsafe { sys::PyThreadState_SetAsyncExc(self.ident as _, class.as_ptr()) };
        self.pending.store(act.id, Ordering::SeqCst);
    }

    /// On the owner, attached: takes back an async exception set for `act` and not
    /// necessarily delivered yet. Whether there was one.
    pub(crate) fn take_back(&self, _att: &Attached<'_>, act: u64) -> bool {
        if act == 0
            || self
                .pending
                .compare_exchange(act, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return false;
        }
        // SAFETY: R10: the owner, attached (`_att`); a null exception clears any pending
        // async exception of the thread state with this ident (ours).
        unsafe { sys::PyThreadState_SetAsyncExc(self.ident as _, std::ptr::null_mut()) };
        true
    }

    /// Counts one interrupter round aimed here.
    pub(crate) fn count_round(&self) {
        self.rounds.fetch_add(1, Ordering::SeqCst);
    }

    /// Rounds counted so far.
    pub(crate) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// An interrupter thread aimed here started (`true`) or finished normally (`false`).
    pub(crate) fn interrupter_alive(&self, alive: bool) {
        if alive {
            self.live.fetch_add(1, Ordering::SeqCst);
        } else {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Interrupter threads started and not yet finished.
    pub(crate) fn live_interrupters(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// This thread's target and stack of frames (`None`: a barrier).
struct Frames {
    target: Option<Arc<InterruptTarget>>,
    stack: Vec<Option<Arc<Activation>>>,
}

thread_local! {
    static FRAMES: RefCell<Frames> = const {
        RefCell::new(Frames {
            target: None,
            stack: Vec::new(),
        })
    };
}

fn with_frames<R>(f: impl FnOnce(&mut Frames) -> R) -> Option<R> {
    FRAMES.try_with(|c| f(&mut c.borrow_mut())).ok()
}

/// Registers `target` as this thread's until dropped (the owner, for its whole life).
pub(crate) fn register(target: Arc<InterruptTarget>) -> Registration {
    with_frames(|f| f.target = Some(target));
    Registration(())
}

/// This thread's target registration; unregisters on drop.
pub(crate) struct Registration(());

/// Registers `target` as this thread's for one call made on it (a direct call, or a call
/// of the owner's own interpreter made while the thread ran another's): the previous
/// target and the frames above the current top are given back on drop.
pub(crate) fn register_scoped(target: Arc<InterruptTarget>) -> ScopedRegistration {
    let (prev, depth) =
        with_frames(|f| (f.target.replace(target), f.stack.len())).unwrap_or((None, 0));
    ScopedRegistration { prev, depth }
}

/// Whether this thread runs a call of interpreter `id` now, with the thread state it runs
/// it on attached (its own as the owner, or its host-thread state there).
pub(crate) fn runs_attached(id: InterpreterId) -> bool {
    with_frames(|f| {
        f.target
            .as_ref()
            .is_some_and(|t| t.id == id && t.is_own_thread_state())
    })
    .unwrap_or(false)
}

/// Whether `target` is this thread's registered target now.
pub(crate) fn is_registered(target: &Arc<InterruptTarget>) -> bool {
    with_frames(|f| f.target.as_ref().is_some_and(|t| Arc::ptr_eq(t, target))).unwrap_or(false)
}

/// See [`register_scoped`].
pub(crate) struct ScopedRegistration {
    prev: Option<Arc<InterruptTarget>>,
    depth: usize,
}

impl Drop for ScopedRegistration {
    fn drop(&mut self) {
        let prev = self.prev.take();
        let depth = self.depth;
        with_frames(|f| {
            f.target = prev;
            f.stack.truncate(depth);
        });
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        with_frames(|f| {
            f.target = None;
            f.stack.clear();
        });
    }
}

/// The activation executing innermost on this thread (on top of its stack) and its
/// target; `None` on a thread that is no owner, or while a barrier or nothing is on top.
pub(crate) fn innermost() -> Option<(Arc<InterruptTarget>, Arc<Activation>)> {
    with_frames(|f| {
        let act = f.stack.last()?.as_ref()?;
        Some((Arc::clone(f.target.as_ref()?), Arc::clone(act)))
    })
    .flatten()
}

/// Pushes a frame on this thread's stack, attached (`att`), and mirrors it in
/// `executing`. If an activation was on top, an async exception set for it is taken back
/// and deferred: the frame pushed must not receive it.
fn push(
    att: &Attached<'_>,
    target: &InterruptTarget,
    stack: &mut Vec<Option<Arc<Activation>>>,
    frame: Option<Arc<Activation>>,
) {
    if let Some(Some(below)) = stack.last() {
        if target.take_back(att, below.id) {
            below.deferred.store(true, Ordering::SeqCst);
        }
    }
    let id = frame.as_ref().map_or(0, |a| a.id);
    stack.push(frame);
    target.executing.store(id, Ordering::SeqCst);
}

/// Enters `act` on this thread (attached, `att`): from now on its interrupts are raised
/// here while it is on top. `None` on a thread with no target registered (running no call
/// of ours).
pub(crate) fn enter(att: &Attached<'_>, act: &Arc<Activation>) -> Option<Arc<InterruptTarget>> {
    with_frames(|f| {
        let target = Arc::clone(f.target.as_ref()?);
        push(att, &target, &mut f.stack, Some(Arc::clone(act)));
        Some(target)
    })
    .flatten()
}

/// Leaves `act`, the top of this thread's stack (attached, `att`): takes back an async
/// exception still set for it and pops it. Until [`resume`], which the caller runs once
/// the activation's own cleanup is done, no activation counts as executing here, so that
/// cleanup (Python included) receives no interrupt.
pub(crate) fn leave(att: &Attached<'_>, target: &InterruptTarget, act: &Activation) {
    target.take_back(att, act.id);
    target.executing.store(0, Ordering::SeqCst);
    with_frames(|f| {
        if let Some(pos) = f
            .stack
            .iter()
            .rposition(|fr| fr.as_ref().is_some_and(|a| a.id == act.id))
        {
            f.stack.truncate(pos);
        }
    });
}

/// Control returned to the top of this thread's stack (attached, `att`): mirrors it in
/// `executing`, and if it is an activation whose interrupt was deferred, raises it now,
/// on this thread.
pub(crate) fn resume(att: &Attached<'_>) {
    let top = with_frames(|f| {
        let target = Arc::clone(f.target.as_ref()?);
        let act = f.stack.last().cloned().flatten();
        target
            .executing
            .store(act.as_ref().map_or(0, |a| a.id), Ordering::SeqCst);
        Some((target, act?))
    })
    .flatten();
    let Some((target, act)) = top else {
        return;
    };
    // After storing `executing` (pairs with `raise_from_outside`).
    if act.deferred.swap(false, Ordering::SeqCst) {
        target.set_async(att, &act);
        tracing::debug!(interp = %target.id, call = act.id, "deferred interrupt raised");
    }
}

/// A barrier on this thread's stack over an activation: a job of another caller
/// ([`Barrier::job`]) or a wait on another interpreter ([`Barrier::wait`]). Pushed only
/// over an activation (otherwise there is nothing to shield), popped on drop, after which
/// the activation beneath resumes ([`resume`]).
#[must_use]
pub(crate) struct Barrier<'a> {
    /// Attached for a job's barrier; `None` for a wait's, which finds out on drop.
    att: Option<&'a Attached<'a>>,
    target: Option<Arc<InterruptTarget>>,
}

impl<'a> Barrier<'a> {
    /// Before a posted job runs, attached (`att`).
    pub(crate) fn job(att: &'a Attached<'a>) -> Self {
        let target = with_frames(|f| {
            if !matches!(f.stack.last(), Some(Some(_))) {
                return None;
            }
            let target = Arc::clone(f.target.as_ref()?);
            push(att, &target, &mut f.stack, None);
            Some(target)
        })
        .flatten();
        Self {
            att: Some(att),
            target,
        }
    }

    /// Before an owner thread waits on another interpreter, attached or not (a ctypes
    /// call may have detached it): if an activation is on top, the barrier is pushed with
    /// the owner's thread state attached (briefly re-attached if need be), so that the
    /// interrupter, which checks under the GIL, never raises into the wait.
    pub(crate) fn wait() -> Barrier<'static> {
        let target = with_frames(|f| {
            matches!(f.stack.last(), Some(Some(_)))
                .then(|| f.target.clone())
                .flatten()
        })
        .flatten();
        // Not pushed (and so not popped) if another thread state is attached here.
        let target = target.filter(|target| {
            with_own_thread_state(target, |att| {
                with_frames(|f| push(att, target, &mut f.stack, None));
            })
            .is_some()
        });
        Barrier { att: None, target }
    }
}

impl Drop for Barrier<'_> {
    fn drop(&mut self) {
        let Some(target) = &self.target else {
            return;
        };
        match self.att {
            Some(att) => pop_barrier(att),
            None => {
                with_own_thread_state(target, pop_barrier);
            }
        }
    }
}

fn pop_barrier(att: &Attached<'_>) {
    with_frames(|f| f.stack.pop());
    resume(att);
}

/// Runs `f` with `target`'s own thread state attached on this (its owner) thread:
/// already attached, or attached for the duration. Skipped (`None`) if another thread
/// state is attached here (an internal error, reported by the caller's own check).
fn with_own_thread_state<R>(
    target: &InterruptTarget,
    f: impl FnOnce(&Attached<'_>) -> R,
) -> Option<R> {
    let cur = ffi::current_tstate();
    if cur as usize == target.ts {
        // SAFETY: R10: this is the owner thread of `target` (its frames are ours) and its
        // own thread state is current, so it holds the interpreter's GIL throughout.
        Some(unsafe { Attached::scope(target.id, f) })
    } else if cur.is_null() {
        // SAFETY: R2/R4: thread: the owner of `target.ts` (it registered the target);
        // interp: alive (a call on this thread is inside it); tstate: none attached.
        let guard = unsafe { AttachGuard::attach(target.ts as _, target.id) };
        Some(f(&guard.token()))
    } else {
        None
    }
}

/// The interpreter's own `interp_pool.DeadlineExceeded` and `interp_pool.Cancelled`:
/// `BaseException` subclasses, so `except Exception:` does not swallow them, in a module
/// `interp_pool` of `sys.modules` so guest code can name them. Made once per interpreter
/// on its owner at creation; the pool keeps a strong reference to each until the
/// interpreter ends, so the interrupter can raise them without running Python.
#[derive(Debug)]
pub(crate) struct InterruptClasses {
    deadline: NonNull<sys::PyObject>,
    cancelled: NonNull<sys::PyObject>,
}

// SAFETY: R3/R10: the pointers are only dereferenced by CPython under their interpreter's
// GIL (the interrupter attaches first; `release` takes a token); the values themselves are
// just addresses.
unsafe impl Send for InterruptClasses {}
// SAFETY: as for Send.
unsafe impl Sync for InterruptClasses {}

const INTERRUPT_CLASSES: &str = r#"
class DeadlineExceeded(BaseException):
    """Raised inside a call that ran past its deadline (interp-pool)."""

class Cancelled(BaseException):
    """Raised inside a call whose cancel token was cancelled (interp-pool)."""
"#;

impl InterruptClasses {
    /// Makes the module and its classes in `att`'s interpreter.
    pub(crate) fn create(att: &Attached<'_>) -> Result<Self> {
        let module =
            att.import("types")?
                .call_method(att, "ModuleType", &[&att.str("interp_pool")?])?;
        att.run_in(INTERRUPT_CLASSES, &module.getattr(att, "__dict__")?)?;
        att.import("sys")?.getattr(att, "modules")?.call_method(
            att,
            "__setitem__",
            &[&att.str("interp_pool")?, &module],
        )?;
        let deadline = module.getattr(att, "DeadlineExceeded")?;
        let cancelled = module.getattr(att, "Cancelled")?;
        Ok(Self {
            deadline: deadline.into_non_null(),
            cancelled: cancelled.into_non_null(),
        })
    }

    /// New strong references to the same classes, for another thread state of the same
    /// interpreter (main-pool seats share main's classes).
    pub(crate) fn share(&self, att: &Attached<'_>) -> Self {
        let new_ref = |class: NonNull<sys::PyObject>| {
            // SAFETY: R11: `self` holds a strong reference to `class`, alive while `self`
            // is; R10: `att` proves the classes' interpreter is attached on this thread.
            unsafe { PyObj::from_borrowed_ptr(att, class) }.into_non_null()
        };
        Self {
            deadline: new_ref(self.deadline),
            cancelled: new_ref(self.cancelled),
        }
    }

    /// The class raised for `reason`.
    pub(crate) fn for_reason(&self, reason: Reason) -> NonNull<sys::PyObject> {
        if reason == Reason::TimedOut {
            self.deadline
        } else {
            self.cancelled
        }
    }

    /// Drops the pool's references, in the interpreter, before it ends.
    pub(crate) fn release(&self, att: &Attached<'_>) {
        for class in [self.deadline, self.cancelled] {
            // SAFETY: R11: we own one strong reference to each, taken in `create`; this
            // runs once, at the end of the interpreter's life, before Py_EndInterpreter.
            // R10: `att` proves its interpreter is attached.
            drop(unsafe { PyObj::from_owned_ptr(att, class.as_ptr()) });
        }
    }
}
