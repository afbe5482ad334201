"""Numba CPU kernels of the maxvol family (deim, volume, tournament, rect extension, refine).

The contract (pivot order, ties, tolerances, fill rule, ...) is the one of
:mod:`graft_array._agnostic.maxvol`; this module only changes *how* it is
computed. Everything for all batches runs in one compiled call, parallel over
batches (``prange``), or over tiles / row blocks when there are fewer batches
than threads.

Layout tricks
-------------
DEIM (greedy LU row pivots, = LAPACK ``getrf``):

* **Column-major work buffer.** Each batch (or tournament tile) is transposed
  once into ``W`` of shape ``(k, m)``: ``W[c]`` is column ``c`` of the matrix,
  contiguous over the rows, so every elimination loop is a contiguous,
  vectorised axpy over rows and the pivot search is a contiguous scan.
* **No row swaps.** A selected row is *zeroed* in the remaining columns
  instead of being swapped to the front. Rows keep their positions (which are
  in ascending row-index order), so "ties go to the lowest index" is simply
  "first position", and the unselected rows never need compacting. A zero row
  cannot win the next argmax unless every candidate is <= tol (then a fill row
  is taken anyway). The price is updating up to ``k`` extra (zero) rows.
* **Blocked, rank-8 updates.** Pivots are chosen in panels of ``_BS = 8``
  columns. Inside a panel each column is brought up to date just before its
  pivot search with one rank-s pass (left-looking); after the panel every
  trailing column gets a single rank-8 pass (right-looking, row-blocked so that
  the eight multiplier vectors stay in L1). One load/store of a column per
  eight multiply-adds instead of one per multiply-add. The updates are written
  as small separate kernels (``_upd1/2/4/8``): LLVM vectorises those reliably,
  it does not when they are inlined into a large loop nest.
* **Vectorised argmax.** LLVM does not vectorise float max-reductions without
  no-NaN function attributes, so the pivot search compares the IEEE bit
  patterns of ``|x|`` as integers (monotone for finite floats), chunk by chunk,
  and then scans only the winning chunk for the first position.
* float32 stays float32 in the elimination (like ``sgetrf``).
* **Whole-vector kernels for the batched DEIM and the tournament tiles**
  (``_deim_vcore``): the same panels and decisions, written on explicit 256-bit
  vectors (``_Vec`` intrinsics): the row count is padded with zero rows to whole
  vectors, the trailing update is a 3-vector x 4-column register tile (4 x 2 and
  4 x 1 for the last columns), each panel column's
  update tracks its first argmax lane by lane in the same pass (no separate
  pivot search), the pivot row is computed on vectors of columns, and the next
  batch is prefetched a slice per step. Each batch's ``max |V_b|`` pass also
  flags NaN / infinity, so the wrapper needs no separate finiteness pass.

Tournament: tiles of ``tile_rows`` rows are independent DEIMs (``_deim_vcore``),
run in parallel over (batch, tile) pairs, level by level. Each thread keeps one
set of work buffers and claims tiles one at a time from an atomic counter (a
thread slowed down by other work on the machine just takes fewer tiles); it
claims its next tile first and prefetches it while eliminating the current one.
The whole-batch tolerance needs ``max|V_b|``; instead of an extra pass over V,
level 0 uses each tile's own (smaller) max, taken during the tile's transpose
together with the NaN / infinity check (so V is read once, and ``check_finite``
needs no pass of its own), and records the smallest pivot it accepted; a tile
is redone with the true tolerance only if that pivot could have been refused
by it (never happens on full-rank input).

Volume (greedy volume = QR with column pivoting on V^T), float64: residual
norms only decrease, so a row's last computed residual norm is an upper bound
of its current one. Rows are brought up to date lazily: each step evaluates the
row of largest bound, then only the rows whose bound is still >= the best exact
value found, each with the dot products against all directions added since its
last update (one visit of the row instead of one pass over V per pivot). The
arithmetic per row (downdate order, geqp3-style recomputation) is exactly the
eager one, and bounds carry a tiny slack covering the recomputations, so the
argmax is the eager argmax.
"""

import math

import numba
import numpy as np
import llvmlite.binding as _llvm
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

from .._common import default_tile_rows
from .checks import unit_scale

__all__ = ["run_maxvol"]

# Fast-math flags: reassociation and FMA contraction (only change rounding). Not nnan/ninf: the code
# compares with +-inf sentinels. The max-reductions get their no-NaN flag from _fmax itself.
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
_BS = 8  # panel width of the blocked elimination (rank of the trailing updates)
_RB = 256  # rows per cache block of the trailing update (8 multiplier blocks stay in L1)
_NOT_FOUND = -1
# llvm.prefetch is overloaded on the pointer type: 'p0' with opaque pointers (LLVM >= 15), 'p0i8' before.
_PREFETCH_NAME = "llvm.prefetch.p0" if _llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"
_ROWPAR_MIN_ROWS = 4096  # fewer batches than threads and at least this many rows: split the rows instead


# ---------------------------------------------------------------------------
# Scalar helpers
# ---------------------------------------------------------------------------


@intrinsic
def _fmax(typingctx, a, b):
    """``max(a, b)`` as ``llvm.maxnum`` with fast-math flags (no NaNs here).

    LLVM vectorises a max-reduction written with it; Python's ``max`` or a
    compare-and-select stays scalar in numba (the select carries no no-NaN flag).
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(a)
        name = "llvm.maxnum.f32" if a == types.float32 else "llvm.maxnum.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lty, [lty, lty]), name)
        return builder.call(fn, args, fastmath=("fast",))

    return a(a, b), codegen


@intrinsic
def _prefetch_row(typingctx, X, i):
    """Software prefetch (``llvm.prefetch``, read, high locality) of the 8 cache lines from ``X[i, 0]``."""
    if not (isinstance(X, types.Array) and X.ndim == 2 and X.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        xa = context.make_array(signature.args[0])(context, builder, args[0])
        iv = context.cast(builder, args[1], signature.args[1], types.intp)
        p = cgutils.get_item_pointer2(context, builder, xa.data, cgutils.unpack_tuple(builder, xa.shape),
                                      cgutils.unpack_tuple(builder, xa.strides), "C",
                                      [iv, context.get_constant(types.intp, 0)])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            _PREFETCH_NAME)
        base = builder.bitcast(p, i8p)
        nbytes = X.dtype.bitwidth // 8 * 64
        for off in range(0, nbytes, 64):
            builder.call(fn, [builder.gep(base, [ir.Constant(ir.IntType(64), off)]), ir.Constant(i32, 0),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(X, i), codegen


@intrinsic
def _prefetch_at(typingctx, x, i):
    """Software prefetch (``llvm.prefetch``, read, high locality) of the cache line holding ``x[i]`` (1-D)."""
    if not (isinstance(x, types.Array) and x.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        xa = context.make_array(signature.args[0])(context, builder, args[0])
        iv = context.cast(builder, args[1], signature.args[1], types.intp)
        p = cgutils.get_item_pointer2(context, builder, xa.data, cgutils.unpack_tuple(builder, xa.shape),
                                      cgutils.unpack_tuple(builder, xa.strides), x.layout, [iv])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            _PREFETCH_NAME)
        builder.call(fn, [builder.bitcast(p, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(x, i), codegen


def _one_like(a):  # pragma: no cover - replaced by the overload inside compiled code
    raise NotImplementedError


@overload(_one_like)
def _one_like_ol(a):
    """1 in the dtype of array ``a`` (keeps float32 arithmetic float32)."""
    if a.dtype == types.float32:
        return lambda a: np.float32(1.0)
    return lambda a: np.float64(1.0)


def _simd_width(a):  # pragma: no cover - replaced by the overload inside compiled code
    raise NotImplementedError


def _lanes(dtype):
    """Elements of ``dtype`` in one 256-bit vector (the transpose block size)."""
    return 8 if dtype == types.float32 else 4


@overload(_simd_width)
def _simd_width_ol(a):
    w = _lanes(a.dtype)
    return lambda a: w


# ---------------------------------------------------------------------------
# Exact power-of-two scaling (scale invariance at the ends of the range)
# ---------------------------------------------------------------------------
# Squares and dot products of |V| ~ 1e200 overflow, of 1e-200 underflow.
#
# The float64 kernels (row norms, volume, k > r, refine) load V's values as
# float64 and run on the batch itself whenever its largest |entry| a satisfies
# a == 0 or 2^-256 <= a and a sqrt(r) <= 2^256 (:func:`_in_band`, decided from
# max |V_b| alone, one rule for every kernel and for the generic twin), so that
# its largest row norm M (a <= M <= a sqrt(r)) is in [2^-256, 2^256]. Outside it
# they run on a float64 copy times unit_scale(a) (exact; max |entry| is then in
# [1/2, 4), or at least 2^-51 for a batch of subnormals: inside the band).
# Why this band: inside it every square, Gram entry and sum of squares is at
# most about r 2^512 (finite), and every quantity down to 2^-255 M (row norms,
# residual norms and their downdates, the rank tolerance
# max(n, r) eps M >= 2^-308) has a normal square (>= 2^-1022), 200 binary
# orders of magnitude below the tolerance; refine forms no squares, only
# ratios to entries of A_S, and refuses pivots below max(n, r) eps a. So no
# value that decides a pivot is rounded by an over- or underflow, and as the
# kernels are homogeneous (relative tolerances, orthonormal directions,
# B = A inv(A_S) scale-free) and power-of-two scaling is exact, the rows of
# V 2^j are the rows of V whenever V 2^j is exactly representable, across the
# band's edges too (only the order among fill rows of norm below 2^-255 M,
# numerically zero rows, could depend on the scale). float32 input never
# leaves the band (its largest finite value is below 2^128, its smallest
# nonzero one above 2^-150, and an all-zero batch is accepted as it is): it
# only gets float64 accumulation, never a copy. Data of ordinary magnitude is
# inside the band: no extra multiply, fence or copy on the hot path.
#
# The DEIM eliminations (in V's dtype) scale their work buffer only when
# max |V_b| leaves a wide band around 1 (:func:`_elim_scale`, one compare per
# batch on the hot path).

_BAND_LO = 2.0 ** -256  # band of max |V_b| (and of max |V_b| sqrt(r)) of a float64 kernel's input (see above)
_BAND_HI = 2.0 ** 256


@njit(cache=True, nogil=True)
def _in_band(amax, r):
    """A float64 kernel may run unscaled on a batch of ``r`` columns and largest ``|entry|`` ``amax`` (False for NaN)."""
    return amax == 0.0 or (_BAND_LO <= amax and amax * math.sqrt(r) <= _BAND_HI)


@njit(cache=True, nogil=True)
def _scaled64(X, rows, c, sc):
    """float64 copy of ``X[rows, :c]`` times ``sc`` (a power of two from :func:`unit_scale`: exact).

    Used only outside the band (:func:`_in_band`); rare, so plain loops.
    """
    m = rows.shape[0]
    Xs = np.empty((m, c))
    for i in range(m):
        for t in range(c):
            Xs[i, t] = np.float64(X[rows[i], t]) * sc
    return Xs


def _elim_band(a):  # pragma: no cover - replaced by the overload inside compiled code
    raise NotImplementedError


@overload(_elim_band)
def _elim_band_ol(a):
    """``(lo, hi)``: a DEIM batch whose ``max |V_b|`` is outside runs on ``V_b`` scaled by :func:`unit_scale`.

    Inside, the LU growth cannot overflow and the residuals down to
    ``eps * max |V_b|`` (and the tolerance) stay normal numbers.
    """
    if a.dtype == types.float32:
        return lambda a: (2.0 ** -60, 2.0 ** 60)
    return lambda a: (2.0 ** -500, 2.0 ** 500)


@njit(cache=True, nogil=True)
def _elim_scale(W, vmax):
    """Scale of a DEIM work buffer of ``W``'s dtype for a batch (tile) of max ``vmax``: 1 inside the band."""
    lo, hi = _elim_band(W)
    vmax = np.float64(vmax)
    if lo <= vmax <= hi or vmax == 0.0:
        return 1.0
    return unit_scale(vmax)


@njit(cache=True, nogil=True)
def _scale_cols(W, kk, m, sc):
    """``W[:kk, :m] *= sc`` (a power of two: exact; computed in float64)."""
    for c in range(kk):
        for i in range(m):
            W[c, i] = np.float64(W[c, i]) * sc


@intrinsic
def _transpose_block(typingctx, W, i0, X, rows, c0):
    """``W[c0 + t, i0 + k] = X[rows[i0 + k], c0 + t]`` for ``t, k < w`` (``w`` = one 256-bit vector).

    ``w`` row loads, an in-register transpose (unpack / shuffle / lane permute,
    the classic AVX pattern) and ``w`` stores. Numba cannot express this (its
    SLP vectoriser is off), and the scalar transpose costs ~1 cycle per element.
    Both arrays must be C-contiguous 2-D of the same float dtype.
    """
    if not (isinstance(W, types.Array) and isinstance(X, types.Array) and W.dtype == X.dtype
            and W.dtype in (types.float32, types.float64) and W.ndim == 2 and X.ndim == 2
            and W.layout == "C" and X.layout == "C" and isinstance(rows, types.Array) and rows.ndim == 1):
        return None
    vw = _lanes(W.dtype)

    def codegen(context, builder, signature, args):
        wv, i0v, xv, rv, c0v = args
        tys = signature.args
        intp = context.get_value_type(types.intp)
        i0v = context.cast(builder, i0v, tys[1], types.intp)
        c0v = context.cast(builder, c0v, tys[4], types.intp)
        wa = context.make_array(tys[0])(context, builder, wv)
        xa = context.make_array(tys[2])(context, builder, xv)
        ra = context.make_array(tys[3])(context, builder, rv)
        vptr = ir.VectorType(context.get_value_type(W.dtype), vw).as_pointer()

        def ptr(ary, aty, inds):
            return cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
                                             cgutils.unpack_tuple(builder, ary.strides), aty.layout, inds)

        v = []
        for k in range(vw):
            rk = builder.load(ptr(ra, tys[3], [builder.add(i0v, ir.Constant(intp, k))]))
            rk = context.cast(builder, rk, tys[3].dtype, types.intp)
            load = builder.load(builder.bitcast(ptr(xa, tys[2], [rk, c0v]), vptr))
            load.align = 1
            v.append(load)

        def sh(a, b, idx):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), vw), idx))

        if vw == 4:
            t0, t1 = sh(v[0], v[1], [0, 4, 2, 6]), sh(v[0], v[1], [1, 5, 3, 7])
            t2, t3 = sh(v[2], v[3], [0, 4, 2, 6]), sh(v[2], v[3], [1, 5, 3, 7])
            out = [sh(t0, t2, [0, 1, 4, 5]), sh(t1, t3, [0, 1, 4, 5]),
                   sh(t0, t2, [2, 3, 6, 7]), sh(t1, t3, [2, 3, 6, 7])]
        else:
            ulo, uhi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
            t = []
            for k in range(4):
                t += [sh(v[2 * k], v[2 * k + 1], ulo), sh(v[2 * k], v[2 * k + 1], uhi)]
            slo, shi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
            q = [sh(t[0], t[2], slo), sh(t[0], t[2], shi), sh(t[1], t[3], slo), sh(t[1], t[3], shi),
                 sh(t[4], t[6], slo), sh(t[4], t[6], shi), sh(t[5], t[7], slo), sh(t[5], t[7], shi)]
            lo, hi = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
            out = [sh(q[k], q[k + 4], lo) for k in range(4)] + [sh(q[k], q[k + 4], hi) for k in range(4)]
        for k in range(vw):
            st = builder.store(out[k], builder.bitcast(ptr(wa, tys[0], [builder.add(c0v, ir.Constant(intp, k)), i0v]),
                                                       vptr))
            st.align = 1
        return context.get_dummy_value()

    return types.none(W, i0, X, rows, c0), codegen


@intrinsic
def _claim(typingctx, ctr):
    """Atomically ``ctr[0] += 1``; returns the old value (a work counter shared by the threads)."""
    if not (isinstance(ctr, types.Array) and ctr.dtype == types.int64 and ctr.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", a.data, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(ctr), codegen


@njit(cache=True, nogil=True)
def _padded(m):
    """Leading dimension for a work buffer of ``m`` rows.

    A multiple of 16 elements plus 16: consecutive columns never sit a multiple
    of 4 KiB apart, so the nine streams of a rank-8 update do not collide in
    the same L1 sets.
    """
    return (m + 15) // 16 * 16 + 16


# ---------------------------------------------------------------------------
# Explicit 256-bit vectors (one value of type _Vec is one ymm register)
# ---------------------------------------------------------------------------
# The DEIM kernels below are written on whole vectors with these intrinsics:
# register tiles whose size is fixed in the source (LLVM's loop vectoriser
# interleaves the rank-8 loops into more live vectors than there are registers,
# and pays alias checks and scalar epilogues on every short call). Every entry
# goes through the same sequence of fused multiply-adds whatever tile it falls
# in, so equal rows stay bitwise equal (ties are decided as in the scalar code).


class _Vec(types.Type):
    """A 256-bit vector of ``dtype`` (4 float64 or 8 float32)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = _lanes(dtype)
        super().__init__(name=f"_Vec({dtype})")


@register_model(_Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes))


def _is_c2d(A):
    return (isinstance(A, types.Array) and A.ndim == 2 and A.layout == "C"
            and A.dtype in (types.float32, types.float64))


def _elt_ptr(context, builder, aty, aval, ind_tys, inds):
    """Pointer to ``A[inds]`` (C-contiguous, no wraparound, no bounds check)."""
    ary = context.make_array(aty)(context, builder, aval)
    inds = [context.cast(builder, v, t, types.intp) for v, t in zip(inds, ind_tys)]
    return cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape),
                                     cgutils.unpack_tuple(builder, ary.strides), "C", inds)


def _vec_call(builder, name, vty, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * len(args)), name)
    return builder.call(fn, args)


def _vsuffix(vt):
    return f"v{vt.lanes}f{vt.dtype.bitwidth}"


@intrinsic
def _vload(typingctx, A, i, j):
    """The vector ``A[i, j : j + lanes]``."""
    if not _is_c2d(A):
        return None
    vt = _Vec(A.dtype)

    def codegen(context, builder, sig, args):
        p = _elt_ptr(context, builder, sig.args[0], args[0], sig.args[1:], args[1:])
        vty = context.get_value_type(vt)
        return builder.load(builder.bitcast(p, vty.as_pointer()), align=A.dtype.bitwidth // 8)

    return vt(A, i, j), codegen


@intrinsic
def _vstore(typingctx, A, i, j, v):
    """``A[i, j : j + lanes] = v``."""
    if not (_is_c2d(A) and isinstance(v, _Vec) and v.dtype == A.dtype):
        return None

    def codegen(context, builder, sig, args):
        p = _elt_ptr(context, builder, sig.args[0], args[0], sig.args[1:3], args[1:3])
        builder.store(args[3], builder.bitcast(p, args[3].type.as_pointer()), align=A.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(A, i, j, v), codegen


@intrinsic
def _vbcast(typingctx, A, i, j):
    """The scalar ``A[i, j]`` in every lane."""
    if not _is_c2d(A):
        return None
    vt = _Vec(A.dtype)

    def codegen(context, builder, sig, args):
        p = _elt_ptr(context, builder, sig.args[0], args[0], sig.args[1:], args[1:])
        x = builder.load(p)
        vty = context.get_value_type(vt)
        v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), vt.lanes), [0] * vt.lanes))

    return vt(A, i, j), codegen


@intrinsic
def _vsplat(typingctx, A, x):
    """``x`` (cast to ``A``'s dtype) in every lane."""
    if not (isinstance(A, types.Array) and A.dtype in (types.float32, types.float64) and isinstance(x, types.Number)):
        return None
    vt = _Vec(A.dtype)

    def codegen(context, builder, sig, args):
        xv = context.cast(builder, args[1], sig.args[1], A.dtype)
        vty = context.get_value_type(vt)
        v = builder.insert_element(ir.Constant(vty, ir.Undefined), xv, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), vt.lanes), [0] * vt.lanes))

    return vt(A, x), codegen


@intrinsic
def _vzero(typingctx, A):
    """A zero vector of ``A``'s dtype."""
    if not (isinstance(A, types.Array) and A.dtype in (types.float32, types.float64)):
        return None
    vt = _Vec(A.dtype)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        return ir.Constant(vty, [ir.Constant(vty.element, 0.0)] * vt.lanes)

    return vt(A), codegen


@intrinsic
def _vfnma(typingctx, a, b, c):
    """``c - a * b`` rounded once (``llvm.fma(-a, b, c)``)."""
    if not (isinstance(a, _Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        x, y, z = args
        return _vec_call(builder, f"llvm.fma.{_vsuffix(a)}", x.type, [builder.fneg(x), y, z])

    return a(a, b, c), codegen


@intrinsic
def _vmul(typingctx, a, b):
    """``a * b`` lane by lane."""
    if not (isinstance(a, _Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def _vabsmax(typingctx, m, v):
    """``max(m, |v|)`` lane by lane (``llvm.maxnum``; no NaNs here)."""
    if not (isinstance(m, _Vec) and m == v):
        return None

    def codegen(context, builder, sig, args):
        x, y = args
        ay = _vec_call(builder, f"llvm.fabs.{_vsuffix(m)}", y.type, [y])
        return _vec_call(builder, f"llvm.maxnum.{_vsuffix(m)}", x.type, [x, ay])

    return m(m, v), codegen


@intrinsic
def _vhmax(typingctx, v):
    """Largest lane of ``v`` (a scalar)."""
    if not isinstance(v, _Vec):
        return None

    def codegen(context, builder, sig, args):
        def combine(lo, hi, n):
            return _vec_call(builder, f"llvm.maxnum.v{n}f{v.dtype.bitwidth}", lo.type, [lo, hi])

        return _lane_reduce(builder, args[0], v.lanes, combine)

    return v.dtype(v), codegen


def _lane_reduce(builder, x, lanes, combine):
    """Reduce the lanes of vector ``x`` to a scalar by pairwise halving: ``combine(lo, hi, n)`` on halves of n lanes."""
    n = lanes
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n))))
        hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n, 2 * n))))
        x = combine(lo, hi, n)
    return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))


class _VecI(types.Type):
    """Lane indices for :class:`_Vec` of ``dtype``: int64 lanes for float64, int32 for float32."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = _lanes(dtype)
        super().__init__(name=f"_VecI({dtype})")


@register_model(_VecI)
class _VecIModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.IntType(fe_type.dtype.bitwidth), fe_type.lanes))


@intrinsic
def _viota(typingctx, A, i):
    """Lane indices ``[i, i + 1, ..., i + lanes - 1]`` for vectors of ``A``'s dtype."""
    if not (isinstance(A, types.Array) and A.dtype in (types.float32, types.float64) and isinstance(i, types.Integer)):
        return None
    it = _VecI(A.dtype)

    def codegen(context, builder, sig, args):
        ity = ir.IntType(A.dtype.bitwidth)
        vty = ir.VectorType(ity, it.lanes)
        x = builder.trunc(args[1], ity) if ity.width < args[1].type.width else args[1]
        v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
        v = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), it.lanes), [0] * it.lanes))
        return builder.add(v, ir.Constant(vty, list(range(it.lanes))))

    return it(A, i), codegen


@intrinsic
def _vargmax(typingctx, mx, mi, v, iv):
    """One step of a lane-wise first-argmax of ``|v|``: ``(max, index)`` where ``|v| > mx`` strictly."""
    if not (isinstance(mx, _Vec) and mx == v and isinstance(mi, _VecI) and mi == iv and mi.dtype == mx.dtype):
        return None
    rt = types.Tuple((mx, mi))

    def codegen(context, builder, sig, args):
        m, i, x, xi = args
        ax = _vec_call(builder, f"llvm.fabs.{_vsuffix(mx)}", x.type, [x])
        gt = builder.fcmp_ordered(">", ax, m)
        return context.make_tuple(builder, rt, [builder.select(gt, ax, m), builder.select(gt, xi, i)])

    return rt(mx, mi, v, iv), codegen


@intrinsic
def _vargmax_merge(typingctx, ma, ia, mb, ib):
    """Lane-wise merge of two first-argmax states (larger value; on a tie the lower index)."""
    if not (isinstance(ma, _Vec) and ma == mb and isinstance(ia, _VecI) and ia == ib):
        return None
    rt = types.Tuple((ma, ia))

    def codegen(context, builder, sig, args):
        a, i, b, j = args
        take = builder.or_(builder.fcmp_ordered(">", b, a),
                           builder.and_(builder.fcmp_ordered("==", b, a), builder.icmp_signed("<", j, i)))
        return context.make_tuple(builder, rt, [builder.select(take, b, a), builder.select(take, j, i)])

    return rt(ma, ia, mb, ib), codegen


@intrinsic
def _vargmax_final(typingctx, mx, mi):
    """``(max over lanes, lowest index among the lanes holding it)`` as (scalar, int64)."""
    if not (isinstance(mx, _Vec) and isinstance(mi, _VecI)):
        return None
    rt = types.Tuple((mx.dtype, types.int64))

    def codegen(context, builder, sig, args):
        m, i = args
        i32 = ir.IntType(32)
        vals = [builder.extract_element(m, ir.Constant(i32, k)) for k in range(mx.lanes)]
        idxs = [builder.extract_element(i, ir.Constant(i32, k)) for k in range(mx.lanes)]
        bv, bi = vals[0], idxs[0]
        for k in range(1, mx.lanes):
            take = builder.or_(builder.fcmp_ordered(">", vals[k], bv),
                               builder.and_(builder.fcmp_ordered("==", vals[k], bv),
                                            builder.icmp_signed("<", idxs[k], bi)))
            bv = builder.select(take, vals[k], bv)
            bi = builder.select(take, idxs[k], bi)
        if bi.type.width < 64:
            bi = builder.sext(bi, ir.IntType(64))
        return context.make_tuple(builder, rt, [bv, bi])

    return rt(mx, mi), codegen


@intrinsic
def _vgather_col(typingctx, A, c, p):
    """The vector ``[A[c, p], A[c + 1, p], ..., A[c + lanes - 1, p]]`` (a column of a C array)."""
    if not _is_c2d(A):
        return None
    vt = _Vec(A.dtype)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ld = cgutils.unpack_tuple(builder, ary.shape)[1]
        cc = context.cast(builder, args[1], sig.args[1], types.intp)
        pp = context.cast(builder, args[2], sig.args[2], types.intp)
        vty = context.get_value_type(vt)
        v = ir.Constant(vty, ir.Undefined)
        base = builder.gep(ary.data, [builder.add(builder.mul(cc, ld), pp)])
        for k in range(vt.lanes):
            x = builder.load(builder.gep(base, [builder.mul(ld, ir.Constant(ld.type, k))]))
            v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), k))
        return v

    return vt(A, c, p), codegen


@intrinsic
def _vnonfinite(typingctx, acc, v):
    """``acc + (v - v)`` in strict IEEE arithmetic: NaN from the first NaN or infinity of ``v`` on."""
    if not (isinstance(acc, _Vec) and acc == v):
        return None

    def codegen(context, builder, sig, args):
        a, x = args
        return builder.fadd(a, builder.fsub(x, x))

    return acc(acc, v), codegen


@intrinsic
def _vlanesum_isnan(typingctx, v):
    """True when some lane of ``v`` is NaN."""
    if not isinstance(v, _Vec):
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        bits = builder.bitcast(builder.fcmp_unordered("uno", x, x), ir.IntType(v.lanes))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(v.lanes), 0))

    return types.boolean(v), codegen


# ---------------------------------------------------------------------------
# Vector kernels on the column-major work buffer W (k, m)
# ---------------------------------------------------------------------------
# They index with unsigned integers: with signed indices numba emits the
# negative-index wraparound, which hides the affine access pattern from LLVM
# ("unsafe indirect dependence") and the loops stay scalar. Each update also
# returns max |W[c, i]| of the updated rows (a free by-product) for the pivot
# search of the next column.


@njit(cache=True, nogil=True, fastmath=_FM)
def _col_absmax(W, c, i0, i1):
    """``max |W[c, i]|`` for ``i0 <= i < i1`` (``i0 < i1``)."""
    c = np.uint64(c)
    best = abs(W[c, np.uint64(i0)])
    for i in range(np.uint64(i0), np.uint64(i1)):
        best = _fmax(best, abs(W[c, i]))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _absmax_flat(x):
    """``max |x|`` of a contiguous 1-D float array as float64 (0 if empty)."""
    if x.shape[0] == 0:
        return 0.0
    best = abs(x[0])
    for i in range(np.uint64(x.shape[0])):
        best = _fmax(best, abs(x[i]))
    return float(best)


@njit(cache=True, nogil=True, fastmath=_FM)
def _first_abs_equal(W, c, val, m):
    """Lowest ``i < m`` with ``|W[c, i]| == val``, or ``_NOT_FOUND``.

    Branch-free (vectorised) minimum of the matching indices over blocks of 256
    rows, stopping after the first block that matches: a plain early-exit scan
    costs a branch misprediction at the (random) pivot position.
    """
    cu = np.uint64(c)
    for i0 in range(0, m, 256):
        i1 = min(i0 + 256, m)
        pos = np.int64(i1)
        for i in range(np.uint64(i0), np.uint64(i1)):
            k = np.int64(i)
            pos = min(pos, k if abs(W[cu, i]) == val else np.int64(i1))
        if pos < i1:
            return pos
    return _NOT_FOUND


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd1(W, c, j, u0, i0, i1):
    """``W[c, i] -= W[j, i] u0`` for ``i0 <= i < i1``; returns the new ``max |W[c, i]|``."""
    c = np.uint64(c)
    j = np.uint64(j)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - W[j, i] * u0
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd2(W, c, j, u0, u1, i0, i1):
    """Rank-2 update of column ``c`` by multiplier columns ``j, j+1``, see :func:`_upd1`."""
    c = np.uint64(c)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - (W[j0, i] * u0 + W[j1, i] * u1)
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd4(W, c, j, u0, u1, u2, u3, i0, i1):
    """Rank-4 update of column ``c`` by multiplier columns ``j .. j+3``, see :func:`_upd1`."""
    c = np.uint64(c)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    j2 = j0 + np.uint64(2)
    j3 = j0 + np.uint64(3)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - ((W[j0, i] * u0 + W[j1, i] * u1) + (W[j2, i] * u2 + W[j3, i] * u3))
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd8(W, c, j, u0, u1, u2, u3, u4, u5, u6, u7, i0, i1):
    """Rank-8 update of column ``c`` by multiplier columns ``j .. j+7``, see :func:`_upd1`.

    One load/store of ``W[c]`` per eight multiply-adds.
    """
    c = np.uint64(c)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    j2 = j0 + np.uint64(2)
    j3 = j0 + np.uint64(3)
    j4 = j0 + np.uint64(4)
    j5 = j0 + np.uint64(5)
    j6 = j0 + np.uint64(6)
    j7 = j0 + np.uint64(7)
    best = W[c, np.uint64(i0)] - W[c, np.uint64(i0)]  # typed zero (finite input)
    for i in range(np.uint64(i0), np.uint64(i1)):
        x = W[c, i] - (((W[j0, i] * u0 + W[j1, i] * u1) + (W[j2, i] * u2 + W[j3, i] * u3)) + (
            (W[j4, i] * u4 + W[j5, i] * u5) + (W[j6, i] * u6 + W[j7, i] * u7)))
        W[c, i] = x
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _upd8x2(W, c, j, u0, u1, u2, u3, u4, u5, u6, u7, v0, v1, v2, v3, v4, v5, v6, v7, i0, i1):
    """Rank-8 update of the two columns ``c`` (by ``u``) and ``c+1`` (by ``v``).

    Shares the multiplier loads between the two columns (10 loads per 16
    multiply-adds). Returns the new ``max |W[c, i]|`` of the first column.
    """
    c0 = np.uint64(c)
    c1 = c0 + np.uint64(1)
    j0 = np.uint64(j)
    j1 = j0 + np.uint64(1)
    j2 = j0 + np.uint64(2)
    j3 = j0 + np.uint64(3)
    j4 = j0 + np.uint64(4)
    j5 = j0 + np.uint64(5)
    j6 = j0 + np.uint64(6)
    j7 = j0 + np.uint64(7)
    best = W[c0, np.uint64(i0)] - W[c0, np.uint64(i0)]
    for i in range(np.uint64(i0), np.uint64(i1)):
        l0 = W[j0, i]
        l1 = W[j1, i]
        l2 = W[j2, i]
        l3 = W[j3, i]
        l4 = W[j4, i]
        l5 = W[j5, i]
        l6 = W[j6, i]
        l7 = W[j7, i]
        x = W[c0, i] - (((l0 * u0 + l1 * u1) + (l2 * u2 + l3 * u3)) + ((l4 * u4 + l5 * u5) + (l6 * u6 + l7 * u7)))
        y = W[c1, i] - (((l0 * v0 + l1 * v1) + (l2 * v2 + l3 * v3)) + ((l4 * v4 + l5 * v5) + (l6 * v6 + l7 * v7)))
        W[c0, i] = x
        W[c1, i] = y
        best = _fmax(best, abs(x))
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _trailing_update(W, j0, j1, kk, U, i0, i1):
    """Rank-(j1 - j0) update of every column ``c >= j1`` over rows ``[i0, i1)``.

    Returns ``max |W[j1, i]|`` over those rows (the next pivot column).
    """
    c = j1
    best = W[c, i0] - W[c, i0]
    if j1 - j0 == 8:
        while c + 1 < kk:
            cm = _upd8x2(W, c, j0, U[0, c], U[1, c], U[2, c], U[3, c], U[4, c], U[5, c], U[6, c], U[7, c],
                         U[0, c + 1], U[1, c + 1], U[2, c + 1], U[3, c + 1],
                         U[4, c + 1], U[5, c + 1], U[6, c + 1], U[7, c + 1], i0, i1)
            if c == j1:
                best = cm
            c += 2
    while c < kk:
        cm = _rank_update(W, c, j0, j1 - j0, U, i0, i1)
        if c == j1:
            best = cm
        c += 1
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _rank_update(W, c, j0, s, U, i0, i1):
    """``W[c, i] -= sum_{t<s} W[j0+t, i] U[t, c]`` for ``i0 <= i < i1``, in passes of rank 8/4/2/1.

    Returns ``max |W[c, i]|`` over the updated rows (``s >= 1``).
    """
    t = 0
    best = W[c, i0] - W[c, i0]
    while s - t >= 8:
        best = _upd8(W, c, j0 + t, U[t, c], U[t + 1, c], U[t + 2, c], U[t + 3, c],
                     U[t + 4, c], U[t + 5, c], U[t + 6, c], U[t + 7, c], i0, i1)
        t += 8
    if s - t >= 4:
        best = _upd4(W, c, j0 + t, U[t, c], U[t + 1, c], U[t + 2, c], U[t + 3, c], i0, i1)
        t += 4
    if s - t >= 2:
        best = _upd2(W, c, j0 + t, U[t, c], U[t + 1, c], i0, i1)
        t += 2
    if s - t >= 1:
        best = _upd1(W, c, j0 + t, U[t, c], i0, i1)
    return best


@njit(cache=True, nogil=True, fastmath=_FM)
def _pivot_row(U, W, s, j0, p, f, c0, c1):
    """Row ``s`` of ``U``: pivot row ``p`` in columns ``[c0, c1)`` after the panel's first ``s`` steps, times ``f``.

    The multiplier columns are kept unscaled (``W[j0 + t] = pivot_t * L_t``) and
    the factor ``f = 1 / pivot_s`` goes into ``U`` instead, which saves a pass
    over every pivot column: ``U[s, c] = f (W[c, p] - sum_{t<s} W[j0 + t, p] U[t, c])``.
    """
    su = np.uint64(s)
    pu = np.uint64(p)
    for c in range(np.uint64(c0), np.uint64(c1)):
        U[su, c] = W[c, pu]
    for t in range(np.uint64(s)):
        a = W[np.uint64(j0) + t, pu]
        for c in range(np.uint64(c0), np.uint64(c1)):
            U[su, c] -= a * U[t, c]
    for c in range(np.uint64(c0), np.uint64(c1)):
        U[su, c] *= f


@njit(cache=True, nogil=True, fastmath=_FM)
def _sq_row_norms(X, rows, m, out):
    """``out[i] = ||X[rows[i], :]||^2`` (float64 accumulation) for ``i < m``; returns their max ``|entry|`` (0 if none).

    The one "squared row norms" pass of the float64 kernels (initial residuals
    of volume, fill norms, k > r); the max decides their band (:func:`_band_scale`).
    """
    r = X.shape[1]
    amax = 0.0
    for i in range(m):
        q = rows[i]
        s = 0.0
        for t in range(r):
            v = np.float64(X[q, t])
            s += v * v
            amax = _fmax(amax, abs(v))
        out[i] = s
    return amax


@njit(cache=True, nogil=True)
def _band_scale(X, rows, m, out):
    """:func:`_sq_row_norms` of ``X[rows[:m]]`` into ``out``; returns 1.0 inside the band (:func:`_in_band`), else
    the exact scale :func:`unit_scale` of their max ``|entry|`` (then the caller runs on :func:`_scaled64`)."""
    amax = _sq_row_norms(X, rows, m, out)
    return 1.0 if _in_band(amax, X.shape[1]) else unit_scale(amax)


@njit(cache=True, nogil=True)
def _row_norms(Vb, rows, m, nrm):
    """Euclidean norms (float64) of the full rows ``Vb[rows[i], :]``, ``i < m``, times a common power of two.

    The rows are used as they are inside the band (:func:`_in_band`), else
    scaled by :func:`_scaled64` (the norms are only compared with each other).
    """
    sc = _band_scale(Vb, rows, m, nrm)
    if sc != 1.0:
        _sq_row_norms(_scaled64(Vb, rows[:m], Vb.shape[1], sc), np.arange(m), m, nrm)
    for i in range(m):
        nrm[i] = math.sqrt(nrm[i])


@njit(cache=True, nogil=True)
def _fill_pick(nrm, sel, m):
    """Unselected position of largest norm, ties to the lowest position."""
    best = -1.0
    p = -1
    for i in range(m):
        if not sel[i] and nrm[i] > best:
            best = nrm[i]
            p = i
    return p


# ---------------------------------------------------------------------------
# DEIM on one column-major work buffer
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _deim_core(W, m, kk, tol, Vb, rows, piv, sel, nrm, U):
    """Greedy LU row pivots (DEIM) of the ``m x kk`` matrix held column-major in ``W``.

    Parameters
    ----------
    W : (>= kk, >= m) float32/float64 array
        ``W[c, i]`` is entry ``(i, c)`` of the matrix; overwritten (multipliers).
    m, kk : int
        Rows and columns used; the pivot positions are in ``range(m)``.
    tol : float
        A step whose largest remaining ``|entry|`` is ``<= tol`` takes a fill row.
    Vb : (n, r) array
        Source batch; fill rows are chosen by the norm of ``Vb[rows[i], :]``.
    rows : int64 array
        Row of ``Vb`` behind each position (ascending, so the lowest position is
        the lowest row index).
    piv : int64 array (>= kk)
        Output: pivot positions in selection order.
    sel, nrm : bool / float64 scratch arrays (>= m).
    U : (_BS, >= kk) array of W's dtype, scratch: the panel's pivot rows.

    Returns
    -------
    rank : int
        Number of non-fill pivots.
    min_ok : float
        Smallest accepted ``|pivot|`` (``inf`` if none): the tournament uses it to
        check that a larger tolerance would have taken the same decisions.

    Notes
    -----
    Panel ``[j0, j1)``: for each of its columns ``j`` (left-looking) the updates
    of the panel's earlier steps are applied in one rank-s pass, the pivot rows
    of those steps are zeroed, the pivot ``p`` is the first largest ``|W[j]|``,
    the multipliers ``W[j] / W[j, p]`` replace the column, and row ``s`` of
    ``U`` receives the fully updated pivot row ``p`` for all later columns.
    After the panel each trailing column gets one rank-(j1 - j0) pass (and its
    pivot rows are zeroed). A fill step stores zero multipliers.
    """
    for i in range(m):
        sel[i] = False
    have_nrm = False
    rank = 0
    min_ok = np.inf
    one = _one_like(W)
    zero = one - one
    nxt = _col_absmax(W, 0, 0, m)  # max |column| of the next column to pivot on
    for j0 in range(0, kk, _BS):
        j1 = min(j0 + _BS, kk)
        for j in range(j0, j1):
            s = j - j0
            amax = nxt
            if s > 0:
                amax = _rank_update(W, j, j0, s, U, 0, m)
                stale = False
                for t in range(s):
                    q = piv[j0 + t]
                    if abs(W[j, q]) == amax:
                        stale = True  # the max was a round-off residue of an eliminated row
                    W[j, q] = zero
                if stale:
                    amax = _col_absmax(W, j, 0, m)
            p = _first_abs_equal(W, j, amax, m)
            if amax > tol:
                sel[p] = True
                piv[j] = p
                rank += 1
                if amax < min_ok:
                    min_ok = float(amax)
                # Row s of U: pivot row p in the later columns, after the panel's earlier steps.
                _pivot_row(U, W, s, j0, p, one / W[j, p], j + 1, kk)
            else:
                if not have_nrm:
                    _row_norms(Vb, rows, m, nrm)
                    have_nrm = True
                p = _fill_pick(nrm, sel, m)
                sel[p] = True
                piv[j] = p
                for i in range(m):
                    W[j, i] = zero
                for c in range(j + 1, kk):
                    U[s, c] = zero
        # Trailing columns: one rank-(j1 - j0) pass each, row-blocked; keep the max of column j1.
        b = j1 - j0
        if j1 < kk:
            nxt = zero
            for i0 in range(0, m, _RB):
                cm = _trailing_update(W, j0, j1, kk, U, i0, min(i0 + _RB, m))
                if cm > nxt:
                    nxt = cm
            stale = False
            for c in range(j1, kk):
                for t in range(b):
                    q = piv[j0 + t]
                    if c == j1 and abs(W[c, q]) == nxt:
                        stale = True
                    W[c, q] = zero
            if stale:
                nxt = _col_absmax(W, j1, 0, m)
    return rank, min_ok


# ---------------------------------------------------------------------------
# DEIM on whole vectors (the batched and tile kernels)
# ---------------------------------------------------------------------------
# Same algorithm and decisions as _deim_core (panels of _BS, left-looking inside
# the panel, one rank-_BS pass per trailing column), but the work buffer has its
# row count padded to whole vectors with zero rows (they stay zero: every update
# of a zero row by zero multipliers is zero, and a zero can never be the pivot
# of a step that is accepted, as the step's max is > tol >= 0), and every loop
# runs on explicit register tiles of 4 vectors x 1 or 2 columns.


@njit(cache=True, nogil=True)
def _vpanel(W, j, j0, s, U, mv):
    """Column ``j`` of a panel: ``W[j, i] -= sum_{t<s} W[j0 + t, i] U[t, j]`` (``i < mv``), then its first argmax.

    One fused multiply-add per ``t``, in order (nothing is written when
    ``s == 0``). Returns ``(max |W[j, i]|, lowest i attaining it)``, tracked lane
    by lane during the same pass (the index is meaningless when the max is 0).
    """
    L = _simd_width(W)
    m0 = _vzero(W)
    m1 = m0
    m2 = m0
    m3 = m0
    x0 = _viota(W, 0)
    x1 = x0
    x2 = x0
    x3 = x0
    i = 0
    while i + 4 * L <= mv:
        a0 = _vload(W, j, i)
        a1 = _vload(W, j, i + L)
        a2 = _vload(W, j, i + 2 * L)
        a3 = _vload(W, j, i + 3 * L)
        if s > 0:
            for t in range(s):
                u = _vbcast(U, t, j)
                r = j0 + t
                a0 = _vfnma(_vload(W, r, i), u, a0)
                a1 = _vfnma(_vload(W, r, i + L), u, a1)
                a2 = _vfnma(_vload(W, r, i + 2 * L), u, a2)
                a3 = _vfnma(_vload(W, r, i + 3 * L), u, a3)
            _vstore(W, j, i, a0)
            _vstore(W, j, i + L, a1)
            _vstore(W, j, i + 2 * L, a2)
            _vstore(W, j, i + 3 * L, a3)
        m0, x0 = _vargmax(m0, x0, a0, _viota(W, i))
        m1, x1 = _vargmax(m1, x1, a1, _viota(W, i + L))
        m2, x2 = _vargmax(m2, x2, a2, _viota(W, i + 2 * L))
        m3, x3 = _vargmax(m3, x3, a3, _viota(W, i + 3 * L))
        i += 4 * L
    while i < mv:
        a0 = _vload(W, j, i)
        if s > 0:
            for t in range(s):
                a0 = _vfnma(_vload(W, j0 + t, i), _vbcast(U, t, j), a0)
            _vstore(W, j, i, a0)
        m0, x0 = _vargmax(m0, x0, a0, _viota(W, i))
        i += L
    m0, x0 = _vargmax_merge(m0, x0, m1, x1)
    m2, x2 = _vargmax_merge(m2, x2, m3, x3)
    m0, x0 = _vargmax_merge(m0, x0, m2, x2)
    return _vargmax_final(m0, x0)


@njit(cache=True, nogil=True)
def _vrank1(W, c, j0, s, U, i0, i1):
    """``W[c, i] -= sum_{t<s} W[j0 + t, i] U[t, c]`` for ``i0 <= i < i1`` (whole vectors), as in :func:`_vpanel`."""
    L = _simd_width(W)
    i = i0
    while i + 4 * L <= i1:
        a0 = _vload(W, c, i)
        a1 = _vload(W, c, i + L)
        a2 = _vload(W, c, i + 2 * L)
        a3 = _vload(W, c, i + 3 * L)
        for t in range(s):
            u = _vbcast(U, t, c)
            r = j0 + t
            a0 = _vfnma(_vload(W, r, i), u, a0)
            a1 = _vfnma(_vload(W, r, i + L), u, a1)
            a2 = _vfnma(_vload(W, r, i + 2 * L), u, a2)
            a3 = _vfnma(_vload(W, r, i + 3 * L), u, a3)
        _vstore(W, c, i, a0)
        _vstore(W, c, i + L, a1)
        _vstore(W, c, i + 2 * L, a2)
        _vstore(W, c, i + 3 * L, a3)
        i += 4 * L
    while i < i1:
        a0 = _vload(W, c, i)
        for t in range(s):
            a0 = _vfnma(_vload(W, j0 + t, i), _vbcast(U, t, c), a0)
        _vstore(W, c, i, a0)
        i += L


@njit(cache=True, nogil=True)
def _vrank2(W, c, j0, s, U, i0, i1):
    """:func:`_vrank1` on the two columns ``c, c + 1`` (a 4-vector x 2-column register tile)."""
    L = _simd_width(W)
    c1 = c + 1
    i = i0
    while i + 4 * L <= i1:
        a0 = _vload(W, c, i)
        a1 = _vload(W, c, i + L)
        a2 = _vload(W, c, i + 2 * L)
        a3 = _vload(W, c, i + 3 * L)
        b0 = _vload(W, c1, i)
        b1 = _vload(W, c1, i + L)
        b2 = _vload(W, c1, i + 2 * L)
        b3 = _vload(W, c1, i + 3 * L)
        for t in range(s):
            u = _vbcast(U, t, c)
            v = _vbcast(U, t, c1)
            r = j0 + t
            x = _vload(W, r, i)
            a0 = _vfnma(x, u, a0)
            b0 = _vfnma(x, v, b0)
            x = _vload(W, r, i + L)
            a1 = _vfnma(x, u, a1)
            b1 = _vfnma(x, v, b1)
            x = _vload(W, r, i + 2 * L)
            a2 = _vfnma(x, u, a2)
            b2 = _vfnma(x, v, b2)
            x = _vload(W, r, i + 3 * L)
            a3 = _vfnma(x, u, a3)
            b3 = _vfnma(x, v, b3)
        _vstore(W, c, i, a0)
        _vstore(W, c, i + L, a1)
        _vstore(W, c, i + 2 * L, a2)
        _vstore(W, c, i + 3 * L, a3)
        _vstore(W, c1, i, b0)
        _vstore(W, c1, i + L, b1)
        _vstore(W, c1, i + 2 * L, b2)
        _vstore(W, c1, i + 3 * L, b3)
        i += 4 * L
    while i < i1:
        a0 = _vload(W, c, i)
        b0 = _vload(W, c1, i)
        for t in range(s):
            x = _vload(W, j0 + t, i)
            a0 = _vfnma(x, _vbcast(U, t, c), a0)
            b0 = _vfnma(x, _vbcast(U, t, c1), b0)
        _vstore(W, c, i, a0)
        _vstore(W, c1, i, b0)
        i += L


@njit(cache=True, nogil=True)
def _vrank4(W, c, j0, s, U, i0, i1):
    """:func:`_vrank1` on the four columns ``c .. c + 3`` (a 3-vector x 4-column register tile).

    Per step ``t``: 3 row loads and 4 broadcasts for 12 fused multiply-adds
    (the 4 x 2 tile of :func:`_vrank2` needs 6 loads for 8); rows left over
    from whole 3-vector groups go one vector at a time, through the same
    multiply-adds.
    """
    L = _simd_width(W)
    c1 = c + 1
    c2 = c + 2
    c3 = c + 3
    i = i0
    while i + 3 * L <= i1:
        a0 = _vload(W, c, i)
        a1 = _vload(W, c, i + L)
        a2 = _vload(W, c, i + 2 * L)
        b0 = _vload(W, c1, i)
        b1 = _vload(W, c1, i + L)
        b2 = _vload(W, c1, i + 2 * L)
        d0 = _vload(W, c2, i)
        d1 = _vload(W, c2, i + L)
        d2 = _vload(W, c2, i + 2 * L)
        e0 = _vload(W, c3, i)
        e1 = _vload(W, c3, i + L)
        e2 = _vload(W, c3, i + 2 * L)
        for t in range(s):
            r = j0 + t
            x0 = _vload(W, r, i)
            x1 = _vload(W, r, i + L)
            x2 = _vload(W, r, i + 2 * L)
            u = _vbcast(U, t, c)
            a0 = _vfnma(x0, u, a0)
            a1 = _vfnma(x1, u, a1)
            a2 = _vfnma(x2, u, a2)
            u = _vbcast(U, t, c1)
            b0 = _vfnma(x0, u, b0)
            b1 = _vfnma(x1, u, b1)
            b2 = _vfnma(x2, u, b2)
            u = _vbcast(U, t, c2)
            d0 = _vfnma(x0, u, d0)
            d1 = _vfnma(x1, u, d1)
            d2 = _vfnma(x2, u, d2)
            u = _vbcast(U, t, c3)
            e0 = _vfnma(x0, u, e0)
            e1 = _vfnma(x1, u, e1)
            e2 = _vfnma(x2, u, e2)
        _vstore(W, c, i, a0)
        _vstore(W, c, i + L, a1)
        _vstore(W, c, i + 2 * L, a2)
        _vstore(W, c1, i, b0)
        _vstore(W, c1, i + L, b1)
        _vstore(W, c1, i + 2 * L, b2)
        _vstore(W, c2, i, d0)
        _vstore(W, c2, i + L, d1)
        _vstore(W, c2, i + 2 * L, d2)
        _vstore(W, c3, i, e0)
        _vstore(W, c3, i + L, e1)
        _vstore(W, c3, i + 2 * L, e2)
        i += 3 * L
    while i < i1:
        a0 = _vload(W, c, i)
        b0 = _vload(W, c1, i)
        d0 = _vload(W, c2, i)
        e0 = _vload(W, c3, i)
        for t in range(s):
            x0 = _vload(W, j0 + t, i)
            a0 = _vfnma(x0, _vbcast(U, t, c), a0)
            b0 = _vfnma(x0, _vbcast(U, t, c1), b0)
            d0 = _vfnma(x0, _vbcast(U, t, c2), d0)
            e0 = _vfnma(x0, _vbcast(U, t, c3), e0)
        _vstore(W, c, i, a0)
        _vstore(W, c1, i, b0)
        _vstore(W, c2, i, d0)
        _vstore(W, c3, i, e0)
        i += L


@njit(cache=True, nogil=True)
def _vpivot_row(U, W, s, j0, p, f, c0, kk):
    """:func:`_pivot_row` on whole vectors of columns.

    ``U`` and ``W`` have room for ``kk`` rounded up to whole vectors (columns of
    ``U``, rows of ``W``), zero past ``kk``. The columns from ``c0`` rounded
    down to a vector boundary are computed; the extra ones (``< c0``) of row
    ``s`` are never read.
    """
    L = _simd_width(U)
    fv = _vsplat(U, f)
    for c in range(c0 - c0 % L, kk, L):
        a = _vgather_col(W, c, p)
        for t in range(s):
            a = _vfnma(_vbcast(W, j0 + t, p), _vload(U, t, c), a)
        _vstore(U, s, c, _vmul(a, fv))


@njit(cache=True, nogil=True)
def _vtrailing(W, j0, j1, kk, U, i0, i1):
    """Rank-(j1 - j0) update of every column ``c >= j1`` over rows ``[i0, i1)`` (whole vectors)."""
    s = j1 - j0
    c = j1
    while c + 3 < kk:
        _vrank4(W, c, j0, s, U, i0, i1)
        c += 4
    while c + 1 < kk:
        _vrank2(W, c, j0, s, U, i0, i1)
        c += 2
    if c < kk:
        _vrank1(W, c, j0, s, U, i0, i1)


@njit(cache=True, nogil=True)
def _deim_vcore(W, m, kk, tol, Vb, rows, piv, sel, nrm, U, pf):
    """:func:`_deim_core` on whole vectors (same parameters, results and decisions).

    ``W`` holds ``kk`` rounded up to whole vectors rows (the extra ones zero)
    of at least ``ceil(m / lanes) * lanes`` entries, zero from ``m`` on; ``U``
    is ``(_BS, >= kk rounded up)``, zero past ``kk``. ``pf`` (1-D, may be
    empty) is prefetched into the cache a slice per step: the next batch.
    """
    L = _simd_width(W)
    mv = (m + L - 1) // L * L
    for i in range(m):
        sel[i] = False
    have_nrm = False
    rank = 0
    min_ok = np.inf
    one = _one_like(W)
    zero = one - one
    epl = 2 * L  # elements per cache line
    npf = pf.shape[0]
    per = ((npf + kk - 1) // kk + epl - 1) // epl * epl
    for j0 in range(0, kk, _BS):
        j1 = min(j0 + _BS, kk)
        for j in range(j0, j1):
            for e in range(j * per, min(j * per + per, npf), epl):
                _prefetch_at(pf, e)
            s = j - j0
            amax, p = _vpanel(W, j, j0, s, U, mv)
            if s > 0:
                stale = False
                for t in range(s):
                    q = piv[j0 + t]
                    if q == p:
                        stale = True  # the max was a round-off residue of an eliminated row
                    W[j, q] = zero
                if stale:
                    amax, p = _vpanel(W, j, j0, 0, U, mv)
            if amax > tol:
                sel[p] = True
                piv[j] = p
                rank += 1
                if amax < min_ok:
                    min_ok = float(amax)
                _vpivot_row(U, W, s, j0, p, one / W[j, p], j + 1, kk)
            else:
                if not have_nrm:
                    _row_norms(Vb, rows, m, nrm)
                    have_nrm = True
                p = _fill_pick(nrm, sel, m)
                sel[p] = True
                piv[j] = p
                for i in range(mv):
                    W[j, i] = zero
                for c in range(j + 1, kk):
                    U[s, c] = zero
        if j1 < kk:
            for i0 in range(0, mv, _RB):
                _vtrailing(W, j0, j1, kk, U, i0, min(i0 + _RB, mv))
            for t in range(j1 - j0):
                q = piv[j0 + t]
                for c in range(j1, kk):
                    W[c, q] = zero
    return rank, min_ok

@njit(cache=True, nogil=True)
def _load_cols(Vb, rows, m, kk, W):
    """Transpose ``Vb[rows[i], :kk]`` (``i < m``) into ``W[:kk, :m]``.

    Blocks of one vector width go through :func:`_transpose_block`, for 64
    rows at a time per column group (the source rows stay in L1/L2 while each
    column of ``W`` receives whole cache lines); the ragged edges are copied
    element by element.
    """
    vw = _simd_width(W)
    mv = m - m % vw
    kv = kk - kk % vw
    for i0 in range(0, mv, 64):
        i1 = min(i0 + 64, mv)
        for c0 in range(0, kv, vw):
            for ib in range(i0, i1, vw):
                _transpose_block(W, ib, Vb, rows, c0)
        for c in range(kv, kk):
            for i in range(i0, i1):
                W[c, i] = Vb[rows[i], c]
    for i in range(mv, m):
        x = Vb[rows[i]]
        for c in range(kk):
            W[c, i] = x[c]


@njit(cache=True, nogil=True)
def _load_cols_max(Vb, rows, m, kk, W):
    """:func:`_load_cols`, also returning ``(max |entry|, all finite)`` of the loaded entries (as :func:`_absmax_finite`).

    The max and the finiteness flag are taken on ``W`` right after each block
    of 64 rows is transposed (still in L1), so the tile is read from ``V`` once.
    """
    vw = _simd_width(W)
    mv = m - m % vw
    kv = kk - kk % vw
    m0 = _vzero(W)
    m1 = m0
    f0 = m0
    f1 = m0
    best = 0.0
    ok = True
    for i0 in range(0, mv, 64):
        i1 = min(i0 + 64, mv)
        for c0 in range(0, kv, vw):
            for ib in range(i0, i1, vw):
                _transpose_block(W, ib, Vb, rows, c0)
        for c in range(kv, kk):
            for i in range(i0, i1):
                W[c, i] = Vb[rows[i], c]
        for c in range(kk):
            ib = i0
            while ib + 2 * vw <= i1:
                a = _vload(W, c, ib)
                b = _vload(W, c, ib + vw)
                m0 = _vabsmax(m0, a)
                m1 = _vabsmax(m1, b)
                f0 = _vnonfinite(f0, a)
                f1 = _vnonfinite(f1, b)
                ib += 2 * vw
            if ib < i1:
                a = _vload(W, c, ib)
                m0 = _vabsmax(m0, a)
                f0 = _vnonfinite(f0, a)
    for i in range(mv, m):
        x = Vb[rows[i]]
        for c in range(kk):
            v = x[c]
            W[c, i] = v
            fv = float(v)
            if fv - fv != 0.0:
                ok = False
            best = max(best, abs(fv))
    best = max(best, float(_vhmax(_vabsmax(m0, m1))))
    ok = ok and not (_vlanesum_isnan(f0) or _vlanesum_isnan(f1))
    return best, ok


@njit(cache=True, nogil=True)
def _absmax_finite(x):
    """``(max |x|, all finite)`` of a contiguous 1-D float array (max as float64; 0 if empty).

    One pass on whole vectors; the finiteness flag accumulates ``x - x``
    (NaN from the first NaN or infinity on) in strict IEEE arithmetic.
    """
    n = x.shape[0]
    L = _simd_width(x)
    nv = n - n % L
    X = x.reshape((1, n))
    m0 = _vzero(x)
    m1 = m0
    f0 = m0
    f1 = m0
    i = 0
    while i + 2 * L <= nv:
        a = _vload(X, 0, i)
        b = _vload(X, 0, i + L)
        m0 = _vabsmax(m0, a)
        m1 = _vabsmax(m1, b)
        f0 = _vnonfinite(f0, a)
        f1 = _vnonfinite(f1, b)
        i += 2 * L
    while i < nv:
        a = _vload(X, 0, i)
        m0 = _vabsmax(m0, a)
        f0 = _vnonfinite(f0, a)
        i += L
    best = float(_vhmax(_vabsmax(m0, m1)))
    ok = not (_vlanesum_isnan(f0) or _vlanesum_isnan(f1))
    for t in range(nv, n):
        v = float(x[t])
        if v - v != 0.0:
            ok = False
        best = max(best, abs(v))
    return best, ok


@njit(cache=True, nogil=True, parallel=True)
def _deim_batched(V, kk, eps, nthreads):
    """DEIM pivots of every batch of ``V`` (B, n, r), first ``kk`` columns, parallel over batches.

    Each batch is first checked for NaN / infinity (in the same pass as its
    ``max |V_b|``); a batch that has one is skipped and flagged.

    Returns
    -------
    piv : (B, kk) int64
    rank : (B,) int64
    bad : (B,) bool
        Batches with a NaN or an infinity (their ``piv`` and ``rank`` are meaningless).
    """
    nb, n, r = V.shape
    piv_out = np.empty((nb, kk), np.int64)
    rank_out = np.empty(nb, np.int64)
    bad = np.zeros(nb, np.bool_)
    nch = min(nb, 4 * nthreads)
    for ch in prange(nch):
        L = _simd_width(V)
        kp = (kk + L - 1) // L * L
        W = np.zeros((kp, _padded(n)), V.dtype)
        U = np.zeros((_BS, kp), V.dtype)
        rows = np.arange(n)
        piv = np.empty(kk, np.int64)
        sel = np.empty(n, np.bool_)
        nrm = np.empty(n, np.float64)
        b0 = ch * nb // nch
        b1 = (ch + 1) * nb // nch
        for b in range(b0, b1):
            Vb = V[b]
            vmax, ok = _absmax_finite(Vb.reshape(n * r))
            if not ok:
                bad[b] = True
                rank_out[b] = 0
                for j in range(kk):
                    piv_out[b, j] = j
                continue
            _load_cols(Vb, rows, n, kk, W)
            sc = _elim_scale(W, vmax)
            if sc != 1.0:  # far from 1: eliminate on V_b 2^-e (exact)
                _scale_cols(W, kk, n, sc)
            tol = max(n, r) * eps * (np.float64(vmax) * sc)
            # the next batch is prefetched during this one (the last one prefetches itself: harmless)
            rank, _ = _deim_vcore(W, n, kk, tol, Vb, rows, piv, sel, nrm, U, V[min(b + 1, b1 - 1)].reshape(n * r))
            rank_out[b] = rank
            for j in range(kk):
                piv_out[b, j] = piv[j]
    return piv_out, rank_out, bad


@njit(cache=True, nogil=True, parallel=True)
def _deim_rowpar(Vb, kk, eps, nparts):
    """DEIM of one large batch with its rows split over ``nparts`` threads.

    The same arithmetic as :func:`_deim_core` on each row (parts start at
    multiples of ``_RB`` rows, so even the vectorised / remainder split of
    every loop is the same), hence the same pivots; per pivot step the parts
    update their slice of the column and report their first largest entry, and
    the global pivot row is combined serially.

    Returns
    -------
    piv : (kk,) int64
        Pivot rows in selection order.
    rank : int
    """
    n, r = Vb.shape
    chunk = ((n + nparts - 1) // nparts + _RB - 1) // _RB * _RB
    P = (n + chunk - 1) // chunk
    W = np.empty((P, kk, _padded(chunk)), Vb.dtype)
    U = np.empty((_BS, kk), Vb.dtype)
    pval = np.empty(P, Vb.dtype)
    ppos = np.empty(P, np.int64)
    pmax = np.empty(P)
    for q in prange(P):
        lo = q * chunk
        hi = min(n, lo + chunk)
        pmax[q] = _absmax_flat(Vb[lo:hi].reshape((hi - lo) * r))
        _load_cols(Vb, np.arange(lo, hi), hi - lo, kk, W[q])
        pval[q] = _col_absmax(W[q], 0, 0, hi - lo)
    sc = _elim_scale(U, pmax.max())
    if sc != 1.0:  # far from 1: eliminate on V_b 2^-e (exact)
        for q in prange(P):
            m = min(n, q * chunk + chunk) - q * chunk
            _scale_cols(W[q], kk, m, sc)
            pval[q] = _col_absmax(W[q], 0, 0, m)
    tol = max(n, r) * eps * (pmax.max() * sc)
    one = _one_like(U)
    zero = one - one
    piv = np.empty(kk, np.int64)
    sel = np.zeros(n, np.bool_)
    nrm = np.empty(0)
    rank = 0
    for j0 in range(0, kk, _BS):
        j1 = min(j0 + _BS, kk)
        for j in range(j0, j1):
            s = j - j0
            for q in prange(P):
                lo = q * chunk
                m = min(n, lo + chunk) - lo
                Wq = W[q]
                amax = pval[q]
                if s > 0:
                    amax = _rank_update(Wq, j, j0, s, U, 0, m)
                    stale = False
                    for t in range(s):
                        g = piv[j0 + t] - lo
                        if 0 <= g < m:
                            if abs(Wq[j, g]) == amax:
                                stale = True
                            Wq[j, g] = zero
                    if stale:
                        amax = _col_absmax(Wq, j, 0, m)
                pval[q] = amax
                ppos[q] = _first_abs_equal(Wq, j, amax, m)
            q = 0
            for t in range(1, P):
                if pval[t] > pval[q]:
                    q = t
            amax = pval[q]
            lp = ppos[q]
            if amax > tol:
                piv[j] = q * chunk + lp
                sel[piv[j]] = True
                rank += 1
                _pivot_row(U, W[q], s, j0, lp, one / W[q, j, lp], j + 1, kk)
            else:
                if nrm.shape[0] == 0:
                    nrm = np.empty(n)
                    _row_norms(Vb, np.arange(n), n, nrm)
                g = _fill_pick(nrm, sel, n)
                sel[g] = True
                piv[j] = g
                for q2 in prange(P):
                    lo = q2 * chunk
                    m = min(n, lo + chunk) - lo
                    for i in range(m):
                        W[q2, j, i] = zero
                for c in range(j + 1, kk):
                    U[s, c] = zero
        for q in prange(P):
            lo = q * chunk
            m = min(n, lo + chunk) - lo
            Wq = W[q]
            if j1 < kk:
                nxt = zero
                for i0 in range(0, m, _RB):
                    cm = _trailing_update(Wq, j0, j1, kk, U, i0, min(i0 + _RB, m))
                    if cm > nxt:
                        nxt = cm
                stale = False
                for t in range(j1 - j0):
                    g = piv[j0 + t] - lo
                    if 0 <= g < m:
                        if abs(Wq[j1, g]) == nxt:
                            stale = True
                        for c in range(j1, kk):
                            Wq[c, g] = zero
                if stale:
                    nxt = _col_absmax(Wq, j1, 0, m)
                pval[q] = nxt
    return piv, rank


@njit(cache=True, nogil=True)
def _sorted_rows(piv, k, rows, out):
    """``out[:k] = sorted(rows[piv[:k]])`` (insertion sort; ``k`` is small)."""
    for t in range(k):
        v = rows[piv[t]]
        u = t
        while u > 0 and out[u - 1] > v:
            out[u] = out[u - 1]
            u -= 1
        out[u] = v


@njit(cache=True, nogil=True)
def _tile_buffers(V, m, kk):
    """Work buffers of :func:`_tile_deim` for tiles of up to ``m`` rows and ``kk`` columns (reusable)."""
    L = _simd_width(V)
    kp = (kk + L - 1) // L * L
    W = np.zeros((kp, _padded(m)), V.dtype)
    U = np.zeros((_BS, kp), V.dtype)
    piv = np.empty(kk, np.int64)
    sel = np.empty(m, np.bool_)
    nrm = np.empty(m, np.float64)
    return W, U, piv, sel, nrm


@njit(cache=True, nogil=True)
def _tile_deim(Vb, rows, m, kc, tol, W, U, piv, sel, nrm, pf, sc):
    """DEIM (:func:`_deim_vcore`) on the rows ``rows[:m]`` of ``Vb`` times ``sc``, first ``kc`` columns.

    ``W, U, piv, sel, nrm`` come from :func:`_tile_buffers` (for at least ``m``
    rows and ``kk >= kc`` columns) and may have served an earlier tile: the
    zero padding :func:`_deim_vcore` needs is restored here (rows ``m`` up to a
    whole vector, and the rows / columns past ``kc`` when ``kc < kk``, i.e.
    after a tile with more columns). ``pf`` is prefetched (see
    :func:`_deim_vcore`). ``sc``: the batch's :func:`_elim_scale` (``tol`` is
    in its units). Returns ``(rank, min_ok)``; ``piv[:kc]`` = positions.
    """
    _load_cols(Vb, rows, m, kc, W)
    if sc != 1.0:
        _scale_cols(W, kc, m, sc)
    return _tile_deim_loaded(Vb, rows, m, kc, tol, W, U, piv, sel, nrm, pf)


@njit(cache=True, nogil=True)
def _tile_deim_loaded(Vb, rows, m, kc, tol, W, U, piv, sel, nrm, pf):
    """:func:`_tile_deim` once ``W[:kc, :m]`` holds the tile."""
    L = _simd_width(W)
    mv = (m + L - 1) // L * L
    one = _one_like(W)
    zero = one - one
    for c in range(kc):
        for i in range(m, mv):
            W[c, i] = zero
    if kc < piv.shape[0]:
        for c in range(kc, W.shape[0]):
            for i in range(mv):
                W[c, i] = zero
        for t in range(_BS):
            for c in range(kc, U.shape[1]):
                U[t, c] = zero
    return _deim_vcore(W, m, kc, tol, Vb, rows, piv, sel, nrm, U, pf)


@njit(cache=True, nogil=True)
def _tile_max_deim(V, b, r0, sz, kk, scale, pf, W, U, piv, sel, nrm, rows, out):
    """First-level tile: rows ``[r0, r0 + sz)`` of ``V[b]``; ``out`` = chosen rows.

    Returns ``(max |tile|, min_ok)``; a tile with a NaN or an infinity is not
    eliminated and returns ``(nan, inf)``. A tile far from 1 is eliminated on
    the tile times its :func:`_elim_scale` (``min_ok`` is returned unscaled).
    """
    Vb = V[b]
    r = Vb.shape[1]
    for i in range(sz):
        rows[i] = r0 + i
    kc = min(kk, sz)
    if kc == r:  # the load sees the whole tile: take its max there
        tmax, ok = _load_cols_max(Vb, rows, sz, kc, W)
    else:
        tmax, ok = _absmax_finite(Vb[r0:r0 + sz].reshape(sz * r))
        if ok:
            _load_cols(Vb, rows, sz, kc, W)
    if not ok:
        return np.nan, np.inf
    sc = _elim_scale(W, tmax)
    if sc != 1.0:
        _scale_cols(W, kc, sz, sc)
    _, mo = _tile_deim_loaded(Vb, rows, sz, kc, scale * (np.float64(tmax) * sc), W, U, piv, sel, nrm, pf)
    _sorted_rows(piv, kc, rows, out)
    return tmax, mo / sc


@njit(cache=True, nogil=True, parallel=True)
def _tournament_first_level(V, kk, T, scale, nthreads):
    """Level 0 of the tournament: DEIM on consecutive tiles of ``T`` rows, parallel over (batch, tile).

    The whole-batch tolerance ``scale * max|V_b|`` is not known before the
    tiles have been read, so each tile first uses its own max (a lower bound).
    Decisions can only differ if an accepted pivot lies within the true
    tolerance; such a tile (never on full-rank input) is redone.

    Each thread keeps one set of work buffers and claims tiles one at a time
    from a shared atomic counter (a thread slowed down by other work on the
    machine simply takes fewer tiles); it claims its next tile before working
    on the current one and prefetches it meanwhile.

    Returns
    -------
    cand : (B, nt * kk) int64
        Each tile's chosen rows, ascending, tile after tile.
    tol : (B,) float64
        Whole-batch DEIM tolerances, in the units of ``sc``.
    sc : (B,) float64
        Whole-batch :func:`_elim_scale` (what the later levels scale the rows by).
    bad : (B,) bool
        Batches with a NaN or an infinity (found by the tiles' max pass; their
        ``cand`` and ``tol`` are meaningless).
    """
    nb, n, r = V.shape
    nt = (n + T - 1) // T
    tot = nb * nt
    cand = np.empty((nb, nt * kk), np.int64)
    tmax = np.empty((nb, nt))
    tmin = np.empty((nb, nt))
    ctr = np.zeros(1, np.int64)
    for _ in prange(min(tot, nthreads)):
        W, U, piv, sel, nrm = _tile_buffers(V, min(T, n), kk)
        rows = np.empty(min(T, n), np.int64)
        cur = _claim(ctr)
        while cur < tot:
            nxt = _claim(ctr)
            b = cur // nt
            t = cur % nt
            r0 = t * T
            sz = min(T, n - r0)
            if nxt < tot:
                rn = (nxt % nt) * T
                pf = V[nxt // nt, rn:min(rn + T, n)].reshape(min(T, n - rn) * r)
            else:
                pf = V[b, r0:r0].reshape(0)
            tmax[b, t], tmin[b, t] = _tile_max_deim(V, b, r0, sz, kk, scale, pf, W, U, piv, sel, nrm, rows,
                                                    cand[b, t * kk:])
            cur = nxt
    tol = np.empty(nb)
    sc = np.ones(nb)
    bad = np.zeros(nb, np.bool_)
    for b in range(nb):
        tb = 0.0
        for t in range(nt):
            if not tmax[b, t] <= np.inf:  # NaN: the tile was not finite
                bad[b] = True
            elif tmax[b, t] > tb:
                tb = tmax[b, t]
        sc[b] = _elim_scale(V, tb)
        tol[b] = scale * (tb * sc[b])
        if bad[b]:
            for t in range(nt):
                tmin[b, t] = np.inf  # no redo
    redo = np.empty(tot, np.int64)
    nredo = 0
    for it in range(tot):
        if tmin[it // nt, it % nt] * sc[it // nt] <= tol[it // nt]:
            redo[nredo] = it
            nredo += 1
    for q in prange(nredo):
        b = redo[q] // nt
        t = redo[q] % nt
        r0 = t * T
        sz = min(T, n - r0)
        kc = min(kk, sz)
        W, U, piv, sel, nrm = _tile_buffers(V, sz, kk)
        rows = np.arange(r0, r0 + sz)
        _tile_deim(V[b], rows, sz, kc, tol[b], W, U, piv, sel, nrm, np.empty(0, V.dtype), sc[b])
        _sorted_rows(piv, kc, rows, cand[b, t * kk:])
    return cand, tol, sc, bad


@njit(cache=True, nogil=True, parallel=True)
def _tournament_next_level(V, cand, m, kk, T, tol, sc, nthreads):
    """One later tournament level: DEIM on tiles of the ``m`` candidates, parallel over (batch, tile).

    Tiles are claimed one at a time from a shared counter, as in :func:`_tournament_first_level`.
    """
    nb = V.shape[0]
    nt = (m + T - 1) // T
    tot = nb * nt
    nxt = np.empty((nb, nt * kk), np.int64)
    ctr = np.zeros(1, np.int64)
    for _ in prange(min(tot, nthreads)):
        W, U, piv, sel, nrm = _tile_buffers(V, min(T, m), kk)
        pf = np.empty(0, V.dtype)
        it = _claim(ctr)
        while it < tot:
            b = it // nt
            t = it % nt
            r0 = t * T
            sz = min(T, m - r0)
            rows = cand[b, r0:r0 + sz]
            kc = min(kk, sz)
            _tile_deim(V[b], rows, sz, kc, tol[b], W, U, piv, sel, nrm, pf, sc[b])
            _sorted_rows(piv, kc, rows, nxt[b, t * kk:])
            it = _claim(ctr)
    return nxt


@njit(cache=True, nogil=True, parallel=True)
def _deim_on_rows(V, cand, m, kk, tol, sc, bad):
    """DEIM of every batch on its candidate rows ``cand[b, :m]``; pivots mapped back to rows.

    Batches flagged ``bad`` (NaN / infinity) are skipped: ``piv = 0, 1, ...``, rank 0.
    """
    nb = V.shape[0]
    piv_out = np.empty((nb, kk), np.int64)
    rank_out = np.empty(nb, np.int64)
    for b in prange(nb):
        if bad[b]:
            rank_out[b] = 0
            for j in range(kk):
                piv_out[b, j] = j
            continue
        rows = cand[b, :m]
        W, U, piv, sel, nrm = _tile_buffers(V, m, kk)
        rank, _ = _tile_deim(V[b], rows, m, kk, tol[b], W, U, piv, sel, nrm, np.empty(0, V.dtype), sc[b])
        rank_out[b] = rank
        for j in range(kk):
            piv_out[b, j] = rows[piv[j]]
    return piv_out, rank_out


@njit(cache=True, nogil=True)
def _tournament_batched(V, kk, T, eps, nthreads):
    """Tournament pivoting of every batch (tiles of ``T > kk`` rows), see the module docstring.

    Returns
    -------
    piv : (B, kk) int64
    rank : (B,) int64
    bad : (B,) bool
        Batches with a NaN or an infinity, found in the first pass over ``V``
        (their ``piv`` and ``rank`` are meaningless; as soon as one batch is
        bad, the later levels are skipped for all).
    """
    nb, n, r = V.shape
    scale = max(n, r) * eps
    if n <= T:
        tol = np.empty(nb)
        sc = np.ones(nb)
        bad = np.zeros(nb, np.bool_)
        cand = np.empty((nb, n), np.int64)
        for b in range(nb):
            vmax, ok = _absmax_finite(V[b].reshape(n * r))
            sc[b] = _elim_scale(V, vmax)
            tol[b] = scale * (np.float64(vmax) * sc[b])
            bad[b] = not ok
            cand[b] = np.arange(n)
        piv, rank = _deim_on_rows(V, cand, n, kk, tol, sc, bad)
        return piv, rank, bad
    cand, tol, sc, bad = _tournament_first_level(V, kk, T, scale, nthreads)
    if bad.any():
        return np.zeros((nb, kk), np.int64), np.zeros(nb, np.int64), bad
    nt = (n + T - 1) // T
    m = (nt - 1) * kk + min(kk, n - (nt - 1) * T)
    while m > T:
        cand = _tournament_next_level(V, cand, m, kk, T, tol, sc, nthreads)
        nt = (m + T - 1) // T
        m = (nt - 1) * kk + min(kk, m - (nt - 1) * T)
    piv, rank = _deim_on_rows(V, cand, m, kk, tol, sc, bad)
    return piv, rank, bad


# ---------------------------------------------------------------------------
# Volume (greedy volume = geqp3 column pivoting on V^T), float64, lazy
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FM)
def _dot_rq(X, i, Q, l):
    """``X[i, :] . Q[l, :]`` in float64 (X float32 or float64)."""
    iu = np.uint64(i)
    lu = np.uint64(l)
    s = 0.0
    for t in range(np.uint64(X.shape[1])):
        s += np.float64(X[iu, t]) * Q[lu, t]
    return s


@njit(cache=True, nogil=True, fastmath=_FM)
def _exact_residual(X, i, Q, nq, res):
    """``||x_i - sum_{l<nq} (x_i . q_l) q_l||^2`` (the geqp3-style explicit recomputation)."""
    r = X.shape[1]
    for t in range(r):
        res[t] = np.float64(X[i, t])
    for l in range(nq):
        c = _dot_rq(X, i, Q, l)
        lu = np.uint64(l)
        for t in range(np.uint64(r)):
            res[t] -= c * Q[lu, t]
    s = 0.0
    for t in range(np.uint64(r)):
        s += res[t] * res[t]
    return s


@njit(cache=True, nogil=True, fastmath=_FM)
def _dots4(X, i, Q, l):
    """``X[i, :] . Q[l + a, :]`` for ``a < 4`` (float64), sharing the loads of the row."""
    iu = np.uint64(i)
    l0 = np.uint64(l)
    l1 = l0 + np.uint64(1)
    l2 = l0 + np.uint64(2)
    l3 = l0 + np.uint64(3)
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for t in range(np.uint64(X.shape[1])):
        x = np.float64(X[iu, t])
        s0 += x * Q[l0, t]
        s1 += x * Q[l1, t]
        s2 += x * Q[l2, t]
        s3 += x * Q[l3, t]
    return s0, s1, s2, s3


@njit(cache=True, nogil=True)
def _downdate(X, i, Q, l, c, v, rho0, sqeps, res):
    """Eager downdate ``v - c^2`` of row ``i`` by direction ``l``, then geqp3's test.

    When the result falls to ``sqrt(eps64) * rho0_i`` it is recomputed
    explicitly against ``q_0 .. q_l`` and becomes the new ``rho0_i``.
    """
    v -= c * c
    if v <= sqeps * rho0[i]:
        v = _exact_residual(X, i, Q, l + 1, res)
        rho0[i] = v
    return v


@njit(cache=True, nogil=True)
def _bring_up(X, i, Q, nq, rho, rho0, done, sqeps, res):
    """Apply to row ``i`` the downdates of directions ``done[i] .. nq-1``, in order, exactly as the eager loop.

    The dot products (which do not depend on ``rho``) are computed four at a
    time. Returns the new ``rho_i``.
    """
    v = rho[i]
    l = done[i]
    while l + 4 <= nq:
        c0, c1, c2, c3 = _dots4(X, i, Q, l)
        v = _downdate(X, i, Q, l, c0, v, rho0, sqeps, res)
        v = _downdate(X, i, Q, l + 1, c1, v, rho0, sqeps, res)
        v = _downdate(X, i, Q, l + 2, c2, v, rho0, sqeps, res)
        v = _downdate(X, i, Q, l + 3, c3, v, rho0, sqeps, res)
        l += 4
    while l < nq:
        v = _downdate(X, i, Q, l, _dot_rq(X, i, Q, l), v, rho0, sqeps, res)
        l += 1
    rho[i] = v
    done[i] = nq
    return v


@njit(cache=True, nogil=True)
def _cgs2(X, p, Q, nq, w):
    """``w = x_p`` orthogonalised twice against ``q_0 .. q_{nq-1}`` (CGS2). Returns ``||w||``."""
    r = X.shape[1]
    for t in range(r):
        w[t] = np.float64(X[p, t])
    for _ in range(2):
        for l in range(nq):
            c = 0.0
            for t in range(r):
                c += w[t] * Q[l, t]
            for t in range(r):
                w[t] -= c * Q[l, t]
    s = 0.0
    for t in range(r):
        s += w[t] * w[t]
    return math.sqrt(s)


@njit(cache=True, nogil=True)
def _lazy_scan(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res, best, bi, cand):
    """Exact argmax of the current residual norms over rows ``[lo, hi)``, starting from ``(best, bi)``.

    A row is brought up to date only if its bound ``key`` (last residual norm
    plus slack) is still ``>= best``; ties go to the lowest row index. The
    candidate rows (bound ``>=`` the starting ``best``) are listed first, then
    visited in order while the next candidates' rows are prefetched a few
    steps ahead: the rows are scattered in memory and the visits are latency-bound.
    """
    nc = 0
    for i in range(lo, hi):
        if key[i] >= best:
            cand[nc] = i
            nc += 1
    for a in range(min(_AHEAD, nc)):
        _prefetch_row(X, cand[a])
    for a in range(nc):
        if a + _AHEAD < nc:
            nxt = cand[a + _AHEAD]
            if key[nxt] >= best and done[nxt] < nq:
                _prefetch_row(X, nxt)
        i = cand[a]
        if key[i] >= best:
            if done[i] < nq:
                v = _bring_up(X, i, Q, nq, rho, rho0, done, sqeps, res)
                key[i] = v + slack * rho0[i]
            else:
                v = rho[i]
            if v > best or (v == best and i < bi):
                best = v
                bi = i
    return best, bi


@njit(cache=True, nogil=True)
def _volume_chunk(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res, cand):
    """Exact ``(max, argmax)`` of the current residual norms over the unselected rows of ``[lo, hi)``.

    Seeds with the row of largest bound in the range, then scans the rows
    whose bound can still win (:func:`_lazy_scan`). ``(-inf, -1)`` if every row
    of the range is selected.
    """
    bi = -1
    bk = -np.inf
    for i in range(lo, hi):
        if key[i] > bk:
            bk = key[i]
            bi = i
    if bi < 0:
        return -np.inf, -1
    best = _bring_up(X, bi, Q, nq, rho, rho0, done, sqeps, res)
    key[bi] = best + slack * rho0[bi]
    return _lazy_scan(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res, best, bi, cand)


@njit(cache=True, nogil=True)
def _volume_commit(X, p, Q, nq, w, tol, nrm, key, piv, j):
    """Step ``j`` with residual argmax ``p``: orthogonalise (CGS2), accept or take a fill row.

    Returns the new number of directions ``nq``.
    """
    wn = _cgs2(X, p, Q, nq, w)
    if not wn > tol:
        p = _fill_argmax(nrm, key)
    piv[j] = p
    key[p] = -np.inf  # selected: never a candidate again
    if wn > tol:
        for t in range(X.shape[1]):
            Q[nq, t] = w[t] / wn
        nq += 1
    return nq


_AHEAD = 8  # candidates touched ahead in the lazy volume scan
_SLACK = 4.0 * 2.220446049250313e-16  # times (k + 1)(2 r + 2) rho0: bound on a recomputation's jump


@njit(cache=True, nogil=True)
def _volume_one(X, kk, eps, piv):
    """Greedy volume pivots of one batch ``X`` (n, r), lazy residual norms, serial. Returns the rank.

    Runs on ``X`` inside the band (:func:`_in_band`), else on
    :func:`_scaled64` of it: the pivots of ``X 2^j`` are those of ``X``.
    """
    n = X.shape[0]
    rows = np.arange(n)
    rho = np.empty(n)
    sc = _band_scale(X, rows, n, rho)
    if sc == 1.0:
        return _volume_one_run(X, rho, kk, eps, piv)
    Xs = _scaled64(X, rows, X.shape[1], sc)
    _sq_row_norms(Xs, rows, n, rho)
    return _volume_one_run(Xs, rho, kk, eps, piv)


@njit(cache=True, nogil=True)
def _volume_one_run(X, rho, kk, eps, piv):
    """:func:`_volume_one` on ``X`` as it is, ``rho`` its squared row norms (overwritten)."""
    n, r = X.shape
    rho0 = rho.copy()
    key = rho.copy()
    nrm = np.sqrt(rho)
    tol = max(n, r) * eps * (nrm.max() if n > 0 else 0.0)
    slack = _SLACK * (kk + 1) * (2 * r + 2)
    sqeps = math.sqrt(2.220446049250313e-16)
    done = np.zeros(n, np.int64)
    Q = np.zeros((kk, r))
    w = np.empty(r)
    res = np.empty(r)
    cand = np.empty(n, np.int64)
    nq = 0
    for j in range(kk):
        _, p = _volume_chunk(X, 0, n, Q, nq, rho, rho0, done, key, slack, sqeps, res, cand)
        nq = _volume_commit(X, p, Q, nq, w, tol, nrm, key, piv, j)
    return nq


@njit(cache=True, nogil=True)
def _volume_rowpar(X, kk, eps, piv, nparts):
    """:func:`_volume_one` with the rows split into ``nparts`` ranges scanned in parallel.

    Each range yields its exact argmax; the lowest-index maximum of those is
    the step's pivot. The per-row arithmetic does not depend on the split, so
    the pivots are those of the serial kernel (same band rule).
    """
    n = X.shape[0]
    rows = np.arange(n)
    rho = np.empty(n)
    sc = _band_scale(X, rows, n, rho)
    if sc == 1.0:
        return _volume_rowpar_run(X, rho, kk, eps, piv, nparts)
    Xs = _scaled64(X, rows, X.shape[1], sc)
    _sq_row_norms(Xs, rows, n, rho)
    return _volume_rowpar_run(Xs, rho, kk, eps, piv, nparts)


@njit(cache=True, nogil=True, parallel=True)
def _volume_rowpar_run(X, rho, kk, eps, piv, nparts):
    """:func:`_volume_rowpar` on ``X`` as it is, ``rho`` its squared row norms (overwritten)."""
    n, r = X.shape
    rho0 = rho.copy()
    key = rho.copy()
    nrm = np.sqrt(rho)
    tol = max(n, r) * eps * (nrm.max() if n > 0 else 0.0)
    slack = _SLACK * (kk + 1) * (2 * r + 2)
    sqeps = math.sqrt(2.220446049250313e-16)
    done = np.zeros(n, np.int64)
    Q = np.zeros((kk, r))
    w = np.empty(r)
    res = np.empty((nparts, r))
    cand = np.empty(n, np.int64)
    pbest = np.empty(nparts)
    pidx = np.empty(nparts, np.int64)
    nq = 0
    for j in range(kk):
        for q in prange(nparts):
            lo = q * n // nparts
            hi = (q + 1) * n // nparts
            pbest[q], pidx[q] = _volume_chunk(X, lo, hi, Q, nq, rho, rho0, done, key, slack, sqeps, res[q],
                                              cand[lo:hi])
        p = -1
        best = -np.inf
        for q in range(nparts):  # ranges in row order: strict > keeps the lowest index on ties
            if pidx[q] >= 0 and (p < 0 or pbest[q] > best):
                best = pbest[q]
                p = pidx[q]
        nq = _volume_commit(X, p, Q, nq, w, tol, nrm, key, piv, j)
    return nq


@njit(cache=True, nogil=True)
def _fill_argmax(nrm, key):
    """Fill row: largest norm among rows not selected (selected rows have ``key == -inf``)."""
    best = -1.0
    p = -1
    for i in range(nrm.shape[0]):
        if key[i] != -np.inf and nrm[i] > best:
            best = nrm[i]
            p = i
    return p


@njit(cache=True, nogil=True, parallel=True)
def _volume_batched(V, kk, eps):
    """Greedy volume pivots of every batch, parallel over batches."""
    nb = V.shape[0]
    piv = np.empty((nb, kk), np.int64)
    rank = np.empty(nb, np.int64)
    for b in prange(nb):
        rank[b] = _volume_one(V[b], kk, eps, piv[b])
    return piv, rank


# ---------------------------------------------------------------------------
# Rect extension (k > r) and refinement, float64
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _inverse(A, thr):
    """Inverse of a small square float64 matrix by Gauss-Jordan with partial pivoting (A is overwritten).

    Returns ``(inv, rank)``. A pivot ``|d| <= thr`` (always the case for a
    zero pivot) stops it: ``rank`` is then the number of pivots taken before
    (``< k``) and ``inv`` is meaningless. ``rank == k`` otherwise.
    """
    k = A.shape[0]
    inv = np.eye(k)
    for c in range(k):
        p = c
        for i in range(c + 1, k):
            if abs(A[i, c]) > abs(A[p, c]):
                p = i
        if p != c:
            for t in range(k):
                A[c, t], A[p, t] = A[p, t], A[c, t]
                inv[c, t], inv[p, t] = inv[p, t], inv[c, t]
        d = A[c, c]
        if not abs(d) > thr:  # numerically singular (never divides by zero)
            return inv, c
        for t in range(k):
            A[c, t] /= d
            inv[c, t] /= d
        for i in range(k):
            if i != c:
                f = A[i, c]
                if f != 0.0:
                    for t in range(k):
                        A[i, t] -= f * A[c, t]
                        inv[i, t] -= f * inv[c, t]
    return inv, k


@njit(cache=True, nogil=True)
def _rect_one(X, piv, k, rank, out):
    """Extend the ``r`` pivots ``piv`` to ``k > r`` rows (greedy ``det(V_S^T V_S)``), or fill if ``rank < r``.

    Runs on ``X`` inside the band (:func:`_in_band`), else on
    :func:`_scaled64` of it: the rows of ``X 2^j`` are those of ``X``.
    """
    n = X.shape[0]
    rows = np.arange(n)
    sq = np.empty(n)
    sc = _band_scale(X, rows, n, sq)
    if sc == 1.0:
        _rect_run(X, piv, k, rank, out, sq)
        return
    Xs = _scaled64(X, rows, X.shape[1], sc)
    _sq_row_norms(Xs, rows, n, sq)
    _rect_run(Xs, piv, k, rank, out, sq)


@njit(cache=True, nogil=True)
def _rect_run(X, piv, k, rank, out, sq):
    """:func:`_rect_one` on ``X`` as it is, ``sq`` its squared row norms."""
    n, r = X.shape
    sel = np.zeros(n, np.bool_)
    for j in range(r):
        out[j] = piv[j]
        sel[piv[j]] = True
    nrm = np.sqrt(sq)
    if rank < r:
        for t in range(r, k):
            p = _fill_pick(nrm, sel, n)
            sel[p] = True
            out[t] = p
        return
    _rect_full(X, k, out, sel, nrm)


@njit(cache=True, nogil=True)
def _axpyn(a, x, y, m):
    """``y[:m] += a x[:m]``, IEEE (no fused multiply-add, no reassociation)."""
    for t in range(np.uint64(m)):
        y[t] += a * x[t]


@njit(cache=True, nogil=True)
def _rect_full(X, k, out, sel, nrm):
    """Greedy ``det(V_S^T V_S)`` extension of the ``r`` full-rank pivots in ``out[:r]`` to ``k`` rows.

    A Gram matrix singular in float64 despite the rank test gets a floor on
    the non-positive diagonal of its Cholesky factor (``sqrt(eps64 G_aa)``, 1
    if ``G_aa = 0``); a step with no finite score (not expected after the
    floor) takes the fill row (largest ``nrm``, the row norms of ``X``), so the
    rows stay unique.

    No fast-math here: plain IEEE operations in a fixed order, which the
    generic twin (``graft_array._agnostic.maxvol._rect``) repeats one for one,
    so both give the same rows even where the Gram matrix is nearly singular
    (its scores are then dominated by rounding, which must be the same).

    With L L^T = V_S^T V_S and z_i = L^-1 x_i, row i adds the factor
    1 + s_i, s_i = x_i^T (V_S^T V_S)^-1 x_i = ||z_i||^2. After adding row p the
    inverse changes by a rank one term (Sherman-Morrison), so with
    c_t(i) = x_i^T (V_S^T V_S)^-1_t x_p(t) = z_i . z_p - sum_{tau<t} c_tau(i) c_tau(p) / d_tau
    every s_i drops by c_t(i)^2 / d_t, d_t = 1 + s_p. O(n r^2 / 2) once, O(n (r + t)) per added row.
    """
    n, r = X.shape
    L = np.zeros((r, r))
    for j in range(r):  # lower triangle of V_S^T V_S, row axpys
        x = X[out[j]]
        for a in range(r):
            xa = np.float64(x[a])
            for c in range(a + 1):
                L[a, c] += xa * np.float64(x[c])
    for a in range(r):  # Cholesky by rows
        gaa = L[a, a]
        for c in range(a):
            acc = L[a, c]
            for t in range(c):
                acc -= L[a, t] * L[c, t]
            L[a, c] = acc / L[c, c]
        acc = L[a, a]
        for t in range(a):
            acc -= L[a, t] * L[a, t]
        # not positive: singular in float64; a floor of degree 1 (keeps z = L^-1 x finite)
        L[a, a] = math.sqrt(acc) if acc > 0.0 else (math.sqrt(2.220446049250313e-16 * gaa) if gaa > 0.0 else 1.0)
    Zt = np.empty((r, n))  # Z^T = L^-1 X^T by rows: contiguous axpys of length n
    for i in range(n):
        x = X[i]
        for a in range(r):
            Zt[a, i] = np.float64(x[a])
    for a in range(r):
        za = Zt[a]
        for t in range(a):
            _axpyn(-L[a, t], Zt[t], za, n)
        f = 1.0 / L[a, a]
        for i in range(n):
            za[i] *= f
    s = np.zeros(n)
    for a in range(r):
        za = Zt[a]
        for i in range(n):
            s[i] += za[i] * za[i]
    extra = k - r
    C = np.empty((extra, n))
    dv = np.empty(extra)
    for t in range(extra):
        p = -1
        best = -np.inf
        for i in range(n):
            if not sel[i] and s[i] > best:
                best = s[i]
                p = i
        if p < 0:
            p = _fill_pick(nrm, sel, n)
        sel[p] = True
        out[r + t] = p
        d = 1.0 + s[p]
        ct = C[t]
        ct[:] = 0.0
        for a in range(r):
            _axpyn(Zt[a, p], Zt[a], ct, n)
        for tau in range(t):  # earlier rank-one terms, as contiguous axpys
            f = C[tau, p] / dv[tau]
            _axpyn(-f, C[tau], ct, n)
        dv[t] = d
        f = 1.0 / d
        for i in range(n):
            s[i] -= ct[i] * ct[i] * f


@njit(cache=True, nogil=True, parallel=True)
def _rect_batched(V, piv, rank, k):
    """Rect extension of every batch, parallel over batches. Returns (B, k) pivots."""
    nb = V.shape[0]
    out = np.empty((nb, k), np.int64)
    for b in prange(nb):
        _rect_one(V[b], piv[b], k, rank[b], out[b])
    return out


@njit(cache=True, nogil=True)
def _refine_one(X, piv, tol, max_iters, eps):
    """Goreinov maxvol swaps on ``A = X[:, :k]`` (k = len(piv)), in place on ``piv``.

    Runs on ``A`` inside the band (:func:`_in_band` of the batch ``X``), else
    on :func:`_scaled64` of it (``B`` does not depend on the scale). Returns
    ``(converged, iterations)``; ``iterations == -1`` when the start block
    ``A[piv]`` is numerically singular by the greedy step's rule (a pivot of
    Gauss-Jordan with partial pivoting ``<= max(n, r) eps max|X|``, ``eps`` of
    V's dtype), and then nothing is done.
    """
    n, r = X.shape
    k = piv.shape[0]
    amax = _absmax_flat(X.reshape(n * r))
    stol = max(n, r) * eps * amax
    if _in_band(amax, r):
        return _refine_run(X, piv, tol, max_iters, stol)
    sc = unit_scale(amax)
    return _refine_run(_scaled64(X, np.arange(n), k, sc), piv, tol, max_iters, stol * sc)


@njit(cache=True, nogil=True)
def _refine_run(X, piv, tol, max_iters, stol):
    """:func:`_refine_one` on ``A = X[:, :k]`` as it is; ``stol`` the singular-start threshold in its units."""
    n = X.shape[0]
    k = piv.shape[0]
    AS = np.empty((k, k))
    for a in range(k):
        for c in range(k):
            AS[a, c] = np.float64(X[piv[a], c])
    Ai, rk = _inverse(AS, stol)
    if rk < k:
        return True, -1
    B = np.empty((n, k))
    y = np.empty(k)
    for i in range(n):
        for t in range(k):
            y[t] = 0.0
        for a in range(k):
            xa = np.float64(X[i, a])
            for t in range(k):
                y[t] += xa * Ai[a, t]
        for t in range(k):
            B[i, t] = y[t]
    bi, bj, bv = _abs_argmax_2d(B)
    col = np.empty(n)
    row = np.empty(k)
    for it in range(max_iters):
        if bv <= tol:
            return True, it
        piv[bj] = bi
        bij = B[bi, bj]
        for i in range(n):
            col[i] = B[i, bj]
        for t in range(k):
            row[t] = B[bi, t]
        row[bj] -= 1.0
        bv = -1.0
        ni = 0
        nj = 0
        for i in range(n):
            f = col[i] / bij
            for t in range(k):
                B[i, t] -= f * row[t]
            for t in range(k):
                a = abs(B[i, t])
                if a > bv:
                    bv = a
                    ni = i
                    nj = t
        bi, bj = ni, nj
    return bv <= tol, max_iters


@njit(cache=True, nogil=True)
def _abs_argmax_2d(B):
    """Row-major first position of ``max |B|``: ``(i, j, value)``."""
    bv = -1.0
    bi = 0
    bj = 0
    for i in range(B.shape[0]):
        for t in range(B.shape[1]):
            a = abs(B[i, t])
            if a > bv:
                bv = a
                bi = i
                bj = t
    return bi, bj, bv


@njit(cache=True, nogil=True, parallel=True)
def _refine_batched(V, piv, rank, tol, max_iters, eps):
    """Refinement of every batch with full rank (``rank == k``), parallel over batches.

    A batch whose start block is numerically singular is left as it is, with
    ``iterations = -1`` (``rank`` is not touched: it counts the greedy picks).
    """
    nb, k = piv.shape
    conv = np.ones(nb, np.bool_)
    iters = np.zeros(nb, np.int64)
    for b in prange(nb):
        if rank[b] == k:
            c, it = _refine_one(V[b], piv[b], tol, max_iters, eps)
            conv[b] = c
            iters[b] = it
    return conv, iters


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
            piv, rank, bad = _deim_batched(V, kk, eps, nthreads)
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
