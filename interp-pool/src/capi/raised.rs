//! A Python exception caught inside a job and not yet described.
//!
//! [`Attached::take_error`] formats a full traceback (`traceback.format_exception`: source
//! lines, caret anchors) for every exception, which costs far more than raising it. A
//! caller that sees many failures and logs few of them (the loader's dispatch) keeps the
//! exception as a [`Raised`] instead, classifies it cheaply with [`Raised::site`] (type
//! and raising location: a handful of attribute reads), and decides, still inside the
//! job, whether to pay for [`Raised::into_error`] with [`Detail::Traceback`] or only for
//! [`Detail::Brief`] (`Type: message`). The exception object never leaves the job (R5).

use std::ffi::CStr;

use crate::capi::attach::Attached;
use crate::capi::ffi::{sys, ExcType};
use crate::capi::object::PyObj;
use crate::error::{Error, PyException};

/// A pending Python exception, taken off the thread state and owned by the job.
#[derive(Debug)]
pub struct Raised<'py> {
    exc: PyObj<'py>,
}

/// Where an exception was raised: its type and the innermost frame of its traceback.
/// Two failures with the same site are "of the same kind" for log rate limiting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RaiseSite {
    /// Qualified type name, as in [`PyException::type_name`].
    pub type_name: String,
    /// `co_filename` of the innermost traceback frame (empty if it had none).
    pub file: String,
    /// Line number there (0 if unknown).
    pub line: u32,
}

impl std::fmt::Display for RaiseSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.file.is_empty() {
            f.write_str(&self.type_name)
        } else {
            write!(f, "{} at {}:{}", self.type_name, self.file, self.line)
        }
    }
}

/// How much of an exception [`Raised::into_error`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Type and message only; [`PyException::traceback`] is `Type: message\n`.
    Brief,
    /// The full `traceback.format_exception` text, as [`Attached::take_error`] gives.
    Traceback,
}

impl<'a> Attached<'a> {
    /// Takes the pending exception without describing it; `None` if none is set.
    pub fn take_raised(&self) -> Option<Raised<'_>> {
        // SAFETY: R10: attached (self). Returns the raised exception (a new reference,
        // clearing the indicator) or null.
        let exc = unsafe { sys::PyErr_GetRaisedException() };
        // SAFETY: R10/R11: `exc` is a new reference or null.
        unsafe { PyObj::from_owned_ptr(self, exc) }.map(|exc| Raised { exc })
    }
}

impl<'py> PyObj<'py> {
    /// `self(*args)`, keeping an exception undescribed (see the module docs).
    pub fn call_or_raised(
        &self,
        att: &'py Attached<'_>,
        args: &[&PyObj<'_>],
    ) -> Result<PyObj<'py>, Raised<'py>> {
        let r = self.vectorcall(att, args);
        // SAFETY: R10/R11: `r` is null or a new reference.
        match unsafe { PyObj::from_owned_ptr(att, r) } {
            Some(obj) => Ok(obj),
            None => Err(att.take_raised().unwrap_or_else(|| {
                // A null result with no exception set is a C-level bug in the callee;
                // CPython itself turns it into SystemError.
                let msg = c"call returned NULL without setting an exception";
                // SAFETY: R10: attached; SystemError is a static immortal type.
                unsafe { sys::PyErr_SetString(ExcType::System.ptr(), msg.as_ptr()) };
                att.take_raised().expect("an exception was just set")
            })),
        }
    }

    /// `getattr(self, name)` for a static name, with no allocation; `None` if it raised
    /// (the exception is cleared).
    fn attr(&self, att: &'py Attached<'_>, name: &CStr) -> Option<PyObj<'py>> {
        // SAFETY: R10: attached (`att`). R11: self is valid; returns a new reference or
        // null with an exception set.
        let r = unsafe { sys::PyObject_GetAttrString(self.as_ptr(), name.as_ptr()) };
        // SAFETY: R10/R11: `r` is null or a new reference.
        let obj = unsafe { PyObj::from_owned_ptr(att, r) };
        if obj.is_none() {
            att.clear_error();
        }
        obj
    }
}

impl<'py> Raised<'py> {
    /// The exception's type and raising location; a few attribute reads, nothing
    /// formatted. Anything that raises on the way leaves that part empty.
    pub fn site(&self, att: &'py Attached<'_>) -> RaiseSite {
        let type_name = self.type_name(att).unwrap_or_else(|| "<unknown>".into());
        let (mut file, mut line) = (String::new(), 0);
        if let Some(mut tb) = self.exc.attr(att, c"__traceback__") {
            for _ in 0..10_000 {
                match tb.attr(att, c"tb_next") {
                    Some(next) if !next.is_none() => tb = next,
                    _ => break,
                }
            }
            if !tb.is_none() {
                line = tb
                    .attr(att, c"tb_lineno")
                    .and_then(|l| l.extract_i64(att).ok())
                    .and_then(|l| u32::try_from(l).ok())
                    .unwrap_or(0);
                file = tb
                    .attr(att, c"tb_frame")
                    .and_then(|f| f.attr(att, c"f_code"))
                    .and_then(|c| c.attr(att, c"co_filename"))
                    .and_then(|s| s.extract_string(att).ok())
                    .unwrap_or_default();
            }
        }
        att.clear_error();
        RaiseSite {
            type_name,
            file,
            line,
        }
    }

    fn type_name(&self, att: &'py Attached<'_>) -> Option<String> {
        let ty = self.exc.attr(att, c"__class__")?;
        let qual = ty.attr(att, c"__qualname__")?.extract_string(att).ok()?;
        let module = ty
            .attr(att, c"__module__")
            .and_then(|m| m.extract_string(att).ok());
        att.clear_error();
        Some(match module.as_deref() {
            None | Some("builtins") => qual,
            Some(m) => format!("{m}.{qual}"),
        })
    }

    /// Describes the exception as [`Attached::take_error`] does (including
    /// [`Error::Unsupported`] for a refusing extension module), with a full traceback
    /// only for [`Detail::Traceback`].
    pub fn into_error(self, att: &'py Attached<'_>, detail: Detail) -> Error {
        let exception = match detail {
            Detail::Traceback => att.describe(&self.exc),
            Detail::Brief => {
                let type_name = self.type_name(att).unwrap_or_else(|| "<unknown>".into());
                let message = self
                    .exc
                    .str(att)
                    .unwrap_or_else(|_| "<unformattable>".into());
                att.clear_error();
                let traceback = if message.is_empty() {
                    format!("{type_name}\n")
                } else {
                    format!("{type_name}: {message}\n")
                };
                PyException {
                    type_name,
                    message,
                    traceback,
                    interp: att.id(),
                }
            }
        };
        match att.refused_module(&self.exc) {
            Some(module) => Error::Unsupported { module, exception },
            None => Error::Python(exception),
        }
    }
}
