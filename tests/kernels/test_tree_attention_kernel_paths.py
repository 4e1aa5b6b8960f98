"""tree_attention's kernels (C++ CPU, Triton, CUDA) down their internal code paths, which the public-op tests
(test_tree_attention.py) do not reach.

Split-K and several row blocks of the Triton kernel (forced through its launcher with small shapes), long
prefixes with full tiles plus a tail, head dims that are not powers of two, garbage (NaN) in cache slots no
query may see, negative and over-long cache_len, thread-count invariance of the CPU kernel, the raw ops'
own argument checks, and on a GPU the CUDA kernel's template paths (padded head dims, one or four rows per
warp, split-K, unaligned rows) and CUDA-graph capture.

The truth is the PyTorch reference run in fp64; a result of dtype dt passes when its error is at most ~2x
that of PyTorch's own attention computed in dt (flash-attention's rule, helpers.assert_close_as_torch).
"""

import math

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels.reference import attention as ref

from helpers import assert_close_as_torch, assert_equal, tolerance, torch_attention_in_dtype

TREE_ATTENTION = sk.get_op("tree_attention")
HAS_CPU_KERNEL = TREE_ATTENTION.static_reason("cpu", "cpu") is None
needs_cpu_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="the C++ CPU kernel of tree_attention is not built")
needs_triton = pytest.mark.skipif(
    TREE_ATTENTION.static_reason("triton", "cpu") is not None,
    reason="no Triton kernel for tree_attention usable on CPU tensors here",
)


def inputs(B, H, H_kv, Nq, D, S, W, dtype=torch.float32, device="cpu", seed=0, cache_len=None):
    """Random q/k/v, random cache lengths (or the given ones) and random mask words (all 32 bits used)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=gen).to(dtype)
    k = torch.randn(B, H_kv, S, D, generator=gen).to(dtype)
    v = torch.randn(B, H_kv, S, D, generator=gen).to(dtype)
    if cache_len is None:
        cl = torch.randint(0, S + 1, (B,), generator=gen, dtype=torch.int32)
    else:
        cl = torch.tensor(cache_len, dtype=torch.int32)
    mask = torch.randint(-(2**31), 2**31, (B, Nq, W), generator=gen, dtype=torch.int64).to(torch.int32)
    return [t.to(device) for t in (q, k, v, cl, mask)]


def truth(q, k, v, cl, mask, scale):
    """The reference in fp64 (on q's device)."""
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    ref.tree_attention(q.double(), k.double(), v.double(), cl, mask, scale, out)
    return out


def torch_attention(q, k, v, cl, mask, scale, dtype):
    """helpers.torch_attention_in_dtype over the library's visibility decode."""
    return torch_attention_in_dtype(q, k, v, sk.tree_visibility(mask, cl, k.shape[2]), scale, dtype)


def check(got, q, k, v, cl, mask, scale, what=""):
    """flash-attention's rule against the fp64 truth, with a floor for rounding to got's dtype plus fp32 sums over
    max(S, D) terms (in fp32 the twin is nearly exact, and a kernel's exp or summation order is not the twin's)."""
    want = truth(q, k, v, cl, mask, scale)
    floor = tolerance(got.dtype, max(k.shape[2], k.shape[3]), scale=max(float(want.abs().max()), 1.0))[0]
    assert_close_as_torch(got, want, torch_attention(q, k, v, cl, mask, scale, got.dtype), what, floor=floor)


def triton_launch(q, k, v, cl, mask, scale, **kw):
    from specdec_kernels.triton_kernels.attention import tree_attention_triton

    out = torch.empty_like(q)
    tree_attention_triton(q, k, v, cl, mask, scale, out, **kw)
    return out


# ---------------------------------------------------------------------------------------------------
# Triton: split-K, row blocks, tails (interpreted on CPU; the same code compiles for CUDA)


@needs_triton
@pytest.mark.parametrize("num_splits,block_m", [(1, 16), (2, 16), (3, 32), (5, None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_split_k_and_row_blocks(num_splits, block_m, dtype):
    # R = G * Nq = 4 * 9 = 36 rows: 3 blocks of 16, 2 of 32; S = 150 with cache_len up to 150: full tiles
    # of 64 plus tails, splits that get no slots at all, and tree slots cut off by S_max.
    q, k, v, cl, mask = inputs(3, 8, 2, 9, 40, 150, 2, dtype, seed=num_splits, cache_len=[150, 97, 3])
    got = triton_launch(q, k, v, cl, mask, 0.2, num_splits=num_splits, block_m=block_m)
    check(got, q, k, v, cl, mask, 0.2, what=f"splits={num_splits} block_m={block_m}")


@needs_triton
def test_triton_split_k_rows_without_keys_and_odd_cache_len():
    # cache_len negative (no prefix; tree bits j >= -cache_len land on slots 0, 1, ...), beyond S_max (all
    # prefix, no tree), and a row with an empty mask and cache_len 0: zeros, also after the split merge.
    q, k, v, cl, mask = inputs(3, 2, 1, 3, 16, 70, 2, seed=5, cache_len=[-5, 1000, 0])
    mask[2, 1] = 0
    for splits in (1, 4):
        got = triton_launch(q, k, v, cl, mask, 0.25, num_splits=splits)
        assert torch.isfinite(got).all()
        assert (got[2, :, 1] == 0).all()
        check(got, q, k, v, cl, mask, 0.25, what=f"splits={splits}")


@needs_triton
def test_triton_argument_errors():
    q, k, v, cl, mask = inputs(1, 2, 1, 2, 8, 16, 1)
    with pytest.raises(ValueError, match="block_m"):
        triton_launch(q, k, v, cl, mask, 1.0, block_m=24)
    with pytest.raises(ValueError, match="num_splits"):
        triton_launch(q, k, v, cl, mask, 1.0, num_splits=0)
    with pytest.raises(ValueError, match="tree_mask"):
        torch.ops.specdec.tree_attention_triton(q, k, v, cl, mask.long(), 1.0, torch.empty_like(q))
    with pytest.raises(ValueError, match="out"):
        torch.ops.specdec.tree_attention_triton(q, k, v, cl, mask, 1.0, torch.empty(1, 2, 2, 4))


# ---------------------------------------------------------------------------------------------------
# Every backend that runs here


def _backends():
    out = []
    if HAS_CPU_KERNEL:
        out.append(pytest.param("cpu", "cpu", id="cpu"))
    out.append(pytest.param("triton", "cpu", id="triton-interp", marks=needs_triton))
    if torch.cuda.is_available():
        out += [
            pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.cuda),
            pytest.param("triton", "cuda", id="triton-cuda", marks=pytest.mark.cuda),
        ]
    return out


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("D", [1, 40, 72])
def test_long_prefix_many_rows_odd_head_dim(backend, device, D):
    # G * Nq = 4 * 20 = 80 rows (more than one row block everywhere), prefix 200 = 3 full tiles of 64 + tail.
    q, k, v, cl, mask = inputs(2, 8, 2, 20, D, 240, 2, device=device, seed=D, cache_len=[200, 131])
    got = sk.tree_attention(q, k, v, cl, mask, scale=0.3, backend=backend)
    check(got, q, k, v, cl, mask, 0.3, what=f"{backend} D={D}")


@pytest.mark.parametrize("backend,device", _backends())
def test_garbage_in_invisible_slots_does_not_leak(backend, device):
    """NaN past the prefix and in tree slots no query sees must not reach any output (no 0 * NaN)."""
    B, H, H_kv, Nq, D, S = 2, 4, 2, 3, 16, 90
    q, k, v, cl, mask = inputs(B, H, H_kv, Nq, D, S, 2, device=device, seed=11, cache_len=[20, 70])
    mask &= 0x0000FFFF  # rows see tree bits 0..15 of word 0 at most
    mask[:, :, 1] = 0
    clean_k, clean_v = k.clone(), v.clone()
    for b, c in enumerate((20, 70)):
        k[b, :, c + 16 :] = float("nan")  # beyond every visible tree slot
        v[b, :, c + 16 :] = float("nan")
    got = sk.tree_attention(q, k, v, cl, mask, scale=0.25, backend=backend)
    assert torch.isfinite(got).all(), f"{backend}: NaN leaked from invisible slots"
    check(got, q, clean_k, clean_v, cl, mask, 0.25, what=backend)


# ---------------------------------------------------------------------------------------------------
# C++ CPU kernel


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_low_precision_against_fp32_reference(dtype):
    q, k, v, cl, mask = inputs(2, 6, 3, 7, 24, 80, 1, dtype, seed=3)
    got = sk.tree_attention(q, k, v, cl, mask, backend="cpu")
    assert got.dtype == dtype
    check(got, q, k, v, cl, mask, 1 / math.sqrt(24), what=str(dtype))


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("H,H_kv,Nq", [(1, 1, 1), (3, 1, 1), (9, 3, 1), (8, 2, 1), (4, 2, 2)])
@pytest.mark.parametrize("D", [1, 40, 64, 72])
def test_cpu_few_rows_take_the_row_path(dtype, H, H_kv, Nq, D):
    """At most 4 query rows per (request, KV head) (plain decoding: G = H / H_kv rows) the CPU kernel reads
    K as rows (dot products) instead of a transposed tile; prefixes with full tiles plus a tail, tree bits,
    and NaN in slots no row may see (which must not leak)."""
    S = 200
    q, k, v, cl, mask = inputs(3, H, H_kv, Nq, D, S, 1, dtype, seed=D + H, cache_len=[0, 67, 150])
    mask &= 0x00FF00FF  # tree slots cl + 0..7 and cl + 16..23 at most
    clean_k, clean_v = k.clone(), v.clone()
    for b, c in enumerate((0, 67, 150)):
        k[b, :, c + 24 :] = float("nan")
        v[b, :, c + 24 :] = float("nan")
    got = sk.tree_attention(q, k, v, cl, mask, scale=1 / math.sqrt(D), backend="cpu")
    assert torch.isfinite(got).all(), "NaN leaked from invisible slots"
    check(got, q, clean_k, clean_v, cl, mask, 1 / math.sqrt(D), what=f"{dtype} G={H // H_kv} Nq={Nq} D={D}")


@needs_cpu_kernel
def test_cpu_result_does_not_depend_on_thread_count():
    # One (request, KV head) and R = 3 * 17 = 51 rows: with several threads the rows are split into blocks
    # whose sizes are not multiples of the kernel's 4-row groups.
    # And R = 4 rows of one request (the row path), split into blocks of 2 with two threads.
    for shape in ((1, 3, 1, 17, 32, 130, 1), (1, 4, 1, 1, 32, 130, 1)):
        q, k, v, cl, mask = inputs(*shape, seed=4, cache_len=[100])
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = sk.tree_attention(q, k, v, cl, mask, backend="cpu")
            torch.set_num_threads(max(2, before))
            many = sk.tree_attention(q, k, v, cl, mask, backend="cpu")
        finally:
            torch.set_num_threads(before)
        assert_equal(one, many, f"1 thread vs several, q {tuple(q.shape)}")
        check(one, q, k, v, cl, mask, 1 / math.sqrt(32))


@needs_cpu_kernel
def test_cpu_raw_op_checks_its_arguments():
    q, k, v, cl, mask = inputs(1, 2, 1, 2, 8, 16, 1)
    out = torch.empty_like(q)
    op = torch.ops.specdec.tree_attention
    with pytest.raises(RuntimeError, match="q must be contiguous"):
        op(q.transpose(1, 2), k, v, cl, mask, 1.0, out)
    with pytest.raises(RuntimeError, match="k_cache must have q's dtype"):
        op(q, k.half(), v, cl, mask, 1.0, out)
    with pytest.raises(RuntimeError, match="cache_len must be a contiguous int32"):
        op(q, k, v, cl.long(), mask, 1.0, out)
    with pytest.raises(RuntimeError, match="tree_mask must be a contiguous int32"):
        op(q, k, v, cl, mask[:, :1], 1.0, out)
    with pytest.raises(RuntimeError, match="unit stride along D"):
        op(q[..., :4].contiguous(), k[..., ::2], v[..., ::2], cl, mask, 1.0, out[..., :4].contiguous())
    with pytest.raises(RuntimeError, match="out must be"):
        op(q, k, v, cl, mask, 1.0, out.half())


@needs_cpu_kernel
def test_cpu_opcheck():
    q, k, v, cl, mask = inputs(2, 4, 2, 3, 8, 12, 1, seed=6)
    torch.library.opcheck(torch.ops.specdec.tree_attention.default, (q, k, v, cl, mask, 0.5, torch.empty_like(q)))


# ---------------------------------------------------------------------------------------------------
# CUDA kernel (GPU only)


def _cuda_kernel_reason():
    return TREE_ATTENTION.static_reason("cuda", "cuda") if torch.cuda.is_available() else "needs a CUDA device"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [40, 64, 80, 128, 256])
@pytest.mark.parametrize(
    "B,H,H_kv,Nq,S",
    [
        (1, 8, 2, 1, 2048),  # decode: 1 row per warp, split-K
        (2, 32, 8, 60, 700),  # verification: 4 rows per warp, row tiles
        (3, 4, 4, 33, 100),
    ],
)  # MHA, two mask words
def test_cuda_kernel_paths(dtype, D, B, H, H_kv, Nq, S):
    reason = _cuda_kernel_reason()
    if reason:
        pytest.skip(reason)
    W = (Nq + 31) // 32
    q, k, v, cl, mask = inputs(
        B, H, H_kv, Nq, D, S, W, dtype, device="cuda", seed=D + Nq, cache_len=[S - Nq - 7 * b for b in range(B)]
    )
    for backend in ("cuda", "triton"):
        got = sk.tree_attention(q, k, v, cl, mask, scale=0.1, backend=backend)
        check(got, q, k, v, cl, mask, 0.1, what=f"{backend} D={D} {dtype}")


@pytest.mark.cuda
def test_cuda_unaligned_rows_take_the_scalar_path():
    reason = _cuda_kernel_reason()
    if reason:
        pytest.skip(reason)
    B, H, H_kv, Nq, D, S = 2, 4, 2, 5, 64, 300
    big = torch.randn(B, H_kv, S, D + 3, device="cuda", dtype=torch.float16)
    k = big[..., 1 : D + 1]  # rows start 2 bytes off a 16-byte boundary
    v = torch.randn(B, H_kv, S, D, device="cuda", dtype=torch.float16)
    q = torch.randn(B, H, Nq, D, device="cuda", dtype=torch.float16)
    cl = torch.tensor([250, 17], dtype=torch.int32, device="cuda")
    mask = torch.randint(0, 2**31, (B, Nq, 1), dtype=torch.int32, device="cuda")
    got = sk.tree_attention(q, k, v, cl, mask, backend="cuda")
    check(got, q, k, v, cl, mask, 1 / math.sqrt(D), what="unaligned rows")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture(backend):
    reason = _cuda_kernel_reason() if backend == "cuda" else None
    if reason:
        pytest.skip(reason)
    q, k, v, cl, mask = inputs(1, 8, 2, 1, 128, 4096, 1, torch.bfloat16, device="cuda", seed=8, cache_len=[3000])
    out = torch.empty_like(q)
    sk.tree_attention(q, k, v, cl, mask, backend=backend, out=out)  # warm-up (compiles Triton)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sk.tree_attention(q, k, v, cl, mask, backend=backend, out=out)
    cl.fill_(1234)  # the replay reads the new length
    graph.replay()
    torch.cuda.synchronize()
    check(out, q, k, v, cl, mask, 1 / math.sqrt(128), what=f"{backend} graph replay")
