"""Helpers shared by the tests: devices and backends to parametrize over, tolerances, comparisons.

Floating-point tolerances live here and only here (TOLERANCES), keyed by dtype.
"""
from __future__ import annotations

import pytest
import torch

from specdec_kernels import _backend

# (atol, rtol) for comparing a kernel's floating output with the reference computed in fp32.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def devices() -> list:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(op) -> list:
    """pytest params (backend, device) for every backend of `op`, skipping those not usable here.

    `op` is a specdec_kernels._backend.Op; the skip reason says why a backend cannot run.
    """
    params = []
    for dev in devices():
        for b in _backend.BACKENDS:
            if b not in op.impls:
                continue
            if b == "cuda" and dev != "cuda":
                continue
            if b == "cpu" and dev != "cpu":
                continue
            reason = _static_reason(op.name, b, torch.device(dev))
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            if dev == "cuda":
                marks.append(pytest.mark.cuda)
            params.append(pytest.param(b, dev, id=f"{b}-{dev}", marks=marks))
    return params


def _static_reason(name: str, backend: str, device: torch.device):
    if backend in ("cuda", "cpu"):
        return _backend.compiled_check(name, device, backend)
    if backend == "triton":
        return _backend.triton_check(device, name)
    return None


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Exact comparison (integers, bools) that prints how many and which entries differ."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    diff = actual.cpu() != expected.cpu()
    if diff.any():
        idx = torch.nonzero(diff)[:8].tolist()
        raise AssertionError(
            f"{what}: {int(diff.sum())} of {diff.numel()} entries differ; first at {idx}: "
            f"got {[actual.cpu()[tuple(i)].item() for i in idx]}, want {[expected.cpu()[tuple(i)].item() for i in idx]}")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None, what: str = "") -> None:
    """Float comparison with the tolerance of `dtype` (default: actual.dtype) from TOLERANCES."""
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
