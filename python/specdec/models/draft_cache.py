"""The draft head's KV cache (its one decoder layer's keys and values)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DraftCache:
    """The draft's KV cache (one layer): k, v [B, H_kv, max_len, head_dim].

    Committed lengths live with the caller (cache_len int32 [B]); compaction after acceptance is
    specdec_kernels.compact_kv([cache.k, cache.v], ...).
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def tensors(self) -> list:
        """[k, v], the list compact_kv takes."""
        return [self.k, self.v]
