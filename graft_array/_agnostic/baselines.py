"""Baseline selectors on one stack of batches, any array-API namespace: random, CRAIG, GradMatch.

Generic twins of :mod:`graft_array._numba.baselines`, vectorised over the batch
axis (one step of each greedy for every batch at once). They work on the
batch-sized gradient Gram ``K`` (B, n, n) of :func:`full_gram`, built by the GRAFT
criterion's Gram routines with every row as a pivot.

* random: row i of batch b gets a key, the (i+1)-th output of a SplitMix64
  stream seeded by ``(seed, start_b)`` (the batch's dataset position); the m
  smallest keys are taken, in key order. The keys come from NumPy (they depend
  on shapes and positions only); the sort runs in the arrays' namespace.
* CRAIG (Mirzasoleiman, Bilmes, Leskovec, ICML 2020): greedy facility location on
  s_ij = dmax - ||g_i - g_j||, weights = cluster sizes.
* GradMatch (Killamsetty et al., ICML 2021), the OMP variant: orthogonal matching
  pursuit of the batch gradient with non-negative ridge refits.
"""

import numpy as np

from . import criterion
from .criterion import SPAN_TOL, _dev, _mT, _take_rows

__all__ = ["random_keys", "random_subset", "full_gram", "gather", "distances", "craig", "gradmatch",
           "DUPLICATE_ULPS"]

#: a squared distance d_ij^2 = K_ii + K_jj - 2 K_ij <= DUPLICATE_ULPS * eps * (K_ii + K_jj) is the Gram's
#: round-off, not a distance: equal rows whose products a BLAS rounded differently are exactly 0 apart
DUPLICATE_ULPS = 16.0

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def random_keys(seed, starts, n):
    """(B, n) float64 keys in [0, 1) (NumPy) of rows 0..n-1 of batches starting at ``starts`` (B,).

    Batch b's generator is SplitMix64 seeded with mix(mix(seed) + start_b) (uint64
    arithmetic, wrapping); row i's key is its (i+1)-th output's top 53 bits.
    """
    with np.errstate(over="ignore"):
        s = _mix64(_mix64(np.array([seed], dtype=np.uint64)) + np.asarray(starts).astype(np.int64).view(np.uint64))
        i = np.arange(1, n + 1, dtype=np.uint64)
        keys = _mix64(s[:, None] + i[None, :] * _GOLDEN)
    return (keys >> np.uint64(11)).astype(np.float64) * 2.0**-53


def random_subset(xp, starts, seed, n, m, device):
    """(B, m) int64: each batch's m rows of smallest key, in key order (ties keep the row order)."""
    u = xp.asarray(random_keys(seed, starts, n), device=device)
    return xp.astype(xp.argsort(u, axis=1, stable=True)[:, :m], xp.int64)


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


def _onehot(xp, j, n):
    return xp.arange(n, dtype=xp.int64, device=_dev(j))[None, :] == j[:, None]


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


def craig(xp, K, m):
    """CRAIG on the gradient Grams K (B, n, n): (order (B, m) int64, weights (B, m) float64).

    Plain greedy (every gain re-evaluated at every step), ties to the lowest
    index; the Numba twin's lazy greedy gives the same rows. Weights: how many
    rows of the batch have each selected row as their most similar one (ties
    to the earliest selected).
    """
    nb, n, _ = K.shape
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
        chosen = xp.logical_or(chosen, _onehot(xp, j, n))
        srow = _take_rows(xp, S, j[:, None])[:, 0, :]  # row j = column j (S is symmetric)
        better = xp.full((nb, n), True, device=_dev(K)) if t == 0 else srow > cur
        cur = xp.where(better, srow, cur)
        assign = xp.where(better, xp.full_like(assign, t), assign)
    order = xp.stack(cols, axis=1)
    hits = assign[:, :, None] == xp.arange(m, dtype=xp.int64, device=_dev(K))[None, None, :]
    weights = xp.sum(xp.astype(hits, xp.float64), axis=1)
    return xp.astype(order, xp.int64), weights


def _nnls_stack(xp, K, b):
    """:func:`criterion.nnls_gram` for a stack K (B, q, q), b (B, q).

    One batched Cholesky and solve serve every problem whose unconstrained
    solution is positive (nnls_gram's own shortcut, same tests); the others go
    through nnls_gram one by one.
    """
    nb, q = b.shape
    dev = _dev(b)
    eps = 2.220446049250313e-16
    diagK = xp.linalg.diagonal(K)
    ok = xp.zeros(nb, dtype=xp.bool, device=dev)
    sol = xp.zeros((nb, q), dtype=xp.float64, device=dev)
    try:
        L = xp.linalg.cholesky(K)
        d = xp.linalg.diagonal(L)
        sol = xp.linalg.solve(K, b[:, :, None])[:, :, 0]
        tol = 10.0 * q * eps * xp.max(xp.abs(sol), axis=1)  # nnls_gram's homogeneous rule for a weight
        fin = xp.all(xp.reshape(xp.isfinite(L), (nb, q * q)), axis=1)
        ok = xp.logical_and(fin, xp.all(d * d > SPAN_TOL**2 * diagK, axis=1))
        ok = xp.logical_and(ok, xp.all(sol > tol[:, None], axis=1))
    except Exception:  # some problem is not positive definite: each library raises its own LinAlgError
        pass
    w = xp.where(ok[:, None], sol, xp.zeros_like(sol))
    if bool(xp.all(ok)):
        return w
    for i in range(nb):
        if not bool(ok[i]):
            wi = criterion.nnls_gram(xp, K[i, ...], b[i, ...])
            w = xp.where((xp.arange(nb, device=dev) == i)[:, None], wi[None, :], w)
    return w


def gradmatch(xp, K, b, m, lam):
    """GradMatch (OMP) on Grams K (B, n, n) and b_i = <g_i, g> (B, n): (order (B, m), weights (B, m)).

    Step t adds the unselected row of largest correlation <g_j, r> with the
    residual r = g - sum_S w_j g_j (ties to the lowest index); while that
    correlation is positive the weights of the selected rows are refitted,
    min ||sum w_j g_j - g||^2 + lam s ||w||^2 over w >= 0 with s = trace(K) / n;
    after the first step without a positive correlation the remaining rows
    follow in order of correlation with weight 0.
    """
    nb, n, _ = K.shape
    dev = _dev(K)
    ridge = lam * xp.sum(xp.linalg.diagonal(K), axis=1) / n  # (B,)
    c = b
    chosen = xp.zeros((nb, n), dtype=xp.bool, device=dev)
    filling = xp.zeros(nb, dtype=xp.bool, device=dev)
    wq = xp.zeros((nb, 0), dtype=xp.float64, device=dev)
    cols = []
    for t in range(m):
        cand = xp.where(chosen, xp.full_like(c, -float("inf")), c)
        j = xp.argmax(cand, axis=1)
        best = _take_rows(xp, cand[:, :, None], j[:, None])[:, 0, 0]
        cols.append(j)
        chosen = xp.logical_or(chosen, _onehot(xp, j, n))
        filling = xp.logical_or(filling, xp.logical_not(best > 0.0))
        refit = xp.logical_not(filling)
        wq = xp.concat([wq, xp.zeros((nb, 1), dtype=xp.float64, device=dev)], axis=1)
        if not bool(xp.any(refit)):
            continue
        q = t + 1
        order = xp.stack(cols, axis=1)
        KS, bS = gather(xp, K, b, order)
        eye = xp.eye(q, dtype=xp.float64, device=dev)
        KS = KS + ridge[:, None, None] * eye
        KS = xp.where(refit[:, None, None], KS, eye)  # batches that stopped refitting: a harmless identity
        bS = xp.where(refit[:, None], bS, xp.ones_like(bS))
        wq = xp.where(refit[:, None], _nnls_stack(xp, KS, bS), wq)
        rows = _take_rows(xp, K, order)  # (B, q, n)
        c = xp.where(refit[:, None], b - xp.sum(rows * wq[:, :, None], axis=1), c)
    return xp.astype(xp.stack(cols, axis=1), xp.int64), wq
