"""graft_array.adapters.augment: the original data plus augmented copies of a (CRAIG) coreset."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from graft_array import LastLayerGrads, select  # noqa: E402
from graft_array.adapters.augment import AugmentedCoresetDataset, augment_seed  # noqa: E402
from graft_array.adapters.torch import capture, loss_residuals  # noqa: E402

N, CLASSES = 300, 3


def make_data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    centres = torch.randn(CLASSES, 1, 4, 4, generator=g) * 2.0
    X = centres[y] + torch.randn(n, 1, 4, 4, generator=g)
    return X, y


def make_model(seed=0):
    with torch.random.fork_rng(devices=[]):  # the tests leave the global generator alone too
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, CLASSES))


def flip(x):
    """A deterministic augmentation."""
    return x.flip(-1) * 2.0 + 1.0


def noisy(x, generator):
    """A random augmentation that takes the dataset's generator."""
    return x + torch.randn(x.shape, generator=generator)


@pytest.fixture
def data():
    X, y = make_data()
    return TensorDataset(X, y), X, y


def direct_select(model, X, y, *, fraction, batch_size, seed, sel_epoch=0, strategy="craig"):
    """The pass by hand: forward in batch_size rows, e = p - onehot(y), one select on batch_size chunks."""
    hs, es = [], []
    for i in range(0, len(X), batch_size):
        h, z = capture(model, X[i:i + batch_size])
        hs.append(h)
        es.append(loss_residuals(z, y[i:i + batch_size]))
    E, H = list(torch.cat(es).split(batch_size)), list(torch.cat(hs).split(batch_size))
    labels = [t.numpy() for t in y.split(batch_size)]
    return select(None, LastLayerGrads(E, H), strategy=strategy, fraction=fraction, labels=labels,
                  return_info=True, random_state=np.random.default_rng([seed, sel_epoch]))


def test_length_and_original_items_unchanged(data):
    ds, X, y = data
    aug = AugmentedCoresetDataset(ds, make_model(), augment=flip, fraction=0.1, batch_size=64, random_state=0)
    k = aug.k
    assert k == len(aug.indices) == len(aug.weights()) and k >= round(0.1 * N)
    assert len(aug) == N + k
    for i in (0, 1, 137, N - 1):
        xi, yi = aug[i]
        assert torch.equal(xi, X[i]) and torch.equal(yi, y[i])
    assert torch.equal(aug[-1][0], aug[N + k - 1][0])
    with pytest.raises(IndexError):
        aug[N + k]
    with pytest.raises(IndexError):
        aug[-(N + k) - 1]


def test_appended_items_are_the_augmented_craig_coreset(data):
    ds, X, y = data
    model = make_model()
    aug = AugmentedCoresetDataset(ds, model, augment=flip, fraction=0.15, batch_size=64, random_state=3)
    ref = direct_select(model, X, y, fraction=0.15, batch_size=64, seed=3)
    idx = torch.as_tensor(ref.indices, dtype=torch.int64)
    assert torch.equal(aug.indices, idx)
    assert torch.equal(aug.weights(), torch.as_tensor(ref.weights, dtype=torch.float32))
    assert len(set(idx.tolist())) == len(idx)
    # CRAIG's weights are cluster sizes: each class chunk's rows are all represented
    assert float(aug.weights().sum()) == pytest.approx(N)
    # class balance: every class gets about its share
    counts = torch.bincount(y[idx], minlength=CLASSES)
    share = torch.bincount(y, minlength=CLASSES) * 0.15
    assert torch.all((counts - share).abs() <= 1.0)
    for j in range(len(idx)):
        xa, ya = aug[N + j]
        assert torch.equal(xa, flip(X[idx[j]])) and torch.equal(ya, y[idx[j]])


@pytest.mark.parametrize("strategy", ["random", "graft", "gradmatch"])
def test_any_strategy_goes_through_select(data, strategy):
    ds, X, y = data
    model = make_model()
    aug = AugmentedCoresetDataset(ds, model, augment=flip, fraction=0.2, batch_size=64, strategy=strategy,
                                  random_state=5)
    ref = direct_select(model, X, y, fraction=0.2, batch_size=64, seed=5, strategy=strategy)
    assert torch.equal(aug.indices, torch.as_tensor(ref.indices, dtype=torch.int64))


def test_random_strategy_runs_no_forward(data):
    ds, _, y = data
    model = make_model()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    aug = AugmentedCoresetDataset(ds, model, augment=flip, fraction=0.2, strategy="random", random_state=0)
    assert len(aug) > N and not calls
    counts = torch.bincount(y[aug.indices], minlength=CLASSES)
    assert torch.all((counts - torch.bincount(y, minlength=CLASSES) * 0.2).abs() <= 1.0)


def test_refresh_every_is_honoured(data):
    ds, X, y = data
    model = make_model()
    aug = AugmentedCoresetDataset(ds, model, augment=flip, fraction=0.2, batch_size=64, refresh_every=2,
                                  random_state=0)
    aug.set_epoch(0)
    first = aug.indices.clone()
    assert aug.stats["passes"] == 1
    with torch.no_grad():  # the model moves: a new pass would see other gradients
        for p, q in zip(model.parameters(), make_model(seed=7).parameters()):
            p.copy_(q)
    aug.set_epoch(1)
    assert aug.stats["passes"] == 1 and torch.equal(aug.indices, first)
    aug.set_epoch(2)
    assert aug.stats["passes"] == 2
    ref = direct_select(model, X, y, fraction=0.2, batch_size=64, seed=0, sel_epoch=2)
    assert torch.equal(aug.indices, torch.as_tensor(ref.indices, dtype=torch.int64))
    assert not torch.equal(aug.indices, first)
    aug.set_epoch(3)
    assert aug.stats["passes"] == 2
    aug.refresh()  # forced, whatever the schedule says
    assert aug.stats["passes"] == 3
    aug.refresh(epoch=5)
    assert aug.epoch == 5 and aug.stats["passes"] == 4


def test_generator_augmentation_is_seeded_per_epoch_and_sample(data):
    ds, X, _ = data
    aug = AugmentedCoresetDataset(ds, make_model(), augment=noisy, fraction=0.1, random_state=11)
    aug.set_epoch(0)
    i = int(aug.indices[0])
    a, b = aug[N][0], aug[N][0]
    assert torch.equal(a, b)  # the same item within an epoch
    g = torch.Generator().manual_seed(augment_seed(11, 0, i))
    assert torch.equal(a, noisy(X[i], generator=g))
    aug.set_epoch(1)  # a new pass at the same model: CRAIG picks the same coreset
    assert int(aug.indices[0]) == i
    assert not torch.equal(aug[N][0], a)  # fresh augmentations in the next epoch


def test_deterministic_for_a_random_state(data):
    ds, _, _ = data

    def items(seed, strategy):
        aug = AugmentedCoresetDataset(ds, make_model(), augment=noisy, fraction=0.2, strategy=strategy,
                                      random_state=seed)
        aug.set_epoch(1)
        return aug.indices, torch.stack([aug[j][0] for j in range(N, len(aug))])

    for strategy in ("craig", "random"):
        i1, x1 = items(4, strategy)
        i2, x2 = items(4, strategy)
        assert torch.equal(i1, i2) and torch.equal(x1, x2)
    i3, _ = items(5, "random")
    assert not torch.equal(i1, i3)
    # a numpy Generator gives one seed at construction
    a = AugmentedCoresetDataset(ds, make_model(), augment=flip, strategy="random",
                                random_state=np.random.default_rng(9))
    b = AugmentedCoresetDataset(ds, make_model(), augment=flip, strategy="random",
                                random_state=np.random.default_rng(9))
    assert a.seed == b.seed and torch.equal(a.indices, b.indices)


def test_global_rngs_untouched(data):
    ds, _, _ = data
    model = make_model()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    aug = AugmentedCoresetDataset(ds, model, augment=noisy, fraction=0.2, random_state=None)
    for epoch in range(2):
        aug.set_epoch(epoch)
        gen = torch.Generator().manual_seed(epoch)
        for _ in DataLoader(aug, batch_size=50, shuffle=True, generator=gen):
            pass
    AugmentedCoresetDataset(ds, model, augment=flip, strategy="random", random_state=1).refresh()
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_works_with_a_dataloader(data, num_workers):
    ds, X, y = data
    aug = AugmentedCoresetDataset(ds, make_model(), augment=noisy, fraction=0.1, random_state=2)
    aug.set_epoch(0)
    loader = DataLoader(aug, batch_size=64, shuffle=False, num_workers=num_workers)
    xs, ys = zip(*loader)
    xs, ys = torch.cat(xs), torch.cat(ys)
    assert len(xs) == len(aug) == N + aug.k
    assert torch.equal(xs[:N], X) and torch.equal(ys[:N], y)
    assert torch.equal(ys[N:], y[aug.indices])
    assert torch.equal(xs[N:], torch.stack([aug[j][0] for j in range(N, len(aug))]))


def test_bad_inputs_name_the_argument(data):
    ds, X, _ = data
    model = make_model()
    cases = [
        (dict(augment=None), TypeError, "'augment'"),
        (dict(augment=flip, fraction=0.0), ValueError, "'fraction'"),
        (dict(augment=flip, fraction=1.5), ValueError, "'fraction'"),
        (dict(augment=flip, fraction="0.1"), TypeError, "'fraction'"),
        (dict(augment=flip, refresh_every=0), ValueError, "'refresh_every'"),
        (dict(augment=flip, refresh_every=1.0), TypeError, "'refresh_every'"),
        (dict(augment=flip, strategy="nope"), ValueError, "'strategy'"),
        (dict(augment=flip, class_balance="yes"), TypeError, "'class_balance'"),
        (dict(augment=flip, batch_size=0), ValueError, "'batch_size'"),
        (dict(augment=flip, forward_batch_size=0), ValueError, "'forward_batch_size'"),
        (dict(augment=flip, random_state=-1), ValueError, "'random_state'"),
        (dict(augment=flip, random_state="x"), TypeError, "'random_state'"),
        (dict(augment=flip, loss="hinge"), ValueError, "'loss'"),
        (dict(augment=flip, loss=None), ValueError, "'loss'"),
        (dict(augment=flip, features="pixels"), ValueError, "'features'"),
        (dict(augment=flip, strategy="sas"), ValueError, "'features'"),
        (dict(augment=flip, labels=[0] * N), TypeError, "'labels'"),
        (dict(augment=flip, offsets=[0]), TypeError, "'offsets'"),
        (dict(augment=flip, unpack=3), TypeError, "'unpack'"),
    ]
    for kwargs, exc, word in cases:
        with pytest.raises(exc, match=word):
            AugmentedCoresetDataset(ds, model, **kwargs)
    with pytest.raises(TypeError, match="'model'"):
        AugmentedCoresetDataset(ds, "model", augment=flip)
    with pytest.raises(ValueError, match="non-empty 'dataset'"):
        AugmentedCoresetDataset(TensorDataset(X[:0]), model, augment=flip)
    with pytest.raises(TypeError, match="'dataset'"):
        AugmentedCoresetDataset(iter([]), model, augment=flip)
    # float targets cannot be class labels
    soft = TensorDataset(X, torch.rand(N))
    with pytest.raises(ValueError, match="'class_balance'"):
        len(AugmentedCoresetDataset(soft, model, augment=flip, loss="mse", class_balance=True))
    aug = AugmentedCoresetDataset(ds, model, augment=flip, strategy="random", random_state=0)
    with pytest.raises(ValueError, match="'epoch'"):
        aug.set_epoch(-1)
    with pytest.raises(TypeError, match="integers"):
        aug[1.5]
