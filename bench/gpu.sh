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
# of BUDGET_S (default 540 seconds), and cut at its cap:
#   protocol.md          the paper's protocol end to end: `bnsweep run`, 8 trials of 15,000 steps
#                        at once, final and peak test accuracy, the report's Markdown (~4 min)
#   sweep_throughput.md  trials per GPU-hour: 1 slot, 4 and 8 slots under MPS, bf16 +
#                        channels_last, PyTorch eager one trial at a time   (~2.5 min)
#   throughput.md        one trial's img/s against PyTorch eager            (~1 min)
#   slot_kill.md         --slots auto, MPS start and stop, a slot killed mid-trial (~45 s)
#   precision.md         final accuracy in fp32, bf16, fp16                 (~1.5 min)
#   measure_cost.md      the cost of measuring                              (~1 min)
# The worker is the CPU-libtorch build; pointing LD_LIBRARY_PATH at PyTorch's own libraries
# gives it CUDA (README, "Workers on a GPU machine").
#
# Dry run of the whole script on a CPU (short trials, same steps):
#   DEVICE=cpu STEPS=50 PYTHON=~/.cache/bnsweep/torch-venv/bin/python \
#     READER=~/.cache/bnsweep/venv/bin/python bench/gpu.sh /tmp/dry
# (PYTHON: a Python with torch 2.11 and Pillow; READER: one with pyarrow; default python3.)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
budget="${BUDGET_S:-540}"
device="${DEVICE:-cuda}"
export PYTHON="${PYTHON:-python3}" READER="${READER:-python3}"
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

stage() { # name expected_seconds cap_seconds command...
  local name="$1" need="$2" cap="$3"; shift 3
  local left=$((budget - ($(date +%s) - began)))
  if (( left < need )); then
    echo "skipped $name: ${left}s left of ${budget}s, it needs ~${need}s" | tee "$out/$name.md" >&2
    return
  fi
  (( left < cap )) && cap=$left
  local t0=$(date +%s)
  timeout "$cap" "$@" > "$out/$name.md" 2> "$out/$name.log"
  echo "$name: exit $?, $(( $(date +%s) - t0 )) s" | tee -a "$out/stages.txt" >&2
  cat "$out/$name.md"
}
stage protocol 240 360 env OUT="$out/protocol" bench/protocol.sh "$cifar" --device "$device"
stage sweep_throughput 120 200 env OUT="$out/sweep" bench/sweep_throughput.sh "$cifar" --device "$device"
stage throughput 60 100 env REPEATS=2 bench/throughput.sh --device "$device"
stage slot_kill 40 70 env OUT="$out/slot_kill" bench/slot_kill.sh "$cifar" --device "$device"
stage precision 90 120 env OUT="$out/precision/precision" bench/precision.sh "$cifar" --device "$device"
stage measure_cost 60 80 bench/measure_cost.sh --device "$device"
# Logs of the slots and the MPS daemon, for a failed stage.
find "$out/sweep" -name '*.log' -newer "$out/gpu.txt" -size -1M -exec cp {} "$out/" \; 2>/dev/null || true
rm -rf "$out/data" "$out/precision/precision/train" "$out/precision/precision/eval" "$out/sweep"/run-*/{train,eval,layers,landscape,activations}
