"""``strategy="random"``: a uniform random subset per batch, keyed on (seed, the batch's dataset position).

Row i of batch b gets a key, the (i+1)-th output of a SplitMix64 stream seeded
by ``(seed, start_b)``; the m smallest keys win, in key order, with weights
n / m. The result does not depend on how batches are grouped into calls.
Numba: :func:`random_subset_nb`; any namespace: :func:`random_subset` (the keys
come from NumPy, the sort runs in the arrays' namespace). GradMatch fills its
shortfall from the same stream.
"""

import numpy as np
from numba import njit, prange

from .. import _numba  # noqa: F401  (first: the stamped cache locators of the kernels below)
from .._agnostic import criterion

__all__ = ["random_keys_nb", "random_subset_nb", "random_keys", "random_subset", "run"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
def _mix64_nb(z):
    """SplitMix64's output function (a bijection of uint64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def random_keys_nb(seed, start, u):
    """u[i] = the (i+1)-th output of the SplitMix64 stream of (seed, start), as a float64 in [0, 1)."""
    state = _mix64_nb(_mix64_nb(seed) + start)
    for i in range(u.shape[0]):
        key = _mix64_nb(state + np.uint64(i + 1) * _GOLDEN)
        u[i] = float(key >> np.uint64(11)) * 1.1102230246251565e-16  # 2 ** -53


@njit(cache=True, nogil=True, parallel=True)
def random_subset_nb(starts, seed, n, m):
    """(B, m) int64: each batch's m rows of smallest random key, in key order. starts (B,) uint64, seed uint64."""
    nb = starts.shape[0]
    out = np.empty((nb, m), dtype=np.int64)
    for bi in prange(nb):
        u = np.empty(n)
        random_keys_nb(seed, starts[bi], u)
        order = np.argsort(u, kind="mergesort")  # stable: equal keys keep the row order
        for t in range(m):
            out[bi, t] = order[t]
    return out


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


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """A random subset of every batch of a stack: (order (B, m), sizes (B,), rho (B, m), weights (B, m))."""
    nb, n = F.shape[0], F.shape[1]
    if name == "numba":
        from .._numba import criterion as ncrit

        order = random_subset_nb(np.asarray(starts, dtype=np.int64).view(np.uint64), np.uint64(seed), n, m)
        weights = np.full((nb, m), n / m)
        sizes = np.full(nb, m, dtype=np.int64)
        if grads_kind is None:
            return order, sizes, np.full((nb, m), np.nan), weights
        parts = tuple(np.ascontiguousarray(g) for g in grads)
        if grads_kind == "plain":
            K, bv, gg = ncrit.gram_plain(parts[0], order)
        else:
            K, bv, gg = ncrit.gram_last_layer(parts[0], parts[1], order)
        return order, sizes, ncrit.rho_curve(K, bv, gg)[0], weights
    from .._namespace import array_namespace, device_of

    xp = array_namespace(F)
    dev = device_of(F)
    sizes = xp.full((nb,), m, dtype=xp.int64, device=dev)
    order = random_subset(xp, starts, seed, n, m, dev)
    weights = xp.full((nb, m), n / m, dtype=xp.float64, device=dev)
    if grads_kind is None:
        return order, sizes, xp.full((nb, m), float("nan"), dtype=xp.float64, device=dev), weights
    if grads_kind == "plain":
        K, bv, gg = criterion.gram_plain(xp, grads[0], order)
    else:
        K, bv, gg = criterion.gram_last_layer(xp, grads[0], grads[1], order)
    return order, sizes, criterion.rho_curve(xp, K, bv, gg)[0], weights
