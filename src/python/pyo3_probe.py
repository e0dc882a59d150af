"""Telling PyO3 extension modules apart (see load.rs): PyO3 binds a module to the first
interpreter that imports it, so a refusing PyO3 module must go straight to `main`. Run by
the loader into each load's bootstrap namespace."""

import sys


def refused_by_pyo3(name):
    """1 if extension module `name` (found on sys.path) is a PyO3 build, else 0.

    Older PyO3 embeds its subinterpreter refusal message; every PyO3 build embeds
    panic locations under pyo3-X.Y.Z/src/."""
    import os, re, importlib.machinery as m
    parts = name.split(".")
    for entry in sys.path:
        base = os.path.join(entry or ".", *parts)
        for suffix in m.EXTENSION_SUFFIXES:
            try:
                with open(base + suffix, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            return int(b"PyO3 modules do not yet support" in data
                       or re.search(rb"[/\\]pyo3-[0-9]+\.[0-9]+\.[0-9]+[/\\]src[/\\]", data) is not None)
    return 0
