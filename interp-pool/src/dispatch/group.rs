//! `InterpreterGroup`: several interpreters (replicas of one workload) behind one queue.
//!
//! Every member keeps its own queue (calls that must run on it: `member.call(..)`) and
//! also serves the group's queue (a [`Mailbox`] shared by the members), its own first. A call on the group goes to whichever
//! member takes it first (crossbeam channels are MPMC). Posting wakes one *idle* member:
//! after queueing, the poster claims a parked member (compare-exchange Parked → Running)
//! and unparks it; if none is parked, every member is awake and re-checks the group queue
//! before it parks (the handshake of `wait.rs`, which holds per member), so the job is
//! taken without waiting behind a busy member while another sleeps. Members waiting on
//! another interpreter (nested) serve both queues too, so a chain cannot deadlock even
//! when every member is waiting. A call made on a member's own thread runs inline there.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::capi::attach::Attached;
use crate::config::InterpreterConfig;
use crate::dispatch::direct;
use crate::dispatch::handle::{self, InterpreterHandle};
use crate::error::{Error, Result};
use crate::governance::cancel::{self, CallOptions, Interruptible};
use crate::owner::activation;
use crate::owner::held;
use crate::owner::job::{Call, Job};
use crate::owner::mailbox::Mailbox;
use crate::owner::pace::Pace;
use crate::owner::wait::OwnerState;
pub use crate::owner::worker::GroupId;
use crate::owner::worker::{self, Owner};

/// Several interpreters serving one queue. Cheap to clone; `Send + Sync`.
///
/// Members are ordinary interpreters ([`InterpreterHandle`]) that joined with
/// [`add`](Self::add); each still has its own queue for calls that must run on it.
/// [`end`](Self::end) ends every member; a call still queued on the group then fails with
/// [`Error::InterpreterGone`] (one a member already took runs to its end).
#[derive(Clone)]
pub struct InterpreterGroup {
    link: Arc<GroupLink>,
}

/// What callers and members share.
pub(crate) struct GroupLink {
    id: GroupId,
    name: String,
    /// The group's queue (`mailbox.rs`), shared with every member that joins.
    mailbox: Arc<Mailbox>,
    members: RwLock<Vec<InterpreterHandle>>,
    /// Named by errors when the group has no member.
    reserved_id: crate::InterpreterId,
    max_depth: usize,
    caller_spin: Duration,
    /// Its callers' recent reply times, which stretch their spin (`pace.rs`).
    pace: Pace,
    /// Callers may run a call on a free member themselves (`InterpreterConfig::direct`,
    /// [`InterpreterGroup::set_direct`]).
    direct: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for InterpreterGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterpreterGroup")
            .field("name", &self.link.name)
            .field("members", &self.len())
            .finish()
    }
}

impl InterpreterGroup {
    /// An empty group named `config.name`, whose queue, depth cap and wait policy come
    /// from `config` (members bring their own interpreters; see [`add`](Self::add)).
    pub fn new(config: &InterpreterConfig) -> Self {
        Self {
            link: Arc::new(GroupLink {
                id: GroupId::next(),
                name: config.name.clone(),
                mailbox: Arc::new(Mailbox::new(config.queue_capacity, config.when_full)),
                members: RwLock::new(Vec::new()),
                reserved_id: crate::InterpreterId::next(),
                max_depth: config.max_depth,
                caller_spin: config.wait.caller_spin,
                direct: std::sync::atomic::AtomicBool::new(config.direct),
                pace: Pace::new(config.wait.caller_spin_max),
            }),
        }
    }

    /// Makes `member` serve this group's queue from now on (after its own). It must be a
    /// subinterpreter of its own ([`InterpreterHandle::spawn`]), in no other group.
    pub fn add(&self, member: InterpreterHandle) -> Result<()> {
        if member.is_main() {
            return Err(Error::Internal(
                "the main interpreter cannot join a group".into(),
            ));
        }
        if self.link.mailbox.is_closing() {
            return Err(Error::InterpreterGone {
                interp: member.id(),
            });
        }
        let (id, mailbox) = (self.link.id, Arc::clone(&self.link.mailbox));
        member.call_on_owner(move |_| match activation::owner() {
            Some(owner) => owner.join_group(id, mailbox),
            None => Err(Error::Internal("group join ran off its owner".into())),
        })?;
        self.lock_members_mut().push(member);
        Ok(())
    }

    /// Takes `member` out of the group: once this returns it takes no more of the group's
    /// calls (one it is running finishes) and is no longer listed; it keeps serving its
    /// own queue, so the caller can still release what it holds there, then
    /// [`end`](InterpreterHandle::end) it. No-op if it is not a member.
    pub fn remove(&self, member: &InterpreterHandle) -> Result<()> {
        let listed = {
            let mut members = self.lock_members_mut();
            let before = members.len();
            members.retain(|m| m.id() != member.id());
            members.len() != before
        };
        if !listed {
            return Ok(());
        }
        member.call_on_owner(|_| match activation::owner() {
            Some(owner) => {
                owner.leave_group();
                Ok(())
            }
            None => Err(Error::Internal("group leave ran off its owner".into())),
        })
    }

    /// The members, in the order they joined.
    pub fn members(&self) -> Vec<InterpreterHandle> {
        self.lock_members().clone()
    }

    /// How many members serve the group.
    pub fn len(&self) -> usize {
        self.lock_members().len()
    }

    /// Whether the group has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.link.name
    }

    /// Switches direct dispatch on or off for the group's later calls (a call on a free
    /// member runs on the caller's thread); its members' own calls follow their handles'
    /// setting ([`InterpreterHandle::set_direct`]).
    pub fn set_direct(&self, on: bool) {
        self.link.direct.store(on, Ordering::Relaxed);
    }

    /// Whether direct dispatch is on for the group ([`set_direct`](Self::set_direct)).
    pub fn is_direct(&self) -> bool {
        self.link.direct.load(Ordering::Relaxed)
    }

    /// How many times a caller of the group (one that is no owner thread) committed to
    /// park for its reply; see [`InterpreterHandle::caller_parks`].
    pub fn caller_parks(&self) -> u64 {
        self.link.pace.parks()
    }

    /// Calls waiting in the group's queue now (not those queued on one member).
    pub fn queue_len(&self) -> usize {
        self.link.mailbox.len()
    }

    /// Runs `f` on whichever member takes it first, like [`InterpreterHandle::call`]; on
    /// a member's own thread it runs inline there (not once that member left the group).
    ///
    /// # Errors
    /// [`Error::InterpreterGone`] once the group has ended (or has no member left),
    /// [`Error::ReentryLimit`], [`Error::Busy`] with `WhenFull::Fail`, or whatever `f`
    /// returns.
    pub fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Attached<'_>) -> Result<R> + Send,
        R: Send,
    {
        let g = &*self.link;
        if g.mailbox.is_closing() {
            return Err(self.gone());
        }
        let depth = activation::depth() + 1;
        if depth > g.max_depth {
            return Err(Error::ReentryLimit {
                depth,
                limit: g.max_depth,
            });
        }
        let owner = activation::owner();
        if let Some(owner) =
            owner.filter(|o| o.link.group.get() == Some(&g.id) && !o.link.left_group())
        {
            return handle::run_inline(owner, depth, f);
        }
        // A thread holding a member's claim runs the group's calls inline on it.
        if let Some(place) = held::find_member(g.id) {
            return direct::run_held(&place, depth, f);
        }
        let mut f = f;
        if g.direct.load(Ordering::Relaxed) {
            // A free member, if any: the one this thread has a state for first.
            for member in self.members_for_direct() {
                match direct::try_run(member.link_arc(), depth, f) {
                    Ok(out) => return out,
                    Err(back) => f = back,
                }
            }
        }
        let mut call = Call::new(f);
        // Any member may take it: none in particular is "the one we wait for".
        handle::post_and_wait(
            &mut call,
            owner,
            depth,
            |job, serving| self.post(job, serving),
            &|| false,
            &g.pace,
        )?;
        handle::take_result(call, self.gone())
    }

    /// [`call`](Self::call) with a deadline and/or a cancel token, as
    /// [`InterpreterHandle::call_with`]; the interrupt is aimed at the member that runs
    /// the call, bound when the call starts there.
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

    /// Ends every member (waiting for their running calls, unless called on an owner
    /// thread); calls left in the group's queue fail with [`Error::InterpreterGone`] (a
    /// call a member already took runs to its end).
    pub fn end(&self) {
        // Closing first: queued calls fail now rather than wait for the members' ends,
        // and a post racing this drains its own call or is waited for (`mailbox.rs`).
        self.link.mailbox.close();
        let members = std::mem::take(&mut *self.lock_members_mut());
        for m in &members {
            m.end();
        }
    }

    /// Whether [`end`](Self::end) was called.
    pub fn is_ended(&self) -> bool {
        self.link.mailbox.is_closing()
    }

    fn gone(&self) -> Error {
        Error::InterpreterGone {
            interp: self.gone_id(),
        }
    }

    /// Queues `job` on the group's mailbox and wakes one idle member. Returns the caller's
    /// spin budget: zero if it woke a parked member (which needs a moment to run), else
    /// the configured spin. `Err` only if the job was not queued (`mailbox.rs`).
    fn post(&self, job: Job, serving: Option<&Owner>) -> Result<Duration> {
        let g = &*self.link;
        // The claim runs after the mailbox's fence, which pairs with each member's
        // `park_unless` (it stores Parked, fences, re-checks the group queue): either a
        // member sees the job, or we see it Parked and claim it.
        // Members' claims held by callers' threads that wait (on another interpreter) are
        // served by those threads (`held::wait_serving`): wake them too, or a job only they
        // may run (every member held) waits for ever.
        let wake = || {
            let members = self.lock_members();
            let holders = members
                .iter()
                .fold(false, |woke, m| m.link().holders.wake() | woke);
            members.iter().any(|m| m.claim_parked()) | holders
        };
        worker::post_to(
            &g.mailbox,
            job,
            serving,
            || self.gone_id(),
            wake,
            g.caller_spin,
        )
    }

    /// The members a direct call may claim, those this thread keeps a state for first (a
    /// state per member and thread costs memory: stay where we have one).
    fn members_for_direct(&self) -> Vec<InterpreterHandle> {
        let mut members = self.members();
        members.sort_by_key(|m| !held::has_state(m.link_arc()));
        members
    }

    /// The interpreter errors name: the first member, or the id the group reserved.
    fn gone_id(&self) -> crate::InterpreterId {
        self.lock_members()
            .first()
            .map_or(self.link.reserved_id, |m| m.id())
    }

    fn lock_members(&self) -> std::sync::RwLockReadGuard<'_, Vec<InterpreterHandle>> {
        self.link.members.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_members_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<InterpreterHandle>> {
        self.link.members.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl InterpreterHandle {
    /// Group posting: if the owner is parked, marks it Running and unparks it; true if
    /// this call claimed it (no other poster will wake the same sleeper for its job).
    pub(crate) fn claim_parked(&self) -> bool {
        let link = self.link();
        let claimed = link
            .state
            .compare_exchange(
                OwnerState::Parked,
                OwnerState::Running,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok();
        if claimed {
            link.thread.unpark();
        }
        claimed
    }
}
