"""PyTorch reference of tree verification (greedy and lossless sampling): the spec and the test oracle.

Both walks run as a fixed-length state machine vectorised over the batch: one step either tests one
candidate child per request (accept: descend to it; reject: move to its next sibling) or does nothing
for a request whose walk has ended. On a well-formed tree every node is tested at most once per walk, so
N steps always suffice, and the loop count never depends on tensor values (no host synchronisation).
Malformed links (out of range, cycles) are treated as "no link" or cut off by that bound.
"""

from __future__ import annotations

from typing import Optional

import torch


def _follow(links: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
    """links[b, node[b]] per request, -1 where node or the link is out of range."""
    B, N = links.shape
    ar = torch.arange(B, device=links.device)
    ok = (node >= 0) & (node < N)
    nxt = links[ar, node.clamp(0, N - 1)].to(torch.int64)
    return torch.where(ok & (nxt >= 0) & (nxt < N), nxt, torch.full_like(nxt, -1))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """x / sum(x) along the last dim; an all-zero row stays zero."""
    s = x.sum(dim=-1, keepdim=True)
    return torch.where(s > 0, x / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x))


def filtered_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """The target distribution after temperature, top-k and top-p, fp32 [..., V] (rows sum to 1).

    logits [R, V]; temperature, top_k, top_p [R]. Rows with temperature <= 0 are computed as if it were
    1 (callers treat them as greedy). The order is that of transformers' warpers:
      1. z = logits / temperature (in fp32);
      2. top-k (k > 0 and k < V): keep the tokens whose z is >= the k-th largest z. Tokens tied with the
         k-th are all kept (like transformers' TopKLogitsWarper, which removes only z < k-th value);
      3. p = softmax(z over the kept tokens);
      4. top-p (top_p < 1): keep token x iff the mass of the tokens strictly more probable than x is
         < top_p, i.e. the smallest most-probable set whose mass reaches top_p, plus every token tied with
         its least probable member; the most probable token(s) are always kept (even for top_p <= 0);
      5. renormalise.
    """
    V = logits.shape[-1]
    t = temperature.to(torch.float32)
    t = torch.where(t > 0, t, torch.ones_like(t))
    z = logits.float() / t[:, None]
    k = top_k.to(torch.int64)
    z_sorted = torch.sort(z, dim=-1, descending=True).values
    kth = torch.gather(z_sorted, 1, (k - 1).clamp(0, V - 1)[:, None])
    keep = (z >= kth) | ~((k > 0) & (k < V))[:, None]
    p = torch.softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
    p_sorted = torch.sort(p, dim=-1, descending=True).values
    above = torch.cumsum(p_sorted, dim=-1) - p_sorted  # mass before each sorted entry
    keep_sorted = above < top_p.to(torch.float32)[:, None]
    keep_sorted[:, 0] = True
    n_keep = keep_sorted.sum(dim=-1, keepdim=True)
    thr = torch.gather(p_sorted, 1, n_keep - 1)  # least probable kept value
    keep_p = (p >= thr) | (top_p >= 1)[:, None]
    return _normalise(torch.where(keep_p, p, torch.zeros_like(p)))


def _walk_init(first_child, valid, B, N, dev):
    ar = torch.arange(B, device=dev)
    cur = torch.zeros(B, dtype=torch.int64, device=dev)
    cand = torch.where(valid.bool(), _follow(first_child, cur), torch.full_like(cur, -1))
    length = torch.ones(B, dtype=torch.int64, device=dev)
    path = torch.full((B, N), -1, dtype=torch.int64, device=dev)
    path[:, 0] = 0
    return ar, cur, cand, length, path


def _write_outputs(tokens, path, length, bonus, accept_nodes, accept_len, out_tokens) -> None:
    B, N = tokens.shape
    j = torch.arange(N, device=tokens.device)
    nxt = torch.cat([path[:, 1:], torch.full_like(path[:, :1], -1)], dim=1)  # node emitted at j
    toks = torch.gather(tokens, 1, nxt.clamp(min=0))
    toks = torch.where(j[None, :] < (length - 1)[:, None], toks, torch.full_like(toks, -1))
    toks = torch.where(j[None, :] == (length - 1)[:, None], bonus[:, None], toks)
    accept_nodes.copy_(path.to(accept_nodes.dtype))
    accept_len.copy_(length.to(accept_len.dtype))
    out_tokens.copy_(toks.to(out_tokens.dtype))


def verify_greedy(
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    valid: torch.Tensor,
    tokens: torch.Tensor,
    logits: torch.Tensor,
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
    out_tokens: torch.Tensor,
) -> None:
    """Greedy tree verification (see ops.verify.verify_greedy).

    logits: float [B, N, V] logits, or int64 [B, N] argmax ids (argmax as torch.argmax: the first maximal
    id wins, NaN counts as maximal). At accepted node u the first child c in sibling order with
    tokens[c] == argmax[u] is accepted; the bonus is argmax at the last accepted node.
    """
    B, N = tokens.shape
    dev = tokens.device
    amax = logits.argmax(dim=-1) if logits.is_floating_point() else logits.to(torch.int64)
    ar, cur, cand, length, path = _walk_init(first_child, valid, B, N, dev)
    for _ in range(N):
        active = (cand >= 0) & (length < N)
        candc = cand.clamp(0, N - 1)
        acc = active & (tokens[ar, candc] == amax[ar, cur])
        path[ar, length.clamp(max=N - 1)] = torch.where(acc, cand, path[ar, length.clamp(max=N - 1)])
        length = length + acc.to(torch.int64)
        cur = torch.where(acc, cand, cur)
        cand = torch.where(
            acc, _follow(first_child, cand), torch.where(active, _follow(next_sibling, cand), torch.full_like(cand, -1))
        )
    _write_outputs(tokens, path, length, amax[ar, cur], accept_nodes, accept_len, out_tokens)


def verify_sample(
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    valid: torch.Tensor,
    tokens: torch.Tensor,
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    draft_probs: Optional[torch.Tensor],
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
    out_tokens: torch.Tensor,
) -> None:
    """Lossless sampling verification (rules: ops.verify.verify_sample; why exact: docs/verification.md).

    State per request: the accepted node u, the residual target distribution p (starts as
    filtered_probs(logits[u])), for draft_probs the residual draft distribution q (starts as
    normalise(draft_probs[u])), and the next child c to test. Test of c with token x and u_c = uniforms[c]:
      without draft_probs: accept iff u_c < p(x); on rejection p(x) = 0, p renormalised;
      with draft_probs:    accept iff u_c * q(x) < p(x) (min(1, p/q) without dividing); on rejection
                           p = normalise(max(p - q, 0)), then q(x) = 0, q renormalised.
    Bonus (no child left, or a leaf): the smallest id x with cumsum(p)[x] > uniforms[N] * sum(p) (inverse
    CDF in id order); if p has no mass left (possible only through rounding) the argmax of logits[u].
    Rows with temperature <= 0 run the greedy walk on the logits.
    """
    B, N = tokens.shape
    V = logits.shape[-1]
    dev = tokens.device
    greedy = ~(temperature > 0)
    amax = logits.argmax(dim=-1)  # [B, N]
    ar, cur, cand, length, path = _walk_init(first_child, valid, B, N, dev)

    def target_at(node):
        return filtered_probs(logits[ar, node], temperature, top_k, top_p)

    def draft_at(node):
        return _normalise(draft_probs[ar, node].float().clamp(min=0))

    p = target_at(cur)
    q = draft_at(cur) if draft_probs is not None else None
    for _ in range(N):
        active = (cand >= 0) & (length < N)
        candc = cand.clamp(0, N - 1)
        tok = tokens[ar, candc]
        tok_ok = (tok >= 0) & (tok < V)
        tokc = tok.clamp(0, V - 1)
        pc = torch.where(tok_ok, p[ar, tokc], torch.zeros_like(p[:, 0]))
        u = uniforms[ar, candc].float()
        if q is None:
            acc_s = u < pc
        else:
            qc = torch.where(tok_ok, q[ar, tokc], torch.zeros_like(q[:, 0]))
            acc_s = u * qc < pc
        acc = active & torch.where(greedy, tok == amax[ar, cur], acc_s)
        rej = active & ~acc

        zero_x = torch.nn.functional.one_hot(tokc, V).bool() & tok_ok[:, None]  # [B, V]: token x of c
        p_new = target_at(candc)
        if q is None:
            p_rej = _normalise(p.masked_fill(zero_x, 0.0))
        else:
            p_rej = _normalise((p - q).clamp(min=0))
            q_rej = _normalise(q.masked_fill(zero_x, 0.0))
            q = torch.where(acc[:, None], draft_at(candc), torch.where(rej[:, None], q_rej, q))
        p = torch.where(acc[:, None], p_new, torch.where(rej[:, None], p_rej, p))

        path[ar, length.clamp(max=N - 1)] = torch.where(acc, cand, path[ar, length.clamp(max=N - 1)])
        length = length + acc.to(torch.int64)
        cur = torch.where(acc, cand, cur)
        cand = torch.where(
            acc, _follow(first_child, cand), torch.where(active, _follow(next_sibling, cand), torch.full_like(cand, -1))
        )

    # Bonus token: inverse CDF of the residual p in token-id order.
    cdf = torch.cumsum(p, dim=-1)
    thr = uniforms[:, N].float() * cdf[:, -1]
    drawn = (cdf <= thr[:, None]).sum(dim=-1)
    last_pos = V - 1 - torch.argmax(torch.flip(p > 0, dims=[-1]).to(torch.int8), dim=-1)
    drawn = torch.where(drawn >= V, last_pos, drawn)  # rounding at u -> 1
    fallback = amax[ar, cur]
    bonus = torch.where(greedy | ~(cdf[:, -1] > 0), fallback, drawn)
    _write_outputs(tokens, path, length, bonus, accept_nodes, accept_len, out_tokens)
