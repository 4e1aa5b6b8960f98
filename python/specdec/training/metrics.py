"""The loss's metrics as the training loop reads them: the masked-position count and the accuracy keys."""

from __future__ import annotations

from typing import Optional

import torch

_COUNT_KEYS = ("count", "masked", "num_masked", "n_masked", "tokens", "n")
_ACC_KEYS = ("acc", "top1", "accuracy", "acc_top1")


def _metric(metrics: dict, keys) -> Optional[str]:
    for k in keys:
        if k in metrics:
            return k
    return None


def _as_float(v) -> Optional[float]:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float()) if v.numel() == 1 else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None
