"""The family's strategies through the adapters: select_dataset, GraftSampler and GraftEpochSampler."""

import numpy as np
import pytest

import graft_array as ga
from graft_array.adapters.numpy import select_dataset

N, B = 600, 100


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 6))
    G = rng.standard_normal((N, 9))
    return rng, X, G


def _one_call(X):
    """select over all of X as (N / B) batches of B rows in one call, as select_dataset's single call makes it."""
    return X.reshape(N // B, B, -1)


@pytest.mark.parametrize("strategy", ["adacore", "colm", "sas", "clipcov", "mkdt", "pdd"])
def test_select_dataset_cuts_the_family_inputs_like_the_rows(strategy):
    """One call over the whole data (batches_per_call large) equals select on the stacked batches."""
    rng, X, G = _data()
    T = rng.standard_normal((N, 4))
    kw, grads, feats = {}, G, X
    if strategy == "adacore":
        kw["hessian_diag"] = rng.random((N, 9))
    elif strategy == "colm":
        kw["sources"] = np.repeat(np.arange(3), [450, 120, 30])[rng.permutation(N)]
    elif strategy == "sas":
        kw["groups"], grads = rng.integers(0, 4, N), None
    elif strategy == "clipcov":
        feats, grads = (X, T), None
    else:
        kw["scores"], grads = rng.random(N), None
    i1, w1 = select_dataset(feats, grads, strategy=strategy, fraction=0.2, batch_size=B, batches_per_call=N // B,
                            progress=False, random_state=3,
                            **({"strategy_params": {"state": ga.ColmState()}} if strategy == "colm" else {}), **kw)
    stacked = {k: v.reshape((N // B, B) + v.shape[1:]) for k, v in kw.items()}
    f2 = tuple(_one_call(f) for f in feats) if strategy == "clipcov" else _one_call(feats)
    g2 = None if grads is None else _one_call(grads)
    state = ga.ColmState()
    s = ga.select(f2, g2, strategy=strategy, fraction=0.2, return_info=True, random_state=3,
                  **({"strategy_params": {"state": state}} if strategy == "colm" else {}), **stacked)
    np.testing.assert_array_equal(i1, s.indices)
    np.testing.assert_allclose(w1, s.weights)


def test_select_dataset_colm_state_moves_call_by_call():
    rng, X, G = _data(1)
    src = rng.integers(0, 3, N)
    st = ga.ColmState()
    select_dataset(X, G, strategy="colm", sources=src, fraction=0.2, batch_size=B, batches_per_call=2,
                   progress=False, random_state=0, strategy_params={"state": st})
    assert st.t == 3 and st.m.shape == (9,)


def test_select_dataset_family_errors():
    _, X, G = _data()
    with pytest.raises(ValueError, match="'sources' to have one row per row of 'X'"):
        select_dataset(X, G, strategy="colm", sources=np.zeros(5, dtype=int), progress=False)
    with pytest.raises(ValueError, match="X = \\(image_emb, text_emb\\)"):
        select_dataset((X, X[:10]), None, strategy="clipcov", progress=False)


def test_sklearn_sampler_family():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from graft_array.adapters.sklearn import GraftSampler

    X, y = load_digits(return_X_y=True)
    a = GraftSampler(strategy="adacore", fraction=0.1, random_state=0, proxy="logistic").fit(X, y)
    # the classifier proxy's p(1 - p) is the default preconditioner: the same rows as passing it explicitly
    e = a._class_residuals(a.proxy_.predict_proba(X), a.proxy_.classes_, y)
    b = GraftSampler(strategy="adacore", fraction=0.1, random_state=0, proxy="logistic").fit(
        X, y, hessian_diag=np.abs(e) * (1.0 - np.abs(e)))
    np.testing.assert_array_equal(a.indices_, b.indices_)
    s = GraftSampler(strategy="mkdt", fraction=0.1, random_state=0, class_balance=False, batch_size=2000).fit(
        X, scores=np.arange(len(y), dtype=float))
    np.testing.assert_array_equal(s.indices_, np.arange(len(y))[::-1][:len(s.indices_)])
    s = GraftSampler(strategy="sas", fraction=0.1, random_state=0, strategy_params={"penalty": False}).fit(X, y)
    assert len(np.unique(s.indices_)) == len(s.indices_) > 0
    with pytest.raises(ValueError, match="strategy='clipcov' selects image-caption pairs"):
        GraftSampler(strategy="clipcov").fit(X, y)
    with pytest.raises(ValueError, match="'groups' parameter of GraftSampler.fit must have one entry per row"):
        GraftSampler(strategy="sas").fit(X, y, groups=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="strategy_params"):
        GraftSampler(strategy="sas", strategy_params={"dims": 3}).fit(X, y)


def _torch_setup():
    torch = pytest.importorskip("torch")
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 10, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return torch, TensorDataset(X, y), model, X, y


def test_epoch_sampler_mkdt_keeps_the_highest_losses_per_batch():
    torch, ds, model, X, y = _torch_setup()
    from graft_array.adapters.torch import GraftEpochSampler

    s = GraftEpochSampler(ds, model, fraction=0.2, batch_size=100, strategy="mkdt", progress=False, shuffle=False)
    got = set(s.indices.tolist())
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(X), y, reduction="none").numpy()
    want = set()
    for lo in range(0, 300, 100):
        want |= set((lo + np.argsort(-loss[lo:lo + 100], kind="stable")[:20]).tolist())
    assert got == want


def test_epoch_sampler_adacore_keeps_the_hessian_average():
    torch, ds, model, X, y = _torch_setup()
    from graft_array.adapters.torch import GraftEpochSampler

    s = GraftEpochSampler(ds, model, fraction=0.2, batch_size=100, strategy="adacore", progress=False,
                          hessian_beta=0.5)
    s.set_epoch(0)
    _ = s.indices
    with torch.no_grad():
        p = torch.softmax(model(X), dim=1).double()
    q = p * (1 - p)
    torch.testing.assert_close(s._hess, 0.5 * q, rtol=1e-5, atol=1e-7)  # one pass: (1 - beta) q
    assert int(s._hess_count.min()) == 1


def test_epoch_sampler_colm_and_errors():
    torch, ds, model, X, y = _torch_setup()
    from graft_array.adapters.torch import GraftEpochSampler

    src = np.repeat([0, 1, 2], [240, 50, 10])
    s = GraftEpochSampler(ds, model, fraction=0.2, batch_size=100, strategy="colm", sources=src, progress=False)
    idx = s.indices.numpy()
    assert np.all(np.isin(np.flatnonzero(src == 2), idx))  # the small source is kept whole
    assert s._colm_state.t >= 1
    with pytest.raises(ValueError, match="'sources' parameter of GraftEpochSampler is needed by, and only by"):
        GraftEpochSampler(ds, model, strategy="colm")
    with pytest.raises(ValueError, match="'sources' parameter of GraftEpochSampler is needed by, and only by"):
        GraftEpochSampler(ds, model, strategy="craig", sources=src)
    with pytest.raises(ValueError, match="strategy='clipcov' selects image-caption pairs"):
        GraftEpochSampler(ds, model, strategy="clipcov")
    with pytest.raises(TypeError, match="computes select's 'hessian_diag' itself"):
        GraftEpochSampler(ds, model, strategy="adacore", hessian_diag=np.ones((300, 3)))
    with pytest.raises(ValueError, match="strategy='sas' ranks embeddings"):
        GraftEpochSampler(ds, model, strategy="sas")


def test_batch_selector_family():
    torch, ds, model, X, y = _torch_setup()
    from graft_array.adapters.torch import GraftBatchSelector, capture, loss_residuals

    x, t = X[:64], y[:64]
    sel = GraftBatchSelector(model, fraction=0.25, strategy="mkdt", features="gradients", random_state=0)
    idx, w = sel(x, t)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), t, reduction="none").numpy()
    assert set(idx.tolist()) == set(np.argsort(-loss, kind="stable")[:16].tolist())
    sel = GraftBatchSelector(model, fraction=0.25, strategy="adacore", features="gradients", random_state=0)
    idx, w = sel(x, t)
    h, z = capture(model, x)
    e = loss_residuals(z, t)
    want = ga.select(None, ga.LastLayerGrads(e.numpy(), h.numpy()), strategy="adacore", fraction=0.25,
                     hessian_diag="softmax", random_state=0)
    np.testing.assert_array_equal(idx.numpy(), want)
    sel = GraftBatchSelector(model, fraction=0.25, strategy="colm", features="gradients", random_state=0)
    src = np.repeat([0, 1], [56, 8])
    idx, _ = sel(x, t, sources=src)
    assert set(range(56, 64)) <= set(idx.tolist()) and sel._colm_state.t == 1
    with pytest.raises(ValueError, match="'sources' parameter of GraftBatchSelector is needed by, and only by"):
        sel(x, t)
    with pytest.raises(ValueError, match="'sources' parameter of GraftBatchSelector is needed by, and only by"):
        GraftBatchSelector(model, strategy="craig", features="gradients")(x, t, sources=src)


def test_augmented_coresets_with_the_family():
    torch, ds, model, X, y = _torch_setup()
    from graft_array.adapters.augment import AugmentedCoresetDataset

    def flip(x):
        return -x

    d = AugmentedCoresetDataset(ds, model, augment=flip, fraction=0.1, strategy="mkdt", features="embeddings",
                                class_balance=False, batch_size=100, random_state=0)
    d.set_epoch(0)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(X), y, reduction="none").numpy()
    want = set()
    for lo in range(0, 300, 100):
        want |= set((lo + np.argsort(-loss[lo:lo + 100], kind="stable")[:10]).tolist())
    assert set(d.indices.tolist()) == want and len(d) == 330
    src = np.repeat([0, 1], [290, 10])
    d = AugmentedCoresetDataset(ds, model, augment=flip, fraction=0.1, strategy="colm", sources=src,
                                class_balance=False, batch_size=100, random_state=0)
    d.set_epoch(0)
    assert set(range(290, 300)) <= set(d.indices.tolist()) and d._colm_state.t == 1  # one select call a pass
    d = AugmentedCoresetDataset(ds, model, augment=flip, fraction=0.1, strategy="adacore", batch_size=100,
                                random_state=0)
    d.set_epoch(0)
    assert len(d.indices) >= 30
    with pytest.raises(ValueError, match="'sources' parameter of AugmentedCoresetDataset is needed by"):
        AugmentedCoresetDataset(ds, model, augment=flip, strategy="colm")
    with pytest.raises(ValueError, match="strategy='clipcov' selects image-caption"):
        AugmentedCoresetDataset(ds, model, augment=flip, strategy="clipcov", features="embeddings")
    with pytest.raises(ValueError, match="strategy='adacore' needs loss='cross_entropy'"):  # p(1 - p) is softmax's
        AugmentedCoresetDataset(ds, model, augment=flip, strategy="adacore", loss="mse")
