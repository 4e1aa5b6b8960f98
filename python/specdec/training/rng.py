"""Random-number state of a training run: seeds derived from the run's settings, and the global RNG
states a checkpoint saves and a resumed run restores."""

from __future__ import annotations

import hashlib
import random

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


def get_rng_state() -> dict:
    """The global RNG states (torch, Python, CUDA once initialised, numpy when installed) for a checkpoint."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states of get_rng_state (those this process cannot restore are skipped)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:
            pass
    if "numpy" in state:
        try:
            import numpy as np

            np.random.set_state(state["numpy"])
        except ImportError:
            pass
