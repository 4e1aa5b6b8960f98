"""The target's decoder layers without transformers' per-layer machinery: same modules, same math, same order.

A transformers decoder layer call goes through several wrappers before its arithmetic (the gradient-
checkpointing layer's __call__, keyword-argument deprecation and output-recording decorators, the attention
registry's lookup, kwargs threaded through every level): on a CPU, about 2 ms of a 20 ms SmolLM2-135M
decode step (bench/results/verify_cost_lean-vs-transformers_cpu.md). For the Llama-family layers that
TargetModel serves, `LeanDecoder` runs the model's own submodules (embedding, rotary embedding, norms,
projections -- so prepacked or kernel linears keep working) and the specdec_tree attention function in
exactly the order and with exactly the operations of the transformers code: the result is bitwise the same.

Which layers: the decoder-layer classes of SUPPORTED (Llama, Mistral, Qwen2, Qwen3), with every submodule
the code below reads. Anything else (another architecture, a patched or quantized layer class, a missing
attribute) runs transformers' own forward. Since a later transformers release may change a layer's
arithmetic, TargetModel checks the lean path against transformers' on its first forward and keeps it only
when both agree bitwise (else it warns once and stays on transformers' path); tests/system check every
supported family on the installed version.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional

import torch

from . import attention

# Decoder-layer class name -> the sliding window its attention passes to the attention function.
SUPPORTED: dict = {
    "LlamaDecoderLayer": lambda attn: None,
    "MistralDecoderLayer": lambda attn: getattr(attn.config, "sliding_window", None),
    "Qwen2DecoderLayer": lambda attn: attn.sliding_window,
    "Qwen3DecoderLayer": lambda attn: attn.sliding_window,
}
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")
_MLP = ("gate_proj", "up_proj", "down_proj", "act_fn")


class _Layer(NamedTuple):
    """One decoder layer's submodules and constants, looked up once."""

    index: int
    norm1: torch.nn.Module
    norm2: torch.nn.Module
    q: torch.nn.Module
    k: torch.nn.Module
    v: torch.nn.Module
    o: torch.nn.Module
    q_norm: Optional[torch.nn.Module]
    k_norm: Optional[torch.nn.Module]
    head_dim: int
    scaling: float
    sliding_window: Optional[int]
    gate: torch.nn.Module
    up: torch.nn.Module
    down: torch.nn.Module
    act: Callable
    attn: torch.nn.Module


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """transformers' Llama-family RMSNorm, op for op (fp32 statistics, rounded before the weight)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _is_rms_norm(m) -> bool:
    # the classes' own forward is the one _rms_norm repeats (LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, ...)
    return type(m).__name__.endswith("RMSNorm") and hasattr(m, "weight") and hasattr(m, "variance_epsilon")


def _plan_layer(i: int, layer: torch.nn.Module) -> Optional[_Layer]:
    sliding = SUPPORTED.get(type(layer).__name__)
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    if sliding is None or attn is None or mlp is None or not all(_is_rms_norm(n) for n in norms):
        return None
    if not all(hasattr(attn, a) for a in _ATTN) or not all(hasattr(mlp, a) for a in _MLP) or attn.layer_idx != i:
        return None
    qk_norms = (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None))
    if any(n is not None and not _is_rms_norm(n) for n in qk_norms):
        return None
    return _Layer(
        i, *norms, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, *qk_norms, attn.head_dim, attn.scaling,
        sliding(attn), mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn, attn,
    )  # fmt: skip


class LeanDecoder:
    """The decoder `base` (a transformers Llama-family model body) run layer by layer as described in the
    module docstring. Build it with LeanDecoder.plan(base), which returns None where a layer is not
    supported."""

    def __init__(self, base: torch.nn.Module, layers: List[_Layer]):
        self.base = base
        self.layers = layers

    @classmethod
    def plan(cls, base: torch.nn.Module) -> Optional["LeanDecoder"]:
        """A LeanDecoder for `base`, or None when one of its parts is not what the lean path repeats."""
        if not all(hasattr(base, a) for a in ("embed_tokens", "rotary_emb", "norm", "layers")):
            return None
        if not _is_rms_norm(base.norm) or len(base.layers) == 0:
            return None
        layers = [_plan_layer(i, layer) for i, layer in enumerate(base.layers)]
        return None if any(p is None for p in layers) else cls(base, layers)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, state) -> torch.Tensor:
        """The last hidden states (after the final norm) of input_ids [B, T] at position_ids [B, T], writing
        their K/V into `cache` as transformers' path does; `state` is the forward's TreeAttentionState."""
        B, T = input_ids.shape
        x = self.base.embed_tokens(input_ids)
        cos, sin = self.base.rotary_emb(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # apply_rotary_pos_emb's unsqueeze_dim = 1
        run_attention = attention.tree_attention_forward
        for p in self.layers:
            h = _rms_norm(x, p.norm1)
            shape = (B, T, -1, p.head_dim)
            q, k = p.q(h).view(shape), p.k(h).view(shape)
            if p.q_norm is not None:
                q = p.q_norm(q)
            if p.k_norm is not None:
                k = p.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), p.v(h).view(shape).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            k, v = cache.update(k, v, p.index)
            o, _ = run_attention(
                p.attn, q, k, v, None, dropout=0.0, scaling=p.scaling, sliding_window=p.sliding_window,
                specdec_state=state,
            )  # fmt: skip
            x = x + p.o(o.reshape(B, T, -1).contiguous())
            h = _rms_norm(x, p.norm2)
            x = x + p.down(p.act(p.gate(h)) * p.up(h))
        return _rms_norm(x, self.base.norm)
