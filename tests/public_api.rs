//! A host written against `polyplug_subinterp`'s own names only (plus `polyplug` and
//! `std`): every type in the public API must be reachable from this crate, without a
//! dependency on `interp-pool`.
//!
//! `every_field` names every `PythonConfig` field, with no `..Default::default()`: a new
//! field fails to compile here until it is named (and so until it is reachable).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use polyplug::runtime_builder::RuntimeBuilder;
use polyplug_subinterp::{
    rss_bytes, with_call_options, Allocator, AllocatorInUse, Binding, BundleInfo, BundleMetrics,
    CallOptions, CancelToken, CaughtRefusals, Dispatch, ElasticPolicy, Evidence, FailureLogPolicy,
    InterpreterMode, ModeCause, ModeReason, PythonConfig, PythonLoader, RefusalHow, ReplicaStats,
    Replicas, WaitPolicy, WhenFull, BUSY_MESSAGE, CANCELLED_MESSAGE, DEFAULT_GRACE,
    TIMEOUT_MESSAGE,
};

/// Every field set explicitly, each to its default's value (asserted below), so a
/// field added to `PythonConfig` must be added here too.
fn every_field() -> PythonConfig {
    PythonConfig {
        min_version: (3, 12),
        max_depth: 64,
        stack_size: 8 << 20,
        allow_threads: false,
        wait: WaitPolicy {
            caller_spin: Duration::from_micros(20),
            caller_spin_max: Duration::from_micros(500),
            server_spin: Duration::from_micros(20),
        },
        mode: InterpreterMode::default_for_this_python(),
        bundle_modes: HashMap::<String, InterpreterMode>::new(),
        auto_downgrade: true,
        caught_refusals: CaughtRefusals::Downgrade,
        ignored_refusals: HashMap::<String, Vec<String>>::new(),
        prewarm: true,
        call_timeout: None::<Duration>,
        bundle_timeouts: HashMap::<String, Option<Duration>>::new(),
        interrupt_grace: DEFAULT_GRACE,
        queue_capacity: 1024,
        when_full: WhenFull::Block,
        replicas: HashMap::<String, Replicas>::new(),
        main_threads: None,
        elastic: ElasticPolicy {
            grow_after: Duration::from_millis(2),
            idle_retire: Duration::from_secs(30),
            check_every: Duration::from_millis(1),
        },
        failure_log: FailureLogPolicy {
            interval: Duration::from_secs(10),
            per_kind: 3,
            per_interval: 20,
        },
        memory_accounting: true,
        allocator: Allocator::Mimalloc,
        memory_limit: None::<usize>,
        bundle_memory_limits: HashMap::<String, usize>::new(),
        fast_glue: true,
        dispatch: Dispatch::Post,
        bundle_dispatch: HashMap::<String, Dispatch>::new(),
    }
}

#[test]
fn every_config_field_is_nameable_from_this_crate() {
    assert_eq!(every_field(), PythonConfig::default());
    // The enums' variants, by their paths here.
    let _ = [
        Replicas::Fixed(1),
        Replicas::Auto,
        Replicas::Elastic { min: 1, max: 2 },
    ];
    let _ = [CaughtRefusals::Downgrade, CaughtRefusals::KeepMode];
    let _ = [Dispatch::Post, Dispatch::Direct];
    // As the CLI and `check` spell them, both ways.
    for d in [Dispatch::Post, Dispatch::Direct] {
        assert_eq!(d.as_str().parse::<Dispatch>(), Ok(d));
        assert_eq!(d.to_string(), d.as_str());
    }
    let _ = [WhenFull::Block, WhenFull::Fail];
    let _ = [
        InterpreterMode::OwnGil,
        InterpreterMode::SharedGil,
        InterpreterMode::Main,
    ];
    let _ = FailureLogPolicy::unlimited();
    assert!(!TIMEOUT_MESSAGE.is_empty() && !CANCELLED_MESSAGE.is_empty());
    assert!(!BUSY_MESSAGE.is_empty());
}

#[test]
fn a_host_reads_what_the_loader_reports_by_these_names() {
    let bundles = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bundles");
    let loader = PythonLoader::new(every_field());
    let rt = RuntimeBuilder::new()
        .loader(loader.clone())
        .build()
        .expect("runtime");
    rt.load_bundle(&bundles.join("py_calculator"))
        .expect("calculator loads");
    let id = polyplug_utils::BundleId::new("py_calculator").id();

    let info: BundleInfo = loader.bundle_info(id).expect("loaded");
    // This process started CPython with the default allocator.
    assert_eq!(info.allocator, AllocatorInUse::Mimalloc);
    // As configured (`every_field` leaves it at the default).
    assert_eq!(info.dispatch, Dispatch::Post);
    let ModeReason {
        cause,
        remembered: _,
        fallback: _,
    } = info.reason;
    match cause {
        ModeCause::Configured | ModeCause::Pinned => {}
        ModeCause::Refused {
            module: _,
            from: _,
            how,
            binding,
            seen,
        } => {
            let _: (RefusalHow, Binding, Evidence) = (how, binding, seen);
        }
    }
    let metrics: BundleMetrics = loader.metrics(id).expect("loaded");
    let replicas: &[ReplicaStats] = &metrics.replicas;
    assert_eq!(replicas.len(), 1);
    // Of the calls a replica served, those run on their caller's thread.
    assert!(replicas[0].direct_calls <= replicas[0].calls_served);

    // Per-call options: a deadline and a cancel token, by this crate's names.
    let options = CallOptions {
        timeout: Some(Duration::from_secs(5)),
        cancel: Some(CancelToken::new()),
        grace: Some(DEFAULT_GRACE),
    };
    assert_eq!(with_call_options(options, || 7), 7);
    let _: Option<u64> = rss_bytes();
    let _: bool = polyplug_subinterp::memory_accounting();
}
