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
from graft_array.adapters.dask import GROUPED, SUPPORTED, select_dask

N, D, C, HDIM, BS = 700, 10, 5, 12, 64  # 10 batches of 64 and a ragged one of 60


def _data(n=N, seed=0, classes=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D)).astype(np.float32)
    E = rng.standard_normal((n, C)).astype(np.float32)
    H = rng.standard_normal((n, HDIM)).astype(np.float32)
    G = rng.standard_normal((n, 32))
    scores = rng.standard_normal(n)
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


def test_every_strategy_is_supported_grouped_or_refused():
    X, *_, labels = _data()
    Xd, ld = _dask(X, 200), _dask(labels, 200)
    assert set(SUPPORTED) | set(GROUPED) | {"colm"} == set(ga.strategies.NAMES)
    for strategy in GROUPED:
        with pytest.raises(ValueError, match=f"strategy='{strategy}' needs 'groups'.*k-means"):
            select_dask(Xd, None, strategy=strategy)
    with pytest.raises(ValueError, match="supports strategy in.*CoLM.*ColmState"):
        select_dask(Xd, None, strategy="colm", sources=ld)


# ------------------------------------------------------------------------------------------------ errors


def test_bad_labels_name_the_argument():
    X, _, _, _, _, labels = _data()
    Xd = _dask(X, 200)
    with pytest.raises(TypeError, match=r"'labels' to be a dask.array.Array.*got numpy.ndarray.*from_array"):
        select_dask(Xd, None, labels=labels)
    with pytest.raises(ValueError, match=r"'labels' 1-D.*shape \(700, 1\)"):
        select_dask(Xd, None, labels=_dask(labels[:, None], 200))
    with pytest.raises(ValueError, match="'labels' with integer ids.*got dtype float64"):
        select_dask(Xd, None, labels=_dask(labels.astype(np.float64), 200))
    with pytest.raises(ValueError, match="'labels' with integer ids.*got dtype bool"):
        select_dask(Xd, None, labels=_dask(labels > 0, 200))
    with pytest.raises(ValueError, match=r"'labels' to have one id per row of 'features' \(700\); got 699"):
        select_dask(Xd, None, labels=_dask(labels[:-1], 200))
    with pytest.raises(ValueError, match=r"'labels' chunked like 'features' along the rows.*rechunk"):
        select_dask(Xd, None, labels=_dask(labels, 100))
    with pytest.raises(ValueError, match=r"'labels' chunked like 'grads'"):
        select_dask(None, _dask(X, 200), labels=_dask(labels, 300))
    with pytest.raises(ValueError, match="'labels' with known chunk sizes"):
        ld = _dask(labels, 200)
        select_dask(Xd, None, labels=ld[ld >= 0])
    with pytest.raises(ValueError, match="'groups' applies to strategy='sas' or 'clipcov' only"):
        select_dask(Xd, None, groups=_dask(labels, 200))
    with pytest.raises(ValueError, match="'sources' applies to strategy='colm' only"):
        select_dask(Xd, None, sources=_dask(labels, 200))
    with pytest.raises(ValueError, match="one of 'labels' and 'groups'"):
        select_dask(Xd, None, strategy="sas", labels=_dask(labels, 200), groups=_dask(labels, 200))
    with pytest.raises(TypeError, match="'clipcov' expects 'features' to be a pair"):
        select_dask(Xd, None, strategy="clipcov", groups=_dask(labels, 200))
    with pytest.raises(TypeError, match=r"'features\[1\]' to be a dask.array.Array"):
        select_dask((Xd, X), None, strategy="clipcov", groups=_dask(labels, 200))
