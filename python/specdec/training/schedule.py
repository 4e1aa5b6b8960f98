"""Learning-rate schedule of the recipes: the warmup length (default_warmup) and the schedule itself, linear
warmup then cosine decay of the peak lr (specdec.training.losses.learning_rate, or --lr):

    lr(s) = base * (s + 1) / warmup                                  for s < warmup
    lr(s) = base * (m + (1 - m) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2)   otherwise

where s = 0, 1, ... is the index of the optimizer update (the first update uses lr(0), which is not 0),
`total` the number of updates of the run and m = `min_ratio` (the final lr is base * m, reached at
s = total). Past `total` the lr stays at base * m.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """The multiplier of the base lr at update `step` (0-based); see the module docstring."""
    if step < warmup:
        return (step + 1) / warmup
    span = total - warmup
    if span <= 0:
        return 1.0 if step < total else min_ratio
    progress = min((step - warmup) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.0):
    """A LambdaLR applying lr_factor to every parameter group (its state_dict holds the step only)."""
    if warmup < 0 or total < 1:
        raise ValueError(f"warmup_cosine: expected warmup >= 0 and total >= 1, got {warmup}, {total}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"warmup_cosine: min_ratio must be in [0, 1], got {min_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total, min_ratio))


def default_warmup(total_steps: int) -> int:
    """The recipes' 2000 warmup steps, capped at 5% of a shorter run (at least 1)."""
    return max(1, min(2000, math.ceil(0.05 * total_steps)))
