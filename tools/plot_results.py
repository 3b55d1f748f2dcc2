#!/usr/bin/env python3
"""Plots from `kvsim sweep` tables and `kvsim check-bounds` reports (matplotlib only).

    python3 tools/plot_results.py sweep.csv --out-dir plots [--format png|svg]
        [--press snapkv] [--heatmap-metric rel_err_mean] [--bounds bounds.csv] [--ranking rank.csv]

Writes into --out-dir, per (trace, backend, query set) of the table (a suffix names it when
the table holds several):
  perturbation.FMT       rel_err mean, recall mean and o_proj rel_err mean against the
                         compression ratio, one line per press (the whole run), the band the
                         min-max over layers; presses that ignore the ratio are single points
                         at the ratio they achieved
  heatmap-PRESS.FMT      one press, --heatmap-metric per layer (rows) and ratio (columns)
  decoding-steps.FMT     rel_err mean per decoding step of the decoding presses, a marker where
                         the cache was compressed (only when the table has step rows)
  bounds.FMT             with --bounds (check-bounds --format csv or json): the violation rate
                         of each bound per group, with its 95% interval and the reference rate
                         (docs/merge_bounds.md §4)
  ranking.FMT            with --ranking (kvsim rank --format csv or json): per compression ratio,
                         each press's mean metric over the suite with its bootstrap interval,
                         best first
Requirements: tools/requirements-plots.txt.
"""
import argparse
import csv
import json
import math
import os
import re
import sys

COLUMNS = ["trace", "trace_crc32", "backend", "query_aware", "press", "ratio", "achieved_ratio", "layer", "step", "metric", "value"]
PERTURBATION_METRICS = [("rel_err_mean", "rel_err (mean)"), ("recall_mean", "recall (mean)"), ("oproj_rel_err_mean", "o_proj rel_err (mean)")]


class InputError(Exception):
    """A bad input file: reported as one line, exit status 1."""


def number(text):
    return float(text) if text not in ("", None) else math.nan


def read_text(path, what):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a {what} (not UTF-8 text)")


def read_sweep(path):
    """The rows of a kvsim sweep table (csv or JSON Lines) as dicts of text, a half-written last line ignored."""
    text = read_text(path, "kvsim sweep table")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # an interrupted sweep's last line
    lines = text.splitlines()
    if lines and lines[0].startswith("{"):
        rows = []
        for number_, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError:
                raise InputError(f"{path} line {number_}: not a kvsim sweep table row")
            if not isinstance(row, dict) or sorted(row) != sorted(COLUMNS):
                raise InputError(f"{path} line {number_}: not a kvsim sweep table row")
            rows.append({k: "" if v is None else ("true" if v is True else "false" if v is False else str(v)) for k, v in row.items()})
        return rows
    if not lines or lines[0].split(",") != COLUMNS:
        raise InputError(f"{path} is not a kvsim sweep table (its first line is not the header {','.join(COLUMNS)})")
    return list(csv.DictReader(lines))


def groups_of(rows):
    """Rows by run setting (trace, backend, query set), in table order."""
    groups = {}
    for row in rows:
        groups.setdefault((row["trace"], row["backend"], row["query_aware"]), []).append(row)
    return groups


def suffix_of(key, several):
    if not several:
        return ""
    trace, backend, query_aware = key
    stem = os.path.splitext(os.path.basename(trace))[0]
    return "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{backend}" + ("-query-aware" if query_aware == "true" else ""))


def file_name(stem, press=None):
    return stem + ("-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", press) if press else "")


def save(fig, out_dir, stem, fmt, written):
    path = os.path.join(out_dir, f"{stem}.{fmt}")
    fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else {"Software": None}, bbox_inches="tight")
    written.append(path)


def plot_perturbation(plt, rows, title, out_dir, stem, fmt, written):
    presses = list(dict.fromkeys(r["press"] for r in rows))
    metrics = [(m, label) for m, label in PERTURBATION_METRICS if any(r["metric"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, (metric, label) in zip(axes[0], metrics):
        for i, press in enumerate(presses):
            color = f"C{i % 10}"
            mine = [r for r in rows if r["press"] == press and r["metric"] == metric and r["step"] == ""]
            whole = sorted((number(r["ratio"]), number(r["achieved_ratio"]), number(r["value"])) for r in mine if r["layer"] == "all")
            if not whole:
                continue
            if math.isnan(whole[0][0]):  # the press ignores the ratio: one point where it landed
                ax.plot([whole[0][1]], [whole[0][2]], marker="D", linestyle="", color=color, label=f"{press} (ratio ignored)")
                continue
            ratios = [w[0] for w in whole]
            layers = {}
            for r in mine:
                if r["layer"] != "all":
                    layers.setdefault(number(r["ratio"]), []).append(number(r["value"]))
            ax.plot(ratios, [w[2] for w in whole], marker="o", color=color, label=press)
            if all(x in layers for x in ratios):
                ax.fill_between(ratios, [min(layers[x]) for x in ratios], [max(layers[x]) for x in ratios], color=color, alpha=0.15, linewidth=0)
        ax.set_xlabel("compression ratio")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}\nline: all layers pooled; band: min-max over layers", fontsize=9)
    save(fig, out_dir, stem, fmt, written)
    plt.close(fig)


def plot_heatmap(plt, rows, press, metric, title, out_dir, stem, fmt, written):
    cells = {}
    for r in rows:
        if r["press"] == press and r["metric"] == metric and r["layer"] != "all" and r["ratio"] != "":
            cells[(int(r["layer"]), number(r["ratio"]))] = number(r["value"])
    if not cells:
        raise InputError(f"no per-layer {metric} rows with a ratio for press '{press}' in the table")
    layers = sorted({l for l, _ in cells})
    ratios = sorted({x for _, x in cells})
    grid = [[cells.get((l, x), math.nan) for x in ratios] for l in layers]
    fig, ax = plt.subplots(figsize=(1.2 * len(ratios) + 2.5, 0.35 * len(layers) + 1.8))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(len(ratios)), [f"{x:g}" for x in ratios])
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("compression ratio")
    ax.set_ylabel("layer")
    finite = [v for row in grid for v in row if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):  # dark text on viridis' bright end
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color="black" if value > middle else "white")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{title}\n{press}: {metric} per layer", fontsize=9)
    save(fig, out_dir, stem, fmt, written)
    plt.close(fig)


def plot_steps(plt, rows, title, out_dir, stem, fmt, written):
    runs = {}
    for r in rows:
        if r["step"] != "" and r["metric"] in ("rel_err_mean", "compressed_after"):
            runs.setdefault((r["press"], r["ratio"]), {}).setdefault(r["metric"], {})[int(r["step"])] = number(r["value"])
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, ((press, ratio), series) in enumerate(runs.items()):
        steps = sorted(series.get("rel_err_mean", {}))
        errors = [series["rel_err_mean"][s] for s in steps]
        label = press + (f" @ {ratio}" if ratio else "")
        ax.plot(steps, errors, color=f"C{i % 10}", label=label, linewidth=1)
        compressed = [s for s in steps if series.get("compressed_after", {}).get(s) == 1]
        ax.plot(compressed, [series["rel_err_mean"][s] for s in compressed], linestyle="", marker="v", color=f"C{i % 10}", markersize=4)
    ax.set_xlabel("decoding step (0: the question)")
    ax.set_ylabel("rel_err (mean over layers, heads, queries)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{title}\nper decoding step; triangles: the cache was compressed after the step", fontsize=9)
    save(fig, out_dir, stem, fmt, written)
    plt.close(fig)
    return True


def read_bounds(path):
    """check-bounds --format csv or json: dicts with group, bound, rate, ci95_low, ci95_high, expected_rate."""
    text = read_text(path, "kvsim check-bounds report")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
            return [{"group": b["group"], "bound": b["bound"], "rate": b["rate"], "ci95_low": b["ci95"][0], "ci95_high": b["ci95"][1],
                     "expected_rate": b["expected_rate"]} for b in doc["bounds"]]
        except (ValueError, KeyError, TypeError, IndexError):
            raise InputError(f"{path} is not a kvsim check-bounds json report")
    rows = list(csv.DictReader(text.splitlines()))
    needed = {"group", "bound", "rate", "ci95_low", "ci95_high", "expected_rate"}
    if not rows or not needed <= set(rows[0]):
        raise InputError(f"{path} is not a kvsim check-bounds csv report (columns {', '.join(sorted(needed))})")
    return [{k: (r[k] if k in ("group", "bound") else (number(r[k]) if r[k] != "" else None)) for k in needed} for r in rows]


def plot_bounds(plt, bounds, source, out_dir, fmt, written):
    labels = [f"{b['group']}: {b['bound']}" for b in bounds]
    rates = [100 * b["rate"] for b in bounds]
    low = [max(0.0, 100 * (b["rate"] - b["ci95_low"])) for b in bounds]
    high = [max(0.0, 100 * (b["ci95_high"] - b["rate"])) for b in bounds]
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(bounds) + 1.5))
    y = list(range(len(bounds)))[::-1]
    colors = [f"C{sorted(set(b['bound'] for b in bounds)).index(b['bound']) % 10}" for b in bounds]
    ax.barh(y, rates, xerr=[low, high], color=colors, alpha=0.8, error_kw={"linewidth": 0.8})
    expected = [(yy, 100 * b["expected_rate"]) for yy, b in zip(y, bounds) if b["expected_rate"] is not None]
    if expected:
        ax.plot([e[1] for e in expected], [e[0] for e in expected], "k|", markersize=10, label="reference rate (docs/merge_bounds.md §4)")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("violation rate (%), 95% Wilson interval")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"kvsim check-bounds: {os.path.basename(source)}", fontsize=9)
    save(fig, out_dir, "bounds", fmt, written)
    plt.close(fig)


def read_ranking(path):
    """kvsim rank --format csv or json: (metric, [dicts with ratio, rank, press, mean, ci_low, ci_high])."""
    text = read_text(path, "kvsim rank report")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
            rows = [{"ratio": math.nan if g["ratio"] is None else float(g["ratio"]), "rank": int(p["rank"]), "press": p["press"],
                     "mean": float(p["mean"]), "ci_low": float(p["ci_low"]), "ci_high": float(p["ci_high"])}
                    for g in doc["ratios"] for p in g["presses"]]
            return doc["metric"], rows
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path} is not a kvsim rank json report")
    rows = list(csv.DictReader(text.splitlines()))
    needed = {"metric", "ratio", "rank", "press", "mean", "ci_low", "ci_high"}
    if not rows or not needed <= set(rows[0]):
        raise InputError(f"{path} is not a kvsim rank csv report (columns {', '.join(sorted(needed))})")
    try:
        return rows[0]["metric"], [{"ratio": number(r["ratio"]), "rank": int(r["rank"]), "press": r["press"], "mean": number(r["mean"]),
                                    "ci_low": number(r["ci_low"]), "ci_high": number(r["ci_high"])} for r in rows]
    except ValueError:
        raise InputError(f"{path}: a row of the kvsim rank csv report is not numeric")


def plot_ranking(plt, metric, rows, source, out_dir, fmt, written):
    """One panel per ratio: presses best first, the mean with its bootstrap interval."""
    ratios = sorted({r["ratio"] for r in rows}, key=lambda x: (math.isnan(x), x))
    presses = sorted({r["press"] for r in rows})
    fig, axes = plt.subplots(1, len(ratios), figsize=(3.2 * len(ratios) + 1, 0.3 * len(presses) + 1.6), squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        group = sorted((r for r in rows if r["ratio"] == ratio or (math.isnan(ratio) and math.isnan(r["ratio"]))), key=lambda r: r["rank"])
        y = list(range(len(group)))[::-1]
        ax.errorbar([r["mean"] for r in group], y, fmt="o", markersize=4,
                    xerr=[[max(0.0, r["mean"] - r["ci_low"]) for r in group], [max(0.0, r["ci_high"] - r["mean"]) for r in group]],
                    color="C0", ecolor="C0", elinewidth=1, capsize=2)
        ax.set_yticks(y, [f"{r['rank']}. {r['press']}" for r in group], fontsize=7)
        ax.set_title("no ratio" if math.isnan(ratio) else f"ratio {ratio:g}", fontsize=9)
        ax.set_xlabel(f"{metric} (mean, bootstrap CI)", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"kvsim rank: {os.path.basename(source)}", fontsize=9)
    save(fig, out_dir, "ranking", fmt, written)
    plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(description="Plot a kvsim sweep table (and a check-bounds report).")
    parser.add_argument("table", nargs="?", help="kvsim sweep output (csv or .jsonl)")
    parser.add_argument("--out-dir", default="plots", help="folder for the figures (created; default plots)")
    parser.add_argument("--format", choices=["png", "svg"], default="png")
    parser.add_argument("--press", help="press of the heat map (default: the first press with ratios)")
    parser.add_argument("--heatmap-metric", default="rel_err_mean", help="metric of the heat map (default rel_err_mean)")
    parser.add_argument("--bounds", help="kvsim check-bounds --format csv|json output to plot")
    parser.add_argument("--ranking", help="kvsim rank --format csv|json output to plot")
    args = parser.parse_args(argv)
    if not args.table and not args.bounds and not args.ranking:
        parser.error("give a sweep table, --bounds or --ranking")
    try:
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams["svg.hashsalt"] = "kvsim"  # the same SVG for the same data
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_results.py: error: matplotlib is missing (pip install -r tools/requirements-plots.txt)", file=sys.stderr)
        return 1
    try:
        rows = read_sweep(args.table) if args.table else []
        bounds = read_bounds(args.bounds) if args.bounds else []
        ranking = read_ranking(args.ranking) if args.ranking else None
        if args.table and not rows:
            raise InputError(f"{args.table} holds no rows yet")
        os.makedirs(args.out_dir, exist_ok=True)
        written = []
        groups = groups_of(rows)
        for key, group in groups.items():
            suffix = suffix_of(key, len(groups) > 1)
            title = f"{key[0]} ({key[1]}{', query-aware' if key[2] == 'true' else ''})"
            plot_perturbation(plt, group, title, args.out_dir, "perturbation" + suffix, args.format, written)
            with_ratio = [r["press"] for r in group if r["ratio"] != "" and r["layer"] != "all"]
            press = args.press or (with_ratio[0] if with_ratio else None)
            if press:
                plot_heatmap(plt, group, press, args.heatmap_metric, title, args.out_dir, file_name("heatmap", press) + suffix, args.format, written)
            if not plot_steps(plt, group, title, args.out_dir, "decoding-steps" + suffix, args.format, written):
                print(f"plot_results.py: note: no decoding steps for {title} (sweep a decoding press, e.g. 'decoding(knorm)', for that plot)",
                      file=sys.stderr)
        if bounds:
            plot_bounds(plt, bounds, args.bounds, args.out_dir, args.format, written)
        if ranking:
            plot_ranking(plt, ranking[0], ranking[1], args.ranking, args.out_dir, args.format, written)
    except InputError as e:
        print(f"plot_results.py: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
