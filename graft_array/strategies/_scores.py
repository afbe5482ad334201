"""The selector inside dataset distillation: the rows of highest score (MKDT's and PDD's choice of real data).

Per batch (per class chunk with ``labels``): the m rows of largest score, in
decreasing score, ties to the lowest index; weights uniform (n / m). The scores
come from the caller (a per-example distillation loss for MKDT, a forgetting
count for PDD) and reach the strategy as a one-column gradient (see
:mod:`graft_array._family`). The same code serves both names: one sort, any
namespace.
"""

from ._batch import unweighted

__all__ = ["top_scores", "run"]


def top_scores(xp, S, m):
    """(B, m) int64: each batch's rows of the m largest scores S (B, n), largest first, ties to the lowest index."""
    return xp.astype(xp.argsort(-xp.astype(S, xp.float64), axis=1, stable=True)[:, :m], xp.int64)


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """(order (B, m), sizes (B,), rho NaN (B, m), weights n / m (B, m)) from the scores in ``grads[0][..., 0]``."""
    from .._namespace import array_namespace

    S = grads[0][..., 0]
    return unweighted(top_scores(array_namespace(S), S, m), F.shape[1])
