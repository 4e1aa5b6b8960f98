"""Prepacked CPU linears: the target's nn.Linear layers with their weights reordered once for oneDNN.

On a CPU, `F.linear` hands an unpacked weight to oneDNN, which reorders it into its blocked layout on every
call. At decode sizes (a few rows) that reorder costs as much as the product itself: SmolLM2-135M's
[1536, 576] bf16 MLP projection takes 82 us per 1-row call unpacked and 45 us prepacked, 192 -> 148 us at
16 rows (AMD EPYC with AVX-512 BF16, one thread); `model.generate` of the whole target gets about 1.3x
faster. bf16 only: there `F.linear` already runs oneDNN's kernel, so the results are bitwise the same
(checked at the target's shapes and 1-60 rows); fp32 `F.linear` runs MKL's sgemm, whose summation order
differs from oneDNN's, so fp32 layers are left alone. oneDNN's bf16 path needs AVX-512 (BW/VL/DQ) or
AVX-NE-CONVERT: on an AVX2-only CPU `prepack_available()` is False and nothing is packed.

`prepack_linears(model)` swaps every eligible nn.Linear for a PackedLinear that keeps the original
Parameter (state_dict, tied embeddings and `.weight` readers see no change) and adds the packed copy as a
non-persistent buffer. It changes the model in place, so everything that runs it -- `model.generate`,
specdec's TargetModel, generate_baseline -- gets the same speedup: the speedups specdec reports stay
comparisons of the same model. For inference only: a PackedLinear under autograd (a weight that requires
grad, grad mode on) falls back to F.linear, and one whose weight changed since packing (in-place update,
`.to(...)`) raises rather than computing with a stale copy -- `unpack_linears` then restores plain
nn.Linear layers.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PackedLinear", "prepack_available", "prepack_linears", "unpack_linears", "is_prepacked"]

_DTYPES = (torch.bfloat16,)  # see the module docstring for why not fp32


@functools.lru_cache(maxsize=None)
def prepack_available() -> bool:
    """True when oneDNN's prepacked bf16 CPU linear runs here: the torch build has it (x86 wheels do) AND
    the CPU can run its bf16 path (AVX-512 BW/VL/DQ or AVX-NE-CONVERT; an AVX2-only CPU cannot, and the op
    raises there). Probed once on a tiny layer, then cached."""
    try:
        ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        if not (ok and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
            return False
        w = torch.zeros(8, 16, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(2, 16, dtype=torch.bfloat16), packed, None, "none", [], "")
        return True
    except (AttributeError, RuntimeError):  # builds without oneDNN; CPUs without its bf16 instructions
        return False


def plain_cpu_linear(lin: nn.Module, dtypes) -> bool:
    """Whether `lin` is a plain nn.Linear (not a subclass: quantized, LoRA, prepacked, ... layers keep their own
    forward) with a 2-D CPU weight of one of `dtypes` and a bias (if any) of the same dtype: what the CPU
    linear replacements (prepacking here, the C++ kernel in kernel_linears) may take over."""
    if type(lin) is not nn.Linear:
        return False
    w = lin.weight
    return (
        w.device.type == "cpu"
        and w.dtype in dtypes
        and w.dim() == 2
        and (lin.bias is None or lin.bias.dtype == w.dtype)
    )


def _packable(lin: nn.Module) -> bool:
    return plain_cpu_linear(lin, _DTYPES)


class PackedLinear(nn.Module):
    """nn.Linear with its weight also held in oneDNN's packed layout (see the module docstring).

    weight / bias: the original Parameters (shared, not copied). packed: the reordered weight (a
    non-persistent buffer: never saved). The weight's version counter at packing time detects in-place
    changes.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not _packable(linear):
            raise TypeError(
                "PackedLinear: expected an nn.Linear with a 2-D bfloat16 CPU weight, got "
                f"{type(linear).__name__} with a {linear.weight.dtype} weight on {linear.weight.device}"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        with torch.no_grad():
            # The batch-size hint only tunes the reorder; the packed weight serves every row count.
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
        self.register_buffer("packed", packed, persistent=False)
        self._stamp = self._weight_stamp()

    def _weight_stamp(self) -> tuple:
        w = self.weight
        return (w.data_ptr(), w.dtype, w.device, w._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad):
            return F.linear(x, self.weight, self.bias)  # the packed op has no backward
        if self._weight_stamp() != self._stamp:
            raise RuntimeError(
                "PackedLinear: the weight changed after it was packed (in-place update, .to() or a load); "
                "call specdec.target.prepack.unpack_linears(model) and prepack again"
            )
        if x.dtype != self.weight.dtype or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def prepack_linears(model: nn.Module) -> int:
    """Swap every bfloat16 CPU nn.Linear of `model` for a PackedLinear, in place.

    Returns how many were swapped (0 when prepack_available() is False -- no prepacked linear in this
    torch, or a CPU without the instructions of its bf16 path -- or none is eligible: a CUDA, fp32 or fp16
    model). Idempotent. Call it after the model reached its final device and dtype, and before
    wrapping it in a specdec.target.TargetModel, which holds on to the lm_head module it finds at construction
    (a TargetModel built earlier still computes the same logits, through the unpacked lm_head).

    Example:
        >>> import torch
        >>> from specdec.target.prepack import prepack_linears, unpack_linears
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3)).to(torch.bfloat16).eval()
        >>> x = torch.randn(2, 4, dtype=torch.bfloat16)
        >>> with torch.no_grad():
        ...     y = m(x)
        ...     n = prepack_linears(m)
        ...     same = torch.equal(m(x), y) if n else True
        >>> same, unpack_linears(m) == n
        (True, True)
    """
    if not prepack_available():
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _packable(child):
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    return swapped


# The attribute by which kernel_linears marks a model whose layers run the C++ kernel (kept here, below
# kernel_linears in the import order, since unpacking its HybridLinear layers removes the mark too).
KERNEL_MARK = "_specdec_kernel_linears"


def unpack_linears(model: nn.Module) -> int:
    """Undo prepack_linears: every PackedLinear (HybridLinear included) back to an nn.Linear on the same
    Parameters; returns how many. When no layer is left that runs the C++ kernel (one whose class sets
    `runs_kernel`), `model` loses kernel_linears' mark too."""
    restored = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                lin.weight = child.weight
                lin.bias = child.bias
                setattr(parent, name, lin)
                restored += 1
    if restored and not any(getattr(type(m), "runs_kernel", False) for m in model.modules()):
        model.__dict__.pop(KERNEL_MARK, None)
    return restored


def is_prepacked(model: nn.Module) -> bool:
    """True when `model` holds at least one PackedLinear."""
    return any(isinstance(m, PackedLinear) for m in model.modules())
