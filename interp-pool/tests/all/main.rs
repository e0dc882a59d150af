//! interp-pool integration tests against real CPython (one process-wide runtime).
//! Shutdown/finalize is tested in its own binary (`tests/shutdown.rs`).

mod basics;
mod concurrency;
mod cpu;
mod deadlines;
mod direct;
mod end_races;
mod errors;
mod escalation;
mod fast_ctypes;
mod group;
mod interrupts;
mod isolation;
mod lifecycle;
mod main_interp;
mod main_pool;
mod memory;
mod native;
mod own_gil;
mod reentry;
mod util;
mod wakeups;
