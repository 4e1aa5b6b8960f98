"""Up to how many rows specdec_kernels' C++ linear beats oneDNN's prepacked bf16 linear, per weight shape:
measured once per machine, cached.

Where oneDNN's prepacked bf16 linear runs (AVX-512 BF16 / AMX CPUs, specdec.target.prepack) neither linear
is faster everywhere. Measured on an AMD EPYC with AVX-512 BF16 (2 threads, weights read from memory, bf16;
bench/results/linear_rows_avx512bf16_cpu.md): the kernel takes 0.35-0.6x the prepacked time at one row,
about the same at 4-16 rows for the [1536 x 576] projections, and 1.4x from 4 rows on for the [49152 x 576]
output layer, where oneDNN's blocked bf16 dot products pay. A decode step is one row, a tree's
verification 8-60 and a draft step a handful, so specdec's layers there hold both (kernel_linears.HybridLinear)
and take the kernel up to `kernel_rows(N, K, dtype)` rows.

`kernel_rows` times both at 1, 2, 4, ... 64 rows with the weight read from memory as in decoding (copies
rotated past the last-level cache), on the calling thread count, and returns the last row count of the
leading run where the kernel is faster (0 when it never is). The fastest of several rounds counts (a busy
machine's preemptions only ever add time). Cached in $SPECDEC_HOME/linear_rows.json under the CPU key of
specdec.machine_dtype (model name, ISA flags, torch version, thread count, the kernel's path) and the shape.
$SPECDEC_LINEAR_CHOICE decides without measuring: cpu -> every row count (64), torch -> 0.

`wide_rows` is the other end, for the layers that run the kernel alone (kernel_linears.KernelLinear: CPUs
without oneDNN's bf16 path, where torch's bf16 `linear` goes row by row): from about 5 rows the kernel is
compute-bound, converting each weight tile to fp32 for every 64 rows, and for a prefill of hundreds of rows
torch's fp32 linear (MKL / oneDNN sgemm) over the call widened to fp32 -- one conversion of the weight per
call -- is faster: on a 2.45 GHz AVX2-only AMD EPYC, 2 threads, bf16, at 512 rows the [1536 x 576],
[576 x 1536], [576 x 576] and [192 x 576] weights took 0.69-0.84x the kernel's time (6.6 / 5.4 / 2.4 / 1.0 ms
against 9.3 / 6.3 / 3.3 / 1.4), at 64 rows 1.06-1.35x. `wide_rows` times both at WIDE_ROWS and returns the
last row count of the leading run where the kernel is faster (at least 64: below it the kernel was measured
faster by specdec_kernels.ops.linear_choice), cached beside kernel_rows; $SPECDEC_LINEAR_CHOICE=cpu or torch:
no limit.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from ..files import read_json_store, specdec_home, store_json_entry
from ..machine_dtype import cpu_key

__all__ = ["ROWS", "WIDE_ROWS", "NO_LIMIT", "kernel_rows", "wide_rows", "cache_path"]

ROWS = (1, 2, 4, 8, 16, 32, 64)  # the kernel's blocking takes up to 64 rows per weight load
COLD_BYTES = 48 << 20  # weight copies per shape: more than the last-level cache of the CPUs measured (32 MB)
# A larger weight is timed on its first rows up to this size: both linears stream it from memory the same way
# beyond the cache, and an 8B model's [128k x 4096] output layer would otherwise cost 3 GB to measure.
MAX_BYTES = 64 << 20
ROUNDS = 7
WIDE_ROWS = (64, 128, 256, 512, 1024)  # a prefill's row counts, where the kernel may lose to torch's fp32 sgemm
# The wide comparison is compute-bound on both sides, so a weight is timed on its first WIDE_MAX_N rows: the
# time ratio does not depend on N (the conversion of the weight scales with N as the arithmetic does).
WIDE_MAX_N = 2048
NO_LIMIT = 1 << 40  # wide_rows when the kernel takes every call
WIDE_ROUNDS = 5

_MEMO: dict = {}  # key -> rows: one measurement (or cache read) per process


def cache_path() -> Path:
    """$SPECDEC_HOME/linear_rows.json (default ~/.cache/specdec)."""
    return specdec_home() / "linear_rows.json"


def _forced() -> str:
    """$SPECDEC_LINEAR_CHOICE ("cpu", "torch", or "" when unset); ValueError for another value."""
    forced = os.environ.get("SPECDEC_LINEAR_CHOICE", "")
    if forced and forced not in ("cpu", "torch"):
        raise ValueError(f"$SPECDEC_LINEAR_CHOICE: expected cpu or torch, got {forced!r}")
    return forced


def _round_timer(fn, weights: list, calls: int):
    turn = [0]

    def one_round() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(weights[turn[0] % len(weights)])
            turn[0] += 1
        return (time.perf_counter() - t0) / calls

    one_round()  # warm-up: oneDNN picks and caches its kernel for this shape
    return one_round


def measure(N: int, K: int, dtype: torch.dtype) -> dict:
    """{"rows": the last M of ROWS up to which the kernel stayed faster, "kernel_ms", "prepacked_ms": the
    times per call at the M measured (the first M where the kernel lost ends the measurement)}. A weight of
    more than MAX_BYTES is timed on its first MAX_BYTES of rows."""
    kernel = torch.ops.specdec.linear.default
    onednn = torch.ops.mkldnn._linear_pointwise
    g = torch.Generator().manual_seed(0)
    N = max(1, min(N, MAX_BYTES // (K * torch.finfo(dtype).bits // 8)))
    w = torch.randn(N, K, generator=g, dtype=dtype) * K**-0.5
    copies = -(-COLD_BYTES // (w.numel() * w.element_size()))
    weights = [w] + [w.clone() for _ in range(copies - 1)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(v, 1) for v in weights]
    rows, kernel_ms, packed_ms = 0, [], []
    with torch.no_grad():
        for M in ROWS:
            x = torch.randn(M, K, generator=g).to(dtype)
            out = torch.empty(M, N, dtype=dtype)
            calls = max(1, (1 << 22) // (N * K * M))  # rounds of about a millisecond or more
            timers = (
                _round_timer(lambda v, x=x, out=out: kernel(x, v, None, out), weights, calls),
                _round_timer(lambda v, x=x: onednn(x, v, None, "none", [], ""), packed, calls),
            )
            best = [min(t() for _ in range(ROUNDS)) for t in timers]
            kernel_ms.append(round(best[0] * 1e3, 4))
            packed_ms.append(round(best[1] * 1e3, 4))
            if best[0] >= best[1]:
                break
            rows = M
    return {"rows": rows, "M": list(ROWS[: len(kernel_ms)]), "kernel_ms": kernel_ms, "prepacked_ms": packed_ms}


def kernel_rows(N: int, K: int, dtype: torch.dtype, *, use_cache: bool = True, refresh: bool = False) -> int:
    """Up to how many rows the C++ kernel is faster than oneDNN's prepacked linear for an [N, K] weight of
    `dtype` on this machine (see the module docstring): 0 (never) or one of ROWS. The caller checks that both
    run here (specdec.target.prepack.prepack_available, specdec_kernels.ops.linear.linear_isas). refresh:
    measure again and store; use_cache=False: neither read nor write the cache."""
    forced = _forced()
    if forced:
        return ROWS[-1] if forced == "cpu" else 0
    key = f"{cpu_key()}|{str(dtype).replace('torch.', '')}|{N}x{K}"
    return _cached(key, (0, *ROWS), lambda: measure(N, K, dtype), use_cache, refresh)


def _cached(key: str, valid: tuple, measure_fn, use_cache: bool, refresh: bool) -> int:
    """The "rows" of `key`: from the memo, else from the cache file when one of `valid`, else measured by
    `measure_fn` (and stored); use_cache=False: neither read nor write; refresh: measure again and store."""
    if use_cache and not refresh and key in _MEMO:
        return _MEMO[key]
    store = read_json_store(cache_path()) if use_cache else {}
    entry = store.get(key) if use_cache and not refresh else None
    if not (isinstance(entry, dict) and entry.get("rows") in valid):
        entry = measure_fn()
        if use_cache:
            store_json_entry(cache_path(), key, entry)
    if use_cache:
        _MEMO[key] = entry["rows"]
    return entry["rows"]


def widened(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """torch's linear over the call widened to fp32, rounded back to x's dtype: fp32 products summed in fp32
    and one rounding, the kernel's arithmetic in another summation order (what a KernelLinear runs beyond
    its `kernel_rows`)."""
    if x.dtype == torch.float32:
        return torch.nn.functional.linear(x, weight, bias)
    b = None if bias is None else bias.float()
    return torch.nn.functional.linear(x.float(), weight.float(), b).to(x.dtype)


def measure_wide(N: int, K: int, dtype: torch.dtype) -> dict:
    """{"rows": the last M of WIDE_ROWS up to which the kernel stayed faster than `widened` (WIDE_ROWS[0] when
    it lost at once), "M", "kernel_ms", "widened_ms": the times per call at the M measured (the first M
    where the kernel lost ends the measurement)}. Timed on the weight's first WIDE_MAX_N rows."""
    kernel = torch.ops.specdec.linear.default
    g = torch.Generator().manual_seed(0)
    N = max(1, min(N, WIDE_MAX_N))
    w = (torch.randn(N, K, generator=g) * K**-0.5).to(dtype)
    rows, kernel_ms, wide_ms = WIDE_ROWS[0], [], []
    with torch.no_grad():
        for M in WIDE_ROWS:
            x = torch.randn(M, K, generator=g).to(dtype)
            out = torch.empty(M, N, dtype=dtype)
            calls = max(1, (1 << 24) // (N * K * M))
            timers = (
                _round_timer(lambda v, x=x, out=out: kernel(x, v, None, out), [w], calls),
                _round_timer(lambda v, x=x: widened(x, v), [w], calls),
            )
            best = [math.inf, math.inf]
            for _ in range(WIDE_ROUNDS):  # alternating: a busy machine's preemptions only ever add time
                best = [min(b, t()) for b, t in zip(best, timers)]
            kernel_ms.append(round(best[0] * 1e3, 4))
            wide_ms.append(round(best[1] * 1e3, 4))
            if best[0] >= best[1]:
                break
            rows = M
    if len(kernel_ms) == len(WIDE_ROWS) and kernel_ms[-1] < wide_ms[-1]:
        rows = NO_LIMIT
    return {"rows": rows, "M": list(WIDE_ROWS[: len(kernel_ms)]), "kernel_ms": kernel_ms, "widened_ms": wide_ms}


def wide_rows(N: int, K: int, dtype: torch.dtype, *, use_cache: bool = True, refresh: bool = False) -> int:
    """Up to how many rows the C++ kernel is faster than torch's linear widened to fp32 (`widened`) for an
    [N, K] weight of `dtype` here (module docstring): one of WIDE_ROWS, or NO_LIMIT when it was faster at
    every one. The caller checks that the kernel runs here. refresh: measure again and store; use_cache=False:
    neither read nor write the cache."""
    if _forced():
        return NO_LIMIT
    key = f"{cpu_key()}|{str(dtype).replace('torch.', '')}|{N}x{K}|widened"
    return _cached(key, (*WIDE_ROWS, NO_LIMIT), lambda: measure_wide(N, K, dtype), use_cache, refresh)
