"""graft_array.adapters.dask with labels: select_dask equals one labelled select call; the shuffle; errors."""

import warnings

import numpy as np
import pytest

import graft_array as ga

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft_array.adapters import dask as gdask
from graft_array.adapters.dask import GROUPED, SOURCED, SUPPORTED, select_dask
from test_dask import _data as _unlabelled

N, D, C, HDIM, BS = 700, 10, 5, 12, 64  # 10 batches of 64 and a ragged one of 60


def _data(n=N, seed=0, classes=5):
    X, E, H, G, scores = _unlabelled(n, seed, D, C, HDIM)
    rng = np.random.default_rng([seed, 1])
    # unbalanced classes, not sorted, with gaps and negative ids
    labels = (rng.choice(classes, size=n, p=np.arange(1, classes + 1) / (classes * (classes + 1) / 2)) - 1) * 3
    return X, E, H, G, scores, labels


def _cut(x, n, bs):
    """x laid out as one select call over the dataset's batches: a stack, or a list with the short last one."""
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, tuple):
        return tuple(_cut(p, n, bs) for p in x)
    if n % bs == 0:
        return x.reshape((n // bs, bs) + x.shape[1:])
    return [x[a:a + bs] for a in range(0, n, bs)]


def _dask(x, chunks):
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, tuple):
        return tuple(_dask(p, chunks) for p in x)
    return da.from_array(x, chunks=(chunks,) + (-1,) * (x.ndim - 1))


def _grads(grads, f):
    if isinstance(grads, ga.LastLayerGrads):
        return ga.LastLayerGrads(f(grads[0]), f(grads[1]))
    return f(grads)


def _both(X, grads, labels, chunks, bs=BS, key="labels", scheduler="sync", **kw):
    """(select_dask's result computed, one select call's Selection) for the same arguments."""
    n = len(labels)
    ref_kw = {k: _cut(v, n, bs) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    ref = ga.select(_cut(X, n, bs), _grads(grads, lambda a: _cut(a, n, bs)), return_info=True,
                    **{key: _cut(labels, n, bs)}, **ref_kw)
    dkw = {k: _dask(v, chunks) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    out = select_dask(_dask(X, chunks), _grads(grads, lambda a: _dask(a, chunks)), batch_size=bs,
                      **{key: _dask(labels, chunks)}, **dkw)
    with dask.config.set(scheduler=scheduler):
        return dask.compute(*out), ref


def _assert_equal(got, ref):
    idx, w, sizes = got
    np.testing.assert_array_equal(idx, np.asarray(ref.indices))
    np.testing.assert_array_equal(w, np.asarray(ref.weights))  # bit for bit
    np.testing.assert_array_equal(sizes, np.asarray(ref.sizes))
    assert idx.dtype == np.int64 and w.dtype == np.float64 and sizes.dtype == np.int64


def _case(strategy, seed=0):
    """(features, grads, labels, extra select kwargs) for a strategy, as numpy arrays."""
    X, E, H, G, scores, labels = _data(seed=seed)
    if strategy in ("mkdt", "pdd"):
        return X, None, labels, dict(scores=scores)
    if strategy == "adacore":
        return X, ga.LastLayerGrads(E, H), labels, dict(hessian_diag="softmax")
    return X, ga.LastLayerGrads(E, H), labels, {}


# ------------------------------------------------------------------------------------------------ equality

# even (whole batches), uneven with the ragged batch in the last chunk, misaligned (no whole batches), an empty
# chunk and one chunk
CHUNKINGS = [BS * 4, (BS * 2, BS * 7, N - BS * 9), 100, (250, 0, 200, N - 450), N]
IDS = ["even", "uneven", "misaligned", "empty", "one"]


@pytest.mark.parametrize("strategy", SUPPORTED)
@pytest.mark.parametrize("chunks", CHUNKINGS[:3], ids=IDS[:3])
def test_labels_equal_one_select_call(strategy, chunks):
    X, grads, labels, kw = _case(strategy)
    _assert_equal(*_both(X, grads, labels, chunks, strategy=strategy, random_state=7, fraction=0.3, **kw))


@pytest.mark.parametrize("chunks", CHUNKINGS[3:], ids=IDS[3:])
@pytest.mark.parametrize("strategy", ["graft", "gradmatch", "crest"])
def test_labels_empty_chunk_and_one_chunk(strategy, chunks):
    X, grads, labels, kw = _case(strategy, seed=1)
    _assert_equal(*_both(X, grads, labels, chunks, strategy=strategy, random_state=2, fraction=0.2, **kw))


@pytest.mark.parametrize("budget", ["call", "batch", 123])
@pytest.mark.parametrize("grads_kind", ["last_layer", "plain", "none"])
def test_labels_graft_budgets_and_gradients(budget, grads_kind):
    X, E, H, G, _, labels = _data(seed=3)
    grads = {"last_layer": ga.LastLayerGrads(E, H), "plain": G, "none": None}[grads_kind]
    _assert_equal(*_both(X, grads, labels, (BS * 3, 130, N - BS * 3 - 130), budget=budget, random_state=3,
                         fraction=0.3))


@pytest.mark.parametrize("random_state", [0, 1, 12345, 2**40])
@pytest.mark.parametrize("strategy", ["graft", "random", "gradmatch"])
def test_labels_random_states(strategy, random_state):
    X, grads, labels, kw = _case(strategy, seed=4)
    if strategy == "graft":
        kw["solver"] = "randomized"  # the seed draws the test matrix
    _assert_equal(*_both(X, grads, labels, 150, strategy=strategy, random_state=random_state, fraction=0.25, **kw))


def test_labels_generator_moves_on_like_one_select_call():
    X, E, H, _, _, labels = _data(seed=5)
    g1, g2 = np.random.default_rng(11), np.random.default_rng(11)
    n = len(labels)
    ref = ga.select(_cut(X, n, BS), ga.LastLayerGrads(_cut(E, n, BS), _cut(H, n, BS)), labels=_cut(labels, n, BS),
                    random_state=g1, return_info=True, solver="randomized")
    out = select_dask(_dask(X, 200), ga.LastLayerGrads(_dask(E, 200), _dask(H, 200)), batch_size=BS,
                      labels=_dask(labels, 200), random_state=g2, solver="randomized")
    _assert_equal(dask.compute(*out, scheduler="sync"), ref)
    assert g1.integers(2**62) == g2.integers(2**62)


def test_balanced_classes_share_stacks():
    """Equal classes: equal shares k_c / n_c, so one labelled call stacks chunks of several classes together."""
    X, E, H, _, _, _ = _data(n=768, seed=6)
    labels = np.tile(np.arange(4), 192)[np.random.default_rng(0).permutation(768)]  # 4 classes of 192 = 3 x 64
    for budget, bs in (("call", 64), ("call", 50), (200, 50)):  # 192 rows: 3 x 64, or 4 chunks of 48
        _assert_equal(*_both(X, ga.LastLayerGrads(E, H), labels, 100, bs=bs, budget=budget, random_state=1,
                             fraction=0.3))


def test_batch_size_above_the_rows_and_one_class():
    X, E, H, _, _, labels = _data(n=90, seed=7)
    _assert_equal(*_both(X, ga.LastLayerGrads(E, H), labels, 40, bs=128, random_state=0))  # width = n
    _assert_equal(*_both(X, ga.LastLayerGrads(E, H), np.full(90, 4), 40, bs=32, random_state=0))


def test_features_none_and_plain_hessian():
    X, E, H, G, _, labels = _data(seed=8)
    _assert_equal(*_both(None, ga.LastLayerGrads(E, H), labels, 128, random_state=1))
    D2 = np.abs(np.random.default_rng(9).standard_normal(G.shape))
    _assert_equal(*_both(X, G, labels, 128, strategy="adacore", hessian_diag=D2, random_state=1))


def test_misaligned_chunks_need_no_rechunk():
    X, E, H, _, _, labels = _data(seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rechunking" warning: the shuffle forms the class chunks
        got, ref = _both(X, ga.LastLayerGrads(E, H), labels, 77, random_state=4)
    _assert_equal(got, ref)


def test_threaded_scheduler_gives_the_same():
    X, E, H, _, _, labels = _data(seed=10)
    _assert_equal(*_both(X, ga.LastLayerGrads(E, H), labels, 96, scheduler="threads", random_state=4))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 260),
    bs=st.integers(1, 70),
    classes=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 260), max_size=5),
    case=st.sampled_from([("random", "call"), ("craig", "call"), ("graft", "call"), ("graft", "batch"),
                          ("graft", 17), ("crest", "call")]),
    seed=st.integers(0, 2**32 - 1),
)
def test_labels_property_any_chunking(n, bs, classes, cuts, case, seed):
    strategy, budget = case
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    E, H = rng.standard_normal((n, 3)), rng.standard_normal((n, 4))
    labels = rng.integers(0, classes, n) * 10 - 7
    edges = sorted({0, n, *(c for c in cuts if c <= n)})
    chunks = tuple(np.diff(edges).tolist()) if n else (0,)
    kw = dict(strategy=strategy, random_state=seed, fraction=0.3)
    if strategy == "graft":
        kw["budget"] = budget
    _assert_equal(*_both(X, ga.LastLayerGrads(E, H), labels, chunks, bs=bs, **kw))


# ------------------------------------------------------------------------------------------------ the shuffle


def _shuffled(labels, chunks, bs, target, whole):
    """The class chunks the shuffle forms: [(rows, the rows' data)], in the call's chunk order."""
    n = len(labels)
    edges = np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)
    hists = [gdask._label_counts(labels[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    layout, where, specs, sources, _, _ = gdask._class_plan(hists, n, min(bs, n), 1, target, whole)
    data = np.arange(n) * 10 + 3  # a row's data: its id, so a row that moves without its data is caught
    splits = [gdask._split(layout, int(a), w[0], w[1], None, labels[a:b], data[a:b])
              for (a, b), w in zip(zip(edges[:-1], edges[1:]), where)]
    out = []
    for g, (spec, src) in enumerate(zip(specs, sources)):
        pieces = [gdask._piece(splits[i], g) for i in src]
        assert all(p is not None for p in pieces)  # only the chunks that hold the group's rows
        assert sorted(i for i, s in enumerate(splits) if g in s) == src
        rows, blocks = gdask._gather(spec, 1, pieces)
        out.extend(zip(rows, blocks[0]))
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), bs=st.integers(1, 90), classes=st.integers(1, 9),
       cuts=st.lists(st.integers(0, 400), max_size=6), seed=st.integers(0, 2**32 - 1), target=st.integers(1, 200),
       whole=st.booleans())
def test_shuffle_puts_every_row_in_its_class_chunk(n, bs, classes, cuts, seed, target, whole):
    labels = np.random.default_rng(seed).integers(-3, classes, n)
    edges = sorted({0, n, *(c for c in cuts if c <= n)})
    chunks = tuple(np.diff(edges).tolist())
    width = min(bs, n)
    want = [part for c in np.unique(labels)
            for part in np.array_split(np.flatnonzero(labels == c), -(-int((labels == c).sum()) // width))]
    got = _shuffled(labels, chunks, bs, target, whole)
    assert len(got) == len(want)
    for (rows, data), ref in zip(got, want):
        np.testing.assert_array_equal(rows, ref)
        np.testing.assert_array_equal(data, ref * 10 + 3)


def test_labels_that_change_between_passes_raise():
    X, E, H, _, _, labels = _data(seed=11)
    calls = []

    def fresh(block):  # different labels each time the graph computes them
        calls.append(1)
        return (block + len(calls)) % 3

    lab = _dask(labels, 100).map_blocks(fresh, dtype=labels.dtype)
    out = select_dask(_dask(X, 100), None, batch_size=BS, labels=lab, strategy="random", random_state=0)
    with pytest.raises(RuntimeError, match="labels"):
        dask.compute(*out, scheduler="sync")


# ------------------------------------------------------------------------------------------------ groups


@pytest.mark.parametrize("chunks", [BS * 3, 110], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("strategy", GROUPED)
def test_groups_equal_one_select_call(strategy, chunks):
    X, _, _, _, _, labels = _data(seed=12)
    T = np.random.default_rng(13).standard_normal((N, 7))
    features = (X, T) if strategy == "clipcov" else X
    _assert_equal(*_both(features, None, labels, chunks, key="groups", strategy=strategy, random_state=5,
                         fraction=0.2))
    if strategy == "sas":  # labels work as the groups, as in select
        _assert_equal(*_both(X, None, labels, chunks, strategy="sas", random_state=5, fraction=0.2,
                             strategy_params={"penalty": False}))


@pytest.mark.parametrize("chunks", [BS * 3, 110, (250, 0, 200, N - 450)], ids=["aligned", "misaligned", "empty"])
@pytest.mark.parametrize("strategy", GROUPED)
def test_groups_default_kmeans_equals_one_select_call(strategy, chunks):
    """Without groups: select's k-means of all the rows (one task, select's seed), then the grouped path."""
    X, *_ = _data(seed=14)
    T = np.random.default_rng(15).standard_normal((N, 7))
    features = (X, T) if strategy == "clipcov" else X
    params = {"n_groups": 4}
    for random_state in (5, 2**40):
        ref = ga.select(_cut(features, N, BS), None, strategy=strategy, strategy_params=params, fraction=0.2,
                        random_state=random_state, return_info=True)
        out = select_dask(_dask(features, chunks), None, batch_size=BS, strategy=strategy, strategy_params=params,
                          fraction=0.2, random_state=random_state)
        with dask.config.set(scheduler="sync"):
            _assert_equal(dask.compute(*out), ref)
    g_ref, g = np.random.default_rng(3), np.random.default_rng(3)  # a Generator moves on by select's one draw
    ref = ga.select(_cut(features, N, BS), None, strategy=strategy, random_state=g_ref, return_info=True)
    out = select_dask(_dask(features, chunks), None, batch_size=BS, strategy=strategy, random_state=g)
    with dask.config.set(scheduler="sync"):
        _assert_equal(dask.compute(*out), ref)
    assert g.integers(2**63) == g_ref.integers(2**63)


def test_every_strategy_is_supported_grouped_or_sourced():
    X, *_, labels = _data()
    Xd = _dask(X, 200)
    assert set(SUPPORTED) | set(GROUPED) | set(SOURCED) == set(ga.strategies.NAMES)
    assert SOURCED == ("colm",) and not gdask._UNSUPPORTED
    with pytest.raises(ValueError, match="strategy='colm' needs 'sources'"):
        select_dask(Xd, _dask(X, 200), strategy="colm")


# ------------------------------------------------------------------------------------------------ colm (sources)

COLM_CHUNKS = [BS * 4, (BS * 2, BS * 7, N - BS * 9), 100, (250, 0, 200, N - 450), N]
COLM_IDS = ["even", "ragged", "misaligned", "empty", "one"]


def _colm_grads(kind, seed=0):
    X, E, H, G, _, sources = _data(seed=seed)
    return X, (G if kind == "plain" else ga.LastLayerGrads(E, H)), sources


def _colm_pass(X, grads, sources, chunks, ref_state, state, bs=BS, scheduler="sync", key="sources",
               ref_key="sources", **kw):
    """One select call and one select_dask pass on the same data, each with its own ColmState (or None)."""
    n = len(sources)
    params = dict(kw.pop("strategy_params", {}))
    ref = ga.select(_cut(X, n, bs), _grads(grads, lambda a: _cut(a, n, bs)), strategy="colm",
                    **{ref_key: _cut(sources, n, bs)}, strategy_params=dict(params, state=ref_state),
                    return_info=True, **kw)
    with dask.config.set(scheduler=scheduler):
        out = select_dask(_dask(X, chunks), _grads(grads, lambda a: _dask(a, chunks)), batch_size=bs,
                          strategy="colm", **{key: _dask(sources, chunks)},
                          strategy_params=dict(params, state=state), **kw)
        return dask.compute(*out), ref


def _assert_same_state(got, ref):
    assert got.t == ref.t
    for a, b in ((got.m, ref.m), (got.v, ref.v)):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype == np.float64
            np.testing.assert_array_equal(a, b)  # bit for bit


@pytest.mark.parametrize("kind", ["plain", "last_layer"])
@pytest.mark.parametrize("chunks", COLM_CHUNKS, ids=COLM_IDS)
def test_colm_equals_one_select_call(chunks, kind):
    X, grads, sources = _colm_grads(kind)
    _assert_equal(*_colm_pass(X, grads, sources, chunks, None, None, random_state=7, fraction=0.3))


@pytest.mark.parametrize("kind", ["plain", "last_layer"])
@pytest.mark.parametrize("chunks", COLM_CHUNKS[:4], ids=COLM_IDS[:4])
def test_colm_state_over_two_passes(chunks, kind):
    """The caller's ColmState moves as under one select call per pass (m, v, t bit for bit); pass 2 reads it."""
    X, grads, sources = _colm_grads(kind, seed=1)
    ref_state, state = ga.ColmState(), ga.ColmState()
    for rs in (3, 4):
        got, ref = _colm_pass(X, grads, sources, chunks, ref_state, state, random_state=rs, fraction=0.25)
        _assert_equal(got, ref)
        _assert_same_state(state, ref_state)
    assert state.t == 2
    # a third pass on other data of the same width, with the threaded scheduler
    X2, grads2, sources2 = _colm_grads(kind, seed=2)
    got, ref = _colm_pass(X2, grads2, sources2, chunks, ref_state, state, scheduler="threads", random_state=5)
    _assert_equal(got, ref)
    _assert_same_state(state, ref_state)


@pytest.mark.parametrize("random_state", [0, 1, 12345, 2**40])
def test_colm_random_states(random_state):
    X, grads, sources = _colm_grads("last_layer", seed=3)
    ref_state, state = ga.ColmState(), ga.ColmState()
    _assert_equal(*_colm_pass(X, grads, sources, 150, ref_state, state, random_state=random_state, fraction=0.2))
    _assert_same_state(state, ref_state)


def test_colm_generator_moves_on_like_one_select_call():
    X, E, H, _, _, sources = _data(seed=4)
    g1, g2 = np.random.default_rng(11), np.random.default_rng(11)
    n = len(sources)
    s1, s2 = ga.ColmState(), ga.ColmState()
    ref = ga.select(_cut(X, n, BS), ga.LastLayerGrads(_cut(E, n, BS), _cut(H, n, BS)), strategy="colm",
                    sources=_cut(sources, n, BS), random_state=g1, strategy_params={"state": s1}, return_info=True)
    out = select_dask(_dask(X, 200), ga.LastLayerGrads(_dask(E, 200), _dask(H, 200)), batch_size=BS,
                      strategy="colm", sources=_dask(sources, 200), random_state=g2, strategy_params={"state": s2})
    _assert_same_state(s2, s1)  # computed when select_dask is called: the state has moved already
    _assert_equal(dask.compute(*out, scheduler="sync"), ref)
    assert g1.integers(2**62) == g2.integers(2**62)


@pytest.mark.parametrize("case", ["small_int", "small_list", "dims", "budget", "labels", "features_none",
                                  "betas", "float64_big_batch"])
def test_colm_params_and_inputs(case):
    X, grads, sources = _colm_grads("plain" if case in ("dims", "features_none") else "last_layer", seed=5)
    kw, key, bs = dict(random_state=2, fraction=0.3), "sources", BS
    if case == "small_int":
        kw["strategy_params"] = {"small_sources": 2}
    elif case == "small_list":
        kw["strategy_params"] = {"small_sources": [-3, 9]}
    elif case == "dims":
        kw["strategy_params"] = {"dims": 5}
    elif case == "budget":
        kw["budget"] = 90
    elif case == "labels":  # as in select, labels work as the sources
        key = "labels"
    elif case == "features_none":
        X = None
    elif case == "betas":
        kw["strategy_params"] = {"beta1": 0.5, "beta2": 0.75, "eps": 1e-3}
    else:
        X, bs = X.astype(np.float64), 300
    ref_state, state = ga.ColmState(), ga.ColmState()
    for _ in range(2):
        got, ref = _colm_pass(X, grads, sources, 130, ref_state, state, bs=bs, key=key, ref_key=key, **dict(kw))
        _assert_equal(got, ref)
        _assert_same_state(state, ref_state)


def test_colm_one_source_and_rows_below_the_batch():
    X, E, H, G, _, _ = _data(n=90, seed=6)
    for sources in (np.full(90, 4), np.random.default_rng(0).integers(0, 3, 90)):
        ref_state, state = ga.ColmState(), ga.ColmState()
        for bs in (128, 32):
            got, ref = _colm_pass(X, G, sources, 40, ref_state, state, bs=bs, random_state=0)
            _assert_equal(got, ref)
            _assert_same_state(state, ref_state)


def test_colm_groups_hold_whole_sources():
    """A task holds whole sources: its memory is the largest source's rows (here one source of 60% of them)."""
    X, _, _, G, _, _ = _data(seed=7)
    sources = np.where(np.random.default_rng(1).random(N) < 0.6, 0, np.arange(N) % 4 + 1)
    n = len(sources)
    edges = np.arange(0, n + 1, 100)
    hists = [gdask._label_counts(sources[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    _, _, specs, _, _, _ = gdask._class_plan(hists, n, BS, 1, 100, True)
    for spec in specs:  # no source is cut between two groups
        assert all(int(c) not in set(other.labels.tolist()) for other in specs if other is not spec
                   for c in set(spec.labels.tolist()))
    ref_state, state = ga.ColmState(), ga.ColmState()
    _assert_equal(*_colm_pass(X, G, sources, 100, ref_state, state, random_state=1))
    _assert_same_state(state, ref_state)


def test_colm_returns_computed_dask_arrays():
    X, grads, sources = _colm_grads("plain", seed=8)
    out = select_dask(_dask(X, 200), _dask(grads, 200), batch_size=BS, strategy="colm", sources=_dask(sources, 200))
    assert all(isinstance(a, da.Array) and not np.isnan(a.shape[0]) for a in out)
    assert out[0].dtype == np.int64 and out[1].dtype == np.float64 and out[2].dtype == np.int64


def test_bad_colm_input():
    X, E, H, G, _, sources = _data()
    Xd, Gd, sd = _dask(X, 200), _dask(G, 200), _dask(sources, 200)
    with pytest.raises(ValueError, match="strategy='colm' needs 'sources'"):
        select_dask(Xd, Gd, strategy="colm")
    with pytest.raises(TypeError, match=r"'sources' to be a dask.array.Array.*got numpy.ndarray.*from_array"):
        select_dask(Xd, Gd, strategy="colm", sources=sources)
    with pytest.raises(ValueError, match=r"'sources' chunked like 'features' along the rows.*rechunk"):
        select_dask(Xd, Gd, strategy="colm", sources=_dask(sources, 100))
    with pytest.raises(ValueError, match=r"'sources' chunked like 'grads'"):
        select_dask(None, Gd, strategy="colm", sources=_dask(sources, 300))
    with pytest.raises(ValueError, match=r"'sources' to have one id per row of 'features' \(700\); got 699"):
        select_dask(Xd, Gd, strategy="colm", sources=_dask(sources[:-1], 200))
    with pytest.raises(ValueError, match="'sources' with integer ids.*got dtype float64"):
        select_dask(Xd, Gd, strategy="colm", sources=_dask(sources.astype(np.float64), 200))
    with pytest.raises(ValueError, match="one of 'labels' and 'sources'"):
        select_dask(Xd, Gd, strategy="colm", sources=sd, labels=sd)
    with pytest.raises(ValueError, match="'sources' applies to strategy='colm' only"):
        select_dask(Xd, Gd, strategy="craig", sources=sd)
    with pytest.raises(ValueError, match="strategy='colm' needs 'grads'"):
        select_dask(Xd, None, strategy="colm", sources=sd)
    state = ga.ColmState()
    state.m, state.v, state.t = np.zeros(5), np.zeros(5), 1
    with pytest.raises(ValueError, match="holds moments of 5 coordinates, but these gradients have 32"):
        select_dask(Xd, Gd, strategy="colm", sources=sd, strategy_params={"state": state})
    with pytest.raises(TypeError, match="graft_array.ColmState"):
        select_dask(Xd, Gd, strategy="colm", sources=sd, strategy_params={"state": object()})
    with pytest.raises(ValueError, match="'dims'"):
        select_dask(Xd, Gd, strategy="colm", sources=sd, strategy_params={"dims": 0})
    assert state.t == 1 and not state.m.any()  # untouched
