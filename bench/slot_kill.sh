#!/usr/bin/env bash
# What the CPU tests cannot show about slots on a GPU: `--slots auto` and `--mps auto` on the
# real machine (the worker's log says how many slots it took from the free memory, and whether
# the MPS daemon started and stopped), and a slot killed (SIGKILL) in the middle of a trial:
# that attempt fails, the trial runs again and completes, the worker carries on. Prints a
# Markdown summary.
#
#   bench/slot_kill.sh CIFAR_DIR --device cuda     # GPU: 4 trials of 3,000 steps, kill at 20 s
#   bench/slot_kill.sh CIFAR_DIR                   # CPU dry run: width 0.125, 300 steps, 10 s
#
# Environment: BNSWEEP (default target/release/bnsweep), WORKER (default: beside it), READER
# (a python with pyarrow; default python3), OUT (default a temporary directory).
set -euo pipefail
source "$(dirname "$0")/cifar_args.sh"
reader="${READER:-python3}"
out="${OUT:-$(mktemp -d)}"
if [[ "$device" == cpu ]]; then
  width=0.125 steps=300 kill_after=10
else
  width=1.0 steps=3000 kill_after=20
fi
mkdir -p "$out"
dir="$out/results"
rm -rf "$dir"
cat > "$out/slot_kill.yaml" <<EOF
name: slot-kill
seeds: [0, 1, 2, 3]
train:
  lr: 0.1
  model: {name: vgg8, width: $width}
  dataset: {name: cifar10, path: $cifar}
  steps: $steps
  eval_every: 1000
EOF
port=$((20000 + RANDOM % 20000))
"$bnsweep" serve "$out/slot_kill.yaml" --listen "127.0.0.1:$port" --out "$dir" --http off \
  > "$out/serve.out" 2> "$out/serve.log" &
serve=$!
"$worker" --coordinator "http://127.0.0.1:$port" --device "$device" --slots auto --mps auto \
  2> "$out/worker.log" &
work=$!
sleep "$kill_after"
victim=$(pgrep -f -n "bnsweep-worker slot" || true)
if [[ -n "$victim" ]]; then
  kill -KILL "$victim"
  echo "killed slot process $victim after ${kill_after} s" >&2
else
  echo "no slot process to kill after ${kill_after} s" >&2
fi
worker_status=0
wait "$work" || worker_status=$?
serve_status=0
wait "$serve" || serve_status=$?
echo "Slot killed mid-trial on $device: worker exit $worker_status, serve exit $serve_status, killed pid ${victim:-none}."
echo
echo "The worker's log on slots, MPS and the killed attempt:"
echo
grep -i -E "slot\(s\)|mps|memory|failed|gib" "$out/worker.log" | head -20 | sed -E 's/^/    /' || true
echo
"$reader" - "$dir" <<'EOF'
import os, sys
import pyarrow.parquet as pq
trials = pq.read_table(os.path.join(sys.argv[1], "trials.parquet")).to_pylist()
print("| seed | status | attempts | final test acc | device |")
print("|---|---|---|---|---|")
for t in sorted(trials, key=lambda t: t["seed"]):
    acc = "-" if t["final_test_acc"] is None else f"{100 * t['final_test_acc']:.2f} %"
    print(f"| {t['seed']} | {t['status']} | {t['attempts']} | {acc} | {t['device']} |")
EOF
