#!/usr/bin/env bash
# Sweep throughput: how many trials of the paper's protocol (vgg8 on CIFAR-10, batch 128, SGD;
# on the GPU without measurements, as the reference, on the CPU every measurement every 100
# steps) one device trains per hour, bnsweep with 1 slot, with K
# slots under MPS (time-slicing on the CPU), with bf16 autocast + channels_last, against PyTorch eager
# training one trial at a time. Prints a Markdown table.
#
#   bench/sweep_throughput.sh CIFAR_DIR --device cuda     # GPU: 8 trials of 1000 steps each
#   bench/sweep_throughput.sh CIFAR_DIR                   # CPU dry run: width 0.125, 50 steps
#
# The sweep: lr 0.1, BN {on, off} x 4 seeds = 8 trials (no noise and one learning rate, so
# that no trial diverges early and every configuration trains the same images). img/s counts
# training images only (the measurements' extra passes are work the reference does not do).
# The PyTorch row is bench/pytorch_eager.py (same model, batch, optimizer, data handling on the
# device, no measurements) run as one process per trial, one after another, TRIALS_TORCH times.
#
# Environment: STEPS, K (slots, default 4), CONFIGS (below), TRIALS_TORCH (0: no PyTorch row),
# BNSWEEP (default target/release/bnsweep) and WORKER (default: beside it), PYTHON (with torch
# 2.11; default python3), OUT (default a temporary directory).
set -euo pipefail
source "$(dirname "$0")/cifar_args.sh"
python="${PYTHON:-python3}"
out="${OUT:-$(mktemp -d)}"
k="${K:-4}"
if [[ "$device" == cpu ]]; then
  width=0.125 steps="${STEPS:-50}" dev_args=(--device cpu) mps_modes="off" trials_torch=2
  configs=("1 off fp32 false" "2 off fp32 false" "2 off bf16 true")
else
  width=1.0 steps="${STEPS:-1000}" dev_args=(--device cuda:0) trials_torch=2
  configs=("1 off fp32 false none" "$k on fp32 false none" "$((2 * k)) on fp32 false none"
           "$k on bf16 true none" "$((2 * k)) on bf16 true none")
fi
# CONFIGS: "slots mps precision channels_last measure;..." instead of the above.
[[ -n "${CONFIGS:-}" ]] && IFS=';' read -ra configs <<<"$CONFIGS"
trials_torch="${TRIALS_TORCH:-$trials_torch}"
mkdir -p "$out"
port=$((20000 + RANDOM % 20000))

sweep_file() { # precision channels_last measure -> path
  local f="$out/sweep-$1-$2-$3.yaml" measure=""
  if [[ "$3" != none ]]; then
    measure="measure:
  every: 100
  ics: true
  landscape: {eta: [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4], relative_to_lr: true}
  activations: {layers: all, bins: 64, sample: 4096, range: [-6, 6]}
  weights: true"
  fi
  cat > "$f" <<EOF
name: throughput
seeds: [0, 1, 2, 3]
parameters:
  bn: [true, false]
$measure
train:
  lr: 0.1
  model: {name: vgg8, width: $width}
  dataset: {name: cifar10, path: $cifar}
  batch_size: 128
  steps: $steps
  eval_every: 500
  precision: $1
  channels_last: $2
EOF
  echo "$f"
}

now() { date +%s.%N; }

echo "| device | how | slots | MPS | precision | channels_last | measured | trials completed | wall (s) | trials per hour | img/s | TFLOP/s at 0.92 GFLOP/img |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for cfg in "${configs[@]}"; do
  read -r slots mps precision layout measure <<<"$cfg"
  measure="${measure:-every 100}"
  file="$(sweep_file "$precision" "$layout" "${measure// /}")"
  dir="$out/run-$slots-$mps-$precision-$layout-${measure// /}"
  rm -rf "$dir"
  port=$((port + 1))
  start=$(now)
  "$bnsweep" serve "$file" --listen "127.0.0.1:$port" --out "$dir" --http off \
    > "$dir.summary" 2> "$dir.serve.log" &
  serve=$!
  if ! "$worker" --coordinator "http://127.0.0.1:$port" "${dev_args[@]}" --slots "$slots" \
      --mps "$mps" 2> "$dir.worker.log"; then
    kill "$serve" 2>/dev/null; wait "$serve"
    echo "| $device | bnsweep | $slots | $mps | $precision | $layout | $measure | worker failed: $(tail -1 "$dir.worker.log" | tr '|' '/') |"
    continue
  fi
  wait "$serve" || { echo "serve failed: see $dir.serve.log" >&2; exit 1; }
  wall=$(awk -v a="$start" -v b="$(now)" 'BEGIN {print b - a}')
  # "16 trials in 1m05s: 16 completed, 0 diverged, 0 failed": completed trials trained every step.
  completed=$(sed -nE 's/.* ([0-9]+) completed,.*/\1/p' "$dir.summary")
  awk -v dev="$device" -v s="$slots" -v m="$mps" -v p="$precision" -v l="$layout" -v me="$measure" \
      -v w="$wall" -v n="${completed:-0}" -v st="$steps" 'BEGIN {
    ips = n * st * 128 / w
    printf "| %s | bnsweep | %s | %s | %s | %s | %s | %d | %.1f | %.0f | %.0f | %.1f |\n",
      dev, s, m, p, l, me, n, w, n * 3600 / w, ips, ips * 0.92e9 / 1e12 }'
done

# PyTorch eager, one trial after another, each a process of its own as a user would run them.
(( trials_torch > 0 )) || exit 0
start=$(now)
for i in $(seq "$trials_torch"); do
  "$python" bench/pytorch_eager.py --batch 128 --width "$width" --steps "$steps" --warmup 0 \
    --train-size 50000 --device "${dev_args[1]}" > "$out/torch-$i.json" 2> "$out/torch-$i.log"
done
wall=$(awk -v a="$start" -v b="$(now)" 'BEGIN {print b - a}')
awk -v dev="$device" -v w="$wall" -v t="$trials_torch" -v st="$steps" 'BEGIN {
  per = w / t; ips = st * 128 / per
  printf "| %s | PyTorch eager, one at a time | 1 | off | fp32 | false | none | %d | %.1f | %.0f | %.0f | %.1f |\n",
    dev, t, w, 3600 / per, ips, ips * 0.92e9 / 1e12 }'
echo
echo "$steps steps a trial, batch 128, vgg8 width $width; wall times include starting the processes, loading CIFAR-10 and every evaluation."
