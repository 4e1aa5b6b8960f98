"""The C++ linear kernel (specdec_kernels.linear) in the target's and the draft head's layers, where it wins.

On a CPU without native bf16 (AVX2 only: most laptops, many servers) torch's bf16 `linear` runs row by row, so
a tree of N nodes costs the target about N plain steps and no tree can pay. specdec_kernels.linear reads every
weight element once for up to 64 rows (bench/results/linear_avx2-only_cpu.md). `use_kernel_linears(model)`
marks the model's eligible nn.Linear layers to run it, in place: each becomes a KernelLinear, a subclass of
nn.Linear with the same Parameters and state_dict (only `__class__` changes; `plain_linears` changes it back).

The kernel runs only inside `kernel_linear_scope()`, which specdec's TargetModel (forward, prefill),
TreeDrafter (extend, draft) and the data build's feature pass (specdec.data.target_hidden) enter: everything
else that runs the same model -- `model.generate`, the reference every speedup is compared with, and
anything under autograd (training) -- computes through F.linear as before.

Which layers: exact nn.Linear (subclasses such as quantized or LoRA layers keep their own forward) with a 2-D
CPU weight of unit stride along K, for a dtype where specdec_kernels measured its kernel faster than torch's
`linear` on this CPU (specdec_kernels.ops.linear_choice: once per machine, cached). Where oneDNN's prepacked
bf16 linear runs (AVX-512 BF16 / AMX CPUs), `speed_up_cpu_linears` prepacks (specdec.target.prepack) and
makes each packed layer a HybridLinear: the kernel for calls of at most `kernel_rows` rows (a decode step,
a draft step), oneDNN's packed weight beyond (a tree's verification through the large output layer), the
crossover measured per weight shape (specdec.target.kernel_rows).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernel_rows import NO_LIMIT, kernel_rows, wide_rows, widened
from .prepack import KERNEL_MARK, PackedLinear, plain_cpu_linear, prepack_linears

__all__ = [
    "KernelLinear",
    "HybridLinear",
    "kernel_linear_scope",
    "uses_kernel_linears",
    "kernel_linear",
    "kernel_calls_allowed",
    "KernelLinearGroup",
    "group_kernel_linears",
    "use_kernel_linears",
    "plain_linears",
    "speed_up_cpu_linears",
]

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_SCOPE = threading.local()  # depth of kernel_linear_scope per thread


def _in_scope() -> bool:
    return getattr(_SCOPE, "depth", 0) > 0


@contextlib.contextmanager
def kernel_linear_scope() -> Iterator[None]:
    """Inside the block (this thread), KernelLinear layers and kernel_linear run the C++ kernel. Nestable."""
    _SCOPE.depth = getattr(_SCOPE, "depth", 0) + 1
    try:
        yield
    finally:
        _SCOPE.depth -= 1


def in_kernel_linear_scope(fn):
    """Decorator: run `fn` inside kernel_linear_scope()."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with kernel_linear_scope():
            return fn(*args, **kwargs)

    return wrapper


def _kernel():
    return torch.ops.specdec.linear.default


def _runs_kernel(x: torch.Tensor, weight: torch.Tensor, bias) -> bool:
    """Whether this call can take the kernel: in scope, inference, CPU, one dtype, unit stride along K."""
    return (
        _in_scope()
        and x.dtype == weight.dtype
        and x.device.type == "cpu"
        and weight.dim() == 2
        and weight.stride(1) == 1
        and (bias is None or bias.dtype == weight.dtype)
        and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
    )


def _kernel_out(x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """The C++ kernel's x @ weight.T + bias for a call _runs_kernel accepted, x of any leading dims."""
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty(x2.shape[0], weight.shape[0], dtype=x.dtype)
    _kernel()(x2, weight, bias, out)
    return out.view(*x.shape[:-1], weight.shape[0])


def kernel_linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """F.linear(x, weight, bias), through the C++ kernel when the call can take it (see _runs_kernel).

    The caller decides that the kernel is wanted (a model marked by use_kernel_linears); the checks here are
    the cheap ones that keep the call correct. The op is called directly (not specdec_kernels.linear) because
    it runs once per layer per pass: shapes and dtypes are the layer's own.
    """
    if not _runs_kernel(x, weight, bias) or x.shape[-1] != weight.shape[1]:
        return F.linear(x, weight, bias)
    return _kernel_out(x, weight, bias)


class KernelLinear(nn.Linear):
    """An nn.Linear whose forward runs specdec_kernels' C++ linear inside kernel_linear_scope() and F.linear
    outside it (see the module docstring). Made from an nn.Linear in place by use_kernel_linears.

    Calls of more than `kernel_rows` rows (a prefill; measured per weight shape, specdec.target.kernel_rows.
    wide_rows) run torch's linear widened to fp32 instead, which is faster there: fp32 products summed in
    fp32 and one rounding, as the kernel does, in another summation order."""

    kernel_rows: int = NO_LIMIT
    runs_kernel = True  # read by prepack.unpack_linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > self.kernel_rows * self.in_features and _runs_kernel(x, self.weight, self.bias):
            return widened(x, self.weight, self.bias)
        return kernel_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        more = f", kernel up to {self.kernel_rows} rows" if self.kernel_rows < NO_LIMIT else ""
        return super().extra_repr() + more


class HybridLinear(PackedLinear):
    """A PackedLinear that, inside kernel_linear_scope(), runs the C++ kernel for calls of at most
    `kernel_rows` rows and oneDNN's packed weight for larger ones (and everywhere outside the scope, as a
    PackedLinear does: model.generate keeps its prepacked layers). Made from a PackedLinear in place by
    speed_up_cpu_linears; unpack_linears turns it back into an nn.Linear."""

    kernel_rows: int = 0
    runs_kernel = True  # read by prepack.unpack_linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= self.kernel_rows * self.in_features and _runs_kernel(x, self.weight, self.bias):
            return kernel_linear(x, self.weight, self.bias)
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel up to {self.kernel_rows} rows"


def kernel_calls_allowed(x: torch.Tensor) -> bool:
    """The forward-wide half of the kernel layers' per-call check (_runs_kernel), checked once per forward by
    callers that run many layers on inputs like `x` (specdec.target.lean_layers): inside kernel_linear_scope(),
    on the CPU, autograd off."""
    return _in_scope() and x.device.type == "cpu" and not torch.is_grad_enabled()


class KernelLinearGroup(NamedTuple):
    """Kernel linears that read the same input (a layer's q/k/v projections, an MLP's gate and up; or one
    linear alone), computed by one kernel call over their weights stacked row-wise, with the per-call checks
    of their forwards done once per group (`usable`). Each output element is the same dot product, along K in
    the same order, as in the layer's own call (the kernel's per-element arithmetic does not depend on where
    the row sits in the weight), so the outputs are bitwise the separate calls'. A decode-row product of a
    small target takes tens of microseconds, so the module call, checks and allocation around it count: on a
    2.45 GHz AVX2-only core, three calls made one and the checks made once take a SmolLM2-135M decode step
    1.11-1.23x faster (bench/results/verify_cost_avx2-native_cpu.md).

    The modules' weights (and biases) are views into `weight` (`bias`): group_kernel_linears moves them
    there, so nothing is stored twice."""

    modules: tuple
    kinds: tuple  # each module's class when grouped (plain_linears changes it in place)
    weight: torch.Tensor  # [sum of out_features, in_features]
    bias: Optional[torch.Tensor]  # [sum of out_features] or None
    splits: tuple  # the modules' out_features, in order
    pointers: tuple  # each module's weight (and bias) data_ptr right after grouping
    dtype: torch.dtype
    max_elements: int  # x.numel() up to which every module runs the kernel (the least of their kernel_rows)

    def intact(self, modules: Sequence[nn.Module]) -> bool:
        """Whether `modules` are the grouped ones, of the same classes, their weights still where grouping
        put them (not replaced, reassigned or moved by .to())."""
        # tuples of modules compare by identity (nn.Module has no __eq__), in C: this runs per group per layer
        same = modules == self.modules and tuple(map(type, modules)) == self.kinds
        return same and _pointers(modules) == self.pointers

    def usable(self, x: torch.Tensor) -> bool:
        """Whether every module would run the kernel for `x`, given kernel_calls_allowed(x)."""
        return x.dtype == self.dtype and x.numel() <= self.max_elements

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The modules' outputs for x [..., in_features], side by side: [..., sum of out_features]."""
        return _kernel_out(x, self.weight, self.bias)

    def parts(self, out: torch.Tensor) -> tuple:
        """Each module's output: column slices of what __call__ returned."""
        return (out,) if len(self.splits) == 1 else out.split_with_sizes(self.splits, dim=-1)


def _pointers(modules) -> tuple:
    # through _parameters, not nn.Module.__getattr__: this runs for every group of every layer of a forward
    out = []
    for m in modules:
        params = m._parameters
        bias = params.get("bias")
        out.append((params["weight"].data_ptr(), None if bias is None else bias.data_ptr()))
    return tuple(out)


def group_kernel_linears(modules: Sequence[nn.Module]) -> Optional[KernelLinearGroup]:
    """A KernelLinearGroup of `modules` (KernelLinear / HybridLinear layers reading the same input), their
    weights stacked into one tensor whose row blocks become the modules' weights, in place (one module: its
    weight as it is); None (nothing changed) unless all are kernel layers with one dtype, in_features and CPU
    device, contiguous weights, and biases on all or none. The Parameters stay the same objects (their `.data`
    moves); a HybridLinear's packed copy is unchanged and re-stamped, since its values are."""
    modules = tuple(modules)
    if not modules or any(type(m) not in (KernelLinear, HybridLinear) for m in modules):
        return None
    w0 = modules[0].weight
    has_bias = modules[0].bias is not None
    if any(
        m.weight.dtype != w0.dtype or m.weight.device.type != "cpu" or m.weight.dim() != 2
        or m.weight.shape[1] != w0.shape[1] or not m.weight.is_contiguous() or (m.bias is not None) != has_bias
        or (m.bias is not None and (m.bias.dtype != w0.dtype or not m.bias.is_contiguous()))
        for m in modules
    ):  # fmt: skip
        return None
    if len(modules) == 1:
        weight, bias = w0.detach(), modules[0].bias
        bias = None if bias is None else bias.detach()
    else:
        # a normal tensor even when called under inference_mode: the weights must stay writable outside it
        with torch.inference_mode(False), torch.no_grad():
            weight = torch.cat([m.weight.detach() for m in modules])
            bias = torch.cat([m.bias.detach() for m in modules]) if has_bias else None
            start = 0
            for m in modules:
                n = m.weight.shape[0]
                m.weight.data = weight[start : start + n]
                if has_bias:
                    m.bias.data = bias[start : start + n]
                if isinstance(m, PackedLinear):
                    m._stamp = m._weight_stamp()  # same values: the packed copy stays valid
                start += n
    rows = min(m.kernel_rows for m in modules)
    return KernelLinearGroup(
        modules,
        tuple(type(m) for m in modules),
        weight,
        bias,
        tuple(m.weight.shape[0] for m in modules),
        _pointers(modules),
        w0.dtype,
        rows * w0.shape[1],
    )


def _eligible(lin: nn.Module, dtypes) -> bool:
    return plain_cpu_linear(lin, dtypes) and lin.weight.stride(1) == 1  # the kernel reads weight rows contiguously


def _kernel_dtypes() -> tuple:
    """The dtypes for which the kernel was measured faster than torch's linear here (() without the kernel)."""
    from specdec_kernels.ops import linear as linear_op
    from specdec_kernels.ops import linear_choice

    if not linear_op.linear_isas():
        return ()
    return tuple(d for d in _DTYPES if linear_choice.faster_backend(d)["backend"] == "cpu")


def use_kernel_linears(model: nn.Module) -> int:
    """Mark every eligible nn.Linear of `model` to run the C++ kernel inside kernel_linear_scope(), in place.

    Returns how many were marked: 0 without specdec_kernels._C, on CUDA, or where the kernel was not measured
    faster than torch for the model's dtype (specdec_kernels.ops.linear_choice; $SPECDEC_LINEAR_CHOICE=cpu or
    torch decides without measuring). Also marks `model` itself (uses_kernel_linears), so that code computing
    with a layer's raw weight (a draft head's reduced output layer) can take the kernel too. Idempotent.

    Example:
        >>> import torch
        >>> from specdec.target.kernel_linears import kernel_linear_scope, plain_linears, use_kernel_linears
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
        >>> x = torch.randn(2, 4)
        >>> with torch.no_grad():
        ...     n = use_kernel_linears(m)
        ...     with kernel_linear_scope():
        ...         close = torch.allclose(m(x), x @ m[0].weight.T + m[0].bias, atol=1e-6)
        >>> close, plain_linears(m) == n
        (True, True)
    """
    dtypes = None
    marked = 0
    for sub in list(model.modules()):
        if type(sub) is KernelLinear:
            marked += 1
            continue
        if type(sub) is not nn.Linear or sub.weight.device.type != "cpu":
            continue
        if dtypes is None:
            dtypes = _kernel_dtypes()  # measured (or read from the cache) only when a CPU layer is there
        if _eligible(sub, dtypes):
            sub.__class__ = KernelLinear
            sub.kernel_rows = wide_rows(sub.out_features, sub.in_features, sub.weight.dtype)
            marked += 1
    if marked:
        setattr(model, KERNEL_MARK, True)
    return marked


def uses_kernel_linears(model: nn.Module) -> bool:
    """True when use_kernel_linears marked `model` (and has not been undone by plain_linears)."""
    return bool(getattr(model, KERNEL_MARK, False))


def plain_linears(model: nn.Module) -> int:
    """Undo use_kernel_linears and the kernel half of speed_up_cpu_linears: every KernelLinear back to an
    nn.Linear, every HybridLinear back to a PackedLinear (nothing is copied); returns how many."""
    restored = 0
    for sub in model.modules():
        if type(sub) is KernelLinear:
            sub.__class__ = nn.Linear
            restored += 1
        elif type(sub) is HybridLinear:
            sub.__class__ = PackedLinear
            restored += 1
    model.__dict__.pop(KERNEL_MARK, None)
    return restored


def speed_up_cpu_linears(model: nn.Module) -> tuple:
    """The faster CPU linear for `model`'s layers, in place. Where oneDNN's prepacked bf16 linear runs
    (specdec.target.prepack): every eligible layer prepacked, and those whose weight shape the C++ kernel
    beats oneDNN at for small calls made HybridLinear (specdec.target.kernel_rows). Elsewhere: specdec_kernels'
    C++ kernel where it measured faster than torch (use_kernel_linears). Returns (prepacked, kernel): how many
    layers were prepacked and how many run the kernel for some calls (the HybridLinear layers among the
    prepacked ones, or the KernelLinear layers). Idempotent: a second call counts the same layers."""
    prepack_linears(model)
    packed = sum(isinstance(m, PackedLinear) for m in model.modules())
    if not packed:
        return 0, use_kernel_linears(model)
    return packed, _route_small_calls_to_kernel(model)


def _route_small_calls_to_kernel(model: nn.Module) -> int:
    """Make every PackedLinear of `model` whose shape the kernel wins at for some row counts a HybridLinear;
    marks `model` (uses_kernel_linears) when one is, so that code computing with a raw weight takes the kernel
    too. Returns how many."""
    from specdec_kernels.ops import linear as linear_op

    if not linear_op.linear_isas():
        return 0
    routed = 0
    for sub in model.modules():
        if type(sub) is HybridLinear:
            routed += 1
            continue
        if type(sub) is not PackedLinear or sub.weight.stride(1) != 1:
            continue
        rows = kernel_rows(sub.out_features, sub.in_features, sub.weight.dtype)
        if rows > 0:
            sub.__class__ = HybridLinear
            sub.kernel_rows = rows
            routed += 1
    if routed:
        setattr(model, KERNEL_MARK, True)
    return routed
