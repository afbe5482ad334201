// Greedy volume on the GPU: QR with column pivoting on V_b^T (= LAPACK geqp3), float64, batched.
//
// One block per batch (n <= 1024 rows, r <= R columns), one thread per row holding its row
// (float64, scaled by 2^j when the batch's max |entry| leaves the float64 band, as the CPU
// kernel does) and its squared residual norm. Per step: a block argmax of the residual
// norms of the free rows (ties: the lowest row), the pivot row orthogonalised twice against
// the directions so far (CGS2, one thread; the directions in shared memory), then, when its
// residual exceeds the tolerance rank_factor(n, r) eps max_i ||x_i||, a new direction and every
// row's downdate v - (x_i . q)^2 with geqp3's rule: where v falls to sqrt(eps64) times the
// norm it was last computed from, it is recomputed explicitly. Otherwise the step takes the
// fill row (the free row of largest norm) and adds no direction. This is the eager form of
// graft_array._numba.volume's lazy scan, which computes the same per-row arithmetic.
#include "common.cuh"

namespace graft {

template <typename T, int R>
__device__ __forceinline__ void volume_batched(const T* __restrict__ V, int n, int r, int kk, double eps,
                                               i64* __restrict__ piv, i64* __restrict__ rank_out) {
    __shared__ double Q[R][R + 1];
    __shared__ double w[R];
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ double s_wn;
    const int b = blockIdx.x;
    const int i = threadIdx.x;
    const bool live = i < n;
    const T* Vb = V + (i64)b * n * r;

    double x[R];
    double sq;
    load_row64<T, R>(Vb, i, n, r, x, sq, s_val);  // the row, its squared norm (scaled outside the band)
    double rho = sq, rho0 = sq;
    const double nrm = live ? sqrt(sq) : -1.0;
    const double tol = rank_factor(n, r) * eps * block_max(live ? nrm : 0.0, s_val);
    const double sqeps = 1.4901161193847656e-08;  // sqrt(2^-52)
    bool sel = !live;
    int nq = 0;
    for (int j = 0; j < kk; ++j) {
        double best;
        int p = block_argmax(sel ? -1.0 : rho, i, s_val, s_idx, &best);
        if (i == p) {  // CGS2 of the pivot row against the directions so far
            for (int c = 0; c < r; ++c) w[c] = x[c];
            for (int pass = 0; pass < 2; ++pass)
                for (int l = 0; l < nq; ++l) {
                    double d = 0.0;
                    for (int c = 0; c < r; ++c) d += w[c] * Q[l][c];
                    for (int c = 0; c < r; ++c) w[c] -= d * Q[l][c];
                }
            double s = 0.0;
            for (int c = 0; c < r; ++c) s += w[c] * w[c];
            s_wn = sqrt(s);
        }
        __syncthreads();
        const double wn = s_wn;
        const bool ok = wn > tol;
        if (!ok) p = block_argmax(sel ? -1.0 : nrm, i, s_val, s_idx, &best);  // the fill row
        if (i == p) sel = true;
        if (i == 0) piv[(i64)b * kk + j] = p;
        if (ok) {
            for (int c = i; c < r; c += blockDim.x) Q[nq][c] = w[c] / wn;
            __syncthreads();
            if (!sel) {  // downdate by the new direction, geqp3's recomputation when it has fallen too far
                double d = 0.0;
                for (int c = 0; c < r; ++c) d += x[c] * Q[nq][c];
                double v = rho - d * d;
                if (v <= sqeps * rho0) {
                    double res[R];
                    for (int c = 0; c < R; ++c) {
                        if (c >= r) break;
                        res[c] = x[c];
                    }
                    for (int l = 0; l <= nq; ++l) {
                        double e = 0.0;
                        for (int c = 0; c < r; ++c) e += x[c] * Q[l][c];
                        for (int c = 0; c < r; ++c) res[c] -= e * Q[l][c];
                    }
                    v = 0.0;
                    for (int c = 0; c < r; ++c) v += res[c] * res[c];
                    rho0 = v;
                }
                rho = v;
            }
            ++nq;
        }
        __syncthreads();  // w, s_wn and the reductions' slots are reused at the next step
    }
    if (i == 0) rank_out[b] = nq;
}

}  // namespace graft

#define GRAFT_VOLUME_INSTANCE(T, SUF, R)                                                                   \
    extern "C" __global__ void __launch_bounds__(1024)                                                      \
        volume_batched_##SUF##_r##R(const T* V, int n, int r, int kk, double eps, long long* piv,           \
                                    long long* rank) {                                                      \
        graft::volume_batched<T, R>(V, n, r, kk, eps, piv, rank);                                           \
    }

GRAFT_VOLUME_INSTANCE(float, f32, 16)
GRAFT_VOLUME_INSTANCE(float, f32, 64)
GRAFT_VOLUME_INSTANCE(double, f64, 16)
GRAFT_VOLUME_INSTANCE(double, f64, 64)

// ---------------------------------------------------------------------------------------------
// Tall greedy volume: one matrix of any number of rows, two launches per step. The scan
// (a grid of blocks, a thread per row, grid-stride) applies the newest direction's downdate to
// every free row (geqp3's recomputation where it falls too far) and reduces (rho, row) and the
// fill's (norm, row) per block; the commit (one block) reduces the blocks' winners, orthogonalises
// the pivot row (CGS2, the directions in global memory) and adds its direction, or takes the
// fill row. The per-row arithmetic is the batched kernel's.

namespace graft {

template <typename T>
__device__ __forceinline__ double tall_scale(const double* stats, int r) {
    const double amax = stats[0];
    const bool band = norm_in_band(amax, r);
    return band ? 1.0 : unit_scale(amax);
}

template <typename T>
__device__ __forceinline__ void volume_tall_init(const T* __restrict__ V, i64 n, int r, const double* __restrict__ stats,
                                                 double* __restrict__ rho, double* __restrict__ rho0,
                                                 double* __restrict__ nrm, unsigned char* __restrict__ sel) {
    const double sc = tall_scale<T>(stats, r);
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const double s = sq_norm(V + i * r, r, sc);
        rho[i] = s;
        rho0[i] = s;
        nrm[i] = sqrt(s);
        sel[i] = 0;
    }
}

template <typename T>
__device__ __forceinline__ void volume_tall_scan(const T* __restrict__ V, i64 n, int r, const double* __restrict__ stats,
                                                 const double* __restrict__ Q, const int* __restrict__ state,
                                                 double* __restrict__ rho, double* __restrict__ rho0,
                                                 const double* __restrict__ nrm, const unsigned char* __restrict__ sel,
                                                 double* __restrict__ part_v, int* __restrict__ part_i,
                                                 double* __restrict__ part_nv, int* __restrict__ part_ni) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    const double sc = tall_scale<T>(stats, r);
    const int nq = state[0], added = state[1];
    const double sqeps = 1.4901161193847656e-08;
    double bv = -1.0, bn = -1.0;
    int bi = 0x7fffffff, bni = 0x7fffffff;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        if (sel[i]) continue;
        double v = rho[i];
        if (added) {  // the downdate by the newest direction q_{nq-1}
            const double* q = Q + (i64)(nq - 1) * r;
            double d = 0.0;
            for (int c = 0; c < r; ++c) d += (sc == 1.0 ? (double)V[i * r + c] : (double)V[i * r + c] * sc) * q[c];
            v = v - d * d;
            if (v <= sqeps * rho0[i]) {  // recomputed explicitly against every direction
                double res[64];
                for (int c = 0; c < r; ++c) res[c] = sc == 1.0 ? (double)V[i * r + c] : (double)V[i * r + c] * sc;
                for (int l = 0; l < nq; ++l) {
                    double e = 0.0;
                    for (int c = 0; c < r; ++c)
                        e += (sc == 1.0 ? (double)V[i * r + c] : (double)V[i * r + c] * sc) * Q[(i64)l * r + c];
                    for (int c = 0; c < r; ++c) res[c] -= e * Q[(i64)l * r + c];
                }
                v = 0.0;
                for (int c = 0; c < r; ++c) v += res[c] * res[c];
                rho0[i] = v;
            }
            rho[i] = v;
        }
        if (v > bv) {  // rows in increasing order per thread: the first largest
            bv = v;
            bi = (int)i;
        }
        if (nrm[i] > bn) {
            bn = nrm[i];
            bni = (int)i;
        }
    }
    double best;
    const int p = block_argmax(bv, bi, s_val, s_idx, &best);
    const int pn = block_argmax(bn, bni, s_val, s_idx, &bn);
    if (threadIdx.x == 0) {
        part_v[blockIdx.x] = best;
        part_i[blockIdx.x] = p;
        part_nv[blockIdx.x] = bn;
        part_ni[blockIdx.x] = pn;
    }
}

template <typename T>
__device__ __forceinline__ void volume_tall_commit(const T* __restrict__ V, i64 n, int r, int kk, double eps,
                                                   const double* __restrict__ stats, double* __restrict__ Q,
                                                   int* __restrict__ state, unsigned char* __restrict__ sel,
                                                   const double* __restrict__ part_v, const int* __restrict__ part_i,
                                                   const double* __restrict__ part_nv, const int* __restrict__ part_ni,
                                                   int nparts, int j, i64* __restrict__ piv) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ double w[64];
    __shared__ double s_wn;
    const int t = threadIdx.x;
    double best, bn;
    int p = reduce_parts(part_v, part_i, nparts, s_val, s_idx, &best);
    const int pf = reduce_parts(part_nv, part_ni, nparts, s_val, s_idx, &bn);
    const double sc = tall_scale<T>(stats, r);
    const int nq = state[0];
    if (t == 0) {  // CGS2 of the pivot row against the directions so far
        for (int c = 0; c < r; ++c) w[c] = sc == 1.0 ? (double)V[(i64)p * r + c] : (double)V[(i64)p * r + c] * sc;
        for (int pass = 0; pass < 2; ++pass)
            for (int l = 0; l < nq; ++l) {
                double d = 0.0;
                for (int c = 0; c < r; ++c) d += w[c] * Q[(i64)l * r + c];
                for (int c = 0; c < r; ++c) w[c] -= d * Q[(i64)l * r + c];
            }
        double s = 0.0;
        for (int c = 0; c < r; ++c) s += w[c] * w[c];
        s_wn = sqrt(s);
    }
    __syncthreads();
    const double wn = s_wn;
    const double tol = rank_factor(n, r) * eps * stats[1];
    const bool ok = wn > tol;
    if (!ok) p = pf;  // the fill row: the free row of largest norm
    if (ok)
        for (int c = t; c < r; c += blockDim.x) Q[(i64)nq * r + c] = w[c] / wn;
    __syncthreads();
    if (t == 0) {
        piv[j] = p;
        sel[p] = 1;
        state[0] = ok ? nq + 1 : nq;
        state[1] = ok ? 1 : 0;
    }
}

}  // namespace graft

#define GRAFT_VOLUME_TALL(T, SUF)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        volume_tall_init_##SUF(const T* V, long long n, int r, const double* stats, double* rho,            \
                               double* rho0, double* nrm, unsigned char* sel) {                             \
        graft::volume_tall_init<T>(V, n, r, stats, rho, rho0, nrm, sel);                                    \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        volume_tall_scan_##SUF(const T* V, long long n, int r, const double* stats, const double* Q,        \
                               const int* state, double* rho, double* rho0, const double* nrm,              \
                               const unsigned char* sel, double* pv, int* pi, double* pnv, int* pni) {      \
        graft::volume_tall_scan<T>(V, n, r, stats, Q, state, rho, rho0, nrm, sel, pv, pi, pnv, pni);        \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        volume_tall_commit_##SUF(const T* V, long long n, int r, int kk, double eps, const double* stats,    \
                                 double* Q, int* state, unsigned char* sel, const double* pv, const int* pi, \
                                 const double* pnv, const int* pni, int nparts, int j, long long* piv) {    \
        graft::volume_tall_commit<T>(V, n, r, kk, eps, stats, Q, state, sel, pv, pi, pnv, pni, nparts, j,   \
                                     piv);                                                                  \
    }

GRAFT_VOLUME_TALL(float, f32)
GRAFT_VOLUME_TALL(double, f64)
