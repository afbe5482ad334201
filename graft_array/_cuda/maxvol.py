"""The GPU entry of ``maxvol`` (backend "cuda"): the batched DEIM kernel where it applies, else the generic code.

The kernels take ``method="deim"`` without refinement on batches of at most
1024 rows and ``min(k, r) <= 64``: the batched DEIM, then for ``k > r`` the
rectangular extension (one launch each for every batch, no host
synchronisation inside). Everything else (volume, the tournament, refine,
taller batches) runs the generic array-API code on the device until its kernel
is written (issue 12).
"""

from .._agnostic import maxvol as _generic
from . import deim as _deim
from . import rect as _rect
from .interop import as_cupy, like


def run_maxvol(V, k, *, method, tile_rows=None, refine=False, tol=1.05, max_iters=100, xp, device):
    """Same contract as :func:`graft_array._agnostic.maxvol.run_maxvol` (V finite, (B, n, r))."""
    nb, n, r = V.shape
    kk = min(k, r)
    if not (method == "deim" and not refine and _deim.fits(n, kk) and (k <= r or _rect.fits(n, r, k))):
        return _generic.run_maxvol(V, k, method=method, tile_rows=tile_rows, refine=refine, tol=tol,
                                   max_iters=max_iters, xp=xp, device=device)
    Vc = as_cupy(V)
    piv, rank, _ = _deim.deim_batched(Vc, kk)
    if k > r:
        piv = _rect.rect_extend(Vc, piv, rank, k)
    import cupy

    ranks = cupy.asnumpy(rank).tolist()  # one transfer for every batch (the caller warns on rank deficiency)
    return like(piv, V), ranks, [True] * nb, [0] * nb  # a torch tensor in: a torch tensor out, zero-copy
