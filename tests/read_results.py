#!/usr/bin/env python3
"""Checks a bnsweep results directory against the contract of docs/results.md, reading it
with pyarrow, pandas, polars and DuckDB. Exits non-zero, saying why, on the first problem.

    read_results.py DIR --trials N --steps S --eval-every E [--min-workers K]
                        [--failed-error TEXT] [--param NAME:TYPE ...]
"""
import argparse
import glob
import math
import os
import pathlib
import sys

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--trials", type=int, required=True)
p.add_argument("--steps", type=int, default=0)
p.add_argument("--eval-every", type=int, default=0)
p.add_argument("--min-workers", type=int, default=1)
p.add_argument("--failed-error", default=None, help="every trial failed, its error containing this")
p.add_argument("--param", action="append", default=[], help="extra swept column NAME:TYPE")
p.add_argument("--measure-every", type=int, default=0, help="measurements expected every N steps")
p.add_argument("--layers", type=int, default=11, help="layers with weights of the model")
p.add_argument("--etas", type=int, default=8)
p.add_argument("--act-layers", type=int, default=0)
p.add_argument("--bins", type=int, default=64)
p.add_argument("--same-losses-as", default=None, help="another results dir whose trials must have identical loss curves")
a = p.parse_args()
d = a.dir


def fail(msg):
    print(f"read_results: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


check(os.path.isfile(f"{d}/sweep.yaml"), "no sweep.yaml")
check(not glob.glob(f"{d}/**/*.tmp", recursive=True), "temporary files left behind")

# --- pyarrow: the trials table and its types
trials = pq.read_table(f"{d}/trials.parquet")
ts = pa.timestamp("us", tz="UTC")
want = {"trial_id": pa.string(), "lr": pa.float64(), "bn": pa.bool_(), "noise": pa.float64(),
        "seed": pa.int64(), "status": pa.string(), "attempts": pa.int64(), "worker": pa.string(),
        "device": pa.string(), "started_at": ts, "ended_at": ts, "final_test_acc": pa.float64(),
        "final_train_loss": pa.float64(), "error": pa.string()}
types = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}
for spec in a.param:
    name, t = spec.split(":")
    want[name] = types[t]
for name, t in want.items():
    check(name in trials.schema.names, f"trials.parquet has no column {name}")
    check(trials.schema.field(name).type == t, f"trials.{name} is {trials.schema.field(name).type}, want {t}")
check(trials.num_rows == a.trials, f"{trials.num_rows} trials, want {a.trials}")
meta = pq.ParquetFile(f"{d}/trials.parquet").metadata
# The contract (docs/results.md): ZSTD, or Snappy for tables under 4,096 rows.
want = "ZSTD" if meta.num_rows >= 4096 else "SNAPPY"
check(meta.row_group(0).column(0).compression == want, f"trials.parquet is not {want}-compressed")
for sub in ("train", "eval"):
    for f in sorted(pathlib.Path(d, sub).glob("*.parquet"))[:3]:
        m = pq.ParquetFile(f).metadata
        want = "ZSTD" if m.num_rows >= 4096 else "SNAPPY"
        if m.num_row_groups:
            check(m.row_group(0).column(0).compression == want, f"{f.name} is not {want}-compressed")
rows = trials.to_pylist()
check(len({r["trial_id"] for r in rows}) == a.trials, "trial ids are not unique")

if a.failed_error is not None:
    for r in rows:
        check(r["status"] == "failed", f"{r['trial_id']} is {r['status']}, want failed")
        check(a.failed_error in (r["error"] or ""), f"{r['trial_id']} error {r['error']!r} lacks {a.failed_error!r}")
        check(r["attempts"] == 1, f"{r['trial_id']} was attempted {r['attempts']} times; its failure is not retryable")
    print(f"read_results: OK: {a.trials} failed trials, errors name the cause")
    sys.exit(0)

workers = {r["worker"] for r in rows}
check(len(workers) >= a.min_workers, f"trials ran on {workers}, want at least {a.min_workers} workers")
for r in rows:
    tid = r["trial_id"]
    check(r["status"] in ("completed", "diverged"), f"{tid} is {r['status']}: {r['error']}")
    check(r["attempts"] >= 1 and r["device"] == "cpu", f"{tid}: attempts {r['attempts']}, device {r['device']}")
    check(r["started_at"] <= r["ended_at"], f"{tid} ended before it started")
    train = pq.read_table(f"{d}/train/{tid}.parquet")
    ev = pq.read_table(f"{d}/eval/{tid}.parquet")
    for col, t in [("step", pa.int64()), ("epoch", pa.int64()), ("loss", pa.float64()), ("acc", pa.float64()),
                   ("lr", pa.float64()), ("wall_s", pa.float64()), ("bn", pa.bool_()), ("noise", pa.float64()),
                   ("seed", pa.int64()), ("trial_id", pa.string())]:
        check(train.schema.field(col).type == t, f"train/{tid}: {col} is {train.schema.field(col).type}")
    for col, t in [("step", pa.int64()), ("test_loss", pa.float64()), ("test_acc", pa.float64()), ("lr", pa.float64())]:
        check(ev.schema.field(col).type == t, f"eval/{tid}: {col} is {ev.schema.field(col).type}")
    tr = train.to_pydict()
    steps = tr["step"]
    check(steps == list(range(1, len(steps) + 1)), f"train/{tid}: steps are not 1..n exactly once")
    check(set(tr["trial_id"]) == {tid} and set(tr["lr"]) == {r["lr"]} and set(tr["bn"]) == {r["bn"]}
          and set(tr["noise"]) == {r["noise"]} and set(tr["seed"]) == {r["seed"]},
          f"train/{tid}: key columns disagree with trials.parquet")
    check(all(b >= a_ for a_, b in zip(tr["wall_s"], tr["wall_s"][1:])), f"train/{tid}: wall_s goes backwards")
    check(all(0.0 <= x <= 1.0 for x in tr["acc"]), f"train/{tid}: accuracy outside [0, 1]")
    evsteps = ev.column("step").to_pylist()
    if r["status"] == "completed":
        check(len(steps) == a.steps, f"train/{tid}: {len(steps)} rows, want {a.steps}")
        check(all(math.isfinite(x) for x in tr["loss"]), f"train/{tid}: completed with a non-finite loss")
        want_eval = sorted(set(list(range(a.eval_every, a.steps + 1, a.eval_every)) + [a.steps]))
        check(evsteps == want_eval, f"eval/{tid}: steps {evsteps}, want {want_eval}")
        check(r["final_test_acc"] == ev.column("test_acc").to_pylist()[-1], f"{tid}: final_test_acc is not the last eval")
        tail = tr["loss"][-50:]
        check(abs(r["final_train_loss"] - sum(tail) / len(tail)) < 1e-9, f"{tid}: final_train_loss is not the mean of the last 50 losses")
    else:
        check(not math.isfinite(tr["loss"][-1]), f"train/{tid}: diverged but its last loss is finite")
        check(len(steps) <= a.steps, f"train/{tid}: too many rows")

# --- the measurement tables
if a.measure_every:
    measured_steps = {r["trial_id"]: [s for s in range(a.measure_every, a.steps + 1, a.measure_every)] for r in rows}
    for r in rows:
        tid = r["trial_id"]
        if r["status"] != "completed":
            continue
        steps = measured_steps[tid]
        lay = pq.read_table(f"{d}/layers/{tid}.parquet")
        for col in ["ics_l2", "ics_cos", "grad_norm", "weight_dist", "weight_dist_rel", "act_pre_mean", "act_post_q99"]:
            check(lay.schema.field(col).type == pa.float64(), f"layers/{tid}: {col} is {lay.schema.field(col).type}")
        check(lay.schema.field("bn").type == pa.bool_(), f"layers/{tid}: no typed bn column")
        ld = lay.to_pydict()
        check(lay.num_rows == len(steps) * a.layers, f"layers/{tid}: {lay.num_rows} rows, want {len(steps)} x {a.layers}")
        check(sorted(set(ld["step"])) == steps, f"layers/{tid}: steps {sorted(set(ld['step']))}, want {steps}")
        check(all(v >= 0 for v in ld["ics_l2"]) and all(v is None or -1.0001 <= v <= 1.0001 for v in ld["ics_cos"]), f"layers/{tid}: ICS out of range")
        check(all(v == 0 for v, l in zip(ld["ics_l2"], ld["layer"]) if l == 0), f"layers/{tid}: layer 0 ICS is not 0")
        with_act = [l for l, m in zip(ld["layer"], ld["act_pre_mean"]) if m is not None]
        check(len(set(with_act)) == a.act_layers, f"layers/{tid}: activation stats for layers {set(with_act)}")
        land = pq.read_table(f"{d}/landscape/{tid}.parquet").to_pydict()
        check(len(land["step"]) == len(steps) * a.etas, f"landscape/{tid}: {len(land['step'])} rows")
        for i in range(len(land["step"])):
            if land["nonfinite_probes"][i] > 0:
                # a probe that blew up: its step's summaries are NaN or infinite (measurements.md)
                check(not all(math.isfinite(land[c][i]) for c in ("loss_max", "gradpred_max", "beta_smoothness")),
                      f"landscape/{tid}: row {i} has non-finite probes but finite summaries")
                continue
            check(land["loss_min"][i] <= land["loss"][i] <= land["loss_max"][i] and land["beta"][i] <= land["beta_smoothness"][i],
                  f"landscape/{tid}: row {i} outside its step's summary")
        etas = sorted(set(land["eta"]))
        check(all(abs(e / r["lr"] - k * 0.5) < 1e-9 for k, e in zip(range(1, 9), etas)), f"landscape/{tid}: etas {etas} are not lr x 0.5 .. 4")
        act = pl.read_parquet(f"{d}/activations/{tid}.parquet")
        check(act.height == len(steps) * a.act_layers * 2 * (a.bins + 2), f"activations/{tid}: {act.height} rows")
        totals = act.group_by("step", "layer", "point").agg(pl.col("count").sum())
        per_layer = totals.group_by("layer").agg(pl.col("count").n_unique().alias("sizes"))
        check(per_layer.height == a.act_layers and per_layer["sizes"].max() == 1,
              f"activations/{tid}: histograms of one layer do not count the same elements: {per_layer}")

# --- pandas: trials open as a DataFrame with real dtypes
df = pd.read_parquet(f"{d}/trials.parquet")
check(str(df["bn"].dtype) == "bool" and str(df["lr"].dtype) == "float64", f"pandas dtypes: {df.dtypes.to_dict()}")

# --- polars: every training row in one read, ready to group by the swept parameters
train_all = pl.read_parquet(f"{d}/train/*.parquet")
check(train_all.schema["bn"] == pl.Boolean and train_all.schema["lr"] == pl.Float64, f"polars schema {train_all.schema}")
by = train_all.group_by(["lr", "bn", "noise"]).agg(pl.len().alias("rows"), pl.col("trial_id").n_unique().alias("trials"))
check(by["trials"].sum() == a.trials, f"polars sees {by['trials'].sum()} trials")

# --- DuckDB: the same, in SQL, joined with the trials table
con = duckdb.connect()
n_rows, n_trials = con.execute(f"SELECT count(*), count(DISTINCT trial_id) FROM read_parquet('{d}/train/*.parquet')").fetchone()
check(n_rows == train_all.height and n_trials == a.trials, f"DuckDB sees {n_rows} rows of {n_trials} trials")
joined = con.execute(f"""
    SELECT t.status, count(*) FROM read_parquet('{d}/eval/*.parquet') e
    JOIN read_parquet('{d}/trials.parquet') t USING (trial_id)
    GROUP BY ALL""").fetchall()
check(sum(c for _, c in joined) == pl.read_parquet(f"{d}/eval/*.parquet").height, f"eval join {joined}")
if a.same_losses_as:
    for r in rows:
        tid = r["trial_id"]
        mine = pq.read_table(f"{d}/train/{tid}.parquet").column("loss").to_pylist()
        theirs = pq.read_table(f"{a.same_losses_as}/train/{tid}.parquet").column("loss").to_pylist()
        same = len(mine) == len(theirs) and all(x == y or (x != x and y != y) for x, y in zip(mine, theirs))
        check(same, f"{tid}: loss curve differs from {a.same_losses_as}")
print(f"read_results: OK: {a.trials} trials, {n_rows} training rows, read with pyarrow, pandas, polars and DuckDB")
