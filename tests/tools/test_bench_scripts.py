"""The benchmark scripts that the GPU run (bench/run_gpu.sh) relies on, run on the CPU at tiny sizes so that
they cannot rot between GPU sessions. Speed is not checked here (benchmarks measure it)."""

from __future__ import annotations

import csv
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))


def test_e2e_cuda_graph_smoke_run(tmp_path):
    import e2e_cuda_graph

    rc = e2e_cuda_graph.main(
        ["--device", "cpu", "--tiny", "--quick", "--trees", "8:2:3", "--passes", "4", "--out-dir", str(tmp_path)]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "e2e_cuda_graph_cpu.csv")))
    assert [r["setting"] for r in rows] == ["plain", "tree 8/2/3"]
    assert all(float(r["eager_ms_per_pass"]) > 0 and r["graph_ms_per_pass"] == "" for r in rows)  # no graphs on a CPU
    assert "| plain |" in (tmp_path / "e2e_cuda_graph_cpu.md").read_text()


def test_bench_paged_smoke_run(tmp_path):
    import bench_paged

    bench_paged.main(["--device", "cpu", "--quick", "--out-dir", str(tmp_path)])
    att = list(csv.DictReader(open(tmp_path / "paged_attention_cpu.csv")))
    comp = list(csv.DictReader(open(tmp_path / "paged_compaction_cpu.csv")))
    assert att and comp
    assert {r["page_size"] for r in comp} == {"1", "16"}
