//! The safe C-API layer: the crate's one import of pyo3-ffi (`ffi`), the attach token and
//! guards (R10; the only `PyEval_SaveThread` / `RestoreThread` callers), owned and lent
//! object references (R11), native functions, raised exceptions, and the ctypes fast paths
//! (R12). Knows nothing of threads, queues or interrupts; every layer above calls CPython
//! through it.

pub(crate) mod attach;
pub(crate) mod fast_ctypes;
pub(crate) mod ffi;
pub(crate) mod native;
pub(crate) mod object;
pub(crate) mod raised;
