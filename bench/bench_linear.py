"""Benchmark of linear on the CPU: the C++ kernel (each instruction-set path asked for) vs torch's `linear`.

Shapes: the default target's layers (SmolLM2-135M: q/o 576x576, k/v 192x576, gate/up 1536x576, down
576x1536, the tied output layer 49152x576) and the draft heads' 8192-row output layer, for M = 1, 2, 4, 8,
16, 32, 64 rows (a decode step, a tree of M nodes), bf16 and fp32, 1 and 2 threads. Providers: `torch`
(torch.nn.functional.linear, the reference and the fallback) and `cpu-<path>` (specdec_kernels.linear with
its kernel forced onto <path>; default: the path cpuid chose, and avx2), and for bf16 where oneDNN's bf16
path runs, `onednn-prepacked` (oneDNN's linear on a weight reordered once, what specdec's target runs today:
python/specdec/target/prepack.py).

Every call reads its weight from memory (calls rotate over copies of it filling 96 MB, beyond the last-level
cache), as in a decode pass. Bandwidth: "weights GB/s" counts the weight bytes one call must read
(N * K * itemsize) over the fastest batch's time per call, compared with the machine's read bandwidth
measured here (a sum over 512 MB, per thread count; a 512 MB copy, read + write, is reported beside it).
On a machine shared with other work the fastest batch is the better estimate; the median is reported
too, and the load average before and after.

To see what an AVX2-only CPU does (no AVX-512, no bf16 instructions), run it again with torch held to AVX2:
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_linear.py --paths avx2 --tag avx2-only`
(ATen's own kernels and oneDNN then use AVX2 only; the table header records these variables).

    python bench/bench_linear.py --results          # writes bench/results/linear_cpu.{csv,md}
    python bench/bench_linear.py --quick            # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specdec_kernels as sk
from specdec.target.prepack import prepack_available
from specdec_kernels.ops import linear as lin

from common import OUT_DIR, RESULTS_DIR, add_common_args, cpu_flags, env_info, load_average, time_stats, write_csv

# (name, N, K) of SmolLM2-135M's layers and the draft head's output layer.
SHAPES = [
    ("q/o 576x576", 576, 576),
    ("k/v 192x576", 192, 576),
    ("gate/up 1536x576", 1536, 576),
    ("down 576x1536", 576, 1536),
    ("lm_head 49152x576", 49152, 576),
    ("draft lm_head 8192x576", 8192, 576),
]
MS = [1, 2, 4, 8, 16, 32, 64]
# Bytes of weight copies each case rotates through: more than the last-level cache (32 MB here), so that every
# call reads its weight from memory, as a decode pass does (270 MB of bf16 weights per pass of the target).
COLD_BYTES = 96 << 20
# CPU flags worth recording with a CPU result (what the paths and torch's oneDNN can use).
ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "SPECDEC_LINEAR_ISA", "OMP_NUM_THREADS")


def memory_bandwidth(min_time: float) -> dict:
    """GB/s of a read-only pass (a sum) and of a copy (read + write) over 512 MB, at the current thread count."""
    src = torch.ones(128 << 20)  # 512 MB of fp32
    dst, acc = torch.empty_like(src), torch.empty(())
    t_read = time_stats(lambda: torch.sum(src, dim=0, out=acc), min_time=min_time, repeats=5)[1]
    t_copy = time_stats(lambda: dst.copy_(src), min_time=min_time, repeats=5)[1]
    nbytes = src.numel() * 4
    return {"read": nbytes / t_read / 1e3, "copy": 2 * nbytes / t_copy / 1e3}


def bench_case(name, N, K, dtype, M, paths, min_time, read_bw) -> list:
    """Rows (one per provider) of one shape, dtype and M at the current thread count."""
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(N, K, generator=gen) * K**-0.5).to(dtype)
    x = torch.randn(M, K, generator=gen).to(dtype)
    out = torch.empty(M, N, dtype=dtype)
    weight_bytes = N * K * w.element_size()
    # Copies of the weight filling COLD_BYTES, called in turn: each call finds its weight out of cache.
    ws = [w] + [w.clone() for _ in range(max(0, -(-COLD_BYTES // weight_bytes) - 1))]
    nxt = itertools.cycle(ws).__next__
    runs = [("torch", None, lambda: torch.nn.functional.linear(x, nxt()))]
    if dtype == torch.bfloat16 and prepack_available():  # what specdec's target runs today on such CPUs
        packed = [torch.ops.mkldnn._reorder_linear_weight(c, 1) for c in ws]
        nxt_packed = itertools.cycle(packed).__next__
        pointwise = torch.ops.mkldnn._linear_pointwise
        runs.append(("onednn-prepacked", None, lambda: pointwise(x, nxt_packed(), None, "none", [], "")))
    runs += [(f"cpu-{p}", p, lambda: sk.linear(x, nxt(), out=out, backend="cpu")) for p in paths]
    rows = []
    for provider, path, fn in runs:
        if path is not None:
            before = lin.set_linear_isa(path)
        try:
            med, best = time_stats(fn, min_time=min_time)
        finally:
            if path is not None:
                lin.set_linear_isa(before)
        gbps = weight_bytes / best / 1e3
        rows.append(
            {
                "shape": name,
                "N": N,
                "K": K,
                "dtype": str(dtype).replace("torch.", ""),
                "M": M,
                "threads": torch.get_num_threads(),
                "provider": provider,
                "ms_median": med / 1e3,
                "ms_min": best / 1e3,
                "weights_GBps": gbps,
                "frac_read_bw": gbps / read_bw,
            }
        )
    return rows


def markdown(rows, bw, args, load_before, load_after, paths) -> str:
    env = env_info("cpu")
    set_vars = ", ".join(f"{v}={os.environ[v]}" for v in ENV_VARS if os.environ.get(v)) or "none"
    lines = [
        f"# linear on the CPU: the C++ kernel vs torch's linear{' (' + args.tag + ')' if args.tag else ''}",
        "",
        f"{env['device'].split(' (')[0]}, ISA flags: {cpu_flags()}; {os.cpu_count()} cores; torch {env['torch']}; "
        f"commit {env['commit']}, {env['date']}. Environment: {set_vars}. Kernel paths run: {', '.join(paths)} "
        f"(cpuid's choice here: {lin.linear_isas()[-1] if lin.linear_isas() else 'none'}).",
        f"Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after} (the machine's 2 cores are shared "
        "with other work: times are the fastest of 7 batches).",
        "",
        "Measured memory bandwidth (512 MB): "
        + "; ".join(f"{t} thread(s): read {b['read']:.1f} GB/s, copy {b['copy']:.1f} GB/s" for t, b in bw.items())
        + f". Every call reads its weight from memory, as in a decode pass: calls rotate over copies of the weight "
        f"filling {COLD_BYTES >> 20} MB (more than the last-level cache).",
        "",
        "Each cell: ms per call (fastest batch), and for the kernel its speedup over torch and the weight bytes read "
        "per call as GB/s and as a fraction of the measured read bandwidth.",
    ]
    providers = ["torch"] + [f"cpu-{p}" for p in paths]
    if any(r["provider"] == "onednn-prepacked" for r in rows):
        providers.insert(1, "onednn-prepacked")
    for threads in args.threads:
        for dtype in args.dtypes:
            lines += ["", f"## {dtype}, {threads} thread(s)", ""]
            lines.append("| shape | M | " + " | ".join(providers) + " |")
            lines.append("|---|---|" + "---|" * len(providers))
            sel = [r for r in rows if r["threads"] == threads and r["dtype"] == dtype]
            for name, _, _ in SHAPES:
                for M in args.ms:
                    cell = {r["provider"]: r for r in sel if r["shape"] == name and r["M"] == M}
                    if not cell:
                        continue
                    t = cell["torch"]["ms_min"]
                    cells = [f"{t:.3f}"]
                    for p in providers[1:]:
                        r = cell.get(p)
                        if r is None:
                            cells.append("")
                            continue
                        cells.append(
                            f"{r['ms_min']:.3f} ({t / r['ms_min']:.2f}x, {r['weights_GBps']:.1f} GB/s, "
                            f"{r['frac_read_bw']:.0%})"
                        )
                    lines.append(f"| {name} | {M} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--paths", default=None, help="kernel paths to force (default: cpuid's choice and avx2)")
    parser.add_argument("--tag", default="", help="a suffix of the output files (linear_cpu_<tag>.{csv,md})")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.dtypes = args.dtypes.split(",")
    args.ms = [int(m) for m in args.ms.split(",")]
    isas = lin.linear_isas()
    if not isas:
        raise SystemExit("the C++ linear kernel is not loaded (build specdec_kernels._C first)")
    paths = args.paths.split(",") if args.paths else list(dict.fromkeys([isas[-1], "avx2"]))
    paths = [p for p in paths if p in isas]
    min_time = args.min_time / (10 if args.quick else 1)
    shapes = SHAPES[:3] if args.quick else SHAPES
    load_before = load_average()
    rows, bandwidth = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        bandwidth[threads] = memory_bandwidth(min_time)
        for name, N, K in shapes:
            for dtype in args.dtypes:
                for M in args.ms:
                    read_bw = bandwidth[threads]["read"]
                    rows += bench_case(name, N, K, getattr(torch, dtype), M, paths, min_time, read_bw)
                    r = [x for x in rows if x["shape"] == name and x["M"] == M and x["threads"] == threads]
                    r = [x for x in r if x["dtype"] == dtype]
                    print(
                        f"{threads}t {dtype} {name} M={M}: "
                        + ", ".join(f"{x['provider']} {x['ms_min']:.3f} ms" for x in r),
                        flush=True,
                    )
    load_after = load_average()
    stem = "linear" + (f"_{args.tag}" if args.tag else "")
    folder = args.out_dir or (RESULTS_DIR if args.results else OUT_DIR)
    for r in rows:
        r["load_before"], r["load_after"] = load_before, load_after
    print("wrote", write_csv(rows, stem, "cpu", out_dir=folder))
    md = os.path.join(folder, f"{stem}_cpu.md")
    with open(md, "w") as f:
        f.write(markdown(rows, bandwidth, args, load_before, load_after, paths))
    print("wrote", md)


if __name__ == "__main__":
    main()
