"""Triton pieces shared by the FSPAD and GRIFFIN feature-sampling blocks (features_fspad.py, features_griffin.py).

Here: the autotune config lists and keys, the @triton.jit tile helpers the kernels of both blocks call, the
GEMM kernels both blocks launch (_fc_kernel, _down_kernel, _wgrad_kernel), the SiLU backward pass
(_silu_mul_bwd_kernel), and the launch steps both blocks take: fc_forward, mlp_launch and down_forward
(forward), act_backward, wgrad, norm_backward_launch, column_sums and fc_backward (backward). The public
names are the internal API of features_fspad.py and features_griffin.py, which hold only their own kernels
(the MLP and the norm backward) and the launchers registered on specdec::<launcher>_triton (schemas:
specdec_kernels/_schemas.py).

Math (specdec_kernels/reference/features.py), e = Emb[ids] (frozen), f the features, rows t < T:

    FSPAD    z = W_fe e + W_ff f + b                     (W_fc = [W_fe | W_ff], its two column halves)
             u = z + W_d (SiLU(W_g e) * rstd(z) * W_u (n * z))
    GRIFFIN  h = W_fe e + W_ff f + b
             v = rb r1 * W_u1 (a * n_b * h) + re * W_u2 (a * e),   g = h + W_d SiLU(v)

where rstd(x) = rsqrt(mean(x^2) + eps) per row, rb = rstd(h), r1 = rstd(N_b(h)) = rsqrt(rb^2 mean((n_b h)^2) + eps),
re = rstd(e). RMSNorm's per-row scale commutes with the GEMM over H, so every norm becomes a column scale
on the operand (the weights n, n_b, a) and a row scale in the epilogue, and its statistics are summed in
the same K loop that streams the operand: no normalised tensor is ever written.

Forward, three launches (each reads its weights exactly once when T fits one row block, which is the
decode case T <= 64, where the call is bound by reading the weights):
  1. _fc_kernel         z = gather(E, ids) W_fe^T + f W_ff^T + b   (embedding rows gathered in the loads)
  2. _fspad_mlp_kernel  act = SiLU(e W_g^T) * rstd(z) (z * n) W_u^T, rstd summed in the K loop;
     _griffin_mlp_kernel act = SiLU(v), the three statistics summed in the K loop
  3. _down_kernel       out = z + act W_d^T (residual fused in the epilogue)

Backward: the plain GEMMs (dO W_d, dO^T act, du W_u, dz W_ff, ...) go to torch.matmul (cuBLAS on GPU);
the GEMMs that read the embedding or a normalised activation run in _wgrad_kernel (C = (A^T B) with B's
rows gathered by token id and/or scaled per row by a saved rstd, C's columns scaled by a norm weight), so
e, RMSNorm(z), N_a(N_b(h)) and N_a(e) are still never materialised; the SiLU/product backward is one
elementwise pass (which also recomputes the activation for dW_d); each RMSNorm backward with its
weight's column reduction and the bias gradient is one row kernel writing per-block partial sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted

_INTERPRET = triton_interpreted()


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=warps, num_stages=stages)


# Tiles, as (BM, BN, BK, num_warps, num_stages), for operands that cannot take the pipelined tensor-core path
# (see mm_prune): K slices of 32, two stages. _SMALL / _SMALL_TWO_ACC: the one- / two-accumulator kernels'
# (16-bit operands Triton cannot vectorise); _FMA / _FMA_TWO_ACC: their subsets for exact fp32 dots (FMA
# loops), the tiles measured spill-free there (32 x 64 with 4 warps spilled on sm_80, and on sm_90 too in the
# MLP kernels, whose two operand streams leave room for the smallest tile only).
_SMALL = ((32, 64, 32, 4, 2), (16, 32, 32, 4, 2), (64, 64, 32, 8, 2))
_SMALL_TWO_ACC = ((16, 32, 32, 4, 2), (32, 64, 32, 4, 2), (64, 64, 32, 8, 2))
_FMA = ((16, 32, 32, 4, 2), (64, 64, 32, 8, 2))
_FMA_TWO_ACC = ((16, 32, 32, 4, 2),)


def mm_configs(two_acc: bool = False, widest: bool = True, interpreted: bool = _INTERPRET) -> list:
    """The triton.autotune configs of the feature GEMM kernels; `two_acc` for a kernel that keeps two [BM, BN]
    accumulators (the MLP kernels), `widest` for a kernel that can hold the 128 x 256 tile (one accumulator,
    one operand stream); `interpreted`: the list for the Triton interpreter (one config). mm_prune narrows the
    list per call.

    Chosen from ptxas's reports of every config for sm_80 and sm_90 (tests/triton_compile_util.py, Triton
    3.8): none of them spills on the operands it is kept for. Two accumulators of 128 registers per thread
    (128 x 128 with 8 warps, 64 x 128 or 128 x 64 with 4) spilled 48-876 bytes at 255 registers, and so did
    32 x 64 x 128 in the GRIFFIN MLP (its [BM, BK] operand tiles go through registers for the norms), so the
    MLP kernels take the wide tiles with 8 warps and the 32-row tile with BK 64."""
    if interpreted:  # the interpreter runs one small tile; autotuning there would only cost time
        return [triton.Config({"BM": 16, "BN": 32, "BK": 32}, num_warps=4, num_stages=1)]
    # decode: T <= 64 rows, many column blocks so that the weight read spreads over all SMs
    cfgs = [_cfg(16, 32, 128, 4, 5), _cfg(16, 64, 128, 4, 4)]
    if two_acc:
        cfgs += [_cfg(32, 64, 64, 4, 4), _cfg(64, 64, 64, 4, 4)]
        # training: large T, compute bound
        cfgs += [_cfg(64, 128, 64, 8, 3), _cfg(128, 64, 64, 8, 3)]
    else:
        cfgs += [_cfg(32, 64, 128, 4, 4), _cfg(64, 64, 64, 4, 4)]
        cfgs += [_cfg(128, 128, 64, 8, 3), _cfg(64, 128, 64, 4, 4), _cfg(128, 64, 64, 4, 4)]
        if widest:
            cfgs.append(_cfg(128, 256, 64, 8, 3))
    # small footprint: also the only tiles of mm_prune's scalar and FMA paths, and fit sm_80's shared memory
    # with fp32 operands, which every tile above exceeds in the two-accumulator kernels
    cfgs += [_cfg(*c) for c in (_SMALL_TWO_ACC if two_acc else _SMALL)]
    return cfgs


def _key(cfg) -> tuple:
    k = cfg.kwargs
    return (k["BM"], k["BN"], k["BK"], cfg.num_warps, cfg.num_stages)


def _vectorised(args: dict, contiguous: tuple) -> bool:
    """Whether Triton can load the operands in 16-byte vectors: every floating tensor 16-byte aligned and
    every row stride and contiguous extent (`contiguous`: the sizes along the loads' unit-stride dimension)
    a multiple of 16 elements - what its specialisation proves (divisibility by 16) and vectorisation needs."""
    for name, v in args.items():
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and v.data_ptr() % 16:
                return False
        elif isinstance(v, int) and not isinstance(v, bool) and (name in contiguous or name.startswith("stride_")):
            if v % 16:
                return False
    return True


def fitting_configs(configs: list, args: dict, two_acc: bool = False, contiguous: tuple = ("K",)) -> list:
    """The configs of `configs` (mm_configs') that fit a call with arguments `args` (by name).

    Vectorised fp16 / bf16 (or fp32 with TF32) operands take every config: the loads go through shared
    memory by cp.async, pipelined over num_stages. Two kinds of operands instead hold whole tiles in
    registers, and spill on the large tiles (ptxas, sm_90: up to 8 KB on 16 x 32 x 128 with five stages):
    operands Triton cannot vectorise (_vectorised; odd hidden sizes such as 72, column views at odd
    offsets) and fp32 operands with exact ("ieee") dots, which are FMA loops over the K slice. Those calls
    get the small tiles: _SMALL / _SMALL_TWO_ACC, and _FMA / _FMA_TWO_ACC for fp32 operands (exact dots, or
    TF32 dots on operands Triton cannot vectorise: twice the registers of 16-bit ones; the MLP kernels'
    64 x 64 x 32 tile spilled 28 bytes there on sm_80)."""
    floats = [v for v in args.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    fp32 = bool(floats) and floats[0].dtype == torch.float32
    vectorised = _vectorised(args, contiguous)
    if fp32 and (args.get("PREC") == "ieee" or not vectorised):
        allowed = _FMA_TWO_ACC if two_acc else _FMA
    elif not vectorised:
        allowed = _SMALL_TWO_ACC if two_acc else _SMALL
    else:
        return list(configs)
    return [c for c in configs if _key(c) in allowed]


def mm_prune(two_acc: bool = False, contiguous: tuple = ("K",)):
    """prune_configs_by of the feature GEMM kernels: fitting_configs per call (None under the interpreter, which
    has one config). The autotune key does not hold the operands' alignment: in practice it follows from N and
    K (hidden sizes), which are in the key."""
    if _INTERPRET:
        return None

    def prune(configs, named_args, **kwargs):
        return fitting_configs(configs, {**named_args, **kwargs}, two_acc, contiguous)

    return {"early_config_prune": prune}


# The autotune key of the row-tiled GEMM kernels: M_BUCKET (rows, bucketed), N and K.
AUTOTUNE_KEYS = ["M_BUCKET", "N", "K"]


def _bucket(m: int) -> int:
    # Autotune per power-of-two bucket of T, not per T: decode T varies call to call (10..60 nodes).
    return triton.next_power_of_2(max(int(m), 16))


def dot_precision(dtype: torch.dtype) -> str:
    """The tl.dot input_precision (the kernels' PREC) for operands of `dtype`."""
    # fp32 follows torch's own switch (off by default: exact fp32 like the reference); ignored for fp16/bf16.
    return "tf32" if (dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"


# ---------------------------------------------------------------------------------------------------
# Tile helpers shared by the kernels


@triton.jit
def output_tile(M, N, BM: tl.constexpr, BN: tl.constexpr):
    """This program's [BM, BN] output tile: row and column indices and their in-bounds masks."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    return rm, rn, rm < M, rn < N


@triton.jit
def token_rows(IDS, offs, mask, V):
    """Embedding rows of the token ids at IDS[offs], int64, clamped to [0, V): memory safety only, the ids
    are range-checked before launch."""
    rows = tl.load(IDS + offs, mask=mask, other=0).to(tl.int64)
    return tl.minimum(tl.maximum(rows, 0), V - 1)


# ---------------------------------------------------------------------------------------------------
# Forward kernels


# Two K loops (embedding and feature halves) keep both operand streams live: the widest tile spilled on sm_80.
@triton.autotune(configs=mm_configs(widest=False), key=AUTOTUNE_KEYS, prune_configs_by=mm_prune())
@triton.jit
def _fc_kernel(
    F,
    IDS,
    E,
    W,
    B,
    Z,
    M,
    N,
    K,
    V,
    M_BUCKET,
    stride_f,
    stride_e,
    stride_w,
    stride_z,
    HAS_BIAS: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """Z[M, N] = E[ids] W[:, :K]^T + F W[:, K:]^T (+ B): the fc of [e; f] without forming e or [e; f]."""
    rm, rn, m_ok, n_ok = output_tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    ids = token_rows(IDS, rm, m_ok, V)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):  # embedding half: rows gathered by token id
        k = k0 + rk
        k_ok = k < K
        a = tl.load(E + ids[:, None] * stride_e + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + rn[None, :] * stride_w + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PREC)
    for k0 in range(0, K, BK):  # feature half
        k = k0 + rk
        k_ok = k < K
        a = tl.load(F + rm[:, None] * stride_f + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + rn[None, :] * stride_w + (K + k)[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(B + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Z + rm[:, None] * stride_z + rn[None, :], acc.to(Z.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.autotune(configs=mm_configs(), key=AUTOTUNE_KEYS, prune_configs_by=mm_prune())
@triton.jit
def _down_kernel(
    A,
    W,
    R,
    O,
    M,
    N,
    K,
    M_BUCKET,
    stride_a,
    stride_w,
    stride_r,
    stride_o,
    PREC: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """O[M, N] = R + A W^T (the down projection with the residual fused in the epilogue)."""
    rm, rn, m_ok, n_ok = output_tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + rk
        k_ok = k < K
        a = tl.load(A + rm[:, None] * stride_a + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + rn[None, :] * stride_w + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PREC)
    mask = m_ok[:, None] & n_ok[None, :]
    acc += tl.load(R + rm[:, None] * stride_r + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(O + rm[:, None] * stride_o + rn[None, :], acc.to(O.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# Backward kernels


# Here M_BUCKET buckets K = T, and the loads run along M (A) and N (B).
@triton.autotune(configs=mm_configs(), key=["M_BUCKET", "M", "N"], prune_configs_by=mm_prune(contiguous=("M", "N")))
@triton.jit
def _wgrad_kernel(
    A,
    B,
    IDS,
    RS,
    CS,
    C,
    M,
    N,
    K,
    V,
    M_BUCKET,
    stride_a,
    stride_b,
    stride_c,
    GATHER: tl.constexpr,
    ROW_SCALE: tl.constexpr,
    COL_SCALE: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """C[M, N] = CS[n] * sum_t A[t, m] * RS[t] * B[row(t), n], row(t) = IDS[t] if GATHER else t; K = T rows.

    The weight gradients that read the embedding (GATHER) or a normalised activation (RS = its rstd,
    CS = its norm weight) without materialising either."""
    rm, rn, m_ok, n_ok = output_tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + rk
        k_ok = k < K
        a = tl.load(A + k[None, :] * stride_a + rm[:, None], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if ROW_SCALE:
            rs = tl.load(RS + k, mask=k_ok, other=0.0)
            a = (a.to(tl.float32) * rs[None, :]).to(A.dtype.element_ty)
        if GATHER:
            rows = token_rows(IDS, k, k_ok, V)
        else:
            rows = k.to(tl.int64)
        b = tl.load(B + rows[:, None] * stride_b + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    if COL_SCALE:
        acc *= tl.load(CS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(C + rm[:, None] * stride_c + rn[None, :], acc.to(C.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _silu_mul_bwd_kernel(G, U, DA, ACT, DG, DU, numel, GATED: tl.constexpr, BLOCK: tl.constexpr):
    """GATED: act = SiLU(g) u, dg = da u SiLU'(g), du = da SiLU(g). Else: act = SiLU(g), dg = da SiLU'(g)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    da = tl.load(DA + offs, mask=ok, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    dsilu = s * (1.0 + g * (1.0 - s))
    if GATED:
        u = tl.load(U + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(ACT + offs, (silu * u).to(ACT.dtype.element_ty), mask=ok)
        tl.store(DG + offs, (da * u * dsilu).to(DG.dtype.element_ty), mask=ok)
        tl.store(DU + offs, (da * silu).to(DU.dtype.element_ty), mask=ok)
    else:
        tl.store(ACT + offs, silu.to(ACT.dtype.element_ty), mask=ok)
        tl.store(DG + offs, (da * dsilu).to(DG.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------
# Launchers: the steps both blocks' launchers take (features_fspad.py and features_griffin.py add only
# the launch of their own MLP and norm-backward kernels)


def _grid(M, N):
    return lambda meta: (triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"]))


def fc_forward(features, ids, embed, fc_weight, fc_bias, z) -> None:
    """Launch 1 of either forward: z = fc([e; f]) = E[ids] W_fe^T + f W_ff^T (+ b), written into z [T, H]."""
    T, H = features.shape
    V = embed.shape[0]
    _fc_kernel[_grid(T, H)](
        features,
        ids,
        embed,
        fc_weight,
        fc_bias if fc_bias is not None else fc_weight,
        z,
        T,
        H,
        H,
        V,
        _bucket(T),
        features.stride(0),
        embed.stride(0),
        fc_weight.stride(0),
        z.stride(0),
        HAS_BIAS=fc_bias is not None,
        PREC=dot_precision(features.dtype),
    )


def mlp_launch(fused, embed, inter: int, eps: float):
    """What launch 2 of either forward shares: (act, grid, sizes).

    act: the [T, inter] activation buffer the MLP kernel writes (launch 3 reads it); grid: one program per
    [BM, BN] tile of act; sizes: the arguments both MLP kernels take after their pointers, (M, N, K, V,
    M_BUCKET, eps) = (T, inter, H, the vocabulary size, T's autotune bucket, eps). `fused` is launch 1's
    output [T, H] (z or h), `embed` the embedding table.
    """
    T, H = fused.shape
    act = torch.empty(T, inter, dtype=fused.dtype, device=fused.device)
    return act, _grid(T, inter), (T, inter, H, embed.shape[0], _bucket(T), float(eps))


def down_forward(act, down_weight, residual, out) -> None:
    """Launch 3 of either forward: out = residual + act W_d^T, the residual added in the epilogue."""
    T, I = act.shape
    H = out.shape[1]
    _down_kernel[_grid(T, H)](
        act,
        down_weight,
        residual,
        out,
        T,
        H,
        I,
        _bucket(T),
        act.stride(0),
        down_weight.stride(0),
        residual.stride(0),
        out.stride(0),
        PREC=dot_precision(act.dtype),
    )


def wgrad(a, b, c, ids=None, row_scale=None, col_scale=None) -> None:
    """c[M, N] = col_scale * (a * row_scale[:, None])^T b[ids or rows]; a [T, M], c may be a strided view.

    A weight gradient whose operand is the embedding (ids: its rows gathered by token id) or a normalised
    activation (row_scale: its saved rstd, col_scale: its norm weight), never materialised."""
    T, M = a.shape
    N = c.shape[1]
    V = b.shape[0]
    _wgrad_kernel[_grid(M, N)](
        a,
        b,
        ids if ids is not None else a,
        row_scale if row_scale is not None else a,
        col_scale if col_scale is not None else a,
        c,
        M,
        N,
        T,
        V,
        _bucket(T),
        a.stride(0),
        b.stride(0),
        c.stride(0),
        GATHER=ids is not None,
        ROW_SCALE=row_scale is not None,
        COL_SCALE=col_scale is not None,
        PREC=dot_precision(a.dtype),
    )


def act_backward(grad_out, down_weight, pre, up, d_down_weight):
    """The backward of out = fused + act W_d^T with act = SiLU(pre) * up (up None: act = SiLU(pre)).

    Returns (d_pre, d_up) ([T, I] each; d_up None without up) and writes dW_d = grad_out^T act into
    d_down_weight unless it is None; act is recomputed in the same elementwise pass, not saved."""
    d_act = grad_out @ down_weight  # [T, I]
    act, d_pre = torch.empty_like(pre), torch.empty_like(pre)
    d_up = torch.empty_like(up) if up is not None else None
    n = pre.numel()
    BLOCK = 1024
    _silu_mul_bwd_kernel[(triton.cdiv(n, BLOCK),)](
        pre,
        up if up is not None else pre,
        d_act,
        act,
        d_pre,
        d_up if d_up is not None else d_pre,
        n,
        GATED=up is not None,
        BLOCK=BLOCK,
    )
    if d_down_weight is not None:
        torch.mm(grad_out.t(), act, out=d_down_weight)
    return d_pre, d_up


def norm_backward_launch(T: int, H: int, sums: int, device):
    """What both norm-backward row kernels' launches share: (grid, part, meta).

    Each program handles meta["ROWS"] of the T rows (one whole row of H in registers) and writes its `sums`
    column sums over them into part[program] ([programs, sums, H], fp32), for column_sums to finish; meta:
    the ROWS, BLOCK_H and num_warps keywords of the launch."""
    # Enough programs to fill a GPU, few partial-sum rows.
    rows = max(1, min(64, triton.next_power_of_2(triton.cdiv(T, 512))))
    programs = triton.cdiv(T, rows)
    part = torch.empty(programs, sums, H, dtype=torch.float32, device=device)
    # Spread wide rows (H = 4096..8192) over more warps so that the row does not spill.
    warps = max(4, min(16, triton.next_power_of_2(H) // 512))
    return (programs,), part, dict(ROWS=rows, BLOCK_H=triton.next_power_of_2(H), num_warps=warps)


def column_sums(part, grads) -> None:
    """grads[i] = part[:, i].sum(0) for each grads[i] that is not None: the per-program partial sums of a
    norm-backward kernel (see norm_backward_launch) reduced into the norm weights' and fc bias' gradients."""
    for i, grad in enumerate(grads):
        if grad is not None:
            grad.copy_(part[:, i].sum(0))


def fc_backward(d_fused, features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight) -> None:
    """The backward of fused = fc([e; f]) given d_fused [T, H]: d_features and dW_fc, each unless None (the
    bias gradient comes from the norm-backward kernel's column sums: column_sums)."""
    H = features.shape[1]
    if d_fc_weight is not None:
        wgrad(d_fused, embed_weight, d_fc_weight[:, :H], ids=token_ids)  # dW_fe = d_fused^T e, e gathered in the loads
        d_fc_weight[:, H:].copy_(d_fused.t() @ features)
    if d_features is not None:
        torch.mm(d_fused, fc_weight[:, H:], out=d_features)
