// Goreinov's maxvol refinement on the GPU: swaps until max |A A_S^-1| <= tol, per batch.
//
// One block per batch (n <= 1024 rows, k <= 64), one thread per row holding its row of
// B = A A_S^-1 (A = X[:, :k] in float64, scaled by 2^j when max |X| leaves the band, as the
// CPU kernel does). A_S^-1 by Gauss-Jordan with partial pivoting (thread 0, in a global
// scratch; a pivot at or below rank_factor(n, r) eps max |X| stops it: the start is singular, the
// batch is left as it is with iterations = -1). Each swap: the row-major first largest |B|
// (each thread's first largest in its row, then the block argmax: the lowest row), the pivot
// row through shared memory, and every row's rank-one update. The operations and their order
// are graft_array._numba.rect._refine_run's (no fast-math there): the same swaps.
#include "common.cuh"

namespace graft {

template <typename T, int KM>
__device__ __forceinline__ void refine(const T* __restrict__ V, i64* __restrict__ piv, const i64* __restrict__ rank,
                                       int n, int r, int k, double tol, int max_iters, double eps,
                                       double* __restrict__ scratch, unsigned char* __restrict__ conv,
                                       i64* __restrict__ iters) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ double prow[KM];
    __shared__ int s_rank;
    const int b = blockIdx.x, i = threadIdx.x;
    const bool live = i < n;
    if (rank[b] != k) {  // not refined: converged, no swaps
        if (i == 0) {
            conv[b] = 1;
            iters[b] = 0;
        }
        return;
    }
    const T* Vb = V + (i64)b * n * r;
    i64* pb = piv + (i64)b * k;
    double* A = scratch + (i64)b * 2 * k * k;  // A_S, then its inverse in Ai
    double* Ai = A + (i64)k * k;
    double amax = 0.0;
    for (i64 t = i; t < (i64)n * r; t += blockDim.x) {
        const double v = fabs((double)Vb[t]);
        amax = v > amax ? v : amax;
    }
    amax = block_max(amax, s_val);
    const bool band = norm_in_band(amax, r);
    const double sc = band ? 1.0 : unit_scale(amax);
    const double stol = rank_factor(n, r) * eps * amax * sc;
    if (i == 0) {  // Gauss-Jordan with partial pivoting (graft_array._numba.rect._inverse)
        for (int a = 0; a < k; ++a)
            for (int c = 0; c < k; ++c) {
                const double v = (double)Vb[pb[a] * r + c];
                A[a * k + c] = band ? v : v * sc;
                Ai[a * k + c] = a == c ? 1.0 : 0.0;
            }
        int rk = k;
        for (int c = 0; c < k; ++c) {
            int p = c;
            for (int q = c + 1; q < k; ++q)
                if (fabs(A[q * k + c]) > fabs(A[p * k + c])) p = q;
            if (p != c)
                for (int t = 0; t < k; ++t) {
                    double x = A[c * k + t];
                    A[c * k + t] = A[p * k + t];
                    A[p * k + t] = x;
                    x = Ai[c * k + t];
                    Ai[c * k + t] = Ai[p * k + t];
                    Ai[p * k + t] = x;
                }
            const double d = A[c * k + c];
            if (!(fabs(d) > stol)) {
                rk = c;
                break;
            }
            for (int t = 0; t < k; ++t) {
                A[c * k + t] /= d;
                Ai[c * k + t] /= d;
            }
            for (int q = 0; q < k; ++q)
                if (q != c) {
                    const double f = A[q * k + c];
                    if (f != 0.0)
                        for (int t = 0; t < k; ++t) {
                            A[q * k + t] -= f * A[c * k + t];
                            Ai[q * k + t] -= f * Ai[c * k + t];
                        }
                }
        }
        s_rank = rk;
    }
    __syncthreads();
    if (s_rank < k) {  // a singular start: nothing done
        if (i == 0) {
            conv[b] = 1;
            iters[b] = -1;
        }
        return;
    }
    double Brow[KM];
    double rmax = -1.0;
    int rarg = 0;
    if (live) {
        double y[KM];
        for (int t = 0; t < k; ++t) y[t] = 0.0;
        for (int a = 0; a < k; ++a) {
            const double v = (double)Vb[(i64)i * r + a];
            const double xa = band ? v : v * sc;
            for (int t = 0; t < k; ++t) y[t] += xa * Ai[a * k + t];
        }
        for (int t = 0; t < k; ++t) {
            Brow[t] = y[t];
            const double a = fabs(y[t]);
            if (a > rmax) {
                rmax = a;
                rarg = t;
            }
        }
    }
    double bv;
    int bi = block_argmax(rmax, i, s_val, s_idx, &bv);
    __shared__ int s_bj;
    if (i == bi) s_bj = rarg;
    __syncthreads();
    int bj = s_bj;
    __shared__ double s_bij;
    int it = 0;
    for (; it < max_iters; ++it) {
        if (bv <= tol) break;  // the same on every thread
        if (i == 0) pb[bj] = bi;
        if (i == bi) {
            for (int t = 0; t < k; ++t) prow[t] = Brow[t];
            s_bij = Brow[bj];
        }
        __syncthreads();
        const double bij = s_bij;
        rmax = -1.0;
        rarg = 0;
        if (live) {
            const double f = Brow[bj] / bij;
            for (int t = 0; t < k; ++t) Brow[t] -= f * (t == bj ? prow[t] - 1.0 : prow[t]);
            for (int t = 0; t < k; ++t) {
                const double a = fabs(Brow[t]);
                if (a > rmax) {
                    rmax = a;
                    rarg = t;
                }
            }
        }
        bi = block_argmax(rmax, i, s_val, s_idx, &bv);  // its barriers also retire prow and s_bij
        if (i == bi) s_bj = rarg;
        __syncthreads();
        bj = s_bj;
        __syncthreads();
    }
    if (i == 0) {
        conv[b] = bv <= tol ? 1 : 0;
        iters[b] = it;
    }
}

}  // namespace graft

#define GRAFT_REFINE_INSTANCE(T, SUF)                                                                      \
    extern "C" __global__ void __launch_bounds__(1024)                                                      \
        refine_##SUF(const T* V, long long* piv, const long long* rank, int n, int r, int k, double tol,     \
                     int max_iters, double eps, double* scratch, unsigned char* conv, long long* iters) {   \
        graft::refine<T, 64>(V, piv, rank, n, r, k, tol, max_iters, eps, scratch, conv, iters);            \
    }

GRAFT_REFINE_INSTANCE(float, f32)
GRAFT_REFINE_INSTANCE(double, f64)
