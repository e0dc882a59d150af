/* Host-thread states: thread states that callers' own threads keep for an interpreter
 * (direct dispatch, interp-pool/src/capi/attach.rs), without ever becoming a thread's
 * PyGILState state outside a call.
 *
 * CPython binds a thread's PyGILState state (the thread-specific slot
 * `_PyRuntime.autoTSSkey` that PyGILState_Ensure reads) in two places: PyThreadState_New
 * binds the new state when the thread has none, and every attach (tstate_activate) binds
 * the attached state, clearing the previous one's `bound_gilstate` flag. Deleting a state
 * whose flag is set clears the slot of the *deleting* thread. So a host thread's state for
 * a bundle would stay its PyGILState state after the call: a later PyGILState_Ensure on
 * that thread (a ctypes callback, sqlite3, a PyO3 host's `with_gil`) would attach the
 * bundle's interpreter. These functions keep CPython's binding *during* a call (so
 * callbacks inside it attach the call's interpreter, as on an owner thread) and restore
 * the thread's previous binding and flags after it.
 *
 * The slot's key lives in the runtime state, which only the internal headers describe:
 * built with Py_BUILD_CORE against the headers of the libpython we link (build.rs). The
 * flag is `_status.bound_gilstate` of the public `struct _ts` (cpython/pystate.h). Checked
 * against the 3.12 and 3.13 sources (Python/pystate.c: tstate_activate,
 * bind_gilstate_tstate, tstate_delete_common, _PyThreadState_NewBound).
 */
#define Py_BUILD_CORE 1
#include "Python.h"
#include "internal/pycore_runtime.h"

static void set_binding(PyThreadState *ts) {
    /* Cannot fail once the key exists (it does once Python is initialised). */
    (void)PyThread_tss_set(&_PyRuntime.autoTSSkey, ts);
}

/* A new thread state of this thread's own in `interp`, unattached, which is not this
 * thread's PyGILState state (NULL if CPython could not make one). No GIL needed. */
PyThreadState *interp_pool_host_state_new(PyInterpreterState *interp) {
    PyThreadState *prev = PyGILState_GetThisThreadState();
    PyThreadState *ts = PyThreadState_New(interp);
    if (ts != NULL && prev == NULL) {
        /* PyThreadState_New bound it, the thread having had none: unbind. */
        ts->_status.bound_gilstate = 0;
        set_binding(NULL);
    }
    return ts;
}

/* Attaches `ts` (this thread's, unattached; none attached here): CPython binds it as the
 * thread's PyGILState state for the call. Returns the previous binding, for detach. */
PyThreadState *interp_pool_host_attach(PyThreadState *ts) {
    PyThreadState *prev = PyGILState_GetThisThreadState();
    PyEval_RestoreThread(ts);
    return prev;
}

/* Detaches `ts` (attached here by interp_pool_host_attach, which returned `prev`) and
 * gives the thread its previous PyGILState binding back. */
void interp_pool_host_detach(PyThreadState *ts, PyThreadState *prev) {
    PyEval_SaveThread();
    if (prev == ts) {
        return;
    }
    ts->_status.bound_gilstate = 0;
    if (prev != NULL) {
        prev->_status.bound_gilstate = 1;
    }
    set_binding(prev);
}

/* Clears and deletes `ts`, a host-thread state that is not attached anywhere, from a
 * thread attached to `ts`'s interpreter through another thread state. The flag is clear
 * (detach cleared it), so deleting does not touch this thread's own binding. */
void interp_pool_host_state_delete(PyThreadState *ts) {
    ts->_status.bound_gilstate = 0;
    PyThreadState_Clear(ts);
    PyThreadState_Delete(ts);
}

/* Bounds how deep C code may recurse on `ts` from now on (RecursionError past it). */
void interp_pool_set_c_recursion(PyThreadState *ts, int remaining) {
    ts->c_recursion_remaining = remaining;
}

/* CPython's own bound for a fresh thread state. */
int interp_pool_c_recursion_limit(void) {
#ifdef Py_C_RECURSION_LIMIT
    return Py_C_RECURSION_LIMIT; /* 3.13 */
#else
    return C_RECURSION_LIMIT; /* 3.12 */
#endif
}
