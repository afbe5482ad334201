// The elimination constants of the LU kernels (deim.cu, deim_warp.cu, tournament.cu): the band of
// graft_array._numba.maxvol's _ELIM_BAND, the scales and the rank tolerance. Include after common.cuh (the
// sources are inlined for NVRTC, so headers do not include headers).
#pragma once

namespace graft {

template <typename T> struct ElimBand;
template <> struct ElimBand<float> {
    static __device__ __forceinline__ double lo() { return 8.673617379884035e-19; }   // 2^-60
    static __device__ __forceinline__ double hi() { return 1.152921504606847e+18; }   // 2^60
};
template <> struct ElimBand<double> {
    static __device__ __forceinline__ double lo() { return 3.054936363499605e-151; }  // 2^-500
    static __device__ __forceinline__ double hi() { return 3.273390607896142e+150; }  // 2^500
};

// A batch's elimination constants from its max |entry| vmax (graft_array._numba.maxvol): sc, the exact
// power-of-two scale of the entries where vmax leaves the elimination band (else 1); tol, the rank
// tolerance rank_factor(n, r) eps max|V| of the scaled entries; nsc, the scale of the float64 row norms.
struct Elim {
    double sc, tol, nsc;
};

template <typename T>
__device__ __forceinline__ Elim elim_setup(double vmax, long long n, long long r, double eps) {
    Elim e;
    e.sc = ((vmax >= ElimBand<T>::lo() && vmax <= ElimBand<T>::hi()) || vmax == 0.0) ? 1.0 : unit_scale(vmax);
    e.tol = rank_factor(n, r) * eps * (vmax * e.sc);
    e.nsc = norm_in_band(vmax, (int)r) ? 1.0 : unit_scale(vmax);
    return e;
}

// A batch with a NaN or an infinity: pivots 0, 1, ..., kk - 1, rank 0, flagged (thread t of nt writes).
__device__ __forceinline__ void flag_nonfinite(long long* piv_b, int kk, int t, int nt, long long* rank_b,
                                               int* bad_b) {
    for (int j = t; j < kk; j += nt) piv_b[j] = j;
    if (t == 0) {
        *rank_b = 0;
        *bad_b = 1;
    }
}

}  // namespace graft
