"""PyTorch references of the paged-cache ops (ops/paged.py): the specification and the tests' oracle.

Logical slot s of request b lives on physical page block_table[b, s // P] at offset s % P (P = page size).
The references gather what they need through that map with advanced indexing; they never read a value on
the host (no synchronisation), like the kernels.
"""

from __future__ import annotations

import torch

from . import attention as attention_ref


def block_table_from_csr(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, out: torch.Tensor) -> None:
    """out[b, p] = kv_indices[kv_indptr[b] + p] for p < kv_indptr[b + 1] - kv_indptr[b], else -1."""
    B, max_pages = out.shape
    p = torch.arange(max_pages, device=out.device, dtype=torch.int64)
    start = kv_indptr[:-1].to(torch.int64)[:, None]
    count = (kv_indptr[1:] - kv_indptr[:-1]).to(torch.int64)[:, None]
    where = (start + p).clamp(0, max(kv_indices.numel() - 1, 0))
    taken = kv_indices.to(torch.int64)[where] if kv_indices.numel() else torch.zeros_like(where)
    out.copy_(torch.where(p < count, taken, torch.full_like(taken, -1)).to(out.dtype))


def logical_pages(block_table: torch.Tensor, page_size: int) -> tuple:
    """(page int64 [B, S], offset int64 [S]) of every logical slot s < max_pages * page_size; unused pages
    (-1) read page 0 (never visible to a valid query)."""
    S = block_table.shape[1] * page_size
    s = torch.arange(S, device=block_table.device)
    page = block_table.to(torch.int64)[:, s // page_size].clamp(min=0)
    return page, s % page_size


def gather_logical(pages: torch.Tensor, page: torch.Tensor, offset: torch.Tensor, hnd: bool) -> torch.Tensor:
    """The logical cache [B, H_kv, S, D] of `pages` (NHD [num_pages, P, H_kv, D] or, hnd, HND [num_pages,
    H_kv, P, D])."""
    if not hnd:
        return pages[page, offset].permute(0, 2, 1, 3)  # [B, S, H_kv, D] -> [B, H_kv, S, D]
    return pages[page, :, offset].permute(0, 2, 1, 3)  # advanced indices first: [B, S, H_kv, D]


def paged_tree_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    hnd: bool,
    scale: float,
    out: torch.Tensor,
) -> None:
    """tree_attention over the logical caches the block table maps (see ops.paged.paged_tree_attention)."""
    page, offset = logical_pages(block_table, k_pages.shape[2 if hnd else 1])
    k = gather_logical(k_pages, page, offset, hnd)
    v = gather_logical(v_pages, page, offset, hnd)
    attention_ref.tree_attention(q, k, v, cache_len, tree_mask, scale, out)


def _token(t: torch.Tensor, page: torch.Tensor, offset: torch.Tensor, hnd: bool) -> torch.Tensor:
    """The data of the token at (page, offset): t[page, offset] (NHD, per-token) or t[page, :, offset]."""
    return t[page, :, offset] if hnd else t[page, offset]


def compact_paged_kv(
    caches: list,
    block_table: torch.Tensor,
    cache_len: torch.Tensor,
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
    hnd: bool,
) -> None:
    """Logical slot cache_len[b] + accept_nodes[b, j] -> cache_len[b] + j for j < accept_len[b], in
    increasing j, in every tensor (4-D page views: NHD [num_pages, P, X, Y], or HND [num_pages, X, P, Y]
    when hnd). Entries with a negative node, a logical slot past the table or a page entry < 0 move
    nothing.

    One (b, j) at a time with torch.where, so that an entry that moves nothing writes nothing either."""
    if not caches:
        return
    page_size = caches[0].shape[2 if hnd else 1]
    B, W = accept_nodes.shape
    S = block_table.shape[1] * page_size
    table = block_table.to(torch.int64)
    base = cache_len.to(torch.int64)
    for b in range(B):
        for j in range(W):
            node = accept_nodes[b, j].to(torch.int64)
            src, dst = base[b] + node, base[b] + j
            ok = (j < accept_len[b]) & (node >= 0) & (src >= 0) & (src < S) & (dst >= 0) & (dst < S)
            sp = table[b, (src // page_size).clamp(0, table.shape[1] - 1)]
            dp = table[b, (dst // page_size).clamp(0, table.shape[1] - 1)]
            ok = ok & (sp >= 0) & (dp >= 0)
            sp, dp = sp.clamp(min=0), dp.clamp(min=0)
            so, do = src.clamp(min=0) % page_size, dst.clamp(min=0) % page_size
            for t in caches:
                new = torch.where(ok, _token(t, sp, so, hnd), _token(t, dp, do, hnd))
                if hnd:
                    t[dp, :, do] = new
                else:
                    t[dp, do] = new


def accept_slots(
    slot_table: torch.Tensor,
    cache_len: torch.Tensor,
    num_nodes: torch.Tensor,
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
    freed: torch.Tensor,
    freed_count: torch.Tensor,
) -> None:
    """Page size 1: positions cache_len + j take the slots of positions cache_len + accept_nodes[b, j]
    (j < accept_len), the tree's other positions become -1, and the slots of rejected nodes (node order)
    go to freed (-1 padded) with their count (see ops.paged.accept_slots)."""
    B, S = slot_table.shape
    N, W = freed.shape[1], accept_nodes.shape[1]
    dev = slot_table.device
    i = torch.arange(N, device=dev)
    pos = cache_len.to(torch.int64)[:, None] + i  # [B, N]: the tree's positions
    in_tree = (i < num_nodes.to(torch.int64)[:, None]) & (pos >= 0) & (pos < S)
    pos = torch.where(in_tree, pos, torch.full_like(pos, S))  # outside the tree: a spare column
    table = torch.cat([slot_table, torch.full((B, 1), -1, dtype=slot_table.dtype, device=dev)], 1)
    old = table.gather(1, pos)  # [B, N], -1 outside the tree
    nodes = accept_nodes.to(torch.int64)
    j = torch.arange(W, device=dev)
    took = (j < accept_len.to(torch.int64)[:, None]) & (nodes >= 0) & (nodes < num_nodes.to(torch.int64)[:, None])
    took = took & (nodes < N)
    moved = torch.where(took, old.gather(1, torch.where(took, nodes, torch.zeros_like(nodes))), -1)  # [B, W]
    new = torch.full((B, N), -1, dtype=old.dtype, device=dev)
    k = min(N, W)
    new[:, :k] = moved[:, :k]
    table.scatter_(1, pos, torch.where(in_tree, new, -1))
    slot_table.copy_(table[:, :S])
    accepted = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)
    accepted.scatter_(1, torch.where(took, nodes, torch.full_like(nodes, N)), took)
    rejected = in_tree & ~accepted[:, :N]
    rank = torch.cumsum(rejected.to(torch.int64), 1) - 1
    out = torch.full((B, N + 1), -1, dtype=torch.int32, device=dev)
    out.scatter_(1, torch.where(rejected, rank, torch.full_like(rank, N)), old.to(torch.int32))
    freed.copy_(out[:, :N])
    freed_count.copy_(rejected.sum(1).to(torch.int32))
