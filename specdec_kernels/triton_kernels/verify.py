"""Triton kernel of verify_greedy (attached to `specdec::verify_greedy_triton` for CPU-interpreted and CUDA
tensors). verify_sample has no Triton kernel yet: the op falls through to the CUDA / C++ / torch backends.

Math: the reference's walk (specdec_kernels/reference/verify.py). One program per request holds the
state (accepted node u, candidate child c) and runs at most N steps: a step tests c against argmax[u]:
accept -> path gets c, u = c, c = first_child[c]; reject -> c = next_sibling[c]; links outside [0, N) end a
list, so malformed trees cannot loop. With logits, argmax[u] is computed by the program over the row of u
only when u is accepted (BLOCK_V tokens at a time; NaN first, ties to the lower id, like torch.argmax).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BIG = 2**31 - 1


@triton.jit
def _row_argmax(row_ptr, V, BLOCK_V: tl.constexpr):
    """torch.argmax of one row: the first NaN if any, else the first maximal value."""
    best_v = -float("inf")
    best_i = _BIG
    nan_i = _BIG
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        ok = offs < V
        x = tl.load(row_ptr + offs, mask=ok, other=-float("inf")).to(tl.float32)
        nan_i = tl.minimum(nan_i, tl.min(tl.where(ok & (x != x), offs, _BIG), axis=0))
        x = tl.where(x != x, -float("inf"), x)
        m = tl.max(x, axis=0)
        i = tl.min(tl.where(ok & (x == m), offs, _BIG), axis=0)
        take = m > best_v
        best_i = tl.where(take, i, tl.where(m == best_v, tl.minimum(best_i, i), best_i))
        best_v = tl.where(take, m, best_v)
    best_i = tl.where(best_i == _BIG, 0, best_i)  # all -inf: torch returns the first index
    return tl.where(nan_i < _BIG, nan_i, best_i).to(tl.int64)


@triton.jit
def _greedy_kernel(fc_ptr, ns_ptr, valid_ptr, tok_ptr, target_ptr, an_ptr, al_ptr, ot_ptr, N, V,
                   LOGITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    fc = fc_ptr + b * N
    ns = ns_ptr + b * N
    tok = tok_ptr + b * N
    an = an_ptr + b * N
    ot = ot_ptr + b * N
    jn = tl.arange(0, BLOCK_N)
    # The path lives in a register vector (N <= BLOCK_N): no read-after-write through memory.
    path = tl.where(jn == 0, 0, -1).to(tl.int64)
    emitted = tl.full((BLOCK_N,), -1, tl.int64)  # out_tokens: accepted tokens after the root, then the bonus
    cur = tl.zeros((), tl.int64)
    length = tl.full((), 1, tl.int64)
    valid = tl.load(valid_ptr + b).to(tl.int1)
    first = tl.load(fc).to(tl.int64)
    cand = tl.where(valid & (first >= 0) & (first < N), first, -1)
    if LOGITS:
        am = _row_argmax(target_ptr + b * N * V, V, BLOCK_V)
    else:
        am = tl.load(target_ptr + b * N)
    for _step in range(0, N):
        active = (cand >= 0) & (length < N)
        if active:
            t = tl.load(tok + cand)
            if t == am:
                path = tl.where(jn == length, cand, path)
                emitted = tl.where(jn == length - 1, t, emitted)
                length += 1
                cur = cand
                nxt = tl.load(fc + cand).to(tl.int64)
                cand = tl.where((nxt >= 0) & (nxt < N), nxt, -1)
                if LOGITS:
                    am = _row_argmax(target_ptr + (b * N + cur) * V, V, BLOCK_V)
                else:
                    am = tl.load(target_ptr + b * N + cur)
            else:
                nxt = tl.load(ns + cand).to(tl.int64)
                cand = tl.where((nxt >= 0) & (nxt < N), nxt, -1)
    in_n = jn < N
    tl.store(an + jn, path.to(tl.int32), mask=in_n)
    tl.store(al_ptr + b, length.to(tl.int32))
    tl.store(ot + jn, tl.where(jn == length - 1, am, emitted), mask=in_n)


def verify_greedy_triton(first_child, next_sibling, valid, tokens, target, accept_nodes, accept_len,
                         out_tokens) -> None:
    """specdec::verify_greedy_triton: see specdec_kernels.ops.verify.verify_greedy (one program per request)."""
    B, N = tokens.shape
    if B == 0:
        return
    logits = target.is_floating_point()
    V = target.shape[2] if logits else 1
    block_v = min(4096, triton.next_power_of_2(V)) if logits else 16
    _greedy_kernel[(B,)](first_child, next_sibling, valid.view(torch.uint8), tokens, target, accept_nodes,
                         accept_len, out_tokens, N, V, LOGITS=logits, BLOCK_N=triton.next_power_of_2(N),
                         BLOCK_V=block_v)


torch.library.register_kernel("specdec::verify_greedy_triton", ("cpu", "cuda"), verify_greedy_triton)
