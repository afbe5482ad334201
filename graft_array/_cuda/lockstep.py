"""NumPy "lockstep" references of the CUDA kernels: their reduction order and tie rules, step by step.

Each function runs every thread of a block at once as NumPy vectors and
reduces exactly as the kernel does (the warp's shuffle-down tree, then the
tree over the warps' winners), so that the algorithm the CUDA code implements
is checked against the Numba kernels and LAPACK even where no GPU and no
compiler is at hand.
"""

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from .._common import rank_tol_factor
from .._numba.checks import unit_scale
from .._numba.simd import _vec_call


@intrinsic
def _fnma1(typingctx, a, b, c):
    """``c - a b`` rounded once (``llvm.fma(-a, b, c)``): common.cuh's ``fnma``, exactly (NumPy has no fma)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        x, y, z = args
        return _vec_call(builder, f"llvm.fma.f{a.bitwidth}", x.type, [builder.fneg(x), y, z])

    return a(a, b, c), codegen


@njit
def _fnma_flat(a, b, c, out):
    for t in range(out.shape[0]):
        out[t] = _fnma1(a[t], b[t], c[t])


def fnma(a, b, c):
    """``c - a b`` rounded once, elementwise and broadcast, in the arrays' common dtype."""
    a, b, c = np.broadcast_arrays(a, b, c)
    out = np.empty(c.shape, dtype=c.dtype)
    _fnma_flat(*(np.ascontiguousarray(x, dtype=c.dtype).reshape(-1) for x in (a, b, c)), out.reshape(-1))
    return out


def _better(va, ia, vb, ib):
    return (va > vb) | ((va == vb) & (ia < ib))


def _warp_tree(v, i):
    """Every warp's shuffle-down tree on (v, i) (length a multiple of 32): lane 0's result per warp."""
    v = v.reshape(-1, 32).copy()
    i = i.reshape(-1, 32).copy()
    for off in (16, 8, 4, 2, 1):
        ov = np.concatenate([v[:, off:], v[:, -off:]], axis=1)  # out-of-range lanes read their own value
        oi = np.concatenate([i[:, off:], i[:, -off:]], axis=1)
        ov[:, 32 - off:], oi[:, 32 - off:] = v[:, 32 - off:], i[:, 32 - off:]
        take = _better(ov, oi, v, i)
        v, i = np.where(take, ov, v), np.where(take, oi, i)
    return v[:, 0], i[:, 0]


def block_argmax(v, i):
    """The kernel's ``block_argmax``: (best value, its index) over a block (length a multiple of 32)."""
    wv, wi = _warp_tree(np.asarray(v, dtype=np.float64), np.asarray(i, dtype=np.int64))
    nw = wv.shape[0]
    lv = np.full(32, -1.0)
    li = np.full(32, 0x7FFFFFFF, dtype=np.int64)
    lv[:nw], li[:nw] = wv, wi
    bv, bi = _warp_tree(lv, li)
    return float(bv[0]), int(bi[0])


def strided_argmax(values, threads):
    """The tile kernels' search (tournament.cu, volume.cu's tall scan): each of ``threads`` threads scans rows
    t, t + threads, ... in order keeping its first largest, then ``block_argmax`` over the threads' winners.
    Inactive rows carry -1. Returns (best value, row)."""
    v = np.asarray(values, dtype=np.float64)
    bv = np.full(threads, -1.0)
    bi = np.full(threads, 0x7FFFFFFF, dtype=np.int64)
    for t in range(threads):
        for i in range(t, v.shape[0], threads):
            if v[i] > bv[t]:
                bv[t], bi[t] = v[i], i
    return block_argmax(bv, bi)


def deim_batched(V, kk):
    """``deim.cu``'s batched DEIM on a NumPy array (B, n, r): ``(piv, rank, bad)``, as the kernel computes them."""
    V = np.asarray(V)
    T = V.dtype.type
    B, n, r = V.shape
    eps = float(np.finfo(V.dtype).eps)
    lo, hi = (2.0 ** -60, 2.0 ** 60) if V.dtype == np.float32 else (2.0 ** -500, 2.0 ** 500)
    block = max(32, -(-n // 32) * 32)
    piv = np.zeros((B, kk), dtype=np.int64)
    rank = np.zeros(B, dtype=np.int64)
    bad = np.zeros(B, dtype=np.int32)
    tid = np.arange(block, dtype=np.int64)
    for b in range(B):
        X = V[b].astype(np.float64)
        if not np.isfinite(X).all():
            piv[b], bad[b] = np.arange(kk), 1
            continue
        vmax = float(np.abs(X).max()) if X.size else 0.0
        sc = 1.0 if (lo <= vmax <= hi or vmax == 0.0) else unit_scale(vmax)
        tol = rank_tol_factor(n, r) * eps * (vmax * sc)
        in_band = vmax == 0.0 or (2.0 ** -256 <= vmax and vmax * np.sqrt(r) <= 2.0 ** 256)
        nsc = 1.0 if in_band else unit_scale(vmax)
        W = V[b, :, :kk].copy() if sc == 1.0 else (X[:, :kk] * sc).astype(T)
        nrm = np.full(block, -1.0)
        nrm[:n] = np.sqrt(np.sum((X * nsc) ** 2, axis=1))
        cand = tid < n
        for j in range(kk):
            a = np.full(block, -1.0)
            a[:n] = np.abs(W[:, j].astype(np.float64))
            best, p = block_argmax(np.where(cand, a, -1.0), tid)
            ok = best > tol
            if not ok:
                _, p = block_argmax(np.where(cand, nrm, -1.0), tid)
            piv[b, j] = p
            cand[p] = False
            if ok:
                rank[b] += 1
                live = np.nonzero(cand[:n])[0]
                if j + 1 < kk:  # in the batch's dtype, as the kernel: U's row = pivot row x rounded 1 / pivot,
                    u = W[p, j + 1:kk] * (T(1) / W[p, j])  # then one fused multiply-add per entry
                    cols = np.ix_(live, np.arange(j + 1, kk))
                    W[cols] = fnma(W[live, j][:, None], u[None, :], W[cols])
    return piv, rank, bad
