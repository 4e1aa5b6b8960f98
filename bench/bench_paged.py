"""Benchmark of paged tree attention against the contiguous kernel on the same data (decode shapes).

For each head shape (SmolLM2-135M: H = 9, H_kv = 3, D = 64; Llama-3-8B: H = 32, H_kv = 8, D = 128), prefix
(512, 4096), tree size N (8, 16, 64) and page size (1, 16), the K/V of B requests are laid out twice: as
the contiguous cache [B, H_kv, S_max, D] of tree_attention and on shuffled NHD pages with a block table
(vLLM's layout). Both are timed with the backend the automatic choice takes for the paged op (and the same
backend for the contiguous one); "paged_over_contiguous" is their time ratio (the issue's target on a CPU:
at most 1.25 at page size 16).

    python bench/bench_paged.py --quick          # one shape per model, a smoke run
    python bench/bench_paged.py --results        # CSV into bench/results/
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

from common import add_common_args, print_table, time_fn, write_csv

HEADS = {"smollm2-135m": (9, 3, 64), "llama-3-8b": (32, 8, 128)}


def paged_copy(k: torch.Tensor, page_size: int, seed: int = 0):
    """(pages NHD [B * n, P, H_kv, D], block_table int32 [B, n]) holding k [B, H_kv, S, D] on shuffled pages."""
    B, H_kv, S, D = k.shape
    n = math.ceil(S / page_size)
    pad = n * page_size - S
    padded = torch.nn.functional.pad(k, (0, 0, 0, pad))  # [B, H_kv, n * P, D]
    logical = padded.view(B, H_kv, n, page_size, D).permute(0, 2, 3, 1, 4).reshape(B * n, page_size, H_kv, D)
    perm = torch.randperm(B * n, generator=torch.Generator().manual_seed(seed))
    pages = torch.empty_like(logical)
    pages[perm] = logical
    return pages, perm.view(B, n).to(torch.int32).to(k.device)


def bench_shape(model, B, prefix, N, page_size, dtype, device, min_time) -> dict:
    H, H_kv, D = HEADS[model]
    S = prefix + N
    g = torch.Generator().manual_seed(0)
    k = torch.randn(B, H_kv, S, D, generator=g).to(dtype).to(device)
    v = torch.randn(B, H_kv, S, D, generator=g).to(dtype).to(device)
    q = torch.randn(B, H, N, D, generator=g).to(dtype).to(device)
    parents = torch.tensor([[-1] + [i // 2 for i in range(N - 1)]] * B, dtype=torch.int32, device=device)
    tree = sk.build_tree(parents)
    cache_len = torch.full((B,), prefix, dtype=torch.int32, device=device)
    kp, table = paged_copy(k, page_size)
    vp, _ = paged_copy(v, page_size)
    out = torch.empty_like(q)
    scale = 1.0 / math.sqrt(D)
    args = (q, kp, vp, table, cache_len, tree.mask, False, scale, out)
    backend = sk.get_op("paged_tree_attention").choose(*args)
    paged = time_fn(
        lambda: sk.paged_tree_attention(q, kp, vp, table, cache_len, tree.mask, backend=backend, out=out),
        device,
        min_time=min_time,
    )
    contiguous = time_fn(
        lambda: sk.tree_attention(q, k, v, cache_len, tree.mask, backend=backend, out=out), device, min_time=min_time
    )
    return dict(
        model=model,
        backend=backend,
        B=B,
        prefix=prefix,
        N=N,
        page_size=page_size,
        paged_us=paged,
        contiguous_us=contiguous,
        paged_over_contiguous=paged / contiguous,
        threads=torch.get_num_threads(),
    )


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch_dtype(args.dtype)
    prefixes = [512] if args.quick else [512, 4096]
    nodes = [16] if args.quick else [8, 16, 64]
    min_time = args.min_time / (10 if args.quick else 1)
    rows = [
        bench_shape(m, args.batch, p, n, ps, dtype, args.device, min_time)
        for m in HEADS
        for p in prefixes
        for n in nodes
        for ps in (1, 16)
    ]
    print(f"paged vs contiguous tree attention on {args.device} ({args.dtype}, B={args.batch}): microseconds")
    print_table(
        rows,
        ["model", "backend", "prefix", "N", "page_size", "paged_us", "contiguous_us", "paged_over_contiguous"],
        floatfmt="{:.3g}",
    )
    path = write_csv(rows, "paged_attention", args.device, results=args.results, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
