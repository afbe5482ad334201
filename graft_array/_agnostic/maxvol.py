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
  in V's dtype, deficient when the pivot is <= f * eps * max|V|, f =
  max(r, min(n, r**2)) (``_common.rank_tol_factor``: numpy matrix_rank's
  max(n, r), capped at the r**2 of LU's rounding error, which does not grow with n);
* ``volume``: greedy on residual row norms (= geqp3 on ``V.T``), float64, norms
  downdated and recomputed explicitly when they fall below sqrt(eps64) of their
  last exact value, deficient when the orthogonalised row norm is
  <= f * eps * max_i ||v_i||;
* ``tournament``: deim per tile of ``tile_rows`` rows, candidates kept tile by
  tile in ascending row order, repeated until one tile remains, deim on it;
* k > r: r pivots, then greedy det(V_S^T V_S) (rect_maxvol);
* ``refine``: Goreinov swaps on B = A inv(A_S), A = V[:, :k], A_S inverted by
  Gauss-Jordan with partial pivoting; skipped (``iterations = -1``, ``rank``
  untouched) when it meets a pivot <= f eps max|V_b| (the greedy
  step's rule, eps of V's dtype);
* k > r: the scores x_i^T (V_S^T V_S)^-1 x_i from the Cholesky factor of the
  Gram matrix, a non-positive diagonal replaced by sqrt(eps64 G_aa) (1 if
  G_aa = 0); a step with no finite score takes the fill row;
* scale: the float64 computations (norms, volume, k > r, refine) run on the
  batch as it is when max|V_b| = a is 0 or 2^-256 <= a and a sqrt(r) <= 2^256,
  else on it times 2^k, k from :func:`graft_array._common.unit_exponents`
  (exact), decided and applied once per batch; deim / tournament eliminate on
  the batch times 2^k when a is outside [2^-60, 2^60] (float32) or
  [2^-500, 2^500] (float64): the rows of V 2^j are those of V whenever V 2^j is
  exactly representable. float32 input never leaves the first band.
"""

import math

import numpy as np

from .._common import default_tile_rows, rank_tol_factor, unit_exponents
from .criterion import batch_abs_max

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


_BAND_LO = 2.0 ** -256  # the Numba kernels' _in_band
_BAND_HI = 2.0 ** 256


def _in_band(amax, r):
    """The float64 computations may run on the batch as it is (the rule of the Numba kernels' ``_in_band``)."""
    return amax == 0.0 or (_BAND_LO <= amax and amax * math.sqrt(r) <= _BAND_HI)


def _in_elim_band(dtype_eps, vmax):
    """A deim / tournament batch of ``max|V_b|`` = ``vmax`` is eliminated as it is (the Numba ``_elim_scale``)."""
    lo, hi = (2.0 ** -60, 2.0 ** 60) if dtype_eps > 1e-10 else (2.0 ** -500, 2.0 ** 500)
    return lo <= vmax <= hi or vmax == 0.0


class _Batch:
    """One (n, r) batch ``Vb`` with its float64 copy, scaled once if needed, and its fill norms, both made lazily.

    ``amax``: max|V_b| (a Python float); ``scale``: 2^k from ``unit_exponents``.
    """

    def __init__(self, ctx, Vb, amax, scale):
        self.ctx, self.V, self.amax, self.scale = ctx, Vb, amax, scale
        self._X = self._sq = self._norms = None

    @property
    def X(self):
        """``V_b`` as float64, times ``scale`` outside the band (:func:`_in_band`)."""
        if self._X is None:
            xp = self.ctx.xp
            X = xp.astype(self.V, xp.float64)
            self._X = X if _in_band(self.amax, X.shape[1]) else X * self.scale
        return self._X

    @property
    def sq(self):
        """Squared row norms of :attr:`X`, summed in column order with each square and sum rounded (as the Numba
        and CUDA kernels sum them: a row and its permutation, whose norms may differ in the last bits, rank alike)."""
        if self._sq is None:
            xp, X = self.ctx.xp, self.X
            sq = xp.zeros(X.shape[:1], dtype=X.dtype, device=self.ctx.device)
            for c in range(X.shape[1]):
                sq = sq + X[:, c] * X[:, c]
            self._sq = sq
        return self._sq

    @property
    def norms(self):
        """Row norms of :attr:`X` (the fill norms)."""
        if self._norms is None:
            self._norms = self.ctx.xp.sqrt(self.sq)
        return self._norms


def _fill(ctx, norms, free):
    p, _ = ctx.argmax_free(norms, free, -1.0)
    return p


def _deim(ctx, V, kk, tol, norms):
    """DEIM on one (n, r) batch, first kk columns. Returns (pivots list, rank).

    ``norms``: the fill norms of V's rows, or a callable giving them (called at the first fill).
    """
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
        p = _fill(ctx, norms() if callable(norms) else norms, free)
    piv.append(p)
    return p, ctx.take_out(free, p), ok


def _volume(ctx, X, rho, kk, eps):
    """Greedy volume on one batch ``X`` (float64, in band), ``rho`` its squared row norms. Returns (pivots, rank)."""
    xp = ctx.xp
    n, r = X.shape
    sqrt_eps64 = math.sqrt(float(xp.finfo(xp.float64).eps))
    norms = xp.sqrt(rho)
    tol = rank_tol_factor(n, r) * eps * float(xp.max(norms))
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


def _rect(ctx, X, piv, k, norms):
    """Extend r full-rank pivots to k > r rows, greedy det(V_S^T V_S); ``X`` float64, in band.

    The algorithm of the Numba ``_rect_full`` step for step: Cholesky (by rows)
    of the Gram matrix of the pivot rows with the same floor on a non-positive
    diagonal (singular in float64 despite the rank test: sqrt(eps64 G_aa), 1 if
    G_aa = 0), scores s_i = ||L^-1 x_i||^2, Sherman-Morrison downdates, and the
    fill row (largest ``norms``) at a step with no finite score. No inverse is
    formed, so nothing can raise. The elementwise operations are those of the
    kernel in the same order (it uses no fused multiply-add there), so the
    twins give the same rows even on nearly singular Gram matrices.
    """
    xp = ctx.xp
    n, r = X.shape
    S = xp.take(X, ctx.ints(piv), axis=0)
    G = xp.zeros((r, r), dtype=xp.float64, device=ctx.device)
    for j in range(r):  # the Numba kernel's accumulation order (the rounding decides near-singular scores)
        G = G + S[j, :][:, None] * S[j, :][None, :]
    Gh = [[float(G[a, c]) for c in range(a + 1)] for a in range(r)]  # r (r + 1) / 2 scalars, on the host
    L = [[0.0] * r for _ in range(r)]
    for a in range(r):  # Cholesky by rows
        gaa = Gh[a][a]
        for c in range(a):
            acc = Gh[a][c]
            for t in range(c):
                acc -= L[a][t] * L[c][t]
            L[a][c] = acc / L[c][c]
        acc = gaa
        for t in range(a):
            acc -= L[a][t] * L[a][t]
        L[a][a] = math.sqrt(acc) if acc > 0.0 else (math.sqrt(2.220446049250313e-16 * gaa) if gaa > 0.0 else 1.0)
    Zt = []  # rows of Z^T = L^-1 X^T
    for a in range(r):
        za = X[:, a]
        for t in range(a):
            za = za - L[a][t] * Zt[t]
        Zt.append(za * (1.0 / L[a][a]))
    s = Zt[0] * Zt[0]
    for a in range(1, r):
        s = s + Zt[a] * Zt[a]
    free = xp.ones(n, dtype=xp.bool, device=ctx.device)
    for p in piv:
        free = ctx.take_out(free, p)
    piv = list(piv)
    C, dv = [], []
    ninf = xp.asarray(-math.inf, dtype=xp.float64, device=ctx.device)
    while len(piv) < k:
        cand = xp.where(xp.logical_and(free, xp.logical_not(xp.isnan(s))), s, ninf)
        p = int(xp.argmax(cand))  # first occurrence: lowest index on ties
        if not float(cand[p]) > -math.inf:  # no finite (or +inf) score left: the fill row
            p = _fill(ctx, norms, free)
        free = ctx.take_out(free, p)
        piv.append(p)
        d = 1.0 + float(s[p])
        ct = float(Zt[0][p]) * Zt[0]
        for a in range(1, r):
            ct = ct + float(Zt[a][p]) * Zt[a]
        for tau in range(len(C)):  # earlier rank-one terms
            ct = ct - (float(C[tau][p]) / dv[tau]) * C[tau]
        C.append(ct)
        dv.append(d)
        s = s - ct * ct * (1.0 / d)
    return piv


def _inverse(ctx, A, thr):
    """Gauss-Jordan with partial pivoting on the square float64 ``A`` (the Numba ``_inverse``).

    Returns ``inv(A)``, or None at the first pivot ``|d| <= thr`` (numerically singular).
    """
    xp = ctx.xp
    k = A.shape[0]
    idx = ctx.arange(k)
    M = xp.concat([A, xp.astype(idx[:, None] == idx[None, :], xp.float64)], axis=1)
    for c in range(k):
        p = c + int(xp.argmax(xp.abs(M[c:, c])))
        if p != c:
            perm = list(range(k))
            perm[c], perm[p] = p, c
            M = xp.take(M, ctx.ints(perm), axis=0)
        d = float(M[c, c])
        if not abs(d) > thr:
            return None
        rowc = M[c, :] / d
        f = xp.where(idx == c, xp.zeros_like(M[:, c]), M[:, c])
        M = xp.where((idx == c)[:, None], rowc[None, :], M - f[:, None] * rowc[None, :])
    return M[:, k:]


def _refine(ctx, X, piv, tol, max_iters, stol):
    """Goreinov maxvol swaps on A = X[:, :k]. Returns (pivots, converged, iterations).

    ``iterations == -1``: the start block is numerically singular (a Gauss-Jordan
    pivot ``<= stol``, :func:`_inverse`) and the pivots are returned unchanged.
    """
    xp = ctx.xp
    k = len(piv)
    A = X[:, :k]
    Ai = _inverse(ctx, xp.take(A, ctx.ints(piv), axis=0), stol)
    if Ai is None:
        return list(piv), True, -1
    B = A @ Ai
    piv = list(piv)
    eye = ctx.arange(k)
    for it in range(max_iters):
        flat = xp.reshape(xp.abs(B), (-1,))
        ij = int(xp.argmax(flat))
        i, j = divmod(ij, k)
        bij = float(B[i, j])
        if abs(bij) <= tol:
            return piv, True, it
        piv[j] = i
        row = B[i, :] - xp.astype(eye == j, xp.float64)
        B = B - B[:, j][:, None] * row[None, :] / bij
    converged = float(xp.max(xp.abs(B))) <= tol
    return piv, converged, max_iters


def _tournament(ctx, V, kk, tile_rows, tol, batch):
    """Tournament on one batch; ``batch`` (:class:`_Batch`) gives the fill norms when a tile needs them."""
    xp = ctx.xp
    n = V.shape[0]
    cand = ctx.arange(n)

    def norms_of(rows):
        return lambda: xp.take(batch.norms, rows, axis=0)

    while True:
        m = cand.shape[0]
        if m <= tile_rows:
            sub = xp.take(V, cand, axis=0)
            p, rank = _deim(ctx, sub, kk, tol, norms_of(cand))
            return [int(cand[i]) for i in p], rank
        nxt = []
        for s in range(0, m, tile_rows):
            rows = cand[s:min(s + tile_rows, m)]
            sub = xp.take(V, rows, axis=0)
            p, _ = _deim(ctx, sub, min(kk, rows.shape[0]), tol, norms_of(rows))
            nxt.append(xp.sort(xp.take(rows, ctx.ints(p), axis=0)))
        cand = xp.concat(nxt)


def run_maxvol(V, k, *, method, tile_rows=None, refine=False, tol=1.05, max_iters=100, xp, device,
               check_finite=False):
    """Generic twin of :func:`graft_array._numba.maxvol.run_maxvol` for any array-API namespace.

    ``V`` is (B, n, r). Returns ``(pivots, rank, converged, iterations)`` as Python
    lists (one entry per batch); the caller builds the output array.
    ``iterations`` is -1 where refinement was skipped for a numerically
    singular start block (``rank`` counts the greedy picks either way).
    ``check_finite``: return None where V has a NaN or an infinity, found by the
    per-batch max |V| that the plan reads anyway (the standard's ``max``
    propagates NaN; an infinity is its own max); else V must be finite.
    """
    ctx = _Ctx(xp, device)
    nb, n, r = V.shape
    kk = min(k, r)
    eps = float(xp.finfo(V.dtype).eps)
    tiles = default_tile_rows(n, kk) if tile_rows is None else tile_rows
    amaxes = batch_abs_max(xp, V).tolist()  # one reduction and one transfer for all batches (NaN / inf: not finite)
    if check_finite and not all(math.isfinite(a) for a in amaxes):
        return None
    scales = [math.ldexp(1.0, int(e)) for e in unit_exponents(np.asarray(amaxes, dtype=np.float64))]
    all_piv, ranks, conv, iters = [], [], [], []
    for b in range(nb):
        Vb = V[b, ...]
        bt = _Batch(ctx, Vb, amaxes[b], scales[b])
        if method == "volume":
            piv, rank = _volume(ctx, bt.X, bt.sq, kk, eps)
        else:
            sc = 1.0 if _in_elim_band(eps, bt.amax) else bt.scale
            Ve = Vb if sc == 1.0 else xp.astype(xp.astype(Vb, xp.float64) * sc, V.dtype)  # exact
            deim_tol = rank_tol_factor(n, r) * eps * (bt.amax * sc)
            if method == "deim":
                piv, rank = _deim(ctx, Ve, kk, deim_tol, lambda: bt.norms)
            else:
                piv, rank = _tournament(ctx, Ve, kk, tiles, deim_tol, bt)
        if k > r:
            if rank < r:
                norms = bt.norms
                free = xp.ones(n, dtype=xp.bool, device=device)
                for p in piv:
                    free = ctx.take_out(free, p)
                while len(piv) < k:
                    p = _fill(ctx, norms, free)
                    free = ctx.take_out(free, p)
                    piv.append(p)
            else:
                piv = _rect(ctx, bt.X, piv, k, bt.norms)
        ok, it = True, 0
        if refine and rank == k:
            stol = rank_tol_factor(n, r) * eps * bt.amax
            if not _in_band(bt.amax, r):
                stol = stol * bt.scale
            piv, ok, it = _refine(ctx, bt.X, piv, tol, max_iters, stol)
        all_piv.append(piv)
        ranks.append(rank)
        conv.append(ok)
        iters.append(it)
    return all_piv, ranks, conv, iters
