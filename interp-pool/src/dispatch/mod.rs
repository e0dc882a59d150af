//! Routing calls to owners: `InterpreterHandle` (inline or post-and-wait), groups of
//! replicas, the main interpreter's pool and its lanes (a scheduler of its own, plugged into
//! the seats' serve loop through `owner::seat::Lanes`), and `shutdown`.

pub(crate) mod direct;
pub(crate) mod group;
pub(crate) mod handle;
pub(crate) mod main_pool;
pub(crate) mod shutdown;
