"""PyTorch reference of compact_kv: in-place move of the accepted tree slots to the committed prefix."""

from __future__ import annotations

from typing import Sequence

import torch


def compact_kv(
    caches: Sequence[torch.Tensor], cache_len: torch.Tensor, accept_nodes: torch.Tensor, accept_len: torch.Tensor
) -> None:
    """For j < accept_len[b]: slot cache_len[b] + accept_nodes[b, j] -> slot cache_len[b] + j, in place.

    Every tensor of `caches` is a 4-D view [B, X, S_max, Y]. Entries j with j >= W, accept_nodes[b, j] < 0
    (padding), or a source or destination slot outside [0, S_max) move nothing.

    Overlap: accept_nodes[b] is a root-to-node path in topological order, strictly increasing from 0, so
    accept_nodes[b, j] >= j: a source is never below its destination, and every slot written before step
    j (slots < j) lies below every slot read from step j on (slots >= accept_nodes[b, j] >= j). Copying in
    increasing j is therefore overlap-safe; that is what this loop does. (A kernel that copies all j at
    once must read every source before writing any destination: with [0, 2, 5], j = 1 reads slot 2 while
    j = 2 writes it.)
    """
    if len(caches) == 0:
        return
    B, W = accept_nodes.shape
    dev = accept_nodes.device
    ar = torch.arange(B, device=dev)
    base = cache_len.to(torch.int64)
    nodes = accept_nodes.to(torch.int64)
    n_acc = accept_len.to(torch.int64)
    views = [t.transpose(1, 2) for t in caches]  # [B, S_max, X, Y] views
    for j in range(W):
        src = base + nodes[:, j]
        dst = base + j
        for v in views:
            S = v.shape[1]
            move = (j < n_acc) & (nodes[:, j] >= 0) & (src >= 0) & (src < S) & (dst >= 0) & (dst < S)
            srcc, dstc = src.clamp(0, S - 1), dst.clamp(0, S - 1)
            # One destination per request and step, so the index_put below never writes a slot twice;
            # requests that move nothing write their slot's own value back.
            keep = v[ar, dstc]
            v[ar, dstc] = torch.where(move.view(B, 1, 1), v[ar, srcc], keep)
