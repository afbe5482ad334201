"""Numba DEIM kernels: greedy LU row pivots (= LAPACK ``getrf``), batched, row-parallel and on tiles.

The contract (pivot order, ties, tolerances, fill rule, ...) is the one of
:mod:`graft_array._agnostic.maxvol`. Many batches run in one compiled call
parallel over batches (:func:`_deim_batched`); a few large batches run one at a
time with their rows split over the threads (:func:`_deim_rowpar`). The
tournament (:mod:`graft_array._numba.tournament`) runs :func:`_tile_deim` on
its tiles.

Layout tricks
-------------
* **Column-major work buffer.** Each batch (or tournament tile) is transposed
  once into ``W`` of shape ``(k, m)``: ``W[c]`` is column ``c`` of the matrix,
  contiguous over the rows, so every elimination loop is a contiguous,
  vectorised axpy over rows and the pivot search is a contiguous scan.
* **No row swaps.** A selected row is *zeroed* in the remaining columns
  instead of being swapped to the front. Rows keep their positions (which are
  in ascending row-index order), so "ties go to the lowest index" is simply
  "first position", and the unselected rows never need compacting. A zero row
  cannot win the next argmax unless every candidate is <= tol (then a fill row
  is taken anyway). The price is updating up to ``k`` extra (zero) rows.
* **Blocked, rank-8 updates.** Pivots are chosen in panels of ``_BS = 8``
  columns. Inside a panel each column is brought up to date just before its
  pivot search with one rank-s pass (left-looking); after the panel every
  trailing column gets a single rank-8 pass (right-looking, row-blocked so that
  the eight multiplier vectors stay in L1). One load/store of a column per
  eight multiply-adds instead of one per multiply-add. The updates are written
  as small separate kernels (``_upd1/2/4/8``, row-parallel DEIM): LLVM vectorises those reliably,
  it does not when they are inlined into a large loop nest.
* **Vectorised argmax.** LLVM does not vectorise float max-reductions without
  no-NaN function attributes, so the pivot search compares the IEEE bit
  patterns of ``|x|`` as integers (monotone for finite floats), chunk by chunk,
  and then scans only the winning chunk for the first position.
* float32 stays float32 in the elimination (like ``sgetrf``).
* **Whole-vector kernels for the batched DEIM and the tournament tiles**
  (``_deim_vcore``): the same panels and decisions, written on explicit 256-bit
  vectors (``_Vec`` intrinsics): the row count is padded with zero rows to whole
  vectors, the trailing update is a 3-vector x 4-column register tile (4 x 2 and
  4 x 1 for the last columns), each panel column's
  update tracks its first argmax lane by lane in the same pass (no separate
  pivot search), the pivot row is computed on vectors of columns, and the next
  batch is prefetched a slice per step. Each batch's ``max |V_b|`` pass also
  flags NaN / infinity, so the wrapper needs no separate finiteness pass.
"""

import numpy as np
from numba import njit, prange

from .simd import (
    _FM,
    _absmax_finite,
    _absmax_flat,
    _elim_scale,
    _fill_pick,
    _fmax,
    _one_like,
    _padded,
    _prefetch_at,
    _rank_factor,
    _row_norms,
    _scale_cols,
    _simd_width,
    _transpose_block,
    _vabsmax,
    _vargmax,
    _vargmax_final,
    _vargmax_merge,
    _vbcast,
    _vfnma,
    _vgather_col,
    _vhmax,
    _viota,
    _vlanesum_isnan,
    _vload,
    _vmul,
    _vnonfinite,
    _vsplat,
    _vstore,
    _vzero,
)

_BS = 8  # panel width of the blocked elimination (rank of the trailing updates)
_RB = 256  # rows per cache block of the trailing update (8 multiplier blocks stay in L1)
_NOT_FOUND = -1


# ---------------------------------------------------------------------------
# Column kernels on the column-major work buffer W (k, m), LLVM-vectorised (row-parallel DEIM)
# ---------------------------------------------------------------------------
# They index with unsigned integers: with signed indices numba emits the
# negative-index wraparound, which hides the affine access pattern from LLVM
# ("unsafe indirect dependence") and the loops stay scalar. Each update also
# returns max |W[c, i]| of the updated rows (a free by-product) for the pivot
# search of the next column.


@njit(cache=True, nogil=True, fastmath=_FM)
def _col_absmax(W, c, i0, i1):
    """``max |W[c, i]|`` for ``i0 <= i < i1`` (``i0 < i1``)."""
    c = np.uint64(c)
    best = abs(W[c, np.uint64(i0)])
    for i in range(np.uint64(i0), np.uint64(i1)):
        best = _fmax(best, abs(W[c, i]))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _first_abs_equal(W, c, val, m):
    """Lowest ``i < m`` with ``|W[c, i]| == val``, or ``_NOT_FOUND``.

    Branch-free (vectorised) minimum of the matching indices over blocks of 256
    rows, stopping after the first block that matches: a plain early-exit scan
    costs a branch misprediction at the (random) pivot position.
    """
    cu = np.uint64(c)
    for i0 in range(0, m, 256):
        i1 = min(i0 + 256, m)
        pos = np.int64(i1)
        for i in range(np.uint64(i0), np.uint64(i1)):
            k = np.int64(i)
            pos = min(pos, k if abs(W[cu, i]) == val else np.int64(i1))
        if pos < i1:
            return pos
    return _NOT_FOUND


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd1(W, c, j, u0, i0, i1):
    """``W[c, i] -= W[j, i] u0`` for ``i0 <= i < i1``; returns the new ``max |W[c, i]|``."""
    c = np.uint64(c)
    j = np.uint64(j)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - W[j, i] * u0
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd2(W, c, j, u0, u1, i0, i1):
    """Rank-2 update of column ``c`` by multiplier columns ``j, j+1``, see :func:`_upd1`."""
    c = np.uint64(c)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - (W[j0, i] * u0 + W[j1, i] * u1)
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd4(W, c, j, u0, u1, u2, u3, i0, i1):
    """Rank-4 update of column ``c`` by multiplier columns ``j .. j+3``, see :func:`_upd1`."""
    c = np.uint64(c)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    j2 = j0 + np.uint64(2)
    j3 = j0 + np.uint64(3)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - ((W[j0, i] * u0 + W[j1, i] * u1) + (W[j2, i] * u2 + W[j3, i] * u3))
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd8(W, c, j, u0, u1, u2, u3, u4, u5, u6, u7, i0, i1):
    """Rank-8 update of column ``c`` by multiplier columns ``j .. j+7``, see :func:`_upd1`.

    One load/store of ``W[c]`` per eight multiply-adds.
    """
    c = np.uint64(c)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    j2 = j0 + np.uint64(2)
    j3 = j0 + np.uint64(3)
    j4 = j0 + np.uint64(4)
    j5 = j0 + np.uint64(5)
    j6 = j0 + np.uint64(6)
    j7 = j0 + np.uint64(7)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - (((W[j0, i] * u0 + W[j1, i] * u1) + (W[j2, i] * u2 + W[j3, i] * u3)) + (
            (W[j4, i] * u4 + W[j5, i] * u5) + (W[j6, i] * u6 + W[j7, i] * u7)))
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd8x2(W, c, j, u0, u1, u2, u3, u4, u5, u6, u7, v0, v1, v2, v3, v4, v5, v6, v7, i0, i1):
    """Rank-8 update of the two columns ``c`` (by ``u``) and ``c+1`` (by ``v``).

    Shares the multiplier loads between the two columns (10 loads per 16
    multiply-adds). Returns the new ``max |W[c, i]|`` of the first column.
    """
    c0 = np.uint64(c)
    c1 = c0 + np.uint64(1)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    j2 = j0 + np.uint64(2)
    j3 = j0 + np.uint64(3)
    j4 = j0 + np.uint64(4)
    j5 = j0 + np.uint64(5)
    j6 = j0 + np.uint64(6)
    j7 = j0 + np.uint64(7)
    best = W[c0, np.uint64(i0)] - W[c0, np.uint64(i0)]
    for i in range(np.uint64(i0), np.uint64(i1)):
        l0 = W[j0, i]
        l1 = W[j1, i]
        l2 = W[j2, i]
        l3 = W[j3, i]
        l4 = W[j4, i]
        l5 = W[j5, i]
        l6 = W[j6, i]
        l7 = W[j7, i]
        x = W[c0, i] - (((l0 * u0 + l1 * u1) + (l2 * u2 + l3 * u3)) + ((l4 * u4 + l5 * u5) + (l6 * u6 + l7 * u7)))
        y = W[c1, i] - (((l0 * v0 + l1 * v1) + (l2 * v2 + l3 * v3)) + ((l4 * v4 + l5 * v5) + (l6 * v6 + l7 * v7)))
        W[c0, i] = x
        W[c1, i] = y
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _trailing_update(W, j0, j1, kk, U, i0, i1):
    """Rank-(j1 - j0) update of every column ``c >= j1`` over rows ``[i0, i1)``.

    Returns ``max |W[j1, i]|`` over those rows (the next pivot column).
    """
    c = j1
    best = W[c, i0] - W[c, i0]
    if j1 - j0 == 8:
        while c + 1 < kk:
            cm = _upd8x2(W, c, j0, U[0, c], U[1, c], U[2, c], U[3, c], U[4, c], U[5, c], U[6, c], U[7, c],
                         U[0, c + 1], U[1, c + 1], U[2, c + 1], U[3, c + 1],
                         U[4, c + 1], U[5, c + 1], U[6, c + 1], U[7, c + 1], i0, i1)
            if c == j1:
                best = cm
            c += 2
    while c < kk:
        cm = _rank_update(W, c, j0, j1 - j0, U, i0, i1)
        if c == j1:
            best = cm
        c += 1
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _rank_update(W, c, j0, s, U, i0, i1):
    """``W[c, i] -= sum_{t<s} W[j0+t, i] U[t, c]`` for ``i0 <= i < i1``, in passes of rank 8/4/2/1.

    Returns ``max |W[c, i]|`` over the updated rows (``s >= 1``).
    """
    t = 0
    best = W[c, i0] - W[c, i0]
    while s - t >= 8:
        best = _upd8(W, c, j0 + t, U[t, c], U[t + 1, c], U[t + 2, c], U[t + 3, c],
                     U[t + 4, c], U[t + 5, c], U[t + 6, c], U[t + 7, c], i0, i1)
        t += 8
    if s - t >= 4:
        best = _upd4(W, c, j0 + t, U[t, c], U[t + 1, c], U[t + 2, c], U[t + 3, c], i0, i1)
        t += 4
    if s - t >= 2:
        best = _upd2(W, c, j0 + t, U[t, c], U[t + 1, c], i0, i1)
        t += 2
    if s - t >= 1:
        best = _upd1(W, c, j0 + t, U[t, c], i0, i1)
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _pivot_row(U, W, s, j0, p, f, c0, c1):
    """Row ``s`` of ``U``: pivot row ``p`` in columns ``[c0, c1)`` after the panel's first ``s`` steps, times ``f``.

    The multiplier columns are kept unscaled (``W[j0 + t] = pivot_t * L_t``) and
    the factor ``f = 1 / pivot_s`` goes into ``U`` instead, which saves a pass
    over every pivot column: ``U[s, c] = f (W[c, p] - sum_{t<s} W[j0 + t, p] U[t, c])``.
    """
    su = np.uint64(s)
    pu = np.uint64(p)
    for c in range(np.uint64(c0), np.uint64(c1)):
        U[su, c] = W[c, pu]
    for t in range(np.uint64(s)):
        a = W[np.uint64(j0) + t, pu]
        for c in range(np.uint64(c0), np.uint64(c1)):
            U[su, c] -= a * U[t, c]
    for c in range(np.uint64(c0), np.uint64(c1)):
        U[su, c] *= f


# ---------------------------------------------------------------------------
# DEIM on whole vectors (the batched and tile kernels)
# ---------------------------------------------------------------------------
# Panels of _BS, left-looking inside the panel, one rank-_BS pass per trailing
# column (the decisions of the scalar kernels above). The work buffer has its
# row count padded to whole vectors with zero rows (they stay zero: every update
# of a zero row by zero multipliers is zero, and a zero can never be the pivot
# of a step that is accepted, as the step's max is > tol >= 0), and every loop
# runs on explicit register tiles of 4 vectors x 1 or 2 columns.


@njit(cache=True, nogil=True)
def _vpanel(W, j, j0, s, U, mv):
    """Column ``j`` of a panel: ``W[j, i] -= sum_{t<s} W[j0 + t, i] U[t, j]`` (``i < mv``), then its first argmax.

    One fused multiply-add per ``t``, in order (nothing is written when
    ``s == 0``). Returns ``(max |W[j, i]|, lowest i attaining it)``, tracked lane
    by lane during the same pass (the index is meaningless when the max is 0).
    """
    L = _simd_width(W)
    m0 = _vzero(W)
    m1 = m0
    m2 = m0
    m3 = m0
    x0 = _viota(W, 0)
    x1 = x0
    x2 = x0
    x3 = x0
    i = 0
    while i + 4 * L <= mv:
        a0 = _vload(W, j, i)
        a1 = _vload(W, j, i + L)
        a2 = _vload(W, j, i + 2 * L)
        a3 = _vload(W, j, i + 3 * L)
        if s > 0:
            for t in range(s):
                u = _vbcast(U, t, j)
                r = j0 + t
                a0 = _vfnma(_vload(W, r, i), u, a0)
                a1 = _vfnma(_vload(W, r, i + L), u, a1)
                a2 = _vfnma(_vload(W, r, i + 2 * L), u, a2)
                a3 = _vfnma(_vload(W, r, i + 3 * L), u, a3)
            _vstore(W, j, i, a0)
            _vstore(W, j, i + L, a1)
            _vstore(W, j, i + 2 * L, a2)
            _vstore(W, j, i + 3 * L, a3)
        m0, x0 = _vargmax(m0, x0, a0, _viota(W, i))
        m1, x1 = _vargmax(m1, x1, a1, _viota(W, i + L))
        m2, x2 = _vargmax(m2, x2, a2, _viota(W, i + 2 * L))
        m3, x3 = _vargmax(m3, x3, a3, _viota(W, i + 3 * L))
        i += 4 * L
    while i < mv:
        a0 = _vload(W, j, i)
        if s > 0:
            for t in range(s):
                a0 = _vfnma(_vload(W, j0 + t, i), _vbcast(U, t, j), a0)
            _vstore(W, j, i, a0)
        m0, x0 = _vargmax(m0, x0, a0, _viota(W, i))
        i += L
    m0, x0 = _vargmax_merge(m0, x0, m1, x1)
    m2, x2 = _vargmax_merge(m2, x2, m3, x3)
    m0, x0 = _vargmax_merge(m0, x0, m2, x2)
    return _vargmax_final(m0, x0)


@njit(cache=True, nogil=True)
def _vrank1(W, c, j0, s, U, i0, i1):
    """``W[c, i] -= sum_{t<s} W[j0 + t, i] U[t, c]`` for ``i0 <= i < i1`` (whole vectors), as in :func:`_vpanel`."""
    L = _simd_width(W)
    i = i0
    while i + 4 * L <= i1:
        a0 = _vload(W, c, i)
        a1 = _vload(W, c, i + L)
        a2 = _vload(W, c, i + 2 * L)
        a3 = _vload(W, c, i + 3 * L)
        for t in range(s):
            u = _vbcast(U, t, c)
            r = j0 + t
            a0 = _vfnma(_vload(W, r, i), u, a0)
            a1 = _vfnma(_vload(W, r, i + L), u, a1)
            a2 = _vfnma(_vload(W, r, i + 2 * L), u, a2)
            a3 = _vfnma(_vload(W, r, i + 3 * L), u, a3)
        _vstore(W, c, i, a0)
        _vstore(W, c, i + L, a1)
        _vstore(W, c, i + 2 * L, a2)
        _vstore(W, c, i + 3 * L, a3)
        i += 4 * L
    while i < i1:
        a0 = _vload(W, c, i)
        for t in range(s):
            a0 = _vfnma(_vload(W, j0 + t, i), _vbcast(U, t, c), a0)
        _vstore(W, c, i, a0)
        i += L


@njit(cache=True, nogil=True)
def _vrank2(W, c, j0, s, U, i0, i1):
    """:func:`_vrank1` on the two columns ``c, c + 1`` (a 4-vector x 2-column register tile)."""
    L = _simd_width(W)
    c1 = c + 1
    i = i0
    while i + 4 * L <= i1:
        a0 = _vload(W, c, i)
        a1 = _vload(W, c, i + L)
        a2 = _vload(W, c, i + 2 * L)
        a3 = _vload(W, c, i + 3 * L)
        b0 = _vload(W, c1, i)
        b1 = _vload(W, c1, i + L)
        b2 = _vload(W, c1, i + 2 * L)
        b3 = _vload(W, c1, i + 3 * L)
        for t in range(s):
            u = _vbcast(U, t, c)
            v = _vbcast(U, t, c1)
            r = j0 + t
            x = _vload(W, r, i)
            a0 = _vfnma(x, u, a0)
            b0 = _vfnma(x, v, b0)
            x = _vload(W, r, i + L)
            a1 = _vfnma(x, u, a1)
            b1 = _vfnma(x, v, b1)
            x = _vload(W, r, i + 2 * L)
            a2 = _vfnma(x, u, a2)
            b2 = _vfnma(x, v, b2)
            x = _vload(W, r, i + 3 * L)
            a3 = _vfnma(x, u, a3)
            b3 = _vfnma(x, v, b3)
        _vstore(W, c, i, a0)
        _vstore(W, c, i + L, a1)
        _vstore(W, c, i + 2 * L, a2)
        _vstore(W, c, i + 3 * L, a3)
        _vstore(W, c1, i, b0)
        _vstore(W, c1, i + L, b1)
        _vstore(W, c1, i + 2 * L, b2)
        _vstore(W, c1, i + 3 * L, b3)
        i += 4 * L
    while i < i1:
        a0 = _vload(W, c, i)
        b0 = _vload(W, c1, i)
        for t in range(s):
            x = _vload(W, j0 + t, i)
            a0 = _vfnma(x, _vbcast(U, t, c), a0)
            b0 = _vfnma(x, _vbcast(U, t, c1), b0)
        _vstore(W, c, i, a0)
        _vstore(W, c1, i, b0)
        i += L


@njit(cache=True, nogil=True)
def _vrank4(W, c, j0, s, U, i0, i1):
    """:func:`_vrank1` on the four columns ``c .. c + 3`` (a 3-vector x 4-column register tile).

    Per step ``t``: 3 row loads and 4 broadcasts for 12 fused multiply-adds
    (the 4 x 2 tile of :func:`_vrank2` needs 6 loads for 8); rows left over
    from whole 3-vector groups go one vector at a time, through the same
    multiply-adds.
    """
    L = _simd_width(W)
    c1 = c + 1
    c2 = c + 2
    c3 = c + 3
    i = i0
    while i + 3 * L <= i1:
        a0 = _vload(W, c, i)
        a1 = _vload(W, c, i + L)
        a2 = _vload(W, c, i + 2 * L)
        b0 = _vload(W, c1, i)
        b1 = _vload(W, c1, i + L)
        b2 = _vload(W, c1, i + 2 * L)
        d0 = _vload(W, c2, i)
        d1 = _vload(W, c2, i + L)
        d2 = _vload(W, c2, i + 2 * L)
        e0 = _vload(W, c3, i)
        e1 = _vload(W, c3, i + L)
        e2 = _vload(W, c3, i + 2 * L)
        for t in range(s):
            r = j0 + t
            x0 = _vload(W, r, i)
            x1 = _vload(W, r, i + L)
            x2 = _vload(W, r, i + 2 * L)
            u = _vbcast(U, t, c)
            a0 = _vfnma(x0, u, a0)
            a1 = _vfnma(x1, u, a1)
            a2 = _vfnma(x2, u, a2)
            u = _vbcast(U, t, c1)
            b0 = _vfnma(x0, u, b0)
            b1 = _vfnma(x1, u, b1)
            b2 = _vfnma(x2, u, b2)
            u = _vbcast(U, t, c2)
            d0 = _vfnma(x0, u, d0)
            d1 = _vfnma(x1, u, d1)
            d2 = _vfnma(x2, u, d2)
            u = _vbcast(U, t, c3)
            e0 = _vfnma(x0, u, e0)
            e1 = _vfnma(x1, u, e1)
            e2 = _vfnma(x2, u, e2)
        _vstore(W, c, i, a0)
        _vstore(W, c, i + L, a1)
        _vstore(W, c, i + 2 * L, a2)
        _vstore(W, c1, i, b0)
        _vstore(W, c1, i + L, b1)
        _vstore(W, c1, i + 2 * L, b2)
        _vstore(W, c2, i, d0)
        _vstore(W, c2, i + L, d1)
        _vstore(W, c2, i + 2 * L, d2)
        _vstore(W, c3, i, e0)
        _vstore(W, c3, i + L, e1)
        _vstore(W, c3, i + 2 * L, e2)
        i += 3 * L
    while i < i1:
        a0 = _vload(W, c, i)
        b0 = _vload(W, c1, i)
        d0 = _vload(W, c2, i)
        e0 = _vload(W, c3, i)
        for t in range(s):
            x0 = _vload(W, j0 + t, i)
            a0 = _vfnma(x0, _vbcast(U, t, c), a0)
            b0 = _vfnma(x0, _vbcast(U, t, c1), b0)
            d0 = _vfnma(x0, _vbcast(U, t, c2), d0)
            e0 = _vfnma(x0, _vbcast(U, t, c3), e0)
        _vstore(W, c, i, a0)
        _vstore(W, c1, i, b0)
        _vstore(W, c2, i, d0)
        _vstore(W, c3, i, e0)
        i += L


@njit(cache=True, nogil=True)
def _vpivot_row(U, W, s, j0, p, f, c0, kk):
    """:func:`_pivot_row` on whole vectors of columns.

    ``U`` and ``W`` have room for ``kk`` rounded up to whole vectors (columns of
    ``U``, rows of ``W``), zero past ``kk``. The columns from ``c0`` rounded
    down to a vector boundary are computed; the extra ones (``< c0``) of row
    ``s`` are never read.
    """
    L = _simd_width(U)
    fv = _vsplat(U, f)
    for c in range(c0 - c0 % L, kk, L):
        a = _vgather_col(W, c, p)
        for t in range(s):
            a = _vfnma(_vbcast(W, j0 + t, p), _vload(U, t, c), a)
        _vstore(U, s, c, _vmul(a, fv))


@njit(cache=True, nogil=True)
def _vtrailing(W, j0, j1, kk, U, i0, i1):
    """Rank-(j1 - j0) update of every column ``c >= j1`` over rows ``[i0, i1)`` (whole vectors)."""
    s = j1 - j0
    c = j1
    while c + 3 < kk:
        _vrank4(W, c, j0, s, U, i0, i1)
        c += 4
    while c + 1 < kk:
        _vrank2(W, c, j0, s, U, i0, i1)
        c += 2
    if c < kk:
        _vrank1(W, c, j0, s, U, i0, i1)


@njit(cache=True, nogil=True)
def _deim_vcore(W, m, kk, tol, Vb, rows, piv, sel, nrm, U, pf):
    """Greedy LU row pivots (DEIM) of the ``m x kk`` matrix held column-major in ``W``, on whole vectors.

    Parameters
    ----------
    W : (>= kk rounded up to whole vectors, >= ceil(m / lanes) * lanes) float32/float64 array
        ``W[c, i]`` is entry ``(i, c)`` of the matrix; overwritten (multipliers).
        The rows past ``kk`` and the entries from ``m`` on are zero.
    m, kk : int
        Rows and columns used; the pivot positions are in ``range(m)``.
    tol : float
        A step whose largest remaining ``|entry|`` is ``<= tol`` takes a fill row.
    Vb : (n, r) array
        Source batch; fill rows are chosen by the norm of ``Vb[rows[i], :]``.
    rows : int64 array
        Row of ``Vb`` behind each position (ascending, so the lowest position is
        the lowest row index).
    piv : int64 array (>= kk)
        Output: pivot positions in selection order.
    sel, nrm : bool / float64 scratch arrays (>= m).
    U : (_BS, >= kk rounded up to whole vectors) array of W's dtype, zero past ``kk``
        Scratch: the panel's pivot rows.
    pf : 1-D array (may be empty)
        Prefetched into the cache a slice per step: the next batch.

    Returns
    -------
    rank : int
        Number of non-fill pivots.
    min_ok : float
        Smallest accepted ``|pivot|`` (``inf`` if none): the tournament uses it to
        check that a larger tolerance would have taken the same decisions.

    Notes
    -----
    Panel ``[j0, j1)``: for each of its columns ``j`` (left-looking) the updates
    of the panel's earlier steps are applied in one rank-s pass, the pivot rows
    of those steps are zeroed, the pivot ``p`` is the first largest ``|W[j]|``,
    the multipliers ``W[j] / W[j, p]`` replace the column, and row ``s`` of
    ``U`` receives the fully updated pivot row ``p`` for all later columns.
    After the panel each trailing column gets one rank-(j1 - j0) pass (and its
    pivot rows are zeroed). A fill step stores zero multipliers.
    """
    L = _simd_width(W)
    mv = (m + L - 1) // L * L
    for i in range(m):
        sel[i] = False
    have_nrm = False
    rank = 0
    min_ok = np.inf
    one = _one_like(W)
    zero = one - one
    epl = 2 * L  # elements per cache line
    npf = pf.shape[0]
    per = ((npf + kk - 1) // kk + epl - 1) // epl * epl
    for j0 in range(0, kk, _BS):
        j1 = min(j0 + _BS, kk)
        for j in range(j0, j1):
            for e in range(j * per, min(j * per + per, npf), epl):
                _prefetch_at(pf, e)
            s = j - j0
            amax, p = _vpanel(W, j, j0, s, U, mv)
            if s > 0:
                stale = False
                for t in range(s):
                    q = piv[j0 + t]
                    if q == p:
                        stale = True  # the max was a round-off residue of an eliminated row
                    W[j, q] = zero
                if stale:
                    amax, p = _vpanel(W, j, j0, 0, U, mv)
            if amax > tol:
                sel[p] = True
                piv[j] = p
                rank += 1
                if amax < min_ok:
                    min_ok = float(amax)
                _vpivot_row(U, W, s, j0, p, one / W[j, p], j + 1, kk)
            else:
                if not have_nrm:
                    _row_norms(Vb, rows, m, nrm)
                    have_nrm = True
                p = _fill_pick(nrm, sel, m)
                sel[p] = True
                piv[j] = p
                for i in range(mv):
                    W[j, i] = zero
                for c in range(j + 1, kk):
                    U[s, c] = zero
        if j1 < kk:
            for i0 in range(0, mv, _RB):
                _vtrailing(W, j0, j1, kk, U, i0, min(i0 + _RB, mv))
            for t in range(j1 - j0):
                q = piv[j0 + t]
                for c in range(j1, kk):
                    W[c, q] = zero
    return rank, min_ok


@njit(cache=True, nogil=True)
def _load_cols(Vb, rows, m, kk, W):
    """Transpose ``Vb[rows[i], :kk]`` (``i < m``) into ``W[:kk, :m]``.

    Blocks of one vector width go through :func:`_transpose_block`, for 64
    rows at a time per column group (the source rows stay in L1/L2 while each
    column of ``W`` receives whole cache lines); the ragged edges are copied
    element by element.
    """
    vw = _simd_width(W)
    mv = m - m % vw
    kv = kk - kk % vw
    for i0 in range(0, mv, 64):
        i1 = min(i0 + 64, mv)
        for c0 in range(0, kv, vw):
            for ib in range(i0, i1, vw):
                _transpose_block(W, ib, Vb, rows, c0)
        for c in range(kv, kk):
            for i in range(i0, i1):
                W[c, i] = Vb[rows[i], c]
    for i in range(mv, m):
        x = Vb[rows[i]]
        for c in range(kk):
            W[c, i] = x[c]


@njit(cache=True, nogil=True)
def _load_cols_max(Vb, rows, m, kk, W):
    """:func:`_load_cols`, also returning ``(max |entry|, all finite)`` of the loaded entries (as :func:`_absmax_finite`).

    The max and the finiteness flag are taken on ``W`` right after each block
    of 64 rows is transposed (still in L1), so the tile is read from ``V`` once.
    """
    vw = _simd_width(W)
    mv = m - m % vw
    kv = kk - kk % vw
    m0 = _vzero(W)
    m1 = m0
    f0 = m0
    f1 = m0
    best = 0.0
    ok = True
    for i0 in range(0, mv, 64):
        i1 = min(i0 + 64, mv)
        for c0 in range(0, kv, vw):
            for ib in range(i0, i1, vw):
                _transpose_block(W, ib, Vb, rows, c0)
        for c in range(kv, kk):
            for i in range(i0, i1):
                W[c, i] = Vb[rows[i], c]
        for c in range(kk):
            ib = i0
            while ib + 2 * vw <= i1:
                a = _vload(W, c, ib)
                b = _vload(W, c, ib + vw)
                m0 = _vabsmax(m0, a)
                m1 = _vabsmax(m1, b)
                f0 = _vnonfinite(f0, a)
                f1 = _vnonfinite(f1, b)
                ib += 2 * vw
            if ib < i1:
                a = _vload(W, c, ib)
                m0 = _vabsmax(m0, a)
                f0 = _vnonfinite(f0, a)
    for i in range(mv, m):
        x = Vb[rows[i]]
        for c in range(kk):
            v = x[c]
            W[c, i] = v
            fv = float(v)
            if fv - fv != 0.0:
                ok = False
            best = max(best, abs(fv))
    best = max(best, float(_vhmax(_vabsmax(m0, m1))))
    ok = ok and not (_vlanesum_isnan(f0) or _vlanesum_isnan(f1))
    return best, ok


# ---------------------------------------------------------------------------
# Batched and row-parallel DEIM
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, parallel=True)
def _deim_batched(V, kk, eps, nthreads):
    """DEIM pivots of every batch of ``V`` (B, n, r), first ``kk`` columns, parallel over batches.

    Each batch is first checked for NaN / infinity (in the same pass as its
    ``max |V_b|``); a batch that has one is skipped and flagged.

    Returns
    -------
    piv : (B, kk) int64
    rank : (B,) int64
    bad : (B,) bool
        Batches with a NaN or an infinity (their ``piv`` and ``rank`` are meaningless).
    """
    nb, n, r = V.shape
    piv_out = np.empty((nb, kk), np.int64)
    rank_out = np.empty(nb, np.int64)
    bad = np.zeros(nb, np.bool_)
    nch = min(nb, 4 * nthreads)
    for ch in prange(nch):
        L = _simd_width(V)
        kp = (kk + L - 1) // L * L
        W = np.zeros((kp, _padded(n)), V.dtype)
        U = np.zeros((_BS, kp), V.dtype)
        rows = np.arange(n)
        piv = np.empty(kk, np.int64)
        sel = np.empty(n, np.bool_)
        nrm = np.empty(n, np.float64)
        b0 = ch * nb // nch
        b1 = (ch + 1) * nb // nch
        for b in range(b0, b1):
            Vb = V[b]
            if kk == r:  # one read of the batch: transposed, max |V_b| and the finiteness flag together
                vmax, ok = _load_cols_max(Vb, rows, n, kk, W)
            else:
                vmax, ok = _absmax_finite(Vb.reshape(n * r))
            if not ok:
                bad[b] = True
                rank_out[b] = 0
                for j in range(kk):
                    piv_out[b, j] = j
                continue
            if kk != r:
                _load_cols(Vb, rows, n, kk, W)
            sc = _elim_scale(W, vmax)
            if sc != 1.0:  # far from 1: eliminate on V_b 2^-e (exact)
                _scale_cols(W, kk, n, sc)
            tol = _rank_factor(n, r) * eps * (np.float64(vmax) * sc)
            # the next batch is prefetched during this one (the last one prefetches itself: harmless)
            rank, _ = _deim_vcore(W, n, kk, tol, Vb, rows, piv, sel, nrm, U, V[min(b + 1, b1 - 1)].reshape(n * r))
            rank_out[b] = rank
            for j in range(kk):
                piv_out[b, j] = piv[j]
    return piv_out, rank_out, bad


@njit(cache=True, nogil=True, parallel=True)
def _deim_rowpar(Vb, kk, eps, nparts):
    """DEIM of one large batch with its rows split over ``nparts`` threads.

    The panels and decisions of :func:`_deim_vcore`, on the scalar column
    kernels above. Each row gets the same arithmetic whatever the split (parts
    start at multiples of ``_RB`` rows, so even the vectorised / remainder
    split of every loop is that of one serial pass over the column), hence the
    same pivots for every ``nparts``; per pivot step the parts update their
    slice of the column and report their first largest entry, and the global
    pivot row is combined serially.

    Returns
    -------
    piv : (kk,) int64
        Pivot rows in selection order.
    rank : int
    """
    n, r = Vb.shape
    chunk = ((n + nparts - 1) // nparts + _RB - 1) // _RB * _RB
    P = (n + chunk - 1) // chunk
    W = np.empty((P, kk, _padded(chunk)), Vb.dtype)
    U = np.empty((_BS, kk), Vb.dtype)
    pval = np.empty(P, Vb.dtype)
    ppos = np.empty(P, np.int64)
    pmax = np.empty(P)
    for q in prange(P):
        lo = q * chunk
        hi = min(n, lo + chunk)
        pmax[q] = _absmax_flat(Vb[lo:hi].reshape((hi - lo) * r))
        _load_cols(Vb, np.arange(lo, hi), hi - lo, kk, W[q])
        pval[q] = _col_absmax(W[q], 0, 0, hi - lo)
    sc = _elim_scale(U, pmax.max())
    if sc != 1.0:  # far from 1: eliminate on V_b 2^-e (exact)
        for q in prange(P):
            m = min(n, q * chunk + chunk) - q * chunk
            _scale_cols(W[q], kk, m, sc)
            pval[q] = _col_absmax(W[q], 0, 0, m)
    tol = _rank_factor(n, r) * eps * (pmax.max() * sc)
    one = _one_like(U)
    zero = one - one
    piv = np.empty(kk, np.int64)
    sel = np.zeros(n, np.bool_)
    nrm = np.empty(0)
    rank = 0
    for j0 in range(0, kk, _BS):
        j1 = min(j0 + _BS, kk)
        for j in range(j0, j1):
            s = j - j0
            for q in prange(P):
                lo = q * chunk
                m = min(n, lo + chunk) - lo
                Wq = W[q]
                amax = pval[q]
                if s > 0:
                    amax = _rank_update(Wq, j, j0, s, U, 0, m)
                    stale = False
                    for t in range(s):
                        g = piv[j0 + t] - lo
                        if 0 <= g < m:
                            if abs(Wq[j, g]) == amax:
                                stale = True
                            Wq[j, g] = zero
                    if stale:
                        amax = _col_absmax(Wq, j, 0, m)
                pval[q] = amax
                ppos[q] = _first_abs_equal(Wq, j, amax, m)
            q = 0
            for t in range(1, P):
                if pval[t] > pval[q]:
                    q = t
            amax = pval[q]
            lp = ppos[q]
            if amax > tol:
                piv[j] = q * chunk + lp
                sel[piv[j]] = True
                rank += 1
                _pivot_row(U, W[q], s, j0, lp, one / W[q, j, lp], j + 1, kk)
            else:
                if nrm.shape[0] == 0:
                    nrm = np.empty(n)
                    _row_norms(Vb, np.arange(n), n, nrm)
                g = _fill_pick(nrm, sel, n)
                sel[g] = True
                piv[j] = g
                for q2 in prange(P):
                    lo = q2 * chunk
                    m = min(n, lo + chunk) - lo
                    for i in range(m):
                        W[q2, j, i] = zero
                for c in range(j + 1, kk):
                    U[s, c] = zero
        for q in prange(P):
            lo = q * chunk
            m = min(n, lo + chunk) - lo
            Wq = W[q]
            if j1 < kk:
                nxt = zero
                for i0 in range(0, m, _RB):
                    cm = _trailing_update(Wq, j0, j1, kk, U, i0, min(i0 + _RB, m))
                    if cm > nxt:  # noqa: PLR1730 (max() would change the NaN semantics of this compare)
                        nxt = cm
                stale = False
                for t in range(j1 - j0):
                    g = piv[j0 + t] - lo
                    if 0 <= g < m:
                        if abs(Wq[j1, g]) == nxt:
                            stale = True
                        for c in range(j1, kk):
                            Wq[c, g] = zero
                if stale:
                    nxt = _col_absmax(Wq, j1, 0, m)
                pval[q] = nxt
    return piv, rank


# ---------------------------------------------------------------------------
# DEIM on a tile of rows (reusable work buffers)
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _tile_buffers(V, m, kk):
    """Work buffers of :func:`_tile_deim` for tiles of up to ``m`` rows and ``kk`` columns (reusable)."""
    L = _simd_width(V)
    kp = (kk + L - 1) // L * L
    W = np.zeros((kp, _padded(m)), V.dtype)
    U = np.zeros((_BS, kp), V.dtype)
    piv = np.empty(kk, np.int64)
    sel = np.empty(m, np.bool_)
    nrm = np.empty(m, np.float64)
    return W, U, piv, sel, nrm


@njit(cache=True, nogil=True)
def _tile_deim(Vb, rows, m, kc, tol, W, U, piv, sel, nrm, pf, sc):
    """DEIM (:func:`_deim_vcore`) on the rows ``rows[:m]`` of ``Vb`` times ``sc``, first ``kc`` columns.

    ``W, U, piv, sel, nrm`` come from :func:`_tile_buffers` (for at least ``m``
    rows and ``kk >= kc`` columns) and may have served an earlier tile: the
    zero padding :func:`_deim_vcore` needs is restored here (rows ``m`` up to a
    whole vector, and the rows / columns past ``kc`` when ``kc < kk``, i.e.
    after a tile with more columns). ``pf`` is prefetched (see
    :func:`_deim_vcore`). ``sc``: the batch's :func:`_elim_scale` (``tol`` is
    in its units). Returns ``(rank, min_ok)``; ``piv[:kc]`` = positions.
    """
    _load_cols(Vb, rows, m, kc, W)
    if sc != 1.0:
        _scale_cols(W, kc, m, sc)
    return _tile_deim_loaded(Vb, rows, m, kc, tol, W, U, piv, sel, nrm, pf)


@njit(cache=True, nogil=True)
def _tile_deim_loaded(Vb, rows, m, kc, tol, W, U, piv, sel, nrm, pf):
    """:func:`_tile_deim` once ``W[:kc, :m]`` holds the tile."""
    L = _simd_width(W)
    mv = (m + L - 1) // L * L
    one = _one_like(W)
    zero = one - one
    for c in range(kc):
        for i in range(m, mv):
            W[c, i] = zero
    if kc < piv.shape[0]:
        for c in range(kc, W.shape[0]):
            for i in range(mv):
                W[c, i] = zero
        for t in range(_BS):
            for c in range(kc, U.shape[1]):
                U[t, c] = zero
    return _deim_vcore(W, m, kc, tol, Vb, rows, piv, sel, nrm, U, pf)
