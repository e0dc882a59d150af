//! What is process-wide: CPython's one initialise / finalize on `py-main` (R1, R9), the
//! creation lock (R8), and the allocator and memory accounts installed before
//! `Py_Initialize`. Uses only the C-API layer.

pub(crate) mod allocator;
pub(crate) mod memory;
pub(crate) mod runtime;
