"""Launcher of ``tournament.cu``: tall DEIM and tournament pivoting, one launch per level of the tree.

On the GPU (CuPy arrays) or, for the tests, through the CPU shim (NumPy). The
levels follow :func:`graft_array.testing.reference_tournament`: tiles of
``tile_rows`` consecutive candidates, each tile's DEIM winners sorted by row,
until one tile is left, whose DEIM gives the pivots and the rank. The number of
levels depends on n and tile_rows only, never on the data, so the host needs no
synchronisation between the launches.
"""

import numpy as np

from . import build

MAX_COLS = 64
_THREADS = 256


MAX_TILES = 65535  # the tiles go on the grid's y dimension


def fits(kk):
    return 1 <= kk <= MAX_COLS


def fits_tiles(n, kk, tile_rows):
    """Whether every level's tiles fit the grid (a small ``tile_rows`` on a tall matrix may not)."""
    return all(tiles <= MAX_TILES for _, tiles, _ in _levels(n, kk, tile_rows))


def _levels(n, kk, tile_rows):
    """The candidates' count at each level: [(m, tiles, m_next)], the last one with tiles == 1."""
    out, m = [], n
    while True:
        if m <= tile_rows:
            out.append((m, 1, min(kk, m)))
            return out
        tiles = -(-m // tile_rows)
        last = m - (tiles - 1) * tile_rows
        nxt = (tiles - 1) * min(kk, tile_rows) + min(kk, last)
        out.append((m, tiles, nxt))
        m = nxt


_suffix = build.suffix


def tournament(V, kk, tile_rows, *, fmad=False):
    """``(piv (B, kk) int64, rank (B,) int64)`` of the CuPy array V (B, n, r) (finite), one launch per level.

    Needs :func:`fits_tiles` (else ValueError) and B >= 1.
    """
    import cupy

    B, n, r = V.shape
    if B == 0 or not fits_tiles(n, kk, tile_rows):
        raise ValueError(f"tournament: {B} batches of {n} rows in tiles of {tile_rows}: no batch, or more than "
                         f"{MAX_TILES} tiles in a level")
    V = cupy.ascontiguousarray(V)
    amax = build.abs_max(cupy, V)
    cand = cupy.ascontiguousarray(cupy.broadcast_to(cupy.arange(n, dtype=cupy.int64), (B, n)))
    fn = build.function("tournament.cu", "deim_tiles_" + _suffix(V.dtype), fmad=fmad)
    eps = float(np.finfo(V.dtype).eps)
    rank = cupy.zeros(B, dtype=cupy.int64)
    for m, tiles, nxt in _levels(n, kk, tile_rows):
        rows = tiles * tile_rows if tiles > 1 else m
        work = cupy.empty((B * rows * kk,), dtype=V.dtype)
        norms = cupy.empty((B * rows,), dtype=cupy.float64)
        alive = cupy.empty((B * rows,), dtype=cupy.uint8)
        out = cupy.empty((B, nxt), dtype=cupy.int64)
        fn((B, tiles), (_THREADS,), (V, np.int32(n), np.int32(r), np.int32(kk), cand, np.int32(m),
                                      np.int32(tile_rows if tiles > 1 else m), amax, np.float64(eps), work, norms,
                                      alive, out, np.int32(nxt), rank))
        cand = out
    return cand, rank


def emulate_tournament(V, kk, tile_rows, threads=64):
    """The same launches on a NumPy array, each run by the CPU shim (``threads`` per block: any multiple of 32;
    fewer than the GPU's 256 keep the shim's thread start-ups cheap and give each thread more rows)."""
    V = np.ascontiguousarray(V)
    B, n, r = V.shape
    amax = build.abs_max(np, V)
    cand = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int64), (B, n)))
    kernel = "deim_tiles_" + _suffix(V.dtype)
    eps = float(np.finfo(V.dtype).eps)
    rank = np.zeros(B, dtype=np.int64)
    for m, tiles, nxt in _levels(n, kk, tile_rows):
        rows = tiles * tile_rows if tiles > 1 else m
        work = np.zeros(B * rows * kk, dtype=V.dtype)
        norms = np.zeros(B * rows)
        alive = np.zeros(B * rows, dtype=np.uint8)
        out = np.zeros((B, nxt), dtype=np.int64)
        build.emulate(kernel, (B, tiles), threads, V, n, r, kk, cand, m, tile_rows if tiles > 1 else m, amax, eps,
                      work, norms, alive, out, nxt, rank)
        cand = out
    return cand, rank
