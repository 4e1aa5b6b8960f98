"""The public op tree_attention on every backend: a dense SDPA oracle (fp64), GQA, ragged caches, frontier
queries, cache_len as an int, strided caches and out=, argument errors, opcheck of each registered kernel.

Kernel-internal code paths (Triton launcher options, the C++ threads, the raw ops' own checks, the CUDA
template instantiations) are in test_tree_attention_kernel_paths.py.

Tolerances follow flash-attention's rule (helpers.assert_close_as_torch): against the fp64 oracle, a result
of dtype dt may err at most ~2x what PyTorch's own attention computed in dt (`torch_attention`) errs.
"""

import math

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import BackendError

from helpers import assert_close_as_torch, backend_params, tolerance, torch_attention_in_dtype

BACKENDS = backend_params("tree_attention")


def call(backend, *args, **kw):
    """tree_attention with `backend`, skipping (with the reason) when that backend has no kernel here."""
    try:
        return sk.tree_attention(*args, backend=backend, **kw)
    except BackendError as exc:
        if "no Triton kernel is registered" in str(exc):
            pytest.skip(str(exc))
        raise


def random_parents(gen, B, N):
    p = torch.full((B, N), -1, dtype=torch.int32)
    for i in range(1, N):
        p[:, i] = torch.randint(0, i, (B,), generator=gen, dtype=torch.int32)
    return p


def visibility_loop(cache_len, tree_mask, S):
    """bool [B, Nq, S] from the definition, one slot at a time (independent of the reference code)."""
    B, Nq, W = tree_mask.shape
    vis = torch.zeros(B, Nq, S, dtype=torch.bool)
    for b in range(B):
        c = int(cache_len[b])
        for i in range(Nq):
            for s in range(S):
                if s < c:
                    vis[b, i, s] = True
                elif s - c < 32 * W:
                    j = s - c
                    vis[b, i, s] = bool((int(tree_mask[b, i, j // 32]) >> (j % 32)) & 1)
    return vis


def oracle(q, k, v, cache_len, tree_mask, scale=None):
    """Dense SDPA in fp64 with an additive bias; rows with no visible key are 0."""
    B, H, Nq, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    vis = visibility_loop(cache_len.cpu(), tree_mask.cpu(), S)[:, None]  # [B, 1, Nq, S]
    bias = torch.zeros(vis.shape, dtype=torch.float64).masked_fill(~vis, float("-inf"))
    rows = vis.any(-1, keepdim=True)
    bias = torch.where(rows, bias, torch.zeros_like(bias))  # avoid NaN, zeroed below
    kk = k.cpu().double().repeat_interleave(H // H_kv, dim=1)
    vv = v.cpu().double().repeat_interleave(H // H_kv, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(q.cpu().double(), kk, vv, attn_mask=bias, scale=scale)
    return torch.where(rows, out, torch.zeros_like(out))


def torch_attention(q, k, v, cache_len, tree_mask, scale=None, dtype=None):
    """helpers.torch_attention_in_dtype over this file's host-loop visibility (default dtype: q's)."""
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
    visible = visibility_loop(cache_len.cpu(), tree_mask.cpu(), k.shape[2])
    return torch_attention_in_dtype(q, k, v, visible, scale, dtype or q.dtype)


def check(out, q, k, v, cache_len, tree_mask, scale=None, what=""):
    """flash-attention's rule: out's error against the fp64 oracle <= ~2x that of torch_attention in out's dtype,
    plus a floor for what any kernel may add: rounding to the dtype and fp32 sums over max(S, D) terms (in fp32
    the twin is nearly exact, and a kernel's exp or summation order is not the twin's)."""
    truth = oracle(q, k, v, cache_len, tree_mask, scale)
    floor = tolerance(out.dtype, max(k.shape[2], k.shape[3]), scale=max(float(truth.abs().max()), 1.0))[0]
    assert_close_as_torch(
        out, truth, torch_attention(q, k, v, cache_len, tree_mask, scale, out.dtype), what, floor=floor
    )


def close(actual, expected, dtype, reduction, what=""):
    """Two results of `dtype` that each come out of a `reduction`-term sum (helpers.tolerance)."""
    atol, rtol = tolerance(dtype, reduction, scale=max(float(expected.abs().max()), 1.0))
    torch.testing.assert_close(
        actual.cpu().float(), expected.cpu().float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def make_inputs(B, H, H_kv, N, D, S, dtype, device, seed=0, cache_len=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=gen).to(dtype)
    k = torch.randn(B, H_kv, S, D, generator=gen).to(dtype)
    v = torch.randn(B, H_kv, S, D, generator=gen).to(dtype)
    if cache_len is None:
        cache_len = torch.randint(0, S - N + 1, (B,), generator=gen, dtype=torch.int32)
    else:
        cache_len = torch.tensor(cache_len, dtype=torch.int32)
    tree = sk.build_tree(random_parents(gen, B, N), backend="torch")
    return [t.to(device) for t in (q, k, v, cache_len, tree.mask)]


def fp_dtypes(device):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "B,H,H_kv,N,D,S", [(2, 4, 2, 7, 16, 24), (3, 2, 2, 5, 32, 16), (1, 8, 1, 13, 24, 40), (2, 4, 4, 33, 16, 48)]
)
def test_matches_dense_sdpa(backend, device, B, H, H_kv, N, D, S):
    for dtype in fp_dtypes(device):
        q, k, v, cl, mask = make_inputs(B, H, H_kv, N, D, S, dtype, device, seed=N)
        out = call(backend, q, k, v, cl, mask)
        assert out.dtype == dtype and out.shape == q.shape
        check(out, q, k, v, cl, mask, what=f"{backend} {dtype}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("scale", [0.05, 3.0, 30.0])
def test_wide_score_ranges(backend, device, scale):
    """Softmax arguments from ~0 down past -87 (where the CPU kernel's vector exp flushes to 0) in one row,
    over several key tiles (prefix 150 > 64) and a two-word tree: fp32 against the fp64 oracle."""
    q, k, v, cl, mask = make_inputs(2, 4, 2, 40, 32, 230, torch.float32, device, seed=7, cache_len=[150, 3])
    out = call(backend, q, k, v, cl, mask, scale=scale)
    check(out, q, k, v, cl, mask, scale=scale, what=f"{backend} scale {scale}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tree_shapes_chain_star_and_cache_len_zero(backend, device):
    N, D, S = 6, 8, 16
    chain = torch.arange(-1, N - 1, dtype=torch.int32)[None]
    star = torch.tensor([[-1] + [0] * (N - 1)], dtype=torch.int32)
    tree = sk.build_tree(torch.cat([chain, star]), backend="torch")
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, N, D, generator=gen)
    k, v = torch.randn(2, 2, S, D, generator=gen), torch.randn(2, 2, S, D, generator=gen)
    cl = torch.tensor([0, 3], dtype=torch.int32)
    args = [t.to(device) for t in (q, k, v, cl, tree.mask)]
    out = call(backend, *args)
    check(out, *args)
    # The chain's root with an empty prefix sees only itself: the output is its own value row.
    close(out[0, :, 0], v[0, :, 0], torch.float32, 1, "a single visible key")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_frontier_queries_nq_differs_from_tree_keys(backend, device):
    """The draft's expansion: 3 frontier queries whose bits point at 9 already-written tree keys."""
    B, H, H_kv, D, S = 2, 4, 2, 16, 32
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(B, H, 3, D, generator=gen)
    k, v = torch.randn(B, H_kv, S, D, generator=gen), torch.randn(B, H_kv, S, D, generator=gen)
    cl = torch.tensor([5, 11], dtype=torch.int32)
    rows = [[0b000000111, 0b000011001, 0b100100001], [0b1, 0b110000001, 0b000001011]]
    mask = torch.tensor(rows, dtype=torch.int32)[:, :, None]
    args = [t.to(device) for t in (q, k, v, cl, mask)]
    check(call(backend, *args), *args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_multiword_mask_and_bit_31(backend, device):
    """Node 31 (bit 31: a negative int32 word) and nodes past 32 (second word) must be visible."""
    B, H, D, N, S = 1, 2, 8, 40, 48
    parents = torch.arange(-1, N - 1, dtype=torch.int32)[None]  # a chain: all bits set below
    tree = sk.build_tree(parents, backend="torch")
    assert int(tree.mask[0, 35, 0]) == -1  # all 32 bits of word 0
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(B, H, N, D, generator=gen)
    k, v = torch.randn(B, H, S, D, generator=gen), torch.randn(B, H, S, D, generator=gen)
    cl = torch.tensor([4], dtype=torch.int32)
    args = [t.to(device) for t in (q, k, v, cl, tree.mask)]
    check(call(backend, *args), *args)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nothing_visible_gives_zeros(backend, device):
    B, H, D, S = 2, 2, 8, 8
    q = torch.randn(B, H, 2, D)
    k, v = torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    cl = torch.tensor([0, 2], dtype=torch.int32)
    mask = torch.tensor([[[0], [1]], [[0], [0]]], dtype=torch.int32)  # row (0, 0) sees nothing
    out = call(backend, *(t.to(device) for t in (q, k, v, cl, mask)))
    assert torch.isfinite(out).all()
    assert (out[0, :, 0] == 0).all()
    close(out[0, :, 1], v[0, :, 0], torch.float32, 1, "sees only slot 0")
    check(out.cpu(), q, k, v, cl, mask)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bits_past_s_max_are_ignored(backend, device):
    B, H, D, S = 1, 2, 8, 10
    q = torch.randn(B, H, 2, D)
    k, v = torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    cl = torch.tensor([8], dtype=torch.int32)
    mask = torch.tensor([[[0b1111], [0b0100]]], dtype=torch.int32)  # bits 2, 3 -> slots 10, 11 >= S
    out = call(backend, *(t.to(device) for t in (q, k, v, cl, mask)))
    assert torch.isfinite(out).all()
    check(out.cpu(), q, k, v, cl, mask)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_golden_hand_computed(backend, device):
    """D = 1, scale 1: keys 0 and ln 3 -> weights 1/4, 3/4 of values 4 and 8 -> 7."""
    q = torch.ones(1, 1, 1, 1)
    k = torch.tensor([0.0, math.log(3.0), 100.0]).view(1, 1, 3, 1)
    v = torch.tensor([4.0, 8.0, 1000.0]).view(1, 1, 3, 1)
    cl = torch.tensor([1], dtype=torch.int32)
    mask = torch.tensor([[[0b1]]], dtype=torch.int32)  # slot 1; slot 2 hidden
    out = call(backend, *(t.to(device) for t in (q, k, v, cl, mask)), scale=1.0)
    close(out, torch.full((1, 1, 1, 1), 7.0), torch.float32, 2, "hand computed")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_caches_and_out_buffer(backend, device):
    """Caches that are one layer of a bigger buffer, heads sliced (non-contiguous along B and H_kv)."""
    B, H, H_kv, N, D, S = 2, 4, 2, 5, 16, 20
    gen = torch.Generator().manual_seed(4)
    big_k = torch.randn(3, B, 2 * H_kv, S, D, generator=gen).to(device)
    big_v = torch.randn(3, B, 2 * H_kv, S, D, generator=gen).to(device)
    k, v = big_k[1, :, 1::2], big_v[1, :, 1::2]
    assert not k.is_contiguous()
    q = torch.randn(B, N, H, D, generator=gen).to(device).transpose(1, 2)  # a transposed projection
    cl = torch.tensor([3, 0], dtype=torch.int32, device=device)
    mask = sk.build_tree(random_parents(gen, B, N), backend="torch").mask.to(device)
    out = torch.empty(B, H, N, D, device=device)
    res = call(backend, q, k, v, cl, mask, out=out)
    assert res.data_ptr() == out.data_ptr()
    check(out, q, k.contiguous(), v.contiguous(), cl, mask)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_matches_reference_backend(backend, device):
    """Each backend against the torch backend on the same inputs (fp32 and fp16)."""
    for dtype in fp_dtypes(device):
        q, k, v, cl, mask = make_inputs(3, 6, 3, 10, 32, 30, dtype, device, seed=7)
        got = call(backend, q, k, v, cl, mask, scale=0.3)
        want = sk.tree_attention(q, k, v, cl, mask, scale=0.3, backend="torch")
        # Both compute in fp32 and round to dtype: they differ by the fp32 sums over S = 30 keys and D = 32.
        close(got, want, dtype, 32, what=f"{backend} {dtype}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_cache_len_int_is_the_same_for_every_request(backend, device):
    """cache_len as a Python int = an int32 tensor of that value for every request (bit-identical outputs)."""
    q, k, v, _, mask = make_inputs(3, 4, 2, 6, 16, 20, torch.float32, device, seed=12)
    from_int = call(backend, q, k, v, 9, mask)
    from_tensor = call(backend, q, k, v, torch.full((3,), 9, dtype=torch.int32, device=device), mask)
    torch.testing.assert_close(from_int, from_tensor, atol=0, rtol=0)
    check(from_int, q, k, v, torch.full((3,), 9, dtype=torch.int32), mask, what=f"{backend} int cache_len")


def test_reference_memory_sane_at_decode_size():
    """S_max 4096, Nq 64, D 128: the reference runs (no [S, S] or [B, H, Nq, S, D] intermediate)."""
    q, k, v, cl, mask = make_inputs(1, 4, 2, 64, 128, 4096, torch.float32, "cpu", seed=9, cache_len=[3000])
    out = sk.tree_attention(q, k, v, cl, mask, backend="torch")
    assert torch.isfinite(out).all()


def test_errors():
    q, k, v, cl, mask = make_inputs(2, 4, 2, 5, 16, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="multiple"):
        sk.tree_attention(q[:, :3], k, v, cl, mask)
    with pytest.raises(TypeError, match="k_cache.*dtype"):
        sk.tree_attention(q, k.half(), v, cl, mask)
    with pytest.raises(TypeError, match="q.*dtype"):
        sk.tree_attention(q.double(), k.double(), v.double(), cl, mask)
    with pytest.raises(ValueError, match="k_cache"):
        sk.tree_attention(q, k[:1], v[:1], cl, mask)
    with pytest.raises(ValueError, match="v_cache"):
        sk.tree_attention(q, k, v[:, :, :8], cl, mask)
    with pytest.raises(TypeError, match="cache_len"):
        sk.tree_attention(q, k, v, cl.long(), mask)
    with pytest.raises(TypeError, match=r"cache_len: expected an int or an int32 tensor \[B\], got bool"):
        sk.tree_attention(q, k, v, True, mask)
    with pytest.raises(TypeError, match=r"cache_len: expected an int or an int32 tensor \[B\], got float"):
        sk.tree_attention(q, k, v, 3.0, mask)
    with pytest.raises(ValueError, match=r"cache_len: expected an int32 value"):
        sk.tree_attention(q, k, v, 2**31, mask)
    with pytest.raises(TypeError, match=r"scale: expected a float or None, got bool"):
        sk.tree_attention(q, k, v, cl, mask, scale=True)
    with pytest.raises(ValueError, match="tree_mask"):
        sk.tree_attention(q, k, v, cl, mask[:, :3])
    with pytest.raises(ValueError, match="tree_mask"):
        sk.tree_attention(q, k, v, cl, mask[:, :, :0])
    with pytest.raises(ValueError, match="unit stride"):
        sk.tree_attention(q[..., :8].contiguous(), k[..., ::2], v[..., ::2], cl, mask)
    with pytest.raises(ValueError, match="out"):
        sk.tree_attention(q, k, v, cl, mask, out=torch.empty(2, 4, 5, 8))
    with pytest.raises(BackendError, match="unknown backend"):
        sk.tree_attention(q, k, v, cl, mask, backend="nope")


KERNEL_BACKENDS = [p for p in BACKENDS if p.values[0] != "torch"]


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_opcheck(backend, device):
    """The registered kernel honours its schema (mutates only `out`), fake tensors and dispatch."""
    q, k, v, cl, mask = make_inputs(2, 4, 2, 5, 16, 16, torch.float32, device)
    reason = sk.get_op("tree_attention").reason(backend, q, k, v, cl, mask, 0.25, torch.empty_like(q))
    if reason:
        pytest.skip(reason)
    op = getattr(torch.ops.specdec, "tree_attention" + ("_triton" if backend == "triton" else ""))
    torch.library.opcheck(op, (q, k, v, cl, mask, 0.25, torch.empty_like(q)))
