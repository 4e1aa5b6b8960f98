"""Tree construction: build_tree, select_tree, and exports of the packed ancestor mask.

The tree representation (DESIGN.md): node 0 is the root, nodes are in topological order
(parents[b, i] < i), rows at or past num_nodes[b] are padding. build_tree derives everything the other
ops need from `parents`; select_tree is EAGLE-2's reranking from drafted candidates to a tree.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from .. import _backend
from ..reference import tree as ref
from ._checks import check_out, check_tensor, same_device

MAX_KERNEL_NODES = 1024  # the CUDA and Triton kernels keep one tree in one thread block


class Tree(NamedTuple):
    """What build_tree derives from `parents` (all [B, N] unless noted).

    depth: int32, root 0. mask: int32 [B, N, ceil(N/32)], bit j of row i (word j // 32, bit j % 32,
    little-endian) set iff node j is i or an ancestor of i. first_child / next_sibling: int32, -1 = none,
    siblings in increasing index order. valid: bool [B], False for a malformed tree (then every row is
    padding: depth 0, mask 0, links -1).
    """

    depth: torch.Tensor
    mask: torch.Tensor
    first_child: torch.Tensor
    next_sibling: torch.Tensor
    valid: torch.Tensor


def mask_words(num_nodes: int) -> int:
    """int32 words per mask row for trees of `num_nodes` nodes."""
    return (num_nodes + 31) // 32


def empty_tree(batch: int, num_nodes: int, device=None) -> Tree:
    """Output buffers for build_tree(out=...), e.g. allocated once before a CUDA graph capture."""
    i32 = dict(dtype=torch.int32, device=device)
    return Tree(torch.empty(batch, num_nodes, **i32), torch.empty(batch, num_nodes, mask_words(num_nodes), **i32),
                torch.empty(batch, num_nodes, **i32), torch.empty(batch, num_nodes, **i32),
                torch.empty(batch, dtype=torch.bool, device=device))


def _tree_device(parents, num_nodes, *outs):
    return parents.device


def _kernel_limit(backend, parents, num_nodes, *outs):
    if backend in ("cuda", "triton") and parents.shape[1] > MAX_KERNEL_NODES:
        return f"N = {parents.shape[1]} > {MAX_KERNEL_NODES} nodes (one tree per thread block)"
    return None


def _triton_build_tree(*args):
    return torch.ops.specdec.build_tree_triton(*args)


_BUILD_TREE = _backend.standard_op("build_tree", _tree_device, extra=_kernel_limit,
                                   reference=ref.build_tree, triton=_triton_build_tree)


def build_tree(parents: torch.Tensor, num_nodes: Union[torch.Tensor, int, None] = None, *,
               backend: Optional[str] = None, out: Optional[Tree] = None) -> Tree:
    """Derive depth, packed ancestor mask, child/sibling links and validity from `parents`.

    Args:
        parents: int32 [B, N]; parents[b, 0] = -1 and 0 <= parents[b, i] < i for 0 < i < num_nodes[b].
        num_nodes: int32 [B] on the device of `parents` (ragged trees), an int for all, or None for N.
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels._backend).
        out: a Tree of buffers to write into (see empty_tree); allocated when None.

    Returns:
        Tree(depth, mask, first_child, next_sibling, valid). Malformed trees (parent out of range or not
        below its child, root parent not -1, num_nodes outside [1, N]) get valid = False and all-padding
        rows; nothing raises on tensor values, so the op never synchronises with the host.
    """
    check_tensor("parents", parents, dtype=torch.int32, ndim=2)
    B, N = parents.shape
    if N < 1:
        raise ValueError(f"parents: expected at least one node (the root), got shape {tuple(parents.shape)}")
    dev = parents.device
    if num_nodes is None or isinstance(num_nodes, int):
        num_nodes = torch.full((B,), N if num_nodes is None else num_nodes, dtype=torch.int32, device=dev)
    check_tensor("num_nodes", num_nodes, dtype=torch.int32, shape=(B,))
    same_device(parents=parents, num_nodes=num_nodes)
    if out is None:
        out = empty_tree(B, N, dev)
    else:
        if not isinstance(out, Tree):
            raise TypeError(f"out: expected a Tree (see empty_tree), got {type(out).__name__}")
        for name, t, shape, dtype in zip(Tree._fields, out, [(B, N), (B, N, mask_words(N)), (B, N), (B, N), (B,)],
                                         [torch.int32] * 4 + [torch.bool]):
            check_out(f"out.{name}", t, shape, dtype, dev)
    if B == 0:
        return out
    parents = parents.contiguous()
    num_nodes = num_nodes.contiguous()
    _BUILD_TREE(backend, parents, num_nodes, *out)
    return out


def _select_device(cand_scores, *rest):
    return cand_scores.device


def _select_limit(backend, cand_scores, cand_parents, cand_tokens, root_tokens, parents, tokens, selected):
    if backend in ("cuda", "triton") and cand_scores.shape[1] > 4096:
        return f"M = {cand_scores.shape[1]} > 4096 candidates (one row per thread block)"
    return None


def _triton_select_tree(*args):
    return torch.ops.specdec.select_tree_triton(*args)


_SELECT_TREE = _backend.standard_op("select_tree", _select_device, extra=_select_limit,
                                    reference=ref.select_tree, triton=_triton_select_tree)


def select_tree(cand_scores: torch.Tensor, cand_parents: torch.Tensor, cand_tokens: torch.Tensor,
                root_tokens: torch.Tensor, num_nodes: int, *, backend: Optional[str] = None,
                out: Optional[tuple] = None) -> tuple:
    """EAGLE-2 reranking: keep the best num_nodes - 1 drafted candidates as a tree under the root.

    Args:
        cand_scores: float32 [B, M], cumulative draft log-probabilities of the candidates.
        cand_parents: int32 [B, M], the parent's candidate index (-1: child of the root); parents have
            lower indices than their children (candidates are listed level by level).
        cand_tokens: int64 [B, M], the candidates' tokens.
        root_tokens: int64 [B], the token of the root (the last accepted token).
        num_nodes: N, nodes of the output tree, root included; 1 <= N <= M + 1.
        out: optional (parents, tokens, selected) buffers.

    Returns:
        (parents int32 [B, N], tokens int64 [B, N], selected int32 [B, N]): the chosen candidates in
        increasing candidate order after the root, so the tree is topologically ordered; selected[b, i]
        is node i's candidate index (-1 for the root). Ranking: higher score, then lower index; NaN
        scores rank last. A chosen candidate whose parent was not chosen gets parents[b, i] = i, which
        build_tree reports as an invalid tree (this can only happen with positive log-probabilities).
    """
    check_tensor("cand_scores", cand_scores, dtype=torch.float32, ndim=2)
    B, M = cand_scores.shape
    check_tensor("cand_parents", cand_parents, dtype=torch.int32, shape=(B, M))
    check_tensor("cand_tokens", cand_tokens, dtype=torch.int64, shape=(B, M))
    check_tensor("root_tokens", root_tokens, dtype=torch.int64, shape=(B,))
    dev = same_device(cand_scores=cand_scores, cand_parents=cand_parents, cand_tokens=cand_tokens,
                      root_tokens=root_tokens)
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool):
        raise TypeError(f"num_nodes: expected an int, got {type(num_nodes).__name__}")
    if not 1 <= num_nodes <= M + 1:
        raise ValueError(f"num_nodes: expected 1 <= num_nodes <= M + 1 = {M + 1} (M candidates), got {num_nodes}")
    N = num_nodes
    if out is None:
        out = (torch.empty(B, N, dtype=torch.int32, device=dev), torch.empty(B, N, dtype=torch.int64, device=dev),
               torch.empty(B, N, dtype=torch.int32, device=dev))
    else:
        for name, t, dtype in zip(("parents", "tokens", "selected"), out, (torch.int32, torch.int64, torch.int32)):
            check_out(f"out[{name}]", t, (B, N), dtype, dev)
    if B == 0:
        return tuple(out)
    args = [t.contiguous() for t in (cand_scores, cand_parents, cand_tokens, root_tokens)]
    _SELECT_TREE(backend, *args, *out)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Exports of the packed mask for other engines (not decode-path kernels, but sync-free torch code).

def unpack_mask(mask: torch.Tensor, num_nodes: Optional[int] = None) -> torch.Tensor:
    """Packed int32 [B, N, W] ancestor mask -> dense bool [B, N, N] (dense[b, i, j]: j is i or an ancestor)."""
    check_tensor("mask", mask, dtype=torch.int32, ndim=3)
    B, N, W = mask.shape
    n = N if num_nodes is None else num_nodes
    if W * 32 < n:
        raise ValueError(f"mask: {W} words hold {32 * W} nodes, fewer than {n}")
    j = torch.arange(n, device=mask.device)
    words = mask[:, :, j // 32]                                          # [B, N, n]
    return ((words >> (j % 32).to(torch.int32)) & 1).bool()


def tree_attention_bias(mask: torch.Tensor, cache_len: Union[torch.Tensor, int], kv_len: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention bias [B, 1, N, kv_len] for SDPA-style engines over our cache layout.

    Key slot s of request b is visible to tree node i iff s < cache_len[b] (the committed prefix) or
    s = cache_len[b] + j with node j an ancestor of i (or i itself): 0 there, -inf elsewhere.
    """
    B, N, _ = mask.shape
    dense = unpack_mask(mask, N)                                         # [B, N, N]
    if isinstance(cache_len, int):
        cache_len = torch.full((B,), cache_len, dtype=torch.int32, device=mask.device)
    check_tensor("cache_len", cache_len, shape=(B,), device=mask.device)
    s = torch.arange(kv_len, device=mask.device)
    rel = s[None, :] - cache_len.to(torch.int64)[:, None]                # [B, kv_len]
    in_tree = (rel >= 0) & (rel < N)
    tree_vis = torch.gather(dense, 2, rel.clamp(0, N - 1)[:, None, :].expand(B, N, kv_len)) & in_tree[:, None, :]
    visible = (rel < 0)[:, None, :] | tree_vis                           # [B, N, kv_len]
    bias = torch.zeros(B, 1, N, kv_len, dtype=dtype, device=mask.device)
    return bias.masked_fill(~visible[:, None], float("-inf"))


def tree_paths(parents: torch.Tensor, num_nodes: Union[torch.Tensor, int, None] = None) -> tuple:
    """Root-to-leaf paths in EAGLE's `retrieve_indices` layout (a host-side porting helper: it syncs).

    Returns (paths int64 [B, L, D + 1], num_paths int64 [B]): row l of request b lists the node indices
    from the root to its l-th leaf (leaves in increasing node index), -1 padded; L and D are the largest
    leaf count and depth over the batch. Invalid trees have no paths.
    """
    tree = build_tree(parents, num_nodes, backend="torch" if parents.device.type == "cpu" else None)
    B, N = parents.shape
    has_child = tree.first_child >= 0
    n = num_nodes if isinstance(num_nodes, torch.Tensor) else torch.full((B,), N if num_nodes is None else num_nodes)
    live = torch.arange(N, device=parents.device)[None, :] < n.to(parents.device)[:, None]
    leaf = live & ~has_child & tree.valid[:, None]
    rows = []
    for b in range(B):
        rows.append([])
        par = parents[b].tolist()
        for i in torch.nonzero(leaf[b]).flatten().tolist():
            path = [i]
            while path[-1] != 0:
                path.append(par[path[-1]])
            rows[b].append(path[::-1])
    L = max([len(r) for r in rows] + [1])
    D1 = max([len(p) for r in rows for p in r] + [1])
    out = torch.full((B, L, D1), -1, dtype=torch.int64)
    for b, r in enumerate(rows):
        for l, p in enumerate(r):
            out[b, l, :len(p)] = torch.tensor(p)
    return out.to(parents.device), torch.tensor([len(r) for r in rows], dtype=torch.int64, device=parents.device)
