"""KV-cache compaction after verification: move the accepted tree slots behind the committed prefix."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .. import _backend
from ..checks import cache_len_arg, check_tensor, same_device
from ..reference import compact as ref

_COMPACT_KV = _backend.standard_op("compact_kv", reference=ref.compact_kv, triton_module="compact")


def _as_4d(name: str, t, per_token: bool, B: Optional[int], S: Optional[int]) -> torch.Tensor:
    """The [B, X, S_max, Y] view the kernels take, without copying (raises when no view exists)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if per_token:
        if t.dim() < 2:
            raise ValueError(f"{name}: expected a per-token tensor [B, S_max, ...], got shape {tuple(t.shape)}")
        y = math.prod(t.shape[2:])
        try:
            v = t.view(t.shape[0], 1, t.shape[1], y)
        except RuntimeError as exc:
            raise ValueError(
                f"{name}: the trailing dimensions {tuple(t.shape[2:])} (strides {t.stride()[2:]}) "
                f"cannot be flattened into one without a copy; compaction works in place, so "
                f"pass a tensor whose trailing dimensions are contiguous"
            ) from exc
    else:
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a KV tensor [B, H_kv, S_max, D], got shape {tuple(t.shape)}")
        v = t
    if B is not None and (v.shape[0] != B or v.shape[2] != S):
        what = "[B, S_max, ...]" if per_token else "[B, H_kv, S_max, D]"
        raise ValueError(
            f"{name}: expected {what} with B = {B}, S_max = {S} (as the first cache), got shape {tuple(t.shape)}"
        )
    if v.shape[3] > 1 and v.stride(3) != 1:
        raise ValueError(
            f"{name}: the last dimension must have unit stride (rows are copied as bytes), got strides {t.stride()}"
        )
    return v


def compact_kv(
    caches: Sequence[torch.Tensor],
    cache_len: Union[torch.Tensor, int],
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
    *,
    per_token: Sequence[torch.Tensor] = (),
    backend: Optional[str] = None,
) -> None:
    """Move the accepted tree slots of every cache to the end of the committed prefix, in place, in one op.

    For each request b and j < accept_len[b]: slot cache_len[b] + accept_nodes[b, j] moves to slot
    cache_len[b] + j, in every tensor of `caches` (K and V of every layer) and `per_token`. cache_len is
    not changed: the caller adds accept_len afterwards.

    Args:
        caches: KV tensors [B, H_kv, S_max, D] (any strides along B, H_kv, S_max; unit stride along D).
        cache_len: int32 [B], committed tokens per request (the tree's slots start there), or an int for
            every request.
        accept_nodes: int32 [B, W], the accepted path from verify_*: root first (accept_nodes[b, 0] = 0),
            strictly increasing, -1 padded.
        accept_len: int32 [B], path lengths (>= 1).
        per_token: tensors [B, S_max, ...] moved with the same indices (e.g. the draft's input features);
            their trailing dimensions must flatten without a copy.
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels.get_op).

    Dtypes may differ between tensors (the kernels copy bytes); all share B, S_max and one device, and no
    tensor may appear twice. Overlap is safe for a valid path: accept_nodes[b, j] >= j, so every source is
    at or above its destination and a copy in increasing j never reads a slot it already overwrote.
    Values are never checked (no host synchronisation): entries with accept_nodes < 0, j >= W, or a
    source or destination outside [0, S_max) move nothing; accept_nodes that are not increasing give
    backend-dependent results.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> k = torch.arange(8.0).view(1, 1, 8, 1)           # slot s holds s; tree slots start at 3
        >>> accept_nodes = torch.tensor([[0, 2, 4, -1]], dtype=torch.int32)
        >>> sk.compact_kv([k], 3, accept_nodes, torch.tensor([3], dtype=torch.int32))
        >>> k.flatten().tolist()                             # slots 5 and 7 moved to 4 and 5
        [0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 6.0, 7.0]
    """
    if isinstance(caches, torch.Tensor) or isinstance(per_token, torch.Tensor):
        raise TypeError("caches / per_token: expected a list or tuple of tensors, got a single tensor")
    check_tensor("accept_nodes", accept_nodes, dtype=torch.int32, ndim=2)
    B = accept_nodes.shape[0]
    cache_len = cache_len_arg(cache_len, B, accept_nodes.device)
    check_tensor("accept_len", accept_len, dtype=torch.int32, shape=(B,))
    # The decode loop calls this once per pass with every layer's K and V (60-160 tensors): the common case
    # (4-D caches, all on one device) is checked in one cheap pass per tensor; anything else goes through
    # _as_4d and same_device, which say exactly what is wrong.
    dev = accept_nodes.device
    views, where = [], []  # where: (argument name, index) of each view, for the messages
    S = None  # S_max of the first tensor: every other must match
    checked_all = True  # every view passed the fast check (device included)
    for name, ts, per in (("caches", caches, False), ("per_token", per_token, True)):
        for i, t in enumerate(ts):
            sh = t.shape if isinstance(t, torch.Tensor) else None
            if (
                not per
                and sh is not None
                and len(sh) == 4
                and sh[0] == B
                and (S is None or sh[2] == S)
                and (sh[3] <= 1 or t.stride(3) == 1)
                and t.device == dev
            ):
                v = t
            else:
                checked_all = False
                v = _as_4d(f"{name}[{i}]", t, per, *((B, S) if S is not None else (None, None)))
                if S is None and v.shape[0] != B:
                    raise ValueError(
                        f"{name}[{i}]: expected batch B = {B} (the rows of accept_nodes), got shape {tuple(t.shape)}"
                    )
            if S is None:
                S = v.shape[2]
            views.append(v)
            where.append((name, i))
    named = {f"{n}[{i}]": v for (n, i), v in zip(where, views)} if not checked_all else {}
    same_device(cache_len=cache_len, accept_nodes=accept_nodes, accept_len=accept_len, **named)
    ptrs = [v.data_ptr() for v in views]
    if len(set(ptrs)) != len(ptrs):  # some tensors start at one address: the same memory passed twice?
        seen = {}
        for (n, i), v in zip(where, views):
            key = (v.data_ptr(), tuple(v.shape), v.stride(), v.dtype)
            if v.numel() and key in seen:
                raise ValueError(f"{n}[{i}] is the same memory as {seen[key]}: it would be moved twice")
            seen[key] = f"{n}[{i}]"
    views = [v for v in views if v.numel() > 0]
    if not views or B == 0 or accept_nodes.shape[1] == 0:
        return None
    _COMPACT_KV(views, cache_len.contiguous(), accept_nodes.contiguous(), accept_len.contiguous(), backend=backend)
    return None
