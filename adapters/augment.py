"""Augmentation coresets (Liu & Mirzasoleiman, NeurIPS 2022): strong augmentation of a coreset only.

"Data-Efficient Augmentation for Training Neural Networks" shows that strongly
augmenting a small coreset, chosen by facility location (CRAIG) on the
per-sample gradients, and training on it together with the whole original
training set, gets most of the gain of augmenting every sample at a fraction of
the cost. :class:`AugmentedCoresetDataset` is that training set as a map-style
torch ``Dataset``:

* items ``0 .. n - 1`` are the wrapped dataset's own items, unchanged;
* items ``n .. n + k - 1`` are augmented copies of the current coreset: item
  ``n + j`` is the coreset's j-th sample ``dataset[indices[j]]`` with its input
  (item 0 of a tuple item, or the whole item) replaced by ``augment(x)``.

Every ``refresh_every`` epochs (:meth:`~AugmentedCoresetDataset.set_epoch`) one
selection pass runs: a no-grad forward over the whole dataset in order (in
``forward_batch_size`` batches, a hook on the last linear layer captures the
embeddings h and the logits z, :class:`graft_array.adapters.torch._Sketcher`,
the forward the epoch samplers use), the last-layer gradients ``e (x) [h; 1]``
with ``e = dloss/dz`` (:func:`graft_array.adapters.torch.loss_residuals`), and
one call

    ``select(None, LastLayerGrads(E, H), strategy=strategy, fraction=fraction, labels=Y, ...)``

where E, H and Y (the targets, with ``class_balance``) are the pass's rows cut
into consecutive selection batches of ``batch_size`` rows (a list, the last one
possibly shorter), so the indices are dataset indices. With ``labels`` select
splits the budget between the classes (``ceil(k n_c / N)`` rows for a class of
n_c rows) and runs the strategy within each class on chunks of at most
``batch_size`` rows: for CRAIG that is a facility location per class on the
gradient distances of each chunk (``batch_size`` bounds its ``batch_size**2``
distance matrix). Any strategy of :func:`graft_array.select` works the same way
(``strategy="random"`` skips the forward: it needs no gradients).

The family: ``strategy="adacore"`` takes the pass's p(1 - p) as its Hessian
diagonal (``hessian_diag="softmax"``, unless ``hessian_diag`` is given);
``"mkdt"`` / ``"pdd"`` augment the samples of highest loss (the per-sample
loss is the score; ``features`` must then be ``"embeddings"`` or ``"inputs"``);
``"colm"`` needs ``sources`` (one id per item, ``class_balance=False``) and keeps
one :class:`graft_array.ColmState` across passes; ``"clipcov"`` is refused
(it selects image-caption pairs).

The weights are 1 for every item unless the training loop asks for others:
:meth:`~AugmentedCoresetDataset.weights` gives select's weights of the coreset
(for CRAIG the size of each medoid's cluster), aligned with the appended items.

Randomness
----------
Nothing here touches a global random number generator. The selection's
``random_state`` is ``numpy.random.default_rng([seed, selection_epoch])``,
and when ``augment`` takes a ``generator`` keyword it gets a ``torch.Generator``
seeded by ``(seed, epoch, dataset index)``: the same item gives the same
augmentation within an epoch (so DataLoader workers agree) and a new one in the
next epoch. ``seed`` comes from ``random_state`` (an int: itself). An
``augment`` without a ``generator`` parameter draws what it draws (torchvision's
random transforms use torch's global generator).

Training loop example
---------------------
training_loop_example::

    from torch.utils.data import DataLoader
    from graft_array.adapters.augment import AugmentedCoresetDataset

    def strong(x, generator):                           # one sample's input tensor
        return (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)

    data = AugmentedCoresetDataset(train_set, model, augment=strong, fraction=0.1, refresh_every=5,
                                   random_state=0)
    loader_gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        data.set_epoch(epoch)                           # re-selects every refresh_every epochs
        for x, y in DataLoader(data, batch_size=128, shuffle=True, generator=loader_gen):
            loss = F.cross_entropy(model(x), y)
            ...

Create the DataLoader after ``set_epoch`` (or use non-persistent workers): the
dataset's length changes with the coreset, and persistent workers would keep
the previous coreset.
"""

import inspect
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._select import LastLayerGrads, select
from .._validation import check_bool, check_int, check_option, check_random_state, check_real
from ..strategies import NAMES, REGISTRY
from .torch import (
    _class_labels,
    _dataset_labels,
    _describe,
    _float,
    _int_labels,
    _loader_callables,
    _model_device,
    _per_sample_loss,
    _Sketcher,
    _to,
)

__all__ = ["AugmentedCoresetDataset"]

# select arguments laid out like the rows (or the pass's own): the pass builds them, a caller cannot
_SET_BY_PASS = ("labels", "groups", "sources", "scores", "mask", "offsets", "return_info", "random_state",
                "fraction", "strategy")
_MASK64 = (1 << 64) - 1


def _mix64(z):
    """SplitMix64's finaliser: a 64-bit integer hash of a non-negative int."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def augment_seed(seed, epoch, index):
    """The seed of the ``torch.Generator`` handed to ``augment`` for dataset ``index`` in ``epoch``."""
    return _mix64(_mix64(_mix64(seed) ^ epoch) ^ index) >> 1  # < 2**63: any torch.Generator seed


def _takes_generator(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    p = params.get("generator")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


class AugmentedCoresetDataset(Dataset):
    """The original dataset plus strongly augmented copies of a coreset re-selected every few epochs.

    Length ``n + k``: items ``0 .. n - 1`` are ``dataset[i]`` unchanged; item
    ``n + j`` is ``dataset[indices[j]]`` with its input ``x`` (item 0 of a
    tuple / list item, else the item itself) replaced by ``augment(x)`` (or
    ``augment(x, generator=g)``, see ``augment``); the other elements (the
    target, ...) are kept. See the module docstring for the selection pass.

    Call :meth:`set_epoch` at the start of every epoch, before building the
    epoch's ``DataLoader``; the first access without it (``len``, an item,
    ``indices``) runs the pass for epoch 0.

    Parameters
    ----------
    dataset : map-style Dataset (``len`` and ``__getitem__``)
        Items ``(x, y, ...)`` (``y``: an integer class index with
        ``class_balance``), or what ``unpack`` reads from the collated batches.
    model : torch.nn.Module
        The model being trained; its last ``nn.Linear`` (or ``layer``) must
        output the logits.
    augment : callable
        ``augment(x) -> x'`` on one sample's input. When it has a parameter
        named ``generator`` it is called ``augment(x, generator=g)`` with a
        ``torch.Generator`` seeded by ``(seed, epoch, dataset index)``
        (:func:`augment_seed`): reproducible, and fresh every epoch.
    fraction : float in (0, 1], default=0.1
        The coreset's share of the dataset: select's budget, ``round(fraction *
        N)`` rows per pass spread over the classes with ``class_balance`` (a few
        more when the classes' ceilings add up), ``round(fraction * batch_size)``
        per selection batch without it (the baselines' rule).
    refresh_every : int >= 1, default=1
        Epochs between selection passes: epoch e uses the coreset selected at
        epoch ``(e // refresh_every) * refresh_every``.
    strategy : str, default="craig"
        Any strategy of :func:`graft_array.select` whose inputs are the features
        and / or the gradients ("craig", "graft", "random", "gradmatch", "crest",
        "adacore" with ``hessian_diag="softmax"``, "sas", ...).
    class_balance : bool, default=True
        Select per class: the targets ``y`` of the batches (integer class
        indices) go to select as ``labels``.
    batch_size : int >= 1, default=512
        Rows per selection batch (and per class chunk with ``class_balance``):
        the size of each facility-location problem.
    forward_batch_size : int >= 1 or None, default=None
        Rows per no-grad forward of the pass; default ``batch_size``.
    layer, loss, eval_mode
        As in :class:`graft_array.adapters.torch.GraftEpochSampler`.
    features : "gradients", "embeddings" or "inputs", default="gradients"
        What select gets as ``features``: None (it then works on the
        gradients), the embeddings h, or the flattened inputs. CRAIG reads only
        the gradients whatever this says.
    unpack, collate_fn, num_workers, device
        Of the pass's DataLoader, as in ``GraftEpochSampler``.
    random_state : None, non-negative int or numpy.random.Generator
        Gives ``seed`` (an int as it is; a Generator: one draw at construction;
        None: fresh entropy, not reproducible).
    **select_kwargs
        Passed to :func:`graft_array.select` (``rank``, ``tol``, ``budget``,
        ``strategy_params``, ``hessian_diag``, ``backend``, ...). Arguments laid
        out like the rows (``labels``, ``mask``, ``offsets``, ``groups``,
        ``sources``, ``scores``) are the pass's and cannot be passed.

    Attributes
    ----------
    n : int
        ``len(dataset)``.
    indices : LongTensor (k,)
        The current coreset (dataset indices, CPU), in select's order: the
        item ``n + j`` augments ``dataset[indices[j]]``.
    epoch : int
    seed : int
    last_selection : graft_array.Selection or None
        select's full result of the last pass.
    stats : dict
        ``passes``, ``pass_seconds`` (loading, forward and select, wall clock)
        and ``select_seconds`` (the select calls alone).
    """

    def __init__(self, dataset, model, *, augment, fraction=0.1, refresh_every=1, strategy="craig",
                 class_balance=True, batch_size=512, forward_batch_size=None, layer=None, loss="cross_entropy",
                 features="gradients", eval_mode=True, unpack=None, collate_fn=None, num_workers=0, device=None,
                 random_state=None, sources=None, **select_kwargs):
        func = type(self).__name__
        try:
            self.n = len(dataset)
        except TypeError:
            raise TypeError(f"{func} expects a map-style 'dataset' with a length; got {_describe(dataset)}.") from None
        if self.n == 0:
            raise ValueError(f"{func} expects a non-empty 'dataset'; got 0 samples.")
        if not callable(augment):
            raise TypeError(
                f"The 'augment' parameter of {func} must be a callable on one sample's input (x -> x'). "
                f"Got {augment!r} instead."
            )
        for bad in _SET_BY_PASS:
            if bad in select_kwargs:
                raise TypeError(
                    f"{func} sets '{bad}' of select itself (the pass's rows are its own); do not pass it"
                    + (" (use the 'strategy' / 'fraction' parameters)." if bad in ("strategy", "fraction") else ".")
                )
        self.strategy = check_option(strategy, "strategy", func, NAMES)
        entry = REGISTRY[self.strategy]
        if entry.takes_grads is False and features == "gradients":
            raise ValueError(
                f"The 'features' parameter of {func} must be 'embeddings' or 'inputs' with strategy="
                f"{self.strategy!r}, which does not read gradients. Got 'gradients' instead."
            )
        if entry.needs_grads and loss is None:
            raise ValueError(
                f"The 'loss' parameter of {func} must be 'cross_entropy', 'mse' or a callable with strategy="
                f"{self.strategy!r}, which selects on the per-sample gradients. Got None instead."
            )
        if self.strategy == "clipcov":
            raise ValueError(f"{func} selects with a classifier's pass; strategy='clipcov' selects image-caption "
                             "pairs: call graft_array.select(features=(image_emb, text_emb), strategy='clipcov').")
        if (self.strategy == "colm") != (sources is not None):
            raise ValueError(
                f"The 'sources' parameter of {func} is needed by, and only by, strategy='colm'. Got "
                f"sources={'None' if sources is None else _describe(sources)} with strategy={self.strategy!r}."
            )
        self._sources = None if sources is None else _int_labels(sources, self.n)
        if sources is not None and self._sources is None:
            raise ValueError(f"The 'sources' parameter of {func} must hold one non-negative int source id per "
                             f"dataset item ({self.n},). Got {_describe(sources)} instead.")
        if self.strategy == "colm" and class_balance:
            raise ValueError(f"{func}: strategy='colm' selects per source; pass class_balance=False.")
        if (self.strategy in ("mkdt", "pdd") and loss not in ("cross_entropy", "mse")) or (
                self.strategy == "adacore" and loss != "cross_entropy" and "hessian_diag" not in select_kwargs):
            raise ValueError(f"{func}: strategy={self.strategy!r} needs loss='cross_entropy' (adacore: its p(1 - p)) "
                             f"or 'mse' (mkdt / pdd: the per-sample loss as the score). Got loss={loss!r}.")
        self._colm_state = None
        self.dataset = dataset
        self.model = model
        self.augment = augment
        self._pass_generator = _takes_generator(augment)
        self._sketch = _Sketcher(model, layer, loss, features, eval_mode, select_kwargs, func)
        self.fraction = check_real(fraction, "fraction", func, low=0.0, high=1.0, low_inclusive=False)
        self.refresh_every = check_int(refresh_every, "refresh_every", func, low=1)
        self.class_balance = check_bool(class_balance, "class_balance", func)
        self.batch_size = check_int(batch_size, "batch_size", func, low=1)
        self.forward_batch_size = check_int(forward_batch_size, "forward_batch_size", func, low=1, allow_none=True)
        self.num_workers = check_int(num_workers, "num_workers", func, low=0)
        self.unpack, self.collate_fn = _loader_callables(unpack, collate_fn, func)
        self.device = torch.device(device) if device is not None else None
        rng = check_random_state(random_state, "random_state", func)
        self.seed = int(random_state) if isinstance(random_state, (int, np.integer)) else int(rng.integers(2**63))
        self.epoch = 0
        self._selected_for = None
        self._indices = None
        self._weights = None
        self.last_selection = None
        self.stats = dict(passes=0, pass_seconds=0.0, select_seconds=0.0)
        self._func = func

    # ---- epochs

    def _selection_epoch(self, epoch):
        return (epoch // self.refresh_every) * self.refresh_every

    def set_epoch(self, epoch):
        """Set the epoch (fresh augmentations) and run a selection pass now when the schedule calls for one."""
        self.epoch = check_int(epoch, "epoch", f"{self._func}.set_epoch", low=0)
        self._ensure()

    def refresh(self, epoch=None):
        """Run the selection pass now, for ``epoch`` (default: the current one), whatever the schedule says."""
        if epoch is not None:
            self.epoch = check_int(epoch, "epoch", f"{self._func}.refresh", low=0)
        self._run_pass(self._selection_epoch(self.epoch))

    def _ensure(self):
        want = self._selection_epoch(self.epoch)
        if self._selected_for != want:
            self._run_pass(want)

    # ---- the selection pass

    def _run_pass(self, sel_epoch):
        t0 = time.perf_counter()
        func, sk = self._func, self._sketch
        bs = self.batch_size
        blind = self.strategy == "random"  # a uniform draw: no forward, no gradients
        grads_on = sk.loss is not None and REGISTRY[self.strategy].takes_grads
        labels = _dataset_labels(self.dataset, self.n) if blind and self.class_balance else None
        rows = {}
        if blind and (labels is not None or not self.class_balance):  # nothing to load
            rows["F"] = [torch.zeros((self.n, 1))]
        else:
            gen = torch.Generator()  # the DataLoader draws a base seed: keep it off the global RNG
            gen.manual_seed(self.seed & (2**63 - 1))
            loader = DataLoader(self.dataset, batch_size=self.forward_batch_size or bs, shuffle=False,
                                collate_fn=self.collate_fn, num_workers=self.num_workers, generator=gen)
            device = self.device if self.device is not None else _model_device(sk._inner)
            cls = []
            for batch in loader:
                x, y = self.unpack(batch)
                if self.class_balance:
                    cls.append(_class_labels(y, func))
                if blind:
                    rows.setdefault("F", []).append(torch.zeros((len(cls[-1]), 1)))
                    continue
                x, y = _to(x, device), _to(y, device)
                F, g, z = sk.sketch(x, y, logits=True)
                if F is not None:
                    rows.setdefault("F", []).append(F)
                if g is not None and grads_on:
                    rows.setdefault("e", []).append(g[0])
                    rows.setdefault("h", []).append(g[1])
                if self.strategy in ("mkdt", "pdd"):  # the per-sample loss is the score
                    loss = _per_sample_loss(_float(z), y, sk.loss, func).detach().to("cpu", torch.float64)
                    rows.setdefault("score", []).append(loss)
            if cls:
                labels = torch.cat(cls)
        got = sum(int(t.shape[0]) for t in next(iter(rows.values())))
        if got != self.n:
            raise ValueError(
                f"{func} saw {got} samples in its selection pass over a dataset of {self.n}; the collated batches "
                "must hold one sample per dataset item (check 'collate_fn' / 'unpack')."
            )
        # the pass's rows as consecutive selection batches of batch_size rows (the last one may be shorter)
        parts = {k: list(torch.cat(v).split(bs)) for k, v in rows.items()}
        F = parts.get("F")
        grads = LastLayerGrads(parts["e"], parts["h"]) if "e" in parts else None
        kw = dict(sk.select_kwargs)
        if labels is not None:
            kw["labels"] = [t.numpy() for t in labels.split(bs)]
        if "score" in parts:
            kw["scores"] = parts.pop("score")
            F = parts.get("F")
        if self.strategy == "adacore" and "hessian_diag" not in kw:
            kw["hessian_diag"] = "softmax"
        if self.strategy == "colm":
            if self._colm_state is None:
                from graft_array import ColmState

                self._colm_state = ColmState()
            kw["sources"] = list(np.array_split(self._sources, np.arange(bs, self.n, bs)))
            kw["strategy_params"] = dict(kw.get("strategy_params") or {}, state=self._colm_state)
        t1 = time.perf_counter()
        s = select(F, grads, strategy=self.strategy, fraction=self.fraction, return_info=True,
                   random_state=np.random.default_rng([self.seed, sel_epoch]), **kw)
        t2 = time.perf_counter()
        self._indices = torch.as_tensor(s.indices).detach().to("cpu", torch.int64)
        self._weights = torch.as_tensor(s.weights).detach().to("cpu", torch.float32)
        self.last_selection = s
        self._selected_for = sel_epoch
        st = self.stats
        st["passes"] += 1
        st["select_seconds"] += t2 - t1
        st["pass_seconds"] += t2 - t0

    # ---- what the training loop sees

    @property
    def indices(self):
        """The current coreset (dataset indices, int64, CPU); item ``n + j`` augments ``dataset[indices[j]]``."""
        self._ensure()
        return self._indices

    @property
    def k(self):
        """Size of the current coreset (the number of augmented items)."""
        return len(self.indices)

    def weights(self):
        """select's weights of the current coreset (float32 (k,), CPU), aligned with ``indices``.

        For CRAIG the number of the batch's samples whose nearest medoid is the
        coreset sample (they sum to the number of rows of each selection batch /
        class chunk); ``w / w.mean()`` has mean one. The dataset's own items
        weigh 1; nothing here applies the weights, the training loop may.
        """
        self._ensure()
        return self._weights.clone()

    def __len__(self):
        self._ensure()
        return self.n + len(self._indices)

    def __getitem__(self, i):
        self._ensure()
        total = self.n + len(self._indices)
        if isinstance(i, torch.Tensor) and i.ndim == 0:
            i = int(i)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"{self._func} indices must be integers; got {i!r}.")
        i = int(i)
        if i < 0:
            i += total
        if not 0 <= i < total:
            raise IndexError(f"{self._func} index {i} is out of range for {total} items.")
        if i < self.n:
            return self.dataset[i]
        src = int(self._indices[i - self.n])
        item = self.dataset[src]
        x = item[0] if isinstance(item, (tuple, list)) else item
        if self._pass_generator:
            g = torch.Generator()
            g.manual_seed(augment_seed(self.seed, self.epoch, src))
            x = self.augment(x, generator=g)
        else:
            x = self.augment(x)
        if isinstance(item, tuple):
            return (x, *item[1:])
        if isinstance(item, list):
            return [x, *item[1:]]
        return x
