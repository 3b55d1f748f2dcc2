#!/usr/bin/env python3
"""Per trace of a RULER-style suite: the model's own greedy answer score (recorded in the trace,
with the full cache) next to each press's answer_rel_err and span_retention from kvsim replay,
and how the two relate across traces (Spearman's rho, and the metric's mean on the traces the
model answered correctly vs the others).

This says nothing about answer accuracy under compression: the traces hold one greedy run with
the full cache; the model was never re-run with a compressed cache.

    python answer_vs_perturbation.py --kvsim build-cpu/tools/kvsim traces/ruler-smollm2 \
        --press knorm snapkv ... --ratio 0.25 0.5 0.75 --per-trace per_trace.csv > summary.md
Needs h5py (the recorder's environment has it).
"""
import argparse
import csv
import glob
import io
import math
import os
import random
import subprocess
import sys

import h5py

METRICS = ("answer_rel_err_mean", "span_retention_mean")


def answer_of(path):
    with h5py.File(path, "r") as f:
        a = f.attrs
        task = a["task"].decode() if isinstance(a["task"], bytes) else str(a["task"])
        return task, float(a["answer_score"]), int(a["answer_correct"])


def replay(kvsim, path, presses, ratios):
    """Summary rows (layer=all, head=all) of kvsim replay, keyed by (press, ratio)."""
    out = subprocess.run([kvsim, "replay", "--trace", path, "--press", *presses, "--ratio", *ratios, "--format", "csv",
                          "--threads", "1", "-q"], check=True, capture_output=True, text=True).stdout
    rows = {}
    for r in csv.DictReader(io.StringIO(out)):
        if r["layer"] == "all" and r["head"] == "all":
            rows[(r["press"], float(r["ratio"]))] = {m: float(r[m]) if r[m] else math.nan for m in METRICS}
    return rows


def ranks(values):
    """Average ranks (1-based), ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def permutation_p(x, y, rho, permutations=10000):
    """Two-sided p-value of rho under random pairings of x and y (seeded: the same every run)."""
    if math.isnan(rho):
        return math.nan
    rng, shuffled, hits = random.Random(0), list(y), 0
    for _ in range(permutations):
        rng.shuffle(shuffled)
        hits += abs(spearman(x, shuffled)) >= abs(rho) - 1e-12
    return (hits + 1) / (permutations + 1)


def mean(values):
    return sum(values) / len(values) if values else math.nan


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="folder of *.h5 traces")
    p.add_argument("--kvsim", required=True)
    p.add_argument("--press", nargs="+", required=True)
    p.add_argument("--ratio", nargs="+", default=["0.25", "0.5", "0.75"])
    p.add_argument("--per-trace", required=True, help="CSV of every (trace, press, ratio) row")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.suite, "*.h5")))
    if not paths:
        print(f"answer_vs_perturbation.py: error: no *.h5 in {args.suite}", file=sys.stderr)
        return 1
    traces = []
    for path in paths:
        task, score, correct = answer_of(path)
        traces.append({"trace": os.path.basename(path), "task": task, "score": score, "correct": correct,
                       "metrics": replay(args.kvsim, path, args.press, args.ratio)})
    with open(args.per_trace, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["trace", "task", "answer_score", "answer_correct", "press", "ratio", *METRICS])
        for t in traces:
            for (press, ratio), m in t["metrics"].items():
                w.writerow([t["trace"], t["task"], f"{t['score']:g}", t["correct"], press, f"{ratio:g}", *(f"{m[k]:.6g}" for k in METRICS)])

    print("| trace | task | greedy answer score | correct |\n|---|---|---|---|")
    for t in traces:
        print(f"| {t['trace']} | {t['task']} | {t['score']:g} | {t['correct']} |")
    n_correct = sum(t["correct"] for t in traces)
    print(f"\n{len(traces)} traces, {n_correct} answered correctly (score 1) with the full cache.\n")
    scores = [t["score"] for t in traces]
    print("Spearman's rho between the greedy answer score and the press's metric across traces, its two-sided "
          "permutation p-value (10,000 seeded permutations, not corrected for the number of rows); the metric's mean "
          "on the correctly answered traces vs the others.\n")
    print("| press | ratio | metric | rho | p | mean, correct | mean, not correct |\n|---|---|---|---|---|---|---|")
    keys = [k for k in traces[0]["metrics"]]
    for press, ratio in keys:
        for metric in METRICS:
            values = [t["metrics"][(press, ratio)][metric] for t in traces]
            if any(math.isnan(v) for v in values):
                continue
            good = [v for v, t in zip(values, traces) if t["correct"]]
            bad = [v for v, t in zip(values, traces) if not t["correct"]]
            rho = spearman(scores, values)
            print(f"| {press} | {ratio:g} | {metric} | {rho:.2f} | {permutation_p(scores, values, rho):.3f} | {mean(good):.4g} | {mean(bad):.4g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
