"""Numba CPU kernels (imported lazily: ``import graft_array`` never loads numba).

Importing this package registers one listener on Numba's ``numba:compile``
event. The event fires only when a kernel is really compiled (a disk-cache hit
loads the machine code without it), so the first compile of one of our
kernels in a process writes a single line to stderr, and a warm cache writes
nothing.
"""

import sys
import threading

from numba.core import event as _event

__all__ = ["COMPILE_NOTICE"]

COMPILE_NOTICE = (
    "graft_array: compiling kernels (first run only, about a minute; cached on disk for later runs)"
)


class _CompileNotice(_event.Listener):
    """Says once per process, on stderr, that our kernels are being compiled."""

    def __init__(self):
        self._lock = threading.Lock()
        self.said = False

    def on_start(self, ev):
        if self.said:
            return
        dispatcher = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith("graft_array."):
            return  # someone else's Numba function
        with self._lock:
            if self.said:
                return
            self.said = True
        print(COMPILE_NOTICE, file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


_NOTICE = _CompileNotice()
_event.register("numba:compile", _NOTICE)
