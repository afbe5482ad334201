"""Numba rectangular extension (``k > r``) and maxvol refinement, float64.

* :func:`_rect_batched`: the ``r`` greedy pivots of a batch extended to ``k > r``
  rows by the greedy ``det(V_S^T V_S)`` rule (Sherman-Morrison updates of the
  scores, plain IEEE arithmetic in the order of the generic twin).
* :func:`_refine_batched`: Goreinov maxvol swaps on ``V[:, :k]`` until
  ``max |V V_S^{-1}| <= tol``.

The contract is the one of :mod:`graft_array._agnostic.maxvol`; both run
parallel over batches.
"""

import math

import numpy as np
from numba import njit, prange

from .checks import unit_scale
from .simd import (
    _absmax_flat,
    _band_scale,
    _fill_pick,
    _in_band,
    _rank_factor,
    _scaled64,
    _sq_row_norms,
)


@njit(cache=True, nogil=True)
def _inverse(A, thr):
    """Inverse of a small square float64 matrix by Gauss-Jordan with partial pivoting (A is overwritten).

    Returns ``(inv, rank)``. A pivot ``|d| <= thr`` (always the case for a
    zero pivot) stops it: ``rank`` is then the number of pivots taken before
    (``< k``) and ``inv`` is meaningless. ``rank == k`` otherwise.
    """
    k = A.shape[0]
    inv = np.eye(k)
    for c in range(k):
        p = c
        for i in range(c + 1, k):
            if abs(A[i, c]) > abs(A[p, c]):
                p = i
        if p != c:
            for t in range(k):
                A[c, t], A[p, t] = A[p, t], A[c, t]
                inv[c, t], inv[p, t] = inv[p, t], inv[c, t]
        d = A[c, c]
        if not abs(d) > thr:  # numerically singular (never divides by zero)
            return inv, c
        for t in range(k):
            A[c, t] /= d
            inv[c, t] /= d
        for i in range(k):
            if i != c:
                f = A[i, c]
                if f != 0.0:
                    for t in range(k):
                        A[i, t] -= f * A[c, t]
                        inv[i, t] -= f * inv[c, t]
    return inv, k


@njit(cache=True, nogil=True)
def _rect_one(X, piv, k, rank, out):
    """Extend the ``r`` pivots ``piv`` to ``k > r`` rows (greedy ``det(V_S^T V_S)``), or fill if ``rank < r``.

    Runs on ``X`` inside the band (:func:`_in_band`), else on
    :func:`_scaled64` of it: the rows of ``X 2^j`` are those of ``X``.
    """
    n = X.shape[0]
    rows = np.arange(n)
    sq = np.empty(n)
    sc = _band_scale(X, rows, n, sq)
    if sc == 1.0:
        _rect_run(X, piv, k, rank, out, sq)
        return
    Xs = _scaled64(X, rows, X.shape[1], sc)
    _sq_row_norms(Xs, rows, n, sq)
    _rect_run(Xs, piv, k, rank, out, sq)


@njit(cache=True, nogil=True)
def _rect_run(X, piv, k, rank, out, sq):
    """:func:`_rect_one` on ``X`` as it is, ``sq`` its squared row norms."""
    n, r = X.shape
    sel = np.zeros(n, np.bool_)
    for j in range(r):
        out[j] = piv[j]
        sel[piv[j]] = True
    nrm = np.sqrt(sq)
    if rank < r:
        for t in range(r, k):
            p = _fill_pick(nrm, sel, n)
            sel[p] = True
            out[t] = p
        return
    _rect_full(X, k, out, sel, nrm)


@njit(cache=True, nogil=True)
def _axpyn(a, x, y, m):
    """``y[:m] += a x[:m]``, IEEE (no fused multiply-add, no reassociation)."""
    for t in range(np.uint64(m)):
        y[t] += a * x[t]


@njit(cache=True, nogil=True)
def _rect_full(X, k, out, sel, nrm):
    """Greedy ``det(V_S^T V_S)`` extension of the ``r`` full-rank pivots in ``out[:r]`` to ``k`` rows.

    A Gram matrix singular in float64 despite the rank test gets a floor on
    the non-positive diagonal of its Cholesky factor (``sqrt(eps64 G_aa)``, 1
    if ``G_aa = 0``); a step with no finite score (not expected after the
    floor) takes the fill row (largest ``nrm``, the row norms of ``X``), so the
    rows stay unique.

    No fast-math here: plain IEEE operations in a fixed order, which the
    generic twin (``graft_array._agnostic.maxvol._rect``) repeats one for one,
    so both give the same rows even where the Gram matrix is nearly singular
    (its scores are then dominated by rounding, which must be the same).

    With L L^T = V_S^T V_S and z_i = L^-1 x_i, row i adds the factor
    1 + s_i, s_i = x_i^T (V_S^T V_S)^-1 x_i = ||z_i||^2. After adding row p the
    inverse changes by a rank one term (Sherman-Morrison), so with
    c_t(i) = x_i^T (V_S^T V_S)^-1_t x_p(t) = z_i . z_p - sum_{tau<t} c_tau(i) c_tau(p) / d_tau
    every s_i drops by c_t(i)^2 / d_t, d_t = 1 + s_p. O(n r^2 / 2) once, O(n (r + t)) per added row.
    """
    n, r = X.shape
    L = np.zeros((r, r))
    for j in range(r):  # lower triangle of V_S^T V_S, row axpys
        x = X[out[j]]
        for a in range(r):
            xa = np.float64(x[a])
            for c in range(a + 1):
                L[a, c] += xa * np.float64(x[c])
    for a in range(r):  # Cholesky by rows
        gaa = L[a, a]
        for c in range(a):
            acc = L[a, c]
            for t in range(c):
                acc -= L[a, t] * L[c, t]
            L[a, c] = acc / L[c, c]
        acc = L[a, a]
        for t in range(a):
            acc -= L[a, t] * L[a, t]
        # not positive: singular in float64; a floor of degree 1 (keeps z = L^-1 x finite)
        L[a, a] = math.sqrt(acc) if acc > 0.0 else (math.sqrt(2.220446049250313e-16 * gaa) if gaa > 0.0 else 1.0)
    Zt = np.empty((r, n))  # Z^T = L^-1 X^T by rows: contiguous axpys of length n
    for i in range(n):
        x = X[i]
        for a in range(r):
            Zt[a, i] = np.float64(x[a])
    for a in range(r):
        za = Zt[a]
        for t in range(a):
            _axpyn(-L[a, t], Zt[t], za, n)
        f = 1.0 / L[a, a]
        for i in range(n):
            za[i] *= f
    s = np.zeros(n)
    for a in range(r):
        za = Zt[a]
        for i in range(n):
            s[i] += za[i] * za[i]
    extra = k - r
    C = np.empty((extra, n))
    dv = np.empty(extra)
    for t in range(extra):
        p = -1
        best = -np.inf
        for i in range(n):
            if not sel[i] and s[i] > best:
                best = s[i]
                p = i
        if p < 0:
            p = _fill_pick(nrm, sel, n)
        sel[p] = True
        out[r + t] = p
        d = 1.0 + s[p]
        ct = C[t]
        ct[:] = 0.0
        for a in range(r):
            _axpyn(Zt[a, p], Zt[a], ct, n)
        for tau in range(t):  # earlier rank-one terms, as contiguous axpys
            f = C[tau, p] / dv[tau]
            _axpyn(-f, C[tau], ct, n)
        dv[t] = d
        f = 1.0 / d
        for i in range(n):
            s[i] -= ct[i] * ct[i] * f


@njit(cache=True, nogil=True, parallel=True)
def _rect_batched(V, piv, rank, k):
    """Rect extension of every batch, parallel over batches. Returns (B, k) pivots."""
    nb = V.shape[0]
    out = np.empty((nb, k), np.int64)
    for b in prange(nb):
        _rect_one(V[b], piv[b], k, rank[b], out[b])
    return out


@njit(cache=True, nogil=True)
def _refine_one(X, piv, tol, max_iters, eps):
    """Goreinov maxvol swaps on ``A = X[:, :k]`` (k = len(piv)), in place on ``piv``.

    Runs on ``A`` inside the band (:func:`_in_band` of the batch ``X``), else
    on :func:`_scaled64` of it (``B`` does not depend on the scale). Returns
    ``(converged, iterations)``; ``iterations == -1`` when the start block
    ``A[piv]`` is numerically singular by the greedy step's rule (a pivot of
    Gauss-Jordan with partial pivoting ``<= f eps max|X|``, ``f = max(r, min(n, r^2))``, ``eps`` of
    V's dtype), and then nothing is done.
    """
    n, r = X.shape
    k = piv.shape[0]
    amax = _absmax_flat(X.reshape(n * r))
    stol = _rank_factor(n, r) * eps * amax
    if _in_band(amax, r):
        return _refine_run(X, piv, tol, max_iters, stol)
    sc = unit_scale(amax)
    return _refine_run(_scaled64(X, np.arange(n), k, sc), piv, tol, max_iters, stol * sc)


@njit(cache=True, nogil=True)
def _refine_run(X, piv, tol, max_iters, stol):
    """:func:`_refine_one` on ``A = X[:, :k]`` as it is; ``stol`` the singular-start threshold in its units."""
    n = X.shape[0]
    k = piv.shape[0]
    AS = np.empty((k, k))
    for a in range(k):
        for c in range(k):
            AS[a, c] = np.float64(X[piv[a], c])
    Ai, rk = _inverse(AS, stol)
    if rk < k:
        return True, -1
    B = np.empty((n, k))
    y = np.empty(k)
    for i in range(n):
        for t in range(k):
            y[t] = 0.0
        for a in range(k):
            xa = np.float64(X[i, a])
            for t in range(k):
                y[t] += xa * Ai[a, t]
        for t in range(k):
            B[i, t] = y[t]
    bi, bj, bv = _abs_argmax_2d(B)
    col = np.empty(n)
    row = np.empty(k)
    for it in range(max_iters):
        if bv <= tol:
            return True, it
        piv[bj] = bi
        bij = B[bi, bj]
        for i in range(n):
            col[i] = B[i, bj]
        for t in range(k):
            row[t] = B[bi, t]
        row[bj] -= 1.0
        bv = -1.0
        ni = 0
        nj = 0
        for i in range(n):
            f = col[i] / bij
            for t in range(k):
                B[i, t] -= f * row[t]
            for t in range(k):
                a = abs(B[i, t])
                if a > bv:
                    bv = a
                    ni = i
                    nj = t
        bi, bj = ni, nj
    return bv <= tol, max_iters


@njit(cache=True, nogil=True)
def _abs_argmax_2d(B):
    """Row-major first position of ``max |B|``: ``(i, j, value)``."""
    bv = -1.0
    bi = 0
    bj = 0
    for i in range(B.shape[0]):
        for t in range(B.shape[1]):
            a = abs(B[i, t])
            if a > bv:
                bv = a
                bi = i
                bj = t
    return bi, bj, bv


@njit(cache=True, nogil=True, parallel=True)
def _refine_batched(V, piv, rank, tol, max_iters, eps):
    """Refinement of every batch with full rank (``rank == k``), parallel over batches.

    A batch whose start block is numerically singular is left as it is, with
    ``iterations = -1`` (``rank`` is not touched: it counts the greedy picks).
    """
    nb, k = piv.shape
    conv = np.ones(nb, np.bool_)
    iters = np.zeros(nb, np.int64)
    for b in prange(nb):
        if rank[b] == k:
            c, it = _refine_one(V[b], piv[b], tol, max_iters, eps)
            conv[b] = c
            iters[b] = it
    return conv, iters
