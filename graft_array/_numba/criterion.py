"""Numba twins of :mod:`graft_array._agnostic.criterion`: the rho curve and NNLS weights, parallel over batches.

Same arithmetic as the generic code (float64, the same span tolerance and the
same Lawson-Hanson steps), one compiled call for all batches.
"""

import numpy as np
from numba import njit, prange

from .._agnostic.criterion import SPAN_TOL

__all__ = ["gram_plain", "gram_last_layer", "rho_curve", "nnls_batched"]


@njit(cache=True, nogil=True, parallel=True)
def gram_plain(G, piv):
    """(K, b, gg) of plain per-sample gradient rows G (B, n, p) along pivots (B, K); float64."""
    nb, n, p = G.shape
    kk = piv.shape[1]
    K = np.empty((nb, kk, kk))
    bv = np.empty((nb, kk))
    gg = np.empty(nb)
    for bi in prange(nb):
        g = np.zeros(p)
        for i in range(n):
            for t in range(p):
                g[t] += float(G[bi, i, t])
        GS = np.empty((kk, p))
        for j in range(kk):
            for t in range(p):
                GS[j, t] = float(G[bi, piv[bi, j], t])
        for j in range(kk):
            for l in range(j + 1):
                acc = 0.0
                for t in range(p):
                    acc += GS[j, t] * GS[l, t]
                K[bi, j, l] = acc
                K[bi, l, j] = acc
            acc = 0.0
            for t in range(p):
                acc += GS[j, t] * g[t]
            bv[bi, j] = acc
        acc = 0.0
        for t in range(p):
            acc += g[t] * g[t]
        gg[bi] = acc
    return K, bv, gg


@njit(cache=True, nogil=True, parallel=True)
def gram_last_layer(E, H, piv):
    """(K, b, gg) of last-layer gradients e_i (x) [h_i; 1] along pivots (B, K); E (B, n, C), H (B, n, h).

    K_jl = <e_j, e_l>(<h_j, h_l> + 1), b_j = e_j^T M [h_j; 1] with M = E^T [H, 1] the
    batch gradient, gg = ||M||_F^2; float64, nothing of size C (h + 1) per sample.
    """
    nb, n, C = E.shape
    h = H.shape[2]
    kk = piv.shape[1]
    K = np.empty((nb, kk, kk))
    bv = np.empty((nb, kk))
    gg = np.empty(nb)
    for bi in prange(nb):
        M = np.zeros((C, h + 1))
        for i in range(n):
            for c in range(C):
                e = float(E[bi, i, c])
                for t in range(h):
                    M[c, t] += e * float(H[bi, i, t])
                M[c, h] += e
        ES = np.empty((kk, C))
        HS = np.empty((kk, h))
        for j in range(kk):
            for c in range(C):
                ES[j, c] = float(E[bi, piv[bi, j], c])
            for t in range(h):
                HS[j, t] = float(H[bi, piv[bi, j], t])
        for j in range(kk):
            for l in range(j + 1):
                ee = 0.0
                for c in range(C):
                    ee += ES[j, c] * ES[l, c]
                hh = 1.0
                for t in range(h):
                    hh += HS[j, t] * HS[l, t]
                K[bi, j, l] = ee * hh
                K[bi, l, j] = ee * hh
            acc = 0.0
            for c in range(C):
                mh = M[c, h]
                for t in range(h):
                    mh += M[c, t] * HS[j, t]
                acc += ES[j, c] * mh
            bv[bi, j] = acc
        acc = 0.0
        for c in range(C):
            for t in range(h + 1):
                acc += M[c, t] * M[c, t]
        gg[bi] = acc
    return K, bv, gg


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
def _chol_append(K, order, p, L):
    """Append passive index ``order[p]`` to the Cholesky factor L of K[order[:p], order[:p]].

    Returns False (L unchanged) when the new diagonal is <= SPAN_TOL^2 K_jj: the
    column is numerically in the span of the passive ones.
    """
    j = order[p]
    for a in range(p):
        s = K[j, order[a]]
        for t in range(a):
            s -= L[p, t] * L[a, t]
        L[p, a] = s / L[a, a]
    dj = K[j, j]
    for t in range(p):
        dj -= L[p, t] * L[p, t]
    if not (K[j, j] > 0.0 and dj > (SPAN_TOL * SPAN_TOL) * K[j, j]):
        return False
    L[p, p] = np.sqrt(dj)
    return True


@njit(cache=True, nogil=True)
def _chol_solve(L, b, order, p, out, y):
    """out[order[:p]] = (L L^T)^-1 b[order[:p]]; zeros elsewhere."""
    for a in range(p):
        s = b[order[a]]
        for t in range(a):
            s -= L[a, t] * y[t]
        y[a] = s / L[a, a]
    for a in range(p - 1, -1, -1):
        s = y[a]
        for t in range(a + 1, p):
            s -= L[t, a] * y[t]
        y[a] = s / L[a, a]
    out[:] = 0.0
    for a in range(p):
        out[order[a]] = y[a]


@njit(cache=True, nogil=True)
def _nnls_one(K, b, max_iter, w):
    """Lawson-Hanson NNLS on the normal equations (min w^T K w - 2 b^T w, w >= 0), in place on w.

    The passive set is kept in insertion order with the Cholesky factor of its
    block of K: adding an index is one new row (O(p^2)), a removal rebuilds the
    factor. An index whose column is numerically in the span of the passive
    ones (new diagonal <= SPAN_TOL^2 K_jj) is never made passive.
    """
    m = b.shape[0]
    scale = 0.0
    bmax = 0.0
    for i in range(m):
        scale = max(scale, abs(K[i, i]))
        bmax = max(bmax, abs(b[i]))
    tol = 10.0 * m * 2.220446049250313e-16 * max(scale, 1e-300) * max(1.0, bmax)
    passive = np.zeros(m, dtype=np.bool_)
    banned = np.zeros(m, dtype=np.bool_)
    order = np.empty(m, dtype=np.int64)
    L = np.zeros((m, m))
    y = np.empty(m)
    s = np.zeros(m)
    p = 0
    w[:] = 0.0
    for _ in range(max_iter):
        best, j = -1.0, -1
        for i in range(m):
            if not passive[i] and not banned[i]:
                g = b[i]
                for t in range(m):
                    g -= K[i, t] * w[t]
                if g > best:
                    best, j = g, i
        if not best > tol:
            break
        order[p] = j
        if not _chol_append(K, order, p, L):
            banned[j] = True
            continue
        passive[j] = True
        p += 1
        _chol_solve(L, b, order, p, s, y)
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
            q = 0  # rebuild the factor of the remaining passive set, insertion order kept
            for a in range(p):
                if passive[order[a]]:
                    order[q] = order[a]
                    _chol_append(K, order, q, L)
                    q += 1
            p = q
            _chol_solve(L, b, order, p, s, y)
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
