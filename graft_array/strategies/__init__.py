"""The selection strategies behind ``select(..., strategy=...)``: one module each, one registry.

Every strategy module holds its Numba path (kernels named ``*_nb``) and its
generic array-API path side by side, and a ``run`` that
:func:`graft_array.select` calls on one stack of equal batches:

* baselines: ``run(F, grads, grads_kind, m, opts, seed, starts, name)`` ->
  ``(order (B, m), sizes (B,), residuals (B, m), weights (B, m))``;
* ``graft``: ``run(F, grads, grads_kind, r, hi, lo, opts, solver, seed, name)``
  -> the pivots, the criterion's sizes, the residual curves, each batch's
  gradient norm and a weight fit for the final sizes (see
  :mod:`graft_array.strategies.graft`).

Facility location, the step of CRAIG, CREST, AdaCore and CoLM, is one shared
kernel: :mod:`graft_array.strategies.facility`. The family's members that need
inputs besides ``features`` and ``grads`` (a Hessian diagonal, data sources,
latent groups, per-example scores) name them in :attr:`Strategy.inputs`;
:mod:`graft_array._family` checks them and folds them into the call.

This package imports nothing heavy: :func:`load` imports a strategy's module
(and Numba) on first use. The registry :data:`REGISTRY` is what ``select``,
the adapters and the tests read.
"""

import importlib
from dataclasses import dataclass

__all__ = ["Strategy", "REGISTRY", "NAMES", "load"]


@dataclass(frozen=True)
class Strategy:
    """One entry of the registry."""

    name: str
    needs_grads: bool  # select raises ValueError without per-sample gradients
    adaptive_size: bool  # sizes from a gradient criterion (min_size / max_size, band, budget apply)
    summary: str
    inputs: tuple = ()  # the row-aligned select arguments it takes besides features and grads
    params: tuple = ()  # (name, default) pairs: the keys of select's strategy_params it takes
    takes_grads: bool = True  # False: select refuses grads (the strategy would not read them)


REGISTRY = {
    s.name: s
    for s in (
        Strategy("graft", False, True, "MaxVol rows of the low-rank features, size by the gradient criterion"),
        Strategy("random", False, False, "a uniform subset keyed on (seed, the batch's dataset position)"),
        Strategy("craig", True, False, "CRAIG: facility location on the per-sample gradients"),
        Strategy("gradmatch", True, False, "GradMatch as CORDS runs it: non-negative OMP of the batch gradient"),
        Strategy("crest", True, False, "CREST's step: facility location on the logit gradients p - y"),
        Strategy("adacore", True, False, "AdaCore: facility location on Hessian-preconditioned gradients",
                 inputs=("hessian_diag",), params=(("damping", 1e-3),)),
        Strategy("colm", True, False, "CoLM: small sources whole, the rest by facility location on "
                 "Adam-normalised, top-coordinate gradients per source", inputs=("sources",),
                 params=(("small_sources", "auto"), ("dims", 2560), ("beta1", 0.9), ("beta2", 0.999),
                         ("eps", 1e-8), ("state", None))),
        Strategy("sas", False, False, "SAS: the most central embeddings of each latent group",
                 inputs=("groups",), params=(("penalty", True), ("n_groups", 10)), takes_grads=False),
        Strategy("clipcov", False, False, "ClipCov: image-caption pairs keeping each group's cross-covariance",
                 inputs=("groups",), params=(("n_groups", 10),), takes_grads=False),
        Strategy("mkdt", False, False, "MKDT's initialisation: the highest per-example distillation losses",
                 inputs=("scores",), takes_grads=False),
        Strategy("pdd", False, False, "PDD's next stage: the highest forgetting scores (the easy ones left out)",
                 inputs=("scores",), takes_grads=False),
    )
}

#: the strategies' names, in the registry's order
NAMES = tuple(REGISTRY)


def load(name):
    """The module of strategy ``name`` (imported on first use)."""
    return importlib.import_module(f"{__name__}.{name}")
