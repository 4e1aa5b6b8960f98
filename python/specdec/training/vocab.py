"""The reduced draft vocabulary (the idea of FR-Spec / EAGLE-3): the V_d most frequent response tokens.

    counts = count_tokens(input_ids, loss_mask, vocab_size)       # over the training data, batch by batch
    ids = top_tokens(counts, 8192, always=eos_ids)                # int64 [V_d], sorted ascending
    config = DraftConfig.from_target(target.config, "eagle", draft_vocab_size=8192)
    head = build_draft_head(config).set_draft_vocab(ids)

The head's output layer then covers those V_d tokens, with rows taken from the target's frozen lm_head
(specdec.models.base); drafting maps draft ids back to target ids; verification is untouched, so decoding
stays lossless. Soft-CE targets become the target's distribution restricted to the V_d tokens and
renormalised (specdec.training.losses does this by applying the same restricted lm_head to f_{t+1}).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

__all__ = ["count_tokens", "draft_vocab_ids", "top_tokens"]


def count_tokens(
    input_ids: torch.Tensor, loss_mask: Optional[torch.Tensor], vocab_size: int, counts: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Occurrences of each token id among the response tokens: int64 [vocab_size].

    input_ids: int [B, T] (or any shape); loss_mask: bool [same shape] (True on the tokens to count, e.g.
    the assistant tokens), or None to count all. counts: an int64 [vocab_size] tensor to add to (in place,
    returned), for counting a data set batch by batch.
    """
    ids = input_ids.reshape(-1)
    if loss_mask is not None:
        if loss_mask.shape != input_ids.shape:
            raise ValueError(
                f"count_tokens: loss_mask shape {tuple(loss_mask.shape)} != input_ids {tuple(input_ids.shape)}"
            )
        ids = ids[loss_mask.reshape(-1).bool()]
    ids = ids.to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"count_tokens: token ids must lie in [0, {vocab_size})")
    c = torch.bincount(ids.cpu(), minlength=vocab_size)
    if counts is None:
        return c
    if counts.shape != (vocab_size,) or counts.dtype != torch.int64:
        raise ValueError(f"count_tokens: counts must be int64 [{vocab_size}]")
    counts += c.to(counts.device)
    return counts


def top_tokens(counts: torch.Tensor, size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The draft vocabulary: int64 [size] target ids, sorted ascending.

    The ids of `always` (e.g. the EOS ids; duplicates ignored) are included whatever their counts; the
    remaining size - len(always) slots go to the most frequent other tokens, ties broken by the lower id
    (deterministic). Tokens of count 0 fill the remainder the same way (lowest ids first).

    counts: int64 [V] (count_tokens); 1 <= size <= V; len(set(always)) <= size.
    """
    if (
        not isinstance(counts, torch.Tensor)
        or counts.dim() != 1
        or counts.dtype.is_floating_point
        or counts.dtype == torch.bool
    ):
        raise ValueError("top_tokens: counts must be an integer tensor [V]")
    V = counts.shape[0]
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= V:
        raise ValueError(f"top_tokens: size must be an int in [1, {V}], got {size!r}")
    keep = sorted({int(t) for t in always})
    if any(not 0 <= t < V for t in keep):
        raise ValueError(f"top_tokens: `always` ids must lie in [0, {V}), got {keep}")
    if len(keep) > size:
        raise ValueError(f"top_tokens: {len(keep)} `always` ids do not fit in size {size}")
    c = counts.detach().to(device="cpu", dtype=torch.int64).clone()
    forced = torch.zeros(V, dtype=torch.bool)
    forced[keep] = True
    # order: forced first, then count descending, then id ascending (a stable sort on a composite key)
    order = torch.argsort(-c, stable=True)  # count descending, ties by id ascending
    order = order[torch.argsort((~forced[order]).to(torch.int8), stable=True)]
    chosen = order[:size]
    return torch.sort(chosen).values


def draft_vocab_ids(train_ds, size: int, eos: list, vocab: int) -> torch.Tensor:
    """The `size` most frequent response tokens of the training split (train_ds.token_counts()) among the
    target's `vocab` ids, EOS ids always included: top_tokens' int64 ids, sorted."""
    counts = train_ds.token_counts()
    if counts.numel() < vocab:  # a tokenizer-sized count vector shorter than the model's vocabulary
        counts = torch.cat((counts, torch.zeros(vocab - counts.numel(), dtype=counts.dtype)))
    return top_tokens(counts[:vocab].to(torch.int64), size, always=[i for i in eos if 0 <= i < vocab])
