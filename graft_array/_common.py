"""Small helpers shared by every backend (no heavy imports here)."""

import numpy as np

from .strategies import NAMES  # the registry imports nothing heavy

METHODS = ("deim", "volume", "tournament")

#: selection strategies of select: GRAFT and the baselines with the same API (the registry's names)
STRATEGIES = NAMES


def default_tile_rows(n, k_eff):
    """Rows per tile of the tournament method when the caller gives none.

    Shared by the Numba kernels and the generic twin so that both pick the same
    tiles and therefore the same rows.

    The smallest power of two ``T >= sqrt(k_eff * n)``: then the ``n / T`` tiles
    of the first level leave at most about ``T`` candidates, so the tournament
    has two levels and its final DEIM sees every first-level winner (fewer,
    larger final pools lose less volume than deeper trees; the speed hardly
    depends on ``T`` since each row costs about ``k_eff**2 / 2`` multiply-adds
    whatever the tile). Clamped to ``[max(256, 4 k_eff), 2**20 / k_eff]``: at
    least four candidates' worth of rows per winner, and a float64 tile buffer
    of at most 8 MiB (float32 half that), well inside the L3 cache.
    """
    k = max(1, int(k_eff))
    t = 1
    while t * t < k * int(n):
        t *= 2
    lo = max(256, 4 * k)
    hi = max(lo, (1 << 20) // k)
    return int(min(max(t, lo), hi))


def rank_tol_factor(n, r):
    """The factor ``f`` of the rank tolerance ``f * eps * max|V|`` of every maxvol method: ``max(r, min(n, r**2))``.

    A pivot (the largest remaining |entry| of the LU residual, or a residual
    row norm of the greedy volume step) at or below ``f eps max|V|`` counts as
    rank deficiency. The rounding error of a residual entry after ``j < r``
    elimination steps is about ``j (1 + j rho) eps max|V|`` (``rho`` the growth,
    modest under partial pivoting), whatever the number of rows ``n``: the
    factor is numpy ``matrix_rank``'s ``max(n, r)``, capped at ``r**2``. Without
    the cap a float32 input of ``n > 1/eps`` (8.4e6) rows would have a tolerance
    above ``max|V|`` itself, hence rank 0; batches of ``n <= r**2`` rows keep
    numpy's rule. Shared by the Numba, CUDA and generic kernels and the
    references of :mod:`graft_array.testing`.
    """
    n, r = int(n), int(r)
    return max(r, min(n, r * r))


def unit_exponents(amax, dtype=np.float64):
    """The exact power-of-two scales of batches: k (int64, ``amax``'s shape) with ``amax * 2^k`` in [1/2, 1).

    ``amax``: each batch's largest |entry| (>= 0). k is 0 where ``amax`` is 0 or
    not finite, and clamped so that ``2^k`` is a normal number of ``dtype``
    (float32: [-126, 127], float64: [-1022, 1023]): multiplying a ``dtype``
    array by it is then exact. At the clamp ``amax * 2^k`` lands in [1/2, 4)
    (huge batches) or below 1/2 (batches of subnormals). The one rule for every
    host-side scale; :func:`graft_array._numba.checks.unit_scale` is its Numba
    twin (float64).
    """
    a = np.asarray(amax, dtype=np.float64)
    fi = np.finfo(dtype)
    lo, hi = int(fi.minexp), int(fi.maxexp) - 1
    ok = np.isfinite(a) & (a > 0)
    k = -np.frexp(np.where(ok, a, 1.0))[1].astype(np.int64)
    return np.where(ok, np.clip(k, lo, hi), 0).astype(np.int64)
