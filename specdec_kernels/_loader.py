"""Loads the compiled extension specdec_kernels._C.

The op schemas (specdec_kernels/_schemas.py) are defined first and outside of this: an error there is a
real error of the package and propagates. A missing or broken `_C` (not built, built against another
torch, ...) is not fatal: every op falls back to a backend that can run, and the first op that falls
back because of it warns once with the reason and how to rebuild. SPECDEC_NO_EXTENSION=1 in the
environment skips loading `_C` on purpose (then nothing warns).
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional

from . import _schemas  # noqa: F401  (the schemas must exist before the compiled kernels attach to them)

_C = None
LOAD_ERROR: Optional[str] = None
_SKIPPED = os.environ.get("SPECDEC_NO_EXTENSION", "0").lower() in ("1", "true", "yes", "on")
_WARNED = False

if _SKIPPED:
    LOAD_ERROR = "SPECDEC_NO_EXTENSION=1: not loaded on purpose"
else:
    try:
        _C = importlib.import_module("specdec_kernels._C")
    except ModuleNotFoundError as exc:
        if exc.name != "specdec_kernels._C":
            LOAD_ERROR = f"{type(exc).__name__}: {exc}"
        else:
            LOAD_ERROR = "not built (no specdec_kernels/_C*.so)"
    except Exception as exc:  # ImportError (undefined symbols from a torch mismatch), OSError, ...
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def load_error() -> str:
    """Why `_C` is not loaded ('' when it is)."""
    return LOAD_ERROR or ""


def skipped() -> bool:
    """True when SPECDEC_NO_EXTENSION=1 asked not to load `_C`."""
    return _SKIPPED


class ExtensionFallbackWarning(RuntimeWarning):
    """An op fell back from a compiled kernel because specdec_kernels._C could not be loaded."""


def warn_missing_once(op: str, chosen: str) -> None:
    """Warn, once per process, that `op` ran on `chosen` because `_C` is missing."""
    global _WARNED
    if _WARNED:
        return
    _WARNED = True
    warnings.warn(
        f"specdec_kernels._C could not be loaded ({LOAD_ERROR}); specdec::{op} and every other op fall back "
        f"to slower backends (this one to {chosen!r}). Rebuild with `bash scripts/build.sh` (or "
        f"`pip install --no-build-isolation -e .`), check with `python -m specdec_kernels.info`, or set "
        f"SPECDEC_NO_EXTENSION=1 to run without it on purpose.",
        ExtensionFallbackWarning,
        stacklevel=4,
    )


def build_info() -> dict:
    """What setup.py built (written at build time); empty when the package was not built here."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)
