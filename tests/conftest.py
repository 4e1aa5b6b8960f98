"""Shared test setup: Triton runs under its interpreter without a GPU; `cuda` tests skip without one; the
tests never write into the user's $SPECDEC_HOME (see _private_specdec_home)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

import pytest

import specdec_kernels  # noqa: F401


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# The user's specdec home as it was before any test ran (tests read the fetched default target, downloaded
# wheels and benchmark files from there).
_REAL_HOME = os.path.abspath(  # absolute: the session home's links to it must resolve from another folder
    os.path.expanduser(os.environ.get("SPECDEC_HOME") or os.path.join("~", ".cache", "specdec"))
)


@pytest.fixture(scope="session")
def _session_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("specdec_home")
    for name in ("targets", "downloads", "benchmarks"):  # read-only use; tests that fetch set their own home
        real = os.path.join(_REAL_HOME, name)
        if os.path.isdir(real):
            os.symlink(real, home / name)
    return home


@pytest.fixture(autouse=True)
def _private_specdec_home(_session_home, monkeypatch):
    """$SPECDEC_HOME of every test: a session folder that sees the user's fetched files but keeps what tests
    write (the tree budget's measured costs of tiny models, verify_cost.json) out of the user's cache, where
    they would sit beside the real measurements. A test may set its own SPECDEC_HOME on top."""
    monkeypatch.setenv("SPECDEC_HOME", str(_session_home))
    # --dtype auto on a CPU picks by measurement, which differs between machines; the tests' expectations
    # (fp32 tolerances, exact agreement with model.generate) take fp32, the CPU default before auto existed.
    # tests/system/test_machine_dtype.py removes it to test the measurement.
    monkeypatch.setenv("SPECDEC_CPU_DTYPE", "float32")


@pytest.fixture
def recorded_passes(monkeypatch):
    """cuda_graph=True emulated on the CPU, for the tests of generate and of the tree budget's graph costs:
    a pass is recorded once with torch.fx's make_fx in "real" mode (like a CUDA graph capture it runs the
    pass's Python once and keeps only the tensor ops, bound to the same buffers) and the recording is
    replayed for every later pass. Unlike a capture, recording also executes that pass, so a decode run
    counts one pass fewer than the eager loop. Returns the list of recordings' node counts."""
    import importlib

    from torch.fx.experimental.proxy_tensor import make_fx

    mod = importlib.import_module("specdec.decoding.cuda_graphs")
    captures = []

    def capture(one_pass, dev, generator):
        import transformers.masking_utils as masks

        # transformers skips its data-dependent mask shortcuts while a CUDA stream is capturing; tell it
        # that the recording is such a capture (it only recognises torch.fx proxies, not make_fx's tensors)
        # and our ops' CPU-only exact checks of token ids read host memory, which on CUDA tensors they leave
        # to an asynchronous device assertion (as under torch.compile)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(masks, "is_tracing", lambda *a, **k: True)
            mp.setattr(torch.compiler, "is_compiling", lambda: True)
            recording = make_fx(lambda: one_pass(), tracing_mode="real")()
        # a host read inside the pass would be recorded with its value baked in (a capture would fail on it)
        reads = [n for n in recording.graph.nodes if n.op == "call_function" and "_local_scalar_dense" in str(n.target)]
        assert not reads, f"the recorded pass reads tensor values on the host: {reads}"
        captures.append(len(recording.graph.nodes))
        return recording

    monkeypatch.setattr(mod, "check_cuda_graph", lambda cuda_graph, device: None)
    monkeypatch.setattr(mod, "warmup_pass", lambda one_pass, dev: one_pass())
    monkeypatch.setattr(mod, "capture_pass", capture)
    return captures


@pytest.fixture
def force_kernel(monkeypatch):
    """specdec's C++ linear kernel for every eligible layer, whichever is faster here ($SPECDEC_LINEAR_CHOICE)."""
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "cpu")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the C++ op made through specdec.target.kernel_linears: the rows of each call."""
    from specdec.target import kernel_linears as kl

    calls = []
    real = kl._kernel()

    def counting(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(kl, "_kernel", lambda: counting)
    return calls
