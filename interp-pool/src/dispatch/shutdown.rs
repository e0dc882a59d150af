//! `shutdown`: ends every interpreter in an order that strands no call (R9), then
//! finalizes CPython.

use crate::error::{Error, Result};
use crate::owner::{activation, registry};
use crate::process::runtime;

/// Ends every interpreter, then finalizes CPython if this crate initialised it.
///
/// Afterwards every call fails with [`Error::InterpreterGone`], creating an interpreter
/// fails with [`Error::ShutDown`], and Python is never initialised again in this process.
/// Calls already running finish first. Must not be called from an interpreter's owner
/// thread (it would wait for itself).
pub fn shutdown() -> Result<()> {
    if activation::owner().is_some() {
        return Err(Error::Internal(
            "interp_pool::shutdown called from an interpreter's owner thread".into(),
        ));
    }
    if !runtime::begin_shutdown() {
        return Ok(());
    }
    let Some(rt) = runtime::started() else {
        return Ok(());
    };
    // Wait out any creation in progress; later ones see the flag (see worker::owner_main).
    drop(rt.creation_lock());
    // Lanes first: a lane call an owner waits on must not outlive the seats (R9).
    super::main_pool::close_all();
    let live = registry::take_all();
    for s in &live {
        s.request_end();
    }
    for s in &live {
        s.ending.wait();
    }
    rt.finalize();
    tracing::debug!("interpreter pool shut down");
    Ok(())
}

/// How many interpreters the pool serves in this process: subinterpreters created and not
/// yet ended, plus the main interpreter once its pool started (counted once, however many
/// threads serve it).
pub fn live_interpreters() -> usize {
    match runtime::started() {
        Some(_) => registry::live_interpreters(),
        None => 0,
    }
}
