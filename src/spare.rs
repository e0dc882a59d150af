//! One pre-warmed interpreter, kept ready for the next load.
//!
//! Creating an own-GIL interpreter costs ~9 ms and importing the stdlib modules every
//! polyplugc bundle needs (`typing`, `ctypes`, ...) another ~10–15 ms in a fresh
//! interpreter. A load takes the spare if one with the same settings is ready (or waits for
//! the one being made, which is further along than a new one would be: creation is
//! serialised anyway) and starts the next one in the background, so those costs leave the
//! load's critical path. The spare is fresh: no bundle has run in it. Process-wide, because
//! runtimes and loaders come and go while CPython stays.

use std::sync::{Condvar, Mutex, MutexGuard};

use interp_pool::{InterpreterConfig, InterpreterHandle};

/// Imported in the spare ahead of time: what polyplugc glue and the loader's bootstrap use.
const PRELUDE: &str = "import typing, ctypes, struct, enum, collections, types, importlib.util";

#[derive(Default)]
struct State {
    ready: Option<(InterpreterConfig, InterpreterHandle)>,
    /// Settings of the spare being made, if any.
    making: Option<InterpreterConfig>,
}

static STATE: Mutex<State> = Mutex::new(State {
    ready: None,
    making: None,
});
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh, pre-warmed interpreter with these settings (renamed by the caller): the ready
/// spare, or the one being made (started now if none is); then starts the next one. `None`
/// only if the maker is busy with other settings or failed.
pub(crate) fn take(config: &InterpreterConfig) -> Option<InterpreterHandle> {
    let key = InterpreterConfig {
        name: "spare".into(),
        ..config.clone()
    };
    let mut st = lock();
    let mut attempted = false;
    let taken = loop {
        match st.ready.take() {
            Some((k, h)) if k == key => break Some(h),
            other => st.ready = other,
        }
        match &st.making {
            Some(k) if *k == key => {}
            Some(_) => break None,
            None if attempted => break None, // our maker failed
            None => {
                attempted = true;
                if !make(key.clone()) {
                    break None;
                }
                st.making = Some(key.clone());
            }
        }
        st = CHANGED.wait(st).unwrap_or_else(|e| e.into_inner());
    };
    if st.ready.is_none() && st.making.is_none() && make(key.clone()) {
        st.making = Some(key);
    }
    drop(st);
    taken.filter(|h| !h.is_ended())
}

/// Starts making a spare on a background thread; false if no thread could be started.
/// Called with STATE locked; the maker takes the lock only when done.
fn make(config: InterpreterConfig) -> bool {
    let job = move || {
        let made = InterpreterHandle::spawn(config.clone()).and_then(|h| warm(h, PRELUDE));
        let mut st = lock();
        st.making = None;
        match made {
            Ok(h) => st.ready = Some((config, h)),
            Err(e) => tracing::debug!(error = %e, "could not pre-warm an interpreter"),
        }
        drop(st);
        CHANGED.notify_all();
    };
    match std::thread::Builder::new()
        .name("py-spare-maker".into())
        .spawn(job)
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not start the spare maker");
            false
        }
    }
}

/// Prepares a new spare: the interruptible `time.sleep`, then `prelude`. One that fails is
/// ended here: dropping the last handle does not end an interpreter, so its owner thread
/// would run on, unreachable, until shutdown.
fn warm(h: InterpreterHandle, prelude: &str) -> interp_pool::Result<InterpreterHandle> {
    let warmed = h.call(|py| {
        // Before anything imports `time.sleep` by name (`deadlines.rs`).
        interp_pool::install_interruptible_sleep(py)?;
        py.run(prelude)
    });
    match warmed {
        Ok(()) => Ok(h),
        Err(e) => {
            h.end();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use interp_pool::{InterpreterConfig, InterpreterHandle};

    /// Issue 20, defect 9a: a spare whose prelude fails is ended, not dropped with its
    /// owner thread still running.
    #[test]
    fn a_spare_whose_prelude_fails_is_ended() {
        let h = InterpreterHandle::spawn(InterpreterConfig::named("spare-test")).unwrap();
        let e = super::warm(h.clone(), "raise ImportError('no prelude here')").unwrap_err();
        assert!(e.to_string().contains("no prelude here"), "{e}");
        assert!(h.is_ended(), "the failed spare's interpreter still runs");
    }
}
