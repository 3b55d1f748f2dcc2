#!/usr/bin/env python3
"""The trace recorder on a tiny randomly initialised Llama built from a config (no download):
record, check shapes and attributes, and `kvsim verify-trace` must pass; bad input must fail
with one line and a non-zero exit. Exits 77 (ctest: skipped) where torch or transformers
are missing: install them with scripts/setup_recorder.sh.

usage: test_recorder.py KVSIM_BINARY
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDER = os.path.join(HERE, "..", "tools", "record_trace.py")

try:
    import h5py
    import numpy as np
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
except ImportError as e:
    print(f"SKIPPED: {e.name} is not installed (scripts/setup_recorder.sh installs the recorder's packages)")
    sys.exit(77)

KVSIM = sys.argv[1]
failures = []


def check(condition, what):
    print(("ok      " if condition else "FAILED  ") + what)
    if not condition:
        failures.append(what)


def run(args):
    return subprocess.run(args, capture_output=True, text=True)


def tiny_model(folder, model_type="llama"):
    """A 2-layer GQA model (4 query heads, 2 KV heads, head_dim 16) and a word-level tokenizer."""
    words = "the a lighthouse keeper cat lamp was named lit on night sea ship storm what is of and to".split()
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    if model_type == "llama":
        config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                          rope_theta=10000.0)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2)
        model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "tiny")
        tiny_model(model_dir)
        context = os.path.join(tmp, "context.txt")
        with open(context, "w") as f:
            f.write(" ".join(["the lighthouse keeper lit the lamp on a storm night and the ship was to sea"] * 6))
        base = [sys.executable, RECORDER, "--model", model_dir, "--context", context, "--question", "what is the cat named",
                "--generate", "5", "--prefill-chunk", "32", "--with-oproj", "--device", "cpu"]

        for dtype in ("float32", "float16", "bfloat16"):
            trace = os.path.join(tmp, f"trace_{dtype}.h5")
            r = run(base + ["--dtype", dtype, "-o", trace])
            check(r.returncode == 0, f"record ({dtype}) exits 0: {r.stderr.strip().splitlines()[-1:] }")
            if r.returncode:
                continue
            check(not os.path.exists(trace + ".partial"), f"no partial file left ({dtype})")
            with h5py.File(trace, "r") as f:
                T = int(f.attrs["n_context"] + f.attrs["n_question"] + f.attrs["n_generated"])
                check(f.attrs["n_context"] == 96 and f.attrs["n_question"] == 5 and f.attrs["n_generated"] == 5,
                      f"segments ({dtype}): {f.attrs['n_context']}+{f.attrs['n_question']}+{f.attrs['n_generated']}")
                check(int(f.attrs["kvsim_format_version"]) == 1 and f.attrs["dtype"] == dtype.encode(), f"version and dtype attrs ({dtype})")
                check(list(f["recorded_layers"][:]) == [0, 1], "all layers recorded by default")
                check(f["layers/1/q"].shape == (4, T, 16) and f["layers/1/k"].shape == (2, T, 16), f"q/k shapes ({dtype})")
                check(f["layers/0/attn_out"].shape == (4, T, 16), "attn_out shape")
                check(f["layers/0/o_proj_weight"].shape == (64, 64), "o_proj shape")
                check(f["tokens"].shape == (T,), "tokens length")
                check(abs(f["rope_inv_freq"][1] / 10000.0 ** (-2 / 16) - 1) < 1e-6, "rope inv_freq")
            tolerance = {"float32": "1e-4", "float16": "5e-3", "bfloat16": "3e-2"}[dtype]
            r = run([KVSIM, "verify-trace", trace, "--tolerance", tolerance])
            check(r.returncode == 0, f"kvsim verify-trace passes within {tolerance} ({dtype}): {r.stderr.strip()}")
            r = run([KVSIM, "replay", "-q", "--trace", trace, "--press", "snapkv:window_size=8", "--ratio", "0.5"])
            check(r.returncode == 0 and "snapkv" in r.stdout, f"kvsim replay reads the recorded trace ({dtype})")

        # Query heads and their keys line up: corrupting the keys must fail verification.
        trace = os.path.join(tmp, "trace_float32.h5")
        with h5py.File(trace, "r+") as f:
            f["layers/1/k"][...] = f["layers/1/k"][...][::-1]  # swap the two KV heads
        r = run([KVSIM, "verify-trace", trace])
        check(r.returncode == 1 and "layer 1" in r.stderr, "verify-trace names the layer with swapped KV heads")

        r = run(base + ["--layers", "0", "--chat-template", "-o", os.path.join(tmp, "x.h5")])
        check(r.returncode == 1 and "no chat template" in r.stderr, f"no chat template: one-line error ({r.stderr.strip()[-200:]})")
        r = run(base[:5] + [os.path.join(tmp, "missing.txt"), "-o", os.path.join(tmp, "x.h5")])
        check(r.returncode == 1 and "missing.txt" in r.stderr, "missing context file: one-line error")
        r = run(base + ["--layers", "5", "-o", os.path.join(tmp, "x.h5")])
        check(r.returncode == 1 and "layer 5" in r.stderr, "layer out of range: one-line error")
        long_context = os.path.join(tmp, "long.txt")
        with open(long_context, "w") as f:
            f.write("the sea " * 200)
        r = run([sys.executable, RECORDER, "--model", model_dir, "--context", long_context, "-o", os.path.join(tmp, "x.h5")])
        check(r.returncode == 1 and "exceed the model's window" in r.stderr, "context longer than the window: one-line error")
        gpt2 = os.path.join(tmp, "gpt2")
        tiny_model(gpt2, "gpt2")
        r = run([sys.executable, RECORDER, "--model", gpt2, "--context", context, "-o", os.path.join(tmp, "x.h5")])
        check(r.returncode == 1 and "architecture 'gpt2' is not supported" in r.stderr, "unsupported architecture: one-line error")
        check(not os.path.exists(os.path.join(tmp, "x.h5")), "no output file after errors")

    print(f"{sum(1 for _ in failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
