"""Triton kernels of the GRIFFIN token-fusion block, forward and backward.

The launchers griffin_token_fusion and griffin_token_fusion_backward are registered on
specdec::<launcher>_triton (schemas: specdec_kernels/_schemas.py).

    h = W_fe e + W_ff f + b,   v = rb r1 * W_u1 (a * n_b * h) + re * W_u2 (a * e),   g = h + W_d SiLU(v)

The math (rb, r1, re), the plan of the launches, and the kernels and launch steps shared with FSPAD:
features_shared.py (imported as `shared`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import features_shared as shared

# ---------------------------------------------------------------------------------------------------
# Forward kernels


@triton.autotune(
    configs=shared.mm_configs(two_acc=True),
    key=shared.AUTOTUNE_KEYS,
    prune_configs_by=shared.mm_prune(two_acc=True),
)
@triton.jit
def _griffin_mlp_kernel(
    Hs,
    IDS,
    E,
    NB,
    NA,
    WU,
    ACT,
    PRE,
    STATS,
    M,
    N,
    K,
    V,
    M_BUCKET,
    eps,
    stride_h,
    stride_e,
    stride_wu,
    stride_o,
    STORE: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """ACT = SiLU(v), v = rb r1 (Hs * NB * NA) WU[:, :K]^T + re (E[ids] * NA) WU[:, K:]^T; optionally PRE = v;
    STATS[:, 0..2] = rb, r1, re (see the module docstring)."""
    rm, rn, m_ok, n_ok = shared.output_tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    ids = shared.token_rows(IDS, rm, m_ok, V)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)
    ss_h = tl.zeros((BM,), dtype=tl.float32)
    ss_b = tl.zeros((BM,), dtype=tl.float32)
    ss_e = tl.zeros((BM,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + rk
        k_ok = k < K
        mk = m_ok[:, None] & k_ok[None, :]
        kn = k_ok[:, None] & n_ok[None, :]
        h = tl.load(Hs + rm[:, None] * stride_h + k[None, :], mask=mk, other=0.0).to(tl.float32)
        e = tl.load(E + ids[:, None] * stride_e + k[None, :], mask=mk, other=0.0)
        ef = e.to(tl.float32)
        nb = tl.load(NB + k, mask=k_ok, other=0.0).to(tl.float32)
        na = tl.load(NA + k, mask=k_ok, other=0.0).to(tl.float32)
        hb = h * nb[None, :]
        ss_h += tl.sum(h * h, axis=1)
        ss_b += tl.sum(hb * hb, axis=1)
        ss_e += tl.sum(ef * ef, axis=1)
        x1 = (hb * na[None, :]).to(e.dtype)
        x2 = (ef * na[None, :]).to(e.dtype)
        w1 = tl.load(WU + rn[None, :] * stride_wu + k[:, None], mask=kn, other=0.0)
        w2 = tl.load(WU + rn[None, :] * stride_wu + (K + k)[:, None], mask=kn, other=0.0)
        acc1 = tl.dot(x1, w1, acc1, input_precision=PREC)
        acc2 = tl.dot(x2, w2, acc2, input_precision=PREC)
    rb = 1.0 / tl.sqrt(ss_h / K + eps)
    r1 = 1.0 / tl.sqrt(rb * rb * (ss_b / K) + eps)  # N_b(h) = n_b * h * rb, so mean(N_b(h)^2) = rb^2 mean((n_b h)^2)
    re = 1.0 / tl.sqrt(ss_e / K + eps)
    v = acc1 * (rb * r1)[:, None] + acc2 * re[:, None]
    out_mask = m_ok[:, None] & n_ok[None, :]
    offs = rm[:, None] * stride_o + rn[None, :]
    tl.store(ACT + offs, (v * tl.sigmoid(v)).to(ACT.dtype.element_ty), mask=out_mask)
    if STORE:
        tl.store(PRE + offs, v.to(PRE.dtype.element_ty), mask=out_mask)
    if tl.program_id(1) == 0:
        tl.store(STATS + rm * 3 + 0, rb, mask=m_ok)
        tl.store(STATS + rm * 3 + 1, r1, mask=m_ok)
        tl.store(STATS + rm * 3 + 2, re, mask=m_ok)


# ---------------------------------------------------------------------------------------------------
# Backward kernels


@triton.jit
def _griffin_norm_bwd_kernel(
    DO, DX, Hs, IDS, E, NB, NA, STATS, DH, PART, T, H, V, stride_e, ROWS: tl.constexpr, BLOCK_H: tl.constexpr
):
    """Backward through x1 = N_a(N_b(h)) and x2 = N_a(e) given DX = [dx1 | dx2] [T, 2H]:
    dh = dO + N_b'(N_a'(dx1)); PART[pid] = [d n_a, d n_b, d b] partial sums over its rows."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    c_ok = cols < H
    nb = tl.load(NB + cols, mask=c_ok, other=0.0).to(tl.float32)
    na = tl.load(NA + cols, mask=c_ok, other=0.0).to(tl.float32)
    dna = tl.zeros((BLOCK_H,), dtype=tl.float32)
    dnb = tl.zeros((BLOCK_H,), dtype=tl.float32)
    db = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for i in range(ROWS):
        t = pid * ROWS + i
        t_ok = t < T
        ok = c_ok & t_ok
        off = t.to(tl.int64) * H + cols
        rb = tl.load(STATS + t * 3 + 0, mask=t_ok, other=0.0)
        r1 = tl.load(STATS + t * 3 + 1, mask=t_ok, other=0.0)
        re = tl.load(STATS + t * 3 + 2, mask=t_ok, other=0.0)
        row = shared.token_rows(IDS, t, t_ok, V)
        e = tl.load(E + row * stride_e + cols, mask=ok, other=0.0).to(tl.float32)
        h = tl.load(Hs + off, mask=ok, other=0.0).to(tl.float32)
        dx1 = tl.load(DX + t.to(tl.int64) * 2 * H + cols, mask=ok, other=0.0).to(tl.float32)
        dx2 = tl.load(DX + t.to(tl.int64) * 2 * H + H + cols, mask=ok, other=0.0).to(tl.float32)
        hh = h * rb  # h normalised
        yh = nb * hh * r1  # N_b(h) normalised (x1 / n_a)
        dna += dx1 * yh + dx2 * e * re
        g1 = na * dx1
        dyb = r1 * (g1 - yh * (tl.sum(g1 * yh, axis=0) / H))
        dnb += dyb * hh
        g2 = nb * dyb
        dh = tl.load(DO + off, mask=ok, other=0.0).to(tl.float32) + rb * (g2 - hh * (tl.sum(g2 * hh, axis=0) / H))
        tl.store(DH + off, dh.to(DH.dtype.element_ty), mask=ok)
        db += tl.where(ok, dh, 0.0)
    base = PART + pid * 3 * H
    tl.store(base + cols, dna, mask=c_ok)
    tl.store(base + H + cols, dnb, mask=c_ok)
    tl.store(base + 2 * H + cols, db, mask=c_ok)


# ---------------------------------------------------------------------------------------------------
# Launchers


def griffin_token_fusion(
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_b_weight,
    norm_a_weight,
    up_weight,
    down_weight,
    eps,
    out,
    h,
    stats,
    pre_act,
) -> None:
    """specdec::griffin_token_fusion_triton: the forward, three launches (see the module docstring)."""
    shared.fc_forward(features, token_ids, embed_weight, fc_weight, fc_bias, h)
    act, grid, sizes = shared.mlp_launch(h, embed_weight, up_weight.shape[0], eps)
    store = pre_act is not None
    _griffin_mlp_kernel[grid](
        h,
        token_ids,
        embed_weight,
        norm_b_weight,
        norm_a_weight,
        up_weight,
        act,
        pre_act if store else act,
        stats,
        *sizes,
        h.stride(0),
        embed_weight.stride(0),
        up_weight.stride(0),
        act.stride(0),
        STORE=store,
        PREC=shared.dot_precision(h.dtype),
    )
    shared.down_forward(act, down_weight, h, out)


def griffin_token_fusion_backward(
    grad_out,
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_b_weight,
    norm_a_weight,
    up_weight,
    down_weight,
    eps,
    h,
    stats,
    pre_act,
    d_features,
    d_fc_weight,
    d_fc_bias,
    d_norm_b_weight,
    d_norm_a_weight,
    d_up_weight,
    d_down_weight,
) -> None:
    """specdec::griffin_token_fusion_backward_triton: the gradients that are not None."""
    T, H = h.shape
    dv, _ = shared.act_backward(grad_out, down_weight, pre_act, None, d_down_weight)
    if d_up_weight is not None:
        # x1 = n_a n_b h (rb r1) and x2 = n_a e re: row scales from the saved statistics, column scales from
        # the norm weights, so neither normalised half (nor their concatenation) is materialised.
        s1 = stats[:, 0] * stats[:, 1]
        shared.wgrad(dv, h, d_up_weight[:, :H], row_scale=s1, col_scale=norm_a_weight * norm_b_weight)
        shared.wgrad(
            dv,
            embed_weight,
            d_up_weight[:, H:],
            ids=token_ids,
            row_scale=stats[:, 2].contiguous(),
            col_scale=norm_a_weight,
        )
    if all(g is None for g in (d_features, d_fc_weight, d_fc_bias, d_norm_a_weight, d_norm_b_weight)):
        return  # the rest all goes through dh
    dx = dv @ up_weight  # [T, 2H] = [dx1 | dx2]
    dh = torch.empty_like(h)
    grid, part, meta = shared.norm_backward_launch(T, H, 3, h.device)
    _griffin_norm_bwd_kernel[grid](
        grad_out,
        dx,
        h,
        token_ids,
        embed_weight,
        norm_b_weight,
        norm_a_weight,
        stats,
        dh,
        part,
        T,
        H,
        embed_weight.shape[0],
        embed_weight.stride(0),
        **meta,
    )
    shared.column_sums(part, (d_norm_a_weight, d_norm_b_weight, d_fc_bias))
    shared.fc_backward(dh, features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight)


# Each launcher is registered under its own name: specdec::<name>_triton.
for _fn in (griffin_token_fusion, griffin_token_fusion_backward):
    torch.library.register_kernel(f"specdec::{_fn.__name__}_triton", ("cpu", "cuda"), _fn)
