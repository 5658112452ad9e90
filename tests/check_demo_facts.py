#!/usr/bin/env python3
"""The qualitative facts of docs/measurements.md, checked on the demo sweep's results with
DuckDB (and the whole directory against the results contract by read_results.py first).

    check_demo_facts.py DIR
"""
import sys

import duckdb

d = sys.argv[1]
con = duckdb.connect()


def one(sql):
    return con.execute(sql.replace("DIR", d)).fetchall()


def check(cond, msg):
    if not cond:
        print(f"check_demo_facts: FAIL: {msg}", file=sys.stderr)
        sys.exit(1)


status = dict(((lr, bn, noise), s) for lr, bn, noise, s in one(
    "SELECT lr, bn, noise, status FROM 'DIR/trials.parquet'"))
acc = dict(((lr, bn, noise), a) for lr, bn, noise, a in one(
    "SELECT lr, bn, noise, final_test_acc FROM 'DIR/trials.parquet'"))
# Without BatchNorm the large learning rate diverges; with it, it trains.
check(status[(0.5, False, 0.0)] == "diverged", f"BN off at lr 0.5: {status[(0.5, False, 0.0)]}")
check(status[(0.5, True, 0.0)] == "completed", f"BN on at lr 0.5: {status[(0.5, True, 0.0)]}")
# At the small learning rate both train, BatchNorm further; noisy BatchNorm still trains.
check(acc[(0.05, True, 0.0)] > 0.8, f"BN at lr 0.05 ends at test accuracy {acc[(0.05, True, 0.0)]}")
check((acc[(0.05, True, 1.0)] or 0) > 0.3, f"noisy BN ends at test accuracy {acc[(0.05, True, 1.0)]}")
# BatchNorm makes the landscape smoother at the same learning rate. Medians over the measured
# steps: a single spike of the no-BN net (they come and go with the rounding of the kernels a
# machine picks) must not decide it. Seen: beta 17 vs 42, loss range 0.01 vs 2.
beta = dict(one("""SELECT bn, median(beta_smoothness) FROM read_parquet('DIR/landscape/*.parquet')
                   WHERE lr = 0.05 AND noise = 0 AND eta = 0.05 GROUP BY bn"""))
check(beta[True] < beta[False], f"beta-smoothness with BN {beta[True]:.2f}, without {beta[False]:.2f}")
rng = dict(one("""SELECT bn, median(loss_max - loss_min) FROM read_parquet('DIR/landscape/*.parquet')
                  WHERE lr = 0.05 AND noise = 0 AND eta = 0.05 GROUP BY bn"""))
check(rng[True] < rng[False], f"loss variation with BN {rng[True]:.3f}, without {rng[False]:.3f}")
print(f"check_demo_facts: OK: median beta {beta[True]:.1f} (BN) < {beta[False]:.1f} (no BN); loss "
      f"range {rng[True]:.3f} < {rng[False]:.3f}; BN off at lr 0.5 diverged")
