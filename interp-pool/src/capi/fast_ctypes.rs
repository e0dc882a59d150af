//! Native fast paths for the `ctypes` functions generated FFI glue calls on every call.
//!
//! Code generated for ctypes (polyplugc's glue, for one) reads its arguments with
//! `ctypes.string_at(addr, size)` and writes its results with `ctypes.memmove(dst, src,
//! size)`. Each is a ctypes foreign-function call: the arguments go through ctypes' generic
//! conversion (`argtypes[i].from_param`, a `PyCArgObject` per argument, libffi), and
//! `memmove` releases and re-takes the GIL around a copy of a few bytes.
//! [`install_fast_ctypes`] replaces both, in the attached interpreter's `ctypes` module,
//! with builtins (`METH_FASTCALL`, [`Attached::native_function`]) that do the copy
//! directly for the exact argument shapes such glue passes, and hand every other call to
//! the function they replaced ([`NativeArgs::forward`]), so results, return types and
//! exceptions are ctypes' own.
//!
//! The fast shapes, and what ctypes does with them (`Lib/ctypes/__init__.py`,
//! `Modules/_ctypes`):
//!
//! * `string_at(ptr, size)`: two positional arguments, `ptr` an exact `int` in
//!   `1..=usize::MAX`, `size` an exact `int` in `0..=INT_MAX`. ctypes converts `ptr` as a
//!   `c_void_p`, `size` as a C `int`, raises the audit event `ctypes.string_at` with
//!   `(ptr, size)` and returns `PyBytes_FromStringAndSize(ptr, size)`; so do we.
//! * `memmove(dst, src, count)`: three positional arguments, `dst` an exact `int` in
//!   `1..=usize::MAX`, `src` such an `int` or an exact `bytes` at least `count` long,
//!   `count` an exact `int` in `0..=isize::MAX`. ctypes copies with C `memmove` and
//!   returns the result as a `c_void_p` restype: the int `dst`. It raises no audit event
//!   (checked with `sys.addaudithook` on 3.12 and 3.13: a `CFUNCTYPE` made from an
//!   address does not raise `ctypes.call_function`).
//!
//! * `cast(obj, typ)`: two positional arguments, `obj` an exact `int` in `0..=usize::MAX`,
//!   `typ` a ctypes pointer type (its metaclass exactly `PyCPointerType`). ctypes converts
//!   `obj` as a `c_void_p`, makes `typ()` and stores the address in it; with an int source
//!   there is nothing to keep alive (`_objects` stays `None`) and no audit event. We do the
//!   same, storing the address through the instance's buffer (the public buffer protocol,
//!   which for a ctypes instance is its own memory).
//!
//! Everything else is forwarded, including `bool` (an `int` subclass ctypes accepts as 0/1),
//! keyword arguments, a null pointer (`string_at(0, n)` returns `n` uninitialised bytes in
//! ctypes, `string_at(0)` crashes), negative or over-wide sizes (ctypes truncates them to a
//! C `int` or wraps them to a `size_t`), a `bytes` source shorter than `count` (ctypes
//! reads past its end), and every other type. One difference is not observable from
//! Python: ctypes' `memmove` releases the GIL for the copy; ours holds it (the copies are
//! a few bytes; a many-MiB copy would block other threads of the interpreter meanwhile).
//!
//! Reading and writing raw addresses is what these functions are for: as with ctypes, the
//! Python caller vouches for them (R12).

use std::ffi::{c_char, c_int};
use std::ptr::NonNull;

use crate::capi::attach::Attached;
use crate::capi::ffi::{self, sys};
use crate::capi::native::{NativeArgs, NativeError, NativeResult};
use crate::capi::object::PyObj;
use crate::error::Result;

/// A weak reference owned by a fast path's closure: to the function it replaced, or to
/// ctypes' pointer metatype.
///
/// Weak, because the closure lives in a capsule, which the garbage collector cannot see
/// into: a strong reference from it to the original `string_at` (whose globals are the
/// `ctypes` module, which holds the fast function) would form a cycle the collector never
/// frees, and releasing it only when the capsule goes at `Py_EndInterpreter` is after the
/// collector's last pass there, so ctypes' types would leak with every ended interpreter
/// (~0.27 MiB measured). The originals are kept alive by the `ctypes` module's registry
/// ([`FAST_CTYPES_REGISTRY`]) and the metatype by `_ctypes`.
///
/// The weakref object itself is released whenever this is dropped: a native function's
/// closure is dropped only by its capsule's destructor, which CPython runs in the
/// function's interpreter with it attached, or by `native_function` itself while attached
/// (native.rs). It is never handed out of this module.
struct Weak(NonNull<sys::PyObject>);

// SAFETY: R5/R10: the pointer is only used (in `get`, and the decref in `drop`) by the
// closure that owns it, which runs and is dropped only with its interpreter attached (see
// above); moving the closure between threads of that interpreter touches no object.
unsafe impl Send for Weak {}

impl Weak {
    fn new(py: &Attached<'_>, obj: &PyObj<'_>) -> crate::Result<Self> {
        // SAFETY: R10/R11: attached; `obj` is live; returns a new weakref object or null
        // with TypeError set if the type has no weakref support.
        let r = unsafe { sys::PyWeakref_NewRef(obj.as_ptr(), std::ptr::null_mut()) };
        // SAFETY: R10/R11: `r` is null or a new reference.
        let r = unsafe { PyObj::from_owned_or_err(py, r) }?;
        Ok(Self(r.into_non_null()))
    }

    /// The referent, if it is still alive.
    fn get<'py>(&self, py: &'py Attached<'_>) -> Option<PyObj<'py>> {
        let mut out: *mut sys::PyObject = std::ptr::null_mut();
        // SAFETY: R10/R11: attached; `self.0` is a live weakref we own; on 1 `out` is a new
        // reference, on 0 the referent is gone (out null); -1 cannot happen for a weakref.
        let found = unsafe { sys::compat::PyWeakref_GetRef(self.0.as_ptr(), &mut out) };
        if found < 0 {
            py.clear_error();
        }
        // SAFETY: R10/R11: `out` is null or a new reference.
        unsafe { PyObj::from_owned_ptr(py, out) }
    }
}

impl Drop for Weak {
    fn drop(&mut self) {
        // SAFETY: R10/R11: dropped only with the closure, inside its interpreter with it
        // attached (see the type's docs); we own one strong reference to the weakref.
        unsafe { sys::Py_DECREF(self.0.as_ptr()) }
    }
}

/// The name of the dict [`install_fast_ctypes`] keeps in the `ctypes` module:
/// `{name: (fast, original)}` for each function it replaced. It makes the install
/// idempotent, keeps the originals alive for the fast paths' fallbacks, and lets tests
/// compare a fast path with the original in one interpreter.
pub const FAST_CTYPES_REGISTRY: &str = "_interp_pool_fast_ctypes";

/// The Python half of the install: decides, per function, whether it is still ctypes'
/// own (so a module that replaced it keeps its own), and swaps in `make(name, original)`.
const INSTALL: &str = r#"
def install(ctypes, _ctypes, make, registry_name):
    registry = ctypes.__dict__.get(registry_name)
    if not isinstance(registry, dict):
        registry = {}
    def own_string_at(f):
        helper = ctypes.__dict__.get("_string_at")
        return (
            type(f) is type(install)
            and f.__globals__ is ctypes.__dict__
            and f.__name__ == "string_at"
            and f.__defaults__ == (-1,)
            and isinstance(helper, ctypes._CFuncPtr)
            and ctypes.c_void_p.from_buffer(helper).value == _ctypes._string_at_addr
        )
    def own_cast(f):
        helper = ctypes.__dict__.get("_cast")
        return (
            type(f) is type(install)
            and f.__globals__ is ctypes.__dict__
            and f.__name__ == "cast"
            and isinstance(helper, ctypes._CFuncPtr)
            and ctypes.c_void_p.from_buffer(helper).value == _ctypes._cast_addr
        )
    def own_memmove(f):
        return (
            isinstance(f, ctypes._CFuncPtr)
            and f.restype is ctypes.c_void_p
            and f.argtypes == (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
            and ctypes.c_void_p.from_buffer(f).value == _ctypes._memmove_addr
        )
    all_in_place = True
    for name, own in (("string_at", own_string_at), ("memmove", own_memmove), ("cast", own_cast)):
        current = getattr(ctypes, name, None)
        entry = registry.get(name)
        if entry is not None and current is entry[0]:
            continue
        if current is None or not own(current):
            all_in_place = False
            continue
        fast = make(name, current)
        registry[name] = (fast, current)
        setattr(ctypes, name, fast)
    setattr(ctypes, registry_name, registry)
    return all_in_place
"#;

/// Replaces `ctypes.string_at`, `ctypes.memmove` and `ctypes.cast` in the attached interpreter with
/// native fast paths (see the module docs for the exact shapes), each only if it is still
/// ctypes' own function: one that some module already replaced is left alone.
///
/// Idempotent: a second call finds its own functions in place and changes nothing.
/// Returns `true` if all three fast paths are in place afterwards, `false` if one (or both) was
/// left alone. Imports `ctypes` if it was not imported yet. Errors are Python errors of the
/// install itself (e.g. `ctypes` cannot be imported in this interpreter).
pub fn install_fast_ctypes(py: &Attached<'_>) -> Result<bool> {
    let ctypes = py.import("ctypes")?;
    let raw = py.import("_ctypes")?;
    let globals = py.eval("{}")?;
    py.run_in(INSTALL, &globals)?;
    let install = globals.get_item(py, "install")?.ok_or_else(|| {
        crate::Error::Internal("the fast ctypes install helper is missing".into())
    })?;
    let make = py.native_function(
        c"make_fast_ctypes",
        c"make_fast_ctypes(name, original): the fast path replacing ctypes.<name>",
        |py, args| {
            let [name, original] = args.positional() else {
                return Err(NativeError::type_error(
                    "make_fast_ctypes(name, original) takes 2 arguments",
                ));
            };
            let name = name.extract_string(py)?;
            let original = Weak::new(py, original)?;
            match name.as_str() {
                "string_at" => Ok(py.native_function(
                    c"string_at",
                    c"string_at(ptr[, size]) -> string\n\nReturn the byte string at void *ptr.\n\n(interp_pool native fast path for int addresses; other calls go to ctypes' own.)",
                    move |py, args| string_at(py, args, &original),
                )?),
                "cast" => {
                    let ctypes = py.import("ctypes")?;
                    let char_type = ctypes.getattr(py, "c_char")?;
                    let pointer = ctypes.getattr(py, "POINTER")?.call(py, &[&char_type])?;
                    let pointer_type = Weak::new(py, &pointer.getattr(py, "__class__")?)?;
                    Ok(py.native_function(
                        c"cast",
                        c"cast(obj, typ): obj as a ctypes pointer of type typ\n\n(interp_pool native fast path for an int address and a pointer type; other calls go to ctypes' own.)",
                        move |py, args| cast(py, args, &original, &pointer_type),
                    )?)
                }
                "memmove" => Ok(py.native_function(
                    c"memmove",
                    c"memmove(dst, src, count) -> dst\n\n(interp_pool native fast path for int addresses and bytes; other calls go to ctypes' own.)",
                    move |py, args| memmove(py, args, &original),
                )?),
                other => Err(NativeError::value_error(format!(
                    "no ctypes fast path named {other:?}"
                ))),
            }
        },
    )?;
    let registry = py.str(FAST_CTYPES_REGISTRY)?;
    let in_place = install.call(py, &[&ctypes, &raw, &make, &registry])?;
    Ok(in_place.extract_i64(py)? != 0)
}

/// Hands the call to the replaced function.
fn fall_back<'c>(py: &'c Attached<'c>, args: &NativeArgs<'c>, original: &Weak) -> NativeResult<'c> {
    match original.get(py) {
        Some(original) => args.forward(py, &original),
        None => Err(NativeError::runtime_error(
            "ctypes' own function is gone (its entry in ctypes._interp_pool_fast_ctypes was removed)",
        )),
    }
}

fn string_at<'c>(py: &'c Attached<'c>, args: &NativeArgs<'c>, original: &Weak) -> NativeResult<'c> {
    if let ([ptr, size], false) = (args.positional(), args.has_keywords()) {
        if let (Some(addr), Some(size)) = (address(py, ptr), size_in(py, size, c_int::MAX as usize))
        {
            let event_ptr = addr as sys::Py_ssize_t;
            let event_size = size as c_int;
            // SAFETY: R10: attached (`py`). The format "ni" matches the two variadic
            // arguments (a Py_ssize_t, a C int), as in ctypes' own `string_at`; returns -1
            // with an exception set if an audit hook raised.
            let audited = unsafe {
                ffi::PySys_Audit(
                    c"ctypes.string_at".as_ptr(),
                    c"ni".as_ptr(),
                    event_ptr,
                    event_size,
                )
            };
            if audited < 0 {
                return Err(NativeError::pending());
            }
            // SAFETY: R10: attached. R12: `addr` (non-null) and `size` come from the Python
            // caller, who vouches that `size` bytes are readable there, exactly as with
            // ctypes.string_at. Returns a new reference or null with MemoryError set.
            let bytes = unsafe {
                sys::PyBytes_FromStringAndSize(addr as *const c_char, size as sys::Py_ssize_t)
            };
            // SAFETY: R10/R11: `bytes` is null or a new reference.
            return unsafe { PyObj::from_owned_ptr(py, bytes) }.ok_or_else(NativeError::pending);
        }
    }
    fall_back(py, args, original)
}

fn memmove<'c>(py: &'c Attached<'c>, args: &NativeArgs<'c>, original: &Weak) -> NativeResult<'c> {
    if let ([dst, src, count], false) = (args.positional(), args.has_keywords()) {
        if let (Some(to), Some(count)) = (address(py, dst), size_in(py, count, isize::MAX as usize))
        {
            let from = match address(py, src) {
                Some(from) => Some(from as *const u8),
                None => bytes_source(src, count),
            };
            if let Some(from) = from {
                // SAFETY: R12: the Python caller vouches for `count` bytes at `from` and at
                // `to` (non-null), exactly as with ctypes.memmove; a `bytes` source was
                // checked to hold `count` bytes and stays alive (the caller holds it) for
                // the copy. `copy` is memmove: overlapping ranges are fine.
                unsafe { std::ptr::copy(from, to as *mut u8, count) };
                // SAFETY: R10: attached. Returns a new int (what ctypes' c_void_p restype
                // gives for a non-null result) or null with MemoryError set.
                let out = unsafe { sys::PyLong_FromVoidPtr(to as *mut std::ffi::c_void) };
                // SAFETY: R10/R11: `out` is null or a new reference.
                return unsafe { PyObj::from_owned_ptr(py, out) }.ok_or_else(NativeError::pending);
            }
        }
    }
    fall_back(py, args, original)
}

fn cast<'c>(
    py: &'c Attached<'c>,
    args: &NativeArgs<'c>,
    original: &Weak,
    pointer_type: &Weak,
) -> NativeResult<'c> {
    if let ([obj, typ], false) = (args.positional(), args.has_keywords()) {
        if let Some(addr) = any_address(py, obj) {
            // SAFETY: R10/R11: attached; `typ` is a live reference; reads its type pointer.
            let typ_type = unsafe { sys::Py_TYPE(typ.as_ptr()) };
            let is_pointer_type = pointer_type
                .get(py)
                .is_some_and(|meta| typ_type.cast::<sys::PyObject>() == meta.as_ptr());
            if is_pointer_type {
                // SAFETY: R10/R11: attached; `typ` is a live type; `typ()` as ctypes' cast
                // makes it. Returns a new reference or null with the exception set.
                let made = unsafe { sys::PyObject_CallNoArgs(typ.as_ptr()) };
                // SAFETY: R10/R11: `made` is null or a new reference.
                let made =
                    unsafe { PyObj::from_owned_ptr(py, made) }.ok_or_else(NativeError::pending)?;
                if store_address(py, &made, addr) {
                    return Ok(made);
                }
            }
        }
    }
    fall_back(py, args, original)
}

/// Writes `addr` into the memory of the ctypes pointer instance `obj` (its buffer); false
/// if it has no writable pointer-sized buffer (then nothing was written).
fn store_address(py: &Attached<'_>, obj: &PyObj<'_>, addr: usize) -> bool {
    let mut view = std::mem::MaybeUninit::<sys::Py_buffer>::zeroed();
    // SAFETY: R10/R11: attached; `obj` is live; `view` is writable storage that
    // PyObject_GetBuffer fills on success (0), or leaves with an exception set (-1).
    let got =
        unsafe { sys::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), sys::PyBUF_WRITABLE) };
    if got < 0 {
        py.clear_error();
        return false;
    }
    // SAFETY: filled by the successful PyObject_GetBuffer above.
    let view = unsafe { view.assume_init_mut() };
    let fits = !view.buf.is_null()
        && view.readonly == 0
        && usize::try_from(view.len).is_ok_and(|n| n >= std::mem::size_of::<usize>());
    if fits {
        // SAFETY: R12: `buf` is the instance's own writable memory, at least pointer-sized
        // (checked), valid until the release below.
        unsafe { view.buf.cast::<usize>().write_unaligned(addr) };
    }
    // SAFETY: R10: attached; releases the view obtained above, exactly once.
    unsafe { sys::PyBuffer_Release(view) };
    fits
}

/// An address (null included) from an exact `int` that fits a pointer; `None` otherwise.
fn any_address(py: &Attached<'_>, obj: &PyObj<'_>) -> Option<usize> {
    // SAFETY: R10/R11: attached (`py`); `obj` is a live reference; a type check.
    if unsafe { sys::PyLong_CheckExact(obj.as_ptr()) } == 0 {
        return None;
    }
    // SAFETY: R10/R11: as above; `obj` is an int. Returns (unsigned long long)-1 with
    // OverflowError set if it is negative or too large.
    let v = unsafe { sys::PyLong_AsUnsignedLongLong(obj.as_ptr()) };
    if v == u64::MAX && py.error_pending() {
        py.clear_error();
        return None;
    }
    usize::try_from(v).ok()
}

/// A non-null address from an exact `int` that fits a pointer; `None` for anything else.
fn address(py: &Attached<'_>, obj: &PyObj<'_>) -> Option<usize> {
    any_address(py, obj).filter(|&a| a != 0)
}

/// A size from an exact `int` in `0..=max`; `None` for anything else.
fn size_in(py: &Attached<'_>, obj: &PyObj<'_>, max: usize) -> Option<usize> {
    // SAFETY: R10/R11: attached (`py`); `obj` is a live reference; a type check.
    if unsafe { sys::PyLong_CheckExact(obj.as_ptr()) } == 0 {
        return None;
    }
    // SAFETY: R10/R11: as above; `obj` is an int. Returns -1 with OverflowError set if it
    // does not fit a Py_ssize_t.
    let v = unsafe { sys::PyLong_AsSsize_t(obj.as_ptr()) };
    if v == -1 && py.error_pending() {
        py.clear_error();
        return None;
    }
    usize::try_from(v).ok().filter(|&n| n <= max)
}

/// The buffer of an exact `bytes` holding at least `count` bytes; `None` otherwise.
fn bytes_source(obj: &PyObj<'_>, count: usize) -> Option<*const u8> {
    // SAFETY: R10/R11: attached (`obj` borrows a token); a type check.
    if unsafe { sys::PyBytes_CheckExact(obj.as_ptr()) } == 0 {
        return None;
    }
    // SAFETY: R10/R11: `obj` is a live exact bytes (a var-sized object); reads its size.
    let len = unsafe { sys::Py_SIZE(obj.as_ptr()) };
    if usize::try_from(len).ok()? < count {
        return None;
    }
    // SAFETY: R10/R11: `obj` is a live exact bytes; returns its internal buffer, valid
    // while `obj` lives (immutable bytes never move their buffer).
    Some(unsafe { sys::PyBytes_AS_STRING(obj.as_ptr()) }.cast::<u8>())
}
