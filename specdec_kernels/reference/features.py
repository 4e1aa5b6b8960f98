"""PyTorch reference of the feature-sampling blocks of FSPAD and GRIFFIN: the spec and the tests' oracle.

Both blocks fuse the target feature f [T, H] with the embedding e = embed_weight[token_ids] of the next
token (the embedding is the target's, frozen: no gradient reaches it):

    FSPAD    z = W_fc [e; f] + b
             u = z + W_d (SiLU(W_g e) * W_u RMSNorm(z))
    GRIFFIN  h = W_fc [e; f] + b
             g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)])      (N_a: one weight for both halves)

RMSNorm is Llama's: x.float() * rsqrt(mean(x^2) + eps), cast back to x's dtype, times the weight.
This module is the plain composition (torch.cat, F.linear, F.embedding): it materialises e and [e; f]
and is differentiable by autograd, so `gradcheck` in fp64 checks it directly. `fspad_feature_sampling`
and `griffin_token_fusion` take the public functions' signature (specdec_kernels.ops.features, without
backend/out/check_ids). The `*_out` / `*_backward` functions are the torch backend of the fused ops
`specdec::fspad_feature_sampling`, `specdec::fspad_feature_sampling_backward`, ... (same signatures as the
schemas in specdec_kernels/_schemas.py): the forward writes the output and the saved activations into
caller buffers, the backward recomputes the composition under autograd.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # Llama normalises in fp32; fp64 stays fp64 so that gradcheck's finite differences stay meaningful.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm: normalise in fp32 (fp64 for fp64 x), cast back to x's dtype, then scale by `weight`."""
    xf = _upcast(x)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def _rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """[T] rsqrt(mean(x^2) + eps) per row in fp32 (fp64 for fp64 x), computed like rms_norm does."""
    xf = _upcast(x)
    return torch.rsqrt(xf.pow(2).mean(-1) + eps)


def _fc(features, token_ids, embed_weight, fc_weight, fc_bias):
    # The embedding is frozen: detach it so autograd never produces a [V, H] gradient.
    e = F.embedding(token_ids.long(), embed_weight.detach())
    return e, F.linear(torch.cat([e, features], dim=-1), fc_weight, fc_bias)


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
) -> torch.Tensor:
    """FSPAD feature sampling, u = z + W_d(SiLU(W_g e) * W_u RMSNorm(z)), z = W_fc[e; f] + b. Returns u [..., H].

    Example:
        >>> import torch
        >>> from specdec_kernels.reference.features import fspad_feature_sampling
        >>> T, H, I, V = 3, 8, 16, 50
        >>> f, emb = torch.randn(T, H), torch.randn(V, H)
        >>> w = [torch.randn(H, 2 * H), torch.ones(H), torch.randn(I, H), torch.randn(I, H), torch.randn(H, I)]
        >>> fspad_feature_sampling(f, torch.tensor([1, 2, 49]), emb, *w, fc_bias=torch.zeros(H)).shape
        torch.Size([3, 8])
    """
    e, z = _fc(features, token_ids, embed_weight, fc_weight, fc_bias)
    act = F.silu(F.linear(e, gate_weight)) * F.linear(rms_norm(z, norm_weight, eps), up_weight)
    return z + F.linear(act, down_weight)


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
) -> torch.Tensor:
    """GRIFFIN token-guided fusion, g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)]), h = W_fc[e; f] + b.

    Returns g [..., H]. N_b is norm_b_weight's RMSNorm, N_a (norm_a_weight) normalises both halves.

    Example:
        >>> import torch
        >>> from specdec_kernels.reference.features import griffin_token_fusion
        >>> T, H, I, V = 3, 8, 16, 50
        >>> f, emb = torch.randn(T, H), torch.randn(V, H)
        >>> w = [torch.randn(H, 2 * H), torch.ones(H), torch.ones(H), torch.randn(I, 2 * H), torch.randn(H, I)]
        >>> griffin_token_fusion(f, torch.tensor([0, 7, 49]), emb, *w).shape
        torch.Size([3, 8])
    """
    e, h = _fc(features, token_ids, embed_weight, fc_weight, fc_bias)
    x = torch.cat(
        [rms_norm(rms_norm(h, norm_b_weight, eps), norm_a_weight, eps), rms_norm(e, norm_a_weight, eps)], dim=-1
    )
    return h + F.linear(F.silu(F.linear(x, up_weight)), down_weight)


# ---------------------------------------------------------------------------------------------------
# The torch backend of the fused ops (out-variants with the schemas' signatures).


def fspad_feature_sampling_out(
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_weight,
    gate_weight,
    up_weight,
    down_weight,
    eps,
    out,
    z,
    rstd,
    gate,
    up,
) -> None:
    """Write u into `out`, z, rstd(z) and (when given) the gate / up pre-activations (see ops.features)."""
    e, zz = _fc(features, token_ids, embed_weight, fc_weight, fc_bias)
    g = F.linear(e, gate_weight)
    u = F.linear(rms_norm(zz, norm_weight, eps), up_weight)
    out.copy_(zz + F.linear(F.silu(g) * u, down_weight))
    z.copy_(zz)
    rstd.copy_(_rstd(zz, eps))
    if gate is not None:
        gate.copy_(g)
    if up is not None:
        up.copy_(u)


def griffin_token_fusion_out(
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_b_weight,
    norm_a_weight,
    up_weight,
    down_weight,
    eps,
    out,
    h,
    stats,
    pre_act,
) -> None:
    """Write g into `out`, h, the row statistics [rstd(h), rstd(N_b(h)), rstd(e)] and (when given) pre_act."""
    e, hh = _fc(features, token_ids, embed_weight, fc_weight, fc_bias)
    yb = rms_norm(hh, norm_b_weight, eps)
    x = torch.cat([rms_norm(yb, norm_a_weight, eps), rms_norm(e, norm_a_weight, eps)], dim=-1)
    v = F.linear(x, up_weight)
    out.copy_(hh + F.linear(F.silu(v), down_weight))
    h.copy_(hh)
    stats.copy_(torch.stack([_rstd(hh, eps), _rstd(yb, eps), _rstd(e, eps)], dim=-1))
    if pre_act is not None:
        pre_act.copy_(v)


def _grads_by_autograd(fn, grad_out, inputs: dict, grads: dict, eps: float) -> None:
    """Recompute fn(**inputs, eps=eps) under autograd and write d(out)/d(input) into each grads[name] not None."""
    with torch.enable_grad():
        leaves = {
            k: t.detach().requires_grad_(grads.get(k) is not None) if isinstance(t, torch.Tensor) else t
            for k, t in inputs.items()
        }
        out = fn(**leaves, eps=eps)
        wanted = [(leaves[k], g) for k, g in grads.items() if g is not None]
        if not wanted:
            return
        result = torch.autograd.grad(out, [leaf for leaf, _ in wanted], grad_out)
    for (_, g), r in zip(wanted, result):
        g.copy_(r)


def fspad_feature_sampling_backward(
    grad_out,
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_weight,
    gate_weight,
    up_weight,
    down_weight,
    eps,
    z,
    rstd,
    gate,
    up,
    d_features,
    d_fc_weight,
    d_fc_bias,
    d_norm_weight,
    d_gate_weight,
    d_up_weight,
    d_down_weight,
) -> None:
    """Gradients of fspad_feature_sampling by autograd over the composition (saved z/rstd/gate/up unused)."""
    _grads_by_autograd(
        fspad_feature_sampling,
        grad_out,
        dict(
            features=features,
            token_ids=token_ids,
            embed_weight=embed_weight,
            fc_weight=fc_weight,
            fc_bias=fc_bias,
            norm_weight=norm_weight,
            gate_weight=gate_weight,
            up_weight=up_weight,
            down_weight=down_weight,
        ),
        dict(
            features=d_features,
            fc_weight=d_fc_weight,
            fc_bias=d_fc_bias,
            norm_weight=d_norm_weight,
            gate_weight=d_gate_weight,
            up_weight=d_up_weight,
            down_weight=d_down_weight,
        ),
        eps,
    )


def griffin_token_fusion_backward(
    grad_out,
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_b_weight,
    norm_a_weight,
    up_weight,
    down_weight,
    eps,
    h,
    stats,
    pre_act,
    d_features,
    d_fc_weight,
    d_fc_bias,
    d_norm_b_weight,
    d_norm_a_weight,
    d_up_weight,
    d_down_weight,
) -> None:
    """Gradients of griffin_token_fusion by autograd over the composition (saved h/stats/pre_act unused)."""
    _grads_by_autograd(
        griffin_token_fusion,
        grad_out,
        dict(
            features=features,
            token_ids=token_ids,
            embed_weight=embed_weight,
            fc_weight=fc_weight,
            fc_bias=fc_bias,
            norm_b_weight=norm_b_weight,
            norm_a_weight=norm_a_weight,
            up_weight=up_weight,
            down_weight=down_weight,
        ),
        dict(
            features=d_features,
            fc_weight=d_fc_weight,
            fc_bias=d_fc_bias,
            norm_b_weight=d_norm_b_weight,
            norm_a_weight=d_norm_a_weight,
            up_weight=d_up_weight,
            down_weight=d_down_weight,
        ),
        eps,
    )
