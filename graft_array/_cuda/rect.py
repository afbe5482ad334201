"""Launcher of ``rect.cu``'s rectangular extension: on CuPy arrays (the GPU), or on NumPy through the CPU shim."""

import numpy as np

from . import build
from .deim import _block

MAX_ROWS = 1024
MAX_COLS = max(build.RECT_RANKS)


def fits(n, r, k):
    return 1 <= r < k <= n <= MAX_ROWS and r <= MAX_COLS


def instance(dtype, r):
    return build.sized("rect_extend_r", build.RECT_RANKS, r, dtype)


def rect_extend(V, piv, rank, k, *, fmad=False):
    """``(B, k)`` int64 rows of the CuPy arrays V (B, n, r), piv (B, r) int64, rank (B,) int64, on their device.

    ``piv`` holds each batch's r greedy pivots (full rank where ``rank == r``);
    the result starts with them. One launch, on CuPy's current stream.
    """
    import cupy

    B, n, r = V.shape
    V = cupy.ascontiguousarray(V)
    out = cupy.empty((B, k), dtype=cupy.int64)
    scratch = cupy.empty((B, k - r + 1, n), dtype=cupy.float64)
    if B:
        fn = build.function("rect.cu", instance(V.dtype, r), fmad=fmad)
        fn((B,), (_block(n),), (V, cupy.ascontiguousarray(piv, dtype=cupy.int64),
                                cupy.ascontiguousarray(rank, dtype=cupy.int64), np.int32(n), np.int32(r),
                                np.int32(k), out, scratch))
    return out


def emulate_rect_extend(V, piv, rank, k):
    """The same kernel on NumPy arrays, run by the CPU shim."""
    V = np.ascontiguousarray(V)
    B, n, r = V.shape
    piv = np.ascontiguousarray(piv, dtype=np.int64)
    rank = np.ascontiguousarray(rank, dtype=np.int64)
    out = np.zeros((B, k), dtype=np.int64)
    scratch = np.zeros((B, k - r + 1, n))
    if B:
        build.emulate(instance(V.dtype, r), B, _block(n), V, piv, rank, n, r, k, out, scratch)
    return out
