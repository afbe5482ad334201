"""select's scale guarantees: selections and weights do not depend on the magnitude of features or gradients.

Scaling the features by any c > 0 leaves the top-r left singular vectors (and so the
MaxVol rows) unchanged; scaling every gradient by c leaves rho(m), the weight fit,
CRAIG's distances up to a common factor and GradMatch's fit unchanged. select scales
each batch internally by exact powers of two, so for c = 2^e the results are the same
bits wherever the scaled inputs are exactly representable.
"""

import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads
from graft_array import testing as gt

from conftest import CPU_BACKENDS

#: the per-batch sizes of the size criterion (each batch's own budget)
select_batch = functools.partial(ga.select, budget="batch")


# --------------------------------------------------------------------------------------
# the property: any power-of-two scale, features and gradients independently
# --------------------------------------------------------------------------------------
def _exponent_range(*arrays):
    """(lo, hi): every e for which each ``x * 2**e`` is exact (no overflow, no nonzero entry subnormal)."""
    lo, hi = -(10**6), 10**6
    for x in arrays:
        fi = np.finfo(x.dtype)
        a = np.abs(x[x != 0])
        hi = min(hi, fi.maxexp - int(np.frexp(a.max())[1]))
        lo = max(lo, fi.minexp + 1 - int(np.frexp(a.min())[1]))
    return lo, hi


def _pick(lo, hi, u):
    """An exponent in [lo, hi] from u in [0, 1]: the ends themselves at u = 0 and u = 1."""
    return lo + int(round(u * (hi - lo)))


def _run(backend, F, grads, **kw):
    if backend == "strict":
        xs = pytest.importorskip("array_api_strict")
        F = None if F is None else xs.asarray(F)
        if isinstance(grads, LastLayerGrads):
            grads = LastLayerGrads(xs.asarray(grads.residuals), xs.asarray(grads.embeddings))
        else:
            grads = xs.asarray(grads)
        backend = "auto"
    s = ga.select(F, grads, return_info=True, backend=backend, random_state=5, **kw)
    return np.asarray(s.indices), np.asarray(s.weights), np.asarray(s.residuals)


def _same(a, b, n_rows):
    idx, w, rho = a
    idx2, w2, rho2 = b
    assert_array_equal(idx2, idx)
    assert np.unique(idx).size == idx.size and idx.min() >= 0 and idx.max() < n_rows
    assert_allclose(w2, w, rtol=1e-9, atol=1e-12)
    assert_allclose(rho2, rho, rtol=1e-9, atol=1e-12, equal_nan=True)


@settings(max_examples=150, deadline=None)
@given(
    strategy=st.sampled_from(["graft", "random", "craig", "gradmatch"]),
    method=st.sampled_from(["deim", "volume", "tournament"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    last_layer=st.booleans(),
    with_features=st.booleans(),
    backend=st.sampled_from(CPU_BACKENDS + ["strict"]),
    solver=st.sampled_from(["exact", "randomized"]),
    u_feat=st.floats(0.0, 1.0),
    u_grad=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_scale_invariance_property(strategy, method, dtype, last_layer, with_features, backend, solver, u_feat,
                                   u_grad, seed):
    rng = np.random.default_rng(seed)
    nb, n, d = 2, 32, 70
    F = rng.standard_normal((nb, n, d)).astype(dtype)
    if last_layer:
        E = rng.standard_normal((nb, n, 3)).astype(dtype)
        H = rng.standard_normal((nb, n, 5)).astype(dtype)
        scaled, grads = E, LastLayerGrads(E, H)  # scaling the gradients by c scales the residuals only

        def with_scale(e):
            return LastLayerGrads(np.ldexp(E, e), H)
    else:
        G = rng.standard_normal((nb, n, 40)).astype(dtype)  # p >= max_size: no GradientRankWarning
        scaled, grads = G, G

        def with_scale(e):
            return np.ldexp(G, e)
    kw = dict(strategy=strategy, fraction=0.3, tol=0.5)
    if strategy == "graft":
        kw.update(method=method, solver=solver, weight_reg=0.0 if seed % 2 else 0.01)
    feats = F if with_features else None
    base = _run(backend, feats, grads, **kw)
    e_grad = _pick(*_exponent_range(scaled), u_grad)
    _same(base, _run(backend, feats, with_scale(e_grad), **kw), nb * n)
    if with_features:
        e_feat = _pick(*_exponent_range(F), u_feat)
        _same(base, _run(backend, np.ldexp(F, e_feat), grads, **kw), nb * n)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scale_invariance_at_the_extremes(backend, dtype):
    """Every strategy at the largest and smallest exact power-of-two scales of features and gradients."""
    rng = np.random.default_rng(3)
    F = rng.standard_normal((2, 30, 50)).astype(dtype)
    E = rng.standard_normal((2, 30, 4)).astype(dtype)
    H = rng.standard_normal((2, 30, 6)).astype(dtype)
    for strategy in ("graft", "random", "craig", "gradmatch"):
        for features in (F, None):
            base = _run(backend, features, LastLayerGrads(E, H), strategy=strategy, tol=0.5)
            for e in _exponent_range(E):
                _same(base, _run(backend, features, LastLayerGrads(np.ldexp(E, e), H), strategy=strategy, tol=0.5),
                      60)
            if features is not None:
                for e in _exponent_range(F):
                    _same(base, _run(backend, np.ldexp(F, e), LastLayerGrads(E, H), strategy=strategy, tol=0.5), 60)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("solver", ["exact", "randomized"])
@pytest.mark.parametrize("shape", [(64, 150), (64, 20)])  # wide (the Gram route) and tall (F Omega)
@pytest.mark.parametrize("dtype,exponents", [(np.float32, (-16, -5, 9, 16)), (np.float64, (-128, -37, 61, 128))])
def test_scale_invariance_where_nothing_is_copied(backend, solver, shape, dtype, exponents):
    """Scales the features go through as they are (no rescaled copy): the same bits by homogeneity alone."""
    rng = np.random.default_rng(9)
    F = rng.standard_normal((2,) + shape).astype(dtype)
    G = rng.standard_normal((2, shape[0], 30)).astype(dtype)
    kw = dict(fraction=0.2, tol=0.5, solver=solver, method="volume")
    base = _run(backend, F, G, **kw)
    for e in exponents:
        _same(base, _run(backend, np.ldexp(F, e), G, **kw), 2 * shape[0])
        _same(base, _run(backend, F, np.ldexp(G, e), **kw), 2 * shape[0])


def test_no_copy_when_the_scale_is_safe():
    from graft_array._numba.checks import batch_abs_max
    from graft_array.strategies.graft import _unit_features

    F = np.random.default_rng(1).standard_normal((3, 10, 7))
    for X in (F, F * 2.0**100, F * 2.0**-100):
        amax = batch_abs_max(X)
        assert_array_equal(amax, np.abs(X).max(axis=(1, 2)))
        assert _unit_features(np, X, amax, None) is X
    big = F * np.array([1.0, 2.0**300, 1.0])[:, None, None]
    out = _unit_features(np, big, batch_abs_max(big), None)
    assert out is not big and np.all(np.abs(out).max(axis=(1, 2)) < 1) and np.all(np.abs(out).max(axis=(1, 2)) >= 0.5)
    out = _unit_features(np, big, batch_abs_max(big, 3), 3)  # [E | H]: the residuals E only
    assert_array_equal(out[..., 3:], big[..., 3:])
    F32 = F.astype(np.float32)
    F32[1, 2, 3] = np.nan
    assert np.isnan(batch_abs_max(F32)[1]) and np.all(np.isfinite(batch_abs_max(F32)[[0, 2]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_abs_max_twins(dtype):
    """The Numba pass over the bits and the generic one agree, NaN and infinity included, and on E of [E | H]."""
    from graft_array._agnostic import criterion
    from graft_array._numba.checks import batch_abs_max

    X = np.random.default_rng(2).standard_normal((5, 9, 6)).astype(dtype)
    X[1, 2, 3], X[2, 0, 0], X[3, 8, 5], X[4] = np.nan, -np.inf, -7.5, 0.0
    for cols in (None, 4, 6):
        assert_array_equal(batch_abs_max(X, cols), criterion.batch_abs_max(np, X, cols))
    assert_array_equal(batch_abs_max(X[:, :0]), np.zeros(5))


@pytest.mark.parametrize("dtype,e", [(np.float32, 128), (np.float64, 1024)])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("solver", ["exact", "randomized"])
def test_features_near_the_largest_float(dtype, e, backend, solver):
    """Features (and gradients) near the dtype's largest number (3e38, 1.7e308) select as at unit size.

    Their scale exponent is clamped so that 2^k is a normal number of the dtype
    (the unclamped 2^-128 in float32, 2^-1024 in float64, is subnormal).
    """
    rng = np.random.default_rng(12)
    U = rng.standard_normal((2, 64, 150))
    U = (U / (1.01 * np.abs(U).max(axis=(1, 2), keepdims=True))).astype(dtype)  # max |entry| just below 1
    G = rng.standard_normal((2, 64, 30)).astype(dtype)
    G = (G / (1.01 * np.abs(G).max(axis=(1, 2), keepdims=True))).astype(dtype)
    big, gbig = np.ldexp(U, e), np.ldexp(G, e)
    assert np.all(np.isfinite(big)) and np.abs(big).max() > (3e38 if dtype == np.float32 else 1.7e308)
    kw = dict(fraction=0.2, tol=0.5, solver=solver)
    base = _run(backend, U, G, **kw)
    _same(base, _run(backend, big, G, **kw), 128)
    _same(base, _run(backend, U, gbig, **kw), 128)
    _same(base, _run(backend, big, gbig, **kw), 128)


@pytest.mark.parametrize("last_layer", [False, True])
def test_criterion_twins_scale_every_batch_to_unit(last_layer):
    """Numba and generic Grams follow one rule: every batch scaled to max |entry| in [1/2, 1), always.

    Gradients scaled by 2^j are the same scaled rows, so (K, b, gg) are the same
    bits, also for a row 2^-520 below its batch's max (its products are subnormal
    at unit scale, but were normal in an unscaled batch of max 2^100).
    """
    from graft_array._agnostic import criterion
    from graft_array._numba import criterion as ncrit

    rng = np.random.default_rng(13)
    G = rng.standard_normal((3, 20, 7)) * np.array([2.0**100, 1.0, 2.0**-40])[:, None, None]
    G[0, 5] *= 2.0**-520
    H = rng.standard_normal((3, 20, 4))
    piv = np.stack([rng.permutation(20)[:8] for _ in range(3)]).astype(np.int64)

    def grams(X):
        amax = np.abs(X).max(axis=(1, 2))
        if last_layer:
            return (ncrit.gram_last_layer(X, H, piv), criterion.gram_last_layer(np, X, H, piv),
                    ncrit.gram_last_layer(X, H, piv, amax))
        return ncrit.gram_plain(X, piv), criterion.gram_plain(np, X, piv), ncrit.gram_plain(X, piv, amax)

    ref = grams(G)
    for a, b in zip(ref[0], ref[2]):  # the caller's maxima give the kernel's own scale
        assert_array_equal(a, b)
    for a, b in zip(ref[0], ref[1]):  # the twins: the same numbers, rounded in another order
        assert_allclose(a, b, rtol=1e-12, atol=0)
    assert np.abs(ref[0][0]).max() < 20  # unit scale: |K| <= p
    for j in (-300, -1, 1, 200, 900):
        for a, b in zip(ref, grams(np.ldexp(G, j))):
            for x, y in zip(a, b):
                assert_array_equal(x, y)
    strided = np.repeat(G, 2, axis=2)[:, :, ::2]  # not contiguous: the kernels' plain abs-max loop
    if not last_layer:
        for x, y in zip(ncrit.gram_plain(strided, piv), ref[0]):
            assert_array_equal(x, y)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_as_features_not_finite_raise(backend):
    """features=None with plain gradients: the one max |entry| pass (no separate isfinite) still finds NaN and inf."""
    G = np.random.default_rng(14).standard_normal((2, 30, 12))
    for bad in (np.nan, np.inf):
        G2 = G.copy()
        G2[1, 4, 7] = bad
        with pytest.raises(ValueError, match="'grads' to contain only finite values"):
            ga.select(None, G2, backend=backend)
        with pytest.raises(ValueError, match="'grads' to contain only finite values"):
            ga.select(None, G2, strategy="craig", backend=backend)


def test_per_batch_scales_are_independent():
    """Each batch is scaled on its own: batches of very different magnitudes select as they would alone."""
    rng = np.random.default_rng(11)
    F = rng.standard_normal((3, 40, 30))
    G = rng.standard_normal((3, 40, 25))
    base = _run("numba", F, G, tol=0.5, budget="batch")  # budget="call" weighs batches by their gradient norms
    scale = np.array([2.0**-900, 1.0, 2.0**900])[:, None, None]
    _same(base, _run("numba", F * scale[::-1], G * scale, tol=0.5, budget="batch"), 120)
    _same(base, _run("array_api", F * scale[::-1], G * scale, tol=0.5, budget="batch"), 120)


# --------------------------------------------------------------------------------------
# regressions: each defect of issue 10 (items 2, 3) and 11
# --------------------------------------------------------------------------------------
def _llg_batch(seed=8, n=40):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 100)), rng.standard_normal((n, 4)), rng.standard_normal((n, 6))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("c", [64.0, 2.0**20, 1e5])
def test_graft_weights_match_nnls_at_large_gradient_scales(backend, c):
    """weight_reg=0: the sum-constrained NNLS of the docstring's objective (scipy) at gradients x c.

    Before: the NNLS tolerance grew as c^4 against quantities of order c^2 (wrong weights
    from c = 64 on, uniform ones from 2^20 on).
    """
    F, E, H = _llg_batch()
    G = gt.last_layer_gradients(E, H) * c
    s = select_batch(F, LastLayerGrads(E * c, H), tol=0.3, weight_reg=0.0, solver="exact", backend=backend,
                  return_info=True)
    idx, w, m, _ = gt.reference_select(F, G, tol=0.3, weight_reg=0.0)
    assert_array_equal(np.asarray(s.indices), idx)
    assert_allclose(np.asarray(s.weights), w, rtol=1e-6, atol=1e-8)
    assert np.count_nonzero(w == 0) > 0  # the constraint w >= 0 is active: the iterative NNLS path ran


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("last_layer", [False, True])
@pytest.mark.parametrize(
    "strategy,c",
    [
        ("gradmatch", 2.0**22),  # its weights were all zero from x 2^22 on (the NNLS tolerance grew as c^4)
        ("craig", 1e160),  # it put the whole batch on one row (the Gram overflowed); no NumPy warning either
    ],
)
def test_baselines_at_large_gradient_scales(backend, last_layer, strategy, c):
    rng = np.random.default_rng(5)
    E, H = rng.standard_normal((2, 48, 4)), rng.standard_normal((2, 48, 5))
    G = np.stack([gt.last_layer_gradients(E[b], H[b]) for b in range(2)])

    def run(c):
        grads = LastLayerGrads(E * c, H) if last_layer else G * c
        return ga.select(np.zeros((2, 48, 1)), grads, strategy=strategy, fraction=0.25, backend=backend,
                         return_info=True, random_state=0)  # gradmatch's fill draws from the random stream

    one, big = run(1.0), run(c)
    assert np.count_nonzero(np.asarray(big.weights)) > 0
    assert_array_equal(np.asarray(big.indices), np.asarray(one.indices))
    assert_allclose(np.asarray(big.weights), np.asarray(one.weights), rtol=1e-9)
    assert_allclose(np.asarray(big.residuals), np.asarray(one.residuals), rtol=1e-9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("solver", ["exact", "randomized"])
@pytest.mark.parametrize("dtype,scale", [(np.float64, 1e300), (np.float64, 1e-300), (np.float32, 2.0**100)])
def test_features_at_extreme_scales(backend, solver, dtype, scale):
    """Features at 1e300 failed with 'the Gram matrix overflows ... pass float64'."""
    rng = np.random.default_rng(6)
    F = rng.standard_normal((3, 64, 150)).astype(dtype)
    G = rng.standard_normal((3, 64, 30))
    kw = dict(fraction=0.2, tol=0.5, solver=solver, random_state=0, backend=backend, return_info=True)
    one = ga.select(F, G, **kw)
    big = ga.select((F * dtype(scale)).astype(dtype), G, **kw)
    assert_array_equal(np.asarray(big.indices), np.asarray(one.indices))
    assert_allclose(np.asarray(big.weights), np.asarray(one.weights), rtol=1e-9)


def test_features_not_finite_still_raise():
    F = np.ones((2, 20, 8))
    F[1, 3, 2] = np.inf
    for backend in CPU_BACKENDS:
        with pytest.raises(ValueError, match="finite"):
            ga.select(F, backend=backend)


# --------------------------------------------------------------------------------------
# CRAIG: duplicate rows are exactly zero apart whatever the BLAS rounds (issue 10, item 11)
# --------------------------------------------------------------------------------------
def _duplicates_gram():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((5, 9))
    G = base[[0, 1, 2, 0, 3, 1, 4, 2, 0, 3, 4, 1]]  # duplicates of every row
    K = G @ G.T
    Kp = K.copy()
    for i in range(len(G)):  # a BLAS that rounds the off-diagonal products of equal rows otherwise: 1 ulp down
        for j in range(len(G)):
            if i != j and np.array_equal(G[i], G[j]):
                Kp[i, j] = np.nextafter(K[i, j], -np.inf)
    return G, K, Kp


def test_craig_duplicates_with_perturbed_gram_generic():
    from graft_array.strategies import facility as abase

    G, K, Kp = _duplicates_gram()
    assert not np.array_equal(K, Kp)
    for m in (2, 4, 6):
        ref_idx, ref_w = gt.reference_craig(G, m)
        order, w = abase.facility_location(np, Kp[None], m)
        assert_array_equal(order[0], ref_idx)
        assert_array_equal(w[0], ref_w)


def test_craig_duplicates_with_perturbed_gram_numba():
    from graft_array.strategies import facility as nbase

    G, K, Kp = _duplicates_gram()
    for m in (2, 4, 6):
        ref_idx, ref_w = gt.reference_craig(G, m)
        for lazy in (True, False):
            S = Kp.copy()
            nbase._similarities_nb(S)
            order, w = np.empty(m, dtype=np.int64), np.empty(m)
            nbase.facility_location_one_nb(S, m, lazy, order, w)
            assert_array_equal(order, ref_idx)
            assert_array_equal(w, ref_w)
