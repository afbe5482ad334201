#!/usr/bin/env bash
# Issue 12's device checks in one prepared command, for a session that is lent a GPU machine:
#
#   OUT=<dir> bash benchmarks/gpu_session.sh [--quick]
#
# On a machine with an NVIDIA GPU, CuPy, numba and torch (the workplace's H200 image has them; carry
# array-api-compat as a wheel in .whl/, see the workplace's device README), from the repository root:
#   1. the versions and the device's name;
#   2. the Numba references compiled into Numba's disk cache by parallel processes (benchmarks/gpu_warm.py),
#      beside `graft-array check-gpu --compile-only` for the device's architecture (NVRTC);
#   3. `graft-array check-gpu` (every kernel's parity with the Numba path, compiled with --fmad=false) and the
#      `gpu`-marked tests, side by side;
#   4. benchmarks/bench_gpu.py alone (its tables also go to $OUT/gpu.md as they are measured);
#   4b. the CPU batched row of benchmarks/bench_maxvol.py on the host's cores, if the clock allows;
#   5. Nsight Compute on the DEIM kernels (benchmarks/gpu_profile.py: occupancy, stall reasons) where ncu runs.
# Every log goes to $OUT. The package is used from the checkout (PYTHONPATH), not installed. Each step is bounded,
# 10 minutes in all (on the H200 of 2026-11-30 the first four took about 50 s, 200 s and 35 s, the tests being most
# of the second): run it with a device timeout of 600 s. --quick runs bench_gpu.py --quick.
set -uo pipefail
OUT=${OUT:-gpu_out}
QUICK=${1:-}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    date -u
    "$PY" -c "import sys, numpy, numba, cupy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__, \
'numba', numba.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__)"
    "$PY" -c "import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); print(p['name'].decode(), p['major'], \
p['minor'], p['multiProcessorCount'], 'SMs,', p['l2CacheSize'] // 2**20, 'MiB L2')"
    nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
} 2>&1 | tee "$OUT/device.txt"
SECONDS=0
timeout 150 "$PY" benchmarks/gpu_warm.py --jobs 14 > "$OUT/warm.txt" 2>&1 &
warm=$!
timeout 120 "$PY" -m graft_array check-gpu --compile-only --arch sm_90 > "$OUT/compile.txt" 2>&1
echo "compile-only: rc $? (${SECONDS} s)"; tail -n 3 "$OUT/compile.txt"
wait $warm; echo "warm: rc $? (${SECONDS} s)"; tail -n 1 "$OUT/warm.txt"
timeout 200 "$PY" -m graft_array check-gpu > "$OUT/check_gpu.txt" 2>&1 &
check=$!
timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider -W default -rA tests/test_cuda.py > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests: rc $? (${SECONDS} s)"; grep -E "passed|failed|error" "$OUT/gpu_tests.txt" | tail -n 20
wait $check; echo "check-gpu: rc $? (${SECONDS} s)"; grep -v "same as the Numba path" "$OUT/check_gpu.txt" | tail -n 20
grep -c "same as the Numba path" "$OUT/check_gpu.txt"
if [ "$QUICK" = "--quick" ]; then
    timeout 90 "$PY" benchmarks/bench_gpu.py --quick --repeats 3 --out "$OUT" > "$OUT/bench_gpu.txt" 2>&1
else
    timeout 150 "$PY" benchmarks/bench_gpu.py --repeats 5 --out "$OUT" > "$OUT/bench_gpu.txt" 2>&1
fi
echo "bench_gpu: rc $? (${SECONDS} s)"; cat "$OUT/bench_gpu.txt"
if [ "$SECONDS" -lt 420 ]; then  # the CPU batched target on the host's cores (90 + 60 s of ncu after 420 fit 600)
    timeout 90 "$PY" benchmarks/bench_maxvol.py --only batched --markdown > "$OUT/bench_maxvol.txt" 2>&1
    echo "bench_maxvol --only batched: rc $? (${SECONDS} s)"; cat "$OUT/bench_maxvol.txt"
else
    echo "bench_maxvol --only batched: skipped (${SECONDS} s spent)"
fi
timeout 60 ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section LaunchStats -k "regex:deim_warp|deim_batched|deim_tall_scan" -c 4 "$PY" benchmarks/gpu_profile.py \
    > "$OUT/ncu_deim.txt" 2>&1
echo "ncu: rc $? (${SECONDS} s)"; grep -E "^  [a-z_]+deim|Achieved Occupancy|Memory Throughput|Duration|Registers" \
    "$OUT/ncu_deim.txt" | head -n 40
