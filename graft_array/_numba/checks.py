"""Input checks that would cost a temporary array in NumPy, and the exact power-of-two batch scales."""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

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


@njit(cache=True, nogil=True)
def _umax_masked(bits, cols, mask):
    """max of ``bits[i, t] & mask`` over the first ``cols`` columns of a 2-D unsigned array (0 if empty).

    The sign bit masked off, the unsigned order of the bits is the order of |x|,
    with infinity above every finite number and NaN above infinity; the integer
    max-reduction vectorises (a float compare-and-select does not in Numba).
    """
    m = mask - mask
    for i in range(bits.shape[0]):
        for t in range(cols):
            v = bits[i, t] & mask
            m = v if v > m else m
    return m


def abs_max(X):  # pragma: no cover - compiled only (the overload below), for use inside Numba kernels
    """max |X| of a 2-D float32 / float64 array as float64: NaN or inf where X is not finite, 0.0 if empty.

    C-contiguous X: one vectorised pass over its bits (:func:`_umax_masked`),
    the Numba twin of one batch of :func:`batch_abs_max`. Other layouts: a
    plain loop with the same result.
    """
    raise NotImplementedError("abs_max runs inside Numba kernels; from Python use batch_abs_max")


@njit(cache=True, nogil=True)
def _as_float(m, like):
    """The unsigned bits ``m`` read as a float of ``like``'s dtype, returned as float64."""
    out = np.empty(1, type(m))
    out[0] = m
    return np.float64(out.view(like.dtype)[0])


@njit(cache=True, nogil=True)
def _abs_max_loop(X):
    m = 0.0
    for i in range(X.shape[0]):
        for t in range(X.shape[1]):
            a = abs(np.float64(X[i, t]))
            if a > m or a != a:  # NaN sticks: nothing compares above it
                m = a
    return m


@overload(abs_max)
def _abs_max_impl(X):
    if not (isinstance(X, types.Array) and X.ndim == 2):
        return None
    if X.layout == "C" and X.dtype == types.float32:
        return lambda X: _as_float(_umax_masked(X.view(np.uint32), X.shape[1], np.uint32(0x7FFFFFFF)), X)
    if X.layout == "C" and X.dtype == types.float64:
        return lambda X: _as_float(_umax_masked(X.view(np.uint64), X.shape[1], np.uint64(0x7FFFFFFFFFFFFFFF)), X)
    return lambda X: _abs_max_loop(X)


@njit(cache=True, nogil=True)
def _batch_umax(bits, cols, mask, out):
    for b in range(bits.shape[0]):
        out[b] = _umax_masked(bits[b], cols, mask)


def batch_abs_max(F, cols=None):
    """max |F_b[:, :cols]| for each batch of F (B, n, d), native float32 or float64: NumPy float64 (B,).

    One pass over F (:func:`_umax_masked`, one thread: the callers run chunks
    of batches in threads). NaN or infinity anywhere in a batch (in its first
    ``cols`` columns) makes its maximum NaN or infinity, so the pass also tells
    whether the batch is finite. The twin of
    :func:`graft_array._agnostic.criterion.batch_abs_max`.
    """
    F = np.ascontiguousarray(F)
    nb, n, d = F.shape
    cols = d if cols is None else cols
    if F.dtype == np.float32:
        bits, mask = F.view(np.uint32), np.uint32(0x7FFFFFFF)
    else:
        bits, mask = F.view(np.uint64), np.uint64(0x7FFFFFFFFFFFFFFF)
    out = np.zeros(nb, dtype=bits.dtype)
    if nb and n and cols:
        _batch_umax(bits, cols, mask, out)
    return out.view(F.dtype).astype(np.float64)


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
