"""specdec.machine_dtype: the faster CPU compute dtype is measured once per CPU/torch/threads and cached."""

from __future__ import annotations

import json

import torch

from specdec import machine_dtype


def test_measure_compares_both_dtypes_at_every_row_count():
    got = machine_dtype.measure(rounds=2)
    assert set(got["ratios"]) == {str(m) for m in machine_dtype.ROWS}
    assert all(r > 0 for r in got["ratios"].values())
    assert got["dtype"] == ("bfloat16" if got["bf16_over_fp32"] < 1 else "float32")


def test_choice_is_measured_once_and_cached(monkeypatch):
    monkeypatch.delenv("SPECDEC_CPU_DTYPE", raising=False)
    calls = []

    def fake(rounds=15, training=False):
        calls.append(training)
        return {"bf16_over_fp32": 0.5, "ratios": {}, "dtype": "bfloat16"}

    monkeypatch.setattr(machine_dtype, "measure", fake)
    path = machine_dtype.cache_path()
    if path.exists():
        path.unlink()
    assert machine_dtype.fastest_cpu_dtype() == "bfloat16" and len(calls) == 1
    assert machine_dtype.fastest_cpu_dtype() == "bfloat16" and len(calls) == 1  # from the cache
    assert machine_dtype.cpu_key() in json.loads(path.read_text())
    machine_dtype.fastest_cpu_dtype(refresh=True)
    assert len(calls) == 2
    n = torch.get_num_threads()
    try:  # another thread count is another machine as far as speed goes
        torch.set_num_threads(1 if n > 1 else 2)
        machine_dtype.fastest_cpu_dtype()
        assert len(calls) == 3 and len(json.loads(path.read_text())) == 2
    finally:
        torch.set_num_threads(n)
    path.write_text("{not json")  # a damaged cache is measured again and rewritten
    assert machine_dtype.fastest_cpu_dtype() == "bfloat16" and len(calls) == 4
    assert json.loads(path.read_text())
    machine_dtype.fastest_cpu_dtype(use_cache=False)
    assert len(calls) == 5 and not any(calls)
    assert machine_dtype.fastest_cpu_dtype(training=True) == "bfloat16" and calls[-1] is True  # apart
    assert machine_dtype.fastest_cpu_dtype(training=True) == "bfloat16" and len(calls) == 6
    assert machine_dtype.cpu_key(training=True) in json.loads(path.read_text())


def test_environment_overrides_the_measurement(monkeypatch):
    import pytest

    monkeypatch.setattr(
        machine_dtype, "measure", lambda rounds=15, training=False: pytest.fail("measured despite the override")
    )
    for name in ("bfloat16", "float32"):
        monkeypatch.setenv("SPECDEC_CPU_DTYPE", name)
        assert machine_dtype.fastest_cpu_dtype() == name
        assert "SPECDEC_CPU_DTYPE" in machine_dtype.auto_note(torch.device("cpu"))
    monkeypatch.setenv("SPECDEC_CPU_DTYPE", "fp8")
    with pytest.raises(ValueError, match="expected bfloat16 or float32"):
        machine_dtype.fastest_cpu_dtype()


def test_auto_note_says_what_was_picked_and_why(monkeypatch):
    monkeypatch.delenv("SPECDEC_CPU_DTYPE", raising=False)
    monkeypatch.setattr(
        machine_dtype,
        "measure",
        lambda rounds=15, training=False: {"bf16_over_fp32": 0.61, "ratios": {}, "dtype": "bfloat16"},
    )
    machine_dtype.fastest_cpu_dtype(refresh=True)
    note = machine_dtype.auto_note(torch.device("cpu"))
    assert note.startswith("--dtype auto: bfloat16 (") and "0.61x" in note
    assert machine_dtype.auto_note(torch.device("cuda")) == "--dtype auto: bfloat16 (CUDA)"


def test_cache_key_names_the_kernels_build(monkeypatch):
    """A rebuilt C++ linear kernel (other sources) is measured again: the key holds linear_kernel_id."""
    from specdec_kernels import _loader
    from specdec_kernels.ops.linear import linear_isa
    from specdec_kernels.ops.linear_choice import linear_kernel_id

    key = machine_dtype.cpu_key()
    assert key.endswith(f"|linear {linear_kernel_id()}")
    if linear_isa() == "none":
        return  # without _C there is no kernel build to tell apart
    monkeypatch.setattr(_loader, "build_info", lambda: {"cpu_sources": "0123456789ab"})
    assert machine_dtype.cpu_key() != key and machine_dtype.cpu_key().endswith("@0123456789ab")


def test_training_times_torchs_linear(monkeypatch, force_kernel):
    """The training choice times torch's linear (autograd never runs the C++ kernel) under its own cache key,
    and its note says so; the inference choice times the kernel where it is faster (here: forced)."""
    from specdec_kernels.ops.linear import linear_isas

    timed = []
    monkeypatch.setattr(machine_dtype, "_weights", lambda dt: [torch.zeros(machine_dtype.SHAPE, dtype=dt)])
    real = machine_dtype._linear_of
    monkeypatch.setattr(
        machine_dtype, "_linear_of", lambda dt, training=False: timed.append(real(dt, training)) or timed[-1]
    )
    ops = []
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, out=None: ops.append("torch") or out)
    got = machine_dtype.measure(rounds=1, training=True)
    assert ops and got["dtype"] in ("bfloat16", "float32") and len(timed) == 2 * len(machine_dtype.ROWS)
    assert machine_dtype.cpu_key(training=True).endswith("|linear torch (training)")
    assert machine_dtype.cpu_key(training=True) != machine_dtype.cpu_key()
    if linear_isas():
        ops.clear()
        machine_dtype.measure(rounds=1)
        assert not ops  # the kernel, not torch's linear
    monkeypatch.delenv("SPECDEC_CPU_DTYPE", raising=False)
    monkeypatch.setattr(
        machine_dtype,
        "measure",
        lambda rounds=15, training=False: {"bf16_over_fp32": 3.5, "ratios": {}, "dtype": "float32"},
    )
    machine_dtype.fastest_cpu_dtype(refresh=True, training=True)
    note = machine_dtype.auto_note(torch.device("cpu"), training=True)
    assert note.startswith("--dtype auto: float32 (") and "3.50x" in note and "training" in note
