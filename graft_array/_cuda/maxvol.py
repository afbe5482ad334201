"""The GPU entry of ``maxvol`` (backend "cuda"): the batched DEIM kernel where it applies, else the generic code.

The kernels take ``method="deim"`` or ``"volume"`` without refinement on
batches of at most 1024 rows and ``min(k, r) <= 64`` (volume: ``r <= 64``):
the batched DEIM or greedy volume, then for ``k > r`` the rectangular
extension (one launch each for every batch, no host synchronisation inside).
Everything else (the tournament, refine, taller batches) runs the generic
array-API code on the device until its kernel is written (issue 12).
"""

from .._agnostic import maxvol as _generic
from . import deim as _deim
from . import rect as _rect
from . import volume as _volume
from .interop import as_cupy, like


def run_maxvol(V, k, *, method, tile_rows=None, refine=False, tol=1.05, max_iters=100, xp, device):
    """Same contract as :func:`graft_array._agnostic.maxvol.run_maxvol` (V finite, (B, n, r))."""
    nb, n, r = V.shape
    kk = min(k, r)
    greedy = (method == "deim" and _deim.fits(n, kk)) or (method == "volume" and _volume.fits(n, r))
    if not (greedy and not refine and (k <= r or _rect.fits(n, r, k))):
        return _generic.run_maxvol(V, k, method=method, tile_rows=tile_rows, refine=refine, tol=tol,
                                   max_iters=max_iters, xp=xp, device=device)
    Vc = as_cupy(V)
    if method == "deim":
        piv, rank, _ = _deim.deim_batched(Vc, kk)
    else:
        piv, rank = _volume.volume_batched(Vc, kk)
    if k > r:
        piv = _rect.rect_extend(Vc, piv, rank, k)
    import cupy

    ranks = cupy.asnumpy(rank).tolist()  # one transfer for every batch (the caller warns on rank deficiency)
    return like(piv, V), ranks, [True] * nb, [0] * nb  # a torch tensor in: a torch tensor out, zero-copy
