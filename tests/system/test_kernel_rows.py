"""specdec.target.kernel_rows: up to how many rows the C++ linear beats oneDNN's prepacked bf16 linear
(kernel_rows), and torch's linear widened to fp32 (wide_rows).

A real measurement on a small shape gives a row count of ROWS (or 0; for wide_rows one of WIDE_ROWS or
NO_LIMIT) that agrees with the times it recorded; the answer is cached per shape (memo, then the JSON file;
refresh measures again; a damaged file is measured again); $SPECDEC_LINEAR_CHOICE decides without measuring.
kernel_rows needs both linears, wide_rows the kernel (skip elsewhere).
"""

from __future__ import annotations

import json

import pytest
import torch

from specdec.target import kernel_rows as kr
from specdec.target.prepack import prepack_available
from specdec_kernels.ops import linear as linear_op

needs_both = pytest.mark.skipif(
    not (linear_op.linear_isas() and prepack_available()),
    reason="needs specdec_kernels._C and oneDNN's prepacked bf16 linear (a CPU with AVX-512 BW/VL/DQ)",
)
needs_kernel = pytest.mark.skipif(not linear_op.linear_isas(), reason="specdec_kernels._C is not loaded")


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """No forced choice, an empty memo and a cache file of this test's own: the session's $SPECDEC_HOME holds
    the rows other tests measured (their models' shapes), which the cache assertions here must not see."""
    monkeypatch.delenv("SPECDEC_LINEAR_CHOICE", raising=False)
    monkeypatch.setattr(kr, "_MEMO", {})
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))


@needs_both
def test_measurement_agrees_with_its_times():
    r = kr.measure(96, 40, torch.bfloat16)
    assert r["rows"] in (0, *kr.ROWS)
    measured = len(r["M"])
    assert r["M"] == list(kr.ROWS[:measured]) and len(r["kernel_ms"]) == len(r["prepacked_ms"]) == measured
    faster = [k < p for k, p in zip(r["kernel_ms"], r["prepacked_ms"])]
    won = faster.index(False) if False in faster else measured
    assert won >= measured - 1  # the measurement stops at the first row count the kernel loses
    assert r["rows"] == (kr.ROWS[won - 1] if won else 0)


@needs_both
def test_cached_per_shape(monkeypatch):
    calls = []

    def fake(N, K, dtype):
        calls.append((N, K))
        return {"rows": 8 if N == 96 else 0, "M": [1], "kernel_ms": [1.0], "prepacked_ms": [2.0]}

    monkeypatch.setattr(kr, "measure", fake)
    assert kr.kernel_rows(96, 40, torch.bfloat16) == 8
    assert kr.kernel_rows(96, 40, torch.bfloat16) == 8 and calls == [(96, 40)]  # memo
    assert kr.kernel_rows(50, 40, torch.bfloat16) == 0 and calls == [(96, 40), (50, 40)]
    monkeypatch.setattr(kr, "_MEMO", {})
    assert kr.kernel_rows(96, 40, torch.bfloat16) == 8 and len(calls) == 2  # read back from the file
    store = json.loads(kr.cache_path().read_text())
    assert sorted(v["rows"] for v in store.values()) == [0, 8]
    assert kr.kernel_rows(96, 40, torch.bfloat16, refresh=True) == 8 and len(calls) == 3
    kr.cache_path().write_text("{not json")
    monkeypatch.setattr(kr, "_MEMO", {})
    assert kr.kernel_rows(96, 40, torch.bfloat16) == 8 and len(calls) == 4  # damaged: measured again
    assert kr.kernel_rows(96, 40, torch.bfloat16, use_cache=False) == 8 and len(calls) == 5


@needs_both
def test_forced_choice(monkeypatch):
    monkeypatch.setattr(kr, "measure", lambda *a: pytest.fail("measured despite $SPECDEC_LINEAR_CHOICE"))
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "cpu")
    assert kr.kernel_rows(96, 40, torch.bfloat16) == kr.ROWS[-1]
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "torch")
    assert kr.kernel_rows(96, 40, torch.bfloat16) == 0
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "fast")
    with pytest.raises(ValueError, match="expected cpu or torch"):
        kr.kernel_rows(96, 40, torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_wide_measurement_agrees_with_its_times(dtype):
    r = kr.measure_wide(96, 40, dtype)
    measured = len(r["M"])
    assert r["M"] == list(kr.WIDE_ROWS[:measured]) and len(r["kernel_ms"]) == len(r["widened_ms"]) == measured
    faster = [k < w for k, w in zip(r["kernel_ms"], r["widened_ms"])]
    won = faster.index(False) if False in faster else measured
    assert won >= measured - 1  # stops at the first row count the kernel loses
    if won == len(kr.WIDE_ROWS):
        assert r["rows"] == kr.NO_LIMIT
    else:
        assert r["rows"] == kr.WIDE_ROWS[max(won - 1, 0)]  # at least WIDE_ROWS[0]: below it the kernel was chosen


@needs_kernel
def test_wide_rows_cached_per_shape_and_forced(monkeypatch):
    calls = []

    def fake(N, K, dtype):
        calls.append((N, K, dtype))
        return {"rows": 256, "M": [64], "kernel_ms": [1.0], "widened_ms": [2.0]}

    monkeypatch.setattr(kr, "measure_wide", fake)
    monkeypatch.setattr(kr, "measure", lambda *a: pytest.fail("wide_rows measured kernel_rows"))
    assert kr.wide_rows(96, 40, torch.bfloat16) == 256
    assert kr.wide_rows(96, 40, torch.bfloat16) == 256 and len(calls) == 1  # memo
    assert kr.wide_rows(96, 40, torch.float32) == 256 and len(calls) == 2  # per dtype
    monkeypatch.setattr(kr, "_MEMO", {})
    assert kr.wide_rows(96, 40, torch.bfloat16) == 256 and len(calls) == 2  # read back from the file
    assert all(k.endswith("|widened") for k in json.loads(kr.cache_path().read_text()) if "96x40" in k)
    kr.cache_path().write_text("{not json")
    monkeypatch.setattr(kr, "_MEMO", {})
    assert kr.wide_rows(96, 40, torch.bfloat16) == 256 and len(calls) == 3  # damaged: measured again
    monkeypatch.setattr(kr, "measure_wide", lambda *a: pytest.fail("measured despite $SPECDEC_LINEAR_CHOICE"))
    for forced in ("cpu", "torch"):
        monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", forced)
        assert kr.wide_rows(96, 40, torch.bfloat16, use_cache=False) == kr.NO_LIMIT
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "fast")
    with pytest.raises(ValueError, match="expected cpu or torch"):
        kr.wide_rows(96, 40, torch.bfloat16)
