//! CPU time of owner threads, read from any thread at no per-call cost.
//!
//! Each owner thread takes its own CPU clock id (`pthread_getcpuclockid`) when it starts;
//! [`InterpreterHandle::cpu_time`](crate::InterpreterHandle::cpu_time) reads that clock
//! (`clock_gettime`, a syscall on Linux) only when asked. The owner also adds up the wall
//! time it spends spinning for work (idle, or nested-waiting on another interpreter), so
//! that time can be reported apart: a spin is pure CPU while it lasts, so its wall time is
//! an upper bound of the CPU it used. Parked time uses no CPU.
//!
//! The clock id names the thread's kernel task, which may be reused once the thread has
//! exited; so the owner stores its final reading under the lock readers take, before it
//! exits, and readers never touch the clock id after that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What an owner thread's CPU clock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    /// CPU time the thread used (all of it, spins included).
    pub total: Duration,
    /// Wall time it spent spinning for work: idle between jobs or waiting on another
    /// interpreter. The CPU those spins used is part of `total`; their wall time is an
    /// upper bound of it (a spin's `yield_now` may give the core away on a busy machine).
    pub spinning: Duration,
}

#[derive(Debug)]
enum Clock {
    Live(libc::clockid_t),
    Ended(Duration),
    Unavailable,
}

/// One owner thread's CPU clock, shared through its `OwnerLink`.
#[derive(Debug)]
pub(crate) struct OwnerClock {
    clock: Mutex<Clock>,
    spin_ns: AtomicU64,
}

fn read_clock(id: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: no CPython call (no rule applies); any thread. `ts` is a valid out-pointer;
    // an invalid clock id only makes it fail (EINVAL).
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): a real syscall on
/// Linux (~0.2–1 µs), so sample it rather than read it on every call.
pub fn thread_cpu_time() -> Option<Duration> {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

impl OwnerClock {
    /// The calling thread's clock: called by the owner thread itself.
    pub(crate) fn current_thread() -> Self {
        let mut id: libc::clockid_t = 0;
        // SAFETY: no CPython call (no rule applies); pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: no CPython call (no rule applies); `me` is the calling, live thread; `id`
        // is a valid out-pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(me, &mut id) };
        Self {
            clock: Mutex::new(if rc == 0 {
                Clock::Live(id)
            } else {
                Clock::Unavailable
            }),
            spin_ns: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one spin's wall time (owner thread only).
    pub(crate) fn add_spin(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // One writer (the owner): a plain add, relaxed.
        let now = self.spin_ns.load(Ordering::Relaxed);
        self.spin_ns
            .store(now.saturating_add(ns), Ordering::Relaxed);
    }

    /// The clock now (or its last reading if the thread has ended).
    pub(crate) fn read(&self) -> Option<CpuTime> {
        let total = match *self.lock() {
            Clock::Live(id) => read_clock(id)?,
            Clock::Ended(d) => d,
            Clock::Unavailable => return None,
        };
        Some(CpuTime {
            total,
            spinning: Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed)),
        })
    }

    /// Stores the final reading; called by the owner thread before it exits (idempotent).
    pub(crate) fn end(&self) {
        let mut c = self.lock();
        if let Clock::Live(_) = *c {
            *c = match thread_cpu_time() {
                Some(d) => Clock::Ended(d),
                None => Clock::Unavailable,
            };
        }
    }
}
