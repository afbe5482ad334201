// The rectangular extension on the GPU: r greedy pivots of a batch extended to k > r rows,
// each step the row that most increases det(V_S^T V_S) (rect_maxvol).
//
// One block per batch, one thread per row (n <= 1024). The step for step algorithm of
// graft_array._numba.rect._rect_full, the same IEEE operations in the same order (no
// fused multiply-add with --fmad=false): the Gram matrix of the pivot rows accumulated
// pivot by pivot (a thread per entry), its Cholesky factor by rows (one thread: r <= 64)
// with the same floor on a non-positive diagonal, each row's z_i = L^-1 x_i and score
// s_i = ||z_i||^2 (its own thread), then per added row a block argmax of the scores
// (ties: the lowest row; none finite: the fill row of largest norm) and the
// Sherman-Morrison downdate of every score. The rank-one terms c_t(i) live in a global
// scratch (k - r, n) per batch, each thread writing its own column. The batch runs on
// V_b 2^j (exact) where its max |entry| leaves the float64 band, as the CPU kernel does.
#include "common.cuh"

namespace graft {

template <typename T, int R>
__device__ __forceinline__ void rect_extend(const T* __restrict__ V, const i64* __restrict__ piv_in,
                                            const i64* __restrict__ rank_in, int n, int r, int k,
                                            i64* __restrict__ out, double* __restrict__ scratch) {
    __shared__ double G[R][R + 1];
    __shared__ double zp[R];
    __shared__ double s_val[33];
    __shared__ int s_idx[33];
    __shared__ double s_p;
    const int b = blockIdx.x;
    const int i = threadIdx.x;
    const bool live = i < n;
    const T* Vb = V + (i64)b * n * r;
    const i64* pv = piv_in + (i64)b * r;
    i64* ob = out + (i64)b * k;
    const int extra = k - r;
    double* C = scratch + (i64)b * (extra + 1) * n;  // rows 0..extra-1: c_t; row extra: d_t
    double* dv = C + (i64)extra * n;

    double x[R];
    double sq;
    const double sc = load_row64<T, R>(Vb, i, n, r, x, sq, s_val);  // the row, its norm, the band's scale
    const bool band = sc == 1.0;
    const double nrm = live ? sqrt(sq) : -1.0;
    bool sel = false;
    for (int j = 0; j < r; ++j) {
        if (pv[j] == i) sel = true;
        if (i == 0) ob[j] = pv[j];
    }
    if (!live) sel = true;

    if (rank_in[b] < r) {  // rank deficient: fill rows, largest norm first
        for (int t = r; t < k; ++t) {
            double best;
            const int p = block_argmax(sel ? -1.0 : nrm, i, s_val, s_idx, &best);
            if (i == p) sel = true;
            if (i == 0) ob[t] = p;
        }
        return;
    }

    // the Gram matrix of the pivot rows (lower triangle), accumulated pivot by pivot
    for (int e = i; e < r * r; e += blockDim.x) {
        const int a = e / r, c = e % r;
        if (c > a) continue;
        double acc = 0.0;
        for (int j = 0; j < r; ++j) {
            const T* xr = Vb + pv[j] * r;
            const double xa = band ? (double)xr[a] : (double)xr[a] * sc;
            const double xc = band ? (double)xr[c] : (double)xr[c] * sc;
            acc = acc + xa * xc;
        }
        G[a][c] = acc;
    }
    __syncthreads();
    if (i == 0) {  // Cholesky by rows, with the kernel's floor on a non-positive diagonal
        for (int a = 0; a < r; ++a) {
            const double gaa = G[a][a];
            for (int c = 0; c < a; ++c) {
                double acc = G[a][c];
                for (int t = 0; t < c; ++t) acc = acc - G[a][t] * G[c][t];
                G[a][c] = acc / G[c][c];
            }
            double acc = G[a][a];
            for (int t = 0; t < a; ++t) acc = acc - G[a][t] * G[a][t];
            G[a][a] = acc > 0.0 ? sqrt(acc) : (gaa > 0.0 ? sqrt(2.220446049250313e-16 * gaa) : 1.0);
        }
    }
    __syncthreads();
    double z[R];
    double s = 0.0;
    if (live) {
        for (int a = 0; a < R; ++a) {
            if (a >= r) break;
            double za = x[a];
            for (int t = 0; t < a; ++t) za = za + (-G[a][t]) * z[t];
            const double f = 1.0 / G[a][a];
            z[a] = za * f;
        }
        for (int a = 0; a < R; ++a) {
            if (a >= r) break;
            s = s + z[a] * z[a];
        }
    }
    const double ninf = neg_inf();
    for (int t = 0; t < extra; ++t) {
        // s > -inf and not NaN, as the CPU kernel's strict "s[i] > best" from best = -inf
        double best;
        int p = block_argmax((!sel && s > ninf) ? s : ninf, i, s_val, s_idx, &best, ninf);
        if (!(best > ninf)) p = block_argmax(sel ? -1.0 : nrm, i, s_val, s_idx, &best);  // the fill row
        if (i == p) {
            sel = true;
            for (int a = 0; a < R; ++a) {
                if (a >= r) break;
                zp[a] = z[a];
            }
            s_p = s;
        }
        if (i == 0) ob[r + t] = p;
        __syncthreads();
        const double d = 1.0 + s_p;
        if (live) {
            double ct = 0.0;
            for (int a = 0; a < R; ++a) {
                if (a >= r) break;
                ct = ct + zp[a] * z[a];
            }
            for (int tau = 0; tau < t; ++tau) {
                const double f = C[(i64)tau * n + p] / dv[tau];
                ct = ct + (-f) * C[(i64)tau * n + i];
            }
            C[(i64)t * n + i] = ct;
            const double f = 1.0 / d;
            s = s - ct * ct * f;
        }
        if (i == 0) dv[t] = d;
        __syncthreads();  // c_t and d_t are read at the next steps; zp / s_p are written again
    }
}

}  // namespace graft

#define GRAFT_RECT_INSTANCE(T, SUF, R)                                                                     \
    extern "C" __global__ void __launch_bounds__(1024)                                                      \
        rect_extend_##SUF##_r##R(const T* V, const long long* piv, const long long* rank, int n, int r,    \
                                 int k, long long* out, double* scratch) {                                  \
        graft::rect_extend<T, R>(V, piv, rank, n, r, k, out, scratch);                                      \
    }

GRAFT_RECT_INSTANCE(float, f32, 16)
GRAFT_RECT_INSTANCE(float, f32, 64)
GRAFT_RECT_INSTANCE(double, f64, 16)
GRAFT_RECT_INSTANCE(double, f64, 64)
