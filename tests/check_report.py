#!/usr/bin/env python3
"""Checks `bnsweep report` output against the Parquet it was made from.

    check_report.py DIR [HTML]

The page must be self-contained (no scripts, no external references), hold the paper's figures
(each an inline SVG with a title, axis labels and a legend, and the same figure as an SVG file
beside the page), and its final-accuracy table must agree with trials.parquet (read with DuckDB).
"""
import math
import os
import sys
from html.parser import HTMLParser

import duckdb

d = sys.argv[1]
page = sys.argv[2] if len(sys.argv) > 2 else os.path.join(d, "report.html")


def check(cond, msg):
    if not cond:
        print(f"check_report: FAIL: {msg}", file=sys.stderr)
        sys.exit(1)


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.figures = {}  # id -> list of texts inside
        self.current = None
        self.rows = []
        self.row = None
        self.cell = None
        self.refs = []
        self.scripts = 0
        self.in_table = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            if k in a and tag not in ("svg",):
                self.refs.append(a[k])
        if tag == "figure":
            self.current = a.get("id")
            self.figures[self.current] = []
        if tag == "table" and a.get("id") == "accuracy":
            self.in_table = True
        if self.in_table and tag == "tr":
            self.row = []
        if self.in_table and tag == "td":
            self.cell = {"text": "", "mean": a.get("data-mean")}

    def handle_endtag(self, tag):
        if tag == "figure":
            self.current = None
        if tag == "table":
            self.in_table = False
        if self.in_table and tag == "td" and self.cell is not None:
            self.row.append(self.cell)
            self.cell = None
        if self.in_table and tag == "tr" and self.row:
            self.rows.append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.current is not None:
            self.figures[self.current].append(data.strip())
        if self.cell is not None:
            self.cell["text"] += data


p = Page()
p.feed(open(page, encoding="utf-8").read())
check(p.scripts == 0, "the page has scripts")
check(not p.refs, f"the page refers to other files: {p.refs[:3]}")

con = duckdb.connect()
trials = con.execute(f"SELECT lr, bn, noise, status, final_test_acc FROM '{d}/trials.parquet'").fetchall()
measured = os.path.isdir(os.path.join(d, "layers"))
lrs = sorted({t[0] for t in trials})
want = []
for lr in lrs:
    panel = f"lr-{lr:g}"
    want += [f"loss-{panel}", f"acc-{panel}", f"test-acc-{panel}"]
    if measured:
        want += [f"beta-{panel}", f"loss-min-{panel}", f"gradpred-min-{panel}"]
for w in want:
    check(w in p.figures, f"no figure {w}; figures: {sorted(p.figures)}")
if measured:
    check(any(k.startswith("ics-l2-") for k in p.figures), "no ICS figure")
    check(any(k.startswith("activations-") for k in p.figures), "no activation ridge plot")
figdir = os.path.splitext(page)[0] + "_figures"
for fid, texts in p.figures.items():
    check(os.path.isfile(os.path.join(figdir, fid + ".svg")), f"{fid}.svg not beside the page")
    check("no data yet" not in texts, f"figure {fid} is empty")
    if not fid.startswith("activations-"):
        check("training step" in texts, f"figure {fid} has no x-axis label")
        check(any(t in texts for t in ("BN", "no BN")), f"figure {fid} has no legend")

# The table: one row per (lr, bn, noise); mean final test accuracy over completed seeds.
def label(bn, noise):
    n = f" + noise {noise:g}" if noise > 0 else ""
    return ("BN" if bn else "no BN") + n

groups = {}
for lr, bn, noise, status, acc in trials:
    groups.setdefault((f"lr = {lr:g}", label(bn, noise)), []).append((status, acc))
check(len(p.rows) == len(groups), f"{len(p.rows)} table rows, want {len(groups)}")
for row in p.rows:
    key = (row[0]["text"], row[1]["text"])
    check(key in groups, f"table row {key} matches no trials")
    g = groups[key]
    accs = [a for s, a in g if s == "completed" and a is not None]
    diverged = sum(s == "diverged" for s, _ in g)
    check(row[4]["text"].strip() == str(diverged), f"{key}: diverged {row[4]['text']}, want {diverged}")
    if accs:
        mean = sum(accs) / len(accs)
        check(row[2]["mean"] and math.isclose(float(row[2]["mean"]), mean, abs_tol=1e-6),
              f"{key}: mean {row[2]['mean']}, want {mean}")
    else:
        check(row[2]["text"].strip() == "—", f"{key}: {row[2]['text']} for no completed seed")
print(f"check_report: {len(p.figures)} figures and {len(p.rows)} table rows agree with {d}")
