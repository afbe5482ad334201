import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import graft_array as ga
from graft_array.adapters.numpy import select_dataset

from conftest import readonly


def _data(rng, n=700, d=24, C=4, h=6):
    return rng.standard_normal((n, d)), rng.standard_normal((n, C)), rng.standard_normal((n, h))


def _reference(X, grads, batch_size, **kw):
    """The same pass done by hand: a ragged list of consecutive batches in one select call."""
    cuts = range(0, len(X), batch_size)
    F = [X[a:a + batch_size] for a in cuts]
    if isinstance(grads, ga.LastLayerGrads):
        g = ga.LastLayerGrads([grads.residuals[a:a + batch_size] for a in cuts],
                              [grads.embeddings[a:a + batch_size] for a in cuts])
    else:
        g = None if grads is None else [grads[a:a + batch_size] for a in cuts]
    return ga.select(F, g, return_info=True, **kw)


@pytest.mark.parametrize("batches_per_call", [1, 2, 64])
def test_dataset_pass_equals_one_ragged_select(rng, batches_per_call):
    X, E, H = _data(rng)
    grads = ga.LastLayerGrads(readonly(E), readonly(H))
    idx, w = select_dataset(readonly(X), grads, batch_size=128, batches_per_call=batches_per_call, tol=0.5,
                            random_state=4, progress=False, budget="batch")
    ref = _reference(X, ga.LastLayerGrads(E, H), 128, tol=0.5, random_state=4, budget="batch")
    assert_array_equal(idx, ref.indices)
    assert_allclose(w, ref.weights)
    assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < len(X)


@pytest.mark.parametrize("seed", [7, "generator"])
def test_randomized_solver_pass_equals_one_select_call(rng, seed):
    """One seed for the whole pass, as one select call over all batches: equal whatever the chunking."""
    X = rng.standard_normal((600, 200))
    E, H = rng.standard_normal((600, 5)), rng.standard_normal((600, 8))
    grads = ga.LastLayerGrads(E, H)
    state = (lambda: np.random.default_rng(11)) if seed == "generator" else (lambda: seed)
    gen = state()
    idx, w = select_dataset(X, grads, batch_size=128, batches_per_call=2, fraction=0.1, solver="randomized",
                            random_state=gen, progress=False, budget="batch")
    ref_gen = state()
    ref = _reference(X, grads, 128, fraction=0.1, solver="randomized", random_state=ref_gen, budget="batch")
    assert ref.solver == "randomized"
    assert_array_equal(idx, ref.indices)
    assert_allclose(w, ref.weights)
    if seed == "generator":  # the caller's generator moved on by the same one draw
        assert gen.integers(2**63) == ref_gen.integers(2**63)
    other, _ = select_dataset(X, grads, batch_size=128, fraction=0.1, solver="randomized", random_state=8,
                              progress=False)
    assert not np.array_equal(other, idx)  # the seed matters, so the equality above can fail


def test_memmap_list_and_pandas_inputs(rng, tmp_path):
    X, E, H = _data(rng, n=300)
    base, _ = select_dataset(X, batch_size=64, random_state=0, progress=False)
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[:] = X
    mm.flush()
    ro = np.load(tmp_path / "X.npy", mmap_mode="r")
    assert_array_equal(select_dataset(ro, batch_size=64, random_state=0, progress=False)[0], base)
    assert_array_equal(select_dataset(X.tolist(), batch_size=64, random_state=0, progress=False)[0], base)
    pd = pytest.importorskip("pandas")
    assert_array_equal(select_dataset(pd.DataFrame(X), batch_size=64, random_state=0, progress=False)[0], base)


def test_features_only_sizes_and_uniform_weights(rng):
    X = rng.standard_normal((1000, 16))
    idx, w = select_dataset(X, batch_size=100, fraction=0.1, random_state=0, progress=False)
    assert len(idx) == 100
    assert_allclose(w, 10.0)
    assert np.all(np.bincount(idx // 100, minlength=10) == 10)


def test_progress_bar_goes_to_stderr_only(rng, capsys):
    X = rng.standard_normal((256, 8))
    select_dataset(X, batch_size=64, random_state=0, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    select_dataset(X, batch_size=64, random_state=0, progress=True)
    out = capsys.readouterr()
    assert out.out == "" and "GRAFT selection" in out.err


def test_plain_gradient_warning_passes_through(rng):
    X = rng.standard_normal((256, 8))
    with pytest.warns(ga.GradientRankWarning):
        select_dataset(X, rng.standard_normal((256, 3)), batch_size=64, random_state=0, progress=False)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(X=np.ones((0, 3))), ValueError, r"at least one row"),
        (dict(X=np.ones((10, 3)), batch_size=0), ValueError, r"'batch_size' parameter of select_dataset"),
        (dict(X=np.ones((10, 3)), grads=np.ones((9, 2))), ValueError, r"'grads' to have one row per row of 'X' \(10\)"),
        (dict(X=np.ones((10, 3)), offsets=[0]), TypeError, r"sets 'offsets' itself"),
        (dict(X=np.array([["a", "b"]] * 4)), ValueError, r"real numbers"),
        (dict(X=5), TypeError, r"array-like with a length"),
        (dict(X=np.full((10, 3), np.nan)), ValueError, r"finite"),
    ],
)
def test_errors(kwargs, exc, match):
    X = kwargs.pop("X")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ga.GradientRankWarning)
        with pytest.raises(exc, match=match):
            select_dataset(X, progress=False, **kwargs)


@pytest.mark.parametrize("batches_per_call", [1, 3, 64])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_pass_selects_the_budget_whatever_the_chunking(rng, batches_per_call, fraction):
    """fraction is the budget: round(fraction * n) rows over the pass, however the pass is cut into calls."""
    X, E, H = _data(rng)
    idx, w = select_dataset(X, ga.LastLayerGrads(E, H), batch_size=100, batches_per_call=batches_per_call,
                            fraction=fraction, tol=0.3, random_state=0, progress=False)
    assert len(idx) == round(fraction * len(X))
    assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < len(X)
    assert (w >= 0).all()


def test_pass_with_labels_keeps_every_class(rng):
    X, E, H = _data(rng)
    y = rng.integers(0, 5, len(X))
    y[:3] = 7  # a class of three samples somewhere in the first batch
    idx, _ = select_dataset(X, ga.LastLayerGrads(E, H), batch_size=100, batches_per_call=4, fraction=0.1,
                            labels=y, random_state=0, progress=False)
    assert set(np.unique(y[idx])) == set(np.unique(y))
    with pytest.raises(ValueError, match=r"'labels' with one label per row of 'X'"):
        select_dataset(X, None, labels=y[:-1], progress=False)
