"""Launcher of ``criterion.cu``'s rho curve: on CuPy arrays (the GPU), or on NumPy through the CPU shim."""

import numpy as np

from .._agnostic import criterion as _generic
from .._agnostic.criterion import SPAN_TOL
from . import build
from .interop import as_cupy, like, on_stream_of

MAX_K = max(build.RHO_SIZES)
_THREADS = 128


def fits(kk):
    return 1 <= kk <= MAX_K


def instance(kk):
    return build.sized("rho_curve_k", build.RHO_SIZES, kk)


def rho_curve(K, b, gg, *, fmad=False):
    """``(rho (B, kk) float64, skipped (B, kk) bool)`` of CuPy arrays K (B, kk, kk), b (B, kk), gg (B,), float64.

    One launch for all batches, on CuPy's current stream; no host synchronisation.
    """
    import cupy

    K, b, gg = (cupy.ascontiguousarray(a, dtype=cupy.float64) for a in (K, b, gg))
    B, kk = b.shape
    rho = cupy.empty((B, kk), dtype=cupy.float64)
    skipped = cupy.empty((B, kk), dtype=cupy.uint8)
    if B and kk:
        fn = build.function("criterion.cu", instance(kk), fmad=fmad)
        fn((B,), (_THREADS,), (K, b, gg, np.int32(kk), np.float64(SPAN_TOL * SPAN_TOL), rho, skipped))
    return rho, skipped.astype(cupy.bool_)


def emulate_rho_curve(K, b, gg):
    """The same kernel on NumPy arrays, run by the CPU shim."""
    K, b, gg = (np.ascontiguousarray(a, dtype=np.float64) for a in (K, b, gg))
    B, kk = b.shape
    rho = np.zeros((B, kk))
    skipped = np.zeros((B, kk), dtype=np.uint8)
    if B and kk:
        build.emulate(instance(kk), B, _THREADS, K, b, gg, kk, SPAN_TOL * SPAN_TOL, rho, skipped)
    return rho, skipped.astype(bool)


def rho_curve_like(K, b, gg):
    """:func:`rho_curve` on the caller's device arrays (CuPy or CUDA torch), returned as the same kind."""
    with on_stream_of(K):
        rho, skipped = rho_curve(as_cupy(K), as_cupy(b), as_cupy(gg))
    return like(rho, K), like(skipped, K)


def rho_curve_on(name, xp, K, b, gg):
    """rho(m) (B, kk) of the Grams K (B, kk, kk) on backend ``name``: this kernel (one launch for every batch)
    for "cuda" where it fits, else the generic array-API code."""
    if name == "cuda" and fits(K.shape[1]):
        return rho_curve_like(K, b, gg)[0]
    return _generic.rho_curve(xp, K, b, gg)[0]
