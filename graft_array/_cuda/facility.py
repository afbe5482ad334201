"""Launcher of ``facility.cu``: CRAIG's / CREST's facility location per batch, on the GPU or the CPU shim."""

import numpy as np

from .deim import _block
from .interop import as_cupy, like, on_stream_of

MAX_ROWS = 1024


def fits(n, m):
    return 1 <= m <= n <= MAX_ROWS


def facility_location(K, m, *, fmad=False):
    """``(order (B, m) int64, weights (B, m) float64)`` from the CuPy Grams K (B, n, n) float64; one launch."""
    import cupy

    from . import build

    K = cupy.ascontiguousarray(K, dtype=cupy.float64)
    B, n, _ = K.shape
    order = cupy.empty((B, m), dtype=cupy.int64)
    weights = cupy.empty((B, m), dtype=cupy.float64)
    if B:
        work = cupy.empty((B, n, n), dtype=cupy.float64)
        fn = build.function("facility.cu", "facility_location", fmad=fmad)
        fn((B,), (_block(n),), (K, np.int32(n), np.int32(m), work, order, weights))
    return order, weights


def facility_location_like(K, m):
    """:func:`facility_location` on the caller's device arrays (CuPy or CUDA torch), returned as the same kind."""
    with on_stream_of(K):
        order, weights = facility_location(as_cupy(K), m)
    return like(order, K), like(weights, K)


def emulate_facility_location(K, m):
    """The same kernel on NumPy Grams, run by the CPU shim."""
    from . import build

    K = np.ascontiguousarray(K, dtype=np.float64)
    B, n, _ = K.shape
    order = np.zeros((B, m), dtype=np.int64)
    weights = np.zeros((B, m))
    if B:
        work = np.zeros((B, n, n))
        build.emulate("facility_location", B, _block(n), K, n, m, work, order, weights)
    return order, weights
