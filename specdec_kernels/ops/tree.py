"""Tree construction: build_tree, select_tree, tree_paths and their result tuples.

The tree representation: node 0 is the root, nodes are in topological order
(parents[b, i] < i), rows at or past num_nodes[b] are padding. build_tree derives everything the other
ops need from `parents`; select_tree is EAGLE-2's reranking from drafted candidates to a tree. Ops with
`out=` take exactly their result tuple, allocated by its `empty(batch, num_nodes, device)`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from .. import _backend
from .._limits import MAX_CANDIDATES, MAX_TREE_NODES
from ..checks import check_tensor, int_arg, same_device
from ..reference import tree as ref
from .masks import mask_words
from .result_buffers import check_result_out, empty_result


class Tree(NamedTuple):
    """What build_tree derives from `parents` (all int32 [B, N] unless noted).

    depth: root 0. mask: int32 [B, N, W], W = mask_words(N): bit j of row i (word j // 32, bit j % 32,
    little-endian) set iff node j is i or an ancestor of i. first_child / next_sibling: -1 = none,
    siblings in increasing index order. valid: bool [B], False for a malformed tree (then every row is
    padding: depth 0, mask 0, links -1). `Tree.empty(batch, num_nodes, device)` allocates buffers for
    build_tree(out=...).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32))
        >>> tree.depth.tolist(), tree.first_child.tolist(), tree.next_sibling.tolist()
        ([[0, 1, 1, 2]], [[1, 3, -1, -1]], [[-1, 2, -1, -1]])
        >>> tree.valid.tolist()
        [True]
    """

    depth: torch.Tensor
    mask: torch.Tensor
    first_child: torch.Tensor
    next_sibling: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(cls, batch: int, num_nodes: int, device=None) -> "Tree":
        """Uninitialised output buffers for build_tree(out=...), e.g. allocated once before a CUDA graph capture.

        Example:
            >>> import torch, specdec_kernels as sk
            >>> out = sk.Tree.empty(2, 40)
            >>> [tuple(t.shape) for t in out]
            [(2, 40), (2, 40, 2), (2, 40), (2, 40), (2,)]
            >>> parents = torch.arange(-1, 39, dtype=torch.int32).repeat(2, 1)     # two chains of 40 nodes
            >>> sk.build_tree(parents, out=out) is out
            True
        """
        return empty_result(cls, _tree_layout, batch, num_nodes, device)


class SelectedTree(NamedTuple):
    """What select_tree keeps of the drafted candidates (all [B, N], root first).

    parents: int32, the tree's parents (-1 for the root), to pass to build_tree. tokens: int64, the root
    token then the chosen candidates' tokens. selected: int32, node i's candidate index (-1 for the root).
    `SelectedTree.empty(batch, num_nodes, device)` allocates buffers for select_tree(out=...).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> sel = sk.select_tree(torch.tensor([[-0.5, -0.1, -2.0]]), torch.tensor([[-1, -1, 0]], dtype=torch.int32),
        ...                      torch.tensor([[10, 11, 12]]), torch.tensor([7]), num_nodes=3)
        >>> sel.parents.tolist(), sel.tokens.tolist(), sel.selected.tolist()
        ([[-1, 0, 0]], [[7, 10, 11]], [[-1, 0, 1]])
    """

    parents: torch.Tensor
    tokens: torch.Tensor
    selected: torch.Tensor

    @classmethod
    def empty(cls, batch: int, num_nodes: int, device=None) -> "SelectedTree":
        """Uninitialised output buffers for select_tree(out=...), e.g. allocated once before a CUDA graph capture.

        Example:
            >>> import specdec_kernels as sk
            >>> out = sk.SelectedTree.empty(4, 60, "cpu")
            >>> [(tuple(t.shape), t.dtype) for t in out]
            [((4, 60), torch.int32), ((4, 60), torch.int64), ((4, 60), torch.int32)]
        """
        return empty_result(cls, _selected_layout, batch, num_nodes, device)


class TreePaths(NamedTuple):
    """tree_paths' output: paths int64 [B, L, D + 1] (root-to-leaf node indices, -1 padded) and num_paths
    int64 [B] (how many rows of paths[b] are paths).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> sk.tree_paths(torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32)).num_paths.tolist()
        [2]
    """

    paths: torch.Tensor
    num_paths: torch.Tensor


# The buffers of each result tuple that takes `out=`: [(shape, dtype)] per field, for `empty` and `check_result_out`.
def _tree_layout(B: int, N: int) -> list:
    return [
        ((B, N), torch.int32),
        ((B, N, mask_words(N)), torch.int32),
        ((B, N), torch.int32),
        ((B, N), torch.int32),
        ((B,), torch.bool),
    ]


def _selected_layout(B: int, N: int) -> list:
    return [((B, N), torch.int32), ((B, N), torch.int64), ((B, N), torch.int32)]


def _kernel_limit(backend, parents, num_nodes, *outs):
    if backend in ("cuda", "triton") and parents.shape[1] > MAX_TREE_NODES:
        return f"N = {parents.shape[1]} > {MAX_TREE_NODES} nodes (one tree per thread block)"
    return None


_BUILD_TREE = _backend.standard_op("build_tree", reference=ref.build_tree, triton_module="tree", limits=_kernel_limit)


def build_tree(
    parents: torch.Tensor,
    num_nodes: Union[torch.Tensor, int, None] = None,
    *,
    backend: Optional[str] = None,
    out: Optional[Tree] = None,
) -> Tree:
    """Derive depth, packed ancestor mask, child/sibling links and validity from `parents`.

    Args:
        parents: int32 [B, N]; parents[b, 0] = -1 and 0 <= parents[b, i] < i for 0 < i < num_nodes[b].
        num_nodes: int32 [B] on the device of `parents` (ragged trees), an int for all, or None for N.
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels.get_op).
        out: a Tree of buffers to write into (from Tree.empty(B, N, device)); allocated when None.

    Returns:
        Tree(depth, mask, first_child, next_sibling, valid) (`out` itself when given). Malformed trees
        (parent out of range or not below its child, root parent not -1, num_nodes outside [1, N]) get
        valid = False and all-padding rows; nothing raises on tensor values, so the op never synchronises
        with the host.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32))
        >>> tree.depth.tolist(), tree.mask[0, :, 0].tolist()      # node 3's row: bits 0, 1 and 3
        ([[0, 1, 1, 2]], [1, 3, 5, 11])
    """
    check_tensor("parents", parents, dtype=torch.int32, ndim=2)
    B, N = parents.shape
    if N < 1:
        raise ValueError(f"parents: expected at least one node (the root), got shape {tuple(parents.shape)}")
    dev = parents.device
    if num_nodes is None or not isinstance(num_nodes, torch.Tensor):
        n = N if num_nodes is None else int_arg("num_nodes", num_nodes)
        num_nodes = torch.full((B,), n, dtype=torch.int32, device=dev)
    check_tensor("num_nodes", num_nodes, dtype=torch.int32, shape=(B,))
    same_device(parents=parents, num_nodes=num_nodes)
    if out is None:
        out = Tree.empty(B, N, dev)
    else:
        check_result_out(out, Tree, _tree_layout, B, N, dev)
    if B == 0:
        return out
    parents = parents.contiguous()
    num_nodes = num_nodes.contiguous()
    _BUILD_TREE(parents, num_nodes, *out, backend=backend)
    return out


def _select_limit(backend, cand_scores, cand_parents, cand_tokens, root_tokens, parents, tokens, selected):
    if backend in ("cuda", "triton") and cand_scores.shape[1] > MAX_CANDIDATES:
        return f"M = {cand_scores.shape[1]} > {MAX_CANDIDATES} candidates (one row per thread block)"
    return None


_SELECT_TREE = _backend.standard_op(
    "select_tree", reference=ref.select_tree, triton_module="tree", limits=_select_limit
)


def select_tree(
    cand_scores: torch.Tensor,
    cand_parents: torch.Tensor,
    cand_tokens: torch.Tensor,
    root_tokens: torch.Tensor,
    num_nodes: int,
    *,
    backend: Optional[str] = None,
    out: Optional[SelectedTree] = None,
) -> SelectedTree:
    """EAGLE-2 reranking: keep the best num_nodes - 1 drafted candidates as a tree under the root.

    Args:
        cand_scores: float32 [B, M], cumulative draft log-probabilities of the candidates.
        cand_parents: int32 [B, M], the parent's candidate index (-1: child of the root); parents have
            lower indices than their children (candidates are listed level by level).
        cand_tokens: int64 [B, M], the candidates' tokens.
        root_tokens: int64 [B], the token of the root (the last accepted token).
        num_nodes: N, nodes of the output tree, root included; 1 <= N <= M + 1.
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels.get_op).
        out: a SelectedTree of buffers to write into (from SelectedTree.empty(B, N, device)).

    Returns:
        SelectedTree(parents int32 [B, N], tokens int64 [B, N], selected int32 [B, N]) (`out` itself
        when given): the chosen candidates in increasing candidate order after the root, so the tree is
        topologically ordered; selected[b, i] is node i's candidate index (-1 for the root). Ranking:
        higher score, then lower index; NaN scores rank last. A chosen candidate whose parent was not
        chosen gets parents[b, i] = i, which build_tree reports as an invalid tree (this can only happen
        with positive log-probabilities).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> scores = torch.tensor([[-0.1, -2.0, -0.3]])                 # candidate 1 ranks last
        >>> sel = sk.select_tree(scores, torch.tensor([[-1, -1, 0]], dtype=torch.int32),
        ...                      torch.tensor([[5, 6, 7]]), torch.tensor([9]), num_nodes=3)
        >>> sel.parents.tolist(), sel.tokens.tolist()                   # candidate 2 hangs under 0
        ([[-1, 0, 1]], [[9, 5, 7]])
    """
    check_tensor("cand_scores", cand_scores, dtype=torch.float32, ndim=2)
    B, M = cand_scores.shape
    check_tensor("cand_parents", cand_parents, dtype=torch.int32, shape=(B, M))
    check_tensor("cand_tokens", cand_tokens, dtype=torch.int64, shape=(B, M))
    check_tensor("root_tokens", root_tokens, dtype=torch.int64, shape=(B,))
    dev = same_device(
        cand_scores=cand_scores, cand_parents=cand_parents, cand_tokens=cand_tokens, root_tokens=root_tokens
    )
    N = int_arg("num_nodes", num_nodes)
    if not 1 <= N <= M + 1:
        raise ValueError(f"num_nodes: expected 1 <= num_nodes <= M + 1 = {M + 1} (M candidates), got {N}")
    if out is None:
        out = SelectedTree.empty(B, N, dev)
    else:
        check_result_out(out, SelectedTree, _selected_layout, B, N, dev)
    if B == 0:
        return out
    args = [t.contiguous() for t in (cand_scores, cand_parents, cand_tokens, root_tokens)]
    _SELECT_TREE(*args, *out, backend=backend)
    return out


def tree_paths(
    parents: torch.Tensor, num_nodes: Union[torch.Tensor, int, None] = None, *, backend: Optional[str] = None
) -> TreePaths:
    """Root-to-leaf paths in EAGLE's `retrieve_indices` layout (a host-side porting helper: it syncs).

    Args:
        parents, num_nodes: as for build_tree.
        backend: the backend of the build_tree call inside; None chooses (see specdec_kernels.get_op).

    Returns:
        TreePaths(paths int64 [B, L, D + 1], num_paths int64 [B]) on the device of `parents`: row l of
        request b lists the node indices from the root to its l-th leaf (leaves in increasing node index),
        -1 padded; L and D are the largest leaf count and depth over the batch (at least 1 and 0).
        Invalid trees have no paths.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> paths, num_paths = sk.tree_paths(torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32))
        >>> paths[0].tolist(), num_paths.tolist()
        ([[0, 2, -1], [0, 1, 3]], [2])
    """
    tree = build_tree(parents, num_nodes, backend=backend)
    B, N = parents.shape
    dev = parents.device
    n = num_nodes if isinstance(num_nodes, torch.Tensor) else torch.full((B,), N if num_nodes is None else num_nodes)
    live = torch.arange(N, device=dev)[None, :] < n.to(dev)[:, None]
    leaf = (live & (tree.first_child < 0) & tree.valid[:, None]).cpu()
    par = parents.cpu().tolist()
    rows = []
    for b in range(B):
        rows.append([])
        for i in torch.nonzero(leaf[b]).flatten().tolist():
            path = [i]
            while path[-1] != 0:
                path.append(par[b][path[-1]])
            rows[b].append(path[::-1])
    L = max([len(r) for r in rows] + [1])
    D1 = max([len(p) for r in rows for p in r] + [1])
    out = torch.full((B, L, D1), -1, dtype=torch.int64)
    for b, r in enumerate(rows):
        for l, p in enumerate(r):
            out[b, l, : len(p)] = torch.tensor(p)
    return TreePaths(out.to(dev), torch.tensor([len(r) for r in rows], dtype=torch.int64, device=dev))
