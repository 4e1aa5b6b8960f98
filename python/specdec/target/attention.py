"""The `specdec_tree` attention function for transformers' attention-function registry.

Hugging Face decoders (Llama, Mistral, Qwen2, Qwen3, ...) look their attention function up by
`config._attn_implementation` in `AttentionInterface`; registering ours under ATTN_IMPLEMENTATION makes their
modeling code run unchanged on our cache: the layer projects q/k/v, applies RoPE at the positions we pass,
calls TreeKVCache.update (which writes the new keys at slots cache_len[b] + i and returns the full buffers),
then calls this function, which runs specdec_kernels.tree_attention with the committed lengths and the
packed tree mask.

Because the name is not in transformers' mask registry (AttentionMaskInterface), the model's
create_causal_mask returns None early: no [B, 1, T, S] mask is ever built.

The per-forward state (cache_len, tree mask) travels in the forward kwargs as `specdec_state`; transformers
passes unknown kwargs from the model's forward down to every attention call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AttentionInterface

import specdec_kernels

ATTN_IMPLEMENTATION = "specdec_tree"
_OP = specdec_kernels.get_op("tree_attention")


@dataclass
class TreeAttentionState:
    """What every attention layer needs for one forward: the committed lengths and the packed mask.

    cache_len: int32 [B], tokens committed before this forward. tree_mask: int32 [B, T, W]: bit j of row i
    lets new token i see the new token j (written at slot cache_len[b] + j). backend: the specdec_kernels
    backend (None chooses).

    plan: set by the forward's first attention call, which goes through the checked public
    specdec_kernels.tree_attention: (argument signature, backend chosen, scale). Later layers whose
    arguments have the same signature (every layer of a Llama-family decoder) run that backend's kernel
    directly: the checks and the backend choice cost about 35 us per call on a CPU core, 1 ms per decode
    step of a 30-layer target, which is 2-5% of a SmolLM2-135M step.
    """

    cache_len: torch.Tensor
    tree_mask: torch.Tensor
    backend: str | None = None
    plan: Optional[tuple] = field(default=None, repr=False)
    block_table: Optional[torch.Tensor] = None  # a paged cache (PagedTreeKVCache): key/value are its pages


def _signature(query, key, value, scaling) -> tuple:
    """What the checks of specdec_kernels.tree_attention depend on, besides the state's own tensors."""
    return (
        query.shape,
        query.dtype,
        query.device,
        key.shape,
        key.stride(),
        key.dtype,
        value.shape,
        value.stride(),
        value.dtype,
        scaling,
    )


def tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
):
    """transformers attention function: query [B, H, T, D] over the full cache buffers [B, H_kv, S_max, D].

    Returns (attn_output [B, T, H, D], None) as transformers expects.
    """
    state = kwargs.get("specdec_state")
    if not isinstance(state, TreeAttentionState):
        raise RuntimeError(
            f"attention implementation {ATTN_IMPLEMENTATION!r} runs only inside "
            "specdec.target.TargetModel.forward (no specdec_state was passed)"
        )
    if attention_mask is not None:
        raise RuntimeError(
            f"{ATTN_IMPLEMENTATION!r} got an attention mask from the model; masks come from the "
            "tree mask only (was the model's mask function registered for this name?)"
        )
    if state.block_table is not None:  # a paged cache: key / value are the layer's pages [pages, P, H_kv, D]
        out = specdec_kernels.paged_tree_attention(
            query,
            key,
            value,
            state.block_table,
            state.cache_len,
            state.tree_mask,
            scale=scaling,
            backend=state.backend,
        )
        return out.transpose(1, 2), None
    if dropout and module.training:
        raise RuntimeError(f"{ATTN_IMPLEMENTATION!r} is inference-only (attention dropout {dropout} in training mode)")
    if softcap is not None:
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION!r} does not implement attention logit soft-capping")
    if sliding_window is not None and key.shape[2] > sliding_window:
        # Full attention equals sliding-window attention only while every key is inside the window.
        raise NotImplementedError(
            f"sliding-window attention (window {sliding_window}) with a cache of "
            f"{key.shape[2]} slots: keep max_len <= {sliding_window}"
        )
    sig = _signature(query, key, value, scaling)
    plan = state.plan
    if plan is not None and plan[0] == sig:  # checked by this forward's first layer: run the kernel directly
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        _OP.run(plan[1], query.contiguous(), key, value, state.cache_len, state.tree_mask, plan[2], out)
        return out.transpose(1, 2), None
    out = specdec_kernels.tree_attention(
        query, key, value, state.cache_len, state.tree_mask, scale=scaling, backend=state.backend
    )
    if out.numel() and state.cache_len.is_contiguous() and state.tree_mask.is_contiguous():
        scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        args = (query.contiguous(), key, value, state.cache_len, state.tree_mask, scale, out)
        state.plan = (sig, _OP.choose(*args, backend=state.backend), scale)
    return out.transpose(1, 2), None


AttentionInterface.register(ATTN_IMPLEMENTATION, tree_attention_forward)
