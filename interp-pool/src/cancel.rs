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
//! `py-interrupt` thread with it. Blocking calls that release the GIL (`time.sleep`,
//! socket reads) are interrupted when they return.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use crate::attach::Attached;
use crate::error::{Error, Result};
use crate::ffi::sys;
use crate::worker::OwnerLink;

/// How a call may be cut short. `CallOptions::default()` is a plain call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Interrupt the call if it has not finished this long after it was made.
    pub timeout: Option<Duration>,
    /// Interrupt the call when this token is cancelled (from any thread).
    pub cancel: Option<CancelToken>,
}

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
            c.request(CANCELLED);
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
            ctl.request(CANCELLED);
        }
    }
}

const NONE: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

/// One interruptible call.
#[derive(Debug)]
pub(crate) struct Interruptible {
    id: u64,
    reason: AtomicU8,
    timeout: Duration,
    link: Arc<OwnerLink>,
}

impl Interruptible {
    pub(crate) fn new(link: Arc<OwnerLink>, opts: &CallOptions) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let ctl = Arc::new(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            reason: AtomicU8::new(NONE),
            timeout: opts.timeout.unwrap_or_default(),
            link,
        });
        if let Some(token) = &opts.cancel {
            token.track(&ctl);
        }
        ctl
    }

    /// The error the call ends with if it was interrupted.
    pub(crate) fn interrupted(&self) -> Option<Error> {
        match self.reason.load(Ordering::SeqCst) {
            CANCELLED => Some(Error::Cancelled),
            TIMED_OUT => Some(Error::Timeout {
                after: self.timeout,
            }),
            _ => None,
        }
    }

    /// Records the first reason and, if the call is running, has it interrupted.
    fn request(self: &Arc<Self>, reason: u8) {
        if self
            .reason
            .compare_exchange(NONE, reason, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        // Pairs with `run`: either it sees our reason before starting, or we see it running.
        if self.link.running.load(Ordering::SeqCst) != self.id {
            return;
        }
        let ctl = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("py-interrupt".into())
            .spawn(move || ctl.raise_in_owner());
        if let Err(e) = spawned {
            tracing::error!(interp = %self.link.id, "cannot start an interrupt thread: {e}");
        }
    }

    /// Runs `f` (on the owner, attached) as this interruptible call.
    pub(crate) fn run<R>(
        &self,
        att: &Attached<'_>,
        f: impl FnOnce(&Attached<'_>) -> Result<R>,
    ) -> Result<R> {
        let sh = &*self.link;
        if let Some(e) = self.interrupted() {
            return Err(e); // cut short while queued: never started
        }
        let outer = sh.running.swap(self.id, Ordering::SeqCst);
        let out = if let Some(e) = self.interrupted() {
            Err(e)
        } else {
            f(att)
        };
        sh.running.store(outer, Ordering::SeqCst);
        if sh.async_pending.swap(false, Ordering::SeqCst) {
            // An interrupt that arrived as the call returned must not hit the next one.
            // SAFETY: thread: the owner. tstate: attached (`att`). A null exception clears
            // any pending async exception of the thread with this id in this interpreter.
            unsafe {
                sys::PyThreadState_SetAsyncExc(sh.owner_ident as _, std::ptr::null_mut());
            }
        }
        match (out, self.interrupted()) {
            (Err(_), Some(e)) => Err(e),
            (out, _) => out,
        }
    }

    /// On a `py-interrupt` thread: raise the interrupt in the owner if this call is
    /// still the one running there.
    fn raise_in_owner(&self) {
        let sh = &*self.link;
        let _no_end = sh.interrupt_lock.lock().unwrap_or_else(|e| e.into_inner());
        if sh.is_ended() || sh.running.load(Ordering::SeqCst) != self.id {
            return;
        }
        let name: &CStr = match self.reason.load(Ordering::SeqCst) {
            TIMED_OUT => c"interp_pool.DeadlineExceeded",
            _ => c"interp_pool.Cancelled",
        };
        // SAFETY: thread: py-interrupt, a fresh thread with no thread state. interp: alive
        // and not ending while we hold `interrupt_lock` (the owner takes it before
        // Py_EndInterpreter and marks the interpreter ended before releasing it; checked
        // above). tstate: we create our own (no GIL needed), attach it (waits for the
        // owner to drop the GIL), and clear and delete it before returning, which detaches.
        // `running` is only written by the owner while attached, so reading it while we
        // hold the GIL tells whether our call is still running.
        unsafe {
            let ts = sys::PyThreadState_New(sh.interp_ptr as *mut sys::PyInterpreterState);
            if ts.is_null() {
                return;
            }
            sys::PyEval_RestoreThread(ts);
            if sh.running.load(Ordering::SeqCst) == self.id {
                // A BaseException subclass, so `except Exception:` does not swallow it.
                let exc = sys::PyErr_NewException(
                    name.as_ptr(),
                    sys::PyExc_BaseException,
                    std::ptr::null_mut(),
                );
                if exc.is_null() {
                    sys::PyErr_Clear();
                } else {
                    sys::PyThreadState_SetAsyncExc(sh.owner_ident as _, exc);
                    sh.async_pending.store(true, Ordering::SeqCst);
                    sys::Py_DECREF(exc);
                }
            }
            sys::PyThreadState_Clear(ts);
            sys::PyThreadState_DeleteCurrent();
        }
        tracing::debug!(interp = %sh.id, call = self.id, "interrupt delivered");
    }
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
            ctl.request(TIMED_OUT);
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
