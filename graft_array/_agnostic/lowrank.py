"""Low-rank sample coordinates V (batch, n, r) of a feature batch F (batch, n, d), any namespace.

V holds the top-r left singular vectors of each F_b (rows = samples). Everything
is a stacked matrix product or a small stacked factorisation, so NumPy runs it
through BLAS/LAPACK without a Python loop over batches, and CuPy/torch run it on
their device.

* ``"exact"``: the eigendecomposition of the batch-sized Gram F F^T (n x n) when
  d >= n, else of F^T F (d x d) followed by V = F W / sigma.
* ``"randomized"``: the range finder of Halko, Martinsson & Tropp (2011): Y = F Omega
  with r + oversample Gaussian columns, ``power_iters`` power iterations, an
  orthonormal basis Q (Cholesky QR, twice), then the small SVD of Q^T F.

Directions whose singular value is <= max(n, d) * eps * sigma_max are set to 0
(the feature batch has lower rank than r); maxvol then fills those positions by
its rank-deficiency rule.
"""

__all__ = ["lowrank", "choose_solver"]


def choose_solver(n, d, r):
    """``"randomized"`` when r is small against min(n, d) (r <= min(n, d) / 4), else ``"exact"``."""
    return "randomized" if 4 * r <= min(n, d) else "exact"


def _mT(xp, A):
    return xp.matrix_transpose(A) if hasattr(xp, "matrix_transpose") else xp.swapaxes(A, -1, -2)


def _top(xp, w, U, r):
    """Top-r eigenpairs (descending) of a stacked eigh result (ascending)."""
    m = w.shape[-1]
    idx = xp.arange(m - 1, m - 1 - r, -1, device=_dev(w))
    return xp.take(w, idx, axis=-1), xp.take(U, idx, axis=-1)


def _dev(x):
    from .._namespace import device_of

    return device_of(x)


def _orth(xp, Y):
    """Orthonormal basis of each Y_b by shifted Cholesky QR, applied twice (CholeskyQR2)."""
    l = Y.shape[-1]
    eps = float(xp.finfo(Y.dtype).eps)
    eye = xp.eye(l, dtype=Y.dtype, device=_dev(Y))
    for _ in range(2):
        S = _mT(xp, Y) @ Y
        # a tiny shift keeps the Cholesky factor defined when Y is rank-deficient
        trace = xp.sum(xp.linalg.diagonal(S), axis=-1)
        shift = (Y.shape[-2] + l) * eps * trace + float(xp.finfo(Y.dtype).tiny) ** 0.5
        L = xp.linalg.cholesky(S + shift[:, None, None] * eye)
        Y = Y @ _mT(xp, xp.linalg.inv(L))
    return Y


def lowrank(F, r, *, solver, xp, omega=None, power_iters=1):
    """Top-r left singular vectors of each batch of F (batch, n, d). Returns (V, sigma, solver).

    ``omega`` (d, r + oversample) is the Gaussian test matrix of the randomized
    solver, drawn by the caller from its ``random_state``.
    """
    nb, n, d = F.shape
    dtype = F.dtype
    eps = float(xp.finfo(dtype).eps)
    if solver == "exact":
        if d >= n:
            w, U = xp.linalg.eigh(F @ _mT(xp, F))
            w, V = _top(xp, w, U, r)
        else:
            w, W = xp.linalg.eigh(_mT(xp, F) @ F)
            w, W = _top(xp, w, W, r)
            V = F @ W
        sigma = xp.sqrt(xp.clip(w, 0.0, None))
        if d < n:
            safe = xp.where(sigma > 0, sigma, xp.ones_like(sigma))
            V = V / safe[:, None, :]
    else:
        Y = F @ xp.asarray(omega, dtype=dtype, device=_dev(F))
        Q = _orth(xp, Y)
        for _ in range(power_iters):
            Q = _orth(xp, F @ (_mT(xp, F) @ Q))
        Bm = _mT(xp, Q) @ F
        w, Ub = xp.linalg.eigh(Bm @ _mT(xp, Bm))
        w, Ub = _top(xp, w, Ub, r)
        sigma = xp.sqrt(xp.clip(w, 0.0, None))
        V = Q @ Ub
    cutoff = max(n, d) * eps * sigma[:, :1]
    keep = sigma > cutoff
    V = xp.where(keep[:, None, :], V, xp.zeros_like(V))
    return V, sigma, solver
