"""Paged-cache ops (specdec_kernels.ops.paged) against their contiguous counterparts and plain loops.

A contiguous cache [B, H_kv, S, D] is scattered onto shuffled physical pages (spare pages in the pool, page
sizes 1, 3 and 16, NHD and HND); paged_tree_attention must give tree_attention's result on the contiguous
cache, compact_paged_kv must leave the logical cache that compact_kv leaves (and no other page changed),
block_table_from_csr and accept_slots must match loops written from their definitions.
"""

from __future__ import annotations

import math

import pytest
import torch

import specdec_kernels as sk

from helpers import assert_close, assert_equal, backend_params


def i32(x):
    return torch.tensor(x, dtype=torch.int32)


def paginate(cache: torch.Tensor, P: int, layout: str, spare: int = 3, seed: int = 0):
    """(pages, block_table) holding the contiguous cache [B, H_kv, S, D] on shuffled pages of P slots (the
    last page of each request partly unused, `spare` pages in the pool that no request owns)."""
    B, H_kv, S, D = cache.shape
    n = math.ceil(S / P)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(B * n + spare, generator=g)
    table = perm[: B * n].view(B, n).to(torch.int32)
    shape = (B * n + spare, H_kv, P, D) if layout == "HND" else (B * n + spare, P, H_kv, D)
    pages = torch.randn(shape, generator=g).to(cache.dtype)
    for b in range(B):
        for s in range(S):
            p, o = int(table[b, s // P]), s % P
            if layout == "HND":
                pages[p, :, o] = cache[b, :, s]
            else:
                pages[p, o] = cache[b, :, s]
    return pages, table


def logical(pages, table, S, layout):
    """The contiguous cache [B, H_kv, S, D] a paged one holds (a loop, independent of the reference)."""
    P = pages.shape[2] if layout == "HND" else pages.shape[1]
    B = table.shape[0]
    rows = []
    for b in range(B):
        cols = []
        for s in range(S):
            p, o = int(table[b, s // P]), s % P
            cols.append(pages[p, :, o] if layout == "HND" else pages[p, o])
        rows.append(torch.stack(cols, 1))
    return torch.stack(rows)


def random_trees(B, N, seed):
    g = torch.Generator().manual_seed(seed)
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for b in range(B):
        for i in range(1, N):
            parents[b, i] = int(torch.randint(0, i, (1,), generator=g))
    return sk.build_tree(parents)


ATTN = backend_params("paged_tree_attention")


@pytest.mark.parametrize("backend,device", ATTN)
@pytest.mark.parametrize("P", [1, 3, 16])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_equals_the_contiguous_op(backend, device, P, layout, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 is unreliable under the Triton interpreter")
    B, H, H_kv, D, N = 3, 6, 2, 16, 7
    cache_len = i32([0, 5, 19])  # an empty prefix, one ending mid-page, a tree crossing page boundaries
    S = int(cache_len.max()) + N + 2
    g = torch.Generator().manual_seed(P)
    k = torch.randn(B, H_kv, S, D, generator=g).to(dtype)
    v = torch.randn(B, H_kv, S, D, generator=g).to(dtype)
    q = torch.randn(B, H, N, D, generator=g).to(dtype)
    kp, table = paginate(k, P, layout, seed=1)
    vp, table_v = paginate(v, P, layout, seed=1)
    assert torch.equal(table, table_v)
    tree = random_trees(B, N, seed=P)
    got = sk.paged_tree_attention(q, kp, vp, table, cache_len, tree.mask, layout=layout, backend=backend)
    want = sk.tree_attention(q, k, v, cache_len, tree.mask, backend="torch")
    assert_close(got, want, dtype, what=f"P={P} {layout}")
    out = torch.empty_like(q)
    assert sk.paged_tree_attention(q, kp, vp, table, cache_len, tree.mask, layout=layout, out=out) is out


@pytest.mark.parametrize("backend,device", [p for p in ATTN if p.values[0] == "triton"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_triton_split_k_and_row_blocks(backend, device, layout):
    """The Triton kernel's split-K merge and several row blocks, reached with small shapes."""
    from specdec_kernels.triton_kernels.attention import paged_tree_attention_triton

    if sk.get_op("paged_tree_attention").static_reason(backend, device):
        pytest.skip("no Triton here")
    B, H, H_kv, D, N, P = 2, 8, 2, 16, 5, 4
    cache_len = i32([37, 50])
    S = int(cache_len.max()) + N
    g = torch.Generator().manual_seed(7)
    k, v = torch.randn(B, H_kv, S, D, generator=g), torch.randn(B, H_kv, S, D, generator=g)
    q = torch.randn(B, H, N, D, generator=g)
    kp, table = paginate(k, P, layout, seed=3)
    vp, _ = paginate(v, P, layout, seed=3)
    tree = random_trees(B, N, seed=5)
    want = sk.tree_attention(q, k, v, cache_len, tree.mask, backend="torch")
    got = torch.empty_like(q)
    args = (q, kp, vp, table, cache_len, tree.mask, layout == "HND", D**-0.5, got)
    paged_tree_attention_triton(*args, num_splits=3, block_m=16)
    assert_close(got, want, torch.float32, what="split-K")


@pytest.mark.parametrize("backend,device", backend_params("compact_paged_kv"))
@pytest.mark.parametrize("P", [1, 3, 16])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_compaction_equals_the_contiguous_op(backend, device, P, layout):
    B, H_kv, D, N = 3, 2, 4, 9
    cache_len = i32([0, 4, 17])
    S = int(cache_len.max()) + N + 1
    k = torch.randn(B, H_kv, S, D)
    v = torch.randn(B, H_kv, S, D).half()
    feats = torch.randn(B, 1, S, 5)  # a per-token tensor [B, S, 5], seen as one head of width 5
    accept_nodes = i32([[0, 1, 4, 8, -1], [0, 3, -1, -1, -1], [0, 2, 3, 5, 7]])
    accept_len = i32([4, 2, 5])
    kp, table = paginate(k, P, layout, seed=2)
    vp, _ = paginate(v, P, layout, seed=2)
    fp, _ = paginate(feats, P, "NHD", seed=2)
    fp = fp[:, :, 0]  # [num_pages, P, 5]
    before = [t.clone() for t in (kp, vp, fp)]
    sk.compact_paged_kv(
        [kp, vp], table, cache_len, accept_nodes, accept_len, layout=layout, per_token=[fp], backend=backend
    )
    sk.compact_kv([k, v], cache_len, accept_nodes, accept_len, per_token=[feats[:, 0]], backend="torch")
    assert_equal(logical(kp, table, S, layout), k, "K")
    assert_equal(logical(vp, table, S, layout), v, "V")
    assert_equal(logical(fp[:, :, None], table, S, "NHD"), feats, "per-token")
    owned = set(table.flatten().tolist())
    for t, old in zip((kp, vp, fp), before):
        for page in range(t.shape[0]):
            if page not in owned:  # pages of no request are never written
                assert torch.equal(t[page], old[page])


@pytest.mark.parametrize("backend,device", backend_params("compact_paged_kv"))
def test_compaction_moves_nothing_out_of_range(backend, device):
    kp = torch.arange(24.0).view(6, 4, 1, 1)
    table = i32([[1, 4, -1]])  # the third logical page is not allocated
    before = kp.clone()
    # node -1, a source on the unallocated page, a source past the table: nothing moves
    sk.compact_paged_kv([kp], table, 6, i32([[0, -1, 5, 9]]), i32([4]), backend=backend)
    assert torch.equal(kp, before)


@pytest.mark.parametrize("backend,device", backend_params("block_table_from_csr"))
def test_block_table_from_csr(backend, device):
    indptr = i32([0, 3, 3, 4, 9])
    indices = torch.randperm(20)[:9].to(torch.int32)
    got = sk.block_table_from_csr(indptr, indices, 6, backend=backend)
    want = torch.full((4, 6), -1, dtype=torch.int32)
    for b in range(4):
        row = indices[indptr[b] : indptr[b + 1]][:6]
        want[b, : len(row)] = row
    assert_equal(got, want, "block table")
    assert_equal(sk.block_table_from_csr(indptr, indices, 2, backend=backend), want[:, :2], "cut at max_pages")
    assert sk.block_table_from_csr(i32([0]), i32([]), 3).shape == (0, 3)


def accept_slots_loop(table, cache_len, num_nodes, nodes, n_acc, N):
    table = table.clone()
    B = table.shape[0]
    freed = torch.full((B, N), -1, dtype=torch.int32)
    count = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        c, n = int(cache_len[b]), int(num_nodes[b])
        old = [int(table[b, c + i]) for i in range(n)]
        kept = [int(nodes[b, j]) for j in range(int(n_acc[b]))]
        for i in range(n):
            table[b, c + i] = old[kept[i]] if i < len(kept) else -1
        rejected = [old[i] for i in range(n) if i not in kept]
        freed[b, : len(rejected)] = torch.tensor(rejected, dtype=torch.int32)
        count[b] = len(rejected)
    return table, freed, count


def random_csr(B, max_count, pool, seed):
    """kv_indptr [B + 1] (ragged: empty requests too) and kv_indices of distinct random pages from a pool."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_count + 1, (B,), generator=g)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)]).to(torch.int32)
    indices = torch.randperm(pool, generator=g)[: int(indptr[-1])].to(torch.int32)
    return indptr, indices


def random_accept_case(B, N, S, seed):
    """A token-to-slot table [B, S] of distinct slots and per request a tree of num_nodes <= N nodes at
    cache_len (an empty prefix, trees that reach the table's end and are cut by it), with an accepted path
    (root first, strictly increasing, -1 padded) of a random length."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randperm(4 * B * S, generator=g)[: B * S].view(B, S).to(torch.int32)
    num_nodes = torch.randint(1, N + 1, (B,), generator=g, dtype=torch.int32)
    cache_len = torch.randint(0, S, (B,), generator=g, dtype=torch.int32)
    cache_len[0] = 0
    if B > 1:
        cache_len[1] = S - int(num_nodes[1]) // 2 - 1  # the tree is cut by the end of the table
    W = min(N, 12)
    nodes = torch.full((B, W), -1, dtype=torch.int32)
    accept_len = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        n = min(int(num_nodes[b]), S - int(cache_len[b]))  # the path stays on nodes the table holds
        depth = int(torch.randint(1, min(n, W) + 1, (1,), generator=g))
        path = torch.randperm(n - 1, generator=g)[: depth - 1].sort().values + 1 if n > 1 else torch.zeros(0)
        nodes[b, :depth] = torch.cat([torch.zeros(1), path.float()]).to(torch.int32)
        accept_len[b] = depth
    return table, cache_len, num_nodes, nodes, accept_len


@pytest.mark.parametrize("backend,device", backend_params("block_table_from_csr"))
@pytest.mark.parametrize("B,max_count,max_pages", [(1, 5, 5), (7, 9, 4), (33, 40, 1100)])
def test_block_table_from_csr_random(backend, device, B, max_count, max_pages):
    """Ragged CSR page lists (empty requests, rows cut at max_pages, rows of more than 1024 pages) against the
    loop of the definition."""
    indptr, indices = random_csr(B, max_count, 4 * B * max_count + 1, seed=B)
    got = sk.block_table_from_csr(indptr.to(device), indices.to(device), max_pages, backend=backend)
    want = torch.full((B, max_pages), -1, dtype=torch.int32)
    for b in range(B):
        row = indices[indptr[b] : indptr[b + 1]][:max_pages]
        want[b, : len(row)] = row
    assert_equal(got.cpu(), want, "block table")


@pytest.mark.parametrize("backend,device", backend_params("block_table_from_csr"))
def test_block_table_from_csr_offsets_past_the_indices(backend, device):
    """Unchecked values follow the reference: offsets past kv_indices read its last entry, a decreasing
    kv_indptr gives an empty row, and with no indices at all a counted page reads 0."""
    indptr, indices = i32([0, 2, 6, 1]), i32([4, 8, 9])
    want = torch.empty(3, 5, dtype=torch.int32)
    sk.block_table_from_csr(indptr, indices, 5, backend="torch", out=want)
    assert want.tolist() == [[4, 8, -1, -1, -1], [9, 9, 9, 9, -1], [-1, -1, -1, -1, -1]]
    assert_equal(sk.block_table_from_csr(indptr.to(device), indices.to(device), 5, backend=backend).cpu(), want, "")
    empty = sk.block_table_from_csr(i32([0, 2]).to(device), i32([]).to(device), 3, backend=backend)
    assert empty.tolist() == [[0, 0, -1]]


@pytest.mark.parametrize("backend,device", backend_params("accept_slots"))
@pytest.mark.parametrize("B,N,S", [(1, 1, 4), (5, 9, 30), (3, 300, 700), (2, 1024, 1100)])
def test_accept_slots_random(backend, device, B, N, S):
    """Random trees and paths (B = 1 with a one-node tree, ragged batches, an empty prefix, a tree cut by the
    end of the table, trees of more than 256 nodes and of the most nodes, 1024) against the loop."""
    table, cache_len, num_nodes, nodes, n_acc = random_accept_case(B, N, S, seed=N)
    cut = torch.minimum(num_nodes, S - cache_len)  # nodes the table holds
    want = accept_slots_loop(table, cache_len, cut, nodes, n_acc, N)
    t = table.to(device)
    args = (cache_len.to(device), num_nodes.to(device), nodes.to(device), n_acc.to(device))
    freed, count = sk.accept_slots(t, *args, max_nodes=N, backend=backend)
    assert_equal(t.cpu(), want[0], "table")
    assert_equal(freed.cpu(), want[1], "freed")
    assert_equal(count.cpu(), want[2], "count")


@pytest.mark.parametrize("backend,device", backend_params("accept_slots"))
def test_accept_slots_unchecked_values(backend, device):
    """Values nobody checks follow the reference on every backend: path entries past num_nodes or past
    max_nodes, a path that is not increasing, accept_len past W, negative cache_len."""
    g = torch.Generator().manual_seed(3)
    table = torch.randperm(100, generator=g)[:48].view(4, 12).to(torch.int32)
    cache_len, num_nodes = i32([2, -3, 5, 0]), i32([5, 6, 9, 4])
    nodes = i32([[0, 7, 2, 4], [0, 2, 1, -1], [0, 3, 3, 8], [0, 1, 2, 3]])
    n_acc = i32([4, 3, 4, 9])
    want_t = table.clone()
    want_f = torch.empty(4, 6, dtype=torch.int32)
    want_c = torch.empty(4, dtype=torch.int32)
    from specdec_kernels.reference import paged as paged_ref

    paged_ref.accept_slots(want_t, cache_len, num_nodes, nodes, n_acc, want_f, want_c)
    t = table.to(device)
    freed, count = sk.accept_slots(
        t, cache_len.to(device), num_nodes.to(device), nodes.to(device), n_acc.to(device), max_nodes=6, backend=backend
    )
    assert_equal(t.cpu(), want_t, "table")
    assert_equal(freed.cpu(), want_f, "freed")
    assert_equal(count.cpu(), want_c, "count")


@pytest.mark.parametrize("backend,device", backend_params("accept_slots"))
def test_accept_slots_against_a_loop(backend, device):
    g = torch.Generator().manual_seed(0)
    table = torch.randperm(200, generator=g)[:96].view(4, 24).to(torch.int32)
    cache_len, num_nodes = i32([0, 3, 10, 7]), i32([6, 8, 1, 5])
    nodes = i32([[0, 2, 5, -1], [0, 1, 3, 7], [0, -1, -1, -1], [0, 4, -1, -1]])
    n_acc = i32([3, 4, 1, 2])
    want = accept_slots_loop(table, cache_len, num_nodes, nodes, n_acc, 8)
    freed, count = sk.accept_slots(table, cache_len, num_nodes, nodes, n_acc, max_nodes=8, backend=backend)
    assert_equal(table, want[0], "table")
    assert_equal(freed, want[1], "freed")
    assert_equal(count, want[2], "count")


def test_errors():
    q = torch.randn(1, 2, 1, 4)
    kp = torch.randn(3, 4, 2, 4)
    tree = sk.build_tree(i32([[-1]]))
    with pytest.raises(ValueError, match="layout: expected one of"):
        sk.paged_tree_attention(q, kp, kp, i32([[0, 1]]), 2, tree.mask, layout="NDH")
    with pytest.raises((TypeError, ValueError), match="block_table"):
        sk.paged_tree_attention(q, kp, kp, torch.tensor([[0, 1]]), 2, tree.mask)
    with pytest.raises(ValueError, match=r"block_table: expected \[B=1"):
        sk.paged_tree_attention(q, kp, kp, i32([[0], [1]]), 2, tree.mask)
    with pytest.raises((TypeError, ValueError), match="v_pages"):
        sk.paged_tree_attention(q, kp, kp.half(), i32([[0, 1]]), 2, tree.mask)
    with pytest.raises(ValueError, match="k_pages: expected NHD pages"):
        sk.paged_tree_attention(q, torch.randn(3, 4, 2, 5), torch.randn(3, 4, 2, 5), i32([[0, 1]]), 2, tree.mask)
    with pytest.raises(ValueError, match="pages of"):  # per-token pages of another page size
        sk.compact_paged_kv([kp], i32([[0]]), 0, i32([[0]]), i32([1]), per_token=[torch.randn(3, 3, 2)])
    with pytest.raises(ValueError, match="same memory"):
        sk.compact_paged_kv([kp, kp], i32([[0]]), 0, i32([[0]]), i32([1]))
    with pytest.raises(ValueError, match="max_nodes: required"):
        sk.accept_slots(i32([[1, 2]]), 0, i32([2]), i32([[0]]), i32([1]))
    with pytest.raises(ValueError, match="max_pages"):
        sk.block_table_from_csr(i32([0, 1]), i32([3]), 0)


KERNEL_ATTN = [p for p in ATTN if p.values[0] != "torch"]


@pytest.mark.parametrize("backend,device", KERNEL_ATTN)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_attention_opcheck(backend, device, layout):
    """The registered kernel honours its schema (writes only out), fake tensors and dispatch."""
    q = torch.randn(2, 4, 3, 8, device=device)
    shape = (5, 2, 3, 8) if layout == "HND" else (5, 3, 2, 8)
    kp, vp = torch.randn(shape, device=device), torch.randn(shape, device=device)
    tree = random_trees(2, 3, seed=0)
    args = (q, kp, vp, i32([[4, 1], [0, 2]]), i32([2, 3]), tree.mask, layout == "HND", 0.5, torch.empty_like(q))
    reason = sk.get_op("paged_tree_attention").reason(backend, *args)
    if reason:
        pytest.skip(reason)
    torch.library.opcheck(torch.ops.specdec.paged_tree_attention, args)


@pytest.mark.parametrize("backend,device", KERNEL_ATTN)
def test_raw_kernel_checks_its_arguments(backend, device):
    """torch.ops.specdec.paged_tree_attention called directly refuses bad tensors with a clear message."""
    q = torch.randn(1, 2, 1, 4)
    kp = torch.randn(3, 2, 1, 4)
    mask = i32([[[1]]])
    op = torch.ops.specdec.paged_tree_attention
    with pytest.raises(RuntimeError, match="block_table must be a contiguous int32"):
        op(q, kp, kp, torch.tensor([[0, 1]]), i32([1]), mask, False, 1.0, torch.empty_like(q))
    with pytest.raises(RuntimeError, match="v_pages must have q's dtype"):
        op(q, kp, kp.half(), i32([[0, 1]]), i32([1]), mask, False, 1.0, torch.empty_like(q))
    with pytest.raises(RuntimeError, match="not a multiple of H_kv"):
        three = torch.randn(3, 3, 1, 4)  # HND: 3 KV heads for 2 query heads
        op(q, three, three, i32([[0, 1]]), i32([1]), mask, True, 1.0, torch.empty_like(q))


@pytest.mark.parametrize("backend,device", [p for p in backend_params("compact_paged_kv") if p.values[0] != "torch"])
@pytest.mark.parametrize("hnd", [False, True])
def test_compaction_opcheck_and_raw_checks(backend, device, hnd):
    """The registered kernel honours its schema (mutates only the caches); called directly it refuses bad
    tensors with a clear message."""
    caches = [torch.randn(6, 3, 2, 4, device=device), torch.randn(6, 3, 2, 4, device=device).half()]
    args = (caches, i32([[4, 1], [0, 2]]), i32([1, 0]), i32([[0, 2, 3], [0, 1, -1]]), i32([3, 2]), hnd)
    reason = sk.get_op("compact_paged_kv").reason(backend, *args)
    if reason:
        pytest.skip(reason)
    torch.library.opcheck(torch.ops.specdec.compact_paged_kv, args)
    op = torch.ops.specdec.compact_paged_kv
    with pytest.raises(RuntimeError, match="block_table must be a contiguous int32"):
        op(caches, torch.tensor([[4, 1], [0, 2]]), *args[2:])
    with pytest.raises(RuntimeError, match=r"caches\[1\] has 5 pages"):
        op([caches[0], torch.randn(5, 3, 2, 4)], *args[1:])


KERNEL_CSR = [p for p in backend_params("block_table_from_csr") if p.values[0] != "torch"]


@pytest.mark.parametrize("backend,device", KERNEL_CSR)
def test_block_table_opcheck_and_raw_checks(backend, device):
    """The registered kernel honours its schema (writes only out); called directly it refuses bad tensors."""
    indptr, indices = random_csr(4, 5, 30, seed=1)
    args = (indptr.to(device), indices.to(device), torch.empty(4, 3, dtype=torch.int32, device=device))
    reason = sk.get_op("block_table_from_csr").reason(backend, *args)
    if reason:
        pytest.skip(reason)
    name = "block_table_from_csr" if backend != "triton" else "block_table_from_csr_triton"
    torch.library.opcheck(getattr(torch.ops.specdec, name), args)
    if backend == "triton":
        return
    op = torch.ops.specdec.block_table_from_csr
    with pytest.raises(RuntimeError, match=r"kv_indptr must be a contiguous int32 \[B \+ 1\]"):
        op(indptr.long(), args[1], args[2])
    with pytest.raises(RuntimeError, match=r"out must be a contiguous int32 \[B=4, max_pages\]"):
        op(args[0], args[1], torch.empty(3, 3, dtype=torch.int32))


@pytest.mark.parametrize("backend,device", [p for p in backend_params("accept_slots") if p.values[0] != "torch"])
def test_accept_slots_opcheck_and_raw_checks(backend, device):
    """The registered kernel honours its schema (mutates only the table, freed and the count); called directly
    it refuses bad tensors with a clear message."""
    table, cache_len, num_nodes, nodes, n_acc = random_accept_case(3, 6, 20, seed=2)
    freed, count = torch.empty(3, 6, dtype=torch.int32), torch.empty(3, dtype=torch.int32)
    args = tuple(t.to(device) for t in (table, cache_len, num_nodes, nodes, n_acc, freed, count))
    reason = sk.get_op("accept_slots").reason(backend, *args)
    if reason:
        pytest.skip(reason)
    name = "accept_slots" if backend != "triton" else "accept_slots_triton"
    torch.library.opcheck(getattr(torch.ops.specdec, name), args)
    if backend == "triton":
        return
    op = torch.ops.specdec.accept_slots
    with pytest.raises(RuntimeError, match=r"num_nodes must be a contiguous int32 \[B\] tensor with B = 3"):
        op(*args[:2], num_nodes[:2].to(device), *args[3:])
    with pytest.raises(RuntimeError, match=r"slot_table must be a contiguous int32 \[B, S\]"):
        op(table.t().to(device), *args[1:])


def test_accept_slots_refuses_trees_over_the_kernel_limit():
    """cuda and triton keep one tree per thread block: wider freed buffers go to the other backends."""
    from specdec_kernels._limits import MAX_TREE_NODES

    N = MAX_TREE_NODES + 1
    args = (i32([[0] * 4]), i32([0]), i32([1]), i32([[0]]), i32([1]), torch.empty(1, N, dtype=torch.int32), i32([0]))
    reasons = sk.get_op("accept_slots").reasons(*args)
    assert f"max_nodes = {N} > {MAX_TREE_NODES}" in reasons["triton"] or "Triton" in reasons["triton"]
    assert "cpu" not in reasons and "torch" not in reasons
