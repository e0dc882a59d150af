//! The owner thread: creates its interpreter, serves the interpreter's queue (also while
//! it waits on another interpreter), and ends the interpreter on the same thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::claim::Claim;
use super::ending::Ending;
use super::enter::{self, Kind};
use super::held;
use super::holders::WaitingHolders;
use super::host::HostStates;
use super::seat::{Hold, Looking, Seat};
use crate::capi::attach::{self, AttachGuard, Attached};
use crate::capi::ffi::{self, sys};
use crate::config::InterpreterConfig;
use crate::error::{Error, Result};
use crate::governance::cpu::OwnerClock;
use crate::governance::interrupt::{Barrier, InterruptClasses, InterruptTarget};
use crate::owner::activation::{DepthGuard, OwnerRegistration};
use crate::owner::job::Job;
use crate::owner::mailbox::{Mailbox, Posted, Refused};
use crate::owner::pace::Pace;
use crate::owner::wait::{spin_until, OwnerState, OwnerStateCell, ReplySlot};
use crate::process::memory::{self, MemoryAccount};
use crate::process::runtime::Runtime;
use crate::InterpreterId;

/// A group's process-wide identity (`InterpreterGroup`), kept by each member it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(u64);

impl GroupId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What callers share with an owner thread.
#[derive(Debug)]
pub(crate) struct OwnerLink {
    pub(crate) id: InterpreterId,
    pub(crate) name: Mutex<String>,
    /// CPython's own id for the interpreter (for logs).
    pub(crate) python_id: i64,
    /// The interpreter's own queue (`mailbox.rs`): calls that must run on this owner.
    /// Closed by the owner at `retire`, which drops what is still queued.
    pub(crate) mailbox: Mailbox,
    pub(crate) thread: Thread,
    /// What the owner thread is doing (`wait::OwnerState`): callers spin only if it is not
    /// parked, and yield rather than spin while it waits on another interpreter.
    pub(crate) state: OwnerStateCell,
    /// Asked once by `end` (new calls fail; the owner leaves its top-level loop when it
    /// sees it, then closes its mailbox), and done once the interpreter has ended.
    pub(crate) ending: Ending,
    pub(crate) max_depth: usize,
    pub(crate) caller_spin: Duration,
    /// Its callers' recent reply times, which stretch their spin (`pace.rs`).
    pub(crate) pace: Pace,
    /// Serves the main interpreter (which it never ends) rather than one it created.
    pub(crate) origin: Origin,
    /// Where interrupts of the calls running on this thread are raised (`interrupt.rs`):
    /// the thread state, the interrupt classes, R3's interrupt lock.
    pub(crate) target: Arc<InterruptTarget>,
    /// The group this interpreter serves as a member, if any (set once, on joining).
    pub(crate) group: OnceLock<GroupId>,
    /// Jobs run from its queues, by the owner or a holder serving them (an idle member's
    /// count stands still); `jobs_served` adds `direct_calls`.
    pub(crate) served: AtomicU64,
    /// Calls callers ran themselves on the interpreter (direct dispatch).
    pub(crate) direct_calls: AtomicU64,
    /// The owner thread's CPU clock and spin time (`cpu.rs`).
    pub(crate) clock: OwnerClock,
    /// What the interpreter allocates (`memory.rs`): current on the owner thread, and on
    /// a caller's thread during its direct calls.
    pub(crate) memory: Arc<MemoryAccount>,
    /// Callers may run calls themselves when it is free (`InterpreterConfig::direct`,
    /// `InterpreterHandle::set_direct`).
    pub(crate) direct: AtomicBool,
    /// Who may attach the interpreter now (`claim.rs`, R13).
    pub(crate) claim: Claim,
    /// The thread states callers' threads made for it (`host.rs`).
    pub(crate) hosts: HostStates,
    /// The mailbox of the group this interpreter joined (`group.rs`), served after its own
    /// (by the owner, or by a caller's thread holding the claim while it waits).
    pub(crate) group_mailbox: OnceLock<Arc<Mailbox>>,
    /// Set when the interpreter leaves its group: it stops taking the group's jobs.
    left_group: AtomicBool,
    /// Callers' threads that hold the claim and wait (on another interpreter): they
    /// serve this interpreter's queues meanwhile, so posts must wake them (`holders.rs`).
    pub(crate) holders: WaitingHolders,
}

impl OwnerLink {
    /// Queues `job` on the interpreter's mailbox and wakes the owner if it may be parked.
    /// Returns the caller's spin budget: non-zero only if the owner was not parked. The
    /// caller is detached. `Err` only if the job was not queued (see [`Mailbox::post`]);
    /// otherwise the caller waits on its slot.
    pub(crate) fn post(&self, job: Job, serving: Option<&Owner>) -> Result<Duration> {
        post_to(
            &self.mailbox,
            job,
            serving,
            || self.id,
            || {
                // After the mailbox's fence; pairs with `park_unless` in `serve`: either the
                // owner sees the job, or we see Parked and unpark it.
                let woke = self.wake_owner();
                // A caller's thread running a direct call: the owner cannot take the job
                // until it lets go (then it wakes the owner), unless it waits meanwhile
                // and serves it. Either way nobody is spinning for us to see.
                woke | self.holders.wake() | self.claim.held_by_caller()
            },
            self.caller_spin,
        )
    }

    /// Whether a job is queued for it: in its own mailbox, or its group's while a member.
    pub(crate) fn has_queued(&self) -> bool {
        !self.mailbox.is_empty() || self.group().is_some_and(|g| !g.is_empty())
    }

    /// The next job queued for it (its own mailbox first, then its group's).
    pub(crate) fn take_queued(&self) -> Option<Job> {
        self.mailbox
            .try_take()
            .or_else(|| self.group().and_then(|g| g.try_take()))
    }

    /// The group's mailbox while it is a member.
    fn group(&self) -> Option<&Arc<Mailbox>> {
        self.group_mailbox.get().filter(|_| !self.left_group())
    }

    /// Whether it left its group.
    pub(crate) fn left_group(&self) -> bool {
        self.left_group.load(Ordering::SeqCst)
    }

    /// Wakes the owner if it parked (a post, a given-up host-thread state, a claim let
    /// go); whether it did.
    pub(crate) fn wake_owner(&self) -> bool {
        self.state.unpark_if_parked(|| self.thread.unpark())
    }

    /// A caller's thread lets go of the claim after its direct call: if something waits
    /// for the interpreter (a queued job, a given-up state, the end), the owner takes over.
    pub(crate) fn release_caller_claim(&self) {
        // SeqCst store, then SeqCst loads of the queues and the owner's state: pairs with
        // the owner's park (stores Parked, fences, reads the claim).
        self.claim.release();
        if self.has_queued() || self.is_closing() {
            self.wake_owner();
        }
    }

    /// True while the owner waits on another interpreter: see `wait::OwnerState::Nested`.
    pub(crate) fn is_nested_waiting(&self) -> bool {
        self.state.load(Ordering::Relaxed) == OwnerState::Nested
    }

    /// Whether the interpreter was asked to end (new calls fail).
    pub(crate) fn is_closing(&self) -> bool {
        self.ending.is_requested()
    }

    /// Asks the owner thread to end the interpreter once it is back at its top level.
    pub(crate) fn request_end(&self) {
        self.ending.request();
        self.thread.unpark();
    }
}

/// Posts `job` to `mailbox` (an owner's, a group's or a lane's), `wake` waking a taker;
/// an owner thread (`serving`) serves its own queues while it waits for room. A refusal
/// becomes the error the caller sees, naming `interp()`. Returns the caller's base spin:
/// `caller_spin` if a taker was awake, zero if `wake` woke a parked one (it needs a moment
/// to run) or the mailbox closed meanwhile.
pub(crate) fn post_to(
    mailbox: &Mailbox,
    job: Job,
    serving: Option<&Owner>,
    interp: impl Fn() -> InterpreterId,
    wake: impl FnOnce() -> bool,
    caller_spin: Duration,
) -> Result<Duration> {
    let serve = || {
        if let Some(owner) = serving {
            owner.run_queued();
        }
    };
    let serve: Option<&dyn Fn()> = match serving {
        Some(_) => Some(&serve),
        None => None,
    };
    let posted = mailbox.post(job, serve, wake).map_err(|r| match r {
        Refused::Closed => Error::InterpreterGone { interp: interp() },
        Refused::Full => Error::Busy {
            interp: interp(),
            capacity: mailbox.capacity(),
        },
    })?;
    Ok(match posted {
        Posted::Awake => caller_spin,
        Posted::Woke | Posted::Closed => Duration::ZERO,
    })
}

/// Where an owner thread's interpreter comes from, and so how it is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Created on the owner thread with `Py_NewInterpreterFromConfig`; ended there.
    New,
    /// The main interpreter: the owner thread serves it through a thread state of its
    /// own, and at shutdown only deletes that thread state (R1: py-main finalizes).
    Main,
}

/// The owner thread's private state: registered in `activation` for the thread's life.
#[derive(Debug)]
pub(crate) struct Owner {
    pub(crate) link: Arc<OwnerLink>,
    /// The creation thread state: the interpreter's only one, for its whole life (R2).
    pub(crate) ts: *mut sys::PyThreadState,
    server_spin: Duration,
    /// The main-pool seat this thread is (`main_pool.rs`), if it serves the main interpreter.
    pub(crate) seat: Option<Seat>,
}

/// A main-pool owner thread's place: its index, and (for all but seat 0) the seat whose
/// interpreter id and interrupt classes it shares: they are the main interpreter's.
pub(crate) struct MainSeat {
    pub(crate) seat: Seat,
    pub(crate) first: Option<Arc<OwnerLink>>,
}

impl Owner {
    /// Creates the interpreter (or, for main, this thread's thread state in it) and its
    /// link. Creation, registration and the shutdown check happen under one lock, so
    /// `shutdown` (which sets its flag, then takes this lock, then drains) never misses an
    /// interpreter and never sees one appear afterwards (R8, R9).
    fn start(
        rt: &'static Runtime,
        id: InterpreterId,
        config: &InterpreterConfig,
        origin: Origin,
        seat: Option<MainSeat>,
    ) -> Result<Self> {
        let serial = rt.creation_lock();
        if crate::process::runtime::is_shut_down() {
            return Err(Error::ShutDown);
        }
        // Everything this thread allocates from here on, creation included, is the
        // interpreter's (for main: the unattributed work of its owner thread).
        let memory = MemoryAccount::new();
        memory.make_current();
        let created = match origin {
            Origin::New => create_interpreter(id, config),
            Origin::Main => main_thread_state(id, seat.as_ref().and_then(|s| s.first.as_deref())),
        };
        let created = created.inspect_err(|_| memory::clear_current())?;
        let link = Arc::new(OwnerLink {
            id,
            name: Mutex::new(config.name.clone()),
            python_id: created.python_id,
            mailbox: Mailbox::new(config.queue_capacity, config.when_full),
            thread: thread::current(),
            state: OwnerStateCell::new(OwnerState::Running),
            ending: Ending::default(),
            max_depth: config.max_depth,
            caller_spin: config.wait.caller_spin,
            pace: Pace::new(config.wait.caller_spin_max),
            origin,
            target: InterruptTarget::new(id, created.interp, created.ts, created.interrupts),
            group: OnceLock::new(),
            served: AtomicU64::new(0),
            direct_calls: AtomicU64::new(0),
            clock: OwnerClock::current_thread(),
            memory,
            // Main-pool seats serve lanes (`main_pool.rs`), which have their own limit.
            direct: AtomicBool::new(config.direct && origin == Origin::New),
            claim: Claim::default(),
            hosts: HostStates::default(),
            group_mailbox: OnceLock::new(),
            left_group: AtomicBool::new(false),
            holders: WaitingHolders::default(),
        });
        super::registry::register(&link);
        drop(serial);
        Ok(Self {
            link,
            ts: created.ts,
            server_spin: config.wait.server_spin,
            seat: seat.map(|s| s.seat),
        })
    }

    /// Lets the interpreter go once the top-level loop has returned: closes its mailbox,
    /// dropping the jobs still queued (each completes its caller with InterpreterGone),
    /// then ends the interpreter (or, for main, deletes this thread's thread state: R1,
    /// py-main finalizes main).
    fn retire(self) {
        let Owner { ts, link, .. } = self;
        // A direct call in progress finishes first; then no caller attaches any more (R13).
        link.claim.close(|| {
            link.state.park_unless(|| !link.claim.is_free());
            link.state.store(OwnerState::Running, Ordering::SeqCst);
        });
        link.mailbox.close();
        // Every thread state callers made here goes before the interpreter (R13).
        let hosts = link.hosts.end();
        // No interrupter may hold a thread state in the interpreter from here on (`ending`
        // is set, so none starts after we release these at the end of the function).
        let _no_interrupts = link.target.lock_out();
        let _no_host_interrupts = lock_out(&hosts);
        let release = |att: &Attached<'_>| {
            delete_host_states(att, &hosts);
            link.target.classes.release(att);
        };
        match link.origin {
            // SAFETY: R2: thread: the owner, which created `ts`; no call runs any more and
            // the top-level loop detaches between jobs, so none is attached; the
            // interrupter is kept out by the target's interrupt lock.
            Origin::New => unsafe { attach::end_interpreter(ts, link.id, release) },
            // SAFETY: R1/R2: `ts` is this thread's own thread state in main, unattached;
            // main lives on until py-main finalizes it (R9).
            Origin::Main => unsafe { attach::delete_thread_state(ts, link.id, release) },
        }
        super::registry::unregister(&link);
        link.clock.end();
        // Still under the interrupt lock: an interrupter that gets it next sees the end.
        link.target.mark_ended();
        link.ending.mark_done();
        tracing::debug!(interp = %link.id, "interpreter ended");
    }
}

/// Takes the interrupt locks of host-thread states about to be deleted and marks them
/// ended, so no interrupter attaches for them (before attaching: an interrupter holding a
/// lock may be waiting for the interpreter's GIL).
fn lock_out(hosts: &[Arc<InterruptTarget>]) -> Vec<std::sync::MutexGuard<'_, ()>> {
    hosts
        .iter()
        .map(|h| {
            let guard = h.lock_out();
            h.mark_ended();
            guard
        })
        .collect()
}

/// Deletes the host-thread states left at the end, attached through the owner's thread
/// state (`att`), their interrupt locks held (`lock_out`).
fn delete_host_states(att: &Attached<'_>, hosts: &[Arc<InterruptTarget>]) {
    for h in hosts {
        super::host::delete(att, h);
    }
}

/// Starts an owner thread and waits until its interpreter exists (or failed to).
pub(crate) fn spawn(
    rt: &'static Runtime,
    config: InterpreterConfig,
    origin: Origin,
    seat: Option<MainSeat>,
) -> Result<Arc<OwnerLink>> {
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    // Main-pool seats are one interpreter: they share seat 0's id.
    let id = match seat.as_ref().and_then(|s| s.first.as_ref()) {
        Some(first) => first.id,
        None => InterpreterId::next(),
    };
    let thread_name = format!("py-{}", config.name);
    // The thread is detached: `OwnerLink::ending` is how anyone waits for it.
    thread::Builder::new()
        .name(thread_name)
        .stack_size(config.stack_size)
        .spawn(move || owner_main(rt, id, config, origin, seat, ready_tx))
        .map_err(|e| Error::Init(format!("cannot start interpreter thread: {e}")))?;
    ready_rx.recv().unwrap_or_else(|_| {
        Err(Error::Internal(
            "interpreter thread exited before reporting".into(),
        ))
    })
}

fn owner_main(
    rt: &'static Runtime,
    id: InterpreterId,
    config: InterpreterConfig,
    origin: Origin,
    seat: Option<MainSeat>,
    ready: Sender<Result<Arc<OwnerLink>>>,
) {
    // Whatever happens below, waiters on `ending` must not hang: a panic here is a bug,
    // but it must not turn into a stuck `end()` or `shutdown()`.
    let ended = EndedOnExit(once_cell::sync::OnceCell::new());
    let owner = match Owner::start(rt, id, &config, origin, seat) {
        Ok(owner) => owner,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ended.0.set(Arc::clone(&owner.link));
    tracing::debug!(interp = %id, python_id = owner.link.python_id, name = %config.name, "interpreter created");
    {
        // SAFETY: R2: `owner` lives in this frame until after `retire` below, and the
        // registration is dropped at the end of this block, once the top-level loop has
        // returned (no call runs on this thread any more).
        let _registration = unsafe { OwnerRegistration::new(&owner) };
        if ready.send(Ok(Arc::clone(&owner.link))).is_ok() {
            owner.serve(None, owner.server_spin);
        }
    }
    owner.retire();
    memory::clear_current();
    drop(ended);
}

/// Marks the interpreter ended when the owner thread leaves `owner_main`, however it leaves.
struct EndedOnExit(once_cell::sync::OnceCell<Arc<OwnerLink>>);

impl Drop for EndedOnExit {
    fn drop(&mut self) {
        if let Some(link) = self.0.get() {
            if thread::panicking() {
                tracing::error!(interp = %link.id, "interpreter owner thread panicked (bug)");
            }
            link.clock.end();
            link.ending.mark_done();
        }
    }
}

/// What creating an interpreter (or main's thread state) on the owner thread yields.
struct Created {
    /// Detached; the interpreter's one thread state for the owner's life (R2).
    ts: *mut sys::PyThreadState,
    python_id: i64,
    interp: *mut sys::PyInterpreterState,
    interrupts: InterruptClasses,
}

/// Creates the interpreter on this (new) thread, makes its interrupt exception classes and
/// detaches it.
fn create_interpreter(id: InterpreterId, config: &InterpreterConfig) -> Result<Created> {
    let cfg = ffi::interpreter_config(config);
    let mut ts: *mut sys::PyThreadState = std::ptr::null_mut();
    // SAFETY: R1/R8: thread: a fresh owner thread with no thread state attached. interp:
    // the runtime is initialised and main's thread state is detached (R1); creation is
    // serialised by the caller (R8). On success `ts` is the new interpreter's tstate and
    // is attached; on failure CPython restores the previous (null) tstate.
    let status = unsafe { sys::Py_NewInterpreterFromConfig(&mut ts, &cfg) };
    ffi::status_result(status).map_err(Error::Init)?;
    if ts.is_null() {
        return Err(Error::Init(
            "Py_NewInterpreterFromConfig returned no thread state".into(),
        ));
    }
    // SAFETY: R2: `ts` is attached (just created); reading its interpreter needs nothing more.
    let interp = unsafe { sys::PyThreadState_GetInterpreter(ts) };
    // SAFETY: R2: `interp` is the live interpreter `ts` belongs to.
    let python_id = unsafe { sys::PyInterpreterState_GetID(interp) };
    // SAFETY: R10: `ts`, the new interpreter's thread state, stays attached during the scope.
    let interrupts = unsafe { Attached::scope(id, InterruptClasses::create) };
    // SAFETY: R2: `ts` is still attached on this thread; it stays valid while detached.
    unsafe { attach::detach_created() };
    let interrupts = match interrupts {
        Ok(i) => i,
        Err(e) => {
            // SAFETY: R2: this thread created `ts`, it is detached, nothing else runs in it.
            unsafe { attach::end_interpreter(ts, id, |_| {}) };
            return Err(e);
        }
    };
    Ok(Created {
        ts,
        python_id,
        interp,
        interrupts,
    })
}

/// A thread state of this thread's own for the main interpreter, detached. Seat 0 makes
/// main's interrupt classes; the other seats share them (`first`), so guest code catching
/// `interp_pool.DeadlineExceeded` catches what any seat raises.
fn main_thread_state(id: InterpreterId, first: Option<&OwnerLink>) -> Result<Created> {
    // SAFETY: R1/R9: the runtime is initialised, so the main interpreter exists for the
    // life of the process (until finalize, which waits for this thread to end).
    let interp = unsafe { sys::PyInterpreterState_Main() };
    // SAFETY: R2: PyThreadState_New needs no GIL; the new tstate is bound to this (fresh)
    // thread and not attached.
    let ts = unsafe { sys::PyThreadState_New(interp) };
    if ts.is_null() {
        return Err(Error::Init(
            "cannot create a thread state for the main interpreter".into(),
        ));
    }
    let interrupts = {
        // SAFETY: R2/R4: this thread owns `ts` (just made for it) and has none attached.
        let guard = unsafe { AttachGuard::attach(ts, id) };
        match first {
            Some(first) => Ok(first.target.classes.share(&guard.token())),
            None => InterruptClasses::create(&guard.token()),
        }
    };
    Ok(Created {
        ts,
        python_id: 0,
        interp,
        interrupts: interrupts?,
    })
}

impl Owner {
    /// Serves this interpreter's queue until `slot` is done, or, for the top-level loop
    /// (`slot == None`), until the interpreter is asked to end. Never panics: a job's
    /// panic is caught inside the job.
    ///
    /// Under direct dispatch the top-level loop takes the claim for each job (`claim.rs`):
    /// a queued job waits while a caller's thread runs a direct call, whose release wakes
    /// us. A nested wait already holds it (it is inside a job), and also serves the
    /// interpreters this thread holds as a caller (`held.rs`).
    pub(crate) fn serve(&self, wait_on: Option<(&ReplySlot, &dyn Fn() -> bool)>, spin: Duration) {
        let sh = &*self.link;
        let finished = || match wait_on {
            Some((slot, _)) => slot.is_done(),
            None => sh.is_closing(),
        };
        // What we are doing while not running a job, as our callers should see it.
        let waiting = if wait_on.is_some() {
            OwnerState::Nested
        } else {
            OwnerState::Running
        };
        let defer = || wait_on.is_some_and(|(_, target_nested)| target_nested());
        // The top-level loop takes the claim per job (a CAS and a store: cheap beside a
        // hand-off), whether or not callers may claim it now: `direct` can be switched
        // on at any time. Main-pool seats serve lanes, which have their own limit.
        let claims = wait_on.is_none() && sh.origin == Origin::New;
        let nested = wait_on.is_some();
        let queued = || {
            sh.has_queued()
                || self.seat.is_some_and(|s| s.lanes.has_work(s.index))
                || (nested && held::has_work())
        };
        let ready = || queued() && (!claims || sh.claim.is_free());
        // Posts to the interpreters this thread holds as a caller wake it while it waits.
        let _announced = nested.then(held::Announced::new);
        sh.state.store(waiting, Ordering::Relaxed);
        // A main-pool seat here, between jobs and not parked, takes a lane's call without
        // being woken: posters see this and wake no other seat for it.
        let looking = self.seat.map(Looking::new);
        let look = |on: bool| looking.as_ref().inspect(|l| l.set(on));
        loop {
            look(true);
            if nested && held::run_queued() {
                continue;
            }
            let claimed = !claims || (ready() && sh.claim.try_owner());
            if claimed {
                if let Some((job, hold)) = self.next_job() {
                    if let Some(seat) = self.seat {
                        // Flagged until now: a poster may have counted us for another call.
                        look(false);
                        seat.lanes.hand_off();
                    }
                    sh.state.store(OwnerState::Running, Ordering::Relaxed);
                    // Looking again before the caller has its reply: the call it may post at
                    // once finds us looking and wakes no other seat.
                    self.run_posted(job, || {
                        drop(hold);
                        look(true);
                        // Before the caller has its reply: its next call, direct, finds
                        // the interpreter free.
                        if claims {
                            sh.claim.release();
                        }
                    });
                    sh.state.store(waiting, Ordering::Relaxed);
                    continue;
                }
                if claims {
                    sh.claim.release();
                }
            }
            if finished() {
                // A poster that saw us looking woke no one: hand its call on.
                if let Some(seat) = self.seat {
                    look(false);
                    seat.lanes.hand_off();
                }
                break;
            }
            let spun = Instant::now();
            let got = spin_until(spin, || finished() || ready(), defer);
            sh.clock.add_spin(spun.elapsed());
            if got {
                continue;
            }
            // Nested: the reply's completer must know to unpark us.
            if let Some((slot, _)) = wait_on {
                if !slot.prepare_park() {
                    continue;
                }
            }
            // Before Parked is stored and fenced (see `main_pool::MainLane::post`).
            look(false);
            // Pairs with the fence in `Mailbox::post`, after which its `wake` reads our
            // state (`OwnerLink::post`, the group's claim, the lane's), and with a caller's
            // release of the claim (`release_caller_claim`).
            sh.state.park_unless(|| !finished() && !ready());
            sh.state.store(waiting, Ordering::SeqCst);
        }
        sh.state.store(OwnerState::Running, Ordering::Relaxed);
    }

    /// The next job: this interpreter's own queue first (calls that must run here), then
    /// its group's, then (a main-pool seat) a lane's, with the hold it runs under.
    fn next_job(&self) -> Option<(Job, Option<Hold>)> {
        if let Some(job) = self.link.take_queued() {
            return Some((job, None));
        }
        let seat = self.seat?;
        let (job, hold) = seat.lanes.take(seat.index)?;
        Some((job, Some(hold)))
    }

    /// Stops serving the group's queue (its own goes on). Runs on the owner, inside a job:
    /// once that job returns, no group job starts here any more.
    pub(crate) fn leave_group(&self) {
        self.link.left_group.store(true, Ordering::SeqCst);
    }

    /// Makes this owner a member of a group: from now on it also serves `mailbox`. Runs on
    /// the owner thread (inside a job), once.
    pub(crate) fn join_group(&self, id: GroupId, mailbox: Arc<Mailbox>) -> Result<()> {
        if self.link.group.set(id).is_err() || self.link.group_mailbox.set(mailbox).is_err() {
            return Err(Error::Internal(format!(
                "interpreter {} is already a member of a group",
                self.link.id
            )));
        }
        Ok(())
    }

    /// Runs whatever is queued now, without waiting (a caller waiting for room in a full
    /// queue elsewhere). Detached, like every serving loop.
    pub(crate) fn run_queued(&self) {
        while let Some((job, hold)) = self.next_job() {
            let before = self.link.state.swap(OwnerState::Running, Ordering::Relaxed);
            self.run_posted(job, || drop(hold));
            self.link.state.store(before, Ordering::Relaxed);
        }
        held::run_queued();
    }

    /// Runs a job that came through the queue. The thread is detached here: the top-level
    /// loop and every nested wait detach before serving. `before_reply` runs after the job,
    /// detached again, before its caller is released (a lane's hold goes there: a call that
    /// returned no longer counts against the lane's limit; so does the top-level loop's
    /// claim: the caller's next call finds the interpreter free).
    fn run_posted(&self, job: Job, before_reply: impl FnOnce()) {
        let _depth = DepthGuard::enter(job.depth);
        self.link.served.fetch_add(1, Ordering::Relaxed);
        let run = |token: &Attached<'_>| {
            // This job is not the interruptible call that may be waiting under it (nested):
            // an interrupt aimed at that one is deferred until control returns to it.
            let barrier = Barrier::job(token);
            let done = job.execute(token);
            drop(barrier);
            // Attached, claim held (main: main lives while its seats do).
            self.link.hosts.delete_doomed(token);
            done
        };
        // SAFETY: R2/R4: thread: owner of `self.ts`, registered with its target. interp:
        // alive until `retire` after the loop. We serve only while detached, or (switched
        // to another interpreter as its caller) `run_at` detaches and switches back.
        let ran = unsafe { enter::run_at(&self.link.target, &self.link.memory, Kind::Owner, run) };
        if let Err(e) = &ran {
            tracing::error!(interp = %self.link.id, "cannot run a queued job: {e}");
        }
        // Detached (or back where `run_at` found this thread): let go, then reply.
        before_reply();
        drop(ran);
    }
}
