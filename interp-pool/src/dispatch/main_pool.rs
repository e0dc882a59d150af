//! The main interpreter's pool of owner threads, and [`MainLane`]: one workload's share
//! of it.
//!
//! Extension modules that refuse subinterpreters run in the main interpreter, which every
//! such workload shares. One owner thread would serialise all of them, and C code that
//! releases the GIL (BLAS, compression, I/O) could never overlap. So main is served by a
//! pool of owner threads ("seats"), each with a thread state of its own in main for its
//! whole life (mod_wsgi's pattern), all under main's one [`InterpreterId`].
//!
//! A lane is a mailbox (`mailbox.rs`) plus a *limit*: at most `limit` seats run the lane's
//! calls at once. A seat *holds* a lane while it runs one of its calls; a call made on a seat
//! that already holds the lane (re-entry, A→B→A) runs inline there and does not count again.
//! A call from a seat that does not hold the lane runs inline too if the lane has room, else
//! it is queued.
//!
//! What a seat may take: its own queue first, then a queued call of any lane it holds (at
//! any depth) or that has room, in its top-level loop and in every nested wait. That keeps
//! progress: a call queued on a lane with room may be taken by every seat, nested ones
//! included (every seat may be nested-waiting on interpreters that call into the lane); a
//! call queued on a lane at its limit may be taken by the seats holding it, each of which is
//! running one of the lane's calls (and releasing its last hold fences and, if calls are
//! still queued, wakes a seat for them: a releaser may return to its own caller instead of
//! serving) or nested-waiting under one (and serves it). So a chain of calls through lanes
//! at their limit cannot deadlock. The price is latency, not deadlock: a nested seat that
//! takes an unrelated lane's long call returns to its own caller only after it (LIFO).
//!
//! Waking follows `group.rs`: a poster queues, fences (in `Mailbox::post`), and claims a
//! parked seat that may take the call (any seat if the lane has room, else one holding it)
//! unless the seats that may and are spinning for work (`Looking`) are at least as many as
//! the calls queued on all lanes (`QUEUED`): then, even if every other queued call goes to
//! one of them first, one is left for this call. A looking seat clears its flag before it
//! stores Parked, fences and re-checks the lanes, so if the poster saw the flag the seat
//! sees the call; a seat that stops looking without parking (it took a call, its nested
//! wait is over, it is ending) clears the flag, fences and, if calls are still queued,
//! wakes seats for them (`hand_off`), since a poster may have counted it for one of them.
//! A seat releasing a lane fences and, if calls are still queued there,
//! wakes a seat for them the same way, so a call queued while the lane was full is never
//! left behind by a releaser that returns to its own caller instead of serving.
//!
//! Shutdown closes every lane before it asks any seat to end (`close_all`), so a seat never
//! leaves a lane call behind: a seat leaves its loop only when it finds nothing to take.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::capi::attach::Attached;
use crate::config::InterpreterConfig;
use crate::dispatch::direct;
use crate::dispatch::handle::{self, InterpreterHandle};
use crate::error::{Error, Result};
use crate::governance::cancel::{self, CallOptions, Interruptible};
use crate::owner::activation;
use crate::owner::held;
use crate::owner::holders::WaitingHolders;
use crate::owner::job::{Call, Job};
use crate::owner::mailbox::Mailbox;
use crate::owner::pace::Pace;
use crate::owner::seat::{HeldLane, Hold, Lanes, Release, Seat};
use crate::owner::worker::{self, MainSeat, Owner};
use crate::process::runtime;
use crate::InterpreterId;

/// Most seats a pool may have (a lane tracks holds per seat).
pub const MAX_MAIN_THREADS: usize = 64;

/// Seats requested for the pool (0: available parallelism), read when it starts.
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// The pool, once started (it lives until `shutdown`).
static POOL: Mutex<Option<Arc<Pool>>> = Mutex::new(None);

/// Every open lane, scanned by idle seats; `None` once shutdown closed them all (no lane
/// opens after that).
static LANES: RwLock<Option<Vec<Arc<LaneLink>>>> = RwLock::new(Some(Vec::new()));

/// Calls queued on all lanes together: a seat looking for work reads this one word and
/// takes the lanes' lock only when something is queued somewhere. Raised before a push
/// (so it never reads below what the lanes hold: see `Mailbox::post`), lowered after a
/// take, a drop or a refused push.
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Per seat: where its next scan of the lanes starts (only that seat writes it).
static SCAN_FROM: [AtomicUsize; MAX_MAIN_THREADS] =
    [const { AtomicUsize::new(0) }; MAX_MAIN_THREADS];

/// Per seat: between jobs and not parked (it will see a queued call without a wake-up).
static LOOKING: [AtomicBool; MAX_MAIN_THREADS] =
    [const { AtomicBool::new(false) }; MAX_MAIN_THREADS];

/// The pool's side of the seats' serve loop (`owner::seat::Lanes`): every seat is given
/// this, so the loop takes lane calls by this pool's rules without naming the pool.
struct PoolLanes;

static POOL_LANES: PoolLanes = PoolLanes;

impl Lanes for PoolLanes {
    fn take(&self, seat: usize) -> Option<(Job, Hold)> {
        take(seat)
    }

    fn has_work(&self, seat: usize) -> bool {
        has_work(seat)
    }

    fn set_looking(&self, seat: usize, on: bool) {
        // Relaxed: clearing it is ordered before the seat's queue checks by the fence that
        // follows (`park_unless`, `hand_off`); setting it is only a hint to posters.
        LOOKING[seat].store(on, Ordering::Relaxed);
    }

    fn hand_off(&self) {
        hand_off();
    }
}

/// Sets how many owner threads serve the main interpreter: `0` (the default) means
/// `std::thread::available_parallelism()`, and the value is capped at
/// [`MAX_MAIN_THREADS`]. Takes effect when the pool starts (the first
/// [`MainLane::new`] or [`InterpreterHandle::main`]); returns whether it will, `false`
/// once the pool is running with the size it started with.
pub fn set_main_threads(threads: usize) -> bool {
    let pool = lock_pool();
    REQUESTED.store(threads, Ordering::Relaxed);
    pool.is_none()
}

/// How many owner threads serve the main interpreter: the running pool's size, or the
/// size it will start with.
pub fn main_threads() -> usize {
    match &*lock_pool() {
        Some(p) => p.seats.len(),
        None => pool_size(),
    }
}

fn pool_size() -> usize {
    let n = match REQUESTED.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    n.clamp(1, MAX_MAIN_THREADS)
}

fn lock_pool() -> std::sync::MutexGuard<'static, Option<Arc<Pool>>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The open lanes (none once shutdown closed them).
fn lanes() -> std::sync::RwLockReadGuard<'static, Option<Vec<Arc<LaneLink>>>> {
    LANES.read().unwrap_or_else(|e| e.into_inner())
}

fn lanes_mut() -> std::sync::RwLockWriteGuard<'static, Option<Vec<Arc<LaneLink>>>> {
    LANES.write().unwrap_or_else(|e| e.into_inner())
}

/// The seats, in order: seat 0 is `py-__main__`, the one [`InterpreterHandle::main`]
/// names.
pub(crate) struct Pool {
    seats: Vec<InterpreterHandle>,
}

impl Pool {
    /// The running pool, started with `config`'s depth cap, stack size and wait policy
    /// on first use.
    pub(crate) fn get(config: &InterpreterConfig) -> Result<Arc<Pool>> {
        let mut slot = lock_pool();
        if let Some(p) = slot.as_ref().filter(|p| !p.is_closed()) {
            return Ok(Arc::clone(p));
        }
        let rt = runtime::get()?;
        let size = pool_size();
        let mut seats: Vec<InterpreterHandle> = Vec::with_capacity(size);
        for index in 0..size {
            let name = match index {
                0 => "__main__".to_owned(),
                i => format!("__main__-{i}"),
            };
            let config = InterpreterConfig {
                name,
                ..config.clone()
            };
            let seat = MainSeat {
                seat: Seat {
                    index,
                    lanes: &POOL_LANES,
                },
                first: seats.first().map(|h| Arc::clone(h.link_arc())),
            };
            match worker::spawn(rt, config, worker::Origin::Main, Some(seat)) {
                Ok(link) => seats.push(InterpreterHandle::from_link(link)),
                // Seat 0 is needed; a pool smaller than asked still serves.
                Err(e) if seats.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, seats = seats.len(), "main pool runs with fewer threads");
                    break;
                }
            }
        }
        let pool = Arc::new(Pool { seats });
        *slot = Some(Arc::clone(&pool));
        Ok(pool)
    }

    /// Seat 0's handle.
    pub(crate) fn first(&self) -> InterpreterHandle {
        self.seats[0].clone()
    }

    fn id(&self) -> InterpreterId {
        self.seats[0].id()
    }

    fn is_closed(&self) -> bool {
        self.seats[0].link().is_closing()
    }

    /// Claims one parked seat for which `may_take(index)` holds; true if it did.
    fn claim_parked(&self, may_take: impl Fn(usize) -> bool) -> bool {
        self.seats
            .iter()
            .enumerate()
            .any(|(i, s)| may_take(i) && s.claim_parked())
    }
}

/// What callers and seats share about one lane.
struct LaneLink {
    name: String,
    pool: Arc<Pool>,
    /// The lane's queue (`mailbox.rs`), counted in `QUEUED`.
    mailbox: Mailbox,
    /// Seats that may run the lane's calls at once.
    limit: AtomicUsize,
    /// Seats holding the lane now (each counted once however deep it holds it).
    active: AtomicUsize,
    /// Per seat: how deep it holds the lane (written only by that seat).
    holds: Vec<AtomicUsize>,
    served: AtomicU64,
    max_depth: usize,
    caller_spin: Duration,
    /// Its callers' recent reply times, which stretch their spin (`pace.rs`): per lane,
    /// since every lane shares the one interpreter.
    pace: Pace,
    /// `end` waits here for the last hold to go.
    idle: (Mutex<()>, Condvar),
    /// Callers may run its calls themselves, on a main-interpreter thread state of their
    /// own, within the limit (`InterpreterConfig::direct`, [`MainLane::set_direct`]).
    direct: AtomicBool,
    /// Calls callers ran themselves.
    direct_calls: AtomicU64,
    /// Callers' threads holding the lane directly that wait on another interpreter: they
    /// serve its queue (`HeldLane`), so posts wake them.
    holders: WaitingHolders,
}

/// One workload's share of the main interpreter's thread pool: a queue, and a limit on
/// how many pool threads run its calls at once (see the module docs). Cheap to clone;
/// `Send + Sync`.
///
/// Every lane runs in the same interpreter: module state is shared by all of them and by
/// all of a lane's concurrent calls. A limit of 1 keeps a workload's calls one at a time,
/// as code never run concurrently expects.
#[derive(Clone)]
pub struct MainLane {
    link: Arc<LaneLink>,
}

impl std::fmt::Debug for MainLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainLane")
            .field("name", &self.link.name)
            .field("limit", &self.limit())
            .field("running", &self.running())
            .finish()
    }
}

impl MainLane {
    /// A lane named `config.name` with room for `limit` concurrent calls (at least 1, at
    /// most the pool's size: more could never run), its queue, depth cap and wait policy
    /// from `config`. Starts the pool if it is not running (with `config`'s stack size
    /// and server wait policy; see [`set_main_threads`]).
    pub fn new(config: &InterpreterConfig, limit: usize) -> Result<Self> {
        config.validate()?;
        let pool = Pool::get(config)?;
        let seats = pool.seats.len();
        let link = Arc::new(LaneLink {
            name: config.name.clone(),
            limit: AtomicUsize::new(limit.clamp(1, seats)),
            active: AtomicUsize::new(0),
            holds: (0..seats).map(|_| AtomicUsize::new(0)).collect(),
            pool,
            mailbox: Mailbox::counted(config.queue_capacity, config.when_full, &QUEUED),
            served: AtomicU64::new(0),
            max_depth: config.max_depth,
            caller_spin: config.wait.caller_spin,
            pace: Pace::new(config.wait.caller_spin_max),
            idle: (Mutex::new(()), Condvar::new()),
            direct: AtomicBool::new(config.direct),
            direct_calls: AtomicU64::new(0),
            holders: WaitingHolders::default(),
        });
        // Under the lanes' lock: shutdown's `close_all` either sees this lane or has run.
        lanes_mut()
            .as_mut()
            .ok_or(Error::ShutDown)?
            .push(Arc::clone(&link));
        Ok(Self { link })
    }

    /// The main interpreter's id (the same for every lane).
    pub fn id(&self) -> InterpreterId {
        self.link.pool.id()
    }

    /// The name it was made with.
    pub fn name(&self) -> &str {
        &self.link.name
    }

    /// How many pool threads may run its calls at once.
    pub fn limit(&self) -> usize {
        self.link.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit (clamped to 1..=pool size); calls already running finish. Returns
    /// the limit now in force.
    pub fn set_limit(&self, limit: usize) -> usize {
        let l = &*self.link;
        let limit = limit.clamp(1, l.holds.len());
        l.limit.store(limit, Ordering::SeqCst);
        // A raised limit may let queued calls start now.
        fence(Ordering::SeqCst);
        if !l.mailbox.is_empty() {
            l.wake_for_queued();
        }
        limit
    }

    /// Pool threads running its calls now.
    pub fn running(&self) -> usize {
        self.link.active.load(Ordering::Relaxed)
    }

    /// Calls waiting in its queue now (not counting running ones).
    pub fn queue_len(&self) -> usize {
        self.link.mailbox.len()
    }

    /// Switches direct dispatch ([`InterpreterConfig::direct`]) on or off for later calls:
    /// a caller's thread then runs a call itself, attached to the main interpreter through
    /// a thread state of its own, when the lane has room and nothing queued.
    pub fn set_direct(&self, on: bool) {
        self.link.direct.store(on, Ordering::Relaxed);
    }

    /// Calls callers' threads ran themselves (direct dispatch).
    pub fn direct_calls(&self) -> u64 {
        self.link.direct_calls.load(Ordering::Relaxed)
    }

    /// Calls a pool thread took from its queue so far, and direct calls (inline calls not
    /// counted).
    pub fn calls_served(&self) -> u64 {
        self.link.served.load(Ordering::Relaxed) + self.link.direct_calls.load(Ordering::Relaxed)
    }

    /// How many times a caller of the lane (one that is no owner thread) committed to park
    /// for its reply; see [`InterpreterHandle::caller_parks`].
    pub fn caller_parks(&self) -> u64 {
        self.link.pace.parks()
    }

    /// The pool's threads (seat 0 first), for their clocks and memory accounts.
    pub fn threads(&self) -> &[InterpreterHandle] {
        &self.link.pool.seats
    }

    /// Whether [`end`](Self::end) was called.
    pub fn is_ended(&self) -> bool {
        self.link.mailbox.is_closing()
    }

    /// Runs `f` in the main interpreter on a pool thread, within the lane's limit, and
    /// returns the result: inline on a pool thread that holds the lane or finds room in
    /// it, else queued (this thread blocks, detached; an owner thread serves its own
    /// queues meanwhile). A panic in `f` resumes here.
    ///
    /// # Errors
    /// [`Error::InterpreterGone`] once the lane (or the pool) has ended,
    /// [`Error::ReentryLimit`], [`Error::Busy`] with `WhenFull::Fail`, or whatever `f`
    /// returns.
    pub fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Attached<'_>) -> Result<R> + Send,
        R: Send,
    {
        let l = &*self.link;
        if l.mailbox.is_closing() || l.pool.is_closed() {
            return Err(self.gone());
        }
        let depth = activation::depth() + 1;
        if depth > l.max_depth {
            return Err(Error::ReentryLimit {
                depth,
                limit: l.max_depth,
            });
        }
        let owner = activation::owner();
        if let Some((owner, seat)) = owner.and_then(|o| Some((o, o.seat?.index))) {
            if let Some(_hold) = acquire(&self.link, seat) {
                return handle::run_inline(owner, depth, f);
            }
        }
        // A caller's thread holding the lane directly: inline, not counted again.
        let key = Arc::as_ptr(&self.link) as *const ();
        if owner.is_none() {
            if let Some(place) = held::find_lane(key) {
                return direct::run_held(&place, depth, f);
            }
        }
        let f = match owner.is_none() && l.direct.load(Ordering::Relaxed) {
            true => match self.try_direct(depth, f) {
                Ok(out) => return out,
                Err(f) => f,
            },
            false => f,
        };
        let mut call = Call::new(f);
        handle::post_and_wait(
            &mut call,
            owner,
            depth,
            |job, serving| self.post(job, serving),
            &|| false,
            &l.pace,
        )?;
        handle::take_result(call, self.gone())
    }

    /// Runs `f` on this thread attached to main if the lane has room and nothing queued
    /// (direct dispatch); gives `f` back otherwise.
    fn try_direct<R, F>(&self, depth: usize, f: F) -> std::result::Result<Result<R>, F>
    where
        F: FnOnce(&Attached<'_>) -> Result<R>,
    {
        let l = &self.link;
        if !l.mailbox.is_empty() {
            return Err(f);
        }
        let seat0 = l.pool.seats[0].link_arc();
        // Main is already attached further down this thread (through another lane): the
        // same thread state, its C recursion budget already set.
        let nested = held::find(seat0.id).is_some();
        let levels = match nested {
            true => None,
            false => match direct::recursion_budget() {
                Some(levels) => Some(levels),
                None => return Err(f),
            },
        };
        let Some(_hold) = HostHold::acquire(l) else {
            return Err(f);
        };
        let lane = Some(Arc::clone(l) as Arc<dyn HeldLane>);
        // `calls_served` adds direct calls to the queued ones.
        let counted = || {
            l.direct_calls.fetch_add(1, Ordering::Relaxed);
        };
        // SAFETY: R13: we hold the lane (`_hold`, counted in `DIRECT_IN_MAIN`): main lives
        // until finalize, which waits for direct calls to end (`close_all`), and many
        // threads may attach main at once (it has one GIL).
        unsafe { direct::run_here(seat0, lane, depth, levels, counted, f) }
    }

    /// [`call`](Self::call) with a deadline and/or a cancel token, as
    /// [`InterpreterHandle::call_with`]; the interrupt is aimed at the pool thread that
    /// runs the call, bound when the call starts there.
    pub fn call_with<R, F>(&self, opts: &CallOptions, f: F) -> Result<R>
    where
        F: FnOnce(&Attached<'_>) -> Result<R> + Send,
        R: Send,
    {
        if opts.is_plain() {
            return self.call(f);
        }
        let ctl = Interruptible::new(opts);
        let _armed = opts.timeout.map(|t| cancel::arm(&ctl, t));
        self.call(|att| ctl.run(att, f))
    }

    /// Closes the lane: new calls fail with [`Error::InterpreterGone`], queued ones fail the
    /// same way, running ones finish; waits for those unless called on an owner thread
    /// (which could be one of them). The pool and the main interpreter live on.
    pub fn end(&self) {
        let l = &*self.link;
        // Queued calls fail now; a post racing this drains its own call or is waited for
        // (`mailbox.rs`).
        l.mailbox.close();
        if let Some(lanes) = lanes_mut().as_mut() {
            lanes.retain(|x| !Arc::ptr_eq(x, &self.link));
        }
        if activation::owner().is_some() {
            return;
        }
        let (lock, cv) = &l.idle;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while l.active.load(Ordering::SeqCst) != 0 {
            guard = cv
                .wait_timeout(guard, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn gone(&self) -> Error {
        Error::InterpreterGone { interp: self.id() }
    }

    /// Queues `job` on the lane's mailbox and wakes a seat that may take it. Returns the
    /// caller's spin budget: zero if it woke a parked seat (which needs a moment to run),
    /// else the lane's spin. `Err` only if the job was not queued (`mailbox.rs`).
    fn post(&self, job: Job, serving: Option<&Owner>) -> Result<Duration> {
        let l = &*self.link;
        // The wake runs after the mailbox's fence (`QUEUED` is raised before it), which
        // pairs with each seat's `park_unless` (it stores Parked, fences, re-checks the
        // lanes) and with `Hold::drop`'s fence: either a seat sees the job or we see it
        // Parked and claim it; either a releaser sees the job or we see its release.
        let wake = || l.wake_for_queued() | l.holders.wake();
        worker::post_to(&l.mailbox, job, serving, || self.id(), wake, l.caller_spin)
    }
}

impl LaneLink {
    /// Whether seat `index` may take one of the lane's queued calls now.
    fn takeable_by(&self, index: usize) -> bool {
        self.holds[index].load(Ordering::Relaxed) > 0
            || self.active.load(Ordering::SeqCst) < self.limit.load(Ordering::SeqCst)
    }

    /// Claims a parked seat that may take this lane's queued calls, unless the seats that
    /// may and are looking (`Looking`: between jobs, not parked) are at least as many as
    /// the calls queued on *all* lanes (`QUEUED`): then, even if every other queued call
    /// goes to one of them first, one is left for this lane's, and waking another would
    /// cost a futex wake-up and leave the caller parking for a reply that comes in
    /// microseconds. True if it claimed one.
    ///
    /// Counting one lane's queue instead let two posters on two lanes count the same
    /// looking seat and wake nobody: the seat took one call, and if that one was long the
    /// other waited behind it while other seats slept (`tests/main_pool_wake.rs`).
    fn wake_for_queued(&self) -> bool {
        let seats = self.holds.len();
        let looking = (0..seats)
            .filter(|&i| LOOKING[i].load(Ordering::SeqCst) && self.takeable_by(i))
            .count();
        if looking > 0 && looking >= QUEUED.load(Ordering::SeqCst) {
            return false;
        }
        self.pool.claim_parked(|i| self.takeable_by(i))
    }
}

/// Takes `lane` for seat `index` (a [`Hold`], counted once however deep the seat nests):
/// always if the seat already holds it (re-entry), else if the lane has room.
fn acquire(lane: &Arc<LaneLink>, index: usize) -> Option<Hold> {
    let mine = &lane.holds[index];
    if mine.load(Ordering::Relaxed) == 0 && !lane.enter() {
        return None;
    }
    // Only seat `index` writes its count: a plain load and store.
    mine.store(mine.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    Some(Hold::new(Arc::clone(lane) as Arc<dyn Release>, index))
}

impl HeldLane for LaneLink {
    fn take_held(&self) -> Option<Job> {
        let job = self.mailbox.try_take()?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Some(job)
    }

    fn has_queued(&self) -> bool {
        !self.mailbox.is_empty()
    }

    fn holders(&self) -> &WaitingHolders {
        &self.holders
    }
}

/// A caller's thread holding a lane for a direct call, counted against its limit and in
/// `DIRECT_IN_MAIN`; released on drop (waking seats for calls queued meanwhile).
struct HostHold<'a>(&'a LaneLink);

impl<'a> HostHold<'a> {
    fn acquire(lane: &'a LaneLink) -> Option<Self> {
        // Counted, fenced, then `DIRECT_CLOSED` read: a Dekker pair with `close_all`,
        // which sets it, fences and waits for the count to fall to zero.
        DIRECT_IN_MAIN.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if DIRECT_CLOSED.load(Ordering::SeqCst) || lane.mailbox.is_closing() || !lane.enter() {
            DIRECT_IN_MAIN.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(lane))
    }
}

impl Drop for HostHold<'_> {
    fn drop(&mut self) {
        self.0.leave();
        // Last: `close_all` may go on once this reaches zero.
        DIRECT_IN_MAIN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Direct calls running in main now (callers' threads attached through their own thread
/// states), and whether shutdown closed main to them: finalize must not start while one
/// runs (it deletes every thread state of main).
static DIRECT_IN_MAIN: AtomicUsize = AtomicUsize::new(0);
static DIRECT_CLOSED: AtomicBool = AtomicBool::new(false);

impl Release for LaneLink {
    fn release(&self, index: usize) {
        let mine = &self.holds[index];
        let depth = mine.load(Ordering::Relaxed);
        mine.store(depth - 1, Ordering::Relaxed);
        if depth != 1 {
            return;
        }
        self.leave();
    }
}

impl LaneLink {
    /// Counts one more holder (a seat, or a caller's thread running a direct call) if the
    /// lane has room.
    fn enter(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                (a < limit).then_some(a + 1)
            })
            .is_ok()
    }

    /// A holder lets go: wakes a seat for calls queued meanwhile, and `end` if it waits.
    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        // Pairs with the fence in `MainLane::post` (see there).
        fence(Ordering::SeqCst);
        if !self.mailbox.is_empty() {
            self.wake_for_queued();
        }
        if self.mailbox.is_closing() {
            let _guard = self.idle.0.lock().unwrap_or_else(|e| e.into_inner());
            self.idle.1.notify_all();
        }
    }
}

/// Seat side: the next queued call seat `index` may take, with the hold it runs under.
/// Scans the lanes from a rotating start so one busy lane cannot starve the others.
fn take(index: usize) -> Option<(Job, Hold)> {
    if QUEUED.load(Ordering::SeqCst) == 0 {
        return None;
    }
    let lanes = lanes();
    let lanes = lanes.as_deref().unwrap_or_default();
    let n = lanes.len();
    if n == 0 {
        return None;
    }
    let start = SCAN_FROM[index].load(Ordering::Relaxed);
    SCAN_FROM[index].store(start.wrapping_add(1), Ordering::Relaxed);
    for k in 0..n {
        let lane = &lanes[(start + k) % n];
        if lane.mailbox.is_empty() {
            continue;
        }
        let Some(hold) = acquire(lane, index) else {
            continue;
        };
        if let Some(job) = lane.mailbox.try_take() {
            lane.served.fetch_add(1, Ordering::Relaxed);
            return Some((job, hold));
        }
    }
    None
}

/// Seat side: whether any lane has a call seat `index` may take (the park re-check).
fn has_work(index: usize) -> bool {
    QUEUED.load(Ordering::SeqCst) != 0
        && lanes()
            .iter()
            .flatten()
            .any(|l| !l.mailbox.is_empty() && l.takeable_by(index))
}

/// A seat that stops looking without parking (it took a call, or its nested wait is over):
/// after clearing its flag, wakes seats for calls still queued, which posters that saw it
/// looking may have left to it. (A seat that took a long call while a poster counted it for
/// another lane's call would otherwise leave that call behind the long one while other
/// seats sleep.) A fence and one load when nothing else is queued.
fn hand_off() {
    // Pairs with the fence in `Mailbox::post` (after `QUEUED` was raised): the flag's
    // clearing is ordered before our reads of the queues.
    fence(Ordering::SeqCst);
    if QUEUED.load(Ordering::SeqCst) == 0 {
        return;
    }
    for l in lanes().iter().flatten().filter(|l| !l.mailbox.is_empty()) {
        l.wake_for_queued();
    }
}

/// At shutdown, before any owner is asked to end: closes every lane (its queued calls fail,
/// and so does every later post or new lane). Before, lanes were drained only after every
/// owner had ended, so an owner waiting on a lane call that no seat would run any more
/// (the seats were ending) kept `shutdown` waiting for ever. Now a call on a lane is
/// drained here, drained by its poster, or was taken by a seat, which runs it before it
/// ends (a seat leaves its loop only when it finds nothing to take).
pub(crate) fn close_all() {
    let lanes = lanes_mut().take().unwrap_or_default();
    for l in &lanes {
        l.mailbox.close();
    }
    // No direct call enters main from now on; those running finish (any interpreter they
    // wait on is still alive: owners are asked to end after this).
    DIRECT_CLOSED.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    while DIRECT_IN_MAIN.load(Ordering::SeqCst) != 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
}
