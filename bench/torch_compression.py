#!/usr/bin/env python3
"""The compression step of one layer the way kvpress 0.5.5 does it in PyTorch — the press's
score, torch.topk, gather of the kept keys and values — timed on a Llama-3-8B-shaped layer
(32 query heads, 8 KV heads, d=128) in the model dtype (bf16 by default), for comparison
with bench_cuda's cuda/<press>/compress benchmarks. Every kvpress scorer press kvsim has is
here except the presses that need an artefact or the hidden states (qfilter, kvzap, fastkvzip,
expected_attention_stats). kvpress's observed_attention score reads the attention weights of the
model's eager attention; its step here includes making them the way transformers' eager
attention does (full q.k^T, causal mask, float32 softmax, cast to the model dtype), which is
what kvsim's score has to compute too. Those weights take T^2 entries per head (64 GiB at 32K
in bf16), so it runs only when named with --presses. Where kvpress recomputes
queries or pre-RoPE keys from the hidden states (non_causal_attention, leverage_score,
compactor), this takes the layer's queries and inverts RoPE on its keys, as kvsim does.

    python3 bench/torch_compression.py --tokens 32768 131072 --out bench/results/torch.json

Timing: CUDA events on a GPU (L2 flushed before each iteration), perf_counter on the CPU.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def knorm_scores(q, k, window, kernel):
    return -k.norm(dim=-1)


def snapkv_scores(q, k, window, kernel):
    # kvpress SnapKVPress.score: window attention of the last `window` queries, mean,
    # avg-pooled, averaged over each GQA group, the window padded with max + 1.
    b, h, t, d = q.shape
    group = h // k.shape[1]
    keys = k.repeat_interleave(group, dim=1)
    logits = q[:, :, -window:] @ keys.transpose(-1, -2) / math.sqrt(d)
    mask = torch.ones(window, t, dtype=torch.bool, device=q.device).triu(t - window + 1)
    attn = logits.masked_fill(mask, float("-inf")).softmax(dim=-1, dtype=torch.float32)[..., :-window]
    scores = F.avg_pool1d(attn.mean(dim=-2), kernel_size=kernel, padding=kernel // 2, stride=1)
    scores = scores.view(b, k.shape[1], group, t - window).mean(dim=2)
    return F.pad(scores, (0, window), value=scores.max().item() + 1)


def tova_scores(q, k, window, kernel):
    # kvpress TOVAPress: the last query's attention, averaged over all heads, the last token padded.
    b, h, t, d = q.shape
    keys = k.repeat_interleave(h // k.shape[1], dim=1)
    attn = (q[:, :, -1:] @ keys.transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1, dtype=torch.float32)[..., :-1]
    scores = attn.mean(dim=1).repeat(1, k.shape[1], 1)
    return F.pad(scores, (0, 1), value=scores.max().item() + 1)


def observed_attention_scores(q, k, window, kernel):
    # transformers' eager attention weights, then kvpress ObservedAttentionPress.score: each
    # key's weight summed over the queries, divided by the number of queries that see it,
    # averaged over each GQA group.
    b, h, t, d = q.shape
    group = h // k.shape[1]
    logits = q @ k.repeat_interleave(group, dim=1).transpose(-1, -2) / math.sqrt(d)
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    weights = logits.masked_fill(mask, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    scores = weights.sum(dim=2) / torch.arange(t, 0, -1, device=q.device)
    return scores.view(b, k.shape[1], group, t).mean(dim=2)


def keydiff_scores(q, k, window, kernel):
    anchor = F.normalize(k, p=2, dim=-1).mean(dim=2, keepdim=True)
    return -F.cosine_similarity(k, anchor, dim=-1)


def streaming_llm_scores(q, k, window, kernel, n_sink=4, ratio=0.5):
    t = k.shape[2]
    n_pruned = t - int(t * (1 - ratio))
    scores = torch.ones(k.shape[:-1], device=k.device, dtype=k.dtype)
    scores[:, :, n_sink:n_sink + n_pruned] = 0
    return scores


def random_scores(q, k, window, kernel):
    return torch.rand(k.shape[:-1], device=k.device, dtype=k.dtype)


def lagkv_scores(q, k, window, kernel, v=None, n_sink=4, lag=128):
    # kvpress LagKVPress (rank scores): partitions normalised by the next one's channel range.
    b, hkv, t, d = k.shape
    end = n_sink + ((t - n_sink) // lag) * lag

    def spread(x):
        parts = x[:, :, n_sink:end].reshape(b, hkv, -1, lag, d)
        ref, cur = parts[:, :, 1:], parts[:, :, :-1]
        lo, hi = ref.amin(dim=-2, keepdim=True), ref.amax(dim=-2, keepdim=True)
        return ((cur - lo) / (hi - lo)).std(dim=-1).softmax(dim=-1)

    raw = (spread(k) + spread(v)) / 2
    ranks = raw.argsort(dim=-1).argsort(dim=-1).to(k.dtype) / lag
    scores = torch.ones(b, hkv, t, device=k.device, dtype=k.dtype)
    scores[:, :, n_sink:end - lag] = ranks.reshape(b, hkv, -1)
    return scores


def expected_attention_scores(q, k, window, kernel, v=None, n_sink=4, n_future=512, theta=500000.0):
    # kvpress ExpectedAttentionPress: Gaussian statistics of the (pre-RoPE) queries, rotated
    # by the mean RoPE matrix of the next n_future positions; z = mu.k/sqrt(d) + k'Sigma k/(2d).
    b, h, t, d = q.shape
    hkv, half, dev = k.shape[1], d // 2, q.device
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d)
    angle = torch.arange(n_sink, t, device=dev, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angle.cos(), angle.sin()
    x = q[:, :, n_sink:].float()
    lo, hi = x[..., :half], x[..., half:]
    pre = torch.cat([lo * cos + hi * sin, hi * cos - lo * sin], dim=-1)
    mean = pre.mean(dim=2)
    centred = pre - mean[:, :, None]
    cov = centred.transpose(-1, -2) @ centred / pre.shape[2]
    future = torch.arange(t, t + n_future, device=dev, dtype=torch.float32)[:, None] * inv_freq
    c, s = future.cos().mean(0), future.sin().mean(0)
    rot = torch.zeros(d, d, device=dev)
    idx = torch.arange(half, device=dev)
    rot[idx, idx], rot[idx + half, idx + half], rot[idx, idx + half], rot[idx + half, idx] = c, c, -s, s
    mu, cov = mean @ rot.T, rot @ cov @ rot.T
    keys = k[:, :, n_sink:].float().repeat_interleave(h // hkv, dim=1)
    z = (keys @ mu[..., None]).squeeze(-1) / math.sqrt(d) + ((keys @ cov) * keys).sum(-1) / (2 * d)
    p = z.softmax(dim=-1).view(b, hkv, h // hkv, -1).mean(dim=2) * v[:, :, n_sink:].float().norm(dim=-1)
    return F.pad(p, (n_sink, 0), value=p.max().item() + 1)


def inverse_rope(x, start=0, theta=500000.0):
    # The rotation kvsim inverts (half-split pairs): the pre-RoPE rows of x at positions start, start + 1, ...
    d, half = x.shape[-1], x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angle = torch.arange(start, start + x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    lo, hi = x[..., :half], x[..., half:]
    return torch.cat([lo * cos + hi * sin, hi * cos - lo * sin], dim=-1)


def cur_scores(q, k, window, kernel, v=None, num_sinks=4, local_window=16):
    # kvpress CURPress defaults (kv_product, local approximation): squared key and value norms,
    # each normalised within windows of local_window tokens, multiplied, normalised per head.
    def local(x2):
        b, h, n = x2.shape
        x2 = F.pad(x2, (0, -n % local_window)).reshape(b, h, -1, local_window)
        return (x2 / x2.sum(dim=-1, keepdim=True)).reshape(b, h, -1)[:, :, :n]

    scores = local((k ** 2).sum(dim=-1)) * local((v ** 2).sum(dim=-1))
    scores = scores / scores.sum(dim=-1, keepdim=True)
    scores[:, :, :num_sinks] = 1.0
    return scores


def non_causal_attention_scores(q, k, window, kernel, v=None, chunk=256):
    # kvpress NonCausalAttnPress: unscaled attention within chunks of `chunk` queries and keys
    # (the last chunk padded and masked), summed over queries, GQA-group mean, times |v|,
    # avg-pooled 3, z-scored over all heads and tokens.
    b, h, t, d = q.shape
    hkv = k.shape[1]
    pad = -t % chunk
    chunks = (t + pad) // chunk
    qc = F.pad(q, (0, 0, 0, pad)).view(b, h, chunks, chunk, d)
    kc = F.pad(k.repeat_interleave(h // hkv, dim=1), (0, 0, 0, pad)).view(b, h, chunks, chunk, d)
    dots = (qc @ kc.transpose(-1, -2)).float()
    invalid = (torch.arange(t + pad, device=q.device) >= t).view(chunks, chunk)
    dots.masked_fill_(invalid[:, None, :], torch.finfo(torch.float32).min)
    attn = dots.softmax(dim=-1).masked_fill(invalid[:, :, None], 0)
    received = attn.sum(dim=-2).view(b, h, -1)[..., :t].view(b, hkv, h // hkv, t).mean(dim=2)
    scores = F.avg_pool1d(received * v.norm(dim=-1).float(), kernel_size=3, padding=1, stride=1)
    return (scores - scores.mean()) / scores.std().clamp_min(1e-6)


def leverage_scores(q, k, window, kernel, v=None, sketch=48, start=0):
    # kvpress LeverageScorePress: a right Gaussian sketch of the centred pre-RoPE keys, leverage
    # diag(X (X'X)^-1 X') through a Cholesky factor (jitter 1e-2, checked as kvpress does), z-scored.
    b, hkv, t, d = k.shape
    pre = inverse_rope(k, start)
    phi = torch.randn(b, hkv, d, sketch, device=k.device, dtype=k.dtype) / math.sqrt(sketch)
    x = ((pre - pre.mean(dim=-2, keepdim=True)) @ phi).float()
    gram = x.transpose(-1, -2) @ x
    eye = torch.eye(sketch, device=k.device, dtype=gram.dtype)
    factor, info = torch.linalg.cholesky_ex(0.5 * (gram + gram.transpose(-1, -2)) + 1e-2 * eye)
    assert bool((info == 0).all()), "Cholesky failed"
    solved = torch.cholesky_solve(x.transpose(-1, -2), factor)
    scores = (x * solved.transpose(-1, -2)).sum(dim=-1).clamp_min(0)
    return (scores - scores.mean()) / scores.std().clamp_min(1e-6)


def compactor_scores(q, k, window, kernel, v=None, ratio=0.5, sink_start=8, sink_end=4):
    # kvpress CompactorPress: leverage and non-causal attention of the tokens between the sinks,
    # blended as ratio * leverage + attention, the sinks padded with max + 1.
    t = k.shape[2]
    middle = slice(sink_start, t - sink_end)
    scores = ratio * leverage_scores(q, k[:, :, middle], window, kernel, start=sink_start) + \
        non_causal_attention_scores(q[:, :, middle], k[:, :, middle], window, kernel, v=v[:, :, middle])
    return F.pad(scores, (sink_start, sink_end), value=scores.max().item() + 1)


PRESSES = {"knorm": knorm_scores, "snapkv": snapkv_scores, "pyramidkv": snapkv_scores, "tova": tova_scores,
           "keydiff": keydiff_scores, "streaming_llm": streaming_llm_scores, "random": random_scores,
           "lagkv": lagkv_scores, "expected_attention": expected_attention_scores, "cur": cur_scores,
           "non_causal_attention": non_causal_attention_scores, "leverage_score": leverage_scores, "compactor": compactor_scores,
           "observed_attention": observed_attention_scores}
DEFAULT_PRESSES = [name for name in PRESSES if name != "observed_attention"]  # T^2 weights: opt-in
NEEDS_VALUES = {"lagkv", "expected_attention", "cur", "non_causal_attention", "compactor"}


def compress(press, q, k, v, ratio, window=64, kernel=5):
    if press == "compactor":
        scores = compactor_scores(q, k, window, kernel, v=v, ratio=ratio)
    elif press in NEEDS_VALUES:
        scores = PRESSES[press](q, k, window, kernel, v=v)
    elif press == "streaming_llm":
        scores = streaming_llm_scores(q, k, window, kernel, ratio=ratio)
    else:
        scores = PRESSES[press](q, k, window, kernel)
    n_kept = int(k.shape[2] * (1 - ratio))
    index = scores.topk(n_kept, dim=-1).indices.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1])
    return k.gather(2, index), v.gather(2, index)


def time_step(fn, device, iterations):
    if device.type == "cuda":
        flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
        times = []
        for _ in range(iterations):
            flush.zero_()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        return sorted(times)[len(times) // 2]
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--presses", nargs="+", default=DEFAULT_PRESSES, choices=list(PRESSES))
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = []
    for t in args.tokens:
        gen = torch.Generator(device="cpu").manual_seed(1234)
        q = torch.randn(1, 32, t, 128, generator=gen).to(device, dtype)
        k = torch.randn(1, 8, t, 128, generator=gen).to(device, dtype)
        v = torch.randn(1, 8, t, 128, generator=gen).to(device, dtype)
        for press in args.presses:
            compress(press, q, k, v, args.ratio)  # warm-up
            seconds = time_step(lambda: compress(press, q, k, v, args.ratio), device, args.iterations)
            row = {"name": f"torch/{press}/T={t}/hkv=8/d=128/r={args.ratio}/{args.dtype}", "device": str(device),
                   "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "seconds": seconds, "torch": torch.__version__}
            results.append(row)
            print(f"{row['name']}: {seconds * 1e3:.3f} ms on {row['device_name']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
