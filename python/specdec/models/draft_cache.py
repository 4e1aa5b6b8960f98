"""The draft head's KV cache (its one decoder layer's keys and values): contiguous or on pages.

Both kinds have the same interface for DraftHead.forward: `check` (the head's shapes and dtype), `write`
(new keys/values at logical slots) and `attend` (tree attention over the committed slots plus the tree
slots of the packed mask). The draft's cache only grows (accepted pairs are appended at cache_len, tree
slots after them are overwritten by the next tree), so it needs no compaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

import specdec_kernels
from specdec_kernels.checks import check_tensor

from ..kv import write_slots
from ..kv_pages import PagePool, page_slots, write_page_slots
from .layers import tree_attention


@dataclass
class DraftCache:
    """The draft's KV cache (one layer): k, v [B, H_kv, max_len, head_dim].

    Committed lengths live with the caller (cache_len int32 [B]).
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def tensors(self) -> list:
        """[k, v], the list compact_kv takes."""
        return [self.k, self.v]

    def check(self, B: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device) -> None:
        """TypeError / ValueError unless k and v are [B, num_kv_heads, *, head_dim] of `dtype` on `device`."""
        check_tensor("cache.k", self.k, dtype=dtype, shape=(B, num_kv_heads, None, head_dim), device=device)
        check_tensor("cache.v", self.v, dtype=dtype, shape=tuple(self.k.shape), device=device)

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys/values [B, H_kv, T, D] at slots int64 [B, T] (no host synchronisation)."""
        write_slots(self.k, slots, k)
        write_slots(self.v, slots, v)

    def attend(self, q: torch.Tensor, cache_len: torch.Tensor, tree_mask: torch.Tensor, scale: float):
        """specdec_kernels.tree_attention over the cache (its dense twin under autograd)."""
        return tree_attention(q, self.k, self.v, cache_len, tree_mask, scale)


@dataclass
class PagedDraftCache:
    """The draft's KV cache on pages, as an engine keeps it: k, v NHD pages [num_pages, P, H_kv, head_dim],
    block_table int32 [B, max_pages] (logical slot s of request b is page block_table[b, s // P], offset
    s % P). Reads go through specdec_kernels.paged_tree_attention. Inference only (no autograd path).

    `pool` and `pages` record where the pages came from; `release()` gives them back to the pool.
    """

    k: torch.Tensor
    v: torch.Tensor
    block_table: torch.Tensor
    page_size: int
    pool: Optional[PagePool] = None
    pages: List[List[int]] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.block_table.shape[0]

    @property
    def max_len(self) -> int:
        return self.block_table.shape[1] * self.page_size

    def tensors(self) -> list:
        """[k, v]: the page tensors, the list compact_paged_kv takes."""
        return [self.k, self.v]

    def check(self, B: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device) -> None:
        """TypeError / ValueError unless the pages are [*, page_size, num_kv_heads, head_dim] of `dtype` on
        `device` and the block table is int32 [B, *] there."""
        shape = (None, self.page_size, num_kv_heads, head_dim)
        check_tensor("cache.k", self.k, dtype=dtype, shape=shape, device=device)
        check_tensor("cache.v", self.v, dtype=dtype, shape=tuple(self.k.shape), device=device)
        check_tensor("cache.block_table", self.block_table, dtype=torch.int32, shape=(B, None), device=device)

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys/values [B, H_kv, T, D] at logical slots int64 [B, T], through the block table (no sync)."""
        page, offset = page_slots(self.block_table, self.page_size, slots)
        write_page_slots(self.k, page, offset, k)
        write_page_slots(self.v, page, offset, v)

    def attend(self, q: torch.Tensor, cache_len: torch.Tensor, tree_mask: torch.Tensor, scale: float):
        """specdec_kernels.paged_tree_attention over the pages (RuntimeError under autograd: no backward)."""
        if torch.is_grad_enabled() and (q.requires_grad or self.k.requires_grad or self.v.requires_grad):
            raise RuntimeError("PagedDraftCache is inference-only: run the decode path under torch.no_grad()")
        return specdec_kernels.paged_tree_attention(
            q, self.k, self.v, self.block_table, cache_len, tree_mask, scale=scale
        )

    def release(self) -> None:
        """Give the pages back to the pool (the cache is unusable afterwards)."""
        if self.pool is not None:
            for pages in self.pages:
                self.pool.give_back(pages)
        self.pages = []
