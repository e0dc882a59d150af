//! The owner thread and its waiting: an interpreter's thread (create, serve, end: R2), the
//! one queue protocol (`Mailbox`, R7), jobs and reply slots, the spin/park handshake and
//! the caller's spin budget, this thread's activation, the registry of live owners, the
//! seat interface the main pool plugs into, and `Persistent`. Knows nothing of groups,
//! lanes or handles above it.

pub(crate) mod activation;
pub(crate) mod claim;
pub(crate) mod ending;
pub(crate) mod enter;
pub(crate) mod held;
pub(crate) mod holders;
pub(crate) mod host;
pub(crate) mod job;
pub(crate) mod mailbox;
pub(crate) mod pace;
pub(crate) mod persistent;
pub(crate) mod registry;
pub(crate) mod seat;
pub(crate) mod wait;
pub(crate) mod worker;
