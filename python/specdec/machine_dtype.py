"""The faster compute dtype of this CPU, bf16 or fp32, measured once and cached.

Whether bf16 pays on a CPU depends on its instructions: with AVX-512 BF16 or AMX, oneDNN's bf16 matmuls
read half the bytes of fp32 and run at least as fast; on an AVX2-only CPU torch widens bf16 row by row, so
a bf16 `linear` over M rows costs about M one-row calls (measured on an AVX2 AMD EPYC: prefill 55 tokens/s
in bf16 against 479 in fp32). Reading ISA flags would miss what the installed torch actually does, so
`fastest_cpu_dtype` times what the commands spend their time on: a target-sized `linear` (576 -> 1536) at
M = 1 (a decode step), 16 (a tree's verification, a batch of answers) and 256 rows (prefill, training),
in both dtypes, the weights read from memory as in decoding (not from the cache), and takes bf16 when the
geometric mean of its time ratios to fp32 is below 1. Each dtype's linear is the one specdec's passes run:
specdec_kernels' C++ linear where it measured faster than torch's for that dtype
(specdec.target.kernel_linears; on an AVX2-only CPU it makes bf16 the faster dtype), else torch's.
Training (`training=True`) is measured apart, on torch's forward `linear` at the same row counts as a
proxy for autograd's (which never runs the kernel): on an AVX2-only CPU torch's bf16 is slow forward and
backward alike -- measured separately, bf16 autocast took 2.14 s for a 2,048-row 576 -> 1536 forward and
backward on one thread against 0.135 s in fp32, and trained an FSPAD head at 42 tokens/s against 690 --
so there training picks fp32.
The answer is cached in $SPECDEC_HOME/compute_dtype.json under the CPU's model name, its bf16-relevant flags,
the torch version, the thread count and the linear kernel's path and build, beside the tree budget's cost cache.
$SPECDEC_CPU_DTYPE (bfloat16 or float32) overrides the measurement, e.g. to keep one dtype across machines of
different kinds.

Example:
    >>> from specdec.machine_dtype import fastest_cpu_dtype
    >>> fastest_cpu_dtype(use_cache=False) in ("bfloat16", "float32")
    True
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Dict

from specdec_kernels.cpu_info import cpu_flags, cpu_model

from .files import read_json_store, specdec_home, store_json_entry

ROWS = (1, 16, 256)  # M of the timed linear: a decode step, a tree or a batch, a prefill chunk
SHAPE = (1536, 576)  # the default target's MLP up projection (N, K)
COLD_BYTES = 48 << 20  # weight copies per dtype: more than the last-level cache of the CPUs measured (32 MB)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cache_path() -> Path:
    """$SPECDEC_HOME/compute_dtype.json (default ~/.cache/specdec)."""
    return specdec_home() / "compute_dtype.json"


def cpu_key(training: bool = False) -> str:
    """What decides the answer: the CPU model name, its bf16-relevant ISA flags, torch's version, the
    number of torch threads and the C++ linear kernel's path and build (linear_kernel_id: a rebuilt kernel is
    measured again; "none" without specdec_kernels._C), or for `training` "linear torch (training)"."""
    import torch

    from specdec_kernels.ops.linear_choice import linear_kernel_id

    name, flags = cpu_model(), cpu_flags(FLAGS) or []
    threads = torch.get_num_threads()
    linear = "torch (training)" if training else linear_kernel_id()
    return f"{name}|{','.join(flags)}|torch {torch.__version__}|threads {threads}|linear {linear}"


def _linear_of(dtype, training: bool = False):
    """The linear specdec's passes run in `dtype`, as a function (x, w, out): the C++ kernel's op where it
    measured faster than torch's linear here (specdec_kernels.ops.linear_choice), else torch's; always
    torch's for `training` (autograd)."""
    import torch

    from specdec_kernels.ops import linear as linear_op
    from specdec_kernels.ops import linear_choice

    if not training and linear_op.linear_isas() and linear_choice.faster_backend(dtype)["backend"] == "cpu":
        op = torch.ops.specdec.linear.default
        return lambda x, w, out: op(x, w, None, out)
    return lambda x, w, out: torch.nn.functional.linear(x, w, out=out)


def _weights(dtype) -> list:
    """Copies of a SHAPE weight in `dtype` filling COLD_BYTES: calls that rotate over them read their weight
    from memory, as a decode pass does (the target's weights are far larger than the last-level cache), so
    that bf16's half-size reads count at M = 1 as they do in decoding."""
    import torch

    g = torch.Generator().manual_seed(0)
    w = torch.randn(SHAPE, generator=g).to(dtype)
    copies = -(-COLD_BYTES // (w.numel() * w.element_size()))
    return [w] + [w.clone() for _ in range(copies - 1)]


def _timer(dtype, rows: int, weights: list, training: bool = False):
    """A closure timing `linear` of `rows` rows in `dtype` over the `weights` in turn: seconds per call over
    a round of calls long enough to see (64 // rows calls, at least one)."""
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, SHAPE[1], generator=g).to(dtype)
    out = torch.empty(rows, SHAPE[0], dtype=dtype)
    calls = max(1, 64 // rows)
    linear = _linear_of(dtype, training)
    turn = [0]

    def one_round() -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(calls):
                linear(x, weights[turn[0] % len(weights)], out)
                turn[0] += 1
            return (time.perf_counter() - t0) / calls

    one_round()  # warm-up: oneDNN picks and caches its kernel
    return one_round


def measure(rounds: int = 15, training: bool = False) -> Dict[str, object]:
    """{"bf16_over_fp32": geometric mean over ROWS of the bf16/fp32 time ratios, "ratios": {M: ratio},
    "dtype": the faster one}; `training`: of torch's linear (module docstring).

    Each time is the fastest of `rounds` rounds, and the rounds of both dtypes and every M alternate: a busy
    machine's preemptions only ever add time, so the minimum over rounds spread in time is what the
    hardware does (a median over back-to-back rounds was once 100x off at M = 1 on a loaded 2-core
    machine). About a second."""
    import torch

    weights = {dt: _weights(dt) for dt in (torch.bfloat16, torch.float32)}
    timers = {(dt, m): _timer(dt, m, weights[dt], training) for m in ROWS for dt in (torch.bfloat16, torch.float32)}
    best = {k: math.inf for k in timers}
    for _ in range(rounds):
        for k, one_round in timers.items():
            best[k] = min(best[k], one_round())
    ratios = {m: best[(torch.bfloat16, m)] / best[(torch.float32, m)] for m in ROWS}
    mean = math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios))
    return {
        "bf16_over_fp32": round(mean, 3),
        "ratios": {str(m): round(r, 3) for m, r in ratios.items()},
        "dtype": "bfloat16" if mean < 1.0 else "float32",
    }


def auto_note(device, training: bool = False) -> str:
    """One line saying what --dtype auto picks on `device` (a torch.device) and why, for the commands to
    print; measures (once) on a CPU. `training`: the choice for training (module docstring)."""
    if device.type == "cuda":
        return "--dtype auto: bfloat16 (CUDA)"
    dtype = fastest_cpu_dtype(training=training)
    if os.environ.get("SPECDEC_CPU_DTYPE"):
        return f"--dtype auto: {dtype} (set by $SPECDEC_CPU_DTYPE)"
    entry = read_json_store(cache_path()).get(cpu_key(training), {})
    ratio = entry.get("bf16_over_fp32")
    linear = "torch's linear (training)" if training else "a target-sized linear"
    why = f"bf16 takes {ratio:.2f}x the time of fp32 in {linear} here" if ratio else "measured"
    return f"--dtype auto: {dtype} ({why}; measured once per CPU and thread count, cached in {cache_path().name})"


def fastest_cpu_dtype(*, use_cache: bool = True, refresh: bool = False, training: bool = False) -> str:
    """ "bfloat16" or "float32": the faster compute dtype of this CPU (see the module docstring), measured on
    first use and cached in cache_path(). refresh: measure again and store; use_cache=False: neither read
    nor write the cache; training: the faster one for training (torch's linear, autograd)."""
    forced = os.environ.get("SPECDEC_CPU_DTYPE")
    if forced:
        if forced not in ("bfloat16", "float32"):
            raise ValueError(f"$SPECDEC_CPU_DTYPE: expected bfloat16 or float32, got {forced!r}")
        return forced
    key = cpu_key(training)
    store = read_json_store(cache_path()) if use_cache else {}
    if use_cache and not refresh and isinstance(store.get(key), dict) and store[key].get("dtype"):
        return store[key]["dtype"]
    result = measure(training=training)
    if use_cache:
        store_json_entry(cache_path(), key, result)
    return result["dtype"]
