"""``strategy="gradmatch"``: GradMatch (Killamsetty et al., ICML 2021), the OMP variant as CORDS runs it.

Orthogonal matching pursuit of the batch gradient with ridge refits
(``OrthogonalMP_REG_Parallel`` with ``positive=True``), the most negative row
dropped until the weights are >= 0; a shortfall is filled with the batch's rows
of smallest key in the "random" strategy's stream; weights normalised to sum to
n (see :func:`graft_array.select`). Numba: :func:`gradmatch_plain_nb` /
:func:`gradmatch_last_layer_nb` (an updated Cholesky factor per batch, one
batch per ``prange`` iteration); any namespace: :func:`gradmatch` on the Grams,
vectorised over batches.
"""

import numpy as np
from numba import njit, prange

from .._agnostic.criterion import SPAN_TOL, _dev, _take_rows
from ._batch import (
    batch_gram_last_layer_nb,
    batch_gram_plain_nb,
    full_gram,
    gather,
    rho_along_nb,
)
from .random import random_keys, random_keys_nb

__all__ = ["GRADMATCH_TOL", "gradmatch_plain_nb", "gradmatch_last_layer_nb", "gradmatch", "run"]

#: GradMatch's pursuit stops once ||r|| <= GRADMATCH_TOL ||g|| (CORDS' default ``tol``; below it the
#: correlations <g_j, r> are of the order of the Gram's round-off)
GRADMATCH_TOL = 1e-4


@njit(cache=True, nogil=True)
def _chol_add_row_nb(L, q, kcol, d0):
    """Row q of the Cholesky factor L of the active ridge system for a new row: kcol (q,) its column, d0 its diagonal.

    Returns the Schur complement d0 - ||L^-1 kcol||^2 (L[q, :q] holds L^-1 kcol; L[q, q] is left to the caller).
    """
    acc = 0.0
    for a in range(q):
        s = kcol[a]
        for t in range(a):
            s -= L[a, t] * L[q, t]
        L[q, a] = s / L[a, a]
        acc += L[q, a] * L[q, a]
    return d0 - acc


@njit(cache=True, nogil=True)
def _chol_drop_nb(L, q, a, x):
    """Remove row/column a from the Cholesky factor L (q x q, lower) in place: shift, then a rank-1 update.

    The rows below a lose their entry in column a, x, and the trailing block
    becomes the factor of L33 L33^T + x x^T (Givens-type update, no cancellation).
    """
    k = q - 1 - a
    for i in range(k):
        x[i] = L[a + 1 + i, a]
    for i in range(a, q - 1):
        for t in range(a):
            L[i, t] = L[i + 1, t]
        for t in range(a, i + 1):
            L[i, t] = L[i + 1, t + 1]
    for s in range(k):
        p = a + s
        lkk = L[p, p]
        r = np.sqrt(lkk * lkk + x[s] * x[s])
        cth = r / lkk
        sth = x[s] / lkk
        L[p, p] = r
        for i in range(s + 1, k):
            L[a + i, p] = (L[a + i, p] + sth * x[i]) / cth
            x[i] = cth * x[i] - sth * L[a + i, p]


@njit(cache=True, nogil=True)
def _chol_solve_active_nb(L, q, rhs, out):
    """out[:q] = (L L^T)^-1 rhs[:q] for the leading q x q block of L."""
    for a in range(q):
        s = rhs[a]
        for t in range(a):
            s -= L[a, t] * out[t]
        out[a] = s / L[a, a]
    for a in range(q - 1, -1, -1):
        s = out[a]
        for t in range(a + 1, q):
            s -= L[t, a] * out[t]
        out[a] = s / L[a, a]


@njit(cache=True, nogil=True)
def _gradmatch_one_nb(K, bv, gg, m, lam, seed, start, order, w):
    """GradMatch on one batch's Gram K (n, n), b_i = <g_i, g>, gg = ||g||^2: m rows into ``order``, weights into ``w``.

    The steps, stopping rules, fill and normalisation of
    :func:`gradmatch` (CORDS'
    ``OrthogonalMP_REG_Parallel`` with ``positive=True``, ridge lam trace(K) / n),
    on the compacted active set S with the Cholesky factor L of K_S + ridge I
    kept up to date: a new row is one forward substitution (the Schur
    complement it leaves is the dependence test), a dropped row a shift and a
    rank-1 update of the rows below it. The fill: the rows outside S by the
    ``(seed, start)`` keys of :func:`random_subset_nb`. Time O(n m^2) per batch
    (O(q^2) per solve, O(n q) per correlation update), memory O(m^2 + n).
    """
    n = K.shape[0]
    s = 0.0
    for i in range(n):
        s += K[i, i]
    ridge = lam * s / n
    tol2 = GRADMATCH_TOL * GRADMATCH_TOL
    span2 = SPAN_TOL * SPAN_TOL
    act = np.empty(m, dtype=np.int64)  # the active rows, in the order they were added
    wa = np.empty(m)
    bS = np.empty(m)
    kcol = np.empty(m)
    x = np.empty(m)
    L = np.zeros((m, m))
    c = bv.copy()  # <g_i, r>
    chosen = np.zeros(n, dtype=np.bool_)
    r2 = gg
    q = 0
    for t in range(m):
        if not r2 > tol2 * gg:
            break
        j = 0
        for i in range(1, n):
            if c[i] > c[j]:
                j = i
        if chosen[j]:
            break
        if t == 0:
            act[0] = j
            wa[0] = c[j] / K[j, j] if K[j, j] > 0.0 else 0.0
            L[0, 0] = np.sqrt(K[j, j] + ridge)
            q = 1
            newest = False
        else:
            for a in range(q):
                kcol[a] = K[act[a], j]
            d0 = K[j, j] + ridge
            delta = _chol_add_row_nb(L, q, kcol, d0)
            if not delta > span2 * d0:
                break
            L[q, q] = np.sqrt(delta)
            act[q] = j
            q += 1
            newest = False
            while q > 0:
                for a in range(q):
                    bS[a] = bv[act[a]]
                _chol_solve_active_nb(L, q, bS, wa)
                amin = 0
                for a in range(1, q):
                    if wa[a] < wa[amin]:
                        amin = a
                if not wa[amin] < 0.0:
                    break
                if act[amin] == j:
                    newest = True
                _chol_drop_nb(L, q, amin, x)
                for a in range(amin, q - 1):
                    act[a] = act[a + 1]
                q -= 1
        chosen[:] = False
        c[:] = bv
        for a in range(q):
            chosen[act[a]] = True
            row = act[a]
            wr = wa[a]
            for i in range(n):
                c[i] -= wr * K[row, i]
        r2 = gg
        for a in range(q):
            r2 -= wa[a] * (bv[act[a]] + c[act[a]])
        if newest:
            break
    # the fill: rows outside S by random key, at the mean fitted weight; then sum n
    tot = 0.0
    for a in range(q):
        order[a] = act[a]
        w[a] = wa[a]
        tot += wa[a]
    fillw = tot / q if q > 0 else 1.0
    u = np.empty(n)
    random_keys_nb(seed, start, u)
    by_key = np.argsort(u, kind="mergesort")
    p = q
    for i in range(n):
        if p == m:
            break
        row = by_key[i]
        if not chosen[row]:
            order[p] = row
            w[p] = fillw
            p += 1
    tot = 0.0
    for a in range(m):
        tot += w[a]
    for a in range(m):
        w[a] = w[a] * (n / tot) if tot > 0.0 else n / m


@njit(cache=True, nogil=True, parallel=True)
def gradmatch_plain_nb(G, m, lam, starts, seed):
    """GradMatch (CORDS' OMP) on plain gradient rows G (B, n, p): (order (B, m), weights (B, m), rho (B, m)).

    starts (B,) uint64, seed uint64: the fill's random keys (those of :func:`random_subset_nb`).
    """
    nb = G.shape[0]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = batch_gram_plain_nb(G[bi])
        _gradmatch_one_nb(K, bv, gg, m, lam, seed, starts[bi], order[bi], w[bi])
        rho_along_nb(K, bv, gg, order[bi], rho[bi])
    return order, w, rho


@njit(cache=True, nogil=True, parallel=True)
def gradmatch_last_layer_nb(E, H, m, lam, starts, seed):
    """GradMatch (CORDS' OMP) on last-layer gradients E (B, n, C), H (B, n, h); starts, seed as for gradmatch_plain_nb."""
    nb = E.shape[0]
    order = np.empty((nb, m), dtype=np.int64)
    w = np.empty((nb, m))
    rho = np.empty((nb, m))
    for bi in prange(nb):
        K, bv, gg = batch_gram_last_layer_nb(E[bi], H[bi])
        _gradmatch_one_nb(K, bv, gg, m, lam, seed, starts[bi], order[bi], w[bi])
        rho_along_nb(K, bv, gg, order[bi], rho[bi])
    return order, w, rho


def _take1(xp, X, idx):
    """X (B, k), idx (B, q) -> X[b, idx[b, a]] (B, q)."""
    return _take_rows(xp, X[:, :, None], idx)[:, :, 0]


def _ridge_system(xp, KS, act, ridge):
    """K_S + ridge I on the active slots ``act`` (B, q); an inactive slot is a decoupled identity row/column."""
    q = act.shape[1]
    both = xp.logical_and(act[:, :, None], act[:, None, :])
    eye = xp.eye(q, dtype=xp.float64, device=_dev(KS))
    diag = xp.where(act, ridge[:, None], xp.ones_like(ridge)[:, None])
    return xp.where(both, KS, xp.zeros_like(KS)) + diag[:, :, None] * eye


def _solve(xp, A, rhs):
    return xp.linalg.solve(A, rhs[:, :, None])[:, :, 0]


def gradmatch(xp, K, b, gg, m, lam, seed, starts):
    """GradMatch on Grams K (B, n, n), b_i = <g_i, g> (B, n), gg = ||g||^2 (B,): (order (B, m), weights (B, m)).

    CORDS' ``OrthogonalMP_REG_Parallel(positive=True)`` (Killamsetty et al.,
    ICML 2021) on each batch, in Gram space, with ridge = lam s, s = trace(K) / n
    (the mean squared per-sample gradient norm). At most m steps, each:

    1. stop if ||r||^2 <= GRADMATCH_TOL^2 ||g||^2, r = g - sum_S w_j g_j
       (at once if g = 0);
    2. j = argmax_i <g_i, r> (signed, over all rows, ties to the lowest index);
       stop if j is already in S;
    3. first step: S = [j], w_j = <g_j, g> / ||g_j||^2 (CORDS' one-row case, no
       ridge). Later: stop if g_j is numerically dependent on S in the ridge
       system (Schur complement <= SPAN_TOL^2 (K_jj + ridge)); else S += [j],
       w = (K_S + ridge I)^-1 b_S and, while some w < 0, the row of the most
       negative weight (the earliest on ties) leaves S and w is re-solved;
       stop after this step if j itself left.

    The rows of S come first, in the order they were added, then the batch's
    rows outside S of smallest key (:func:`random_keys` of ``(seed, starts)``,
    in key order), each at the mean of the fitted weights (1 if S is empty);
    all m weights are then scaled to sum to n (n / m each if they sum to 0).

    Where this differs from CORDS, on purpose: the ridge is lam s, not an
    absolute lam, so the weights do not depend on the gradients' scale;
    ``tol`` is CORDS' default 1e-4 (its configs pass 1e-100: below 1e-4 the
    correlations are round-off, and the fill completes the budget anyway); a
    numerically dependent row ends the pursuit (a safety net for lam ~ 0, where
    CORDS' ``lstsq`` would split the weight); after the newest row is dropped,
    the remaining rows are re-solved (CORDS keeps the coefficients of the fit
    that still included it, which may be negative); the fill is keyed, not
    ``np.random.choice``, and at the fitted rows' mean weight, not 1.

    Vectorised over batches: slot t holds the row added at step t, a mask says
    which slots are still active (an inactive slot is a decoupled identity row
    of the (B, t, t) systems solved by ``xp.linalg.solve``). Time O(m^4 + n m^2)
    per batch (one solve per step and per drop), memory O(n m) beyond K.
    """
    nb, n, _ = K.shape
    dev = _dev(K)
    diagK = xp.linalg.diagonal(K)
    ridge = lam * xp.sum(diagK, axis=1) / n  # (B,)
    rows = xp.arange(n, dtype=xp.int64, device=dev)
    zero = xp.zeros((nb, n), dtype=xp.float64, device=dev)
    c, r2 = b, gg  # correlations <g_i, r> and ||r||^2 (S empty: r = g)
    running = xp.ones(nb, dtype=xp.bool, device=dev)
    chosen = xp.zeros((nb, n), dtype=xp.bool, device=dev)
    act = xp.zeros((nb, 0), dtype=xp.bool, device=dev)
    w = xp.zeros((nb, 0), dtype=xp.float64, device=dev)
    slots = []
    for t in range(m):
        running = xp.logical_and(running, r2 > (GRADMATCH_TOL**2) * gg)
        j = xp.argmax(c, axis=1)  # the first maximum: the lowest index
        hit = rows[None, :] == j[:, None]
        running = xp.logical_and(running, xp.logical_not(xp.any(xp.logical_and(hit, chosen), axis=1)))
        if not bool(xp.any(running)):
            break
        kjj = xp.sum(xp.where(hit, diagK, zero), axis=1)
        if t == 0:
            cj = xp.sum(xp.where(hit, c, zero), axis=1)
            wj = cj / xp.where(kjj > 0, kjj, xp.ones_like(kjj))
            slots.append(j)
            act = running[:, None]
            w = xp.where(running, wj, xp.zeros_like(wj))[:, None]
        else:
            S = xp.stack(slots, axis=1)  # (B, t)
            KS, _ = gather(xp, K, b, S)
            kcol = xp.where(act, xp.sum(xp.where(hit[:, None, :], _take_rows(xp, K, S), 0.0), axis=2), 0.0)
            z = _solve(xp, _ridge_system(xp, KS, act, ridge), kcol)
            delta = kjj + ridge - xp.sum(kcol * z, axis=1)  # Schur complement of g_j in the ridge system
            running = xp.logical_and(running, delta > (SPAN_TOL**2) * (kjj + ridge))
            slots.append(j)
            S = xp.stack(slots, axis=1)  # (B, t + 1)
            KS, bS = gather(xp, K, b, S)
            act = xp.concat([act, running[:, None]], axis=1)
            w = xp.concat([w, xp.zeros((nb, 1), dtype=xp.float64, device=dev)], axis=1)
            fit, newest = running, xp.zeros(nb, dtype=xp.bool, device=dev)
            eye = xp.eye(t + 1, dtype=xp.float64, device=dev)
            while True:  # ridge fit; drop the most negative weight and re-solve until none is negative
                A = xp.where(fit[:, None, None], _ridge_system(xp, KS, act, ridge), eye)
                sol = _solve(xp, A, xp.where(xp.logical_and(act, fit[:, None]), bS, 0.0))
                w = xp.where(fit[:, None], sol, w)
                masked = xp.where(act, w, float("inf"))
                a = xp.argmin(masked, axis=1)  # the first minimum: the earliest selected
                fit = xp.logical_and(fit, xp.min(masked, axis=1) < 0.0)
                if not bool(xp.any(fit)):
                    break
                act = xp.logical_and(act, xp.logical_not(
                    xp.logical_and(fit[:, None], xp.arange(t + 1, device=dev)[None, :] == a[:, None])))
                newest = xp.logical_or(newest, xp.logical_and(fit, a == t))
            w = xp.where(act, w, 0.0)
        S = xp.stack(slots, axis=1)
        cnew = b - xp.sum(_take_rows(xp, K, S) * w[:, :, None], axis=1)
        bS, cS = _take1(xp, b, S), _take1(xp, cnew, S)
        c = xp.where(running[:, None], cnew, c)
        r2 = xp.where(running, gg - xp.sum(w * (bS + cS), axis=1), r2)
        chosen = xp.any(xp.logical_and(rows[None, None, :] == S[:, :, None], act[:, :, None]), axis=1)
        if t > 0:
            running = xp.logical_and(running, xp.logical_not(newest))
    return _gradmatch_finish(xp, slots, act, w, chosen, m, seed, starts)


def _gradmatch_finish(xp, slots, act, w, chosen, m, seed, starts):
    """Active rows in slot order, then the fill by random key; weights normalised to sum to n."""
    nb, n = chosen.shape
    dev = _dev(chosen)
    keys = xp.asarray(random_keys(seed, starts, n), device=dev)
    fill = xp.argsort(xp.where(chosen, 2.0, keys), axis=1, stable=True)  # keys < 1: chosen rows last
    pos = xp.arange(m, dtype=xp.int64, device=dev)[None, :]
    q = xp.sum(xp.astype(act, xp.int64), axis=1)[:, None]  # (B, 1)
    fill_rows = _take1(xp, xp.astype(fill, xp.int64), xp.clip(pos - q, 0, n - 1))
    if slots:
        T = len(slots)
        first = xp.argsort(xp.astype(xp.logical_not(act), xp.int8), axis=1, stable=True)  # active slots first
        S = _take1(xp, xp.stack(slots, axis=1), first)
        wa = _take1(xp, w, first)
        at = xp.clip(pos, 0, T - 1)
        fitted = pos < q
        order = xp.where(fitted, _take1(xp, S, at), fill_rows)
        qf = xp.astype(q[:, 0], xp.float64)
        mean = xp.where(qf > 0, xp.sum(w, axis=1) / xp.where(qf > 0, qf, 1.0), 1.0)
        weights = xp.where(fitted, _take1(xp, wa, at), mean[:, None])
    else:
        order = fill_rows
        weights = xp.ones((nb, m), dtype=xp.float64, device=dev)
    total = xp.sum(weights, axis=1)[:, None]
    weights = xp.where(total > 0, weights * (n / xp.where(total > 0, total, 1.0)), n / m)
    return xp.astype(order, xp.int64), weights


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """GradMatch on every batch of a stack: (order (B, m), sizes (B,), rho (B, m), weights (B, m))."""
    nb = F.shape[0]
    lam = float(opts["gradmatch_lambda"])
    if name == "numba":
        parts = tuple(np.ascontiguousarray(g) for g in grads)
        keys = (np.asarray(starts, dtype=np.int64).view(np.uint64), np.uint64(seed))  # the fill's random keys
        if grads_kind == "plain":
            order, weights, rho = gradmatch_plain_nb(parts[0], m, lam, *keys)
        else:
            order, weights, rho = gradmatch_last_layer_nb(parts[0], parts[1], m, lam, *keys)
        return order, np.full(nb, m, dtype=np.int64), rho, weights
    from .._namespace import array_namespace, device_of

    xp = array_namespace(F)
    K, bv, gg = full_gram(xp, grads, grads_kind)
    from .._cuda import gradmatch as cgm
    from .._cuda.criterion import rho_curve_on

    if name == "cuda" and cgm.fits(K.shape[1], m):  # the pursuit kernel, one launch; the fill on the device
        order, weights = cgm.gradmatch_like(xp, K, bv, gg, m, lam, seed, starts)
    else:
        order, weights = gradmatch(xp, K, bv, gg, m, lam, seed, starts)
    KS, bS = gather(xp, K, bv, order)
    sizes = xp.full((nb,), m, dtype=xp.int64, device=device_of(F))
    return order, sizes, rho_curve_on(name, xp, KS, bS, gg), weights
