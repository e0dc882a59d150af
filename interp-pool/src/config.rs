//! Per-interpreter settings, with the defaults the pool was measured with.

use std::time::Duration;

use crate::{Error, Result};

/// How the new interpreter relates to the main interpreter's GIL (PEP 684).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GilMode {
    /// Its own GIL and allocator: runs in parallel with every other interpreter. Needs
    /// extension modules that declare per-interpreter-GIL support.
    #[default]
    Own,
    /// Shares the main interpreter's GIL: isolated module state, no parallelism.
    Shared,
}

/// How a thread waits for a reply or for work before it parks.
///
/// A futex sleep/wake pair costs 20–25 µs on the 2-core VMs this was tuned on, against
/// ~0.3 µs for a spinning hand-off, so both sides spin briefly first. The caller spins
/// only while the interpreter's owner thread is known to be awake: spinning right after
/// waking a sleeping thread keeps the CPU the scheduler picked for it. Spinning is a
/// short run of CPU pause hints, then `yield_now` until the budget is spent; a caller
/// whose target is itself waiting on another interpreter yields from the start.
///
/// The caller's spin adapts to the call: each interpreter and each group keeps a moving
/// average of its recent reply times and its callers spin up to twice that, at least
/// `caller_spin` and at most `caller_spin_max`, so a call that usually answers within
/// the cap does not pay a parked caller's wake-up (25–50 µs on those VMs). Calls slower
/// than the cap still park after `caller_spin`, and the stretch is dropped while more
/// threads are runnable (calls in flight, each needing its owner thread, and callers
/// spinning) than there are cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// How long a caller spins for its reply before parking (only if the owner is not parked).
    pub caller_spin: Duration,
    /// The longest a caller's spin is stretched to when recent replies came within it
    /// (see above). `caller_spin` or less turns the stretch off. Default 500 µs: the
    /// stretch saves one wake-up (25–30 µs) per call at the cost of a core for the call's
    /// length, ~23% of a 100 µs call but 2–4% of a 1 ms one, and the spinning caller does
    /// not slow the interpreter running the call on the other core (its CPU per call was
    /// lower with the stretch than without, and a spinner on the other vCPU left a pinned
    /// loop's CPU time unchanged; measured: ARCHITECTURE.md, "Waiting").
    pub caller_spin_max: Duration,
    /// How long an idle owner thread spins for the next job before parking.
    pub server_spin: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self {
            caller_spin: Duration::from_micros(20),
            caller_spin_max: Duration::from_micros(500),
            server_spin: Duration::from_micros(20),
        }
    }
}

/// What a call does when the interpreter's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait for room (default). A waiting owner thread keeps serving its own queue.
    #[default]
    Block,
    /// Fail at once with [`Error::Busy`](crate::Error::Busy).
    Fail,
}

/// Settings for one interpreter. `InterpreterConfig::default()` is an isolated own-GIL
/// interpreter that may not start threads, fork or exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpreterConfig {
    /// Used for the owner thread's name (`py-<name>`) and in logs.
    pub name: String,
    /// Own GIL (default) or the main interpreter's.
    pub gil: GilMode,
    /// May Python code start `threading` threads? Default `false`.
    pub allow_threads: bool,
    /// May it start daemon threads? Default `false` (they cannot be joined at end).
    pub allow_daemon_threads: bool,
    /// May it `os.fork()`? Default `false`.
    pub allow_fork: bool,
    /// May it `os.exec*()`? Default `false`.
    pub allow_exec: bool,
    /// Refuse extension modules that do not declare subinterpreter support. Must stay
    /// `true` with [`GilMode::Own`]. Default `true`.
    pub check_multi_interp_extensions: bool,
    /// Owner thread stack size in bytes. Default 8 MiB: nested calls stack up here. At
    /// least [`MIN_STACK_SIZE`]: a smaller one is refused with [`Error::Init`] (0 would
    /// mean the platform's minimum, 16 KiB on Linux, far too little for CPython).
    pub stack_size: usize,
    /// Deepest nesting of calls (a chain A→B→A counts 3) before a call fails with
    /// [`Error::ReentryLimit`](crate::Error::ReentryLimit). Default 64, well under
    /// Python's recursion limit of 1000 frames per thread state. At least 1: 0 (no call
    /// could run) is refused with [`Error::Init`].
    pub max_depth: usize,
    /// Spin-then-park policy for this interpreter's callers and owner thread.
    pub wait: WaitPolicy,
    /// Most calls that may wait in the interpreter's queue (running ones not counted).
    /// Default 1024: a flood cannot grow memory without bound.
    pub queue_capacity: usize,
    /// What a call does when the queue is full. Default [`WhenFull::Block`].
    pub when_full: WhenFull,
    /// Direct dispatch: a caller that finds the interpreter free and nothing queued for it
    /// runs the call itself, on a thread state of its own kept for this interpreter,
    /// instead of handing it to the owner thread (ARCHITECTURE.md, "Direct calls").
    /// Default `false`: every call from another thread is posted.
    pub direct: bool,
}

impl Default for InterpreterConfig {
    fn default() -> Self {
        Self {
            name: "interp".to_owned(),
            gil: GilMode::Own,
            allow_threads: false,
            allow_daemon_threads: false,
            allow_fork: false,
            allow_exec: false,
            check_multi_interp_extensions: true,
            stack_size: 8 << 20,
            max_depth: 64,
            wait: WaitPolicy::default(),
            queue_capacity: 1024,
            when_full: WhenFull::Block,
            direct: false,
        }
    }
}

/// The smallest [`InterpreterConfig::stack_size`] accepted: 1 MiB, what CPython itself
/// asks for its threads on platforms whose default is smaller.
pub const MIN_STACK_SIZE: usize = 1 << 20;

impl InterpreterConfig {
    /// [`Error::Init`] naming the interpreter and the first value that cannot work:
    /// `max_depth` 0 or `stack_size` below [`MIN_STACK_SIZE`]. Checked when an
    /// interpreter, the main interpreter's pool or a lane is made with this config.
    pub fn validate(&self) -> Result<()> {
        let name = &self.name;
        if self.max_depth == 0 {
            return Err(Error::Init(format!(
                "interpreter {name}: max_depth 0 lets no call run (at least 1)"
            )));
        }
        if self.stack_size < MIN_STACK_SIZE {
            return Err(Error::Init(format!(
                "interpreter {name}: stack_size {} is below the minimum of {MIN_STACK_SIZE} bytes",
                self.stack_size
            )));
        }
        Ok(())
    }

    /// Default settings with a name.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}
