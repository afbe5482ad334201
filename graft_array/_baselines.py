"""The baseline strategies of :func:`graft_array.select` ("random", "craig", "gradmatch") on one stack of batches.

Called by ``_run_stack`` with the batches of one size (B, n, d) and their
gradients; returns what the GRAFT path returns, in the compute namespace:
``(order (B, m) int64, sizes (B,) int64, residuals (B, m) float64, weights (B, m)
float64)``. Numba: one compiled call over all batches (prange); other
backends: the generic twins of :mod:`graft_array._agnostic.baselines`.
"""

import numpy as np

__all__ = ["run_baseline"]


def run_baseline(F, grads, grads_kind, m, opts, seed, name, starts):
    """Selection of every batch of F (B, n, d) by ``opts["strategy"]``; m rows each; starts (B,) dataset positions."""
    if name == "numba":
        return _run_numba(F, grads, grads_kind, m, opts, seed, starts)
    return _run_generic(F, grads, grads_kind, m, opts, seed, starts)


def _run_numba(F, grads, grads_kind, m, opts, seed, starts):
    from ._numba import baselines as nbase
    from ._numba import criterion as ncrit

    nb, n = F.shape[0], F.shape[1]
    strategy = opts["strategy"]
    parts = tuple(np.ascontiguousarray(g) for g in grads)
    if strategy == "random":
        order = nbase.random_subset(np.asarray(starts, dtype=np.int64).view(np.uint64), np.uint64(seed), n, m)
        weights = np.full((nb, m), n / m)
        if grads_kind is None:
            rho = np.full((nb, m), np.nan)
        else:
            if grads_kind == "plain":
                K, bv, gg = ncrit.gram_plain(parts[0], order)
            else:
                K, bv, gg = ncrit.gram_last_layer(parts[0], parts[1], order)
            rho, _ = ncrit.rho_curve(K, bv, gg)
    elif strategy == "craig":
        if grads_kind == "plain":
            order, weights, rho = nbase.craig_plain(parts[0], m, True)
        else:
            order, weights, rho = nbase.craig_last_layer(parts[0], parts[1], m, True)
    else:
        lam = float(opts["gradmatch_lambda"])
        if grads_kind == "plain":
            order, weights, rho = nbase.gradmatch_plain(parts[0], m, lam)
        else:
            order, weights, rho = nbase.gradmatch_last_layer(parts[0], parts[1], m, lam)
    return order, np.full(nb, m, dtype=np.int64), rho, weights


def _run_generic(F, grads, grads_kind, m, opts, seed, starts):
    from ._agnostic import baselines as abase
    from ._agnostic import criterion
    from ._namespace import array_namespace, device_of

    xp = array_namespace(F)
    dev = device_of(F)
    nb, n = F.shape[0], F.shape[1]
    strategy = opts["strategy"]
    sizes = xp.full((nb,), m, dtype=xp.int64, device=dev)
    if strategy == "random":
        order = abase.random_subset(xp, starts, seed, n, m, dev)
        weights = xp.full((nb, m), n / m, dtype=xp.float64, device=dev)
        if grads_kind is None:
            return order, sizes, xp.full((nb, m), float("nan"), dtype=xp.float64, device=dev), weights
        if grads_kind == "plain":
            K, bv, gg = criterion.gram_plain(xp, grads[0], order)
        else:
            K, bv, gg = criterion.gram_last_layer(xp, grads[0], grads[1], order)
        return order, sizes, criterion.rho_curve(xp, K, bv, gg)[0], weights
    K, bv, gg = abase.full_gram(xp, grads, grads_kind)
    if strategy == "craig":
        order, weights = abase.craig(xp, K, m)
    else:
        order, weights = abase.gradmatch(xp, K, bv, m, float(opts["gradmatch_lambda"]))
    KS, bS = abase.gather(xp, K, bv, order)
    return order, sizes, criterion.rho_curve(xp, KS, bS, gg)[0], weights
