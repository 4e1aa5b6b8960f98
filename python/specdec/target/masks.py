"""Packed int32 masks (the layout of specdec_kernels.build_tree: bit j of a row in word j // 32, bit j % 32)."""
from __future__ import annotations

import torch


def pack_bits(dense: torch.Tensor) -> torch.Tensor:
    """bool [..., n] -> int32 [..., ceil(n / 32)], little-endian within each word."""
    if dense.dtype != torch.bool:
        raise TypeError(f"pack_bits: expected a bool tensor, got {dense.dtype}")
    n = dense.shape[-1]
    W = max(1, (n + 31) // 32)
    pad = W * 32 - n
    if pad:
        dense = torch.nn.functional.pad(dense, (0, pad))
    bits = dense.reshape(*dense.shape[:-1], W, 32).to(torch.int64)
    weights = torch.bitwise_left_shift(torch.ones(32, dtype=torch.int64, device=dense.device),
                                       torch.arange(32, device=dense.device))
    words = (bits * weights).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # bit 31 set: the int32 is negative
    return words.to(torch.int32)


def chain_mask(batch: int, length: int, device=None, words: int | None = None) -> torch.Tensor:
    """Causal chain mask int32 [batch, length, W]: row i sees rows 0..i (W = ceil(length / 32) unless given)."""
    i = torch.arange(length, device=device)
    W = max(1, (length + 31) // 32) if words is None else words
    j = torch.arange(W * 32, device=device)
    dense = j[None, :] <= i[:, None]
    return pack_bits(dense).expand(batch, length, W).contiguous()
