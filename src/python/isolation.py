"""Main mode: the per-bundle import finder, the alias loader and the bookkeeping (see
isolation.rs). Run once per process into the module `_polyplug_subinterp_isolation`."""

import sys, importlib.machinery as _m

_bundles = {}   # key -> (prefix, dirs)
_pending = {}   # key -> top-level names imported through the finder since the last settle

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

def install(current_fn, mark_dirty_fn):
    global current, mark_dirty
    current, mark_dirty = current_fn, mark_dirty_fn
    sys.meta_path.insert(0, BundleFinder)

def register(key, prefix, dirs):
    _bundles[key] = (prefix, list(dirs))

def settle():
    """Moves what bundles imported since the last call under their prefixes."""
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
    bundle = _bundles.pop(key, None)
    _pending.pop(key, None)
    if bundle is not None:
        for n in [n for n in list(sys.modules) if n.startswith(bundle[0] + ".")]:
            del sys.modules[n]
