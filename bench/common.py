"""Helpers shared by the microbenchmarks: timing, environment description, CSV output, a printed table.

Timing never includes allocation: a benchmark allocates inputs and outputs first and times a closure
that writes into them. On CUDA the time comes from CUDA events around a loop of calls (launch overhead
included, as a decode step pays it); on CPU from time.perf_counter. Results are written as CSV rows with
the device, torch/triton versions, git commit and date, to bench/out/ (git-ignored) by default or to
bench/results/ (committed) on request.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import subprocess
import time
from typing import Callable, Iterable, Optional, Sequence

import torch

from specdec.devices import default_device, synchronize
from specdec_kernels import cpu_info
from specdec_kernels.cpu_info import cpu_model

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(BENCH_DIR, "out")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--device, --quick, --results, --out-dir: the options every benchmark takes."""
    parser.add_argument(
        "--device",
        default=str(default_device()),
        help="device of the inputs (default: cuda when available)",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: few shapes, few repetitions")
    parser.add_argument(
        "--results",
        action="store_true",
        help=f"write the CSV into {os.path.relpath(RESULTS_DIR)} (committed) instead of bench/out",
    )
    parser.add_argument("--out-dir", default=None, help="write the CSV into this folder instead")
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.2,
        help="seconds of repetitions per measurement (after warm-up); --quick divides by 10",
    )
    return parser


def usable_backends(op_name: str, *kernel_args) -> list:
    """The backends of `specdec_kernels.get_op(op_name)` that accept these kernel arguments (those without an
    entry in `.reasons(*kernel_args)`), in the order of the automatic choice. Triton on CPU tensors (the
    interpreter, under TRITON_INTERPRET=1) is left out: a testing tool, not something to time."""
    import specdec_kernels as sk

    op = sk.get_op(op_name)
    reasons = op.reasons(*kernel_args)
    flat = [t for a in kernel_args for t in (a if isinstance(a, (list, tuple)) else [a])]
    on_cpu = next((t.device.type for t in flat if isinstance(t, torch.Tensor)), "cpu") == "cpu"
    return [b for b in op.backends if b not in reasons and not (b == "triton" and on_cpu)]


def time_fn(fn: Callable[[], object], device="cpu", **kwargs) -> float:
    """Median time of one call of `fn`, in microseconds (see time_stats)."""
    return time_stats(fn, device, **kwargs)[0]


def time_stats(
    fn: Callable[[], object],
    device="cpu",
    *,
    min_time: float = 0.2,
    warmup: int = 3,
    max_iters: int = 10_000,
    repeats: int = 7,
    clock: str = "wall",
) -> tuple:
    """(median, min) time of one call of `fn`, in microseconds.

    `fn` must not allocate what it should not be charged for (pass preallocated outputs). The calls are
    grouped in `repeats` batches of equal size, sized so that all together take about `min_time`
    seconds; each batch gives a mean time per call. The median over batches is robust to outliers; the
    minimum is the better estimate on a machine shared with other work.

    clock="thread" (CPU, one torch thread: all the work runs on the calling thread) counts the CPU time of
    the calling thread instead of wall time: time spent descheduled while other processes run is not
    charged, so it is the steadier measure on a loaded machine (memory-bandwidth contention still shows).
    """
    is_cuda = torch.device(device).type == "cuda"
    if clock not in ("wall", "thread"):
        raise ValueError(f"clock must be 'wall' or 'thread', got {clock!r}")
    if clock == "thread" and (is_cuda or torch.get_num_threads() != 1):
        raise ValueError("clock='thread' times the calling thread: CPU tensors and torch.set_num_threads(1) only")
    now = time.thread_time if clock == "thread" else time.perf_counter
    for _ in range(warmup):
        fn()
    synchronize(device)
    # Size the batches from one timed call (at least 1 call per batch).
    t0 = now()
    fn()
    synchronize(device)
    one = max(now() - t0, 1e-7)
    per_batch = int(max(1, min(max_iters // repeats, (min_time / repeats) / one)))
    times = []
    for _ in range(repeats):
        if is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(per_batch):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / per_batch)
        else:
            t0 = now()
            for _ in range(per_batch):
                fn()
            times.append((now() - t0) * 1e6 / per_batch)
    return statistics.median(times), min(times)


ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "avx512_vnni")


def cpu_flags() -> str:
    """The CPU's flags of ISA_FLAGS, space-separated ("unknown" where /proc/cpuinfo gives none)."""
    flags = cpu_info.cpu_flags(ISA_FLAGS)
    return "unknown" if flags is None else " ".join(flags)


def load_average() -> str:
    """The load average over 1 / 5 / 15 minutes ("unknown" where the OS does not say)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def device_name(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def git_commit() -> str:
    """Short commit of the checkout (+ "-dirty"); SPECDEC_COMMIT overrides it for copies without .git (the
    device machine gets the working tree only)."""
    if os.environ.get("SPECDEC_COMMIT"):
        return os.environ["SPECDEC_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_info(device) -> dict:
    """Columns that identify where and on what a result was measured."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = ""
    on_cpu = torch.device(device).type == "cpu"
    return {
        "device": device_name(device),
        "isa": cpu_flags() if on_cpu else "",
        "load": load_average(),  # when the results are written: 1 / 5 / 15 minutes
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "triton": triton_version,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_csv(rows: Sequence[dict], name: str, device, *, results: bool = False, out_dir: Optional[str] = None) -> str:
    """Write `rows` (dicts with the same keys) plus env_info columns to <dir>/<name>_<device>.csv; return the path."""
    folder = out_dir or (RESULTS_DIR if results else OUT_DIR)
    os.makedirs(folder, exist_ok=True)
    env = env_info(device)
    path = os.path.join(folder, f"{name}_{torch.device(device).type}.csv")
    fields = list(rows[0].keys()) + list(env.keys()) if rows else list(env.keys())
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **env})
    return path


def print_table(rows: Iterable[dict], columns: Sequence[str], floatfmt: str = "{:.1f}") -> None:
    """A fixed-width table of `columns` of `rows` on stdout."""
    rows = list(rows)
    cells = [
        [floatfmt.format(r.get(c)) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns] for r in rows
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


# Peak DRAM bandwidth in GB/s by device-name fragment (first match wins), for "fraction of bandwidth".
PEAK_GBPS = [
    ("H200", 4800.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("A10", 600.0),
    ("L4", 300.0),
]


def peak_gbps(device, override: Optional[float] = None) -> Optional[float]:
    """Memory bandwidth to compare against: `override` (--peak-gbps), else a known GPU's, else None."""
    if override:
        return override
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for frag, bw in PEAK_GBPS if frag in name), None)
