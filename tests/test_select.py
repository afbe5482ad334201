import functools
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads
from graft_array import testing as gt

from conftest import CPU_BACKENDS, readonly

#: the per-batch sizes of the size criterion (each batch's own budget), which these tests check
select_batch = functools.partial(ga.select, budget="batch")


def _batch(rng, n=64, d=100, C=4, h=6):
    F = rng.standard_normal((n, d))
    E = rng.standard_normal((n, C))
    H = rng.standard_normal((n, h))
    return F, E, H


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["deim", "volume"])
@pytest.mark.parametrize("tol", [0.5, 0.8, 0.95])
def test_select_matches_reference(rng, backend, method, tol):
    F, E, H = _batch(rng)
    G = gt.last_layer_gradients(E, H)
    s = select_batch(readonly(F), LastLayerGrads(readonly(E), readonly(H)), tol=tol, method=method,
                  solver="exact", backend=backend, return_info=True)
    idx, w, m, rho = gt.reference_select(F, G, tol=tol, method=method)
    assert int(s.sizes[0]) == m
    assert_array_equal(s.indices, idx)
    assert_allclose(s.weights, w, rtol=1e-7, atol=1e-9)
    assert_allclose(s.residuals[0], rho, rtol=1e-8, atol=1e-10)
    assert s.solver == "exact" and s.backend == backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_factorised_equals_materialised_gradients(rng, backend):
    F, E, H = _batch(rng)
    G = gt.last_layer_gradients(E, H)
    a = ga.select(F, LastLayerGrads(E, H), tol=0.7, backend=backend, return_info=True, random_state=0)
    b = ga.select(F, G, tol=0.7, backend=backend, return_info=True, random_state=0)
    assert_array_equal(a.indices, b.indices)
    assert_allclose(a.residuals, b.residuals, rtol=1e-9, atol=1e-12)
    assert_allclose(a.weights, b.weights, rtol=1e-7)


def test_chosen_size_is_minimal_and_weights_valid(rng):
    F = rng.standard_normal((6, 80, 50))
    E = rng.standard_normal((6, 80, 5))
    H = rng.standard_normal((6, 80, 8))
    s = select_batch(F, LastLayerGrads(E, H), fraction=0.3, tol=0.75, return_info=True)
    lo = int(np.floor(0.5 * 0.3 * 80))
    hi = int(np.ceil(1.5 * 0.3 * 80))
    start = 0
    for b in range(6):
        m = int(s.sizes[b])
        rho = s.residuals[b]
        assert lo <= m <= hi
        if m < hi:
            assert rho[m - 1] <= 0.75
        assert all(rho[j - 1] > 0.75 for j in range(lo, m))  # nothing smaller in the band qualifies
        idx = s.indices[start:start + m]
        w = s.weights[start:start + m]
        assert np.all((idx >= b * 80) & (idx < (b + 1) * 80))
        assert len(set(idx.tolist())) == m
        assert np.all(w >= 0) and w.sum() == pytest.approx(80)
        start += m
    assert start == len(s.indices)


def test_batched_equals_per_batch_and_offsets(rng):
    F = rng.standard_normal((5, 60, 40)).astype(np.float32)
    G = rng.standard_normal((5, 60, 30))
    s = select_batch(F, G, fraction=0.2, tol=0.9, return_info=True, random_state=0)
    assert s.solver == "randomized"  # one test matrix for all batches: batching does not matter
    off = np.array([1000, 0, 7, 300, 120])
    so = select_batch(F, G, fraction=0.2, tol=0.9, offsets=off, return_info=True, random_state=0)
    start = 0
    for b in range(5):
        one = select_batch(F[b], G[b], fraction=0.2, tol=0.9, return_info=True, random_state=0)
        m = int(s.sizes[b])
        assert m == int(one.sizes[0])
        assert_array_equal(s.indices[start:start + m], one.indices + b * 60)
        assert_array_equal(so.indices[start:start + m], one.indices + off[b])
        start += m


def test_features_only(rng):
    F = rng.standard_normal((3, 100, 30))
    s = ga.select(F, fraction=0.1, return_info=True)
    assert_array_equal(s.sizes, [10, 10, 10])
    assert np.isnan(s.residuals).all()
    assert_allclose(s.weights, 10.0)
    V = np.linalg.svd(F[1], full_matrices=False)[0][:, :10]
    assert_array_equal(s.indices[10:20] - 100, gt.reference_maxvol(V, 10)[0])


def test_randomized_solver_deterministic(rng):
    F = rng.standard_normal((2, 200, 300))
    a = ga.select(F, fraction=0.05, solver="randomized", random_state=1, return_info=True)
    b = ga.select(F, fraction=0.05, solver="randomized", random_state=1, return_info=True)
    assert a.solver == "randomized"
    assert_array_equal(a.indices, b.indices)
    # auto: randomized while 2 l <= min(n, d), l = r + max(8, r / 4): r = 80 gives l = 100, r = 81 l = 101
    assert ga.select(F, fraction=0.05, return_info=True).solver == "randomized"
    assert ga.select(F, fraction=0.4, return_info=True).solver == "randomized"
    assert ga.select(F, fraction=0.405, return_info=True).solver == "exact"
    assert ga.select(F, fraction=0.5, return_info=True).solver == "exact"


def test_randomized_close_to_exact_on_low_rank_data(rng):
    F = rng.standard_normal((150, 6)) @ rng.standard_normal((6, 400)) + 1e-6 * rng.standard_normal((150, 400))
    a = ga.select(F, fraction=0.04, solver="randomized", random_state=0, method="volume")
    b = ga.select(F, fraction=0.04, solver="exact", method="volume")
    assert_array_equal(a, b)


def test_torch_and_array_api_strict_agree(rng):
    torch = pytest.importorskip("torch")
    xs = pytest.importorskip("array_api_strict")
    F, E, H = _batch(rng)
    ref = ga.select(F, LastLayerGrads(E, H), tol=0.8, return_info=True, random_state=0)
    t = ga.select(torch.tensor(F, requires_grad=True), LastLayerGrads(torch.tensor(E), torch.tensor(H)), tol=0.8,
                  return_info=True, random_state=0)
    assert isinstance(t.indices, torch.Tensor) and t.indices.dtype == torch.int64
    assert_array_equal(t.indices.numpy(), ref.indices)
    assert_allclose(t.weights.numpy(), ref.weights)
    s = ga.select(xs.asarray(F), LastLayerGrads(xs.asarray(E), xs.asarray(H)), tol=0.8, return_info=True, random_state=0)
    assert s.backend == "array_api"
    assert_array_equal(np.asarray(s.indices), ref.indices)
    assert_allclose(np.asarray(s.weights), ref.weights, rtol=1e-8)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tiny_and_degenerate_batches(backend, rng):
    one = ga.select(np.ones((1, 3)), np.ones((1, 2)), backend=backend, return_info=True)
    assert_array_equal(one.indices, [0])
    assert_allclose(one.weights, [1.0])
    two = ga.select(rng.standard_normal((2, 3)), fraction=0.01, backend=backend)
    assert two.shape == (1,)
    full = ga.select(rng.standard_normal((5, 3)), fraction=1.0, backend=backend)
    assert sorted(full.tolist()) == [0, 1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ga.RankDeficiencyWarning)
        const = ga.select(np.ones((20, 7)), rng.standard_normal((20, 9)), backend=backend, return_info=True)
        dup = ga.select(np.repeat(rng.standard_normal((4, 7)), 5, axis=0), fraction=0.4, backend=backend)
    assert len(set(const.indices.tolist())) == len(const.indices)
    assert len(set(dup.tolist())) == 8


def test_plain_logit_gradients_warn(rng):
    F = rng.standard_normal((128, 50))
    logits_grad = rng.standard_normal((128, 10))
    with pytest.warns(ga.GradientRankWarning, match=r"10 column\(s\) < max_size=48"):
        ga.select(F, logits_grad)


def test_inputs_not_modified(rng):
    F, E, H = _batch(rng)
    copies = [a.copy() for a in (F, E, H)]
    ga.select(F, LastLayerGrads(E, H), solver="randomized", random_state=0)
    for a, c in zip((F, E, H), copies):
        assert_array_equal(a, c)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((np.ones(5),), {}, ValueError, r"'features' of shape \(n, d\) or \(batch, n, d\)"),
        ((np.ones((4, 3)), np.ones((5, 2))), {}, ValueError, r"'grads' to have one row per sample .* \(4,\)"),
        ((np.ones((4, 3)), [1, 2]), {}, TypeError, r"'grads' to be None, an array"),
        ((np.ones((4, 3)),), {"fraction": 0.0}, ValueError, r"'fraction' parameter of select must be a finite float > 0\.0"),
        ((np.ones((4, 3)),), {"tol": 2.0}, ValueError, r"'tol' parameter of select"),
        ((np.ones((4, 3)),), {"min_size": 3, "max_size": 2}, ValueError, r"min_size=3, max_size=2"),
        ((np.ones((4, 3)),), {"solver": "svd"}, ValueError, r"'solver' parameter of select must be one of"),
        ((np.ones((4, 3)),), {"random_state": "x"}, TypeError, r"'random_state' parameter"),
        ((np.ones((2, 4, 3)),), {"offsets": [1, 2, 3]}, ValueError, r"'offsets' parameter .* shape \(2,\)"),
        ((np.full((4, 3), np.nan),), {}, ValueError, r"'features' to contain only finite values"),
        ((np.ones((4, 3)),), {"weight_reg": -1.0}, ValueError, r"'weight_reg' parameter of select must be a finite float >= 0\.0"),
        ((np.ones((4, 3)),), {"min_size": 0}, ValueError, r"'min_size' parameter of select"),
    ],
)
def test_select_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ga.select(*args, **kwargs)


# --------------------------------------------------------------------------------------
# ragged batches: a list of arrays, or a padded stack with a mask
# --------------------------------------------------------------------------------------
def _ragged(rng, sizes, d=30, C=4, h=5):
    F = [rng.standard_normal((n, d)) for n in sizes]
    E = [rng.standard_normal((n, C)) for n in sizes]
    H = [rng.standard_normal((n, h)) for n in sizes]
    return F, E, H


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_list_of_equal_batches_equals_stack(rng, backend):
    F, E, H = _ragged(rng, [40, 40, 40])
    a = ga.select(np.stack(F), LastLayerGrads(np.stack(E), np.stack(H)), tol=0.6, random_state=3, backend=backend,
                  return_info=True)
    b = ga.select(F, LastLayerGrads(E, H), tol=0.6, random_state=3, backend=backend, return_info=True)
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.sizes, b.sizes)
    assert_allclose(a.weights, b.weights)
    assert_allclose(a.residuals, b.residuals)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ragged_last_batch(rng, backend):
    F, E, H = _ragged(rng, [40, 40, 25])
    s = select_batch(F, LastLayerGrads(E, H), tol=0.6, random_state=3, backend=backend, return_info=True)
    assert s.residuals.shape == (3, 15)  # ceil(1.5 * 0.25 * 40) = 15 sizes for the full batches
    assert np.isnan(s.residuals[2, 10:]).all() and not np.isnan(s.residuals[2, :10]).any()
    start = 0
    for b, base in enumerate([0, 40, 80]):
        one = select_batch(F[b], LastLayerGrads(E[b], H[b]), tol=0.6, random_state=3, backend=backend, return_info=True)
        m = int(s.sizes[b])
        assert m == int(one.sizes[0])
        assert_array_equal(s.indices[start:start + m], one.indices + base)
        assert_allclose(s.weights[start:start + m], one.weights)
        start += m
    assert start == len(s.indices)
    off = select_batch(F, LastLayerGrads(E, H), tol=0.6, random_state=3, backend=backend, offsets=[500, 0, 100])
    shift = np.repeat([500, -40, 20], np.asarray(s.sizes))
    assert_array_equal(off, s.indices + shift)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mask_equals_list_of_compacted_batches(rng, backend):
    F = rng.standard_normal((3, 40, 30))
    E = rng.standard_normal((3, 40, 4))
    H = rng.standard_normal((3, 40, 5))
    mask = rng.random((3, 40)) < 0.7
    s = ga.select(readonly(F), LastLayerGrads(E, H), mask=readonly(mask), tol=0.6, random_state=3, backend=backend,
                  return_info=True)
    rows = [np.flatnonzero(mask[b]) for b in range(3)]
    lst = ga.select([F[b][rows[b]] for b in range(3)], LastLayerGrads([E[b][rows[b]] for b in range(3)],
                    [H[b][rows[b]] for b in range(3)]), tol=0.6, random_state=3, backend=backend, return_info=True)
    assert_array_equal(s.sizes, lst.sizes)
    start = np.cumsum([0] + [len(r) for r in rows[:-1]])
    expect = []
    for b in range(3):
        m = int(lst.sizes[b])
        j0 = int(np.sum(lst.sizes[:b]))
        expect.extend(rows[b][lst.indices[j0:j0 + m] - start[b]] + 40 * b)
    assert_array_equal(s.indices, expect)
    assert mask.reshape(-1)[s.indices].all()


def test_ragged_plain_gradients_warn_and_match(rng):
    F = [rng.standard_normal((40, 12)), rng.standard_normal((30, 12))]
    G = [rng.standard_normal((40, 5)), rng.standard_normal((30, 5))]
    with pytest.warns(ga.GradientRankWarning, match=r"5 column\(s\)"):
        s = select_batch(F, G, random_state=0, return_info=True)
    with pytest.warns(ga.GradientRankWarning):
        one = select_batch(F[1], G[1], random_state=0)
    assert_array_equal(s.indices[int(s.sizes[0]):], one + 40)


def test_mask_with_an_empty_batch(rng):
    F = rng.standard_normal((2, 30, 10))
    mask = np.ones((2, 30), dtype=bool)
    mask[1] = False
    s = ga.select(F, fraction=0.2, mask=mask, return_info=True)
    assert_array_equal(s.sizes, [6, 0])
    assert np.isnan(s.residuals[1]).all()
    assert np.all(s.indices < 30)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(features=[np.ones((4, 3)), np.ones((4, 2))]), ValueError, r"features\[1\]"),
        (dict(features=[]), ValueError, r"at least one batch"),
        (dict(features=[np.ones((4, 3)), [1.0]]), TypeError, r"'features\[1\]' to be an array"),
        (dict(features=[np.ones((4, 3))], grads=[np.ones((4, 2)), np.ones((4, 2))]), TypeError,
         r"'grads' to be a list of 1 arrays"),
        (dict(features=[np.ones((4, 3))], grads=[np.ones((5, 2))]), ValueError, r"'grads\[0\]' to have one row"),
        (dict(features=np.ones((2, 4, 3)), mask=np.ones((2, 5), bool)), ValueError,
         r"'mask' parameter of select must be a bool array of shape \(2, 4\)"),
        (dict(features=np.ones((2, 4, 3)), mask=np.ones((2, 4))), ValueError, r"dtype float64"),
        (dict(features=[np.ones((4, 3))], mask=np.ones(4, bool)), TypeError, r"'mask' only with a padded array"),
        (dict(features=[np.ones((4, 3)), np.full((4, 3), np.inf)]), ValueError, r"finite"),
    ],
)
def test_ragged_errors(kwargs, exc, match):
    features = kwargs.pop("features")
    with pytest.raises(exc, match=match):
        ga.select(features, **kwargs)


# --------------------------------------------------------------------------------------
# the compiled path equals the generic one, whatever the threading
# --------------------------------------------------------------------------------------
def test_numba_equals_generic_randomized_and_chunking(rng):
    numba = pytest.importorskip("numba")
    F = rng.standard_normal((7, 64, 200)).astype(np.float32)
    E = rng.standard_normal((7, 64, 5))
    H = rng.standard_normal((7, 64, 8))
    kw = dict(fraction=0.2, tol=0.5, solver="randomized", random_state=11, return_info=True)
    a = ga.select(F, LastLayerGrads(E, H), backend="numba", **kw)
    b = ga.select(F, LastLayerGrads(E, H), backend="array_api", **kw)
    assert_array_equal(a.indices, b.indices)
    assert_allclose(a.weights, b.weights, rtol=1e-6)
    assert_allclose(a.residuals, b.residuals, rtol=1e-7, atol=1e-10)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        c = ga.select(F, LastLayerGrads(E, H), backend="numba", **kw)
    finally:
        numba.set_num_threads(before)
    assert_array_equal(a.indices, c.indices)
    assert_allclose(a.weights, c.weights, rtol=1e-12)


def test_rank_deficient_gradients_weights(rng):
    """Gradients of rank 3 for 12+ pivots: Lawson-Hanson skips dependent columns instead of dividing by ~0."""
    F = rng.standard_normal((60, 40))
    G = rng.standard_normal((60, 3)) @ rng.standard_normal((3, 40))
    out = []
    for backend in CPU_BACKENDS:
        s = ga.select(F, G, fraction=0.3, tol=1e-6, min_size=12, weight_reg=0.0, random_state=0, backend=backend,
                      return_info=True)
        assert int(s.sizes[0]) >= 12
        assert np.isfinite(s.weights).all() and np.all(s.weights >= 0)
        assert s.weights.sum() == pytest.approx(60)
        # the 3-dim span plus the direction of the sum penalty: a basis of 4 columns at most
        assert np.count_nonzero(s.weights) <= 4
        out.append(s)
        reg = ga.select(F, G, fraction=0.3, tol=1e-6, min_size=12, random_state=0, backend=backend,
                        return_info=True)
        assert np.all(reg.weights > 0) and reg.weights.sum() == pytest.approx(60)  # the pull makes K' definite
        out.append(reg)
    assert_array_equal(out[0].indices, out[2].indices)
    assert_allclose(out[0].weights, out[2].weights, rtol=1e-8)
    assert_allclose(out[1].weights, out[3].weights, rtol=1e-8)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("weight_reg", [0.0, 0.01, 1.0])
def test_weights_match_reference_for_any_pull(rng, backend, weight_reg):
    F, E, H = _batch(rng)
    G = gt.last_layer_gradients(E, H)
    s = select_batch(F, LastLayerGrads(E, H), tol=0.8, weight_reg=weight_reg, solver="exact", backend=backend,
                  return_info=True)
    idx, w, m, _ = gt.reference_select(F, G, tol=0.8, weight_reg=weight_reg)
    assert_array_equal(np.asarray(s.indices), idx)
    assert_allclose(np.asarray(s.weights), w, rtol=1e-6, atol=1e-8)


def test_weight_pull_trades_fit_for_spread(rng):
    """Late-training gradients (tiny batch gradient, large per-sample ones): the pull keeps weights spread.

    The fit residual can only grow with the pull, never below the projection residual rho(m);
    a huge pull gives uniform weights n / m.
    """
    n, p = 128, 80
    G = rng.standard_normal((n, p))
    G -= G.mean(axis=0) * 0.98  # the batch gradient is 2% of what independent rows would sum to
    F = rng.standard_normal((n, 60))
    fits, spread = [], []
    for reg in (0.0, 0.01, 1.0, 1e8):
        s = ga.select(F, G, fraction=0.25, tol=0.0, weight_reg=reg, random_state=0, return_info=True)
        m = int(s.sizes[0])
        w = np.asarray(s.weights)
        g = G.sum(axis=0)
        fits.append(np.linalg.norm(G[s.indices].T @ w - g) / np.linalg.norm(g))
        spread.append(w.max() / n)
        assert fits[-1] >= s.residuals[0, m - 1] - 1e-9
        assert w.sum() == pytest.approx(n) and np.all(w >= 0)
    assert fits[0] <= fits[1] + 1e-9 <= fits[2] + 2e-9
    assert spread[1] < spread[0]
    assert_allclose(w, n / m, rtol=1e-5)  # reg = 1e8: uniform


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("solver,shape", [("exact", (64, 100)), ("exact", (64, 20)), ("randomized", (64, 100)),
                                          ("randomized", (64, 40))])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_features_found_by_the_first_product(rng, backend, solver, shape, bad):
    """No separate pass over the features: a NaN / infinity anywhere reaches the Gram's diagonal (or F Omega)."""
    F = rng.standard_normal((3,) + shape).astype(np.float32)
    F[2, 17, 5] = bad
    with pytest.raises(ValueError, match=r"'features' to contain only finite values"):
        ga.select(readonly(F), fraction=0.1, solver=solver, random_state=0, backend=backend)


def test_features_whose_gram_would_overflow_are_scaled(rng):
    F = rng.standard_normal((64, 100)).astype(np.float32)
    F[3, :] = 1e30  # finite, but its squares overflow float32: each batch is scaled by a power of two first
    idx = ga.select(F, fraction=0.1, solver="randomized", random_state=0)
    assert len(idx) == 6 and idx[0] == 3
    assert_array_equal(idx, ga.select(F * np.float32(2.0**-100), fraction=0.1, solver="randomized", random_state=0))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_closed_band_is_the_baselines_budget(rng, backend):
    F, E, H = _batch(rng, n=67)
    for f in (0.1, 0.3, 0.5):
        s = ga.select(F, LastLayerGrads(E, H), fraction=f, band=0.0, tol=0.99, solver="exact", backend=backend,
                      return_info=True)
        assert int(s.sizes[0]) == round(f * 67)
        idx, w, m, _ = gt.reference_select(F, gt.last_layer_gradients(E, H), fraction=f, band=0.0, tol=0.99)
        assert m == round(f * 67)
        assert_array_equal(np.asarray(s.indices), idx)


def test_sizes_above_n_are_capped(rng):
    F, E, H = _batch(rng, n=20)
    s = ga.select(F, LastLayerGrads(E, H), min_size=30, max_size=40, random_state=0, return_info=True)
    assert int(s.sizes[0]) == 20 and sorted(s.indices.tolist()) == list(range(20))
    lst = ga.select([F, F[:8]], LastLayerGrads([E, E[:8]], [H, H[:8]]), min_size=12, random_state=0,
                    return_info=True)
    assert int(lst.sizes[1]) == 8 and int(lst.sizes[0]) >= 12


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(
    nb=st.integers(1, 3), n=st.integers(1, 40), d=st.integers(1, 30), C=st.integers(1, 4),
    fraction=st.floats(0.05, 1.0), tol=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
)
def test_select_properties(nb, n, d, C, fraction, tol, seed):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((nb, n, d))
    E = rng.standard_normal((nb, n, C))
    H = rng.standard_normal((nb, n, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ga.RankDeficiencyWarning)
        s = ga.select(F, LastLayerGrads(E, H), fraction=fraction, tol=tol, random_state=seed, return_info=True)
    sizes = np.asarray(s.sizes)
    assert len(s.indices) == sizes.sum() == len(s.weights)
    start = 0
    for b in range(nb):
        m = int(sizes[b])
        idx = s.indices[start:start + m]
        assert 1 <= m <= n
        assert len(set(idx.tolist())) == m and np.all((idx >= b * n) & (idx < (b + 1) * n))
        w = s.weights[start:start + m]
        assert np.all(w >= 0) and w.sum() == pytest.approx(n)
        rho = s.residuals[b][:m]
        assert np.all((rho >= 0) & (rho <= 1 + 1e-12))
        assert np.all(np.diff(rho) <= 1e-12)  # nested spans: the residual never grows
        start += m


def test_small_calls_run_serial_and_restore_thread_counts(rng):
    """A small call runs Numba and BLAS on one thread and puts both counts back, also after an error."""
    numba = pytest.importorskip("numba")
    from threadpoolctl import threadpool_info

    from graft_array import _parallel

    def blas_threads():  # NumPy's BLAS: the one our small LAPACK calls go through
        return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas" and "numpy" in d["filepath"]]

    before, blas_before = numba.get_num_threads(), blas_threads()
    F, E, H = _batch(rng, n=64)
    seen = []
    original = _parallel.threads_for.__enter__

    def spy(self):
        out = original(self)
        seen.append((numba.get_num_threads(), blas_threads()))
        return out

    _parallel.threads_for.__enter__ = spy
    try:
        ga.select(F, LastLayerGrads(E, H), random_state=0)
        with pytest.raises(ValueError, match="finite"):
            ga.select(np.full((64, 100), np.nan), random_state=0)
    finally:
        _parallel.threads_for.__enter__ = original
    assert seen and all(t == 1 for t, _ in seen)
    if before > 1:
        assert all(set(b) == {1} for _, b in seen)
    assert numba.get_num_threads() == before and blas_threads() == blas_before
    big = _parallel.threads_for(_parallel.SERIAL_ROWS + 1)
    with big:
        assert numba.get_num_threads() == before


# --------------------------------------------------------------------------- features=None: select on the gradients


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("solver", ["exact", "randomized"])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_gradient_features_equal_materialised_and_reference(rng, backend, solver, fraction):
    B, n, C, h = 3, 64, 5, 12
    E = rng.standard_normal((B, n, C))
    H = rng.standard_normal((B, n, h))
    G = np.stack([gt.last_layer_gradients(E[b], H[b]) for b in range(B)])  # (B, n, C (h + 1))
    kw = dict(fraction=fraction, tol=0.5, solver=solver, backend=backend, random_state=0, return_info=True)
    a = select_batch(None, LastLayerGrads(readonly(E), readonly(H)), **kw)  # the factorised Gram
    b = select_batch(G, LastLayerGrads(E, H), **kw)  # the same gradients, materialised, as features
    c = select_batch(None, G, **kw)  # plain gradients stand in for the features
    assert a.solver == solver and a.rank == round(fraction * n)
    for other in (b, c):
        assert_array_equal(a.indices, other.indices)
        assert_array_equal(a.sizes, other.sizes)
        assert_allclose(a.weights, other.weights, rtol=1e-6, atol=1e-8)
    if solver == "exact":
        start = 0
        for k in range(B):
            idx, w, m, rho = gt.reference_select(G[k], G[k], fraction=fraction, tol=0.5)
            assert int(a.sizes[k]) == m
            assert_array_equal(a.indices[start:start + m] - k * n, idx)
            assert_allclose(a.weights[start:start + m], w, rtol=1e-6, atol=1e-8)
            start += m


def test_gradient_features_width_sets_rank_and_solver(rng):
    # C (h + 1) = 2 * 4 = 8 columns: r = min(round(0.5 * 40), 40, 8) = 8
    E, H = rng.standard_normal((40, 2)), rng.standard_normal((40, 3))
    s = ga.select(None, LastLayerGrads(E, H), fraction=0.5, return_info=True, random_state=0)
    assert s.rank == 8 and s.solver == "exact"
    G = gt.last_layer_gradients(E, H)
    assert_array_equal(s.indices, ga.select(G, LastLayerGrads(E, H), fraction=0.5, random_state=0))


def test_gradient_features_ragged_and_other_namespaces(rng):
    torch = pytest.importorskip("torch")
    xs = pytest.importorskip("array_api_strict")
    E = [rng.standard_normal((50, 4)), rng.standard_normal((23, 4))]
    H = [rng.standard_normal((50, 7)), rng.standard_normal((23, 7))]
    s = select_batch(None, LastLayerGrads(E, H), fraction=0.3, tol=0.6, return_info=True, random_state=0)
    one = select_batch(None, LastLayerGrads(E[0], H[0]), fraction=0.3, tol=0.6, random_state=0)
    two = select_batch(None, LastLayerGrads(E[1], H[1]), fraction=0.3, tol=0.6, random_state=0)
    assert_array_equal(s.indices, np.concatenate([one, two + 50]))
    ref = select_batch(None, LastLayerGrads(E[0], H[0]), fraction=0.3, solver="exact", return_info=True)
    t = select_batch(None, LastLayerGrads(torch.tensor(E[0]), torch.tensor(H[0], requires_grad=True)), fraction=0.3,
                  solver="exact", return_info=True)
    assert isinstance(t.indices, torch.Tensor)
    assert_array_equal(t.indices.numpy(), ref.indices)
    a = select_batch(None, LastLayerGrads(xs.asarray(E[0]), xs.asarray(H[0])), fraction=0.3, solver="exact",
                  return_info=True)
    assert a.backend == "array_api"
    assert_array_equal(np.asarray(a.indices), ref.indices)
    assert_allclose(np.asarray(a.weights), ref.weights, rtol=1e-8)


def test_gradient_features_bad_input(rng):
    E, H = rng.standard_normal((30, 3)), rng.standard_normal((30, 5))
    with pytest.raises(ValueError, match="needs 'features' or 'grads'.*Got features=None and grads=None"):
        ga.select(None)
    with pytest.raises(ValueError, match=r"'grads.embeddings' with one row per row of 'grads.residuals'.*\(29, 5\)"):
        ga.select(None, LastLayerGrads(E, H[:29]))
    with pytest.raises(ValueError, match="'grads.embeddings' with a real floating dtype.*int64"):
        ga.select(None, LastLayerGrads(E, H.astype(np.int64)))
    with pytest.raises(TypeError, match=r"'grads\[1\]' to be an array"):
        ga.select(None, [E, "x"])
    with pytest.raises(TypeError, match="two non-empty lists of the same length"):
        ga.select(None, LastLayerGrads([E], [H, H]))
    with pytest.raises(ValueError, match=r"same C; got \[2, 3\]"):
        ga.select(None, LastLayerGrads([E, E[:, :2]], [H, H]))
    with pytest.raises(ValueError, match="'grads' to contain only finite values; got NaN"):
        ga.select(None, np.where(np.arange(30)[:, None] == 3, np.nan, E))
