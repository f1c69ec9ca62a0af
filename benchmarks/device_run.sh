#!/usr/bin/env bash
# One GPU session's checks for the kernels (issue 5): native device tests, then the kernel benchmarks.
# Usage (repo root, on the GPU machine): OUT=/some/dir bash benchmarks/device_run.sh
# Every step has its own time limit, so a slow step cannot starve the others; logs and JSON land in $OUT.
set -u
OUT=${OUT:-/tmp/mc_device}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_FLAGS= JAX_DISABLE_MOST_OPTIMIZATIONS=0
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/env.txt"
$PY -c "import jax, jaxlib, flax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/env.txt"
timeout 120 $PY -m pytest -q -m device -p no:cacheprovider tests/kernels 2>&1 | tee "$OUT/device_tests.log"
T="timeout"; B="$PY benchmarks/bench_kernels.py --preset gpu --reps 10"
$T 90 $B --ops chunk_state,cache_dense,cache_sparse --out "$OUT/bench_kernels.json" 2>&1 | tee "$OUT/bench.log"
$T 45 $B --ops chunk_state --grad --max-cases 6 --out "$OUT/bench_kernels.json" --append 2>&1 | tee -a "$OUT/bench.log"
$T 45 $B --ops e2e --memory delta --aggregation grm --max-cases 6 --out "$OUT/bench_kernels.json" --append 2>&1 | tee -a "$OUT/bench.log"
$T 50 $B --ops e2e --memory gated_linear --aggregation ssc --grad --max-cases 6 --out "$OUT/bench_kernels.json" --append 2>&1 | tee -a "$OUT/bench.log"
$T 35 $B --ops e2e --memory titans --aggregation grm --max-cases 5 --out "$OUT/bench_kernels.json" --append 2>&1 | tee -a "$OUT/bench.log"
$T 35 $B --ops e2e --memory titans --aggregation grm --grad --max-cases 3 --out "$OUT/bench_kernels.json" --append 2>&1 | tee -a "$OUT/bench.log"

echo "device_run done"
