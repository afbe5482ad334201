// GRAFT's size criterion on the GPU: the rho(m) curve of each batch by incremental Cholesky.
//
// For the Gram K = G_S G_S^T of a batch's selected gradients (in pivot order), its
// right-hand side b = G_S g and gg = ||g||^2, rho(m) = ||g - P_{S_m} g|| / ||g|| for
// m = 1..kk, with a pivot whose Cholesky diagonal falls below SPAN_TOL of its own
// norm skipped (it adds nothing to the span). One block per batch; the Schur
// complement S (lower triangle) and the right-hand side live in shared memory and are
// updated right-looking, one column per step, every entry by one thread. Each entry
// receives exactly the operations of graft_array._numba.criterion._rho_one's
// left-looking loops, in the same order (K - L_0 L_0 - L_1 L_1 - ...), so with
// --fmad=false the results are the same bits.
#include "common.cuh"

namespace graft {

template <int KMAX>
__device__ __forceinline__ void rho_curve(const double* __restrict__ K, const double* __restrict__ bvec,
                                          const double* __restrict__ gg_in, int kk, double tol2,
                                          double* __restrict__ rho, unsigned char* __restrict__ skipped) {
    __shared__ double S[KMAX][KMAX + 1];
    __shared__ double c[KMAX];
    __shared__ double kdiag[KMAX];
    __shared__ double Lc[KMAX];
    const int bi = blockIdx.x;
    const int t = threadIdx.x;
    const double* Kb = K + (i64)bi * kk * kk;
    for (int e = t; e < kk * kk; e += blockDim.x) {
        const int i = e / kk, l = e % kk;
        S[i][l] = Kb[e];
        if (i == l) kdiag[i] = Kb[e];
    }
    for (int i = t; i < kk; i += blockDim.x) c[i] = bvec[(i64)bi * kk + i];
    const double gg = gg_in[bi];
    double acc = 0.0;
    __syncthreads();
    for (int j = 0; j < kk; ++j) {
        const double d = S[j][j];
        const double kj = kdiag[j];
        const bool ok = kj > 0.0 && d > tol2 * kj;  // the same on every thread
        const double diag = ok ? sqrt(d) : 0.0;
        const double zj = ok ? c[j] / diag : 0.0;
        for (int i = j + 1 + t; i < kk; i += blockDim.x) Lc[i] = ok ? S[i][j] / diag : 0.0;
        __syncthreads();
        const int m = kk - j - 1;  // the trailing lower triangle, (i, l) with j < l <= i
        for (int e = t; e < m * m; e += blockDim.x) {
            const int i = j + 1 + e / m, l = j + 1 + e % m;
            if (l <= i) S[i][l] = S[i][l] - Lc[i] * Lc[l];
        }
        for (int i = j + 1 + t; i < kk; i += blockDim.x) c[i] = c[i] - Lc[i] * zj;
        acc = acc + zj * zj;
        if (t == 0) {
            double r = 0.0;
            if (gg > 0.0) {
                const double r2 = (gg - acc) / gg;
                r = r2 > 0.0 ? sqrt(r2) : 0.0;
            }
            rho[(i64)bi * kk + j] = r;
            skipped[(i64)bi * kk + j] = ok ? 0 : 1;
        }
        __syncthreads();
    }
}

}  // namespace graft

#define GRAFT_RHO_INSTANCE(KMAX)                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        rho_curve_k##KMAX(const double* K, const double* b, const double* gg, int kk, double tol2,         \
                          double* rho, unsigned char* skipped) {                                            \
        graft::rho_curve<KMAX>(K, b, gg, kk, tol2, rho, skipped);                                           \
    }

GRAFT_RHO_INSTANCE(32)
GRAFT_RHO_INSTANCE(64)
