"""The batch-sized gradient Gram the baselines work on, Numba (``*_nb``) and any array-API namespace.

Built by the GRAFT criterion's own Gram routines with every row of the batch as a
pivot (the same scale rule, :func:`graft_array._numba.checks.unit_scale`); the n x n
matrix of one batch lives inside that batch's work only.
"""

import numpy as np
from numba import njit

from .._agnostic import criterion
from .._agnostic.criterion import _dev, _mT, _take_rows
from .._numba.checks import abs_max, unit_scale
from .._numba.criterion import _gram_last_layer_one, _gram_plain_one, _rho_one

__all__ = ["batch_gram_plain_nb", "batch_gram_last_layer_nb", "rho_along_nb", "full_gram", "gather", "onehot",
           "unweighted", "penalised_greedy_nb", "penalised_greedy"]


@njit(cache=True, nogil=True)
def batch_gram_plain_nb(Gb):
    """(K, b, ||g||^2) of one batch's plain gradient rows Gb (n, p): the n x n Gram, b = K 1.

    Those of Gb 2^k, the criterion's scale rule (:func:`graft_array._numba.checks.unit_scale` of max |Gb|).
    """
    n, p = Gb.shape
    K = np.empty((n, n))
    bv = np.empty(n)
    gg = _gram_plain_one(Gb, np.arange(n), K, bv, np.empty(p), np.empty((n, p)), unit_scale(abs_max(Gb)))
    return K, bv, gg


@njit(cache=True, nogil=True)
def batch_gram_last_layer_nb(Eb, Hb):
    """(K, b, ||g||^2) of one batch's last-layer gradients e_i (x) [h_i; 1], never formed.

    Eb scaled as in :func:`batch_gram_plain_nb` (the embeddings are not).
    """
    n, C = Eb.shape
    h = Hb.shape[1]
    K = np.empty((n, n))
    bv = np.empty(n)
    gg = _gram_last_layer_one(Eb, Hb, np.arange(n), K, bv, np.empty((C, h + 1)), np.empty((n, C)),
                              np.empty((n, h + 1)), np.empty(h + 1), unit_scale(abs_max(Eb)))
    return K, bv, gg


@njit(cache=True, nogil=True)
def rho_along_nb(K, bv, gg, order, rho):
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


@njit(cache=True, nogil=True)
def penalised_greedy_nb(K, m, a, b, d, dw, pw, order):
    """m rows of a penalised greedy on a symmetric K (n, n) into ``order``, ties to the lowest index.

    Step t (t rows S chosen) takes the unchosen row of largest
    ``(a (t + 1) + b) / d * sum_j K_ij - dw K_ii - pw sum_{s in S} K_si``: SAS
    (a = 0, b = d = 1, dw = 0, pw = 1 or 0) and ClipCov (a = 2, b = 0, d = n,
    dw = 1, pw = 2) are this rule.
    """
    n = K.shape[0]
    tot = np.empty(n)
    pen = np.zeros(n)
    for i in range(n):
        s = 0.0
        for j in range(n):
            s += K[i, j]
        tot[i] = s
    chosen = np.zeros(n, dtype=np.bool_)
    for t in range(m):
        c = (a * (t + 1) + b) / d
        best, k = -np.inf, -1
        for i in range(n):
            g = c * tot[i] - dw * K[i, i] - pw * pen[i]
            if not chosen[i] and g > best:
                best, k = g, i
        order[t] = k
        chosen[k] = True
        if pw != 0.0:
            for i in range(n):
                pen[i] += K[k, i]


def penalised_greedy(xp, K, m, a, b, d, dw, pw):
    """:func:`penalised_greedy_nb` on every batch of K (B, n, n), vectorised over batches: (B, m) int64."""
    nb, n, _ = K.shape
    tot = xp.sum(K, axis=2)
    diag = xp.linalg.diagonal(K)
    pen = xp.zeros_like(tot)
    chosen = xp.zeros((nb, n), dtype=xp.bool, device=_dev(K))
    idx = xp.arange(n, dtype=xp.int64, device=_dev(K))[None, :]
    cols = []
    for t in range(m):
        g = ((a * (t + 1) + b) / d) * tot - dw * diag - pw * pen
        k = xp.argmax(xp.where(chosen, xp.full_like(g, -np.inf), g), axis=1)  # first maximum: lowest index
        cols.append(k)
        hit = idx == k[:, None]
        chosen = xp.logical_or(chosen, hit)
        if pw != 0.0:
            pen = pen + xp.sum(xp.where(hit[:, :, None], K, xp.zeros_like(K)), axis=1)
    return xp.astype(xp.stack(cols, axis=1), xp.int64)


def full_gram(xp, grads, grads_kind):
    """(K (B, n, n), b (B, n), gg (B,)) of every row of each batch: the criterion's Gram with all rows as pivots."""
    first = grads[0]
    nb, n = first.shape[0], first.shape[1]
    piv = xp.broadcast_to(xp.arange(n, dtype=xp.int64, device=_dev(first))[None, :], (nb, n))
    if grads_kind == "plain":
        return criterion.gram_plain(xp, grads[0], piv)
    return criterion.gram_last_layer(xp, grads[0], grads[1], piv)


def gather(xp, K, b, order):
    """K[order][:, order] (B, m, m) and b[order] (B, m), batch by batch."""
    rows = _take_rows(xp, K, order)  # (B, m, n)
    KS = _mT(xp, _take_rows(xp, _mT(xp, rows), order))
    bS = _take_rows(xp, b[:, :, None], order)[:, :, 0]
    return KS, bS


def onehot(xp, j, n):
    return xp.arange(n, dtype=xp.int64, device=_dev(j))[None, :] == j[:, None]


def unweighted(order, n):
    """The result of a strategy without gradients for its rows ``order`` (B, m) of batches of n rows.

    (order, sizes m (B,), rho NaN (B, m), weights n / m (B, m)), in ``order``'s namespace and device.
    """
    from .._namespace import array_namespace, device_of

    xp = array_namespace(order)
    dev = device_of(order)
    nb, m = order.shape
    return (order, xp.full((nb,), m, dtype=xp.int64, device=dev),
            xp.full((nb, m), float("nan"), dtype=xp.float64, device=dev),
            xp.full((nb, m), n / m, dtype=xp.float64, device=dev))
