"""Launcher of ``deim.cu``'s batched DEIM: on a CuPy array (the GPU), or on NumPy through the CPU shim."""

import functools

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


WARPS = 4  # batches per block of the warp kernel (GRAFT_WARPS in deim_warp.cu)


def warp_instance(dtype, n, r, kk):
    """The warp kernel's instance for batches of n x r and kk pivots, or None where it does not apply.

    It takes r <= 32 columns and n <= 256 rows (n >= kk), held in registers: Q = 1, 2, 4 or 8 rows per lane,
    as many as :data:`build.DEIM_WARP` compiles for the dtype and R, the smallest of 8, 16, 32 >= r.
    """
    if not (1 <= kk <= r <= 32 and kk <= n):
        return None
    R = next(R for R in (8, 16, 32) if R >= r)
    Q = next((q for q in (1, 2, 4, 8) if 32 * q >= n), None)
    suf = build.suffix(dtype)
    if Q is None or Q not in build.DEIM_WARP.get((suf, R), ()):
        return None
    return f"deim_warp_{suf}_r{R}_q{Q}"


def _choose(dtype, n, r, kk, warp):
    """The warp kernel's instance, or None for the block kernel (``warp``: None where it applies, True, False)."""
    wname = warp_instance(dtype, n, r, kk) if warp is not False else None
    if warp and wname is None:
        raise ValueError(f"deim_batched: warp=True needs n <= 256 rows, kk <= r <= 32 columns and n >= kk (and an "
                         f"instance for the dtype); got n={n}, r={r}, kk={kk} ({np.dtype(dtype).name})")
    return wname


def _block(n):
    return max(32, -(-n // 32) * 32)


def deim_batched(V, kk, *, fmad=False, warp=None):
    """``(piv (B, kk) int64, rank (B,) int64, bad (B,) int32)`` of the CuPy array ``V`` (B, n, r), on its device.

    One launch for all batches, on CuPy's current stream; no host synchronisation. ``warp``: the warp
    kernel (one warp per batch, see :func:`warp_instance`) where it applies (None, the default), always
    (True: ValueError where it does not apply) or never (False: the block kernel, a thread per row).
    """
    import cupy

    B, n, r = V.shape
    V = cupy.ascontiguousarray(V)
    piv = cupy.empty((B, kk), dtype=cupy.int64)
    rank = cupy.empty(B, dtype=cupy.int64)
    bad = cupy.empty(B, dtype=cupy.int32)
    wname = _choose(V.dtype, n, r, kk, warp)
    if B:
        eps = float(np.finfo(V.dtype).eps)
        if wname is not None:
            fn = build.function("deim_warp.cu", wname, fmad=fmad)
            fn((-(-B // WARPS),), (32 * WARPS,), (V, np.int32(B), np.int32(n), np.int32(r), np.int32(kk),
                                                  np.float64(eps), piv, rank, bad))
        else:
            fn = build.function("deim.cu", instance(V.dtype, kk), fmad=fmad)
            fn((B,), (_block(n),), (V, np.int32(n), np.int32(r), np.int32(kk), np.float64(eps), piv, rank, bad))
    return piv, rank, bad


def emulate_deim_batched(V, kk, *, warp=None):
    """The same kernels on a NumPy array, run by the CPU shim (slow: one std::thread per GPU thread), chosen as
    :func:`deim_batched` chooses them (``warp``: None, True or False)."""
    V = np.ascontiguousarray(V)
    B, n, r = V.shape
    piv = np.zeros((B, kk), dtype=np.int64)
    rank = np.zeros(B, dtype=np.int64)
    bad = np.zeros(B, dtype=np.int32)
    eps = float(np.finfo(V.dtype).eps)
    wname = _choose(V.dtype, n, r, kk, warp)
    if B and wname is not None:
        build.emulate(wname, -(-B // WARPS), 32 * WARPS, V, B, n, r, kk, eps, piv, rank, bad)
    elif B:
        build.emulate(instance(V.dtype, kk), B, _block(n), V, n, r, kk, eps, piv, rank, bad)
    return piv, rank, bad


# --------------------------------------------------------------------------- tall DEIM (deim_tall.cu)

TALL_THREADS = 256
TALL_MAX_BLOCKS = 1024  # blocks per batch: a grid-stride scan, so any n
MAX_TALL_BATCHES = 65535  # the batches go on the grid's y dimension
MAX_TALL_COLS = 1 << 10


def fits_tall(B, n, kk):
    """Whether deim_tall.cu takes B matrices of n rows (row indices are int32) and kk <= n pivots."""
    return 1 <= B <= MAX_TALL_BATCHES and 1 <= kk <= min(n, MAX_TALL_COLS) and n < 2**31


def _tall_launches(xp, V, kk, *, threads, max_blocks, launch):
    """The 2 kk + 1 launches of the tall DEIM on ``V`` (B, n, r) with array module ``xp`` (CuPy, or NumPy for the
    shim), ``max_blocks`` blocks per batch at most; ``launch(kernel, grid, threads, *args)`` runs one. Returns
    ``(piv (B, kk) int64, rank (B,) int64)``."""
    B, n, r = V.shape
    if not fits_tall(B, n, kk):
        raise ValueError(f"deim_tall: needs 1 <= B <= {MAX_TALL_BATCHES}, 1 <= kk <= min(n, {MAX_TALL_COLS}) and "
                         f"n < 2**31; got B={B}, n={n}, kk={kk}")
    blocks = build.grid_blocks(n, threads, max_blocks)
    suf = build.suffix(V.dtype)
    amax = build.abs_max(xp, V)
    W = xp.empty(B * n * kk, dtype=V.dtype)
    nrm = xp.empty(B * n, dtype=xp.float64)
    sel = xp.empty(B * n, dtype=xp.uint8)
    U = xp.zeros(B * kk, dtype=V.dtype)
    state = xp.zeros(2 * B, dtype=xp.int32)
    piv = xp.zeros((B, kk), dtype=xp.int64)
    pv, pnv = xp.empty(B * blocks, dtype=xp.float64), xp.empty(B * blocks, dtype=xp.float64)
    pi, pni = xp.empty(B * blocks, dtype=xp.int32), xp.empty(B * blocks, dtype=xp.int32)
    eps = float(np.finfo(V.dtype).eps)
    launch("deim_tall_init_" + suf, (blocks, B), threads, V, n, r, kk, amax, W, nrm, sel)
    for j in range(kk):
        launch("deim_tall_scan_" + suf, (blocks, B), threads, n, kk, j, W, U, nrm, sel, state, pv, pi, pnv, pni)
        launch("deim_tall_commit_" + suf, (B, 1), threads, n, r, kk, j, eps, amax, W, U, sel, state, pv, pi, pnv,
               pni, blocks, piv)
    return piv, state[0::2].astype(xp.int64)


def deim_tall(V, kk, *, fmad=False):
    """``(piv (B, kk) int64, rank (B,) int64)`` of the CuPy array V (B, n, r) (finite, :func:`fits_tall`, else
    ValueError): DEIM of any number of rows, 2 kk + 1 launches whatever B and n (no host synchronisation), on
    CuPy's current stream."""
    import cupy

    return _tall_launches(cupy, cupy.ascontiguousarray(V), kk, threads=TALL_THREADS, max_blocks=TALL_MAX_BLOCKS,
                          launch=functools.partial(build.launch, fmad=fmad))


def emulate_deim_tall(V, kk, *, threads=64, max_blocks=4):
    """The same launches on a NumPy array, each run by the CPU shim (few threads and blocks: thread start-ups)."""
    return _tall_launches(np, np.ascontiguousarray(V), kk, threads=threads, max_blocks=max_blocks,
                          launch=build.emulate)
