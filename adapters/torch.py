"""PyTorch adapter: GRAFT inside an ordinary training loop, per batch or per epoch.

Three ways in, all built on :func:`graft_array.select` with the last layer's
per-sample gradients in factorised form (:class:`graft_array.LastLayerGrads`):

* :class:`GraftBatchSelector` (the paper's per-batch mode):
  ``idx, w = selector(x, y)`` runs one no-grad forward on the batch, builds the
  gradient sketch from the logits and the targets, selects, and the loop trains
  on ``x[idx]`` with the loss ``sum_j w_j loss_j / len(x)``;
  ``selector.step(optimizer, x, y)`` does that whole weighted update.
* :class:`GraftEpochSampler` (epoch mode, the large speed-ups): a ``Sampler``
  that every ``refresh_every`` epochs runs one selection pass over the dataset
  (in order, no shuffle, many batches per :func:`select` call, dataset offsets,
  so the indices are dataset indices) and then yields only the selected
  indices, reshuffled each epoch by its own generator. Options make the pass
  cheaper (``pool_fraction``: forward and select from a random, class-stratified
  candidate pool only; ``forward_batch_size``; ``channels_last``) or change what
  it picks at small fractions (``class_balance``, ``exclude_learned`` with
  :meth:`GraftEpochSampler.record_losses`, ``strata``, ``warm_start_epochs``).
* :class:`DistributedGraftEpochSampler`: the same under ``torch.distributed``;
  each rank selects on its shard, the selections are all-gathered, every rank
  sees the same subset and iterates its own part, like ``DistributedSampler``.

What the selection sees
-----------------------
The embeddings ``h`` (the input of the named layer, by default the model's last
``nn.Linear``) and the logits ``z`` (that layer's output) are captured by a
forward hook registered for one forward and removed right after; the model's
``forward`` is never changed and needs no special signature. The named layer's
output must be the logits the loss is computed from. The per-sample gradient
of that layer's weight and bias is ``e_i (x) [h_i; 1]`` with ``e_i =
dloss_i/dz_i``:

* ``loss="cross_entropy"``: ``e = softmax(z) * sum(y) - y`` for class
  probabilities ``y`` (n, C), i.e. ``softmax(z) - onehot(y)`` for class indices
  ``y`` (n,); targets equal to ``ignore_index=-100`` get ``e = 0`` (they carry no
  loss, as in ``torch.nn.functional.cross_entropy``).
* ``loss="mse"``: ``e = 2 (z - y) / C``, the exact derivative of the per-sample
  ``torch.nn.functional.mse_loss(z_i, y_i)`` (reduction ``"mean"`` over the C
  outputs of one sample).
* a callable ``loss(logits, y)`` returning the per-sample ``dloss/dlogits``
  (n, C) tensor.
* ``loss=None``: no gradient criterion; ``round(fraction * n)`` rows per batch.

The low-rank (MaxVol) step runs on ``features="embeddings"`` (default: ``h``),
on ``features="inputs"`` (the batch ``x`` flattened to (n, -1)), or on
``features="gradients"``: the per-sample last-layer gradients themselves
(``graft_array.select(None, LastLayerGrads(e, h))``, from their factorised Gram;
needs a loss). ``benchmarks/bench_training.py`` compares them.

Tensors stay on their device (CUDA tensors run the core's array-API path on the
device); indices come back as LongTensors on that device. Nothing here prints
(progress bars go to stderr through tqdm), patches torch, or touches a global
random number generator: every random choice comes from the object's own
``torch.Generator`` / ``numpy.random.Generator``.
"""

import contextlib
import math
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .._select import LastLayerGrads, select
from .._validation import check_bool, check_int, check_random_state, check_real

__all__ = [
    "GraftBatchSelector",
    "GraftEpochSampler",
    "DistributedGraftEpochSampler",
    "IndexedDataset",
    "capture",
    "loss_residuals",
]

LOSSES = ("cross_entropy", "mse")
_PROBE_SALT = 7_919  # refresh_tau's probe draw, apart from the pass's pool draw of the same epoch
FEATURES = ("embeddings", "inputs", "gradients")
IGNORE_INDEX = -100
_RESERVED = ("offsets", "return_info", "mask", "random_state", "fraction")


# --------------------------------------------------------------------------- helpers


def _describe(x):
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    return f"an object of type {type(x).__module__}.{type(x).__qualname__}"


def _check_model(model, func):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{func} expects 'model' to be a torch.nn.Module; got {_describe(model)}.")
    return model


def _unwrap(model):
    """The module inside DataParallel / DistributedDataParallel (their forwards may run collectives)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _find_layer(model, layer, func):
    """(module, name) of the layer whose input is h and whose output is the logits."""
    named = list(model.named_modules())
    if layer is None:
        linears = [(name, m) for name, m in named if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"{func} found no torch.nn.Linear in the model ({type(model).__name__}), so it cannot pick the "
                "last linear layer by default; name the layer whose input is the embedding and whose output is "
                "the logits with layer='...'."
            )
        name, mod = linears[-1]
        return mod, name
    if isinstance(layer, nn.Module):
        for name, m in named:
            if m is layer:
                return m, name
        raise ValueError(
            f"The 'layer' parameter of {func} must be a submodule of the model; got a {type(layer).__name__} "
            "that is not among model.modules()."
        )
    if isinstance(layer, str):
        table = dict(named)
        key = layer
        if key not in table and key.startswith("module."):  # a name taken from a DDP/DataParallel wrapper
            key = key[len("module."):]
        if key in table and key != "":
            return table[key], key
        names = [n for n, _ in named if n]
        shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
        raise ValueError(
            f"The 'layer' parameter of {func} must name a submodule of the model (one of {shown}). "
            f"Got {layer!r} instead."
        )
    raise TypeError(
        f"The 'layer' parameter of {func} must be None, a submodule name (str) or an nn.Module. Got {layer!r} instead."
    )


def _check_loss(loss, func):
    if loss is None or callable(loss) or (isinstance(loss, str) and loss in LOSSES):
        return loss
    raise ValueError(
        f"The 'loss' parameter of {func} must be one of 'cross_entropy', 'mse', None or a callable "
        f"(logits, y) -> per-sample dloss/dlogits. Got {loss!r} instead."
    )


def _check_features(features, func):
    if isinstance(features, str) and features in FEATURES:
        return features
    raise ValueError(
        f"The 'features' parameter of {func} must be one of 'embeddings', 'inputs', 'gradients'. Got {features!r} "
        "instead."
    )


def _stack_or_list(parts, pack):
    """Per-batch NumPy int arrays: one stacked (B, n) array, or a list."""
    arrs = [t.numpy() for t in parts]
    return np.stack(arrs) if pack is torch.stack else arrs


#: the strategies GraftEpochSampler runs (clipcov selects image-caption pairs: no classifier pass gives them)
_SAMPLER_FAMILY = ("adacore", "colm", "sas", "mkdt", "pdd")


def _family_strategy(select_kwargs, sketch, sources, class_balance, strata, func, *, sources_per_call=False):
    """The sampler's strategy, after the checks of its family-specific inputs.

    ``sources_per_call``: colm's sources come with each call (GraftBatchSelector), not with the constructor.
    """
    st = select_kwargs.get("strategy", "graft")
    for nm in ("hessian_diag", "sources", "groups", "scores"):
        if nm in select_kwargs:
            raise TypeError(
                f"{func} computes select's '{nm}' itself (adacore: the EMA of p(1 - p); colm: from 'sources'; "
                f"mkdt / pdd: the per-sample loss); do not pass it."
            )
    if st == "clipcov":
        raise ValueError(
            f"{func} runs a classifier's selection pass; strategy='clipcov' selects image-caption pairs: call "
            "graft_array.select(features=(image_emb, text_emb), strategy='clipcov') on the pairs' embeddings."
        )
    if not sources_per_call and (st == "colm") != (sources is not None):
        raise ValueError(
            f"The 'sources' parameter of {func} is needed by, and only by, strategy='colm'. Got "
            f"sources={'None' if sources is None else _describe(sources)} with strategy={st!r}."
        )
    if st == "colm" and (class_balance or strata is not None):
        raise ValueError(f"{func}: strategy='colm' selects per source; class_balance and strata do not apply.")
    if st in ("mkdt", "pdd") and sketch.loss not in LOSSES:
        raise ValueError(f"{func}: strategy={st!r} scores samples by their loss, which needs loss='cross_entropy' "
                         f"or 'mse'; got loss={sketch.loss!r}.")
    if st == "adacore" and sketch.loss != "cross_entropy":
        raise ValueError(f"{func}: strategy='adacore' preconditions by the softmax cross-entropy Hessian p(1 - p); "
                         f"got loss={sketch.loss!r}. Call graft_array.select(..., hessian_diag=...) with yours.")
    if st == "sas" and sketch.features != "embeddings":
        raise ValueError(f"{func}: strategy='sas' ranks embeddings; pass features='embeddings'. Got "
                         f"features={sketch.features!r}.")
    return st


def _check_select_kwargs(kwargs, func):
    for bad in _RESERVED:
        if bad in kwargs:
            raise TypeError(f"{func} sets '{bad}' of select itself; do not pass it.")
    return dict(kwargs)


def _numpy_rng(random_state, func):
    return check_random_state(random_state, "random_state", func)


def _float(t):
    """float32 for half precision (the core computes in float32/float64), detached, same device."""
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def _take(x, idx):
    """Rows ``idx`` of a tensor, or of every tensor in a tuple / list / dict."""
    if isinstance(x, torch.Tensor):
        return x.index_select(0, idx.to(x.device))
    if isinstance(x, (list, tuple)):
        return type(x)(_take(v, idx) for v in x)
    if isinstance(x, dict):
        return {k: _take(v, idx) for k, v in x.items()}
    raise TypeError(f"cannot take rows of {_describe(x)}; pass tensors (or tuples / dicts of tensors).")


def _to(x, device):
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _model_device(model):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


# --------------------------------------------------------------------------- capture and residuals


def _capture(model, mod, name, x, eval_mode, func, *, inference=False, grad=False):
    """One no-grad forward with a hook on ``mod``: (embeddings (n, h), logits (n, C)); training flags restored.

    ``inference``: run it under ``torch.inference_mode`` (no version counters, no view tracking) instead of
    ``torch.no_grad``; the outputs are then inference tensors, fine for reading (the selection pass) but not
    for autograd. ``grad``: a forward with autograd on instead, whose outputs keep their graph.
    """
    seen = []

    def hook(module, args, output):
        seen.append((args, output))

    modes = [(m, m.training) for m in model.modules()]
    handle = mod.register_forward_hook(hook)
    try:
        if eval_mode:
            model.eval()
        with torch.enable_grad() if grad else torch.inference_mode() if inference else torch.no_grad():
            model(x)
    finally:
        handle.remove()
        for m, flag in modes:
            m.training = flag
    if len(seen) != 1:
        how = "never ran" if not seen else f"ran {len(seen)} times"
        raise ValueError(
            f"{func} expects the layer {name!r} ({type(mod).__name__}) to run exactly once per forward; it {how}. "
            "Name the layer whose output is the model's logits with layer='...'."
        )
    args, out = seen[0]
    if not args or not isinstance(args[0], torch.Tensor):
        raise ValueError(
            f"{func} expects the layer {name!r} to be called with a tensor as its first positional input "
            f"(the embedding); got {_describe(args[0]) if args else 'no positional input'}."
        )
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError(
            f"{func} expects the layer {name!r} to output logits of shape (n, C); got {_describe(out)}. "
            "Name the layer whose output is one row of logits per sample with layer='...'."
        )
    h = args[0]
    if h.ndim < 2 or h.shape[0] != out.shape[0]:
        raise ValueError(
            f"{func} expects the input of layer {name!r} to have one row per sample ({out.shape[0]}); "
            f"got {_describe(h)}."
        )
    if grad:
        return h.flatten(1), out
    return h.detach().flatten(1), out.detach()


def capture(model, x, *, layer=None, eval_mode=True):
    """Embeddings and logits of one no-grad forward, captured by a hook on ``layer``.

    Parameters
    ----------
    model : torch.nn.Module
    x : the model's input (passed as ``model(x)``)
    layer : None, str or nn.Module
        The layer whose input is the embedding and whose output is the logits;
        default: the model's last ``nn.Linear`` (in registration order).
    eval_mode : bool, default=True
        Run the forward in eval mode (dropout off, batch-norm running statistics
        used and not updated); every module's train/eval flag is restored after.

    Returns
    -------
    embeddings : tensor (n, h)
        The layer's input, flattened after the first dimension.
    logits : tensor (n, C)
        The layer's output.
    """
    func = "capture"
    model = _unwrap(_check_model(model, func))
    mod, name = _find_layer(model, layer, func)
    return _capture(model, mod, name, x, check_bool(eval_mode, "eval_mode", func), func)


def _batch_len(x, y):
    """Samples in a collated batch (without a forward): the leading size of x, or of y."""
    for t in (x, y):
        if isinstance(t, torch.Tensor) and t.ndim >= 1:
            return int(t.shape[0])
        if isinstance(t, (list, tuple)):
            return len(t)
    raise TypeError(f"cannot tell the number of samples of a batch whose 'x' is {_describe(x)}.")


def _n_of(y):
    return y.shape[0] if isinstance(y, torch.Tensor) and y.ndim >= 1 else None


def loss_residuals(logits, y, loss="cross_entropy"):
    """Per-sample ``dloss/dlogits`` (n, C), the ``e`` of the last-layer gradient ``e (x) [h; 1]``.

    Parameters
    ----------
    logits : tensor (n, C)
    y : tensor
        ``"cross_entropy"``: class indices (n,) of an integer dtype (``-100`` is
        ignored) or class probabilities (n, C). ``"mse"``: targets (n, C), or (n,)
        when C == 1.
    loss : {"cross_entropy", "mse"} or callable
        See the module docstring for the formulas.

    Returns
    -------
    tensor (n, C), float32 (float64 for float64 logits), on the logits' device.
    """
    func = "loss_residuals"
    loss = _check_loss(loss, func)
    if loss is None:
        raise ValueError(
            f"The 'loss' parameter of {func} must be 'cross_entropy', 'mse' or a callable. Got None instead."
        )
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"{func} expects 'logits' to be a floating tensor of shape (n, C); got {_describe(logits)}.")
    n, C = logits.shape
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{func} expects 'y' to be a tensor of targets; got {_describe(y)}.")
    if _n_of(y) != n:
        raise ValueError(f"{func} expects 'y' with one target per sample ({n}); got {_describe(y)}.")
    z = _float(logits)
    y = y.detach().to(z.device)
    if callable(loss):
        e = loss(z, y)
        if not isinstance(e, torch.Tensor) or tuple(e.shape) != (n, C):
            hint = (" A loss module returns the loss, not its gradient: use loss='cross_entropy' or 'mse'."
                    if isinstance(loss, nn.Module) else "")
            raise ValueError(
                f"{func} expects the callable 'loss' to return dloss/dlogits of the logits' shape ({n}, {C}); "
                f"got {_describe(e)}.{hint}"
            )
        return _float(e)
    if loss == "cross_entropy":
        p = torch.softmax(z, dim=1)
        if y.is_floating_point():
            if tuple(y.shape) != (n, C):
                raise ValueError(
                    f"{func} expects cross-entropy targets as class indices (n,) of an integer dtype or class "
                    f"probabilities of shape ({n}, {C}); got {_describe(y)}."
                )
            y = y.to(z.dtype)
            return p * y.sum(dim=1, keepdim=True) - y
        if y.dtype == torch.bool or y.is_complex() or y.ndim != 1:
            raise ValueError(
                f"{func} expects cross-entropy targets as class indices ({n},) of an integer dtype or class "
                f"probabilities of shape ({n}, {C}); got {_describe(y)}."
            )
        y = y.long()
        ignored = y == IGNORE_INDEX
        bad = ((y < 0) | (y >= C)) & ~ignored
        if bool(bad.any()):  # one check per batch (indices out of range would fault on a GPU)
            raise ValueError(
                f"{func} expects class indices in [0, {C}) (or {IGNORE_INDEX}, ignored) for logits with {C} "
                f"classes; got values from {int(y.min())} to {int(y.max())}."
            )
        safe = torch.where(ignored, torch.zeros_like(y), y)
        e = p.scatter_add(1, safe[:, None], torch.full((n, 1), -1.0, dtype=z.dtype, device=z.device))
        return torch.where(ignored[:, None], torch.zeros_like(e), e)
    # mse
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{func} expects real MSE targets; got {_describe(y)}.")
    if y.ndim == 1 and C == 1:
        y = y[:, None]
    if tuple(y.shape) != (n, C):
        raise ValueError(f"{func} expects MSE targets of shape ({n}, {C}) (or ({n},) when C == 1); got {_describe(y)}.")
    return 2.0 * (z - y.to(z.dtype)) / C


def _per_sample_loss(out, y, loss, func):
    """Per-sample losses (n,) matching the residual formulas of ``loss``."""
    import torch.nn.functional as F

    if loss == "cross_entropy":
        return F.cross_entropy(out, y, reduction="none", ignore_index=IGNORE_INDEX) if not y.is_floating_point() \
            else F.cross_entropy(out, y.to(out.dtype), reduction="none")
    if loss == "mse":
        yy = y[:, None] if (y.ndim == 1 and out.ndim == 2 and out.shape[1] == 1) else y
        return F.mse_loss(out, yy.to(out.dtype), reduction="none").flatten(1).mean(dim=1)
    raise TypeError(
        f"{func} needs 'criterion' (a callable (output, y) -> per-sample losses (n,)) when 'loss' is "
        f"{'None' if loss is None else 'a callable'}."
    )


class _Sketcher:
    """What both modes share: the layer, the loss, the features and the forward that captures them."""

    def __init__(self, model, layer, loss, features, eval_mode, select_kwargs, func):
        self.model = _check_model(model, func)
        self._inner = _unwrap(model)
        self.layer_module, self.layer_name = _find_layer(self._inner, layer, func)
        self.loss = _check_loss(loss, func)
        self.features = _check_features(features, func)
        if self.features == "gradients" and self.loss is None:
            raise ValueError(
                f"{func} with features='gradients' selects on the per-sample gradients, which need a loss; got "
                "loss=None. Pass loss='cross_entropy', 'mse' or a callable, or other features."
            )
        self.eval_mode = check_bool(eval_mode, "eval_mode", func)
        self.select_kwargs = _check_select_kwargs(select_kwargs, func)
        self._func = func

    def sketch(self, x, y, *, logits=False, inference=False):
        """(features (n, d) or None, grads or None) of one batch; y's length is checked against the batch.

        Features are None for ``features="gradients"`` (select then works on the gradients). With
        ``logits=True`` the logits (n, C) come third. ``inference``: the forward under
        ``torch.inference_mode`` (see :func:`_capture`).
        """
        func = self._func
        n_x = _n_of(x)
        if self.loss is not None:
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"{func} expects 'y' to be a tensor of targets; got {_describe(y)}.")
            if n_x is not None and _n_of(y) != n_x:
                raise ValueError(
                    f"{func} expects 'y' with one target per sample of 'x' ({n_x}); got {_describe(y)} for 'x' of "
                    f"{_describe(x)}."
                )
        h, z = _capture(self._inner, self.layer_module, self.layer_name, x, self.eval_mode, func, inference=inference)
        n = h.shape[0]
        h = _float(h).contiguous()
        if self.features == "inputs":
            if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
                raise ValueError(
                    f"{func} with features='inputs' expects 'x' to be a floating tensor (n, ...); got {_describe(x)}."
                )
            F = _float(x).flatten(1).contiguous()
        elif self.features == "gradients":
            F = None
        else:
            F = h
        if self.loss is None:
            return (F, None, z) if logits else (F, None)
        if _n_of(y) != n:
            raise ValueError(f"{func} expects 'y' with one target per sample ({n}); got {_describe(y)}.")
        e = loss_residuals(z, y, self.loss)
        g = (e.to(h.dtype).contiguous(), h)
        return (F, g, z) if logits else (F, g)


# --------------------------------------------------------------------------- per-batch mode


class GraftBatchSelector(_Sketcher):
    """Per-batch GRAFT (the paper's mode): ``idx, w = selector(x, y)`` inside an ordinary loop.

    Parameters
    ----------
    model : torch.nn.Module
        Any module; it is called as ``model(x)``.
    fraction : float in (0, 1], default=0.25
        Share of each batch selected: one batch per call, so ``round(fraction *
        n)`` rows (select's budget; the gradient criterion then shapes the
        weights; see :func:`graft_array.select`).
    layer : None, str or nn.Module
        The layer whose input is the embedding and whose output is the logits;
        default: the model's last ``nn.Linear``.
    loss : "cross_entropy", "mse", None or callable, default="cross_entropy"
        How the gradient sketch is built from logits and targets (module docstring).
    features : "embeddings", "inputs" or "gradients", default="embeddings"
        What the low-rank/MaxVol step sees (module docstring).
    eval_mode : bool, default=True
        Run the selection forward in eval mode; the train/eval flags are restored.
    random_state : None, non-negative int or numpy.random.Generator
        Seeds the randomized low-rank solver (the selector's own generator).
    **select_kwargs
        Passed to :func:`graft_array.select` (strategy, gradmatch_lambda, rank,
        method, tol, band, weight_reg, min_size, max_size, solver, backend);
        e.g. ``strategy="craig"`` runs a baseline through the same machinery.

    Attributes
    ----------
    last_selection : graft_array.Selection or None
        The full result of the last call (batch-local indices).
    """

    def __init__(self, model, *, fraction=0.25, layer=None, loss="cross_entropy", features="embeddings",
                 eval_mode=True, random_state=None, **select_kwargs):
        func = type(self).__name__
        super().__init__(model, layer, loss, features, eval_mode, select_kwargs, func)
        self.fraction = check_real(fraction, "fraction", func, low=0.0, high=1.0, low_inclusive=False)
        self._rng = _numpy_rng(random_state, func)
        self.last_selection = None
        self._last_n = None
        # the family: sources come with each batch (colm); the rest is computed from the batch
        self._strategy = _family_strategy(select_kwargs, self, None, False, None, func, sources_per_call=True)
        self._colm_state = None

    def __call__(self, x, y=None, *, sources=None):
        """Select within the batch: ``(idx, w)``.

        ``sources`` (``strategy="colm"`` only, and then required): the source id of
        each sample of the batch; the selector keeps one :class:`graft_array.ColmState`
        across calls. ``strategy="adacore"`` preconditions by the batch's p(1 - p)
        (softmax cross-entropy), ``"mkdt"`` / ``"pdd"`` keep the samples of highest
        loss, ``"sas"`` ranks the embeddings.

        Returns
        -------
        idx : LongTensor (m,) on the device of the features (of the embeddings for features="gradients")
            Rows of ``x`` to train on (batch-local, in selection order).
        w : float32 tensor (m,), same device
            Non-negative weights summing to ``len(x)`` (:func:`graft_array.select`'s
            weights; some may be zero): the loss
            ``(w * loss_per_sample).sum() / len(x)`` estimates the batch's mean loss.
        """
        st = self._strategy
        if (sources is not None) != (st == "colm"):
            raise ValueError(f"The 'sources' parameter of {self._func} is needed by, and only by, strategy='colm'. "
                             f"Got sources={'None' if sources is None else _describe(sources)} with strategy={st!r}.")
        F, g, z = self.sketch(x, y, logits=True)
        rows = F if F is not None else g[1]
        self._last_n = int(rows.shape[0])
        kw = dict(self.select_kwargs)
        grads = None if g is None else LastLayerGrads(*g)
        if st == "adacore":
            kw["hessian_diag"] = "softmax"
        elif st == "colm":
            if self._colm_state is None:
                from graft_array import ColmState

                self._colm_state = ColmState()
            kw["sources"] = np.asarray(sources.detach().cpu() if isinstance(sources, torch.Tensor) else sources)
            kw["strategy_params"] = dict(kw.get("strategy_params") or {}, state=self._colm_state)
        elif st in ("mkdt", "pdd"):
            kw["scores"] = _per_sample_loss(_float(z), y, self.loss, self._func).detach().to(torch.float64)
            grads = None
        elif st == "sas":
            grads = None
        s = select(F, grads, fraction=self.fraction, return_info=True, random_state=self._rng, **kw)
        self.last_selection = s
        dev = rows.device
        return s.indices.to(device=dev, dtype=torch.int64), s.weights.to(device=dev, dtype=torch.float32)

    def step(self, optimizer, x, y, *, criterion=None):
        """One weighted update: select, forward on ``x[idx]``, ``sum_j w_j loss_j / len(x)``, backward, step.

        ``criterion(output, y) -> per-sample losses (n,)`` defaults to the loss
        named by ``loss`` (cross-entropy or per-sample MSE); it is required for a
        callable or ``None`` loss. Returns the loss as a detached 0-d tensor (no
        host sync).
        """
        func = f"{type(self).__name__}.step"
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{func} expects 'optimizer' to be a torch.optim.Optimizer; got {_describe(optimizer)}.")
        idx, w = self(x, y)
        n = self._last_n
        out = self.model(_take(x, idx))
        ys = _take(y, idx)
        per = criterion(out, ys) if criterion is not None else _per_sample_loss(out, ys, self.loss, func)
        if not isinstance(per, torch.Tensor) or tuple(per.shape) != (idx.shape[0],):
            raise ValueError(
                f"{func} expects per-sample losses of shape ({idx.shape[0]},) from the criterion; got {_describe(per)}."
            )
        if per.dtype in (torch.float16, torch.bfloat16):
            per = per.float()  # the weighted sum in float32 (w up to len(x))
        loss = (w.to(device=per.device, dtype=per.dtype) * per).sum() / n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()


# --------------------------------------------------------------------------- epoch mode


class IndexedDataset(Dataset):
    """Wraps a dataset so that each item also carries its dataset index: ``(*item, index)``.

    A non-tuple item ``v`` becomes ``(v, index)``. With it a training loop gets the
    indices it needs for ``sampler.loss_weights(index)``; the selection pass
    ignores the extra element (its default ``unpack`` takes items 0 and 1).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if isinstance(item, tuple):
            return (*item, i)
        return (item, i)


def _default_unpack(batch):
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, (list, tuple)) and len(batch) == 1:
        return batch[0], None
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(
        f"GraftEpochSampler cannot split a batch of type {type(batch).__name__} into (x, y); pass "
        "unpack=lambda batch: (x, y)."
    )


def _int_labels(values, n):
    """``values`` as an int64 CPU tensor (n,) of non-negative integers, or None when they are not that."""
    try:
        t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError, RuntimeError):
        return None
    if t.ndim != 1 or t.shape[0] != n or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return None
    t = t.detach().to("cpu", torch.int64)
    if n and int(t.min()) < 0:
        return None
    return t


def _dataset_labels(dataset, n):
    """The dataset's class labels when it publishes them as ``targets`` (torchvision's convention), else None."""
    for ds in (dataset, dataset.dataset if isinstance(dataset, IndexedDataset) else None):
        t = getattr(ds, "targets", None) if ds is not None else None
        if t is not None:
            return _int_labels(t, n)
    return None


def _class_labels(y, func):
    """The batch's targets as int64 CPU class labels (class_balance), or a ValueError naming the option."""
    if (not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.is_complex()
            or y.dtype == torch.bool):
        raise ValueError(
            f"The 'class_balance' parameter of {func} needs integer class labels (n,) as the batches' targets "
            f"'y' (items 1 of the dataset, or what 'unpack' returns); got {_describe(y) if y is not None else None}."
        )
    return y.detach().to("cpu", torch.int64)


def _quantile_bins(losses, strata):
    """Difficulty bin of each loss: its rank r among the m losses (ties by position) gives bin floor(r S / m).

    Equal-count bins, bin 0 the easiest; the bins are the loss quantiles of these m samples.
    """
    m = losses.numel()
    order = torch.argsort(losses, stable=True)  # NaN sorts last: the hardest bin
    bins = torch.empty(m, dtype=torch.int64)
    bins[order] = torch.div(torch.arange(m, dtype=torch.int64) * strata, m, rounding_mode="floor")
    return bins


def _stratified_pool(ids, labels, m, gen):
    """``m`` of the dataset indices ``ids`` drawn without replacement by ``gen``, sorted.

    With ``labels`` (int64 by dataset index) every class c gets floor(m n_c / n) draws and the remaining
    draws go to the largest remainders (ties: the lower class), so the pool keeps the classes' shares.
    """
    n = len(ids)
    if labels is None:
        return ids[torch.randperm(n, generator=gen)[:m]].sort().values
    lab = labels[ids]
    classes, counts = torch.unique(lab, return_counts=True)
    quota = torch.div(counts * m, n, rounding_mode="floor")
    rem = counts * m - quota * n
    extra = m - int(quota.sum())
    if extra:
        quota[torch.argsort(-rem, stable=True)[:extra]] += 1
    parts = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = ids[lab == c]
        parts.append(members[torch.randperm(len(members), generator=gen)[:q]])
    return torch.cat(parts).sort().values


@contextlib.contextmanager
def _channels_last(model, on):
    """The model's 4-D convolution weights in channels-last layout for the duration, restored after.

    Only the weights' storage layout changes (``param.data``), never their values or the Parameter objects;
    torch then runs the convolutions on its channels-last (NHWC) path.
    """
    swapped = []
    if on:
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if (isinstance(mod, nn.modules.conv._ConvNd) and isinstance(w, torch.Tensor) and w.ndim == 4
                    and not w.is_contiguous(memory_format=torch.channels_last)):
                swapped.append((w, w.data))
                w.data = w.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for w, d in swapped:
            w.data = d


def _loader_callables(unpack, collate_fn, func):
    """``(unpack, collate_fn)`` of a sampler's pass: each None or a callable; ``unpack`` defaults to items 0, 1."""
    for nm, fn in (("unpack", unpack), ("collate_fn", collate_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"The '{nm}' parameter of {func} must be None or a callable. Got {fn!r} instead.")
    return (unpack if unpack is not None else _default_unpack), collate_fn


class GraftEpochSampler(Sampler):
    """Epoch-mode GRAFT: a ``Sampler`` that yields only a GRAFT subset of the dataset.

    Every ``refresh_every`` epochs (after ``warm_start_epochs`` epochs of full
    data) one selection pass walks the candidates (the whole dataset in order by
    default; see ``pool_fraction`` and ``exclude_learned``) with a ``DataLoader``
    without shuffling, runs a no-grad forward per batch, captures embeddings and
    logits with a hook, and calls
    :func:`graft_array.select` on ``batches_per_call`` selection batches at once
    (the ragged last batch included) with offsets; the indices are dataset
    indices. Each epoch then yields the selected indices in a fresh order drawn
    by the sampler's own ``torch.Generator`` seeded with ``seed + epoch``.

    Call ``set_epoch(epoch)`` at the start of every epoch, as with
    ``DistributedSampler``: it picks the order and decides when the selection is
    refreshed. The pass runs lazily, on ``len(sampler)`` or ``iter(sampler)``
    for an epoch whose selection is not made yet (or on :meth:`refresh`).

    Parameters
    ----------
    dataset : map-style Dataset (``len`` and ``__getitem__``)
    model : torch.nn.Module
    fraction : float in (0, 1], default=0.25
        The budget: each pass selects ``round(fraction * N)`` samples with
        GRAFT's default ``budget="call"`` (each select call its cumulative
        share; the baseline strategies ``round(fraction * n)`` of each selection
        batch of the candidates); when the pass has M < N candidates, a pool or learned samples left out,
        select's fraction is ``fraction * N / M``, capped at 1, and its rank stays
        ``round(fraction * batch_size)`` unless ``rank`` is passed).
    batch_size : int, default=128
        Rows per GRAFT batch in the selection pass.
    refresh_every : int, default=1
        Epochs between selection passes (with ``refresh_tau``: between checks of
        whether a pass is needed).
    refresh_tau : float >= 0 or None, default=None
        Re-select only when it is needed, by CREST's trigger: each pass also fits
        a quadratic model of the loss on a probe of ``probe_size`` random
        class-stratified samples (the loss L0, its gradient g and AdaHessian's
        running Hessian diagonal h, from a Hutchinson estimate, at the pass's
        parameters theta_0). At each later scheduled refresh the probe's loss
        L_true is computed (a no-grad forward of the probe only) and compared with
        ``L0 + delta.g + 0.5 delta.(h * delta)``, ``delta = theta - theta_0``; the
        pass runs only when ``|L_true - L_approx| > refresh_tau * L_true``, else
        the current subset serves on (reshuffled). None: a pass at every scheduled
        refresh. Needs ``loss="cross_entropy"`` or ``"mse"``.
        ``benchmarks/bench_ablation.py`` measures it (the README's ablation):
        checked every epoch with ``refresh_tau=0.1``, it fired in 4 of 9 checks
        at fraction 0.1 and 6 of 9 at 0.3 (an epoch of Adam often leaves the
        region where the quadratic model holds), so it costs more passes than a
        fixed pass every 2 epochs.
    probe_size : int >= 1, default=2048
        Samples in ``refresh_tau``'s probe (all of them when the dataset is smaller).
    hessian_probes : int >= 1, default=1
        Rademacher vectors per Hutchinson estimate (``refresh_tau``).
    warm_start_epochs : int, default=0
        Initial epochs on the full dataset (weights all one); the first pass runs
        at epoch ``warm_start_epochs``.
    layer, loss, eval_mode
        As in :class:`GraftBatchSelector`.
    features : "gradients", "embeddings" or "inputs", default="gradients"
        As in :class:`GraftBatchSelector`, whose default is the paper's
        "embeddings". Here MaxVol runs on the last-layer gradients by default:
        in ``benchmarks/bench_ablation.py`` (Fashion-MNIST MLP) the gradients
        with the default candidate pool are the best GRAFT mode at every
        fraction measured, and the embeddings lose to Random at every fraction
        (see the README's ablation table). The gradients are the space the size
        criterion and the weights work in, so the rows MaxVol picks are the
        ones that span the batch gradient; the random pool keeps the subset from
        collapsing on the same hard samples pass after pass.
    unpack : callable, optional
        ``batch -> (x, y)`` for the collated batches of the pass; default: items
        0 and 1 of a tuple/list batch (``y = None`` for a single element).
    collate_fn : callable, optional
        Passed to the pass's ``DataLoader``.
    num_workers : int, default=0
        Workers of the pass's ``DataLoader``.
    device : torch.device or str, optional
        Where batches go for the forward; default: the model's parameters' device.
    batches_per_call : int, default=64
        Selection batches per :func:`graft_array.select` call (bounds memory: only
        these batches' embeddings are held at once).
    forward_batch_size : int or None, default=None
        Rows per no-grad forward of the pass (its ``DataLoader``'s batch size), cut
        into selection batches of ``batch_size`` across forward boundaries (in eval
        mode a row's outputs do not depend on its batch, up to BLAS rounding).
        None: ``8 * batch_size``, or ``2 * batch_size`` for a model with
        convolutions, whose large activations per row leave the caches in big
        batches (``benchmarks/bench_pass.py``: on the benchmark's CNN a forward in
        batches of 1024 takes twice as long as in batches of 256; on its MLP 1024
        is the fastest). Only with ``eval_mode=True``; in train mode each forward is
        one selection batch.
    channels_last : bool, default=False
        Run the pass's forward with the model's 4-D convolution weights in
        channels-last memory layout (restored right after; the values and the
        Parameter objects are untouched). Faster for conv nets on CPUs whose
        oneDNN kernels prefer NHWC; no effect on models without 2-D convolutions.
    shuffle : bool, default=True
        Reshuffle the subset every epoch (else dataset order).
    shuffle_pass : bool, default=False
        Cut each selection pass's batches from a fresh permutation of the
        candidates (seeded by ``seed`` and the selection epoch, the same on every
        rank) instead of their dataset order, so that every pass groups the
        samples differently; indices are still dataset indices.
    pool_fraction : "auto", float in [fraction, 1] or None, default="auto"
        Each pass forwards and selects from a random candidate pool of
        ``ceil(pool_fraction * N)`` samples only (None: every sample; "auto":
        ``2 * fraction`` for GRAFT, so that a pass keeps about half of its
        candidates, and every sample from ``fraction >= 0.5`` on and for the
        baseline strategies, which their references run on all the data), drawn by a
        ``torch.Generator`` seeded by ``seed`` and the selection epoch (the same on
        every rank), class-stratified when the class labels are known (``labels``
        or the dataset's ``targets``), and sorted by dataset index. The pass then
        forwards ``pool_fraction`` of the samples; select's fraction becomes
        ``fraction * N / M`` (M the pool's size; about ``fraction / pool_fraction``)
        and, unless ``rank`` is passed, its rank stays ``round(fraction * batch_size)``,
        that of a pass over every sample (MaxVol extends the pivots to the larger
        in-pool budget by its rectangular rule): a rank growing with the in-pool
        fraction would make ``select`` cost more per sample than the pool saves
        (``benchmarks/bench_pass.py``).
    labels : sequence of int (N,) or None
        Class label of every dataset item, for the class-stratified pool. Default:
        the dataset's ``targets`` attribute (torchvision's datasets; also looked for
        inside an :class:`IndexedDataset`) when it holds one non-negative int per
        item, else no stratification.
    class_balance : bool, default=False
        Pass each selection batch's class labels (its targets ``y``, which must be
        integer class indices) to :func:`graft_array.select` as ``labels``: each
        call's budget is split between the classes in proportion to their counts
        and the selection runs within each class.
    exclude_learned : bool, default=False
        CREST's rule: keep a per-sample loss history (from the passes, which have
        the logits and the targets, and from :meth:`record_losses`); a sample whose
        last ``learned_window`` records are all below ``learned_threshold`` is left
        out of the next pass's candidates. If every sample is learned the pass
        falls back to all of them. Pass records need ``loss="cross_entropy"`` or
        ``"mse"``; with another loss only :meth:`record_losses` feeds the history.
    learned_window : int >= 1, default=5
    learned_threshold : float >= 0, default=0.1
    strata : int >= 1 or None, default=None
        Difficulty-stratified budgets: each select call bins its candidates by the
        quantiles of their per-sample loss (at the pass's model) into ``strata``
        equal-count bins and passes the bin (``class * strata + bin`` with
        ``class_balance``) to :func:`graft_array.select` as ``labels``, so that every
        difficulty level gets its share of the budget. Needs ``loss="cross_entropy"``
        or ``"mse"``.
    progress : bool, default=True
        A tqdm bar (stderr) over the selection pass.
    seed : int, default=0
        Seeds the order (``seed + epoch``), the pool and the randomized solver.
    **select_kwargs
        Passed to :func:`graft_array.select` (strategy, gradmatch_lambda, rank,
        method, tol, band, budget, weight_reg, min_size, max_size, solver,
        backend); e.g. ``strategy="craig"`` runs a baseline through the same
        machinery. ``labels`` is set by ``class_balance`` / ``strata``.

        The family (see :func:`graft_array.select`): ``strategy="adacore"``
        takes as ``hessian_diag`` the exponential average over passes of each
        sample's softmax cross-entropy Hessian diagonal p(1 - p) (``hessian_beta``,
        bias-corrected by the sample's number of passes; ``loss="cross_entropy"``);
        ``"colm"`` selects per source (``sources``) with one
        :class:`graft_array.ColmState` kept across passes; ``"mkdt"`` /
        ``"pdd"`` keep the samples of highest loss (the per-sample training loss
        is the score); ``"sas"`` ranks the embeddings (``features="embeddings"``).
        ``"clipcov"`` needs image-caption pairs: call select on them.
    sources : sequence of int (N,) or None
        ``strategy="colm"`` only: the source id of each dataset item.
    hessian_beta : float in [0, 1], default=0.9
        ``strategy="adacore"``: the decay of the per-sample Hessian average.

    Attributes
    ----------
    indices : LongTensor
        The current subset (dataset indices, in selection order); all indices
        during warm-start epochs.
    weights : float32 tensor (len(dataset),)
        GRAFT weights by dataset index, zero for unselected samples; within each
        selection batch they sum to its size, times ``C / M`` when the pass had M
        candidates drawn from C eligible samples (a pool), so that the weights
        always sum to about the number of eligible samples. All ones during
        warm-start epochs.
    candidates : LongTensor or None
        The last pass's candidates (dataset indices, in pass order); None before
        the first pass.
    learned : bool tensor (len(dataset),)
        The samples ``exclude_learned`` would leave out of the next pass now.
    stats : dict
        ``passes`` (selection passes run), ``checks`` and ``skipped`` (the
        ``refresh_tau`` checks, and those that kept the subset), ``check_seconds``
        (the checks and the quadratic fits, wall clock), and ``last_check``
        (``L_true``, ``L_approx``, ``fired`` of the latest check, or None).
    """

    def __init__(self, dataset, model, *, fraction=0.25, batch_size=128, refresh_every=1, refresh_tau=None,
                 probe_size=2048, hessian_probes=1, warm_start_epochs=0,
                 layer=None, loss="cross_entropy", features="gradients", eval_mode=True, unpack=None,
                 collate_fn=None, num_workers=0, device=None, batches_per_call=64, forward_batch_size=None,
                 channels_last=False, shuffle=True, shuffle_pass=False, pool_fraction="auto", labels=None,
                 class_balance=False, exclude_learned=False, learned_window=5, learned_threshold=0.1, strata=None,
                 sources=None, hessian_beta=0.9, progress=True, seed=0, **select_kwargs):
        func = type(self).__name__
        try:
            self._n = len(dataset)
        except TypeError:
            raise TypeError(f"{func} expects a map-style 'dataset' with a length; got {_describe(dataset)}.") from None
        if self._n == 0:
            raise ValueError(f"{func} expects a non-empty 'dataset'; got 0 samples.")
        self.dataset = dataset
        self._sketch = _Sketcher(model, layer, loss, features, eval_mode, select_kwargs, func)
        self.model = model
        self.fraction = check_real(fraction, "fraction", func, low=0.0, high=1.0, low_inclusive=False)
        self.batch_size = check_int(batch_size, "batch_size", func, low=1)
        self.refresh_every = check_int(refresh_every, "refresh_every", func, low=1)
        self.refresh_tau = None if refresh_tau is None else check_real(refresh_tau, "refresh_tau", func, low=0.0)
        self.probe_size = check_int(probe_size, "probe_size", func, low=1)
        self.hessian_probes = check_int(hessian_probes, "hessian_probes", func, low=1)
        if self.refresh_tau is not None and self._sketch.loss not in LOSSES:
            raise ValueError(
                f"The 'refresh_tau' parameter of {func} checks a quadratic model of the loss, which needs "
                f"loss='cross_entropy' or 'mse'; got loss={self._sketch.loss!r}."
            )
        self.warm_start_epochs = check_int(warm_start_epochs, "warm_start_epochs", func, low=0)
        self.num_workers = check_int(num_workers, "num_workers", func, low=0)
        self.batches_per_call = check_int(batches_per_call, "batches_per_call", func, low=1)
        self.forward_batch_size = check_int(forward_batch_size, "forward_batch_size", func, low=1, allow_none=True)
        if self.forward_batch_size is not None and not self._sketch.eval_mode:
            raise ValueError(
                f"The 'forward_batch_size' parameter of {func} applies in eval mode only (with eval_mode=False "
                f"each forward is one selection batch of batch_size rows). Got {forward_batch_size!r} instead of None."
            )
        self.channels_last = check_bool(channels_last, "channels_last", func)
        self.shuffle = check_bool(shuffle, "shuffle", func)
        self.shuffle_pass = check_bool(shuffle_pass, "shuffle_pass", func)
        if isinstance(pool_fraction, str) and pool_fraction == "auto":  # half of a pool twice the budget is kept
            graft = select_kwargs.get("strategy", "graft") == "graft"  # the baselines: every sample, as theirs do
            pool_fraction = None if not graft or 2.0 * self.fraction >= 1.0 else 2.0 * self.fraction
        if pool_fraction is not None:
            pool_fraction = check_real(pool_fraction, "pool_fraction", func, low=0.0, high=1.0, low_inclusive=False)
            if pool_fraction < self.fraction:
                raise ValueError(
                    f"The 'pool_fraction' parameter of {func} must be None or a float in [fraction, 1] = "
                    f"[{self.fraction:g}, 1]: the pool must hold the fraction * N samples to select. "
                    f"Got {pool_fraction!r} instead."
                )
        self.pool_fraction = pool_fraction
        if labels is not None:
            lab = _int_labels(labels, self._n)
            if lab is None:
                raise ValueError(
                    f"The 'labels' parameter of {func} must be None or one non-negative int class label per dataset "
                    f"item ({self._n},). Got {_describe(labels)} instead."
                )
            self._labels = lab
        else:
            self._labels = _dataset_labels(dataset, self._n)
        self.class_balance = check_bool(class_balance, "class_balance", func)
        self.exclude_learned = check_bool(exclude_learned, "exclude_learned", func)
        self.learned_window = check_int(learned_window, "learned_window", func, low=1)
        self.learned_threshold = check_real(learned_threshold, "learned_threshold", func, low=0.0)
        self.strata = check_int(strata, "strata", func, low=1, allow_none=True)
        if self.strata is not None and self._sketch.loss not in LOSSES:
            raise ValueError(
                f"The 'strata' parameter of {func} bins the candidates by their per-sample loss, which needs "
                f"loss='cross_entropy' or 'mse'; got loss={self._sketch.loss!r}."
            )
        self._strategy = _family_strategy(select_kwargs, self._sketch, sources, self.class_balance, self.strata, func)
        self._sources = None
        if sources is not None:
            self._sources = _int_labels(sources, self._n)
            if self._sources is None:
                raise ValueError(
                    f"The 'sources' parameter of {func} must be None or one non-negative int source id per dataset "
                    f"item ({self._n},). Got {_describe(sources)} instead."
                )
        self.hessian_beta = check_real(hessian_beta, "hessian_beta", func, low=0.0, high=1.0)
        self._hess = None  # adacore: per-sample EMA of the logit Hessian diagonal (n, C), and its updates per sample
        self._hess_count = None
        self._colm_state = None  # colm: the selector's moments across passes
        self.progress = check_bool(progress, "progress", func)
        self.seed = check_int(seed, "seed", func, low=0)
        self.unpack, self.collate_fn = _loader_callables(unpack, collate_fn, func)
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self._cands = None
        self._selected_for = None  # the epoch whose selection is held
        self._indices = None
        self._weights = None
        self._weights_by_device = {}
        # the pass's forward under torch.inference_mode instead of torch.no_grad: no gain measured on the benchmark's
        # MLP and CNN (bench_pass.py), and a model that caches tensors during its forward would keep inference
        # tensors it cannot train through; off, kept for the benchmark's comparison
        self._inference = False
        if self.exclude_learned:  # ring buffer of the last learned_window losses per sample
            self._hist = torch.full((self._n, self.learned_window), math.inf, dtype=torch.float32)
            self._hist_count = torch.zeros(self._n, dtype=torch.int64)
        self._quad = None  # refresh_tau's quadratic model of the probe's loss, fitted at the last pass
        self._ada = None
        self.stats = dict(passes=0, checks=0, skipped=0, check_seconds=0.0, last_check=None)
        self._func = func

    # ---- epochs

    def set_epoch(self, epoch):
        """Set the epoch: picks this epoch's order and whether the selection is refreshed."""
        self.epoch = check_int(epoch, "epoch", f"{self._func}.set_epoch", low=0)

    def _selection_epoch(self, epoch):
        """The epoch whose selection serves ``epoch`` (None during warm start)."""
        if epoch < self.warm_start_epochs:
            return None
        return self.warm_start_epochs + ((epoch - self.warm_start_epochs) // self.refresh_every) * self.refresh_every

    def _ensure(self):
        want = self._selection_epoch(self.epoch)
        if want is None:
            if self._selected_for is not None or self._indices is None:
                self._indices = torch.arange(self._n, dtype=torch.int64)
                self._weights = torch.ones(self._n, dtype=torch.float32)
                self._weights_by_device = {}
                self._selected_for = None
            return
        if self._selected_for != want:
            if self._quad is not None and self._selected_for is not None and not self._check_quadratic():
                self._selected_for = want  # CREST's trigger did not fire: the subset still serves
                return
            self._run_pass(want)
            self._selected_for = want

    def refresh(self):
        """Run the selection pass again now, for the current epoch, whatever the schedule says."""
        want = self._selection_epoch(self.epoch)
        if want is None:
            raise ValueError(
                f"{self._func}.refresh has nothing to select during warm-start epoch {self.epoch} "
                f"(warm_start_epochs={self.warm_start_epochs}); call set_epoch with a later epoch first."
            )
        self._run_pass(want)
        self._selected_for = want

    # ---- the loss history (exclude_learned)

    def record_losses(self, index, losses):
        """Record per-sample losses (e.g. the training batch's, unweighted) for ``exclude_learned``.

        ``index``: the batch's dataset indices (n,); ``losses``: its per-sample
        losses (n,). Copied to the CPU (one device sync). A no-op when
        ``exclude_learned`` is off, so a training loop may call it always.
        """
        if not self.exclude_learned:
            return
        func = f"{self._func}.record_losses"
        index = torch.as_tensor(index).detach() if not isinstance(index, torch.Tensor) else index.detach()
        losses = torch.as_tensor(losses).detach() if not isinstance(losses, torch.Tensor) else losses.detach()
        if index.ndim != 1 or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(f"{func} expects 'index' to be dataset indices (n,) of an int dtype; got {_describe(index)}.")
        if losses.ndim != 1 or losses.shape[0] != index.shape[0] or not losses.is_floating_point():
            raise ValueError(
                f"{func} expects 'losses' to be floating per-sample losses of the index's shape ({index.shape[0]},); "
                f"got {_describe(losses)}."
            )
        index = index.to("cpu", torch.int64)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self._n):
            raise ValueError(
                f"{func} expects dataset indices in [0, {self._n}); got values from {int(index.min())} to "
                f"{int(index.max())}."
            )
        self._note_records(index, losses.to("cpu", torch.float32))

    def _note_records(self, index, losses):
        self._apply_records(index, losses)

    def _sync_records(self):
        """Bring the loss history up to date before a pass (DDP: gather every rank's records)."""

    def _apply_records(self, index, losses):
        """Append ``losses`` to the ring buffers of ``index`` in order (a repeated index records in turn)."""
        if index.numel() == 0:
            return
        order = torch.argsort(index, stable=True)
        srt = index[order]
        pos = torch.arange(len(srt))
        first = torch.ones(len(srt), dtype=torch.bool)
        first[1:] = srt[1:] != srt[:-1]
        occurrence = torch.empty(len(srt), dtype=torch.int64)
        occurrence[order] = pos - torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
        w = self.learned_window
        for r in range(int(occurrence.max()) + 1):
            at = occurrence == r
            i = index[at]
            self._hist[i, self._hist_count[i] % w] = losses[at]
            self._hist_count[i] += 1

    @property
    def learned(self):
        """Samples whose last ``learned_window`` recorded losses are all below ``learned_threshold``."""
        if not self.exclude_learned:
            return torch.zeros(self._n, dtype=torch.bool)
        return (self._hist_count >= self.learned_window) & (self._hist < self.learned_threshold).all(dim=1)

    # ---- the selection pass

    def _shard(self, m=None):
        """(lo, hi): the contiguous block of the pass's m candidate positions this process selects on."""
        return 0, self._n if m is None else m

    def _gather(self, *tensors):
        return tensors

    def _show_progress(self):
        return self.progress

    def _candidates(self, sel_epoch):
        """(candidates, eligible): the pass's dataset indices in pass order (None: the dataset in order) and
        the number of samples they were drawn from. The same on every rank."""
        n = self._n
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + sel_epoch)
        ids = None
        if self.exclude_learned:
            learned = self.learned
            if bool(learned.any()) and not bool(learned.all()):
                ids = torch.nonzero(~learned).flatten()
        eligible = n if ids is None else len(ids)
        if self.pool_fraction is not None:
            m = min(eligible, math.ceil(self.pool_fraction * n))
            if m < eligible:
                ids = _stratified_pool(ids if ids is not None else torch.arange(n), self._labels, m, g)
        if self.shuffle_pass:
            perm = torch.randperm(n if ids is None else len(ids), generator=g)
            ids = perm if ids is None else ids[perm]
        return ids, eligible

    def _run_pass(self, sel_epoch):
        self._sync_records()
        cands, eligible = self._candidates(sel_epoch)
        m = self._n if cands is None else len(cands)
        frac = min(1.0, self.fraction * self._n / m)
        lo, hi = self._shard(m)
        idx, w, losses = self._select_block(cands, lo, hi, sel_epoch, frac)
        idx, w = self._gather(idx, w)
        if self.exclude_learned and losses is not None:
            (losses,) = self._gather(losses)  # every rank's block, in candidate order
            self._apply_records(torch.arange(m) if cands is None else cands, losses)
        self._cands = torch.arange(m) if cands is None else cands
        self._indices = idx
        weights = torch.zeros(self._n, dtype=torch.float32)
        weights[idx] = (w * (eligible / m) if eligible != m else w).to(torch.float32)
        self._weights = weights
        self._weights_by_device = {}
        self.stats["passes"] += 1
        if self.refresh_tau is not None:
            self._fit_quadratic(sel_epoch)

    # ---- refresh_tau: CREST's trigger

    def _probe_loss(self, batches, grad):
        """Mean loss over the probe's batches (a tensor with a graph when ``grad``), model flags restored."""
        sk = self._sketch
        device = self.device if self.device is not None else _model_device(sk._inner)
        total = sum(_batch_len(x, y) for x, y in batches)
        parts = []
        for x, y in batches:
            x, y = _to(x, device), _to(y, device)
            _, z = _capture(sk._inner, sk.layer_module, sk.layer_name, x, sk.eval_mode, self._func, grad=grad)
            z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z  # keeps the graph
            parts.append(_per_sample_loss(z, y, sk.loss, self._func).sum() / total)
        return parts

    def _fit_quadratic(self, sel_epoch):
        """The probe's loss L0, gradient g and AdaHessian diagonal h at the current parameters."""
        from .crest import AdaHessian, _flat, _gradient_and_curvature, _param_dtype, _rademacher

        t0 = time.perf_counter()
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + sel_epoch + _PROBE_SALT)
        ids = _stratified_pool(torch.arange(self._n), self._labels, min(self.probe_size, self._n), g)
        gen = torch.Generator()  # the DataLoader draws a base seed: keep it off the global RNG
        gen.manual_seed(self.seed)
        loader = DataLoader(Subset(self.dataset, ids.tolist()), batch_size=self._forward_rows(), shuffle=False,
                            collate_fn=self.collate_fn, num_workers=self.num_workers, generator=gen)
        batches = [self.unpack(b) for b in loader]
        params = [p for p in self._sketch._inner.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{self._func} with refresh_tau needs a model with trainable parameters; it has none.")
        probes = _rademacher(params, self.hessian_probes, g)
        L0, grad, d = 0.0, None, None
        for part in self._probe_loss(batches, grad=True):
            g_c, d_c = _gradient_and_curvature(part, params, probes)
            L0 += float(part.detach().double())
            grad = g_c if grad is None else grad + g_c
            d = d_c if d is None else d + d_c
        if self._ada is None:
            self._ada = AdaHessian(0.999)
        h, _ = self._ada.update(d / self.hessian_probes)
        theta0 = _flat(params, _param_dtype(params))
        self._quad = dict(batches=batches, params=params, theta0=theta0, L0=L0, g=grad.detach(), h=h.detach())
        self.stats["check_seconds"] += time.perf_counter() - t0

    def _check_quadratic(self):
        """CREST's check on the probe: True when the quadratic model fails (a pass is needed)."""
        from .crest import _flat, quadratic_trigger

        t0 = time.perf_counter()
        q = self._quad
        with torch.no_grad():
            L_true = sum(float(part.double()) for part in self._probe_loss(q["batches"], grad=False))
            delta = _flat(q["params"], q["theta0"].dtype) - q["theta0"]
        fired, approx = quadratic_trigger(q["L0"], q["g"], q["h"], delta, L_true, self.refresh_tau)
        st = self.stats
        st["checks"] += 1
        st["skipped"] += int(not fired)
        st["last_check"] = dict(L_true=L_true, L_approx=approx, fired=bool(fired))
        st["check_seconds"] += time.perf_counter() - t0
        return fired

    def _forward_rows(self):
        if not self._sketch.eval_mode:
            return self.batch_size
        if self.forward_batch_size is not None:
            return self.forward_batch_size
        conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in self._sketch._inner.modules())
        return (2 if conv else 8) * self.batch_size

    def _select_block(self, cands, lo, hi, sel_epoch, frac):
        """Selection over positions lo..hi-1 of the candidates (dataset indices; None: the dataset in order).

        Returns (indices int64 CPU, weights float64 CPU, per-position losses float32 CPU or None).
        """
        from tqdm.auto import tqdm

        func = self._func
        sk = self._sketch
        device = self.device if self.device is not None else _model_device(sk._inner)
        if cands is None:
            data = self.dataset if (lo, hi) == (0, self._n) else Subset(self.dataset, range(lo, hi))
        else:
            data = Subset(self.dataset, cands[lo:hi].tolist())
        gen = torch.Generator()  # the DataLoader draws a base seed: keep it off the global RNG
        gen.manual_seed(self.seed)
        loader = DataLoader(data, batch_size=self._forward_rows(), shuffle=False, collate_fn=self.collate_fn,
                            num_workers=self.num_workers, drop_last=False, generator=gen)
        rng = np.random.default_rng([self.seed, sel_epoch])
        seed = int(rng.integers(2**63))  # one seed for the whole pass (the same on every rank)
        scored = self._strategy in ("mkdt", "pdd")  # the per-sample loss is the score
        need_loss = sk.loss in LOSSES and (self.strata is not None or self.exclude_learned or scored)
        blind = sk.select_kwargs.get("strategy") == "random" and not need_loss  # no forward needed
        gradients = sk.features == "gradients" and not blind
        bs, S = self.batch_size, self.strata
        rank = max(1, round(self.fraction * bs))
        call = {}  # name -> list of per-batch tensors of the current select call
        offs, idx_out, w_out, loss_out = [], [], [], []
        pos = lo

        def flush():
            if not offs:
                return
            lens = [int(t.shape[0]) for t in next(iter(call.values()))]
            # equal batches go in as one stacked array (one check per call), a ragged set as lists
            pack = torch.stack if len(set(lens)) == 1 else list
            F = None if gradients else pack(call["F"])
            grads = LastLayerGrads(pack(call["e"]), pack(call["h"])) if "e" in call else None
            kw = dict(sk.select_kwargs)
            if frac > self.fraction and kw.get("strategy", "graft") == "graft" and "rank" not in kw:
                kw["rank"] = rank  # a pool's larger in-pool fraction keeps the rank of a pass over every sample
            if self._strategy in ("adacore", "colm"):  # per-sample state: the call's rows as dataset indices
                ids = torch.cat([torch.arange(o, o + n_b) for o, n_b in zip(offs, lens)])
                self._family_inputs(kw, call, ids if cands is None else cands[ids], lens, pack)
            elif self._strategy in ("mkdt", "pdd"):
                self._family_inputs(kw, call, None, lens, pack)
            if self._strategy in ("mkdt", "pdd", "sas"):  # they read the scores / the embeddings only
                grads = None
            labels = call.get("cls")
            if S is not None:
                bins = torch.split(_quantile_bins(torch.cat(call["loss"]), S), lens)
                labels = list(bins) if labels is None else [c * S + b for c, b in zip(labels, bins)]
            if labels is not None:
                labels = [t.numpy() for t in labels]
                kw["labels"] = np.stack(labels) if pack is torch.stack else labels
            s = select(F, grads, fraction=frac, offsets=np.asarray(offs, dtype=np.int64), return_info=True,
                       random_state=seed, **kw)
            idx_out.append(s.indices.detach().to("cpu", torch.int64))
            w_out.append(s.weights.detach().to("cpu", torch.float64))
            if "loss" in call:
                loss_out.extend(call["loss"])
            call.clear(), offs.clear()

        def push(rows, a, b):
            nonlocal pos
            for k, v in rows.items():
                call.setdefault(k, []).append(v[a:b])
            offs.append(pos)
            pos += b - a
            if len(offs) >= self.batches_per_call:
                flush()

        carry = None  # rows of the last forward that do not fill a selection batch yet
        with tqdm(total=hi - lo, desc="GRAFT selection", unit="sample", disable=not self._show_progress(),
                  leave=False) as bar, _channels_last(sk._inner, self.channels_last and not blind):
            for batch in loader:
                x, y = self.unpack(batch)
                rows = {}
                if self.class_balance:
                    rows["cls"] = _class_labels(y, func)
                if blind:
                    rows["F"] = torch.zeros((_batch_len(x, y), 1))
                else:
                    x, y = _to(x, device), _to(y, device)
                    F, g, z = sk.sketch(x, y, logits=True, inference=self._inference)
                    if F is not None:
                        rows["F"] = F
                    if g is not None:
                        rows["e"], rows["h"] = g
                    if need_loss:
                        rows["loss"] = _per_sample_loss(_float(z), y, sk.loss, func).detach().to("cpu", torch.float32)
                n = got = int(next(iter(rows.values())).shape[0])
                if carry is not None:
                    rows = {k: torch.cat([carry[k], v]) for k, v in rows.items()}
                    n += int(next(iter(carry.values())).shape[0])
                    carry = None
                a = 0
                while n - a >= bs:
                    push(rows, a, a + bs)
                    a += bs
                if a < n:
                    carry = {k: v[a:] for k, v in rows.items()}
                bar.update(got)
            if carry is not None:
                push(carry, 0, int(next(iter(carry.values())).shape[0]))
            flush()
        if pos != hi:
            raise ValueError(
                f"{func} saw {pos - lo} samples in its selection pass over candidate positions [{lo}, {hi}); the "
                "collated batches must hold one sample per dataset item (check 'collate_fn' / 'unpack')."
            )
        losses = torch.cat(loss_out) if loss_out else (torch.zeros(0) if need_loss else None)
        if not idx_out:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64), losses
        idx = torch.cat(idx_out)
        if cands is not None:  # candidate positions -> dataset indices
            idx = cands[idx]
        return idx, torch.cat(w_out), losses

    def _family_inputs(self, kw, call, ids, lens, pack):
        """The family's inputs of one select call into ``kw`` (``ids``: its rows' dataset indices, adacore / colm)."""
        st = self._strategy
        if st == "adacore":  # the EMA over passes of each sample's p(1 - p) = |e|(1 - |e|) (softmax cross-entropy)
            e = torch.cat(call["e"]).to("cpu", torch.float64)
            q = e.abs() * (1.0 - e.abs())
            if self._hess is None:
                self._hess = torch.zeros((self._n, e.shape[1]), dtype=torch.float64)
                self._hess_count = torch.zeros(self._n, dtype=torch.int64)
            b = self.hessian_beta
            self._hess[ids] = b * self._hess[ids] + (1.0 - b) * q
            self._hess_count[ids] += 1
            avg = self._hess[ids] / (1.0 - b ** self._hess_count[ids].to(torch.float64))[:, None]  # bias-corrected
            dev = call["e"][0].device
            kw["hessian_diag"] = pack([t.to(dev, call["e"][0].dtype) for t in torch.split(avg, lens)])
        elif st == "colm":
            if self._colm_state is None:
                from graft_array import ColmState

                self._colm_state = ColmState()
            kw["strategy_params"] = dict(kw.get("strategy_params") or {}, state=self._colm_state)
            kw["sources"] = _stack_or_list(torch.split(torch.as_tensor(self._sources)[ids], lens), pack)
        elif st in ("mkdt", "pdd"):
            kw["scores"] = pack([t.to(torch.float64) for t in call["loss"]])

    # ---- what the training loop sees

    @property
    def indices(self):
        """The current subset (dataset indices, LongTensor on the CPU)."""
        self._ensure()
        return self._indices

    @property
    def weights(self):
        """GRAFT weights by dataset index (float32, CPU), zero for unselected samples."""
        self._ensure()
        return self._weights

    @property
    def candidates(self):
        """The candidates of the pass behind the current subset (dataset indices, in pass order, CPU); the
        last pass's during warm start (None before any pass)."""
        self._ensure()
        return self._cands

    def loss_weights(self, index):
        """Weights for a training batch, normalised to mean one over the subset.

        ``(sampler.loss_weights(index) * loss_per_sample).mean()`` estimates the
        full dataset's mean loss (``index``: the batch's dataset indices, e.g. from
        :class:`IndexedDataset`). The result is on ``index``'s device.
        """
        self._ensure()
        if not isinstance(index, torch.Tensor):
            index = torch.as_tensor(index, dtype=torch.int64)
        dev = index.device
        if dev not in self._weights_by_device:
            # a uniform minibatch of the subset S: E[mean_B(w l)] = sum_S w l / |S|, and sum_S w l / N
            # estimates the dataset's mean loss, hence the factor |S| / N
            self._weights_by_device[dev] = (self._weights * (len(self._indices) / self._n)).to(dev)
        return self._weights_by_device[dev][index]

    def _order(self):
        """This epoch's order of the subset (dataset indices)."""
        idx = self._indices
        if not self.shuffle:
            return idx
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return idx[torch.randperm(len(idx), generator=g)]

    def __iter__(self):
        self._ensure()
        return iter(self._order().tolist())

    def __len__(self):
        self._ensure()
        return len(self._indices)


class DistributedGraftEpochSampler(GraftEpochSampler):
    """:class:`GraftEpochSampler` under ``torch.distributed`` (DDP).

    Each rank runs the selection pass on its contiguous block of the pass's M
    candidates (``[floor(r M / W), floor((r + 1) M / W))``; the candidates, the
    whole dataset or a pool, are the same on every rank), with its own model replica; a
    ``DistributedDataParallel`` wrapper is looked through so that no collective
    runs inside the pass), the selections are all-gathered (padded tensor
    all-gathers, so gloo and NCCL both work), and every rank holds the same
    subset. Each epoch the subset is shuffled by a generator seeded with
    ``seed + epoch`` (the same on every rank), padded by repetition to a multiple
    of the world size (or truncated with ``drop_last``), and rank r iterates
    positions ``r::world_size``, as ``DistributedSampler`` does. Every rank must
    call ``set_epoch`` with the same epoch, and all ranks run the pass together.
    With ``exclude_learned`` each rank's :meth:`record_losses` are held until
    the next pass, which all-gathers them (and the pass's own losses), so that
    every rank keeps the same loss history.

    Extra parameters
    ----------------
    num_replicas, rank : int, optional
        Default: from the default process group.
    drop_last : bool, default=False
    group : process group, optional
    """

    def __init__(self, dataset, model, *, num_replicas=None, rank=None, drop_last=False, group=None, **kwargs):
        import torch.distributed as dist

        super().__init__(dataset, model, **kwargs)
        func = self._func
        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    f"{func} needs an initialised torch.distributed process group (or explicit num_replicas and rank)."
                )
        self.num_replicas = (dist.get_world_size(group) if num_replicas is None
                             else check_int(num_replicas, "num_replicas", func, low=1))
        self.rank = dist.get_rank(group) if rank is None else check_int(rank, "rank", func, low=0)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"The 'rank' parameter of {func} must be an int in the range [0, {self.num_replicas - 1}]. "
                f"Got {self.rank} instead."
            )
        self.drop_last = check_bool(drop_last, "drop_last", func)
        self.group = group
        self._pending = []

    def _shard(self, m=None):
        n, w, r = (self._n if m is None else m), self.num_replicas, self.rank
        return (r * n) // w, ((r + 1) * n) // w

    def _show_progress(self):
        return self.progress and self.rank == 0

    def _gather(self, *tensors):
        if self.num_replicas == 1:
            return tensors
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"{self._func} needs an initialised torch.distributed process group to gather the "
                f"{self.num_replicas} ranks' selections."
            )
        return tuple(self._all_gather(t) for t in tensors)

    def _note_records(self, index, losses):
        # each rank records its own batches: keep them until the next pass gathers every rank's records, so
        # that all ranks hold the same history (and draw the same candidates)
        self._pending.append((torch.full_like(index, self.epoch), index, losses))

    def _sync_records(self):
        if not self.exclude_learned:
            return
        pending, self._pending = self._pending, []
        ep, idx, loss = (torch.cat([p[i] for p in pending]) if pending else
                         torch.zeros(0, dtype=torch.float32 if i == 2 else torch.int64) for i in range(3))
        ep, idx, loss = self._gather(ep, idx, loss)
        order = torch.argsort(ep, stable=True)  # epoch by epoch; within an epoch, rank after rank
        self._apply_records(idx[order], loss[order])

    def _all_gather(self, t):
        """Concatenate a 1-D CPU tensor of every rank, in rank order (variable lengths)."""
        import torch.distributed as dist

        dev = torch.device("cpu")
        if dist.get_backend(self.group) == "nccl":
            dev = torch.device("cuda", torch.cuda.current_device())
        size = torch.tensor([t.numel()], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(size) for _ in range(self.num_replicas)]
        dist.all_gather(sizes, size, group=self.group)
        sizes = [int(s) for s in torch.cat(sizes).cpu().tolist()]
        buf = torch.zeros(max(sizes) if sizes else 0, dtype=t.dtype, device=dev)
        buf[: t.numel()] = t.to(dev)
        parts = [torch.empty_like(buf) for _ in range(self.num_replicas)]
        dist.all_gather(parts, buf, group=self.group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu()

    def _rank_part(self, order):
        w = self.num_replicas
        m = len(order)
        if m == 0:
            return order
        if self.drop_last:
            total = (m // w) * w
            order = order[:total]
        else:
            total = math.ceil(m / w) * w
            if total > m:
                reps = math.ceil((total - m) / m)
                order = torch.cat([order] + [order] * reps)[:total]
        return order[self.rank:total:w]

    def __iter__(self):
        self._ensure()
        return iter(self._rank_part(self._order()).tolist())

    def __len__(self):
        self._ensure()
        m, w = len(self._indices), self.num_replicas
        if m == 0:
            return 0
        return m // w if self.drop_last else math.ceil(m / w)
