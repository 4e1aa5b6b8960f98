"""The op registry and the backend choice, the same for every op.

Every public op of the package is registered here under its schema name (`specdec::<name>`) with up to
four implementations: `cuda` and `cpu` (the compiled kernels of specdec_kernels._C), `triton` (the
kernel registered on `specdec::<name>_triton` by specdec_kernels/triton_kernels) and `torch` (the
PyTorch reference). `get_op(name)` is the one public way to look an op up: which backend would run a
set of kernel arguments, and why each other backend refused them.

The rules of the choice (the `backend=` argument, SPECDEC_BACKEND, the automatic order, what each
backend's check looks at) are written once, in docs/design.md ("The choice"); `KernelOp.choose`
implements them.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _loader

BACKENDS = ("cuda", "triton", "cpu", "torch")

# A check returns None when the backend can run the inputs, else a short reason.
Check = Callable[..., Optional[str]]
# An op's own limits: (backend, *kernel_args) -> None or a reason.
Limits = Callable[..., Optional[str]]


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
    """True when TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Kernels found registered: a registration is never taken back, so a yes is remembered (the dispatcher
# query costs ~8 us, and every automatic choice asks it); a no is asked again, since a Triton module
# imported later may still register the kernel.
_REGISTERED: set = set()


# Registrations happen at import time and never change afterwards: under torch.compile the answer is a
# constant of the graph (Dynamo cannot trace this pybind call, which returns a bool, not a tensor).
@torch.compiler.assume_constant_result
def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when a kernel of `specdec::op` is registered for `dispatch_key` (by _C or a Triton module)."""
    key = (op, dispatch_key)
    if key in _REGISTERED:
        return True
    found = torch._C._dispatch_has_kernel_for_dispatch_key(f"specdec::{op}", dispatch_key)
    if found:
        _REGISTERED.add(key)
    return found


def has_compiled_kernel(op: str, dispatch_key: str) -> bool:
    """True when specdec_kernels._C registered a kernel of `specdec::op` for `dispatch_key`."""
    return _loader._C is not None and has_kernel(op, dispatch_key)


def compiled_check(op: str, device: torch.device, want: str) -> Optional[str]:
    """Check for the compiled backends: `want` is 'cuda' or 'cpu'."""
    if device.type != want:
        return f"inputs are on {device.type}, the {want} backend needs {want} tensors"
    if _loader._C is None:
        return f"specdec_kernels._C is not loaded ({_loader.load_error()})"
    if not has_compiled_kernel(op, want.upper()):
        return f"specdec_kernels._C was built without a {want} kernel for specdec::{op}"
    return None


def triton_check(device: torch.device, op: Optional[str] = None, module: Optional[str] = None) -> Optional[str]:
    """Check for the triton backend; with `op`, also that a kernel is registered on specdec::<op>_triton.

    `module` names the triton_kernels module that registers it, whose import error (if any) is the reason.
    """
    status = triton_status()
    if status is not None:
        return status
    if device.type == "cpu" and not triton_interpreted():
        return "Triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got cpu"
    if device.type not in ("cpu", "cuda"):
        return f"Triton needs CUDA tensors, got {device.type}"
    if module is not None:
        from . import triton_kernels

        err = triton_kernels.MODULE_ERRORS.get(module)
        if err is not None:
            return f"specdec_kernels.triton_kernels.{module} failed to import ({err})"
    if op is not None and not has_kernel(f"{op}_triton", device.type.upper()):
        return f"no Triton kernel is registered for specdec::{op}"
    return None


def device_of(args) -> torch.device:
    """The device of the first tensor among `args` (looking into lists and tuples); cpu when none."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, torch.Tensor):
                    return t.device
    return torch.device("cpu")


def _env_backend() -> Optional[str]:
    env = os.environ.get("SPECDEC_BACKEND") or None
    if env is not None and env not in BACKENDS:
        raise BackendError(f"SPECDEC_BACKEND={env!r} is not one of {BACKENDS}")
    return env


_OPS: Dict[str, "KernelOp"] = {}  # name -> op; filled by the op modules, which the package's __init__ imports


class KernelOp:
    """The implementations of one op (`specdec::<name>`), keyed by backend, and the choice among them.

    Arguments of `reason`, `reasons`, `choose` and `__call__` are the op's kernel arguments: those of its
    schema (specdec_kernels/_schemas.py), outputs included, as the public function passes them after
    its own checks. Look ops up with `specdec_kernels.get_op(name)`.
    """

    def __init__(self, name: str, triton_module: Optional[str] = None):
        self.name = name
        self.triton_module = triton_module
        self._impls: Dict[str, Tuple[Callable, Check]] = {}
        # backend -> check(device) of what does not depend on the inputs' shapes (for `info`).
        self._static: Dict[str, Callable[[torch.device], Optional[str]]] = {}
        # backend -> why this op has no implementation there (e.g. where torch is the kernel); else a default.
        self.missing: Dict[str, str] = {}
        # (backend, *args) -> None, or why the automatic choice passes over `backend` although it can run these
        # arguments (e.g. measured slower on this machine); backend= and SPECDEC_BACKEND still run it.
        self.passed_over: Optional[Callable[..., Optional[str]]] = None
        _OPS[name] = self

    def __repr__(self) -> str:
        return f"KernelOp({self.name!r}, backends={self.backends})"

    def register(
        self,
        backend: str,
        run: Callable,
        check: Check,
        static: Optional[Callable[[torch.device], Optional[str]]] = None,
    ) -> None:
        """Add an implementation: `run(*args)` does the work, `check(*args)` returns None or a reason."""
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        self._impls[backend] = (run, check)
        self._static[backend] = static or (lambda device: None)

    @property
    def backends(self) -> Tuple[str, ...]:
        """The backends this op implements, in the order of the automatic choice."""
        return tuple(b for b in BACKENDS if b in self._impls)

    def static_reason(self, backend: str, device) -> Optional[str]:
        """Why `backend` cannot run this op on `device` at all (not built, no Triton, ...), else None."""
        if backend not in self._impls:
            return self._no_impl(backend)
        return self._static[backend](torch.device(device))

    def _no_impl(self, backend: str) -> str:
        return self.missing.get(backend) or f"{self.name} has no {backend} implementation"

    def default_backend(self, device) -> str:
        """The backend chosen on `device` for inputs within every backend's size and dtype limits.

        Honours SPECDEC_BACKEND like `choose`; "none" when no backend can run on the device.
        """
        device = torch.device(device)
        env = _env_backend()
        if env is not None and env in self._impls and self._static[env](device) is None:
            return env
        for b in self.backends:
            if b == "triton" and device.type == "cpu":
                continue
            if self._static[b](device) is None:
                return b
        return "none"

    def reason(self, backend: str, *args) -> Optional[str]:
        """Why `backend` refuses these kernel arguments, or None when it can run them."""
        if backend not in BACKENDS:
            raise BackendError(f"{self.name}: unknown backend {backend!r}; expected one of {BACKENDS}")
        if backend not in self._impls:
            return self._no_impl(backend)
        return self._impls[backend][1](*args)

    def reasons(self, *args) -> Dict[str, str]:
        """Why each backend refuses these kernel arguments (backends that accept are left out)."""
        out = {}
        for b in BACKENDS:
            r = self.reason(b, *args)
            if r is not None:
                out[b] = r
        return out

    def choose(self, *args, backend: Optional[str] = None) -> str:
        """The backend that runs these kernel arguments (see the module docstring for the rules)."""
        source = "backend="
        if backend is None:
            env = _env_backend()
            if env is not None and env in self._impls:
                backend, source = env, "SPECDEC_BACKEND="
        if backend is not None:
            if backend not in BACKENDS:
                raise BackendError(f"{self.name}: unknown backend {backend!r}; expected one of {BACKENDS}")
            if backend not in self._impls:
                why = f": {self.missing[backend]}" if backend in self.missing else ""
                raise BackendError(
                    f"{self.name}: {source}{backend!r} is not implemented for this op (it has {list(self.backends)})"
                    + why
                )
            reason = self._impls[backend][1](*args)
            if reason is not None:
                raise BackendError(f"{self.name}: {source}{backend!r} cannot run these inputs: {reason}")
            return backend
        on_cpu = device_of(args).type == "cpu"
        for b in self.backends:
            if b == "triton" and on_cpu:
                continue  # the Triton interpreter is a testing tool: on CPU tensors only when asked for
            if self._impls[b][1](*args) is None:
                if self.passed_over is not None and self.passed_over(b, *args) is not None:
                    continue
                if _loader._C is None:
                    self._note_fallback(args, b)
                return b
        lines = "\n".join(f"  {b}: {r}" for b, r in self.reasons(*args).items())
        raise BackendError(f"{self.name}: no backend can run these inputs:\n{lines}")

    def _note_fallback(self, args, chosen: str) -> None:
        """Warn (once per process) when a compiled kernel would have run but _C failed to load."""
        if _loader.skipped():
            return
        device = device_of(args)
        if device.type in ("cpu", "cuda") and device.type in self._impls and chosen != device.type:
            _loader.warn_missing_once(self.name, chosen)

    def __call__(self, *args, backend: Optional[str] = None):
        """Run the op on the chosen backend (kernel arguments; outputs are written in place)."""
        chosen = self.choose(*args, backend=backend)
        return self._impls[chosen][0](*args)

    def run(self, backend: str, *args):
        """Run on `backend` without checking it (the caller chose it with `choose`, e.g. for autograd)."""
        return self._impls[backend][0](*args)


def get_op(name: str) -> KernelOp:
    """The registered op `specdec::<name>`: its backends, which one would run, and why others refuse.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> op = sk.get_op("build_tree")
        >>> op.backends
        ('cuda', 'triton', 'cpu', 'torch')
        >>> op.default_backend("cpu") in op.backends     # what CPU tensors would use here
        True
    """
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(f"no op named {name!r}; the registered ops are {sorted(_OPS)}") from None


def list_ops() -> Tuple[str, ...]:
    """The names of every registered op, in registration order.

    Example:
        >>> import specdec_kernels as sk
        >>> "tree_attention" in sk.list_ops()
        True
    """
    return tuple(_OPS)


def standard_op(
    name: str,
    *,
    reference: Callable,
    triton_module: Optional[str],
    limits: Optional[Limits] = None,
    compiled: bool = True,
) -> KernelOp:
    """Register an op with the usual backends.

    - cuda / cpu: `torch.ops.specdec.<name>` (the kernels of _C), when built for the inputs' device;
    - triton: `torch.ops.specdec.<name>_triton`, registered by specdec_kernels/triton_kernels/<module>.py
      (None: no Triton kernel), on CUDA or under TRITON_INTERPRET=1;
    - torch: `reference(*args)`.
    `limits(backend, *args)` adds op-specific refusals (dtype, size limits). The device of the inputs is
    that of the first tensor argument.
    """
    op = KernelOp(name, triton_module)

    def with_limits(backend, base: Check) -> Check:
        def check(*args):
            reason = base(*args)
            if reason is None and limits is not None:
                reason = limits(backend, *args)
            return reason

        return check

    if compiled:
        kernel = getattr(torch.ops.specdec, name)
        for b in ("cuda", "cpu"):
            op.register(
                b,
                kernel,
                with_limits(b, lambda *a, b=b: compiled_check(name, device_of(a), b)),
                lambda device, b=b: compiled_check(name, device, b),
            )
    if triton_module is not None:

        def run_triton(*args):
            return getattr(torch.ops.specdec, name + "_triton")(*args)

        op.register(
            "triton",
            run_triton,
            with_limits("triton", lambda *a: triton_check(device_of(a), name, triton_module)),
            lambda device: triton_check(device, name, triton_module),
        )
    op.register("torch", reference, with_limits("torch", lambda *a: None))
    return op
