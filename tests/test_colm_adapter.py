"""graft_array.adapters.colm.zeroth_order_grads: CoLM's two-forward (SPSA) per-sample last-layer gradients."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as tF  # noqa: E402

from graft_array import ColmState, LastLayerGrads, select  # noqa: E402
from graft_array.adapters.colm import zeroth_order_grads  # noqa: E402
from graft_array.adapters.torch import capture, loss_residuals  # noqa: E402

D_IN, HID, C, N = 6, 5, 4, 9
P = C * (HID + 1)


def _model(dtype=torch.float64, seed=0, bn=False):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [nn.Linear(D_IN, HID), nn.Tanh()]
        if bn:
            layers.insert(1, nn.BatchNorm1d(HID))
        net = nn.Sequential(*layers, nn.Linear(HID, C))
    return net.to(dtype)


def _data(dtype=torch.float64, seed=1, n=N):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, C, (n,), generator=g)
    return x, y


def _hand_fd(model, x, y, z, eps, loss=None):
    """(L_i(w + eps z) - L_i(w - eps z)) / (2 eps) * z on copies of the model, the last layer as [W | b] rows."""
    loss = loss or (lambda out, t: tF.cross_entropy(out, t, reduction="none"))
    Z = z.reshape(C, HID + 1)
    L = []
    for s in (1.0, -1.0):
        m = copy.deepcopy(model).eval()
        with torch.no_grad():
            m[-1].weight.add_(s * eps * Z[:, :HID])
            m[-1].bias.add_(s * eps * Z[:, HID])
            L.append(loss(m(x), y))
    return ((L[0] - L[1]) / (2 * eps))[:, None] * z[None, :]


def _autograd_rows(model, x, y, layer=None):
    """The exact per-sample gradients of the layer's [W | b] (one backward per sample)."""
    layer = model[-1] if layer is None else layer
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        tF.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).reshape(-1).clone())
    model.zero_grad()
    return torch.stack(rows)


def _bits(t):
    return t.detach().contiguous().view(torch.int64 if t.element_size() == 8 else torch.int32).clone()


def _param_bits(model):
    return {k: _bits(v) for k, v in model.state_dict().items() if v.is_floating_point()}


# --------------------------------------------------------------------------- values


def test_matches_the_directional_finite_difference_by_hand():
    model = _model()
    x, y = _data()
    z = torch.randn(P, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    G = zeroth_order_grads(model, x, y, z=z, eps=1e-3)
    assert G.shape == (N, P) and G.dtype == torch.float64
    torch.testing.assert_close(G, _hand_fd(model, x, y, z, 1e-3), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("j", [0, 3, HID, 2 * (HID + 1) + 2, P - 1])  # weights and biases (j = HID, P - 1)
def test_unit_direction_gives_that_coordinate_of_the_true_per_sample_gradient(j):
    model = _model()
    x, y = _data()
    z = torch.zeros(P, dtype=torch.float64)
    z[j] = 1.0
    G = zeroth_order_grads(model, x, y, z=z, eps=1e-3)
    true = _autograd_rows(model, x, y)
    assert torch.count_nonzero(G[:, torch.arange(P) != j]) == 0
    err = (G[:, j] - true[:, j]).abs().max()
    assert err <= 1e-4 * true[:, j].abs().max() + 1e-12, (err, true[:, j])


def test_unit_directions_recover_the_whole_gradient_in_the_last_layer_grads_layout():
    """Summed over z = e_1 .. e_p: the per-sample gradients, equal to the explicit e_i (x) [h_i; 1] rows."""
    model = _model()
    x, y = _data()
    G = sum(zeroth_order_grads(model, x, y, z=torch.eye(P, dtype=torch.float64)[j], eps=1e-4) for j in range(P))
    true = _autograd_rows(model, x, y)
    torch.testing.assert_close(G, true, rtol=1e-6, atol=1e-9)
    h, logits = capture(model, x)
    e = loss_residuals(logits, y)
    explicit = (e[:, :, None] * torch.cat([h, torch.ones(N, 1, dtype=h.dtype)], 1)[:, None, :]).reshape(N, -1)
    torch.testing.assert_close(G, explicit, rtol=1e-6, atol=1e-9)


def test_random_direction_estimates_the_projection_and_is_seeded():
    model = _model()
    x, y = _data()
    G = zeroth_order_grads(model, x, y, random_state=3)
    z = G[int(torch.argmax(G.abs().sum(1)))]
    z = z / z.norm()
    assert torch.linalg.matrix_rank(G) == 1  # one direction: every row is d_i z
    true = _autograd_rows(model, x, y)
    Gz = zeroth_order_grads(model, x, y, z=z)
    torch.testing.assert_close(Gz @ z, true @ z, rtol=1e-5, atol=1e-9)  # d_i = <grad_i, z>
    torch.testing.assert_close(G, zeroth_order_grads(model, x, y, random_state=3), rtol=0, atol=0)
    gen = np.random.default_rng(3)
    assert not torch.equal(G, zeroth_order_grads(model, x, y, random_state=4))
    assert torch.equal(zeroth_order_grads(model, x, y, random_state=np.random.default_rng(3)),
                       zeroth_order_grads(model, x, y, random_state=gen))
    tg = torch.Generator().manual_seed(3)
    assert torch.equal(G, zeroth_order_grads(model, x, y, random_state=tg))
    # z is drawn in float64 and cast: a float32 model sees the same direction
    G32 = zeroth_order_grads(_model(torch.float32), x.float(), y, random_state=3)
    torch.testing.assert_close(G32 / G32.norm(dim=1, keepdim=True).clamp_min(1e-30),
                               (G / G.norm(dim=1, keepdim=True)).float(), rtol=0, atol=2e-3)


def test_other_layer_mse_callable_and_ignored_targets():
    model = _model()
    x, y = _data()
    # a named inner layer: the gradient of its [W | b] through the rest of the network
    first = model[0]
    q = HID * (D_IN + 1)
    true = _autograd_rows(model, x, y, layer=first)
    for j in (0, D_IN, q - 1):
        z = torch.zeros(q, dtype=torch.float64)
        z[j] = 1.0
        G = zeroth_order_grads(model, x, y, layer="0", z=z)
        assert (G[:, j] - true[:, j]).abs().max() <= 1e-4 * true[:, j].abs().max() + 1e-12
    assert torch.equal(zeroth_order_grads(model, x, y, layer=first, z=z), G)
    z = torch.randn(P, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.randn(N, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mse = lambda out, tt: tF.mse_loss(out, tt, reduction="none").mean(1)  # noqa: E731
    torch.testing.assert_close(zeroth_order_grads(model, x, t, z=z, loss="mse"), _hand_fd(model, x, t, z, 1e-3, mse),
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(zeroth_order_grads(model, x, t, z=z, loss=mse), _hand_fd(model, x, t, z, 1e-3, mse),
                               rtol=1e-12, atol=1e-15)
    y2 = y.clone()
    y2[[1, 4]] = -100
    G = zeroth_order_grads(model, x, y2, z=z)
    assert torch.count_nonzero(G[[1, 4]]) == 0
    torch.testing.assert_close(G[[0, 2, 3]], zeroth_order_grads(model, x, y, z=z)[[0, 2, 3]], rtol=0, atol=0)


# --------------------------------------------------------------------------- side effects


def test_parameters_buffers_and_modes_restored_bitwise_and_no_autograd():
    model = _model(torch.float32, bn=True)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # magnitudes over decades: w + eps z - eps z does not round back to w everywhere
        for prm in model.parameters():
            prm.mul_(torch.exp(3.0 * torch.randn(prm.shape, generator=g)))
    model.train()
    model[1].running_mean.fill_(0.3)
    x, y = _data(torch.float32)
    eps, z = 0.37, torch.randn(P, generator=g)
    w = model[-1].weight.detach()
    dw = eps * z.reshape(C, HID + 1)[:, :HID]
    assert not torch.equal((w + dw) - dw, w) and not torch.equal((w - dw) + dw, w)  # undoing would not do
    before = _param_bits(model)
    G = zeroth_order_grads(model, x, y, z=z, eps=eps)
    assert G.dtype == torch.float32 and not G.requires_grad
    after = _param_bits(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(m.training for m in model.modules())
    assert all(prm.grad is None for prm in model.parameters())

    def boom(out, t):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        zeroth_order_grads(model, x, y, random_state=0, loss=boom)
    for k, v in _param_bits(model).items():
        assert torch.equal(before[k], v), k
    assert all(m.training for m in model.modules())
    assert not model[-1]._forward_hooks


def test_global_rngs_untouched():
    model = _model()
    x, y = _data()
    t_state, np_state = torch.get_rng_state(), np.random.get_state()
    for rs in (None, 0, 123, np.random.default_rng(1)):
        zeroth_order_grads(model, x, y, random_state=rs)
    assert torch.equal(torch.get_rng_state(), t_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


def test_feeds_select_colm_as_plain_grads():
    model = _model()
    x, y = _data(n=48)
    src = np.zeros(48, dtype=np.int64)
    src[:3] = 1
    state = ColmState()
    for step in range(2):
        G = zeroth_order_grads(model, x, y, random_state=step)
        sel = select(None, G, strategy="colm", sources=src, fraction=0.25, strategy_params={"state": state},
                     return_info=True, random_state=0)
        assert len(sel.indices) == 12 and set(range(3)) <= set(sel.indices.tolist())
    assert state.t == 2 and state.m.shape == (P,)
    # the same coordinates as LastLayerGrads: one state can follow either
    h, logits = capture(model, x)
    select(None, LastLayerGrads(loss_residuals(logits, y), h), strategy="colm", sources=src, fraction=0.25,
           strategy_params={"state": state})
    assert state.t == 3


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(eps=0.0), ValueError, "'eps'"),
    (dict(eps=-1e-3), ValueError, "'eps'"),
    (dict(eps=float("nan")), ValueError, "'eps'"),
    (dict(eps="small"), TypeError, "'eps'"),
    (dict(z=torch.ones(P + 1, dtype=torch.float64)), ValueError, r"'z'.*\(24,\)"),
    (dict(z=torch.ones(C, HID + 1, dtype=torch.float64)), ValueError, "'z'"),
    (dict(z=torch.ones(P, dtype=torch.int64)), TypeError, "'z'"),
    (dict(z=torch.full((P,), float("nan"), dtype=torch.float64)), ValueError, "'z'.*finite"),
    (dict(z=[1.0] * P), TypeError, "'z'"),
    (dict(z=torch.ones(P, dtype=torch.float64), random_state=0), ValueError, "'z' and 'random_state'"),
    (dict(random_state=-1), ValueError, "'random_state'"),
    (dict(random_state=1.5), TypeError, "'random_state'"),
    (dict(random_state=True), TypeError, "'random_state'"),
    (dict(loss="hinge"), ValueError, "'loss'"),
    (dict(loss=None), ValueError, "'loss'"),
    (dict(layer="nope"), ValueError, "'layer'"),
    (dict(layer="1"), ValueError, "'layer'.*'weight'"),
    (dict(layer=nn.Linear(2, 2)), ValueError, "'layer'"),
    (dict(layer=3), TypeError, "'layer'"),
    (dict(loss=lambda out, t: out), ValueError, "'loss'"),
])
def test_bad_arguments_raise_naming_them(kwargs, exc, match):
    model = _model()
    x, y = _data()
    before = _param_bits(model)
    with pytest.raises(exc, match=match):
        zeroth_order_grads(model, x, y, **kwargs)
    for k, v in _param_bits(model).items():
        assert torch.equal(before[k], v)


def test_bad_model_and_targets():
    model = _model()
    x, y = _data()
    with pytest.raises(TypeError, match="'model'"):
        zeroth_order_grads(lambda t: t, x, y)
    with pytest.raises(TypeError, match="'y'"):
        zeroth_order_grads(model, x, y.tolist())
    with pytest.raises(ValueError, match="'y'.*one target per sample"):
        zeroth_order_grads(model, x, y[:-1])
    with pytest.raises(ValueError, match="'y'.*class indices in \\[0, 4\\)"):
        zeroth_order_grads(model, x, y + C)
    with pytest.raises(ValueError, match="'y'"):
        zeroth_order_grads(model, x, torch.zeros(N, C + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="'y'"):
        zeroth_order_grads(model, x, torch.zeros(N, 2, dtype=torch.float64), loss="mse")
    with pytest.raises(ValueError, match="exactly once"):
        zeroth_order_grads(_WithSpare(model), x, y)  # its last Linear never runs


class _WithSpare(nn.Module):
    """The model, and a Linear registered after it that the forward never calls."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.spare = nn.Linear(2, 2).to(torch.float64)

    def forward(self, x):
        return self.net(x)
