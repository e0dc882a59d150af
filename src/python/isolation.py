"""Main mode: the per-bundle import finder, the alias loader and the bookkeeping (see
isolation.rs). Run once per process into the module `_polyplug_subinterp_isolation`."""

import builtins, importlib, sys, _thread, importlib.machinery as _m

_bundles = {}   # key -> (prefix, dirs)
_pending = {}   # key -> top-level names imported through the finder since the last settle

# Several threads run bundles' code at once (the main interpreter's pool). A module a
# bundle imports sits under its plain name (`guest.contracts`) until `settle` re-keys it,
# and the import system looks in sys.modules before any finder: a second bundle importing
# the same name meanwhile would get the first one's. So imports made by bundle code are
# serialised, and settled when the outermost one returns, before the lock is let go.
_lock = _thread.RLock()

def _is_extension(module):
    spec = getattr(module, "__spec__", None)
    if isinstance(getattr(spec, "loader", None), _m.ExtensionFileLoader):
        return True
    f = getattr(module, "__file__", None) or ""
    return f.endswith(tuple(_m.EXTENSION_SUFFIXES))

class _Alias:
    """Hands back a bundle's own module, which lives under its prefixed key."""
    def __init__(self, module):
        self.module = module
        self.spec = getattr(module, "__spec__", None)
    def create_module(self, spec):
        return self.module
    def exec_module(self, module):
        module.__spec__ = self.spec

class BundleFinder:
    """Resolves imports made by the bundle running on this thread (see isolation.rs)."""
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        key = current()
        bundle = _bundles.get(key) if key else None
        if bundle is None:
            return None
        prefix, dirs = bundle
        own = sys.modules.get(prefix + "." + fullname)
        if own is not None:
            spec = _m.ModuleSpec(fullname, _Alias(own))
        elif path is None:
            spec = _m.PathFinder.find_spec(fullname, dirs)
            if spec is None:
                return None
        else:
            return None   # a submodule: the parent's __path__ finds it
        _pending.setdefault(key, set()).add(fullname.partition(".")[0])
        mark_dirty()
        return spec

    @classmethod
    def invalidate_caches(cls):
        pass

def _serialised(imp):
    def serialised_import(*args, **kwargs):
        if not current():
            return imp(*args, **kwargs)   # host code and plugin-started threads
        outermost = not _lock._is_owned()
        with _lock:
            try:
                return imp(*args, **kwargs)
            finally:
                if outermost and _pending:
                    _settle()
    serialised_import.__wrapped__ = imp
    serialised_import.__name__ = getattr(imp, "__name__", "serialised_import")
    return serialised_import

def install(current_fn, mark_dirty_fn):
    global current, mark_dirty
    current, mark_dirty = current_fn, mark_dirty_fn
    sys.meta_path.insert(0, BundleFinder)
    builtins.__import__ = _serialised(builtins.__import__)
    importlib.import_module = _serialised(importlib.import_module)

def register(key, prefix, dirs):
    _bundles[key] = (prefix, list(dirs))

def settle():
    """Moves what bundles imported since the last call under their prefixes."""
    with _lock:
        _settle()

def _settle():
    pending = list(_pending.items())
    _pending.clear()
    for key, tops in pending:
        bundle = _bundles.get(key)
        if bundle is None:
            continue
        prefix = bundle[0]
        for top in tops:
            names = [n for n in list(sys.modules) if n == top or n.startswith(top + ".")]
            if any(_is_extension(sys.modules[n]) for n in names):
                continue
            for n in sorted(names, key=len, reverse=True):
                sys.modules[prefix + "." + n] = sys.modules.pop(n)

def forget(key):
    with _lock:
        _forget(key)

def _forget(key):
    bundle = _bundles.pop(key, None)
    _pending.pop(key, None)
    if bundle is not None:
        for n in [n for n in list(sys.modules) if n.startswith(bundle[0] + ".")]:
            del sys.modules[n]
