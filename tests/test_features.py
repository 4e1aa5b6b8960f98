"""fspad_feature_sampling and griffin_token_fusion: forward and backward on every backend against the reference.

The truth is the reference composition in fp64 on the same (rounded) inputs. A backend passes when its
error is at most twice that of PyTorch's own composition in the test dtype, plus the dtype's tolerance
from tests/helpers.py (the flash-attention rule): the fused kernels round at different places than the
composition (they keep normalised operands in fp32 until the GEMM), so an exact match is not expected
below fp64.
"""
from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import BackendError
from specdec_kernels.ops import features as ops
from specdec_kernels.reference import features as ref

from helpers import TOLERANCES, backend_params

EPS = 1e-6
OPS = {
    "fspad": (sk.fspad_feature_sampling, ref.fspad_feature_sampling, ops._FSPAD_FWD),
    "griffin": (sk.griffin_token_fusion, ref.griffin_token_fusion, ops._GRIFFIN_FWD),
}
GRAD_NAMES = {
    "fspad": ["features", "fc_weight", "fc_bias", "norm_weight", "gate_weight", "up_weight", "down_weight"],
    "griffin": ["features", "fc_weight", "fc_bias", "norm_b_weight", "norm_a_weight", "up_weight", "down_weight"],
}


def make_inputs(kind, T, H, I, V, dtype=torch.float32, device="cpu", seed=0, id_dtype=torch.int64, bias=True,
                lead=None, gen_dtype=torch.float64):
    """Inputs of `kind`, drawn in `gen_dtype` and rounded to `dtype` (weights scaled like nn.Linear's)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale):
        return torch.randn(*shape, generator=g, dtype=gen_dtype).mul_(scale)

    def norm_w():
        return 1.0 + 0.2 * torch.randn(H, generator=g, dtype=gen_dtype)

    lead = (T,) if lead is None else lead
    feats = rnd(*lead, H, scale=1.0)
    ids = torch.randint(0, V, lead, generator=g)
    ids.view(-1)[0] = V - 1            # both ends of the vocabulary
    ids.view(-1)[-1] = 0
    emb = rnd(V, H, scale=1.0)
    fc = rnd(H, 2 * H, scale=(2 * H) ** -0.5)
    b = rnd(H, scale=0.1) if bias else None
    if kind == "fspad":
        weights = [norm_w(), rnd(I, H, scale=H ** -0.5), rnd(I, H, scale=H ** -0.5), rnd(H, I, scale=I ** -0.5)]
    else:
        weights = [norm_w(), norm_w(), rnd(I, 2 * H, scale=(2 * H) ** -0.5), rnd(H, I, scale=I ** -0.5)]
    args = [feats, ids.to(id_dtype), emb, fc, b, *weights]
    return [a.to(device=device, dtype=dtype) if (a is not None and a.is_floating_point()) else
            (a.to(device) if a is not None else None) for a in args]


def grad_leaves(args):
    """The differentiable inputs (all but token_ids and the frozen embedding), marked requires_grad."""
    leaves = []
    for i, a in enumerate(args):
        if a is not None and i not in (1, 2):
            a.requires_grad_(True)
            leaves.append(a)
    return leaves


def run(fn, args, grad_out, **kw):
    """Output and gradients of fn(*args) for grad_out, with fresh leaves."""
    args = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
    leaves = grad_leaves(args)
    out = fn(*args, EPS, **kw)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out.detach(), [g.detach() for g in grads]


def check_like_torch(actual, truth, baseline, dtype, what):
    """|actual - truth| <= 2 |baseline - truth|_max + atol + rtol |truth| (TOLERANCES[dtype])."""
    atol, rtol = TOLERANCES[dtype]
    actual, truth, baseline = actual.double().cpu(), truth.double().cpu(), baseline.double().cpu()
    base_err = (baseline - truth).abs().max().item()
    err = (actual - truth).abs()
    bound = 2 * base_err + atol + rtol * truth.abs()
    bad = err > bound
    if bad.any():
        idx = torch.nonzero(bad)[:5].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} entries exceed the bound; max error "
                             f"{err.max().item():.3e} vs torch's own {dtype} error {base_err:.3e}; first at {idx}")


def compare(kind, backend, device, T, H, I, V, dtype, id_dtype=torch.int64, bias=True, grads=True,
            truth=(torch.float64, "cpu")):
    """Output and gradients of `backend` vs the reference computed in truth = (dtype, device)."""
    fn, ref_fn, _ = OPS[kind]
    args64 = make_inputs(kind, T, H, I, V, torch.float32, "cpu", id_dtype=id_dtype, bias=bias,
                         gen_dtype=torch.float32 if truth[0] != torch.float64 else torch.float64)
    args = [a.to(device=device, dtype=dtype) if (a is not None and a.is_floating_point()) else
            (a.to(device) if a is not None else None) for a in args64]
    # Truth from the rounded inputs, so only the computation's error is measured.
    args_truth = [a.detach().to(device=truth[1], dtype=truth[0]) if (a is not None and a.is_floating_point()) else
                  (a.to(truth[1]) if a is not None else None) for a in args]
    g = torch.randn(T, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(truth[1], truth[0])
    g_dev = g.to(device=device, dtype=dtype)
    truth, truth_grads = run(ref_fn, args_truth, g)
    base, base_grads = run(ref_fn, args, g_dev)
    if grads:
        out, out_grads = run(fn, args, g_dev, backend=backend)
    else:
        with torch.no_grad():
            out = fn(*args, EPS, backend=backend)
    assert out.dtype == dtype and out.shape == (T, H)
    check_like_torch(out, truth, base, dtype, f"{kind}/{backend} output")
    if grads:
        names = [n for n in GRAD_NAMES[kind] if bias or n != "fc_bias"]
        for name, a, t, b in zip(names, out_grads, truth_grads, base_grads):
            assert a.dtype == dtype
            check_like_torch(a, t, b, dtype, f"{kind}/{backend} d_{name}")
    # The inference path (no saved activations) gives the same output.
    with torch.no_grad():
        out2 = fn(*args, EPS, backend=backend)
    check_like_torch(out2, truth, base, dtype, f"{kind}/{backend} output (no grad)")


def _params(kind):
    return backend_params(OPS[kind][2])


# ---------------------------------------------------------------------------------------------------
# Reference: gradcheck in fp64

@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_reference_gradcheck(kind):
    args = make_inputs(kind, 3, 8, 12, 20, torch.float64)
    leaves = grad_leaves(args)
    ref_fn = OPS[kind][1]

    def f(*xs):
        it = iter(xs)
        full = [next(it) if (a is not None and i not in (1, 2)) else a for i, a in enumerate(args)]
        return ref_fn(*full, EPS)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_public_op_gradcheck_fp64(kind, backend):
    """The fused backward (C++ on CPU) is the exact derivative: gradcheck passes in fp64."""
    fn = OPS[kind][0]
    if ops._FSPAD_FWD.impls[backend][1](torch.zeros(1, 8, dtype=torch.float64)) is not None:
        pytest.skip(f"{backend} backend not usable here")
    args = make_inputs(kind, 3, 8, 12, 20, torch.float64)
    leaves = grad_leaves(args)

    def f(*xs):
        it = iter(xs)
        full = [next(it) if (a is not None and i not in (1, 2)) else a for i, a in enumerate(args)]
        return fn(*full, EPS, backend=backend)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Every backend against the reference, forward and backward

@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("T,H,I", [(1, 64, 128), (7, 96, 128), (60, 64, 160), (5, 40, 100)])
@pytest.mark.parametrize("backend,device", _params("fspad"))
def test_matches_reference_fp32(kind, backend, device, T, H, I):
    compare(kind, backend, device, T, H, I, 1000, torch.float32)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("backend,device", _params("fspad"))
def test_matches_reference_fp16(kind, backend, device):
    compare(kind, backend, device, 13, 64, 128, 500, torch.float16, id_dtype=torch.int32)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("backend,device", _params("fspad"))
def test_matches_reference_bf16(kind, backend, device):
    if backend == "triton" and device == "cpu":
        pytest.skip("bf16 is unreliable under the Triton interpreter (GPU-only case)")
    compare(kind, backend, device, 13, 64, 128, 500, torch.bfloat16)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("T", [600, 4096])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_many_rows_cpu(kind, backend, T):
    """Training-like row counts (compiled CPU kernels and reference only: too slow interpreted)."""
    if ops._FSPAD_FWD.impls[backend][1](torch.zeros(1, 8)) is not None:
        pytest.skip(f"{backend} backend not usable here")
    compare(kind, backend, "cpu", T, 64, 128, 32000, torch.float32)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("V", [32000, 128256])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("backend,device", _params("fspad"))
def test_vocab_edges(kind, backend, device, V, id_dtype):
    """Ids 0 and V-1 of real vocabulary sizes, int32 and int64, without bias (EAGLE-3-style fc)."""
    if backend == "triton" and (V, id_dtype) != (128256, torch.int32):
        pytest.skip("one vocabulary case interpreted is enough")
    compare(kind, backend, device, 5, 64, 128, V, torch.float32, id_dtype=id_dtype, bias=False,
            grads=backend != "triton")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_llama_size_cpu(kind):
    """H = 4096, I = 11008 (a 7B/8B draft head), decode-sized T, cpu backend vs the fp32 reference."""
    if ops._FSPAD_FWD.impls["cpu"][1](torch.zeros(1, 8)) is not None:
        pytest.skip("cpu backend not usable here")
    T, H, I, V = 7, 4096, 11008, 1000
    args = make_inputs(kind, T, H, I, V, torch.float32, gen_dtype=torch.float32)
    fn, ref_fn, _ = OPS[kind]
    g = torch.randn(T, H, generator=torch.Generator().manual_seed(1))
    out, grads = run(fn, args, g, backend="cpu")
    want, want_grads = run(ref_fn, args, g)
    # fp32 vs fp32: both sum 8192-long products; allow a few ulps of the output scale per row.
    for name, a, b in zip(["output"] + GRAD_NAMES[kind], [out] + grads, [want] + want_grads):
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= 1e-5 * scale + 1e-6, f"{kind} {name}: max error {err:.3e} (scale {scale:.3e})"


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("T", [1, 60, 4096])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_llama_size_triton_gpu(kind, T, dtype):
    """The GPU path at H = 4096, I = 11008 with a Llama-3 vocabulary (truth: fp32 reference on the GPU)."""
    compare(kind, "triton", "cuda", T, 4096, 11008, 128256, dtype, truth=(torch.float32, "cuda"))


# ---------------------------------------------------------------------------------------------------
# API: shapes, buffers, the frozen embedding, errors

@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_leading_dims_and_out_buffer(kind):
    fn, ref_fn, _ = OPS[kind]
    args = make_inputs(kind, 6, 32, 48, 50, lead=(2, 3))
    want = ref_fn(*[a.reshape(-1, 32) if i == 0 else (a.reshape(-1) if i == 1 else a)
                    for i, a in enumerate(args)], EPS).reshape(2, 3, 32)
    got = fn(*args, EPS, backend="torch")
    assert got.shape == (2, 3, 32)
    torch.testing.assert_close(got, want, atol=TOLERANCES[torch.float32][0], rtol=TOLERANCES[torch.float32][1])
    buf = torch.empty(2, 3, 32)
    res = fn(*args, EPS, out=buf)
    assert res.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, want, atol=1e-5, rtol=1e-5)
    leaves = grad_leaves(args)
    assert leaves
    with pytest.raises(ValueError, match="out: caller buffers are for inference"):
        fn(*args, EPS, out=buf)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_embedding_is_frozen(kind):
    fn = OPS[kind][0]
    args = make_inputs(kind, 4, 16, 24, 30)
    args[2].requires_grad_(True)
    args[0].requires_grad_(True)
    out = fn(*args, EPS, backend="torch" if kind == "fspad" else None)
    out.sum().backward()
    assert args[2].grad is None
    assert args[0].grad is not None and args[0].grad.shape == args[0].shape


def test_empty_rows():
    args = make_inputs("fspad", 1, 16, 24, 30)
    args[0], args[1] = args[0][:0], args[1][:0]
    assert sk.fspad_feature_sampling(*args, EPS).shape == (0, 16)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("bad", [-1, 30, 10**6])
def test_out_of_range_ids_rejected(kind, bad):
    fn = OPS[kind][0]
    args = make_inputs(kind, 5, 16, 24, 30)
    args[1][2] = bad
    pattern = r"token_ids: expected ids in \[0, 30\).*got " + str(bad) + " at flat position 2"
    with pytest.raises(ValueError, match=pattern):
        fn(*args, EPS)


@pytest.mark.parametrize("mutate,exc,msg", [
    (lambda a: a.__setitem__(1, a[1].float()), TypeError, "token_ids: expected dtype in"),
    (lambda a: a.__setitem__(1, a[1][:3]), ValueError, "token_ids: expected shape"),
    (lambda a: a.__setitem__(3, a[3][:, :16]), ValueError, "fc_weight: expected shape"),
    (lambda a: a.__setitem__(4, a[4].half()), TypeError, "fc_bias: expected dtype torch.float32"),
    (lambda a: a.__setitem__(2, a[2][:, :8]), ValueError, "embed_weight: expected shape"),
    (lambda a: a.__setitem__(0, a[0].int()), TypeError, "features: expected dtype in"),
    (lambda a: a.__setitem__(8, a[8][:, :5]), ValueError, "down_weight: expected shape"),
])
def test_bad_inputs_fspad(mutate, exc, msg):
    args = make_inputs("fspad", 5, 16, 24, 30)
    mutate(args)
    with pytest.raises(exc, match=msg):
        sk.fspad_feature_sampling(*args, EPS)


def test_bad_inputs_griffin():
    args = make_inputs("griffin", 5, 16, 24, 30)
    args[7] = args[7][:, :16]
    with pytest.raises(ValueError, match=r"up_weight: expected shape \[\*, 32\]"):
        sk.griffin_token_fusion(*args, EPS)
    args = make_inputs("griffin", 5, 16, 24, 30)
    with pytest.raises(ValueError, match="eps: expected a float >= 0"):
        sk.griffin_token_fusion(*args, -1.0)


def test_explicit_backend_refusal_says_why():
    args = make_inputs("fspad", 3, 16, 24, 30, torch.float64)
    with pytest.raises(BackendError, match="triton.*fp32/fp16/bf16"):
        sk.fspad_feature_sampling(*args, EPS, backend="triton")


@pytest.mark.parametrize("name", ["fspad_forward", "griffin_forward", "fspad_backward", "griffin_backward"])
def test_opcheck_cpu(name):
    """The schemas declare what the compiled CPU kernels mutate (torch.library.opcheck)."""
    if not _backend_has_cpu(name):
        pytest.skip("specdec_kernels._C has no CPU kernel for " + name)
    kind = name.split("_")[0]
    args = make_inputs(kind, 5, 16, 24, 30)
    T, H, I = 5, 16, 24
    stat_shape = (T,) if kind == "fspad" else (T, 3)
    saved = [torch.randn(T, H), torch.rand(stat_shape) + 0.5]
    saved += [torch.randn(T, I), torch.randn(T, I)] if kind == "fspad" else [torch.randn(T, I)]
    if name.endswith("forward"):
        fw = list(args) + [EPS, torch.empty(T, H), torch.empty(T, H), torch.empty(stat_shape)]
        fw += [torch.empty(T, I), torch.empty(T, I)] if kind == "fspad" else [torch.empty(T, I)]
        call = fw
    else:
        grads = [torch.empty_like(a) for i, a in enumerate(args) if i not in (1, 2)]
        call = [torch.randn(T, H)] + list(args) + [EPS] + saved + grads
    torch.library.opcheck(getattr(torch.ops.specdec, name), tuple(call),
                          test_utils=("test_schema", "test_faketensor"))


def _backend_has_cpu(name):
    from specdec_kernels import _backend
    return _backend.compiled_check(name, torch.device("cpu"), "cpu") is None


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_torch_compile_fullgraph(kind):
    """The op traces whole under torch.compile, inference and training (no graph break in the dispatch)."""
    if not _backend_has_cpu(f"{kind}_forward"):
        pytest.skip("specdec_kernels._C has no CPU kernel")
    fn, ref_fn, _ = OPS[kind]
    args = make_inputs(kind, 6, 32, 48, 50)
    leaves = grad_leaves(args)

    def f(feats, ids):
        return fn(feats, ids, *args[2:], EPS, backend="cpu")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(args[0], args[1])
    grads = torch.autograd.grad(out.sum(), leaves)
    want = ref_fn(*args, EPS)
    want_grads = torch.autograd.grad(want.sum(), leaves)
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(out, want, atol=atol, rtol=rtol)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
