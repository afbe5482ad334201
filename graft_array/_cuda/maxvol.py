"""The GPU entry of ``maxvol`` (backend "cuda"): the batched DEIM kernel where it applies, else the generic code.

The kernel takes ``method="deim"`` without refinement, ``k <= r``, batches of at
most 1024 rows and ``k <= 64`` (one launch for every batch, no host
synchronisation inside). Everything else (volume, the tournament, the
rectangular extension, refine, taller batches) runs the generic array-API code
on the device until its kernel is written (issue 12).
"""

from .._agnostic import maxvol as _generic
from . import deim as _deim
from .interop import as_cupy, like


def run_maxvol(V, k, *, method, tile_rows=None, refine=False, tol=1.05, max_iters=100, xp, device):
    """Same contract as :func:`graft_array._agnostic.maxvol.run_maxvol` (V finite, (B, n, r))."""
    nb, n, r = V.shape
    kk = min(k, r)
    if not (method == "deim" and not refine and k <= r and _deim.fits(n, kk)):
        return _generic.run_maxvol(V, k, method=method, tile_rows=tile_rows, refine=refine, tol=tol,
                                   max_iters=max_iters, xp=xp, device=device)
    piv, rank, _ = _deim.deim_batched(as_cupy(V), kk)
    ranks = rank.get().tolist()  # one transfer for every batch (the caller warns on rank deficiency)
    return like(piv, V), ranks, [True] * nb, [0] * nb  # a torch tensor in: a torch tensor out, zero-copy
