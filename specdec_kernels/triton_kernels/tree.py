"""Triton kernels of build_tree and select_tree, attached to `specdec::build_tree_triton` and
`specdec::select_tree_triton` for CUDA tensors and for CPU tensors under TRITON_INTERPRET=1.

Both kernels run one program per batch row and vectorise over the nodes (candidates) of that row; every
loop is bounded by the shapes, so malformed input cannot make a program spin. The semantics are
those of specdec_kernels/reference/tree.py, bit for bit (see ops/tree.py for the public functions).

build_tree (one program per tree, N <= MAX_TREE_NODES = 1024 nodes):
  * validity is a vector reduction over the parents;
  * the packed ancestor mask uses pointer jumping ("doubling"): with a_k(i) the 2^k-th ancestor of i
    (-1 past the root) and M_k(i) the set of ancestors at distance < 2^k,
        M_{k+1}(i) = M_k(i) | M_k(a_k(i)),    a_{k+1}(i) = a_k(a_k(i)),
    so ceil(log2(depth + 1)) rounds of gathers finish, instead of one step per tree level. Words are
    processed BLOCK_W at a time; a block is final as soon as every a_k points below its first node, so
    later blocks of deep trees need fewer rounds. The gathers read rows written by other threads of the
    program from global memory (the mask output itself, and the depth output as scratch for a_k), ordered
    by barriers and read with .cg (L2) loads;
  * depth(i) = popcount(mask row i) - 1, so it needs no gathers of its own;
  * first_child / next_sibling are min-reductions over a [BLOCK_N, BLOCK_K] comparison tile per block of
    BLOCK_K columns (children and siblings), O(N^2 / lanes) with no data-dependent control flow.

select_tree (one program per candidate row, M <= MAX_CANDIDATES = 4096 candidates):
  * every score becomes a 32-bit order key (the sign-flip trick on the float's bits: -0.0 == +0.0,
    NaN below -inf; immune to flush-to-zero), identical to csrc/include/specdec/tree.h;
  * the (N-1)-th largest key t is found by radix select (RADIX_BITS bits per pass, 32 / RADIX_BITS
    passes of one vector count each): O(M) per pass instead of an O(M^2) rank;
  * chosen = key > t, plus the lowest-index candidates with key == t (exclusive prefix count of the
    ties), which is exactly "rank < N-1" for the order (higher score, then lower index, NaN last);
  * node index = inclusive prefix count of the chosen; the chosen are scattered into `selected`/`tokens`;
  * each node's parent node = the position of its parent candidate in the sorted `selected` row, found
    by binary search (log2(N) gathers) - no [M]-sized scratch is needed. A parent that was not chosen or
    is out of range makes the node its own parent, which build_tree reports as invalid.

No host synchronisation: launches only, outputs written into the caller's buffers.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .._limits import MAX_CANDIDATES, MAX_TREE_NODES


@triton.jit
def _popcount32(x):
    """Set bits of each uint32 lane (SWAR; no multiply, so nothing wraps)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    return (x & 0x3F).to(tl.int32)


@triton.jit
def _build_tree_kernel(
    parents_ptr,
    num_nodes_ptr,
    depth_ptr,
    mask_ptr,
    first_child_ptr,
    next_sibling_ptr,
    valid_ptr,
    N,
    W,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_W: tl.constexpr,
    LOG_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    row = b * N  # first element of this tree in the [B, N] tensors
    idx = tl.arange(0, BLOCK_N)
    in_n = idx < N
    p = tl.load(parents_ptr + row + idx, mask=in_n, other=0)
    n = tl.load(num_nodes_ptr + b)

    # Validity: 1 <= n <= N, parents[0] == -1, 0 <= parents[i] < i for live i. An invalid tree is all
    # padding, which `live` expresses for every output below.
    ok_parent = tl.where(idx == 0, p == -1, (p >= 0) & (p < idx))
    bad = in_n & (idx < n) & (ok_parent == 0)
    ok = (n >= 1) & (n <= N) & (tl.max(bad.to(tl.int32), axis=0) == 0)
    n_live = tl.where(ok, n, 0)
    live = idx < n_live

    # ---- first_child / next_sibling: min-reductions over blocks of columns (the candidate children).
    BIG: tl.constexpr = 1 << 30
    p_row = tl.where(live & (idx > 0), p, -2)  # a row's parent, as the key its siblings must share
    fc = tl.full([BLOCK_N], BIG, tl.int32)
    ns = tl.full([BLOCK_N], BIG, tl.int32)
    for k0 in range(0, n_live, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        # Column parents; -1 (root) and -3 (past the live nodes) match no row index nor p_row.
        pk = tl.load(parents_ptr + row + kk, mask=kk < n_live, other=-3)
        child = pk[None, :] == idx[:, None]  # column k is a child of row i
        fc = tl.minimum(fc, tl.min(tl.where(child, kk[None, :], BIG), axis=1))
        sib = (pk[None, :] == p_row[:, None]) & (kk[None, :] > idx[:, None])
        ns = tl.minimum(ns, tl.min(tl.where(sib, kk[None, :], BIG), axis=1))
    fc = tl.where(live & (fc < BIG), fc, -1)
    ns = tl.where(live & (ns < BIG), ns, -1)

    # ---- packed ancestor mask by pointer jumping, BLOCK_W words at a time; depth = popcount - 1.
    nxt0 = tl.where(live & (idx > 0), p, -1)  # a_0: the parent; -1 = no ancestor (root, padding)
    mask_tree = mask_ptr + row * W  # this tree's [N, W] words: int32 offsets below
    scratch = depth_ptr + row  # depth doubles as the a_k scratch until the end
    bit = tl.full([BLOCK_N], 1, tl.uint32) << (idx % 32).to(tl.uint32)
    word_of = idx // 32
    bits_set = tl.zeros([BLOCK_N], tl.int32)
    for w0 in range(0, W, BLOCK_W):
        ww = w0 + tl.arange(0, BLOCK_W)
        tile = in_n[:, None] & (ww < W)[None, :]
        own = live[:, None] & (word_of[:, None] == ww[None, :])
        t = tl.where(own, bit[:, None], 0).to(tl.uint32)  # M_0: the node itself
        offs = idx[:, None] * W + ww[None, :]
        tl.store(mask_tree + offs, t.to(tl.int32, bitcast=True), mask=tile)
        nxt = nxt0
        for _ in tl.static_range(LOG_N):  # 2^LOG_N >= N > any depth: LOG_N rounds always suffice
            # Uniform over the program. Once every a_k(i) lies below this block's first node, the ancestors
            # still missing (a_k(i) and above) have no bit in these words: the block is final.
            # Rows whose a_k is below the block are final here too, so they skip the gathers (a_k = -1).
            if tl.max(nxt, axis=0) >= w0 * 32:
                tl.store(scratch + idx, nxt, mask=in_n)
                tl.debug_barrier()  # rows and a_k of other threads are written
                has = nxt >= w0 * 32
                g = tl.load(
                    mask_tree + nxt[:, None] * W + ww[None, :], mask=tile & has[:, None], other=0, cache_modifier=".cg"
                )
                nn = tl.load(scratch + nxt, mask=in_n & has, other=-1, cache_modifier=".cg")
                tl.debug_barrier()  # every gather is done before anyone overwrites
                t = t | g.to(tl.uint32, bitcast=True)
                nxt = nn
                tl.store(mask_tree + offs, t.to(tl.int32, bitcast=True), mask=tile)
        bits_set += tl.sum(tl.where(tile, _popcount32(t), 0), axis=1)
    tl.debug_barrier()  # the last a_k reads of the scratch precede the depth store

    tl.store(depth_ptr + row + idx, tl.where(live, bits_set - 1, 0), mask=in_n)
    tl.store(first_child_ptr + row + idx, fc, mask=in_n)
    tl.store(next_sibling_ptr + row + idx, ns, mask=in_n)
    tl.store(valid_ptr + b, ok)


@triton.jit
def _select_tree_kernel(
    scores_ptr,
    cand_parents_ptr,
    cand_tokens_ptr,
    root_tokens_ptr,
    parents_ptr,
    tokens_ptr,
    selected_ptr,
    M,
    N,
    BLOCK_M: tl.constexpr,
    RADIX_BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    LOG_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    crow = b * M  # this row in the [B, M] candidate tensors
    orow = b * N  # this row in the [B, N] outputs
    K = N - 1  # candidates kept
    i = tl.arange(0, BLOCK_M)
    in_m = i < M

    # Order key: larger = ranks earlier. Same as score_order_key in csrc/include/specdec/tree.h.
    s = tl.load(scores_ptr + crow + i, mask=in_m, other=0.0)
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 == +0.0: one key, the index breaks the tie
    bits = s.to(tl.uint32, bitcast=True)
    key = tl.where((bits >> 31) != 0, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    key = tl.where(s != s, 0, key).to(tl.uint32)  # every NaN: 0, below -inf (0x007fffff)

    # Radix select of t = the K-th largest key: the largest t with #{key >= t} >= K, digit by digit.
    NB: tl.constexpr = 1 << RADIX_BITS
    digits = tl.arange(0, NB).to(tl.uint32)
    t = tl.zeros([NB], tl.uint32)  # every lane holds t (keeps the pass loop shape-stable)
    for ps in tl.static_range(32 // RADIX_BITS):
        shift = 32 - RADIX_BITS * (ps + 1)
        probe = t | (digits << shift)
        ge = (key[:, None] >= probe[None, :]) & in_m[:, None]
        cnt = tl.sum(ge.to(tl.int32), axis=0)  # [NB]; digit 0 always qualifies (invariant: #{>= t} >= K)
        best = tl.max(tl.where(cnt >= K, digits, 0).to(tl.uint32), axis=0)
        t = t | (best << shift)
    t0 = tl.max(t, axis=0)

    # chosen = rank < K: every key above t, then the lowest-index ties while places are left.
    above = in_m & (key > t0)
    tie = (in_m & (key == t0)).to(tl.int32)
    need = K - tl.sum(above.to(tl.int32), axis=0)
    tie_before = tl.cumsum(tie, axis=0) - tie
    chosen = above | ((tie != 0) & (tie_before < need))
    node = tl.cumsum(chosen.to(tl.int32), axis=0)  # node index of a chosen candidate: 1..K in index order

    tok = tl.load(cand_tokens_ptr + crow + i, mask=chosen, other=0)
    tl.store(selected_ptr + orow + node, i, mask=chosen)
    tl.store(tokens_ptr + orow + node, tok, mask=chosen)
    tl.store(parents_ptr + orow, -1)
    tl.store(tokens_ptr + orow, tl.load(root_tokens_ptr + b))
    tl.store(selected_ptr + orow, -1)
    tl.debug_barrier()  # `selected` (written by other threads) is read back below

    # Parent node of node k = position of its parent candidate in the increasing row selected[1..K].
    for k0 in range(1, N, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        km = kk < N
        cand = tl.load(selected_ptr + orow + kk, mask=km, other=0, cache_modifier=".cg")
        cp = tl.load(cand_parents_ptr + crow + cand, mask=km, other=-1)
        # pos = #{m in [1, K] : selected[m] <= cp}, by descending powers of two (2^(LOG_K+1) > K).
        pos = tl.zeros([BLOCK_K], tl.int32)
        for e in tl.static_range(LOG_K + 1):
            nxt = pos + (1 << (LOG_K - e))
            pm = km & (nxt <= K)
            v = tl.load(selected_ptr + orow + nxt, mask=pm, other=0, cache_modifier=".cg")
            pos = tl.where(pm & (v <= cp), nxt, pos)
        hit = tl.load(selected_ptr + orow + pos, mask=km & (pos >= 1), other=-2, cache_modifier=".cg")
        found = (cp >= 0) & (cp < M) & (pos >= 1) & (hit == cp)
        par = tl.where(cp == -1, 0, tl.where(found, pos, kk))  # not chosen / out of range: itself
        tl.store(parents_ptr + orow + kk, par, mask=km)


def _build_tree_config(block_n: int, words: int) -> tuple:
    """(BLOCK_K, BLOCK_W, warps) for trees of block_n (a power of two) nodes and `words` mask words.

    From ptxas register reports for sm_90 (no size spills): the warps grow with the [block_n] vectors, the
    [block_n, BLOCK_K] link tile holds 8 elements per thread and the [block_n, BLOCK_W] mask tile 16 (8 at
    1024 nodes, where the vectors take more registers). Wide mask blocks matter most: each block of words
    repeats the doubling rounds.
    """
    num_warps = 4 if block_n <= 128 else 8 if block_n <= 256 else 16
    threads = 32 * num_warps
    block_k = max(1, min(block_n, 8 * threads // block_n))
    block_w = max(1, min(triton.next_power_of_2(words), (16 if block_n <= 512 else 8) * threads // block_n))
    return block_k, block_w, num_warps


def _select_tree_config(block_m: int) -> tuple:
    """(radix bits per pass, warps) for rows of block_m (a power of two) candidates.

    The [block_m, 2^radix_bits] count tile stays at <= 32 elements per thread (no spills on sm_90); within
    that, more bits per pass means fewer passes (32 / radix_bits block reductions).
    """
    num_warps = 4 if block_m <= 256 else 8 if block_m <= 1024 else 16
    budget = 32 * 32 * num_warps
    radix_bits = 4 if block_m * 16 <= budget else 2 if block_m * 4 <= budget else 1
    return radix_bits, num_warps


def _check(op: str, name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple, device: torch.device) -> None:
    """Metadata checks of the raw op (no syncs): the kernels index flat, contiguous rows."""
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{op}: {name} must be on {device} like the first input, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous")


def _device_guard(device: torch.device):
    """Launch on the tensors' GPU (Triton uses the current device and stream)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@torch.library.register_kernel("specdec::build_tree_triton", ("cpu", "cuda"))
def build_tree_triton(
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    depth: torch.Tensor,
    mask: torch.Tensor,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    valid: torch.Tensor,
) -> None:
    """Triton build_tree: fills depth, mask, first_child, next_sibling, valid (see ops.tree.build_tree).

    One program per tree; N <= MAX_TREE_NODES (specdec_kernels/_limits.py) keeps a tree in one block.
    """
    op = "specdec::build_tree_triton"
    if parents.dim() != 2 or parents.shape[1] < 1:
        raise ValueError(f"{op}: parents must be [B, N] with N >= 1, got shape {list(parents.shape)}")
    B, N = parents.shape
    if N > MAX_TREE_NODES:
        raise ValueError(f"{op}: at most {MAX_TREE_NODES} nodes per tree (one program per tree), got N = {N}")
    W = (N + 31) // 32
    dev = parents.device
    for name, t, dtype, shape in (
        ("parents", parents, torch.int32, (B, N)),
        ("num_nodes", num_nodes, torch.int32, (B,)),
        ("depth", depth, torch.int32, (B, N)),
        ("mask", mask, torch.int32, (B, N, W)),
        ("first_child", first_child, torch.int32, (B, N)),
        ("next_sibling", next_sibling, torch.int32, (B, N)),
        ("valid", valid, torch.bool, (B,)),
    ):
        _check(op, name, t, dtype, shape, dev)
    if B == 0:
        return
    block_n = triton.next_power_of_2(N)
    block_k, block_w, num_warps = _build_tree_config(block_n, W)
    log_n = max(1, (block_n - 1).bit_length())  # 2^log_n >= N: enough doubling rounds for any depth
    with _device_guard(dev):
        _build_tree_kernel[(B,)](
            parents,
            num_nodes,
            depth,
            mask,
            first_child,
            next_sibling,
            valid,
            N,
            W,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            BLOCK_W=block_w,
            LOG_N=log_n,
            num_warps=num_warps,
        )


@torch.library.register_kernel("specdec::select_tree_triton", ("cpu", "cuda"))
def select_tree_triton(
    cand_scores: torch.Tensor,
    cand_parents: torch.Tensor,
    cand_tokens: torch.Tensor,
    root_tokens: torch.Tensor,
    parents: torch.Tensor,
    tokens: torch.Tensor,
    selected: torch.Tensor,
) -> None:
    """Triton select_tree: EAGLE-2 reranking into parents/tokens/selected (see ops.tree.select_tree).

    One program per candidate row; M <= MAX_CANDIDATES keeps a row's keys in one block.
    """
    op = "specdec::select_tree_triton"
    if cand_scores.dim() != 2:
        raise ValueError(f"{op}: cand_scores must be [B, M], got shape {list(cand_scores.shape)}")
    if parents.dim() != 2:
        raise ValueError(f"{op}: parents must be [B, N], got shape {list(parents.shape)}")
    B, M = cand_scores.shape
    N = parents.shape[1]
    if not 1 <= N <= M + 1:
        raise ValueError(f"{op}: expected 1 <= N <= M + 1 = {M + 1} output nodes, got N = {N}")
    if M > MAX_CANDIDATES:
        raise ValueError(f"{op}: at most {MAX_CANDIDATES} candidates per row (one program per row), got M = {M}")
    dev = cand_scores.device
    for name, t, dtype, shape in (
        ("cand_scores", cand_scores, torch.float32, (B, M)),
        ("cand_parents", cand_parents, torch.int32, (B, M)),
        ("cand_tokens", cand_tokens, torch.int64, (B, M)),
        ("root_tokens", root_tokens, torch.int64, (B,)),
        ("parents", parents, torch.int32, (B, N)),
        ("tokens", tokens, torch.int64, (B, N)),
        ("selected", selected, torch.int32, (B, N)),
    ):
        _check(op, name, t, dtype, shape, dev)
    if B == 0:
        return
    block_m = triton.next_power_of_2(max(M, 1))
    radix_bits, num_warps = _select_tree_config(block_m)
    block_k = min(triton.next_power_of_2(N), 1024)
    log_k = max(N - 1, 1).bit_length() - 1  # 2^(log_k + 1) > K = N - 1
    with _device_guard(dev):
        _select_tree_kernel[(B,)](
            cand_scores,
            cand_parents,
            cand_tokens,
            root_tokens,
            parents,
            tokens,
            selected,
            M,
            N,
            BLOCK_M=block_m,
            RADIX_BITS=radix_bits,
            BLOCK_K=block_k,
            LOG_K=log_k,
            num_warps=num_warps,
        )
