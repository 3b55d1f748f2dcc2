#!/usr/bin/env python3
"""The trace recorder on a tiny randomly initialised Llama built from a config (no download):
record, check shapes and attributes, and `kvsim verify-trace` must pass; bad input must fail
with one line and a non-zero exit. Exits 77 (ctest: skipped) where torch or transformers
are missing: install them with scripts/setup_recorder.sh.

usage: test_recorder.py KVSIM_BINARY
"""
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

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
    if model_type == "gemma3":  # Gemma 3's layout: sliding layers (window 16, theta 1e4), one full layer (theta 1e6)
        config = transformers.Gemma3TextConfig(
            vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=256, sliding_window=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
        model = transformers.Gemma3ForCausalLM(config)
    elif model_type == "llama":
        config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                          rope_theta=10000.0)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2)
        model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)


def check_stop_at_end_of_turn(tmp, model_dir, base):
    """Generation stops before the first end-of-turn token: make the k-th greedy token (k >= 1,
    its first occurrence) the model's eos and expect exactly k generated tokens recorded."""
    trace = os.path.join(tmp, "trace_float32.h5")
    with h5py.File(trace, "r") as f:
        start = int(f.attrs["n_context"] + f.attrs["n_question"])
        generated = [int(t) for t in f["tokens"][start:]]
    k = next((i for i in range(1, len(generated)) if generated[i] not in generated[:i]), None)
    if k is None:
        check(False, f"the tiny model's greedy tokens {generated} offer no new token to stop at")
        return
    eos_model = os.path.join(tmp, "tiny_eos")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    model.generation_config.eos_token_id = [2, generated[k]]
    model.save_pretrained(eos_model)
    transformers.AutoTokenizer.from_pretrained(model_dir).save_pretrained(eos_model)
    out = os.path.join(tmp, "trace_eos.h5")
    args = [a for a in base if a != "--no-stop-at-eos"]
    args[args.index("--model") + 1] = eos_model
    r = run(args + ["--dtype", "float32", "-o", out])
    check(r.returncode == 0 and "end of turn" in r.stderr, f"recording stops at the end of turn ({r.stderr.strip()[-200:]})")
    if r.returncode:
        return
    with h5py.File(out, "r") as f:
        T = int(f.attrs["n_context"] + f.attrs["n_question"] + f.attrs["n_generated"])
        check(int(f.attrs["n_generated"]) == k, f"{k} tokens generated before the end of turn (got {f.attrs['n_generated']})")
        check(f["layers/1/q"].shape[1] == T and f["layers/0/attn_out"].shape[1] == T and f["tokens"].shape == (T,),
              "the per-token datasets end with the last generated token")
    r = run([KVSIM, "verify-trace", out, "--tolerance", "1e-4"])
    check(r.returncode == 0, f"kvsim verify-trace passes on the shortened trace: {r.stderr.strip()}")


def check_gemma3_layers(tmp, context):
    """A Gemma-3-style model (sliding layers 0, 1 with window 16 and RoPE theta 1e4; full layer 2
    with theta 1e6) on a prompt longer than the window: every layer records with its window and
    its RoPE, and verify-trace's windowed recomputation matches the model's outputs."""
    gemma = os.path.join(tmp, "gemma3")
    tiny_model(gemma, "gemma3")
    base = [sys.executable, RECORDER, "--model", gemma, "--context", context, "--question", "what is the cat named",
            "--generate", "5", "--no-stop-at-eos", "--device", "cpu", "--dtype", "float32"]
    out = os.path.join(tmp, "gemma3_full.h5")
    r = run(base + ["--layers", "2", "-o", out])
    check(r.returncode == 0, f"Gemma 3: the full-attention layer records ({r.stderr.strip()[-300:]})")
    if r.returncode == 0:
        with h5py.File(out, "r") as f:
            check(float(f.attrs["rope_theta"]) == 1e6 and abs(f["rope_inv_freq"][1] / 1e6 ** (-2 / 16) - 1) < 1e-6,
                  "Gemma 3: the full layers' RoPE (theta 1e6) is the file's when only they are recorded")
    out = os.path.join(tmp, "gemma3_all.h5")
    r = run(base + ["-o", out])
    check(r.returncode == 0, f"Gemma 3: sliding and full layers record together ({r.stderr.strip()[-300:]})")
    if r.returncode:
        return
    with h5py.File(out, "r") as f:
        check([f["layers/0"].attrs.get("sliding_window"), f["layers/1"].attrs.get("sliding_window")] == [16, 16] and
              "sliding_window" not in f["layers/2"].attrs, "Gemma 3: the sliding layers carry their window, the full one none")
        check(abs(f["rope_inv_freq"][1] / 1e4 ** (-2 / 16) - 1) < 1e-6 and "rope_inv_freq" not in f["layers/0"] and
              abs(f["layers/2/rope_inv_freq"][1] / 1e6 ** (-2 / 16) - 1) < 1e-6,
              "Gemma 3: layer 2 carries its own RoPE (theta 1e6), the others the file's (1e4)")
    r = run([KVSIM, "verify-trace", out, "--tolerance", "1e-4"])
    check(r.returncode == 0, f"Gemma 3: verify-trace's windowed attention matches every layer: {r.stdout.strip()[-400:]} {r.stderr.strip()[-200:]}")
    r = run([KVSIM, "replay", "-q", "--trace", out, "--press", "knorm", "snapkv:window_size=8", "--ratio", "0.5"])
    check(r.returncode == 0 and "snapkv" in r.stdout, f"Gemma 3: the trace replays ({r.stderr.strip()[-300:]})")


def check_sample(tmp, model_dir):
    """--sample: the generator's character spans become token positions of the recorded prompt
    (the tokens there spell the span), and the greedy answer is scored as RULER does."""
    words = ("the sea was lit on a storm night and the ship was to sea " * 3).split()
    context = " ".join(words[:20] + ["the", "cat", "was", "named", "lamp"] + words[20:])
    start = context.index("the cat was named lamp")  # the test places it, so it knows where
    sample_path = os.path.join(tmp, "sample.json")
    sample = {"task": "niah_single", "context": context, "question": "what is the cat named", "answers": ["lamp"],
              "metric": "all", "spans": [[start, start + len("the cat was named lamp")]], "token_spans": []}
    with open(sample_path, "w") as f:
        json.dump(sample, f)
    out = os.path.join(tmp, "sample.h5")
    base = [sys.executable, RECORDER, "--model", model_dir, "--generate", "4", "--device", "cpu", "--dtype", "float32",
            "--no-stop-at-eos"]
    r = run(base + ["--sample", sample_path, "-o", out])
    check(r.returncode == 0, f"--sample records ({r.stderr.strip()[-300:]})")
    if r.returncode:
        return
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    with h5py.File(out, "r") as f:
        spans = f["answer_spans"][...]
        check(spans.dtype == np.int32 and spans.shape == (1, 2), f"answer_spans is int32 [1, 2] ({spans.dtype}, {spans.shape})")
        first, end = (int(x) for x in spans[0])
        check(tokenizer.decode(f["tokens"][first:end]) == "the cat was named lamp" and first == 20,
              f"the span's tokens spell it, 20 words in ({first}, {end})")
        generated = f.attrs["generated_text"].decode()
        expected = 1.0 if "lamp" in generated.lower() else 0.0
        check(float(f.attrs["answer_score"]) == expected and int(f.attrs["answer_correct"]) == int(expected),
              f"answer scored by string match ({generated!r}: {f.attrs['answer_score']})")
        check(json.loads(f.attrs["expected_answers"].decode()) == ["lamp"] and f.attrs["task"] == b"niah_single", "answers and task")
        check(0 < int(f.attrs["answer_tokens"]) <= int(f.attrs["n_generated"]), "answer_tokens within the generated tokens")
    r = run([KVSIM, "info", out])
    check(r.returncode == 0, f"kvsim reads the answer spans ({r.stderr.strip()})")
    with h5py.File(out, "r+") as f:
        f["answer_spans"][0, 1] = int(f.attrs["n_context"]) + 1
    r = run([KVSIM, "info", out])
    check(r.returncode == 1 and "/answer_spans row 0" in r.stderr and len(r.stderr.strip().splitlines()) == 1,
          f"a span beyond the context: one-line refusal ({r.stderr.strip()})")
    sample["spans"] = [[0, len(context) + 5]]
    with open(sample_path, "w") as f:
        json.dump(sample, f)
    r = run(base + ["--sample", sample_path, "-o", os.path.join(tmp, "x.h5")])
    check(r.returncode == 1 and "span" in r.stderr, "a sample span outside its context: one-line error")
    r = run(base + ["--sample", sample_path, "--question", "q", "-o", os.path.join(tmp, "x.h5")])
    check(r.returncode == 1 and "--sample brings its own question" in r.stderr, "--sample with --question: one-line error")


def check_sigterm_removes_partial(tmp, base):
    """SIGTERM while the trace is being written (held open here by a slow close) leaves neither
    the trace nor its .partial file, and the recorder exits 128 + 15."""
    out = os.path.join(tmp, "terminated.h5")
    slow_close = ("import sys, time; sys.path.insert(0, sys.argv[1]); import record_trace as r; "
                  "close = r.TraceFile.close; r.TraceFile.close = lambda self: (time.sleep(120), close(self)); "
                  "r.main(sys.argv[2:])")
    args = [sys.executable, "-c", slow_close, os.path.dirname(RECORDER)] + base[2:] + ["--dtype", "float32", "-o", out]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not os.path.exists(out + ".partial") and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # inside the slow close by now: the tiny model records in well under a second
    process.terminate()
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    check(process.returncode == 143 and not os.path.exists(out + ".partial") and not os.path.exists(out),
          f"SIGTERM removes the partial trace (exit {process.returncode}, partial left: {os.path.exists(out + '.partial')})")


def check_full_disk(tmp, base):
    """A disk that fills while the trace is written (a file-size limit here): one error line, exit
    1, no crash (libhdf5 cannot close the file and would crash at exit), no file left."""
    out = os.path.join(tmp, "full.h5")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))

    r = subprocess.run(base + ["--dtype", "float32", "-o", out], capture_output=True, text=True, preexec_fn=limit_file_size)
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    check(r.returncode == 1 and len(errors) == 1 and "is the disk full?" in errors[0] and "Traceback" not in r.stderr
          and not os.path.exists(out) and not os.path.exists(out + ".partial"),
          f"a full disk: one-line error, no file left (exit {r.returncode}: {r.stderr.strip()[-300:]})")


def pass_attention(q, context_keys, pass_keys):
    """The softmax rows of an extra pass's queries q [H, m, d] over [context keys; the pass's keys]
    (causal within the pass; the tiny model: query head h reads KV head h // 2, d = 16)."""
    n, m = context_keys.shape[1], q.shape[1]
    keys = np.repeat(np.concatenate([context_keys, pass_keys], axis=1).astype(np.float64), 2, axis=0)
    logits = np.einsum("hid,hjd->hij", q.astype(np.float64), keys) / 4.0
    logits[:, np.triu_indices(m, 1)[0], n + np.triu_indices(m, 1)[1]] = -np.inf
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def record_with_passes(tmp, model_dir, base, passes):
    """Records a float32 trace with --extra-passes `passes` (KVzip chunks of 40 tokens); returns its
    path and the tiny model loaded with eager attention for an independent run, or (None, None)."""
    trace = os.path.join(tmp, passes.replace(",", "-") + ".h5")
    r = run(base + ["--dtype", "float32", "--extra-passes", passes, "--kvzip-chunk-size", "40", "-o", trace])
    check(r.returncode == 0, f"record with --extra-passes {passes} exits 0: {r.stderr.strip().splitlines()[-1:]}")
    if r.returncode:
        return None, None
    return trace, transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def check_kvzip_passes(tmp, model_dir, base):
    """--extra-passes kvzip: the chunks tile the context, each repeat prompt ends with its chunk,
    and the recorded queries and keys reproduce, by a softmax over [context keys; repeat keys],
    the attention rows an independent eager run of the model over context + repeat prompt
    returns (output_attentions); the norms are those of input_layernorm's output there."""
    trace, model = record_with_passes(tmp, model_dir, base, "kvzip")
    if not trace:
        return
    with h5py.File(trace, "r") as f:
        n = int(f.attrs["n_context"])
        tokens = [int(t) for t in f["tokens"][:n]]
        chunks = f["kvzip_chunks"][...]
        repeat_tokens = [int(t) for t in f["kvzip_tokens"][...]]
        check([tuple(c[:2]) for c in chunks] == [(0, 40), (40, 80), (80, 96)], f"KVzip chunks tile the context: {chunks.tolist()}")
        check(len(repeat_tokens) == int(chunks[:, 2].sum()) and f["layers/1/kvzip_q"].shape == (4, len(repeat_tokens), 16)
              and f["layers/1/kvzip_k"].shape == (2, len(repeat_tokens), 16) and f["layers/0/kvzip_hidden_norm"].shape == (len(repeat_tokens),),
              "KVzip datasets' shapes")
        start = 0
        for begin, end, length in chunks:
            prompt = repeat_tokens[start:start + length]
            check(prompt[-(end - begin):] == tokens[begin:end], f"repeat prompt of chunk [{begin}, {end}) ends with the chunk")
            with torch.no_grad():
                out = model(torch.tensor([tokens + prompt]), output_attentions=True, output_hidden_states=True)
            for layer in (0, 1):
                weights = pass_attention(f[f"layers/{layer}/kvzip_q"][:, start:start + length], f[f"layers/{layer}/k"][:, :n],
                                         f[f"layers/{layer}/kvzip_k"][:, start:start + length])
                expected = out.attentions[layer][0, :, n:].double().numpy()
                check(np.abs(weights - expected).max() < 1e-4, f"layer {layer} chunk [{begin}, {end}): recorded passes give the model's attention")
                normed = model.model.layers[layer].input_layernorm(out.hidden_states[layer])[0, n:].norm(dim=-1)
                check(np.allclose(f[f"layers/{layer}/kvzip_hidden_norm"][start:start + length], normed.detach().numpy(), rtol=1e-4),
                      f"layer {layer} chunk [{begin}, {end}): hidden-state norms")
            start += length
    r = run([KVSIM, "replay", "-q", "--trace", trace, "--press", "kvzip:layerwise=true", "--ratio", "0.5"])
    check(r.returncode == 0 and "kvzip" in r.stdout, f"kvsim replay runs kvzip on the recorded passes: {r.stderr.strip()[-200:]}")
    r = run([KVSIM, "replay", "-q", "--trace", os.path.join(tmp, "trace_float32.h5"), "--press", "kvzip:layerwise=true", "--ratio", "0.5"])
    check(r.returncode != 0 and "--extra-passes kvzip" in r.stderr and len(r.stderr.strip().splitlines()) == 1,
          f"kvzip on a trace without passes: one-line error ({r.stderr.strip()[-200:]})")


def check_kvcompose_pass(tmp, model_dir, base):
    """--extra-passes kvcompose (with kvzip: both passes in one recording): the recorded second
    pass's queries and keys reproduce, by a softmax over [context keys; pass keys] with the causal
    mask on the pass, the attention rows an independent eager run of the model over the context
    twice returns (output_attentions); the pass runs in --prefill-chunk pieces, the check in one."""
    trace, model = record_with_passes(tmp, model_dir, base, "kvzip,kvcompose")
    if not trace:
        return
    with h5py.File(trace, "r") as f:
        n = int(f.attrs["n_context"])
        tokens = [int(t) for t in f["tokens"][:n]]
        check(f["layers/1/kvcompose_q"].shape == (4, n, 16) and f["layers/1/kvcompose_k"].shape == (2, n, 16) and "kvzip_chunks" in f,
              "KVCompose datasets' shapes, beside KVzip's")
        with torch.no_grad():
            out = model(torch.tensor([tokens + tokens]), output_attentions=True)
        for layer in (0, 1):
            weights = pass_attention(f[f"layers/{layer}/kvcompose_q"][...], f[f"layers/{layer}/k"][:, :n], f[f"layers/{layer}/kvcompose_k"][...])
            expected = out.attentions[layer][0, :, n:].double().numpy()
            check(np.abs(weights - expected).max() < 1e-4, f"layer {layer}: the recorded second pass gives the model's attention")
    r = run([KVSIM, "replay", "-q", "--trace", trace, "--press", "kvcompose", "--press", "kvzip", "--ratio", "0.5"])
    check(r.returncode == 0 and "kvcompose" in r.stdout, f"kvsim replay runs kvcompose and pooled kvzip on the passes: {r.stderr.strip()[-200:]}")
    r = run([KVSIM, "replay", "-q", "--trace", os.path.join(tmp, "trace_float32.h5"), "--press", "kvcompose", "--ratio", "0.5"])
    check(r.returncode != 0 and "--extra-passes kvcompose" in r.stderr and len(r.stderr.strip().splitlines()) == 1,
          f"kvcompose on a trace without its pass: one-line error ({r.stderr.strip()[-200:]})")
    r = run(base + ["--extra-passes", "kvzip,repeat", "-o", os.path.join(tmp, "unknown.h5")])
    check(r.returncode != 0 and "unknown pass repeat" in r.stderr, f"an unknown extra pass is refused: {r.stderr.strip()[-200:]}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "tiny")
        tiny_model(model_dir)
        context = os.path.join(tmp, "context.txt")
        with open(context, "w") as f:
            f.write(" ".join(["the lighthouse keeper lit the lamp on a storm night and the ship was to sea"] * 6))
        base = [sys.executable, RECORDER, "--model", model_dir, "--context", context, "--question", "what is the cat named",
                "--generate", "5", "--prefill-chunk", "32", "--with-oproj", "--device", "cpu", "--no-stop-at-eos"]

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

        check_sigterm_removes_partial(tmp, base)
        check_full_disk(tmp, base)
        check_kvzip_passes(tmp, model_dir, base)
        check_kvcompose_pass(tmp, model_dir, base)
        check_stop_at_end_of_turn(tmp, model_dir, base)
        check_gemma3_layers(tmp, context)
        check_sample(tmp, model_dir)

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
        missing = os.path.join(tmp, "no", "such", "model")
        r = run([sys.executable, RECORDER, "--model", missing, "--context", context, "-o", os.path.join(tmp, "x.h5")])
        check(r.returncode == 1 and "model folder" in r.stderr, "a missing local folder: one-line error")
        offline = dict(os.environ, HF_HUB_OFFLINE="1")
        r = subprocess.run([sys.executable, RECORDER, "--model", "kvsim-test-org/no-such-model", "--context", context, "-o",
                            os.path.join(tmp, "x.h5")], capture_output=True, text=True, env=offline)
        check(r.returncode == 1 and "cannot load the tokenizer of kvsim-test-org/no-such-model" in r.stderr,
              f"a hub name reaches transformers ({r.stderr.strip()[-200:]})")
        check(not os.path.exists(os.path.join(tmp, "x.h5")), "no output file after errors")

    print(f"{sum(1 for _ in failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
