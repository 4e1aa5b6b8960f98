"""DraftHead: what EAGLE, FSPAD and GRIFFIN share (the draft-head interface of the decoding loop).

A head maps pairs (f_t, x_{t+1}) -- a feature and the next token -- to draft logits and the feature to
feed back. The subclasses differ only in the input block that fuses the token embedding e = Emb(x) with
the feature f (`fuse`) and in whether the decoder layer has the dual [p; r] output.

The target's embedding and lm_head are shared through `bind_target`: they are held outside the module
tree, so they are not parameters of the head, not moved by head.to(), not saved and not trained. A
published checkpoint's `embed_tokens.weight` (a copy of the target's) is kept as a non-persistent buffer
only while no target is bound, so a loaded head can embed tokens on its own; bind_target drops it.

Reduced draft vocabulary (config.draft_vocab_size = V_d, the idea of FR-Spec / EAGLE-3): the head's output
layer covers V_d target tokens, listed by the buffer `draft_to_target` (int64 [V_d], saved in
model.safetensors; set it with `set_draft_vocab`). Its logits are x @ W[draft_to_target].T with W the bound
lm_head's FROZEN weight: the [V_d, H] rows are gathered once and cached, keyed on the bound weight (its
storage, version, dtype, device) and the map, never a trainable copy. Logits are then indexed by DRAFT ids
0..V_d-1; `to_target_ids` maps them back (the drafting loop does). Input tokens are always target ids.

Training: `forward_train` (one call over whole sequences; the fed-back feature everywhere, the draft
logits only at the positions asked for; keys/values of earlier calls for GRIFFIN's multi-pass view).
"""

from __future__ import annotations

import json
import math
import os
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from specdec_kernels.checks import FLOAT_DTYPES_FP64, check_tensor

from ..kv_pages import PagePool, take_block_table
from ..target.kernel_linears import KernelLinear, kernel_linear, uses_kernel_linears
from .config import DraftConfig
from .draft_cache import DraftCache, PagedDraftCache
from .layers import DecoderLayer, RotaryEmbedding, TrainKV


class DraftOutput(NamedTuple):
    """logits [B, T, V_d] through the target's lm_head (None when not asked for; V_d = head.draft_vocab_size,
    the target's V unless the head has a reduced draft vocabulary); hidden [B, T, H], the feature to feed back
    (o for EAGLE, the regression half r for FSPAD/GRIFFIN)."""

    logits: Optional[torch.Tensor]
    hidden: torch.Tensor


class TrainOutput(NamedTuple):
    """What DraftHead.forward_train returns.

    hidden: [B, T, H], the fed-back feature at every position (o for EAGLE, r for FSPAD/GRIFFIN): what
        the regression loss compares with f_{t+1} and what a later GRIFFIN pass is fed.
    logits: [M, V_d] draft logits (V_d = head.draft_vocab_size: the reduced vocabulary when configured,
        else the target's V) at the M selected positions, in the order of `index`.
    p: [M, H] the feature the logits come from at those positions (p for FSPAD/GRIFFIN, o for EAGLE).
    index: int64 [M], the selected positions as flat indices b * T + t (row-major).
    kv: TrainKV of [past_kv; this call's] keys/values when return_kv=True, else None.
    """

    hidden: torch.Tensor
    logits: torch.Tensor
    p: torch.Tensor
    index: torch.Tensor
    kv: Optional[TrainKV]


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
        if config.draft_vocab_size is not None:
            # draft id -> target id (a placeholder 0..V_d-1 until set_draft_vocab / a checkpoint sets it)
            self.register_buffer("draft_to_target", torch.arange(config.draft_vocab_size, dtype=torch.int64))
        else:
            self.register_buffer("draft_to_target", None)
        self._set_target(None, None)
        self.load_report: Optional[dict] = None  # set by load_draft_head: missing/unexpected/ignored keys

    # -- target sharing ---------------------------------------------------------------------------

    def _set_target(self, embed, lm_head) -> None:
        # object.__setattr__ keeps the target's modules out of _modules: not parameters, not saved.
        object.__setattr__(self, "_target_embed", embed)
        object.__setattr__(self, "_target_lm_head", lm_head)
        object.__setattr__(self, "_draft_lm_cache", None)

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
        """Draft logits [.., V_d] of x [.., H] through the target's frozen lm_head (x cast to its dtype).

        Full vocabulary: the lm_head itself (an nn.Linear is applied with its weight detached, so no
        gradient ever reaches the target). Reduced vocabulary: only the rows `draft_to_target` of the
        lm_head weight (gathered once, cached; see the module docstring); logits are indexed by draft id.
        """
        lm = self._target_lm_head
        if lm is None:
            raise RuntimeError(f"{type(self).__name__}: no lm_head bound; call head.bind_target(embed_tokens, lm_head)")
        w = getattr(lm, "weight", None)
        if self.draft_to_target is not None:
            w, b = self._draft_lm_rows()
            # the gathered rows are the head's own layer: the C++ linear where the head's layers run it
            linear = kernel_linear if uses_kernel_linears(self) else F.linear
            return linear(x.to(w.dtype) if x.dtype != w.dtype else x, w, b)
        if isinstance(w, torch.Tensor) and w.dtype != x.dtype:
            x = x.to(w.dtype)
        if type(lm) in (nn.Linear, KernelLinear):
            linear = kernel_linear if type(lm) is KernelLinear else F.linear
            return linear(x, lm.weight.detach(), None if lm.bias is None else lm.bias.detach())
        return lm(x)

    def _draft_lm_rows(self) -> tuple:
        """(weight [V_d, H], bias [V_d] or None): the bound lm_head's rows of the draft vocabulary, detached,
        gathered once and cached until the bound weight or the map changes (in place or replaced)."""
        lm = self._target_lm_head
        w = getattr(lm, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise RuntimeError(
                f"{type(self).__name__}: a reduced draft vocabulary needs an lm_head with a weight [V, H]; "
                f"the bound lm_head ({type(lm).__name__}) has none"
            )
        b = getattr(lm, "bias", None)
        b = b if isinstance(b, torch.Tensor) else None
        d2t = self.draft_to_target
        key = (w.data_ptr(), _version(w), w.dtype, w.device, d2t.data_ptr(), _version(d2t), d2t.device)
        key += (None,) if b is None else (b.data_ptr(), _version(b))
        cache = self._draft_lm_cache
        # rows gathered under inference_mode are inference tensors, which autograd cannot save: regather
        # them when used outside it (training after drafting)
        if cache is None or cache[0] != key or (cache[1].is_inference() and not torch.is_inference_mode_enabled()):
            with torch.no_grad():
                idx = d2t.to(w.device)
                rows = w.detach().index_select(0, idx)
                bias = None if b is None else b.detach().index_select(0, idx)
            cache = (key, rows, bias)
            object.__setattr__(self, "_draft_lm_cache", cache)
        return cache[1], cache[2]

    # -- the draft vocabulary ---------------------------------------------------------------------

    @property
    def draft_vocab_size(self) -> int:
        """Size of the draft's output vocabulary: config.draft_vocab_size, or the target's vocab_size."""
        return self.config.draft_vocab_size or self.config.vocab_size

    def set_draft_vocab(self, ids: torch.Tensor) -> "DraftHead":
        """Set the draft-to-target map: ids int64 [V_d], distinct target ids in [0, vocab_size) (e.g.
        specdec.training.vocab.top_tokens). Only for a head built with config.draft_vocab_size = V_d."""
        if self.draft_to_target is None:
            raise ValueError(
                "set_draft_vocab: this head predicts the full vocabulary (config.draft_vocab_size is None); "
                "build it with DraftConfig(..., draft_vocab_size=V_d)"
            )
        Vd, V = self.config.draft_vocab_size, self.config.vocab_size
        check_tensor("ids", ids, dtype=torch.int64, shape=(Vd,))
        cpu = ids.detach().cpu()
        if Vd and (int(cpu.min()) < 0 or int(cpu.max()) >= V):
            raise ValueError(f"set_draft_vocab: ids must lie in [0, {V}), got [{int(cpu.min())}, {int(cpu.max())}]")
        if torch.unique(cpu).numel() != Vd:
            raise ValueError("set_draft_vocab: ids must be distinct")
        with torch.no_grad():
            self.draft_to_target.copy_(cpu.to(self.draft_to_target.device))
        return self

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Target token ids of draft ids (indices into the draft logits); identity for a full vocabulary."""
        d2t = self.draft_to_target
        return draft_ids if d2t is None else d2t[draft_ids]

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

    def _split(self, out: torch.Tensor, return_logits: bool, logits_at: Optional[torch.Tensor] = None) -> DraftOutput:
        if self.dual_output:
            H = self.config.hidden_size
            p, hidden = out[..., :H], out[..., H:]
        else:
            p = hidden = out
        if return_logits and logits_at is not None:  # one row per request: the lm_head is the costly part
            p = p.gather(1, logits_at.to(torch.int64)[:, None, None].expand(p.shape[0], 1, p.shape[2]))
        return DraftOutput(self.compute_logits(p) if return_logits else None, hidden)

    # -- decode path ------------------------------------------------------------------------------

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device=None,
        dtype=None,
        *,
        page_size: Optional[int] = None,
        pool: Optional[PagePool] = None,
    ) -> Union[DraftCache, PagedDraftCache]:
        """Zeroed KV cache of `max_len` slots per request in the head's dtype/device unless given.

        page_size None: a DraftCache [B, H_kv, max_len, head_dim]. An int: a PagedDraftCache of NHD pages of
        that many slots, ceil(max_len / page_size) per request taken from `pool` (a specdec.kv_pages.PagePool
        whose page ids index the page tensors; a new pool of just enough pages when None).
        """
        c = self.config
        kw = dict(device=device if device is not None else self.device, dtype=dtype or self.dtype)
        if page_size is None:
            shape = (batch_size, c.num_key_value_heads, max_len, c.head_dim)
            return DraftCache(torch.zeros(shape, **kw), torch.zeros(shape, **kw))
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size: expected an int >= 1 or None, got {page_size!r}")
        pool = pool if pool is not None else PagePool(batch_size * math.ceil(max_len / page_size))
        table, pages = take_block_table(pool, batch_size, max_len, page_size, kw["device"])
        shape = (pool.num_pages, page_size, c.num_key_value_heads, c.head_dim)
        return PagedDraftCache(torch.zeros(shape, **kw), torch.zeros(shape, **kw), table, page_size, pool, pages)

    def forward(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DraftCache,
        cache_len: torch.Tensor,
        tree_mask: torch.Tensor,
        slot_offset: Union[int, torch.Tensor] = 0,
        *,
        return_logits: bool = True,
        logits_at: Optional[torch.Tensor] = None,
    ) -> DraftOutput:
        """One draft step over T new inputs per request, attending through the draft cache.

        Args:
            features: float [B, T, H], target features f_t or features fed back by the draft.
            input_ids: int64 [B, T], the token x_{t+1} paired with each feature.
            position_ids: int64 [B, T], RoPE positions.
            cache: DraftCache or PagedDraftCache from new_cache; its k/v dtype must be the head's.
            cache_len: int32 [B], committed draft slots per request (never changed here).
            tree_mask: int32 [B, T, W] packed: bit j of row i lets query i see slot cache_len[b] + j.
            slot_offset: int (or int tensor [B]): the new keys/values go to slots
                cache_len[b] + slot_offset + i, i < T (they must fit in max_len: not checked, no sync).
            return_logits: False skips the lm_head (logits None).
            logits_at: optional int tensor [B]: compute the logits only at position logits_at[b] of each
                request (then logits is [B, 1, V_d]); the draft's output layer dominates its cost.

        Returns:
            DraftOutput(logits [B, T, V_d], hidden [B, T, H]) (logits indexed by draft id, see to_target_ids).

        Run it under torch.inference_mode() / no_grad(): then attention is specdec_kernels.tree_attention
        and nothing synchronises with the host (CUDA-graph capturable once the RoPE table of the device
        exists, i.e. after one warm-up call). With gradients enabled the same function is computed by the
        differentiable dense path, and the cache write joins the autograd graph.
        """
        B, T = self._check_inputs(features, input_ids, position_ids)
        c = self.config
        cache.check(B, c.num_key_value_heads, c.head_dim, self.dtype, self.device)
        check_tensor("cache_len", cache_len, dtype=torch.int32, shape=(B,), device=self.device)
        check_tensor("tree_mask", tree_mask, dtype=torch.int32, shape=(B, T, None), device=self.device)
        if isinstance(slot_offset, torch.Tensor):
            check_tensor("slot_offset", slot_offset, dtypes=(torch.int32, torch.int64), shape=(B,), device=self.device)
            slot_offset = slot_offset.to(torch.int64)[:, None]
        elif not isinstance(slot_offset, int) or slot_offset < 0:
            raise ValueError(f"slot_offset: expected a non-negative int or an int tensor [B], got {slot_offset!r}")
        x = self.fuse(features.to(self.dtype), input_ids)
        cos, sin = self.rotary_emb(position_ids)
        if logits_at is not None:
            check_tensor("logits_at", logits_at, dtypes=(torch.int32, torch.int64), shape=(B,), device=self.device)
        out = self.layers[0].forward_cached(x, cos, sin, cache, cache_len, tree_mask, slot_offset)
        return self._split(out, return_logits, logits_at)

    # -- training path ----------------------------------------------------------------------------

    def forward_sequence(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        return_logits: bool = True,
    ) -> DraftOutput:
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
        mask = self._sequence_mask(attention_mask, B, T, 0, features.device)
        x = self.fuse(features.to(self.dtype), input_ids)
        cos, sin = self.rotary_emb(position_ids)
        out = self.layers[0].forward_sequence(x, cos, sin, mask)
        return self._split(out, return_logits)

    def forward_train(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        *,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        logits_index: Optional[torch.Tensor] = None,
        past_kv: Optional[TrainKV] = None,
        return_kv: bool = False,
    ) -> TrainOutput:
        """The training forward: one differentiable call over whole sequences (no cache).

        Computes the same function as forward_sequence, but returns the fed-back feature at every
        position and the draft logits only at the positions asked for (the [B, T, V] logits are never
        formed), and can attend to keys/values of earlier calls (GRIFFIN's multi-pass training).

        Args:
            features: float [B, T, H], f_t (any float dtype; cast to the head's).
            input_ids: int64 [B, T], x_{t+1} (target ids).
            attention_mask: None: causal (not allowed with past_kv). [B, T] with 1/True for real pairs:
                causal with padded keys hidden (a padded query sees itself). Or bool [B, T, S + T] over the
                concatenated keys [past_kv (S slots); this call's T]: True where query i sees key j. Every
                row must see at least one key. The mask is built once per call.
            position_ids: int64 [B, T] RoPE positions; default 0..T-1.
            logits_index: which positions get logits: None = all (M = B*T, row-major); a bool [B, T] mask
                (True = selected; costs one host sync); or int64 [M] flat indices b * T + t (any order,
                repeats allowed; not range-checked on CUDA).
            past_kv: TrainKV from an earlier call's TrainOutput.kv (return_kv=True): keys/values (RoPE
                applied at their own positions) prepended to this call's. Gradients flow through them into
                the parameters of the call that produced them, unless the caller passes past_kv.detach()-ed
                tensors (TrainKV(k.detach(), v.detach())).
            return_kv: return TrainKV of [past_kv; this call's] keys/values (output.kv), to hand to the next
                pass.

        Returns:
            TrainOutput(hidden [B, T, H], logits [M, V_d], p [M, H], index int64 [M], kv).

        GRIFFIN multi-pass: pass 1 runs with return_kv=True; pass k >= 2 passes the previous output's kv
        (all earlier passes' keys, in pass order, S = (k - 1) T) and a bool mask [B, T, k T] over
        [pass 1 keys; ...; pass k keys] (specdec.training.losses.multipass_mask builds the draft's
        decode-time view).
        """
        B, T = self._check_inputs(features, input_ids, position_ids)
        dev = features.device
        S = 0
        if past_kv is not None:
            c = self.config
            check_tensor("past_kv.k", past_kv.k, shape=(B, c.num_key_value_heads, None, c.head_dim), device=dev)
            check_tensor("past_kv.v", past_kv.v, shape=tuple(past_kv.k.shape), device=dev)
            S = past_kv.k.shape[2]
        if position_ids is None:
            position_ids = torch.arange(T, device=dev).expand(B, T)
        mask = self._sequence_mask(attention_mask, B, T, S, dev)
        index = self._logits_index(logits_index, B, T, dev)
        x = self.fuse(features.to(self.dtype), input_ids)
        cos, sin = self.rotary_emb(position_ids)
        out, kv = self.layers[0].forward_train(x, cos, sin, mask, past_kv)
        H = self.config.hidden_size
        if self.dual_output:
            p_all, hidden = out[..., :H], out[..., H:]
        else:
            p_all = hidden = out
        p = p_all.reshape(B * T, H).index_select(0, index)
        return TrainOutput(hidden, self.compute_logits(p), p, index, kv if return_kv else None)

    @staticmethod
    def _sequence_mask(attention_mask, B: int, T: int, S: int, device) -> Optional[torch.Tensor]:
        """None (causal) or bool [B, T, S + T] from the attention_mask argument of forward_sequence/train."""
        if attention_mask is None:
            if S:
                raise ValueError("attention_mask: past_kv needs an explicit bool mask [B, T, S + T]")
            return None
        if attention_mask.dim() == 2:
            if S:
                raise ValueError("attention_mask: past_kv needs an explicit bool mask [B, T, S + T], not [B, T]")
            check_tensor("attention_mask", attention_mask, shape=(B, T), device=device)
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            # a padded query still sees itself, so no row is empty (its output is ignored anyway)
            return (causal & attention_mask.bool()[:, None, :]) | torch.eye(T, dtype=torch.bool, device=device)
        check_tensor("attention_mask", attention_mask, dtype=torch.bool, shape=(B, T, S + T), device=device)
        return attention_mask

    @staticmethod
    def _logits_index(logits_index, B: int, T: int, device) -> torch.Tensor:
        """Flat int64 [M] positions from the logits_index argument of forward_train."""
        if logits_index is None:
            return torch.arange(B * T, device=device)
        if logits_index.dtype == torch.bool:
            check_tensor("logits_index", logits_index, shape=(B, T), device=device)
            return logits_index.reshape(-1).nonzero().squeeze(1)
        check_tensor("logits_index", logits_index, dtype=torch.int64, shape=(None,), device=device)
        return logits_index

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
        if self.draft_to_target is not None:
            with torch.no_grad():
                self.draft_to_target.copy_(
                    torch.arange(self.config.draft_vocab_size, device=self.draft_to_target.device)
                )

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
        vocab = "" if self.draft_to_target is None else f", draft_vocab={self.config.draft_vocab_size}"
        return f"kind={self.kind}, target={bound}{vocab}"


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


def _version(t: torch.Tensor) -> int:
    """The tensor's version counter (bumped by in-place writes); -1 for inference tensors, which have none."""
    try:
        return t._version
    except RuntimeError:
        return -1
