//! Deadlines and cancellation: interrupting a running call inside its interpreter.
//!
//! An interrupt is an asynchronous exception (`PyThreadState_SetAsyncExc`) raised in the
//! owner thread at its next bytecode boundary, so `finally` blocks run and the
//! interpreter stays usable. Setting it needs that interpreter's GIL, which the busy
//! owner holds; so a short-lived `py-interrupt` thread creates a thread state of its own
//! in the interpreter, attaches (CPython makes the owner drop the GIL within its switch
//! interval, 5 ms), checks under the GIL that the call is still the innermost one
//! executing there, sets the exception and deletes its thread state. That is the one exception to R3, guarded by
//! the target's interrupt lock (`interrupt.rs`), which the owner also takes before ending
//! the interpreter.
//!
//! An interrupt belongs to its call: it is raised only while the call's activation is the
//! innermost one executing on its thread, and deferred otherwise (`interrupt.rs` states
//! the rule). The interrupter and the owner agree on that through the call's
//! `Activation` and the thread's `InterruptTarget`; nothing here knows the owner thread.
//!
//! Code that never returns to the bytecode loop while holding the GIL (a C extension's
//! own loop) cannot be interrupted; the caller keeps waiting until it returns, and the
//! `py-interrupt` thread with it. Blocking calls that release the GIL (socket reads,
//! `select`, `threading` waits) are interrupted when they return; `time.sleep` wakes at
//! once where `sleep.rs`'s replacement is installed. The interrupter stays until the call
//! finishes: it re-raises after a grace period and then turns on `escalate.rs`'s last step.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use crate::capi::attach::Attached;
use crate::error::{Error, Result};
use crate::governance::escalate;
use crate::governance::interrupt::{self, Activation, InterruptTarget, Reason};

/// How a call may be cut short. `CallOptions::default()` is a plain call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Interrupt the call if it has not finished this long after it was made. A timeout
    /// too long to add to the current `Instant` (`Duration::MAX`, say) is no deadline.
    pub timeout: Option<Duration>,
    /// Interrupt the call when this token is cancelled (from any thread).
    pub cancel: Option<CancelToken>,
    /// How long an interrupted call may go on before it is interrupted again, and after
    /// a second grace period stopped in a way `except` cannot absorb (`escalate.rs`).
    /// `None`: [`DEFAULT_GRACE`]. Less than [`MIN_GRACE`] (zero, say) counts as
    /// `MIN_GRACE`, so the interrupter never spins; one too long to add to the current
    /// `Instant` means "interrupt once and wait for the call".
    pub grace: Option<Duration>,
}

/// The default [`CallOptions::grace`]: 100 ms.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(100);

/// The shortest [`CallOptions::grace`] honoured: 1 ms (a shorter one is raised to it).
pub const MIN_GRACE: Duration = Duration::from_millis(1);

impl CallOptions {
    /// The grace period the call gets: [`grace`](Self::grace), or [`DEFAULT_GRACE`], and
    /// at least [`MIN_GRACE`].
    pub fn effective_grace(&self) -> Duration {
        self.grace.unwrap_or(DEFAULT_GRACE).max(MIN_GRACE)
    }

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

/// One interruptible call: its activation (the interrupt state it carries on whatever
/// thread runs it), its deadline's length and grace period, and its interrupter.
#[derive(Debug)]
pub(crate) struct Interruptible {
    act: Arc<Activation>,
    timeout: Duration,
    grace: Duration,
    /// Set when the call has finished on its owner (or was cut short before starting):
    /// the interrupter stops escalating.
    done: Mutex<bool>,
    done_cv: Condvar,
    /// The thread running the call, bound when it starts there (a group's call may run on
    /// any member); `None` while queued.
    target: Mutex<Option<Arc<InterruptTarget>>>,
}

impl Interruptible {
    pub(crate) fn new(opts: &CallOptions) -> Arc<Self> {
        let ctl = Arc::new(Self {
            act: Arc::new(Activation::new()),
            timeout: opts.timeout.unwrap_or_default(),
            grace: opts.effective_grace(),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
            target: Mutex::new(None),
        });
        if let Some(token) = &opts.cancel {
            token.track(&ctl);
        }
        ctl
    }

    /// The error the call ends with if it was interrupted.
    pub(crate) fn interrupted(&self) -> Option<Error> {
        match self.act.reason() {
            Reason::Cancelled => Some(Error::Cancelled),
            Reason::TimedOut => Some(Error::Timeout {
                after: self.timeout,
            }),
            Reason::None => None,
        }
    }

    /// Records the first reason and, if the call is running, has it interrupted.
    fn request(self: &Arc<Self>, reason: Reason) {
        if !self.act.request(reason) {
            return;
        }
        // Pairs with `run`: either it sees our reason before starting (no target yet, or
        // not yet running), or we see it bound and running.
        let Some(target) = self.bound() else { return };
        if self.is_done() {
            return;
        }
        let ctl = Arc::clone(self);
        target.interrupter_alive(true);
        let counted = Arc::clone(&target);
        let spawned = thread::Builder::new()
            .name("py-interrupt".into())
            .spawn(move || ctl.interrupt_until_done(&target));
        if let Err(e) = spawned {
            counted.interrupter_alive(false);
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

    /// Waits up to `d` for the call to finish (without a bound if `d` cannot be added to
    /// now); whether it did.
    fn wait_done(&self, d: Duration) -> bool {
        let until = Instant::now().checked_add(d);
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let Some(until) = until else {
                done = self.done_cv.wait(done).unwrap_or_else(|e| e.into_inner());
                continue;
            };
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

    /// On a `py-interrupt` thread, once the call is interrupted: raise the interrupt (or
    /// defer it, if the call is not the innermost one executing on its thread); if the
    /// call still runs a grace period later, again; after each further grace period, turn
    /// the last step on (`escalate.rs`: raising on every line of the call) and raise
    /// again, until the call has finished.
    fn interrupt_until_done(&self, target: &Arc<InterruptTarget>) {
        let mut round = 0u32;
        loop {
            if round >= 2 {
                self.escalate(target);
            }
            if target.raise_attach_foreign(&self.act) {
                tracing::debug!(interp = %target.id, call = self.act.id, round, "interrupt raised");
            }
            target.count_round();
            if self.wait_done(self.grace) {
                break;
            }
            round += 1;
            tracing::debug!(interp = %target.id, call = self.act.id, round, "interrupted call still running");
        }
        // Not on unwind: a probe that stays up flags an interrupter that panicked.
        target.interrupter_alive(false);
    }

    /// Turns the last step on for this call if it is the one executing on its thread.
    fn escalate(&self, target: &Arc<InterruptTarget>) {
        let id = self.act.id;
        if !target.is_executing(id) || escalate::is_traced(target, id) {
            return;
        }
        let reason = self.act.reason();
        let on = |att: &Attached<'_>| {
            if !target.is_executing(id) {
                return Ok(false);
            }
            escalate::enable(att, target, id, reason)
        };
        match target.attach_foreign(on) {
            Some(Ok(true)) => {
                tracing::warn!(interp = %target.id, call = id, "interrupted call swallowed its interrupt; raising it on every line until it returns");
            }
            Some(Ok(false)) => {
                tracing::warn!(interp = %target.id, call = id, "interrupted call still running; no sys.monitoring tool id free to stop it");
            }
            Some(Err(e)) => {
                tracing::warn!(interp = %target.id, call = id, error = %e, "could not turn the interrupt tool on");
            }
            None => {}
        }
    }

    fn bound(&self) -> Option<Arc<InterruptTarget>> {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `f` (on the thread running the call, attached: an owner, or a caller's thread
    /// in a direct call) as this interruptible call: its activation is on top of the
    /// thread's stack while `f` runs. Whatever way `f` leaves (a panic
    /// included), [`Cleanup`] pops it, turns the tool off, takes back a leftover async
    /// exception, releases the interrupter and resumes the activation beneath.
    pub(crate) fn run<R>(
        self: &Arc<Self>,
        att: &Attached<'_>,
        f: impl FnOnce(&Attached<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut cleanup = Cleanup {
            ctl: self,
            att,
            target: None,
        };
        if let Some(e) = self.interrupted() {
            return Err(e); // cut short while queued: never started
        }
        let Some(target) = interrupt::enter(att, &self.act) else {
            return Err(Error::Internal(
                "an interruptible call ran on a thread with no interrupt target".into(),
            ));
        };
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&target));
        cleanup.target = Some(target);
        let out = if let Some(e) = self.interrupted() {
            Err(e)
        } else {
            f(att)
        };
        drop(cleanup);
        match (out, self.interrupted()) {
            (Err(_), Some(e)) => Err(e),
            (out, _) => out,
        }
    }
}

/// The end of an interruptible call, on every exit of `Interruptible::run`.
struct Cleanup<'a> {
    ctl: &'a Interruptible,
    att: &'a Attached<'a>,
    /// Set once the activation was entered on its thread.
    target: Option<Arc<InterruptTarget>>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let act = &self.ctl.act;
        if let Some(target) = &self.target {
            interrupt::leave(self.att, target, act);
            // No Python ran since `leave`: the interrupter (under the GIL) either turned
            // the tool on before it and we see it here, or sees that nothing executes.
            escalate::remove_at_end(self.att, target, act.id);
        }
        self.ctl.finish();
        if self.target.is_some() {
            // Control returns to the activation beneath, if any: its deferred interrupt
            // is raised now (after the tool's Python above, which must not receive it).
            interrupt::resume(self.att);
        }
    }
}

/// Arms a deadline for `ctl`; the returned guard disarms it. A `timeout` that cannot be
/// added to now is no deadline (`CallOptions::timeout`).
pub(crate) fn arm(ctl: &Arc<Interruptible>, timeout: Duration) -> Armed {
    let Some(at) = Instant::now().checked_add(timeout) else {
        return Armed(None);
    };
    let key = (at, ctl.act.id);
    let w = &*WATCHDOG;
    let mut q = w.queue.lock().unwrap_or_else(|e| e.into_inner());
    let first = q.keys().next().is_none_or(|&(t, _)| at < t);
    q.insert(key, Arc::clone(ctl));
    drop(q);
    if first {
        w.wake.notify_one();
    }
    Armed(Some(key))
}

/// A deadline in the watchdog's queue (`None`: none was armed); removed on drop.
pub(crate) struct Armed(Option<(Instant, u64)>);

impl Drop for Armed {
    fn drop(&mut self) {
        let Some(key) = self.0 else { return };
        WATCHDOG
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
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
