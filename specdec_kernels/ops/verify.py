"""Tree verification: which drafted nodes the target accepts, and the bonus token.

Both ops walk from the root of each tree and return a VerifyResult of fixed-size tensors (no host
synchronisation): accept_nodes int32 [B, N] (the accepted path, root first, -1 padded), accept_len int32
[B] (path length, >= 1: the root counts), out_tokens int64 [B, N] (the tokens of the accepted nodes after
the root, then the bonus token, -1 padded: accept_len[b] entries). accept_nodes and accept_len feed
compact_kv.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from .. import _backend
from .._limits import MAX_TREE_NODES
from ..checks import FLOAT_DTYPES, check_tensor, is_int, is_number, same_device
from ..reference import verify as ref
from .result_buffers import check_result_out, empty_result
from .tree import Tree


class VerifyResult(NamedTuple):
    """What verify_greedy and verify_sample return (see the module docstring).

    accept_nodes: int32 [B, N], the accepted path, root first, -1 padded. accept_len: int32 [B], its
    length (>= 1). out_tokens: int64 [B, N], the emitted tokens (accepted drafts, then the bonus), -1
    padded. `VerifyResult.empty(batch, num_nodes, device)` allocates buffers for verify_*(out=...).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0, 1]], dtype=torch.int32))
        >>> res = sk.verify_greedy(tree, torch.tensor([[5, 6, 7]]), torch.tensor([[6, 9, 0]]))
        >>> res.accept_nodes.tolist(), res.accept_len.tolist(), res.out_tokens.tolist()
        ([[0, 1, -1]], [2], [[6, 9, -1]])
    """

    accept_nodes: torch.Tensor
    accept_len: torch.Tensor
    out_tokens: torch.Tensor

    @classmethod
    def empty(cls, batch: int, num_nodes: int, device=None) -> "VerifyResult":
        """Uninitialised output buffers for verify_greedy / verify_sample(out=...), e.g. for a CUDA graph.

        Example:
            >>> import torch, specdec_kernels as sk
            >>> out = sk.VerifyResult.empty(1, 3)
            >>> tree = sk.build_tree(torch.tensor([[-1, 0, 0]], dtype=torch.int32))
            >>> sk.verify_greedy(tree, torch.tensor([[5, 6, 7]]), torch.tensor([[7, 1, 2]]), out=out) is out
            True
            >>> out.out_tokens.tolist()
            [[7, 2, -1]]
        """
        return empty_result(cls, _result_layout, batch, num_nodes, device)


def _result_layout(B: int, N: int) -> list:
    return [((B, N), torch.int32), ((B,), torch.int32), ((B, N), torch.int64)]


def _verify_limit(backend, first_child, *rest):
    if backend in ("cuda", "triton") and first_child.shape[1] > MAX_TREE_NODES:
        return f"N = {first_child.shape[1]} > {MAX_TREE_NODES} nodes (one tree per thread block)"
    return None


_VERIFY_GREEDY = _backend.standard_op(
    "verify_greedy", reference=ref.verify_greedy, triton_module="verify", limits=_verify_limit
)
_VERIFY_SAMPLE = _backend.standard_op(
    "verify_sample", reference=ref.verify_sample, triton_module="verify", limits=_verify_limit
)


def _check_tree(tree, tokens) -> tuple:
    if not isinstance(tree, Tree):
        raise TypeError(f"tree: expected a specdec_kernels.Tree (from build_tree), got {type(tree).__name__}")
    check_tensor("tokens", tokens, dtype=torch.int64, ndim=2)
    B, N = tokens.shape
    if N < 1:
        raise ValueError(f"tokens: expected at least one node (the root), got shape {tuple(tokens.shape)}")
    check_tensor("tree.first_child", tree.first_child, dtype=torch.int32, shape=(B, N))
    check_tensor("tree.next_sibling", tree.next_sibling, dtype=torch.int32, shape=(B, N))
    check_tensor("tree.valid", tree.valid, dtype=torch.bool, shape=(B,))
    return B, N


def _outputs(out, B: int, N: int, dev) -> VerifyResult:
    if out is None:
        return VerifyResult.empty(B, N, dev)
    check_result_out(out, VerifyResult, _result_layout, B, N, dev)
    return out


def verify_greedy(
    tree: Tree,
    tokens: torch.Tensor,
    logits: torch.Tensor,
    *,
    backend: Optional[str] = None,
    out: Optional[VerifyResult] = None,
) -> VerifyResult:
    """Greedy verification: accept the drafted path that the target's argmax reproduces.

    Walk from the root: at accepted node u with t = argmax[u], the first child c of u in sibling order
    with tokens[c] == t is accepted and the walk continues from c; when no child matches, the walk stops.
    The bonus token is argmax at the last accepted node. A tree with valid = False accepts the root only.

    Args:
        tree: build_tree's output (uses first_child, next_sibling, valid), [B, N].
        tokens: int64 [B, N], the drafted tokens (tokens[b, 0], the root, is not checked).
        logits: the target's float logits [B, N, V] (fp32/fp16/bf16; the argmax is fused, ties to the
            lower id and NaN counting as the maximum, like torch.argmax), or its int64 argmax ids [B, N].
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels.get_op).
        out: a VerifyResult of buffers to write into (from VerifyResult.empty(B, N, device)).

    Returns:
        VerifyResult(accept_nodes int32 [B, N], accept_len int32 [B], out_tokens int64 [B, N]) (`out`
        itself when given); see the module docstring.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0, 0]], dtype=torch.int32))   # a root with 2 children
        >>> logits = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])  # argmax 2, 1, 0
        >>> res = sk.verify_greedy(tree, torch.tensor([[0, 1, 2]]), logits)   # node 2 drafts token 2
        >>> res.accept_nodes.tolist(), res.accept_len.tolist(), res.out_tokens.tolist()
        ([[0, 2, -1]], [2], [[2, 0, -1]])
    """
    B, N = _check_tree(tree, tokens)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.is_floating_point():
        check_tensor("logits", logits, dtypes=FLOAT_DTYPES, shape=(B, N, None))
        if logits.shape[2] < 1:
            raise ValueError(f"logits: expected logits [B, N, V] with V >= 1, got shape {tuple(logits.shape)}")
    elif logits.dtype == torch.int64:
        check_tensor("logits", logits, shape=(B, N))
    else:
        raise TypeError(f"logits: expected float logits [B, N, V] or int64 argmax ids [B, N], got {logits.dtype}")
    dev = same_device(
        first_child=tree.first_child, next_sibling=tree.next_sibling, valid=tree.valid, tokens=tokens, logits=logits
    )
    out = _outputs(out, B, N, dev)
    if B == 0:
        return out
    _VERIFY_GREEDY(
        tree.first_child.contiguous(),
        tree.next_sibling.contiguous(),
        tree.valid.contiguous(),
        tokens.contiguous(),
        logits.contiguous(),
        *out,
        backend=backend,
    )
    return out


def _per_request(name: str, x, B: int, dtype: torch.dtype, dev) -> torch.Tensor:
    """A sampling parameter as a [B] tensor of `dtype`: a Python number for every request, or a tensor [B]."""
    if isinstance(x, torch.Tensor):
        check_tensor(name, x, dtype=dtype, shape=(B,))
        return x
    if not (is_int(x) if dtype == torch.int32 else is_number(x)):
        what = "an int or an int32" if dtype == torch.int32 else f"a float or a {str(dtype)[6:]}"
        raise TypeError(f"{name}: expected {what} tensor [B], got {type(x).__name__}")
    return torch.full((B,), int(x) if dtype == torch.int32 else float(x), dtype=dtype, device=dev)


def verify_sample(
    tree: Tree,
    tokens: torch.Tensor,
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    temperature: Union[torch.Tensor, float] = 1.0,
    top_k: Union[torch.Tensor, int] = 0,
    top_p: Union[torch.Tensor, float] = 1.0,
    draft_probs: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
    out: Optional[VerifyResult] = None,
) -> VerifyResult:
    """Lossless sampling verification: the emitted tokens follow the target's sampling distribution.

    Per request b, p_u = the target distribution at node u: softmax(logits[b, u] / temperature[b]) with
    top-k then top-p filtering, renormalised (exact rules: specdec_kernels.reference.verify.filtered_probs;
    top-k keeps every token tied with the k-th, top-p keeps the smallest most-probable set of mass
    >= top_p plus ties, always at least the most probable token).

    Walk from the root. At accepted node u, let p = p_u and try u's children c in sibling order, with
    x = tokens[b, c] and the uniform uniforms[b, c]:
      - deterministic drafts (draft_probs None; e.g. EAGLE's top-k children): accept c iff
        uniforms[b, c] < p(x); on rejection set p(x) = 0 and renormalise p (among duplicate tokens the
        first decides).
      - stochastic drafts (draft_probs [B, N, V]: row u is the draft distribution q_u from which u's
        children were drawn without replacement): q = q_u; accept c iff uniforms[b, c] * q(x) < p(x); on
        rejection p = normalise(max(p - q, 0)), then q(x) = 0 and q renormalised.
    If c is accepted, the walk continues at c with a fresh p = p_c (and q = q_c). If every child is
    rejected, or u is a leaf, the bonus token is drawn from the current p with uniforms[b, N] by inverse
    CDF in token-id order (the smallest x with cumsum(p)[x] > uniforms[b, N] * sum(p)).

    Each test is a speculative-sampling step (Leviathan et al. 2023) against the residual distributions,
    so every emitted sequence follows the target's sampling distribution; see docs/verification.md.

    Args:
        tree: build_tree's output, [B, N] (uses first_child, next_sibling, valid).
        tokens: int64 [B, N], drafted tokens. Tokens outside [0, V) have p = 0 (never accepted).
        logits: [B, N, V] fp32/fp16/bf16, the target's logits at each node (softmax in fp32).
        uniforms: float32 [B, N + 1] in [0, 1): uniforms[b, c] for the test of child c, uniforms[b, N] for
            the bonus draw (pass fresh randomness as a tensor so a decode step can be graph-captured).
        temperature: a float for every request or float32 [B]; <= 0 means greedy for that request,
            identical to verify_greedy on the logits.
        top_k: an int or int32 [B]; 0 (or >= V) turns top-k off.
        top_p: a float or float32 [B]; >= 1 turns top-p off.
        draft_probs: optional [B, N, V] fp32/fp16/bf16 (rows renormalised; negative entries count as 0).
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels.get_op).
        out: a VerifyResult of buffers to write into (from VerifyResult.empty(B, N, device)).

    Returns:
        VerifyResult(accept_nodes int32 [B, N], accept_len int32 [B], out_tokens int64 [B, N]) (`out`
        itself when given). When rounding leaves p without mass, the bonus is the argmax of the logits at
        the last accepted node.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> tree = sk.build_tree(torch.tensor([[-1, 0]], dtype=torch.int32))   # root -> node 1
        >>> logits = torch.log(torch.tensor([[[0.6, 0.4], [0.9, 0.1]]]))
        >>> uniforms = torch.tensor([[0.0, 0.3, 0.95]])      # accept node 1 (0.3 < p = 0.4), bonus from [.9, .1]
        >>> sk.verify_sample(tree, torch.tensor([[0, 1]]), logits, uniforms).out_tokens.tolist()
        [[1, 1]]
        >>> sk.verify_sample(tree, torch.tensor([[0, 1]]), logits, uniforms, top_k=1).out_tokens.tolist()  # p(1) = 0
        [[0, -1]]
    """
    B, N = _check_tree(tree, tokens)
    check_tensor("logits", logits, dtypes=FLOAT_DTYPES, shape=(B, N, None))
    V = logits.shape[2]
    if V < 1:
        raise ValueError(f"logits: expected V >= 1 tokens, got shape {tuple(logits.shape)}")
    dev = tokens.device
    check_tensor("uniforms", uniforms, dtype=torch.float32, shape=(B, N + 1))
    temperature = _per_request("temperature", temperature, B, torch.float32, dev)
    top_k = _per_request("top_k", top_k, B, torch.int32, dev)
    top_p = _per_request("top_p", top_p, B, torch.float32, dev)
    if draft_probs is not None:
        check_tensor("draft_probs", draft_probs, dtypes=FLOAT_DTYPES, shape=(B, N, V))
    dev = same_device(
        first_child=tree.first_child,
        next_sibling=tree.next_sibling,
        valid=tree.valid,
        tokens=tokens,
        logits=logits,
        uniforms=uniforms,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        draft_probs=draft_probs,
    )
    out = _outputs(out, B, N, dev)
    if B == 0:
        return out
    _VERIFY_SAMPLE(
        tree.first_child.contiguous(),
        tree.next_sibling.contiguous(),
        tree.valid.contiguous(),
        tokens.contiguous(),
        logits.contiguous(),
        uniforms.contiguous(),
        temperature.contiguous(),
        top_k.contiguous(),
        top_p.contiguous(),
        None if draft_probs is None else draft_probs.contiguous(),
        *out,
        backend=backend,
    )
    return out
