#!/usr/bin/env python3
"""How two suites' `kvsim rank` results agree: per metric and ratio, Spearman's rho between the
presses' means in suite A and in suite B (over the presses both ranked), and the press each ranks
first. Reads the rank-<metric>.json files `make_results.sh` writes. Needs h5py (imports
answer_vs_perturbation.py's Spearman): run it in the recorder's environment.

    python compare_rankings.py bench/results/ruler-smollm2 bench/results/ruler-gemma3 > agreement.md
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ruler-smollm2"))
from answer_vs_perturbation import spearman  # noqa: E402  (one Spearman for both result scripts)

METRICS = ("answer_rel_err", "rel_err", "span_retention")


def means_by_ratio(folder, metric):
    with open(os.path.join(folder, f"rank-{metric}.json")) as f:
        ranking = json.load(f)
    return ranking["higher_is_better"], {r["ratio"]: {p["press"]: p["mean"] for p in r["presses"]} for r in ranking["ratios"]}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite_a", help="results folder holding rank-<metric>.json")
    p.add_argument("suite_b", help="the other results folder")
    args = p.parse_args(argv)
    name_a, name_b = os.path.basename(os.path.normpath(args.suite_a)), os.path.basename(os.path.normpath(args.suite_b))
    print(f"Spearman's rho between the press means of {name_a} and {name_b}, per metric and ratio "
          f"(rho 1: the same order); the press each ranks first.\n")
    print(f"| metric | ratio | presses | rho | first in {name_a} | first in {name_b} |\n|---|--:|--:|--:|---|---|")
    for metric in METRICS:
        higher_is_better, a = means_by_ratio(args.suite_a, metric)
        _, b = means_by_ratio(args.suite_b, metric)
        for ratio in sorted(set(a) & set(b)):
            presses = sorted(set(a[ratio]) & set(b[ratio]))
            rho = spearman([a[ratio][q] for q in presses], [b[ratio][q] for q in presses])
            best = max if higher_is_better else min
            first_a = best(presses, key=lambda q: a[ratio][q])
            first_b = best(presses, key=lambda q: b[ratio][q])
            print(f"| {metric} | {ratio:g} | {len(presses)} | {rho:.2f} | {first_a} | {first_b} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
