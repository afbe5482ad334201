"""The Numba kernels of the randomized low-rank step against their generic twins (graft_array._agnostic.lowrank)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from graft_array._agnostic import lowrank as agn

from conftest import readonly

nlr = pytest.importorskip("graft_array._numba.lowrank")


def _spectral_batch(rng, nb, n, d, dtype, decades=2.0, rank=None):
    """Batches F_b = U diag(s) W^T with well separated singular values (so Ritz vectors are well defined)."""
    k = min(n, d) if rank is None else rank
    out = np.zeros((nb, n, d))
    for b in range(nb):
        U, _ = np.linalg.qr(rng.standard_normal((n, k)))
        W, _ = np.linalg.qr(rng.standard_normal((d, k)))
        out[b] = (U * np.logspace(0, -decades, k)) @ W.T
    return out.astype(dtype)


def _align_signs(V, ref):
    """V with each column's sign flipped to match ref (eigenvectors are defined up to sign)."""
    s = np.sign(np.sum(V * ref, axis=-2, keepdims=True))
    return V * np.where(s == 0, 1.0, s)


# --------------------------------------------------------------------------------------
# batch_gram
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nb, n, d", [(1, 1, 1), (2, 5, 7), (3, 13, 9), (2, 67, 33), (1, 128, 784), (2, 4, 3)])
def test_batch_gram_equals_numpy(rng, dtype, nb, n, d):
    F = rng.standard_normal((nb, n, d)).astype(dtype)
    G = nlr.batch_gram(readonly(F))
    ref = F.astype(np.float64) @ F.astype(np.float64).transpose(0, 2, 1)
    assert G.dtype == dtype and G.shape == (nb, n, n)
    assert_array_equal(G, G.transpose(0, 2, 1))  # exactly symmetric
    eps = np.finfo(dtype).eps
    scale = np.sqrt(np.einsum("bii->bi", ref))
    assert_allclose(G, ref, rtol=0, atol=4 * d * eps * scale.max() ** 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_gram_zero_rank_deficient_and_strided(rng, dtype):
    F = np.zeros((3, 10, 20), dtype=dtype)
    F[1] = np.outer(rng.standard_normal(10), rng.standard_normal(20))  # rank 1
    F[2, :4] = rng.standard_normal((4, 20))
    G = nlr.batch_gram(F[:, :, ::1])
    assert_array_equal(G[0], 0.0)
    ref = F.astype(np.float64) @ F.astype(np.float64).transpose(0, 2, 1)
    assert_allclose(G, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    assert_array_equal(G[2, 4:], 0.0)
    # a non-contiguous view is accepted (copied)
    Fs = np.asfortranarray(rng.standard_normal((2, 9, 11)).astype(dtype))
    assert_allclose(nlr.batch_gram(Fs), Fs @ Fs.transpose(0, 2, 1), rtol=1e-5, atol=1e-4)
    assert nlr.batch_gram(np.zeros((0, 4, 5), dtype)).shape == (0, 4, 4)


# --------------------------------------------------------------------------------------
# cholqr_rows
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("l, n", [(1, 1), (3, 5), (7, 17), (40, 128), (12, 37)])
def test_cholqr_rows_equals_generic(rng, passes, l, n):
    Y = rng.standard_normal((3, l, n)) * np.logspace(0, -3, n)
    Q = nlr.cholqr_rows(readonly(Y), passes)
    ref = np.swapaxes(agn._orth(np, np.swapaxes(Y, -1, -2), passes), -1, -2)
    assert Q.dtype == np.float64
    assert_allclose(Q, ref, rtol=0, atol=1e-9 if passes == 1 else 1e-11)
    if passes == 2:
        assert_allclose(Q @ Q.transpose(0, 2, 1), np.broadcast_to(np.eye(l), (3, l, l)), atol=1e-12)


def test_cholqr_rows_rank_deficient_stays_finite(rng):
    Y = np.zeros((2, 6, 20))
    Y[1, :2] = rng.standard_normal((2, 20))
    Y[1, 4] = Y[1, 0]  # a repeated row
    Q = nlr.cholqr_rows(Y, 2)
    ref = np.swapaxes(agn._orth(np, np.swapaxes(Y, -1, -2), 2), -1, -2)
    assert np.all(np.isfinite(Q))
    assert_array_equal(Q[0], 0.0)
    rows = [0, 1, 2, 3, 5]  # row 4 repeats row 0: what is left of it is round-off, in either twin
    assert_allclose(Q[:, rows], ref[:, rows], atol=1e-12)
    assert_array_equal(Q[1, [2, 3, 5]], 0.0)


# --------------------------------------------------------------------------------------
# the small symmetric eigensolver inside gram_ritz
# --------------------------------------------------------------------------------------
def _check_eigh(S, w, U):
    Ssym = 0.5 * (S + np.swapaxes(S, -1, -2))
    big = np.abs(Ssym).max(axis=(-1, -2), keepdims=True)
    l = S.shape[-1]
    assert_allclose(U @ np.swapaxes(U, -1, -2), np.broadcast_to(np.eye(l), S.shape), atol=1e-13 * max(l, 4))
    assert_allclose(U * w[:, None, :] @ np.swapaxes(U, -1, -2), Ssym, rtol=0,
                    atol=float(1e-13 * max(l, 4) * big.max()) if big.max() > 0 else 0)
    assert np.all(np.diff(w, axis=-1) >= 0)


@pytest.mark.parametrize("l", [1, 2, 3, 4, 5, 17, 40, 41])
def test_small_eigh_equals_lapack(rng, l):
    A = rng.standard_normal((4, l, l))
    S = A + 1e-9 * rng.standard_normal((4, l, l))  # not quite symmetric: (S + S^T) / 2 is used
    w, U = nlr._eigh_small(readonly(S))
    w0, U0 = np.linalg.eigh(0.5 * (S + np.swapaxes(S, -1, -2)))
    assert_allclose(w, w0, rtol=0, atol=1e-13 * l * np.abs(w0).max())
    assert_allclose(_align_signs(U, U0), U0, atol=1e-10)
    _check_eigh(S, w, U)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1.0, 1e150, 1e300])
def test_small_eigh_extreme_scales_and_repeated_eigenvalues(rng, scale):
    l = 12
    Q, _ = np.linalg.qr(rng.standard_normal((l, l)))
    lam = np.array([3.0] * 4 + [1.0] * 3 + [0.0] * 3 + [-2.0, 5.0])
    S = np.stack([(Q * lam) @ Q.T, np.diag(lam), np.zeros((l, l)), np.eye(l)]) * scale
    w, U = nlr._eigh_small(S)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(U))
    assert_allclose(w[0], np.sort(lam) * scale, rtol=0, atol=1e-13 * l * 5 * scale)
    assert_allclose(w[1], np.sort(lam) * scale, rtol=0, atol=0)
    assert_array_equal(w[2], 0.0)
    _check_eigh(S, w, U)


def test_small_eigh_tridiagonal_and_nonfinite(rng):
    l = 30
    S = np.zeros((3, l, l))
    i = np.arange(l - 1)
    S[0, i + 1, i] = S[0, i, i + 1] = 1.0  # eigenvalues 2 cos(k pi / (l + 1))
    S[1] = np.diag(np.arange(l, dtype=float)) + 1e-8 * np.eye(l, k=1)  # nearly diagonal: a glued matrix
    S[1] = 0.5 * (S[1] + S[1].T)
    S[2] = rng.standard_normal((l, l))
    S[2, 3, 4] = np.nan
    w, U = nlr._eigh_small(S)
    assert_allclose(w[0], np.sort(2 * np.cos(np.arange(1, l + 1) * np.pi / (l + 1))), atol=1e-13 * l)
    _check_eigh(S[:2], w[:2], U[:2])
    assert np.all(np.isnan(w[2])) and np.all(np.isnan(U[2]))


# --------------------------------------------------------------------------------------
# gram_ritz: the whole Rayleigh-Ritz step against the generic twin
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, d, r, power_iters", [(128, 784, 32, 1), (37, 50, 6, 1), (67, 70, 9, 0), (20, 25, 1, 2),
                                                  (9, 9, 9, 1), (5, 5, 2, 1)])
def test_gram_ritz_equals_generic(rng, dtype, n, d, r, power_iters):
    F = _spectral_batch(rng, 3, n, d, dtype)
    ell = agn.oversampled(r, n, d)
    omega_t = rng.standard_normal((ell, n)).astype(dtype)
    G = F @ F.transpose(0, 2, 1)
    w, V = nlr.gram_ritz(readonly(G), readonly(omega_t), power_iters, r)
    w0, V0 = agn.gram_ritz(np, G, omega_t, power_iters, r)
    assert w.shape == (3, r) and V.shape == (3, n, r) and w.dtype == V.dtype == np.float64
    tol = 1e-5 if dtype == np.float32 else 1e-11
    assert_allclose(w, w0, rtol=0, atol=tol * w0[:, :1].max())
    assert_allclose(_align_signs(V, V0), V0, rtol=0, atol=20 * tol)
    assert_allclose(V.transpose(0, 2, 1) @ V, np.broadcast_to(np.eye(r), (3, r, r)), atol=100 * tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_ritz_zero_and_rank_deficient(rng, dtype):
    n, d, r = 24, 40, 6
    F = np.concatenate([np.zeros((1, n, d)), _spectral_batch(rng, 1, n, d, np.float64, rank=3)]).astype(dtype)
    G = F @ F.transpose(0, 2, 1)
    omega_t = rng.standard_normal((agn.oversampled(r, n, d), n)).astype(dtype)
    w, V = nlr.gram_ritz(G, omega_t, 1, r)
    w0, V0 = agn.gram_ritz(np, G, omega_t, 1, r)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(V))
    assert_array_equal(w[0], 0.0)
    assert_array_equal(V[0], 0.0)
    tol = 1e-5 if dtype == np.float32 else 1e-11
    assert_allclose(w, w0, rtol=0, atol=tol * w0.max())
    assert_allclose(_align_signs(V[1, :, :3], V0[1, :, :3]), V0[1, :, :3], atol=20 * tol)  # the rank-3 part


def test_gram_ritz_rejects_bad_rank(rng):
    G = np.eye(5)[None]
    with pytest.raises(ValueError, match="r <= l"):
        nlr.gram_ritz(G, rng.standard_normal((3, 5)), 1, 4)
    with pytest.raises(ValueError, match="power_iters >= 0"):
        nlr.gram_ritz(G, rng.standard_normal((3, 5)), -1, 2)


def test_lowrank_hooks_equal_generic(rng):
    """lowrank with the compiled hooks equals the generic route (the path select's numba backend takes)."""
    F = _spectral_batch(rng, 4, 64, 200, np.float32)
    kw = dict(solver="randomized", xp=np, check_finite=True)
    V, sigma, _ = agn.lowrank(F, 12, rng=np.random.default_rng(3), gram=nlr.batch_gram, ritz=nlr.gram_ritz, **kw)
    V0, sigma0, _ = agn.lowrank(F, 12, rng=np.random.default_rng(3), **kw)
    assert_allclose(sigma, sigma0, rtol=1e-5)
    assert_allclose(_align_signs(V, V0), V0, atol=2e-4)
    Fbad = F.copy()
    Fbad[2, 5, 7] = np.nan
    with pytest.raises(agn.NonFiniteFeatures):
        agn.lowrank(Fbad, 12, rng=np.random.default_rng(3), gram=nlr.batch_gram, ritz=nlr.gram_ritz, **kw)
