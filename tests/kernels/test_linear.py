"""linear: every instruction-set path of the C++ kernel this CPU runs (each forced in turn, the portable one
too) and the torch backend, against an fp64 truth with flash-attention's rule (helpers.assert_close_as_torch):
M = 1..64 and beyond, odd K and N (not multiples of any vector width), bias or not, strided inputs and
outputs, leading dimensions, every dtype, out= buffers; a weight row's output bits independent of where
the row sits in the weight (what stacking linears relies on); clear errors for bad input; opcheck."""

import os
import subprocess
import sys

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import BackendError
from specdec_kernels.ops import linear as lin
from specdec_kernels.ops import linear_choice

from helpers import assert_close_as_torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ISAS = lin.linear_isas()
# (backend, isa): the C++ kernel once per path this CPU runs, and the torch backend.
PATHS = [pytest.param("cpu", isa, id=f"cpu-{isa}") for isa in ISAS] + [pytest.param("torch", None, id="torch")]
NEEDS_C = pytest.mark.skipif(not ISAS, reason="specdec_kernels._C (the C++ linear kernel) is not loaded")


def run_linear(backend, isa, *args, **kwargs):
    """sk.linear on `backend`, with the C++ kernel forced onto path `isa`."""
    if isa is None:
        return sk.linear(*args, backend=backend, **kwargs)
    with lin.forced_linear_isa(isa):
        return sk.linear(*args, backend=backend, **kwargs)


def check_against_truth(out, x, w, b, what):
    """out against x @ w^T + b in fp64, within twice torch's own error in out's dtype."""
    truth = x.double() @ w.double().t()
    if b is not None:
        truth = truth + b.double()
    twin = torch.nn.functional.linear(x, w, b)
    assert out.shape == truth.shape, f"{what}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert out.dtype == x.dtype, f"{what}: dtype {out.dtype} != {x.dtype}"
    assert_close_as_torch(out, truth, twin, what)


def rand(*shape, dtype, gen):
    return torch.randn(*shape, generator=gen).to(dtype)


@pytest.mark.parametrize("backend,isa", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_m_up_to_64(backend, isa, dtype):
    """Every M = 1..64 (every split into register tiles) at odd K and N, with and without bias."""
    gen = torch.Generator().manual_seed(0)
    N, K = 37, 83
    w, b = rand(N, K, dtype=dtype, gen=gen), rand(N, dtype=dtype, gen=gen)
    for M in range(1, 65):
        x = rand(M, K, dtype=dtype, gen=gen)
        bias = b if M % 2 else None
        check_against_truth(run_linear(backend, isa, x, w, bias), x, w, bias, f"M={M} bias={bias is not None}")


@pytest.mark.parametrize("backend,isa", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K", [(1, 1), (5, 3), (13, 47), (4, 576), (3, 100), (25, 64), (11, 31), (7, 577)])
@pytest.mark.parametrize("M", [1, 2, 7, 65, 130])
def test_shapes(backend, isa, dtype, N, K, M):
    """Odd shapes around the vector widths (8, 16, 32 elements), the tile sizes, and M over one 64-row block."""
    gen = torch.Generator().manual_seed(M * 1000 + N * 10 + K)
    x, w, b = rand(M, K, dtype=dtype, gen=gen), rand(N, K, dtype=dtype, gen=gen), rand(N, dtype=dtype, gen=gen)
    check_against_truth(run_linear(backend, isa, x, w, b), x, w, b, f"M={M} N={N} K={K}")


@pytest.mark.parametrize("backend,isa", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs_and_outputs(backend, isa, dtype):
    """x transposed or sliced, weight with a row stride or transposed (copied), strided bias, strided out=."""
    gen = torch.Generator().manual_seed(1)
    M, N, K = 9, 21, 45
    xs = {
        "contiguous": rand(M, K, dtype=dtype, gen=gen),
        "transposed": rand(K, M, dtype=dtype, gen=gen).t(),
        "every other column": rand(M, 2 * K, dtype=dtype, gen=gen)[:, ::2],
        "row stride": rand(M, K + 7, dtype=dtype, gen=gen)[:, 3 : 3 + K],
    }
    ws = {
        "contiguous": rand(N, K, dtype=dtype, gen=gen),
        "row stride": rand(N, K + 5, dtype=dtype, gen=gen)[:, :K],
        "transposed": rand(K, N, dtype=dtype, gen=gen).t(),
    }
    b = rand(2 * N, dtype=dtype, gen=gen)[::2]
    for xn, x in xs.items():
        for wn, w in ws.items():
            out = torch.full((N, M), float("nan"), dtype=dtype).t()  # column-major [M, N]
            got = run_linear(backend, isa, x, w, b, out=out)
            assert got is out
            check_against_truth(out, x, w, b, f"x {xn}, weight {wn}, out transposed")


@pytest.mark.parametrize("backend,isa", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_dims_and_out(backend, isa, dtype):
    """x [..., K] -> [..., N]: 1-D, 3-D (a view), a 3-D x whose leading dims do not flatten (a copy), an out=
    whose leading dims do not flatten either (computed beside it, then copied)."""
    gen = torch.Generator().manual_seed(2)
    N, K = 19, 40
    w, b = rand(N, K, dtype=dtype, gen=gen), rand(N, dtype=dtype, gen=gen)
    x1 = rand(K, dtype=dtype, gen=gen)
    out1 = run_linear(backend, isa, x1, w, b)
    assert out1.shape == (N,)
    check_against_truth(out1[None], x1[None], w, b, "1-D x")
    x3 = rand(2, 3, K, dtype=dtype, gen=gen)
    out3 = run_linear(backend, isa, x3, w, None)
    assert out3.shape == (2, 3, N)
    check_against_truth(out3.reshape(6, N), x3.reshape(6, K), w, None, "3-D x")
    x3t = rand(3, 2, K, dtype=dtype, gen=gen).transpose(0, 1)  # [2, 3, K] that does not view as [6, K]
    out3t = torch.empty(3, 2, N, dtype=dtype).transpose(0, 1)  # and an out that does not view as [6, N]
    assert run_linear(backend, isa, x3t, w, b, out=out3t) is out3t
    check_against_truth(out3t.reshape(6, N), x3t.reshape(6, K), w, b, "3-D x and out, not flattenable")


@pytest.mark.parametrize("backend,isa", PATHS)
def test_empty_dimensions(backend, isa):
    """M = 0 and N = 0 give empty results; K = 0 gives the bias (or zeros), as torch's linear does."""
    w, b = torch.randn(4, 0), torch.randn(4)
    assert torch.equal(run_linear(backend, isa, torch.randn(3, 0), w, b), b.expand(3, 4))
    assert torch.equal(run_linear(backend, isa, torch.randn(3, 0), w), torch.zeros(3, 4))
    assert run_linear(backend, isa, torch.randn(0, 5), torch.randn(4, 5)).shape == (0, 4)
    assert run_linear(backend, isa, torch.randn(2, 5), torch.randn(0, 5)).shape == (2, 0)


@NEEDS_C
@pytest.mark.parametrize("dtype", DTYPES)
def test_paths_agree_and_threads_do_not_change_results(dtype):
    """Each path gives results within its tolerance; with one or two threads a path's results are identical
    (every output is summed by one thread in one order)."""
    gen = torch.Generator().manual_seed(3)
    x, w = rand(13, 200, dtype=dtype, gen=gen), rand(1000, 200, dtype=dtype, gen=gen)
    b = rand(1000, dtype=dtype, gen=gen)
    threads = torch.get_num_threads()
    try:
        for isa in ISAS:
            torch.set_num_threads(1)
            one = run_linear("cpu", isa, x, w, b)
            torch.set_num_threads(2)
            two = run_linear("cpu", isa, x, w, b)
            assert torch.equal(one, two), f"{isa}: one and two threads differ"
            check_against_truth(two, x, w, b, isa)
    finally:
        torch.set_num_threads(threads)


@NEEDS_C
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_weight_row_gives_the_same_bits_anywhere_in_the_weight(dtype):
    """What specdec.target.kernel_linears.KernelLinearGroup relies on: linears stacked row-wise into one weight
    give bitwise the outputs of their separate calls, on every path, whatever the row's tile or thread chunk
    (odd N and K, M across the register-tile sizes, biases, one and two threads)."""
    gen = torch.Generator().manual_seed(11)
    threads = torch.get_num_threads()
    try:
        for isa in ISAS:
            for M, K, Ns in ((1, 576, (576, 192, 192)), (3, 37, (5, 7, 2)), (4, 100, (1, 1000)), (9, 64, (11, 13))):
                x = rand(M, K, dtype=dtype, gen=gen)
                ws = [rand(N, K, dtype=dtype, gen=gen) for N in Ns]
                bs = [rand(N, dtype=dtype, gen=gen) for N in Ns]
                for t in (1, 2):
                    torch.set_num_threads(t)
                    fused = run_linear("cpu", isa, x, torch.cat(ws), torch.cat(bs)).split(Ns, dim=-1)
                    for i, (w, b) in enumerate(zip(ws, bs)):
                        alone = run_linear("cpu", isa, x, w, b)
                        assert torch.equal(fused[i], alone), f"{isa} M={M} K={K} N={Ns} part {i}, {t} thread(s)"
    finally:
        torch.set_num_threads(threads)


def test_errors():
    w = torch.randn(6, 8)
    with pytest.raises(TypeError, match=r"x: expected weight's dtype torch.float32, got torch.bfloat16"):
        sk.linear(torch.randn(2, 8, dtype=torch.bfloat16), w)
    with pytest.raises(ValueError, match=r"x: expected shape \[..., K\] with K = 8 .*got \(2, 7\)"):
        sk.linear(torch.randn(2, 7), w)
    with pytest.raises(TypeError, match="bias: expected dtype torch.float32, got torch.float16"):
        sk.linear(torch.randn(2, 8), w, torch.randn(6, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"bias: expected shape \[6\], got \(5,\)"):
        sk.linear(torch.randn(2, 8), w, torch.randn(5))
    with pytest.raises(ValueError, match=r"out: expected shape \[2, 3, 6\], got \(2, 4, 6\)"):
        sk.linear(torch.randn(2, 3, 8), w, out=torch.empty(2, 4, 6))
    with pytest.raises(TypeError, match="out: expected dtype torch.float32, got torch.float64"):
        sk.linear(torch.randn(2, 8), w, out=torch.empty(2, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight: expected dtype in"):
        sk.linear(torch.randn(2, 8).long(), w.long())
    with pytest.raises(ValueError, match="weight: expected 2 dimensions"):
        sk.linear(torch.randn(2, 8), w[None])
    with pytest.raises(TypeError, match="x: expected a torch.Tensor, got list"):
        sk.linear([[1.0] * 8], w)
    with pytest.raises(ValueError, match="all tensors must be on one device, got x on cpu, weight on meta"):
        sk.linear(torch.randn(2, 8), w.to("meta"))
    with pytest.raises(BackendError, match="CUDA tensors run the torch backend.*cuBLAS"):
        sk.linear(torch.randn(2, 8), w, backend="cuda")


@NEEDS_C
def test_kernel_errors_and_isa_choice(monkeypatch):
    """The C++ kernel's own checks, the registry's reasons, and forcing paths."""
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "cpu")
    x, w, out = torch.randn(2, 8), torch.randn(6, 8), torch.empty(2, 6)
    with pytest.raises(RuntimeError, match="weight must have unit stride along K"):
        torch.ops.specdec.linear(x, torch.randn(8, 6).t(), None, out)
    with pytest.raises(RuntimeError, match="must share one dtype"):
        torch.ops.specdec.linear(x, w.half(), None, out)
    with pytest.raises(RuntimeError, match=r"out must be \[M, N\] = \[2, 6\]"):
        torch.ops.specdec.linear(x, w, None, torch.empty(2, 5))
    op = sk.get_op("linear")
    assert op.backends == ("cpu", "torch")
    assert "cuBLAS" in op.reason("cuda", x, w, None, out) and "cuBLAS" in op.reason("triton", x, w, None, out)
    assert op.choose(x, w, None, out) == "cpu"
    before = lin.linear_isa()
    assert before == ISAS[-1]  # the best path this CPU runs
    with pytest.raises(ValueError, match="unknown linear kernel path 'sse9'"):
        lin.set_linear_isa("sse9")
    with lin.forced_linear_isa("portable"):
        assert lin.linear_isa() == "portable"
    assert lin.linear_isa() == before


@NEEDS_C
def test_env_forces_a_path_and_info_shows_it():
    env = dict(os.environ, SPECDEC_LINEAR_ISA="portable")
    code = "from specdec_kernels import info; print(info.report())"
    report = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "linear CPU kernel: portable path (this CPU runs portable" in report
    assert "SPECDEC_LINEAR_ISA=portable" in report


@NEEDS_C
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck(dtype, with_bias):
    gen = torch.Generator().manual_seed(4)
    x, w = rand(5, 33, dtype=dtype, gen=gen), rand(7, 33, dtype=dtype, gen=gen)
    b = rand(7, dtype=dtype, gen=gen) if with_bias else None
    torch.library.opcheck(torch.ops.specdec.linear.default, (x, w, b, torch.empty(5, 7, dtype=dtype)))


@NEEDS_C
def test_automatic_choice_is_measured_once_and_cached(monkeypatch, tmp_path):
    """backend=None on CPU tensors takes the kernel only where it was measured faster than torch (per dtype,
    cached in $SPECDEC_HOME/linear_choice.json); the registry says why it passes the kernel over; backend=
    and SPECDEC_LINEAR_CHOICE win."""
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    monkeypatch.delenv("SPECDEC_LINEAR_CHOICE", raising=False)
    monkeypatch.setattr(linear_choice, "_MEMO", {})
    op = sk.get_op("linear")
    x, w, out = torch.randn(2, 8), torch.randn(6, 8), torch.empty(2, 6)
    first = linear_choice.faster_backend(torch.float32)
    assert first["backend"] in ("cpu", "torch") and len(first["kernel_ms"]) == len(linear_choice.ROWS)
    assert (tmp_path / "linear_choice.json").exists()
    monkeypatch.setattr(linear_choice, "measure", lambda dtype: pytest.fail("measured again"))
    monkeypatch.setattr(linear_choice, "_MEMO", {})  # a new process: read from the file
    assert linear_choice.faster_backend(torch.float32) == first
    assert op.choose(x, w, None, out) == first["backend"]
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "torch")
    assert op.choose(x, w, None, out) == "torch"
    assert op.passed_over("cpu", x, w, None, out) == "SPECDEC_LINEAR_CHOICE=torch"
    assert op.choose(x, w, None, out, backend="cpu") == "cpu"
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "cpu")
    assert op.choose(x, w, None, out) == "cpu" and op.passed_over("cpu", x, w, None, out) is None
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "fast")
    with pytest.raises(ValueError, match="SPECDEC_LINEAR_CHOICE: expected cpu or torch, got 'fast'"):
        op.choose(x, w, None, out)


@pytest.fixture
def restore_small_products():
    """Put the process-wide small-product rows back as they were (other tests run the feature kernels)."""
    saved, routed = {d: lin.small_product_rows(d) for d in DTYPES}, set(lin._ROUTED)
    yield
    for d, rows in saved.items():
        lin.set_small_product_rows(d, rows)
    lin._ROUTED.clear()
    lin._ROUTED.update(routed)


@pytest.mark.parametrize(
    "kernel_ms,torch_ms,rows",
    [
        ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], 16),  # faster at every measured M
        ([1.0, 1.0, 3.0], [2.0, 2.0, 2.0], 4),  # slower from M = 16
        ([1.0, 3.0, 1.0], [2.0, 2.0, 2.0], 1),  # a win after a loss does not count
        ([3.0, 1.0, 1.0], [2.0, 2.0, 2.0], 0),  # slower at one row: never
    ],
)
def test_kernel_rows_from_the_measurement(monkeypatch, kernel_ms, torch_ms, rows):
    monkeypatch.delenv("SPECDEC_LINEAR_CHOICE", raising=False)
    fake = {"backend": "cpu", "rows": [1, 4, 16], "kernel_ms": kernel_ms, "torch_ms": torch_ms}
    monkeypatch.setattr(linear_choice, "faster_backend", lambda dtype: fake)
    assert linear_choice.kernel_rows(torch.bfloat16) == rows


def test_kernel_rows_forced(monkeypatch):
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "cpu")
    assert linear_choice.kernel_rows(torch.float16) == max(linear_choice.ROWS)
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "torch")
    assert linear_choice.kernel_rows(torch.float16) == 0


@NEEDS_C
def test_small_product_rows_routing(monkeypatch, restore_small_products):
    """route_small_products sets the rows from the measurement once per dtype and never overrides a value set
    by hand; bad dtypes and rows fail with what was expected."""
    lin._ROUTED.clear()
    monkeypatch.setattr(linear_choice, "kernel_rows", lambda dtype: {torch.bfloat16: 4, torch.float32: 0}[dtype])
    assert lin.route_small_products(torch.bfloat16) == 4 == lin.small_product_rows(torch.bfloat16)
    monkeypatch.setattr(linear_choice, "kernel_rows", lambda dtype: pytest.fail("measured again"))
    assert lin.route_small_products(torch.bfloat16) == 4
    before = lin.small_product_rows(torch.float16)
    assert lin.set_small_product_rows(torch.float16, 9) == before  # returns the previous value
    assert lin.route_small_products(torch.float16) == 9  # set by hand: kept
    assert lin.route_small_products(torch.float64) == 0 == lin.small_product_rows(torch.float64)
    with pytest.raises(ValueError, match="expected float32, float16 or bfloat16, got torch.float64"):
        lin.set_small_product_rows(torch.float64, 4)
    with pytest.raises(ValueError, match="rows must be >= 0, got -1"):
        lin.set_small_product_rows(torch.float32, -1)
    before = lin.small_product_rows(torch.float32)  # earlier tests may have routed fp32 already
    assert lin.set_small_product_rows(torch.float32, 0) == before and lin.small_product_rows(torch.float32) == 0


@NEEDS_C
def test_measurements_are_keyed_on_the_kernels_build(monkeypatch):
    """A rebuilt kernel (other CPU sources) is measured again: the build's source hash is in linear_kernel_id
    and in linear_choice's cache key."""
    from specdec_kernels import _loader

    kid, key = linear_choice.linear_kernel_id(), linear_choice.cpu_key()
    assert kid.startswith(lin.linear_isa() + "@") and kid.split("@")[1] != "" and kid in key
    monkeypatch.setattr(_loader, "build_info", lambda: {"cpu_sources": "0123456789ab"})
    assert linear_choice.linear_kernel_id() == lin.linear_isa() + "@0123456789ab"
    assert linear_choice.cpu_key() != key
