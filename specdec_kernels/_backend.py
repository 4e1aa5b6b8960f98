"""Backend choice, the same for every op.

Order: the `backend=` argument, then the environment variable SPECDEC_BACKEND, then the first backend
that supports the inputs in the order cuda -> triton -> cpu -> torch (Triton on CPU tensors, i.e. under
TRITON_INTERPRET=1, is a testing tool and is only used when asked for by name). An explicit argument that cannot
run raises, listing why. SPECDEC_BACKEND applies to the ops that implement the named backend (an op
without it chooses automatically), and raises like an argument when that backend refuses the inputs.
The choice depends only on devices, dtypes, shapes and what was built, never on tensor values, so it
is stable under torch.compile and CUDA graphs.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from . import _loader

BACKENDS = ("cuda", "triton", "cpu", "torch")

# A check returns None when the backend can run the inputs, else a short reason.
Check = Callable[..., Optional[str]]


class BackendError(RuntimeError):
    """No backend (or not the requested one) can run these inputs; the message lists why."""


def _probe_triton() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


_TRITON_STATUS = _probe_triton()  # probed once at import: a constant under torch.compile


def triton_status() -> Optional[str]:
    """None when Triton kernels can be launched here at all, else why not."""
    return _TRITON_STATUS


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Registrations happen at import time and never change afterwards: under torch.compile the answer is a
# constant of the graph (Dynamo cannot trace this pybind call, which returns a bool, not a tensor).
@torch.compiler.assume_constant_result
def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when a kernel of `specdec::op` is registered for `dispatch_key` (by _C or a Triton module)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"specdec::{op}", dispatch_key)


def has_compiled_kernel(op: str, dispatch_key: str) -> bool:
    """True when specdec_kernels._C registered a kernel of `specdec::op` for `dispatch_key`."""
    return _loader._C is not None and has_kernel(op, dispatch_key)


def compiled_check(op: str, device: torch.device, want: str) -> Optional[str]:
    """Check for the compiled backends: `want` is 'cuda' or 'cpu'."""
    if device.type != want:
        return f"inputs are on {device.type}, the {want} backend needs {want} tensors"
    if _loader._C is None:
        return f"specdec_kernels._C is not loaded ({_loader.LOAD_ERROR or 'not built'})"
    if not has_compiled_kernel(op, want.upper()):
        return f"specdec_kernels._C was built without a {want} kernel for specdec::{op}"
    return None


def triton_check(device: torch.device, op: Optional[str] = None) -> Optional[str]:
    """Check for the triton backend; with `op`, also that a kernel is registered on specdec::<op>_triton."""
    status = triton_status()
    if status is not None:
        return status
    if device.type == "cpu" and not triton_interpreted():
        return "Triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got cpu"
    if device.type not in ("cpu", "cuda"):
        return f"Triton needs CUDA tensors, got {device.type}"
    if op is not None and not has_kernel(f"{op}_triton", device.type.upper()):
        return f"no Triton kernel is registered for specdec::{op}"
    return None


def _on_cpu(args) -> bool:
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    return first is not None and first.device.type == "cpu"


OPS: dict = {}  # name -> Op, every public op of the package (filled as op modules are imported)


class Op:
    """The implementations of one public op, keyed by backend.

    `impls[backend] = (run, check)`: `check(*args)` returns None or a reason, `run(*args)` does the work.
    The op's generic checks (one per backend kind) come from `default_check`, and an op adds its own
    limits (dtype, sizes) through `extra`.
    """

    def __init__(self, name: str):
        self.name = name
        self.impls: dict[str, tuple[Callable, Check]] = {}
        # backend -> check(device) of what does not depend on the inputs' shapes (for `info`).
        self.static: dict[str, Callable[[torch.device], Optional[str]]] = {}
        OPS[name] = self

    def register(self, backend: str, run: Callable, check: Check,
                 static: Optional[Callable[[torch.device], Optional[str]]] = None) -> None:
        assert backend in BACKENDS, backend
        self.impls[backend] = (run, check)
        self.static[backend] = static or (lambda device: None)

    def default_backend(self, device: torch.device) -> str:
        """The backend chosen on `device` for inputs within every backend's size and dtype limits."""
        for b in BACKENDS:
            if b == "triton" and device.type == "cpu":
                continue
            if b in self.impls and self.static[b](device) is None:
                return b
        return "none"

    def reasons(self, *args) -> dict[str, str]:
        """Why each backend refuses these inputs ({} entries omitted for backends that accept)."""
        out = {}
        for b in BACKENDS:
            if b not in self.impls:
                out[b] = f"{self.name} has no {b} implementation"
                continue
            reason = self.impls[b][1](*args)
            if reason is not None:
                out[b] = reason
        return out

    def choose(self, backend: Optional[str], *args) -> str:
        """The backend that runs these inputs (see the module docstring for the rules)."""
        source = "backend="
        if backend is None:
            env = os.environ.get("SPECDEC_BACKEND") or None
            if env is not None and env not in BACKENDS:
                raise BackendError(f"SPECDEC_BACKEND={env!r} is not one of {BACKENDS}")
            if env is not None and env in self.impls:
                backend, source = env, "SPECDEC_BACKEND="
        if backend is not None:
            if backend not in BACKENDS:
                raise BackendError(f"{self.name}: unknown backend {backend!r}; expected one of {BACKENDS}")
            if backend not in self.impls:
                raise BackendError(f"{self.name}: {source}{backend!r} is not implemented for this op "
                                   f"(it has {sorted(self.impls)})")
            reason = self.impls[backend][1](*args)
            if reason is not None:
                raise BackendError(f"{self.name}: {source}{backend!r} cannot run these inputs: {reason}")
            return backend
        for b in BACKENDS:
            if b == "triton" and _on_cpu(args):
                continue  # the Triton interpreter is a testing tool: on CPU tensors only when asked for
            if b in self.impls and self.impls[b][1](*args) is None:
                return b
        lines = "\n".join(f"  {b}: {r}" for b, r in self.reasons(*args).items())
        raise BackendError(f"{self.name}: no backend can run these inputs:\n{lines}")

    def __call__(self, backend: Optional[str], *args):
        chosen = self.choose(backend, *args)
        return self.impls[chosen][0](*args)


def standard_op(name: str, device_of: Callable[..., torch.device], *, extra: Optional[Check] = None,
                reference: Optional[Callable] = None, triton: Optional[Callable] = None,
                compiled: bool = True) -> Op:
    """An Op with the usual four backends.

    - cuda / cpu: `torch.ops.specdec.<name>` (the kernels of _C), when built for the inputs' device;
    - triton: `triton(*args)` when given, on CUDA or under TRITON_INTERPRET=1;
    - torch: `reference(*args)`.
    `extra(backend, *args)` adds op-specific refusals (dtype, size limits); `device_of(*args)` names the
    device of the inputs.
    """
    op = Op(name)

    def with_extra(backend, base: Check) -> Check:
        def check(*args):
            reason = base(*args)
            if reason is None and extra is not None:
                reason = extra(backend, *args)
            return reason
        return check

    if compiled:
        kernel = getattr(torch.ops.specdec, name)
        for b in ("cuda", "cpu"):
            op.register(b, kernel, with_extra(b, lambda *a, b=b: compiled_check(name, device_of(*a), b)),
                        lambda device, b=b: compiled_check(name, device, b))
    if triton is not None:
        op.register("triton", triton, with_extra("triton", lambda *a: triton_check(device_of(*a), name)),
                    lambda device: triton_check(device, name))
    if reference is not None:
        op.register("torch", reference, with_extra("torch", lambda *a: None))
    return op
