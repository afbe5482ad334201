"""GRAFT's gradient criterion along a pivot order, any namespace.

For one batch with per-sample gradients g_i and batch gradient g = sum_i g_i, and a
pivot order s_1, s_2, ..., the relative residual

    rho(m) = || g - P_m g || / || g ||,   P_m = projector onto span(g_s1, ..., g_sm)

comes for every m from one incremental Cholesky factorisation of the pivots'
Gram matrix K (K_st = <g_s, g_t>) and z = L^-1 b with b_j = <g_sj, g>:
rho(m)^2 = (||g||^2 - sum_{j<=m} z_j^2) / ||g||^2. A pivot whose new diagonal of L is
<= ``SPAN_TOL`` * sqrt(K_jj) adds nothing to the span: its z_j is 0 (it is
reported in ``skipped``).

Two gradient forms share this code through ``(K, b, gg)``:

* plain rows G (n, p): K = G_S G_S^T, b = G_S g, gg = ||g||^2;
* the factorised last layer g_i = e_i (x) [h_i; 1]: <g_s, g_t> = <e_s, e_t>(<h_s, h_t> + 1),
  g = M = E^T [H, 1], b_j = e_sj^T M [h_sj; 1], gg = ||M||_F^2. Nothing of size
  C * (h + 1) per sample is ever formed.

All of it is in float64. Every tolerance is homogeneous in K and b, and
:func:`gram_plain` / :func:`gram_last_layer` multiply each batch's rows (the
residuals E for the last layer) by the power of two 2^k that brings their
largest |entry| into [1/2, 1) (:func:`graft_array._common.unit_exponents`,
clamped to a normal float64), always: nothing overflows, and gradients scaled
by c = 2^j (exactly representable) give the same scaled rows, hence the same
bits of rho and the weights, unless the clamp is reached (a batch max beyond
about 2^+-1022). For other c > 0 they agree up to rounding. The Numba twins
(:mod:`graft_array._numba.criterion`) follow the same rule.
"""

import numpy as np

from .._common import unit_exponents

__all__ = ["gram_plain", "gram_last_layer", "rho_curve", "nnls_gram", "weight_system", "batch_abs_max",
           "SPAN_TOL", "SUM_PENALTY"]

#: relative size of a new Cholesky diagonal below which a pivot adds nothing to the span
SPAN_TOL = 1e-7

#: weight of the penalty (1^T w - n)^2 that ties the weights' sum to n, relative
#: to the mean squared gradient norm of the selected samples
SUM_PENALTY = 100.0


def _host(x):
    """A small array as NumPy float64 (a device array is copied to the host in one transfer)."""
    if hasattr(x, "detach"):  # torch: a scale needs no autograd history
        x = x.detach()
    try:
        return np.asarray(np.from_dlpack(x), dtype=np.float64)
    except Exception:  # not on the host (CuPy, a CUDA tensor): one copy to it, then the same view
        import array_api_compat

        return np.asarray(np.from_dlpack(array_api_compat.to_device(x, "cpu")), dtype=np.float64)


def batch_abs_max(xp, X, cols=None):
    """max |X_b[:, :cols]| for each batch of X (B, n, p), as NumPy float64 (B,); NaN or inf where not finite.

    One pass over X, which also tells whether each batch is finite.
    """
    nb = X.shape[0]
    if cols is not None:
        X = X[..., :cols]
    if X.shape[1] * X.shape[2] == 0:
        return np.zeros(nb)
    return _host(xp.max(xp.reshape(xp.abs(X), (nb, -1)), axis=1))


def _unit_rows(xp, X, amax=None):
    """X (B, n, p) float64 with each batch multiplied by 2^k_b (:func:`graft_array._common.unit_exponents`), exactly.

    ``amax`` (NumPy (B,)): each batch's max |entry| when the caller has it,
    else found by :func:`batch_abs_max`. Always applied (also where 2^k_b is
    1): the rule of the Numba twins, under which X and X 2^j give the same rows.
    """
    if amax is None:
        amax = batch_abs_max(xp, X)
    factor = np.ldexp(1.0, unit_exponents(amax, np.float64))
    return X * xp.asarray(factor, dtype=X.dtype, device=_dev(X))[:, None, None]


def _mT(xp, A):
    return xp.matrix_transpose(A)


def _take_rows(xp, X, piv):
    """X (B, n, p), piv (B, K) -> (B, K, p), one flat gather (no loop over batches)."""
    nb, n, p = X.shape
    kk = piv.shape[1]
    base = xp.reshape(xp.arange(nb, dtype=piv.dtype, device=_dev(X)) * n, (nb, 1))
    flat = xp.reshape(piv + base, (nb * kk,))
    return xp.reshape(xp.take(xp.reshape(X, (nb * n, p)), flat, axis=0), (nb, kk, p))


def gram_plain(xp, G, piv, amax=None):
    """(K, b, gg) for plain per-sample gradient rows G (B, n, p), pivots (B, K).

    Those of G_b 2^k_b (:func:`_unit_rows`; ``amax``: each batch's max |entry|
    if known), whose rho and weights are those of G_b.
    """
    G = _unit_rows(xp, xp.astype(G, xp.float64, copy=False), amax)
    g = xp.sum(G, axis=1)  # (B, p)
    GS = _take_rows(xp, G, piv)
    K = GS @ _mT(xp, GS)
    b = xp.sum(GS * g[:, None, :], axis=-1)
    gg = xp.sum(g * g, axis=-1)
    return K, b, gg


def gram_last_layer(xp, E, H, piv, amax=None):
    """(K, b, gg) for last-layer gradients e_i (x) [h_i; 1]: E (B, n, C), H (B, n, h).

    The residuals E_b are scaled by 2^k_b (:func:`_unit_rows`; ``amax``: each
    batch's max |e| if known); scaling every gradient by c scales e_i only.
    """
    E = _unit_rows(xp, xp.astype(E, xp.float64, copy=False), amax)
    H = xp.astype(H, xp.float64)
    ones = xp.ones(H.shape[:-1] + (1,), dtype=xp.float64, device=_dev(H))
    Ht = xp.concat([H, ones], axis=-1)
    M = _mT(xp, E) @ Ht  # (B, C, h+1): the batch gradient
    ES, HS = _take_rows(xp, E, piv), _take_rows(xp, Ht, piv)
    K = (ES @ _mT(xp, ES)) * (HS @ _mT(xp, HS))
    b = xp.sum((ES @ M) * HS, axis=-1)
    gg = xp.sum(xp.reshape(M * M, (M.shape[0], -1)), axis=-1)
    return K, b, gg


def _dev(x):
    from .._namespace import device_of

    return device_of(x)


def rho_curve(xp, K, b, gg):
    """rho(m) for m = 1..K (B, K), and a (B, K) mask of pivots that added nothing to the span.

    A batch whose gradient is 0 has rho = 0 for every m.
    """
    nb, kk, _ = K.shape
    L = [[None] * kk for _ in range(kk)]  # L[j][i]: (B,) columns of the Cholesky factor
    diag = [None] * kk
    z = [None] * kk
    zero = xp.zeros(nb, dtype=xp.float64, device=_dev(K))
    acc = zero
    rho, skipped = [], []
    for j in range(kk):
        for i in range(j):
            s = K[:, j, i]
            for t in range(i):
                s = s - L[j][t] * L[i][t]
            L[j][i] = xp.where(diag[i] > 0, s / xp.where(diag[i] > 0, diag[i], 1.0), zero)
        d = K[:, j, j]
        for t in range(j):
            d = d - L[j][t] * L[j][t]
        ok = d > (SPAN_TOL**2) * K[:, j, j]
        ok = xp.logical_and(ok, K[:, j, j] > 0)
        diag[j] = xp.where(ok, xp.sqrt(xp.where(ok, d, 1.0)), zero)
        zs = b[:, j]
        for t in range(j):
            zs = zs - L[j][t] * z[t]
        z[j] = xp.where(ok, zs / xp.where(ok, diag[j], 1.0), zero)
        acc = acc + z[j] * z[j]
        safe = xp.where(gg > 0, gg, 1.0)
        r2 = xp.where(gg > 0, (gg - acc) / safe, zero)
        rho.append(xp.sqrt(xp.clip(r2, 0.0, None)))
        skipped.append(xp.logical_not(ok))
    return xp.stack(rho, axis=1), xp.stack(skipped, axis=1)


def weight_system(xp, K, b, n, reg):
    """Normal equations of the weight fit of one batch: ``(K', b')`` for :func:`nnls_gram`.

    The weights minimise ``||G_S^T w - g||^2 + reg s ||w - n/m||^2 +
    SUM_PENALTY s (1^T w - n)^2`` over ``w >= 0``, with ``s = trace(K) / m`` (the
    mean squared norm of the m selected gradients): a least-squares fit of the
    batch gradient whose sum is held at n and which ``reg`` pulls towards
    uniform weights. ``K' = K + reg s I + SUM_PENALTY s 11^T``,
    ``b' = b + (reg s n / m + SUM_PENALTY s n) 1``. Where ``s = 0`` (no gradient
    at all) ``(K, b)`` come back unchanged (all zero: the caller's uniform rule).
    """
    m = b.shape[0]
    s = float(xp.sum(xp.linalg.diagonal(K))) / m if m else 0.0
    if not s > 0:
        return K, b
    eye = xp.eye(m, dtype=K.dtype, device=_dev(K))
    K2 = K + (reg * s) * eye + SUM_PENALTY * s
    b2 = b + (reg * s * n / m + SUM_PENALTY * s * n)
    return K2, b2


def nnls_gram(xp, K, b, *, max_iter=None):
    """Lawson-Hanson NNLS on the normal equations: min_w w^T K w - 2 b^T w, w >= 0. K (m, m), b (m,).

    One problem (no batch axis); the passive set is a mask, so the solve keeps a
    fixed shape: rows/columns outside it are replaced by the identity. A column
    numerically in the span of the passive ones (new Cholesky diagonal
    <= SPAN_TOL^2 K_jj) is never made passive.

    The tolerances are homogeneous, so that K c^2 and b c^2 give the same w:
    ``rel max |b|`` (rel = 10 m eps) for the gradient ``b - K w``, in the units of
    b, and ``rel max |w|`` for a weight (the units of w).
    """
    m = b.shape[0]
    dev = _dev(b)
    if max_iter is None:
        max_iter = 3 * m + 10
    eye = xp.eye(m, dtype=xp.float64, device=dev)
    rel = 10.0 * m * 2.220446049250313e-16
    tol = rel * float(xp.max(xp.abs(b))) if m else 0.0
    passive = xp.zeros(m, dtype=xp.bool, device=dev)
    w = xp.zeros(m, dtype=xp.float64, device=dev)
    zero = xp.zeros_like(w)

    def solve(P, rhs):
        both = xp.logical_and(P[:, None], P[None, :])
        KP = xp.where(both, K, eye)
        bP = xp.where(P, rhs, zero)
        return xp.where(P, xp.linalg.solve(KP, bP[:, None])[:, 0], zero)

    if m:  # all passive at once, as in the Numba twin: a definite K with a positive solution
        try:
            Lc = xp.linalg.cholesky(K)
            d = xp.linalg.diagonal(Lc)
            if bool(xp.all(xp.isfinite(Lc))) and bool(xp.all(d * d > SPAN_TOL**2 * xp.linalg.diagonal(K))):
                s = xp.linalg.solve(K, b[:, None])[:, 0]
                if bool(xp.all(s > rel * float(xp.max(xp.abs(s))))):
                    return s
        except Exception:  # not positive definite: each library raises its own LinAlgError
            pass
    banned = xp.zeros(m, dtype=xp.bool, device=dev)
    for _ in range(max_iter):
        grad = b - K @ w
        free = xp.logical_not(xp.logical_or(passive, banned))
        cand = xp.where(free, grad, xp.full_like(grad, -1.0))
        j = int(xp.argmax(cand))
        if not float(cand[j]) > tol:
            break
        # a column numerically in the span of the passive ones is never made passive
        kj = K[:, j]
        dj = float(K[j, j]) - float(xp.sum(xp.where(passive, kj, zero) * solve(passive, kj)))
        if not (float(K[j, j]) > 0 and dj > SPAN_TOL**2 * float(K[j, j])):
            banned = xp.logical_or(banned, xp.arange(m, device=dev) == j)
            continue
        passive = xp.logical_or(passive, xp.arange(m, device=dev) == j)
        s = solve(passive, b)
        for _ in range(max_iter):
            bad = xp.logical_and(passive, s <= 0)
            if not bool(xp.any(bad)):
                break
            ratio = xp.where(bad, w / xp.where(bad, w - s, 1.0), xp.full_like(w, float("inf")))
            alpha = float(xp.min(ratio))
            w = w + alpha * (s - w)
            passive = xp.logical_and(passive, w > rel * float(xp.max(xp.abs(w))))
            w = xp.where(passive, w, zero)
            s = solve(passive, b)
        w = s
    return w
