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
