//! An interpreter's end, as its callers and its owner thread see it: asked for (new calls
//! fail, the owner leaves its top-level loop), then done (after `Py_EndInterpreter`, or
//! when the owner thread exits however it exits), with a way to wait for that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// Set once by `request`.
    requested: AtomicBool,
    /// Set by the owner thread as its last act.
    ended: Mutex<bool>,
    ended_cv: Condvar,
}

impl Ending {
    /// Whether the end was asked for.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Asks for the end; the caller wakes the owner thread so that it sees it.
    pub(crate) fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Waits until the owner thread has ended the interpreter.
    pub(crate) fn wait(&self) {
        let mut ended = self.lock();
        while !*ended {
            ended = self.ended_cv.wait(ended).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        *self.lock()
    }

    /// The owner thread's last act: wakes every waiter.
    pub(crate) fn mark_done(&self) {
        *self.lock() = true;
        self.ended_cv.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }
}
