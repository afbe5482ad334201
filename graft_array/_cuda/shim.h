// A CPU shim for graft_array's CUDA sources: the same .cu files compiled by g++ (C++20).
//
// Each thread of a block is a std::thread; the blocks of a launch run one after
// another. __syncthreads is a std::barrier over the block; __shfl_down_sync /
// __shfl_xor_sync exchange values through a per-warp buffer between two per-warp
// barriers (so a shuffle that not all 32 lanes reach deadlocks here, as it would
// misbehave on a GPU: the tests bound the shim with a timeout). __shared__ storage
// is a function-static variable: one per kernel instance, which is block storage
// because blocks never overlap. threadIdx / blockIdx are thread-locals.
// For tests and `graft-array check-gpu --emulate` only; never fast.
#pragma once

#include <math.h>

#include <algorithm>
#include <barrier>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define GRAFT_SHIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace graft_shim {

struct Block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
    std::vector<unsigned long long> lanes;  // one slot per thread, for the shuffles
};

inline thread_local Block* cur = nullptr;

template <typename V>
V exchange(V v, int src_lane) {
    static_assert(sizeof(V) <= sizeof(unsigned long long), "a shuffle moves at most 8 bytes");
    Block* b = cur;
    const unsigned t = threadIdx.x, warp = t >> 5;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    b->lanes[t] = bits;
    b->warp_bar[warp]->arrive_and_wait();
    V out = v;
    if (src_lane >= 0 && src_lane < 32) {
        const unsigned s = (warp << 5) + (unsigned)src_lane;
        if (s < b->lanes.size()) std::memcpy(&out, &b->lanes[s], sizeof(V));
    }
    b->warp_bar[warp]->arrive_and_wait();
    return out;
}

// Launch kernel<<<dim3(gx, gy), block>>>(args...) on the CPU; block must be a multiple of 32.
template <typename K, typename... A>
void launch(unsigned gx, unsigned gy, unsigned block, K kernel, A... args) {
    gridDim = dim3{gx, gy, 1};
    blockDim = dim3{block, 1, 1};
    for (unsigned g = 0; g < gx * gy; ++g) {
        Block blk;
        blk.bar = std::make_unique<std::barrier<>>((std::ptrdiff_t)block);
        // a full-mask shuffle needs all 32 lanes: a partial last warp waits forever here, as on a GPU it is undefined
        for (unsigned w = 0; w < (block + 31) / 32; ++w) blk.warp_bar.push_back(std::make_unique<std::barrier<>>(32));
        blk.lanes.assign(block, 0);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([&blk, g, gx, t, kernel, args...] {
                cur = &blk;
                threadIdx = dim3{t, 0, 0};
                blockIdx = dim3{g % gx, g / gx, 0};
                kernel(args...);
            });
        for (auto& th : threads) th.join();
    }
}

}  // namespace graft_shim

inline void __syncthreads() { graft_shim::cur->bar->arrive_and_wait(); }

template <typename V>
V __shfl_down_sync(unsigned, V v, int delta) {
    const int lane = (int)(threadIdx.x & 31);
    return graft_shim::exchange(v, lane + delta < 32 ? lane + delta : lane);
}

inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, sizeof x);
    return x;
}

// round-to-nearest product and sum, never fused (the shim is compiled with -ffp-contract=off)
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }

template <typename V>
V __shfl_sync(unsigned, V v, int src_lane) {
    return graft_shim::exchange(v, src_lane & 31);
}

// every lane of the warp meets here (the per-warp barrier of the shuffles)
inline void __syncwarp(unsigned = 0xffffffffu) { graft_shim::cur->warp_bar[threadIdx.x >> 5]->arrive_and_wait(); }

template <typename V>
V __shfl_xor_sync(unsigned, V v, int mask) {
    return graft_shim::exchange(v, (int)(threadIdx.x & 31) ^ mask);
}
