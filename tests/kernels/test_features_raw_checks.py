"""Argument checks of the raw CPU feature-sampling ops (torch.ops.specdec.fspad_feature_sampling, ...).

The public functions check their inputs in Python; a direct torch.ops call skips that, so the compiled
kernels check again (csrc/include/specdec/features_checks.h, shared with the CUDA kernels) instead of
reading or writing out of bounds. Each case breaks one argument of an otherwise valid raw call and expects
the message to name the op, the argument, what was expected and what came. Valid raw calls must give
exactly what the public function gives (same kernel).
"""

from __future__ import annotations

import re

import pytest
import torch

import specdec_kernels as sk

T, H, I, V = 5, 16, 24, 30
EPS = 1e-6
FWD = {"fspad": "fspad_feature_sampling", "griffin": "griffin_token_fusion"}  # kind -> op (schema) name
BWD = {kind: name + "_backward" for kind, name in FWD.items()}
FS, FSB, GR, GRB = FWD["fspad"], BWD["fspad"], FWD["griffin"], BWD["griffin"]
OPS = (FS, FSB, GR, GRB)


def _kind(name):
    return "fspad" if name.startswith("fspad") else "griffin"


def _has_cpu_kernel(name):
    return sk.get_op(name).static_reason("cpu", "cpu") is None


pytestmark = pytest.mark.skipif(
    not all(_has_cpu_kernel(n) for n in OPS), reason="specdec_kernels._C has no CPU feature-sampling kernels"
)


def _inputs(kind, dtype=torch.float32, seed=0):
    """Named forward inputs of `kind` (schema argument names), weights scaled like nn.Linear's."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    a = dict(
        features=rnd(T, H),
        token_ids=torch.randint(0, V, (T,), generator=g),
        embed_weight=rnd(V, H),
        fc_weight=rnd(H, 2 * H, scale=(2 * H) ** -0.5),
        fc_bias=rnd(H, scale=0.1),
    )
    if kind == "fspad":
        a.update(
            norm_weight=1 + rnd(H, scale=0.2), gate_weight=rnd(I, H, scale=H**-0.5), up_weight=rnd(I, H, scale=H**-0.5)
        )
    else:
        a.update(
            norm_b_weight=1 + rnd(H, scale=0.2),
            norm_a_weight=1 + rnd(H, scale=0.2),
            up_weight=rnd(I, 2 * H, scale=(2 * H) ** -0.5),
        )
    a["down_weight"] = rnd(H, I, scale=I**-0.5)
    a["token_ids"][0], a["token_ids"][-1] = V - 1, 0  # both ends of the vocabulary
    return a


def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _raw_args(name, dtype=torch.float32):
    """A valid argument dict for the raw op `name`, keyed by the schema's argument names."""
    kind = _kind(name)
    a = _inputs(kind, dtype)
    a["eps"] = EPS
    stat = (T,) if kind == "fspad" else (T, 3)
    sdt = _stat_dtype(dtype)
    if name == FWD[kind]:
        a["out"] = torch.empty(T, H, dtype=dtype)
        if kind == "fspad":
            a.update(
                z=torch.empty(T, H, dtype=dtype),
                rstd=torch.empty(stat, dtype=sdt),
                gate=torch.empty(T, I, dtype=dtype),
                up=torch.empty(T, I, dtype=dtype),
            )
        else:
            a.update(
                h=torch.empty(T, H, dtype=dtype),
                stats=torch.empty(stat, dtype=sdt),
                pre_act=torch.empty(T, I, dtype=dtype),
            )
        return a
    # Backward: saved activations from a real forward, one gradient buffer per differentiable input.
    fwd = _raw_args(FWD[kind], dtype)
    _call(FWD[kind], fwd)
    a["grad_out"] = torch.randn(T, H, dtype=torch.float64).to(dtype)
    saved = ("z", "rstd", "gate", "up") if kind == "fspad" else ("h", "stats", "pre_act")
    for k in saved:
        a[k] = fwd[k]
    for k in _grad_inputs(kind):
        a["d_" + k] = torch.empty_like(a[k])
    return a


def _grad_inputs(kind):
    mid = ["norm_weight", "gate_weight"] if kind == "fspad" else ["norm_b_weight", "norm_a_weight"]
    return ["features", "fc_weight", "fc_bias", *mid, "up_weight", "down_weight"]


def _call(name, args):
    op = getattr(torch.ops.specdec, name).default
    return op(*[args[arg.name] for arg in op._schema.arguments])


def _transposed(t):
    """The same values with column-major strides: a non-contiguous tensor of the same shape."""
    return t.t().contiguous().t()


def _set(**kw):
    def mutate(a):
        for k, f in kw.items():
            a[k] = f(a[k])

    return mutate


def _lit(s):
    return re.escape(s)


# (op, mutation, exception, message pattern). Patterns name the op, the argument, the expectation and what came.
CASES = [
    # --- the features fix the device, the dtype and T, H -------------------------------------------------
    (
        FS,
        _set(features=lambda t: t.to(torch.int32)),
        RuntimeError,
        _lit(f"{FS}: the CPU kernels take float32, float16, bfloat16 or float64 features, got Int"),
    ),
    (
        FS,
        _set(features=lambda t: t.reshape(1, T, H)),
        RuntimeError,
        _lit(f"{FS}: features must be a contiguous [T, H] tensor, got shape [1, 5, 16]"),
    ),
    (
        GR,
        _set(features=_transposed),
        RuntimeError,
        _lit(f"{GR}: features must be a contiguous [T, H] tensor, got shape [5, 16] and strides [1, 5]"),
    ),
    # --- weights: short, wrong dtype, strided --------------------------------------------------------------
    (
        FS,
        _set(norm_weight=lambda t: t[: H - 1]),
        RuntimeError,
        _lit(f"{FS}: norm_weight must have shape [16], got [15]"),
    ),
    (FS, _set(gate_weight=lambda t: t.half()), RuntimeError, _lit(f"{FS}: gate_weight must be Float, got Half")),
    (FS, _set(up_weight=_transposed), RuntimeError, _lit(f"{FS}: up_weight must be contiguous, got strides [1, 24]")),
    (
        FS,
        _set(down_weight=lambda t: t[:, : I - 1]),
        RuntimeError,
        _lit(f"{FS}: down_weight must have shape [16, 24], got [16, 23]"),
    ),
    (
        FS,
        _set(gate_weight=lambda t: t[0]),
        RuntimeError,
        _lit(f"{FS}: gate_weight must have shape [I >= 0, 16], got [16]"),
    ),
    (
        FS,
        _set(fc_weight=lambda t: t[:, :H]),
        RuntimeError,
        _lit(f"{FS}: fc_weight must have shape [16, 32], got [16, 16]"),
    ),
    (FS, _set(fc_bias=lambda t: t.double()), RuntimeError, _lit(f"{FS}: fc_bias must be Float, got Double")),
    (GR, _set(norm_a_weight=lambda t: t[:4]), RuntimeError, _lit(f"{GR}: norm_a_weight must have shape [16], got [4]")),
    (
        GR,
        _set(norm_b_weight=lambda t: t.bfloat16()),
        RuntimeError,
        _lit(f"{GR}: norm_b_weight must be Float, got BFloat16"),
    ),
    (
        GR,
        _set(up_weight=lambda t: t[:, :H]),
        RuntimeError,
        _lit(f"{GR}: up_weight must have shape [24, 32], got [24, 16]"),
    ),
    (
        GR,
        _set(down_weight=lambda t: t[:, 1:]),
        RuntimeError,
        _lit(f"{GR}: down_weight must have shape [16, 24], got [16, 23]"),
    ),
    # --- token ids and the embedding ---------------------------------------------------------------------
    (FS, _set(token_ids=lambda t: t.float()), RuntimeError, _lit(f"{FS}: token_ids must be int32 or int64, got Float")),
    (
        FS,
        _set(token_ids=lambda t: t[:-1]),
        RuntimeError,
        _lit(f"{FS}: token_ids must be a contiguous [T] = [5] tensor, got shape [4]"),
    ),
    (
        GR,
        _set(token_ids=lambda t: t.reshape(T, 1)),
        RuntimeError,
        _lit(f"{GR}: token_ids must be a contiguous [T] = [5] tensor, got shape [5, 1]"),
    ),
    (
        FS,
        _set(embed_weight=lambda t: t[:, 1:]),
        RuntimeError,
        _lit(f"{FS}: embed_weight must have shape [V >= 1, 16], got [30, 15]"),
    ),
    (
        FS,
        _set(embed_weight=lambda t: t[:0]),
        RuntimeError,
        _lit(f"{FS}: embed_weight must have shape [V >= 1, 16], got [0, 16]"),
    ),
    (
        GR,
        _set(embed_weight=_transposed),
        RuntimeError,
        _lit(f"{GR}: embed_weight rows must be contiguous (stride [>= H, 1]), got strides [1, 30]"),
    ),
    (FS, _set(embed_weight=lambda t: t.half()), RuntimeError, _lit(f"{FS}: embed_weight must be Float, got Half")),
    # Values: the CPU kernels check them (no sync cost on the host); the CUDA kernels clamp.
    (
        FS,
        _set(token_ids=lambda t: torch.tensor([1, 2, V, 3, 4])),
        IndexError,
        _lit(f"{FS}: token_ids must be in [0, 30) (the rows of embed_weight), got 30 at position 2"),
    ),
    (
        GR,
        _set(token_ids=lambda t: torch.tensor([1, 2, 3, 4, -1], dtype=torch.int32)),
        IndexError,
        _lit(f"{GR}: token_ids must be in [0, 30) (the rows of embed_weight), got -1 at position 4"),
    ),
    (
        GRB,
        _set(token_ids=lambda t: torch.tensor([V + 7, 0, 0, 0, 0])),
        IndexError,
        _lit(f"{GRB}: token_ids must be in [0, 30) (the rows of embed_weight), got 37 at position 0"),
    ),
    (FS, _set(eps=lambda e: -1.0), RuntimeError, _lit(f"{FS}: eps must be >= 0, got -1")),
    (GR, _set(eps=lambda e: float("nan")), RuntimeError, f"{GR}: eps must be >= 0, got nan"),
    # --- output buffers ----------------------------------------------------------------------------------
    (FS, _set(out=lambda t: t[: T - 1]), RuntimeError, _lit(f"{FS}: out must have shape [5, 16], got [4, 16]")),
    (FS, _set(z=_transposed), RuntimeError, _lit(f"{FS}: z must be contiguous, got strides [1, 5]")),
    (FS, _set(rstd=lambda t: t.double()), RuntimeError, _lit(f"{FS}: rstd must be Float, got Double")),
    (FS, _set(rstd=lambda t: t[:2]), RuntimeError, _lit(f"{FS}: rstd must have shape [5], got [2]")),
    (FS, _set(up=lambda t: t[:, :4]), RuntimeError, _lit(f"{FS}: up must have shape [5, 24], got [5, 4]")),
    (GR, _set(stats=lambda t: t[:, :2]), RuntimeError, _lit(f"{GR}: stats must have shape [5, 3], got [5, 2]")),
    (GR, _set(h=lambda t: t.half()), RuntimeError, _lit(f"{GR}: h must be Float, got Half")),
    (GR, _set(pre_act=lambda t: t[:1]), RuntimeError, _lit(f"{GR}: pre_act must have shape [5, 24], got [1, 24]")),
    # --- backward: saved activations and gradient buffers -------------------------------------------------
    (
        FSB,
        _set(grad_out=lambda t: t[:, :8]),
        RuntimeError,
        _lit(f"{FSB}: grad_out must have shape [5, 16], got [5, 8]"),
    ),
    (FSB, _set(gate=lambda t: t[:, :-1]), RuntimeError, _lit(f"{FSB}: gate must have shape [5, 24], got [5, 23]")),
    (FSB, _set(rstd=lambda t: t.double()), RuntimeError, _lit(f"{FSB}: rstd must be Float, got Double")),
    (
        FSB,
        _set(d_norm_weight=lambda t: t[:3]),
        RuntimeError,
        _lit(f"{FSB}: d_norm_weight must have shape [16], got [3]"),
    ),
    (
        FSB,
        _set(d_fc_weight=_transposed),
        RuntimeError,
        _lit(f"{FSB}: d_fc_weight must be contiguous, got strides [1, 16]"),
    ),
    (FSB, _set(d_gate_weight=lambda t: t.half()), RuntimeError, _lit(f"{FSB}: d_gate_weight must be Float, got Half")),
    (GRB, _set(stats=lambda t: t.reshape(-1)), RuntimeError, _lit(f"{GRB}: stats must have shape [5, 3], got [15]")),
    (GRB, _set(pre_act=lambda t: t.double()), RuntimeError, _lit(f"{GRB}: pre_act must be Float, got Double")),
    (
        GRB,
        _set(d_up_weight=lambda t: t[:, :H]),
        RuntimeError,
        _lit(f"{GRB}: d_up_weight must have shape [24, 32], got [24, 16]"),
    ),
    (
        GRB,
        _set(d_features=lambda t: t[:-1]),
        RuntimeError,
        _lit(f"{GRB}: d_features must have shape [5, 16], got [4, 16]"),
    ),
    (
        GRB,
        _set(d_norm_a_weight=lambda t: t[:1]),
        RuntimeError,
        _lit(f"{GRB}: d_norm_a_weight must have shape [16], got [1]"),
    ),
]


@pytest.mark.parametrize("name,mutate,exc,pattern", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_raw_call_rejected(name, mutate, exc, pattern):
    args = _raw_args(name)
    mutate(args)
    with pytest.raises(exc, match=pattern):
        _call(name, args)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_fp64_statistics(kind):
    """fp64 features come with fp64 row statistics on CPU; fp32 statistics are refused then."""
    name = FWD[kind]
    stat = "rstd" if kind == "fspad" else "stats"
    args = _raw_args(name, torch.float64)
    _call(name, args)  # valid
    args[stat] = args[stat].float()
    with pytest.raises(RuntimeError, match=_lit(f"{name}: {stat} must be Double, got Float")):
        _call(name, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_valid_raw_forward_matches_public(kind, dtype):
    """A valid raw call (optional saved activations omitted, a row-strided embedding view) gives exactly
    the public function's output: same kernel, and the checks change nothing for valid inputs."""
    fn = sk.fspad_feature_sampling if kind == "fspad" else sk.griffin_token_fusion
    name = FWD[kind]
    args = _raw_args(name, dtype)
    padded = torch.zeros(V, H + 8, dtype=dtype)
    padded[:, :H] = args["embed_weight"]
    args["embed_weight"] = padded[:, :H]  # stride [H + 8, 1]: accepted
    for k in ("gate", "up", "pre_act"):
        if k in args:
            args[k] = None
    _call(name, args)
    with torch.no_grad():
        want = fn(**_inputs(kind, dtype), eps=EPS, backend="cpu")
    assert torch.equal(args["out"], want)


@pytest.mark.parametrize("kind", ["fspad", "griffin"])
def test_valid_raw_backward_matches_autograd(kind):
    """The raw backward (every gradient requested) equals the public function's autograd gradients."""
    fn = sk.fspad_feature_sampling if kind == "fspad" else sk.griffin_token_fusion
    args = _raw_args(BWD[kind])
    _call(BWD[kind], args)
    named = _inputs(kind)
    leaves = [named[k].requires_grad_(True) for k in _grad_inputs(kind)]
    out = fn(**named, eps=EPS, backend="cpu")
    grads = torch.autograd.grad(out, leaves, args["grad_out"])
    for k, g in zip(_grad_inputs(kind), grads):
        assert torch.equal(args["d_" + k], g), k


def test_empty_rows_raw():
    """T = 0 is valid: the checks accept it and the raw backward zeroes every gradient buffer."""
    args = _raw_args(GRB)
    for k in ("features", "grad_out", "h", "stats", "pre_act", "token_ids", "d_features"):
        args[k] = args[k][:0]
    for k in _grad_inputs("griffin")[1:]:
        args["d_" + k].fill_(float("nan"))
    _call(GRB, args)
    for k in _grad_inputs("griffin")[1:]:
        assert torch.equal(args["d_" + k], torch.zeros_like(args["d_" + k])), k
