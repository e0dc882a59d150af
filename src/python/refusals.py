"""Seeing every extension-module refusal in this interpreter, caught or not (see
refusals.rs). Run by the loader once per interpreter into the module
`_polyplug_subinterp_refusals`, before any bundle code.

Only extension modules pay: the wrapper sits on ExtensionFileLoader.create_module, which
pure-Python imports never reach. A failed create_module counts as a refusal when

- its ImportError says so: CPython's or Cython's wording (_MARKS); or
- in a subinterpreter, the module's init function ran and failed for want of a module the
  bundle provides. CPython 3.13 runs every extension's init function in the main
  interpreter first, whose sys.path lacks the bundle's directories: a single-phase module
  whose init imports its own package fails there, and only `main` can load it. The init
  ran if the dynamic linker has the .so loaded (a missing shared library fails before);
  what it failed on is the init's own exception on 3.13.0, or, from 3.13.15 (gh-144601),
  the exception main's sys.unraisablehook received (watch_main), the subinterpreter
  getting only _GENERIC. An init failing on a module the bundle lacks too is no refusal.

A refusal is recorded (module, .so path, message, evidence), `mark()` sets a native flag
the loader checks after the init and after each call, and the ImportError goes on to the
importer unchanged, except on 3.13.0, where it is an object of the main interpreter's:
it is handed back to main's collector and a copy made here is raised instead (see
_hand_back)."""

import importlib.machinery as _m
import os as _os
import sys as _sys

_MARKS = (
    # CPython's check (multi-phase init without per-interpreter GIL / subinterpreter
    # support, or single-phase init, with check_multi_interp_extensions on)
    "does not support loading in subinterpreters",
    # Cython's own check: the module is bound to the first interpreter that imported it
    "Interpreter change detected - this module can only be loaded into one interpreter per process",
)
# CPython >= 3.13.15 (gh-144601): the init function, run in main, raised; main printed it
_GENERIC = "failed to import from subinterpreter due to exception"
_UNRAISABLE = "Exception while importing from subinterpreter"
_seen = []   # (module, .so path, message, evidence, needed module or ""), oldest first
_base_path = ()  # sys.path when installed: the entries added later are the bundle's


def install(mark, enter, leave, in_main):
    global _base_path
    base = _m.ExtensionFileLoader.create_module
    if getattr(base, "_polyplug_refusals", False):
        return
    _base_path = tuple(_sys.path)

    def create_module(self, spec):
        enter()
        err = None
        try:
            return base(self, spec)
        except ImportError as e:
            err = e
        finally:
            cause = leave()
        # Past the except block: an exception raised here does not keep `err` as context.
        seen, raise_instead = _weigh(spec, err, cause, in_main)
        if seen is not None:
            _seen.append(seen)
            mark()
        if raise_instead is not None:
            err = None
            raise raise_instead
        raise err

    create_module._polyplug_refusals = True
    create_module.__wrapped__ = base
    _m.ExtensionFileLoader.create_module = create_module


def _weigh(spec, err, cause, in_main):
    """(record or None, exception to raise instead or None) for a failed create_module."""
    msg = _copy(str(err))
    origin = spec.origin or ""
    if any(k in msg for k in _MARKS):
        return (spec.name, origin, msg, "message", ""), None
    if in_main:
        return None, None
    raise_instead = None
    if msg == _GENERIC:
        names = cause  # None: main's hook did not see it (a host's own Python)
    elif _mapped(origin):
        # 3.13.0: `err` is the init's own exception, made in the main interpreter.
        names = _import_names(err)
        raise_instead = _hand_back(err, spec, msg)
    else:
        return None, None  # the .so did not load (a missing shared library, ...)
    if names is None:
        return (spec.name, origin, msg, "init_in_main", ""), raise_instead
    for n in names:
        if n != spec.name and _bundle_provides(n):
            return (spec.name, origin, msg, "init_in_main", n), raise_instead
    return None, raise_instead


def _copy(s):
    """A str of this interpreter's own with the text of `s` (which may be main's)."""
    return s.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")


def _import_names(exc):
    """Names of the modules the ImportErrors in `exc`'s chain could not import."""
    names = []
    for _ in range(8):
        if exc is None:
            break
        if isinstance(exc, ImportError) and isinstance(exc.name, str):
            names.append(_copy(exc.name))
        exc = exc.__cause__ or exc.__context__
    return names


def _bundle_provides(name):
    """Whether the directories the bundle added to sys.path hold `name`'s top package."""
    own = [p for p in _sys.path if p not in _base_path]
    top = name.partition(".")[0]
    try:
        return bool(own) and _m.PathFinder.find_spec(top, own) is not None
    except (ImportError, ValueError):
        return False


def _mapped(path):
    """Whether the dynamic linker has the file at `path` loaded (dlopen succeeded, so
    CPython went on to run its init function)."""
    try:
        st = _os.stat(path)
        real = _os.path.realpath(path)
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) < 6:
                    continue
                if fields[5].rstrip("\n") == real:
                    return True
                major, _, minor = fields[3].partition(":")
                if (int(fields[4]) == st.st_ino and int(major, 16) == _os.major(st.st_dev)
                        and int(minor, 16) == _os.minor(st.st_dev)):
                    return True
    except (OSError, ValueError):
        pass
    return False


def _hand_back(err, spec, msg):
    """3.13.0 raises the init's exception, made in the main interpreter, here: freed here,
    its memory would go back to the wrong allocator (a bare reproduction aborted with
    "double free or corruption"). Drop what this interpreter attached to it (its
    traceback), leave it a cycle that only main's collector sees (it was made, and is
    tracked, there) and return a copy made here to raise instead."""
    kind = type(err) if type(err) in (ImportError, ModuleNotFoundError) else ImportError
    copy = kind(msg, name=spec.name, path=spec.origin)
    err.__traceback__ = None
    err.__context__ = err
    return copy


def watch_main(note):
    """In the main interpreter, once per process: hand the exception of an extension's
    init that failed for a subinterpreter (3.13.15+) to `note`, which keeps it for the
    wrapper of the importing subinterpreter (same OS thread) and says whether one waits
    for it; the others go to the previous hook."""
    prev = _sys.unraisablehook
    if getattr(prev, "_polyplug_refusals", False):
        return

    def hook(u):
        if (isinstance(u.err_msg, str) and u.err_msg.startswith(_UNRAISABLE)
                and note(_import_names(u.exc_value))):
            return
        prev(u)

    hook._polyplug_refusals = True
    _sys.unraisablehook = hook


def take():
    out = list(_seen)
    _seen.clear()
    return out
