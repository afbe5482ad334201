// GRAFT's weights on the GPU: per batch, Lawson-Hanson NNLS on the normal equations of the
// weight fit (graft_array._numba.criterion.nnls_batched: _weight_system, then _nnls_one).
//
// One block per batch (m <= KMAX selected rows), the system, its Cholesky factor and
// the iterates in shared memory. The gradient b - K w of the free indices and its
// argmax (ties: the lowest index) run on every thread of the block; the rest of
// Lawson-Hanson (one Cholesky row per added index, the triangular solves, the step back
// into the feasible set, the rebuild after a removal) is sequential by nature and runs
// on thread 0 between barriers. The decisions and tolerances are the Numba kernel's;
// its dot products are reassociated (fast-math), so the weights agree to rounding,
// not to the bit.
#include "common.cuh"

namespace graft {

#define GRAFT_SPAN_TOL2 (1e-7 * 1e-7)
#define GRAFT_SUM_PENALTY 100.0
#define GRAFT_EPS64 2.220446049250313e-16

// The system K' = K + mu2 11^T + reg s I is read from K in global memory as it is used, each entry
// computed as the CPU kernel computes it in place ((K_ij + mu2) + reg s on the diagonal): the
// Cholesky factor alone fills the shared memory of KMAX = 64.
struct System {
    const double* K;
    int ld;
    double mu2, rs;
    __device__ __forceinline__ double operator()(int i, int j) const {
        const double a = K[(i64)i * ld + j] + mu2;
        return i == j ? a + rs : a;
    }
};

template <int KMAX>
struct NnlsShared {
    System A;
    double L[KMAX][KMAX + 1];
    double bb[KMAX], w[KMAX], s[KMAX], y[KMAX];
    int order[KMAX];
    unsigned char passive[KMAX], banned[KMAX];
};

template <int KMAX>
__device__ __forceinline__ bool chol_append(NnlsShared<KMAX>& S, int p) {
    const int j = S.order[p];
    for (int a = 0; a < p; ++a) {
        double d = 0.0;
        for (int t = 0; t < a; ++t) d += S.L[p][t] * S.L[a][t];
        S.L[p][a] = (S.A(j, S.order[a]) - d) / S.L[a][a];
    }
    double d = 0.0;
    for (int t = 0; t < p; ++t) d += S.L[p][t] * S.L[p][t];
    const double dj = S.A(j, j) - d;
    if (!(S.A(j, j) > 0.0 && dj > GRAFT_SPAN_TOL2 * S.A(j, j))) return false;
    S.L[p][p] = sqrt(dj);
    return true;
}

template <int KMAX>
__device__ __forceinline__ void chol_solve(NnlsShared<KMAX>& S, int p, int m) {
    for (int a = 0; a < p; ++a) {
        double d = 0.0;
        for (int t = 0; t < a; ++t) d += S.L[a][t] * S.y[t];
        S.y[a] = (S.bb[S.order[a]] - d) / S.L[a][a];
    }
    for (int a = p - 1; a >= 0; --a) {
        S.y[a] /= S.L[a][a];
        const double ya = S.y[a];
        for (int t = 0; t < a; ++t) S.y[t] -= ya * S.L[a][t];
    }
    for (int i = 0; i < m; ++i) S.s[i] = 0.0;
    for (int a = 0; a < p; ++a) S.s[S.order[a]] = S.y[a];
}

template <int KMAX>
__device__ __forceinline__ void nnls_weights(const double* __restrict__ K, const double* __restrict__ b,
                                             const i64* __restrict__ sizes, int kk, double n, double reg,
                                             double* __restrict__ out) {
    __shared__ NnlsShared<KMAX> S;
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ int ctl;
    const int bi = blockIdx.x;
    const int t = threadIdx.x;
    const int m = (int)sizes[bi];
    const double* Kb = K + (i64)bi * kk * kk;
    for (int i = t; i < m; i += blockDim.x) {
        S.bb[i] = b[(i64)bi * kk + i];
        S.w[i] = 0.0;
        S.passive[i] = 0;
        S.banned[i] = 0;
    }
    __syncthreads();
    const double rel = 10.0 * m * GRAFT_EPS64;
    int p = 0;  // thread 0's: the passive count
    double tol = 0.0;
    if (t == 0) {
        // the weight system (graft_array._numba.criterion._weight_system)
        double tr = 0.0;
        for (int i = 0; i < m; ++i) tr += Kb[(i64)i * kk + i];
        tr /= (m > 1 ? m : 1);
        S.A = System{Kb, kk, 0.0, 0.0};
        if (tr > 0.0) {
            const double mu2 = GRAFT_SUM_PENALTY * tr;
            S.A = System{Kb, kk, mu2, reg * tr};
            for (int i = 0; i < m; ++i) S.bb[i] += reg * tr * n / m + mu2 * n;
        }
        double bmax = 0.0;
        for (int i = 0; i < m; ++i) bmax = fabs(S.bb[i]) > bmax ? fabs(S.bb[i]) : bmax;
        tol = rel * bmax;
        // all passive at once: the unconstrained solution, when K is definite and it is positive
        ctl = 0;
        for (int a = 0; a < m; ++a) S.order[a] = a;
        while (p < m && chol_append(S, p)) ++p;
        if (m > 0 && p == m) {
            chol_solve(S, m, m);
            double smax = 0.0;
            for (int i = 0; i < m; ++i) smax = fabs(S.s[i]) > smax ? fabs(S.s[i]) : smax;
            bool pos = true;
            for (int i = 0; i < m; ++i) pos = pos && S.s[i] > rel * smax;
            if (pos) {
                for (int i = 0; i < m; ++i) S.w[i] = S.s[i];
                ctl = 1;
            }
        }
        if (!ctl)
            for (int i = 0; i < m; ++i) S.s[i] = 0.0;
        p = 0;
        s_val[32] = tol;
    }
    __syncthreads();
    const bool done = ctl == 1;
    tol = s_val[32];
    __syncthreads();
    const int max_iter = 3 * m + 10;
    for (int it = 0; it < max_iter && !done; ++it) {
        double g = -1.0;
        if (t < m && !S.passive[t] && !S.banned[t]) {
            double d = 0.0;
            for (int c = 0; c < m; ++c) d += S.A(t, c) * S.w[c];
            g = S.bb[t] - d;
            if (!(g > -1.0)) g = -1.0;  // NaN or below the CPU kernel's starting best: never taken
        }
        double best;
        const int j = block_argmax(g, t < m ? t : 0x7fffffff, s_val, s_idx, &best);
        if (!(best > tol)) break;  // the same on every thread
        if (t == 0) {
            S.order[p] = j;
            if (!chol_append(S, p)) {
                S.banned[j] = 1;
            } else {
                S.passive[j] = 1;
                ++p;
                chol_solve(S, p, m);
                for (int inner = 0; inner < max_iter; ++inner) {
                    double alpha = -neg_inf();
                    bool any_bad = false;
                    for (int i = 0; i < m; ++i)
                        if (S.passive[i] && S.s[i] <= 0) {
                            any_bad = true;
                            const double a = S.w[i] / (S.w[i] - S.s[i]);
                            alpha = a < alpha ? a : alpha;
                        }
                    if (!any_bad) break;
                    double wmax = 0.0;
                    for (int i = 0; i < m; ++i) {
                        S.w[i] += alpha * (S.s[i] - S.w[i]);
                        wmax = fabs(S.w[i]) > wmax ? fabs(S.w[i]) : wmax;
                    }
                    for (int i = 0; i < m; ++i) {
                        if (S.passive[i] && !(S.w[i] > rel * wmax)) S.passive[i] = 0;
                        if (!S.passive[i]) S.w[i] = 0.0;
                    }
                    int q = 0;  // rebuild the factor of the remaining passive set, insertion order kept
                    for (int a = 0; a < p; ++a)
                        if (S.passive[S.order[a]]) {
                            S.order[q] = S.order[a];
                            chol_append(S, q);
                            ++q;
                        }
                    p = q;
                    chol_solve(S, p, m);
                }
                for (int i = 0; i < m; ++i) S.w[i] = S.s[i];
            }
        }
        __syncthreads();
    }
    for (int i = t; i < kk; i += blockDim.x) out[(i64)bi * kk + i] = i < m ? S.w[i] : 0.0;
}

}  // namespace graft

#define GRAFT_NNLS_INSTANCE(KMAX)                                                                          \
    extern "C" __global__ void __launch_bounds__(64)                                                        \
        nnls_weights_k##KMAX(const double* K, const double* b, const long long* sizes, int kk, double n,    \
                             double reg, double* out) {                                                     \
        graft::nnls_weights<KMAX>(K, b, sizes, kk, n, reg, out);                                            \
    }

GRAFT_NNLS_INSTANCE(32)
GRAFT_NNLS_INSTANCE(64)
