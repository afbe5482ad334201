"""Numba greedy volume: QR with column pivoting on ``V^T`` (= LAPACK ``geqp3``), float64, lazy.

The contract is the one of :mod:`graft_array._agnostic.maxvol`. Many batches
run parallel over batches (:func:`_volume_batched`); a few large batches run
one at a time with their rows split into ranges scanned in parallel
(:func:`_volume_rowpar`).

Volume (greedy volume = QR with column pivoting on V^T), float64: residual
norms only decrease, so a row's last computed residual norm is an upper bound
of its current one. Rows are brought up to date lazily: each step evaluates the
row of largest bound, then only the rows whose bound is still >= the best exact
value found, each with the dot products against all directions added since its
last update (one visit of the row instead of one pass over V per pivot). The
arithmetic per row (downdate order, geqp3-style recomputation) is exactly the
eager one, and bounds carry a tiny slack covering the recomputations, so the
argmax is the eager argmax.
"""

import math

import numpy as np
from numba import njit, prange

from .simd import (
    _FM,
    _band_scale,
    _prefetch_row,
    _rank_factor,
    _scaled64,
    _sq_row_norms,
)

_AHEAD = 8  # candidates touched ahead in the lazy volume scan
_SLACK = 4.0 * 2.220446049250313e-16  # times (k + 1)(2 r + 2) rho0: bound on a recomputation's jump


@njit(cache=True, nogil=True, fastmath=_FM)
def _dot_rq(X, i, Q, l):
    """``X[i, :] . Q[l, :]`` in float64 (X float32 or float64)."""
    iu = np.uint64(i)
    lu = np.uint64(l)
    s = 0.0
    for t in range(np.uint64(X.shape[1])):
        s += np.float64(X[iu, t]) * Q[lu, t]
    return s


@njit(cache=True, nogil=True, fastmath=_FM)
def _exact_residual(X, i, Q, nq, res):
    """``||x_i - sum_{l<nq} (x_i . q_l) q_l||^2`` (the geqp3-style explicit recomputation)."""
    r = X.shape[1]
    for t in range(r):
        res[t] = np.float64(X[i, t])
    for l in range(nq):
        c = _dot_rq(X, i, Q, l)
        lu = np.uint64(l)
        for t in range(np.uint64(r)):
            res[t] -= c * Q[lu, t]
    s = 0.0
    for t in range(np.uint64(r)):
        s += res[t] * res[t]
    return s


@njit(cache=True, nogil=True, fastmath=_FM)
def _dots4(X, i, Q, l):
    """``X[i, :] . Q[l + a, :]`` for ``a < 4`` (float64), sharing the loads of the row."""
    iu = np.uint64(i)
    l0 = np.uint64(l)
    l1 = l0 + np.uint64(1)
    l2 = l0 + np.uint64(2)
    l3 = l0 + np.uint64(3)
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for t in range(np.uint64(X.shape[1])):
        x = np.float64(X[iu, t])
        s0 += x * Q[l0, t]
        s1 += x * Q[l1, t]
        s2 += x * Q[l2, t]
        s3 += x * Q[l3, t]
    return s0, s1, s2, s3


@njit(cache=True, nogil=True)
def _downdate(X, i, Q, l, c, v, rho0, sqeps, res):
    """Eager downdate ``v - c^2`` of row ``i`` by direction ``l``, then geqp3's test.

    When the result falls to ``sqrt(eps64) * rho0_i`` it is recomputed
    explicitly against ``q_0 .. q_l`` and becomes the new ``rho0_i``.
    """
    v -= c * c
    if v <= sqeps * rho0[i]:
        v = _exact_residual(X, i, Q, l + 1, res)
        rho0[i] = v
    return v


@njit(cache=True, nogil=True)
def _bring_up(X, i, Q, nq, rho, rho0, done, sqeps, res):
    """Apply to row ``i`` the downdates of directions ``done[i] .. nq-1``, in order, exactly as the eager loop.

    The dot products (which do not depend on ``rho``) are computed four at a
    time. Returns the new ``rho_i``.
    """
    v = rho[i]
    l = done[i]
    while l + 4 <= nq:
        c0, c1, c2, c3 = _dots4(X, i, Q, l)
        v = _downdate(X, i, Q, l, c0, v, rho0, sqeps, res)
        v = _downdate(X, i, Q, l + 1, c1, v, rho0, sqeps, res)
        v = _downdate(X, i, Q, l + 2, c2, v, rho0, sqeps, res)
        v = _downdate(X, i, Q, l + 3, c3, v, rho0, sqeps, res)
        l += 4
    while l < nq:
        v = _downdate(X, i, Q, l, _dot_rq(X, i, Q, l), v, rho0, sqeps, res)
        l += 1
    rho[i] = v
    done[i] = nq
    return v


@njit(cache=True, nogil=True)
def _cgs2(X, p, Q, nq, w):
    """``w = x_p`` orthogonalised twice against ``q_0 .. q_{nq-1}`` (CGS2). Returns ``||w||``."""
    r = X.shape[1]
    for t in range(r):
        w[t] = np.float64(X[p, t])
    for _ in range(2):
        for l in range(nq):
            c = 0.0
            for t in range(r):
                c += w[t] * Q[l, t]
            for t in range(r):
                w[t] -= c * Q[l, t]
    s = 0.0
    for t in range(r):
        s += w[t] * w[t]
    return math.sqrt(s)


@njit(cache=True, nogil=True)
def _lazy_scan(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res, best, bi, cand):
    """Exact argmax of the current residual norms over rows ``[lo, hi)``, starting from ``(best, bi)``.

    A row is brought up to date only if its bound ``key`` (last residual norm
    plus slack) is still ``>= best``; ties go to the lowest row index. The
    candidate rows (bound ``>=`` the starting ``best``) are listed first, then
    visited in order while the next candidates' rows are prefetched a few
    steps ahead: the rows are scattered in memory and the visits are latency-bound.
    """
    nc = 0
    for i in range(lo, hi):
        if key[i] >= best:
            cand[nc] = i
            nc += 1
    for a in range(min(_AHEAD, nc)):
        _prefetch_row(X, cand[a])
    for a in range(nc):
        if a + _AHEAD < nc:
            nxt = cand[a + _AHEAD]
            if key[nxt] >= best and done[nxt] < nq:
                _prefetch_row(X, nxt)
        i = cand[a]
        if key[i] >= best:
            if done[i] < nq:
                v = _bring_up(X, i, Q, nq, rho, rho0, done, sqeps, res)
                key[i] = v + slack * rho0[i]
            else:
                v = rho[i]
            if v > best or (v == best and i < bi):
                best = v
                bi = i
    return best, bi


@njit(cache=True, nogil=True)
def _volume_chunk(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res, cand):
    """Exact ``(max, argmax)`` of the current residual norms over the unselected rows of ``[lo, hi)``.

    Seeds with the row of largest bound in the range, then scans the rows
    whose bound can still win (:func:`_lazy_scan`). ``(-inf, -1)`` if every row
    of the range is selected.
    """
    bi = -1
    bk = -np.inf
    for i in range(lo, hi):
        if key[i] > bk:
            bk = key[i]
            bi = i
    if bi < 0:
        return -np.inf, -1
    best = _bring_up(X, bi, Q, nq, rho, rho0, done, sqeps, res)
    key[bi] = best + slack * rho0[bi]
    return _lazy_scan(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res, best, bi, cand)


@njit(cache=True, nogil=True)
def _volume_commit(X, p, Q, nq, w, tol, nrm, key, piv, j):
    """Step ``j`` with residual argmax ``p``: orthogonalise (CGS2), accept or take a fill row.

    Returns the new number of directions ``nq``.
    """
    wn = _cgs2(X, p, Q, nq, w)
    if not wn > tol:
        p = _fill_argmax(nrm, key)
    piv[j] = p
    key[p] = -np.inf  # selected: never a candidate again
    if wn > tol:
        for t in range(X.shape[1]):
            Q[nq, t] = w[t] / wn
        nq += 1
    return nq


@njit(cache=True, nogil=True)
def _volume_one(X, kk, eps, piv):
    """Greedy volume pivots of one batch ``X`` (n, r), lazy residual norms, serial. Returns the rank.

    Runs on ``X`` inside the band (:func:`_in_band`), else on
    :func:`_scaled64` of it: the pivots of ``X 2^j`` are those of ``X``.
    """
    n = X.shape[0]
    rows = np.arange(n)
    rho = np.empty(n)
    sc = _band_scale(X, rows, n, rho)
    if sc == 1.0:
        return _volume_one_run(X, rho, kk, eps, piv)
    Xs = _scaled64(X, rows, X.shape[1], sc)
    _sq_row_norms(Xs, rows, n, rho)
    return _volume_one_run(Xs, rho, kk, eps, piv)


@njit(cache=True, nogil=True)
def _volume_one_run(X, rho, kk, eps, piv):
    """:func:`_volume_one` on ``X`` as it is, ``rho`` its squared row norms (overwritten)."""
    n, r = X.shape
    rho0 = rho.copy()
    key = rho.copy()
    nrm = np.sqrt(rho)
    tol = _rank_factor(n, r) * eps * (nrm.max() if n > 0 else 0.0)
    slack = _SLACK * (kk + 1) * (2 * r + 2)
    sqeps = math.sqrt(2.220446049250313e-16)
    done = np.zeros(n, np.int64)
    Q = np.zeros((kk, r))
    w = np.empty(r)
    res = np.empty(r)
    cand = np.empty(n, np.int64)
    nq = 0
    for j in range(kk):
        _, p = _volume_chunk(X, 0, n, Q, nq, rho, rho0, done, key, slack, sqeps, res, cand)
        nq = _volume_commit(X, p, Q, nq, w, tol, nrm, key, piv, j)
    return nq


@njit(cache=True, nogil=True)
def _volume_rowpar(X, kk, eps, piv, nparts):
    """:func:`_volume_one` with the rows split into ``nparts`` ranges scanned in parallel.

    Each range yields its exact argmax; the lowest-index maximum of those is
    the step's pivot. The per-row arithmetic does not depend on the split, so
    the pivots are those of the serial kernel (same band rule).
    """
    n = X.shape[0]
    rows = np.arange(n)
    rho = np.empty(n)
    sc = _band_scale(X, rows, n, rho)
    if sc == 1.0:
        return _volume_rowpar_run(X, rho, kk, eps, piv, nparts)
    Xs = _scaled64(X, rows, X.shape[1], sc)
    _sq_row_norms(Xs, rows, n, rho)
    return _volume_rowpar_run(Xs, rho, kk, eps, piv, nparts)


@njit(cache=True, nogil=True, parallel=True)
def _volume_rowpar_run(X, rho, kk, eps, piv, nparts):
    """:func:`_volume_rowpar` on ``X`` as it is, ``rho`` its squared row norms (overwritten)."""
    n, r = X.shape
    rho0 = rho.copy()
    key = rho.copy()
    nrm = np.sqrt(rho)
    tol = _rank_factor(n, r) * eps * (nrm.max() if n > 0 else 0.0)
    slack = _SLACK * (kk + 1) * (2 * r + 2)
    sqeps = math.sqrt(2.220446049250313e-16)
    done = np.zeros(n, np.int64)
    Q = np.zeros((kk, r))
    w = np.empty(r)
    res = np.empty((nparts, r))
    cand = np.empty(n, np.int64)
    pbest = np.empty(nparts)
    pidx = np.empty(nparts, np.int64)
    nq = 0
    for j in range(kk):
        for q in prange(nparts):
            lo = q * n // nparts
            hi = (q + 1) * n // nparts
            pbest[q], pidx[q] = _volume_chunk(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res[q],
                                              cand[lo:hi])
        p = -1
        best = -np.inf
        for q in range(nparts):  # ranges in row order: strict > keeps the lowest index on ties
            if pidx[q] >= 0 and (p < 0 or pbest[q] > best):
                best = pbest[q]
                p = pidx[q]
        nq = _volume_commit(X, p, Q, nq, w, tol, nrm, key, piv, j)
    return nq


@njit(cache=True, nogil=True)
def _fill_argmax(nrm, key):
    """Fill row: largest norm among rows not selected (selected rows have ``key == -inf``)."""
    best = -1.0
    p = -1
    for i in range(nrm.shape[0]):
        if key[i] != -np.inf and nrm[i] > best:
            best = nrm[i]
            p = i
    return p


@njit(cache=True, nogil=True, parallel=True)
def _volume_batched(V, kk, eps):
    """Greedy volume pivots of every batch, parallel over batches."""
    nb = V.shape[0]
    piv = np.empty((nb, kk), np.int64)
    rank = np.empty(nb, np.int64)
    for b in prange(nb):
        rank[b] = _volume_one(V[b], kk, eps, piv[b])
    return piv, rank
