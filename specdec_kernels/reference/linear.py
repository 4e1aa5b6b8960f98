"""PyTorch reference of linear: torch's own matrix multiply into the caller's buffer."""

from __future__ import annotations

from typing import Optional

import torch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor) -> None:
    """out = x @ weight^T (+ bias), written into `out` [M, N] (what torch.nn.functional.linear computes)."""
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)
