// Facility location on the GPU (CRAIG, CREST): greedy coreset and cluster-size weights per batch.
//
// One block per batch of n <= 1024 rows, one thread per row / column. From the batch's gradient
// Gram K: distances d_ij = sqrt(K_ii + K_jj - 2 K_ij) from the lower triangle (i > j), 0 at or
// below DUPLICATE_ULPS eps (K_ii + K_jj) (the Gram's round-off), similarities s_ij = dmax - d_ij
// written symmetric into a work buffer (graft_array.strategies.facility._similarities_nb); then
// m greedy steps: thread j sums its column's gains max(0, s_ij - cur_i) over i in order (the
// CPU kernel's _gain_nb sum, the same bits; the column of the symmetric S is its row, read
// coalesced), a block argmax (ties: the lowest index), and each row's cur / assignment update
// (ties stay with the earlier choice). Weights: how many rows each chosen row serves.
#include "common.cuh"

namespace graft {

__device__ __forceinline__ void facility_location(const double* __restrict__ K, int n, int m,
                                                  double* __restrict__ work, i64* __restrict__ order,
                                                  double* __restrict__ weights) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ double cur[1024];
    __shared__ int assign[1024];
    const int b = blockIdx.x, i = threadIdx.x;
    const bool live = i < n;
    const double* Kb = K + (i64)b * n * n;
    double* S = work + (i64)b * n * n;
    const double ulps = 16.0 * 2.220446049250313e-16;
    double dmax = 0.0;
    if (live) {  // column i: d_ji for j > i, from the lower triangle, mirrored
        const double di = Kb[(i64)i * n + i];
        for (int j = i + 1; j < n; ++j) {
            const double dj = Kb[(i64)j * n + j];
            const double d2 = dj + di - 2.0 * Kb[(i64)j * n + i];
            const double d = d2 > ulps * (dj + di) ? sqrt(d2) : 0.0;
            S[(i64)j * n + i] = d;
            S[(i64)i * n + j] = d;
            dmax = d > dmax ? d : dmax;
        }
        S[(i64)i * n + i] = 0.0;
        cur[i] = 0.0;
        assign[i] = 0;
    }
    dmax = block_max(dmax, s_val);  // its barriers order the writes above before the reads below
    if (live)
        for (int j = 0; j < n; ++j) S[(i64)j * n + i] = dmax - S[(i64)j * n + i];  // column i
    __syncthreads();
    bool chosen = !live;
    for (int t = 0; t < m; ++t) {
        double g = -1.0;
        if (!chosen) {
            g = 0.0;
            for (int r = 0; r < n; ++r) {
                const double v = S[(i64)r * n + i] - cur[r];
                if (v > 0.0) g += v;
            }
        }
        double best;
        const int j = block_argmax(g, i, s_val, s_idx, &best);
        if (i == j) chosen = true;
        if (i == 0) order[(i64)b * m + t] = j;
        if (live) {
            const double sji = S[(i64)j * n + i];
            if (t == 0 || sji > cur[i]) {  // ties stay with the earlier selected row
                cur[i] = sji;
                assign[i] = t;
            }
        }
        __syncthreads();
    }
    for (int t = i; t < m; t += blockDim.x) {
        double c = 0.0;
        for (int r = 0; r < n; ++r) c += assign[r] == t ? 1.0 : 0.0;
        weights[(i64)b * m + t] = c;
    }
}

}  // namespace graft

extern "C" __global__ void __launch_bounds__(1024)
    facility_location(const double* K, int n, int m, double* work, long long* order, double* weights) {
    graft::facility_location(K, n, m, work, order, weights);
}
