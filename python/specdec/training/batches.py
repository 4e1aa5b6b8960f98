"""The batches of a training run: the datasets, the epoch's seeded order, collation and device placement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from .rng import derive_seed

if TYPE_CHECKING:
    from .config import TrainConfig


def load_datasets(cfg: TrainConfig) -> tuple:
    """(train, val) of the `specdec data` folder cfg.data: TokenDataset with cfg.online, else FeatureDataset."""
    from specdec.data import FeatureDataset, TokenDataset

    cls = TokenDataset if cfg.online else FeatureDataset
    return cls(cfg.data, split="train"), cls(cfg.data, split="val")


def collate_batch(items: list, max_length: Optional[int], pad_id: int = 0) -> dict:
    """specdec.data.collate of the items, each sequence first cut to max_length tokens (None = as stored)."""
    from specdec.data import collate

    if max_length is not None:
        items = [
            {k: (v[:max_length] if isinstance(v, torch.Tensor) and v.dim() >= 1 else v) for k, v in it.items()}
            for it in items
        ]
    return collate(items, pad_id=pad_id)


def to_device(batch: dict, device: torch.device, feat_dtype: torch.dtype) -> dict:
    """The batch's tensors on `device`, the features ("hidden") in feat_dtype."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "hidden":
                v = v.to(feat_dtype)
        out[k] = v
    return out


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of the training sequences for one epoch of one stage."""
    g = torch.Generator().manual_seed(derive_seed(seed, "order", stage, epoch))
    return torch.randperm(n, generator=g)


def rank_indices(order: torch.Tensor, position: int, batch_size: int, rank: int, world: int) -> list:
    """The sequences of global batch `position` (order[position*B:(position+1)*B]) that process `rank` of
    `world` trains on: its elements rank, rank + world, ..."""
    return order[position * batch_size : (position + 1) * batch_size][rank::world].tolist()
