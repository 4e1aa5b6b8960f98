"""The CUDA tree-attention kernels of csrc/cuda/attention.cu on the CPU under the CUDA emulation.

tree_attention_kernel (head dims padded to 64, 128 and 256 with its shared-memory opt-in, one or four rows
per warp, several row tiles, vector and scalar staging) and merge_splits_kernel (split-K over long prefixes),
launched through attention.cu's own enqueue<T> with the plan of specdec/attention_launch.h, against the
PyTorch reference in fp64 with flash-attention's rule (test_tree_attention_kernel_paths.check: at most ~2x
the error of PyTorch's own attention in the kernel's dtype, plus a floor). See docs/testing.md, "CUDA kernels
under emulation".
"""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk

import cuda_emulation as ce
from test_tree_attention import random_parents
from test_tree_attention_kernel_paths import check, inputs

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(ce.unavailable_reason() is not None, reason=str(ce.unavailable_reason())),
]

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
DTYPES = list(DTYPE_CODE)
PLAN = ("num_splits", "rows_per_warp", "d_pad", "row_tiles", "smem", "smem_opt_in")
H100_SMS = 132


def _storage(t):
    """The whole storage under view `t` (a flat tensor of t's dtype) and t's offset into it, in elements."""
    s = t.untyped_storage()
    flat = t.new_empty(0).set_(s, 0, (s.nbytes() // t.element_size(),), (1,))
    return flat, t.storage_offset()


def emulated_tree_attention(q, k, v, cache_len, mask, scale, num_sms=H100_SMS, variant="plain", exe=None):
    """tree_attention_kernel (and merge_splits_kernel) on the emulated GPU of `num_sms` SMs: (out, plan).

    k and v may be any views with unit stride along D (their storages travel with their offsets and strides)."""
    B, H, Nq, D = q.shape
    H_kv, S, W = k.shape[1], k.shape[2], mask.shape[2]
    scalars = dict(B=B, H=H, H_kv=H_kv, Nq=Nq, D=D, S=S, W=W, dtype=DTYPE_CODE[q.dtype], num_sms=num_sms)
    scalars["scale"] = float(scale)
    ins = dict(q=q.contiguous(), cache_len=cache_len, mask=mask)
    for name, t in (("k", k), ("v", v)):
        ins[name], scalars[f"{name}_offset"] = _storage(t)
        scalars.update({f"{name}_{s}": t.stride(i) for i, s in enumerate(("sb", "sh", "ss"))})
    outs = {"out": ce.poisoned(q.shape, q.dtype), "plan": ce.poisoned((len(PLAN),), torch.int64)}
    got = ce.run("tree_attention_kernel", scalars, ins, outs, variant=variant, exe=exe)
    return got["out"], dict(zip(PLAN, got["plan"].tolist()))


def check_emulated(q, k, v, cl, mask, scale, what="", **kw):
    out, plan = emulated_tree_attention(q, k, v, cl, mask, scale, **kw)
    check(out, q, k, v, cl, mask, scale, what=f"{what} {q.dtype} plan {plan}")
    return out, plan


# (B, H, H_kv, Nq, S, W, cache_len): GQA decode (one row per warp), a GQA verification step (four rows per
# warp, 3 row tiles, the last partial), MHA with two mask words, MQA with cache_len 0 and tree slots cut off
# by S.
SHAPES = {
    "decode": (2, 8, 2, 1, 300, 1, [250, 0]),
    "verify": (1, 8, 2, 9, 120, 1, [90]),
    "mha-2words": (1, 3, 3, 40, 90, 2, [37]),
    "mqa-cut": (2, 4, 1, 9, 40, 1, [0, 35]),
}


# Every instantiation: each dtype with each padded head dim (64, 128, 256 with the > 48 KiB shared-memory
# opt-in), by exact and by zero-padded head dims; each case runs one and four rows per warp.
INSTANTIATIONS = [
    (torch.float32, 40),
    (torch.float32, 128),
    (torch.float32, 256),
    (torch.float16, 64),
    (torch.float16, 100),
    (torch.float16, 200),
    (torch.bfloat16, 64),
    (torch.bfloat16, 72),
    (torch.bfloat16, 256),
]


@pytest.mark.parametrize(
    "dtype,D", INSTANTIATIONS, ids=[f"{str(dt).replace('torch.', '')}-D{d}" for dt, d in INSTANTIATIONS]
)
def test_tree_attention_kernel_shapes(dtype, D):
    """The instantiations above over the shapes above (random mask words: all 32 bits used)."""
    for name, (B, H, H_kv, Nq, S, W, cl) in SHAPES.items():
        q, k, v, cache_len, mask = inputs(B, H, H_kv, Nq, D, S, W, dtype, seed=D + Nq, cache_len=cl)
        _, plan = check_emulated(q, k, v, cache_len, mask, 0.3, what=f"{name} D={D}")
        assert plan["num_splits"] == 1 and plan["d_pad"] == (64 if D <= 64 else 128 if D <= 128 else 256)
        assert plan["rows_per_warp"] == (1 if (H // H_kv) * Nq <= 4 else 4)
        assert plan["smem_opt_in"] == (plan["smem"] > 48 * 1024)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_merge_splits_kernel_decode(dtype):
    """Decode over a long prefix: 2 blocks on a 132-SM GPU split the 2100-slot cache 4 ways (chunks of 17
    tiles, the last one cut by cache_len), merged by merge_splits_kernel; the same inputs on a one-SM GPU
    (no split) give the same result within the tolerance."""
    q, k, v, cl, mask = inputs(1, 8, 2, 1, 128, 2100, 1, dtype, seed=1, cache_len=[2050])
    _, plan = check_emulated(q, k, v, cl, mask, 0.1, what="split decode")
    assert plan["num_splits"] == 4 and plan["rows_per_warp"] == 1
    _, plan = check_emulated(q, k, v, cl, mask, 0.1, what="one SM", num_sms=1)
    assert plan["num_splits"] == 1


def test_merge_splits_kernel_rows_without_keys_and_odd_cache_len():
    """Four splits of 32 slots over prefixes of 40 (two splits without a slot), 0 and -5 (no prefix: tree bits
    j >= 5 land on slots 0, 1, ...), past S (all prefix, no tree), and a row that sees nothing (zeros after the
    merge); four rows per warp, two row tiles."""
    q, k, v, cl, mask = inputs(4, 10, 2, 3, 64, 1024, 2, torch.float32, seed=5, cache_len=[40, 0, -5, 5000])
    mask[1, 1] = 0
    out, plan = check_emulated(q, k, v, cl, mask, 0.25, what="odd cache_len")
    assert plan["num_splits"] == 2 and plan["rows_per_warp"] == 4 and plan["row_tiles"] == 1
    assert torch.isfinite(out).all() and (out[1, :, 1] == 0).all()


def test_merge_splits_kernel_all_32_splits():
    """The most splits (32: one per lane of the merge) over a 16400-slot prefix, one block per split."""
    q, k, v, cl, mask = inputs(1, 1, 1, 1, 64, 16400, 1, torch.float16, seed=6, cache_len=[16390])
    _, plan = check_emulated(q, k, v, cl, mask, 0.125, what="32 splits")
    assert plan["num_splits"] == 32


@pytest.mark.parametrize("N", [1, 100], ids=lambda n: f"N{n}")
def test_tree_attention_kernel_trees(N):
    """Masks of real trees (build_tree over random parents): one node, and 100 nodes (4 mask words, the rows
    of both heads of the GQA group over 13 row tiles), bf16, with and without a split prefix."""
    gen = torch.Generator().manual_seed(N)
    B, H, H_kv, D = 1, 2, 1, 64
    for S, cl in ((N + 70, [70]), (1100, [100])):  # 1100 slots: two splits (of the 100-slot prefix)
        tree = sk.build_tree(random_parents(gen, B, N), backend="torch")
        q = torch.randn(B, H, N, D, generator=gen).bfloat16()
        k, v = (torch.randn(B, H_kv, S, D, generator=gen).bfloat16() for _ in range(2))
        _, plan = check_emulated(q, k, v, torch.tensor(cl, dtype=torch.int32), tree.mask, 0.125, what=f"N={N} S={S}")
        assert plan["num_splits"] == (2 if S > 1024 else 1)


def test_tree_attention_kernel_strided_and_unaligned_caches():
    """K rows 2 bytes off a 16-byte boundary (fp16: the scalar staging path) and V in a slot-major [B, S, H_kv,
    D] storage viewed as [B, H_kv, S, D]; then both slot-major and aligned (the vector path)."""
    B, H, H_kv, Nq, D, S = 2, 4, 2, 5, 64, 300
    q, _, _, cl, mask = inputs(B, H, H_kv, Nq, D, S, 1, torch.float16, seed=7, cache_len=[250, 17])
    gen = torch.Generator().manual_seed(8)
    big = torch.randn(B, H_kv, S, D + 3, generator=gen).half()
    k = big[..., 1 : D + 1]
    v = torch.randn(B, S, H_kv, D, generator=gen).half().transpose(1, 2)
    check_emulated(q, k, v, cl, mask, 0.125, what="unaligned k, slot-major v")
    k2 = torch.randn(B, S, H_kv, D, generator=gen).half().transpose(1, 2)
    check_emulated(q, k2, v, cl, mask, 0.125, what="slot-major k and v")


def test_tree_attention_kernel_garbage_in_invisible_slots():
    """NaN past the prefix and in tree slots no query sees never reaches the output (no 0 * NaN), split or not."""
    B, H, H_kv, Nq, D, S = 2, 4, 2, 3, 64, 1100
    q, k, v, cl, mask = inputs(B, H, H_kv, Nq, D, S, 2, torch.float32, seed=11, cache_len=[20, 1000])
    mask &= 0x0000FFFF  # rows see tree bits 0..15 of word 0 at most
    mask[:, :, 1] = 0
    clean_k, clean_v = k.clone(), v.clone()
    for b, c in enumerate((20, 1000)):
        k[b, :, c + 16 :] = float("nan")
        v[b, :, c + 16 :] = float("nan")
    out, plan = emulated_tree_attention(q, k, v, cl, mask, 0.25)
    assert plan["num_splits"] == 2
    assert torch.isfinite(out).all(), "NaN leaked from invisible slots"
    check(out, q, clean_k, clean_v, cl, mask, 0.25, what="garbage")


@pytest.mark.parametrize("variant", ["tsan", "asan"])
def test_tree_attention_kernels_sanitized(variant):
    """Small cases under the sanitizers: split-K with its merge (2 splits, GQA, four rows per warp, a two-word
    mask), and the scalar staging path of unaligned fp16 rows."""
    q, k, v, cl, mask = inputs(1, 4, 2, 3, 40, 1030, 2, torch.float32, seed=12, cache_len=[1000])
    _, plan = check_emulated(q, k, v, cl, mask, 0.2, what=variant, variant=variant)
    assert plan["num_splits"] == 2
    q, _, v, cl, mask = inputs(1, 2, 1, 2, 64, 40, 1, torch.float16, seed=13, cache_len=[30])
    k = torch.randn(1, 1, 40, 67).half()[..., 1:65]
    check_emulated(q, k, v, cl, mask, 0.2, what=f"{variant} unaligned", variant=variant)
