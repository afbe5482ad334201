"""graft_array.adapters.crest: CREST's pools, selection round, quadratic trigger and sampler."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

from graft_array.adapters import crest as crest_mod  # noqa: E402
from graft_array.adapters.crest import (  # noqa: E402
    CrestSampler,
    class_balanced_pools,
    hutchinson_diagonal,
    quadratic_approximation,
    quadratic_trigger,
)
from graft_array.adapters.torch import IndexedDataset  # noqa: E402
from graft_array.testing import reference_crest_select, reference_quadratic_trigger  # noqa: E402


# --------------------------------------------------------------------------- fixtures


def clusters(n=600, d=6, classes=3, seed=0, spread=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + spread * torch.randn(n, d, generator=g)
    return x.to(dtype), y


def mlp(d=6, classes=3, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)  # tests only: the library never touches the global generator
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes)).to(dtype)


def reference_select(features, grads, *, labels, strategy, fraction, random_state, return_info):
    """select(strategy="crest") for one call, built from the slow reference (the call's budget per stratum)."""
    assert features is None and strategy == "crest" and return_info
    if isinstance(grads, list):
        Es, Ls = [g.cpu().numpy() for g in grads], [v.cpu().numpy() for v in labels]
    else:
        Es, Ls = list(grads.cpu().numpy()), list(labels.cpu().numpy())
    E, L = np.concatenate(Es), np.concatenate(Ls)
    k = max(1, int(round(fraction * E.shape[0])))
    idx, w = reference_crest_select(E, L, k)
    return SimpleNamespace(indices=idx, weights=w)


@pytest.fixture
def ref_select(monkeypatch):
    monkeypatch.setattr(crest_mod, "select", reference_select)


def make_sampler(n=600, dtype=torch.float32, **kw):
    x, y = clusters(n=n, dtype=dtype)
    data = IndexedDataset(TensorDataset(x, y))
    model = mlp(dtype=dtype)
    opts = dict(fraction=0.2, batch_size=16, num_pools=3, pool_size=48, labels=y, check_interval=2, seed=3)
    opts.update(kw)
    return CrestSampler(data, model, **opts), data, model, x, y


def rng_state():
    return torch.get_rng_state().clone(), np.random.get_state()


def assert_rng_untouched(before):
    t, n = before
    assert torch.equal(torch.get_rng_state(), t), "the global torch RNG was touched"
    after = np.random.get_state()
    assert n[0] == after[0] and np.array_equal(n[1], after[1]) and n[2:] == after[2:], "numpy's global RNG was touched"


def draw(sampler, m):
    """The first m indices of one epoch's iteration."""
    return list(itertools.islice(iter(sampler), m))


# --------------------------------------------------------------------------- references


def test_reference_crest_select_small_cases():
    # two groups on a line (exact distances); one class, k = 2. Rows 1 (at 1) and 5 (at 19) have the smallest
    # distance sums, 60 (the tie goes to the lowest: 1); then row 3 (at 20) gains 55 against 54 for rows 4 and 5.
    E = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [20.0, 0.0], [21.0, 0.0], [19.0, 0.0]])
    idx, w = reference_crest_select(E, np.zeros(6, dtype=int), 2)
    assert idx.tolist() == [1, 3] and np.allclose(w, [1.0, 1.0])
    idx, w = reference_crest_select(E, np.zeros(6, dtype=int), 1)
    assert idx.tolist() == [1] and np.allclose(w, [1.0])
    # two classes: ceil(k n_c / n) each, weights = cluster sizes rescaled to mean 1
    lab = np.array([0, 0, 0, 1, 1, 1])
    idx, w = reference_crest_select(E, lab, 2)
    assert idx.size == 2 and set(lab[idx].tolist()) == {0, 1}
    assert np.allclose(w, [1.0, 1.0])  # each chosen row represents its 3-row class
    # k >= n: everything, every weight 1
    idx, w = reference_crest_select(E, lab, 6)
    assert sorted(idx.tolist()) == list(range(6)) and np.allclose(w, 1.0)


def test_select_crest_matches_reference():
    from graft_array import select

    rng = np.random.default_rng(5)
    for _ in range(4):
        n, C = int(rng.integers(20, 50)), int(rng.integers(2, 5))
        E, y = rng.standard_normal((n, C)), rng.integers(0, C, n)
        k = int(rng.integers(2, n // 2))
        s = select(None, E, labels=y, strategy="crest", fraction=k / n, return_info=True, random_state=0)
        idx, w = reference_crest_select(E, y, k)
        got = dict(zip(np.asarray(s.indices).tolist(), np.asarray(s.weights).tolist()))
        want = dict(zip(idx.tolist(), w.tolist()))
        assert got.keys() == want.keys()
        assert np.allclose([got[i] for i in want], list(want.values()))


def test_quadratic_trigger_matches_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = int(rng.integers(1, 30))
        g, h, delta = rng.standard_normal(p), np.abs(rng.standard_normal(p)), rng.standard_normal(p) * 0.3
        L0, L_true, tau = float(rng.uniform(0.5, 2)), float(rng.uniform(0.5, 2)), float(rng.uniform(0, 0.5))
        fired, approx = quadratic_trigger(L0, torch.tensor(g), torch.tensor(h), torch.tensor(delta), L_true, tau)
        rf, ra = reference_quadratic_trigger(L0, g, h, delta, L_true, tau)
        assert fired == rf and math.isclose(approx, ra, rel_tol=1e-12, abs_tol=1e-12)
    assert quadratic_approximation(1.0, [2.0], [4.0], [0.5]) == 1.0 + 1.0 + 0.5
    with pytest.raises(ValueError, match="'g', 'h' and 'delta'"):
        quadratic_approximation(1.0, [1.0, 2.0], [1.0], [1.0])


# --------------------------------------------------------------------------- pools


def test_pools_are_class_balanced_disjoint_and_deterministic():
    labels = np.repeat(np.arange(4), [300, 200, 40, 500])
    pools = class_balanced_pools(labels, 5, 60, np.random.default_rng([7, 0]))
    assert len(pools) == 5 and all(p.size == 60 for p in pools)
    cat = np.concatenate(pools)
    assert np.unique(cat).size == cat.size  # disjoint, no repeats
    per = np.array([np.bincount(labels[p], minlength=4) for p in pools])
    assert (per.max(axis=0) - per.min(axis=0)).max() <= 1
    totals = per.sum(axis=0)  # 300 over 4 classes: 75 each; 40 is all class 2 has, water-filling spreads the rest
    assert totals[2] == 40 and sorted(totals[[0, 1, 3]].tolist()) == [86, 87, 87]
    for p in pools:
        assert np.all(np.diff(p) > 0)
    again = class_balanced_pools(labels, 5, 60, np.random.default_rng([7, 0]))
    assert all(np.array_equal(a, b) for a, b in zip(pools, again))
    other = class_balanced_pools(labels, 5, 60, np.random.default_rng([8, 0]))
    assert not all(np.array_equal(a, b) for a, b in zip(pools, other))


def test_pools_respect_available_and_small_data():
    labels = np.arange(50) % 2
    avail = np.arange(50) >= 20
    pools = class_balanced_pools(labels, 3, 8, np.random.default_rng(0), available=avail)
    assert all(np.all(p >= 20) for p in pools)
    # fewer samples than P pools ask for: fewer full pools
    pools = class_balanced_pools(labels, 10, 20, np.random.default_rng(0))
    assert len(pools) == 2 and all(p.size == 20 for p in pools)
    # fewer than one pool: one pool of everything
    pools = class_balanced_pools(labels[:7], 3, 20, np.random.default_rng(0))
    assert len(pools) == 1 and pools[0].tolist() == list(range(7))
    with pytest.raises(ValueError, match="'labels'"):
        class_balanced_pools(np.zeros(4), 1, 2, np.random.default_rng(0))
    with pytest.raises(TypeError, match="'rng'"):
        class_balanced_pools(labels, 1, 2, 0)
    with pytest.raises(ValueError, match="'available'"):
        class_balanced_pools(labels, 1, 2, np.random.default_rng(0), available=np.ones(3, bool))


# --------------------------------------------------------------------------- Hutchinson


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    a = torch.tensor([3.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    b = torch.tensor([[1.0, -2.0], [0.25, 4.0]], dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    v = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    lin = torch.ones(1, dtype=torch.float64, requires_grad=True)  # linear: zero curvature, no graph in its gradient
    loss = 0.5 * (a * w**2).sum() + (b * v**2).sum() + w.sum() + 3.0 * lin.sum()
    for probes, seed in ((1, 0), (3, 9)):
        d = hutchinson_diagonal(loss, [w, v, lin], probes=probes, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(d, torch.cat([a, 2 * b.reshape(-1), torch.zeros(1, dtype=torch.float64)]))


def test_hutchinson_expectation_is_the_diagonal():
    A = torch.tensor([[2.0, 1.0, -3.0], [1.0, -1.0, 0.5], [-3.0, 0.5, 4.0]], dtype=torch.float64)
    w = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64, requires_grad=True)
    # the mean of z * (A z) over all 8 sign vectors is diag(A) exactly
    signs = [torch.tensor(s, dtype=torch.float64) for s in itertools.product((-1.0, 1.0), repeat=3)]
    loss = 0.5 * w @ A @ w
    g, d = crest_mod._gradient_and_curvature(loss, [w], [[z] for z in signs])
    assert torch.allclose(d / len(signs), torch.diagonal(A), atol=1e-12)
    assert torch.allclose(g, A @ w.detach())
    # and the random estimate converges to it
    est = hutchinson_diagonal(0.5 * w @ A @ w, [w], probes=4000, generator=torch.Generator().manual_seed(0))
    off = torch.sqrt(((A - torch.diag(torch.diagonal(A))) ** 2).sum(dim=1) / 4000)
    assert torch.all((est - torch.diagonal(A)).abs() <= 5 * off)


def test_hutchinson_bad_arguments():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="'loss'"):
        hutchinson_diagonal(w * 2, [w])
    with pytest.raises(ValueError, match="'params'"):
        hutchinson_diagonal((w**2).sum(), [])
    with pytest.raises(ValueError, match="'probes'"):
        hutchinson_diagonal((w**2).sum(), [w], probes=0)
    with pytest.raises(TypeError, match="'generator'"):
        hutchinson_diagonal((w**2).sum(), [w], generator=3)


# --------------------------------------------------------------------------- the round


def exact_pool_model(sampler, model, x, y):
    """L0 and the mean gradient on the current pools, computed directly."""
    cat = np.concatenate(sampler._round.pools)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x[cat]), y[cat])
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads])


def test_round_stores_the_exact_loss_and_gradient(ref_select):
    s, data, model, x, y = make_sampler(dtype=torch.float64)
    first = draw(s, 16)
    r = s._round
    assert r is not None and s.stats["rounds"] == 1
    L0, g = exact_pool_model(s, model, x, y)
    assert math.isclose(r.L0, L0, rel_tol=1e-12)
    assert torch.allclose(r.g, g, rtol=1e-10, atol=1e-12)
    assert r.h.shape == g.shape and bool(torch.all(r.h >= 0)) and bool(torch.all(torch.isfinite(r.h)))
    # the first batch comes from the union of the coresets, which are one per pool
    assert set(first) <= set(r.union.tolist()) and len(set(first)) == 16
    cat = np.concatenate(r.pools)
    assert np.isin(r.union, cat).all()
    for p in r.pools:
        k = np.isin(r.union, p).sum()
        assert 16 <= k <= 16 + 3  # ceil per class: at most C extra


def test_round_selects_each_pool_like_the_reference(ref_select):
    s, data, model, x, y = make_sampler(dtype=torch.float64)
    draw(s, 1)
    r = s._round
    with torch.no_grad():
        z = model(x)
    E = (torch.softmax(z, 1) - F.one_hot(y, 3)).numpy()
    want_idx, want_w = [], []
    for p in r.pools:
        idx, w = reference_crest_select(E[p], y.numpy()[p], 16)
        want_idx.append(p[idx])
        want_w.append(w * idx.size)  # cluster sizes, back from mean 1 per pool
    want_idx, want_w = np.concatenate(want_idx), np.concatenate(want_w)
    want_w = want_w * (want_w.size / want_w.sum())
    assert sorted(r.union.tolist()) == sorted(want_idx.tolist())
    got = dict(zip(r.union.tolist(), r.weights.tolist()))
    assert np.allclose([got[i] for i in want_idx.tolist()], want_w)
    assert math.isclose(float(r.weights.mean()), 1.0, rel_tol=1e-12)


def test_round_with_the_real_select_matches_the_reference(monkeypatch):
    s, data, model, x, y = make_sampler(dtype=torch.float64)
    draw(s, 1)
    real = (s._round.union.copy(), s._round.weights.copy(), [p.copy() for p in s._round.pools])
    monkeypatch.setattr(crest_mod, "select", reference_select)
    s2, *_ = make_sampler(dtype=torch.float64)
    draw(s2, 1)
    assert all(np.array_equal(a, b) for a, b in zip(real[2], s2._round.pools))
    got = dict(zip(real[0].tolist(), real[1].tolist()))
    want = dict(zip(s2._round.union.tolist(), s2._round.weights.tolist()))
    assert got.keys() == want.keys()
    assert np.allclose([got[i] for i in want], list(want.values()))


def test_weights_have_mean_one_and_loss_weights_reads_them(ref_select):
    s, data, model, x, y = make_sampler()
    draw(s, 1)
    r = s._round
    w = s.loss_weights(torch.as_tensor(r.union))
    assert math.isclose(float(w.double().mean()), 1.0, rel_tol=1e-6)
    assert torch.allclose(w, torch.as_tensor(r.weights, dtype=torch.float32))
    assert torch.allclose(s.loss_weights(r.union.tolist()), w)
    outside = np.setdiff1d(np.arange(len(data)), r.union)[:5]
    assert torch.equal(s.loss_weights(torch.as_tensor(outside)), torch.ones(5))


# --------------------------------------------------------------------------- the trigger on a tiny model


def test_trigger_fires_when_the_model_moved_a_lot_and_not_when_it_did_not(ref_select):
    s, data, model, x, y = make_sampler(dtype=torch.float64, check_interval=1)
    draw(s, 16)
    r = s._round
    assert s.check() is False  # delta = 0: L_approx = L0 = L_true
    assert math.isclose(s.last_check["L_true"], r.L0, rel_tol=1e-12)
    assert math.isclose(s.last_check["L_approx"], r.L0, rel_tol=1e-12)
    params = [p for p in model.parameters()]
    gen = torch.Generator().manual_seed(4)
    dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    # a tiny move: the quadratic model holds (its error is far below tau * L)
    with torch.no_grad():
        for p, u in zip(params, dirs):
            p.add_(1e-4 * u)
    assert s.check() is False
    L_true, L_approx = s.last_check["L_true"], s.last_check["L_approx"]
    delta = torch.cat([1e-4 * u.reshape(-1) for u in dirs])
    assert math.isclose(L_approx, quadratic_approximation(r.L0, r.g, r.h, delta), rel_tol=1e-9)
    assert abs(L_true - L_approx) < 1e-3 * L_true
    # a large move: it fails, and the next batch starts a new round
    with torch.no_grad():
        for p, u in zip(params, dirs):
            p.add_(3.0 * u)
    assert s.check() is True and s.stats["triggers"] == 1
    assert s.stats["rounds"] == 1
    draw(s, 1)
    assert s.stats["rounds"] == 2 and s._round.number == 1
    assert not all(np.array_equal(a, b) for a, b in zip(r.pools, s._round.pools))  # fresh pools each round
    assert s.check() is False  # the new round's model is built at the moved parameters


def test_delta_is_the_true_displacement_of_any_optimiser(ref_select):
    s, data, model, x, y = make_sampler(dtype=torch.float64, check_interval=10**6)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loader = DataLoader(data, batch_size=s.batch_size, sampler=s)
    before = None
    for step, (xb, yb, ib) in enumerate(loader):
        if before is None:
            before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        loss = (s.loss_weights(ib) * F.cross_entropy(model(xb), yb, reduction="none")).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        s.after_step()
        if step == 3:
            break
    s.check()
    now = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    r = s._round
    want = quadratic_approximation(r.L0, r.g, r.h, now - before)
    assert math.isclose(s.last_check["L_approx"], want, rel_tol=1e-12)


def test_checks_run_every_check_interval_steps(ref_select):
    s, data, model, x, y = make_sampler(check_interval=3, tau=1e9)  # never fires
    assert s.after_step() is False and s.stats["checks"] == 0  # no round yet: counted, not checked
    draw(s, 1)
    for _ in range(7):
        s.after_step()
    assert s.stats["checks"] == 2 and s.stats["steps"] == 8 and s.stats["triggers"] == 0
    t = make_sampler(check_interval=1, tau=0.0)[0]  # tau = 0: any model error fires
    draw(t, 1)
    with torch.no_grad():
        for p in t.model.parameters():
            p.add_(0.1)
    assert t.after_step() is True
    assert t.after_step() is False and t.stats["checks"] == 1  # pending: no more checks until the new round


# --------------------------------------------------------------------------- epochs and batches


def test_epoch_length_is_the_budget(ref_select):
    s, data, model, x, y = make_sampler(n=600, fraction=0.15, batch_size=16, warm_start_epochs=1)
    assert len(s) == 90 and s.budget == 90 and s.steps_per_epoch == 6
    loader = DataLoader(data, batch_size=s.batch_size, sampler=s)
    assert len(loader) == 6
    for epoch in range(3):
        s.set_epoch(epoch)
        idx = [i for _, _, ib in loader for i in ib.tolist()]
        assert len(idx) == 90
        if epoch == 0:  # warm start: a random subset of the budget size, weights 1
            assert len(set(idx)) == 90 and s.stats["rounds"] == 0
        else:
            assert set(idx) <= set(s._round.union.tolist())
    sizes = [len(xb) for xb, _, _ in loader]
    assert sizes == [16] * 5 + [10]


def test_batches_hold_distinct_indices_across_passes(ref_select):
    s, *_ = make_sampler(fraction=1.0, batch_size=16, num_pools=1, pool_size=40)  # union ~16-19 rows
    stream = draw(s, 16 * 12)
    union = set(s._round.union.tolist())
    for b in range(12):
        batch = stream[16 * b: 16 * (b + 1)]
        assert len(set(batch)) == 16 and set(batch) <= union


def test_same_seed_same_stream_other_seed_other_stream(ref_select):
    a = draw(make_sampler(seed=1)[0], 100)
    b = draw(make_sampler(seed=1)[0], 100)
    c = draw(make_sampler(seed=2)[0], 100)
    assert a == b and a != c


def test_training_leaves_global_rngs_untouched(ref_select):
    s, data, model, x, y = make_sampler(check_interval=4, warm_start_epochs=1, drop_learned=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(data, batch_size=s.batch_size, sampler=s, generator=torch.Generator().manual_seed(0))
    before = rng_state()
    for epoch in range(3):
        s.set_epoch(epoch)
        for xb, yb, ib in loader:
            losses = F.cross_entropy(model(xb), yb, reduction="none")
            loss = (s.loss_weights(ib) * losses).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            s.after_step()
            s.record_losses(ib, losses)
    assert_rng_untouched(before)
    st = s.stats
    assert st["rounds"] >= 1 and st["checks"] >= 1 and st["select_seconds"] > 0 and st["check_seconds"] > 0
    assert st["steps"] == 3 * s.steps_per_epoch


def test_train_flags_restored_and_grads_untouched(ref_select):
    x, y = clusters()
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.BatchNorm1d(16), nn.Linear(16, 3))
    model.train()
    bn = model[2]
    stats = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    s = CrestSampler(TensorDataset(x, y), model, labels=y, batch_size=16, pool_size=48, num_pools=2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = rng_state()
    draw(s, 1)
    s.check()
    assert_rng_untouched(before)
    assert all(m.training for m in model.modules())
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.num_batches_tracked, stats[1])
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


def test_learned_examples_leave_the_pools(ref_select):
    s, data, model, x, y = make_sampler(drop_learned=True, drop_window=2, num_pools=2, pool_size=30)
    learned = np.arange(0, 600, 2)  # half of every class
    for _ in range(2):
        s.record_losses(torch.as_tensor(learned), torch.full((learned.size,), 0.01))
    s.record_losses(learned[:3], np.array([0.5, 0.5, 0.5]))  # the last record is high again: not learned
    draw(s, 1)
    cat = np.concatenate(s._round.pools)
    back = set(learned[:3].tolist())
    assert not (set(cat.tolist()) & (set(learned.tolist()) - back))
    assert s.stats["excluded"] == learned.size - 3
    # records are a no-op without drop_learned
    t = make_sampler()[0]
    t.record_losses([0], [0.0])
    with pytest.raises(ValueError, match="'losses'"):
        s.record_losses([0, 1], [0.0])
    with pytest.raises(ValueError, match="'index'"):
        s.record_losses([600], [0.0])


def test_labels_from_dataset_targets_and_mismatch(ref_select):
    x, y = clusters(n=200)

    class WithTargets(Dataset):
        def __init__(self, targets):
            self.targets = targets

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]

    s = CrestSampler(IndexedDataset(WithTargets(y.tolist())), mlp(), batch_size=8, pool_size=40)
    assert np.array_equal(s._labels, y.numpy())
    wrong = CrestSampler(WithTargets((y + 1) % 3), mlp(), batch_size=8, pool_size=40)
    with pytest.raises(ValueError, match="'labels'"):
        draw(wrong, 1)
    with pytest.raises(TypeError, match="'labels'"):
        CrestSampler(TensorDataset(x, y), mlp())


def test_adaptive_schedule_follows_the_hessian_norm(ref_select):
    s, data, model, x, y = make_sampler(adaptive=True, check_interval=2, num_pools=2)
    draw(s, 1)
    assert s.stats["check_interval"] == 2 and s.stats["num_pools"] == 2
    s._hnorm0 *= 4.0  # pretend the curvature fell by 4
    s._pending = True
    draw(s, 1)
    ratio = s._hnorm0 / float(torch.linalg.vector_norm(s._round.h))
    assert s.stats["check_interval"] == max(1, math.ceil(2 * ratio))
    assert s.stats["num_pools"] == min(math.ceil(2 * s.stats["check_interval"] / 2), max(2, s.steps_per_epoch))


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kw, exc, name", [
    (dict(fraction=0.0), ValueError, "fraction"),
    (dict(fraction=1.5), ValueError, "fraction"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.5), TypeError, "batch_size"),
    (dict(num_pools=0), ValueError, "num_pools"),
    (dict(pool_size=8), ValueError, "pool_size"),
    (dict(pool_size=601), ValueError, "pool_size"),
    (dict(check_interval=0), ValueError, "check_interval"),
    (dict(tau=-0.1), ValueError, "tau"),
    (dict(hessian_probes=0), ValueError, "hessian_probes"),
    (dict(hessian_beta=1.0), ValueError, "hessian_beta"),
    (dict(adaptive=1), TypeError, "adaptive"),
    (dict(drop_learned="yes"), TypeError, "drop_learned"),
    (dict(drop_window=0), ValueError, "drop_window"),
    (dict(warm_start_epochs=-1), ValueError, "warm_start_epochs"),
    (dict(eval_mode=None), TypeError, "eval_mode"),
    (dict(forward_batch_size=0), ValueError, "forward_batch_size"),
    (dict(num_workers=-1), ValueError, "num_workers"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(unpack=3), TypeError, "unpack"),
    (dict(collate_fn="x"), TypeError, "collate_fn"),
    (dict(labels=np.zeros(5, dtype=int)), ValueError, "labels"),
    (dict(labels=np.zeros(600)), ValueError, "labels"),
    (dict(labels=-np.ones(600, dtype=int)), ValueError, "labels"),
])
def test_bad_arguments_name_the_argument(kw, exc, name):
    with pytest.raises(exc, match=f"'{name}'"):
        make_sampler(**kw)


def test_bad_objects():
    x, y = clusters(n=50)
    with pytest.raises(TypeError, match="'model'"):
        CrestSampler(TensorDataset(x, y), "model", labels=y)
    with pytest.raises(TypeError, match="'dataset'"):
        CrestSampler(iter(range(3)), mlp(), labels=y)
    with pytest.raises(ValueError, match="non-empty 'dataset'"):
        CrestSampler(TensorDataset(x[:0], y[:0]), mlp(), labels=y[:0])
    s = CrestSampler(TensorDataset(x, y), mlp(), labels=y, batch_size=8)
    with pytest.raises(ValueError, match="'epoch'"):
        s.set_epoch(-1)
    with pytest.raises(ValueError, match="no round"):
        s.check()
    bad = CrestSampler(TensorDataset(x, x), mlp(), labels=y, batch_size=8)  # y is not class indices
    with pytest.raises(ValueError, match="class indices"):
        draw(bad, 1)


# --------------------------------------------------------------------------- end to end


def test_training_loop_example_loss_falls():
    x, y = clusters(n=1200, spread=1.3)
    data = IndexedDataset(TensorDataset(x, y))
    model = mlp()
    sampler = CrestSampler(data, model, fraction=0.2, batch_size=32, labels=y, check_interval=5, seed=0)
    loader = DataLoader(data, batch_size=sampler.batch_size, sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    with torch.no_grad():
        start = float(F.cross_entropy(model(x), y))
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for xb, yb, ib in loader:
            losses = F.cross_entropy(model(xb), yb, reduction="none")
            loss = (sampler.loss_weights(ib) * losses).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sampler.after_step()
    with torch.no_grad():
        end = float(F.cross_entropy(model(x), y))
    assert end < 0.5 * start
    st = sampler.stats
    assert st["rounds"] >= 1 and 1 <= st["checks"] <= st["steps"] // 5
