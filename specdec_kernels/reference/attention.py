"""PyTorch reference of tree attention: the specification and the oracle of the tests.

Memory: one boolean visibility tensor [B, Nq, S_max] and fp32 scores [B, H, Nq, S_max] (about 32 MiB for
H = 32, Nq = 64, S_max = 4096), plus fp32 copies of the caches; no [S_max, S_max]-sized intermediate.
"""
from __future__ import annotations

import torch


def tree_visibility(cache_len: torch.Tensor, tree_mask: torch.Tensor, s_max: int) -> torch.Tensor:
    """bool [B, Nq, S_max]: visible[b, i, s] iff key slot s is visible to query i of request b.

    Slot s is visible iff s < cache_len[b] (the committed prefix) or s = cache_len[b] + j with bit j of
    tree_mask[b, i] set (word j // 32, bit j % 32). Bits that point at or past S_max select no slot.
    """
    B, Nq, W = tree_mask.shape
    dev = tree_mask.device
    s = torch.arange(s_max, device=dev)
    rel = s[None, :] - cache_len.to(torch.int64)[:, None]                    # [B, S_max]
    in_tree = (rel >= 0) & (rel < 32 * W)
    relc = rel.clamp(0, max(32 * W - 1, 0))
    if W == 0:
        tree_vis = torch.zeros(B, Nq, s_max, dtype=torch.bool, device=dev)
    else:
        words = torch.gather(tree_mask.to(torch.int64) & 0xFFFFFFFF, 2,
                             (relc // 32)[:, None, :].expand(B, Nq, s_max))  # [B, Nq, S_max]
        tree_vis = ((words >> (relc % 32)[:, None, :]) & 1).bool() & in_tree[:, None, :]
    return (rel < 0)[:, None, :] | tree_vis


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_len: torch.Tensor,
                   tree_mask: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """out = softmax(scale * q k^T + bias) v over the visible slots (see ops.attention.tree_attention).

    Computed in fp32 whatever the input dtype; GQA maps query head h to KV head h // (H / H_kv). A query
    row with no visible key writes zeros.
    """
    B, H, Nq, D = q.shape
    H_kv, S = k_cache.shape[1], k_cache.shape[2]
    G = H // H_kv
    visible = tree_visibility(cache_len, tree_mask, S)                       # [B, Nq, S]
    qf = q.float().reshape(B, H_kv, G * Nq, D)                               # heads h = kv * G + g
    scores = torch.matmul(qf, k_cache.float().transpose(-1, -2)) * scale    # [B, H_kv, G * Nq, S]
    scores = scores.view(B, H_kv, G, Nq, S)
    vis = visible[:, None, None]                                             # [B, 1, 1, Nq, S]
    scores = scores.masked_fill(~vis, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # empty rows
    p = torch.exp(scores - row_max).masked_fill(~vis, 0.0)
    denom = p.sum(dim=-1, keepdim=True)
    o = torch.matmul(p.view(B, H_kv, G * Nq, S), v_cache.float()).view(B, H_kv, G, Nq, D)
    o = torch.where(denom > 0, o / denom.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(o))
    out.copy_(o.reshape(B, H, Nq, D).to(out.dtype))
