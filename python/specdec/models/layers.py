"""Building blocks of the draft heads: RMSNorm, RoPE, GQA attention over the draft cache, SwiGLU MLP.

Attention has two paths. The decode path writes the new keys/values into the draft cache and calls
`specdec_kernels.tree_attention` (committed slots plus the tree slots of the packed mask; the paged cache's
`paged_tree_attention`, specdec.models.draft_cache); it is what the
drafting loop uses (under autograd it computes the same function densely: the kernels have no backward).
The sequence path (`DecoderLayer.forward_sequence`) is differentiable dense attention over the T inputs
only, with a causal or caller-given mask; it is what training uses. Both compute the same function:
tests/system/test_models.py checks it. The training path (`forward_train`) is the sequence path that can also
attend to keys/values of earlier calls (`TrainKV`, GRIFFIN's multi-pass training) and returns its own.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

import specdec_kernels

from .config import DraftConfig


class RMSNorm(nn.Module):
    """Llama RMSNorm: normalise in fp32, cast back to the input dtype, then scale by the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """weight * normalised x, same shape and (for a weight of x's dtype) dtype as x."""
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


# --------------------------------------------------------------------------------------------------
# Rotary position embedding (rotate-half convention of Llama).


def rope_inv_freq(config: DraftConfig, device=None) -> torch.Tensor:
    """fp32 [head_dim / 2] inverse frequencies for the config's base and (static) scaling."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    rs = config.rope_scaling
    if rs is None or rs["rope_type"] == "dynamic":
        return inv
    if rs["rope_type"] == "linear":
        # positions / factor, folded into the frequencies
        return inv / float(rs["factor"])
    # llama3: long wavelengths divided by `factor`, short ones kept, a smooth ramp in between.
    factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_len = float(rs["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > old_len / lo, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, smoothed, out)


class RotaryEmbedding(nn.Module):
    """cos/sin [B, T, head_dim] (fp32) for int64 position_ids [B, T].

    Computed in fp32 whatever the head's dtype (like Llama). Dynamic NTK scaling enlarges the base once
    the sequence exceeds max_position_embeddings; the length is taken as max(position_ids) + 1 and the new
    base is computed on the device, so no host sync.
    """

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        # fp32 frequencies per device, deliberately not a buffer: head.to(fp16) would round them.
        self._inv_freq: dict = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """The fp32 inverse frequencies on `device` (computed once per device)."""
        inv = self._inv_freq.get(device)
        if inv is None:
            inv = self._inv_freq[device] = rope_inv_freq(self.config, device)
        return inv

    def forward(self, position_ids: torch.Tensor) -> tuple:
        """(cos, sin), each fp32 [B, T, head_dim], for int64 position_ids [B, T]."""
        cfg = self.config
        pos = position_ids.float()
        inv = self.inv_freq(position_ids.device)
        rs = cfg.rope_scaling
        if rs is not None and rs["rope_type"] == "dynamic":
            d, mp, factor = cfg.head_dim, float(cfg.max_position_embeddings), float(rs["factor"])
            seq = pos.amax().clamp_min(0.0) + 1.0
            scale = torch.clamp(factor * seq / mp - (factor - 1.0), min=1.0) ** (d / (d - 2))
            scale = torch.where(seq > mp, scale, torch.ones_like(scale))
            # base' = base * scale  =>  inv' = inv * scale^(-2i/d)
            exps = torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d
            inv = inv * scale ** (-exps)
        freqs = pos[..., None] * inv  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension (Llama's RoPE convention)."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, D]; cos/sin [B, T, D] fp32, cast to x's dtype like Llama does."""
    cos = cos[:, None].to(x.dtype)
    sin = sin[:, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------------------------------
# The embedding operand of the fused input blocks (FSPAD, GRIFFIN).


def embedding_operand(embed_weight: torch.Tensor, input_ids: torch.Tensor, features: torch.Tensor) -> tuple:
    """(embedding table, token ids) to hand a fused input-block op together with `features`.

    The ops take the table in the features' dtype and on their device, and give it no gradient. The
    bound target's table usually is both (it is shared, never copied): then it is passed as it is
    (detached). When it is not (a head kept in another dtype than its target), only the rows in use are
    gathered and cast, and the ids become 0..T-1: never a converted copy of the whole [V, H] table.
    """
    ew = embed_weight.detach()
    if ew.dtype == features.dtype and ew.device == features.device:
        return ew, input_ids
    rows = F.embedding(input_ids.reshape(-1).to(ew.device), ew).to(device=features.device, dtype=features.dtype)
    ids = torch.arange(rows.shape[0], device=features.device).view(input_ids.shape)
    return rows, ids


# --------------------------------------------------------------------------------------------------
# Attention over the draft cache.


def dense_tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Differentiable plain-PyTorch tree attention with the semantics of specdec_kernels.tree_attention.

    Query i of request b sees key slot s iff s < cache_len[b], or s = cache_len[b] + j with bit j of
    tree_mask[b, i] set (specdec_kernels.tree_visibility). Scores and softmax in fp32; GQA by head
    grouping. A row that sees nothing gives zeros.
    """
    B, Hq, N, D = q.shape
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    visible = specdec_kernels.tree_visibility(tree_mask=tree_mask, cache_len=cache_len, kv_len=S)  # [B, N, S]
    g = Hq // Hkv
    k = k_cache.repeat_interleave(g, dim=1) if g > 1 else k_cache
    v = v_cache.repeat_interleave(g, dim=1) if g > 1 else v_cache
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [B, H, N, S]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row that sees nothing gives zeros, not NaN
    return torch.matmul(p, v.float()).to(q.dtype)


def tree_attention(q, k_cache, v_cache, cache_len, tree_mask, scale: float) -> torch.Tensor:
    """The decode path's attention: specdec_kernels.tree_attention, or dense_tree_attention under autograd.

    The kernels of specdec_kernels.tree_attention are inference-only (no backward), so when a gradient is
    needed (training through the decode path, e.g. through the cache write) the same function is computed
    by the differentiable dense path instead.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad or v_cache.requires_grad)
    if needs_grad:
        return dense_tree_attention(q, k_cache, v_cache, cache_len, tree_mask, scale)
    return specdec_kernels.tree_attention(q, k_cache, v_cache, cache_len, tree_mask, scale=scale)


class TrainKV(NamedTuple):
    """Keys and values of a training forward, RoPE applied: k, v [B, H_kv, S, head_dim] (GQA heads not
    repeated). Handed to a later forward_train as `past_kv`, they are prepended to its own keys."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        """S, the number of key slots."""
        return self.k.shape[2]


class Attention(nn.Module):
    """Llama self-attention (q/k/v/o projections, RoPE, GQA); o_proj has no bias."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        H, nh, nkv, hd = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, hd
        self.scale = 1.0 / math.sqrt(hd)
        self.q_proj = nn.Linear(H, nh * hd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(H, nkv * hd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(H, nkv * hd, bias=config.qkv_bias)
        self.o_proj = nn.Linear(nh * hd, H, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple:
        """x [B, T, H] -> q [B, nh, T, hd], k, v [B, nkv, T, hd], RoPE applied to q and k."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, o: torch.Tensor) -> torch.Tensor:
        """o [B, nh, T, hd] -> [B, T, H]."""
        B, _, T, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def forward_cached(self, x, cos, sin, cache, cache_len, tree_mask, slot_offset) -> torch.Tensor:
        """Write the T new keys/values at slots cache_len + slot_offset + i of `cache` (a DraftCache or
        PagedDraftCache: its `write`), then tree-attend through it (its `attend`)."""
        q, k, v = self.qkv(x, cos, sin)
        B, _, T, _ = k.shape
        slots = cache_len.to(torch.int64)[:, None] + slot_offset + torch.arange(T, device=x.device)[None, :]
        cache.write(slots, k, v)
        return self.out(cache.attend(q, cache_len, tree_mask, self.scale))

    def forward_sequence(self, x, cos, sin, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Dense attention among the T inputs; attn_mask bool [B, T, T] (True = visible) or None = causal."""
        q, k, v = self.qkv(x, cos, sin)
        g = self.num_heads // self.num_kv_heads
        if g > 1:
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        if attn_mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[:, None], scale=self.scale)
        return self.out(o)

    def forward_train(self, x, cos, sin, attn_mask: Optional[torch.Tensor], past: Optional[TrainKV]) -> tuple:
        """Dense attention of the T inputs over [past keys; own keys]; returns (out [B, T, H], TrainKV of
        all S + T keys). attn_mask bool [B, T, S + T] (True = visible), or None = causal (only without past).
        Gradients flow into `past` (the computation that produced it) unless the caller detached it."""
        q, k, v = self.qkv(x, cos, sin)
        if past is not None:
            k = torch.cat((past.k.to(k.dtype), k), dim=2)
            v = torch.cat((past.v.to(v.dtype), v), dim=2)
        kv = TrainKV(k, v)
        g = self.num_heads // self.num_kv_heads
        if g > 1:
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        if attn_mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[:, None], scale=self.scale)
        return self.out(o), kv


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); `out_features` is H, or 2H for the dual-output layer."""

    def __init__(self, hidden_size: int, intermediate_size: int, out_features: Optional[int] = None):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, out_features or hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """down(silu(gate(x)) * up(x))."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """The draft's one decoder layer: no input norm; a = x + Attn(x).

    Single output (EAGLE): o = a + MLP(post_attention_layernorm(a)), [B, T, H].
    Dual output (FSPAD/GRIFFIN, MLP down_proj I -> 2H): out = [a; a] + MLP(norm(a)), [B, T, 2H].
    """

    def __init__(self, config: DraftConfig, dual: bool):
        super().__init__()
        H = config.hidden_size
        self.dual = dual
        self.self_attn = Attention(config)
        self.mlp = MLP(H, config.intermediate_size, 2 * H if dual else H)
        self.post_attention_layernorm = RMSNorm(H, config.rms_norm_eps)

    def _finish(self, a: torch.Tensor) -> torch.Tensor:
        m = self.mlp(self.post_attention_layernorm(a))
        return (torch.cat((a, a), dim=-1) if self.dual else a) + m

    def forward_cached(self, x, cos, sin, cache, cache_len, tree_mask, slot_offset) -> torch.Tensor:
        """The decode path (Attention.forward_cached, then the MLP)."""
        a = x + self.self_attn.forward_cached(x, cos, sin, cache, cache_len, tree_mask, slot_offset)
        return self._finish(a)

    def forward_sequence(self, x, cos, sin, attn_mask) -> torch.Tensor:
        """The differentiable sequence path (Attention.forward_sequence, then the MLP)."""
        return self._finish(x + self.self_attn.forward_sequence(x, cos, sin, attn_mask))

    def forward_train(self, x, cos, sin, attn_mask, past: Optional[TrainKV]) -> tuple:
        """The training path (Attention.forward_train, then the MLP): (out, TrainKV of past + own keys)."""
        a, kv = self.self_attn.forward_train(x, cos, sin, attn_mask, past)
        return self._finish(x + a), kv
