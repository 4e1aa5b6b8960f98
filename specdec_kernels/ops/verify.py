"""Tree verification: which drafted nodes the target accepts, and the bonus token.

Both ops walk from the root of each tree and return fixed-size outputs (no host synchronisation):
accept_nodes int32 [B, N] (the accepted path, root first, -1 padded), accept_len int32 [B] (path length,
>= 1: the root counts), out_tokens int64 [B, N] (the tokens of the accepted nodes after the root, then
the bonus token, -1 padded: accept_len[b] entries). accept_nodes and accept_len feed compact_kv.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .. import _backend
from ..reference import verify as ref
from ._checks import check_out, check_tensor, same_device
from .tree import MAX_KERNEL_NODES, Tree

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _verify_device(first_child, *rest):
    return first_child.device


def _verify_limit(backend, first_child, *rest):
    if backend in ("cuda", "triton") and first_child.shape[1] > MAX_KERNEL_NODES:
        return f"N = {first_child.shape[1]} > {MAX_KERNEL_NODES} nodes (one tree per thread block)"
    return None


def _triton_verify_greedy(*args):
    return torch.ops.specdec.verify_greedy_triton(*args)


def _triton_verify_sample(*args):
    return torch.ops.specdec.verify_sample_triton(*args)


_VERIFY_GREEDY = _backend.standard_op("verify_greedy", _verify_device, extra=_verify_limit,
                                      reference=ref.verify_greedy, triton=_triton_verify_greedy)
_VERIFY_SAMPLE = _backend.standard_op("verify_sample", _verify_device, extra=_verify_limit,
                                      reference=ref.verify_sample, triton=_triton_verify_sample)


def empty_verify_out(batch: int, num_nodes: int, device=None) -> tuple:
    """Output buffers (accept_nodes, accept_len, out_tokens) for verify_*(out=...), e.g. for a CUDA graph."""
    return (torch.empty(batch, num_nodes, dtype=torch.int32, device=device),
            torch.empty(batch, dtype=torch.int32, device=device),
            torch.empty(batch, num_nodes, dtype=torch.int64, device=device))


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


def _outputs(out, B, N, dev) -> tuple:
    if out is None:
        return empty_verify_out(B, N, dev)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("out: expected a tuple (accept_nodes, accept_len, out_tokens) (see empty_verify_out)")
    for name, t, shape, dtype in zip(("accept_nodes", "accept_len", "out_tokens"), out, ((B, N), (B,), (B, N)),
                                     (torch.int32, torch.int32, torch.int64)):
        check_out(f"out[{name}]", t, shape, dtype, dev)
    return tuple(out)


def verify_greedy(tree: Tree, tokens: torch.Tensor, target: torch.Tensor, *, backend: Optional[str] = None,
                  out: Optional[tuple] = None) -> tuple:
    """Greedy verification: accept the drafted path that the target's argmax reproduces.

    Walk from the root: at accepted node u with t = argmax[u], the first child c of u in sibling order
    with tokens[c] == t is accepted and the walk continues from c; when no child matches, the walk stops.
    The bonus token is argmax at the last accepted node. A tree with valid = False accepts the root only.

    Args:
        tree: build_tree's output (uses first_child, next_sibling, valid), [B, N].
        tokens: int64 [B, N], the drafted tokens (tokens[b, 0], the root, is not checked).
        target: int64 [B, N] target argmax ids per node, or float logits [B, N, V] (fp32/fp16/bf16; the
            argmax is fused, ties to the lower id and NaN counting as the maximum, like torch.argmax).
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels._backend).
        out: optional (accept_nodes, accept_len, out_tokens) buffers (see empty_verify_out).

    Returns:
        (accept_nodes int32 [B, N], accept_len int32 [B], out_tokens int64 [B, N]); see the module docstring.
    """
    B, N = _check_tree(tree, tokens)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point():
        check_tensor("target", target, dtypes=FLOAT_DTYPES, shape=(B, N, None))
        if target.shape[2] < 1:
            raise ValueError(f"target: expected logits [B, N, V] with V >= 1, got shape {tuple(target.shape)}")
    elif target.dtype == torch.int64:
        check_tensor("target", target, shape=(B, N))
    else:
        raise TypeError(f"target: expected int64 argmax ids [B, N] or float logits [B, N, V], got {target.dtype}")
    dev = same_device(first_child=tree.first_child, next_sibling=tree.next_sibling, valid=tree.valid,
                      tokens=tokens, target=target)
    out = _outputs(out, B, N, dev)
    if B == 0:
        return out
    _VERIFY_GREEDY(backend, tree.first_child.contiguous(), tree.next_sibling.contiguous(), tree.valid.contiguous(),
                   tokens.contiguous(), target.contiguous(), *out)
    return out


def _per_request(name: str, x, B: int, dtype: torch.dtype, dev) -> torch.Tensor:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return torch.full((B,), x, dtype=dtype, device=dev)
    check_tensor(name, x, dtype=dtype, shape=(B,))
    return x


def verify_sample(tree: Tree, tokens: torch.Tensor, logits: torch.Tensor, uniforms: torch.Tensor,
                  temperature: Union[torch.Tensor, float], top_k: Union[torch.Tensor, int],
                  top_p: Union[torch.Tensor, float], *, draft_probs: Optional[torch.Tensor] = None,
                  backend: Optional[str] = None, out: Optional[tuple] = None) -> tuple:
    """Lossless sampling verification: the emitted tokens follow the target's sampling distribution.

    Per request b, p_u = the target distribution at node u: softmax(logits[b, u] / temperature[b]) with
    top-k then top-p filtering, renormalised (exact rules: specdec_kernels.reference.verify.filtered_probs;
    top-k keeps every token tied with the k-th, top-p keeps the smallest most-probable set of mass
    >= top_p plus ties, always at least the most probable token).

    Walk from the root. At accepted node u, let p = p_u and try u's children c in sibling order, with
    x = tokens[b, c] and the uniform uniforms[b, c]:
      - deterministic drafts (draft_probs None; e.g. EAGLE's top-k children): accept c iff
        uniforms[b, c] < p(x); on rejection set p(x) = 0 and renormalise p. A child repeating an already
        rejected token therefore has p = 0 and is rejected: among duplicates the first decides.
      - stochastic drafts (draft_probs [B, N, V]: row u is the draft distribution q_u from which u's
        children were drawn WITHOUT replacement, each child from q_u with the earlier children removed and
        renormalised): q = q_u; accept c iff uniforms[b, c] * q(x) < p(x) (probability min(1, p(x)/q(x)));
        on rejection p = normalise(max(p - q, 0)), then q(x) = 0 and q renormalised.
    If c is accepted, the walk continues at c with a fresh p = p_c (and q = q_c). If every child is
    rejected, or u is a leaf, the bonus token is drawn from the current p with uniforms[b, N] by inverse
    CDF in token-id order (the smallest x with cumsum(p)[x] > uniforms[b, N] * sum(p)).

    Why this is lossless: each test is the speculative-sampling step "candidate x ~ q', accept with
    probability min(1, p'(x)/q'(x)), else continue with normalise(max(p' - q', 0))", whose output is
    distributed exactly as p' (Leviathan et al. 2023; Chen et al. 2023). Conditional on the earlier
    rejections, the next child is drawn from q' = q with the earlier children removed (so it is a valid
    proposal for the residual target), and a deterministic child is the case q' = one-hot(x), which turns
    the rule into "accept with probability p'(x), else zero it out". By induction over the children, the
    token emitted after u has distribution p_u; conditioned on accepting c, the walk repeats at c with c's
    own target distribution, so every emitted sequence follows the target's sampling distribution.

    Args:
        tree: build_tree's output, [B, N] (uses first_child, next_sibling, valid).
        tokens: int64 [B, N], drafted tokens. Tokens outside [0, V) have p = 0 (never accepted).
        logits: [B, N, V] fp32/fp16/bf16, the target's logits at each node (softmax in fp32).
        uniforms: float32 [B, N + 1] in [0, 1): uniforms[b, c] for the test of child c, uniforms[b, N] for
            the bonus draw (pass fresh randomness as a tensor so a decode step can be graph-captured).
        temperature: float32 [B] (or a float for all); <= 0 means greedy for that request, identical to
            verify_greedy on the logits.
        top_k: int32 [B] (or an int); 0 (or >= V) turns top-k off.
        top_p: float32 [B] (or a float); >= 1 turns top-p off.
        draft_probs: optional [B, N, V] fp32/fp16/bf16 (rows renormalised; negative entries count as 0).
        backend: "cuda", "triton", "cpu" or "torch"; None chooses (see specdec_kernels._backend).
        out: optional (accept_nodes, accept_len, out_tokens) buffers (see empty_verify_out).

    Returns:
        (accept_nodes int32 [B, N], accept_len int32 [B], out_tokens int64 [B, N]). When rounding leaves p
        without mass, the bonus is the argmax of the logits at the last accepted node.
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
    dev = same_device(first_child=tree.first_child, next_sibling=tree.next_sibling, valid=tree.valid,
                      tokens=tokens, logits=logits, uniforms=uniforms, temperature=temperature, top_k=top_k,
                      top_p=top_p, draft_probs=draft_probs)
    out = _outputs(out, B, N, dev)
    if B == 0:
        return out
    _VERIFY_SAMPLE(backend, tree.first_child.contiguous(), tree.next_sibling.contiguous(), tree.valid.contiguous(),
                   tokens.contiguous(), logits.contiguous(), uniforms.contiguous(), temperature.contiguous(),
                   top_k.contiguous(), top_p.contiguous(),
                   None if draft_probs is None else draft_probs.contiguous(), *out)
    return out
