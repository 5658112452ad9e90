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
# Without BatchNorm the large learning rate diverges; with it, it trains.
check(status[(0.5, False, 0.0)] == "diverged", f"BN off at lr 0.5: {status[(0.5, False, 0.0)]}")
check(status[(0.5, True, 0.0)] == "completed", f"BN on at lr 0.5: {status[(0.5, True, 0.0)]}")
# Noisy BatchNorm still trains.
check(status[(0.05, True, 1.0)] == "completed", f"noisy BN at lr 0.05: {status[(0.05, True, 1.0)]}")
acc = dict(((bn, noise), a) for bn, noise, a in one(
    "SELECT bn, noise, final_test_acc FROM 'DIR/trials.parquet' WHERE lr = 0.05"))
check(acc[(True, 1.0)] > 0.3, f"noisy BN ends at test accuracy {acc[(True, 1.0)]}")
# BatchNorm makes the landscape smoother at the same learning rate.
beta = dict(one("""SELECT bn, avg(beta_smoothness) FROM read_parquet('DIR/landscape/*.parquet')
                   WHERE lr = 0.05 AND noise = 0 GROUP BY bn"""))
check(beta[True] < beta[False], f"beta-smoothness with BN {beta[True]:.2f}, without {beta[False]:.2f}")
rng = dict(one("""SELECT bn, avg(loss_max - loss_min) FROM read_parquet('DIR/landscape/*.parquet')
                  WHERE lr = 0.05 AND noise = 0 GROUP BY bn"""))
check(rng[True] < rng[False], f"loss variation with BN {rng[True]:.3f}, without {rng[False]:.3f}")
# BatchNorm nets stay closer to their initialisation.
dist = dict(one("""SELECT bn, avg(weight_dist_rel) FROM read_parquet('DIR/layers/*.parquet')
                   WHERE lr = 0.05 AND noise = 0 GROUP BY bn"""))
check(dist[True] < dist[False], f"relative weight distance with BN {dist[True]:.3f}, without {dist[False]:.3f}")
print(f"check_demo_facts: OK: beta {beta[True]:.1f} (BN) < {beta[False]:.1f} (no BN); loss range "
      f"{rng[True]:.3f} < {rng[False]:.3f}; weight distance {dist[True]:.3f} < {dist[False]:.3f}; "
      f"BN off at lr 0.5 diverged")
