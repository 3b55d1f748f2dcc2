#!/usr/bin/env python3
"""Convert a press's published artefact into kvsim's artefact format (traces/ARTEFACTS.md).

    python3 tools/convert_artefact.py qfilter --safetensors model.safetensors --out qfilters.h5
    python3 tools/convert_artefact.py duo_attention --tsv full_attention_heads.tsv --config config.json --out duo.h5
    python3 tools/convert_artefact.py expected_attention_stats --safetensors model.safetensors --out stats.h5
    python3 tools/convert_artefact.py lukv --npy curve.npy --out lukv.h5

qfilter: the `q_filters` tensor [layers, kv_heads, head_dim] of a Q-filters checkpoint
(the Hugging Face repositories nthngdy/<model>_qfilt that kvpress's QFilterPress loads).
duo_attention: DuoAttention's attention pattern (mit-han-lab/duo-attention, attn_patterns/<model>/...):
full_attention_heads.tsv (layers x kv_heads, tab-separated) and config.json (sink_size, recent_size).
expected_attention_stats: the `query_mean` [layers, heads, head_dim] and `query_cov`
[layers, heads, head_dim, head_dim] of an ExpectedAttentionStats checkpoint (the Hugging Face
repositories alessiodevoto/exp_att_stats_<model>_... that kvpress's ExpectedAttentionStatsPress loads).
lukv: an LU-KV budget curve .npy [99, layers, kv_heads] (baidu-baige/LU-KV
evaluation/curve_data/<model>/..., as kvpress's LUKVPress downloads it).
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


def load_safetensors(path):
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises several types for damaged files
        fail(f"{path}: cannot read ({e})")


def expected_attention_stats(args):
    tensors = load_safetensors(args.safetensors)
    for name in ("query_mean", "query_cov"):
        if name not in tensors:
            fail(f"{args.safetensors}: no tensor '{name}' (found: {', '.join(sorted(tensors)) or 'none'})")
    mean = tensors["query_mean"].astype(np.float32)
    cov = tensors["query_cov"].astype(np.float32)
    if mean.ndim != 3:
        fail(f"{args.safetensors}: 'query_mean' has shape {mean.shape}, expected [layers, heads, head_dim]")
    if cov.shape != mean.shape + mean.shape[-1:]:
        fail(f"{args.safetensors}: 'query_cov' has shape {cov.shape}, expected {mean.shape + mean.shape[-1:]}")
    write(args.out, {"query_mean": finite("query_mean", mean), "query_cov": finite("query_cov", cov)}, {})


def lukv(args):
    try:
        curves = np.load(args.npy, allow_pickle=False)
    except Exception as e:
        fail(f"{args.npy}: cannot read a .npy array ({e})")
    if curves.ndim != 3 or curves.shape[0] != 99:
        fail(f"{args.npy}: budget curve has shape {curves.shape}, expected [99, layers, kv_heads]")
    write(args.out, {"budget_curves": finite("budget_curves", curves.astype(np.float32))}, {})


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
    e = sub.add_parser("expected_attention_stats", help="query statistics safetensors -> query_mean [L, H, d], query_cov [L, H, d, d]")
    e.add_argument("--safetensors", required=True)
    e.add_argument("--out", required=True)
    u = sub.add_parser("lukv", help="LU-KV budget curve .npy -> budget_curves [99, L, Hkv]")
    u.add_argument("--npy", required=True)
    u.add_argument("--out", required=True)
    args = p.parse_args()
    {"qfilter": qfilter, "duo_attention": duo_attention, "expected_attention_stats": expected_attention_stats, "lukv": lukv}[args.press](args)


if __name__ == "__main__":
    main()
