"""Tree construction ops (build_tree, select_tree, tree_paths) on every backend, against the PyTorch reference.

Random trees of every shape class (chains, stars, k-ary, random, EAGLE-2 trees made by select_tree from
drafted candidates), ragged num_nodes, hand-built golden trees with their exact outputs, malformed trees,
bad arguments, output buffers (Tree.empty / SelectedTree.empty), opcheck and torch.compile. Integer
outputs are compared exactly. The mask helpers are in test_masks.py.
"""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import BackendError
from specdec_kernels.reference import tree as ref

from helpers import assert_equal, backend_params

BUILD_BACKENDS = backend_params("build_tree")
SELECT_BACKENDS = backend_params("select_tree")


def _kernel_reason(op: str, backend: str, device: str):
    """Why the registry cannot run `op` on `backend` / `device` at all (None when it can)."""
    return sk.get_op(op).static_reason(backend, device)


def _registered(op: str, device: str) -> bool:
    """True when the kernel `specdec::op` (a name ending in _triton: the Triton one) can run on `device`."""
    name, backend = (op[: -len("_triton")], "triton") if op.endswith("_triton") else (op, device)
    return _kernel_reason(name, backend, device) is None


def _need_kernel(backend: str, device: str, op: str) -> None:
    """Skip when `backend` cannot run `op` here (e.g. the optional Triton tree kernels are not attached)."""
    reason = _kernel_reason(op, backend, device)
    if reason is not None:
        pytest.skip(reason)


# ---------------------------------------------------------------------------------------------------
# Tree generators

KINDS = ("chain", "star", "kary2", "kary3", "random", "deep")


def make_parents(kind: str, N: int, gen: torch.Generator) -> torch.Tensor:
    """int32 [N] parents of one tree of the given shape class (topological order, root -1)."""
    i = torch.arange(N)
    if kind == "chain":
        p = i - 1
    elif kind == "star":
        p = torch.zeros(N, dtype=torch.int64)
    elif kind.startswith("kary"):
        p = torch.div(i - 1, int(kind[4:]), rounding_mode="floor")
    elif kind == "random":
        p = (torch.rand(N, generator=gen) * i).floor().to(torch.int64)
    elif kind == "deep":  # mostly chains with short back-steps: depth close to N
        p = (i - 1 - torch.randint(0, 3, (N,), generator=gen)).clamp(min=0)
    else:
        raise ValueError(kind)
    p[0] = -1
    return p.to(torch.int32)


def make_batch(B: int, N: int, seed: int, ragged: bool = False):
    """(parents [B, N], num_nodes [B]) cycling through the shape classes; ragged rows get junk padding."""
    gen = torch.Generator().manual_seed(seed)
    parents = (
        torch.stack([make_parents(KINDS[b % len(KINDS)], N, gen) for b in range(B)])
        if B
        else torch.empty(0, N, dtype=torch.int32)
    )
    if ragged:
        num_nodes = torch.randint(1, N + 1, (B,), generator=gen, dtype=torch.int32)
        # Padding rows may hold anything: they must be ignored (and not make the tree invalid).
        junk = torch.randint(-5, N + 5, (B, N), generator=gen, dtype=torch.int32)
        pad = torch.arange(N)[None, :] >= num_nodes[:, None]
        parents = torch.where(pad, junk, parents)
    else:
        num_nodes = torch.full((B,), N, dtype=torch.int32)
    return parents, num_nodes


def eagle_candidates(B: int, top_k: int, depth: int, seed: int):
    """Candidates drafted the EAGLE-2 way: level by level, each level expands the top_k best of the previous.

    Returns cand_scores float32 [B, M], cand_parents int32 [B, M], cand_tokens int64 [B, M], root int64 [B]
    with M = top_k + (depth - 1) * top_k^2. Cumulative scores: parent score + a log-probability.
    """
    gen = torch.Generator().manual_seed(seed)
    scores, parents = [], []
    logp = torch.log_softmax(torch.randn(B, top_k, generator=gen) * 2, dim=-1)
    level_scores, level_idx = logp, torch.arange(top_k).expand(B, top_k)
    scores.append(level_scores)
    parents.append(torch.full((B, top_k), -1, dtype=torch.int64))
    offset = top_k
    for _ in range(depth - 1):
        best, pos = level_scores.topk(top_k, dim=1)  # frontier: top_k of the last level
        front_idx = torch.gather(level_idx, 1, pos)  # their candidate indices
        logp = torch.log_softmax(torch.randn(B, top_k, top_k, generator=gen) * 2, dim=-1)
        child_scores = (best[:, :, None] + logp).reshape(B, -1)
        child_parents = front_idx[:, :, None].expand(B, top_k, top_k).reshape(B, -1)
        n = child_scores.shape[1]
        scores.append(child_scores)
        parents.append(child_parents)
        level_scores, level_idx = child_scores, torch.arange(offset, offset + n).expand(B, n)
        offset += n
    cand_scores = torch.cat(scores, 1).float()
    cand_parents = torch.cat(parents, 1).to(torch.int32)
    M = cand_scores.shape[1]
    cand_tokens = torch.randint(0, 32000, (B, M), generator=gen)
    root = torch.randint(0, 32000, (B,), generator=gen)
    return cand_scores, cand_parents, cand_tokens, root


def random_candidates(B: int, M: int, seed: int):
    """select_tree inputs with many ties, NaN, +-inf, -0.0 and random (5 % invalid) parents."""
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(B, M, generator=gen) * 3).round()  # integers: many ties
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    pick = torch.randint(0, 20, (B, M), generator=gen)
    scores = torch.where(pick < 5, special[pick.clamp(max=4)], scores)
    ar = torch.arange(M)
    cparents = ((torch.rand(B, M, generator=gen) * (ar + 1)).floor() - 1).to(torch.int32)  # in [-1, i)
    bad = torch.rand(B, M, generator=gen) < 0.05
    cparents = torch.where(bad, torch.randint(-4, M + 4, (B, M), generator=gen, dtype=torch.int32), cparents)
    ctokens = torch.randint(0, 50000, (B, M), generator=gen)
    root = torch.randint(0, 50000, (B,), generator=gen)
    return scores, cparents, ctokens, root


def reference_tree(parents: torch.Tensor, num_nodes: torch.Tensor) -> sk.Tree:
    return sk.build_tree(parents.cpu(), num_nodes.cpu(), backend="torch")


def assert_trees_equal(got: sk.Tree, want: sk.Tree, what: str = "") -> None:
    for name, g, w in zip(sk.Tree._fields, got, want):
        assert_equal(g.cpu(), w.cpu(), f"{what} {name}")


def run_build(backend, device, parents, num_nodes=None):
    nn = num_nodes.to(device) if isinstance(num_nodes, torch.Tensor) else num_nodes
    return sk.build_tree(parents.to(device), nn, backend=backend)


# ---------------------------------------------------------------------------------------------------
# build_tree: random trees against the reference


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
@pytest.mark.parametrize("N", [1, 2, 31, 32, 33, 64])
@pytest.mark.parametrize("B", [1, 3, 7])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_build_tree_random(backend, device, N, B, ragged):
    _need_kernel(backend, device, "build_tree")
    parents, num_nodes = make_batch(B, N, seed=1000 * N + 10 * B + ragged, ragged=ragged)
    got = run_build(backend, device, parents, num_nodes)
    assert_trees_equal(got, reference_tree(parents, num_nodes), f"{backend} N={N} B={B}")
    assert bool(got.valid.all())


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_1024_nodes(backend, device):
    """The largest tree one CUDA/Triton block takes; a chain is the worst case for ancestor walks."""
    _need_kernel(backend, device, "build_tree")
    gen = torch.Generator().manual_seed(7)
    parents = torch.stack([make_parents(k, 1024, gen) for k in ("chain", "random")])
    num_nodes = torch.tensor([1024, 999], dtype=torch.int32)
    got = run_build(backend, device, parents, num_nodes)
    assert_trees_equal(got, reference_tree(parents, num_nodes), f"{backend} N=1024")
    assert got.depth[0, 1023].item() == 1023
    assert got.mask[0, 1023].tolist() == [-1] * 32  # every node is an ancestor of the chain's tail


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_eagle_shaped(backend, device):
    """60-node trees made by EAGLE-2 selection (top-k 10, depth 5) from drafted candidates."""
    _need_kernel(backend, device, "build_tree")
    scores, cparents, ctokens, root = eagle_candidates(B=4, top_k=10, depth=5, seed=3)
    parents, _, _ = sk.select_tree(scores, cparents, ctokens, root, 60, backend="torch")
    num_nodes = torch.tensor([60, 60, 41, 2], dtype=torch.int32)
    got = run_build(backend, device, parents, num_nodes)
    want = reference_tree(parents, num_nodes)
    assert_trees_equal(got, want, f"{backend} eagle")
    assert bool(want.valid.all())  # log-probabilities: the chosen set is closed under ancestors
    assert 1 <= int(want.depth[0].max()) <= 5


# ---------------------------------------------------------------------------------------------------
# build_tree: golden trees with the outputs written out

#        0
#      /   \
#     1     2
#    / \     \
#   3   4     5
GOLDEN6 = [-1, 0, 0, 1, 1, 2]


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_golden_small(backend, device):
    _need_kernel(backend, device, "build_tree")
    t = run_build(backend, device, torch.tensor([GOLDEN6], dtype=torch.int32))
    assert t.valid.tolist() == [True]
    assert t.depth.tolist() == [[0, 1, 1, 2, 2, 2]]
    assert t.mask.tolist() == [[[0b1], [0b11], [0b101], [0b1011], [0b10011], [0b100101]]]
    assert t.first_child.tolist() == [[1, 3, 5, -1, -1, -1]]
    assert t.next_sibling.tolist() == [[-1, 2, -1, 4, -1, -1]]


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_golden_ragged(backend, device):
    """num_nodes = 4 cuts nodes 4 and 5: they become padding and vanish from the links."""
    _need_kernel(backend, device, "build_tree")
    t = run_build(backend, device, torch.tensor([GOLDEN6], dtype=torch.int32), torch.tensor([4], dtype=torch.int32))
    assert t.valid.tolist() == [True]
    assert t.depth.tolist() == [[0, 1, 1, 2, 0, 0]]
    assert t.mask.tolist() == [[[0b1], [0b11], [0b101], [0b1011], [0], [0]]]
    assert t.first_child.tolist() == [[1, 3, -1, -1, -1, -1]]
    assert t.next_sibling.tolist() == [[-1, 2, -1, -1, -1, -1]]


def golden35_parents():
    # Nodes 1..31 are children of the root; 32 <- 31, 33 <- 32 (second mask word), 34 <- 5.
    return [-1] + [0] * 31 + [31, 32, 5]


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_golden_two_words(backend, device):
    """Nodes >= 32 use the second mask word; bit 31 makes the first word a negative int32."""
    _need_kernel(backend, device, "build_tree")
    t = run_build(backend, device, torch.tensor([golden35_parents()], dtype=torch.int32))
    assert t.valid.tolist() == [True]
    assert t.depth[0].tolist() == [0] + [1] * 31 + [2, 3, 2]
    mask = t.mask[0].tolist()
    assert mask[0] == [1, 0]
    assert mask[1] == [0b11, 0]
    assert mask[5] == [0b100001, 0]
    assert mask[30] == [1 | (1 << 30), 0]  # 1073741825
    assert mask[31] == [-2147483647, 0]  # bits 0 and 31: 0x80000001 as int32
    assert mask[32] == [-2147483647, 0b1]  # + node 32 (bit 0 of word 1)
    assert mask[33] == [-2147483647, 0b11]  # + nodes 32, 33
    assert mask[34] == [0b100001, 0b100]  # root, 5, and node 34 (bit 2 of word 1)
    for i in range(2, 31):
        assert mask[i] == [1 | (1 << i), 0], i
    fc = t.first_child[0].tolist()
    assert fc[0] == 1 and fc[5] == 34 and fc[31] == 32 and fc[32] == 33
    assert [i for i, c in enumerate(fc) if c >= 0] == [0, 5, 31, 32]
    ns = t.next_sibling[0].tolist()
    assert ns == [-1] + list(range(2, 32)) + [-1, -1, -1, -1]


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_golden_batch_of_two(backend, device):
    """Rows of a batch are independent: a chain of 3 and a star of 3 (ragged to 2)."""
    _need_kernel(backend, device, "build_tree")
    parents = torch.tensor([[-1, 0, 1], [-1, 0, 0]], dtype=torch.int32)
    t = run_build(backend, device, parents, torch.tensor([3, 2], dtype=torch.int32))
    assert t.valid.tolist() == [True, True]
    assert t.depth.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert t.mask.tolist() == [[[1], [3], [7]], [[1], [3], [0]]]
    assert t.first_child.tolist() == [[1, 2, -1], [1, -1, -1]]
    assert t.next_sibling.tolist() == [[-1, -1, -1], [-1, -1, -1]]


# ---------------------------------------------------------------------------------------------------
# build_tree: malformed trees

MALFORMED = {
    "root_parent_0": ([0, 0, 0, 1], 4),
    "root_parent_-2": ([-2, 0, 0, 1], 4),
    "parent_equals_child": ([-1, 0, 2, 1], 4),
    "parent_after_child": ([-1, 0, 3, 1], 4),
    "parent_-1_below_root": ([-1, 0, -1, 1], 4),
    "parent_below_-1": ([-1, 0, -7, 1], 4),
    "parent_out_of_range": ([-1, 0, 99, 1], 4),
    "parent_int32_max": ([-1, 0, 2**31 - 1, 1], 4),
    "parent_int32_min": ([-1, 0, -(2**31), 1], 4),
    "num_nodes_0": ([-1, 0, 0, 1], 0),
    "num_nodes_too_large": ([-1, 0, 0, 1], 5),
    "num_nodes_negative": ([-1, 0, 0, 1], -3),
}


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_malformed(backend, device):
    """Each malformed tree -> valid False and all-padding rows; the valid tree beside them is unaffected."""
    _need_kernel(backend, device, "build_tree")
    names = list(MALFORMED)
    rows = [MALFORMED[k][0] for k in names] + [[-1, 0, 0, 1]]
    nn = [MALFORMED[k][1] for k in names] + [4]
    parents = torch.tensor(rows, dtype=torch.int32)
    t = run_build(backend, device, parents, torch.tensor(nn, dtype=torch.int32))
    B = len(rows)
    valid = t.valid.tolist()
    for b, name in enumerate(names):
        assert valid[b] is False, name
        assert t.depth[b].tolist() == [0] * 4, name
        assert t.mask[b].tolist() == [[0]] * 4, name
        assert t.first_child[b].tolist() == [-1] * 4, name
        assert t.next_sibling[b].tolist() == [-1] * 4, name
    assert valid[B - 1] is True
    assert t.depth[B - 1].tolist() == [0, 1, 1, 2]
    assert t.first_child[B - 1].tolist() == [1, 3, -1, -1]


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_malformed_padding_ignored(backend, device):
    """Garbage past num_nodes never invalidates a tree."""
    _need_kernel(backend, device, "build_tree")
    parents = torch.tensor([[-1, 0, 5, -9], [-1, -1, -1, -1]], dtype=torch.int32)
    t = run_build(backend, device, parents, torch.tensor([2, 1], dtype=torch.int32))
    assert t.valid.tolist() == [True, True]
    assert t.depth.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    assert t.mask[:, :, 0].tolist() == [[1, 3, 0, 0], [1, 0, 0, 0]]


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_random_malformed(backend, device):
    """Random corruption of random trees (64 nodes): validity and outputs match the reference."""
    _need_kernel(backend, device, "build_tree")
    B, N = 16, 64
    parents, num_nodes = make_batch(B, N, seed=5, ragged=True)
    gen = torch.Generator().manual_seed(6)
    rows = torch.arange(0, B, 2)
    cols = torch.randint(0, N, (len(rows),), generator=gen)
    parents[rows, cols] = torch.randint(-3, N + 3, (len(rows),), generator=gen, dtype=torch.int32)
    got = run_build(backend, device, parents, num_nodes)
    want = reference_tree(parents, num_nodes)
    assert_trees_equal(got, want, f"{backend} corrupted")
    assert not bool(want.valid.all())  # the corruption hit at least one live node


# ---------------------------------------------------------------------------------------------------
# build_tree: arguments, buffers, empty batch


def test_build_tree_argument_errors():
    p = torch.tensor([GOLDEN6], dtype=torch.int32)
    with pytest.raises(TypeError, match=r"parents: expected dtype torch.int32, got torch.int64"):
        sk.build_tree(p.long())
    with pytest.raises(ValueError, match=r"parents: expected 2 dimensions, got shape \(6,\)"):
        sk.build_tree(p[0])
    with pytest.raises(ValueError, match=r"parents: expected at least one node"):
        sk.build_tree(torch.empty(2, 0, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"num_nodes: expected dtype torch.int32, got torch.int64"):
        sk.build_tree(p, torch.tensor([6]), backend="torch")
    with pytest.raises(ValueError, match=r"num_nodes: expected shape \[1\], got \(2,\)"):
        sk.build_tree(p, torch.tensor([6, 6], dtype=torch.int32), backend="torch")
    with pytest.raises(ValueError, match=r"all tensors must be on one device"):
        sk.build_tree(p, torch.tensor([6], dtype=torch.int32, device="meta"), backend="torch")
    with pytest.raises(TypeError, match=r"out: expected a Tree"):
        sk.build_tree(p, out=(1, 2, 3, 4, 5), backend="torch")
    out = sk.Tree.empty(1, 6)
    with pytest.raises(ValueError, match=r"out.mask: expected shape \[1, 6, 1\], got \(1, 6, 2\)"):
        sk.build_tree(p, out=out._replace(mask=torch.empty(1, 6, 2, dtype=torch.int32)), backend="torch")
    with pytest.raises(TypeError, match=r"out.valid: expected dtype torch.bool, got torch.int32"):
        sk.build_tree(p, out=out._replace(valid=torch.empty(1, dtype=torch.int32)), backend="torch")
    with pytest.raises(ValueError, match=r"out.depth: output buffers must be contiguous"):
        sk.build_tree(p, out=out._replace(depth=torch.empty(1, 12, dtype=torch.int32)[:, ::2]), backend="torch")
    with pytest.raises(BackendError, match=r"'cuda' cannot run these inputs: inputs are on cpu"):
        sk.build_tree(p, backend="cuda")
    with pytest.raises(BackendError, match=r"unknown backend 'gpu'"):
        sk.build_tree(p, backend="gpu")


def test_build_tree_raw_op_checks():
    """torch.ops.specdec.build_tree called directly checks what it would otherwise read or write out of bounds."""
    if not _registered("build_tree", "cpu"):
        pytest.skip("specdec_kernels._C has no CPU build_tree")
    p = torch.tensor([GOLDEN6], dtype=torch.int32)
    n = torch.tensor([6], dtype=torch.int32)
    t = sk.Tree.empty(1, 6)
    with pytest.raises(RuntimeError, match=r"mask must have shape \[1, 6, 1\], got \[1, 6, 2\]"):
        torch.ops.specdec.build_tree(p, n, t.depth, torch.empty(1, 6, 2, dtype=torch.int32), *t[2:])
    with pytest.raises(RuntimeError, match=r"num_nodes must be Int, got Long"):
        torch.ops.specdec.build_tree(p, n.long(), *t)
    with pytest.raises(RuntimeError, match=r"valid must have shape \[1\], got \[2\]"):
        torch.ops.specdec.build_tree(p, n, *t[:4], torch.empty(2, dtype=torch.bool))


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_out_buffers_reused(backend, device):
    """Outputs go into the caller's buffers, every entry rewritten (stale values never leak through)."""
    _need_kernel(backend, device, "build_tree")
    B, N = 3, 40
    out = sk.Tree.empty(B, N, device)
    for t in out:
        t.fill_(True) if t.dtype == torch.bool else t.fill_(12345)
    ptrs = [t.data_ptr() for t in out]
    for seed in range(2):
        parents, num_nodes = make_batch(B, N, seed=seed, ragged=True)
        if seed == 1:
            parents[1, 0] = 3  # invalid the second time: the same buffers must be fully rewritten
        got = sk.build_tree(parents.to(device), num_nodes.to(device), backend=backend, out=out)
        assert [t.data_ptr() for t in got] == ptrs
        assert_trees_equal(got, reference_tree(parents, num_nodes), f"{backend} call {seed}")


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_int_num_nodes(backend, device):
    _need_kernel(backend, device, "build_tree")
    parents = torch.tensor([GOLDEN6, GOLDEN6], dtype=torch.int32)
    t = run_build(backend, device, parents, 3)
    assert t.depth.tolist() == [[0, 1, 1, 0, 0, 0]] * 2
    assert t.first_child.tolist() == [[1, -1, -1, -1, -1, -1]] * 2


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_build_tree_empty_batch(backend, device):
    _need_kernel(backend, device, "build_tree")
    t = sk.build_tree(torch.empty(0, 5, dtype=torch.int32, device=device), backend=backend)
    assert [tuple(x.shape) for x in t] == [(0, 5), (0, 5, 1), (0, 5), (0, 5), (0,)]


# ---------------------------------------------------------------------------------------------------
# select_tree


def run_select(backend, device, scores, cparents, ctokens, root, N):
    return sk.select_tree(
        scores.to(device), cparents.to(device), ctokens.to(device), root.to(device), N, backend=backend
    )


def reference_select(scores, cparents, ctokens, root, N):
    return sk.select_tree(scores.cpu(), cparents.cpu(), ctokens.cpu(), root.cpu(), N, backend="torch")


def assert_selected_equal(got, want, what=""):
    for name, g, w in zip(("parents", "tokens", "selected"), got, want):
        assert_equal(g.cpu(), w.cpu(), f"{what} {name}")


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
def test_select_tree_golden_ties_and_orphan(backend, device):
    _need_kernel(backend, device, "select_tree")
    # Ranking: -0.5 at candidates 1, 2, 4 (ties -> lower index first), then -1.0 (0), -2.0 (5), NaN (3).
    # Kept: 1, 2, 4 -> nodes 1, 2, 3. Candidate 2's parent (0) is dropped: node 2 becomes its own parent.
    scores = torch.tensor([[-1.0, -0.5, -0.5, float("nan"), -0.5, -2.0]])
    cparents = torch.tensor([[-1, -1, 0, 1, 1, 2]], dtype=torch.int32)
    ctokens = torch.tensor([[10, 11, 12, 13, 14, 15]])
    root = torch.tensor([7])
    parents, tokens, selected = run_select(backend, device, scores, cparents, ctokens, root, 4)
    assert parents.tolist() == [[-1, 0, 2, 1]]
    assert tokens.tolist() == [[7, 11, 12, 14]]
    assert selected.tolist() == [[-1, 1, 2, 4]]
    assert sk.build_tree(parents.cpu(), backend="torch").valid.tolist() == [False]  # the orphan


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
def test_select_tree_golden_nan_and_signed_zero(backend, device):
    _need_kernel(backend, device, "select_tree")
    inf, nan = float("inf"), float("nan")
    scores = torch.tensor(
        [
            [nan, -inf, -1.0, nan],  # NaN ranks below -inf: keep 2 then 1
            [-0.0, 0.0, -1.0, -2.0],  # -0.0 == +0.0: a tie, the lower index (0) wins
            [0.0, -0.0, -1.0, -2.0],
            [nan, nan, nan, nan],  # all NaN: ties by index
        ]
    )
    cparents = torch.tensor([[-1, -1, -1, -1]] * 4, dtype=torch.int32)
    ctokens = torch.arange(100, 116).reshape(4, 4)
    root = torch.tensor([1, 2, 3, 4])
    parents, tokens, selected = run_select(backend, device, scores, cparents, ctokens, root, 3)
    assert selected.tolist() == [[-1, 1, 2], [-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]
    assert parents.tolist() == [[-1, 0, 0]] * 4
    assert tokens.tolist() == [[1, 101, 102], [2, 104, 105], [3, 108, 109], [4, 112, 113]]
    # One kept of a -0.0/+0.0 pair: the lower index either way.
    _, _, sel = run_select(
        backend,
        device,
        scores[1:3, :2].contiguous(),
        cparents[1:3, :2].contiguous(),
        ctokens[1:3, :2].contiguous(),
        root[1:3].contiguous(),
        2,
    )
    assert sel.tolist() == [[-1, 0], [-1, 0]]


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
def test_select_tree_golden_chain_and_out_of_range(backend, device):
    _need_kernel(backend, device, "select_tree")
    # A drafted chain 0 <- 1 <- 2 and a child of 2 (3); candidate 4's parent index is out of range (9),
    # candidate 5's is below -1: both are orphans, so they point at themselves.
    scores = torch.tensor([[-0.1, -0.2, -0.3, -0.4, -0.15, -0.25]])
    cparents = torch.tensor([[-1, 0, 1, 2, 9, -4]], dtype=torch.int32)
    ctokens = torch.tensor([[20, 21, 22, 23, 24, 25]])
    root = torch.tensor([5])
    parents, tokens, selected = run_select(backend, device, scores, cparents, ctokens, root, 7)
    assert selected.tolist() == [[-1, 0, 1, 2, 3, 4, 5]]
    assert parents.tolist() == [[-1, 0, 1, 2, 3, 5, 6]]
    assert tokens.tolist() == [[5, 20, 21, 22, 23, 24, 25]]
    parents, tokens, selected = run_select(backend, device, scores, cparents, ctokens, root, 4)
    # Ranking: 0 (-0.1), 4 (-0.15), 1 (-0.2), 5 (-0.25), ...: keep 0, 1, 4.
    assert selected.tolist() == [[-1, 0, 1, 4]]
    assert parents.tolist() == [[-1, 0, 1, 3]]
    assert tokens.tolist() == [[5, 20, 21, 24]]


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
def test_select_tree_root_only(backend, device):
    _need_kernel(backend, device, "select_tree")
    scores = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    cparents = torch.full((2, 2), -1, dtype=torch.int32)
    parents, tokens, selected = run_select(
        backend, device, scores, cparents, torch.ones(2, 2, dtype=torch.int64), torch.tensor([8, 9]), 1
    )
    assert parents.tolist() == [[-1], [-1]]
    assert tokens.tolist() == [[8], [9]]
    assert selected.tolist() == [[-1], [-1]]


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
@pytest.mark.parametrize(
    "M,N", [(1, 1), (1, 2), (5, 3), (31, 32), (33, 20), (100, 60), (410, 60), (510, 101), (1000, 1001)]
)
def test_select_tree_random(backend, device, M, N):
    """Random candidates with many ties, NaN, +-inf, -0.0 and random (also invalid) parents."""
    _need_kernel(backend, device, "select_tree")
    scores, cparents, ctokens, root = random_candidates(3, M, seed=M * 7 + N)
    got = run_select(backend, device, scores, cparents, ctokens, root, N)
    assert_selected_equal(got, reference_select(scores, cparents, ctokens, root, N), f"{backend} M={M} N={N}")


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
def test_select_tree_4096_candidates(backend, device):
    """The largest row one CUDA/Triton block takes."""
    _need_kernel(backend, device, "select_tree")
    gen = torch.Generator().manual_seed(11)
    M, N = 4096, 1024
    scores = (torch.randn(1, M, generator=gen) * 20).round() / 4
    cparents = ((torch.rand(1, M, generator=gen) * (torch.arange(M) + 1)).floor() - 1).to(torch.int32)
    ctokens = torch.randint(0, 50000, (1, M), generator=gen)
    root = torch.tensor([3])
    got = run_select(backend, device, scores, cparents, ctokens, root, N)
    assert_selected_equal(got, reference_select(scores, cparents, ctokens, root, N), f"{backend} M=4096")


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
def test_select_tree_eagle(backend, device):
    """EAGLE-2 candidates (top-k 10, depth 6: 510 candidates) -> a valid 60-node tree, as the reference."""
    _need_kernel(backend, device, "select_tree")
    scores, cparents, ctokens, root = eagle_candidates(B=5, top_k=10, depth=6, seed=4)
    got = run_select(backend, device, scores, cparents, ctokens, root, 60)
    want = reference_select(scores, cparents, ctokens, root, 60)
    assert_selected_equal(got, want, f"{backend} eagle")
    tree = sk.build_tree(want[0], backend="torch")
    assert bool(tree.valid.all())
    # The selection keeps the best 59: every dropped candidate scores at most the worst kept one.
    kept = torch.gather(scores, 1, want[2][:, 1:].long())
    dropped = scores.clone().scatter_(1, want[2][:, 1:].long(), -float("inf"))
    assert bool((kept.min(1).values >= dropped.max(1).values).all())


@pytest.mark.parametrize("backend,device", SELECT_BACKENDS)
def test_select_tree_out_buffers_and_empty_batch(backend, device):
    _need_kernel(backend, device, "select_tree")
    scores, cparents, ctokens, root = eagle_candidates(B=2, top_k=4, depth=3, seed=9)
    out = sk.SelectedTree.empty(2, 10, device)
    for t in out:
        t.fill_(777)
    got = sk.select_tree(
        scores.to(device), cparents.to(device), ctokens.to(device), root.to(device), 10, backend=backend, out=out
    )
    assert got is out and all(g is o for g, o in zip(got, out))
    assert_selected_equal(got, reference_select(scores, cparents, ctokens, root, 10), f"{backend} out=")
    empty = sk.select_tree(
        torch.empty(0, 7, device=device),
        torch.empty(0, 7, dtype=torch.int32, device=device),
        torch.empty(0, 7, dtype=torch.int64, device=device),
        torch.empty(0, dtype=torch.int64, device=device),
        4,
        backend=backend,
    )
    assert [tuple(t.shape) for t in empty] == [(0, 4)] * 3


def test_select_tree_argument_errors():
    s = torch.zeros(2, 5)
    cp = torch.full((2, 5), -1, dtype=torch.int32)
    ct = torch.zeros(2, 5, dtype=torch.int64)
    rt = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"cand_scores: expected dtype torch.float32, got torch.float64"):
        sk.select_tree(s.double(), cp, ct, rt, 3)
    with pytest.raises(TypeError, match=r"cand_parents: expected dtype torch.int32, got torch.int64"):
        sk.select_tree(s, cp.long(), ct, rt, 3)
    with pytest.raises(ValueError, match=r"cand_tokens: expected shape \[2, 5\], got \(2, 4\)"):
        sk.select_tree(s, cp, ct[:, :4], rt, 3)
    with pytest.raises(ValueError, match=r"root_tokens: expected shape \[2\], got \(3,\)"):
        sk.select_tree(s, cp, ct, torch.zeros(3, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match=r"expected 1 <= num_nodes <= M \+ 1 = 6 \(M candidates\), got 7"):
        sk.select_tree(s, cp, ct, rt, 7)
    with pytest.raises(ValueError, match=r"got 0"):
        sk.select_tree(s, cp, ct, rt, 0)
    with pytest.raises(TypeError, match=r"num_nodes: expected an int, got bool"):
        sk.select_tree(s, cp, ct, rt, True)
    with pytest.raises(ValueError, match=r"out.tokens: expected shape \[2, 3\], got \(2, 4\)"):
        sk.select_tree(
            s,
            cp,
            ct,
            rt,
            3,
            out=sk.SelectedTree(
                torch.empty(2, 3, dtype=torch.int32),
                torch.empty(2, 4, dtype=torch.int64),
                torch.empty(2, 3, dtype=torch.int32),
            ),
        )
    with pytest.raises(ValueError, match=r"all tensors must be on one device"):
        sk.select_tree(s, cp, ct, rt.to("meta"), 3)
    if _registered("select_tree", "cpu"):
        p, t, sel = (
            torch.empty(2, 7, dtype=torch.int32),
            torch.empty(2, 7, dtype=torch.int64),
            torch.empty(2, 7, dtype=torch.int32),
        )
        with pytest.raises(RuntimeError, match=r"expected 1 <= N <= M \+ 1 = 6 output nodes, got N = 7"):
            torch.ops.specdec.select_tree(s, cp, ct, rt, p, t, sel)


# ---------------------------------------------------------------------------------------------------
# Result tuples: named fields, Tree.empty / SelectedTree.empty, out= takes exactly the result type


def test_result_tuples_have_named_fields():
    assert sk.Tree._fields == ("depth", "mask", "first_child", "next_sibling", "valid")
    assert sk.SelectedTree._fields == ("parents", "tokens", "selected")
    assert sk.TreePaths._fields == ("paths", "num_paths")
    scores, cparents, ctokens, root = eagle_candidates(B=2, top_k=3, depth=2, seed=0)
    sel = sk.select_tree(scores, cparents, ctokens, root, 5, backend="torch")
    assert type(sel) is sk.SelectedTree
    parents, tokens, selected = sel  # still unpacks as a tuple
    assert parents is sel.parents and tokens is sel.tokens and selected is sel.selected
    assert sel.tokens[:, 0].tolist() == root.tolist() and sel.selected[:, 0].tolist() == [-1, -1]
    tree = sk.build_tree(sel.parents, backend="torch")
    assert type(tree) is sk.Tree and tree.valid is tree[4]


@pytest.mark.parametrize(
    "cls,fields",
    [
        (
            "Tree",
            [
                ((3, 40), torch.int32),
                ((3, 40, 2), torch.int32),
                ((3, 40), torch.int32),
                ((3, 40), torch.int32),
                ((3,), torch.bool),
            ],
        ),
        ("SelectedTree", [((3, 40), torch.int32), ((3, 40), torch.int64), ((3, 40), torch.int32)]),
    ],
)
def test_empty_allocates_the_outputs(cls, fields):
    out = getattr(sk, cls).empty(3, 40)
    assert type(out) is getattr(sk, cls)
    assert [(tuple(t.shape), t.dtype) for t in out] == fields
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in out)
    assert getattr(sk, cls).empty(0, 1, device="meta")[0].device.type == "meta"
    with pytest.raises(TypeError, match="num_nodes: expected an int, got bool"):
        getattr(sk, cls).empty(3, True)
    with pytest.raises(TypeError, match="batch: expected an int, got float"):
        getattr(sk, cls).empty(3.0, 4)


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS)
def test_select_then_build_into_empty_buffers(backend, device):
    """SelectedTree.empty + Tree.empty round trip: both ops write into (and return) the given buffers."""
    _need_kernel(backend, device, "build_tree")
    if backend != "torch":
        _need_kernel(backend, device, "select_tree")
    scores, cparents, ctokens, root = eagle_candidates(B=3, top_k=4, depth=3, seed=21)
    sel_out, tree_out = sk.SelectedTree.empty(3, 12, device), sk.Tree.empty(3, 12, device)
    sel = sk.select_tree(
        scores.to(device), cparents.to(device), ctokens.to(device), root.to(device), 12, backend=backend, out=sel_out
    )
    tree = sk.build_tree(sel.parents, backend=backend, out=tree_out)
    assert sel is sel_out and tree is tree_out
    want_sel = reference_select(scores, cparents, ctokens, root, 12)
    assert_selected_equal(sel, want_sel, "select into SelectedTree.empty")
    assert_trees_equal(
        tree, reference_tree(want_sel.parents, torch.full((3,), 12, dtype=torch.int32)), "build into Tree.empty"
    )


def test_out_must_be_the_result_tuple():
    p = torch.tensor([GOLDEN6], dtype=torch.int32)
    sel_bufs = tuple(sk.SelectedTree.empty(1, 6))
    with pytest.raises(
        TypeError,
        match=r"out: expected a Tree \(from Tree.empty\(batch, num_nodes, device\)\), "
        r"got tuple",
    ):
        sk.build_tree(p, out=tuple(sk.Tree.empty(1, 6)))
    with pytest.raises(TypeError, match=r"out: expected a Tree .*got SelectedTree"):
        sk.build_tree(p, out=sk.SelectedTree(*sel_bufs))
    with pytest.raises(TypeError, match=r"out: expected a Tree .*got list"):
        sk.build_tree(p, out=list(sk.Tree.empty(1, 6)))
    s, cp = torch.zeros(1, 5), torch.full((1, 5), -1, dtype=torch.int32)
    ct, rt = torch.zeros(1, 5, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(
        TypeError,
        match=r"out: expected a SelectedTree \(from SelectedTree.empty\(batch, num_nodes, "
        r"device\)\), got tuple",
    ):
        sk.select_tree(s, cp, ct, rt, 6, out=sel_bufs)
    with pytest.raises(TypeError, match=r"out: expected a SelectedTree .*got Tree"):
        sk.select_tree(s, cp, ct, rt, 6, out=sk.Tree.empty(1, 6))
    with pytest.raises(TypeError, match=r"num_nodes: expected an int, got bool"):
        sk.build_tree(p, True)
    with pytest.raises(TypeError, match=r"num_nodes: expected an int, got float"):
        sk.build_tree(p, 6.0)


# ---------------------------------------------------------------------------------------------------
# tree_paths


@pytest.mark.parametrize("backend,device", BUILD_BACKENDS + [pytest.param(None, "cpu", id="auto-cpu")])
def test_tree_paths_golden(backend, device):
    """On every backend of build_tree, and with the automatic choice on CPU (the cpu backend when built)."""
    if backend is not None:
        _need_kernel(backend, device, "build_tree")
    parents = torch.tensor([GOLDEN6, [-1, 0, 0, 1, 1, 2], [-1, 0, 1, 2, 5, 0]], dtype=torch.int32)
    parents[1, 0] = 0  # invalid: no paths
    res = sk.tree_paths(parents.to(device), torch.tensor([6, 6, 4], dtype=torch.int32, device=device), backend=backend)
    assert isinstance(res, sk.TreePaths) and res.paths.device.type == device
    paths, num = res
    assert num.tolist() == [3, 0, 1]
    assert paths.shape == (3, 3, 4)
    assert paths[0].tolist() == [[0, 1, 3, -1], [0, 1, 4, -1], [0, 2, 5, -1]]
    assert paths[1].tolist() == [[-1] * 4] * 3
    assert paths[2].tolist() == [[0, 1, 2, 3], [-1] * 4, [-1] * 4]
    single, n1 = sk.tree_paths(torch.tensor([[-1]], dtype=torch.int32, device=device), backend=backend)
    assert single.tolist() == [[[0]]] and n1.tolist() == [1]
    ints = sk.tree_paths(parents[:1].to(device), 3, backend=backend)  # num_nodes as an int
    assert ints.paths.tolist() == [[[0, 1], [0, 2]]] and ints.num_paths.tolist() == [2]


def test_tree_paths_does_not_force_the_torch_backend_on_cpu(monkeypatch):
    """The build_tree inside tree_paths takes the automatic choice (the cpu kernel when built)."""
    chosen = []
    op = sk.get_op("build_tree")
    choose = op.choose
    monkeypatch.setattr(op, "choose", lambda *a, backend=None: chosen.append(choose(*a, backend=backend)) or chosen[-1])
    sk.tree_paths(torch.tensor([GOLDEN6], dtype=torch.int32))
    assert chosen == [op.default_backend("cpu")]


# ---------------------------------------------------------------------------------------------------
# opcheck, torch.compile, CUDA graphs


def _opcheck_ops():
    ops = []
    for name in ("build_tree", "select_tree"):
        for suffix in ("", "_triton"):
            if _registered(name + suffix, "cpu"):
                ops.append(pytest.param(name + suffix, id=name + suffix))
            else:
                ops.append(
                    pytest.param(
                        name + suffix,
                        id=name + suffix,
                        marks=pytest.mark.skip(reason=f"specdec::{name}{suffix} has no CPU kernel"),
                    )
                )
    return ops


@pytest.mark.parametrize("op", _opcheck_ops())
def test_opcheck(op):
    if op.startswith("build_tree"):
        parents, num_nodes = make_batch(3, 9, seed=2, ragged=True)
        args = (parents, num_nodes, *sk.Tree.empty(3, 9))
    else:
        scores, cparents, ctokens, root = eagle_candidates(B=2, top_k=3, depth=3, seed=1)
        args = (
            scores,
            cparents,
            ctokens,
            root,
            torch.empty(2, 8, dtype=torch.int32),
            torch.empty(2, 8, dtype=torch.int64),
            torch.empty(2, 8, dtype=torch.int32),
        )
    torch.library.opcheck(getattr(torch.ops.specdec, op).default, args)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_build_tree_torch_compile(backend):
    if backend == "cpu" and not _registered("build_tree", "cpu"):
        pytest.skip("specdec_kernels._C has no CPU build_tree")
    torch._dynamo.reset()

    # aot_eager: Dynamo (fullgraph) + AOT functionalisation of the out-variant + the fake kernels, which is
    # what can break; Inductor's code generation adds ~45 s of cold compile on a small CPU machine.
    @torch.compile(fullgraph=True, backend="aot_eager")
    def depth_and_mask(parents, num_nodes):
        t = sk.build_tree(parents, num_nodes, backend=backend)
        return t.depth * 2, t.mask, t.first_child, t.next_sibling, t.valid

    parents, num_nodes = make_batch(3, 7, seed=8, ragged=True)
    got = depth_and_mask(parents, num_nodes)
    want = reference_tree(parents, num_nodes)
    assert_equal(got[0], want.depth * 2, "depth")
    for g, w, name in zip(got[1:], want[1:], sk.Tree._fields[1:]):
        assert_equal(g, w, name)


@pytest.mark.cuda
def test_cuda_graph_capture():
    """build_tree + select_tree on the cuda backend replay from a CUDA graph (no host sync inside)."""
    if not _registered("build_tree", "cuda"):
        pytest.skip("specdec_kernels._C was built without CUDA kernels")
    scores, cparents, ctokens, root = eagle_candidates(B=8, top_k=10, depth=5, seed=12)
    ins = [t.cuda() for t in (scores, cparents, ctokens, root)]
    sel_out = sk.SelectedTree.empty(8, 60, "cuda")
    tree_out = sk.Tree.empty(8, 60, "cuda")
    num_nodes = torch.full((8,), 60, dtype=torch.int32, device="cuda")

    def step():
        sk.select_tree(*ins, 60, backend="cuda", out=sel_out)
        sk.build_tree(sel_out[0], num_nodes, backend="cuda", out=tree_out)

    step()  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    new = eagle_candidates(B=8, top_k=10, depth=5, seed=13)
    for dst, src in zip(ins, new):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    want_sel = reference_select(*new, 60)
    assert_selected_equal(sel_out, want_sel, "graph select")
    assert_trees_equal(tree_out, reference_tree(want_sel[0], num_nodes.cpu()), "graph build")


@pytest.mark.cuda
def test_cuda_refuses_too_large():
    parents = torch.full((1, 1025), 0, dtype=torch.int32, device="cuda")
    with pytest.raises(BackendError, match=r"N = 1025 > 1024 nodes"):
        sk.build_tree(parents, backend="cuda")
    s = torch.zeros(1, 4097, device="cuda")
    with pytest.raises(BackendError, match=r"M = 4097 > 4096 candidates"):
        sk.select_tree(
            s,
            torch.full((1, 4097), -1, dtype=torch.int32, device="cuda"),
            torch.zeros(1, 4097, dtype=torch.int64, device="cuda"),
            torch.zeros(1, dtype=torch.int64, device="cuda"),
            3,
            backend="cuda",
        )


def test_reference_rank_golden():
    """The oracle's own ranking: higher score first, ties to the lower index, NaN after -inf."""
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[nan, -inf, 1.0, 1.0, -0.0, 0.0, nan]])
    assert ref.rank_candidates(scores).tolist() == [[5, 4, 0, 1, 2, 3, 6]]
