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
//! * Each interpreter is created, used and ended on its owner thread (`py-<name>`), with
//!   one thread state for its whole life. Nothing else ever attaches it.
//! * The main interpreter is served by a pool of owner threads (`py-__main__`, ...), each
//!   with a thread state of its own there; [`MainLane`] gives a workload a queue on it and
//!   a limit on how many of those threads run its calls at once.
//! * [`InterpreterHandle::call`] runs a closure there. Python objects ([`PyObj`]) cannot
//!   leave the closure; results and errors cross as plain Rust data.
//! * Calls from the owner thread run inline (re-attaching if a `ctypes` callback detached
//!   the thread state); an owner waiting on another interpreter serves its own queue, so
//!   A→B→A completes. Depth is capped ([`Error::ReentryLimit`]).
//!
//! Rules and reasoning: `ARCHITECTURE.md` at the repository root.

#![deny(missing_docs)]

mod activation;
mod allocator;
mod attach;
mod cancel;
mod config;
mod cpu;
mod error;
mod escalate;
mod fast_ctypes;
mod ffi;
mod group;
mod handle;
mod job;
mod main_pool;
mod memory;
mod native;
mod object;
mod pace;
mod persistent;
mod raised;
mod runtime;
mod sleep;
mod wait;
mod worker;

use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

pub use allocator::{allocator, set_allocator, Allocator, AllocatorInUse};
pub use attach::Attached;
pub use cancel::{CallOptions, CancelToken, DEFAULT_GRACE};
pub use config::{GilMode, InterpreterConfig, WaitPolicy, WhenFull};
pub use cpu::{thread_cpu_time, CpuTime};
pub use error::{Error, PyException, Result};
pub use escalate::{exempt_from_interrupt_tracing, guest_returned};
pub use fast_ctypes::{install_fast_ctypes, FAST_CTYPES_REGISTRY};
pub use group::{GroupId, InterpreterGroup};
pub use handle::{current_depth, current_interpreter, InterpreterHandle};
pub use main_pool::{main_threads, set_main_threads, MainLane, MAX_MAIN_THREADS};
pub use memory::{
    memory_accounting, set_memory_accounting, AccountScope, MemoryAccount, MemoryUsage,
};
pub use native::{NativeArgs, NativeError, NativeResult};
pub use object::PyObj;
pub use persistent::Persistent;
pub use raised::{Detail, RaiseSite, Raised};
pub use runtime::{is_shut_down, live_interpreters, owns_python, python_version, shutdown};
pub use sleep::install_interruptible_sleep;

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
