import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads
from graft_array import testing as gt

from conftest import CPU_BACKENDS, readonly


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
    s = ga.select(readonly(F), LastLayerGrads(readonly(E), readonly(H)), tol=tol, method=method,
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
    a = ga.select(F, LastLayerGrads(E, H), tol=0.7, backend=backend, return_info=True)
    b = ga.select(F, G, tol=0.7, backend=backend, return_info=True)
    assert_array_equal(a.indices, b.indices)
    assert_allclose(a.residuals, b.residuals, rtol=1e-9, atol=1e-12)
    assert_allclose(a.weights, b.weights, rtol=1e-7)


def test_chosen_size_is_minimal_and_weights_valid(rng):
    F = rng.standard_normal((6, 80, 50))
    E = rng.standard_normal((6, 80, 5))
    H = rng.standard_normal((6, 80, 8))
    s = ga.select(F, LastLayerGrads(E, H), fraction=0.3, tol=0.75, return_info=True)
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
    s = ga.select(F, G, fraction=0.2, tol=0.9, return_info=True)
    off = np.array([1000, 0, 7, 300, 120])
    so = ga.select(F, G, fraction=0.2, tol=0.9, offsets=off, return_info=True)
    start = 0
    for b in range(5):
        one = ga.select(F[b], G[b], fraction=0.2, tol=0.9, return_info=True)
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
    assert ga.select(F, fraction=0.05, return_info=True).solver == "randomized"  # 4 r <= min(n, d)
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
    ref = ga.select(F, LastLayerGrads(E, H), tol=0.8, return_info=True)
    t = ga.select(torch.tensor(F, requires_grad=True), LastLayerGrads(torch.tensor(E), torch.tensor(H)), tol=0.8,
                  return_info=True)
    assert isinstance(t.indices, torch.Tensor) and t.indices.dtype == torch.int64
    assert_array_equal(t.indices.numpy(), ref.indices)
    assert_allclose(t.weights.numpy(), ref.weights)
    s = ga.select(xs.asarray(F), LastLayerGrads(xs.asarray(E), xs.asarray(H)), tol=0.8, return_info=True)
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
    ],
)
def test_select_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ga.select(*args, **kwargs)
