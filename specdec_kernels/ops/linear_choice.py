"""Whether the C++ linear kernel beats torch's `linear` on this CPU, per dtype: measured once, cached.

Which is faster depends on the CPU and on the installed torch: on an AVX2-only CPU torch's bf16 `linear`
runs row by row and the kernel wins by about M; on a CPU with AVX-512 BF16 or AMX, oneDNN's bf16 kernels
may win at larger M. So the automatic backend choice of `linear` for CPU tensors (backend=None) times both,
the first time a dtype is asked for: the default target's MLP projection (N, K) = (1536, 576) at M = 1, 4
and 16 rows (a decode step, small and large trees), and takes the kernel when the geometric mean of its time
ratios to torch is below 1. The answer is cached in $SPECDEC_HOME/linear_choice.json (default
~/.cache/specdec) under the CPU's model name, its ISA flags, torch's version and the kernel's path and build
(both are timed on one thread, see measure), as specdec's compute-dtype choice is (python/specdec/machine_dtype.py).
$SPECDEC_LINEAR_CHOICE=cpu or torch skips the measurement; backend= and $SPECDEC_BACKEND always win.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from ..cpu_info import cpu_flags, cpu_model

ROWS = (1, 4, 16)  # M of the timed linear: a decode step, a small tree, a large tree
SHAPE = (1536, 576)  # the default target's MLP up projection (N, K)
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "amx_tile")

_MEMO: Dict[str, dict] = {}  # key|dtype -> result: one measurement (or cache read) per process


def cache_path() -> Path:
    """$SPECDEC_HOME/linear_choice.json (default ~/.cache/specdec)."""
    home = os.environ.get("SPECDEC_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "specdec")
    return Path(home) / "linear_choice.json"


def cpu_key() -> str:
    """What decides the answer: the CPU model, its ISA flags, torch's version, the kernel's path and build
    (linear_kernel_id; measured on one thread: see measure)."""
    name, flags = cpu_model(), cpu_flags(FLAGS) or []
    return f"{name}|{','.join(flags)}|torch {torch.__version__}|{linear_kernel_id()}"


def linear_kernel_id() -> str:
    """The C++ linear kernel's running path and the build of the CPU kernels' sources, e.g.
    "avx2@1a2b3c4d5e6f" ("none" without _C): what a measurement of the kernel depends on besides the machine,
    so the caches of such measurements (this module's, specdec's compute dtype, kernel rows and tree budget)
    key on it and measure a rebuilt kernel again."""
    from .. import _loader

    isa = getattr(_loader._C, "linear_isa", None)
    if isa is None:
        return "none"
    return f"{isa()}@{_loader.build_info().get('cpu_sources', 'unknown')}"


def _best_ms(fn, calls: int = 40) -> float:
    """The fastest of `calls` single calls: robust to the long stalls of a machine shared with other work
    (a thread pool waiting a time slice for a busy core), which a mean over calls would count."""
    fn()
    best = math.inf
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def measure(dtype: torch.dtype) -> dict:
    """Time torch's linear and the C++ kernel (through the op) at SHAPE for each of ROWS, in `dtype`."""
    kernel = torch.ops.specdec.linear.default
    N, K = SHAPE
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(N, K, generator=gen) * K**-0.5).to(dtype)
    torch_ms, kernel_ms = [], []
    threads = torch.get_num_threads()
    # One thread: both split N across threads alike, and a thread pool on a core that other work keeps busy
    # stalls every call by a time slice (milliseconds), which would decide the comparison by chance.
    torch.set_num_threads(1)
    try:
        for M in ROWS:
            x = torch.randn(M, K, generator=gen).to(dtype)
            out = torch.empty(M, N, dtype=dtype)
            torch_ms.append(_best_ms(lambda x=x: torch.nn.functional.linear(x, w)))
            kernel_ms.append(_best_ms(lambda x=x, out=out: kernel(x, w, None, out)))
    finally:
        torch.set_num_threads(threads)
    ratio = math.exp(sum(math.log(k / t) for k, t in zip(kernel_ms, torch_ms)) / len(ROWS))
    return {
        "backend": "cpu" if ratio < 1.0 else "torch",
        "kernel_over_torch": round(ratio, 3),
        "rows": list(ROWS),
        "torch_ms": [round(t, 4) for t in torch_ms],
        "kernel_ms": [round(t, 4) for t in kernel_ms],
    }


def _read_store(path: Path) -> dict:
    try:
        store = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache is measured again and rewritten
    return store if isinstance(store, dict) else {}


def _write_store(path: Path, store: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".linear_choice.")
        with os.fdopen(fd, "w") as f:
            json.dump(store, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time


def faster_backend(dtype: torch.dtype, *, use_cache: bool = True, refresh: bool = False) -> dict:
    """{"backend": "cpu" or "torch", ...the measurement} for CPU tensors of `dtype` on this machine (see the
    module docstring). refresh: measure again and store; use_cache=False: neither read nor write the cache."""
    forced = os.environ.get("SPECDEC_LINEAR_CHOICE")
    if forced:
        if forced not in ("cpu", "torch"):
            raise ValueError(f"$SPECDEC_LINEAR_CHOICE: expected cpu or torch, got {forced!r}")
        return {"backend": forced, "forced": True}
    key = f"{cpu_key()}|{str(dtype).replace('torch.', '')}"
    if use_cache and not refresh and key in _MEMO:
        return _MEMO[key]
    path = cache_path()
    store = _read_store(path) if use_cache else {}
    result = store.get(key) if use_cache and not refresh else None
    if not (isinstance(result, dict) and result.get("backend") in ("cpu", "torch")):
        result = measure(dtype)
        if use_cache:
            store[key] = result
            _write_store(path, store)
    if use_cache:
        _MEMO[key] = result
    return result


def kernel_rows(dtype: torch.dtype) -> int:
    """The largest of ROWS up to which the kernel was measured faster than torch at every one of ROWS (0 when
    slower at one row): where other C++ CPU kernels hand their products to it (ops.linear.route_small_products).
    $SPECDEC_LINEAR_CHOICE=cpu gives max(ROWS), =torch 0."""
    result = faster_backend(dtype)
    if result.get("forced"):
        return max(ROWS) if result["backend"] == "cpu" else 0
    rows = 0
    for m, k, t in zip(result.get("rows", ()), result.get("kernel_ms", ()), result.get("torch_ms", ())):
        if k >= t:
            break
        rows = m
    return rows


def passed_over(backend: str, x, *_args) -> Optional[str]:
    """The registry's hook (KernelOp.passed_over): why the automatic choice does not take `backend` for these
    arguments, or None. Only the C++ kernel on CPU tensors is ever passed over, for torch, when measured slower."""
    if backend != "cpu" or x.device.type != "cpu":
        return None
    result = faster_backend(x.dtype)
    if result["backend"] == "cpu":
        return None
    if result.get("forced"):
        return "SPECDEC_LINEAR_CHOICE=torch"
    return (
        f"measured slower than torch's linear on this CPU for {x.dtype} (kernel / torch time "
        f"{result['kernel_over_torch']}x at M = {result['rows']}; cached in {cache_path()})"
    )
