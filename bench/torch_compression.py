#!/usr/bin/env python3
"""The compression step of one layer the way kvpress does it in PyTorch — scoring,
torch.topk, gather of the kept keys and values — timed on a Llama-3-8B-shaped layer
(32 query heads, 8 KV heads, d=128), for comparison with bench_cuda's score + select.

    .venv-recorder/bin/python bench/torch_compression.py --tokens 4096 32768 --out bench/results/torch.json

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


PRESSES = {"knorm": knorm_scores, "snapkv": snapkv_scores}


def compress(press, q, k, v, ratio, window=64, kernel=5):
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
    p.add_argument("--presses", nargs="+", default=list(PRESSES), choices=list(PRESSES))
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
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
