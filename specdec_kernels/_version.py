"""The package version: read from the installed distribution's metadata (pyproject.toml is the one place)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("specdec-kernels")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
