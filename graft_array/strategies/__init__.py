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

Facility location, the step of CRAIG and CREST (and of later members of the
family), is one shared kernel: :mod:`graft_array.strategies.facility`.

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


REGISTRY = {
    s.name: s
    for s in (
        Strategy("graft", False, True, "MaxVol rows of the low-rank features, size by the gradient criterion"),
        Strategy("random", False, False, "a uniform subset keyed on (seed, the batch's dataset position)"),
        Strategy("craig", True, False, "CRAIG: facility location on the per-sample gradients"),
        Strategy("gradmatch", True, False, "GradMatch as CORDS runs it: non-negative OMP of the batch gradient"),
        Strategy("crest", True, False, "CREST's step: facility location on the logit gradients p - y"),
    )
}

#: the strategies' names, in the registry's order
NAMES = tuple(REGISTRY)


def load(name):
    """The module of strategy ``name`` (imported on first use)."""
    return importlib.import_module(f"{__name__}.{name}")
