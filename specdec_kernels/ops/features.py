"""Feature sampling over token embeddings: the input blocks of the FSPAD and GRIFFIN draft heads.

    FSPAD    z = W_fc [e; f] + b,  u = z + W_d (SiLU(W_g e) * W_u RMSNorm(z))
    GRIFFIN  h = W_fc [e; f] + b,  g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)])

with e = embed_weight[token_ids] (the target's frozen embedding: it gets no gradient). Both are
differentiable with respect to the features and every other weight, on every backend.

One name per block everywhere: the public function `fspad_feature_sampling` (resp. `griffin_token_fusion`)
runs the op `specdec::fspad_feature_sampling` forward and `specdec::fspad_feature_sampling_backward` in
backward (`specdec_kernels.get_op(name)` shows their backends), implemented by the C++ kernels
`fspad_feature_sampling_cpu` / `_cuda`, the Triton launchers of the same names (on
`specdec::<name>_triton`) and the torch reference `reference.features.fspad_feature_sampling_out` /
`_backward`.

Backends (specdec_kernels._backend): `triton` gathers embedding rows inside the GEMM operand loads (no
[T, H] copy of e, no [T, 2H] concatenation), splits W_fc into its embedding and feature halves, and fuses
RMSNorm, SiLU and the gating product into the GEMMs' prologue/epilogue; `cpu` composes GEMMs with fused
C++ row kernels, its forward's GEMMs of few rows (a draft step) on specdec_kernels' linear kernel where that
was measured faster than ATen's GEMM on this CPU (ops.linear.route_small_products, decided before the first
CPU call of a dtype), the rest on ATen's; `torch` is the plain composition (specdec_kernels/reference/features.py).

Autocast: under torch.autocast the blocks behave like their composition, whose F.linear calls run in the
autocast dtype: the floating inputs (features, weights, the gathered embedding rows) are cast to it, the
block runs in it with autocast disabled inside, and returns it; the casts are differentiable, so fp32
master weights receive fp32 gradients.

What backward uses (saved, not recomputed): z / h [T, H], fp32 row statistics (rstd of z; for GRIFFIN
rstd of h, of N_b(h) and of e) and the [T, I] pre-activations (FSPAD: gate and up; GRIFFIN: W_u's
output). The activation SiLU(gate) * up (resp. SiLU(pre_act)) is recomputed in backward by the same
fused pass that forms its gradient, which saves one [T, I] tensor per call.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import torch

from .. import _backend
from ..checks import FLOAT_DTYPES_FP64, ID_DTYPES, check_out, check_tensor, same_device
from ..reference import features as ref
from . import linear as linear_ops


def _kernel_dtypes(backend, *args):
    # fp64 exists for gradcheck-style checks on the cpu and torch backends; the GPU paths are fp32/16/bf16.
    if backend in ("triton", "cuda") and args[0].dtype == torch.float64:
        return f"the {backend} kernels take fp32/fp16/bf16, got {args[0].dtype}"
    return None


_FSPAD_FWD = _backend.standard_op(
    "fspad_feature_sampling",
    reference=ref.fspad_feature_sampling_out,
    triton_module="features_fspad",
    limits=_kernel_dtypes,
)
_FSPAD_BWD = _backend.standard_op(
    "fspad_feature_sampling_backward",
    reference=ref.fspad_feature_sampling_backward,
    triton_module="features_fspad",
    limits=_kernel_dtypes,
)
_GRIFFIN_FWD = _backend.standard_op(
    "griffin_token_fusion",
    reference=ref.griffin_token_fusion_out,
    triton_module="features_griffin",
    limits=_kernel_dtypes,
)
_GRIFFIN_BWD = _backend.standard_op(
    "griffin_token_fusion_backward",
    reference=ref.griffin_token_fusion_backward,
    triton_module="features_griffin",
    limits=_kernel_dtypes,
)


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
            raise ValueError(
                f"token_ids: expected ids in [0, {vocab}) (the rows of embed_weight), got "
                f"{int(token_ids.flatten()[pos])} at flat position {pos} "
                f"({int(bad.sum())} out of range in all)"
            )
        return
    torch._assert_async(
        ((token_ids >= 0) & (token_ids < vocab)).all(),
        f"token_ids: expected ids in [0, {vocab}) (the rows of embed_weight)",
    )


def _check_embedding(features, token_ids, embed_weight, embed_dtype: Optional[torch.dtype]) -> int:
    """features [..., H] (a float tensor), token_ids [...] and embed_weight [V >= 1, H] of `embed_dtype`
    (None: any floating dtype); returns H."""
    check_tensor("features", features, dtypes=FLOAT_DTYPES_FP64)
    if features.dim() < 1:
        raise ValueError("features: expected shape [..., H], got a 0-dimensional tensor")
    H = features.shape[-1]
    check_tensor("token_ids", token_ids, dtypes=ID_DTYPES, shape=tuple(features.shape[:-1]))
    check_tensor(
        "embed_weight",
        embed_weight,
        dtype=embed_dtype,
        shape=(None, H),
        dtypes=FLOAT_DTYPES_FP64 if embed_dtype is None else None,
    )
    if embed_weight.shape[0] < 1:
        raise ValueError("embed_weight: expected at least one row (vocabulary size >= 1)")
    return H


def _check_common(features, token_ids, embed_weight, fc_weight, fc_bias, eps):
    check_tensor("features", features, dtypes=FLOAT_DTYPES_FP64)
    dt = features.dtype
    H = _check_embedding(features, token_ids, embed_weight, dt)
    check_tensor("fc_weight", fc_weight, dtype=dt, shape=(H, 2 * H))
    if fc_bias is not None:
        check_tensor("fc_bias", fc_bias, dtype=dt, shape=(H,))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a float >= 0, got {eps!r}")
    return H, dt


def _check_fspad_weights(H, dt, w: Dict[str, Optional[torch.Tensor]]) -> None:
    gate_weight = w["gate_weight"]
    I = gate_weight.shape[0] if isinstance(gate_weight, torch.Tensor) and gate_weight.dim() == 2 else None
    check_tensor("norm_weight", w["norm_weight"], dtype=dt, shape=(H,))
    check_tensor("gate_weight", gate_weight, dtype=dt, shape=(None, H))
    check_tensor("up_weight", w["up_weight"], dtype=dt, shape=(I, H))
    check_tensor("down_weight", w["down_weight"], dtype=dt, shape=(H, I))


def _check_griffin_weights(H, dt, w: Dict[str, Optional[torch.Tensor]]) -> None:
    check_tensor("norm_b_weight", w["norm_b_weight"], dtype=dt, shape=(H,))
    check_tensor("norm_a_weight", w["norm_a_weight"], dtype=dt, shape=(H,))
    check_tensor("up_weight", w["up_weight"], dtype=dt, shape=(None, 2 * H))
    check_tensor("down_weight", w["down_weight"], dtype=dt, shape=(H, w["up_weight"].shape[0]))


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
        raise ValueError(
            "out: caller buffers are for inference (no autograd); call without out= when gradients "
            "are needed, or under torch.no_grad()"
        )
    check_out("out", out, shape, dt, dev)
    return out


# ---------------------------------------------------------------------------------------------------
# Autocast


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype when autocast is enabled for `device_type`, else None (torch >= 2.4 API)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta, ...)
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _autocast_eligible(t) -> bool:
    # What autocast casts: floating tensors other than fp64 (fp64 stays fp64 under autocast).
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _autocast_inputs(dtype, features, token_ids, embed_weight, weights, check_ids):
    """The inputs as the composition's F.linear calls see them under autocast: floating ones in `dtype`.

    The casts are differentiable (gradients reach fp32 master weights in fp32). The embedding table is not
    cast whole (a [V, H] copy per call): its T rows are gathered (after the range check) and cast, like the
    composition's e = E[ids], and indexed by arange(T).
    """

    def cast(t):
        return t.to(dtype) if _autocast_eligible(t) and t.dtype != dtype else t

    features = cast(features)
    weights = {k: cast(v) for k, v in weights.items()}
    if _autocast_eligible(embed_weight) and embed_weight.dtype != dtype:
        _check_embedding(features, token_ids, embed_weight, None)
        same_device(features=features, token_ids=token_ids, embed_weight=embed_weight)
        V = embed_weight.shape[0]
        _check_ids(token_ids, V, check_ids)
        flat = token_ids.reshape(-1)
        # clamp: with check_ids=False a bad id reads a wrong row (like the kernels), never out of bounds
        rows = embed_weight.detach().index_select(0, flat.clamp(0, V - 1)) if flat.numel() else embed_weight[:1]
        embed_weight = rows.to(dtype)
        token_ids = torch.arange(flat.numel(), dtype=flat.dtype, device=flat.device).reshape(token_ids.shape)
        check_ids = False
    return features, token_ids, embed_weight, weights, check_ids


# ---------------------------------------------------------------------------------------------------
# What the two input blocks share: the forward writes [T, H] beside activations kept for backward, the
# backward takes every forward input, those activations and one gradient buffer per differentiable input.


class _Kernels(NamedTuple):
    fwd: _backend.KernelOp  # (features, token_ids, embed_weight, *weights, eps, out, *activations)
    bwd: _backend.KernelOp  # (grad_out, features, ..., eps, *activations, *grads)
    activations: Callable  # (T, H, I, dtype, device, train) -> the buffers the forward fills beside `out`
    check_weights: Callable  # (H, dtype, weights) -> None; raises on a bad block weight
    function: Optional[type] = None  # the torch.autograd.Function


def _fspad_activations(T, H, I, dt, dev, train):
    """z [T, H], rstd [T]; for backward also the pre-activations gate and up [T, I] (else None)."""
    kw = dict(dtype=dt, device=dev)
    pre = (torch.empty(T, I, **kw), torch.empty(T, I, **kw)) if train else (None, None)
    return (torch.empty(T, H, **kw), torch.empty(T, dtype=_stat_dtype(dt), device=dev)) + pre


def _griffin_activations(T, H, I, dt, dev, train):
    """h [T, H], stats [T, 3] (rstd of h, of N_b(h), of e); for backward also W_u's output [T, I] (else None)."""
    return (
        torch.empty(T, H, dtype=dt, device=dev),
        torch.empty(T, 3, dtype=_stat_dtype(dt), device=dev),
        torch.empty(T, I, dtype=dt, device=dev) if train else None,
    )


def _function_forward(ctx, kernels, backend, eps, inputs):
    """autograd.Function.forward of either block; inputs = (features [T, H], token_ids, embed_weight,
    *weights) with down_weight [H, I] last."""
    features, down_weight = inputs[0], inputs[-1]
    (T, H), I = features.shape, down_weight.shape[1]
    out = torch.empty(T, H, dtype=features.dtype, device=features.device)
    acts = kernels.activations(T, H, I, features.dtype, features.device, True)
    args = (*inputs, eps, out, *acts)
    chosen = kernels.fwd.choose(*args, backend=backend)
    kernels.fwd.run(chosen, *args)
    ctx.save_for_backward(*inputs, *acts)
    ctx.backend, ctx.eps, ctx.num_inputs = chosen, eps, len(inputs)
    return out


def _function_backward(ctx, kernels, grad_out):
    """autograd.Function.backward of either block (Function inputs: backend, eps, features, token_ids,
    embed_weight, *weights): gradients of the features and of every weight but the embedding."""
    saved = ctx.saved_tensors
    inputs, acts = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
    need = ctx.needs_input_grad
    grads = [
        torch.empty_like(t) if (t is not None and need[2 + i]) else None
        for i, t in enumerate(inputs)
        if i not in (1, 2)
    ]  # token_ids and embed_weight get none
    if any(g is not None for g in grads):
        args = (grad_out.contiguous(), *inputs, ctx.eps, *acts, *grads)
        device_type = inputs[0].device.type
        if _autocast_dtype(device_type) is not None:  # e.g. backward() called inside the autocast region
            with torch.autocast(device_type, enabled=False):
                kernels.bwd(*args, backend=ctx.backend)
        else:
            kernels.bwd(*args, backend=ctx.backend)
    d_features, *d_weights = grads
    return (None, None, d_features, None, None, *d_weights)


def _may_run_cpu_kernel(backend: Optional[str]) -> bool:
    """Whether the C++ CPU kernel may run a forward asked for with `backend`: only then do its small products
    need linear_choice's measurement (which, measured for the first time, takes seconds)."""
    requested = backend if backend is not None else _backend._env_backend()
    return requested in (None, "cpu")


def _apply(kernels, backend, eps, features, token_ids, embed_weight, weights, out, check_ids, H, dt, dev):
    """Both public functions after their argument checks: flatten to [T, H], then the autograd Function
    when a gradient is needed, else the forward kernel alone into `out`. `weights` in kernel order."""
    _check_ids(token_ids, embed_weight.shape[0], check_ids)
    if dev.type == "cpu" and not torch.compiler.is_compiling() and _may_run_cpu_kernel(backend):
        linear_ops.route_small_products(dt)  # once per dtype: a set lookup after the first call
    lead = tuple(features.shape[:-1])
    f2, ids = _flat(features, H), token_ids.reshape(-1).contiguous()
    weights = [t.contiguous() if t is not None else None for t in (embed_weight, *weights)]
    grad = _needs_grad(features, *weights[1:])
    res = _new_out(out, lead + (H,), dt, dev, grad)
    T = f2.shape[0]
    if T == 0:
        return res
    if grad:
        return kernels.function.apply(backend, float(eps), f2, ids, *weights).reshape(lead + (H,))
    I = weights[-1].shape[1]
    kernels.fwd(
        f2, ids, *weights, float(eps), res.view(T, H), *kernels.activations(T, H, I, dt, dev, False), backend=backend
    )
    return res


def _checked_apply(kernels, features, token_ids, embed_weight, weights, eps, backend, out, check_ids):
    H, dt = _check_common(features, token_ids, embed_weight, weights["fc_weight"], weights["fc_bias"], eps)
    kernels.check_weights(H, dt, weights)
    dev = same_device(features=features, token_ids=token_ids, embed_weight=embed_weight, **weights)
    return _apply(
        kernels, backend, eps, features, token_ids, embed_weight, tuple(weights.values()), out, check_ids, H, dt, dev
    )


def _block(kernels, features, token_ids, embed_weight, weights, eps, backend, out, check_ids):
    """A public function's body: `weights` maps the schema's names to the block weights, in kernel order."""
    amp = _autocast_dtype(features.device.type) if isinstance(features, torch.Tensor) else None
    if amp is None:
        return _checked_apply(kernels, features, token_ids, embed_weight, weights, eps, backend, out, check_ids)
    features, token_ids, embed_weight, weights, check_ids = _autocast_inputs(
        amp, features, token_ids, embed_weight, weights, check_ids
    )
    with torch.autocast(features.device.type, enabled=False):
        return _checked_apply(kernels, features, token_ids, embed_weight, weights, eps, backend, out, check_ids)


# ---------------------------------------------------------------------------------------------------
# FSPAD


class _FspadFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        backend,
        eps,
        features,
        token_ids,
        embed_weight,
        fc_weight,
        fc_bias,
        norm_weight,
        gate_weight,
        up_weight,
        down_weight,
    ):
        return _function_forward(
            ctx,
            _FSPAD,
            backend,
            eps,
            (features, token_ids, embed_weight, fc_weight, fc_bias, norm_weight, gate_weight, up_weight, down_weight),
        )

    @staticmethod
    def backward(ctx, grad_out):
        return _function_backward(ctx, _FSPAD, grad_out)


_FSPAD = _Kernels(_FSPAD_FWD, _FSPAD_BWD, _fspad_activations, _check_fspad_weights, _FspadFunction)


def fspad_feature_sampling(
    features: torch.Tensor,
    token_ids: torch.Tensor,
    embed_weight: torch.Tensor,
    fc_weight: torch.Tensor,
    norm_weight: torch.Tensor,
    gate_weight: torch.Tensor,
    up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    *,
    fc_bias: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    backend: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
    check_ids: Optional[bool] = None,
) -> torch.Tensor:
    """FSPAD feature sampling: u = z + W_d(SiLU(W_g e) * W_u RMSNorm(z)), z = W_fc [e; f] + b, e = Emb[x].

    Args:
        features: [..., H] target features f (fp32, fp16 or bf16; fp64 on the cpu/torch backends).
        token_ids: int32 or int64 [...] (the leading shape of `features`), rows of `embed_weight`.
        embed_weight: [V, H], the target's embedding (frozen: no gradient flows to it).
        fc_weight: [H, 2H] (input order [embedding; feature]).
        norm_weight: [H], RMSNorm_1's weight. gate_weight, up_weight: [I, H]. down_weight: [H, I].
        fc_bias: [H] or None (keyword only).
        eps: RMSNorm epsilon.
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels.get_op).
        out: optional [..., H] output buffer (inference only: refused when a gradient is needed).
        check_ids: range check of token_ids (see _check_ids): None = exact on CPU, asynchronous device
            assertion on GPU (no host sync); True = exact everywhere (syncs on GPU); False = none.

    Returns:
        u [..., H] in the dtype of `features` (under torch.autocast: the autocast dtype, see the module
        docstring); accumulation is fp32 on every backend. Differentiable with respect to features and every
        weight except the embedding.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> T, H, I, V = 3, 8, 16, 50
        >>> f, emb, ids = torch.randn(T, H), torch.randn(V, H), torch.tensor([1, 2, 49])
        >>> fc_w = torch.randn(H, 2 * H, requires_grad=True)
        >>> w = [torch.ones(H), torch.randn(I, H), torch.randn(I, H), torch.randn(H, I)]
        >>> u = sk.fspad_feature_sampling(f, ids, emb, fc_w, *w, fc_bias=torch.zeros(H))
        >>> u.shape, u.dtype
        (torch.Size([3, 8]), torch.float32)
        >>> u.sum().backward()
        >>> fc_w.grad.shape
        torch.Size([8, 16])
    """
    return _block(
        _FSPAD,
        features,
        token_ids,
        embed_weight,
        dict(
            fc_weight=fc_weight,
            fc_bias=fc_bias,
            norm_weight=norm_weight,
            gate_weight=gate_weight,
            up_weight=up_weight,
            down_weight=down_weight,
        ),
        eps,
        backend,
        out,
        check_ids,
    )


# ---------------------------------------------------------------------------------------------------
# GRIFFIN


class _GriffinFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        backend,
        eps,
        features,
        token_ids,
        embed_weight,
        fc_weight,
        fc_bias,
        norm_b_weight,
        norm_a_weight,
        up_weight,
        down_weight,
    ):
        return _function_forward(
            ctx,
            _GRIFFIN,
            backend,
            eps,
            (
                features,
                token_ids,
                embed_weight,
                fc_weight,
                fc_bias,
                norm_b_weight,
                norm_a_weight,
                up_weight,
                down_weight,
            ),
        )

    @staticmethod
    def backward(ctx, grad_out):
        return _function_backward(ctx, _GRIFFIN, grad_out)


_GRIFFIN = _Kernels(_GRIFFIN_FWD, _GRIFFIN_BWD, _griffin_activations, _check_griffin_weights, _GriffinFunction)


def griffin_token_fusion(
    features: torch.Tensor,
    token_ids: torch.Tensor,
    embed_weight: torch.Tensor,
    fc_weight: torch.Tensor,
    norm_b_weight: torch.Tensor,
    norm_a_weight: torch.Tensor,
    up_weight: torch.Tensor,
    down_weight: torch.Tensor,
    *,
    fc_bias: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    backend: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
    check_ids: Optional[bool] = None,
) -> torch.Tensor:
    """GRIFFIN token-guided fusion: g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)]), h = W_fc [e; f] + b, e = Emb[x].

    Args:
        features: [..., H] target features f (fp32, fp16 or bf16; fp64 on the cpu/torch backends).
        token_ids: int32 or int64 [...] (the leading shape of `features`), rows of `embed_weight`.
        embed_weight: [V, H], the target's embedding (frozen: no gradient flows to it).
        fc_weight: [H, 2H] (input order [embedding; feature]).
        norm_b_weight: [H], N_b (the checkpoints' fc.post_attention_layernorm); norm_a_weight: [H], N_a
            (fc.mlp.input_layernorm), applied to both halves. up_weight: [I, 2H]. down_weight: [H, I].
        fc_bias: [H] or None (keyword only).
        eps: epsilon of both RMSNorms.
        backend, out, check_ids: as in fspad_feature_sampling.

    Returns:
        g [..., H] in the dtype of `features` (under torch.autocast: the autocast dtype), fp32 accumulation.
        Differentiable with respect to features and every weight except the embedding.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> T, H, I, V = 3, 8, 16, 50
        >>> f, emb, ids = torch.randn(T, H), torch.randn(V, H), torch.tensor([0, 7, 49])
        >>> w = [torch.randn(H, 2 * H), torch.ones(H), torch.ones(H), torch.randn(I, 2 * H), torch.randn(H, I)]
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     g = sk.griffin_token_fusion(f, ids, emb, *w)
        >>> g.shape, g.dtype
        (torch.Size([3, 8]), torch.bfloat16)
    """
    return _block(
        _GRIFFIN,
        features,
        token_ids,
        embed_weight,
        dict(
            fc_weight=fc_weight,
            fc_bias=fc_bias,
            norm_b_weight=norm_b_weight,
            norm_a_weight=norm_a_weight,
            up_weight=up_weight,
            down_weight=down_weight,
        ),
        eps,
        backend,
        out,
        check_ids,
    )
