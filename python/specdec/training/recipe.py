"""The recipe as the training loop runs it: the stage's loss function, the module DDP wraps, gradient
clipping."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig


def _loss_fn(cfg: TrainConfig, stage: int, noise: float):
    from .losses import recipe_loss  # the recipes' losses

    def fn(head, batch, generator=None):
        return recipe_loss(
            cfg.kind,
            head,
            batch,
            stage=stage,
            topk_mask=cfg.topk_mask,
            check_position=cfg.check_position,
            noise=noise,
            generator=generator,
            **cfg.extra,
        )

    return fn


class _LossModule(nn.Module):
    """Wraps the head so DistributedDataParallel runs (and hooks) the recipe's loss as its forward."""

    def __init__(self, head, fn):
        super().__init__()
        self.head = head
        self.fn = fn

    def forward(self, batch, generator=None):
        return self.fn(self.head, batch, generator)


def _clip(head, limit: float, mode: str) -> torch.Tensor:
    """Clip the gradients (by value, as the reference trainers do, or by global norm); returns the
    gradient norm before clipping."""
    params = [p for p in head.parameters() if p.grad is not None]
    if mode == "norm" and limit > 0:
        return torch.nn.utils.clip_grad_norm_(params, limit)
    norm = (
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        if params
        else torch.tensor(0.0)
    )
    if limit > 0:
        torch.nn.utils.clip_grad_value_(params, limit)
    return norm
