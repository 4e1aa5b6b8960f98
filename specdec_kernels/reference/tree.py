"""PyTorch reference of the tree ops: the specification and the oracle of the tests.

Written for clarity, not speed: loops over node index are vectorised over the batch only.
"""

from __future__ import annotations

import torch


def build_tree(
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    depth: torch.Tensor,
    mask: torch.Tensor,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    valid: torch.Tensor,
) -> None:
    """Fill depth, mask, first_child, next_sibling, valid from parents (see ops.tree.build_tree).

    A tree b is valid iff 1 <= num_nodes[b] <= N, parents[b, 0] == -1 and 0 <= parents[b, i] < i for
    every 0 < i < num_nodes[b]. Rows at or past num_nodes[b] are padding; an invalid tree is all padding.
    """
    B, N = parents.shape
    W = mask.shape[-1]
    dev = parents.device
    p = parents.to(torch.int64)
    n = num_nodes.to(torch.int64)
    idx = torch.arange(N, device=dev)
    live = idx[None, :] < n[:, None]  # [B, N]
    ok_parent = (p >= 0) & (p < idx[None, :])
    ok_parent[:, 0] = p[:, 0] == -1
    ok = ((n >= 1) & (n <= N)) & (ok_parent | ~live).all(dim=1)  # [B]
    live = live & ok[:, None]

    d = torch.zeros(B, N, dtype=torch.int64, device=dev)
    words = torch.zeros(B, N, W, dtype=torch.int64, device=dev)  # int64 holds 32 bits without sign trouble
    safe_p = torch.where(live, p, torch.zeros_like(p)).clamp(min=0)
    ar = torch.arange(B, device=dev)
    for i in range(N):
        own = torch.zeros(B, W, dtype=torch.int64, device=dev)
        own[:, i // 32] = 1 << (i % 32)
        if i == 0:
            row, di = own, torch.zeros(B, dtype=torch.int64, device=dev)
        else:
            par = safe_p[:, i]
            row = words[ar, par] | own
            di = d[ar, par] + 1
        li = live[:, i]
        words[:, i] = torch.where(li[:, None], row, torch.zeros_like(row))
        d[:, i] = torch.where(li, di, torch.zeros_like(di))

    # Children in increasing index order: first_child = smallest child, next_sibling = next larger one.
    fc = torch.full((B, N), -1, dtype=torch.int64, device=dev)
    ns = torch.full((B, N), -1, dtype=torch.int64, device=dev)
    last = torch.full((B, N), -1, dtype=torch.int64, device=dev)  # last child seen so far, per parent
    for i in range(1, N):
        li = live[:, i]
        par = safe_p[:, i]
        prev = last[ar, par]
        has_prev = li & (prev >= 0)
        first = li & (prev < 0)
        fc[ar, par] = torch.where(first, torch.full_like(par, i), fc[ar, par])
        ns[ar, prev.clamp(min=0)] = torch.where(has_prev, torch.full_like(par, i), ns[ar, prev.clamp(min=0)])
        last[ar, par] = torch.where(li, torch.full_like(par, i), prev)

    # Bit 31 makes an int32 word negative: wrap the unsigned value into int32's range.
    words = torch.where(words >= 2**31, words - 2**32, words)
    depth.copy_(d.to(depth.dtype))
    mask.copy_(words.to(mask.dtype))
    first_child.copy_(fc.to(first_child.dtype))
    next_sibling.copy_(ns.to(next_sibling.dtype))
    valid.copy_(ok)


def select_tree(
    cand_scores: torch.Tensor,
    cand_parents: torch.Tensor,
    cand_tokens: torch.Tensor,
    root_tokens: torch.Tensor,
    parents: torch.Tensor,
    tokens: torch.Tensor,
    selected: torch.Tensor,
) -> None:
    """EAGLE-2 reranking (see ops.tree.select_tree): the best N-1 candidates, kept in candidate order.

    Ranking: higher score first, ties to the lower candidate index, NaN below every number (-inf too).
    A chosen candidate whose parent candidate was not chosen (or is out of range: < -1 or >= M) gets
    itself as parent (node i -> i), so build_tree flags the tree invalid instead of silently attaching
    it elsewhere.
    """
    B, M = cand_scores.shape
    N = parents.shape[1]
    dev = cand_scores.device
    chosen = rank_candidates(cand_scores) < N - 1  # [B, M]
    node_of = torch.cumsum(chosen.to(torch.int64), dim=1)  # node index of chosen candidates
    node_of = torch.where(chosen, node_of, torch.full_like(node_of, -1))

    cp = cand_parents.to(torch.int64)
    par_node = torch.gather(node_of, 1, cp.clamp(min=0, max=M - 1))
    par_node = torch.where(cp == -1, torch.zeros_like(cp), par_node)
    orphan = (cp < -1) | (cp >= M) | (par_node < 0)  # parent dropped or out of range
    par_node = torch.where(orphan, node_of, par_node)

    # Scatter into N+1 columns; dropped candidates go to the spare last column, then cut off.
    dest = torch.where(chosen, node_of, torch.full_like(node_of, N))
    cand_idx = torch.arange(M, device=dev).expand(B, M)
    out_par = torch.full((B, N + 1), -1, dtype=torch.int64, device=dev).scatter(1, dest, par_node)
    out_tok = torch.full((B, N + 1), -1, dtype=torch.int64, device=dev).scatter(1, dest, cand_tokens.to(torch.int64))
    out_sel = torch.full((B, N + 1), -1, dtype=torch.int64, device=dev).scatter(1, dest, cand_idx)
    out_par[:, 0] = -1
    out_tok[:, 0] = root_tokens.to(torch.int64)
    out_sel[:, 0] = -1
    parents.copy_(out_par[:, :N].to(parents.dtype))
    tokens.copy_(out_tok[:, :N].to(tokens.dtype))
    selected.copy_(out_sel[:, :N].to(selected.dtype))


def rank_candidates(cand_scores: torch.Tensor) -> torch.Tensor:
    """rank[b, i] = how many candidates of row b rank before candidate i.

    Order: higher score first, then lower index; NaN after every number.
    """
    M = cand_scores.shape[1]
    dev = cand_scores.device
    isnan = torch.isnan(cand_scores)
    s = torch.nan_to_num(cand_scores.to(torch.float32), nan=float("-inf"))
    idx = torch.arange(M, device=dev)
    nan_i, nan_j = isnan[:, :, None], isnan[:, None, :]  # [B, i, j]
    s_i, s_j = s[:, :, None], s[:, None, :]
    j_lower = idx[None, None, :] < idx[None, :, None]
    before = (nan_i & ~nan_j) | ((nan_i == nan_j) & ((s_j > s_i) | ((s_j == s_i) & j_lower)))
    return before.sum(dim=2)
