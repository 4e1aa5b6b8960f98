"""Device choice in one place: the commands, the trainer and the benchmarks default to the same device.

Example:
    >>> from specdec.devices import default_device
    >>> default_device().type in ("cuda", "cpu")
    True
"""

from __future__ import annotations


def default_device():
    """The device to run on when none is named: the current CUDA device when torch sees a GPU, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
