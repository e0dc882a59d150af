"""A bundle's sys.stdout / sys.stderr (see output.rs). Run by the loader into each load's
bootstrap namespace (load.rs), before the bundle's code."""

import io
import sys
import _thread


class GuestOutput(io.TextIOBase):
    """A bundle's sys.stdout / sys.stderr (output.rs): complete lines go to
    emit(stream, line), which sends them to the runtime's logger. `key` (main
    interpreter only) names the bundle running on this thread, 0 for none: then the
    text goes to the stream this writer replaced, as does anything emit refuses."""
    _polyplug_guest_output = True
    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, emit, stream, fallback, key):
        self._emit, self._stream, self._fallback, self._key = emit, stream, fallback, key
        self._bufs = {}
        self._lock = _thread.allocate_lock()

    def writable(self):
        return True

    def _passthrough(self, s):
        if self._fallback is not None:
            self._fallback.write(s)

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        k = 0 if self._key is None else self._key()
        if self._key is not None and k == 0:
            self._passthrough(s)
            return len(s)
        # Partial lines wait per bundle and thread: in main, one bundle's calls may run on
        # several threads at once, and another bundle's beside them.
        b = (k, _thread.get_ident())
        with self._lock:
            *lines, rest = (self._bufs.pop(b, "") + s).split("\n")
            if rest:
                self._bufs[b] = rest
            for line in lines:
                if not self._emit(self._stream, line):
                    self._passthrough(line + "\n")
        return len(s)

    def flush(self):
        if self._key is not None and self._fallback is not None:
            self._fallback.flush()

    def _polyplug_drain(self):
        """Emits the last lines that have no newline, one per thread that left one (the
        bundle is being unloaded)."""
        k = 0 if self._key is None else self._key()
        with self._lock:
            for b in [b for b in self._bufs if b[0] == k]:
                rest = self._bufs.pop(b)
                if rest and not self._emit(self._stream, rest):
                    self._passthrough(rest)


def install_output(emit, key):
    if key is not None and getattr(sys.stdout, "_polyplug_guest_output", False):
        return   # main interpreter: the router is in place already
    sys.stdout = GuestOutput(emit, 0, sys.stdout, key)
    sys.stderr = GuestOutput(emit, 1, sys.stderr, key)
