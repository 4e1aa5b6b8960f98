"""Loads the compiled extension specdec_kernels._C, recording (never raising) why it is missing."""
from __future__ import annotations

import importlib

_C = None
LOAD_ERROR: str | None = None

try:  # the schemas must exist before the compiled kernels attach to them
    from . import _schemas  # noqa: F401

    _C = importlib.import_module("specdec_kernels._C")
except Exception as exc:  # ImportError, undefined symbols from a torch mismatch, ...
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def build_info() -> dict:
    """What setup.py built (written at build time); empty when the package was not built here."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)
