//! Callers' threads that hold an interpreter's claim (or a main lane) and wait on another
//! interpreter: they serve its queue meanwhile (`held.rs`), so a post there must wake them,
//! as it wakes a parked owner. One list per owner link and per lane.
//!
//! Race-free by unpark tokens: a holder enters the list, then checks the queue, then parks;
//! a poster queues, fences, then reads the count and unparks everyone listed. A holder that
//! entered before the poster's read is unparked (its next park returns at once); one that
//! entered after it sees the job when it checks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::{self, Thread};

#[derive(Debug, Default)]
pub(crate) struct WaitingHolders {
    list: Mutex<Vec<Thread>>,
    count: AtomicUsize,
}

impl WaitingHolders {
    /// The current thread starts (`true`) or stops waiting (a nested wait enters again and
    /// leaves once).
    pub(crate) fn waiting(&self, on: bool) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let me = thread::current();
        if on {
            list.push(me);
        } else if let Some(i) = list.iter().rposition(|t| t.id() == me.id()) {
            list.swap_remove(i);
        }
        self.count.store(list.len(), Ordering::SeqCst);
    }

    /// After a post's fence: unparks every waiting holder; whether there was one.
    pub(crate) fn wake(&self) -> bool {
        if self.count.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().for_each(Thread::unpark);
        !list.is_empty()
    }
}
