"""Shared test setup: Triton runs under its interpreter without a GPU; `cuda` tests skip without one; the
tests never write into the user's $SPECDEC_HOME (see _private_specdec_home)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton

import pytest

import specdec_kernels  # noqa: F401


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# The user's specdec home as it was before any test ran (tests read the fetched default target, downloaded
# wheels and benchmark files from there).
_REAL_HOME = os.path.abspath(  # absolute: the session home's links to it must resolve from another folder
    os.path.expanduser(os.environ.get("SPECDEC_HOME") or os.path.join("~", ".cache", "specdec"))
)


@pytest.fixture(scope="session")
def _session_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("specdec_home")
    for name in ("targets", "downloads", "benchmarks"):  # read-only use; tests that fetch set their own home
        real = os.path.join(_REAL_HOME, name)
        if os.path.isdir(real):
            os.symlink(real, home / name)
    return home


@pytest.fixture(autouse=True)
def _private_specdec_home(_session_home, monkeypatch):
    """$SPECDEC_HOME of every test: a session folder that sees the user's fetched files but keeps what tests
    write (the tree budget's measured costs of tiny models, verify_cost.json) out of the user's cache, where
    they would sit beside the real measurements. A test may set its own SPECDEC_HOME on top."""
    monkeypatch.setenv("SPECDEC_HOME", str(_session_home))
