//! Per-bundle call metrics: counters updated lock-free by every call (a handful of relaxed
//! atomics), and two latency histograms fed by a sample of the calls (one in
//! [`SAMPLE_EVERY`] per calling thread: three clock reads each), read as a snapshot.

#[cfg(feature = "metrics")]
pub(crate) mod export;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use interp_pool::{CpuTime, MemoryUsage};

use crate::failure_log::{FailureLog, FailureLogPolicy};

/// What a bundle's calls have done since it was loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleMetrics {
    /// Calls finished (any outcome), including `create_instance`.
    pub calls: u64,
    /// Calls that failed for any reason (includes the three below).
    pub errors: u64,
    /// Calls interrupted by their deadline.
    pub timeouts: u64,
    /// Calls interrupted through a cancel token.
    pub cancelled: u64,
    /// Calls refused because the queue was full (`WhenFull::Fail`).
    pub busy: u64,
    /// Calls made and not yet finished (queued or running).
    pub in_flight: u64,
    /// Calls waiting in the interpreter's queue right now.
    pub queue_depth: usize,
    /// Time from the call to the start of its Python work: p50 and p99 (of a sample: one
    /// call in 8 per calling thread, the first one always).
    pub queue_wait_p50: Duration,
    /// See `queue_wait_p50`.
    pub queue_wait_p99: Duration,
    /// Time spent running the Python work: p50 and p99.
    pub run_p50: Duration,
    /// See `run_p50`.
    pub run_p99: Duration,
    /// Extension-module refusals seen during calls (a lazy import refused the bundle's
    /// interpreter; see `PythonConfig::caught_refusals`), caught by the package or not.
    pub refusals_at_call: u64,
    /// Deepest plugin→plugin nesting a call of this bundle ran at (1 = called by the host).
    pub max_depth: usize,
    /// Growth of the process's resident memory across the load, in bytes (approximate:
    /// concurrent loads and allocator reuse blur it; 0 where [`rss_bytes`](crate::rss_bytes)
    /// is `None`).
    pub rss_at_load: u64,
    /// Each replica's own queue, busy state and calls served (one entry without
    /// replicas). The counters above add up over all replicas.
    pub replicas: Vec<crate::ReplicaStats>,
    /// CPU time the bundle's calls and interpreter threads used since the load began (its
    /// init included). Own-GIL and shared-GIL bundles: the CPU clock of each interpreter's
    /// owner thread, read when metrics are taken (no per-call cost); it includes the
    /// owner's spinning for work, reported apart in `spin_time`. Calls that ran on their
    /// caller's thread ([`Dispatch::Direct`](crate::Dispatch::Direct)) are not on that
    /// clock: each sampled one (the same one in 8 per calling thread as the latencies)
    /// reads the calling thread's CPU clock around it, and their sum, scaled to the
    /// interpreters' direct calls (not to all calls), is added; posted calls stay on the
    /// owner's clock, so a bundle whose calls are partly posted, partly direct counts
    /// each once. `main` bundles share the main interpreter's threads, so each samples its
    /// own calls, posted or direct (two thread-clock reads each), and the sum is scaled to
    /// all calls; their init is not included. Sampled figures include what runs nested
    /// inside the call (another bundle's call run on the same thread, or the wait for
    /// it), and a direct call made on another bundle's owner thread is on that owner's
    /// clock too. Threads a plugin starts itself are not counted.
    pub cpu_time: Duration,
    /// Wall time the bundle's owner thread spent spinning for work (idle between calls
    /// for up to `WaitPolicy::server_spin`, or waiting on another interpreter) since the
    /// load began. That CPU is part of `cpu_time` but is not the bundle's code; wall time
    /// is an upper bound of it (on a busy machine a spin's `yield_now` can give the core
    /// away for a while), so `cpu_time - spin_time` is a lower bound of the CPU its code
    /// used. Zero for `main` bundles (their samples cover their calls only).
    pub spin_time: Duration,
    /// Bytes the bundle's interpreter holds now in CPython's MEM and OBJ domains (Python
    /// objects and their buffers; usable sizes), its start-up included; 0 without memory
    /// accounting (`BundleInfo::memory_accounting`). Not seen: an extension's own
    /// `malloc` (numpy array data), `mmap`, CPython's RAW domain, threads a plugin starts.
    pub memory_bytes: u64,
    /// The highest `memory_bytes` since the interpreter started.
    pub memory_peak_bytes: u64,
    /// Allocations refused because of the bundle's memory limit (each a `MemoryError`).
    pub memory_denied: u64,
    /// How far past its deadline the worst call that timed out ran: from the deadline to
    /// the moment its caller got `Error::Timeout` back. The caller cannot return earlier
    /// than the guest stops: the ABI gives the guest pointers into the caller's frame
    /// (arguments, output, arena). Bounded by about two `interrupt_grace` periods for
    /// pure-Python code; unbounded for C code holding the GIL (README, "Deadlines").
    pub deadline_overrun_max: Duration,
    /// The 99th percentile of the same, over every call that timed out (each one
    /// recorded, not sampled; a histogram bucket's upper bound, at most a quarter above
    /// the true value, capped at `deadline_overrun_max`).
    pub deadline_overrun_p99: Duration,
}

/// One call in this many, per calling thread, has its latencies recorded (the first one on
/// each thread always does). Clock reads are the costliest part of metering a ~2 µs call.
const SAMPLE_EVERY: u32 = 8;

thread_local! {
    static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this call on this thread is one whose latencies are recorded.
pub(crate) fn sampled() -> bool {
    CALLS
        .try_with(|c| {
            let n = c.get();
            c.set(n.wrapping_add(1));
            n % SAMPLE_EVERY == 0
        })
        .unwrap_or(false)
}

/// Sub-buckets per power of two: percentiles are exact to within 1/4 of their value.
const SUB: usize = 4;
pub(crate) const BUCKETS: usize = 64 * SUB;

/// A log-linear histogram of nanoseconds.
pub(crate) struct Histogram([AtomicU64; BUCKETS]);

impl Histogram {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    pub(crate) fn index(ns: u64) -> usize {
        if ns < SUB as u64 {
            return ns as usize;
        }
        let log = 63 - ns.leading_zeros() as usize; // >= 2
        let frac = ((ns >> (log - 2)) & 3) as usize;
        (log * SUB + frac).min(BUCKETS - 1)
    }

    /// The largest value a bucket holds (what a percentile reports).
    pub(crate) fn upper(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let (log, frac) = (i / SUB, (i % SUB) as u64);
        let base = 1u64 << log;
        let step = base / SUB as u64;
        base + step * (frac + 1) - 1
    }

    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0[Self::index(ns)].fetch_add(1, Relaxed);
    }

    /// Each bucket's count.
    #[cfg(feature = "metrics")]
    pub(crate) fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }

    fn percentile(&self, p: f64) -> Duration {
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Self::upper(i));
            }
        }
        Duration::from_nanos(Self::upper(BUCKETS - 1))
    }
}

/// The live counters of one loaded bundle, shared by its contracts.
pub(crate) struct Meter {
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    busy: AtomicU64,
    refusals_at_call: AtomicU64,
    started: AtomicU64,
    max_depth: AtomicUsize,
    pub(crate) queue_wait: Histogram,
    pub(crate) run: Histogram,
    /// Calls that timed out: how far past the deadline each returned (`deadlines.rs`).
    overrun: Histogram,
    overrun_max_ns: AtomicU64,
    rss_at_load: AtomicU64,
    /// How long the load took (its successful attempt), nanoseconds; 0 until it is done.
    load_ns: AtomicU64,
    /// The owner's clock when the load began (subinterpreter modes).
    cpu_base: Mutex<Option<CpuTime>>,
    /// `main` mode: CPU time of the sampled calls, and how many there were.
    cpu_sampled_ns: AtomicU64,
    cpu_samples: AtomicU64,
    /// Other modes: CPU time of the sampled calls that ran on a caller's thread
    /// (`Dispatch::Direct`, which the owner's clock does not see), and how many.
    direct_sampled_ns: AtomicU64,
    direct_samples: AtomicU64,
    /// Which failing calls get their traceback logged.
    pub(crate) failures: FailureLog,
}

/// How a metered call ended.
pub(crate) enum Outcome {
    Ok,
    Failed,
    Timeout,
    Cancelled,
    Busy,
}

impl Meter {
    pub(crate) fn new(failure_log: FailureLogPolicy) -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            refusals_at_call: AtomicU64::new(0),
            started: AtomicU64::new(0),
            max_depth: AtomicUsize::new(0),
            queue_wait: Histogram::new(),
            run: Histogram::new(),
            overrun: Histogram::new(),
            overrun_max_ns: AtomicU64::new(0),
            rss_at_load: AtomicU64::new(0),
            load_ns: AtomicU64::new(0),
            cpu_base: Mutex::new(None),
            cpu_sampled_ns: AtomicU64::new(0),
            cpu_samples: AtomicU64::new(0),
            direct_sampled_ns: AtomicU64::new(0),
            direct_samples: AtomicU64::new(0),
            failures: FailureLog::new(failure_log),
        }
    }

    /// The owner thread's CPU clock when the load began: `cpu_time` counts from there
    /// (a pre-warmed spare's start-up is not the bundle's).
    pub(crate) fn set_cpu_base(&self, at: Option<CpuTime>) {
        *self.cpu_base.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// One sampled call's CPU time: a `main` bundle's call (`direct == false`: every one
    /// is sampled, wherever it runs), or another bundle's call that ran on a caller's
    /// thread (`direct`).
    pub(crate) fn cpu_sample(&self, d: Duration, direct: bool) {
        let (ns, samples) = match direct {
            false => (&self.cpu_sampled_ns, &self.cpu_samples),
            true => (&self.direct_sampled_ns, &self.direct_samples),
        };
        ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        samples.fetch_add(1, Relaxed);
    }

    /// `(cpu_time, spin_time)`: from the owner's clock `owner` (subinterpreter modes) plus
    /// the `direct` calls' samples scaled to them, or scaled from the samples
    /// (`owner == None`, `main` mode: `calls` of them).
    fn cpu(&self, owner: Option<CpuTime>, calls: u64, direct: u64) -> (Duration, Duration) {
        match owner {
            Some(now) => {
                let base = self
                    .cpu_base
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_default();
                let on_callers = scaled(&self.direct_sampled_ns, &self.direct_samples, direct);
                (
                    now.total.saturating_sub(base.total) + on_callers,
                    now.spinning.saturating_sub(base.spinning),
                )
            }
            None => (
                scaled(&self.cpu_sampled_ns, &self.cpu_samples, calls),
                Duration::ZERO,
            ),
        }
    }

    /// A call that timed out returned `d` after its deadline.
    pub(crate) fn overrun(&self, d: Duration) {
        self.overrun.record(d);
        self.overrun_max_ns
            .fetch_max(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn set_rss_at_load(&self, bytes: u64) {
        self.rss_at_load.store(bytes, Relaxed);
    }

    /// How long the load took (`faas.init_duration` under the `metrics` feature).
    pub(crate) fn set_load_time(&self, d: Duration) {
        self.load_ns
            .store(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The exact counters and the latency histograms, as the `metrics` feature publishes
    /// them.
    #[cfg(feature = "metrics")]
    pub(crate) fn totals(&self) -> export::Totals {
        use export::Count;
        let calls = self.calls.load(Relaxed);
        let errors = self.errors.load(Relaxed);
        let timeouts = self.timeouts.load(Relaxed);
        let mut t = export::Totals::default();
        t.counts[Count::Invocations as usize] = calls.saturating_sub(errors);
        t.counts[Count::Errors as usize] = errors.saturating_sub(timeouts);
        t.counts[Count::Timeouts as usize] = timeouts;
        t.counts[Count::Cancelled as usize] = self.cancelled.load(Relaxed);
        t.counts[Count::Busy as usize] = self.busy.load(Relaxed);
        t.counts[Count::Refusals as usize] = self.refusals_at_call.load(Relaxed);
        t.run = self.run.counts();
        t.queue = self.queue_wait.counts();
        let load_ns = self.load_ns.load(Relaxed);
        if load_ns > 0 {
            t.init[Histogram::index(load_ns)] = 1;
        }
        t
    }

    pub(crate) fn refusal_at_call(&self) {
        self.refusals_at_call.fetch_add(1, Relaxed);
    }

    pub(crate) fn start(&self) {
        self.started.fetch_add(1, Relaxed);
    }

    pub(crate) fn depth(&self, depth: usize) {
        if depth > self.max_depth.load(Relaxed) {
            self.max_depth.fetch_max(depth, Relaxed);
        }
    }

    pub(crate) fn finish(&self, outcome: Outcome) {
        self.calls.fetch_add(1, Relaxed);
        let extra = match outcome {
            Outcome::Ok => return,
            Outcome::Failed => None,
            Outcome::Timeout => Some(&self.timeouts),
            Outcome::Cancelled => Some(&self.cancelled),
            Outcome::Busy => Some(&self.busy),
        };
        self.errors.fetch_add(1, Relaxed);
        if let Some(c) = extra {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A snapshot; `owner_cpu` is the owner threads' clocks summed (`None` in `main`),
    /// `direct_calls` the calls its interpreters' callers ran themselves (in `main`, its lane's).
    pub(crate) fn snapshot(
        &self,
        queue_depth: usize,
        owner_cpu: Option<CpuTime>,
        direct_calls: u64,
        memory: MemoryUsage,
        replicas: Vec<crate::ReplicaStats>,
    ) -> BundleMetrics {
        let calls = self.calls.load(Relaxed);
        let (cpu_time, spin_time) = self.cpu(owner_cpu, calls, direct_calls);
        BundleMetrics {
            calls,
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            busy: self.busy.load(Relaxed),
            refusals_at_call: self.refusals_at_call.load(Relaxed),
            in_flight: self.started.load(Relaxed).saturating_sub(calls),
            queue_depth,
            queue_wait_p50: self.queue_wait.percentile(0.50),
            queue_wait_p99: self.queue_wait.percentile(0.99),
            run_p50: self.run.percentile(0.50),
            run_p99: self.run.percentile(0.99),
            max_depth: self.max_depth.load(Relaxed),
            rss_at_load: self.rss_at_load.load(Relaxed),
            replicas,
            cpu_time,
            spin_time,
            memory_bytes: memory.live,
            memory_peak_bytes: memory.peak,
            memory_denied: memory.denied,
            deadline_overrun_max: Duration::from_nanos(self.overrun_max_ns.load(Relaxed)),
            // A bucket's upper bound (up to a quarter above), never above the exact max.
            deadline_overrun_p99: self
                .overrun
                .percentile(0.99)
                .min(Duration::from_nanos(self.overrun_max_ns.load(Relaxed))),
        }
    }
}

/// The CPU time of `count` calls estimated from `samples` of them that used `ns` in all
/// (never less than the samples themselves).
fn scaled(ns: &AtomicU64, samples: &AtomicU64, count: u64) -> Duration {
    let samples = samples.load(Relaxed);
    if samples == 0 {
        return Duration::ZERO;
    }
    let ns = ns.load(Relaxed) as f64;
    Duration::from_nanos((ns * count.max(samples) as f64 / samples as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values_within_a_quarter() {
        for ns in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            1_000,
            12_345,
            1 << 40,
            u64::MAX / 3,
        ] {
            let i = Histogram::index(ns);
            let up = Histogram::upper(i);
            assert!(up >= ns, "{ns} -> bucket {i} upper {up}");
            assert!(up - ns <= ns / 4 + 1, "{ns} -> {up}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = Histogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.percentile(0.5).as_nanos() as f64;
        let p99 = h.percentile(0.99).as_nanos() as f64;
        assert!((50_000.0..=62_500.0).contains(&p50), "{p50}");
        assert!((99_000.0..=123_750.0).contains(&p99), "{p99}");
    }

    #[test]
    fn direct_samples_are_scaled_to_direct_calls_on_top_of_the_owner_clock() {
        let m = Meter::new(FailureLogPolicy::default());
        let at = |ms: u64| CpuTime {
            total: Duration::from_millis(ms),
            spinning: Duration::ZERO,
        };
        m.set_cpu_base(Some(at(1_000)));
        // Two sampled direct calls of 3 and 5 µs: 4 µs each on average.
        m.cpu_sample(Duration::from_micros(3), true);
        m.cpu_sample(Duration::from_micros(5), true);
        // 100 calls in all, 10 of them direct: the 90 posted ones are on the owner's clock
        // (500 ms since the load), the direct ones are 10 x 4 µs.
        let (cpu, spin) = m.cpu(Some(at(1_500)), 100, 10);
        assert_eq!(cpu, Duration::from_millis(500) + Duration::from_micros(40));
        assert_eq!(spin, Duration::ZERO);
        // No direct call yet, or none sampled: the owner's clock alone.
        assert_eq!(
            m.cpu(Some(at(1_500)), 100, 0).0,
            Duration::from_millis(500) + Duration::from_micros(8)
        );
        let fresh = Meter::new(FailureLogPolicy::default());
        fresh.set_cpu_base(Some(at(1_000)));
        assert_eq!(
            fresh.cpu(Some(at(1_200)), 100, 10).0,
            Duration::from_millis(200)
        );
    }

    #[test]
    fn main_mode_samples_are_scaled_to_all_calls_and_kept_apart_from_direct_ones() {
        let m = Meter::new(FailureLogPolicy::default());
        m.cpu_sample(Duration::from_micros(2), false);
        m.cpu_sample(Duration::from_micros(6), false);
        m.cpu_sample(Duration::from_micros(1_000), true);
        assert_eq!(
            m.cpu(None, 8, 0),
            (Duration::from_micros(32), Duration::ZERO)
        );
    }
}
