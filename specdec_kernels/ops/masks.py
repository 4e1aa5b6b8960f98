"""The packed ancestor mask: building, decoding and exporting it (sync-free torch code, no kernels).

Layout (the one of build_tree's `mask` and of every `tree_mask` argument): row i of a tree is
int32 [W], W = ceil(n / 32); bit j % 32 of word j // 32 (little-endian) is set iff node j is visible to
row i (i itself or one of its ancestors). With the KV layout of the package, tree node j's key sits at
slot cache_len[b] + j, after the committed prefix.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..checks import cache_len_arg, check_tensor, int_arg, same_device


def mask_words(num_nodes: int) -> int:
    """int32 words per mask row for trees of `num_nodes` nodes (at least 1).

    Example:
        >>> from specdec_kernels import mask_words
        >>> mask_words(60), mask_words(64), mask_words(65)
        (2, 2, 3)
    """
    num_nodes = int_arg("num_nodes", num_nodes)
    if num_nodes < 0:
        raise ValueError(f"num_nodes: expected >= 0, got {num_nodes}")
    return max(1, (num_nodes + 31) // 32)


def pack_bits(dense: torch.Tensor) -> torch.Tensor:
    """bool [..., n] -> int32 [..., ceil(n / 32)] (at least one word), little-endian within each word.

    Example:
        >>> import torch
        >>> from specdec_kernels import pack_bits
        >>> pack_bits(torch.tensor([[True, False, True]]))
        tensor([[5]], dtype=torch.int32)
    """
    check_tensor("dense", dense, dtype=torch.bool)
    if dense.dim() < 1:
        raise ValueError("dense: expected shape [..., n], got a 0-dimensional tensor")
    n = dense.shape[-1]
    W = mask_words(n)
    pad = W * 32 - n
    if pad:
        dense = torch.nn.functional.pad(dense, (0, pad))
    bits = dense.reshape(*dense.shape[:-1], W, 32).to(torch.int64)
    weights = torch.bitwise_left_shift(
        torch.ones(32, dtype=torch.int64, device=dense.device), torch.arange(32, device=dense.device)
    )
    words = (bits * weights).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # bit 31 set: the int32 is negative
    return words.to(torch.int32)


def chain_mask(batch: int, length: int, device=None, words: Optional[int] = None) -> torch.Tensor:
    """Causal chain mask int32 [batch, length, W]: row i sees rows 0..i (W = mask_words(length) unless given).

    A chain is the tree in which node i's parent is i - 1: prefill and plain decoding use it.

    Example:
        >>> from specdec_kernels import chain_mask
        >>> chain_mask(1, 3)
        tensor([[[1],
                 [3],
                 [7]]], dtype=torch.int32)
    """
    for name, x in (("batch", batch), ("length", length)):
        if int_arg(name, x) < 0:
            raise ValueError(f"{name}: expected >= 0, got {x}")
    W = mask_words(length)
    if words is not None:
        if int_arg("words", words) < W:
            raise ValueError(f"words: {length} nodes need at least {W} words per row, got {words}")
        W = words
    i = torch.arange(length, device=device)
    j = torch.arange(W * 32, device=device)
    dense = j[None, :] <= i[:, None]
    return pack_bits(dense).expand(batch, length, W).contiguous()


def unpack_mask(tree_mask: torch.Tensor, num_nodes: Optional[int] = None) -> torch.Tensor:
    """Packed int32 [B, N, W] mask -> dense bool [B, N, n] (dense[b, i, j]: j is i or an ancestor of i).

    n = num_nodes, default N (at most 32 * W). The inverse of pack_bits on the first n columns.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32))
        >>> sk.unpack_mask(tree.mask)[0, 3].tolist()       # node 3 sees the root, node 1 and itself
        [True, True, False, True]
    """
    check_tensor("tree_mask", tree_mask, dtype=torch.int32, ndim=3)
    B, N, W = tree_mask.shape
    n = N if num_nodes is None else int_arg("num_nodes", num_nodes)
    if n < 0:
        raise ValueError(f"num_nodes: expected >= 0, got {n}")
    if W * 32 < n:
        raise ValueError(f"tree_mask: {W} words hold {32 * W} nodes, fewer than {n}")
    j = torch.arange(n, device=tree_mask.device)
    words = tree_mask[:, :, j // 32]  # [B, N, n]
    return ((words >> (j % 32).to(torch.int32)) & 1).bool()


def tree_visibility(tree_mask: torch.Tensor, cache_len: Union[torch.Tensor, int], kv_len: int) -> torch.Tensor:
    """bool [B, Nq, kv_len]: visible[b, i, s] iff key slot s is visible to query i of request b.

    Slot s is visible iff s < cache_len[b] (the committed prefix) or s = cache_len[b] + j with bit j of
    tree_mask[b, i] set. Bits that point at or past kv_len select no slot. This is the semantics of
    tree_attention, decoded to a dense mask. cache_len: int32 [B], or an int for every request.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> vis = sk.tree_visibility(sk.chain_mask(1, 2), cache_len=2, kv_len=5)
        >>> vis[0].int().tolist()
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    """
    check_tensor("tree_mask", tree_mask, dtype=torch.int32, ndim=3)
    B, Nq, W = tree_mask.shape
    dev = tree_mask.device
    cache_len = cache_len_arg(cache_len, B, dev)
    same_device(tree_mask=tree_mask, cache_len=cache_len)
    kv_len = int_arg("kv_len", kv_len)
    if kv_len < 0:
        raise ValueError(f"kv_len: expected >= 0, got {kv_len}")
    s = torch.arange(kv_len, device=dev)
    rel = s[None, :] - cache_len.to(torch.int64)[:, None]  # [B, kv_len]
    in_tree = (rel >= 0) & (rel < 32 * W)
    relc = rel.clamp(0, max(32 * W - 1, 0))
    if W == 0:
        tree_vis = torch.zeros(B, Nq, kv_len, dtype=torch.bool, device=dev)
    else:
        words = torch.gather(
            tree_mask.to(torch.int64) & 0xFFFFFFFF, 2, (relc // 32)[:, None, :].expand(B, Nq, kv_len)
        )  # [B, Nq, kv_len]
        tree_vis = ((words >> (relc % 32)[:, None, :]) & 1).bool() & in_tree[:, None, :]
    return (rel < 0)[:, None, :] | tree_vis


def tree_attention_bias(
    tree_mask: torch.Tensor, cache_len: Union[torch.Tensor, int], kv_len: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive attention bias [B, 1, Nq, kv_len] for SDPA-style engines over the package's cache layout.

    0 where tree_visibility is true, -inf elsewhere. cache_len: int32 [B], or an int for every request.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0, 0]], dtype=torch.int32))
        >>> bias = sk.tree_attention_bias(tree.mask, cache_len=1, kv_len=4)
        >>> bias.shape
        torch.Size([1, 1, 3, 4])
        >>> bias[0, 0, 2].tolist()                          # node 2 sees the prefix, the root and itself
        [0.0, 0.0, -inf, 0.0]
    """
    visible = tree_visibility(tree_mask, cache_len, kv_len)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype}")
    B, Nq, _ = tree_mask.shape
    bias = torch.zeros(B, 1, Nq, visible.shape[2], dtype=dtype, device=tree_mask.device)
    return bias.masked_fill(~visible[:, None], float("-inf"))
