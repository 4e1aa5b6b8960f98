"""Tree attention: queries of tree nodes over the committed KV prefix plus their visible tree keys.

One op serves the target's verification pass (Nq = N tree nodes, build_tree's mask) and the draft's tree
expansion (Nq = the frontier nodes, mask bits pointing at every node expanded so far); with Nq = 1 and a
full mask row it is plain decoding.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .. import _backend
from .._limits import MAX_HEAD_DIM
from ..checks import FLOAT_DTYPES, cache_len_arg, check_out, check_tensor, is_number, same_device
from ..reference import attention as ref


def _attn_limit(backend, q, k_cache, v_cache, cache_len, tree_mask, scale, out):
    if backend in ("cuda", "triton") and q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim D = {q.shape[-1]} > {MAX_HEAD_DIM}"
    if backend == "triton" and q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return "bf16 is unreliable under the Triton interpreter (TRITON_INTERPRET=1); use a GPU"
    return None


_TREE_ATTENTION = _backend.standard_op(
    "tree_attention", reference=ref.tree_attention, triton_module="attention", limits=_attn_limit
)


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: Union[torch.Tensor, int],
    tree_mask: torch.Tensor,
    *,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention of tree queries over a KV cache whose tree keys follow the committed prefix.

    Query i of request b sees every key slot s < cache_len[b], and slot cache_len[b] + j iff bit j of
    tree_mask[b, i] is set (word j // 32, bit j % 32, little-endian: the layout of build_tree's mask).
    Nq need not equal the number of tree keys: the draft's expansion queries only its frontier nodes while
    their mask bits point at every node written so far.

    Args:
        q: [B, H, Nq, D], fp32/fp16/bf16. Any strides (copied to contiguous when not).
        k_cache, v_cache: [B, H_kv, S_max, D], the dtype of q; any strides along B, H_kv and S_max
            (e.g. one layer of a larger preallocated buffer), unit stride along D.
        cache_len: int32 [B], committed tokens per request, or an int for every request.
        tree_mask: int32 [B, Nq, W], W >= 1 words of tree-key bits per query.
        scale: softmax scale; None for 1 / sqrt(D).
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels.get_op).
        out: contiguous [B, H, Nq, D] buffer of q's dtype; allocated when None.

    Returns:
        out = softmax(scale * q k^T over the visible slots) v, with the softmax in fp32. H must be a
        multiple of H_kv (grouped-query attention: query head h reads KV head h // (H // H_kv)). A query
        row with no visible key gets zeros (not NaN).

    Values are never checked (that would synchronise with the host): the caller keeps
    cache_len[b] + (highest set bit of any row of request b) < S_max. Bits that point at or past S_max are
    ignored, and cache_len[b] >= S_max makes the whole cache visible as prefix.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> q = torch.ones(1, 1, 2, 1)                                  # 2 tree queries, D = 1
        >>> k = torch.zeros(1, 1, 4, 1)                                 # equal scores: a plain average
        >>> v = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 4, 1)
        >>> tree = sk.build_tree(torch.tensor([[-1, 0]], dtype=torch.int32))   # tree keys at slots 2, 3
        >>> sk.tree_attention(q, k, v, 2, tree.mask).flatten().tolist()      # query 1 sees slots 0..3
        [2.0, 2.5]
    """
    check_tensor("q", q, dtypes=FLOAT_DTYPES, ndim=4)
    B, H, Nq, D = q.shape
    check_tensor("k_cache", k_cache, dtype=q.dtype, ndim=4)
    H_kv, S_max = k_cache.shape[1], k_cache.shape[2]
    if k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(
            f"k_cache: expected shape [B={B}, H_kv, S_max, D={D}] to match q {tuple(q.shape)}, "
            f"got {tuple(k_cache.shape)}"
        )
    check_tensor("v_cache", v_cache, dtype=q.dtype, shape=tuple(k_cache.shape))
    cache_len = cache_len_arg(cache_len, B, q.device)
    check_tensor("tree_mask", tree_mask, dtype=torch.int32, shape=(B, Nq, None))
    dev = same_device(q=q, k_cache=k_cache, v_cache=v_cache, cache_len=cache_len, tree_mask=tree_mask)
    if H_kv < 1 or H % H_kv != 0:
        raise ValueError(f"q has H = {H} heads, not a multiple of the H_kv = {H_kv} heads of k_cache (GQA)")
    if tree_mask.shape[2] < 1:
        raise ValueError(f"tree_mask: expected at least one int32 word per row, got shape {tuple(tree_mask.shape)}")
    if S_max < 1:
        raise ValueError(f"k_cache: expected S_max >= 1 slots, got shape {tuple(k_cache.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if D > 1 and t.stride(3) != 1:
            raise ValueError(f"{name}: the head dimension D must have unit stride, got strides {t.stride()}")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    if not is_number(scale):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float, got {scale}")
    if out is None:
        out = torch.empty(B, H, Nq, D, dtype=q.dtype, device=dev)
    else:
        check_out("out", out, (B, H, Nq, D), q.dtype, dev)
    if out.numel() == 0:
        return out
    _TREE_ATTENTION(
        q.contiguous(), k_cache, v_cache, cache_len.contiguous(), tree_mask.contiguous(), scale, out, backend=backend
    )
    return out
