//! Per-call options for calls a host thread makes through polyplug's C ABI, which has no
//! room for them: set for a scope on the calling thread.

use std::cell::RefCell;

use interp_pool::CallOptions;

thread_local! {
    static OPTIONS: RefCell<Option<CallOptions>> = const { RefCell::new(None) };
}

/// Runs `f` with `options` applied to every Python call this thread makes inside it
/// (through any contract of this loader), instead of the bundle's configured deadline.
///
/// ```no_run
/// use std::time::Duration;
/// use polyplug_subinterp::{with_call_options, CallOptions, CancelToken};
///
/// let token = CancelToken::new(); // token.cancel() from another thread stops the call
/// let opts = CallOptions {
///     timeout: Some(Duration::from_millis(50)),
///     cancel: Some(token),
///     ..CallOptions::default()
/// };
/// with_call_options(opts, || {
///     // calc.add(1, 2) ... through the generated host callers, as usual
/// });
/// ```
pub fn with_call_options<R>(options: CallOptions, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<CallOptions>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            let _ = OPTIONS.try_with(|o| *o.borrow_mut() = prev);
        }
    }
    let prev = OPTIONS.with(|o| o.borrow_mut().replace(options));
    let _restore = Restore(prev);
    f()
}

/// The options of the innermost `with_call_options` on this thread, if any.
pub(crate) fn current() -> Option<CallOptions> {
    OPTIONS.try_with(|o| o.borrow().clone()).ok().flatten()
}
