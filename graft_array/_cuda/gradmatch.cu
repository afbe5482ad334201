// GradMatch's pursuit on the GPU (CORDS' OrthogonalMP_REG_Parallel, positive=True), per batch.
//
// One block per batch of n <= 1024 rows (m <= 64 slots), from the batch's gradient Gram K,
// b_i = <g_i, g> and gg = ||g||^2: graft_array.strategies.gradmatch._gradmatch_one_nb's active-set
// steps (the Cholesky factor of the ridge system in shared memory, one row per added index,
// a shift and rank-one update per dropped one, on thread 0, in the CPU kernel's operation
// order), the correlations c_i = b_i - sum_a w_a K_{act_a, i} on one thread per row (summed in
// the active order) and their first argmax on the block. Output: the active rows in the order
// they were added, their weights, their count q and the chosen mask; the fill by random key and
// the normalisation run after it (graft_array._cuda.gradmatch.finish).
#include "common.cuh"

namespace graft {

#define GRAFT_GM_SPAN2 (1e-7 * 1e-7)
#define GRAFT_GM_TOL2 (1e-4 * 1e-4)

template <int MM>
struct GmShared {
    double L[MM][MM + 1];
    double wa[MM], bS[MM], kcol[MM], x[MM];
    int act[MM];
    int q, stop, newest;
    double r2;
};

template <int MM>
__device__ __forceinline__ double chol_add_row(GmShared<MM>& S, int q) {
    double acc = 0.0;
    for (int a = 0; a < q; ++a) {
        double s = S.kcol[a];
        for (int t = 0; t < a; ++t) s -= S.L[a][t] * S.L[q][t];
        S.L[q][a] = s / S.L[a][a];
        acc += S.L[q][a] * S.L[q][a];
    }
    return acc;
}

template <int MM>
__device__ __forceinline__ void chol_drop(GmShared<MM>& S, int q, int a) {
    const int k = q - 1 - a;
    for (int i = 0; i < k; ++i) S.x[i] = S.L[a + 1 + i][a];
    for (int i = a; i < q - 1; ++i) {
        for (int t = 0; t < a; ++t) S.L[i][t] = S.L[i + 1][t];
        for (int t = a; t < i + 1; ++t) S.L[i][t] = S.L[i + 1][t + 1];
    }
    for (int s = 0; s < k; ++s) {
        const int p = a + s;
        const double lkk = S.L[p][p];
        const double r = sqrt(lkk * lkk + S.x[s] * S.x[s]);
        const double cth = r / lkk;
        const double sth = S.x[s] / lkk;
        S.L[p][p] = r;
        for (int i = s + 1; i < k; ++i) {
            S.L[a + i][p] = (S.L[a + i][p] + sth * S.x[i]) / cth;
            S.x[i] = cth * S.x[i] - sth * S.L[a + i][p];
        }
    }
}

template <int MM>
__device__ __forceinline__ void chol_solve(GmShared<MM>& S, int q) {
    for (int a = 0; a < q; ++a) {
        double s = S.bS[a];
        for (int t = 0; t < a; ++t) s -= S.L[a][t] * S.wa[t];
        S.wa[a] = s / S.L[a][a];
    }
    for (int a = q - 1; a >= 0; --a) {
        double s = S.wa[a];
        for (int t = a + 1; t < q; ++t) s -= S.L[t][a] * S.wa[t];
        S.wa[a] = s / S.L[a][a];
    }
}

template <int MM>
__device__ __forceinline__ void gradmatch_pursuit(const double* __restrict__ K, const double* __restrict__ bv,
                                                  const double* __restrict__ gg_in, int n, int m, double lam,
                                                  i64* __restrict__ act_out, double* __restrict__ w_out,
                                                  i64* __restrict__ q_out, unsigned char* __restrict__ chosen_out) {
    __shared__ GmShared<MM> S;
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    const int b = blockIdx.x, i = threadIdx.x;
    const bool live = i < n;
    const double* Kb = K + (i64)b * n * n;
    const double* bb = bv + (i64)b * n;
    const double gg = gg_in[b];
    double c = live ? bb[i] : 0.0;
    bool chosen = false;
    if (i == 0) {
        double s = 0.0;
        for (int r = 0; r < n; ++r) s += Kb[(i64)r * n + r];
        S.bS[0] = lam * s / n;  // the ridge, kept in bS[0] until the first step needs it
        S.q = 0;
        S.r2 = gg;
        S.stop = 0;
    }
    __syncthreads();
    const double ridge = S.bS[0];
    __syncthreads();
    for (int t = 0; t < m; ++t) {
        if (!(S.r2 > GRAFT_GM_TOL2 * gg)) break;  // the same on every thread
        double best;
        const int j = block_argmax(live ? c : neg_inf(), i, s_val, s_idx, &best, neg_inf());
        if (i == j) S.stop = chosen ? 1 : 0;
        __syncthreads();
        const int again = S.stop;
        __syncthreads();  // every thread has read S.stop before thread 0 may set it below
        if (again) break;
        if (i == 0) {
            S.newest = 0;
            const double kjj = Kb[(i64)j * n + j];
            if (t == 0) {
                S.act[0] = j;
                S.wa[0] = kjj > 0.0 ? best / kjj : 0.0;  // best = c_j = b_j here
                S.L[0][0] = sqrt(kjj + ridge);
                S.q = 1;
            } else {
                const int q = S.q;
                for (int a = 0; a < q; ++a) S.kcol[a] = Kb[(i64)S.act[a] * n + j];
                const double d0 = kjj + ridge;
                const double delta = d0 - chol_add_row(S, q);
                if (!(delta > GRAFT_GM_SPAN2 * d0)) {
                    S.stop = 1;
                } else {
                    S.L[q][q] = sqrt(delta);
                    S.act[q] = j;
                    int qq = q + 1;
                    while (qq > 0) {
                        for (int a = 0; a < qq; ++a) S.bS[a] = bb[S.act[a]];
                        chol_solve(S, qq);
                        int amin = 0;
                        for (int a = 1; a < qq; ++a)
                            if (S.wa[a] < S.wa[amin]) amin = a;
                        if (!(S.wa[amin] < 0.0)) break;
                        if (S.act[amin] == j) S.newest = 1;
                        chol_drop(S, qq, amin);
                        for (int a = amin; a < qq - 1; ++a) S.act[a] = S.act[a + 1];
                        --qq;
                    }
                    S.q = qq;
                }
            }
        }
        __syncthreads();
        if (S.stop) break;
        const int q = S.q;
        chosen = false;
        if (live) {  // the correlations with the new residual, summed in the active order
            c = bb[i];
            for (int a = 0; a < q; ++a) {
                chosen = chosen || S.act[a] == i;
                c -= S.wa[a] * Kb[(i64)S.act[a] * n + i];
            }
        }
        // r2 = gg - sum_a w_a (b_{act_a} + c_{act_a}): each active row's thread has its c
        __syncthreads();
        if (i == 0) S.r2 = gg;
        __syncthreads();
        for (int a = 0; a < q; ++a) {  // in the active order, as the CPU kernel sums
            if (live && S.act[a] == i) S.r2 = S.r2 - S.wa[a] * (bb[i] + c);
            __syncthreads();
        }
        if (S.newest) break;
    }
    const int q = S.q;
    for (int a = i; a < m; a += blockDim.x) {
        act_out[(i64)b * m + a] = a < q ? S.act[a] : -1;
        w_out[(i64)b * m + a] = a < q ? S.wa[a] : 0.0;
    }
    if (live) chosen_out[(i64)b * n + i] = chosen ? 1 : 0;
    if (i == 0) q_out[b] = q;
}

}  // namespace graft

extern "C" __global__ void __launch_bounds__(1024)
    gradmatch_pursuit(const double* K, const double* b, const double* gg, int n, int m, double lam,
                      long long* act, double* w, long long* q, unsigned char* chosen) {
    graft::gradmatch_pursuit<64>(K, b, gg, n, m, lam, act, w, q, chosen);
}
