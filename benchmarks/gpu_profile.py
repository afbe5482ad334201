"""The DEIM kernels' launches for a profiler: run under Nsight Compute by ``gpu_session.sh``.

    ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        --section LaunchStats -k "regex:deim_warp|deim_batched|deim_tall_scan" -c 4 \\
        python benchmarks/gpu_profile.py

One call each (the profiler replays each kernel for its counters): the warp
kernel and the block kernel on 100,000 batches of 128 x 32 float32, the block
kernel on float64, and the tall DEIM on a 2e6 x 64 float32 matrix (its first
scan is the fourth launch profiled). The H200 run of 2026-11-30 measured the warp kernel at
7.6% of the copy bandwidth and judged it latency-bound (8 warps per SM at 226
registers); these counters (achieved occupancy, the warps' stall reasons) are
what the next change needs. Nothing is asserted.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    import cupy

    from graft_array._cuda import deim as cdeim

    rng = cupy.random.default_rng(0)
    V32 = rng.standard_normal((100_000, 128, 32), dtype=cupy.float32)
    V64 = rng.standard_normal((100_000, 128, 32), dtype=cupy.float64)
    T = rng.standard_normal((1, 2_000_000, 64), dtype=cupy.float32)
    runs = [lambda: cdeim.deim_batched(V32, 32), lambda: cdeim.deim_batched(V32, 32, warp=False),
            lambda: cdeim.deim_batched(V64, 32), lambda: cdeim.deim_tall(T, 64)]
    for run in runs:
        run()
    cupy.cuda.Device().synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
