//! How long a caller spins for its reply: a per-call-site estimate of recent reply times
//! (ARCHITECTURE.md, "Waiting").
//!
//! A parked caller pays a futex wake-up (25–50 µs on the 2-core VMs this was measured on)
//! when its reply comes. The fixed [`WaitPolicy::caller_spin`](crate::WaitPolicy) (20 µs)
//! covers short calls only, so every call between that and a millisecond paid it. A
//! [`Pace`] keeps a moving average of the reply times its callers saw and stretches the
//! spin to twice that average, up to [`WaitPolicy::caller_spin_max`](crate::WaitPolicy):
//! a reply that is likely to come soon is spun for, a slow one is still parked for after
//! the short spin.
//!
//! Spinning holds a core. A process-wide count of runnable threads ([`Runnable`]: one per
//! call in flight, whose owner thread runs it or is about to, and one per caller in a
//! stretched spin) is compared with the cores (`available_parallelism`): a caller
//! stretches its spin only while the count, itself included, fits, and gives up the spin
//! (parks) as soon as it no longer does, so waiting callers do not steal the cores the
//! interpreters they wait for need. Calls in flight rather than owners running a job: an
//! owner that was handed a job but has not started it (still in its idle spin, or being
//! woken) needs its core as much, and counting it on the callers' side keeps the owner
//! loop untouched. (A nested call counts while its outer call does too, and a queued call
//! counts though it waits for a busy owner: both only make callers spin less.)
//!
//! One `Pace` per place with its own stream of calls: each interpreter (`OwnerLink`), each
//! group (`GroupLink`); `handle::post_and_wait` takes it as a parameter. Lock-free: two
//! relaxed atomics per call (a lost sample under a race only delays the average).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::owner::wait::{spin_until, ReplySlot};

/// The weight of a new sample in the moving average: 1/2^SHIFT.
const SHIFT: u32 = 3;

/// Replies faster than this (as the average goes) mark a trivial call site.
pub(crate) const FAST: Duration = Duration::from_micros(4);
const FAST_NS: u64 = FAST.as_nanos() as u64;

/// A trivial site's calls are timed one in this many, per thread.
pub(crate) const FAST_SAMPLE: u32 = 16;

/// Whether this thread's call is the one in [`FAST_SAMPLE`] to time.
fn sample_now() -> bool {
    thread_local! {
        static COUNT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    COUNT.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % FAST_SAMPLE == 0
    })
}

/// A call site's recent reply times and the spin budget they give its callers.
#[derive(Debug)]
pub(crate) struct Pace {
    /// Moving average of reply times in ns; 0 before the first sample.
    recent_ns: AtomicU64,
    /// The longest stretched spin (`WaitPolicy::caller_spin_max`).
    max: Duration,
    /// Callers that committed to park (see `InterpreterHandle::caller_parks`).
    parks: AtomicU64,
}

impl Pace {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            recent_ns: AtomicU64::new(0),
            max,
            parks: AtomicU64::new(0),
        }
    }

    /// Adds one reply time (post to reply) to the average. A sample is clamped to four
    /// times the cap first, so one very slow call does not keep the spin short for long
    /// (it takes ~10 calls to fall back under the cap).
    pub(crate) fn record(&self, latency: Duration) {
        if self.max.is_zero() {
            return;
        }
        let cap = self.max.as_nanos().saturating_mul(4);
        let sample = u64::try_from(latency.as_nanos().min(cap))
            .unwrap_or(u64::MAX)
            .max(1);
        let old = self.recent_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - (old >> SHIFT) + (sample >> SHIFT)
        };
        self.recent_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// Starts one call's bookkeeping, before its post: the clock reading its reply time is
    /// measured from (`None`: not measured this time) and its count as runnable (`None`:
    /// not counted). A site whose replies come within [`FAST`] (trivial calls: they never
    /// stretch a spin) is timed on one call in [`FAST_SAMPLE`] per thread and not counted,
    /// so it pays neither two clock reads nor a shared counter per call; a sample that
    /// comes out slower puts it back on every call.
    pub(crate) fn start(&self) -> (Option<Instant>, Option<Runnable>) {
        if self.max.is_zero() {
            return (None, None);
        }
        let fast = matches!(self.recent_ns.load(Ordering::Relaxed), 1..FAST_NS);
        if fast && !sample_now() {
            return (None, None);
        }
        (Some(Instant::now()), (!fast).then(Runnable::enter))
    }

    /// The moving average of recent reply times, if any call was recorded.
    pub(crate) fn recent(&self) -> Option<Duration> {
        match self.recent_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The caller's spin budget given the post's `base` (zero when the post woke a parked
    /// owner: spinning then would hold the core the scheduler picked for it; else
    /// `WaitPolicy::caller_spin`): twice the recent reply time, at least `base`, at most
    /// the cap; only `base` if the recent reply time exceeds the cap (that caller parks)
    /// or if more threads are runnable than there are cores.
    pub(crate) fn budget(&self, base: Duration) -> Duration {
        if base.is_zero() || self.max <= base {
            return base;
        }
        match self.recent() {
            Some(recent) if recent <= self.max && !oversubscribed(1) => {
                recent.saturating_mul(2).clamp(base, self.max)
            }
            _ => base,
        }
    }

    /// Callers that committed to park so far.
    pub(crate) fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    /// A caller that is no owner thread waits for `slot`: spins for the budget (yielding
    /// at once while `defer()`), counted as runnable while it spins beyond `base` and
    /// giving up (once `base` has passed) as soon as the count exceeds the cores; then
    /// parks. Returns when the slot
    /// is done.
    pub(crate) fn wait(&self, slot: &ReplySlot, base: Duration, defer: &dyn Fn() -> bool) {
        let budget = self.budget(base);
        let spin = if budget > base {
            let _spinning = Runnable::enter();
            // Giving up never cuts the spin short of the base: a caller spins at least as
            // long as without the stretch (e.g. while its target's nested call is in flight).
            let start = Instant::now();
            let give_up = || oversubscribed(0) && start.elapsed() >= base;
            if spin_until(budget, || slot.is_done() || give_up(), defer) && slot.is_done() {
                return;
            }
            Duration::ZERO
        } else {
            budget
        };
        // Counted on committing, before the sleep, so a park is seen while it lasts.
        slot.wait(spin, defer, || {
            self.parks.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Calls in flight plus callers in a stretched spin, process-wide.
static RUNNABLE: AtomicUsize = AtomicUsize::new(0);

/// `available_parallelism`, read once (0: not yet).
static CORES: AtomicUsize = AtomicUsize::new(0);

fn cores() -> usize {
    match CORES.load(Ordering::Relaxed) {
        0 => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            CORES.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Whether the runnable threads, plus `extra` not yet counted, exceed the cores.
fn oversubscribed(extra: usize) -> bool {
    RUNNABLE.load(Ordering::Relaxed) + extra > cores()
}

/// Counts one runnable thread while it lives: a call in flight (`handle::post_and_wait`,
/// from before the post until the reply), a caller in a stretched spin.
pub(crate) struct Runnable(());

impl Runnable {
    pub(crate) fn enter() -> Self {
        RUNNABLE.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for Runnable {
    fn drop(&mut self) {
        RUNNABLE.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_micros(20);
    const MAX: Duration = Duration::from_millis(1);

    #[test]
    fn no_sample_or_zero_base_keeps_the_base() {
        let p = Pace::new(MAX);
        assert_eq!(p.budget(BASE), BASE);
        p.record(Duration::from_micros(100));
        assert_eq!(p.budget(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn medium_calls_stretch_the_spin_slow_ones_do_not() {
        let p = Pace::new(MAX);
        p.record(Duration::from_micros(100));
        // Other tests' threads may count as runnable; only then is the base returned.
        let b = p.budget(BASE);
        assert!(b == Duration::from_micros(200) || b == BASE, "{b:?}");
        let slow = Pace::new(MAX);
        slow.record(Duration::from_millis(3));
        assert_eq!(slow.budget(BASE), BASE);
        let tiny = Pace::new(MAX);
        tiny.record(Duration::from_micros(1));
        assert_eq!(tiny.budget(BASE), BASE);
    }

    #[test]
    fn one_slow_call_is_forgotten_within_a_few_calls() {
        let p = Pace::new(MAX);
        p.record(Duration::from_secs(5));
        assert!(p.recent().unwrap() > MAX);
        for _ in 0..12 {
            p.record(Duration::from_micros(100));
        }
        assert!(p.recent().unwrap() < MAX, "{:?}", p.recent());
    }

    #[test]
    fn more_runnable_threads_than_cores_keep_the_base() {
        let p = Pace::new(MAX);
        p.record(Duration::from_micros(100));
        let _busy: Vec<Runnable> = (0..cores()).map(|_| Runnable::enter()).collect();
        assert_eq!(p.budget(BASE), BASE);
    }

    #[test]
    fn a_zero_cap_never_stretches() {
        let p = Pace::new(Duration::ZERO);
        p.record(Duration::from_micros(100));
        assert_eq!(p.recent(), None);
        assert_eq!(p.budget(BASE), BASE);
    }

    #[test]
    fn a_trivial_site_is_timed_one_call_in_sixteen_and_not_counted() {
        let p = Pace::new(MAX);
        // No sample yet, then a slow site: every call is timed and counted.
        assert!(matches!(p.start(), (Some(_), Some(_))));
        p.record(Duration::from_micros(200));
        assert!(matches!(p.start(), (Some(_), Some(_))));
        let p = Pace::new(MAX);
        p.record(Duration::from_nanos(800));
        let starts: Vec<_> = (0..FAST_SAMPLE * 4).map(|_| p.start()).collect();
        let timed = starts.iter().filter(|(t, _)| t.is_some()).count();
        assert_eq!(timed, 4);
        assert!(starts.iter().all(|(_, r)| r.is_none()));
        // A sample that comes out slow puts the site back on every call.
        p.record(Duration::from_millis(2));
        assert!(matches!(p.start(), (Some(_), Some(_))));
    }
}
