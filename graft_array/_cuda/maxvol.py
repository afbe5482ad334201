"""The GPU entry of ``maxvol`` (backend "cuda"): the batched DEIM kernel where it applies, else the generic code.

The kernels take every method where ``min(k, r) <= 64``:

* ``"deim"``: batches of at most 1024 rows in one launch (the warp kernel where
  a batch fits 256 rows and 32 columns, else a thread per row); taller ones by
  the tall kernel (``deim_tall.cu``: 2 kk + 1 launches over the whole grid);
* ``"tournament"``: one launch per level of the tree (the same tiles as the
  CPU path: ``tile_rows``, or :func:`graft_array._common.default_tile_rows`);
* ``"volume"``: ``r <= 64``; batches of at most 1024 rows in one launch, taller
  ones by the tall kernels (``2 kk + 1`` launches per batch);
* then for ``k > r`` the rectangular extension (batches of at most 1024 rows);
* or, with ``refine=True`` (``k <= r``), Goreinov's swaps (batches of at most 1024 rows).

No host synchronisation inside but the one transfer of the ranks at the end: the launches depend on the
shapes only. With ``check_finite`` (public ``maxvol``) the batched DEIM's own non-finite flags come back in
that transfer; the other paths first make one isfinite reduction and read it on the host.
Everything else (the extension or refine on taller batches, k > 64)
runs the generic array-API code on the device until its kernel is written
(issue 12).
"""

from .._agnostic import maxvol as _generic
from .._common import default_tile_rows
from . import deim as _deim
from . import rect as _rect
from . import refine as _refine
from . import tournament as _tournament
from . import volume as _volume
from .interop import as_cupy, like, on_stream_of


def run_maxvol(V, k, *, method, tile_rows=None, refine=False, tol=1.05, max_iters=100, xp, device,
               check_finite=False):
    """Same contract as :func:`graft_array._agnostic.maxvol.run_maxvol` ((B, n, r); V finite unless
    ``check_finite``, then None where it has a NaN or an infinity).

    The batched DEIM flags such batches itself in its one pass over V (``bad``), and the flags come back
    with the ranks in the call's one transfer; the other paths (their kernels assume finite input, and so
    do the extension and refine) check first with one reduction and one host read.
    """
    nb, n, r = V.shape
    kk = min(k, r)
    tiles = None
    if method == "tournament":
        tiles = max(default_tile_rows(n, kk) if tile_rows is None else int(tile_rows), kk + 1)  # the CPU guard
    if method == "deim":
        greedy = _tournament.fits(kk) and (_deim.fits(n, kk) or _deim.fits_tall(nb, n, kk))
    elif method == "tournament":
        greedy = _tournament.fits(kk) and _tournament.fits_tiles(n, kk, tiles)
    else:
        greedy = _volume.fits_tall(n, r)
    if not (nb and greedy and (k <= r or _rect.fits(n, r, k)) and (not refine or _refine.fits(n, k))):
        return _generic.run_maxvol(V, k, method=method, tile_rows=tile_rows, refine=refine, tol=tol,
                                   max_iters=max_iters, xp=xp, device=device, check_finite=check_finite)
    flagged = method == "deim" and _deim.fits(n, kk) and k <= r and not refine  # the kernel's bad flags suffice
    if check_finite and not flagged and not bool(xp.all(xp.isfinite(V))):
        return None
    import cupy

    with on_stream_of(V):
        Vc = as_cupy(V)
        bad = None
        if method == "deim" and _deim.fits(n, kk):
            piv, rank, bad = _deim.deim_batched(Vc, kk)
        elif method == "deim":  # tall: the whole grid on every step, 2 kk + 1 launches
            piv, rank = _deim.deim_tall(Vc, kk)
        elif method == "tournament":
            piv, rank = _tournament.tournament(Vc, kk, tiles)
        elif _volume.fits(n, r):
            piv, rank = _volume.volume_batched(Vc, kk)
        else:  # tall: 2 kk + 1 launches per batch (few batches of many rows)
            parts = [_volume.volume_tall(Vc[b], kk) for b in range(nb)]  # nb >= 1 (n > 1024 rows)
            xpc = cupy.get_array_module(parts[0][0])  # CuPy (NumPy under the tests' shim)
            piv = xpc.stack([p for p, _ in parts])
            rank = xpc.concatenate([q for _, q in parts])
        if k > r:
            piv = _rect.rect_extend(Vc, piv, rank, k)
        conv = iters = None
        if refine:  # k <= r (the caller's rule); piv (fresh, C-contiguous) is refined in place
            conv, iters = _refine.refine(Vc, piv, rank, tol, max_iters)
        # one transfer for every batch, on the kernels' stream (the caller warns on rank deficiency)
        xpc = cupy.get_array_module(rank)
        if conv is None and check_finite and flagged:
            host = cupy.asnumpy(xpc.stack([rank, bad.astype(xpc.int64)]))
            if host[1].any():
                return None
            ranks, conv, iters = host[0].tolist(), [True] * nb, [0] * nb
        elif conv is None:
            ranks, conv, iters = cupy.asnumpy(rank).tolist(), [True] * nb, [0] * nb
        else:
            host = cupy.asnumpy(xpc.stack([rank, conv.astype(xpc.int64), iters]))
            ranks, conv, iters = host[0].tolist(), host[1].astype(bool).tolist(), host[2].tolist()
    return like(piv, V), ranks, conv, iters  # a torch tensor in: a torch tensor out, zero-copy
