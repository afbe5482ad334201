"""Numba twins of :mod:`graft_array._agnostic.baselines`: random, CRAIG and GradMatch, parallel over batches.

Each public kernel takes every batch of a stack at once and runs one batch per
``prange`` iteration; the batch-sized gradient Gram (n x n) lives inside that
iteration only. The Gram, the NNLS fit and the rho curve are the GRAFT
criterion's own per-batch kernels (:mod:`graft_array._numba.criterion`).
"""

import numpy as np
from numba import njit, prange

from .._agnostic.baselines import DUPLICATE_ULPS
from .checks import abs_max, unit_scale
from .criterion import _EPS, _gram_last_layer_one, _gram_plain_one, _nnls_one, _rho_one

__all__ = [
    "random_subset",
    "craig_plain",
    "craig_last_layer",
    "gradmatch_plain",
    "gradmatch_last_layer",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
def _batch_gram_plain(Gb):
    """(K, b, ||g||^2) of one batch's plain gradient rows Gb (n, p): the n x n Gram, b = K 1.

    Those of Gb 2^k, the criterion's scale rule (:func:`graft_array._numba.checks.unit_scale` of max |Gb|).
    """
    n, p = Gb.shape
    K = np.empty((n, n))
    bv = np.empty(n)
    gg = _gram_plain_one(Gb, np.arange(n), K, bv, np.empty(p), np.empty((n, p)), unit_scale(abs_max(Gb)))
    return K, bv, gg


@njit(cache=True, nogil=True)
def _batch_gram_last_layer(Eb, Hb):
    """(K, b, ||g||^2) of one batch's last-layer gradients e_i (x) [h_i; 1], never formed.

    Eb scaled as in :func:`_batch_gram_plain` (the embeddings are not).
    """
    n, C = Eb.shape
    h = Hb.shape[1]
    K = np.empty((n, n))
    bv = np.empty(n)
    gg = _gram_last_layer_one(Eb, Hb, np.arange(n), K, bv, np.empty((C, h + 1)), np.empty((n, C)),
                              np.empty((n, h + 1)), np.empty(h + 1), unit_scale(abs_max(Eb)))
    return K, bv, gg


@njit(cache=True, nogil=True)
def _mix64(z):
    """SplitMix64's output function (a bijection of uint64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _random_keys(seed, start, u):
    """u[i] = the (i+1)-th output of the SplitMix64 stream of (seed, start), as a float64 in [0, 1)."""
    state = _mix64(_mix64(seed) + start)
    for i in range(u.shape[0]):
        key = _mix64(state + np.uint64(i + 1) * _GOLDEN)
        u[i] = float(key >> np.uint64(11)) * 1.1102230246251565e-16  # 2 ** -53


@njit(cache=True, nogil=True, parallel=True)
def random_subset(starts, seed, n, m):
    """(B, m) int64: each batch's m rows of smallest random key, in key order. starts (B,) uint64, seed uint64."""
    nb = starts.shape[0]
    out = np.empty((nb, m), dtype=np.int64)
    for bi in prange(nb):
        u = np.empty(n)
        _random_keys(seed, starts[bi], u)
        order = np.argsort(u, kind="mergesort")  # stable: equal keys keep the row order
        for t in range(m):
            out[bi, t] = order[t]
    return out


# --------------------------------------------------------------------------------------------- CRAIG


@njit(cache=True, nogil=True)
def _similarities(K):
    """In place: the gradient Gram K (n, n) becomes s_ij = dmax - d_ij, d_ij = sqrt(K_ii + K_jj - 2 K_ij).

    d_ij^2 <= DUPLICATE_ULPS eps (K_ii + K_jj) is round-off of the Gram (equal rows
    whose products were rounded differently) and counts as 0: the generic twin's rule.
    """
    n = K.shape[0]
    diag = np.empty(n)
    for i in range(n):
        diag[i] = K[i, i]
    dmax = 0.0
    for i in range(n):
        for j in range(i):
            d2 = diag[i] + diag[j] - 2.0 * K[i, j]
            d = np.sqrt(d2) if d2 > DUPLICATE_ULPS * _EPS * (diag[i] + diag[j]) else 0.0
            K[i, j] = d
            K[j, i] = d
            if d > dmax:
                dmax = d
        K[i, i] = 0.0
    for i in range(n):
        for j in range(n):
            K[i, j] = dmax - K[i, j]


@njit(cache=True, nogil=True)
def _gain(S, cur, j):
    """Facility-location gain of adding j: sum_i max(0, s_ij - cur_i) (row j: S is symmetric)."""
    acc = 0.0
    for i in range(S.shape[0]):
        v = S[j, i] - cur[i]
        if v > 0.0:
            acc += v
    return acc


@njit(cache=True, nogil=True)
def _before(va, ia, vb, ib):
    """Heap order: the larger gain first, ties to the lower index."""
    return va > vb or (va == vb and ia < ib)


@njit(cache=True, nogil=True)
def _sift_down(val, idx, size, p):
    while True:
        a = 2 * p + 1
        if a >= size:
            return
        c = a
        if a + 1 < size and _before(val[a + 1], idx[a + 1], val[a], idx[a]):
            c = a + 1
        if not _before(val[c], idx[c], val[p], idx[p]):
            return
        val[p], val[c] = val[c], val[p]
        idx[p], idx[c] = idx[c], idx[p]
        p = c


@njit(cache=True, nogil=True)
def _craig_one(S, m, lazy, order, w):
    """Greedy facility location on similarities S (n, n): m rows into ``order``, cluster sizes into ``w``.

    ``lazy``: Minoux's lazy greedy (a max-heap of stale upper bounds, re-evaluated
    on top; a fresh top is the exact greedy choice since gains only shrink).
    Otherwise the plain greedy. Both take ties to the lowest index and agree
    exactly: a fresh top ``(g, j)`` has every other bound ``<= g``, equal ones
    only at higher indices, and bounds are never below the current gains (the
    same floating-point sum of terms that only shrink).
    """
    n = S.shape[0]
    cur = np.zeros(n)  # max_{j in S} s_ij (0 for the empty set: similarities are >= 0)
    assign = np.zeros(n, dtype=np.int64)  # position in ``order`` of the most similar selected row
    chosen = np.zeros(n, dtype=np.bool_)
    val = np.empty(n)
    idx = np.empty(n, dtype=np.int64)
    stamp = np.zeros(n, dtype=np.int64)
    if lazy:
        for j in range(n):
            val[j] = _gain(S, cur, j)
            idx[j] = j
        for p in range(n // 2 - 1, -1, -1):
            _sift_down(val, idx, n, p)
    size = n
    for t in range(m):
        if lazy:
            while True:
                j = idx[0]
                if stamp[j] == t:  # fresh: the exact greedy choice
                    size -= 1
                    val[0], idx[0] = val[size], idx[size]
                    _sift_down(val, idx, size, 0)
                    break
                val[0] = _gain(S, cur, j)
                stamp[j] = t
                _sift_down(val, idx, size, 0)
        else:
            best, j = -1.0, -1
            for i in range(n):
                if not chosen[i]:
                    g = _gain(S, cur, i)
                    if g > best:
                        best, j = g, i
        order[t] = j
        chosen[j] = True
        for i in range(n):
            if t == 0 or S[j, i] > cur[i]:  # ties stay with the earlier selected row
                cur[i] = S[j, i]
                assign[i] = t
    w[:] = 0.0
    for i in range(n):
        w[assign[i]] += 1.0


@njit(cache=True, nogil=True)
def _rho_along(K, bv, gg, order, rho):
    """rho(m) along ``order`` from the batch's full Gram K (n, n) and b (n,)."""
    m = order.shape[0]
    KS = np.empty((m, m))
    bS = np.empty(m)
    for a in range(m):
        bS[a] = bv[order[a]]
        for c in range(m):
            KS[a, c] = K[order[a], order[c]]
    skipped = np.empty(m, dtype=np.bool_)
    _rho_one(KS, bS, gg, rho, skipped)


@njit(cache=True, nogil=True, parallel=True)
def craig_plain(G, m, lazy):
    """CRAIG on plain gradient rows G (B, n, p): (order (B, m), weights (B, m), rho (B, m))."""
    nb, n = G.shape[0], G.shape[1]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = _batch_gram_plain(G[bi])
        Kg = K.copy()
        _similarities(K)
        _craig_one(K, m, lazy, order[bi], w[bi])
        _rho_along(Kg, bv, gg, order[bi], rho[bi])
    return order, w, rho


@njit(cache=True, nogil=True, parallel=True)
def craig_last_layer(E, H, m, lazy):
    """CRAIG on last-layer gradients e_i (x) [h_i; 1]: E (B, n, C), H (B, n, h); K never leaves the batch."""
    nb, n = E.shape[0], E.shape[1]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = _batch_gram_last_layer(E[bi], H[bi])
        Kg = K.copy()
        _similarities(K)
        _craig_one(K, m, lazy, order[bi], w[bi])
        _rho_along(Kg, bv, gg, order[bi], rho[bi])
    return order, w, rho


# ----------------------------------------------------------------------------------------- GradMatch


@njit(cache=True, nogil=True)
def _gradmatch_one(K, bv, m, lam, order, w):
    """OMP with non-negative ridge refits of g = sum_i g_i in Gram space; K (n, n), b_i = <g_i, g>.

    Each step adds the unselected row of largest correlation <g_j, r> with the
    residual r = g - sum_S w_j g_j (ties to the lowest index), then refits
    min ||sum_S w_j g_j - g||^2 + lam s ||w||^2 over w >= 0 (s = trace(K) / n)
    by the criterion's Lawson-Hanson NNLS. Once no row correlates positively,
    the rest of the budget takes the largest correlations with weight 0.
    """
    n = K.shape[0]
    s = 0.0
    for i in range(n):
        s += K[i, i]
    ridge = lam * s / n
    c = bv.copy()  # correlations with the residual (w = 0: r = g)
    chosen = np.zeros(n, dtype=np.bool_)
    filling = False
    w[:] = 0.0
    for t in range(m):
        best, j = -np.inf, -1
        for i in range(n):
            if not chosen[i] and c[i] > best:
                best, j = c[i], i
        order[t] = j
        chosen[j] = True
        if filling or not best > 0.0:
            filling = True  # nothing improves the fit: weight 0, residual (and c) unchanged
            continue
        q = t + 1
        Kp = np.empty((q, q))
        bp = np.empty(q)
        for a in range(q):
            bp[a] = bv[order[a]]
            for e in range(q):
                Kp[a, e] = K[order[a], order[e]]
            Kp[a, a] += ridge
        ws = np.empty(q)
        _nnls_one(Kp, bp, 3 * q + 10, ws)
        c[:] = bv
        for a in range(q):
            w[a] = ws[a]
            if ws[a] != 0.0:
                row = order[a]
                for i in range(n):
                    c[i] -= ws[a] * K[row, i]


@njit(cache=True, nogil=True, parallel=True)
def gradmatch_plain(G, m, lam):
    """GradMatch (OMP) on plain gradient rows G (B, n, p): (order (B, m), weights (B, m), rho (B, m))."""
    nb, n = G.shape[0], G.shape[1]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = _batch_gram_plain(G[bi])
        _gradmatch_one(K, bv, m, lam, order[bi], w[bi])
        _rho_along(K, bv, gg, order[bi], rho[bi])
    return order, w, rho


@njit(cache=True, nogil=True, parallel=True)
def gradmatch_last_layer(E, H, m, lam):
    """GradMatch (OMP) on last-layer gradients: E (B, n, C), H (B, n, h)."""
    nb, n = E.shape[0], E.shape[1]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = _batch_gram_last_layer(E[bi], H[bi])
        _gradmatch_one(K, bv, m, lam, order[bi], w[bi])
        _rho_along(K, bv, gg, order[bi], rho[bi])
    return order, w, rho
