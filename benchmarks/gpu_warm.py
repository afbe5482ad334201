"""Compile the Numba kernels that the GPU checks compare against, in parallel processes, into Numba's disk cache.

    python benchmarks/gpu_warm.py [--jobs 8]

On a fresh device machine every process would otherwise JIT-compile the same
CPU references (about two minutes in one process): ``check-gpu``, each test
file and ``bench_gpu.py``. Run this first (``gpu_session.sh`` runs it beside
the NVRTC compile); the later processes load the cached machine code. Each task
compiles one group of kernels on a small problem of the signature the checks
use (dtype, contiguity). Nothing is measured and nothing is asserted.
"""

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _task(name):
    import warnings

    warnings.simplefilter("ignore")  # compiling only: the small problems warn (rank, gradient span)
    import numpy as np

    from graft_array._numba.maxvol import run_maxvol

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    kind, _, dt = name.partition(":")
    dtype = np.float32 if dt == "f32" else np.float64
    V = rng.standard_normal((3, 100, 12)).astype(dtype)
    if kind in ("deim", "volume", "tournament"):
        run_maxvol(V, 12, method=kind, **({"tile_rows": 24} if kind == "tournament" else {}))
    elif kind == "refine":
        run_maxvol(V, 12, method="deim", refine=True, tol=1.01, max_iters=20)
    elif kind == "rect":
        from graft_array._numba.rect import _rect_batched

        piv, rank, _, _ = run_maxvol(V, 12, method="deim")
        _rect_batched(V, piv, rank, 24)
    elif kind == "criterion":
        from graft_array._numba.criterion import nnls_batched, rho_curve

        G = rng.standard_normal((3, 8, 5))
        K = G @ G.transpose(0, 2, 1)
        b = rng.standard_normal((3, 8))
        rho_curve(K, b, np.ones(3))
        nnls_batched(K, b, np.array([1, 4, 8]), 128.0, 0.0)
    elif kind == "gradmatch":
        from graft_array.strategies._batch import batch_gram_plain_nb
        from graft_array.strategies.gradmatch import gradmatch_plain_nb

        G = rng.standard_normal((2, 40, 6))
        gradmatch_plain_nb(G, 8, 0.5, np.arange(2, dtype=np.uint64) * 40, np.uint64(3))
        batch_gram_plain_nb(G[0])
    elif kind == "compact":  # the batch-interleaved DEIM (bench_maxvol's batched row): a whole group per thread
        import numba

        run_maxvol(rng.standard_normal((8 * numba.get_num_threads(), 100, 12)).astype(dtype), 12, method="deim")
    elif kind == "select":
        import graft_array

        F = rng.standard_normal((8, 128, 32)).astype(dtype)
        G = rng.standard_normal((8, 128, 10)).astype(dtype)
        graft_array.select(F, G, fraction=0.25, random_state=0)
        graft_array.maxvol(V, 12)
    return name, time.perf_counter() - t0


TASKS = [f"{k}:{d}" for k in ("deim", "volume", "tournament", "refine", "rect", "select") for d in ("f32", "f64")]
TASKS += ["criterion:f64", "gradmatch:f64", "compact:f64"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=min(len(TASKS), os.cpu_count() or 1))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as ex:
        for name, dt in ex.map(_task, TASKS):
            print(f"warm {name}: {dt:.1f} s", flush=True)
    print(f"warm: all {len(TASKS)} tasks in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
