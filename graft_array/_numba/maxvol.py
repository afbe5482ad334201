"""Numba CPU kernels of the maxvol family (deim, volume, tournament, rect extension, refine): the entry point.

The contract (pivot order, ties, tolerances, fill rule, ...) is the one of
:mod:`graft_array._agnostic.maxvol`; these kernels only change *how* it is
computed. Everything for all batches runs in one compiled call, parallel over
batches (``prange``), or over tiles / row blocks when there are fewer batches
than threads.

One algorithm per module, each with its layout tricks in its docstring:

* :mod:`graft_array._numba.deim`: DEIM (greedy LU row pivots, = LAPACK ``getrf``);
* :mod:`graft_array._numba.tournament`: tournament pivoting (DEIM on tiles);
* :mod:`graft_array._numba.volume`: greedy volume (QR with column pivoting on V^T);
* :mod:`graft_array._numba.rect`: the rectangular extension (k > r) and refinement;
* :mod:`graft_array._numba.simd`: the shared machinery (LLVM vector intrinsics,
  exact power-of-two scaling, reductions, row norms).

This module holds :func:`run_maxvol`, which picks the kernels.
"""

import numba
import numpy as np

from .._common import default_tile_rows
from .compact import _deim_compact
from .deim import _deim_batched, _deim_rowpar
from .rect import _rect_batched, _refine_batched

# Re-exported: graft_array._numba.lowrank imports these vector intrinsics from here.
from .simd import (  # noqa: F401
    _FM,
    _lane_reduce,
    _prefetch_at,
    _simd_width,
    _vbcast,
    _Vec,
    _vec_call,
    _vfnma,
    _vload,
    _vmul,
    _vsplat,
    _vstore,
    _vsuffix,
    _vzero,
)
from .tournament import _tournament_batched
from .volume import _volume_batched, _volume_rowpar

__all__ = ["run_maxvol"]

_ROWPAR_MIN_ROWS = 4096  # fewer batches than threads and at least this many rows: split the rows instead
_COMPACT_MAX_COLS = 32  # the batch-interleaved DEIM (compact.py) up to this many columns: measured faster there
# ... and while a group's buffer (kk x n x 32 bytes: L batches of one 256-bit vector) stays cache-sized: its
# trailing updates stream the whole buffer once per panel. Measured on 1 thread, float32, kk = 32 (2-core AMD EPYC,
# 1 MiB L2, 32 MiB L3): compact / batched speed 1.13x at n = 4096 (4 MiB), 1.07x at 8192, 0.87x at 16384, 0.34x at
# 32768 (maxvol_dask's tiles); 4 MiB keeps the gain with a margin for smaller caches.
_COMPACT_MAX_BYTES = 4 << 20


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def run_maxvol(V, k, *, method, tile_rows=None, refine=False, tol=1.05, max_iters=100, check_finite=False):
    """Maxvol row selection for every batch of ``V``, in one compiled call.

    Parameters
    ----------
    V : numpy.ndarray, shape (B, n, r), float32 or float64
        Any strides; never written to (copied to C order only if needed).
    k : int
        Rows to select, ``1 <= k <= n``.
    method : {"deim", "volume", "tournament"}
    tile_rows : int or None
        Tournament tile size; ``None`` -> ``default_tile_rows(n, min(k, r))``.
    refine : bool
        Goreinov maxvol swaps after the greedy pass (caller guarantees ``k <= r``);
        skipped for a batch whose rank is below ``k``, and for one whose greedy
        block ``V[S, :k]`` is numerically singular (``iterations == -1``).
    tol : float
        Refinement stops when ``max|V V_S^{-1}| <= tol``.
    max_iters : int
        Maximum number of refinement swaps.
    check_finite : bool
        Check first that ``V`` has no NaN or infinity, and return ``None`` if
        it has one (the batched deim and the tournament kernels do it in their
        own first pass; without the check they raise ``ValueError`` on one).

    Returns
    -------
    None where ``check_finite`` found a NaN or an infinity, else
    pivots : (B, k) int64
        Selected rows, in selection order.
    rank : (B,) int64
        Number of non-fill pivots.
    converged : (B,) bool
        Refinement converged (True when no refinement ran).
    iterations : (B,) int64
        Refinement swaps performed (0 when no refinement ran; -1 where the
        refinement was skipped because ``V[S, :k]`` is numerically singular).
    """
    V = np.asarray(V)
    if not V.flags.c_contiguous:
        V = np.ascontiguousarray(V)
    if V.flags.writeable:  # one read-only view type for every caller: each kernel compiles once per dtype
        V = V.view()
        V.flags.writeable = False
    nb, n, r = V.shape
    kk = min(k, r)
    eps = float(np.finfo(V.dtype).eps)
    nthreads = numba.get_num_threads()
    # the batched deim and the tournament check finiteness in their own first pass over V
    fused = method == "tournament" or (
        method == "deim" and not (nb < nthreads and n >= _ROWPAR_MIN_ROWS and nthreads > 1))
    if check_finite and not fused:
        from .checks import all_finite

        if not all_finite(V):
            return None
    if method == "deim":
        if not fused:
            piv = np.empty((nb, kk), np.int64)
            rank = np.empty(nb, np.int64)
            for b in range(nb):  # few batches: parallel over rows instead
                piv[b], rank[b] = _deim_rowpar(V[b], kk, eps, nthreads)
        else:
            lanes = 32 // V.dtype.itemsize  # batches per 256-bit group of the compact kernel
            # batch-interleaved kernel for kk <= 32 with a whole group per thread and a cache-sized group
            # (compact.py: 1.06-2.1x measured there, 0.97x at kk = 64); the same pivots, ranks and flags either way
            compact = kk <= _COMPACT_MAX_COLS and nb >= lanes * nthreads and kk * n * 32 <= _COMPACT_MAX_BYTES
            batched = _deim_compact if compact else _deim_batched
            piv, rank, bad = batched(V, kk, eps, nthreads)
            if bad.any():
                if check_finite:
                    return None
                raise ValueError("V has NaN or infinite entries")
    elif method == "tournament":
        tiles = default_tile_rows(n, kk) if tile_rows is None else int(tile_rows)
        tiles = max(tiles, kk + 1)  # the spec loop needs tiles > kk to shrink (the caller asks for >= 2 kk)
        piv, rank, bad = _tournament_batched(V, kk, tiles, eps, nthreads)
        if bad.any():
            if check_finite:
                return None
            raise ValueError("V has NaN or infinite entries")
    elif nb < nthreads and n >= _ROWPAR_MIN_ROWS and nthreads > 1:
        piv = np.empty((nb, kk), np.int64)
        rank = np.empty(nb, np.int64)
        for b in range(nb):  # few batches: parallel over row ranges instead
            rank[b] = _volume_rowpar(V[b], kk, eps, piv[b], 2 * nthreads)
    else:
        piv, rank = _volume_batched(V, kk, eps)
    if k > r:
        piv = _rect_batched(V, piv, rank, k)
    if refine and k <= r:
        converged, iterations = _refine_batched(V, piv, rank, float(tol), int(max_iters), eps)
    else:
        converged = np.ones(nb, dtype=np.bool_)
        iterations = np.zeros(nb, dtype=np.int64)
    return piv, rank, converged, iterations
