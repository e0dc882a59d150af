//! `InterpreterHandle`: the cross-thread face of an interpreter, and the routing of a call
//! to inline execution or to the owner thread (ARCHITECTURE.md, "Call paths").

use std::fmt;
use std::panic;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::capi::attach::{Attached, DetachGuard};
use crate::config::InterpreterConfig;
use crate::dispatch::direct;
use crate::error::{Error, Result};
use crate::governance::cancel::{self, CallOptions, Interruptible};
use crate::governance::interrupt;
use crate::owner::activation::{self, DepthGuard};
use crate::owner::enter::{self, Kind};
use crate::owner::held;
use crate::owner::job::{Call, Job};
use crate::owner::pace::Pace;
use crate::owner::wait;
use crate::owner::worker::{self, Origin, Owner, OwnerLink};
use crate::process::runtime;
use crate::InterpreterId;

/// A handle to one interpreter and its owner thread. Cheap to clone; `Send + Sync`.
///
/// The interpreter lives until [`end`](Self::end) or [`shutdown`](crate::shutdown);
/// dropping handles does not end it.
#[derive(Clone)]
pub struct InterpreterHandle {
    link: Arc<OwnerLink>,
}

impl fmt::Debug for InterpreterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterpreterHandle")
            .field("id", &self.link.id)
            .field("name", &self.name())
            .field("python_id", &self.link.python_id)
            .finish()
    }
}

impl InterpreterHandle {
    /// Creates an interpreter on a new owner thread, initialising CPython first if this
    /// is the first interpreter of the process.
    pub fn spawn(config: InterpreterConfig) -> Result<Self> {
        config.validate()?;
        let rt = runtime::get()?;
        let link = worker::spawn(rt, config, Origin::New, None)?;
        Ok(Self { link })
    }

    /// The main interpreter, on the first of the process-wide pool of threads that serve
    /// it (`py-__main__`; see [`MainLane`](crate::MainLane) for the pool), through a
    /// thread state of that thread's own: for extension modules that refuse
    /// subinterpreters.
    ///
    /// Every caller gets a handle to the same thread, the pool being started on first use
    /// with `config`'s depth cap, stack size and wait policy (later configs are ignored;
    /// the GIL and isolation settings never apply: this is the main interpreter, sharing
    /// its GIL with every [`GilMode::Shared`](crate::GilMode::Shared) interpreter). A call
    /// made on any pool thread runs inline there: they all are the main interpreter.
    /// [`end`](Self::end) does nothing on it; [`shutdown`](crate::shutdown) stops it.
    pub fn main(config: InterpreterConfig) -> Result<Self> {
        config.validate()?;
        // The pool names its threads itself.
        Ok(crate::dispatch::main_pool::Pool::get(&config)?.first())
    }

    pub(crate) fn from_link(link: Arc<OwnerLink>) -> Self {
        Self { link }
    }

    pub(crate) fn link_arc(&self) -> &Arc<OwnerLink> {
        &self.link
    }

    /// Whether this is the [`main`](Self::main) interpreter's handle.
    pub fn is_main(&self) -> bool {
        self.link.origin == Origin::Main
    }

    /// This interpreter's pool-wide id.
    pub fn id(&self) -> InterpreterId {
        self.link.id
    }

    /// The name it was created with.
    pub fn name(&self) -> String {
        self.link
            .name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Renames the interpreter (and its owner thread, `py-<name>`, as tools show it): for
    /// an interpreter created ahead of time and handed to its user later.
    pub fn rename(&self, name: &str) -> Result<()> {
        let thread_name = format!("py-{name}");
        self.call(move |_| {
            set_current_thread_name(&thread_name);
            Ok(())
        })?;
        *self.link.name.lock().unwrap_or_else(|e| e.into_inner()) = name.to_owned();
        Ok(())
    }

    /// CPython's id for it (`PyInterpreterState_GetID`), for correlating logs.
    pub fn python_id(&self) -> i64 {
        self.link.python_id
    }

    /// Calls waiting in the interpreter's queue now (not counting running ones).
    pub fn queue_len(&self) -> usize {
        self.link.mailbox.len()
    }

    /// Jobs run on the interpreter so far: the owner thread's from its queues (its own and
    /// its group's), those a holder served while it waited, and direct calls.
    pub fn jobs_served(&self) -> u64 {
        self.link.served.load(Ordering::Relaxed) + self.link.direct_calls.load(Ordering::Relaxed)
    }

    /// How many times a caller of this interpreter (one that is no owner thread) gave up
    /// spinning and committed to park for its reply, paying a wake-up when it came: with
    /// the adaptive spin (`WaitPolicy::caller_spin_max`) this stays still for calls
    /// shorter than the cap once a few calls taught it their length. Counted as the caller
    /// commits, before it sleeps.
    pub fn caller_parks(&self) -> u64 {
        self.link.pace.parks()
    }

    /// Calls that callers ran themselves on this interpreter (direct dispatch,
    /// [`InterpreterConfig::direct`](crate::InterpreterConfig::direct)); [`jobs_served`](Self::jobs_served)
    /// counts them too.
    pub fn direct_calls(&self) -> u64 {
        self.link.direct_calls.load(Ordering::Relaxed)
    }

    /// Switches direct dispatch ([`InterpreterConfig::direct`]) on or off for later calls,
    /// e.g. once a workload's set-up calls ran on the owner thread. Calls running keep the
    /// path they took. Does nothing on the main interpreter's handle.
    pub fn set_direct(&self, on: bool) {
        if !self.is_main() {
            self.link.direct.store(on, Ordering::Relaxed);
        }
    }

    /// Whether the interpreter is running a call (on its owner thread or, direct, on a
    /// caller's) or its owner is looking for one (not parked).
    pub fn is_busy(&self) -> bool {
        self.link.state.load(Ordering::Relaxed) != crate::owner::wait::OwnerState::Parked
            || self.link.claim.held_by_caller()
    }

    /// Thread states callers' threads keep for this interpreter now (direct dispatch). A
    /// probe for tests.
    #[doc(hidden)]
    pub fn host_states(&self) -> usize {
        self.link.hosts.count()
    }

    /// CPU time of the interpreter's owner thread so far (the last reading once it has
    /// ended), with its spinning apart; `None` where the clock cannot be read. One
    /// `clock_gettime` per call, nothing per job. For the main interpreter's owner this
    /// covers every job it ran, whoever's.
    pub fn cpu_time(&self) -> Option<crate::CpuTime> {
        self.link.clock.read()
    }

    /// The interpreter's memory account (`memory_accounting()` says whether anything is
    /// counted): what its owner thread allocates in CPython's MEM and OBJ domains. For
    /// the main interpreter's owner, what runs outside any [`MemoryAccount::enter`](crate::MemoryAccount::enter).
    pub fn memory_account(&self) -> &Arc<crate::MemoryAccount> {
        &self.link.memory
    }

    /// Whether the interpreter has been ended.
    pub fn is_ended(&self) -> bool {
        self.link.ending.is_done()
    }

    /// Runs `f` in this interpreter, with its thread state attached, and returns the result.
    ///
    /// From any thread but this interpreter's owner, the call is queued to the owner
    /// thread and this thread blocks (detached from any interpreter it had attached).
    /// On the owner thread itself it runs inline, attaching the thread state first if
    /// Python code detached it (a `ctypes` callback). An owner thread waiting on another
    /// interpreter keeps serving its own queue, so A→B→A cannot deadlock.
    ///
    /// A panic in `f` resumes on this thread.
    ///
    /// # Errors
    /// [`Error::InterpreterGone`] if the interpreter has ended, [`Error::ReentryLimit`] if
    /// the call would nest deeper than the configured cap, or whatever `f` returns.
    pub fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Attached<'_>) -> Result<R> + Send,
        R: Send,
    {
        let sh = &*self.link;
        let depth = self.admit()?;
        let owner = activation::owner();
        if let Some(owner) = owner.filter(|o| o.link.id == sh.id) {
            return run_inline(owner, depth, f);
        }
        // A thread holding this interpreter's claim runs its calls inline (A→B→A).
        if let Some(place) = held::find(sh.id) {
            return direct::run_held(&place, depth, f);
        }
        let f = match sh.direct.load(Ordering::Relaxed) {
            true => match direct::try_run(&self.link, depth, f) {
                Ok(out) => return out,
                Err(f) => f,
            },
            false => f,
        };
        self.post_and_wait(owner, depth, f)
    }

    /// [`call`](Self::call), but never direct: runs on the owner thread (for what must
    /// run there, e.g. joining a group).
    pub(crate) fn call_on_owner<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Attached<'_>) -> Result<R> + Send,
        R: Send,
    {
        let depth = self.admit()?;
        match activation::owner() {
            Some(owner) if owner.link.id == self.link.id => run_inline(owner, depth, f),
            owner => self.post_and_wait(owner, depth, f),
        }
    }

    /// The depth a call made now runs at, unless the interpreter is ending or the call
    /// would nest past the cap.
    fn admit(&self) -> Result<usize> {
        let sh = &*self.link;
        if sh.is_closing() {
            return Err(Error::InterpreterGone { interp: sh.id });
        }
        let depth = activation::depth() + 1;
        if depth > sh.max_depth {
            return Err(Error::ReentryLimit {
                depth,
                limit: sh.max_depth,
            });
        }
        Ok(depth)
    }

    /// [`call`](Self::call) with a deadline and/or a cancel token. An interrupted call
    /// raises an exception (a `BaseException` subclass, so `finally` blocks run and
    /// `except Exception` does not catch it) at the interpreter's next bytecode boundary;
    /// the caller then gets [`Error::Timeout`] or [`Error::Cancelled`] and the interpreter
    /// serves the next call as usual. A call still queued when its deadline passes fails
    /// without running. A call that finished despite the interrupt returns its result.
    ///
    /// Not interruptible: C code that holds the GIL without returning to Python (the
    /// caller keeps waiting for it); blocking calls that release the GIL are interrupted
    /// when they return. Calls nested inside this one share its deadline.
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

    /// Queues the call on this interpreter and waits for it.
    fn post_and_wait<R, F>(&self, owner: Option<&Owner>, depth: usize, f: F) -> Result<R>
    where
        F: FnOnce(&Attached<'_>) -> Result<R> + Send,
        R: Send,
    {
        let mut call = Call::new(f);
        let target = &*self.link;
        post_and_wait(
            &mut call,
            owner,
            depth,
            |job, serving| target.post(job, serving),
            &|| target.is_nested_waiting(),
            &target.pace,
        )?;
        take_result(call, Error::InterpreterGone { interp: target.id })
    }

    /// Interrupter rounds aimed at this interpreter's owner so far (raised or deferred). A
    /// probe for tests.
    #[doc(hidden)]
    pub fn interrupt_rounds(&self) -> u64 {
        self.link.target.rounds()
    }

    /// Interrupter threads aimed at this interpreter's owner that have not finished. A
    /// probe for tests.
    #[doc(hidden)]
    pub fn live_interrupters(&self) -> usize {
        self.link.target.live_interrupters()
    }

    pub(crate) fn link(&self) -> &OwnerLink {
        &self.link
    }

    /// Ends the interpreter: new calls fail with [`Error::InterpreterGone`], calls still
    /// queued fail the same way, calls already running finish, and then the owner thread
    /// runs `Py_EndInterpreter`. Waits for that, except when called on an owner thread
    /// (which cannot wait without risking waiting for itself): then it only requests it.
    /// Does nothing on the [`main`](Self::main) interpreter's handle.
    pub fn end(&self) {
        if self.is_main() {
            return;
        }
        self.link.request_end();
        // A thread that holds an interpreter (its owner, or a caller's thread in a direct
        // call) cannot wait: the end may wait for it.
        if activation::owner().is_none() && !held::holds_any() {
            self.link.ending.wait();
        }
    }
}

/// Runs `f` on the owner thread of its own interpreter, attaching if Python code had
/// detached the thread state (a ctypes callback), and restoring exactly what it found.
pub(crate) fn run_inline<R, F>(owner: &Owner, depth: usize, f: F) -> Result<R>
where
    F: FnOnce(&Attached<'_>) -> Result<R>,
{
    let _depth = DepthGuard::enter(depth);
    let link = &owner.link;
    // SAFETY: R2: thread: owner of `link.target`'s thread state; interp: alive (its owner
    // is running us); `run_at` attaches, or switches from another interpreter's call
    // this thread runs as its caller (R13), and restores what it found.
    unsafe { enter::run_at(&link.target, &link.memory, Kind::Owner, f) }.and_then(|r| r)
}

/// Posts `call` with `post` and waits until it ran (or was dropped unrun): `post` must
/// fail only if it did not queue the job (the mailbox rule, `mailbox.rs`). An owner
/// thread serves its own queues meanwhile (shape 4). `target_nested`: whether the thread
/// that must run the call is itself waiting on another interpreter (then waiting yields
/// rather than spins). `pace`: the call site's reply times, which set the caller's spin
/// budget from `post`'s base spin and learn this call's reply time (`pace.rs`).
pub(crate) fn post_and_wait<F, R>(
    call: &mut Call<F, R>,
    owner: Option<&Owner>,
    depth: usize,
    post: impl FnOnce(Job, Option<&Owner>) -> Result<std::time::Duration>,
    target_nested: &dyn Fn() -> bool,
    pace: &Pace,
) -> Result<()>
where
    F: FnOnce(&Attached<'_>) -> Result<R> + Send,
    R: Send,
{
    // A thread holding claims as a caller serves those interpreters while it waits.
    let holds = owner.is_none() && held::holds_any();
    // An interruptible call waiting here is not executing: its interrupts are deferred
    // until the wait is over (and the jobs served meanwhile never receive them).
    let _not_executing = (owner.is_some() || holds).then(interrupt::Barrier::wait);
    wait::with_slot(|slot| {
        // SAFETY: R7: `call` (the caller's) and `slot` outlive this closure, which does
        // not return until `slot` is complete: `post` fails only before queueing the job
        // (dropping it completes the slot); once it queued the job, even into a mailbox
        // found closing afterwards, `serve`/`wait` block until the job ran or was dropped
        // (`mailbox.rs`).
        // `F: Send` and `R: Send` are this function's bounds.
        let job = unsafe { Job::new(call, slot, depth) };
        // Detached while blocked (also for room in a full queue), or the interpreter
        // we hold could never be served (R4).
        let _detached = DetachGuard::detach_current();
        // Timed, and counted as needing a core from now until its reply (`pace.rs`),
        // unless it is a trivial call site's unsampled call.
        let (posted, _in_flight) = pace.start();
        let spin = post(job, owner)?;
        match owner {
            Some(owner) => owner.serve(Some((slot, target_nested)), pace.budget(spin)),
            None if holds => held::wait_serving(slot, pace.budget(spin), target_nested),
            None => pace.wait(slot, spin, target_nested),
        }
        if let Some(posted) = posted {
            pace.record(posted.elapsed());
        }
        Ok(())
    })
}

/// The result of a call that `post_and_wait` completed; `gone` if it was dropped unrun.
/// A panic in the job resumes here.
pub(crate) fn take_result<F, R>(call: Call<F, R>, gone: Error) -> Result<R> {
    match call.out {
        Some(Ok(result)) => result,
        Some(Err(payload)) => panic::resume_unwind(payload),
        None => Err(gone),
    }
}

/// Best effort: Linux keeps 15 bytes of a thread name.
fn set_current_thread_name(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
        bytes.push(0);
        // SAFETY: no CPython involved (no rule applies): prctl(2)'s contract for PR_SET_NAME
        // is to read a NUL-terminated string of at most 16 bytes from the pointer, which
        // `bytes` provides for the duration of the call; it only renames the calling thread.
        unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// The interpreter whose owner thread this is, if any.
pub fn current_interpreter() -> Option<InterpreterId> {
    activation::owner().map(|o| o.link.id)
}

/// Whether the call running on this thread runs on a thread of the caller's rather than on
/// an interpreter's owner thread (direct dispatch, [`InterpreterConfig::direct`](crate::InterpreterConfig::direct)):
/// per-call CPU time must then be sampled, the owner's clock does not see it.
pub fn running_direct() -> bool {
    held::running_direct()
}

/// The nesting depth of the call running on this thread (0 outside any call).
pub fn current_depth() -> usize {
    activation::depth()
}
