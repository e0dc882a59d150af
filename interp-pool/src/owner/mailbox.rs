//! `Mailbox`: the one queue protocol. An owner's private queue, a group's queue and a
//! main-pool lane are each a mailbox; they differ only in who may take a job and whom a
//! post wakes (the `wake` closure given to [`Mailbox::post`]).
//!
//! A mailbox owns a bounded queue, its `closing` flag, draining, and the post / full /
//! wake order. The rule every caller relies on (R7):
//!
//! **Once a job is queued, its caller waits on its slot.** `post` fails only before the
//! job is queued (closed, or full with `WhenFull::Fail`); the job is then dropped, which
//! completes its slot. A job that was queued is completed exactly once, by whoever gets
//! it: a taker that runs it, or a drain that drops it (`Job`'s `Drop` completes the slot
//! with "gone"). So a post that finds the mailbox closing *after* its send drains what is
//! still queued and reports success: its own job was drained (the slot is done) or was
//! taken by a member or seat that runs it, and the caller waits for that either way.
//!
//! Closing is a Dekker pair with posting: [`close`](Mailbox::close) stores `closing`,
//! fences and drains; `post` sends, fences and reads `closing`. With both `fence(SeqCst)`s
//! either the closer's drain sees the job or the poster sees `closing` (and drains it
//! itself), so no job stays queued in a closed mailbox with nobody to complete it. The
//! same fence orders the push before `wake`'s read of the takers' state (their half is
//! `wait::OwnerStateCell::park_unless`), so a post costs one fence.
//!
//! # Checked by a model
//!
//! Under `RUSTFLAGS="--cfg loom"` the mailbox runs on loom's atomics, and a
//! `loom::sync::Mutex<VecDeque>` stands in for the crossbeam channel, whose atomics loom
//! cannot see; `mailbox/loom_model.rs` runs this file's `post`, `close` and `try_take`
//! against a closer and a taker (`tools/test` runs it), and shows the ordering used before
//! (a post that saw `closing` after its send returned without waiting) failing.

#[cfg(loom)]
use std::collections::VecDeque;

use sync::atomic::{fence, AtomicBool, Ordering};

use crate::config::WhenFull;
use crate::owner::job::Job;

/// std's atomics, or loom's under `--cfg loom` (the model checks this file's code).
#[cfg(not(loom))]
mod sync {
    pub(super) use std::sync::atomic;
    pub(super) use std::thread;
}
#[cfg(loom)]
mod sync {
    pub(super) use loom::sync::atomic;
    pub(super) use loom::thread;
}

/// Why a post did not queue its job (the job was dropped: its slot is complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The mailbox is closing.
    Closed,
    /// The queue is full and the mailbox fails rather than waits (`WhenFull::Fail`).
    Full,
}

/// What happened to a queued job's post; in every case the caller waits on its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Posted {
    /// `wake` woke a parked taker: it needs a moment, so the caller need not spin.
    Woke,
    /// A taker is awake (running, or looking for work) and will see the job.
    Awake,
    /// The mailbox closed meanwhile: the job was drained, or is being run by a taker
    /// that got it first.
    Closed,
}

/// A bounded queue of jobs with the closing and waking protocol above. `T` is [`Job`]
/// except in the loom model.
pub(crate) struct Mailbox<T = Job> {
    queue: Queue<T>,
    closing: AtomicBool,
    /// A count of jobs queued over several mailboxes that this one adds to (the main
    /// pool's lanes: seats read one word before scanning them). A plain std atomic:
    /// not part of the model.
    counter: Option<&'static std::sync::atomic::AtomicUsize>,
    when_full: WhenFull,
}

impl<T> std::fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("len", &self.len())
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl<T> Mailbox<T> {
    /// An open mailbox holding at most `capacity` jobs (at least 1).
    pub(crate) fn new(capacity: usize, when_full: WhenFull) -> Self {
        Self {
            queue: Queue::bounded(capacity.max(1)),
            closing: AtomicBool::new(false),
            counter: None,
            when_full,
        }
    }

    /// The same, also counting its queued jobs in `counter` (raised before the send, so
    /// never below what is queued; lowered after a take, a drop or a refused send).
    pub(crate) fn counted(
        capacity: usize,
        when_full: WhenFull,
        counter: &'static std::sync::atomic::AtomicUsize,
    ) -> Self {
        Self {
            counter: Some(counter),
            ..Self::new(capacity, when_full)
        }
    }

    /// Jobs queued now.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Most jobs it holds.
    pub(crate) fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Whether [`close`](Self::close) was called (new posts are refused).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Taker side: the next job, if any. The taker must run it (or drop it).
    pub(crate) fn try_take(&self) -> Option<T> {
        let job = self.queue.try_recv()?;
        self.uncount(1);
        Some(job)
    }

    /// Queues `job` and calls `wake` (after the fence) to wake a taker; `wake` says whether
    /// it woke a parked one. If the queue is full: fails (`WhenFull::Fail`) or waits for
    /// room, running `serve` meanwhile if given (an owner thread keeps serving its own
    /// queues, so two full interpreters calling each other cannot deadlock). The caller is
    /// detached (R4).
    ///
    /// `Err` only if the job was not queued (it was dropped: its slot is complete); after
    /// `Ok` the caller must wait on the job's slot (see the module docs).
    pub(crate) fn post(
        &self,
        job: T,
        serve: Option<&dyn Fn()>,
        wake: impl FnOnce() -> bool,
    ) -> Result<Posted, Refused> {
        if self.is_closing() {
            return Err(Refused::Closed);
        }
        // Counted before it is queued, so the count is never below what the queues hold: a
        // taker may take the job as soon as it is queued, and a count raised only after
        // that dipped below (even to zero while another lane's call waited). A seat that
        // had just taken a call read that zero in `hand_off` and woke no one, while the
        // other call's poster had counted the seat as looking: that call waited behind a
        // long one while two seats slept (tests/main_pool_wake.rs, under load on 3.12).
        if let Some(c) = self.counter {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if let Err(refused) = self.send(job, serve) {
            self.uncount(1);
            return Err(refused);
        }
        // Pairs with the fence in `close` (either its drain sees the job or we see
        // `closing`) and with the takers' park handshake (`wake` reads their state).
        fence(Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            // Our job is drained here, or by `close`, or a taker got it first and runs
            // it: the caller waits for its slot in every case.
            self.drain();
            return Ok(Posted::Closed);
        }
        Ok(if wake() { Posted::Woke } else { Posted::Awake })
    }

    fn send(&self, job: T, serve: Option<&dyn Fn()>) -> Result<(), Refused> {
        let mut job = job;
        loop {
            match self.queue.try_send(job) {
                Ok(()) => return Ok(()),
                Err(j) => match (self.when_full, serve) {
                    (WhenFull::Fail, _) => return Err(Refused::Full),
                    (WhenFull::Block, None) => return self.queue.send(j),
                    (WhenFull::Block, Some(serve)) => {
                        if self.is_closing() {
                            return Err(Refused::Closed);
                        }
                        serve();
                        sync::thread::yield_now();
                        job = j;
                    }
                },
            }
        }
    }

    /// Refuses new posts and drops every queued job unrun (each completes its caller with
    /// "gone"); a post racing this drains its own job (see the module docs). Jobs already
    /// taken run to their end. Idempotent.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Pairs with the fence in `post`.
        fence(Ordering::SeqCst);
        self.drain();
    }

    /// Drops every queued job unrun; returns how many.
    pub(crate) fn drain(&self) -> usize {
        let mut n = 0;
        while let Some(job) = self.queue.try_recv() {
            drop(job);
            n += 1;
        }
        self.uncount(n);
        n
    }

    fn uncount(&self, n: usize) {
        if let (Some(c), true) = (self.counter, n > 0) {
            c.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The bounded MPMC queue: crossbeam's channel (the mailbox holds both ends, so it never
/// disconnects).
#[cfg(not(loom))]
struct Queue<T> {
    tx: crossbeam_channel::Sender<T>,
    rx: crossbeam_channel::Receiver<T>,
}

#[cfg(not(loom))]
impl<T> Queue<T> {
    fn bounded(capacity: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Self { tx, rx }
    }

    fn try_send(&self, t: T) -> Result<(), T> {
        self.tx.try_send(t).map_err(|e| e.into_inner())
    }

    /// Blocks for room. Someone always makes room: a closed mailbox is drained by every
    /// poster that queues into it after closing, an open one by its takers.
    fn send(&self, t: T) -> Result<(), Refused> {
        self.tx.send(t).map_err(|_| Refused::Closed)
    }

    fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    fn len(&self) -> usize {
        self.tx.len()
    }

    fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    fn capacity(&self) -> usize {
        self.tx.capacity().unwrap_or(usize::MAX)
    }
}

/// Under loom: a mutex-guarded deque stands in for the channel (loom sees its lock, not
/// crossbeam's atomics). Stronger than the channel (every access is a lock), so the model
/// checks the mailbox's own fences and flag, not the channel's internals.
#[cfg(loom)]
struct Queue<T> {
    q: loom::sync::Mutex<VecDeque<T>>,
    capacity: usize,
}

#[cfg(loom)]
impl<T> Queue<T> {
    fn bounded(capacity: usize) -> Self {
        Self {
            q: loom::sync::Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    fn lock(&self) -> loom::sync::MutexGuard<'_, VecDeque<T>> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_send(&self, t: T) -> Result<(), T> {
        let mut q = self.lock();
        if q.len() >= self.capacity {
            return Err(t);
        }
        q.push_back(t);
        Ok(())
    }

    fn send(&self, t: T) -> Result<(), Refused> {
        let mut t = t;
        loop {
            match self.try_send(t) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    t = back;
                    sync::thread::yield_now();
                }
            }
        }
    }

    fn try_recv(&self) -> Option<T> {
        self.lock().pop_front()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(all(test, loom))]
mod loom_model;
