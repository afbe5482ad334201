"""Batched DEIM on a batch-interleaved ("compact") layout: one SIMD lane per batch.

The contract is that of :func:`graft_array._numba.deim._deim_batched` (and of
:mod:`graft_array._agnostic.maxvol`): the same pivots, ranks, fill rows and
``bad`` flags, bit for bit, because every entry goes through the same
arithmetic (see "Same arithmetic" below).

Layout
------
A *group* of ``L`` batches (``L`` = lanes of one 256-bit vector: 4 float64 or
8 float32) is transposed into one work buffer ``X`` of shape ``(kk, n L)``::

    X[c, i L + l] = V[b0 + l, i, c]        (column c, row i, lane l = batch b0 + l)

so one vector ``X[c, i L : i L + L]`` holds entry ``(i, c)`` of the ``L``
batches. In the column-major single-batch kernel (:func:`._deim_vcore`) a
vector holds ``L`` rows of one batch; here the lanes are independent problems:

* **No horizontal work.** The pivot search of a column is a lane-wise
  "strictly greater" compare-and-select down the rows (first largest entry per
  lane = ties to the lowest row), with no reduction across lanes, no final
  in-vector scan, no separate pass.
* **Per-step scalar work shared by L batches.** Panel bookkeeping, loop setup
  and the pivot-row computation run once per step of the group instead of once
  per step of each batch; each lane has its own pivot row, tolerance, fill
  decision and scale (the pivot rows are gathered lane by lane: one vector per
  column of the pivot row, ``kk`` of them per step).
* **No row padding**: ``n`` need not be a multiple of the vector width.

The elimination is the one of :func:`._deim_vcore`: panels of ``_BS = 8``
columns, left-looking inside a panel with the pivot search fused into the
column's update pass, then one rank-8 right-looking update of the trailing
columns, register-tiled (3 rows x 4 columns of vectors: 7 loads per 12 fused
multiply-adds) and row-blocked (``_CRB`` rows: the panel's multiplier block,
8 x ``_CRB`` vectors, stays in L1 while the trailing columns stream through it).
A group is ``kk n L`` entries (128 KB for 128 x 32 float64), out of L1 but in L2.
Rows are zeroed, not swapped: the selected row of each lane is set to zero in
that lane's remaining columns (each column just before its panel pass, see :func:`_ccore`).

Measured against :func:`._deim_batched` on a quiet 2-core AMD EPYC (AVX2), 2
threads, same process, alternating, best of 60 (the pivots checked equal):
400 x 128 x 32 float64 1.16x, float32 1.39x; 1000 x 64 x 16 float64 1.40x,
float32 2.08x; 2000 x 32 x 8 float64 1.72x; 400 x 512 x 32 float64 1.34x;
400 x 128 x 24 float64 1.27x; earlier (before the load's fix below) 100 x 256 x 64
float64 0.98x, float32 0.97x.

The interleaving load (:func:`_cload`) carries only one max and one sum of
``x 0`` per row block from block to block: a dependent FMA per vector (the
NaN flag) made it latency-bound, at about 4 cycles a vector (0.46 ms of the
2.5 ms that 400 x 128 x 32 float64 took on one thread; 0.30 ms now). No
software prefetch of the next group: it measured 2.5% slower with ``V`` in
the cache and 17% slower with ``V`` in memory than the hardware prefetchers,
and loading the next group a slice per step was 13% slower (both tried).
The number of fused multiply-adds is the same as the single-batch kernel's; the
saving on reductions and per-step work is partly eaten by the group's L2-sized
working set (the single-batch buffer of 128 x 32 float64 is 36 KB and lives in
L1). :func:`graft_array._numba.maxvol.run_maxvol` therefore takes this kernel
for kk <= 32 when every thread gets a whole group (B >= L threads), and
``_deim_batched`` otherwise.

Same arithmetic
---------------
Each entry receives, per panel, the fused multiply-adds ``a = fma(-L_t, U_t, a)``
in the panel's step order, the multipliers stay unscaled and the pivot rows
``U`` are computed by the same chain times ``1 / pivot`` as in
:func:`._vpivot_row`; the per-lane scale (:func:`._elim_scale`) and tolerance
``f eps max|V_b|`` (``f = max(r, min(n, r^2))``) are the batch's own. So values, pivots and fill
decisions match :func:`._deim_batched` exactly (this is tested), including the
"stale" re-search after a panel column's earlier pivot rows are zeroed.

Lanes that carry no batch (a last group of fewer than ``L``) or a batch with a
NaN / infinity (flagged ``bad``, ``piv = 0..kk-1``, rank 0) run on a copy of
a good lane of the group and their results are dropped.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import (
    _absmax_finite,
    _elim_scale,
    _fill_pick,
    _is_c2d,
    _lanes,
    _one_like,
    _rank_factor,
    _row_norms,
    _shuffle_transpose,
    _simd_width,
    _vargmax,
    _vargmax_merge,
    _vdiv,
    _Vec,
    _vec_call,
    _vfnma,
    _vgather,
    _vilane,
    _visplat,
    _vlane,
    _vload,
    _vmul,
    _vsplat,
    _vstore,
    _vsuffix,
    _vzero,
)

_BS = 8  # panel width (as in deim.py: the same panels give the same arithmetic)
_CRB = 48  # rows per block of the trailing update: 8 x 48 multiplier vectors (12 KB for f64) stay in L1


# ---------------------------------------------------------------------------
# Kernels on the interleaved work buffer X (kk, n L)
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _cpanel(X, j, j0, s, U, n):
    """Column ``j`` of a panel, every lane: ``X[j, i] -= sum_{t<s} X[j0 + t, i] U[t, j]`` (rows ``i < n``).

    One fused multiply-add per ``t`` in order (nothing is written when ``s == 0``),
    and in the same pass the first argmax of ``|X[j, i]|`` down the rows, lane
    by lane (strictly greater wins, four interleaved row streams merged with
    ties to the lower row). Returns ``(max vector, row index vector)``.
    """
    L = _simd_width(X)
    uj = j * L
    m0 = _vzero(X)
    m1 = m0
    m2 = m0
    m3 = m0
    x0 = _visplat(X, 0)
    x1 = x0
    x2 = x0
    x3 = x0
    i = 0
    while i + 4 <= n:
        o = i * L
        a0 = _vload(X, j, o)
        a1 = _vload(X, j, o + L)
        a2 = _vload(X, j, o + 2 * L)
        a3 = _vload(X, j, o + 3 * L)
        if s > 0:
            for t in range(s):
                u = _vload(U, t, uj)
                r = j0 + t
                a0 = _vfnma(_vload(X, r, o), u, a0)
                a1 = _vfnma(_vload(X, r, o + L), u, a1)
                a2 = _vfnma(_vload(X, r, o + 2 * L), u, a2)
                a3 = _vfnma(_vload(X, r, o + 3 * L), u, a3)
            _vstore(X, j, o, a0)
            _vstore(X, j, o + L, a1)
            _vstore(X, j, o + 2 * L, a2)
            _vstore(X, j, o + 3 * L, a3)
        m0, x0 = _vargmax(m0, x0, a0, _visplat(X, i))
        m1, x1 = _vargmax(m1, x1, a1, _visplat(X, i + 1))
        m2, x2 = _vargmax(m2, x2, a2, _visplat(X, i + 2))
        m3, x3 = _vargmax(m3, x3, a3, _visplat(X, i + 3))
        i += 4
    while i < n:
        o = i * L
        a0 = _vload(X, j, o)
        if s > 0:
            for t in range(s):
                a0 = _vfnma(_vload(X, j0 + t, o), _vload(U, t, uj), a0)
            _vstore(X, j, o, a0)
        m0, x0 = _vargmax(m0, x0, a0, _visplat(X, i))
        i += 1
    m0, x0 = _vargmax_merge(m0, x0, m1, x1)
    m2, x2 = _vargmax_merge(m2, x2, m3, x3)
    return _vargmax_merge(m0, x0, m2, x2)


@njit(cache=True, nogil=True)
def _crank4(X, c, j0, s, U, i0, i1):
    """``X[c + q, i] -= sum_{t<s} X[j0 + t, i] U[t, c + q]``, ``q < 4``, rows ``[i0, i1)``: 3 rows x 4 columns of vectors."""
    L = _simd_width(X)
    c1 = c + 1
    c2 = c + 2
    c3 = c + 3
    u0 = c * L
    u1 = u0 + L
    u2 = u1 + L
    u3 = u2 + L
    i = i0
    while i + 3 <= i1:
        o0 = i * L
        o1 = o0 + L
        o2 = o1 + L
        a0 = _vload(X, c, o0)
        a1 = _vload(X, c, o1)
        a2 = _vload(X, c, o2)
        b0 = _vload(X, c1, o0)
        b1 = _vload(X, c1, o1)
        b2 = _vload(X, c1, o2)
        d0 = _vload(X, c2, o0)
        d1 = _vload(X, c2, o1)
        d2 = _vload(X, c2, o2)
        e0 = _vload(X, c3, o0)
        e1 = _vload(X, c3, o1)
        e2 = _vload(X, c3, o2)
        for t in range(s):
            r = j0 + t
            y0 = _vload(X, r, o0)
            y1 = _vload(X, r, o1)
            y2 = _vload(X, r, o2)
            u = _vload(U, t, u0)
            a0 = _vfnma(y0, u, a0)
            a1 = _vfnma(y1, u, a1)
            a2 = _vfnma(y2, u, a2)
            u = _vload(U, t, u1)
            b0 = _vfnma(y0, u, b0)
            b1 = _vfnma(y1, u, b1)
            b2 = _vfnma(y2, u, b2)
            u = _vload(U, t, u2)
            d0 = _vfnma(y0, u, d0)
            d1 = _vfnma(y1, u, d1)
            d2 = _vfnma(y2, u, d2)
            u = _vload(U, t, u3)
            e0 = _vfnma(y0, u, e0)
            e1 = _vfnma(y1, u, e1)
            e2 = _vfnma(y2, u, e2)
        _vstore(X, c, o0, a0)
        _vstore(X, c, o1, a1)
        _vstore(X, c, o2, a2)
        _vstore(X, c1, o0, b0)
        _vstore(X, c1, o1, b1)
        _vstore(X, c1, o2, b2)
        _vstore(X, c2, o0, d0)
        _vstore(X, c2, o1, d1)
        _vstore(X, c2, o2, d2)
        _vstore(X, c3, o0, e0)
        _vstore(X, c3, o1, e1)
        _vstore(X, c3, o2, e2)
        i += 3
    while i < i1:
        o0 = i * L
        a0 = _vload(X, c, o0)
        b0 = _vload(X, c1, o0)
        d0 = _vload(X, c2, o0)
        e0 = _vload(X, c3, o0)
        for t in range(s):
            y0 = _vload(X, j0 + t, o0)
            a0 = _vfnma(y0, _vload(U, t, u0), a0)
            b0 = _vfnma(y0, _vload(U, t, u1), b0)
            d0 = _vfnma(y0, _vload(U, t, u2), d0)
            e0 = _vfnma(y0, _vload(U, t, u3), e0)
        _vstore(X, c, o0, a0)
        _vstore(X, c1, o0, b0)
        _vstore(X, c2, o0, d0)
        _vstore(X, c3, o0, e0)
        i += 1


@njit(cache=True, nogil=True)
def _crank1(X, c, j0, s, U, i0, i1):
    """:func:`_crank4` on the one column ``c`` (4 rows of vectors at a time)."""
    L = _simd_width(X)
    uc = c * L
    i = i0
    while i + 4 <= i1:
        o = i * L
        a0 = _vload(X, c, o)
        a1 = _vload(X, c, o + L)
        a2 = _vload(X, c, o + 2 * L)
        a3 = _vload(X, c, o + 3 * L)
        for t in range(s):
            u = _vload(U, t, uc)
            r = j0 + t
            a0 = _vfnma(_vload(X, r, o), u, a0)
            a1 = _vfnma(_vload(X, r, o + L), u, a1)
            a2 = _vfnma(_vload(X, r, o + 2 * L), u, a2)
            a3 = _vfnma(_vload(X, r, o + 3 * L), u, a3)
        _vstore(X, c, o, a0)
        _vstore(X, c, o + L, a1)
        _vstore(X, c, o + 2 * L, a2)
        _vstore(X, c, o + 3 * L, a3)
        i += 4
    while i < i1:
        o = i * L
        a0 = _vload(X, c, o)
        for t in range(s):
            a0 = _vfnma(_vload(X, j0 + t, o), _vload(U, t, uc), a0)
        _vstore(X, c, o, a0)
        i += 1


@njit(cache=True, nogil=True)
def _ctrailing(X, j0, j1, kk, U, n):
    """Rank-(j1 - j0) update of every column ``c >= j1``, every lane, in row blocks of ``_CRB``."""
    s = j1 - j0
    for i0 in range(0, n, _CRB):
        i1 = min(i0 + _CRB, n)
        c = j1
        while c + 3 < kk:
            _crank4(X, c, j0, s, U, i0, i1)
            c += 4
        while c < kk:
            _crank1(X, c, j0, s, U, i0, i1)
            c += 1


@njit(cache=True, nogil=True)
def _cpivot_row(U, X, G, s, j0, j, idx, kk):
    """Row ``s`` of ``U``, lane by lane: the pivot row ``idx`` (offsets ``p_l L + l``) in columns ``(j, kk)``.

    ``U[s, c] = (X[c, p] - sum_{t<s} X[j0 + t, p] U[t, c]) / X[j, p]`` as in
    :func:`graft_array._numba.deim._vpivot_row` (the same operations, the
    factor being ``1 / pivot`` rounded, then one multiply).
    """
    L = _simd_width(X)
    one = _one_like(X)
    f = _vsplat(X, one)
    piv = _vgather(X, j, idx)
    f = _vdiv(f, piv)
    for t in range(s):
        _vstore(G, t, 0, _vgather(X, j0 + t, idx))
    for c in range(j + 1, kk):
        a = _vgather(X, c, idx)
        for t in range(s):
            a = _vfnma(_vload(G, t, 0), _vload(U, t, c * L), a)
        _vstore(U, s, c * L, _vmul(a, f))


@njit(cache=True, nogil=True)
def _ccore(X, n, kk, tol, V, src, piv, sel, nrm, have_nrm, U, G, idx, amv, ppv):
    """DEIM of the ``L`` interleaved batches in ``X`` (see the module docstring); ``piv[l, :kk]`` = pivot rows.

    ``tol[l]``: the lane's tolerance (in the units of its scaled values);
    ``V[src[l]]``: its source batch (fill rows by the norms of its rows).
    Scratch: ``sel`` (L, n) bool, ``nrm`` (L, n) float64, ``have_nrm`` (L,) bool,
    ``U`` (_BS, kk L), ``G`` (_BS, L), ``idx`` (L,) int64, ``amv`` (L,) of X's dtype,
    ``ppv`` (L,) int64. Returns the ranks in a new (L,) int64 array.

    Rows selected in earlier panels are zeroed in column ``j`` just before its
    panel pass (one contiguous column, still in L1 after the pass), not in every
    trailing column after their panel: their entries are read by nothing else
    (a selected row is never a pivot row again), so every value and decision is
    that of :func:`graft_array._numba.deim._deim_vcore`.
    """
    L = _simd_width(X)
    one = _one_like(X)
    zero = one - one
    rank = np.zeros(L, np.int64)
    fill = np.zeros(L, np.bool_)
    rows = np.arange(n)
    for l in range(L):
        have_nrm[l] = False
        for i in range(n):
            sel[l, i] = False
    for j0 in range(0, kk, _BS):
        j1 = min(j0 + _BS, kk)
        for j in range(j0, j1):
            s = j - j0
            for t in range(j0):  # rows selected in earlier panels (see above)
                for l in range(L):
                    X[j, piv[l, t] * L + l] = zero
            mv, pv = _cpanel(X, j, j0, s, U, n)
            for l in range(L):
                amv[l] = _vlane(mv, l)
                ppv[l] = _vilane(pv, l)
            if s > 0:
                stale = False
                for l in range(L):
                    for t in range(s):
                        q = piv[l, j0 + t]
                        if q == ppv[l]:
                            stale = True  # the max was a round-off residue of an eliminated row
                        X[j, q * L + l] = zero
                if stale:
                    mv, pv = _cpanel(X, j, j0, 0, U, n)
                    for l in range(L):
                        amv[l] = _vlane(mv, l)
                        ppv[l] = _vilane(pv, l)
            anyfill = False
            for l in range(L):
                if amv[l] > tol[l]:
                    p = ppv[l]
                    rank[l] += 1
                    fill[l] = False
                else:
                    if not have_nrm[l]:
                        _row_norms(V[src[l]], rows, n, nrm[l])
                        have_nrm[l] = True
                    p = _fill_pick(nrm[l], sel[l], n)
                    fill[l] = True
                    anyfill = True
                    for i in range(n):
                        X[j, i * L + l] = zero
                sel[l, p] = True
                piv[l, j] = p
                idx[l] = p * L + l
            if j + 1 < kk:
                _cpivot_row(U, X, G, s, j0, j, idx, kk)
                if anyfill:
                    for l in range(L):
                        if fill[l]:
                            for c in range(j + 1, kk):
                                U[s, c * L + l] = zero
        if j1 < kk:
            _ctrailing(X, j0, j1, kk, U, n)
    return rank


@intrinsic
def _ctrans(typingctx, X, nblk, o, v, offs, mx, nf):
    """For ``c0 = 0, lanes, ..., (nblk - 1) lanes``: load lane ``l``'s ``v[offs[l] + c0 : + lanes]`` (``v`` flat),
    transpose, store to ``X[c0 + t, o : o + lanes]``.

    Also returns the lane-wise ``(max(mx, |x|), nf + sum x 0)`` over the stored
    vectors: per batch (lane) max and a NaN-for-non-finite flag, taken in registers.
    The max is a tree of ``select(a > b)`` (``vmaxpd``; NaNs are caught by the flag).
    The lanes' source pointers are computed once for the row; the only values carried
    from block to block are one max and one sum (a chain of a dependent FMA per
    vector was latency-bound: 4 cycles a vector set the load's speed).
    """
    if not (_is_c2d(X) and isinstance(v, types.Array) and v.ndim == 1 and v.dtype == X.dtype
            and isinstance(offs, types.Array) and offs.ndim == 1 and offs.dtype == types.int64
            and isinstance(mx, _Vec) and mx == nf and mx.dtype == X.dtype):
        return None
    vw = _lanes(X.dtype)
    rt = types.Tuple((mx, mx))

    def codegen(context, builder, sig, args):
        xv, nbv, ov, vv, offv, m0, f0 = args
        tys = sig.args
        intp = context.get_value_type(types.intp)
        nbv = context.cast(builder, nbv, tys[1], types.intp)
        ov = context.cast(builder, ov, tys[2], types.intp)
        xa = context.make_array(tys[0])(context, builder, xv)
        va = context.make_array(tys[3])(context, builder, vv)
        oa = context.make_array(tys[4])(context, builder, offv)
        vty = context.get_value_type(mx)
        ld = cgutils.unpack_tuple(builder, xa.shape)[1]
        al = X.dtype.bitwidth // 8
        fsuf = _vsuffix(mx)
        zero = ir.Constant(vty, [ir.Constant(vty.element, 0.0)] * vw)
        src = [builder.gep(va.data, [builder.load(builder.gep(oa.data, [ir.Constant(intp, k)]))])
               for k in range(vw)]
        dst = builder.gep(xa.data, [ov])
        mp = cgutils.alloca_once_value(builder, m0)
        fp = cgutils.alloca_once_value(builder, f0)
        with cgutils.for_range(builder, nbv) as loop:
            c0 = builder.mul(loop.index, ir.Constant(intp, vw))
            rows = [builder.load(builder.bitcast(builder.gep(p, [c0]), vty.as_pointer()), align=al) for p in src]
            out = _shuffle_transpose(builder, rows, vw)
            absx = []
            g = None
            for k in range(vw):
                x = out[k]
                p = builder.gep(dst, [builder.mul(builder.add(c0, ir.Constant(intp, k)), ld)])
                builder.store(x, builder.bitcast(p, vty.as_pointer()), align=al)
                absx.append(_vec_call(builder, f"llvm.fabs.{fsuf}", vty, [x]))
                # x 0 is +-0 for a finite x and NaN otherwise
                g = builder.fmul(x, zero) if g is None else _vec_call(builder, f"llvm.fma.{fsuf}", vty, [x, zero, g])
            # the exact max of finite entries (a NaN may hide a lane's max, but the flag then marks the batch bad)
            while len(absx) > 1:
                absx = [builder.select(builder.fcmp_ordered(">", a, b), a, b) for a, b in zip(absx[::2], absx[1::2])]
            m = builder.load(mp)
            builder.store(builder.select(builder.fcmp_ordered(">", absx[0], m), absx[0], m), mp)
            builder.store(builder.fadd(builder.load(fp), g), fp)
        return context.make_tuple(builder, rt, [builder.load(mp), builder.load(fp)])

    return rt(X, nblk, o, v, offs, mx, nf), codegen


@njit(cache=True, nogil=True)
def _cload(V, src, offs, n, kk, X, vmax, ok):
    """Transpose the batches ``V[src[l], :, :kk]`` into ``X[c, i L + l]``.

    Also sets per lane ``vmax[l]`` = max |entry| and ``ok[l]`` = all finite over
    the loaded entries, accumulated lane-wise in registers during the
    transpose (the lanes are the batches: no reduction). ``offs`` (L,) int64 scratch.
    """
    L = _simd_width(X)
    nb, _, r = V.shape
    v = V.reshape(nb * n * r)
    kv = kk - kk % L
    m0 = _vzero(X)
    f0 = m0
    for i in range(n):
        for l in range(L):
            offs[l] = (src[l] * n + i) * r
        m0, f0 = _ctrans(X, kv // L, i * L, v, offs, m0, f0)
    for l in range(L):
        vmax[l] = np.float64(_vlane(m0, l))
        x = _vlane(f0, l)
        ok[l] = not math.isnan(x)
    for c in range(kv, kk):  # ragged columns
        for i in range(n):
            for l in range(L):
                x = V[src[l], i, c]
                X[c, i * L + l] = x
                fx = np.float64(x)
                if fx - fx != 0.0:
                    ok[l] = False
                vmax[l] = max(vmax[l], abs(fx))


@njit(cache=True, nogil=True)
def _cpadded(m):
    """Leading dimension of ``X`` for ``m = n L`` entries per column: consecutive columns are never a multiple of
    4 KiB apart (128 x 4 float64 would be exactly 4 KiB: every stream of a rank-8 update in the same L1 sets, and
    4K-aliasing stalls between the stores of one column and the loads of the next)."""
    return (m + 15) // 16 * 16 + 16


@njit(cache=True, nogil=True, parallel=True)
def _deim_compact(V, kk, eps, nthreads):
    """DEIM pivots of every batch of ``V`` (B, n, r), first ``kk`` columns, ``L`` batches per SIMD group.

    The same outputs as :func:`graft_array._numba.deim._deim_batched`:
    ``(piv (B, kk) int64, rank (B,) int64, bad (B,) bool)``; parallel over
    chunks of groups.
    """
    nb, n, r = V.shape
    piv_out = np.empty((nb, kk), np.int64)
    rank_out = np.empty(nb, np.int64)
    bad = np.zeros(nb, np.bool_)
    L = _simd_width(V)
    ng = (nb + L - 1) // L
    nch = min(ng, 4 * nthreads)
    for ch in prange(nch):
        X = np.empty((kk, _cpadded(n * L)), V.dtype)
        U = np.zeros((_BS, kk * L), V.dtype)
        G = np.zeros((_BS, L), V.dtype)
        piv = np.empty((L, kk), np.int64)
        sel = np.empty((L, n), np.bool_)
        nrm = np.empty((L, n), np.float64)
        have_nrm = np.empty(L, np.bool_)
        idx = np.empty(L, np.int64)
        amv = np.empty(L, V.dtype)
        ppv = np.empty(L, np.int64)
        offs = np.empty(L, np.int64)
        src = np.empty(L, np.int64)
        vmax = np.empty(L, np.float64)
        ok = np.empty(L, np.bool_)
        tol = np.empty(L, np.float64)
        sc = np.empty(L, np.float64)
        g0 = ch * ng // nch
        g1 = (ch + 1) * ng // nch
        for g in range(g0, g1):
            b0 = g * L
            nl = min(L, nb - b0)  # real batches in this group
            for l in range(L):
                src[l] = b0 + (l if l < nl else 0)
            _cload(V, src, offs, n, kk, X, vmax, ok)
            if kk != r:  # the tolerance and the finiteness check are on the whole batch
                for l in range(nl):
                    vmax[l], ok[l] = _absmax_finite(V[b0 + l].reshape(n * r))
                for l in range(nl, L):
                    vmax[l] = vmax[0]
                    ok[l] = ok[0]
            good = -1
            for l in range(nl):
                if ok[l]:
                    good = l
                    break
            for l in range(nl):
                if not ok[l]:
                    bad[b0 + l] = True
                    rank_out[b0 + l] = 0
                    for j in range(kk):
                        piv_out[b0 + l, j] = j
            if good < 0:
                continue
            for l in range(L):
                if not ok[l]:  # run a copy of a good lane instead (its results are dropped)
                    src[l] = src[good]
                    vmax[l] = vmax[good]
                    for c in range(kk):
                        for i in range(n):
                            X[c, i * L + l] = X[c, i * L + good]
            for l in range(L):
                sc[l] = _elim_scale(X, vmax[l])
                if sc[l] != 1.0:  # far from 1: eliminate on V_b 2^-e (exact, in float64 as _scale_cols)
                    for c in range(kk):
                        for i in range(n):
                            X[c, i * L + l] = np.float64(X[c, i * L + l]) * sc[l]
                tol[l] = _rank_factor(n, r) * eps * (vmax[l] * sc[l])
            # no software prefetch of the next group: measured 2.5% slower with V in the cache and 17% slower
            # with V in memory (4000 x 128 x 32 float64) than the hardware prefetchers alone
            rank = _ccore(X, n, kk, tol, V, src, piv, sel, nrm, have_nrm, U, G, idx, amv, ppv)
            for l in range(nl):
                if ok[l]:
                    rank_out[b0 + l] = rank[l]
                    for j in range(kk):
                        piv_out[b0 + l, j] = piv[l, j]
    return piv_out, rank_out, bad
