"""The CUDA kernels of the FSPAD / GRIFFIN feature blocks (csrc/cuda/features.cu) on the CPU under the CUDA
emulation (tests/cuda_emulation/), forward and backward.

Each kernel runs through features.cu's own torch-free launchers (csrc/cuda/features_launch.h: tile choice,
grid, the norm-backward blocks), composed here with torch's matrix products step for step as
csrc/cuda/features_cuda.cpp composes them with ATen's (`fspad_forward`, `fspad_backward`, `griffin_forward`,
`griffin_backward` below mirror its four functions). The composed output, saved activations and every
gradient are compared with the reference (specdec_kernels.reference.features) in fp64 by test_features.py's
rule: at most twice the error of PyTorch's own composition in the test dtype plus the dtype's tolerance
for the reductions involved. Test ids name the kernels each case runs. See docs/testing.md, "CUDA kernels
under emulation".
"""

from __future__ import annotations

import pytest
import torch

from specdec_kernels.reference import features as ref

import cuda_emulation as ce
from test_features import EPS, GRAD_NAMES, OPS, check_like_torch, convert, make_inputs, reduction, run

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(ce.unavailable_reason() is not None, reason=str(ce.unavailable_reason())),
]

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


# ---------------------------------------------------------------------------------------------------
# The launchers of features_launch.h on torch tensors. Matrices (and strided vectors) cross as spans: the
# elements from a view's first to its last, with the leading dimension as a scalar.


def _span(t):
    """The flat view of t's storage from t's first element to its last (t: unit stride along its last dim)."""
    n = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return torch.as_strided(t, (n,), (1,), t.storage_offset())


def _ld(t):
    return t.stride(0) if t.dim() == 2 else 1


def _launch(entry, dtype, scalars, inputs, outputs, variant):
    """Run `entry` on tensor views (None: an absent, optional operand); outputs are written back into their
    views, and the elements between an output view's rows keep what they held."""
    ins = {k: _span(t) for k, t in inputs.items() if t is not None}
    outs = {k: _span(t).clone() for k, t in outputs.items() if t is not None}
    got = ce.run(entry, {"dtype": DTYPE_CODE[dtype], **scalars}, ins, outs, variant=variant)
    for k, t in outputs.items():
        if t is not None:
            _span(t).copy_(got[k])


def _ids_scalars(ids, embed):
    return {"ids64": int(ids.dtype == torch.int64), "vocab": embed.shape[0]}


def gemm_nt(segs, epi, out, ids, embed, bias=None, pre=None, mul=None, variant="plain"):
    """launch_gemm_nt: out = sum over segs of A W^T, then epilogue `epi` (0 store, 1 gated SiLU, 2 SiLU).

    segs: dicts of a, w (views), gather (bool: a's rows are embedding rows by token id), row_scale (a strided
    fp32 view), col_scale."""
    M, N = out.shape
    scalars = dict(M=M, N=N, nseg=len(segs), epi=epi, ldo=_ld(out), **_ids_scalars(ids, embed))
    scalars.update(ldp=_ld(pre) if pre is not None else 0, ldm=_ld(mul) if mul is not None else 0)
    inputs = dict(bias=bias, mul=mul)
    for s, g in enumerate(segs):
        rs = g.get("row_scale")
        scalars.update({f"K{s}": g["w"].shape[1], f"lda{s}": _ld(g["a"]), f"ldw{s}": _ld(g["w"])})
        scalars[f"rs_stride{s}"] = rs.stride(0) if rs is not None else 0
        inputs.update({f"a{s}": g["a"], f"w{s}": g["w"], f"row_scale{s}": rs, f"col_scale{s}": g.get("col_scale")})
        inputs[f"ids{s}"] = ids if g.get("gather") else None
    _launch("gemm_nt_kernel", out.dtype, scalars, inputs, dict(out=out, pre=pre), variant)


def gemm_tn(g, embed, ids, c, row_scale=None, col_scale=None, variant="plain"):
    """launch_gemm_tn with the embedding rows gathered by token id: c = g^T B, B = (normalised) E[ids]."""
    scalars = dict(R=g.shape[0], M=g.shape[1], N=embed.shape[1], ldg=_ld(g), ldb=_ld(embed), ldc=_ld(c))
    scalars.update(rs_stride=row_scale.stride(0) if row_scale is not None else 0, **_ids_scalars(ids, embed))
    inputs = dict(g=g, b=embed, ids=ids, row_scale=row_scale, col_scale=col_scale)
    _launch("gemm_tn_kernel", g.dtype, scalars, inputs, dict(c=c), variant)


def rms_rows(x, w, y, rstd, saved, eps, variant="plain"):
    """launch_rms_rows: y = w * (x rstd); rstd written (saved False) or read."""
    scalars = dict(T=x.shape[0], H=x.shape[1], saved=int(saved), eps=float(eps))
    ins, outs = dict(x=x, w=w), dict(y=y)
    (ins if saved else outs)["rstd"] = rstd
    _launch("rms_rows_kernel", x.dtype, scalars, ins, outs, variant)


def griffin_norms(h, embed, ids, norm_b, norm_a, x1, stats, saved, eps, variant="plain"):
    """launch_griffin_norms: x1 = N_a(N_b(h)); stats [rstd(h), rstd(N_b(h)), rstd(e)] written or read."""
    scalars = dict(T=h.shape[0], H=h.shape[1], lde=_ld(embed), saved=int(saved), eps=float(eps))
    scalars.update(_ids_scalars(ids, embed))
    ins, outs = dict(h=h, embed=embed, ids=ids, norm_b=norm_b, norm_a=norm_a), dict(x1=x1)
    (ins if saved else outs)["stats"] = stats
    _launch("griffin_norms_kernel", h.dtype, scalars, ins, outs, variant)


def silu_backward(g, u, da, act, dg, du, variant="plain"):
    """launch_silu_backward, gated (u given, FSPAD) or plain (GRIFFIN), elementwise over g.numel() entries."""
    ins = dict(g=g, u=u, da=da)
    _launch("silu_backward_kernel", g.dtype, dict(n=g.numel()), ins, dict(act=act, dg=dg, du=du), variant)


def fspad_norm_backward(dout, dy, z, norm_w, rstd, dz, d_norm, d_bias, variant="plain"):
    """launch_fspad_norm_backward, then launch_column_sums of its partial sums into d_norm / d_bias; returns the
    number of blocks the launcher planned."""
    ins = dict(dout=dout, dy=dy, z=z, norm_w=norm_w, rstd=rstd)
    outs = dict(dz=dz, d_norm=d_norm, d_bias=d_bias, nblk=_new(1, dtype=torch.int64))
    _launch("fspad_norm_backward_kernel", z.dtype, dict(T=z.shape[0], H=z.shape[1]), ins, outs, variant)
    return int(outs["nblk"])


def griffin_norm_backward(dout, dx1, dx2, h, embed, ids, norm_b, norm_a, stats, dh, grads, variant="plain"):
    """launch_griffin_norm_backward, then launch_column_sums into grads d_norm_a / d_norm_b / d_bias; returns the
    number of blocks the launcher planned."""
    scalars = dict(T=h.shape[0], H=h.shape[1], ldx=_ld(dx1), lde=_ld(embed), **_ids_scalars(ids, embed))
    ins = dict(dout=dout, dx1=dx1, dx2=dx2, h=h, embed=embed, ids=ids, norm_b=norm_b, norm_a=norm_a, stats=stats)
    nblk = _new(1, dtype=torch.int64)
    _launch("griffin_norm_backward_kernel", h.dtype, scalars, ins, dict(dh=dh, nblk=nblk, **grads), variant)
    return int(nblk)


# ---------------------------------------------------------------------------------------------------
# csrc/cuda/features_cuda.cpp, step for step: the kernels above, ATen's products as torch's in the dtype.


def _new(*shape, dtype):
    return ce.poisoned(shape, dtype)


def _fc_forward(a, out, variant):
    """z (or h) = [e; f] W_fc^T + b: two segments over W_fc's column halves, one accumulator."""
    H = a["features"].shape[1]
    w = a["fc_weight"]
    segs = [dict(a=a["embed_weight"], w=w[:, :H], gather=True), dict(a=a["features"], w=w[:, H:])]
    gemm_nt(segs, 0, out, a["token_ids"], a["embed_weight"], bias=a["fc_bias"], variant=variant)


def _fc_backward(a, dz, grads, variant):
    """d_features, d_fc_weight (its embedding half by the gathered wgrad) from dz."""
    H = a["features"].shape[1]
    d_fc = _new(H, 2 * H, dtype=dz.dtype)
    gemm_tn(dz, a["embed_weight"], a["token_ids"], d_fc[:, :H], variant=variant)
    d_fc[:, H:] = dz.t() @ a["features"]
    grads.update(features=dz @ a["fc_weight"][:, H:], fc_weight=d_fc)


def fspad_forward(a, variant="plain"):
    """fspad_feature_sampling_cuda: (out, saved activations z, rstd, gate, up)."""
    (T, H), I, dt = a["features"].shape, a["gate_weight"].shape[0], a["features"].dtype
    z, y, rstd = _new(T, H, dtype=dt), _new(T, H, dtype=dt), _new(T, dtype=torch.float32)
    _fc_forward(a, z, variant)
    rms_rows(z, a["norm_weight"], y, rstd, False, EPS, variant)
    up = y @ a["up_weight"].t()
    act, gate = _new(T, I, dtype=dt), _new(T, I, dtype=dt)
    segs = [dict(a=a["embed_weight"], w=a["gate_weight"], gather=True)]
    gemm_nt(segs, 1, act, a["token_ids"], a["embed_weight"], pre=gate, mul=up, variant=variant)
    return torch.addmm(z, act, a["down_weight"].t()), dict(z=z, rstd=rstd, gate=gate, up=up)


def fspad_backward(g, a, s, variant="plain"):
    """fspad_feature_sampling_backward_cuda: every gradient, by name."""
    (T, H), I, dt = a["features"].shape, a["gate_weight"].shape[0], a["features"].dtype
    da = g @ a["down_weight"]
    act, dg, du = (_new(T, I, dtype=dt) for _ in range(3))
    silu_backward(s["gate"], s["up"], da, act, dg, du, variant)
    grads = dict(down_weight=g.t() @ act, gate_weight=_new(I, H, dtype=dt))
    gemm_tn(dg, a["embed_weight"], a["token_ids"], grads["gate_weight"], variant=variant)
    y = _new(T, H, dtype=dt)
    rms_rows(s["z"], a["norm_weight"], y, s["rstd"], True, 0.0, variant)
    grads["up_weight"] = du.t() @ y
    dy = du @ a["up_weight"]
    dz, d_norm = _new(T, H, dtype=dt), _new(H, dtype=dt)
    d_bias = _new(H, dtype=dt) if a["fc_bias"] is not None else None
    fspad_norm_backward(g, dy, s["z"], a["norm_weight"], s["rstd"], dz, d_norm, d_bias, variant)
    grads.update(norm_weight=d_norm, fc_bias=d_bias)
    _fc_backward(a, dz, grads, variant)
    return grads


def griffin_forward(a, variant="plain"):
    """griffin_token_fusion_cuda: (out, saved activations h, stats, pre_act)."""
    (T, H), I, dt = a["features"].shape, a["up_weight"].shape[0], a["features"].dtype
    h, x1, stats = _new(T, H, dtype=dt), _new(T, H, dtype=dt), _new(T, 3, dtype=torch.float32)
    _fc_forward(a, h, variant)
    ids, embed, na = a["token_ids"], a["embed_weight"], a["norm_a_weight"]
    griffin_norms(h, embed, ids, a["norm_b_weight"], na, x1, stats, False, EPS, variant)
    act, pre = _new(T, I, dtype=dt), _new(T, I, dtype=dt)
    w = a["up_weight"]
    segs = [
        dict(a=x1, w=w[:, :H]),
        dict(a=embed, w=w[:, H:], gather=True, row_scale=stats[:, 2], col_scale=na),  # N_a(e) while loading
    ]
    gemm_nt(segs, 2, act, ids, embed, pre=pre, variant=variant)
    return torch.addmm(h, act, a["down_weight"].t()), dict(h=h, stats=stats, pre_act=pre)


def griffin_backward(g, a, s, variant="plain"):
    """griffin_token_fusion_backward_cuda: every gradient, by name."""
    (T, H), I, dt = a["features"].shape, a["up_weight"].shape[0], a["features"].dtype
    ids, embed, nb, na = a["token_ids"], a["embed_weight"], a["norm_b_weight"], a["norm_a_weight"]
    dact = g @ a["down_weight"]
    act, dv = _new(T, I, dtype=dt), _new(T, I, dtype=dt)
    silu_backward(s["pre_act"], None, dact, act, dv, None, variant)
    grads = dict(down_weight=g.t() @ act, up_weight=_new(I, 2 * H, dtype=dt))
    x1 = _new(T, H, dtype=dt)
    griffin_norms(s["h"], embed, ids, nb, na, x1, s["stats"], True, 0.0, variant)
    grads["up_weight"][:, :H] = dv.t() @ x1
    gemm_tn(dv, embed, ids, grads["up_weight"][:, H:], s["stats"][:, 2], na, variant)
    dx = dv @ a["up_weight"]
    dh = _new(T, H, dtype=dt)
    norm_grads = dict(d_norm_a=_new(H, dtype=dt), d_norm_b=_new(H, dtype=dt))
    norm_grads["d_bias"] = _new(H, dtype=dt) if a["fc_bias"] is not None else None
    griffin_norm_backward(g, dx[:, :H], dx[:, H:], s["h"], embed, ids, nb, na, s["stats"], dh, norm_grads, variant)
    grads.update(norm_a_weight=norm_grads["d_norm_a"], norm_b_weight=norm_grads["d_norm_b"])
    grads["fc_bias"] = norm_grads["d_bias"]
    _fc_backward(a, dh, grads, variant)
    return grads


EMULATED = {"fspad": (fspad_forward, fspad_backward), "griffin": (griffin_forward, griffin_backward)}
REF_OUT = {"fspad": ref.fspad_feature_sampling_out, "griffin": ref.griffin_token_fusion_out}
KERNELS = {
    "fspad": "gemm_nt_kernel+rms_rows_kernel+silu_backward_kernel+gemm_tn_kernel+fspad_norm_backward_kernel"
    "+column_sums_kernel",
    "griffin": "gemm_nt_kernel+griffin_norms_kernel+silu_backward_kernel+gemm_tn_kernel"
    "+griffin_norm_backward_kernel+column_sums_kernel",
}


def _saved_reference(kind, args):
    """The reference's saved activations (out-variant) on `args`, by the names of EMULATED's forward."""
    f, I = args["features"], args["down_weight"].shape[1]
    T, H = f.shape
    stat = torch.float64 if f.dtype == torch.float64 else torch.float32
    if kind == "fspad":
        saved = dict(z=f.new_empty(T, H), rstd=f.new_empty(T, dtype=stat), gate=f.new_empty(T, I))
        saved["up"] = f.new_empty(T, I)
    else:
        saved = dict(h=f.new_empty(T, H), stats=f.new_empty(T, 3, dtype=stat), pre_act=f.new_empty(T, I))
    REF_OUT[kind](*args.values(), EPS, f.new_empty(T, H), *saved.values())
    return saved


def compare_emulated(kind, T, H, I, V, dtype, id_dtype=torch.int64, bias=True, variant="plain"):
    """Output, saved activations and gradients of the emulated composition vs the fp64 reference."""
    args = convert(make_inputs(kind, T, H, I, V, torch.float32, id_dtype=id_dtype, bias=bias), dtype, "cpu")
    args_truth = convert(args, torch.float64, "cpu")
    K = reduction(T, H, I)
    g = torch.randn(T, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth, truth_grads = run(OPS[kind][1], args_truth, g)
    base, base_grads = run(OPS[kind][1], args, g.to(dtype))
    forward, backward = EMULATED[kind]
    out, saved = forward(args, variant)
    what = f"{kind} {dtype} T={T}"
    check_like_torch(out, truth, base, dtype, f"{what} output", K)
    saved_truth, saved_base = _saved_reference(kind, args_truth), _saved_reference(kind, args)
    for name, t in saved.items():
        check_like_torch(t, saved_truth[name], saved_base[name], t.dtype, f"{what} saved {name}", K)
    grads = backward(g.to(dtype), args, saved, variant)
    names = [n for n in GRAD_NAMES[kind] if bias or n != "fc_bias"]
    for name, t, b in zip(names, truth_grads, base_grads):
        assert grads[name].dtype == dtype
        check_like_torch(grads[name], t, b, dtype, f"{what} d_{name}", K)


# ---------------------------------------------------------------------------------------------------
# Tests. (T, dtype, id dtype, bias): T = 1, 37 and 130 rows take the three tile shapes of gemm_nt_kernel
# (M <= 16, <= 128, beyond); H = 48 and I = 100 leave partial tiles everywhere.

CASES = [
    (1, torch.float32, torch.int64, True),
    (37, torch.float32, torch.int64, True),
    (130, torch.float32, torch.int64, True),
    (37, torch.bfloat16, torch.int64, True),
    (5, torch.float16, torch.int32, False),
]
CASE_IDS = [f"{str(dt).replace('torch.', '')}-T{T}-{str(i).replace('torch.', '')}" + ("" if b else "-no-bias")
            for T, dt, i, b in CASES]  # fmt: skip


@pytest.mark.parametrize("kernels", [KERNELS["fspad"]], ids=[KERNELS["fspad"]])
@pytest.mark.parametrize("T,dtype,id_dtype,bias", CASES, ids=CASE_IDS)
def test_fspad_feature_sampling_kernels(kernels, T, dtype, id_dtype, bias):
    """FSPAD forward and backward: every gemm_nt_kernel instantiation of the block (store with the gathered
    two-segment fc, gated SiLU with the saved gate), rms_rows_kernel (forward, and recomputed from the saved
    rstd), silu_backward_kernel (gated), gemm_tn_kernel (dW_g, and dW_fc's embedding half into a column
    half), fspad_norm_backward_kernel and column_sums_kernel."""
    compare_emulated("fspad", T, 48, 100, 50, dtype, id_dtype, bias)


@pytest.mark.parametrize("kernels", [KERNELS["griffin"]], ids=[KERNELS["griffin"]])
@pytest.mark.parametrize("T,dtype,id_dtype,bias", CASES, ids=CASE_IDS)
def test_griffin_token_fusion_kernels(kernels, T, dtype, id_dtype, bias):
    """GRIFFIN forward and backward: gemm_nt_kernel (the fc, and the SiLU epilogue over x1 and the embedding
    normalised while loading), griffin_norms_kernel (forward, and x1 recomputed from the saved statistics),
    silu_backward_kernel (plain), gemm_tn_kernel (dW_u's normalised embedding half), griffin_norm_backward_kernel
    and column_sums_kernel."""
    compare_emulated("griffin", T, 48, 100, 50, dtype, id_dtype, bias)


def test_fspad_norm_backward_kernel_two_rows_per_block():
    """T = 513 rows: the norm backward takes two rows per block (257 blocks, the last with one row), each
    thread summing its columns' partial sums over its block's rows before column_sums_kernel. Against the
    reference RMSNorm's gradient by autograd in fp64, with the residual: loss = <dy, N(z)> + <dout, z>."""
    T, H = 513, 8
    gen = torch.Generator().manual_seed(3)
    dout, dy, z = (torch.randn(T, H, generator=gen) for _ in range(3))
    norm_w = 1.0 + 0.2 * torch.randn(H, generator=gen)
    rstd = torch.rsqrt(z.pow(2).mean(-1) + EPS)
    dz, d_norm, d_bias = _new(T, H, dtype=torch.float32), _new(H, dtype=torch.float32), _new(H, dtype=torch.float32)
    nblk = fspad_norm_backward(dout, dy, z, norm_w, rstd, dz, d_norm, d_bias)
    assert nblk == 257, f"the launcher should take two rows per block at T = {T}, not {T / nblk:.2f}"
    z64, w64 = z.double().requires_grad_(True), norm_w.double().requires_grad_(True)
    loss = (dy.double() * ref.rms_norm(z64, w64, EPS)).sum() + (dout.double() * z64).sum()
    want_dz, want_dw = torch.autograd.grad(loss, [z64, w64])
    for name, got, want in (("dz", dz, want_dz), ("d_norm", d_norm, want_dw), ("d_bias", d_bias, want_dz.sum(0))):
        check_like_torch(got, want, want, torch.float32, f"fspad_norm_backward_kernel {name}", T + H)


def test_griffin_norm_backward_kernel_two_rows_per_block():
    """T = 513 rows, as the launcher plans them (norm_backward_blocks: two rows per block, 257 blocks, the last
    with one row), with dx1 and dx2 the column halves of one [T, 2H] dx (ldx = 2H) and int32 ids. Against the
    fp64 autograd gradients of loss = <dx1, N_a(N_b(h))> + <dx2, N_a(e)> + <dout, h>, e = E[ids], with the
    statistics the forward saves; d_bias = sum over rows of dh."""
    T, H, V = 513, 8, 20
    gen = torch.Generator().manual_seed(4)
    dout, h = torch.randn(T, H, generator=gen), torch.randn(T, H, generator=gen)
    dx, embed = torch.randn(T, 2 * H, generator=gen), torch.randn(V, H, generator=gen)
    ids = torch.randint(0, V, (T,), generator=gen, dtype=torch.int32)
    norm_b, norm_a = (1.0 + 0.2 * torch.randn(H, generator=gen) for _ in range(2))
    e = embed[ids.long()]

    def rstd(x):
        return torch.rsqrt(x.pow(2).mean(-1) + EPS)

    rb = rstd(h)
    stats = torch.stack([rb, rstd(norm_b * (h * rb[:, None])), rstd(e)], 1)
    dh = _new(T, H, dtype=torch.float32)
    grads = {name: _new(H, dtype=torch.float32) for name in ("d_norm_a", "d_norm_b", "d_bias")}
    nblk = griffin_norm_backward(dout, dx[:, :H], dx[:, H:], h, embed, ids, norm_b, norm_a, stats, dh, grads)
    assert nblk == 257, f"the launcher should take two rows per block at T = {T}, not {T / nblk:.2f}"
    h64, na64, nb64 = (x.double().requires_grad_(True) for x in (h, norm_a, norm_b))
    x1 = ref.rms_norm(ref.rms_norm(h64, nb64, EPS), na64, EPS)
    loss = (dx[:, :H].double() * x1).sum() + (dx[:, H:].double() * ref.rms_norm(e.double(), na64, EPS)).sum()
    loss = loss + (dout.double() * h64).sum()
    want_dh, want_da, want_db = torch.autograd.grad(loss, [h64, na64, nb64])
    wants = {"dh": want_dh, "d_norm_a": want_da, "d_norm_b": want_db, "d_bias": want_dh.sum(0)}
    for name, got in {"dh": dh, **grads}.items():
        check_like_torch(got, wants[name], wants[name], torch.float32, f"griffin_norm_backward_kernel {name}", T + H)


@pytest.mark.parametrize("variant", ["tsan", "asan"])
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_feature_kernels_sanitized(kind, variant):
    """Every kernel of the block, forward and backward, under the sanitizers (bf16, 5 rows)."""
    compare_emulated(kind, 5, 24, 40, 30, torch.bfloat16, variant=variant)
