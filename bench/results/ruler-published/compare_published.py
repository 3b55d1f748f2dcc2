#!/usr/bin/env python3
"""How a suite's `kvsim rank` results agree with published end-task accuracy: Spearman's rho
between each press's mean metric and its published RULER-4k score, within each compression
ratio (the presses both have) and over every (press, ratio) cell, signed so that +1 means the
perturbation metric orders the cells as the accuracy does (less perturbation, higher score).
With 7 presses a ratio, one swap of neighbours moves rho by 0.07; the permutation p-value says
how often random orders do as well. Needs h5py (imports answer_vs_perturbation.py's Spearman):
run it in the recorder's environment.

    python compare_published.py kvpress_leaderboard_ruler4k.csv ../ruler-smollm2 ../ruler-gemma3 > agreement.md
"""
import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ruler-smollm2"))
from answer_vs_perturbation import permutation_p, spearman  # noqa: E402

METRICS = ("answer_rel_err", "rel_err", "span_retention")


def published_scores(path):
    with open(path, newline="") as f:
        return {(row["press"], float(row["ratio"])): float(row["score"]) for row in csv.DictReader(f)}


def suite_means(folder, metric):
    """{(press, ratio): mean}, with the sign that makes a higher value mean less perturbation."""
    with open(os.path.join(folder, f"rank-{metric}.json")) as f:
        ranking = json.load(f)
    sign = 1.0 if ranking["higher_is_better"] else -1.0
    return {(p["press"], float(r["ratio"])): sign * p["mean"] for r in ranking["ratios"] for p in r["presses"]}


def agreement(published, means, cells):
    x, y = [means[c] for c in cells], [published[c] for c in cells]
    rho = spearman(x, y)
    return rho, permutation_p(x, y, rho)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("published", help="CSV of press, ratio, score (published end-task accuracy)")
    p.add_argument("suites", nargs="+", help="results folders holding rank-<metric>.json")
    args = p.parse_args(argv)
    published = published_scores(args.published)
    print("Spearman's rho between each suite's press means (signed: + = less perturbation) and the published "
          "RULER-4k score; p: permutation p-value (10000 seeded shuffles).\n")
    print("| suite | metric | ratio | cells | rho | p |\n|---|---|--:|--:|--:|--:|")
    for folder in args.suites:
        name = os.path.basename(os.path.normpath(folder))
        for metric in METRICS:
            means = suite_means(folder, metric)
            shared = sorted(set(means) & set(published))
            for ratio in sorted({r for _, r in shared}):
                cells = [c for c in shared if c[1] == ratio]
                rho, pval = agreement(published, means, cells)
                print(f"| {name} | {metric} | {ratio:g} | {len(cells)} | {rho:.2f} | {pval:.3f} |")
            rho, pval = agreement(published, means, shared)
            print(f"| {name} | {metric} | all | {len(shared)} | {rho:.2f} | {pval:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
