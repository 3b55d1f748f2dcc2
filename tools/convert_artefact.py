#!/usr/bin/env python3
"""Convert a press's published artefact into kvsim's artefact format (traces/ARTEFACTS.md).

    python3 tools/convert_artefact.py qfilter --safetensors model.safetensors --out qfilters.h5
    python3 tools/convert_artefact.py duo_attention --tsv full_attention_heads.tsv --config config.json --out duo.h5
    python3 tools/convert_artefact.py expected_attention_stats --safetensors model.safetensors --out stats.h5
    python3 tools/convert_artefact.py lukv --npy curve.npy --out lukv.h5
    python3 tools/convert_artefact.py kvzap --config config.json --safetensors model.safetensors --out kvzap.h5
    python3 tools/convert_artefact.py fastkvzip --pt q4_dim16_sink16.pt --out fastkvzip.h5
    python3 tools/convert_artefact.py headkv --json Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json --out headkv.h5
    python3 tools/convert_artefact.py minference --json Llama_3.1_8B_Instruct_128k_kv_out_v32_fit_o_best_pattern.json --out minference.h5

qfilter: the `q_filters` tensor [layers, kv_heads, head_dim] of a Q-filters checkpoint
(the Hugging Face repositories nthngdy/<model>_qfilt that kvpress's QFilterPress loads).
duo_attention: DuoAttention's attention pattern (mit-han-lab/duo-attention, attn_patterns/<model>/...):
full_attention_heads.tsv (layers x kv_heads, tab-separated) and config.json (sink_size, recent_size).
expected_attention_stats: the `query_mean` [layers, heads, head_dim] and `query_cov`
[layers, heads, head_dim, head_dim] of an ExpectedAttentionStats checkpoint (the Hugging Face
repositories alessiodevoto/exp_att_stats_<model>_... that kvpress's ExpectedAttentionStatsPress loads).
lukv: an LU-KV budget curve .npy [99, layers, kv_heads] (baidu-baige/LU-KV
evaluation/curve_data/<model>/..., as kvpress's LUKVPress downloads it).
kvzap: a KVzap surrogate (the Hugging Face repositories nvidia/KVzap-mlp-<model> and
nvidia/KVzap-linear-<model> that kvpress's KVzapPress loads): config.json (input_dim,
output_dim, hidden_dim, null for linear, n_modules) and model.safetensors (KVzapModel's
layers.{i}.0.weight/.0.bias/.2.weight/.2.bias for mlp, layers.{i}.weight/.bias for linear;
float32, float16 or bfloat16, read without the safetensors package).
fastkvzip: Fast KVzip's gates (Jang-Hyun/Fast-KVzip <model>/q<ngroup>_dim16_sink16.pt, as
kvpress's FastKVzipPress loads them): needs torch, imported only for this converter.
headkv: HeadKV's head scores as KVCache-Factory ships them (data/heads_score/<model>_
retrieval_reasoning_heads.json: {"layer-head": [scores, ...], ...}) -> head_scores [layers,
heads], each the mean of its list (run_longbench.py's np.mean), placed by its key.
minference: MInference's per-head pattern config (microsoft/MInference minference/configs/*.json:
a list over layers of {"head": [type, vertical_size, slash_size, score]}) -> pattern, vertical_size,
slash_size [layers, heads], pattern 0 = vertical_and_slash, 1 = stream_llm, 2 = block_sparse; a
head missing from a layer gets MInference's default ("vertical_and_slash", 1000, 6096); heads =
1 + the largest head index, or --num-heads.
Needs numpy and h5py, and safetensors for qfilter and expected_attention_stats
(tools/requirements-artefacts.txt). Writes the output atomically: a failed conversion leaves
no file behind.
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


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:
        fail(f"{path}: cannot read JSON ({e})")


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
    config = read_json(args.config)
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


SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path):
    """Every tensor of a .safetensors file as float32 (bfloat16 too, which numpy lacks): the
    format is an 8-byte little-endian header length, a JSON header of dtype, shape and
    data_offsets per tensor, then the data."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= 100_000_000:
                raise ValueError(f"header length {length}")
            header = json.loads(f.read(length))
            data = f.read()
    except (OSError, ValueError) as e:
        fail(f"{path}: not a safetensors file ({e})")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype")
        if dtype not in SAFETENSORS_DTYPES:
            fail(f"{path}: tensor '{name}' has dtype {dtype} (expected F32, F16, BF16 or F64)")
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=SAFETENSORS_DTYPES[dtype])
        if array.size != int(np.prod(entry["shape"], dtype=np.int64)):
            fail(f"{path}: tensor '{name}' holds {array.size} values for shape {entry['shape']}")
        if dtype == "BF16":  # the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.astype(np.float32).reshape(entry["shape"])
    return tensors


def kvzap(args):
    config = read_json(args.config)
    for key in ("input_dim", "output_dim", "n_modules"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            fail(f"{args.config}: '{key}' must be a positive integer")
    hidden = config.get("hidden_dim")
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        fail(f"{args.config}: 'hidden_dim' must be a positive integer, or null for a linear model")
    D, H, L = config["input_dim"], config["output_dim"], config["n_modules"]
    tensors = read_safetensors(args.safetensors)
    # KVzapModel: an nn.ModuleList of nn.Linear (linear), or of nn.Sequential(Linear, GELU, Linear) (mlp).
    if hidden is None:
        parts = {"weight": ("layers.{}.weight", (H, D)), "bias": ("layers.{}.bias", (H,))}
    else:
        parts = {"weight1": ("layers.{}.0.weight", (hidden, D)), "bias1": ("layers.{}.0.bias", (hidden,)),
                 "weight2": ("layers.{}.2.weight", (H, hidden)), "bias2": ("layers.{}.2.bias", (H,))}
    datasets = {}
    for dataset, (key, shape) in parts.items():
        layers = []
        for i in range(L):
            name = key.format(i)
            if name not in tensors:
                fail(f"{args.safetensors}: no tensor '{name}' (config.json: n_modules = {L}, hidden_dim = {hidden})")
            if tensors[name].shape != shape:
                fail(f"{args.safetensors}: '{name}' has shape {list(tensors[name].shape)}, expected {list(shape)} from config.json")
            layers.append(tensors[name])
        datasets[dataset] = finite(dataset, np.stack(layers))
    write(args.out, datasets, {})


def fastkvzip(args):
    try:
        import torch
    except ImportError:
        fail("fastkvzip needs torch to read the .pt gates (pip install torch); the other converters do not")
    try:
        # As kvpress's get_gate_weight: weights only, allowing the few numpy types the checkpoint pickles.
        core = np._core if hasattr(np, "_core") else np.core
        numpy_types = [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                       np.dtypes.Float64DType, np.dtypes.Float32DType]
        with torch.serialization.safe_globals(numpy_types):
            checkpoint = torch.load(args.pt, weights_only=True, map_location="cpu")
        module = checkpoint["module"]
    except Exception as e:
        fail(f"{args.pt}: cannot read Fast KVzip gates ({type(e).__name__}: {e})")
    if not isinstance(module, (list, tuple)) or not module:
        fail(f"{args.pt}: ['module'] must be a non-empty list of per-layer state dicts")
    keys = ("q_proj.weight", "q_proj.bias", "k_proj.weight", "q_norm.weight", "k_norm.weight", "k_base", "b")
    arrays = {}
    for i, state in enumerate(module):
        for key in keys:
            if key not in state:
                fail(f"{args.pt}: layer {i} has no '{key}'")
            arrays.setdefault(key, []).append(state[key].detach().float().cpu().numpy())
    first = {key: arrays[key][0].shape for key in keys}
    for key in keys:
        for i, a in enumerate(arrays[key]):
            if a.shape != first[key]:
                fail(f"{args.pt}: layer {i} '{key}' has shape {list(a.shape)}, layer 0 {list(first[key])}")
    qo, D = first["q_proj.weight"]
    o = first["q_norm.weight"][0]
    ko = first["k_proj.weight"][0]
    nhead, G = ko // o, qo // ko
    if (len(first["k_base"]) != 4 or first["k_base"][0] != nhead or first["k_base"][1] != 1 or first["k_base"][3] != o
            or first["b"] != (nhead, 1, G) or first["q_proj.bias"] != (qo,) or first["k_norm.weight"] != (o,)
            or first["k_proj.weight"] != (ko, D) or ko % o or qo % ko):
        fail(f"{args.pt}: gate shapes do not fit FastKVzipGate: " + ", ".join(f"{k} {list(v)}" for k, v in first.items()))
    names = {"q_proj.weight": "q_proj_weight", "q_proj.bias": "q_proj_bias", "k_proj.weight": "k_proj_weight",
             "q_norm.weight": "q_norm_weight", "k_norm.weight": "k_norm_weight", "k_base": "k_base", "b": "b"}
    datasets = {names[key]: np.stack(arrays[key]) for key in keys}
    datasets["k_base"] = datasets["k_base"][:, :, 0]  # [L, nhead, 1, sink, o] -> [L, nhead, sink, o]
    datasets["b"] = datasets["b"][:, :, 0]            # [L, nhead, 1, G] -> [L, nhead, G]
    write(args.out, {name: finite(name, array) for name, array in datasets.items()}, {})


def headkv(args):
    table = read_json(args.json)
    if not isinstance(table, dict) or not table:
        fail(f"{args.json}: expected an object of \"layer-head\": [scores] entries")
    means = {}
    for key, scores in table.items():
        parts = key.split("-")
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            fail(f"{args.json}: key '{key}' is not 'layer-head'")
        if not isinstance(scores, list) or not scores or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
            fail(f"{args.json}: '{key}' must be a non-empty list of numbers")
        means[(int(parts[0]), int(parts[1]))] = float(np.mean(np.asarray(scores, dtype=np.float64)))
    layers, heads = 1 + max(l for l, _ in means), 1 + max(h for _, h in means)
    missing = [f"{l}-{h}" for l in range(layers) for h in range(heads) if (l, h) not in means]
    if missing:
        fail(f"{args.json}: no scores for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (every layer-head of [{layers}, {heads}] is needed)")
    layer_major = [(l, h) for l in range(layers) for h in range(heads)]
    if list(means) != layer_major:  # run_longbench.py reshapes the lists in file order
        print(f"convert_artefact: note: {args.json} is not in layer-major order; KVCache-Factory would assign its scores "
              "in file order, the table here follows the keys", file=sys.stderr)
    scores = np.array([[means[(l, h)] for h in range(heads)] for l in range(layers)])
    if (scores < 0).any():
        fail(f"{args.json}: head scores must not be negative")
    write(args.out, {"head_scores": finite("head_scores", scores)}, {})


MINFERENCE_PATTERNS = {"vertical_and_slash": 0, "stream_llm": 1, "block_sparse": 2}


def minference(args):
    config = read_json(args.json)
    if not isinstance(config, list) or not config or not all(isinstance(layer, dict) for layer in config):
        fail(f"{args.json}: expected a list over layers of {{\"head\": [type, vertical_size, slash_size, score]}} objects")
    heads = args.num_heads
    for l, layer in enumerate(config):
        for key, entry in layer.items():
            if not key.isdigit():
                fail(f"{args.json}: layer {l}: head key '{key}' is not a head index")
            if not isinstance(entry, list) or len(entry) < 3 or entry[0] not in MINFERENCE_PATTERNS or \
                    not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 10**8 for x in entry[1:3]):
                fail(f"{args.json}: layer {l} head {key}: expected [type, vertical_size, slash_size, ...] with type one of "
                     f"{', '.join(MINFERENCE_PATTERNS)} and sizes integers in [0, 1e8]")
            if args.num_heads is not None and int(key) >= args.num_heads:
                fail(f"{args.json}: layer {l} has head {key}, beyond --num-heads {args.num_heads}")
            heads = max(heads or 0, int(key) + 1)
    if not heads:
        fail(f"{args.json}: no head entries (give --num-heads to fill every head with MInference's default)")
    table = np.zeros((3, len(config), heads))
    for l, layer in enumerate(config):
        for h in range(heads):
            kind, vertical, slash = layer.get(str(h), ["vertical_and_slash", 1000, 6096])[:3]  # minference_prefill_kernel's default
            table[:, l, h] = MINFERENCE_PATTERNS[kind], vertical, slash
    write(args.out, {"pattern": table[0], "vertical_size": table[1], "slash_size": table[2]}, {})


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
    z = sub.add_parser("kvzap", help="KVzap config.json + model.safetensors -> weight, bias [L, ...] (linear) or weight1, bias1, weight2, bias2 (mlp)")
    z.add_argument("--config", required=True)
    z.add_argument("--safetensors", required=True)
    z.add_argument("--out", required=True)
    f = sub.add_parser("fastkvzip", help="Fast KVzip gates .pt (needs torch) -> q_proj_weight, q_proj_bias, k_proj_weight, ... [L, ...]")
    f.add_argument("--pt", required=True)
    f.add_argument("--out", required=True)
    k = sub.add_parser("headkv", help="KVCache-Factory's retrieval_reasoning_heads.json -> head_scores [L, H]")
    k.add_argument("--json", required=True)
    k.add_argument("--out", required=True)
    m = sub.add_parser("minference", help="MInference's best-pattern config .json -> pattern, vertical_size, slash_size [L, H]")
    m.add_argument("--json", required=True)
    m.add_argument("--num-heads", type=int, default=None, help="query heads per layer (default: 1 + the largest head index)")
    m.add_argument("--out", required=True)
    args = p.parse_args()
    {"qfilter": qfilter, "duo_attention": duo_attention, "expected_attention_stats": expected_attention_stats, "lukv": lukv,
     "kvzap": kvzap, "fastkvzip": fastkvzip, "headkv": headkv, "minference": minference}[args.press](args)


if __name__ == "__main__":
    main()
