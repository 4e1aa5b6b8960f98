"""A linear layer for small M on the CPU: out = x @ weight^T (+ bias), the verify and draft passes' layers.

At M <= 64 rows (a decode step, a tree of draft nodes) these layers are bound by reading the weights, and
torch's bf16 `linear` on a CPU without native bf16 costs about M times a one-row call. The C++ CPU kernel
(csrc/cpu/linear*.cpp) reads every weight element once per 64 rows of x and widens bf16 to fp32 in
registers. It has one path per instruction set, chosen by cpuid when _C loads: `avx512_bf16`, `avx512`,
`avx2` (AVX2 + FMA + F16C) and `portable`. `linear_isa()` says which runs, `set_linear_isa(name)` (or
SPECDEC_LINEAR_ISA=name in the environment, read at import) forces another this CPU can run.

The other C++ CPU kernels' products (the feature-sampling blocks' forward GEMMs, ops.features) take the same kernel
for up to `small_product_rows(dtype)` rows and ATen's GEMM beyond; `route_small_products(dtype)` sets that
from linear_choice's measurement, `set_small_product_rows` by hand.

CUDA tensors run torch (cuBLAS is the kernel there): the op has no cuda or triton backend, and the registry
says so (`get_op("linear").reason("cuda", ...)`).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Iterator, Optional, Tuple

import torch

from .. import _backend, _loader
from ..checks import FLOAT_DTYPES, check_tensor, same_device
from ..reference import linear as ref
from . import linear_choice

# Why the op has no CUDA / Triton kernel (the registry's reason for those backends).
_CUDA_IS_TORCH = (
    "no specdec kernel: CUDA tensors run the torch backend (torch.nn.functional.linear, i.e. cuBLAS), which is "
    "the fast path there"
)


def _linear_op() -> _backend.KernelOp:
    op = _backend.KernelOp("linear")
    kernel = torch.ops.specdec.linear
    op.register(
        "cpu",
        kernel,
        lambda *a: _backend.compiled_check("linear", _backend.device_of(a), "cpu"),
        lambda device: _backend.compiled_check("linear", device, "cpu"),
    )
    op.register("torch", ref.linear, lambda *a: None)
    op.passed_over = linear_choice.passed_over  # the kernel only where it is measured faster than torch
    op.missing["cuda"] = _CUDA_IS_TORCH
    op.missing["triton"] = _CUDA_IS_TORCH + "; CPU tensors run the cpu backend"
    return op


_LINEAR = _linear_op()


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    out: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """out = x @ weight^T (+ bias), as torch.nn.functional.linear, with fp32 accumulation.

    Args:
        x: [..., K] in fp32, fp16 or bf16 (any strides; leading dimensions are flattened into M rows, a copy
            only when they cannot be viewed so).
        weight: [N, K], x's dtype. A weight without unit stride along K is copied first (pass it contiguous).
        bias: [N], x's dtype, or None.
        out: the result buffer [..., N] (x's leading dimensions), x's dtype, any strides; it must not overlap
            x, weight or bias. None: a new tensor.
        backend: "cpu" (the C++ kernel, CPU tensors) or "torch" (torch's matrix multiply, any device); None
            chooses (see specdec_kernels.get_op): for CPU tensors the C++ kernel when _C is built and it was
            measured faster than torch on this CPU for this dtype (once, cached: ops/linear_choice.py), else
            torch; torch for CUDA tensors.

    Returns:
        `out` (the given buffer, or a new [..., N] tensor).

    Inference only: there is no autograd formula. Rows of x are taken 64 at a time; every weight element is
    read once per 64 rows, so the kernel is meant for M <= 64 (decode, tree verify); larger M still works.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> x, w = torch.ones(2, 3, 4), torch.full((5, 4), 0.5)
        >>> sk.linear(x, w, torch.arange(5.0)).shape
        torch.Size([2, 3, 5])
        >>> sk.linear(x, w)[0, 0].tolist()
        [2.0, 2.0, 2.0, 2.0, 2.0]
    """
    # Called once per layer per decode pass: the common case is checked in a few attribute reads (~1 us), and
    # only a failing check goes through the helpers that say exactly what is wrong.
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.dtype not in FLOAT_DTYPES:
        check_tensor("weight", weight, dtypes=FLOAT_DTYPES, ndim=2)
    N, K = weight.shape
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != weight.dtype:
        raise TypeError(f"x: expected weight's dtype {weight.dtype}, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x: expected shape [..., K] with K = {K} (weight's last dimension), got {tuple(x.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dtype != weight.dtype or bias.shape != (N,)):
        check_tensor("bias", bias, dtype=weight.dtype, shape=(N,))
    lead = x.shape[:-1]
    if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != weight.dtype or out.shape != (*lead, N)):
        check_tensor("out", out, dtype=weight.dtype, shape=(*lead, N))
    dev = x.device
    if weight.device != dev or (bias is not None and bias.device != dev) or (out is not None and out.device != dev):
        same_device(x=x, weight=weight, bias=bias, out=out)
    M = math.prod(lead)
    x2 = x if x.dim() == 2 else x.reshape(M, K)
    if K > 1 and weight.stride(1) != 1:
        weight = weight.contiguous()
    if out is None:
        out = torch.empty(*lead, N, dtype=x.dtype, device=dev)
    out2 = out
    if out.dim() != 2:
        try:
            out2 = out.view(M, N)
        except RuntimeError:  # strides that do not flatten: compute beside it, then copy
            out2 = None
    target = out2 if out2 is not None else torch.empty(M, N, dtype=x.dtype, device=dev)
    _LINEAR(x2, weight, bias, target, backend=backend)
    if out2 is None:
        out.copy_(target.view(out.shape))
    return out


def linear_isas() -> Tuple[str, ...]:
    """The instruction-set paths of the C++ linear kernel this CPU can run, from the most portable to the best
    (() when specdec_kernels._C is not loaded)."""
    isas = getattr(_loader._C, "linear_isas", None)  # absent from a _C built before this op
    return tuple(isas()) if isas is not None else ()


def linear_isa() -> str:
    """The path the C++ linear kernel runs now ("portable", "avx2", "avx512", "avx512_bf16"; "none" without _C)."""
    isa = getattr(_loader._C, "linear_isa", None)
    return isa() if isa is not None else "none"


def set_linear_isa(name: str) -> str:
    """Run the C++ linear kernel's path `name` from now on, in every thread; returns the previous path.

    Raises ValueError for an unknown name or a path this CPU cannot run, RuntimeError without _C.
    """
    if not linear_isas():
        raise RuntimeError(f"the C++ linear kernel needs specdec_kernels._C, not loaded ({_loader.load_error()})")
    return _loader._C.set_linear_isa(name)


@contextlib.contextmanager
def forced_linear_isa(name: str) -> Iterator[str]:
    """Run the C++ linear kernel's path `name` inside the block (tests, benchmarks), then the previous one."""
    before = set_linear_isa(name)
    try:
        yield name
    finally:
        set_linear_isa(before)


_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # csrc's LinearDtype
# (dtype, kernel path and build) whose small-product rows this process has set (route_small_products or by
# hand): another path (set_linear_isa) is measured again
_ROUTED: set = set()


def small_product_rows(dtype: torch.dtype) -> int:
    """Up to how many rows the other C++ CPU kernels' products in `dtype` (the feature-sampling blocks' forward
    GEMMs) take the linear kernel instead of ATen's GEMM; 0 (never) by default, for fp64 and without _C."""
    get = getattr(_loader._C, "linear_small_product_rows", None)
    return get(_DTYPE_CODES[dtype]) if get is not None and dtype in _DTYPE_CODES else 0


def set_small_product_rows(dtype: torch.dtype, rows: int) -> int:
    """Make the C++ CPU kernels' products of at most `rows` rows in `dtype` (fp32, fp16 or bf16) take the
    linear kernel, in every thread; returns the previous value. route_small_products leaves it as set here.

    Raises ValueError for another dtype or rows < 0, RuntimeError without _C.
    """
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"small products: expected float32, float16 or bfloat16, got {dtype}")
    if getattr(_loader._C, "set_linear_small_product_rows", None) is None:
        raise RuntimeError(f"the C++ linear kernel needs specdec_kernels._C, not loaded ({_loader.load_error()})")
    before = _loader._C.set_linear_small_product_rows(_DTYPE_CODES[dtype], int(rows))
    _ROUTED.add((dtype, linear_choice.linear_kernel_id()))
    return before


def route_small_products(dtype: torch.dtype) -> int:
    """Set small_product_rows(dtype) from linear_choice's measurement on this CPU, once per process, dtype and
    kernel path (a later call, or one after set_small_product_rows, changes nothing): the largest measured row
    count up to which the kernel beat torch at every measured count (linear_choice.kernel_rows). Returns the
    rows in force. The CPU feature-sampling ops call this before their first forward of a dtype."""
    if dtype not in _DTYPE_CODES or not linear_isas() or (dtype, linear_choice.linear_kernel_id()) in _ROUTED:
        return small_product_rows(dtype)
    set_small_product_rows(dtype, linear_choice.kernel_rows(dtype))
    return small_product_rows(dtype)


def _apply_env() -> None:
    """SPECDEC_LINEAR_ISA=<path> forces that path for the process (a path this CPU cannot run only warns)."""
    want = os.environ.get("SPECDEC_LINEAR_ISA")
    if not want or not linear_isas():
        return
    try:
        set_linear_isa(want)
    except ValueError as exc:
        warnings.warn(
            f"SPECDEC_LINEAR_ISA={want!r} ignored: {exc}; running {linear_isa()!r}", RuntimeWarning, stacklevel=2
        )


_apply_env()
