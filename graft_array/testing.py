"""Slow, obviously-correct reference implementations and assertion helpers.

Used by the test-suite (and the benchmarks, for the published algorithm); never by
the library itself. Everything here works on one NumPy batch ``V`` of shape
``(n, r)``, in float64, with plain loops and ``numpy.linalg`` so that it can be
read against the papers line by line.

The references follow the same contract as the fast kernels (see
:func:`graft_array.maxvol`): ties go to the lowest row index, a numerically
deficient step takes a *fill row* (the unselected row of largest Euclidean norm)
and is not used for elimination.
"""

import numpy as np

from graft_array._common import rank_tol_factor

__all__ = [
    "reference_deim",
    "reference_volume",
    "reference_rect",
    "reference_refine",
    "reference_tournament",
    "reference_maxvol",
    "published_fast_maxvol",
    "log_volume",
    "lu_pivots",
    "qrcp_pivots",
    "reference_rho",
    "reference_select",
    "last_layer_gradients",
    "reference_random",
    "reference_craig",
    "reference_gradmatch",
]


def _argmax_lowest(values, mask):
    """Index of the largest ``values[i]`` with ``mask[i]`` True; ties -> lowest index."""
    best, best_i = -np.inf, -1
    for i in range(values.shape[0]):
        if mask[i] and values[i] > best:
            best, best_i = values[i], i
    return best_i


def _fill_row(V, free):
    norms = np.sqrt(np.einsum("ij,ij->i", V.astype(np.float64), V.astype(np.float64)))
    return _argmax_lowest(norms, free)


def _accept_or_fill(V, p, ok, free, piv):
    """Take ``p`` if ``ok``, else the fill row; mark it used and record it. Returns ``(row, ok)``."""
    if not ok:
        p = _fill_row(V, free)
    free[p] = False
    piv.append(p)
    return p, ok


def _deim_tol(V):
    n, r = V.shape
    scale = float(np.max(np.abs(V))) if V.size else 0.0
    return rank_tol_factor(n, r) * np.finfo(V.dtype).eps * scale


def reference_deim(V, k, *, tol=None, fill_source=None):
    """DEIM (the paper's "Fast MaxVol", done right): greedy on the LU residual.

    Returns ``(pivots, rank)``. ``k <= r`` uses ``V[:, :k]``. Computes in V's dtype.
    """
    V = np.asarray(V)
    n, r = V.shape
    kk = min(k, r)
    tol = _deim_tol(V) if tol is None else tol
    R = np.array(V[:, :kk], copy=True)
    free = np.ones(n, dtype=bool)
    piv, rank = [], 0
    for j in range(kk):
        col = np.abs(R[:, j])
        p = _argmax_lowest(col, free)
        p, ok = _accept_or_fill(V, p, col[p] > tol, free, piv)
        if not ok:
            continue
        rank += 1
        for i in range(n):
            if free[i]:
                R[i, j + 1:] -= (R[i, j] / R[p, j]) * R[p, j + 1:]
    return np.array(piv, dtype=np.int64), rank


def reference_volume(V, k):
    """Greedy volume maximisation (= QR with column pivoting on ``V.T``).

    Recomputes every residual explicitly with a least-squares projection at each
    step: O(n r^2) per step, for tests only. Returns ``(pivots, rank)`` for
    ``k <= r``.
    """
    V = np.asarray(V)
    n, r = V.shape
    X = V.astype(np.float64)
    tol = rank_tol_factor(n, r) * np.finfo(V.dtype).eps * float(np.max(np.linalg.norm(X, axis=1), initial=0.0))
    free = np.ones(n, dtype=bool)
    piv, basis, rank = [], [], 0
    for j in range(min(k, r)):
        if basis:
            Q, _ = np.linalg.qr(X[basis].T)  # orthonormal basis of the chosen rows' span
            res = X - (X @ Q) @ Q.T
        else:
            res = X
        norms = np.einsum("ij,ij->i", res, res)
        p = _argmax_lowest(norms, free)
        p, ok = _accept_or_fill(V, p, np.sqrt(norms[p]) > tol, free, piv)
        if not ok:
            continue
        basis.append(p)
        rank += 1
    return np.array(piv, dtype=np.int64), rank


def reference_rect(V, pivots, k):
    """Extend ``pivots`` (r rows of full rank) to k > r rows, greedily maximising det(V_S^T V_S).

    Brute force: every candidate's determinant by ``slogdet``. Mikhalev & Oseledets
    (2018) rect_maxvol picks the same rows.
    """
    X = np.asarray(V, dtype=np.float64)
    piv = list(int(p) for p in pivots)
    n = X.shape[0]
    while len(piv) < k:
        best, best_i = -np.inf, -1
        for i in range(n):
            if i in piv:
                continue
            S = X[piv + [i]]
            sign, ld = np.linalg.slogdet(S.T @ S)
            val = ld if sign > 0 else -np.inf
            if val > best:
                best, best_i = val, i
        piv.append(best_i)
    return np.array(piv, dtype=np.int64)


def reference_refine(V, pivots, *, tol=1.05, max_iters=100):
    """Goreinov et al. (2010) maxvol swaps on the square problem ``V[:, :k]``.

    Recomputes ``B = A inv(A_S)`` from scratch at every iteration. Returns
    ``(pivots, converged, iterations)``.
    """
    piv = np.array(pivots, dtype=np.int64)
    k = piv.shape[0]
    A = np.asarray(V, dtype=np.float64)[:, :k]
    for it in range(max_iters):
        B = np.linalg.solve(A[piv].T, A.T).T
        flat = int(np.argmax(np.abs(B)))  # row-major: lowest i, then lowest j
        i, j = divmod(flat, k)
        if abs(B[i, j]) <= tol:
            return piv, True, it
        piv[j] = i
    B = np.linalg.solve(A[piv].T, A.T).T
    return piv, bool(np.max(np.abs(B)) <= tol), max_iters


def reference_tournament(V, k, *, tile_rows):
    """Tournament (communication-avoiding) pivoting built from :func:`reference_deim`."""
    V = np.asarray(V)
    n, r = V.shape
    kk = min(k, r)
    tol = _deim_tol(V)
    cand = np.arange(n)
    while True:
        if cand.shape[0] <= tile_rows:
            p, rank = reference_deim(V[cand], kk, tol=tol)
            return cand[p], rank
        nxt = []
        for s in range(0, cand.shape[0], tile_rows):
            rows = cand[s:s + tile_rows]
            p, _ = reference_deim(V[rows], min(kk, rows.shape[0]), tol=tol)
            nxt.append(np.sort(rows[p]))
        cand = np.concatenate(nxt)


def reference_maxvol(V, k, *, method="deim", tile_rows=None, refine=False, tol=1.05, max_iters=100):
    """The whole :func:`graft_array.maxvol` contract on one (n, r) NumPy batch, slowly.

    Returns ``(pivots, rank)`` (after refinement when ``refine=True``).
    """
    from graft_array._common import default_tile_rows

    V = np.asarray(V)
    n, r = V.shape
    if method == "deim":
        piv, rank = reference_deim(V, k)
    elif method == "volume":
        piv, rank = reference_volume(V, k)
    elif method == "tournament":
        tr = default_tile_rows(n, min(k, r)) if tile_rows is None else tile_rows
        piv, rank = reference_tournament(V, k, tile_rows=tr)
    else:
        raise ValueError(method)
    if k > r:
        if rank < r:
            free = np.ones(n, dtype=bool)
            free[piv] = False
            extra = []
            for _ in range(k - r):
                p = _fill_row(V, free)
                free[p] = False
                extra.append(p)
            piv = np.concatenate([piv, np.array(extra, dtype=np.int64)])
        else:
            piv = reference_rect(V, piv, k)
    if refine and rank == k:
        piv, _, _ = reference_refine(V, piv, tol=tol, max_iters=max_iters)
    return piv, rank


def lu_pivots(A):
    """Row pivots of LU with partial pivoting (LAPACK getrf via scipy), in selection order."""
    import scipy.linalg

    A = np.asarray(A)
    _, ipiv = scipy.linalg.lu_factor(A, check_finite=False)
    perm = np.arange(A.shape[0])
    for j, p in enumerate(ipiv):
        perm[j], perm[p] = perm[p], perm[j]
    return perm[: A.shape[1]].astype(np.int64)


def qrcp_pivots(V, k=None):
    """The first k rows chosen by QR with column pivoting on ``V.T`` (LAPACK geqp3 via scipy)."""
    import scipy.linalg

    _, perm = scipy.linalg.qr(np.asarray(V).T, pivoting=True, mode="r", check_finite=False)
    return perm[: (V.shape[1] if k is None else k)].astype(np.int64)


def log_volume(V, rows):
    """log sqrt(det(V_S V_S^T)) for k <= r, log sqrt(det(V_S^T V_S)) for k > r (float64)."""
    S = np.asarray(V, dtype=np.float64)[np.asarray(rows)]
    G = S @ S.T if S.shape[0] <= S.shape[1] else S.T @ S
    sign, ld = np.linalg.slogdet(G)
    return 0.5 * ld if sign > 0 else -np.inf


def published_fast_maxvol(V, k):
    """Re-statement of the published GRAFT greedy (``graft-pytorch``'s ``index_sel``).

    At step i it takes every row holding the largest ``|entry|`` of column i of the
    *whole* working matrix, then deflates the later columns with the pseudo-inverse
    of the current pivot rows only. Earlier pivots can re-enter, so the result may
    contain duplicates and has a lower volume than DEIM; cost O(n k^3). The
    published code also overwrites the caller's array; this re-statement works on a
    copy so that a benchmark can call it repeatedly. Returns all rows picked, in
    order, duplicates included (the published code later de-duplicates them).
    """
    W = np.array(np.asarray(V)[:, :k], dtype=np.float64, copy=True)
    picked = []
    for i in range(k):
        col_max = np.max(np.abs(W[:, i]))
        rows = np.where(np.abs(W) == col_max)[0]
        W[:, i + 1:] = W[:, i + 1:] - W[:, : i + 1] @ (np.linalg.pinv(W[rows, : i + 1]) @ W[rows, i + 1:])
        picked.extend(int(x) for x in rows)
    return np.array(picked, dtype=np.int64)


def reference_rho(G, pivots):
    """rho(m) for m = 1..len(pivots) by explicit least squares: ||g - G_S^T x*|| / ||g||, g = sum_i G_i."""
    G = np.asarray(G, dtype=np.float64)
    g = G.sum(axis=0)
    gn = np.linalg.norm(g)
    out = []
    for m in range(1, len(pivots) + 1):
        A = G[np.asarray(pivots[:m])].T
        x = np.linalg.lstsq(A, g, rcond=None)[0]
        out.append(np.linalg.norm(g - A @ x) / gn if gn > 0 else 0.0)
    return np.array(out)


def last_layer_gradients(residuals, embeddings):
    """Materialise g_i = e_i (x) [h_i; 1] as rows (n, C * (h + 1)). For tests only."""
    E = np.asarray(residuals, dtype=np.float64)
    Ht = np.concatenate([np.asarray(embeddings, dtype=np.float64), np.ones((E.shape[0], 1))], axis=1)
    return np.einsum("ic,ih->ich", E, Ht).reshape(E.shape[0], -1)


def reference_select(features, G=None, *, fraction=0.25, rank=None, method="deim", tol=0.1, band=0.5,
                     weight_reg=0.01, min_size=None, max_size=None):
    """One batch of :func:`graft_array.select`, the slow way (exact SVD, explicit least squares, scipy NNLS).

    ``G`` are materialised per-sample gradient rows (see :func:`last_layer_gradients`).
    Returns ``(indices, weights, size, rho)``.
    """
    import math

    from scipy.optimize import nnls

    F = np.asarray(features, dtype=np.float64)
    n, d = F.shape
    centre = fraction * n
    if G is None or band == 0:
        lo = hi = min(n, max(1, int(round(centre))))
    else:
        lo = min(n, max(1, int(math.floor((1.0 - band) * centre))))
        hi = min(n, max(1, int(math.ceil((1.0 + band) * centre))))
    lo = lo if min_size is None else min(min_size, n)
    hi = hi if max_size is None else min(max_size, n)
    hi = max(hi, lo) if max_size is None else hi
    lo = min(lo, hi) if min_size is None else lo
    r = min(max(1, int(round(centre))) if rank is None else rank, n, d)
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    V = U[:, :r] * (s[:r] ** 2 > max(n, d) * np.finfo(np.float64).eps * s[0] ** 2)
    piv, _ = reference_maxvol(V, hi, method=method)
    if G is None:
        return piv, np.full(hi, n / hi), hi, None
    rho = reference_rho(G, piv)
    ok = [m for m in range(lo, hi + 1) if rho[m - 1] <= tol]
    m = ok[0] if ok else hi
    G = np.asarray(G, dtype=np.float64)
    A = G[piv[:m]].T
    s2 = float((A**2).sum()) / m  # mean squared norm of the chosen gradients
    if s2 > 0:  # the least-squares form of select's weight fit: rows for the pull to n/m and for the sum
        A = np.vstack([A, np.sqrt(weight_reg * s2) * np.eye(m), np.sqrt(100.0 * s2) * np.ones((1, m))])
        y = np.concatenate([G.sum(axis=0), np.full(m, np.sqrt(weight_reg * s2) * n / m), [np.sqrt(100.0 * s2) * n]])
        w, _ = nnls(A, y)
    else:
        w = np.zeros(m)
    w = w * (n / w.sum()) if w.sum() > 0 else np.full(m, n / m)
    return piv[:m], w, m, rho


def reference_budget_sizes(rho, norms, lo, hi, crit, total):
    """select's ``budget="call"`` sizes, one row at a time: ``(B,)`` int64.

    ``rho``: each batch's residual curve rho_b(1..hi_b) (a list of 1-D arrays);
    ``norms``: ||g_b||, each batch's gradient norm; ``lo``, ``hi``: the band of
    each batch; ``crit``: the criterion's sizes; ``total``: the budget. The
    decrease of ||g_b|| rho_b at m is ||g_b|| (rho_b(m - 1) - rho_b(m)) (rho_b(0) = 1,
    NaN counted as 0, negatives as 0), made non-increasing along m by a running
    minimum. While the sum is below ``total`` the batch whose next row has the
    largest decrease grows, while above the batch whose last row has the
    smallest shrinks (ties: the lowest batch), each within [lo_b, hi_b].
    """
    gains = []
    for r, nb in zip(rho, norms):
        r = np.asarray(r, dtype=np.float64)
        d = np.concatenate([[1.0], r[:-1]]) - r
        d = np.where(np.isfinite(d) & (d > 0), d, 0.0) * float(nb)
        gains.append(np.minimum.accumulate(d))
    m = np.array(crit, dtype=np.int64)
    while m.sum() < total:
        cand = [(-gains[b][m[b]], b) for b in range(len(m)) if m[b] < hi[b]]
        if not cand:
            break
        m[min(cand)[1]] += 1
    while m.sum() > total:
        cand = [(gains[b][m[b] - 1], b) for b in range(len(m)) if m[b] > lo[b]]
        if not cand:
            break
        m[min(cand)[1]] -= 1
    return m


# --------------------------------------------------------------------------------------
# the baseline strategies of select (one batch each)
# --------------------------------------------------------------------------------------
def reference_random(n, m, seed, start):
    """One batch of ``select(..., strategy="random")`` with Python integers: ``(indices, weights)``.

    The batch's generator is SplitMix64 seeded with mix(mix(seed) + start) (64-bit
    wrapping arithmetic; ``seed`` is select's call seed, ``start`` the batch's
    dataset position); row i's key is the top 53 bits of its (i+1)-th output. The
    m rows of smallest key (ties: lower row) in key order; weights n / m.
    """
    mask = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    state = mix((mix(int(seed) & mask) + (int(start) & mask)) & mask)
    keys = [mix((state + (i + 1) * 0x9E3779B97F4A7C15) & mask) >> 11 for i in range(n)]
    order = sorted(range(n), key=lambda i: (keys[i], i))[:m]
    return np.array(order, dtype=np.int64), np.full(m, n / m)


def reference_craig(G, m):
    """CRAIG (Mirzasoleiman et al. 2020) on one batch of materialised gradient rows G (n, p), plain greedy.

    Similarities s_ij = dmax - ||g_i - g_j|| (dmax: the batch's largest distance);
    facility location F(S) = sum_i max_{j in S} s_ij, maximised greedily with every
    gain re-evaluated at every step (ties to the lowest index). Weights: the number
    of rows whose most similar selected row is j (ties to the earliest selected).
    Returns ``(indices, weights)``.
    """
    G = np.asarray(G, dtype=np.float64)
    n = G.shape[0]
    D = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = np.sqrt(np.sum((G[i] - G[j]) ** 2))
    S = D.max() - D
    cur = np.zeros(n)
    chosen = []
    for _ in range(m):
        best, best_j = -1.0, -1
        for j in range(n):
            if j in chosen:
                continue
            gain = 0.0
            for i in range(n):
                gain += max(0.0, S[i, j] - cur[i])
            if gain > best:
                best, best_j = gain, j
        chosen.append(best_j)
        cur = np.maximum(cur, S[:, best_j])
    w = np.zeros(m)
    for i in range(n):
        w[_argmax_lowest(S[i, chosen], np.ones(m, dtype=bool))] += 1.0
    return np.array(chosen, dtype=np.int64), w


def reference_gradmatch(G, m, *, lam=0.5, seed=0, start=0):
    """GradMatch as CORDS runs it (``OrthogonalMP_REG_Parallel``, positive=True) on one batch of gradient rows G (n, p).

    Target g = sum_i g_i, ridge = lam * s (s: the batch's mean squared row
    norm), S empty and w empty to begin with. At most m steps, each:

    1. r = g - G_S^T w; stop if ||r|| <= GRADMATCH_TOL ||g||;
    2. j = the row with the largest <g_j, r> over all rows (signed; ties to the
       lowest index); stop if j is in S;
    3. at the first step, S = [j], w = [<g_j, g> / ||g_j||^2];
       later, stop if the augmented column [g_j; sqrt(ridge) e_j] lies within
       SPAN_TOL of the span of the columns of S (squared distance <=
       SPAN_TOL^2 (||g_j||^2 + ridge)); else S += [j] and repeat: w = the
       least-squares solution of [G_S^T; sqrt(ridge) I] w = [g; 0]; if some
       w < 0, the row of the most negative one (the earliest in S on ties)
       leaves S; until w >= 0. Stop after this step if j left S.

    Then the rows outside S of smallest :func:`reference_random` key of
    ``(seed, start)``, in key order, fill the budget, at the mean of w (1 if S
    is empty); the weights are scaled to sum to n (n / m each if they sum to
    0). Returns ``(indices, weights)``: S in order, then the fill.
    """
    from graft_array.strategies.gradmatch import GRADMATCH_TOL
    from graft_array._agnostic.criterion import SPAN_TOL

    G = np.asarray(G, dtype=np.float64)
    n = G.shape[0]
    g = G.sum(axis=0)
    ridge = lam * float((G**2).sum()) / n
    S, w = [], np.zeros(0)

    def ridge_fit(rows):
        A = np.vstack([G[rows].T, np.sqrt(ridge) * np.eye(len(rows))])
        return A, np.linalg.lstsq(A, np.concatenate([g, np.zeros(len(rows))]), rcond=None)[0]

    for t in range(m):
        r = g - G[S].T @ w
        if not r @ r > GRADMATCH_TOL**2 * (g @ g):
            break
        c = G @ r
        j = _argmax_lowest(c, np.ones(n, dtype=bool))
        if j in S:
            break
        if t == 0:
            S, w = [j], np.array([c[j] / (G[j] @ G[j])])
            continue
        A, _ = ridge_fit(S + [j])
        x = np.linalg.lstsq(A[:, :-1], A[:, -1], rcond=None)[0]
        if not np.sum((A[:, -1] - A[:, :-1] @ x) ** 2) > SPAN_TOL**2 * (G[j] @ G[j] + ridge):
            break
        S = S + [j]
        while S:
            w = ridge_fit(S)[1]
            if w.min() >= 0:
                break
            del S[int(np.argmin(w))]
        if not S:
            w = np.zeros(0)
        if j not in S:
            break
    q = len(S)
    fill = [int(i) for i in reference_random(n, n, seed, start)[0] if i not in S][: m - q]
    weights = np.concatenate([w, np.full(m - q, w.mean() if q else 1.0)])
    total = weights.sum()
    weights = weights * (n / total) if total > 0 else np.full(m, n / m)
    return np.array(S + fill, dtype=np.int64), weights


# --------------------------------------------------------------------------------------
# CREST (graft_array.adapters.crest): the selection step and the trigger
# --------------------------------------------------------------------------------------
def reference_crest_select(E, labels, k):
    """One CREST mini-batch coreset (Yang, Kang & Mirzasoleiman, ICML 2023) of the rows E (n, C), plain greedy.

    Per class c (in ascending label order) with n_c rows: k_c = min(n_c,
    ceil(k n_c / n)) rows chosen by facility location on the class's rows alone:
    D_ij = ||e_i - e_j|| (Euclidean), s_ij = max(D) - D_ij (max over the class's
    D), F(S) = sum_i max_{j in S} s_ij maximised by the plain greedy (every
    gain re-evaluated at every step, ties to the lowest row). Weight of j: the
    number of the class's rows whose most similar selected row is j (ties to the
    earliest selected); all weights are then scaled to mean 1 over the whole
    selection. Returns ``(indices, weights)``: rows of E (class after class, each
    class in greedy order) and float64 weights.
    """
    E = np.asarray(E, dtype=np.float64)
    labels = np.asarray(labels)
    n = E.shape[0]
    chosen_all, w_all = [], []
    for c in sorted(set(labels.tolist())):
        rows = np.array([i for i in range(n) if labels[i] == c], dtype=np.int64)
        chosen, w = reference_craig(E[rows], min(len(rows), -(-k * len(rows) // n)))  # CRAIG on the class alone
        chosen_all += rows[chosen].tolist()
        w_all += w.tolist()
    w = np.array(w_all, dtype=np.float64)
    if w.size:
        w = w * (w.size / w.sum())
    return np.array(chosen_all, dtype=np.int64), w


def reference_quadratic_trigger(L0, g, h, delta, L_true, tau):
    """CREST's check of its quadratic model of the loss, with Python floats.

    L_approx = L0 + sum_i delta_i g_i + 1/2 sum_i h_i delta_i^2 (delta: the
    parameters' displacement since the model was built, h: the Hessian
    diagonal); the check fires when |L_true - L_approx| > tau * L_true. Returns
    ``(fired, L_approx)``.
    """
    g, h, delta = (np.asarray(v, dtype=np.float64).ravel() for v in (g, h, delta))
    approx = float(L0)
    for i in range(delta.size):
        approx += float(delta[i]) * float(g[i]) + 0.5 * float(h[i]) * float(delta[i]) ** 2
    return abs(float(L_true) - approx) > float(tau) * float(L_true), approx


__all__ += ["reference_crest_select", "reference_quadratic_trigger"]


# --------------------------------------------------------------------------------------
# the family behind select(strategy=...): AdaCore, CoLM, SAS, ClipCov, MKDT / PDD
# (written from the strategies' docstrings; plain loops, float64, exactly rounded sums)
# --------------------------------------------------------------------------------------
def _fsum_dot(a, b):
    """<a, b> of two 1-D float64 vectors, exactly rounded (order-free: exact ties stay ties)."""
    import math

    return math.fsum(float(x) * float(y) for x, y in zip(a, b))


def _pick(t, gains, chosen, follow, rtol):
    """Step t of a greedy: the largest gain (ties to the lowest index), or ``follow[t]`` checked against it.

    ``gains``: {row: (gain, scale)} over the unselected rows, each gain one exactly rounded sum and ``scale`` the
    sum of its terms' magnitudes. With ``follow``, the followed row must be unselected and within ``rtol`` times
    the largest scale of the best gain (a tie up to rounding); an AssertionError says where it is not.
    """
    best, best_i = -np.inf, -1
    for i in sorted(gains):
        if gains[i][0] > best:
            best, best_i = gains[i][0], i
    if follow is None:
        return best_i
    j = int(follow[t])
    tol = rtol * max(sc for _, sc in gains.values())
    assert j not in chosen and j in gains, f"step {t}: row {j} is not a candidate"
    assert gains[j][0] >= best - tol, (
        f"step {t}: row {j} has gain {gains[j][0]!r}, the best is row {best_i} with {best!r} (tolerance {tol:.3g})")
    return j


def reference_facility_location(S, m, *, follow=None, rtol=0.0):
    """Plain greedy facility location on a similarity matrix S (n, n) with s_ij >= 0: ``(indices, weights)``.

    F(S) = sum_i max_{j in S} s_ij (0 for the empty set). Each of the m steps
    evaluates every unselected column's gain sum_i max(0, s_ij - cur_i) (one
    exactly rounded sum: gains equal in exact arithmetic compare equal) and takes
    the largest (ties to the lowest index). Weight of a selected j: the number of
    rows i whose most similar selected row is j (ties to the earliest selected).

    ``follow``: an order to check instead (a step may take any row whose gain is
    within ``rtol`` times the gains' scale of the best, a tie up to rounding);
    AssertionError where it is not a greedy order. The weights are then those of
    ``follow``.
    """
    import math

    S = np.asarray(S, dtype=np.float64)
    n = S.shape[0]
    cur = [0.0] * n
    chosen = []
    for t in range(m):
        gains = {}
        for j in range(n):
            if j not in chosen:
                terms = [max(0.0, S[i, j] - cur[i]) for i in range(n)]
                gains[j] = (math.fsum(terms), math.fsum(abs(S[i, j]) + abs(cur[i]) for i in range(n)))
        j = _pick(t, gains, chosen, follow, rtol)
        chosen.append(j)
        for i in range(n):
            cur[i] = max(cur[i], S[i, j])
    w = np.zeros(m)
    for i in range(n):
        best, best_t = -np.inf, -1
        for t, j in enumerate(chosen):
            if S[i, j] > best:
                best, best_t = S[i, j], t
        w[best_t] += 1.0
    return np.array(chosen, dtype=np.int64), w


def _dmax_minus_distance(P):
    """s_ij = dmax - ||p_i - p_j|| (CRAIG's similarities) of rows P (n, p), by explicit differences."""
    import math

    n = P.shape[0]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(i):
            D[i, j] = D[j, i] = math.sqrt(math.fsum((P[i] - P[j]) ** 2))
    return D.max(initial=0.0) - D


def reference_adacore(G, D, m, damping=1e-3, *, follow=None, rtol=0.0):
    """One batch of ``select(..., strategy="adacore")`` on plain rows G, D (n, p): ``(indices, weights)``.

    p_ia = g_ia / (Dbar_a + delta), Dbar_a = mean_i |D_ia| over the batch, delta =
    damping * mean_a Dbar_a (1 when that mean is 0); then CRAIG on the rows p_i: s_ij = dmax - ||p_i - p_j||, plain
    greedy facility location (:func:`reference_facility_location`; ``follow`` and
    ``rtol`` as there).
    """
    import math

    G = np.asarray(G, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    n, p = G.shape
    dbar = [math.fsum(abs(float(D[i, a])) for i in range(n)) / n for a in range(p)]
    mean = math.fsum(dbar) / p if p else 0.0
    delta = damping * mean if mean > 0 else 1.0
    P = np.empty((n, p))
    for i in range(n):
        for a in range(p):
            P[i, a] = G[i, a] / (dbar[a] + delta)
    return reference_facility_location(_dmax_minus_distance(P), m, follow=follow, rtol=rtol)


def reference_adacore_last_layer(E, Q, H, m, damping=1e-3, *, follow=None, rtol=0.0):
    """AdaCore on last-layer gradients: residuals E (n, C), their Hessian diagonal Q (n, C), embeddings H (n, h).

    The gradient of row i is g_i[c, a] = e_ic x_ia with x_i = [h_i; 1], its Hessian
    diagonal D_i[c, a] = |q_ic| x_ia^2; then :func:`reference_adacore`'s rule on
    those C (h + 1) coordinates. Returns ``(indices, weights)``.
    """
    E = np.asarray(E, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    n, C = E.shape
    X = np.concatenate([H, np.ones((n, 1))], axis=1)
    w = X.shape[1]
    G = np.empty((n, C * w))
    D = np.empty((n, C * w))
    for i in range(n):
        for c in range(C):
            for a in range(w):
                G[i, c * w + a] = E[i, c] * X[i, a]
                D[i, c * w + a] = abs(Q[i, c]) * (X[i, a] * X[i, a])
    return reference_adacore(G, D, m, damping, follow=follow, rtol=rtol)


def reference_class_chunks(labels, k, width=None, quotas=None):
    """How select splits a labelled call: ``[(label, rows, m), ...]``, class after class (ascending label).

    Class c (n_c of the N rows) gets ``quotas[c]`` rows, or min(n_c, max(1, ceil(k
    n_c / N))); its rows (in order) are cut into ceil(n_c / width) near-equal
    chunks (the first ones one row longer), each chunk of n rows taking
    min(n, max(1, round(k_c / n_c * n))) rows.
    """
    labels = np.asarray(labels).ravel()
    N = labels.shape[0]
    out = []
    for c in sorted(set(labels.tolist())):
        rows = [i for i in range(N) if labels[i] == c]
        n_c = len(rows)
        k_c = min(n_c, max(1, -(-k * n_c // N))) if quotas is None else quotas[c]
        w = n_c if width is None else width
        parts = -(-n_c // w)
        q, r = divmod(n_c, parts)
        start = 0
        for p in range(parts):
            size = q + (1 if p < r else 0)
            chunk = np.array(rows[start:start + size], dtype=np.int64)
            start += size
            out.append((c, chunk, min(size, max(1, int(round(k_c / n_c * size))))))
    return out


def reference_colm(G, sources, k, small_sources="auto", dims=2560, beta1=0.9, beta2=0.999, eps=1e-8, m=None,
                   v=None, t=0, *, follow=None, rtol=0.0):
    """One call of ``select(..., strategy="colm")`` on one batch of gradient rows G (N, p).

    ``k``: the call's budget. Returns ``(picked, small, (m, v, t))``: ``picked[c] = (rows, weights)``
    for every source c (ascending): a small source's rows in order, weight 1 each;
    a large source's rows in greedy order with cluster-size weights; ``small``: the set
    of small sources. Then the
    selector moments after the call: g = the mean raw gradient of all picked rows,
    m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2 (m, v = 0 when ``m`` is None),
    t' = t + 1.

    1. small sources: "auto": n_s S <= k (S sources); an int q: the q smallest
       (ties to the lower id); a list: those ids.
    2. u_i = m_hat / (sqrt(v_hat) + eps) with m_i = b1 m + (1 - b1) g_i,
       v_i = b2 v + (1 - b2) g_i^2, hats: divided by 1 - b^(t + 1).
    3. per large source: the min(dims, p) coordinates of largest |mean_i u_i| over
       the source (ties to the lower coordinate).
    4. per large source: ceil(R n_s / N_large) rows (R = k - the small sources' rows,
       at least 1, at most n_s) by facility location with s_ij = (1 + cos_ij) / 2
       (a cosine within 16 eps of 1 counts as 1).

    ``follow``: {source: its rows (indices of G) in an order to check}, ``rtol``: see
    :func:`reference_facility_location`.
    """
    import math

    G = np.asarray(G, dtype=np.float64)
    src = np.asarray(sources).ravel()
    N, p = G.shape
    ids = sorted(set(src.tolist()))
    rows_of = {c: [i for i in range(N) if src[i] == c] for c in ids}
    count = {c: len(rows_of[c]) for c in ids}
    if isinstance(small_sources, str):
        small = {c for c in ids if count[c] * len(ids) <= k}
    elif isinstance(small_sources, int):
        small = set(sorted(ids, key=lambda c: (count[c], c))[:small_sources])
    else:
        small = {c for c in ids if c in [int(x) for x in small_sources]}
    R = max(0, k - sum(count[c] for c in small))
    n_large = sum(count[c] for c in ids if c not in small)
    fresh = m is None
    m0 = np.zeros(p) if fresh else np.asarray(m, dtype=np.float64)
    v0 = np.zeros(p) if fresh else np.asarray(v, dtype=np.float64)
    t1 = t + 1
    picked, every = {}, []
    for c in ids:
        rows = rows_of[c]
        if c in small:
            picked[c] = (np.array(rows, dtype=np.int64), np.ones(len(rows)))
            every += rows
            continue
        U = np.empty((len(rows), p))
        for r, i in enumerate(rows):
            for a in range(p):
                mh = (beta1 * m0[a] + (1.0 - beta1) * G[i, a]) / (1.0 - beta1**t1)
                vh = (beta2 * v0[a] + (1.0 - beta2) * G[i, a] * G[i, a]) / (1.0 - beta2**t1)
                U[r, a] = mh / (math.sqrt(vh) + eps)
        score = [abs(math.fsum(U[:, a]) / len(rows)) for a in range(p)]
        keep = sorted(range(p), key=lambda a: (-score[a], a))[:min(dims, p)]
        Uk = U[:, keep]
        nr = len(rows)
        norm = [math.sqrt(_fsum_dot(Uk[r], Uk[r])) for r in range(nr)]
        S = np.empty((nr, nr))
        for a in range(nr):
            for b in range(nr):
                if a == b:
                    cos = 1.0
                elif norm[a] > 0 and norm[b] > 0:
                    cos = min(1.0, max(-1.0, _fsum_dot(Uk[a], Uk[b]) / (norm[a] * norm[b])))
                    cos = 1.0 if cos >= 1.0 - 16.0 * np.finfo(np.float64).eps else cos  # parallel: an exact tie
                else:
                    cos = 0.0
                S[a, b] = 0.5 + 0.5 * cos
        budget = min(nr, max(1, -(-R * nr // n_large)))
        order = None
        if follow is not None:
            where = {i: r for r, i in enumerate(rows)}
            order = [where[int(i)] for i in follow[c]]
        idx, w = reference_facility_location(S, budget, follow=order, rtol=rtol)
        picked[c] = (np.array(rows, dtype=np.int64)[idx], w)
        every += [rows[j] for j in idx]
    g = np.array([math.fsum(G[i, a] for i in every) / len(every) for a in range(p)])
    m1 = (1.0 - beta1) * g if fresh else beta1 * m0 + (1.0 - beta1) * g
    v1 = (1.0 - beta2) * g * g if fresh else beta2 * v0 + (1.0 - beta2) * g * g
    return picked, small, (m1, v1, t1)


def _greedy_lowest(terms_of, n, m, follow=None, rtol=0.0):
    """m steps of: the unselected row of largest gain, ties to the lowest index (``follow``: see :func:`_pick`).

    ``terms_of(i, chosen)``: the terms whose exactly rounded sum is row i's gain.
    """
    import math

    chosen = []
    for t in range(m):
        gains = {}
        for i in range(n):
            if i not in chosen:
                terms = terms_of(i, chosen)
                gains[i] = (math.fsum(terms), math.fsum(abs(x) for x in terms))
        chosen.append(_pick(t, gains, chosen, follow, rtol))
    return np.array(chosen, dtype=np.int64)


def reference_sas(X, m, penalty=True, *, follow=None, rtol=0.0):
    """One batch (or group chunk) of ``select(..., strategy="sas")`` on embeddings X (n, d): ``(indices, weights)``.

    D_ij = max(0, cos(x_i, x_j)) (D_ii = 1, 0 for a zero row; a zero row has
    similarity 0 with everything). Greedy: the unselected row of largest
    sum_j D_ij - sum_{s in S} D_si (``penalty``) or sum_j D_ij, ties to the lowest
    index (``follow``, ``rtol``: see :func:`reference_facility_location`). Weights n / m.
    """
    import math

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    norm = [math.sqrt(_fsum_dot(X[i], X[i])) for i in range(n)]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if norm[i] == 0 or norm[j] == 0:
                D[i, j] = 0.0
            elif i == j:
                D[i, j] = 1.0
            else:
                D[i, j] = max(0.0, min(1.0, _fsum_dot(X[i], X[j]) / (norm[i] * norm[j])))
    def terms(i, chosen):  # summed exactly: gains equal in exact arithmetic compare equal
        return list(D[i]) + ([-D[s, i] for s in chosen] if penalty else [])

    return _greedy_lowest(terms, n, m, follow, rtol), np.full(m, n / m)


def reference_clipcov(X, T, m, *, follow=None, rtol=0.0):
    """One batch (or group chunk) of ``select(..., strategy="clipcov")``: pairs (x_i, t_i), ``(indices, weights)``.

    K_ij = <x_i, x_j> <t_i, t_j>; greedy, at step t (t pairs chosen), on the gain
    (2 (t + 1) / n) sum_j K_sj - K_ss - 2 sum_{i in S} K_is, ties to the lowest index (``follow``, ``rtol``: see
    :func:`reference_facility_location`). Weights n / m.
    """
    X = np.asarray(X, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    n = X.shape[0]
    K = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            K[i, j] = _fsum_dot(X[i], X[j]) * _fsum_dot(T[i], T[j])

    def terms(s, chosen):  # summed exactly: gains equal in exact arithmetic compare equal
        c = 2.0 * (len(chosen) + 1) / n
        return [c * K[s, j] for j in range(n)] + [-K[s, s]] + [-2.0 * K[i, s] for i in chosen]

    return _greedy_lowest(terms, n, m, follow, rtol), np.full(m, n / m)


def reference_cross_covariance_error(X, T, indices, weights=None):
    """||C_S - C||_F / ||C||_F by outer products: C = (1/n) sum_i x_i t_i^T, C_S = sum_j w_j x_sj t_sj^T / sum_j w_j."""
    import math

    X = np.asarray(X, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    idx = [int(i) for i in np.asarray(indices).ravel()]
    w = [1.0] * len(idx) if weights is None else [float(x) for x in np.asarray(weights).ravel()]
    C = np.zeros((X.shape[1], T.shape[1]))
    for i in range(X.shape[0]):
        C += np.outer(X[i], T[i])
    C /= X.shape[0]
    CS = np.zeros_like(C)
    for j, i in enumerate(idx):
        CS += w[j] * np.outer(X[i], T[i])
    CS /= math.fsum(w)
    return math.sqrt(math.fsum(((CS - C) ** 2).ravel())) / math.sqrt(math.fsum((C**2).ravel()))


def reference_top_scores(scores, m):
    """MKDT / PDD on one batch (or class chunk): the m rows of largest score, largest first, ties to the lowest
    index; weights n / m. Returns ``(indices, weights)``."""
    s = [float(x) for x in np.asarray(scores).ravel()]
    n = len(s)
    order = sorted(range(n), key=lambda i: (-s[i], i))[:m]
    return np.array(order, dtype=np.int64), np.full(m, n / m)


__all__ += ["reference_facility_location", "reference_adacore", "reference_adacore_last_layer",
            "reference_class_chunks", "reference_colm", "reference_sas", "reference_clipcov",
            "reference_cross_covariance_error", "reference_top_scores"]
