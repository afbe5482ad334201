"""The selector inside dataset distillation: the rows of highest score (MKDT's and PDD's choice of real data).

Per batch (per class chunk with ``labels``): the m rows of largest score, in
decreasing score, ties to the lowest index; weights uniform (n / m). The scores
come from the caller (a per-example distillation loss for MKDT, a forgetting
count for PDD) and reach the strategy as a one-column gradient (see
:mod:`graft_array._family`). The same code serves both names: one sort, any
namespace.
"""

__all__ = ["top_scores", "run"]


def top_scores(xp, S, m):
    """(B, m) int64: each batch's rows of the m largest scores S (B, n), largest first, ties to the lowest index."""
    return xp.astype(xp.argsort(-xp.astype(S, xp.float64), axis=1, stable=True)[:, :m], xp.int64)


def run(F, grads, grads_kind, m, opts, seed, starts, name):
    """(order (B, m), sizes (B,), rho NaN (B, m), weights n / m (B, m)) from the scores in ``grads[0][..., 0]``."""
    from .._namespace import array_namespace, device_of

    nb, n = F.shape[0], F.shape[1]
    S = grads[0][..., 0]
    xp = array_namespace(S)
    dev = device_of(S)
    return (top_scores(xp, S, m), xp.full((nb,), m, dtype=xp.int64, device=dev),
            xp.full((nb, m), float("nan"), dtype=xp.float64, device=dev),
            xp.full((nb, m), n / m, dtype=xp.float64, device=dev))
