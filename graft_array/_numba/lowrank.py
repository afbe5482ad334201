"""Numba pieces of the randomized range finder: Cholesky QR of many small blocks at once.

The large products (the batch Gram, Q^T G) stay with NumPy's BLAS; what NumPy
does badly for hundreds of 40 x 128 blocks (the l x l Gram, its Cholesky factor
and the triangular solve, one small call each) is one compiled call per chunk
of batches here (``nogil``: :mod:`graft_array._parallel` runs the chunks in
threads), with the same shift rule as the generic ``_orth``.
"""

import math

import numpy as np
from numba import njit

__all__ = ["cholqr_rows"]

_TINY_SQRT = math.sqrt(np.finfo(np.float64).smallest_normal)
_EPS = float(np.finfo(np.float64).eps)


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc", "nsz", "arcp"})
def _dot(x, y):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * y[i]
    return s


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc", "nsz", "arcp"})
def _axpy(a, x, y):
    """y -= a x."""
    for i in range(x.shape[0]):
        y[i] -= a * x[i]


@njit(cache=True, nogil=True, fastmath={"contract", "reassoc", "nsz", "arcp"})
def _cholqr_rows_once(Y, L):
    """In place on the rows of Y (l, n): Y <- L^-1 Y with L L^T = Y Y^T + shift I.

    Rows are contiguous, so the l x l Gram is l^2 / 2 contiguous dot products and
    the triangular solve is l^2 / 2 contiguous axpys.
    """
    l, n = Y.shape
    trace = 0.0
    for a in range(l):
        for c in range(a + 1):
            L[a, c] = _dot(Y[a], Y[c])
        trace += L[a, a]
    shift = (n + l) * _EPS * trace + _TINY_SQRT  # keeps a rank-deficient Y defined
    for a in range(l):  # Cholesky, lower, in place
        L[a, a] += shift
        for c in range(a + 1):
            s = L[a, c]
            for t in range(c):
                s -= L[a, t] * L[c, t]
            if c == a:
                L[a, a] = math.sqrt(s) if s > 0.0 else _TINY_SQRT
            else:
                L[a, c] = s / L[c, c]
    for a in range(l):  # forward substitution on whole rows
        y = Y[a]
        for t in range(a):
            _axpy(L[a, t], Y[t], y)
        f = 1.0 / L[a, a]
        for i in range(n):
            y[i] *= f


@njit(cache=True, nogil=True)
def _cholqr_batched(Y, passes):
    nb, l, n = Y.shape
    L = np.empty((l, l))
    for b in range(nb):
        for _ in range(passes):
            _cholqr_rows_once(Y[b], L)


def cholqr_rows(Y, passes=2):
    """Orthonormal rows spanning the rows of each Y_b (B, l, n), by shifted Cholesky QR ``passes`` times.

    Returns a new float64 array (Y is not written to).
    """
    Q = np.array(Y, dtype=np.float64, order="C", copy=True)
    _cholqr_batched(Q, passes)
    return Q
