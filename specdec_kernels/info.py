"""`python -m specdec_kernels.info`: versions, what was built, and the backend each op uses here."""
from __future__ import annotations

import platform

import torch

import specdec_kernels as sk
from specdec_kernels import _backend, _loader, triton_kernels


def _probe_cases(device: torch.device) -> dict:
    """Small representative inputs per op, to ask each op which backend it would choose."""
    from .ops import tree as tree_ops

    i32 = dict(dtype=torch.int32, device=device)
    B, N, M = 2, 8, 16
    parents = torch.zeros(B, N, **i32)
    num = torch.full((B,), N, **i32)
    out = tree_ops.empty_tree(B, N, device)
    cases = {
        "build_tree": (tree_ops._BUILD_TREE, (parents, num, *out)),
        "select_tree": (tree_ops._SELECT_TREE, (
            torch.zeros(B, M, dtype=torch.float32, device=device), torch.zeros(B, M, **i32),
            torch.zeros(B, M, dtype=torch.int64, device=device), torch.zeros(B, dtype=torch.int64, device=device),
            torch.zeros(B, N, **i32), torch.zeros(B, N, dtype=torch.int64, device=device), torch.zeros(B, N, **i32))),
    }
    return cases


def report() -> str:
    lines = []
    add = lines.append
    add(f"specdec_kernels {sk.__version__}")
    add(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_triton_version()}")
    add(f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    info = _loader.build_info()
    if _loader._C is None:
        add(f"compiled kernels: not loaded ({_loader.LOAD_ERROR or 'not built'})")
    else:
        add(f"compiled kernels: CPU yes; CUDA {'yes, for ' + info.get('cuda_archs', '?') if _loader._C.with_cuda else 'no'}"
            + (f" ({info['reason']})" if info.get("reason") else ""))
    add(f"triton kernels: {'loaded' if triton_kernels.LOAD_ERROR is None else triton_kernels.LOAD_ERROR}"
        + (" (TRITON_INTERPRET=1: interpreted on the CPU)" if _backend.triton_interpreted() else ""))
    add("")
    add(f"{'op':<20} {'CPU kernel':<11} {'CUDA kernel':<12} {'triton':<7} backend on cpu / cuda")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    choices = {d.type: {} for d in devices}
    for d in devices:
        for name, (op, args) in _probe_cases(d).items():
            try:
                choices[d.type][name] = op.choose(None, *args)
            except _backend.BackendError as exc:
                choices[d.type][name] = f"none ({exc})"
    for name, (op, _) in _probe_cases(torch.device("cpu")).items():
        cpu_k = "yes" if _backend.has_compiled_kernel(name, "CPU") else "no"
        cuda_k = "yes" if _backend.has_compiled_kernel(name, "CUDA") else "no"
        tri = "yes" if torch._C._dispatch_has_kernel_for_dispatch_key(f"specdec::{name}_triton", "CUDA") else "no"
        on_cuda = choices.get("cuda", {}).get(name, "(no GPU)")
        add(f"specdec::{name:<11} {cpu_k:<11} {cuda_k:<12} {tri:<7} {choices['cpu'][name]} / {on_cuda}")
    return "\n".join(lines)


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except Exception:
        return "not installed"


if __name__ == "__main__":
    print(report())
