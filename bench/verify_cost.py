"""The target's verify cost against the tree size N on the CPU, for each way of running its linears.

What decides whether a tree can pay: a verification of N nodes against one plain step (N = 1). Providers:
`torch` (the model's nn.Linear layers as loaded), `kernel` (specdec_kernels' C++ linear in specdec's passes,
specdec.target.kernel_linears) and, where oneDNN's bf16 path runs, `prepacked` (specdec.target.prepack).
Timing is specdec.decoding.budget.time_verify: the median of `--repeats` verifications of a chain of N nodes
after a 300-token prefill, batch 1, the default target.

`--transformers-layers` adds, for every provider, the same target with its decoder layers run by transformers'
own forward (TargetModel(lean=False)) instead of specdec.target.lean_layers (the default): the per-layer
machinery that the lean path skips, as a time per verification. `--ungrouped` adds the kernel with one call
per linear: the lean path without its grouped calls (a layer's q/k/v in one kernel call, its gate/up in
another; specdec.target.kernel_linears.KernelLinearGroup).

To see what an AVX2-only CPU does (no AVX-512, no bf16 instructions), hold torch and the kernel to AVX2:
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 SPECDEC_LINEAR_ISA=avx2 python bench/verify_cost.py --tag
avx2-only` (the table header records these variables; bench/results/verify_cost_avx2-only_cpu.md).

    python bench/verify_cost.py --results --threads 1,2     # writes bench/results/verify_cost_<tag>_cpu.md
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from specdec.decoding.budget import time_verify
from specdec.loading import load_target
from specdec.target import TargetModel, lean_layers
from specdec.target.kernel_linears import plain_linears, use_kernel_linears
from specdec.target.prepack import prepack_available, prepack_linears, unpack_linears
from specdec_kernels.ops import linear as lin

from common import OUT_DIR, RESULTS_DIR, cpu_flags, env_info, load_average

HF = " (transformers layers)"  # the suffix of a provider run with TargetModel(lean=False)
UNGROUPED = "kernel, one call per linear"  # --ungrouped
ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "SPECDEC_LINEAR_ISA", "OMP_NUM_THREADS")


def run_provider(model, provider: str, Ns, context: int, repeats: int, lean: bool = True) -> dict:
    """{N: seconds} with the model's linears set up as `provider` says, restored afterwards; lean=False runs
    transformers' own decoder forward (TargetModel(lean=False)); provider UNGROUPED is the kernel with the lean
    path's grouped calls off (lean_layers.GROUP_KERNEL_LINEARS)."""
    if provider == UNGROUPED:
        lean_layers.GROUP_KERNEL_LINEARS = False
        try:
            return run_provider(model, "kernel", Ns, context, repeats, lean)
        finally:
            lean_layers.GROUP_KERNEL_LINEARS = True
    if provider == "kernel":
        forced = os.environ.get("SPECDEC_LINEAR_CHOICE")
        os.environ["SPECDEC_LINEAR_CHOICE"] = "cpu"  # this row is the kernel's, whatever the automatic choice
        try:
            use_kernel_linears(model)
        finally:
            if forced is None:
                del os.environ["SPECDEC_LINEAR_CHOICE"]
            else:
                os.environ["SPECDEC_LINEAR_CHOICE"] = forced
    elif provider == "prepacked":
        prepack_linears(model)
    try:
        return time_verify(TargetModel(model, lean=lean), Ns, context=context, repeats=repeats)
    finally:
        plain_linears(model)
        unpack_linears(model)


def markdown(table, args, providers, load_before, load_after) -> str:
    env = env_info("cpu")
    set_vars = ", ".join(f"{v}={os.environ[v]}" for v in ENV_VARS if os.environ.get(v)) or "none"
    flags = cpu_flags()
    lines = [
        f"# The target's verify cost against the tree size N{' (' + args.tag + ')' if args.tag else ''}",
        "",
        f"{env['device'].split(' (')[0]}, ISA flags: {flags}; {os.cpu_count()} cores; torch {env['torch']}; "
        f"commit {env['commit']}, {env['date']}. Environment: {set_vars}. Linear kernel path: {lin.linear_isa()}. "
        f"Target: {args.target}, {args.dtype}, batch 1, {args.context}-token context, median of {args.repeats}.",
        f"Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after}.",
        "",
        "Each cell: ms per verification, and in parentheses its cost in plain steps of the same provider "
        "(time / time at N = 1); the kernel column adds its speedup over torch at that N.",
    ]
    for threads in args.threads:
        lines += ["", f"## {threads} thread(s)", "", "| N | " + " | ".join(providers) + " |"]
        lines.append("|---|" + "---|" * len(providers))
        for N in args.ns:
            cells = []
            for p in providers:
                t, t1 = table[threads][p][N], table[threads][p][1]
                extra = f", {table[threads]['torch'][N] / t:.2f}x torch" if p != "torch" else ""
                if p.endswith(HF):  # the same provider with the lean layers, against this one
                    extra = f", lean {t / table[threads][p[: -len(HF)]][N]:.2f}x faster"
                if p == UNGROUPED:
                    extra = f", grouped {t / table[threads]['kernel'][N]:.2f}x faster"
                cells.append(f"{t * 1e3:.1f} ({t / t1:.2f}{extra})")
            lines.append(f"| {N} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="default")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--ns", default="1,2,4,8,16,32,64", help="tree sizes N, comma-separated (1 first)")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", action="store_true", help="write into bench/results (committed)")
    parser.add_argument("--tag", default="", help="a suffix of the output file (verify_cost_<tag>_cpu.md)")
    parser.add_argument(
        "--transformers-layers",
        action="store_true",
        help="also time every provider with transformers' own decoder forward (TargetModel(lean=False))",
    )
    parser.add_argument(
        "--ungrouped",
        action="store_true",
        help="also time the kernel with one call per linear (the lean path's grouped q/k/v and gate/up calls off)",
    )
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.ns = [int(n) for n in args.ns.split(",")]
    if args.ns[0] != 1:
        raise SystemExit("--ns: expected 1 first (every cell is compared with N = 1)")
    providers = ["torch"] + (["kernel"] if lin.linear_isas() else [])
    dtype = getattr(torch, args.dtype)
    if dtype == torch.bfloat16 and prepack_available():
        providers.append("prepacked")
    if args.ungrouped and "kernel" in providers:
        providers.insert(providers.index("kernel") + 1, UNGROUPED)
    if args.transformers_layers:
        providers = [q for p in providers for q in (p, p + HF)]
    model = load_target(args.target, dtype=dtype, tokenizer=False).model
    load_before = load_average()
    table = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        table[threads] = {}
        for p in providers:
            lean = not p.endswith(HF)
            table[threads][p] = run_provider(model, p.removesuffix(HF), args.ns, args.context, args.repeats, lean)
            print(f"{threads}t {p}: " + ", ".join(f"N={n} {t * 1e3:.1f} ms" for n, t in table[threads][p].items()))
    folder = RESULTS_DIR if args.results else OUT_DIR
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"verify_cost{'_' + args.tag if args.tag else ''}_cpu.md")
    with open(path, "w") as f:
        f.write(markdown(table, args, providers, load_before, load_average()))
    print("wrote", path)


if __name__ == "__main__":
    main()
