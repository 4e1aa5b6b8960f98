"""fspad_feature_sampling and griffin_token_fusion: forward and backward on every backend against the reference.

The truth is the reference composition in fp64 on the same (rounded) inputs. A backend passes when its
error is at most twice that of PyTorch's own composition in the test dtype, plus the tolerance of the dtype
for the reductions involved (tests/helpers.py, the flash-attention rule): the fused kernels round at
different places than the composition (they keep normalised operands in fp32 until the GEMM), so an exact
match is not expected below fp64.

Every tolerance here follows from the dtype and the length of the reductions (`reduction`), never from
one machine: weight gradients reduce over the T tokens on top of the feature-dimension reductions.
"""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import BackendError
from specdec_kernels.ops import features as ops
from specdec_kernels.reference import features as ref

from helpers import backend_params, tolerance

EPS = 1e-6
OPS = {  # kind -> (public function, reference composition, op name = schema name of the forward)
    "fspad": (sk.fspad_feature_sampling, ref.fspad_feature_sampling, "fspad_feature_sampling"),
    "griffin": (sk.griffin_token_fusion, ref.griffin_token_fusion, "griffin_token_fusion"),
}
BLOCK_WEIGHTS = {
    "fspad": ["norm_weight", "gate_weight", "up_weight", "down_weight"],
    "griffin": ["norm_b_weight", "norm_a_weight", "up_weight", "down_weight"],
}
GRAD_NAMES = {k: ["features", "fc_weight", "fc_bias", *w] for k, w in BLOCK_WEIGHTS.items()}
FROZEN = ("token_ids", "embed_weight")  # no gradient: ids, and the target's frozen embedding


def reduction(T, H, I):
    """Terms summed along the longest chain behind any compared value: fc over 2H, the norms and W_u over H
    (GRIFFIN: 2H), W_d over I and, for weight gradients, the T tokens. Rounding grows like its square root."""
    return T + 4 * H + I


def make_inputs(
    kind,
    T,
    H,
    I,
    V,
    dtype=torch.float32,
    device="cpu",
    seed=0,
    id_dtype=torch.int64,
    bias=True,
    lead=None,
    gen_dtype=torch.float64,
):
    """Named inputs of `kind` in the schema's order (keyword arguments of the public function and of the
    reference), drawn in `gen_dtype` and rounded to `dtype` (weights scaled like nn.Linear's)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale):
        return torch.randn(*shape, generator=g, dtype=gen_dtype).mul_(scale)

    def norm_w():
        return 1.0 + 0.2 * torch.randn(H, generator=g, dtype=gen_dtype)

    lead = (T,) if lead is None else lead
    a = dict(features=rnd(*lead, H, scale=1.0))
    ids = torch.randint(0, V, lead, generator=g)
    ids.view(-1)[0] = V - 1  # both ends of the vocabulary
    ids.view(-1)[-1] = 0
    a.update(
        token_ids=ids.to(id_dtype),
        embed_weight=rnd(V, H, scale=1.0),
        fc_weight=rnd(H, 2 * H, scale=(2 * H) ** -0.5),
        fc_bias=rnd(H, scale=0.1) if bias else None,
    )
    if kind == "fspad":
        a.update(norm_weight=norm_w(), gate_weight=rnd(I, H, scale=H**-0.5), up_weight=rnd(I, H, scale=H**-0.5))
    else:
        a.update(norm_b_weight=norm_w(), norm_a_weight=norm_w(), up_weight=rnd(I, 2 * H, scale=(2 * H) ** -0.5))
    a["down_weight"] = rnd(H, I, scale=I**-0.5)
    return convert(a, dtype, device)


def convert(args, dtype, device):
    """The same inputs with floating tensors in `dtype` on `device` (ids only moved)."""
    return {
        k: (None if a is None else a.to(device=device, dtype=dtype) if a.is_floating_point() else a.to(device))
        for k, a in args.items()
    }


def grad_leaves(args):
    """The differentiable inputs (all but token_ids and the frozen embedding), marked requires_grad."""
    leaves = []
    for k, a in args.items():
        if a is not None and k not in FROZEN:
            a.requires_grad_(True)
            leaves.append(a)
    return leaves


def run(fn, args, grad_out, **kw):
    """Output and gradients of fn(**args) for grad_out, with fresh leaves."""
    args = {k: a.detach().clone() if isinstance(a, torch.Tensor) else a for k, a in args.items()}
    leaves = grad_leaves(args)
    out = fn(**args, eps=EPS, **kw)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out.detach(), [g.detach() for g in grads]


def forward_kernel_args(kind, args):
    """The kernel arguments of the forward op (`specdec::<name>`, the schema's order) for these inputs, with
    the output and every saved activation allocated: what `get_op(name).reason(backend, ...)` judges."""
    f = args["features"]
    T, H = f.reshape(-1, f.shape[-1]).shape
    I = args["down_weight"].shape[1]
    stat = torch.float64 if f.dtype == torch.float64 else torch.float32
    kw = dict(dtype=f.dtype, device=f.device)
    saved = (
        [
            torch.empty(T, H, **kw),
            torch.empty(T, dtype=stat, device=f.device),
            torch.empty(T, I, **kw),
            torch.empty(T, I, **kw),
        ]
        if kind == "fspad"
        else [torch.empty(T, H, **kw), torch.empty(T, 3, dtype=stat, device=f.device), torch.empty(T, I, **kw)]
    )
    return (*args.values(), EPS, torch.empty(T, H, **kw), *saved)


def skip_unless_runs(kind, backend, args):
    """Skip with the registry's reason when `backend` refuses the forward of these inputs."""
    reason = sk.get_op(OPS[kind][2]).reason(backend, *forward_kernel_args(kind, args))
    if reason is not None:
        pytest.skip(f"{backend} backend cannot run here: {reason}")


def check_like_torch(actual, truth, baseline, dtype, what, K):
    """|actual - truth| <= 2 |baseline - truth|_max + atol + rtol |truth|, (atol, rtol) = tolerance(dtype, K)."""
    atol, rtol = tolerance(dtype, K)
    actual, truth, baseline = actual.double().cpu(), truth.double().cpu(), baseline.double().cpu()
    base_err = (baseline - truth).abs().max().item()
    err = (actual - truth).abs()
    bound = 2 * base_err + atol + rtol * truth.abs()
    bad = err > bound
    if bad.any():
        idx = torch.nonzero(bad)[:5].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} entries exceed the bound; max error "
            f"{err.max().item():.3e} vs torch's own {dtype} error {base_err:.3e}; first at {idx}"
        )


def assert_close_reduction(actual, expected, dtype, K, what):
    """Two computations of the same value in `dtype` with reductions of K terms: each may be off by
    tolerance(dtype, K) relative to the magnitude of the values (scale: the largest |expected|)."""
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    atol, rtol = tolerance(dtype, K, scale)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def compare(
    kind, backend, device, T, H, I, V, dtype, id_dtype=torch.int64, bias=True, grads=True, truth=(torch.float64, "cpu")
):
    """Output and gradients of `backend` vs the reference computed in truth = (dtype, device)."""
    fn, ref_fn, _ = OPS[kind]
    args32 = make_inputs(
        kind,
        T,
        H,
        I,
        V,
        torch.float32,
        "cpu",
        id_dtype=id_dtype,
        bias=bias,
        gen_dtype=torch.float32 if truth[0] != torch.float64 else torch.float64,
    )
    args = convert(args32, dtype, device)
    # Truth from the rounded inputs, so only the computation's error is measured.
    args_truth = convert(args, truth[0], truth[1])
    K = reduction(T, H, I)
    g = torch.randn(T, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(truth[1], truth[0])
    g_dev = g.to(device=device, dtype=dtype)
    truth, truth_grads = run(ref_fn, args_truth, g)
    base, base_grads = run(ref_fn, args, g_dev)
    if grads:
        out, out_grads = run(fn, args, g_dev, backend=backend)
    else:
        with torch.no_grad():
            out = fn(**args, eps=EPS, backend=backend)
    assert out.dtype == dtype and out.shape == (T, H)
    check_like_torch(out, truth, base, dtype, f"{kind}/{backend} output", K)
    if grads:
        names = [n for n in GRAD_NAMES[kind] if bias or n != "fc_bias"]
        for name, a, t, b in zip(names, out_grads, truth_grads, base_grads):
            assert a.dtype == dtype
            check_like_torch(a, t, b, dtype, f"{kind}/{backend} d_{name}", K)
    # The inference path (no saved activations) gives the same output.
    with torch.no_grad():
        out2 = fn(**args, eps=EPS, backend=backend)
    check_like_torch(out2, truth, base, dtype, f"{kind}/{backend} output (no grad)", K)


def _params(kind, device=None):
    """(backend, device) params of the forward op, optionally only those on `device` (none: one skipped)."""
    params = [p for p in backend_params(OPS[kind][2]) if device is None or p.values[1] == device]
    return params or [
        pytest.param("none", device, id=f"none-{device}", marks=pytest.mark.skip(reason=f"no {device} device here"))
    ]


# ---------------------------------------------------------------------------------------------------
# Names and signatures


def test_registered_names():
    """One name per block: the op (schema) is named like the public function, the backward <name>_backward."""
    for fn, ref_fn, name in OPS.values():
        assert fn.__name__ == ref_fn.__name__ == name
        for op_name in (name, name + "_backward"):
            op = sk.get_op(op_name)
            assert op.name == op_name and set(op.backends) == {"cuda", "triton", "cpu", "torch"}
            assert hasattr(torch.ops.specdec, op_name) and hasattr(torch.ops.specdec, op_name + "_triton")
    for old in ("fspad_forward", "fspad_backward", "griffin_forward", "griffin_backward"):
        assert old not in sk.list_ops()
        assert not hasattr(torch.ops.specdec, old)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_signature(kind):
    """Block tensors positional; the optional fc_bias and every option keyword-only, defaulting to None."""
    fn, ref_fn, _ = OPS[kind]
    want = ["features", "token_ids", "embed_weight", "fc_weight", *BLOCK_WEIGHTS[kind]]
    params = inspect.signature(fn).parameters
    assert [n for n, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD] == want
    keyword = {n: p.default for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    assert keyword == dict(fc_bias=None, eps=1e-6, backend=None, out=None, check_ids=None)
    ref_params = inspect.signature(ref_fn).parameters
    assert list(ref_params) == want + ["fc_bias", "eps"]
    assert all(ref_params[n].kind == ref_params[n].KEYWORD_ONLY for n in ("fc_bias", "eps"))

    args = make_inputs(kind, 4, 16, 24, 30)
    bias = args.pop("fc_bias")
    positional = [args[n] for n in want]
    by_name = fn(**args, fc_bias=bias, eps=EPS, backend="torch")
    assert torch.equal(fn(*positional, fc_bias=bias, eps=EPS, backend="torch"), by_name)
    assert torch.equal(ref_fn(*positional, fc_bias=bias, eps=EPS), by_name)
    # Without fc_bias and with the default eps.
    assert torch.equal(fn(*positional, backend="torch"), ref_fn(*positional, fc_bias=None, eps=1e-6))
    with pytest.raises(TypeError):
        fn(*positional[:4], bias, *positional[4:])  # fc_bias is keyword-only: no longer the 5th argument
    with pytest.raises(TypeError):
        fn(*positional, EPS)  # eps is keyword-only


def test_doctests():
    """The examples that end every public docstring run and print what they say."""
    for module in (ops, ref):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0, f"{module.__name__} has no examples"
        assert result.failed == 0, f"{result.failed} doctest examples of {module.__name__} failed (output above)"


# ---------------------------------------------------------------------------------------------------
# Reference: gradcheck in fp64

GRADCHECK_EPS = 1e-6


def gradcheck_atol(fn, args, T, H, I):
    """gradcheck's central difference (f(x + e) - f(x - e)) / 2e carries the rounding error of f (at most
    tolerance(fp64, K) times the magnitude of f, twice) divided by 2e; its truncation error e^2 f'''/6 ~ 1e-12
    is far below that."""
    with torch.no_grad():
        scale = max(fn(**args, eps=EPS).abs().max().item(), 1.0)
    return tolerance(torch.float64, reduction(T, H, I), scale)[0] / GRADCHECK_EPS


def _gradcheck(kind, fn, **kw):
    T, H, I = 3, 8, 12
    args = make_inputs(kind, T, H, I, 20, torch.float64)
    atol = gradcheck_atol(OPS[kind][1], args, T, H, I)
    leaves = grad_leaves(args)
    names = [k for k, a in args.items() if a is not None and k not in FROZEN]

    def f(*xs):
        return fn(**{**args, **dict(zip(names, xs))}, eps=EPS, **kw)

    assert torch.autograd.gradcheck(f, leaves, eps=GRADCHECK_EPS, atol=atol)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_reference_gradcheck(kind):
    _gradcheck(kind, OPS[kind][1])


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_public_op_gradcheck_fp64(kind, backend):
    """The fused backward (C++ on CPU) is the exact derivative: gradcheck passes in fp64."""
    skip_unless_runs(kind, backend, make_inputs(kind, 3, 8, 12, 20, torch.float64))
    _gradcheck(kind, OPS[kind][0], backend=backend)


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


TRITON_INTERPRETER_BF16 = (
    "bf16 is unreliable under the Triton interpreter (numpy has no bf16; its emulation "
    "returns garbage): a GPU-only case"
)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("backend,device", _params("fspad"))
def test_matches_reference_bf16(kind, backend, device):
    if backend == "triton" and device == "cpu":
        pytest.skip(TRITON_INTERPRETER_BF16)
    compare(kind, backend, device, 13, 64, 128, 500, torch.bfloat16)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("T", [600, 4096])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_many_rows_cpu(kind, backend, T):
    """Training-like row counts (compiled CPU kernels and reference only: too slow interpreted)."""
    skip_unless_runs(kind, backend, make_inputs(kind, T, 64, 128, 32000))
    compare(kind, backend, "cpu", T, 64, 128, 32000, torch.float32)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("V", [32000, 128256])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("backend,device", _params("fspad"))
def test_vocab_edges(kind, backend, device, V, id_dtype):
    """Ids 0 and V-1 of real vocabulary sizes, int32 and int64, without bias (EAGLE-3-style fc)."""
    if backend == "triton" and (V, id_dtype) != (128256, torch.int32):
        pytest.skip("one vocabulary case interpreted is enough")
    compare(
        kind, backend, device, 5, 64, 128, V, torch.float32, id_dtype=id_dtype, bias=False, grads=backend != "triton"
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_llama_size_cpu(kind):
    """H = 4096, I = 11008 (a 7B/8B draft head), decode-sized T, cpu backend vs the fp32 reference."""
    T, H, I, V = 7, 4096, 11008, 1000
    args = make_inputs(kind, T, H, I, V, torch.float32, gen_dtype=torch.float32)
    skip_unless_runs(kind, "cpu", args)
    fn, ref_fn, _ = OPS[kind]
    g = torch.randn(T, H, generator=torch.Generator().manual_seed(1))
    out, grads = run(fn, args, g, backend="cpu")
    want, want_grads = run(ref_fn, args, g)
    # fp32 vs fp32, both through reductions over 2H, H and I features and (weight gradients) T tokens.
    for name, a, b in zip(["output"] + GRAD_NAMES[kind], [out] + grads, [want] + want_grads):
        assert_close_reduction(a, b, torch.float32, reduction(T, H, I), f"{kind} {name}")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("T", [1, 60, 4096])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_llama_size_triton_gpu(kind, T, dtype):
    """The GPU path at H = 4096, I = 11008 with a Llama-3 vocabulary (truth: fp32 reference on the GPU)."""
    compare(kind, "triton", "cuda", T, 4096, 11008, 128256, dtype, truth=(torch.float32, "cuda"))


@pytest.fixture
def one_autotune_config():
    """force(i): every autotuned forward kernel of the Triton feature modules runs its i-th config only (and
    re-tunes nothing); the configs and caches are restored afterwards."""
    from specdec_kernels.triton_kernels import features_fspad, features_griffin, features_shared

    kernels = [
        features_shared._fc_kernel,
        features_fspad._fspad_mlp_kernel,
        features_griffin._griffin_mlp_kernel,
        features_shared._down_kernel,
    ]
    saved = [(k.configs, dict(k.cache)) for k in kernels]

    def force(i):
        for k, (configs, _) in zip(kernels, saved):
            k.configs = [configs[min(i, len(configs) - 1)]]
            k.cache.clear()
        return [str(k.configs[0]) for k in kernels]

    yield force
    for k, (configs, cache) in zip(kernels, saved):
        k.configs = configs
        k.cache.clear()
        k.cache.update(cache)


def _longest_autotune_list() -> int:
    try:
        from specdec_kernels.triton_kernels import features_shared as fs
    except Exception:  # no usable Triton: the GPU test below skips anyway
        return 1
    return max(len(fs.mm_configs(interpreted=False)), len(fs.mm_configs(two_acc=True, interpreted=False)))


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("T,dtype", [(1, torch.float32), (7, torch.float32), (1, torch.float16), (60, torch.float16)])
@pytest.mark.parametrize("config", range(_longest_autotune_list()))
def test_each_autotune_config_gpu(kind, T, dtype, config, one_autotune_config):
    """Each autotune config of the Triton forward on its own, and twice in a row with identical results: a
    config that computes wrongly (or races) fails here by name instead of only when the autotuner picks it.
    (The interpreter runs one config; these are the GPU's, every one of them: a single config is not pruned.)"""
    names = one_autotune_config(config)
    fn, ref_fn, _ = OPS[kind]
    H, I, V = 96, 160, 1000
    args = convert(make_inputs(kind, T, H, I, V, torch.float32, "cpu"), dtype, "cuda")
    truth = ref_fn(**convert(args, torch.float64, "cpu"), eps=EPS)
    base = ref_fn(**args, eps=EPS)
    with torch.no_grad():
        out = fn(**args, eps=EPS, backend="triton")
        again = fn(**args, eps=EPS, backend="triton")
    assert torch.equal(out, again), f"{kind} {names}: two identical calls differ (a race?)"
    check_like_torch(out, truth, base, dtype, f"{kind} triton {names}", reduction(T, H, I))


# ---------------------------------------------------------------------------------------------------
# Autocast: like the composition under the same autocast (its F.linear calls run in the autocast dtype)


def run_autocast(fn, args, grad_out, device, amp_dtype, backward_inside=False, **kw):
    """Like `run` with the forward under torch.autocast(device, amp_dtype); the backward outside the region
    (as recommended) or, with backward_inside, inside it."""
    args = {k: a.detach().clone() if isinstance(a, torch.Tensor) else a for k, a in args.items()}
    leaves = grad_leaves(args)
    with torch.autocast(device, dtype=amp_dtype):
        out = fn(**args, eps=EPS, **kw)
        if backward_inside:
            grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    if not backward_inside:
        grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out.detach(), [g.detach() for g in grads]


def compare_autocast(kind, backend, device, amp_dtype, T=13, H=64, I=128, V=500):
    """Forward and backward under torch.autocast(device, amp_dtype) with fp32 inputs (master weights).

    actual: the op under autocast; baseline: the reference composition under the same autocast; truth: the
    reference in fp64 on the inputs rounded to amp_dtype (what both compute with). Output in amp_dtype,
    gradients in fp32 (the masters' dtype), each within the flash-attention bound of amp_dtype.
    """
    fn, ref_fn, _ = OPS[kind]
    args = make_inputs(kind, T, H, I, V, torch.float32, device)
    truth_args = convert(convert(args, amp_dtype, device), torch.float64, "cpu")
    g = torch.randn(T, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth, truth_grads = run(ref_fn, truth_args, g)
    base, base_grads = run_autocast(ref_fn, args, g.to(device), device, amp_dtype)
    out, out_grads = run_autocast(fn, args, g.to(device), device, amp_dtype, backend=backend)
    with torch.autocast(device, dtype=amp_dtype), torch.no_grad():
        out_inference = fn(**args, eps=EPS, backend=backend)
    assert base.dtype == out.dtype == out_inference.dtype == amp_dtype
    K = reduction(T, H, I)
    check_like_torch(out, truth, base, amp_dtype, f"{kind}/{backend} autocast output", K)
    check_like_torch(out_inference, truth, base, amp_dtype, f"{kind}/{backend} autocast output (no grad)", K)
    for name, a, t, b in zip(GRAD_NAMES[kind], out_grads, truth_grads, base_grads):
        assert a.dtype == b.dtype == torch.float32, f"d_{name}: {a.dtype}, the composition's {b.dtype}"
        check_like_torch(a, t, b, amp_dtype, f"{kind}/{backend} autocast d_{name}", K)
    # backward() inside the autocast region runs the same kernels on the same saved tensors: same gradients.
    _, inside = run_autocast(fn, args, g.to(device), device, amp_dtype, backward_inside=True, backend=backend)
    for name, a, b in zip(GRAD_NAMES[kind], inside, out_grads):
        assert torch.equal(a, b), f"{kind}/{backend} d_{name}: backward inside autocast differs"


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend,device", _params("fspad", "cpu"))
def test_autocast_cpu(kind, backend, device, amp_dtype):
    if backend == "triton" and amp_dtype == torch.bfloat16:
        pytest.skip(TRITON_INTERPRETER_BF16)
    compare_autocast(kind, backend, device, amp_dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend,device", _params("fspad", "cuda"))
def test_autocast_cuda(kind, backend, device, amp_dtype):
    compare_autocast(kind, backend, device, amp_dtype)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_autocast_embedding_rows(kind):
    """Under autocast the fp32 embedding table is not cast whole: its rows are gathered, then cast. Same
    result as a table already in the autocast dtype, with leading dimensions, int32 ids and an out= buffer;
    out-of-range ids are still refused; fp64 inputs stay fp64 (autocast leaves fp64 alone)."""
    fn = OPS[kind][0]
    args = make_inputs(kind, 6, 32, 48, 50, lead=(2, 3), id_dtype=torch.int32)
    pre_cast = {**args, "embed_weight": args["embed_weight"].bfloat16()}
    buf = torch.empty(2, 3, 32, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        got = fn(**args, eps=EPS)
        assert got.dtype == torch.bfloat16 and got.shape == (2, 3, 32)
        assert torch.equal(fn(**pre_cast, eps=EPS), got)
        assert fn(**args, eps=EPS, out=buf).data_ptr() == buf.data_ptr()
        assert torch.equal(buf, got)
        bad = {**args, "token_ids": args["token_ids"].clone()}
        bad["token_ids"][1, 2] = 50
        with pytest.raises(ValueError, match=r"token_ids: expected ids in \[0, 50\).*got 50 at flat position 5"):
            fn(**bad, eps=EPS)
        args64 = convert(args, torch.float64, "cpu")
        assert fn(**args64, eps=EPS, backend="torch").dtype == torch.float64


# ---------------------------------------------------------------------------------------------------
# API: shapes, buffers, the frozen embedding, errors


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_leading_dims_and_out_buffer(kind):
    fn, ref_fn, _ = OPS[kind]
    T, H, I = 6, 32, 48
    args = make_inputs(kind, T, H, I, 50, lead=(2, 3))
    flat = {**args, "features": args["features"].reshape(-1, H), "token_ids": args["token_ids"].reshape(-1)}
    want = ref_fn(**flat, eps=EPS).reshape(2, 3, H)
    got = fn(**args, eps=EPS, backend="torch")
    assert got.shape == (2, 3, H)
    K = reduction(T, H, I)
    assert_close_reduction(got, want, torch.float32, K, f"{kind} leading dims")
    buf = torch.empty(2, 3, H)
    res = fn(**args, eps=EPS, out=buf)
    assert res.data_ptr() == buf.data_ptr()
    assert_close_reduction(buf, want, torch.float32, K, f"{kind} out= buffer")
    leaves = grad_leaves(args)
    assert leaves
    with pytest.raises(ValueError, match="out: caller buffers are for inference"):
        fn(**args, eps=EPS, out=buf)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_embedding_is_frozen(kind):
    fn = OPS[kind][0]
    args = make_inputs(kind, 4, 16, 24, 30)
    args["embed_weight"].requires_grad_(True)
    args["features"].requires_grad_(True)
    out = fn(**args, eps=EPS, backend="torch" if kind == "fspad" else None)
    out.sum().backward()
    assert args["embed_weight"].grad is None
    assert args["features"].grad is not None and args["features"].grad.shape == args["features"].shape


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("backend,device", _params("fspad", "cpu"))
def test_each_gradient_alone(kind, backend, device):
    """Each gradient asked for alone (every other input frozen) is the one computed with all the others, to
    the bit: the backward leaves out what is not asked for (the norm backward when only W_d, W_g or W_u are
    asked for; the column sums of the norm and bias gradients that are None) without changing the rest."""
    fn = OPS[kind][0]
    args = convert(make_inputs(kind, 5, 16, 24, 30), torch.float32, device)
    skip_unless_runs(kind, backend, args)
    g = torch.randn(5, 16, generator=torch.Generator().manual_seed(1)).to(device)
    _, every = run(fn, args, g, backend=backend)
    for name, want in zip(GRAD_NAMES[kind], every):
        leaf = args[name].detach().clone().requires_grad_(True)
        (got,) = torch.autograd.grad(fn(**{**args, name: leaf}, eps=EPS, backend=backend), leaf, g)
        assert torch.equal(got, want), f"{kind}/{backend}: d_{name} alone differs from d_{name} with the others"


def test_empty_rows():
    args = make_inputs("fspad", 1, 16, 24, 30)
    args["features"], args["token_ids"] = args["features"][:0], args["token_ids"][:0]
    assert sk.fspad_feature_sampling(**args, eps=EPS).shape == (0, 16)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("bad", [-1, 30, 10**6])
def test_out_of_range_ids_rejected(kind, bad):
    fn = OPS[kind][0]
    args = make_inputs(kind, 5, 16, 24, 30)
    args["token_ids"][2] = bad
    pattern = r"token_ids: expected ids in \[0, 30\).*got " + str(bad) + " at flat position 2"
    with pytest.raises(ValueError, match=pattern):
        fn(**args, eps=EPS)


def _set(name, f):
    def mutate(a):
        a[name] = f(a[name])

    return mutate


@pytest.mark.parametrize(
    "mutate,exc,msg",
    [
        (_set("token_ids", lambda t: t.float()), TypeError, "token_ids: expected dtype in"),
        (_set("token_ids", lambda t: t[:3]), ValueError, "token_ids: expected shape"),
        (_set("fc_weight", lambda t: t[:, :16]), ValueError, "fc_weight: expected shape"),
        (_set("fc_bias", lambda t: t.half()), TypeError, "fc_bias: expected dtype torch.float32"),
        (_set("embed_weight", lambda t: t[:, :8]), ValueError, "embed_weight: expected shape"),
        (_set("features", lambda t: t.int()), TypeError, "features: expected dtype in"),
        (_set("down_weight", lambda t: t[:, :5]), ValueError, "down_weight: expected shape"),
    ],
)
def test_bad_inputs_fspad(mutate, exc, msg):
    args = make_inputs("fspad", 5, 16, 24, 30)
    mutate(args)
    with pytest.raises(exc, match=msg):
        sk.fspad_feature_sampling(**args, eps=EPS)


def test_bad_inputs_griffin():
    args = make_inputs("griffin", 5, 16, 24, 30)
    args["up_weight"] = args["up_weight"][:, :16]
    with pytest.raises(ValueError, match=r"up_weight: expected shape \[\*, 32\]"):
        sk.griffin_token_fusion(**args, eps=EPS)
    args = make_inputs("griffin", 5, 16, 24, 30)
    with pytest.raises(ValueError, match="eps: expected a float >= 0"):
        sk.griffin_token_fusion(**args, eps=-1.0)


def test_explicit_backend_refusal_says_why():
    args = make_inputs("fspad", 3, 16, 24, 30, torch.float64)
    with pytest.raises(BackendError, match="triton.*fp32/fp16/bf16"):
        sk.fspad_feature_sampling(**args, eps=EPS, backend="triton")
    assert "fp32/fp16/bf16" in sk.get_op("fspad_feature_sampling").reason("triton", *forward_kernel_args("fspad", args))


def _has_cpu_kernel(name):
    return sk.get_op(name).static_reason("cpu", "cpu") is None


@pytest.mark.parametrize(
    "name",
    [
        "fspad_feature_sampling",
        "griffin_token_fusion",
        "fspad_feature_sampling_backward",
        "griffin_token_fusion_backward",
    ],
)
def test_opcheck_cpu(name):
    """The schemas declare what the compiled CPU kernels mutate (torch.library.opcheck)."""
    if not _has_cpu_kernel(name):
        pytest.skip("specdec_kernels._C has no CPU kernel for " + name)
    kind = name.split("_")[0]
    args = make_inputs(kind, 5, 16, 24, 30)
    T, H, I = 5, 16, 24
    stat_shape = (T,) if kind == "fspad" else (T, 3)
    saved = [torch.randn(T, H), torch.rand(stat_shape) + 0.5]
    saved += [torch.randn(T, I), torch.randn(T, I)] if kind == "fspad" else [torch.randn(T, I)]
    if not name.endswith("_backward"):
        call = forward_kernel_args(kind, args)
    else:
        grads = [torch.empty_like(a) for k, a in args.items() if k not in FROZEN]
        call = [torch.randn(T, H)] + list(args.values()) + [EPS] + saved + grads
    torch.library.opcheck(getattr(torch.ops.specdec, name), tuple(call), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_torch_compile_fullgraph(kind):
    """The op traces whole under torch.compile, inference and training (no graph break in the dispatch)."""
    if not _has_cpu_kernel(OPS[kind][2]):
        pytest.skip("specdec_kernels._C has no CPU kernel")
    fn, ref_fn, _ = OPS[kind]
    T, H, I = 6, 32, 48
    args = make_inputs(kind, T, H, I, 50)
    leaves = grad_leaves(args)
    rest = {k: a for k, a in args.items() if k not in ("features", "token_ids")}

    def f(feats, ids):
        return fn(feats, ids, **rest, eps=EPS, backend="cpu")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(args["features"], args["token_ids"])
    grads = torch.autograd.grad(out.sum(), leaves)
    want = ref_fn(**args, eps=EPS)
    want_grads = torch.autograd.grad(want.sum(), leaves)
    K = reduction(T, H, I)
    assert_close_reduction(out, want, torch.float32, K, f"{kind} compiled output")
    for name, a, b in zip(GRAD_NAMES[kind], grads, want_grads):
        assert_close_reduction(a, b, torch.float32, K, f"{kind} compiled d_{name}")


# ---------------------------------------------------------------------------------------------------
# The CPU forward's GEMMs: the linear kernel for few rows, ATen's GEMM beyond


@pytest.fixture
def small_products_at_8():
    """The CPU kernels' products of at most 8 rows on the linear kernel (every dtype), restored after."""
    from specdec_kernels.ops import linear as lin

    if not lin.linear_isas():
        pytest.skip("specdec_kernels._C (the C++ linear kernel) is not loaded")
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    saved, routed = {d: lin.small_product_rows(d) for d in dtypes}, set(lin._ROUTED)
    for d in dtypes:
        lin.set_small_product_rows(d, 8)
    yield 8
    for d, rows in saved.items():
        lin.set_small_product_rows(d, rows)
    lin._ROUTED.clear()
    lin._ROUTED.update(routed)


def _aten_gemms(kind, args):
    """How many ATen GEMM calls one inference forward of the CPU kernel makes (profiled)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        OPS[kind][0](**args, eps=EPS, backend="cpu")
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm"))


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 5, 8, 9])
def test_cpu_small_products_on_the_linear_kernel(kind, dtype, T, small_products_at_8):
    """With small_product_rows = 8, forwards of at most 8 rows run every GEMM on the linear kernel and larger
    ones on ATen's (the profile shows which ran); both match the reference, with and without the fc bias, and
    the training path (saved activations, backward) too. Odd H and I: no multiple of a vector width."""
    args = make_inputs(kind, T, 40, 100, 300, dtype)
    skip_unless_runs(kind, "cpu", args)
    assert (_aten_gemms(kind, args) == 0) == (T <= small_products_at_8)
    for bias in (True, False):
        compare(kind, "cpu", "cpu", T, 40, 100, 300, dtype, bias=bias)


@pytest.mark.parametrize("backend, env, routed", [("torch", None, False), (None, "torch", False), ("cpu", None, True),
                                                  (None, None, True)])  # fmt: skip
def test_small_products_measured_only_for_the_cpu_kernel(monkeypatch, backend, env, routed):
    """The linear-kernel measurement behind the CPU kernel's small products is asked for only where that kernel
    may run (backend cpu or chosen), not for the torch reference (backend= or SPECDEC_BACKEND=)."""
    from specdec_kernels.ops import linear as lin

    calls = []
    monkeypatch.setattr(lin, "route_small_products", lambda dtype: calls.append(dtype) or 0)
    if env is None:
        monkeypatch.delenv("SPECDEC_BACKEND", raising=False)
    else:
        monkeypatch.setenv("SPECDEC_BACKEND", env)
    args = make_inputs("fspad", 3, 40, 100, 300, torch.float32)
    with torch.no_grad():
        OPS["fspad"][0](**args, eps=EPS, backend=backend)
    assert calls == ([torch.float32] if routed else [])
