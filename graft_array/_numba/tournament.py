"""Numba tournament pivoting: DEIM on tiles of rows, level by level, parallel over (batch, tile).

The contract is the one of :mod:`graft_array._agnostic.maxvol`; the tiles run
the whole-vector DEIM of :mod:`graft_array._numba.deim`.

Tournament: tiles of ``tile_rows`` rows are independent DEIMs (``_deim_vcore``),
run in parallel over (batch, tile) pairs, level by level. Each thread keeps one
set of work buffers and claims tiles one at a time from an atomic counter (a
thread slowed down by other work on the machine just takes fewer tiles); it
claims its next tile first and prefetches it while eliminating the current one.
The whole-batch tolerance needs ``max|V_b|``; instead of an extra pass over V,
level 0 uses each tile's own (smaller) max, taken during the tile's transpose
together with the NaN / infinity check (so V is read once, and ``check_finite``
needs no pass of its own), and records the smallest pivot it accepted; a tile
is redone with the true tolerance only if that pivot could have been refused
by it (never happens on full-rank input).
"""

import numpy as np
from numba import njit, prange

from .deim import (
    _load_cols,
    _load_cols_max,
    _tile_buffers,
    _tile_deim,
    _tile_deim_loaded,
)
from .simd import _absmax_finite, _claim, _elim_scale, _rank_factor, _scale_cols


@njit(cache=True, nogil=True)
def _sorted_rows(piv, k, rows, out):
    """``out[:k] = sorted(rows[piv[:k]])`` (insertion sort; ``k`` is small)."""
    for t in range(k):
        v = rows[piv[t]]
        u = t
        while u > 0 and out[u - 1] > v:
            out[u] = out[u - 1]
            u -= 1
        out[u] = v


@njit(cache=True, nogil=True)
def _tile_max_deim(V, b, r0, sz, kk, scale, pf, W, U, piv, sel, nrm, rows, out):
    """First-level tile: rows ``[r0, r0 + sz)`` of ``V[b]``; ``out`` = chosen rows.

    Returns ``(max |tile|, min_ok)``; a tile with a NaN or an infinity is not
    eliminated and returns ``(nan, inf)``. A tile far from 1 is eliminated on
    the tile times its :func:`_elim_scale` (``min_ok`` is returned unscaled).
    """
    Vb = V[b]
    r = Vb.shape[1]
    for i in range(sz):
        rows[i] = r0 + i
    kc = min(kk, sz)
    if kc == r:  # the load sees the whole tile: take its max there
        tmax, ok = _load_cols_max(Vb, rows, sz, kc, W)
    else:
        tmax, ok = _absmax_finite(Vb[r0:r0 + sz].reshape(sz * r))
        if ok:
            _load_cols(Vb, rows, sz, kc, W)
    if not ok:
        return np.nan, np.inf
    sc = _elim_scale(W, tmax)
    if sc != 1.0:
        _scale_cols(W, kc, sz, sc)
    _, mo = _tile_deim_loaded(Vb, rows, sz, kc, scale * (np.float64(tmax) * sc), W, U, piv, sel, nrm, pf)
    _sorted_rows(piv, kc, rows, out)
    return tmax, mo / sc


@njit(cache=True, nogil=True, parallel=True)
def _tournament_first_level(V, kk, T, scale, nthreads):
    """Level 0 of the tournament: DEIM on consecutive tiles of ``T`` rows, parallel over (batch, tile).

    The whole-batch tolerance ``scale * max|V_b|`` is not known before the
    tiles have been read, so each tile first uses its own max (a lower bound).
    Decisions can only differ if an accepted pivot lies within the true
    tolerance; such a tile (never on full-rank input) is redone.

    Each thread keeps one set of work buffers and claims tiles one at a time
    from a shared atomic counter (a thread slowed down by other work on the
    machine simply takes fewer tiles); it claims its next tile before working
    on the current one and prefetches it meanwhile.

    Returns
    -------
    cand : (B, nt * kk) int64
        Each tile's chosen rows, ascending, tile after tile.
    tol : (B,) float64
        Whole-batch DEIM tolerances, in the units of ``sc``.
    sc : (B,) float64
        Whole-batch :func:`_elim_scale` (what the later levels scale the rows by).
    bad : (B,) bool
        Batches with a NaN or an infinity (found by the tiles' max pass; their
        ``cand`` and ``tol`` are meaningless).
    """
    nb, n, r = V.shape
    nt = (n + T - 1) // T
    tot = nb * nt
    cand = np.empty((nb, nt * kk), np.int64)
    tmax = np.empty((nb, nt))
    tmin = np.empty((nb, nt))
    ctr = np.zeros(1, np.int64)
    for _ in prange(min(tot, nthreads)):
        W, U, piv, sel, nrm = _tile_buffers(V, min(T, n), kk)
        rows = np.empty(min(T, n), np.int64)
        cur = _claim(ctr)
        while cur < tot:
            nxt = _claim(ctr)
            b = cur // nt
            t = cur % nt
            r0 = t * T
            sz = min(T, n - r0)
            if nxt < tot:
                rn = (nxt % nt) * T
                pf = V[nxt // nt, rn:min(rn + T, n)].reshape(min(T, n - rn) * r)
            else:
                pf = V[b, r0:r0].reshape(0)
            tmax[b, t], tmin[b, t] = _tile_max_deim(V, b, r0, sz, kk, scale, pf, W, U, piv, sel, nrm, rows,
                                                    cand[b, t * kk:])
            cur = nxt
    tol = np.empty(nb)
    sc = np.ones(nb)
    bad = np.zeros(nb, np.bool_)
    for b in range(nb):
        tb = 0.0
        for t in range(nt):
            if not tmax[b, t] <= np.inf:  # NaN: the tile was not finite
                bad[b] = True
            elif tmax[b, t] > tb:
                tb = tmax[b, t]
        sc[b] = _elim_scale(V, tb)
        tol[b] = scale * (tb * sc[b])
        if bad[b]:
            for t in range(nt):
                tmin[b, t] = np.inf  # no redo
    redo = np.empty(tot, np.int64)
    nredo = 0
    for it in range(tot):
        if tmin[it // nt, it % nt] * sc[it // nt] <= tol[it // nt]:
            redo[nredo] = it
            nredo += 1
    for q in prange(nredo):
        b = redo[q] // nt
        t = redo[q] % nt
        r0 = t * T
        sz = min(T, n - r0)
        kc = min(kk, sz)
        W, U, piv, sel, nrm = _tile_buffers(V, sz, kk)
        rows = np.arange(r0, r0 + sz)
        _tile_deim(V[b], rows, sz, kc, tol[b], W, U, piv, sel, nrm, np.empty(0, V.dtype), sc[b])
        _sorted_rows(piv, kc, rows, cand[b, t * kk:])
    return cand, tol, sc, bad


@njit(cache=True, nogil=True, parallel=True)
def _tournament_next_level(V, cand, m, kk, T, tol, sc, nthreads):
    """One later tournament level: DEIM on tiles of the ``m`` candidates, parallel over (batch, tile).

    Tiles are claimed one at a time from a shared counter, as in :func:`_tournament_first_level`.
    """
    nb = V.shape[0]
    nt = (m + T - 1) // T
    tot = nb * nt
    nxt = np.empty((nb, nt * kk), np.int64)
    ctr = np.zeros(1, np.int64)
    for _ in prange(min(tot, nthreads)):
        W, U, piv, sel, nrm = _tile_buffers(V, min(T, m), kk)
        pf = np.empty(0, V.dtype)
        it = _claim(ctr)
        while it < tot:
            b = it // nt
            t = it % nt
            r0 = t * T
            sz = min(T, m - r0)
            rows = cand[b, r0:r0 + sz]
            kc = min(kk, sz)
            _tile_deim(V[b], rows, sz, kc, tol[b], W, U, piv, sel, nrm, pf, sc[b])
            _sorted_rows(piv, kc, rows, nxt[b, t * kk:])
            it = _claim(ctr)
    return nxt


@njit(cache=True, nogil=True, parallel=True)
def _deim_on_rows(V, cand, m, kk, tol, sc, bad):
    """DEIM of every batch on its candidate rows ``cand[b, :m]``; pivots mapped back to rows.

    Batches flagged ``bad`` (NaN / infinity) are skipped: ``piv = 0, 1, ...``, rank 0.
    """
    nb = V.shape[0]
    piv_out = np.empty((nb, kk), np.int64)
    rank_out = np.empty(nb, np.int64)
    for b in prange(nb):
        if bad[b]:
            rank_out[b] = 0
            for j in range(kk):
                piv_out[b, j] = j
            continue
        rows = cand[b, :m]
        W, U, piv, sel, nrm = _tile_buffers(V, m, kk)
        rank, _ = _tile_deim(V[b], rows, m, kk, tol[b], W, U, piv, sel, nrm, np.empty(0, V.dtype), sc[b])
        rank_out[b] = rank
        for j in range(kk):
            piv_out[b, j] = rows[piv[j]]
    return piv_out, rank_out


@njit(cache=True, nogil=True)
def _tournament_batched(V, kk, T, eps, nthreads):
    """Tournament pivoting of every batch (tiles of ``T > kk`` rows), see the module docstring.

    Returns
    -------
    piv : (B, kk) int64
    rank : (B,) int64
    bad : (B,) bool
        Batches with a NaN or an infinity, found in the first pass over ``V``
        (their ``piv`` and ``rank`` are meaningless; as soon as one batch is
        bad, the later levels are skipped for all).
    """
    nb, n, r = V.shape
    scale = _rank_factor(n, r) * eps
    if n <= T:
        tol = np.empty(nb)
        sc = np.ones(nb)
        bad = np.zeros(nb, np.bool_)
        cand = np.empty((nb, n), np.int64)
        for b in range(nb):
            vmax, ok = _absmax_finite(V[b].reshape(n * r))
            sc[b] = _elim_scale(V, vmax)
            tol[b] = scale * (np.float64(vmax) * sc[b])
            bad[b] = not ok
            cand[b] = np.arange(n)
        piv, rank = _deim_on_rows(V, cand, n, kk, tol, sc, bad)
        return piv, rank, bad
    cand, tol, sc, bad = _tournament_first_level(V, kk, T, scale, nthreads)
    if bad.any():
        return np.zeros((nb, kk), np.int64), np.zeros(nb, np.int64), bad
    nt = (n + T - 1) // T
    m = (nt - 1) * kk + min(kk, n - (nt - 1) * T)
    while m > T:
        cand = _tournament_next_level(V, cand, m, kk, T, tol, sc, nthreads)
        nt = (m + T - 1) // T
        m = (nt - 1) * kk + min(kk, m - (nt - 1) * T)
    piv, rank = _deim_on_rows(V, cand, m, kk, tol, sc, bad)
    return piv, rank, bad
