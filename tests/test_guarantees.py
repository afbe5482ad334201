"""The promises of the README's "Guarantees" section that no other test file holds on its own.

* memory stays O(n r): a tall maxvol and a many-batch select grow the process's
  peak memory by a small multiple of their input, nowhere near n x n;
* results do not depend on the number of threads;
* no global random state is touched (NumPy's legacy one, Python's ``random``, torch's).
"""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads

STRATEGIES = ("graft", "random", "craig", "gradmatch")

_PEAK = r"""
import resource, sys
import numpy as np
import graft_array as ga

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB

rng = np.random.default_rng(0)
what = sys.argv[1]
if what == "maxvol":
    V = rng.standard_normal((400_000, 8))                      # 25.6 MB; n x n would be 1.28 TB
    for method in ("deim", "volume", "tournament"):
        ga.maxvol(V[:8192], 12, method=method)                 # compile first (also the row-parallel paths)
    before = peak_mib()
    for method in ("deim", "volume", "tournament"):
        ga.maxvol(V, 12, method=method)
    nbytes = V.nbytes
else:
    F = rng.standard_normal((200, 256, 32))                    # 51,200 samples of 32 features, 13 MB
    G = ga.LastLayerGrads(rng.standard_normal((200, 256, 10)), rng.standard_normal((200, 256, 16)))
    for s in ("graft", "craig", "gradmatch"):
        ga.select(F[:20], ga.LastLayerGrads(G[0][:20], G[1][:20]), strategy=s, random_state=0)
    before = peak_mib()
    for s in ("graft", "craig", "gradmatch"):
        ga.select(F, G, strategy=s, random_state=0)
    nbytes = F.nbytes + G[0].nbytes + G[1].nbytes
print(peak_mib() - before, nbytes / 2**20)
"""


@pytest.mark.parametrize("what", ["maxvol", "select"])
def test_memory_stays_a_small_multiple_of_the_input(what):
    """Peak RSS growth of the calls, after a warm-up, in a fresh process (Linux's ru_maxrss).

    An n x n matrix over the maxvol input (n = 400,000) would need 1.28 TB, one
    over all 51,200 samples of the select call 21 GB; batch-sized Grams
    (256 x 256 per batch, per thread) are a few MB. The bound, 6 x the input,
    leaves room for one float64 copy of it and the per-batch work buffers.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("ru_maxrss in KiB is Linux's")
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _PEAK, what], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    grown, input_mib = map(float, out.stdout.split())
    assert grown <= 6 * input_mib, f"peak memory grew by {grown:.1f} MiB for {input_mib:.1f} MiB of input"


def _inputs(rng):
    F = rng.standard_normal((6, 64, 24))
    G = LastLayerGrads(rng.standard_normal((6, 64, 5)), rng.standard_normal((6, 64, 12)))
    return F, G


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_results_do_not_depend_on_the_thread_count(rng, strategy):
    import numba

    F, G = _inputs(rng)
    V = rng.standard_normal((5, 300, 6))
    old = numba.get_num_threads()
    out = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            s = ga.select(F, G, strategy=strategy, fraction=0.3, random_state=7, return_info=True)
            rows = [ga.maxvol(V, 9, method=m) for m in ("deim", "volume", "tournament")]
            out.append((s, rows))
    finally:
        numba.set_num_threads(old)
    (a, ra), (b, rb) = out[0], out[-1]
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.weights, b.weights)
    for x, y in zip(ra, rb):
        assert_array_equal(x, y)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_global_random_state_is_touched(rng, strategy):
    torch = pytest.importorskip("torch")
    F, G = _inputs(rng)
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    ga.select(F, G, strategy=strategy, solver="randomized", random_state=3)
    ga.select(F, G, strategy=strategy, solver="randomized", random_state=None)
    ga.select(torch.as_tensor(F), LastLayerGrads(*(torch.as_tensor(g) for g in G)), strategy=strategy,
              random_state=np.random.default_rng(1))
    ga.maxvol(F, 5, method="tournament")
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)
