"""Triton kernels, attached to the `specdec::<op>_triton` schemas for CPU (interpreter) and CUDA tensors.

Importing this package never fails. When Triton is missing, `LOAD_ERROR` says why and the triton
backend refuses every input with that reason. Each kernel module is imported on its own: an error in one
(`MODULE_ERRORS[module]`) disables that module's kernels only, and `python -m specdec_kernels.info`
and every refusal name it.
"""

from __future__ import annotations

import importlib
from typing import Dict, Optional

LOAD_ERROR: Optional[str] = None
# The modules that register kernels (features_shared registers none: the two feature modules import it, so
# an error there disables both).
MODULES = ("tree", "compact", "verify", "attention", "paged", "features_fspad", "features_griffin")
MODULE_ERRORS: Dict[str, str] = {}

try:
    import triton  # noqa: F401
except Exception as exc:  # pragma: no cover - depends on the environment
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
else:
    for _module in MODULES:  # each module registers its kernels on import
        try:
            importlib.import_module(f"{__name__}.{_module}")
        except Exception as exc:  # a broken kernel module must not take the others down
            MODULE_ERRORS[_module] = f"{type(exc).__name__}: {exc}"
