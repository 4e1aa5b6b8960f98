"""compact_kv: in-place move of accepted tree slots, overlap safety, mixed dtypes, per-token views, cache_len
as an int, errors, opcheck. Moves copy bytes: every comparison is exact."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import BackendError

from helpers import assert_equal, backend_params

BACKENDS = backend_params("compact_kv")


def call(backend, *args, **kw):
    """compact_kv with `backend`, skipping (with the reason) when that backend has no kernel here."""
    try:
        return sk.compact_kv(*args, backend=backend, **kw)
    except BackendError as exc:
        if "no Triton kernel is registered" in str(exc):
            pytest.skip(str(exc))
        raise


def i32(x, device):
    return torch.tensor(x, dtype=torch.int32, device=device)


def expected_after(t, cache_len, accept_nodes, accept_len, slot_dim):
    """The definition, one slot at a time on a copy (t viewed with slots along `slot_dim`)."""
    out = t.clone()
    for b in range(t.shape[0]):
        c, n = int(cache_len[b]), int(accept_len[b])
        for j in range(min(n, accept_nodes.shape[1])):
            a = int(accept_nodes[b, j])
            if a < 0:
                continue
            out[b].select(slot_dim - 1, c + j).copy_(out[b].select(slot_dim - 1, c + a))
    return out


def slot_ids(B, X, S, Y, dtype, device):
    """A tensor whose entries name their (b, x, s, y) so any misplaced copy is visible."""
    b = torch.arange(B).view(B, 1, 1, 1) * 1000000
    x = torch.arange(X).view(1, X, 1, 1) * 10000
    s = torch.arange(S).view(1, 1, S, 1) * 10
    y = torch.arange(Y).view(1, 1, 1, Y)
    return (b + x + s + y).expand(B, X, S, Y).to(dtype).to(device).contiguous()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "nodes,n_acc",
    [([0, 1, 2], 3), ([0, 2, 5], 3), ([0, 3, 4, 9], 4), ([0, -1, -1], 1), ([0, 1, 7, -1], 3), ([0, 4, 6, 7], 2)],
)
def test_single_request_paths(backend, device, nodes, n_acc):
    B, X, S, Y = 1, 2, 16, 3
    k = slot_ids(B, X, S, Y, torch.float32, device)
    cl, an, al = i32([4], device), i32([nodes], device), i32([n_acc], device)
    want = expected_after(k.cpu(), cl, an, al, slot_dim=2)
    call(backend, [k], cl, an, al)
    assert_equal(k.cpu(), want, f"{nodes}, accept_len {n_acc}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_batch_many_layers_mixed_dtypes_and_per_token(backend, device):
    """Ragged requests, 4 layers of K and V in different dtypes, strided heads, per-token features."""
    B, H_kv, S, D = 3, 2, 24, 8
    cl = i32([0, 7, 13], device)
    an = i32([[0, 1, 3, 6, -1], [0, 2, 3, 4, 8], [0, -1, -1, -1, -1]], device)
    al = i32([4, 5, 1], device)
    caches = []
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8):
        for _ in range(2):  # K and V; random values, distinct per slot with high probability
            caches.append((torch.randn(B, H_kv, S, D, generator=gen) * 50).to(dtype).to(device))
    big = slot_ids(B, 2 * H_kv, S, D, torch.float32, device)
    strided = big[:, ::2]  # non-contiguous along H_kv
    caches.append(strided)
    feats = slot_ids(B, 1, S, 6, torch.float32, device)[:, 0].reshape(B, S, 2, 3)  # [B, S, 2, 3]
    toks = torch.arange(B * S, device=device).view(B, S)  # [B, S] int64
    kv_want = [expected_after(t.cpu(), cl.cpu(), an.cpu(), al.cpu(), 2) for t in caches]
    big_want = big.cpu().clone()
    big_want[:, ::2] = kv_want[-1]
    f_want = expected_after(feats.cpu(), cl.cpu(), an.cpu(), al.cpu(), 1)
    t_want = expected_after(toks.cpu(), cl.cpu(), an.cpu(), al.cpu(), 1)
    call(backend, caches, cl, an, al, per_token=[feats, toks])
    for i, (t, want) in enumerate(zip(caches, kv_want)):
        assert_equal(t.cpu(), want, f"cache {i} ({t.dtype})")
    assert_equal(big.cpu(), big_want, "the skipped heads of the strided buffer are untouched")
    assert_equal(feats.cpu(), f_want, "per-token features")
    assert_equal(toks.cpu(), t_want, "per-token ids")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nothing_outside_moved_slots_changes(backend, device):
    B, X, S, Y = 2, 3, 32, 4
    k = slot_ids(B, X, S, Y, torch.float32, device)
    before = k.cpu().clone()
    cl, an, al = i32([5, 20], device), i32([[0, 3, 4, 8], [0, 1, 2, -1]], device), i32([4, 3], device)
    call(backend, [k], cl, an, al)
    changed = (k.cpu() != before).any(dim=(1, 3))  # [B, S]
    allowed = torch.zeros(B, S, dtype=torch.bool)
    allowed[0, 6:9] = True  # slots 5 + 1..3 (slot 5 stays)
    assert_equal(changed & ~allowed, torch.zeros(B, S, dtype=torch.bool), "slots outside the destinations")
    assert_equal(changed[1], torch.zeros(S, dtype=torch.bool), "[0, 1, 2] is a no-op")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_random_against_definition(backend, device):
    gen = torch.Generator().manual_seed(0)
    B, X, S, Y, W = 6, 2, 40, 5, 7
    cl = torch.randint(0, S - 2 * W, (B,), generator=gen, dtype=torch.int32)
    al = torch.randint(1, W + 1, (B,), generator=gen, dtype=torch.int32)
    an = torch.full((B, W), -1, dtype=torch.int32)
    for b in range(B):
        steps = torch.randint(1, 3, (int(al[b]) - 1,), generator=gen)
        an[b, : int(al[b])] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(steps, 0)]).int()
    k = slot_ids(B, X, S, Y, torch.float16, device)
    want = expected_after(k.cpu(), cl, an, al, 2)
    call(backend, [k], cl.to(device), an.to(device), al.to(device))
    assert_equal(k.cpu(), want, "random paths")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_out_of_range_entries_move_nothing(backend, device):
    """A destination or source past S_max is skipped, never written out of bounds."""
    B, X, S, Y = 1, 1, 8, 2
    k = slot_ids(B, X, S, Y, torch.float32, device)
    before = k.cpu().clone()
    call(backend, [k], i32([5], device), i32([[0, 2, 3, 4]], device), i32([4], device))
    want = before.clone()
    want[0, 0, 6] = before[0, 0, 7]  # j = 1: 7 -> 6; j = 2, 3 skipped
    assert_equal(k.cpu(), want, "out-of-range slots")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_cache_len_int_and_verify_result(backend, device):
    """cache_len as an int for every request; accept_nodes / accept_len straight from a VerifyResult."""
    B, X, S, Y = 2, 2, 16, 3
    tree = sk.build_tree(torch.tensor([[-1, 0, 0, 2]] * 2, dtype=torch.int32, device=device))
    res = sk.verify_greedy(
        tree,
        torch.tensor([[0, 5, 6, 7], [0, 5, 6, 7]], device=device),
        torch.tensor([[6, 0, 7, 1], [5, 2, 0, 0]], device=device),
    )
    assert res.accept_nodes.tolist() == [[0, 2, 3, -1], [0, 1, -1, -1]]
    k = slot_ids(B, X, S, Y, torch.float32, device)
    want = expected_after(k.cpu(), torch.full((B,), 5), res.accept_nodes.cpu(), res.accept_len.cpu(), slot_dim=2)
    call(backend, [k], 5, res.accept_nodes, res.accept_len)
    assert_equal(k.cpu(), want, "int cache_len")


def test_errors():
    k = torch.zeros(2, 2, 8, 4)
    cl, an, al = i32([0, 0], "cpu"), i32([[0, 1, 2], [0, -1, -1]], "cpu"), i32([3, 1], "cpu")
    with pytest.raises(TypeError, match="list"):
        sk.compact_kv(k, cl, an, al)
    with pytest.raises(ValueError, match="caches\\[1\\]"):
        sk.compact_kv([k, torch.zeros(2, 2, 9, 4)], cl, an, al)
    with pytest.raises(ValueError, match="caches\\[0\\].*batch"):
        sk.compact_kv([torch.zeros(3, 2, 8, 4)], cl, an, al)
    with pytest.raises(ValueError, match="caches\\[0\\]"):
        sk.compact_kv([torch.zeros(2, 8, 4)], cl, an, al)
    with pytest.raises(ValueError, match="per_token\\[0\\]"):
        sk.compact_kv([k], cl, an, al, per_token=[torch.zeros(2, 9, 4)])
    with pytest.raises(ValueError, match="without a copy"):
        sk.compact_kv([k], cl, an, al, per_token=[torch.zeros(2, 8, 3, 4).transpose(2, 3)])
    with pytest.raises(ValueError, match="unit stride"):
        sk.compact_kv([torch.zeros(2, 2, 4, 8).transpose(2, 3)], cl, an, al)
    with pytest.raises(ValueError, match="moved twice"):
        sk.compact_kv([k, k], cl, an, al)
    with pytest.raises(TypeError, match="accept_nodes"):
        sk.compact_kv([k], cl, an.long(), al)
    with pytest.raises(ValueError, match="accept_len"):
        sk.compact_kv([k], cl, an, al[:1])
    with pytest.raises(TypeError, match=r"cache_len: expected an int or an int32 tensor \[B\], got bool"):
        sk.compact_kv([k], False, an, al)
    with pytest.raises(TypeError, match=r"cache_len: expected dtype torch.int32, got torch.int64"):
        sk.compact_kv([k], cl.long(), an, al)
    sk.compact_kv([], cl, an, al)  # nothing to move is fine


KERNEL_BACKENDS = [p for p in BACKENDS if p.values[0] != "torch"]


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_opcheck(backend, device):
    """The registered kernel honours its schema (mutates only the caches), fake tensors and dispatch."""
    caches = [torch.randn(2, 2, 12, 4, device=device), torch.randn(2, 1, 12, 3, device=device).half()]
    args = (caches, i32([1, 3], device), i32([[0, 2, 3], [0, 1, -1]], device), i32([3, 2], device))
    reason = sk.get_op("compact_kv").reason(backend, *args)
    if reason:
        pytest.skip(reason)
    op = getattr(torch.ops.specdec, "compact_kv" + ("_triton" if backend == "triton" else ""))
    torch.library.opcheck(op, args)
