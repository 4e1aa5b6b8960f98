"""The process group of a training run (torchrun: gloo on CPU, NCCL on GPU), a no-op for one process."""

from __future__ import annotations

import os

import torch


class ProcessGroup:
    """Process-group state: rank, world size, and the collectives the loop uses (no-ops for one process).

    Joins (and later closes) the default process group when torchrun set WORLD_SIZE > 1 and nobody
    initialised it; an already initialised group is used and left open.
    """

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.device = device

    @property
    def main(self) -> bool:
        """True on rank 0, the process that writes the files."""
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` in place over the processes; returns it."""
        if self.on and self.world > 1:
            self.dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        """Wait for every process."""
        if self.on and self.world > 1:
            if self.device.type == "cuda":
                self.dist.barrier(device_ids=[self.device.index or 0])
            else:
                self.dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this object created it."""
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()
