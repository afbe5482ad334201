"""select(strategy=...) for the family: AdaCore, CoLM, SAS, ClipCov, MKDT and PDD against slow references.

The references (graft_array.testing.reference_*) are written from the strategies' docstrings with plain loops and
exactly rounded sums; every test here compares select's rows (and weights where they are defined) with them, or
checks a property the docstrings promise (ties, determinism, invariances, errors).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array import LastLayerGrads
from graft_array import testing as gt

from conftest import CPU_BACKENDS, readonly


def _seed(random_state):
    """The call seed select draws from ``random_state``."""
    return int(np.random.default_rng(random_state).integers(2**63))


def _budget(fraction, n):
    return min(n, max(1, int(round(fraction * n))))


def _segments(s):
    """Per batch / chunk (indices, weights) of a Selection, as NumPy arrays."""
    cut = np.cumsum(np.asarray(s.sizes))[:-1]
    return list(zip(np.split(np.asarray(s.indices), cut), np.split(np.asarray(s.weights), cut)))


def _per_batch(lengths, fraction, pick):
    """Expected (indices, weights, sizes) of an unlabelled call: pick(b, m) -> batch b's (local rows, weights)."""
    idx, w, sizes, start = [], [], [], 0
    for b, n in enumerate(lengths):
        m = _budget(fraction, n)
        i, ww = pick(b, m)
        idx.append(np.asarray(i) + start)
        w.append(ww)
        sizes.append(m)
        start += n
    return np.concatenate(idx), np.concatenate(w), np.array(sizes)


def _per_chunk(labels, k, width, pick):
    """Expected (indices, weights, sizes) of a labelled call: pick(rows, m) -> (positions in rows, weights)."""
    idx, w, sizes = [], [], []
    for _, rows, m in gt.reference_class_chunks(labels, k, width):
        i, ww = pick(rows, m)
        idx.append(rows[np.asarray(i, dtype=np.int64)])
        w.append(ww)
        sizes.append(m)
    return np.concatenate(idx), np.concatenate(w), np.array(sizes)


def _check(s, expected, weights=True):
    idx, w, sizes = expected
    assert_array_equal(s.sizes, sizes)
    assert_array_equal(s.indices, idx)
    if weights:
        assert_allclose(s.weights, w, rtol=1e-12)


#: a step of select's greedy may take any row whose gain is within RTOL of the best (of the gains' magnitude): tiny
#: shapes are full of ties that are exact in real arithmetic (two rows each the other's best cover, n = 2 with
#: m = 1 in ClipCov, ...) and that select's floating-point sums break either way; the strict tests use generic data
#: and equal rows
RTOL = 1e-12


def _copies_in_index_order(idx, keys):
    """Ties to the lowest index, for equal rows: the selected copies of each row are its first ones, in order."""
    idx = np.asarray(idx).tolist()
    keys = np.asarray(keys)
    for v in set(keys.tolist()):
        got = [i for i in idx if keys[i] == v]
        assert got == np.flatnonzero(keys == v)[:len(got)].tolist(), (v, got)


#: equal rows tie exactly in the Numba kernels; the generic twins build their Grams with a matrix product, and
#: OpenBLAS's GEMM rounds the products of two equal rows differently (by their place in its tiles), so there the
#: lowest-index rule holds only as far as the BLAS Gram is row-consistent (select's docstring says so): exact ties are
#: tested on the Numba path
TIE_BACKENDS = ["numba"]


def _pairs(rng, n, d=5, e=4, noise=0.3, latent=3, lead=()):
    """Correlated image / caption embeddings: both read a shared latent code."""
    Z = rng.standard_normal(lead + (n, latent))
    X = Z @ rng.standard_normal((latent, d)) + noise * rng.standard_normal(lead + (n, d))
    T = Z @ rng.standard_normal((latent, e)) + noise * rng.standard_normal(lead + (n, e))
    return X, T


# --------------------------------------------------------------------------------------
# AdaCore
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fraction", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("damping", [1e-3, 0.5])
def test_adacore_matches_reference(rng, backend, fraction, damping):
    G = rng.standard_normal((3, 40, 6))
    D = rng.standard_normal((3, 40, 6))  # signed: AdaCore reads |D|
    s = ga.select(None, readonly(G), hessian_diag=readonly(D), strategy="adacore", fraction=fraction,
                  strategy_params={"damping": damping}, backend=backend, return_info=True)
    _check(s, _per_batch([40] * 3, fraction, lambda b, m: gt.reference_adacore(G[b], D[b], m, damping)))
    assert s.backend == backend and s.solver == "none" and s.rank == 0
    assert np.all(np.asarray(s.weights) >= 1) and float(np.sum(s.weights)) == 120


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adacore_last_layer_matches_reference(rng, backend):
    E, H = rng.standard_normal((2, 36, 3)), rng.standard_normal((2, 36, 4))
    Q = rng.uniform(-0.05, 0.25, size=(2, 36, 3))
    for damping in (1e-3, 0.3):
        s = ga.select(np.zeros((2, 36, 1)), LastLayerGrads(readonly(E), readonly(H)), hessian_diag=readonly(Q),
                      strategy="adacore", fraction=0.25, strategy_params={"damping": damping}, backend=backend,
                      return_info=True)
        _check(s, _per_batch([36] * 2, 0.25,
                             lambda b, m: gt.reference_adacore_last_layer(E[b], Q[b], H[b], m, damping)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adacore_with_labels(rng, backend):
    """Per class (the damping's mean over each class chunk), one batch and a stack whose classes span batches."""
    G, D = rng.standard_normal((70, 5)), rng.standard_normal((70, 5))
    lab = rng.permutation(np.repeat([3, 0, 7], [12, 40, 18]))
    s = ga.select(None, G, hessian_diag=D, labels=lab, strategy="adacore", fraction=0.2,
                  strategy_params={"damping": 0.1}, backend=backend, return_info=True)
    _check(s, _per_chunk(lab, 14, 70, lambda r, m: gt.reference_adacore(G[r], D[r], m, 0.1)))
    assert_array_equal(s.batch_labels, [0, 3, 7])
    G3, D3 = G.reshape(2, 35, 5), D.reshape(2, 35, 5)  # class 0 (40 rows) is cut into two chunks of 20
    s = ga.select(None, G3, hessian_diag=D3, labels=lab.reshape(2, 35), strategy="adacore", fraction=0.2,
                  backend=backend, return_info=True)
    _check(s, _per_chunk(lab, 14, 35, lambda r, m: gt.reference_adacore(G[r], D[r], m)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adacore_ragged(rng, backend):
    lengths = [25, 40, 13]
    G = [rng.standard_normal((n, 4)) for n in lengths]
    D = [rng.standard_normal((n, 4)) for n in lengths]
    s = ga.select([np.zeros((n, 2)) for n in lengths], G, hessian_diag=D, strategy="adacore", fraction=0.3,
                  backend=backend, return_info=True)
    _check(s, _per_batch(lengths, 0.3, lambda b, m: gt.reference_adacore(G[b], D[b], m)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adacore_ties_go_to_the_lowest_index(rng, backend):
    pick = rng.integers(0, 6, size=30)  # 30 rows, 6 distinct (gradient and diagonal alike): exact ties
    G, D = rng.standard_normal((6, 5))[pick], rng.standard_normal((6, 5))[pick]
    for fraction in (0.1, 0.3, 0.6):
        s = ga.select(None, G, hessian_diag=D, strategy="adacore", fraction=fraction, backend=backend,
                      return_info=True)
        ref_idx, ref_w = gt.reference_adacore(G, D, _budget(fraction, 30))
        assert_array_equal(s.indices, ref_idx)
        assert_array_equal(s.weights, ref_w)
        _copies_in_index_order(s.indices, pick)
    same = ga.select(None, np.ones((7, 3)), hessian_diag=np.ones((7, 3)), strategy="adacore", fraction=0.5,
                     backend=backend, return_info=True)  # every distance 0: rows in order, all on the first
    assert_array_equal(same.indices, [0, 1, 2, 3])
    assert_array_equal(same.weights, [7, 0, 0, 0])


@pytest.mark.parametrize("backend", TIE_BACKENDS)
def test_adacore_ties_known_case(backend):
    """Data on which the shared facility-location kernel's generic twin (facility.facility_location on a BLAS Gram)
    takes a later copy of a row first: row 41 before row 0, both copies of one row."""
    rng = np.random.default_rng(103)
    n, p = int(rng.integers(20, 70)), int(rng.integers(2, 12))
    pick = rng.integers(0, 6, size=n)
    G, D = rng.standard_normal((6, p))[pick], rng.standard_normal((6, p))[pick]
    s = ga.select(None, G, hessian_diag=D, strategy="adacore", fraction=0.2, backend=backend, return_info=True)
    ref_idx, ref_w = gt.reference_adacore(G, D, _budget(0.2, n))
    assert_array_equal(s.indices, ref_idx)
    assert_array_equal(s.weights, ref_w)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adacore_scale_invariance(rng, backend):
    """delta is relative to mean |D|: D * 4 scales every row by 1/4 exactly, grads * 2 by 2: the same bits."""
    G, D = rng.standard_normal((2, 40, 6)), rng.standard_normal((2, 40, 6))

    def run(g, d):
        return ga.select(None, g, hessian_diag=d, strategy="adacore", fraction=0.25, backend=backend,
                         return_info=True)

    base = run(G, D)
    for other in (run(G, 4.0 * D), run(2.0 * G, D), run(G, -D)):
        assert_array_equal(other.indices, base.indices)
        assert_array_equal(other.weights, base.weights)
    assert_array_equal(run(G, 3.0 * D).indices, base.indices)  # any c > 0: the same rows up to rounding


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adacore_softmax_hessian(rng, backend):
    """hessian_diag="softmax" is |e|(1 - |e|) of the residuals, = p(1 - p) for e = p - onehot(y)."""
    Z = 2.0 * rng.standard_normal((2, 40, 4))
    P = np.exp(Z - Z.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    y = rng.integers(0, 4, size=(2, 40))
    E = P - np.eye(4)[y]
    H = rng.standard_normal((2, 40, 5))
    A = np.abs(E)
    assert_allclose(A * (1.0 - A), P * (1.0 - P), rtol=1e-12, atol=1e-15)

    def run(q):
        return ga.select(None, LastLayerGrads(E, H), hessian_diag=q, strategy="adacore", fraction=0.25,
                         backend=backend, return_info=True)

    soft = run("softmax")
    explicit = run(A * (1.0 - A))
    for field in ("indices", "weights", "sizes", "residuals"):
        assert_array_equal(getattr(soft, field), getattr(explicit, field))
    pq = run(P * (1.0 - P))
    assert_array_equal(pq.indices, soft.indices)
    assert_array_equal(pq.weights, soft.weights)
    _check(soft, _per_batch([40] * 2, 0.25,
                            lambda b, m: gt.reference_adacore_last_layer(E[b], P[b] * (1 - P[b]), H[b], m)))


# --------------------------------------------------------------------------------------
# CoLM
# --------------------------------------------------------------------------------------
def _check_colm(s, picked, small):
    """One chunk per source (a single batch): a small source's rows in any order, weight 1 each; a large source's
    rows in the reference's greedy order with its cluster-size weights."""
    segs = _segments(s)
    assert len(segs) == len(picked)
    assert_array_equal(s.batch_labels, sorted(picked))
    for (idx, w), c in zip(segs, sorted(picked)):
        ref_idx, ref_w = picked[c]
        if c in small:
            assert_array_equal(np.sort(idx), np.sort(ref_idx))
            assert_array_equal(w, np.ones(len(idx)))
        else:
            assert_array_equal(idx, ref_idx)
            assert_array_equal(w, ref_w)


def _colm_data(rng, p=7):
    counts = {2: 4, 5: 30, 7: 10, 11: 36}
    src = rng.permutation(np.repeat(list(counts), list(counts.values())))
    return rng.standard_normal((src.size, p)), src


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("small", ["auto", 1, 3, [2, 7], []])
@pytest.mark.parametrize("dims", [3, 2560])
def test_colm_matches_reference(rng, backend, small, dims):
    """eps = 1e-3: with the default 1e-8 a first call's u_i is sign(g_i) to 1e-8, rows of one sign pattern are
    1 - O(1e-16) apart in cosine, and which of them the greedy takes is decided by rounding (see
    test_colm_default_eps_first_call_is_decided_by_rounding). On 3 coordinates the cosine similarities of ~30 rows
    hold exact ties (two rows each the other's best cover), which round-off breaks: there the rows are checked to
    be a greedy order up to rounding (RTOL), on all 7 coordinates they must equal the reference's."""
    G, src = _colm_data(rng)

    def follow(s):
        if dims == 2560:
            return {}
        return dict(follow={int(c): idx for (idx, _), c in zip(_segments(s), np.asarray(s.batch_labels))}, rtol=RTOL)

    k = _budget(0.25, G.shape[0])
    state = ga.ColmState()
    s = ga.select(None, readonly(G), sources=readonly(src), strategy="colm", fraction=0.25, backend=backend,
                  strategy_params={"small_sources": small, "dims": dims, "state": state, "eps": 1e-3},
                  return_info=True)
    picked, small_set, (m1, v1, t1) = gt.reference_colm(G, src, k, small_sources=small, dims=dims, eps=1e-3,
                                                        **follow(s))
    _check_colm(s, picked, small_set)
    assert state.t == t1 == 1
    assert_allclose(state.m, m1, rtol=1e-12, atol=1e-15)
    assert_allclose(state.v, v1, rtol=1e-12, atol=1e-15)
    # the next call normalises by the moments (bias-corrected with t = 2) and moves them again
    G2 = rng.standard_normal(G.shape)
    s2 = ga.select(None, G2, sources=src, strategy="colm", fraction=0.25, backend=backend,
                   strategy_params={"small_sources": small, "dims": dims, "state": state, "eps": 1e-3},
                   return_info=True)
    picked2, small2, (m2, v2, t2) = gt.reference_colm(G2, src, k, small_sources=small, dims=dims, eps=1e-3, m=m1,
                                                      v=v1, t=1, **follow(s2))
    _check_colm(s2, picked2, small2)
    assert state.t == t2 == 2
    assert_allclose(state.m, m2, rtol=1e-12, atol=1e-15)
    assert_allclose(state.v, v2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colm_first_moments_by_hand(rng, backend):
    """After a first call: m = (1 - b1) g, v = (1 - b2) g^2 for g the mean raw gradient of the selected rows."""
    G, src = _colm_data(rng)
    state = ga.ColmState()
    b1, b2 = 0.8, 0.99
    idx = ga.select(None, G, sources=src, strategy="colm", fraction=0.3, backend=backend,
                    strategy_params={"state": state, "beta1": b1, "beta2": b2})
    g = G[np.asarray(idx)].mean(0)
    assert_allclose(state.m, (1 - b1) * g, rtol=1e-12)
    assert_allclose(state.v, (1 - b2) * g * g, rtol=1e-12)
    assert state.t == 1 and repr(state) == "ColmState(t=1, p=7)"
    state.reset()
    assert state.m is None and state.v is None and state.t == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colm_last_layer_and_eps(rng, backend):
    E, H = rng.standard_normal((60, 3)), rng.standard_normal((60, 2))
    src = rng.permutation(np.repeat([0, 1, 2], [5, 25, 30]))
    G = gt.last_layer_gradients(E, H)
    for eps in (1e-8, 0.5):
        state = ga.ColmState()
        s = ga.select(None, LastLayerGrads(E, H), sources=src, strategy="colm", fraction=0.3, backend=backend,
                      strategy_params={"eps": eps, "dims": 5, "state": state}, return_info=True)
        # the default eps: u_i ~ sign(g_i), cosines 1 up to round-off (see below): a greedy order up to RTOL
        follow = {} if eps > 1e-3 else dict(
            follow={int(c): idx for (idx, _), c in zip(_segments(s), np.asarray(s.batch_labels))}, rtol=RTOL)
        picked, small, (m1, v1, _) = gt.reference_colm(G, src, 18, eps=eps, dims=5, **follow)
        _check_colm(s, picked, small)  # the small source (5 rows) weighs 1 a row
        assert state.m.shape == (9,)
        assert_allclose(state.m, m1, rtol=1e-12, atol=1e-15)
        assert_allclose(state.v, v1, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colm_default_eps_first_call(rng, backend):
    """At Adam's first step every normalised gradient is sign(g) up to eps: parallel rows tie exactly (cosine 1)."""
    G, src = _colm_data(rng)
    s = ga.select(None, G, sources=src, strategy="colm", fraction=0.25, backend=backend,
                  strategy_params={"dims": 3}, return_info=True)
    picked, small, _ = gt.reference_colm(G, src, 20, dims=3)
    _check_colm(s, picked, small)


def test_colm_budgets_formula():
    from graft_array.strategies.colm import budgets

    ids = np.array([0, 1, 2])
    # "auto": 5 * 3 > 12, no source is small; ceil(12 n_s / 60)
    assert budgets(ids, np.array([5, 20, 35]), 12, "auto") == {0: 1, 1: 4, 2: 7}
    # 2 * 3 <= 12: source 0 whole, R = 10 over 50 rows
    assert budgets(ids, np.array([2, 10, 40]), 12, "auto") == {0: 2, 1: 2, 2: 8}
    # an int: the k smallest, ties to the lower id
    assert budgets(ids, np.array([10, 4, 4]), 9, 1) == {0: 4, 1: 4, 2: 2}  # R = 5 over 14 rows
    # a list; the small sources eat the budget (R <= 0): one row for each large source
    assert budgets(ids, np.array([6, 6, 30]), 8, [0, 1]) == {0: 6, 1: 6, 2: 1}
    # every source small
    assert budgets(ids, np.array([1, 2, 3]), 6, "auto") == {0: 1, 1: 2, 2: 3}
    assert budgets(ids, np.array([7, 2, 3]), 2, 5) == {0: 7, 1: 2, 2: 3}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colm_small_sources_kept_whole(rng, backend):
    G, src = _colm_data(rng)
    for rule, whole in (("auto", {2}), (1, {2}), (2, {2, 7}), ([5, 11], {5, 11}), (10, {2, 5, 7, 11})):
        s = ga.select(None, G, sources=src, strategy="colm", fraction=0.25, backend=backend,
                      strategy_params={"small_sources": rule}, return_info=True)
        picked = set(np.asarray(s.indices).tolist())
        for c in whole:
            assert set(np.flatnonzero(src == c).tolist()) <= picked
        for (idx, w), c in zip(_segments(s), np.asarray(s.batch_labels)):
            if int(c) in whole:
                assert_array_equal(w, 1.0)
    s = ga.select(None, G, sources=src, strategy="colm", fraction=1.0, backend=backend)  # "auto": all small
    assert_array_equal(np.sort(s), np.arange(G.shape[0]))


def test_colm_state_checks(rng):
    G, src = _colm_data(rng)
    state = ga.ColmState()
    ga.select(None, G, sources=src, strategy="colm", strategy_params={"state": state})
    with pytest.raises(ValueError, match=r"strategy_params\['state'\] holds moments of 7 coordinates.*have 5"):
        ga.select(None, G[:, :5], sources=src, strategy="colm", strategy_params={"state": state})
    assert state.t == 1 and state.m.shape == (7,)  # the refused call left it alone
    a = ga.select(None, G, sources=src, strategy="colm")  # without a state: every call from zero moments
    b = ga.select(None, G, sources=src, strategy="colm")
    assert_array_equal(a, b)
    picked, small, _ = gt.reference_colm(G, src, _budget(0.25, 80))
    assert_array_equal(np.sort(a), np.sort(np.concatenate([picked[c][0] for c in picked])))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colm_stacked_sources_within_a_batch(rng, backend):
    """A stacked call whose sources each fit one batch's length: one chunk per source, as on one batch."""
    G, src = _colm_data(rng)  # 80 rows; sources of 4, 30, 10 and 36 rows
    s = ga.select(None, G.reshape(2, 40, 7), sources=src.reshape(2, 40), strategy="colm", fraction=0.25,
                  backend=backend, return_info=True, strategy_params={"eps": 1e-3})
    picked, small, _ = gt.reference_colm(G, src, 20, eps=1e-3)
    _check_colm(s, picked, small)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_colm_source_longer_than_a_batch(backend):
    """A source longer than the call's largest batch runs in near-equal chunks, each with the source's share."""
    G, src = _colm_data(np.random.default_rng(5))  # sources of 30 and 36 rows, batches of 20
    s = ga.select(None, G.reshape(4, 20, 7), sources=src.reshape(4, 20), strategy="colm", fraction=0.25,
                  backend=backend, return_info=True, strategy_params={"eps": 1e-3})
    from graft_array.strategies.colm import budgets

    ids, counts = np.unique(src, return_counts=True)
    quota = budgets(ids, counts, 20, "auto")
    got = np.asarray(s.indices)
    for c, n_c in zip(ids.tolist(), counts.tolist()):
        parts = np.array_split(np.arange(n_c), -(-n_c // 20))
        want = sum(min(len(p), max(1, int(round(quota[c] / n_c * len(p))))) for p in parts)
        assert int(np.sum(src[got] == c)) == want
    assert len(np.unique(got)) == len(got)


# --------------------------------------------------------------------------------------
# SAS
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("penalty", [True, False])
def test_sas_matches_reference(rng, backend, penalty):
    X = rng.standard_normal((90, 6))
    grp = rng.integers(0, 3, size=90)
    kw = dict(strategy="sas", strategy_params={"penalty": penalty}, backend=backend, return_info=True)
    pick = lambda r, m: gt.reference_sas(X[r], m, penalty)  # noqa: E731
    s = ga.select(readonly(X), groups=readonly(grp), fraction=0.2, **kw)
    _check(s, _per_chunk(grp, 18, 90, pick))
    # a stack: groups across batches, cut into chunks of at most 30 rows
    s = ga.select(X.reshape(3, 30, 6), groups=grp.reshape(3, 30), fraction=0.2, **kw)
    _check(s, _per_chunk(grp, 18, 30, pick))
    # ragged batches with a list of groups
    cut = [0, 20, 55, 90]
    Xs = [X[a:b] for a, b in zip(cut, cut[1:])]
    s = ga.select(Xs, groups=[grp[a:b] for a, b in zip(cut, cut[1:])], fraction=0.3, **kw)
    _check(s, _per_chunk(grp, 27, 35, pick))
    # n_groups=1 on a stack: one group whose chunks are the batches
    s = ga.select(X.reshape(3, 30, 6), fraction=0.2, **dict(kw, strategy_params={"penalty": penalty, "n_groups": 1}))
    _check(s, _per_batch([30] * 3, 0.2, lambda b, m: gt.reference_sas(X[30 * b:30 * (b + 1)], m, penalty)))


@pytest.mark.parametrize("backend", TIE_BACKENDS)
def test_sas_ties_and_zero_rows(rng, backend):
    """Equal embeddings (and zero ones) in index order; the reference's rows where no tie by cancellation arises
    (the penalised greedy's late steps can tie rows that are not equal: round-off breaks those, see RTOL)."""
    gen16 = np.random.default_rng(16)  # data on which OpenBLAS rounds the Gram's equal rows apart
    for gen, n in ((rng, 24), (gen16, int(gen16.integers(10, 60)))):
        pick = gen.integers(0, 6, size=n)
        X = gen.standard_normal((6, 4))[pick]
        X[pick == 5] = 0.0  # zero embeddings: similarity 0 with everything
        for penalty in (True, False):
            for fraction in (0.2, 0.5, 1.0):
                s = ga.select(X, groups=np.zeros(n, dtype=int), strategy="sas", fraction=fraction, backend=backend,
                              strategy_params={"penalty": penalty}, return_info=True)
                _copies_in_index_order(s.indices, pick)
                assert_allclose(s.weights, n / _budget(fraction, n))
                if fraction == 0.2:
                    assert_array_equal(s.indices, gt.reference_sas(X, _budget(fraction, n), penalty)[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sas_scale_invariance(rng, backend):
    X = rng.standard_normal((2, 40, 5))
    grp = rng.integers(0, 2, size=(2, 40))
    a = ga.select(X, groups=grp, strategy="sas", fraction=0.25, backend=backend, return_info=True)
    for c in (8.0, 2.0**-20):
        b = ga.select(c * X, groups=grp, strategy="sas", fraction=0.25, backend=backend, return_info=True)
        assert_array_equal(a.indices, b.indices)
        assert_array_equal(a.weights, b.weights)


def test_sas_penalty_changes_the_order(rng):
    """Two tight clusters, one larger: the penalty spreads the picks, the plain ranking stays in the large one."""
    c1, c2 = rng.standard_normal(4), rng.standard_normal(4)
    c2 -= (c2 @ c1) / (c1 @ c1) * c1  # orthogonal centres
    X = np.vstack([c1 + 0.01 * rng.standard_normal((12, 4)), c2 + 0.01 * rng.standard_normal((8, 4))])
    g = np.zeros(20, dtype=int)
    # 8 picks: the penalty lowers the large cluster's gains (~12 - k) below the small one's (~8) after 5 picks
    plain = ga.select(X, groups=g, strategy="sas", fraction=0.4, strategy_params={"penalty": False})
    spread = ga.select(X, groups=g, strategy="sas", fraction=0.4)
    assert np.all(np.asarray(plain) < 12)
    assert np.any(np.asarray(spread) >= 12)


# --------------------------------------------------------------------------------------
# ClipCov
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_clipcov_matches_reference(rng, backend):
    X, T = _pairs(rng, 90)
    grp = rng.integers(0, 3, size=90)
    kw = dict(strategy="clipcov", backend=backend, return_info=True)
    pick = lambda r, m: gt.reference_clipcov(X[r], T[r], m)  # noqa: E731
    s = ga.select((readonly(X), readonly(T)), groups=readonly(grp), fraction=0.2, **kw)
    _check(s, _per_chunk(grp, 18, 90, pick))
    s = ga.select((X.reshape(3, 30, 5), T.reshape(3, 30, 4)), groups=grp.reshape(3, 30), fraction=0.2, **kw)
    _check(s, _per_chunk(grp, 18, 30, pick))
    cut = [0, 20, 55, 90]
    s = ga.select(([X[a:b] for a, b in zip(cut, cut[1:])], [T[a:b] for a, b in zip(cut, cut[1:])]),
                  groups=[grp[a:b] for a, b in zip(cut, cut[1:])], fraction=0.3, **kw)
    _check(s, _per_chunk(grp, 27, 35, pick))
    s = ga.select((X.reshape(3, 30, 5), T.reshape(3, 30, 4)), fraction=0.2, strategy_params={"n_groups": 1}, **kw)
    _check(s, _per_batch([30] * 3, 0.2, lambda b, m: gt.reference_clipcov(X[30 * b:30 * (b + 1)],
                                                                          T[30 * b:30 * (b + 1)], m)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_clipcov_greedy_steps_minimise_the_objective(rng, backend):
    """Each pick is the pair whose addition gives the smallest ||(1/|S|) sum_S x t^T - C||_F (S: the pairs so far)."""
    X, T = _pairs(rng, 50, noise=1.0)
    idx = np.asarray(ga.select((X, T), groups=np.zeros(50, dtype=int), strategy="clipcov", fraction=0.2,
                               backend=backend))
    C = X.T @ T / 50
    chosen = []
    for j in idx:
        k = len(chosen) + 1
        err = {i: np.linalg.norm((X[chosen + [i]].T @ T[chosen + [i]]) / k - C) for i in range(50) if i not in chosen}
        assert err[j] <= min(err.values()) * (1 + 1e-9)
        chosen.append(int(j))


@pytest.mark.parametrize("backend", TIE_BACKENDS)
def test_clipcov_ties(rng, backend):
    pick = rng.integers(0, 6, size=30)
    X, T = rng.standard_normal((6, 3))[pick], rng.standard_normal((6, 2))[pick]
    for fraction in (0.1, 0.3, 0.7):
        s = ga.select((X, T), groups=np.zeros(30, dtype=int), strategy="clipcov", fraction=fraction,
                      backend=backend)
        _copies_in_index_order(s, pick)
        assert_array_equal(s, gt.reference_clipcov(X, T, _budget(fraction, 30))[0])


def test_cross_covariance_error(rng):
    X, T = rng.standard_normal((40, 5)), rng.standard_normal((40, 3))
    idx = rng.choice(40, 12, replace=False)
    w = rng.uniform(0.5, 3.0, size=12)
    for weights in (None, w):
        assert ga.cross_covariance_error(X, T, idx, weights) == pytest.approx(
            gt.reference_cross_covariance_error(X, T, idx, weights), rel=1e-12)
    assert ga.cross_covariance_error(X, T, np.arange(40)) == pytest.approx(0.0, abs=1e-14)
    assert ga.cross_covariance_error(X, T, np.arange(40), np.full(40, 7.0)) == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_clipcov_keeps_the_cross_covariance(backend):
    rng = np.random.default_rng(7)
    X, T = _pairs(rng, 400, d=8, e=6, latent=4, noise=0.5)
    X += rng.standard_normal(8)  # an offset: a non-central cross-covariance
    idx = ga.select((X, T), strategy="clipcov", fraction=0.1, random_state=0, backend=backend)
    err = ga.cross_covariance_error(X, T, idx)
    rand = [ga.cross_covariance_error(X, T, rng.choice(400, len(idx), replace=False)) for _ in range(20)]
    assert len(idx) >= 40 and err < np.mean(rand)  # each k-means group its ceil(k n_c / N) rows


# --------------------------------------------------------------------------------------
# MKDT / PDD
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("strategy", ["mkdt", "pdd"])
def test_top_scores_match_reference(rng, backend, strategy):
    S = rng.standard_normal((3, 30))
    F = rng.standard_normal((3, 30, 2))
    kw = dict(strategy=strategy, backend=backend, return_info=True)
    s = ga.select(readonly(F), scores=readonly(S), fraction=0.2, **kw)
    _check(s, _per_batch([30] * 3, 0.2, lambda b, m: gt.reference_top_scores(S[b], m)))
    s = ga.select(None, scores=S, fraction=0.2, **kw)  # the scores alone
    _check(s, _per_batch([30] * 3, 0.2, lambda b, m: gt.reference_top_scores(S[b], m)))
    flat = S.ravel()
    lab = rng.integers(0, 4, size=90)
    s = ga.select(F.reshape(90, 2), scores=flat, labels=lab, fraction=0.2, **kw)
    _check(s, _per_chunk(lab, 18, 90, lambda r, m: gt.reference_top_scores(flat[r], m)))
    lengths = [12, 30, 7]
    parts = np.split(flat[:49], np.cumsum(lengths)[:-1])
    s = ga.select([np.zeros((n, 1)) for n in lengths], scores=parts, fraction=0.3, **kw)
    _check(s, _per_batch(lengths, 0.3, lambda b, m: gt.reference_top_scores(parts[b], m)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_top_scores_ties_and_monotone_transform(rng, backend):
    S = rng.integers(0, 4, size=(2, 40)).astype(np.float64)  # many equal scores
    for fraction in (0.1, 0.5, 1.0):
        idx = ga.select(np.zeros((2, 40, 1)), scores=S, strategy="mkdt", fraction=fraction, backend=backend)
        exp = _per_batch([40] * 2, fraction, lambda b, m: gt.reference_top_scores(S[b], m))[0]
        assert_array_equal(idx, exp)
    R = rng.standard_normal((2, 40))
    a = ga.select(np.zeros((2, 40, 1)), scores=R, strategy="mkdt", fraction=0.3, backend=backend)
    for f in (lambda s: np.exp(s / 3.0), lambda s: s**3 + s, lambda s: 1e-3 * s - 7.0):
        assert_array_equal(ga.select(np.zeros((2, 40, 1)), scores=f(R), strategy="mkdt", fraction=0.3,
                                     backend=backend), a)
    b = ga.select(np.zeros((2, 40, 1)), scores=-R, strategy="pdd", fraction=0.3, backend=backend)
    assert not set(np.asarray(a).tolist()) & set(np.asarray(b).tolist())  # the other end


# --------------------------------------------------------------------------------------
# k-means groups, determinism, the global RNG
# --------------------------------------------------------------------------------------
def _blobs(rng, k=4, per=25, d=3, spread=0.05):
    C = 10.0 * rng.standard_normal((k, d))
    truth = np.repeat(np.arange(k), per)
    return C[truth] + spread * rng.standard_normal((k * per, d)), truth


def test_kmeans_labels_recover_separated_groups(rng):
    from graft_array._family import kmeans_labels

    X, truth = _blobs(rng)
    perm = rng.permutation(X.shape[0])
    X, truth = X[perm], truth[perm]
    for seed in (0, 1, 12345):
        lab = kmeans_labels(X, None, 4, seed)
        assert lab.shape == (100,) and lab.dtype == np.int64
        pairs = set(zip(lab.tolist(), truth.tolist()))
        assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4  # a bijection between clusters and blobs
        assert_array_equal(kmeans_labels(X, None, 4, seed), lab)
    assert_array_equal(kmeans_labels(X, None, 1, 0), 0)
    assert set(kmeans_labels(X[:3], None, 10, 0).tolist()) <= {0, 1, 2}  # min(n_groups, rows) groups
    lab3 = kmeans_labels(X.reshape(4, 25, 3), None, 4, 0)
    assert lab3.shape == (4, 25)
    ragged = kmeans_labels([X[:40], X[40:]], None, 4, 0)
    assert [a.shape for a in ragged] == [(40,), (60,)]
    mask = np.ones(100, dtype=bool)
    mask[::7] = False
    Xn = X.copy()
    Xn[~mask] = np.nan  # padding is not read
    lm = kmeans_labels(Xn, mask, 4, 0)
    assert np.all(lm[~mask] == 0) and len(set(zip(lm[mask].tolist(), truth[mask].tolist()))) == 4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("strategy", ["sas", "clipcov"])
def test_kmeans_groups_are_seeded(rng, backend, strategy):
    from graft_array._family import kmeans_labels

    X, T = _pairs(rng, 120, noise=1.0)
    feats = (X, T) if strategy == "clipcov" else X
    kw = dict(strategy=strategy, fraction=0.2, backend=backend, return_info=True)
    a = ga.select(feats, random_state=3, **kw)
    b = ga.select(feats, random_state=np.random.default_rng(3), **kw)
    assert_array_equal(a.indices, b.indices)
    assert_array_equal(a.weights, b.weights)
    groups = kmeans_labels(X, None, 10, _seed(3))  # k-means of the image embeddings for ClipCov
    c = ga.select(feats, groups=groups, **kw)
    assert_array_equal(a.indices, c.indices)
    assert_array_equal(a.batch_labels, c.batch_labels)
    Xb, truth = _blobs(rng, k=3, per=30)
    feats = (Xb, Xb[:, ::-1] + 1.0) if strategy == "clipcov" else Xb
    # random_state=1: k-means++ is random; with random_state=0 on these blobs it draws (p ~ 1e-3) a second centre
    # in the blob of the first and Lloyd keeps two blobs together
    s = ga.select(feats, strategy=strategy, fraction=0.2, strategy_params={"n_groups": 3}, random_state=1,
                  backend=backend)
    assert_array_equal(np.bincount(truth[np.asarray(s)]), [6, 6, 6])  # each blob its share


def test_global_rng_untouched(rng):
    X, T = _pairs(rng, 60)
    G = rng.standard_normal((60, 5))
    calls = [
        dict(features=None, grads=G, strategy="adacore", hessian_diag=np.abs(G)),
        dict(features=None, grads=G, strategy="colm", sources=np.arange(60) % 3,
             strategy_params={"state": ga.ColmState()}),
        dict(features=X, strategy="sas"),
        dict(features=(X, T), strategy="clipcov"),
        dict(features=X, strategy="mkdt", scores=G[:, 0]),
        dict(features=X, strategy="pdd", scores=G[:, 1]),
    ]
    np.random.seed(1234)
    before = np.random.get_state()
    for kw in calls:
        for random_state in (None, 5):
            ga.select(**kw, random_state=random_state)
    after = np.random.get_state()
    assert before[0] == after[0] and before[2:] == after[2:]
    assert_array_equal(before[1], after[1])


# --------------------------------------------------------------------------------------
# bad input: the error names the argument; inputs are not modified
# --------------------------------------------------------------------------------------
def _bad(rng):
    G = rng.standard_normal((2, 30, 5))
    X = rng.standard_normal((2, 30, 4))
    return G, X


@pytest.mark.parametrize("case", [
    # hessian_diag
    (dict(grads="G", strategy="adacore"), ValueError, "needs 'hessian_diag'"),
    (dict(grads="G", strategy="adacore", hessian_diag="D4"), ValueError, "'hessian_diag' laid out like 'grads'"),
    (dict(grads="G", strategy="adacore", hessian_diag="Dnan"), ValueError, "'hessian_diag' to contain only finite"),
    (dict(grads="G", strategy="adacore", hessian_diag="Dlist"), TypeError, "'hessian_diag'"),
    (dict(grads="G", strategy="adacore", hessian_diag="softmax"), ValueError, "hessian_diag='softmax' needs"),
    (dict(grads="LL", strategy="adacore", hessian_diag="foo"), ValueError, "'hessian_diag' parameter"),
    (dict(grads="LL", strategy="adacore", hessian_diag="D"), ValueError, "'hessian_diag' laid out like "
                                                                         "'grads.residuals'"),
    (dict(features=None, strategy="adacore", hessian_diag="D"), ValueError, "needs per-sample gradients"),
    # scores
    (dict(strategy="mkdt"), ValueError, "needs 'scores'"),
    (dict(strategy="mkdt", scores="S29"), ValueError, "'scores' with one score per row"),
    (dict(strategy="pdd", scores="S3d"), ValueError, "'scores' of shape"),
    (dict(strategy="pdd", scores="Snan"), ValueError, "'scores' to contain only finite"),
    (dict(strategy="mkdt", scores=[1.0, 2.0]), TypeError, r"'scores\[0\]'"),
    # the family's inputs given to a strategy that does not take them
    (dict(strategy="sas", sources="lab"), ValueError, "'sources' parameter of select applies to strategy='colm'"),
    (dict(grads="G", strategy="adacore", hessian_diag="D", groups="lab"), ValueError,
     "'groups' parameter of select applies to strategy='sas' or 'clipcov'"),
    (dict(grads="G", strategy="craig", hessian_diag="D"), ValueError, "'hessian_diag' parameter of select applies"),
    (dict(strategy="graft", scores="S"), ValueError, "'scores' parameter of select applies to strategy='mkdt' or "
                                                     "'pdd'"),
    (dict(grads="G", strategy="colm", labels="lab", sources="lab"), ValueError, "one of 'labels' and 'sources'"),
    (dict(strategy="sas", labels="lab", groups="lab"), ValueError, "one of 'labels' and 'groups'"),
    (dict(grads="G", strategy="colm"), ValueError, "needs 'sources'"),
    (dict(grads="G", strategy="sas"), ValueError, "strategy='sas' does not read per-sample gradients"),
    (dict(grads="G", strategy="mkdt", scores="S"), ValueError, "strategy='mkdt' does not read"),
    # strategy_params
    (dict(strategy="sas", strategy_params={"damping": 1.0}), ValueError, r"key\(s\) 'damping'.*takes: 'penalty', "
                                                                        "'n_groups'"),
    (dict(grads="G", strategy="craig", strategy_params={"x": 1}), ValueError, r"'x'.*takes: none"),
    (dict(strategy="sas", strategy_params=[("penalty", True)]), TypeError, "'strategy_params' parameter"),
    (dict(grads="G", strategy="adacore", hessian_diag="D", strategy_params={"damping": 0.0}), ValueError,
     r"strategy_params\['damping'\]"),
    (dict(grads="G", strategy="adacore", hessian_diag="D", strategy_params={"damping": float("nan")}), ValueError,
     r"strategy_params\['damping'\]"),
    (dict(grads="G", strategy="adacore", hessian_diag="D", strategy_params={"damping": "big"}), TypeError,
     r"strategy_params\['damping'\]"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"beta1": 1.0}), ValueError,
     r"strategy_params\['beta1'\].*\[0, 1\)"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"beta2": -0.1}), ValueError,
     r"strategy_params\['beta2'\]"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"eps": 0.0}), ValueError,
     r"strategy_params\['eps'\]"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"dims": 0}), ValueError,
     r"strategy_params\['dims'\]"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"small_sources": "some"}), TypeError,
     r"strategy_params\['small_sources'\]"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"small_sources": -1}), ValueError,
     r"strategy_params\['small_sources'\]"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"small_sources": [1.5]}), TypeError,
     r"strategy_params\['small_sources'\]"),
    (dict(grads="G", strategy="colm", sources="lab", strategy_params={"state": {}}), TypeError,
     r"strategy_params\['state'\].*ColmState"),
    (dict(strategy="sas", strategy_params={"penalty": 1}), TypeError, r"strategy_params\['penalty'\]"),
    (dict(strategy="sas", strategy_params={"n_groups": 0}), ValueError, r"strategy_params\['n_groups'\]"),
    # ClipCov's pair
    (dict(strategy="clipcov"), TypeError, "'features' to be a pair"),
    (dict(features="XXX", strategy="clipcov"), TypeError, "'features' to be a pair"),
    (dict(features="XT29", strategy="clipcov"), ValueError, r"features\[1\] must have the leading shape"),
    (dict(features="XT1d", strategy="clipcov"), ValueError, r"features\[1\]"),
])
def test_bad_input_names_the_argument(rng, case):
    kw, exc, msg = case
    G, X = _bad(rng)
    lab = np.tile(np.arange(30) % 3, (2, 1))
    S = rng.standard_normal((2, 30))
    E, H = rng.standard_normal((2, 30, 3)), rng.standard_normal((2, 30, 2))
    lookup = {
        "G": G, "LL": LastLayerGrads(E, H), "D": np.abs(G), "D4": G[..., :4], "Dlist": [G[0], G[1]],
        "Dnan": np.where(np.arange(5) == 2, np.nan, G), "S": S, "S29": S[:, :29], "S3d": S[..., None],
        "Snan": np.where(np.arange(30) == 4, np.nan, S), "lab": lab, "XXX": (X, X, X),
        "XT29": (X, X[:, :29]), "XT1d": (X, X[..., 0]),
    }
    kw = {k: lookup.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    kw.setdefault("features", X)
    with pytest.raises(exc, match=msg):
        ga.select(**kw)


@pytest.mark.parametrize("strategy", ["colm", "sas", "clipcov"])
def test_bad_sources_and_groups_name_the_argument(rng, strategy):
    """sources / groups of the wrong shape or dtype: the message names the argument given."""
    G, X = _bad(rng)
    nm = "sources" if strategy == "colm" else "groups"
    feats = (X, X) if strategy == "clipcov" else X
    grads = G if strategy == "colm" else None
    for bad in (np.zeros((2, 29), dtype=int), np.zeros((2, 30)), np.zeros(60, dtype=int),
                np.zeros((2, 30), dtype=bool), [[0] * 30, [0] * 29]):
        with pytest.raises(ValueError, match=f"'{nm}' parameter of select must hold"):
            ga.select(feats, grads, strategy=strategy, **{nm: bad})
    # ragged batches: one array per batch
    Xl = [X[0], X[1, :20]]
    feats = (Xl, Xl) if strategy == "clipcov" else Xl
    grads = [G[0], G[1, :20]] if strategy == "colm" else None
    with pytest.raises(TypeError, match=f"'{nm}' parameter of select must be a list of 2"):
        ga.select(feats, grads, strategy=strategy, **{nm: np.zeros(50, dtype=int)})
    with pytest.raises(ValueError, match=rf"'{nm}\[1\]' parameter of select must hold one int id per row of "
                                         r"'features\[1\]' \(shape \(20,\)\)"):
        ga.select(feats, grads, strategy=strategy, **{nm: [np.zeros(30, dtype=int), np.zeros(21, dtype=int)]})
    ok = ga.select(feats, grads, strategy=strategy, **{nm: [np.zeros(30, dtype=int), np.ones(20, dtype=int)]})
    assert len(ok) > 0


def test_inputs_not_modified(rng):
    G, X = _bad(rng)
    D = rng.standard_normal(G.shape)
    T = rng.standard_normal((2, 30, 3))
    E, H, Q = rng.standard_normal((2, 30, 3)), rng.standard_normal((2, 30, 2)), rng.uniform(0, 1, (2, 30, 3))
    S = rng.standard_normal((2, 30))
    lab = np.tile(np.arange(30) % 3, (2, 1))
    arrays = [G, X, D, T, E, H, Q, S, lab]
    copies = [a.copy() for a in arrays]
    Gl, Dl = [G[0], G[1, :20]], [D[0], D[1, :20]]
    lists = [Gl, Dl]
    lcopies = [[a.copy() for a in lst] for lst in lists]
    state = ga.ColmState()
    ga.select(None, G, hessian_diag=D, strategy="adacore")
    ga.select(X, G, hessian_diag=D, labels=lab, strategy="adacore", backend="array_api")
    ga.select([X[0], X[1, :20]], Gl, hessian_diag=Dl, strategy="adacore")
    ga.select(X, LastLayerGrads(E, H), hessian_diag=Q, strategy="adacore")
    ga.select(X, LastLayerGrads(E, H), hessian_diag="softmax", strategy="adacore")
    for _ in range(2):
        ga.select(X, G, sources=lab, strategy="colm", strategy_params={"state": state})
        ga.select(X, LastLayerGrads(E, H), sources=lab, strategy="colm")
    ga.select(X, groups=lab, strategy="sas")
    ga.select(X, strategy="sas", backend="array_api")
    ga.select((X, T), strategy="clipcov")
    ga.select((X, T), groups=lab, strategy="clipcov", backend="array_api")
    ga.select(X, scores=S, strategy="mkdt")
    ga.select(None, scores=S, labels=lab, strategy="pdd")
    ga.cross_covariance_error(X[0], T[0], np.arange(5))
    for a, c in zip(arrays, copies):
        assert_array_equal(a, c)
    for lst, cl in zip(lists, lcopies):
        for a, c in zip(lst, cl):
            assert_array_equal(a, c)
    held, copy = state.m, state.m.copy()  # a caller may keep the moments: they are replaced, never written to
    ga.select(X, G, sources=lab, strategy="colm", strategy_params={"state": state})
    assert_array_equal(held, copy)
    assert state.t == 3 and state.m is not held


# --------------------------------------------------------------------------------------
# properties on random shapes: the orders are greedy orders up to rounding-level ties
# --------------------------------------------------------------------------------------
def _follow_chunks(s, labels, k, width, ref):
    """Each chunk's rows and weights are ref(rows, m, follow=the chunk's selection in local positions)."""
    segs = _segments(s)
    chunks = gt.reference_class_chunks(labels, k, width)
    assert len(segs) == len(chunks)
    for (idx, w), (_, rows, m) in zip(segs, chunks):
        assert len(idx) == m
        where = {int(r): j for j, r in enumerate(rows)}
        local = [where[int(i)] for i in idx]
        ref_idx, ref_w = ref(rows, m, local)
        assert_array_equal(ref_idx, local)
        assert_allclose(w, ref_w, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 25), d=st.integers(1, 4), fraction=st.floats(0.01, 1.0), penalty=st.booleans(),
       n_groups=st.integers(1, 3), seed=st.integers(0, 2**16), backend=st.sampled_from(CPU_BACKENDS))
def test_sas_property(n, d, fraction, penalty, n_groups, seed, backend):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    grp = rng.integers(0, n_groups, size=n)
    s = ga.select(X, groups=grp, strategy="sas", fraction=fraction, strategy_params={"penalty": penalty},
                  backend=backend, return_info=True)
    _follow_chunks(s, grp, _budget(fraction, n), n,
                   lambda r, m, f: gt.reference_sas(X[r], m, penalty, follow=f, rtol=RTOL))
    assert len(set(np.asarray(s.indices).tolist())) == len(s.indices)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 25), d=st.integers(1, 4), e=st.integers(1, 3), fraction=st.floats(0.01, 1.0),
       n_groups=st.integers(1, 3), seed=st.integers(0, 2**16), backend=st.sampled_from(CPU_BACKENDS))
def test_clipcov_property(n, d, e, fraction, n_groups, seed, backend):
    rng = np.random.default_rng(seed)
    X, T = rng.standard_normal((n, d)), rng.standard_normal((n, e))
    grp = rng.integers(0, n_groups, size=n)
    s = ga.select((X, T), groups=grp, strategy="clipcov", fraction=fraction, backend=backend, return_info=True)
    _follow_chunks(s, grp, _budget(fraction, n), n,
                   lambda r, m, f: gt.reference_clipcov(X[r], T[r], m, follow=f, rtol=RTOL))
    assert len(set(np.asarray(s.indices).tolist())) == len(s.indices)


@settings(max_examples=25, deadline=None)
@given(nb=st.integers(1, 3), n=st.integers(1, 25), p=st.integers(1, 5), fraction=st.floats(0.01, 1.0),
       damping=st.sampled_from([1e-6, 1e-3, 0.5]), seed=st.integers(0, 2**16), backend=st.sampled_from(CPU_BACKENDS))
def test_adacore_property(nb, n, p, fraction, damping, seed, backend):
    rng = np.random.default_rng(seed)
    G, D = rng.standard_normal((nb, n, p)), rng.standard_normal((nb, n, p))
    s = ga.select(None, G, hessian_diag=D, strategy="adacore", fraction=fraction, backend=backend,
                  strategy_params={"damping": damping}, return_info=True)
    m = _budget(fraction, n)
    assert_array_equal(s.sizes, [m] * nb)
    for b, (idx, w) in enumerate(_segments(s)):
        ref_idx, ref_w = gt.reference_adacore(G[b], D[b], m, damping, follow=idx - n * b, rtol=RTOL)
        assert_array_equal(idx - n * b, ref_idx)
        assert_array_equal(w, ref_w)
        assert float(w.sum()) == n


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), p=st.integers(2, 5), n_src=st.integers(1, 4), fraction=st.floats(0.05, 1.0),
       small=st.sampled_from(["auto", 0, 1, 2]), dims=st.integers(2, 6), seed=st.integers(0, 2**16),
       backend=st.sampled_from(CPU_BACKENDS))
def test_colm_property(n, p, n_src, fraction, small, dims, seed, backend):
    """dims >= 2: on one coordinate every cosine is +-1 exactly, all ties, which round-off decides."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, p))
    src = rng.integers(0, n_src, size=n)
    state = ga.ColmState()
    s = ga.select(None, G, sources=src, strategy="colm", fraction=fraction, backend=backend, return_info=True,
                  strategy_params={"small_sources": small, "dims": dims, "eps": 1e-3, "state": state})
    follow = {int(c): idx for (idx, _), c in zip(_segments(s), np.asarray(s.batch_labels))}
    picked, small_set, (m1, v1, _) = gt.reference_colm(G, src, _budget(fraction, n), small_sources=small,
                                                       dims=dims, eps=1e-3, follow=follow, rtol=RTOL)
    _check_colm(s, picked, small_set)
    assert_allclose(state.m, m1, rtol=1e-12, atol=1e-15)
    assert_allclose(state.v, v1, rtol=1e-12, atol=1e-15)
