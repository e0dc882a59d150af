//! Rust functions callable from Python, without raw C in the caller.
//!
//! [`Attached::native_function`] turns a Rust closure into a builtin function object of
//! the attached interpreter (`METH_FASTCALL | METH_KEYWORDS`). The closure gets a token
//! and the call's arguments as borrowed [`PyObj`]s ([`NativeArgs`], keyword names
//! included) and returns a [`NativeResult`]; it can hand the very same call to another
//! callable ([`NativeArgs::forward`]), which is how a fast path falls back to the function
//! it replaces with that function's exact results and exceptions. The one trampoline here
//! does the unsafe part once: finding the closure, the token, `catch_unwind`, and mapping
//! errors to Python exceptions.
//!
//! The closure lives in a capsule bound as the function's `self`, so it is freed with the
//! function object, inside the interpreter.

use std::ffi::{c_void, CStr, CString};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::capi::attach::Attached;
use crate::capi::ffi::{sys, ExcType};
use crate::capi::object::PyObj;
use crate::error::Error;
use crate::InterpreterId;

/// What a native function's body returns: its result, or the exception to raise.
pub type NativeResult<'c> = std::result::Result<PyObj<'c>, NativeError>;

/// The exception a native function raises.
///
/// Built from an [`Error`] with `?` (a Python exception taken on the way is raised again
/// as its builtin type with its message when it is a builtin, else as `RuntimeError`), or
/// with the constructors below. A failed [`NativeArgs::forward`] keeps the callee's own
/// exception object, unchanged.
#[derive(Debug)]
pub struct NativeError(Repr);

#[derive(Debug)]
enum Repr {
    /// An exception is already set on this thread (CPython's NULL convention).
    Pending,
    Builtin(ExcType, String),
    Pool(Error),
}

impl NativeError {
    /// `TypeError(msg)`.
    pub fn type_error(msg: impl Into<String>) -> Self {
        Self(Repr::Builtin(ExcType::Type, msg.into()))
    }

    /// `ValueError(msg)`.
    pub fn value_error(msg: impl Into<String>) -> Self {
        Self(Repr::Builtin(ExcType::Value, msg.into()))
    }

    /// `RuntimeError(msg)`.
    pub fn runtime_error(msg: impl Into<String>) -> Self {
        Self(Repr::Builtin(ExcType::Runtime, msg.into()))
    }

    /// `OverflowError(msg)`.
    pub fn overflow_error(msg: impl Into<String>) -> Self {
        Self(Repr::Builtin(ExcType::Overflow, msg.into()))
    }

    /// The exception CPython already set on this thread (a C call returned its error
    /// value): raised as it is.
    pub(crate) fn pending() -> Self {
        Self(Repr::Pending)
    }

    /// Sets this as the pending exception of the attached thread state.
    fn restore(self, py: &Attached<'_>) {
        let (class, msg) = match self.0 {
            Repr::Pending => return,
            Repr::Builtin(kind, msg) => (Some(kind.ptr()), msg),
            Repr::Pool(Error::Python(exc)) => match builtin_class(py, &exc.type_name) {
                Some(class) => (Some(class), exc.message),
                None => (None, exc.to_string()),
            },
            Repr::Pool(Error::Unsupported { exception, .. }) => {
                (Some(ExcType::Import.ptr()), exception.message)
            }
            Repr::Pool(other) => (None, other.to_string()),
        };
        let class = class.unwrap_or_else(|| ExcType::Runtime.ptr());
        let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: R10: attached (`py`); sets the error indicator from a valid C string.
        unsafe { sys::PyErr_SetString(class, msg.as_ptr()) };
    }
}

impl From<Error> for NativeError {
    fn from(e: Error) -> Self {
        Self(Repr::Pool(e))
    }
}

/// `builtins.<name>` if that is an exception class (the class of a re-raised error).
fn builtin_class(py: &Attached<'_>, name: &str) -> Option<*mut sys::PyObject> {
    if name.contains('.') {
        return None;
    }
    let class = py.import("builtins").ok()?.getattr(py, name).ok()?;
    // SAFETY: R10/R11: attached; `class` is a valid object we hold for the check.
    let is_exception_class = unsafe { sys::PyExceptionClass_Check(class.as_ptr()) } != 0;
    // `builtins` keeps the class alive after our reference goes.
    is_exception_class.then(|| class.as_ptr())
}

/// The arguments of one call to a native function, borrowed from CPython for the call.
#[derive(Debug)]
pub struct NativeArgs<'c> {
    /// Positional arguments, then the keyword arguments' values (vectorcall layout).
    all: &'c [PyObj<'c>],
    positional: usize,
    /// A tuple of the keyword arguments' names, or null.
    kwnames: *mut sys::PyObject,
}

impl<'c> NativeArgs<'c> {
    /// The positional arguments.
    pub fn positional(&self) -> &'c [PyObj<'c>] {
        &self.all[..self.positional]
    }

    /// Whether any argument was passed by keyword.
    pub fn has_keywords(&self) -> bool {
        self.all.len() > self.positional
    }

    /// The value passed for keyword `name`, if any.
    pub fn keyword(
        &self,
        py: &'c Attached<'_>,
        name: &str,
    ) -> crate::Result<Option<&'c PyObj<'c>>> {
        let name = py.cstring(name)?;
        for (i, value) in self.all[self.positional..].iter().enumerate() {
            // SAFETY: R10/R11: attached; `kwnames` is the call's tuple of str names, one
            // per keyword value, borrowed for the call; GET_ITEM returns a borrowed item.
            let key = unsafe { sys::PyTuple_GET_ITEM(self.kwnames, i as sys::Py_ssize_t) };
            // SAFETY: R10: attached; `key` is a str, `name` a NUL-terminated C string;
            // the comparison cannot fail.
            if unsafe { sys::PyUnicode_CompareWithASCIIString(key, name.as_ptr()) } == 0 {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Calls `to` with exactly these arguments (positional and keyword) and returns what
    /// it returns; its exception, if it raises, is passed on untouched.
    pub fn forward(&self, py: &'c Attached<'_>, to: &PyObj<'_>) -> NativeResult<'c> {
        let args = self.all.as_ptr().cast::<*mut sys::PyObject>();
        // SAFETY: R10/R11: attached; `args` holds `positional` positional arguments then
        // one value per name in `kwnames` (null or a tuple), all borrowed for this call,
        // which is how vectorcall wants them; it returns a new reference or null with an
        // exception set.
        let out =
            unsafe { sys::PyObject_Vectorcall(to.as_ptr(), args, self.positional, self.kwnames) };
        // SAFETY: R10/R11: `out` is null or a new reference of this interpreter.
        unsafe { PyObj::from_owned_ptr(py, out) }.ok_or(NativeError(Repr::Pending))
    }
}

type Body = dyn for<'c> Fn(&'c Attached<'c>, &NativeArgs<'c>) -> NativeResult<'c> + Send;

/// What the capsule bound as `self` owns: the method definition CPython points to for the
/// function's life, the closure, and the interpreter it was made in.
struct NativeState {
    def: sys::PyMethodDef,
    interp: InterpreterId,
    body: Box<Body>,
}

const CAPSULE: &CStr = c"interp_pool.native_function";

impl<'a> Attached<'a> {
    /// A builtin function object in this interpreter that runs `body` when called.
    ///
    /// `body` runs on whatever thread calls the function (the owner, or a thread the
    /// plugin started), always holding this interpreter's GIL, one call at a time per
    /// thread; hence `Send`. A panic in it becomes `SystemError`; it never unwinds into
    /// CPython. It is dropped when the function object is, inside this interpreter.
    pub fn native_function<'py, F>(
        &'py self,
        name: &'static CStr,
        doc: &'static CStr,
        body: F,
    ) -> crate::Result<PyObj<'py>>
    where
        F: for<'c> Fn(&'c Attached<'c>, &NativeArgs<'c>) -> NativeResult<'c> + Send + 'static,
    {
        let state = Box::new(NativeState {
            def: sys::PyMethodDef {
                ml_name: name.as_ptr(),
                ml_meth: sys::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: trampoline,
                },
                ml_flags: sys::METH_FASTCALL | sys::METH_KEYWORDS,
                ml_doc: doc.as_ptr(),
            },
            interp: self.id(),
            body: Box::new(body),
        });
        let raw = Box::into_raw(state);
        // SAFETY: R10: attached. The capsule takes ownership of `raw` (freed by
        // `drop_state`); on failure it returns null with MemoryError set and we free it.
        let capsule =
            unsafe { sys::PyCapsule_New(raw.cast::<c_void>(), CAPSULE.as_ptr(), Some(drop_state)) };
        // SAFETY: R10/R11: `capsule` is null or a new reference.
        let Some(capsule) = (unsafe { PyObj::from_owned_ptr(self, capsule) }) else {
            // SAFETY: `raw` came from Box::into_raw above and no capsule owns it.
            drop(unsafe { Box::from_raw(raw) });
            return Err(self.take_error());
        };
        // SAFETY: R10/R11: attached; `def` lives in the capsule's state, which the new
        // function keeps alive through its `self` reference for as long as it exists.
        let def = unsafe { std::ptr::addr_of_mut!((*raw).def) };
        // SAFETY: R10: attached; returns a new reference or null with an exception.
        let f = unsafe { sys::PyCFunction_NewEx(def, capsule.as_ptr(), std::ptr::null_mut()) };
        // SAFETY: R10/R11: `f` is null or a new reference.
        unsafe { PyObj::from_owned_or_err(self, f) }
    }
}

/// The capsule's destructor: frees the state when the function object goes.
unsafe extern "C" fn drop_state(capsule: *mut sys::PyObject) {
    // SAFETY: R10: CPython calls destructors with the interpreter attached; `capsule` is
    // one of ours (named CAPSULE), so its pointer is a `Box<NativeState>` from
    // `native_function`, freed only here.
    let raw = unsafe { sys::PyCapsule_GetPointer(capsule, CAPSULE.as_ptr()) };
    if raw.is_null() {
        // SAFETY: R10: attached; a wrong capsule (impossible) leaves an error: drop it.
        unsafe { sys::PyErr_Clear() };
        return;
    }
    // SAFETY: see above: the Box this capsule owns, reclaimed once.
    let state = unsafe { Box::from_raw(raw.cast::<NativeState>()) };
    // A panicking drop must not unwind into CPython.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(state)));
}

/// The one C entry point of every native function.
unsafe extern "C" fn trampoline(
    slf: *mut sys::PyObject,
    args: *const *mut sys::PyObject,
    nargs: sys::Py_ssize_t,
    kwnames: *mut sys::PyObject,
) -> *mut sys::PyObject {
    // SAFETY: R10: CPython calls us attached; `slf` is the capsule bound at creation.
    let raw = unsafe { sys::PyCapsule_GetPointer(slf, CAPSULE.as_ptr()) };
    let Some(state) = NonNull::new(raw.cast::<NativeState>()) else {
        return std::ptr::null_mut(); // GetPointer set the exception
    };
    // SAFETY: the state lives as long as the capsule, which the function object (being
    // called) holds; it is only read here.
    let state = unsafe { state.as_ref() };
    let nkw = if kwnames.is_null() {
        0
    } else {
        // SAFETY: R10: attached; `kwnames` is a tuple (vectorcall's contract).
        unsafe { sys::PyTuple_GET_SIZE(kwnames) }
    };
    let total = (nargs + nkw) as usize;
    let all: &[PyObj<'_>] = if total == 0 {
        &[]
    } else {
        // SAFETY: R11: `args[..nargs + nkw]` are borrowed references valid for the call,
        // and `PyObj` is a transparent non-null object pointer; a shared slice of them is
        // never dropped, so the borrowed references are not released.
        unsafe { std::slice::from_raw_parts(args.cast::<PyObj<'_>>(), total) }
    };
    // SAFETY: R10: CPython holds the interpreter's GIL on this thread for the call; the
    // function object belongs to `state.interp`, where it was made.
    unsafe {
        Attached::scope(state.interp, |py| {
            let args = NativeArgs {
                all,
                positional: nargs as usize,
                kwnames,
            };
            match panic::catch_unwind(AssertUnwindSafe(|| (state.body)(py, &args))) {
                Ok(Ok(obj)) => obj.into_ptr(),
                Ok(Err(e)) => {
                    e.restore(py);
                    std::ptr::null_mut()
                }
                Err(_) => {
                    NativeError(Repr::Builtin(
                        ExcType::System,
                        "Rust panic in a native function".into(),
                    ))
                    .restore(py);
                    std::ptr::null_mut()
                }
            }
        })
    }
}
