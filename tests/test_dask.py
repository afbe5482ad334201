"""graft_array.adapters.dask: select_dask equals one select call; maxvol_dask's tournament; storage; a cluster."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import graft_array as ga

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from graft_array.adapters.dask import (
    GROUPED,
    SUPPORTED,
    load_selection,
    maxvol_dask,
    save_selection,
    select_dask,
    selection_sampler,
)

from graft_array.strategies import NAMES

N, D, C, HDIM, BS = 1000, 12, 6, 20, 64  # 15 batches of 64 and a ragged one of 40


def _data(n=N, seed=0, d=D, c=C, hdim=HDIM):
    """Features (n, d), LastLayerGrads parts (n, c) and (n, hdim) float32, plain gradients (n, 32), scores (n,)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    E = rng.standard_normal((n, c)).astype(np.float32)
    H = rng.standard_normal((n, hdim)).astype(np.float32)
    G = rng.standard_normal((n, 32))
    scores = rng.standard_normal(n)
    return X, E, H, G, scores


def _cut(x, n, bs):
    """x laid out as one select call over the dataset's batches: a stack, or a list with the short last one."""
    if x is None:
        return None
    if n % bs == 0:
        return x.reshape((n // bs, bs) + x.shape[1:])
    return [x[a:a + bs] for a in range(0, n, bs)]


def _reference(X, grads, bs, **kw):
    n = len(X) if X is not None else len(grads[0] if isinstance(grads, ga.LastLayerGrads) else grads)
    if isinstance(grads, ga.LastLayerGrads):
        g = ga.LastLayerGrads(_cut(grads[0], n, bs), _cut(grads[1], n, bs))
    else:
        g = _cut(grads, n, bs)
    for nm in ("scores", "hessian_diag"):
        if isinstance(kw.get(nm), np.ndarray):
            kw[nm] = _cut(kw[nm], n, bs)
    return ga.select(_cut(X, n, bs), g, return_info=True, **kw)


def _dask(x, chunks):
    return None if x is None else da.from_array(x, chunks=(chunks,) + (-1,) * (x.ndim - 1))


def _run(X, grads, chunks, bs=BS, scheduler="sync", **kw):
    Xd = _dask(X, chunks)
    if isinstance(grads, ga.LastLayerGrads):
        gd = ga.LastLayerGrads(_dask(grads[0], chunks), _dask(grads[1], chunks))
    else:
        gd = _dask(grads, chunks)
    for nm in ("scores", "hessian_diag"):
        if isinstance(kw.get(nm), np.ndarray):
            kw[nm] = _dask(kw[nm], chunks)
    out = select_dask(Xd, gd, batch_size=bs, **kw)
    assert all(np.isnan(o.shape[0]) for o in out)  # unknown chunk sizes
    with dask.config.set(scheduler=scheduler):
        return dask.compute(*out)


def _assert_equal(got, ref):
    idx, w, sizes = got
    np.testing.assert_array_equal(idx, np.asarray(ref.indices))
    np.testing.assert_array_equal(w, np.asarray(ref.weights))  # bit for bit
    np.testing.assert_array_equal(sizes, np.asarray(ref.sizes))
    assert idx.dtype == np.int64 and w.dtype == np.float64


def _case(strategy):
    """(features, grads, extra select kwargs) for a strategy, as numpy arrays."""
    X, E, H, G, scores = _data()
    if strategy in ("mkdt", "pdd"):
        return X, None, dict(scores=scores)
    if strategy == "adacore":
        return X, ga.LastLayerGrads(E, H), dict(hessian_diag="softmax")
    return X, ga.LastLayerGrads(E, H), {}


# ------------------------------------------------------------------------------------------------ equality


CHUNKINGS = [BS * 4, (BS * 2, BS * 7, N - BS * 9), N]  # even, uneven (ragged last batch in the last chunk), one


@pytest.mark.parametrize("strategy", SUPPORTED)
@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["even", "uneven", "one"])
def test_equals_one_select_call(strategy, chunks):
    X, grads, kw = _case(strategy)
    ref = _reference(X, grads, BS, strategy=strategy, random_state=7, fraction=0.3, **kw)
    _assert_equal(_run(X, grads, chunks, strategy=strategy, random_state=7, fraction=0.3, **kw), ref)


def test_every_strategy_is_supported_or_refused():
    assert set(SUPPORTED) <= set(NAMES) and set(GROUPED) <= set(NAMES)
    X, E, H, _, _ = _data()
    assert set(NAMES) - set(SUPPORTED) - set(GROUPED) == {"colm"}  # CoLM: whole sources, see test_dask_labels.py
    with pytest.raises(ValueError, match="strategy='colm' needs 'sources'"):
        select_dask(_dask(X, 256), None, strategy="colm")


@pytest.mark.parametrize("budget", ["call", "batch", 300])
@pytest.mark.parametrize("grads_kind", ["last_layer", "plain", "none"])
def test_graft_budgets_and_gradients(budget, grads_kind):
    X, E, H, G, _ = _data()
    grads = {"last_layer": ga.LastLayerGrads(E, H), "plain": G, "none": None}[grads_kind]
    ref = _reference(X, grads, BS, budget=budget, random_state=3, fraction=0.3)
    _assert_equal(_run(X, grads, (BS * 3, BS * 5, N - BS * 8), budget=budget, random_state=3, fraction=0.3), ref)


def test_features_none_selects_on_gradients():
    _, E, H, _, _ = _data()
    grads = ga.LastLayerGrads(E, H)
    ref = _reference(None, grads, BS, random_state=1)
    _assert_equal(_run(None, grads, BS * 5, random_state=1), ref)


@pytest.mark.parametrize("strategy", ["graft", "random", "adacore"])
def test_ragged_last_chunk_and_array_inputs(strategy):
    n = 1000 - 3  # the last chunk: two whole batches and one of 61 rows
    X, E, H, G, _ = _data(n, seed=2)
    rng = np.random.default_rng(9)
    kw = dict(hessian_diag=np.abs(rng.standard_normal((n, 32)))) if strategy == "adacore" else {}
    ref = _reference(X, G, BS, strategy=strategy, random_state=5, rank=6, **kw)
    _assert_equal(_run(X, G, BS * 4, strategy=strategy, random_state=5, rank=6, **kw), ref)


def test_generator_moves_on_like_one_select_call():
    X, E, H, _, _ = _data()
    g1, g2 = np.random.default_rng(11), np.random.default_rng(11)
    ref = _reference(X, ga.LastLayerGrads(E, H), BS, random_state=g1)
    _assert_equal(_run(X, ga.LastLayerGrads(E, H), BS * 4, random_state=g2), ref)
    assert g1.integers(2**62) == g2.integers(2**62)


def test_threaded_scheduler_gives_the_same():
    X, E, H, _, _ = _data()
    grads = ga.LastLayerGrads(E, H)
    ref = _reference(X, grads, BS, random_state=4)
    _assert_equal(_run(X, grads, BS * 2, scheduler="threads", random_state=4), ref)


def test_misaligned_chunks_are_rechunked_with_a_warning():
    X, E, H, _, _ = _data()
    grads = ga.LastLayerGrads(E, H)
    ref = _reference(X, grads, BS, random_state=2)
    with pytest.warns(UserWarning, match=r"do not hold whole batches of batch_size=64.*rechunking.*MiB"):
        got = _run(X, grads, 100, random_state=2)
    _assert_equal(got, ref)


def test_zarr_and_hdf5_inputs(tmp_path):
    zarr = pytest.importorskip("zarr")
    h5py = pytest.importorskip("h5py")
    X, E, H, _, _ = _data()
    ref = _reference(X, ga.LastLayerGrads(E, H), BS, random_state=0)
    store = str(tmp_path / "feats.zarr")
    z = zarr.open_array(store, mode="w", shape=(N + 300, D), chunks=(BS * 4, D), dtype=X.dtype)
    z[:N] = X  # a slice of the stored array, read twice by budget="call"'s phases
    with h5py.File(tmp_path / "grads.h5", "w") as f:
        f["E"], f["H"] = E, H
    with h5py.File(tmp_path / "grads.h5", "r") as f:
        grads = ga.LastLayerGrads(da.from_array(f["E"], chunks=(BS * 4, -1)),
                                  da.from_array(f["H"], chunks=(BS * 4, -1)))
        out = select_dask(da.from_zarr(store)[:N], grads, batch_size=BS, random_state=0)
        got = dask.compute(*out, scheduler="sync")
    _assert_equal(got, ref)


# ------------------------------------------------------------------------------------------------ errors


def test_bad_inputs_name_the_argument():
    X, E, H, G, _ = _data()
    with pytest.raises(TypeError, match="'features' to be a dask.array.Array; got numpy.ndarray"):
        select_dask(X, None)
    with pytest.raises(TypeError, match="'grads.embeddings' to be a dask.array.Array"):
        select_dask(_dask(X, 256), ga.LastLayerGrads(_dask(E, 256), H))
    with pytest.raises(ValueError, match=r"'features' in one chunk along its feature axis.*rechunk\(\{1: -1\}\)"):
        select_dask(da.from_array(X, chunks=(256, 4)), None)
    with pytest.raises(ValueError, match="'grads' in one chunk along its feature axis"):
        select_dask(_dask(X, 256), da.from_array(G, chunks=(256, 8)))
    with pytest.raises(ValueError, match=r"'grads.residuals' chunked like 'features' along the rows"):
        select_dask(_dask(X, 256), ga.LastLayerGrads(_dask(E, 128), _dask(H, 256)))
    with pytest.raises(ValueError, match="'grads' to have one row per row of 'features'"):
        select_dask(_dask(X, 256), _dask(G[:-1], 256))
    with pytest.raises(TypeError, match="'labels' to be a dask.array.Array"):
        select_dask(_dask(X, 256), None, labels=np.zeros(N, dtype=np.int64))
    with pytest.raises(TypeError, match="sets 'offsets' itself"):
        select_dask(_dask(X, 256), None, offsets=np.arange(4))
    with pytest.raises(ValueError, match="'batch_size' parameter of select_dask"):
        select_dask(_dask(X, 256), None, batch_size=0)
    with pytest.raises(ValueError, match="'strategy' parameter of select_dask"):
        select_dask(_dask(X, 256), None, strategy="nope")
    with pytest.raises(ValueError, match="known chunk sizes"):
        Xd = _dask(X, 256)
        select_dask(Xd[Xd[:, 0] > 0], None)
    with pytest.raises(TypeError, match="'V' to be a dask.array.Array"):
        maxvol_dask(X, 4)
    with pytest.raises(ValueError, match="'k' parameter of maxvol_dask"):
        maxvol_dask(_dask(X, 256), N + 1)
    with pytest.raises(ValueError, match="'V' in one chunk along its feature axis"):
        maxvol_dask(da.from_array(X, chunks=(256, 4)), 4)


# ------------------------------------------------------------------------------------------------ maxvol_dask


def _lu_rows(A):
    from graft_array.testing import lu_pivots

    return lu_pivots(A)


def _logdet(V, rows):
    return np.linalg.slogdet(V[np.asarray(rows)].astype(np.float64))[1]


def test_maxvol_dask_equals_the_single_machine_tournament_on_tile_aligned_chunks():
    from graft_array._common import default_tile_rows

    V = np.random.default_rng(0).standard_normal((100_000, 16))
    T = default_tile_rows(len(V), 16)
    single = ga.maxvol(V, 16, method="tournament")
    for split_every in (None, 2):
        got = maxvol_dask(da.from_array(V, chunks=(4 * T, -1)), 16, split_every=split_every).compute(
            scheduler="sync")
        np.testing.assert_array_equal(got, single)


def test_maxvol_dask_quality_near_lu_and_valid_rows():
    pytest.importorskip("scipy")
    n, r = 300_000, 32
    gaps, single_gaps = [], []
    for seed in range(5):
        V = np.random.default_rng(seed).standard_normal((n, r))
        ids = maxvol_dask(da.from_array(V, chunks=(30_000, -1)), r, split_every=3).compute(scheduler="sync")
        assert ids.dtype == np.int64 and ids.shape == (r,)
        assert len(set(ids.tolist())) == r and ids.min() >= 0 and ids.max() < n
        lu = _logdet(V, _lu_rows(V))
        gaps.append((lu - _logdet(V, ids)) / abs(lu))
        single_gaps.append((lu - _logdet(V, ga.maxvol(V, r, method="tournament"))) / abs(lu))
    assert np.mean(gaps) <= 0.02, gaps  # within 2% of LU's log|det| on average (1.8% measured)
    assert max(g - s for g, s in zip(gaps, single_gaps)) <= 0.015  # and like the single-machine tournament


def test_maxvol_dask_ragged_chunks_volume_and_rectangular():
    V = np.random.default_rng(3).standard_normal((5000, 8))
    Vd = da.from_array(V, chunks=((3, 997, 2000, 1990, 10), (8,)))
    for method, k in (("tournament", 8), ("volume", 8), ("tournament", 20)):
        ids = maxvol_dask(Vd, k, method=method, split_every=2).compute(scheduler="sync")
        assert ids.shape == (k,) and len(set(ids.tolist())) == k and 0 <= ids.min() and ids.max() < 5000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = maxvol_dask(da.from_array(V[:5], chunks=(2, -1)), 5).compute(scheduler="sync")
    assert sorted(small.tolist()) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------ storage


def test_save_load_selection_and_sampler(tmp_path):
    X, E, H, _, _ = _data()
    idx, w, _ = select_dask(_dask(X, 256), ga.LastLayerGrads(_dask(E, 256), _dask(H, 256)), batch_size=BS,
                            random_state=0)
    with dask.config.set(scheduler="sync"):
        path = save_selection(tmp_path / "sel.npz", idx, w, n_samples=N)
        i2, w2 = load_selection(path)
        ref_i, ref_w = dask.compute(idx, w)
    np.testing.assert_array_equal(i2, ref_i)
    np.testing.assert_array_equal(w2, ref_w)
    torch = pytest.importorskip("torch")
    s = selection_sampler(path, seed=3)
    assert len(s) == len(i2) and sorted(iter(s)) == sorted(i2.tolist())
    s.set_epoch(1)
    first = list(iter(s))
    s.set_epoch(2)
    assert first != list(iter(s)) and sorted(first) == sorted(i2.tolist())
    lw = s.loss_weights(torch.as_tensor(i2))
    assert abs(float(lw.mean()) - float(np.mean(w2)) * len(i2) / N) < 1e-5
    assert float(s.weights.sum()) == pytest.approx(float(w2.sum()), rel=1e-6)
    plain = selection_sampler((i2, w2), shuffle=False)
    assert list(iter(plain)) == i2.tolist()


def test_save_selection_per_chunk_writes_each_block_where_it_runs(tmp_path):
    X, E, H, _, _ = _data()
    idx, w, _ = select_dask(_dask(X, 256), ga.LastLayerGrads(_dask(E, 256), _dask(H, 256)), batch_size=BS,
                            random_state=0)
    with dask.config.set(scheduler="sync"):
        out = save_selection(tmp_path / "sel", idx, w, n_samples=N, per_chunk=True)
        ref_i, ref_w = dask.compute(idx, w)
        blocks = [len(b) for b in dask.compute(*idx.to_delayed())]
    parts = sorted(os.listdir(out))
    assert parts == ["manifest.npz"] + [f"part-{i:06d}.npz" for i in range(idx.numblocks[0])]
    for i, c in enumerate(blocks):  # block i's rows in part i
        with np.load(os.path.join(out, f"part-{i:06d}.npz")) as z:
            assert z["indices"].shape == (c,)
    i2, w2 = load_selection(out)
    np.testing.assert_array_equal(i2, ref_i)
    np.testing.assert_array_equal(w2, ref_w)
    s = selection_sampler(out, shuffle=False)  # n_samples from the manifest
    assert s.n == N and list(iter(s)) == ref_i.tolist()
    with np.load(os.path.join(out, "part-000000.npz")) as z:  # a part rewritten after the manifest is caught
        first = dict(z)
    with open(os.path.join(out, "part-000000.npz"), "wb") as f:
        np.savez(f, indices=first["indices"][:-1], weights=first["weights"][:-1])
    with pytest.raises(ValueError, match="part-000000.npz holds .* its manifest says"):
        load_selection(out)


def test_save_selection_per_chunk_runs_each_chunk_once(tmp_path, monkeypatch):
    """Indices and weights of a block come from one select task: writing them must not run it twice."""
    import graft_array.adapters.dask as gd

    calls = []
    real = gd._chunk_select
    monkeypatch.setattr(gd, "_chunk_select", lambda *a, **k: calls.append(1) or real(*a, **k))
    X, E, H, _, _ = _data()
    idx, w, _ = select_dask(_dask(X, 256), ga.LastLayerGrads(_dask(E, 256), _dask(H, 256)), batch_size=BS,
                            budget="batch", random_state=0)
    with dask.config.set(scheduler="sync"):
        save_selection(tmp_path / "sel", idx, w, per_chunk=True)
    assert len(calls) == idx.numblocks[0]


def test_save_selection_per_chunk_bad_input(tmp_path):
    with pytest.raises(TypeError, match=r"per_chunk=True\) expects 'indices' and 'weights' as dask arrays; got "
                                        r"numpy.ndarray"):
        save_selection(tmp_path / "s", np.arange(3), np.ones(3), per_chunk=True)
    a = da.from_array(np.arange(6), chunks=2)
    with pytest.raises(ValueError, match="the same number of blocks; got shapes"):
        save_selection(tmp_path / "s", a, da.from_array(np.ones(6), chunks=3), per_chunk=True)
    with pytest.raises(ValueError, match="aligned with 'indices'"):  # block sizes differ: found by the writing task
        save_selection(tmp_path / "s", a, da.from_array(np.ones(6), chunks=((1, 2, 3),)), per_chunk=True)
    with pytest.raises(TypeError, match="'per_chunk' parameter of save_selection must be a bool. Got 'yes'"):
        save_selection(tmp_path / "s", a, a, per_chunk="yes")


def test_import_graft_array_does_not_load_dask():
    code = ("import sys, graft_array, graft_array.adapters.numpy; "
            "print(','.join(m for m in ('dask', 'distributed', 'zarr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------------------------ a cluster


def test_local_cluster_two_worker_processes(tmp_path):
    distributed = pytest.importorskip("distributed")
    n, bs = 8192, 128
    cluster = client = None
    try:
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=":0", timeout="60s", death_timeout="60s")
        client = distributed.Client(cluster, timeout="60s")
        # the data is made on the workers (seeded dask random), selected there, and only results come back
        X = da.random.default_rng(5).standard_normal((n, 16), chunks=(2048, 16)).astype(np.float32)
        # persisted: held by the workers, which phase 3 reads where it lives (not recomputed in a task)
        E = da.random.default_rng(6).standard_normal((n, 10), chunks=(2048, 10)).persist()
        H = da.random.default_rng(7).standard_normal((n, 32), chunks=(2048, 32))
        out = select_dask(X, ga.LastLayerGrads(E, H), batch_size=bs, random_state=0)
        ids = maxvol_dask(X, 16)
        # with labels: the class chunks gathered by a shuffle between the worker processes
        L = (da.random.default_rng(8).integers(0, 5, n, chunks=2048) * 2).persist()
        outl = select_dask(X, ga.LastLayerGrads(E, H), batch_size=bs, labels=L, random_state=0)
        futures = client.compute([*out, ids, *outl])
        idx, w, sizes, mv, *got_l = client.gather(futures, errors="raise")
        distributed.wait(futures, timeout=120)
        ran_on = set(client.run(lambda: 1))
        assert len(ran_on) == 2
        # each block written by the worker process that computed it; only the counts come back
        saved = save_selection(tmp_path / "sel", out[0], out[1], n_samples=n, per_chunk=True)
        Xn, En, Hn, Ln = client.compute([X, E, H, L], sync=True)
    finally:
        if client is not None:
            client.close(timeout=30)
        if cluster is not None:
            cluster.close(timeout=30)
    ref = ga.select(Xn.reshape(n // bs, bs, 16), ga.LastLayerGrads(En.reshape(n // bs, bs, 10),
                                                                      Hn.reshape(n // bs, bs, 32)),
                    return_info=True, random_state=0)
    _assert_equal((idx, w, sizes), ref)
    i_saved, w_saved = load_selection(saved)
    np.testing.assert_array_equal(i_saved, idx)
    np.testing.assert_array_equal(w_saved, w)
    assert len(set(mv.tolist())) == 16 and mv.max() < n
    ref_l = ga.select(Xn.reshape(n // bs, bs, 16), ga.LastLayerGrads(En.reshape(n // bs, bs, 10),
                                                                        Hn.reshape(n // bs, bs, 32)),
                      labels=Ln.reshape(n // bs, bs), return_info=True, random_state=0)
    _assert_equal(got_l, ref_l)
