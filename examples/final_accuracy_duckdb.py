#!/usr/bin/env python3
"""Final test accuracy (mean and sd over seeds) for every learning rate, BatchNorm on/off and
noise level, diverged trials counted apart: the report's table, and a bar chart of it, with
DuckDB straight on the Parquet files.

    python examples/final_accuracy_duckdb.py RESULTS_DIR [OUT.png]
"""
import sys

import duckdb
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

d = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "final_accuracy.png"

rows = duckdb.sql(f"""
    SELECT lr, bn, noise,
           avg(final_test_acc) FILTER (WHERE status = 'completed')         AS mean_acc,
           stddev_samp(final_test_acc) FILTER (WHERE status = 'completed') AS sd_acc,
           count(*) FILTER (WHERE status = 'diverged')                     AS diverged,
           count(*)                                                        AS seeds
    FROM '{d}/trials.parquet'
    GROUP BY ALL ORDER BY lr, bn, noise
""").fetchall()
print(f"{'lr':>6} {'BN':>5} {'noise':>5} {'test acc':>16} {'diverged':>9}")
for lr, bn, noise, mean, sd, diverged, seeds in rows:
    acc = "-" if mean is None else f"{mean:.4f}" + ("" if sd is None else f" ± {sd:.4f}")
    print(f"{lr:>6g} {str(bn):>5} {noise:>5g} {acc:>16} {diverged:>4} of {seeds}")

labels = [f"lr {lr:g}\n{'BN' if bn else 'no BN'}{f' +noise {noise:g}' if noise else ''}" for lr, bn, noise, *_ in rows]
means = [r[3] or 0.0 for r in rows]
errs = [r[4] or 0.0 for r in rows]
fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 3.8))
bars = ax.bar(range(len(rows)), means, yerr=errs, capsize=3)
for b, r in zip(bars, rows):
    if r[5]:
        ax.text(b.get_x() + b.get_width() / 2, 0.02, f"{r[5]} diverged", rotation=90, ha="center", va="bottom", color="#b00")
ax.set_xticks(range(len(rows)), labels, fontsize=8)
ax.set(ylabel="final test accuracy", ylim=(0, 1), title="Final test accuracy (mean ± sd over seeds)")
fig.tight_layout()
fig.savefig(out)
print(f"{out}: {len(rows)} configurations")
