"""Benchmark of tree verification: verify_greedy (fused argmax over logits) and verify_sample.

Providers: every backend of specdec_kernels that accepts the inputs (cuda, triton, cpu, torch = the PyTorch
reference), through the public functions with preallocated outputs. Trees are random topological trees of
N nodes whose logits favour the first child's token at 70% of the nodes, so walks go several levels deep
(as with a good draft). Cases: greedy (logits), sample T=1 (no filters), sample T=0.7 top-k 50 top-p 0.9.

Shapes: B in {1, 8, 64}, N in {8, 60}, V in {32000, 128256, 151936}; bf16 logits on CUDA, fp32 on CPU.

    python bench/bench_verify.py            # full sweep
    python bench/bench_verify.py --quick    # smoke run (CPU-sized)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specdec_kernels as sk

from common import add_common_args, print_table, time_stats, usable_backends, write_csv

CASES = {"greedy": None, "sample-T1": (1.0, 0, 1.0), "sample-T0.7-k50-p0.9": (0.7, 50, 0.9)}


def make_inputs(B, N, V, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    parents = torch.zeros(B, N, dtype=torch.int32)
    parents[:, 0] = -1
    for i in range(1, N):
        parents[:, i] = torch.randint(max(0, i - 4), i, (B,), generator=gen, dtype=torch.int32)
    tree = sk.build_tree(parents, backend="torch")
    tokens = torch.randint(0, V, (B, N), generator=gen)
    logits = torch.randn(B, N, V, generator=gen)
    fc = tree.first_child.long()
    boost = (torch.rand(B, N, generator=gen) < 0.7) & (fc >= 0)
    tgt = torch.gather(tokens, 1, fc.clamp(min=0))
    logits.scatter_add_(2, tgt[:, :, None], (boost.float() * 12)[:, :, None])
    uniforms = torch.rand(B, N + 1, generator=gen)
    tree = sk.Tree(*(t.to(device) for t in tree))
    return tree, tokens.to(device), logits.to(dtype).to(device), uniforms.to(device)


def main(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    min_time = args.min_time / (10 if args.quick else 1)
    if dev.type == "cuda":
        dtype = torch.bfloat16
        batches, nodes, vocabs = (
            ([1, 8, 64], [8, 60], [32000, 128256, 151936]) if not args.quick else ([1, 8], [60], [32000, 128256])
        )
    else:
        dtype = torch.float32
        batches, nodes, vocabs = ([1, 4], [8], [32000]) if args.quick else ([1, 8], [8, 60], [32000, 128256])
    rows = []
    for V in vocabs:
        for B in batches:
            for N in nodes:
                tree, tokens, logits, uniforms = make_inputs(B, N, V, dtype, dev)
                out = sk.VerifyResult.empty(B, N, dev)
                for case, params in CASES.items():
                    if params is None:
                        op, args_ = (
                            "verify_greedy",
                            (tree.first_child, tree.next_sibling, tree.valid, tokens, logits, *out),
                        )
                        run = functools.partial(sk.verify_greedy, tree, tokens, logits, out=out)
                    else:
                        t, k, p = params
                        temp = torch.full((B,), t, dtype=torch.float32, device=dev)
                        top_k = torch.full((B,), k, dtype=torch.int32, device=dev)
                        top_p = torch.full((B,), p, dtype=torch.float32, device=dev)
                        op, args_ = (
                            "verify_sample",
                            (
                                tree.first_child,
                                tree.next_sibling,
                                tree.valid,
                                tokens,
                                logits,
                                uniforms,
                                temp,
                                top_k,
                                top_p,
                                None,
                                *out,
                            ),
                        )
                        run = functools.partial(
                            sk.verify_sample,
                            tree,
                            tokens,
                            logits,
                            uniforms,
                            temperature=temp,
                            top_k=top_k,
                            top_p=top_p,
                            out=out,
                        )
                    for backend in usable_backends(op, *args_):
                        if backend == "torch" and B * N * V > 64 * 60 * 32000 and dev.type == "cpu":
                            continue  # the reference's sorts over [B, V] take minutes here
                        med, best = time_stats(
                            functools.partial(run, backend=backend), dev, min_time=min_time, warmup=1
                        )
                        accepted = float(out.accept_len.float().mean())
                        rows.append(
                            {
                                "kernel": "verify",
                                "case": case,
                                "provider": backend,
                                "dtype": str(dtype)[6:],
                                "B": B,
                                "N": N,
                                "V": V,
                                "mean_accept_len": accepted,
                                "us": med,
                                "us_min": best,
                            }
                        )
                del logits, run, args_
    print_table(rows, ["case", "provider", "B", "N", "V", "mean_accept_len", "us", "us_min"])
    print("wrote", write_csv(rows, "verify", dev, results=args.results, out_dir=args.out_dir))


if __name__ == "__main__":
    main()
