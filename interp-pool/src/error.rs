//! Errors crossing the pool boundary: plain owned Rust data, never a Python object.

use std::fmt;

use crate::InterpreterId;

/// A Python exception, captured and formatted inside the interpreter that raised it.
///
/// Only owned text crosses threads: the exception object itself is released in its own
/// interpreter before this value is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyException {
    /// Qualified type name, e.g. `ValueError` or `mymod.CustomError`.
    pub type_name: String,
    /// `str(exc)`, or `<unformattable>` if that raised too.
    pub message: String,
    /// `traceback.format_exception(exc)` joined; falls back to `Type: message`.
    pub traceback: String,
    /// The interpreter it was raised in.
    pub interp: InterpreterId,
}

impl fmt::Display for PyException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.type_name)
        } else {
            write!(f, "{}: {}", self.type_name, self.message)
        }
    }
}

impl std::error::Error for PyException {}

/// Everything that can go wrong when creating, calling or ending an interpreter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// Python code raised; type, message and formatted traceback inside.
    Python(PyException),
    /// An extension module refuses to load in this kind of subinterpreter
    /// ("does not support loading in subinterpreters"). A caller can retry the work in a
    /// more permissive interpreter mode.
    Unsupported {
        /// The module that refused, as CPython named it.
        module: String,
        /// The `ImportError` as raised.
        exception: PyException,
    },
    /// The interpreter was ended (or the pool shut down) before the call could run.
    InterpreterGone {
        /// The interpreter that was called.
        interp: InterpreterId,
    },
    /// The process-wide pool was shut down; no new interpreters can be created.
    ShutDown,
    /// The call would nest deeper than the configured cap.
    ReentryLimit {
        /// Nesting depth the call would have run at.
        depth: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The call's deadline passed: it was interrupted inside the interpreter (or never
    /// started). The interpreter stays usable.
    Timeout {
        /// The deadline the call was given, measured from when it was made.
        after: std::time::Duration,
    },
    /// The call was cancelled through its [`CancelToken`](crate::CancelToken).
    Cancelled,
    /// The interpreter's queue was full and its policy is [`WhenFull::Fail`](crate::WhenFull::Fail).
    Busy {
        /// The interpreter that was called.
        interp: InterpreterId,
        /// Its queue capacity.
        capacity: usize,
    },
    /// CPython could not be initialised or could not create an interpreter.
    Init(String),
    /// A state the pool's invariants rule out; a bug in interp-pool or in unsafe caller code.
    Internal(String),
}

impl Error {
    /// The Python exception behind this error, if there is one.
    pub fn python_exception(&self) -> Option<&PyException> {
        match self {
            Error::Python(e) | Error::Unsupported { exception: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Python(e) => write!(f, "{e}"),
            Error::Unsupported { module, .. } => write!(
                f,
                "module {module} does not support loading in this kind of subinterpreter"
            ),
            Error::InterpreterGone { interp } => write!(f, "interpreter {interp} has ended"),
            Error::ShutDown => f.write_str("the interpreter pool has been shut down"),
            Error::ReentryLimit { depth, limit } => write!(
                f,
                "nested interpreter call at depth {depth} exceeds the limit of {limit}"
            ),
            Error::Timeout { after } => write!(f, "call deadline of {after:?} exceeded"),
            Error::Cancelled => f.write_str("call cancelled"),
            Error::Busy { interp, capacity } => write!(
                f,
                "interpreter {interp} is busy: its queue of {capacity} calls is full"
            ),
            Error::Init(msg) => write!(f, "CPython initialisation failed: {msg}"),
            Error::Internal(msg) => write!(f, "interp-pool internal error: {msg} (bug)"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unsupported { exception, .. } => Some(exception),
            _ => None,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
