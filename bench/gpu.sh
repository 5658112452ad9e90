#!/usr/bin/env bash
# The GPU benchmarks in one go, for a machine with an NVIDIA GPU and PyTorch 2.11 in Python
# (the H100/H200 machines): no cargo needed there. Build here first (`cargo build --release`),
# then carry target/release/bnsweep-worker and this repository over and run:
#
#   bench/gpu.sh [OUT_DIR]        # writes throughput.md, measure_cost.md and logs to OUT_DIR
#
# The worker is the CPU-libtorch build; pointing LD_LIBRARY_PATH at PyTorch's own libraries
# gives it CUDA (README, "Workers on a GPU machine").
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')"
export PYTHON=python3 WORKER="${WORKER:-target/release/bnsweep-worker}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
"$WORKER" bench --device cuda --steps 50 > "$out/smoke.json" 2> "$out/smoke.log"
bench/throughput.sh --device cuda > "$out/throughput.md" 2> "$out/throughput.log"
bench/measure_cost.sh --device cuda > "$out/measure_cost.md" 2> "$out/measure_cost.log"
cat "$out/gpu.txt" "$out/throughput.md" "$out/measure_cost.md"
