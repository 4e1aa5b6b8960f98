"""Pages of a paged KV cache, shared by the target's PagedTreeKVCache and the draft head's PagedDraftCache:
the pool that hands out physical pages, the block table of a batch, and writes of new keys/values at
logical slots through the table.

Layout: NHD pages [num_pages, P, H_kv, D] (vLLM's, FlashInfer's default); logical slot s of request b is
page block_table[b, s // P], offset s % P, as specdec_kernels.paged_tree_attention reads them.
"""

from __future__ import annotations

import math
from typing import List

import torch


class PagePool:
    """Free physical page ids of a pool of `num_pages`, handed out in a shuffled (seeded) order."""

    def __init__(self, num_pages: int, seed: int = 0):
        if num_pages < 1:
            raise ValueError(f"PagePool: expected num_pages >= 1, got {num_pages}")
        self.num_pages = num_pages
        self._free = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed)).tolist()

    @property
    def free(self) -> int:
        """Pages not handed out."""
        return len(self._free)

    def take(self, n: int) -> List[int]:
        """n free page ids (ValueError when fewer are free)."""
        if n > len(self._free):
            raise ValueError(f"PagePool: {n} pages asked for, {len(self._free)} of {self.num_pages} free")
        taken, self._free = self._free[:n], self._free[n:]
        return taken

    def give_back(self, pages: List[int]) -> None:
        """Return pages to the pool (they are handed out again first)."""
        self._free = list(pages) + self._free


def take_block_table(pool: PagePool, batch_size: int, max_len: int, page_size: int, device=None) -> tuple:
    """Pages for `batch_size` requests of up to `max_len` slots each: (block_table int32 [B, max_pages] on
    `device`, the page ids per request as lists, for giving them back). ValueError when the pool is short."""
    per_request = math.ceil(max_len / page_size)
    if per_request * batch_size > pool.free:
        raise ValueError(
            f"PagePool: {batch_size} requests of {max_len} slots need {per_request * batch_size} pages of "
            f"{page_size}; {pool.free} of {pool.num_pages} are free"
        )
    pages = [pool.take(per_request) for _ in range(batch_size)]
    return torch.tensor(pages, dtype=torch.int32, device=device), pages


def page_slots(block_table: torch.Tensor, page_size: int, slots: torch.Tensor) -> tuple:
    """(page, offset) int64 [B, T] of the logical slots int64 [B, T] through block_table int32 [B, max_pages].

    Slots past the table's last page are clamped to its last page (not checked: that would synchronise;
    the caller sizes the table). No host synchronisation.
    """
    table = block_table.to(torch.int64)
    page = table.gather(1, (slots // page_size).clamp(max=table.shape[1] - 1))
    return page, slots % page_size


def write_page_slots(pages: torch.Tensor, page: torch.Tensor, offset: torch.Tensor, new: torch.Tensor) -> None:
    """pages[page[b, i], offset[b, i]] = new[b, :, i, :] in place: pages NHD [num_pages, P, H_kv, D], page and
    offset int64 [B, T] (from page_slots), new [B, H_kv, T, D] (cast to the pages' dtype)."""
    pages[page, offset] = new.transpose(1, 2).to(pages.dtype)
