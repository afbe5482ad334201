"""Facility location, the step CRAIG and CREST share (and AdaCore, CoLM, augmentation coresets later).

On one batch's per-sample gradients: distances d_ij = ||g_i - g_j|| from the
batch's gradient Gram, similarities s_ij = dmax - d_ij, the facility-location
objective F(S) = sum_i max_{j in S} s_ij maximised greedily (ties to the lowest
index; the Numba kernel's lazy greedy gives exactly the plain greedy's rows),
and the weight of each chosen row = the number of the batch's rows whose most
similar chosen row it is (ties to the earliest chosen): positive integers
summing to n. Numba: :func:`facility_location_plain_nb` /
:func:`facility_location_last_layer_nb`, one batch per ``prange`` iteration;
any namespace: :func:`facility_location` on the Grams, vectorised over batches.
"""

import numpy as np
from numba import njit, prange

from .._agnostic.criterion import _dev, _mT, _take_rows
from .._numba.criterion import _EPS
from ._batch import (
    batch_gram_last_layer_nb,
    batch_gram_plain_nb,
    full_gram,
    gather,
    onehot,
    rho_along_nb,
)

__all__ = ["DUPLICATE_ULPS", "facility_on_gram_nb", "facility_on_grams_nb", "facility_location_plain_nb",
           "facility_location_last_layer_nb", "distances", "cosine_similarities", "facility_location", "on_grams",
           "run"]

#: a squared distance d_ij^2 = K_ii + K_jj - 2 K_ij <= DUPLICATE_ULPS * eps * (K_ii + K_jj) is the Gram's
#: round-off, not a distance: equal rows whose products a BLAS rounded differently are exactly 0 apart
DUPLICATE_ULPS = 16.0


@njit(cache=True, nogil=True)
def _similarities_nb(K):
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
def _cosine_similarities_nb(K):
    """In place: the Gram K (n, n) becomes s_ij = (1 + cos_ij) / 2 in [0, 1] (CoLM's cosine, shifted).

    cos_ij = K_ij / sqrt(K_ii K_jj), clipped to [-1, 1], and exactly 1 from
    1 - ``DUPLICATE_ULPS`` eps on (parallel rows, whatever the Gram's round-off,
    tie exactly); a zero row has cosine 0 with every other row and 1 with itself. The affine map keeps the similarities
    non-negative, as the greedy's empty-set value 0 needs; it leaves every
    greedy choice of the plain cosine unchanged (the gains only scale by 1/2).
    """
    n = K.shape[0]
    inv = np.empty(n)
    for i in range(n):
        inv[i] = 1.0 / np.sqrt(K[i, i]) if K[i, i] > 0.0 else 0.0
    for i in range(n):
        for j in range(i):
            c = min(1.0, max(-1.0, K[i, j] * inv[i] * inv[j]))
            if c >= 1.0 - DUPLICATE_ULPS * _EPS:  # parallel rows (round-off of the Gram): exactly 1, a true tie
                c = 1.0
            K[i, j] = 0.5 + 0.5 * c
            K[j, i] = K[i, j]
        K[i, i] = 1.0


@njit(cache=True, nogil=True)
def _gain_nb(S, cur, j):
    """Facility-location gain of adding j: sum_i max(0, s_ij - cur_i) (row j: S is symmetric)."""
    acc = 0.0
    for i in range(S.shape[0]):
        v = S[j, i] - cur[i]
        if v > 0.0:
            acc += v
    return acc


@njit(cache=True, nogil=True)
def _before_nb(va, ia, vb, ib):
    """Heap order: the larger gain first, ties to the lower index."""
    return va > vb or (va == vb and ia < ib)


@njit(cache=True, nogil=True)
def _sift_down_nb(val, idx, size, p):
    while True:
        a = 2 * p + 1
        if a >= size:
            return
        c = a
        if a + 1 < size and _before_nb(val[a + 1], idx[a + 1], val[a], idx[a]):
            c = a + 1
        if not _before_nb(val[c], idx[c], val[p], idx[p]):
            return
        val[p], val[c] = val[c], val[p]
        idx[p], idx[c] = idx[c], idx[p]
        p = c


@njit(cache=True, nogil=True)
def facility_location_one_nb(S, m, lazy, order, w):
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
            val[j] = _gain_nb(S, cur, j)
            idx[j] = j
        for p in range(n // 2 - 1, -1, -1):
            _sift_down_nb(val, idx, n, p)
    size = n
    for t in range(m):
        if lazy:
            while True:
                j = idx[0]
                if stamp[j] == t:  # fresh: the exact greedy choice
                    size -= 1
                    val[0], idx[0] = val[size], idx[size]
                    _sift_down_nb(val, idx, size, 0)
                    break
                val[0] = _gain_nb(S, cur, j)
                stamp[j] = t
                _sift_down_nb(val, idx, size, 0)
        else:
            best, j = -1.0, -1
            for i in range(n):
                if not chosen[i]:
                    g = _gain_nb(S, cur, i)
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
def facility_on_gram_nb(K, bv, gg, m, lazy, cosine, order, w, rho):
    """One batch from its gradient Gram K (n, n), b = K 1 and ||g||^2: rows, cluster sizes and rho(m) along them.

    K is overwritten (by the similarities).
    """
    Kg = K.copy()
    if cosine:
        _cosine_similarities_nb(K)
    else:
        _similarities_nb(K)
    facility_location_one_nb(K, m, lazy, order, w)
    rho_along_nb(Kg, bv, gg, order, rho)


@njit(cache=True, nogil=True, parallel=True)
def facility_on_grams_nb(K, m, lazy, cosine):
    """Facility location of every batch from its Gram K (B, n, n) (overwritten): (order, weights, rho).

    b = K 1 and ||g||^2 = 1^T K 1 (g: the batch's summed gradient) come from K itself.
    """
    nb, n = K.shape[0], K.shape[1]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        bv = np.empty(n)
        gg = 0.0
        for i in range(n):
            acc = 0.0
            for j in range(n):
                acc += K[bi, i, j]
            bv[i] = acc
            gg += acc
        facility_on_gram_nb(K[bi], bv, gg, m, lazy, cosine, order[bi], w[bi], rho[bi])
    return order, w, rho


@njit(cache=True, nogil=True, parallel=True)
def facility_location_plain_nb(G, m, lazy, cosine=False):
    """CRAIG on plain gradient rows G (B, n, p): (order (B, m), weights (B, m), rho (B, m)).

    ``cosine``: CoLM's similarities (:func:`_cosine_similarities_nb`) instead of dmax - d.
    """
    nb = G.shape[0]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = batch_gram_plain_nb(G[bi])
        facility_on_gram_nb(K, bv, gg, m, lazy, cosine, order[bi], w[bi], rho[bi])
    return order, w, rho


@njit(cache=True, nogil=True, parallel=True)
def facility_location_last_layer_nb(E, H, m, lazy):
    """CRAIG on last-layer gradients e_i (x) [h_i; 1]: E (B, n, C), H (B, n, h); K never leaves the batch."""
    nb = E.shape[0]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = batch_gram_last_layer_nb(E[bi], H[bi])
        facility_on_gram_nb(K, bv, gg, m, lazy, False, order[bi], w[bi], rho[bi])
    return order, w, rho


def distances(xp, K):
    """Gradient distances d_ij = ||g_i - g_j|| (B, n, n) from the Grams K (B, n, n), exactly symmetric.

    d_ij^2 = K_ii + K_jj - 2 K_ij, set to 0 at or below ``DUPLICATE_ULPS`` eps
    (K_ii + K_jj): duplicates are 0 apart whatever order the BLAS summed
    their products in (the Numba twin's rule).
    """
    diag = xp.linalg.diagonal(K)
    scale = diag[:, :, None] + diag[:, None, :]
    d2 = scale - 2.0 * K
    d = xp.sqrt(xp.where(d2 > (DUPLICATE_ULPS * 2.220446049250313e-16) * scale, d2, xp.zeros_like(d2)))
    return 0.5 * (d + _mT(xp, d))  # exactly symmetric (a matrix product need not be)


def cosine_similarities(xp, K):
    """(1 + cos_ij) / 2 (B, n, n) from the Grams K: the twin of :func:`_cosine_similarities_nb`."""
    diag = xp.linalg.diagonal(K)
    inv = xp.where(diag > 0.0, 1.0 / xp.sqrt(xp.where(diag > 0.0, diag, xp.ones_like(diag))), xp.zeros_like(diag))
    c = xp.clip(K * inv[:, :, None] * inv[:, None, :], -1.0, 1.0)
    c = 0.5 * (c + _mT(xp, c))  # exactly symmetric
    c = xp.where(c >= 1.0 - DUPLICATE_ULPS * 2.220446049250313e-16, xp.ones_like(c), c)  # parallel rows: exactly 1
    eye = xp.eye(K.shape[1], dtype=xp.bool, device=_dev(K))[None, :, :]
    return xp.where(eye, xp.ones_like(c), 0.5 + 0.5 * c)


def facility_location(xp, K, m, cosine=False):
    """CRAIG on the gradient Grams K (B, n, n): (order (B, m) int64, weights (B, m) float64).

    Plain greedy (every gain re-evaluated at every step), ties to the lowest
    index; the Numba twin's lazy greedy gives the same rows. Weights: how many
    rows of the batch have each selected row as their most similar one (ties
    to the earliest selected). ``cosine``: CoLM's similarities
    (:func:`cosine_similarities`) instead of dmax - d.
    """
    nb, n, _ = K.shape
    if cosine:
        S = cosine_similarities(xp, K)
    else:
        d = distances(xp, K)
        dmax = xp.max(xp.reshape(d, (nb, n * n)), axis=1)
        S = dmax[:, None, None] - d
    cur = xp.zeros((nb, n), dtype=xp.float64, device=_dev(K))
    assign = xp.zeros((nb, n), dtype=xp.int64, device=_dev(K))
    chosen = xp.zeros((nb, n), dtype=xp.bool, device=_dev(K))
    cols = []
    for t in range(m):
        v = S - cur[:, :, None]
        gains = xp.sum(xp.where(v > 0.0, v, xp.zeros_like(v)), axis=1)  # (B, n): gain of adding column j
        j = xp.argmax(xp.where(chosen, xp.full_like(gains, -1.0), gains), axis=1)  # first maximum: lowest index
        cols.append(j)
        chosen = xp.logical_or(chosen, onehot(xp, j, n))
        srow = _take_rows(xp, S, j[:, None])[:, 0, :]  # row j = column j (S is symmetric)
        better = xp.full((nb, n), True, device=_dev(K)) if t == 0 else srow > cur
        cur = xp.where(better, srow, cur)
        assign = xp.where(better, xp.full_like(assign, t), assign)
    order = xp.stack(cols, axis=1)
    hits = assign[:, :, None] == xp.arange(m, dtype=xp.int64, device=_dev(K))[None, None, :]
    weights = xp.sum(xp.astype(hits, xp.float64), axis=1)
    return xp.astype(order, xp.int64), weights


def run(F, grads, grads_kind, m, opts, seed, starts, name, cosine=False):
    """Facility location of every batch of a stack: (order (B, m), sizes (B,), rho (B, m), weights (B, m)).

    ``cosine`` (plain rows only): CoLM's similarities instead of CRAIG's dmax - d.
    """
    nb = F.shape[0]
    if name == "numba":
        parts = tuple(np.ascontiguousarray(g) for g in grads)
        if grads_kind == "plain":
            order, weights, rho = facility_location_plain_nb(parts[0], m, True, cosine)
        else:
            order, weights, rho = facility_location_last_layer_nb(parts[0], parts[1], m, True)
        return order, np.full(nb, m, dtype=np.int64), rho, weights
    from .._namespace import array_namespace, device_of

    xp = array_namespace(F)
    order, rho, weights = on_grams(xp, *full_gram(xp, grads, grads_kind), m, name, cosine)
    return order, xp.full((nb,), m, dtype=xp.int64, device=device_of(F)), rho, weights


def on_grams(xp, K, bv, gg, m, name, cosine=False):
    """(order, rho, weights) of facility location on the Grams K (B, n, n), b (B, n), gg (B,), any namespace.

    On the cuda backend the facility-location kernel runs every batch in one
    launch where it fits (CRAIG's similarities), else the generic code.
    """
    from .._cuda import facility as cfac
    from .._cuda.criterion import rho_curve_on

    if name == "cuda" and not cosine and cfac.fits(K.shape[1], m):
        order, weights = cfac.facility_location_like(K, m)
    else:
        order, weights = facility_location(xp, K, m, cosine)
    KS, bS = gather(xp, K, bv, order)
    return order, rho_curve_on(name, xp, KS, bS, gg), weights
