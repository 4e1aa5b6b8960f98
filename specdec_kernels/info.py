"""`python -m specdec_kernels.info`: versions, what was built, and the backend each op uses here."""

from __future__ import annotations

import os
import platform
from typing import Optional

import torch

import specdec_kernels as sk
from specdec_kernels import _backend, _loader, triton_kernels

# Where setup.py records what it built (specdec_kernels._loader.build_info reads it).
_RECORD = "specdec_kernels/_build_info.py"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "not installed"


def compiled_kernels_lines(with_cuda: Optional[bool], build: dict, load_error: str = "") -> list:
    """The report's lines on specdec_kernels._C: `with_cuda` is the loaded extension's own flag (None when
    it is not loaded), `build` the record setup.py wrote (BUILD_INFO, {} when missing).

    Whether CUDA is compiled in comes from the extension: the record is written by every setup.py run, even
    one that builds nothing or fails, and _C can be copied from another build, so the two can disagree. The
    record then only adds what _C cannot say (CUDA architectures, why CUDA was skipped) where it agrees,
    and a second line says that it does not.
    """
    if with_cuda is None:
        return [f"compiled kernels: not loaded ({load_error})"]
    if not build:
        return [f"compiled kernels: CPU yes; CUDA {_yes(with_cuda)} (no build record: {_RECORD} is missing)"]
    recorded = bool(build.get("extension")) and bool(build.get("cuda"))
    reason = f" ({build['reason']})" if build.get("reason") else ""
    if recorded != with_cuda or not build.get("extension"):
        what = (f"CUDA {_yes(recorded)}" if build.get("extension") else "no extension was built") + reason
        return [
            f"compiled kernels: CPU yes; CUDA {_yes(with_cuda)}",
            f"  build record disagrees: {_RECORD} says {what}, the loaded _C has CUDA {_yes(with_cuda)} "
            "(rebuild: bash scripts/build.sh)",
        ]
    cuda = f"yes, for TORCH_CUDA_ARCH_LIST={build.get('cuda_archs') or '?'}" if with_cuda else "no"
    return [f"compiled kernels: CPU yes; CUDA {cuda}{reason}"]


def _linear_isa_line() -> str:
    """Which instruction-set path the C++ linear kernel runs, among those this CPU can run."""
    from specdec_kernels.ops import linear

    isas = linear.linear_isas()
    if not isas:
        return "linear CPU kernel: not loaded"
    forced = os.environ.get("SPECDEC_LINEAR_ISA")
    how = f"SPECDEC_LINEAR_ISA={forced}" if forced else "chosen by cpuid; SPECDEC_LINEAR_ISA=<path> forces one"
    line = f"linear CPU kernel: {linear.linear_isa()} path (this CPU runs {', '.join(isas)}; {how})"
    from specdec_kernels.ops import linear_choice

    picks = []
    for dtype in (torch.bfloat16, torch.float32):
        r = linear_choice.faster_backend(dtype)
        ratio = f", kernel / torch time {r['kernel_over_torch']}x" if "kernel_over_torch" in r else ", forced"
        rows = f"; feature blocks' products of <= {linear_choice.kernel_rows(dtype)} rows on the kernel"
        picks.append(f"{str(dtype).replace('torch.', '')} -> {r['backend']}{ratio}{rows}")
    return line + "\n  automatic choice for CPU tensors (measured once, cached): " + "; ".join(picks)


def report() -> str:
    """The text printed by `python -m specdec_kernels.info`."""
    lines = []
    add = lines.append
    add(f"specdec_kernels {sk.__version__}")
    add(
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_triton_version()}"
    )
    add(f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    with_cuda = None if _loader._C is None else bool(_loader._C.with_cuda)
    lines += compiled_kernels_lines(with_cuda, _loader.build_info(), _loader.load_error())
    add(
        f"triton kernels: {'loaded' if triton_kernels.LOAD_ERROR is None else triton_kernels.LOAD_ERROR}"
        + (" (TRITON_INTERPRET=1: interpreted on the CPU)" if _backend.triton_interpreted() else "")
    )
    for module, err in triton_kernels.MODULE_ERRORS.items():
        add(f"  triton_kernels.{module} disabled: {err}")
    add(_linear_isa_line())
    env = os.environ.get("SPECDEC_BACKEND")
    if env:
        add(f"SPECDEC_BACKEND={env}: used by every op that implements it")
    add("")
    add(f"{'op (kernel schema)':<26} {'C++ CPU':<8} {'CUDA':<5} {'Triton':<7} backend chosen for cpu / cuda tensors")
    for name in sk.list_ops():
        op = sk.get_op(name)
        cpu_k = _backend.has_compiled_kernel(name, "CPU")
        cuda_k = _backend.has_compiled_kernel(name, "CUDA")
        tri = _backend.has_kernel(f"{name}_triton", "CUDA")
        on_cuda = op.default_backend(torch.device("cuda"))
        add(
            f"specdec::{name:<17} {_yes(cpu_k):<8} {_yes(cuda_k):<5} {_yes(tri):<7} "
            f"{op.default_backend(torch.device('cpu'))} / {on_cuda}"
        )
    add("(on cuda tensors: what a GPU machine with this build would use; limits per backend")
    add(" such as N <= 1024 tree nodes for the CUDA/Triton tree kernels are in each op's docs)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
