"""Triton kernel of tree attention (specdec::tree_attention_triton), flash-decoding style, also over paged
caches (specdec::paged_tree_attention_triton: the same kernel with each K/V row's address read through the
block table, see specdec_kernels/ops/paged.py).

Contract: specdec_kernels/ops/attention.py. q [B, H, Nq, D] contiguous; k/v caches [B, H_kv, S_max, D]
(any strides on B, H_kv, S_max; unit stride on D); query i of request b sees slots s < cache_len[b] and slot
cache_len[b] + j iff bit j of tree_mask[b, i] is set (and the slot is inside [0, S_max)).

Layout of the work: one program per (block of BLOCK_M query rows, request x KV head, split). The rows of a
(request, KV head) are the G = H / H_kv heads x Nq queries of its GQA group, which are contiguous in q
(head h = kvh * G + g), so every K/V tile a program loads serves G * Nq queries at once: the cache is read
once per row block instead of once per query head. Inside a program:

    prefix [start, end) of [0, cache_len): BLOCK_S tiles, no visibility mask (only the last partial tile
        is masked), online softmax in base 2 (scale * log2(e) folded into one multiply);
    tree slots cache_len + 32 w + t: one 32-slot tile per mask word w, each row's visibility is bit t of
        its word; a slot no row of the block sees is not even loaded, so stale or NaN data in unwritten
        slots cannot reach the output through 0 * NaN.

Split-K: decode has few (request, KV head) pairs (B = 1, H_kv = 8: 8 programs on a 132-SM GPU) but long
prefixes, so the prefix is cut into NUM_SPLITS chunks handled by separate programs that write fp32
partials (unnormalised accumulator, running max, running sum); a second kernel merges them. The number
of splits depends only on shapes and the device (never on cache_len values: no host sync); each program
cuts its chunk from the actual cache_len at run time, so short caches do not leave work unbalanced.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
TREE_TILE = tl.constexpr(32)  # slots per tree tile = bits per mask word (a constexpr: read inside kernels)


@triton.jit
def _online_update(acc, m_i, l_i, q, k, v, vis, qk_scale, USE_VIS: tl.constexpr, DOT_PREC: tl.constexpr):
    """One K/V tile of the online softmax (base 2). acc [M, D] fp32, m_i / l_i [M] fp32, vis [M, S] bool."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if USE_VIS:
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Rows that have seen nothing yet keep m = -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, m_new, l_i


@triton.jit
def _slot_offsets(slots, ok, table_row, PAGE, stride_page, stride_slot, PAGED: tl.constexpr):
    """Element offsets of cache slots from the (request, KV head) base: slots * stride_slot, or on a paged
    cache (page table_row[slot // PAGE], offset slot % PAGE) with entries < 0 read as page 0 (never visible)."""
    if PAGED:
        page = tl.load(table_row + slots // PAGE, mask=ok, other=0)
        return tl.maximum(page, 0).to(tl.int64) * stride_page + (slots % PAGE) * stride_slot
    else:
        return slots * stride_slot


@triton.jit
def _tree_attention_kernel(
    Q,
    K,
    V,
    CACHE_LEN,
    MASK,
    OUT,
    WS_ACC,
    WS_ML,
    qk_scale,
    S_max,
    Nq,
    W,
    R,
    H_kv,
    total_rows,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    TABLE,
    max_pages,
    PAGE,
    stride_kp,
    stride_vp,
    PAGED: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)  # b * H_kv + kvh
    split = tl.program_id(2)
    b = bh // H_kv
    kvh = bh % H_kv

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row r = g * Nq + i of this (b, kvh)
    row_ok = rows < R
    qi = rows % Nq
    offs_d = tl.arange(0, BLOCK_D)
    if BLOCK_D == HEAD_DIM:
        d_ok = tl.full([BLOCK_D], 1, tl.int1)  # a compile-time constant: no column mask on any load
    else:
        d_ok = offs_d < HEAD_DIM
    q_row = bh.to(tl.int64) * R + rows  # row of q / out viewed as [B * H * Nq, D]
    q = tl.load(Q + q_row[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    k_head = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
    v_head = V + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh
    cl = tl.load(CACHE_LEN + b).to(tl.int64)
    prefix = tl.minimum(tl.maximum(cl, 0), S_max)
    table_row = TABLE + b.to(tl.int64) * max_pages  # paged caches only

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # This program's share of the prefix: chunks of whole tiles, cut from the actual cache length.
    if NUM_SPLITS == 1:
        start = prefix * 0
        end = prefix
    else:
        chunk = tl.cdiv(tl.cdiv(prefix, NUM_SPLITS), BLOCK_S) * BLOCK_S
        start = tl.minimum(split * chunk, prefix)
        end = tl.minimum(start + chunk, prefix)
    n_full = (end - start) // BLOCK_S
    offs_s = tl.arange(0, BLOCK_S)
    for t in range(0, n_full):
        slots = start + t * BLOCK_S + offs_s
        k_off = _slot_offsets(slots, slots < S_max, table_row, PAGE, stride_kp, stride_ks, PAGED)
        v_off = _slot_offsets(slots, slots < S_max, table_row, PAGE, stride_vp, stride_vs, PAGED)
        k = tl.load(k_head + k_off[:, None] + offs_d[None, :], mask=d_ok[None, :], other=0.0)
        v = tl.load(v_head + v_off[:, None] + offs_d[None, :], mask=d_ok[None, :], other=0.0)
        acc, m_i, l_i = _online_update(acc, m_i, l_i, q, k, v, None, qk_scale, False, DOT_PREC)
    tail = start + n_full * BLOCK_S
    if tail < end:
        slots = tail + offs_s
        s_ok = slots < end
        kv_mask = s_ok[:, None] & d_ok[None, :]
        k_off = _slot_offsets(slots, s_ok, table_row, PAGE, stride_kp, stride_ks, PAGED)
        v_off = _slot_offsets(slots, s_ok, table_row, PAGE, stride_vp, stride_vs, PAGED)
        k = tl.load(k_head + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_head + v_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        vis = row_ok[:, None] & s_ok[None, :]
        acc, m_i, l_i = _online_update(acc, m_i, l_i, q, k, v, vis, qk_scale, True, DOT_PREC)

    # Tree slots, handled by split 0 only: one tile per mask word.
    if split == 0:
        bits = tl.arange(0, TREE_TILE)
        mask_row = MASK + (b.to(tl.int64) * Nq + qi) * W
        for w in range(0, W):
            slots = cl + w * TREE_TILE + bits
            slot_ok = (slots >= 0) & (slots < S_max)
            words = tl.load(mask_row + w, mask=row_ok, other=0)  # [BLOCK_M]
            vis = (((words[:, None] >> bits[None, :]) & 1) != 0) & slot_ok[None, :] & row_ok[:, None]
            seen = tl.max(vis.to(tl.int32), 0) != 0  # [TREE_TILE]
            kv_mask = seen[:, None] & d_ok[None, :]
            k_off = _slot_offsets(slots, seen, table_row, PAGE, stride_kp, stride_ks, PAGED)
            v_off = _slot_offsets(slots, seen, table_row, PAGE, stride_vp, stride_vs, PAGED)
            k = tl.load(k_head + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_head + v_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            acc, m_i, l_i = _online_update(acc, m_i, l_i, q, k, v, vis, qk_scale, True, DOT_PREC)

    out_mask = row_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        inv = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)  # a row without visible keys writes zeros
        o = acc * inv[:, None]
        tl.store(OUT + q_row[:, None] * HEAD_DIM + offs_d[None, :], o.to(OUT.dtype.element_ty), mask=out_mask)
    else:
        ws_row = split.to(tl.int64) * total_rows + q_row
        tl.store(WS_ACC + ws_row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=out_mask)
        tl.store(WS_ML + ws_row * 2, m_i, mask=row_ok)
        tl.store(WS_ML + ws_row * 2 + 1, l_i, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    WS_ACC,
    WS_ML,
    OUT,
    total_rows,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """out = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s with m = max_s m_s (zeros when nothing seen)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < total_rows
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        m = tl.maximum(m, tl.load(WS_ML + (s * total_rows + rows) * 2, mask=row_ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    l = tl.zeros([BLOCK_R], dtype=tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        ws_row = s * total_rows + rows
        m_s = tl.load(WS_ML + ws_row * 2, mask=row_ok, other=float("-inf"))
        l_s = tl.load(WS_ML + ws_row * 2 + 1, mask=row_ok, other=0.0)
        w = tl.exp2(m_s - m_safe)
        l += w * l_s
        acc += w[:, None] * tl.load(WS_ACC + ws_row[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
    inv = tl.where(l > 0, 1.0 / tl.where(l > 0, l, 1.0), 0.0)
    tl.store(OUT + rows[:, None] * HEAD_DIM + offs_d[None, :], (acc * inv[:, None]).to(OUT.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _choose_splits(device: torch.device, programs: int, s_max: int) -> int:
    """Prefix splits for `programs` (row block x request x KV head) programs: enough to fill the GPU twice over,
    at least 512 cache slots per split, at most 32. Shapes only, never cache_len values."""
    if device.type != "cuda":
        return 1  # the interpreter: one program after another, splitting only adds work
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    if programs >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, programs), s_max // 512, 32))


def _check(q, k_cache, v_cache, cache_len, tree_mask, out) -> None:
    # The raw op can be called directly (opcheck, other engines): guard every memory access.
    op = "specdec::tree_attention_triton"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or q.dim() != 4 or not q.is_contiguous():
        raise ValueError(
            f"{op}: q must be a contiguous fp32/fp16/bf16 [B, H, Nq, D] tensor, "
            f"got {q.dtype} {tuple(q.shape)} (contiguous={q.is_contiguous()})"
        )
    B, H, Nq, D = q.shape
    if D > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dim D = {D} > {MAX_HEAD_DIM}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype or t.dim() != 4 or t.shape[0] != B or t.shape[3] != D or t.device != q.device:
            raise ValueError(
                f"{name}: expected a {q.dtype} [B={B}, H_kv, S_max, D={D}] tensor on {q.device}, "
                f"got {t.dtype} {tuple(t.shape)} on {t.device}"
            )
        if D > 1 and t.stride(3) != 1:
            raise ValueError(f"{op}: {name} must have unit stride along D, got strides {t.stride()}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"{op}: v_cache shape {tuple(v_cache.shape)} != k_cache shape {tuple(k_cache.shape)}")
    H_kv = k_cache.shape[1]
    if H_kv < 1 or H % H_kv != 0:
        raise ValueError(f"{op}: H = {H} query heads is not a multiple of H_kv = {H_kv}")
    if (
        cache_len.dtype != torch.int32
        or cache_len.shape != (B,)
        or cache_len.device != q.device
        or not cache_len.is_contiguous()
    ):
        raise ValueError(
            f"{op}: cache_len must be a contiguous int32 [B={B}] tensor on {q.device}, "
            f"got {cache_len.dtype} {tuple(cache_len.shape)} on {cache_len.device}"
        )
    if (
        tree_mask.dtype != torch.int32
        or tree_mask.dim() != 3
        or tree_mask.shape[:2] != (B, Nq)
        or tree_mask.shape[2] < 1
        or tree_mask.device != q.device
        or not tree_mask.is_contiguous()
    ):
        raise ValueError(
            f"{op}: tree_mask must be a contiguous int32 [B={B}, Nq={Nq}, W>=1] tensor on {q.device}, "
            f"got {tree_mask.dtype} {tuple(tree_mask.shape)} on {tree_mask.device}"
        )
    if out.dtype != q.dtype or out.shape != q.shape or out.device != q.device or not out.is_contiguous():
        raise ValueError(
            f"{op}: out must be a contiguous {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}, "
            f"got {out.dtype} {tuple(out.shape)} on {out.device}"
        )


def _tile_config(
    R: int, D: int, block_m: Optional[int], fp32: bool = False, arch: Optional[int] = None
) -> Tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_D, BLOCK_S, num_warps, num_stages) for R rows per (request, KV head) and head dim D, fp32
    or 16-bit inputs, on compute capability `arch` (major * 10 + minor; None: not a GPU, or unknown).

    block_m, when given, replaces the automatic BLOCK_M; it must be a power of two >= 16."""
    BLOCK_D = max(16, triton.next_power_of_2(D))
    if fp32:
        # fp32 dots are exact ("ieee"): FMA loops in which each thread holds whole D-long rows of its q and k
        # rows, so the tiles are small and spread over 8 warps. Spill-free for D <= 64 on sm_80 / sm_90 (about
        # 230 registers); wider heads still spill (ptxas, sm_90: 272 bytes at D 128, 1.8 KB at D 256, against
        # 30 KB with the 16-bit tiles below).
        BLOCK_M = block_m if block_m is not None else 16
        BLOCK_S, num_warps, num_stages = 32, 8, (3 if BLOCK_D <= 64 else 2)
    else:
        BLOCK_M = block_m if block_m is not None else min(64, max(16, triton.next_power_of_2(R)))
        # Sized from sm_80/sm_90 compiles (registers, shared memory) with aligned inputs: acc is BLOCK_M x
        # BLOCK_D fp32, so wide row blocks of wide heads get 8 warps (about 160 registers instead of 210 with
        # 4); D = 256 halves the K/V tile and keeps two pipeline stages so shared memory stays under 100 KB
        # (GPUs with less than the A100's 163 KB per SM still launch it). Before sm_90 (mma.sync, no wgmma)
        # the 8-warp tiles take 32-slot K/V tiles in two stages: with 64 x 3 (or 64 x 2 when paged) they
        # needed more than 255 registers at BLOCK_M 64, D 128 on sm_80 and spilled 4-16 bytes.
        num_warps = 8 if BLOCK_M >= 64 and BLOCK_D >= 128 else 4
        pre_hopper_wide = num_warps == 8 and arch is not None and arch < 90
        BLOCK_S = 64 if BLOCK_D <= 128 and not pre_hopper_wide else 32
        num_stages = 2 if BLOCK_D > 128 or pre_hopper_wide else 3
    if BLOCK_M < 16 or BLOCK_M & (BLOCK_M - 1):
        raise ValueError(f"block_m: expected a power of two >= 16, got {BLOCK_M}")
    return BLOCK_M, BLOCK_D, BLOCK_S, num_warps, num_stages


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> Tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _arch(device: torch.device) -> Optional[int]:
    """Compute capability of a CUDA device as major * 10 + minor (None for other devices)."""
    if device.type != "cuda":
        return None
    major, minor = _capability(device.index if device.index is not None else torch.cuda.current_device())
    return major * 10 + minor


def _merge_splits(ws_acc, ws_ml, out, total_rows: int, D: int, BLOCK_D: int, num_splits: int) -> None:
    """Split-K's second pass: merge the num_splits fp32 partials of each of the total_rows rows into out."""
    BLOCK_R = 16
    _merge_splits_kernel[(triton.cdiv(total_rows, BLOCK_R),)](
        ws_acc,
        ws_ml,
        out,
        total_rows,
        HEAD_DIM=D,
        BLOCK_D=BLOCK_D,
        BLOCK_R=BLOCK_R,
        NUM_SPLITS=num_splits,
        num_warps=4,
    )


def tree_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    *,
    num_splits: Optional[int] = None,
    block_m: Optional[int] = None,
) -> None:
    """Launch the Triton tree attention into `out` (see the module docstring).

    num_splits / block_m override the automatic choices (tests use them to reach the split-K path and
    several row blocks with small shapes); block_m must be a power of two >= 16.
    """
    _check(q, k_cache, v_cache, cache_len, tree_mask, out)
    H_kv, S_max = k_cache.shape[1], k_cache.shape[2]
    strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1))
    strides += (v_cache.stride(2),)
    paging = (cache_len, 1, 1, 0, 0, False)  # no table: the contiguous cache
    _launch(q, k_cache, v_cache, cache_len, tree_mask, scale, out, H_kv, S_max, strides, paging, num_splits, block_m)


def paged_tree_attention_triton(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    block_table: torch.Tensor,
    cache_len: torch.Tensor,
    tree_mask: torch.Tensor,
    hnd: bool,
    scale: float,
    out: torch.Tensor,
    *,
    num_splits: Optional[int] = None,
    block_m: Optional[int] = None,
) -> None:
    """The same kernel over a paged cache (specdec_kernels.ops.paged): each K/V row's address comes from
    the block table; pages NHD [num_pages, P, H_kv, D] or (hnd) HND [num_pages, H_kv, P, D]."""
    slot, head = (2, 1) if hnd else (1, 2)
    P, H_kv = k_pages.shape[slot], k_pages.shape[head]
    # The contiguous checks over a [B, H_kv, S, D]-shaped stand-in: same dtype, device, D and GQA rules.
    B, S_max = q.shape[0], block_table.shape[1] * P
    like = k_pages.new_zeros(q.shape[3]).view(1, 1, 1, -1).expand(B, H_kv, S_max, q.shape[3])
    _check(q, like, like, cache_len, tree_mask, out)
    if v_pages.shape != k_pages.shape or v_pages.dtype != k_pages.dtype or v_pages.device != k_pages.device:
        raise ValueError("specdec::paged_tree_attention_triton: v_pages must have k_pages' shape, dtype and device")
    for name, t in (("k_pages", k_pages), ("v_pages", v_pages)):
        if t.shape[3] > 1 and t.stride(3) != 1:
            raise ValueError(f"specdec::paged_tree_attention_triton: {name} must have unit stride along D")
    if block_table.dtype != torch.int32 or block_table.shape[0] != B or not block_table.is_contiguous():
        raise ValueError(
            f"specdec::paged_tree_attention_triton: block_table must be a contiguous int32 [B={B}, max_pages] "
            f"tensor, got {block_table.dtype} {tuple(block_table.shape)}"
        )
    strides = (0, k_pages.stride(head), k_pages.stride(slot), 0, v_pages.stride(head), v_pages.stride(slot))
    paging = (block_table, block_table.shape[1], P, k_pages.stride(0), v_pages.stride(0), True)
    _launch(q, k_pages, v_pages, cache_len, tree_mask, scale, out, H_kv, S_max, strides, paging, num_splits, block_m)


def _launch(q, k, v, cache_len, tree_mask, scale, out, H_kv, S_max, strides, paging, num_splits, block_m) -> None:
    """Grid, split-K workspace and launch of _tree_attention_kernel (contiguous or paged K/V)."""
    B, H, Nq, D = q.shape
    W = tree_mask.shape[2]
    if out.numel() == 0:
        return
    R = (H // H_kv) * Nq
    total_rows = B * H * Nq
    fp32 = q.dtype == torch.float32
    BLOCK_M, BLOCK_D, BLOCK_S, num_warps, num_stages = _tile_config(R, D, block_m, fp32, _arch(q.device))
    row_blocks = triton.cdiv(R, BLOCK_M)
    if num_splits is None:
        num_splits = _choose_splits(q.device, row_blocks * B * H_kv, S_max)
    if num_splits < 1:
        raise ValueError(f"num_splits: expected >= 1, got {num_splits}")
    if num_splits > 1:
        ws_acc = torch.empty(num_splits, total_rows, D, dtype=torch.float32, device=q.device)
        ws_ml = torch.empty(num_splits, total_rows, 2, dtype=torch.float32, device=q.device)
    else:
        ws_acc = ws_ml = out  # never touched
    dot_prec = "ieee" if fp32 else "tf32"  # fp32 must not silently drop to tf32
    grid = (row_blocks, B * H_kv, num_splits)
    _tree_attention_kernel[grid](
        q,
        k,
        v,
        cache_len,
        tree_mask,
        out,
        ws_acc,
        ws_ml,
        float(scale) * LOG2E,
        S_max,
        Nq,
        W,
        R,
        H_kv,
        total_rows,
        *strides,
        *paging[:5],
        PAGED=paging[5],
        HEAD_DIM=D,
        BLOCK_D=BLOCK_D,
        BLOCK_M=BLOCK_M,
        BLOCK_S=BLOCK_S,
        NUM_SPLITS=num_splits,
        DOT_PREC=dot_prec,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _merge_splits(ws_acc, ws_ml, out, total_rows, D, BLOCK_D, num_splits)


@torch.library.register_kernel("specdec::tree_attention_triton", ("cpu", "cuda"))
def _tree_attention_triton_op(q, k_cache, v_cache, cache_len, tree_mask, scale, out):
    tree_attention_triton(q, k_cache, v_cache, cache_len, tree_mask, scale, out)


@torch.library.register_kernel("specdec::paged_tree_attention_triton", ("cpu", "cuda"))
def _paged_tree_attention_triton_op(q, k_pages, v_pages, block_table, cache_len, tree_mask, hnd, scale, out):
    paged_tree_attention_triton(q, k_pages, v_pages, block_table, cache_len, tree_mask, hnd, scale, out)
