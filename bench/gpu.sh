#!/usr/bin/env bash
# The GPU benchmarks in one go, for a machine with an NVIDIA GPU and PyTorch 2.11 in Python
# (the H100/H200 machines), which has no cargo. Prepare here with bench/gpu-pack.sh (stripped
# binaries and the CIFAR-10 archive in bench-gpu-pack/), carry that folder with the repository,
# and run there:
#
#   bench/gpu.sh OUT_DIR
#
# Stages, most important first, each written to OUT_DIR as it ends so that a run cut short
# still returns what it finished; a stage is skipped when less than its expected time is left
# of BUDGET_S (default 540 seconds):
#   sweep_throughput.md  trials per GPU-hour: 1 slot, K slots with and without MPS, bf16 +
#                        channels_last, PyTorch eager one trial at a time   (~5 min)
#   precision.md         final accuracy in fp32, bf16, fp16                 (~1.5 min)
#   throughput.md        one trial's img/s against PyTorch eager            (~1 min)
#   measure_cost.md      the cost of measuring                              (~1 min)
# The worker is the CPU-libtorch build; pointing LD_LIBRARY_PATH at PyTorch's own libraries
# gives it CUDA (README, "Workers on a GPU machine").
#
# Dry run of the whole script on a CPU (short trials, same steps):
#   DEVICE=cpu STEPS=50 PYTHON=~/.cache/bnsweep/bench-venv/bin/python bench/gpu.sh /tmp/dry
# (PYTHON: a Python with torch 2.11 and Pillow; default python3.)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
budget="${BUDGET_S:-540}"
device="${DEVICE:-cuda}"
export PYTHON="${PYTHON:-python3}"
began=$(date +%s)
pack=bench-gpu-pack
export LD_LIBRARY_PATH="$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')"
if [[ -x "$pack/bnsweep-worker" ]]; then
  export WORKER="$pack/bnsweep-worker" BNSWEEP="$pack/bnsweep"
else
  export WORKER="${WORKER:-target/release/bnsweep-worker}" BNSWEEP="${BNSWEEP:-target/release/bnsweep}"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; "$PYTHON" -c 'import torch; print(torch.__version__)'; } > "$out/gpu.txt" 2>&1
cifar="$out/data/cifar-10-batches-bin"
if [[ ! -f "$cifar/test_batch.bin" ]]; then
  "$PYTHON" "$pack/cifar10_jpeg_to_bin.py" "$out/data" > "$out/cifar.log" 2>&1 || echo "CIFAR-10 conversion failed: $out/cifar.log" >&2
fi
"$WORKER" bench --device "$device" --steps 50 > "$out/smoke.json" 2> "$out/smoke.log"
cat "$out/gpu.txt" "$out/smoke.json"

stage() { # name expected_seconds command...
  local name="$1" need="$2"; shift 2
  local left=$((budget - ($(date +%s) - began)))
  if (( left < need )); then
    echo "skipped $name: ${left}s left of ${budget}s, it needs ~${need}s" | tee "$out/$name.md" >&2
    return
  fi
  local t0=$(date +%s)
  timeout "$left" "$@" > "$out/$name.md" 2> "$out/$name.log"
  echo "$name: exit $?, $(( $(date +%s) - t0 )) s" >&2
  cat "$out/$name.md"
}
stage sweep_throughput 300 env OUT="$out/sweep" bench/sweep_throughput.sh "$cifar" --device "$device"
stage precision 90 env OUT="$out/precision/precision" bench/precision.sh "$cifar" --device "$device"
stage throughput 60 bench/throughput.sh --device "$device"
stage measure_cost 60 bench/measure_cost.sh --device "$device"
# Logs of the slots and the MPS daemon, for a failed stage.
find "$out/sweep" -name '*.log' -newer "$out/gpu.txt" -size -1M -exec cp {} "$out/" \; 2>/dev/null || true
rm -rf "$out/data" "$out/precision/precision/train" "$out/precision/precision/eval" "$out/sweep"/run-*/{train,eval,layers,landscape,activations}
