"""Benchmark of tree attention: Llama-3-8B verification shapes on every backend usable here, vs torch SDPA.

Shapes: H = 32 query heads, H_kv = 8, D = 128, a tree of N = 60 nodes (EAGLE-2's 60-token tree; --nodes 1
gives plain decoding), a committed prefix of 512 / 2048 / 4096 tokens, B in {1, 8, 32}. Every request has
the same prefix, so SDPA can run on the dense layout.

Providers:
  * the backends of specdec_kernels.tree_attention that accept the inputs (cuda, triton, cpu, torch = the
    PyTorch reference), writing into a preallocated output;
  * "sdpa": torch.nn.functional.scaled_dot_product_attention over the first cache_len + N slots with the dense
    additive bias of specdec_kernels.tree_attention_bias (built once, outside the timing, as an engine would
    per step) and enable_gqa: what a plain PyTorch integration does.
Columns: time per call (median, microseconds), speedup over the reference and over SDPA, the largest
error against the fp32 reference, and on CUDA the K/V bytes read per call as achieved GB/s and as a
fraction of the GPU's peak memory bandwidth (--peak-gbps, or a table of known GPUs).

    python bench/bench_attention.py                 # the full grid (a GPU is expected)
    python bench/bench_attention.py --quick         # one small shape: a smoke run that fits a 2-core CPU
    python bench/bench_attention.py --results       # CSV into bench/results/ instead of bench/out/
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specdec_kernels as sk
from specdec.dtypes import DTYPE_NAMES, torch_dtype
from specdec_kernels.reference import attention as ref

from common import add_common_args, peak_gbps, print_table, time_fn, usable_backends, write_csv

H, H_KV, HEAD_DIM = 32, 8, 128  # Llama-3-8B


def random_tree_mask(B: int, N: int, gen: torch.Generator, device) -> torch.Tensor:
    """Packed ancestor masks of random N-node trees (each node's parent drawn among the earlier nodes)."""
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for i in range(1, N):
        parents[:, i] = torch.randint(0, i, (B,), generator=gen, dtype=torch.int32)
    return sk.build_tree(parents, backend="torch").mask.to(device)


def bench_shape(B: int, N: int, prefix: int, dtype, device: str, min_time: float, peak) -> list:
    gen = torch.Generator().manual_seed(B * 7919 + prefix + N)
    S_max = prefix + max(N, 64)  # a little headroom, as a preallocated cache has
    q = torch.randn(B, H, N, HEAD_DIM, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(B, H_KV, S_max, HEAD_DIM, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(B, H_KV, S_max, HEAD_DIM, generator=gen).to(device=device, dtype=dtype)
    cache_len = torch.full((B,), prefix, dtype=torch.int32, device=device)
    mask = random_tree_mask(B, N, gen, device)
    scale = 1.0 / math.sqrt(HEAD_DIM)
    out = torch.empty_like(q)
    want = torch.empty(q.shape, dtype=torch.float32, device=device)
    ref.tree_attention(q.float(), k.float(), v.float(), cache_len, mask, scale, want)

    kv_len = prefix + N
    kv_bytes = 2 * B * H_KV * kv_len * HEAD_DIM * q.element_size()  # K and V of the visible slots, read once
    rows = []

    def add(provider, fn, result):
        """Time `fn`; `result()` returns what its last call computed (checked against the reference)."""
        fn()
        err = (result().float() - want).abs().max().item()
        us = time_fn(fn, device, min_time=min_time, warmup=3)
        row = {
            "provider": provider,
            "dtype": str(dtype).replace("torch.", ""),
            "B": B,
            "N": N,
            "prefix": prefix,
            "time_us": us,
            "max_err": err,
        }
        if torch.device(device).type == "cuda":
            gbps = kv_bytes / (us * 1e-6) / 1e9
            row["kv_GBps"] = gbps
            row["of_peak"] = gbps / peak if peak else float("nan")
        rows.append(row)

    args = (q, k, v, cache_len, mask, scale, out)
    for b in usable_backends("tree_attention", *args):
        add(b, lambda b=b: sk.tree_attention(q, k, v, cache_len, mask, scale=scale, backend=b, out=out), lambda: out)

    bias = sk.tree_attention_bias(mask, cache_len, kv_len, dtype=dtype)  # [B, 1, N, kv_len]
    k_vis, v_vis = k[:, :, :kv_len], v[:, :, :kv_len]
    sdpa_out = {}

    def sdpa():
        sdpa_out["o"] = torch.nn.functional.scaled_dot_product_attention(
            q, k_vis, v_vis, attn_mask=bias, scale=scale, enable_gqa=True
        )

    add("sdpa", sdpa, lambda: sdpa_out["o"])

    base = {r["provider"]: r["time_us"] for r in rows}
    for r in rows:
        r["x_vs_torch"] = base["torch"] / r["time_us"] if "torch" in base else float("nan")
        r["x_vs_sdpa"] = base["sdpa"] / r["time_us"]
    return rows


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--batch", type=int, nargs="*", default=None, help="batch sizes (default 1 8 32)")
    parser.add_argument("--prefix", type=int, nargs="*", default=None, help="prefix lengths (default 512 2048 4096)")
    parser.add_argument("--nodes", type=int, nargs="*", default=None, help="tree sizes N (default 60)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPE_NAMES), default=None, help="default: bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth of the GPU, GB/s")
    args = parser.parse_args(argv)
    on_cuda = torch.device(args.device).type == "cuda"
    dtype = torch_dtype(args.dtype) if args.dtype else (torch.bfloat16 if on_cuda else torch.float32)
    batches = args.batch or ([1] if args.quick else [1, 8, 32])
    prefixes = args.prefix or ([512] if args.quick else [512, 2048, 4096])
    nodes = args.nodes or [60]
    min_time = args.min_time / (10 if args.quick else 1)
    peak = peak_gbps(args.device, args.peak_gbps)
    rows = []
    for B in batches:
        for P in prefixes:
            for N in nodes:
                rows += bench_shape(B, N, P, dtype, args.device, min_time, peak)
    print(
        f"tree attention on {args.device} ({str(dtype).replace('torch.', '')}, H={H}, H_kv={H_KV}, D={HEAD_DIM}): "
        f"time per call in microseconds (median)" + (f", peak bandwidth {peak:.0f} GB/s" if peak else "")
    )
    cols = ["provider", "B", "N", "prefix", "time_us", "x_vs_torch", "x_vs_sdpa", "max_err"]
    if on_cuda:
        cols += ["kv_GBps", "of_peak"]
    print_table(rows, cols, floatfmt="{:.3g}")
    path = write_csv(rows, "attention", args.device, results=args.results, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
