// Shared device helpers of graft_array's kernels: block reductions with a total order.
//
// Compiled by NVRTC for the GPU and, in the tests, by the system C++ compiler with
// shim.h (each thread a std::thread, blocks one after another). Only what the shim
// expresses is used: __syncthreads, __shfl_down_sync with the full mask, __shared__
// arrays, threadIdx / blockIdx / blockDim, and plain C math (fabs, sqrt, frexp, ldexp, fma, fmaf).
#pragma once

#define GRAFT_FULL_MASK 0xffffffffu

namespace graft {

typedef long long i64;

// c - a b rounded once: the elimination update of graft_array._numba's kernels (simd._vfnma,
// llvm.fma(-a, b, c)). Explicit, so that --fmad does not change it and every backend rounds alike.
__device__ __forceinline__ float fnma(float a, float b, float c) { return fmaf(-a, b, c); }
__device__ __forceinline__ double fnma(double a, double b, double c) { return fma(-a, b, c); }

// s + v^2 with the square and the sum each rounded (never fused, whatever --fmad): the squared row norms
// (fill rows, greedy volume's first residuals) summed in column order, as graft_array._numba.simd._sq_row_norms
// and the generic path sum them, so that rows whose norms differ in the last bits rank alike everywhere.
__device__ __forceinline__ double add_square(double s, double v) { return __dadd_rn(s, __dmul_rn(v, v)); }

// ||x sc||^2 of a row x of r entries (float64, add_square in column order; sc a power of two, 1 in the band).
template <typename T>
__device__ __forceinline__ double sq_norm(const T* x, int r, double sc) {
    double s = 0.0;
    for (int c = 0; c < r; ++c) s = add_square(s, (double)x[c] * sc);
    return s;
}

// The reductions' total order on (value, index) pairs: the larger value first,
// then the lower index. Inactive entries carry a value below every live one.
template <typename V>
__device__ __forceinline__ bool better(V va, int ia, V vb, int ib) {
    return va > vb || (va == vb && ia < ib);
}

template <typename V>
__device__ __forceinline__ void warp_argmax(V& v, int& i) {
    for (int off = 16; off > 0; off >>= 1) {
        V ov = __shfl_down_sync(GRAFT_FULL_MASK, v, off);
        int oi = __shfl_down_sync(GRAFT_FULL_MASK, i, off);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// The block's best (value, index) pair, returned to every thread. sv / si: shared
// arrays of 33 entries (one per warp, and the result). blockDim.x is a multiple of 32.
// ``none``: the value of an inactive entry, below every live one (default -1).
template <typename V>
__device__ __forceinline__ int block_argmax(V v, int i, V* sv, int* si, V* best, V none = (V)-1) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    warp_argmax(v, i);
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? sv[lane] : none;
        i = lane < nw ? si[lane] : 0x7fffffff;
        warp_argmax(v, i);
        if (lane == 0) {
            sv[32] = v;
            si[32] = i;
        }
    }
    __syncthreads();
    *best = sv[32];
    const int r = si[32];
    __syncthreads();  // the slots are free again for the next reduction
    return r;
}

// The best (value, index) pair of a grid's per-block partials pv[0..nparts), pi[0..nparts), returned to
// every thread of the reducing block (the tall kernels' commits). Values are >= -1; -1 is "none".
template <typename V>
__device__ __forceinline__ int reduce_parts(const V* pv, const int* pi, int nparts, V* sv, int* si, V* best) {
    V bv = (V)-1;
    int bi = 0x7fffffff;
    for (int a = threadIdx.x; a < nparts; a += blockDim.x)
        if (better(pv[a], pi[a], bv, bi)) {
            bv = pv[a];
            bi = pi[a];
        }
    return block_argmax(bv, bi, sv, si, best);
}

__device__ __forceinline__ double warp_max(double v) {
    for (int off = 16; off > 0; off >>= 1) {
        const double o = __shfl_down_sync(GRAFT_FULL_MASK, v, off);
        v = o > v ? o : v;
    }
    return v;
}

// max over the block of values >= 0, returned to every thread (sv: 33 shared entries).
__device__ __forceinline__ double block_max(double v, double* sv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) sv[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = warp_max(lane < nw ? sv[lane] : -1.0);
        if (lane == 0) sv[32] = v;
    }
    __syncthreads();
    const double r = sv[32];
    __syncthreads();
    return r;
}

// -infinity without a header (NVRTC and the shim alike)
__device__ __forceinline__ double neg_inf() {
    const double huge = 1.0e300;
    return -(huge * huge);
}

// The factor f of the rank tolerance f eps max|V| (graft_array._common.rank_tol_factor):
// max(r, min(n, r^2)), numpy matrix_rank's max(n, r) capped at the r^2 of LU's rounding error.
__device__ __forceinline__ double rank_factor(long long n, long long r) {
    const long long cap = r * r;
    const long long m = n < cap ? n : cap;
    return (double)(m > r ? m : r);
}

// graft_array._numba.maxvol._in_band: a float64 norm of r entries of largest |entry| amax needs no scaling.
__device__ __forceinline__ bool norm_in_band(double amax, int r) {
    return amax == 0.0 || (amax >= 8.636168555094445e-78 && amax * sqrt((double)r) <= 1.157920892373162e+77);
}

// 2^k with m 2^k in [1/2, 1), k clamped to [-1022, 1023]; 1 for 0 or a non-finite m
// (graft_array._numba.checks.unit_scale).
__device__ __forceinline__ double unit_scale(double m) {
    if (!(m > 0.0) || m - m != 0.0) return 1.0;
    int e;
    frexp(m, &e);
    int k = -e;
    k = k < -1022 ? -1022 : (k > 1023 ? 1023 : k);
    return ldexp(1.0, k);
}

// Each thread's row i of a batch V_b (n x r, row-major) as float64 into x[0..r), and its squared norm,
// scaled by 2^j where the batch's max |entry| leaves the float64 band (graft_array._numba.simd._band_scale:
// the norms are then those of the scaled rows). Returns the scale (1 inside the band). Every thread of
// the block calls it (a block reduction); rows i >= n are left alone.
template <typename T, int R>
__device__ __forceinline__ double load_row64(const T* Vb, int i, int n, int r, double* x, double& sq, double* s_val) {
    const bool live = i < n;
    double s = 0.0, amax = 0.0;
    if (live)
        for (int c = 0; c < r; ++c) {
            const double v = (double)Vb[(i64)i * r + c];
            s = add_square(s, v);
            amax = fabs(v) > amax ? fabs(v) : amax;
        }
    amax = block_max(amax, s_val);
    const bool band = norm_in_band(amax, r);
    const double sc = band ? 1.0 : unit_scale(amax);
    if (live) {
        double q = 0.0;
        for (int c = 0; c < R; ++c) {
            if (c >= r) break;
            x[c] = band ? (double)Vb[(i64)i * r + c] : (double)Vb[(i64)i * r + c] * sc;
            q = add_square(q, x[c]);
        }
        if (!band) s = q;
    }
    sq = s;
    return sc;
}

}  // namespace graft
