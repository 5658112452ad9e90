#!/usr/bin/env bash
# The paper's protocol end to end through the real coordinator and workers (`bnsweep run`, one
# worker whose slots share the device, under MPS on a GPU): vgg8 on CIFAR-10, batch 128, plain
# SGD at a constant learning rate, PyTorch's initialisation, no augmentation, test accuracy
# every 500 steps, no measurements. The grid is sweeps/paper.yaml's at seed 0:
# lr {0.1, 0.5} x BN {on, off} x noise {0, 1}, 8 trials, all at once. Prints a Markdown table
# per trial (status, final and peak test accuracy) and the sweep's wall time, trials per hour
# and training img/s, then `bnsweep report --markdown` (findings and accuracy table).
#
#   bench/protocol.sh CIFAR_DIR --device cuda      # GPU: 15,000 steps, 8 slots
#   bench/protocol.sh CIFAR_DIR                    # CPU dry run: width 0.125, 50 steps, 2 slots
#
# Environment: STEPS, SLOTS, BNSWEEP (default target/release/bnsweep; the worker binary is
# found beside it), READER (a python with pyarrow; default python3), OUT (default a temporary
# directory; the results directory is OUT/results).
set -euo pipefail
source "$(dirname "$0")/cifar_args.sh"
reader="${READER:-python3}"
out="${OUT:-$(mktemp -d)}"
if [[ "$device" == cpu ]]; then
  width=0.125 steps="${STEPS:-50}" slots="${SLOTS:-2}" eval_every=25
else
  width=1.0 steps="${STEPS:-15000}" slots="${SLOTS:-8}" eval_every=500
fi
mkdir -p "$out"
dir="$out/results"
rm -rf "$dir"
cat > "$out/protocol.yaml" <<EOF
name: protocol
method: grid
seeds: [0]
parameters:
  lr: [0.1, 0.5]
  bn: [true, false]
  noise: [0.0, 1.0]
train:
  model: {name: vgg8, width: $width, init: pytorch}
  dataset: {name: cifar10, path: $cifar, augment: false}
  batch_size: 128
  steps: $steps
  optimizer: {name: sgd, momentum: 0.0, weight_decay: 0.0}
  eval_every: $eval_every
EOF
start=$(date +%s.%N)
status=0
"$bnsweep" run "$out/protocol.yaml" --out "$dir" --workers 1 --slots "$slots" --device "$device" \
  > "$out/run.log" 2>&1 || status=$?
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
echo "bnsweep run: exit $status, ${wall} s" >&2
tail -3 "$out/run.log" >&2
echo "vgg8 width $width, batch 128, SGD (no momentum, no weight decay), init: pytorch, no augmentation, $steps steps, test accuracy every $eval_every steps; 1 worker, $slots slots on $device."
{ grep -h -i "mps" "$dir"/logs/*.log 2>/dev/null || echo "no MPS line in the worker's log"; } | head -5 | sed -E 's/^/    /'
echo
"$reader" - "$dir" "$wall" "$device" <<'EOF'
import glob, os, sys
import pyarrow.compute as pc
import pyarrow.parquet as pq

root, wall, device = sys.argv[1], float(sys.argv[2]), sys.argv[3]
trials = pq.read_table(os.path.join(root, "trials.parquet")).to_pylist()
trials.sort(key=lambda t: (-t["bn"], t["noise"], t["lr"]))
paper = {(True, 0.0, 0.1): "about 83 %", (False, 0.0, 0.1): "about 80 %",
         (False, 0.0, 0.5): "does not train"}
print("| BN | noise | lr | status | steps | final test acc | peak test acc (step) "
      "| final train loss | trial wall (s) | paper (VGG-16) |")
print("|---|---|---|---|---|---|---|---|---|---|")
images = 0
fmt = lambda x: "-" if x is None else f"{x:.4f}"
for t in trials:
    steps, peak = 0, "-"
    train = os.path.join(root, "train", t["trial_id"] + ".parquet")
    if os.path.exists(train):
        steps = pq.read_metadata(train).num_rows
    evals = os.path.join(root, "eval", t["trial_id"] + ".parquet")
    if os.path.exists(evals):
        e = pq.read_table(evals, columns=["step", "test_acc"]).to_pylist()
        if e:
            best = max(e, key=lambda r: r["test_acc"])
            peak = f"{100 * best['test_acc']:.2f} % ({best['step']})"
    images += steps * 128
    final = t["final_test_acc"]
    final = "-" if final is None else f"{100 * final:.2f} %"
    took = "-"
    if t["started_at"] and t["ended_at"]:
        took = f"{(t['ended_at'] - t['started_at']).total_seconds():.0f}"
    print(f"| {'on' if t['bn'] else 'off'} | {t['noise']:g} | {t['lr']:g} | {t['status']} "
          f"| {steps} | {final} | {peak} | {fmt(t['final_train_loss'])} | {took} "
          f"| {paper.get((t['bn'], t['noise'], t['lr']), '-')} |")
ended = sum(t["status"] in ("completed", "diverged") for t in trials)
print()
print(f"{len(trials)} trials, {ended} completed or diverged, in {wall:.0f} s on {device}: "
      f"{ended * 3600 / wall:.1f} trials per hour, {images / wall:,.0f} training img/s "
      f"({images / wall * 0.92e9 / 1e12:.1f} TFLOP/s at 0.92 GFLOP/img). "
      "Wall time includes starting the processes, loading CIFAR-10 and every evaluation.")
EOF
echo
"$bnsweep" report "$dir" --markdown 2> "$out/report.log" || echo "report failed: $(tail -1 "$out/report.log")"
exit "$status"
