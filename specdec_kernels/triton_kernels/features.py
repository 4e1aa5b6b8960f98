"""Triton kernels of the FSPAD / GRIFFIN feature-sampling blocks, forward and backward.

The launchers fspad_feature_sampling, fspad_feature_sampling_backward, griffin_token_fusion and
griffin_token_fusion_backward are registered on specdec::<launcher>_triton (schemas: specdec_kernels/_schemas.py).

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


def _mm_configs(two_acc: bool = False):
    if _INTERPRET:  # the interpreter runs one small tile; autotuning there would only cost time
        return [triton.Config({"BM": 16, "BN": 32, "BK": 32}, num_warps=4, num_stages=1)]
    cfgs = [
        # decode: T <= 64 rows, many column blocks so that the weight read spreads over all SMs
        triton.Config({"BM": 16, "BN": 32, "BK": 128}, num_warps=4, num_stages=5),
        triton.Config({"BM": 16, "BN": 64, "BK": 128}, num_warps=4, num_stages=4),
        triton.Config({"BM": 32, "BN": 64, "BK": 128}, num_warps=4, num_stages=4),
        triton.Config({"BM": 64, "BN": 64, "BK": 64}, num_warps=4, num_stages=4),
        # training: large T, compute bound
        triton.Config({"BM": 128, "BN": 128, "BK": 64}, num_warps=8, num_stages=3),
        triton.Config({"BM": 64, "BN": 128, "BK": 64}, num_warps=4, num_stages=4),
        triton.Config({"BM": 128, "BN": 64, "BK": 64}, num_warps=4, num_stages=4),
        # small shared-memory footprint: fp32 operands of the two-accumulator kernels need more than
        # sm_80's 163 KiB in every config above; this one fits everywhere
        triton.Config({"BM": 32, "BN": 64, "BK": 32}, num_warps=4, num_stages=2),
    ]
    if not two_acc:  # one accumulator leaves registers for the widest tile
        cfgs.append(triton.Config({"BM": 128, "BN": 256, "BK": 64}, num_warps=8, num_stages=3))
    return cfgs


_KEYS = ["M_BUCKET", "N", "K"]


def _bucket(m: int) -> int:
    # Autotune per power-of-two bucket of T, not per T: decode T varies call to call (10..60 nodes).
    return triton.next_power_of_2(max(int(m), 16))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's own switch (off by default: exact fp32 like the reference); ignored for fp16/bf16.
    return "tf32" if (dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"


# ---------------------------------------------------------------------------------------------------
# Tile helpers shared by the kernels


@triton.jit
def _tile(M, N, BM: tl.constexpr, BN: tl.constexpr):
    """This program's [BM, BN] output tile: row and column indices and their in-bounds masks."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    return rm, rn, rm < M, rn < N


@triton.jit
def _token_rows(IDS, offs, mask, V):
    """Embedding rows of the token ids at IDS[offs], int64, clamped to [0, V): memory safety only, the ids
    are range-checked before launch."""
    rows = tl.load(IDS + offs, mask=mask, other=0).to(tl.int64)
    return tl.minimum(tl.maximum(rows, 0), V - 1)


# ---------------------------------------------------------------------------------------------------
# Forward kernels


@triton.autotune(configs=_mm_configs(), key=_KEYS)
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
    rm, rn, m_ok, n_ok = _tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    ids = _token_rows(IDS, rm, m_ok, V)
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


@triton.autotune(configs=_mm_configs(two_acc=True), key=_KEYS)
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
    rm, rn, m_ok, n_ok = _tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    ids = _token_rows(IDS, rm, m_ok, V)
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


@triton.autotune(configs=_mm_configs(two_acc=True), key=_KEYS)
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
    rm, rn, m_ok, n_ok = _tile(M, N, BM, BN)
    rk = tl.arange(0, BK)
    ids = _token_rows(IDS, rm, m_ok, V)
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


@triton.autotune(configs=_mm_configs(), key=_KEYS)
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
    rm, rn, m_ok, n_ok = _tile(M, N, BM, BN)
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


@triton.autotune(configs=_mm_configs(), key=["M_BUCKET", "M", "N"])  # here M_BUCKET buckets K = T
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
    rm, rn, m_ok, n_ok = _tile(M, N, BM, BN)
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
            rows = _token_rows(IDS, k, k_ok, V)
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
        row = _token_rows(IDS, t, t_ok, V)
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


def _grid(M, N):
    return lambda meta: (triton.cdiv(M, meta["BM"]), triton.cdiv(N, meta["BN"]))


def _fc(features, ids, embed, fc_weight, fc_bias, z):
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
        PREC=_dot_precision(features.dtype),
    )


def _down(act, down_weight, residual, out):
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
        PREC=_dot_precision(act.dtype),
    )


def _wgrad(a, b, c, ids=None, row_scale=None, col_scale=None):
    """c[M, N] = col_scale * (a * row_scale[:, None])^T b[ids or rows]; a [T, M], c may be a strided view."""
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
        PREC=_dot_precision(a.dtype),
    )


def _row_block(T: int) -> int:
    # Rows per program of the norm-backward kernels: enough programs to fill a GPU, few partial-sum rows.
    return max(1, min(64, triton.next_power_of_2(triton.cdiv(T, 512))))


def _row_warps(H: int) -> int:
    # One whole row lives in registers: spread wide rows (H = 4096..8192) over more warps to avoid spills.
    return max(4, min(16, triton.next_power_of_2(H) // 512))


def _silu_bwd(g, u, da, act, dg, du):
    n = g.numel()
    BLOCK = 1024
    _silu_mul_bwd_kernel[(triton.cdiv(n, BLOCK),)](
        g, u if u is not None else g, da, act, dg, du if du is not None else dg, n, GATED=u is not None, BLOCK=BLOCK
    )


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
    T, H = features.shape
    I = gate_weight.shape[0]
    V = embed_weight.shape[0]
    _fc(features, token_ids, embed_weight, fc_weight, fc_bias, z)
    act = torch.empty(T, I, dtype=features.dtype, device=features.device)
    store = gate is not None and up is not None
    _fspad_mlp_kernel[_grid(T, I)](
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
        T,
        I,
        H,
        V,
        _bucket(T),
        float(eps),
        z.stride(0),
        embed_weight.stride(0),
        gate_weight.stride(0),
        up_weight.stride(0),
        act.stride(0),
        STORE=store,
        PREC=_dot_precision(features.dtype),
    )
    _down(act, down_weight, z, out)


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
    T, H = features.shape
    I = up_weight.shape[0]
    V = embed_weight.shape[0]
    _fc(features, token_ids, embed_weight, fc_weight, fc_bias, h)
    act = torch.empty(T, I, dtype=features.dtype, device=features.device)
    store = pre_act is not None
    _griffin_mlp_kernel[_grid(T, I)](
        h,
        token_ids,
        embed_weight,
        norm_b_weight,
        norm_a_weight,
        up_weight,
        act,
        pre_act if store else act,
        stats,
        T,
        I,
        H,
        V,
        _bucket(T),
        float(eps),
        h.stride(0),
        embed_weight.stride(0),
        up_weight.stride(0),
        act.stride(0),
        STORE=store,
        PREC=_dot_precision(features.dtype),
    )
    _down(act, down_weight, h, out)


def _fc_backward(dz, part_db, features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight, d_fc_bias):
    H = features.shape[1]
    if d_fc_weight is not None:
        _wgrad(dz, embed_weight, d_fc_weight[:, :H], ids=token_ids)  # dW_fe = dz^T e, e gathered in the loads
        d_fc_weight[:, H:].copy_(dz.t() @ features)
    if d_fc_bias is not None:
        d_fc_bias.copy_(part_db.sum(0))
    if d_features is not None:
        torch.mm(dz, fc_weight[:, H:], out=d_features)


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
    T, H = features.shape
    da = grad_out @ down_weight  # [T, I]
    act, dg, du = torch.empty_like(gate), torch.empty_like(gate), torch.empty_like(up)
    _silu_bwd(gate, up, da, act, dg, du)
    if d_down_weight is not None:
        torch.mm(grad_out.t(), act, out=d_down_weight)
    if d_gate_weight is not None:
        _wgrad(dg, embed_weight, d_gate_weight, ids=token_ids)  # dW_g = dg^T e
    if d_up_weight is not None:
        _wgrad(du, z, d_up_weight, row_scale=rstd, col_scale=norm_weight)  # dW_u = du^T RMSNorm(z)
    need_dz = d_features is not None or d_fc_weight is not None or d_fc_bias is not None
    if not (need_dz or d_norm_weight is not None):
        return
    dy = du @ up_weight  # [T, H]
    dz = torch.empty_like(z)
    rows = _row_block(T)
    nprog = triton.cdiv(T, rows)
    part = torch.empty(nprog, 2, H, dtype=torch.float32, device=z.device)
    _fspad_norm_bwd_kernel[(nprog,)](
        grad_out,
        dy,
        z,
        norm_weight,
        rstd,
        dz,
        part,
        T,
        H,
        ROWS=rows,
        BLOCK_H=triton.next_power_of_2(H),
        num_warps=_row_warps(H),
    )
    if d_norm_weight is not None:
        d_norm_weight.copy_(part[:, 0].sum(0))
    if need_dz:
        _fc_backward(dz, part[:, 1], features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight, d_fc_bias)


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
    T, H = features.shape
    V = embed_weight.shape[0]
    dact = grad_out @ down_weight  # [T, I]
    act, dv = torch.empty_like(pre_act), torch.empty_like(pre_act)
    _silu_bwd(pre_act, None, dact, act, dv, None)
    if d_down_weight is not None:
        torch.mm(grad_out.t(), act, out=d_down_weight)
    if d_up_weight is not None:
        # x1 = n_a n_b h (rb r1) and x2 = n_a e re: row scales from the saved statistics, column scales from
        # the norm weights, so neither normalised half (nor their concatenation) is materialised.
        s1 = stats[:, 0] * stats[:, 1]
        _wgrad(dv, h, d_up_weight[:, :H], row_scale=s1, col_scale=norm_a_weight * norm_b_weight)
        _wgrad(
            dv,
            embed_weight,
            d_up_weight[:, H:],
            ids=token_ids,
            row_scale=stats[:, 2].contiguous(),
            col_scale=norm_a_weight,
        )
    need_dh = d_features is not None or d_fc_weight is not None or d_fc_bias is not None
    if not (need_dh or d_norm_a_weight is not None or d_norm_b_weight is not None):
        return
    dx = dv @ up_weight  # [T, 2H] = [dx1 | dx2]
    dh = torch.empty_like(h)
    rows = _row_block(T)
    nprog = triton.cdiv(T, rows)
    part = torch.empty(nprog, 3, H, dtype=torch.float32, device=h.device)
    _griffin_norm_bwd_kernel[(nprog,)](
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
        V,
        embed_weight.stride(0),
        ROWS=rows,
        BLOCK_H=triton.next_power_of_2(H),
        num_warps=_row_warps(H),
    )
    if d_norm_a_weight is not None:
        d_norm_a_weight.copy_(part[:, 0].sum(0))
    if d_norm_b_weight is not None:
        d_norm_b_weight.copy_(part[:, 1].sum(0))
    if need_dh:
        _fc_backward(dh, part[:, 2], features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight, d_fc_bias)


# Each launcher is registered under its own name: specdec::<name>_triton.
for _fn in (
    fspad_feature_sampling,
    fspad_feature_sampling_backward,
    griffin_token_fusion,
    griffin_token_fusion_backward,
):
    torch.library.register_kernel(f"specdec::{_fn.__name__}_triton", ("cpu", "cuda"), _fn)
