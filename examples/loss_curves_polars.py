#!/usr/bin/env python3
"""Training loss against step for every learning rate, BatchNorm on/off and noise level, seeds
averaged with their spread shaded: the report's "Training loss" figures, with polars.

    python examples/loss_curves_polars.py RESULTS_DIR [OUT.png]
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import polars as pl

d = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "loss_curves.png"

# Every train table at once; the parameters are columns of every row.
train = pl.read_parquet(f"{d}/train/*.parquet")
window = max(1, train["step"].max() // 50)
curves = (
    train.sort("step")
    .with_columns(pl.col("loss").rolling_mean(window, min_samples=1).over("trial_id").alias("smooth"))
    .group_by("lr", "bn", "noise", "step")
    .agg(pl.col("smooth").mean().alias("mean"), pl.col("smooth").min().alias("lo"), pl.col("smooth").max().alias("hi"))
    .sort("step")
)
lrs = sorted(curves["lr"].unique())
fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 3.6), squeeze=False)
for ax, lr in zip(axes[0], lrs):
    panel = curves.filter(pl.col("lr") == lr).sort("bn", "noise", "step")
    for (bn, noise), g in panel.group_by("bn", "noise", maintain_order=True):
        label = ("BN" if bn else "no BN") + (f" + noise {noise:g}" if noise > 0 else "")
        line, = ax.plot(g["step"], g["mean"], label=label, ls="--" if noise > 0 else "-")
        ax.fill_between(g["step"], g["lo"], g["hi"], color=line.get_color(), alpha=0.2)
    ax.set(title=f"Training loss, lr = {lr:g}", xlabel="training step", ylabel="cross-entropy (moving average)", ylim=(0, 4.6))
    ax.legend()
fig.tight_layout()
fig.savefig(out)
print(f"{out}: {curves.height} points from {train['trial_id'].n_unique()} trials")
