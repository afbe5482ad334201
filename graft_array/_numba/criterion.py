"""Numba twins of :mod:`graft_array._agnostic.criterion`: the rho curve and NNLS weights, parallel over batches.

Same arithmetic as the generic code (float64, the same span tolerance and the
same Lawson-Hanson steps), one compiled call for all batches. The same scale
rule as the generic twin: each batch's gradient rows (the residuals E for the
last layer) are multiplied by 2^k, the power of two of
:func:`graft_array._numba.checks.unit_scale` that brings their largest |entry|
into [1/2, 1) (clamped to a normal float64), as they are read (exact, free
next to the load), so that nothing overflows and the results do not depend on
the gradients' magnitude.
"""

import numpy as np
from numba import njit, prange

from .._agnostic.criterion import SPAN_TOL, SUM_PENALTY
from .checks import abs_max, unit_scale

__all__ = ["gram_plain", "gram_last_layer", "rho_curve", "nnls_batched"]


_FM = {"nsz", "arcp", "contract", "reassoc"}  # reassociation lets LLVM vectorise the dot products
_EPS = 2.220446049250313e-16
_NONE = np.empty(0)  # "no per-batch maxima given": each kernel finds its batch's own


@njit(cache=True, nogil=True)
def _scale(X, amax, bi):
    """Batch bi's scale 2^k (:func:`unit_scale`) from ``amax[bi]``, or from one pass over X when ``amax`` is empty."""
    return unit_scale(amax[bi] if amax.shape[0] else abs_max(X))


@njit(cache=True, nogil=True, fastmath=_FM)
def _dot(x, y):
    acc = 0.0
    for t in range(x.shape[0]):
        acc += x[t] * y[t]
    return acc


@njit(cache=True, nogil=True, fastmath=_FM)
def _gram_plain_one(G, piv, K, bv, g, GS, sc):
    """(K, b) into K, bv and ||g||^2 of the rows G * sc (sc: a power of two, exact) along ``piv``."""
    n, p = G.shape
    kk = piv.shape[0]
    g[:] = 0.0
    for i in range(n):
        for t in range(p):
            g[t] += G[i, t] * sc
    for j in range(kk):
        for t in range(p):
            GS[j, t] = G[piv[j], t] * sc
    for j in range(kk):
        for l in range(j + 1):
            K[j, l] = _dot(GS[j], GS[l])
            K[l, j] = K[j, l]
        bv[j] = _dot(GS[j], g)
    return _dot(g, g)


def gram_plain(G, piv, amax=None):
    """(K, b, gg) of plain per-sample gradient rows G (B, n, p) along pivots (B, K); float64.

    K, b and gg are those of G_b 2^k_b (exact; k_b from
    :func:`graft_array._numba.checks.unit_scale` of max |G_b|), whose rho and
    weights are those of G_b. ``amax`` (B,): each batch's max |entry| when the
    caller already has it (one pass over G saved), else found here.
    """
    return _gram_plain_stack(G, piv, _NONE if amax is None else np.asarray(amax, dtype=np.float64))


@njit(cache=True, nogil=True, parallel=True)
def _gram_plain_stack(G, piv, amax):
    nb, n, p = G.shape
    kk = piv.shape[1]
    K = np.empty((nb, kk, kk))
    bv = np.empty((nb, kk))
    gg = np.empty(nb)
    for bi in prange(nb):
        g = np.empty(p)
        GS = np.empty((kk, p))
        gg[bi] = _gram_plain_one(G[bi], piv[bi], K[bi], bv[bi], g, GS, _scale(G[bi], amax, bi))
    return K, bv, gg


@njit(cache=True, nogil=True, fastmath=_FM)
def _gram_last_layer_one(E, H, piv, K, bv, M, ES, HS, row, sc):
    """(K, b) into K, bv and ||M||_F^2 of the gradients (E sc)_i (x) [h_i; 1] (sc: a power of two, exact)."""
    n, C = E.shape
    h = H.shape[1]
    kk = piv.shape[0]
    M[:, :] = 0.0  # M = E^T [H, 1], the batch gradient; column h holds E^T 1
    for i in range(n):
        for t in range(h):
            row[t] = H[i, t]
        row[h] = 1.0
        for c in range(C):
            e = E[i, c] * sc
            for t in range(h + 1):
                M[c, t] += e * row[t]
    for j in range(kk):
        for c in range(C):
            ES[j, c] = E[piv[j], c] * sc
        for t in range(h):
            HS[j, t] = H[piv[j], t]
        HS[j, h] = 1.0
    for j in range(kk):
        for l in range(j + 1):
            K[j, l] = _dot(ES[j], ES[l]) * _dot(HS[j], HS[l])
            K[l, j] = K[j, l]
        acc = 0.0
        for c in range(C):
            acc += ES[j, c] * _dot(M[c], HS[j])
        bv[j] = acc
    acc = 0.0
    for c in range(C):
        acc += _dot(M[c], M[c])
    return acc


def gram_last_layer(E, H, piv, amax=None):
    """(K, b, gg) of last-layer gradients e_i (x) [h_i; 1] along pivots (B, K); E (B, n, C), H (B, n, h).

    K_jl = <e_j, e_l>(<h_j, h_l> + 1), b_j = e_j^T M [h_j; 1] with M = E^T [H, 1] the
    batch gradient, gg = ||M||_F^2; float64, nothing of size C (h + 1) per sample.
    Those of E_b 2^k_b (exact; k_b from the max |entry| of E_b, ``amax`` when
    given, as in :func:`gram_plain`); the embeddings are not scaled: scaling
    every gradient by c scales e_i only.
    """
    return _gram_last_layer_stack(E, H, piv, _NONE if amax is None else np.asarray(amax, dtype=np.float64))


@njit(cache=True, nogil=True, parallel=True)
def _gram_last_layer_stack(E, H, piv, amax):
    nb, n, C = E.shape
    h = H.shape[2]
    kk = piv.shape[1]
    K = np.empty((nb, kk, kk))
    bv = np.empty((nb, kk))
    gg = np.empty(nb)
    for bi in prange(nb):
        M = np.empty((C, h + 1))
        ES = np.empty((kk, C))
        HS = np.empty((kk, h + 1))
        row = np.empty(h + 1)
        gg[bi] = _gram_last_layer_one(E[bi], H[bi], piv[bi], K[bi], bv[bi], M, ES, HS, row, _scale(E[bi], amax, bi))
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


@njit(cache=True, nogil=True, fastmath=_FM)
def _chol_append(K, order, p, L, kcol):
    """Append passive index ``order[p]`` to the Cholesky factor L of K[order[:p], order[:p]].

    Returns False (L unchanged) when the new diagonal is <= SPAN_TOL^2 K_jj: the
    column is numerically in the span of the passive ones.
    """
    j = order[p]
    for a in range(p):
        kcol[a] = K[j, order[a]]
    for a in range(p):  # row p of L: forward substitution, one contiguous dot per entry
        L[p, a] = (kcol[a] - _dot(L[p, :a], L[a, :a])) / L[a, a]
    dj = K[j, j] - _dot(L[p, :p], L[p, :p])
    if not (K[j, j] > 0.0 and dj > (SPAN_TOL * SPAN_TOL) * K[j, j]):
        return False
    L[p, p] = np.sqrt(dj)
    return True


@njit(cache=True, nogil=True, fastmath=_FM)
def _chol_solve(L, b, order, p, out, y):
    """out[order[:p]] = (L L^T)^-1 b[order[:p]]; zeros elsewhere."""
    for a in range(p):
        y[a] = (b[order[a]] - _dot(L[a, :a], y[:a])) / L[a, a]
    for a in range(p - 1, -1, -1):  # L^T x = y by columns of L^T = rows of L (contiguous axpys)
        y[a] /= L[a, a]
        ya = y[a]
        for t in range(a):
            y[t] -= ya * L[a, t]
    out[:] = 0.0
    for a in range(p):
        out[order[a]] = y[a]


@njit(cache=True, nogil=True, fastmath=_FM)
def _nnls_one(K, b, max_iter, w):
    """Lawson-Hanson NNLS on the normal equations (min w^T K w - 2 b^T w, w >= 0), in place on w.

    The passive set is kept in insertion order with the Cholesky factor of its
    block of K: adding an index is one new row (O(p^2)), a removal rebuilds the
    factor. An index whose column is numerically in the span of the passive
    ones (new diagonal <= SPAN_TOL^2 K_jj) is never made passive.

    Tolerances are homogeneous (:func:`graft_array._agnostic.criterion.nnls_gram`):
    ``rel max |b|`` for the gradient ``b - K w`` and ``rel max |w|`` for the
    weights, ``rel = 10 m eps``; scaling K and b by c^2 gives the same weights.
    """
    m = b.shape[0]
    rel = 10.0 * m * _EPS
    bmax = 0.0
    for i in range(m):
        bmax = max(bmax, abs(b[i]))
    tol = rel * bmax  # in the units of b
    passive = np.zeros(m, dtype=np.bool_)
    banned = np.zeros(m, dtype=np.bool_)
    order = np.empty(m, dtype=np.int64)
    L = np.zeros((m, m))
    y = np.empty(m)
    kcol = np.empty(m)
    s = np.zeros(m)
    w[:] = 0.0
    # All passive at once: when K is numerically definite and its unconstrained solution is positive,
    # that solution is the NNLS one (the usual case with the pull to uniform weights).
    for a in range(m):
        order[a] = a
    p = 0
    while p < m and _chol_append(K, order, p, L, kcol):
        p += 1
    if m > 0 and p == m:
        _chol_solve(L, b, order, m, s, y)
        smax = 0.0
        for i in range(m):
            smax = max(smax, abs(s[i]))
        pos = True
        for i in range(m):
            pos = pos and s[i] > rel * smax
        if pos:
            w[:] = s
            return
    s[:] = 0.0
    p = 0
    for _ in range(max_iter):
        best, j = -1.0, -1
        for i in range(m):
            if not passive[i] and not banned[i]:
                g = b[i] - _dot(K[i], w)
                if g > best:
                    best, j = g, i
        if not best > tol:
            break
        order[p] = j
        if not _chol_append(K, order, p, L, kcol):
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
            wmax = 0.0
            for i in range(m):
                w[i] += alpha * (s[i] - w[i])
                wmax = max(wmax, abs(w[i]))
            for i in range(m):
                if passive[i] and not w[i] > rel * wmax:
                    passive[i] = False
                if not passive[i]:
                    w[i] = 0.0
            q = 0  # rebuild the factor of the remaining passive set, insertion order kept
            for a in range(p):
                if passive[order[a]]:
                    order[q] = order[a]
                    _chol_append(K, order, q, L, kcol)
                    q += 1
            p = q
            _chol_solve(L, b, order, p, s, y)
        w[:] = s


@njit(cache=True, nogil=True)
def _weight_system(K, b, n, reg):
    """:func:`graft_array._agnostic.criterion.weight_system` in place on copies ``K`` (m, m), ``b`` (m,)."""
    m = b.shape[0]
    s = 0.0
    for i in range(m):
        s += K[i, i]
    s /= max(m, 1)
    if not s > 0:
        return
    mu2 = SUM_PENALTY * s
    for i in range(m):
        for j in range(m):
            K[i, j] += mu2
        K[i, i] += reg * s
        b[i] += reg * s * n / m + mu2 * n


@njit(cache=True, nogil=True, parallel=True)
def nnls_batched(K, b, sizes, n, reg):
    """Weights of each batch's first ``sizes[b]`` pivots (the fit of :func:`_weight_system`); (B, max_size), zero beyond sizes[b]."""
    nb, kk = b.shape
    out = np.zeros((nb, kk))
    for bi in prange(nb):
        m = sizes[bi]
        Kb = K[bi, :m, :m].copy()
        bb = b[bi, :m].copy()
        _weight_system(Kb, bb, float(n), reg)
        _nnls_one(Kb, bb, 3 * m + 10, out[bi, :m])
    return out
