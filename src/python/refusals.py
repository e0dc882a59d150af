"""Seeing every extension-module refusal in this interpreter, caught or not (see
refusals.rs). Run by the loader once per interpreter into the module
`_polyplug_subinterp_refusals`, before any bundle code.

Only extension modules pay: the wrapper sits on ExtensionFileLoader.create_module, which
pure-Python imports never reach. It records an ImportError that says the module refuses
this interpreter, calls `mark()` (a native flag the loader checks after the init and
after each call, like the isolation finder's), and re-raises it unchanged."""

import importlib.machinery as _m

_MARKS = (
    # CPython's check (multi-phase init without per-interpreter GIL / subinterpreter
    # support, or single-phase init, with check_multi_interp_extensions on)
    "does not support loading in subinterpreters",
    # Cython's own check: the module is bound to the first interpreter that imported it
    "Interpreter change detected - this module can only be loaded into one interpreter per process",
)
_seen = []   # (module, .so path, message), oldest first


def install(mark):
    base = _m.ExtensionFileLoader.create_module
    if getattr(base, "_polyplug_refusals", False):
        return

    def create_module(self, spec):
        try:
            return base(self, spec)
        except ImportError as e:
            msg = str(e)
            if any(k in msg for k in _MARKS):
                _seen.append((spec.name, spec.origin or "", msg))
                mark()
            raise

    create_module._polyplug_refusals = True
    create_module.__wrapped__ = base
    _m.ExtensionFileLoader.create_module = create_module


def take():
    out = list(_seen)
    _seen.clear()
    return out
