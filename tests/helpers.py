"""Helpers shared by the tests: devices and backends to parametrize over, tolerances, comparisons.

Floating-point tolerances live here and only here. The rule (flash-attention's, ../docs/testing.md):
a result computed in dtype `dt` is compared with the truth computed in a wider dtype, and passes when its
error is at most about twice the error that PyTorch's own computation in `dt` makes on the same problem.
Where no such twin computation is at hand, `tolerance(dt, reduction)` bounds the error of a result
rounded to `dt` after a reduction of `reduction` terms of magnitude ~1 accumulated in fp32 (fp64 for
fp64): two roundings to `dt` (2 eps(dt)) plus the accumulation, whose rounding grows like
sqrt(reduction) * eps(acc) for random rounding; we allow 8x that for the worst cases of a few sums in
a row, FMA or not, and another summation order on another CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

import specdec_kernels as sk


def tolerance(dtype: torch.dtype, reduction: int = 1, scale: float = 1.0) -> tuple:
    """(atol, rtol) for a result of `dtype` whose terms come from reductions over `reduction` terms.

    `scale` is the magnitude of the compared values (absolute error grows with it).
    """
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tol = 2.0 * torch.finfo(dtype).eps + 8.0 * torch.finfo(acc).eps * math.sqrt(max(int(reduction), 1))
    return tol * scale, tol


def assert_close_as_torch(
    actual: torch.Tensor,
    truth: torch.Tensor,
    torch_same_dtype: torch.Tensor,
    what: str = "",
    floor: float | None = None,
) -> None:
    """flash-attention's rule: |actual - truth| <= 2 * |torch_same_dtype - truth| + floor, elementwise max.

    `truth` is computed in a wider dtype (fp64 for fp32 results, fp32 for fp16/bf16), `torch_same_dtype`
    by PyTorch in the dtype of `actual`. floor (default: the dtype's eps times the largest |truth|) keeps
    an exact twin from demanding an exact kernel.
    """
    a, t, r = (x.detach().double().cpu() for x in (actual, truth, torch_same_dtype))
    if floor is None:
        floor = torch.finfo(actual.dtype).eps * max(float(t.abs().max()) if t.numel() else 0.0, 1.0)
    err, ref_err = (a - t).abs().max().item() if a.numel() else 0.0, (r - t).abs().max().item() if r.numel() else 0.0
    bound = 2.0 * ref_err + floor
    assert err <= bound, (
        f"{what}: max error {err:.3g} against the wide-precision truth exceeds 2 x torch's own "
        f"{actual.dtype} error {ref_err:.3g} + floor {floor:.3g}"
    )


# (atol, rtol) for comparing a kernel's elementwise floating output (short reductions: a softmax row, a
# norm over H <= 256) with the reference computed in fp32: tolerance(dtype, 256).
TOLERANCES = {dt: tolerance(dt, 256) for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}


def devices() -> list:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(op) -> list:
    """pytest params (backend, device) for every backend of `op`, skipping those not usable here.

    `op` is an op name or a specdec_kernels.KernelOp; the skip reason says why a backend cannot run.
    """
    op = sk.get_op(op) if isinstance(op, str) else op
    params = []
    for dev in devices():
        for b in op.backends:
            if b == "cuda" and dev != "cuda":
                continue
            if b == "cpu" and dev != "cpu":
                continue
            reason = op.static_reason(b, dev)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            if dev == "cuda":
                marks.append(pytest.mark.cuda)
            params.append(pytest.param(b, dev, id=f"{b}-{dev}", marks=marks))
    return params


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Exact comparison (integers, bools) that prints how many and which entries differ."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    diff = actual.cpu() != expected.cpu()
    if diff.any():
        idx = torch.nonzero(diff)[:8].tolist()
        raise AssertionError(
            f"{what}: {int(diff.sum())} of {diff.numel()} entries differ; first at {idx}: "
            f"got {[actual.cpu()[tuple(i)].item() for i in idx]}, "
            f"want {[expected.cpu()[tuple(i)].item() for i in idx]}"
        )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None, what: str = "") -> None:
    """Float comparison with the tolerance of `dtype` (default: actual.dtype) from TOLERANCES."""
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(
        actual.float().cpu(), expected.float().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def torch_attention_in_dtype(q, k, v, visible, scale, dtype):
    """PyTorch's own (GQA) attention with every op in `dtype`: the scores, the softmax and P @ V are each
    rounded to dtype, as a plain PyTorch implementation in that dtype computes them. The twin of the
    flash-attention rule (assert_close_as_torch) for the tree-attention kernels.

    visible: bool [B, Nq, S], which key slots each query sees (a row seeing nothing gives zeros).
    """
    H, H_kv = q.shape[1], k.shape[1]
    vis = visible[:, None].to(q.device)  # [B, 1, Nq, S]
    kk = k.to(dtype).repeat_interleave(H // H_kv, dim=1)
    vv = v.to(dtype).repeat_interleave(H // H_kv, dim=1)
    scores = torch.matmul(q.to(dtype), kk.transpose(-1, -2)) * scale
    p = torch.softmax(scores.masked_fill(~vis, float("-inf")), dim=-1)
    p = torch.where(vis.any(-1, keepdim=True), p, torch.zeros_like(p))
    return torch.matmul(p, vv)
