#!/usr/bin/env python3
"""Convert a press's published artefact into kvsim's artefact format (traces/ARTEFACTS.md).

    python3 tools/convert_artefact.py qfilter --safetensors model.safetensors --out qfilters.h5
    python3 tools/convert_artefact.py duo_attention --tsv full_attention_heads.tsv --config config.json --out duo.h5

qfilter: the `q_filters` tensor [layers, kv_heads, head_dim] of a Q-filters checkpoint
(the Hugging Face repositories nthngdy/<model>_qfilt that kvpress's QFilterPress loads).
duo_attention: DuoAttention's attention pattern (mit-han-lab/duo-attention, attn_patterns/<model>/...):
full_attention_heads.tsv (layers x kv_heads, tab-separated) and config.json (sink_size, recent_size).
Needs numpy, h5py and safetensors (tools/requirements-artefacts.txt). Writes the output
atomically: a failed conversion leaves no file behind.
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np


def fail(message):
    print(f"convert_artefact: {message}", file=sys.stderr)
    sys.exit(1)


def write(out, datasets, attributes):
    partial = out + ".partial"
    try:
        with h5py.File(partial, "w") as f:
            for name, array in datasets.items():
                f.create_dataset(name, data=np.asarray(array, dtype=np.float32))
            for name, value in attributes.items():
                f.attrs[name] = float(value)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def finite(name, array):
    if not np.all(np.isfinite(array)):
        fail(f"{name} holds NaN or infinity")
    return array


def qfilter(args):
    from safetensors.numpy import load_file

    try:
        tensors = load_file(args.safetensors)
    except Exception as e:  # safetensors raises several types for damaged files
        fail(f"{args.safetensors}: cannot read ({e})")
    if "q_filters" not in tensors:
        fail(f"{args.safetensors}: no tensor 'q_filters' (found: {', '.join(sorted(tensors)) or 'none'})")
    filters = tensors["q_filters"].astype(np.float32)
    if filters.ndim != 3:
        fail(f"{args.safetensors}: 'q_filters' has shape {filters.shape}, expected [layers, kv_heads, head_dim]")
    write(args.out, {"q_filters": finite("q_filters", filters)}, {})


def duo_attention(args):
    try:
        scores = np.loadtxt(args.tsv, dtype=np.float64, delimiter="\t", ndmin=2)
    except Exception as e:
        fail(f"{args.tsv}: cannot read a tab-separated table of numbers ({e})")
    try:
        with open(args.config) as f:
            config = json.load(f)
    except Exception as e:
        fail(f"{args.config}: cannot read JSON ({e})")
    for key in ("sink_size", "recent_size"):
        if not isinstance(config.get(key), int) or config[key] < 0:
            fail(f"{args.config}: '{key}' must be a non-negative integer")
    write(args.out, {"head_scores": finite("head_scores", scores)}, {k: config[k] for k in ("sink_size", "recent_size")})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="press", required=True)
    q = sub.add_parser("qfilter", help="Q-filters safetensors -> q_filters [L, Hkv, d]")
    q.add_argument("--safetensors", required=True)
    q.add_argument("--out", required=True)
    d = sub.add_parser("duo_attention", help="DuoAttention pattern -> head_scores [L, Hkv] + sink_size, recent_size")
    d.add_argument("--tsv", required=True)
    d.add_argument("--config", required=True)
    d.add_argument("--out", required=True)
    args = p.parse_args()
    {"qfilter": qfilter, "duo_attention": duo_attention}[args.press](args)


if __name__ == "__main__":
    main()
