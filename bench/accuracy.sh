#!/usr/bin/env bash
# Final test accuracy of bnsweep next to PyTorch, over seeds: the same sweep trained by bnsweep
# (`bnsweep run`, init: pytorch) and by bench/accuracy_pytorch.py (torch.nn with its own
# initialisation, data order and noise), each from its own seeds. Prints a Markdown table: per
# configuration, each implementation's accuracies per seed and their mean ± sd, and how many runs
# diverged.
#
#   bench/accuracy.sh CIFAR_DIR [OUT]     # OUT: default results/bench-accuracy
#
# Environment: STEPS (1500), WIDTH (0.25), SEEDS ("0 1"), JOBS (parallel runs: the cores),
# TORCH_PYTHON (a python with torch 2.11; default: scripts/setup-torch.sh's).
# On 2 CPU cores the defaults take two hours or more.
set -euo pipefail
if [[ $# -lt 1 || ! -d "$1" ]]; then
  echo "usage: bench/accuracy.sh CIFAR_DIR [OUT]   (CIFAR-10's binary directory)" >&2
  exit 2
fi
cifar="$(cd "$1" && pwd)"
out="$(mkdir -p "${2:-results/bench-accuracy}" && cd "${2:-results/bench-accuracy}" && pwd)"
cd "$(dirname "$0")/.."
steps="${STEPS:-1500}"
width="${WIDTH:-0.25}"
seeds="${SEEDS:-0 1}"
parallel="${JOBS:-$(nproc)}"
python="${TORCH_PYTHON:-$(scripts/setup-torch.sh)}"
readers="$(scripts/setup-python.sh)"
source scripts/env.sh
cargo build --release --bins --quiet
mkdir -p "$out"
configs=("0.1 true 0" "0.5 true 0" "0.1 false 0" "0.5 false 0" "0.1 true 1")

# bnsweep: two sweeps (BN x lr, then noisy BN), `parallel` workers of one thread each. A trial
# diverges only on a non-finite loss, as in the PyTorch script.
seed_list="[$(echo "$seeds" | sed 's/ /, /g')]"
sweep() {  # NAME PARAMETERS
  cat > "$out/$1.yaml" <<EOF
name: $1
method: grid
seeds: $seed_list
parameters:
$2
train:
  model: {name: vgg8, width: $width, init: pytorch}
  dataset: {name: cifar10, path: $cifar, augment: false}
  batch_size: 128
  steps: $steps
  eval_every: $steps
  optimizer: {name: sgd, momentum: 0.0}
  divergence: {loss_above: .inf}
EOF
  echo "bench: bnsweep, $out/$1" >&2
  "${CARGO_TARGET_DIR:-target}/release/bnsweep" run "$out/$1.yaml" --out "$out/$1" --workers "$parallel" --threads 1 >&2
}
sweep plain $'  lr: [0.1, 0.5]\n  bn: [true, false]'
sweep noisy $'  lr: [0.1]\n  bn: [true]\n  noise: [1.0]'

# PyTorch: the same configurations, `parallel` at a time; every run must succeed.
echo "bench: PyTorch, $out/pytorch.jsonl" >&2
: > "$out/pytorch.jsonl"
pids=()
for cfg in "${configs[@]}"; do
  read -r lr bn noise <<< "$cfg"
  for seed in $seeds; do
    while (( $(jobs -rp | wc -l) >= parallel )); do sleep 1; done
    "$python" bench/accuracy_pytorch.py --cifar "$cifar" --lr "$lr" --bn "$bn" --noise "$noise" \
      --seed "$seed" --width "$width" --steps "$steps" >> "$out/pytorch.jsonl" &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "bench: a PyTorch run failed" >&2; exit 1; }
done

"$readers" - "$out" "${configs[@]}" <<'PY'
import json, statistics, sys
import pyarrow.parquet as pq
out, configs = sys.argv[1], [c.split() for c in sys.argv[2:]]
ours = [r for name in ("plain", "noisy")
        for r in pq.read_table(f"{out}/{name}/trials.parquet").to_pylist()]
theirs = [json.loads(l) for l in open(f"{out}/pytorch.jsonl")]
def cell(rows):
    rows = sorted(rows, key=lambda r: r["seed"])
    accs = [r["final_test_acc"] for r in rows if r["status"] == "completed"]
    each = ", ".join("diverged" if r["status"] != "completed" else f"{r['final_test_acc']:.3f}"
                     for r in rows)
    spread = ""
    if len(accs) >= 2:
        spread = f" ({statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f})"
    elif accs:
        spread = f" ({accs[0]:.3f})"
    return each + spread
print("| config | bnsweep (init: pytorch) | PyTorch 2.11 eager |")
print("|---|---|---|")
for lr, bn, noise in configs:
    key = lambda r: (r["lr"], r["bn"], r["noise"]) == (float(lr), bn == "true", float(noise))
    name = ("noisy BN" if float(noise) else "BN" if bn == "true" else "no BN") + f", lr {lr}"
    print(f"| {name} | {cell([r for r in ours if key(r)])} | {cell([r for r in theirs if key(r)])} |")
PY
