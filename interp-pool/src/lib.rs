//! Own-GIL CPython subinterpreters, each on an owner thread of its own, callable from any
//! thread.
//!
//! ```no_run
//! use interp_pool::{InterpreterConfig, InterpreterHandle};
//!
//! let a = InterpreterHandle::spawn(InterpreterConfig::named("a"))?;
//! a.call(|py| py.run("x = 40"))?;
//! let x = a.call(|py| py.eval("x + 2")?.extract_i64(py))?;
//! assert_eq!(x, 42);
//! a.end();
//! # Ok::<(), interp_pool::Error>(())
//! ```
//!
//! # Threading contract
//!
//! * CPython is initialised once per process, on a `py-main` thread that keeps the main
//!   interpreter detached, and finalized only by [`shutdown`].
//! * Each interpreter is created and ended on its owner thread (`py-<name>`), with one
//!   thread state for its whole life, and runs its calls there. Only the thread holding
//!   its *claim* attaches it: the owner, or, with [`InterpreterConfig::direct`], a caller's
//!   thread that found it free and runs a call itself on a thread state of its own, kept
//!   for that interpreter across calls (never this thread's `PyGILState` state outside
//!   the call; given up when the thread exits, deleted by the interpreter's next call
//!   or at its end).
//! * The main interpreter is served by a pool of owner threads (`py-__main__`, ...), each
//!   with a thread state of its own there; [`MainLane`] gives a workload a queue on it and
//!   a limit on how many of those threads run its calls at once.
//! * [`InterpreterHandle::call`] runs a closure there. Python objects ([`PyObj`]) cannot
//!   leave the closure; results and errors cross as plain Rust data.
//! * Calls from a thread holding the interpreter (its owner, or a caller's thread inside a
//!   direct call) run inline (re-attaching if a `ctypes` callback detached the thread
//!   state); a thread waiting on another interpreter serves the queues of those it holds,
//!   so A→B→A completes. Depth is capped ([`Error::ReentryLimit`]).
//!
//! Rules and reasoning: `ARCHITECTURE.md` at the repository root.

#![deny(missing_docs)]

mod capi;
mod config;
mod dispatch;
mod error;
mod governance;
mod owner;
mod process;

use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

pub use capi::attach::Attached;
pub use capi::fast_ctypes::{install_fast_ctypes, FAST_CTYPES_REGISTRY};
pub use capi::native::{NativeArgs, NativeError, NativeResult};
pub use capi::object::PyObj;
pub use capi::raised::{Detail, RaiseSite, Raised};
pub use config::{GilMode, InterpreterConfig, WaitPolicy, WhenFull, MIN_STACK_SIZE};
pub use dispatch::group::{GroupId, InterpreterGroup};
pub use dispatch::handle::{current_depth, current_interpreter, running_direct, InterpreterHandle};
pub use dispatch::main_pool::{main_threads, set_main_threads, MainLane, MAX_MAIN_THREADS};
pub use dispatch::shutdown::{live_interpreters, shutdown};
pub use error::{Error, PyException, Result};
pub use governance::cancel::{CallOptions, CancelToken, DEFAULT_GRACE, MIN_GRACE};
pub use governance::cpu::{thread_cpu_time, CpuTime};
pub use governance::escalate::{exempt_from_interrupt_tracing, guest_returned};
pub use governance::sleep::install_interruptible_sleep;
pub use owner::persistent::Persistent;
pub use process::allocator::{allocator, set_allocator, Allocator, AllocatorInUse};
pub use process::memory::{
    memory_accounting, set_memory_accounting, AccountScope, MemoryAccount, MemoryUsage,
};
pub use process::runtime::{is_shut_down, owns_python, python_version};

/// A pool-wide interpreter id, unique for the life of the process (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterpreterId(NonZeroU64);

impl InterpreterId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(NonZeroU64::new(n).expect("interpreter id counter overflowed"))
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for InterpreterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
