#!/usr/bin/env python3
"""tools/plot_results.py on what kvsim itself writes: a sweep of a small synthetic trace (csv and
JSON Lines, a decoding press included) and check-bounds reports (csv and json). Every figure must
exist and be a valid PNG or SVG showing the presses; bad input is one error line. Exit 77
(skipped) without matplotlib (pip install -r tools/requirements-plots.txt).

    python3 tests/test_plot_results.py path/to/kvsim
"""
import os
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

try:
    import matplotlib  # noqa: F401
except ImportError as e:
    print(f"skipped: {e} (pip install -r tools/requirements-plots.txt)")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT = os.path.join(ROOT, "tools", "plot_results.py")
PRESSES = ["knorm", "snapkv:window_size=8", "decoding(knorm):target_size=64,compression_interval=2"]


def run(*args):
    result = subprocess.run(list(args), capture_output=True, text=True)
    return result


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def check_png(path):
    with open(path, "rb") as f:
        data = f.read()
    check(data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: no PNG signature")
    check(data[12:16] == b"IHDR", f"{path}: no IHDR chunk first")
    width, height = struct.unpack(">II", data[16:24])
    check(width > 100 and height > 100, f"{path}: {width}x{height}")
    check(data.endswith(b"IEND\xaeB`\x82"), f"{path}: no IEND chunk at the end")


def check_svg(path, texts):
    root = ET.parse(path).getroot()  # raises on malformed XML
    check(root.tag == "{http://www.w3.org/2000/svg}svg", f"{path}: root element {root.tag}")
    with open(path, encoding="utf-8") as f:
        content = f.read()
    for text in texts:
        check(text in content, f"{path}: '{text}' not shown")


def main():
    kvsim = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "t.h5")
        made = run(kvsim, "synth-trace", "-o", trace, "--layers", "2", "--context", "96", "--question", "6", "--generated", "6",
                   "--heads", "4", "--kv-heads", "2", "--head-dim", "16")
        check(made.returncode == 0, made.stderr)
        table, jsonl = os.path.join(tmp, "sweep.csv"), os.path.join(tmp, "sweep.jsonl")
        for out in (table, jsonl):
            swept = run(kvsim, "sweep", "-q", trace, "--press", *PRESSES, "--ratio", "0.25", "0.5", "-o", out)
            check(swept.returncode == 0, swept.stderr)
        bounds_csv, bounds_json = os.path.join(tmp, "bounds.csv"), os.path.join(tmp, "bounds.json")
        for out, fmt in ((bounds_csv, "csv"), (bounds_json, "json")):
            checked = run(kvsim, "check-bounds", "-q", "--trace", trace, "--queries", "1", "--tokens-per-head", "4", "--format", fmt, "-o", out)
            check(checked.returncode == 0, checked.stderr)

        second = os.path.join(tmp, "t2.h5")  # kvsim rank over a two-trace suite
        made = run(kvsim, "synth-trace", "-o", second, "--seed", "3", "--layers", "2", "--context", "96", "--question", "6",
                   "--generated", "6", "--heads", "4", "--kv-heads", "2", "--head-dim", "16")
        check(made.returncode == 0, made.stderr)
        rank_csv, rank_json = os.path.join(tmp, "rank.csv"), os.path.join(tmp, "rank.json")
        for out, fmt in ((rank_csv, "csv"), (rank_json, "json")):
            ranked = run(kvsim, "rank", "-q", trace, second, "--press", "knorm", "snapkv:window_size=8", "--ratio", "0.25", "0.5",
                         "--resamples", "50", "--format", fmt, "-o", out)
            check(ranked.returncode == 0, ranked.stderr)

        names = ["perturbation", "heatmap-knorm", "decoding-steps", "bounds", "ranking"]
        png_dir = os.path.join(tmp, "png")
        plotted = run(sys.executable, PLOT, table, "--out-dir", png_dir, "--bounds", bounds_csv, "--ranking", rank_csv)
        check(plotted.returncode == 0, plotted.stderr)
        check(sorted(plotted.stdout.split()) == sorted(os.path.join(png_dir, n + ".png") for n in names), plotted.stdout)
        for name in names:
            check_png(os.path.join(png_dir, name + ".png"))

        svg_dir = os.path.join(tmp, "svg")
        plotted = run(sys.executable, PLOT, jsonl, "--out-dir", svg_dir, "--format", "svg", "--bounds", bounds_json, "--press", "snapkv:window_size=8",
                      "--ranking", rank_json)
        check(plotted.returncode == 0, plotted.stderr)
        check_svg(os.path.join(svg_dir, "perturbation.svg"), ["knorm", "snapkv:window_size=8", "decoding(knorm)", "compression ratio"])
        check_svg(os.path.join(svg_dir, "heatmap-snapkv_window_size_8.svg"), ["snapkv:window_size=8", "layer"])
        check_svg(os.path.join(svg_dir, "decoding-steps.svg"), ["decoding step"])
        check_svg(os.path.join(svg_dir, "bounds.svg"), ["pr_bound_w", "merge_no_worse", "layer 1"])
        check_svg(os.path.join(svg_dir, "ranking.svg"), ["ratio 0.25", "ratio 0.5", "knorm", "snapkv:window_size=8", "rel_err"])

        # A table cut mid-line (an interrupted sweep) still plots; without decoding presses the
        # step plot is skipped with a note.
        cut = os.path.join(tmp, "cut.csv")
        with open(table) as f:
            lines = f.read().splitlines(keepends=True)
        with open(cut, "w") as f:
            f.write("".join(l for l in lines if "decoding" not in l)[:-30])
        plotted = run(sys.executable, PLOT, cut, "--out-dir", os.path.join(tmp, "cut"))
        check(plotted.returncode == 0, plotted.stderr)
        check("no decoding steps" in plotted.stderr, plotted.stderr)
        check(not os.path.exists(os.path.join(tmp, "cut", "decoding-steps.png")), "a step plot without steps")

        # Bad input: one error line, exit status 1.
        for args, why in (([trace], "is not a kvsim sweep table"), ([os.path.join(tmp, "none.csv")], "cannot read"),
                          (["--bounds", table], "is not a kvsim check-bounds csv report"),
                          (["--ranking", table], "is not a kvsim rank csv report"),
                          ([table, "--press", "nosuch"], "no per-layer rel_err_mean rows with a ratio for press 'nosuch'")):
            bad = run(sys.executable, PLOT, *args, "--out-dir", os.path.join(tmp, "bad"))
            check(bad.returncode == 1, f"{args}: exit {bad.returncode}")
            check(bad.stderr.count("\n") == 1 and why in bad.stderr, f"{args}: {bad.stderr}")
    print("plot_results: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
