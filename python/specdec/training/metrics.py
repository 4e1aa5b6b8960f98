"""The per-step metrics of the training loop: what the loss reports, summed over the processes, as one
row of train_log.csv.

recipe_loss reports the loss positions' count as "count" and the top-1 accuracy as "acc"; the loop also
takes the other usual names below (first match wins), so a loss reporting e.g. "num_masked" or "top1" fills
the same columns.
"""

from __future__ import annotations

from typing import Optional

import torch

COUNT_KEYS = ("count", "masked", "num_masked", "n_masked", "tokens", "n")
ACC_KEYS = ("acc", "top1", "accuracy", "acc_top1")


def first_key(metrics: dict, keys) -> Optional[str]:
    """The first of `keys` that `metrics` holds, or None."""
    for k in keys:
        if k in metrics:
            return k
    return None


def as_float(v) -> Optional[float]:
    """A one-element tensor or a number as a float; None for anything else (lists, bools, ...)."""
    if isinstance(v, torch.Tensor):
        return float(v.detach().float()) if v.numel() == 1 else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def masked_count(metrics: dict, batch: dict) -> float:
    """The loss positions the loss averages over: the metrics' count, else the batch's loss_mask sum."""
    count = as_float(metrics.get(first_key(metrics, COUNT_KEYS) or "", None))
    return count if count is not None else float(batch["loss_mask"].sum())


def logged_keys(metrics: dict) -> list:
    """The scalar metrics a train_log row shows, sorted (counts and pass 1's duplicates left out)."""
    return [
        k
        for k in sorted(metrics)
        if as_float(metrics[k]) is not None and not k.endswith("count") and not k.startswith("pass1/")
    ]


def step_sums(count: float, tokens: float, loss, metrics: dict, keys: list, device) -> torch.Tensor:
    """float64 [3 + len(keys)] to sum over the processes: the count, the tokens, then the loss and each
    metric of `keys` weighted by the count (train_row divides them by the summed count)."""
    vec = torch.tensor(
        [count, tokens, float(loss.detach())] + [as_float(metrics[k]) * count for k in keys],
        dtype=torch.float64,
        device=device,
    )
    vec[2] = vec[2] * count
    return vec


def train_row(sums: torch.Tensor, keys: list, metrics: dict, head: dict, grad_norm, seconds: float) -> dict:
    """One train_log.csv row: `head` (stage, step, global_step, epoch, lr), the count-weighted means of the
    summed step_sums, "acc" (the accuracy under whichever name the loss used), then the step's gradient
    norm, masked positions, tokens, throughput and duration."""
    total_count = max(float(sums[0]), 1.0)
    row = dict(head, loss=float(sums[2]) / total_count)
    for i, k in enumerate(keys):
        if k != "loss":
            row[k.replace("/", "_")] = float(sums[3 + i]) / total_count
    acc_key = first_key(metrics, ACC_KEYS)
    if acc_key and acc_key != "acc":
        row["acc"] = row[acc_key]
    row.update(
        grad_norm=float(grad_norm),
        masked=int(sums[0]),
        tokens=int(sums[1]),
        tokens_per_s=float(sums[1]) / seconds if seconds > 0 else float("nan"),
        seconds=seconds,
    )
    return row
