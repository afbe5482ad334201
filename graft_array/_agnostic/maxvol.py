"""Generic array-API implementation of the maxvol family: the fallback for any namespace.

It follows the same contract as the Numba kernels (``graft_array/_numba/maxvol.py``)
step for step, with vectorised operations over the rows and a Python loop over
the k pivots (and over the batches). It runs on the array's own device, so it
also serves CuPy arrays and CUDA tensors until the RawKernels exist.

Contract (shared by every backend and by :mod:`graft_array.testing`)
--------------------------------------------------------------------
* ties in every argmax go to the lowest row index;
* a numerically deficient step takes a *fill row* (the unselected row of largest
  Euclidean norm, ties lowest index) that is not used for elimination, so
  prefixes stay nested; ``rank`` counts the other picks;
* ``deim``: greedy on the LU residual of ``V[:, :k]`` (= LAPACK getrf row pivots),
  in V's dtype, deficient when the pivot is <= max(n, r) * eps * max|V|;
* ``volume``: greedy on residual row norms (= geqp3 on ``V.T``), float64, norms
  downdated and recomputed explicitly when they fall below sqrt(eps64) of their
  last exact value, deficient when the orthogonalised row norm is
  <= max(n, r) * eps * max_i ||v_i||;
* ``tournament``: deim per tile of ``tile_rows`` rows, candidates kept tile by
  tile in ascending row order, repeated until one tile remains, deim on it;
* k > r: r pivots, then greedy det(V_S^T V_S) (rect_maxvol);
* ``refine``: Goreinov swaps on B = A inv(A_S), A = V[:, :k]; skipped (rank
  lowered to the number of pivots taken) when Gauss-Jordan with partial
  pivoting on A_S meets a pivot <= 8 k eps64 max|A_S|;
* scale: the float64 computations (norms, volume, k > r, refine) run on the
  batch (for refine: on A) as it is when its largest squared row norm is in
  [2^-512, 2^512], else on it times 2^-e, e the exponent of its max |entry|
  (exact), and deim / tournament eliminate on the batch times 2^-e when
  max|V_b| is outside [2^-60, 2^60] (float32) or [2^-500, 2^500] (float64):
  the rows of V 2^j are those of V whenever V 2^j is exactly representable.
  (Inside the first band no square over- or underflows down to 2^-255 times
  the largest row norm; float32 input is always inside it.)
"""

import math

from .._common import default_tile_rows

__all__ = ["run_maxvol"]


class _Ctx:
    """Namespace, device and a few cached constants for one call."""

    def __init__(self, xp, device):
        self.xp = xp
        self.device = device

    def arange(self, n):
        return self.xp.arange(n, device=self.device)

    def ints(self, values):
        return self.xp.asarray(values, dtype=self.xp.int64, device=self.device)

    def argmax_free(self, values, free, fill_value):
        xp = self.xp
        masked = xp.where(free, values, xp.asarray(fill_value, dtype=values.dtype, device=self.device))
        p = int(xp.argmax(masked))  # the array API returns the first occurrence
        return p, float(masked[p])

    def take_out(self, free, p):
        return self.xp.logical_and(free, self.arange(free.shape[0]) != p)


def _pow2_scale(m):
    """2^-e with m = f 2^e, 0.5 <= f < 1 (1 if m == 0; the exponent clamped for a subnormal m)."""
    if not m > 0.0:
        return 1.0
    return math.ldexp(1.0, -max(math.frexp(m)[1], -1022))


def _scaled64(ctx, V):
    """``V`` as float64, times ``2^-e`` (e the exponent of ``max |V|``, exact) if its largest squared row norm is
    outside ``[2^-512, 2^512]`` (the band of the Numba kernels' ``_sq_in_band``).

    The norm is taken on the scaled copy (no overflow warning) and its
    exponent shifted back by ``2 e``.
    """
    xp = ctx.xp
    X = xp.astype(V, xp.float64)
    if X.shape[0] * X.shape[1] == 0:
        return X
    amax = float(xp.max(xp.abs(X)))
    if not 0.0 < amax < math.inf:  # zero (nothing to scale), NaN or infinity (as it is)
        return X
    e = max(math.frexp(amax)[1], -1022)
    Xs = X * math.ldexp(1.0, -e)
    big = float(xp.max(xp.sum(Xs * Xs, axis=1)))  # in [0.25, r]
    return X if -512.0 <= math.log2(big) + 2 * e <= 512.0 else Xs


def _elim_scale(dtype_eps, vmax):
    """Scale of a deim / tournament batch: 1 while ``max|V_b|`` is inside the band, else :func:`_pow2_scale`."""
    lo, hi = (2.0 ** -60, 2.0 ** 60) if dtype_eps > 1e-10 else (2.0 ** -500, 2.0 ** 500)
    if lo <= vmax <= hi or vmax == 0.0:
        return 1.0
    return _pow2_scale(vmax)


def _row_norms(ctx, X64):
    """Row norms of ``X64`` times a common power of two (they are only compared with each other)."""
    xp = ctx.xp
    X = _scaled64(ctx, X64)
    return xp.sqrt(xp.sum(X * X, axis=1))


def _fill(ctx, norms, free):
    p, _ = ctx.argmax_free(norms, free, -1.0)
    return p


def _deim(ctx, V, kk, tol, norms):
    """DEIM on one (n, r) batch, first kk columns. Returns (pivots list, rank)."""
    xp = ctx.xp
    n = V.shape[0]
    R = V[:, :kk]
    free = xp.ones(n, dtype=xp.bool, device=ctx.device)
    cols = ctx.arange(kk)
    piv, rank = [], 0
    for j in range(kk):
        p, val = ctx.argmax_free(xp.abs(R[:, j]), free, -1.0)
        p, free, ok = _accept_or_fill(ctx, p, val > tol, norms, free, piv)
        if not ok:
            continue
        rank += 1
        if j + 1 < kk:
            factor = xp.where(free, R[:, j] / R[p, j], xp.zeros_like(R[:, j]))
            prow = xp.where(cols > j, R[p, :], xp.zeros_like(R[p, :]))
            R = R - factor[:, None] * prow[None, :]
    return piv, rank


def _accept_or_fill(ctx, p, ok, norms, free, piv):
    """Take candidate ``p`` if ``ok``, else the fill row (largest norm, lowest index); record it.

    Returns ``(row taken, updated free mask, ok)``.
    """
    if not ok:
        p = _fill(ctx, norms, free)
    piv.append(p)
    return p, ctx.take_out(free, p), ok


def _volume(ctx, V, kk):
    """Greedy volume on one batch, float64. Returns (pivots list, rank)."""
    xp = ctx.xp
    n, r = V.shape
    X = _scaled64(ctx, V)
    eps = float(xp.finfo(V.dtype).eps)
    sqrt_eps64 = math.sqrt(float(xp.finfo(xp.float64).eps))
    rho = xp.sum(X * X, axis=1)
    norms = xp.sqrt(rho)
    tol = max(n, r) * eps * float(xp.max(norms))
    rho0 = rho
    free = xp.ones(n, dtype=xp.bool, device=ctx.device)
    Q = xp.zeros((r, 0), dtype=xp.float64, device=ctx.device)
    piv, rank = [], 0
    for j in range(kk):
        p, _ = ctx.argmax_free(rho, free, -math.inf)
        w = X[p, :]
        for _ in range(2):  # CGS2: orthogonalise twice
            w = w - Q @ (w @ Q) if Q.shape[1] else w
        wn = float(xp.sqrt(xp.sum(w * w)))
        p, free, ok = _accept_or_fill(ctx, p, wn > tol, norms, free, piv)
        if not ok:
            continue
        rank += 1
        q = w / wn
        Q = xp.concat([Q, q[:, None]], axis=1)
        c = X @ q
        rho = xp.where(free, rho - c * c, rho)
        redo = xp.logical_and(free, rho <= sqrt_eps64 * rho0)
        if bool(xp.any(redo)):
            res = X - (X @ Q) @ Q.T
            exact = xp.sum(res * res, axis=1)
            rho = xp.where(redo, exact, rho)
            rho0 = xp.where(redo, exact, rho0)
    return piv, rank


def _rect(ctx, V, piv, k, norms):
    """Extend r full-rank pivots to k > r rows, greedy det(V_S^T V_S). float64."""
    xp = ctx.xp
    n = V.shape[0]
    X = _scaled64(ctx, V)
    S = xp.take(X, ctx.ints(piv), axis=0)
    Ginv = xp.linalg.inv(S.T @ S)
    s = xp.sum((X @ Ginv) * X, axis=1)
    free = xp.ones(n, dtype=xp.bool, device=ctx.device)
    for p in piv:
        free = ctx.take_out(free, p)
    piv = list(piv)
    while len(piv) < k:
        p, sp = ctx.argmax_free(s, free, -math.inf)
        free = ctx.take_out(free, p)
        piv.append(p)
        u = Ginv @ X[p, :]
        c = X @ u
        s = s - c * c / (1.0 + sp)
        Ginv = Ginv - u[:, None] * u[None, :] / (1.0 + sp)
    return piv


def _block_rank(ctx, A):
    """Gauss-Jordan with partial pivoting on the square float64 ``A`` (as the Numba ``_inverse``), pivots only.

    Returns the number of pivots taken before one is ``<= 8 k eps64 max|A|``
    (``k`` when none is).
    """
    xp = ctx.xp
    k = A.shape[0]
    thr = 8.0 * k * 2.220446049250313e-16 * float(xp.max(xp.abs(A)))
    idx = ctx.arange(k)
    for c in range(k):
        p = c + int(xp.argmax(xp.abs(A[c:, c])))
        if p != c:
            perm = list(range(k))
            perm[c], perm[p] = p, c
            A = xp.take(A, ctx.ints(perm), axis=0)
        d = float(A[c, c])
        if not abs(d) > thr:
            return c
        rowc = A[c, :] / d
        f = xp.where(idx == c, xp.zeros_like(A[:, c]), A[:, c])
        A = xp.where((idx == c)[:, None], rowc[None, :], A - f[:, None] * rowc[None, :])
    return k


def _refine(ctx, V, piv, tol, max_iters):
    """Goreinov maxvol swaps on A = V[:, :k]. Returns (pivots, converged, iterations, rank).

    ``rank < k`` (:func:`_block_rank`): the start block is numerically singular
    and the pivots are returned unchanged.
    """
    xp = ctx.xp
    k = len(piv)
    A = _scaled64(ctx, V[:, :k])
    AS = xp.take(A, ctx.ints(piv), axis=0)
    rk = _block_rank(ctx, AS)
    if rk < k:
        return list(piv), True, 0, rk
    B = xp.linalg.solve(AS.T, A.T).T
    piv = list(piv)
    eye = ctx.arange(k)
    for it in range(max_iters):
        flat = xp.reshape(xp.abs(B), (-1,))
        ij = int(xp.argmax(flat))
        i, j = divmod(ij, k)
        bij = float(B[i, j])
        if abs(bij) <= tol:
            return piv, True, it, k
        piv[j] = i
        row = B[i, :] - xp.astype(eye == j, xp.float64)
        B = B - B[:, j][:, None] * row[None, :] / bij
    converged = float(xp.max(xp.abs(B))) <= tol
    return piv, converged, max_iters, k


def _tournament(ctx, V, kk, tile_rows, tol, norms):
    xp = ctx.xp
    n = V.shape[0]
    cand = ctx.arange(n)
    while True:
        m = cand.shape[0]
        if m <= tile_rows:
            sub = xp.take(V, cand, axis=0)
            p, rank = _deim(ctx, sub, kk, tol, xp.take(norms, cand, axis=0))
            return [int(cand[i]) for i in p], rank
        nxt = []
        for s in range(0, m, tile_rows):
            rows = cand[s:min(s + tile_rows, m)]
            sub = xp.take(V, rows, axis=0)
            p, _ = _deim(ctx, sub, min(kk, rows.shape[0]), tol, xp.take(norms, rows, axis=0))
            nxt.append(xp.sort(xp.take(rows, ctx.ints(p), axis=0)))
        cand = xp.concat(nxt)


def run_maxvol(V, k, *, method, tile_rows=None, refine=False, tol=1.05, max_iters=100, xp, device):
    """Generic twin of :func:`graft_array._numba.maxvol.run_maxvol` for any array-API namespace.

    ``V`` is (B, n, r). Returns ``(pivots, rank, converged, iterations)`` as Python
    lists (one entry per batch); the caller builds the output array.
    """
    ctx = _Ctx(xp, device)
    nb, n, r = V.shape
    kk = min(k, r)
    eps = float(xp.finfo(V.dtype).eps)
    tiles = default_tile_rows(n, kk) if tile_rows is None else tile_rows
    all_piv, ranks, conv, iters = [], [], [], []
    for b in range(nb):
        Vb = V[b, ...]
        norms = _row_norms(ctx, xp.astype(Vb, xp.float64))
        if method == "volume":
            piv, rank = _volume(ctx, Vb, kk)
        else:
            vmax = float(xp.max(xp.abs(Vb)))
            sc = _elim_scale(eps, vmax)
            Ve = Vb if sc == 1.0 else xp.astype(xp.astype(Vb, xp.float64) * sc, V.dtype)  # exact
            deim_tol = max(n, r) * eps * (vmax * sc)
            if method == "deim":
                piv, rank = _deim(ctx, Ve, kk, deim_tol, norms)
            else:
                piv, rank = _tournament(ctx, Ve, kk, tiles, deim_tol, norms)
        if k > r:
            if rank < r:
                free = xp.ones(n, dtype=xp.bool, device=device)
                for p in piv:
                    free = ctx.take_out(free, p)
                while len(piv) < k:
                    p = _fill(ctx, norms, free)
                    free = ctx.take_out(free, p)
                    piv.append(p)
            else:
                piv = _rect(ctx, Vb, piv, k, norms)
        ok, it = True, 0
        if refine and rank == k:
            piv, ok, it, rank = _refine(ctx, Vb, piv, tol, max_iters)
        all_piv.append(piv)
        ranks.append(rank)
        conv.append(ok)
        iters.append(it)
    return all_piv, ranks, conv, iters
