//! Why a bundle runs in the mode it runs in ([`ModeReason`]), and the facts about a refusing
//! extension module it carries: how the module was built ([`Binding`]), how the loader
//! learned of the refusal ([`RefusalHow`]) and what it saw ([`Evidence`]). Shared by
//! `refusals` (which records refusals), `remembered` (which keeps outcomes) and
//! `lifecycle` (which downgrades), below all three.

use crate::config::InterpreterMode;

/// How the extension module that refused was built: PyO3 and Cython modules bind
/// themselves to the first interpreter that imports them, so the loader must not try
/// them in a subinterpreter first (the main interpreter would be locked out of them for
/// the rest of the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// Plain C (or anything not recognised below).
    C,
    /// Built with PyO3 (recognised by the `pyo3-X.Y.Z/src/` paths every build embeds).
    PyO3,
    /// Built with Cython (recognised by its "Interpreter change detected" check, or its
    /// `__pyx_` symbols next to the string "Cython").
    Cython,
}

impl Binding {
    /// `"c"`, `"pyo3"` or `"cython"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::C => "c",
            Binding::PyO3 => "pyo3",
            Binding::Cython => "cython",
        }
    }

    /// Whether a module built this way loads in one interpreter per process.
    pub(crate) fn one_interpreter_per_process(self) -> bool {
        self != Binding::C
    }

    /// Reads the extension module at `path` for the markers of PyO3 and Cython builds.
    /// Only runs on a refusal (a few ms for a large `.so`).
    pub(crate) fn sniff(path: &str) -> Self {
        let Ok(data) = std::fs::read(path) else {
            return Binding::C;
        };
        if contains(&data, b"PyO3 modules do not yet support") || embeds_pyo3_sources(&data) {
            Binding::PyO3
        } else if contains(&data, b"Interpreter change detected - this module can only")
            || (contains(&data, b"__pyx_") && contains(&data, b"Cython"))
        {
            Binding::Cython
        } else {
            Binding::C
        }
    }
}

/// `[/\\]pyo3-N.N.N[/\\]src[/\\]`: the panic locations every PyO3 build embeds.
fn embeds_pyo3_sources(data: &[u8]) -> bool {
    positions(data, b"pyo3-").any(|at| {
        if at == 0 || !matches!(data[at - 1], b'/' | b'\\') {
            return false;
        }
        let mut rest = &data[at + 5..];
        for i in 0..3 {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            rest = &rest[digits..];
            let want: &[u8] = if i < 2 { b"." } else { b"" };
            if !rest.starts_with(want) {
                return false;
            }
            rest = &rest[want.len()..];
        }
        rest.len() >= 5
            && matches!(rest[0], b'/' | b'\\')
            && &rest[1..4] == b"src"
            && matches!(rest[4], b'/' | b'\\')
    })
}

fn positions<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle[0];
    hay.iter()
        .enumerate()
        .filter(move |&(i, &b)| b == first && hay[i..].starts_with(needle))
        .map(|(i, _)| i)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    positions(hay, needle).next().is_some()
}

/// How the loader learned of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalHow {
    /// The ImportError reached the loader: the bundle's import or `polyplug_init` failed.
    Raised,
    /// The importing package caught the ImportError (and went on without the module).
    Caught,
    /// Seen during a call, after the load (a lazy import inside a function).
    AtCall,
}

impl RefusalHow {
    /// `"raised"`, `"caught"` or `"at_call"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalHow::Raised => "raised",
            RefusalHow::Caught => "caught",
            RefusalHow::AtCall => "at_call",
        }
    }
}

/// What the loader saw that made it count an extension module's failed import as a
/// refusal of the interpreter it ran in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Evidence {
    /// The ImportError said so: CPython's "does not support loading in subinterpreters"
    /// or Cython's "Interpreter change detected".
    Message,
    /// The module's init function failed in the main interpreter, where CPython 3.13 runs
    /// the init of every extension a subinterpreter imports and where `sys.path` lacks the
    /// bundle's directories; only `main`, which resolves them, can load it (a
    /// single-phase-init module importing its own package).
    InitInMain {
        /// The module the init could not import there, which the bundle provides; `None`
        /// when the cause was not recorded (3.13.15+ reports it to the main interpreter's
        /// `sys.unraisablehook`, which the loader watches only in a Python it initialised).
        needed: Option<String>,
    },
}

/// What decided a bundle's interpreter mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeCause {
    /// `PythonConfig::mode`.
    Configured,
    /// `PythonConfig::bundle_modes`.
    Pinned,
    /// An extension module refused the previous mode.
    Refused {
        /// The module that refused, e.g. `numpy._core._multiarray_umath`.
        module: String,
        /// The mode it refused.
        from: InterpreterMode,
        /// Whether the ImportError reached the loader or was caught by the importer.
        how: RefusalHow,
        /// How the module was built (PyO3 and Cython modules skip `shared_gil`).
        binding: Binding,
        /// What made the loader count its failed import as a refusal.
        seen: Evidence,
    },
}

/// Why a bundle runs in the mode it runs in ([`BundleInfo::reason`](crate::BundleInfo)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeReason {
    /// What decided the mode.
    pub cause: ModeCause,
    /// The mode came from an earlier load of the same files in this process (the modes
    /// that failed then were not tried again).
    pub remembered: bool,
    /// Extension modules that refused this mode, whose refusal the importing package
    /// caught, and that the bundle runs without, on the package's pure-Python fallback
    /// (`CaughtRefusals::KeepMode`, or `PythonConfig::ignored_refusals`).
    pub fallback: Vec<String>,
}

impl ModeReason {
    pub(crate) fn new(cause: ModeCause) -> Self {
        Self {
            cause,
            remembered: false,
            fallback: Vec::new(),
        }
    }

    /// The module that decided the mode, if a refusal did.
    pub fn module(&self) -> Option<&str> {
        match &self.cause {
            ModeCause::Refused { module, .. } => Some(module),
            _ => self.fallback.first().map(String::as_str),
        }
    }

    /// One word for tools: `"configured"`, `"pinned"`, `"raised"`, `"caught"`,
    /// `"at_call"`, or `"fallback"` when the bundle kept its mode and runs a package's
    /// pure-Python fallback.
    pub fn how(&self) -> &'static str {
        match &self.cause {
            ModeCause::Refused { how, .. } => how.as_str(),
            _ if !self.fallback.is_empty() => "fallback",
            ModeCause::Configured => "configured",
            ModeCause::Pinned => "pinned",
        }
    }
}

impl std::fmt::Display for ModeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            ModeCause::Configured => f.write_str("configured")?,
            ModeCause::Pinned => f.write_str("pinned (bundle_modes)")?,
            ModeCause::Refused {
                module,
                from,
                how,
                binding,
                seen,
            } => {
                write!(f, "{module} refused {from} ({}", how.as_str())?;
                if *binding != Binding::C {
                    write!(f, ", {}", binding.as_str())?;
                }
                match seen {
                    Evidence::Message => {}
                    Evidence::InitInMain { needed: Some(m) } => {
                        write!(f, "; its init, run in main, could not import {m}")?;
                    }
                    Evidence::InitInMain { needed: None } => {
                        f.write_str("; its init failed in main")?;
                    }
                }
                f.write_str(")")?;
            }
        }
        if self.remembered {
            f.write_str(", remembered")?;
        }
        if !self.fallback.is_empty() {
            write!(f, "; fallback without {}", self.fallback.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{contains, embeds_pyo3_sources};

    #[test]
    fn markers_are_found_where_they_are() {
        assert!(contains(b"xx__pyx_yy", b"__pyx_"));
        assert!(!contains(b"__py", b"__pyx_"));
        assert!(embeds_pyo3_sources(
            b"\0/root/.cargo/registry/src/x/pyo3-0.22.6/src/err/mod.rs\0"
        ));
        assert!(embeds_pyo3_sources(b"C:\\r\\pyo3-1.2.3\\src\\lib.rs"));
        assert!(!embeds_pyo3_sources(b"/pyo3-ffi-0.22.6/src/lib.rs"));
        assert!(!embeds_pyo3_sources(b"pyo3-0.22.6/src/lib.rs"));
    }
}
