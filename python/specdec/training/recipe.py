"""The recipe as the training loop runs it: the stage's loss function, the module DDP wraps, the
optimizer, gradient clipping."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig


def stage_loss(cfg: TrainConfig, stage: int, noise: float) -> Callable:
    """fn(head, batch, generator=None) -> (loss, metrics): losses.recipe_loss of cfg's recipe at `stage`
    with input noise `noise` (0 for validation)."""
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


class LossModule(nn.Module):
    """Wraps the head so DistributedDataParallel runs (and hooks) the recipe's loss as its forward."""

    def __init__(self, head, fn):
        super().__init__()
        self.head = head
        self.fn = fn

    def forward(self, batch, generator=None):
        """fn(head, batch, generator): the loss and its metrics."""
        return self.fn(self.head, batch, generator)


def training_module(head, fn, device: torch.device, world: int) -> nn.Module:
    """LossModule(head, fn), wrapped in DistributedDataParallel when `world` > 1 processes train."""
    module = LossModule(head, fn)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return module


def make_optimizer(head, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over the head's parameters with cfg's betas, eps and weight decay at learning rate `lr`."""
    return torch.optim.AdamW(head.parameters(), lr=lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def clip_gradients(head, limit: float, mode: str) -> torch.Tensor:
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
