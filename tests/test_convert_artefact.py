#!/usr/bin/env python3
"""tools/convert_artefact.py on files made here in the published layouts, then kvsim itself
replaying the bundled trace with the converted artefacts. Exit 77 (skipped) without numpy/h5py;
the qfilter part also needs safetensors and says so when it is missing.

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


def replay(kvsim, spec):
    out = subprocess.run([kvsim, "replay", "-q", "--press", spec, "--ratio", "0.5", "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["runs"][0]


def main():
    kvsim = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
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
