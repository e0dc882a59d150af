//! Every live owner thread of the process (subinterpreters and main-pool seats), for
//! `shutdown` and `live_interpreters`. An owner registers under the creation lock (R8) and
//! unregisters when it has ended its interpreter.

use std::sync::{Arc, Mutex, MutexGuard};

use super::worker::{Origin, OwnerLink};

static LIVE: Mutex<Vec<Arc<OwnerLink>>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<Arc<OwnerLink>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn register(link: &Arc<OwnerLink>) {
    lock().push(Arc::clone(link));
}

pub(crate) fn unregister(link: &OwnerLink) {
    lock().retain(|l| !std::ptr::eq(&**l, link));
}

/// Takes every registered owner out (shutdown ends them).
pub(crate) fn take_all() -> Vec<Arc<OwnerLink>> {
    lock().drain(..).collect()
}

/// Subinterpreters alive, plus the main interpreter (counted once however many seats
/// serve it) once its pool started.
pub(crate) fn live_interpreters() -> usize {
    let live = lock();
    let main_seats = live.iter().filter(|l| l.origin == Origin::Main).count();
    live.len() - main_seats.saturating_sub(1)
}
