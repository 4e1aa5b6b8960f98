"""Triton kernels, attached to the `specdec::<op>_triton` schemas for CPU (interpreter) and CUDA tensors.

Importing this package never fails: when Triton is missing, `LOAD_ERROR` says why and the triton
backend refuses every input with that reason.
"""
from __future__ import annotations

LOAD_ERROR = None

try:
    import triton  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the environment
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
else:
    from . import tree  # noqa: F401  (each module registers its kernels on import)
    from . import compact  # noqa: F401
    from . import verify  # noqa: F401
    from . import attention  # noqa: F401
    from . import features  # noqa: F401
