#!/usr/bin/env bash
# The cost of measuring: training throughput of vgg8 with every measurement (ICS, landscape at
# 8 step sizes, activations of every layer, weights) every M steps, against none, alternating
# runs in one go on the same machine. Prints a Markdown table.
#
#   bench/measure_cost.sh                  # CPU, vgg8 at width 0.125, batch 128
#   bench/measure_cost.sh --device cuda    # GPU, vgg8 at width 1.0
#
# Environment: WORKER (default target/release/bnsweep-worker), REPEATS (3), STEPS (200).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu
[[ "${1:-}" == "--device" ]] && device="$2"
repeats="${REPEATS:-3}"
steps="${STEPS:-200}"
worker="${WORKER:-target/release/bnsweep-worker}"
if [[ ! -x "$worker" ]]; then
  source scripts/env.sh
  cargo build --release --bins --quiet
fi
if [[ "$device" == cpu ]]; then
  width=0.125; extra=(--threads "$(nproc)")
else
  width=1.0; extra=()
fi
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { sed -E "s/.*\"$1\": \"?([^,\"}]*).*/\1/"; }
declare -A runs
for _ in $(seq "$repeats"); do
  for every in 0 100 10; do
    v=$("$worker" bench --device "$device" --width "$width" --batch 128 --steps "$steps" --warmup 25 \
        --measure-every "$every" "${extra[@]}" 2>/dev/null | field img_per_s)
    runs[$every]+="$v "
  done
done
base=$(printf '%s\n' ${runs[0]} | median)
echo "| device | vgg8 width | measure every | img/s (median of $repeats) | step time vs none |"
echo "|---|---|---|---|---|"
for every in 0 100 10; do
  m=$(printf '%s\n' ${runs[$every]} | median)
  label=$([[ $every == 0 ]] && echo never || echo "$every steps")
  echo "| $device | $width | $label | $m | $(awk -v b="$base" -v m="$m" 'BEGIN {printf "%.2fx", b / m}') |"
  echo "  runs ($label): ${runs[$every]}" >&2
done
