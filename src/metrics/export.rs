//! `PythonLoader::metrics` published through the [`metrics`] crate facade (feature
//! `metrics`), so whatever exporter a host installed (Prometheus, OpenTelemetry through a
//! bridge, statsd, ...) picks them up.
//!
//! Publishing reads what every call updates anyway (`metrics.rs`'s atomics): nothing is
//! added to the call path. A publish registers each metric anew with whatever recorder the
//! facade has *then*, so a recorder installed after the loader was built (or after some
//! publishes) receives everything from its first publish on: counters are sent as
//! increments since the last publish *to the same recorder*, and a new recorder first gets
//! the whole total since the process loaded the bundle (over reloads), histograms every
//! recorded value. Counters come from the exact per-call counters; the duration histograms
//! from the latency sample (1 call in 8 per calling thread, `metrics::SAMPLE_EVERY`), so
//! their counts are not call counts (the descriptions say so).
//!
//! Names and units follow OpenTelemetry's FaaS semantic conventions where one fits
//! (`faas.invocations`, `faas.errors`, `faas.timeouts`, `faas.invoke_duration`,
//! `faas.init_duration`); the rest are `polyplug.*`. Every metric carries `faas.name` =
//! the bundle's manifest name; per-replica gauges add `polyplug.replica` = its index
//! (0..replicas), bounded by the bundle's replica count, not an id that grows with elastic
//! churn.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

use super::{Histogram, Meter, BUCKETS};
use crate::BundleMetrics;

/// The bundle label: OpenTelemetry's "name of the single function that this runtime
/// instance executes".
pub const BUNDLE_LABEL: &str = "faas.name";
/// The replica label of per-replica gauges: the replica's index, `0..replicas`.
pub const REPLICA_LABEL: &str = "polyplug.replica";

/// The exact counters, in [`COUNTERS`] order.
#[derive(Clone, Copy)]
pub(crate) enum Count {
    Invocations,
    Errors,
    Timeouts,
    Cancelled,
    Busy,
    Refusals,
}

const COUNTS: usize = 6;

/// Name, unit and description of each [`Count`].
const COUNTERS: [(&str, Unit, &str); COUNTS] = [
    (
        "faas.invocations",
        Unit::Count,
        "Calls that succeeded (exact; with faas.errors and faas.timeouts, every finished call)",
    ),
    (
        "faas.errors",
        Unit::Count,
        "Calls that failed, other than by their deadline (exact; includes polyplug.call.cancelled and polyplug.call.busy)",
    ),
    (
        "faas.timeouts",
        Unit::Count,
        "Calls interrupted by their deadline (exact)",
    ),
    (
        "polyplug.call.cancelled",
        Unit::Count,
        "Calls interrupted through a cancel token (exact; also in faas.errors)",
    ),
    (
        "polyplug.call.busy",
        Unit::Count,
        "Calls refused because the bundle's queue was full (exact; also in faas.errors)",
    ),
    (
        "polyplug.call.refusals",
        Unit::Count,
        "Extension modules that refused the bundle's interpreter during a call (exact)",
    ),
];

const INVOKE: &str = "faas.invoke_duration";
const QUEUE: &str = "polyplug.call.queue_duration";
const INIT: &str = "faas.init_duration";

/// What the publisher sends as counters and histograms, summed over a bundle's loads.
#[derive(Clone)]
pub(crate) struct Totals {
    pub(crate) counts: [u64; COUNTS],
    /// Run time, queue wait (sampled calls) and load time (one per load): bucket counts.
    pub(crate) run: [u64; BUCKETS],
    pub(crate) queue: [u64; BUCKETS],
    pub(crate) init: [u64; BUCKETS],
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            counts: [0; COUNTS],
            run: [0; BUCKETS],
            queue: [0; BUCKETS],
            init: [0; BUCKETS],
        }
    }
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        let pairs = [
            (&mut self.run, &o.run),
            (&mut self.queue, &o.queue),
            (&mut self.init, &o.init),
        ];
        for (a, b) in pairs {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        self.counts
            .iter_mut()
            .zip(&o.counts)
            .for_each(|(a, b)| *a += b);
    }
}

/// A publisher's memory: which loads it saw, and what each recorder was sent.
#[derive(Default)]
struct State {
    /// The recorder last published to (its address), 0 before the first publish.
    recorder: usize,
    /// Loads seen at the last publish, by their meter's address (unique while held).
    live: HashMap<usize, (String, Arc<Meter>)>,
    /// Final totals of loads gone since (unloaded, or retired by a reload), by bundle.
    retired: HashMap<String, Totals>,
    /// What `recorder` was sent so far, by bundle.
    sent: HashMap<String, Totals>,
    /// Bundles whose gauges are set, with how many replicas' gauges.
    gauged: HashMap<String, usize>,
}

/// The publishing state shared by a loader's handles.
#[derive(Default)]
pub(crate) struct Exporter(Mutex<State>);

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// What the exporter reads of a loader: each load's bundle name, meter and current
/// metrics, the most recent load of a bundle last (`lifecycle::Loader` implements it; the
/// exporter sits below the lifecycle layer and never names it).
pub(crate) trait Loads {
    fn each_load(&self, f: &mut dyn FnMut(&str, &Arc<Meter>, BundleMetrics));
}

impl Exporter {
    /// Publishes every bundle `loader` has loaded to the facade's current recorder.
    pub(crate) fn publish(&self, loader: &dyn Loads) {
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashMap::new();
        let mut now: HashMap<String, BundleMetrics> = HashMap::new();
        loader.each_load(&mut |name, meter, metrics| {
            let key = Arc::as_ptr(meter) as usize;
            seen.insert(key, (name.to_owned(), Arc::clone(meter)));
            // The most recent load of a bundle comes last: its gauges win.
            now.insert(name.to_owned(), metrics);
        });
        // Loads gone since the last publish: their counters are final (but for a call
        // still running in them at that moment).
        for (key, (name, meter)) in std::mem::take(&mut st.live) {
            if !seen.contains_key(&key) {
                st.retired.entry(name).or_default().add(&meter.totals());
            }
        }
        st.live = seen;

        let recorder =
            metrics::with_recorder(|r| r as *const dyn metrics::Recorder as *const () as usize);
        if recorder != st.recorder {
            // A recorder that has not seen us: it gets every total from the start.
            st.recorder = recorder;
            st.sent.clear();
            st.gauged.clear();
            describe();
        }
        let mut totals = st.retired.clone();
        for (name, meter) in st.live.values() {
            totals.entry(name.clone()).or_default().add(&meter.totals());
        }
        for (name, t) in totals {
            let sent = st.sent.entry(name.clone()).or_default();
            send(&name, &t, sent);
            *sent = t;
        }

        let gone: Vec<String> = st
            .gauged
            .keys()
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let replicas = st.gauged.remove(&name).unwrap_or(0);
            set_gauges(&name, &BundleMetrics::default(), replicas);
        }
        for (name, m) in &now {
            let before = st
                .gauged
                .insert(name.clone(), m.replicas.len())
                .unwrap_or(0);
            set_gauges(name, m, before);
        }
    }
}

/// Sends `t - sent`: counter increments and histogram values.
fn send(name: &str, t: &Totals, sent: &Totals) {
    for (i, (metric, _, _)) in COUNTERS.iter().enumerate() {
        let delta = t.counts[i].saturating_sub(sent.counts[i]);
        if delta > 0 {
            counter!(*metric, BUNDLE_LABEL => name.to_owned()).increment(delta);
        }
    }
    for (metric, now, before) in [
        (INVOKE, &t.run, &sent.run),
        (QUEUE, &t.queue, &sent.queue),
        (INIT, &t.init, &sent.init),
    ] {
        let mut h = None;
        for (i, (n, b)) in now.iter().zip(before).enumerate() {
            let delta = n.saturating_sub(*b);
            if delta > 0 {
                let h =
                    h.get_or_insert_with(|| histogram!(metric, BUNDLE_LABEL => name.to_owned()));
                // A bucket's upper bound: what `BundleMetrics`' percentiles report.
                let secs = Histogram::upper(i) as f64 / 1e9;
                h.record_many(secs, usize::try_from(delta).unwrap_or(usize::MAX));
            }
        }
    }
}

/// Sets a bundle's gauges from `m`, zeroing the replicas (`before` of them) it no longer has.
fn set_gauges(name: &str, m: &BundleMetrics, before: usize) {
    let g = |metric: &'static str, v: f64| gauge!(metric, BUNDLE_LABEL => name.to_owned()).set(v);
    g("polyplug.bundle.in_flight", m.in_flight as f64);
    g("polyplug.bundle.queue_depth", m.queue_depth as f64);
    g("polyplug.bundle.replicas", m.replicas.len() as f64);
    g("polyplug.bundle.memory.usage", m.memory_bytes as f64);
    g("polyplug.bundle.memory.peak", m.memory_peak_bytes as f64);
    g("polyplug.bundle.memory.denied", m.memory_denied as f64);
    g("polyplug.bundle.cpu_time", m.cpu_time.as_secs_f64());
    g("polyplug.bundle.spin_time", m.spin_time.as_secs_f64());
    g("polyplug.bundle.max_depth", m.max_depth as f64);
    for i in 0..m.replicas.len().max(before) {
        let r = m.replicas.get(i);
        let labels = [
            (BUNDLE_LABEL, name.to_owned()),
            (REPLICA_LABEL, i.to_string()),
        ];
        let g = |metric: &'static str, v: f64| gauge!(metric, &labels).set(v);
        g(
            "polyplug.replica.queue_depth",
            r.map_or(0, |r| r.queue_depth) as f64,
        );
        g(
            "polyplug.replica.busy",
            r.map_or(0.0, |r| f64::from(u8::from(r.busy))),
        );
        g(
            "polyplug.replica.calls_served",
            r.map_or(0, |r| r.calls_served) as f64,
        );
        g(
            "polyplug.replica.direct_calls",
            r.map_or(0, |r| r.direct_calls) as f64,
        );
    }
}

/// Units and descriptions, once per recorder.
fn describe() {
    for (metric, unit, text) in COUNTERS {
        describe_counter!(metric, unit, text);
    }
    describe_histogram!(
        INVOKE,
        Unit::Seconds,
        "Run time of the bundle's Python work per call: a sample of 1 call in 8 per calling \
         thread (bucketed to within 1/4), so its count is not the call count (faas.invocations is)"
    );
    describe_histogram!(
        QUEUE,
        Unit::Seconds,
        "Time from the call to the start of its Python work: the same sample as faas.invoke_duration"
    );
    describe_histogram!(
        INIT,
        Unit::Seconds,
        "How long each load or reload of the bundle took (its successful attempt), as seen by a publish"
    );
    for (metric, unit, text) in [
        ("polyplug.bundle.in_flight", Unit::Count, "Calls made and not yet finished"),
        ("polyplug.bundle.queue_depth", Unit::Count, "Calls waiting in the bundle's queues"),
        ("polyplug.bundle.replicas", Unit::Count, "Interpreters serving the bundle (in main mode: threads that may run its calls at once)"),
        ("polyplug.bundle.memory.usage", Unit::Bytes, "Bytes the bundle's interpreters hold in CPython's MEM and OBJ domains (0 without memory accounting)"),
        ("polyplug.bundle.memory.peak", Unit::Bytes, "Highest polyplug.bundle.memory.usage since the interpreters started"),
        ("polyplug.bundle.memory.denied", Unit::Count, "Allocations refused by the bundle's memory limit, current load"),
        ("polyplug.bundle.cpu_time", Unit::Seconds, "CPU time of the bundle's interpreter threads since the load began, plus its calls run on callers' threads (direct dispatch: sampled, scaled to the direct calls); main mode: scaled from sampled calls"),
        ("polyplug.bundle.spin_time", Unit::Seconds, "Wall time those threads spent spinning for work (part of polyplug.bundle.cpu_time)"),
        ("polyplug.bundle.max_depth", Unit::Count, "Deepest plugin-to-plugin nesting a call of the bundle ran at"),
        ("polyplug.replica.queue_depth", Unit::Count, "Calls waiting on this replica's own queue (instance calls)"),
        ("polyplug.replica.busy", Unit::Count, "1 while the replica runs (or looks for) a call, else 0"),
        ("polyplug.replica.calls_served", Unit::Count, "Calls the replica at this index has run"),
        ("polyplug.replica.direct_calls", Unit::Count, "Of polyplug.replica.calls_served, calls run on their caller's thread (direct dispatch)"),
    ] {
        describe_gauge!(metric, unit, text);
    }
}

/// Publishes a loader's metrics every interval on a thread of its own
/// ([`PythonLoader::publish_metrics_every`](crate::PythonLoader::publish_metrics_every)),
/// to the facade's global recorder. Dropping it publishes once more and joins the thread.
#[derive(Debug)]
pub struct MetricsPublisher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsPublisher {
    pub(crate) fn start(
        loader: Weak<dyn Loads + Send + Sync>,
        exporter: Arc<Exporter>,
        every: Duration,
    ) -> Self {
        // A zero interval would spin.
        let every = every.max(Duration::from_millis(1));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("polyplug-metrics".into())
            .spawn(move || loop {
                let last = !matches!(
                    stopped.recv_timeout(every),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                // The loader's last handle is gone: so are its bundles.
                let Some(loader) = loader.upgrade() else {
                    return;
                };
                exporter.publish(&*loader);
                if last {
                    return;
                }
            })
            .ok();
        if thread.is_none() {
            tracing::warn!(
                "cannot start the metrics publisher thread; publish_metrics still works"
            );
        }
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for MetricsPublisher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
