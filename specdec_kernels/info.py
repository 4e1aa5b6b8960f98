"""`python -m specdec_kernels.info`: versions, what was built, and the backend each op uses here."""

from __future__ import annotations

import os
import platform

import torch

import specdec_kernels as sk
from specdec_kernels import _backend, _loader, triton_kernels


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "not installed"


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
    info = _loader.build_info()
    if _loader._C is None:
        add(f"compiled kernels: not loaded ({_loader.load_error()})")
    else:
        cuda = f"yes, for TORCH_CUDA_ARCH_LIST={info.get('cuda_archs', '?')}" if _loader._C.with_cuda else "no"
        add(f"compiled kernels: CPU yes; CUDA {cuda}" + (f" ({info['reason']})" if info.get("reason") else ""))
    add(
        f"triton kernels: {'loaded' if triton_kernels.LOAD_ERROR is None else triton_kernels.LOAD_ERROR}"
        + (" (TRITON_INTERPRET=1: interpreted on the CPU)" if _backend.triton_interpreted() else "")
    )
    for module, err in triton_kernels.MODULE_ERRORS.items():
        add(f"  triton_kernels.{module} disabled: {err}")
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
