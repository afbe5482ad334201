"""``strategy="craig"``: CRAIG (Mirzasoleiman, Bilmes, Leskovec, ICML 2020) on each batch's gradients.

Facility location (:mod:`graft_array.strategies.facility`) on the full per-sample
gradients (plain rows, or the last-layer gradients e_i (x) [h_i; 1] of
:class:`graft_array.LastLayerGrads` through their Gram); weights = cluster sizes.
Per class with ``labels`` (select cuts the call into class chunks).
"""

from . import facility

__all__ = ["run"]


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """CRAIG on every batch of a stack: (order (B, m), sizes (B,), rho (B, m), weights (B, m))."""
    return facility.run(F, grads, grads_kind, m, opts, seed, starts, name)
