"""Numba's threading layer and ``fork``: which layer our parallel kernels run on, and the fallback.

Our CPU kernels are ``@njit(parallel=True)`` with ``prange``, so they run on one
of Numba's threading layers (tbb, omp, workqueue; Numba takes the first that
loads, in that order, unless the user chose one). On Linux the ``omp`` layer is
GNU OpenMP, which is not fork-safe: once a process has run a parallel kernel on
it, a ``fork()`` child (a torch ``DataLoader`` worker under the default start
method, a ``multiprocessing`` "fork" pool) that runs a parallel kernel is
killed by Numba with SIGTERM ("Terminating: fork() called from a process
already using GNU OpenMP, this is unsafe."), whatever ``numba.set_num_threads``
says: the check sits at the top of Numba's ``parallel_for``.

What we do about it, in order:

1. TBB by default. TBB is fork-safe and thread-safe, and ``tbb`` is a
   dependency where PyPI has wheels (Linux x86_64). ``pip install tbb`` puts
   ``libtbb.so.12`` in ``<prefix>/lib``, which the dynamic loader does not
   search in a virtualenv or most non-conda Pythons, so Numba would not find it
   and fall back to ``omp``. :func:`prefer_tbb` loads that file by its
   installed path (from the ``tbb`` distribution's file list) before Numba
   starts its threading layer; Numba then finds it by name and its default
   order picks ``tbb``.
2. The user's choice wins. Loading TBB only makes it available; Numba still
   picks the layer from ``NUMBA_THREADING_LAYER`` / ``numba.config.THREADING_LAYER``
   and ``NUMBA_THREADING_LAYER_PRIORITY``, so ``omp`` or ``workqueue`` asked for
   by name is what runs (and TBB is then not loaded at all). Nothing is done
   once the layer has started (the user's own parallel code ran first).
3. A fork child of a GNU OpenMP process runs the array-API code, no Numba.
   An ``os.register_at_fork`` hook (registered when ``graft_array`` is
   imported, nothing imported) marks a child whose parent had started the GNU
   ``omp`` layer; there :func:`graft_array.which_backend` answers
   ``"array_api"`` for NumPy arrays and CPU tensors (the generic twins, which
   the tests hold to the Numba kernels' results; ``Selection.backend`` says
   ``"array_api"``; slower on large stacks), and an explicit ``backend="numba"``
   raises :class:`graft_array.BackendUnavailableError` instead of a silent
   SIGTERM.

The ``workqueue`` layer is fork-safe too but not thread-safe (two Python
threads launching parallel kernels at once abort the process), so it is left
as Numba's last resort, not chosen here.
"""

import os
import sys

__all__ = ["forked_from_openmp", "prefer_tbb"]

#: the file Numba's TBB check opens by name, per platform
_TBB_LIB = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}

_forked_from_openmp = False
_prepared = False


def _gnu_openmp_started():
    """Whether this process has started Numba's ``omp`` layer on GNU OpenMP (looks at sys.modules only)."""
    par = sys.modules.get("numba.np.ufunc.parallel")
    if par is None or not getattr(par, "_is_initialized", False):
        return False
    if getattr(par, "_threading_layer", None) != "omp":
        return False
    omp = sys.modules.get("numba.np.ufunc.omppool")
    return os.name == "posix" and getattr(omp, "openmp_vendor", "GNU") == "GNU"


def _after_fork_in_child():
    global _forked_from_openmp
    _forked_from_openmp = _forked_from_openmp or _gnu_openmp_started()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_from_openmp():
    """True in a ``fork()`` child (or grandchild) of a process that had started Numba's GNU OpenMP layer.

    Numba terminates such a process at its first parallel kernel; the Numba
    backend is not used there.
    """
    return _forked_from_openmp


def _tbb_may_be_chosen():
    """False when the user asked Numba for ``omp`` or ``workqueue`` by name (then TBB is not loaded at all)."""
    from numba.core import config

    layer = os.environ.get("NUMBA_THREADING_LAYER", config.THREADING_LAYER)
    return str(layer).lower() not in ("omp", "workqueue")


def _load_pip_tbb():
    """Load ``libtbb`` from the ``tbb`` wheel's install location, unless the loader already finds one."""
    import ctypes

    name = _TBB_LIB.get(sys.platform)
    if name is None:
        return
    try:
        ctypes.CDLL(name)  # found by name already (conda, system TBB, an RPATH): Numba will find it too
        return
    except OSError:
        pass
    from importlib import metadata

    try:
        files = metadata.distribution("tbb").files or ()
    except metadata.PackageNotFoundError:
        return
    for f in files:
        if f.name == name:
            path = f.locate()
            if os.path.exists(path):
                ctypes.CDLL(os.fspath(path), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
            return


def prefer_tbb():
    """Once per process, before Numba starts its threading layer: make a pip-installed TBB loadable.

    Does nothing once the layer has started, or when the user asked for ``omp``
    or ``workqueue`` by name. Loading the library only makes TBB available:
    which layer runs is still Numba's choice, from the user's settings. Any
    failure leaves Numba to its usual order (omp, then workqueue).
    """
    global _prepared
    if _prepared:
        return
    _prepared = True
    par = sys.modules.get("numba.np.ufunc.parallel")
    if par is not None and getattr(par, "_is_initialized", False):
        return
    try:
        if _tbb_may_be_chosen():
            _load_pip_tbb()
    except Exception:  # pragma: no cover - a broken TBB install must not break selection
        pass
