// The elimination band of the DEIM kernels (deim.cu, deim_warp.cu): graft_array._numba.maxvol's _ELIM_BAND
// and _in_band. Include after common.cuh (the sources are inlined for NVRTC, so headers do not include headers).
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

// graft_array._numba.maxvol._in_band: a float64 norm of r entries of largest |entry| amax needs no scaling.
__device__ __forceinline__ bool norm_in_band(double amax, int r) {
    return amax == 0.0 || (amax >= 8.636168555094445e-78 && amax * sqrt((double)r) <= 1.157920892373162e+77);
}

}  // namespace graft
