"""Numba kernels of the randomized range finder on the batch Gram (twins of :mod:`graft_array._agnostic.lowrank`).

* :func:`batch_gram`: ``G_b = F_b F_b^T`` for every batch, only the lower
  triangle computed (half the multiply-adds of a GEMM) and mirrored. Register
  tiles of 4 x 3 rows: twelve dot products accumulated on explicit 256-bit
  vectors along ``d`` (seven loads per twelve fused multiply-adds, no spills),
  one horizontal sum each at the end (the tile is inlined: a call costs as
  much as the sums); the next batch is prefetched a few cache lines per tile,
  so the features stream from memory while the current batch is in L1/L2.
  One thread per call (``nogil``, no ``prange``): :mod:`graft_array._parallel`
  runs chunks of batches in threads. About 20% less CPU time than NumPy's
  stacked ``ssyrk`` (OpenBLAS) on 128 x 784 float32 batches.
* :func:`gram_ritz`: everything after the Gram for one batch at a time while
  its data sit in L1/L2: the products ``Q^T G`` in the Gram's precision
  (5-row x 2-vector register tiles of broadcast multiply-adds), shifted
  Cholesky QR (``S = Y Y^T`` on the dot tiles, a Cholesky factor, and the
  forward substitution ``L X = Y`` done in place on the rows: no explicit
  inverse, no second product), ``T = (Q^T G) Q``, the eigendecomposition of
  the l x l matrix ``(T + T^T) / 2`` (Householder tridiagonalisation, implicit
  QL with rotations applied to contiguous rows: half the time of LAPACK's
  ``syevd`` at l = 40, which spends it in calls to level-2 BLAS) and
  ``V = Q U``. About half the CPU time of the stacked NumPy calls.
  The arithmetic is the generic code's (the same products in the same
  precisions, the same shift rule, the same Rayleigh-Ritz), only rounded in a
  different order; a block whose QL iteration does not converge (never seen)
  is redone by the generic code.
* :func:`cholqr_rows`: the Cholesky QR alone (the twin of the generic ``_orth``
  in row layout).

Scratch rows are padded with zero columns to whole blocks of vectors, so the
vector loops have no scalar tails (zeros change no dot product and stay zero
under every update).
"""

import math

import numpy as np
from numba import njit
from numba.extending import intrinsic

from .maxvol import (_FM, _Vec, _lane_reduce, _prefetch_at, _simd_width, _vbcast, _vec_call, _vfnma, _vload, _vmul, _vsplat,
                     _vstore, _vsuffix, _vzero)

__all__ = ["batch_gram", "gram_ritz", "cholqr_rows"]

_EPS = float(np.finfo(np.float64).eps)
_PAD = 16  # scratch rows are padded to a multiple of 16 elements (4 float64 vectors, 2 float32 vectors)
_QL_MAX_ITERS = 30


# ---------------------------------------------------------------------------
# Vector helpers (on top of the _Vec intrinsics of maxvol)
# ---------------------------------------------------------------------------


@intrinsic
def _vfma(typingctx, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma``)."""
    if not (isinstance(a, _Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        return _vec_call(builder, f"llvm.fma.{_vsuffix(a)}", args[0].type, list(args))

    return a(a, b, c), codegen


@intrinsic
def _vhsum(typingctx, v):
    """Sum of the lanes of ``v`` (a scalar; pairwise halving)."""
    if not isinstance(v, _Vec):
        return None

    def codegen(context, builder, sig, args):
        return _lane_reduce(builder, args[0], v.lanes, lambda lo, hi, n: builder.fadd(lo, hi))

    return v.dtype(v), codegen


@njit(cache=True, nogil=True)
def _padded(m):
    return (m + _PAD - 1) // _PAD * _PAD


# ---------------------------------------------------------------------------
# Dot-product tiles: G[i, j] = X[i, :d] . Y[j, :d]
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FM, inline="always")  # a call costs ~80 cycles a tile
def _tile43(X, Y, G, i0, i1, i2, i3, j0, j1, j2, dv, d, mirror):
    """The 4 x 3 dot products of rows ``i0..i3`` of X with rows ``j0..j2`` of Y into G (and G^T if ``mirror``).

    ``dv`` (a multiple of the vector width) columns on vectors, the rest (< one
    vector) in scalars. Rows may repeat (the callers clamp them at the edge).
    """
    w = _simd_width(X)
    c00 = _vzero(X)
    c01 = c00
    c02 = c00
    c10 = c00
    c11 = c00
    c12 = c00
    c20 = c00
    c21 = c00
    c22 = c00
    c30 = c00
    c31 = c00
    c32 = c00
    for k in range(0, dv, w):
        b0 = _vload(Y, j0, k)
        b1 = _vload(Y, j1, k)
        b2 = _vload(Y, j2, k)
        a = _vload(X, i0, k)
        c00 = _vfma(a, b0, c00)
        c01 = _vfma(a, b1, c01)
        c02 = _vfma(a, b2, c02)
        a = _vload(X, i1, k)
        c10 = _vfma(a, b0, c10)
        c11 = _vfma(a, b1, c11)
        c12 = _vfma(a, b2, c12)
        a = _vload(X, i2, k)
        c20 = _vfma(a, b0, c20)
        c21 = _vfma(a, b1, c21)
        c22 = _vfma(a, b2, c22)
        a = _vload(X, i3, k)
        c30 = _vfma(a, b0, c30)
        c31 = _vfma(a, b1, c31)
        c32 = _vfma(a, b2, c32)
    s00 = _vhsum(c00)
    s01 = _vhsum(c01)
    s02 = _vhsum(c02)
    s10 = _vhsum(c10)
    s11 = _vhsum(c11)
    s12 = _vhsum(c12)
    s20 = _vhsum(c20)
    s21 = _vhsum(c21)
    s22 = _vhsum(c22)
    s30 = _vhsum(c30)
    s31 = _vhsum(c31)
    s32 = _vhsum(c32)
    for k in range(dv, d):
        b0 = Y[j0, k]
        b1 = Y[j1, k]
        b2 = Y[j2, k]
        a = X[i0, k]
        s00 += a * b0
        s01 += a * b1
        s02 += a * b2
        a = X[i1, k]
        s10 += a * b0
        s11 += a * b1
        s12 += a * b2
        a = X[i2, k]
        s20 += a * b0
        s21 += a * b1
        s22 += a * b2
        a = X[i3, k]
        s30 += a * b0
        s31 += a * b1
        s32 += a * b2
    G[i0, j0] = s00
    G[i0, j1] = s01
    G[i0, j2] = s02
    G[i1, j0] = s10
    G[i1, j1] = s11
    G[i1, j2] = s12
    G[i2, j0] = s20
    G[i2, j1] = s21
    G[i2, j2] = s22
    G[i3, j0] = s30
    G[i3, j1] = s31
    G[i3, j2] = s32
    if mirror:
        G[j0, i0] = s00
        G[j1, i0] = s01
        G[j2, i0] = s02
        G[j0, i1] = s10
        G[j1, i1] = s11
        G[j2, i1] = s12
        G[j0, i2] = s20
        G[j1, i2] = s21
        G[j2, i2] = s22
        G[j0, i3] = s30
        G[j1, i3] = s31
        G[j2, i3] = s32


@njit(cache=True, nogil=True, fastmath=_FM)
def _syrk(X, G, m, d, nxt, step):
    """``G[:m, :m] = X[:m, :d] X[:m, :d]^T`` (symmetric, full), from the tiles on and below the diagonal.

    After each tile, ``step`` more elements of the 1-D ``nxt`` (the next
    batch) are prefetched, one cache line at a time.
    """
    w = _simd_width(X)
    dv = d - d % w
    line = 2 * w  # elements per 64-byte cache line
    cur = 0
    tot = nxt.shape[0]
    for i in range(0, m, 4):
        i1 = min(i + 1, m - 1)
        i2 = min(i + 2, m - 1)
        i3 = min(i + 3, m - 1)
        for j in range(0, min(i + 4, m), 3):
            _tile43(X, X, G, i, i1, i2, i3, j, min(j + 1, m - 1), min(j + 2, m - 1), dv, d, True)
            end = min(cur + step, tot)
            while cur < end:
                _prefetch_at(nxt, cur)
                cur += line


@njit(cache=True, nogil=True, fastmath=_FM)
def _gram_stack(F, G):
    nb, n, d = F.shape
    tiles = 0
    for i in range(0, n, 4):
        tiles += (min(i + 4, n) + 2) // 3
    step = (n * d + tiles - 1) // tiles
    for b in range(nb):
        _syrk(F[b], G[b], n, d, F[min(b + 1, nb - 1)].reshape(n * d), step)


def batch_gram(F):
    """``F_b F_b^T`` for each batch of F (B, n, d), float32 or float64, in F's dtype: (B, n, n), symmetric.

    The twin of ``F @ F^T``: the same dot products along ``d`` (accumulated in
    F's precision, fused multiply-adds), rounded in another order.
    """
    F = np.ascontiguousarray(F)
    nb, n, _ = F.shape
    G = np.empty((nb, n, n), dtype=F.dtype)
    if nb and n:
        _gram_stack(F, G)
    return G


# ---------------------------------------------------------------------------
# Shifted Cholesky QR on padded rows (l, npad), float64
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FM)
def _cholesky_shifted(S, Lt, dinv, n, l):
    """``L L^T = S + shift I`` (the generic shift rule), right-looking; ``Lt = L^T`` by rows, ``dinv = 1 / diag(L)``.

    Only the lower triangle of S (l, lp) is read, and S is overwritten (its
    upper part with garbage). Column c of L is row c of Lt, so each step's
    rank-1 update of the trailing rows is a contiguous whole-vector axpy from
    the vector holding column c + 1 (Lt's entries left of its diagonal are
    zero; the diagonal entry only overwrites S[i, c], already used).
    """
    w = _simd_width(S)
    lp = S.shape[1]
    trace = 0.0
    for a in range(l):
        trace += S[a, a]
    shift = (n + l) * _EPS * trace if trace > 0.0 else 1.0  # keeps a rank-deficient block defined (homogeneous)
    for c in range(l):
        for j in range(lp):
            Lt[c, j] = 0.0
    for c in range(l):
        x = S[c, c] + shift
        lcc = math.sqrt(x) if x > 0.0 else math.sqrt(shift)
        inv = 1.0 / lcc
        dinv[c] = inv
        Lt[c, c] = lcc
        for i in range(c + 1, l):
            Lt[c, i] = S[i, c] * inv
        j0 = (c + 1) // w * w
        for i in range(c + 1, l):  # S[i, c+1:i+1] -= L[i, c] L[c+1:i+1, c]
            f = _vsplat(S, Lt[c, i])
            for j in range(j0, i + 1, w):
                _vstore(S, i, j, _vfnma(f, _vload(Lt, c, j), _vload(S, i, j)))


@njit(cache=True, nogil=True, fastmath=_FM)
def _forward_rows(Lt, dinv, Y, l, npad):
    """``Y <- L^-1 Y`` in place: row a becomes ``(Y[a] - sum_{t<a} L[a, t] Y[t]) / L[a, a]`` (4-vector blocks)."""
    w = _simd_width(Y)
    for a in range(l):
        inv = _vsplat(Y, dinv[a])
        for j in range(0, npad, 4 * w):
            y0 = _vload(Y, a, j)
            y1 = _vload(Y, a, j + w)
            y2 = _vload(Y, a, j + 2 * w)
            y3 = _vload(Y, a, j + 3 * w)
            for t in range(a):
                f = _vsplat(Y, Lt[t, a])
                y0 = _vfnma(f, _vload(Y, t, j), y0)
                y1 = _vfnma(f, _vload(Y, t, j + w), y1)
                y2 = _vfnma(f, _vload(Y, t, j + 2 * w), y2)
                y3 = _vfnma(f, _vload(Y, t, j + 3 * w), y3)
            _vstore(Y, a, j, _vmul(y0, inv))
            _vstore(Y, a, j + w, _vmul(y1, inv))
            _vstore(Y, a, j + 2 * w, _vmul(y2, inv))
            _vstore(Y, a, j + 3 * w, _vmul(y3, inv))


@njit(cache=True, nogil=True, fastmath=_FM)
def _cholqr(Y, S, Lt, dinv, n, l, passes, none):
    """Orthonormalise the rows of Y (l, npad) in place, ``passes`` times.

    S, Lt: (l, lp) work rows (lp: l rounded up to whole float64 vectors),
    dinv: (l,), ``none``: an empty 1-D array.
    """
    npad = Y.shape[1]
    for _ in range(passes):
        _syrk(Y, S, l, npad, none, 0)
        _cholesky_shifted(S, Lt, dinv, n, l)
        _forward_rows(Lt, dinv, Y, l, npad)


@njit(cache=True, nogil=True, fastmath=_FM)
def _cholqr_stack(Y, passes, out):
    nb, l, n = Y.shape
    W = np.zeros((l, _padded(n)))
    lp = (l + 3) // 4 * 4  # float64 vectors
    S = np.zeros((l, lp))
    Lt = np.zeros((l, lp))
    dinv = np.empty(l)
    none = np.empty(0)
    for b in range(nb):
        for a in range(l):
            for c in range(n):
                W[a, c] = Y[b, a, c]
        _cholqr(W, S, Lt, dinv, n, l, passes, none)
        for a in range(l):
            for c in range(n):
                out[b, a, c] = W[a, c]


def cholqr_rows(Y, passes=2):
    """Orthonormal rows spanning the rows of each Y_b (B, l, n), by shifted Cholesky QR ``passes`` times.

    The row-layout twin of the generic ``_orth``. Returns a new float64 array
    (Y is not written to).
    """
    Y = np.asarray(Y, dtype=np.float64)
    out = np.empty(Y.shape)
    if Y.size:
        _cholqr_stack(Y, int(passes), out)
    return out


# ---------------------------------------------------------------------------
# Symmetric eigendecomposition of a small l x l block (rows padded to lp)
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FM)
def _rowdot(A, i, B, k, j0, lp):
    """``A[i, j0:lp] . B[k, j0:lp]`` (``j0``, ``lp`` whole vectors)."""
    w = _simd_width(A)
    acc = _vzero(A)
    for j in range(j0, lp, w):
        acc = _vfma(_vload(A, i, j), _vload(B, k, j), acc)
    return _vhsum(acc)


@njit(cache=True, nogil=True, fastmath=_FM)
def _rowaxpy(A, i, f, B, k, j0, lp):
    """``A[i, j0:lp] -= f B[k, j0:lp]``."""
    w = _simd_width(A)
    fv = _vsplat(A, f)
    for j in range(j0, lp, w):
        _vstore(A, i, j, _vfnma(fv, _vload(B, k, j), _vload(A, i, j)))


@njit(cache=True, nogil=True, fastmath=_FM)
def _rowrank2(A, i, vi, wi, P, V, k, j0, lp):
    """``A[i, j0:lp] -= vi P[0, j0:lp] + wi V[k, j0:lp]``."""
    w = _simd_width(A)
    a = _vsplat(A, vi)
    b = _vsplat(A, wi)
    for j in range(j0, lp, w):
        _vstore(A, i, j, _vfnma(b, _vload(V, k, j), _vfnma(a, _vload(P, 0, j), _vload(A, i, j))))


@njit(cache=True, nogil=True, fastmath=_FM)
def _tridiagonalize(A, ZT, d, e, V, tau, P, l):
    """Householder reduction of the symmetric A (l, lp; zero beyond column l): ``A = Q T Q^T``.

    T's diagonal goes to ``d`` and its subdiagonal to ``e`` (``e[i] = T[i+1, i]``,
    ``e[l-1] = 0``); ``ZT`` (l, lp) receives ``Q^T``, accumulated backwards
    (``Q^T = H_{l-3} ... H_0``), so row i of ZT is column i of Q. V holds the
    Householder vectors by rows (zero on entry outside them), P one work row.
    Every row operation is a whole-vector loop from the vector holding column
    ``k + 1`` on (the entries before it multiply zeros).
    """
    lp = A.shape[1]
    w = _simd_width(A)
    for k in range(l - 2):
        alpha = A[k + 1, k]
        xn = 0.0
        for i in range(k + 2, l):
            xn += A[i, k] * A[i, k]
        d[k] = A[k, k]
        if xn == 0.0:
            e[k] = alpha
            tau[k] = 0.0
            continue
        beta = -math.copysign(math.sqrt(alpha * alpha + xn), alpha)
        t = (beta - alpha) / beta
        tau[k] = t
        scale = 1.0 / (alpha - beta)
        e[k] = beta
        V[k, k + 1] = 1.0
        for i in range(k + 2, l):
            V[k, i] = A[i, k] * scale
        j0 = (k + 1) // w * w
        for j in range(j0, lp):
            P[0, j] = 0.0
        pv = 0.0
        for i in range(k + 1, l):  # p = tau A22 v
            s = t * _rowdot(A, i, V, k, j0, lp)
            P[0, i] = s
            pv += s * V[k, i]
        half = 0.5 * t * pv
        for i in range(k + 1, l):  # w = p - (tau p.v / 2) v
            P[0, i] -= half * V[k, i]
        for i in range(k + 1, l):  # A22 -= v w^T + w v^T
            _rowrank2(A, i, V[k, i], P[0, i], P, V, k, j0, lp)
    if l >= 2:
        d[l - 2] = A[l - 2, l - 2]
        e[l - 2] = A[l - 1, l - 2]
    d[l - 1] = A[l - 1, l - 1]
    e[l - 1] = 0.0
    for i in range(l):
        for j in range(lp):
            ZT[i, j] = 0.0
        ZT[i, i] = 1.0
    for k in range(l - 3, -1, -1):
        t = tau[k]
        if t == 0.0:
            continue
        j0 = (k + 1) // w * w
        for i in range(k + 1, l):
            _rowaxpy(ZT, i, t * _rowdot(ZT, i, V, k, j0, lp), V, k, j0, lp)


@njit(cache=True, nogil=True, fastmath=_FM)
def _rotate_rows(ZT, i, c, s):
    """``(ZT[i], ZT[i+1]) <- (c ZT[i] - s ZT[i+1], s ZT[i] + c ZT[i+1])``."""
    w = _simd_width(ZT)
    cv = _vsplat(ZT, c)
    sv = _vsplat(ZT, s)
    for j in range(0, ZT.shape[1], w):
        z0 = _vload(ZT, i, j)
        z1 = _vload(ZT, i + 1, j)
        _vstore(ZT, i + 1, j, _vfma(sv, z0, _vmul(cv, z1)))
        _vstore(ZT, i, j, _vfnma(sv, z1, _vmul(cv, z0)))


@njit(cache=True, nogil=True, fastmath=_FM)
def _tridiagonal_ql(d, e, ZT, l):
    """Eigenvalues of the tridiagonal (d, e) into d by implicit QL with Wilkinson shifts (EISPACK ``tql2``).

    Each plane rotation is applied to rows i, i+1 of ZT, which ends holding the
    eigenvectors by rows (unordered). The matrix is scaled to max |entry| = 1
    by the caller (max |entry| < 1), so ``sqrt(f^2 + g^2)`` cannot overflow; an off-diagonal
    below ``eps (|d_m| + |d_m+1| + eps)`` is negligible. False when an
    eigenvalue needs more than 30 iterations (the caller falls back).
    """
    for k in range(l):
        it = 0
        while True:
            m = k
            while m < l - 1:
                if abs(e[m]) <= _EPS * (abs(d[m]) + abs(d[m + 1]) + _EPS):
                    break
                m += 1
            if m == k:
                break
            it += 1
            if it > _QL_MAX_ITERS:
                return False
            g = (d[k + 1] - d[k]) / (2.0 * e[k])
            r = math.sqrt(g * g + 1.0)
            g = d[m] - d[k] + e[k] / (g + math.copysign(r, g))
            s = 1.0
            c = 1.0
            p = 0.0
            i = m - 1
            underflow = False
            while i >= k:
                f = s * e[i]
                b = c * e[i]
                r = math.sqrt(f * f + g * g)
                e[i + 1] = r
                if r == 0.0:
                    d[i + 1] -= p
                    e[m] = 0.0
                    underflow = True
                    break
                s = f / r
                c = g / r
                g = d[i + 1] - p
                r = (d[i] - g) * s + 2.0 * c * b
                p = s * r
                d[i + 1] = g + p
                g = c * r - b
                _rotate_rows(ZT, i, c, s)
                i -= 1
            if underflow:
                continue
            d[k] -= p
            e[k] = g
            e[m] = 0.0
    return True


# ---------------------------------------------------------------------------
# Products with the Gram and the Rayleigh-Ritz step
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=_FM)
def _times_gram(A, G, C, l, n):
    """``C[:l, :npad] = A[:l, :n] G[:n, :npad]`` in G's dtype (npad: G's padded width; 5-row x 2-vector tiles)."""
    w = _simd_width(G)
    npad = G.shape[1]
    for a in range(0, l, 5):
        a1 = min(a + 1, l - 1)
        a2 = min(a + 2, l - 1)
        a3 = min(a + 3, l - 1)
        a4 = min(a + 4, l - 1)
        for j in range(0, npad, 2 * w):
            c00 = _vzero(G)
            c01 = c00
            c10 = c00
            c11 = c00
            c20 = c00
            c21 = c00
            c30 = c00
            c31 = c00
            c40 = c00
            c41 = c00
            for k in range(n):
                g0 = _vload(G, k, j)
                g1 = _vload(G, k, j + w)
                f = _vbcast(A, a, k)
                c00 = _vfma(f, g0, c00)
                c01 = _vfma(f, g1, c01)
                f = _vbcast(A, a1, k)
                c10 = _vfma(f, g0, c10)
                c11 = _vfma(f, g1, c11)
                f = _vbcast(A, a2, k)
                c20 = _vfma(f, g0, c20)
                c21 = _vfma(f, g1, c21)
                f = _vbcast(A, a3, k)
                c30 = _vfma(f, g0, c30)
                c31 = _vfma(f, g1, c31)
                f = _vbcast(A, a4, k)
                c40 = _vfma(f, g0, c40)
                c41 = _vfma(f, g1, c41)
            _vstore(C, a, j, c00)
            _vstore(C, a, j + w, c01)
            _vstore(C, a1, j, c10)
            _vstore(C, a1, j + w, c11)
            _vstore(C, a2, j, c20)
            _vstore(C, a2, j + w, c21)
            _vstore(C, a3, j, c30)
            _vstore(C, a3, j + w, c31)
            _vstore(C, a4, j, c40)
            _vstore(C, a4, j + w, c41)


@njit(cache=True, nogil=True, fastmath=_FM)
def _dots(X, Y, T, l, dv):
    """``T[a, c] = X[a, :dv] . Y[c, :dv]`` for all a, c < l (not symmetrised)."""
    for i in range(0, l, 4):
        i1 = min(i + 1, l - 1)
        i2 = min(i + 2, l - 1)
        i3 = min(i + 3, l - 1)
        for j in range(0, l, 3):
            _tile43(X, Y, T, i, i1, i2, i3, j, min(j + 1, l - 1), min(j + 2, l - 1), dv, dv, False)


@njit(cache=True, nogil=True, fastmath=_FM)
def _eigh_block(S, T, ZT, d, e, H, tau, P, l):
    """Eigenpairs of ``(S + S^T) / 2`` (S: l x l): eigenvalues ``d / (s1 s2)`` (unordered), eigenvectors in rows of ZT.

    The matrix is first scaled by the power of two ``s1 s2`` that brings its
    largest entry into [1/2, 1) (exact, two factors so that neither overflows;
    T, ZT, H: (l, lp) work rows, zero beyond column l). Returns ``(s1, s2)``,
    ``s1 = 0`` when S is not finite or the QL iteration did not converge.
    """
    big = 0.0
    for a in range(l):
        for c in range(l):
            x = 0.5 * (S[a, c] + S[c, a])
            T[a, c] = x
            big = max(big, abs(x))
    if not big < np.inf:  # NaN or infinity
        return 0.0, 1.0
    ex = -math.frexp(big)[1] if big > 0.0 else 0
    s1 = math.ldexp(1.0, ex // 2)
    s2 = math.ldexp(1.0, ex - ex // 2)
    for a in range(l):
        for c in range(l):
            T[a, c] = T[a, c] * s1 * s2
    _tridiagonalize(T, ZT, d, e, H, tau, P, l)
    if not _tridiagonal_ql(d, e, ZT, l):
        return 0.0, 1.0
    return s1, s2


@njit(cache=True, nogil=True, fastmath=_FM)
def _eigh_stack(S, w, U, ok):
    nb, l, _ = S.shape
    lp = (l + 3) // 4 * 4
    T = np.zeros((l, lp))
    ZT = np.zeros((l, lp))
    H = np.zeros((l, lp))
    P = np.zeros((1, lp))
    d = np.empty(l)
    e = np.empty(l)
    tau = np.empty(l)
    for b in range(nb):
        s1, s2 = _eigh_block(S[b], T, ZT, d, e, H, tau, P, l)
        if s1 == 0.0:
            ok[b] = False
            continue
        order = np.argsort(d)
        for c in range(l):
            w[b, c] = d[order[c]] / s1 / s2
            for a in range(l):
                U[b, a, c] = ZT[order[c], a]


def _eigh_small(S):
    """``np.linalg.eigh`` of ``(S + S^T) / 2`` for a stack of small blocks by the kernel of :func:`gram_ritz`.

    Ascending eigenvalues, eigenvectors in columns; blocks the kernel gives up
    on (not finite, QL not converged) get NaN. For tests.
    """
    S = np.ascontiguousarray(S, dtype=np.float64)
    nb, l, _ = S.shape
    w = np.full((nb, l), np.nan)
    U = np.full((nb, l, l), np.nan)
    ok = np.ones(nb, dtype=np.bool_)
    if nb and l:
        _eigh_stack(S, w, U, ok)
    w[~ok] = np.nan
    U[~ok] = np.nan
    return w, U


@njit(cache=True, nogil=True, fastmath=_FM)
def _gram_ritz_stack(G, omega_t, power_iters, r, wout, Vout, ok):
    """Per batch: the range finder's rows Q^T, T = Q^T G Q, its top-r eigenpairs and V = Q U (see the module)."""
    nb, n, _ = G.shape
    l = omega_t.shape[0]
    npad = _padded(n)
    lp = (l + 3) // 4 * 4  # float64 vectors
    Gp = np.zeros((n, npad), G.dtype)  # the batch's Gram, padded
    A = np.zeros((l, npad), G.dtype)  # Q^T (or Omega^T) in G's precision
    C = np.zeros((l, npad), G.dtype)  # A G
    Y = np.zeros((l, npad))  # Q^T, float64
    S = np.zeros((l, lp))
    Lt = np.zeros((l, lp))
    dinv = np.empty(l)
    T = np.zeros((l, lp))
    ZT = np.zeros((l, lp))
    H = np.zeros((l, lp))
    Z = np.zeros((l, npad))
    P = np.zeros((1, lp))
    Ut = np.zeros((r, lp))
    VT = np.zeros((r, npad))
    d = np.empty(l)
    e = np.empty(l)
    tau = np.empty(l)
    none = np.empty(0)
    for b in range(nb):
        for k in range(n):
            for c in range(n):
                Gp[k, c] = G[b, k, c]
        for a in range(l):
            for c in range(n):
                A[a, c] = omega_t[a, c]
        for it in range(power_iters + 1):  # Q^T = orth(A G), A = Omega^T then Q^T
            _times_gram(A, Gp, C, l, n)
            for a in range(l):
                for c in range(npad):
                    Y[a, c] = C[a, c]
            _cholqr(Y, S, Lt, dinv, n, l, 2 if it == power_iters else 1, none)
            for a in range(l):
                for c in range(npad):
                    A[a, c] = Y[a, c]
        _times_gram(A, Gp, C, l, n)  # Z = Q^T G (as float64), then T = Z Q
        for a in range(l):
            for c in range(npad):
                Z[a, c] = C[a, c]
        _dots(Z, Y, S, l, npad)
        s1, s2 = _eigh_block(S, T, ZT, d, e, H, tau, P, l)  # eigenpairs of (T + T^T) / 2, scaled by s1 s2
        if s1 == 0.0:
            ok[b] = False
            continue
        order = np.argsort(d)
        for c in range(r):  # row c of U^T: the eigenvector of the c-th largest eigenvalue
            top = order[l - 1 - c]
            wout[b, c] = d[top] / s1 / s2
            for a in range(l):
                Ut[c, a] = ZT[top, a]
        _times_gram(Ut, Y, VT, r, l)  # V^T = U^T Q^T
        for i in range(n):
            for c in range(r):
                Vout[b, i, c] = VT[c, i]


def gram_ritz(G, omega_t, power_iters, r):
    """Top-r Ritz pairs of the randomized range finder on each batch Gram G_b (B, n, n). Returns (w, V).

    The twin of the generic ``gram_ritz``: ``Q^T = orth(Omega^T G)`` (one
    Cholesky QR pass), ``power_iters`` times ``Q^T = orth(Q^T G)`` (two passes
    the last time), ``T = (Q^T G) Q`` and the eigenpairs of ``(T + T^T) / 2``:
    w (B, r) descending and V = Q U (B, n, r), float64. The products with G run
    in G's dtype (float32 or float64), as in the generic code. ``omega_t``
    (l, n) in G's dtype is shared by all batches.
    """
    G = np.ascontiguousarray(G)
    omega_t = np.ascontiguousarray(omega_t, dtype=G.dtype)
    nb, n, _ = G.shape
    if not 0 <= r <= omega_t.shape[0] <= n or power_iters < 0:
        raise ValueError(f"gram_ritz expects 0 <= r <= l <= n and power_iters >= 0; got r={r}, "
                         f"l={omega_t.shape[0]}, n={n}, power_iters={power_iters}.")
    w = np.zeros((nb, r))
    V = np.zeros((nb, n, r))
    ok = np.ones(nb, dtype=np.bool_)
    if nb and r:
        _gram_ritz_stack(G, omega_t, int(power_iters), int(r), w, V, ok)
    if not ok.all():  # a QL iteration that did not converge, or a non-finite block: the generic code decides
        from .._agnostic.lowrank import gram_ritz as generic

        bad = np.flatnonzero(~ok)
        w[bad], V[bad] = generic(np, G[bad], omega_t, power_iters, r)
    return w, V
