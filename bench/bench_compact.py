"""Benchmark of compact_kv: in-place KV-cache compaction after verification, all layers' K and V at once.

Providers: every backend of specdec_kernels that accepts the inputs (cuda = one launch for all tensors,
triton = one launch per tensor, cpu, torch = the PyTorch reference) through the public function, and
"eagle-index-copy": EAGLE's approach, per tensor an index (gather of the accepted slots) then a copy into
the destination slots (here batched with gather/scatter along S; the index tensors are built once,
outside the timing, as EAGLE builds select_indices once per step).

Shapes: Llama-3-8B (32 layers, 8 KV heads, D 128) and Llama-3-70B (80 layers, 8 KV heads, D 128), bf16 on
CUDA (fp16 and fp32 on CPU), B in {1, 8, 32, 64}, accept_len in {1, 4, 8} (1 = only the root: nothing
moves), S_max 4096 (reduced when the caches would not fit in --mem-gb; the cost does not depend on S_max).
Bandwidth counts the bytes read plus written by the rows that move: 2 * moved rows * D * itemsize.

    python bench/bench_compact.py            # full sweep (CUDA)
    python bench/bench_compact.py --quick    # small CPU-sized smoke run
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specdec_kernels as sk

from common import add_common_args, peak_gbps, print_table, time_stats, usable_backends, write_csv

MODELS = {"llama3-8b": (32, 8, 128), "llama3-70b": (80, 8, 128)}
TREE_NODES = 60  # EAGLE-2's tree: accepted nodes are drawn from 60 slots past cache_len


def make_inputs(B, layers, H, D, S, n_acc, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    caches = [torch.randn(B, H, S, D, generator=gen).to(dtype).to(device) for _ in range(2 * layers)]
    cache_len = torch.randint(0, S - TREE_NODES, (B,), generator=gen, dtype=torch.int32)
    nodes = torch.full((B, 8), -1, dtype=torch.int32)
    for b in range(B):  # a root-first strictly increasing path: root + (n_acc - 1) sorted distinct nodes
        rest = torch.randperm(TREE_NODES - 1, generator=gen)[: n_acc - 1].sort().values + 1
        nodes[b, :n_acc] = torch.cat([torch.zeros(1, dtype=torch.int32), rest.to(torch.int32)])
    accept_len = torch.full((B,), n_acc, dtype=torch.int32)
    moved = int(sum((nodes[b, :n_acc] != torch.arange(n_acc)).sum() for b in range(B)))
    return caches, cache_len.to(device), nodes.to(device), accept_len.to(device), moved


def eagle_index_copy(caches, cache_len, nodes, accept_len):
    """Per tensor: index the accepted slots, then copy them to their destinations (EAGLE's way, batched)."""
    B, W = nodes.shape
    j = torch.arange(W, device=nodes.device)
    live = (j[None, :] < accept_len[:, None]) & (nodes >= 0)
    dst = cache_len[:, None].long() + j[None, :]
    src = torch.where(live, cache_len[:, None].long() + nodes.long(), dst)  # padded rows copy onto themselves
    H, D = caches[0].shape[1], caches[0].shape[3]
    src_i = src[:, None, :, None].expand(B, H, W, D)
    dst_i = dst[:, None, :, None].expand(B, H, W, D)

    def run():
        for t in caches:
            t.scatter_(2, dst_i, t.gather(2, src_i))

    return run


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--mem-gb", type=float, default=40.0, help="cap on the caches' memory (GB)")
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=None,
        help="memory bandwidth for the fraction-of-peak column (default: known GPUs)",
    )
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    peak = peak_gbps(dev, args.peak_gbps)
    min_time = args.min_time / (10 if args.quick else 1)
    if dev.type == "cuda":
        dtypes = [torch.bfloat16]
        models = MODELS if not args.quick else {"llama3-8b": MODELS["llama3-8b"]}
        batches = [1, 8, 32, 64] if not args.quick else [1, 8]
        accepts = [1, 4, 8]
        S_max = 4096
    else:
        dtypes = [torch.float16, torch.float32]
        models = {"small-4L": (4, 2, 64)} if args.quick else {"llama3-8b": MODELS["llama3-8b"]}
        batches = [1, 8] if args.quick else [1, 8, 32]
        accepts = [4, 8] if args.quick else [1, 4, 8]
        S_max = 256 if args.quick else 1024
    rows = []
    for model, (layers, H, D) in models.items():
        for dtype in dtypes:
            es = torch.tensor([], dtype=dtype).element_size()
            for B in batches:
                per_slot = 2 * layers * B * H * D * es
                S = max(TREE_NODES * 2, min(S_max, int(args.mem_gb * 1e9 // per_slot)))
                for n_acc in accepts:
                    caches, cache_len, nodes, accept_len, moved = make_inputs(B, layers, H, D, S, n_acc, dtype, dev)
                    nbytes = 2 * moved * H * D * es * len(caches)
                    providers = {}
                    for backend in usable_backends("compact_kv", caches, cache_len, nodes, accept_len):
                        providers[backend] = functools.partial(
                            sk.compact_kv, caches, cache_len, nodes, accept_len, backend=backend
                        )
                    providers["eagle-index-copy"] = eagle_index_copy(caches, cache_len, nodes, accept_len)
                    for name, fn in providers.items():
                        med, best = time_stats(fn, dev, min_time=min_time)
                        rows.append(
                            {
                                "kernel": "compact_kv",
                                "provider": name,
                                "model": model,
                                "dtype": str(dtype)[6:],
                                "B": B,
                                "layers": layers,
                                "H_kv": H,
                                "D": D,
                                "S_max": S,
                                "accept_len": n_acc,
                                "moved_rows": moved * H * len(caches),
                                "us": med,
                                "us_min": best,
                                "GBps": nbytes / (med * 1e3) if med > 0 else 0.0,
                            }
                        )
                        rows[-1]["frac_peak"] = rows[-1]["GBps"] / peak if peak else float("nan")
                    del caches
    print_table(rows, ["provider", "model", "dtype", "B", "accept_len", "S_max", "us", "us_min", "GBps", "frac_peak"])
    print("wrote", write_csv(rows, "compact", dev, results=args.results, out_dir=args.out_dir))


if __name__ == "__main__":
    main()
