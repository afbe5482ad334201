// Greedy volume on the GPU: QR with column pivoting on V_b^T (= LAPACK geqp3), float64, batched.
//
// One block per batch (n <= 1024 rows, r <= R columns), one thread per row holding its row
// (float64, scaled by 2^j when the batch's max |entry| leaves the float64 band, as the CPU
// kernel does) and its squared residual norm. Per step: a block argmax of the residual
// norms of the free rows (ties: the lowest row), the pivot row orthogonalised twice against
// the directions so far (CGS2, one thread; the directions in shared memory), then, when its
// residual exceeds the tolerance max(n, r) eps max_i ||x_i||, a new direction and every
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

    double sq = 0.0, amax = 0.0;
    if (live)
        for (int c = 0; c < r; ++c) {
            const double v = (double)Vb[(i64)i * r + c];
            sq = sq + v * v;
            amax = fabs(v) > amax ? fabs(v) : amax;
        }
    amax = block_max(amax, s_val);
    const bool band = amax == 0.0 || (amax >= 8.636168555094445e-78 && amax * sqrt((double)r) <= 1.157920892373162e+77);
    const double sc = band ? 1.0 : unit_scale(amax);
    double x[R];
    if (live) {
        double q = 0.0;
        for (int c = 0; c < R; ++c) {
            if (c >= r) break;
            x[c] = band ? (double)Vb[(i64)i * r + c] : (double)Vb[(i64)i * r + c] * sc;
            q = q + x[c] * x[c];
        }
        if (!band) sq = q;
    }
    double rho = sq, rho0 = sq;
    const double nrm = live ? sqrt(sq) : -1.0;
    const double tol = (double)(n > r ? n : r) * eps * block_max(live ? nrm : 0.0, s_val);
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
