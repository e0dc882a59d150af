//! Per-bundle memory limits as the loader reports them (the accounting itself is
//! interp-pool's `MemoryAccount`).

use interp_pool::MemoryAccount;
use polyplug::error::LoaderError;

use crate::load::LoadFailure;

/// A failed load whose interpreter was refused memory: the error names the bundle and its
/// limit (the plugin most likely failed with the `MemoryError` that refusal raised).
pub(crate) fn at_load(bundle: &str, account: &MemoryAccount, failure: LoadFailure) -> LoadFailure {
    let usage = account.usage();
    let Some(limit) = usage.limit.filter(|_| usage.denied > 0) else {
        return failure;
    };
    tracing::warn!(
        bundle,
        limit,
        denied = usage.denied,
        "load over its memory limit"
    );
    LoadFailure {
        error: LoaderError::InitFailed {
            bundle: bundle.to_owned(),
            error: format!(
                "the bundle exceeded its memory limit of {limit} bytes ({:.1} MiB) during \
                 load (PythonConfig::memory_limit / bundle_memory_limits): {}",
                limit as f64 / f64::from(1 << 20),
                failure.error
            ),
        },
        refusal: None,
    }
}
