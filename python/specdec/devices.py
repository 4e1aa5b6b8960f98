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


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a torch.device or its name) when it is a GPU, so that host
    timers measure it; nothing to wait for on a CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def process_device(device):
    """The device this process runs on for `device` (a torch.device): a CUDA device without an index
    becomes this process's GPU under torchrun (cuda:LOCAL_RANK, modulo the visible GPUs), else the current
    CUDA device; any other device is returned as it is."""
    import os

    import torch

    if device.type != "cuda" or device.index is not None:
        return device
    local = os.environ.get("LOCAL_RANK")
    index = int(local) % max(1, torch.cuda.device_count()) if local is not None else torch.cuda.current_device()
    return torch.device("cuda", index)
