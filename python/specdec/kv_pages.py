"""Pages of a paged KV cache, shared by the target's PagedTreeKVCache and the draft head's PagedDraftCache:
the pool that hands out physical pages.
"""

from __future__ import annotations

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
