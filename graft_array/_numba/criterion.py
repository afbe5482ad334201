"""Numba twins of :mod:`graft_array._agnostic.criterion`: the rho curve and NNLS weights, parallel over batches.

Same arithmetic as the generic code (float64, the same span tolerance and the
same Lawson-Hanson steps), one compiled call for all batches.
"""

import numpy as np
from numba import njit, prange

from .._agnostic.criterion import SPAN_TOL

__all__ = ["rho_curve", "nnls_batched"]


@njit(cache=True, nogil=True)
def _rho_one(K, b, gg, rho, skipped):
    kk = K.shape[0]
    L = np.zeros((kk, kk))
    z = np.zeros(kk)
    acc = 0.0
    for j in range(kk):
        for i in range(j):
            s = K[j, i]
            for t in range(i):
                s -= L[j, t] * L[i, t]
            L[j, i] = s / L[i, i] if L[i, i] > 0 else 0.0
        dj = K[j, j]
        for t in range(j):
            dj -= L[j, t] * L[j, t]
        ok = K[j, j] > 0 and dj > (SPAN_TOL * SPAN_TOL) * K[j, j]
        if ok:
            L[j, j] = np.sqrt(dj)
            zs = b[j]
            for t in range(j):
                zs -= L[j, t] * z[t]
            z[j] = zs / L[j, j]
        acc += z[j] * z[j]
        if gg > 0:
            r2 = (gg - acc) / gg
            rho[j] = np.sqrt(r2) if r2 > 0 else 0.0
        else:
            rho[j] = 0.0
        skipped[j] = not ok


@njit(cache=True, nogil=True, parallel=True)
def rho_curve(K, b, gg):
    """rho(m), m = 1..K, and the skipped-pivot mask for each batch. K (B, K, K), b (B, K), gg (B,)."""
    nb, kk = b.shape
    rho = np.empty((nb, kk))
    skipped = np.empty((nb, kk), dtype=np.bool_)
    for bi in prange(nb):
        _rho_one(K[bi], b[bi], gg[bi], rho[bi], skipped[bi])
    return rho, skipped


@njit(cache=True, nogil=True)
def _gauss_solve(A, y):
    """Solve A x = y in place (x in y) by Gaussian elimination with partial pivoting.

    Hand-written because numba's np.linalg needs SciPy, which is not a core
    dependency. A singular pivot gives x = 0 in that direction.
    """
    p = y.shape[0]
    for c in range(p):
        piv, best = c, abs(A[c, c])
        for i in range(c + 1, p):
            if abs(A[i, c]) > best:
                piv, best = i, abs(A[i, c])
        if piv != c:
            for t in range(p):
                A[c, t], A[piv, t] = A[piv, t], A[c, t]
            y[c], y[piv] = y[piv], y[c]
        if A[c, c] == 0.0:
            continue
        for i in range(c + 1, p):
            f = A[i, c] / A[c, c]
            if f != 0.0:
                for t in range(c, p):
                    A[i, t] -= f * A[c, t]
                y[i] -= f * y[c]
    for c in range(p - 1, -1, -1):
        s = y[c]
        for t in range(c + 1, p):
            s -= A[c, t] * y[t]
        y[c] = s / A[c, c] if A[c, c] != 0.0 else 0.0


@njit(cache=True, nogil=True)
def _solve_passive(K, b, passive, out):
    """Solve K_PP x_P = b_P (Cholesky; P = passive), zeros elsewhere."""
    m = b.shape[0]
    idx = np.empty(m, dtype=np.int64)
    p = 0
    for i in range(m):
        if passive[i]:
            idx[p] = i
            p += 1
    A = np.empty((p, p))
    y = np.empty(p)
    for a in range(p):
        y[a] = b[idx[a]]
        for c in range(p):
            A[a, c] = K[idx[a], idx[c]]
    _gauss_solve(A, y)
    out[:] = 0.0
    for a in range(p):
        out[idx[a]] = y[a]


@njit(cache=True, nogil=True)
def _nnls_one(K, b, max_iter, w):
    m = b.shape[0]
    scale = 0.0
    bmax = 0.0
    for i in range(m):
        scale = max(scale, abs(K[i, i]))
        bmax = max(bmax, abs(b[i]))
    tol = 10.0 * m * 2.220446049250313e-16 * max(scale, 1e-300) * max(1.0, bmax)
    passive = np.zeros(m, dtype=np.bool_)
    w[:] = 0.0
    s = np.zeros(m)
    for _ in range(max_iter):
        best, j = -1.0, -1
        for i in range(m):
            if not passive[i]:
                g = b[i]
                for t in range(m):
                    g -= K[i, t] * w[t]
                if g > best:
                    best, j = g, i
        if not best > tol:
            break
        passive[j] = True
        _solve_passive(K, b, passive, s)
        for _ in range(max_iter):
            alpha = np.inf
            any_bad = False
            for i in range(m):
                if passive[i] and s[i] <= 0:
                    any_bad = True
                    alpha = min(alpha, w[i] / (w[i] - s[i]))
            if not any_bad:
                break
            for i in range(m):
                w[i] += alpha * (s[i] - w[i])
                if passive[i] and not w[i] > tol:
                    passive[i] = False
                if not passive[i]:
                    w[i] = 0.0
            _solve_passive(K, b, passive, s)
        w[:] = s


@njit(cache=True, nogil=True, parallel=True)
def nnls_batched(K, b, sizes):
    """NNLS weights of each batch's first ``sizes[b]`` pivots; (B, max_size), zero beyond sizes[b]."""
    nb, kk = b.shape
    out = np.zeros((nb, kk))
    for bi in prange(nb):
        m = sizes[bi]
        _nnls_one(np.ascontiguousarray(K[bi, :m, :m]), np.ascontiguousarray(b[bi, :m]), 3 * m + 10, out[bi, :m])
    return out
