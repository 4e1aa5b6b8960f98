"""What `generate` and `generate_baseline` accept, normalised: prompts as token lists, padded device tensors,
the stop tokens, the sampling arguments checked, the target wrapped."""

from __future__ import annotations

from typing import Optional

import torch

from ..target import TargetModel


def prompt_rows(input_ids, attention_mask) -> list:
    """Prompts as lists of ints: from a list of lists, or a [B, L] tensor (+ optional 0/1 attention_mask,
    left or right padded: the tokens where the mask is 1, in order)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected a [B, L] tensor, got shape {tuple(input_ids.shape)}")
        rows = input_ids.tolist()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
                got = (
                    tuple(attention_mask.shape)
                    if isinstance(attention_mask, torch.Tensor)
                    else type(attention_mask).__name__
                )
                raise ValueError(
                    f"attention_mask: expected a tensor of shape {tuple(input_ids.shape)} (like input_ids), got {got}"
                )
            masks = attention_mask.tolist()
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, masks)]
    else:
        if attention_mask is not None:
            raise ValueError("attention_mask: only meaningful with a tensor input_ids")
        if not isinstance(input_ids, (list, tuple)) or not input_ids:
            raise TypeError("input_ids: expected a non-empty list of token lists or a [B, L] tensor")
        if all(isinstance(t, int) for t in input_ids):
            input_ids = [input_ids]
        rows = [list(map(int, r)) for r in input_ids]
    for b, r in enumerate(rows):
        if not r:
            raise ValueError(f"input_ids: prompt {b} is empty (every request needs at least one token)")
    return rows


def pad_rows(rows: list, device) -> tuple:
    """The prompts right-padded with 0 into an int64 [B, L] tensor on `device`, and their int32 lengths [B]."""
    B, L = len(rows), max(len(r) for r in rows)
    ids = torch.zeros(B, L, dtype=torch.int64)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int32)
    return ids.to(device), lengths.to(device)


def eos_tensor(eos_ids: list, device) -> Optional[torch.Tensor]:
    """The stop ids as an int64 tensor on `device`, or None when nothing stops a request early."""
    return torch.tensor(eos_ids, dtype=torch.int64, device=device) if eos_ids else None


def check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    """ValueError naming the argument when max_new_tokens, temperature, top_k or top_p is out of range."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k: expected >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected 0 < top_p <= 1 (1 = off), got {top_p}")


def as_target(target, backend) -> TargetModel:
    """`target` itself when it is a TargetModel, else the Hugging Face model wrapped in one."""
    if isinstance(target, TargetModel):
        return target
    return TargetModel(target, backend=backend)
