#!/usr/bin/env python3
"""tools/convert_artefact.py on files made here in the published layouts, then kvsim itself
replaying the bundled trace with the converted artefacts (kvzap: a synthetic trace with hidden
states). Exit 77 (skipped) without numpy/h5py; the qfilter part also needs safetensors and the
fastkvzip part torch, and each says so when its package is missing (with KVSIM_REQUIRE_TORCH set,
a missing torch skips the whole run: ctest's convert_artefact_torch, in the recorder's environment).

    python3 tests/test_convert_artefact.py path/to/kvsim
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import h5py
    import numpy as np
except ImportError as e:
    print(f"skipped: {e} (pip install -r tools/requirements-artefacts.txt)")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(ROOT, "tools", "convert_artefact.py")
LAYERS, HEADS, KV_HEADS, HEAD_DIM = 30, 9, 3, 64  # the bundled SmolLM2-135M trace


def convert(*args):
    return subprocess.run([sys.executable, CONVERT, *args], capture_output=True, text=True)


def replay(kvsim, spec, trace=None):
    out = subprocess.run([kvsim, "replay", "-q", "--press", spec, "--ratio", "0.5", "--format", "json"] + (["--trace", trace] if trace else []),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["runs"][0]


def save_safetensors(path, tensors, bf16=()):
    """The safetensors layout written by hand (8-byte header length, JSON header, data), so the
    test needs no safetensors package and can store bfloat16 (the names in `bf16`)."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        if name in bf16:  # round to nearest even, keep the upper 16 bits
            bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
            blob = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")).tobytes()
            dtype = "BF16"
        else:
            blob, dtype = np.ascontiguousarray(array, dtype="<f4").tobytes(), "F32"
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def bf16(array):
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32)).view(np.float32)


def check_kvzap(kvsim, tmp, rng):
    """KVzapModel's state dict (kvpress kvzap_press.py: a ModuleList of nn.Linear, or of
    nn.Sequential(Linear, GELU, Linear)) for a synthetic SmolLM2-shaped model with hidden states."""
    trace = os.path.join(tmp, "hidden.h5")  # 30 layers, 3 KV heads, hidden size 9 x 64 = 576; layers 0 and 1 recorded
    out = subprocess.run([kvsim, "synth-trace", "--with-hidden-states", "-o", trace, "--layers", "2", "--context", "128",
                          "--question", "8", "--generated", "8"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    D, H, L, hidden = 576, KV_HEADS, LAYERS, 16
    config, st, out = (os.path.join(tmp, name) for name in ("config.json", "model.safetensors", "kvzap.h5"))
    # mlp, weights in bfloat16 (the first layer's) and float32.
    mlp = {}
    for i in range(L):
        mlp[f"layers.{i}.0.weight"] = rng.standard_normal((hidden, D)).astype(np.float32) / 24
        mlp[f"layers.{i}.0.bias"] = rng.standard_normal(hidden).astype(np.float32)
        mlp[f"layers.{i}.2.weight"] = rng.standard_normal((H, hidden)).astype(np.float32) / 4
        mlp[f"layers.{i}.2.bias"] = rng.standard_normal(H).astype(np.float32)
    save_safetensors(st, mlp, bf16=[f"layers.{i}.0.weight" for i in range(L)])
    with open(config, "w") as f:
        json.dump({"model_type": "kvzap", "input_dim": D, "output_dim": H, "hidden_dim": hidden, "n_modules": L}, f)
    result = convert("kvzap", "--config", config, "--safetensors", st, "--out", out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        assert sorted(f) == ["bias1", "bias2", "weight1", "weight2"], list(f)
        assert np.array_equal(f["weight1"][7], bf16(mlp["layers.7.0.weight"]))
        assert np.array_equal(f["bias1"][7], mlp["layers.7.0.bias"]) and np.array_equal(f["weight2"][29], mlp["layers.29.2.weight"])
        assert np.array_equal(f["bias2"][0], mlp["layers.0.2.bias"]) and f["weight1"].shape == (L, hidden, D)
    run = replay(kvsim, f"kvzap:artefact={out}", trace)
    assert abs(run["achieved_ratio"] - 0.5) < 1e-9 and run["rel_err"]["mean"] > 0, run
    # A key missing from a module, and a module of the wrong shape: refused, no output.
    del mlp["layers.3.2.bias"]
    save_safetensors(st, mlp)
    result = convert("kvzap", "--config", config, "--safetensors", st, "--out", out + "2")
    assert result.returncode != 0 and "no tensor 'layers.3.2.bias'" in result.stderr and not os.path.exists(out + "2"), result.stderr

    # linear (hidden_dim null): zero weights and biases -1, 1, -1 in layer 0, +1 in layer 1, so
    # dms(kvzap):threshold=0 drops, in layer 0 only, the 128 - 32 tokens of KV heads 0 and 2
    # that leave the 32-token window: kept fractions 1/4, 1, 1/4 and 1, 1, 1 -> achieved 1/4.
    linear = {}
    for i in range(L):
        linear[f"layers.{i}.weight"] = np.zeros((H, D), np.float32)
        linear[f"layers.{i}.bias"] = np.array([-1, 1, -1] if i == 0 else [1, 1, 1], np.float32)
    save_safetensors(st, linear)
    with open(config, "w") as f:
        json.dump({"input_dim": D, "output_dim": H, "hidden_dim": None, "n_modules": L}, f)
    result = convert("kvzap", "--config", config, "--safetensors", st, "--out", out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        assert sorted(f) == ["bias", "weight"] and f["weight"].shape == (L, H, D) and list(f["bias"][0]) == [-1, 1, -1]
    run = replay(kvsim, f"dms(kvzap:artefact={out}):threshold=0,sliding_window_size=32", trace)
    assert abs(run["achieved_ratio"] - 0.25) < 1e-9, run
    with open(config, "w") as f:
        json.dump({"input_dim": D, "output_dim": H + 1, "hidden_dim": None, "n_modules": L}, f)
    result = convert("kvzap", "--config", config, "--safetensors", st, "--out", out + "3")
    assert result.returncode != 0 and "'layers.0.weight' has shape [3, 576], expected [4, 576]" in result.stderr, result.stderr
    print("kvzap: mlp (bfloat16 and float32) and linear converted and replayed")


def check_fastkvzip(kvsim, tmp, rng):
    """Fast KVzip's .pt (kvpress fastkvzip_press.py: torch.load(...)["module"], one FastKVzipGate
    state dict per layer), for the bundled SmolLM2 shape: 3 KV heads, 3 groups, o = 16, 16 base keys."""
    try:
        import torch
    except ImportError:
        if os.environ.get("KVSIM_REQUIRE_TORCH"):  # this run is for the .pt path: without torch it is skipped, visibly
            print("skipped: torch is not installed (scripts/setup_recorder.sh makes .venv-recorder, which has it)")
            sys.exit(77)
        print("fastkvzip part not run: torch is not installed (the converter imports it only for .pt gates)")
        return
    trace = os.path.join(tmp, "hidden.h5")  # written by check_kvzap
    D, H, G, o, sink = 576, KV_HEADS, HEADS // KV_HEADS, 16, 16
    module = [{"q_proj.weight": torch.randn(H * G * o, D) / 24, "q_proj.bias": torch.randn(H * G * o), "k_proj.weight": torch.randn(H * o, D) / 24,
               "q_norm.weight": 1 + 0.1 * torch.randn(o), "k_norm.weight": 1 + 0.1 * torch.randn(o),
               "k_base": torch.randn(H, 1, sink, o), "b": torch.randn(H, 1, G)} for _ in range(LAYERS)]
    pt, out = os.path.join(tmp, "q3_dim16_sink16.pt"), os.path.join(tmp, "fastkvzip.h5")
    torch.save({"module": module}, pt)
    result = convert("fastkvzip", "--pt", pt, "--out", out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        assert f["k_base"].shape == (LAYERS, H, sink, o) and f["b"].shape == (LAYERS, H, G)
        assert np.array_equal(f["q_proj_weight"][5], module[5]["q_proj.weight"].numpy())
        assert np.array_equal(f["k_base"][2], module[2]["k_base"][:, 0].numpy())
    run = replay(kvsim, f"fastkvzip:layerwise=true,artefact={out}", trace)
    assert abs(run["achieved_ratio"] - 0.5) < 1e-9 and run["rel_err"]["mean"] > 0, run
    del module[4]["k_base"]
    torch.save({"module": module}, pt)
    result = convert("fastkvzip", "--pt", pt, "--out", out + "2")
    assert result.returncode != 0 and "layer 4 has no 'k_base'" in result.stderr and not os.path.exists(out + "2"), result.stderr
    print("fastkvzip: converted and replayed")


def check_headkv(kvsim, tmp, rng):
    """KVCache-Factory's data/heads_score/<model>_retrieval_reasoning_heads.json ({"layer-head":
    [scores]}, layer-major, one line) for the bundled SmolLM2 shape: 30 layers x 9 query heads."""
    table = {f"{l}-{h}": [float(x) for x in rng.uniform(0, 1, size=1 + (l + h) % 4)] for l in range(LAYERS) for h in range(HEADS)}
    path, out = os.path.join(tmp, "heads.json"), os.path.join(tmp, "headkv.h5")
    with open(path, "w") as f:
        f.write(json.dumps(table))
    result = convert("headkv", "--json", path, "--out", out)
    assert result.returncode == 0 and "note" not in result.stderr, result.stderr
    means = np.array([[np.mean(table[f"{l}-{h}"]) for h in range(HEADS)] for l in range(LAYERS)])
    with h5py.File(out) as f:
        assert f["head_scores"].shape == (LAYERS, HEADS) and np.array_equal(f["head_scores"][...], means.astype(np.float32))
    run = replay(kvsim, f"headkv:artefact={out}")
    # run_longbench.py's table with B = M = round(1853 x 0.5) = 926 (half to even), head_beta
    # 1.01: 926 // 1.01 = 916 pooled, base 10; KV-head caps the rounded float32 means of their 3
    # query heads'; each keeps min(cap, 1845) earlier tokens and the window of 8, in layers 0, 14, 29.
    share = means.astype(np.float32).astype(np.float64)
    share /= share.sum()
    caps = np.round(share * (926 // 1.01) * LAYERS * HEADS + (926 - 926 // 1.01))
    kv_caps = np.round(caps.astype(np.float32).reshape(LAYERS, KV_HEADS, HEADS // KV_HEADS).mean(axis=-1, dtype=np.float32))
    kept = np.minimum(kv_caps[[0, 14, 29]], 1845) + 8
    expected = 1 - kept.mean() / 1853
    assert abs(run["achieved_ratio"] - expected) < 1e-9, (run["achieved_ratio"], expected)
    # A head missing from the table: refused, no output.
    del table["7-3"]
    with open(path, "w") as f:
        f.write(json.dumps(table))
    result = convert("headkv", "--json", path, "--out", out + "2")
    assert result.returncode != 0 and "no scores for 7-3" in result.stderr and not os.path.exists(out + "2"), result.stderr
    print("headkv: converted and replayed")


def check_minference(kvsim, tmp, rng):
    """MInference's configs/<model>_best_pattern.json (a list over layers of {"head": [type,
    vertical_size, slash_size, score]}) for the bundled SmolLM2 shape: 30 layers x 9 query heads."""
    kinds = ["vertical_and_slash", "stream_llm", "block_sparse"]
    config = [{str(h): [kinds[(l + h) % 3], int(rng.integers(0, 4000)), int(rng.integers(0, 7000)), float(rng.uniform())]
               for h in range(HEADS)} for l in range(LAYERS)]
    del config[5]["4"]  # a head missing from its layer: MInference's default
    path, out = os.path.join(tmp, "pattern.json"), os.path.join(tmp, "minference.h5")
    with open(path, "w") as f:
        json.dump(config, f)
    result = convert("minference", "--json", path, "--out", out)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        for name, column in (("pattern", 0), ("vertical_size", 1), ("slash_size", 2)):
            def entry(l, h):
                kind, vertical, slash = config[l].get(str(h), ["vertical_and_slash", 1000, 6096])[:3]
                return (kinds.index(kind), vertical, slash)[column]
            expected = [[entry(l, h) for h in range(HEADS)] for l in range(LAYERS)]
            assert f[name].shape == (LAYERS, HEADS) and np.array_equal(f[name][...], np.array(expected, dtype=np.float32)), name
    run = replay(kvsim, f"minference:artefact={out},query_stride=16")
    assert run["measured_on"] == "segment queries" and 0 < run["achieved_ratio"] < 1, run
    # Every head stream_llm (4, 64): query p of the 1853-token context attends to min(p + 1, 68) keys.
    config = [{str(h): ["stream_llm", 4, 64, 1.0] for h in range(HEADS)} for _ in range(LAYERS)]
    with open(path, "w") as f:
        json.dump(config, f)
    assert convert("minference", "--json", path, "--out", out).returncode == 0
    run = replay(kvsim, f"minference:artefact={out},query_stride=16")
    queries = range(1852, -1, -16)
    expected = 1 - np.mean([min(p + 1, 68) / (p + 1) for p in queries])
    assert abs(run["achieved_ratio"] - expected) < 1e-9, (run["achieved_ratio"], expected)
    # An unknown pattern type: refused, no output.
    config[3]["2"] = ["dilated1", 30, 800, 1.0]
    with open(path, "w") as f:
        json.dump(config, f)
    result = convert("minference", "--json", path, "--out", out + "2")
    assert result.returncode != 0 and "layer 3 head 2" in result.stderr and not os.path.exists(out + "2"), result.stderr
    print("minference: converted and replayed")


def main():
    kvsim = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        check_kvzap(kvsim, tmp, np.random.default_rng(1))
        check_fastkvzip(kvsim, tmp, np.random.default_rng(2))
        check_headkv(kvsim, tmp, np.random.default_rng(3))
        check_minference(kvsim, tmp, np.random.default_rng(4))
        # duo_attention: a tab-separated [layers, kv_heads] table and config.json.
        rng = np.random.default_rng(0)
        scores = rng.uniform(-0.1, 1.1, size=(LAYERS, KV_HEADS))
        tsv, config, out = (os.path.join(tmp, name) for name in ("full_attention_heads.tsv", "config.json", "duo.h5"))
        np.savetxt(tsv, scores, delimiter="\t")
        with open(config, "w") as f:
            json.dump({"sink_size": 16, "recent_size": 256}, f)
        result = convert("duo_attention", "--tsv", tsv, "--config", config, "--out", out)
        assert result.returncode == 0, result.stderr
        with h5py.File(out) as f:
            assert np.allclose(f["head_scores"][...], scores.astype(np.float32))
            assert f.attrs["sink_size"] == 16 and f.attrs["recent_size"] == 256
        run = replay(kvsim, f"duo_attention:artefact={out},head_compression_ratio=0.5")
        # The 45 lowest of the 90 clipped scores stream (ties: the higher flat index first) and
        # keep sink + recent of the 1853 context tokens; the trace records layers 0, 14, 29.
        clipped = np.clip(scores, 0, 1).ravel()
        order = sorted(range(clipped.size), key=lambda i: -clipped[i])  # stable
        streaming = np.zeros(clipped.size, bool)
        streaming[order[clipped.size - 45:]] = True
        recorded = streaming.reshape(LAYERS, KV_HEADS)[[0, 14, 29]]
        expected = recorded.mean() * (1 - (16 + 256) / 1853)
        assert abs(run["achieved_ratio"] - expected) < 1e-9, (run["achieved_ratio"], expected)
        # A bad config leaves no output file.
        with open(config, "w") as f:
            json.dump({"sink_size": -1, "recent_size": 256}, f)
        bad = os.path.join(tmp, "bad.h5")
        result = convert("duo_attention", "--tsv", tsv, "--config", config, "--out", bad)
        assert result.returncode != 0 and "sink_size" in result.stderr and not os.path.exists(bad), result.stderr
        print("duo_attention: converted and replayed")

        # lukv: a budget curve .npy [99, layers, kv_heads]; row 49 (ratio 0.5) prunes a quarter
        # of every head but the context's sink and window.
        curves = np.full((99, LAYERS, KV_HEADS), 0.9, np.float32)
        curves[49] = 0.25
        npy, out = os.path.join(tmp, "curve.npy"), os.path.join(tmp, "lukv.h5")
        np.save(npy, curves)
        result = convert("lukv", "--npy", npy, "--out", out)
        assert result.returncode == 0, result.stderr
        with h5py.File(out) as f:
            assert np.array_equal(f["budget_curves"][...], curves)
        run = replay(kvsim, f"lukv(knorm):artefact={out}")
        assert abs(run["achieved_ratio"] - 0.25) < 1e-3, run
        np.save(npy, curves[:98])
        result = convert("lukv", "--npy", npy, "--out", out + "2")
        assert result.returncode != 0 and "[99, layers, kv_heads]" in result.stderr and not os.path.exists(out + "2"), result.stderr
        print("lukv: converted and replayed")

        try:
            from safetensors.numpy import save_file
        except ImportError:
            print("qfilter part not run: safetensors is not installed (pip install -r tools/requirements-artefacts.txt)")
            return failures
        filters = rng.standard_normal((LAYERS, KV_HEADS, HEAD_DIM)).astype(np.float32)
        st, out = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "qf.h5")
        save_file({"q_filters": filters}, st)
        result = convert("qfilter", "--safetensors", st, "--out", out)
        assert result.returncode == 0, result.stderr
        with h5py.File(out) as f:
            assert np.array_equal(f["q_filters"][...], filters)
        run = replay(kvsim, f"qfilter:artefact={out}")
        assert abs(run["achieved_ratio"] - 0.5) < 1e-3 and run["rel_err"]["mean"] > 0, run
        save_file({"other": filters}, st)
        result = convert("qfilter", "--safetensors", st, "--out", out + "2")
        assert result.returncode != 0 and "q_filters" in result.stderr, result.stderr
        print("qfilter: converted and replayed")

        # expected_attention_stats: query_mean [L, H, d] and query_cov [L, H, d, d] (identity).
        mean = rng.standard_normal((LAYERS, HEADS, HEAD_DIM)).astype(np.float32)
        cov = np.broadcast_to(np.eye(HEAD_DIM, dtype=np.float32), (LAYERS, HEADS, HEAD_DIM, HEAD_DIM)).copy()
        st, out = os.path.join(tmp, "stats.safetensors"), os.path.join(tmp, "stats.h5")
        save_file({"query_mean": mean, "query_cov": cov}, st)
        result = convert("expected_attention_stats", "--safetensors", st, "--out", out)
        assert result.returncode == 0, result.stderr
        with h5py.File(out) as f:
            assert np.array_equal(f["query_mean"][...], mean) and np.array_equal(f["query_cov"][...], cov)
        run = replay(kvsim, f"expected_attention_stats:artefact={out}")
        assert abs(run["achieved_ratio"] - 0.5) < 1e-3 and run["rel_err"]["mean"] > 0, run
        save_file({"query_mean": mean, "query_cov": cov[..., :-1]}, st)
        result = convert("expected_attention_stats", "--safetensors", st, "--out", out + "2")
        assert result.returncode != 0 and "query_cov" in result.stderr, result.stderr
        print("expected_attention_stats: converted and replayed")
    return failures


if __name__ == "__main__":
    sys.exit(main())
