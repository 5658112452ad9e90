#!/usr/bin/env bash
# Load benchmark of the coordinator (issue: "Reliable at scale"): `bnsweep serve` against
# `bnsweep-worker simulate`, which plays hundreds of workers in one process (the real agent
# code, fake training that emits realistic rows at a set pace), on this one machine.
#
#   bench/load.sh [AGENTS] [TRIALS] [STEPS] [STEP_MS] [INSTANT_TRIALS]
#   SWEEPS=20 bench/load.sh [AGENTS] [TRIALS] [STEPS] [STEP_MS]     # many sweeps, one server
#
# Two runs:
#   rows:    AGENTS workers (500), TRIALS trials (2000) of STEPS steps (1000) at STEP_MS (4 ms)
#            a step: about AGENTS * 1000 / STEP_MS train rows per second into the coordinator.
#   instant: INSTANT_TRIALS trials (10000) of one step each, as fast as they go: the
#            coordinator's cost per trial, and the sweep's wall time against the ideal (zero);
#            skipped when INSTANT_TRIALS is 0.
# With SWEEPS=N (N > 0) instead, two runs of the same trials side by side:
#   one-sweep: `bnsweep serve` with one sweep of N x TRIALS trials;
#   server:    `bnsweep server` with N sweeps of TRIALS trials each, submitted before the
#              workers start (`simulate --exit-when-idle`), served by the same AGENTS.
# For each: workers held, rows written to Parquet per second of sweep (counted back with
# DuckDB), dispatch latency p50/p99 (poll asking for work -> trial started, from the
# simulator), the coordinator's CPU time and peak memory (GNU time), CPU per trial.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-500}
TRIALS=${2:-2000}
STEPS=${3:-1000}
STEP_MS=${4:-4}
INSTANT=${5:-10000}
source scripts/env.sh
cargo build --release --bins --quiet
BIN=${CARGO_TARGET_DIR:-target}/release # where cargo put the binaries
scripts/setup-python.sh >/dev/null
PY=${BNSWEEP_PYTHON:-$HOME/.cache/bnsweep/venv/bin/python}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sweep_file() { # PATH NAME TRIALS STEPS FIRST_SEED
  "$PY" - "$@" <<'PY'
import sys
path, name, trials, steps, first = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
seeds = ", ".join(str(first + i) for i in range(trials))
open(path, "w").write(f"name: {name}\nseeds: [{seeds}]\nparameters:\n  lr: [0.1]\n"
                      f"train:\n  steps: {steps}\n  eval_every: {max(1, steps // 4)}\n")
PY
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

one_run() { # NAME TRIALS STEPS STEP_MS
  local name=$1 trials=$2 steps=$3 step_ms=$4 dir=$work/$1
  mkdir -p "$dir"
  sweep_file "$dir/sweep.yaml" "$name" "$trials" "$steps" 0
  local port
  port=$(free_port)
  /usr/bin/time -o "$dir/serve.time" -f '{"coordinator_cpu_s": %U + %S, "coordinator_user_s": %U, "coordinator_sys_s": %S, "coordinator_peak_rss_mb": %M / 1024, "serve_wall_s": %e}' \
    "$BIN/bnsweep" serve "$dir/sweep.yaml" --listen "127.0.0.1:$port" --out "$dir/out" \
    >"$dir/serve.out" 2>"$dir/serve.err" &
  local serve=$!
  sleep 0.5
  BNSWEEP_LOG=warn "$BIN/bnsweep-worker" simulate --coordinator "http://127.0.0.1:$port" \
    --agents "$AGENTS" --step-ms "$step_ms" >"$dir/sim.json" 2>"$dir/sim.err" &
  local sim=$!
  # Sample how many workers the coordinator holds while the sweep runs.
  local held=0
  while kill -0 "$sim" 2>/dev/null; do
    n=$("$BIN/bnsweep" status --coordinator "http://127.0.0.1:$port" 2>/dev/null \
        | "$PY" -c 'import sys,re; m=re.search(r"\| (\d+) workers", sys.stdin.read()); print(m.group(1) if m else 0)' || true)
    if [ "${n:-0}" -gt "$held" ]; then held=$n; fi
    sleep 1
  done
  wait "$sim" || { echo "simulator failed:"; tail -5 "$dir/sim.err"; exit 1; }
  wait "$serve" || { echo "serve failed:"; tail -5 "$dir/serve.err"; exit 1; }
  analyse "$dir" "$dir/out" "$name" "$trials" "$steps" "$step_ms" "$held"
}

server_run() { # NAME SWEEPS TRIALS_PER_SWEEP STEPS STEP_MS
  local name=$1 sweeps=$2 per=$3 steps=$4 step_ms=$5 dir=$work/$1
  mkdir -p "$dir"
  local port url
  port=$(free_port)
  url="http://127.0.0.1:$port"
  /usr/bin/time -o "$dir/serve.time" -f '{"coordinator_cpu_s": %U + %S, "coordinator_user_s": %U, "coordinator_sys_s": %S, "coordinator_peak_rss_mb": %M / 1024, "serve_wall_s": %e}' \
    "$BIN/bnsweep" server --listen "127.0.0.1:$port" --data "$dir/data" \
    >"$dir/serve.out" 2>"$dir/serve.err" &
  local server=$!
  sleep 0.5
  for k in $(seq "$sweeps"); do
    sweep_file "$dir/s$k.yaml" "$name-$k" "$per" "$steps" $(( (k - 1) * per ))
    "$BIN/bnsweep" submit "$dir/s$k.yaml" --coordinator "$url" >>"$dir/submit.out"
  done
  BNSWEEP_LOG=warn "$BIN/bnsweep-worker" simulate --coordinator "$url" --exit-when-idle 2 \
    --agents "$AGENTS" --step-ms "$step_ms" >"$dir/sim.json" 2>"$dir/sim.err" &
  local sim=$!
  # Workers held: as each sweep of the server counts them (every worker polls every sweep).
  local held=0
  while kill -0 "$sim" 2>/dev/null; do
    n=$("$BIN/bnsweep" status --coordinator "$url" --sweep "$name-1" 2>/dev/null \
        | "$PY" -c 'import sys,re; m=re.search(r"\| (\d+) workers", sys.stdin.read()); print(m.group(1) if m else 0)' || true)
    if [ "${n:-0}" -gt "$held" ]; then held=$n; fi
    sleep 1
  done
  wait "$sim" || { echo "simulator failed:"; tail -5 "$dir/sim.err"; exit 1; }
  # Every sweep finished (its tables written), then the server is stopped.
  until "$BIN/bnsweep" list --coordinator "$url" | awk 'NR > 1 && $2 != "finished" {n++} END {exit n > 0}'; do
    sleep 0.5
  done
  pkill -INT -P "$server" bnsweep
  wait "$server" || true
  analyse "$dir" "$dir/data/*" "$name" "$((sweeps * per))" "$steps" "$step_ms" "$held"
}

analyse() { # DIR RESULTS_GLOB NAME TRIALS STEPS STEP_MS HELD
  "$PY" - "$@" "$AGENTS" <<'PY'
import json, sys, duckdb
d, out, name, trials, steps, step_ms, held, agents = sys.argv[1:]
trials, steps, agents, held = int(trials), int(steps), int(agents), int(held)
sim = json.loads(open(f"{d}/sim.json").read())
raw = open(f"{d}/serve.time").read().strip().splitlines()[-1]
# GNU time wrote the arithmetic literally ("0.5 + 0.1"): evaluate it.
import re
t = {k: eval(v) for k, v in re.findall(r'"(\w+)": ([0-9.+ /]+)', raw)}
con = duckdb.connect()
rows = con.execute(f"select count(*) from read_parquet('{out}/train/*.parquet')").fetchone()[0]
rows += con.execute(f"select count(*) from read_parquet('{out}/eval/*.parquet')").fetchone()[0]
first, last, done, workers = con.execute(
    f"select min(started_at), max(ended_at), count(*) filter (where status = 'completed'), "
    f"count(distinct worker) from read_parquet('{out}/trials.parquet')").fetchone()
window = (last - first).total_seconds()
ideal = trials * steps * float(step_ms) / 1000.0 / agents
out = {
    "run": name, "agents": agents, "trials": trials, "steps": steps, "step_ms": float(step_ms),
    "completed": done, "workers_held_max": held, "workers_with_trials": workers,
    "rows_in_parquet": rows, "sweep_s": round(window, 2), "ideal_s": round(ideal, 2),
    "rows_per_s": round(rows / window), "dispatch_p50_ms": sim["dispatch_p50_ms"],
    "dispatch_p99_ms": sim["dispatch_p99_ms"], "coordinator_cpu_s": round(t["coordinator_cpu_s"], 2),
    "coordinator_ms_per_trial": round(1000 * t["coordinator_cpu_s"] / trials, 3),
    "of_which_kernel_ms": round(1000 * t["coordinator_sys_s"] / trials, 3),
    "coordinator_peak_rss_mb": round(t["coordinator_peak_rss_mb"]),
}
assert done == trials, f"{done} of {trials} trials completed"
assert rows == trials * (steps + len(set(list(range(max(1, steps // 4), steps + 1, max(1, steps // 4))) + [steps]))), "rows lost or doubled"
print(json.dumps(out))
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if [ "${SWEEPS:-0}" -gt 0 ]; then
  one_run one-sweep "$((SWEEPS * TRIALS))" "$STEPS" "$STEP_MS"
  server_run server "$SWEEPS" "$TRIALS" "$STEPS" "$STEP_MS"
  exit 0
fi
one_run rows "$TRIALS" "$STEPS" "$STEP_MS"
if [ "$INSTANT" -gt 0 ]; then one_run instant "$INSTANT" 1 0; fi
