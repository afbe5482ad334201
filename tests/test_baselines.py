"""select(strategy=...): the random, CRAIG and GradMatch baselines with GRAFT's API."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads
from graft_array import testing as gt
from graft_array._common import STRATEGIES
from graft_array.adapters.numpy import select_dataset

from conftest import CPU_BACKENDS, readonly

BASELINES = ["random", "craig", "gradmatch"]


def _seed(random_state):
    """The call seed select draws from ``random_state``."""
    return int(np.random.default_rng(random_state).integers(2**63))


def _stack(rng, nb=3, n=48, d=10, C=4, h=5):
    return rng.standard_normal((nb, n, d)), rng.standard_normal((nb, n, C)), rng.standard_normal((nb, n, h))


def _budget(fraction, n):
    return min(n, max(1, int(round(fraction * n))))


def _split(s, nb):
    """Per-batch (indices, weights) of a Selection, as NumPy arrays."""
    sizes = np.asarray(s.sizes)
    cut = np.cumsum(sizes)[:-1]
    return list(zip(np.split(np.asarray(s.indices), cut), np.split(np.asarray(s.weights), cut)))


def test_strategies_tuple():
    assert STRATEGIES[:5] == ("graft", "random", "craig", "gradmatch", "crest")
    assert set(STRATEGIES[5:]) == {"adacore", "colm", "sas", "clipcov", "mkdt", "pdd"}


# --------------------------------------------------------------------------------------
# equality with the slow references
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("last_layer", [False, True])
def test_craig_matches_reference(rng, backend, fraction, last_layer):
    _, E, H = _stack(rng)
    G = np.stack([gt.last_layer_gradients(E[b], H[b]) for b in range(3)])
    grads = LastLayerGrads(readonly(E), readonly(H)) if last_layer else readonly(G)
    s = ga.select(readonly(np.zeros((3, 48, 2))), grads, strategy="craig", fraction=fraction, backend=backend,
                  return_info=True)
    m = _budget(fraction, 48)
    assert_array_equal(s.sizes, [m] * 3)
    for b, (idx, w) in enumerate(_split(s, 3)):
        ref_idx, ref_w = gt.reference_craig(G[b], m)
        assert_array_equal(idx - 48 * b, ref_idx)
        assert_array_equal(w, ref_w)
        assert_allclose(s.residuals[b], gt.reference_rho(G[b], ref_idx), rtol=1e-8, atol=1e-6)
    assert s.backend == backend and s.solver == "none" and s.rank == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("last_layer", [False, True])
def test_gradmatch_matches_reference(rng, backend, fraction, lam, last_layer):
    """Every path of the pursuit on this data: the full budget, old rows dropped (lam 0), the small-residual stop
    (lam 0, fraction 1: 32 rows span the 32-dimensional gradients), the repeated row (lam 0.5, 3) and the fill."""
    _, E, H = _stack(rng, n=40, C=4, h=7)  # gradients of dimension 32
    G = np.stack([gt.last_layer_gradients(E[b], H[b]) for b in range(3)])
    grads = LastLayerGrads(readonly(E), readonly(H)) if last_layer else readonly(G)
    s = ga.select(np.zeros((3, 40, 2)), grads, strategy="gradmatch", fraction=fraction, gradmatch_lambda=lam,
                  random_state=5, backend=backend, return_info=True)
    m = _budget(fraction, 40)
    for b, (idx, w) in enumerate(_split(s, 3)):
        ref_idx, ref_w = gt.reference_gradmatch(G[b], m, lam=lam, seed=_seed(5), start=40 * b)
        assert_array_equal(idx - 40 * b, ref_idx)
        assert_allclose(w, ref_w, rtol=1e-7, atol=1e-9)
        assert np.all(w >= 0) and w.sum() == pytest.approx(40, rel=1e-12)
        assert_allclose(s.residuals[b], gt.reference_rho(G[b], ref_idx), rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_matches_reference_and_offsets(rng, backend):
    F, E, H = _stack(rng, nb=4, n=30)
    s = ga.select(readonly(F), strategy="random", fraction=0.3, random_state=7, backend=backend, return_info=True)
    seed = _seed(7)
    for b, (idx, w) in enumerate(_split(s, 4)):
        ref_idx, ref_w = gt.reference_random(30, 9, seed, 30 * b)
        assert_array_equal(idx, ref_idx + 30 * b)
        assert_allclose(w, ref_w)
    assert np.isnan(np.asarray(s.residuals)).all() and s.residuals.shape == (4, 9)
    off = np.array([1000, 5, 2**40, 7])  # the start seeds the batch: other offsets, other rows
    so = ga.select(F, strategy="random", fraction=0.3, random_state=7, offsets=off, backend=backend,
                   return_info=True)
    for b, (idx, _) in enumerate(_split(so, 4)):
        assert_array_equal(idx, gt.reference_random(30, 9, seed, off[b])[0] + off[b])
    g = ga.select(F, LastLayerGrads(E, H), strategy="random", fraction=0.3, random_state=7, backend=backend,
                  return_info=True)
    assert_array_equal(g.indices, s.indices)  # the gradients only add the residual curve
    for b, (idx, _) in enumerate(_split(g, 4)):
        G = gt.last_layer_gradients(E[b], H[b])
        assert_allclose(g.residuals[b], gt.reference_rho(G, idx - 30 * b), rtol=1e-8, atol=1e-6)


def test_random_is_uniform():
    """Inclusion counts of each row and the row drawn first, over 4000 batches of one call: uniform."""
    n, m, nb = 20, 5, 4000
    s = ga.select(np.zeros((nb, n, 1)), strategy="random", fraction=m / n, random_state=3, return_info=True)
    rows = np.asarray(s.indices).reshape(nb, m) - (np.arange(nb) * n)[:, None]
    counts = np.bincount(rows.ravel(), minlength=n)
    p = m / n
    assert np.all(np.abs(counts - nb * p) < 5 * np.sqrt(nb * p * (1 - p)))
    first = np.bincount(rows[:, 0], minlength=n)
    assert np.all(np.abs(first - nb / n) < 5 * np.sqrt(nb / n))
    assert len(set(map(tuple, np.sort(rows, axis=1)))) > 3400  # C(20, 5) = 15504 subsets: ~3526 distinct expected


# --------------------------------------------------------------------------------------
# CRAIG: ties, and the lazy greedy against the plain one in the same arithmetic
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_craig_ties_go_to_the_lowest_index(rng, backend):
    base = rng.standard_normal((6, 9))
    G = base[rng.integers(0, 6, size=30)]  # 30 rows, 6 distinct: exact ties in gains and similarities
    for fraction in (0.1, 0.2, 0.5):
        s = ga.select(np.zeros((30, 1)), readonly(G), strategy="craig", fraction=fraction, backend=backend,
                      return_info=True)
        m = _budget(fraction, 30)
        ref_idx, ref_w = gt.reference_craig(G, m)
        assert_array_equal(s.indices, ref_idx)
        assert_array_equal(s.weights, ref_w)
        assert float(np.sum(s.weights)) == 30
    same = ga.select(np.zeros((7, 1)), np.ones((7, 3)), strategy="craig", fraction=0.5, backend=backend,
                     return_info=True)  # every distance 0: all gains 0, rows in order, all on the first
    assert_array_equal(same.indices, [0, 1, 2, 3])
    assert_array_equal(same.weights, [7, 0, 0, 0])


def test_lazy_greedy_equals_plain_greedy(rng):
    from graft_array.strategies.facility import facility_location_plain_nb as craig_plain

    G = rng.integers(-2, 3, size=(5, 60, 4)).astype(np.float64)  # small integers: many exact ties
    G[:, 30:] = G[:, :30]
    for m in (1, 7, 30, 60):
        a = craig_plain(G, m, True)
        b = craig_plain(G, m, False)
        for x, y in zip(a, b):
            assert_array_equal(x, y)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), p=st.integers(1, 4), k=st.integers(1, 5), seed=st.integers(0, 2**16),
       fraction=st.floats(0.01, 1.0))
def test_lazy_greedy_equals_reference_property(n, p, k, seed, fraction):
    rng = np.random.default_rng(seed)
    G = rng.integers(-k, k + 1, size=(n, p)).astype(np.float64)
    m = _budget(fraction, n)
    s = ga.select(np.zeros((n, 1)), G, strategy="craig", fraction=fraction, return_info=True)
    ref_idx, ref_w = gt.reference_craig(G, m)
    assert_array_equal(s.indices, ref_idx)
    assert_array_equal(s.weights, ref_w)


# --------------------------------------------------------------------------------------
# GradMatch: where the pursuit stops, the fill, the weights
# --------------------------------------------------------------------------------------
def _gradmatch(G, fraction, lam, backend, random_state=0):
    return ga.select(np.zeros((G.shape[0], 1)), readonly(G), strategy="gradmatch", fraction=fraction,
                     gradmatch_lambda=lam, random_state=random_state, backend=backend, return_info=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradmatch_stops_and_fills_by_hand(backend):
    """Small problems worked out by hand; s = 13/3 for the second G (mean squared row norm)."""
    seed = _seed(0)

    def fill(n, taken):  # the batch's other rows by random key
        return [i for i in gt.reference_random(n, n, seed, 0)[0] if i not in taken]

    # the residual stop: g = (2, 0) = 2 g_0 after one step (rows 0 and 1 tie: the lower one); the rest by key at the
    # first weight, 2: all weights equal, n / m = 1
    G = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    s = _gradmatch(G, 1.0, 0.5, backend)
    assert_array_equal(s.indices, [0] + fill(4, [0]))
    assert_allclose(s.weights, [1.0, 1.0, 1.0, 1.0], rtol=1e-15)
    # the repeated row: g = (-1, 0); step 1 takes row 2 at <g_2, g> / ||g_2||^2 = 1/4 (no ridge: CORDS' first step),
    # step 2 row 1, ridge 13/6: w = [[61/6, -6], [-6, 43/6]]^-1 (2, -1) = (50, 11) / (6 det) > 0; then the largest
    # correlation is row 2's again: stop. Row 0 (a zero gradient) is the fill, at the mean (50 + 11) / 2
    G = np.array([[0.0, 0.0], [1.0, 2.0], [-2.0, -2.0]])
    s = _gradmatch(G, 1.0, 0.5, backend)
    assert_array_equal(s.indices, [2, 1, 0])
    assert_allclose(s.weights, np.array([50.0, 11.0, 30.5]) * 3 / 91.5, rtol=1e-13)
    # the newest row dropped: ridge 13/3 makes row 1's weight (12 - 37/3) / det < 0, so it leaves and the
    # pursuit stops; row 2 alone, re-solved (6/37), and the fill at its weight: all equal
    s = _gradmatch(G, 1.0, 1.0, backend)
    assert_array_equal(s.indices, [2] + fill(3, [2]))
    assert_allclose(s.weights, [1.0, 1.0, 1.0], rtol=1e-15)
    for lam in (0.5, 1.0):
        ref_idx, ref_w = gt.reference_gradmatch(G, 3, lam=lam, seed=seed, start=0)
        s = _gradmatch(G, 1.0, lam, backend)
        assert_array_equal(s.indices, ref_idx)
        assert_allclose(s.weights, ref_w, rtol=1e-13)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradmatch_cancelling_rows_are_the_random_subset(backend):
    """g = 0 exactly: nothing to match, the whole budget is the "random" strategy's subset of the batch, n / m each."""
    A = np.arange(12.0).reshape(4, 3) - 5.0
    G = np.vstack([A, -A, A[:2], -A[:2]])
    for random_state in (0, 1, 2):
        s = _gradmatch(G, 0.5, 0.5, backend, random_state)
        assert_array_equal(s.indices, gt.reference_random(12, 6, _seed(random_state), 0)[0])
        assert_array_equal(s.weights, np.full(6, 2.0))
        r = ga.select(np.zeros((12, 1)), strategy="random", fraction=0.5, random_state=random_state, backend=backend)
        assert_array_equal(s.indices, r)
    other = _gradmatch(G, 0.5, 0.5, backend, 1)  # the fill follows random_state
    assert not np.array_equal(other.indices, _gradmatch(G, 0.5, 0.5, backend, 0).indices)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradmatch_finds_a_low_rank_gradient(rng, backend):
    """Rank-4 gradients (3 directions and an offset): four pursuit steps span g (rho(4) ~ 0), any ridge."""
    n = 64
    G = rng.standard_normal((n, 3)) @ rng.standard_normal((3, 20)) + 0.5
    for lam in (0.0, 1e-3, 0.5):
        s = _gradmatch(G, 0.25, lam, backend)
        assert s.residuals[0, 3] < 1e-6 < s.residuals[0, 2]
        assert float(np.sum(s.weights)) == pytest.approx(n, rel=1e-12)
        ref_idx, ref_w = gt.reference_gradmatch(G, 16, lam=lam, seed=_seed(0), start=0)
        assert_array_equal(s.indices, ref_idx)
        assert_allclose(s.weights, ref_w, rtol=1e-7)


def test_gradmatch_cholesky_drop(rng):
    """The Numba twin's removal of row/column a from a Cholesky factor = the factor of the reduced matrix."""
    from graft_array.strategies.gradmatch import _chol_drop_nb as _chol_drop

    X = rng.standard_normal((7, 9))
    A = X @ X.T + 0.1 * np.eye(7)
    for q in (1, 2, 7):
        for a in range(q):
            L = np.linalg.cholesky(A[:q, :q])
            _chol_drop(L, q, a, np.empty(q))
            keep = [i for i in range(q) if i != a]
            assert_allclose(np.tril(L[:q - 1, :q - 1]), np.linalg.cholesky(A[np.ix_(keep, keep)]), rtol=1e-12,
                            atol=1e-13)


@settings(max_examples=40, deadline=None)
@given(nb=st.integers(1, 3), n=st.integers(1, 30), p=st.integers(1, 6), fraction=st.floats(0.01, 1.0),
       lam=st.sampled_from([0.0, 1e-3, 0.1, 0.5, 2.0]), seed=st.integers(0, 2**16), scale=st.integers(-30, 30),
       last_layer=st.booleans(), backend=st.sampled_from(CPU_BACKENDS))
def test_gradmatch_properties(nb, n, p, fraction, lam, seed, scale, last_layer, backend):
    """m unique rows of each batch, weights >= 0 summing to n, the reference's rows and weights, the same bits for the
    same random_state and for gradients scaled by 2^scale (the ridge is homogeneous)."""
    rng = np.random.default_rng(seed)
    E, H = rng.standard_normal((nb, n, p)), rng.standard_normal((nb, n, 2))
    G = np.stack([gt.last_layer_gradients(E[b], H[b]) for b in range(nb)]) if last_layer else E

    def run(c):
        grads = LastLayerGrads(E * c, H) if last_layer else G * c
        return ga.select(np.zeros((nb, n, 1)), grads, strategy="gradmatch", fraction=fraction, gradmatch_lambda=lam,
                         random_state=seed, backend=backend, return_info=True)

    s = run(1.0)
    m = _budget(fraction, n)
    for b, (idx, w) in enumerate(_split(s, nb)):
        assert len(set(idx.tolist())) == m and np.all((idx >= b * n) & (idx < (b + 1) * n))
        assert np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() == pytest.approx(n, rel=1e-12)
        ref_idx, ref_w = gt.reference_gradmatch(G[b], m, lam=lam, seed=_seed(seed), start=b * n)
        assert_array_equal(idx - b * n, ref_idx)
        assert_allclose(w, ref_w, rtol=1e-6, atol=1e-9 * n)
    for other in (run(1.0), run(2.0**scale)):
        assert_array_equal(other.indices, s.indices)
        assert_array_equal(other.weights, s.weights)


# --------------------------------------------------------------------------------------
# the two backends agree; properties
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", BASELINES)
@pytest.mark.parametrize("last_layer", [False, True])
def test_numba_equals_array_api(rng, strategy, last_layer):
    _, E, H = _stack(rng, nb=5, n=64, C=3, h=6)
    grads = LastLayerGrads(E, H) if last_layer else np.concatenate([E, H], axis=2)
    out = [ga.select(np.zeros((5, 64, 3)), grads, strategy=strategy, fraction=0.2, random_state=2, backend=be,
                     return_info=True) for be in CPU_BACKENDS]
    assert_array_equal(out[0].indices, out[1].indices)
    assert_array_equal(out[0].sizes, out[1].sizes)
    assert_allclose(out[0].weights, out[1].weights, rtol=1e-7, atol=1e-10)
    assert_allclose(out[0].residuals, out[1].residuals, rtol=1e-7, atol=1e-6)  # ~sqrt(eps) once the span is full


@settings(max_examples=30, deadline=None)
@given(strategy=st.sampled_from(BASELINES), nb=st.integers(1, 3), n=st.integers(1, 40), C=st.integers(1, 4),
       fraction=st.floats(0.01, 1.0), lam=st.floats(0.0, 2.0), seed=st.integers(0, 2**16),
       backend=st.sampled_from(CPU_BACKENDS))
def test_baseline_properties(strategy, nb, n, C, fraction, lam, seed, backend):
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((nb, n, C))
    H = rng.standard_normal((nb, n, 3))
    s = ga.select(np.zeros((nb, n, 2)), LastLayerGrads(E, H), strategy=strategy, fraction=fraction,
                  gradmatch_lambda=lam, random_state=seed, backend=backend, return_info=True)
    m = _budget(fraction, n)
    assert_array_equal(s.sizes, [m] * nb)
    assert len(s.indices) == len(s.weights) == nb * m and s.residuals.shape == (nb, m)
    for b, (idx, w) in enumerate(_split(s, nb)):
        assert len(set(idx.tolist())) == m and np.all((idx >= b * n) & (idx < (b + 1) * n))
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        if strategy == "craig":
            assert np.all(w >= 1) and np.all(w == np.round(w)) and w.sum() == n
        elif strategy == "random":
            assert_allclose(w, n / m)
        else:
            assert w.sum() == pytest.approx(n, rel=1e-12)
        rho = np.asarray(s.residuals[b])
        assert np.all((rho >= 0) & (rho <= 1 + 1e-12)) and np.all(np.diff(rho) <= 1e-12)


@pytest.mark.parametrize("strategy", BASELINES)
def test_deterministic_and_seeded(rng, strategy):
    _, E, H = _stack(rng)
    kw = dict(strategy=strategy, fraction=0.25, return_info=True)
    a = ga.select(np.zeros((3, 48, 1)), LastLayerGrads(E, H), random_state=5, **kw)
    b = ga.select(np.zeros((3, 48, 1)), LastLayerGrads(E, H), random_state=np.random.default_rng(5), **kw)
    c = ga.select(np.zeros((3, 48, 1)), LastLayerGrads(E, H), random_state=6, **kw)
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.weights, b.weights)
    if strategy == "random":
        assert not np.array_equal(a.indices, c.indices)
    elif strategy == "craig":  # no randomness
        assert_array_equal(a.indices, c.indices)
    else:  # the pursuit uses none, its fill the random_state
        for sel, state in ((a, 5), (c, 6)):
            for b, (idx, _) in enumerate(_split(sel, 3)):
                G = gt.last_layer_gradients(E[b], H[b])
                ref_idx, _ = gt.reference_gradmatch(G, 12, lam=0.5, seed=_seed(state), start=48 * b)
                assert_array_equal(idx - 48 * b, ref_idx)


# --------------------------------------------------------------------------------------
# ragged batches, masks, chunking
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("strategy", BASELINES)
def test_ragged_list_equals_per_batch(rng, backend, strategy):
    sizes = [40, 40, 23]
    F = [rng.standard_normal((k, 6)) for k in sizes]
    E = [rng.standard_normal((k, 3)) for k in sizes]
    H = [rng.standard_normal((k, 4)) for k in sizes]
    s = ga.select(F, LastLayerGrads(E, H), strategy=strategy, fraction=0.3, random_state=9, backend=backend,
                  return_info=True)
    assert_array_equal(s.sizes, [12, 12, 7])
    assert s.residuals.shape == (3, 12) and np.isnan(s.residuals[2, 7:]).all()
    starts = [0, 40, 80]
    for b, (idx, w) in enumerate(_split(s, 3)):
        one = ga.select(F[b], LastLayerGrads(E[b], H[b]), strategy=strategy, fraction=0.3, random_state=9,
                        offsets=[starts[b]], backend=backend, return_info=True)
        assert_array_equal(idx, one.indices)
        assert_allclose(w, one.weights)
        assert_allclose(s.residuals[b, :len(idx)], one.residuals[0])
    off = ga.select(F, LastLayerGrads(E, H), strategy="craig", fraction=0.3, offsets=[500, 0, 100],
                    backend=backend)
    base = ga.select(F, LastLayerGrads(E, H), strategy="craig", fraction=0.3, backend=backend)
    assert_array_equal(off, base + np.repeat([500, -40, 20], [12, 12, 7]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("strategy", BASELINES)
def test_mask_equals_list_of_compacted_batches(rng, backend, strategy):
    F = rng.standard_normal((3, 40, 5))
    E = rng.standard_normal((3, 40, 4))
    H = rng.standard_normal((3, 40, 5))
    mask = rng.random((3, 40)) < 0.7
    s = ga.select(readonly(F), LastLayerGrads(readonly(E), readonly(H)), mask=readonly(mask), strategy=strategy,
                  fraction=0.25, random_state=3, backend=backend, return_info=True)
    rows = [np.flatnonzero(mask[b]) for b in range(3)]
    expect, wexp = [], []
    for b in range(3):  # a masked batch starts at its padded position b * 40
        one = ga.select(F[b][rows[b]], LastLayerGrads(E[b][rows[b]], H[b][rows[b]]), strategy=strategy,
                        fraction=0.25, random_state=3, offsets=[40 * b], backend=backend, return_info=True)
        expect.extend(rows[b][np.asarray(one.indices) - 40 * b] + 40 * b)
        wexp.extend(np.asarray(one.weights))
    assert_array_equal(s.indices, expect)
    assert_allclose(s.weights, wexp)
    assert mask.reshape(-1)[s.indices].all()


@pytest.mark.parametrize("batches_per_call", [1, 3])
@pytest.mark.parametrize("strategy", BASELINES)
def test_dataset_pass_equals_one_select(rng, batches_per_call, strategy):
    """select_dataset in chunks of batches = one select over all the batches (random: seeded by position)."""
    X = rng.standard_normal((530, 6))
    E, H = rng.standard_normal((530, 3)), rng.standard_normal((530, 4))
    grads = None if strategy == "random" else LastLayerGrads(readonly(E), readonly(H))
    idx, w = select_dataset(readonly(X), grads, strategy=strategy, batch_size=64, batches_per_call=batches_per_call,
                            fraction=0.2, random_state=4, progress=False)
    cuts = range(0, 530, 64)
    g = None if grads is None else LastLayerGrads([E[a:a + 64] for a in cuts], [H[a:a + 64] for a in cuts])
    ref = ga.select([X[a:a + 64] for a in cuts], g, strategy=strategy, fraction=0.2, random_state=4,
                    return_info=True)
    assert_array_equal(idx, ref.indices)
    assert_allclose(w, ref.weights)
    if strategy == "random":
        seed = _seed(4)
        want = np.concatenate([gt.reference_random(min(64, 530 - a), _budget(0.2, min(64, 530 - a)), seed, a)[0] + a
                               for a in cuts])
        assert_array_equal(idx, want)


# --------------------------------------------------------------------------------------
# other array types
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", BASELINES)
def test_torch_and_array_api_strict(rng, strategy):
    torch = pytest.importorskip("torch")
    xs = pytest.importorskip("array_api_strict")
    F, E, H = _stack(rng, nb=2, n=32)
    ref = ga.select(F, LastLayerGrads(E, H), strategy=strategy, fraction=0.25, random_state=0, return_info=True)
    t = ga.select(torch.tensor(F, requires_grad=True), LastLayerGrads(torch.tensor(E), torch.tensor(H)),
                  strategy=strategy, fraction=0.25, random_state=0, return_info=True)
    assert isinstance(t.indices, torch.Tensor) and t.indices.dtype == torch.int64 and t.backend == "numba"
    assert isinstance(t.weights, torch.Tensor) and isinstance(t.residuals, torch.Tensor)
    assert_array_equal(t.indices.numpy(), ref.indices)
    assert_allclose(t.weights.numpy(), ref.weights)
    s = ga.select(xs.asarray(F), LastLayerGrads(xs.asarray(E), xs.asarray(H)), strategy=strategy, fraction=0.25,
                  random_state=0, return_info=True)
    assert s.backend == "array_api"
    assert all(type(a).__module__.startswith("array_api_strict") for a in (s.indices, s.weights, s.residuals))
    assert s.indices.dtype == xs.int64
    assert_array_equal(np.asarray(s.indices), ref.indices)
    assert_allclose(np.asarray(s.weights), ref.weights, rtol=1e-7, atol=1e-10)
    assert_allclose(np.asarray(s.residuals), ref.residuals, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("strategy", BASELINES)
def test_inputs_not_modified(rng, strategy):
    F, E, H = _stack(rng)
    copies = [a.copy() for a in (F, E, H)]
    ga.select(F, LastLayerGrads(E, H), strategy=strategy, random_state=0)
    ga.select(F, np.concatenate([E, H], axis=2), strategy=strategy, random_state=0, backend="array_api")
    for a, c in zip((F, E, H), copies):
        assert_array_equal(a, c)


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
_X = np.ones((4, 3))


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((_X,), {"strategy": "glister"}, ValueError,
         r"The 'strategy' parameter of select must be one of 'graft', 'random', 'craig', 'gradmatch', 'crest', "
         r"'adacore', 'colm', 'sas', 'clipcov', 'mkdt', 'pdd'\. "
         r"Got 'glister' instead\."),
        ((_X,), {"strategy": None}, ValueError, r"'strategy' parameter of select must be one of"),
        ((_X,), {"strategy": "craig"}, ValueError, r"strategy='craig' needs per-sample gradients: pass 'grads'"),
        ((_X,), {"strategy": "gradmatch"}, ValueError, r"strategy='gradmatch' needs per-sample gradients"),
        (([_X, _X],), {"strategy": "craig"}, ValueError, r"strategy='craig' needs per-sample gradients"),
        ((_X,), {"strategy": "random", "min_size": 2}, ValueError,
         r"The 'min_size' parameter of select applies to strategy='graft' only; strategy='random' takes "
         r"round\(fraction \* n\) rows per batch\. Got min_size=2 instead\."),
        ((_X, _X), {"strategy": "craig", "max_size": 3}, ValueError,
         r"'max_size' parameter of select applies to strategy='graft' only; strategy='craig'"),
        ((_X, _X), {"strategy": "gradmatch", "gradmatch_lambda": -0.1}, ValueError,
         r"The 'gradmatch_lambda' parameter of select must be a finite float >= 0\.0\. Got -0\.1 instead\."),
        ((_X, _X), {"strategy": "gradmatch", "gradmatch_lambda": float("nan")}, ValueError,
         r"'gradmatch_lambda' parameter of select must be a finite float"),
        ((_X, _X), {"gradmatch_lambda": "big"}, TypeError, r"'gradmatch_lambda' parameter of select must be a float"),
        ((_X, np.ones((5, 2))), {"strategy": "craig"}, ValueError, r"'grads' to have one row per sample"),
    ],
)
def test_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ga.select(*args, **kwargs)


# --------------------------------------------------------------------------------------
# adapters
# --------------------------------------------------------------------------------------
def test_sklearn_sampler_strategies(rng):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from graft_array.adapters.sklearn import GraftSampler

    X, y = load_digits(return_X_y=True)
    X, y = X[:500], y[:500]
    for strategy in BASELINES:
        s = GraftSampler(strategy=strategy, fraction=0.2, batch_size=100, random_state=0, class_balance=False).fit(X, y)
        assert_array_equal(s.sizes_, [20] * 5)
        assert len(np.unique(s.indices_)) == 100 and s.solver_ == "none" and s.rank_ == 0
        assert s.gradient_source_ == "proxy"
        Xr, yr = s.fit_resample(X, y)
        assert Xr.shape == (100, 64) and yr.shape == (100,)
    r = GraftSampler(strategy="random", fraction=0.2, batch_size=100, random_state=0).fit(X)
    assert r.gradient_source_ == "none" and np.isnan(r.residuals_).all()
    a = GraftSampler(strategy="gradmatch", gradmatch_lambda=0.0, batch_size=100).fit(X, y)
    b = GraftSampler(strategy="gradmatch", gradmatch_lambda=5.0, batch_size=100).fit(X, y)
    assert not np.allclose(a.weights_, b.weights_)
    with pytest.raises(ValueError, match=r"'strategy' parameter of GraftSampler must be one of"):
        GraftSampler(strategy="bogus").fit(X, y)
    with pytest.raises(ValueError, match=r"'gradmatch_lambda' parameter of GraftSampler must be a finite float"):
        GraftSampler(gradmatch_lambda=-1.0).fit(X, y)
    with pytest.raises(ValueError, match=r"'min_size' parameter of GraftSampler applies to strategy='graft'"):
        GraftSampler(strategy="craig", min_size=3).fit(X, y)
    with pytest.raises(ValueError, match=r"strategy='craig' needs per-sample gradients"):
        GraftSampler(strategy="craig").fit(X)


def test_torch_epoch_sampler_with_craig():
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.utils.data import TensorDataset

    from graft_array.adapters.torch import GraftBatchSelector, GraftEpochSampler

    g = torch.Generator().manual_seed(0)
    x = torch.randn(250, 6, generator=g)
    y = torch.randint(0, 3, (250,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    s = GraftEpochSampler(TensorDataset(x, y), model, strategy="craig", fraction=0.2, batch_size=50,
                          batches_per_call=2, progress=False)
    idx = s.indices
    assert len(s) == 50 and len(torch.unique(idx)) == 50
    for b in range(5):  # 10 rows of each batch of 50, CRAIG weights: cluster sizes summing to 50
        inside = (idx >= 50 * b) & (idx < 50 * (b + 1))
        assert int(inside.sum()) == 10
        assert float(s.weights[50 * b:50 * (b + 1)].sum()) == pytest.approx(50)
    assert torch.all(s.weights[idx] >= 1) and torch.all(s.weights[idx] == torch.round(s.weights[idx]))
    assert sorted(iter(s)) == sorted(idx.tolist())
    sel = GraftBatchSelector(model, strategy="gradmatch", fraction=0.25)
    i, w = sel(x[:40], y[:40])
    assert i.shape == (10,) and torch.all(w >= 0) and sel.last_selection.solver == "none"


def test_registry_drives_select_and_the_adapters():
    """One registry: every strategy loads a module with run(), select accepts exactly its names."""
    from graft_array import strategies

    assert STRATEGIES == strategies.NAMES == tuple(strategies.REGISTRY)
    X = np.random.default_rng(0).standard_normal((2, 30, 4))
    G = np.random.default_rng(1).standard_normal((2, 30, 40))
    halves = np.repeat(np.arange(2), 30)  # two equal sources / groups, one per batch
    family = {
        "adacore": dict(hessian_diag=np.abs(G)),
        "colm": dict(sources=halves.reshape(2, 30)),
        "sas": dict(groups=halves.reshape(2, 30)),
        "clipcov": dict(groups=halves.reshape(2, 30)),
        "mkdt": dict(scores=np.arange(60.0).reshape(2, 30)),
        "pdd": dict(scores=np.arange(60.0).reshape(2, 30)),
    }
    for name, spec in strategies.REGISTRY.items():
        assert callable(strategies.load(name).run)
        kw = family.get(name, {})
        feats = (X, X[..., ::-1]) if name == "clipcov" else X
        s = ga.select(feats, G if spec.takes_grads else None, strategy=name, fraction=0.2, random_state=0,
                      return_info=True, **kw)
        assert int(np.sum(s.sizes)) == 12 == len(s.indices) == len(np.unique(s.indices))
        assert set(kw) <= set(spec.inputs) | {"hessian_diag"}
        if spec.needs_grads:
            with pytest.raises(ValueError, match=f"strategy='{name}' needs"):
                ga.select(X, strategy=name, **kw)
        if not spec.takes_grads:
            with pytest.raises(ValueError, match=f"strategy='{name}' does not read per-sample gradients"):
                ga.select(feats, G, strategy=name, **kw)
        if not spec.adaptive_size:
            with pytest.raises(ValueError, match=r"'min_size' parameter of select applies to strategy='graft' only"):
                ga.select(feats, G if spec.takes_grads else None, strategy=name, min_size=2, **kw)
