"""Our static KV cache, shaped like transformers' StaticCache, with a per-request committed length.

Per layer, K and V are preallocated tensors [B, H_kv, S_max, D]; `cache_len int32 [B]` counts the tokens
committed per request (shared by all layers). A forward over T new tokens (a prefill chunk or the N nodes
of a draft tree) writes them at slots cache_len[b] + i, i < T, in token order (node order for a tree, not
position order), and attention then sees the committed prefix plus the new slots its tree mask allows.
Nothing is committed by a forward: the caller moves the accepted slots into place with
specdec_kernels.compact_kv and adds the accepted count to cache_len (see TargetModel.commit).

The classes subclass transformers' Cache / CacheLayerMixin so that a Hugging Face decoder's own modeling
code (which calls `cache.update(k, v, layer_idx)`, `past_key_values.update` in older transformers, in every
attention layer) runs unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..kv import write_slots


def _slots(cache_len: torch.Tensor, T: int) -> torch.Tensor:
    """int64 [B, T]: the slots cache_len[b] + i of a forward's T new tokens."""
    return cache_len.to(torch.int64)[:, None] + torch.arange(T, device=cache_len.device)


class TreeKVLayer(CacheLayerMixin):
    """One layer of a TreeKVCache: preallocated keys/values [B, H_kv, S_max, D].

    `update` writes the T new keys/values at slots cache_len[b] + i with one scatter (no host
    synchronisation) and returns the whole buffers; the tree attention function reads them with cache_len
    and the tree mask. The caller keeps cache_len[b] + T <= S_max (values are never checked on the host).
    """

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, cache_len: torch.Tensor):
        super().__init__()
        self.keys = keys
        self.values = values
        self.cache_len = cache_len
        self.batch_size, self.num_heads = keys.shape[0], keys.shape[1]
        self.max_cache_len = keys.shape[2]
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Buffers are allocated up front (TreeKVCache); nothing to do."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write key/value_states [B, H_kv, T, D] at slots cache_len[b] + i; return the full buffers."""
        B, H, T, D = key_states.shape
        if (B, H, D) != (self.keys.shape[0], self.keys.shape[1], self.keys.shape[3]):
            raise ValueError(
                f"TreeKVLayer.update: new keys {tuple(key_states.shape)} do not fit the cache "
                f"{tuple(self.keys.shape)} (expected [B, H_kv, T, D] with the cache's B, H_kv, D)"
            )
        if T > self.max_cache_len:
            raise ValueError(
                f"TreeKVLayer.update: {T} new tokens exceed the cache capacity S_max = {self.max_cache_len}"
            )
        slots = _slots(self.cache_len, T)
        write_slots(self.keys, slots, key_states)
        write_slots(self.values, slots, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def get_seq_length(self) -> int:
        # Only called by modeling code when no position_ids are given; TargetModel always passes them.
        raise RuntimeError("TreeKVCache has a per-request length (cache_len tensor); pass position_ids explicitly")

    def get_max_length(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        self.keys.zero_()
        self.values.zero_()


class TreeKVCache(Cache):
    """The target's KV cache: per layer [B, H_kv, S_max, D] keys and values, plus `cache_len int32 [B]`.

    Build it with TargetModel.new_cache (or directly from tensors). `caches()` lists every layer's K and V
    buffers, the argument specdec_kernels.compact_kv takes.
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: Optional[torch.device] = None,
    ):
        if batch_size < 1 or max_len < 1 or num_layers < 1:
            raise ValueError(
                f"TreeKVCache: expected batch_size, max_len and num_layers >= 1, got "
                f"{batch_size}, {max_len}, {num_layers}"
            )
        self.cache_len = torch.zeros(batch_size, dtype=torch.int32, device=device)
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        layers = [
            TreeKVLayer(
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
                self.cache_len,
            )
            for _ in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.max_len = max_len

    @property
    def device(self) -> torch.device:
        return self.cache_len.device

    def caches(self) -> list:
        """Every layer's K and V buffers, in layer order (K0, V0, K1, V1, ...)."""
        out = []
        for layer in self.layers:
            out += [layer.keys, layer.values]
        return out

    def writer(self, T: int):
        """update()'s write for a forward of T new tokens per request, as a function (layer_idx, key_states,
        value_states) -> (keys, values) that reuses one computation of the slots for every layer (the lean
        decoder path: a few small ops fewer per layer). The states are the model's own ([B, H_kv, T, D] of
        this cache's shape), so only T is checked here."""
        if T > self.max_len:
            raise ValueError(f"TreeKVCache: {T} new tokens exceed the cache capacity S_max = {self.max_len}")
        dev = self.cache_len.device
        rows = torch.arange(self.cache_len.shape[0], device=dev)[:, None]
        slots = _slots(self.cache_len, T)

        def write(layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor):
            layer = self.layers[layer_idx]
            write_slots(layer.keys, slots, key_states, rows)
            write_slots(layer.values, slots, value_states, rows)
            return layer.keys, layer.values

        return write

    def reset(self) -> None:
        """Forget every request's tokens (cache_len = 0); buffers are kept."""
        self.cache_len.zero_()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise RuntimeError("TreeKVCache has a per-request length (cache_len tensor); pass position_ids explicitly")

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.max_len, 0

    def __repr__(self) -> str:
        k = self.layers[0].keys
        return (
            f"TreeKVCache(layers={len(self.layers)}, batch={k.shape[0]}, kv_heads={k.shape[1]}, "
            f"max_len={k.shape[2]}, head_dim={k.shape[3]}, dtype={k.dtype})"
        )
