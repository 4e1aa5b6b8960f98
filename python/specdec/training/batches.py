"""The batches of a training run: the datasets, each epoch's seeded batches (fixed count or length-grouped
within a token budget), collation and device placement."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

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


def batch_sizes_by_length(sorted_lengths: Sequence[int], batch_tokens: int, world: int = 1) -> List[int]:
    """The sizes of the batches that cut `sorted_lengths` (ascending) in order: each batch takes as many
    sequences as fit batch_tokens padded tokens (count x its longest), rounded down to a multiple of `world`
    and at least `world` (a sequence longer than batch_tokens still makes a batch of `world`); fewer than
    `world` sequences left at the end are dropped. Depends on the lengths alone, so every epoch has the
    same number of batches."""
    if batch_tokens < 1 or world < 1:
        raise ValueError(f"batch_tokens and world: expected integers >= 1, got {batch_tokens} and {world}")
    sizes, start, n = [], 0, len(sorted_lengths)
    while n - start >= world:
        count = world
        while (
            start + count + world <= n and (count + world) * sorted_lengths[start + count + world - 1] <= batch_tokens
        ):
            count += world
        sizes.append(count)
        start += count
    return sizes


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    stage: int,
    epoch: int,
    lengths: Optional[Sequence[int]] = None,
    batch_tokens: Optional[int] = None,
    world: int = 1,
) -> List[torch.Tensor]:
    """The global batches of one epoch of one stage, in training order (int64 index tensors).

    Without batch_tokens: epoch_order cut into full batches of batch_size (a last partial batch dropped).
    With batch_tokens (lengths: each sequence's token count, after any max_length cut): the sequences
    sorted by length, ties in the epoch's seeded order, cut by batch_sizes_by_length (so a batch holds
    sequences of about one length and wastes almost nothing on padding), the batches in a seeded order.
    """
    order = epoch_order(n, seed, stage, epoch)
    if batch_tokens is None:
        return list(order[: n // batch_size * batch_size].split(batch_size))
    if lengths is None or len(lengths) != n:
        raise ValueError(f"batch_tokens needs the length of each of the {n} sequences")
    lens = torch.as_tensor(lengths, dtype=torch.int64)
    ranked = order[torch.argsort(lens[order], stable=True)]
    sizes = batch_sizes_by_length(lens[ranked].tolist(), batch_tokens, world)
    batches = list(ranked[: sum(sizes)].split(sizes))
    g = torch.Generator().manual_seed(derive_seed(seed, "batches", stage, epoch))
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def rank_indices(batch: torch.Tensor, rank: int, world: int) -> list:
    """The sequences of a global batch that process `rank` of `world` trains on: its elements rank,
    rank + world, ..."""
    return batch[rank::world].tolist()
