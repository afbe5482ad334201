"""CREST (Yang, Kang & Mirzasoleiman, ICML 2023) as a PyTorch ``Sampler`` with a per-step hook.

CREST trains on mini-batch coresets of random pools and re-selects them only
when a quadratic model of the loss, built when they were selected, stops
predicting the loss. :class:`CrestSampler` does this inside an ordinary
training loop: it yields dataset indices (the coresets, re-mixed into batches),
gives the weights through :meth:`CrestSampler.loss_weights`, and is told after
every optimiser step through :meth:`CrestSampler.after_step`.

A round (a selection)
---------------------
1. P class-balanced random pools of ``pool_size`` samples each (default 1% of
   the dataset, at least one batch), drawn from the sampler's own generator
   seeded by ``seed`` and the round number (:func:`class_balanced_pools`). The
   P pools are one class-balanced draw without replacement dealt out in turn,
   so they are disjoint and each is class balanced (counts per class differ by
   at most one).
2. One forward over the pools (in ``forward_batch_size`` chunks, eval mode by
   default), which gives at once: the per-sample losses (their mean is L0), the
   logit gradients e_i = softmax(z_i) - onehot(y_i) (:func:`loss_residuals`),
   the mean gradient g of the pools' mean loss over the trainable parameters,
   and the Hutchinson estimate z * (H z) of its Hessian diagonal (Rademacher z,
   ``hessian_probes`` of them, H z by a second backward pass).
3. One call of :func:`graft_array.select` for all P pools:
   ``select(None, E, labels=..., strategy="crest", fraction=batch_size / pool_size)``
   (per class facility location on the rows, s_ij = max(D) - D with Euclidean
   D, lazy greedy, ``ceil(k n_c / n)`` rows per class, cluster-size weights).
   The labels given to ``select`` are ``pool * C + class``, so that every
   (pool, class) is its own stratum: one mini-batch coreset of about
   ``batch_size`` samples per pool, as in CREST. The weights are renormalised
   to mean 1 over the union of the P coresets.
4. The union is shuffled into batches of ``batch_size`` (a fresh permutation
   each time it is used up; a batch never holds one index twice unless the
   union is smaller than a batch), which the sampler yields until the next
   round.

The trigger
-----------
The round stores L0, g, the parameters theta_0 and a diagonal Hessian estimate
h: the exponential average of the Hutchinson estimates across rounds as in
AdaHessian, ``v <- beta v + (1 - beta) (z * Hz)^2`` and ``h = sqrt(v / (1 -
beta^t))`` (``hessian_beta``, t the round count; a Hessian that is diagonal,
non-negative and the same at every round is returned exactly). Every ``check_interval``
calls of :meth:`~CrestSampler.after_step` it computes the true loss L_true on
the same pool samples (a no-grad forward on the pools' cached batches) and
``L_approx = L0 + delta.g + 0.5 delta.(h * delta)`` with ``delta = theta -
theta_0``, the parameters' true displacement since the round, whatever the
optimiser did (:func:`quadratic_trigger`). This replaces CREST's accumulated
``-lr * g_batch``, which is the displacement of plain SGD only and is wrong
for momentum, weight decay or Adam. When ``|L_true - L_approx| > tau *
L_true`` a new round runs at the start of the next batch the sampler yields.
With ``adaptive=True`` the check interval and the number of pools follow the
norm of h as in CREST (a flatter loss: fewer checks, more pools per round).

Epochs
------
An epoch is the subset budget: ``round(fraction * len(dataset))`` samples (at
least one), in batches of ``batch_size`` (the last one may be short), so that
CREST trains on as many samples per epoch as the other selectors at the same
fraction. The coresets are not tied to epochs: the stream of re-mixed batches
runs on across epoch boundaries, and a round happens only when the trigger
fires (the first one at the first batch after the warm start). The first
``warm_start_epochs`` epochs yield a fresh uniform random subset of the budget
size (weights 1). Use the sampler with ``DataLoader(dataset,
batch_size=sampler.batch_size, sampler=sampler)``. With ``num_workers > 0``
the loader draws indices ``prefetch_factor * num_workers`` batches ahead, so a
new round reaches the model that many batches late (the weights of batches
already drawn stay valid: a round overwrites only its own indices' weights).

Learned examples (``drop_learned=True``, off by default)
--------------------------------------------------------
Per-sample losses are recorded from the pools' forwards (at each round and each
check) and from :meth:`~CrestSampler.record_losses`, which the training loop
may call with its batches' losses. A sample whose last ``drop_window``
records are all below ``drop_threshold`` is left out of future pools, except
in a class that would keep fewer samples than the pools ask of it (``num_pools
* ceil(pool_size / C)``), which keeps all of its samples.

Differences from the authors' code (BigML-CS-UCLA/crest)
--------------------------------------------------------
* delta is the parameters' true displacement (see above), not ``-lr *
  g_batch`` accumulated by a second backward pass whose gradient is added to
  the optimiser's (the reference runs ``backward(create_graph=True)`` and then
  ``backward()`` again on the same loss, so each step applies twice the
  gradient); here the training step is the loop's own.
* The check forwards the pools (what L0 was measured on), not the full
  training set; L0, g, h and L_true all come from the same cached pool
  batches, with the same (unweighted) loss, in eval mode by default, so
  neither data augmentation nor dropout nor batch-norm updates move L_true.
* g is the pools' exact mean gradient at the round, not AdaHessian's
  exponential average of past gradients.
* The pools are disjoint (one draw without replacement), so every index occurs
  at most once in the union and ``loss_weights`` by dataset index is well
  defined; each pool has exactly ``pool_size`` samples (the class counts are
  balanced by water-filling, not ``ceil(pool_size / C)`` per class).
* All P coresets come from one ``select`` call; a class too small for its
  share gives all it has instead of failing.

Training loop example
---------------------
training_loop_example::

    from torch.utils.data import DataLoader
    from graft_array.adapters.crest import CrestSampler
    from graft_array.adapters.torch import IndexedDataset

    data = IndexedDataset(train_set)                    # items (x, y, index)
    sampler = CrestSampler(data, model, fraction=0.1, batch_size=128, seed=0)
    loader = DataLoader(data, batch_size=sampler.batch_size, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y, index in loader:
            x, y = x.to(device), y.to(device)
            losses = F.cross_entropy(model(x), y, reduction="none")
            loss = (sampler.loss_weights(index).to(device) * losses).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sampler.after_step()                        # the per-step hook: the check
            sampler.record_losses(index, losses)        # optional (drop_learned)
    print(sampler.stats)   # rounds, checks, triggers, select_seconds, ...

Nothing here prints or touches a global random number generator (pools, probes
and orders come from generators seeded by ``seed``), except that
``eval_mode=False`` runs the model's own train-mode forward (dropout then draws
from torch's global generator and batch-norm statistics are updated), as the
authors' code does.
"""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, Subset

from .._select import select
from .._validation import check_bool, check_int, check_real
from .torch import _check_model, _describe, _loader_callables, _model_device, _to, _unwrap, loss_residuals

__all__ = [
    "CrestSampler",
    "class_balanced_pools",
    "hutchinson_diagonal",
    "quadratic_approximation",
    "quadratic_trigger",
]

# streams of the sampler's generators: np.random.default_rng([seed, STREAM, number, ...])
_POOLS, _SELECT, _PROBES, _WARM, _SHUFFLE = range(5)


# --------------------------------------------------------------------------- pure pieces


def _water_fill(counts, total, rng):
    """Per-class counts summing to ``total`` (<= sum(counts)), as equal as the capacities ``counts`` allow.

    Remainders of the equal split go to classes drawn by ``rng``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    alloc = np.zeros_like(counts)
    left = int(total)
    while left > 0:
        open_ = np.flatnonzero(alloc < counts)
        share = left // open_.size
        if share == 0:
            alloc[rng.choice(open_, size=left, replace=False)] += 1
            break
        add = np.minimum(share, counts[open_] - alloc[open_])
        alloc[open_] += add
        left -= int(add.sum())
    return alloc


def class_balanced_pools(labels, num_pools, pool_size, rng, *, available=None):
    """P disjoint class-balanced random pools of dataset indices.

    One draw without replacement of ``P * pool_size`` samples (``P`` reduced
    to ``len // pool_size``, at least 1, when fewer samples are available;
    one smaller pool when fewer than ``pool_size`` are), with the count of
    each class as equal as the classes' sizes allow (water-filling), dealt out
    to the pools in turn, so that the pools' sizes and each class's count per
    pool differ by at most one.

    Parameters
    ----------
    labels : int array (N,)
        Class of each dataset index.
    num_pools, pool_size : int >= 1
    rng : numpy.random.Generator
        The only source of randomness.
    available : None or bool array (N,)
        Samples that may be drawn (default: all).

    Returns
    -------
    list of int64 arrays, each sorted (dataset indices).
    """
    func = "class_balanced_pools"
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{func} expects 'labels' to be a 1-D int array; got shape {labels.shape}, dtype "
                         f"{labels.dtype}.")
    num_pools = check_int(num_pools, "num_pools", func, low=1)
    pool_size = check_int(pool_size, "pool_size", func, low=1)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"The 'rng' parameter of {func} must be a numpy.random.Generator. Got {rng!r} instead.")
    if available is None:
        pool_from = np.arange(labels.shape[0], dtype=np.int64)
    else:
        available = np.asarray(available)
        if available.shape != labels.shape or available.dtype != np.bool_:
            raise ValueError(f"{func} expects 'available' to be a bool array of shape {labels.shape}; got shape "
                             f"{available.shape}, dtype {available.dtype}.")
        pool_from = np.flatnonzero(available)
    if pool_from.size == 0:
        raise ValueError(f"{func} has no sample to draw from ('labels' is empty or nothing is 'available').")
    lab = labels[pool_from]
    classes, counts = np.unique(lab, return_counts=True)
    P = max(1, min(num_pools, pool_from.size // pool_size))
    total = min(P * pool_size, int(pool_from.size))
    alloc = _water_fill(counts, total, rng)
    drawn = []
    for c, a in zip(classes, alloc):
        if a:
            members = pool_from[lab == c]
            drawn.append(members[rng.permutation(members.size)[:a]])
    flat = np.concatenate(drawn)
    return [np.sort(flat[p::P]) for p in range(P)]


def _flat(tensors, dtype):
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])


def _param_dtype(params):
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def _rademacher(params, probes, generator):
    """``probes`` lists of +-1 tensors shaped like ``params`` (drawn on the CPU from ``generator``)."""
    out = []
    for _ in range(probes):
        zs = []
        for p in params:
            z = torch.randint(0, 2, tuple(p.shape), generator=generator, dtype=torch.int8) * 2 - 1
            zs.append(z.to(device=p.device, dtype=p.dtype))
        out.append(zs)
    return out


def _gradient_and_curvature(loss, params, probes):
    """(flat gradient of ``loss``, flat sum over the probes z of z * (H z)); ``loss`` needs a graph."""
    dtype = _param_dtype(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]
    g = _flat(grads, dtype)
    d = torch.zeros_like(g)
    live = [i for i, gr in enumerate(grads) if gr.requires_grad]  # a gradient without a graph has H = 0
    for k, zs in enumerate(probes):
        if not live:
            break
        hz = torch.autograd.grad([grads[i] for i in live], params, grad_outputs=[zs[i] for i in live],
                                 retain_graph=k < len(probes) - 1, allow_unused=True)
        hz = [torch.zeros_like(p) if v is None else v for p, v in zip(params, hz)]
        d += _flat(zs, dtype) * _flat(hz, dtype)
    return g, d


def hutchinson_diagonal(loss, params, *, probes=1, generator=None):
    """Hutchinson's estimate of the Hessian diagonal of a scalar ``loss``: the mean of z * (H z).

    z has independent Rademacher (+-1) entries, so ``E[z * (H z)] = diag(H)``;
    for a diagonal H the estimate is exact with any z. H z comes from a second
    backward pass through the gradient (``create_graph=True``).

    Parameters
    ----------
    loss : 0-d tensor with a graph to ``params``
    params : sequence of tensors (requires_grad)
    probes : int >= 1
    generator : None or torch.Generator (CPU)
        Draws z; None: a fresh generator seeded 0 (the global one is never used).

    Returns
    -------
    flat tensor (sum of the params' sizes,), float32 (float64 when a parameter
    is float64), on the parameters' device: the estimate, parameter after
    parameter in the given order.
    """
    func = "hutchinson_diagonal"
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise ValueError(f"{func} expects 'loss' to be a scalar tensor with a graph (requires_grad); got "
                         f"{_describe(loss)}.")
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError(f"{func} expects 'params' to be a non-empty sequence of tensors that require grad.")
    probes = check_int(probes, "probes", func, low=1)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"The 'generator' parameter of {func} must be None or a torch.Generator. Got "
                        f"{generator!r} instead.")
    _, d = _gradient_and_curvature(loss.reshape(()), params, _rademacher(params, probes, generator))
    return d / probes


class AdaHessian:
    """AdaHessian's running diagonal: ``v <- beta v + (1 - beta) d^2``, ``h = sqrt(v / (1 - beta^t))``.

    ``update(d)`` takes a new Hutchinson estimate ``d`` (flat) and returns ``h``;
    a ``d`` of another shape (other trainable parameters) restarts the average.
    """

    def __init__(self, beta):
        self.beta = beta
        self.v, self.t = None, 0

    def update(self, d):
        restart = self.v is None or self.v.shape != d.shape
        if restart:
            self.v, self.t = torch.zeros_like(d), 0
        self.v = self.beta * self.v + (1.0 - self.beta) * d * d
        self.t += 1
        return torch.sqrt(self.v / (1.0 - self.beta ** self.t)), restart


def quadratic_approximation(L0, g, h, delta):
    """``L0 + delta.g + 0.5 delta.(h * delta)`` as a Python float (computed in float64)."""
    g, h, delta = (torch.as_tensor(v).detach().reshape(-1).to(torch.float64) for v in (g, h, delta))
    if not g.shape == h.shape == delta.shape:
        raise ValueError(f"quadratic_approximation expects 'g', 'h' and 'delta' of one length; got "
                         f"{g.numel()}, {h.numel()} and {delta.numel()}.")
    h = h.to(delta.device)
    return float(L0) + float(torch.dot(delta, g.to(delta.device))) + 0.5 * float(torch.dot(delta, h * delta))


def quadratic_trigger(L0, g, h, delta, L_true, tau):
    """CREST's check: ``(fired, L_approx)`` with ``fired = |L_true - L_approx| > tau * L_true``.

    ``L_approx`` is :func:`quadratic_approximation` of the loss at the
    displacement ``delta`` from the point where L0 (loss), g (gradient) and h
    (Hessian diagonal) were measured.
    """
    tau = check_real(tau, "tau", "quadratic_trigger", low=0.0)
    approx = quadratic_approximation(L0, g, h, delta)
    return abs(float(L_true) - approx) > tau * float(L_true), approx


# --------------------------------------------------------------------------- the sampler


def _dataset_labels(dataset):
    """``dataset.targets`` (or ``.labels``), seen through Subset / IndexedDataset wrappers; None if absent."""
    for name in ("targets", "labels"):
        v = getattr(dataset, name, None)
        if v is not None:
            return v
    inner = getattr(dataset, "dataset", None)
    if inner is None:
        return None
    lab = _dataset_labels(inner)
    if lab is None:
        return None
    idx = getattr(dataset, "indices", None)
    if idx is None:
        return lab
    lab = lab.cpu().numpy() if isinstance(lab, torch.Tensor) else np.asarray(lab)
    return lab[np.asarray(idx, dtype=np.int64)]


class _Round:
    """What one selection round leaves: the pools' cached batches and the quadratic model."""

    __slots__ = ("number", "pools", "batches", "params", "theta0", "L0", "g", "h", "union", "weights", "steps")


class CrestSampler(Sampler):
    """CREST mini-batch coresets as a ``Sampler`` of dataset indices, re-selected by a loss check.

    See the module docstring for the round, the trigger, the epoch length and
    the differences from the authors' code. Call ``set_epoch(epoch)`` at the
    start of every epoch and ``after_step()`` after every ``optimizer.step()``;
    weigh each batch's per-sample losses by ``loss_weights(index)``.

    Parameters
    ----------
    dataset : map-style Dataset (``len`` and ``__getitem__``)
        Items are collated into batches ``(x, y, ...)`` (see ``unpack``);
        ``y`` holds class indices.
    model : torch.nn.Module
        Called as ``model(x)``; its output must be the logits (n, C) of the
        cross-entropy loss. A DataParallel / DDP wrapper is looked through.
    fraction : float in (0, 1], default=0.1
        The budget: ``round(fraction * len(dataset))`` samples per epoch.
    batch_size : int, default=128
        Training batch size, the size of each pool's mini-batch coreset.
    num_pools : int, default=5
        P, the pools (and coresets) per round.
    pool_size : None or int in [min(batch_size, N), N]
        Samples per pool; default ``max(batch_size, ceil(0.01 N))`` (capped at N).
    check_interval : int, default=20
        Steps (``after_step`` calls) between checks of the quadratic model
        (the authors' default is 1 with ``adaptive`` on; a check costs one
        no-grad forward over the P pools).
    tau : float >= 0, default=0.1
        Re-select when ``|L_true - L_approx| > tau * L_true``.
    labels : None or int array-like (N,)
        Class of each dataset index (for the balanced pools and the per-class
        selection); default ``dataset.targets`` or ``dataset.labels`` (also
        through ``Subset`` / :class:`IndexedDataset`). Must agree with the
        ``y`` the dataset yields.
    hessian_probes : int, default=1
        Rademacher probes of the Hutchinson estimate per round.
    hessian_beta : float in [0, 1), default=0.999
        AdaHessian's exponential average of the squared estimates across rounds.
    adaptive : bool, default=False
        CREST's schedule: after each round but the first, ``check_interval`` is
        scaled by ||h_first|| / ||h_now|| (rounded up) and the number of pools
        of the next round by the same factor, capped at the steps of one epoch.
    drop_learned : bool, default=False
        Leave learned samples out of future pools (module docstring).
    drop_threshold : float, default=0.1
    drop_window : int, default=5
    warm_start_epochs : int, default=0
        First epochs on uniform random subsets of the budget size.
    eval_mode : bool, default=True
        Run the pools' forwards (selection, Hessian, checks) in eval mode; the
        train/eval flags are restored after.
    forward_batch_size : None or int
        Chunk size of the pools' forwards (and of their cached batches);
        default ``batch_size``. Memory of a round: one chunk's graph, plus the
        P pools' batches on the CPU (or wherever ``collate_fn`` puts them),
        plus four vectors of the parameters' size (theta_0, g, h and the
        AdaHessian average) and one per Hessian probe.
    unpack : callable, optional
        ``batch -> (x, y)`` for collated batches; default: items 0 and 1.
    collate_fn : callable, optional
    num_workers : int, default=0
        Workers of the DataLoader that loads the pools.
    device : torch.device or str, optional
        Where the pools' batches go for the forwards; default: the model's.
    seed : int, default=0
        Seeds the pools, the probes, the orders and the warm-start subsets.

    Attributes
    ----------
    stats : dict
        ``rounds``, ``select_seconds`` (loading the pools, their forwards,
        gradient, Hessian and select, wall clock), ``checks``, ``triggers``,
        ``check_seconds``, ``steps``, ``excluded`` (samples left out as learned
        at the last round), ``check_interval``, ``num_pools`` (current values).
    last_check : None or dict
        ``L_true``, ``L_approx``, ``fired`` and ``step`` of the last check.
    """

    def __init__(self, dataset, model, *, fraction=0.1, batch_size=128, num_pools=5, pool_size=None,
                 check_interval=20, tau=0.1, labels=None, hessian_probes=1, hessian_beta=0.999, adaptive=False,
                 drop_learned=False, drop_threshold=0.1, drop_window=5, warm_start_epochs=0, eval_mode=True,
                 forward_batch_size=None, unpack=None, collate_fn=None, num_workers=0, device=None, seed=0):
        func = type(self).__name__
        self._func = func
        try:
            n = len(dataset)
        except TypeError:
            raise TypeError(f"{func} expects a map-style 'dataset' with a length; got {_describe(dataset)}.") from None
        if n == 0:
            raise ValueError(f"{func} expects a non-empty 'dataset'; got 0 samples.")
        self._n = n
        self.dataset = dataset
        self.model = _check_model(model, func)
        self._inner = _unwrap(model)
        self.fraction = check_real(fraction, "fraction", func, low=0.0, high=1.0, low_inclusive=False)
        self.batch_size = check_int(batch_size, "batch_size", func, low=1)
        self.num_pools = check_int(num_pools, "num_pools", func, low=1)
        low = min(self.batch_size, n)
        if pool_size is None:
            pool_size = min(n, max(self.batch_size, math.ceil(0.01 * n)))
        self.pool_size = check_int(pool_size, "pool_size", func, low=low, high=n)
        self.check_interval = check_int(check_interval, "check_interval", func, low=1)
        self.tau = check_real(tau, "tau", func, low=0.0)
        self.hessian_probes = check_int(hessian_probes, "hessian_probes", func, low=1)
        self.hessian_beta = check_real(hessian_beta, "hessian_beta", func, low=0.0, high=0.999999)
        self.adaptive = check_bool(adaptive, "adaptive", func)
        self.drop_learned = check_bool(drop_learned, "drop_learned", func)
        self.drop_threshold = check_real(drop_threshold, "drop_threshold", func)
        self.drop_window = check_int(drop_window, "drop_window", func, low=1)
        self.warm_start_epochs = check_int(warm_start_epochs, "warm_start_epochs", func, low=0)
        self.eval_mode = check_bool(eval_mode, "eval_mode", func)
        self.forward_batch_size = check_int(forward_batch_size, "forward_batch_size", func, low=1, allow_none=True) \
            or self.batch_size
        self.num_workers = check_int(num_workers, "num_workers", func, low=0)
        self.seed = check_int(seed, "seed", func, low=0)
        self.unpack, self.collate_fn = _loader_callables(unpack, collate_fn, func)
        self.device = torch.device(device) if device is not None else None
        self._labels = self._check_labels(labels)
        self._classes = int(np.unique(self._labels).size)
        self.budget = max(1, int(round(self.fraction * n)))
        self.steps_per_epoch = math.ceil(self.budget / self.batch_size)
        self.epoch = 0
        # state
        self._round = None
        self._pending = True  # the first round runs at the first CREST batch
        self._queue = np.zeros(0, dtype=np.int64)
        self._qpos = 0
        self._passes = 0
        self._weights = torch.ones(n, dtype=torch.float32)
        self._weights_by_device = {}
        self._ada = AdaHessian(self.hessian_beta)  # the average of the squared estimates, over the rounds
        self._hnorm0 = None
        self._cur_interval = self.check_interval
        self._cur_pools = self.num_pools
        if self.drop_learned:
            self._hist = np.full((n, self.drop_window), np.nan, dtype=np.float32)
            self._nrec = np.zeros(n, dtype=np.int64)
        self.last_check = None
        self._stats = dict(rounds=0, select_seconds=0.0, checks=0, triggers=0, check_seconds=0.0, steps=0,
                           excluded=0)

    # ---- arguments

    def _check_labels(self, labels):
        func = self._func
        if labels is None:
            labels = _dataset_labels(self.dataset)
            if labels is None:
                raise TypeError(
                    f"{func} needs the class of every sample: pass 'labels' (an int array of length "
                    f"{self._n}); the dataset has no 'targets' or 'labels' attribute."
                )
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        try:
            arr = np.asarray(labels)
        except Exception:
            raise TypeError(f"The 'labels' parameter of {func} must be an int array-like. Got "
                            f"{_describe(labels)} instead.") from None
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"The 'labels' parameter of {func} must hold class indices (an int array); got dtype "
                             f"{arr.dtype}.")
        if arr.shape != (self._n,):
            raise ValueError(f"The 'labels' parameter of {func} must have one label per sample (shape "
                             f"({self._n},)); got shape {arr.shape}.")
        if arr.size and int(arr.min()) < 0:
            raise ValueError(f"The 'labels' parameter of {func} must hold class indices >= 0; got {int(arr.min())}.")
        return arr.astype(np.int64)

    # ---- epochs and iteration

    def set_epoch(self, epoch):
        """Set the epoch (warm start or CREST, and the warm-start subset's seed)."""
        self.epoch = check_int(epoch, "epoch", f"{self._func}.set_epoch", low=0)

    def __len__(self):
        return self.budget

    def __iter__(self):
        if self.epoch < self.warm_start_epochs:
            rng = np.random.default_rng([self.seed, _WARM, self.epoch])
            return iter(rng.permutation(self._n)[: self.budget].tolist())
        return self._stream(self.budget)

    def _stream(self, count):
        done = 0
        while done < count:
            if self._pending:
                self._new_round()
            m = min(self.batch_size, count - done)
            yield from self._take(m).tolist()
            done += m

    def _take(self, m):
        """The next m indices of the round's stream of shuffled passes over the union."""
        rest = self._queue[self._qpos:]
        if rest.size >= m:
            self._qpos += m
            return rest[:m]
        union = self._round.union
        rng = np.random.default_rng([self.seed, _SHUFFLE, self._round.number, self._passes])
        self._passes += 1
        perm = union[rng.permutation(union.size)]
        need = m - rest.size
        if union.size < m:  # a union smaller than a batch: the batch repeats indices
            batch = np.concatenate([rest, np.resize(perm, need)])
            self._queue, self._qpos = perm, 0
            return batch
        fill = np.flatnonzero(~np.isin(perm, rest))[:need]  # no index twice in one batch
        keep = np.ones(perm.size, dtype=bool)
        keep[fill] = False
        batch = np.concatenate([rest, perm[fill]])
        self._queue, self._qpos = perm[keep], 0
        return batch

    # ---- weights and records

    @property
    def weights(self):
        """Weights by dataset index (float32, CPU): the current coresets' weights (mean 1 over their union);
        1 for indices never selected; earlier rounds' weights stay for indices not selected since."""
        return self._weights

    @property
    def indices(self):
        """The union of the current round's coresets (dataset indices, int64 numpy), or None before the first."""
        return None if self._round is None else self._round.union

    def loss_weights(self, index):
        """Weights of a training batch's samples, on ``index``'s device.

        ``(sampler.loss_weights(index) * loss_per_sample).mean()`` is the
        weighted coreset loss (the weights have mean 1 over the union of the
        round's coresets; 1 during warm start).
        """
        if not isinstance(index, torch.Tensor):
            index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        dev = index.device
        if dev not in self._weights_by_device:
            self._weights_by_device[dev] = self._weights.to(dev)
        return self._weights_by_device[dev][index.long()]

    def record_losses(self, index, losses):
        """Record per-sample losses of dataset indices (for ``drop_learned``; a no-op otherwise)."""
        if not self.drop_learned:
            return
        func = f"{self._func}.record_losses"
        idx = index.detach().cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        val = losses.detach().float().cpu().numpy() if isinstance(losses, torch.Tensor) else np.asarray(losses)
        if idx.ndim != 1 or idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{func} expects 'index' to be a 1-D int array of dataset indices; got shape "
                             f"{idx.shape}, dtype {idx.dtype}.")
        if val.shape != idx.shape:
            raise ValueError(f"{func} expects 'losses' with one value per index (shape {idx.shape}); got shape "
                             f"{val.shape}.")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self._n):
            raise ValueError(f"{func} expects 'index' in [0, {self._n}); got values from {int(idx.min())} to "
                             f"{int(idx.max())}.")
        self._record(idx.astype(np.int64), val.astype(np.float32))

    def _record(self, idx, val):
        if not self.drop_learned or idx.size == 0:
            return
        _, last = np.unique(idx[::-1], return_index=True)  # one record per index: its last value
        keep = idx.size - 1 - last
        idx, val = idx[keep], val[keep]
        self._hist[idx, self._nrec[idx] % self.drop_window] = val
        self._nrec[idx] += 1

    def _available(self):
        """Samples the next pools may draw from (None: all), and how many were left out."""
        if not self.drop_learned:
            return None, 0
        learned = (self._nrec >= self.drop_window) & np.all(self._hist < self.drop_threshold, axis=1)
        if not learned.any():
            return None, 0
        avail = ~learned
        need = self._cur_pools * math.ceil(self.pool_size / self._classes)
        for c in np.unique(self._labels):
            members = self._labels == c
            if int(np.count_nonzero(avail & members)) < need:
                avail |= members  # a class that would run short keeps all of its samples
        return avail, int(np.count_nonzero(~avail))

    # ---- the pools' forwards

    def _device(self):
        return self.device if self.device is not None else _model_device(self._inner)

    def _load(self, indices):
        """The samples ``indices`` as a list of collated (x, y) chunks, in order."""
        gen = torch.Generator().manual_seed(self.seed)  # the DataLoader draws a base seed: keep it off the global RNG
        loader = DataLoader(Subset(self.dataset, indices.tolist()), batch_size=self.forward_batch_size,
                            shuffle=False, collate_fn=self.collate_fn, num_workers=self.num_workers, generator=gen)
        chunks, pos = [], 0
        for batch in loader:
            x, y = self.unpack(batch)
            if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
                raise ValueError(f"{self._func} expects the batches' targets 'y' to be class indices (an int tensor "
                                 f"(n,)); got {_describe(y)}.")
            want = self._labels[indices[pos:pos + y.shape[0]]]
            if y.shape[0] != want.shape[0] or not np.array_equal(y.cpu().numpy(), want):
                raise ValueError(f"The 'labels' parameter of {self._func} disagrees with the targets the dataset "
                                 "yields (or the collated batches do not hold one sample per dataset item); pass "
                                 "the dataset's own labels.")
            pos += y.shape[0]
            chunks.append((x, y))
        if pos != indices.size:
            raise ValueError(f"{self._func} loaded {pos} samples for {indices.size} pool indices; the collated "
                             "batches must hold one sample per dataset item (check 'collate_fn' / 'unpack').")
        return chunks

    def _logits(self, x):
        out = self._inner(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.is_floating_point():
            raise ValueError(f"{self._func} expects the model to return logits of shape (n, C); got "
                             f"{_describe(out)}.")
        return out

    def _modes(self):
        return [(m, m.training) for m in self._inner.modules()]

    def _set_eval(self):
        if self.eval_mode:
            self._inner.eval()

    @staticmethod
    def _restore(modes):
        for m, flag in modes:
            m.training = flag

    def _params(self):
        params = [p for p in self._inner.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{self._func} expects a model with trainable parameters (requires_grad); it has none.")
        return params

    # ---- a round

    def _new_round(self):
        t0 = time.perf_counter()
        number = self._stats["rounds"]
        avail, excluded = self._available()
        rng = np.random.default_rng([self.seed, _POOLS, number])
        pools = class_balanced_pools(self._labels, self._cur_pools, self.pool_size, rng, available=avail)
        cat = np.concatenate(pools)
        device = self._device()
        batches = self._load(cat)
        params = self._params()
        gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, _PROBES, number]).integers(2**62)))
        probes = _rademacher(params, self.hessian_probes, gen)
        total = cat.size
        g = d = None
        residuals, losses = [], []
        modes = self._modes()
        try:
            self._set_eval()
            for x, y in batches:
                x, y = _to(x, device), _to(y, device)
                with torch.enable_grad():
                    out = self._logits(x)
                    per = F.cross_entropy(_wide(out), y, reduction="none")
                    g_c, d_c = _gradient_and_curvature(per.sum() / total, params, probes)
                g = g_c if g is None else g + g_c
                d = d_c if d is None else d + d_c
                residuals.append(loss_residuals(out.detach(), y))
                losses.append(per.detach())
        finally:
            self._restore(modes)
        d = d / self.hessian_probes
        per = torch.cat(losses)
        L0 = float(per.double().mean())
        self._record(cat, per.cpu().numpy())
        h, restart = self._ada.update(d)  # AdaHessian's average of the squared estimates, bias-corrected
        if restart:  # the first round, or other trainable parameters now
            self._hnorm0 = None
        union, w = self._select(pools, torch.cat(residuals), number)
        theta0 = _flat(params, g.dtype)
        r = _Round()
        r.number, r.pools, r.batches, r.params = number, pools, batches, params
        r.theta0, r.L0, r.g, r.h, r.union, r.weights, r.steps = theta0, L0, g, h, union, w, 0
        self._round = r
        self._weights[torch.from_numpy(union)] = torch.from_numpy(w.astype(np.float32))
        self._weights_by_device = {}
        self._queue, self._qpos, self._passes = np.zeros(0, dtype=np.int64), 0, 0
        self._pending = False
        if self.adaptive:
            self._adapt(float(torch.linalg.vector_norm(h)))
        st = self._stats
        st["rounds"] += 1
        st["excluded"] = excluded
        st["select_seconds"] += time.perf_counter() - t0

    def _select(self, pools, E, number):
        """One select call for all pools: (union of the coresets as dataset indices, weights of mean 1)."""
        C = int(E.shape[1])
        sizes = [p.size for p in pools]
        lab = np.concatenate([self._labels[p] + b * max(C, int(self._labels.max()) + 1) for b, p in enumerate(pools)])
        lab_t = torch.from_numpy(lab).to(E.device)
        if len(set(sizes)) == 1:
            grads, labels = E.reshape(len(pools), sizes[0], C), lab_t.reshape(len(pools), sizes[0])
        else:
            grads, labels = list(torch.split(E, sizes)), list(torch.split(lab_t, sizes))
        seed = int(np.random.default_rng([self.seed, _SELECT, number]).integers(2**62))
        s = select(None, grads, labels=labels, strategy="crest", fraction=min(1.0, self.batch_size / self.pool_size),
                   random_state=seed, return_info=True)
        pos = _host(s.indices).astype(np.int64)
        w = _host(s.weights).astype(np.float64)
        union = np.concatenate(pools)[pos]
        if w.size and w.sum() > 0:
            w = w * (w.size / w.sum())
        return union, w

    def _adapt(self, hnorm):
        """CREST's schedule: interval and pools scaled by ||h_first|| / ||h_now||."""
        if self._hnorm0 is None:
            self._hnorm0 = hnorm
            return
        if not hnorm > 0 or not self._hnorm0 > 0:
            return
        ratio = self._hnorm0 / hnorm
        self._cur_interval = max(1, math.ceil(self.check_interval * ratio))
        pools = math.ceil(self.num_pools * self._cur_interval / self.check_interval)
        self._cur_pools = max(1, min(pools, max(self.num_pools, self.steps_per_epoch)))

    # ---- the per-step hook

    def after_step(self):
        """Call after every ``optimizer.step()``: counts the step and, every ``check_interval`` steps, checks
        the quadratic model on the pools; when it fails, the next batch the sampler yields starts a new round.

        Returns True when this call ran a check that fired, else False.
        """
        self._stats["steps"] += 1
        r = self._round
        if r is None or self._pending or self.epoch < self.warm_start_epochs:
            return False
        r.steps += 1
        if r.steps % self._cur_interval:
            return False
        return self.check()

    def check(self):
        """Check the quadratic model now (what ``after_step`` does every ``check_interval`` steps).

        Returns True when it fired (a new round is then pending).
        """
        r = self._round
        if r is None:
            raise ValueError(f"{self._func}.check has no quadratic model yet: no round has run.")
        t0 = time.perf_counter()
        device = self._device()
        losses = []
        modes = self._modes()
        try:
            self._set_eval()
            with torch.no_grad():
                for x, y in r.batches:
                    x, y = _to(x, device), _to(y, device)
                    losses.append(F.cross_entropy(_wide(self._logits(x)), y, reduction="none"))
        finally:
            self._restore(modes)
        per = torch.cat(losses)
        L_true = float(per.double().mean())
        self._record(np.concatenate(r.pools), per.cpu().numpy())
        with torch.no_grad():
            delta = _flat(r.params, r.theta0.dtype) - r.theta0
        fired, approx = quadratic_trigger(r.L0, r.g, r.h, delta, L_true, self.tau)
        st = self._stats
        st["checks"] += 1
        st["triggers"] += int(fired)
        st["check_seconds"] += time.perf_counter() - t0
        self.last_check = dict(L_true=L_true, L_approx=approx, fired=fired, step=st["steps"])
        if fired:
            self._pending = True
        return fired

    @property
    def stats(self):
        return dict(self._stats, check_interval=self._cur_interval, num_pools=self._cur_pools)


def _wide(t):
    """Half-precision logits in float32 (the loss and its derivatives); float32 / float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _host(a):
    """A NumPy copy of a select result (NumPy, or a tensor on any device)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)
