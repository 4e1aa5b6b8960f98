"""The K/V of a continuous batch's slots (specdec.target.continuous_batching.generate_many), two ways.

`ContiguousSlotKV`: one TreeKVCache row per slot. A refill prefills the new prompts in a cache of their own
and copies their K/V into the slots' rows; shrinking to the busy slots copies their rows into a smaller
cache.

`PagedSlotKV`: a PagedTreeKVCache whose pages an engine-style allocator hands out per request. A request
entering slot s takes ceil((prompt + budget) / P) pages from a PagePool (it waits in the queue while the
pool is short, as a serving engine's scheduler would); its pages return to the pool when it ends and the
next request reuses them. The prompts of a refill are prefilled straight into their pages through a view of
those block-table rows, and shrinking keeps the busy rows of the table: no K/V is copied. Rows of idle
slots and the table past a request's own pages point at a scratch page, so an idle slot's decode writes
never touch a page another request owns.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from ..kv_pages import PagePool


def _prompt_ids(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple:
    """(ids int64 [n, longest] right-padded with pad_id, lengths int32 [n]) on `device`."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.int64)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.as_tensor(p, dtype=torch.int64)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32, device=device)
    return ids.to(device), lengths


class ContiguousSlotKV:
    """Slot s's K/V in row s of a TreeKVCache of `capacity` slots per request."""

    def __init__(self, target, slots: int, capacity: int):
        self.target, self.capacity = target, capacity
        self.cache = target.new_cache(slots, capacity)

    def admit(self, slot: int, tokens: int) -> bool:
        """Room for a request of `tokens` (prompt + budget) in `slot`: always (every row holds capacity)."""
        return True

    def release(self, slot: int) -> None:
        """The request in `slot` ended (its row is simply overwritten by the next one)."""

    def prefill(self, prompts: list, rows: List[int], pad_id: int, chunk: int):
        """Prefill `prompts` together in a cache of their own, copy their K/V into rows `rows` (whose cache_len
        becomes the prompt lengths); the TargetOutput: logits [len(prompts), V] at each last token, hidden
        [len(prompts), longest, H] (right-padded)."""
        ids, lengths = _prompt_ids(prompts, pad_id, self.target.device)
        longest = ids.shape[1]
        small = self.target.new_cache(len(prompts), longest, dtype=self.cache.layers[0].keys.dtype)
        out = self.target.prefill(ids, lengths, small, chunk_size=chunk)
        index = torch.tensor(rows, dtype=torch.int64, device=ids.device)
        for big, mine in zip(self.cache.layers, small.layers):
            big.keys[index, :, :longest] = mine.keys
            big.values[index, :, :longest] = mine.values
        self.cache.cache_len[index] = lengths
        return out

    def shrink(self, keep: List[int]) -> None:
        """Keep only rows `keep` (in order), their K/V and lengths copied into a smaller cache."""
        cache = self.cache
        index = torch.tensor(keep, dtype=torch.int64, device=cache.device)
        small = self.target.new_cache(len(keep), self.capacity, dtype=cache.layers[0].keys.dtype)
        for big, mine in zip(cache.layers, small.layers):
            torch.index_select(big.keys, 0, index, out=mine.keys)
            torch.index_select(big.values, 0, index, out=mine.values)
        small.cache_len.copy_(cache.cache_len[index])
        self.cache = small


class PagedSlotKV:
    """Slot s's K/V on the pages its request took from a pool of `num_pages` pages of `page_size` slots
    (default: enough for every slot at full capacity, plus the scratch page). See the module docstring."""

    def __init__(self, target, slots: int, capacity: int, page_size: int, num_pages: Optional[int] = None):
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size: expected an int >= 1, got {page_size!r}")
        width = math.ceil(capacity / page_size)
        num_pages = slots * width + 1 if num_pages is None else num_pages
        if num_pages < width + 1:
            raise ValueError(
                f"num_pages: {num_pages} pages of {page_size} cannot hold the longest request ({capacity} "
                f"tokens: {width} pages) plus the scratch page; expected at least {width + 1}"
            )
        self.target, self.page_size = target, page_size
        self.pool = PagePool(num_pages)
        self.scratch = self.pool.take(1)[0]
        self.cache = target.new_cache(slots, capacity, page_size=page_size, pool=self.pool, allocate=False)
        self.cache.block_table.fill_(self.scratch)
        self.owned: List[List[int]] = [[] for _ in range(slots)]
        self.pages_taken = 0  # pages handed out over the run (more than num_pages: pages were reused)

    def admit(self, slot: int, tokens: int) -> bool:
        """Take the pages of a request of `tokens` (prompt + budget) for `slot`; False when the pool is short."""
        n = math.ceil(tokens / self.page_size)
        if n > self.pool.free:
            return False
        self.owned[slot] = self.pool.take(n)
        self.pages_taken += n
        self.cache.set_pages(slot, self.owned[slot], self.scratch)
        return True

    def release(self, slot: int) -> None:
        """The request in `slot` ended: its pages go back to the pool, its row to the scratch page."""
        self.pool.give_back(self.owned[slot])
        self.owned[slot] = []
        self.cache.set_pages(slot, [], self.scratch)

    def prefill(self, prompts: list, rows: List[int], pad_id: int, chunk: int):
        """Prefill `prompts` straight into the pages of rows `rows` (a view of those block-table rows);
        their cache_len becomes the prompt lengths; the TargetOutput as ContiguousSlotKV.prefill's."""
        ids, lengths = _prompt_ids(prompts, pad_id, self.target.device)
        view = self.cache.rows(rows)
        view.cache_len.zero_()
        out = self.target.prefill(ids, lengths, view, chunk_size=chunk)
        self.cache.cache_len[torch.tensor(rows, dtype=torch.int64, device=ids.device)] = lengths
        return out

    def shrink(self, keep: List[int]) -> None:
        """Keep only rows `keep` (in order): their block-table rows and lengths, the same pages."""
        self.cache = self.cache.rows(keep)
        self.owned = [self.owned[s] for s in keep]


def slot_kv(target, slots: int, capacity: int, page_size: Optional[int] = None, num_pages: Optional[int] = None):
    """ContiguousSlotKV when page_size is None, else PagedSlotKV (`num_pages` pages of `page_size`)."""
    if page_size is None:
        return ContiguousSlotKV(target, slots, capacity)
    return PagedSlotKV(target, slots, capacity, page_size, num_pages)
