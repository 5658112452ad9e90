#!/usr/bin/env bash
# The effect of the opt-in fast kernels on accuracy: the same trials on CIFAR-10 in exact fp32
# and with `precision: bf16` (and, on a GPU, `fp16`), BN on and off, two seeds; prints a
# Markdown table of final test accuracy per variant (mean ± sd over seeds, from `bnsweep report
# --markdown`). (channels_last is the same arithmetic in another order: the worker's
# unit test shows the curves agree.)
#
#   bench/precision.sh CIFAR_DIR                   # CPU: vgg8 width 0.125, 1500 steps
#   bench/precision.sh CIFAR_DIR --device cuda     # GPU: vgg8 width 1.0, 3000 steps
#
# CIFAR_DIR is the cifar-10-batches-bin directory. Environment: STEPS, BNSWEEP (default
# target/release/bnsweep), WORKER (default: beside it), OUT (results directory, default a
# temporary one).
set -euo pipefail
source "$(dirname "$0")/cifar_args.sh"
export BNSWEEP_WORKER_BIN="$worker"
out="${OUT:-$(mktemp -d)/precision}"
if [[ "$device" == cpu ]]; then
  width=0.125 steps="${STEPS:-1500}" precisions="[fp32, bf16]" layouts="[false]"
  workers=(--workers 2 --threads 1)
else
  width=1.0 steps="${STEPS:-3000}" precisions="[fp32, bf16, fp16]" layouts="[false]"
  workers=(--workers 1 --slots 4)
fi
sweep="$(dirname "$out")/precision.yaml"
mkdir -p "$(dirname "$out")"
cat > "$sweep" <<EOF
name: precision
seeds: [0, 1]
parameters:
  precision: $precisions
  channels_last: $layouts
  bn: [true, false]
train:
  lr: 0.1
  model: {name: vgg8, width: $width}
  dataset: {name: cifar10, path: $cifar}
  batch_size: 128
  steps: $steps
  eval_every: 500
EOF
echo "bench/precision: $device, vgg8 width $width, $steps steps, results in $out" >&2
"$bnsweep" run "$sweep" --out "$out" --device "$device" "${workers[@]}" >&2
echo "Final test accuracy on CIFAR-10 ($device, vgg8 width $width, $steps steps, lr 0.1, batch 128):"
echo
"$bnsweep" report "$out" --markdown
