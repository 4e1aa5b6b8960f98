"""PyTorch reference of tree attention: the specification and the oracle of the tests.

Memory: one boolean visibility tensor [B, Nq, S_max] and fp32 scores [B, H, Nq, S_max] (about 32 MiB for
H = 32, Nq = 64, S_max = 4096), plus fp32 copies of the caches (fp64 for fp64 inputs); no [S_max, S_max]-sized
intermediate.
"""

from __future__ import annotations

import torch

from ..ops.masks import tree_visibility


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> None:
    """out = softmax(scale * q k^T + bias) v over the visible slots (see ops.attention.tree_attention).

    Computed in fp32 whatever the input dtype (fp64 for fp64 inputs, which the tests use as the truth);
    GQA maps query head h to KV head h // (H / H_kv). A query row with no visible key writes zeros.
    """
    B, H, Nq, D = q.shape
    H_kv, S = k_cache.shape[1], k_cache.shape[2]
    G = H // H_kv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    visible = tree_visibility(tree_mask, cache_len, S)  # [B, Nq, S]
    qf = q.to(acc).reshape(B, H_kv, G * Nq, D)  # heads h = kv * G + g
    scores = torch.matmul(qf, k_cache.to(acc).transpose(-1, -2)) * scale  # [B, H_kv, G * Nq, S]
    scores = scores.view(B, H_kv, G, Nq, S)
    vis = visible[:, None, None]  # [B, 1, 1, Nq, S]
    scores = scores.masked_fill(~vis, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # empty rows
    p = torch.exp(scores - row_max).masked_fill(~vis, 0.0)
    denom = p.sum(dim=-1, keepdim=True)
    o = torch.matmul(p.view(B, H_kv, G * Nq, S), v_cache.to(acc)).view(B, H_kv, G, Nq, D)
    o = torch.where(denom > 0, o / denom.clamp(min=torch.finfo(acc).tiny), torch.zeros_like(o))
    out.copy_(o.reshape(B, H, Nq, D).to(out.dtype))
