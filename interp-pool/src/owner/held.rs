//! What a thread holds for direct dispatch (R13): the host-thread states it keeps, one per
//! interpreter it called directly (a small cache, given up when the thread exits or when
//! evicted), and the claims it holds now, innermost last. A call of an interpreter this
//! thread holds runs inline on it (A→B→A on one thread); a thread that waits while holding
//! claims serves those interpreters' queues, as an owner serves its own.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use super::enter::{self, Kind};
use super::worker::OwnerLink;
use crate::capi::attach::{self, HostAttachGuard};
use crate::governance::interrupt::{Barrier, InterruptTarget};
use crate::owner::activation::DepthGuard;
use crate::owner::holders::WaitingHolders;
use crate::owner::job::Job;
use crate::owner::seat::HeldLane;

/// Most host-thread states one thread keeps (one per interpreter it calls directly); the
/// least recently used is given up past it. A state costs ~10 KiB (BENCHMARKS.md).
pub(crate) const MAX_STATES_PER_THREAD: usize = 32;

/// One interpreter held by this thread, or kept for it. Shared as `Rc<Place>` between the
/// state cache and the held list, so holding a cached place per call costs no atomics.
pub(crate) struct Place {
    pub(crate) link: Arc<OwnerLink>,
    /// This thread's host-thread state there, as an interrupt target.
    pub(crate) target: Arc<InterruptTarget>,
    /// For the main interpreter: the lane this thread holds it through (`main_pool.rs`);
    /// its queue, not the seat's, is what the thread serves while it waits.
    pub(crate) lane: Option<Arc<dyn HeldLane>>,
}

impl Place {
    fn has_queued(&self) -> bool {
        match &self.lane {
            Some(lane) => lane.has_queued(),
            None => self.link.has_queued(),
        }
    }

    /// Who posts to this place wake (`holders.rs`).
    fn holders(&self) -> &WaitingHolders {
        match &self.lane {
            Some(lane) => lane.holders(),
            None => &self.link.holders,
        }
    }

    fn take_queued(&self) -> Option<Job> {
        match &self.lane {
            Some(lane) => lane.take_held(),
            None => self.link.take_queued(),
        }
    }
}

struct Cache {
    entries: Vec<(Rc<Place>, u64)>,
    clock: u64,
}

impl Drop for Cache {
    fn drop(&mut self) {
        // The thread is exiting: its states are given up, deleted by each interpreter's
        // next call (or its end).
        for (place, _) in self.entries.drain(..) {
            give_up(&place);
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache {
            entries: Vec::new(),
            clock: 0,
        })
    };
    static HELD: RefCell<Vec<Rc<Place>>> = const { RefCell::new(Vec::new()) };
}

/// Deleted by whoever next runs a call there holding the claim (`HostStates::delete_doomed`),
/// or at the interpreter's end.
fn give_up(place: &Place) {
    place.link.hosts.give_up(&place.target);
}

/// This thread's host-thread state for `link`'s interpreter, made on first use, as the
/// place a direct call holds. The caller holds the claim. `None` if CPython could not make
/// one.
pub(crate) fn state_for(link: &Arc<OwnerLink>) -> Option<Rc<Place>> {
    let found = CACHE
        .try_with(|c| {
            let mut c = c.borrow_mut();
            c.clock += 1;
            let now = c.clock;
            c.entries
                .iter_mut()
                .find(|(p, _)| Arc::ptr_eq(&p.link, link))
                .map(|(p, used)| {
                    *used = now;
                    Rc::clone(p)
                })
        })
        .ok()?;
    if found.is_some() {
        return found;
    }
    let place = Rc::new(Place {
        link: Arc::clone(link),
        target: make_state(link)?,
        lane: None,
    });
    let evicted = CACHE
        .try_with(|c| {
            let mut c = c.borrow_mut();
            let now = c.clock;
            // States of ending interpreters are deleted by their owners: forget them (on a
            // miss only: a hit's interpreter is alive, its claim held).
            c.entries.retain(|(p, _)| !p.link.is_closing());
            // Never a state this thread is using further down its stack (it holds that
            // interpreter): giving it up would have it deleted under the running call.
            let evicted = (c.entries.len() >= MAX_STATES_PER_THREAD)
                .then(|| {
                    let lru = (0..c.entries.len())
                        .filter(|&i| find(c.entries[i].0.link.id).is_none())
                        .min_by_key(|&i| c.entries[i].1)?;
                    Some(c.entries.swap_remove(lru).0)
                })
                .flatten();
            c.entries.push((Rc::clone(&place), now));
            evicted
        })
        .ok()?;
    if let Some(evicted) = evicted {
        give_up(&evicted);
    }
    Some(place)
}

/// Whether this thread keeps a host-thread state for `link`'s interpreter.
pub(crate) fn has_state(link: &Arc<OwnerLink>) -> bool {
    CACHE
        .try_with(|c| {
            c.borrow()
                .entries
                .iter()
                .any(|(p, _)| Arc::ptr_eq(&p.link, link))
        })
        .unwrap_or(false)
}

/// Makes this thread's host-thread state for `link` (claim held): the thread state, and
/// its interrupt target sharing the interpreter's interrupt classes.
fn make_state(link: &Arc<OwnerLink>) -> Option<Arc<InterruptTarget>> {
    let owner = &link.target;
    // SAFETY: R13: the caller holds the claim, so the interpreter is alive.
    let ts = unsafe { attach::new_host_state(owner.interp()) }?;
    let classes = {
        // No Python runs here: whatever this thread had attached waits, detached (R4).
        let _detached = crate::capi::attach::DetachGuard::detach_current();
        // SAFETY: R13: `ts` was just made on this thread, the claim is held, none attached
        // (just detached).
        let guard = unsafe { HostAttachGuard::attach(ts, link.id) };
        owner.classes.share(&guard.token())
    };
    let target = InterruptTarget::new(link.id, owner.interp(), ts, classes);
    if !link.hosts.add(&target) {
        // Cannot happen while the claim is held (the owner closes it before ending).
        tracing::error!(interp = %link.id, "host-thread state made for an ending interpreter");
    }
    Some(target)
}

/// The interpreter `id` if this thread holds it (is running one of its calls).
pub(crate) fn find(id: crate::InterpreterId) -> Option<Rc<Place>> {
    HELD.try_with(|h| h.borrow().iter().rev().find(|p| p.link.id == id).cloned())
        .ok()
        .flatten()
}

/// The lane `key` (its address) if this thread holds it directly.
pub(crate) fn find_lane(key: *const ()) -> Option<Rc<Place>> {
    HELD.try_with(|h| {
        h.borrow()
            .iter()
            .rev()
            .find(|p| {
                p.lane
                    .as_ref()
                    .is_some_and(|l| std::ptr::eq(Arc::as_ptr(l) as *const (), key))
            })
            .cloned()
    })
    .ok()
    .flatten()
}

/// A member of `group` this thread holds, if any.
pub(crate) fn find_member(group: super::worker::GroupId) -> Option<Rc<Place>> {
    HELD.try_with(|h| {
        h.borrow()
            .iter()
            .rev()
            .find(|p| p.link.group.get() == Some(&group) && !p.link.left_group())
            .cloned()
    })
    .ok()
    .flatten()
}

/// Whether the call running innermost on this thread runs on a host-thread state (a
/// direct call, or a call re-entering one), not on an owner's own thread state.
pub(crate) fn running_direct() -> bool {
    HELD.try_with(|h| {
        h.borrow()
            .iter()
            .any(|p| crate::governance::interrupt::is_registered(&p.target))
    })
    .unwrap_or(false)
}

/// Whether this thread holds any claim.
pub(crate) fn holds_any() -> bool {
    HELD.try_with(|h| !h.borrow().is_empty()).unwrap_or(false)
}

/// Marks `place` held by this thread until dropped.
pub(crate) struct Holding(());

impl Holding {
    pub(crate) fn push(place: Rc<Place>) -> Self {
        let _ = HELD.try_with(|h| h.borrow_mut().push(place));
        Self(())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let _ = HELD.try_with(|h| h.borrow_mut().pop());
    }
}

fn held() -> Vec<Rc<Place>> {
    HELD.try_with(|h| h.borrow().clone()).unwrap_or_default()
}

/// Whether an interpreter this thread holds has a job queued.
pub(crate) fn has_work() -> bool {
    HELD.try_with(|h| h.borrow().iter().any(|p| p.has_queued()))
        .unwrap_or(false)
}

/// Runs the jobs queued now for the interpreters this thread holds (it is waiting, detached,
/// R4), each on this thread's state there. Whether it ran any.
pub(crate) fn run_queued() -> bool {
    let mut ran = false;
    for place in held() {
        while let Some(job) = place.take_queued() {
            ran = true;
            run_job(&place, job);
        }
    }
    ran
}

fn run_job(place: &Place, job: Job) {
    let _depth = DepthGuard::enter(job.depth);
    if place.lane.is_none() {
        place.link.served.fetch_add(1, Ordering::Relaxed);
    }
    let run = |token: &crate::Attached<'_>| {
        // Not the interruptible call that may be waiting under it.
        let barrier = Barrier::job(token);
        job.execute_then(token, || {});
        drop(barrier);
    };
    // SAFETY: R13: `place.target` is this thread's host-thread state and this thread
    // holds the interpreter's claim (`place` is in HELD).
    let ran = unsafe { enter::run_at(&place.target, &place.link.memory, Kind::Host(None), run) };
    if let Err(e) = ran {
        tracing::error!(interp = %place.link.id, "cannot run a queued job: {e}");
    }
}

/// While alive: posts to the interpreters this thread holds wake this thread (it waits,
/// and must serve them: nobody else may).
pub(crate) struct Announced(Vec<Rc<Place>>);

impl Announced {
    pub(crate) fn new() -> Self {
        let places = held();
        places.iter().for_each(|p| p.holders().waiting(true));
        Self(places)
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.0.iter().for_each(|p| p.holders().waiting(false));
    }
}

/// Waits for `slot` on a thread that holds claims but owns no interpreter: serves the held
/// interpreters' queues meanwhile (nobody else may run their jobs), spinning up to `spin`
/// then parking; posts to them wake it (`Announced`). Detached (R4).
pub(crate) fn wait_serving(
    slot: &super::wait::ReplySlot,
    spin: std::time::Duration,
    defer: &dyn Fn() -> bool,
) {
    let _announced = Announced::new();
    loop {
        if slot.is_done() {
            return;
        }
        if run_queued() {
            continue;
        }
        if super::wait::spin_until(spin, || slot.is_done() || has_work(), defer) {
            continue;
        }
        if !slot.prepare_park() {
            continue;
        }
        // Unpark tokens make this race-free: a post after this check, or the completion,
        // unparks us and the next park returns at once.
        if !has_work() && !slot.is_done() {
            thread::park();
        }
    }
}
