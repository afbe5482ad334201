"""Numba CPU kernels (imported lazily: ``import graft_array`` never loads numba).

Importing this package registers one listener on Numba's ``numba:compile``
event. The event fires only when a kernel is really compiled (a disk-cache hit
loads the machine code without it), so the first compile of one of our
kernels in a process writes a single line to stderr, and a warm cache writes
nothing.

It also makes our kernels' disk cache notice every source they are compiled
from. Numba stamps a cached kernel with its own file's contents only, while
ours inline functions from other files (the vector intrinsics of ``simd.py``,
``_common.rank_tol_factor``, the strategies' shared loops): after an edit, or
a ``git pull`` into an editable install, that changes only such a file, Numba
would load the old machine code. Our kernels' cache locators add one digest
of every kernel source (:func:`sources_digest`) to that stamp, so any change
recompiles them.
"""

import functools
import hashlib
import os
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


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the graft_array package


def kernel_sources():
    """The files our Numba kernels are compiled from: ``_common.py``, ``_numba/*.py``, ``strategies/*.py``."""
    files = [os.path.join(_ROOT, "_common.py")]
    for sub in ("_numba", "strategies"):
        folder = os.path.join(_ROOT, sub)
        files += sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))
    return files


def digest(files):
    """sha256 over the names (relative to the package) and contents of ``files``, in order."""
    h = hashlib.sha256()
    for path in files:
        h.update(os.path.relpath(path, _ROOT).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
        h.update(b"\0")
    return h.digest()


@functools.lru_cache(maxsize=None)
def sources_digest():
    """:func:`digest` of :func:`kernel_sources`, once per process."""
    return digest(kernel_sources())


def _stamped(base):
    """``base`` (a Numba cache locator) for our files only, its source stamp joined with :func:`sources_digest`."""

    class Stamped(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(_ROOT + os.sep):
                return None  # someone else's function: Numba's own locators
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return (super().get_source_stamp(), sources_digest())

    Stamped.__name__ = Stamped.__qualname__ = "Graft" + base.__name__
    return Stamped


def _install_locators():
    """Our stamped locators first, in Numba's own order (a NUMBA_CACHE_DIR, in-tree, user-wide); a Numba without
    these classes keeps its own (the kernels still work, with Numba's per-file stamps)."""
    try:
        from numba.core import caching

        classes = caching.CacheImpl._locator_classes
        bases = [caching.UserProvidedCacheLocator, caching.InTreeCacheLocator, caching.UserWideCacheLocator]
    except (ImportError, AttributeError):  # pragma: no cover - another Numba layout
        return False
    if any(getattr(c, "__name__", "").startswith("Graft") for c in classes):
        return True
    classes[:0] = [_stamped(b) for b in bases]
    return True


_install_locators()
