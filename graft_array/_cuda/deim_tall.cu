// Tall DEIM on the GPU: B matrices of any number of rows, the whole grid on every step.
//
// The one-tile form of tournament.cu runs a whole matrix in one block (measured on an H200:
// 6.4 s for 2e6 x 64 float32, where cuSOLVER's getrf takes 9.3 ms). Here every step is two
// launches over a grid (blocks on x, batches on y), as volume.cu's tall greedy volume:
//   * init: the first kk columns of every row, scaled as the Numba kernels scale them, into a
//     column-major work buffer W (W[c n + i], so that a column is read coalesced), and each
//     row's fill norm (float64);
//   * scan j: every free row first takes the previous accepted step's update (one fused
//     multiply-add per entry, multiplier its own column j - 1, U's row from the commit), then
//     offers (|W[j][i]|, i) and (norm_i, i); each block reduces them (larger value, then lower
//     row) into its slot of the partials;
//   * commit j: one block per batch reduces the partials, accepts the pivot if it passes the
//     tolerance or else takes the fill row, and writes U's row (the pivot row times the rounded
//     1 / pivot) for the next scan.
// The decisions and the arithmetic are deim.cu's (and graft_array._numba.maxvol's): the same
// tolerance, scale, fill rule, tie rule and fused update, so the pivots are the Numba kernel's.
// V must be finite (the caller checks). The launches depend on the shapes only.
#include "common.cuh"
#include "elim.cuh"

namespace graft {

template <typename T>
__device__ __forceinline__ void deim_tall_init(const T* __restrict__ V, i64 n, int r, int kk,
                                               const double* __restrict__ amax, T* __restrict__ W,
                                               double* __restrict__ nrm, unsigned char* __restrict__ sel) {
    const int b = blockIdx.y;
    const Elim e = elim_setup<T>(amax[b], n, r, 0.0);
    const T* Vb = V + (i64)b * n * r;
    T* Wb = W + (i64)b * n * kk;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const T* x = Vb + i * r;
        for (int c = 0; c < kk; ++c) Wb[(i64)c * n + i] = e.sc == 1.0 ? x[c] : (T)((double)x[c] * e.sc);
        nrm[(i64)b * n + i] = sqrt(sq_norm(x, r, e.nsc));
        sel[(i64)b * n + i] = 0;
    }
}

// state[2 b], state[2 b + 1]: the rank so far, and whether step j - 1 was accepted
template <typename T>
__device__ __forceinline__ void deim_tall_scan(i64 n, int kk, int j, T* __restrict__ W, const T* __restrict__ U,
                                               const double* __restrict__ nrm, const unsigned char* __restrict__ sel,
                                               const int* __restrict__ state, double* __restrict__ part_v,
                                               int* __restrict__ part_i, double* __restrict__ part_nv,
                                               int* __restrict__ part_ni) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    const int b = blockIdx.y;
    T* Wb = W + (i64)b * n * kk;
    const T* Ub = U + (i64)b * kk;
    const bool update = j > 0 && state[2 * b + 1];
    double bv = -1.0, bn = -1.0;
    int bi = 0x7fffffff, bni = 0x7fffffff;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        if (sel[(i64)b * n + i]) continue;
        if (update) {  // step j - 1's elimination: unscaled multiplier a, one fused multiply-add per entry
            const T a = Wb[(i64)(j - 1) * n + i];
            for (int c = j; c < kk; ++c) Wb[(i64)c * n + i] = fnma(a, Ub[c], Wb[(i64)c * n + i]);
        }
        const double v = fabs((double)Wb[(i64)j * n + i]);
        if (v > bv) {  // rows in increasing order per thread: the first largest
            bv = v;
            bi = (int)i;
        }
        const double f = nrm[(i64)b * n + i];
        if (f > bn) {
            bn = f;
            bni = (int)i;
        }
    }
    double best, fbest;
    const int p = block_argmax(bv, bi, s_val, s_idx, &best);
    const int pf = block_argmax(bn, bni, s_val, s_idx, &fbest);
    if (threadIdx.x == 0) {
        const i64 slot = (i64)b * gridDim.x + blockIdx.x;
        part_v[slot] = best;
        part_i[slot] = p;
        part_nv[slot] = fbest;
        part_ni[slot] = pf;
    }
}

template <typename T>
__device__ __forceinline__ void deim_tall_commit(i64 n, int r, int kk, int j, double eps,
                                                 const double* __restrict__ amax, const T* __restrict__ W,
                                                 T* __restrict__ U, unsigned char* __restrict__ sel,
                                                 int* __restrict__ state, const double* __restrict__ part_v,
                                                 const int* __restrict__ part_i, const double* __restrict__ part_nv,
                                                 const int* __restrict__ part_ni, int nparts, i64* __restrict__ piv) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    const int b = blockIdx.x, t = threadIdx.x;
    const i64 base = (i64)b * nparts;
    double best, fbest;
    int p = reduce_parts(part_v + base, part_i + base, nparts, s_val, s_idx, &best);
    const int pf = reduce_parts(part_nv + base, part_ni + base, nparts, s_val, s_idx, &fbest);
    const double tol = elim_setup<T>(amax[b], n, r, eps).tol;
    const bool ok = best > tol;  // the same on every thread
    if (!ok) p = pf;  // the fill row: the free row of largest norm
    const T* Wb = W + (i64)b * n * kk;
    if (ok) {  // U's row: the pivot row times 1 / pivot, rounded as the Numba kernels round it
        const T f = (T)1 / Wb[(i64)j * n + p];
        for (int c = j + 1 + t; c < kk; c += blockDim.x) U[(i64)b * kk + c] = Wb[(i64)c * n + p] * f;
    }
    if (t == 0) {
        piv[(i64)b * kk + j] = p;
        sel[(i64)b * n + p] = 1;
        state[2 * b] += ok ? 1 : 0;
        state[2 * b + 1] = ok ? 1 : 0;
    }
}

}  // namespace graft

#define GRAFT_DEIM_TALL(T, SUF)                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        deim_tall_init_##SUF(const T* V, long long n, int r, int kk, const double* amax, T* W, double* nrm, \
                             unsigned char* sel) {                                                          \
        graft::deim_tall_init<T>(V, n, r, kk, amax, W, nrm, sel);                                           \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        deim_tall_scan_##SUF(long long n, int kk, int j, T* W, const T* U, const double* nrm,               \
                             const unsigned char* sel, const int* state, double* pv, int* pi, double* pnv,  \
                             int* pni) {                                                                    \
        graft::deim_tall_scan<T>(n, kk, j, W, U, nrm, sel, state, pv, pi, pnv, pni);                        \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        deim_tall_commit_##SUF(long long n, int r, int kk, int j, double eps, const double* amax, const T* W, \
                               T* U, unsigned char* sel, int* state, const double* pv, const int* pi,       \
                               const double* pnv, const int* pni, int nparts, long long* piv) {             \
        graft::deim_tall_commit<T>(n, r, kk, j, eps, amax, W, U, sel, state, pv, pi, pnv, pni, nparts, piv); \
    }

GRAFT_DEIM_TALL(float, f32)
GRAFT_DEIM_TALL(double, f64)
