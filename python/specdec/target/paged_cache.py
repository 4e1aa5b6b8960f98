"""The target's KV cache on pages, as a serving engine keeps it: TreeKVCache's interface over a page pool.

Per layer, K and V live in page tensors [num_pages, P, H_kv, D] (NHD, vLLM's layout) shared by every
request; `block_table int32 [B, max_pages]` maps request b's logical page p to a physical page, and
`cache_len int32 [B]` counts committed tokens as in TreeKVCache. A forward writes its T new tokens at logical
slots cache_len[b] + i through the table; the attention function runs specdec_kernels.paged_tree_attention
and TargetModel.commit runs compact_paged_kv. So the decode loop runs on the same ops an engine would call,
and a test can check that its output equals the contiguous cache's token for token.

Pages come from a PagePool, which hands them out in a shuffled order (so no request's pages are physically
contiguous or in logical order, as in an engine that has been serving for a while) and takes back the pages
of a released request for the next one.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..kv_pages import PagePool, page_slots, take_block_table, write_page_slots


class PagedTreeKVLayer(CacheLayerMixin):
    """One layer: K/V pages [num_pages, P, H_kv, D]; `update` writes through the block table."""

    is_compileable = False
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, cache: "PagedTreeKVCache"):
        super().__init__()
        self.keys, self.values, self.owner = keys, values, cache
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Pages are allocated up front (PagedTreeKVCache); nothing to do."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write key/value_states [B, H_kv, T, D] at logical slots cache_len[b] + i; return the pages."""
        B, H, T, D = key_states.shape
        if (H, D) != (self.keys.shape[2], self.keys.shape[3]):
            raise ValueError(
                f"PagedTreeKVLayer.update: new keys {tuple(key_states.shape)} do not fit pages "
                f"{tuple(self.keys.shape)} (expected [B, H_kv, T, D] with the pages' H_kv, D)"
            )
        page, offset = self.owner.physical(T)  # [B, T] each
        write_page_slots(self.keys, page, offset, key_states)
        write_page_slots(self.values, page, offset, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.max_len, 0

    def get_seq_length(self) -> int:
        raise RuntimeError("PagedTreeKVCache has a per-request length (cache_len tensor); pass position_ids")

    def get_max_length(self) -> int:
        return self.owner.max_len


class PagedTreeKVCache(Cache):
    """The target's KV cache on pages: per layer K/V pages [num_pages, P, H_kv, D], a block table
    int32 [B, max_pages] and cache_len int32 [B]. Build it with TargetModel.new_cache(..., page_size=P).

    Each request gets ceil(max_len / P) pages from `pool` (a PagePool of enough pages; a new one of
    exactly enough when None). `release()` gives them back. With allocate=False no page is taken: every
    block-table entry is 0 until the caller hands pages to a request with `set_pages` (an engine-style
    allocator: specdec.target.batch_kv), and `rows` gives a cache over some of the requests that shares
    the pages, so a sub-batch can be prefilled or decoded without copying K/V.
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: Optional[torch.device],
        page_size: int,
        pool: Optional[PagePool] = None,
        allocate: bool = True,
    ):
        if batch_size < 1 or max_len < 1 or num_layers < 1 or page_size < 1:
            raise ValueError(
                f"PagedTreeKVCache: expected batch_size, max_len, num_layers and page_size >= 1, got "
                f"{batch_size}, {max_len}, {num_layers}, {page_size}"
            )
        self.pool = pool if pool is not None else PagePool(batch_size * math.ceil(max_len / page_size))
        if allocate:
            self.block_table, pages = take_block_table(self.pool, batch_size, max_len, page_size, device)
        else:
            width = math.ceil(max_len / page_size)
            self.block_table, pages = torch.zeros(batch_size, width, dtype=torch.int32, device=device), []
        self.cache_len = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.page_size, self.max_len = page_size, max_len
        shape = (self.pool.num_pages, page_size, num_kv_heads, head_dim)
        layers = [
            PagedTreeKVLayer(
                torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device), self
            )
            for _ in range(num_layers)
        ]
        super().__init__(layers=layers)
        self._pages = pages

    @property
    def device(self) -> torch.device:
        return self.cache_len.device

    @property
    def batch_size(self) -> int:
        return self.block_table.shape[0]

    def physical(self, T: int) -> tuple:
        """(page, offset) int64 [B, T] of the logical slots cache_len[b] + i, i < T (no host sync)."""
        slots = self.cache_len.to(torch.int64)[:, None] + torch.arange(T, device=self.device)
        return page_slots(self.block_table, self.page_size, slots)

    def set_pages(self, row: int, pages: List[int], fill: int) -> None:
        """Request `row`'s logical pages are now `pages` (in order); the rest of its block-table row points at
        page `fill`, a scratch page, so writes past the request's pages (padding, an idle slot) land there
        and never on another request's page. The caller owns these pages: release() does not return them."""
        width = self.block_table.shape[1]
        if len(pages) > width:
            raise ValueError(f"set_pages: {len(pages)} pages for a block-table row of {width}")
        row_pages = list(pages) + [fill] * (width - len(pages))
        self.block_table[row] = torch.tensor(row_pages, dtype=torch.int32, device=self.device)

    def rows(self, index: List[int]) -> "PagedTreeKVCache":
        """A cache over requests `index` (in that order) of this one: the same page tensors, so its writes
        land in them; copies of those rows of the block table and of cache_len. It owns no pages."""
        view = object.__new__(PagedTreeKVCache)
        rows = torch.tensor(index, dtype=torch.int64, device=self.device)
        view.pool, view._pages = self.pool, []
        view.block_table, view.cache_len = self.block_table[rows], self.cache_len[rows]
        view.page_size, view.max_len = self.page_size, self.max_len
        layers = [PagedTreeKVLayer(layer.keys, layer.values, view) for layer in self.layers]
        Cache.__init__(view, layers=layers)
        return view

    def caches(self) -> list:
        """Every layer's K and V pages, in layer order (K0, V0, K1, V1, ...)."""
        out = []
        for layer in self.layers:
            out += [layer.keys, layer.values]
        return out

    def reset(self) -> None:
        """Forget every request's tokens (cache_len = 0); pages are kept."""
        self.cache_len.zero_()

    def release(self) -> None:
        """Give every request's pages back to the pool (the cache is unusable afterwards)."""
        for pages in self._pages:
            self.pool.give_back(pages)
        self._pages = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise RuntimeError("PagedTreeKVCache has a per-request length (cache_len tensor); pass position_ids")

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.max_len, 0

    def __repr__(self) -> str:
        k = self.layers[0].keys
        return (
            f"PagedTreeKVCache(layers={len(self.layers)}, batch={self.batch_size}, pages={k.shape[0]}x{k.shape[1]}, "
            f"kv_heads={k.shape[2]}, head_dim={k.shape[3]}, dtype={k.dtype})"
        )
