"""Launcher of ``volume.cu``'s greedy volume: on a CuPy array (the GPU), or on NumPy through the CPU shim."""

import ctypes

import numpy as np

from . import build
from .deim import _block

MAX_ROWS = 1024
MAX_COLS = max(build.RECT_RANKS)


def fits(n, r):
    return 1 <= n <= MAX_ROWS and 1 <= r <= MAX_COLS


def instance(dtype, r):
    suf = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]
    return f"volume_batched_{suf}_r{next(R for R in build.RECT_RANKS if R >= r)}"


def volume_batched(V, kk, *, fmad=True):
    """``(piv (B, kk) int64, rank (B,) int64)`` of the CuPy array V (B, n, r), kk <= r; one launch."""
    import cupy

    B, n, r = V.shape
    V = cupy.ascontiguousarray(V)
    piv = cupy.empty((B, kk), dtype=cupy.int64)
    rank = cupy.empty(B, dtype=cupy.int64)
    if B:
        fn = build.function("volume.cu", instance(V.dtype, r), fmad=fmad)
        fn((B,), (_block(n),), (V, np.int32(n), np.int32(r), np.int32(kk), np.float64(np.finfo(V.dtype).eps), piv,
                                rank))
    return piv, rank


def emulate_volume_batched(V, kk):
    """The same kernel on a NumPy array, run by the CPU shim."""
    V = np.ascontiguousarray(V)
    B, n, r = V.shape
    piv = np.zeros((B, kk), dtype=np.int64)
    rank = np.zeros(B, dtype=np.int64)
    if B:
        fn = getattr(build.emulator(), "emulate_" + instance(V.dtype, r))
        P = ctypes.c_void_p
        fn(ctypes.c_uint(B), ctypes.c_uint(1), ctypes.c_uint(_block(n)), V.ctypes.data_as(P), ctypes.c_int(n),
           ctypes.c_int(r),
           ctypes.c_int(kk), ctypes.c_double(float(np.finfo(V.dtype).eps)), piv.ctypes.data_as(P),
           rank.ctypes.data_as(P))
    return piv, rank
