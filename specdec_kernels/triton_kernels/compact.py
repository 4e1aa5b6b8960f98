"""Triton kernels of compact_kv and compact_paged_kv (attached to `specdec::compact_kv_triton` and
`specdec::compact_paged_kv_triton` for CPU-interpreted and CUDA tensors).

Math: for request b and 1 <= j < accept_len[b], row cache_len[b] + accept_nodes[b, j] -> row cache_len[b] + j
of every [B, X, S_max, Y] view, in place (j = 0 is the root, never moved).

One launch per tensor: Triton has no portable way to take a list of differently typed base pointers in one
launch without a device-side pointer table, and building that table needs a host->device copy per call (not
graph-capturable). The CUDA kernel (csrc/cuda/compact.cu) does all tensors in one launch.

Each program owns a block of (head, column) positions of one request and walks j in increasing order, so
every byte is read and written by one program only and, within it, in the order of the reference loop:
accept_nodes is strictly increasing with a[j] >= j, hence dst(j) = c + j < c + a[j'] = src(j') for j' > j and
no write lands on a source read later. Rows are copied as the widest integer type the row size and strides
allow (bytes, so tensors of any dtype share the kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_INT_VIEWS = ((8, torch.int64), (4, torch.int32), (2, torch.int16), (1, torch.uint8))


@triton.jit
def _compact_kernel(
    ptr,
    cache_len_ptr,
    accept_nodes_ptr,
    accept_len_ptr,
    X,
    S,
    COLS,
    W,
    stride_b,
    stride_x,
    stride_s,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_tile = idx < X * COLS
    x = idx // COLS
    col = idx % COLS
    c = tl.load(cache_len_ptr + b).to(tl.int64)
    n = tl.minimum(tl.load(accept_len_ptr + b), W)
    tile = ptr + b * stride_b + x * stride_x + col
    for j in range(1, n):
        a = tl.load(accept_nodes_ptr + b * W + j).to(tl.int64)
        src = c + a
        dst = c + j
        # Skipped: src == dst (accepted prefix), -1 padding, slots outside [0, S_max), negative cache_len.
        move = (a != j) & (a >= 0) & (c >= 0) & (src < S) & (dst < S)
        m = in_tile & move
        row = tl.load(tile + src * stride_s, mask=m)
        tl.store(tile + dst * stride_s, row, mask=m)


def _int_view(t: torch.Tensor) -> torch.Tensor:
    """`t` ([B, X, S, Y], unit stride along Y) as raw bytes, widened to the largest integer type (<= 8 bytes)
    that the row size, the strides and the base address are all multiples of."""
    if t.shape[3] == 1 and t.stride(3) != 1:  # a size-1 dimension's stride is arbitrary: make it 1 for view()
        t = t.as_strided(t.shape, t.stride()[:3] + (1,), t.storage_offset())
    u8 = t.view(torch.uint8)
    for size, dtype in _INT_VIEWS[:-1]:
        if u8.shape[3] % size == 0 and all(s % size == 0 for s in u8.stride()[:3]) and u8.data_ptr() % size == 0:
            return u8.view(dtype)
    return u8


def compact_kv_triton(caches, cache_len: torch.Tensor, accept_nodes: torch.Tensor, accept_len: torch.Tensor) -> None:
    """specdec::compact_kv_triton: see specdec_kernels.ops.compact.compact_kv (one launch per tensor)."""
    B, W = accept_nodes.shape
    if B == 0 or W <= 1:
        return
    for t in caches:
        if t.numel() == 0:
            continue
        v = _int_view(t)
        X, S, cols = v.shape[1], v.shape[2], v.shape[3]
        work = X * cols
        block = min(1024, triton.next_power_of_2(work))
        grid = (B, triton.cdiv(work, block))
        _compact_kernel[grid](
            v, cache_len, accept_nodes, accept_len, X, S, cols, W, v.stride(0), v.stride(1), v.stride(2), BLOCK=block
        )


torch.library.register_kernel("specdec::compact_kv_triton", ("cpu", "cuda"), compact_kv_triton)


@triton.jit
def _compact_paged_kernel(
    ptr,
    table_ptr,
    cache_len_ptr,
    accept_nodes_ptr,
    accept_len_ptr,
    X,
    P,
    COLS,
    W,
    max_pages,
    stride_page,
    stride_x,
    stride_slot,
    BLOCK: tl.constexpr,
):
    """compact_kv's moves over logical slots: slot s of request b is page table[b, s // P], offset s % P."""
    b = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_tile = idx < X * COLS
    x = idx // COLS
    col = idx % COLS
    c = tl.load(cache_len_ptr + b).to(tl.int64)
    n = tl.minimum(tl.load(accept_len_ptr + b), W)
    S = max_pages * P
    row = table_ptr + b * max_pages
    for j in range(1, n):
        a = tl.load(accept_nodes_ptr + b * W + j).to(tl.int64)
        src = c + a
        dst = c + j
        move = (a != j) & (a >= 0) & (c >= 0) & (src < S) & (dst < S)
        src_page = tl.load(row + src // P, mask=move, other=-1).to(tl.int64)
        dst_page = tl.load(row + dst // P, mask=move, other=-1).to(tl.int64)
        move = move & (src_page >= 0) & (dst_page >= 0)  # a slot on no page moves nothing
        m = in_tile & move
        at_src = ptr + src_page * stride_page + (src % P) * stride_slot + x * stride_x + col
        at_dst = ptr + dst_page * stride_page + (dst % P) * stride_slot + x * stride_x + col
        tl.store(at_dst, tl.load(at_src, mask=m), mask=m)


def compact_paged_kv_triton(caches, block_table, cache_len, accept_nodes, accept_len, hnd: bool) -> None:
    """specdec::compact_paged_kv_triton: see specdec_kernels.ops.paged.compact_paged_kv (one launch per tensor;
    4-D page views NHD [pages, P, X, Y] or, hnd, HND [pages, X, P, Y])."""
    B, W = accept_nodes.shape
    if B == 0 or W <= 1:
        return
    slot, head = (2, 1) if hnd else (1, 2)
    for t in caches:
        if t.numel() == 0:
            continue
        v = _int_view(t)
        X, P, cols = v.shape[head], v.shape[slot], v.shape[3]
        work = X * cols
        block = min(1024, triton.next_power_of_2(work))
        grid = (B, triton.cdiv(work, block))
        _compact_paged_kernel[grid](
            v,
            block_table,
            cache_len,
            accept_nodes,
            accept_len,
            X,
            P,
            cols,
            W,
            block_table.shape[1],
            v.stride(0),
            v.stride(head),
            v.stride(slot),
            BLOCK=block,
        )


torch.library.register_kernel("specdec::compact_paged_kv_triton", ("cpu", "cuda"), compact_paged_kv_triton)
