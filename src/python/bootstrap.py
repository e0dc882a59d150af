"""Importing a bundle's entry module (see load.rs). Run by the loader into each load's
bootstrap namespace, before the bundle's code; both source kinds go through here."""

import importlib.util
import sys
import types


def load_path(stem, path, dirs):
    for d in dirs:
        sys.path.insert(0, d)
    spec = importlib.util.spec_from_file_location(stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot build an import spec for {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_code(name, src):
    code = compile(src, f"{name}.py", "exec")
    module = types.ModuleType(name)
    module.__file__ = f"{name}.py"
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module
