"""Launcher of ``gradmatch.cu``'s pursuit, and the fill that completes it, on the GPU or through the CPU shim."""

import numpy as np

from ..strategies.random import random_keys
from .deim import _block
from .interop import as_cupy, like, on_stream_of

MAX_ROWS = 1024
MAX_M = 64


def fits(n, m):
    return 1 <= m <= min(n, MAX_M) and n <= MAX_ROWS


def pursuit(K, b, gg, m, lam, *, fmad=False):
    """``(act (B, m) int64, w (B, m), q (B,) int64, chosen (B, n) bool)`` of CuPy Grams; one launch."""
    import cupy

    from . import build

    K, b, gg = (cupy.ascontiguousarray(a, dtype=cupy.float64) for a in (K, b, gg))
    B, n, _ = K.shape
    act = cupy.empty((B, m), dtype=cupy.int64)
    w = cupy.empty((B, m), dtype=cupy.float64)
    q = cupy.empty(B, dtype=cupy.int64)
    chosen = cupy.empty((B, n), dtype=cupy.uint8)
    if B:
        fn = build.function("gradmatch.cu", "gradmatch_pursuit", fmad=fmad)
        fn((B,), (_block(n),), (K, b, gg, np.int32(n), np.int32(m), np.float64(lam), act, w, q, chosen))
    return act, w, q, chosen.astype(cupy.bool_)


def emulate_pursuit(K, b, gg, m, lam):
    """The same kernel on NumPy Grams, run by the CPU shim."""
    from . import build

    K, b, gg = (np.ascontiguousarray(a, dtype=np.float64) for a in (K, b, gg))
    B, n, _ = K.shape
    act = np.zeros((B, m), dtype=np.int64)
    w = np.zeros((B, m))
    q = np.zeros(B, dtype=np.int64)
    chosen = np.zeros((B, n), dtype=np.uint8)
    if B:
        build.emulate("gradmatch_pursuit", B, _block(n), K, b, gg, n, m, float(lam), act, w, q, chosen)
    return act, w, q, chosen.astype(bool)


def finish(xp, act, w, q, chosen, m, seed, starts):
    """The active rows, then the batch's other rows by random key at the fitted weights' mean; weights sum to n.

    The fill and normalisation of :func:`graft_array.strategies.gradmatch._gradmatch_one_nb`, vectorised
    over batches in the arrays' namespace (on their device).
    """
    from ..strategies.gradmatch import _take1

    nb, n = chosen.shape
    dev = getattr(act, "device", None)
    keys = xp.asarray(random_keys(seed, starts, n), device=dev)
    fill = xp.astype(xp.argsort(xp.where(chosen, 2.0, keys), axis=1, stable=True), xp.int64)  # chosen rows last
    pos = xp.arange(m, dtype=xp.int64, device=dev)[None, :]
    qq = q[:, None]
    fitted = pos < qq
    at = xp.clip(pos - qq, 0, n - 1)
    fill_rows = _take1(xp, fill, at)
    order = xp.where(fitted, act, fill_rows)
    qf = xp.astype(q, xp.float64)
    mean = xp.where(qf > 0, xp.sum(w, axis=1) / xp.where(qf > 0, qf, 1.0), 1.0)
    weights = xp.where(fitted, w, mean[:, None])
    total = xp.sum(weights, axis=1)[:, None]
    weights = xp.where(total > 0, weights * (n / xp.where(total > 0, total, 1.0)), n / m)
    return order, weights


def gradmatch_like(xp, K, b, gg, m, lam, seed, starts):
    """GradMatch's order and weights (B, m) on the caller's device arrays (CuPy or CUDA torch)."""
    with on_stream_of(K):
        act, w, q, chosen = pursuit(as_cupy(K), as_cupy(b), as_cupy(gg), m, lam)
    act, w, q, chosen = (like(a, K) for a in (act, w, q, chosen))
    return finish(xp, act, w, q, chosen, m, seed, starts)
