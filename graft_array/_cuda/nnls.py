"""Launcher of ``nnls.cu``'s weights: on CuPy arrays (the GPU), or on NumPy through the CPU shim."""

import numpy as np

from . import build
from .criterion import fits  # noqa: F401  (the criterion's sizes: both take the selected rows)
from .interop import as_cupy, like, on_stream_of

_THREADS = 64


def instance(kk):
    return build.sized("nnls_weights_k", build.RHO_SIZES, kk)


def nnls_weights(K, b, sizes, n, reg, *, fmad=False):
    """Weights (B, kk) float64 of each batch's first ``sizes[b]`` pivots, zero beyond, on the device (CuPy).

    The fit of :func:`graft_array._numba.criterion.nnls_batched`: K (B, kk, kk),
    b (B, kk) float64, sizes (B,) int64. One launch, on CuPy's current stream.
    """
    import cupy

    K, b = (cupy.ascontiguousarray(a, dtype=cupy.float64) for a in (K, b))
    sizes = cupy.ascontiguousarray(sizes, dtype=cupy.int64)
    B, kk = b.shape
    out = cupy.zeros((B, kk), dtype=cupy.float64)
    if B and kk:
        fn = build.function("nnls.cu", instance(kk), fmad=fmad)
        fn((B,), (_THREADS,), (K, b, sizes, np.int32(kk), np.float64(n), np.float64(reg), out))
    return out


def nnls_weights_like(K, b, sizes, n, reg):
    """:func:`nnls_weights` on the caller's device arrays (CuPy or CUDA torch), returned as the same kind."""
    with on_stream_of(K):
        return like(nnls_weights(as_cupy(K), as_cupy(b), as_cupy(sizes), n, reg), K)


def emulate_nnls_weights(K, b, sizes, n, reg):
    """The same kernel on NumPy arrays, run by the CPU shim."""
    K, b = (np.ascontiguousarray(a, dtype=np.float64) for a in (K, b))
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    B, kk = b.shape
    out = np.zeros((B, kk))
    if B and kk:
        build.emulate(instance(kk), B, _THREADS, K, b, sizes, kk, float(n), float(reg), out)
    return out
