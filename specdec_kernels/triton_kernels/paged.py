"""Triton kernels of block_table_from_csr and accept_slots (attached to `specdec::block_table_from_csr_triton`
and `specdec::accept_slots_triton` for CPU-interpreted and CUDA tensors). Specification:
specdec_kernels/reference/paged.py; contracts: specdec_kernels/ops/paged.py.

block_table_from_csr: out[b, p] = kv_indices[kv_indptr[b] + p] for p < kv_indptr[b + 1] - kv_indptr[b], else
-1 (an offset past kv_indices reads its last entry, 0 when it is empty, as the reference).

accept_slots, one program per request b: the tree is positions cache_len + i (i < num_nodes, inside the
table). Position cache_len + i takes the slot that position cache_len + accept_nodes[i] held (or -1), the
rejected nodes' slots go to freed in node order (ranks by a cumulative sum) and their count to freed_count.
Every slot is loaded before the barrier that precedes the first store, so no load sees a rewritten position.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._limits import MAX_TREE_NODES


@triton.jit
def _block_table_kernel(indptr_ptr, indices_ptr, out_ptr, nnz, max_pages, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    start = tl.load(indptr_ptr + b).to(tl.int64)
    count = tl.load(indptr_ptr + b + 1).to(tl.int64) - start
    take = p < count
    where = tl.minimum(tl.maximum(start + p, 0), tl.maximum(nnz - 1, 0))
    page = tl.load(indices_ptr + where, mask=take & (nnz > 0), other=0)
    tl.store(out_ptr + b * max_pages + p, tl.where(take, page, -1), mask=p < max_pages)


def block_table_from_csr_triton(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, out: torch.Tensor) -> None:
    """specdec::block_table_from_csr_triton: see specdec_kernels.ops.paged.block_table_from_csr."""
    B, max_pages = out.shape
    if B * max_pages == 0:
        return
    block = min(1024, triton.next_power_of_2(max_pages))
    grid = (B, triton.cdiv(max_pages, block))
    _block_table_kernel[grid](kv_indptr, kv_indices, out, kv_indices.numel(), max_pages, BLOCK=block)


@triton.jit
def _accept_slots_kernel(
    table_ptr,
    cache_len_ptr,
    num_nodes_ptr,
    nodes_ptr,
    accept_len_ptr,
    freed_ptr,
    count_ptr,
    S,
    W,
    N,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.load(cache_len_ptr + b).to(tl.int64)
    n = tl.load(num_nodes_ptr + b).to(tl.int64)
    L = tl.load(accept_len_ptr + b).to(tl.int64)
    row = table_ptr + b * S
    i = tl.arange(0, BLOCK_N).to(tl.int64)
    in_tree = (i < N) & (i < n) & (c + i >= 0) & (c + i < S)
    old = tl.load(row + c + i, mask=in_tree, other=-1)
    # The node position i takes (i < W) and its old slot, read from the table before any store.
    node = tl.load(nodes_ptr + b * W + i, mask=(i < W) & (i < N), other=-1).to(tl.int64)
    took = (i < W) & (i < L) & (node >= 0) & (node < n) & (node < N)
    moved = tl.load(row + c + node, mask=took & (c + node >= 0) & (c + node < S), other=-1)
    # Accepted nodes: node i is accepted when a taken path entry names it (W in chunks of BLOCK_W).
    accepted = tl.zeros([BLOCK_N], dtype=tl.int32)
    for w0 in range(0, W, BLOCK_W):
        j = w0 + tl.arange(0, BLOCK_W).to(tl.int64)
        nj = tl.load(nodes_ptr + b * W + j, mask=j < W, other=-1).to(tl.int64)
        tj = (j < W) & (j < L) & (nj >= 0) & (nj < n) & (nj < N)
        hit = (nj[None, :] == i[:, None]) & tj[None, :]
        accepted = tl.maximum(accepted, tl.max(hit.to(tl.int32), axis=1))
    rejected = in_tree & (accepted == 0)
    rank = tl.cumsum(rejected.to(tl.int32), 0) - 1
    count = tl.sum(rejected.to(tl.int32), 0)
    tl.debug_barrier()  # every load of the table above precedes the first store below
    tl.store(row + c + i, tl.where(took, moved, -1), mask=in_tree)
    tl.store(freed_ptr + b * N + rank, old, mask=rejected)
    tl.store(freed_ptr + b * N + i, tl.full([BLOCK_N], -1, tl.int32), mask=(i >= count) & (i < N))
    tl.store(count_ptr + b, count)


def accept_slots_triton(slot_table, cache_len, num_nodes, accept_nodes, accept_len, freed, freed_count) -> None:
    """specdec::accept_slots_triton: see specdec_kernels.ops.paged.accept_slots (one program per request,
    N = freed.shape[1] <= MAX_TREE_NODES)."""
    B, S = slot_table.shape
    W, N = accept_nodes.shape[1], freed.shape[1]
    if N > MAX_TREE_NODES:
        raise ValueError(f"specdec::accept_slots_triton: at most {MAX_TREE_NODES} tree nodes (freed width), got {N}")
    if B == 0 or N == 0:
        return
    block_n = max(16, triton.next_power_of_2(N))
    block_w = max(1, min(16, 4096 // block_n))
    _accept_slots_kernel[(B,)](
        slot_table,
        cache_len,
        num_nodes,
        accept_nodes,
        accept_len,
        freed,
        freed_count,
        S,
        W,
        N,
        BLOCK_N=block_n,
        BLOCK_W=triton.next_power_of_2(block_w),
    )


torch.library.register_kernel("specdec::block_table_from_csr_triton", ("cpu", "cuda"), block_table_from_csr_triton)
torch.library.register_kernel("specdec::accept_slots_triton", ("cpu", "cuda"), accept_slots_triton)
