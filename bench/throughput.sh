#!/usr/bin/env bash
# Training throughput of bnsweep's trainer (bnsweep-worker bench) against the PyTorch eager
# script of the same model, batch, optimizer and data handling (bench/pytorch_eager.py), run
# alternately on the same machine. Prints a Markdown table of median img/s and their ratio.
#
#   bench/throughput.sh                     # CPU: vgg8 at width 0.125 and 1.0, batch 128
#   bench/throughput.sh --device cuda       # GPU: vgg8 at width 1.0, BN on and off, batch 128
#
# Environment: WORKER (default target/release/bnsweep-worker), PYTHON (a python with
# torch==2.11.0; default: a venv made once in ~/.cache/bnsweep/bench-venv), REPEATS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu
[[ "${1:-}" == "--device" ]] && device="$2"
repeats="${REPEATS:-3}"
worker="${WORKER:-target/release/bnsweep-worker}"
if [[ -z "${PYTHON:-}" ]]; then
  venv="${BNSWEEP_CACHE:-$HOME/.cache/bnsweep}/bench-venv"
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
    echo "bench: installing torch==2.11.0 into $venv (once, several GB)" >&2
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet torch==2.11.0 numpy==2.3.5 >&2
  fi
  PYTHON="$venv/bin/python"
fi
if [[ ! -x "$worker" ]]; then
  source scripts/env.sh
  cargo build --release --bins --quiet
fi
threads=()
if [[ "$device" == cpu ]]; then
  threads=(--threads "$(nproc)")
  configs=("0.125 true 100" "1.0 true 25")
else
  configs=("1.0 true 400" "1.0 false 400")
fi
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { sed -E "s/.*\"$1\": \"?([^,\"}]*).*/\1/"; }
echo "| device | width | BN | batch | bnsweep (tch) img/s | PyTorch eager img/s | ratio |"
echo "|---|---|---|---|---|---|---|"
for cfg in "${configs[@]}"; do
  read -r width bn steps <<<"$cfg"
  args=(--batch 128 --width "$width" --bn "$bn" --steps "$steps" --warmup 25 "${threads[@]}")
  rust=(); torch=()
  for _ in $(seq "$repeats"); do
    rust+=("$("$worker" bench "${args[@]}" --device "$device" 2>/dev/null | field img_per_s)")
    torch+=("$("$PYTHON" bench/pytorch_eager.py "${args[@]}" --device "$device" 2>/dev/null | field img_per_s)")
  done
  r=$(printf '%s\n' "${rust[@]}" | median); t=$(printf '%s\n' "${torch[@]}" | median)
  echo "| $device | $width | $bn | 128 | $r | $t | $(awk -v r="$r" -v t="$t" 'BEGIN {printf "%.2f", r / t}') |"
  echo "  runs: tch ${rust[*]}; torch ${torch[*]}" >&2
done
