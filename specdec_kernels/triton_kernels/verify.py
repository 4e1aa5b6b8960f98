"""Triton kernels of verify_greedy and verify_sample (attached to `specdec::verify_greedy_triton` and
`specdec::verify_sample_triton` for CPU-interpreted and CUDA tensors).

Both follow the reference's walk (specdec_kernels/reference/verify.py): one program per request holds the
state (accepted node u, candidate child c) and runs at most N tests: accept -> the path gets c, u = c,
c = first_child[c]; reject -> c = next_sibling[c]; links outside [0, N) end a list, so malformed trees
cannot loop. The path and the emitted tokens live in [BLOCK_N] register vectors until the final store.

verify_greedy: argmax[u] (ids, or fused over the logits row of u, BLOCK_V tokens at a time; NaN first,
ties to the lower id, like torch.argmax) is computed only for the nodes the walk accepts.

verify_sample: the algorithm of csrc/cuda/verify.cu, with the program's threads in place of the thread block.
The vocabulary is only ever streamed in BLOCK_V tiles (V up to 256k and beyond), nothing of size V is stored,
and only the rows of accepted nodes are read. At an accepted node u the filtered target distribution
(reference.verify.filtered_probs) is reduced to a few scalars that let any tile evaluate p(x) pointwise:
    z = logit / T;  top-k keeps z whose order-preserving int32 key is >= kth_key;
    p = exp(z - m) / S (softmax over the top-k set);  top-p keeps p whose bits are >= p_key;  p /= Z.
The two thresholds are found without a sort by a 16-ary search over 32-bit keys (16 pivots counted per
pass over the row, at most 8 passes): kth_key is the largest key w with count(key >= w) >= k, p_key the
largest w with mass(bits(p) >= w) >= top_p, capped at the most probable token's bits. These are exactly
the reference's kept sets: every token tied with the k-th is kept, and the smallest most-probable set of
mass >= top_p plus its ties. Rows with top-k / top-p off skip their search (kth_key = INT32_MIN, p_key = 0).
The residual distribution after the rejections at u is never materialised: each rejection appends
(token, normalisers) to a small per-request workspace, and p(x) is re-derived from the base distribution:
    without draft_probs: p(x) = 0 for a rejected x, else p0(x) / M with M = prod(1 - p(x_i)) (no pass over
                         V per rejection);
    with draft_probs:    for each rejection i in order, p = max(p - q, 0) / Zp_i, q(x_i) = 0, q /= Zq_i,
                         whose sums Zp_i, Zq_i take one pass over the row at the time of the rejection.
The bonus token is the inverse CDF of the residual in id order: one pass for its total, one for the
crossing (tile sums first, then a cumulative sum inside the crossing tile). Agreement with the reference is
exact except where a uniform falls within rounding of a decision boundary (sums in a different order).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .._limits import MAX_TREE_NODES

_BIG = tl.constexpr(2**31 - 1)  # "no index" in min-reductions (a constexpr: jit code may read it)
_MAX_VOCAB = 2**24  # the top-k search counts in fp32: exact below 2^24


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
def _greedy_kernel(
    fc_ptr,
    ns_ptr,
    valid_ptr,
    tok_ptr,
    target_ptr,
    an_ptr,
    al_ptr,
    ot_ptr,
    N,
    V,
    LOGITS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
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


# ---------------------------------------------------------------------------------------------------------
# verify_sample


@triton.jit
def _order_key(z):
    """Order-preserving int32 key of fp32 z (larger z -> larger key; -0 and +0 share key 0, as they compare
    equal; NaN above +inf)."""
    bits = z.to(tl.int32, bitcast=True)
    bits = tl.where(z == 0, 0, bits)
    # Negative floats order backwards in their magnitude bits: flip those bits (the sign bit stays set).
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _base_prob(logit, t, m, S, Z, kth_key, p_key):
    """The filtered target distribution at logits `logit` (any shape), from its row's parameters.

    kth_key = INT32_MIN turns top-k off, p_key = 0 and Z = 1 turn top-p off. Divisions round to nearest like
    the reference's (the top-k keys of z must order ties exactly as torch does).
    """
    z = tl.math.div_rn(logit.to(tl.float32), t)
    p = tl.math.div_rn(tl.exp(z - m), S)
    keep = (_order_key(z) >= kth_key) & (p.to(tl.int32, bitcast=True) >= p_key)
    return tl.where(keep, tl.math.div_rn(p, Z), 0.0)


@triton.jit
def _search(row_ptr, V, t, m, S, kth_key, target, MASS: tl.constexpr, BLOCK_V: tl.constexpr):
    """The largest int32 key w with measure(key >= w) >= target, by a 16-ary search (<= 8 passes over V).

    MASS False (top-k): key = _order_key(z), measure = count. MASS True (top-p): key = bits of p (the softmax
    over the top-k set, >= 0, so its bits order like p), measure = mass. If even the smallest key falls short
    of the target (rounding), the smallest key is returned (keep everything).
    """
    piv_i = tl.arange(0, 16).to(tl.int64)
    if MASS:
        lo = tl.zeros((), tl.int64)
    else:
        lo = tl.full((), -(2**31), tl.int64)
    hi = tl.full((), 2**31 - 1, tl.int64)
    # Invariant: measure(>= lo) >= target (or lo is the smallest key) and measure(>= hi + 1) < target.
    while lo < hi:
        piv = lo + (hi - lo + 1) * (piv_i + 1) // 17  # increasing, in [lo, hi]; int64: no overflow
        piv32 = piv.to(tl.int32)
        acc = tl.zeros((16,), tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            ok = offs < V
            z = tl.math.div_rn(tl.load(row_ptr + offs, mask=ok, other=0.0).to(tl.float32), t)
            zk = _order_key(z)
            if MASS:
                w = tl.where(ok & (zk >= kth_key), tl.math.div_rn(tl.exp(z - m), S), 0.0)
                key = w.to(tl.int32, bitcast=True)
            else:
                w = tl.where(ok, 1.0, 0.0)
                key = zk
            acc += tl.sum(tl.where(key[:, None] >= piv32[None, :], w[:, None], 0.0), axis=0)
        # The measure shrinks as the pivot grows: keep [largest pivot reaching the target, next pivot - 1].
        reach = acc >= target
        new_lo = tl.max(tl.where(reach, piv, lo), axis=0)
        new_hi = tl.min(tl.where(reach, hi, piv - 1), axis=0)
        lo = new_lo
        hi = tl.maximum(new_hi, lo)
    return lo.to(tl.int32)


@triton.jit
def _node_dist(row_ptr, V, t, m, top_k, top_p, BLOCK_V: tl.constexpr):
    """(S, Z, kth_key, p_key) of the filtered target distribution of one row (see _base_prob); m = max z."""
    kth_key = tl.full((), -(2**31), tl.int32)
    if (top_k > 0) & (top_k < V):
        kth_key = _search(row_ptr, V, t, m, 1.0, kth_key, top_k.to(tl.float32), False, BLOCK_V)
    s = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        ok = offs < V
        z = tl.math.div_rn(tl.load(row_ptr + offs, mask=ok, other=0.0).to(tl.float32), t)
        s += tl.where(ok & (_order_key(z) >= kth_key), tl.exp(z - m), 0.0)
    S = tl.sum(s, axis=0)
    p_key = tl.zeros((), tl.int32)
    Z = tl.full((), 1.0, tl.float32)  # the softmax is normalised already: dividing by its sum only adds rounding
    if top_p < 1.0:
        found = _search(row_ptr, V, t, m, S, kth_key, top_p, True, BLOCK_V)
        # The most probable token (z = m) is always kept: its p, computed by the same operations as anywhere.
        top = tl.math.div_rn(tl.exp(m - m), S).to(tl.int32, bitcast=True)
        p_key = tl.minimum(found, top)
        zs = tl.zeros((BLOCK_V,), tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            ok = offs < V
            zs += _base_prob(tl.load(row_ptr + offs, mask=ok, other=-float("inf")), t, m, S, 1.0, kth_key, p_key)
        Z = tl.sum(zs, axis=0)
    return S, Z, kth_key, p_key


@triton.jit
def _residual(x, p, q, r, ws_x, ws_z, ws_q, HAS_Q: tl.constexpr):
    """p (and q) at tokens x (any shape) after the r rejections recorded at the current node.

    p, q: the node's base target / draft probabilities at x. ws_x[i]: the token of rejection i (-1 when out
    of the vocabulary); ws_z[i]: without draft_probs the running product M of (1 - p(x_i)) (ws_z[r - 1] is
    the total), with them the sum of max(p - q, 0) before rejection i; ws_q[i]: the sum of q without x_i.
    """
    if HAS_Q:
        for i in range(0, r):
            xi = tl.load(ws_x + i)
            zi = tl.load(ws_z + i)
            qi = tl.load(ws_q + i)
            p = tl.where(zi > 0, tl.math.div_rn(tl.maximum(p - q, 0.0), tl.where(zi > 0, zi, 1.0)), 0.0)
            q = tl.where(x == xi, 0.0, q)
            q = tl.where(qi > 0, tl.math.div_rn(q, tl.where(qi > 0, qi, 1.0)), 0.0)
    else:
        # Rejections only zero their token and rescale: one division by the product of the normalisers.
        for i in range(0, r):
            p = tl.where(x == tl.load(ws_x + i), 0.0, p)
        if r > 0:
            M = tl.load(ws_z + r - 1)
            p = tl.where(M > 0, tl.math.div_rn(p, tl.where(M > 0, M, 1.0)), 0.0)
    return p, q


@triton.jit
def _draft_prob(qv, qsum):
    """The renormalised draft distribution (negative entries count as 0)."""
    return tl.where(qsum > 0, tl.math.div_rn(tl.maximum(qv.to(tl.float32), 0.0), tl.where(qsum > 0, qsum, 1.0)), 0.0)


@triton.jit
def _sample_kernel(
    fc_ptr,
    ns_ptr,
    valid_ptr,
    tok_ptr,
    logits_ptr,
    u_ptr,
    temp_ptr,
    topk_ptr,
    topp_ptr,
    q_ptr,
    wsx_ptr,
    wsf_ptr,
    an_ptr,
    al_ptr,
    ot_ptr,
    N,
    V,
    HAS_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    fc = fc_ptr + b * N
    ns = ns_ptr + b * N
    tok = tok_ptr + b * N
    u_row = u_ptr + b * (N + 1)
    ws_x = wsx_ptr + b * 3 * N  # rejection records of the current node (module docstring)
    ws_z = wsf_ptr + b * 3 * N + N
    ws_q = ws_z + N
    jn = tl.arange(0, BLOCK_N)
    path = tl.where(jn == 0, 0, -1).to(tl.int64)
    emitted = tl.full((BLOCK_N,), -1, tl.int64)
    cur = tl.zeros((), tl.int64)
    length = tl.full((), 1, tl.int64)
    valid = tl.load(valid_ptr + b).to(tl.int1)
    first = tl.load(fc).to(tl.int64)
    cand = tl.where(valid & (first >= 0) & (first < N), first, -1)

    temp = tl.load(temp_ptr + b)
    sample = temp > 0  # NaN or <= 0: greedy on the logits, like the reference
    t = tl.where(sample, temp, 1.0)
    top_k = tl.load(topk_ptr + b)
    top_p = tl.load(topp_ptr + b)

    # Parameters of the current node's distribution (recomputed when a node is accepted: `fresh`).
    fresh = tl.full((), 1, tl.int1)
    am = tl.zeros((), tl.int64)
    m = tl.zeros((), tl.float32)
    S = tl.full((), 1.0, tl.float32)
    Z = tl.full((), 1.0, tl.float32)
    kth_key = tl.full((), -(2**31), tl.int32)
    p_key = tl.zeros((), tl.int32)
    qsum = tl.full((), 1.0, tl.float32)
    r = tl.zeros((), tl.int32)  # rejections recorded at the current node
    M = tl.full((), 1.0, tl.float32)  # without draft_probs: product of (1 - p(x_i)) over them
    # N tests at most (the reference's bound); the extra last iteration loads the final node's distribution.
    for it in range(0, N + 1):
        row = logits_ptr + (b * N + cur) * V
        qrow = q_ptr + (b * N + cur) * V
        if fresh:
            am = _row_argmax(row, V, BLOCK_V)
            if sample:
                # max z = z of the max logit (division by t > 0 is monotone); NaN if the row has one.
                m = tl.math.div_rn(tl.load(row + am).to(tl.float32), t)
                S, Z, kth_key, p_key = _node_dist(row, V, t, m, top_k, top_p, BLOCK_V)
                if HAS_Q:
                    qs = tl.zeros((BLOCK_V,), tl.float32)
                    for start in range(0, V, BLOCK_V):
                        offs = start + tl.arange(0, BLOCK_V)
                        qs += tl.maximum(tl.load(qrow + offs, mask=offs < V, other=0.0).to(tl.float32), 0.0)
                    qsum = tl.sum(qs, axis=0)
            r = tl.zeros((), tl.int32)
            M = tl.full((), 1.0, tl.float32)
            fresh = tl.full((), 0, tl.int1)
        if (cand >= 0) & (length < N) & (it < N):
            x = tl.load(tok + cand)
            in_vocab = (x >= 0) & (x < V)
            xc = tl.minimum(tl.maximum(x, 0), V - 1)
            px = tl.zeros((), tl.float32)
            qx = tl.zeros((), tl.float32)
            if sample:
                px = _base_prob(tl.load(row + xc), t, m, S, Z, kth_key, p_key)
                if HAS_Q:
                    qx = _draft_prob(tl.load(qrow + xc), qsum)
                px, qx = _residual(xc, px, qx, r, ws_x, ws_z, ws_q, HAS_Q)
                px = tl.where(in_vocab, px, 0.0)
                qx = tl.where(in_vocab, qx, 0.0)
                uc = tl.load(u_row + cand)
                if HAS_Q:
                    acc = uc * qx < px  # probability min(1, p/q), without dividing
                else:
                    acc = uc < px
            else:
                acc = x == am
            if acc:
                path = tl.where(jn == length, cand, path)
                emitted = tl.where(jn == length - 1, x, emitted)
                length += 1
                cur = cand
                nxt = tl.load(fc + cand).to(tl.int64)
                cand = tl.where((nxt >= 0) & (nxt < N), nxt, -1)
                fresh = tl.full((), 1, tl.int1)
            else:
                nxt = tl.load(ns + cand).to(tl.int64)
                cand = tl.where((nxt >= 0) & (nxt < N), nxt, -1)
                if sample:
                    xr = tl.where(in_vocab, x, -1)
                    if HAS_Q:
                        # p <- normalise(max(p - q, 0)), q(x) <- 0 and renormalised: their sums need a pass.
                        sp = tl.zeros((BLOCK_V,), tl.float32)
                        sq = tl.zeros((BLOCK_V,), tl.float32)
                        for start in range(0, V, BLOCK_V):
                            offs = start + tl.arange(0, BLOCK_V)
                            ok = offs < V
                            pv = _base_prob(
                                tl.load(row + offs, mask=ok, other=-float("inf")), t, m, S, Z, kth_key, p_key
                            )
                            qv = _draft_prob(tl.load(qrow + offs, mask=ok, other=0.0), qsum)
                            pv, qv = _residual(offs, pv, qv, r, ws_x, ws_z, ws_q, HAS_Q)
                            sp += tl.maximum(pv - qv, 0.0)
                            sq += tl.where(offs == xr, 0.0, qv)
                        tl.store(ws_z + r, tl.sum(sp, axis=0))
                        tl.store(ws_q + r, tl.sum(sq, axis=0))
                    else:
                        M = M * (1.0 - px)  # the residual sums to 1: without x it sums to 1 - p(x)
                        tl.store(ws_z + r, M)
                    tl.store(ws_x + r, xr)
                    # The records are read by every thread of the program: make the stores visible.
                    tl.debug_barrier()
                    r += 1

    # Bonus token: argmax (greedy, or no mass left), else the inverse CDF of the residual p in id order.
    row = logits_ptr + (b * N + cur) * V
    qrow = q_ptr + (b * N + cur) * V
    bonus = am
    if sample:
        total = tl.zeros((), tl.float32)
        last = tl.full((BLOCK_V,), -1, tl.int32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            ok = offs < V
            pv = _base_prob(tl.load(row + offs, mask=ok, other=-float("inf")), t, m, S, Z, kth_key, p_key)
            qv = tl.zeros((BLOCK_V,), tl.float32)
            if HAS_Q:
                qv = _draft_prob(tl.load(qrow + offs, mask=ok, other=0.0), qsum)
            pv, qv = _residual(offs, pv, qv, r, ws_x, ws_z, ws_q, HAS_Q)
            total += tl.sum(pv, axis=0)  # tile by tile: the crossing search below adds in the same order
            last = tl.maximum(last, tl.where(pv > 0, offs, -1))
        last_pos = tl.max(last, axis=0)
        if total > 0:
            thr = tl.load(u_row + N) * total
            found = tl.full((), -1, tl.int32)
            run = tl.zeros((), tl.float32)
            for start in range(0, V, BLOCK_V):
                if found < 0:
                    offs = start + tl.arange(0, BLOCK_V)
                    ok = offs < V
                    pv = _base_prob(tl.load(row + offs, mask=ok, other=-float("inf")), t, m, S, Z, kth_key, p_key)
                    qv = tl.zeros((BLOCK_V,), tl.float32)
                    if HAS_Q:
                        qv = _draft_prob(tl.load(qrow + offs, mask=ok, other=0.0), qsum)
                    pv, qv = _residual(offs, pv, qv, r, ws_x, ws_z, ws_q, HAS_Q)
                    # The running tile sums repeat `total`'s additions, so the crossing tile is always
                    # found when thr < total; the cumulative sum inside it finds the token.
                    s = tl.sum(pv, axis=0)
                    if run + s > thr:
                        incl = run + tl.cumsum(pv, axis=0)
                        hit = tl.min(tl.where(ok & (incl > thr), offs, _BIG), axis=0)
                        # Rounding between the two summation orders: the tile's last token with mass.
                        found = tl.where(hit < _BIG, hit, tl.max(tl.where(pv > 0, offs, -1), axis=0))
                    run += s
            # Not found (u -> 1 with rounding): the last token with mass.
            bonus = tl.where(found >= 0, found, last_pos).to(tl.int64)
    in_n = jn < N
    tl.store(an_ptr + b * N + jn, path.to(tl.int32), mask=in_n)
    tl.store(al_ptr + b, length.to(tl.int32))
    tl.store(ot_ptr + b * N + jn, tl.where(jn == length - 1, bonus, emitted), mask=in_n)


def verify_sample_config(V: int, N: int) -> dict:
    """Launch meta-parameters of verify_sample's kernel for V tokens and N nodes: a dict of BLOCK_N, BLOCK_V,
    num_warps and maxnreg (splatted into the launch).

    Each program streams its rows in BLOCK_V tiles; the widest tile is the search's [BLOCK_V, 16] pivot
    count. 2048-wide tiles over 16 warps (4 tokens and 64 pivot counts per thread, like csrc/cuda/verify.cu's
    512 threads) serve the large vocabularies of real targets; small vocabularies (tests, the interpreter)
    take one tile of the next power of two. The [BLOCK_N] path vectors add warps for trees of more than 256
    nodes. maxnreg grants each thread the whole register file's share (65536 / threads, at most 255): left to
    itself ptxas picks 64-80 registers for some of these shapes and spills; with it, the ptxas reports for
    sm_80 and sm_90 (V from 16 to 256k, N from 1 to 1024, fp32 / bf16, with and without draft_probs) show
    no spills.
    """
    block_n = triton.next_power_of_2(N)
    block_v = max(16, min(2048, triton.next_power_of_2(V)))
    num_warps = 16 if block_v >= 1024 else 8 if block_v >= 256 else 4
    num_warps = max(num_warps, min(16, block_n // 64))
    return dict(BLOCK_N=block_n, BLOCK_V=block_v, num_warps=num_warps, maxnreg=min(255, 65536 // (32 * num_warps)))


def _device_guard(device: torch.device):
    """Launch on the tensors' GPU (Triton uses the current device and stream)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def verify_greedy_triton(
    first_child, next_sibling, valid, tokens, logits, accept_nodes, accept_len, out_tokens
) -> None:
    """specdec::verify_greedy_triton: see specdec_kernels.ops.verify.verify_greedy (one program per request)."""
    B, N = tokens.shape
    if B == 0:
        return
    is_logits = logits.is_floating_point()
    V = logits.shape[2] if is_logits else 1
    block_v = min(4096, triton.next_power_of_2(V)) if is_logits else 16
    with _device_guard(tokens.device):
        _greedy_kernel[(B,)](
            first_child,
            next_sibling,
            valid.view(torch.uint8),
            tokens,
            logits,
            accept_nodes,
            accept_len,
            out_tokens,
            N,
            V,
            LOGITS=is_logits,
            BLOCK_N=triton.next_power_of_2(N),
            BLOCK_V=block_v,
        )


def verify_sample_triton(
    first_child,
    next_sibling,
    valid,
    tokens,
    logits,
    uniforms,
    temperature,
    top_k,
    top_p,
    draft_probs,
    accept_nodes,
    accept_len,
    out_tokens,
) -> None:
    """specdec::verify_sample_triton: see specdec_kernels.ops.verify.verify_sample.

    One program per request (N <= 1024 nodes). Inputs are those of the public function after its checks
    (contiguous; int32 tree links, bool valid, int64 tokens, fp32/fp16/bf16 logits [B, N, V], fp32
    uniforms [B, N + 1], temperature fp32 [B], top_k int32 [B], top_p fp32 [B], draft_probs None or
    [B, N, V]). A small workspace (3 x 4 bytes per node) holds the rejection records of each walk.
    """
    op = "specdec::verify_sample_triton"
    B, N = tokens.shape
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (B, N) or logits.shape[2] < 1:
        raise ValueError(f"{op}: logits must be [B, N, V] = [{B}, {N}, V >= 1], got {list(logits.shape)}")
    V = logits.shape[2]
    if V >= _MAX_VOCAB:
        raise ValueError(f"{op}: the Triton kernel takes V < 2^24 tokens (fp32 counts), got V = {V}")
    if N > MAX_TREE_NODES:
        raise ValueError(f"{op}: at most {MAX_TREE_NODES} nodes per tree (one program per tree), got N = {N}")
    if draft_probs is not None and tuple(draft_probs.shape) != tuple(logits.shape):
        raise ValueError(
            f"{op}: draft_probs must have the logits' shape {list(logits.shape)}, got {list(draft_probs.shape)}"
        )
    if B == 0:
        return
    # Per request: N int32 rejected tokens, then N + N fp32 normalisers (the same bytes seen as fp32).
    ws = torch.empty((B, 3 * N), dtype=torch.int32, device=tokens.device)
    with _device_guard(tokens.device):
        _sample_kernel[(B,)](
            first_child,
            next_sibling,
            valid.view(torch.uint8),
            tokens,
            logits,
            uniforms,
            temperature,
            top_k,
            top_p,
            logits if draft_probs is None else draft_probs,
            ws,
            ws.view(torch.float32),  # the same bytes: fp32 records beside the int32 tokens
            accept_nodes,
            accept_len,
            out_tokens,
            N,
            V,
            HAS_Q=draft_probs is not None,
            **verify_sample_config(V, N),
        )


torch.library.register_kernel("specdec::verify_greedy_triton", ("cpu", "cuda"), verify_greedy_triton)
torch.library.register_kernel("specdec::verify_sample_triton", ("cpu", "cuda"), verify_sample_triton)
