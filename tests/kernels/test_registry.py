"""The op registry and soft loading: get_op / list_ops, the backend choice, SPECDEC_BACKEND in `info`, the
warning when `_C` is missing, SPECDEC_NO_EXTENSION, a broken Triton module disabling only itself, and
`info`'s compiled-kernel line (CUDA as the loaded `_C` says, a build record that disagrees named).

Loading behaviour is tested in fresh interpreters (subprocesses): it happens once, at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import _loader

HAS_C = _loader._C is not None
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with the package importable; returns the finished process."""
    full_env = dict(os.environ, PYTHONWARNINGS="default", **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
    )


def test_list_ops_and_get_op():
    names = sk.list_ops()
    for name in ("build_tree", "select_tree", "tree_attention", "compact_kv", "verify_greedy", "verify_sample"):
        assert name in names
        op = sk.get_op(name)
        assert isinstance(op, sk.KernelOp) and op.name == name
        assert op.backends[-1] == "torch"  # every op has its reference
        assert set(op.backends) <= set(sk.BACKENDS)
    with pytest.raises(KeyError, match="no op named 'nope'.*registered ops"):
        sk.get_op("nope")


def test_choice_reasons_and_errors():
    op = sk.get_op("build_tree")
    parents = torch.tensor([[-1, 0, 0]], dtype=torch.int32)
    out = sk.Tree.empty(1, 3)
    args = (parents, torch.full((1,), 3, dtype=torch.int32), *out)
    assert op.reason("torch", *args) is None
    assert "cuda tensors" in op.reason("cuda", *args)
    assert op.choose(*args) == ("cpu" if HAS_C else "torch")
    assert op.choose(*args, backend="torch") == "torch"
    assert "cuda" in op.reasons(*args)
    with pytest.raises(sk.BackendError, match="'cuda' cannot run these inputs"):
        op.choose(*args, backend="cuda")
    with pytest.raises(sk.BackendError, match="unknown backend 'gpu'"):
        op.choose(*args, backend="gpu")


def test_specdec_backend_env_applies_to_choice_and_info(monkeypatch):
    from specdec_kernels.info import report

    monkeypatch.setenv("SPECDEC_BACKEND", "torch")
    op = sk.get_op("tree_attention")
    assert op.default_backend("cpu") == "torch"
    text = report()
    assert "SPECDEC_BACKEND=torch" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("specdec::tree_attention "))
    assert line.rstrip().endswith("torch / torch"), line
    monkeypatch.setenv("SPECDEC_BACKEND", "nonsense")
    with pytest.raises(sk.BackendError, match="SPECDEC_BACKEND='nonsense' is not one of"):
        op.default_backend("cpu")


RECORD_CUDA = {"extension": True, "cpu": True, "cuda": True, "cuda_archs": "8.0;9.0+PTX", "reason": ""}
RECORD_CPU = dict(RECORD_CUDA, cuda=False, cuda_archs="", reason="SPECDEC_NO_CUDA=1: CUDA kernels skipped")
RECORD_NONE = dict(RECORD_CPU, extension=False, cpu=False, reason="SPECDEC_NO_EXTENSION=1: pure-Python install")
DISAGREES = "  build record disagrees: specdec_kernels/_build_info.py says "


@pytest.mark.parametrize(
    "with_cuda, record, lines",
    [
        (True, RECORD_CUDA, ["compiled kernels: CPU yes; CUDA yes, for TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX"]),
        (False, RECORD_CPU, ["compiled kernels: CPU yes; CUDA no (SPECDEC_NO_CUDA=1: CUDA kernels skipped)"]),
        # _C and the record from different builds: what _C says, and a line naming the disagreement
        (
            False,
            RECORD_CUDA,
            [
                "compiled kernels: CPU yes; CUDA no",
                DISAGREES + "CUDA yes, the loaded _C has CUDA no (rebuild: bash scripts/build.sh)",
            ],
        ),
        (
            True,
            RECORD_CPU,
            [
                "compiled kernels: CPU yes; CUDA yes",
                DISAGREES + "CUDA no (SPECDEC_NO_CUDA=1: CUDA kernels skipped), the loaded _C has CUDA yes "
                "(rebuild: bash scripts/build.sh)",
            ],
        ),
        (
            False,
            RECORD_NONE,
            [
                "compiled kernels: CPU yes; CUDA no",
                DISAGREES + "no extension was built (SPECDEC_NO_EXTENSION=1: pure-Python install), the loaded _C "
                "has CUDA no (rebuild: bash scripts/build.sh)",
            ],
        ),
        (
            True,
            {},
            ["compiled kernels: CPU yes; CUDA yes (no build record: specdec_kernels/_build_info.py is missing)"],
        ),
        (None, RECORD_CUDA, ["compiled kernels: not loaded (not built)"]),
    ],
)
def test_info_takes_cuda_from_the_loaded_extension(with_cuda, record, lines):
    from specdec_kernels.info import compiled_kernels_lines

    assert compiled_kernels_lines(with_cuda, record, "not built") == lines


def test_info_report_shows_a_build_record_that_disagrees(monkeypatch):
    """The report reads _C's own with_cuda, not the record's: a CPU-only _C beside a record of a CUDA build
    (setup.py rewrote the record, or _C came from elsewhere) reports CUDA no, and says so."""
    from types import SimpleNamespace

    from specdec_kernels.info import report

    monkeypatch.setattr(_loader, "_C", SimpleNamespace(with_cuda=0, with_cpu=1))
    monkeypatch.setattr(_loader, "build_info", lambda: dict(RECORD_CUDA))
    lines = report().splitlines()
    assert "compiled kernels: CPU yes; CUDA no" in lines
    assert DISAGREES + "CUDA yes, the loaded _C has CUDA no (rebuild: bash scripts/build.sh)" in lines


def test_version_comes_from_the_distribution():
    try:
        want = metadata.version("specdec-kernels")
    except metadata.PackageNotFoundError:
        want = "0+unknown"
    assert sk.__version__ == want


def test_missing_extension_warns_once_and_falls_back():
    # None in sys.modules makes `import specdec_kernels._C` fail as if the file were missing.
    proc = run_python("""
        import sys, warnings
        sys.modules["specdec_kernels._C"] = None
        warnings.simplefilter("always")
        import torch, specdec_kernels as sk
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                tree = sk.build_tree(torch.tensor([[-1, 0]], dtype=torch.int32))
                sk.tree_paths(torch.tensor([[-1, 0]], dtype=torch.int32))
        ours = [w for w in caught if issubclass(w.category, sk.ExtensionFallbackWarning)]
        print("warnings", len(ours))
        print(ours[0].message)
        print("depth", tree.depth.tolist())
    """)
    assert proc.returncode == 0, proc.stderr
    assert "warnings 1" in proc.stdout
    assert "specdec_kernels._C could not be loaded" in proc.stdout and "scripts/build.sh" in proc.stdout
    assert "depth [[0, 1]]" in proc.stdout


def test_no_extension_env_skips_loading_silently():
    proc = run_python(
        """
        import warnings
        import torch, specdec_kernels as sk
        from specdec_kernels import _loader
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sk.build_tree(torch.tensor([[-1, 0]], dtype=torch.int32))
        print("loaded", _loader._C is not None)
        print("warned", any(issubclass(w.category, sk.ExtensionFallbackWarning) for w in caught))
        print("chosen", sk.get_op("build_tree").default_backend("cpu"))
    """,
        SPECDEC_NO_EXTENSION="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded False" in proc.stdout and "warned False" in proc.stdout and "chosen torch" in proc.stdout


def test_broken_triton_module_disables_only_itself():
    pytest.importorskip("triton")
    proc = run_python(
        """
        import sys
        sys.modules["specdec_kernels.triton_kernels.compact"] = None   # its import now fails
        import torch, specdec_kernels as sk
        from specdec_kernels import triton_kernels
        from specdec_kernels.info import report
        print("errors", sorted(triton_kernels.MODULE_ERRORS))
        print("compact", sk.get_op("compact_kv").static_reason("triton", "cpu"))
        print("tree", sk.get_op("build_tree").static_reason("triton", "cpu"))
        print(report())
    """,
        TRITON_INTERPRET="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "errors ['compact']" in proc.stdout
    assert "compact specdec_kernels.triton_kernels.compact failed to import" in proc.stdout
    assert "tree None" in proc.stdout
    assert "triton_kernels.compact disabled" in proc.stdout
