"""Triton kernels of the FSPAD feature-sampling block, forward and backward.

The launchers fspad_feature_sampling and fspad_feature_sampling_backward are registered on
specdec::<launcher>_triton (schemas: specdec_kernels/_schemas.py).

    z = W_fe e + W_ff f + b,   u = z + W_d (SiLU(W_g e) * rstd(z) * W_u (n * z))

The math, the plan of the launches, and the kernels and launch steps shared with GRIFFIN: features_shared.py
(imported as `shared`).
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
def _fspad_mlp_kernel(
    Z,
    IDS,
    E,
    NW,
    WG,
    WU,
    ACT,
    GATE,
    UP,
    RSTD,
    M,
    N,
    K,
    V,
    M_BUCKET,
    eps,
    stride_z,
    stride_e,
    stride_wg,
    stride_wu,
    stride_o,
    STORE: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """ACT[M, N] = SiLU(E[ids] WG^T) * rstd(Z) (Z * NW) WU^T; optionally GATE, UP (pre-activations), RSTD."""
    rm, rn, m_ok, n_ok = shared.output_tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    ids = shared.token_rows(IDS, rm, m_ok, V)
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    ss = tl.zeros((BM,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + rk
        k_ok = k < K
        mk = m_ok[:, None] & k_ok[None, :]
        kn = k_ok[:, None] & n_ok[None, :]
        e = tl.load(E + ids[:, None] * stride_e + k[None, :], mask=mk, other=0.0)
        z = tl.load(Z + rm[:, None] * stride_z + k[None, :], mask=mk, other=0.0).to(tl.float32)
        ss += tl.sum(z * z, axis=1)  # RMSNorm statistics, summed while streaming the operand
        nw = tl.load(NW + k, mask=k_ok, other=0.0).to(tl.float32)
        zn = (z * nw[None, :]).to(e.dtype)
        wg = tl.load(WG + rn[None, :] * stride_wg + k[:, None], mask=kn, other=0.0)
        wu = tl.load(WU + rn[None, :] * stride_wu + k[:, None], mask=kn, other=0.0)
        acc_g = tl.dot(e, wg, acc_g, input_precision=PREC)
        acc_u = tl.dot(zn, wu, acc_u, input_precision=PREC)
    rstd = 1.0 / tl.sqrt(ss / K + eps)
    up = acc_u * rstd[:, None]
    act = acc_g * tl.sigmoid(acc_g) * up
    out_mask = m_ok[:, None] & n_ok[None, :]
    offs = rm[:, None] * stride_o + rn[None, :]
    tl.store(ACT + offs, act.to(ACT.dtype.element_ty), mask=out_mask)
    if STORE:
        tl.store(GATE + offs, acc_g.to(GATE.dtype.element_ty), mask=out_mask)
        tl.store(UP + offs, up.to(UP.dtype.element_ty), mask=out_mask)
    if tl.program_id(1) == 0:  # one column block writes the row statistics
        tl.store(RSTD + rm, rstd, mask=m_ok)


# ---------------------------------------------------------------------------------------------------
# Backward kernels


@triton.jit
def _fspad_norm_bwd_kernel(DO, DY, Z, NW, RSTD, DZ, PART, T, H, ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    """dz = dO + r (n dy - zh mean(n dy zh)), zh = z r; PART[pid] = [sum_rows dy zh, sum_rows dz] (dn, db)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    c_ok = cols < H
    nw = tl.load(NW + cols, mask=c_ok, other=0.0).to(tl.float32)
    dn = tl.zeros((BLOCK_H,), dtype=tl.float32)
    db = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for i in range(ROWS):
        t = pid * ROWS + i
        ok = c_ok & (t < T)
        off = t.to(tl.int64) * H + cols
        r = tl.load(RSTD + t, mask=t < T, other=0.0)
        z = tl.load(Z + off, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + off, mask=ok, other=0.0).to(tl.float32)
        zh = z * r
        g = nw * dy
        mean = tl.sum(g * zh, axis=0) / H
        dz = tl.load(DO + off, mask=ok, other=0.0).to(tl.float32) + r * (g - zh * mean)
        tl.store(DZ + off, dz.to(DZ.dtype.element_ty), mask=ok)
        dn += dy * zh
        db += tl.where(ok, dz, 0.0)
    tl.store(PART + pid * 2 * H + cols, dn, mask=c_ok)
    tl.store(PART + pid * 2 * H + H + cols, db, mask=c_ok)


# ---------------------------------------------------------------------------------------------------
# Launchers


def fspad_feature_sampling(
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_weight,
    gate_weight,
    up_weight,
    down_weight,
    eps,
    out,
    z,
    rstd,
    gate,
    up,
) -> None:
    """specdec::fspad_feature_sampling_triton: the forward, three launches (see the module docstring)."""
    shared.fc_forward(features, token_ids, embed_weight, fc_weight, fc_bias, z)
    act, grid, sizes = shared.mlp_launch(z, embed_weight, gate_weight.shape[0], eps)
    store = gate is not None and up is not None
    _fspad_mlp_kernel[grid](
        z,
        token_ids,
        embed_weight,
        norm_weight,
        gate_weight,
        up_weight,
        act,
        gate if store else act,
        up if store else act,
        rstd,
        *sizes,
        z.stride(0),
        embed_weight.stride(0),
        gate_weight.stride(0),
        up_weight.stride(0),
        act.stride(0),
        STORE=store,
        PREC=shared.dot_precision(z.dtype),
    )
    shared.down_forward(act, down_weight, z, out)


def fspad_feature_sampling_backward(
    grad_out,
    features,
    token_ids,
    embed_weight,
    fc_weight,
    fc_bias,
    norm_weight,
    gate_weight,
    up_weight,
    down_weight,
    eps,
    z,
    rstd,
    gate,
    up,
    d_features,
    d_fc_weight,
    d_fc_bias,
    d_norm_weight,
    d_gate_weight,
    d_up_weight,
    d_down_weight,
) -> None:
    """specdec::fspad_feature_sampling_backward_triton: the gradients that are not None."""
    dg, du = shared.act_backward(grad_out, down_weight, gate, up, d_down_weight)
    if d_gate_weight is not None:
        shared.wgrad(dg, embed_weight, d_gate_weight, ids=token_ids)  # dW_g = dg^T e
    if d_up_weight is not None:
        shared.wgrad(du, z, d_up_weight, row_scale=rstd, col_scale=norm_weight)  # dW_u = du^T RMSNorm(z)
    if all(g is None for g in (d_features, d_fc_weight, d_fc_bias, d_norm_weight)):
        return  # the rest all goes through dz
    T, H = z.shape
    dy = du @ up_weight  # [T, H]
    dz = torch.empty_like(z)
    grid, part, meta = shared.norm_backward_launch(T, H, 2, z.device)
    _fspad_norm_bwd_kernel[grid](grad_out, dy, z, norm_weight, rstd, dz, part, T, H, **meta)
    shared.column_sums(part, (d_norm_weight, d_fc_bias))
    shared.fc_backward(dz, features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight)


# Each launcher is registered under its own name: specdec::<name>_triton.
for _fn in (fspad_feature_sampling, fspad_feature_sampling_backward):
    torch.library.register_kernel(f"specdec::{_fn.__name__}_triton", ("cpu", "cuda"), _fn)
