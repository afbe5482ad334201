"""Launcher of ``deim.cu``'s batched DEIM: on a CuPy array (the GPU), or on NumPy through the CPU shim."""

import numpy as np

from . import build

MAX_ROWS = 1024  # one thread per row, one block per batch
MAX_COLS = max(build.DEIM_RANKS)


def fits(n, kk):
    """Whether the batched kernel takes batches of ``n`` rows and ``kk`` pivot columns."""
    return 1 <= n <= MAX_ROWS and 1 <= kk <= MAX_COLS


def instance(dtype, kk):
    """The kernel's C name for ``dtype`` (float32 / float64) and ``kk`` columns (the smallest R >= kk)."""
    return build.sized("deim_batched_r", build.DEIM_RANKS, kk, dtype)


def _block(n):
    return max(32, -(-n // 32) * 32)


def deim_batched(V, kk, *, fmad=True):
    """``(piv (B, kk) int64, rank (B,) int64, bad (B,) int32)`` of the CuPy array ``V`` (B, n, r), on its device.

    One launch for all batches, on CuPy's current stream; no host synchronisation.
    """
    import cupy

    B, n, r = V.shape
    V = cupy.ascontiguousarray(V)
    piv = cupy.empty((B, kk), dtype=cupy.int64)
    rank = cupy.empty(B, dtype=cupy.int64)
    bad = cupy.empty(B, dtype=cupy.int32)
    if B:
        fn = build.function("deim.cu", instance(V.dtype, kk), fmad=fmad)
        eps = float(np.finfo(V.dtype).eps)
        fn((B,), (_block(n),), (V, np.int32(n), np.int32(r), np.int32(kk), np.float64(eps), piv, rank, bad))
    return piv, rank, bad


def emulate_deim_batched(V, kk):
    """The same kernel on a NumPy array, run by the CPU shim (slow: one std::thread per GPU thread)."""
    V = np.ascontiguousarray(V)
    B, n, r = V.shape
    piv = np.zeros((B, kk), dtype=np.int64)
    rank = np.zeros(B, dtype=np.int64)
    bad = np.zeros(B, dtype=np.int32)
    if B:
        build.emulate(instance(V.dtype, kk), B, _block(n), V, n, r, kk, float(np.finfo(V.dtype).eps), piv, rank, bad)
    return piv, rank, bad
