#!/usr/bin/env bash
# Issue 12's device checks in one prepared command, for a session that is lent a GPU machine:
#
#   OUT=<dir> bash benchmarks/gpu_session.sh
#
# On a machine with an NVIDIA GPU, CuPy, numba and torch (the project's H200 image has them; carry
# array-api-compat, tqdm or threadpoolctl as wheels if missing, see the workplace's device README), from the
# repository root: the device's name, `graft-array check-gpu` (NVRTC for the device's architecture, then every
# kernel's parity with the Numba path, compiled with --fmad=false), the `gpu`-marked tests, and
# benchmarks/bench_gpu.py; every log, and bench_gpu's table (gpu.md), goes to $OUT. The package is used from the
# checkout (PYTHONPATH), not installed. Each step is bounded so that the whole stays under 10 minutes.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
"$PY" -c "import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); print(p['name'].decode(), p['major'], p['minor'])" \
    2>&1 | tee "$OUT/device.txt"
timeout 240 "$PY" -m graft_array check-gpu 2>&1 | tee "$OUT/check_gpu.txt"
timeout 180 "$PY" -m pytest -m gpu -q -p no:cacheprovider -W ignore::DeprecationWarning tests/test_cuda.py 2>&1 \
    | tee "$OUT/gpu_tests.txt"
timeout 150 "$PY" benchmarks/bench_gpu.py --out "$OUT" 2>&1 | tee "$OUT/bench_gpu.txt"
