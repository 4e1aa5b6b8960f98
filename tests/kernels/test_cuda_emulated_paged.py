"""The CUDA paged-cache kernels on the CPU under the CUDA emulation (issue 21).

tree_attention_kernel over paged caches (its SlotRows<true> instantiations, with merge_splits_kernel when
the prefix is split) through attention.cu's own enqueue<T> and the plan of specdec/attention_launch.h, on
test_paged.py's case generator (a contiguous cache scattered onto shuffled pages): page sizes 1 / 3 / 16,
NHD and HND, prefixes ending mid-page, trees crossing page boundaries, ragged batches, B = 1, an empty prefix
and split-K over long prefixes; checked against the fp64 reference over the logical cache with
flash-attention's rule (test_tree_attention_kernel_paths.check). compact_paged_kv_kernel (one launch for
every layer's pages, bytes of any dtype, overlapping sources and destinations) against
specdec_kernels.reference.paged byte for byte, over whole storages (pages of no request must not change).
block_table_from_csr_kernel and accept_slots_kernel (csrc/cuda/paged.cu) against the reference exactly, on
test_paged.py's random CSR lists and trees. See docs/testing.md, "CUDA kernels under emulation".
"""

from __future__ import annotations

import pytest
import torch
from test_cuda_emulated_attention import DTYPE_CODE, H100_SMS, PLAN, _storage
from test_paged import logical, paginate, random_accept_case, random_csr, random_trees

from specdec_kernels.reference import paged as paged_ref

import cuda_emulation as ce
from helpers import assert_equal
from test_tree_attention_kernel_paths import check

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(ce.unavailable_reason() is not None, reason=str(ce.unavailable_reason())),
]

LAYOUTS = ["NHD", "HND"]


def i32(x):
    return torch.tensor(x, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------------
# tree_attention_kernel over paged caches


def emulated_paged_attention(q, kp, vp, table, cache_len, mask, scale, layout, num_sms=H100_SMS, **kw):
    """tree_attention_kernel<..., paged> (and merge_splits_kernel) on the emulated GPU: (out, plan)."""
    B, H, Nq, D = q.shape
    hnd = layout == "HND"
    H_kv, P = (kp.shape[1], kp.shape[2]) if hnd else (kp.shape[2], kp.shape[1])
    scalars = dict(B=B, H=H, H_kv=H_kv, Nq=Nq, D=D, W=mask.shape[2], dtype=DTYPE_CODE[q.dtype], num_sms=num_sms)
    scalars.update(P=P, max_pages=table.shape[1], num_pages=kp.shape[0], scale=float(scale))
    ins = dict(q=q.contiguous(), block_table=table, cache_len=cache_len, mask=mask)
    head, slot = (1, 2) if hnd else (2, 1)
    for name, t in (("k", kp), ("v", vp)):
        ins[name], scalars[f"{name}_offset"] = _storage(t)
        scalars.update({f"{name}_sp": t.stride(0), f"{name}_sh": t.stride(head), f"{name}_ss": t.stride(slot)})
    outs = {"out": ce.poisoned(q.shape, q.dtype), "plan": ce.poisoned((len(PLAN),), torch.int64)}
    got = ce.run("tree_attention_kernel_paged", scalars, ins, outs, **kw)
    return got["out"], dict(zip(PLAN, got["plan"].tolist()))


def paged_case(B, H, H_kv, N, D, P, layout, cache_len, dtype=torch.float32, seed=0, extra=2):
    """q, pages, table, cache_len, mask and the logical caches [B, H_kv, max_pages * P, D] the pages hold:
    test_paged.paginate's shuffled pages (spare pages no request owns) under a random tree of N nodes."""
    g = torch.Generator().manual_seed(seed)
    S = max(cache_len) + N + extra
    k = torch.randn(B, H_kv, S, D, generator=g).to(dtype)
    v = torch.randn(B, H_kv, S, D, generator=g).to(dtype)
    q = torch.randn(B, H, N, D, generator=g).to(dtype)
    kp, table = paginate(k, P, layout, seed=seed + 1)
    vp, _ = paginate(v, P, layout, seed=seed + 1)
    mask = random_trees(B, N, seed=seed).mask
    S_log = table.shape[1] * P
    return q, kp, vp, table, i32(cache_len), mask, logical(kp, table, S_log, layout), logical(vp, table, S_log, layout)


def check_paged(q, kp, vp, table, cl, mask, k, v, layout, scale=0.25, what="", **kw):
    out, plan = emulated_paged_attention(q, kp, vp, table, cl, mask, scale, layout, **kw)
    check(out, q, k, v, cl, mask, scale, what=f"tree_attention_kernel paged {layout} {what} {q.dtype} plan {plan}")
    return out, plan


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("P", [1, 3, 16], ids=lambda p: f"P{p}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_tree_attention_kernel_paged(dtype, P, layout):
    """test_paged.py's cases: an empty prefix, one ending mid-page, a tree crossing page boundaries (ragged
    batch, GQA verification rows: four rows per warp); then B = 1 decode (one row per warp) at D = 64 with
    16-byte staging, and D = 40 (scalar staging: rows of 40 elements are not 16-byte multiples in fp16)."""
    D = 16 if dtype == torch.float32 else 40
    case = paged_case(3, 6, 2, 7, D, P, layout, [0, 5, 19], dtype, seed=P)
    _, plan = check_paged(*case, layout, what=f"P={P} ragged")
    assert plan["num_splits"] == 1 and plan["rows_per_warp"] == 4
    case = paged_case(1, 4, 4, 1, 64, P, layout, [37], dtype, seed=P + 1)
    _, plan = check_paged(*case, layout, what=f"P={P} B=1 decode")
    assert plan["rows_per_warp"] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("P", [1, 16], ids=lambda p: f"P{p}")
def test_tree_attention_kernel_paged_split_k(P, layout):
    """Long prefixes split over several blocks (merge_splits_kernel merges them): 1400 logical slots, prefixes
    of 1300 (mid-page) and 700, fp16; the same inputs on a one-SM GPU (no split) agree within the tolerance."""
    case = paged_case(2, 4, 2, 5, 64, P, layout, [1300, 700], torch.float16, seed=20 + P, extra=90)
    _, plan = check_paged(*case, layout, what=f"P={P} split-K")
    assert plan["num_splits"] > 1
    _, plan = check_paged(*case, layout, what=f"P={P} one SM", num_sms=1)
    assert plan["num_splits"] == 1


def test_tree_attention_kernel_paged_unallocated_pages_and_garbage():
    """Table entries a request never reaches are -1 (read as page 0, never visible) and NaN on every page slot
    no query sees never reaches the output."""
    q, kp, vp, table, cl, mask, k, v = paged_case(2, 4, 2, 5, 32, 4, "NHD", [6, 13], seed=3, extra=0)
    S = int(cl.max()) + 5
    table = torch.cat([table, torch.full((2, 2), -1, dtype=torch.int32)], 1)  # two unallocated pages each
    visible = torch.zeros(kp.shape[:2], dtype=torch.bool)  # [page, slot] some query of its request sees
    for b in range(2):
        c, union = int(cl[b]), 0
        for word in mask[b, :, 0].tolist():
            union |= word & 0xFFFFFFFF
        for s in range(min(c + 32, table.shape[1] * 4)):
            if s < c or (union >> (s - c)) & 1:
                visible[int(table[b, s // 4]), s % 4] = True
    kp[~visible], vp[~visible] = float("nan"), float("nan")
    out, _ = emulated_paged_attention(q, kp, vp, table, cl, mask, 0.25, "NHD")
    assert torch.isfinite(out).all(), "NaN leaked from slots no query sees"
    S_log = table.shape[1] * 4
    clean = [logical(t.nan_to_num(0.0), table.clamp(min=0), S_log, "NHD") for t in (kp, vp)]
    check(out, q, *clean, cl, mask, 0.25, what=f"unallocated pages S={S}")


@pytest.mark.parametrize("variant", ["tsan", "asan"])
def test_tree_attention_kernel_paged_sanitized(variant):
    """Small paged cases under the sanitizers: page size 3 (HND, split-K with its merge, fp32) and page size 1
    (NHD, fp16 rows of 40 elements: scalar staging)."""
    case = paged_case(1, 4, 2, 3, 32, 3, "HND", [1030], seed=12, extra=30)
    _, plan = check_paged(*case, "HND", what=variant, variant=variant)
    assert plan["num_splits"] == 2
    case = paged_case(2, 2, 1, 4, 40, 1, "NHD", [9, 0], torch.float16, seed=13)
    check_paged(*case, "NHD", what=f"{variant} P=1", variant=variant)


# ---------------------------------------------------------------------------------------------------
# compact_paged_kv_kernel: page views into raw byte storages


def _bytes_of(t):
    """(the whole storage under view `t` as uint8, t's offset into it in bytes)."""
    s = t.untyped_storage()
    flat = torch.empty(0, dtype=torch.uint8).set_(s, 0, (s.nbytes(),), (1,))
    return flat, t.storage_offset() * t.element_size()


def _rebuild(t, storage_bytes):
    """View `t` (its shape, strides, offset) over a copy of its storage's bytes."""
    typed = storage_bytes.view(t.dtype)
    return torch.as_strided(typed, t.shape, t.stride(), t.storage_offset())


def emulated_compact_paged(caches, table, cache_len, accept_nodes, accept_len, layout, num_sms=132, **kw):
    """compact_paged_kv_kernel over 4-D page views (NHD [pages, P, X, Y] or HND [pages, X, P, Y]): the caches'
    storages after the run (uint8)."""
    B, W = accept_nodes.shape
    head, slot = (1, 2) if layout == "HND" else (2, 1)
    scalars = {"B": B, "W": W, "T": len(caches), "num_sms": num_sms, "max_pages": table.shape[1]}
    outputs = {}
    for i, t in enumerate(caches):
        outputs[f"cache{i}"], off = _bytes_of(t)
        scalars.update({f"es{i}": t.element_size(), f"offset{i}": off, f"num_pages{i}": t.shape[0]})
        scalars.update({f"X{i}": t.shape[head], f"P{i}": t.shape[slot], f"Y{i}": t.shape[3]})
        scalars.update({f"sp{i}": t.stride(0), f"sx{i}": t.stride(head), f"ss{i}": t.stride(slot)})
    inputs = {"block_table": table, "cache_len": cache_len, "accept_nodes": accept_nodes, "accept_len": accept_len}
    return ce.run("compact_paged_kv_kernel", scalars, inputs, outputs, **kw)


def check_compact_paged(caches, table, cache_len, accept_nodes, accept_len, layout, **kw):
    """The kernel against specdec_kernels.reference.paged.compact_paged_kv on copies: every storage byte."""
    got = emulated_compact_paged(caches, table, cache_len, accept_nodes, accept_len, layout, **kw)
    want = [_bytes_of(t)[0].clone() for t in caches]
    views = [_rebuild(t, w) for t, w in zip(caches, want)]
    paged_ref.compact_paged_kv(views, table, cache_len, accept_nodes, accept_len, layout == "HND")
    for i, w in enumerate(want):
        assert_equal(got[f"cache{i}"], w, f"compact_paged_kv_kernel {layout} cache{i}")


def compaction_case(P, layout, seed=2):
    """test_paged.py's compaction case: K fp32, V fp16 and a per-token fp32 [pages, P, 5] tensor (viewed as
    one head of width 5) on shuffled pages; an empty prefix, one ending mid-page, a tree crossing pages."""
    B, H_kv, D, N = 3, 2, 4, 9
    cache_len = i32([0, 4, 17])
    S = int(cache_len.max()) + N + 1
    g = torch.Generator().manual_seed(seed)
    kp, table = paginate(torch.randn(B, H_kv, S, D, generator=g), P, layout, seed=seed)
    vp, _ = paginate(torch.randn(B, H_kv, S, D, generator=g).half(), P, layout, seed=seed)
    fp, _ = paginate(torch.randn(B, 1, S, 5, generator=g), P, "NHD", seed=seed)
    feats = fp[:, :, 0].reshape(fp.shape[0], P, 1, 5)
    feats = feats.transpose(1, 2) if layout == "HND" else feats
    accept_nodes = i32([[0, 1, 4, 8, -1], [0, 3, -1, -1, -1], [0, 2, 3, 5, 7]])
    return [kp, vp, feats], table, cache_len, accept_nodes, i32([4, 2, 5])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("P", [1, 3, 16], ids=lambda p: f"P{p}")
def test_compact_paged_kv_kernel(P, layout):
    """K, V and per-token tensors of three dtypes and row sizes (16-, 8- and 4-byte accesses), overlapping
    sources and destinations, pages of no request untouched (every storage byte compared)."""
    check_compact_paged(*compaction_case(P, layout), layout)
    check_compact_paged(*compaction_case(P, layout, seed=5), layout, num_sms=1)  # grid-stride loops


def test_compact_paged_kv_kernel_moves_nothing_out_of_range():
    """Node -1, a source on an unallocated page (-1 entry), a source past the table: nothing moves; B = 1."""
    kp = torch.arange(24.0).view(6, 4, 1, 1)
    check_compact_paged([kp], i32([[1, 4, -1]]), i32([6]), i32([[0, -1, 5, 9]]), i32([4]), "NHD")
    check_compact_paged([kp], i32([[1, 4, -1]]), i32([2]), i32([[0, 1, 3, 8]]), i32([4]), "NHD")


@pytest.mark.parametrize("T", [17, 70], ids=lambda t: f"T{t}")
def test_compact_paged_kv_kernel_many_tensors(T):
    """64- and 256-descriptor parameter structs: one launch for every layer's pages."""
    g = torch.Generator().manual_seed(T)
    dtypes = [torch.float16, torch.float32, torch.int8]
    caches = [torch.randint(-100, 100, (7, 3, 2, 1 + i % 5), generator=g).to(dtypes[i % 3]) for i in range(T)]
    table = i32([[6, 0, 2], [5, 1, 3]])
    check_compact_paged(caches, table, i32([2, 1]), i32([[0, 2, 4], [0, 1, 5]]), i32([3, 3]), "NHD", num_sms=2)


@pytest.mark.parametrize("variant", ["tsan", "asan"])
def test_compact_paged_kv_kernel_sanitized(variant):
    check_compact_paged(*compaction_case(3, "HND"), "HND", num_sms=1, variant=variant)
    check_compact_paged(*compaction_case(1, "NHD"), "NHD", variant=variant)


# ---------------------------------------------------------------------------------------------------
# block_table_from_csr_kernel and accept_slots_kernel (csrc/cuda/paged.cu)


def emulated_block_table(indptr, indices, max_pages, **kw):
    B = indptr.shape[0] - 1
    scalars = {"B": B, "max_pages": max_pages, "nnz": indices.numel()}
    outs = {"out": ce.poisoned((B, max_pages), torch.int32)}
    return ce.run("block_table_from_csr_kernel", scalars, {"kv_indptr": indptr, "kv_indices": indices}, outs, **kw)[
        "out"
    ]


def check_block_table(indptr, indices, max_pages, **kw):
    want = torch.empty(indptr.shape[0] - 1, max_pages, dtype=torch.int32)
    paged_ref.block_table_from_csr(indptr, indices, want)
    assert_equal(emulated_block_table(indptr, indices, max_pages, **kw), want, "block_table_from_csr_kernel")


@pytest.mark.parametrize("B,max_count,max_pages", [(1, 5, 5), (7, 9, 4), (33, 40, 1100), (300, 6, 5)])
def test_block_table_from_csr_kernel(B, max_count, max_pages):
    """test_paged.py's ragged CSR lists (empty requests, rows cut at max_pages, 36300 entries: several blocks)."""
    check_block_table(*random_csr(B, max_count, 4 * B * max_count + 1, seed=B), max_pages)


def test_block_table_from_csr_kernel_unchecked_values():
    """Offsets past kv_indices read its last entry, a decreasing kv_indptr gives an empty row, and with no
    indices at all a counted page reads 0 (as the reference)."""
    check_block_table(i32([0, 2, 6, 1]), i32([4, 8, 9]), 5)
    check_block_table(i32([0, 2]), i32([]), 3)


def emulated_accept_slots(table, cache_len, num_nodes, nodes, accept_len, N, **kw):
    B, S = table.shape
    scalars = {"B": B, "S": S, "W": nodes.shape[1], "N": N}
    ins = {"cache_len": cache_len, "num_nodes": num_nodes, "accept_nodes": nodes, "accept_len": accept_len}
    outs = {
        "slot_table": table.clone(),
        "freed": ce.poisoned((B, N), torch.int32),
        "freed_count": ce.poisoned((B,), torch.int32),
    }
    return ce.run("accept_slots_kernel", scalars, ins, outs, **kw)


def check_accept_slots(table, cache_len, num_nodes, nodes, accept_len, N, **kw):
    got = emulated_accept_slots(table, cache_len, num_nodes, nodes, accept_len, N, **kw)
    want = {"slot_table": table.clone(), "freed": torch.empty(table.shape[0], N, dtype=torch.int32)}
    want["freed_count"] = torch.empty(table.shape[0], dtype=torch.int32)
    paged_ref.accept_slots(
        want["slot_table"], cache_len, num_nodes, nodes, accept_len, want["freed"], want["freed_count"]
    )
    for name, w in want.items():
        assert_equal(got[name], w, f"accept_slots_kernel {name}")


@pytest.mark.parametrize("B,N,S", [(1, 1, 4), (5, 9, 30), (3, 300, 700), (2, 1024, 1100)])
def test_accept_slots_kernel(B, N, S):
    """test_paged.py's random trees and paths: B = 1 with one node (one warp), ragged batches with an empty
    prefix and a tree cut by the table's end, 300 nodes (two chunks of the 256-thread prefix count) and the
    most nodes, 1024 (four chunks)."""
    check_accept_slots(*random_accept_case(B, N, S, seed=N), N)


def test_accept_slots_kernel_unchecked_values():
    """Path entries past num_nodes or past N, a repeated node, accept_len past W, negative cache_len, num_nodes
    past N: as the reference."""
    g = torch.Generator().manual_seed(3)
    table = torch.randperm(100, generator=g)[:48].view(4, 12).to(torch.int32)
    nodes = i32([[0, 7, 2, 4], [0, 2, 1, -1], [0, 3, 3, 8], [0, 1, 2, 3]])
    check_accept_slots(table, i32([2, -3, 5, 0]), i32([5, 6, 9, 4]), nodes, i32([4, 3, 4, 9]), 6)


@pytest.mark.parametrize("variant", ["tsan", "asan"])
def test_paged_index_kernels_sanitized(variant):
    check_block_table(*random_csr(9, 7, 80, seed=4), 6, variant=variant)
    check_accept_slots(*random_accept_case(3, 300, 400, seed=5), 300, variant=variant)
