#!/usr/bin/env bash
# Second GPU session of issue 5: the sparse read inside the whole op under impl="auto", a chunk-state launch sweep,
# and the cache-read rows the first session's time limit cut. Usage: OUT=/some/dir bash benchmarks/device_run2.sh
set -u
OUT=${OUT:-/tmp/mc_device}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_FLAGS= JAX_DISABLE_MOST_OPTIMIZATIONS=0
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
timeout 70 $PY -m pytest -q -m device -p no:cacheprovider tests/kernels -k "independent-16 or dense_and_sparse" 2>&1 | tee "$OUT/device_tests2.log"
timeout 80 $PY benchmarks/sweep_chunk_state.py --out "$OUT/sweep_chunk_state.json" 2>&1 | tee "$OUT/sweep.log"
B="$PY benchmarks/bench_kernels.py --preset gpu --reps 10"
timeout 60 $B --ops e2e --memory gated_linear --aggregation ssc --pallas-impl auto --max-cases 6 --out "$OUT/bench2.json" 2>&1 | tee "$OUT/bench2.log"
timeout 70 $B --ops cache_dense,cache_sparse --first-case 4 --out "$OUT/bench3.json" 2>&1 | tee -a "$OUT/bench2.log"
echo "device_run2 done"
