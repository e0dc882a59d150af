//! Owned Python object references that cannot leave their interpreter.
//!
//! A [`PyObj<'py>`] borrows the job's [`Attached`] token: it is `!Send`, dies before the
//! job returns, and is decref'd on the thread that holds the interpreter's GIL (R5, R10).
//! It owns exactly one strong reference (R11); a `&PyObj` may also be a reference CPython
//! lends for one call (a native function's arguments, see `native.rs`), which is why the
//! type is a transparent object pointer.

use std::ffi::{c_char, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::capi::attach::Attached;
use crate::capi::ffi::{sys, ExcType};
use crate::error::{Error, PyException, Result};

/// A strong reference to a Python object in the attached interpreter.
#[derive(Debug)]
#[repr(transparent)]
pub struct PyObj<'py> {
    ptr: NonNull<sys::PyObject>,
    _att: PhantomData<&'py Attached<'py>>,
}

impl Drop for PyObj<'_> {
    fn drop(&mut self) {
        // SAFETY: R10: a PyObj borrows an Attached token, so its interpreter is attached on
        // this thread. R11: we own one strong reference.
        unsafe { sys::Py_DECREF(self.ptr.as_ptr()) }
    }
}

impl<'py> PyObj<'py> {
    /// Takes ownership of a new reference; `None` if `ptr` is null (an exception is set).
    ///
    /// # Safety
    /// R10: `_att`'s interpreter is attached. R11: `ptr` is null or a new (owned)
    /// reference to an object of that interpreter.
    pub(crate) unsafe fn from_owned_ptr(
        _att: &'py Attached<'_>,
        ptr: *mut sys::PyObject,
    ) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Self {
            ptr,
            _att: PhantomData,
        })
    }

    /// Like [`from_owned_ptr`](Self::from_owned_ptr), but a null turns into the pending
    /// exception as an [`Error`].
    ///
    /// # Safety
    /// As for `from_owned_ptr`.
    pub(crate) unsafe fn from_owned_or_err(
        att: &'py Attached<'_>,
        ptr: *mut sys::PyObject,
    ) -> Result<Self> {
        // SAFETY: R10/R11: forwarded from the caller's contract.
        unsafe { Self::from_owned_ptr(att, ptr) }.ok_or_else(|| att.take_error())
    }

    /// Takes a new strong reference to a borrowed pointer.
    ///
    /// # Safety
    /// R10: `att`'s interpreter is attached. R11: `ptr` is a valid borrowed reference.
    pub(crate) unsafe fn from_borrowed_ptr(
        att: &'py Attached<'_>,
        ptr: NonNull<sys::PyObject>,
    ) -> Self {
        // SAFETY: R10/R11: attached; `ptr` is valid (caller); we add the reference we own.
        unsafe { sys::Py_INCREF(ptr.as_ptr()) };
        let _ = att;
        Self {
            ptr,
            _att: PhantomData,
        }
    }

    /// Gives up ownership: the caller now owns the strong reference.
    pub(crate) fn into_ptr(self) -> *mut sys::PyObject {
        self.into_non_null().as_ptr()
    }

    /// Like [`into_ptr`](Self::into_ptr), typed non-null.
    pub(crate) fn into_non_null(self) -> NonNull<sys::PyObject> {
        let p = self.ptr;
        std::mem::forget(self);
        p
    }

    /// The raw pointer, still owned by `self`.
    pub(crate) fn as_ptr(&self) -> *mut sys::PyObject {
        self.ptr.as_ptr()
    }

    /// A second strong reference to the same object.
    pub fn clone_ref(&self) -> Self {
        // SAFETY: R10: attached (see Drop). R11: self holds a strong reference.
        unsafe { sys::Py_INCREF(self.as_ptr()) };
        Self {
            ptr: self.ptr,
            _att: PhantomData,
        }
    }

    /// `getattr(self, name)`.
    pub fn getattr(&self, att: &'py Attached<'_>, name: &str) -> Result<PyObj<'py>> {
        let name = att.cstring(name)?;
        // SAFETY: R10: attached (`att`). R11: self is valid; returns a new reference or
        // null with an exception set.
        let r = unsafe { sys::PyObject_GetAttrString(self.as_ptr(), name.as_ptr()) };
        // SAFETY: R10/R11: `r` is null or a new reference.
        unsafe { Self::from_owned_or_err(att, r) }
    }

    /// `self(*args)`.
    pub fn call(&self, att: &'py Attached<'_>, args: &[&PyObj<'_>]) -> Result<PyObj<'py>> {
        let r = self.vectorcall(att, args);
        // SAFETY: R10/R11: `r` is null or a new reference.
        unsafe { Self::from_owned_or_err(att, r) }
    }

    /// `PyObject_Vectorcall(self, args)`: a new reference, or null with an exception set.
    /// Up to 8 arguments (every call the loader makes per call) go in a stack array.
    pub(crate) fn vectorcall(
        &self,
        _att: &'py Attached<'_>,
        args: &[&PyObj<'_>],
    ) -> *mut sys::PyObject {
        let mut small = [std::ptr::null_mut::<sys::PyObject>(); 8];
        let mut large = Vec::new();
        let argv: &mut [*mut sys::PyObject] = if args.len() <= small.len() {
            for (slot, a) in small.iter_mut().zip(args) {
                *slot = a.as_ptr();
            }
            &mut small[..args.len()]
        } else {
            large.extend(args.iter().map(|a| a.as_ptr()));
            &mut large
        };
        // SAFETY: R10: attached (`_att`). R11: self and every arg are valid for the call;
        // vectorcall borrows them and returns a new reference or null with an exception.
        unsafe {
            sys::PyObject_Vectorcall(
                self.as_ptr(),
                argv.as_mut_ptr(),
                argv.len(),
                std::ptr::null_mut(),
            )
        }
    }

    /// `self.name(*args)`.
    pub fn call_method(
        &self,
        att: &'py Attached<'_>,
        name: &str,
        args: &[&PyObj<'_>],
    ) -> Result<PyObj<'py>> {
        self.getattr(att, name)?.call(att, args)
    }

    /// The value of a Python `int` that fits in `i64`.
    pub fn extract_i64(&self, att: &'py Attached<'_>) -> Result<i64> {
        // SAFETY: R10/R11: attached; self valid. -1 with an exception set is the error
        // signal.
        let v = unsafe { sys::PyLong_AsLongLong(self.as_ptr()) };
        if v == -1 && att.error_pending() {
            return Err(att.take_error());
        }
        Ok(v)
    }

    /// The value of a Python `int` that fits in `u64`.
    pub fn extract_u64(&self, att: &'py Attached<'_>) -> Result<u64> {
        // SAFETY: R10/R11: as in extract_i64; (u64)-1 with an exception set is the error
        // signal.
        let v = unsafe { sys::PyLong_AsUnsignedLongLong(self.as_ptr()) };
        if v == u64::MAX && att.error_pending() {
            return Err(att.take_error());
        }
        Ok(v)
    }

    /// The text of a Python `str` (a `TypeError` for anything else).
    pub fn extract_string(&self, att: &'py Attached<'_>) -> Result<String> {
        let mut len: sys::Py_ssize_t = 0;
        // SAFETY: R10/R11: attached; self valid. Returns the str's UTF-8 buffer (owned by
        // the str) or null with an exception set (not a str, or lone surrogates).
        let p = unsafe { sys::PyUnicode_AsUTF8AndSize(self.as_ptr(), &mut len) };
        if p.is_null() {
            return Err(att.take_error());
        }
        // SAFETY: R11: `p` points to `len` bytes owned by `self`, alive while we copy.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) };
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// The text of a Python `str`, with what UTF-8 cannot carry (lone surrogates)
    /// backslash-escaped instead of failing; a `TypeError` for anything but a `str`.
    pub fn extract_string_escaped(&self, att: &'py Attached<'_>) -> Result<String> {
        if !self.is_str() {
            return self.extract_string(att); // raises the TypeError
        }
        if let Ok(text) = self.extract_string(att) {
            return Ok(text);
        }
        // SAFETY: R10/R11: attached; self is a str; returns new bytes or null with an
        // exception set.
        let b = unsafe {
            sys::PyUnicode_AsEncodedString(
                self.as_ptr(),
                c"utf-8".as_ptr(),
                c"backslashreplace".as_ptr(),
            )
        };
        // SAFETY: R10/R11: `b` is null or a new reference.
        let b = unsafe { Self::from_owned_or_err(att, b) }?;
        b.extract_bytes(att)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The contents of a Python `bytes` (a `TypeError` for anything else).
    pub fn extract_bytes(&self, att: &'py Attached<'_>) -> Result<Vec<u8>> {
        let (mut buf, mut n) = (std::ptr::null_mut(), 0);
        // SAFETY: R10/R11: attached; self valid; on 0 `buf` points to `n` bytes owned by
        // the bytes object, on -1 an exception is set.
        if unsafe { sys::PyBytes_AsStringAndSize(self.as_ptr(), &mut buf, &mut n) } != 0 {
            return Err(att.take_error());
        }
        // SAFETY: R11: `buf[..n]` is owned by `self`, alive while we copy.
        Ok(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n as usize) }.to_vec())
    }

    /// `str(self)` as Rust text.
    pub fn str(&self, att: &'py Attached<'_>) -> Result<String> {
        // SAFETY: R10/R11: attached; self valid; returns a new reference or null.
        let s = unsafe { sys::PyObject_Str(self.as_ptr()) };
        // SAFETY: R10/R11: `s` is null or a new reference.
        unsafe { Self::from_owned_or_err(att, s) }?.extract_string(att)
    }

    /// `repr(self)` as Rust text.
    pub fn repr(&self, att: &'py Attached<'_>) -> Result<String> {
        // SAFETY: R10/R11: attached; self valid; returns a new reference or null.
        let s = unsafe { sys::PyObject_Repr(self.as_ptr()) };
        // SAFETY: R10/R11: `s` is null or a new reference.
        unsafe { Self::from_owned_or_err(att, s) }?.extract_string(att)
    }

    /// `self[key]` for a dict and a str key; `None` if the key is absent.
    pub fn get_item(&self, att: &'py Attached<'_>, key: &str) -> Result<Option<PyObj<'py>>> {
        let mut out: *mut sys::PyObject = std::ptr::null_mut();
        #[cfg(Py_3_13)]
        let found = {
            let key = att.cstring(key)?;
            // SAFETY: R10/R11: attached; self valid; on 1 `out` is a new reference, on 0
            // it is null, on -1 an exception is set (e.g. self is not a dict).
            unsafe { sys::PyDict_GetItemStringRef(self.as_ptr(), key.as_ptr(), &mut out) }
        };
        #[cfg(not(Py_3_13))]
        let found = {
            // 3.12 has no PyDict_GetItemStringRef; pyo3-ffi's PyDict_GetItemRef shim wraps
            // PyDict_GetItemWithError + Py_NewRef with the same 1 / 0 / -1 contract.
            let key = att.str(key)?;
            // SAFETY: R10/R11: attached; self and key valid; on 1 `out` is a new
            // reference, on 0 it is null, on -1 an exception is set (e.g. self is not a dict).
            unsafe { sys::compat::PyDict_GetItemRef(self.as_ptr(), key.as_ptr(), &mut out) }
        };
        match found {
            // SAFETY: R11: `out` is a new reference (see above).
            1 => Ok(unsafe { PyObj::from_owned_ptr(att, out) }),
            0 => Ok(None),
            _ => Err(att.take_error()),
        }
    }

    /// `self[key]` with a str key (any mapping); `None` if the lookup raised `KeyError`.
    pub fn get(&self, att: &'py Attached<'_>, key: &str) -> Result<Option<PyObj<'py>>> {
        let k = att.str(key)?;
        // SAFETY: R10/R11: attached; self and k valid; returns a new reference or null
        // with an exception set.
        let r = unsafe { sys::PyObject_GetItem(self.as_ptr(), k.as_ptr()) };
        if r.is_null() {
            // SAFETY: R10: attached, an exception is set; KeyError is a static type.
            if unsafe { sys::PyErr_ExceptionMatches(ExcType::Key.ptr()) } != 0 {
                att.clear_error();
                return Ok(None);
            }
            return Err(att.take_error());
        }
        // SAFETY: R11: `r` is a new reference.
        Ok(unsafe { PyObj::from_owned_ptr(att, r) })
    }

    /// `len(self)`.
    pub fn len(&self, att: &'py Attached<'_>) -> Result<usize> {
        // SAFETY: R10/R11: attached; self valid; -1 with an exception on error.
        let n = unsafe { sys::PyObject_Length(self.as_ptr()) };
        if n < 0 {
            return Err(att.take_error());
        }
        Ok(n as usize)
    }

    /// `self[i]` for a sequence.
    pub fn get_index(&self, att: &'py Attached<'_>, i: usize) -> Result<PyObj<'py>> {
        // SAFETY: R10/R11: attached; self valid; returns a new reference or null with an
        // exception set.
        let r = unsafe { sys::PySequence_GetItem(self.as_ptr(), i as sys::Py_ssize_t) };
        // SAFETY: R10/R11: `r` is null or a new reference.
        unsafe { Self::from_owned_or_err(att, r) }
    }

    /// `callable(self)`.
    pub fn is_callable(&self) -> bool {
        // SAFETY: R10: attached (see Drop). R11: self valid. PyCallable_Check never fails.
        unsafe { sys::PyCallable_Check(self.as_ptr()) != 0 }
    }

    /// `isinstance(self, str)`.
    pub fn is_str(&self) -> bool {
        // SAFETY: R10/R11: attached, self valid. Reads the type's flags only.
        unsafe { sys::PyUnicode_Check(self.as_ptr()) != 0 }
    }

    /// `isinstance(self, tuple)`.
    pub fn is_tuple(&self) -> bool {
        // SAFETY: R10/R11: attached, self valid. Reads the type's flags only.
        unsafe { sys::PyTuple_Check(self.as_ptr()) != 0 }
    }

    /// `isinstance(self, list)`.
    pub fn is_list(&self) -> bool {
        // SAFETY: R10/R11: attached, self valid. Reads the type's flags only.
        unsafe { sys::PyList_Check(self.as_ptr()) != 0 }
    }

    /// `self is None`.
    pub fn is_none(&self) -> bool {
        // SAFETY: R10: Py_None returns the immortal None singleton; comparing pointers only.
        self.as_ptr() == unsafe { sys::Py_None() }
    }
}

thread_local! {
    /// Set while `take_error` describes an exception on this thread.
    static DESCRIBING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl<'a> Attached<'a> {
    pub(crate) fn cstring(&self, s: &str) -> Result<CString> {
        CString::new(s)
            .map_err(|_| self.raise_and_take(c"embedded NUL byte in string passed to Python"))
    }

    /// Raises `ValueError(msg)` and returns it as an [`Error`], so bad input from Rust
    /// reads like bad input from Python.
    fn raise_and_take(&self, msg: &std::ffi::CStr) -> Error {
        // SAFETY: R10: attached (self); ValueError is a static immortal type.
        unsafe { sys::PyErr_SetString(ExcType::Value.ptr(), msg.as_ptr()) };
        self.take_error()
    }

    /// `import name`.
    pub fn import<'py>(&'py self, name: &str) -> Result<PyObj<'py>> {
        let name = self.cstring(name)?;
        // SAFETY: R10: attached. Returns a new reference or null with an exception.
        let m = unsafe { sys::PyImport_ImportModule(name.as_ptr()) };
        // SAFETY: R10/R11: `m` is null or a new reference.
        unsafe { PyObj::from_owned_or_err(self, m) }
    }

    /// The `__main__` module's namespace of this interpreter.
    pub fn main_dict<'py>(&'py self) -> Result<PyObj<'py>> {
        // SAFETY: R10: attached. PyImport_AddModule returns a borrowed reference (kept
        // by sys.modules) or null with an exception.
        let m = unsafe { sys::PyImport_AddModule(c"__main__".as_ptr()) };
        if m.is_null() {
            return Err(self.take_error());
        }
        // SAFETY: R10/R11: attached; `m` is a live module; returns a borrowed reference.
        let d = unsafe { sys::PyModule_GetDict(m) };
        let d = NonNull::new(d).ok_or_else(|| self.take_error())?;
        // SAFETY: R10/R11: `d` is a valid borrowed reference; we take our own.
        Ok(unsafe { PyObj::from_borrowed_ptr(self, d) })
    }

    fn run_string<'py>(
        &'py self,
        code: &str,
        start: std::ffi::c_int,
        globals: &PyObj<'_>,
    ) -> Result<PyObj<'py>> {
        let code = self.cstring(code)?;
        // SAFETY: R10/R11: attached; globals is a dict we hold, used as locals too.
        // Returns a new reference or null with an exception set.
        let r = unsafe {
            sys::PyRun_StringFlags(
                code.as_ptr(),
                start,
                globals.as_ptr(),
                globals.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        // SAFETY: R10/R11: `r` is null or a new reference.
        unsafe { PyObj::from_owned_or_err(self, r) }
    }

    /// Executes statements in `__main__`.
    pub fn run(&self, code: &str) -> Result<()> {
        let globals = self.main_dict()?;
        self.run_string(code, sys::Py_file_input, &globals)
            .map(drop)
    }

    /// Executes statements in the given globals dict.
    pub fn run_in(&self, code: &str, globals: &PyObj<'_>) -> Result<()> {
        self.run_string(code, sys::Py_file_input, globals).map(drop)
    }

    /// Evaluates an expression in `__main__`.
    pub fn eval<'py>(&'py self, expr: &str) -> Result<PyObj<'py>> {
        let globals = self.main_dict()?;
        self.run_string(expr, sys::Py_eval_input, &globals)
    }

    /// A Python `int`.
    pub fn int<'py>(&'py self, v: i64) -> Result<PyObj<'py>> {
        // SAFETY: R10: attached. Returns a new reference or null with MemoryError.
        let r = unsafe { sys::PyLong_FromLongLong(v) };
        // SAFETY: R10/R11: `r` is null or a new reference.
        unsafe { PyObj::from_owned_or_err(self, r) }
    }

    /// A Python `int` from an unsigned value.
    pub fn uint<'py>(&'py self, v: u64) -> Result<PyObj<'py>> {
        // SAFETY: R10: attached. Returns a new reference or null with MemoryError.
        let r = unsafe { sys::PyLong_FromUnsignedLongLong(v) };
        // SAFETY: R10/R11: `r` is null or a new reference.
        unsafe { PyObj::from_owned_or_err(self, r) }
    }

    /// `True` or `False`.
    pub fn bool<'py>(&'py self, v: bool) -> PyObj<'py> {
        // SAFETY: R10: attached; returns a new reference to an immortal bool singleton.
        let r = unsafe { sys::PyBool_FromLong(v.into()) };
        // SAFETY: R10/R11: `r` is a new reference (never null in practice).
        unsafe { PyObj::from_owned_ptr(self, r) }.unwrap_or_else(|| self.none())
    }

    /// A Python `str`.
    pub fn str<'py>(&'py self, s: &str) -> Result<PyObj<'py>> {
        // SAFETY: R10: attached; the bytes are valid for len; returns a new reference or
        // null with an exception (e.g. MemoryError).
        let p = unsafe {
            sys::PyUnicode_FromStringAndSize(
                s.as_ptr().cast::<c_char>(),
                s.len() as sys::Py_ssize_t,
            )
        };
        // SAFETY: R10/R11: `p` is null or a new reference.
        unsafe { PyObj::from_owned_or_err(self, p) }
    }

    /// `None`.
    pub fn none<'py>(&'py self) -> PyObj<'py> {
        // SAFETY: R10: attached; None is an immortal singleton.
        let none = unsafe { sys::Py_None() };
        // SAFETY: Py_None never returns null.
        let none = unsafe { NonNull::new_unchecked(none) };
        // SAFETY: R10/R11: attached; we take our own (no-op) reference.
        unsafe { PyObj::from_borrowed_ptr(self, none) }
    }

    /// Takes the pending Python exception as an [`Error`] (clearing it).
    ///
    /// `ImportError`s saying an extension "does not support loading in subinterpreters"
    /// (also as the cause/context of another exception) become [`Error::Unsupported`].
    /// With no exception pending this is a bug in the caller: [`Error::Internal`].
    pub fn take_error(&self) -> Error {
        // SAFETY: R10: attached. Returns the raised exception (new reference) or null.
        let exc = unsafe { sys::PyErr_GetRaisedException() };
        // SAFETY: R10/R11: `exc` is a new reference or null.
        let Some(exc) = (unsafe { PyObj::from_owned_ptr(self, exc) }) else {
            return Error::Internal("take_error called with no Python exception set".into());
        };
        // Describing calls Python, which can fail too (MemoryError at a memory limit):
        // such a failure is not described in turn, or each one would recurse.
        if DESCRIBING.with(|d| d.get()) {
            drop(exc);
            return Error::Python(PyException {
                type_name: "<unknown>".into(),
                message: "raised while describing another exception".into(),
                traceback: "<an exception raised while describing another exception>\n".into(),
                interp: self.id(),
            });
        }
        let exception = self.describe(&exc);
        match self.refused_module(&exc) {
            Some(module) => Error::Unsupported { module, exception },
            None => Error::Python(exception),
        }
    }

    /// Builds the owned description of `exc`; anything that raises on the way is
    /// swallowed so formatting never masks the original error.
    pub(crate) fn describe(&self, exc: &PyObj<'_>) -> PyException {
        let outer = DESCRIBING.with(|d| d.replace(true));
        let described = self.describe_unguarded(exc);
        DESCRIBING.with(|d| d.set(outer));
        described
    }

    fn describe_unguarded(&self, exc: &PyObj<'_>) -> PyException {
        let type_name = self.type_name(exc).unwrap_or_else(|| "<unknown>".into());
        let message = exc.str(self).unwrap_or_else(|_| "<unformattable>".into());
        let traceback = self.format_traceback(exc).unwrap_or_else(|_| {
            if message.is_empty() {
                format!("{type_name}\n")
            } else {
                format!("{type_name}: {message}\n")
            }
        });
        self.clear_error();
        PyException {
            type_name,
            message,
            traceback,
            interp: self.id(),
        }
    }

    fn type_name(&self, exc: &PyObj<'_>) -> Option<String> {
        let ty = exc.getattr(self, "__class__").ok()?;
        let qual = ty
            .getattr(self, "__qualname__")
            .ok()?
            .extract_string(self)
            .ok()?;
        let module = ty
            .getattr(self, "__module__")
            .ok()
            .and_then(|m| m.extract_string(self).ok());
        self.clear_error();
        Some(match module.as_deref() {
            None | Some("builtins") => qual,
            Some(m) => format!("{m}.{qual}"),
        })
    }

    fn format_traceback(&self, exc: &PyObj<'_>) -> Result<String> {
        let lines = self
            .import("traceback")?
            .call_method(self, "format_exception", &[exc])?;
        self.str("")?
            .call_method(self, "join", &[&lines])?
            .extract_string(self)
    }

    /// The module named by a "does not support loading in subinterpreters" ImportError
    /// in `exc` or its `__cause__`/`__context__` chain.
    pub(crate) fn refused_module(&self, exc: &PyObj<'_>) -> Option<String> {
        const MARK: &str = " does not support loading in subinterpreters";
        let mut cur = Some(exc.clone_ref());
        for _ in 0..16 {
            let e = cur.take()?;
            if e.is_none() {
                return None;
            }
            // SAFETY: R10/R11: attached; e is valid; ImportError is a static type.
            let is_import =
                unsafe { sys::PyErr_GivenExceptionMatches(e.as_ptr(), ExcType::Import.ptr()) } != 0;
            if is_import {
                if let Some((msg, at)) = e
                    .str(self)
                    .ok()
                    .and_then(|m| m.find(MARK).map(|at| (m, at)))
                {
                    // "module X does not support ...", possibly at the end of a
                    // wrapper's longer message (numpy's "Original error was: module X").
                    let name = msg[..at].split_whitespace().next_back().unwrap_or("");
                    let name = name.trim_matches(|c| c == '\'' || c == '"').to_owned();
                    self.clear_error();
                    return Some(name);
                }
            }
            cur = e
                .getattr(self, "__cause__")
                .ok()
                .filter(|c| !c.is_none())
                .or_else(|| e.getattr(self, "__context__").ok());
        }
        self.clear_error();
        None
    }

    pub(crate) fn clear_error(&self) {
        // SAFETY: R10: attached (self).
        unsafe { sys::PyErr_Clear() }
    }

    /// Whether an exception is set on this thread state.
    pub(crate) fn error_pending(&self) -> bool {
        // SAFETY: R10: attached (self); only reads the error indicator.
        !unsafe { sys::PyErr_Occurred() }.is_null()
    }
}
