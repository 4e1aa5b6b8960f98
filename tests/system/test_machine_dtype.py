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
    calls = []

    def fake(rounds=15):
        calls.append(1)
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
    assert len(calls) == 5
