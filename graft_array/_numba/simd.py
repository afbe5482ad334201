"""Machinery shared by the Numba maxvol kernels: LLVM vector intrinsics and small helpers.

Nothing here is an algorithm of its own. It holds

* scalar intrinsics and overloads (``_fmax``, ``_prefetch_*``, ``_one_like``,
  ``_simd_width``);
* the exact power-of-two scaling that keeps every kernel scale invariant at the
  ends of the floating-point range (``_in_band``, ``_scaled64``, ``_elim_scale``);
* the in-register transpose of a work-buffer block (``_transpose_block``), the
  atomic work counter of the tile loops (``_claim``) and the work-buffer
  leading dimension (``_padded``);
* explicit 256-bit vectors (``_Vec``, ``_VecI``) and their intrinsics
  (``_vload``, ``_vstore``, ``_vfnma``, ``_vargmax``, ...), also used by
  :mod:`graft_array._numba.lowrank`;
* reductions and row norms every kernel uses (``_absmax_flat``,
  ``_absmax_finite``, ``_sq_row_norms``, ``_row_norms``, ``_fill_pick``).

The ``@intrinsic`` / ``@overload`` definitions are registered when this module
is imported, so every kernel module imports it before its own functions are
compiled.
"""

import math

import llvmlite.binding as _llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

from .._common import rank_tol_factor
from .checks import unit_scale

# Fast-math flags: reassociation and FMA contraction (only change rounding). Not nnan/ninf: the code
# compares with +-inf sentinels. The max-reductions get their no-NaN flag from _fmax itself.
_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
# llvm.prefetch is overloaded on the pointer type: 'p0' with opaque pointers (LLVM >= 15), 'p0i8' before.
_PREFETCH_NAME = "llvm.prefetch.p0" if _llvm.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


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
# f eps M >= 2^-308, f >= 1) has a normal square (>= 2^-1022), 200 binary
# orders of magnitude below the tolerance; refine forms no squares, only
# ratios to entries of A_S, and refuses pivots below f eps a. So no
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


_rank_factor = njit(cache=True, nogil=True)(rank_tol_factor)  # max(r, min(n, r^2)): see _common


@njit(cache=True, nogil=True)
def _in_band(amax, r):
    """A float64 kernel may run unscaled on a batch of ``r`` columns and largest ``|entry|`` ``amax``
    (False for NaN)."""
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


# ---------------------------------------------------------------------------
# Work buffers: block transpose, padding; the tile loops' work counter
# ---------------------------------------------------------------------------


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

        out = _shuffle_transpose(builder, v, vw)
        for k in range(vw):
            st = builder.store(out[k], builder.bitcast(ptr(wa, tys[0], [builder.add(c0v, ir.Constant(intp, k)), i0v]),
                                                       vptr))
            st.align = 1
        return context.get_dummy_value()

    return types.none(W, i0, X, rows, c0), codegen


def _shuffle_transpose(builder, v, vw):
    """In-register transpose of the ``vw`` vectors ``v`` (``vw`` x ``vw``; the AVX unpack / shuffle / lane pattern)."""
    def sh(a, b, idx):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), vw), idx))

    if vw == 4:
        t0, t1 = sh(v[0], v[1], [0, 4, 2, 6]), sh(v[0], v[1], [1, 5, 3, 7])
        t2, t3 = sh(v[2], v[3], [0, 4, 2, 6]), sh(v[2], v[3], [1, 5, 3, 7])
        return [sh(t0, t2, [0, 1, 4, 5]), sh(t1, t3, [0, 1, 4, 5]), sh(t0, t2, [2, 3, 6, 7]), sh(t1, t3, [2, 3, 6, 7])]
    ulo, uhi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = []
    for k in range(4):
        t += [sh(v[2 * k], v[2 * k + 1], ulo), sh(v[2 * k], v[2 * k + 1], uhi)]
    slo, shi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    q = [sh(t[0], t[2], slo), sh(t[0], t[2], shi), sh(t[1], t[3], slo), sh(t[1], t[3], shi),
         sh(t[4], t[6], slo), sh(t[4], t[6], shi), sh(t[5], t[7], slo), sh(t[5], t[7], shi)]
    lo, hi = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return [sh(q[k], q[k + 4], lo) for k in range(4)] + [sh(q[k], q[k + 4], hi) for k in range(4)]


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
# The DEIM kernels (:mod:`.deim`) are written on whole vectors with these intrinsics:
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
        return _splat(builder, x, vt.lanes)

    return vt(A, i, j), codegen


@intrinsic
def _vsplat(typingctx, A, x):
    """``x`` (cast to ``A``'s dtype) in every lane."""
    if not (isinstance(A, types.Array) and A.dtype in (types.float32, types.float64) and isinstance(x, types.Number)):
        return None
    vt = _Vec(A.dtype)

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[1], sig.args[1], A.dtype), vt.lanes)

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


def _lanewise(op, doc):
    """An intrinsic ``f(a, b)``: the IEEE operation ``op`` (an llvmlite builder method) on two vectors, lane by lane."""

    def typer(typingctx, a, b):
        if not (isinstance(a, _Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return a(a, b), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_vmul = _lanewise("fmul", "``a * b`` lane by lane.")
_vdiv = _lanewise("fdiv", "``a / b`` lane by lane.")


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


def _splat(builder, x, lanes):
    """The scalar IR value ``x`` in every one of ``lanes`` lanes (insert, then a zero-mask shuffle: one broadcast)."""
    vty = ir.VectorType(x.type, lanes)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _splat_int(builder, x, bits, lanes):
    """The integer ``x`` (truncated or sign-extended to ``bits``) in every one of ``lanes`` lanes."""
    ity = ir.IntType(bits)
    x = builder.trunc(x, ity) if bits < x.type.width else (builder.sext(x, ity) if bits > x.type.width else x)
    return _splat(builder, x, lanes)


@intrinsic
def _viota(typingctx, A, i):
    """Lane indices ``[i, i + 1, ..., i + lanes - 1]`` for vectors of ``A``'s dtype."""
    if not (isinstance(A, types.Array) and A.dtype in (types.float32, types.float64) and isinstance(i, types.Integer)):
        return None
    it = _VecI(A.dtype)

    def codegen(context, builder, sig, args):
        v = _splat_int(builder, args[1], A.dtype.bitwidth, it.lanes)
        return builder.add(v, ir.Constant(v.type, list(range(it.lanes))))

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
# Reductions, row norms and the fill rule (shared by every kernel)
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FM)
def _absmax_flat(x):
    """``max |x|`` of a contiguous 1-D float array as float64 (0 if empty)."""
    if x.shape[0] == 0:
        return 0.0
    best = abs(x[0])
    for i in range(np.uint64(x.shape[0])):
        best = _fmax(best, abs(x[i]))
    return float(best)


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


@njit(cache=True, nogil=True)
def _sq_row_norms(X, rows, m, out):
    """``out[i] = ||X[rows[i], :]||^2`` (float64 accumulation) for ``i < m``; returns their max ``|entry|`` (0 if none).

    The one "squared row norms" pass of the float64 kernels (initial residuals
    of volume, fill norms, k > r); the max decides their band (:func:`_band_scale`).
    Summed in column order, each square and each sum rounded (no fast-math: no
    fused or reordered sum), as the CUDA kernels (``add_square``) and the
    generic path sum them: rows whose norms differ only in the last bits (a row
    and its permutation) rank alike on every backend.
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
# Lane intrinsics (the batch-interleaved kernels, compact.py: lanes are batches)
# ---------------------------------------------------------------------------


@intrinsic
def _visplat(typingctx, A, i):
    """Index ``i`` in every lane of a :class:`_VecI` for vectors of ``A``'s dtype."""
    if not (isinstance(A, types.Array) and A.dtype in (types.float32, types.float64) and isinstance(i, types.Integer)):
        return None
    it = _VecI(A.dtype)

    def codegen(context, builder, sig, args):
        return _splat_int(builder, args[1], A.dtype.bitwidth, it.lanes)

    return it(A, i), codegen


@intrinsic
def _vlane(typingctx, v, k):
    """Lane ``k`` of a :class:`_Vec` (a scalar of its dtype)."""
    if not (isinstance(v, _Vec) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        kk = context.cast(builder, args[1], sig.args[1], types.int32)
        return builder.extract_element(args[0], kk)

    return v.dtype(v, k), codegen


@intrinsic
def _vilane(typingctx, v, k):
    """Lane ``k`` of a :class:`_VecI` as int64."""
    if not (isinstance(v, _VecI) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        kk = context.cast(builder, args[1], sig.args[1], types.int32)
        x = builder.extract_element(args[0], kk)
        return builder.sext(x, ir.IntType(64)) if x.type.width < 64 else x

    return types.int64(v, k), codegen


@intrinsic
def _vgather(typingctx, A, c, idx):
    """The vector ``[A[c, idx[0]], ..., A[c, idx[lanes - 1]]]`` (``idx``: 1-D int64 array of offsets in row ``c``)."""
    if not (_is_c2d(A) and isinstance(idx, types.Array) and idx.ndim == 1 and idx.dtype == types.int64):
        return None
    vt = _Vec(A.dtype)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ia = context.make_array(sig.args[2])(context, builder, args[2])
        ld = cgutils.unpack_tuple(builder, ary.shape)[1]
        cc = context.cast(builder, args[1], sig.args[1], types.intp)
        base = builder.gep(ary.data, [builder.mul(cc, ld)])
        istride = cgutils.unpack_tuple(builder, ia.strides)[0]
        i8p = ir.IntType(8).as_pointer()
        vty = context.get_value_type(vt)
        v = ir.Constant(vty, ir.Undefined)
        for k in range(vt.lanes):
            ip = builder.bitcast(builder.gep(builder.bitcast(ia.data, i8p),
                                             [builder.mul(istride, ir.Constant(istride.type, k))]),
                                 ia.data.type)
            off = builder.load(ip)
            v = builder.insert_element(v, builder.load(builder.gep(base, [off])), ir.Constant(ir.IntType(32), k))
        return v

    return vt(A, c, idx), codegen


