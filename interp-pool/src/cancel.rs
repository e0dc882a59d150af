//! Deadlines and cancellation: interrupting a running call inside its interpreter.
//!
//! An interrupt is an asynchronous exception (`PyThreadState_SetAsyncExc`) raised in the
//! owner thread at its next bytecode boundary, so `finally` blocks run and the
//! interpreter stays usable. Setting it needs that interpreter's GIL, which the busy
//! owner holds; so a short-lived `py-interrupt` thread creates a thread state of its own
//! in the interpreter, attaches (CPython makes the owner drop the GIL within its switch
//! interval, 5 ms), checks under the GIL that the same call is still running, sets the
//! exception and deletes its thread state. That is the one exception to R3, guarded by
//! `OwnerLink::interrupt_lock`, which the owner also takes before ending the interpreter.
//!
//! Code that never returns to the bytecode loop while holding the GIL (a C extension's
//! own loop) cannot be interrupted; the caller keeps waiting until it returns, and the
//! `py-interrupt` thread with it. Blocking calls that release the GIL (socket reads,
//! `select`, `threading` waits) are interrupted when they return; `time.sleep` wakes at
//! once where `sleep.rs`'s replacement is installed. The interrupter stays until the call
//! finishes: it re-raises after a grace period and then turns on `escalate.rs`'s last step.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use crate::activation;
use crate::attach::{self, Attached};
use crate::error::{Error, Result};
use crate::escalate;
use crate::ffi::sys;
use crate::object::PyObj;
use crate::worker::OwnerLink;

/// How a call may be cut short. `CallOptions::default()` is a plain call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Interrupt the call if it has not finished this long after it was made.
    pub timeout: Option<Duration>,
    /// Interrupt the call when this token is cancelled (from any thread).
    pub cancel: Option<CancelToken>,
    /// How long an interrupted call may go on before it is interrupted again, and after
    /// a second grace period stopped in a way `except` cannot absorb (`escalate.rs`).
    /// `None`: [`DEFAULT_GRACE`].
    pub grace: Option<Duration>,
}

/// The default [`CallOptions::grace`]: 100 ms.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(100);

impl CallOptions {
    /// Whether the call needs any interrupt machinery at all.
    pub(crate) fn is_plain(&self) -> bool {
        self.timeout.is_none() && self.cancel.is_none()
    }
}

/// Cancels the calls it was given to, from any thread. Cheap to clone. Once cancelled it
/// stays cancelled: calls made with it afterwards fail at once with
/// [`Error::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<TokenInner>);

#[derive(Debug, Default)]
struct TokenInner {
    cancelled: AtomicBool,
    calls: Mutex<Vec<Weak<Interruptible>>>,
}

impl CancelToken {
    /// A fresh, uncancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Interrupts every call running or queued with this token. Returns at once; the
    /// interrupted callers get [`Error::Cancelled`] when their interpreter lets go.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let calls = std::mem::take(&mut *self.lock());
        for c in calls.iter().filter_map(Weak::upgrade) {
            c.request(Reason::Cancelled);
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Interruptible>>> {
        self.0.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn track(&self, ctl: &Arc<Interruptible>) {
        let mut calls = self.lock();
        calls.retain(|w| w.strong_count() > 0);
        calls.push(Arc::downgrade(ctl));
        drop(calls);
        if self.is_cancelled() {
            ctl.request(Reason::Cancelled);
        }
    }
}

/// Why a call is being interrupted, stored in an `AtomicU8` (first reason wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reason {
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

/// One interruptible call.
#[derive(Debug)]
pub(crate) struct Interruptible {
    id: u64,
    reason: AtomicU8,
    timeout: Duration,
    grace: Duration,
    /// Set when the call has finished on its owner (or was cut short before starting):
    /// the interrupter stops escalating.
    done: Mutex<bool>,
    done_cv: Condvar,
    /// The owner running the call, bound when it starts there (a group's call may run on
    /// any member); `None` while queued.
    link: Mutex<Option<Arc<OwnerLink>>>,
}

impl Interruptible {
    pub(crate) fn new(opts: &CallOptions) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let ctl = Arc::new(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            reason: AtomicU8::new(Reason::None as u8),
            timeout: opts.timeout.unwrap_or_default(),
            grace: opts.grace.unwrap_or(DEFAULT_GRACE),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
            link: Mutex::new(None),
        });
        if let Some(token) = &opts.cancel {
            token.track(&ctl);
        }
        ctl
    }

    /// The error the call ends with if it was interrupted.
    pub(crate) fn interrupted(&self) -> Option<Error> {
        match Reason::load(&self.reason) {
            Reason::Cancelled => Some(Error::Cancelled),
            Reason::TimedOut => Some(Error::Timeout {
                after: self.timeout,
            }),
            Reason::None => None,
        }
    }

    /// Records the first reason and, if the call is running, has it interrupted.
    fn request(self: &Arc<Self>, reason: Reason) {
        if self
            .reason
            .compare_exchange(
                Reason::None as u8,
                reason as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            return;
        }
        // Pairs with `run`: either it sees our reason before starting (no link yet, or
        // not yet running), or we see it bound and running.
        let Some(link) = self.bound() else { return };
        if self.is_done() {
            return;
        }
        let ctl = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("py-interrupt".into())
            .spawn(move || ctl.interrupt_until_done(&link));
        if let Err(e) = spawned {
            tracing::error!("cannot start an interrupt thread: {e}");
        }
    }

    fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the call finished and wakes its interrupter.
    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.done_cv.notify_all();
    }

    /// Waits up to `d` for the call to finish; whether it did.
    fn wait_done(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            done = self
                .done_cv
                .wait_timeout(done, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// On a `py-interrupt` thread, once the call is interrupted: raise the interrupt; if
    /// the call still runs a grace period later, raise it again; after each further grace
    /// period, turn the last step on (`escalate.rs`: raising on every line of the call)
    /// and raise again, until the call has finished.
    fn interrupt_until_done(&self, link: &Arc<OwnerLink>) {
        let reason = Reason::load(&self.reason) as u8;
        let mut round = 0u32;
        loop {
            // If a job the owner serves while this call waits under it (nested) is
            // running now, the owner raises it on itself when that job returns
            // (`Owner::run_posted`).
            link.deferred_interrupt
                .store(self.id << 2 | u64::from(reason), Ordering::SeqCst);
            if round >= 2 {
                self.escalate_in_owner(link, reason);
            }
            self.raise_in_owner(link);
            if self.wait_done(self.grace) {
                return;
            }
            round += 1;
            tracing::debug!(interp = %link.id, call = self.id, round, "interrupted call still running");
        }
    }

    /// Turns the last step on for this call if it is the one running on the owner.
    fn escalate_in_owner(&self, sh: &Arc<OwnerLink>, reason: u8) {
        let _no_end = sh.interrupt_lock.lock().unwrap_or_else(|e| e.into_inner());
        if sh.is_ended()
            || sh.running.load(Ordering::SeqCst) != self.id
            || escalate::is_traced(sh, self.id)
        {
            return;
        }
        let interp = sh.interp_ptr as *mut sys::PyInterpreterState;
        let on = |att: &Attached<'_>| {
            if sh.running.load(Ordering::SeqCst) != self.id {
                return Ok(false);
            }
            escalate::enable(att, sh, self.id, reason)
        };
        // SAFETY: R3 (its one exception), as in `raise_in_owner`: a fresh py-interrupt
        // thread with no thread state; the interpreter cannot end while we hold
        // `interrupt_lock`, and has not (checked above).
        let out = unsafe { attach::with_foreign_thread_state(interp, sh.id, on) };
        match out {
            Some(Ok(true)) => {
                tracing::warn!(interp = %sh.id, call = self.id, "interrupted call swallowed its interrupt; raising it on every line until it returns");
            }
            Some(Ok(false)) => {
                tracing::warn!(interp = %sh.id, call = self.id, "interrupted call still running; no sys.monitoring tool id free to stop it");
            }
            Some(Err(e)) => {
                tracing::warn!(interp = %sh.id, call = self.id, error = %e, "could not turn the interrupt tool on");
            }
            None => {}
        }
    }

    fn bound(&self) -> Option<Arc<OwnerLink>> {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `f` (on the owner, attached) as this interruptible call.
    pub(crate) fn run<R>(
        &self,
        att: &Attached<'_>,
        f: impl FnOnce(&Attached<'_>) -> Result<R>,
    ) -> Result<R> {
        if let Some(e) = self.interrupted() {
            self.finish();
            return Err(e); // cut short while queued: never started
        }
        let Some(owner) = activation::owner() else {
            self.finish();
            return Err(Error::Internal(
                "an interruptible call ran off an owner thread".into(),
            ));
        };
        let sh = &*owner.link;
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&owner.link));
        let outer = sh.running.swap(self.id, Ordering::SeqCst);
        let out = if let Some(e) = self.interrupted() {
            Err(e)
        } else {
            f(att)
        };
        sh.running.store(outer, Ordering::SeqCst);
        // No Python ran since the store: the interrupter (under the GIL) either turned the
        // tool on before it and we see it here, or sees that the call is over.
        escalate::remove(att, sh, self.id);
        self.finish();
        if sh.async_pending.swap(false, Ordering::SeqCst) {
            // An interrupt that arrived as the call returned must not hit the next one.
            // SAFETY: R10: thread: the owner; tstate: attached (`att`). A null exception
            // clears any pending async exception of the thread with this id.
            unsafe { sys::PyThreadState_SetAsyncExc(sh.owner_ident as _, std::ptr::null_mut()) };
        }
        match (out, self.interrupted()) {
            (Err(_), Some(e)) => Err(e),
            (out, _) => out,
        }
    }

    /// On a `py-interrupt` thread: raise the interrupt in the owner if this call is
    /// still the one running there.
    fn raise_in_owner(&self, sh: &OwnerLink) {
        let _no_end = sh.interrupt_lock.lock().unwrap_or_else(|e| e.into_inner());
        if sh.is_ended() || sh.running.load(Ordering::SeqCst) != self.id {
            return;
        }
        let class = sh.interrupts.for_reason(Reason::load(&self.reason) as u8);
        let interp = sh.interp_ptr as *mut sys::PyInterpreterState;
        let raise = |_att: &Attached<'_>| {
            // `running` is only written by the owner while attached, so reading it while
            // we hold the GIL tells whether our call is still running.
            if sh.running.load(Ordering::SeqCst) != self.id {
                return false;
            }
            sh.interrupt
                .reason
                .store(Reason::load(&self.reason) as u8, Ordering::SeqCst);
            // SAFETY: R10: we hold the interpreter's GIL (`_att`); `class` is a class of
            // this interpreter kept alive by the pool until it ends (R3's `interrupt_lock`
            // keeps the end out); SetAsyncExc takes its own reference.
            unsafe { sys::PyThreadState_SetAsyncExc(sh.owner_ident as _, class.as_ptr()) };
            sh.async_pending.store(true, Ordering::SeqCst);
            // Raised: the owner need not raise it again after a nested job.
            let mine = self.id << 2 | Reason::load(&self.reason) as u64;
            let _ =
                sh.deferred_interrupt
                    .compare_exchange(mine, 0, Ordering::SeqCst, Ordering::SeqCst);
            true
        };
        // SAFETY: R3 (its one exception): thread: py-interrupt, a fresh thread with no
        // thread state. interp: alive and not ending while we hold `interrupt_lock` (the
        // owner takes it before Py_EndInterpreter and marks the interpreter ended before
        // releasing it; checked above).
        let raised = unsafe { attach::with_foreign_thread_state(interp, sh.id, raise) };
        if raised == Some(true) {
            // Wake the owner if it sleeps in `time.sleep` (`sleep.rs`).
            sh.thread.unpark();
            tracing::debug!(interp = %sh.id, call = self.id, "interrupt raised");
        }
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

    /// The class raised for a reason byte (`Reason as u8`).
    pub(crate) fn for_reason(&self, reason: u8) -> NonNull<sys::PyObject> {
        if reason == Reason::TimedOut as u8 {
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

/// On the owner thread, attached, right after a nested job returned to the interruptible
/// call `outer` waiting under it: raises an interrupt that was requested for `outer` while
/// that job ran (the interrupter could not: `outer` was not the one running).
pub(crate) fn raise_deferred(att: &Attached<'_>, link: &OwnerLink, outer: u64) {
    let deferred = link.deferred_interrupt.load(Ordering::SeqCst);
    if outer == 0 || deferred >> 2 != outer {
        return;
    }
    link.deferred_interrupt.store(0, Ordering::SeqCst);
    let class = link.interrupts.for_reason((deferred & 3) as u8);
    link.interrupt
        .reason
        .store((deferred & 3) as u8, Ordering::SeqCst);
    let _ = att;
    // SAFETY: R10: the owner, attached (`att`); `class` is this interpreter's class, kept
    // alive by the pool; SetAsyncExc on our own thread only flags our thread state.
    unsafe { sys::PyThreadState_SetAsyncExc(link.owner_ident as _, class.as_ptr()) };
    link.async_pending.store(true, Ordering::SeqCst);
}

/// Arms a deadline for `ctl`; the returned guard disarms it.
pub(crate) fn arm(ctl: &Arc<Interruptible>, timeout: Duration) -> Armed {
    let at = Instant::now() + timeout;
    let key = (at, ctl.id);
    let w = &*WATCHDOG;
    let mut q = w.queue.lock().unwrap_or_else(|e| e.into_inner());
    let first = q.keys().next().is_none_or(|&(t, _)| at < t);
    q.insert(key, Arc::clone(ctl));
    drop(q);
    if first {
        w.wake.notify_one();
    }
    Armed(key)
}

/// A deadline in the watchdog's queue; removed on drop.
pub(crate) struct Armed((Instant, u64));

impl Drop for Armed {
    fn drop(&mut self) {
        WATCHDOG
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// One `py-deadlines` thread for the process: sleeps until the earliest deadline.
struct Watchdog {
    queue: Mutex<BTreeMap<(Instant, u64), Arc<Interruptible>>>,
    wake: Condvar,
}

static WATCHDOG: Lazy<Watchdog> = Lazy::new(|| {
    let spawned = thread::Builder::new()
        .name("py-deadlines".into())
        .spawn(|| watchdog_loop(&WATCHDOG));
    if let Err(e) = spawned {
        tracing::error!("cannot start the deadline thread: {e}; deadlines will not fire");
    }
    Watchdog {
        queue: Mutex::new(BTreeMap::new()),
        wake: Condvar::new(),
    }
});

fn watchdog_loop(w: &Watchdog) {
    let mut q = w.queue.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        while let Some(entry) = q.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ctl = entry.remove();
            ctl.request(Reason::TimedOut);
        }
        q = match q.keys().next() {
            Some(&(at, _)) => {
                let wait = at.saturating_duration_since(now);
                w.wake
                    .wait_timeout(q, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => w.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
