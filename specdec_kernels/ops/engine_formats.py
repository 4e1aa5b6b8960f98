"""Our Tree in the formats serving engines take for tree verification (SGLang, FlashInfer).

- SGLang's EAGLE verification walks a tree through three int64 [B, N] arrays: `retrive_index` (the
  position of each node in the flattened batch of draft tokens, b * N + i), `retrive_next_token` (the
  node's first child, -1 for none) and `retrive_next_sibling` (its next sibling, -1 for none): exactly our
  Tree's first_child / next_sibling links plus the flat index.
- FlashInfer's prefill wrapper takes a tree as a custom mask over a ragged batch: for request b a row-major
  bool matrix [qo_len, kv_len] (query i sees the committed prefix and its ancestors among the tree's keys,
  which follow the prefix), packed to bits little-endian per request (`packed_custom_mask`, each request's
  bits padded to a whole byte) with `mask_indptr` the byte offset of each request.

These are converters for an engine's planning step, not decode-path ops: the FlashInfer mask has a size that
depends on cache_len, so its lengths are read on the host.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from ..checks import check_tensor
from .masks import unpack_mask
from .tree import Tree


def sglang_tree(tree: Tree) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(retrive_index, retrive_next_token, retrive_next_sibling), int64 [B, N] each, for SGLang's EAGLE
    verification: node i of request b is draft token b * N + i; the links are the tree's first child and
    next sibling (siblings in increasing node order), -1 for none. Rows of invalid trees are all -1.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32))
        >>> [t.tolist() for t in sk.sglang_tree(tree)]
        [[[0, 1, 2, 3]], [[1, 3, -1, -1]], [[-1, 2, -1, -1]]]
    """
    if not isinstance(tree, Tree):
        raise TypeError(f"tree: expected a specdec_kernels.Tree (build_tree), got {type(tree).__name__}")
    B, N = tree.first_child.shape
    flat = torch.arange(B * N, device=tree.first_child.device).view(B, N)
    valid = tree.valid[:, None]
    index = torch.where(valid, flat, -1)
    return index, tree.first_child.to(torch.int64), tree.next_sibling.to(torch.int64)


def flashinfer_custom_mask(
    tree: Tree, cache_len: Union[Sequence[int], torch.Tensor, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(packed_custom_mask uint8, mask_indptr int32 [B + 1]) for FlashInfer's prefill wrapper with the N
    tree nodes of each request as its queries (qo_len = N) over kv_len = cache_len[b] + N keys.

    Row i of request b's matrix sees every prefix key (< cache_len[b]) and tree key cache_len[b] + j for j
    an ancestor of i (or i): tree_attention's visibility. The rows are flattened row-major, packed 8 bits
    per byte little-endian, each request padded to a whole byte; mask_indptr[b] is its first byte.

    cache_len: an int for every request, a sequence of ints, or an int32 [B] tensor (read on the host).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0]], dtype=torch.int32))
        >>> packed, indptr = sk.flashinfer_custom_mask(tree, 1)     # rows [1 1 0] and [1 1 1]: bits 110111
        >>> packed.tolist(), indptr.tolist()
        ([59], [0, 1])
    """
    if not isinstance(tree, Tree):
        raise TypeError(f"tree: expected a specdec_kernels.Tree (build_tree), got {type(tree).__name__}")
    B, N, _ = tree.mask.shape
    if isinstance(cache_len, torch.Tensor):
        check_tensor("cache_len", cache_len, dtype=torch.int32, shape=(B,))
        lengths = cache_len.tolist()
    elif isinstance(cache_len, int) and not isinstance(cache_len, bool):
        lengths = [cache_len] * B
    else:
        lengths = [int(c) for c in cache_len]
        if len(lengths) != B:
            raise ValueError(f"cache_len: expected {B} lengths (one per request), got {len(lengths)}")
    if any(c < 0 for c in lengths):
        raise ValueError(f"cache_len: expected lengths >= 0, got {min(lengths)}")
    dense = unpack_mask(tree.mask, N)  # [B, N, N]
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.int32, device=dense.device)
    chunks, indptr = [], [0]
    for b, c in enumerate(lengths):
        rows = torch.cat([torch.ones(N, c, dtype=torch.bool, device=dense.device), dense[b]], dim=1).flatten()
        bits = torch.nn.functional.pad(rows.to(torch.int32), (0, (-rows.numel()) % 8)).view(-1, 8)
        chunks.append((bits * weights).sum(1).to(torch.uint8))
        indptr.append(indptr[-1] + chunks[-1].numel())
    packed = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8, device=dense.device)
    return packed, torch.tensor(indptr, dtype=torch.int32, device=dense.device)
