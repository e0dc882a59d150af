//! The one mapping from interp-pool errors to polyplug's `LoaderError` and `AbiError`.

use interp_pool::Error;
use polyplug::error::LoaderError;
use polyplug::logger::LoggerHandle;
use polyplug_abi::types::LogLevel;
use polyplug_abi::{AbiError, AbiErrorCode, StringView};

/// `InitFailed` for `bundle`, with what was being done and the cause. Python exceptions
/// show as `Type: message`; the full traceback goes to the log.
pub(crate) fn init_failed(bundle: &str, doing: &str, err: &Error) -> LoaderError {
    init_failed_as(bundle, doing, err, false)
}

/// `init_failed`, for a failure that followed a recorded refusal (see `refusals.rs`):
/// usually retried in another mode, so its traceback is only logged at debug level.
pub(crate) fn init_failed_after_refusal(bundle: &str, doing: &str, err: &Error) -> LoaderError {
    init_failed_as(bundle, doing, err, true)
}

fn init_failed_as(bundle: &str, doing: &str, err: &Error, refused: bool) -> LoaderError {
    match err {
        // Usually followed by a retry in another mode (see `load_plan`): not an error yet.
        Error::Unsupported { exception, .. } => {
            tracing::debug!(bundle, "{doing}:\n{}", exception.traceback)
        }
        _ if refused => {
            if let Some(exc) = err.python_exception() {
                tracing::debug!(bundle, "{doing} after a refusal:\n{}", exc.traceback);
            }
        }
        _ => {
            if let Some(exc) = err.python_exception() {
                tracing::error!(bundle, "{doing}:\n{}", exc.traceback);
            }
        }
    }
    let cause = match err {
        Error::Unsupported { module, exception } => {
            format!("{exception} (the extension module {module} refuses this kind of interpreter)")
        }
        other => other.to_string(),
    };
    LoaderError::InitFailed {
        bundle: bundle.to_owned(),
        error: format!("{doing}: {cause}"),
    }
}

pub(crate) fn init_failed_msg(bundle: &str, error: impl Into<String>) -> LoaderError {
    LoaderError::InitFailed {
        bundle: bundle.to_owned(),
        error: error.into(),
    }
}

pub(crate) fn abi(code: AbiErrorCode, message: &'static [u8]) -> AbiError {
    AbiError {
        code: code as u32,
        message: StringView::from_static(message),
    }
}

/// `AbiError.message` of a call interrupted by its deadline (code Generic).
pub const TIMEOUT_MESSAGE: &[u8] = b"python: call deadline exceeded";
/// `AbiError.message` of a call interrupted through a cancel token (code Generic).
pub const CANCELLED_MESSAGE: &[u8] = b"python: call cancelled";
/// `AbiError.message` of a call refused because the bundle's queue was full (Generic).
pub const BUSY_MESSAGE: &[u8] = b"python: bundle busy (queue full)";

/// `AbiError.message` of a call whose Python code raised (code Generic); the traceback
/// is logged, or counted if the bundle's failure log has logged enough of its kind.
pub(crate) const RAISED_MESSAGE: &[u8] = b"python: plugin raised an exception (traceback logged)";

/// The `AbiError` of a failure whose traceback the failure log chose not to log.
pub(crate) fn raised_unlogged() -> AbiError {
    abi(AbiErrorCode::Generic, RAISED_MESSAGE)
}

/// Logs the failure log's count of unlogged failures (one line).
pub(crate) fn failures_summary(logger: &LoggerHandle, bundle: &str, summary: &str) {
    tracing::warn!(bundle, "{summary}");
    logger.log(LogLevel::Warn, bundle, || summary.to_owned());
}

/// The `AbiError` a failed call returns; Python tracebacks go to the runtime's logger
/// and to `tracing`, never to stderr.
pub(crate) fn call_failed(
    logger: &LoggerHandle,
    bundle: &str,
    what: &str,
    err: &Error,
) -> AbiError {
    call_failed_noted(logger, bundle, what, err, "")
}

/// [`call_failed`], with `note` appended to a logged traceback.
pub(crate) fn call_failed_noted(
    logger: &LoggerHandle,
    bundle: &str,
    what: &str,
    err: &Error,
    note: &str,
) -> AbiError {
    match err {
        Error::ReentryLimit { depth, limit } => {
            tracing::warn!(bundle, depth, limit, "{what}: nesting limit reached");
            abi(
                AbiErrorCode::ReentrantCall,
                b"python: plugin call nesting limit reached",
            )
        }
        Error::InterpreterGone { .. } | Error::ShutDown => {
            abi(AbiErrorCode::StaleHandle, b"python: bundle was unloaded")
        }
        // polyplug 0.1.3 has no codes for these: Generic, told apart by the message.
        Error::Timeout { after } => {
            tracing::warn!(bundle, ?after, "{what}: deadline exceeded");
            abi(AbiErrorCode::Generic, TIMEOUT_MESSAGE)
        }
        Error::Cancelled => {
            tracing::info!(bundle, "{what}: cancelled");
            abi(AbiErrorCode::Generic, CANCELLED_MESSAGE)
        }
        Error::Busy { capacity, .. } => {
            tracing::warn!(bundle, capacity, "{what}: queue full");
            abi(AbiErrorCode::Generic, BUSY_MESSAGE)
        }
        other => {
            let mut text = match other.python_exception() {
                Some(exc) => exc.traceback.clone(),
                None => other.to_string(),
            };
            if let Error::Unsupported { module, .. } = other {
                // Imported only at call time, so the load could not move the bundle.
                text.push_str(&format!(
                    "(extension module {module} refuses this bundle's interpreter mode; \
                     set PythonConfig::bundle_modes[\"{bundle}\"] = InterpreterMode::Main)\n"
                ));
            }
            text.push_str(note);
            tracing::error!(bundle, "{what} failed:\n{text}");
            logger.log(LogLevel::Error, bundle, || {
                format!("{what} failed:\n{text}")
            });
            abi(AbiErrorCode::Generic, RAISED_MESSAGE)
        }
    }
}
