// Batched DEIM (greedy LU row pivots, = LAPACK getrf's partial pivoting) on the GPU.
//
// One thread block per batch V_b (n x r, n <= 1024 rows, the first kk <= R columns),
// one thread per row, the row's kk entries held in registers (R is a template
// parameter, so the loops over columns unroll and index registers, never memory).
// Rows are never swapped: a selected row just leaves the candidates, so the pivot
// search's tie rule "lowest row index" is the contract of every graft_array kernel
// (see graft_array.testing). Per step: a warp-shuffle argmax over (|value|, row)
// with that total order, the pivot row through shared memory, one rank-1 update of
// the remaining rows, in the Numba kernels' arithmetic (U's row = pivot row times the
// rounded 1 / pivot, then row -= a U by one fused multiply-add per entry), so that the
// values, not only the decisions, are those of graft_array._numba.maxvol's
// _deim_batched, with or without --fmad: the same tolerance rank_factor(n, r) eps max|V_b|, the same exact power-of-two
// scaling of a batch whose max|V_b| leaves the elimination band, the same fill row
// (the free row of largest Euclidean norm, in float64) for a step at or below the
// tolerance, and a batch with a NaN or an infinity flagged (bad = 1) and skipped.
#include "common.cuh"
#include "elim.cuh"

namespace graft {

template <typename T, int R>
__device__ __forceinline__ void deim_batched(const T* __restrict__ V, int n, int r, int kk, double eps,
                                             i64* __restrict__ piv, i64* __restrict__ rank_out,
                                             int* __restrict__ bad_out) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ T s_row[R];
    const int b = blockIdx.x;
    const int i = threadIdx.x;
    const bool live = i < n;
    const T* Vb = V + (i64)b * n * r;

    // max |V_b| and the NaN / infinity flag, in one coalesced pass over the batch
    double amax = 0.0, nonfinite = 0.0;
    for (i64 t = i; t < (i64)n * r; t += blockDim.x) {
        const double x = (double)Vb[t];
        if (x - x != 0.0) nonfinite = 1.0;
        else if (fabs(x) > amax) amax = fabs(x);
    }
    const double vmax = block_max(amax, s_val);
    if (block_max(nonfinite, s_val) > 0.0) {
        flag_nonfinite(piv + (i64)b * kk, kk, i, blockDim.x, rank_out + b, bad_out + b);
        return;
    }
    const Elim e = elim_setup<T>(vmax, n, r, eps);
    const double sc = e.sc, tol = e.tol, nsc = e.nsc;

    T row[R];
    double nrm = -1.0;
    if (live) {
        const T* x = Vb + (i64)i * r;
#pragma unroll
        for (int c = 0; c < R; ++c) row[c] = c < kk ? (sc == 1.0 ? x[c] : (T)((double)x[c] * sc)) : (T)0;
        nrm = sqrt(sq_norm(x, r, nsc));
    }
    bool cand = live;
    int rank = 0;
    for (int j = 0; j < kk; ++j) {
        T a = (T)0;
#pragma unroll
        for (int c = 0; c < R; ++c)
            if (c == j) a = row[c];
        double best;
        int p = block_argmax(cand ? fabs((double)a) : -1.0, i, s_val, s_idx, &best);
        const bool ok = best > tol;  // the same on every thread
        if (!ok) p = block_argmax(cand ? nrm : -1.0, i, s_val, s_idx, &best);  // the fill row
        if (i == 0) piv[(i64)b * kk + j] = p;
        if (i == p) {
            cand = false;
            if (ok) {  // U's row: the pivot row times 1 / pivot, rounded as the Numba kernels round it
                const T f = (T)1 / row[j];
#pragma unroll
                for (int c = 0; c < R; ++c)
                    if (c > j) s_row[c] = row[c] * f;
            }
        }
        if (ok) {
            ++rank;
            __syncthreads();
            if (cand) {  // unscaled multiplier a, one fused multiply-add per entry (simd._vfnma)
#pragma unroll
                for (int c = 0; c < R; ++c)
                    if (c > j && c < kk) row[c] = fnma(a, s_row[c], row[c]);
            }
            __syncthreads();  // s_row is written again at the next accepted step
        }
    }
    if (i == 0) {
        rank_out[b] = rank;
        bad_out[b] = 0;
    }
}

}  // namespace graft

// One C-named entry per (dtype, R): NVRTC, cupy.RawModule and the CPU shim find them by name.
#define GRAFT_DEIM_INSTANCE(T, SUF, R)                                                                     \
    extern "C" __global__ void __launch_bounds__(1024)                                                      \
        deim_batched_##SUF##_r##R(const T* V, int n, int r, int kk, double eps, long long* piv,             \
                                  long long* rank, int* bad) {                                              \
        graft::deim_batched<T, R>(V, n, r, kk, eps, piv, rank, bad);                                        \
    }

GRAFT_DEIM_INSTANCE(float, f32, 8)
GRAFT_DEIM_INSTANCE(float, f32, 16)
GRAFT_DEIM_INSTANCE(float, f32, 32)
GRAFT_DEIM_INSTANCE(float, f32, 64)
GRAFT_DEIM_INSTANCE(double, f64, 8)
GRAFT_DEIM_INSTANCE(double, f64, 16)
GRAFT_DEIM_INSTANCE(double, f64, 32)
GRAFT_DEIM_INSTANCE(double, f64, 64)
