"""Input checks that would cost a temporary array in NumPy."""

import math

import numpy as np
from numba import njit, prange

_CHUNK = 1 << 16


@njit(cache=True, nogil=True)
def unit_scale(m):
    """``2^k`` with ``m 2^k`` in [1/2, 1) for a batch of largest |entry| ``m`` (float64; 1.0 for 0 or not finite).

    k is clamped to [-1022, 1023], so that the scale is a normal float64 and
    multiplying by it is exact. The Numba twin of :func:`graft_array._common.unit_exponents`.
    """
    m = np.float64(m)
    if not (m > 0.0 and m < np.inf):
        return 1.0
    k = -math.frexp(m)[1]
    return math.ldexp(1.0, min(max(k, -1022), 1023))


@njit(cache=True, nogil=True, parallel=True)
def _any_exponent_all_ones(bits, mask):
    """True when some word has every exponent bit set (NaN or +-inf). Integer ops vectorise."""
    n = bits.shape[0]
    nchunks = (n + _CHUNK - 1) // _CHUNK
    bad = np.zeros(nchunks, dtype=np.bool_)
    for c in prange(nchunks):
        hits = 0
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            hits += (bits[i] & mask) == mask
        bad[c] = hits > 0
    return bad.any()


def all_finite(x):
    """True when every entry of the float32/float64 NumPy array ``x`` is finite.

    No temporary array and parallel, unlike ``np.isfinite(x).all()``.
    """
    if not x.flags.c_contiguous or x.dtype not in (np.float32, np.float64):
        return bool(np.isfinite(x).all())
    if x.dtype == np.float32:
        bits, mask = x.reshape(-1).view(np.uint32), np.uint32(0x7F800000)
    else:
        bits, mask = x.reshape(-1).view(np.uint64), np.uint64(0x7FF0000000000000)
    return not bool(_any_exponent_all_ones(bits, mask))
