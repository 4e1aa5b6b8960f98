"""Paged KV caches, as serving engines lay them out: tree attention and acceptance over page tables.

An engine keeps K/V in fixed-size pages shared by all requests. vLLM addresses them with a block table
(int32 [B, max_pages]: logical page p of request b is physical page block_table[b, p]); FlashInfer and
SGLang with CSR page lists (kv_indptr [B + 1], kv_indices), which block_table_from_csr turns into a block
table on the device; SGLang with page size 1 by a token-to-slot table, for which accept_slots rewrites the
table instead of moving K/V. Page layouts: NHD [num_pages, P, H_kv, D] (vLLM, FlashInfer's default) and
HND [num_pages, H_kv, P, D]. Logical slot s of request b is page block_table[b, s // P], offset s % P; the
ops keep the contiguous ops' rules over logical slots (prefix < cache_len[b], tree keys at cache_len[b] + j).

Backends: every op runs on the C++ CPU, CUDA and Triton kernels and has its PyTorch reference (the registry
chooses as for the other ops; get_op(name).reasons says why a backend refuses an input). paged_tree_attention
runs the tree_attention kernels of each backend with each K/V row's address read through the block table
(CUDA: the same kernel and split-K merge, templated on the row addressing), compact_paged_kv the compact_kv
kernels likewise (CUDA: one launch for every layer's pages). block_table_from_csr and accept_slots are small
index kernels of their own (CUDA and Triton: accept_slots keeps one tree per thread block, at most
MAX_TREE_NODES nodes; larger ones run on the CPU kernel or the reference).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from .. import _backend
from .._limits import MAX_HEAD_DIM, MAX_TREE_NODES
from ..checks import FLOAT_DTYPES, cache_len_arg, check_out, check_tensor, is_number, same_device
from ..reference import paged as ref

LAYOUTS = ("NHD", "HND")

_BLOCK_TABLE = _backend.standard_op("block_table_from_csr", reference=ref.block_table_from_csr, triton_module="paged")


def _paged_attn_limit(backend, q, k_pages, v_pages, block_table, cache_len, tree_mask, hnd, scale, out):
    if backend in ("cuda", "triton") and q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim D = {q.shape[-1]} > {MAX_HEAD_DIM}"
    if backend == "triton" and q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return "bf16 is unreliable under the Triton interpreter (TRITON_INTERPRET=1); use a GPU"
    return None


_PAGED_ATTENTION = _backend.standard_op(
    "paged_tree_attention", reference=ref.paged_tree_attention, triton_module="attention", limits=_paged_attn_limit
)
_COMPACT_PAGED = _backend.standard_op("compact_paged_kv", reference=ref.compact_paged_kv, triton_module="compact")


def _accept_slots_limit(backend, slot_table, cache_len, num_nodes, accept_nodes, accept_len, freed, freed_count):
    if backend in ("cuda", "triton") and freed.shape[1] > MAX_TREE_NODES:
        return f"max_nodes = {freed.shape[1]} > {MAX_TREE_NODES} (one tree per thread block)"
    return None


_ACCEPT_SLOTS = _backend.standard_op(
    "accept_slots", reference=ref.accept_slots, triton_module="paged", limits=_accept_slots_limit
)


def _layout(layout: str) -> bool:
    """True for HND; ValueError for anything but "NHD" / "HND"."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout == "HND"


def _check_block_table(block_table, B: Optional[int], device=None) -> None:
    check_tensor("block_table", block_table, dtype=torch.int32, ndim=2)
    if B is not None and block_table.shape[0] != B:
        raise ValueError(
            f"block_table: expected [B={B}, max_pages] (one row per request), got {tuple(block_table.shape)}"
        )
    if block_table.shape[1] < 1:
        raise ValueError(f"block_table: expected at least one page per request, got shape {tuple(block_table.shape)}")


def block_table_from_csr(
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_pages: int,
    *,
    backend: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A block table int32 [B, max_pages] from FlashInfer/SGLang's CSR page lists, on the device.

    Row b holds kv_indices[kv_indptr[b] : kv_indptr[b + 1]] (request b's pages in logical order), then -1.
    No host synchronisation: pages past max_pages are dropped (not checked), so size max_pages for the
    longest request.

    Args:
        kv_indptr: int32 [B + 1], non-decreasing offsets into kv_indices (kv_indptr[0] is usually 0).
        kv_indices: int32 [nnz], physical page ids.
        max_pages: columns of the table (>= 1).
        out: an int32 [B, max_pages] buffer to write (allocated when None).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> indptr = torch.tensor([0, 2, 3], dtype=torch.int32)        # request 0: 2 pages, request 1: 1
        >>> indices = torch.tensor([7, 3, 5], dtype=torch.int32)
        >>> sk.block_table_from_csr(indptr, indices, 3).tolist()
        [[7, 3, -1], [5, -1, -1]]
    """
    check_tensor("kv_indptr", kv_indptr, dtype=torch.int32, ndim=1)
    check_tensor("kv_indices", kv_indices, dtype=torch.int32, ndim=1)
    if kv_indptr.shape[0] < 1:
        raise ValueError("kv_indptr: expected B + 1 >= 1 offsets, got an empty tensor")
    if not isinstance(max_pages, int) or isinstance(max_pages, bool) or max_pages < 1:
        raise ValueError(f"max_pages: expected an int >= 1, got {max_pages!r}")
    dev = same_device(kv_indptr=kv_indptr, kv_indices=kv_indices)
    B = kv_indptr.shape[0] - 1
    if out is None:
        out = torch.empty(B, max_pages, dtype=torch.int32, device=dev)
    else:
        check_out("out", out, (B, max_pages), torch.int32, dev)
    if out.numel():
        _BLOCK_TABLE(kv_indptr.contiguous(), kv_indices.contiguous(), out, backend=backend)
    return out


def paged_tree_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    cache_len: Union[torch.Tensor, int],
    tree_mask: torch.Tensor,
    *,
    layout: str = "NHD",
    scale: Optional[float] = None,
    backend: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """tree_attention over a paged cache: the same visibility over logical slots, K/V read through pages.

    Query i of request b sees logical slots s < cache_len[b] and slot cache_len[b] + j iff bit j of
    tree_mask[b, i] is set; logical slot s is on page block_table[b, s // P] at offset s % P, so the
    prefix and the tree keys may straddle page boundaries and pages may be in any physical order.

    Args:
        q: [B, H, Nq, D], fp32/fp16/bf16.
        k_pages, v_pages: NHD [num_pages, P, H_kv, D] or HND [num_pages, H_kv, P, D] (`layout`), q's dtype,
            any page size P >= 1.
        block_table: int32 [B, max_pages]; entries a request never reaches may be -1.
        cache_len, tree_mask, scale, backend, out: as for tree_attention.

    Values are never checked (no host synchronisation): the caller keeps every visible logical slot on a
    page of the table (cache_len[b] + highest tree bit < max_pages * P, entries in [0, num_pages)).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> k = torch.zeros(4, 2, 1, 1)                       # 4 pages of 2 slots, NHD, H_kv = D = 1
        >>> v = torch.arange(8.0).view(4, 2, 1, 1)            # page p holds 2p, 2p + 1
        >>> table = torch.tensor([[3, 0]], dtype=torch.int32) # logical slots 0..3 hold 6, 7, 0, 1
        >>> tree = sk.build_tree(torch.tensor([[-1]], dtype=torch.int32))  # one node at logical slot 3
        >>> sk.paged_tree_attention(torch.ones(1, 1, 1, 1), k, v, table, 3, tree.mask).item()  # mean
        3.5
    """
    hnd = _layout(layout)
    check_tensor("q", q, dtypes=FLOAT_DTYPES, ndim=4)
    B, H, Nq, D = q.shape
    check_tensor("k_pages", k_pages, dtype=q.dtype, ndim=4)
    H_kv = k_pages.shape[1 if hnd else 2]
    want = "[num_pages, H_kv, P, D]" if hnd else "[num_pages, P, H_kv, D]"
    if k_pages.shape[3] != D:
        raise ValueError(f"k_pages: expected {layout} pages {want} with D = {D} (as q), got {tuple(k_pages.shape)}")
    check_tensor("v_pages", v_pages, dtype=q.dtype, shape=tuple(k_pages.shape))
    _check_block_table(block_table, B)
    cache_len = cache_len_arg(cache_len, B, q.device)
    check_tensor("tree_mask", tree_mask, dtype=torch.int32, shape=(B, Nq, None))
    dev = same_device(
        q=q, k_pages=k_pages, v_pages=v_pages, block_table=block_table, cache_len=cache_len, tree_mask=tree_mask
    )
    if H_kv < 1 or H % H_kv != 0:
        raise ValueError(f"q has H = {H} heads, not a multiple of the H_kv = {H_kv} heads of k_pages ({layout})")
    if tree_mask.shape[2] < 1:
        raise ValueError(f"tree_mask: expected at least one int32 word per row, got shape {tuple(tree_mask.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    if not is_number(scale) or not math.isfinite(float(scale)):
        raise ValueError(f"scale: expected a finite float or None, got {scale!r}")
    if out is None:
        out = torch.empty(B, H, Nq, D, dtype=q.dtype, device=dev)
    else:
        check_out("out", out, (B, H, Nq, D), q.dtype, dev)
    if out.numel() == 0 or k_pages.shape[0] == 0:
        return out.zero_() if out.numel() else out
    _PAGED_ATTENTION(
        q.contiguous(),
        k_pages,
        v_pages,
        block_table.contiguous(),
        cache_len.contiguous(),
        tree_mask.contiguous(),
        hnd,
        float(scale),
        out,
        backend=backend,
    )
    return out


def _per_token_view(label: str, t: torch.Tensor, hnd: bool) -> torch.Tensor:
    """A per-token tensor [num_pages, P, ...] as the 4-D page view of the caches' layout, X = 1, without a
    copy (NHD [pages, P, 1, Y], HND [pages, 1, P, Y])."""
    y = math.prod(t.shape[2:])
    try:
        v = t.view(t.shape[0], t.shape[1], 1, y)
    except RuntimeError as exc:
        raise ValueError(
            f"{label}: the trailing dimensions {tuple(t.shape[2:])} (strides {t.stride()[2:]}) cannot be "
            "flattened without a copy; compaction works in place, so pass them contiguous"
        ) from exc
    if y > 1 and v.stride(3) != 1:
        raise ValueError(f"{label}: the last dimension must have unit stride (rows are copied as bytes)")
    return v.transpose(1, 2) if hnd else v


def compact_paged_kv(
    caches: Sequence[torch.Tensor],
    block_table: torch.Tensor,
    cache_len: Union[torch.Tensor, int],
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
    *,
    layout: str = "NHD",
    per_token: Sequence[torch.Tensor] = (),
    backend: Optional[str] = None,
) -> None:
    """compact_kv over paged caches: logical slot cache_len[b] + accept_nodes[b, j] moves to logical slot
    cache_len[b] + j for j < accept_len[b], in every tensor, in place (cache_len itself is not changed).

    Args:
        caches: K/V pages of every layer, all in `layout` (NHD [num_pages, P, H_kv, D] or HND [num_pages,
            H_kv, P, D]) with one page size P; dtypes may differ.
        block_table: int32 [B, max_pages]; cache_len: int32 [B] or an int.
        accept_nodes, accept_len: the accepted path of verify_* (root first, strictly increasing, -1 padded).
        per_token: tensors [num_pages, P, ...] paged like the caches (e.g. the draft's input features).

    Overlap is safe for a valid path (every source is at or above its destination and the moves go in
    increasing j). Values are never checked: an entry with a negative node, a logical slot past
    max_pages * P or a page entry < 0 moves nothing.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> k = torch.arange(8.0).view(4, 2, 1, 1)                    # 4 pages of 2 slots: page p = 2p, 2p+1
        >>> table = torch.tensor([[2, 0, 3]], dtype=torch.int32)      # logical 0..5 = 4 5 | 0 1 | 6 7
        >>> nodes = torch.tensor([[0, 2]], dtype=torch.int32)         # tree at logical 3: keep nodes 0, 2
        >>> sk.compact_paged_kv([k], table, 3, nodes, torch.tensor([2], dtype=torch.int32))
        >>> [k[p, o].item() for p, o in ((0, 1), (3, 0))]             # logical 3 kept 1, logical 4 got 7 (was 6)
        [1.0, 7.0]
    """
    hnd = _layout(layout)
    if isinstance(caches, torch.Tensor) or isinstance(per_token, torch.Tensor):
        raise TypeError("caches / per_token: expected a list or tuple of tensors, got a single tensor")
    check_tensor("accept_nodes", accept_nodes, dtype=torch.int32, ndim=2)
    B = accept_nodes.shape[0]
    _check_block_table(block_table, B)
    cache_len = cache_len_arg(cache_len, B, accept_nodes.device)
    check_tensor("accept_len", accept_len, dtype=torch.int32, shape=(B,))
    dev = same_device(block_table=block_table, cache_len=cache_len, accept_nodes=accept_nodes, accept_len=accept_len)
    # One pass over the tensors (a decode step hands every layer's K and V: 60 tensors for SmolLM2-135M), each
    # checked in a few attribute reads; only a failing check builds its message.
    tensors, ptrs, P, pages = [], set(), None, None
    for name, ts, is_kv in (("caches", caches, True), ("per_token", per_token, False)):
        for i, t in enumerate(ts):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}]: expected a torch.Tensor, got {type(t).__name__}")
            shape = t.shape
            if is_kv and len(shape) != 4:
                raise ValueError(f"{name}[{i}]: expected {layout} pages (4-D), got shape {tuple(shape)}")
            if not is_kv and len(shape) < 2:
                raise ValueError(
                    f"{name}[{i}]: expected a paged per-token tensor [num_pages, P, ...], got {tuple(shape)}"
                )
            p = shape[2] if (is_kv and hnd) else shape[1]
            if P is None:
                P, pages = p, shape[0]
            elif p != P or shape[0] != pages:
                raise ValueError(f"{name}[{i}]: {shape[0]} pages of {p} slots, but caches[0] has {pages} pages of {P}")
            if t.device != dev:
                same_device(accept_nodes=accept_nodes, **{f"{name}[{i}]": t})  # raises, naming both
            if not t.numel():
                continue  # nothing to move
            v = t if is_kv else _per_token_view(f"{name}[{i}]", t, hnd)
            ptr = v.data_ptr()
            if ptr in ptrs:
                raise ValueError("caches / per_token: the same memory appears twice; it would be moved twice")
            ptrs.add(ptr)
            tensors.append(v)
    if not tensors or B == 0 or accept_nodes.shape[1] == 0:
        return None
    _COMPACT_PAGED(
        tensors,
        block_table.contiguous(),
        cache_len.contiguous(),
        accept_nodes.contiguous(),
        accept_len.contiguous(),
        hnd,
        backend=backend,
    )
    return None


def accept_slots(
    slot_table: torch.Tensor,
    cache_len: Union[torch.Tensor, int],
    num_nodes: Union[torch.Tensor, int],
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
    *,
    max_nodes: Optional[int] = None,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Acceptance without moving K/V, for page size 1 (SGLang's token-to-slot table): rewrite the table.

    Tree node i of request b sits at position cache_len[b] + i (i < num_nodes[b]). Afterwards position
    cache_len[b] + j holds the slot that position cache_len[b] + accept_nodes[b, j] held (j <
    accept_len[b]), the tree's other positions hold -1, and the slots of the rejected nodes are returned
    for the engine to free. The caller then adds accept_len to cache_len.

    Args:
        slot_table: int32 [B, S_max], updated in place.
        cache_len: int32 [B] or an int. num_nodes: int32 [B] or an int (nodes written per request).
        accept_nodes, accept_len: the accepted path of verify_* (root first, -1 padded).
        max_nodes: the width N of `freed` (at least every num_nodes[b]); defaults to num_nodes when an int.

    Returns:
        (freed int32 [B, N]: rejected nodes' slots in node order, -1 padded; freed_count int32 [B]).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> table = torch.tensor([[10, 11, 20, 21, 22, 23]], dtype=torch.int32)   # 2 committed, 4 tree nodes
        >>> nodes = torch.tensor([[0, 2, -1]], dtype=torch.int32)
        >>> freed, n = sk.accept_slots(table, 2, 4, nodes, torch.tensor([2], dtype=torch.int32))
        >>> table.tolist(), freed.tolist(), n.tolist()
        ([[10, 11, 20, 22, -1, -1]], [[21, 23, -1, -1]], [2])
    """
    check_tensor("slot_table", slot_table, dtype=torch.int32, ndim=2)
    B = slot_table.shape[0]
    check_tensor("accept_nodes", accept_nodes, dtype=torch.int32, shape=(B, None))
    check_tensor("accept_len", accept_len, dtype=torch.int32, shape=(B,))
    cache_len = cache_len_arg(cache_len, B, slot_table.device)
    if max_nodes is None:
        if not isinstance(num_nodes, int):
            raise ValueError("max_nodes: required when num_nodes is a tensor (the width of freed)")
        max_nodes = num_nodes
    if not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 0:
        raise ValueError(f"max_nodes: expected an int >= 0, got {max_nodes!r}")
    num_nodes = cache_len_arg(num_nodes, B, slot_table.device) if isinstance(num_nodes, int) else num_nodes
    check_tensor("num_nodes", num_nodes, dtype=torch.int32, shape=(B,))
    dev = same_device(
        slot_table=slot_table,
        cache_len=cache_len,
        num_nodes=num_nodes,
        accept_nodes=accept_nodes,
        accept_len=accept_len,
    )
    if not slot_table.is_contiguous():
        raise ValueError(
            f"slot_table: expected a contiguous tensor (it is updated in place), got strides {slot_table.stride()}"
        )
    freed = torch.full((B, max_nodes), -1, dtype=torch.int32, device=dev)
    freed_count = torch.zeros(B, dtype=torch.int32, device=dev)
    if B and max_nodes and slot_table.shape[1]:
        _ACCEPT_SLOTS(
            slot_table,
            cache_len.contiguous(),
            num_nodes.contiguous(),
            accept_nodes.contiguous(),
            accept_len.contiguous(),
            freed,
            freed_count,
            backend=backend,
        )
    return freed, freed_count
