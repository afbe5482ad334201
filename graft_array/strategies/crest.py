"""``strategy="crest"``: CREST's selection step (Yang, Kang, Mirzasoleiman, ICML 2023).

The shared facility location (:mod:`graft_array.strategies.facility`) on the
last-layer logit gradients alone, the residuals e_i = p_i - y_i (the first part
of :class:`graft_array.LastLayerGrads`, or plain gradient rows), as CREST's code
does, usually per class (``labels``). :func:`graft_array.select` rescales the
cluster-size weights to mean 1 over the call. The pools, the re-mixed batches
and the quadratic-approximation trigger live in
:class:`graft_array.adapters.crest.CrestSampler`.
"""

from . import facility

__all__ = ["run"]


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """CREST's coresets of every batch of a stack: (order (B, m), sizes (B,), rho (B, m), weights (B, m))."""
    return facility.run(F, grads[:1], None if grads_kind is None else "plain", m, opts, seed, starts, name)
