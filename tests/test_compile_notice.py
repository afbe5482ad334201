"""The one-line notice on stderr when our kernels are really compiled (and only then)."""

import os
import subprocess
import sys

CODE = (
    "import numpy as np, numba\n"
    "from graft_array._numba.checks import all_finite\n"
    "@numba.njit\n"
    "def someone_elses(x):\n"
    "    return x + 1\n"
    "someone_elses(1)\n"  # a compile of a function that is not ours says nothing
    "import sys; print('MARK', file=sys.stderr, flush=True)\n"
    "assert all_finite(np.zeros(5))\n"
    "assert all_finite(np.zeros(7))\n"  # same signature: no second compile, no second line
    "assert all_finite(np.zeros((2, 3), np.float32))\n"  # a new signature compiles, but the notice was given
)


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300)


def test_notice_once_on_a_cold_cache_and_never_on_a_warm_one(tmp_path):
    from graft_array._numba import COMPILE_NOTICE

    cold = _run(tmp_path)
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.count(COMPILE_NOTICE) == 1, cold.stderr
    assert cold.stderr.index("MARK") < cold.stderr.index(COMPILE_NOTICE), cold.stderr
    assert cold.stdout == ""
    warm = _run(tmp_path)  # the kernels now load from the disk cache
    assert warm.returncode == 0, warm.stderr
    assert COMPILE_NOTICE not in warm.stderr, warm.stderr


# ---- the cache stamp: every source a kernel is compiled from -------------------------------------------------------
def _our_cached_kernels():
    import importlib
    import pkgutil

    import numba

    import graft_array
    from graft_array import _numba, strategies

    found = []
    for pkg in (_numba, strategies):
        for info in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            for value in vars(mod).values():
                if isinstance(value, numba.core.registry.CPUDispatcher) and getattr(value, "_cache", None) is not None:
                    if getattr(value._cache, "_impl", None) is not None and \
                            value.py_func.__module__.startswith(graft_array.__name__):
                        found.append(value)
    return found


def test_every_cached_kernel_is_stamped_with_all_kernel_sources():
    from graft_array._numba import sources_digest

    kernels = _our_cached_kernels()
    assert len(kernels) > 50  # deim, compact, volume, the strategies' loops, _common.rank_tol_factor, ...
    for k in kernels:
        locator = k._cache._impl.locator
        assert type(locator).__name__.startswith("Graft"), (k.py_func.__qualname__, type(locator))
        own, all_sources = locator.get_source_stamp()
        assert all_sources == sources_digest()


def test_the_digest_changes_with_any_kernel_source(tmp_path):
    import shutil

    from graft_array._numba import _ROOT, digest, kernel_sources

    files = kernel_sources()
    assert os.path.join(_ROOT, "_common.py") in files and os.path.join(_ROOT, "_numba", "simd.py") in files
    copies = []
    for path in files:
        dst = tmp_path / os.path.relpath(path, _ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        copies.append(str(dst))
    import graft_array._numba as gn

    old = gn._ROOT
    try:
        gn._ROOT = str(tmp_path)
        base = digest(copies)
        with open(copies[0], "a") as f:  # one byte in _common.py (not the kernels' own files)
            f.write(" ")
        assert digest(copies) != base
    finally:
        gn._ROOT = old


def test_functions_outside_graft_array_keep_numbas_own_locator(tmp_path):
    import importlib.util

    import graft_array._numba  # noqa: F401  (the stamped locators are installed)

    mod = tmp_path / "someone_elses.py"
    mod.write_text("import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("someone_elses", mod)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    locator = m.f._cache._impl.locator
    assert not type(locator).__name__.startswith("Graft")
    assert m.f(1) == 2
