"""DraftHead: what EAGLE, FSPAD and GRIFFIN share (the draft-head interface of the decoding loop).

A head maps pairs (f_t, x_{t+1}) -- a feature and the next token -- to draft logits and the feature to
feed back. The subclasses differ only in the input block that fuses the token embedding e = Emb(x) with
the feature f (`fuse`) and in whether the decoder layer has the dual [p; r] output.

The target's embedding and lm_head are shared through `bind_target`: they are held outside the module
tree, so they are not parameters of the head, not moved by head.to(), not saved and not trained. A
published checkpoint's `embed_tokens.weight` (a copy of the target's) is kept as a non-persistent buffer
only while no target is bound, so a loaded head can embed tokens on its own; bind_target drops it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch
from torch import nn

from specdec_kernels.checks import FLOAT_DTYPES_FP64, check_tensor

from .config import DraftConfig
from .layers import DecoderLayer, RotaryEmbedding


class DraftOutput(NamedTuple):
    """logits [B, T, V] through the target's lm_head (None when not asked for); hidden [B, T, H], the
    feature to feed back (o for EAGLE, the regression half r for FSPAD/GRIFFIN)."""

    logits: Optional[torch.Tensor]
    hidden: torch.Tensor


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


class DraftHead(nn.Module):
    """Base class of the one-layer draft heads; see the module docstring and `forward`."""

    kind: str = ""
    dual_output: bool = False

    def __init__(self, config: DraftConfig):
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__}: config.kind is {config.kind!r}, expected {self.kind!r}")
        self.config = config
        self.layers = nn.ModuleList([DecoderLayer(config, dual=self.dual_output)])
        self.rotary_emb = RotaryEmbedding(config)
        self.register_buffer("embed_tokens_weight", None, persistent=False)
        self._set_target(None, None)
        self.load_report: Optional[dict] = None  # set by load_draft_head: missing/unexpected/ignored keys

    # -- target sharing ---------------------------------------------------------------------------

    def _set_target(self, embed, lm_head) -> None:
        # object.__setattr__ keeps the target's modules out of _modules: not parameters, not saved.
        object.__setattr__(self, "_target_embed", embed)
        object.__setattr__(self, "_target_lm_head", lm_head)

    def bind_target(self, embed_tokens: nn.Module, lm_head: nn.Module) -> "DraftHead":
        """Share the target's token embedding and output projection (the same objects, never copied).

        embed_tokens: maps int64 ids [..] to [.., H] (an nn.Embedding); lm_head: maps [.., H] to [.., V].
        Drops the embedding copy a published checkpoint may have brought. Returns self.
        """
        if not callable(embed_tokens) or not callable(lm_head):
            raise TypeError("bind_target: embed_tokens and lm_head must be modules (callables)")
        H = self.config.hidden_size
        w = getattr(embed_tokens, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[1] != H:
            raise ValueError(f"bind_target: embed_tokens.weight has shape {tuple(w.shape)}, expected [*, {H}]")
        w = getattr(lm_head, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[1] != H:
            raise ValueError(f"bind_target: lm_head.weight has shape {tuple(w.shape)}, expected [*, {H}]")
        self._set_target(embed_tokens, lm_head)
        self.embed_tokens_weight = None
        return self

    @property
    def embed_tokens(self) -> Optional[nn.Module]:
        """The bound target embedding (None when unbound)."""
        return self._target_embed

    @property
    def lm_head(self) -> Optional[nn.Module]:
        """The bound target lm_head (None when unbound)."""
        return self._target_lm_head

    def embed_weight(self) -> torch.Tensor:
        """[V, H] embedding table in use: the target's when bound, else the checkpoint's copy."""
        if self._target_embed is not None:
            return self._target_embed.weight
        if self.embed_tokens_weight is not None:
            return self.embed_tokens_weight
        raise RuntimeError(f"{type(self).__name__}: no token embedding; call head.bind_target(embed_tokens, lm_head)")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """e = Emb(input_ids) in the head's dtype. The embedding is frozen: no gradient flows into it."""
        with torch.no_grad():
            if self._target_embed is not None:
                e = self._target_embed(input_ids)
            elif self.embed_tokens_weight is not None:
                e = nn.functional.embedding(input_ids, self.embed_tokens_weight)
            else:
                self.embed_weight()  # raises the explanatory error
        return e.to(self.dtype)

    def compute_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Target lm_head applied to x [.., H] (cast to the lm_head's dtype when it has a weight)."""
        if self._target_lm_head is None:
            raise RuntimeError(f"{type(self).__name__}: no lm_head bound; call head.bind_target(embed_tokens, lm_head)")
        w = getattr(self._target_lm_head, "weight", None)
        if isinstance(w, torch.Tensor) and w.dtype != x.dtype:
            x = x.to(w.dtype)
        return self._target_lm_head(x)

    # -- properties -------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].self_attn.q_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].self_attn.q_proj.weight.device

    # -- the input block (per kind) ---------------------------------------------------------------

    def fuse(self, features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, H] feature + [B, T] tokens -> the decoder layer's input [B, T, H]."""
        raise NotImplementedError

    def _split(self, out: torch.Tensor, return_logits: bool) -> DraftOutput:
        if self.dual_output:
            H = self.config.hidden_size
            p, hidden = out[..., :H], out[..., H:]
        else:
            p = hidden = out
        return DraftOutput(self.compute_logits(p) if return_logits else None, hidden)

    # -- decode path ------------------------------------------------------------------------------

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> DraftCache:
        """Zeroed KV cache [B, H_kv, max_len, head_dim] in the head's dtype/device unless given."""
        c = self.config
        shape = (batch_size, c.num_key_value_heads, max_len, c.head_dim)
        kw = dict(device=device if device is not None else self.device, dtype=dtype or self.dtype)
        return DraftCache(torch.zeros(shape, **kw), torch.zeros(shape, **kw))

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor,
                cache: DraftCache, cache_len: torch.Tensor, tree_mask: torch.Tensor,
                slot_offset: Union[int, torch.Tensor] = 0, *, return_logits: bool = True) -> DraftOutput:
        """One draft step over T new inputs per request, attending through the draft cache.

        Args:
            features: float [B, T, H], target features f_t or features fed back by the draft.
            input_ids: int64 [B, T], the token x_{t+1} paired with each feature.
            position_ids: int64 [B, T], RoPE positions.
            cache: DraftCache from new_cache; its k/v dtype must be the head's.
            cache_len: int32 [B], committed draft slots per request (never changed here).
            tree_mask: int32 [B, T, W] packed: bit j of row i lets query i see slot cache_len[b] + j.
            slot_offset: int (or int tensor [B]): the new keys/values go to slots
                cache_len[b] + slot_offset + i, i < T (they must fit in max_len: not checked, no sync).
            return_logits: False skips the lm_head (logits None).

        Returns:
            DraftOutput(logits [B, T, V], hidden [B, T, H]).

        Run it under torch.inference_mode() / no_grad(): then attention is specdec_kernels.tree_attention
        and nothing synchronises with the host (CUDA-graph capturable once the RoPE table of the device
        exists, i.e. after one warm-up call). With gradients enabled the same function is computed by the
        differentiable dense path, and the cache write joins the autograd graph.
        """
        B, T = self._check_inputs(features, input_ids, position_ids)
        c = self.config
        kv_shape = (B, c.num_key_value_heads, None, c.head_dim)
        check_tensor("cache.k", cache.k, dtype=self.dtype, shape=kv_shape, device=self.device)
        check_tensor("cache.v", cache.v, dtype=self.dtype, shape=tuple(cache.k.shape), device=self.device)
        check_tensor("cache_len", cache_len, dtype=torch.int32, shape=(B,), device=self.device)
        check_tensor("tree_mask", tree_mask, dtype=torch.int32, shape=(B, T, None), device=self.device)
        if isinstance(slot_offset, torch.Tensor):
            check_tensor("slot_offset", slot_offset, dtypes=(torch.int32, torch.int64), shape=(B,), device=self.device)
            slot_offset = slot_offset.to(torch.int64)[:, None]
        elif not isinstance(slot_offset, int) or slot_offset < 0:
            raise ValueError(f"slot_offset: expected a non-negative int or an int tensor [B], got {slot_offset!r}")
        x = self.fuse(features.to(self.dtype), input_ids)
        cos, sin = self.rotary_emb(position_ids)
        out = self.layers[0].forward_cached(x, cos, sin, cache.k, cache.v, cache_len, tree_mask, slot_offset)
        return self._split(out, return_logits)

    # -- training path ----------------------------------------------------------------------------

    def forward_sequence(self, features: torch.Tensor, input_ids: torch.Tensor,
                         position_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                         *, return_logits: bool = True) -> DraftOutput:
        """Differentiable forward over whole sequences without a cache (training, scoring).

        Args:
            features, input_ids: as in forward, [B, T, H] and [B, T].
            position_ids: int64 [B, T]; default 0..T-1.
            attention_mask: None (causal); or [B, T] with 1/True for real tokens (causal, padded keys
                hidden); or bool [B, T, T], True where query i may see key j (any pattern, e.g. GRIFFIN's
                multi-pass views over concatenated inputs).
        """
        B, T = self._check_inputs(features, input_ids, position_ids)
        if position_ids is None:
            position_ids = torch.arange(T, device=features.device).expand(B, T)
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() == 2:
                check_tensor("attention_mask", attention_mask, shape=(B, T), device=features.device)
                causal = torch.ones(T, T, dtype=torch.bool, device=features.device).tril()
                # a padded query still sees itself, so no row is empty (its output is ignored anyway)
                mask = (causal & attention_mask.bool()[:, None, :]) | torch.eye(T, dtype=torch.bool,
                                                                                device=features.device)
            else:
                check_tensor("attention_mask", attention_mask, dtype=torch.bool, shape=(B, T, T),
                             device=features.device)
                mask = attention_mask
        x = self.fuse(features.to(self.dtype), input_ids)
        cos, sin = self.rotary_emb(position_ids)
        out = self.layers[0].forward_sequence(x, cos, sin, mask)
        return self._split(out, return_logits)

    def _check_inputs(self, features, input_ids, position_ids) -> tuple:
        H = self.config.hidden_size
        check_tensor("features", features, dtypes=FLOAT_DTYPES_FP64, shape=(None, None, H), device=self.device)
        B, T, _ = features.shape
        check_tensor("input_ids", input_ids, dtype=torch.int64, shape=(B, T), device=self.device)
        if position_ids is not None:
            check_tensor("position_ids", position_ids, dtype=torch.int64, shape=(B, T), device=self.device)
        return B, T

    # -- init and save ----------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """HF-style init: linear weights N(0, initializer_range), biases 0, norm weights 1."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight"):
                nn.init.ones_(p)

    def save_pretrained(self, path: Union[str, os.PathLike]) -> None:
        """Write config.json (HF-style fields + specdec_kind) and model.safetensors (head weights only)."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["torch_dtype"] = str(self.dtype).replace("torch.", "")
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt", "specdec_kind": self.kind})

    def extra_repr(self) -> str:
        bound = "bound" if self._target_lm_head is not None else "unbound"
        return f"kind={self.kind}, target={bound}"


class FusedInputHead(DraftHead):
    """A dual-output head (FSPAD, GRIFFIN) whose input block `fc` is one fused specdec_kernels op.

    A subclass names its input-block layer class (`input_block`): an nn.Module built from the config as
    `self.fc`, owning the block's parameters under the published checkpoint names, whose
    forward(features, input_ids, embed_weight) calls the functional op (the op gathers the embedding rows
    itself, inside its matmul). The op's backend follows the layer's `backend` attribute (None chooses, as
    every specdec_kernels op does; "torch" is the plain PyTorch composition).
    """

    dual_output = True
    input_block: type = nn.Module

    def __init__(self, config: DraftConfig):
        super().__init__(config)
        self.fc = self.input_block(config)

    def fuse(self, features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The fused input block over the bound embedding (the checkpoint's copy while unbound)."""
        return self.fc(features, input_ids, self.embed_weight())
