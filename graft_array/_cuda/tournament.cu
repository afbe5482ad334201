// Tall DEIM and tournament pivoting (CALU) on the GPU.
//
// One launch per level of the tournament: grid (batches, tiles), one block per tile of
// tile_rows consecutive candidates (any number of rows: each thread takes every
// blockDim-th row of the tile), the tile's first kt = min(kk, rows) columns in a global
// work buffer (column-major, so every elimination sweep is coalesced). Each tile runs
// DEIM with the whole batch's tolerance, elimination scale and fill norms (as
// graft_array.testing.reference_tournament does), and writes its winners sorted by row
// index at offset tile * kk of the next level's candidates; the last level (one tile)
// writes its pivots in selection order and the rank. One tile of n rows is the tall DEIM.
// The pivot search scans each thread's rows in increasing order and keeps the first
// largest, then the block argmax keeps the lowest row: ties go to the lowest row index.
#include "common.cuh"
#include "elim.cuh"

namespace graft {

template <typename T>
__device__ __forceinline__ void deim_tile(const T* __restrict__ V, int n, int r, int kk,
                                          const i64* __restrict__ cand, int m, int tile_rows,
                                          const double* __restrict__ amax_b, double eps, T* __restrict__ work,
                                          double* __restrict__ norms, unsigned char* __restrict__ alive,
                                          i64* __restrict__ out, int m_out, i64* __restrict__ rank_out) {
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ T prow[64];
    __shared__ int picks[64];
    const int b = blockIdx.x, tile = blockIdx.y, t = threadIdx.x;  // batches on x (no 65535 limit)
    const int ntiles = gridDim.y;
    const int start = tile * tile_rows;
    const int s = (m - start) < tile_rows ? (m - start) : tile_rows;
    const int kt = kk < s ? kk : s;
    const T* Vb = V + (i64)b * n * r;
    const i64* cb = cand + (i64)b * m + start;
    const i64 base = ((i64)b * ntiles + tile) * (i64)tile_rows;
    T* W = work + base * kk;  // W[c * s + i]
    double* nrm = norms + base;
    unsigned char* live = alive + base;

    const double vmax = amax_b[b];
    const Elim e = elim_setup<T>(vmax, n, r, eps);
    const double sc = e.sc, tol = e.tol, nsc = e.nsc;
    for (int i = t; i < s; i += blockDim.x) {
        const T* x = Vb + cb[i] * r;
        for (int c = 0; c < kt; ++c) W[(i64)c * s + i] = sc == 1.0 ? x[c] : (T)((double)x[c] * sc);
        nrm[i] = sqrt(sq_norm(x, r, nsc));
        live[i] = 1;
    }
    __syncthreads();
    int rank = 0;
    for (int j = 0; j < kt; ++j) {
        double bv = -1.0;
        int bi = 0x7fffffff;
        for (int i = t; i < s; i += blockDim.x)
            if (live[i]) {
                const double a = fabs((double)W[(i64)j * s + i]);
                if (a > bv) {
                    bv = a;
                    bi = i;
                }
            }
        double best;
        int p = block_argmax(bv, bi, s_val, s_idx, &best);
        const bool ok = best > tol;
        if (!ok) {
            bv = -1.0;
            bi = 0x7fffffff;
            for (int i = t; i < s; i += blockDim.x)
                if (live[i] && nrm[i] > bv) {
                    bv = nrm[i];
                    bi = i;
                }
            p = block_argmax(bv, bi, s_val, s_idx, &best);
        }
        if (t == 0) {
            picks[j] = p;
            live[p] = 0;
        }
        if (ok) {  // U's row: the pivot row times the rounded 1 / pivot (the Numba kernels' arithmetic)
            const T f = (T)1 / W[(i64)j * s + p];
            for (int c = j + 1 + t; c < kt; c += blockDim.x) prow[c] = W[(i64)c * s + p] * f;
        }
        __syncthreads();
        if (ok) {
            ++rank;
            for (int i = t; i < s; i += blockDim.x)
                if (live[i]) {  // unscaled multiplier, one fused multiply-add per entry (simd._vfnma)
                    const T a = W[(i64)j * s + i];
                    for (int c = j + 1; c < kt; ++c) W[(i64)c * s + i] = fnma(a, prow[c], W[(i64)c * s + i]);
                }
        }
        __syncthreads();
    }
    if (ntiles == 1) {  // the last level (m <= tile_rows): pivots in selection order, and the rank
        for (int j = t; j < kt; j += blockDim.x) out[(i64)b * m_out + j] = cb[picks[j]];
        if (t == 0) rank_out[b] = rank;
        return;
    }
    for (int j = t; j < kt; j += blockDim.x) {  // winners sorted by row index (candidates are ascending)
        int pos = 0;
        for (int q = 0; q < kt; ++q) pos += picks[q] < picks[j];
        out[(i64)b * m_out + (i64)tile * kk + pos] = cb[picks[j]];
    }
}

}  // namespace graft

#define GRAFT_TILE_INSTANCE(T, SUF)                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        deim_tiles_##SUF(const T* V, int n, int r, int kk, const long long* cand, int m, int tile_rows,     \
                         const double* amax, double eps, T* work, double* norms, unsigned char* alive,      \
                         long long* out, int m_out, long long* rank) {                                      \
        graft::deim_tile<T>(V, n, r, kk, cand, m, tile_rows, amax, eps, work, norms, alive, out, m_out,     \
                            rank);                                                                          \
    }

GRAFT_TILE_INSTANCE(float, f32)
GRAFT_TILE_INSTANCE(double, f64)
