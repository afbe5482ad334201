"""graft_array.adapters.torch: hooks, gradient sketches, per-batch and epoch modes, DDP."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from graft_array import LastLayerGrads, select  # noqa: E402
from graft_array.adapters.torch import (  # noqa: E402
    DistributedGraftEpochSampler,
    GraftBatchSelector,
    GraftEpochSampler,
    IndexedDataset,
    capture,
    loss_residuals,
)

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- fixtures



def EpochSampler(*args, **kwargs):
    """GraftEpochSampler in the paper's mode over every sample (embeddings, no pool), which these tests check."""
    kwargs.setdefault("features", "embeddings")
    kwargs.setdefault("pool_fraction", None)
    return GraftEpochSampler(*args, **kwargs)


def clusters(n=2400, d=8, classes=4, seed=0, spread=1.3):
    """Gaussian-cluster classification data from a private generator."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + spread * torch.randn(n, d, generator=g)
    return x, y


def mlp(d=8, hidden=32, classes=4, seed=0, dropout=0.0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers = [nn.Linear(d, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, classes))
        return nn.Sequential(*layers)


def full_loss(model, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


class SelfIndexed(torch.utils.data.Dataset):
    """Item i is (x_i, y_i, i): the dataset returns its own index."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.reads = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i], i


def rng_states():
    return torch.get_rng_state().clone(), np.random.get_state()


def assert_same_rng(before):
    t, npst = before
    assert torch.equal(torch.get_rng_state(), t), "the global torch RNG was touched"
    now = np.random.get_state()
    same = now[0] == npst[0] and np.array_equal(now[1], npst[1]) and now[2:] == npst[2:]
    assert same, "numpy's global RNG was touched"


# --------------------------------------------------------------------------- hooks and residuals


def test_capture_equals_manual_forward_and_removes_hook():
    x, _ = clusters(300)
    model = mlp()
    h, z = capture(model, x)
    with torch.no_grad():
        assert torch.allclose(h, model[:2](x))
        assert torch.allclose(z, model(x))
    assert not model[2]._forward_hooks and not model[0]._forward_hooks
    h2, z2 = capture(model, x, layer="0")  # a named layer: input x, output the first layer's activations
    assert torch.equal(h2, x) and torch.allclose(z2, model[0](x).detach())
    h3, _ = capture(model, x, layer=model[2])
    assert torch.equal(h3, h)


def test_capture_sees_through_custom_forward_and_flattens_embedding():
    class Net(nn.Module):  # no special forward signature, the head used inside an expression
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 3, 3, padding=1)
            self.head = nn.Linear(3 * 8, 5)

        def forward(self, inp):
            a = torch.tanh(self.conv(inp["signal"][:, None, :]))
            return self.head(a.flatten(1)) * 1.0

    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = Net()
    x = {"signal": torch.randn(40, 8)}
    h, z = capture(net, x)
    assert h.shape == (40, 24) and z.shape == (40, 5)
    with torch.no_grad():
        assert torch.allclose(z, net(x))


@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_residuals_are_dloss_dlogits(soft):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(20, 5, generator=g, dtype=torch.float64)
    if soft:
        y = torch.softmax(torch.randn(20, 5, generator=g, dtype=torch.float64), 1)
    else:
        y = torch.randint(0, 5, (20,), generator=g)
        y[3] = -100  # ignored: no loss, no gradient
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(zz, y, reduction="sum"), zz)
    e = loss_residuals(z, y, "cross_entropy")
    assert torch.allclose(e, grad)
    if not soft:
        assert torch.all(e[3] == 0)


def test_mse_residuals_are_dloss_dlogits_per_sample():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.randn(12, 3, generator=g, dtype=torch.float64)
    zz = z.clone().requires_grad_(True)
    per = torch.stack([F.mse_loss(zz[i], y[i]) for i in range(12)])  # reduction "mean" per sample
    (grad,) = torch.autograd.grad(per.sum(), zz)
    assert torch.allclose(loss_residuals(z, y, "mse"), grad)
    z1, y1 = z[:, :1], y[:, 0]  # C == 1 with (n,) targets
    assert torch.allclose(loss_residuals(z1, y1, "mse"), 2 * (z1 - y1[:, None]))


def test_callable_loss_residuals():
    def smooth_ce(z, y):
        return torch.softmax(z, 1) - (0.9 * F.one_hot(y, z.shape[1]) + 0.1 / z.shape[1])

    x, y = clusters(256)
    model = mlp()
    sel = GraftBatchSelector(model, loss=smooth_ce, random_state=0)
    idx, w = sel(x, y)
    assert idx.numel() > 0 and torch.all(w >= 0)
    with pytest.raises(TypeError, match="criterion"):
        sel.step(torch.optim.SGD(model.parameters(), lr=0.1), x, y)
    loss = sel.step(torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                    criterion=lambda out, t: F.cross_entropy(out, t, reduction="none", label_smoothing=0.1))
    assert loss.ndim == 0 and torch.isfinite(loss)


# --------------------------------------------------------------------------- per-batch mode


def test_batch_selector_output_contract():
    x, y = clusters(256)
    model = mlp()
    sel = GraftBatchSelector(model, fraction=0.25, random_state=0)
    idx, w = sel(x, y)
    assert idx.dtype == torch.int64 and idx.device == x.device and w.device == x.device
    assert w.dtype == torch.float32 and torch.all(w >= 0)
    assert torch.isclose(w.sum(), torch.tensor(256.0), rtol=1e-4)
    assert len(set(idx.tolist())) == idx.numel() and 0 <= int(idx.min()) and int(idx.max()) < 256
    # the same selection as the core on the hooked embeddings and the CE residuals
    h, z = capture(model, x)
    e = torch.softmax(z, 1) - F.one_hot(y, 4)
    s = select(h, LastLayerGrads(e, h), fraction=0.25, return_info=True, random_state=1)
    assert set(s.indices.tolist()) == set(idx.tolist())


def test_batch_selector_restores_modes_and_rng():
    x, y = clusters(256)
    model = mlp(dropout=0.5)
    model.train()
    model[0].eval()  # a frozen submodule stays frozen
    modes = [m.training for m in model.modules()]
    sel = GraftBatchSelector(model, random_state=0)
    before = rng_states()
    a, wa = sel(x, y)
    b, wb = sel(x, y)  # eval-mode forward: dropout off, the same selection
    assert_same_rng(before)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(a, b) and torch.allclose(wa, wb)
    sel2 = GraftBatchSelector(model, eval_mode=False, random_state=0)
    sel2(x, y)
    assert [m.training for m in model.modules()] == modes


def test_per_batch_training_loss_falls():
    x, y = clusters(2400, seed=4)
    model = mlp(seed=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # (GRAFT's NNLS weights can concentrate: see the report)
    sel = GraftBatchSelector(model, fraction=0.25, random_state=0)
    start = full_loss(model, x, y)
    order = torch.randperm(2400, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(2):
        for lo in range(0, 2400, 128):
            b = order[lo:lo + 128]
            losses.append(float(sel.step(opt, x[b], y[b])))
    end = full_loss(model, x, y)
    assert end < 0.5 * start, (start, end)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_step_is_the_weighted_loss():
    x, y = clusters(128, seed=5)
    m1, m2 = mlp(seed=5), mlp(seed=5)
    o1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    loss = GraftBatchSelector(m1, random_state=0).step(o1, x, y)
    idx, w = GraftBatchSelector(m2, random_state=0)(x, y)
    manual = (w * F.cross_entropy(m2(x[idx]), y[idx], reduction="none")).sum() / 128
    o2.zero_grad()
    manual.backward()
    o2.step()
    assert torch.allclose(loss, manual.detach())
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p1, p2)


def test_mse_regression_selector():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(200, 8, generator=g)
    y = x @ torch.randn(8, 2, generator=g)
    model = mlp(classes=2)
    sel = GraftBatchSelector(model, loss="mse", random_state=0)
    idx, w = sel(x, y)
    assert idx.numel() > 0 and torch.all(w >= 0)
    loss = sel.step(torch.optim.SGD(model.parameters(), lr=0.01), x, y)
    assert torch.isfinite(loss)


def test_requires_grad_noncontiguous_and_features_inputs():
    x, y = clusters(256)
    model = mlp()
    xg = x.clone().requires_grad_(True)
    i1, w1 = GraftBatchSelector(model, random_state=0)(xg, y)
    assert all(p.grad is None for p in model.parameters()) and xg.grad is None
    xt = x.t().contiguous().t()  # same values, transposed strides
    assert not xt.is_contiguous()
    i2, w2 = GraftBatchSelector(model, random_state=0)(xt, y)
    assert torch.equal(i1, i2) and torch.allclose(w1, w2)
    i3, w3 = GraftBatchSelector(model, features="inputs", random_state=0)(xt, y)
    i4, _ = GraftBatchSelector(model, features="inputs", random_state=0)(x, y)
    assert torch.equal(i3, i4) and torch.all(w3 >= 0)
    i5, w5 = GraftBatchSelector(model, loss=None, fraction=0.125)(x)  # features only: a fixed size
    assert i5.numel() == 32 and torch.allclose(w5, torch.full((32,), 8.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_and_inputs(dtype):
    x, y = clusters(256)
    model = mlp().to(dtype)
    idx, w = GraftBatchSelector(model, random_state=0)(x.to(dtype), y)
    assert idx.dtype == torch.int64 and idx.numel() > 0
    assert torch.all(torch.isfinite(w)) and torch.all(w >= 0)
    loss = GraftBatchSelector(model, random_state=0).step(torch.optim.SGD(model.parameters(), lr=0.01),
                                                          x.to(dtype), y)
    assert torch.isfinite(loss.float())


def test_bad_inputs_have_clear_errors():
    x, y = clusters(64)
    model = mlp()
    with pytest.raises(ValueError, match=r"'layer'.*must name a submodule.*'0', '1', '2'.*Got 'fc'"):
        GraftBatchSelector(model, layer="fc")
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        GraftBatchSelector(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()))
    with pytest.raises(TypeError, match="'model' to be a torch.nn.Module"):
        GraftBatchSelector(lambda t: t)
    with pytest.raises(ValueError, match="'loss'.*'cross_entropy', 'mse'.*Got 'hinge'"):
        GraftBatchSelector(model, loss="hinge")
    with pytest.raises(ValueError, match="'features'.*Got 'logits'"):
        GraftBatchSelector(model, features="logits")
    with pytest.raises(ValueError, match="'fraction' parameter of GraftBatchSelector"):
        GraftBatchSelector(model, fraction=0.0)
    with pytest.raises(TypeError, match="sets 'offsets'"):
        GraftBatchSelector(model, offsets=[0])
    sel = GraftBatchSelector(model)
    with pytest.raises(ValueError, match=r"'y' with one target per sample of 'x' \(64\); got shape \(63,\)"):
        sel(x, y[:63])
    with pytest.raises(TypeError, match="'y' to be a tensor"):
        sel(x, y.tolist())
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        sel(x, y + 4)
    with pytest.raises(ValueError, match="class indices"):
        sel(x, y.float())  # floats of shape (n,) are neither indices nor probabilities
    with pytest.raises(ValueError, match="features='inputs' expects 'x' to be a floating tensor"):
        GraftBatchSelector(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), features="inputs")(
            torch.arange(10), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"MSE targets of shape \(64, 4\)"):
        GraftBatchSelector(model, loss="mse")(x, torch.randn(64, 3))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, t):
            return self.fc(self.fc(t))

    with pytest.raises(ValueError, match="run exactly once per forward; it ran 2 times"):
        GraftBatchSelector(Twice())(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, t):
            return t

    with pytest.raises(ValueError, match="never ran"):
        GraftBatchSelector(Unused())(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    seq = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"logits of shape \(n, C\); got shape \(8, 5, 3\)"):
        GraftBatchSelector(seq)(torch.randn(8, 5, 4), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="callable 'loss' to return dloss/dlogits"):
        GraftBatchSelector(model, loss=lambda z, t: z[:, :2])(x, y)


# --------------------------------------------------------------------------- epoch mode


def test_epoch_indices_are_dataset_indices():
    """Each batch of 100 has exactly 10 non-zero rows (at i % 10 == 3): a batch-local index bug shows."""
    n, d = 1050, 16
    g = torch.Generator().manual_seed(8)
    x = torch.zeros(n, d)
    hot = torch.arange(3, n, 10)
    x[hot] = torch.randn(len(hot), d, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    ds = SelfIndexed(x, y)
    model = mlp(d=d, classes=2)
    s = EpochSampler(ds, model, loss=None, features="inputs", fraction=0.1, batch_size=100,
                          batches_per_call=4, progress=False)
    assert sorted(s.indices.tolist()) == hot.tolist()  # including the short last batch (1000..1049)
    assert torch.all(s.weights[hot] > 0) and float(s.weights.sum()) == pytest.approx(n)
    seen = []
    for xb, _, ib in DataLoader(ds, batch_size=32, sampler=s):
        assert torch.all(xb.abs().sum(1) > 0)  # the dataset's own index agrees with the sample
        seen += ib.tolist()
    assert sorted(seen) == hot.tolist()


def test_shuffled_pass_returns_dataset_indices():
    """Each pass cuts its batches from a seeded permutation; the indices are still dataset indices."""
    n, d = 1000, 12
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    ds = SelfIndexed(x, y)
    model = mlp(d=d, classes=2)
    kw = dict(loss=None, features="inputs", fraction=0.1, batch_size=100, progress=False, seed=3)
    plain = GraftEpochSampler(ds, model, **kw)
    s = GraftEpochSampler(ds, model, shuffle_pass=True, refresh_every=1, **kw)
    idx0 = s.indices.clone()
    assert len(idx0) == 100 and len(set(idx0.tolist())) == 100 and int(idx0.max()) < n
    assert set(idx0.tolist()) != set(plain.indices.tolist())  # other batches, other rows
    for xb, _, ib in DataLoader(ds, batch_size=50, sampler=s):
        assert torch.equal(xb, x[ib])  # the sample behind each yielded index is the dataset's own
    assert torch.all(s.weights[idx0] > 0) and float(s.weights.sum()) == pytest.approx(n)
    s.set_epoch(1)
    assert set(s.indices.tolist()) != set(idx0.tolist())  # a new permutation at the next pass
    again = GraftEpochSampler(ds, model, shuffle_pass=True, refresh_every=1, **kw)
    assert torch.equal(again.indices, idx0)  # seeded: reproducible


def test_epoch_selection_matches_core_with_offsets():
    x, y = clusters(1050, seed=9)
    model = mlp(seed=9)
    ds = TensorDataset(x, y)
    s = EpochSampler(ds, model, fraction=0.3, batch_size=100, batches_per_call=3, progress=False,
                          budget="batch")  # per-batch sizes: the same as one select per batch
    h, z = capture(model, x)
    e = torch.softmax(z, 1) - F.one_hot(y, 4)
    parts = [slice(lo, min(lo + 100, 1050)) for lo in range(0, 1050, 100)]
    want = []
    for sl in parts:
        local = select(h[sl], LastLayerGrads(e[sl], h[sl]), fraction=0.3, random_state=0, solver="exact",
                       budget="batch")
        want += (local + sl.start).tolist()
    assert sorted(s.indices.tolist()) == sorted(want)
    w = s.weights
    for sl in parts:  # weights by dataset index sum to each batch's size
        assert float(w[sl].sum()) == pytest.approx(sl.stop - sl.start, rel=1e-5)
    assert torch.all(w >= 0) and torch.all(w[s.indices] >= 0)  # NNLS may zero a selected row
    outside = torch.ones(1050, dtype=torch.bool)
    outside[s.indices] = False
    assert torch.all(w[outside] == 0)


def test_epoch_training_loss_falls():
    x, y = clusters(2400, seed=10)
    model = mlp(seed=10)
    ds = IndexedDataset(TensorDataset(x, y))
    s = GraftEpochSampler(ds, model, fraction=0.3, batch_size=128, warm_start_epochs=1, progress=False, seed=1)
    loader = DataLoader(ds, batch_size=64, sampler=s, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = full_loss(model, x, y)
    lengths = []
    for epoch in range(5):
        s.set_epoch(epoch)
        lengths.append(len(s))
        for xb, yb, ib in loader:
            w = s.loss_weights(ib)
            loss = (w * F.cross_entropy(model(xb), yb, reduction="none")).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    end = full_loss(model, x, y)
    assert lengths[0] == 2400 and all(400 < m < 1500 for m in lengths[1:]), lengths
    assert end < 0.5 * start, (start, end)


def test_epoch_schedule_reshuffle_and_rng():
    x, y = clusters(600, seed=11)
    ds = SelfIndexed(x, y)
    model = mlp(seed=11)
    before = rng_states()
    s = EpochSampler(ds, model, batch_size=100, warm_start_epochs=1, refresh_every=2, progress=False, seed=5)
    assert len(s) == 600 and torch.equal(s.weights, torch.ones(600))
    assert sorted(iter(s)) == list(range(600))
    assert ds.reads == 0  # no pass during warm start
    with pytest.raises(ValueError, match="warm-start epoch 0"):
        s.refresh()
    s.set_epoch(1)
    first = list(iter(s))
    assert ds.reads == 600 and len(first) == len(s) < 600
    s.set_epoch(2)  # same selection, new order
    second = list(iter(s))
    assert ds.reads == 600 and sorted(second) == sorted(first) and second != first
    lw = s.loss_weights(torch.tensor(first))  # mean one over the subset: sum_S w l / N, rescaled
    assert float(lw.mean()) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(lw, s.weights[first] * len(first) / 600)
    with torch.no_grad():  # the model changes; epoch 3 refreshes
        model[2].weight.mul_(-1.0)
    s.set_epoch(3)
    len(s)
    assert ds.reads == 1200
    assert_same_rng(before)
    s2 = EpochSampler(ds, model, batch_size=100, warm_start_epochs=1, refresh_every=2, progress=False, seed=5)
    s2.set_epoch(3)
    assert list(iter(s2)) == list(iter(s))  # reproducible from the seed
    assert ds.reads == 1800
    s.refresh()
    assert ds.reads == 2400


def test_progress_bar_on_stderr_only(capsys):
    x, y = clusters(300)
    s = GraftEpochSampler(TensorDataset(x, y), mlp(), batch_size=100, progress=True)
    len(s)
    out, err = capsys.readouterr()
    assert out == "" and "GRAFT selection" in err
    GraftEpochSampler(TensorDataset(x, y), mlp(), batch_size=100, progress=False).indices
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_epoch_sampler_bad_inputs():
    x, y = clusters(100)
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match="'batch_size' parameter of GraftEpochSampler"):
        GraftEpochSampler(ds, mlp(), batch_size=0)
    with pytest.raises(ValueError, match="'refresh_every' parameter"):
        GraftEpochSampler(ds, mlp(), refresh_every=0)
    with pytest.raises(ValueError, match="non-empty 'dataset'"):
        GraftEpochSampler(TensorDataset(x[:0], y[:0]), mlp())
    with pytest.raises(TypeError, match="map-style 'dataset'"):
        GraftEpochSampler(iter(ds), mlp())
    with pytest.raises(ValueError, match="'layer'.*Got 'head'"):
        GraftEpochSampler(ds, mlp(), layer="head")
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        DistributedGraftEpochSampler(ds, mlp())
    with pytest.raises(ValueError, match="'rank' parameter"):
        DistributedGraftEpochSampler(ds, mlp(), num_replicas=2, rank=2)
    bad = GraftEpochSampler(TensorDataset(x, y[:, None].expand(100, 2)), mlp(), progress=False)
    with pytest.raises(ValueError, match="class indices"):
        len(bad)


def test_distributed_partition_without_process_group():
    x, y = clusters(500, seed=12)
    ds, model = TensorDataset(x, y), mlp(seed=12)
    parts = [DistributedGraftEpochSampler(ds, model, num_replicas=3, rank=r, batch_size=100, progress=False)
             for r in range(3)]
    # with no process group each rank keeps its own block's selection; the lengths are still DistributedSampler's
    for r, p in enumerate(parts):
        lo, hi = p._shard()
        assert (lo, hi) == ((r * 500) // 3, ((r + 1) * 500) // 3)
    one = parts[0]
    order = torch.arange(10)
    got = [DistributedGraftEpochSampler._rank_part(p, order).tolist() for p in parts]
    assert got == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]
    one.drop_last = True
    assert DistributedGraftEpochSampler._rank_part(one, order).tolist() == [0, 3, 6]
    with pytest.raises(RuntimeError, match="gather the 3 ranks' selections"):
        len(one)


# --------------------------------------------------------------------------- DDP, 2 processes, gloo


def test_ddp_two_processes_share_the_subset(tmp_path):
    init = tmp_path / "init"
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    procs = [subprocess.Popen([sys.executable, str(HERE / "_ddp_worker.py"), str(r), "2", str(init), str(outs[r])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    logs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            logs.append(out + err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    assert all(log.strip() == "" for log in logs), logs  # nothing printed, no warning
    r0, r1 = (json.loads(o.read_text()) for o in outs)
    assert r0["world"] == r1["world"] == 2
    for drop_last in (False, True):
        key = f"drop_last={drop_last}"
        for e0, e1 in zip(r0[key], r1[key]):
            assert e0["subset"] == e1["subset"] and e0["weights"] == e1["weights"]
            subset = e0["subset"]
            assert len(set(subset)) == len(subset) and 0 < len(subset) < 1000
            assert any(i < 500 for i in subset) and any(i >= 500 for i in subset)  # both shards, dataset indices
            assert e0["len"] == e1["len"] == len(e0["order"]) == len(e1["order"])
            union = set(e0["order"]) | set(e1["order"])
            if drop_last:
                assert e0["len"] == len(subset) // 2 and not set(e0["order"]) & set(e1["order"])
                assert union <= set(subset) and len(union) == 2 * e0["len"]
            else:
                assert union == set(subset) and e0["len"] == -(-len(subset) // 2)
        assert r0[key][0]["order"] != r0[key][1]["order"]  # reshuffled per epoch
    # blocks of 500 are whole batches of 100: the same subset as one process
    assert sorted(r0["drop_last=False"][0]["subset"]) == sorted(r0["single"])
    # pool + exclusion: the same history, candidates and subset on both ranks
    assert r0["pool+excl"] == r1["pool+excl"]
    easy = {i for i, v in enumerate(r0["loss"]) if v < 1.0}  # learned at their first record (window 1)
    passes = r0["pool+excl"]
    assert len(passes[0]["candidates"]) == 600 and set(passes[0]["learned"]) == easy & set(passes[0]["candidates"])
    for prev, e in zip(passes, passes[1:]):
        # learned before this pass: from the last pass, and from the training records of BOTH ranks' parts (zeros)
        before = set(prev["learned"]) | set(prev["subset"])
        assert before > set(prev["learned"])
        assert not before & set(e["candidates"]) and len(e["candidates"]) == min(600, 1000 - len(before))
        assert set(e["subset"]) <= set(e["candidates"])


def test_features_gradients_select_on_the_last_layer_gradients():
    x, y = clusters(256)
    model = mlp()
    sel = GraftBatchSelector(model, features="gradients", fraction=0.25, random_state=0)
    idx, w = sel(x, y)
    with torch.no_grad():
        h = model[:-1](x)
        e = torch.softmax(model(x), 1) - F.one_hot(y, 4).float()
    ref = select(None, LastLayerGrads(e, h), fraction=0.25, random_state=np.random.default_rng(0), return_info=True)
    assert torch.equal(idx, ref.indices) and torch.allclose(w, ref.weights.float())
    with pytest.raises(ValueError, match="features='gradients' selects on the per-sample gradients.*loss=None"):
        GraftBatchSelector(model, features="gradients", loss=None)
    ds = IndexedDataset(TensorDataset(x, y))
    kw = dict(fraction=0.25, batch_size=64, batches_per_call=3, progress=False, seed=1, features="gradients",
              unpack=lambda b: (b[0], b[1]))
    s = EpochSampler(ds, model, **kw)
    got = s.indices
    assert len(got) == len(set(got.tolist())) and torch.all(s.weights[got] >= 0)
    # the pass equals select calls over the dataset's batches of 64 (3 per call) with dataset offsets
    seed = int(np.random.default_rng([1, 0]).integers(2**63))
    E, H = e.reshape(4, 64, 4), h.reshape(4, 64, -1)
    want = torch.cat([select(None, LastLayerGrads(E[a:b], H[a:b]), fraction=0.25, offsets=np.arange(a, b) * 64,
                             random_state=seed) for a, b in ((0, 3), (3, 4))])
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- sampler options: pool, exclusion,
# strata, class balance, forward batches, channels-last


class SelectSpy:
    """Stands in for the adapter's ``select``: records every call's keyword arguments and runs the real one."""

    def __init__(self, monkeypatch):
        import graft_array.adapters.torch as gt

        self.calls = []
        self._real = gt.select
        monkeypatch.setattr(gt, "select", self)

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self._real(*args, **kwargs)


def test_pool_holds_distinct_candidates_stratified_and_selection_inside():
    n = 1000
    x, y = clusters(n, d=8, classes=4, seed=21)
    ds = SelfIndexed(x, y)
    model = mlp(seed=21)
    before = rng_states()
    kw = dict(fraction=0.2, pool_fraction=0.55, batch_size=100, progress=False, seed=4, labels=y, refresh_every=1)
    s = GraftEpochSampler(ds, model, **kw)
    sel = s.indices
    pool = s.candidates
    m = math.ceil(0.55 * n)
    assert len(pool) == m == len(set(pool.tolist())) and int(pool.min()) >= 0 and int(pool.max()) < n
    assert torch.equal(pool, pool.sort().values)  # dataset order
    assert set(sel.tolist()) <= set(pool.tolist())
    assert abs(len(sel) - 0.2 * n) <= 6  # select's fraction 0.2 n / m within the pool
    assert ds.reads == m  # only the pool was read
    for c in range(4):  # class-stratified: each class's share of the pool within one sample
        assert abs(int((y[pool] == c).sum()) - m * int((y == c).sum()) / n) <= 1
    assert float(s.weights.sum()) == pytest.approx(n, rel=1e-5)  # each pool sample stands for n / m samples
    for xb, _, ib in DataLoader(ds, batch_size=50, sampler=s, generator=torch.Generator()):
        assert torch.equal(xb, x[ib])
    again = GraftEpochSampler(ds, model, **kw)
    assert torch.equal(again.indices, sel) and torch.equal(again.candidates, pool)  # seeded
    s.set_epoch(1)
    assert set(s.candidates.tolist()) != set(pool.tolist())  # a new pool per pass
    # the same pool on every rank (no process group needed to draw it)
    ranks = [DistributedGraftEpochSampler(ds, model, num_replicas=2, rank=r, **kw) for r in range(2)]
    assert torch.equal(ranks[0]._candidates(0)[0], ranks[1]._candidates(0)[0])
    assert torch.equal(ranks[0]._candidates(0)[0], pool)
    assert ranks[0]._shard(m) == (0, m // 2) and ranks[1]._shard(m) == (m // 2, m)
    # no labels: a plain uniform pool of the same size
    plain = GraftEpochSampler(TensorDataset(x, y), model, **dict(kw, labels=None))
    plain.indices
    assert len(plain.candidates) == m and set(plain.indices.tolist()) <= set(plain.candidates.tolist())
    assert_same_rng(before)


def test_pool_and_option_errors_name_the_argument():
    x, y = clusters(200)
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match=r"'pool_fraction' parameter of GraftEpochSampler.*\[0.3, 1\].*Got 0.2"):
        EpochSampler(ds, mlp(), fraction=0.3, pool_fraction=0.2)
    with pytest.raises(ValueError, match="'pool_fraction' parameter"):
        EpochSampler(ds, mlp(), pool_fraction=1.5)
    with pytest.raises(TypeError, match="'pool_fraction' parameter"):
        EpochSampler(ds, mlp(), pool_fraction="half")
    with pytest.raises(ValueError, match="'labels' parameter of GraftEpochSampler"):
        EpochSampler(ds, mlp(), labels=y[:10])
    with pytest.raises(ValueError, match="'labels' parameter"):
        EpochSampler(ds, mlp(), labels=y.float())
    with pytest.raises(TypeError, match="'class_balance' parameter"):
        EpochSampler(ds, mlp(), class_balance=1)
    with pytest.raises(TypeError, match="'exclude_learned' parameter"):
        EpochSampler(ds, mlp(), exclude_learned="yes")
    with pytest.raises(ValueError, match="'learned_window' parameter"):
        EpochSampler(ds, mlp(), learned_window=0)
    with pytest.raises(ValueError, match="'learned_threshold' parameter"):
        EpochSampler(ds, mlp(), learned_threshold=-0.1)
    with pytest.raises(ValueError, match="'strata' parameter"):
        EpochSampler(ds, mlp(), strata=0)
    with pytest.raises(ValueError, match="'strata' parameter.*loss='cross_entropy' or 'mse'"):
        EpochSampler(ds, mlp(), strata=3, loss=None)
    with pytest.raises(ValueError, match="'forward_batch_size' parameter"):
        EpochSampler(ds, mlp(), forward_batch_size=0)
    with pytest.raises(ValueError, match="'forward_batch_size' parameter.*eval mode only"):
        EpochSampler(ds, mlp(), forward_batch_size=256, eval_mode=False)
    with pytest.raises(TypeError, match="'channels_last' parameter"):
        EpochSampler(ds, mlp(), channels_last=None)


def test_pool_raises_select_fraction_and_keeps_the_rank(monkeypatch):
    x, y = clusters(800, seed=22)
    spy = SelectSpy(monkeypatch)
    s = EpochSampler(TensorDataset(x, y), mlp(hidden=64, seed=22), fraction=0.25, pool_fraction=0.5,
                          batch_size=100, progress=False)
    s.indices
    assert [c["fraction"] for c in spy.calls] == [pytest.approx(0.25 * 800 / 400)]
    assert spy.calls[0]["rank"] == 25  # round(fraction * batch_size): the rank of a pass over every sample
    spy.calls.clear()
    EpochSampler(TensorDataset(x, y), mlp(hidden=64, seed=22), fraction=0.25, pool_fraction=0.5,
                      batch_size=100, progress=False, rank=40).indices
    assert spy.calls[0]["rank"] == 40  # the caller's rank wins
    spy.calls.clear()
    EpochSampler(TensorDataset(x, y), mlp(seed=22), fraction=0.25, batch_size=100, progress=False).indices
    assert spy.calls[0]["fraction"] == 0.25 and "rank" not in spy.calls[0]  # no pool: select as before


def test_exclude_learned_leaves_out_learned_samples():
    n = 600
    x, y = clusters(n, seed=23)
    ds = SelfIndexed(x, y)
    model = mlp(seed=23)
    kw = dict(fraction=0.3, batch_size=100, progress=False, refresh_every=1, exclude_learned=True,
              learned_window=3, learned_threshold=0.5, loss="cross_entropy")
    s = EpochSampler(ds, model, **kw)
    assert not s.learned.any()
    easy = torch.arange(0, 200)
    for _ in range(3):
        s.record_losses(easy, torch.full((200,), 0.01))
    s.record_losses(torch.tensor([300, 300, 300]), torch.tensor([0.01, 0.01, 0.01]))  # repeats record in turn
    s.record_losses(torch.tensor([400, 400, 400, 400]), torch.tensor([0.01, 0.01, 0.01, 9.0]))  # last one high
    learned = s.learned
    assert learned[:200].all() and learned[300] and not learned[400] and int(learned.sum()) == 201
    sel = s.indices
    cand = set(s.candidates.tolist())
    assert len(cand) == n - 201 and not cand & set(range(200)) and 300 not in cand
    assert not set(sel.tolist()) & (set(range(200)) | {300})
    assert abs(len(sel) - 0.3 * n) <= 6  # the budget stays fraction * N
    assert float(s.weights.sum()) == pytest.approx(n - 201, rel=1e-5)  # the eligible samples, not the learned
    # the pass recorded every candidate's loss at the model: one more record each
    assert int(s._hist_count[450]) == 1 and int(s._hist_count[0]) == 3
    # a high loss un-learns a sample at the next pass
    s.record_losses(torch.tensor([5]), torch.tensor([2.0]))
    assert not s.learned[5]
    s.set_epoch(1)
    assert 5 in set(s.candidates.tolist())
    # off: record_losses is a no-op and nothing is excluded
    off = EpochSampler(ds, model, **dict(kw, exclude_learned=False))
    off.record_losses(easy, torch.zeros(200))
    assert not off.learned.any()
    off.indices
    assert len(off.candidates) == n
    with pytest.raises(ValueError, match="record_losses expects dataset indices in \\[0, 600\\)"):
        s.record_losses(torch.tensor([600]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="record_losses expects 'losses'"):
        s.record_losses(torch.tensor([1, 2]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="record_losses expects 'index'"):
        s.record_losses(torch.tensor([1.0]), torch.tensor([0.0]))


def test_distributed_exclusion_holds_records_until_the_pass():
    """Under DDP the records wait for the pass (which gathers every rank's); one replica needs no group."""
    x, y = clusters(300, seed=30)
    s = DistributedGraftEpochSampler(TensorDataset(x, y), mlp(seed=30), num_replicas=1, rank=0, fraction=0.2,
                                     batch_size=100, progress=False, exclude_learned=True, learned_window=2)
    s.record_losses(torch.arange(50), torch.zeros(50))
    s.record_losses(torch.arange(50), torch.zeros(50))
    assert not s.learned.any()  # held
    s.indices
    assert s.learned[:50].all() and not set(s.candidates.tolist()) & set(range(50))
    assert not set(s.indices.tolist()) & set(range(50))


def test_exclude_learned_with_everything_learned_falls_back_to_all():
    x, y = clusters(300, seed=24)
    s = EpochSampler(TensorDataset(x, y), mlp(seed=24), fraction=0.2, batch_size=100, progress=False,
                          exclude_learned=True, learned_window=1)
    s.record_losses(torch.arange(300), torch.zeros(300))
    assert s.learned.all()
    assert len(s.indices) > 0 and len(s.candidates) == 300


def test_strata_labels_are_loss_quantiles(monkeypatch):
    n, S = 1000, 4
    x, y = clusters(n, seed=25, spread=2.0)
    model = mlp(seed=25)
    spy = SelectSpy(monkeypatch)
    s = EpochSampler(TensorDataset(x, y), model, fraction=0.3, batch_size=100, batches_per_call=4, strata=S,
                          progress=False)
    sel = s.indices
    assert len(spy.calls) == 3  # calls of 4, 4 and 2 batches
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y, reduction="none")
    for call in spy.calls:
        offs = call["offsets"]
        lab = np.asarray(call["labels"])
        assert lab.shape == (len(offs), 100)
        rows = torch.cat([torch.arange(o, o + 100) for o in offs.tolist()])
        lab = torch.as_tensor(lab.reshape(-1))
        m = len(rows)
        for b in range(S):  # equal-count bins, ordered by loss
            assert int((lab == b).sum()) == m // S
        for b in range(S - 1):
            assert float(loss[rows][lab == b].max()) <= float(loss[rows][lab == b + 1].min()) + 1e-6
    # every difficulty level gets its share of the budget
    sel_loss = loss[sel]
    quart = torch.quantile(loss, torch.tensor([0.25, 0.5, 0.75]))
    counts = torch.bincount(torch.bucketize(sel_loss, quart), minlength=S)
    assert int(counts.min()) >= 0.15 * len(sel), counts


def test_class_balance_forwards_the_batch_labels(monkeypatch):
    n, S = 600, 3
    x, y = clusters(n, seed=26)
    model = mlp(seed=26)
    spy = SelectSpy(monkeypatch)
    s = EpochSampler(TensorDataset(x, y), model, fraction=0.3, batch_size=100, class_balance=True,
                          progress=False)
    s.indices
    (call,) = spy.calls
    assert np.array_equal(np.asarray(call["labels"]), y.reshape(6, 100).numpy())
    spy.calls.clear()
    s = EpochSampler(TensorDataset(x, y), model, fraction=0.3, batch_size=100, class_balance=True, strata=S,
                          progress=False)
    s.indices
    lab = np.asarray(spy.calls[0]["labels"]).reshape(-1)
    assert np.array_equal(lab // S, y.numpy()) and set(np.unique(lab % S)) == set(range(S))
    # a ragged last batch: labels as a list, one array per batch
    spy.calls.clear()
    EpochSampler(TensorDataset(x[:550], y[:550]), model, fraction=0.3, batch_size=100, class_balance=True,
                      progress=False).indices
    lab = spy.calls[0]["labels"]
    assert isinstance(lab, list) and [len(v) for v in lab] == [100] * 5 + [50]
    assert np.array_equal(np.concatenate(lab), y[:550].numpy())
    with pytest.raises(ValueError, match="'class_balance' parameter of GraftEpochSampler needs integer class labels"):
        EpochSampler(TensorDataset(x), model, loss=None, class_balance=True, progress=False).indices
    with pytest.raises(ValueError, match="'class_balance' parameter"):
        EpochSampler(TensorDataset(x, F.one_hot(y, 4).float()), model, class_balance=True,
                          progress=False).indices


def test_options_together_are_deterministic_and_leave_global_rng():
    x, y = clusters(900, seed=27)
    ds = IndexedDataset(TensorDataset(x, y))
    model = mlp(seed=27)
    kw = dict(fraction=0.2, batch_size=100, progress=False, seed=9, pool_fraction=0.6, class_balance=True,
              strata=2, exclude_learned=True, learned_window=1, learned_threshold=0.05, shuffle_pass=True,
              refresh_every=1)
    before = rng_states()
    a = GraftEpochSampler(ds, model, **kw)
    b = GraftEpochSampler(ds, model, **kw)
    for epoch in range(3):
        a.set_epoch(epoch), b.set_epoch(epoch)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
        assert list(iter(a)) == list(iter(b))
        assert set(a.indices.tolist()) <= set(a.candidates.tolist())
    assert_same_rng(before)


def test_forward_batches_cut_across_boundaries():
    """Forwards of 70 rows cut into selection batches of 100: the same batches as forwards of 200."""
    x, y = clusters(1030, seed=28)
    ds = TensorDataset(x, y)
    kw = dict(loss=None, features="inputs", fraction=0.2, batch_size=100, batches_per_call=4, progress=False)
    ref = GraftEpochSampler(ds, mlp(seed=28), **kw).indices
    for rows in (70, 100, 1030, 5000):
        assert torch.equal(GraftEpochSampler(ds, mlp(seed=28), forward_batch_size=rows, **kw).indices, ref), rows


def test_channels_last_pass_restores_the_weights():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Linear(8 * 6 * 6, 4)

        def forward(self, inp):
            return self.head(torch.relu(self.conv(inp)).flatten(1))

    with torch.random.fork_rng():
        torch.manual_seed(3)
        net = Net()
        x = torch.randn(300, 3, 6, 6)
        y = torch.randint(0, 4, (300,))
    w, data = net.conv.weight, net.conv.weight.data.clone()
    ds = TensorDataset(x, y)
    on = GraftEpochSampler(ds, net, fraction=0.3, batch_size=100, channels_last=True, progress=False)
    off = GraftEpochSampler(ds, net, fraction=0.3, batch_size=100, progress=False)
    assert len(on.indices) == len(off.indices)
    assert net.conv.weight is w and torch.equal(w.data, data) and w.is_contiguous()
    from graft_array.adapters.torch import _channels_last

    with _channels_last(net, True):
        assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
        h1, z1 = capture(net, x)
    h0, z0 = capture(net, x)
    assert torch.allclose(z1, z0, atol=1e-5) and torch.allclose(h1, h0, atol=1e-5)
    assert net.conv.weight.is_contiguous()


def test_inference_mode_pass_outputs_are_usable():
    """With its forward under inference_mode (bench_pass.py's comparison) the pass selects the same rows."""
    x, y = clusters(400, seed=29)
    model = mlp(seed=29)
    ds = IndexedDataset(TensorDataset(x, y))
    s = GraftEpochSampler(ds, model, fraction=0.3, batch_size=100, progress=False, features="gradients")
    s._inference = True
    idx = s.indices
    assert torch.equal(idx, GraftEpochSampler(ds, model, fraction=0.3, batch_size=100, progress=False,
                                              features="gradients").indices)
    assert not idx.is_inference() and not s.weights.is_inference()
    loss = F.cross_entropy(model(x[idx]), y[idx])
    loss.backward()  # the model is untouched by the pass
    assert model[0].weight.grad is not None


# --------------------------------------------------------------------------- the training harness


def _small_digits(rows=400):
    from graft_array import training

    Xtr, ytr, Xte, yte, _ = training.load_data("digits")
    return Xtr[:rows], ytr[:rows], Xte[:200], yte[:200]


def test_run_method_passes_sampler_kwargs_and_counts_the_passes():
    pytest.importorskip("sklearn")
    from graft_array import training

    data = _small_digits()
    n = len(data[0])
    kw = dict(epochs=3, refresh_every=1, batch_size=64, fraction=0.3)
    r = training.run_method("graft", data, sampler_kwargs=dict(warm_start_epochs=1, pool_fraction=0.6,
                                                                exclude_learned=True), **kw)
    assert r.extra["passes"] == 2  # epochs 1 and 2; epoch 0 is the warm start on all the data
    assert n + 2 * 100 <= r.samples_trained <= n + 2 * 140  # about 0.3 n = 120 per selected epoch
    assert 0 < r.selection_s < r.wall_s
    plain = training.run_method("graft-emb", data, **kw)
    assert plain.extra["passes"] == 3
    with pytest.raises(ValueError, match="'sampler_kwargs'.*'full'"):
        training.run_method("full", data, sampler_kwargs=dict(pool_fraction=0.5), **kw)
    rows = training.run_grid(data, methods=("full", "random", "graft"), fractions=(0.3,), seeds=(0,), progress=False,
                             epochs=1, refresh_every=1, sampler_kwargs=dict(pool_fraction=0.5))
    assert [(x.method, x.extra["passes"]) for x in rows] == [("full", 0), ("random", 1), ("graft", 1)]


@pytest.mark.slow
def test_bench_ablation_quick_runs(tmp_path):
    pytest.importorskip("sklearn")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, str(HERE.parent / "benchmarks" / "bench_ablation.py"), "--quick",
                          "--no-progress", "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    md = (tmp_path / "ablation_digits_mlp.md").read_text()
    js = json.loads((tmp_path / "ablation_digits_mlp.json").read_text())
    assert "grad+pool+cb" in md and "random" in md
    assert {r["variant"] for r in js["summary"]} >= {"emb", "grad+pool (default)", "grad+excl", "grad+warm", "random"}
    assert all(0 <= r["selection_share"] < 1 for r in js["summary"])


def test_epoch_sampler_defaults_are_the_measured_ones():
    """features="gradients" and a candidate pool of twice the budget (none from fraction 0.5 on)."""
    x, y = clusters(400, seed=3)
    model = mlp(seed=3)
    s = GraftEpochSampler(TensorDataset(x, y), model, fraction=0.2, batch_size=50, progress=False)
    assert s.pool_fraction == pytest.approx(0.4) and s._sketch.features == "gradients"
    assert len(s.candidates) == 160 and set(s.indices.tolist()) <= set(s.candidates.tolist())
    assert len(s.indices) == 80
    big = GraftEpochSampler(TensorDataset(x, y), model, fraction=0.5, batch_size=50, progress=False)
    assert big.pool_fraction is None and len(big.indices) == 200


# --------------------------------------------------------------------------- refresh_tau: CREST's trigger


def _probe_reference(sampler, model, x, y):
    """The probe's mean loss and its gradient, by hand (plain autograd on the probe's rows)."""
    q = sampler._quad
    xs = torch.cat([b[0] for b in q["batches"]])
    ys = torch.cat([b[1] for b in q["batches"]])
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(xs), ys)
    g = torch.autograd.grad(loss, params)
    return float(loss.detach()), torch.cat([t.reshape(-1) for t in g]), xs, ys


def test_refresh_tau_fits_the_probe_model_and_skips_while_it_holds():
    from graft_array.testing import reference_quadratic_trigger

    x, y = clusters(1200, seed=31)
    ds = TensorDataset(x, y)
    model = mlp(seed=31)
    kw = dict(fraction=0.2, batch_size=100, progress=False, seed=5, refresh_every=1, probe_size=300)
    s = GraftEpochSampler(ds, model, refresh_tau=0.05, **kw)
    first = s.indices.clone()
    assert s.stats["passes"] == 1 and s.stats["checks"] == 0
    # the fitted model is the probe's: L0 and g equal plain autograd on the probe's rows, h >= 0
    L0, g, xs, ys = _probe_reference(s, model, x, y)
    assert len(xs) == 300 and torch.bincount(ys, minlength=4).min() > 0  # class-stratified draw
    rows = {tuple(r.tolist()) for r in x}
    assert all(tuple(r.tolist()) in rows for r in xs)
    q = s._quad
    assert q["L0"] == pytest.approx(L0, rel=1e-5)
    torch.testing.assert_close(q["g"], g, rtol=1e-4, atol=1e-6)
    assert bool((q["h"] >= 0).all()) and q["h"].shape == g.shape
    # an unchanged model: L_true == L_approx == L0, the check never fires, the subset serves on
    s.set_epoch(1)
    assert torch.equal(s.indices, first)
    assert s.stats["passes"] == 1 and s.stats["checks"] == 1 and s.stats["skipped"] == 1
    assert s.stats["last_check"]["L_true"] == pytest.approx(L0, rel=1e-5)
    # move the model far: the check fires, the pass runs, the verdict is the reference's
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0).add_(0.5)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    L_true = full_loss(model, xs, ys)
    want, approx = reference_quadratic_trigger(q["L0"], q["g"].numpy(), q["h"].numpy(),
                                               (theta - q["theta0"]).numpy(), L_true, 0.05)
    s.set_epoch(2)
    s.indices
    assert want and s.stats["last_check"]["fired"] and s.stats["passes"] == 2
    assert s.stats["last_check"]["L_approx"] == pytest.approx(approx, rel=1e-6)
    L1, g1, xs1, _ = _probe_reference(s, model, x, y)  # refitted at the new pass, on a fresh probe
    assert s._quad["L0"] == pytest.approx(L1, rel=1e-5) and not torch.equal(xs1, xs)
    torch.testing.assert_close(s._quad["g"], g1, rtol=1e-4, atol=1e-6)


def test_refresh_tau_training_is_deterministic_saves_passes_and_leaves_rng():
    x, y = clusters(1200, seed=32)
    ds = IndexedDataset(TensorDataset(x, y))
    before = rng_states()

    def train(tau):
        model = mlp(seed=32)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        s = GraftEpochSampler(ds, model, fraction=0.2, batch_size=100, progress=False, seed=2, refresh_every=1,
                              refresh_tau=tau, probe_size=200)
        seen = []
        for epoch in range(5):
            s.set_epoch(epoch)
            seen.append(s.indices.clone())
            for b in s.indices.split(32):
                loss = (s.loss_weights(b) * F.cross_entropy(model(x[b]), y[b], reduction="none")).mean()
                opt.zero_grad(), loss.backward(), opt.step()
        return s, seen

    a, sa = train(1e9)  # never fires: one pass
    assert a.stats["passes"] == 1 and a.stats["skipped"] == 4
    assert all(torch.equal(t, sa[0]) for t in sa)
    b, sb = train(0.0)  # fires whenever the loss moved at all: a pass every epoch, as without the trigger
    assert b.stats["passes"] == 5 and b.stats["skipped"] == 0
    _, sc = train(0.0)
    assert all(torch.equal(u, v) for u, v in zip(sb, sc))
    assert_same_rng(before)


def test_refresh_tau_bad_inputs_name_the_argument():
    x, y = clusters(200, seed=33)
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match=r"'refresh_tau' parameter of GraftEpochSampler"):
        GraftEpochSampler(ds, mlp(), refresh_tau=-0.1)
    with pytest.raises(TypeError, match=r"'refresh_tau' parameter of GraftEpochSampler must be a float"):
        GraftEpochSampler(ds, mlp(), refresh_tau="0.1")
    with pytest.raises(ValueError, match=r"'probe_size' parameter"):
        GraftEpochSampler(ds, mlp(), refresh_tau=0.1, probe_size=0)
    with pytest.raises(ValueError, match=r"'hessian_probes' parameter"):
        GraftEpochSampler(ds, mlp(), refresh_tau=0.1, hessian_probes=0)
    with pytest.raises(ValueError, match=r"'refresh_tau'.*loss='cross_entropy' or 'mse'"):
        GraftEpochSampler(ds, mlp(), refresh_tau=0.1, loss=None, features="inputs")
