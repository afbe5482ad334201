"""Numba pieces of the randomized range finder: Cholesky QR of many small blocks at once.

The products stay with NumPy's BLAS; what NumPy does badly for hundreds of
40 x 40 blocks (a Cholesky factor and its triangular inverse, one small LAPACK
call each) is one compiled loop per chunk of batches here (``nogil``:
:mod:`graft_array._parallel` runs the chunks in threads), with the same shift
rule as the generic ``_orth``.
"""

import math

import numpy as np
from numba import njit

from .criterion import _FM, _dot

__all__ = ["cholqr_rows"]

_TINY_SQRT = math.sqrt(np.finfo(np.float64).smallest_normal)
_EPS = float(np.finfo(np.float64).eps)


@njit(cache=True, nogil=True, fastmath=_FM)
def _chol_inverse(S, n, out):
    """out <- L^-1 (lower triangular) with L L^T = S + shift I, for each S of the stack (B, l, l)."""
    nb, l, _ = S.shape
    L = np.empty((l, l))
    for b in range(nb):
        trace = 0.0
        for a in range(l):
            trace += S[b, a, a]
        shift = (n + l) * _EPS * trace + _TINY_SQRT  # keeps a rank-deficient block defined
        for a in range(l):  # Cholesky by rows: contiguous dots
            for c in range(a):
                L[a, c] = (S[b, a, c] - _dot(L[a, :c], L[c, :c])) / L[c, c]
            d = S[b, a, a] + shift - _dot(L[a, :a], L[a, :a])
            L[a, a] = math.sqrt(d) if d > 0.0 else _TINY_SQRT
        X = out[b]
        X[:, :] = 0.0
        for a in range(l):  # row a of L^-1 = (e_a - sum_{t<a} L[a, t] row t) / L[a, a]: contiguous axpys
            X[a, a] = 1.0
            for t in range(a):
                f = L[a, t]
                for c in range(t + 1):
                    X[a, c] -= f * X[t, c]
            f = 1.0 / L[a, a]
            for c in range(a + 1):
                X[a, c] *= f


def cholqr_rows(Y, passes=2):
    """Orthonormal rows spanning the rows of each Y_b (B, l, n), by shifted Cholesky QR ``passes`` times.

    The two products (Y Y^T and L^-1 Y) go to BLAS; the Cholesky factor and its
    inverse (l x l) are one compiled loop over the stack. Returns a new float64
    array (Y is not written to).
    """
    Q = np.asarray(Y, dtype=np.float64)
    nb, l, n = Q.shape
    Linv = np.empty((nb, l, l))
    for _ in range(passes):
        _chol_inverse(Q @ Q.transpose(0, 2, 1), n, Linv)
        Q = Linv @ Q
    return Q
