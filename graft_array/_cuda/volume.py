"""Launcher of ``volume.cu``'s greedy volume: on a CuPy array (the GPU), or on NumPy through the CPU shim."""

import numpy as np

from . import build
from .deim import _block

MAX_ROWS = 1024
MAX_COLS = max(build.RECT_RANKS)
_TALL_THREADS = 256


def fits(n, r):
    return 1 <= n <= MAX_ROWS and 1 <= r <= MAX_COLS


def fits_tall(n, r):
    return 1 <= n < 2**31 and 1 <= r <= MAX_COLS


_suffix = build.suffix


def instance(dtype, r):
    return build.sized("volume_batched_r", build.RECT_RANKS, r, dtype)


def volume_batched(V, kk, *, fmad=False):
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
        build.emulate(instance(V.dtype, r), B, _block(n), V, n, r, kk, float(np.finfo(V.dtype).eps), piv, rank)
    return piv, rank


def volume_tall(V, kk, *, fmad=False):
    """``(piv (kk,) int64, rank (1,) int64)`` of one CuPy matrix V (n, r) of any height: 2 kk + 1 launches.

    The launches depend on the shapes only (no host synchronisation): an
    initial pass (norms), then per step a scan over every row and a one-block commit.
    """
    import cupy

    n, r = V.shape
    V = cupy.ascontiguousarray(V)
    suf = _suffix(V.dtype)
    stats = cupy.zeros(2, dtype=cupy.float64)
    stats[0:1] = build.abs_max(cupy, V[None])
    rho = cupy.empty(n, dtype=cupy.float64)
    rho0 = cupy.empty(n, dtype=cupy.float64)
    nrm = cupy.empty(n, dtype=cupy.float64)
    sel = cupy.empty(n, dtype=cupy.uint8)
    blocks = build.grid_blocks(n, _TALL_THREADS, 4096)
    build.function("volume.cu", "volume_tall_init_" + suf, fmad=fmad)((blocks,), (_TALL_THREADS,),
                                                           (V, np.int64(n), np.int32(r), stats, rho, rho0, nrm, sel))
    stats[1] = nrm.max()
    Q = cupy.zeros((kk, r), dtype=cupy.float64)
    state = cupy.zeros(2, dtype=cupy.int32)
    piv = cupy.empty(kk, dtype=cupy.int64)
    pv = cupy.empty(blocks, dtype=cupy.float64)
    pi = cupy.empty(blocks, dtype=cupy.int32)
    pnv = cupy.empty(blocks, dtype=cupy.float64)
    pni = cupy.empty(blocks, dtype=cupy.int32)
    scan = build.function("volume.cu", "volume_tall_scan_" + suf, fmad=fmad)
    commit = build.function("volume.cu", "volume_tall_commit_" + suf, fmad=fmad)
    eps = np.float64(np.finfo(V.dtype).eps)
    for j in range(kk):
        scan((blocks,), (_TALL_THREADS,), (V, np.int64(n), np.int32(r), stats, Q, state, rho, rho0, nrm, sel,
                                           pv, pi, pnv, pni))
        commit((1,), (_TALL_THREADS,), (V, np.int64(n), np.int32(r), np.int32(kk), eps, stats, Q, state, sel,
                                        pv, pi, pnv, pni, np.int32(blocks), np.int32(j), piv))
    return piv, state[:1].astype(cupy.int64)


def emulate_volume_tall(V, kk, threads=64, max_blocks=4):
    """The same launches on one NumPy matrix, each run by the CPU shim."""
    V = np.ascontiguousarray(V)
    n, r = V.shape
    suf = _suffix(V.dtype)
    stats = np.zeros(2)
    stats[0:1] = build.abs_max(np, V[None])
    rho, rho0, nrm = np.zeros(n), np.zeros(n), np.zeros(n)
    sel = np.zeros(n, dtype=np.uint8)
    blocks = build.grid_blocks(n, threads, max_blocks)
    build.emulate("volume_tall_init_" + suf, blocks, threads, V, n, r, stats, rho, rho0, nrm, sel)
    stats[1] = nrm.max() if n else 0.0
    Q = np.zeros((kk, r))
    state = np.zeros(2, dtype=np.int32)
    piv = np.zeros(kk, dtype=np.int64)
    pv, pnv = np.zeros(blocks), np.zeros(blocks)
    pi, pni = np.zeros(blocks, dtype=np.int32), np.zeros(blocks, dtype=np.int32)
    eps = float(np.finfo(V.dtype).eps)
    for j in range(kk):
        build.emulate("volume_tall_scan_" + suf, blocks, threads, V, n, r, stats, Q, state, rho, rho0, nrm, sel,
                      pv, pi, pnv, pni)
        build.emulate("volume_tall_commit_" + suf, 1, threads, V, n, r, kk, eps, stats, Q, state, sel, pv, pi, pnv,
                      pni, blocks, j, piv)
    return piv, state[:1].astype(np.int64)
