"""fraction is the budget (select's ``budget``), and class-balanced selection (``labels``)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads
from graft_array import testing as gt

from conftest import CPU_BACKENDS


def _stack(rng, nb=6, n=60, d=20, C=4, h=5, spread=True):
    F = rng.standard_normal((nb, n, d))
    E = rng.standard_normal((nb, n, C))
    if spread:  # batches whose gradients differ in size and in how fast their residual curves fall
        E *= np.geomspace(0.2, 5.0, nb)[:, None, None]
        E[::2, :, 1:] *= 0.05
    H = rng.standard_normal((nb, n, h))
    return F, E, H


def _band(n, fraction, band=0.5):
    c = fraction * n
    return max(1, math.floor((1 - band) * c)), min(n, math.ceil((1 + band) * c))


# --------------------------------------------------------------------------------------
# budget="call"
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fraction,tol", [(0.1, 0.5), (0.25, 0.2), (0.25, 0.9), (0.4, 0.05)])
def test_call_budget_matches_reference_allocation(rng, backend, fraction, tol):
    F, E, H = _stack(rng)
    nb, n = F.shape[:2]
    kw = dict(fraction=fraction, tol=tol, random_state=1, backend=backend, return_info=True)
    per = ga.select(F, LastLayerGrads(E, H), budget="batch", **kw)
    call = ga.select(F, LastLayerGrads(E, H), **kw)
    lo, hi = _band(n, fraction)
    norms = [np.linalg.norm(gt.last_layer_gradients(E[b], H[b]).sum(axis=0)) for b in range(nb)]
    want = gt.reference_budget_sizes([per.residuals[b, :hi] for b in range(nb)], norms, [lo] * nb, [hi] * nb,
                                     per.sizes, round(fraction * nb * n))
    assert_array_equal(call.sizes, want)
    assert int(np.sum(call.sizes)) == round(fraction * nb * n)
    assert_allclose(call.residuals, per.residuals)  # same pivots, same curves: only the sizes move
    start = 0
    for b in range(nb):  # each batch: a prefix of its pivot order, its weights the fit at its new size
        m = int(call.sizes[b])
        fixed = ga.select(F[b], LastLayerGrads(E[b], H[b]), min_size=m, max_size=m, fraction=fraction,
                          random_state=1, backend=backend, return_info=True)
        assert_array_equal(call.indices[start:start + m], fixed.indices + b * n)
        assert_allclose(call.weights[start:start + m], fixed.weights, rtol=1e-8)
        assert_allclose(call.weights[start:start + m].sum(), n)
        start += m


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.floats(0.05, 0.9), tol=st.floats(0.0, 1.0),
       lengths=st.lists(st.integers(1, 50), min_size=1, max_size=6), band=st.sampled_from([0.2, 0.5, 0.9]))
def test_call_budget_is_round_fraction_n_within_the_band(seed, fraction, tol, lengths, band):
    rng = np.random.default_rng(seed)
    F = [rng.standard_normal((k, 8)) for k in lengths]
    G = [rng.standard_normal((k, 64)) * rng.uniform(0.1, 10) for k in lengths]
    s = ga.select(F, G, fraction=fraction, tol=tol, band=band, random_state=seed, return_info=True)
    total = round(fraction * sum(lengths))
    bands = [_band(k, fraction, band) for k in lengths]
    lo, hi = sum(min(a, k) for (a, _), k in zip(bands, lengths)), sum(b for _, b in bands)
    assert int(np.sum(s.sizes)) == min(max(total, lo, 1), hi)
    for (a, b), k, m in zip(bands, lengths, s.sizes):
        assert min(a, k) <= m <= b
    assert len(np.unique(s.indices)) == len(s.indices)
    for w, k, m in zip(np.split(s.weights, np.cumsum(s.sizes)[:-1]), lengths, s.sizes):
        assert_allclose(w.sum(), k) and (w >= 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_call_budget_is_invariant_under_a_common_gradient_scale(rng, backend):
    F, E, H = _stack(rng)
    a = ga.select(F, LastLayerGrads(E, H), fraction=0.2, tol=0.3, random_state=0, backend=backend, return_info=True)
    for c in (2.0**-40, 2.0**30):
        b = ga.select(F, LastLayerGrads(E * c, H), fraction=0.2, tol=0.3, random_state=0, backend=backend,
                      return_info=True)
        assert_array_equal(a.indices, b.indices)
        assert_array_equal(a.weights, b.weights)


def test_int_budget_and_twins_agree(rng):
    F, E, H = _stack(rng)
    out = [ga.select(F, LastLayerGrads(E, H), fraction=0.2, budget=50, tol=0.3, random_state=0, backend=be,
                     return_info=True) for be in CPU_BACKENDS]
    assert int(np.sum(out[0].sizes)) == 50
    assert_array_equal(out[0].indices, out[1].indices)
    assert_allclose(out[0].weights, out[1].weights, rtol=1e-7)


def test_budget_leaves_baselines_and_no_gradients_per_batch(rng):
    F, E, H = _stack(rng, nb=3, n=50)
    for strategy in ("random", "craig"):
        s = ga.select(F, LastLayerGrads(E, H), strategy=strategy, fraction=0.13, random_state=0, return_info=True)
        assert_array_equal(s.sizes, [round(0.13 * 50)] * 3)
    s = ga.select(F, None, fraction=0.13, random_state=0, return_info=True)
    assert_array_equal(s.sizes, [round(0.13 * 50)] * 3)


@pytest.mark.parametrize(
    "budget,err,msg",
    [("epoch", ValueError, r"The 'budget' parameter of select must be 'call', 'batch' or an int >= 0"),
     (1.5, TypeError, r"'budget' parameter of select must be 'call', 'batch' or an int"),
     (-1, ValueError, r"The 'budget' parameter of select must be an int >= 0\. Got -1 instead\."),
     (True, TypeError, r"'budget' parameter of select must be 'call', 'batch' or an int")],
)
def test_bad_budget(budget, err, msg):
    with pytest.raises(err, match=msg):
        ga.select(np.ones((10, 3)), np.ones((10, 2)), budget=budget)


# --------------------------------------------------------------------------------------
# labels: class-balanced budgets
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("strategy", ["graft", "random", "craig", "gradmatch", "crest"])
def test_labels_keep_every_class_with_its_share(rng, backend, strategy):
    F, E, H = _stack(rng, nb=4, n=50)
    y = rng.integers(0, 4, (4, 50))
    y[0, :2] = 9  # a class of two samples
    s = ga.select(F, LastLayerGrads(E, H), labels=y, strategy=strategy, fraction=0.1, random_state=0,
                  backend=backend, return_info=True)
    flat = y.ravel()
    got = flat[np.asarray(s.indices)]
    total = round(0.1 * flat.size)
    for c in np.unique(flat):
        n_c = int((flat == c).sum())
        quota = min(n_c, max(1, -(-total * n_c // flat.size)))
        assert abs(int((got == c).sum()) - quota) <= (1 if strategy != "graft" else 0), (c, quota)
    assert len(np.unique(s.indices)) == len(s.indices)
    # every chunk holds one class: its selected rows carry its label; weights sum to its rows (crest: mean 1)
    start = 0
    for lab, m in zip(np.asarray(s.batch_labels), np.asarray(s.sizes)):
        assert (got[start:start + m] == lab).all()
        start += m
    if strategy == "crest":
        assert_allclose(np.mean(s.weights), 1.0)


def test_labels_equal_selecting_each_class_alone(rng):
    """A class whose rows fit one chunk: the same rows as select on that class's rows with its quota."""
    F, E, H = _stack(rng, nb=2, n=30)
    y = np.repeat([[0, 1, 2]], 20, axis=0).T.reshape(2, 30)
    s = ga.select(F, LastLayerGrads(E, H), labels=y, strategy="craig", fraction=0.2, random_state=0, return_info=True)
    Ff, Ef, Hf, yf = F.reshape(60, -1), E.reshape(60, -1), H.reshape(60, -1), y.ravel()
    start = 0
    for c, m in zip(s.batch_labels, s.sizes):
        rows = np.flatnonzero(yf == c)
        one = ga.select(Ff[rows], LastLayerGrads(Ef[rows], Hf[rows]), strategy="craig", min_size=None,
                        fraction=int(m) / len(rows), return_info=True)
        assert_array_equal(s.indices[start:start + m], rows[one.indices])
        assert_allclose(s.weights[start:start + m], one.weights)
        start += int(m)


def test_crest_is_facility_location_on_the_residuals_with_mean_one_weights(rng):
    F, E, H = _stack(rng, nb=3, n=40)
    y = rng.integers(0, 3, (3, 40))
    crest = ga.select(None, LastLayerGrads(E, H), labels=y, strategy="crest", fraction=0.2, return_info=True)
    craig = ga.select(None, E, labels=y, strategy="craig", fraction=0.2, return_info=True)
    assert_array_equal(crest.indices, craig.indices)
    assert_allclose(crest.weights, craig.weights * len(craig.indices) / y.size)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_labels_with_lists_masks_and_offsets(rng, backend):
    F, E, H = _stack(rng, nb=3, n=40)
    y = rng.integers(0, 3, (3, 40))
    mask = np.ones((3, 40), dtype=bool)
    mask[2, 25:] = False
    y_pad = y.copy()
    y_pad[~mask] = 99  # padding's labels are never read
    a = ga.select(F, LastLayerGrads(E, H), mask=mask, labels=y_pad, offsets=[0, 100, 200], fraction=0.2,
                  random_state=0, backend=backend, return_info=True)
    rows = [np.flatnonzero(mask[b]) for b in range(3)]
    b = ga.select([F[k][rows[k]] for k in range(3)], LastLayerGrads([E[k][rows[k]] for k in range(3)],
                                                                    [H[k][rows[k]] for k in range(3)]),
                  labels=[y[k][rows[k]] for k in range(3)], offsets=[0, 100, 200], fraction=0.2, random_state=0,
                  backend=backend, return_info=True)
    assert_array_equal(a.indices, b.indices)
    assert_allclose(a.weights, b.weights)
    assert 99 not in set(np.asarray(a.batch_labels).tolist())
    assert np.all(np.isin(np.asarray(a.indices) // 100, [0, 1, 2]))


@pytest.mark.parametrize(
    "labels,err,msg",
    [(np.zeros((2, 10)), ValueError, r"'labels' parameter of select must hold integers .* Got dtype float64"),
     (np.zeros((2, 9), dtype=int), ValueError, r"one int label per row of 'features' \(shape \(2, 10\)\)\. Got "
                                               r"shape \(2, 9\)"),
     (np.array([["a"] * 10] * 2), ValueError, r"must hold integers"),
     (np.zeros((2, 10), dtype=bool), ValueError, r"must hold integers")],
)
def test_bad_labels(labels, err, msg):
    with pytest.raises(err, match=msg):
        ga.select(np.ones((2, 10, 3)), np.ones((2, 10, 2)), labels=labels)


def test_bad_list_labels():
    F = [np.ones((5, 3)), np.ones((4, 3))]
    with pytest.raises(TypeError, match=r"'labels' parameter of select must be a list of 2 int arrays"):
        ga.select(F, None, labels=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match=r"one label per row of features\[1\] \(shape \(4,\)\)"):
        ga.select(F, None, labels=[np.zeros(5, dtype=int), np.zeros(3, dtype=int)])


def test_labels_are_not_modified(rng):
    F, E, H = _stack(rng, nb=2, n=20)
    y = rng.integers(0, 3, (2, 20))
    y0 = y.copy()
    ga.select(F, LastLayerGrads(E, H), labels=y, fraction=0.3, random_state=0)
    assert_array_equal(y, y0)
