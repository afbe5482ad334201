"""CoLM's zeroth-order per-sample gradients of the last linear layer, for ``select(..., strategy="colm")``.

CoLM (Nguyen et al., 2024) avoids a backward pass per sample: with one random
direction z shared by the whole batch, two forwards at w + eps z and w - eps z
give each sample's directional derivative

    d_i = (L_i(w + eps z) - L_i(w - eps z)) / (2 eps)  ~=  <grad_w L_i, z>,

and g_i = d_i z is the SPSA (MeZO) estimate of the sample's gradient with
respect to the layer's parameters w (E[z z^T] = I for Gaussian z, so
E_z[g_i] = grad_w L_i up to O(eps^2)). :func:`zeroth_order_grads` returns those
rows; pass them to :func:`graft_array.select` as plain ``grads``::

    G = zeroth_order_grads(model, x, y, random_state=step)
    sel = graft_array.select(None, G, strategy="colm", sources=src, fraction=0.25,
                             strategy_params={"state": state}, return_info=True)

Note that with one direction every row is a multiple of z (the rows have rank
one); what tells the samples apart is d_i, and, with a
:class:`graft_array.ColmState` carried across steps, the Adam normalisation of
:mod:`graft_array.strategies.colm`, which is not linear in g_i.

Layout of the p = C (h + 1) coordinates (an ``nn.Linear(h, C)`` with bias): row
c of the weight, then the bias b_c, for c = 0 .. C-1, i.e. ``[W | b]``
flattened row-major, the layout of the explicit rows of
:class:`graft_array.LastLayerGrads` (``e_i (x) [h_i; 1]``), so a ColmState can
follow either. Without a bias p = C h (``W`` flattened). Any module with a
``weight`` of leading size C (and optionally a ``bias`` (C,)) may be named with
``layer``: its weight is flattened to (C, -1) first.

The forwards run under ``torch.no_grad`` in eval mode (dropout off, batch-norm
running statistics used and not updated; every module's train/eval flag is
restored), so both see the same function of w. The layer's parameters are
copied before and written back after (bitwise, also when a forward raises).
No autograd, no global random number generator: z is given, or drawn from a
``torch.Generator`` of its own.
"""

import numbers

import numpy as np
import torch
import torch.nn.functional as tF

from .._validation import check_real
from .torch import IGNORE_INDEX, _check_model, _describe, _find_layer, _unwrap

__all__ = ["zeroth_order_grads"]

_FUNC = "zeroth_order_grads"
_LOSSES = ("cross_entropy", "mse")


def _check_loss(loss):
    if callable(loss) or (isinstance(loss, str) and loss in _LOSSES):
        return loss
    raise ValueError(
        f"The 'loss' parameter of {_FUNC} must be 'cross_entropy', 'mse' or a callable (output, y) -> per-sample "
        f"losses (n,). Got {loss!r} instead."
    )


def _layer_parameters(layer, name, func=_FUNC):
    """The layer's ``(weight, bias)`` (bias None when absent), checked: weight at least 1-D, bias (C,)."""
    w = getattr(layer, "weight", None)
    b = getattr(layer, "bias", None)
    if not isinstance(w, torch.Tensor) or w.ndim < 1:
        raise ValueError(
            f"The 'layer' parameter of {func} must be a layer with a 'weight' parameter (by default the model's "
            f"last torch.nn.Linear); {name!r} ({type(layer).__name__}) has none."
        )
    if not w.is_floating_point():
        raise ValueError(f"{func} expects the weight of layer {name!r} to be floating; got {_describe(w)}.")
    if b is not None:
        if not isinstance(b, torch.Tensor) or tuple(b.shape) != (w.shape[0],) or b.dtype != w.dtype \
                or b.device != w.device:
            raise ValueError(
                f"{func} expects the bias of layer {name!r} to have shape ({w.shape[0]},) and the weight's dtype "
                f"and device; got {_describe(b)} for weight {_describe(w)}."
            )
    return w, b


def _width(w, b):
    C = int(w.shape[0])
    return C, int(w.numel()) // max(C, 1) + (b is not None)


def _direction(z, p, dtype, device, random_state):
    """z (p,) in the parameters' dtype and device: the given one (checked) or a standard Gaussian draw."""
    if z is not None:
        if random_state is not None:
            raise ValueError(f"{_FUNC} takes one of 'z' and 'random_state' (z is the direction itself). Got both.")
        if isinstance(z, np.ndarray):
            z = torch.from_numpy(np.ascontiguousarray(z))
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"The 'z' parameter of {_FUNC} must be a tensor of shape ({p},) or None. "
                            f"Got {_describe(z)} instead.")
        if not z.is_floating_point():
            raise TypeError(f"The 'z' parameter of {_FUNC} must be a real floating tensor; got {_describe(z)}.")
        if z.ndim != 1 or int(z.shape[0]) != p:
            raise ValueError(
                f"The 'z' parameter of {_FUNC} must have shape ({p},) (the layer's weight and bias, flattened as "
                f"[W | b] row by row); got {_describe(z)}."
            )
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"The 'z' parameter of {_FUNC} must be finite; it holds NaN or inf.")
        return z.detach().to(device=device, dtype=dtype)
    if isinstance(random_state, torch.Generator):
        gen = random_state
        if gen.device.type != "cpu":
            raise ValueError(f"The 'random_state' parameter of {_FUNC} must be a CPU torch.Generator; got one on "
                             f"{gen.device}.")
    else:
        gen = torch.Generator()
        if random_state is None:
            gen.seed()  # fresh entropy from the generator itself (the global RNG is not read)
        elif isinstance(random_state, np.random.Generator):
            gen.manual_seed(int(random_state.integers(2**63)))
        elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
            if int(random_state) < 0:
                raise ValueError(f"The 'random_state' parameter of {_FUNC} must be a non-negative int when an int. "
                                 f"Got {random_state!r} instead.")
            gen.manual_seed(int(random_state) % 2**64)
        else:
            raise TypeError(
                f"The 'random_state' parameter of {_FUNC} must be None, a non-negative int, a numpy Generator or a "
                f"CPU torch.Generator. Got {random_state!r} instead."
            )
    # drawn in float64 on the CPU: the same z for every dtype and device of the model
    return torch.randn(p, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _per_sample_losses(out, y, loss):
    """Per-sample losses (n,) of the model's output, checked."""
    if not isinstance(out, torch.Tensor) or out.ndim < 1:
        raise ValueError(f"{_FUNC} expects the model to return a tensor (the logits); got {_describe(out)}.")
    if int(y.shape[0]) != int(out.shape[0]):
        raise ValueError(f"The 'y' parameter of {_FUNC} must hold one target per sample ({int(out.shape[0])}); "
                         f"got {_describe(y)}.")
    if callable(loss):
        L = loss(out, y)
        if not isinstance(L, torch.Tensor) or L.ndim != 1 or int(L.shape[0]) != int(out.shape[0]):
            raise ValueError(
                f"{_FUNC} expects the callable 'loss' to return one loss per sample, shape ({int(out.shape[0])},); "
                f"got {_describe(L)}. (Here 'loss' returns losses, not dloss/dlogits.)"
            )
        return L
    if out.ndim != 2:
        raise ValueError(f"{_FUNC} expects the model to output logits of shape (n, C) for loss={loss!r}; "
                         f"got {_describe(out)}.")
    n, C = out.shape
    y = y.to(out.device)
    if loss == "cross_entropy":
        if y.is_floating_point():
            if tuple(y.shape) != (n, C):
                raise ValueError(f"The 'y' parameter of {_FUNC} must hold class indices ({n},) or class "
                                 f"probabilities ({n}, {C}); got {_describe(y)}.")
            return tF.cross_entropy(out, y.to(out.dtype), reduction="none")
        if y.dtype == torch.bool or y.is_complex() or y.ndim != 1:
            raise ValueError(f"The 'y' parameter of {_FUNC} must hold class indices ({n},) of an integer dtype or "
                             f"class probabilities ({n}, {C}); got {_describe(y)}.")
        y = y.long()
        bad = ((y < 0) | (y >= C)) & (y != IGNORE_INDEX)
        if bool(bad.any()):
            raise ValueError(f"The 'y' parameter of {_FUNC} must hold class indices in [0, {C}) (or "
                             f"{IGNORE_INDEX}, ignored); got values from {int(y.min())} to {int(y.max())}.")
        return tF.cross_entropy(out, y, reduction="none", ignore_index=IGNORE_INDEX)
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"The 'y' parameter of {_FUNC} must hold real MSE targets; got {_describe(y)}.")
    yy = y[:, None] if (y.ndim == 1 and C == 1) else y
    if tuple(yy.shape) != (n, C):
        raise ValueError(f"The 'y' parameter of {_FUNC} must have shape ({n}, {C}) for loss='mse' (or ({n},) "
                         f"when C == 1); got {_describe(y)}.")
    return tF.mse_loss(out, yy.to(out.dtype), reduction="none").mean(dim=1)


def zeroth_order_grads(model, x, y, *, layer=None, eps=1e-3, z=None, random_state=None, loss="cross_entropy"):
    """CoLM's zeroth-order (SPSA) per-sample gradients of the last linear layer: (n, p) rows d_i z.

    Two no-grad forwards of the whole batch, at w + eps z and at w - eps z (w:
    the layer's weight and bias), give d_i = (L_i(w + eps z) - L_i(w - eps z)) /
    (2 eps) for every sample i; row i of the result is d_i z. The parameters are
    written back bitwise afterwards.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(x)``; its output is what ``loss`` reads. A
        DataParallel / DistributedDataParallel wrapper is looked through.
    x : the model's input
    y : tensor
        Targets, one per sample. ``"cross_entropy"``: class indices (n,) of an
        integer dtype (``-100`` ignored: loss 0, row 0) or class probabilities
        (n, C); ``"mse"``: (n, C), or (n,) when C == 1.
    layer : None, str or nn.Module
        The layer whose parameters are perturbed; default the model's last
        ``nn.Linear`` (found as :mod:`graft_array.adapters.torch` does).
    eps : float > 0, default=1e-3
        The perturbation's size. The central difference's truncation error is
        O(eps^2); its rounding error is about (the loss's rounding) / eps, so in
        float32 expect a relative error near 1e-4 at eps=1e-3. Half-precision
        parameters hold w +- eps z rounded to their dtype: use a larger eps.
    z : None or tensor (p,)
        The direction (any scale: the result is linear in z). ``None``: a
        standard Gaussian draw.
    random_state : None, non-negative int, numpy Generator or CPU torch.Generator
        Seeds the draw of z when ``z`` is None (a ``torch.Generator`` of its own,
        drawn in float64 on the CPU then cast, so z does not depend on the
        model's dtype or device). ``None``: fresh entropy.
    loss : {"cross_entropy", "mse"} or callable, default="cross_entropy"
        A callable ``loss(output, y)`` must return the per-sample losses (n,)
        (unlike :func:`graft_array.adapters.torch.loss_residuals`, whose callable
        returns dloss/dlogits).

    Returns
    -------
    tensor (n, p), the parameters' dtype (float32 for half precision), on their
        device. p = C (h + 1) for ``nn.Linear(h, C)`` with a bias, laid out as
        ``[W | b]`` flattened row by row (see the module docstring); C h without.
    """
    model = _unwrap(_check_model(model, _FUNC))
    eps = check_real(eps, "eps", _FUNC, low=0.0, low_inclusive=False)
    loss = _check_loss(loss)
    mod, name = _find_layer(model, layer, _FUNC)
    w, b = _layer_parameters(mod, name)
    C, per_row = _width(w, b)
    p = C * per_row
    work = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
    zz = _direction(z, p, work, w.device, random_state)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"The 'y' parameter of {_FUNC} must be a tensor of targets; got {_describe(y)}.")
    if y.ndim < 1:
        raise ValueError(f"The 'y' parameter of {_FUNC} must hold one target per sample; got {_describe(y)}.")
    Z = zz.reshape(C, per_row)
    dw = (eps * Z[:, : per_row - (b is not None)]).reshape(w.shape)
    db = eps * Z[:, -1] if b is not None else None

    saved = [(t, t.detach().clone()) for t in ((w, b) if b is not None else (w,))]
    modes = [(m, m.training) for m in model.modules()]
    calls = []
    handle = mod.register_forward_hook(lambda *_: calls.append(1))
    losses = []
    try:
        model.eval()
        with torch.no_grad():
            for sign in (1.0, -1.0):
                w.copy_(saved[0][1].to(work) + sign * dw)
                if b is not None:
                    b.copy_(saved[1][1].to(work) + sign * db)
                calls.clear()
                out = model(x)
                if len(calls) != 1:
                    how = "never ran" if not calls else f"ran {len(calls)} times"
                    raise ValueError(
                        f"{_FUNC} expects the layer {name!r} ({type(mod).__name__}) to run exactly once per forward; "
                        f"it {how}. Name the layer to perturb with layer='...'."
                    )
                L = _per_sample_losses(out, y, loss)
                losses.append(L.detach().to(work))
    finally:
        handle.remove()
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
        for m, flag in modes:
            m.training = flag
    d = (losses[0] - losses[1]) / (2.0 * eps)
    return d[:, None] * zz.to(d.device)[None, :]
