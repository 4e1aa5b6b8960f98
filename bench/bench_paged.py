"""Benchmarks of the paged ops against the contiguous ones on the same data (decode shapes): tree attention
and acceptance compaction.

Attention: for each head shape (SmolLM2-135M: H = 9, H_kv = 3, D = 64; Llama-3-8B: H = 32, H_kv = 8, D = 128), prefix
(512, 4096), tree size N (8, 16, 64) and page size (1, 16), the K/V of B requests are laid out twice: as
the contiguous cache [B, H_kv, S_max, D] of tree_attention and on shuffled NHD pages with a block table
(vLLM's layout); plain decoding too (N = 1, DECODE_BATCH requests). Both are timed with the backend the
automatic choice takes for the paged op (and the same backend for the contiguous one); "paged_over_contiguous"
is their time ratio (the issue's target on a CPU: at most 1.25 at page size 16).

Compaction: the same shapes with every layer's K and V (30 layers for SmolLM2-135M, 32 for Llama-3-8B), the
accepted path the root-to-leaf chain of the binary tree (log2(N) + 1 nodes): compact_kv on the contiguous
caches against compact_paged_kv on the pages (one launch for all layers each); at page size 1 also
accept_slots, the copy-free alternative that rewrites a token-to-slot table instead of moving K/V.

    python bench/bench_paged.py --quick          # one shape per model, a smoke run
    python bench/bench_paged.py --results        # CSVs into bench/results/
    python bench/bench_paged.py --only compaction --results --threads 1 --clock thread   # + a markdown table
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

from common import add_common_args, env_info, load_average, print_table, time_fn, write_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = {"smollm2-135m": (9, 3, 64), "llama-3-8b": (32, 8, 128)}
LAYERS = {"smollm2-135m": 30, "llama-3-8b": 32}
DECODE_BATCH = 16  # requests of the plain-decoding attention shapes (N = 1)


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


def bench_shape(model, B, prefix, N, page_size, dtype, device, timing: dict) -> dict:
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
        **timing,
    )
    contiguous = time_fn(
        lambda: sk.tree_attention(q, k, v, cache_len, tree.mask, backend=backend, out=out), device, **timing
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
        clock=timing["clock"],
    )


def _backend_for(op: str, device: str) -> str:
    """The compiled backend of `op` on `device` ("cpu" on a CPU; "cuda" on a GPU when built, else "triton")."""
    if torch.device(device).type == "cpu":
        return "cpu"
    return "cuda" if "cuda" in sk.get_op(op).backends else "triton"


def binary_tree_path(N: int) -> list:
    """The root-to-leaf chain 0, 1, 3, 7, ... of the binary tree whose node i has parent (i - 1) // 2."""
    path = [0]
    while 2 * path[-1] + 1 < N:
        path.append(2 * path[-1] + 1)
    return path


def bench_compaction(model, B, prefix, N, page_size, dtype, device, timing: dict) -> dict:
    """compact_kv on contiguous caches vs compact_paged_kv on pages, every layer's K and V in one call."""
    _, H_kv, D = HEADS[model]
    S = prefix + N
    g = torch.Generator().manual_seed(0)
    contiguous, pages = [], []
    for _ in range(2 * LAYERS[model]):
        t = torch.randn(B, H_kv, S, D, generator=g).to(dtype).to(device)
        p, table = paged_copy(t, page_size)
        contiguous.append(t)
        pages.append(p)
    path = binary_tree_path(N)
    nodes = torch.full((B, len(path)), -1, dtype=torch.int32)
    nodes[:] = torch.tensor(path, dtype=torch.int32)
    nodes = nodes.to(device)
    accept_len = torch.full((B,), len(path), dtype=torch.int32, device=device)
    cache_len = torch.full((B,), prefix, dtype=torch.int32, device=device)
    backend = _backend_for("compact_paged_kv", device)
    # A valid path moves each source to a destination at or below it: repeating the call is a fair timing.
    paged = time_fn(
        lambda: sk.compact_paged_kv(pages, table, cache_len, nodes, accept_len, backend=backend),
        device,
        **timing,
    )
    flat = time_fn(lambda: sk.compact_kv(contiguous, cache_len, nodes, accept_len, backend=backend), device, **timing)
    row = dict(
        model=model,
        backend=backend,
        B=B,
        prefix=prefix,
        N=N,
        accepted=len(path),
        page_size=page_size,
        layers=LAYERS[model],
        paged_us=paged,
        contiguous_us=flat,
        paged_over_contiguous=paged / flat,
        bytes_moved=2 * LAYERS[model] * B * (len(path) - 1) * H_kv * D * contiguous[0].element_size(),
        accept_slots_us=float("nan"),
        threads=torch.get_num_threads(),
        clock=timing["clock"],
    )
    if page_size == 1:  # SGLang's layout: rewrite the token-to-slot table instead of moving K/V
        table = torch.arange(B * S, dtype=torch.int32, device=device).view(B, S)
        row["accept_slots_us"] = time_fn(
            lambda: sk.accept_slots(table.clone(), cache_len, N, nodes, accept_len), device, **timing
        )
    return row


MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M", "llama-3-8b": "Llama-3-8B"}


def _fmt(x: float) -> str:
    return "-" if x != x else (f"{x:,.0f}" if x >= 100 else f"{x:.3g}")


def compaction_markdown(rows: list, args, load_before: str, load_after: str, csv_path: str) -> str:
    """The compaction table with what it was measured on (CPU model, ISA flags, threads, load, clock)."""
    env = env_info(args.device)
    on_cpu = torch.device(args.device).type == "cpu"
    where = (
        f"{env['device']}, ISA flags: {env['isa']}" if on_cpu else env["device"]
    ) + f"; torch {env['torch']}, commit {env['commit']}, {env['date']}"
    clock = "CPU time of the calling thread (time.thread_time)" if args.clock == "thread" else "wall time"
    opts = (("device", args.device), ("threads", args.threads), ("clock", args.clock), ("out-dir", args.out_dir))
    cmd = "python bench/bench_paged.py --only compaction" + " --results" * args.results
    cmd += "".join(f" --{k} {v}" for k, v in opts if v)
    lines = [
        f"# Paged vs contiguous acceptance compaction, {args.device} (issue 21)",
        "",
        f"`{cmd}` ({args.dtype}, B = {args.batch}; the accepted path is the root-to-leaf chain of a binary tree of "
        "N nodes, log2(N) + 1 nodes; every layer's K and V in one call: 30 layers for SmolLM2-135M, 32 for "
        "Llama-3-8B). compact_kv moves the accepted rows of contiguous caches, compact_paged_kv those of shuffled "
        "NHD pages through the block table; accept_slots (page size 1 only) rewrites a token-to-slot table "
        "instead of moving K/V (its time includes a clone of the [B, S] table, as each call rewrites it).",
        "",
        f"Measured on {where}. Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after}. "
        f"Times: medians of 7 batches of {clock}, microseconds. CSV: `{os.path.relpath(csv_path, REPO)}`.",
        "",
        "| model heads (H_kv / D) | prefix | N | accepted | page size | paged | contiguous | paged / contiguous "
        "| accept_slots | moved (KiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        _, H_kv, D = HEADS[r["model"]]
        lines.append(
            f"| {MODEL_NAMES[r['model']]} ({H_kv} / {D}) | {r['prefix']} | {r['N']} | {r['accepted']} | "
            f"{r['page_size']} | {_fmt(r['paged_us'])} | {_fmt(r['contiguous_us'])} | "
            f"{r['paged_over_contiguous']:.2f} | {_fmt(r['accept_slots_us'])} | {r['bytes_moved'] / 1024:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default: torch's)")
    parser.add_argument("--only", choices=["attention", "compaction"], default=None, help="one of the two benchmarks")
    parser.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="wall time, or the CPU time of the calling thread (CPU, --threads 1: steadier on a loaded machine)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch_dtype(args.dtype)
    prefixes = [512] if args.quick else [512, 4096]
    nodes = [16] if args.quick else [8, 16, 64]
    timing = dict(min_time=args.min_time / (10 if args.quick else 1), clock=args.clock)
    shapes = [(m, p, n, ps) for m in HEADS for p in prefixes for n in nodes for ps in (1, 16)]
    cols = ["model", "backend", "B", "prefix", "N", "page_size", "paged_us", "contiguous_us", "paged_over_contiguous"]
    if args.only in (None, "attention"):
        rows = [bench_shape(m, args.batch, p, n, ps, dtype, args.device, timing) for m, p, n, ps in shapes]
        # Plain decoding: one query per request, DECODE_BATCH requests (the row path of the CPU kernel).
        rows += [
            bench_shape(m, DECODE_BATCH, p, 1, ps, dtype, args.device, timing)
            for m in HEADS
            for p in prefixes
            for ps in (1, 16)
        ]
        print(f"paged vs contiguous tree attention on {args.device} ({args.dtype}, B={args.batch}): microseconds")
        print_table(rows, cols, floatfmt="{:.3g}")
        path = write_csv(rows, "paged_attention", args.device, results=args.results, out_dir=args.out_dir)
        print(f"wrote {path}")
    if args.only in (None, "compaction"):
        load_before = load_average()
        rows = [bench_compaction(m, args.batch, p, n, ps, dtype, args.device, timing) for m, p, n, ps in shapes]
        load_after = load_average()
        print(f"paged vs contiguous compaction on {args.device} ({args.dtype}, B={args.batch}): microseconds")
        print_table(rows, cols[:5] + ["accepted"] + cols[5:] + ["accept_slots_us"], floatfmt="{:.3g}")
        path = write_csv(rows, "paged_compaction", args.device, results=args.results, out_dir=args.out_dir)
        md = os.path.splitext(path)[0] + ".md"
        with open(md, "w") as fh:
            fh.write(compaction_markdown(rows, args, load_before, load_after, path))
        print(f"wrote {path} and {md}")


if __name__ == "__main__":
    main()
