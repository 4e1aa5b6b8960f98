"""Feature sampling over token embeddings: the input blocks of the FSPAD and GRIFFIN draft heads.

    FSPAD    z = W_fc [e; f] + b,  u = z + W_d (SiLU(W_g e) * W_u RMSNorm(z))
    GRIFFIN  h = W_fc [e; f] + b,  g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)])

with e = embed_weight[token_ids] (the target's frozen embedding: it gets no gradient). Both are
differentiable with respect to the features and every other weight, on every backend.

Backends (specdec_kernels._backend): `triton` gathers embedding rows inside the GEMM operand loads (no
[T, H] copy of e, no [T, 2H] concatenation), splits W_fc into its embedding and feature halves, and fuses
RMSNorm, SiLU and the gating product into the GEMMs' prologue/epilogue; `cpu` composes ATen matmuls
with fused C++ row kernels; `torch` is the plain composition (specdec_kernels/reference/features.py).

What backward uses (saved, not recomputed): z / h [T, H], fp32 row statistics (rstd of z; for GRIFFIN
rstd of h, of N_b(h) and of e) and the [T, I] pre-activations (FSPAD: gate and up; GRIFFIN: W_u's
output). The activation SiLU(gate) * up (resp. SiLU(pre_act)) is recomputed in backward by the same
fused pass that forms its gradient, which saves one [T, I] tensor per call.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from .. import _backend
from ..reference import features as ref
from ._checks import check_out, check_tensor, same_device

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
ID_DTYPES = (torch.int32, torch.int64)


def _device_of(*args):
    return args[0].device


def _kernel_dtypes(backend, *args):
    # fp64 exists for gradcheck-style checks on the cpu and torch backends; the GPU paths are fp32/16/bf16.
    if backend in ("triton", "cuda") and args[0].dtype == torch.float64:
        return f"the {backend} kernels take fp32/fp16/bf16, got {args[0].dtype}"
    return None


def _triton(name):
    def run(*args):
        return getattr(torch.ops.specdec, name + "_triton")(*args)
    return run


_FSPAD_FWD = _backend.standard_op("fspad_forward", _device_of, extra=_kernel_dtypes,
                                  reference=ref.fspad_forward, triton=_triton("fspad_forward"))
_FSPAD_BWD = _backend.standard_op("fspad_backward", _device_of, extra=_kernel_dtypes,
                                  reference=ref.fspad_backward, triton=_triton("fspad_backward"))
_GRIFFIN_FWD = _backend.standard_op("griffin_forward", _device_of, extra=_kernel_dtypes,
                                    reference=ref.griffin_forward, triton=_triton("griffin_forward"))
_GRIFFIN_BWD = _backend.standard_op("griffin_backward", _device_of, extra=_kernel_dtypes,
                                    reference=ref.griffin_backward, triton=_triton("griffin_backward"))


# ---------------------------------------------------------------------------------------------------
# Input checks

def _check_ids(token_ids: torch.Tensor, vocab: int, check_ids: Optional[bool]) -> None:
    """Reject token ids outside [0, vocab).

    On CPU tensors the check is exact and names the first bad id (reading host memory costs no device
    sync). On CUDA tensors a host-side check would synchronise, so by default the check is an
    asynchronous device assertion (torch._assert_async: no sync, capturable; a failure surfaces as a
    device-side error at the next synchronisation); check_ids=True forces the exact host check there,
    check_ids=False skips it (the CUDA and Triton kernels clamp ids, so a bad id reads a wrong row, never out of
    bounds; the C++ CPU kernels raise IndexError).
    """
    if check_ids is False or token_ids.numel() == 0:
        return
    compiling = torch.compiler.is_compiling()
    if (token_ids.device.type == "cpu" or check_ids) and not compiling:
        bad = (token_ids < 0) | (token_ids >= vocab)
        if bool(bad.any()):
            pos = int(torch.nonzero(bad.flatten())[0])
            raise ValueError(f"token_ids: expected ids in [0, {vocab}) (the rows of embed_weight), got "
                             f"{int(token_ids.flatten()[pos])} at flat position {pos} "
                             f"({int(bad.sum())} out of range in all)")
        return
    torch._assert_async(((token_ids >= 0) & (token_ids < vocab)).all(),
                        f"token_ids: expected ids in [0, {vocab}) (the rows of embed_weight)")


def _check_common(features, token_ids, embed_weight, fc_weight, fc_bias, eps):
    check_tensor("features", features, dtypes=FLOAT_DTYPES)
    if features.dim() < 1:
        raise ValueError("features: expected shape [..., H], got a 0-dimensional tensor")
    H = features.shape[-1]
    dt = features.dtype
    check_tensor("token_ids", token_ids, dtypes=ID_DTYPES, shape=tuple(features.shape[:-1]))
    check_tensor("embed_weight", embed_weight, dtype=dt, shape=(None, H))
    check_tensor("fc_weight", fc_weight, dtype=dt, shape=(H, 2 * H))
    if fc_bias is not None:
        check_tensor("fc_bias", fc_bias, dtype=dt, shape=(H,))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a float >= 0, got {eps!r}")
    if embed_weight.shape[0] < 1:
        raise ValueError("embed_weight: expected at least one row (vocabulary size >= 1)")
    return H, dt


def _stat_dtype(dt: torch.dtype) -> torch.dtype:
    """Row statistics (rstd) are fp32, fp64 for fp64 inputs (like the reference's RMSNorm)."""
    return torch.float64 if dt == torch.float64 else torch.float32


def _flat(t: torch.Tensor, H: int) -> torch.Tensor:
    return t.reshape(-1, H).contiguous()


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _new_out(out, shape, dt, dev, needs_grad):
    if out is None:
        return torch.empty(shape, dtype=dt, device=dev)
    if needs_grad:
        raise ValueError("out: caller buffers are for inference (no autograd); call without out= when gradients "
                         "are needed, or under torch.no_grad()")
    check_out("out", out, shape, dt, dev)
    return out


# ---------------------------------------------------------------------------------------------------
# What the two input blocks share: the forward writes [T, H] beside activations kept for backward, the
# backward takes every forward input, those activations and one gradient buffer per differentiable input.

class _Kernels(NamedTuple):
    fwd: object            # _backend op: (features, token_ids, embed_weight, *weights, eps, out, *activations)
    bwd: object            # _backend op: (grad_out, features, ..., eps, *activations, *grads)
    activations: Callable  # (T, H, I, dtype, device, train) -> the buffers the forward fills beside `out`


def _fspad_activations(T, H, I, dt, dev, train):
    """z [T, H], rstd [T]; for backward also the pre-activations gate and up [T, I] (else None)."""
    kw = dict(dtype=dt, device=dev)
    pre = (torch.empty(T, I, **kw), torch.empty(T, I, **kw)) if train else (None, None)
    return (torch.empty(T, H, **kw), torch.empty(T, dtype=_stat_dtype(dt), device=dev)) + pre


def _griffin_activations(T, H, I, dt, dev, train):
    """h [T, H], stats [T, 3] (rstd of h, of N_b(h), of e); for backward also W_u's output [T, I] (else None)."""
    return (torch.empty(T, H, dtype=dt, device=dev), torch.empty(T, 3, dtype=_stat_dtype(dt), device=dev),
            torch.empty(T, I, dtype=dt, device=dev) if train else None)


_FSPAD = _Kernels(_FSPAD_FWD, _FSPAD_BWD, _fspad_activations)
_GRIFFIN = _Kernels(_GRIFFIN_FWD, _GRIFFIN_BWD, _griffin_activations)


def _function_forward(ctx, kernels, backend, eps, inputs):
    """autograd.Function.forward of either block; inputs = (features [T, H], token_ids, embed_weight,
    *weights) with down_weight [H, I] last."""
    features, down_weight = inputs[0], inputs[-1]
    (T, H), I = features.shape, down_weight.shape[1]
    out = torch.empty(T, H, dtype=features.dtype, device=features.device)
    acts = kernels.activations(T, H, I, features.dtype, features.device, True)
    args = (*inputs, eps, out, *acts)
    chosen = kernels.fwd.choose(backend, *args)
    kernels.fwd.impls[chosen][0](*args)
    ctx.save_for_backward(*inputs, *acts)
    ctx.backend, ctx.eps, ctx.num_inputs = chosen, eps, len(inputs)
    return out


def _function_backward(ctx, kernels, grad_out):
    """autograd.Function.backward of either block (Function inputs: backend, eps, features, token_ids,
    embed_weight, *weights): gradients of the features and of every weight but the embedding."""
    saved = ctx.saved_tensors
    inputs, acts = saved[:ctx.num_inputs], saved[ctx.num_inputs:]
    need = ctx.needs_input_grad
    grads = [torch.empty_like(t) if (t is not None and need[2 + i]) else None
             for i, t in enumerate(inputs) if i not in (1, 2)]  # token_ids and embed_weight get none
    if any(g is not None for g in grads):
        kernels.bwd(ctx.backend, grad_out.contiguous(), *inputs, ctx.eps, *acts, *grads)
    d_features, *d_weights = grads
    return (None, None, d_features, None, None, *d_weights)


def _apply(kernels, function, backend, eps, features, token_ids, embed_weight, weights, out, check_ids, H, dt, dev):
    """Both public functions after their own argument checks: flatten to [T, H], then the autograd
    Function when a gradient is needed, else the forward kernel alone into `out`."""
    _check_ids(token_ids, embed_weight.shape[0], check_ids)
    lead = tuple(features.shape[:-1])
    f2, ids = _flat(features, H), token_ids.reshape(-1).contiguous()
    weights = [t.contiguous() if t is not None else None for t in (embed_weight, *weights)]
    grad = _needs_grad(features, *weights[1:])
    res = _new_out(out, lead + (H,), dt, dev, grad)
    T = f2.shape[0]
    if T == 0:
        return res
    if grad:
        return function.apply(backend, float(eps), f2, ids, *weights).reshape(lead + (H,))
    I = weights[-1].shape[1]
    kernels.fwd(backend, f2, ids, *weights, float(eps), res.view(T, H), *kernels.activations(T, H, I, dt, dev, False))
    return res


# ---------------------------------------------------------------------------------------------------
# FSPAD

class _FspadFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend, eps, features, token_ids, embed_weight, fc_weight, fc_bias, norm_weight, gate_weight,
                up_weight, down_weight):
        return _function_forward(ctx, _FSPAD, backend, eps, (features, token_ids, embed_weight, fc_weight, fc_bias,
                                                              norm_weight, gate_weight, up_weight, down_weight))

    @staticmethod
    def backward(ctx, grad_out):
        return _function_backward(ctx, _FSPAD, grad_out)


def fspad_feature_sampling(features: torch.Tensor, token_ids: torch.Tensor, embed_weight: torch.Tensor,
                           fc_weight: torch.Tensor, fc_bias: Optional[torch.Tensor], norm_weight: torch.Tensor,
                           gate_weight: torch.Tensor, up_weight: torch.Tensor, down_weight: torch.Tensor,
                           eps: float = 1e-6, *, backend: Optional[str] = None, out: Optional[torch.Tensor] = None,
                           check_ids: Optional[bool] = None) -> torch.Tensor:
    """FSPAD feature sampling: u = z + W_d(SiLU(W_g e) * W_u RMSNorm(z)), z = W_fc [e; f] + b, e = Emb[x].

    Args:
        features: [..., H] target features f (fp32, fp16 or bf16; fp64 on the cpu/torch backends).
        token_ids: int32 or int64 [...] (the leading shape of `features`), rows of `embed_weight`.
        embed_weight: [V, H], the target's embedding (frozen: no gradient flows to it).
        fc_weight: [H, 2H] (input order [embedding; feature]); fc_bias: [H] or None.
        norm_weight: [H], RMSNorm_1's weight. gate_weight, up_weight: [I, H]. down_weight: [H, I].
        eps: RMSNorm epsilon.
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels._backend).
        out: optional [..., H] output buffer (inference only: refused when a gradient is needed).
        check_ids: range check of token_ids (see _check_ids): None = exact on CPU, asynchronous device
            assertion on GPU (no host sync); True = exact everywhere (syncs on GPU); False = none.

    Returns:
        u [..., H] in the dtype of `features`; accumulation is fp32 on every backend. Differentiable with
        respect to features and every weight except the embedding.
    """
    H, dt = _check_common(features, token_ids, embed_weight, fc_weight, fc_bias, eps)
    I = gate_weight.shape[0] if isinstance(gate_weight, torch.Tensor) and gate_weight.dim() == 2 else None
    check_tensor("norm_weight", norm_weight, dtype=dt, shape=(H,))
    check_tensor("gate_weight", gate_weight, dtype=dt, shape=(None, H))
    check_tensor("up_weight", up_weight, dtype=dt, shape=(I, H))
    check_tensor("down_weight", down_weight, dtype=dt, shape=(H, I))
    dev = same_device(features=features, token_ids=token_ids, embed_weight=embed_weight, fc_weight=fc_weight,
                      fc_bias=fc_bias, norm_weight=norm_weight, gate_weight=gate_weight, up_weight=up_weight,
                      down_weight=down_weight)
    return _apply(_FSPAD, _FspadFunction, backend, eps, features, token_ids, embed_weight,
                  (fc_weight, fc_bias, norm_weight, gate_weight, up_weight, down_weight), out, check_ids, H, dt, dev)


# ---------------------------------------------------------------------------------------------------
# GRIFFIN

class _GriffinFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend, eps, features, token_ids, embed_weight, fc_weight, fc_bias, norm_b_weight,
                norm_a_weight, up_weight, down_weight):
        return _function_forward(ctx, _GRIFFIN, backend, eps, (features, token_ids, embed_weight, fc_weight, fc_bias,
                                                                norm_b_weight, norm_a_weight, up_weight, down_weight))

    @staticmethod
    def backward(ctx, grad_out):
        return _function_backward(ctx, _GRIFFIN, grad_out)


def griffin_token_fusion(features: torch.Tensor, token_ids: torch.Tensor, embed_weight: torch.Tensor,
                         fc_weight: torch.Tensor, fc_bias: Optional[torch.Tensor], norm_b_weight: torch.Tensor,
                         norm_a_weight: torch.Tensor, up_weight: torch.Tensor, down_weight: torch.Tensor,
                         eps: float = 1e-6, *, backend: Optional[str] = None, out: Optional[torch.Tensor] = None,
                         check_ids: Optional[bool] = None) -> torch.Tensor:
    """GRIFFIN token-guided fusion: g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)]), h = W_fc [e; f] + b, e = Emb[x].

    Args:
        features: [..., H] target features f (fp32, fp16 or bf16; fp64 on the cpu/torch backends).
        token_ids: int32 or int64 [...] (the leading shape of `features`), rows of `embed_weight`.
        embed_weight: [V, H], the target's embedding (frozen: no gradient flows to it).
        fc_weight: [H, 2H] (input order [embedding; feature]); fc_bias: [H] or None.
        norm_b_weight: [H], N_b (the checkpoints' fc.post_attention_layernorm); norm_a_weight: [H], N_a
            (fc.mlp.input_layernorm), applied to both halves. up_weight: [I, 2H]. down_weight: [H, I].
        eps: epsilon of both RMSNorms.
        backend, out, check_ids: as in fspad_feature_sampling.

    Returns:
        g [..., H] in the dtype of `features` (fp32 accumulation). Differentiable with respect to
        features and every weight except the embedding.
    """
    H, dt = _check_common(features, token_ids, embed_weight, fc_weight, fc_bias, eps)
    check_tensor("norm_b_weight", norm_b_weight, dtype=dt, shape=(H,))
    check_tensor("norm_a_weight", norm_a_weight, dtype=dt, shape=(H,))
    check_tensor("up_weight", up_weight, dtype=dt, shape=(None, 2 * H))
    check_tensor("down_weight", down_weight, dtype=dt, shape=(H, up_weight.shape[0]))
    dev = same_device(features=features, token_ids=token_ids, embed_weight=embed_weight, fc_weight=fc_weight,
                      fc_bias=fc_bias, norm_b_weight=norm_b_weight, norm_a_weight=norm_a_weight, up_weight=up_weight,
                      down_weight=down_weight)
    return _apply(_GRIFFIN, _GriffinFunction, backend, eps, features, token_ids, embed_weight,
                  (fc_weight, fc_bias, norm_b_weight, norm_a_weight, up_weight, down_weight), out, check_ids,
                  H, dt, dev)
