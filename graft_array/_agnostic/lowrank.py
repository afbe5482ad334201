"""Low-rank sample coordinates V (batch, n, r) of a feature batch F (batch, n, d), any namespace.

V holds the top-r left singular vectors of each F_b (rows = samples). Everything
is a stacked matrix product or a small stacked factorisation, so NumPy runs it
through BLAS/LAPACK without a Python loop over batches, and CuPy/torch run it on
their device.

* ``"exact"``: the eigendecomposition of the batch-sized Gram F F^T (n x n) when
  d >= n, else of F^T F (d x d) followed by V = F W / sigma.
* ``"randomized"``: the range finder of Halko, Martinsson & Tropp (2011) with
  ``power_iters`` power iterations and Rayleigh-Ritz; Q is orthonormalised by
  shifted Cholesky QR after every product (one pass, two for the last).
  For a wide batch (d >= n) it runs on the batch Gram G = F F^T (n x n, one
  stacked GEMM): Y = G Omega with Omega (n, l) Gaussian, Q = orth(G^q Y), and the
  top-r eigenvectors of Q^T G Q rotate Q into V. G Omega is already one power
  iteration of the usual range finder, so the default q = 1 is its q = 1.5, and
  every product after the Gram is only n x n times n x l. Products run in the
  features' precision (float32 stays float32 in BLAS); Q and the l x l problem
  are float64. For a tall batch (d < n) it works on F itself: Y = F Omega with
  Omega (d, l), Q = orth((F F^T)^q Y) and the small Gram of Q^T F.
  l = r + max(8, r / 4).

With ``split=C`` the batch is F = [E | H] (n, C + h), the factorised per-sample
last-layer gradients g_i = e_i (x) [h_i; 1], and the Gram is that of the
gradients, K = (E E^T) * (H H^T + 1) (elementwise), never forming the C (h + 1)
columns: ``"exact"`` takes the eigendecomposition of K (float64), ``"randomized"``
the range finder on K (the wide-batch route above). Its d is C (h + 1).

Every route ends in the eigenvalues w = sigma^2 of a Gram matrix, whose round-off is
about max(n, d) * eps * w_max (eps of the precision the Gram was formed in: float64
for ``"exact"``, the features' dtype for ``"randomized"``). Directions with
w <= max(n, d) * eps * w_max are set to 0 (the feature batch has lower rank than r);
maxvol then fills those positions by its rank-deficiency rule. V is float64.
"""

__all__ = ["lowrank", "choose_solver", "oversampled", "batch_gram", "gradient_gram", "gram_ritz",
           "NonFiniteFeatures"]


class NonFiniteFeatures(ArithmeticError):
    """Raised by :func:`lowrank` with ``check_finite=True`` when its first product is not finite.

    A NaN or infinity anywhere in a batch reaches the diagonal of its Gram (or a
    row of F Omega), so that small check replaces a pass over F; it also fires
    when finite features overflow the Gram's precision (the caller tells the two
    apart on this rare path). :func:`graft_array.select` scales each batch by a
    power of two first, so there only the embeddings of last-layer gradients
    (``split``), which enter as <h_i, h_j> + 1, can overflow it.
    """


def choose_solver(n, d, r):
    """``"randomized"`` when its test matrix is at most half the batch (2 l <= min(n, d), l = r + max(8, r / 4)).

    There its products (n x n times n x l) cost a fraction of the exact
    eigendecomposition (0.47 against 1.5 ms per batch of 128 x 256 at r = 38 on
    the 2-core development machine), and in a one-off check on Fashion-MNIST
    batches (inputs, embeddings and last-layer gradients of a 784-256-10 MLP
    after one epoch, r from 0.3 n to 0.5 n) the subsets it led to left a batch
    gradient residual at most a few hundredths above the exact solver's
    (e.g. 0.0461 against 0.0452). Else ``"exact"``.
    """
    return "randomized" if 2 * oversampled(r, n, d) <= min(n, d) else "exact"


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


def _orth(xp, Y, passes=2):
    """Orthonormal basis of each Y_b by shifted Cholesky QR, applied ``passes`` times (2: CholeskyQR2)."""
    l = Y.shape[-1]
    eps = float(xp.finfo(Y.dtype).eps)
    eye = xp.eye(l, dtype=Y.dtype, device=_dev(Y))
    for _ in range(passes):
        S = _mT(xp, Y) @ Y
        # a tiny shift keeps the Cholesky factor defined when Y is rank-deficient; relative to the trace
        # (homogeneous: Y c gives Q), and 1 for Y = 0
        trace = xp.sum(xp.linalg.diagonal(S), axis=-1)
        shift = xp.where(trace > 0, (Y.shape[-2] + l) * eps * trace, xp.ones_like(trace))
        L = xp.linalg.cholesky(S + shift[:, None, None] * eye)
        Y = Y @ _mT(xp, xp.linalg.inv(L))
    return Y


def oversampled(r, n, d):
    """Columns l of the randomized range finder's test matrix for rank r: r + max(8, r / 4), capped by min(n, d)."""
    return min(n, d, r + max(8, r // 4))


def _check(xp, X, diag, check_finite):
    """X, after raising :class:`NonFiniteFeatures` if asked and its diagonal (or all of it) is not finite."""
    if check_finite:
        part = xp.linalg.diagonal(X) if diag else X
        if not bool(xp.all(xp.isfinite(part))):
            raise NonFiniteFeatures()
    return X


def lowrank(F, r, *, solver, xp, rng=None, power_iters=1, gram=None, ritz=None, check_finite=False, split=None):
    """Top-r left singular vectors of each batch of F (batch, n, d). Returns (V, sigma, solver).

    ``check_finite``: raise :class:`NonFiniteFeatures` when the first product
    with F (a Gram, or F Omega) is not finite, instead of a pass over F.

    ``rng`` (a :class:`numpy.random.Generator`) draws the randomized solver's
    Gaussian test matrix, shared by all batches; nothing else is random.
    ``gram(F)`` and ``ritz(G, omega_t, power_iters, r)``: a backend's compiled
    twins of :func:`batch_gram` and :func:`gram_ritz` for the randomized solver
    on a wide batch (default: the generic functions). ``split=C``: F is
    [E | H] and the Gram is the last-layer gradients' one (:func:`gradient_gram`).
    """
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):  # NumPy's warnings: the finiteness check reports instead
        if split is not None:
            return _lowrank_gradients(F, r, solver, xp, rng, power_iters, gram, ritz, check_finite, split)
        return _lowrank(F, r, solver, xp, rng, power_iters, gram, ritz, check_finite)


def batch_gram(xp, F):
    """``F_b F_b^T`` for each batch of F (batch, n, d), in F's precision (one stacked GEMM)."""
    return F @ _mT(xp, F)


def gradient_gram(xp, F, split, gram=None):
    """``(E E^T) * (H H^T + 1)`` for each batch of F = [E | H] (batch, n, split + h), in F's precision.

    The Gram of the per-sample gradients e_i (x) [h_i; 1]. ``gram``: a backend's
    twin of :func:`batch_gram` (it gets contiguous copies of E and H).
    """
    E, H = F[..., :split], F[..., split:]
    if gram is None:
        return batch_gram(xp, E) * (batch_gram(xp, H) + 1)
    import numpy as np

    return gram(np.ascontiguousarray(E)) * (gram(np.ascontiguousarray(H)) + 1)


def gram_ritz(xp, G, omega_t, power_iters, r):
    """Top-r Ritz pairs of the range finder on each batch Gram G (batch, n, n). Returns (w, V), float64.

    Row layout: Q^T (l, n) throughout, so each product is Q^T G (G is
    symmetric). ``Q^T = orth(Omega^T G)`` by Cholesky QR (two passes when
    ``power_iters`` is 0, else one), then ``power_iters`` times
    ``Q^T = orth(Q^T G)`` (two passes the last time), ``T = (Q^T G) Q`` and the
    top-r eigenpairs of ``(T + T^T) / 2``: w (batch, r) descending and
    V = Q U (batch, n, r). The products run in G's precision (a float32 batch
    stays float32 in BLAS); Q and the l x l problem are float64. ``omega_t``
    (l, n), in G's dtype, is shared by all batches.
    """
    f64 = xp.float64

    def times_g(Qt):
        return xp.astype(xp.astype(Qt, G.dtype) @ G, f64)

    def orth_rows(Yt, passes):
        return _mT(xp, _orth(xp, _mT(xp, Yt), passes))

    Qt = orth_rows(times_g(omega_t), 2 if power_iters == 0 else 1)
    for i in range(power_iters):
        Qt = orth_rows(times_g(Qt), 2 if i == power_iters - 1 else 1)
    T = times_g(Qt) @ _mT(xp, Qt)
    w, Ut = xp.linalg.eigh(0.5 * (T + _mT(xp, T)))
    w, Ut = _top(xp, w, Ut, r)
    return w, _mT(xp, _mT(xp, Ut) @ Qt)


def _lowrank_gradients(F, r, solver, xp, rng, power_iters, gram, ritz, check_finite, split):
    nb, n, width = F.shape
    d = split * (width - split + 1)  # the gradients' length C (h + 1)
    if solver == "exact":
        eps = float(xp.finfo(xp.float64).eps)
        K = _check(xp, gradient_gram(xp, xp.astype(F, xp.float64), split), True, check_finite)
        w, V = _top(xp, *xp.linalg.eigh(K), r)
    else:
        eps = float(xp.finfo(F.dtype).eps)
        omega_t = xp.asarray(rng.standard_normal((oversampled(r, n, d), n)), dtype=F.dtype, device=_dev(F))
        K = _check(xp, gradient_gram(xp, F, split, gram), True, check_finite)
        w, V = gram_ritz(xp, K, omega_t, power_iters, r) if ritz is None else ritz(K, omega_t, power_iters, r)
    V, sigma = _cut(xp, w, V, n, d, eps, False)
    return V, sigma, solver


def _cut(xp, w, V, n, d, eps, divide):
    """Clip the eigenvalues, drop the round-off directions (see the module docstring); (V, sigma)."""
    w = xp.clip(w, 0.0, None)
    sigma = xp.sqrt(w)
    keep = w > max(n, d) * eps * w[:, :1]
    if divide:  # V = F W / sigma
        V = V / xp.where(keep, sigma, xp.ones_like(sigma))[:, None, :]
    V = xp.where(keep[:, None, :], V, xp.zeros_like(V))
    return V, sigma


def _lowrank(F, r, solver, xp, rng, power_iters, gram, ritz, check_finite):
    nb, n, d = F.shape
    f64 = xp.float64
    if solver == "exact":
        F = xp.astype(F, f64)
        eps = float(xp.finfo(f64).eps)
        if d >= n:
            w, U = xp.linalg.eigh(_check(xp, F @ _mT(xp, F), True, check_finite))
            w, V = _top(xp, w, U, r)
        else:
            w, W = xp.linalg.eigh(_check(xp, _mT(xp, F) @ F, True, check_finite))
            w, W = _top(xp, w, W, r)
            V = F @ W
    elif d >= n:
        eps = float(xp.finfo(F.dtype).eps)  # the Gram is formed in F's precision
        ell = oversampled(r, n, d)
        omega_t = xp.asarray(rng.standard_normal((ell, n)), dtype=F.dtype, device=_dev(F))
        G = _check(xp, batch_gram(xp, F) if gram is None else gram(F), True, check_finite)
        if ritz is None:
            w, V = gram_ritz(xp, G, omega_t, power_iters, r)
        else:
            w, V = ritz(G, omega_t, power_iters, r)
    else:
        eps = float(xp.finfo(F.dtype).eps)
        ell = oversampled(r, n, d)
        omega = xp.asarray(rng.standard_normal((d, ell)), dtype=F.dtype, device=_dev(F))
        Q = _orth(xp, _check(xp, F @ omega, False, check_finite))
        for _ in range(power_iters):
            Q = _orth(xp, F @ (_mT(xp, F) @ Q))
        Bm = xp.astype(_mT(xp, Q) @ F, f64)
        w, Ub = xp.linalg.eigh(Bm @ _mT(xp, Bm))
        w, Ub = _top(xp, w, Ub, r)
        V = xp.astype(Q, f64) @ Ub
    # Gram eigenvalues below max(n, d) * eps * lambda_max are round-off: those directions are 0.
    V, sigma = _cut(xp, w, V, n, d, eps, solver == "exact" and d < n)
    return V, sigma, solver
