"""Launcher of ``refine.cu``: Goreinov's maxvol swaps per batch, on the GPU or through the CPU shim."""

import numpy as np

from . import build
from .deim import _block

MAX_ROWS = 1024
MAX_K = 64


def fits(n, k):
    return 1 <= k <= MAX_K and k <= n <= MAX_ROWS


_suffix = build.suffix


def refine(V, piv, rank, tol, max_iters, *, fmad=False):
    """Refine the CuPy pivots ``piv`` (B, k) of V (B, n, r) in place where ``rank == k``; one launch.

    Returns ``(converged (B,) bool, iterations (B,) int64)`` on the device (-1: singular start, untouched).
    """
    import cupy

    B, n, r = V.shape
    k = piv.shape[1]
    if not (piv.flags.c_contiguous and piv.dtype == cupy.int64):
        raise ValueError("refine: 'piv' is refined in place and must be a C-contiguous int64 array")
    V = cupy.ascontiguousarray(V)
    conv = cupy.ones(B, dtype=cupy.uint8)
    iters = cupy.zeros(B, dtype=cupy.int64)
    if B:
        scratch = cupy.empty((B, 2, k, k), dtype=cupy.float64)
        build.function("refine.cu", "refine_" + _suffix(V.dtype), fmad=fmad)(
            (B,), (_block(n),), (V, piv, cupy.ascontiguousarray(rank, dtype=cupy.int64), np.int32(n), np.int32(r),
                                 np.int32(k), np.float64(tol), np.int32(max_iters),
                                 np.float64(np.finfo(V.dtype).eps), scratch, conv, iters))
    return conv.astype(cupy.bool_), iters


def emulate_refine(V, piv, rank, tol, max_iters):
    """The same kernel on NumPy arrays (``piv`` refined in place), run by the CPU shim."""
    V = np.ascontiguousarray(V)
    B, n, r = V.shape
    k = piv.shape[1]
    if not (piv.flags.c_contiguous and piv.dtype == np.int64):
        raise ValueError("emulate_refine: 'piv' is refined in place and must be a C-contiguous int64 array")
    rank = np.ascontiguousarray(rank, dtype=np.int64)
    conv = np.ones(B, dtype=np.uint8)
    iters = np.zeros(B, dtype=np.int64)
    if B:
        scratch = np.zeros((B, 2, k, k))
        build.emulate("refine_" + _suffix(V.dtype), B, _block(n), V, piv, rank, n, r, k, float(tol), int(max_iters),
                      float(np.finfo(V.dtype).eps), scratch, conv, iters)
    return conv.astype(bool), iters
